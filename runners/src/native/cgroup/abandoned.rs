//! Cgroups left by runs whose supervisor died.
//!
//! A supervisor names its run's cgroup `covenant/JOB-PID`, PID its own, and removes it
//! when the run ends. One killed outright (SIGKILL, the OOM killer) cannot: its sandbox
//! dies with it (the parent-death signal, then its PID namespace), and the empty
//! directories stay in every hierarchy, where each one makes the next moves into a
//! cgroup a little slower. The next run finds and removes them.
//!
//! A directory is taken as abandoned only when all of these hold: its name is
//! `JOB-PID`; PID is no process in the caller's PID namespace; it was made more than
//! `min_age` ago (a run empties its cgroup for milliseconds only: before its sandbox
//! moves in and after it exits); the caller claims its job (a run cleans up after its own
//! home's runs only); and the kernel lets it go. Removal is `rmdir`, which the kernel
//! refuses for a cgroup that holds a process or a child, and nothing is killed here.
//!
//! The PID is read in the caller's PID namespace, so the caller must be in the one the
//! supervisors run in (the host's): from a child namespace every host PID looks gone, and
//! a run in its last milliseconds, its sandbox already ended, could lose its cgroup.

use super::CgroupLayout;
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One dead supervisor's run, and the cgroup directories of it that were removed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Abandoned {
    pub job: String,
    pub pid: i32,
    pub removed: Vec<PathBuf>,
}

/// Removes the abandoned run cgroups under `covenant/` in every hierarchy of `layout`
/// whose job the caller claims with `ours`, given the job and the directory (a run
/// removes only its own home's, see [`super::owner_of`]).
pub fn remove_abandoned(
    layout: &CgroupLayout,
    min_age: Duration,
    ours: impl Fn(&str, &Path) -> bool,
) -> Vec<Abandoned> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let mut found: BTreeMap<(String, i32), Vec<PathBuf>> = BTreeMap::new();
    for root in layout.roots() {
        let Ok(entries) = std::fs::read_dir(root.join(super::PARENT)) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some((job, pid)) = name.to_str().and_then(job_and_pid) else {
                continue;
            };
            let dir = entry.path();
            if supervisor_lives(pid) || !ours(job, &dir) {
                continue;
            }
            let Ok(meta) = std::fs::symlink_metadata(&dir) else {
                continue;
            };
            // A cgroup directory's change time is when it was made.
            let made = meta.ctime() as f64 + meta.ctime_nsec() as f64 / 1e9;
            if !meta.is_dir() || now - made < min_age.as_secs_f64() {
                continue;
            }
            if std::fs::remove_dir(&dir).is_ok() {
                found.entry((job.to_string(), pid)).or_default().push(dir);
            }
        }
    }
    found
        .into_iter()
        .map(|((job, pid), removed)| Abandoned { job, pid, removed })
        .collect()
}

/// `JOB-PID`, where JOB is a job id (letters, digits, `-` and `_`) and PID a process id.
fn job_and_pid(name: &str) -> Option<(&str, i32)> {
    let (job, digits) = name.rsplit_once('-')?;
    let pid: i32 = digits.parse().ok().filter(|p| *p > 0)?;
    // Only the pid's own spelling: `job-07` and `job-7` are not one run's.
    if pid.to_string() != digits {
        return None;
    }
    let job_ok = !job.is_empty()
        && job
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    job_ok.then_some((job, pid))
}

/// Whether a process `pid` exists here: only "no such process" says it does not.
fn supervisor_lives(pid: i32) -> bool {
    !matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_job_pid_names_are_read() {
        assert_eq!(
            job_and_pid("job-29832c9c7acbd4ea-15478"),
            Some(("job-29832c9c7acbd4ea", 15478))
        );
        for name in [
            "job", "job-", "-15", "job-0", "job-1x", "job-x", "../x-12", "a b-12", "job-07",
            "job-+7",
        ] {
            assert_eq!(job_and_pid(name), None, "{name}");
        }
    }

    /// A fake v1 hierarchy: run cgroups are plain directories, so the age and the PID
    /// decide, and a directory with something in it stands for a populated cgroup.
    #[test]
    fn a_dead_supervisors_old_cgroups_go_and_nothing_else_does() {
        let fake = tempfile::tempdir().unwrap();
        let memory = fake.path().join("memory");
        let parent = memory.join(super::super::PARENT);
        for f in ["cgroup.procs", "tasks"] {
            std::fs::create_dir_all(&parent).unwrap();
            std::fs::write(memory.join(f), "").unwrap();
        }
        let layout = CgroupLayout::detect(fake.path()).unwrap();
        // A pid that is no process: past the kernel's pid_max.
        let dead = 4_194_305;
        let live = std::process::id() as i32;
        let names = [
            format!("job-aa-{dead}"),
            format!("job-bb-{live}"),
            format!("job-cc-{dead}"),
            "not-a-run".to_string(),
        ];
        for n in &names {
            std::fs::create_dir(parent.join(n)).unwrap();
        }
        // Populated: the kernel would refuse to remove it; here a file does.
        std::fs::write(parent.join(&names[2]).join("cgroup.procs"), "7\n").unwrap();

        // Too young to be taken for abandoned; or another home's.
        assert!(remove_abandoned(&layout, Duration::from_secs(3600), |_, _| true).is_empty());
        assert!(remove_abandoned(&layout, Duration::ZERO, |job, _| job == "job-zz").is_empty());
        assert!(parent.join(&names[0]).exists());

        let gone = remove_abandoned(&layout, Duration::ZERO, |_, _| true);
        assert_eq!(
            gone,
            [Abandoned {
                job: "job-aa".into(),
                pid: dead,
                removed: vec![parent.join(&names[0])],
            }]
        );
        for n in &names[1..] {
            assert!(parent.join(n).exists(), "{n} was removed");
        }
    }
}
