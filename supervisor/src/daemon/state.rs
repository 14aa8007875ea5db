//! The daemon's state: every live job (its row, plan, output, stdin, agent socket and
//! budgets), the queue and the counts admission holds jobs to, and the store handles.
//! The other modules change it only under [`Daemon::lock_state`], never across an
//! `.await`.

use super::agent_socket::AgentSocket;
use super::api::ApiError;
use super::config::Config;
use super::connections::Connections;
use super::metrics::Metrics;
use super::pool::ShimPool;
use super::request_audit::RequestTally;
use crate::store::group::AuditSender;
use crate::store::jobs::{JobRow, JobState};
use crate::store::Kind;
use crate::store::{AuditEvent, Store};
use bytes::Bytes;
use covenant_policy::{Capability, Grant, SandboxPlan};
use serde_json::json;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::sync::{mpsc, watch};

/// The most bytes of output the finished jobs kept in memory (`--keep-finished`) may
/// hold together; the oldest go first.
const FINISHED_OUTPUT_BUDGET: u64 = 256 * 1024 * 1024;

/// A stream's bytes held for readers; the oldest are dropped past the limit.
#[derive(Default)]
pub(super) struct Output {
    pub(super) data: VecDeque<u8>,
    /// Bytes dropped from the front: the offset of `data[0]`.
    pub(super) dropped: u64,
}

impl Output {
    pub(super) fn push(&mut self, bytes: &[u8], limit: usize) {
        self.data.extend(bytes);
        if self.data.len() > limit {
            let excess = self.data.len() - limit;
            self.data.drain(..excess);
            self.dropped += excess as u64;
        }
    }

    pub(super) fn total(&self) -> u64 {
        self.dropped + self.data.len() as u64
    }

    /// Bytes from `offset` on (or from the oldest kept), and their offset.
    pub(super) fn since(&self, offset: u64) -> (u64, Vec<u8>) {
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

pub(super) struct Job {
    pub(super) row: JobRow,
    /// Laps of the daemon's side of the job (admission, queue); the shim's report adds
    /// its own.
    pub(super) clock: covenant_runners::timing::Stopwatch,
    pub(super) plan: SandboxPlan,
    pub(super) lineage: Lineage,
    pub(super) stdout: Output,
    pub(super) stderr: Output,
    pub(super) stdin_tx: Option<mpsc::Sender<Bytes>>,
    pub(super) stdin_rx: Option<mpsc::Receiver<Bytes>>,
    pub(super) changed: watch::Sender<u64>,
    pub(super) children: Vec<String>,
    pub(super) agent: Option<AgentSocket>,
    /// Set when the job was told to stop (API kill, parent ended, shutdown).
    pub(super) kill_reason: Option<String>,
    /// Writes its agent and its sub-intents' agents have made (memory items, audit
    /// events, sub-intents); counted on the lineage's root only.
    pub(super) agent_writes: u64,
    /// Bytes of memory items and audit events those writes stored (root only).
    pub(super) agent_bytes: u64,
    /// Refused agent requests of the whole lineage (root only).
    pub(super) agent_refusals: u64,
    /// What its agent asked of its socket, for the summary rows.
    pub(super) agent_tally: AgentTally,
    /// Signals sent through the API and audited; past [`super::control::MAX_SIGNAL_ROWS`] only counted.
    pub(super) signals: u64,
    /// Its sandbox has ended and its children are being killed: it takes no new ones.
    pub(super) closing: bool,
    /// The first job of its lineage (itself, or its parent's root), which holds the
    /// lineage's agent budgets.
    pub(super) root: String,
}

/// A job's agent requests: counted, and audited as a summary row now and then and at the
/// job's end, never one row each (an agent could write rows as fast as it can ask).
#[derive(Default)]
pub(super) struct AgentTally {
    /// Answered with success since the last summary row.
    pub(super) answered: u64,
    /// Refused since the last summary row, by reason.
    pub(super) refused: std::collections::BTreeMap<&'static str, u64>,
    /// Refused in the job's life; past `--agent-refusals` the socket is closed.
    pub(super) refused_total: u64,
}

impl AgentTally {
    /// The summary row of what was counted since the last one, if anything was.
    pub(super) fn take_summary(&mut self, job: &str) -> Option<AuditEvent> {
        if self.answered == 0 && self.refused.is_empty() {
            return None;
        }
        let e = event(
            Kind::AgentRequests,
            job,
            json!({"answered": self.answered, "refused": self.refused, "refused_in_life": self.refused_total}),
        );
        self.answered = 0;
        self.refused.clear();
        Some(e)
    }
}

#[derive(Default)]
pub(super) struct State {
    pub(super) jobs: HashMap<String, Job>,
    pub(super) queue: VecDeque<String>,
    pub(super) running: usize,
    pub(super) per_subject: HashMap<String, usize>,
    pub(super) finished: VecDeque<String>,
    /// Bytes of output the finished jobs hold.
    pub(super) finished_bytes: u64,
}

pub struct Daemon {
    pub config: Config,
    pub audit: AuditSender,
    /// A second connection for memory operations and reads.
    pub store: Mutex<Store>,
    pub metrics: Metrics,
    /// Operator requests not audited alone, counted for the summary rows.
    pub requests: RequestTally,
    state: Mutex<State>,
    /// Jobs to drive, by id: the driver starts a shim for each (`driver::run_starts`).
    /// Each id enters once, when its job becomes running, so at most `max_jobs + max_queue`
    /// are ever waiting.
    starts: mpsc::UnboundedSender<String>,
    /// Open client connections, bounded per caller and in total.
    pub connections: Arc<Connections>,
    pub shutting_down: AtomicBool,
    /// Bumped when a job ends.
    pub ended: watch::Sender<u64>,
    /// Shims started ahead of their jobs (`--shim-pool`).
    pub(super) pool: ShimPool,
}

impl Daemon {
    pub fn new(
        config: Config,
        audit: AuditSender,
        store: Store,
    ) -> (Arc<Self>, mpsc::UnboundedReceiver<String>) {
        let (starts, started) = mpsc::unbounded_channel();
        let pool = ShimPool::new(config.shim_pool);
        let daemon = Arc::new(Daemon {
            connections: Connections::new(config.connection_bounds()),
            config,
            audit,
            store: Mutex::new(store),
            metrics: Metrics::default(),
            requests: RequestTally::default(),
            state: Mutex::new(State::default()),
            shutting_down: AtomicBool::new(false),
            ended: watch::channel(0).0,
            pool,
            starts,
        });
        (daemon, started)
    }

    /// Hands a job that has become running to the driver.
    pub(super) fn start(&self, id: String) {
        // The receiver lives as long as the daemon serves; after that nothing is started.
        let _ = self.starts.send(id);
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
    pub(super) fn lock_state(&self) -> MutexGuard<'_, State> {
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

pub(super) fn event(kind: Kind, job: &str, mut body: serde_json::Value) -> AuditEvent {
    body["job"] = json!(job);
    AuditEvent::new(kind, body)
}

/// Takes a job out of the running or queued count, records its final row in memory,
/// and starts queued jobs in the freed slots.
pub(super) fn release(daemon: &Arc<Daemon>, id: &str, end: &JobRow) -> Option<JobRow> {
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
        daemon.start(q);
    }
    Some(row)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::group::AuditWriter;

    fn daemon(home: &std::path::Path) -> (Arc<Daemon>, AuditWriter) {
        let open = || Store::open(&home.join("covenant.db"), &home.join("supervisor.key")).unwrap();
        let writer = AuditWriter::start(open());
        let config = Config::for_tests(home, 2, "/bin/false", 0);
        let (daemon, _) = Daemon::new(config, writer.sender(), open());
        (daemon, writer)
    }

    #[test]
    fn a_panic_while_the_state_is_held_leaves_every_later_request_answerable() {
        let home = tempfile::tempdir().unwrap();
        let (daemon, _writer) = daemon(home.path());
        let d = daemon.clone();
        let panicked = std::thread::spawn(move || {
            let mut st = d.lock_state();
            st.running = 1;
            panic!("a bug while the state is held");
        })
        .join();
        assert!(panicked.is_err());
        assert!(daemon.state.is_poisoned());
        // What the panicking code wrote stays; nothing after it panics in turn.
        assert_eq!(daemon.counts(), (1, 0));
        assert!(daemon.unfinished().is_empty());
        let e = super::super::control::status(&daemon, "job-0000000000000000").unwrap_err();
        assert_eq!(e.status, 404);
    }
}
