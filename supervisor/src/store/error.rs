//! How the store fails: its own errors, and the memory requests it refuses, each naming
//! its field.

use super::chain::ChainFault;
use crate::keys::KeyError;
use std::path::PathBuf;

/// Largest item text accepted.
pub const MAX_TEXT_BYTES: usize = 256 * 1024;
/// Largest metadata accepted (JSON text).
pub const MAX_METADATA_BYTES: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: {error}")]
    Sqlite {
        path: PathBuf,
        error: rusqlite::Error,
    },
    #[error("store {path}: schema version {found} is newer than this build understands ({known})")]
    TooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A memory request the store refuses; it names the field.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error("audit event kind `{0}` must be 1-128 bytes")]
    EventKind(String),
    #[error("row {0} is not a checkpoint; prune up to a checkpointed row (see `audit tail`)")]
    NotACheckpoint(u64),
    #[error("{} is not a recorded head (`SEQ HEXHASH`)", .0.display())]
    BadHead(PathBuf),
    #[error("{} line {line}: {what}", path.display())]
    BadExport {
        path: PathBuf,
        line: usize,
        what: String,
    },
    #[error("the export is signed with another key than the one given")]
    ExportKey,
    #[error("{}: journal mode stays {mode}, WAL is required", path.display())]
    JournalMode { path: PathBuf, mode: String },
    #[error("the audit writer has stopped")]
    WriterStopped,
    /// The group-commit writer's own failure, as it reported it.
    #[error("{0}")]
    Writer(String),
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("audit chain: {0}")]
    Chain(ChainFault),
    /// Asked again after opening failed: the first failure, as it was reported.
    #[error("the store could not be opened: {0}")]
    NotOpened(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// A memory request the store refuses: bad input, each naming its field.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("tier `{0}` is not one of working, episodic, long-term")]
    Tier(String),
    #[error("namespace `{0}`: 1-128 of letters, digits, `-_./`")]
    Namespace(String),
    #[error("text: {0} bytes; an item holds 1 to {max}", max = MAX_TEXT_BYTES)]
    TextSize(usize),
    #[error("metadata: {0} bytes; at most {max}", max = MAX_METADATA_BYTES)]
    MetadataSize(usize),
    #[error("metadata is not valid JSON: {0}")]
    MetadataJson(String),
    #[error("metadata must be a JSON object")]
    MetadataNotObject,
    #[error("parent: no item `{0}`")]
    NoParent(String),
    #[error("query: give at least one word")]
    EmptyQuery,
}

impl MemoryError {
    /// The request field at fault.
    pub fn field(&self) -> &'static str {
        match self {
            MemoryError::Tier(_) => "tier",
            MemoryError::Namespace(_) => "namespace",
            MemoryError::TextSize(_) => "text",
            MemoryError::MetadataSize(_)
            | MemoryError::MetadataJson(_)
            | MemoryError::MetadataNotObject => "metadata",
            MemoryError::NoParent(_) => "parent",
            MemoryError::EmptyQuery => "q",
        }
    }
}
