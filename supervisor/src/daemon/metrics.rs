//! Prometheus text exposition (`GET /metrics`): jobs by state, run durations, refusals by
//! reason, limits hit, store size.

use crate::store::jobs::{JobRow, JobState};
use crate::store::AuditEvent;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// Upper bounds of the run-duration histogram, in seconds.
const BUCKETS: [f64; 10] = [0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0, 120.0, 600.0];

#[derive(Default)]
struct Counters {
    finished: BTreeMap<&'static str, u64>,
    refused: BTreeMap<&'static str, u64>,
    limits: BTreeMap<String, u64>,
    buckets: [u64; BUCKETS.len()],
    duration_count: u64,
    duration_sum: f64,
}

#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Counters>,
}

impl Metrics {
    pub fn refused(&self, reason: &'static str) {
        *self
            .inner
            .lock()
            .unwrap()
            .refused
            .entry(reason)
            .or_default() += 1;
    }

    pub fn finished(&self, row: &JobRow) {
        let mut c = self.inner.lock().unwrap();
        *c.finished.entry(row.state.as_str()).or_default() += 1;
        if let (Some(start), Some(end)) = (row.started_ms, row.ended_ms) {
            let secs = (end - start).max(0) as f64 / 1000.0;
            c.duration_count += 1;
            c.duration_sum += secs;
            for (i, b) in BUCKETS.iter().enumerate() {
                if secs <= *b {
                    c.buckets[i] += 1;
                }
            }
        }
    }

    /// Counts `limit.hit` events as they pass to the store.
    pub fn observe_events(&self, events: &[AuditEvent]) {
        let mut c = self.inner.lock().unwrap();
        for e in events.iter().filter(|e| e.kind == "limit.hit") {
            let limit = e.body["limit"].as_str().unwrap_or("unknown").to_string();
            *c.limits.entry(limit).or_default() += 1;
        }
    }

    /// The exposition text.
    pub fn render(
        &self,
        running: usize,
        queued: usize,
        store_bytes: u64,
        config: &super::Config,
    ) -> String {
        let c = self.inner.lock().unwrap();
        let mut out = String::new();
        let _ = writeln!(out, "# HELP covenant_jobs Jobs by state: live ones now, final ones since the daemon started.");
        let _ = writeln!(out, "# TYPE covenant_jobs gauge");
        let _ = writeln!(out, "covenant_jobs{{state=\"running\"}} {running}");
        let _ = writeln!(out, "covenant_jobs{{state=\"queued\"}} {queued}");
        for state in [
            JobState::Exited,
            JobState::Failed,
            JobState::Cancelled,
            JobState::Interrupted,
        ] {
            let n = c.finished.get(state.as_str()).copied().unwrap_or(0);
            let _ = writeln!(out, "covenant_jobs{{state=\"{}\"}} {n}", state.as_str());
        }
        let _ = writeln!(out, "# HELP covenant_job_slots Admission limits.");
        let _ = writeln!(out, "# TYPE covenant_job_slots gauge");
        let _ = writeln!(
            out,
            "covenant_job_slots{{kind=\"concurrent\"}} {}",
            config.max_jobs
        );
        let _ = writeln!(
            out,
            "covenant_job_slots{{kind=\"queue\"}} {}",
            config.max_queue
        );
        let _ = writeln!(
            out,
            "covenant_job_slots{{kind=\"per_subject\"}} {}",
            config.per_subject
        );
        let _ = writeln!(
            out,
            "# HELP covenant_run_duration_seconds Time from sandbox start to the job's end."
        );
        let _ = writeln!(out, "# TYPE covenant_run_duration_seconds histogram");
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "covenant_run_duration_seconds_bucket{{le=\"{b}\"}} {}",
                c.buckets[i]
            );
        }
        let _ = writeln!(
            out,
            "covenant_run_duration_seconds_bucket{{le=\"+Inf\"}} {}",
            c.duration_count
        );
        let _ = writeln!(out, "covenant_run_duration_seconds_sum {}", c.duration_sum);
        let _ = writeln!(
            out,
            "covenant_run_duration_seconds_count {}",
            c.duration_count
        );
        let _ = writeln!(
            out,
            "# HELP covenant_refusals_total Submissions refused, by reason."
        );
        let _ = writeln!(out, "# TYPE covenant_refusals_total counter");
        for reason in [
            "admission",
            "capability",
            "invalid",
            "scope",
            "shutting-down",
        ] {
            let n = c.refused.get(reason).copied().unwrap_or(0);
            let _ = writeln!(out, "covenant_refusals_total{{reason=\"{reason}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP covenant_limits_hit_total Runs that reached a limit, by limit."
        );
        let _ = writeln!(out, "# TYPE covenant_limits_hit_total counter");
        for limit in ["memory", "pids", "timeout"] {
            let n = c.limits.get(limit).copied().unwrap_or(0);
            let _ = writeln!(out, "covenant_limits_hit_total{{limit=\"{limit}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP covenant_store_bytes Size of the store (database and WAL)."
        );
        let _ = writeln!(out, "# TYPE covenant_store_bytes gauge");
        let _ = writeln!(out, "covenant_store_bytes {store_bytes}");
        out
    }
}
