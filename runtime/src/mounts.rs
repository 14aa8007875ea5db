//! The container's filesystem, built by its init inside its mount namespace: the root
//! bound onto itself, every mount of the config in order (each destination resolved
//! inside the root, so a symlink in the image cannot aim a mount at the host), `/dev`'s
//! device nodes and links, `pivot_root`, then sysctls, masked and read-only paths and a
//! read-only root. Runs in the child between clone and exec; errors name the step.

use crate::config::resolve_in_root;
use crate::step::{step_err, StepError};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use oci_spec::runtime::{LinuxDeviceType, Mount, Spec};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

type Result<T> = std::result::Result<T, StepError>;

/// Parses mount options into flags, propagation flags and filesystem data.
pub fn parse_options(options: &[String]) -> (MsFlags, MsFlags, Vec<String>, bool) {
    let mut flags = MsFlags::empty();
    let mut clear = MsFlags::empty();
    let mut propagation = MsFlags::empty();
    let mut data = Vec::new();
    let mut bind = false;
    for o in options {
        match o.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" => clear |= MsFlags::MS_RDONLY,
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "suid" => clear |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "dev" => clear |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "exec" => clear |= MsFlags::MS_NOEXEC,
            "sync" => flags |= MsFlags::MS_SYNCHRONOUS,
            "async" => {}
            "dirsync" => flags |= MsFlags::MS_DIRSYNC,
            "remount" => flags |= MsFlags::MS_REMOUNT,
            "mand" => flags |= MsFlags::MS_MANDLOCK,
            "nomand" => {}
            "atime" => clear |= MsFlags::MS_NOATIME,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "diratime" => clear |= MsFlags::MS_NODIRATIME,
            "nodiratime" => flags |= MsFlags::MS_NODIRATIME,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "norelatime" => clear |= MsFlags::MS_RELATIME,
            "strictatime" => flags |= MsFlags::MS_STRICTATIME,
            "nostrictatime" => clear |= MsFlags::MS_STRICTATIME,
            "bind" => bind = true,
            "rbind" => {
                bind = true;
                flags |= MsFlags::MS_REC;
            }
            "private" => propagation |= MsFlags::MS_PRIVATE,
            "rprivate" => propagation |= MsFlags::MS_PRIVATE | MsFlags::MS_REC,
            "shared" => propagation |= MsFlags::MS_SHARED,
            "rshared" => propagation |= MsFlags::MS_SHARED | MsFlags::MS_REC,
            "slave" => propagation |= MsFlags::MS_SLAVE,
            "rslave" => propagation |= MsFlags::MS_SLAVE | MsFlags::MS_REC,
            "unbindable" => propagation |= MsFlags::MS_UNBINDABLE,
            "runbindable" => propagation |= MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
            // SELinux labels mean nothing without SELinux; a kernel without it refuses them.
            o if o.starts_with("context=")
                || o.starts_with("fscontext=")
                || o.starts_with("defcontext=")
                || o.starts_with("rootcontext=") => {}
            other => data.push(other.to_string()),
        }
    }
    (flags & !clear, propagation, data, bind)
}

/// Whether what is now mounted at `target` is the object the parent opened and checked
/// (a source renamed or swapped for a symlink in between is not).
/// A mount point inside the root, held open. The kernel resolves every component inside
/// the root (`RESOLVE_IN_ROOT`: a symlink, `..` or an absolute link cannot leave it; no
/// magic links), and mounts go to `path` (`/proc/self/fd/N`), the object itself: a
/// directory swapped for a symlink after the check cannot aim the mount at the host (the
/// class of runc's CVE-2021-30465). Opened again after a mount, it is the new mount's root.
struct MountPoint {
    fd: OwnedFd,
    path: PathBuf,
}

fn open_in_root(rootfs: &Path, dest: &Path, what: &str) -> Result<MountPoint> {
    use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
    let root = nix::fcntl::open(
        rootfs,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| step_err("mount", format!("{what}: open the root: {e}")))?;
    // SAFETY: open returned a fresh descriptor.
    let root = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(root) };
    let relative: PathBuf = dest
        .components()
        .filter(|c| !matches!(c, std::path::Component::RootDir))
        .collect();
    let relative = if relative.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        relative
    };
    let fd = openat2(
        root.as_raw_fd(),
        &relative,
        OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS),
    )
    .map_err(|e| {
        step_err(
            "mount",
            format!("{what}: open the mount point in the root: {e}"),
        )
    })?;
    // SAFETY: openat2 returned a fresh descriptor.
    let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let path = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    Ok(MountPoint { fd, path })
}

fn same_object(checked: &OwnedFd, target: &Path) -> std::result::Result<(), String> {
    let want = nix::sys::stat::fstat(checked.as_raw_fd()).map_err(|e| e.to_string())?;
    let got = nix::sys::stat::stat(target).map_err(|e| e.to_string())?;
    if (want.st_dev, want.st_ino) != (got.st_dev, got.st_ino) {
        return Err("changed after it was checked; refusing to mount what was not checked".into());
    }
    Ok(())
}

/// Creates `path` as a directory or an empty file (for a file bind), with its parents.
fn make_target(path: &Path, dir: bool) -> Result<()> {
    if path.symlink_metadata().is_ok() {
        return Ok(());
    }
    if dir {
        std::fs::create_dir_all(path)
    } else {
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p)
                .map_err(|e| step_err("create mount point", format!("{}: {e}", p.display())))?;
        }
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map(|_| ())
    }
    .map_err(|e| step_err("create mount point", format!("{}: {e}", path.display())))
}

/// A bind mount's source as `create` checked it: held open by descriptor, and for an
/// idmapped mount the detached, idmapped tree to attach in its place.
pub struct BindSource {
    pub checked: OwnedFd,
    pub idmapped: Option<OwnedFd>,
}

/// Builds the container's filesystem under `rootfs`: every mount and `/dev`. The init is
/// still outside it afterwards ([`enter_rootfs`] pivots), so the createContainer hooks run
/// in between, in the container's namespaces with the runtime's paths.
pub fn build_rootfs(
    spec: &Spec,
    bundle: &Path,
    rootfs: &Path,
    userns: bool,
    bind_sources: &[Option<BindSource>],
) -> Result<()> {
    // Nothing mounted below reaches the host's namespace.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .map_err(|e| step_err("make / a slave mount", e.to_string()))?;
    mount(
        Some(rootfs),
        rootfs,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| {
        step_err(
            "bind the root filesystem",
            format!("{}: {e}", rootfs.display()),
        )
    })?;
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        mount_one(
            i,
            m,
            bundle,
            rootfs,
            userns,
            bind_sources.get(i).and_then(Option::as_ref),
        )?;
    }
    let dev_is_fresh = !spec
        .mounts()
        .iter()
        .flatten()
        .any(|m| m.destination() == Path::new("/dev") && crate::mounts::is_bind_mount(m));
    if dev_is_fresh {
        make_devices(spec, rootfs, userns)?;
        make_dev_links(rootfs)?;
    }
    Ok(())
}

/// Pivots into the filesystem [`build_rootfs`] made, and sets the root's propagation.
pub fn enter_rootfs(spec: &Spec, rootfs: &Path) -> Result<()> {
    let propagation = match spec
        .linux()
        .as_ref()
        .and_then(|l| l.rootfs_propagation().as_deref())
    {
        Some("shared") | Some("rshared") => MsFlags::MS_SHARED,
        Some("private") | Some("rprivate") => MsFlags::MS_PRIVATE,
        Some("unbindable") | Some("runbindable") => MsFlags::MS_UNBINDABLE,
        _ => MsFlags::MS_SLAVE,
    };
    pivot_into(rootfs)?;
    if propagation != MsFlags::MS_SLAVE {
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | propagation,
            None::<&str>,
        )
        .map_err(|e| step_err("set rootfsPropagation", e.to_string()))?;
    }
    Ok(())
}

pub fn is_bind_mount(m: &Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options()
            .iter()
            .flatten()
            .any(|o| o == "bind" || o == "rbind")
}

fn mount_one(
    i: usize,
    m: &Mount,
    bundle: &Path,
    rootfs: &Path,
    userns: bool,
    pinned: Option<&BindSource>,
) -> Result<()> {
    let what = format!("mounts[{i}] {}", m.destination().display());
    let options = m.options().clone().unwrap_or_default();
    let (flags, propagation, data, bind) = parse_options(&options);
    let typ = m.typ().clone().unwrap_or_default();
    let bind = bind || typ == "bind";
    let target = resolve_in_root(rootfs, m.destination());
    if bind {
        let source = m
            .source()
            .clone()
            .ok_or_else(|| step_err("mount", format!("{what}: a bind needs a source")))?;
        let source = if source.is_absolute() {
            source
        } else {
            bundle.join(source)
        };
        let is_dir = std::fs::metadata(&source)
            .map_err(|e| step_err("mount", format!("{what}: source {}: {e}", source.display())))?
            .is_dir();
        make_target(&target, is_dir)?;
        let point = open_in_root(rootfs, m.destination(), &what)?;
        match pinned.and_then(|p| p.idmapped.as_ref()) {
            Some(tree) => {
                covenant_runners::mount_api::move_tree_onto(tree, &point.fd).map_err(|e| {
                    step_err(
                        "mount",
                        format!("{what}: attach the idmapped {}: {e}", source.display()),
                    )
                })?;
            }
            None => mount(
                Some(&source),
                &point.path,
                None::<&str>,
                MsFlags::MS_BIND | (flags & MsFlags::MS_REC),
                None::<&str>,
            )
            .map_err(|e| step_err("mount", format!("{what}: bind {}: {e}", source.display())))?,
        }
        let top = open_in_root(rootfs, m.destination(), &what)?;
        if let Some(BindSource { checked, .. }) = pinned {
            same_object(checked, &top.path).map_err(|reason| {
                step_err(
                    "mount",
                    format!("{what}: source {}: {reason}", source.display()),
                )
            })?;
        }
        let extra = flags & !(MsFlags::MS_REC | MsFlags::MS_REMOUNT);
        if !extra.is_empty() {
            remount_bind(&top.path, extra)
                .map_err(|e| step_err("mount", format!("{what}: remount {extra:?}: {e}")))?;
        }
        // A remount reaches only the top mount: the submounts an `rbind` brought along
        // would stay writable under a read-only bind (a source granted for reading only).
        if flags.contains(MsFlags::MS_REC | MsFlags::MS_RDONLY) {
            let c_target = std::ffi::CString::new(top.path.as_os_str().as_bytes())
                .map_err(|_| step_err("mount", format!("{what}: a path with a NUL byte")))?;
            covenant_runners::mount_api::make_read_only_recursive(&c_target).map_err(|e| {
                step_err(
                    "mount",
                    format!("{what}: make the submounts read-only: {e}"),
                )
            })?;
        }
    } else {
        make_target(&target, true)?;
        let source = m.source().clone().unwrap_or_else(|| PathBuf::from(&typ));
        let data = data.join(",");
        let point = open_in_root(rootfs, m.destination(), &what)?;
        match typ.as_str() {
            "cgroup" | "cgroup2" => {
                mount_cgroup(rootfs, m.destination(), &point.path, flags, &what)?
            }
            _ => {
                let r = mount(
                    Some(&source),
                    &point.path,
                    Some(typ.as_str()),
                    flags,
                    Some(data.as_str()),
                );
                match r {
                    // A sysfs needs its own network namespace's owner; in a user
                    // namespace without one, the host's is bound instead, read-only.
                    Err(nix::errno::Errno::EPERM) if typ == "sysfs" && userns => {
                        mount(
                            Some("/sys"),
                            &point.path,
                            None::<&str>,
                            MsFlags::MS_BIND | MsFlags::MS_REC,
                            None::<&str>,
                        )
                        .map_err(|e| step_err("mount", format!("{what}: bind /sys: {e}")))?;
                        let top = open_in_root(rootfs, m.destination(), &what)?;
                        remount_bind(&top.path, flags | MsFlags::MS_RDONLY)
                            .map_err(|e| step_err("mount", format!("{what}: remount: {e}")))?;
                    }
                    Err(e) => return Err(step_err("mount", format!("{what}: {typ}: {e}"))),
                    Ok(()) => {}
                }
            }
        }
    }
    if !propagation.is_empty() {
        let top = open_in_root(rootfs, m.destination(), &what)?;
        mount(
            None::<&str>,
            &top.path,
            None::<&str>,
            propagation,
            None::<&str>,
        )
        .map_err(|e| step_err("mount", format!("{what}: propagation: {e}")))?;
    }
    Ok(())
}

/// A `cgroup` mount: cgroup2 on a v2 host; on v1 a tmpfs holding one mount per hierarchy.
fn mount_cgroup(
    rootfs: &Path,
    dest: &Path,
    target: &Path,
    flags: MsFlags,
    what: &str,
) -> Result<()> {
    let hs = crate::cgroups::hierarchies();
    if hs.iter().any(|h| h.v2) {
        return mount(
            Some("cgroup2"),
            target,
            Some("cgroup2"),
            flags,
            None::<&str>,
        )
        .map_err(|e| step_err("mount", format!("{what}: cgroup2: {e}")));
    }
    let base = flags & !MsFlags::MS_RDONLY;
    mount(
        Some("tmpfs"),
        target,
        Some("tmpfs"),
        base | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=755"),
    )
    .map_err(|e| step_err("mount", format!("{what}: tmpfs: {e}")))?;
    // The fresh tmpfs's own root, by descriptor, for what goes inside it.
    let top = open_in_root(rootfs, dest, what)?;
    for h in &hs {
        let name = h.controllers.join(",");
        let dir = top.path.join(name.trim_start_matches("name="));
        make_target(&dir, true)?;
        mount(
            Some("cgroup"),
            &dir,
            Some("cgroup"),
            flags,
            Some(name.as_str()),
        )
        .map_err(|e| step_err("mount", format!("{what}: cgroup {name}: {e}")))?;
    }
    if flags.contains(MsFlags::MS_RDONLY) {
        remount_bind(&top.path, flags)
            .map_err(|e| step_err("mount", format!("{what}: remount: {e}")))?;
    }
    Ok(())
}

fn remount_bind(target: &Path, flags: MsFlags) -> nix::Result<()> {
    let r = mount(
        None::<&str>,
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags,
        None::<&str>,
    );
    if r == Err(nix::errno::Errno::EPERM) {
        // In a user namespace, locked flags of the source must be kept.
        let st = nix::sys::statvfs::statvfs(target)?;
        let mut keep = flags;
        use nix::sys::statvfs::FsFlags;
        for (f, m) in [
            (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
            (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
            (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
            (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        ] {
            if st.flags().contains(f) {
                keep |= m;
            }
        }
        return mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | keep,
            None::<&str>,
        );
    }
    r
}

/// The devices every container gets, then the config's.
const DEFAULT_DEVICES: [(&str, u64, u64); 6] = [
    ("/dev/null", 1, 3),
    ("/dev/zero", 1, 5),
    ("/dev/full", 1, 7),
    ("/dev/random", 1, 8),
    ("/dev/urandom", 1, 9),
    ("/dev/tty", 5, 0),
];

fn make_devices(spec: &Spec, rootfs: &Path, userns: bool) -> Result<()> {
    let mut list: Vec<(PathBuf, SFlag, u64, u64, u32, u32, u32)> = DEFAULT_DEVICES
        .iter()
        .map(|(p, maj, min)| (PathBuf::from(p), SFlag::S_IFCHR, *maj, *min, 0o666, 0, 0))
        .collect();
    for d in spec
        .linux()
        .as_ref()
        .and_then(|l| l.devices().clone())
        .unwrap_or_default()
    {
        let kind = match d.typ() {
            LinuxDeviceType::B => SFlag::S_IFBLK,
            LinuxDeviceType::P => SFlag::S_IFIFO,
            _ => SFlag::S_IFCHR,
        };
        list.retain(|e| e.0 != *d.path());
        list.push((
            d.path().clone(),
            kind,
            d.major() as u64,
            d.minor() as u64,
            d.file_mode().unwrap_or(0o666),
            d.uid().unwrap_or(0),
            d.gid().unwrap_or(0),
        ));
    }
    for (path, kind, major, minor, mode, uid, gid) in list {
        let target = resolve_in_root(rootfs, &path);
        if let Some(p) = target.parent() {
            make_target(p, true)?;
        }
        let _ = std::fs::remove_file(&target);
        let made = if userns {
            Err(nix::errno::Errno::EPERM)
        } else {
            mknod(
                &target,
                kind,
                Mode::from_bits_truncate(mode),
                makedev(major, minor),
            )
        };
        match made {
            Ok(()) => {
                // mknod applies the umask; the config's mode is exact.
                nix::sys::stat::fchmodat(
                    None,
                    &target,
                    Mode::from_bits_truncate(mode),
                    nix::sys::stat::FchmodatFlags::FollowSymlink,
                )
                .map_err(|e| {
                    step_err("create device", format!("{}: chmod: {e}", path.display()))
                })?;
                nix::unistd::chown(
                    &target,
                    Some(nix::unistd::Uid::from_raw(uid)),
                    Some(nix::unistd::Gid::from_raw(gid)),
                )
                .map_err(|e| {
                    step_err("create device", format!("{}: chown: {e}", path.display()))
                })?;
            }
            Err(nix::errno::Errno::EPERM) => {
                // Without CAP_MKNOD over the host, the host's node is bound instead.
                make_target(&target, false)?;
                mount(
                    Some(&path),
                    &target,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(|e| step_err("create device", format!("{}: bind: {e}", path.display())))?;
            }
            Err(e) => {
                return Err(step_err(
                    "create device",
                    format!("{}: {e}", path.display()),
                ))
            }
        }
    }
    Ok(())
}

fn make_dev_links(rootfs: &Path) -> Result<()> {
    let dev = rootfs.join("dev");
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("core", "/proc/kcore"),
    ] {
        let path = dev.join(link);
        if path.symlink_metadata().is_err() {
            symlink(target, &path)
                .map_err(|e| step_err("create /dev links", format!("{}: {e}", path.display())))?;
        }
    }
    let ptmx = dev.join("ptmx");
    if dev.join("pts/ptmx").exists() {
        let _ = std::fs::remove_file(&ptmx);
        symlink("pts/ptmx", &ptmx)
            .map_err(|e| step_err("create /dev links", format!("ptmx: {e}")))?;
    }
    Ok(())
}

/// `pivot_root` into `rootfs` and detach the old root.
fn pivot_into(rootfs: &Path) -> Result<()> {
    nix::unistd::chdir(rootfs).map_err(|e| step_err("pivot_root", format!("chdir: {e}")))?;
    nix::unistd::pivot_root(".", ".").map_err(|e| step_err("pivot_root", e.to_string()))?;
    umount2(".", MntFlags::MNT_DETACH)
        .map_err(|e| step_err("pivot_root", format!("detach the old root: {e}")))?;
    nix::unistd::chdir("/").map_err(|e| step_err("pivot_root", format!("chdir /: {e}")))
}

/// Without a mount namespace the container's root is entered by `chroot`.
pub fn chroot_into(rootfs: &Path) -> Result<()> {
    nix::unistd::chdir(rootfs).map_err(|e| step_err("chroot", e.to_string()))?;
    nix::unistd::chroot(".").map_err(|e| step_err("chroot", e.to_string()))?;
    nix::unistd::chdir("/").map_err(|e| step_err("chroot", e.to_string()))
}

/// Writes the config's sysctls through the container's own `/proc/sys`.
pub fn write_sysctls(spec: &Spec) -> Result<()> {
    for (key, value) in spec
        .linux()
        .as_ref()
        .and_then(|l| l.sysctl().clone())
        .unwrap_or_default()
    {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        std::fs::write(&path, &value)
            .map_err(|e| step_err("write sysctl", format!("linux.sysctl.{key}: {e}")))?;
    }
    Ok(())
}

/// Masks and read-only paths, then a read-only root; after `pivot_root`.
pub fn restrict_paths(spec: &Spec) -> Result<()> {
    let linux = spec.linux().as_ref();
    for p in linux
        .and_then(|l| l.masked_paths().clone())
        .unwrap_or_default()
    {
        let path = Path::new(&p);
        let Ok(meta) = path.symlink_metadata() else {
            continue;
        };
        let r = if meta.is_dir() {
            mount(
                Some("tmpfs"),
                path,
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                None::<&str>,
            )
        } else {
            mount(
                Some("/dev/null"),
                path,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
        };
        r.map_err(|e| step_err("mask path", format!("linux.maskedPaths {p}: {e}")))?;
    }
    for p in linux
        .and_then(|l| l.readonly_paths().clone())
        .unwrap_or_default()
    {
        let path = Path::new(&p);
        if path.symlink_metadata().is_err() {
            continue;
        }
        mount(
            Some(path),
            path,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .and_then(|_| {
            remount_bind(
                path,
                MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            )
        })
        .and_then(|_| {
            // A remount reaches only the top mount: what is mounted below the path (the
            // recursive bind brought it along) is made read-only too.
            let c = std::ffi::CString::new(path.as_os_str().as_bytes())
                .map_err(|_| nix::errno::Errno::EINVAL)?;
            covenant_runners::mount_api::make_read_only_recursive(&c)
        })
        .map_err(|e| step_err("read-only path", format!("linux.readonlyPaths {p}: {e}")))?;
    }
    if spec.root().as_ref().and_then(|r| r.readonly()) == Some(true) {
        remount_bind(Path::new("/"), MsFlags::MS_RDONLY)
            .map_err(|e| step_err("read-only root", e.to_string()))?;
    }
    Ok(())
}
