//! The agent-facing socket (`docs/agent-api.md`). A job whose grant holds a `mem.*` or
//! `agent:*` scope gets its own socket, mounted read-only at `/run/covenant/agent.sock`
//! with a per-job credential at `/run/covenant/token`. Through it the agent reads and
//! writes its memory, appends agent-authored audit events, and submits sub-intents,
//! each only as far as its own grant allows.
//!
//! The agent is as hostile as anything in its sandbox, and every request it makes costs
//! the daemon: its connections are bounded (`--agent-connections`), its requests are
//! counted and audited as summary rows, not one row each, and once it has been refused
//! `--agent-refusals` times its socket is closed for the rest of the job.

use super::admission;
use super::api::{AgentEvent, ApiError, Caller, MemPut, StdinMode, SubmitRequest, MAX_BODY};
use super::connections::Peer;
use super::control;
use super::http::{self, Reply};
use super::lineage;
use super::memory;
use super::state::Daemon;
use crate::store::AuditEvent;
use covenant_policy::Scope;
use hyper::body::Incoming;
use hyper::{Method, Request};
use serde_json::json;
use std::sync::Arc;

/// Starts the task that serves job `job`'s agent socket until it is aborted (its
/// [`AgentSocket`] is dropped); each connection must present `token`.
///
/// [`AgentSocket`]: super::agent_socket::AgentSocket
pub(super) fn serve(
    daemon: Arc<Daemon>,
    job: String,
    listener: tokio::net::UnixListener,
    token: String,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(accept(daemon, job, listener, token))
}

async fn accept(
    daemon: Arc<Daemon>,
    job: String,
    listener: tokio::net::UnixListener,
    token: String,
) {
    let timeout = daemon.config.request_timeout;
    // The connections are this task's: when the socket is dropped (the job ended,
    // or the agent spent its refusals) they all close with it.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => {
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let peer = Peer::Agent(job.clone());
                let slot = match daemon.connections.admit(peer, false) {
                    Ok(slot) => slot,
                    Err(why) => {
                        drop(stream);
                        daemon.metrics.connection_refused("agent");
                        refused(&daemon, &job, "connections", &why.to_string());
                        continue;
                    }
                };
                let (d, j, t) = (daemon.clone(), job.clone(), token.clone());
                connections.spawn(async move {
                    let _slot = slot;
                    http::serve(stream, timeout, move |req| {
                        Box::pin(handle(d.clone(), j.clone(), t.clone(), req))
                    })
                    .await
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn handle(daemon: Arc<Daemon>, job: String, token: String, req: Request<Incoming>) -> Reply {
    let authentic = http::bearer_ok(&req, &token);
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let result = if authentic {
        route(&daemon, &job, req).await
    } else {
        Err(ApiError::new(
            401,
            "the job's credential (/run/covenant/token) is required as a bearer token",
        ))
    };
    let status = match &result {
        Ok(r) => r.status().as_u16(),
        Err(e) => e.status,
    };
    if status < 400 {
        lineage::agent_tally(&daemon, &job, Ok(()));
    } else {
        refused(
            &daemon,
            &job,
            refusal_reason(status),
            &format!("{method} {path}: {status}"),
        );
    }
    result.unwrap_or_else(|e| http::error(&e))
}

/// Counts a refusal of job `job`'s agent; the one that spends `--agent-refusals` closes
/// its socket.
fn refused(daemon: &Daemon, job: &str, reason: &'static str, last: &str) {
    if lineage::agent_tally(daemon, job, Err(reason)) {
        lineage::close_agent_socket(
            daemon,
            job,
            &format!(
                "the agent was refused {} times (--agent-refusals); the last: {last}",
                daemon.config.agent_refusals
            ),
        );
    }
}

/// The summary rows' name for a refusal.
fn refusal_reason(status: u16) -> &'static str {
    match status {
        400 => "invalid",
        401 => "unauthenticated",
        403 => "forbidden",
        404 => "not-found",
        405 => "method",
        408 => "timeout",
        409 => "conflict",
        410 => "gone",
        413 => "too-large",
        415 => "media-type",
        429 => "budget",
        s if s < 500 => "refused",
        _ => "error",
    }
}

fn grant_of(daemon: &Daemon, job: &str) -> Result<Vec<Scope>, ApiError> {
    lineage::lineage(daemon, job)
        .map(|(_, scopes)| scopes)
        .ok_or_else(|| ApiError::new(410, format!("job {job} has ended")))
}

fn may_memory(scopes: &[Scope], namespace: &str, write: bool) -> bool {
    scopes.iter().any(|s| {
        s.covers(&Scope::Mem {
            write,
            namespace: namespace.to_string(),
        })
    })
}

fn require(scopes: &[Scope], right: &str) -> Result<(), ApiError> {
    if scopes.contains(&Scope::Agent(right.to_string())) {
        Ok(())
    } else {
        Err(ApiError::new(
            403,
            format!("the job's capability does not grant agent:{right}"),
        ))
    }
}

async fn route(daemon: &Arc<Daemon>, job: &str, req: Request<Incoming>) -> Result<Reply, ApiError> {
    let seg = http::segments(&req);
    let seg: Vec<&str> = seg.iter().map(String::as_str).collect();
    let q = http::query(&req);
    let scopes = grant_of(daemon, job)?;
    match (req.method().clone(), seg.as_slice()) {
        (Method::GET, ["v1", "self"]) => Ok(http::json(
            200,
            &json!({"job": job, "scopes": scopes.iter().map(|s| s.to_string()).collect::<Vec<_>>()}),
        )),
        (Method::POST, ["v1", "mem"]) => {
            let put: MemPut = http::read_json(req, MAX_BODY, daemon.config.request_timeout).await?;
            // What the item stores: its text and metadata (the index grows with them).
            let bytes = put.text.len() + put.metadata.as_ref().map_or(0, |m| m.to_string().len());
            lineage::agent_write(daemon, job, bytes as u64)?;
            if !may_memory(&scopes, &put.namespace, true) {
                return Err(ApiError::field(
                    403,
                    "namespace",
                    format!("no mem.write scope for namespace `{}`", put.namespace),
                ));
            }
            let id = memory::mem_put(daemon, &put)?;
            Ok(http::json(201, &json!({"id": id})))
        }
        (Method::GET, ["v1", "mem"]) => {
            let allowed = |ns: &str| may_memory(&scopes, ns, false);
            Ok(http::json(
                200,
                &memory::mem_query(daemon, &q, Some(&allowed))?,
            ))
        }
        (Method::GET, ["v1", "mem", id]) => {
            let readable = |ns: &str| may_memory(&scopes, ns, false);
            let item = memory::mem_get(daemon, id, &readable)?;
            Ok(http::json(200, &item))
        }
        (Method::POST, ["v1", "audit"]) => {
            require(&scopes, "audit")?;
            let e: AgentEvent =
                http::read_json(req, 64 * 1024, daemon.config.request_timeout).await?;
            lineage::agent_write(
                daemon,
                job,
                (e.kind.len() + e.body.to_string().len()) as u64,
            )?;
            let valid = !e.kind.is_empty()
                && e.kind.len() <= 64
                && e.kind
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
            if !valid {
                return Err(ApiError::field(
                    400,
                    "kind",
                    "kind: 1-64 of letters, digits, `-_.`",
                ));
            }
            let seqs = daemon
                .commit(
                    vec![AuditEvent::by_agent(
                        &e.kind,
                        json!({"job": job, "authored_by": "agent", "body": e.body}),
                    )],
                    Vec::new(),
                    false,
                )
                .await?;
            Ok(http::json(201, &json!({"seq": seqs.first()})))
        }
        (Method::POST, ["v1", "jobs"]) => {
            require(&scopes, "spawn")?;
            let mut sub: SubmitRequest =
                http::read_json(req, MAX_BODY, daemon.config.request_timeout).await?;
            lineage::agent_write(daemon, job, 0)?;
            if sub.runner.as_deref().is_some_and(|r| r != "native") {
                return Err(ApiError::field(
                    400,
                    "runner",
                    "a sub-intent runs on the native runner",
                ));
            }
            // The child's authority is the parent's own capability, narrowed by its request.
            let (lineage, _) = lineage::lineage(daemon, job)
                .ok_or_else(|| ApiError::new(410, "the job has ended"))?;
            if !sub.capability.is_empty() {
                return Err(ApiError::field(400, "capability", "a sub-intent carries no capability: it runs under its parent's, narrowed to what it asks"));
            }
            sub.capability = lineage.capability.print();
            // Nobody could write to a sub-intent's stdin pipe: it reads an empty one.
            sub.stdin = StdinMode::Null;
            let submitted = admission::submit(
                daemon,
                &Caller::Agent {
                    job: job.to_string(),
                },
                sub,
                Some(job),
            )
            .await?;
            Ok(http::json(201, &submitted))
        }
        (Method::GET, ["v1", "jobs", child]) => {
            if !lineage::is_child(daemon, job, child) {
                return Err(ApiError::new(
                    404,
                    format!("no sub-intent {child} of this job"),
                ));
            }
            let wait = http::number(&q, "wait", 0)?;
            let status = if wait > 0 {
                control::wait(
                    daemon,
                    child,
                    std::time::Duration::from_secs(wait.min(3600)),
                )
                .await?
            } else {
                control::status(daemon, child)?
            };
            Ok(http::json(200, &status))
        }
        (Method::GET, ["v1", "jobs", child, "output"]) => {
            if !lineage::is_child(daemon, job, child) {
                return Err(ApiError::new(
                    404,
                    format!("no sub-intent {child} of this job"),
                ));
            }
            let (tx, rx) = tokio::sync::mpsc::channel(16);
            tokio::spawn(control::stream_output(
                daemon.clone(),
                child.to_string(),
                http::flag(&q, "follow"),
                tx,
            ));
            Ok(http::stream("application/x-ndjson", rx))
        }
        _ => Err(ApiError::new(404, "no such endpoint on the agent socket")),
    }
}
