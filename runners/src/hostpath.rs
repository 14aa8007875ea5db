//! Host paths a plan names, resolved once and used by descriptor.
//!
//! A path is opened with `openat2(RESOLVE_NO_SYMLINKS)`: no component on the way may be a
//! symlink, so the object reached is the one the authorised name names, and a path its
//! owner swapped for a symlink is refused instead of followed. The object's identity
//! (device and inode) is compared with the one recorded when the request was authorised,
//! so a queued job whose path was replaced in the meantime does not start.
//!
//! The runner then mounts that descriptor, not the path: [`Staging`] clones each object
//! (`open_tree`) and attaches it under the bundle's own directory, inside a mount
//! namespace private to the supervising process. Every runner (native, runc, crun, runsc)
//! binds from there, a place that only root can change and that vanishes with the
//! process.

use crate::mount_api::{clone_fd_tree, move_tree};
use covenant_policy::ObjectId;
use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{fstat, Mode, SFlag};
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum HostPathError {
    #[error("`{path}` does not exist")]
    Missing { path: PathBuf },
    #[error("`{path}` passes through a symlink; host paths are never followed through symlinks, name the real path")]
    Symlink { path: PathBuf },
    #[error("`{path}`: {errno}")]
    Open { path: PathBuf, errno: Errno },
    #[error("`{path}` was replaced after the request was authorised (it is no longer the object that was checked)")]
    Replaced { path: PathBuf },
    #[error("`{path}` is {found}; {expected} is needed here")]
    Kind {
        path: PathBuf,
        found: &'static str,
        expected: &'static str,
    },
    #[error("cannot stage `{path}` at {at}: {step}: {errno}")]
    Stage {
        path: PathBuf,
        at: PathBuf,
        step: &'static str,
        errno: Errno,
    },
    #[error("cannot give the supervisor a private mount namespace: {step}: {errno}")]
    Namespace { step: &'static str, errno: Errno },
    #[error("cannot mount the run's private folder {at} (tmpfs): {errno}")]
    PrivateFolder { at: PathBuf, errno: Errno },
}

type Result<T> = std::result::Result<T, HostPathError>;

/// What kind of object a host path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    Dir,
    File,
    Other,
}

impl ObjectKind {
    fn describe(self) -> &'static str {
        match self {
            Self::Dir => "a directory",
            Self::File => "a regular file",
            Self::Other => "neither a file nor a directory",
        }
    }
}

/// One host object, open.
#[derive(Debug)]
pub struct HostObject {
    fd: OwnedFd,
    /// The name it was opened by.
    pub path: PathBuf,
    pub id: ObjectId,
    pub uid: u32,
    pub gid: u32,
    pub kind: ObjectKind,
}

impl HostObject {
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Refuses unless this is the object recorded as `expected`.
    pub fn expect(&self, expected: ObjectId) -> Result<()> {
        if self.id != expected {
            return Err(HostPathError::Replaced {
                path: self.path.clone(),
            });
        }
        Ok(())
    }

    /// The same directory opened again for reading its entries and making new ones
    /// (an `O_PATH` descriptor cannot be written through), by descriptor.
    fn reopen_dir(&self) -> Result<OwnedFd> {
        let fd = nix::fcntl::openat2(
            self.fd.as_raw_fd(),
            ".",
            OpenHow::new()
                .flags(OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC)
                .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS),
        )
        .map_err(|errno| HostPathError::Open {
            path: self.path.clone(),
            errno,
        })?;
        // SAFETY: openat2 just returned this descriptor and nothing else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// Refuses unless this is a directory.
    pub fn expect_dir(&self) -> Result<()> {
        if self.kind != ObjectKind::Dir {
            return Err(HostPathError::Kind {
                path: self.path.clone(),
                found: self.kind.describe(),
                expected: "a directory",
            });
        }
        Ok(())
    }
}

fn how(resolve: ResolveFlag) -> OpenHow {
    OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(resolve | ResolveFlag::RESOLVE_NO_MAGICLINKS)
}

fn opened(path: &Path, fd: std::result::Result<i32, Errno>) -> Result<HostObject> {
    let fd = match fd {
        Ok(fd) => fd,
        Err(Errno::ELOOP) => {
            return Err(HostPathError::Symlink {
                path: path.to_path_buf(),
            })
        }
        Err(Errno::ENOENT) => {
            return Err(HostPathError::Missing {
                path: path.to_path_buf(),
            })
        }
        Err(errno) => {
            return Err(HostPathError::Open {
                path: path.to_path_buf(),
                errno,
            })
        }
    };
    // SAFETY: openat2 just returned this descriptor and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let st = fstat(fd.as_raw_fd()).map_err(|errno| HostPathError::Open {
        path: path.to_path_buf(),
        errno,
    })?;
    let kind = match SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT {
        SFlag::S_IFDIR => ObjectKind::Dir,
        SFlag::S_IFREG => ObjectKind::File,
        _ => ObjectKind::Other,
    };
    Ok(HostObject {
        fd,
        path: path.to_path_buf(),
        id: ObjectId {
            dev: st.st_dev,
            ino: st.st_ino,
        },
        uid: st.st_uid,
        gid: st.st_gid,
        kind,
    })
}

/// Opens the absolute `path` without following any symlink on the way.
pub fn open(path: &Path) -> Result<HostObject> {
    let fd = nix::fcntl::openat2(libc::AT_FDCWD, path, how(ResolveFlag::RESOLVE_NO_SYMLINKS));
    opened(path, fd)
}

/// Opens `relative` beneath the directory `dir` (never outside it, no symlinks);
/// `path` is the name it is reported by.
pub fn open_beneath(dir: &HostObject, relative: &Path, path: &Path) -> Result<HostObject> {
    let fd = nix::fcntl::openat2(
        dir.fd.as_raw_fd(),
        relative,
        how(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS),
    );
    opened(path, fd)
}

/// Creates the directory `path` (mode 0755) when it does not exist: its parent is opened
/// without following symlinks, and the new entry is made in that parent by descriptor.
pub fn create_dir(path: &Path) -> Result<()> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(HostPathError::Kind {
            path: path.to_path_buf(),
            found: "the root directory",
            expected: "a directory below it",
        });
    };
    let parent = open(parent)?;
    parent.expect_dir()?;
    let dir = parent.reopen_dir()?;
    match nix::sys::stat::mkdirat(Some(dir.as_raw_fd()), name, Mode::from_bits_truncate(0o755)) {
        Ok(()) | Err(Errno::EEXIST) => Ok(()),
        Err(errno) => Err(HostPathError::Open {
            path: path.to_path_buf(),
            errno,
        }),
    }
}

/// Writes `bytes` to the file `path` as a new file that replaces any old one: the parent
/// is opened without following symlinks, the data goes to a fresh temporary name in it
/// (created exclusively, never through a link), and the name is then renamed into place.
/// A symlink or hardlink planted at `path` by whoever can write the folder is replaced,
/// never written through. The file is created with `mode`.
pub fn write_new_file(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(HostPathError::Kind {
            path: path.to_path_buf(),
            found: "a folder",
            expected: "a file name",
        });
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let failed = |errno| HostPathError::Open {
        path: path.to_path_buf(),
        errno,
    };
    let dir = nix::fcntl::openat2(
        libc::AT_FDCWD,
        parent,
        OpenHow::new()
            .flags(OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS),
    );
    let dir = match dir {
        Ok(fd) => fd,
        Err(Errno::ELOOP) => {
            return Err(HostPathError::Symlink {
                path: parent.to_path_buf(),
            })
        }
        Err(errno) => return Err(failed(errno)),
    };
    // SAFETY: openat2 just returned this descriptor and nothing else owns it.
    let dir = unsafe { OwnedFd::from_raw_fd(dir) };
    let mut temp = std::ffi::OsString::from(".");
    temp.push(name);
    temp.push(format!(".{}.tmp", std::process::id()));
    let fd = nix::fcntl::openat(
        Some(dir.as_raw_fd()),
        temp.as_os_str(),
        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(mode),
    )
    .map_err(failed)?;
    // SAFETY: openat just returned this descriptor; the File owns it from here.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    let written = std::io::Write::write_all(&mut file, bytes).and_then(|()| file.sync_all());
    drop(file);
    let renamed = written
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
        .and_then(|()| {
            nix::fcntl::renameat(
                Some(dir.as_raw_fd()),
                temp.as_os_str(),
                Some(dir.as_raw_fd()),
                name,
            )
        });
    if let Err(errno) = renamed {
        let _ = nix::unistd::unlinkat(
            Some(dir.as_raw_fd()),
            temp.as_os_str(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
        return Err(failed(errno));
    }
    Ok(())
}

/// An overlay root's kept writable layer: `upper` and `work` under the kept directory,
/// opened beneath it without following symlinks. The kept directory belongs to whoever
/// was granted it, so the names inside it are theirs to swap: an overlay is therefore
/// mounted with `/proc/self/fd/N` of these descriptors ([`KeptLayer::upperdir`]), never
/// with the names, and ownership is set on the descriptors, never through a path.
#[derive(Debug)]
pub struct KeptLayer {
    pub upper: HostObject,
    pub work: HostObject,
}

impl KeptLayer {
    /// Opens (creating when absent, 0755) `keep/upper` and `keep/work`; with `owner`,
    /// gives both to that uid and gid.
    pub fn open(keep: &Path, owner: Option<(u32, u32)>) -> Result<Self> {
        Self::within(&open(keep)?, owner)
    }

    /// As [`KeptLayer::open`], in the kept directory `dir` already opened and checked.
    pub fn within(dir: &HostObject, owner: Option<(u32, u32)>) -> Result<Self> {
        dir.expect_dir()?;
        let keep = dir.path.as_path();
        let listing = dir.reopen_dir()?;
        let sub = |name: &str| -> Result<HostObject> {
            let path = keep.join(name);
            match nix::sys::stat::mkdirat(
                Some(listing.as_raw_fd()),
                name,
                Mode::from_bits_truncate(0o755),
            ) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(errno) => return Err(HostPathError::Open { path, errno }),
            }
            let object = open_beneath(dir, Path::new(name), &path)?;
            object.expect_dir()?;
            if let Some((uid, gid)) = owner {
                nix::unistd::fchownat(
                    Some(object.fd.as_raw_fd()),
                    "",
                    Some(nix::unistd::Uid::from_raw(uid)),
                    Some(nix::unistd::Gid::from_raw(gid)),
                    nix::unistd::FchownatFlags::AT_EMPTY_PATH,
                )
                .map_err(|errno| HostPathError::Open { path, errno })?;
            }
            Ok(object)
        };
        let (upper, work) = (sub("upper")?, sub("work")?);
        Ok(Self { upper, work })
    }

    /// `upperdir=...,workdir=...` for overlay's options, naming the descriptors.
    pub fn overlay_options(&self) -> String {
        format!(
            "upperdir=/proc/self/fd/{},workdir=/proc/self/fd/{}",
            self.upper.fd.as_raw_fd(),
            self.work.fd.as_raw_fd()
        )
    }
}

/// Moves the calling thread into a mount namespace of its own whose mounts do not
/// propagate back to the host (mounts the host makes still reach it), and returns the way
/// back ([`HostNamespace::restore`]). The caller must be privileged. A mount namespace
/// belongs to a thread: only the calling one moves, and a thread running beside it stays
/// in the host's namespace (an embedded run's store opener, which only opens files under
/// `$COVENANT_HOME` and ends before the sandbox is made), so whatever this thread forks
/// starts in the private one.
pub fn enter_private_mount_namespace() -> Result<HostNamespace> {
    use std::os::unix::fs::OpenOptionsExt;
    let fail = |step: &'static str| move |errno: Errno| HostPathError::Namespace { step, errno };
    let errno = |e: std::io::Error| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO));
    let ns = std::fs::File::open("/proc/thread-self/ns/mnt")
        .map_err(|e| fail("open the host's mount namespace")(errno(e)))?;
    let cwd = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(".")
        .map_err(|e| fail("open the working directory")(errno(e)))?;
    let root = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open("/")
        .map_err(|e| fail("open the root directory")(errno(e)))?;
    let host = HostNamespace {
        ns: ns.into(),
        root: root.into(),
        cwd: cwd.into(),
    };
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(fail("unshare(CLONE_NEWNS)"))?;
    if let Err(errno) = mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    ) {
        // Never left in a namespace whose mounts would reach the host's.
        let _ = host.restore();
        return Err(fail("make / a recursive slave")(errno));
    }
    Ok(host)
}

/// The mount namespace a thread left for a private one, and its root and working
/// directories there.
#[derive(Debug)]
pub struct HostNamespace {
    ns: OwnedFd,
    root: OwnedFd,
    cwd: OwnedFd,
}

impl HostNamespace {
    /// Moves the calling thread back into the namespace it left, with the root and the
    /// working directory it had (setns puts it at the namespace's own root: a supervisor
    /// started in a chroot stays in it). The private namespace, and every mount made in
    /// it, goes once no process is left in it.
    pub fn restore(self) -> Result<()> {
        let fail =
            |step: &'static str| move |errno: Errno| HostPathError::Namespace { step, errno };
        nix::sched::setns(&self.ns, nix::sched::CloneFlags::CLONE_NEWNS)
            .map_err(fail("setns back to the host's mount namespace"))?;
        nix::unistd::fchdir(self.root.as_raw_fd()).map_err(fail("return to the root"))?;
        nix::unistd::chroot(".").map_err(fail("return to the root"))?;
        nix::unistd::fchdir(self.cwd.as_raw_fd()).map_err(fail("return to the working directory"))
    }
}

/// The bound of a [`mount_private_folder`]: a run's bundle (its config.json, plan and
/// generated files) and its staging places (empty mount points) take a few hundred KiB.
pub const PRIVATE_FOLDER_OPTIONS: &str = "mode=0711,size=16m,nr_inodes=16384";

/// Mounts an empty tmpfs on `at` in the caller's private mount namespace (see
/// [`enter_private_mount_namespace`]): what the run writes there exists in memory, is seen
/// only by this namespace's processes, and goes with them, however the run ends. Nothing
/// on the host's file system is created for it, and a sandbox that fills it fills only
/// its own run's folder.
pub fn mount_private_folder(at: &Path) -> Result<()> {
    mount(
        Some("tmpfs"),
        at,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(PRIVATE_FOLDER_OPTIONS),
    )
    .map_err(|errno| HostPathError::PrivateFolder {
        at: at.to_path_buf(),
        errno,
    })
}

/// Objects attached under a private directory, to be detached before it is removed.
#[derive(Debug, Default)]
pub struct Staging {
    points: Vec<PathBuf>,
}

impl Staging {
    /// Clones `object` (with its submounts) and attaches it at `at`, which is created
    /// (a directory or an empty file, as the object is) and must not exist yet.
    pub fn attach(&mut self, object: &HostObject, at: &Path) -> Result<()> {
        let fail = |step: &'static str| {
            let (path, at) = (object.path.clone(), at.to_path_buf());
            move |errno: Errno| HostPathError::Stage {
                path,
                at,
                step,
                errno,
            }
        };
        let created = match object.kind {
            ObjectKind::Dir => nix::unistd::mkdir(at, Mode::from_bits_truncate(0o711)),
            _ => nix::fcntl::open(
                at,
                OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o600),
            )
            .map(|fd| {
                // SAFETY: open just returned this descriptor; dropping it closes it.
                drop(unsafe { OwnedFd::from_raw_fd(fd) });
            }),
        };
        created.map_err(fail("create the mount point"))?;
        let tree = clone_fd_tree(&object.fd, true).map_err(fail("open_tree"))?;
        let target = CString::new(at.as_os_str().as_bytes()).map_err(|_| HostPathError::Stage {
            path: object.path.clone(),
            at: at.to_path_buf(),
            step: "the path holds a NUL byte",
            errno: Errno::EINVAL,
        })?;
        move_tree(&tree, &target).map_err(fail("move_mount"))?;
        self.points.push(at.to_path_buf());
        Ok(())
    }

    /// Detaches every attached object, last first. Stops at the first failure, which
    /// leaves the rest attached: the caller must then not remove the directory.
    pub fn detach_all(&mut self) -> Result<()> {
        while let Some(at) = self.points.last() {
            umount2(at, MntFlags::MNT_DETACH).map_err(|errno| HostPathError::Stage {
                path: at.clone(),
                at: at.clone(),
                step: "umount",
                errno,
            })?;
            self.points.pop();
        }
        Ok(())
    }

    /// Whether nothing is attached.
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = self.detach_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlink_anywhere_on_the_way_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir_all(real.join("sub")).unwrap();
        std::os::unix::fs::symlink(&real, dir.path().join("link")).unwrap();
        assert!(open(&real.join("sub")).is_ok());
        for path in [dir.path().join("link"), dir.path().join("link/sub")] {
            assert!(
                matches!(open(&path), Err(HostPathError::Symlink { .. })),
                "{} was followed",
                path.display()
            );
        }
        assert!(matches!(
            open(&dir.path().join("missing")),
            Err(HostPathError::Missing { .. })
        ));
    }

    #[test]
    fn a_replaced_path_is_told_apart_from_the_object_checked() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().join("ws");
        std::fs::create_dir(&ws).unwrap();
        let checked = open(&ws).unwrap().id;
        std::fs::rename(&ws, dir.path().join("old")).unwrap();
        std::fs::create_dir(&ws).unwrap();
        let now = open(&ws).unwrap();
        assert!(matches!(
            now.expect(checked),
            Err(HostPathError::Replaced { .. })
        ));
        assert!(now.expect(now.id).is_ok());
    }

    #[test]
    fn beneath_never_leaves_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("a")).unwrap();
        std::os::unix::fs::symlink("/etc", dir.path().join("a/etc")).unwrap();
        let a = open(&dir.path().join("a")).unwrap();
        assert!(open_beneath(&a, Path::new("../"), dir.path()).is_err());
        assert!(open_beneath(&a, Path::new("etc/passwd"), dir.path()).is_err());
        assert!(open_beneath(&a, Path::new("/etc"), dir.path()).is_err());
    }

    #[test]
    fn a_new_file_replaces_a_planted_link_instead_of_writing_through_it() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let report = dir.path().join("report.json");
        std::os::unix::fs::symlink(&victim, &report).unwrap();
        write_new_file(&report, b"{}", 0o600).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert_eq!(std::fs::read_to_string(&report).unwrap(), "{}");
        assert!(!std::fs::symlink_metadata(&report).unwrap().is_symlink());
        let hard = dir.path().join("hard.json");
        std::fs::hard_link(&victim, &hard).unwrap();
        write_new_file(&hard, b"{}", 0o600).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        std::os::unix::fs::symlink(dir.path(), dir.path().join("up")).unwrap();
        assert!(matches!(
            write_new_file(&dir.path().join("up/x.json"), b"{}", 0o600),
            Err(HostPathError::Symlink { .. })
        ));
        assert!(!dir.path().join("x.json").exists());
    }

    #[test]
    fn a_kept_layer_planted_with_symlinks_is_refused_and_nothing_is_chowned() {
        let dir = tempfile::tempdir().unwrap();
        let keep = dir.path().join("keep");
        let victim = dir.path().join("etc");
        std::fs::create_dir_all(&keep).unwrap();
        std::fs::create_dir_all(&victim).unwrap();
        std::os::unix::fs::symlink(&victim, keep.join("upper")).unwrap();
        let before = std::fs::metadata(&victim).unwrap();
        let err = KeptLayer::open(&keep, Some((4242, 4242))).unwrap_err();
        assert!(matches!(err, HostPathError::Symlink { .. }), "{err}");
        let after = std::fs::metadata(&victim).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!((before.uid(), before.gid()), (after.uid(), after.gid()));
        std::fs::remove_file(keep.join("upper")).unwrap();
        let layer = KeptLayer::open(&keep, None).unwrap();
        assert!(layer
            .overlay_options()
            .starts_with("upperdir=/proc/self/fd/"));
        assert!(keep.join("upper").is_dir() && keep.join("work").is_dir());
    }

    #[test]
    fn create_dir_refuses_a_symlinked_parent() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("real")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("real"), dir.path().join("link")).unwrap();
        assert!(matches!(
            create_dir(&dir.path().join("link/keep")),
            Err(HostPathError::Symlink { .. })
        ));
        assert!(!dir.path().join("real/keep").exists());
        create_dir(&dir.path().join("real/keep")).unwrap();
        assert!(dir.path().join("real/keep").is_dir());
    }
}
