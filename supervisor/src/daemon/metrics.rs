//! Prometheus text exposition (`GET /metrics`): jobs by state, run durations, refusals by
//! reason, limits hit, store size.

use crate::store::jobs::{JobRow, JobState};
use crate::store::AuditEvent;
use crate::store::Kind;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// Upper bounds of the run-duration histogram, in seconds.
const BUCKETS: [f64; 10] = [0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0, 120.0, 600.0];

#[derive(Default)]
struct Counters {
    finished: BTreeMap<&'static str, u64>,
    refused: BTreeMap<&'static str, u64>,
    limits: BTreeMap<String, u64>,
    connections_refused: BTreeMap<&'static str, u64>,
    buckets: [u64; BUCKETS.len()],
    duration_count: u64,
    duration_sum: f64,
}

#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Counters>,
}

impl Metrics {
    /// The counters; a panic elsewhere while they were held leaves them usable.
    fn counters(&self) -> std::sync::MutexGuard<'_, Counters> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn refused(&self, reason: &'static str) {
        *self.counters().refused.entry(reason).or_default() += 1;
    }

    /// A connection closed unanswered past its bound (`operator`, `tcp` or `agent`).
    pub fn connection_refused(&self, socket: &'static str) {
        *self
            .counters()
            .connections_refused
            .entry(socket)
            .or_default() += 1;
    }

    pub fn finished(&self, row: &JobRow) {
        let mut c = self.counters();
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
        let mut c = self.counters();
        for e in events.iter().filter(|e| e.kind == Kind::LimitHit.as_str()) {
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
        open_connections: usize,
        config: &super::config::Config,
    ) -> String {
        let c = self.counters();
        let mut out = Exposition::default();
        let mut jobs = vec![("running", running as u64), ("queued", queued as u64)];
        for state in [
            JobState::Exited,
            JobState::Failed,
            JobState::Cancelled,
            JobState::Interrupted,
        ] {
            let name = state.as_str();
            jobs.push((name, c.finished.get(name).copied().unwrap_or(0)));
        }
        out.family(
            "covenant_jobs",
            "gauge",
            "Jobs by state: live ones now, final ones since the daemon started.",
            "state",
            &jobs,
        );
        out.family(
            "covenant_job_slots",
            "gauge",
            "Admission limits.",
            "kind",
            &[
                ("concurrent", config.max_jobs as u64),
                ("queue", config.max_queue as u64),
                ("per_subject", config.per_subject as u64),
            ],
        );
        out.head(
            "covenant_run_duration_seconds",
            "histogram",
            "Time from sandbox start to the job's end.",
        );
        for (i, b) in BUCKETS.iter().enumerate() {
            out.line(format!(
                "covenant_run_duration_seconds_bucket{{le=\"{b}\"}} {}",
                c.buckets[i]
            ));
        }
        out.line(format!(
            "covenant_run_duration_seconds_bucket{{le=\"+Inf\"}} {}",
            c.duration_count
        ));
        out.line(format!(
            "covenant_run_duration_seconds_sum {}",
            c.duration_sum
        ));
        out.line(format!(
            "covenant_run_duration_seconds_count {}",
            c.duration_count
        ));
        let counted = |map: &BTreeMap<&'static str, u64>,
                       keys: &[&'static str]|
         -> Vec<(&'static str, u64)> {
            keys.iter()
                .map(|k| (*k, map.get(k).copied().unwrap_or(0)))
                .collect()
        };
        out.family(
            "covenant_refusals_total",
            "counter",
            "Submissions refused, by reason.",
            "reason",
            &counted(
                &c.refused,
                &[
                    "admission",
                    "capability",
                    "invalid",
                    "scope",
                    "shutting-down",
                ],
            ),
        );
        let limits: Vec<(&str, u64)> = ["memory", "pids", "timeout"]
            .iter()
            .map(|l| (*l, c.limits.get(*l).copied().unwrap_or(0)))
            .collect();
        out.family(
            "covenant_limits_hit_total",
            "counter",
            "Runs that reached a limit, by limit.",
            "limit",
            &limits,
        );
        out.head(
            "covenant_connections_open",
            "gauge",
            "Client connections open now (operator, TCP and agent sockets).",
        );
        out.line(format!("covenant_connections_open {open_connections}"));
        out.family(
            "covenant_connections_refused_total",
            "counter",
            "Connections closed unanswered past their bound, by socket.",
            "socket",
            &counted(&c.connections_refused, &["operator", "tcp", "agent"]),
        );
        out.head(
            "covenant_store_bytes",
            "gauge",
            "Size of the store (database and WAL).",
        );
        out.line(format!("covenant_store_bytes {store_bytes}"));
        out.text
    }
}

/// Text in the Prometheus exposition format.
#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    fn line(&mut self, line: String) {
        self.text.push_str(&line);
        self.text.push('\n');
    }

    fn head(&mut self, name: &str, kind: &str, help: &str) {
        self.line(format!("# HELP {name} {help}"));
        self.line(format!("# TYPE {name} {kind}"));
    }

    /// A metric with one label and a value per label value.
    fn family(&mut self, name: &str, kind: &str, help: &str, label: &str, values: &[(&str, u64)]) {
        self.head(name, kind, help);
        for (v, n) in values {
            self.line(format!("{name}{{{label}=\"{v}\"}} {n}"));
        }
    }
}
