//! Live tests of `net` egress: the real `covenant-ctl run`, the real kernel, a sandboxed
//! python that tries each way around the gateway. The test "internet" is this process: a
//! DNS server and TCP servers on 127.77.N.x of this machine's loopback, named to the gateway
//! by `COVENANT_EGRESS_RESOLVER` and made reachable by `COVENANT_EGRESS_PUBLIC`. Every probe
//! aims at those test hosts, the gateway itself or reserved ranges, never at a real outside
//! address, so a broken gateway cannot put a packet on a real network.
//!
//! They need root; without it they skip with a printed reason, unless
//! `COVENANT_REQUIRE_LIVE=1`, in which case they fail.

use covenant_test_support::internet::{self, host, Servers};
use covenant_test_support::Need;
use std::net::{Ipv4Addr, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const PROBE: &str = include_str!("egress_probe.py");
const FILES: &str = include_str!("egress_files.py");

fn live() -> bool {
    covenant_test_support::have(&[
        Need::Root,
        Need::File {
            path: "/usr/bin/python3",
            package: "python3",
        },
        Need::File {
            path: "/dev/net/tun",
            package: "the tun kernel module",
        },
    ])
}

/// The shared test internet (`covenant_test_support::internet`) and a scratch home and
/// workspace.
struct Internet {
    net: u8,
    servers: internet::Internet,
    home: tempfile::TempDir,
}

impl Internet {
    fn start(net: u8, table: &[(&str, Ipv4Addr)]) -> Internet {
        Internet::start_with(net, table, Duration::from_millis(500))
    }

    /// With servers that end a connection after `read_timeout` without a complete request.
    fn start_with(net: u8, table: &[(&str, Ipv4Addr)], read_timeout: Duration) -> Internet {
        let servers = internet::Internet::start(
            net,
            table,
            Servers {
                read_timeout,
                answer_silence: false,
            },
        );
        let home = tempfile::Builder::new()
            .prefix("covenant-egress-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        std::fs::create_dir(home.path().join("ws")).unwrap();
        std::fs::write(home.path().join("ws/probe.py"), PROBE).unwrap();
        Internet { net, servers, home }
    }

    fn ctl(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_covenant-ctl"));
        cmd.env("COVENANT_HOME", self.home.path().join("home"))
            .env(
                "COVENANT_EGRESS_RESOLVER",
                format!("{}:53", host(self.net, 53)),
            )
            .env(
                "COVENANT_EGRESS_PUBLIC",
                format!("127.77.{}.0/24", self.net),
            );
        cmd
    }

    /// `covenant-ctl run` with `flags`, running each probe (a probe.py command line, or
    /// after `!` a shell command) in turn in one sandbox; returns the output and the run
    /// report.
    fn run(&self, flags: &[&str], probes: &[&str]) -> (Output, serde_json::Value) {
        let script: Vec<String> = probes
            .iter()
            .map(|p| match p.strip_prefix('!') {
                Some(shell) => shell.to_string(),
                None => format!("python3 /workspace/probe.py {p}"),
            })
            .collect();
        let report = self
            .home
            .path()
            .join(format!("report-{}.json", rand_suffix()));
        let out = self
            .ctl()
            .arg("run")
            .arg("--workspace")
            .arg(self.home.path().join("ws"))
            .arg("--report")
            .arg(&report)
            .args(flags)
            .arg("--")
            .args(["sh", "-c", &script.join("; ")])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let report = std::fs::read(&report)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(serde_json::Value::Null);
        (out, report)
    }

    fn received(&self) -> Vec<String> {
        self.servers
            .received()
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect()
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// The `RESULT=` lines a run printed, in order.
fn results(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("RESULT="))
        .map(str::to_string)
        .collect()
}

fn explain(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn refusal_reasons(report: &serde_json::Value) -> Vec<String> {
    report["egress"]["refused"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["reason"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn an_allowed_name_is_reached_with_no_proxy_settings() {
    if !live() {
        return;
    }
    let net = Internet::start(101, &[("api.test", host(101, 10))]);
    let (out, report) = net.run(
        &["--allow-host", "api.test:443,80"],
        &[
            "resolve api.test",
            "http api.test 80 api.test",
            "tls api.test 443 api.test",
        ],
    );
    let r = results(&out);
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    assert!(r[0].starts_with("['198.18."), "{}", explain(&out));
    assert_eq!(r[1], "ok:HELLO", "{}", explain(&out));
    assert_eq!(r[2], "ok:HELLO", "{}", explain(&out));
    assert_eq!(net.received().len(), 2);
    assert_eq!(report["net"], "egress");
    assert!(
        report["egress"]["connections_allowed"].as_u64() >= Some(2),
        "{report}"
    );
    assert!(
        report["egress"]["bytes_in"].as_u64() >= Some(12),
        "{report}"
    );
    assert!(report["egress"]["failure"].is_null(), "{report}");
    // The link lived in the sandbox's namespace only: the host has no trace of it.
    assert!(!Path::new("/sys/class/net/egress0").exists());
}

#[test]
fn literals_other_resolvers_names_and_fronting_are_refused() {
    if !live() {
        return;
    }
    let net = Internet::start(
        102,
        &[("api.test", host(102, 10)), ("other.test", host(102, 11))],
    );
    let literal = format!("literal {} 443 api.test", host(102, 10));
    let other_resolver = format!("dns {} api.test", host(102, 53));
    let (out, report) = net.run(
        &["--allow-host", "api.test"],
        &[
            "resolve other.test",
            &literal,
            "literal 198.18.0.99 443 api.test",
            &other_resolver,
            "tls api.test 443 other.test",
            "tls api.test 443 -",
            "http api.test 443 other.test",
            "http api.test 80 api.test",
        ],
    );
    let r = results(&out);
    assert_eq!(r.len(), 8, "{}", explain(&out));
    assert!(r[0].starts_with("gaierror"), "other name: {}", r[0]);
    for (i, what) in [
        (1, "IP literal of the server"),
        (2, "a stand-in never answered"),
        (4, "SNI of another name (fronting)"),
        (5, "no SNI"),
        (6, "Host of another name"),
        (7, "a port not allowed"),
    ] {
        assert!(r[i].starts_with("err:"), "{what}: {}", r[i]);
    }
    assert!(
        r[3].starts_with("err:"),
        "another resolver answered: {}",
        r[3]
    );
    assert!(
        net.received().is_empty(),
        "a refused stream arrived: {:?}",
        net.received()
    );
    assert!(
        !net.servers
            .dns_seen()
            .iter()
            .any(|n| n.starts_with("other.test")),
        "a refused name was forwarded upstream"
    );
    let reasons = refusal_reasons(&report);
    for needle in [
        "not allowed by any egress rule",
        "not answered",
        "SNI `other.test`",
        "without SNI",
        "Host `other.test`",
        "port",
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(needle)),
            "no refusal says {needle}: {reasons:#?}"
        );
    }
}

/// A shared front end: two names on one address, as on a CDN. A connection opened for the
/// allowed name and kept open must not carry a later request for the other: each request's
/// Host is checked, and the one naming the other host never reaches the server.
#[test]
fn every_request_on_a_kept_open_connection_is_checked() {
    if !live() {
        return;
    }
    // The server keeps an idle connection open longer than any stall between two requests.
    let net = Internet::start_with(
        112,
        &[("api.test", host(112, 10)), ("other.test", host(112, 10))],
        Duration::from_secs(5),
    );
    let (out, report) = net.run(
        &["--allow-host", "api.test"],
        &[
            "keepalive api.test 443 api.test api.test api.test",
            "keepalive api.test 443 api.test other.test api.test",
        ],
    );
    let r = results(&out);
    assert_eq!(r.len(), 2, "{}", explain(&out));
    assert_eq!(r[0], "ok,ok,ok", "three requests for the allowed name");
    assert!(
        r[1] == "ok,closed" || r[1].starts_with("ok,err:"),
        "the request for another host was answered: {}",
        r[1]
    );
    let got = net.received();
    assert_eq!(got.len(), 4, "requests that reached the server: {got:#?}");
    assert!(
        got.iter().all(|req| req.contains("Host: api.test\r\n")),
        "a request for another host reached the server: {got:#?}"
    );
    let reasons = refusal_reasons(&report);
    assert!(
        reasons.iter().any(|r| r.contains("Host `other.test`")),
        "the refused request is not named: {reasons:#?}"
    );
}

/// A granted network is reached by address, on its granted ports only, even inside the
/// ranges never reached otherwise (RFC 1918 here); its neighbours are not. The test host
/// lives in a network namespace made for the test (the supervisor runs there too), so no
/// packet can reach a real 10.x network: a granted loopback address would not do, since
/// the sandbox's own loopback answers for 127/8.
#[test]
fn a_granted_network_is_reached_by_address_and_only_it() {
    if !live() {
        return;
    }
    let tools = [
        Need::File {
            path: "/usr/bin/unshare",
            package: "util-linux",
        },
        Need::File {
            path: "/usr/sbin/ip",
            package: "iproute2",
        },
    ];
    if !covenant_test_support::have(&tools) {
        return;
    }
    let net = Internet::start(114, &[]);
    let ctl = env!("CARGO_BIN_EXE_covenant-ctl");
    let home = net.home.path();
    let server = r#"
import socket, sys, threading
def serve(l):
    while True:
        c, _ = l.accept()
        got = b""
        while not got.endswith(b"END"):
            b = c.recv(65536)
            if not b:
                break
            got += b
        print("GOT %s:%d" % l.getsockname(), flush=True)
        c.sendall(b"HELLO\n")
        c.close()
for a, p in [("10.20.0.10", 443), ("10.20.0.10", 80), ("10.20.0.11", 443)]:
    l = socket.create_server((a, p))
    threading.Thread(target=serve, args=(l,), daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
"#;
    std::fs::write(home.join("server.py"), server).unwrap();
    let script = format!(
        "set -e
         ip link set lo up
         ip addr add 10.20.0.10/32 dev lo
         ip addr add 10.20.0.11/32 dev lo
         mkfifo {h}/hold
         python3 {h}/server.py < {h}/hold > {h}/server.log &
         exec 3> {h}/hold
         until grep -q ready {h}/server.log; do sleep 0.05; done
         {ctl} run --workspace {h}/ws --report {h}/report.json \
           --allow-host 10.20.0.10/32:443 -- sh -c '
             python3 /workspace/probe.py literal 10.20.0.10 443 anything.test
             python3 /workspace/probe.py literal 10.20.0.10 80 anything.test
             python3 /workspace/probe.py literal 10.20.0.11 443 anything.test
             python3 /workspace/probe.py literal 10.20.0.12 443 anything.test'
         exec 3>&-",
        h = home.display()
    );
    let out = Command::new("/usr/bin/unshare")
        .args(["--net", "sh", "-c", &script])
        .env("COVENANT_HOME", home.join("home"))
        .env("COVENANT_EGRESS_RESOLVER", "127.0.0.1:53")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let r = results(&out);
    assert_eq!(r.len(), 4, "{}", explain(&out));
    assert_eq!(r[0], "ok:HELLO", "the granted address: {}", explain(&out));
    for (i, what) in [
        (1, "a port not granted"),
        (2, "a neighbour"),
        (3, "an address nothing serves, outside the grant"),
    ] {
        assert!(r[i].starts_with("err:"), "{what}: {}", r[i]);
    }
    let log = std::fs::read_to_string(home.join("server.log")).unwrap();
    assert_eq!(
        log.lines()
            .filter(|l| l.starts_with("GOT"))
            .collect::<Vec<_>>(),
        ["GOT 10.20.0.10:443"],
        "only the granted address and port were reached"
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(home.join("report.json")).unwrap()).unwrap();
    let reasons = refusal_reasons(&report);
    for needle in ["port not allowed", "not answered"] {
        assert!(
            reasons.iter().any(|r| r.contains(needle)),
            "no refusal says {needle}: {reasons:#?}"
        );
    }
}

/// The package host of `egress_files.py`, killed when dropped.
struct PackageHost(std::process::Child);

impl PackageHost {
    /// Serves `name` on `addr` (ports 80 and 443) from `dir`; its certificate is then
    /// `dir/ca.pem`.
    fn start(addr: Ipv4Addr, name: &str, dir: &Path) -> PackageHost {
        let script = dir.join("files.py");
        std::fs::write(&script, FILES).unwrap();
        let mut child = Command::new("/usr/bin/python3")
            .arg(&script)
            .arg(addr.to_string())
            .arg(name)
            .arg(dir.join("srv"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut ready = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
            &mut ready,
        )
        .unwrap();
        assert_eq!(ready.trim(), "ready", "the package host did not start");
        PackageHost(child)
    }
}

impl Drop for PackageHost {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Real clients, with no proxy settings, through the gateway: curl, git and pip over TLS
/// (their own ClientHellos) and plain HTTP (kept-open connections carrying several
/// requests, each checked), to an allowed package host; the same clients get nowhere
/// with a name the run was not granted.
#[test]
fn curl_git_and_pip_reach_an_allowed_host_and_nothing_else() {
    if !live() {
        return;
    }
    let tools = [
        Need::File {
            path: "/usr/bin/curl",
            package: "curl",
        },
        Need::File {
            path: "/usr/bin/openssl",
            package: "openssl",
        },
    ];
    if !covenant_test_support::have(&tools) {
        return;
    }
    let net = Internet::start(
        113,
        &[("pkg.test", host(113, 20)), ("other.test", host(113, 10))],
    );
    let _files = PackageHost::start(host(113, 20), "pkg.test", net.home.path());
    std::fs::copy(
        net.home.path().join("srv/ca.pem"),
        net.home.path().join("ws/ca.pem"),
    )
    .unwrap();
    let ca = "/workspace/ca.pem";
    let curl_tls = format!("curl -sS --max-time 20 --cacert {ca} https://pkg.test/hello.txt");
    let curl_plain =
        "curl -sS --max-time 20 http://pkg.test/hello.txt http://pkg.test/hello.txt".to_string();
    let git_tls = format!(
        "git -c http.sslCAInfo={ca} clone -q https://pkg.test/repo.git /workspace/tls \
         && git -C /workspace/tls log --format=%s"
    );
    let git_plain = "git clone -q http://pkg.test/repo.git /workspace/plain \
         && cat /workspace/plain/README"
        .to_string();
    let pip = format!(
        "python3 -m pip install -q --disable-pip-version-check --no-cache-dir --no-deps \
         --target /workspace/pip --cert {ca} --index-url https://pkg.test/simple/ tinypkg \
         && python3 -c 'import sys; sys.path.insert(0, \"/workspace/pip\"); import tinypkg; print(tinypkg.VALUE)'"
    );
    let other = format!("curl -sS --max-time 5 --cacert {ca} https://other.test/");
    // Each line is the tool's output joined onto one line, and its exit status.
    let probes: Vec<String> = [&curl_tls, &curl_plain, &git_tls, &git_plain, &pip, &other]
        .iter()
        .map(|c| {
            format!(
                "!o=$({c} 2>&1); s=$?; echo \"RESULT=$(printf '%s' \"$o\" | tr '\\n' ' ') status=$s\""
            )
        })
        .collect();
    let probes: Vec<&str> = probes.iter().map(String::as_str).collect();
    let (out, report) = net.run(
        &[
            "--allow-host",
            "pkg.test:80,443",
            "--pids",
            "256",
            "--memory",
            "1GiB",
        ],
        &probes,
    );
    let r = results(&out);
    assert_eq!(r.len(), 6, "{}", explain(&out));
    for (i, (what, want)) in [
        ("curl over TLS", "hello from pkg.test status=0"),
        (
            "curl, two requests on one plain HTTP connection",
            "hello from pkg.test hello from pkg.test status=0",
        ),
        ("git clone over TLS", "first status=0"),
        (
            "git clone over plain HTTP",
            "a repository on the test internet status=0",
        ),
        ("pip install over TLS", "42 status=0"),
    ]
    .into_iter()
    .enumerate()
    {
        assert_eq!(r[i], want, "{what}: {}", explain(&out));
    }
    assert!(
        r[5].contains("resolve") && !r[5].ends_with("status=0"),
        "curl reached a name not granted: {}",
        r[5]
    );
    let refused = refusal_reasons(&report);
    assert!(
        refused
            .iter()
            .all(|r| r.contains("not allowed by any egress rule")),
        "a real client's connection to the allowed host was refused: {refused:#?}"
    );
    assert!(!refused.is_empty(), "the refused name is not in the report");
}

#[test]
fn rebinding_metadata_and_dns_tunnelling_are_refused() {
    if !live() {
        return;
    }
    let net = Internet::start(
        103,
        &[
            ("rebind.test", Ipv4Addr::new(127, 0, 0, 1)),
            // Stands in for the metadata service: a test address outside the public list.
            ("meta.test", Ipv4Addr::new(127, 78, 103, 254)),
            ("*.wild.test", host(103, 10)),
        ],
    );
    let long = format!("resolve {}.{}.wild.test", "a".repeat(60), "b".repeat(60));
    let (out, report) = net.run(
        &[
            "--allow-host",
            "rebind.test",
            "--allow-host",
            "meta.test",
            "--allow-host",
            "*.wild.test",
        ],
        &[
            "resolve rebind.test",
            "resolve meta.test",
            &long,
            "resolve short.wild.test",
        ],
    );
    let r = results(&out);
    assert_eq!(r.len(), 4, "{}", explain(&out));
    assert!(
        r[0].starts_with("gaierror"),
        "rebinding to loopback: {}",
        r[0]
    );
    assert!(
        r[1].starts_with("gaierror"),
        "rebinding to metadata: {}",
        r[1]
    );
    assert!(r[2].starts_with("gaierror"), "a long name: {}", r[2]);
    assert!(r[3].starts_with("['198.18."), "a short name: {}", r[3]);
    assert!(
        !net.servers.dns_seen().iter().any(|n| n.starts_with("aaaa")),
        "the long name was forwarded upstream"
    );
    let reasons = refusal_reasons(&report);
    assert!(
        reasons.iter().any(|r| r.contains("loopback")),
        "{reasons:#?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("longer than")),
        "{reasons:#?}"
    );
}

#[test]
fn udp_quic_icmp_and_ipv6_do_not_leave() {
    if !live() {
        return;
    }
    let net = Internet::start(104, &[("api.test", host(104, 10))]);
    let sink = UdpSocket::bind((host(104, 10), 443)).unwrap();
    sink.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let (out, report) = net.run(
        &["--allow-host", "api.test"],
        &[
            "udp api.test 443",
            "udp api.test 53",
            "icmp api.test",
            "ipv6",
        ],
    );
    let r = results(&out);
    assert_eq!(r.len(), 4, "{}", explain(&out));
    assert_eq!(r[0], "silent", "QUIC");
    assert_eq!(r[1], "silent", "UDP to a stand-in's port 53");
    assert!(
        r[2] == "silent" || r[2].starts_with("err:"),
        "ICMP: {}",
        r[2]
    );
    assert!(r[3].starts_with("err:"), "IPv6: {}", r[3]);
    let mut buf = [0u8; 64];
    assert!(sink.recv(&mut buf).is_err(), "UDP reached the test host");
    assert!(
        report["egress"]["dropped"]["quic"].as_u64() >= Some(1),
        "{report}"
    );
}

/// On the kernel path the sandbox's namespace takes every destination as its own, and
/// every TCP connection to an address outside 127/8 goes to the gateway. The sandbox keeps
/// its own loopback and its own ports: it serves on a granted port and reaches its server
/// there, while a connection to another address on that port still meets the gateway. A
/// ping to anywhere is answered by no one, and what is refused is recorded.
#[test]
fn the_kernel_path_keeps_the_sandboxs_loopback_and_ports_its_own() {
    if !live() {
        return;
    }
    let net = Internet::start(117, &[("api.test", host(117, 10))]);
    let serve = r#"
import socket
l = socket.create_server(("0.0.0.0", 8443))
l.settimeout(2)
c = socket.create_connection(("127.0.0.1", 8443), timeout=2)
a, _ = l.accept()
a.sendall(b"SELF")
own = c.recv(10).decode()
try:
    o = socket.create_connection(("198.18.0.99", 8443), timeout=2)
    o.sendall(b"x")
    other = "sent:" + (o.recv(10).decode() or "closed")
except OSError as e:
    other = "err"
try:
    l.settimeout(0.5)
    l.accept()
    other += ",own server took it"
except OSError:
    pass
print("RESULT=%s %s" % (own, other))
"#;
    std::fs::write(net.home.path().join("ws/serve.py"), serve).unwrap();
    let literal = format!("literal {} 443 api.test", host(117, 10));
    let (out, report) = net.run(
        &["--allow-host", "api.test:443,8443"],
        &[
            &literal,
            "!python3 /workspace/serve.py",
            "ping api.test",
            "udp api.test 5353",
            "literal 198.18.0.99 9999 api.test",
            "tls api.test 443 api.test",
        ],
    );
    let r = results(&out);
    assert_eq!(r.len(), 6, "{}", explain(&out));
    assert!(r[0].starts_with("err:"), "the host's loopback: {}", r[0]);
    let (own, other) = r[1].split_once(' ').unwrap();
    assert_eq!(own, "SELF", "the sandbox's own server: {}", explain(&out));
    assert!(
        other == "err" || other == "sent:closed",
        "another address on the sandbox's port: {other}"
    );
    assert!(
        r[2] == "silent" || r[2].starts_with("err:"),
        "ping: {}",
        r[2]
    );
    assert_eq!(r[3], "silent", "UDP to another port");
    assert!(r[4].starts_with("err:"), "a port not granted: {}", r[4]);
    assert_eq!(r[5], "ok:HELLO", "{}", explain(&out));
    assert_eq!(
        net.received().len(),
        1,
        "only the allowed stream arrived: {:?}",
        net.received()
    );
    let refused = report["egress"]["refused"].as_array().unwrap();
    for (port, address) in [(9999, "198.18.0.99"), (8443, "198.18.0.99")] {
        assert!(
            refused
                .iter()
                .any(|e| e["port"] == port && e["address"] == address),
            "the refusal of {address}:{port} is not recorded: {report}"
        );
    }
    assert!(
        !refused
            .iter()
            .any(|e| e["address"].as_str().is_some_and(|a| a.starts_with("127."))),
        "the sandbox's own loopback was taken for egress: {report}"
    );
    assert!(
        report["egress"]["dropped"]["udp"].as_u64() >= Some(1),
        "{report}"
    );
}

#[test]
fn a_connection_storm_is_bounded_and_served() {
    if !live() {
        return;
    }
    let net = Internet::start(105, &[("api.test", host(105, 10))]);
    let (out, report) = net.run(
        &["--allow-host", "api.test", "--pids", "64"],
        &["storm api.test 443 1200"],
    );
    let r = results(&out);
    assert_eq!(r.len(), 1, "{}", explain(&out));
    let count = |key: &str| -> u64 {
        r[0].split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {}", r[0]))
    };
    let (held, refused) = (count("held="), count("reset=") + count("failed="));
    assert!(
        (1000..=1024).contains(&held),
        "not 1,000 to 1,024 connections held at once: {}",
        r[0]
    );
    assert_eq!(held + refused, 1200, "{}", r[0]);
    assert!(
        r[0].ends_with("after=ok:HELLO"),
        "the gateway stopped serving: {}",
        r[0]
    );
    let peak = report["egress"]["peak_connections"].as_u64().unwrap();
    assert!(peak <= 1024, "peak {peak}");
    eprintln!("storm: {} (peak {peak})", r[0]);
    assert!(
        refusal_reasons(&report)
            .iter()
            .any(|r| r == "connection limit reached"),
        "1,200 connections and none refused: {report}"
    );
}

#[test]
fn a_gateway_that_cannot_start_refuses_the_run() {
    if !live() {
        return;
    }
    let net = Internet::start(106, &[]);
    let out = net
        .ctl()
        .env("COVENANT_EGRESS_RESOLVER", "not-an-address")
        .args(["run", "--allow-host", "api.test", "--", "true"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125), "{}", explain(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("COVENANT_EGRESS_RESOLVER") && err.contains("egress"),
        "{err}"
    );
}

#[test]
fn the_sandbox_cannot_take_down_or_reroute_its_link() {
    if !live() {
        return;
    }
    let net = Internet::start(107, &[("api.test", host(107, 10))]);
    let route = format!("!ip route add {}/32 dev lo", host(107, 10));
    let (out, report) = net.run(
        &["--allow-host", "api.test"],
        &[
            "!ip link delete egress0 2>&1; echo RESULT=$?",
            "!ip link set egress0 down 2>&1; echo RESULT=$?",
            &format!("{route} 2>&1; echo RESULT=$?"),
            "http api.test 443 api.test",
        ],
    );
    let r = results(&out);
    assert_eq!(r.len(), 4, "{}", explain(&out));
    for (i, what) in [
        (0, "delete the link"),
        (1, "take the link down"),
        (2, "add a route"),
    ] {
        assert_ne!(r[i], "0", "the sandbox could {what}: {}", explain(&out));
    }
    assert!(String::from_utf8_lossy(&out.stdout).contains("Operation not permitted"));
    assert_eq!(r[3], "ok:HELLO", "{}", explain(&out));
    assert!(report["egress"]["failure"].is_null(), "{report}");
}

/// `covenantd` beside `covenant-ctl` (the workspace builds both), started on `net`'s home
/// with the egress settings as flags; killed when dropped.
struct Covenantd(std::process::Child);

impl Drop for Covenantd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Internet {
    fn covenantd(&self) -> Option<Covenantd> {
        let exe = Path::new(env!("CARGO_BIN_EXE_covenant-ctl")).with_file_name("covenantd");
        if !exe.exists() {
            let reason = format!("{} is not built (cargo build --workspace)", exe.display());
            if std::env::var("COVENANT_REQUIRE_LIVE").as_deref() == Ok("1") {
                panic!("live test cannot run: {reason} (COVENANT_REQUIRE_LIVE=1)");
            }
            eprintln!("skipping live test: {reason}");
            return None;
        }
        let home = self.home.path().join("home");
        let child = Command::new(exe)
            .arg("--home")
            .arg(&home)
            .arg("--egress-resolver")
            .arg(format!("{}:53", host(self.net, 53)))
            .arg("--egress-public")
            .arg(format!("127.77.{}.0/24", self.net))
            .env_remove("COVENANT_EGRESS_RESOLVER")
            .env_remove("COVENANT_EGRESS_PUBLIC")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let daemon = Covenantd(child);
        let socket = home.join("covenantd.sock");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !socket.exists() || std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "covenantd did not answer"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(daemon)
    }
}

#[test]
fn daemon_jobs_run_their_gateway_in_their_shim_native_runc_and_gvisor() {
    if !live() {
        return;
    }
    let net = Internet::start(
        108,
        &[("api.test", host(108, 10)), ("other.test", host(108, 11))],
    );
    // The daemon trusts this home's operator key, which signs the client's request.
    let plan = net.ctl().args(["plan", "--", "true"]).output().unwrap();
    assert!(plan.status.success(), "{}", explain(&plan));
    let key = net.home.path().join("home/operator.key");
    let public = net.ctl().arg("key").arg("pub").arg(&key).output().unwrap();
    let public = String::from_utf8_lossy(&public.stdout).trim().to_string();
    let trust = net
        .ctl()
        .args(["key", "trust", "--name", "operator", &public])
        .output()
        .unwrap();
    assert!(trust.status.success(), "{}", explain(&trust));
    let Some(_daemon) = net.covenantd() else {
        return;
    };
    // A daemon job on `runner`: an allowed name reached, another not resolved, and the
    // allowed address refused under the other name; exactly one request reaches the host.
    let job_reaches_only_its_name = |runner: &[&str]| {
        let before = net.received().len();
        let out = net
            .ctl()
            .env(
                "COVENANT_SOCKET",
                net.home.path().join("home/covenantd.sock"),
            )
            // The daemon's flags decide; the client's environment does not reach the job.
            .env("COVENANT_EGRESS_RESOLVER", "127.0.0.1:9")
            .args(["--daemon", "run"])
            .args(runner)
            .arg("--workspace")
            .arg(net.home.path().join("ws"))
            .args(["--allow-host", "api.test", "--", "sh", "-c"])
            .arg(
                "python3 /workspace/probe.py tls api.test 443 api.test; \
                 python3 /workspace/probe.py resolve other.test; \
                 python3 /workspace/probe.py tls api.test 443 other.test",
            )
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let r = results(&out);
        assert_eq!(r.len(), 3, "{runner:?}: {}", explain(&out));
        assert_eq!(r[0], "ok:HELLO", "{runner:?}: {}", explain(&out));
        assert!(r[1].starts_with("gaierror"), "{runner:?}: {}", r[1]);
        assert!(r[2].starts_with("err:"), "{runner:?}: {}", r[2]);
        assert_eq!(net.received().len(), before + 1, "{runner:?}");
    };
    job_reaches_only_its_name(&[]);
    // The shim's gateway audited its decisions into the daemon's store.
    let audit = net
        .ctl()
        .env(
            "COVENANT_SOCKET",
            net.home.path().join("home/covenantd.sock"),
        )
        .args(["--embedded", "audit", "tail", "-n", "200"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&audit.stdout);
    assert!(text.contains("net.egress.connect"), "{}", explain(&audit));
    assert!(text.contains("net.egress.summary"), "{}", explain(&audit));
    // A job on an OCI runner: its shim prepares the namespace runc joins.
    if Path::new("/usr/sbin/runc").exists() {
        let out = net
            .ctl()
            .env(
                "COVENANT_SOCKET",
                net.home.path().join("home/covenantd.sock"),
            )
            .args(["--daemon", "run", "--runner", "oci:/usr/sbin/runc"])
            .args(["--accept-degradation", "idmap", "--workspace"])
            .arg(net.home.path().join("ws"))
            .args(["--allow-host", "api.test", "--", "sh", "-c"])
            .arg(
                "python3 /workspace/probe.py tls api.test 443 api.test; \
                 python3 /workspace/probe.py tls api.test 443 other.test",
            )
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let r = results(&out);
        assert_eq!(r.len(), 2, "runc job: {}", explain(&out));
        assert_eq!(r[0], "ok:HELLO", "runc job: {}", explain(&out));
        assert!(r[1].starts_with("err:"), "runc job: {}", r[1]);
        assert_eq!(net.received().len(), 2);
    } else {
        cannot_run("/usr/sbin/runc is not installed");
    }
    // A gVisor job: its shim prepares the namespace runsc takes the link of.
    if Path::new("/usr/bin/runsc").exists() {
        job_reaches_only_its_name(&["--runner", "gvisor"]);
    } else {
        cannot_run("runsc is not installed (apt-get install runsc)");
    }
}

/// runsc on the gateway's link: the sentry's own network stack in the namespace Covenant
/// prepared, whose only device is the link. The same probes as the native runner's, each
/// around the gateway, and the ones inside gVisor's own stack (a ping socket, changing its
/// view of the link) that have no native counterpart.
#[test]
fn gvisor_runs_behind_the_gateway_and_every_way_around_it_is_refused() {
    if !live() {
        return;
    }
    if !Path::new("/usr/bin/runsc").exists() {
        return cannot_run("runsc is not installed (apt-get install runsc)");
    }
    let net = Internet::start(
        109,
        &[
            ("api.test", host(109, 10)),
            ("other.test", host(109, 11)),
            ("rebind.test", Ipv4Addr::new(127, 0, 0, 1)),
        ],
    );
    let sink = UdpSocket::bind((host(109, 10), 443)).unwrap();
    sink.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let literal = format!("literal {} 443 api.test", host(109, 10));
    let other_resolver = format!("dns {} api.test", host(109, 53));
    let probes = [
        "tls api.test 443 api.test",
        "http api.test 80 api.test",
        "resolve other.test",
        &literal,
        "literal 198.18.0.99 443 api.test",
        &other_resolver,
        "tls api.test 443 other.test",
        "tls api.test 443 -",
        "resolve rebind.test",
        "udp api.test 443",
        "icmp api.test",
        "ping api.test",
        "ipv6",
        "!ip link set egress0 down 2>&1; ip route add 127.77.109.10/32 dev egress0 2>&1; true",
        "tls api.test 443 api.test",
    ];
    let (out, report) = net.run(
        &[
            "--runner",
            "gvisor",
            "--allow-host",
            "api.test:443,80",
            "--allow-host",
            "rebind.test",
        ],
        &probes,
    );
    let r = results(&out);
    assert_eq!(r.len(), 14, "{}", explain(&out));
    assert_eq!(out.status.code(), Some(0), "{}", explain(&out));
    assert_eq!(
        r[0],
        "ok:HELLO",
        "TLS to an allowed name: {}",
        explain(&out)
    );
    assert_eq!(
        r[1],
        "ok:HELLO",
        "HTTP to an allowed name: {}",
        explain(&out)
    );
    assert!(r[2].starts_with("gaierror"), "a name not granted: {}", r[2]);
    for (i, what) in [
        (3, "an IP literal of the server"),
        (4, "a stand-in never answered"),
        (5, "another resolver"),
        (6, "SNI of another name (fronting)"),
        (7, "no SNI"),
    ] {
        assert!(r[i].starts_with("err:"), "{what}: {}", r[i]);
    }
    assert!(
        r[8].starts_with("gaierror"),
        "rebinding to loopback: {}",
        r[8]
    );
    assert_eq!(r[9], "silent", "QUIC");
    for (i, what) in [(10, "a raw ICMP socket"), (11, "a ping socket")] {
        assert!(
            r[i] == "silent" || r[i].starts_with("err:"),
            "{what}: {}",
            r[i]
        );
    }
    assert!(r[12].starts_with("err:"), "IPv6: {}", r[12]);
    assert_eq!(
        r[13],
        "ok:HELLO",
        "after the sandbox changed its view of the link: {}",
        explain(&out)
    );
    let mut buf = [0u8; 64];
    assert!(sink.recv(&mut buf).is_err(), "UDP reached the test host");
    let got = net.received();
    assert_eq!(got.len(), 3, "streams that reached the servers: {got:#?}");
    assert_eq!(report["runner"], "gvisor", "{report}");
    assert_eq!(report["net"], "egress", "{report}");
    assert!(
        report["egress"]["connections_allowed"].as_u64() >= Some(3),
        "{report}"
    );
    assert!(report["egress"]["failure"].is_null(), "{report}");
    assert!(
        report["egress"]["dropped"]["quic"].as_u64() >= Some(1),
        "{report}"
    );
    let reasons = refusal_reasons(&report);
    for needle in [
        "not allowed by any egress rule",
        "not answered",
        "SNI `other.test`",
        "without SNI",
        "answer 127.0.0.1",
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(needle)),
            "no refusal says {needle}: {reasons:#?}"
        );
    }
    assert!(
        !net.servers
            .dns_seen()
            .iter()
            .any(|n| n.starts_with("other.test")),
        "a refused name was forwarded upstream"
    );
    // The link lived in the run's namespace only.
    assert!(!Path::new("/sys/class/net/egress0").exists());
}

/// A gateway that cannot start refuses a gVisor run too, naming the restriction, and
/// runsc is never started without it.
#[test]
fn gvisor_with_a_gateway_that_cannot_start_is_refused() {
    if !live() {
        return;
    }
    if !Path::new("/usr/bin/runsc").exists() {
        return cannot_run("runsc is not installed (apt-get install runsc)");
    }
    let net = Internet::start(115, &[]);
    let out = net
        .ctl()
        .env("COVENANT_EGRESS_RESOLVER", "not-an-address")
        .args([
            "run",
            "--runner",
            "gvisor",
            "--allow-host",
            "api.test",
            "--",
            "true",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125), "{}", explain(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("net egress") && err.contains("COVENANT_EGRESS_RESOLVER"),
        "{err}"
    );
}

#[test]
fn runc_and_crun_join_the_gateway_namespace() {
    if !live() {
        return;
    }
    let net = Internet::start(
        110,
        &[("api.test", host(110, 10)), ("other.test", host(110, 11))],
    );
    for runtime in ["/usr/sbin/runc", "/usr/bin/crun"] {
        if !Path::new(runtime).exists() {
            cannot_run(&format!("{runtime} is not installed"));
            continue;
        }
        let runner = format!("oci:{runtime}");
        let (out, report) = net.run(
            &[
                "--runner",
                &runner,
                "--accept-degradation",
                "idmap",
                "--allow-host",
                "api.test",
            ],
            &[
                "tls api.test 443 api.test",
                "resolve other.test",
                "tls api.test 443 other.test",
                &format!("literal {} 443 api.test", host(110, 10)),
                "!ip link delete egress0 2>&1; echo RESULT=$?",
            ],
        );
        let r = results(&out);
        assert_eq!(r.len(), 5, "{runtime}: {}", explain(&out));
        assert_eq!(r[0], "ok:HELLO", "{runtime}: {}", explain(&out));
        assert!(r[1].starts_with("gaierror"), "{runtime}: {}", r[1]);
        assert!(r[2].starts_with("err:"), "{runtime}: {}", r[2]);
        assert!(r[3].starts_with("err:"), "{runtime}: {}", r[3]);
        assert_ne!(r[4], "0", "{runtime}: the container deleted its link");
        assert_eq!(report["runner"], runner.as_str(), "{report}");
        assert!(
            report["egress"]["connections_allowed"].as_u64() >= Some(1),
            "{report}"
        );
    }
    assert_eq!(net.received().len(), 2, "{:?}", net.received());
}

fn cannot_run(reason: &str) {
    if std::env::var("COVENANT_REQUIRE_LIVE").as_deref() == Ok("1") {
        panic!("live test cannot run: {reason} (COVENANT_REQUIRE_LIVE=1)");
    }
    eprintln!("skipping: {reason}");
}

#[test]
fn a_killed_supervisor_takes_the_sandbox_and_its_link_with_it() {
    if !live() {
        return;
    }
    let net = Internet::start(111, &[("api.test", host(111, 10))]);
    let marker = "31.4159";
    let mut child = net
        .ctl()
        .args(["run", "--allow-host", "api.test", "--", "sleep", marker])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sandboxed = || -> Vec<u32> {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| c == format!("sleep\0{marker}\0").as_bytes())
            })
            .collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while sandboxed().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the sandbox did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    let _ = child.wait();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !sandboxed().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the sandbox outlived its supervisor: {:?}",
            sandboxed()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!Path::new("/sys/class/net/egress0").exists());
    let stayed = covenant_test_support::live::remove_run_cgroups_of(&net.home.path().join("home"));
    assert!(stayed.is_empty(), "run cgroups stayed: {stayed:?}");
}

/// The same under gVisor: `runsc run`, its sandbox and its gofer go with a supervisor
/// killed mid-run (and with it the gateway), and the link with them.
#[test]
fn a_killed_supervisor_takes_the_gvisor_sandbox_and_its_link_with_it() {
    if !live() {
        return;
    }
    if !Path::new("/usr/bin/runsc").exists() {
        return cannot_run("runsc is not installed (apt-get install runsc)");
    }
    let net = Internet::start(116, &[("api.test", host(116, 10))]);
    let home = net.home.path().join("home");
    let mut child = net
        .ctl()
        .args([
            "run",
            "--runner",
            "gvisor",
            "--allow-host",
            "api.test",
            "--",
            "sleep",
            "30",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // runsc, its sandbox and its gofer name the run's state under this home.
    let runsc = || -> Vec<u32> {
        let needle = home.to_string_lossy().into_owned();
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                    let c = String::from_utf8_lossy(&c);
                    c.starts_with("runsc") || c.starts_with("/usr/bin/runsc")
                }) && std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
            })
            .collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while runsc().len() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "the gVisor sandbox did not start: {:?}",
            runsc()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    let _ = child.wait();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !runsc().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "runsc outlived its supervisor: {:?}",
            runsc()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!Path::new("/sys/class/net/egress0").exists());
}
