//! Follows the requests of a plain HTTP/1 connection, so that every request's Host is
//! checked, not only the first one's. A kept-open connection to a shared front end (a CDN
//! address an allowed name resolved to) would otherwise carry a second request for a host
//! the run was never granted.
//!
//! Only the sandbox's direction is read, and strictly (`httparse`): a request head is held
//! until it is complete and checked; its body passes as its own framing says (a
//! `Content-Length`, or `Transfer-Encoding: chunked` with its chunks and trailers); then the
//! next head is held. Framing a lenient server could read differently (both lengths, two
//! lengths, another transfer coding, a folded header) is refused, since a server that saw a
//! second request where the gateway saw a body would route it unchecked. So is a protocol
//! upgrade (an `Upgrade` header, `CONNECT`): what follows a switch is not HTTP/1, and the
//! gateway could not tell whether the server took it. TLS has none of this: its name is
//! fixed by the handshake.

use crate::decide::Refusal;
use crate::sniff::{sniff, Sniffed, MAX_FIRST_BYTES};

/// The most header lines a request head (or a chunked body's trailer) may have.
const MAX_HEADERS: usize = 100;

/// Where the connection's byte stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    /// Before a request head (or inside one not yet complete).
    Head,
    /// Inside a body of known length: this many bytes remain.
    Body(u64),
    /// Before a chunk-size line.
    ChunkSize,
    /// Inside a chunk: this many data bytes remain, then its CRLF.
    ChunkData(u64),
    /// After a chunk's data: its CRLF.
    ChunkEnd,
    /// After the last chunk: the trailer section and its empty line.
    Trailers,
}

/// The request framing of one plain HTTP connection, sandbox to server.
#[derive(Debug)]
pub struct Requests {
    at: At,
    /// Requests whose heads were checked.
    checked: u64,
}

impl Default for Requests {
    fn default() -> Self {
        Self::new()
    }
}

impl Requests {
    pub fn new() -> Self {
        Requests {
            at: At::Head,
            checked: 0,
        }
    }

    /// How many request heads have been checked so far.
    pub fn checked(&self) -> u64 {
        self.checked
    }

    /// Reads `buf`, the stream's bytes not yet cleared, and says how many of them (from its
    /// start) may go to the server: every request head among them complete and passed by
    /// `check`. The rest is an incomplete head or framing line, to be offered again with
    /// the bytes that follow; the caller bounds how long it waits.
    pub fn clear(
        &mut self,
        buf: &[u8],
        check: impl Fn(&Sniffed) -> Result<(), Refusal>,
    ) -> Result<usize, Refusal> {
        let mut at = 0;
        while at < buf.len() {
            let rest = &buf[at..];
            let used = match self.at {
                At::Head => match self.head(rest, &check)? {
                    Some(n) => n,
                    None if rest.len() >= MAX_FIRST_BYTES => {
                        return Err(Refusal::Framing(
                            "a request head longer than the gateway holds",
                        ))
                    }
                    None => break,
                },
                At::Body(left) => {
                    let n = left.min(rest.len() as u64);
                    self.at = if n == left {
                        At::Head
                    } else {
                        At::Body(left - n)
                    };
                    n as usize
                }
                // `httparse` reads an empty (or blank) line as the last chunk's; a server
                // refuses it, or skips it and reads the next line as the size.
                At::ChunkSize if !rest[0].is_ascii_hexdigit() => {
                    return Err(Refusal::Framing("a chunk-size line without a size"))
                }
                At::ChunkSize => match httparse::parse_chunk_size(rest) {
                    // `httparse` ends the line at its CRLF and takes any byte in a chunk
                    // extension; a server may end it at a bare LF (Go's did until
                    // CVE-2025-22871), so its chunk data would begin where the gateway still
                    // saw the extension.
                    Ok(httparse::Status::Complete((n, _)))
                        if rest[..n - 2]
                            .iter()
                            .any(|b| b.is_ascii_control() && *b != b'\t') =>
                    {
                        return Err(Refusal::Framing("a control byte in a chunk-size line"))
                    }
                    Ok(httparse::Status::Complete((n, 0))) => {
                        self.at = At::Trailers;
                        n
                    }
                    Ok(httparse::Status::Complete((n, size))) => {
                        self.at = At::ChunkData(size);
                        n
                    }
                    Ok(httparse::Status::Partial) if rest.len() >= MAX_FIRST_BYTES => {
                        return Err(Refusal::Framing(
                            "a chunk-size line longer than the gateway holds",
                        ))
                    }
                    Ok(httparse::Status::Partial) => break,
                    Err(_) => return Err(Refusal::Framing("a malformed chunk-size line")),
                },
                At::ChunkData(left) => {
                    let n = left.min(rest.len() as u64);
                    self.at = if n == left {
                        At::ChunkEnd
                    } else {
                        At::ChunkData(left - n)
                    };
                    n as usize
                }
                At::ChunkEnd => {
                    if rest.len() < 2 {
                        if rest != b"\r" {
                            return Err(Refusal::Framing("chunk data not followed by CRLF"));
                        }
                        break;
                    }
                    if &rest[..2] != b"\r\n" {
                        return Err(Refusal::Framing("chunk data not followed by CRLF"));
                    }
                    self.at = At::ChunkSize;
                    2
                }
                At::Trailers => {
                    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    match httparse::parse_headers(rest, &mut headers) {
                        Ok(httparse::Status::Complete((n, _))) => {
                            self.at = At::Head;
                            n
                        }
                        Ok(httparse::Status::Partial) if rest.len() >= MAX_FIRST_BYTES => {
                            return Err(Refusal::Framing("a trailer longer than the gateway holds"))
                        }
                        Ok(httparse::Status::Partial) => break,
                        Err(_) => return Err(Refusal::Framing("a malformed trailer")),
                    }
                }
            };
            at += used;
        }
        Ok(at)
    }

    /// Reads one request head at the start of `buf`: `None` while it is incomplete; its
    /// length once it is complete, checked, and its body's framing known.
    fn head(
        &mut self,
        buf: &[u8],
        check: impl Fn(&Sniffed) -> Result<(), Refusal>,
    ) -> Result<Option<usize>, Refusal> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        let len = match request.parse(buf) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(Refusal::Framing(
                    "a request head with too many header lines",
                ))
            }
            Err(_) => return Err(Refusal::Framing("not a well-formed HTTP/1 request head")),
        };
        // The name is judged the way the first request's was, by the lenient reading a
        // server might make of the same head; the strict parse above must agree it is one.
        let sniffed = sniff(&buf[..len]);
        if !matches!(sniffed, Sniffed::Http { .. }) {
            return Err(Refusal::Framing("not a well-formed HTTP/1 request head"));
        }
        check(&sniffed)?;
        if request
            .method
            .is_some_and(|m| m.eq_ignore_ascii_case("CONNECT"))
        {
            return Err(Refusal::Upgrade("CONNECT"));
        }
        let mut length: Option<u64> = None;
        let mut chunked = false;
        for h in request.headers.iter() {
            // A server that reads `_` as `-` (as a CGI-style header table does) would frame
            // the body by a header the gateway did not take for framing.
            let dashed = h.name.replace('_', "-");
            if dashed != h.name
                && ["content-length", "transfer-encoding"]
                    .iter()
                    .any(|f| dashed.eq_ignore_ascii_case(f))
            {
                return Err(Refusal::Framing(
                    "a framing header spelled with an underscore",
                ));
            }
            if h.name.eq_ignore_ascii_case("upgrade") {
                return Err(Refusal::Upgrade("an Upgrade header"));
            }
            if h.name.eq_ignore_ascii_case("transfer-encoding") {
                if chunked || !trimmed(h.value).eq_ignore_ascii_case(b"chunked") {
                    return Err(Refusal::Framing(
                        "a transfer coding other than one `chunked`",
                    ));
                }
                chunked = true;
            }
            if h.name.eq_ignore_ascii_case("content-length") {
                if length.is_some() {
                    return Err(Refusal::Framing("more than one Content-Length"));
                }
                length = Some(content_length(h.value)?);
            }
        }
        self.at = match (chunked, length) {
            (true, Some(_)) => {
                return Err(Refusal::Framing(
                    "both Content-Length and Transfer-Encoding",
                ))
            }
            // HTTP/1.0 has no transfer codings: a server may ignore the header (Go's does)
            // and read the chunks as the next request. RFC 9112 6.1 calls such framing
            // faulty.
            (true, None) if request.version == Some(0) => {
                return Err(Refusal::Framing("Transfer-Encoding on an HTTP/1.0 request"))
            }
            (true, None) => At::ChunkSize,
            (false, Some(n)) if n > 0 => At::Body(n),
            (false, _) => At::Head,
        };
        self.checked += 1;
        Ok(Some(len))
    }
}

/// A header value without the optional whitespace around it.
fn trimmed(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|b| !matches!(b, b' ' | b'\t'));
    let end = v.iter().rposition(|b| !matches!(b, b' ' | b'\t'));
    match (start, end) {
        (Some(s), Some(e)) => &v[s..=e],
        _ => &[],
    }
}

/// A Content-Length value: decimal digits only, no sign and no list.
fn content_length(v: &[u8]) -> Result<u64, Refusal> {
    let v = trimmed(v);
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return Err(Refusal::Framing(
            "a Content-Length that is not one decimal number",
        ));
    }
    Ok(v.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Allows requests for `api.test` only.
    fn check(s: &Sniffed) -> Result<(), Refusal> {
        match s {
            Sniffed::Http {
                host: Some(h),
                authority: None,
            } if h == "api.test" => Ok(()),
            Sniffed::Http { host: Some(h), .. } => Err(Refusal::HostMismatch { host: h.clone() }),
            _ => Err(Refusal::NoHost),
        }
    }

    /// Feeds `stream` in pieces of `step` bytes the way the gateway does (uncleared bytes
    /// are offered again with the next piece); returns the bytes cleared, or the refusal.
    fn feed(stream: &[u8], step: usize) -> Result<usize, Refusal> {
        let mut r = Requests::new();
        let mut cleared = 0;
        let mut have = 0;
        while have < stream.len() {
            have = (have + step).min(stream.len());
            cleared += r.clear(&stream[cleared..have], check)?;
        }
        Ok(cleared)
    }

    fn every_step(stream: &[u8]) -> Result<usize, Refusal> {
        let whole = feed(stream, stream.len().max(1));
        for step in [1, 2, 3, 7, 64] {
            assert_eq!(feed(stream, step), whole, "step {step}");
        }
        whole
    }

    const GOOD: &str = "GET / HTTP/1.1\r\nHost: api.test\r\n\r\n";

    #[test]
    fn kept_open_requests_are_each_checked() {
        let two = format!("{GOOD}{GOOD}");
        assert_eq!(every_step(two.as_bytes()), Ok(two.len()));
        let smuggled = format!("{GOOD}GET / HTTP/1.1\r\nHost: other.test\r\n\r\n");
        assert_eq!(
            every_step(smuggled.as_bytes()),
            Err(Refusal::HostMismatch {
                host: "other.test".into()
            })
        );
    }

    #[test]
    fn an_incomplete_head_is_held_and_nothing_of_it_cleared() {
        let mut r = Requests::new();
        let first = format!("{GOOD}GET / HTTP/1.1\r\nHost: api");
        assert_eq!(r.clear(first.as_bytes(), check), Ok(GOOD.len()));
        assert_eq!(r.checked(), 1);
        assert_eq!(r.clear(b"GET / HTTP/1.1\r\nHost: api", check), Ok(0));
    }

    #[test]
    fn a_body_of_known_length_passes_and_what_follows_is_a_head() {
        let body = "x".repeat(40);
        let ok =
            format!("POST /u HTTP/1.1\r\nHost: api.test\r\nContent-Length: 40\r\n\r\n{body}{GOOD}");
        assert_eq!(every_step(ok.as_bytes()), Ok(ok.len()));
        // A body that merely looks like a request is body, not a request.
        let inner = "GET / HTTP/1.1\r\nHost: other.test\r\n\r\n";
        let ok = format!(
            "POST / HTTP/1.1\r\nHost: api.test\r\nContent-Length: {}\r\n\r\n{inner}",
            inner.len()
        );
        assert_eq!(every_step(ok.as_bytes()), Ok(ok.len()));
        // One byte short: the smuggled head is then a head of its own.
        let bad = format!("POST / HTTP/1.1\r\nHost: api.test\r\nContent-Length: 0\r\n\r\n{inner}");
        assert!(matches!(
            every_step(bad.as_bytes()),
            Err(Refusal::HostMismatch { .. })
        ));
    }

    #[test]
    fn a_chunked_body_with_extensions_and_trailers_passes_then_the_next_head_is_checked() {
        let chunked = "POST / HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\n\r\n\
                       5;ext=1\r\nhello\r\n1a\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-T: 1\r\n\r\n";
        let ok = format!("{chunked}{GOOD}");
        assert_eq!(every_step(ok.as_bytes()), Ok(ok.len()));
        let bad = format!("{chunked}GET / HTTP/1.1\r\nHost: other.test\r\n\r\n");
        assert!(matches!(
            every_step(bad.as_bytes()),
            Err(Refusal::HostMismatch { .. })
        ));
    }

    #[test]
    fn framing_a_server_could_read_differently_is_refused() {
        let refused = |head: &str| {
            let stream = format!("POST / HTTP/1.1\r\nHost: api.test\r\n{head}\r\n");
            every_step(stream.as_bytes()).unwrap_err().to_string()
        };
        for (head, why) in [
            (
                "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
                "both Content-Length and Transfer-Encoding",
            ),
            (
                "Content-Length: 5\r\nContent-Length: 6\r\n",
                "more than one Content-Length",
            ),
            (
                "Content-Length: 5\r\nContent-Length: 5\r\n",
                "more than one Content-Length",
            ),
            ("Content-Length: +5\r\n", "not one decimal number"),
            ("Content-Length: 5, 5\r\n", "not one decimal number"),
            ("Content-Length: \r\n", "not one decimal number"),
            (
                "Content-Length: 99999999999999999999\r\n",
                "not one decimal number",
            ),
            (
                "Transfer-Encoding: gzip, chunked\r\n",
                "other than one `chunked`",
            ),
            (
                "Transfer-Encoding: xchunked\r\n",
                "other than one `chunked`",
            ),
            (
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                "other than one `chunked`",
            ),
            (
                "Transfer-Encoding: chunked\r\n x\r\n",
                "not a well-formed HTTP/1 request head",
            ),
            (
                "Content-Length : 5\r\n",
                "not a well-formed HTTP/1 request head",
            ),
            (
                "Upgrade: websocket\r\nConnection: upgrade\r\n",
                "Upgrade header",
            ),
            ("Upgrade: h2c\r\n", "Upgrade header"),
            (
                "Transfer_Encoding: chunked\r\n",
                "spelled with an underscore",
            ),
            ("content_length: 5\r\n", "spelled with an underscore"),
        ] {
            let got = refused(head);
            assert!(got.contains(why), "{head:?}: {got}");
        }
    }

    #[test]
    fn connect_and_other_than_http_after_a_request_are_refused() {
        let connect = "CONNECT api.test:443 HTTP/1.1\r\nHost: api.test\r\n\r\n";
        let got = Requests::new().clear(connect.as_bytes(), |_| Ok(()));
        assert_eq!(got, Err(Refusal::Upgrade("CONNECT")));
        for next in [
            "\x16\x03\x01\x00\x05hello",
            "SSH-2.0-x\r\n",
            "GET /\r\n\r\n",
        ] {
            let stream = format!("{GOOD}{next}");
            assert!(
                matches!(every_step(stream.as_bytes()), Err(Refusal::Framing(_))),
                "{next:?}"
            );
        }
    }

    #[test]
    fn malformed_chunks_are_refused() {
        let head = "POST / HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\n\r\n";
        for body in [
            "zz\r\n",
            "00000000000000005\r\nhello\r\n",
            "5\nhello\r\n",
            "5\r\nhello\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            " 0\r\n\r\n",
            "5\r\nhelloX\r\n",
            "5\r\nhello\n0\r\n\r\n",
            "0\r\nbad trailer\r\n\r\n",
        ] {
            let stream = format!("{head}{body}");
            assert!(
                matches!(every_step(stream.as_bytes()), Err(Refusal::Framing(_))),
                "{body:?}"
            );
        }
    }

    #[test]
    fn heads_and_lines_past_the_bound_are_refused_not_held() {
        let long = format!(
            "GET / HTTP/1.1\r\nHost: api.test\r\nX: {}\r\n",
            "a".repeat(MAX_FIRST_BYTES)
        );
        assert!(matches!(
            feed(long.as_bytes(), 1000),
            Err(Refusal::Framing(m)) if m.contains("longer than the gateway holds")
        ));
        let chunk = format!(
            "POST / HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\n\r\n5;{}",
            "e".repeat(MAX_FIRST_BYTES)
        );
        assert!(matches!(
            feed(chunk.as_bytes(), 1000),
            Err(Refusal::Framing(_))
        ));
    }

    #[test]
    fn a_chunk_line_a_server_ends_sooner_than_the_gateway_is_refused() {
        // Go's chunk-size line ended at a bare LF (CVE-2025-22871): its chunk data is the 64
        // x's, then "0" ends the body and a request for evil.test follows. `httparse` reads
        // "a\nxxx..." as an extension and the rest as one 64-byte chunk.
        let smuggled = "0\r\n\r\nGET / HTTP/1.1\r\nHost: evil.test\r\nContent-Length: 7\r\nX: ";
        let smuggled = format!("{smuggled}{}\r\n\r\n", "y".repeat(64 - smuggled.len() - 4));
        assert_eq!(smuggled.len(), 64);
        let stream = format!(
            "POST / HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\n\r\n\
             40;a\n{}\r\n{smuggled}\r\n0\r\n\r\n",
            "x".repeat(64)
        );
        assert_eq!(
            every_step(stream.as_bytes()),
            Err(Refusal::Framing("a control byte in a chunk-size line"))
        );
        let head = "POST / HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\n\r\n";
        for line in ["5;a\0b\r\n", "5;\x0b\r\n", "5;a=\"\x7f\"\r\n"] {
            let stream = format!("{head}{line}hello\r\n0\r\n\r\n");
            assert!(
                matches!(every_step(stream.as_bytes()), Err(Refusal::Framing(_))),
                "{line:?}"
            );
        }
        // A quoted extension value and blanks before the `;` are fine.
        let ok = format!("{head}5 ;a=\"b c\"\r\nhello\r\n0\r\n\r\n{GOOD}");
        assert_eq!(every_step(ok.as_bytes()), Ok(ok.len()));
    }

    #[test]
    fn transfer_encoding_on_an_http_1_0_request_is_refused() {
        // Go ignores Transfer-Encoding on HTTP/1.0 and reads the chunks as the next request.
        let stream = "POST / HTTP/1.0\r\nHost: api.test\r\nConnection: keep-alive\r\n\
                      Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
        assert_eq!(
            every_step(stream.as_bytes()),
            Err(Refusal::Framing("Transfer-Encoding on an HTTP/1.0 request"))
        );
        let ok = "POST / HTTP/1.0\r\nHost: api.test\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(every_step(ok.as_bytes()), Ok(ok.len()));
    }

    /// The gateway's own check for a connection to `api.test`.
    fn gateway_check(s: &Sniffed) -> Result<(), Refusal> {
        let target = crate::decide::Target {
            upstream: "93.184.216.34:80".parse().unwrap(),
            name: Some("api.test".into()),
        };
        crate::decide::check_first_bytes(&target, s)
    }

    #[test]
    fn a_first_request_a_server_takes_is_followed_not_passed_as_another_protocol() {
        // The gateway follows a connection's requests only when the first bytes sniff as
        // HTTP; another protocol is forwarded unread. Each of these is a request a server
        // takes (a long method, Python's `str.split()` blanks), then one for evil.test.
        let evil = "GET / HTTP/1.1\r\nHost: evil.test\r\n\r\n";
        for first in [
            format!("{} / HTTP/1.1\r\nHost: api.test\r\n\r\n", "X".repeat(40)),
            "\x0bGET / HTTP/1.1\r\nHost: api.test\r\n\r\n".to_string(),
            "GET\x1c/\x1cHTTP/1.1\r\nHost: api.test\r\n\r\n".to_string(),
        ] {
            let stream = format!("{first}{evil}").into_bytes();
            // At every cut the first bytes are either not yet decided or HTTP.
            for cut in 1..=stream.len() {
                let s = sniff(&stream[..cut]);
                assert!(
                    matches!(s, Sniffed::NeedMore | Sniffed::Http { .. }),
                    "{first:?} cut at {cut}: {s:?}"
                );
            }
            assert!(gateway_check(&sniff(&stream)).is_ok(), "{first:?}");
            // Followed, the request for evil.test (or the odd first line) is refused.
            assert!(
                Requests::new().clear(&stream, gateway_check).is_err(),
                "{first:?}"
            );
        }
    }

    #[test]
    fn a_later_request_is_checked_as_the_first_one_is() {
        for next in [
            "GET http://evil.test/ HTTP/1.1\r\nHost: api.test\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: api.test\r\nHost: evil.test\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: evil.test\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            " GET / HTTP/1.1\r\nHost: api.test\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: api.test\r\nuPgRaDe: h2c\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ] {
            let stream = format!("{GOOD}{next}");
            let mut r = Requests::new();
            assert!(
                r.clear(stream.as_bytes(), gateway_check).is_err(),
                "{next:?}"
            );
            assert_eq!(r.checked(), 1, "{next:?}");
        }
    }

    #[test]
    fn blank_lines_between_requests_are_skipped_as_a_server_does() {
        let stream = format!("{GOOD}\r\n{GOOD}");
        assert_eq!(every_step(stream.as_bytes()), Ok(stream.len()));
    }
}
