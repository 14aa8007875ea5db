//! Job control: signals and cancellation, status and waiting, stdin, and the output
//! stream, each for a job the caller was already found to own.

use super::api::{ApiError, JobStatus, OutputLine, Stream};
use super::state::{event, release, Daemon};
use crate::store::audit::now_ms;
use crate::store::jobs::JobState;
use crate::store::Kind;
use bytes::Bytes;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde_json::json;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Largest piece of output sent as one line of `/output`: a reader that stalls holds at
/// most its channel's lines of this size.
const OUTPUT_LINE_BYTES: usize = 48 * 1024;

/// `sandbox.signalled` rows one job gets; a caller repeating signals gets no more rows.
pub(super) const MAX_SIGNAL_ROWS: u64 = 100;

/// Sends `signal` to a job: a queued job is cancelled; a running one gets the signal
/// through its shim (which forwards it to the program), or, for `KILL`, every process in
/// its cgroups is killed.
pub async fn kill(
    daemon: &Arc<Daemon>,
    id: &str,
    signal: i32,
    why: &str,
) -> Result<JobState, ApiError> {
    let state = kill_queued(daemon, id, why).await?;
    if state != JobState::Running {
        return Ok(state);
    }
    let (shim_pid, signals) = {
        let mut st = daemon.lock_state();
        let Some(job) = st.jobs.get_mut(id) else {
            return Ok(JobState::Running);
        };
        if signal == libc::SIGKILL {
            job.kill_reason.get_or_insert_with(|| why.to_string());
        }
        job.signals += 1;
        (job.row.shim_pid, job.signals)
    };
    if signals <= MAX_SIGNAL_ROWS {
        daemon.record(vec![event(
            Kind::SandboxSignalled,
            id,
            json!({"signal": signal, "by": "api", "reason": why, "nth": signals,
                   "further": if signals == MAX_SIGNAL_ROWS { "counted only" } else { "audited" }}),
        )]);
    }
    if signal == libc::SIGKILL {
        let killed = super::recovery::kill_job_processes(id, shim_pid);
        if killed == 0 {
            if let Some(pid) = shim_pid {
                // The daemon's own child, not yet reaped.
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    } else if let Some(pid) = shim_pid {
        // The shim forwards the signal to the program. Raw, because nix's `Signal` cannot
        // name the real-time signals a caller may send.
        // SAFETY: kill(2) on the daemon's own child, not yet reaped; no memory is touched.
        unsafe { libc::kill(pid, signal) };
    }
    Ok(JobState::Running)
}

/// Cancels job `id` if it is still queued; returns its state either way.
pub async fn kill_queued(daemon: &Arc<Daemon>, id: &str, why: &str) -> Result<JobState, ApiError> {
    let row = {
        let st = daemon.lock_state();
        let job = st
            .jobs
            .get(id)
            .ok_or_else(|| ApiError::new(404, format!("no live job {id}")))?;
        job.row.clone()
    };
    if row.state != JobState::Queued {
        return Ok(row.state);
    }
    let mut end = row;
    end.state = JobState::Cancelled;
    end.reason = Some(why.to_string());
    end.ended_ms = Some(now_ms());
    let events = vec![event(Kind::JobCancelled, id, json!({"reason": why}))];
    daemon.commit(events, vec![end.clone()], false).await?;
    release(daemon, id, &end);
    Ok(JobState::Cancelled)
}

/// Whether the daemon still holds job `id`'s output.
pub fn has_output(daemon: &Daemon, id: &str) -> bool {
    daemon.lock_state().jobs.contains_key(id)
}

/// The job's row, from memory while it is live, else from the store.
pub fn status(daemon: &Daemon, id: &str) -> Result<JobStatus, ApiError> {
    {
        let st = daemon.lock_state();
        if let Some(j) = st.jobs.get(id) {
            return Ok(JobStatus {
                row: j.row.clone(),
                stdout_bytes: j.stdout.total(),
                stderr_bytes: j.stderr.total(),
            });
        }
    }
    let row = daemon
        .with_store(|s| s.job(id))?
        .ok_or_else(|| ApiError::new(404, format!("no job {id}")))?;
    Ok(JobStatus {
        row,
        stdout_bytes: 0,
        stderr_bytes: 0,
    })
}

/// Waits until job `id` is final (or `timeout` passes); returns its status.
pub async fn wait(
    daemon: &Arc<Daemon>,
    id: &str,
    timeout: std::time::Duration,
) -> Result<JobStatus, ApiError> {
    // The guard ends with this statement: `status` takes the lock itself.
    let live = daemon
        .lock_state()
        .jobs
        .get(id)
        .map(|j| j.changed.subscribe());
    let Some(mut rx) = live else {
        return status(daemon, id);
    };
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let s = status(daemon, id)?;
        if s.row.state.is_final() {
            return Ok(s);
        }
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => {}
            // The deadline passed, or the daemon forgot the job (its row is final in the
            // store by then): answer what is known rather than spin on a closed channel.
            Err(_) => return Ok(s),
            Ok(Err(_)) => return status(daemon, id),
        }
    }
}

/// Sends stdin bytes to a job that asked for a pipe; `None` closes it.
pub async fn write_stdin(daemon: &Daemon, id: &str, chunk: Option<Bytes>) -> Result<(), ApiError> {
    let tx = {
        let mut st = daemon.lock_state();
        let job = st
            .jobs
            .get_mut(id)
            .ok_or_else(|| ApiError::new(404, format!("no live job {id}")))?;
        if job.row.state.is_final() {
            return Err(ApiError::new(409, format!("job {id} has ended")));
        }
        match chunk {
            None => {
                job.stdin_tx = None;
                return Ok(());
            }
            Some(_) => job.stdin_tx.clone().ok_or_else(|| {
                ApiError::new(
                    409,
                    format!("job {id} has no stdin pipe (submit with \"stdin\": \"pipe\"), or it was closed"),
                )
            })?,
        }
    };
    tx.send(chunk.expect("checked above"))
        .await
        .map_err(|_| ApiError::new(409, format!("job {id} no longer reads stdin")))
}

/// Streams a job's output as newline-delimited JSON into `out` until it ends (or at once
/// without `follow`).
pub async fn stream_output(
    daemon: Arc<Daemon>,
    id: String,
    follow: bool,
    out: mpsc::Sender<Bytes>,
) {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    let Some(mut changed) = daemon
        .lock_state()
        .jobs
        .get(&id)
        .map(|j| j.changed.subscribe())
    else {
        return;
    };
    let mut offsets = [0u64; 2];
    loop {
        let (chunks, end) = {
            let st = daemon.lock_state();
            let Some(job) = st.jobs.get(&id) else { return };
            let mut chunks = Vec::new();
            for (i, (stream, output)) in
                [(Stream::Stdout, &job.stdout), (Stream::Stderr, &job.stderr)]
                    .into_iter()
                    .enumerate()
            {
                let (at, data) = output.since(offsets[i]);
                offsets[i] = at + data.len() as u64;
                for (n, piece) in data.chunks(OUTPUT_LINE_BYTES).enumerate() {
                    chunks.push(OutputLine::Data {
                        stream,
                        offset: at + (n * OUTPUT_LINE_BYTES) as u64,
                        data: STANDARD.encode(piece),
                    });
                }
            }
            let end = (job.row.state.is_final()).then(|| OutputLine::End {
                state: job.row.state,
                exit_code: job.row.exit_code,
                reason: job.row.reason.clone(),
            });
            (chunks, end)
        };
        // A reader that takes no line within the request timeout is dropped: a stalled
        // client must not hold the job's output (and a descriptor) forever.
        let patience = daemon.config.request_timeout;
        for c in chunks.iter().chain(end.iter()) {
            // Plain data: it serialises; a line that would not ends the stream early.
            let Ok(mut line) = serde_json::to_vec(c) else {
                return;
            };
            line.push(b'\n');
            if out.send_timeout(Bytes::from(line), patience).await.is_err() {
                return;
            }
        }
        if end.is_some() || !follow {
            return;
        }
        if changed.changed().await.is_err() {
            return;
        }
    }
}
