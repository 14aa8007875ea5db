//! The image store of this host (`$COVENANT_HOME/images`) and resolving a plan's image
//! root against it.

use crate::home::covenant_home;
use crate::home::identity_map;
use covenant_images::store::{ImageError, ImageHold, ImageRecord, ImageStore};
use covenant_images::unpack::IdShift;
use covenant_policy::annotations::{self, RootfsLayout};
use covenant_policy::{RootfsSource, SandboxPlan};
use covenant_runners::native::CGROUP_PARENT;

pub fn store() -> Result<ImageStore, ImageError> {
    ImageStore::open(&covenant_home().join("images"))
}

/// The id shift layers are unpacked with: the sandbox's id 0 is the host id the user
/// namespace maps it to, so image files keep their owners inside.
pub fn id_shift() -> IdShift {
    let ids = identity_map();
    IdShift {
        uid: ids.host_uid,
        gid: ids.host_gid,
        size: ids.size,
    }
}

/// Fills in an image root's manifest digest and layer directories.
pub fn resolve_rootfs(plan: &mut SandboxPlan) -> Result<(), ImageError> {
    if let RootfsSource::Image {
        reference,
        manifest_digest,
        lower_dirs,
    } = &mut plan.rootfs
    {
        let store = store()?;
        let record = store.resolve(reference)?;
        *lower_dirs = store.lower_dirs(&record)?;
        *manifest_digest = Some(record.manifest_digest);
    }
    Ok(())
}

/// Holds the image a plan runs on, if any, for as long as the returned hold lives: `image
/// rm` refuses it meanwhile ([`ImageStore::hold`]).
pub fn hold(plan: &SandboxPlan) -> Result<Option<ImageHold>, ImageError> {
    match &plan.rootfs {
        RootfsSource::Image {
            manifest_digest: Some(digest),
            ..
        } => store()?.hold(digest).map(Some),
        _ => Ok(None),
    }
}

/// Whether a sandbox whose supervisor is gone still runs on `record`. A run holds its
/// image while its supervisor lives ([`hold`]); an OCI runtime's container can outlive a
/// `covenant-ctl` killed outright, and its hold with it. Such a container's state folder,
/// `runtime/JOB-PID`, names its process (`container.pid`) and its layers (the derived
/// config's rootfs annotation), compared with the image's by device and inode, however
/// either names the home. It is live while its cgroup (`covenant/JOB-PID`) holds a
/// process, so a reused pid keeps nothing in use; without a cgroup, while its pid names
/// a process. Whatever cannot be judged counts as in use: a live run whose layers cannot
/// be read uses every image, and outside the host's PID namespace (where a host pid
/// cannot be looked up) every pid named is taken as live.
pub fn orphan_using(store: &ImageStore, record: &ImageRecord) -> bool {
    let Ok(layers) = store.lower_dirs(record) else {
        return false;
    };
    let layers: Vec<(u64, u64)> = layers.iter().filter_map(|l| identity(l)).collect();
    let Ok(runs) = std::fs::read_dir(covenant_home().join("runtime")) else {
        return false;
    };
    let judge_pids = crate::abandoned::in_initial_pid_namespace();
    runs.flatten().any(|run| {
        let dir = run.path();
        let pid = read_small(&dir.join("container.pid"), 32)
            .and_then(|p| String::from_utf8(p).ok())
            .and_then(|p| p.trim().parse::<i32>().ok())
            .filter(|p| *p > 0);
        let Some(pid) = pid else { return false };
        // The run's cgroup, named like its folder, says whether anything of it is left,
        // whatever process got its pid since; without one, the pid itself.
        // Outside the host's PID namespace neither can be judged (a v1 `cgroup.procs`
        // read there omits the processes it cannot name).
        let alive = !judge_pids
            || populated(&run.file_name().to_string_lossy()).unwrap_or_else(|| {
                !matches!(
                    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
                    Err(nix::errno::Errno::ESRCH)
                )
            });
        alive && uses_any(&dir.join("bundle/config.json"), &layers).unwrap_or(true)
    })
}

/// Whether the run cgroup `covenant/NAME` holds a process in any hierarchy (v2:
/// `cgroup.events` says `populated 1`; v1: `cgroup.procs` lists one); `None` when no
/// hierarchy has it.
fn populated(name: &str) -> Option<bool> {
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return None;
    }
    let mut found = false;
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup").ok()?.flatten() {
        let dir = hierarchy.path().join(CGROUP_PARENT).join(name);
        if let Some(events) = read_small(&dir.join("cgroup.events"), 4096) {
            found = true;
            if String::from_utf8_lossy(&events)
                .lines()
                .any(|l| l == "populated 1")
            {
                return Some(true);
            }
        } else if let Some(procs) = read_small(&dir.join("cgroup.procs"), 64) {
            found = true;
            if !procs.is_empty() {
                return Some(true);
            }
        }
    }
    found.then_some(false)
}

/// A directory's device and inode.
fn identity(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// A regular file's first `limit` bytes, read without following a symlink or waiting on
/// a FIFO; `None` when it is not such a file.
fn read_small(path: &std::path::Path, limit: u64) -> Option<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut bytes = Vec::new();
    file.take(limit).read_to_end(&mut bytes).ok()?;
    Some(bytes)
}

/// Whether the OCI config at `path` overlays any of `layers`; `None` when it cannot be
/// read.
fn uses_any(path: &std::path::Path, layers: &[(u64, u64)]) -> Option<bool> {
    let config: serde_json::Value = serde_json::from_slice(&read_small(path, 4 << 20)?).ok()?;
    let Some(note) = config["annotations"][annotations::ROOTFS].as_str() else {
        return Some(false);
    };
    Some(match serde_json::from_str::<RootfsLayout>(note).ok()? {
        RootfsLayout::Overlay { lower, .. } => lower
            .iter()
            .any(|l| identity(l).is_some_and(|id| layers.contains(&id))),
        _ => false,
    })
}
