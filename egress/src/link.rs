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

/// The sandbox's side of the kernel path: its own network namespace's loopback made to
/// take every IPv4 destination ([`create_kernel_link`]), and the gateway's sockets in it.
/// Made by a thread that entered the namespace; the sockets keep the namespace they were
/// made in, whatever thread later uses them.
pub struct KernelLink {
    /// The gateway's one TCP listener, on an address and port of its own: every TCP
    /// connection the sandbox opens to an address outside 127/8, on any port, is handed to
    /// it ([`crate::steer`]), and `getsockname` on the accepted socket names the
    /// destination dialled.
    pub listener: std::net::TcpListener,
    /// The program that hands those connections over; dropping it detaches it.
    pub steering: crate::steer::Steering,
    /// The resolver the sandbox's `resolv.conf` names: UDP on [`GATEWAY_ADDR`]:53.
    pub dns: std::net::UdpSocket,
    /// UDP to port 53 of any other address: counted and dropped.
    pub other_resolvers: std::net::UdpSocket,
    /// UDP to port 443 of any address (QUIC): counted and dropped, so clients fall back to
    /// TCP.
    pub quic: std::net::UdpSocket,
    /// A raw ICMP socket that sees (and only sees: it is not on the data path) echo
    /// requests no one answers, and the namespace's own "port unreachable" for UDP nothing
    /// was bound to. It lets the gateway count those sent outside 127/8.
    pub observer: OwnedFd,
}

/// Makes the calling thread's network namespace a closed room whose only door is the
/// gateway, with no device but `lo`:
/// - `lo` up, and a `local` route for `0.0.0.0/0` in the `local` table: every IPv4
///   destination is this namespace's own, so nothing is ever routed anywhere else (there
///   is nowhere else);
/// - a TCP connection to an address outside 127/8 goes to the gateway's listener
///   ([`crate::steer`]); one to 127/8 stays the namespace's own;
/// - ICMP echo ignored, so a ping to any address is not answered by the namespace itself;
/// - no IPv6 address or route but `::1`: IPv6 to anywhere else is unreachable;
/// - the gateway's other sockets ([`KernelLink`]).
pub fn create_kernel_link() -> io::Result<KernelLink> {
    // SAFETY: socket returns a new descriptor or -1.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    check("socket", s)?;
    // SAFETY: s is a fresh descriptor owned here.
    let sock = unsafe { OwnedFd::from_raw_fd(s) };
    set_up(&sock, c"lo")?;
    add_route_to_everywhere()?;
    std::fs::write("/proc/sys/net/ipv4/icmp_echo_ignore_all", b"1")
        .map_err(|e| io::Error::new(e.kind(), format!("icmp_echo_ignore_all: {e}")))?;
    let listener = std::net::TcpListener::bind((GATEWAY_ADDR, 0))
        .map_err(|e| io::Error::new(e.kind(), format!("the gateway's listener: {e}")))?;
    // A storm of connections waits in the backlog, not refused (the kernel caps it at
    // the namespace's somaxconn).
    // SAFETY: listen on a descriptor owned by `listener`.
    check("listen", unsafe {
        libc::listen(listener.as_raw_fd(), 4096)
    })?;
    listener.set_nonblocking(true)?;
    let netns = std::fs::File::open("/proc/thread-self/ns/net")?;
    let steering = crate::steer::steer_tcp(&listener, &netns)?;
    // The resolver's exact address wins over the wildcard for its own datagrams; both
    // binds need SO_REUSEADDR to share the port.
    Ok(KernelLink {
        listener,
        steering,
        dns: udp_socket(GATEWAY_ADDR, 53)?,
        other_resolvers: udp_socket(Ipv4Addr::UNSPECIFIED, 53)?,
        quic: udp_socket(Ipv4Addr::UNSPECIFIED, 443)?,
        observer: observer()?,
    })
}

/// The socket of [`KernelLink::observer`]: a raw ICMP socket, which is handed a copy of
/// every ICMP packet the namespace receives (its own errors included: they arrive on
/// `lo`), filtered in the kernel (`ICMP_FILTER`) to echo requests and "destination
/// unreachable". A raw socket, not a packet socket: opening, binding and closing a packet
/// socket each wait for an RCU grace period, some 5 to 20 ms of every run.
fn observer() -> io::Result<OwnedFd> {
    // SAFETY: socket returns a new descriptor or -1.
    let s = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            libc::IPPROTO_ICMP,
        )
    };
    check("raw ICMP socket", s)?;
    // SAFETY: s is a fresh descriptor owned here.
    let sock = unsafe { OwnedFd::from_raw_fd(s) };
    // The types to block: all but 3 (destination unreachable) and 8 (echo request).
    const ICMP_FILTER: libc::c_int = 1;
    let blocked: u32 = !((1 << 3) | (1 << 8));
    // SAFETY: ICMP_FILTER reads one u32 from a live local.
    check("ICMP_FILTER", unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_RAW,
            ICMP_FILTER,
            (&blocked as *const u32).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    })?;
    Ok(sock)
}

fn udp_socket(ip: Ipv4Addr, port: u16) -> io::Result<std::net::UdpSocket> {
    use nix::sys::socket::{bind, setsockopt, socket, sockopt, AddressFamily, SockFlag};
    use nix::sys::socket::{SockType, SockaddrIn};
    let named = |e: nix::errno::Errno| io::Error::other(format!("udp {ip}:{port}: {e}"));
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(named)?;
    setsockopt(&sock, sockopt::ReuseAddr, &true).map_err(named)?;
    // The destination of each datagram, to tell the sandbox's own loopback apart.
    setsockopt(&sock, sockopt::Ipv4PacketInfo, &true).map_err(named)?;
    bind(
        sock.as_raw_fd(),
        &SockaddrIn::from(std::net::SocketAddrV4::new(ip, port)),
    )
    .map_err(named)?;
    Ok(std::net::UdpSocket::from(sock))
}

/// `ip route add local 0.0.0.0/0 dev lo table local`, by one rtnetlink request. (The
/// routing ioctl cannot make a `local` route; one fixed message does not call for a
/// netlink library.) The route must be in the `local` table: the kernel takes an address
/// as a connection's own source only if that table names it.
fn add_route_to_everywhere() -> io::Result<()> {
    const NLMSG_ERROR: u16 = 2;
    // SAFETY: socket returns a new descriptor or -1.
    let s = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    check("netlink socket", s)?;
    // SAFETY: s is a fresh descriptor owned here.
    let nl = unsafe { OwnedFd::from_raw_fd(s) };
    // SAFETY: a NUL-terminated literal name.
    let lo = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
    if lo == 0 {
        return Err(io::Error::new(io::ErrorKind::NotFound, "no device lo"));
    }
    let flags =
        (libc::NLM_F_REQUEST | libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_EXCL) as u16;
    let mut msg = Vec::with_capacity(36);
    msg.extend_from_slice(&36u32.to_ne_bytes()); // nlmsg_len
    msg.extend_from_slice(&libc::RTM_NEWROUTE.to_ne_bytes());
    msg.extend_from_slice(&flags.to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // seq
    msg.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel
                                                // struct rtmsg: family, dst_len (0: the default route), src_len, tos, table, protocol,
                                                // scope, type, flags.
    msg.extend_from_slice(&[
        libc::AF_INET as u8,
        0,
        0,
        0,
        libc::RT_TABLE_LOCAL,
        libc::RTPROT_STATIC,
        libc::RT_SCOPE_HOST,
        libc::RTN_LOCAL,
    ]);
    msg.extend_from_slice(&0u32.to_ne_bytes());
    // RTA_OIF: lo.
    msg.extend_from_slice(&8u16.to_ne_bytes());
    msg.extend_from_slice(&(libc::RTA_OIF).to_ne_bytes());
    msg.extend_from_slice(&lo.to_ne_bytes());
    debug_assert_eq!(msg.len(), 36);
    // SAFETY: send reads `msg.len()` bytes from a live buffer.
    let sent = unsafe { libc::send(nl.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
    check("netlink send", sent as libc::c_int)?;
    let mut reply = [0u8; 256];
    // SAFETY: recv writes at most `reply.len()` bytes into a live buffer.
    let n = unsafe { libc::recv(nl.as_raw_fd(), reply.as_mut_ptr().cast(), reply.len(), 0) };
    check("netlink recv", n as libc::c_int)?;
    let n = n as usize;
    // nlmsghdr (16 bytes), then struct nlmsgerr's error (an int; 0 is the ack).
    if n < 20 || u16::from_ne_bytes([reply[4], reply[5]]) != NLMSG_ERROR {
        return Err(io::Error::other("route to everywhere: no acknowledgement"));
    }
    let errno = i32::from_ne_bytes([reply[16], reply[17], reply[18], reply[19]]);
    if errno != 0 {
        let e = io::Error::from_raw_os_error(-errno);
        return Err(io::Error::new(
            e.kind(),
            format!("route to everywhere: {e}"),
        ));
    }
    Ok(())
}
