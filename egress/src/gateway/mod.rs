//! The data path: one thread that owns the TUN device of a sandbox's network namespace and
//! a userspace TCP/IP stack on it. Every packet the sandbox sends is looked at before the
//! stack sees it:
//!
//! - IPv4 only, from the sandbox's own address, unfragmented; everything else is dropped;
//! - UDP to the gateway's port 53 is a DNS query ([`crate::dns`]); other UDP (QUIC too) and
//!   ICMP are dropped;
//! - a TCP SYN is decided by its destination ([`decide_connect`]): allowed, the stack gets a
//!   listening socket for exactly that destination and accepts; refused, the stack answers
//!   with a reset, as it does for any port nothing listens on.
//!
//! An accepted connection's first bytes are held (bounded, with a deadline) until they show
//! the name it claims ([`crate::sniff`]); only then does a byte go upstream. Upstream
//! sockets are ordinary non-blocking sockets of the supervisor's own network namespace.
//!
//! The thread ends when its owner stops it or the device fails; either way the device's
//! last descriptor closes with it, the kernel removes the device, and the sandbox has no
//! route left. Nothing falls back to another path.

use crate::decide::{
    check_first_bytes, decide_connect, upstream_reachable, Refusal, Rules, Target,
};
use crate::device::{write_packet, TunDevice, VNET_HDR_LEN};
use crate::dns::{self, QueryAction, Question};
use crate::events::{EgressEvent, EgressReport, EventKind, Verdict};
use crate::names::NameTable;
use crate::requests::Requests;
use crate::settings::Settings;
use crate::sniff::{sniff, Sniffed, MAX_FIRST_BYTES};
use covenant_policy::egress::{EgressRule, GATEWAY_ADDR, LINK_PREFIX, SANDBOX_ADDR};
use hickory_proto::op::ResponseCode;
use mio::net::{TcpStream, UdpSocket};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use smoltcp::iface::{Config, Interface, PollResult, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{
    HardwareAddress, IpAddress, IpCidr, IpListenEndpoint, IpProtocol, Ipv4Packet, Ipv4Repr,
    TcpPacket, UdpPacket, UdpRepr,
};
use std::collections::{HashMap, HashSet};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

mod conn;
mod kernel;
mod resolver;

/// The bounds of one gateway.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections open at once (sniffing, connecting or relaying).
    pub max_connections: usize,
    /// How long a new connection may take to send the bytes that name its host.
    pub first_bytes_timeout: Duration,
    /// How long the gateway waits for a first byte before it connects upstream anyway
    /// (protocols where the server speaks first); the client's first bytes are still
    /// checked before any of them goes upstream.
    pub server_first_wait: Duration,
    /// The stack's receive buffer per connection (sandbox to upstream).
    pub rx_buffer: usize,
    /// The stack's send buffer per connection (upstream to sandbox).
    pub tx_buffer: usize,
    /// The send buffer of the first [`Limits::large_buffers`] connections open at once:
    /// bulk downloads need a wide window, a storm of connections must not multiply it.
    pub large_tx_buffer: usize,
    pub large_buffers: usize,
    /// Distinct (name, address) pairs answered per run.
    pub max_names: usize,
    /// Distinct names forwarded upstream per run (bounds what DNS can carry out).
    pub max_forwarded_names: usize,
    /// Queries waiting for the upstream resolver.
    pub max_pending_queries: usize,
    pub query_timeout: Duration,
    /// Packets read from the device but not yet taken by the stack.
    pub max_queued_packets: usize,
    /// Upstream connections the gateway may close first (each leaves a TIME_WAIT on the
    /// host, holding one of its ephemeral ports for a minute) in any minute; past it, new
    /// connections are refused until older ones age out.
    pub max_closed_first_per_minute: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            first_bytes_timeout: Duration::from_secs(10),
            server_first_wait: Duration::from_millis(1000),
            rx_buffer: 16 * 1024,
            tx_buffer: 32 * 1024,
            large_tx_buffer: 512 * 1024,
            large_buffers: 64,
            max_names: 4096,
            max_forwarded_names: 1024,
            max_pending_queries: 256,
            query_timeout: Duration::from_secs(4),
            max_queued_packets: 1024,
            max_closed_first_per_minute: 4096,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("egress gateway: {what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("egress gateway: the rule `{rule}` overlaps the gateway's own addresses")]
    Overlap { rule: String },
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> GatewayError {
    move |source| GatewayError::Io { what, source }
}

/// A running gateway; [`Gateway::stop`] ends it and returns its report.
pub struct Gateway {
    stop: Arc<AtomicBool>,
    /// Set by [`Gateway::stop_after_sandbox`]: leave the device to the namespace's teardown.
    leave: Arc<AtomicBool>,
    waker: Arc<Waker>,
    running: Arc<AtomicBool>,
    report: Arc<Mutex<EgressReport>>,
    thread: Option<JoinHandle<()>>,
}

const TUN: Token = Token(0);
const RESOLVER: Token = Token(1);
const WAKE: Token = Token(2);
const FIRST_CONN_TOKEN: usize = 16;
/// Packets read from the device in one round before the other sources get a turn.
const MAX_READS_PER_ROUND: usize = 4096;
/// Bound on the stack polls of one round (each sends at most one segment per socket).
const STACK_ROUNDS: usize = 256;

impl Gateway {
    /// Starts the gateway on `tun` (a TUN device, `IFF_TUN | IFF_NO_PI`, already up in the
    /// sandbox's namespace with [`SANDBOX_ADDR`] and a default route via [`GATEWAY_ADDR`]).
    pub fn start(
        tun: OwnedFd,
        rules: Vec<EgressRule>,
        settings: Settings,
        limits: Limits,
    ) -> Result<Gateway, GatewayError> {
        set_nonblocking(tun.as_raw_fd()).map_err(io("make the device non-blocking"))?;
        let poll = Poll::new().map_err(io("create poll"))?;
        let core = Core::new(rules, settings, limits, &poll)?;
        poll.registry()
            .register(&mut SourceFd(&tun.as_raw_fd()), TUN, Interest::READABLE)
            .map_err(io("watch the device"))?;
        let mut device = TunDevice::new(tun);
        let mut config = Config::new(HardwareAddress::Ip);
        config.random_seed = random_u64();
        let mut iface = Interface::new(config, &mut device, SmolInstant::now());
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(GATEWAY_ADDR), LINK_PREFIX));
        });
        // Accept every destination routed through the gateway's own address: with any_ip,
        // a listening socket bound to a destination takes its SYN.
        iface.set_any_ip(true);
        let _ = iface.routes_mut().add_default_ipv4_route(GATEWAY_ADDR);
        let state = State {
            core,
            poll,
            iface,
            device,
            sockets: SocketSet::new(Vec::new()),
            conns: HashMap::new(),
            tuples: HashMap::new(),
            tokens: HashMap::new(),
            next_token: FIRST_CONN_TOKEN,
            large_in_use: 0,
        };
        Gateway::spawn(state)
    }

    /// Starts the gateway on the kernel path ([`crate::link::create_kernel_link`]): the
    /// sandbox's connections arrive on listeners in its own namespace and are relayed by
    /// the kernel (`splice`) once their first bytes are decided.
    pub fn start_kernel(
        link: crate::link::KernelLink,
        rules: Vec<EgressRule>,
        settings: Settings,
        limits: Limits,
    ) -> Result<Gateway, GatewayError> {
        let poll = Poll::new().map_err(io("create poll"))?;
        let core = Core::new(rules, settings, limits, &poll)?;
        Gateway::spawn(kernel::KernelState::new(core, poll, link)?)
    }

    fn spawn(mut state: impl DataPath) -> Result<Gateway, GatewayError> {
        let waker =
            Arc::new(Waker::new(state.poll().registry(), WAKE).map_err(io("create waker"))?);
        let stop = Arc::new(AtomicBool::new(false));
        let running = Arc::new(AtomicBool::new(true));
        let report = state.core().report.clone();
        let leave = Arc::new(AtomicBool::new(false));
        let (stop2, running2, report2, leave2) =
            (stop.clone(), running.clone(), report.clone(), leave.clone());
        let thread = std::thread::Builder::new()
            .name("egress-gateway".into())
            .spawn(move || {
                let result = state.run(&stop2);
                state.finish_all();
                match result {
                    Err(e) => {
                        lock(&report2).failure = Some(format!("the gateway stopped mid-run: {e}"))
                    }
                    Ok(()) if leave2.load(Ordering::SeqCst) => state.leave(),
                    Ok(()) => {}
                }
                // Dropping the state closes its sockets and the device: unless the device
                // was left to the namespace, the sandbox's way out goes with them.
                drop(state);
                running2.store(false, Ordering::SeqCst);
            })
            .map_err(io("start the gateway thread"))?;
        Ok(Gateway {
            stop,
            leave,
            waker,
            running,
            report,
            thread: Some(thread),
        })
    }

    /// Whether the gateway still runs.
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }

    /// Stops the gateway once the sandbox (every process of its network namespace) has
    /// ended: the device is left for the namespace's own teardown to remove, which spares
    /// the caller's exit path a synchronous device removal. Returns the report.
    pub fn stop_after_sandbox(self) -> EgressReport {
        self.leave.store(true, Ordering::SeqCst);
        self.stop()
    }

    /// Stops the gateway (closing every connection and removing the device at once, so
    /// whatever is still in the namespace has no route left) and returns its report.
    pub fn stop(mut self) -> EgressReport {
        let died = !self.is_running();
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
        let panicked = match self.thread.take() {
            Some(t) => t.join().is_err(),
            None => false,
        };
        let mut report = std::mem::take(&mut *lock(&self.report));
        if panicked && report.failure.is_none() {
            report.failure = Some("the gateway stopped mid-run: it panicked".into());
        }
        if died && report.failure.is_none() {
            report.failure = Some("the gateway stopped mid-run".into());
        }
        report
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn lock(m: &Mutex<EgressReport>) -> std::sync::MutexGuard<'_, EgressReport> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

fn set_nonblocking(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor the caller owns, with integer arguments.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Makes the device outlive its descriptor, so that closing it does not remove it; the
/// namespace's teardown does. Only for a namespace nothing runs in any more.
fn leave_device(fd: &OwnedFd) {
    const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
    // SAFETY: TUNSETPERSIST takes an integer argument on the device descriptor.
    unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETPERSIST, 1 as libc::c_ulong) };
}

/// Upstream sockets count against the supervisor's descriptor limit: raise the soft limit
/// to the hard one.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            // Best effort: past the soft limit new connections are refused, not lost.
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

/// A data path: the TUN device with its stack, or the kernel path.
trait DataPath: Send + 'static {
    fn poll(&self) -> &Poll;
    fn core(&self) -> &Core;
    /// Serves the sandbox until `stop` is set or the path fails.
    fn run(&mut self, stop: &AtomicBool) -> std::io::Result<()>;
    /// Records every connection still open (the run ended, or the gateway failed).
    fn finish_all(&mut self);
    /// The sandbox has ended: leave what its namespace's teardown removes anyway.
    fn leave(&mut self) {}
}

impl DataPath for State {
    fn poll(&self) -> &Poll {
        &self.poll
    }
    fn core(&self) -> &Core {
        &self.core
    }
    fn run(&mut self, stop: &AtomicBool) -> std::io::Result<()> {
        State::run(self, stop)
    }
    fn finish_all(&mut self) {
        State::finish_all(self)
    }
    /// The namespace's teardown removes the device, in the background, instead of this
    /// close doing it (an RCU grace period, some 20 ms, on every run's exit path).
    fn leave(&mut self) {
        leave_device(&self.device.fd)
    }
}

/// What a connection's first bytes, as far as they came, decide.
enum FirstBytes {
    Wait,
    /// On plain HTTP to a name, every later request head is checked too.
    Allowed {
        requests: Option<Requests>,
    },
    Refused(Refusal),
}

/// Decides the first bytes `held` so far; `more`: whether the sandbox may still send.
fn decide_first_bytes(target: &Target, held: &[u8], more: bool) -> FirstBytes {
    if held.is_empty() {
        return match more {
            true => FirstBytes::Wait,
            false => {
                FirstBytes::Refused(Refusal::FirstBytes("the sandbox closed before a decision"))
            }
        };
    }
    match sniff(held) {
        Sniffed::NeedMore if held.len() >= MAX_FIRST_BYTES => {
            FirstBytes::Refused(Refusal::FirstBytes("longer than the gateway holds"))
        }
        Sniffed::NeedMore if !more => {
            FirstBytes::Refused(Refusal::FirstBytes("the sandbox stopped sending"))
        }
        Sniffed::NeedMore => FirstBytes::Wait,
        sniffed => match check_first_bytes(target, &sniffed) {
            Ok(()) => FirstBytes::Allowed {
                requests: (target.name.is_some() && matches!(sniffed, Sniffed::Http { .. }))
                    .then(Requests::new),
            },
            Err(why) => FirstBytes::Refused(why),
        },
    }
}

/// Whether an undecided connection is out of time. A first message begun must be finished
/// in time. A connection that has sent nothing is connected upstream after
/// `server_first_wait` (the server may speak first) and may then stay quiet; its first
/// bytes are still decided before any goes upstream.
fn first_bytes_late(opened: Instant, limits: &Limits, held: &[u8], upstream: bool) -> bool {
    opened.elapsed() > limits.first_bytes_timeout && (!held.is_empty() || !upstream)
}

/// A query waiting for the upstream resolver.
struct Pending {
    question: Question,
    client: SocketAddrV4,
    deadline: Instant,
}

struct Upstream {
    stream: TcpStream,
    token: Token,
    connected: bool,
    readable: bool,
    writable: bool,
    eof: bool,
    shut_write: bool,
}

/// What both data paths know of a connection: where it goes, what the sandbox sent that is
/// not yet decided or cleared, and what it carried.
struct Stream {
    dst: SocketAddrV4,
    target: Target,
    opened: Instant,
    /// Client bytes held until the first-bytes decision, then until upstream takes them.
    held: Vec<u8>,
    /// `None` until the first bytes are decided.
    verdict: Option<bool>,
    /// On a plain HTTP connection to a name, the framing of its requests: each request
    /// head is checked before it goes upstream, not only the first.
    requests: Option<Requests>,
    /// How many bytes at the front of `held` are checked and wait only for upstream.
    cleared: usize,
    bytes_out: u64,
    bytes_in: u64,
    /// The gateway ended the upstream side before the server did (so that socket goes
    /// into TIME_WAIT on the host).
    closed_first: bool,
}

impl Stream {
    fn new(dst: SocketAddrV4, target: Target) -> Stream {
        Stream {
            dst,
            target,
            opened: Instant::now(),
            held: Vec::new(),
            verdict: None,
            requests: None,
            cleared: 0,
            bytes_out: 0,
            bytes_in: 0,
            closed_first: false,
        }
    }

    /// Records the connection at its end; `upstream`: whether it was connected upstream.
    /// One that ends undecided, never connected and never answered was refused.
    fn record_end(&self, core: &mut Core, upstream: bool, refused: Option<Refusal>) {
        if self.closed_first {
            core.closed_first.push_back(Instant::now());
        }
        let refused = refused.or(match self.verdict {
            Some(true) => None,
            _ if !upstream && self.bytes_in == 0 => {
                Some(Refusal::FirstBytes("the sandbox closed before a decision"))
            }
            _ => None,
        });
        core.record(EgressEvent {
            kind: EventKind::Connect,
            verdict: Verdict::refused_if(refused.is_some()),
            name: self.target.name.clone(),
            address: Some(self.target.upstream.ip().to_string()),
            port: Some(self.dst.port()),
            bytes_out: self.bytes_out,
            bytes_in: self.bytes_in,
            reason: refused.map(|r| r.to_string()),
        });
    }
}

struct Conn {
    s: Stream,
    upstream: Option<Upstream>,
    closing: bool,
    /// Holds one of the large send buffers.
    large: bool,
    tuple: (SocketAddrV4, SocketAddrV4),
}

/// What both data paths share: the rules, the names answered, the resolver and the report.
struct Core {
    names: NameTable,
    forwarded: HashSet<String>,
    rules: Rules,
    settings: Settings,
    limits: Limits,
    resolver: UdpSocket,
    pending: HashMap<u16, Pending>,
    query_seed: u64,
    query_count: u64,
    report: Arc<Mutex<EgressReport>>,
    /// DNS answers ready for the sandbox, sent by the data path its own way.
    answers: Vec<(SocketAddrV4, Vec<u8>)>,
    /// When the gateway last closed upstream connections first, within a minute.
    closed_first: std::collections::VecDeque<Instant>,
}

impl Core {
    fn new(
        rules: Vec<EgressRule>,
        settings: Settings,
        limits: Limits,
        poll: &Poll,
    ) -> Result<Core, GatewayError> {
        check_rules(&rules)?;
        raise_fd_limit();
        let bind: SocketAddr = if settings.resolver.is_ipv4() {
            "0.0.0.0:0".parse().expect("literal")
        } else {
            "[::]:0".parse().expect("literal")
        };
        let mut resolver = UdpSocket::bind(bind).map_err(io("bind the resolver socket"))?;
        resolver
            .connect(settings.resolver)
            .map_err(io("connect the resolver socket"))?;
        poll.registry()
            .register(&mut resolver, RESOLVER, Interest::READABLE)
            .map_err(io("watch the resolver socket"))?;
        Ok(Core {
            names: NameTable::new(limits.max_names),
            forwarded: HashSet::new(),
            rules: Rules::new(rules),
            settings,
            limits,
            resolver,
            pending: HashMap::new(),
            query_seed: random_u64(),
            query_count: 0,
            report: Arc::new(Mutex::new(EgressReport::default())),
            answers: Vec::new(),
            closed_first: std::collections::VecDeque::new(),
        })
    }

    fn record(&self, event: EgressEvent) {
        lock(&self.report).record(event);
    }

    fn drop_packet(&self, f: impl FnOnce(&mut crate::events::Dropped)) {
        f(&mut lock(&self.report).dropped);
    }

    /// Records a connection refused before anything was accepted or relayed.
    fn refused_connect(&self, to: SocketAddrV4, why: Refusal) {
        let answered = self.names.lookup(*to.ip());
        self.record(EgressEvent {
            kind: EventKind::Connect,
            verdict: Verdict::Refused,
            name: answered.map(|a| a.name.clone()),
            address: Some(answered.map(|a| a.upstream).unwrap_or(*to.ip()).to_string()),
            port: Some(to.port()),
            bytes_out: 0,
            bytes_in: 0,
            reason: Some(why.to_string()),
        });
    }

    /// Decides a new connection to `to` while `open` of at most `max` are open: the
    /// connection limit, the churn bound, then the destination.
    fn admit(&mut self, to: SocketAddrV4, open: usize, max: usize) -> Result<Target, Refusal> {
        if open >= max {
            return Err(Refusal::ConnectionLimit);
        }
        if !self.churn_allows() {
            return Err(Refusal::Churn {
                limit: self.limits.max_closed_first_per_minute,
            });
        }
        decide_connect(to, &self.names, &self.rules, &self.settings)
    }

    /// Whether a new connection may be taken: fewer than the limit of upstream connections
    /// closed first in the last minute (each of those is a host port in TIME_WAIT).
    fn churn_allows(&mut self) -> bool {
        let now = Instant::now();
        while self
            .closed_first
            .front()
            .is_some_and(|t| now.duration_since(*t) >= TIME_WAIT)
        {
            self.closed_first.pop_front();
        }
        self.closed_first.len() < self.limits.max_closed_first_per_minute
    }

    fn peak(&self, open: usize) {
        let mut r = lock(&self.report);
        r.peak_connections = r.peak_connections.max(open as u64);
    }
}

/// Makes the socket's close a reset: the peer learns the connection was refused or broken,
/// not that it ended.
fn reset(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let _ = nix::sys::socket::setsockopt(stream, nix::sys::socket::sockopt::Linger, &linger);
}

/// How long Linux keeps a connection closed first in TIME_WAIT.
const TIME_WAIT: Duration = Duration::from_secs(60);

/// A rule's network may not cover the gateway's own addresses.
fn check_rules(rules: &[EgressRule]) -> Result<(), GatewayError> {
    for rule in rules {
        if let covenant_policy::EgressTarget::Network(c) = rule.target {
            if c.contains(GATEWAY_ADDR)
                || c.contains(SANDBOX_ADDR)
                || crate::names::STANDIN_POOL.covers(c)
                || c.covers(crate::names::STANDIN_POOL)
            {
                return Err(GatewayError::Overlap {
                    rule: rule.to_string(),
                });
            }
        }
    }
    Ok(())
}

/// The device path's state: the TUN device and the userspace stack on it.
struct State {
    core: Core,
    poll: Poll,
    iface: Interface,
    device: TunDevice,
    sockets: SocketSet<'static>,
    conns: HashMap<SocketHandle, Conn>,
    tuples: HashMap<(SocketAddrV4, SocketAddrV4), SocketHandle>,
    tokens: HashMap<Token, SocketHandle>,
    next_token: usize,
    /// Connections holding a large send buffer.
    large_in_use: usize,
}

impl State {
    fn drop_packet(&self, f: impl FnOnce(&mut crate::events::Dropped)) {
        self.core.drop_packet(f);
    }

    /// Writes the DNS answers the core has ready as packets from the gateway's address.
    fn send_answers(&mut self) {
        for (client, payload) in std::mem::take(&mut self.core.answers) {
            let udp = UdpRepr {
                src_port: 53,
                dst_port: client.port(),
            };
            let ip = Ipv4Repr {
                src_addr: GATEWAY_ADDR,
                dst_addr: *client.ip(),
                next_header: IpProtocol::Udp,
                payload_len: 8 + payload.len(),
                hop_limit: 64,
            };
            let mut buf = vec![0u8; ip.buffer_len() + 8 + payload.len()];
            let caps = smoltcp::phy::ChecksumCapabilities::default();
            let mut ip_packet = Ipv4Packet::new_unchecked(&mut buf);
            ip.emit(&mut ip_packet, &caps);
            let mut udp_packet = UdpPacket::new_unchecked(ip_packet.payload_mut());
            udp.emit(
                &mut udp_packet,
                &IpAddress::Ipv4(GATEWAY_ADDR),
                &IpAddress::Ipv4(*client.ip()),
                payload.len(),
                |b| b.copy_from_slice(&payload),
                &caps,
            );
            write_packet(self.device.fd.as_raw_fd(), &buf);
        }
    }

    fn run(&mut self, stop: &AtomicBool) -> std::io::Result<()> {
        let mut events = Events::with_capacity(1024);
        // Read both once at the start: readiness is only reported on a change.
        let (mut device_ready, mut resolver_ready) = (true, true);
        loop {
            if stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            let now = SmolInstant::now();
            let mut timeout = self
                .iface
                .poll_delay(now, &self.sockets)
                .map(|d| Duration::from_micros(d.total_micros()))
                .unwrap_or(Duration::from_secs(1))
                .min(Duration::from_secs(1));
            if !self.core.pending.is_empty() || self.conns.values().any(|c| c.s.verdict.is_none()) {
                timeout = timeout.min(Duration::from_millis(100));
            }
            if device_ready {
                // The last read stopped at its bound: more is waiting.
                timeout = Duration::ZERO;
            }
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            for event in events.iter() {
                match event.token() {
                    TUN => device_ready = true,
                    RESOLVER => resolver_ready = true,
                    WAKE => {}
                    token => {
                        let Some(handle) = self.tokens.get(&token) else {
                            continue;
                        };
                        if let Some(up) =
                            self.conns.get_mut(handle).and_then(|c| c.upstream.as_mut())
                        {
                            if event.is_readable() || event.is_read_closed() || event.is_error() {
                                up.readable = true;
                            }
                            if event.is_writable() || event.is_write_closed() || event.is_error() {
                                up.writable = true;
                            }
                        }
                    }
                }
            }
            // The device and the resolver socket are drained to "nothing more" whenever
            // they are read (their readiness is edge-triggered), so they are read only
            // when they reported readiness, or when the last read stopped early.
            if device_ready {
                device_ready = self.read_device()?;
            }
            if resolver_ready {
                self.core.read_resolver();
                resolver_ready = false;
            }
            if !self.core.pending.is_empty() {
                self.core.expire_queries();
            }
            self.send_answers();
            self.poll_stack();
            self.service_connections();
            self.poll_stack();
        }
    }

    /// Lets the stack take every packet queued for it and send what its sockets have to
    /// send. One `Interface::poll` sends at most one segment per socket, so it is repeated
    /// (bounded) while it still makes progress: a wide window goes out in one burst, and
    /// the sandbox's kernel finds several segments at once.
    fn poll_stack(&mut self) {
        for _ in 0..STACK_ROUNDS {
            let progress = self
                .iface
                .poll(SmolInstant::now(), &mut self.device, &mut self.sockets);
            if progress == PollResult::None {
                break;
            }
        }
    }

    /// Reads what the sandbox sent, checks each packet, and queues for the stack what it
    /// should see. Returns whether the device may hold more (the read stopped at its bound
    /// rather than at "nothing more"). A read error other than "nothing more" ends the
    /// gateway.
    fn read_device(&mut self) -> std::io::Result<bool> {
        let mut buf = std::mem::take(&mut self.device.read_buf);
        let result = self.read_device_into(&mut buf);
        self.device.read_buf = buf;
        result
    }

    fn read_device_into(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        for _ in 0..MAX_READS_PER_ROUND {
            let n = match self.device.read(buf) {
                Ok(0) => {
                    return Err(std::io::Error::new(
                        ErrorKind::UnexpectedEof,
                        "device closed",
                    ))
                }
                Ok(n) => n,
                Err(e) => {
                    return match e.kind() {
                        ErrorKind::WouldBlock => Ok(false),
                        ErrorKind::Interrupted => continue,
                        _ => Err(e),
                    }
                }
            };
            // flags bit 0: checksum left to complete; gso_type: a segment to split. The
            // device was asked for neither offload, so such a packet is not one of ours.
            if n <= VNET_HDR_LEN || buf[0] & 1 != 0 || buf[1] != 0 {
                self.drop_packet(|d| d.other += 1);
                continue;
            }
            self.inspect(&buf[VNET_HDR_LEN..n]);
            if self.device.rx.len() >= self.core.limits.max_queued_packets {
                // Let the stack drain what is queued before reading more.
                self.poll_stack();
            }
        }
        Ok(true)
    }

    fn inspect(&mut self, packet: &[u8]) {
        match packet.first().map(|b| b >> 4) {
            Some(4) => {}
            Some(6) => return self.drop_packet(|d| d.ipv6 += 1),
            _ => return self.drop_packet(|d| d.other += 1),
        }
        let Ok(ip) = Ipv4Packet::new_checked(packet) else {
            return self.drop_packet(|d| d.other += 1);
        };
        if ip.src_addr() != SANDBOX_ADDR
            || ip.more_frags()
            || ip.frag_offset() != 0
            || !ip.verify_checksum()
        {
            return self.drop_packet(|d| d.other += 1);
        }
        let (src, dst) = (ip.src_addr(), ip.dst_addr());
        match ip.next_header() {
            IpProtocol::Icmp => self.drop_packet(|d| d.icmp += 1),
            IpProtocol::Udp => {
                let Ok(udp) = UdpPacket::new_checked(ip.payload()) else {
                    return self.drop_packet(|d| d.other += 1);
                };
                if dst == GATEWAY_ADDR && udp.dst_port() == 53 {
                    let client = SocketAddrV4::new(src, udp.src_port());
                    let payload = udp.payload().to_vec();
                    self.core.handle_query(client, &payload);
                    self.send_answers();
                } else if udp.dst_port() == 443 {
                    self.drop_packet(|d| d.quic += 1);
                } else {
                    self.drop_packet(|d| d.udp += 1);
                }
            }
            IpProtocol::Tcp => {
                let Ok(tcp) = TcpPacket::new_checked(ip.payload()) else {
                    return self.drop_packet(|d| d.other += 1);
                };
                let from = SocketAddrV4::new(src, tcp.src_port());
                let to = SocketAddrV4::new(dst, tcp.dst_port());
                if tcp.syn() && !tcp.ack() && !self.tuples.contains_key(&(from, to)) {
                    self.accept_syn(from, to);
                }
                if self.device.rx.len() < self.core.limits.max_queued_packets {
                    self.device.rx.push_back(packet.to_vec());
                }
            }
            _ => self.drop_packet(|d| d.other += 1),
        }
    }

    /// Decides a new connection; when allowed, gives the stack a socket listening on
    /// exactly its destination. Refused, nothing listens and the stack answers a reset.
    fn accept_syn(&mut self, from: SocketAddrV4, to: SocketAddrV4) {
        let max = self.core.limits.max_connections;
        let target = match self.core.admit(to, self.conns.len(), max) {
            Ok(t) => t,
            Err(why) => return self.core.refused_connect(to, why),
        };
        let limits = &self.core.limits;
        let large = self.large_in_use < limits.large_buffers;
        let tx = if large {
            limits.large_tx_buffer
        } else {
            limits.tx_buffer
        };
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; limits.rx_buffer]),
            tcp::SocketBuffer::new(vec![0; tx]),
        );
        socket.set_nagle_enabled(false);
        // The sandbox's kernel waits for window updates; a delayed ACK would stall it.
        socket.set_ack_delay(None);
        if socket
            .listen(IpListenEndpoint {
                addr: Some(IpAddress::Ipv4(*to.ip())),
                port: to.port(),
            })
            .is_err()
        {
            return;
        }
        let handle = self.sockets.add(socket);
        self.large_in_use += usize::from(large);
        self.tuples.insert((from, to), handle);
        self.conns.insert(
            handle,
            Conn {
                s: Stream::new(to, target),
                upstream: None,
                closing: false,
                large,
                tuple: (from, to),
            },
        );
        self.core.peak(self.conns.len());
    }
}
