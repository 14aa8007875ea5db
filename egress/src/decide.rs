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
    /// The TLS ClientHello carries an encrypted server name (ECH, ESNI): the server goes
    /// by a name the gateway cannot read.
    HiddenSni,
    /// The SNI is not the name the address was resolved for.
    SniMismatch { sni: String },
    /// The HTTP request has no (single) Host header.
    NoHost,
    /// The Host header is not the name the address was resolved for.
    HostMismatch { host: String },
    /// The first bytes did not come, or did not fit, within the bounds.
    FirstBytes(&'static str),
    /// A later request on a plain HTTP connection is framed so that a server could read
    /// it differently, or is not HTTP/1 at all.
    Framing(&'static str),
    /// A plain HTTP request asks to switch protocols (an `Upgrade` header, `CONNECT`).
    Upgrade(&'static str),
    /// The gateway holds as many connections as it may.
    ConnectionLimit,
    /// The upstream connection failed.
    Connect(String),
    /// The destination is the sandbox's own loopback, which is never forwarded.
    OwnLoopback,
    /// The sandbox ended, first, as many connections as it may in a minute: each left one
    /// of the host's ports in TIME_WAIT.
    Churn { limit: usize },
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
            Refusal::HiddenSni => f.write_str(
                "TLS ClientHello with an encrypted server name (ECH): the name it reaches is hidden",
            ),
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
            Refusal::Framing(what) => write!(f, "HTTP framing: {what}"),
            Refusal::Upgrade(what) => write!(
                f,
                "protocol upgrade on plain HTTP ({what}): what follows could not be checked; use TLS"
            ),
            Refusal::ConnectionLimit => f.write_str("connection limit reached"),
            Refusal::Connect(e) => write!(f, "upstream connect: {e}"),
            Refusal::Churn { limit } => write!(
                f,
                "{limit} connections ended by the sandbox first within a minute (each holds a host port in TIME_WAIT)"
            ),
            Refusal::OwnLoopback => f.write_str("the sandbox's own loopback is never forwarded"),
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

    /// Whether a granted network holds `ip` and allows `port` on it (`None`: any port).
    fn network_allows(&self, ip: Ipv4Addr, port: Option<u16>) -> bool {
        self.networks(ip).any(|r| match port {
            Some(p) => r.ports.contains(&p),
            None => true,
        })
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
/// A granted network opens only its own ports: with `port`, a name resolving into it is
/// reached there only on a port the network allows (`None`: on some port, as a DNS answer
/// is judged before any connection names one).
pub fn upstream_reachable(
    ip: Ipv4Addr,
    port: Option<u16>,
    rules: &Rules,
    settings: &Settings,
) -> Result<(), Refusal> {
    if settings.public.iter().any(|c| c.contains(ip)) || rules.network_allows(ip, port) {
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
        upstream_reachable(answered.upstream, Some(port), rules, settings)?;
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
    // Only as a server reads it: ASCII. IDNA would map fullwidth `ＡＰＩ.test` to the name,
    // but a server compares the bytes, finds no site, and answers from its default one.
    let same = |given: &str| given.is_ascii() && normalize_name(given).is_ok_and(|n| &n == name);
    match sniffed {
        Sniffed::NeedMore => Err(Refusal::FirstBytes("incomplete")),
        Sniffed::Tls { hidden: true, .. } => Err(Refusal::HiddenSni),
        Sniffed::Tls { sni: None, .. } => Err(Refusal::NoSni),
        Sniffed::Tls { sni: Some(sni), .. } if same(sni) => Ok(()),
        Sniffed::Tls { sni: Some(sni), .. } => Err(Refusal::SniMismatch { sni: sni.clone() }),
        Sniffed::Http { host: None, .. } => Err(Refusal::NoHost),
        Sniffed::Http {
            host: Some(host),
            authority,
        } => {
            // A server routes by an absolute-form target's host before the Host header:
            // both must be the name.
            for given in std::iter::once(host).chain(authority) {
                // Nor with a trailing dot: a front end that matches sites by exact name
                // (Go's ServeMux, an HAProxy ACL) sends `api.test.` to its default site.
                let h = host_without_port(given);
                if h.ends_with('.') || !same(h) {
                    return Err(Refusal::HostMismatch {
                        host: given.clone(),
                    });
                }
            }
            Ok(())
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
                upstream_reachable(ip(bad), None, &r, &settings(&[])).is_err(),
                "{bad}"
            );
        }
        assert!(upstream_reachable(ip("10.20.0.1"), None, &r, &settings(&[])).is_ok());
        assert!(upstream_reachable(ip("93.184.216.34"), None, &r, &settings(&[])).is_ok());
        assert!(
            upstream_reachable(ip("127.77.0.10"), None, &r, &settings(&["127.77.0.0/16"])).is_ok()
        );
        assert!(
            upstream_reachable(ip("127.0.0.1"), None, &r, &settings(&["127.77.0.0/16"])).is_err()
        );
    }

    #[test]
    fn a_network_grant_opens_only_its_ports_to_names_resolving_into_it() {
        // A name allowed on 443 whose answer lies in a network granted for 5432 only: the
        // network's grant does not open 10.20.1.1:443, and the name's rule does not open
        // a private address; together they must not either.
        let r = rules(&["api.test:443,5432", "10.20.0.0/16:5432"]);
        let s = settings(&[]);
        let mut names = NameTable::new(16);
        let inside = names.standin_for("api.test", ip("10.20.1.1")).unwrap();
        let d = |p: u16| decide_connect(SocketAddrV4::new(inside, p), &names, &r, &s);
        assert!(matches!(d(443), Err(Refusal::AnswerUnreachable { .. })));
        assert_eq!(
            d(5432).unwrap().upstream,
            SocketAddrV4::new(ip("10.20.1.1"), 5432)
        );
        // The DNS answer itself stays: some port of the network is granted.
        assert!(upstream_reachable(ip("10.20.1.1"), None, &r, &s).is_ok());
        assert!(upstream_reachable(ip("10.20.1.1"), Some(443), &r, &s).is_err());
    }

    #[test]
    fn http_requests_naming_another_host_outside_the_host_header_are_refused() {
        use crate::sniff::sniff;
        let t = Target {
            upstream: "93.184.216.34:80".parse().unwrap(),
            name: Some("api.test".into()),
        };
        let check = |req: &[u8]| check_first_bytes(&t, &sniff(req));
        assert!(check(b"GET / HTTP/1.1\r\nHost: api.test\r\n\r\n").is_ok());
        assert!(check(b"GET http://api.test/x HTTP/1.1\r\nHost: api.test\r\n\r\n").is_ok());
        // Each of these reaches a name-routing server at api.test's address as evil.test.
        for attack in [
            // absolute form: the target's host wins over Host (RFC 9112 3.2.2)
            &b"GET http://evil.test/ HTTP/1.1\r\nHost: api.test\r\n\r\n"[..],
            b"GET HTTP://evil.test:80/?q HTTP/1.1\r\nHost: api.test\r\n\r\n",
            b"GET http://api.test@evil.test/ HTTP/1.1\r\nHost: api.test\r\n\r\n",
            b"GET http://evil.test\\@api.test/ HTTP/1.1\r\nHost: api.test\r\n\r\n",
            b"CONNECT evil.test:443 HTTP/1.1\r\nHost: api.test\r\n\r\n",
            // empty lines before the request line are skipped by servers
            b"\r\nGET / HTTP/1.1\r\nHost: evil.test\r\n\r\n",
            b" \tGET / HTTP/1.1\r\nHost: evil.test\r\n\r\n",
            // a method the gateway did not list
            b"PROPFIND / HTTP/1.1\r\nHost: evil.test\r\n\r\n",
            b"get / HTTP/1.1\r\nHost: evil.test\r\n\r\n",
            b"GET\t/ HTTP/1.1\r\nHost: evil.test\r\n\r\n",
            // a method of any length; the blanks Python's http.server splits a line on
            b"XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX / HTTP/1.1\r\nHost: evil.test\r\n\r\n",
            b"\x0bGET / HTTP/1.1\r\nHost: evil.test\r\n\r\n",
            b"GET\x1c/\x1cHTTP/1.1\r\nHost: evil.test\r\n\r\n",
            // bare LF ends a line: two Host headers, the first hidden in another header
            b"GET / HTTP/1.1\r\nX: a\nHost: evil.test\r\nHost: api.test\r\n\r\n",
            // a folded Host header
            b"GET / HTTP/1.1\r\nHost: api.test\r\n evil.test\r\n\r\n",
            // names only the gateway reads as api.test; a server finds no such site and
            // answers from its default one
            "GET / HTTP/1.1\r\nHost: ＡＰＩ.test\r\n\r\n".as_bytes(),
            "GET / HTTP/1.1\r\nHost: api\u{ff0e}test\r\n\r\n".as_bytes(),
            "GET / HTTP/1.1\r\nHost: api.test\u{3000}\r\n\r\n".as_bytes(),
            b"GET / HTTP/1.1\r\nHost: api.test.\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: api.test.:80\r\n\r\n",
            b"GET http://api.test./ HTTP/1.1\r\nHost: api.test\r\n\r\n",
        ] {
            assert!(
                check(attack).is_err(),
                "{:?} passed",
                String::from_utf8_lossy(attack)
            );
        }
    }

    #[test]
    fn a_client_hello_with_an_encrypted_server_name_is_refused() {
        use crate::sniff::sniff;
        use crate::sniff::tests::client_hello_with;
        let t = Target {
            upstream: "93.184.216.34:443".parse().unwrap(),
            name: Some("api.test".into()),
        };
        let check = |hello: &[u8]| check_first_bytes(&t, &sniff(hello));
        assert!(check(&client_hello_with(Some("api.test"), &[], &[])).is_ok());
        // ECH: the outer SNI is the allowed name, the server answers for the inner one.
        let ech = [0xfe, 0x0d, 0, 4, 0, 1, 2, 3];
        let esni = [0xff, 0xce, 0, 2, 9, 9];
        // An extension the parser gives up on (a server_name list cut short) hides what
        // follows it from a parser that stops there.
        let junk = [0, 0x0a, 0, 3, 0, 9, 1];
        for (before, after) in [
            (&[][..], &ech[..]),
            (&ech[..], &[][..]),
            (&[][..], &esni[..]),
            (&[][..], &[&junk[..], &ech[..]].concat()[..]),
        ] {
            let hello = client_hello_with(Some("api.test"), before, after);
            assert_eq!(
                check(&hello),
                Err(Refusal::HiddenSni),
                "{before:?} {after:?}"
            );
        }
    }

    #[test]
    fn first_bytes_must_name_the_answered_host() {
        let t = Target {
            upstream: "93.184.216.34:443".parse().unwrap(),
            name: Some("api.test".into()),
        };
        let tls = |s: &str| Sniffed::Tls {
            sni: Some(s.into()),
            hidden: false,
        };
        let http = |h: &str| Sniffed::Http {
            host: Some(h.into()),
            authority: None,
        };
        assert!(check_first_bytes(&t, &tls("api.test")).is_ok());
        assert!(check_first_bytes(&t, &tls("API.test.")).is_ok());
        assert!(check_first_bytes(&t, &tls("ＡＰＩ.test")).is_err());
        assert!(matches!(
            check_first_bytes(&t, &tls("b.cdn.test")),
            Err(Refusal::SniMismatch { .. })
        ));
        assert_eq!(
            check_first_bytes(
                &t,
                &Sniffed::Tls {
                    sni: None,
                    hidden: false
                }
            ),
            Err(Refusal::NoSni)
        );
        assert!(check_first_bytes(&t, &http("api.test:443")).is_ok());
        assert!(matches!(
            check_first_bytes(&t, &http("evil.test")),
            Err(Refusal::HostMismatch { .. })
        ));
        assert_eq!(
            check_first_bytes(
                &t,
                &Sniffed::Http {
                    host: None,
                    authority: None
                }
            ),
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
