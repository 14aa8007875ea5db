//! HTTP plumbing shared by the operator socket and the agent sockets: bodies, JSON
//! answers, query strings, and serving one connection.

use super::api::ApiError;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::mpsc;

pub type Body = BoxBody<Bytes, Infallible>;
pub type Reply = Response<Body>;

/// A response body fed from a channel: each message is sent as it arrives (chunked).
pub struct ChannelBody(pub mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|m| m.map(|b| Ok(Frame::data(b))))
    }
}

pub fn full(status: u16, content_type: &str, body: impl Into<Bytes>) -> Reply {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", content_type)
        .body(Full::new(body.into()).boxed())
        .expect("a valid response")
}

/// `value` as a JSON answer; one that cannot be serialised is a 500 that says so, never
/// an empty body under the intended status.
pub fn json<T: serde::Serialize>(status: u16, value: &T) -> Reply {
    match serde_json::to_vec(value) {
        Ok(mut body) => {
            body.push(b'\n');
            full(status, "application/json", body)
        }
        Err(e) => full(
            500,
            "application/json",
            format!(
                "{}\n",
                serde_json::json!({"error": format!("the answer could not be serialised: {e}")})
            ),
        ),
    }
}

pub fn error(e: &ApiError) -> Reply {
    let mut reply = json(e.status, &e.body);
    if e.status == 408 {
        // The rest of a body that came too slowly is not worth waiting for.
        reply
            .headers_mut()
            .insert("connection", "close".parse().expect("ascii"));
    }
    if let Some(after) = e.body.retry_after_s {
        reply
            .headers_mut()
            .insert("retry-after", after.to_string().parse().expect("digits"));
    }
    reply
}

pub fn stream(content_type: &str, rx: mpsc::Receiver<Bytes>) -> Reply {
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", content_type)
        .body(ChannelBody(rx).boxed())
        .expect("a valid response")
}

/// Most bytes of an oversize body read and thrown away before answering 413, so the
/// client has finished writing and sees the answer.
const DRAIN: u64 = 64 * 1024 * 1024;

/// The whole body, refused past `limit` bytes (413) or when it has not all arrived
/// within `timeout` (408), so a client that trickles a body holds nothing for long.
pub async fn read_body(
    req: Request<Incoming>,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, ApiError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut body = req.into_body();
    let mut data = bytes::BytesMut::new();
    let mut seen = 0u64;
    loop {
        let Ok(frame) = tokio::time::timeout_at(deadline, body.frame()).await else {
            return Err(ApiError::new(
                408,
                format!(
                    "the request body did not arrive within {} ms",
                    timeout.as_millis()
                ),
            ));
        };
        let Some(frame) = frame else { break };
        let frame =
            frame.map_err(|e| ApiError::new(400, format!("reading the request body: {e}")))?;
        if let Ok(chunk) = frame.into_data() {
            seen += chunk.len() as u64;
            if seen <= limit as u64 {
                data.extend_from_slice(&chunk);
            } else if seen > DRAIN {
                break;
            }
        }
    }
    if seen > limit as u64 {
        return Err(ApiError::new(
            413,
            format!("request body is larger than {limit} bytes"),
        ));
    }
    Ok(data.freeze())
}

/// Parses a JSON body into `T`; the error names the path of the field that failed
/// (`argv[1]`, `manifest`), or, when a field is missing or unknown, that field.
pub async fn read_json<T: serde::de::DeserializeOwned>(
    req: Request<Incoming>,
    limit: usize,
    timeout: Duration,
) -> Result<T, ApiError> {
    let is_json = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v.starts_with("application/json"));
    if !is_json {
        return Err(ApiError::new(415, "the body must be application/json"));
    }
    let body = read_body(req, limit, timeout).await?;
    parse_json(&body)
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let mut json = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut json).map_err(|e| {
        let path = e.path().to_string();
        let text = e.inner().to_string();
        // `.` is the body itself, `?` a syntax error before any field.
        let field = (path != "." && path != "?").then_some(path);
        let mut err = match &field {
            Some(path) => ApiError::new(400, format!("invalid JSON body: {path}: {text}")),
            None => ApiError::new(400, format!("invalid JSON body: {text}")),
        };
        err.body.field = field;
        err
    })
}

/// Whether the request carries `Authorization: Bearer TOKEN` (compared in constant time).
pub fn bearer_ok(req: &Request<Incoming>, token: &str) -> bool {
    let presented = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    presented.len() == token.len()
        && presented
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// Query parameters, decoded.
pub fn query(req: &Request<Incoming>) -> Vec<(String, String)> {
    req.uri()
        .query()
        .map(|q| {
            form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

pub fn param<'a>(q: &'a [(String, String)], key: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// A numeric query parameter; a bad value is a 400 naming it.
pub fn number(q: &[(String, String)], key: &str, default: u64) -> Result<u64, ApiError> {
    match param(q, key) {
        None => Ok(default),
        Some(v) => v
            .parse()
            .map_err(|_| ApiError::field(400, key, format!("`{key}`: `{v}` is not a number"))),
    }
}

pub fn flag(q: &[(String, String)], key: &str) -> bool {
    matches!(param(q, key), Some("1" | "true" | "yes"))
}

/// The path split at `/`, without empty segments.
pub fn segments(req: &Request<Incoming>) -> Vec<String> {
    req.uri()
        .path()
        .split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// A signal given as a name (`TERM`, `SIGTERM`) or a number.
pub fn parse_signal(text: &str) -> Result<i32, ApiError> {
    if let Ok(n) = text.parse::<i32>() {
        if (1..=64).contains(&n) {
            return Ok(n);
        }
    }
    let name = text.trim_start_matches("SIG").to_ascii_uppercase();
    let sig = match name.as_str() {
        "KILL" => libc::SIGKILL,
        "TERM" => libc::SIGTERM,
        "INT" => libc::SIGINT,
        "HUP" => libc::SIGHUP,
        "QUIT" => libc::SIGQUIT,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "WINCH" => libc::SIGWINCH,
        "CONT" => libc::SIGCONT,
        _ => {
            return Err(ApiError::field(
                400,
                "signal",
                format!("signal `{text}`: expected a name such as TERM or KILL, or a number"),
            ))
        }
    };
    Ok(sig)
}

/// Runs one request's handler in a task of its own, so that a handler that panics costs
/// its own request a 500, not the connection or the daemon. This is the daemon's policy
/// for panics: a panic is a bug confined to the request it happened in; the locks it may
/// have held are used as they are afterwards (see `Daemon::lock_state`).
async fn answer(handler: Pin<Box<dyn std::future::Future<Output = Reply> + Send>>) -> Reply {
    match tokio::spawn(handler).await {
        Ok(reply) => reply,
        Err(e) => {
            let why = if e.is_panic() {
                "the request's handler panicked"
            } else {
                "the request's handler was cancelled"
            };
            eprintln!("covenantd: {why}");
            error(&ApiError::new(500, why))
        }
    }
}

/// Serves one connection with `handle` until the peer closes it; the client gets
/// `timeout` to send each request's headers (bodies are held to it where they are read).
pub async fn serve<S, F>(io: S, timeout: Duration, handle: F)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Pin<Box<dyn std::future::Future<Output = Reply> + Send>>
        + Send
        + Sync
        + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let fut = handle(req);
        async move { Ok::<_, Infallible>(answer(fut).await) }
    });
    // Idle or trickling connections do not hold the daemon's descriptors forever.
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(timeout)
        .serve_connection(hyper_util::rt::TokioIo::new(io), service)
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One request of a connection, written raw; returns the answer's status code.
    async fn ask(io: &mut tokio::io::DuplexStream, path: &str) -> u16 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        io.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        // Headers and the whole (small, length-delimited) body.
        while !got.windows(4).any(|w| w == b"\r\n\r\n") || !got.ends_with(b"\n") {
            let n = io.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "the connection closed: {}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
        let head = String::from_utf8_lossy(&got);
        head[9..12].parse().unwrap()
    }

    #[tokio::test]
    async fn a_panicking_handler_costs_its_request_a_500_and_nothing_more() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(serve(server, Duration::from_secs(5), |req| {
            Box::pin(async move {
                if req.uri().path() == "/panic" {
                    panic!("a bug in one handler");
                }
                json(200, &serde_json::json!({"ok": true}))
            })
        }));
        assert_eq!(ask(&mut client, "/panic").await, 500);
        // The same connection, and so the daemon's serving task, still answers.
        assert_eq!(ask(&mut client, "/fine").await, 200);
        assert_eq!(ask(&mut client, "/panic").await, 500);
        assert_eq!(ask(&mut client, "/fine").await, 200);
    }

    #[test]
    fn an_answer_that_cannot_be_serialised_is_a_500_not_an_empty_body() {
        struct Unserialisable;
        impl serde::Serialize for Unserialisable {
            fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                Err(serde::ser::Error::custom("no"))
            }
        }
        let reply = json(200, &Unserialisable);
        assert_eq!(reply.status(), 500);
    }

    #[test]
    fn a_bad_body_names_the_path_of_what_failed() {
        use crate::daemon::api::SubmitRequest;
        let e =
            parse_json::<SubmitRequest>(br#"{"capability": "c", "argv": ["a", 7]}"#).unwrap_err();
        assert_eq!(e.body.field.as_deref(), Some("argv[1]"));
        assert_eq!(
            e.body.error,
            "invalid JSON body: argv[1]: invalid type: integer `7`, expected a string at line 1 column 35"
        );
        let e = parse_json::<SubmitRequest>(br#"{"capability": "c", "stdin": "tty"}"#).unwrap_err();
        assert_eq!(e.body.field.as_deref(), Some("stdin"));
        let e = parse_json::<SubmitRequest>(br#"{"capability": "c", "priority": 9}"#).unwrap_err();
        assert_eq!(
            e.body.field.as_deref(),
            Some("priority"),
            "{}",
            e.body.error
        );
        let e = parse_json::<SubmitRequest>(br#"{"argv": ["a"]}"#).unwrap_err();
        assert_eq!(e.body.field, None, "{}", e.body.error);
        assert!(
            e.body.error.contains("missing field `capability`"),
            "{}",
            e.body.error
        );
        let e = parse_json::<SubmitRequest>(b"{not json").unwrap_err();
        assert_eq!(e.body.field, None);
    }

    #[test]
    fn signals_by_name_and_number() {
        assert_eq!(parse_signal("TERM").unwrap(), libc::SIGTERM);
        assert_eq!(parse_signal("SIGKILL").unwrap(), libc::SIGKILL);
        assert_eq!(parse_signal("2").unwrap(), 2);
        let e = parse_signal("BOGUS").unwrap_err();
        assert_eq!(e.body.field.as_deref(), Some("signal"));
        assert!(parse_signal("0").is_err());
    }
}
