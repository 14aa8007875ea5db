//! Group commit for writers in one process: callers hand events to one writer thread,
//! which commits whatever has queued up in a single transaction (one `fsync`) and then
//! answers each caller. A caller is answered only after its event is durable.

use super::audit::AuditEvent;
use super::error::{Result, StoreError};
use super::handle::Store;
use super::jobs::JobRow;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;

/// Most events committed in one transaction.
pub const MAX_GROUP: usize = 4_096;

/// Called with the outcome once a caller's events are durable (or failed).
pub type Reply = Box<dyn FnOnce(std::result::Result<Vec<u64>, String>) + Send>;

/// One caller's share of a group: events, job rows written with them, and whether the
/// head must be signed in the same commit.
struct Write {
    events: Vec<AuditEvent>,
    jobs: Vec<JobRow>,
    sign: bool,
}

/// Work done on the writer thread's own connection, between two commits.
pub type Task = Box<dyn FnOnce(&mut Store) + Send>;

enum Msg {
    Write(Write, Reply),
    Run(Task),
}

/// A handle to the writer thread; clone the sender side with [`AuditWriter::sender`].
pub struct AuditWriter {
    tx: Option<SyncSender<Msg>>,
    thread: Option<JoinHandle<Store>>,
}

/// Submits events to an [`AuditWriter`] from any thread.
#[derive(Clone)]
pub struct AuditSender {
    tx: SyncSender<Msg>,
}

impl AuditSender {
    /// Appends `event` and waits until it is durable; returns its sequence number.
    pub fn append(&self, event: AuditEvent) -> Result<u64> {
        let seqs = self.commit(vec![event], Vec::new(), false)?;
        Ok(seqs[0])
    }

    /// Appends `events` and writes `jobs` in one durable commit, signing the head with
    /// `sign`; returns the events' sequence numbers.
    pub fn commit(
        &self,
        events: Vec<AuditEvent>,
        jobs: Vec<JobRow>,
        sign: bool,
    ) -> Result<Vec<u64>> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.submit(
            events,
            jobs,
            sign,
            Box::new(move |r| {
                let _ = reply.send(r);
            }),
        )?;
        answer
            .recv()
            .map_err(|_| StoreError::WriterStopped)?
            .map_err(StoreError::Writer)
    }
}

impl AuditSender {
    /// Queues a write without waiting; `reply` is called from the writer thread once the
    /// commit is durable, or with the error. Blocks only while the queue is full.
    pub fn submit(
        &self,
        events: Vec<AuditEvent>,
        jobs: Vec<JobRow>,
        sign: bool,
        reply: Reply,
    ) -> Result<()> {
        self.tx
            .send(Msg::Write(Write { events, jobs, sign }, reply))
            .map_err(|_| StoreError::WriterStopped)
    }

    /// Runs `task` on the writer's connection with no write in between: what it reads
    /// and signs is the chain exactly as written so far.
    pub fn run(&self, task: Task) -> Result<()> {
        self.tx
            .send(Msg::Run(task))
            .map_err(|_| StoreError::WriterStopped)
    }
}

impl AuditWriter {
    /// Moves `store` into a writer thread.
    pub fn start(store: Store) -> Self {
        let (tx, rx) = mpsc::sync_channel::<Msg>(MAX_GROUP);
        let thread = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || write_loop(store, rx))
            .expect("spawning the audit writer thread");
        Self {
            tx: Some(tx),
            thread: Some(thread),
        }
    }

    pub fn sender(&self) -> AuditSender {
        AuditSender {
            tx: self.tx.clone().expect("writer running"),
        }
    }

    /// Stops the thread once every queued event is written; returns the store.
    pub fn stop(mut self) -> Store {
        self.tx.take();
        self.thread
            .take()
            .expect("writer running")
            .join()
            .expect("the audit writer thread panicked")
    }
}

fn write_loop(mut store: Store, rx: Receiver<Msg>) -> Store {
    let mut held: Option<Msg> = None;
    loop {
        let first = match held.take() {
            Some(m) => m,
            None => match rx.recv() {
                Ok(m) => m,
                Err(_) => break,
            },
        };
        let first = match first {
            Msg::Run(task) => {
                task(&mut store);
                continue;
            }
            Msg::Write(w, reply) => (w, reply),
        };
        let mut count = first.0.events.len();
        let mut group = vec![first];
        while count < MAX_GROUP {
            match rx.try_recv() {
                Ok(Msg::Write(w, reply)) => {
                    count += w.events.len();
                    group.push((w, reply))
                }
                Ok(run) => {
                    held = Some(run);
                    break;
                }
                Err(_) => break,
            }
        }
        commit_group(&mut store, group);
    }
    store
}

fn commit_group(store: &mut Store, group: Vec<(Write, Reply)>) {
    let events: Vec<AuditEvent> = group
        .iter()
        .flat_map(|(w, _)| w.events.iter().cloned())
        .collect();
    let jobs: Vec<JobRow> = group
        .iter()
        .flat_map(|(w, _)| w.jobs.iter().cloned())
        .collect();
    let sign = group.iter().any(|(w, _)| w.sign);
    match store.commit(&events, &jobs, sign) {
        Ok(seqs) => {
            let mut seqs = seqs.into_iter();
            for (w, reply) in group {
                let mine: Vec<u64> = seqs.by_ref().take(w.events.len()).collect();
                reply(Ok(mine));
            }
        }
        Err(e) => {
            let text = e.to_string();
            for (_, reply) in group {
                reply(Err(text.clone()));
            }
        }
    }
}
