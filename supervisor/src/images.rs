//! The image store of this host (`$COVENANT_HOME/images`) and resolving a plan's image
//! root against it.

use crate::home::covenant_home;
use crate::home::identity_map;
use covenant_images::store::{ImageError, ImageHold, ImageRecord, ImageStore};
use covenant_images::unpack::IdShift;
use covenant_policy::annotations::{self, RootfsLayout};
use covenant_policy::{RootfsSource, SandboxPlan};

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
/// config's rootfs annotation); a live process whose layers cannot be read counts as
/// using every image.
pub fn orphan_using(store: &ImageStore, record: &ImageRecord) -> bool {
    let Ok(layers) = store.lower_dirs(record) else {
        return false;
    };
    let Ok(runs) = std::fs::read_dir(covenant_home().join("runtime")) else {
        return false;
    };
    runs.flatten().any(|run| {
        let dir = run.path();
        let pid = std::fs::read_to_string(dir.join("container.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
            .filter(|p| *p > 0);
        let alive = pid.is_some_and(|p| {
            !matches!(
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), None),
                Err(nix::errno::Errno::ESRCH)
            )
        });
        alive && uses_any(&dir.join("bundle/config.json"), &layers).unwrap_or(true)
    })
}

/// Whether the OCI config at `path` overlays any of `layers`; `None` when it cannot be
/// read.
fn uses_any(path: &std::path::Path, layers: &[std::path::PathBuf]) -> Option<bool> {
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    let Some(note) = config["annotations"][annotations::ROOTFS].as_str() else {
        return Some(false);
    };
    Some(match serde_json::from_str::<RootfsLayout>(note).ok()? {
        RootfsLayout::Overlay { lower, .. } => lower.iter().any(|l| layers.contains(l)),
        _ => false,
    })
}
