//! Group commit for writers in one process: callers hand events to one writer thread,
//! which commits whatever has queued up in a single transaction (one `fsync`) and then
//! answers each caller. A caller is answered only after its event is durable.

use super::{AuditEvent, Result, Store, StoreError};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;

/// Most events committed in one transaction.
pub const MAX_GROUP: usize = 4_096;

type Reply = SyncSender<std::result::Result<u64, String>>;

/// A handle to the writer thread; clone the sender side with [`AuditWriter::sender`].
pub struct AuditWriter {
    tx: Option<SyncSender<(AuditEvent, Reply)>>,
    thread: Option<JoinHandle<Store>>,
}

/// Submits events to an [`AuditWriter`] from any thread.
#[derive(Clone)]
pub struct AuditSender {
    tx: SyncSender<(AuditEvent, Reply)>,
}

impl AuditSender {
    /// Appends `event` and waits until it is durable; returns its sequence number.
    pub fn append(&self, event: AuditEvent) -> Result<u64> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.tx
            .send((event, reply))
            .map_err(|_| StoreError::Invalid("the audit writer has stopped".into()))?;
        answer
            .recv()
            .map_err(|_| StoreError::Invalid("the audit writer has stopped".into()))?
            .map_err(StoreError::Invalid)
    }
}

impl AuditWriter {
    /// Moves `store` into a writer thread.
    pub fn start(store: Store) -> Self {
        let (tx, rx) = mpsc::sync_channel::<(AuditEvent, Reply)>(MAX_GROUP);
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

fn write_loop(mut store: Store, rx: Receiver<(AuditEvent, Reply)>) -> Store {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        let events: Vec<AuditEvent> = group.iter().map(|(e, _)| e.clone()).collect();
        match store.append_batch(&events) {
            Ok(seqs) => {
                for ((_, reply), seq) in group.into_iter().zip(seqs) {
                    let _ = reply.send(Ok(seq));
                }
            }
            Err(e) => {
                let text = e.to_string();
                for (_, reply) in group {
                    let _ = reply.send(Err(text.clone()));
                }
            }
        }
    }
    store
}
