//! Reads the name a stream's first bytes claim: the SNI of a TLS ClientHello, or the Host
//! header of a plain HTTP request. The caller bounds how many bytes it waits for and how
//! long; this module only says whether it has enough.

use tls_parser::{
    parse_tls_extensions, parse_tls_plaintext, SNIType, TlsExtension, TlsMessage,
    TlsMessageHandshake,
};

/// The most bytes the gateway holds back while it reads the first bytes: one full TLS
/// record (16 KiB and its header) with room to spare.
pub const MAX_FIRST_BYTES: usize = 16 * 1024 + 5 + 256;

/// HTTP/1 methods (and HTTP/2's preface, which carries no Host and is refused): a request
/// line that opens with one is a request even without a version (HTTP/0.9).
const HTTP_METHODS: &[&[u8]] = &[
    b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"CONNECT", b"TRACE", b"PRI",
];

/// What the first bytes of a stream are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sniffed {
    /// Not enough bytes yet to tell.
    NeedMore,
    /// A TLS handshake; `sni` is its host name, when it has exactly one; `hidden` says
    /// the ClientHello carries an encrypted one (ECH, or the older ESNI), which the server
    /// goes by instead of `sni`.
    Tls { sni: Option<String>, hidden: bool },
    /// A plain HTTP request; `host` is its Host header, when it has exactly one;
    /// `authority` the host its request target names by itself (absolute or authority
    /// form), which a server routes by before the Host header.
    Http {
        host: Option<String>,
        authority: Option<String>,
    },
    /// Another protocol.
    Other,
}

/// Classifies the first bytes of a stream.
pub fn sniff(buf: &[u8]) -> Sniffed {
    match buf.first() {
        None => Sniffed::NeedMore,
        Some(0x16) => sniff_tls(buf),
        Some(0x14..=0x18 | 0x80..=0xff) => sniff_other_tls(buf),
        Some(_) => sniff_http(buf),
    }
}

/// A stream that begins with a TLS record other than a handshake (change_cipher_spec,
/// alert, application_data, heartbeat: `0x14`-`0x18`, then version `3.x`), or with an
/// SSLv2-format ClientHello (a two-byte length with the high bit set, then message type
/// 1, then a version): TLS whose first message names no server the gateway can check, so
/// it is TLS without an SNI, not "another protocol" passed on the address alone. Anything
/// else with such a first byte is another protocol.
fn sniff_other_tls(buf: &[u8]) -> Sniffed {
    if buf.len() < 4 {
        return Sniffed::NeedMore;
    }
    let record = (0x14..=0x18).contains(&buf[0]) && buf[1] == 3 && buf[2] <= 4;
    let sslv2_hello = buf[0] & 0x80 != 0 && buf[2] == 1 && buf[3] <= 3;
    if record || sslv2_hello {
        Sniffed::Tls {
            sni: None,
            hidden: false,
        }
    } else {
        sniff_http(buf)
    }
}

fn sniff_tls(buf: &[u8]) -> Sniffed {
    if buf.len() < 5 {
        return Sniffed::NeedMore;
    }
    let len = u16::from_be_bytes([buf[3], buf[4]]) as usize;
    if buf.len() < 5 + len {
        return Sniffed::NeedMore;
    }
    let (sni, hidden) = match parse_tls_plaintext(&buf[..5 + len]) {
        Ok((_, record)) => match record.msg.first() {
            Some(TlsMessage::Handshake(TlsMessageHandshake::ClientHello(hello))) => (
                hello.ext.and_then(server_name),
                hello.ext.is_some_and(hides_name),
            ),
            _ => (None, false),
        },
        Err(_) => (None, false),
    };
    Sniffed::Tls { sni, hidden }
}

/// TLS extension types that carry an encrypted server name: `encrypted_client_hello`
/// (RFC 9849) and the draft ESNI it replaced.
const HIDDEN_NAME_EXTENSIONS: [u16; 2] = [0xfe0d, 0xffce];

/// Whether a ClientHello's extensions carry an encrypted server name. Read from the
/// extensions' own framing, not from a parser that stops at the first extension it does
/// not understand; extensions whose framing does not add up count as hiding one.
fn hides_name(mut ext: &[u8]) -> bool {
    while !ext.is_empty() {
        let [t0, t1, l0, l1, rest @ ..] = ext else {
            return true;
        };
        let len = u16::from_be_bytes([*l0, *l1]) as usize;
        if rest.len() < len || HIDDEN_NAME_EXTENSIONS.contains(&u16::from_be_bytes([*t0, *t1])) {
            return true;
        }
        ext = &rest[len..];
    }
    false
}

/// The one host name of a ClientHello's server_name extension.
fn server_name(ext: &[u8]) -> Option<String> {
    let (_, extensions) = parse_tls_extensions(ext).ok()?;
    let mut names = extensions.iter().filter_map(|e| match e {
        TlsExtension::SNI(list) => Some(list),
        _ => None,
    });
    let list = names.next()?;
    if names.next().is_some() || list.len() != 1 || list[0].0 != SNIType::HostName {
        return None;
    }
    let name = std::str::from_utf8(list[0].1).ok()?;
    Some(name.to_string())
}

/// A byte of an HTTP token (RFC 9110), the alphabet of methods and header names.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Whitespace a lenient server skips before a request line or accepts between its parts.
/// Python's `http.server` splits the line with `str.split()` after reading it as Latin-1,
/// which also takes VT, FF, the separators 0x1c-0x1f, NEL and NBSP.
fn is_line_space(b: u8) -> bool {
    matches!(
        b,
        b' ' | b'\t' | 0x0b | 0x0c | b'\r' | 0x1c..=0x1f | 0x85 | 0xa0
    )
}

/// A control byte no text protocol line holds.
fn is_binary(b: u8) -> bool {
    (b < 0x20 && b != b'\n' && !is_line_space(b)) || b == 0x7f
}

/// Reads an HTTP/1 request head the way a lenient server does: empty lines (and blanks)
/// before the request line are skipped, any method token is a method, a bare LF ends a line, and a
/// request target in absolute form (or CONNECT's authority form) names a host of its own,
/// which a server routes by instead of the Host header.
///
/// A stream is another protocol only once no server could read it as a request: it opens
/// with a byte that is neither a token's nor a blank's, its first token is followed by
/// such a byte, its first line is complete without an `HTTP/` version (and its method is
/// not one of the common ones), or, its line not yet complete, it holds a control byte.
/// A token still arriving is waited for however long it grows (within the caller's bound):
/// a server takes a method of any length, and a stream called another protocol is
/// forwarded as it is, with no request of it checked.
fn sniff_http(buf: &[u8]) -> Sniffed {
    let Some(start) = buf.iter().position(|b| *b != b'\n' && !is_line_space(*b)) else {
        return Sniffed::NeedMore;
    };
    let rest = &buf[start..];
    let method = match rest.iter().position(|b| !is_tchar(*b)) {
        None => return Sniffed::NeedMore,
        Some(0) => return Sniffed::Other,
        Some(n) if !is_line_space(rest[n]) => return Sniffed::Other,
        Some(n) => &rest[..n],
    };
    // Case counts: methods are case-sensitive, and memcached's `get key` is not HTTP/0.9.
    let known = HTTP_METHODS.contains(&method);
    let Some(eol) = rest.iter().position(|b| *b == b'\n') else {
        if !known && rest.iter().any(|b| is_binary(*b)) {
            return Sniffed::Other;
        }
        return Sniffed::NeedMore;
    };
    let line = &rest[..eol];
    let is_request_line = line.windows(5).any(|w| w.eq_ignore_ascii_case(b"HTTP/"));
    if !known && !is_request_line {
        return Sniffed::Other;
    }
    // The head ends at the first empty line (CRLF or bare LF).
    let mut lines = Vec::new();
    let mut at = eol + 1;
    loop {
        let Some(len) = rest[at..].iter().position(|b| *b == b'\n') else {
            return Sniffed::NeedMore;
        };
        let l = &rest[at..at + len];
        let l = l.strip_suffix(b"\r").unwrap_or(l);
        if l.is_empty() {
            break;
        }
        lines.push(l);
        at += len + 1;
    }
    let mut hosts = Vec::new();
    let mut folded_host = false;
    let mut last_was_host = false;
    for l in lines {
        if l.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
            // A folded line continues the header before it.
            folded_host |= last_was_host;
            continue;
        }
        last_was_host = false;
        let Some(colon) = l.iter().position(|b| *b == b':') else {
            continue;
        };
        let key = String::from_utf8_lossy(&l[..colon]);
        if key.trim().eq_ignore_ascii_case("host") {
            last_was_host = true;
            // Only the blanks a server strips: `str::trim` would also strip U+3000 and
            // the like, which a server keeps as part of the name.
            let value = &l[colon + 1..];
            let start = value.iter().position(|b| !matches!(b, b' ' | b'\t'));
            let end = value.iter().rposition(|b| !matches!(b, b' ' | b'\t'));
            let value = match (start, end) {
                (Some(s), Some(e)) => &value[s..=e],
                _ => &[],
            };
            hosts.push(String::from_utf8_lossy(value).to_string());
        }
    }
    let host = match hosts.as_slice() {
        [h] if !h.is_empty() && !folded_host => Some(h.clone()),
        _ => None,
    };
    Sniffed::Http {
        host,
        authority: request_authority(line),
    }
}

/// The host a request line's target names by itself: an absolute-form target's authority
/// (`GET http://host/ HTTP/1.1`), or CONNECT's authority form; `None` for origin form.
fn request_authority(line: &[u8]) -> Option<String> {
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(|c: char| c.is_ascii() && is_line_space(c as u8));
    let method = parts.next()?;
    let target = parts.find(|p| !p.is_empty())?;
    if method.eq_ignore_ascii_case("CONNECT") {
        return Some(target.to_string());
    }
    if target.starts_with('/') || target == "*" {
        return None;
    }
    let after = match target.split_once("://") {
        Some((_, after)) => after,
        None => target,
    };
    let end = after.find(['/', '?', '#']).unwrap_or(after.len());
    Some(after[..end].to_string())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal TLS 1.2 ClientHello record naming `sni` (or none).
    pub fn client_hello(sni: Option<&str>) -> Vec<u8> {
        client_hello_with(sni, &[], &[])
    }

    /// A ClientHello naming `sni`, with raw extensions `before` and `after` its SNI.
    pub fn client_hello_with(sni: Option<&str>, before: &[u8], after: &[u8]) -> Vec<u8> {
        let mut ext = before.to_vec();
        if let Some(name) = sni {
            let n = name.as_bytes();
            let list_len = 3 + n.len();
            ext.extend_from_slice(&[0, 0]); // server_name
            ext.extend_from_slice(&((list_len + 2) as u16).to_be_bytes());
            ext.extend_from_slice(&(list_len as u16).to_be_bytes());
            ext.push(0); // host_name
            ext.extend_from_slice(&(n.len() as u16).to_be_bytes());
            ext.extend_from_slice(n);
        }
        ext.extend_from_slice(after);
        let mut body = Vec::new();
        body.extend_from_slice(&[3, 3]);
        body.extend_from_slice(&[7; 32]);
        body.push(0); // session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]);
        body.extend_from_slice(&[1, 0]);
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        let mut hs = vec![1];
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        let mut rec = vec![0x16, 3, 1];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    #[test]
    fn sni_is_read_from_a_client_hello_in_pieces() {
        let hello = client_hello(Some("API.test"));
        for cut in [0, 1, 4, 10, hello.len() - 1] {
            assert_eq!(sniff(&hello[..cut]), Sniffed::NeedMore, "cut at {cut}");
        }
        assert_eq!(
            sniff(&hello),
            Sniffed::Tls {
                sni: Some("API.test".into()),
                hidden: false
            }
        );
        assert_eq!(
            sniff(&client_hello(None)),
            Sniffed::Tls {
                sni: None,
                hidden: false
            }
        );
        assert_eq!(
            sniff(&[0x16, 3, 1, 0, 4, 9, 9, 9, 9]),
            Sniffed::Tls {
                sni: None,
                hidden: false
            }
        );
    }

    #[test]
    fn host_is_read_from_an_http_request() {
        let req = b"GET / HTTP/1.1\r\nUser-Agent: x\r\nhOsT: a.test:8080\r\n\r\n";
        assert_eq!(
            sniff(req),
            Sniffed::Http {
                host: Some("a.test:8080".into()),
                authority: None
            }
        );
        assert_eq!(sniff(b"GE"), Sniffed::NeedMore);
        assert_eq!(sniff(b"GET / HTTP/1.1\r\nHost: a"), Sniffed::NeedMore);
        assert_eq!(
            sniff(b"GET / HTTP/1.0\r\n\r\n"),
            Sniffed::Http {
                host: None,
                authority: None
            }
        );
        assert_eq!(
            sniff(b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n"),
            Sniffed::Http {
                host: None,
                authority: None
            }
        );
        assert_eq!(sniff(b"SSH-2.0-OpenSSH_9.2\r\n"), Sniffed::Other);
        assert_eq!(sniff(&[0, 0, 0, 8, 4, 210, 22, 47]), Sniffed::Other);
    }

    #[test]
    fn tls_that_does_not_open_with_a_client_hello_is_tls_without_a_name() {
        let no_name = Sniffed::Tls {
            sni: None,
            hidden: false,
        };
        // An alert, then a ClientHello naming anything: the name is never read.
        let mut alert_first = vec![0x15, 3, 3, 0, 2, 1, 0];
        alert_first.extend(client_hello(Some("evil.test")));
        assert_eq!(sniff(&alert_first), no_name);
        assert_eq!(sniff(&[0x14, 3, 3, 0, 1, 1]), no_name);
        assert_eq!(sniff(&[0x17, 3, 3, 0, 3, 1, 2, 3]), no_name);
        // An SSLv2-format ClientHello (length 0x2e, type 1, version 3.1).
        assert_eq!(sniff(&[0x80, 0x2e, 1, 3, 1, 0, 0x15]), no_name);
        // Too short to tell: wait.
        assert_eq!(sniff(&[0x15, 3]), Sniffed::NeedMore);
        // Other binary protocols with such a first byte stay other protocols.
        assert_eq!(sniff(&[0x17, 0x01, 0x00, 0x01, 0x85, 0xa6]), Sniffed::Other);
        assert_eq!(sniff(&[0x83, 0x00, 0x00, 0x00, 9]), Sniffed::Other);
    }

    #[test]
    fn other_protocols_are_told_apart_without_waiting() {
        // ssh (with a comment), redis, git://, a postgres startup: none is held back.
        assert_eq!(sniff(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n"), Sniffed::Other);
        assert_eq!(sniff(b"*1\r\n$4\r\nPING\r\n"), Sniffed::Other);
        assert_eq!(sniff(b"PING\r\n"), Sniffed::Other);
        assert_eq!(sniff(b"get some-key\r\n"), Sniffed::Other);
        // A long token is decided once something follows it (a method may be that long).
        let long = "SSH-2.0-OpenSSH_9.6p1_hpn18.3.0-with-a-long-version";
        assert_eq!(sniff(long.as_bytes()), Sniffed::NeedMore);
        assert_eq!(sniff(format!("{long}\r\n").as_bytes()), Sniffed::Other);
        assert_eq!(
            sniff(b"0032git-upload-pack /project.git\0host=a.test\0"),
            Sniffed::Other
        );
        assert_eq!(sniff(&[0, 0, 0, 8, 4, 210, 22, 47]), Sniffed::Other);
        // A request line still arriving is waited for.
        assert_eq!(sniff(b"\r\n"), Sniffed::NeedMore);
        assert_eq!(sniff(b"PROPFIND /a"), Sniffed::NeedMore);
        assert_eq!(
            sniff(b"PROPFIND /a HTTP/1.1\nHost: a.test\n\n"),
            Sniffed::Http {
                host: Some("a.test".into()),
                authority: None
            }
        );
    }
}
