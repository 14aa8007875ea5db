//! A head start on the wait of a v1 move an OCI runtime makes.
//!
//! On cgroup v1 a runtime such as runc or crun moves its container into its cgroups by
//! pid, and such a move takes the cgroup core's thread-group lock for writing. That lock
//! is a per-CPU rwsem shared by every hierarchy: its first writer after a quiet spell
//! waits for an RCU grace period (5 to 20 ms measured on a 2-core VM), while a writer
//! that comes within a grace period of the last one's release goes through at once
//! (about 0.15 ms). Nothing of the lock is held while that wait lasts: forks go on. (The
//! native runner's init moves itself in without the lock, see [`super::join`], and needs
//! no head start.)
//!
//! So a run under an OCI runtime starts the wait early, beside its own preparation: a
//! short-lived child of the supervisor (a forked copy, which is in the supervisor's
//! cgroups) moves itself into the cgroup it is already in, naming its pid, a move that
//! changes nothing but takes the lock like any other, and the container's move finds the
//! lock warm. The helper is reaped once the runtime has made the container (or when the
//! run ends, if it never did).
//!
//! Nothing is enforced by the warm-up: where it cannot move (no v1 hierarchy, not root,
//! a cgroup path this mount does not show), it does nothing, and the real move, which
//! fails closed, is where a run finds out that it cannot have its cgroup.

use super::CgroupLayout;
use nix::sys::wait::{waitid, Id, WaitPidFlag};
use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The helper under way in this process, if any, by its pidfd: waited for through it, a
/// helper another wait already reaped is never confused with a later process that got
/// its pid.
static UNDER_WAY: Mutex<Option<OwnedFd>> = Mutex::new(None);

/// Starts the warm-up unless one was started and not yet finished: on cgroup v1, as root,
/// a child moves itself into its own cgroup of one of the hierarchies under
/// `cgroup_root`. Returns at once; [`finish`] reaps it.
///
/// For a lone run, whose move would find the lock cold. A supervisor that starts runs
/// back to back (the daemon under load) keeps the lock warm by its own moves, and a
/// helper would only cost it a fork per run.
pub fn start(cgroup_root: &Path) {
    if !nix::unistd::Uid::effective().is_root() {
        return;
    }
    let mut slot = UNDER_WAY.lock().unwrap_or_else(|e| e.into_inner());
    if slot.is_some() {
        return;
    }
    let Some(procs) = CgroupLayout::detect(cgroup_root).ok().and_then(|layout| {
        let membership = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let room = room_to_spare(&layout, &membership, TASKS_TO_SPARE);
        own_procs_file(&layout, &membership).filter(|_| room)
    }) else {
        return;
    };
    let Ok(procs) = CString::new(procs.as_os_str().as_bytes()) else {
        return;
    };
    let mut pidfd: libc::c_int = -1;
    // SAFETY: a fork-like clone (no new stack: the child runs on a copy of this one) that
    // also returns the child's pidfd (Linux 5.2). The child makes only async-signal-safe
    // calls (open, getpid, write, _exit) on memory made before it, so a lock another
    // thread held at the clone is never taken in it; it never returns into the caller.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_PIDFD | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            &mut pidfd as *mut libc::c_int,
            0usize,
            0usize,
        )
    };
    match pid {
        0 => move_self(&procs),
        // SAFETY: the kernel returned a fresh pidfd for the child, owned from here.
        pid if pid > 0 => *slot = Some(unsafe { OwnedFd::from_raw_fd(pidfd) }),
        // No process to be had (or no pidfd on this kernel): no head start, and the real
        // move waits as it always did.
        _ => {}
    }
}

/// Reaps the helper, if one was started: when this returns, its move is over (waited
/// for, if it was still waiting) and the process has no child of its making. Returns
/// whether there was one.
pub fn finish() -> bool {
    let helper = UNDER_WAY.lock().unwrap_or_else(|e| e.into_inner()).take();
    match helper {
        Some(pidfd) => {
            // ECHILD: another wait of this process reaped it already.
            let _ = waitid(Id::PIDFd(pidfd.as_fd()), WaitPidFlag::WEXITED);
            true
        }
        None => false,
    }
}

/// The helper: moves itself into the cgroup whose `cgroup.procs` is `procs` (its own) and
/// exits. Its pid is written out: a `0` would name the writer too.
fn move_self(procs: &CStr) -> ! {
    // SAFETY: open of a live NUL-terminated path; nothing here allocates or takes a lock.
    let fd = unsafe { libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd >= 0 {
        let mut buf = [0u8; 12];
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() };
        let digits = decimal(pid.unsigned_abs(), &mut buf);
        // SAFETY: writes from a live stack buffer to the descriptor opened above.
        unsafe { libc::write(fd, digits.as_ptr().cast(), digits.len()) };
    }
    // SAFETY: ends the helper at once, running nothing of the parent's (no atexit, no
    // destructors, no buffered output).
    unsafe { libc::_exit(0) }
}

/// `n` in decimal, written at the end of `buf`, without allocating.
fn decimal(mut n: u32, buf: &mut [u8; 12]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}

/// The `cgroup.procs` file of the caller's own cgroup in one v1 hierarchy of `layout`,
/// from its cgroup membership (`/proc/self/cgroup`); `None` on v2 (where sandboxes are
/// cloned into their cgroup and nothing is moved) or when the file is not there.
fn own_procs_file(layout: &CgroupLayout, membership: &str) -> Option<PathBuf> {
    let CgroupLayout::V1 {
        memory,
        pids,
        cpu,
        cpuacct,
    } = layout
    else {
        return None;
    };
    let hierarchies = [
        (pids, "pids"),
        (memory, "memory"),
        (cpu, "cpu"),
        (cpuacct, "cpuacct"),
    ];
    hierarchies.into_iter().find_map(|(root, controller)| {
        let procs = own_dir(root.as_ref()?, controller, membership)?.join("cgroup.procs");
        procs.is_file().then_some(procs)
    })
}

/// The caller's own cgroup directory under the hierarchy `root` of `controller`.
fn own_dir(root: &Path, controller: &str, membership: &str) -> Option<PathBuf> {
    // `ID:CONTROLLERS:PATH`, the controllers comma-separated (`cpu,cpuacct`).
    let path = membership.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        controllers
            .split(',')
            .any(|c| c == controller)
            .then_some(path)
    })?;
    let relative = path.strip_prefix('/')?;
    // A path that climbs out of the hierarchy is not one this mount shows.
    if relative.split('/').any(|part| part == "..") {
        return None;
    }
    Some(root.join(relative))
}

/// Tasks a run may need at once beside its supervisor before its sandbox has moved (the
/// store's opening thread, an idmapped mount's helper, the sandbox's init) and the
/// warm-up's helper itself.
const TASKS_TO_SPARE: u64 = 4;

/// Whether the caller's v1 pids cgroup, and each one above it, has `needed` tasks to
/// spare: a helper must never take the task a run's own step needs. No pids hierarchy,
/// or none that shows the caller's cgroup, limits nothing here.
fn room_to_spare(layout: &CgroupLayout, membership: &str, needed: u64) -> bool {
    let CgroupLayout::V1 {
        pids: Some(root), ..
    } = layout
    else {
        return true;
    };
    let Some(mut dir) = own_dir(root, "pids", membership) else {
        return true;
    };
    let read = |path: PathBuf| std::fs::read_to_string(path).ok();
    while dir.starts_with(root) && dir != *root {
        let max = read(dir.join("pids.max")).and_then(|m| m.trim().parse::<u64>().ok());
        let current = read(dir.join("pids.current")).and_then(|c| c.trim().parse::<u64>().ok());
        if let (Some(max), Some(current)) = (max, current) {
            if max.saturating_sub(current) < needed {
                return false;
            }
        }
        if !dir.pop() {
            break;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::super::tests::fake_v1;
    use super::*;
    use std::fs;
    use std::os::fd::AsRawFd;

    const HYBRID: &str = "9:name=systemd:/\n8:pids:/\n4:memory:/agents/a1\n2:cpu,cpuacct:/\n0::/\n";

    #[test]
    fn the_file_is_the_callers_own_cgroup_in_a_v1_hierarchy() {
        let fake = fake_v1(&["pids", "memory"]);
        let layout = CgroupLayout::detect(fake.path()).unwrap();
        assert_eq!(
            own_procs_file(&layout, HYBRID),
            Some(fake.path().join("pids/cgroup.procs"))
        );
        // Without the pids hierarchy, the memory one, at the caller's nested path.
        let fake = fake_v1(&["memory"]);
        let nested = fake.path().join("memory/agents/a1");
        fs::create_dir_all(&nested).unwrap();
        fs::write(nested.join("cgroup.procs"), "").unwrap();
        let layout = CgroupLayout::detect(fake.path()).unwrap();
        assert_eq!(
            own_procs_file(&layout, HYBRID),
            Some(nested.join("cgroup.procs"))
        );
        // A joint `cpu,cpuacct` hierarchy is found by either name.
        let fake = fake_v1(&["cpu,cpuacct"]);
        let layout = CgroupLayout::detect(fake.path()).unwrap();
        assert_eq!(
            own_procs_file(&layout, HYBRID),
            Some(fake.path().join("cpu,cpuacct/cgroup.procs"))
        );
    }

    #[test]
    fn nothing_is_moved_where_the_cgroup_is_not_shown_or_on_v2() {
        // The membership names a cgroup this mount does not have.
        let fake = fake_v1(&["memory"]);
        let layout = CgroupLayout::detect(fake.path()).unwrap();
        assert_eq!(own_procs_file(&layout, HYBRID), None);
        // A path that climbs out of the hierarchy.
        fs::create_dir_all(fake.path().join("etc")).unwrap();
        fs::write(fake.path().join("etc/cgroup.procs"), "").unwrap();
        assert_eq!(own_procs_file(&layout, "4:memory:/../etc\n"), None);
        // No line for any hierarchy the layout has.
        let fake = fake_v1(&["pids"]);
        let layout = CgroupLayout::detect(fake.path()).unwrap();
        assert_eq!(own_procs_file(&layout, "0::/\n"), None);
        let v2 = CgroupLayout::V2 {
            root: fake.path().to_path_buf(),
        };
        assert_eq!(own_procs_file(&v2, HYBRID), None);
    }

    #[test]
    fn no_helper_where_a_pids_limit_leaves_too_few_tasks() {
        let fake = fake_v1(&["pids"]);
        let layout = CgroupLayout::detect(fake.path()).unwrap();
        let own = fake.path().join("pids/agents/a1");
        fs::create_dir_all(&own).unwrap();
        let membership = "8:pids:/agents/a1\n";
        // No limit anywhere, or "max": room.
        assert!(room_to_spare(&layout, membership, 4));
        fs::write(own.join("pids.max"), "max\n").unwrap();
        fs::write(own.join("pids.current"), "3\n").unwrap();
        assert!(room_to_spare(&layout, membership, 4));
        fs::write(own.join("pids.max"), "7\n").unwrap();
        assert!(room_to_spare(&layout, membership, 4));
        fs::write(own.join("pids.max"), "6\n").unwrap();
        assert!(!room_to_spare(&layout, membership, 4));
        // A tighter limit further up counts too.
        fs::write(own.join("pids.max"), "max\n").unwrap();
        let parent = fake.path().join("pids/agents");
        fs::write(parent.join("pids.max"), "10\n").unwrap();
        fs::write(parent.join("pids.current"), "8\n").unwrap();
        assert!(!room_to_spare(&layout, membership, 4));
        // A cgroup this mount does not show limits nothing it can see.
        assert!(room_to_spare(&layout, "8:pids:/elsewhere/b\n", 4));
    }

    #[test]
    fn pids_are_written_in_decimal_without_allocating() {
        let mut buf = [0u8; 12];
        assert_eq!(decimal(0, &mut buf), b"0");
        assert_eq!(decimal(7, &mut buf), b"7");
        assert_eq!(decimal(4_194_304, &mut buf), b"4194304");
        assert_eq!(decimal(u32::MAX, &mut buf), b"4294967295");
    }

    /// As root, the helper moves itself by its own pid into a mirror of this process's
    /// cgroup and is reaped by `finish`; otherwise nothing is started. On the real
    /// hierarchies the process stays where it was.
    #[test]
    fn the_helper_moves_itself_by_pid_and_is_reaped() {
        let root = nix::unistd::Uid::effective().is_root();
        let own = fs::read_to_string("/proc/self/cgroup").unwrap();
        let fake = fake_v1(&["pids", "memory", "cpu", "cpuacct"]);
        // Mirror this process's cgroups, so whichever hierarchy is picked has the file.
        for line in own.lines() {
            let mut f = line.splitn(3, ':');
            let (_, controllers, path) = (f.next(), f.next().unwrap_or(""), f.next().unwrap_or(""));
            for c in controllers.split(',') {
                let h = fake.path().join(c);
                if h.is_dir() {
                    let dir = h.join(path.trim_start_matches('/'));
                    fs::create_dir_all(&dir).unwrap();
                    fs::write(dir.join("cgroup.procs"), "").unwrap();
                }
            }
        }
        start(fake.path());
        // Started twice, one helper: the second call finds the first one's.
        let pidfd = |slot: &Option<OwnedFd>| slot.as_ref().map(|fd| fd.as_raw_fd());
        let first = pidfd(&UNDER_WAY.lock().unwrap());
        let helper = first.map(|fd| {
            let info = fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap();
            let pid = info.lines().find_map(|l| l.strip_prefix("Pid:")).unwrap();
            nix::unistd::Pid::from_raw(pid.trim().parse().unwrap())
        });
        start(fake.path());
        assert_eq!(pidfd(&UNDER_WAY.lock().unwrap()), first);
        assert_eq!(finish(), first.is_some());
        assert!(UNDER_WAY.lock().unwrap().is_none());
        assert!(!finish(), "nothing left to reap");
        let layout = CgroupLayout::detect(fake.path()).unwrap();
        match (root, own_procs_file(&layout, &own)) {
            (true, Some(procs)) => {
                let helper = helper.expect("started as root on a v1 membership");
                assert_eq!(
                    fs::read_to_string(procs).unwrap(),
                    helper.as_raw().to_string(),
                    "never `0`: the kernel moves the writer itself without the lock"
                );
                // Reaped: no longer a child of this process.
                assert_eq!(
                    nix::sys::wait::waitpid(helper, Some(WaitPidFlag::WNOHANG)),
                    Err(nix::errno::Errno::ECHILD)
                );
            }
            _ => assert_eq!(first, None, "nothing to move: nothing started"),
        }

        let before = fs::read_to_string("/proc/self/cgroup").unwrap();
        start(Path::new("/sys/fs/cgroup"));
        finish();
        assert!(UNDER_WAY.lock().unwrap().is_none());
        assert_eq!(fs::read_to_string("/proc/self/cgroup").unwrap(), before);
    }
}
