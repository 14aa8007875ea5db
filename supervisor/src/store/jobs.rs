//! The daemon's jobs table: one row per admitted job, rewritten as its state changes, in
//! the same transaction as the audit events that record the change.

use super::error::Result;
use super::handle::Store;
use rusqlite::{params, OptionalExtension, Transaction};
use serde::{Deserialize, Serialize};

/// Where a job is in its life. Only `Queued` and `Running` are unfinished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobState {
    /// Admitted, waiting for a free slot.
    Queued,
    /// Its sandbox is being set up or runs.
    Running,
    /// The program ended (any exit code, a signal, the timeout or the memory limit).
    Exited,
    /// The sandbox could not be set up; nothing ran.
    Failed,
    /// Killed while still queued; nothing ran.
    Cancelled,
    /// The daemon stopped or died while it ran; a restarted daemon cleaned it up.
    Interrupted,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Exited => "exited",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Interrupted => "interrupted",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            JobState::Queued,
            JobState::Running,
            JobState::Exited,
            JobState::Failed,
            JobState::Cancelled,
            JobState::Interrupted,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }

    pub fn is_final(self) -> bool {
        !matches!(self, JobState::Queued | JobState::Running)
    }
}

/// One row of the jobs table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRow {
    pub id: String,
    pub state: JobState,
    /// The capability's subject.
    pub subject: String,
    pub caller_uid: Option<u32>,
    pub caller_pid: Option<i32>,
    pub runner: String,
    /// The job whose agent submitted this one as a sub-intent.
    pub parent: Option<String>,
    pub argv: Vec<String>,
    pub submitted_ms: i64,
    pub started_ms: Option<i64>,
    pub ended_ms: Option<i64>,
    /// The process that runs the sandbox for the daemon.
    pub shim_pid: Option<i32>,
    pub exit_code: Option<i32>,
    /// Why it failed, was cancelled or interrupted.
    pub reason: Option<String>,
    /// The run report, once the program has ended.
    pub report: Option<serde_json::Value>,
}

pub(super) fn upsert(tx: &Transaction<'_>, job: &JobRow) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT OR REPLACE INTO jobs (id, state, subject, caller_uid, caller_pid, runner, parent, \
         argv, submitted_ms, started_ms, ended_ms, shim_pid, exit_code, reason, report) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
    )?
    .execute(params![
        job.id,
        job.state.as_str(),
        job.subject,
        job.caller_uid,
        job.caller_pid,
        job.runner,
        job.parent,
        serde_json::to_string(&job.argv).unwrap_or_default(),
        job.submitted_ms,
        job.started_ms,
        job.ended_ms,
        job.shim_pid,
        job.exit_code,
        job.reason,
        job.report.as_ref().map(|r| r.to_string()),
    ])?;
    Ok(())
}

const COLUMNS: &str = "id, state, subject, caller_uid, caller_pid, runner, parent, argv, \
                       submitted_ms, started_ms, ended_ms, shim_pid, exit_code, reason, report";

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<JobRow> {
    let state: String = r.get(1)?;
    let argv: String = r.get(7)?;
    let report: Option<String> = r.get(14)?;
    Ok(JobRow {
        id: r.get(0)?,
        state: JobState::parse(&state).unwrap_or(JobState::Interrupted),
        subject: r.get(2)?,
        caller_uid: r.get(3)?,
        caller_pid: r.get(4)?,
        runner: r.get(5)?,
        parent: r.get(6)?,
        argv: serde_json::from_str(&argv).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(7, rusqlite::types::Type::Text, Box::new(e))
        })?,
        submitted_ms: r.get(8)?,
        started_ms: r.get(9)?,
        ended_ms: r.get(10)?,
        shim_pid: r.get(11)?,
        exit_code: r.get(12)?,
        reason: r.get(13)?,
        report: report.and_then(|t| serde_json::from_str(&t).ok()),
    })
}

impl Store {
    pub fn job(&self, id: &str) -> Result<Option<JobRow>> {
        self.conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM jobs WHERE id = ?1"),
                [id],
                from_row,
            )
            .optional()
            .map_err(|e| self.sql(e))
    }

    /// Jobs, newest first; only those in `state` when given.
    pub fn jobs(&self, state: Option<JobState>, limit: u32) -> Result<Vec<JobRow>> {
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT {COLUMNS} FROM jobs WHERE (?1 IS NULL OR state = ?1) \
                 ORDER BY submitted_ms DESC, id LIMIT ?2"
            ))
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map(params![state.map(JobState::as_str), limit], from_row)
            .map_err(|e| self.sql(e))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(|e| self.sql(e))
    }

    /// Jobs submitted by `caller_uid` (`None`: by callers without a uid, over TCP),
    /// newest first; only those in `state` when given.
    pub fn jobs_of(
        &self,
        state: Option<JobState>,
        caller_uid: Option<u32>,
        limit: u32,
    ) -> Result<Vec<JobRow>> {
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT {COLUMNS} FROM jobs WHERE (?1 IS NULL OR state = ?1) AND caller_uid IS ?2 \
                 ORDER BY submitted_ms DESC, id LIMIT ?3"
            ))
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map(
                params![state.map(JobState::as_str), caller_uid, limit],
                from_row,
            )
            .map_err(|e| self.sql(e))?;
        rows.collect::<rusqlite::Result<_>>()
            .map_err(|e| self.sql(e))
    }

    /// Jobs a daemon left queued or running.
    pub fn unfinished_jobs(&self) -> Result<Vec<JobRow>> {
        let mut all = self.jobs(Some(JobState::Running), u32::MAX)?;
        all.extend(self.jobs(Some(JobState::Queued), u32::MAX)?);
        Ok(all)
    }
}
