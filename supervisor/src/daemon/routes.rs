//! The operator API (`docs/api.md`): every route of the daemon's main socket.
//!
//! A caller reaches only what is its own: the jobs its uid submitted, and memory through
//! a capability's `mem.*` scopes. Root and the admin group reach everything. Nothing a
//! caller may not reach is named in an answer (another caller's job is a 404).

use super::api::{ApiError, Caller, JobStatus};
use super::api::{KillRequest, MemPut, SubmitRequest, MAX_BODY};
use super::http::{self, flag, number, param, Reply};
use super::memory::{self, mem_access, MemAccess};
use super::request_audit;
use super::state::Daemon;
use super::{admission, control};
use crate::store::jobs::JobState;
use crate::store::AuditEvent;
use crate::store::Kind;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Method, Request};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// Longest `?wait=` a status request may block.
const MAX_WAIT: Duration = Duration::from_secs(3600);

/// Most rows, and bytes of row bodies, one audit answer carries; past the bytes it ends
/// early and says so.
const AUDIT_MAX_ROWS: u64 = 10_000;
const AUDIT_PAGE_BYTES: usize = 8 * 1024 * 1024;

pub async fn handle(daemon: Arc<Daemon>, caller: Caller, req: Request<Incoming>) -> Reply {
    if let Caller::Tcp { .. } = caller {
        if !daemon
            .config
            .tcp_token
            .as_deref()
            .is_some_and(|t| http::bearer_ok(&req, t))
        {
            daemon.requests.count(&caller, req.method(), 401);
            let mut r = http::error(&ApiError::new(401, "a bearer token is required on TCP"));
            r.headers_mut()
                .insert("www-authenticate", "Bearer".parse().expect("ascii"));
            return r;
        }
    }
    let method = req.method().clone();
    // As routed (empty segments dropped) and bounded: the raw path is the caller's to
    // pad with up to the URI limit.
    let path = format!(
        "/{}",
        request_audit::cut(&http::segments(&req).join("/"), request_audit::PATH_BYTES)
    );
    let result = route(&daemon, &caller, req).await;
    let status = match &result {
        Ok(r) => r.status().as_u16(),
        Err(e) => e.status,
    };
    // A request that changed something is audited with its caller; the rest (reads,
    // stdin, refusals) are counted for the caller's summary row, except the liveness and
    // metrics probes.
    if request_audit::audited_alone(&method, &path, status)
        && daemon.requests.change_row_allowed(&caller)
    {
        daemon.record(vec![AuditEvent::new(
            Kind::ApiRequest,
            json!({"caller": caller.audit(), "method": method.as_str(), "path": path, "status": status}),
        )]);
    } else if !(path == "/v1/health" || path == "/metrics") {
        daemon.requests.count(&caller, &method, status);
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
    let timeout = daemon.config.request_timeout;
    match (method, seg.as_slice()) {
        (Method::GET, ["v1", "health"]) => Ok(health(daemon)),
        (Method::GET, ["metrics"]) => {
            let (running, queued) = daemon.counts();
            let size = daemon.with_store(|s| Ok(s.size_bytes()))?;
            Ok(http::full(
                200,
                "text/plain; version=0.0.4",
                daemon.metrics.render(
                    running,
                    queued,
                    size,
                    daemon.connections.open(),
                    &daemon.config,
                ),
            ))
        }
        (Method::POST, ["v1", "jobs"]) => {
            let body: SubmitRequest = http::read_json(req, MAX_BODY, timeout).await?;
            let submitted = admission::submit(daemon, caller, body, None).await?;
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
            let rows = match caller {
                c if c.is_admin() => daemon.with_store(|s| s.jobs(state, limit))?,
                Caller::Unix { uid, .. } => {
                    daemon.with_store(|s| s.jobs_of(state, Some(*uid), limit))?
                }
                _ => daemon.with_store(|s| s.jobs_of(state, None, limit))?,
            };
            Ok(http::json(200, &json!({"jobs": rows})))
        }
        (Method::GET, ["v1", "jobs", id]) => {
            let wait = number(&q, "wait", 0)?;
            owned(daemon, caller, id)?;
            let status = if wait > 0 {
                control::wait(daemon, id, Duration::from_secs(wait).min(MAX_WAIT)).await?
            } else {
                control::status(daemon, id)?
            };
            Ok(http::json(200, &status))
        }
        (Method::GET, ["v1", "jobs", id, "output"]) => {
            owned(daemon, caller, id)?;
            let (tx, rx) = tokio::sync::mpsc::channel(16);
            let follow = flag(&q, "follow");
            let (d, id) = (daemon.clone(), id.to_string());
            if !control::has_output(daemon, &id) {
                return Err(ApiError::new(
                    410,
                    format!("the output of job {id} is no longer kept"),
                ));
            }
            tokio::spawn(control::stream_output(d, id, follow, tx));
            Ok(http::stream("application/x-ndjson", rx))
        }
        (Method::POST, ["v1", "jobs", id, "stdin"]) => {
            owned(daemon, caller, id)?;
            let id = id.to_string();
            let close = param(&q, "close") != Some("false");
            let mut body = req.into_body();
            let mut bytes = 0u64;
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| ApiError::new(400, format!("reading stdin: {e}")))?;
                if let Ok(data) = frame.into_data() {
                    bytes += data.len() as u64;
                    control::write_stdin(daemon, &id, Some(data)).await?;
                }
            }
            if close {
                control::write_stdin(daemon, &id, None).await?;
            }
            Ok(http::json(
                200,
                &json!({"id": id, "bytes": bytes, "closed": close}),
            ))
        }
        (Method::POST, ["v1", "jobs", id, "kill"]) => {
            owned(daemon, caller, id)?;
            let body: KillRequest = if has_body(&req) {
                http::read_json(req, MAX_BODY, timeout).await?
            } else {
                KillRequest::default()
            };
            let signal = http::parse_signal(body.signal.as_deref().unwrap_or("KILL"))?;
            let state = control::kill(daemon, id, signal, "kill requested").await?;
            Ok(http::json(
                202,
                &json!({"id": id, "signal": signal, "state": state}),
            ))
        }
        (Method::GET, ["v1", "audit"]) => {
            admin_only(caller, "the audit log")?;
            let (rows, truncated) = match param(&q, "after") {
                Some(_) => {
                    let (after, limit) = (number(&q, "after", 0)?, number(&q, "limit", 100)?);
                    let rows =
                        daemon.with_store(|s| s.rows_after(after, limit.min(AUDIT_MAX_ROWS)))?;
                    let n = rows_within(rows.iter(), AUDIT_PAGE_BYTES);
                    let truncated = n < rows.len();
                    (rows[..n].to_vec(), truncated)
                }
                None => {
                    let tail = number(&q, "tail", 20)?.min(AUDIT_MAX_ROWS);
                    let rows = daemon.with_store(|s| s.tail(tail))?;
                    // The newest rows that fit.
                    let n = rows_within(rows.iter().rev(), AUDIT_PAGE_BYTES);
                    let truncated = n < rows.len();
                    (rows[rows.len() - n..].to_vec(), truncated)
                }
            };
            let rows: Vec<serde_json::Value> = rows.iter().map(row_json).collect();
            Ok(http::json(
                200,
                &json!({"rows": rows, "truncated": truncated}),
            ))
        }
        (Method::GET, ["v1", "audit", "verify"]) => {
            // Verifying signs a checkpoint first: a write, for admins only.
            admin_only(caller, "audit verification")?;
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
            let access = mem_access(caller, &req)?;
            let put: MemPut = http::read_json(req, MAX_BODY, timeout).await?;
            if !access.may(&put.namespace, true) {
                return Err(access.refusal(&put.namespace, true));
            }
            let id = memory::mem_put(daemon, &put)?;
            Ok(http::json(201, &json!({"id": id})))
        }
        (Method::GET, ["v1", "mem"]) => {
            let access = mem_access(caller, &req)?;
            let readable = |ns: &str| access.may(ns, false);
            let only: Option<&dyn Fn(&str) -> bool> = match access {
                MemAccess::All => None,
                MemAccess::Granted(_) => Some(&readable),
            };
            Ok(http::json(200, &memory::mem_query(daemon, &q, only)?))
        }
        (Method::GET, ["v1", "mem", id]) => {
            let access = mem_access(caller, &req)?;
            let readable = |ns: &str| access.may(ns, false);
            Ok(http::json(200, &memory::mem_get(daemon, id, &readable)?))
        }
        (Method::DELETE, ["v1", "mem", id]) => {
            let access = mem_access(caller, &req)?;
            // Found only when its namespace is readable: others learn nothing of it.
            let item = memory::mem_get(daemon, id, &|ns| access.may(ns, false))?;
            if !access.may(&item.namespace, true) {
                return Err(access.refusal(&item.namespace, true));
            }
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

/// Job `id`'s status, when `caller` may see it; otherwise the same 404 as for a job that
/// does not exist.
fn owned(daemon: &Daemon, caller: &Caller, id: &str) -> Result<JobStatus, ApiError> {
    match control::status(daemon, id) {
        Ok(s) if caller.owns(&s.row) => Ok(s),
        Ok(_) => Err(ApiError::new(404, format!("no job {id}"))),
        Err(e) => Err(e),
    }
}

fn admin_only(caller: &Caller, what: &str) -> Result<(), ApiError> {
    if caller.is_admin() {
        Ok(())
    } else {
        Err(ApiError::new(
            403,
            format!("{what} is open to root and the admin group (covenantd --admin-group) only"),
        ))
    }
}

/// How many of `rows` (in the order given) fit in `budget` bytes of bodies; at least one.
fn rows_within<'a>(
    rows: impl Iterator<Item = &'a crate::store::chain::AuditRow>,
    budget: usize,
) -> usize {
    let mut used = 0;
    let mut n = 0;
    for r in rows {
        used += r.body.len() + r.kind.len() + 160;
        if used > budget && n > 0 {
            break;
        }
        n += 1;
    }
    n
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
