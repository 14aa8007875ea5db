//! The operator API (`docs/api.md`): every route of the daemon's main socket.

use super::api::{KillRequest, MemPut, SubmitRequest, MAX_BODY};
use super::http::{self, flag, number, param, Reply};
use super::jobs::{self, ApiError, Caller, Daemon};
use crate::store::jobs::JobState;
use crate::store::memory::Tier;
use crate::store::AuditEvent;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Method, Request};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// Longest `?wait=` a status request may block.
const MAX_WAIT: Duration = Duration::from_secs(3600);

pub async fn handle(daemon: Arc<Daemon>, caller: Caller, req: Request<Incoming>) -> Reply {
    if let Caller::Tcp { .. } = caller {
        if !daemon
            .config
            .tcp_token
            .as_deref()
            .is_some_and(|t| http::bearer_ok(&req, t))
        {
            daemon.record(vec![AuditEvent::new(
                "api.refused",
                json!({"caller": caller.audit(), "method": req.method().as_str(), "path": req.uri().path(), "status": 401}),
            )]);
            let mut r = http::error(&ApiError::new(401, "a bearer token is required on TCP"));
            r.headers_mut()
                .insert("www-authenticate", "Bearer".parse().expect("ascii"));
            return r;
        }
    }
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let result = route(&daemon, &caller, req).await;
    let status = match &result {
        Ok(r) => r.status().as_u16(),
        Err(e) => e.status,
    };
    // Every request is audited with its caller, except the liveness and metrics probes.
    if !(path == "/v1/health" || path == "/metrics") {
        daemon.record(vec![AuditEvent::new(
            "api.request",
            json!({"caller": caller.audit(), "method": method.as_str(), "path": path, "status": status}),
        )]);
    }
    result.unwrap_or_else(|e| http::error(&e))
}

async fn route(
    daemon: &Arc<Daemon>,
    caller: &Caller,
    req: Request<Incoming>,
) -> Result<Reply, ApiError> {
    let seg = http::segments(&req);
    let seg: Vec<&str> = seg.iter().map(String::as_str).collect();
    let q = http::query(&req);
    let method = req.method().clone();
    match (method, seg.as_slice()) {
        (Method::GET, ["v1", "health"]) => Ok(health(daemon)),
        (Method::GET, ["metrics"]) => {
            let (running, queued) = daemon.counts();
            let size = daemon.with_store(|s| Ok(s.size_bytes()))?;
            Ok(http::full(
                200,
                "text/plain; version=0.0.4",
                daemon.metrics.render(running, queued, size, &daemon.config),
            ))
        }
        (Method::POST, ["v1", "jobs"]) => {
            let body: SubmitRequest = http::read_json(req, MAX_BODY).await?;
            let submitted = jobs::submit(daemon, caller, body, None).await?;
            Ok(http::json(201, &submitted))
        }
        (Method::GET, ["v1", "jobs"]) => {
            let state = match param(&q, "state") {
                Some(s) => Some(JobState::parse(s).ok_or_else(|| {
                    ApiError::field(400, "state", format!("state `{s}`: expected queued, running, exited, failed, cancelled or interrupted"))
                })?),
                None => None,
            };
            let limit = number(&q, "limit", 100)?.min(10_000) as u32;
            let rows = daemon.with_store(|s| s.jobs(state, limit))?;
            Ok(http::json(200, &json!({"jobs": rows})))
        }
        (Method::GET, ["v1", "jobs", id]) => {
            let wait = number(&q, "wait", 0)?;
            let status = if wait > 0 {
                jobs::wait(daemon, id, Duration::from_secs(wait).min(MAX_WAIT)).await?
            } else {
                jobs::status(daemon, id)?
            };
            Ok(http::json(200, &status))
        }
        (Method::GET, ["v1", "jobs", id, "output"]) => {
            jobs::status(daemon, id)?;
            let (tx, rx) = tokio::sync::mpsc::channel(16);
            let follow = flag(&q, "follow");
            let (d, id) = (daemon.clone(), id.to_string());
            if !jobs::has_output(daemon, &id) {
                return Err(ApiError::new(
                    410,
                    format!("the output of job {id} is no longer kept"),
                ));
            }
            tokio::spawn(jobs::stream_output(d, id, follow, tx));
            Ok(http::stream("application/x-ndjson", rx))
        }
        (Method::POST, ["v1", "jobs", id, "stdin"]) => {
            let id = id.to_string();
            let close = param(&q, "close") != Some("false");
            let mut body = req.into_body();
            let mut bytes = 0u64;
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| ApiError::new(400, format!("reading stdin: {e}")))?;
                if let Ok(data) = frame.into_data() {
                    bytes += data.len() as u64;
                    jobs::write_stdin(daemon, &id, Some(data)).await?;
                }
            }
            if close {
                jobs::write_stdin(daemon, &id, None).await?;
            }
            Ok(http::json(
                200,
                &json!({"id": id, "bytes": bytes, "closed": close}),
            ))
        }
        (Method::POST, ["v1", "jobs", id, "kill"]) => {
            let body: KillRequest = if has_body(&req) {
                http::read_json(req, MAX_BODY).await?
            } else {
                KillRequest::default()
            };
            let signal = http::parse_signal(body.signal.as_deref().unwrap_or("KILL"))?;
            let state = jobs::kill(daemon, id, signal, "kill requested").await?;
            Ok(http::json(
                202,
                &json!({"id": id, "signal": signal, "state": state}),
            ))
        }
        (Method::GET, ["v1", "audit"]) => {
            let rows = match param(&q, "after") {
                Some(_) => {
                    let (after, limit) = (number(&q, "after", 0)?, number(&q, "limit", 100)?);
                    daemon.with_store(|s| s.rows_after(after, limit.min(10_000)))?
                }
                None => {
                    let tail = number(&q, "tail", 20)?.min(10_000);
                    daemon.with_store(|s| s.tail(tail))?
                }
            };
            let rows: Vec<serde_json::Value> = rows.iter().map(row_json).collect();
            Ok(http::json(200, &json!({"rows": rows})))
        }
        (Method::GET, ["v1", "audit", "verify"]) => {
            // Signed and verified on the writer's connection, so the rows written since
            // the last checkpoint are covered and nothing lands in between.
            let (tx, rx) = tokio::sync::oneshot::channel();
            daemon
                .audit
                .run(Box::new(move |store| {
                    let result = store.checkpoint().and_then(|_| store.verify());
                    let _ = tx.send(result.map_err(|e| e.to_string()));
                }))
                .map_err(|e| ApiError::new(503, e.to_string()))?;
            let report = rx
                .await
                .map_err(|_| ApiError::new(503, "the audit writer has stopped"))?
                .map_err(|e| ApiError::new(500, e))?;
            match report {
                Ok(r) => Ok(http::json(200, &json!({"ok": true, "report": r}))),
                Err(fault) => Ok(http::json(
                    409,
                    &json!({"ok": false, "error": fault.to_string(), "fault": fault}),
                )),
            }
        }
        (Method::POST, ["v1", "mem"]) => {
            let put: MemPut = http::read_json(req, MAX_BODY).await?;
            let id = mem_put(daemon, &put)?;
            Ok(http::json(201, &json!({"id": id})))
        }
        (Method::GET, ["v1", "mem"]) => Ok(http::json(200, &mem_query(daemon, &q, None)?)),
        (Method::GET, ["v1", "mem", id]) => Ok(http::json(200, &mem_get(daemon, id, &|_| true)?)),
        (Method::DELETE, ["v1", "mem", id]) => {
            let removed = daemon.with_store(|s| s.mem_remove(id))?;
            if !removed {
                return Err(ApiError::new(404, format!("no memory item {id}")));
            }
            Ok(http::json(200, &json!({"id": id, "removed": true})))
        }
        (
            _,
            ["v1", "health"]
            | ["metrics"]
            | ["v1", "jobs", ..]
            | ["v1", "audit", ..]
            | ["v1", "mem", ..],
        ) => Err(ApiError::new(405, "method not allowed on this path")),
        _ => Err(ApiError::new(
            404,
            format!("no such endpoint: {}", req_path(&seg)),
        )),
    }
}

/// An audit row as JSON: the body parsed, the hashes in hex.
fn row_json(r: &crate::store::chain::AuditRow) -> serde_json::Value {
    json!({
        "seq": r.seq, "time_ms": r.time_ms, "kind": r.kind,
        "body": serde_json::from_str::<serde_json::Value>(&r.body).unwrap_or(json!(r.body)),
        "prev_hash": covenant_policy::plan::hex(&r.prev_hash),
        "hash": covenant_policy::plan::hex(&r.hash),
    })
}

fn req_path(seg: &[&str]) -> String {
    format!("/{}", seg.join("/"))
}

fn has_body(req: &Request<Incoming>) -> bool {
    use hyper::body::Body;
    req.body().size_hint().upper() != Some(0)
}

fn health(daemon: &Daemon) -> Reply {
    let (running, queued) = daemon.counts();
    http::json(
        200,
        &json!({
            "status": if daemon.shutting_down.load(std::sync::atomic::Ordering::SeqCst) { "stopping" } else { "ok" },
            "version": env!("CARGO_PKG_VERSION"),
            "api": "v1",
            "pid": std::process::id(),
            "jobs": {"running": running, "queued": queued},
            "limits": {"max_jobs": daemon.config.max_jobs, "max_queue": daemon.config.max_queue, "per_subject": daemon.config.per_subject},
        }),
    )
}

/// Stores a memory item; the tier defaults to `working`.
pub fn mem_put(daemon: &Daemon, put: &MemPut) -> Result<String, ApiError> {
    let tier = Tier::parse(put.tier.as_deref().unwrap_or("working"))
        .map_err(|e| ApiError::field(400, "tier", e.to_string()))?;
    let metadata = put.metadata.as_ref().map(|m| m.to_string());
    let mut store = daemon.store.lock().unwrap_or_else(|e| e.into_inner());
    store
        .mem_put(
            &put.namespace,
            tier,
            &put.text,
            metadata.as_deref(),
            put.parent.as_deref(),
        )
        .map_err(|e| ApiError::new(400, e.to_string()))
}

/// One memory item, if `readable` allows its namespace (`404` otherwise, as for a
/// missing one: an agent learns nothing of namespaces it may not read).
pub fn mem_get(
    daemon: &Daemon,
    id: &str,
    readable: &dyn Fn(&str) -> bool,
) -> Result<crate::store::memory::MemoryItem, ApiError> {
    daemon
        .with_store(|s| s.mem_get(id))?
        .filter(|item| readable(&item.namespace))
        .ok_or_else(|| ApiError::new(404, format!("no memory item {id}")))
}

/// `?namespace=NS&q=TEXT&tier=T&limit=N`: a search when `q` is given, else a listing.
/// `only` restricts the namespaces an agent may read.
pub fn mem_query(
    daemon: &Daemon,
    q: &[(String, String)],
    only: Option<&dyn Fn(&str) -> bool>,
) -> Result<serde_json::Value, ApiError> {
    let namespace = param(q, "namespace");
    if let Some(allowed) = only {
        match namespace {
            Some(ns) if allowed(ns) => {}
            Some(ns) => {
                return Err(ApiError::field(
                    403,
                    "namespace",
                    format!("no mem.read scope for namespace `{ns}`"),
                ))
            }
            None => return Err(ApiError::field(400, "namespace", "namespace is required")),
        }
    }
    let limit = number(q, "limit", 20)?.min(1000) as u32;
    let store = daemon.store.lock().unwrap_or_else(|e| e.into_inner());
    let items = match param(q, "q") {
        Some(text) => {
            let ns = namespace
                .ok_or_else(|| ApiError::field(400, "namespace", "a search needs a namespace"))?;
            store.mem_search(ns, text, limit)
        }
        None => {
            let tier = param(q, "tier")
                .map(Tier::parse)
                .transpose()
                .map_err(|e| ApiError::field(400, "tier", e.to_string()))?;
            store.mem_list(namespace, tier)
        }
    }
    .map_err(|e| ApiError::new(400, e.to_string()))?;
    Ok(json!({"items": items}))
}
