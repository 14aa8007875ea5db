//! What runs whose supervisor died left behind, found and removed at an embedded run's
//! end.
//!
//! A `covenant-ctl run` killed outright (SIGKILL, the OOM killer) takes its sandbox with
//! it but leaves the sandbox's empty cgroups (its bundle and staging folders are in its
//! own mount namespace and go with it; an OCI runner's state folder stays). The
//! daemon's recovery cleans up after its own jobs; for embedded runs, the next run with
//! the same `$COVENANT_HOME` does it, from the cgroups tagged with that home or of jobs
//! it holds folders of (see [`covenant_runners::native::remove_abandoned_cgroups`] for
//! when a cgroup counts as abandoned), and records each in a `run.abandoned` event.

use crate::store::{AuditEvent, Kind};
use covenant_runners::native::{
    cgroup_owner, remove_abandoned_cgroups, CgroupLayout, CGROUP_PARENT,
};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

/// How long a run cgroup must have existed before it can count as abandoned.
pub const MIN_AGE: Duration = Duration::from_secs(10);

/// Removes what abandoned runs left: their cgroups on the host, and their folders under
/// `home` (an OCI runner's `runtime/JOB-PID`; an older build's bundle and staging
/// folders). Returns one `run.abandoned` event per run, naming `by`,
/// the job that found it. Does nothing unless root (only root makes run cgroups) in the
/// host's PID namespace (a cgroup names its supervisor by its PID there).
pub fn sweep(home: &Path, by: &str) -> Vec<AuditEvent> {
    if !nix::unistd::geteuid().is_root() || !in_initial_pid_namespace() {
        return Vec::new();
    }
    let Ok(layout) = CgroupLayout::detect(Path::new("/sys/fs/cgroup")) else {
        return Vec::new();
    };
    // Mount points are matched against the home's real path, never a symlink to it.
    let Ok(home) = std::fs::canonicalize(home) else {
        return Vec::new();
    };
    // A run's folders on the host: an older build's bundle and staging folders, and an
    // OCI runner's state and derived bundle (`runtime/JOB-PID`, named like the cgroup).
    let places = |job: &str, run: &str| {
        [
            home.join("bundles").join(job),
            home.join("staging").join(job),
            home.join("runtime").join(run),
        ]
    };
    let mountinfo = std::cell::OnceCell::new();
    let mounted = |place: &Path| {
        match mountinfo.get_or_init(|| std::fs::read_to_string("/proc/self/mountinfo")) {
            Ok(text) => !crate::daemon::recovery::mounts_under(text, place).is_empty(),
            // Unknown: taken as mounted.
            Err(_) => true,
        }
    };
    // This home's runs only (cgroups tagged with it, or runs it holds a folder of: an
    // older build's, an OCI runner's, whose runtime makes the cgroup untagged), and none
    // with anything mounted under its folders:
    // whatever is mounted there is not ours to descend into, and its cgroups stay too, so
    // a later run looks again.
    let tag = home.as_os_str().as_bytes();
    let ours = |job: &str, dir: &Path| {
        let Some(run) = dir.file_name().and_then(|n| n.to_str()) else {
            return false;
        };
        let places = places(job, run);
        let claimed = cgroup_owner(dir).is_some_and(|owner| owner == tag)
            || places.iter().any(|p| p.symlink_metadata().is_ok());
        claimed && !places.iter().any(|p| mounted(p))
    };
    let found = remove_abandoned_cgroups(&layout, MIN_AGE, ours);
    found
        .into_iter()
        .map(|run| {
            let mut dirs = Vec::new();
            let mut errors = Vec::new();
            // The folder claimed was named like the cgroup: the same name, not a new one.
            let name = run
                .removed
                .first()
                .and_then(|d| d.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| format!("{}-{}", run.job, run.pid));
            // An OCI runtime made the run's cgroup in every hierarchy it found, beyond
            // those the layout names: empty ones go too (rmdir, never recursive).
            if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
                for h in hierarchies.flatten() {
                    let _ = std::fs::remove_dir(h.path().join(CGROUP_PARENT).join(&name));
                }
            }
            for place in places(&run.job, &name) {
                if place.symlink_metadata().is_err() {
                    continue;
                }
                // Checked above with nothing mounted under it; `remove_dir_all` unlinks
                // symlinks without following them.
                match std::fs::remove_dir_all(&place) {
                    Ok(()) => dirs.push(place),
                    Err(e) => errors.push(format!("{}: {e}", place.display())),
                }
            }
            AuditEvent::new(
                Kind::RunAbandoned,
                serde_json::json!({
                    "job": run.job, "pid": run.pid, "cgroups": run.removed,
                    "dirs": dirs, "errors": errors, "by": by,
                }),
            )
        })
        .collect()
}

/// Whether this process is in the host's PID namespace, whose inode number is fixed
/// (`PROC_PID_INIT_INO`).
pub(crate) fn in_initial_pid_namespace() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/pid").is_ok_and(|m| m.ino() == 0xEFFF_FFFC)
}
