//! The egress grammar: which hosts a sandbox may reach by name (`net.egress:PATTERN[:PORTS]`,
//! manifest `egress = [...]`), and the one relation attenuation needs, whether a granted
//! rule covers a requested one. Pure: the gateway that enforces these rules lives in the
//! `covenant-egress` crate and reads them from the plan.
//!
//! A pattern is an exact name (`pypi.org`), a wildcard over subdomains (`*.pythonhosted.org`,
//! which does not cover the apex), or a literal network in CIDR form (`10.20.0.0/16`). Bare
//! `*` is refused: that is `net:host`. Names are lower-cased, a trailing dot is dropped and
//! Unicode is turned into its IDNA (punycode) form, so one host has one spelling.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::Ipv4Addr;

/// The gateway's address on the sandbox's link: its resolver, and the next hop of its
/// default route. Link-local, so it means nothing beyond that link.
pub const GATEWAY_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 77, 1);
/// The sandbox's own address on that link.
pub const SANDBOX_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 77, 2);
/// Prefix length of the link.
pub const LINK_PREFIX: u8 = 30;

/// The longest host name a pattern may hold (DNS's own limit).
pub const MAX_NAME_LEN: usize = 253;
/// The longest label of a name.
pub const MAX_LABEL_LEN: usize = 63;
/// Ports a pattern gets when it names none.
pub const DEFAULT_PORTS: [u16; 1] = [443];
/// The most ports one rule may list.
pub const MAX_PORTS: usize = 32;

/// An IPv4 network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Cidr {
    fn mask(self) -> u32 {
        if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - self.prefix as u32)
        }
    }

    /// Whether `ip` lies in this network.
    pub fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.addr) & self.mask()
    }

    /// Whether every address of `other` lies in this network.
    pub fn covers(self, other: Cidr) -> bool {
        other.prefix >= self.prefix && self.contains(other.addr)
    }

    /// Parses `A.B.C.D/N`; the address must be the network's first (no host bits set).
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (addr, prefix) = text
            .split_once('/')
            .ok_or_else(|| format!("`{text}` is not in CIDR form A.B.C.D/N"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("`{addr}` is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= 32)
            .ok_or_else(|| format!("`/{prefix}` is not a prefix length 0-32"))?;
        if prefix == 0 {
            return Err("`/0` is every address: that is `net:host`".into());
        }
        let cidr = Cidr { addr, prefix };
        if u32::from(addr) & !cidr.mask() != 0 {
            return Err(format!("`{text}` has host bits set past /{prefix}"));
        }
        Ok(cidr)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// What a rule lets the sandbox reach.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EgressTarget {
    /// Exactly this name.
    Name(String),
    /// Every name strictly below this one (`*.example.com`: `a.example.com`, not
    /// `example.com`).
    Subdomains(String),
    /// Every address of a literal network.
    Network(Cidr),
}

/// One egress rule: a target and the TCP ports allowed on it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EgressRule {
    pub target: EgressTarget,
    /// Sorted, without duplicates, never empty.
    pub ports: Vec<u16>,
}

/// A refused rule, naming the part of it that is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("egress rule `{input}`: {part}: {reason}")]
pub struct EgressError {
    pub input: String,
    /// `pattern` or `ports`.
    pub part: &'static str,
    pub reason: String,
}

/// Lower-cases, drops one trailing dot and turns Unicode into IDNA form; refuses what is
/// not a host name: empty labels, over-long names or labels, characters outside
/// letters, digits and `-`, and anything that parses as an IP address.
pub fn normalize_name(raw: &str) -> Result<String, String> {
    let trimmed = raw.strip_suffix('.').unwrap_or(raw);
    if trimmed.is_empty() {
        return Err("the name is empty".into());
    }
    if trimmed.len() > MAX_NAME_LEN * 4 {
        return Err(format!("the name is longer than {MAX_NAME_LEN} bytes"));
    }
    let ascii = if trimmed.is_ascii() {
        trimmed.to_ascii_lowercase()
    } else {
        idna::domain_to_ascii(trimmed)
            .map_err(|_| format!("`{trimmed}` is not a valid internationalised name"))?
    };
    if ascii.len() > MAX_NAME_LEN {
        return Err(format!("the name is longer than {MAX_NAME_LEN} bytes"));
    }
    if ascii.parse::<std::net::IpAddr>().is_ok() || ascii.parse::<Ipv4Addr>().is_ok() {
        return Err("an IP address is not a host name; grant a network in CIDR form".into());
    }
    for label in ascii.split('.') {
        if label.is_empty() {
            return Err("the name has an empty label".into());
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(format!("a label is longer than {MAX_LABEL_LEN} bytes"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "the label `{label}` holds a character outside a-z 0-9 - _"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("the label `{label}` starts or ends with `-`"));
        }
    }
    // All-numeric last label: an address in disguise (`1.2.3.4.` or `0x7f.1`).
    if ascii
        .rsplit('.')
        .next()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("the last label is numeric: an IP address is not a host name".into());
    }
    Ok(ascii)
}

fn parse_ports(input: &str, text: &str) -> Result<Vec<u16>, EgressError> {
    let err = |reason: String| EgressError {
        input: input.to_string(),
        part: "ports",
        reason,
    };
    let mut ports = Vec::new();
    for p in text.split(',') {
        let port: u16 = p
            .trim()
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| err(format!("`{p}` is not a port 1-65535")))?;
        ports.push(port);
    }
    ports.sort_unstable();
    ports.dedup();
    if ports.len() > MAX_PORTS {
        return Err(err(format!("more than {MAX_PORTS} ports")));
    }
    Ok(ports)
}

impl EgressRule {
    /// Parses `PATTERN[:PORTS]`: `github.com:443`, `*.pypi.org`, `pypi.org:80,443`,
    /// `10.20.0.0/16:5432`. Ports default to 443.
    pub fn parse(input: &str) -> Result<EgressRule, EgressError> {
        let err = |reason: String| EgressError {
            input: input.to_string(),
            part: "pattern",
            reason,
        };
        // An IPv6 literal has colons of its own; say what is wrong with it plainly.
        if input.matches(':').count() > 1 || input.contains('[') {
            return Err(err(
                "IPv6 is not reachable through the gateway; name a host or an IPv4 network".into(),
            ));
        }
        let (pattern, ports) = match input.split_once(':') {
            Some((pattern, ports)) => (pattern, parse_ports(input, ports)?),
            None => (input, DEFAULT_PORTS.to_vec()),
        };
        let pattern = pattern.trim();
        if pattern.is_empty() {
            return Err(err("the pattern is empty".into()));
        }
        let target = if pattern == "*" || pattern == "*." {
            return Err(err(
                "bare `*` is every host: that is `net:host`, not an egress rule".into(),
            ));
        } else if pattern.contains('/') {
            let network = Cidr::parse(pattern).map_err(err)?;
            let loopback = Cidr {
                addr: Ipv4Addr::new(127, 0, 0, 0),
                prefix: 8,
            };
            if loopback.covers(network) {
                return Err(err(format!(
                    "`{network}` is inside 127.0.0.0/8, the sandbox's own loopback: it never reaches the gateway (`net:loopback` is the sandbox's loopback)"
                )));
            }
            EgressTarget::Network(network)
        } else if let Some(rest) = pattern.strip_prefix("*.") {
            if rest.contains('*') {
                return Err(err("`*` may only be the whole first label".into()));
            }
            let name = normalize_name(rest).map_err(err)?;
            if !name.contains('.') {
                return Err(err(format!(
                    "`*.{name}` covers a whole top-level domain; name a registered domain"
                )));
            }
            EgressTarget::Subdomains(name)
        } else if pattern.contains('*') {
            return Err(err(
                "`*` may only be the whole first label (`*.example.com`)".into(),
            ));
        } else {
            EgressTarget::Name(normalize_name(pattern).map_err(err)?)
        };
        Ok(EgressRule { target, ports })
    }

    /// Whether this rule's target covers the (normalised) name `name`.
    pub fn matches_name(&self, name: &str) -> bool {
        match &self.target {
            EgressTarget::Name(n) => n == name,
            EgressTarget::Subdomains(parent) => name
                .strip_suffix(parent.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
            EgressTarget::Network(_) => false,
        }
    }

    /// Whether this (granted) rule allows everything `requested` asks: its target and
    /// every one of its ports.
    pub fn covers(&self, requested: &EgressRule) -> bool {
        let target = match (&self.target, &requested.target) {
            (EgressTarget::Name(g), EgressTarget::Name(r)) => g == r,
            (EgressTarget::Subdomains(_), EgressTarget::Name(r)) => self.matches_name(r),
            (EgressTarget::Subdomains(g), EgressTarget::Subdomains(r)) => {
                g == r || self.matches_name(r)
            }
            (EgressTarget::Network(g), EgressTarget::Network(r)) => g.covers(*r),
            _ => false,
        };
        target && requested.ports.iter().all(|p| self.ports.contains(p))
    }
}

impl fmt::Display for EgressTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EgressTarget::Name(n) => f.write_str(n),
            EgressTarget::Subdomains(n) => write!(f, "*.{n}"),
            EgressTarget::Network(c) => write!(f, "{c}"),
        }
    }
}

impl fmt::Display for EgressRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ports: Vec<String> = self.ports.iter().map(|p| p.to_string()).collect();
        write!(f, "{}:{}", self.target, ports.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(text: &str) -> EgressRule {
        EgressRule::parse(text).unwrap()
    }

    fn refused(text: &str) -> EgressError {
        EgressRule::parse(text).unwrap_err()
    }

    #[test]
    fn patterns_parse_with_default_and_listed_ports() {
        assert_eq!(
            r("github.com"),
            EgressRule {
                target: EgressTarget::Name("github.com".into()),
                ports: vec![443]
            }
        );
        assert_eq!(r("pypi.org:443,80,80").ports, vec![80, 443]);
        assert_eq!(
            r("*.pythonhosted.org:443").target,
            EgressTarget::Subdomains("pythonhosted.org".into())
        );
        assert_eq!(
            r("10.20.0.0/16:5432").target,
            EgressTarget::Network(Cidr::parse("10.20.0.0/16").unwrap())
        );
        assert_eq!(r("*.pypi.org").to_string(), "*.pypi.org:443");
    }

    #[test]
    fn names_are_lowercased_undotted_and_idna() {
        assert_eq!(
            r("GitHub.COM.").target,
            EgressTarget::Name("github.com".into())
        );
        assert_eq!(
            r("bücher.example").target,
            EgressTarget::Name("xn--bcher-kva.example".into())
        );
    }

    #[test]
    fn bad_patterns_are_refused_naming_the_part() {
        for (input, part, says) in [
            ("*", "pattern", "net:host"),
            ("*:443", "pattern", "net:host"),
            ("1.2.3.4", "pattern", "IP address"),
            ("1.2.3.4:443", "pattern", "IP address"),
            ("::1", "pattern", "IPv6"),
            ("*.", "pattern", "net:host"),
            ("*.com", "pattern", "top-level"),
            ("a..b.com", "pattern", "empty label"),
            (".b.com", "pattern", "empty label"),
            ("a.*.com", "pattern", "first label"),
            ("*a.com", "pattern", "first label"),
            ("a.com:0", "ports", "1-65535"),
            ("a.com:65536", "ports", "1-65535"),
            ("a.com:", "ports", "1-65535"),
            ("a b.com", "pattern", "character"),
            ("10.0.0.1/8", "pattern", "host bits"),
            ("0.0.0.0/0", "pattern", "net:host"),
            ("127.0.0.1/32:5432", "pattern", "own loopback"),
            ("127.0.0.0/8", "pattern", "own loopback"),
            ("", "pattern", "empty"),
        ] {
            let e = refused(input);
            assert_eq!(e.part, part, "{input}: {e}");
            assert!(e.to_string().contains(says), "{input}: {e}");
        }
        let long = format!("{}.com", "a.".repeat(130));
        assert!(refused(&long).reason.contains("longer"));
        let label = format!("{}.com", "a".repeat(64));
        assert!(refused(&label).reason.contains("label"));
    }

    #[test]
    fn wildcard_covers_subdomains_not_the_apex() {
        let w = r("*.example.com");
        assert!(w.matches_name("a.example.com"));
        assert!(w.matches_name("a.b.example.com"));
        assert!(!w.matches_name("example.com"));
        assert!(!w.matches_name("badexample.com"));
        assert!(!w.matches_name("example.com.evil.org"));
    }

    #[test]
    fn attenuation_narrows_targets_and_ports() {
        assert!(r("*.example.com:80,443").covers(&r("a.example.com:443")));
        assert!(r("*.example.com").covers(&r("*.a.example.com")));
        assert!(!r("*.example.com").covers(&r("example.com")));
        assert!(!r("a.example.com:443").covers(&r("a.example.com:80")));
        assert!(!r("a.example.com").covers(&r("*.a.example.com")));
        assert!(r("10.0.0.0/8:5432").covers(&r("10.20.0.0/16:5432")));
        assert!(!r("10.20.0.0/16:5432").covers(&r("10.0.0.0/8:5432")));
        assert!(!r("10.0.0.0/8:5432").covers(&r("a.example.com:5432")));
    }
}
