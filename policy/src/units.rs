//! Parsing of the human units a manifest and the command line use: sizes (`256MiB`),
//! durations (`30s`) and CPU counts (`1.5`). Each parser returns an error that quotes the
//! input, so the caller can name the field it came from.

use std::time::Duration;

/// Why a value could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("`{input}` is not a size: use a number with an optional unit B, KiB, MiB, GiB (or K, M, G, KB, MB, GB)")]
    Size { input: String },
    #[error("`{input}` is not a duration: use a number with a unit ms, s, m or h (e.g. 30s)")]
    Duration { input: String },
    #[error("`{input}` is not a CPU count: use a positive decimal number such as 0.5 or 2")]
    Cpus { input: String },
    #[error("`{input}` is too large")]
    Overflow { input: String },
}

/// Parses a byte size. Binary (`KiB`) and decimal (`KB`) suffixes are honoured as written;
/// the single letters `K`, `M`, `G` mean binary units, as `ulimit` and cgroups users expect.
pub fn parse_size(input: &str) -> Result<u64, UnitError> {
    let s = input.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let err = || UnitError::Size {
        input: input.to_string(),
    };
    if number.is_empty() {
        return Err(err());
    }
    let value: u64 = number.parse().map_err(|_| err())?;
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KiB" | "k" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "T" | "TiB" => 1 << 40,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        _ => return Err(err()),
    };
    value.checked_mul(multiplier).ok_or(UnitError::Overflow {
        input: input.to_string(),
    })
}

/// Parses a duration with a mandatory unit: a bare number is refused because `30` could mean
/// seconds or milliseconds and a sandbox timeout is no place to guess.
pub fn parse_duration(input: &str) -> Result<Duration, UnitError> {
    let s = input.trim();
    let err = || UnitError::Duration {
        input: input.to_string(),
    };
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
    let (number, unit) = s.split_at(split);
    if number.is_empty() {
        return Err(err());
    }
    let value: u64 = number.parse().map_err(|_| err())?;
    let millis = match unit {
        "ms" => Some(value),
        "s" => value.checked_mul(1_000),
        "m" | "min" => value.checked_mul(60_000),
        "h" => value.checked_mul(3_600_000),
        _ => return Err(err()),
    };
    millis
        .map(Duration::from_millis)
        .ok_or(UnitError::Overflow {
            input: input.to_string(),
        })
}

/// Parses a CPU count into millicpus (1.5 → 1500). At least one millicpu, at most 1024 CPUs.
pub fn parse_cpus(input: &str) -> Result<u32, UnitError> {
    let err = || UnitError::Cpus {
        input: input.to_string(),
    };
    let s = input.trim();
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    if whole.is_empty() && frac.is_empty()
        || !whole.chars().all(|c| c.is_ascii_digit())
        || !frac.chars().all(|c| c.is_ascii_digit())
        || frac.len() > 3
    {
        return Err(err());
    }
    let whole: u32 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| err())?
    };
    let frac_millis: u32 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<3}").parse().map_err(|_| err())?
    };
    let millis = whole
        .checked_mul(1000)
        .and_then(|w| w.checked_add(frac_millis))
        .ok_or_else(err)?;
    if millis == 0 || millis > 1024 * 1000 {
        return Err(err());
    }
    Ok(millis)
}

/// Formats a byte count the way [`parse_size`] reads it back, for messages and reports.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (unit, size) in UNITS {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{}{unit}", bytes / size);
        }
    }
    format!("{bytes}B")
}

/// Formats Unix seconds as `YYYY-MM-DDTHH:MM:SSZ` (UTC, proleptic Gregorian).
pub fn format_unix_time(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_binary_and_decimal_units() {
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(format_size(256 << 20), "256MiB");
        assert_eq!(format_size(1000), "1000B");
    }

    #[test]
    fn bad_sizes_are_refused() {
        for bad in ["", "MiB", "12XB", "-1", "1.5G", "99999999999999999999"] {
            assert!(parse_size(bad).is_err(), "{bad} accepted");
        }
        assert!(matches!(
            parse_size("18446744073709551615G"),
            Err(UnitError::Overflow { .. })
        ));
    }

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["30", "s", "1d", "-5s", ""] {
            assert!(parse_duration(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn unix_times_format_as_utc() {
        assert_eq!(format_unix_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_unix_time(1_795_665_886), "2026-11-26T04:04:46Z");
        assert_eq!(format_unix_time(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn cpus_parse_to_millicpus() {
        assert_eq!(parse_cpus("1.5"), Ok(1500));
        assert_eq!(parse_cpus("2"), Ok(2000));
        assert_eq!(parse_cpus("0.25"), Ok(250));
        assert_eq!(parse_cpus(".5"), Ok(500));
        for bad in ["0", "0.0001", "-1", "abc", "", ".", "5000"] {
            assert!(parse_cpus(bad).is_err(), "{bad} accepted");
        }
    }
}
