//! A test "internet" on this machine's loopback, for the egress tests: on 127.77.`net`.0/24,
//! a DNS server on .53:53 answering a fixed table (exact names and `*.` wildcards) and
//! recording every name asked, and TCP servers on .10 and .11 at ports 443 and 80 that
//! record what they receive and answer `HELLO`. Tests aim every probe at these hosts, at
//! the gateway or at reserved ranges, never at a real outside address.

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::{rdata::A, RData, Record};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Address `last` of test network `net`: 127.77.`net`.`last`.
pub fn host(net: u8, last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 77, net, last)
}

/// How the TCP servers treat a client.
#[derive(Debug, Clone, Copy)]
pub struct Servers {
    /// How long a server waits for the client's bytes.
    pub read_timeout: Duration,
    /// Whether a client that sent nothing still gets `HELLO` (a server that speaks once
    /// the client has gone quiet).
    pub answer_silence: bool,
}

/// The running test internet; its servers live as long as the test process.
pub struct Internet {
    pub net: u8,
    received: Arc<Mutex<Vec<Vec<u8>>>>,
    dns_seen: Arc<Mutex<Vec<String>>>,
}

impl Internet {
    /// Starts the DNS server answering `table` (names without the trailing dot) and the
    /// TCP servers.
    pub fn start(net: u8, table: &[(&str, Ipv4Addr)], servers: Servers) -> Internet {
        let table: Vec<(String, Ipv4Addr)> =
            table.iter().map(|(n, a)| (format!("{n}."), *a)).collect();
        let dns = UdpSocket::bind((host(net, 53), 53)).expect("bind the test DNS server");
        let dns_seen = Arc::new(Mutex::new(Vec::new()));
        let seen = dns_seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = dns.recv_from(&mut buf) {
                let Ok(q) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let Some(question) = q.queries().first() else {
                    continue;
                };
                let name = question.name().to_ascii().to_ascii_lowercase();
                seen.lock().unwrap().push(name.clone());
                let mut r = Message::new();
                r.set_id(q.id()).set_message_type(MessageType::Response);
                r.add_queries(q.queries().to_vec());
                let hits: Vec<_> = table
                    .iter()
                    .filter(|(n, _)| n == &name || (n.starts_with("*.") && name.ends_with(&n[1..])))
                    .collect();
                if hits.is_empty() {
                    r.set_response_code(ResponseCode::NXDomain);
                }
                for (_, a) in hits {
                    r.add_answer(Record::from_rdata(
                        question.name().clone(),
                        30,
                        RData::A(A(*a)),
                    ));
                }
                let _ = dns.send_to(&r.to_vec().unwrap(), from);
            }
        });
        let received = Arc::new(Mutex::new(Vec::new()));
        for last in [10, 11] {
            for port in [443, 80] {
                let l = TcpListener::bind((host(net, last), port)).expect("bind a test server");
                let rec = received.clone();
                std::thread::spawn(move || {
                    for s in l.incoming() {
                        let Ok(mut s) = s else { continue };
                        let rec = rec.clone();
                        std::thread::spawn(move || serve(&mut s, &rec, servers));
                    }
                });
            }
        }
        Internet {
            net,
            received,
            dns_seen,
        }
    }

    /// Everything the TCP servers received: one entry per request (a connection kept open
    /// with `Connection: keep-alive` makes one per request), or per connection that sent
    /// other bytes.
    pub fn received(&self) -> Vec<Vec<u8>> {
        self.received.lock().unwrap().clone()
    }

    /// Every name the DNS server was asked, lower-cased, with the trailing dot.
    pub fn dns_seen(&self) -> Vec<String> {
        self.dns_seen.lock().unwrap().clone()
    }

    /// A place the test servers record into, for servers a test adds itself.
    pub fn recorder(&self) -> Arc<Mutex<Vec<Vec<u8>>>> {
        self.received.clone()
    }
}

fn serve(s: &mut std::net::TcpStream, rec: &Mutex<Vec<Vec<u8>>>, servers: Servers) {
    let _ = s.set_read_timeout(Some(servers.read_timeout));
    let mut buf = [0u8; 65536];
    loop {
        let mut got = Vec::new();
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            if got.ends_with(b"\r\n\r\n") || got.ends_with(b"END") {
                break;
            }
        }
        let sent = !got.is_empty();
        // A request asking to keep the connection open gets a framed answer, and the
        // connection stays open for the next request.
        let keep = String::from_utf8_lossy(&got)
            .to_ascii_lowercase()
            .contains("\r\nconnection: keep-alive\r\n");
        if sent {
            rec.lock().unwrap().push(got);
        }
        if keep {
            if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nHELLO\n")
                .is_err()
            {
                return;
            }
            continue;
        }
        if sent || servers.answer_silence {
            let _ = s.write_all(b"HELLO\n");
        }
        return;
    }
}
