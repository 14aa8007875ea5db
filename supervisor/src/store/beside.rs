//! The default store, opened on a thread of its own while the caller goes on.
//!
//! Opening the store is most of an embedded run's own start: SQLite reads the schema and
//! rebuilds the WAL's index by reading every frame the last checkpoint left, and the key
//! is loaded. None of the run's preparation (compiling and authorising the request,
//! staging its host paths, writing its bundle) needs the store, so the store opens beside
//! it. The run waits for it ([`StoreBeside::wait`]) before its sandbox is made: a store
//! that cannot be opened refuses the run before anything runs, as before, and the process
//! is back to one thread before it forks.

use super::audit::AuditEvent;
use super::error::{Result, StoreError};
use super::handle::Store;
use std::thread::JoinHandle;

type Opened = Result<(Store, Vec<AuditEvent>)>;

/// The store being opened, then open (or not).
pub struct StoreBeside {
    state: State,
}

enum State {
    Opening(JoinHandle<Opened>),
    Open {
        /// Boxed: a `Store` is large beside the other states.
        store: Box<Store>,
        /// The store's opening events, written ahead of the first batch.
        opening: Vec<AuditEvent>,
    },
    /// Opening failed; the caller had the error, and later calls its text.
    Failed(String),
}

impl StoreBeside {
    /// Starts opening the default store; `who` names the opener in its `store.opened`
    /// event.
    pub fn open_default(who: &'static str) -> Self {
        let open = move || -> Opened {
            let store = Store::open_default()?;
            let events = store.opening_events(who)?;
            Ok((store, events))
        };
        let mut beside = Self {
            state: State::Failed(String::new()),
        };
        match std::thread::Builder::new()
            .name("store-open".into())
            .spawn(open)
        {
            Ok(handle) => beside.state = State::Opening(handle),
            // No thread to be had: opened here and now, its error kept for `wait`.
            Err(_) => {
                beside.settle(open());
            }
        }
        beside
    }

    fn settle(&mut self, opened: Opened) -> Option<StoreError> {
        match opened {
            Ok((store, opening)) => {
                self.state = State::Open {
                    store: Box::new(store),
                    opening,
                };
                None
            }
            Err(e) => {
                self.state = State::Failed(e.to_string());
                Some(e)
            }
        }
    }

    /// Waits until the store is open. When this returns, the thread that opened it has
    /// ended.
    pub fn wait(&mut self) -> Result<&mut Store> {
        if matches!(self.state, State::Opening(_)) {
            let State::Opening(handle) =
                std::mem::replace(&mut self.state, State::Failed(String::new()))
            else {
                unreachable!("matched above");
            };
            let opened = match handle.join() {
                Ok(opened) => opened,
                Err(panic) => std::panic::resume_unwind(panic),
            };
            if let Some(e) = self.settle(opened) {
                return Err(e);
            }
        }
        match &mut self.state {
            State::Open { store, .. } => Ok(&mut **store),
            State::Failed(why) => Err(StoreError::NotOpened(why.clone())),
            State::Opening(_) => unreachable!("joined above"),
        }
    }

    /// Appends `events` in one commit, the store's opening events ahead of the first
    /// batch. An empty batch only waits for the store.
    pub fn append_batch(&mut self, events: Vec<AuditEvent>) -> Result<()> {
        self.wait()?;
        let State::Open { store, opening } = &mut self.state else {
            unreachable!("open once waited for");
        };
        if events.is_empty() {
            return Ok(());
        }
        let mut batch = std::mem::take(opening);
        batch.extend(events);
        store.append_batch(&batch).map(drop)
    }

    /// Records the close, with `events` (after the opening events, if nothing was
    /// written yet) before it.
    pub fn close(mut self, events: Vec<AuditEvent>) -> Result<()> {
        self.wait()?;
        let State::Open { store, mut opening } = self.state else {
            unreachable!("open once waited for");
        };
        opening.extend(events);
        store.close(opening)
    }
}
