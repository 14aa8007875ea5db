//! The jobs' side of the agent socket: what an agent may ask about its own job and
//! lineage (its grant, its children), and the budgets its writes and refusals spend. The
//! agent socket reaches job state only through these functions.

use super::api::ApiError;
use super::state::{event, Daemon, Lineage, State};
use crate::store::AuditEvent;
use crate::store::Kind;
use covenant_policy::Scope;
use serde_json::json;

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
    events.push(event(Kind::AgentSocketClosed, id, json!({"reason": why})));
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
