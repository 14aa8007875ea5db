//! Admission: a submission is parsed, its capability verified and its plan compiled,
//! then held to the daemon's bounds (concurrency, the queue, the subject's quota, a
//! sub-intent's parent) and committed with its audit events, or refused and audited.
//!
//! This module and [`super::agent`] are the daemon's one two-way link: admission creates
//! a job's agent socket and starts it serving, and an agent submits its sub-intents
//! through [`submit`]. Both directions are a single function each
//! ([`super::agent::serve`] and [`submit`]).

use super::agent::{self};
use super::agent_socket::{self, AgentSocket};
use super::api::{ApiError, Caller, StdinMode, SubmitRequest, Submitted};
use super::request_audit;
use super::state::{event, release, AgentTally, Daemon, Job, Lineage, Output};
use crate::authority::{self, AuthorityError};
use crate::home::new_job_id;
use crate::store::jobs::{JobRow, JobState};
use crate::store::Kind;
use crate::store::{audit::now_ms, AuditEvent};
use covenant_policy::{Capability, Manifest, SandboxPlan};
use serde_json::json;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

/// Parses the submission's manifest, argv and runner; every error names its field.
fn request_manifest(req: &SubmitRequest) -> Result<Manifest, ApiError> {
    let base = req.base_dir.clone().unwrap_or_else(|| PathBuf::from("/"));
    if !base.is_absolute() {
        return Err(ApiError::field(
            400,
            "base_dir",
            "base_dir must be an absolute path",
        ));
    }
    let mut manifest = match (&req.manifest, &req.manifest_toml) {
        (Some(_), Some(_)) => {
            return Err(ApiError::field(
                400,
                "manifest",
                "give `manifest` or `manifest_toml`, not both",
            ))
        }
        (Some(value), None) => Manifest::from_json(value.clone(), base)
            .map_err(|e| ApiError::field(400, "manifest", format!("manifest: {e}")))?,
        (None, Some(text)) => {
            let mut m = Manifest::parse(text).map_err(|e| {
                ApiError::field(400, "manifest_toml", format!("manifest_toml: {e}"))
            })?;
            m.base_dir = base;
            m
        }
        (None, None) => Manifest::empty_in(base),
    };
    if let Some(argv) = &req.argv {
        manifest.command = argv.clone();
    }
    if manifest.command.is_empty() || manifest.command[0].is_empty() {
        return Err(ApiError::field(400, "argv", "argv: no program to run"));
    }
    // The runner is part of the request like any path: a scope the capability grants
    // (`runner:gvisor`, `runner:oci:/usr/sbin/runc`), or a refusal.
    if let Some(runner) = &req.runner {
        manifest.runner = Some(runner.clone());
    }
    Ok(manifest)
}

fn authority_status(e: &AuthorityError) -> (u16, &'static str, Kind) {
    match e {
        AuthorityError::Token(_) => (400, "capability", Kind::CapabilityRefused),
        AuthorityError::Verify(_) => (403, "capability", Kind::CapabilityRefused),
        AuthorityError::Refused(_) => (403, "capability", Kind::RequestRefused),
        AuthorityError::Compile(_) => (400, "manifest", Kind::RequestInvalid),
        AuthorityError::Path(crate::host_paths::PlanRefused::Runner(_)) => {
            (403, "runner", Kind::RequestRefused)
        }
        AuthorityError::Path(_) => (400, "manifest", Kind::RequestInvalid),
        AuthorityError::Image(_) => (400, "manifest", Kind::RequestInvalid),
        _ => (500, "capability", Kind::RunFailed),
    }
}

/// Admits an intent: parse, verify the capability against the trust store, compile the
/// plan, check admission, and commit the job with its audit events. A refusal is audited
/// (with the caller) and nothing else is stored.
pub async fn submit(
    daemon: &Arc<Daemon>,
    caller: &Caller,
    req: SubmitRequest,
    parent: Option<&str>,
) -> Result<Submitted, ApiError> {
    // Admission runs to its end in a task of its own: a client (or an agent whose socket
    // closes with its job) that goes away mid-request must not leave a job admitted but
    // never driven, holding a slot and its subject's quota.
    let (daemon, caller, parent) = (daemon.clone(), caller.clone(), parent.map(str::to_string));
    tokio::spawn(async move { submit_now(&daemon, &caller, req, parent.as_deref()).await })
        .await
        .map_err(|e| ApiError::new(500, format!("admission did not finish: {e}")))?
}

async fn submit_now(
    daemon: &Arc<Daemon>,
    caller: &Caller,
    req: SubmitRequest,
    parent: Option<&str>,
) -> Result<Submitted, ApiError> {
    let clock = covenant_runners::timing::Stopwatch::start();
    let job = new_job_id();
    match prepare(daemon, caller, &job, &req, parent) {
        Ok(prepared) => {
            let intent = event(
                Kind::RunIntent,
                &job,
                json!({"caller": caller.audit(), "argv": req.argv, "runner": req.runner, "parent": parent}),
            );
            admit(daemon, caller, intent, prepared, clock).await
        }
        Err((kind, e)) => {
            daemon.metrics.refused(refusal_reason(e.status, Some(kind)));
            // A refusal stores nothing the caller chose beyond a bounded argv, and past
            // a few rows a minute only its count (`api.requests`): refusals are free to
            // ask for, rows are not free to store.
            if daemon.requests.refusal_row_allowed(caller) {
                let intent = event(
                    Kind::RunIntent,
                    &job,
                    json!({"caller": caller.audit(), "argv": request_audit::bounded_argv(&req.argv),
                           "runner": req.runner.as_deref().map(|r| request_audit::cut(r, 512)),
                           "parent": parent}),
                );
                let refusal = event(
                    kind,
                    &job,
                    json!({"reason": request_audit::cut(&e.body.error, request_audit::REFUSED_ARGV_BYTES),
                           "field": e.body.field, "status": e.status}),
                );
                daemon
                    .commit(vec![intent, refusal], Vec::new(), false)
                    .await?;
            }
            Err(e)
        }
    }
}

fn refusal_reason(status: u16, kind: Option<Kind>) -> &'static str {
    match (status, kind) {
        (429, _) => "admission",
        (503, _) => "shutting-down",
        (_, Some(Kind::CapabilityRefused)) => "capability",
        (_, Some(Kind::RequestRefused)) => "scope",
        _ => "invalid",
    }
}

struct Prepared {
    row: JobRow,
    plan: SandboxPlan,
    lineage: Lineage,
    stdin: StdinMode,
    agent: Option<AgentSocket>,
}

type Refusal = (Kind, ApiError);

fn prepare(
    daemon: &Arc<Daemon>,
    caller: &Caller,
    job: &str,
    req: &SubmitRequest,
    parent: Option<&str>,
) -> Result<Prepared, Refusal> {
    let invalid = |e: ApiError| (Kind::RequestInvalid, e);
    let manifest = request_manifest(req).map_err(invalid)?;
    let capability = Capability::parse(&req.capability).map_err(|e| {
        (
            Kind::CapabilityRefused,
            ApiError::field(400, "capability", format!("capability: {e}")),
        )
    })?;
    let authority_error = |e: AuthorityError| {
        let (status, field, kind) = authority_status(&e);
        let field = match &e {
            AuthorityError::Compile(c) if c.field == "runner" => "runner",
            AuthorityError::Path(crate::host_paths::PlanRefused::Runner(_)) => "runner",
            _ => field,
        };
        (kind, ApiError::field(status, field, e.to_string()))
    };
    let grant = authority::verify_for_daemon(&capability).map_err(authority_error)?;
    if let covenant_policy::Subject::Key(_) = grant.subject {
        // A token granted to a key is a delegation to that key's holder, who attenuates it
        // to a named subject; presenting it as it is would act as somebody else.
        return Err((
            Kind::CapabilityRefused,
            ApiError::field(
                403,
                "capability",
                format!(
                    "the capability is granted to {}, not to a named subject: its holder must attenuate it (`covenant-ctl cap attenuate`) before it can run anything",
                    grant.subject
                ),
            ),
        ));
    }
    let mut plan = authority::authorise_granted(
        &manifest,
        job,
        &grant,
        authority::capability_authorisation(&grant),
    )
    .map_err(authority_error)?;
    if let Some(parent) = parent {
        let asked = covenant_policy::compile_request(&manifest, job)
            .map_err(|e| authority_error(e.into()))?
            .limits;
        within_parent(daemon, parent, &asked, &mut plan).map_err(|e| (Kind::RequestRefused, e))?;
    }
    let agent = if agent_socket::wanted(&grant) {
        let socket = AgentSocket::create(&daemon.config.home, job, &plan)
            .map_err(|e| (Kind::RunFailed, ApiError::new(500, e)))?;
        socket.mount_into(&mut plan);
        Some(socket)
    } else {
        None
    };
    // A sub-intent belongs to whoever owns its parent: they see and control it.
    let caller_uid = match parent {
        Some(p) => daemon
            .lock_state()
            .jobs
            .get(p)
            .and_then(|j| j.row.caller_uid),
        None => caller.uid(),
    };
    let row = JobRow {
        id: job.to_string(),
        state: JobState::Queued,
        subject: grant.subject.to_string(),
        caller_uid,
        caller_pid: caller.pid(),
        runner: plan.runner.name(),
        parent: parent.map(str::to_string),
        argv: plan.argv.clone(),
        submitted_ms: now_ms(),
        started_ms: None,
        ended_ms: None,
        shim_pid: None,
        exit_code: None,
        reason: None,
        report: None,
    };
    Ok(Prepared {
        row,
        plan,
        lineage: Lineage { capability, grant },
        stdin: req.stdin,
        agent,
    })
}

/// A sub-intent's limits count against its parent's: each is held to what the parent
/// has left once its running children are counted, and the timeout to the parent's
/// remaining time. A limit the request names beyond that is refused; one it leaves to
/// the grant's ceiling is lowered to what is left.
fn within_parent(
    daemon: &Daemon,
    parent: &str,
    asked: &covenant_policy::Limits,
    plan: &mut SandboxPlan,
) -> Result<(), ApiError> {
    let st = daemon.lock_state();
    let p = st
        .jobs
        .get(parent)
        .filter(|p| p.row.state == JobState::Running)
        .ok_or_else(|| ApiError::new(409, format!("parent job {parent} is not running")))?;
    let children: Vec<&Job> = p
        .children
        .iter()
        .filter_map(|c| st.jobs.get(c))
        .filter(|c| !c.row.state.is_final())
        .collect();
    let budget = |name: &str,
                  parent: Option<u64>,
                  used: u64,
                  explicit: Option<u64>,
                  value: &mut Option<u64>| {
        let Some(total) = parent else { return Ok(()) };
        let left = total.saturating_sub(used);
        if let Some(v) = explicit.filter(|v| *v > left) {
            return Err(ApiError::field(
                403,
                "manifest",
                format!("limits.{name}: {v} asked, the parent job has {left} left of {total}"),
            ));
        }
        if left == 0 {
            return Err(ApiError::field(
                403,
                "manifest",
                format!("limits.{name}: the parent job has none left of {total}"),
            ));
        }
        *value = Some(value.map_or(left, |v| v.min(left)));
        Ok(())
    };
    let sum = |f: fn(&SandboxPlan) -> Option<u64>| -> u64 {
        children.iter().filter_map(|c| f(&c.plan)).sum()
    };
    budget(
        "memory",
        p.plan.limits.memory_bytes,
        sum(|p| p.limits.memory_bytes),
        asked.memory_bytes,
        &mut plan.limits.memory_bytes,
    )?;
    // The parent's own processes count too: a child gets what its pids limit leaves
    // after the children, and at least the parent keeps one.
    budget(
        "pids",
        p.plan.limits.pids.map(|n| n.saturating_sub(1)),
        sum(|p| p.limits.pids),
        asked.pids,
        &mut plan.limits.pids,
    )?;
    if let (Some(timeout), Some(started)) = (p.plan.limits.timeout_ms, p.row.started_ms) {
        let left = (started + timeout as i64 - now_ms()).max(0) as u64;
        budget(
            "timeout",
            Some(left),
            0,
            asked.timeout_ms,
            &mut plan.limits.timeout_ms,
        )?;
    }
    Ok(())
}

async fn admit(
    daemon: &Arc<Daemon>,
    caller: &Caller,
    intent: AuditEvent,
    prepared: Prepared,
    clock: covenant_runners::timing::Stopwatch,
) -> Result<Submitted, ApiError> {
    let Prepared {
        mut row,
        plan,
        lineage,
        stdin,
        agent,
    } = prepared;
    let id = row.id.clone();
    let decision = {
        let mut st = daemon.lock_state();
        let cfg = &daemon.config;
        let mine = st.per_subject.get(&row.subject).copied().unwrap_or(0);
        let parent_gone = row.parent.as_ref().is_some_and(|p| {
            st.jobs
                .get(p)
                .is_none_or(|p| p.closing || p.row.state.is_final())
        });
        let decision = if daemon.shutting_down.load(Ordering::SeqCst) {
            Err(ApiError::retry(503, "the daemon is shutting down", 5))
        } else if parent_gone {
            Err(ApiError::new(410, "the parent job has ended"))
        } else if mine >= cfg.per_subject {
            Err(ApiError::retry(
                429,
                format!(
                    "subject `{}` has {mine} jobs queued or running, its quota",
                    row.subject
                ),
                1,
            ))
        } else if st.running < cfg.max_jobs {
            st.running += 1;
            row.state = JobState::Running;
            Ok(None)
        } else if st.queue.len() < cfg.max_queue {
            st.queue.push_back(id.clone());
            Ok(Some(st.queue.len() - 1))
        } else {
            Err(ApiError::retry(
                429,
                format!(
                    "{} jobs running and {} queued: the queue is full",
                    st.running,
                    st.queue.len()
                ),
                1,
            ))
        };
        if decision.is_ok() {
            *st.per_subject.entry(row.subject.clone()).or_default() += 1;
            let (stdin_tx, stdin_rx) = match stdin {
                StdinMode::Pipe => {
                    let (tx, rx) = mpsc::channel(64);
                    (Some(tx), Some(rx))
                }
                StdinMode::Null => (None, None),
            };
            let mut root = id.clone();
            if let Some(parent) = &row.parent {
                if let Some(p) = st.jobs.get_mut(parent) {
                    p.children.push(id.clone());
                    root = p.root.clone();
                }
            }
            st.jobs.insert(
                id.clone(),
                Job {
                    clock,
                    row: row.clone(),
                    plan: plan.clone(),
                    lineage,
                    stdout: Output::default(),
                    stderr: Output::default(),
                    stdin_tx,
                    stdin_rx,
                    changed: watch::channel(0).0,
                    children: Vec::new(),
                    agent,
                    kill_reason: None,
                    agent_writes: 0,
                    agent_bytes: 0,
                    agent_refusals: 0,
                    agent_tally: AgentTally::default(),
                    signals: 0,
                    closing: false,
                    root,
                },
            );
            if let Some(job) = st.jobs.get_mut(&id) {
                if let Some(agent) = job.agent.as_mut() {
                    let (d, j) = (daemon.clone(), id.clone());
                    if let Err(e) =
                        agent.start(move |listener, token| agent::serve(d, j, listener, token))
                    {
                        eprintln!("covenantd: agent socket of {id}: {e}");
                    }
                }
            }
        }
        decision
    };
    let position = match decision {
        Ok(p) => p,
        Err(e) => {
            daemon.metrics.refused(refusal_reason(e.status, None));
            let refusal = event(
                Kind::JobRefused,
                &id,
                json!({"reason": e.body.error, "status": e.status}),
            );
            daemon
                .commit(vec![intent, refusal], Vec::new(), false)
                .await?;
            return Err(e);
        }
    };
    let events = vec![
        intent,
        event(
            Kind::CapabilityVerified,
            &id,
            crate::store::audit::body_of(&plan.authorisation),
        ),
        event(
            Kind::PlanCompiled,
            &id,
            json!({"plan_digest": plan.digest(), "seccomp_profile": plan.seccomp_profile, "limits": plan.limits}),
        ),
        event(
            Kind::JobAdmitted,
            &id,
            json!({"state": row.state, "queue_position": position, "caller": caller.audit(), "subject": row.subject}),
        ),
    ];
    if let Err(e) = daemon.commit(events, vec![row.clone()], false).await {
        let mut end = row.clone();
        end.state = JobState::Failed;
        end.reason = Some(e.body.error.clone());
        end.ended_ms = Some(now_ms());
        release(daemon, &id, &end);
        return Err(e);
    }
    if let Some(job) = daemon.lock_state().jobs.get_mut(&id) {
        job.clock.lap(covenant_runners::timing::TimedStep::Admit);
    }
    if row.state == JobState::Running {
        daemon.start(id.clone());
    }
    Ok(Submitted {
        id,
        state: row.state,
        queue_position: position,
    })
}
