//! The audit chain's canonical encoding and its verification, independent of where the
//! rows come from (the database or an export file). Specified in `docs/audit.md`.
//!
//! `hash = sha256(prev_hash ‖ canonical(event))`, where `canonical` is
//! `"covenant-audit-v1\0" ‖ seq (u64 BE) ‖ time_ms (i64 BE) ‖ len(kind) (u16 BE) ‖ kind ‖
//! len(body) (u32 BE) ‖ body`, and `body` is the event's JSON with sorted keys and no
//! whitespace. The first row's `prev_hash` is 32 zero bytes, or the head of the prune
//! marker it follows. A checkpoint signs `"covenant-checkpoint-v1\0" ‖ seq ‖ head_hash ‖
//! time_ms`; a prune marker signs `"covenant-prune-v1\0" ‖ up_to ‖ head_hash ‖ time_ms`.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fmt;

pub const GENESIS: [u8; 32] = [0; 32];

/// One stored audit row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    pub seq: u64,
    pub time_ms: i64,
    pub kind: String,
    pub body: String,
    pub prev_hash: [u8; 32],
    pub hash: [u8; 32],
}

/// A signed statement that the chain's head at `seq` was `head_hash`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub seq: u64,
    pub head_hash: [u8; 32],
    pub time_ms: i64,
    pub public_key: [u8; 32],
    pub signature: [u8; 64],
}

/// A signed statement that rows up to `up_to` were archived and dropped, the last of them
/// with hash `head_hash`.
pub type PruneMarker = Checkpoint;

pub fn canonical_event(seq: u64, time_ms: i64, kind: &str, body: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(40 + kind.len() + body.len());
    out.extend_from_slice(b"covenant-audit-v1\0");
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&time_ms.to_be_bytes());
    out.extend_from_slice(&(kind.len() as u16).to_be_bytes());
    out.extend_from_slice(kind.as_bytes());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body.as_bytes());
    out
}

pub fn event_hash(prev: &[u8; 32], seq: u64, time_ms: i64, kind: &str, body: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(canonical_event(seq, time_ms, kind, body));
    h.finalize().into()
}

fn signed_bytes(domain: &[u8], seq: u64, head: &[u8; 32], time_ms: i64) -> Vec<u8> {
    let mut out = domain.to_vec();
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(head);
    out.extend_from_slice(&time_ms.to_be_bytes());
    out
}

pub const CHECKPOINT_DOMAIN: &[u8] = b"covenant-checkpoint-v1\0";
pub const PRUNE_DOMAIN: &[u8] = b"covenant-prune-v1\0";

pub fn sign(
    domain: &[u8],
    key: &SigningKey,
    seq: u64,
    head_hash: [u8; 32],
    time_ms: i64,
) -> Checkpoint {
    let signature = key
        .sign(&signed_bytes(domain, seq, &head_hash, time_ms))
        .to_bytes();
    Checkpoint {
        seq,
        head_hash,
        time_ms,
        public_key: key.verifying_key().to_bytes(),
        signature,
    }
}

fn signature_valid(domain: &[u8], c: &Checkpoint) -> bool {
    let Ok(key) = VerifyingKey::from_bytes(&c.public_key) else {
        return false;
    };
    key.verify_strict(
        &signed_bytes(domain, c.seq, &c.head_hash, c.time_ms),
        &Signature::from_bytes(&c.signature),
    )
    .is_ok()
}

/// What is wrong with a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// A row's content no longer matches its hash.
    Modified,
    /// Rows are missing from the sequence.
    Deleted,
    /// A row holds the event of another position.
    Reordered,
    /// A row was added that the chain or the checkpoints do not account for.
    Inserted,
    /// Rows a checkpoint (or the recorded head) vouches for are gone.
    Truncated,
    /// A checkpoint or prune marker does not verify, or is signed by another key.
    BadSignature,
}

/// The first fault found, with the row it concerns.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChainFault {
    pub seq: u64,
    pub kind: FaultKind,
    pub detail: String,
}

impl fmt::Display for ChainFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "row {}: {:?}: {}", self.seq, self.kind, self.detail)
    }
}

fn fault(seq: u64, kind: FaultKind, detail: impl Into<String>) -> ChainFault {
    ChainFault {
        seq,
        kind,
        detail: detail.into(),
    }
}

/// What verification saw.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChainSummary {
    pub rows: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub checkpoints: u64,
    pub last_checkpoint: Option<u64>,
    pub pruned_up_to: Option<u64>,
    /// Rows after the last checkpoint that chain correctly and that a running writer
    /// wrote: its next checkpoint will sign them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unsigned_tail: Option<UnsignedTail>,
}

/// A writer that opened the store (its `store.opened` event), has not closed it, and is
/// still running.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LiveWriter {
    pub pid: u32,
    /// Who opened the store (`covenantd`, `covenant-ctl run`).
    pub by: String,
    /// The row of its `store.opened` event.
    pub opened_at: u64,
}

/// Rows not signed yet, and the running writer they are ascribed to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UnsignedTail {
    pub from: u64,
    pub to: u64,
    pub writer: LiveWriter,
}

/// Everything verification needs: rows in `seq` order, checkpoints, an optional prune
/// marker, the key checkpoints must be signed with, and the last head recorded outside the
/// database (which catches a truncated or replaced file).
pub struct ChainInput<'a> {
    pub rows: &'a [AuditRow],
    pub checkpoints: &'a [Checkpoint],
    pub marker: Option<&'a PruneMarker>,
    pub expected_key: [u8; 32],
    pub recorded_head: Option<(u64, [u8; 32])>,
    /// A writer still running, whose rows after the last checkpoint are an unsigned tail
    /// rather than an insertion. `None` for an export, or when no writer runs.
    pub live_writer: Option<LiveWriter>,
}

/// Recomputes the chain and checks every checkpoint; returns the first fault.
pub fn verify_chain(input: &ChainInput<'_>) -> Result<ChainSummary, ChainFault> {
    let rows = input.rows;
    let (mut prev, mut next_seq) = match input.marker {
        Some(m) => {
            if m.public_key != input.expected_key || !signature_valid(PRUNE_DOMAIN, m) {
                return Err(fault(
                    m.seq,
                    FaultKind::BadSignature,
                    "the prune marker's signature does not verify with the supervisor key",
                ));
            }
            (m.head_hash, m.seq + 1)
        }
        None => (GENESIS, 1),
    };
    let by_hash: HashMap<[u8; 32], usize> =
        rows.iter().enumerate().map(|(i, r)| (r.hash, i)).collect();
    for (i, row) in rows.iter().enumerate() {
        if row.seq > next_seq {
            let what = if next_seq + 1 == row.seq {
                format!("row {next_seq} is missing")
            } else {
                format!("rows {next_seq}..{} are missing", row.seq - 1)
            };
            return Err(fault(next_seq, FaultKind::Deleted, what));
        }
        if row.seq < next_seq {
            return Err(fault(
                row.seq,
                FaultKind::Inserted,
                "a row repeats an earlier sequence number",
            ));
        }
        if event_hash(&row.prev_hash, row.seq, row.time_ms, &row.kind, &row.body) != row.hash {
            return Err(classify_mismatch(rows, i, &by_hash));
        }
        if row.prev_hash != prev {
            let detail = match by_hash.get(&row.prev_hash) {
                Some(&j) if j > i => {
                    format!("it follows row {}, which comes after it", rows[j].seq)
                }
                _ => "it does not follow the row before it (a row was forged or put here)"
                    .to_string(),
            };
            let kind = if matches!(by_hash.get(&row.prev_hash), Some(&j) if j > i) {
                FaultKind::Reordered
            } else {
                FaultKind::Inserted
            };
            return Err(fault(row.seq, kind, detail));
        }
        prev = row.hash;
        next_seq += 1;
    }
    let hash_at = |seq: u64| {
        rows.binary_search_by_key(&seq, |r| r.seq)
            .ok()
            .map(|i| rows[i].hash)
    };
    let last_seq = rows.last().map(|r| r.seq);
    let pruned = input.marker.map(|m| m.seq).unwrap_or(0);
    for c in input.checkpoints {
        if c.public_key != input.expected_key {
            return Err(fault(
                c.seq,
                FaultKind::BadSignature,
                "checkpoint signed by a key that is not the supervisor's",
            ));
        }
        if !signature_valid(CHECKPOINT_DOMAIN, c) {
            return Err(fault(
                c.seq,
                FaultKind::BadSignature,
                "checkpoint signature does not verify",
            ));
        }
        if c.seq <= pruned {
            continue;
        }
        match hash_at(c.seq) {
            Some(h) if h == c.head_hash => {}
            Some(_) => {
                return Err(fault(
                    c.seq,
                    FaultKind::Modified,
                    "the row differs from what its checkpoint signed",
                ))
            }
            None => {
                return Err(fault(
                    last_seq.map(|s| s + 1).unwrap_or(pruned + 1),
                    FaultKind::Truncated,
                    format!("a checkpoint vouches for row {}, which is gone", c.seq),
                ))
            }
        }
    }
    let last_checkpoint = input.checkpoints.iter().map(|c| c.seq).max();
    if let Some((head_seq, head_hash)) = input.recorded_head {
        match hash_at(head_seq) {
            Some(h) if h == head_hash => {}
            Some(_) => {
                return Err(fault(
                    head_seq,
                    FaultKind::Modified,
                    "the row differs from the recorded head (the file was replaced)",
                ))
            }
            None if head_seq > pruned => {
                return Err(fault(
                    last_seq.map(|s| s + 1).unwrap_or(pruned + 1),
                    FaultKind::Truncated,
                    format!(
                        "the recorded head is row {head_seq}, but the chain ends at {}",
                        last_seq.unwrap_or(pruned)
                    ),
                ))
            }
            None => {}
        }
    }
    let mut unsigned_tail = None;
    if let Some(last) = last_seq {
        let covered = last_checkpoint.unwrap_or(0).max(pruned);
        if last > covered {
            // The rows chain correctly (checked above); what is missing is a signature.
            // A writer still running has simply not checkpointed them yet.
            match &input.live_writer {
                Some(writer) if writer.opened_at <= last => {
                    unsigned_tail = Some(UnsignedTail {
                        from: covered + 1,
                        to: last,
                        writer: writer.clone(),
                    })
                }
                _ => {
                    return Err(fault(
                        covered + 1,
                        FaultKind::Inserted,
                        format!(
                            "rows {}..{last} follow the last checkpoint, no checkpoint signs them, and no writer that opened the store is still running (one crashed, or the rows were added)",
                            covered + 1
                        ),
                    ))
                }
            }
        }
    }
    Ok(ChainSummary {
        rows: rows.len() as u64,
        first_seq: rows.first().map(|r| r.seq),
        last_seq,
        checkpoints: input.checkpoints.len() as u64,
        last_checkpoint,
        pruned_up_to: input.marker.map(|m| m.seq),
        unsigned_tail,
    })
}

/// A row whose hash does not match its content: another row's event moved here, or edited.
fn classify_mismatch(
    rows: &[AuditRow],
    i: usize,
    by_hash: &HashMap<[u8; 32], usize>,
) -> ChainFault {
    let row = &rows[i];
    // A swap leaves both rows inconsistent; a single edit that happens to copy another
    // row's content leaves that other row intact, and is a modification.
    let intact =
        |r: &AuditRow| event_hash(&r.prev_hash, r.seq, r.time_ms, &r.kind, &r.body) == r.hash;
    for (j, other) in rows.iter().enumerate() {
        if j != i
            && !intact(other)
            && event_hash(
                &other.prev_hash,
                other.seq,
                row.time_ms,
                &row.kind,
                &row.body,
            ) == other.hash
        {
            return fault(
                row.seq,
                FaultKind::Reordered,
                format!("it holds the event of row {}", other.seq),
            );
        }
    }
    if let Some(&j) = by_hash.get(&row.prev_hash) {
        if j > i {
            return fault(
                row.seq,
                FaultKind::Reordered,
                format!("it follows row {}, which comes after it", rows[j].seq),
            );
        }
    }
    fault(
        row.seq,
        FaultKind::Modified,
        "its content does not match its hash",
    )
}
