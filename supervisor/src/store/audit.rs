//! Appending to the audit chain, checkpoints, reading, export, verification and pruning.
//!
//! Each append runs in an `IMMEDIATE` transaction: it takes the database's write lock,
//! reads the head, and writes the next row, so writers in several processes still make
//! one linear chain. [`Store::append_batch`] commits many events with one `fsync` (group
//! commit); nothing is acknowledged before its commit is durable.

use super::chain::{
    self, event_hash, AuditRow, ChainFault, ChainInput, ChainSummary, Checkpoint, GENESIS,
};
use super::error::{Result, StoreError};
use super::handle::{CheckpointPolicy, Store};
use super::kind::Kind;
use rusqlite::{params, OptionalExtension, Transaction};
use serde::Serialize;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Instant;

/// The versioned list of event kinds is in `docs/audit.md`.
pub const EVENT_KINDS_VERSION: u32 = 1;

/// One event to append: a [`Kind`] (or an agent's own `agent.KIND`) and a JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    pub kind: String,
    pub body: serde_json::Value,
}

impl AuditEvent {
    pub fn new(kind: Kind, body: serde_json::Value) -> Self {
        Self {
            kind: kind.as_str().to_string(),
            body,
        }
    }

    /// An event an agent wrote through `agent:audit`: its kind is `agent.` and the
    /// agent's own name, which the caller has checked (1-64 of letters, digits, `-_.`).
    pub fn by_agent(kind: &str, body: serde_json::Value) -> Self {
        Self {
            kind: format!("agent.{kind}"),
            body,
        }
    }
}

/// `value` as an event body. Covenant's own types always serialise; were one ever not
/// to, the event would say so instead of carrying `null`.
pub fn body_of<T: serde::Serialize + ?Sized>(value: &T) -> serde_json::Value {
    serde_json::to_value(value)
        .unwrap_or_else(|e| serde_json::json!({"unserialisable": e.to_string()}))
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn to_hash(v: Vec<u8>) -> [u8; 32] {
    v.try_into().unwrap_or([0xff; 32])
}

fn row_from(r: &rusqlite::Row<'_>) -> rusqlite::Result<AuditRow> {
    Ok(AuditRow {
        seq: r.get::<_, i64>(0)? as u64,
        time_ms: r.get(1)?,
        kind: r.get(2)?,
        body: r.get(3)?,
        prev_hash: to_hash(r.get(4)?),
        hash: to_hash(r.get(5)?),
    })
}

fn checkpoint_from(r: &rusqlite::Row<'_>) -> rusqlite::Result<Checkpoint> {
    Ok(Checkpoint {
        seq: r.get::<_, i64>(0)? as u64,
        head_hash: to_hash(r.get(1)?),
        time_ms: r.get(2)?,
        public_key: to_hash(r.get(3)?),
        signature: r.get::<_, Vec<u8>>(4)?.try_into().unwrap_or([0; 64]),
    })
}

/// The JSON text that is hashed: sorted keys, no whitespace.
pub fn canonical_body(body: &serde_json::Value) -> String {
    // serde_json's map is ordered by key (no `preserve_order`), so this is canonical.
    serde_json::to_string(body).expect("a JSON value always serialises")
}

/// The head of the chain inside `tx`: (seq, hash), or the prune marker's, or genesis.
fn head(tx: &Transaction<'_>) -> rusqlite::Result<(u64, [u8; 32])> {
    if let Some((seq, hash)) = tx
        .query_row(
            "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get::<_, i64>(0)? as u64, to_hash(r.get(1)?))),
        )
        .optional()?
    {
        return Ok((seq, hash));
    }
    Ok(tx
        .query_row(
            "SELECT up_to, head_hash FROM prune_markers ORDER BY up_to DESC LIMIT 1",
            [],
            |r| Ok((r.get::<_, i64>(0)? as u64, to_hash(r.get(1)?))),
        )
        .optional()?
        .unwrap_or((0, GENESIS)))
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    #[serde(flatten)]
    pub summary: ChainSummary,
    pub public_key: String,
}

impl Store {
    pub fn set_checkpoint_policy(&mut self, policy: CheckpointPolicy) {
        self.policy = policy;
    }

    /// Appends one event durably; returns its sequence number.
    pub fn append(&mut self, event: &AuditEvent) -> Result<u64> {
        Ok(*self
            .append_batch(std::slice::from_ref(event))?
            .last()
            .expect("one event appended"))
    }

    /// Appends events in one transaction (one `fsync`); returns their sequence numbers once
    /// the commit is durable.
    pub fn append_batch(&mut self, events: &[AuditEvent]) -> Result<Vec<u64>> {
        self.append_batch_signed(events, false)
    }

    /// Like [`Store::append_batch`]; with `sign`, the new head is checkpointed in the same
    /// transaction (one `fsync` for both).
    pub fn append_batch_signed(&mut self, events: &[AuditEvent], sign: bool) -> Result<Vec<u64>> {
        self.commit(events, &[], sign)
    }

    /// Appends `events` and writes `jobs` in one transaction (one `fsync`); with `sign`,
    /// the new head is checkpointed in it too.
    pub fn commit(
        &mut self,
        events: &[AuditEvent],
        jobs: &[super::jobs::JobRow],
        sign: bool,
    ) -> Result<Vec<u64>> {
        let (tx, sql) = Store::write_tx(&mut self.conn, &self.path)?;
        let (mut seq, mut prev) = head(&tx).map_err(sql)?;
        let mut seqs = Vec::with_capacity(events.len());
        {
            let mut insert = tx
                .prepare_cached("INSERT INTO audit (seq, time_ms, kind, body, prev_hash, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")
                .map_err(sql)?;
            for e in events {
                if e.kind.is_empty() || e.kind.len() > 128 {
                    return Err(StoreError::EventKind(e.kind.clone()));
                }
                seq += 1;
                let time_ms = now_ms();
                let body = canonical_body(&e.body);
                let hash = event_hash(&prev, seq, time_ms, &e.kind, &body);
                insert
                    .execute(params![
                        seq as i64,
                        time_ms,
                        e.kind,
                        body,
                        &prev[..],
                        &hash[..]
                    ])
                    .map_err(sql)?;
                prev = hash;
                seqs.push(seq);
            }
        }
        for job in jobs {
            super::jobs::upsert(&tx, job).map_err(sql)?;
        }
        self.since_checkpoint += events.len() as u64;
        let due = sign
            || self.since_checkpoint >= self.policy.every_events
            || self.last_checkpoint.elapsed() >= self.policy.every;
        let checkpoint = if due {
            Some(sign_head(&tx, &self.key, seq, prev).map_err(sql)?)
        } else {
            None
        };
        tx.commit().map_err(sql)?;
        if let Some(c) = checkpoint {
            self.after_checkpoint(&c)?;
        }
        Ok(seqs)
    }

    fn after_checkpoint(&mut self, c: &Checkpoint) -> Result<()> {
        self.since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        record_head(&self.head_file, c.seq, &c.head_hash)
    }

    /// Signs the current head if it is not signed yet. Returns the checkpoint's seq.
    pub fn checkpoint(&mut self) -> Result<Option<u64>> {
        let (tx, sql) = Store::write_tx(&mut self.conn, &self.path)?;
        let (seq, hash) = head(&tx).map_err(sql)?;
        let signed: Option<i64> = tx
            .query_row("SELECT max(seq) FROM checkpoints", [], |r| r.get(0))
            .map_err(sql)?;
        if seq == 0 || signed.map(|s| s as u64 >= seq).unwrap_or(false) {
            return Ok(None);
        }
        let c = sign_head(&tx, &self.key, seq, hash).map_err(sql)?;
        tx.commit().map_err(sql)?;
        self.after_checkpoint(&c)?;
        Ok(Some(seq))
    }

    /// The closing checkpoint (also run when the store is dropped).
    pub(crate) fn close_checkpoint(&mut self) -> Result<Option<u64>> {
        self.checkpoint()
    }

    /// The last `n` rows, oldest first.
    pub fn tail(&self, n: u64) -> Result<Vec<AuditRow>> {
        let mut stmt = self
            .conn
            .prepare("SELECT seq, time_ms, kind, body, prev_hash, hash FROM (SELECT * FROM audit ORDER BY seq DESC LIMIT ?1) ORDER BY seq")
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([n as i64], row_from)
            .map_err(|e| self.sql(e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.sql(e))
    }

    /// Rows after `seq`, oldest first (for `audit tail -f`).
    pub fn rows_after(&self, seq: u64, limit: u64) -> Result<Vec<AuditRow>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT seq, time_ms, kind, body, prev_hash, hash FROM audit WHERE seq > ?1 ORDER BY seq LIMIT ?2")
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([seq as i64, limit as i64], row_from)
            .map_err(|e| self.sql(e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.sql(e))
    }

    pub fn row(&self, seq: u64) -> Result<Option<AuditRow>> {
        self.conn
            .query_row(
                "SELECT seq, time_ms, kind, body, prev_hash, hash FROM audit WHERE seq = ?1",
                [seq as i64],
                row_from,
            )
            .optional()
            .map_err(|e| self.sql(e))
    }

    fn all_rows(&self) -> Result<Vec<AuditRow>> {
        let mut stmt = self
            .conn
            .prepare("SELECT seq, time_ms, kind, body, prev_hash, hash FROM audit ORDER BY seq")
            .map_err(|e| self.sql(e))?;
        let rows = stmt.query_map([], row_from).map_err(|e| self.sql(e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.sql(e))
    }

    fn all_checkpoints(&self) -> Result<Vec<Checkpoint>> {
        let mut stmt = self
            .conn
            .prepare("SELECT seq, head_hash, time_ms, public_key, signature FROM checkpoints ORDER BY seq")
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([], checkpoint_from)
            .map_err(|e| self.sql(e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.sql(e))
    }

    fn prune_marker(&self) -> Result<Option<Checkpoint>> {
        self.conn
            .query_row(
                "SELECT up_to, head_hash, time_ms, public_key, signature FROM prune_markers ORDER BY up_to DESC LIMIT 1",
                [],
                checkpoint_from,
            )
            .optional()
            .map_err(|e| self.sql(e))
    }

    /// Recomputes the whole chain and checks every checkpoint against this store's key
    /// and the head recorded beside the database.
    ///
    /// Writers may append meanwhile. The head file is read first, so it is never newer than
    /// the rows (a writer renames it into place after its commit), and the rows, the
    /// checkpoints and the prune marker are read in one transaction: one snapshot, never
    /// a checkpoint read after the rows it vouches for were pruned or appended.
    ///
    /// Whether the writer of an unsigned tail still runs is read after the snapshot, and
    /// it may have signed its rows and exited in between: a tail found with no writer
    /// running is read again, in a fresh snapshot, before it is called inserted.
    pub fn verify(&self) -> Result<std::result::Result<VerifyReport, ChainFault>> {
        match self.verify_snapshot()? {
            Err(fault) if fault.kind == chain::FaultKind::Inserted => self.verify_snapshot(),
            verdict => Ok(verdict),
        }
    }

    fn verify_snapshot(&self) -> Result<std::result::Result<VerifyReport, ChainFault>> {
        let recorded_head = read_head(&self.head_file)?;
        let (rows, checkpoints, marker) = self.snapshot(|store| {
            Ok((
                store.all_rows()?,
                store.all_checkpoints()?,
                store.prune_marker()?,
            ))
        })?;
        let input = ChainInput {
            rows: &rows,
            checkpoints: &checkpoints,
            marker: marker.as_ref(),
            expected_key: self.public_key(),
            recorded_head,
            live_writer: live_writer(&rows),
        };
        Ok(chain::verify_chain(&input).map(|summary| VerifyReport {
            summary,
            public_key: covenant_policy::token::encode_key(&self.public_key()),
        }))
    }

    /// `read` in one read transaction: everything it reads comes from one snapshot.
    fn snapshot<T>(&self, read: impl FnOnce(&Self) -> Result<T>) -> Result<T> {
        let tx = self.conn.unchecked_transaction().map_err(|e| self.sql(e))?;
        let out = read(self)?;
        tx.finish().map_err(|e| self.sql(e))?;
        Ok(out)
    }

    /// Writes a self-contained JSONL export of rows `from..=to` (all when `None`), read
    /// from one snapshot.
    pub fn export(&self, out: &mut dyn Write, range: Option<(u64, u64)>) -> Result<u64> {
        let (from, to) = range.unwrap_or((0, u64::MAX));
        let io = |error| StoreError::Io {
            path: "export".into(),
            error,
        };
        let (marker, rows, checkpoints) = self.snapshot(|store| {
            Ok((
                store.prune_marker()?,
                store.all_rows()?,
                store.all_checkpoints()?,
            ))
        })?;
        let marker = marker.filter(|m| m.seq + 1 >= from);
        let header = serde_json::json!({
            "type": "header",
            "format": "covenant-audit-export-v1",
            "public_key": covenant_policy::token::encode_key(&self.public_key()),
        });
        writeln!(out, "{header}").map_err(io)?;
        if let Some(m) = &marker {
            writeln!(out, "{}", signed_json("prune-marker", m)).map_err(io)?;
        }
        let mut count = 0;
        for row in rows.into_iter().filter(|r| r.seq >= from && r.seq <= to) {
            let line = serde_json::json!({
                "type": "event", "seq": row.seq, "time_ms": row.time_ms, "kind": row.kind, "body": row.body,
                "prev_hash": hex(&row.prev_hash), "hash": hex(&row.hash),
            });
            writeln!(out, "{line}").map_err(io)?;
            count += 1;
        }
        for c in checkpoints
            .into_iter()
            .filter(|c| c.seq >= from && c.seq <= to)
        {
            writeln!(out, "{}", signed_json("checkpoint", &c)).map_err(io)?;
        }
        Ok(count)
    }

    /// Archives rows up to `up_to` (a checkpointed row) into `archive` and drops them,
    /// leaving a signed marker so the rest of the chain still verifies.
    pub fn prune(&mut self, up_to: u64, archive: &Path) -> Result<u64> {
        let c = self
            .all_checkpoints()?
            .into_iter()
            .find(|c| c.seq == up_to)
            .ok_or(StoreError::NotACheckpoint(up_to))?;
        if let Err(fault) = self.verify()? {
            return Err(StoreError::Chain(fault));
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(archive)
            .map_err(|error| StoreError::Io {
                path: archive.to_path_buf(),
                error,
            })?;
        let n = self.export(&mut file, Some((0, up_to)))?;
        file.sync_all().map_err(|error| StoreError::Io {
            path: archive.to_path_buf(),
            error,
        })?;
        let marker = chain::sign(chain::PRUNE_DOMAIN, &self.key, up_to, c.head_hash, now_ms());
        let (tx, sql) = Store::write_tx(&mut self.conn, &self.path)?;
        // The triggers that refuse deletion are lifted for this one transaction only.
        tx.execute_batch("DROP TRIGGER audit_no_delete; DROP TRIGGER checkpoints_no_delete;")
            .map_err(sql)?;
        tx.execute("DELETE FROM audit WHERE seq <= ?1", [up_to as i64])
            .map_err(sql)?;
        tx.execute("DELETE FROM checkpoints WHERE seq < ?1", [up_to as i64])
            .map_err(sql)?;
        tx.execute(
            "INSERT INTO prune_markers (up_to, head_hash, time_ms, public_key, signature) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![marker.seq as i64, &marker.head_hash[..], marker.time_ms, &marker.public_key[..], &marker.signature[..]],
        )
        .map_err(sql)?;
        tx.execute_batch(
            "CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit BEGIN SELECT RAISE(ABORT, 'audit rows are append-only'); END;
             CREATE TRIGGER checkpoints_no_delete BEFORE DELETE ON checkpoints BEGIN SELECT RAISE(ABORT, 'checkpoints are append-only'); END;",
        )
        .map_err(sql)?;
        tx.commit().map_err(sql)?;
        Ok(n)
    }
}

/// Signs the head `seq`/`head_hash` and stores the checkpoint inside `tx`.
fn sign_head(
    tx: &Transaction<'_>,
    key: &ed25519_dalek::SigningKey,
    seq: u64,
    head_hash: [u8; 32],
) -> rusqlite::Result<Checkpoint> {
    let c = chain::sign(chain::CHECKPOINT_DOMAIN, key, seq, head_hash, now_ms());
    tx.execute(
        "INSERT OR IGNORE INTO checkpoints (seq, head_hash, time_ms, public_key, signature) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![c.seq as i64, &c.head_hash[..], c.time_ms, &c.public_key[..], &c.signature[..]],
    )?;
    Ok(c)
}

fn hex(bytes: &[u8]) -> String {
    covenant_policy::plan::hex(bytes)
}

fn signed_json(kind: &str, c: &Checkpoint) -> serde_json::Value {
    serde_json::json!({
        "type": kind, "seq": c.seq, "head_hash": hex(&c.head_hash), "time_ms": c.time_ms,
        "public_key": covenant_policy::token::encode_key(&c.public_key), "signature": hex(&c.signature),
    })
}

/// The head recorded outside the database at each checkpoint: `SEQ HEXHASH`. It is only
/// ever moved forward, under an exclusive lock, and replaced atomically: the new file is
/// synced before it is renamed over the old one, so after a crash the file is whole, old
/// or new. The directory is not synced: a rename lost to a crash leaves the older head,
/// which the chain (committed before this is written) still extends, so it can cost a
/// check its reach for the last commits but never raise a false alarm.
fn record_head(path: &Path, seq: u64, hash: &[u8; 32]) -> Result<()> {
    let io = |error| StoreError::Io {
        path: path.to_path_buf(),
        error,
    };
    let lock_path = path.with_extension("head.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_path)
        .map_err(io)?;
    // Held until `_held` is dropped at the end of this function.
    let _held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, errno)| io(errno.into()))?;
    if read_head(path)?.is_some_and(|(s, _)| s >= seq) {
        return Ok(());
    }
    let tmp = path.with_extension("head.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(format!("{seq} {}\n", hex(hash)).as_bytes())
        .map_err(io)?;
    f.sync_data().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// The latest writer that opened the store (`store.opened`), has not closed it
/// (`store.closed` with its pid), and is still running: the process with that pid exists
/// and started before the event was written, so a pid reused since does not count.
pub fn live_writer(rows: &[AuditRow]) -> Option<chain::LiveWriter> {
    let mut open: Vec<(chain::LiveWriter, i64)> = Vec::new();
    for row in rows {
        if row.kind != Kind::StoreOpened.as_str() && row.kind != Kind::StoreClosed.as_str() {
            continue;
        }
        let Ok(body) = serde_json::from_str::<serde_json::Value>(&row.body) else {
            continue;
        };
        let Some(pid) = body["pid"].as_u64().and_then(|p| u32::try_from(p).ok()) else {
            continue;
        };
        open.retain(|(w, _)| w.pid != pid);
        if row.kind == Kind::StoreOpened.as_str() {
            let by = body["by"].as_str().unwrap_or("a writer").to_string();
            let writer = chain::LiveWriter {
                pid,
                by,
                opened_at: row.seq,
            };
            open.push((writer, row.time_ms));
        }
    }
    open.into_iter()
        .rev()
        .find(|(w, opened_ms)| process_started_ms(w.pid).is_some_and(|s| s <= opened_ms + 1_000))
        .map(|(w, _)| w)
}

/// When process `pid` started (unix milliseconds), if it runs.
fn process_started_ms(pid: u32) -> Option<i64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22, counted after the command name, which may hold spaces and parentheses.
    let after_name = &stat[stat.rfind(')')? + 2..];
    let ticks: i64 = after_name.split(' ').nth(19)?.parse().ok()?;
    let boot: i64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        // USER_HZ, 100 on every Linux, should sysconf not say.
        .unwrap_or(100)
        .max(1);
    Some(boot * 1000 + ticks * 1000 / hz)
}

/// Reads the recorded head, if any.
pub fn read_head(path: &Path) -> Result<Option<(u64, [u8; 32])>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            return Err(StoreError::Io {
                path: path.to_path_buf(),
                error,
            })
        }
    };
    let bad = || StoreError::BadHead(path.to_path_buf());
    let (seq, hash) = text.trim().split_once(' ').ok_or_else(bad)?;
    let seq: u64 = seq.parse().map_err(|_| bad())?;
    Ok(Some((seq, parse_hex32(hash).ok_or_else(bad)?)))
}

pub fn parse_hex32(text: &str) -> Option<[u8; 32]> {
    parse_hex(text)?.try_into().ok()
}

pub fn parse_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Verifies an export file with nothing but the file (and, optionally, a pinned key).
pub fn verify_export(
    path: &Path,
    pinned_key: Option<[u8; 32]>,
) -> Result<std::result::Result<ChainSummary, ChainFault>> {
    let text = std::fs::read_to_string(path).map_err(|error| StoreError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    let bad = |line: usize, what: &str| StoreError::BadExport {
        path: path.to_path_buf(),
        line,
        what: what.to_string(),
    };
    let mut key = None;
    let (mut rows, mut checkpoints, mut marker) = (Vec::new(), Vec::new(), None);
    for (n, line) in text.lines().enumerate().map(|(i, l)| (i + 1, l)) {
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| bad(n, &e.to_string()))?;
        let s = |k: &str| {
            v[k].as_str()
                .ok_or_else(|| bad(n, &format!("`{k}` missing")))
        };
        let u = |k: &str| {
            v[k].as_u64()
                .ok_or_else(|| bad(n, &format!("`{k}` missing")))
        };
        let h = |k: &str| {
            s(k).and_then(|t| parse_hex32(t).ok_or_else(|| bad(n, &format!("`{k}` is not a hash"))))
        };
        match s("type")? {
            "header" => {
                key = Some(
                    covenant_policy::token::decode_key(s("public_key")?)
                        .map_err(|e| bad(n, &e.to_string()))?,
                );
            }
            "event" => rows.push(AuditRow {
                seq: u("seq")?,
                time_ms: v["time_ms"]
                    .as_i64()
                    .ok_or_else(|| bad(n, "`time_ms` missing"))?,
                kind: s("kind")?.to_string(),
                body: s("body")?.to_string(),
                prev_hash: h("prev_hash")?,
                hash: h("hash")?,
            }),
            kind @ ("checkpoint" | "prune-marker") => {
                let c = Checkpoint {
                    seq: u("seq")?,
                    head_hash: h("head_hash")?,
                    time_ms: v["time_ms"]
                        .as_i64()
                        .ok_or_else(|| bad(n, "`time_ms` missing"))?,
                    public_key: covenant_policy::token::decode_key(s("public_key")?)
                        .map_err(|e| bad(n, &e.to_string()))?,
                    signature: parse_hex(s("signature")?)
                        .and_then(|b| b.try_into().ok())
                        .ok_or_else(|| bad(n, "bad signature"))?,
                };
                if kind == "checkpoint" {
                    checkpoints.push(c);
                } else {
                    marker = Some(c);
                }
            }
            other => return Err(bad(n, &format!("unknown line type `{other}`"))),
        }
    }
    let key = key.ok_or_else(|| bad(1, "no header line with the public key"))?;
    if pinned_key.is_some_and(|p| p != key) {
        return Err(StoreError::ExportKey);
    }
    rows.sort_by_key(|r| r.seq);
    let input = ChainInput {
        rows: &rows,
        checkpoints: &checkpoints,
        marker: marker.as_ref(),
        expected_key: key,
        recorded_head: None,
        live_writer: None,
    };
    Ok(chain::verify_chain(&input))
}

impl Store {
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
        self.append_batch_signed(&events, true)?;
        self.bound_wal();
        Ok(())
    }
}

/// Appends one event to the default store (key, trust and capability changes).
pub fn record(kind: Kind, body: serde_json::Value) -> Result<u64> {
    let mut store = Store::open_default()?;
    let mut body = body;
    body["uid"] = serde_json::Value::from(nix::unistd::getuid().as_raw());
    store.append(&AuditEvent::new(kind, body))
}

/// A writer that goes away signs what it wrote (a reader writes nothing).
impl Drop for Store {
    fn drop(&mut self) {
        if self.writer {
            let _ = self.close_checkpoint();
        }
    }
}
