//! Jobs: admission (concurrency, a bounded queue, per-subject quotas), one shim process per
//! running job, its stdio, and every state change committed with its audit events.

use super::api::{ErrorBody, OutputLine, StdinMode, Stream, SubmitRequest, Submitted};
use super::metrics::Metrics;
use super::shim::{ShimJob, ShimMessage};
use super::Config;
use crate::authority::{self, AuthorityError};
use crate::home::new_job_id;
use crate::store::group::AuditSender;
use crate::store::jobs::{JobRow, JobState};
use crate::store::{audit::now_ms, AuditEvent, Store};
use bytes::Bytes;
use covenant_policy::{Capability, Grant, Manifest, SandboxPlan, Scope};
use serde_json::json;
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

/// The most bytes of output the finished jobs kept in memory (`--keep-finished`) may
/// hold together; the oldest go first.
const FINISHED_OUTPUT_BUDGET: u64 = 256 * 1024 * 1024;

/// Largest piece of output sent as one line of `/output`: a reader that stalls holds at
/// most its channel's lines of this size.
const OUTPUT_LINE_BYTES: usize = 48 * 1024;

/// Who made a request: the socket's peer credentials, a TCP peer that presented the
/// bearer token, or a sandboxed agent on its job's socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Unix {
        uid: u32,
        gid: u32,
        pid: Option<i32>,
        /// Root, or a member of the configured admin group when it connected.
        admin: bool,
    },
    Tcp {
        addr: String,
    },
    Agent {
        job: String,
    },
}

impl Caller {
    pub fn audit(&self) -> serde_json::Value {
        match self {
            Caller::Unix {
                uid,
                gid,
                pid,
                admin,
            } => {
                json!({"via": "unix", "uid": uid, "gid": gid, "pid": pid, "admin": admin})
            }
            Caller::Tcp { addr } => json!({"via": "tcp", "addr": addr}),
            Caller::Agent { job } => json!({"via": "agent-socket", "job": job}),
        }
    }

    /// Root or the admin group on the unix socket: sees and controls every job and all
    /// memory. A TCP client never is one: the bearer token names nobody.
    pub fn is_admin(&self) -> bool {
        matches!(self, Caller::Unix { admin: true, .. })
    }

    /// Whether this caller may see and control the job `row`: an admin any job; a unix
    /// caller the jobs its uid submitted (and their sub-intents); TCP clients, one
    /// identity without a uid, the jobs submitted over TCP. An agent reaches its
    /// sub-intents through its own socket, never here.
    pub fn owns(&self, row: &JobRow) -> bool {
        match self {
            Caller::Unix { admin: true, .. } => true,
            Caller::Unix { uid, .. } => row.caller_uid == Some(*uid),
            Caller::Tcp { .. } => row.caller_uid.is_none(),
            Caller::Agent { .. } => false,
        }
    }

    fn uid(&self) -> Option<u32> {
        match self {
            Caller::Unix { uid, .. } => Some(*uid),
            _ => None,
        }
    }

    fn pid(&self) -> Option<i32> {
        match self {
            Caller::Unix { pid, .. } => *pid,
            _ => None,
        }
    }
}

/// An error answer: status and body.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: u16,
    pub body: ErrorBody,
}

impl ApiError {
    pub fn new(status: u16, error: impl Into<String>) -> Self {
        ApiError {
            status,
            body: ErrorBody {
                error: error.into(),
                field: None,
                retry_after_s: None,
            },
        }
    }

    pub fn field(status: u16, field: &str, error: impl Into<String>) -> Self {
        let mut e = Self::new(status, error);
        e.body.field = Some(field.to_string());
        e
    }

    pub fn retry(status: u16, error: impl Into<String>, after: u64) -> Self {
        let mut e = Self::new(status, error);
        e.body.retry_after_s = Some(after);
        e
    }
}

/// A stream's bytes held for readers; the oldest are dropped past the limit.
#[derive(Default)]
struct Output {
    data: VecDeque<u8>,
    /// Bytes dropped from the front: the offset of `data[0]`.
    dropped: u64,
}

impl Output {
    fn push(&mut self, bytes: &[u8], limit: usize) {
        self.data.extend(bytes);
        if self.data.len() > limit {
            let excess = self.data.len() - limit;
            self.data.drain(..excess);
            self.dropped += excess as u64;
        }
    }

    fn total(&self) -> u64 {
        self.dropped + self.data.len() as u64
    }

    /// Bytes from `offset` on (or from the oldest kept), and their offset.
    fn since(&self, offset: u64) -> (u64, Vec<u8>) {
        let start = offset.max(self.dropped);
        let skip = (start - self.dropped) as usize;
        (start, self.data.iter().skip(skip).copied().collect())
    }
}

/// What a sub-intent's parent lends it: authority and budget.
#[derive(Clone)]
pub struct Lineage {
    pub capability: Capability,
    pub grant: Grant,
}

struct Job {
    row: JobRow,
    plan: SandboxPlan,
    lineage: Lineage,
    stdout: Output,
    stderr: Output,
    stdin_tx: Option<mpsc::Sender<Bytes>>,
    stdin_rx: Option<mpsc::Receiver<Bytes>>,
    changed: watch::Sender<u64>,
    children: Vec<String>,
    agent: Option<super::agent::AgentSocket>,
    /// Set when the job was told to stop (API kill, parent ended, shutdown).
    kill_reason: Option<String>,
    /// Writes its agent and its sub-intents' agents have made (memory items, audit
    /// events, sub-intents); counted on the lineage's root only.
    agent_writes: u64,
    /// Bytes of memory items and audit events those writes stored (root only).
    agent_bytes: u64,
    /// Refused agent requests of the whole lineage (root only).
    agent_refusals: u64,
    /// What its agent asked of its socket, for the summary rows.
    agent_tally: AgentTally,
    /// Signals sent through the API and audited; past [`MAX_SIGNAL_ROWS`] only counted.
    signals: u64,
    /// Its sandbox has ended and its children are being killed: it takes no new ones.
    closing: bool,
    /// The first job of its lineage (itself, or its parent's root), which holds the
    /// lineage's agent budgets.
    root: String,
}

/// `sandbox.signalled` rows one job gets; a caller repeating signals gets no more rows.
const MAX_SIGNAL_ROWS: u64 = 100;

/// A job's agent requests: counted, and audited as a summary row now and then and at the
/// job's end, never one row each (an agent could write rows as fast as it can ask).
#[derive(Default)]
struct AgentTally {
    /// Answered with success since the last summary row.
    answered: u64,
    /// Refused since the last summary row, by reason.
    refused: std::collections::BTreeMap<&'static str, u64>,
    /// Refused in the job's life; past `--agent-refusals` the socket is closed.
    refused_total: u64,
}

impl AgentTally {
    /// The summary row of what was counted since the last one, if anything was.
    fn take_summary(&mut self, job: &str) -> Option<AuditEvent> {
        if self.answered == 0 && self.refused.is_empty() {
            return None;
        }
        let e = event(
            "agent.requests",
            job,
            json!({"answered": self.answered, "refused": self.refused, "refused_in_life": self.refused_total}),
        );
        self.answered = 0;
        self.refused.clear();
        Some(e)
    }
}

#[derive(Default)]
struct State {
    jobs: HashMap<String, Job>,
    queue: VecDeque<String>,
    running: usize,
    per_subject: HashMap<String, usize>,
    finished: VecDeque<String>,
    /// Bytes of output the finished jobs hold.
    finished_bytes: u64,
}

pub struct Daemon {
    pub config: Config,
    pub audit: AuditSender,
    /// A second connection for memory operations and reads.
    pub store: Mutex<Store>,
    pub metrics: Metrics,
    /// Operator requests not audited alone, counted for the summary rows.
    pub requests: super::request_audit::RequestTally,
    state: Mutex<State>,
    /// Open client connections, bounded per caller and in total.
    pub connections: Arc<super::connections::Connections>,
    pub shutting_down: AtomicBool,
    /// Bumped when a job ends.
    pub ended: watch::Sender<u64>,
}

impl Daemon {
    pub fn new(config: Config, audit: AuditSender, store: Store) -> Arc<Self> {
        Arc::new(Daemon {
            connections: super::connections::Connections::new(config.connection_bounds()),
            config,
            audit,
            store: Mutex::new(store),
            metrics: Metrics::default(),
            requests: super::request_audit::RequestTally::default(),
            state: Mutex::new(State::default()),
            shutting_down: AtomicBool::new(false),
            ended: watch::channel(0).0,
        })
    }

    /// Appends and writes durably; answers once the commit is on disk.
    pub async fn commit(
        &self,
        events: Vec<AuditEvent>,
        jobs: Vec<JobRow>,
        sign: bool,
    ) -> Result<Vec<u64>, ApiError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.audit
            .submit(
                events,
                jobs,
                sign,
                Box::new(move |r| {
                    let _ = tx.send(r);
                }),
            )
            .map_err(|e| ApiError::new(503, e.to_string()))?;
        rx.await
            .map_err(|_| ApiError::new(503, "the audit writer has stopped"))?
            .map_err(|e| ApiError::new(500, format!("audit store: {e}")))
    }

    /// Runs `f` on the daemon's second store connection; a store error is a 500.
    pub fn with_store<T>(
        &self,
        f: impl FnOnce(&mut Store) -> crate::store::Result<T>,
    ) -> Result<T, ApiError> {
        let mut store = self.store.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut store).map_err(|e| ApiError::new(500, e.to_string()))
    }

    /// Records `events` without waiting for the commit.
    pub fn record(&self, events: Vec<AuditEvent>) {
        let _ = self
            .audit
            .submit(events, Vec::new(), false, Box::new(|_| {}));
    }

    /// The jobs' state. No caller holds it across an `.await` or while calling anything
    /// that takes it again (a std mutex on the one runtime thread would hang the daemon);
    /// a task that panicked while holding it leaves it poisoned, and the state is used as
    /// it is rather than failing every later request.
    fn lock_state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn running(&self) -> usize {
        self.lock_state().running
    }

    pub fn counts(&self) -> (usize, usize) {
        let st = self.lock_state();
        (st.running, st.queue.len())
    }

    /// The live ids of unfinished jobs.
    pub fn unfinished(&self) -> Vec<String> {
        let st = self.lock_state();
        st.jobs
            .values()
            .filter(|j| !j.row.state.is_final())
            .map(|j| j.row.id.clone())
            .collect()
    }
}

fn event(kind: &str, job: &str, mut body: serde_json::Value) -> AuditEvent {
    body["job"] = json!(job);
    AuditEvent::new(kind, body)
}

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

fn authority_status(e: &AuthorityError) -> (u16, &'static str, &'static str) {
    match e {
        AuthorityError::Token(_) => (400, "capability", "capability.refused"),
        AuthorityError::Verify(_) => (403, "capability", "capability.refused"),
        AuthorityError::Refused(_) => (403, "capability", "request.refused"),
        AuthorityError::Compile(_) => (400, "manifest", "request.invalid"),
        AuthorityError::Path(crate::host_paths::PlanRefused::Runner(_)) => {
            (403, "runner", "request.refused")
        }
        AuthorityError::Path(_) => (400, "manifest", "request.invalid"),
        AuthorityError::Image(_) => (400, "manifest", "request.invalid"),
        _ => (500, "capability", "run.failed"),
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
    let job = new_job_id();
    match prepare(daemon, caller, &job, &req, parent) {
        Ok(prepared) => {
            let intent = event(
                "run.intent",
                &job,
                json!({"caller": caller.audit(), "argv": req.argv, "runner": req.runner, "parent": parent}),
            );
            admit(daemon, caller, intent, prepared).await
        }
        Err((kind, e)) => {
            daemon.metrics.refused(refusal_reason(e.status, kind));
            // A refusal stores nothing the caller chose beyond a bounded argv, and past
            // a few rows a minute only its count (`api.requests`): refusals are free to
            // ask for, rows are not free to store.
            if daemon.requests.refusal_row_allowed(caller) {
                let intent = event(
                    "run.intent",
                    &job,
                    json!({"caller": caller.audit(), "argv": super::request_audit::bounded_argv(&req.argv),
                           "runner": req.runner.as_deref().map(|r| super::request_audit::cut(r, 512)),
                           "parent": parent}),
                );
                let refusal = event(
                    kind,
                    &job,
                    json!({"reason": super::request_audit::cut(&e.body.error, super::request_audit::REFUSED_ARGV_BYTES),
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

fn refusal_reason(status: u16, kind: &str) -> &'static str {
    match (status, kind) {
        (429, _) => "admission",
        (503, _) => "shutting-down",
        (_, "capability.refused") => "capability",
        (_, "request.refused") => "scope",
        _ => "invalid",
    }
}

struct Prepared {
    row: JobRow,
    plan: SandboxPlan,
    lineage: Lineage,
    stdin: StdinMode,
    agent: Option<super::agent::AgentSocket>,
}

type Refusal = (&'static str, ApiError);

fn prepare(
    daemon: &Arc<Daemon>,
    caller: &Caller,
    job: &str,
    req: &SubmitRequest,
    parent: Option<&str>,
) -> Result<Prepared, Refusal> {
    let invalid = |e: ApiError| ("request.invalid", e);
    let manifest = request_manifest(req).map_err(invalid)?;
    let capability = Capability::parse(&req.capability).map_err(|e| {
        (
            "capability.refused",
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
            "capability.refused",
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
        within_parent(daemon, parent, &asked, &mut plan).map_err(|e| ("request.refused", e))?;
    }
    let agent = if super::agent::wanted(&grant) {
        if plan.runner == covenant_policy::RunnerChoice::Gvisor {
            return Err(invalid(ApiError::field(
                400,
                "runner",
                "the agent socket (granted by mem.* and agent:* scopes) needs the native or an OCI runner",
            )));
        }
        let socket = super::agent::AgentSocket::create(&daemon.config.home, job, &plan)
            .map_err(|e| ("run.failed", ApiError::new(500, e)))?;
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
                    if let Err(e) = agent.start(daemon, &id) {
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
            daemon.metrics.refused(refusal_reason(e.status, ""));
            let refusal = event(
                "job.refused",
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
            "capability.verified",
            &id,
            serde_json::to_value(&plan.authorisation).unwrap_or_default(),
        ),
        event(
            "plan.compiled",
            &id,
            json!({"plan_digest": plan.digest(), "seccomp_profile": plan.seccomp_profile, "limits": plan.limits}),
        ),
        event(
            "job.admitted",
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
    if row.state == JobState::Running {
        tokio::spawn(drive(daemon.clone(), id.clone()));
    }
    Ok(Submitted {
        id,
        state: row.state,
        queue_position: position,
    })
}

/// Takes a job out of the running or queued count, records its final row in memory,
/// and starts queued jobs in the freed slots.
fn release(daemon: &Arc<Daemon>, id: &str, end: &JobRow) -> Option<JobRow> {
    let mut next = Vec::new();
    let row = {
        let mut st = daemon.lock_state();
        let job = st.jobs.get_mut(id)?;
        let was = job.row.state;
        job.row = end.clone();
        job.stdin_tx = None;
        job.agent = None;
        job.changed.send_modify(|v| *v += 1);
        let row = job.row.clone();
        let subject = row.subject.clone();
        if let Some(n) = st.per_subject.get_mut(&subject) {
            *n = n.saturating_sub(1);
        }
        match was {
            JobState::Running => st.running = st.running.saturating_sub(1),
            JobState::Queued => st.queue.retain(|q| q != id),
            _ => {}
        }
        let held = st
            .jobs
            .get(id)
            .map(|j| (j.stdout.data.len() + j.stderr.data.len()) as u64)
            .unwrap_or(0);
        st.finished.push_back(id.to_string());
        st.finished_bytes += held;
        while st.finished.len() > daemon.config.keep_finished
            || st.finished_bytes > FINISHED_OUTPUT_BUDGET
        {
            let Some(old) = st.finished.pop_front() else {
                break;
            };
            if let Some(j) = st.jobs.remove(&old) {
                let bytes = (j.stdout.data.len() + j.stderr.data.len()) as u64;
                st.finished_bytes = st.finished_bytes.saturating_sub(bytes);
            }
        }
        if st.running == 0 && st.queue.is_empty() {
            // Idle: hand the memory the load used back to the system.
            #[cfg(target_env = "gnu")]
            // SAFETY: malloc_trim only releases free heap pages.
            unsafe {
                libc::malloc_trim(0);
            }
        }
        if !daemon.shutting_down.load(Ordering::SeqCst) {
            while st.running < daemon.config.max_jobs {
                let Some(q) = st.queue.pop_front() else { break };
                if let Some(j) = st.jobs.get_mut(&q) {
                    j.row.state = JobState::Running;
                    st.running += 1;
                    next.push(q);
                }
            }
        }
        row
    };
    daemon.metrics.finished(&row);
    daemon.ended.send_modify(|v| *v += 1);
    for q in next {
        tokio::spawn(drive(daemon.clone(), q));
    }
    Some(row)
}

/// Runs one admitted job to its end. The final row is committed with the job's last
/// audit events before anyone can see the job as ended.
async fn drive(daemon: Arc<Daemon>, id: String) {
    let (mut state, exit_code, mut reason, report, mut events) = match run_shim(&daemon, &id).await
    {
        Ok(end) => end,
        Err(reason) => (
            JobState::Failed,
            Some(crate::run::EXIT_SETUP),
            Some(reason.clone()),
            None,
            vec![event("run.failed", &id, json!({"reason": reason}))],
        ),
    };
    // The agent socket closes with the sandbox, its connections with it; what the agent
    // asked since the last summary row is written with the job's end.
    let (children, killed, row, agent, summary) = {
        let mut st = daemon.lock_state();
        let Some(job) = st.jobs.get_mut(&id) else {
            return;
        };
        // From here no child is admitted under it: every child is in this list.
        job.closing = true;
        (
            job.children.clone(),
            job.kill_reason.clone(),
            job.row.clone(),
            job.agent.take(),
            job.agent_tally.take_summary(&id),
        )
    };
    drop(agent);
    events.extend(summary);
    if let Some(why) = killed {
        if daemon.shutting_down.load(Ordering::SeqCst) {
            state = JobState::Interrupted;
        }
        reason = Some(match reason {
            Some(r) => format!("killed: {why} ({r})"),
            None => format!("killed: {why}"),
        });
    }
    // Children end with their parent.
    for child in &children {
        let _ = kill(&daemon, child, libc::SIGKILL, "its parent job ended").await;
    }
    let mut end = row;
    end.state = state;
    end.exit_code = exit_code;
    end.reason = reason;
    end.report = report;
    end.ended_ms = Some(now_ms());
    events.push(event(
        "job.finished",
        &id,
        json!({"state": end.state, "exit_code": end.exit_code, "reason": end.reason}),
    ));
    let _ = daemon.commit(events, vec![end.clone()], false).await;
    release(&daemon, &id, &end);
}

type End = (
    JobState,
    Option<i32>,
    Option<String>,
    Option<serde_json::Value>,
    Vec<AuditEvent>,
);

async fn run_shim(daemon: &Arc<Daemon>, id: &str) -> Result<End, String> {
    let (plan, runner, stdin_rx) = {
        let mut st = daemon.lock_state();
        let job = st.jobs.get_mut(id).ok_or("job vanished")?;
        (
            job.plan.clone(),
            job.row.runner.clone(),
            job.stdin_rx.take(),
        )
    };
    let (ours, theirs) =
        std::os::unix::net::UnixStream::pair().map_err(|e| format!("control socket: {e}"))?;
    let mut cmd = tokio::process::Command::new(&daemon.config.shim_exe);
    cmd.arg("shim")
        .env("COVENANT_HOME", &daemon.config.home)
        .stdin(if stdin_rx.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let fd = std::os::fd::AsRawFd::as_raw_fd(&theirs);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        let parent = libc::getpid();
        cmd.pre_exec(move || {
            if fd == super::shim::CONTROL_FD {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, super::shim::CONTROL_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The shim, and through it the sandbox, dies with the daemon; a restarted
            // daemon cleans up what is left.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                libc::_exit(125);
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| {
        format!(
            "cannot start the sandbox process {}: {e}",
            daemon.config.shim_exe.display()
        )
    })?;
    drop(theirs);
    let shim_pid = child.id().map(|p| p as i32);
    let row = {
        let mut st = daemon.lock_state();
        let job = st.jobs.get_mut(id).ok_or("job vanished")?;
        job.row.state = JobState::Running;
        job.row.started_ms = Some(now_ms());
        job.row.shim_pid = shim_pid;
        job.changed.send_modify(|v| *v += 1);
        job.row.clone()
    };
    // The row names the shim before the sandbox exists, so a restarted daemon can find it.
    if let Err(e) = daemon
        .commit(
            vec![event("job.started", id, json!({"shim_pid": shim_pid}))],
            vec![row],
            false,
        )
        .await
    {
        let _ = child.start_kill();
        let _ = child.wait().await;
        return Err(e.body.error);
    }
    ours.set_nonblocking(true)
        .map_err(|e| format!("control socket: {e}"))?;
    let control = tokio::net::UnixStream::from_std(ours).map_err(|e| format!("control: {e}"))?;
    let (control_rd, mut control_wr) = control.into_split();
    let mut line = serde_json::to_vec(&ShimJob { plan, runner }).unwrap_or_default();
    line.push(b'\n');
    if let Err(e) = control_wr.write_all(&line).await {
        let _ = child.start_kill();
        let _ = child.wait().await;
        return Err(format!("sending the job to its sandbox process: {e}"));
    }
    let stdin_task = match (child.stdin.take(), stdin_rx) {
        (Some(mut pipe), Some(mut rx)) => Some(tokio::spawn(async move {
            while let Some(chunk) = rx.recv().await {
                if pipe.write_all(&chunk).await.is_err() {
                    break;
                }
            }
        })),
        _ => None,
    };
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let limit = daemon.config.output_limit;
    let copy = |mut pipe: Box<dyn tokio::io::AsyncRead + Unpin + Send>, stream: Stream| {
        let daemon = daemon.clone();
        let id = id.to_string();
        async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match pipe.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let mut st = daemon.lock_state();
                        if let Some(job) = st.jobs.get_mut(&id) {
                            match stream {
                                Stream::Stdout => job.stdout.push(&buf[..n], limit),
                                Stream::Stderr => job.stderr.push(&buf[..n], limit),
                            }
                            job.changed.send_modify(|v| *v += 1);
                        }
                    }
                }
            }
        }
    };
    let messages = async {
        let mut lines = tokio::io::BufReader::new(control_rd).lines();
        let mut last = None;
        while let Ok(Some(line)) = lines.next_line().await {
            match serde_json::from_str::<ShimMessage>(&line) {
                Ok(ShimMessage::Events { events }) => {
                    let events: Vec<AuditEvent> = events.into_iter().map(Into::into).collect();
                    daemon.metrics.observe_events(&events);
                    let _ = daemon.commit(events, Vec::new(), false).await;
                }
                Ok(other) => last = Some(other),
                Err(e) => {
                    last = Some(ShimMessage::Error {
                        kind: "run.failed".into(),
                        reason: format!("sandbox process sent an unreadable message: {e}"),
                    })
                }
            }
        }
        last
    };
    let (last, _, _, status) = tokio::join!(
        messages,
        copy(Box::new(stdout), Stream::Stdout),
        copy(Box::new(stderr), Stream::Stderr),
        child.wait()
    );
    if let Some(t) = stdin_task {
        t.abort();
    }
    let end = match last {
        Some(ShimMessage::Report { report }) => {
            let code = report["exit_code"].as_i64().map(|c| c as i32);
            (JobState::Exited, code, None, Some(report), Vec::new())
        }
        Some(ShimMessage::Error { reason, .. }) => (
            JobState::Failed,
            Some(crate::run::EXIT_SETUP),
            Some(reason),
            None,
            Vec::new(),
        ),
        _ => {
            let why = match status {
                Ok(s) => format!("the sandbox process ended without a report ({s})"),
                Err(e) => format!("the sandbox process could not be waited for: {e}"),
            };
            (
                JobState::Failed,
                Some(crate::run::EXIT_SETUP),
                Some(why.clone()),
                None,
                vec![event("run.failed", id, json!({"reason": why}))],
            )
        }
    };
    // A shim that reported cleaned up after itself; one that died without a report (or
    // failed, possibly in its cleanup) may have left cgroups, mounts and the bundle.
    if end.3.is_none() {
        super::recovery::clean_job(&daemon.config.home, id, shim_pid);
    }
    Ok(end)
}

/// Sends `signal` to a job: a queued job is cancelled; a running one gets the signal
/// through its shim (which forwards it to the program), or, for `KILL`, every process in
/// its cgroups is killed.
pub async fn kill(
    daemon: &Arc<Daemon>,
    id: &str,
    signal: i32,
    why: &str,
) -> Result<JobState, ApiError> {
    let state = kill_queued(daemon, id, why).await?;
    if state != JobState::Running {
        return Ok(state);
    }
    let (shim_pid, signals) = {
        let mut st = daemon.lock_state();
        let Some(job) = st.jobs.get_mut(id) else {
            return Ok(JobState::Running);
        };
        if signal == libc::SIGKILL {
            job.kill_reason.get_or_insert_with(|| why.to_string());
        }
        job.signals += 1;
        (job.row.shim_pid, job.signals)
    };
    if signals <= MAX_SIGNAL_ROWS {
        daemon.record(vec![event(
            "sandbox.signalled",
            id,
            json!({"signal": signal, "by": "api", "reason": why, "nth": signals,
                   "further": if signals == MAX_SIGNAL_ROWS { "counted only" } else { "audited" }}),
        )]);
    }
    if signal == libc::SIGKILL {
        let killed = super::recovery::kill_job_processes(id, shim_pid);
        if killed == 0 {
            if let Some(pid) = shim_pid {
                // SAFETY: kill(2); the pid is the daemon's own child, not yet reaped.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    } else if let Some(pid) = shim_pid {
        // SAFETY: as above; the shim forwards the signal to the program.
        unsafe { libc::kill(pid, signal) };
    }
    Ok(JobState::Running)
}

/// Cancels job `id` if it is still queued; returns its state either way.
pub async fn kill_queued(daemon: &Arc<Daemon>, id: &str, why: &str) -> Result<JobState, ApiError> {
    let row = {
        let st = daemon.lock_state();
        let job = st
            .jobs
            .get(id)
            .ok_or_else(|| ApiError::new(404, format!("no live job {id}")))?;
        job.row.clone()
    };
    if row.state != JobState::Queued {
        return Ok(row.state);
    }
    let mut end = row;
    end.state = JobState::Cancelled;
    end.reason = Some(why.to_string());
    end.ended_ms = Some(now_ms());
    let events = vec![event("job.cancelled", id, json!({"reason": why}))];
    daemon.commit(events, vec![end.clone()], false).await?;
    release(daemon, id, &end);
    Ok(JobState::Cancelled)
}

/// Whether the daemon still holds job `id`'s output.
pub fn has_output(daemon: &Daemon, id: &str) -> bool {
    daemon.lock_state().jobs.contains_key(id)
}

/// The job's row, from memory while it is live, else from the store.
pub fn status(daemon: &Daemon, id: &str) -> Result<super::api::JobStatus, ApiError> {
    {
        let st = daemon.lock_state();
        if let Some(j) = st.jobs.get(id) {
            return Ok(super::api::JobStatus {
                row: j.row.clone(),
                stdout_bytes: j.stdout.total(),
                stderr_bytes: j.stderr.total(),
            });
        }
    }
    let row = daemon
        .with_store(|s| s.job(id))?
        .ok_or_else(|| ApiError::new(404, format!("no job {id}")))?;
    Ok(super::api::JobStatus {
        row,
        stdout_bytes: 0,
        stderr_bytes: 0,
    })
}

/// Waits until job `id` is final (or `timeout` passes); returns its status.
pub async fn wait(
    daemon: &Arc<Daemon>,
    id: &str,
    timeout: std::time::Duration,
) -> Result<super::api::JobStatus, ApiError> {
    // The guard ends with this statement: `status` takes the lock itself.
    let live = daemon
        .lock_state()
        .jobs
        .get(id)
        .map(|j| j.changed.subscribe());
    let Some(mut rx) = live else {
        return status(daemon, id);
    };
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let s = status(daemon, id)?;
        if s.row.state.is_final() {
            return Ok(s);
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => {}
            // The deadline passed, or the daemon forgot the job (its row is final in the
            // store by then): answer what is known rather than spin on a closed channel.
            Err(_) => return Ok(s),
            Ok(Err(_)) => return status(daemon, id),
        }
    }
}

/// Sends stdin bytes to a job that asked for a pipe; `None` closes it.
pub async fn write_stdin(daemon: &Daemon, id: &str, chunk: Option<Bytes>) -> Result<(), ApiError> {
    let tx = {
        let mut st = daemon.lock_state();
        let job = st
            .jobs
            .get_mut(id)
            .ok_or_else(|| ApiError::new(404, format!("no live job {id}")))?;
        if job.row.state.is_final() {
            return Err(ApiError::new(409, format!("job {id} has ended")));
        }
        match chunk {
            None => {
                job.stdin_tx = None;
                return Ok(());
            }
            Some(_) => job.stdin_tx.clone().ok_or_else(|| {
                ApiError::new(
                    409,
                    format!("job {id} has no stdin pipe (submit with \"stdin\": \"pipe\"), or it was closed"),
                )
            })?,
        }
    };
    tx.send(chunk.expect("checked above"))
        .await
        .map_err(|_| ApiError::new(409, format!("job {id} no longer reads stdin")))
}

/// Streams a job's output as newline-delimited JSON into `out` until it ends (or at once
/// without `follow`).
pub async fn stream_output(
    daemon: Arc<Daemon>,
    id: String,
    follow: bool,
    out: mpsc::Sender<Bytes>,
) {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    let Some(mut changed) = daemon
        .lock_state()
        .jobs
        .get(&id)
        .map(|j| j.changed.subscribe())
    else {
        return;
    };
    let mut offsets = [0u64; 2];
    loop {
        let (chunks, end) = {
            let st = daemon.lock_state();
            let Some(job) = st.jobs.get(&id) else { return };
            let mut chunks = Vec::new();
            for (i, (stream, output)) in
                [(Stream::Stdout, &job.stdout), (Stream::Stderr, &job.stderr)]
                    .into_iter()
                    .enumerate()
            {
                let (at, data) = output.since(offsets[i]);
                offsets[i] = at + data.len() as u64;
                for (n, piece) in data.chunks(OUTPUT_LINE_BYTES).enumerate() {
                    chunks.push(OutputLine::Data {
                        stream,
                        offset: at + (n * OUTPUT_LINE_BYTES) as u64,
                        data: STANDARD.encode(piece),
                    });
                }
            }
            let end = (job.row.state.is_final()).then(|| OutputLine::End {
                state: job.row.state,
                exit_code: job.row.exit_code,
                reason: job.row.reason.clone(),
            });
            (chunks, end)
        };
        // A reader that takes no line within the request timeout is dropped: a stalled
        // client must not hold the job's output (and a descriptor) forever.
        let patience = daemon.config.request_timeout;
        for c in chunks.iter().chain(end.iter()) {
            let mut line = serde_json::to_vec(c).unwrap_or_default();
            line.push(b'\n');
            if out.send_timeout(Bytes::from(line), patience).await.is_err() {
                return;
            }
        }
        if end.is_some() || !follow {
            return;
        }
        if changed.changed().await.is_err() {
            return;
        }
    }
}

/// The verified grant and capability of a running job (for its agent's sub-intents).
pub fn lineage(daemon: &Daemon, id: &str) -> Option<(Lineage, Vec<Scope>)> {
    let st = daemon.lock_state();
    let j = st.jobs.get(id)?;
    Some((j.lineage.clone(), j.lineage.grant.scopes.clone()))
}

/// Counts one write by job `id`'s agent; refuses it (429) past the daemon's per-job
/// allowance, so an agent cannot flood the store.
pub fn agent_write(daemon: &Daemon, id: &str, bytes: u64) -> Result<(), ApiError> {
    let mut st = daemon.lock_state();
    if st.jobs.get(id).is_none_or(|j| j.row.state.is_final()) {
        return Err(ApiError::new(410, format!("job {id} has ended")));
    }
    // A sub-intent's agent spends its lineage's budget, not a fresh one of its own.
    let root = lineage_root(&st, id);
    let job = st
        .jobs
        .get_mut(&root)
        .ok_or_else(|| ApiError::new(410, format!("the lineage of job {id} has ended")))?;
    if job.agent_writes >= daemon.config.agent_writes {
        return Err(ApiError::new(
            429,
            format!(
                "job {root} and its sub-intents have made their {} agent writes (memory items, audit events, sub-intents)",
                daemon.config.agent_writes
            ),
        ));
    }
    if job.agent_bytes.saturating_add(bytes) > daemon.config.agent_bytes {
        return Err(ApiError::new(
            429,
            format!(
                "job {root} and its sub-intents have stored {} of their {} bytes of memory items and audit events",
                job.agent_bytes, daemon.config.agent_bytes
            ),
        ));
    }
    job.agent_writes += 1;
    job.agent_bytes += bytes;
    Ok(())
}

/// The first job of `id`'s lineage, fixed when it was admitted: a child keeps spending
/// its root's budgets whatever state its ancestors are in.
fn lineage_root(st: &State, id: &str) -> String {
    st.jobs
        .get(id)
        .map_or_else(|| id.to_string(), |j| j.root.clone())
}

/// Whether `child` was submitted by `parent`'s agent.
pub fn is_child(daemon: &Daemon, parent: &str, child: &str) -> bool {
    let st = daemon.lock_state();
    st.jobs
        .get(child)
        .is_some_and(|c| c.row.parent.as_deref() == Some(parent))
}

/// Counts one request of job `id`'s agent: answered, or refused for `reason`. Returns
/// true when this refusal spent the job's `--agent-refusals`: the caller then closes the
/// agent's socket.
pub fn agent_tally(daemon: &Daemon, id: &str, outcome: Result<(), &'static str>) -> bool {
    let mut st = daemon.lock_state();
    let Some(job) = st.jobs.get_mut(id) else {
        return false;
    };
    let tally = &mut job.agent_tally;
    match outcome {
        Ok(()) => {
            tally.answered += 1;
            false
        }
        Err(reason) => {
            *tally.refused.entry(reason).or_default() += 1;
            tally.refused_total += 1;
            // The lineage's refusals together: a sub-intent gets no fresh allowance.
            let root = lineage_root(&st, id);
            match st.jobs.get_mut(&root) {
                Some(root) => {
                    root.agent_refusals += 1;
                    root.agent_refusals >= daemon.config.agent_refusals
                }
                // The lineage is gone: nothing more to answer.
                None => true,
            }
        }
    }
}

/// Closes job `id`'s agent socket and every connection to it, for `why`; audited once.
pub fn close_agent_socket(daemon: &Daemon, id: &str, why: &str) {
    let (agent, summary) = {
        let mut st = daemon.lock_state();
        let Some(job) = st.jobs.get_mut(id) else {
            return;
        };
        (job.agent.take(), job.agent_tally.take_summary(id))
    };
    if agent.is_none() {
        return;
    }
    let mut events: Vec<AuditEvent> = summary.into_iter().collect();
    events.push(event("agent.socket.closed", id, json!({"reason": why})));
    daemon.record(events);
    // Dropping it stops the listener and aborts its connections, this one included.
    drop(agent);
}

/// The summary rows of every live job's agent requests since the last ones.
pub fn agent_summaries(daemon: &Daemon) -> Vec<AuditEvent> {
    let mut st = daemon.lock_state();
    st.jobs
        .iter_mut()
        .filter_map(|(id, j)| j.agent_tally.take_summary(id))
        .collect()
}
