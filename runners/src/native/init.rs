//! The sandbox's PID 1: reaps every orphan, forwards the signals the supervisor sends to
//! the program, and when the program exits, reports its wait status and exits, which makes
//! the kernel kill everything else left in the PID namespace.

use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::os::fd::OwnedFd;

use crate::supervise::FORWARDED;

/// The set init waits on: the forwarded signals and `SIGCHLD`.
pub fn init_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in FORWARDED {
        set.add(s);
    }
    set.add(Signal::SIGCHLD);
    set
}

/// Encodes a wait status as the raw `int` of `waitpid(2)`.
fn raw_status(status: WaitStatus) -> Option<i32> {
    match status {
        WaitStatus::Exited(_, code) => Some((code & 0xff) << 8),
        WaitStatus::Signaled(_, sig, core) => Some(sig as i32 | if core { 0x80 } else { 0 }),
        _ => None,
    }
}

/// Runs as PID 1 until `program` exits. `signals` must already be blocked (before the
/// fork, so none is lost in between). Never returns.
pub fn run_init(program: Pid, signals: &SigSet, status_out: OwnedFd) -> ! {
    loop {
        let sig = match signals.wait() {
            Ok(sig) => sig,
            Err(_) => continue,
        };
        if sig != Signal::SIGCHLD {
            let _ = kill(program, sig);
            continue;
        }
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(status) if status.pid() == Some(program) => {
                    if let Some(raw) = raw_status(status) {
                        let _ = nix::unistd::write(&status_out, &raw.to_ne_bytes());
                        // SAFETY: _exit ends this process; PID 1 leaving tears the namespace down.
                        unsafe { libc::_exit(0) };
                    }
                }
                Ok(_) => {}
            }
        }
    }
}
