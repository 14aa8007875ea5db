//! A small blocking client for the daemon's socket, used by `covenant-ctl` in daemon
//! mode, by the tests and by the load benchmark. Each call opens its own connection.

use super::http::ChannelBody;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use std::convert::Infallible;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach covenantd at {socket}: {error}")]
    Connect {
        socket: PathBuf,
        error: std::io::Error,
    },
    #[error("covenantd at {socket}: {error}")]
    Http { socket: PathBuf, error: String },
}

/// An answer: status and body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The error text of a 4xx/5xx answer.
    pub fn error_text(&self) -> String {
        let v = self.json();
        match v["error"].as_str() {
            Some(e) => e.to_string(),
            None => String::from_utf8_lossy(&self.body).into_owned(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Client {
    pub socket: PathBuf,
}

type ReqBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// The whole answer of a response.
async fn collect(
    client: &Client,
    resp: hyper::Response<hyper::body::Incoming>,
) -> Result<Answer, ClientError> {
    let status = resp.status().as_u16();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| client.http_error(e))?
        .to_bytes();
    Ok(Answer {
        status,
        body: bytes.to_vec(),
    })
}

impl Client {
    pub fn new(socket: &Path) -> Self {
        Client {
            socket: socket.to_path_buf(),
        }
    }

    /// Whether a daemon answers `GET /v1/health` on the socket.
    pub fn answers(&self) -> bool {
        self.request("GET", "/v1/health", None)
            .map(|a| a.status == 200)
            .unwrap_or(false)
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime")
    }

    fn http_error(&self, error: impl std::fmt::Display) -> ClientError {
        ClientError::Http {
            socket: self.socket.clone(),
            error: error.to_string(),
        }
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        body: ReqBody,
        headers: &[(&str, &str)],
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|error| ClientError::Connect {
                socket: self.socket.clone(),
                error,
            })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| self.http_error(e))?;
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "covenantd");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(body).map_err(|e| self.http_error(e))?;
        sender
            .send_request(req)
            .await
            .map_err(|e| self.http_error(e))
    }

    /// One request with an optional JSON body; the whole answer.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        json: Option<&serde_json::Value>,
    ) -> Result<Answer, ClientError> {
        let body = json.map(|v| v.to_string().into_bytes());
        self.request_raw(method, path, body, "application/json")
    }

    pub fn request_raw(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        content_type: &str,
    ) -> Result<Answer, ClientError> {
        Self::runtime().block_on(async {
            let headers: Vec<(&str, &str)> = if body.is_some() {
                vec![("content-type", content_type)]
            } else {
                vec![]
            };
            let body = Full::new(Bytes::from(body.unwrap_or_default())).boxed();
            let resp = self.send(method, path, body, &headers).await?;
            collect(self, resp).await
        })
    }

    /// A streamed answer, line by line; `on_line` returns false to stop. Returns the
    /// status, and the body when the status is not 200.
    pub fn lines(
        &self,
        path: &str,
        mut on_line: impl FnMut(&[u8]) -> bool,
    ) -> Result<Answer, ClientError> {
        Self::runtime().block_on(async {
            let resp = self
                .send("GET", path, Full::new(Bytes::new()).boxed(), &[])
                .await?;
            let status = resp.status().as_u16();
            let mut body = resp.into_body();
            let mut pending = Vec::new();
            let mut kept = Vec::new();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| self.http_error(e))?;
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                if status != 200 {
                    kept.extend_from_slice(&data);
                    continue;
                }
                pending.extend_from_slice(&data);
                while let Some(n) = pending.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = pending.drain(..=n).collect();
                    if !on_line(&line[..line.len() - 1]) {
                        return Ok(Answer { status, body: kept });
                    }
                }
            }
            Ok(Answer { status, body: kept })
        })
    }

    /// Streams `input` to `path` as a chunked body, as it is read.
    pub fn stream_body(
        &self,
        path: &str,
        mut input: impl std::io::Read + Send + 'static,
    ) -> Result<Answer, ClientError> {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(8);
        let reader = std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match input.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.blocking_send(Bytes::copy_from_slice(&buf[..n])).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        let result = Self::runtime().block_on(async {
            let resp = self
                .send(
                    "POST",
                    path,
                    ChannelBody(rx).boxed(),
                    &[("content-type", "application/octet-stream")],
                )
                .await?;
            collect(self, resp).await
        });
        drop(reader);
        result
    }
}

/// Where a node's daemon listens when nothing else is said.
pub const SYSTEM_SOCKET: &str = "/var/lib/covenant/covenantd.sock";

/// The daemon's socket for this user: `$COVENANT_SOCKET`; else `covenantd.sock` in
/// `$COVENANT_HOME` when that is set or the socket is there; else the node's daemon at
/// [`SYSTEM_SOCKET`] (users of the group `covenant` may reach it).
pub fn default_socket() -> PathBuf {
    if let Some(s) = std::env::var_os("COVENANT_SOCKET").filter(|s| !s.is_empty()) {
        return PathBuf::from(s);
    }
    let own = crate::home::covenant_home().join("covenantd.sock");
    let home_set = std::env::var_os("COVENANT_HOME").is_some_and(|h| !h.is_empty());
    if home_set || own.exists() {
        own
    } else {
        PathBuf::from(SYSTEM_SOCKET)
    }
}
