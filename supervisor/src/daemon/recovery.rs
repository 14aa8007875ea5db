//! What a job leaves on the host, found and removed: processes in its cgroups, the
//! cgroups, mounts under its bundle and runtime directories, and those directories. Used
//! when a job's sandbox process dies without cleaning up, and by a restarted daemon for
//! every job the store says was running.

use covenant_runners::native::CgroupLayout;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The cgroup directories of `job`: `covenant/JOB-PID` in every hierarchy (the native and
/// OCI runners both name a job's cgroup so).
pub fn cgroup_dirs(job: &str) -> Vec<PathBuf> {
    let roots: Vec<PathBuf> = match CgroupLayout::detect(Path::new("/sys/fs/cgroup")) {
        Ok(CgroupLayout::V2 { root }) => vec![root],
        Ok(CgroupLayout::V1 {
            memory,
            pids,
            cpu,
            cpuacct,
        }) => [memory, pids, cpu, cpuacct].into_iter().flatten().collect(),
        Err(_) => Vec::new(),
    };
    let prefix = format!("{job}-");
    let mut dirs = Vec::new();
    for root in roots {
        let parent = root.join(covenant_runners::native::CGROUP_PARENT);
        let Ok(entries) = std::fs::read_dir(&parent) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if (name.starts_with(&prefix) || name == job)
                && e.path().is_dir()
                && !dirs.contains(&e.path())
            {
                dirs.push(e.path());
            }
        }
    }
    dirs
}

/// SIGKILLs every process in the job's cgroups; returns how many were signalled.
pub fn kill_job_processes(job: &str, _shim_pid: Option<i32>) -> usize {
    let mut killed = 0;
    for dir in cgroup_dirs(job) {
        if std::fs::write(dir.join("cgroup.kill"), "1").is_ok() {
            killed += 1;
        }
        for pid in procs(&dir) {
            // The pid was read from the job's cgroup just now.
            if sigkill(pid) {
                killed += 1;
            }
        }
    }
    killed
}

/// Sends SIGKILL to `pid`; whether it was delivered.
fn sigkill(pid: i32) -> bool {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .is_ok()
}

/// The processes in cgroup `dir`; none when it is gone.
fn procs(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// What was found and removed for one job.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Cleaned {
    pub processes_killed: usize,
    pub cgroups_removed: Vec<PathBuf>,
    pub mounts_removed: Vec<PathBuf>,
    pub dirs_removed: Vec<PathBuf>,
    pub errors: Vec<String>,
}

impl Cleaned {
    pub fn is_empty(&self) -> bool {
        self.processes_killed == 0
            && self.cgroups_removed.is_empty()
            && self.mounts_removed.is_empty()
            && self.dirs_removed.is_empty()
    }
}

/// Kills, unmounts and removes everything `job` left behind.
pub fn clean_job(home: &Path, job: &str, shim_pid: Option<i32>) -> Cleaned {
    let mut out = Cleaned::default();
    let dirs = cgroup_dirs(job);
    let deadline = Instant::now() + Duration::from_secs(5);
    for dir in &dirs {
        let _ = std::fs::write(dir.join("cgroup.kill"), "1");
        loop {
            let pids = procs(dir);
            for &pid in &pids {
                if sigkill(pid) {
                    out.processes_killed += 1;
                }
            }
            match std::fs::remove_dir(dir) {
                Ok(()) => {
                    out.cgroups_removed.push(dir.clone());
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) if Instant::now() < deadline && e.raw_os_error() == Some(libc::EBUSY) => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => {
                    out.errors.push(format!("cgroup {}: {e}", dir.display()));
                    break;
                }
            }
        }
    }
    if let Some(pid) = shim_pid.filter(|p| is_orphan_shim(*p)) {
        // Verified just now to be a shim of this daemon's executable that lost its daemon.
        if sigkill(pid) {
            out.processes_killed += 1;
        }
    }
    let mut places = vec![
        home.join("bundles").join(job),
        home.join("agents").join(job),
        // Its host paths' staging places: mounts there lived only in the shim's own mount
        // namespace, so here they are empty folders.
        home.join("staging").join(job),
    ];
    if let Ok(entries) = std::fs::read_dir(home.join("runtime")) {
        let prefix = format!("{job}-");
        places.extend(
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                .map(|e| e.path()),
        );
    }
    let mountinfo = match std::fs::read_to_string("/proc/self/mountinfo") {
        Ok(text) => text,
        Err(e) => {
            out.errors.push(format!("/proc/self/mountinfo: {e}"));
            String::new()
        }
    };
    for place in places {
        for m in mounts_under(&mountinfo, &place) {
            match nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH) {
                Ok(()) => out.mounts_removed.push(m),
                Err(e) => out.errors.push(format!("umount {}: {e}", m.display())),
            }
        }
        if place.exists() || place.symlink_metadata().is_ok() {
            match std::fs::remove_dir_all(&place) {
                Ok(()) => out.dirs_removed.push(place),
                Err(e) => out.errors.push(format!("{}: {e}", place.display())),
            }
        }
    }
    out
}

/// Whether `pid` is a `covenantd shim` whose daemon is gone (its parent is init): the
/// parent-death signal normally kills it first, but a pid is not trusted on its own.
fn is_orphan_shim(pid: i32) -> bool {
    // A process that is gone has neither file, and is no shim.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let mut args = cmdline.split(|b| *b == 0);
    let exe_is_daemon = args
        .next()
        .is_some_and(|a| a.ends_with(b"covenantd") || a == b"/proc/self/exe");
    let is_shim = args.next() == Some(b"shim".as_slice());
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The parent pid is the second field after the command's closing parenthesis.
    let ppid = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(1))
        .and_then(|p| p.parse::<i32>().ok());
    exe_is_daemon && is_shim && ppid == Some(1)
}

/// Mount points at or below `dir` in `mountinfo` (`/proc/self/mountinfo`), deepest first.
pub fn mounts_under(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    points
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_paths_are_unescaped() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape(r"/x\134y"), r"/x\y");
        assert_eq!(unescape("/plain"), "/plain");
    }

    #[test]
    fn cleaning_removes_bundle_runtime_and_agent_dirs_of_that_job_only() {
        let home = tempfile::tempdir().unwrap();
        for d in [
            "bundles/job-1/rootfs",
            "agents/job-1",
            "runtime/job-1-77/state",
            "runtime/job-10-5/state",
            "bundles/job-2",
        ] {
            std::fs::create_dir_all(home.path().join(d)).unwrap();
        }
        let cleaned = clean_job(home.path(), "job-1", Some(77));
        assert_eq!(cleaned.dirs_removed.len(), 3, "{cleaned:?}");
        assert!(!home.path().join("bundles/job-1").exists());
        assert!(!home.path().join("runtime/job-1-77").exists());
        assert!(home.path().join("runtime/job-10-5").exists());
        assert!(home.path().join("bundles/job-2").exists());
    }
}
