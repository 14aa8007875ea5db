//! The agents' memory: namespaced items in three tiers (working, episodic, long-term)
//! with JSON metadata, an optional parent, full-text search (FTS5, bm25 ranking), and a
//! TTL per tier enforced by a compaction that reports before it deletes. Every write is
//! audited with the item's digest, never its text.

use super::audit::{now_ms, AuditEvent};
use super::error::{MemoryError, Result, StoreError};
pub use super::error::{MAX_METADATA_BYTES, MAX_TEXT_BYTES};
use super::handle::Store;
use super::kind::Kind;
use rusqlite::{params, OptionalExtension};
use serde::Serialize;
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tier {
    Working,
    Episodic,
    LongTerm,
}

impl Tier {
    pub const ALL: [Tier; 3] = [Self::Working, Self::Episodic, Self::LongTerm];

    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "working" => Ok(Self::Working),
            "episodic" => Ok(Self::Episodic),
            "long-term" => Ok(Self::LongTerm),
            other => Err(MemoryError::Tier(other.to_string()).into()),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Working => "working",
            Self::Episodic => "episodic",
            Self::LongTerm => "long-term",
        }
    }

    /// How long an item of this tier lives after its last update (`None`: forever).
    pub fn ttl_ms(self) -> Option<i64> {
        match self {
            Self::Working => Some(24 * 3600 * 1000),
            Self::Episodic => Some(30 * 24 * 3600 * 1000),
            Self::LongTerm => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemoryItem {
    pub id: String,
    pub namespace: String,
    pub tier: Tier,
    pub text: String,
    pub metadata: serde_json::Value,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub parent: Option<String>,
}

/// What `mem compact` would remove, or removed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CompactionReport {
    pub expired: Vec<(String, String, String)>,
    pub applied: bool,
}

fn check_namespace(ns: &str) -> Result<()> {
    let ok = !ns.is_empty()
        && ns.len() <= 128
        && ns
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
    if ok {
        Ok(())
    } else {
        Err(MemoryError::Namespace(ns.to_string()).into())
    }
}

fn digest(text: &str) -> String {
    format!(
        "sha256:{}",
        covenant_policy::plan::hex(&Sha256::digest(text.as_bytes()))
    )
}

fn item_from(r: &rusqlite::Row<'_>) -> rusqlite::Result<MemoryItem> {
    let tier: String = r.get(2)?;
    let metadata: String = r.get(4)?;
    Ok(MemoryItem {
        id: r.get(0)?,
        namespace: r.get(1)?,
        tier: Tier::parse(&tier).unwrap_or(Tier::Working),
        text: r.get(3)?,
        metadata: serde_json::from_str(&metadata).unwrap_or(serde_json::Value::Null),
        created_ms: r.get(5)?,
        updated_ms: r.get(6)?,
        parent: r.get(7)?,
    })
}

const ITEM_COLUMNS: &str = "id, namespace, tier, text, metadata, created_ms, updated_ms, parent";

impl Store {
    /// Stores an item; returns its id.
    pub fn mem_put(
        &mut self,
        namespace: &str,
        tier: Tier,
        text: &str,
        metadata: Option<&str>,
        parent: Option<&str>,
    ) -> Result<String> {
        check_namespace(namespace)?;
        if text.is_empty() || text.len() > MAX_TEXT_BYTES {
            return Err(MemoryError::TextSize(text.len()).into());
        }
        let metadata = match metadata {
            None => "{}".to_string(),
            Some(m) if m.len() > MAX_METADATA_BYTES => {
                return Err(MemoryError::MetadataSize(m.len()).into())
            }
            Some(m) => {
                let v: serde_json::Value = serde_json::from_str(m)
                    .map_err(|e| MemoryError::MetadataJson(e.to_string()))?;
                if !v.is_object() {
                    return Err(MemoryError::MetadataNotObject.into());
                }
                super::audit::canonical_body(&v)
            }
        };
        if let Some(p) = parent {
            if self.mem_get(p)?.is_none() {
                return Err(MemoryError::NoParent(p.to_string()).into());
            }
        }
        let id = format!(
            "mem-{}",
            covenant_policy::plan::hex(&crate::keys::random_bytes::<8>()?)
        );
        let now = now_ms();
        self.conn
            .execute(
                "INSERT INTO memory_items (id, namespace, tier, text, metadata, created_ms, updated_ms, parent) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7)",
                params![id, namespace, tier.as_str(), text, metadata, now, parent],
            )
            .map_err(|e| self.sql(e))?;
        self.append(&AuditEvent::new(
            Kind::MemoryPut,
            serde_json::json!({"id": id, "namespace": namespace, "tier": tier.as_str(), "digest": digest(text), "bytes": text.len()}),
        ))?;
        Ok(id)
    }

    pub fn mem_get(&self, id: &str) -> Result<Option<MemoryItem>> {
        self.conn
            .query_row(
                &format!("SELECT {ITEM_COLUMNS} FROM memory_items WHERE id = ?1"),
                [id],
                item_from,
            )
            .optional()
            .map_err(|e| self.sql(e))
    }

    /// Full-text search in a namespace, best match first.
    pub fn mem_search(&self, namespace: &str, query: &str, limit: u32) -> Result<Vec<MemoryItem>> {
        check_namespace(namespace)?;
        // Each word is quoted, so user input is never FTS5 query syntax.
        let fts: Vec<String> = query
            .split_whitespace()
            .map(|w| format!("\"{}\"", w.replace('"', "\"\"")))
            .collect();
        if fts.is_empty() {
            return Err(MemoryError::EmptyQuery.into());
        }
        let sql = format!(
            "SELECT {} FROM memory_fts JOIN memory_items m ON m.rowid = memory_fts.rowid
             WHERE memory_fts MATCH ?1 AND m.namespace = ?2 ORDER BY bm25(memory_fts) LIMIT ?3",
            ITEM_COLUMNS
                .split(", ")
                .map(|c| format!("m.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let mut stmt = self.conn.prepare(&sql).map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map(params![fts.join(" "), namespace, limit], item_from)
            .map_err(|e| self.sql(e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.sql(e))
    }

    pub fn mem_list(&self, namespace: Option<&str>, tier: Option<Tier>) -> Result<Vec<MemoryItem>> {
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT {ITEM_COLUMNS} FROM memory_items WHERE (?1 IS NULL OR namespace = ?1) AND (?2 IS NULL OR tier = ?2) ORDER BY namespace, updated_ms"
            ))
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map(params![namespace, tier.map(Tier::as_str)], item_from)
            .map_err(|e| self.sql(e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.sql(e))
    }

    /// One page of a listing in (namespace, updated_ms, id) order: at most `limit` items
    /// after the position `after` (the namespace, update time and id of the last item of
    /// the previous page) when given.
    pub fn mem_page(
        &self,
        namespace: Option<&str>,
        tier: Option<Tier>,
        after: Option<(&str, i64, &str)>,
        limit: u32,
    ) -> Result<Vec<MemoryItem>> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!(
                "SELECT {ITEM_COLUMNS} FROM memory_items WHERE (?1 IS NULL OR namespace = ?1) \
                 AND (?2 IS NULL OR tier = ?2) \
                 AND (?3 IS NULL OR (namespace, updated_ms, id) > (?3, ?4, ?5)) \
                 ORDER BY namespace, updated_ms, id LIMIT ?6"
            ))
            .map_err(|e| self.sql(e))?;
        let (a_ns, a_ms, a_id) = match after {
            Some((ns, ms, id)) => (Some(ns), Some(ms), Some(id)),
            None => (None, None, None),
        };
        let rows = stmt
            .query_map(
                params![namespace, tier.map(Tier::as_str), a_ns, a_ms, a_id, limit],
                item_from,
            )
            .map_err(|e| self.sql(e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.sql(e))
    }

    pub fn mem_remove(&mut self, id: &str) -> Result<bool> {
        let Some(item) = self.mem_get(id)? else {
            return Ok(false);
        };
        self.conn
            .execute("DELETE FROM memory_items WHERE id = ?1", [id])
            .map_err(|e| self.sql(e))?;
        self.append(&AuditEvent::new(
            Kind::MemoryRemoved,
            serde_json::json!({"id": id, "namespace": item.namespace, "digest": digest(&item.text)}),
        ))?;
        Ok(true)
    }

    /// Finds items past their tier's TTL; deletes them only when `apply`.
    pub fn mem_compact(&mut self, apply: bool, now_ms: i64) -> Result<CompactionReport> {
        let mut report = CompactionReport {
            applied: apply,
            ..Default::default()
        };
        for tier in Tier::ALL {
            let Some(ttl) = tier.ttl_ms() else { continue };
            let cutoff = now_ms - ttl;
            let mut stmt = self
                .conn
                .prepare("SELECT id, namespace FROM memory_items WHERE tier = ?1 AND updated_ms < ?2 ORDER BY updated_ms")
                .map_err(|e| self.sql(e))?;
            let rows = stmt
                .query_map(params![tier.as_str(), cutoff], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                })
                .map_err(|e| self.sql(e))?;
            for r in rows {
                let (id, ns) = r.map_err(|e| self.sql(e))?;
                report.expired.push((id, ns, tier.as_str().to_string()));
            }
        }
        if apply && !report.expired.is_empty() {
            let tx = self.conn.transaction().map_err(|e| StoreError::Sqlite {
                path: self.path.clone(),
                error: e,
            })?;
            for (id, _, _) in &report.expired {
                tx.execute("DELETE FROM memory_items WHERE id = ?1", [id])
                    .map_err(|e| StoreError::Sqlite {
                        path: self.path.clone(),
                        error: e,
                    })?;
            }
            tx.commit().map_err(|e| StoreError::Sqlite {
                path: self.path.clone(),
                error: e,
            })?;
            let ids: Vec<&String> = report.expired.iter().map(|(id, _, _)| id).collect();
            self.append(&AuditEvent::new(
                Kind::MemoryCompacted,
                serde_json::json!({"removed": ids}),
            ))?;
        }
        Ok(report)
    }

    /// Test and maintenance hook: set an item's update time.
    pub fn mem_touch(&mut self, id: &str, updated_ms: i64) -> Result<()> {
        self.conn
            .execute(
                "UPDATE memory_items SET updated_ms = ?2 WHERE id = ?1",
                params![id, updated_ms],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }
}
