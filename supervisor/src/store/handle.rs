//! The open store: its connection, signing key and files, and the helpers every part of
//! the store writes through.

use super::error::{Result, StoreError};
use ed25519_dalek::SigningKey;
use rusqlite::Connection;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// When checkpoints are signed: every `every_events` appends, every `every` of time, and
/// when the store is closed.
#[derive(Debug, Clone, Copy)]
pub struct CheckpointPolicy {
    pub every_events: u64,
    pub every: Duration,
}

impl Default for CheckpointPolicy {
    fn default() -> Self {
        Self {
            every_events: 1_000,
            every: Duration::from_secs(10),
        }
    }
}

/// A writer's close moves the WAL into the database once the WAL holds this many bytes
/// (about 128 frames of 4 KiB).
pub const WAL_BOUND_BYTES: u64 = 512 * 1024;

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
    pub(super) fn configure(&self) -> Result<()> {
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
            .map_err(|e| self.sql(e))?;
        // Closing does not checkpoint the WAL into the main file: every commit is already
        // durable in the WAL (`synchronous=FULL`), SQLite's automatic checkpoint moves it
        // over every 1,000 pages, and a short-lived writer (one embedded run) no longer
        // pays two more syncs at its close and a new WAL, with a directory sync, at the
        // next open; its close only bounds the WAL (`bound_wal`). The WAL is part of the
        // store: copy both files, or neither.
        self.conn
            .set_db_config(
                rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
                true,
            )
            .map(drop)
            .map_err(|e| self.sql(e))
    }

    /// Moves the WAL into the database if it has grown past [`WAL_BOUND_BYTES`].
    ///
    /// Every process that opens the store first rebuilds the WAL's index by reading every
    /// frame in it (what an earlier process moved into the database included: that is
    /// recorded only in the shared index, which the first opener starts afresh). So a
    /// long WAL makes every embedded run start slower: about 1.3 µs a frame here, 1.3 ms
    /// at SQLite's automatic checkpoint of 1,000 pages. A short-lived writer's close
    /// bounds it instead, about once in 25 runs: a checkpoint that moves the WAL into the
    /// database and truncates it (two syncs). It waits for nobody: if another process is
    /// reading or writing, it gives up and a later close tries again. Best effort, then:
    /// the events are durable in the WAL whether or not it runs.
    pub(crate) fn bound_wal(&self) {
        let wal = self.path.with_extension("db-wal");
        if !std::fs::metadata(&wal).is_ok_and(|m| m.len() > WAL_BOUND_BYTES) {
            return;
        }
        if self.conn.busy_timeout(Duration::ZERO).is_ok() {
            let _ = self
                .conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        }
        let _ = self.conn.busy_timeout(BUSY_TIMEOUT);
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

    /// Bounds this connection's page cache to `kib` KiB (SQLite's default is 2,000): a
    /// long-lived process keeps what it cached, and pages it reads again come from the
    /// kernel's cache of the file.
    pub fn limit_cache(&self, kib: u32) -> Result<()> {
        self.conn
            .pragma_update(None, "cache_size", -i64::from(kib))
            .map_err(|e| self.sql(e))
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

#[cfg(test)]
mod tests {
    use super::Store;

    #[test]
    fn a_limited_cache_is_what_the_connection_keeps() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            &dir.path().join("covenant.db"),
            &dir.path().join("supervisor.key"),
        )
        .unwrap();
        let cache = |s: &Store| -> i64 {
            s.conn
                .query_row("PRAGMA cache_size", [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(cache(&store), -2000, "SQLite's default");
        store.limit_cache(256).unwrap();
        assert_eq!(cache(&store), -256);
    }
}
