//! User namespaces that exist only to lend their mapping to an idmapped mount: a child
//! is cloned into a new user namespace, the parent writes one uid and one gid line, keeps a
//! descriptor of the namespace, and lets the child go.

use nix::sys::wait::waitpid;
use nix::unistd::Pid;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};

#[derive(Debug, thiserror::Error)]
#[error("idmap user namespace ({what}): {error}")]
pub struct IdmapError {
    what: &'static str,
    error: std::io::Error,
}

fn err(what: &'static str) -> impl FnOnce(std::io::Error) -> IdmapError {
    move |error| IdmapError { what, error }
}

/// A user namespace mapping `on_disk_uid` to host `kuid` (and likewise for gids).
pub fn idmap_userns(
    on_disk_uid: u32,
    kuid: u32,
    on_disk_gid: u32,
    kgid: u32,
) -> Result<OwnedFd, IdmapError> {
    idmap_userns_range(on_disk_uid, kuid, on_disk_gid, kgid, 1)
}

/// A user namespace mapping `count` ids from `on_disk_uid` to host ids from `kuid` (and
/// likewise for gids).
pub fn idmap_userns_range(
    on_disk_uid: u32,
    kuid: u32,
    on_disk_gid: u32,
    kgid: u32,
    count: u32,
) -> Result<OwnedFd, IdmapError> {
    idmap_userns_lines(&[(on_disk_uid, kuid, count)], &[(on_disk_gid, kgid, count)])
}

/// A user namespace whose uid and gid maps are the given `(on-disk id, host id, count)`
/// lines, as an OCI mount's `uidMappings` (`containerID`, `hostID`, `size`) state them.
pub fn idmap_userns_lines(
    uid: &[(u32, u32, u32)],
    gid: &[(u32, u32, u32)],
) -> Result<OwnedFd, IdmapError> {
    let map = |lines: &[(u32, u32, u32)]| -> String {
        lines
            .iter()
            .map(|(inside, host, count)| format!("{inside} {host} {count}\n"))
            .collect()
    };
    let (uid_map, gid_map) = (map(uid), map(gid));
    let (rd, wr) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| err("pipe")(e.into()))?;
    // SAFETY: a fork-like clone of a single-threaded caller; the child only blocks on read
    // and calls _exit (async-signal-safe).
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_NEWUSER | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid < 0 {
        return Err(err("clone")(std::io::Error::last_os_error()));
    }
    if pid == 0 {
        drop(wr);
        // Blocks until the parent closes its end (a plain read into a stack buffer).
        let _ = nix::unistd::read(rd.as_raw_fd(), &mut [0u8; 1]);
        // SAFETY: _exit ends the child at once, running none of the parent's destructors.
        unsafe { libc::_exit(0) }
    }
    drop(rd);
    let pid = Pid::from_raw(pid as i32);
    let result = (|| {
        File::create(format!("/proc/{pid}/uid_map"))
            .and_then(|mut f| f.write_all(uid_map.as_bytes()))
            .map_err(err("uid_map"))?;
        File::create(format!("/proc/{pid}/gid_map"))
            .and_then(|mut f| f.write_all(gid_map.as_bytes()))
            .map_err(err("gid_map"))?;
        File::open(format!("/proc/{pid}/ns/user"))
            .map(OwnedFd::from)
            .map_err(err("open ns"))
    })();
    drop(wr);
    let _ = waitpid(pid, None);
    result
}
