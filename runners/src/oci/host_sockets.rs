//! gVisor: the host unix sockets a sandbox may connect to, and no other.
//!
//! The sentry reaches a host socket only through its gofer (`--host-uds=open`), a host
//! process running as host root that connects to whatever socket file the sandbox names
//! in its mounts (measured on Debian's 2022 runsc: `socket(AF_UNIX, SOCK_STREAM, 0)`, then
//! `connect` to the file's path in the gofer's view; the listener's `SO_PEERCRED` said
//! uid 0). Left alone, a sandbox could reach any host daemon whose socket sits in its
//! workspace or in a read-only bind, as root.
//!
//! So runsc runs under a second seccomp filter that hands every `connect` of runsc and
//! its helpers to this module (`SECCOMP_RET_USER_NOTIF`), which the supervisor serves on
//! a thread of its own:
//!
//! - `runsc run` itself: its calls proceed (measured: it connects to its sandbox's
//!   control socket; nothing the sandbox reaches);
//! - a socket that is not a unix socket (its own family, read from a duplicate taken
//!   with `pidfd_getfd`, not the address's, which the caller could change before the
//!   kernel reads it again): the supervisor connects that very socket to the address it
//!   copied, and the call returns what that `connect` did. The call itself never
//!   proceeds: between the check and the kernel's own reading, another thread could put
//!   a unix socket under the same descriptor number;
//! - a unix socket and a path naming one of the bundle's host sockets (the same inode,
//!   seen from the caller's root): the supervisor connects the caller's own socket to
//!   that socket's host path, never to the path the caller gave, so no rename or
//!   symlink race can aim it elsewhere; the call returns what that `connect` did;
//! - any other unix `connect` (another path, an abstract name): `ECONNREFUSED`, and the
//!   call never reaches the kernel.
//!
//! `sendto` with a destination, `sendmsg` and `sendmmsg` are not brokered: a datagram to
//! a host unix socket needs code running in runsc's own processes, which gVisor's filters
//! and this one's refusal of io_uring and x32 calls hold to what runsc itself does.
//!
//! The filter is loaded in the child before `runsc` executes, so every process of the
//! sandbox's runtime inherits it; the sandboxed program's own calls never reach it (the
//! ptrace platform serves them in the sentry). If the supervisor stops serving, a
//! pending `connect` fails (`ENOSYS`): closed, not open.

use std::ffi::OsStr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A host socket the sandbox may connect to.
#[derive(Debug, Clone)]
pub(super) struct HostSocket {
    /// Its path on the host (the bind mount's source joined with the rest of its path
    /// inside the sandbox).
    pub(super) host: PathBuf,
}

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7;

/// Bit 30 of a system call number: the x32 ABI.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// How long the supervisor's own `connect` to an allowed socket may wait for the
/// listener's backlog.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

const fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

const fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// The filter: `connect` goes to the supervisor, io_uring and x32 calls fail (`ENOSYS`),
/// everything else proceeds; a call of another architecture kills the process (runsc
/// makes none), as the gofer guard does.
pub(super) fn filter() -> Vec<libc::sock_filter> {
    use libc::{BPF_ABS, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W};
    let ld = (BPF_LD | BPF_W | BPF_ABS) as u16;
    let jeq = (BPF_JMP | BPF_JEQ | BPF_K) as u16;
    let jge = (BPF_JMP | libc::BPF_JGE | BPF_K) as u16;
    let ret = (BPF_RET | BPF_K) as u16;
    vec![
        // seccomp_data.arch
        stmt(ld, 4),
        jump(jeq, AUDIT_ARCH, 1, 0),
        stmt(ret, libc::SECCOMP_RET_KILL_PROCESS),
        // seccomp_data.nr
        stmt(ld, 0),
        // The x32 numbers (bit 30) pass the architecture check: none is runsc's.
        jump(jge, X32_SYSCALL_BIT, 0, 1),
        stmt(ret, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
        // io_uring connects and sends without a system call per operation.
        jump(jeq, libc::SYS_io_uring_setup as u32, 0, 1),
        stmt(ret, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
        jump(jeq, libc::SYS_connect as u32, 0, 1),
        stmt(ret, libc::SECCOMP_RET_USER_NOTIF),
        stmt(ret, libc::SECCOMP_RET_ALLOW),
    ]
}

/// In the child, between fork and exec: loads `program` with a listener and sends the
/// listener over `channel` to the supervisor. Only system calls on memory prepared before
/// the fork.
pub(super) fn load_in_child(program: &[libc::sock_filter], channel: RawFd) -> std::io::Result<()> {
    let prog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: seccomp reads the program, which outlives the call.
    let listener = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
            &prog as *const libc::sock_fprog,
        )
    };
    if listener < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let listener = listener as RawFd;
    let sent = send_fd(channel, listener);
    // SAFETY: the listener is this child's own; runsc must not get it.
    unsafe { libc::close(listener) };
    // SAFETY: as the listener; the channel is close-on-exec too.
    unsafe { libc::close(channel) };
    sent
}

/// One `SCM_RIGHTS` control message carrying one descriptor, laid out as `CMSG_SPACE`
/// says (the header, then the descriptor at the header's aligned end).
#[repr(C)]
struct OneFd {
    header: libc::cmsghdr,
    fd: RawFd,
}

// CMSG_DATA is the header's size rounded to `size_t`, which the header already is.
const _: () = assert!(std::mem::offset_of!(OneFd, fd) == std::mem::size_of::<libc::cmsghdr>());

/// Sends `fd` over the unix socket `channel` (SCM_RIGHTS); no allocation.
fn send_fd(channel: RawFd, fd: RawFd) -> std::io::Result<()> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: cmsghdr is plain data; zeroed is a valid value (and covers any padding
    // field a C library adds).
    let mut header: libc::cmsghdr = unsafe { std::mem::zeroed() };
    header.cmsg_level = libc::SOL_SOCKET;
    header.cmsg_type = libc::SCM_RIGHTS;
    // SAFETY: CMSG_LEN only computes a size.
    header.cmsg_len = unsafe { libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) } as _;
    let mut control = OneFd { header, fd };
    // SAFETY: msghdr is plain data; zeroed is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = (&mut control as *mut OneFd).cast();
    msg.msg_controllen = std::mem::size_of::<OneFd>() as _;
    // SAFETY: msg points at buffers alive for the call.
    if unsafe { libc::sendmsg(channel, &msg, 0) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Receives the descriptor [`send_fd`] sent.
pub(super) fn receive_listener(channel: &OwnedFd) -> std::io::Result<OwnedFd> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut byte = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!(RawFd);
    let msg = recvmsg::<()>(
        channel.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
    )
    .map_err(std::io::Error::from)?;
    for cmsg in msg.cmsgs().map_err(std::io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            if let Some(fd) = fds.first() {
                // SAFETY: the kernel just installed this descriptor in this process.
                return Ok(unsafe { OwnedFd::from_raw_fd(*fd) });
            }
        }
    }
    Err(std::io::Error::other("no descriptor came with the message"))
}

/// The thread serving the listener; stopped and joined by [`Broker::stop`].
pub(super) struct Broker {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Broker {
    /// Serves `listener` for the runtime whose first process is `runtime`, letting
    /// connections reach `allowed` only.
    pub(super) fn start(
        listener: OwnedFd,
        allowed: &[HostSocket],
        runtime: i32,
    ) -> std::io::Result<Broker> {
        let allowed: Vec<((u64, u64), PathBuf)> = allowed
            .iter()
            .map(|s| {
                let md = std::fs::metadata(&s.host)?;
                Ok(((md.dev(), md.ino()), s.host.clone()))
            })
            .collect::<std::io::Result<_>>()?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("host-sockets".into())
            .spawn(move || serve(&listener, &allowed, runtime, &s))?;
        Ok(Broker {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops serving (once the runtime has ended) and joins the thread.
    pub(super) fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.halt();
    }
}

fn serve(listener: &OwnedFd, allowed: &[((u64, u64), PathBuf)], runtime: i32, stop: &AtomicBool) {
    loop {
        // Checked on every round, so a stream of calls cannot hold the supervisor's end.
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let mut pfd = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd, alive for the call.
        let n = unsafe { libc::poll(&mut pfd, 1, 50) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        if n == 0 || pfd.revents & libc::POLLIN == 0 {
            // POLLHUP: no process runs under the filter any more.
            if stop.load(Ordering::SeqCst) || pfd.revents & libc::POLLHUP != 0 {
                return;
            }
            continue;
        }
        // SAFETY: seccomp_notif is plain data; the kernel wants it zeroed.
        let mut req: libc::seccomp_notif = unsafe { std::mem::zeroed() };
        // SAFETY: NOTIF_RECV fills the struct passed.
        if unsafe {
            libc::ioctl(
                listener.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_RECV as _,
                &mut req,
            )
        } < 0
        {
            // ENOENT: the caller died before it was read.
            continue;
        }
        let answer = decide(listener, &req, allowed, runtime);
        let mut resp = libc::seccomp_notif_resp {
            id: req.id,
            val: 0,
            error: 0,
            flags: 0,
        };
        match answer {
            Answer::ProceedRuntime => resp.flags = libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32,
            Answer::Done(0) => {}
            Answer::Done(errno) | Answer::Refuse(errno) => resp.error = -errno,
        }
        // SAFETY: NOTIF_SEND reads the struct passed. A caller that died meanwhile
        // (ENOENT) needs no answer.
        unsafe {
            libc::ioctl(
                listener.as_raw_fd(),
                libc::SECCOMP_IOCTL_NOTIF_SEND as _,
                &mut resp,
            )
        };
    }
}

enum Answer {
    /// Let the call proceed unchanged: `runsc run`'s own calls only.
    ProceedRuntime,
    /// Done here, with this errno (0: success).
    Done(i32),
    /// Refused with this errno.
    Refuse(i32),
}

/// Whether the notification `id` still stands for a live, waiting call (the caller's pid
/// and memory are the ones read).
fn still_valid(listener: &OwnedFd, id: u64) -> bool {
    let mut id = id;
    // SAFETY: NOTIF_ID_VALID reads the id passed.
    unsafe {
        libc::ioctl(
            listener.as_raw_fd(),
            libc::SECCOMP_IOCTL_NOTIF_ID_VALID as _,
            &mut id,
        ) == 0
    }
}

fn decide(
    listener: &OwnedFd,
    req: &libc::seccomp_notif,
    allowed: &[((u64, u64), PathBuf)],
    runtime: i32,
) -> Answer {
    // The calling thread; its process for what is per process.
    let tid = req.pid as i32;
    let Some(pid) = thread_group(tid) else {
        return Answer::Refuse(libc::ECONNREFUSED);
    };
    // `runsc run` itself (its sandbox's control socket): nothing the sandbox reaches.
    if pid == runtime {
        return Answer::ProceedRuntime;
    }
    let (fd, addr, len) = (req.data.args[0], req.data.args[1], req.data.args[2]);
    // The socket itself, shared with the caller: its family decides, not the address
    // the caller passed, which it could change before the kernel reads it again.
    let sock = match caller_socket(pid, fd as RawFd) {
        Ok(sock) => sock,
        Err(_) => return Answer::Refuse(libc::ECONNREFUSED),
    };
    // A family that cannot be read is refused: guessing "not unix" would connect a unix
    // socket, as root, to the caller's address.
    let unix = match socket_domain(&sock) {
        Some(domain) => domain == libc::AF_UNIX,
        None => return Answer::Refuse(libc::ECONNREFUSED),
    };
    let mut raw = [0u8; std::mem::size_of::<libc::sockaddr_storage>()];
    let want = (len as usize).min(raw.len());
    let local = libc::iovec {
        iov_base: raw.as_mut_ptr().cast(),
        iov_len: want,
    };
    let remote = libc::iovec {
        iov_base: addr as *mut libc::c_void,
        iov_len: want,
    };
    // SAFETY: reads another process's memory into `raw`, at most its length.
    let got = unsafe { libc::process_vm_readv(tid, &local, 1, &remote, 1, 0) };
    if got < 2 || !still_valid(listener, req.id) {
        return Answer::Refuse(libc::ECONNREFUSED);
    }
    if !unix {
        // This socket, to the address copied here: the kernel checks it against the
        // socket's own family, and a descriptor swapped meanwhile is not the one connected.
        return match connect_raw(&sock, &raw[..got as usize]) {
            Ok(()) => Answer::Done(0),
            Err(e) => Answer::Done(e.raw_os_error().unwrap_or(libc::ECONNREFUSED)),
        };
    }
    if got < 3 {
        return Answer::Refuse(libc::ECONNREFUSED);
    }
    let family = u16::from_ne_bytes([raw[0], raw[1]]);
    let path = &raw[2..(got as usize).min(std::mem::size_of::<libc::sockaddr_un>())];
    // Abstract names (a leading NUL) and other families are never a host socket file.
    if family != libc::AF_UNIX as u16 || path[0] == 0 {
        return Answer::Refuse(libc::ECONNREFUSED);
    }
    let path = &path[..path.iter().position(|b| *b == 0).unwrap_or(path.len())];
    let seen = match path.strip_prefix(b"/") {
        Some(rest) => PathBuf::from(format!("/proc/{tid}/root")).join(OsStr::from_bytes(rest)),
        None => PathBuf::from(format!("/proc/{tid}/cwd")).join(OsStr::from_bytes(path)),
    };
    // Only which socket is meant is read from the caller's path; what is connected is
    // the allowed socket's own host path.
    let target = std::fs::metadata(&seen)
        .ok()
        .and_then(|md| allowed.iter().find(|(id, _)| *id == (md.dev(), md.ino())));
    let Some((_, host)) = target else {
        return Answer::Refuse(libc::ECONNREFUSED);
    };
    match connect_to(&sock, host) {
        Ok(()) => Answer::Done(0),
        Err(e) => Answer::Done(e.raw_os_error().unwrap_or(libc::ECONNREFUSED)),
    }
}

/// A duplicate of `pid`'s descriptor `fd` (the same open socket).
fn caller_socket(pid: i32, fd: RawFd) -> std::io::Result<OwnedFd> {
    let pidfd = crate::supervise::pidfd_open(pid)?;
    // SAFETY: pidfd_getfd returns a new descriptor or -1.
    let dup = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if dup < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor owned here.
    Ok(unsafe { OwnedFd::from_raw_fd(dup as RawFd) })
}

/// The address family of a socket; `None` for anything else.
fn socket_domain(sock: &OwnedFd) -> Option<i32> {
    let mut domain: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: SO_DOMAIN writes one int into the buffer passed.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_DOMAIN,
            (&mut domain as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(domain)
}

/// The process (thread group) of thread `tid`.
fn thread_group(tid: i32) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Connects the caller's socket (shared with `sock`) to the address `addr` copied from
/// the caller; a blocking socket waits at most [`CONNECT_TIMEOUT`] here.
fn connect_raw(sock: &OwnedFd, addr: &[u8]) -> std::io::Result<()> {
    with_send_timeout(sock, || {
        // SAFETY: connect reads `addr.len()` bytes of the buffer passed, alive for the call.
        unsafe {
            libc::connect(
                sock.as_raw_fd(),
                addr.as_ptr().cast(),
                addr.len() as libc::socklen_t,
            )
        }
    })
}

/// Runs `connect` with the socket's send timeout bounded to [`CONNECT_TIMEOUT`], then puts
/// back the timeout the caller had.
fn with_send_timeout(sock: &OwnedFd, connect: impl FnOnce() -> libc::c_int) -> std::io::Result<()> {
    let opt = |t: Option<&libc::timeval>, out: Option<&mut libc::timeval>| {
        let mut len = std::mem::size_of::<libc::timeval>() as libc::socklen_t;
        match (t, out) {
            // SAFETY: SO_SNDTIMEO reads the timeval passed.
            (Some(t), _) => unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_SNDTIMEO,
                    (t as *const libc::timeval).cast(),
                    len,
                )
            },
            // SAFETY: SO_SNDTIMEO writes one timeval into the buffer passed.
            (None, Some(out)) => unsafe {
                libc::getsockopt(
                    sock.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_SNDTIMEO,
                    (out as *mut libc::timeval).cast(),
                    &mut len,
                )
            },
            (None, None) => 0,
        }
    };
    let mut before = libc::timeval {
        tv_sec: 0,
        tv_usec: 0,
    };
    opt(None, Some(&mut before));
    let bound = libc::timeval {
        tv_sec: CONNECT_TIMEOUT.as_secs() as libc::time_t,
        tv_usec: CONNECT_TIMEOUT.subsec_micros() as libc::suseconds_t,
    };
    opt(Some(&bound), None);
    let rc = connect();
    let result = if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    };
    opt(Some(&before), None);
    result
}

/// Connects the caller's socket (shared with `sock`) to `host`, from this process, so
/// the caller's descriptor is connected when this returns.
fn connect_to(sock: &OwnedFd, host: &Path) -> std::io::Result<()> {
    let bytes = host.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; zeroed is a valid value.
    let mut sa: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= sa.sun_path.len() {
        return Err(std::io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    sa.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in sa.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    with_send_timeout(sock, || {
        // SAFETY: connect reads the address passed, alive for the call.
        unsafe {
            libc::connect(
                sock.as_raw_fd(),
                (&sa as *const libc::sockaddr_un).cast(),
                std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};

    /// A process under the filter reaches the allowed socket, and neither another host
    /// socket nor a symlink to it (each refused before the kernel sees it, so the other
    /// listener never has a connection waiting); a TCP connect is made for the caller's
    /// own socket, which then carries its data; io_uring is not there.
    #[test]
    fn only_the_allowed_socket_is_reached_under_the_filter() {
        assert!(
            Path::new("/usr/bin/python3").exists(),
            "python3 is needed (apt-get install python3)"
        );
        let dir = tempfile::tempdir().unwrap();
        let (allowed, other, link) = (
            dir.path().join("allowed.sock"),
            dir.path().join("other.sock"),
            dir.path().join("link.sock"),
        );
        let allowed_listener = std::os::unix::net::UnixListener::bind(&allowed).unwrap();
        let other_listener = std::os::unix::net::UnixListener::bind(&other).unwrap();
        other_listener.set_nonblocking(true).unwrap();
        std::os::unix::fs::symlink(&other, &link).unwrap();
        let (ours, theirs) = nix::sys::socket::socketpair(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::SeqPacket,
            None,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let program = filter();
        let channel = theirs.as_raw_fd();
        let script = r#"
import errno, socket, sys
for p in sys.argv[1:-1]:
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(p)
        print("ok")
    except OSError as e:
        print("refused", errno.errorcode[e.errno])
t = socket.socket()
t.connect(("127.0.0.1", int(sys.argv[-1])))
t.sendall(b"through")
print("tcp connected")
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
rc = libc.syscall(425, 4, ctypes.create_string_buffer(120))
print("io_uring", rc, errno.errorcode[ctypes.get_errno()])
"#;
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port().to_string();
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.args(["-c", script])
            .args([&allowed, &other, &link])
            .arg(&port)
            .stdout(Stdio::piped());
        let load = move || {
            // Unprivileged tests need it to load a filter; runsc's own start is root's.
            nix::sys::prctl::set_no_new_privs()?;
            load_in_child(&program, channel)
        };
        // SAFETY: the hook makes system calls (prctl, seccomp, sendmsg, close) on memory
        // prepared before the fork.
        unsafe { cmd.pre_exec(load) };
        let mut child = cmd.spawn().unwrap();
        drop(theirs);
        let listener = receive_listener(&ours).unwrap();
        let broker = Broker::start(
            listener,
            &[HostSocket {
                host: allowed.clone(),
            }],
            0,
        )
        .unwrap();
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        assert!(child.wait().unwrap().success());
        broker.stop();
        assert_eq!(
            out,
            "ok\nrefused ECONNREFUSED\nrefused ECONNREFUSED\ntcp connected\nio_uring -1 ENOSYS\n"
        );
        let mut got = String::new();
        tcp.accept().unwrap().0.read_to_string(&mut got).unwrap();
        assert_eq!(got, "through");
        drop(allowed_listener);
        assert_eq!(
            other_listener.accept().map_err(|e| e.kind()).err(),
            Some(std::io::ErrorKind::WouldBlock),
            "the other socket was reached"
        );
    }
}
