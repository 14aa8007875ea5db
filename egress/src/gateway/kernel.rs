//! The kernel path: the sandbox's namespace takes every IPv4 destination as its own
//! ([`crate::link::create_kernel_link`]), so each TCP connection the sandbox opens to a
//! granted port arrives at one of the gateway's listeners there, and `getsockname` on the
//! accepted socket names the destination it dialled. The connection is decided as on the
//! device path (the destination, then the first bytes), and then relayed by the kernel:
//! `splice` through a pipe each way, so no byte is copied through the gateway. A plain HTTP
//! connection to a name is the exception one way: each of its request heads is read and
//! checked before it goes upstream.
//!
//! A connection to a port no rule grants is refused by the namespace's own kernel (nothing
//! listens there); a refused destination on a granted port is accepted, then reset. UDP
//! reaches only the resolver on the gateway's address; datagrams to port 53 of other
//! addresses and to port 443 (QUIC) are counted and dropped, others are answered by the
//! namespace's kernel as unreachable. Nothing is routed out of the namespace: there is no
//! device to route to.

use super::*;
use crate::link::KernelLink;
use mio::net::TcpListener;
use nix::fcntl::{splice, SpliceFFlags};
use std::net::Ipv4Addr;
use std::os::fd::AsFd;

/// Tokens: the resolver socket, the two sinks, the observer, the listener, then two per
/// connection.
const DNS: Token = Token(3);
const OTHER_RESOLVERS: Token = Token(4);
const QUIC: Token = Token(5);
const OBSERVER: Token = Token(6);
const LISTENER: Token = Token(7);
const FIRST_CONN: usize = 16;
/// Reads (or accepts) from one socket in one round before the others get a turn.
const MAX_PER_ROUND: usize = 1024;
/// Moves in and out of one pipe in one round before the other connections get a turn.
const PUMP_ROUNDS: usize = 8;

/// The kernel path's state.
pub(super) struct KernelState {
    core: Core,
    poll: Poll,
    listener: TcpListener,
    /// Held for as long as the gateway serves: dropping it detaches the steering.
    _steering: crate::steer::Steering,
    dns: UdpSocket,
    other_resolvers: UdpSocket,
    quic: UdpSocket,
    observer: OwnedFd,
    conns: HashMap<usize, KConn>,
    /// Connections holding large buffers.
    large_in_use: usize,
    /// Connections open at once: the limit, or fewer where the descriptor limit would be
    /// reached first.
    max_connections: usize,
    next_id: usize,
}

/// The pipe of each direction of the first [`Limits::large_buffers`] connections open at
/// once, and of the rest. Bulk transfers need wide buffers (measured: 64 KiB pipes and
/// socket buffers halve a download's rate); a storm of connections must not multiply
/// them.
const LARGE_PIPE: libc::c_int = 1 << 20;
const SMALL_PIPE: libc::c_int = 16 * 1024;
/// The socket buffers (`SO_SNDBUF`, `SO_RCVBUF`, set on both sockets of a connection, so
/// that the kernel's autotuning cannot grow them) of those connections and of the rest.
/// The kernel doubles what is asked. The gateway's sockets are the supervisor's, outside
/// the sandbox's memory limit: fixed sizes bound what a sandbox can make it hold.
const LARGE_SOCKET_BUFFER: usize = 512 * 1024;
const SMALL_SOCKET_BUFFER: usize = 16 * 1024;
/// Descriptors each connection takes: two sockets and two pipes.
const FDS_PER_CONNECTION: u64 = 6;
/// Descriptors left for everything else of the supervising process.
const RESERVED_FDS: u64 = 256;

/// One direction's pipe: what one socket gave and the other has not yet taken.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    held: usize,
    capacity: usize,
}

impl Pipe {
    fn new(large: bool) -> std::io::Result<Pipe> {
        let (read, write) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)?;
        // The pages are held only while bytes wait.
        let size = if large { LARGE_PIPE } else { SMALL_PIPE };
        let _ = nix::fcntl::fcntl(read.as_raw_fd(), nix::fcntl::F_SETPIPE_SZ(size));
        let capacity = nix::fcntl::fcntl(read.as_raw_fd(), nix::fcntl::F_GETPIPE_SZ)? as usize;
        Ok(Pipe {
            read,
            write,
            held: 0,
            capacity,
        })
    }
}

/// One side of a connection: its socket and what is known of it.
struct Side {
    stream: TcpStream,
    readable: bool,
    writable: bool,
    /// It sent its last byte.
    eof: bool,
    /// Its write side is shut (it was sent the other side's end).
    shut: bool,
}

impl Side {
    fn new(stream: TcpStream) -> Side {
        Side {
            stream,
            readable: true,
            writable: true,
            eof: false,
            shut: false,
        }
    }
}

/// One connection: the sandbox's side, accepted in its namespace, and the upstream side.
struct KConn {
    down: Side,
    up: Option<Side>,
    connected: bool,
    s: Stream,
    to_up: Option<Pipe>,
    to_down: Option<Pipe>,
    /// A pump stopped at its bound in the last step: to be stepped again next round.
    again: bool,
    /// Holds large buffers.
    large: bool,
}

impl KernelState {
    pub(super) fn new(
        core: Core,
        poll: Poll,
        link: KernelLink,
    ) -> Result<KernelState, GatewayError> {
        let registry = poll.registry();
        let mut listener = TcpListener::from_std(link.listener);
        registry
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(io("watch the listener"))?;
        let udp = |s: std::net::UdpSocket, token| {
            s.set_nonblocking(true)?;
            let mut s = UdpSocket::from_std(s);
            registry.register(&mut s, token, Interest::READABLE)?;
            Ok(s)
        };
        let dns = udp(link.dns, DNS).map_err(io("watch the resolver's socket"))?;
        let other_resolvers =
            udp(link.other_resolvers, OTHER_RESOLVERS).map_err(io("watch port 53"))?;
        let quic = udp(link.quic, QUIC).map_err(io("watch port 443/udp"))?;
        registry
            .register(
                &mut SourceFd(&link.observer.as_raw_fd()),
                OBSERVER,
                Interest::READABLE,
            )
            .map_err(io("watch the observer"))?;
        let fds = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map(|(soft, _)| soft)
            .unwrap_or(1024);
        Ok(KernelState {
            max_connections: connection_cap(core.limits.max_connections, fds),
            large_in_use: 0,
            observer: link.observer,
            _steering: link.steering,
            core,
            poll,
            listener,
            dns,
            other_resolvers,
            quic,
            conns: HashMap::new(),
            next_id: 0,
        })
    }

    fn run_loop(&mut self, stop: &AtomicBool) -> std::io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut touched: HashSet<usize> = HashSet::new();
        // Everything is read once at the start: readiness is only reported on a change.
        let mut resolver_ready = true;
        let mut dns_ready = true;
        let mut sinks_ready = true;
        let mut observer_ready = true;
        let mut accept_ready = true;
        loop {
            if stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            // Each source is read to "nothing more" (readiness is edge-triggered) or to its
            // bound for the round; one left at its bound is read again next round.
            if resolver_ready {
                self.core.read_resolver();
                resolver_ready = false;
            }
            if dns_ready {
                dns_ready = self.read_queries();
            }
            if sinks_ready {
                sinks_ready = self.drain_sinks();
            }
            if observer_ready {
                observer_ready = self.observe();
            }
            if !self.core.pending.is_empty() {
                self.core.expire_queries();
            }
            self.send_answers();
            if accept_ready {
                accept_ready = self.accept(&mut touched);
            }
            // Undecided connections are looked at on every round: their deadlines.
            touched.extend(
                self.conns
                    .iter()
                    .filter(|(_, c)| c.s.verdict.is_none())
                    .map(|(id, _)| *id),
            );
            for id in touched.drain() {
                self.service(id);
            }
            // Connections whose pumps stopped at their bound go on next round, at once.
            touched.extend(
                self.conns
                    .iter()
                    .filter(|(_, c)| c.again)
                    .map(|(id, _)| *id),
            );
            let timeout = if dns_ready
                || sinks_ready
                || observer_ready
                || accept_ready
                || !touched.is_empty()
            {
                Duration::ZERO
            } else if self.core.pending.is_empty()
                && self.conns.values().all(|c| c.s.verdict.is_some())
            {
                Duration::from_secs(1)
            } else {
                Duration::from_millis(100)
            };
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            for event in events.iter() {
                let Token(t) = event.token();
                match event.token() {
                    RESOLVER => resolver_ready = true,
                    DNS => dns_ready = true,
                    OTHER_RESOLVERS | QUIC => sinks_ready = true,
                    OBSERVER => observer_ready = true,
                    LISTENER => accept_ready = true,
                    WAKE => {}
                    _ if t >= FIRST_CONN => {
                        let id = (t - FIRST_CONN) / 2;
                        let Some(conn) = self.conns.get_mut(&id) else {
                            continue;
                        };
                        let side = if (t - FIRST_CONN).is_multiple_of(2) {
                            Some(&mut conn.down)
                        } else {
                            conn.up.as_mut()
                        };
                        if let Some(side) = side {
                            if event.is_readable() || event.is_read_closed() || event.is_error() {
                                side.readable = true;
                            }
                            if event.is_writable() || event.is_write_closed() || event.is_error() {
                                side.writable = true;
                            }
                        }
                        touched.insert(id);
                    }
                    _ => {}
                }
            }
        }
    }

    /// Answers the sandbox's queries; returns whether more may wait.
    fn read_queries(&mut self) -> bool {
        let mut buf = [0u8; 4096];
        for _ in 0..MAX_PER_ROUND {
            match self.dns.recv_from(&mut buf) {
                Ok((n, SocketAddr::V4(client))) => self.core.handle_query(client, &buf[..n]),
                Ok(_) => self.core.drop_packet(|d| d.udp += 1),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
            // Answered at once: nothing piles up in the gateway.
            self.send_answers();
        }
        true
    }

    /// Counts and drops what reached the sinks (the sandbox's own loopback aside); returns
    /// whether more may wait.
    fn drain_sinks(&mut self) -> bool {
        let mut more = false;
        for (sink, quic) in [(&self.other_resolvers, false), (&self.quic, true)] {
            let mut drained = false;
            for _ in 0..MAX_PER_ROUND {
                match sink_datagram(sink) {
                    Ok(to) if to.is_loopback() => {}
                    Ok(_) if quic => self.core.drop_packet(|d| d.quic += 1),
                    Ok(_) => self.core.drop_packet(|d| d.udp += 1),
                    Err(nix::errno::Errno::EINTR) => {}
                    Err(_) => {
                        drained = true;
                        break;
                    }
                }
            }
            more |= !drained;
        }
        more
    }

    /// Counts what the observer saw: an ICMP echo request (no one answers it), and the
    /// namespace's own "port unreachable" for a UDP datagram to a port nothing was bound
    /// to. Returns whether more may wait.
    fn observe(&mut self) -> bool {
        let mut buf = [0u8; 96];
        for _ in 0..MAX_PER_ROUND {
            // SAFETY: reads at most `buf.len()` bytes into a live, writable buffer.
            let n = unsafe {
                libc::recv(
                    self.observer.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                )
            };
            if n < 0 {
                if std::io::Error::last_os_error().kind() == ErrorKind::Interrupted {
                    continue;
                }
                return false;
            }
            // At most 96 bytes of each: the IPv4 header, the ICMP header, and for an error
            // the header of the datagram it answers.
            let seen = &buf[..n as usize];
            if seen.len() < 20 || seen[0] >> 4 != 4 || seen[0] & 0x0f < 5 {
                continue;
            }
            let outside = |dst: &[u8]| dst[0] != 127;
            let Some(icmp) = seen.get(usize::from(seen[0] & 0x0f) * 4..) else {
                continue;
            };
            match icmp {
                [8, ..] if outside(&seen[16..20]) => self.core.drop_packet(|d| d.icmp += 1),
                // Destination unreachable, port: quoting a UDP datagram, whose destination
                // says where it was sent (the error goes back to its source, which the
                // sandbox chooses). The gateway's own DNS answers to a client that is gone
                // bounce too: those are not the sandbox's.
                [3, 3, _, _, _, _, _, _, quoted @ ..]
                    if quoted.len() >= 20
                        && quoted[9] == libc::IPPROTO_UDP as u8
                        && outside(&quoted[16..20])
                        && !from_the_resolver(quoted) =>
                {
                    self.core.drop_packet(|d| d.udp += 1)
                }
                _ => {}
            }
        }
        true
    }

    fn send_answers(&mut self) {
        for (client, payload) in std::mem::take(&mut self.core.answers) {
            // A full socket buffer loses the answer; the client asks again.
            let _ = self.dns.send_to(&payload, SocketAddr::V4(client));
        }
    }

    /// Accepts what waits, and decides each connection by its destination; returns whether
    /// more may wait.
    fn accept(&mut self, touched: &mut HashSet<usize>) -> bool {
        for _ in 0..MAX_PER_ROUND {
            let (stream, _) = match self.listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
                // Out of descriptors, or the like: what waits is taken next round.
                Err(_) => return true,
            };
            let dst = match stream.local_addr() {
                Ok(SocketAddr::V4(dst)) => dst,
                _ => {
                    reset(&stream);
                    continue;
                }
            };
            // The sandbox's own loopback is never steered here; refused all the same.
            let decision = if dst.ip().is_loopback() || dst.ip().is_unspecified() {
                Err(Refusal::OwnLoopback)
            } else {
                self.core.admit(dst, self.conns.len(), self.max_connections)
            };
            let core = &self.core;
            let target = match decision {
                Ok(t) => t,
                Err(why) => {
                    reset(&stream);
                    core.refused_connect(dst, why);
                    continue;
                }
            };
            let id = self.next_id;
            self.next_id += 1;
            let mut down = stream;
            let _ = down.set_nodelay(true);
            let large = self.large_in_use < core.limits.large_buffers;
            set_buffers(&down, large);
            if self
                .poll
                .registry()
                .register(
                    &mut down,
                    Token(FIRST_CONN + 2 * id),
                    Interest::READABLE | Interest::WRITABLE,
                )
                .is_err()
            {
                reset(&down);
                core.refused_connect(dst, Refusal::Connect("cannot watch the connection".into()));
                continue;
            }
            self.conns.insert(
                id,
                KConn {
                    down: Side::new(down),
                    up: None,
                    connected: false,
                    s: Stream::new(dst, target),
                    to_up: None,
                    to_down: None,
                    again: false,
                    large,
                },
            );
            self.large_in_use += usize::from(large);
            self.core.peak(self.conns.len());
            touched.insert(id);
        }
        true
    }

    fn service(&mut self, id: usize) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        match step(conn, &self.core.limits, self.poll.registry(), id) {
            Ok(false) => {}
            Ok(true) => self.finish(id, None),
            Err(why) => self.finish(id, why),
        }
    }

    /// Removes a connection, resets what is still open of it, and records it.
    fn finish(&mut self, id: usize, refused: Option<Refusal>) {
        let Some(mut conn) = self.conns.remove(&id) else {
            return;
        };
        self.large_in_use -= usize::from(conn.large);
        let registry = self.poll.registry();
        let _ = registry.deregister(&mut conn.down.stream);
        if !(conn.down.shut && conn.down.eof) {
            reset(&conn.down.stream);
        }
        if let Some(up) = conn.up.as_mut() {
            let _ = registry.deregister(&mut up.stream);
            if !(up.shut && up.eof) {
                reset(&up.stream);
            }
        }
        conn.s
            .record_end(&mut self.core, conn.up.is_some(), refused);
    }
}

/// Whether a quoted UDP datagram (its IPv4 header first) is one of the resolver's answers:
/// from the gateway's address, port 53.
fn from_the_resolver(quoted: &[u8]) -> bool {
    let header = usize::from(quoted[0] & 0x0f) * 4;
    quoted[12..16] == GATEWAY_ADDR.octets()
        && quoted.get(header..header + 2) == Some(&53u16.to_be_bytes()[..])
}

/// Connections open at once: `limit`, or fewer where `fds` descriptors would run out first.
fn connection_cap(limit: usize, fds: u64) -> usize {
    limit.min((fds.saturating_sub(RESERVED_FDS) / FDS_PER_CONNECTION) as usize)
}

/// Receives one datagram from a sink and returns the address it was sent to.
fn sink_datagram(sink: &UdpSocket) -> nix::Result<Ipv4Addr> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, SockaddrIn};
    let mut buf = [0u8; 64];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!(libc::in_pktinfo);
    let msg = recvmsg::<SockaddrIn>(
        sink.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::empty(),
    )?;
    let to = msg.cmsgs()?.find_map(|c| match c {
        ControlMessageOwned::Ipv4PacketInfo(info) => {
            Some(Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr)))
        }
        _ => None,
    });
    // Without its destination (never, with IP_PKTINFO set), a datagram counts.
    Ok(to.unwrap_or(Ipv4Addr::UNSPECIFIED))
}

/// Fixes a gateway socket's buffers at its class's size. Past the host's `wmem_max` and
/// `rmem_max` only with `CAP_NET_ADMIN`; without it the size is still fixed, at most at
/// those maxima.
fn set_buffers(stream: &TcpStream, large: bool) {
    use nix::sys::socket::{setsockopt, sockopt};
    let size = if large {
        LARGE_SOCKET_BUFFER
    } else {
        SMALL_SOCKET_BUFFER
    };
    if setsockopt(stream, sockopt::SndBufForce, &size).is_err() {
        let _ = setsockopt(stream, sockopt::SndBuf, &size);
    }
    if setsockopt(stream, sockopt::RcvBufForce, &size).is_err() {
        let _ = setsockopt(stream, sockopt::RcvBuf, &size);
    }
}

/// One step of one connection: decide its first bytes, connect, move bytes both ways, pass
/// on ends. `Ok(true)`: done both ways; `Err(Some(why))`: refused; `Err(None)`: broken.
fn step(
    c: &mut KConn,
    limits: &Limits,
    registry: &Registry,
    id: usize,
) -> Result<bool, Option<Refusal>> {
    c.again = false;
    if c.s.verdict.is_none() {
        read_held(&mut c.down, &mut c.s.held, MAX_FIRST_BYTES).map_err(|_| None)?;
        match decide_first_bytes(&c.s.target, &c.s.held, !c.down.eof) {
            FirstBytes::Wait => {}
            FirstBytes::Allowed { requests } => {
                c.s.verdict = Some(true);
                c.s.requests = requests;
            }
            FirstBytes::Refused(why) => return Err(Some(why)),
        }
        if c.s.verdict.is_none() && first_bytes_late(c.s.opened, limits, &c.s.held, c.up.is_some())
        {
            return Err(Some(Refusal::FirstBytes("not complete in time")));
        }
    }
    let server_first = c.s.held.is_empty() && c.s.opened.elapsed() >= limits.server_first_wait;
    if c.up.is_none() && (c.s.verdict == Some(true) || server_first) {
        let mut stream = TcpStream::connect(SocketAddr::V4(c.s.target.upstream))
            .map_err(|e| Some(Refusal::Connect(e.to_string())))?;
        let _ = stream.set_nodelay(true);
        set_buffers(&stream, c.large);
        registry
            .register(
                &mut stream,
                Token(FIRST_CONN + 2 * id + 1),
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(|e| Some(Refusal::Connect(e.to_string())))?;
        let mut up = Side::new(stream);
        up.readable = false;
        c.up = Some(up);
    }
    let Some(up) = c.up.as_mut() else {
        return Ok(false);
    };
    if !c.connected {
        if !up.writable {
            return Ok(false);
        }
        match up.stream.take_error() {
            Ok(Some(e)) | Err(e) => return Err(Some(Refusal::Connect(e.to_string()))),
            Ok(None) => {}
        }
        match up.stream.peer_addr() {
            Ok(_) => c.connected = true,
            Err(e) if e.kind() == ErrorKind::NotConnected => {
                up.writable = false;
                return Ok(false);
            }
            Err(e) => return Err(Some(Refusal::Connect(e.to_string()))),
        }
        let pipes = Pipe::new(c.large).and_then(|a| Ok((a, Pipe::new(c.large)?)));
        let (to_up, to_down) = pipes.map_err(|e| Some(Refusal::Connect(e.to_string())))?;
        c.to_up = Some(to_up);
        c.to_down = Some(to_down);
    }
    let (Some(to_up), Some(to_down)) = (c.to_up.as_mut(), c.to_down.as_mut()) else {
        return Ok(false);
    };
    // Sandbox to upstream, only once the first bytes are decided.
    if c.s.verdict == Some(true) {
        if let Some(requests) = c.s.requests.as_mut() {
            c.s.bytes_out += forward_requests(
                &mut c.down,
                up,
                &mut c.s.held,
                &mut c.s.cleared,
                requests,
                &c.s.target,
            )?;
        } else {
            c.s.bytes_out += write_held(up, &mut c.s.held).map_err(|_| None)?;
            if c.s.held.is_empty() {
                let (n, more) = pump(&mut c.down, to_up, up).map_err(|_| None)?;
                c.s.bytes_out += n;
                c.again |= more;
            }
        }
        if c.down.eof && c.s.held.is_empty() && to_up.held == 0 && !up.shut {
            let _ = up.stream.shutdown(Shutdown::Write);
            up.shut = true;
            c.s.closed_first |= !up.eof;
        }
    }
    // Upstream to sandbox.
    let (n, more) = pump(up, to_down, &mut c.down).map_err(|_| None)?;
    c.s.bytes_in += n;
    c.again |= more;
    if up.eof && to_down.held == 0 && !c.down.shut {
        let _ = c.down.stream.shutdown(Shutdown::Write);
        c.down.shut = true;
    }
    Ok(c.down.shut && up.shut && c.down.eof && up.eof)
}

/// Reads what `side` has into `held`, up to `bound` bytes in all.
fn read_held(side: &mut Side, held: &mut Vec<u8>, bound: usize) -> std::io::Result<()> {
    let mut buf = [0u8; 4096];
    while side.readable && !side.eof && held.len() < bound {
        let room = (bound - held.len()).min(buf.len());
        match side.stream.read(&mut buf[..room]) {
            Ok(0) => side.eof = true,
            Ok(n) => held.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => side.readable = false,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes the held bytes (checked already) to `to`, as far as it takes them.
fn write_held(to: &mut Side, held: &mut Vec<u8>) -> std::io::Result<u64> {
    let mut moved = 0;
    while !held.is_empty() && to.writable {
        match to.stream.write(held) {
            Ok(n) => {
                moved += n as u64;
                held.drain(..n);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => to.writable = false,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if held.is_empty() {
        // An idle connection holds no buffer.
        *held = Vec::new();
    }
    Ok(moved)
}

/// Plain HTTP to a name, sandbox to upstream: bytes are held (at most [`MAX_FIRST_BYTES`]
/// not yet cleared) until [`Requests`] clears them, so every request head is checked
/// before a byte of it goes upstream. An incomplete head left when the sandbox stops
/// sending never goes.
fn forward_requests(
    down: &mut Side,
    up: &mut Side,
    held: &mut Vec<u8>,
    cleared: &mut usize,
    requests: &mut Requests,
    target: &Target,
) -> Result<u64, Option<Refusal>> {
    let mut moved = 0;
    loop {
        if *cleared < held.len() {
            *cleared += requests
                .clear(&held[*cleared..], |s| check_first_bytes(target, s))
                .map_err(Some)?;
        }
        while *cleared > 0 && up.writable {
            match up.stream.write(&held[..*cleared]) {
                Ok(n) => {
                    moved += n as u64;
                    held.drain(..n);
                    *cleared -= n;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => up.writable = false,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Err(None),
            }
        }
        if *cleared > 0 || held.len() >= MAX_FIRST_BYTES || !down.readable || down.eof {
            break;
        }
        let before = held.len();
        read_held(down, held, MAX_FIRST_BYTES).map_err(|_| None)?;
        if held.len() == before {
            break;
        }
    }
    if down.eof && *cleared == 0 {
        // What is left is an incomplete head: it never goes.
        *held = Vec::new();
    }
    Ok(moved)
}

/// Moves what `from` has to `to` through `pipe`, as far as both sockets allow or for at
/// most [`PUMP_ROUNDS`] pipefuls; returns how many bytes reached `to`, and whether it
/// stopped at that bound (more may wait: a fast pair must not keep the gateway from every
/// other connection).
fn pump(from: &mut Side, pipe: &mut Pipe, to: &mut Side) -> std::io::Result<(u64, bool)> {
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    let mut moved = 0;
    for _ in 0..PUMP_ROUNDS {
        let mut progress = false;
        if from.readable && !from.eof && pipe.held < pipe.capacity {
            match splice(
                from.stream.as_fd(),
                None,
                pipe.write.as_fd(),
                None,
                pipe.capacity - pipe.held,
                flags,
            ) {
                Ok(0) => from.eof = true,
                Ok(n) => {
                    pipe.held += n;
                    progress = true;
                }
                // With bytes in the pipe, "would block" may mean the pipe is out of slots
                // rather than the socket out of bytes: the socket stays marked readable
                // until an empty pipe says so.
                Err(nix::errno::Errno::EAGAIN) if pipe.held == 0 => from.readable = false,
                Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if pipe.held > 0 && to.writable {
            match splice(
                pipe.read.as_fd(),
                None,
                to.stream.as_fd(),
                None,
                pipe.held,
                flags,
            ) {
                Ok(n) => {
                    pipe.held -= n;
                    moved += n as u64;
                    progress = true;
                }
                Err(nix::errno::Errno::EAGAIN) => to.writable = false,
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if !progress {
            return Ok((moved, false));
        }
    }
    Ok((moved, true))
}

impl DataPath for KernelState {
    fn poll(&self) -> &Poll {
        &self.poll
    }
    fn core(&self) -> &Core {
        &self.core
    }
    fn run(&mut self, stop: &AtomicBool) -> std::io::Result<()> {
        self.run_loop(stop)
    }
    fn finish_all(&mut self) {
        let ids: Vec<usize> = self.conns.keys().copied().collect();
        for id in ids {
            self.finish(id, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_cap_leaves_descriptors_for_everything_else() {
        assert_eq!(connection_cap(1024, 1 << 20), 1024);
        // 4096 descriptors: (4096 - 256) / 6 connections, each with its two sockets and
        // two pipes.
        assert_eq!(connection_cap(1024, 4096), 640);
        assert_eq!(connection_cap(1024, 256), 0);
        assert_eq!(connection_cap(1024, 0), 0);
    }
}
