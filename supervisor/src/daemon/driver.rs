//! The shim driver: each running job gets its own shim process (`covenantd shim`), which
//! clones the sandbox. The driver takes it from the pool (or starts it), sends it the
//! plan, copies its output into the job's buffers, commits the audit events it reports,
//! and commits the job's end with the run's last events.

use super::api::Stream;
use super::control::kill;
use super::pool::{start_shim, Shim};
use super::shim::{ShimJob, ShimMessage};
use super::state::{event, release, Daemon};
use crate::run::RunReport;
use crate::store::jobs::JobState;
use crate::store::Kind;
use crate::store::{audit::now_ms, AuditEvent};
use serde_json::json;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// The report with the daemon's own steps (admission, queue) before the shim's.
fn with_daemon_timings(daemon: &Daemon, id: &str, mut report: RunReport) -> RunReport {
    if let Some(job) = daemon.lock_state().jobs.get(id) {
        let mut timings = job.clock.timings().clone();
        timings.extend(&report.timings_us);
        report.timings_us = timings;
    }
    report
}

/// Drives every job handed to [`Daemon::start`], each in a task of its own, until the
/// daemon is dropped.
pub async fn run_starts(daemon: Arc<Daemon>, mut starts: mpsc::UnboundedReceiver<String>) {
    // On the runtime thread, which lives as long as the daemon: each shim's
    // PR_SET_PDEATHSIG follows the thread that started it.
    daemon.pool.fill(&daemon.config, || {
        daemon.shutting_down.load(Ordering::SeqCst)
    });
    while let Some(id) = starts.recv().await {
        tokio::spawn(drive(daemon.clone(), id));
    }
}

/// Runs one admitted job to its end. The final row is committed with the job's last
/// audit events before anyone can see the job as ended.
async fn drive(daemon: Arc<Daemon>, id: String) {
    let End {
        mut state,
        mut exit_code,
        mut reason,
        report,
        mut events,
        silent,
    } = match run_shim(&daemon, &id).await {
        Ok(end) => end,
        Err(reason) => End::failed(&id, reason),
    };
    // The agent socket closes with the sandbox, its connections with it; what the agent
    // asked since the last summary row is written with the job's end.
    let (children, killed, row, agent, summary) = {
        let mut st = daemon.lock_state();
        let Some(job) = st.jobs.get_mut(&id) else {
            return;
        };
        // From here no child is admitted under it: every child is in this list.
        job.closing = true;
        (
            job.children.clone(),
            job.kill_reason.clone(),
            job.row.clone(),
            job.agent.take(),
            job.agent_tally.take_summary(&id),
        )
    };
    drop(agent);
    events.extend(summary);
    if let Some(why) = killed {
        if daemon.shutting_down.load(Ordering::SeqCst) {
            state = JobState::Interrupted;
        } else if silent {
            // The SIGKILL reached the sandbox process before it could report (it was
            // still setting up): the job ended by the kill asked for, as it would have a
            // moment later, not by a failure of its own.
            state = JobState::Exited;
            exit_code = Some(128 + libc::SIGKILL);
        }
        reason = Some(match reason {
            Some(r) => format!("killed: {why} ({r})"),
            None => format!("killed: {why}"),
        });
    }
    // Children end with their parent.
    for child in &children {
        let _ = kill(&daemon, child, libc::SIGKILL, "its parent job ended").await;
    }
    let mut end = row;
    end.state = state;
    end.exit_code = exit_code;
    end.reason = reason;
    end.report = match report.map(|r| serde_json::to_value(&r)).transpose() {
        Ok(value) => value,
        Err(e) => {
            events.push(event(
                Kind::RunFailed,
                &id,
                json!({"reason": format!("the run report could not be stored: {e}")}),
            ));
            None
        }
    };
    end.ended_ms = Some(now_ms());
    events.push(event(
        Kind::JobFinished,
        &id,
        json!({"state": end.state, "exit_code": end.exit_code, "reason": end.reason}),
    ));
    let _ = daemon.commit(events, vec![end.clone()], false).await;
    release(&daemon, &id, &end);
}

/// How a job's sandbox ended, as its shim told it (or its silence did).
struct End {
    state: JobState,
    exit_code: Option<i32>,
    reason: Option<String>,
    /// The shim's report; none when the run failed or the shim died.
    report: Option<RunReport>,
    /// Audit events committed with this end: the run's last (sent with the shim's
    /// report or error), or the driver's record of a failure.
    events: Vec<AuditEvent>,
    /// The sandbox process ended without a word (killed, crashed), not with an error it
    /// reported.
    silent: bool,
}

impl End {
    /// The run could not be set up, or its sandbox process failed: exit 125, audited.
    fn failed(id: &str, reason: String) -> Self {
        End {
            state: JobState::Failed,
            exit_code: Some(crate::run::EXIT_SETUP),
            events: vec![event(Kind::RunFailed, id, json!({"reason": reason}))],
            reason: Some(reason),
            report: None,
            silent: false,
        }
    }
}

async fn run_shim(daemon: &Arc<Daemon>, id: &str) -> Result<End, String> {
    let (plan, runner, stdin_rx) = {
        let mut st = daemon.lock_state();
        let job = st.jobs.get_mut(id).ok_or("job vanished")?;
        (
            job.plan.clone(),
            job.row.runner.clone(),
            job.stdin_rx.take(),
        )
    };
    // A pooled shim if one is idle, else one started now; either way a fresh process
    // that runs this job alone. The pool is topped up once this task yields.
    let Shim {
        mut child,
        control: ours,
    } = match daemon.pool.take() {
        Some(shim) => shim,
        None => start_shim(&daemon.config)?,
    };
    if daemon.config.shim_pool > 0 {
        let d = daemon.clone();
        tokio::spawn(async move {
            d.pool
                .fill(&d.config, || d.shutting_down.load(Ordering::SeqCst))
        });
    }
    let wants_stdin = stdin_rx.is_some();
    if !wants_stdin {
        // The shim reads its stdin from /dev/null instead (ShimJob::stdin).
        drop(child.stdin.take());
    }
    let shim_pid = child.id().map(|p| p as i32);
    let row = {
        let mut st = daemon.lock_state();
        let job = st.jobs.get_mut(id).ok_or("job vanished")?;
        job.row.state = JobState::Running;
        job.row.started_ms = Some(now_ms());
        job.row.shim_pid = shim_pid;
        job.changed.send_modify(|v| *v += 1);
        job.row.clone()
    };
    // The row names the shim before the sandbox exists, so a restarted daemon can find it.
    if let Err(e) = daemon
        .commit(
            vec![event(Kind::JobStarted, id, json!({"shim_pid": shim_pid}))],
            vec![row],
            false,
        )
        .await
    {
        let _ = child.start_kill();
        let _ = child.wait().await;
        return Err(e.body.error);
    }
    ours.set_nonblocking(true)
        .map_err(|e| format!("control socket: {e}"))?;
    let control = tokio::net::UnixStream::from_std(ours).map_err(|e| format!("control: {e}"))?;
    let (control_rd, mut control_wr) = control.into_split();
    let job = ShimJob {
        plan,
        runner,
        stdin: wants_stdin,
    };
    let sent = match serde_json::to_vec(&job) {
        Ok(mut line) => {
            line.push(b'\n');
            control_wr.write_all(&line).await
        }
        Err(e) => Err(std::io::Error::other(e)),
    };
    if let Err(e) = sent {
        let _ = child.start_kill();
        let _ = child.wait().await;
        return Err(format!("sending the job to its sandbox process: {e}"));
    }
    if let Some(job) = daemon.lock_state().jobs.get_mut(id) {
        job.clock.lap(covenant_runners::timing::TimedStep::Queue);
    }
    let stdin_task = match (child.stdin.take(), stdin_rx) {
        (Some(mut pipe), Some(mut rx)) => Some(tokio::spawn(async move {
            while let Some(chunk) = rx.recv().await {
                if pipe.write_all(&chunk).await.is_err() {
                    break;
                }
            }
        })),
        _ => None,
    };
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let limit = daemon.config.output_limit;
    let copy = |mut pipe: Box<dyn tokio::io::AsyncRead + Unpin + Send>, stream: Stream| {
        let daemon = daemon.clone();
        let id = id.to_string();
        async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match pipe.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let mut st = daemon.lock_state();
                        if let Some(job) = st.jobs.get_mut(&id) {
                            match stream {
                                Stream::Stdout => job.stdout.push(&buf[..n], limit),
                                Stream::Stderr => job.stderr.push(&buf[..n], limit),
                            }
                            job.changed.send_modify(|v| *v += 1);
                        }
                    }
                }
            }
        }
    };
    let messages = async {
        let mut lines = tokio::io::BufReader::new(control_rd).lines();
        let mut last = None;
        while let Ok(Some(line)) = lines.next_line().await {
            match serde_json::from_str::<ShimMessage>(&line) {
                Ok(ShimMessage::Events { events }) => {
                    let events: Vec<AuditEvent> = events.into_iter().map(Into::into).collect();
                    daemon.metrics.observe_events(&events);
                    let _ = daemon.commit(events, Vec::new(), false).await;
                }
                Ok(other) => last = Some(other),
                Err(e) => {
                    last = Some(ShimMessage::Error {
                        kind: Kind::RunFailed,
                        reason: format!("sandbox process sent an unreadable message: {e}"),
                        events: Vec::new(),
                    })
                }
            }
        }
        last
    };
    let (last, _, _, status) = tokio::join!(
        messages,
        copy(Box::new(stdout), Stream::Stdout),
        copy(Box::new(stderr), Stream::Stderr),
        child.wait()
    );
    if let Some(t) = stdin_task {
        t.abort();
    }
    let last_events = |events: Vec<super::shim::WireEvent>| {
        let events: Vec<AuditEvent> = events.into_iter().map(Into::into).collect();
        daemon.metrics.observe_events(&events);
        events
    };
    let end = match last {
        Some(ShimMessage::Report { report, events }) => End {
            state: JobState::Exited,
            exit_code: Some(report.exit_code),
            reason: None,
            report: Some(with_daemon_timings(daemon, id, *report)),
            events: last_events(events),
            silent: false,
        },
        // The shim audited its own failure in the events it sent with it.
        Some(ShimMessage::Error { reason, events, .. }) => End {
            events: last_events(events),
            ..End::failed(id, reason)
        },
        _ => End {
            silent: true,
            ..End::failed(
                id,
                match status {
                    Ok(s) => format!("the sandbox process ended without a report ({s})"),
                    Err(e) => format!("the sandbox process could not be waited for: {e}"),
                },
            )
        },
    };
    // A shim that reported cleaned up after itself; one that died without a report (or
    // failed, possibly in its cleanup) may have left cgroups, mounts and the bundle.
    if end.report.is_none() {
        super::recovery::clean_job(&daemon.config.home, id, shim_pid);
    }
    Ok(end)
}
