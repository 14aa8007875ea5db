//! The sandbox's filesystem view. Host paths are cloned into detached mount trees by the
//! parent, as host root (`open_tree`), with their read-only/nosuid/nodev/noexec and idmap
//! attributes set there (`mount_setattr`); the child attaches each one into the new root
//! (`move_mount`), mounts the fresh kernel filesystems, masks `/proc`, and pivots.
//! Cloning in the parent means a host path the sandbox's own host uid could not even look
//! up (a workspace under a 0700 home) is still mountable, and idmaps need host root.

use super::spec::{MountKind, MountSpec, NativeSpec};
use super::step::{ChildError, SetupStep};
use crate::mount_api::{self, move_tree};
use covenant_policy::annotations::RootfsLayout;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::SFlag;
use nix::unistd::{chdir, pivot_root};
use std::ffi::CString;
use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("mount {destination}: cannot clone host path {source_path}: {errno}")]
    OpenTree {
        destination: PathBuf,
        source_path: PathBuf,
        errno: nix::errno::Errno,
    },
    #[error("mount {destination}: cannot set attributes{idmap}: {errno}")]
    SetAttr {
        destination: PathBuf,
        idmap: &'static str,
        errno: nix::errno::Errno,
    },
    #[error("mount {destination}: the path {path} holds a NUL byte")]
    NulInPath { destination: PathBuf, path: PathBuf },
}

/// The path as a C string; a path holding a NUL byte names nothing the kernel could find,
/// so it is refused rather than cut short.
fn cstring(path: &Path, destination: &Path) -> Result<CString, MountError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| MountError::NulInPath {
        destination: destination.to_path_buf(),
        path: path.to_path_buf(),
    })
}

/// A detached copy of a host path, ready to be attached in the child.
#[derive(Debug)]
pub struct DetachedTree {
    pub fd: OwnedFd,
    pub is_dir: bool,
}

/// Clones the bind source of `m` into a detached tree with its final attributes; `idmap`
/// is a user namespace whose mapping the tree takes on.
pub fn clone_host_tree(m: &MountSpec, idmap: Option<&OwnedFd>) -> Result<DetachedTree, MountError> {
    let MountKind::Bind { source, recursive } = &m.kind else {
        unreachable!("only bind mounts are cloned")
    };
    let path = cstring(source, &m.destination)?;
    let fd =
        mount_api::open_tree(None, &path, *recursive).map_err(|errno| MountError::OpenTree {
            destination: m.destination.clone(),
            source_path: source.clone(),
            errno,
        })?;
    let mut set = 0;
    for (flag, attr) in [
        (MsFlags::MS_RDONLY, mount_api::ATTR_RDONLY),
        (MsFlags::MS_NOSUID, mount_api::ATTR_NOSUID),
        (MsFlags::MS_NODEV, mount_api::ATTR_NODEV),
        (MsFlags::MS_NOEXEC, mount_api::ATTR_NOEXEC),
    ] {
        if m.flags.contains(flag) {
            set |= attr;
        }
    }
    mount_api::set_attributes(&fd, set, idmap, *recursive).map_err(|errno| {
        MountError::SetAttr {
            destination: m.destination.clone(),
            idmap: if idmap.is_some() { " (idmapped)" } else { "" },
            errno,
        }
    })?;
    // The tree's own root, not whatever the path names by now, decides the mount point.
    let st = nix::sys::stat::fstat(fd.as_raw_fd()).map_err(|errno| MountError::OpenTree {
        destination: m.destination.clone(),
        source_path: source.clone(),
        errno,
    })?;
    let is_dir = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR;
    Ok(DetachedTree { fd, is_dir })
}

/// Clones `source` recursively into a detached tree idmapped through `userns` (nosuid,
/// nodev, and read-only unless `writable`), and attaches it at `target` (host side, for
/// runtimes that need the result as a path).
pub(crate) fn attach_idmapped(
    source: &Path,
    target: &Path,
    userns: &OwnedFd,
    writable: bool,
) -> Result<(), MountError> {
    let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    if !writable {
        flags |= MsFlags::MS_RDONLY;
    }
    let spec = MountSpec {
        destination: target.to_path_buf(),
        kind: MountKind::Bind {
            source: source.to_path_buf(),
            recursive: true,
        },
        flags,
    };
    let tree = clone_host_tree(&spec, Some(userns))?;
    let t = cstring(target, target)?;
    move_tree(&tree.fd, &t).map_err(|errno| MountError::SetAttr {
        destination: target.to_path_buf(),
        idmap: " (attach)",
        errno,
    })
}

fn step<'a>(
    step: SetupStep,
    target: &'a Path,
) -> impl FnOnce(nix::errno::Errno) -> ChildError + 'a {
    move |e| ChildError::new(step, format!("{}: {e}", target.display()))
}

fn inside(rootfs: &Path, dest: &Path) -> PathBuf {
    rootfs.join(dest.strip_prefix("/").unwrap_or(dest))
}

/// Creates the directory or empty file a mount attaches to, refusing a symlink there.
fn ensure_mount_point(target: &Path, is_dir: bool) -> Result<(), ChildError> {
    let fail = |e: std::io::Error| {
        ChildError::new(
            SetupStep::CreateMountPoint,
            format!("{}: {e}", target.display()),
        )
    };
    match fs::symlink_metadata(target) {
        Ok(md) if md.file_type().is_symlink() => {
            return Err(ChildError::new(
                SetupStep::CreateMountPoint,
                format!("{} is a symlink", target.display()),
            ))
        }
        Ok(_) => return Ok(()),
        Err(_) => {}
    }
    if is_dir {
        fs::create_dir_all(target).map_err(fail)
    } else {
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(fail)?;
        }
        fs::File::create(target).map(drop).map_err(fail)
    }
}

/// Builds the root filesystem, ready for [`enter_rootfs`], and returns its directory.
/// Runs in the child, in its own user and mount namespaces; `trees[i]` is the detached
/// tree of `spec.mounts[i]` when it is a bind.
pub fn build_rootfs(
    spec: &NativeSpec,
    trees: &[Option<DetachedTree>],
) -> Result<PathBuf, ChildError> {
    let root = Path::new("/");
    mount(
        None::<&str>,
        root,
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(step(SetupStep::MakeMountsPrivate, root))?;
    let root_dir = match &spec.root_layout {
        RootfsLayout::Skeleton => {
            mount(
                Some(&spec.rootfs),
                &spec.rootfs,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(step(SetupStep::BindRootfs, &spec.rootfs))?;
            spec.rootfs.clone()
        }
        RootfsLayout::InMemory { links } => {
            build_memory_root(&spec.rootfs, links)?;
            spec.rootfs.clone()
        }
        RootfsLayout::Overlay { lower, keep } => {
            build_overlay_root(&spec.rootfs, lower, keep.as_deref())?
        }
    };
    let rootfs = &root_dir;
    for (m, tree) in spec.mounts.iter().zip(trees) {
        attach(rootfs, m, tree.as_ref())?;
    }
    if spec
        .mounts
        .iter()
        .any(|m| m.destination == Path::new("/dev"))
    {
        make_dev_links(rootfs)?;
    }
    for p in &spec.masked_paths {
        mask_path(rootfs, p)?;
    }
    for p in &spec.readonly_paths {
        readonly_path(rootfs, p)?;
    }
    Ok(root_dir)
}

/// Makes `root_dir`, built by [`build_rootfs`], the root: `pivot_root`, the old root
/// detached, and the new one remounted read-only when the spec says so.
pub fn enter_rootfs(spec: &NativeSpec, root_dir: &Path) -> Result<(), ChildError> {
    let root = Path::new("/");
    pivot_into(root_dir)?;
    if spec.root_readonly {
        remount_bind(
            root,
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        )
        .map_err(step(SetupStep::RemountRootReadOnly, root))?;
    }
    Ok(())
}

/// A private tmpfs as the root, with the host's merged-`/usr` links; the mount points
/// are created as each mount is attached. It is remounted read-only after the pivot.
fn build_memory_root(rootfs: &Path, links: &[(PathBuf, PathBuf)]) -> Result<(), ChildError> {
    mount(
        Some("tmpfs"),
        rootfs,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755,size=1m"),
    )
    .map_err(step(SetupStep::MountInMemoryRoot, rootfs))?;
    for (link, target) in links {
        let path = inside(rootfs, link);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|e| {
                ChildError::new(
                    SetupStep::CreateRootLinks,
                    format!("{}: {e}", parent.display()),
                )
            })?;
        }
        std::os::unix::fs::symlink(target, &path).map_err(|e| {
            ChildError::new(
                SetupStep::CreateRootLinks,
                format!("{}: {e}", path.display()),
            )
        })?;
    }
    Ok(())
}

/// An overlay of the image's layers (read-only) under a writable layer on a private
/// tmpfs, which disappears with the sandbox. Returns the merged directory, the new root.
fn build_overlay_root(
    rootfs: &Path,
    lower: &[PathBuf],
    keep: Option<&Path>,
) -> Result<PathBuf, ChildError> {
    mount(
        Some("tmpfs"),
        rootfs,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    )
    .map_err(step(SetupStep::MountOverlayScratch, rootfs))?;
    for d in ["upper", "work", "merged"] {
        fs::create_dir(rootfs.join(d))
            .map_err(|e| ChildError::new(SetupStep::MountOverlayRoot, format!("{d}: {e}")))?;
    }
    // A kept layer lives in a host directory prepared for the sandbox's root; its
    // `upper` and `work` are named by descriptor, never by a name its owner could swap.
    let kept = keep
        .map(|k| crate::hostpath::KeptLayer::open(k, None))
        .transpose()
        .map_err(|e| ChildError::new(SetupStep::MountOverlayRoot, e.to_string()))?;
    let layer = match &kept {
        Some(kept) => kept.overlay_options(),
        None => format!(
            "upperdir={},workdir={}",
            rootfs.join("upper").display(),
            rootfs.join("work").display()
        ),
    };
    let lowers: Vec<String> = lower.iter().map(|l| l.display().to_string()).collect();
    let options = format!("lowerdir={},{layer},userxattr", lowers.join(":"));
    let merged = rootfs.join("merged");
    mount(
        Some("overlay"),
        &merged,
        Some("overlay"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(options.as_str()),
    )
    .map_err(step(SetupStep::MountOverlayRoot, &merged))?;
    Ok(merged)
}

fn attach(rootfs: &Path, m: &MountSpec, tree: Option<&DetachedTree>) -> Result<(), ChildError> {
    let target = inside(rootfs, &m.destination);
    match (&m.kind, tree) {
        (MountKind::Bind { .. }, Some(tree)) => {
            ensure_mount_point(&target, tree.is_dir)?;
            let t = cstring(&target, &m.destination)
                .map_err(|e| ChildError::new(SetupStep::AttachBindMount, e.to_string()))?;
            if let Err(errno) = move_tree(&tree.fd, &t) {
                return Err(step(SetupStep::AttachBindMount, &target)(errno));
            }
            Ok(())
        }
        // Rootless: the caller may not clone trees, but may bind what it can reach.
        (MountKind::Bind { source, recursive }, None) => {
            ensure_mount_point(&target, source.is_dir())?;
            let rec = if *recursive {
                MsFlags::MS_REC
            } else {
                MsFlags::empty()
            };
            mount(
                Some(source),
                &target,
                None::<&str>,
                MsFlags::MS_BIND | rec,
                None::<&str>,
            )
            .map_err(step(SetupStep::BindMount, &target))?;
            let wanted = m.flags
                & (MsFlags::MS_RDONLY
                    | MsFlags::MS_NOSUID
                    | MsFlags::MS_NODEV
                    | MsFlags::MS_NOEXEC);
            if !wanted.is_empty() {
                remount_bind(&target, wanted).map_err(step(SetupStep::BindMount, &target))?;
            }
            Ok(())
        }
        (MountKind::Fresh { fstype, data }, _) => {
            ensure_mount_point(&target, true)?;
            let data = (!data.is_empty()).then_some(data.as_str());
            mount(
                Some(fstype.as_str()),
                &target,
                Some(fstype.as_str()),
                m.flags,
                data,
            )
            .map_err(step(SetupStep::MountFilesystem, &target))
        }
    }
}

/// The links every `/dev` has (`/dev/fd`, the standard streams, `ptmx` of the private
/// devpts instance).
fn make_dev_links(rootfs: &Path) -> Result<(), ChildError> {
    for (link, target) in [
        ("dev/fd", "/proc/self/fd"),
        ("dev/stdin", "/proc/self/fd/0"),
        ("dev/stdout", "/proc/self/fd/1"),
        ("dev/stderr", "/proc/self/fd/2"),
        ("dev/ptmx", "pts/ptmx"),
        ("dev/core", "/proc/kcore"),
    ] {
        let path = rootfs.join(link);
        if fs::symlink_metadata(&path).is_ok() {
            continue;
        }
        std::os::unix::fs::symlink(target, &path).map_err(|e| {
            ChildError::new(
                SetupStep::CreateDevLinks,
                format!("{}: {e}", path.display()),
            )
        })?;
    }
    Ok(())
}

/// Hides a path: an empty read-only tmpfs over a directory, `/dev/null` over a file.
fn mask_path(rootfs: &Path, path: &Path) -> Result<(), ChildError> {
    let target = inside(rootfs, path);
    let Ok(md) = fs::metadata(&target) else {
        return Ok(());
    };
    if md.is_dir() {
        mount(
            Some("tmpfs"),
            &target,
            Some("tmpfs"),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("size=0,mode=0555"),
        )
        .map_err(step(SetupStep::MaskPath, &target))
    } else {
        let null = rootfs.join("dev/null");
        mount(
            Some(&null),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(step(SetupStep::MaskPath, &target))
    }
}

fn readonly_path(rootfs: &Path, path: &Path) -> Result<(), ChildError> {
    let target = inside(rootfs, path);
    if fs::symlink_metadata(&target).is_err() {
        return Ok(());
    }
    mount(
        Some(&target),
        &target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(step(SetupStep::ReadOnlyPath, &target))?;
    remount_bind(
        &target,
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
    )
    .map_err(step(SetupStep::ReadOnlyPath, &target))
}

/// Remounts a bind mount adding `extra` (read-only, nosuid, ...), keeping the flags it
/// already has: a mount inherited from a more privileged namespace has its
/// atime/nosuid/nodev/noexec flags locked, and a remount that would clear one is refused.
fn remount_bind(target: &Path, extra: MsFlags) -> nix::Result<()> {
    let current = nix::sys::statvfs::statvfs(target)?.flags();
    use nix::sys::statvfs::FsFlags;
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | extra;
    for (fs_flag, ms_flag) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if current.contains(fs_flag) {
            flags |= ms_flag;
        }
    }
    mount(None::<&str>, target, None::<&str>, flags, None::<&str>)
}

/// `pivot_root(".", ".")` then detach the old root: nothing of the host's tree stays
/// reachable from the sandbox.
fn pivot_into(rootfs: &Path) -> Result<(), ChildError> {
    chdir(rootfs).map_err(step(SetupStep::PivotRoot, rootfs))?;
    pivot_root(".", ".").map_err(step(SetupStep::PivotRoot, rootfs))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(step(SetupStep::DetachOldRoot, Path::new("/")))?;
    chdir("/").map_err(step(SetupStep::PivotRoot, Path::new("/")))
}
