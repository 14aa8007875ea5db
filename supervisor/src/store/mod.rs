//! The store: one SQLite database under `$COVENANT_HOME` holding the audit chain with its
//! signed checkpoints, and the agents' memory. Only this module opens it.
//!
//! WAL mode, `synchronous=FULL`: a write returns only once it is durable. The schema is
//! versioned (`PRAGMA user_version`) and migrated forward on open.

pub mod audit;
pub mod chain;
pub mod group;
pub mod jobs;
pub mod kind;
pub mod memory;
mod schema;

use crate::home::covenant_home;
use crate::keys::{self, KeyError};
use ed25519_dalek::SigningKey;
use rusqlite::Connection;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use audit::{AuditEvent, CheckpointPolicy};
pub use chain::{ChainFault, FaultKind};
pub use kind::Kind;

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
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// A memory request the store refuses: bad input, each naming its field.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("tier `{0}` is not one of working, episodic, long-term")]
    Tier(String),
    #[error("namespace `{0}`: 1-128 of letters, digits, `-_./`")]
    Namespace(String),
    #[error("text: {0} bytes; an item holds 1 to {max}", max = memory::MAX_TEXT_BYTES)]
    TextSize(usize),
    #[error("metadata: {0} bytes; at most {max}", max = memory::MAX_METADATA_BYTES)]
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

/// How long a writer waits for another process's write lock before giving up.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// An open store.
pub struct Store {
    pub(crate) conn: Connection,
    pub(crate) path: PathBuf,
    pub(crate) key: SigningKey,
    pub(crate) head_file: PathBuf,
    pub(crate) policy: CheckpointPolicy,
    pub(crate) since_checkpoint: u64,
    pub(crate) last_checkpoint: std::time::Instant,
    /// A reader never writes: no closing checkpoint, so verification sees the file as is.
    pub(crate) writer: bool,
}

impl Store {
    /// The default store: `$COVENANT_HOME/covenant.db`, signing with
    /// `$COVENANT_HOME/supervisor.key` (created on first use).
    pub fn open_default() -> Result<Self> {
        let home = covenant_home();
        Self::open(&home.join("covenant.db"), &home.join("supervisor.key"))
    }

    /// The default store, opened to read only (`audit verify`, `tail`, `show`, `export`):
    /// it writes nothing, not even a closing checkpoint.
    pub fn open_default_reader() -> Result<Self> {
        let home = covenant_home();
        Self::open_reader(&home.join("covenant.db"), &home.join("supervisor.key"))
    }

    /// The store at `path`, opened to read only: it writes nothing, not even a closing
    /// checkpoint.
    pub fn open_reader(path: &Path, key_path: &Path) -> Result<Self> {
        let mut store = Self::open(path, key_path)?;
        store.writer = false;
        Ok(store)
    }

    /// The events that record a writer opening the store; rows not covered by a checkpoint at that
    /// moment (a writer crashed, or another one is running) are named in a
    /// `store.recovered` event before the closing checkpoint adopts them.
    pub fn opening_events(&self, who: &str) -> Result<Vec<AuditEvent>> {
        let last: Option<i64> = self
            .conn
            .query_row("SELECT max(seq) FROM audit", [], |r| r.get(0))
            .map_err(|e| self.sql(e))?;
        let signed: Option<i64> = self
            .conn
            .query_row("SELECT max(seq) FROM checkpoints", [], |r| r.get(0))
            .map_err(|e| self.sql(e))?;
        let pid = std::process::id();
        let mut events = vec![AuditEvent::new(
            Kind::StoreOpened,
            serde_json::json!({"by": who, "pid": pid}),
        )];
        if let (Some(last), signed) = (last, signed.unwrap_or(0)) {
            if last > signed {
                events.push(AuditEvent::new(
                    Kind::StoreRecovered,
                    serde_json::json!({"unsigned_from": signed + 1, "unsigned_to": last, "pid": pid}),
                ));
            }
        }
        Ok(events)
    }

    /// Records the close, with `events` before it, and signs the head in the same commit.
    pub fn close(mut self, events: Vec<AuditEvent>) -> Result<()> {
        let mut events = events;
        events.push(AuditEvent::new(
            Kind::StoreClosed,
            serde_json::json!({"pid": std::process::id()}),
        ));
        self.append_batch_signed(&events, true).map(|_| ())
    }

    /// Opens (creating and migrating as needed) the store at `path`.
    pub fn open(path: &Path, key_path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|error| StoreError::Io {
                path: dir.to_path_buf(),
                error,
            })?;
        }
        let key = load_or_create_key(key_path)?;
        create_private(path)?;
        let conn = Connection::open(path).map_err(|error| StoreError::Sqlite {
            path: path.to_path_buf(),
            error,
        })?;
        let mut store = Store {
            conn,
            path: path.to_path_buf(),
            key,
            head_file: path.with_extension("head"),
            policy: CheckpointPolicy::default(),
            since_checkpoint: 0,
            last_checkpoint: std::time::Instant::now(),
            writer: true,
        };
        store.configure()?;
        schema::migrate(&mut store)?;
        Ok(store)
    }

    fn configure(&self) -> Result<()> {
        self.conn
            .busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| self.sql(e))?;
        // WAL is a property of the file, set once. Switching to it needs every other
        // connection out of the way, and SQLite answers "busy" at once instead of waiting
        // when several processes open a new store together, so this waits itself.
        let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
        loop {
            let mode: std::result::Result<String, _> =
                self.conn.query_row("PRAGMA journal_mode", [], |r| r.get(0));
            match mode {
                Ok(m) if m.eq_ignore_ascii_case("wal") => break,
                _ => {}
            }
            match self
                .conn
                .query_row("PRAGMA journal_mode=WAL", [], |r| r.get::<_, String>(0))
            {
                Ok(m) if m.eq_ignore_ascii_case("wal") => break,
                Err(rusqlite::Error::SqliteFailure(e, _))
                    if e.code == rusqlite::ErrorCode::DatabaseBusy
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Ok(m) => {
                    return Err(StoreError::JournalMode {
                        path: self.path.clone(),
                        mode: m,
                    })
                }
                Err(e) => return Err(self.sql(e)),
            }
        }
        self.conn
            .execute_batch("PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;")
            .map_err(|e| self.sql(e))
    }

    /// A write transaction on `conn` (IMMEDIATE: it waits its turn for the write lock),
    /// and the mapper that names the store's file in an SQLite error.
    pub(crate) fn write_tx<'a>(
        conn: &'a mut Connection,
        path: &'a Path,
    ) -> Result<(
        rusqlite::Transaction<'a>,
        impl Fn(rusqlite::Error) -> StoreError + Copy + 'a,
    )> {
        let sql = move |error| StoreError::Sqlite {
            path: path.to_path_buf(),
            error,
        };
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(sql)?;
        Ok((tx, sql))
    }

    pub(crate) fn sql(&self, error: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.clone(),
            error,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The public half of the key that signs checkpoints.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// Size of the database file and its WAL, in bytes.
    pub fn size_bytes(&self) -> u64 {
        let wal = self.path.with_extension("db-wal");
        [&self.path, &wal]
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum()
    }
}

/// The database file and the files SQLite and the store keep beside it.
pub fn store_files(db: &Path) -> [PathBuf; 5] {
    [
        db.to_path_buf(),
        db.with_extension("db-wal"),
        db.with_extension("db-shm"),
        db.with_extension("head"),
        db.with_extension("head.lock"),
    ]
}

/// Creates the database file 0600 if it does not exist, before SQLite opens it: SQLite
/// gives its `-wal` and `-shm` files the database file's mode, so all three are private
/// from the moment they exist. Files an older build left readable by others are
/// tightened to their owner.
fn create_private(db: &Path) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |error| StoreError::Io { path, error }
    };
    // Only a file that does not exist yet is opened here. Closing any descriptor of the
    // database drops every POSIX lock this process holds on it, the SQLite connections'
    // own included, so an existing file is never opened outside SQLite.
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(db)
    {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io(db)(e)),
    }
    for file in store_files(db) {
        let meta = match std::fs::symlink_metadata(&file) {
            Ok(m) if m.file_type().is_file() => m,
            _ => continue,
        };
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode & 0o700))
                .map_err(io(&file))?;
        }
    }
    Ok(())
}

/// Appends one event to the default store (key, trust and capability changes).
pub fn record(kind: Kind, body: serde_json::Value) -> Result<u64> {
    let mut store = Store::open_default()?;
    let mut body = body;
    // SAFETY: getuid has no failure mode.
    body["uid"] = serde_json::Value::from(unsafe { libc::getuid() });
    store.append(&AuditEvent::new(kind, body))
}

fn load_or_create_key(path: &Path) -> Result<SigningKey> {
    Ok(keys::key_created_on_first_use(path)?)
}

impl Drop for Store {
    fn drop(&mut self) {
        if self.writer {
            let _ = self.close_checkpoint();
        }
    }
}
