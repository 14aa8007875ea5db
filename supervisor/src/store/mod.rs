//! The store: one SQLite database under `$COVENANT_HOME` holding the audit chain with its
//! signed checkpoints, and the agents' memory. Only this module opens it.
//!
//! WAL mode, `synchronous=FULL`: a write returns only once it is durable. The schema is
//! versioned (`PRAGMA user_version`) and migrated forward on open.

pub mod audit;
mod beside;
pub mod chain;
mod error;
pub mod group;
mod handle;
pub mod jobs;
pub mod kind;
pub mod memory;
mod open;
mod schema;

pub use audit::{record, AuditEvent};
pub use beside::StoreBeside;
pub use chain::{ChainFault, FaultKind};
pub use error::{MemoryError, Result, StoreError};
pub use handle::{store_files, CheckpointPolicy, Store, BUSY_TIMEOUT, WAL_BOUND_BYTES};
pub use kind::Kind;
