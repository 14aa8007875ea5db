//! Bounds on the client connections the daemon holds open: per caller (a uid on the
//! operator socket, the TCP identity, one job's agent) and in total. Every connection is
//! a descriptor; without these bounds one caller can take the descriptors every other
//! client and every job needs. A few connections past the total are kept for admins, so
//! root can always reach a daemon that others have filled.
//!
//! A connection beyond its bound is accepted and closed at once: the peer sees EOF.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// Connections past the total that only admins may open.
pub const ADMIN_RESERVE: usize = 32;

/// Who holds a connection, for counting.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Peer {
    Uid(u32),
    Tcp,
    Agent(String),
}

/// The bounds, from the daemon's configuration.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub per_caller: usize,
    pub per_agent: usize,
    pub total: usize,
}

/// Why a connection was closed unanswered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The caller holds its bound of connections.
    PerCaller(usize),
    /// The daemon holds its total (for admins: its total and the reserve).
    Total(usize),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::PerCaller(n) => write!(f, "the caller already holds {n} connections"),
            Refused::Total(n) => write!(f, "the daemon already holds {n} connections"),
        }
    }
}

#[derive(Default)]
struct Counts {
    by_peer: HashMap<Peer, usize>,
    total: usize,
}

pub struct Connections {
    bounds: Bounds,
    counts: Mutex<Counts>,
}

/// One open connection; dropping it gives the place back.
pub struct Slot {
    owner: Arc<Connections>,
    peer: Peer,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.owner.counts();
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.by_peer.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.by_peer.remove(&self.peer);
            }
        }
    }
}

impl Connections {
    pub fn new(bounds: Bounds) -> Arc<Self> {
        Arc::new(Connections {
            bounds,
            counts: Mutex::new(Counts::default()),
        })
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A place for one more connection of `peer`, or why there is none. An admin is not
    /// held to the per-caller bound and may use the reserve past the total.
    pub fn admit(self: &Arc<Self>, peer: Peer, admin: bool) -> Result<Slot, Refused> {
        let mut c = self.counts();
        let per = match peer {
            Peer::Agent(_) => self.bounds.per_agent,
            Peer::Uid(_) | Peer::Tcp => self.bounds.per_caller,
        };
        let mine = c.by_peer.get(&peer).copied().unwrap_or(0);
        if !admin && mine >= per {
            return Err(Refused::PerCaller(mine));
        }
        let total = self.bounds.total + if admin { ADMIN_RESERVE } else { 0 };
        if c.total >= total {
            return Err(Refused::Total(c.total));
        }
        c.total += 1;
        *c.by_peer.entry(peer.clone()).or_default() += 1;
        Ok(Slot {
            owner: self.clone(),
            peer,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.counts().total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_per_caller_total_and_the_admin_reserve() {
        let c = Connections::new(Bounds {
            per_caller: 2,
            per_agent: 1,
            total: 4,
        });
        let a1 = c.admit(Peer::Uid(1000), false).unwrap();
        let _a2 = c.admit(Peer::Uid(1000), false).unwrap();
        assert_eq!(
            c.admit(Peer::Uid(1000), false).err(),
            Some(Refused::PerCaller(2))
        );
        let _j = c.admit(Peer::Agent("job-1".into()), false).unwrap();
        assert!(c.admit(Peer::Agent("job-1".into()), false).is_err());
        let _b = c.admit(Peer::Uid(1001), false).unwrap();
        assert_eq!(c.admit(Peer::Tcp, false).err(), Some(Refused::Total(4)));
        // Root gets in past the total, up to the reserve.
        let root: Vec<Slot> = (0..ADMIN_RESERVE)
            .map(|_| c.admit(Peer::Uid(0), true).unwrap())
            .collect();
        assert!(c.admit(Peer::Uid(0), true).is_err());
        drop(root);
        drop(a1);
        assert_eq!(c.open(), 3);
        c.admit(Peer::Uid(1000), false).unwrap();
    }
}
