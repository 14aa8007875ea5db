//! Operator requests in the audit log. A request that changed something (a submission,
//! a kill, a memory write or removal) is one row with its caller. Reads, stdin chunks and
//! refusals are counted per caller and written as one `api.requests` summary row per
//! caller now and then, and when the daemon stops: a client asking as fast as it can
//! must not write rows as fast, or any member of the socket's group could fill the disk.

use super::api::Caller;
use crate::store::AuditEvent;
use crate::store::Kind;
use hyper::Method;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

/// Most distinct callers tallied between two summaries; the rest are counted together.
const MAX_CALLERS: usize = 4096;

/// Refused submissions of one caller audited as rows of their own between two
/// summaries; the rest are only counted (in the caller's `api.requests` row).
pub const MAX_REFUSAL_ROWS: u64 = 60;

/// Requests of one caller that changed something audited as rows of their own between
/// two summaries (a kill repeated on the same job changes nothing new); the rest are
/// only counted.
pub const MAX_CHANGE_ROWS: u64 = 600;

/// Bytes of a request's path kept in its audit row.
pub const PATH_BYTES: usize = 256;

/// Bytes of a refused submission's argv kept in its audit row.
pub const REFUSED_ARGV_BYTES: usize = 4096;

/// The argv of a refused submission as its audit row keeps it: whole when short, else
/// its first arguments up to [`REFUSED_ARGV_BYTES`] and its size.
pub fn bounded_argv(argv: &Option<Vec<String>>) -> Value {
    let Some(argv) = argv else {
        return Value::Null;
    };
    let size: usize = argv.iter().map(String::len).sum();
    // Each argument costs its quotes and comma too: many empty ones are not free.
    if size + 3 * argv.len() <= REFUSED_ARGV_BYTES {
        return json!(argv);
    }
    let mut kept = Vec::new();
    let mut left = REFUSED_ARGV_BYTES;
    for arg in argv {
        if left < 3 {
            break;
        }
        let head = cut(arg, left - 3);
        left -= head.len() + 3;
        kept.push(head.to_string());
    }
    json!({"head": kept, "args": argv.len(), "bytes": size})
}

/// Counts one more row of `caller` in `rows`; whether it is within `limit`.
fn allowance(rows: &Mutex<BTreeMap<String, u64>>, caller: &Caller, limit: u64) -> bool {
    let (key, _) = caller_key(caller);
    let mut rows = rows.lock().unwrap_or_else(PoisonError::into_inner);
    if !rows.contains_key(&key) && rows.len() >= MAX_CALLERS {
        return false;
    }
    let n = rows.entry(key).or_default();
    *n += 1;
    *n <= limit
}

/// The longest prefix of `text` of at most `bytes` bytes that ends on a character.
pub fn cut(text: &str, bytes: usize) -> &str {
    let end = (0..=bytes.min(text.len()))
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    &text[..end]
}

/// Whether a request is audited on its own row: it succeeded and changed something.
pub fn audited_alone(method: &Method, path: &str, status: u16) -> bool {
    (200..300).contains(&status) && *method != Method::GET && !path.ends_with("/stdin")
}

#[derive(Default)]
struct CallerTally {
    caller: Value,
    /// `METHOD STATUS` to how many.
    counts: BTreeMap<String, u64>,
}

/// Counts of the requests not audited alone, by caller.
#[derive(Default)]
pub struct RequestTally {
    callers: Mutex<BTreeMap<String, CallerTally>>,
    /// Refusal rows written per caller since the last summary.
    refusal_rows: Mutex<BTreeMap<String, u64>>,
    /// `api.request` rows written per caller since the last summary.
    change_rows: Mutex<BTreeMap<String, u64>>,
}

fn caller_key(caller: &Caller) -> (String, Value) {
    match caller {
        Caller::Unix { uid, .. } => (format!("unix:{uid}"), json!({"via": "unix", "uid": uid})),
        Caller::Tcp { .. } => ("tcp".into(), json!({"via": "tcp"})),
        Caller::Agent { job } => (
            format!("agent:{job}"),
            json!({"via": "agent-socket", "job": job}),
        ),
    }
}

impl RequestTally {
    /// Counts one request of `caller` answered with `status`.
    pub fn count(&self, caller: &Caller, method: &Method, status: u16) {
        let (mut key, mut who) = caller_key(caller);
        let mut callers = self.callers.lock().unwrap_or_else(PoisonError::into_inner);
        if !callers.contains_key(&key) && callers.len() >= MAX_CALLERS {
            (key, who) = ("others".into(), json!({"via": "others"}));
        }
        let tally = callers.entry(key).or_insert_with(|| CallerTally {
            caller: who,
            counts: BTreeMap::new(),
        });
        *tally
            .counts
            .entry(format!("{} {status}", method.as_str()))
            .or_default() += 1;
    }

    /// Whether a refused submission of `caller` may still be audited as rows of its own
    /// in this interval (at most [`MAX_REFUSAL_ROWS`]).
    pub fn refusal_row_allowed(&self, caller: &Caller) -> bool {
        allowance(&self.refusal_rows, caller, MAX_REFUSAL_ROWS)
    }

    /// Whether a request of `caller` that changed something may still be an `api.request`
    /// row of its own in this interval (at most [`MAX_CHANGE_ROWS`]).
    pub fn change_row_allowed(&self, caller: &Caller) -> bool {
        allowance(&self.change_rows, caller, MAX_CHANGE_ROWS)
    }

    /// One `api.requests` row per caller counted since the last call.
    pub fn take_summaries(&self) -> Vec<AuditEvent> {
        for rows in [&self.refusal_rows, &self.change_rows] {
            rows.lock().unwrap_or_else(PoisonError::into_inner).clear();
        }
        let callers =
            std::mem::take(&mut *self.callers.lock().unwrap_or_else(PoisonError::into_inner));
        callers
            .into_values()
            .map(|t| {
                let total: u64 = t.counts.values().sum();
                AuditEvent::new(
                    Kind::ApiRequests,
                    json!({"caller": t.caller, "requests": total, "by_status": t.counts}),
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_reads_is_one_row_per_caller_and_writes_stay_alone() {
        let tally = RequestTally::default();
        let a = Caller::Unix {
            uid: 1000,
            gid: 1000,
            pid: Some(7),
            admin: false,
        };
        let b = Caller::Unix {
            uid: 1001,
            gid: 1001,
            pid: Some(8),
            admin: false,
        };
        for _ in 0..10_000 {
            tally.count(&a, &Method::GET, 404);
        }
        tally.count(&a, &Method::GET, 200);
        tally.count(&b, &Method::POST, 403);
        let rows = tally.take_summaries();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].body["requests"], 10_001);
        assert_eq!(rows[0].body["by_status"]["GET 404"], 10_000);
        assert_eq!(rows[1].body["by_status"]["POST 403"], 1);
        assert!(tally.take_summaries().is_empty());
        assert!(audited_alone(&Method::POST, "/v1/jobs", 201));
        assert!(audited_alone(&Method::DELETE, "/v1/mem/x", 200));
        assert!(!audited_alone(&Method::POST, "/v1/jobs/j/stdin", 204));
        assert!(!audited_alone(&Method::POST, "/v1/jobs", 429));
        assert!(!audited_alone(&Method::GET, "/v1/jobs", 200));
    }

    #[test]
    fn refused_submissions_are_rows_up_to_a_bound_and_their_argv_is_cut() {
        let tally = RequestTally::default();
        let a = Caller::Agent { job: "j".into() };
        let allowed = (0..1000).filter(|_| tally.refusal_row_allowed(&a)).count();
        assert_eq!(allowed as u64, MAX_REFUSAL_ROWS);
        tally.take_summaries();
        assert!(
            tally.refusal_row_allowed(&a),
            "a new interval allows rows again"
        );
        let big = Some(vec!["x".repeat(1 << 20), "y".into()]);
        let cut = bounded_argv(&big);
        assert_eq!(cut["bytes"], (1 << 20) + 1);
        assert_eq!(cut["args"], 2);
        assert_eq!(
            cut["head"][0].as_str().unwrap().len(),
            REFUSED_ARGV_BYTES - 3
        );
        let small = Some(vec!["make".to_string(), "test".into()]);
        assert_eq!(bounded_argv(&small), json!(["make", "test"]));
        let empties = Some(vec![String::new(); 330_000]);
        let cut_empties = bounded_argv(&empties);
        assert_eq!(cut_empties["args"], 330_000);
        assert!(cut_empties.to_string().len() < 2 * REFUSED_ARGV_BYTES);
        let wide = Some(vec!["é".repeat(3000)]);
        assert!(bounded_argv(&wide)["head"][0].as_str().is_some());
    }

    #[test]
    fn distinct_callers_beyond_the_bound_are_counted_together() {
        let tally = RequestTally::default();
        for uid in 0..(MAX_CALLERS as u32 + 100) {
            let c = Caller::Unix {
                uid,
                gid: uid,
                pid: Some(1),
                admin: false,
            };
            tally.count(&c, &Method::GET, 200);
        }
        let rows = tally.take_summaries();
        assert_eq!(rows.len(), MAX_CALLERS + 1);
        let others = rows
            .iter()
            .find(|r| r.body["caller"]["via"] == "others")
            .unwrap();
        assert_eq!(others.body["requests"], 100);
    }
}
