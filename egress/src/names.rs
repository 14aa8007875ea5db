//! The names the gateway has answered in this run. Every (name, upstream address) pair an
//! answer carries gets a stand-in address from a private pool, and the sandbox only ever
//! sees stand-ins: a connection to one says, by its address alone, which name it was
//! resolved for and where it really goes. An IP literal the gateway never handed out
//! reaches nothing, and two names behind one CDN address stay two destinations, so an
//! allowed SNI sent to another name's address (domain fronting) does not match.

use covenant_policy::egress::Cidr;
use std::collections::HashMap;
use std::net::Ipv4Addr;

/// Where stand-in addresses come from: the benchmarking range (RFC 2544), never routed on
/// the internet, so a stand-in cannot be mistaken for a real host.
pub const STANDIN_POOL: Cidr = Cidr {
    addr: Ipv4Addr::new(198, 18, 0, 0),
    prefix: 15,
};

/// One answered pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answered {
    pub name: String,
    pub upstream: Ipv4Addr,
}

/// The table of stand-ins, bounded: when it is full, new names are refused (the run keeps
/// every name it was already given).
#[derive(Debug)]
pub struct NameTable {
    by_standin: HashMap<Ipv4Addr, Answered>,
    by_pair: HashMap<(String, Ipv4Addr), Ipv4Addr>,
    next: u32,
    capacity: usize,
}

impl NameTable {
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.min((1usize << (32 - STANDIN_POOL.prefix)) - 2);
        NameTable {
            by_standin: HashMap::new(),
            by_pair: HashMap::new(),
            next: u32::from(STANDIN_POOL.addr) + 1,
            capacity,
        }
    }

    /// The stand-in for `name` at `upstream`, made on first use; `None` when the table is
    /// full.
    pub fn standin_for(&mut self, name: &str, upstream: Ipv4Addr) -> Option<Ipv4Addr> {
        if let Some(s) = self.by_pair.get(&(name.to_string(), upstream)) {
            return Some(*s);
        }
        if self.by_standin.len() >= self.capacity {
            return None;
        }
        let standin = Ipv4Addr::from(self.next);
        self.next += 1;
        self.by_pair.insert((name.to_string(), upstream), standin);
        self.by_standin.insert(
            standin,
            Answered {
                name: name.to_string(),
                upstream,
            },
        );
        Some(standin)
    }

    /// What a stand-in stands for, if the gateway handed it out.
    pub fn lookup(&self, standin: Ipv4Addr) -> Option<&Answered> {
        self.by_standin.get(&standin)
    }

    pub fn len(&self) -> usize {
        self.by_standin.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_standin.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_get_distinct_stable_standins_and_the_table_is_bounded() {
        let mut t = NameTable::new(2);
        let up = Ipv4Addr::new(127, 77, 0, 10);
        let a = t.standin_for("a.test", up).unwrap();
        let b = t.standin_for("b.test", up).unwrap();
        assert_ne!(a, b);
        assert_eq!(t.standin_for("a.test", up), Some(a));
        assert!(STANDIN_POOL.contains(a) && STANDIN_POOL.contains(b));
        assert_eq!(t.lookup(b).unwrap().name, "b.test");
        assert_eq!(t.standin_for("c.test", up), None);
        assert_eq!(t.lookup(Ipv4Addr::new(198, 18, 9, 9)), None);
    }
}
