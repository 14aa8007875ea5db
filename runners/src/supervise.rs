//! Waiting for a sandbox: the caller's signals are forwarded, and the timeout kills the
//! whole sandbox. Shared by every runner.

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

/// Signals the caller may send to `covenant-ctl` that reach the sandbox.
pub const FORWARDED: [Signal; 9] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
    Signal::SIGCONT,
    Signal::SIGALRM,
];

/// How the wait ended.
pub struct Supervised {
    pub timed_out: bool,
    pub duration: Duration,
    /// Signals the caller sent that were passed on, in order.
    pub forwarded: Vec<i32>,
}

/// Blocks the forwarded signals for this thread and returns a signalfd for them, with the
/// mask to restore afterwards.
pub fn forwarded_signals() -> nix::Result<(SignalFd, SigSet)> {
    let mut set = SigSet::empty();
    for s in FORWARDED {
        set.add(s);
    }
    let old = set.thread_swap_mask(nix::sys::signal::SigmaskHow::SIG_BLOCK)?;
    match SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK) {
        Ok(fd) => Ok((fd, old)),
        Err(e) => {
            let _ = old.thread_set_mask();
            Err(e)
        }
    }
}

/// Waits until `pidfd` is readable (the sandbox's first process exited), passing each
/// forwarded signal to `forward`; when `timeout` (from `started`) passes, sends SIGKILL
/// through `forward` once and keeps waiting for the exit.
pub fn supervise(
    pidfd: &OwnedFd,
    sfd: &SignalFd,
    timeout: Option<Duration>,
    started: Instant,
    forward: &mut dyn FnMut(Signal),
) -> nix::Result<Supervised> {
    let mut timed_out = false;
    let mut forwarded = Vec::new();
    loop {
        let wait = match (timeout, timed_out) {
            (Some(t), false) => {
                let left = t.saturating_sub(started.elapsed());
                PollTimeout::try_from(left.as_millis().min(i32::MAX as u128) as i32)
                    .unwrap_or(PollTimeout::MAX)
            }
            _ => PollTimeout::NONE,
        };
        let mut fds = [
            PollFd::new(pidfd.as_fd(), PollFlags::POLLIN),
            PollFd::new(sfd.as_fd(), PollFlags::POLLIN),
        ];
        let n = match poll(&mut fds, wait) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e),
        };
        if fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLIN))
        {
            return Ok(Supervised {
                timed_out,
                duration: started.elapsed(),
                forwarded,
            });
        }
        if fds[1]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLIN))
        {
            while let Ok(Some(info)) = sfd.read_signal() {
                if let Ok(sig) = Signal::try_from(info.ssi_signo as i32) {
                    forwarded.push(sig as i32);
                    forward(sig);
                }
            }
        }
        if n == 0 && timeout.is_some() && !timed_out {
            timed_out = true;
            forward(Signal::SIGKILL);
        }
    }
}

/// A pidfd for process `pid`.
pub fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor owned by nobody else.
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd as i32) })
}
