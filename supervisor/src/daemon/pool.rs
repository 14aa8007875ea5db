//! Shims started ahead of their jobs. Starting a shim (the spawn, the exec of this large
//! binary, the dynamic loader, the shim's start-up) is about 2 ms a job pays before its
//! sandbox can be cloned; a pooled shim has paid it already and waits, idle, on its
//! control socket for the one plan it will ever run.
//!
//! A pooled shim is the same fresh, single-threaded process a shim started on demand is:
//! it is handed exactly one job and ends with it, so no two jobs ever share a supervising
//! process. It is started from the daemon's runtime thread and sets `PR_SET_PDEATHSIG`
//! itself (the signal follows the thread that started it), so it dies with the daemon;
//! it has created nothing yet (no cgroup, bundle, mount or staging folder), so a daemon
//! killed with idle shims leaves nothing for recovery. The pool never holds more than its
//! bound, and a shim found dead when taken is discarded, never handed a job.

use super::config::Config;
use std::collections::VecDeque;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// A started shim that has not been given its job yet.
pub(super) struct Shim {
    pub(super) child: tokio::process::Child,
    /// The daemon's end of the shim's control socket (`--control-fd` in the shim).
    pub(super) control: UnixStream,
}

/// Starts one shim: stdin, stdout and stderr piped to the daemon, its end of the control
/// socket passed by number (`--control-fd`), killed with the daemon (`--parent`: the shim
/// sets its parent-death signal first thing and exits unless its parent is still this
/// daemon). Nothing runs between fork and exec, so the standard library starts it with
/// `posix_spawn` (a `vfork`-style clone) instead of copying the daemon's page tables as
/// `fork` does. Must be called on the daemon's runtime thread: the parent-death signal
/// follows the thread that started the shim, and no other thread of the daemon starts
/// processes, so the control socket's end, inheritable for this one call, reaches this
/// shim alone.
pub(super) fn start_shim(config: &Config) -> Result<Shim, String> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    use std::os::fd::AsRawFd;
    let (ours, theirs) =
        UnixStream::pair().map_err(|e| format!("the sandbox process's control socket: {e}"))?;
    let fd = theirs.as_raw_fd();
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty()))
        .map_err(|e| format!("the sandbox process's control socket: {e}"))?;
    let mut cmd = tokio::process::Command::new(&config.shim_exe);
    cmd.arg("shim")
        .arg("--control-fd")
        .arg(fd.to_string())
        .arg("--parent")
        .arg(std::process::id().to_string())
        .env("COVENANT_HOME", &config.home)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        // An idle shim the daemon lets go of (shutdown, a pool dropped) ends at once.
        .kill_on_drop(true);
    let spawned = cmd.spawn();
    // Closed in the daemon whatever happened: the shim holds its own copy.
    drop(theirs);
    let child = spawned.map_err(|e| {
        format!(
            "cannot start the sandbox process {}: {e}",
            config.shim_exe.display()
        )
    })?;
    Ok(Shim {
        child,
        control: ours,
    })
}

/// Idle shims, at most `bound` of them.
pub(super) struct ShimPool {
    idle: Mutex<VecDeque<Shim>>,
    bound: usize,
    /// Shims being started for the pool right now, counted against the bound.
    starting: AtomicUsize,
}

impl ShimPool {
    pub(super) fn new(bound: usize) -> Self {
        ShimPool {
            idle: Mutex::new(VecDeque::with_capacity(bound)),
            bound,
            starting: AtomicUsize::new(0),
        }
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, VecDeque<Shim>> {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A live idle shim, if the pool has one. Shims that died while idle (killed by
    /// someone, out of memory) are reaped and dropped here.
    pub(super) fn take(&self) -> Option<Shim> {
        let mut idle = self.idle();
        while let Some(mut shim) = idle.pop_front() {
            if let Ok(None) = shim.child.try_wait() {
                return Some(shim);
            }
        }
        None
    }

    /// Starts shims until the pool holds its bound (none while `closed` says the daemon
    /// is shutting down). Must be called on the daemon's runtime thread. A shim that
    /// cannot be started leaves the pool short; jobs then start theirs on demand, and
    /// fail with the reason if that fails too.
    pub(super) fn fill(&self, config: &Config, closed: impl Fn() -> bool) {
        loop {
            if closed() {
                return;
            }
            let have = self.idle().len() + self.starting.load(Ordering::SeqCst);
            if have >= self.bound {
                return;
            }
            self.starting.fetch_add(1, Ordering::SeqCst);
            let started = start_shim(config);
            self.starting.fetch_sub(1, Ordering::SeqCst);
            match started {
                Ok(shim) => self.idle().push_back(shim),
                Err(e) => {
                    eprintln!("covenantd: shim pool: {e}");
                    return;
                }
            }
        }
    }

    /// Kills every idle shim and waits for it; the pool stays empty.
    pub(super) async fn drain(&self) {
        let shims: Vec<Shim> = self.idle().drain(..).collect();
        for mut shim in shims {
            let _ = shim.child.start_kill();
            let _ = shim.child.wait().await;
        }
    }

    /// The process ids of the idle shims.
    #[cfg(test)]
    fn idle_pids(&self) -> Vec<u32> {
        self.idle().iter().filter_map(|s| s.child.id()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn config(shim_exe: &str) -> Config {
        Config::for_tests(&std::env::temp_dir(), 4, shim_exe, 3)
    }

    /// `/bin/false shim` exits at once: a shim that dies while idle.
    #[tokio::test(flavor = "current_thread")]
    async fn a_shim_that_died_while_idle_is_never_handed_out() {
        let pool = ShimPool::new(3);
        pool.fill(&config("/bin/false"), || false);
        assert_eq!(pool.idle_pids().len(), 3, "the pool fills to its bound");
        let pids = pool.idle_pids();
        for pid in &pids {
            // Until each has ended (and is a zombie, not reaped yet).
            loop {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
                if stat
                    .rsplit(')')
                    .next()
                    .unwrap()
                    .trim_start()
                    .starts_with('Z')
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        assert!(pool.take().is_none(), "a dead shim was handed out");
        assert!(pool.idle_pids().is_empty());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_pool_holds_its_bound_and_hands_out_each_shim_once() {
        let pool = ShimPool::new(2);
        // A stand-in that takes the shim's arguments and waits: an idle shim. (`yes`
        // refuses `--control-fd` and exits at once, which made this test a race.)
        let dir = tempfile::tempdir().unwrap();
        let idle = dir.path().join("idle-shim");
        std::fs::write(&idle, "#!/bin/sh\nexec sleep 60\n").unwrap();
        std::fs::set_permissions(&idle, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let cfg = config(idle.to_str().unwrap());
        pool.fill(&cfg, || false);
        pool.fill(&cfg, || false);
        let pids = pool.idle_pids();
        assert_eq!(pids.len(), 2, "filled twice, held to its bound of 2");
        let first = pool.take().expect("a live shim");
        assert_eq!(first.child.id(), Some(pids[0]));
        assert_eq!(
            pool.idle_pids(),
            vec![pids[1]],
            "taken once, gone from the pool"
        );
        pool.fill(&cfg, || true);
        assert_eq!(pool.idle_pids().len(), 1, "nothing starts while closed");
        pool.drain().await;
        assert!(pool.idle_pids().is_empty());
        assert!(pool.take().is_none());
        drop(first);
    }
}
