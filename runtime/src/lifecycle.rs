//! The commands that act on an existing container, each from a fresh invocation that
//! knows only `--root`: `start`, `state`, `kill`, `delete`, `list`, `ps`, `pause`,
//! `resume`, `events`, `update`.

use crate::cgroups::Cgroup;
use crate::error::RuntimeError;
use crate::hooks;
use crate::state::{self, hook_state, Record, Root, Status, START_SOCKET};
use nix::sys::signal::{kill as send, Signal};
use nix::unistd::Pid;
use std::io::Read;
use std::time::{Duration, Instant};

type Result<T> = std::result::Result<T, RuntimeError>;

fn wrong_status(record: &Record, action: &'static str, status: Status) -> RuntimeError {
    RuntimeError::Status {
        id: record.id.clone(),
        action,
        status: status.as_str(),
    }
}

/// Releases a created container: connects to its barrier and waits until its process
/// has exec'd (the connection closes) or reports why it could not.
pub fn start(root: &Root, id: &str) -> Result<()> {
    let mut record = root.load(id)?;
    let status = state::status(&record);
    if status != Status::Created {
        return Err(wrong_status(&record, "start", status));
    }
    let dir = root.container_dir(id);
    let cwd = std::env::current_dir().ok();
    let io = |e: std::io::Error| RuntimeError::Io {
        what: "connect to the start barrier",
        path: dir.join(START_SOCKET),
        source: e,
    };
    std::env::set_current_dir(&dir).map_err(io)?;
    let conn = std::os::unix::net::UnixStream::connect(START_SOCKET);
    let _ = std::fs::remove_file(START_SOCKET);
    if let Some(c) = cwd {
        let _ = std::env::set_current_dir(c);
    }
    let mut conn = conn.map_err(io)?;
    record.started = true;
    root.save(&record)?;
    let mut buf = Vec::new();
    let _ = conn.read_to_end(&mut buf);
    if !buf.is_empty() {
        let (step, detail) = crate::step::StepError::decode(&buf);
        return Err(RuntimeError::Setup { step, detail });
    }
    // A failed poststart hook is a warning: the container runs on.
    hooks::run_warning(
        "poststart",
        &record.hooks.poststart,
        &hook_state(&record, Status::Running),
    );
    Ok(())
}

pub fn state(root: &Root, id: &str) -> Result<serde_json::Value> {
    Ok(state::state_json(&root.load(id)?))
}

/// Parses `TERM`, `SIGTERM`, `sigterm` or `15`.
pub fn parse_signal(text: &str) -> Result<Signal> {
    if let Ok(n) = text.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| RuntimeError::Signal(text.to_string()));
    }
    let upper = text.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<Signal>()
        .map_err(|_| RuntimeError::Signal(text.to_string()))
}

pub fn kill(root: &Root, id: &str, signal: Signal, all: bool) -> Result<()> {
    let record = root.load(id)?;
    let status = state::status(&record);
    if status == Status::Stopped {
        return Err(wrong_status(&record, "kill", status));
    }
    if all {
        let cg = Cgroup::from_dirs(&record.cgroup_dirs);
        for pid in cg.pids() {
            let _ = send(Pid::from_raw(pid), signal);
        }
        return Ok(());
    }
    send(Pid::from_raw(record.pid), signal).map_err(|errno| RuntimeError::Sys {
        what: "kill",
        errno,
    })
}

/// Deletes a stopped container (or, with `force`, any: it is killed first), runs its
/// poststop hooks and removes its cgroup and state.
pub fn delete(root: &Root, id: &str, force: bool) -> Result<()> {
    let record = match root.load(id) {
        Ok(r) => r,
        // A create that died before it recorded the container leaves its directory and
        // perhaps the cgroup it claimed; its init exits on its own. The cgroup goes only
        // if it is empty: nothing is killed on the word of a half-made record, since
        // another container may have been given the same `cgroupsPath` since.
        Err(crate::state::StateError::NotFound(_)) if force => {
            let cg = Cgroup::from_dirs(&root.claimed_cgroups(id));
            if cg.pids().is_empty() {
                cg.remove();
            }
            return Ok(root.remove(id)?);
        }
        Err(e) => return Err(e.into()),
    };
    let status = state::status(&record);
    if status != Status::Stopped {
        if !force {
            return Err(wrong_status(&record, "delete", status));
        }
        let cg = Cgroup::from_dirs(&record.cgroup_dirs);
        if status == Status::Paused {
            let _ = cg.freeze(false);
        }
        kill_all(&record, &cg);
    }
    let cg = Cgroup::from_dirs(&record.cgroup_dirs);
    if !cg.pids().is_empty() {
        kill_all(&record, &cg);
    }
    cg.remove();
    hooks::run_warning(
        "poststop",
        &record.hooks.poststop,
        &hook_state(&record, Status::Stopped),
    );
    root.remove(id)?;
    Ok(())
}

/// SIGKILLs the init and everything in the cgroup, and waits (briefly) until they are gone.
fn kill_all(record: &Record, cg: &Cgroup) {
    if state::init_alive(record) {
        let _ = send(Pid::from_raw(record.pid), Signal::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pids = cg.pids();
        for pid in &pids {
            let _ = send(Pid::from_raw(*pid), Signal::SIGKILL);
        }
        // Reap the init if this process is its parent (`run`).
        let _ = nix::sys::wait::waitpid(
            Pid::from_raw(record.pid),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        );
        if (pids.is_empty() && !state::init_alive(record)) || Instant::now() > deadline {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub fn list(root: &Root) -> Result<Vec<serde_json::Value>> {
    let mut out = Vec::new();
    for id in root.ids()? {
        if let Ok(r) = root.load(&id) {
            out.push(state::state_json(&r));
        }
    }
    Ok(out)
}

pub fn ps(root: &Root, id: &str) -> Result<Vec<i32>> {
    let record = root.load(id)?;
    Ok(Cgroup::from_dirs(&record.cgroup_dirs).pids())
}

pub fn pause(root: &Root, id: &str, frozen: bool) -> Result<()> {
    let record = root.load(id)?;
    let status = state::status(&record);
    let ok = if frozen {
        status == Status::Running || status == Status::Created
    } else {
        status == Status::Paused
    };
    if !ok {
        return Err(wrong_status(
            &record,
            if frozen { "pause" } else { "resume" },
            status,
        ));
    }
    Cgroup::from_dirs(&record.cgroup_dirs).freeze(frozen)?;
    Ok(())
}

/// One `events --stats` record.
pub fn stats(root: &Root, id: &str) -> Result<serde_json::Value> {
    let record = root.load(id)?;
    let data = Cgroup::from_dirs(&record.cgroup_dirs).stats();
    Ok(serde_json::json!({ "type": "stats", "id": id, "data": data }))
}

/// Writes new limits (a `linux.resources` JSON document) to a live container's cgroup.
pub fn update(root: &Root, id: &str, resources: &oci_spec::runtime::LinuxResources) -> Result<()> {
    let record = root.load(id)?;
    let status = state::status(&record);
    if status == Status::Stopped {
        return Err(wrong_status(&record, "update", status));
    }
    Cgroup::from_dirs(&record.cgroup_dirs).update(resources)?;
    Ok(())
}
