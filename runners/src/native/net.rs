//! The loopback interface of a fresh network namespace starts down; `net:loopback` brings
//! it up, `net:none` leaves it down so not even local TCP works.

use super::step::{ChildError, SetupStep};
use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
use std::os::fd::AsRawFd;

nix::ioctl_read_bad!(get_interface_flags, libc::SIOCGIFFLAGS, libc::ifreq);
nix::ioctl_write_ptr_bad!(set_interface_flags, libc::SIOCSIFFLAGS, libc::ifreq);

pub fn bring_up_loopback() -> Result<(), ChildError> {
    let fail = |what: &str, e: nix::errno::Errno| {
        ChildError::new(
            SetupStep::BringUpLoopback,
            format!("{what}: {}", std::io::Error::from(e)),
        )
    };
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| fail("socket", e))?;
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS fills the flags of the ifreq passed, which outlives the call.
    unsafe { get_interface_flags(sock.as_raw_fd(), &mut req) }
        .map_err(|e| fail("SIOCGIFFLAGS", e))?;
    // SAFETY: SIOCGIFFLAGS just set the union's flags member, so that is the one read.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads the ifreq passed, which outlives the call.
    unsafe { set_interface_flags(sock.as_raw_fd(), &req) }.map_err(|e| fail("SIOCSIFFLAGS", e))?;
    Ok(())
}
