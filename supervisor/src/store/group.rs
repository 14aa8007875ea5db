//! Group commit for writers in one process: callers hand events to one writer thread,
//! which commits whatever has queued up in a single transaction (one `fsync`) and then
//! answers each caller. A caller is answered only after its event is durable.

use super::jobs::JobRow;
use super::{AuditEvent, Result, Store, StoreError};
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

/// A handle to the writer thread; clone the sender side with [`AuditWriter::sender`].
pub struct AuditWriter {
    tx: Option<SyncSender<(Write, Reply)>>,
    thread: Option<JoinHandle<Store>>,
}

/// Submits events to an [`AuditWriter`] from any thread.
#[derive(Clone)]
pub struct AuditSender {
    tx: SyncSender<(Write, Reply)>,
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
            .map_err(|_| StoreError::Invalid("the audit writer has stopped".into()))?
            .map_err(StoreError::Invalid)
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
            .send((Write { events, jobs, sign }, reply))
            .map_err(|_| StoreError::Invalid("the audit writer has stopped".into()))
    }
}

impl AuditWriter {
    /// Moves `store` into a writer thread.
    pub fn start(store: Store) -> Self {
        let (tx, rx) = mpsc::sync_channel::<(Write, Reply)>(MAX_GROUP);
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

fn write_loop(mut store: Store, rx: Receiver<(Write, Reply)>) -> Store {
    while let Ok(first) = rx.recv() {
        let mut count = first.0.events.len();
        let mut group = vec![first];
        while count < MAX_GROUP {
            match rx.try_recv() {
                Ok(next) => {
                    count += next.0.events.len();
                    group.push(next)
                }
                Err(_) => break,
            }
        }
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
    store
}
