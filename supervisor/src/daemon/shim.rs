//! The per-job sandbox process. The daemon is multithreaded, and a sandbox must be cloned
//! from a single-threaded process; so for each job the daemon starts its own executable
//! again as `covenantd shim`, which runs one plan with the stdio the daemon gave it and
//! reports over its control socket (`--control-fd`): audit events as they are flushed,
//! then the report or the error. The shim never opens the store: the daemon writes every
//! event.

use crate::run::{run_plan, RunAudit, RunError, RunReport, RunSettings};
use crate::store::AuditEvent;
use crate::store::Kind;
use covenant_policy::SandboxPlan;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;

/// What the daemon sends the shim: one line of JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShimJob {
    pub plan: SandboxPlan,
    pub runner: String,
    /// The job's stdin comes through the shim's stdin pipe; otherwise the shim reads
    /// from /dev/null (a pooled shim is started before anyone knows).
    pub stdin: bool,
}

/// What the shim sends back, a line each: events as the run flushes them (the daemon
/// commits each batch as it arrives), then the report or the error with the run's last
/// events, which the daemon commits in one transaction with the job's end.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ShimMessage {
    Events {
        events: Vec<WireEvent>,
    },
    Report {
        report: Box<RunReport>,
        events: Vec<WireEvent>,
    },
    Error {
        kind: Kind,
        reason: String,
        events: Vec<WireEvent>,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireEvent {
    pub kind: Kind,
    pub body: serde_json::Value,
}

impl From<AuditEvent> for WireEvent {
    fn from(e: AuditEvent) -> Self {
        WireEvent {
            kind: Kind::parse(&e.kind).expect("a run writes only the kinds of store::Kind"),
            body: e.body,
        }
    }
}

impl From<WireEvent> for AuditEvent {
    fn from(e: WireEvent) -> Self {
        AuditEvent::new(e.kind, e.body)
    }
}

fn send(out: &mut UnixStream, message: &ShimMessage) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(message).map_err(std::io::Error::other)?;
    line.push(b'\n');
    out.write_all(&line)
}

/// Puts /dev/null on descriptor 0 in place of the (closed) pipe the daemon started the
/// shim with, so the sandbox's stdin reads as it would on a shim started with it.
fn stdin_from_dev_null() -> nix::Result<()> {
    use nix::fcntl::{open, OFlag};
    let null = open(
        "/dev/null",
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    if null != 0 {
        nix::unistd::dup2(null, 0)?;
        nix::unistd::close(null)?;
    }
    Ok(())
}

/// `covenantd shim --control-fd FD --parent PID`: returns the process's exit code.
///
/// The shim dies with the daemon: it asks for SIGKILL when its parent goes, then checks
/// that its parent is still `parent`, so a daemon that died before the request leaves no
/// shim behind either.
pub fn main(control_fd: i32, parent: i32) -> i32 {
    if nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).is_err()
        || nix::unistd::getppid().as_raw() != parent
    {
        return 125;
    }
    if control_fd <= 2 {
        return 125;
    }
    // Marked close-on-exec so no runtime inherits it.
    let cloexec = nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC);
    if nix::fcntl::fcntl(control_fd, cloexec).is_err() {
        return 125;
    }
    // SAFETY: the descriptor was passed by the daemon for this process alone; from here
    // it is owned by this stream.
    let mut control = unsafe { UnixStream::from_raw_fd(control_fd) };
    let mut line = String::new();
    let job: ShimJob = match BufReader::new(&control)
        .read_line(&mut line)
        .map_err(|e| e.to_string())
        .and_then(|_| serde_json::from_str(&line).map_err(|e| e.to_string()))
    {
        Ok(job) => job,
        Err(reason) => {
            let _ = send(
                &mut control,
                &ShimMessage::Error {
                    kind: Kind::RunFailed,
                    reason: format!("shim: no job on the control channel: {reason}"),
                    events: Vec::new(),
                },
            );
            return 125;
        }
    };
    if !job.stdin {
        if let Err(e) = stdin_from_dev_null() {
            let _ = send(
                &mut control,
                &ShimMessage::Error {
                    kind: Kind::RunFailed,
                    reason: format!("shim: stdin from /dev/null: {e}"),
                    events: Vec::new(),
                },
            );
            return 125;
        }
    }
    let mut out = control.try_clone().expect("duplicating the control socket");
    let mut sink = |events: Vec<AuditEvent>| -> Result<(), RunError> {
        // An empty batch asks only whether the daemon can take events: it can.
        if events.is_empty() {
            return Ok(());
        }
        let events = events.into_iter().map(WireEvent::from).collect();
        send(&mut out, &ShimMessage::Events { events }).map_err(|error| RunError::Home {
            path: "control channel".into(),
            error,
        })
    };
    let settings = RunSettings {
        keep_bundle: None,
        runner: Some(job.runner.clone()),
    };
    let mut audit = RunAudit::new(&job.plan.job_id, Vec::new(), &mut sink);
    let result = run_plan(&mut audit, &job.plan, &settings);
    if let Err(e) = &result {
        audit.push(
            crate::run::refusal_kind(e),
            serde_json::json!({"reason": e.to_string()}),
        );
    }
    // The last events travel with the outcome: one message, one commit with the end.
    let events: Vec<WireEvent> = audit.into_pending().into_iter().map(Into::into).collect();
    let last = match result {
        Ok(report) => ShimMessage::Report {
            report: Box::new(report),
            events,
        },
        Err(e) => ShimMessage::Error {
            kind: crate::run::refusal_kind(&e),
            reason: e.to_string(),
            events,
        },
    };
    match send(&mut control, &last) {
        Ok(()) => 0,
        Err(_) => 125,
    }
}
