//! Descriptor-relative file operations for the git guard. Every name is opened relative to
//! a directory descriptor with `O_NOFOLLOW`, and every multi-component path with `openat2`
//! refusing symlinks, so a symlink planted in a workspace is never followed.

use std::ffi::{CString, OsStr, OsString};
use std::io::{self, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
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

fn cstring(p: &OsStr) -> io::Result<CString> {
    CString::new(p.as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
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
    let c = cstring(name)?;
    // SAFETY: `c` is NUL-terminated and outlives the call; the flags never include O_PATH
    // tricks that hand out more than a descriptor.
    let fd = check(unsafe {
        libc::openat(
            parent.as_raw_fd(),
            c.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    })?;
    // SAFETY: the kernel just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens `rel` (relative, possibly several components) with `openat2`. `beneath` keeps the
/// walk inside `dir`; symlinks and magic links are refused either way (ELOOP/EXDEV).
pub(super) fn open_resolved(
    dir: BorrowedFd<'_>,
    rel: &Path,
    flags: libc::c_int,
    beneath: bool,
) -> io::Result<OwnedFd> {
    let rel: &Path = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        rel
    };
    let c = cstring(rel.as_os_str())?;
    // SAFETY: open_how is plain data; all-zero is its documented "no options" value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    if beneath {
        how.resolve |= libc::RESOLVE_BENEATH;
    }
    // SAFETY: `c` and `how` outlive the call and the size passed is the size of `how`.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// Opens an absolute host path without following any symlink on the way.
pub(super) fn open_absolute(path: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: AT_FDCWD is a valid "directory" for any call taking a dirfd; the borrowed
    // descriptor is only used for the duration of this call.
    let cwd = unsafe { BorrowedFd::borrow_raw(libc::AT_FDCWD) };
    open_resolved(cwd, path, flags, false)
}

pub(super) fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` is a valid out-pointer for one stat struct.
    check(unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstat succeeded, so it filled `st`.
    Ok(unsafe { st.assume_init() })
}

/// `fstatat` without following a final symlink; `None` when the name does not exist.
pub(super) fn stat_at(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<Option<libc::stat>> {
    let c = cstring(name)?;
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `c` is NUL-terminated and `st` is a valid out-pointer for one stat struct.
    let r = unsafe {
        libc::fstatat(
            parent.as_raw_fd(),
            c.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ENOENT) {
            Ok(None)
        } else {
            Err(e)
        };
    }
    // SAFETY: fstatat succeeded, so it filled `st`.
    Ok(Some(unsafe { st.assume_init() }))
}

/// The entries of the directory `fd` (opened for reading). Entries whose type the file
/// system does not report are looked up with `fstatat`, never followed.
pub(super) fn list(fd: BorrowedFd<'_>) -> io::Result<Listing> {
    let dup = fd.try_clone_to_owned()?;
    // SAFETY: fdopendir takes ownership of the duplicate on success; on failure it is still
    // ours and is closed when `dup` drops.
    let stream = unsafe { libc::fdopendir(dup.as_raw_fd()) };
    if stream.is_null() {
        return Err(io::Error::last_os_error());
    }
    std::mem::forget(dup);
    let mut out = Vec::new();
    let result = loop {
        // SAFETY: errno is thread-local; clearing it tells end-of-directory from an error.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: `stream` is a live DIR* owned by this function.
        let entry = unsafe { libc::readdir64(stream) };
        if entry.is_null() {
            let e = io::Error::last_os_error();
            break if e.raw_os_error() == Some(0) {
                Ok(())
            } else {
                Err(e)
            };
        }
        // SAFETY: readdir64 returned a valid entry whose d_name is NUL-terminated; it stays
        // valid until the next readdir64 on this stream, and is copied before that.
        let (bytes, d_type) = unsafe {
            (
                std::ffi::CStr::from_ptr((*entry).d_name.as_ptr()).to_bytes(),
                (*entry).d_type,
            )
        };
        if bytes == b"." || bytes == b".." {
            continue;
        }
        let name = OsStr::from_bytes(bytes).to_os_string();
        let kind = match d_type {
            libc::DT_DIR => Kind::Dir,
            libc::DT_REG => Kind::File,
            libc::DT_LNK => Kind::Symlink,
            libc::DT_UNKNOWN => match stat_at(fd, &name) {
                Ok(Some(st)) => Kind::of_mode(st.st_mode),
                Ok(None) => continue,
                Err(e) => break Err(e),
            },
            _ => Kind::Other,
        };
        out.push((name, kind));
    };
    // SAFETY: `stream` is live and closed exactly once, which also closes the duplicate.
    unsafe { libc::closedir(stream) };
    result.map(|()| out)
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
    let c = cstring(name)?;
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: `buf` is writable for its full length, which is what we pass.
    let n = unsafe {
        libc::readlinkat(
            parent.as_raw_fd(),
            c.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(PathBuf::from(OsString::from_vec(buf)))
}

use std::os::unix::ffi::OsStringExt;

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
    let c = cstring(name)?;
    // SAFETY: `c` is NUL-terminated and outlives the call.
    check(unsafe { libc::mkdirat(parent.as_raw_fd(), c.as_ptr(), 0o700) })?;
    open_child(parent, name, libc::O_RDONLY | libc::O_DIRECTORY, 0).inspect_err(|_| {
        let _ = unlink_at(parent, name, true);
    })
}

pub(super) fn unlink_at(parent: BorrowedFd<'_>, name: &OsStr, dir: bool) -> io::Result<()> {
    let c = cstring(name)?;
    let flags = if dir { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: `c` is NUL-terminated and outlives the call.
    check(unsafe { libc::unlinkat(parent.as_raw_fd(), c.as_ptr(), flags) })?;
    Ok(())
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
        // SAFETY: plain syscall on a descriptor we own.
        check(unsafe { libc::fchown(fd.as_raw_fd(), uid, gid) })?;
    }
    // SAFETY: plain syscall on a descriptor we own.
    check(unsafe { libc::fchmod(fd.as_raw_fd(), mode) })?;
    Ok(())
}
