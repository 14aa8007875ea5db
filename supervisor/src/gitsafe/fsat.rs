//! Descriptor-relative file operations for the git guard. Every name is opened relative to
//! a directory descriptor with `O_NOFOLLOW`, and every multi-component path with `openat2`
//! refusing symlinks, so a symlink planted in a workspace is never followed.

use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::{openat, openat2, readlinkat, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{self, Mode};
use nix::unistd::{fchown, unlinkat, Gid, Uid, UnlinkatFlags};
use std::ffi::{OsStr, OsString};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// What a directory entry is, without following it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Kind {
    Dir,
    File,
    Symlink,
    Other,
}

impl Kind {
    pub(super) fn of_mode(mode: libc::mode_t) -> Self {
        match mode & libc::S_IFMT {
            libc::S_IFDIR => Kind::Dir,
            libc::S_IFREG => Kind::File,
            libc::S_IFLNK => Kind::Symlink,
            _ => Kind::Other,
        }
    }
}

/// A directory's entries (without `.` and `..`), in the order the kernel gave them.
pub(super) type Listing = Vec<(OsString, Kind)>;

pub(super) fn has(names: &Listing, name: &str) -> Option<Kind> {
    names
        .iter()
        .find(|(n, _)| n.as_bytes() == name.as_bytes())
        .map(|(_, k)| *k)
}

/// Takes ownership of a descriptor a successful open just returned.
fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: the kernel just returned this descriptor and nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Opens one name under `parent`, never following a symlink in its place.
pub(super) fn open_child(
    parent: BorrowedFd<'_>,
    name: &OsStr,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> io::Result<OwnedFd> {
    if name.as_bytes().contains(&b'/') {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    let flags = OFlag::from_bits_retain(flags) | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = openat(
        Some(parent.as_raw_fd()),
        name,
        flags,
        Mode::from_bits_truncate(mode),
    )?;
    Ok(owned(fd))
}

/// Opens `rel` (relative, possibly several components) with `openat2`. `beneath` keeps the
/// walk inside `dir`; symlinks and magic links are refused either way (ELOOP/EXDEV).
pub(super) fn open_resolved(
    dir: BorrowedFd<'_>,
    rel: &Path,
    flags: libc::c_int,
    beneath: bool,
) -> io::Result<OwnedFd> {
    resolve(dir.as_raw_fd(), rel, flags, beneath)
}

fn resolve(dir: RawFd, rel: &Path, flags: libc::c_int, beneath: bool) -> io::Result<OwnedFd> {
    let rel: &Path = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let mut resolve = ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS;
    if beneath {
        resolve |= ResolveFlag::RESOLVE_BENEATH;
    }
    let how = OpenHow::new()
        .flags(OFlag::from_bits_retain(flags) | OFlag::O_CLOEXEC)
        .resolve(resolve);
    Ok(owned(openat2(dir, rel, how)?))
}

/// Opens an absolute host path without following any symlink on the way.
pub(super) fn open_absolute(path: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
    resolve(libc::AT_FDCWD, path, flags, false)
}

pub(super) fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    Ok(stat::fstat(fd.as_raw_fd())?)
}

/// `fstatat` without following a final symlink; `None` when the name does not exist.
pub(super) fn stat_at(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<Option<libc::stat>> {
    match stat::fstatat(Some(parent.as_raw_fd()), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The entries of the directory `fd` (opened for reading). Entries whose type the file
/// system does not report are looked up with `fstatat`, never followed.
pub(super) fn list(fd: BorrowedFd<'_>) -> io::Result<Listing> {
    // The stream owns a duplicate, so closing it leaves `fd` open.
    let mut dir = Dir::from(fd.try_clone_to_owned()?)?;
    let mut out = Vec::new();
    for entry in dir.iter() {
        let entry = entry?;
        let bytes = entry.file_name().to_bytes();
        if bytes == b"." || bytes == b".." {
            continue;
        }
        let name = OsStr::from_bytes(bytes).to_os_string();
        let kind = match entry.file_type() {
            Some(Type::Directory) => Kind::Dir,
            Some(Type::File) => Kind::File,
            Some(Type::Symlink) => Kind::Symlink,
            Some(_) => Kind::Other,
            None => match stat_at(fd, &name)? {
                Some(st) => Kind::of_mode(st.st_mode),
                None => continue,
            },
        };
        out.push((name, kind));
    }
    Ok(out)
}

/// Reads a regular file of at most `cap` bytes. `None` when absent; an error when it is not
/// a regular file (a FIFO is never waited on) or is larger than `cap`.
pub(super) fn read_small(
    parent: BorrowedFd<'_>,
    name: &OsStr,
    cap: u64,
) -> io::Result<Option<Vec<u8>>> {
    let fd = match open_child(parent, name, libc::O_RDONLY | libc::O_NONBLOCK, 0) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        Err(e) => return Err(e),
    };
    let st = fstat(std::os::fd::AsFd::as_fd(&fd))?;
    if Kind::of_mode(st.st_mode) != Kind::File {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let mut bytes = Vec::new();
    std::fs::File::from(fd)
        .take(cap + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > cap {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {cap} bytes"),
        ));
    }
    Ok(Some(bytes))
}

pub(super) fn readlink_at(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<PathBuf> {
    Ok(PathBuf::from(readlinkat(Some(parent.as_raw_fd()), name)?))
}

/// Creates a file that did not exist, with `content`. Mode and owner are set by the caller.
pub(super) fn create_file(
    parent: BorrowedFd<'_>,
    name: &OsStr,
    content: &[u8],
) -> io::Result<OwnedFd> {
    let fd = open_child(
        parent,
        name,
        libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
        0o600,
    )?;
    let mut file = std::fs::File::from(fd);
    if let Err(e) = file.write_all(content) {
        let _ = unlink_at(parent, name, false);
        return Err(e);
    }
    Ok(OwnedFd::from(file))
}

/// Creates a directory that did not exist and opens it. Mode and owner are set by the caller.
pub(super) fn create_dir(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    stat::mkdirat(
        Some(parent.as_raw_fd()),
        name,
        Mode::from_bits_truncate(0o700),
    )?;
    open_child(parent, name, libc::O_RDONLY | libc::O_DIRECTORY, 0).inspect_err(|_| {
        let _ = unlink_at(parent, name, true);
    })
}

pub(super) fn unlink_at(parent: BorrowedFd<'_>, name: &OsStr, dir: bool) -> io::Result<()> {
    let flag = if dir {
        UnlinkatFlags::RemoveDir
    } else {
        UnlinkatFlags::NoRemoveDir
    };
    Ok(unlinkat(Some(parent.as_raw_fd()), name, flag)?)
}

/// Gives `fd` the owner and permission bits asked for (owner first: a chown clears set-id bits).
pub(super) fn set_owner_mode(
    fd: BorrowedFd<'_>,
    uid: libc::uid_t,
    gid: libc::gid_t,
    mode: libc::mode_t,
) -> io::Result<()> {
    let st = fstat(fd)?;
    if st.st_uid != uid || st.st_gid != gid {
        fchown(
            fd.as_raw_fd(),
            Some(Uid::from_raw(uid)),
            Some(Gid::from_raw(gid)),
        )?;
    }
    Ok(stat::fchmod(
        fd.as_raw_fd(),
        Mode::from_bits_truncate(mode),
    )?)
}
