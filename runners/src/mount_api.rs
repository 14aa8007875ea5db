//! The kernel's new mount API (Linux 5.12 for `mount_setattr`): detached mount trees
//! cloned from a path or from a descriptor (`open_tree`), their attributes and idmaps set
//! on the tree (`mount_setattr`), and the tree attached somewhere (`move_mount`). nix has
//! no wrappers for these; each raw call is here, once.

use nix::errno::Errno;
use std::ffi::CStr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const OPEN_TREE_CLONE: libc::c_uint = 1;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
pub(crate) const ATTR_RDONLY: u64 = 0x1;
pub(crate) const ATTR_NOSUID: u64 = 0x2;
pub(crate) const ATTR_NODEV: u64 = 0x4;
pub(crate) const ATTR_NOEXEC: u64 = 0x8;
const ATTR_IDMAP: u64 = 0x10_0000;

/// `struct mount_attr` of `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Clones what `path` names (relative to `dir`, or the working directory) into a detached
/// tree, with its submounts when `recursive`. An empty `path` with a `dir` clones the
/// object `dir` refers to.
pub fn open_tree(dir: Option<&OwnedFd>, path: &CStr, recursive: bool) -> Result<OwnedFd, Errno> {
    let dirfd = dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    let flags = OPEN_TREE_CLONE
        | libc::O_CLOEXEC as libc::c_uint
        | if path.is_empty() {
            libc::AT_EMPTY_PATH as libc::c_uint
        } else {
            0
        }
        | if recursive { AT_RECURSIVE } else { 0 };
    // SAFETY: open_tree reads a NUL-terminated path relative to a valid descriptor (or
    // AT_FDCWD) and returns a new descriptor or -1.
    let tree = unsafe { libc::syscall(libc::SYS_open_tree, dirfd, path.as_ptr(), flags) };
    if tree < 0 {
        return Err(Errno::last());
    }
    // SAFETY: tree was just returned by open_tree and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(tree as RawFd) })
}

/// Clones the object `fd` refers to (a descriptor from `openat2`, `O_PATH` will do) into a
/// detached mount tree, with its submounts when `recursive`: the tree is that object,
/// whatever its path names by now.
pub fn clone_fd_tree(fd: &OwnedFd, recursive: bool) -> Result<OwnedFd, Errno> {
    open_tree(Some(fd), c"", recursive)
}

/// Sets the `ATTR_*` bits in `set` on a detached tree (and its submounts when
/// `recursive`), makes it private, and idmaps it through the user namespace `idmap`.
pub fn set_attributes(
    tree: &OwnedFd,
    set: u64,
    idmap: Option<&OwnedFd>,
    recursive: bool,
) -> Result<(), Errno> {
    let mut attr = MountAttr {
        attr_set: set,
        attr_clr: 0,
        propagation: libc::MS_PRIVATE,
        userns_fd: 0,
    };
    if let Some(ns) = idmap {
        attr.attr_set |= ATTR_IDMAP;
        attr.userns_fd = ns.as_raw_fd() as u64;
    }
    let at_flags = libc::AT_EMPTY_PATH as libc::c_uint | if recursive { AT_RECURSIVE } else { 0 };
    // SAFETY: attr is a valid mount_attr of the size passed; the path is an empty C string.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            at_flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// Makes the mount at `path` and every mount below it read-only, leaving every other
/// attribute and the propagation as they are.
pub fn make_read_only_recursive(path: &CStr) -> Result<(), Errno> {
    let attr = MountAttr {
        attr_set: ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: attr is a valid mount_attr of the size passed; path is a C string.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// Attaches a detached tree onto the object `target` refers to (an `O_PATH` descriptor of
/// the mount point, so no path is resolved again).
pub fn move_tree_onto(tree: &OwnedFd, target: &OwnedFd) -> Result<(), Errno> {
    const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;
    // SAFETY: both descriptors are valid and owned by the caller; the paths are empty C
    // strings.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            target.as_raw_fd(),
            c"".as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    if rc < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// Attaches a detached tree at the C path `target`.
pub fn move_tree(tree: &OwnedFd, target: &CStr) -> Result<(), Errno> {
    // SAFETY: both paths are valid C strings; the tree fd is a detached mount.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if rc < 0 {
        return Err(Errno::last());
    }
    Ok(())
}
