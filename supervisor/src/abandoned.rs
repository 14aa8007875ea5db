//! What runs whose supervisor died left behind, found and removed at an embedded run's
//! end.
//!
//! A `covenant-ctl run` killed outright (SIGKILL, the OOM killer) takes its sandbox with
//! it but leaves the sandbox's empty cgroups, and its bundle and staging folders. The
//! daemon's recovery cleans up after its own jobs; for embedded runs, the next run with
//! the same `$COVENANT_HOME` does it, from the cgroups of jobs it holds folders of (see [`covenant_runners::native::remove_abandoned_cgroups`]
//! for when a cgroup counts as abandoned), and records each in a `run.abandoned` event.

use crate::store::{AuditEvent, Kind};
use covenant_runners::native::{remove_abandoned_cgroups, CgroupLayout};
use std::path::Path;
use std::time::Duration;

/// How long a run cgroup must have existed before it can count as abandoned.
pub const MIN_AGE: Duration = Duration::from_secs(10);

/// Removes what abandoned runs left: their cgroups on the host, and their bundle and
/// staging folders under `home`. Returns one `run.abandoned` event per run, naming `by`,
/// the job that found it. Does nothing unless root (only root makes run cgroups).
pub fn sweep(home: &Path, by: &str) -> Vec<AuditEvent> {
    if !nix::unistd::geteuid().is_root() {
        return Vec::new();
    }
    let Ok(layout) = CgroupLayout::detect(Path::new("/sys/fs/cgroup")) else {
        return Vec::new();
    };
    // This home's runs only: those it holds a bundle or staging folder of.
    let ours = |job: &str| {
        ["bundles", "staging"]
            .iter()
            .any(|d| home.join(d).join(job).symlink_metadata().is_ok())
    };
    let found = remove_abandoned_cgroups(&layout, MIN_AGE, ours);
    if found.is_empty() {
        return Vec::new();
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo");
    found
        .into_iter()
        .map(|run| {
            let mut dirs = Vec::new();
            let mut errors = Vec::new();
            for place in [
                home.join("bundles").join(&run.job),
                home.join("staging").join(&run.job),
            ] {
                if place.symlink_metadata().is_err() {
                    continue;
                }
                // Whatever is mounted there is not ours to descend into.
                let mounted = match &mountinfo {
                    Ok(text) => !crate::daemon::recovery::mounts_under(text, &place).is_empty(),
                    Err(_) => true,
                };
                if mounted {
                    errors.push(format!("{}: mounts under it, left", place.display()));
                    continue;
                }
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
