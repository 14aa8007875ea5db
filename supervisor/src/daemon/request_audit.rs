//! Operator requests in the audit log. A request that changed something (a submission,
//! a kill, a memory write or removal) is one row with its caller. Reads, stdin chunks and
//! refusals are counted per caller and written as one `api.requests` summary row per
//! caller now and then, and when the daemon stops: a client asking as fast as it can
//! must not write rows as fast, or any member of the socket's group could fill the disk.

use super::jobs::Caller;
use crate::store::AuditEvent;
use hyper::Method;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

/// Most distinct callers tallied between two summaries; the rest are counted together.
const MAX_CALLERS: usize = 4096;

/// Whether a request is audited on its own row: it succeeded and changed something.
pub fn audited_alone(method: &Method, path: &str, status: u16) -> bool {
    (200..300).contains(&status) && *method != Method::GET && !path.ends_with("/stdin")
}

#[derive(Default)]
struct CallerTally {
    caller: Value,
    /// `METHOD STATUS` to how many.
    counts: BTreeMap<String, u64>,
}

/// Counts of the requests not audited alone, by caller.
#[derive(Default)]
pub struct RequestTally {
    callers: Mutex<BTreeMap<String, CallerTally>>,
}

fn caller_key(caller: &Caller) -> (String, Value) {
    match caller {
        Caller::Unix { uid, .. } => (format!("unix:{uid}"), json!({"via": "unix", "uid": uid})),
        Caller::Tcp { .. } => ("tcp".into(), json!({"via": "tcp"})),
        Caller::Agent { job } => (
            format!("agent:{job}"),
            json!({"via": "agent-socket", "job": job}),
        ),
    }
}

impl RequestTally {
    /// Counts one request of `caller` answered with `status`.
    pub fn count(&self, caller: &Caller, method: &Method, status: u16) {
        let (mut key, mut who) = caller_key(caller);
        let mut callers = self.callers.lock().unwrap_or_else(PoisonError::into_inner);
        if !callers.contains_key(&key) && callers.len() >= MAX_CALLERS {
            (key, who) = ("others".into(), json!({"via": "others"}));
        }
        let tally = callers.entry(key).or_insert_with(|| CallerTally {
            caller: who,
            counts: BTreeMap::new(),
        });
        *tally
            .counts
            .entry(format!("{} {status}", method.as_str()))
            .or_default() += 1;
    }

    /// One `api.requests` row per caller counted since the last call.
    pub fn take_summaries(&self) -> Vec<AuditEvent> {
        let callers =
            std::mem::take(&mut *self.callers.lock().unwrap_or_else(PoisonError::into_inner));
        callers
            .into_values()
            .map(|t| {
                let total: u64 = t.counts.values().sum();
                AuditEvent::new(
                    "api.requests",
                    json!({"caller": t.caller, "requests": total, "by_status": t.counts}),
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_reads_is_one_row_per_caller_and_writes_stay_alone() {
        let tally = RequestTally::default();
        let a = Caller::Unix {
            uid: 1000,
            gid: 1000,
            pid: Some(7),
            admin: false,
        };
        let b = Caller::Unix {
            uid: 1001,
            gid: 1001,
            pid: Some(8),
            admin: false,
        };
        for _ in 0..10_000 {
            tally.count(&a, &Method::GET, 404);
        }
        tally.count(&a, &Method::GET, 200);
        tally.count(&b, &Method::POST, 403);
        let rows = tally.take_summaries();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].body["requests"], 10_001);
        assert_eq!(rows[0].body["by_status"]["GET 404"], 10_000);
        assert_eq!(rows[1].body["by_status"]["POST 403"], 1);
        assert!(tally.take_summaries().is_empty());
        assert!(audited_alone(&Method::POST, "/v1/jobs", 201));
        assert!(audited_alone(&Method::DELETE, "/v1/mem/x", 200));
        assert!(!audited_alone(&Method::POST, "/v1/jobs/j/stdin", 204));
        assert!(!audited_alone(&Method::POST, "/v1/jobs", 429));
        assert!(!audited_alone(&Method::GET, "/v1/jobs", 200));
    }

    #[test]
    fn distinct_callers_beyond_the_bound_are_counted_together() {
        let tally = RequestTally::default();
        for uid in 0..(MAX_CALLERS as u32 + 100) {
            let c = Caller::Unix {
                uid,
                gid: uid,
                pid: Some(1),
                admin: false,
            };
            tally.count(&c, &Method::GET, 200);
        }
        let rows = tally.take_summaries();
        assert_eq!(rows.len(), MAX_CALLERS + 1);
        let others = rows
            .iter()
            .find(|r| r.body["caller"]["via"] == "others")
            .unwrap();
        assert_eq!(others.body["requests"], 100);
    }
}
