//! Schema migrations, applied in order inside one transaction each. `PRAGMA user_version`
//! is the number of migrations applied.

use super::error::{Result, StoreError};
use super::handle::Store;

const MIGRATIONS: &[&str] = &[
    // 1: audit chain, checkpoints, prune markers, memory with full-text search.
    r#"
    CREATE TABLE audit (
        seq       INTEGER PRIMARY KEY,
        time_ms   INTEGER NOT NULL,
        kind      TEXT    NOT NULL,
        body      TEXT    NOT NULL,
        prev_hash BLOB    NOT NULL CHECK (length(prev_hash) = 32),
        hash      BLOB    NOT NULL CHECK (length(hash) = 32)
    );
    CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
        BEGIN SELECT RAISE(ABORT, 'audit rows are append-only'); END;
    CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
        BEGIN SELECT RAISE(ABORT, 'audit rows are append-only'); END;
    CREATE TABLE checkpoints (
        seq        INTEGER PRIMARY KEY,
        head_hash  BLOB    NOT NULL,
        time_ms    INTEGER NOT NULL,
        public_key BLOB    NOT NULL,
        signature  BLOB    NOT NULL
    );
    CREATE TRIGGER checkpoints_no_update BEFORE UPDATE ON checkpoints
        BEGIN SELECT RAISE(ABORT, 'checkpoints are append-only'); END;
    CREATE TRIGGER checkpoints_no_delete BEFORE DELETE ON checkpoints
        BEGIN SELECT RAISE(ABORT, 'checkpoints are append-only'); END;
    CREATE TABLE prune_markers (
        up_to      INTEGER PRIMARY KEY,
        head_hash  BLOB    NOT NULL,
        time_ms    INTEGER NOT NULL,
        public_key BLOB    NOT NULL,
        signature  BLOB    NOT NULL
    );
    CREATE TABLE memory_items (
        rowid      INTEGER PRIMARY KEY,
        id         TEXT    NOT NULL UNIQUE,
        namespace  TEXT    NOT NULL,
        tier       TEXT    NOT NULL CHECK (tier IN ('working', 'episodic', 'long-term')),
        text       TEXT    NOT NULL,
        metadata   TEXT    NOT NULL,
        created_ms INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL,
        parent     TEXT    REFERENCES memory_items(id) ON DELETE SET NULL
    );
    CREATE INDEX memory_by_namespace ON memory_items(namespace, tier, updated_ms);
    CREATE VIRTUAL TABLE memory_fts USING fts5(text, content='memory_items', content_rowid='rowid');
    CREATE TRIGGER memory_fts_insert AFTER INSERT ON memory_items BEGIN
        INSERT INTO memory_fts(rowid, text) VALUES (new.rowid, new.text);
    END;
    CREATE TRIGGER memory_fts_delete AFTER DELETE ON memory_items BEGIN
        INSERT INTO memory_fts(memory_fts, rowid, text) VALUES ('delete', old.rowid, old.text);
    END;
    CREATE TRIGGER memory_fts_update AFTER UPDATE ON memory_items BEGIN
        INSERT INTO memory_fts(memory_fts, rowid, text) VALUES ('delete', old.rowid, old.text);
        INSERT INTO memory_fts(rowid, text) VALUES (new.rowid, new.text);
    END;
    "#,
    // 2: the daemon's jobs: mutable state beside the append-only chain, so a restarted
    // daemon finds every job it was running.
    r#"
    CREATE TABLE jobs (
        id           TEXT    PRIMARY KEY,
        state        TEXT    NOT NULL,
        subject      TEXT    NOT NULL,
        caller_uid   INTEGER,
        caller_pid   INTEGER,
        runner       TEXT    NOT NULL,
        parent       TEXT,
        argv         TEXT    NOT NULL,
        submitted_ms INTEGER NOT NULL,
        started_ms   INTEGER,
        ended_ms     INTEGER,
        shim_pid     INTEGER,
        exit_code    INTEGER,
        reason       TEXT,
        report       TEXT
    );
    CREATE INDEX jobs_by_state ON jobs(state);
    "#,
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

pub(super) fn migrate(store: &mut Store) -> Result<()> {
    let path = store.path.clone();
    let (tx, sql) = Store::write_tx(&mut store.conn, &path)?;
    let version: i64 = tx
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(sql)?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            path: path.clone(),
            found: version,
            known: SCHEMA_VERSION,
        });
    }
    for (i, migration) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.execute_batch(migration).map_err(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)
            .map_err(sql)?;
    }
    tx.commit().map_err(sql)
}
