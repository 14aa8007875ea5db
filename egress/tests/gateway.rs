//! The gateway end to end, without a sandbox: a thread enters a fresh network namespace,
//! creates the link, and probes through it; the test "internet" (servers and a DNS server)
//! lives on 127.77.N.x of this machine's loopback. Every probe aims at those test hosts or
//! at the gateway's own stand-in addresses, never at a real outside address.
//!
//! Needs root (a network namespace and a TUN device); with COVENANT_REQUIRE_LIVE=1 a
//! missing privilege fails the test instead of skipping it.

use covenant_egress::gateway::Limits;
use covenant_egress::{EgressReport, Gateway, Settings};
use covenant_policy::egress::{Cidr, EgressRule, GATEWAY_ADDR};
use covenant_test_support::internet::{self, host, Servers};
use covenant_test_support::Need;
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{rdata::A, Name, RData, RecordType};
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn live() -> bool {
    covenant_test_support::have(&[Need::Root, TUN])
}

const TUN: Need = Need::File {
    path: "/dev/net/tun",
    package: "the tun kernel module",
};

/// The shared test internet (`covenant_test_support::internet`), plus a server that
/// speaks first on port 22 of .10, and the gateway settings that reach it.
struct Internet(internet::Internet);

impl Internet {
    fn start(net: u8, table: &[(&str, Ipv4Addr)]) -> Internet {
        let inner = internet::Internet::start(
            net,
            table,
            Servers {
                read_timeout: Duration::from_millis(300),
                answer_silence: true,
            },
        );
        let received = inner.recorder();
        // A server that speaks first (as ssh does), on port 22 of .10.
        let l = TcpListener::bind((host(net, 10), 22)).expect("bind a server-first server");
        let rec = received.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let rec = rec.clone();
                std::thread::spawn(move || {
                    let _ = s.write_all(b"SSH-2.0-test\r\n");
                    let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
                    let mut buf = [0u8; 4096];
                    if let Ok(n) = s.read(&mut buf) {
                        if n > 0 {
                            rec.lock().unwrap().push(buf[..n].to_vec());
                            let _ = s.write_all(b"OK\n");
                        }
                    }
                });
            }
        });
        Internet(inner)
    }

    fn settings(&self) -> Settings {
        Settings {
            resolver: SocketAddr::from((host(self.0.net, 53), 53)),
            public: vec![Cidr {
                addr: Ipv4Addr::new(127, 77, self.0.net, 0),
                prefix: 24,
            }],
            own_addresses: covenant_egress::settings::host_addresses(),
        }
    }

    fn received(&self) -> Vec<Vec<u8>> {
        self.0.received()
    }
}

/// Which link the sandbox's namespace gets.
#[derive(Debug, Clone, Copy)]
enum Path {
    /// A TUN device and the gateway's own TCP/IP stack (gVisor's).
    Device,
    /// The namespace's loopback takes every destination; the gateway's sockets are in it.
    Kernel,
}

/// Declares a test written as `fn NAME(path, net)` once for each path, each with a test
/// internet of its own (`net`, and `net + 100` on the kernel path).
macro_rules! on_both_paths {
    ($name:ident, $net:expr) => {
        mod $name {
            #[test]
            fn device() {
                super::$name(super::Path::Device, $net)
            }
            #[test]
            fn kernel() {
                super::$name(super::Path::Kernel, $net + 100)
            }
        }
    };
}

/// Makes the link of `path` in the calling thread's network namespace.
fn make_link(path: Path) -> Link {
    match path {
        Path::Device => {
            Link::Device(covenant_egress::link::create_link().expect("create the link"))
        }
        Path::Kernel => {
            Link::Kernel(covenant_egress::link::create_kernel_link().expect("create the link"))
        }
    }
}

enum Link {
    Device(std::os::fd::OwnedFd),
    Kernel(covenant_egress::link::KernelLink),
}

impl Link {
    fn start(self, rules: Vec<EgressRule>, settings: Settings, limits: Limits) -> Gateway {
        match self {
            Link::Device(tun) => Gateway::start(tun, rules, settings, limits),
            Link::Kernel(link) => Gateway::start_kernel(link, rules, settings, limits),
        }
        .expect("start")
    }
}

/// Runs `probe` on a thread inside a fresh network namespace whose only way out is a
/// gateway enforcing `rules` over the link of `path`; returns its result and the gateway's
/// report.
fn in_sandbox<R: Send + 'static>(
    path: Path,
    internet: &Internet,
    rules: &[&str],
    limits: Limits,
    probe: impl FnOnce() -> R + Send + 'static,
) -> (R, EgressReport) {
    let rules: Vec<EgressRule> = rules
        .iter()
        .map(|r| EgressRule::parse(r).unwrap())
        .collect();
    let (link_tx, link_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let sandbox = std::thread::spawn(move || {
        // SAFETY: unshare of this thread's network namespace only.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare");
        link_tx.send(make_link(path)).unwrap();
        go_rx.recv().unwrap();
        probe()
    });
    let gateway = link_rx
        .recv()
        .unwrap()
        .start(rules, internet.settings(), limits);
    go_tx.send(()).unwrap();
    let result = sandbox.join().expect("the probe panicked");
    (result, gateway.stop())
}

fn query(name: &str) -> Result<Vec<Ipv4Addr>, ResponseCode> {
    let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut m = Message::new();
    m.set_id(4242).set_recursion_desired(true);
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    sock.send_to(&m.to_vec().unwrap(), (GATEWAY_ADDR, 53))
        .map_err(|_| ResponseCode::ServFail)?;
    let mut buf = [0u8; 1500];
    let n = sock.recv(&mut buf).map_err(|_| ResponseCode::ServFail)?;
    let r = Message::from_vec(&buf[..n]).unwrap();
    if r.response_code() != ResponseCode::NoError {
        return Err(r.response_code());
    }
    Ok(r.answers()
        .iter()
        .filter_map(|a| match a.data() {
            RData::A(A(ip)) => Some(*ip),
            _ => None,
        })
        .collect())
}

/// Connects, sends `bytes`, and reads the answer to the end.
fn exchange(to: SocketAddrV4, bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect_timeout(&to.into(), Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.write_all(bytes)?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    Ok(out)
}

fn client_hello(sni: Option<&str>) -> Vec<u8> {
    let mut ext = Vec::new();
    if let Some(name) = sni {
        let n = name.as_bytes();
        ext.extend_from_slice(&[0, 0]);
        ext.extend_from_slice(&((n.len() + 5) as u16).to_be_bytes());
        ext.extend_from_slice(&((n.len() + 3) as u16).to_be_bytes());
        ext.push(0);
        ext.extend_from_slice(&(n.len() as u16).to_be_bytes());
        ext.extend_from_slice(n);
    }
    let mut body = vec![3, 3];
    body.extend_from_slice(&[7; 32]);
    body.extend_from_slice(&[0, 0, 2, 0x13, 0x01, 1, 0]);
    body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
    body.extend_from_slice(&ext);
    let mut hs = vec![1];
    hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 3, 1];
    rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
    rec.extend_from_slice(&hs);
    rec.extend_from_slice(b"END");
    rec
}

on_both_paths!(an_allowed_name_is_reached_by_tls_and_http, 1);

fn an_allowed_name_is_reached_by_tls_and_http(path: Path, net: u8) {
    if !live() {
        return;
    }
    let net = Internet::start(net, &[("api.test", host(net, 10))]);
    let ((tls, http, port80), report) =
        in_sandbox(path, &net, &["api.test:443,80"], Limits::default(), || {
            let ips = query("api.test.").expect("api.test resolves");
            assert_eq!(ips.len(), 1);
            assert!(ips[0].octets()[..2] == [198, 18], "a stand-in: {ips:?}");
            let to = |port| SocketAddrV4::new(ips[0], port);
            (
                exchange(to(443), &client_hello(Some("api.test"))),
                exchange(to(443), b"GET / HTTP/1.1\r\nHost: API.test\r\n\r\n"),
                exchange(to(80), b"GET / HTTP/1.1\r\nHost: api.test:80\r\n\r\n"),
            )
        });
    assert_eq!(tls.unwrap(), b"HELLO\n");
    assert_eq!(http.unwrap(), b"HELLO\n");
    assert_eq!(port80.unwrap(), b"HELLO\n");
    assert_eq!(net.received().len(), 3);
    assert_eq!(report.connections_allowed, 3, "{report:#?}");
    assert!(report.bytes_in >= 18 && report.bytes_out > 0, "{report:#?}");
    assert_eq!(report.queries_answered, 1);
}

on_both_paths!(
    names_literals_ports_and_first_bytes_outside_the_rules_are_refused,
    2
);

fn names_literals_ports_and_first_bytes_outside_the_rules_are_refused(path: Path, net: u8) {
    if !live() {
        return;
    }
    let server = host(net, 10);
    let net = Internet::start(
        net,
        &[("api.test", host(net, 10)), ("other.test", host(net, 11))],
    );
    let (results, report) = in_sandbox(
        path,
        &net,
        &["api.test:443"],
        Limits::default(),
        move || {
            let other = query("other.test.");
            let ips = query("api.test.").unwrap();
            let api = |port| SocketAddrV4::new(ips[0], port);
            vec![
                (
                    "other name",
                    other.map(|_| Vec::new()).map_err(|c| c.to_string()),
                ),
                (
                    "IP literal of the server",
                    exchange(
                        SocketAddrV4::new(server, 443),
                        b"GET / HTTP/1.1\r\nHost: api.test\r\n\r\n",
                    )
                    .map_err(|e| e.to_string()),
                ),
                (
                    "stand-in never handed out",
                    exchange(
                        SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 200), 443),
                        &client_hello(Some("api.test")),
                    )
                    .map_err(|e| e.to_string()),
                ),
                (
                    "port not allowed",
                    exchange(api(80), b"GET / HTTP/1.1\r\nHost: api.test\r\n\r\n")
                        .map_err(|e| e.to_string()),
                ),
                (
                    "SNI mismatch (fronting)",
                    exchange(api(443), &client_hello(Some("other.test")))
                        .map_err(|e| e.to_string()),
                ),
                (
                    "no SNI",
                    exchange(api(443), &client_hello(None)).map_err(|e| e.to_string()),
                ),
                (
                    "Host mismatch",
                    exchange(api(443), b"GET / HTTP/1.1\r\nHost: other.test\r\n\r\n")
                        .map_err(|e| e.to_string()),
                ),
                (
                    "the gateway's other ports",
                    exchange(SocketAddrV4::new(GATEWAY_ADDR, 53), b"x").map_err(|e| e.to_string()),
                ),
            ]
        },
    );
    for (what, result) in &results {
        match result {
            Err(_) => {}
            Ok(bytes) => assert!(bytes.is_empty(), "{what}: got {bytes:?}"),
        }
        assert!(
            result.is_err() || what == &"IP literal of the server",
            "{what}: {result:?}"
        );
    }
    assert!(
        net.received().is_empty(),
        "a refused stream reached a server: {:?}",
        net.received()
    );
    let reasons: Vec<String> = report
        .refused
        .iter()
        .filter_map(|e| e.reason.clone())
        .collect();
    for needle in [
        "not allowed by any egress rule",
        "not answered",
        "port",
        "SNI `other.test`",
        "without SNI",
        "Host `other.test`",
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(needle)),
            "no refusal says {needle}: {reasons:#?}"
        );
    }
}

on_both_paths!(rebinding_and_long_names_are_refused, 3);

fn rebinding_and_long_names_are_refused(path: Path, net: u8) {
    if !live() {
        return;
    }
    let net = Internet::start(
        net,
        &[
            ("rebind.test", Ipv4Addr::new(127, 0, 0, 1)),
            ("meta.test", Ipv4Addr::new(127, 78, 3, 254)),
            ("*.wild.test", host(net, 10)),
        ],
    );
    let long = format!("{}.{}.wild.test.", "a".repeat(60), "b".repeat(60));
    let (r, report) = in_sandbox(
        path,
        &net,
        &["rebind.test", "meta.test", "*.wild.test"],
        Limits::default(),
        move || {
            (
                query("rebind.test."),
                query("meta.test."),
                query(&long),
                query("short.wild.test."),
            )
        },
    );
    assert_eq!(r.0, Err(ResponseCode::Refused));
    assert_eq!(r.1, Err(ResponseCode::Refused));
    assert_eq!(r.2, Err(ResponseCode::Refused));
    assert_eq!(r.3.map(|a| a.len()), Ok(1));
    let reasons: Vec<String> = report
        .refused
        .iter()
        .filter_map(|e| e.reason.clone())
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("loopback")),
        "{reasons:#?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("longer than")),
        "{reasons:#?}"
    );
}

on_both_paths!(udp_quic_icmp_and_ipv6_do_not_leave, 4);

fn udp_quic_icmp_and_ipv6_do_not_leave(path: Path, net: u8) {
    if !live() {
        return;
    }
    let literal = host(net, 10);
    let net = Internet::start(net, &[("api.test", literal)]);
    let sink = UdpSocket::bind((literal, 443)).unwrap();
    sink.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let (r, report) = in_sandbox(path, &net, &["api.test"], Limits::default(), move || {
        let ip = query("api.test.").unwrap()[0];
        let u = UdpSocket::bind("0.0.0.0:0").unwrap();
        let quic = u.send_to(b"quic", (ip, 443)).is_ok();
        let other_dns = u.send_to(b"dns", (ip, 53)).is_ok();
        let _ = u.send_to(b"literal", (literal, 443));
        // ICMP echo over a raw socket (root in this namespace may open one).
        // SAFETY: socket returns a new descriptor or -1.
        let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
        let echo = [8u8, 0, 0xf7, 0xff, 0, 0, 0, 0];
        let to = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(ip).to_be(),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: sends from live buffers to a live sockaddr.
        unsafe {
            libc::sendto(
                raw,
                echo.as_ptr().cast(),
                echo.len(),
                0,
                (&to as *const libc::sockaddr_in).cast(),
                std::mem::size_of_val(&to) as u32,
            );
        }
        let mut reply = [0u8; 64];
        let mut tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 500_000,
        };
        // SAFETY: sets a timeout from a live timeval of the size passed.
        unsafe {
            libc::setsockopt(
                raw,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&mut tv as *mut libc::timeval).cast(),
                std::mem::size_of_val(&tv) as u32,
            )
        };
        // A raw socket also sees the request itself where it loops back (on the kernel
        // path, `lo`): only an echo reply (type 0, after the 20-byte IP header) counts.
        let mut got = 0;
        loop {
            // SAFETY: reads at most the buffer's length into a live buffer.
            let n = unsafe { libc::recv(raw, reply.as_mut_ptr().cast(), reply.len(), 0) };
            if n <= 20 {
                break;
            }
            if reply[20] == 0 {
                got = n;
                break;
            }
        }
        let v6_global = TcpStream::connect_timeout(
            &"[2001:db8::1]:443".parse().unwrap(),
            Duration::from_secs(1),
        );
        let v6_link =
            std::net::UdpSocket::bind("[::]:0").and_then(|s| s.send_to(b"x", "[fe80::1%2]:53"));
        settled();
        (quic, other_dns, got, v6_global.is_err(), v6_link)
    });
    let (quic, other_dns, icmp_reply, v6_refused, _v6_link) = r;
    assert!(quic && other_dns, "the sends themselves succeed");
    assert!(icmp_reply <= 0, "an ICMP echo was answered");
    assert!(v6_refused, "IPv6 connected");
    let mut buf = [0u8; 64];
    assert!(sink.recv(&mut buf).is_err(), "UDP reached the test host");
    assert!(
        report.dropped.quic >= 1 && report.dropped.udp >= 1,
        "{:?}",
        report.dropped
    );
    assert!(report.dropped.icmp >= 1, "{:?}", report.dropped);
}

/// On the kernel path the namespace's own kernel answers UDP nothing is bound to, and the
/// gateway counts from what those answers quote: where a datagram was sent, not where the
/// answer goes (the sandbox chooses its sockets' source addresses). The sandbox's own
/// loopback is never counted, and the sinks count by destination too.
#[test]
fn the_kernel_paths_udp_counts_follow_where_datagrams_were_sent() {
    if !live() {
        return;
    }
    let net = Internet::start(110, &[("api.test", host(110, 10))]);
    let ((), report) = in_sandbox(Path::Kernel, &net, &["api.test"], Limits::default(), || {
        let send = |from: (Ipv4Addr, u16), to: (Ipv4Addr, u16), n: usize| {
            let u = UdpSocket::bind(from).unwrap();
            for _ in 0..n {
                u.send_to(b"x", to).unwrap();
            }
        };
        let (any, lo, other) = (
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::LOCALHOST,
            Ipv4Addr::new(10, 1, 2, 3),
        );
        let outside = Ipv4Addr::new(10, 0, 0, 1);
        // Counted: sent outside 127/8, whatever the source.
        send((lo, 0), (outside, 9000), 5);
        send((other, 0), (outside, 9001), 3);
        send((any, 0), (outside, 53), 4);
        send((any, 0), (outside, 443), 6);
        // Not counted: the sandbox's own loopback, whatever the source.
        send((other, 0), (lo, 9000), 7);
        send((any, 0), (lo, 53), 2);
        send((any, 0), (lo, 443), 2);
        // Not counted: the resolver's answers to clients already gone.
        for _ in 0..4 {
            let u = UdpSocket::bind((any, 0)).unwrap();
            let mut m = Message::new();
            m.add_query(Query::query(
                Name::from_ascii("api.test.").unwrap(),
                RecordType::A,
            ));
            u.send_to(&m.to_vec().unwrap(), (GATEWAY_ADDR, 53)).unwrap();
        }
        settled();
    });
    assert_eq!(report.dropped.udp, 5 + 3 + 4, "{:?}", report.dropped);
    assert_eq!(report.dropped.quic, 6, "{:?}", report.dropped);
}

on_both_paths!(
    connections_the_sandbox_ends_first_are_bounded_per_minute,
    11
);

/// Every upstream connection the gateway ends first (the sandbox ended its side first)
/// leaves a TIME_WAIT on the host, holding one of its ports for a minute: past the limit
/// per minute, new connections are refused, and say why.
fn connections_the_sandbox_ends_first_are_bounded_per_minute(path: Path, net: u8) {
    if !live() {
        return;
    }
    let net = Internet::start(net, &[("api.test", host(net, 10))]);
    let limits = Limits {
        max_closed_first_per_minute: 5,
        ..Limits::default()
    };
    let (served, report) = in_sandbox(path, &net, &["api.test"], limits, || {
        let ip = query("api.test.").unwrap()[0];
        (0..10)
            .filter(|_| {
                let Ok(mut s) = TcpStream::connect((ip, 443)) else {
                    return false;
                };
                let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
                let _ = s.write_all(&client_hello(Some("api.test")));
                // The sandbox ends its side first; the server answers at its end.
                let _ = s.shutdown(std::net::Shutdown::Write);
                let mut out = Vec::new();
                let served = s.read_to_end(&mut out).is_ok() && out == b"HELLO\n";
                std::thread::sleep(Duration::from_millis(50));
                served
            })
            .count()
    });
    assert!((5..10).contains(&served), "served {served} of 10");
    assert!(
        report
            .refused
            .iter()
            .any(|e| e.reason.as_deref().is_some_and(|r| r.contains("TIME_WAIT"))),
        "{:#?}",
        report.refused
    );
}

on_both_paths!(
    a_connection_the_sandbox_resets_leaves_no_time_wait_on_the_host,
    12
);

/// A connection that ends by a reset (here the sandbox's) ends upstream by a reset too:
/// closed with a FIN, the upstream socket, which is the host's, would be the first to close
/// and sit in TIME_WAIT, uncounted by the churn bound.
fn a_connection_the_sandbox_resets_leaves_no_time_wait_on_the_host(path: Path, net: u8) {
    if !live() {
        return;
    }
    let server = host(net, 12);
    let net = Internet::start(net, &[("patient.test", server)]);
    // Answers, then waits for the client's end before closing (as HTTP servers do).
    let l = TcpListener::bind((server, 443)).unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = [0u8; 4096];
                let mut got = Vec::new();
                while let Ok(n) = s.read(&mut buf) {
                    got.extend_from_slice(&buf[..n]);
                    if n == 0 || got.ends_with(b"END") {
                        break;
                    }
                }
                let _ = s.write_all(b"HELLO\n");
                while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
    let (served, _) = in_sandbox(path, &net, &["patient.test"], Limits::default(), || {
        let ip = query("patient.test.").unwrap()[0];
        (0..10)
            .filter(|_| {
                let Ok(mut s) = TcpStream::connect((ip, 443)) else {
                    return false;
                };
                let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
                let _ = s.write_all(&client_hello(Some("patient.test")));
                let mut answer = [0u8; 6];
                let served = s.read_exact(&mut answer).is_ok();
                let abort = libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                };
                nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::Linger, &abort)
                    .unwrap();
                drop(s);
                served
            })
            .count()
    });
    assert_eq!(served, 10);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        time_wait_to(SocketAddrV4::new(server, 443)),
        0,
        "upstream sockets left in TIME_WAIT on the host"
    );
}

/// TCP sockets of this namespace in TIME_WAIT towards `to` (`/proc/net/tcp`: addresses
/// are the network-order bytes read as a native integer, in hex, then the port).
fn time_wait_to(to: SocketAddrV4) -> usize {
    let remote = format!(
        "{:08X}:{:04X}",
        u32::from_ne_bytes(to.ip().octets()),
        to.port()
    );
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[2] == remote && f[3] == "06"
        })
        .count()
}

on_both_paths!(
    a_connection_storm_is_bounded_and_the_gateway_keeps_serving,
    5
);

/// Returns once the gateway has taken everything the sandbox sent before: a query answered
/// is read in a round after every datagram and packet sent ahead of it (the sinks and the
/// observer are read in the round the query is, the device's queue is in order), and its
/// answer goes out in a later one.
fn settled() {
    query("api.test.").expect("the gateway answers");
}

/// Whether the other side has reset (or ended) `s`, without waiting.
fn was_reset(s: &TcpStream) -> bool {
    let _ = s.set_nonblocking(true);
    let mut byte = [0u8];
    let reset = !matches!(s.peek(&mut byte), Err(e) if e.kind() == ErrorKind::WouldBlock);
    let _ = s.set_nonblocking(false);
    reset
}

fn a_connection_storm_is_bounded_and_the_gateway_keeps_serving(path: Path, net: u8) {
    if !live() {
        return;
    }
    let net = Internet::start(net, &[("api.test", host(net, 10))]);
    let limits = Limits {
        max_connections: 64,
        ..Limits::default()
    };
    let (after, report) = in_sandbox(path, &net, &["api.test"], limits, || {
        let ip = query("api.test.").unwrap()[0];
        let to: SocketAddr = SocketAddrV4::new(ip, 443).into();
        let mut open = Vec::new();
        for _ in 0..300 {
            if let Ok(s) = TcpStream::connect_timeout(&to, Duration::from_millis(500)) {
                open.push(s);
            }
        }
        // Held until the gateway has refused some: on the kernel path the handshake is the
        // kernel's, and the refusal a reset after it.
        let deadline = Instant::now() + Duration::from_secs(5);
        while open.len() == 300 && !open.iter().any(was_reset) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        drop(open);
        // The gateway takes the closes in its own time: until it has, a new connection may
        // still meet the limit.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let after = exchange(SocketAddrV4::new(ip, 443), &client_hello(Some("api.test")));
            if matches!(&after, Ok(b) if b == b"HELLO\n") || Instant::now() >= deadline {
                return after;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    assert_eq!(after.unwrap(), b"HELLO\n");
    assert!(report.peak_connections <= 64, "{}", report.peak_connections);
    assert!(
        report
            .refused
            .iter()
            .any(|e| e.reason.as_deref() == Some("connection limit reached")),
        "{:#?}",
        report.refused
    );
}

on_both_paths!(when_the_gateway_stops_the_sandbox_has_no_way_out, 6);

fn when_the_gateway_stops_the_sandbox_has_no_way_out(path: Path, net: u8) {
    if !live() {
        return;
    }
    let net = Internet::start(net, &[("api.test", host(net, 10))]);
    let rules = vec![EgressRule::parse("api.test").unwrap()];
    let (link_tx, link_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (asked_tx, asked_rx) = mpsc::channel::<()>();
    let sandbox = std::thread::spawn(move || {
        // SAFETY: unshare of this thread's network namespace only.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
        link_tx.send(make_link(path)).unwrap();
        go_rx.recv().unwrap();
        let before = query("api.test.");
        asked_tx.send(()).unwrap();
        let standin = before.clone().unwrap()[0];
        go_rx.recv().unwrap();
        let after = query("api.test.");
        let tcp =
            TcpStream::connect_timeout(&SocketAddr::from((standin, 443)), Duration::from_secs(1));
        (before, after, tcp.map(|_| ()))
    });
    let gateway = link_rx
        .recv()
        .unwrap()
        .start(rules, net.settings(), Limits::default());
    go_tx.send(()).unwrap();
    asked_rx.recv().unwrap();
    let report = gateway.stop();
    let _ = go_tx.send(());
    let (before, after, tcp) = sandbox.join().unwrap();
    assert!(before.is_ok());
    assert!(
        after.is_err(),
        "a query was answered after the gateway stopped"
    );
    assert!(
        tcp.is_err(),
        "a connection was made after the gateway stopped"
    );
    assert_eq!(report.failure, None);
}

#[test]
fn a_gateway_whose_link_goes_away_stops_and_says_so() {
    if !live() {
        return;
    }
    let net = Internet::start(7, &[("api.test", host(7, 10))]);
    let rules = vec![EgressRule::parse("api.test").unwrap()];
    let (fd_tx, fd_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let sandbox = std::thread::spawn(move || {
        // SAFETY: unshare of this thread's network namespace only.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
        fd_tx
            .send(covenant_egress::link::create_link().unwrap())
            .unwrap();
        go_rx.recv().unwrap();
        let before = query("api.test.");
        // A child of this thread runs in its namespace.
        let deleted = std::process::Command::new("ip")
            .args(["link", "delete", "egress0"])
            .status()
            .map(|s| s.success());
        std::thread::sleep(Duration::from_millis(300));
        let after = query("api.test.");
        (before, deleted, after)
    });
    let gateway = Gateway::start(
        fd_rx.recv().unwrap(),
        rules,
        net.settings(),
        Limits::default(),
    )
    .unwrap();
    go_tx.send(()).unwrap();
    let (before, deleted, after) = sandbox.join().unwrap();
    assert!(before.is_ok());
    assert_eq!(deleted.ok(), Some(true), "ip link delete");
    assert!(after.is_err());
    let deadline = Instant::now() + Duration::from_secs(5);
    while gateway.is_running() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!gateway.is_running(), "the gateway outlived its device");
    let report = gateway.stop();
    assert!(
        report
            .failure
            .as_deref()
            .is_some_and(|f| f.contains("mid-run")),
        "{:?}",
        report.failure
    );
}

on_both_paths!(
    a_server_first_protocol_works_and_its_client_bytes_are_still_checked,
    8
);

fn a_server_first_protocol_works_and_its_client_bytes_are_still_checked(path: Path, net: u8) {
    if !live() {
        return;
    }
    let net = Internet::start(net, &[("api.test", host(net, 10))]);
    let ((plain, fronted), report) =
        in_sandbox(path, &net, &["api.test:22"], Limits::default(), || {
            let ip = query("api.test.").unwrap()[0];
            let talk = |first: &[u8]| -> std::io::Result<Vec<u8>> {
                let mut s = TcpStream::connect_timeout(
                    &SocketAddr::from(SocketAddrV4::new(ip, 22)),
                    Duration::from_secs(3),
                )?;
                s.set_read_timeout(Some(Duration::from_secs(4)))?;
                let mut banner = [0u8; 14];
                s.read_exact(&mut banner)?;
                assert_eq!(&banner, b"SSH-2.0-test\r\n");
                s.write_all(first)?;
                let mut out = Vec::new();
                s.read_to_end(&mut out)?;
                Ok(out)
            };
            (
                talk(b"SSH-2.0-client\r\n"),
                talk(&client_hello(Some("other.test"))),
            )
        });
    assert_eq!(plain.unwrap(), b"OK\n");
    assert!(fronted.map(|b| b.is_empty()).unwrap_or(true));
    let got = net.received();
    assert_eq!(got, vec![b"SSH-2.0-client\r\n".to_vec()], "{got:?}");
    assert!(
        report
            .refused
            .iter()
            .any(|e| e.reason.as_deref().is_some_and(|r| r.contains("SNI"))),
        "{:#?}",
        report.refused
    );
}

/// Sends one hand-made IPv4 packet out of the namespace's link (root: a raw socket).
fn send_raw(raw: i32, packet: &[u8], dst: Ipv4Addr) {
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(dst).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sends from a live buffer to a valid sockaddr_in of the size passed.
    unsafe {
        libc::sendto(
            raw,
            packet.as_ptr().cast(),
            packet.len(),
            0,
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from(c[0]) << 8
        };
        sum += u32::from(w);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 packet from the sandbox's address with `options` in its header and `proto`'s
/// `payload`, whose TCP or UDP checksum is made right unless `bad_l4`.
fn ipv4(dst: Ipv4Addr, proto: u8, options: &[u8], payload: &[u8], bad_l4: bool) -> Vec<u8> {
    let src = Ipv4Addr::new(169, 254, 77, 2);
    let ihl = 5 + options.len() / 4;
    let mut p = vec![0u8; ihl * 4];
    p[0] = 0x40 | ihl as u8;
    let total = (ihl * 4 + payload.len()) as u16;
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p[8] = 64;
    p[9] = proto;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    p[20..20 + options.len()].copy_from_slice(options);
    let c = checksum(&p);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    let mut l4 = payload.to_vec();
    let at = match proto {
        6 if l4.len() >= 18 => Some(16),
        17 if l4.len() >= 8 => Some(6),
        _ => None,
    };
    if let Some(at) = at {
        l4[at] = 0;
        l4[at + 1] = 0;
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&src.octets());
        pseudo.extend_from_slice(&dst.octets());
        pseudo.extend_from_slice(&[0, proto]);
        pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
        pseudo.extend_from_slice(&l4);
        let c = if bad_l4 { 0x1234 } else { checksum(&pseudo) };
        l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }
    p.extend_from_slice(&l4);
    p
}

#[test]
fn malformed_packets_do_not_stop_the_gateway() {
    if !live() {
        return;
    }
    let net = Internet::start(9, &[("api.test", host(9, 10))]);
    let ((survived, after), report) = in_sandbox(
        Path::Device,
        &net,
        &["api.test:443,80"],
        Limits::default(),
        || {
            let ips = query("api.test.").unwrap();
            let api = ips[0];
            // SAFETY: a raw socket of this thread's namespace.
            let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
            assert!(raw >= 0);
            let mut seed = 0x2545_f491_4f6c_dd1du64;
            let mut rnd = move || {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed
            };
            for i in 0..20000u32 {
                let r = rnd();
                let dst = match r % 4 {
                    0 => api,
                    1 => GATEWAY_ADDR,
                    2 => Ipv4Addr::new(198, 18, 0, (r >> 8) as u8),
                    // Never a real outside address: the test internet and the pool,
                    // which a broken gateway could not put on a real network.
                    _ => match (r >> 24) % 2 {
                        0 => host(9, (r >> 8) as u8),
                        _ => Ipv4Addr::new(198, 19, (r >> 8) as u8, (r >> 16) as u8),
                    },
                };
                let len = (rnd() % 80) as usize;
                let mut l4: Vec<u8> = (0..len).map(|_| rnd() as u8).collect();
                let proto = match (r >> 16) % 5 {
                    0..=2 => 6u8,
                    3 => 17,
                    _ => (rnd() % 256) as u8,
                };
                if proto == 6 && l4.len() >= 20 {
                    // Ports the gateway allows, a plausible data offset, random flags,
                    // windows, urgent pointers and options.
                    let sport = 40000 + (i % 64) as u16;
                    l4[0..2].copy_from_slice(&sport.to_be_bytes());
                    let dport: u16 = if r % 3 == 0 { 80 } else { 443 };
                    l4[2..4].copy_from_slice(&dport.to_be_bytes());
                    let doff = 5 + (rnd() % 11) as u8;
                    l4[12] = doff << 4;
                    if r % 2 == 0 {
                        l4[13] = 0x02; // SYN
                    }
                    if r % 7 == 0 {
                        l4[14] = 0;
                        l4[15] = 0; // zero window
                    }
                }
                if proto == 17 && l4.len() >= 8 {
                    l4[0..2].copy_from_slice(&5353u16.to_be_bytes());
                    l4[2..4].copy_from_slice(&53u16.to_be_bytes());
                    let n = l4.len() as u16;
                    l4[4..6].copy_from_slice(&n.to_be_bytes());
                }
                let opts: Vec<u8> = match r % 5 {
                    0 => vec![],
                    1 => vec![1, 1, 1, 0],
                    2 => vec![7, 7, 4, 0, 0, 0, 0, 0],
                    3 => (0..4 * (rnd() % 10)).map(|_| rnd() as u8).collect(),
                    _ => vec![0x44, 40, 5, 0],
                };
                let packet = ipv4(dst, proto, &opts, &l4, r % 13 == 0);
                send_raw(raw, &packet, dst);
            }
            std::thread::sleep(Duration::from_millis(500));
            // A full queue drops packets, a query among them: any answer proves it.
            let alive = (0..3).any(|_| query("api.test.").is_ok());
            let after = exchange(SocketAddrV4::new(api, 443), &client_hello(Some("api.test")));
            (alive, after)
        },
    );
    assert!(survived, "{report:#?}");
    assert_eq!(after.unwrap(), b"HELLO\n", "{report:#?}");
    assert!(report.failure.is_none(), "{report:#?}");
}
