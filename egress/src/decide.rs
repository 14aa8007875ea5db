//! The decisions, as pure functions of the rules, the operator's settings and the names
//! answered so far: which names are answered, which upstream addresses may be reached,
//! which connections are forwarded, and whether a stream's first bytes name the host its
//! address was resolved for.

use crate::names::{NameTable, STANDIN_POOL};
use crate::settings::Settings;
use crate::sniff::Sniffed;
use covenant_policy::egress::{normalize_name, Cidr, EgressRule, EgressTarget};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};

/// The longest query name the gateway answers, in bytes.
pub const MAX_QUERY_NAME: usize = 128;

/// Ranges never reached unless a network grant (or the operator's public list) names
/// them, each with the reason.
pub const NEVER_REACHABLE: &[(Cidr, &str)] = &[
    (cidr(0, 0, 0, 0, 8), "`this network` (0.0.0.0/8)"),
    (cidr(127, 0, 0, 0, 8), "loopback (127.0.0.0/8)"),
    (
        cidr(169, 254, 0, 0, 16),
        "link-local, where cloud metadata lives (169.254.0.0/16)",
    ),
    (cidr(10, 0, 0, 0, 8), "private (RFC 1918, 10.0.0.0/8)"),
    (cidr(172, 16, 0, 0, 12), "private (RFC 1918, 172.16.0.0/12)"),
    (
        cidr(192, 168, 0, 0, 16),
        "private (RFC 1918, 192.168.0.0/16)",
    ),
    (
        cidr(100, 64, 0, 0, 10),
        "shared address space (100.64.0.0/10)",
    ),
    (
        cidr(192, 0, 0, 0, 24),
        "IETF protocol assignments (192.0.0.0/24)",
    ),
    (
        cidr(198, 18, 0, 0, 15),
        "benchmarking, the gateway's stand-in pool (198.18.0.0/15)",
    ),
    (cidr(224, 0, 0, 0, 4), "multicast (224.0.0.0/4)"),
    (
        cidr(240, 0, 0, 0, 4),
        "reserved and broadcast (240.0.0.0/4)",
    ),
];

const fn cidr(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> Cidr {
    Cidr {
        addr: Ipv4Addr::new(a, b, c, d),
        prefix,
    }
}

/// Why the gateway refused something.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The query's name matches no rule.
    NameNotAllowed,
    /// The query's name is longer than the gateway answers (DNS tunnelling).
    NameTooLong { len: usize },
    /// The query is not a well-formed single question.
    MalformedQuery(&'static str),
    /// Only A queries are forwarded (TXT, MX, ... carry tunnels).
    QueryType(String),
    /// The run already asked for as many distinct names as it may.
    TooManyNames,
    /// The upstream resolver failed or did not answer.
    Upstream(String),
    /// Every address an allowed name resolved to is one never reached.
    AnswerUnreachable { address: Ipv4Addr, range: String },
    /// The address is neither a stand-in for an allowed name nor in a granted network.
    NotAnswered,
    /// The port is not allowed for the name or network.
    Port,
    /// The TLS ClientHello has no SNI.
    NoSni,
    /// The SNI is not the name the address was resolved for.
    SniMismatch { sni: String },
    /// The HTTP request has no (single) Host header.
    NoHost,
    /// The Host header is not the name the address was resolved for.
    HostMismatch { host: String },
    /// The first bytes did not come, or did not fit, within the bounds.
    FirstBytes(&'static str),
    /// The gateway holds as many connections as it may.
    ConnectionLimit,
    /// The upstream connection failed.
    Connect(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NameNotAllowed => f.write_str("name not allowed by any egress rule"),
            Refusal::NameTooLong { len } => write!(
                f,
                "name of {len} bytes is longer than the gateway answers ({} bytes)",
                MAX_QUERY_NAME
            ),
            Refusal::MalformedQuery(what) => write!(f, "malformed query: {what}"),
            Refusal::QueryType(t) => write!(f, "query type {t} is not answered"),
            Refusal::TooManyNames => f.write_str("the run asked for too many distinct names"),
            Refusal::Upstream(e) => write!(f, "upstream resolver: {e}"),
            Refusal::AnswerUnreachable { address, range } => {
                write!(f, "answer {address} lies in {range}, never reached")
            }
            Refusal::NotAnswered => f.write_str(
                "address not answered by the gateway for an allowed name, nor in a granted network",
            ),
            Refusal::Port => f.write_str("port not allowed for this host"),
            Refusal::NoSni => f.write_str("TLS ClientHello without SNI"),
            Refusal::SniMismatch { sni } => {
                write!(
                    f,
                    "SNI `{sni}` is not the name this address was answered for"
                )
            }
            Refusal::NoHost => f.write_str("HTTP request without a single Host header"),
            Refusal::HostMismatch { host } => {
                write!(
                    f,
                    "Host `{host}` is not the name this address was answered for"
                )
            }
            Refusal::FirstBytes(what) => write!(f, "first bytes: {what}"),
            Refusal::ConnectionLimit => f.write_str("connection limit reached"),
            Refusal::Connect(e) => write!(f, "upstream connect: {e}"),
        }
    }
}

/// The rules of one run, as the gateway asks them.
#[derive(Debug, Clone)]
pub struct Rules {
    rules: Vec<EgressRule>,
}

impl Rules {
    pub fn new(rules: Vec<EgressRule>) -> Self {
        Rules { rules }
    }

    pub fn rules(&self) -> &[EgressRule] {
        &self.rules
    }

    /// Whether any rule names `name` (normalised).
    pub fn name_allowed(&self, name: &str) -> bool {
        self.rules.iter().any(|r| r.matches_name(name))
    }

    /// Whether `port` is allowed for `name`.
    pub fn name_port_allowed(&self, name: &str, port: u16) -> bool {
        self.rules
            .iter()
            .any(|r| r.matches_name(name) && r.ports.contains(&port))
    }

    /// The granted networks holding `ip`, on any port.
    fn networks(&self, ip: Ipv4Addr) -> impl Iterator<Item = &EgressRule> {
        self.rules.iter().filter(move |r| match r.target {
            EgressTarget::Network(c) => c.contains(ip),
            _ => false,
        })
    }
}

/// Where a forwarded connection goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub upstream: SocketAddrV4,
    /// The name the address was answered for; `None` for a granted network.
    pub name: Option<String>,
}

/// Whether the gateway may reach `ip` upstream: the operator's public ranges and granted
/// networks always; the host's own addresses and the [`NEVER_REACHABLE`] ranges never.
pub fn upstream_reachable(ip: Ipv4Addr, rules: &Rules, settings: &Settings) -> Result<(), Refusal> {
    if settings.public.iter().any(|c| c.contains(ip)) || rules.networks(ip).next().is_some() {
        return Ok(());
    }
    let unreachable = |range: &str| Refusal::AnswerUnreachable {
        address: ip,
        range: range.to_string(),
    };
    if settings.own_addresses.contains(&ip) {
        return Err(unreachable("the supervisor host's own addresses"));
    }
    match NEVER_REACHABLE.iter().find(|(c, _)| c.contains(ip)) {
        Some((_, why)) => Err(unreachable(why)),
        None => Ok(()),
    }
}

/// Decides a new connection (a SYN) to `dst`: a stand-in for an allowed name on a port the
/// name allows, or an address of a granted network on a port the network allows.
pub fn decide_connect(
    dst: SocketAddrV4,
    names: &NameTable,
    rules: &Rules,
    settings: &Settings,
) -> Result<Target, Refusal> {
    let (ip, port) = (*dst.ip(), dst.port());
    if STANDIN_POOL.contains(ip) {
        let answered = names.lookup(ip).ok_or(Refusal::NotAnswered)?;
        if !rules.name_port_allowed(&answered.name, port) {
            return Err(Refusal::Port);
        }
        upstream_reachable(answered.upstream, rules, settings)?;
        return Ok(Target {
            upstream: SocketAddrV4::new(answered.upstream, port),
            name: Some(answered.name.clone()),
        });
    }
    let mut networks = rules.networks(ip).peekable();
    if networks.peek().is_none() {
        return Err(Refusal::NotAnswered);
    }
    if !networks.any(|r| r.ports.contains(&port)) {
        return Err(Refusal::Port);
    }
    Ok(Target {
        upstream: dst,
        name: None,
    })
}

/// Decides a stream by its first bytes: on TLS the SNI, on plain HTTP the Host header, must
/// be the name the address was answered for. A granted network's stream and other
/// protocols (ssh, a database's own) pass on the address check alone.
pub fn check_first_bytes(target: &Target, sniffed: &Sniffed) -> Result<(), Refusal> {
    let Some(name) = &target.name else {
        return Ok(());
    };
    let same = |given: &str| normalize_name(given).is_ok_and(|n| &n == name);
    match sniffed {
        Sniffed::NeedMore => Err(Refusal::FirstBytes("incomplete")),
        Sniffed::Tls { sni: None } => Err(Refusal::NoSni),
        Sniffed::Tls { sni: Some(sni) } if same(sni) => Ok(()),
        Sniffed::Tls { sni: Some(sni) } => Err(Refusal::SniMismatch { sni: sni.clone() }),
        Sniffed::Http { host: None } => Err(Refusal::NoHost),
        Sniffed::Http { host: Some(host) } => {
            let bare = host_without_port(host);
            if same(bare) {
                Ok(())
            } else {
                Err(Refusal::HostMismatch { host: host.clone() })
            }
        }
        Sniffed::Other => Ok(()),
    }
}

/// `host[:port]` without the port (IPv6 literals keep their brackets and never match).
fn host_without_port(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(list: &[&str]) -> Rules {
        Rules::new(list.iter().map(|r| EgressRule::parse(r).unwrap()).collect())
    }

    fn settings(public: &[&str]) -> Settings {
        Settings {
            resolver: "127.0.0.1:53".parse().unwrap(),
            public: public.iter().map(|c| Cidr::parse(c).unwrap()).collect(),
            own_addresses: vec![Ipv4Addr::new(203, 0, 113, 9)],
        }
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn the_decision_table() {
        let r = rules(&["api.test:443", "*.cdn.test:80,443", "10.20.0.0/16:5432"]);
        let s = settings(&[]);
        let mut names = NameTable::new(16);
        let api = names.standin_for("api.test", ip("93.184.216.34")).unwrap();
        let cdn = names
            .standin_for("a.cdn.test", ip("93.184.216.34"))
            .unwrap();
        let meta = names
            .standin_for("api.test", ip("169.254.169.254"))
            .unwrap();
        let d = |a: Ipv4Addr, p: u16| decide_connect(SocketAddrV4::new(a, p), &names, &r, &s);
        // allowed name, allowed port
        assert_eq!(
            d(api, 443).unwrap(),
            Target {
                upstream: SocketAddrV4::new(ip("93.184.216.34"), 443),
                name: Some("api.test".into())
            }
        );
        assert_eq!(d(cdn, 80).unwrap().name.as_deref(), Some("a.cdn.test"));
        // the port belongs to the name
        assert_eq!(d(api, 80), Err(Refusal::Port));
        // a stand-in never handed out, an IP literal, the upstream address itself
        assert_eq!(d(ip("198.18.3.3"), 443), Err(Refusal::NotAnswered));
        assert_eq!(d(ip("93.184.216.34"), 443), Err(Refusal::NotAnswered));
        // rebinding: an allowed name answered with metadata's address
        assert!(matches!(
            d(meta, 443),
            Err(Refusal::AnswerUnreachable { .. })
        ));
        // a granted network, its port only, its neighbours not
        assert_eq!(d(ip("10.20.1.2"), 5432).unwrap().name, None);
        assert_eq!(d(ip("10.20.1.2"), 22), Err(Refusal::Port));
        assert_eq!(d(ip("10.21.0.1"), 5432), Err(Refusal::NotAnswered));
    }

    #[test]
    fn never_reachable_ranges_unless_granted_or_public() {
        let r = rules(&["a.test", "10.20.0.0/16:5432"]);
        for bad in [
            "127.0.0.1",
            "169.254.169.254",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "224.0.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "203.0.113.9",
        ] {
            assert!(
                upstream_reachable(ip(bad), &r, &settings(&[])).is_err(),
                "{bad}"
            );
        }
        assert!(upstream_reachable(ip("10.20.0.1"), &r, &settings(&[])).is_ok());
        assert!(upstream_reachable(ip("93.184.216.34"), &r, &settings(&[])).is_ok());
        assert!(upstream_reachable(ip("127.77.0.10"), &r, &settings(&["127.77.0.0/16"])).is_ok());
        assert!(upstream_reachable(ip("127.0.0.1"), &r, &settings(&["127.77.0.0/16"])).is_err());
    }

    #[test]
    fn first_bytes_must_name_the_answered_host() {
        let t = Target {
            upstream: "93.184.216.34:443".parse().unwrap(),
            name: Some("api.test".into()),
        };
        let tls = |s: &str| Sniffed::Tls {
            sni: Some(s.into()),
        };
        let http = |h: &str| Sniffed::Http {
            host: Some(h.into()),
        };
        assert!(check_first_bytes(&t, &tls("api.test")).is_ok());
        assert!(check_first_bytes(&t, &tls("API.test.")).is_ok());
        assert!(matches!(
            check_first_bytes(&t, &tls("b.cdn.test")),
            Err(Refusal::SniMismatch { .. })
        ));
        assert_eq!(
            check_first_bytes(&t, &Sniffed::Tls { sni: None }),
            Err(Refusal::NoSni)
        );
        assert!(check_first_bytes(&t, &http("api.test:443")).is_ok());
        assert!(matches!(
            check_first_bytes(&t, &http("evil.test")),
            Err(Refusal::HostMismatch { .. })
        ));
        assert_eq!(
            check_first_bytes(&t, &Sniffed::Http { host: None }),
            Err(Refusal::NoHost)
        );
        assert!(check_first_bytes(&t, &Sniffed::Other).is_ok());
        let net = Target {
            upstream: "10.20.0.1:5432".parse().unwrap(),
            name: None,
        };
        assert!(check_first_bytes(&net, &tls("anything.test")).is_ok());
    }
}
