//! Memory on both sockets: storing, reading, listing and searching items, each held to
//! the namespaces the caller's capability (or admin standing) reaches, and every answer
//! bounded in items and bytes.

use super::api::{ApiError, Caller, MemPut, CAPABILITY_HEADER};
use super::http::{number, param};
use super::state::Daemon;
use crate::store::memory::{MemoryItem, Tier};
use crate::store::StoreError;
use hyper::body::Incoming;
use hyper::Request;
use serde_json::json;

/// Most items of one memory page or search, and the default of a listing.
pub const MEM_MAX_LIMIT: u64 = 1000;
const MEM_LIST_DEFAULT: u64 = 100;
const MEM_SEARCH_DEFAULT: u64 = 20;

/// Most bytes of item text and metadata one memory answer carries; the page ends early
/// (with a cursor) past it.
pub const MEM_PAGE_BYTES: usize = 4 * 1024 * 1024;

/// What a caller may do with memory on the operator socket.
pub(super) enum MemAccess {
    /// Root and the admin group: every namespace.
    All,
    /// The scopes of the verified capability the request presented.
    Granted(Vec<covenant_policy::Scope>),
}

impl MemAccess {
    pub(super) fn may(&self, namespace: &str, write: bool) -> bool {
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

    pub(super) fn refusal(&self, namespace: &str, write: bool) -> ApiError {
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
pub(super) fn mem_access(caller: &Caller, req: &Request<Incoming>) -> Result<MemAccess, ApiError> {
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

/// Stores a memory item; the tier defaults to `working`.
pub fn mem_put(daemon: &Daemon, put: &MemPut) -> Result<String, ApiError> {
    let tier = Tier::parse(put.tier.as_deref().unwrap_or("working")).map_err(refused)?;
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
        .map_err(refused)
}

/// A store error as an answer: bad input is a 400 naming its field, anything else (the
/// database, the writer) a 500.
fn refused(e: StoreError) -> ApiError {
    match &e {
        StoreError::Memory(m) => ApiError::field(400, m.field(), e.to_string()),
        _ => ApiError::new(500, e.to_string()),
    }
}

/// One memory item, if `readable` allows its namespace (`404` otherwise, as for a
/// missing one: an agent learns nothing of namespaces it may not read).
pub fn mem_get(
    daemon: &Daemon,
    id: &str,
    readable: &dyn Fn(&str) -> bool,
) -> Result<MemoryItem, ApiError> {
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
                .map_err(refused)?;
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
                .map_err(refused)?;
            let after = param(q, "after").map(decode_cursor).transpose()?;
            let mut items = store
                .mem_page(
                    namespace,
                    tier,
                    after.as_ref().map(|(n, m, i)| (n.as_str(), *m, i.as_str())),
                    limit as u32 + 1,
                )
                .map_err(refused)?;
            let fit = items_within(&items, limit);
            let next = (fit < items.len()).then(|| encode_cursor(&items[fit - 1]));
            items.truncate(fit);
            Ok(json!({"items": items, "next": next}))
        }
    }
}

/// How many of `items` one answer carries: at most `limit`, and no more than
/// [`MEM_PAGE_BYTES`] of text and metadata (but at least one).
fn items_within(items: &[MemoryItem], limit: usize) -> usize {
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
fn encode_cursor(item: &MemoryItem) -> String {
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
