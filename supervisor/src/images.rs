//! The image store of this host (`$COVENANT_HOME/images`) and resolving a plan's image
//! root against it.

use crate::home::covenant_home;
use crate::home::identity_map;
use covenant_images::store::{ImageError, ImageRecord, ImageStore};
use covenant_images::unpack::IdShift;
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

/// The job running on `record`, if any: a bundle directory whose plan names its manifest
/// (bundles exist only while their run does, or after a crash until recovery).
pub fn job_using(record: &ImageRecord) -> Option<String> {
    let bundles = covenant_home().join("bundles");
    std::fs::read_dir(bundles)
        .ok()?
        .flatten()
        .find_map(|entry| {
            let plan: SandboxPlan =
                serde_json::from_slice(&std::fs::read(entry.path().join("plan.json")).ok()?)
                    .ok()?;
            match plan.rootfs {
                RootfsSource::Image {
                    manifest_digest: Some(d),
                    ..
                } if d == record.manifest_digest => Some(plan.job_id),
                _ => None,
            }
        })
}
