//! The node's audit trail for containers: when the runtime policy sets `audit = true`,
//! `create` (made or refused), `start`, `kill` and `delete` are appended to the node's
//! store through the supervisor's library (the only code that opens it). A node that
//! asks for audit gets no unaudited action: a store that cannot be written fails the
//! command before it acts.

use crate::error::RuntimeError;
use crate::policy::RuntimePolicy;
use covenant_policy::Grant;
use covenant_supervisor::store::{self, Kind};
use serde_json::Value;

/// Appends one event if the node audits; an error if it does and the store refuses.
pub fn record(policy: &RuntimePolicy, kind: Kind, body: Value) -> Result<(), RuntimeError> {
    if !policy.audit {
        return Ok(());
    }
    if let Some(home) = &policy.store_home {
        // Single-threaded: nothing reads the environment concurrently.
        std::env::set_var("COVENANT_HOME", home);
    }
    store::record(kind, body)
        .map(|_| ())
        .map_err(|e| RuntimeError::Audit(e.to_string()))
}

/// What an event says about the capability a container carried.
pub fn describe_grant(grant: Option<&Grant>) -> Value {
    match grant {
        None => Value::Null,
        Some(g) => serde_json::json!({
            "chain": g.chain_ids.iter().map(covenant_policy::token::id_text).collect::<Vec<_>>(),
            "subject": format!("{:?}", g.subject),
            "scopes": g.scopes.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            "expires": g.expires,
        }),
    }
}
