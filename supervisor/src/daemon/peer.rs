//! Who is on the other end of the operator socket: the peer's groups, and whether it is
//! an admin.

use super::config::Config;

/// The supplementary groups the peer held when it connected (`SO_PEERGROUPS`, Linux
/// 4.13). Empty when the kernel cannot say: the caller is then judged by its uid and
/// primary gid alone.
pub(super) fn peer_groups(stream: &tokio::net::UnixStream) -> Vec<u32> {
    #[cfg(any(
        target_arch = "x86_64",
        target_arch = "x86",
        target_arch = "aarch64",
        target_arch = "arm",
        target_arch = "riscv64",
        target_arch = "s390x",
        target_arch = "powerpc64",
        target_arch = "loongarch64"
    ))]
    {
        // The asm-generic value; the libc crate does not name it.
        const SO_PEERGROUPS: libc::c_int = 59;
        let fd = std::os::fd::AsRawFd::as_raw_fd(stream);
        let mut groups = vec![0u32; 64];
        for _ in 0..2 {
            let mut len = (groups.len() * 4) as libc::socklen_t;
            // SAFETY: getsockopt writes at most `len` bytes into the buffer and sets `len`.
            let r = unsafe {
                libc::getsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    SO_PEERGROUPS,
                    groups.as_mut_ptr().cast(),
                    &mut len,
                )
            };
            if r == 0 {
                groups.truncate(len as usize / 4);
                return groups;
            }
            if std::io::Error::last_os_error().raw_os_error() != Some(libc::ERANGE) {
                break;
            }
            groups.resize(len as usize / 4 + 1, 0);
        }
    }
    let _ = stream;
    Vec::new()
}

/// Root is always an admin; so is a peer whose primary or supplementary groups include
/// the configured admin group.
pub(super) fn is_admin(
    config: &Config,
    stream: &tokio::net::UnixStream,
    uid: u32,
    gid: u32,
) -> bool {
    uid == 0
        || config
            .admin_group
            .is_some_and(|admins| gid == admins || peer_groups(stream).contains(&admins))
}
