//! The operator API (`docs/api.md`): every route of the daemon's main socket.
//!
//! A caller reaches only what is its own: the jobs its uid submitted, and memory through
//! a capability's `mem.*` scopes. Root and the admin group reach everything. Nothing a
//! caller may not reach is named in an answer (another caller's job is a 404).

use super::api::{KillRequest, MemPut, SubmitRequest, MAX_BODY};
use super::http::{self, flag, number, param, Reply};
use super::jobs::{self, ApiError, Caller, Daemon};
use super::request_audit;
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

/// Most items of one memory page or search, and the default of a listing.
pub const MEM_MAX_LIMIT: u64 = 1000;
const MEM_LIST_DEFAULT: u64 = 100;
const MEM_SEARCH_DEFAULT: u64 = 20;

/// Most bytes of item text and metadata one memory answer carries; the page ends early
/// (with a cursor) past it.
pub const MEM_PAGE_BYTES: usize = 4 * 1024 * 1024;

/// Most rows, and bytes of row bodies, one audit answer carries; past the bytes it ends
/// early and says so.
const AUDIT_MAX_ROWS: u64 = 10_000;
const AUDIT_PAGE_BYTES: usize = 8 * 1024 * 1024;

/// The header that carries a capability on the operator socket's memory endpoints.
pub const CAPABILITY_HEADER: &str = "covenant-capability";

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
            "api.request",
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
                jobs::wait(daemon, id, Duration::from_secs(wait).min(MAX_WAIT)).await?
            } else {
                jobs::status(daemon, id)?
            };
            Ok(http::json(200, &status))
        }
        (Method::GET, ["v1", "jobs", id, "output"]) => {
            owned(daemon, caller, id)?;
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
            owned(daemon, caller, id)?;
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
            owned(daemon, caller, id)?;
            let body: KillRequest = if has_body(&req) {
                http::read_json(req, MAX_BODY, timeout).await?
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
            let id = mem_put(daemon, &put)?;
            Ok(http::json(201, &json!({"id": id})))
        }
        (Method::GET, ["v1", "mem"]) => {
            let access = mem_access(caller, &req)?;
            let readable = |ns: &str| access.may(ns, false);
            let only: Option<&dyn Fn(&str) -> bool> = match access {
                MemAccess::All => None,
                MemAccess::Granted(_) => Some(&readable),
            };
            Ok(http::json(200, &mem_query(daemon, &q, only)?))
        }
        (Method::GET, ["v1", "mem", id]) => {
            let access = mem_access(caller, &req)?;
            let readable = |ns: &str| access.may(ns, false);
            Ok(http::json(200, &mem_get(daemon, id, &readable)?))
        }
        (Method::DELETE, ["v1", "mem", id]) => {
            let access = mem_access(caller, &req)?;
            // Found only when its namespace is readable: others learn nothing of it.
            let item = mem_get(daemon, id, &|ns| access.may(ns, false))?;
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
fn owned(daemon: &Daemon, caller: &Caller, id: &str) -> Result<super::api::JobStatus, ApiError> {
    match jobs::status(daemon, id) {
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

/// What a caller may do with memory on the operator socket.
enum MemAccess {
    /// Root and the admin group: every namespace.
    All,
    /// The scopes of the verified capability the request presented.
    Granted(Vec<covenant_policy::Scope>),
}

impl MemAccess {
    fn may(&self, namespace: &str, write: bool) -> bool {
        match self {
            MemAccess::All => true,
            MemAccess::Granted(scopes) => scopes.iter().any(|s| {
                s.covers(&covenant_policy::Scope::Mem {
                    write,
                    namespace: namespace.to_string(),
                })
            }),
        }
    }

    fn refusal(&self, namespace: &str, write: bool) -> ApiError {
        let scope = if write { "mem.write" } else { "mem.read" };
        ApiError::field(
            403,
            "namespace",
            format!("the capability does not grant {scope}:{namespace}"),
        )
    }
}

/// Memory on the operator socket is reached through `mem.*` scopes: a non-admin caller
/// presents a capability (`covenant-capability` header), verified as a submission's is.
fn mem_access(caller: &Caller, req: &Request<Incoming>) -> Result<MemAccess, ApiError> {
    if caller.is_admin() {
        return Ok(MemAccess::All);
    }
    let Some(text) = req
        .headers()
        .get(CAPABILITY_HEADER)
        .and_then(|v| v.to_str().ok())
    else {
        return Err(ApiError::field(
            403,
            "capability",
            format!("memory needs a capability granting mem.read:NAMESPACE or mem.write:NAMESPACE, presented in the {CAPABILITY_HEADER} header (or root or the admin group)"),
        ));
    };
    let capability = covenant_policy::Capability::parse(text.trim())
        .map_err(|e| ApiError::field(400, "capability", format!("capability: {e}")))?;
    let grant = crate::authority::verify_for_daemon(&capability)
        .map_err(|e| ApiError::field(403, "capability", e.to_string()))?;
    if let covenant_policy::Subject::Key(_) = grant.subject {
        return Err(ApiError::field(
            403,
            "capability",
            format!("the capability is granted to {}, not to a named subject: its holder must attenuate it first", grant.subject),
        ));
    }
    Ok(MemAccess::Granted(grant.scopes))
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

/// `?namespace=NS&q=TEXT&tier=T&limit=N&after=CURSOR`: a search when `q` is given, else
/// a listing. `only` restricts the namespaces the caller may read. A listing page ends
/// after `limit` items (at most [`MEM_MAX_LIMIT`]) or [`MEM_PAGE_BYTES`] of text, and
/// then carries `next`, the cursor of the following page; a search that had more hits
/// than it returns says `truncated`.
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
    let store = daemon.store.lock().unwrap_or_else(|e| e.into_inner());
    match param(q, "q") {
        Some(text) => {
            let limit = number(q, "limit", MEM_SEARCH_DEFAULT)?.clamp(1, MEM_MAX_LIMIT) as usize;
            let ns = namespace
                .ok_or_else(|| ApiError::field(400, "namespace", "a search needs a namespace"))?;
            let mut items = store
                .mem_search(ns, text, limit as u32 + 1)
                .map_err(|e| ApiError::new(400, e.to_string()))?;
            let fit = items_within(&items, limit);
            let truncated = fit < items.len();
            items.truncate(fit);
            Ok(json!({"items": items, "truncated": truncated}))
        }
        None => {
            let limit = number(q, "limit", MEM_LIST_DEFAULT)?.clamp(1, MEM_MAX_LIMIT) as usize;
            let tier = param(q, "tier")
                .map(Tier::parse)
                .transpose()
                .map_err(|e| ApiError::field(400, "tier", e.to_string()))?;
            let after = param(q, "after").map(decode_cursor).transpose()?;
            let mut items = store
                .mem_page(
                    namespace,
                    tier,
                    after.as_ref().map(|(n, m, i)| (n.as_str(), *m, i.as_str())),
                    limit as u32 + 1,
                )
                .map_err(|e| ApiError::new(400, e.to_string()))?;
            let fit = items_within(&items, limit);
            let next = (fit < items.len()).then(|| encode_cursor(&items[fit - 1]));
            items.truncate(fit);
            Ok(json!({"items": items, "next": next}))
        }
    }
}

/// How many of `items` one answer carries: at most `limit`, and no more than
/// [`MEM_PAGE_BYTES`] of text and metadata (but at least one).
fn items_within(items: &[crate::store::memory::MemoryItem], limit: usize) -> usize {
    let mut used = 0;
    for (n, item) in items.iter().enumerate().take(limit) {
        used += item.text.len() + item.metadata.to_string().len();
        if used > MEM_PAGE_BYTES && n > 0 {
            return n;
        }
    }
    items.len().min(limit)
}

/// A listing position as an opaque cursor: base64url of `[namespace, updated_ms, id]`.
fn encode_cursor(item: &crate::store::memory::MemoryItem) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    URL_SAFE_NO_PAD.encode(json!([item.namespace, item.updated_ms, item.id]).to_string())
}

fn decode_cursor(text: &str) -> Result<(String, i64, String), ApiError> {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    URL_SAFE_NO_PAD
        .decode(text)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| {
            ApiError::field(
                400,
                "after",
                "`after`: not a cursor this daemon gave (use the `next` of the previous page)",
            )
        })
}
