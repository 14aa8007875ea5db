//! The image store of this host (`$COVENANT_HOME/images`) and resolving a plan's image
//! root against it.

use crate::home::covenant_home;
use crate::home::identity_map;
use covenant_images::store::{ImageError, ImageHold, ImageStore};
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
