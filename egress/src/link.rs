//! The sandbox's side of the link: the TUN device (`IFF_TUN | IFF_NO_PI | IFF_VNET_HDR`) the gateway reads, created and addressed
//! in the calling thread's network namespace (the caller enters the sandbox's namespace
//! first, on a thread of its own). The namespace gets `lo` up, the device with
//! [`SANDBOX_ADDR`], a default route via [`GATEWAY_ADDR`] and nothing else: no IPv6 route,
//! so IPv6 has no way out (an IPv6 packet on the link itself reaches the gateway, which
//! drops it), and the device disappears with the gateway's descriptor.

use covenant_policy::egress::{GATEWAY_ADDR, LINK_PREFIX, SANDBOX_ADDR};
use std::ffi::CStr;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The link's MTU: the link never leaves this machine, so its packets may be as large as
/// IPv4 allows; fewer, larger packets are what makes bulk transfers fast.
pub const LINK_MTU: usize = 65535;

/// Every packet on the device carries a `virtio_net_hdr` of this many bytes first: it lets
/// the gateway tell the sandbox's kernel that a TCP checksum need not be verified (the
/// packet never leaves the namespace), which spares both sides a pass over every byte.
pub const VNET_HDR_LEN: usize = 10;

/// The device's name inside the sandbox.
pub const DEVICE: &CStr = c"egress0";
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

fn check(what: &'static str, rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(())
}

fn ifreq(name: &CStr) -> libc::ifreq {
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.to_bytes_with_nul()) {
        *dst = *src as libc::c_char;
    }
    req
}

fn sockaddr(ip: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size; the kernel reads it by family.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn set_up(sock: &OwnedFd, name: &CStr) -> io::Result<()> {
    let mut req = ifreq(name);
    // SAFETY: SIOCGIFFLAGS writes the flags into the ifreq passed.
    let got = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) };
    check("SIOCGIFFLAGS", got)?;
    // SAFETY: SIOCGIFFLAGS filled the union's flags member, the one read here.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads the ifreq passed.
    let set = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) };
    check("SIOCSIFFLAGS", set)
}

/// Creates the device in the current thread's network namespace and returns its
/// descriptor (close-on-exec), with the namespace's addresses and route set.
pub fn create_link() -> io::Result<OwnedFd> {
    // SAFETY: open of a NUL-terminated literal path.
    let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    check("open /dev/net/tun", fd)?;
    // SAFETY: fd is a fresh descriptor owned here.
    let tun = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut req = ifreq(DEVICE);
    req.ifr_ifru.ifru_flags =
        (libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
    // SAFETY: TUNSETIFF reads the ifreq passed.
    check("TUNSETIFF", unsafe {
        libc::ioctl(tun.as_raw_fd(), TUNSETIFF, &req)
    })?;

    // SAFETY: socket returns a new descriptor or -1.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    check("socket", s)?;
    // SAFETY: s is a fresh descriptor owned here.
    let sock = unsafe { OwnedFd::from_raw_fd(s) };
    let mask = Ipv4Addr::from(u32::MAX << (32 - LINK_PREFIX as u32));
    for (what, op, ip) in [
        ("SIOCSIFADDR", libc::SIOCSIFADDR, SANDBOX_ADDR),
        ("SIOCSIFNETMASK", libc::SIOCSIFNETMASK, mask),
    ] {
        let mut req = ifreq(DEVICE);
        req.ifr_ifru.ifru_addr = sockaddr(ip);
        // SAFETY: the ioctl reads the ifreq passed.
        check(what, unsafe { libc::ioctl(sock.as_raw_fd(), op, &req) })?;
    }
    let mut req = ifreq(DEVICE);
    req.ifr_ifru.ifru_mtu = LINK_MTU as libc::c_int;
    // SAFETY: SIOCSIFMTU reads the ifreq passed.
    check("SIOCSIFMTU", unsafe {
        libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFMTU, &req)
    })?;
    set_up(&sock, DEVICE)?;
    set_up(&sock, c"lo")?;

    // SAFETY: rtentry is plain data; zeroed is a valid value.
    let mut route: libc::rtentry = unsafe { std::mem::zeroed() };
    route.rt_dst = sockaddr(Ipv4Addr::UNSPECIFIED);
    route.rt_genmask = sockaddr(Ipv4Addr::UNSPECIFIED);
    route.rt_gateway = sockaddr(GATEWAY_ADDR);
    route.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
    route.rt_dev = DEVICE.as_ptr().cast_mut();
    // SAFETY: SIOCADDRT reads the rtentry and the device name it points at, both alive.
    check("SIOCADDRT default route", unsafe {
        libc::ioctl(sock.as_raw_fd(), libc::SIOCADDRT, &route)
    })?;
    Ok(tun)
}
