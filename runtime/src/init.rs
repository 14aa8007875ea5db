//! The container's init, between `clone` and `execve`. Its setup reads top to bottom in
//! [`init_container`]: wait for the parent (id maps, cgroup), join namespaces, build the
//! filesystem, report "ready", wait at the start barrier, then [`start_process`] drops to
//! the configured credentials and execs. Until the barrier an error goes to the parent
//! (`create` fails); after it, to whoever ran `start`.
//!
//! This code runs in a fork of a single-threaded process; it never returns to the
//! caller's frames (it ends in `execve` or `_exit`).

use crate::config::Prepared;
use crate::step::{step_err, StepError};
use covenant_policy::annotations::LandlockPolicy;
use covenant_runners::native::landlock::{self as ll, LandlockPlan};
use covenant_runners::native::seccomp::{self as sc, CompiledSeccomp};
use nix::sched::CloneFlags;
use nix::unistd::{setresgid, setresuid, Gid, Uid};
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

type Result<T> = std::result::Result<T, StepError>;

/// Everything the child needs, prepared by the parent before the clone.
pub struct ChildContext<'a> {
    pub spec: &'a Spec,
    pub prepared: &'a Prepared,
    pub bundle: &'a Path,
    /// Parent → child: one byte once the id maps are written and the cgroup joined.
    pub sync: OwnedFd,
    /// Child → parent: `R` when ready, or an encoded [`StepError`].
    pub report: OwnedFd,
    /// The start barrier: a listening socket `start` connects to. `None`: start at once.
    pub barrier: Option<OwnedFd>,
    /// Each bind mount's source, opened and checked by the parent, and its idmapped tree
    /// (by mount index).
    pub bind_sources: Vec<Option<crate::mounts::BindSource>>,
    /// Namespaces to join, opened by path in the parent (user first).
    pub join: Vec<(LinuxNamespaceType, OwnedFd)>,
    pub new_cgroupns: bool,
    pub has_mountns: bool,
    pub has_utsns: bool,
    pub userns: bool,
    pub console: Option<OwnedFd>,
    pub preserve_fds: u32,
    pub new_keyring: bool,
    pub seccomp: Option<CompiledSeccomp>,
    pub landlock: Option<(LandlockPolicy, LandlockPlan)>,
    /// What each createContainer hook's path named when `create` checked it.
    pub create_container_hooks: Vec<Option<(u64, u64)>>,
}

pub enum Never {}

/// The child side: never returns.
pub fn child_main(ctx: ChildContext<'_>) -> ! {
    // A copy that outlives `ctx`: the parent must read the error before it sees EOF.
    // SAFETY: dup of a descriptor this process owns; on failure -1 makes the write a no-op.
    let report = unsafe { libc::fcntl(ctx.report.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    let e = match init_container(ctx) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    let bytes = e.encode();
    // SAFETY: writes a live buffer to a descriptor this process owns.
    unsafe { libc::write(report, bytes.as_ptr().cast(), bytes.len()) };
    // SAFETY: ends the child without running the parent's destructors.
    unsafe { libc::_exit(1) }
}

/// Init's setup sequence, one step per line, in order.
fn init_container(mut ctx: ChildContext<'_>) -> Result<Never> {
    let hooks = crate::hooks::HookSet::from_spec(ctx.spec);
    await_parent(&ctx.sync)?;
    join_namespaces(&ctx.join)?;
    if ctx.userns {
        become_namespace_root()?;
    }
    if ctx.new_cgroupns {
        nix::sched::unshare(CloneFlags::CLONE_NEWCGROUP)
            .map_err(|e| step_err("enter cgroup namespace", e.to_string()))?;
    }
    nix::unistd::setsid().map_err(|e| step_err("new session", e.to_string()))?;
    if ctx.new_keyring {
        join_new_session_keyring()?;
    }
    if ctx.has_mountns {
        crate::mounts::build_rootfs(
            ctx.spec,
            ctx.bundle,
            &ctx.prepared.rootfs,
            ctx.userns,
            &ctx.bind_sources,
        )?;
    }
    let state = report_mounted(&ctx.report, &ctx.sync)?;
    crate::hooks::check_same(
        "createContainer",
        &hooks.create_container,
        &ctx.create_container_hooks,
    )
    .map_err(|e| step_err("createContainer", e.to_string()))?;
    run_hooks("createContainer", &hooks.create_container, &state)?;
    if ctx.has_mountns {
        crate::mounts::enter_rootfs(ctx.spec, &ctx.prepared.rootfs)?;
    } else {
        crate::mounts::chroot_into(&ctx.prepared.rootfs)?;
    }
    crate::mounts::write_sysctls(ctx.spec)?;
    if ctx.has_mountns {
        crate::mounts::restrict_paths(ctx.spec)?;
    }
    if ctx.has_utsns {
        set_names(ctx.spec)?;
    }
    if let Some(console) = &ctx.console {
        setup_console(console)?;
    }
    let cwd = ctx
        .spec
        .process()
        .as_ref()
        .map(|p| p.cwd().clone())
        .unwrap_or_else(|| PathBuf::from("/"));
    let program = match ctx.spec.process() {
        Some(_) => Some(find_program(ctx.prepared, &cwd)?),
        None => None,
    };
    report_ready(&ctx.report)?;
    await_commit(&ctx.sync)?;
    let started = match ctx.barrier.take() {
        Some(listener) => Some(await_start(listener)?),
        None => None,
    };
    if let Err(e) = run_hooks("startContainer", &hooks.start_container, &state) {
        return Err(report_after_start(started.as_ref(), e));
    }
    let (Some(process), Some(program)) = (ctx.spec.process().as_ref(), program) else {
        let e = step_err(
            "start",
            "config.json has no `process`: there is nothing to start",
        );
        return Err(report_after_start(started.as_ref(), e));
    };
    let e = start_process(
        &ProcessPlan {
            process,
            prepared: ctx.prepared,
            preserve_fds: ctx.preserve_fds,
            seccomp: ctx.seccomp.as_ref(),
            landlock: ctx.landlock.as_ref(),
            personality: ctx
                .spec
                .linux()
                .as_ref()
                .and_then(|l| l.personality().as_ref())
                .map(|p| p.domain()),
        },
        &program,
    );
    Err(report_after_start(started.as_ref(), e))
}

/// After the barrier, `start` is the one waiting for the outcome.
fn report_after_start(conn: Option<&OwnedFd>, e: StepError) -> StepError {
    if let Some(conn) = conn {
        let bytes = e.encode();
        // SAFETY: writes a live buffer to the start connection this process owns.
        unsafe { libc::write(conn.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
    }
    e
}

/// What the last steps before exec act on (the init's process, or an `exec`'s).
pub struct ProcessPlan<'a> {
    pub process: &'a oci_spec::runtime::Process,
    pub prepared: &'a Prepared,
    pub preserve_fds: u32,
    pub seccomp: Option<&'a CompiledSeccomp>,
    pub landlock: Option<&'a (LandlockPolicy, LandlockPlan)>,
    /// `linux.personality.domain` (`LINUX32` for a 32-bit personality).
    pub personality: Option<oci_spec::runtime::LinuxPersonalityDomain>,
}

/// Sets the execution domain the config names (flags are refused at create).
fn set_personality(domain: Option<oci_spec::runtime::LinuxPersonalityDomain>) -> Result<()> {
    const PER_LINUX32: libc::c_ulong = 0x0008;
    let Some(domain) = domain else { return Ok(()) };
    let value = match domain {
        oci_spec::runtime::LinuxPersonalityDomain::PerLinux => 0,
        _ => PER_LINUX32,
    };
    // SAFETY: personality takes an integer and changes only this process's domain.
    if unsafe { libc::personality(value) } < 0 {
        return Err(step_err(
            "set personality",
            format!("linux.personality: {}", std::io::Error::last_os_error()),
        ));
    }
    Ok(())
}

fn await_parent(sync: &OwnedFd) -> Result<()> {
    let mut b = [0u8; 1];
    match std::fs::File::from(
        sync.try_clone()
            .map_err(|e| step_err("wait for parent", e.to_string()))?,
    )
    .read(&mut b)
    {
        Ok(1) => Ok(()),
        _ => Err(step_err(
            "wait for parent",
            "the runtime went away before the container was set up",
        )),
    }
}

/// Waits until the parent has recorded the container; if it died first (end of file),
/// nothing knows this init, so it exits instead of waiting at the barrier forever.
fn await_commit(sync: &OwnedFd) -> Result<()> {
    let mut b = [0u8; 1];
    match nix::unistd::read(sync.as_raw_fd(), &mut b) {
        Ok(1) if b[0] == b'c' => Ok(()),
        _ => Err(step_err(
            "wait for commit",
            "the runtime went away before it recorded the container",
        )),
    }
}

/// Joins each namespace given by path, the user namespace first (it decides what the
/// others may do).
fn join_namespaces(join: &[(LinuxNamespaceType, OwnedFd)]) -> Result<()> {
    for (typ, fd) in join {
        nix::sched::setns(fd, CloneFlags::from_bits_truncate(*typ as i32))
            .map_err(|e| step_err("join namespace", format!("{typ}: {e}")))?;
    }
    Ok(())
}

fn become_namespace_root() -> Result<()> {
    let (u, g) = (Uid::from_raw(0), Gid::from_raw(0));
    setresgid(g, g, g).map_err(|e| step_err("enter user namespace", format!("setresgid: {e}")))?;
    setresuid(u, u, u).map_err(|e| step_err("enter user namespace", format!("setresuid: {e}")))
}

fn set_names(spec: &Spec) -> Result<()> {
    if let Some(h) = spec.hostname() {
        nix::unistd::sethostname(h).map_err(|e| step_err("set hostname", e.to_string()))?;
    }
    if let Some(d) = spec.domainname() {
        let c = CString::new(d.as_str()).map_err(|_| step_err("set domainname", "contains NUL"))?;
        // SAFETY: setdomainname reads `len` bytes of a live buffer.
        if unsafe { libc::setdomainname(c.as_ptr(), d.len()) } != 0 {
            return Err(step_err(
                "set domainname",
                std::io::Error::last_os_error().to_string(),
            ));
        }
    }
    Ok(())
}

/// Opens a new terminal in the container's `/dev/pts`, sends its master to the console
/// socket and makes the slave the process's stdio and controlling terminal.
pub fn setup_console(socket: &OwnedFd) -> Result<()> {
    use nix::fcntl::OFlag;
    use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
    let fail = |e: &dyn std::fmt::Display| step_err("set up console", e.to_string());
    let master =
        posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC).map_err(|e| fail(&e))?;
    grantpt(&master).map_err(|e| fail(&e))?;
    unlockpt(&master).map_err(|e| fail(&e))?;
    let name = ptsname_r(&master).map_err(|e| fail(&e))?;
    let slave = nix::fcntl::open(
        name.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| fail(&format!("{name}: {e}")))?;
    let fds = [master.as_raw_fd()];
    let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&fds)];
    let iov = [std::io::IoSlice::new(b"/dev/ptmx")];
    nix::sys::socket::sendmsg::<()>(
        socket.as_raw_fd(),
        &iov,
        &cmsg,
        nix::sys::socket::MsgFlags::empty(),
        None,
    )
    .map_err(|e| fail(&format!("send the terminal: {e}")))?;
    for target in 0..3 {
        // SAFETY: dup2 onto the standard descriptors.
        if unsafe { libc::dup2(slave, target) } < 0 {
            return Err(fail(&std::io::Error::last_os_error()));
        }
    }
    // SAFETY: makes the new terminal this session's controlling terminal.
    if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } != 0 {
        return Err(fail(&std::io::Error::last_os_error()));
    }
    if slave > 2 {
        // SAFETY: closes a descriptor this process opened.
        unsafe { libc::close(slave) };
    }
    Ok(())
}

/// Finds `args[0]` on the container's `PATH`, as a shell would; before the barrier, so a
/// missing program fails `create`.
pub fn find_program(p: &Prepared, cwd: &Path) -> Result<CString> {
    let name = p.args[0].as_bytes();
    if name.contains(&b'/') {
        let path = Path::new(std::ffi::OsStr::from_bytes(name));
        let path = if path.is_absolute() {
            path.to_path_buf()
        } else {
            cwd.join(path)
        };
        let c = CString::new(path.as_os_str().as_bytes()).unwrap_or_default();
        // SAFETY: access reads a NUL-terminated path.
        if unsafe { libc::access(c.as_ptr(), libc::X_OK) } != 0 {
            return Err(step_err(
                "find program",
                format!(
                    "process.args[0] `{}`: {}",
                    String::from_utf8_lossy(name),
                    std::io::Error::last_os_error()
                ),
            ));
        }
        return Ok(p.args[0].clone());
    }
    for dir in p.path_var.split(':').filter(|d| !d.is_empty()) {
        let base = if Path::new(dir).is_absolute() {
            PathBuf::from(dir)
        } else {
            cwd.join(dir)
        };
        let candidate = base.join(std::ffi::OsStr::from_bytes(name));
        let Ok(c) = CString::new(candidate.as_os_str().as_bytes()) else {
            continue;
        };
        // SAFETY: access reads a NUL-terminated path.
        if unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0 && candidate.is_file() {
            return Ok(c);
        }
    }
    Err(step_err(
        "find program",
        format!(
            "process.args[0] `{}`: not found on PATH {}",
            String::from_utf8_lossy(name),
            p.path_var
        ),
    ))
}

/// Joins a new, anonymous session keyring: the keys of the session that ran the runtime
/// stay out of the container's reach.
pub(crate) fn join_new_session_keyring() -> Result<()> {
    const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
    // SAFETY: keyctl with a null name makes and joins an anonymous keyring; no memory is
    // passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            KEYCTL_JOIN_SESSION_KEYRING,
            std::ptr::null::<libc::c_char>(),
        )
    };
    if rc < 0 {
        return Err(step_err(
            "new session keyring",
            std::io::Error::last_os_error().to_string(),
        ));
    }
    Ok(())
}

/// Tells the parent the filesystem is built (`M`) and reads back the container's state
/// (a big-endian length, then JSON), sent once the parent has recorded the container and
/// run the createRuntime and prestart hooks.
fn report_mounted(report: &OwnedFd, sync: &OwnedFd) -> Result<serde_json::Value> {
    let f = report
        .try_clone()
        .map_err(|e| step_err("report mounted", e.to_string()))?;
    std::fs::File::from(f)
        .write_all(b"M")
        .map_err(|e| step_err("report mounted", e.to_string()))?;
    let mut from_parent = std::fs::File::from(
        sync.try_clone()
            .map_err(|e| step_err("read the container's state", e.to_string()))?,
    );
    let gone = |_| {
        step_err(
            "read the container's state",
            "the runtime went away before it recorded the container",
        )
    };
    let mut len = [0u8; 4];
    from_parent.read_exact(&mut len).map_err(gone)?;
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    from_parent.read_exact(&mut body).map_err(gone)?;
    serde_json::from_slice(&body).map_err(|e| step_err("read the container's state", e.to_string()))
}

fn report_ready(report: &OwnedFd) -> Result<()> {
    let f = report
        .try_clone()
        .map_err(|e| step_err("report ready", e.to_string()))?;
    std::fs::File::from(f)
        .write_all(b"R")
        .map_err(|e| step_err("report ready", e.to_string()))
}

/// Blocks until `start` connects to the barrier; the connection stays open until exec
/// (close-on-exec), so `start` reads EOF once the process runs, or the error.
fn await_start(listener: OwnedFd) -> Result<OwnedFd> {
    loop {
        match nix::sys::socket::accept4(
            listener.as_raw_fd(),
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        ) {
            Ok(fd) => {
                // SAFETY: accept returned a fresh descriptor this process owns.
                let conn = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
                // Nobody else may start this container.
                drop(listener);
                return Ok(conn);
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(step_err("wait for start", e.to_string())),
        }
    }
}

/// The process's last steps: hooks in the container, rlimits, credentials, capabilities,
/// `no_new_privs`, umask, cwd, landlock, descriptors, seccomp, exec. Returns only the
/// error that stopped it.
pub fn start_process(ctx: &ProcessPlan<'_>, program: &CString) -> StepError {
    let run = || -> Result<Never> {
        let process = ctx.process;
        set_rlimits(&ctx.prepared.rlimits)?;
        if let Some(adj) = process.oom_score_adj() {
            std::fs::write("/proc/self/oom_score_adj", adj.to_string()).map_err(|e| {
                step_err("set oomScoreAdj", format!("process.oomScoreAdj {adj}: {e}"))
            })?;
        }
        set_personality(ctx.personality)?;
        close_inherited(3 + ctx.preserve_fds)?;
        // SAFETY: restores the default disposition the Rust runtime changed for itself.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
        nix::sys::signal::SigSet::empty()
            .thread_set_mask()
            .map_err(|e| step_err("reset signals", e.to_string()))?;
        // Without no_new_privs only a holder of CAP_SYS_ADMIN may load a filter: it is
        // loaded now, before the capabilities are dropped (as runc does), and so also
        // governs the remaining setup calls.
        let nnp = process.no_new_privileges() == Some(true) || ctx.landlock.is_some();
        if let (Some(filters), false) = (ctx.seccomp, nnp) {
            load_seccomp_keeping_privileges(filters)?;
        }
        crate::privileges::apply_user_and_caps(process, &ctx.prepared.caps)?;
        if nnp {
            // SAFETY: prctl with integer arguments only.
            if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
                return Err(step_err(
                    "set no_new_privs",
                    std::io::Error::last_os_error().to_string(),
                ));
            }
        }
        if let Some(mask) = process.user().umask() {
            // SAFETY: umask has no failure mode.
            unsafe { libc::umask(mask as libc::mode_t) };
        }
        nix::unistd::chdir(process.cwd()).map_err(|e| {
            step_err(
                "change directory",
                format!("process.cwd {}: {e}", process.cwd().display()),
            )
        })?;
        if let Some((policy, plan)) = &ctx.landlock {
            ll::apply(policy, *plan).map_err(|e| step_err("apply landlock", e.detail))?;
        }
        if let (Some(filters), true) = (ctx.seccomp, nnp) {
            sc::load(filters).map_err(|e| step_err("load seccomp", e.to_string()))?;
        }
        let e = nix::unistd::execve(program, &ctx.prepared.args, &ctx.prepared.env).unwrap_err();
        Err(step_err(
            "exec",
            format!("{}: {e}", program.to_string_lossy()),
        ))
    };
    match run() {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

/// Loads the filters without setting `no_new_privs` (which `seccompiler` always sets):
/// the config did not ask for it, and the process holds CAP_SYS_ADMIN until its
/// capabilities are set right after.
fn load_seccomp_keeping_privileges(filters: &CompiledSeccomp) -> Result<()> {
    for program in &filters.programs {
        let prog = libc::sock_fprog {
            len: program.len() as libc::c_ushort,
            filter: program.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: the kernel copies `len` instructions from a live program; seccompiler's
        // `sock_filter` has the kernel's layout.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                &prog as *const libc::sock_fprog,
            )
        };
        if rc != 0 {
            return Err(step_err(
                "load seccomp",
                std::io::Error::last_os_error().to_string(),
            ));
        }
    }
    Ok(())
}

/// Runs the init's hooks of `kind` (createContainer, startContainer): in the container's
/// namespaces, with the state the runtime sent on their stdin.
fn run_hooks(
    kind: &'static str,
    list: &[crate::hooks::Hook],
    state: &serde_json::Value,
) -> Result<()> {
    if list.is_empty() {
        return Ok(());
    }
    crate::hooks::run(kind, list, state).map_err(|e| step_err(kind, e.to_string()))
}

fn set_rlimits(rlimits: &[(libc::__rlimit_resource_t, u64, u64)]) -> Result<()> {
    for &(resource, soft, hard) in rlimits {
        let limit = libc::rlimit {
            rlim_cur: soft,
            rlim_max: hard,
        };
        // SAFETY: setrlimit reads one rlimit struct.
        if unsafe { libc::setrlimit(resource, &limit) } != 0 {
            return Err(step_err(
                "set rlimits",
                format!(
                    "process.rlimits {resource} {soft}:{hard}: {}",
                    std::io::Error::last_os_error()
                ),
            ));
        }
    }
    Ok(())
}

/// Marks every descriptor from `first` on close-on-exec: nothing of the runtime's
/// reaches the process beyond stdio and the `--preserve-fds` it was given.
fn close_inherited(first: u32) -> Result<()> {
    // SAFETY: close_range with CLOEXEC only changes descriptor flags.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc != 0 {
        return Err(step_err(
            "close inherited descriptors",
            std::io::Error::last_os_error().to_string(),
        ));
    }
    Ok(())
}
