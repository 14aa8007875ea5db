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

/// HTTP/1 methods (and HTTP/2's preface, which carries no Host and is refused).
const HTTP_METHODS: &[&[u8]] = &[
    b"GET ",
    b"HEAD ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
    b"PRI ",
];

/// What the first bytes of a stream are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sniffed {
    /// Not enough bytes yet to tell.
    NeedMore,
    /// A TLS handshake; `sni` is its host name, when it has exactly one.
    Tls { sni: Option<String> },
    /// A plain HTTP request; `host` is its Host header, when it has exactly one.
    Http { host: Option<String> },
    /// Another protocol.
    Other,
}

/// Classifies the first bytes of a stream.
pub fn sniff(buf: &[u8]) -> Sniffed {
    match buf.first() {
        None => Sniffed::NeedMore,
        Some(0x16) => sniff_tls(buf),
        Some(_) => sniff_http(buf),
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
    let sni = match parse_tls_plaintext(&buf[..5 + len]) {
        Ok((_, record)) => match record.msg.first() {
            Some(TlsMessage::Handshake(TlsMessageHandshake::ClientHello(hello))) => {
                hello.ext.and_then(server_name)
            }
            _ => None,
        },
        Err(_) => None,
    };
    Sniffed::Tls { sni }
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

fn sniff_http(buf: &[u8]) -> Sniffed {
    let method = HTTP_METHODS.iter().find(|m| buf.starts_with(m));
    if method.is_none() {
        let maybe = HTTP_METHODS
            .iter()
            .any(|m| buf.len() < m.len() && m.starts_with(buf));
        return if maybe {
            Sniffed::NeedMore
        } else {
            Sniffed::Other
        };
    }
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Sniffed::NeedMore;
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let mut hosts = head
        .split("\r\n")
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .filter(|(k, _)| k.trim().eq_ignore_ascii_case("host"))
        .map(|(_, v)| v.trim().to_string());
    let host = match (hosts.next(), hosts.next()) {
        (Some(h), None) if !h.is_empty() => Some(h),
        _ => None,
    };
    Sniffed::Http { host }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal TLS 1.2 ClientHello record naming `sni` (or none).
    pub fn client_hello(sni: Option<&str>) -> Vec<u8> {
        let mut ext = Vec::new();
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
                sni: Some("API.test".into())
            }
        );
        assert_eq!(sniff(&client_hello(None)), Sniffed::Tls { sni: None });
        assert_eq!(
            sniff(&[0x16, 3, 1, 0, 4, 9, 9, 9, 9]),
            Sniffed::Tls { sni: None }
        );
    }

    #[test]
    fn host_is_read_from_an_http_request() {
        let req = b"GET / HTTP/1.1\r\nUser-Agent: x\r\nhOsT: a.test:8080\r\n\r\n";
        assert_eq!(
            sniff(req),
            Sniffed::Http {
                host: Some("a.test:8080".into())
            }
        );
        assert_eq!(sniff(b"GE"), Sniffed::NeedMore);
        assert_eq!(sniff(b"GET / HTTP/1.1\r\nHost: a"), Sniffed::NeedMore);
        assert_eq!(
            sniff(b"GET / HTTP/1.0\r\n\r\n"),
            Sniffed::Http { host: None }
        );
        assert_eq!(
            sniff(b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n"),
            Sniffed::Http { host: None }
        );
        assert_eq!(sniff(b"SSH-2.0-OpenSSH_9.2\r\n"), Sniffed::Other);
        assert_eq!(sniff(&[0, 0, 0, 8, 4, 210, 22, 47]), Sniffed::Other);
    }
}
