//! `exec`: a new process in a running container. The runtime joins the container's PID
//! namespace (which only its children enter), forks, and the child joins the other
//! namespaces of the container's init, user namespace first, then takes the same path to
//! exec as the init: credentials, capabilities, `no_new_privs`, landlock and the
//! container's own seccomp filter.

use crate::cgroups::Cgroup;
use crate::config::{self, field};
use crate::error::RuntimeError;
use crate::init::{self, ProcessPlan};
use crate::state::{self, Root, Status};
use crate::step::{step_err, StepError};
use covenant_policy::annotations::{self, LandlockPolicy};
use covenant_policy::Degradation;
use covenant_runners::native::landlock as ll;
use covenant_runners::native::seccomp as sc;
use nix::sched::CloneFlags;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{ForkResult, Pid};
use oci_spec::runtime::Process;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;

type Result<T> = std::result::Result<T, RuntimeError>;

#[derive(Debug, Clone)]
pub struct ExecOptions {
    pub id: String,
    pub process: Process,
    pub console_socket: Option<PathBuf>,
    pub pid_file: Option<PathBuf>,
    pub detach: bool,
    pub preserve_fds: u32,
}

/// The order namespaces are joined in: user first (it grants the rest), mount last.
const JOIN_ORDER: [(&str, CloneFlags); 7] = [
    ("user", CloneFlags::CLONE_NEWUSER),
    // CLONE_NEWTIME, which nix does not name.
    ("time", CloneFlags::from_bits_retain(0x80)),
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("net", CloneFlags::CLONE_NEWNET),
    ("cgroup", CloneFlags::CLONE_NEWCGROUP),
    ("mnt", CloneFlags::CLONE_NEWNS),
];

/// Runs the process; returns its exit code (0 when detached).
pub fn exec(root: &Root, opts: &ExecOptions) -> Result<i32> {
    let record = root.load(&opts.id)?;
    let status = state::status(&record);
    if status != Status::Running && status != Status::Created {
        return Err(RuntimeError::Status {
            id: record.id.clone(),
            action: "exec",
            status: status.as_str(),
        });
    }
    let prepared = config::prepare_process(&opts.process)?;
    if opts.process.terminal() == Some(true) && opts.console_socket.is_none() {
        return Err(field("process.terminal", "a terminal needs --console-socket").into());
    }
    let seccomp = record
        .seccomp
        .as_ref()
        .map(sc::compile)
        .transpose()
        .map_err(|e| field("linux.seccomp", e.to_string()))?;
    let landlock = match record.annotations.get(annotations::LANDLOCK) {
        Some(text) => {
            let policy: LandlockPolicy = serde_json::from_str(text).map_err(|e| {
                field(
                    format!("annotations.{}", annotations::LANDLOCK),
                    e.to_string(),
                )
            })?;
            let accepted: Vec<Degradation> = record
                .annotations
                .get(annotations::DEGRADATIONS)
                .map(|t| serde_json::from_str(t).unwrap_or_default())
                .unwrap_or_default();
            let plan = ll::check_support(&policy, ll::kernel_abi(), &accepted).map_err(|e| {
                field(
                    format!("annotations.{}", annotations::LANDLOCK),
                    e.to_string(),
                )
            })?;
            Some((policy, plan))
        }
        None => None,
    };
    // Open the init's namespaces, then make sure the init is still the container's.
    let mut join = Vec::new();
    let mut pid_ns = None;
    for name in record
        .namespaces
        .iter()
        .map(String::as_str)
        .chain(["user"].into_iter().filter(|_| record.userns))
    {
        let path = format!("/proc/{}/ns/{name}", record.pid);
        let fd = nix::fcntl::open(
            path.as_str(),
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|errno| RuntimeError::Sys {
            what: "open the container's namespace",
            errno,
        })?;
        // SAFETY: open returned a fresh descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        if name == "pid" {
            pid_ns = Some(fd);
        } else if let Some((_, flag)) = JOIN_ORDER.iter().find(|(n, _)| *n == name) {
            if !join.iter().any(|(f, _): &(CloneFlags, OwnedFd)| f == flag) {
                join.push((*flag, fd));
            }
        }
    }
    join.sort_by_key(|(f, _)| JOIN_ORDER.iter().position(|(_, o)| o == f));
    if !state::init_alive(&record) {
        return Err(RuntimeError::Status {
            id: record.id.clone(),
            action: "exec",
            status: "stopped",
        });
    }
    if let Some(fd) = &pid_ns {
        nix::sched::setns(fd, CloneFlags::CLONE_NEWPID).map_err(|errno| RuntimeError::Sys {
            what: "join the container's pid namespace",
            errno,
        })?;
    }
    let console = match &opts.console_socket {
        Some(p) => Some(OwnedFd::from(
            std::os::unix::net::UnixStream::connect(p).map_err(|e| RuntimeError::Io {
                what: "connect to the console socket",
                path: p.clone(),
                source: e,
            })?,
        )),
        None => None,
    };
    let (sync_rd, sync_wr) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|errno| RuntimeError::Sys {
            what: "pipe",
            errno,
        })?;
    let (err_rd, err_wr) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|errno| RuntimeError::Sys {
            what: "pipe",
            errno,
        })?;
    // SAFETY: the runtime is single-threaded; the child runs its setup and execs or exits.
    match unsafe { nix::unistd::fork() }.map_err(|errno| RuntimeError::Sys {
        what: "fork",
        errno,
    })? {
        ForkResult::Child => {
            drop((sync_wr, err_rd));
            let e = exec_child(
                &sync_rd,
                &join,
                record.userns,
                console.as_ref(),
                &prepared,
                &opts.process,
                opts.preserve_fds,
                seccomp.as_ref(),
                landlock.as_ref(),
                record.personality,
            );
            let bytes = e.encode();
            // SAFETY: writes a live buffer to an owned pipe.
            unsafe { libc::write(err_wr.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
            // SAFETY: ends the child without running the parent's destructors.
            unsafe { libc::_exit(126) }
        }
        ForkResult::Parent { child } => {
            drop((sync_rd, err_wr, console, join));
            let cg = Cgroup::from_dirs(&record.cgroup_dirs);
            if let Err(e) = cg.add(child.as_raw()) {
                let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
                let _ = waitpid(child, None);
                return Err(e.into());
            }
            let _ = nix::unistd::write(&sync_wr, b"g");
            drop(sync_wr);
            let mut buf = Vec::new();
            let _ = std::fs::File::from(err_rd).read_to_end(&mut buf);
            if !buf.is_empty() {
                let _ = waitpid(child, None);
                let (step, detail) = StepError::decode(&buf);
                return Err(RuntimeError::Setup { step, detail });
            }
            if let Some(p) = &opts.pid_file {
                crate::create::write_pid_file(p, child.as_raw())?;
            }
            if opts.detach {
                return Ok(0);
            }
            Ok(wait_exit(child))
        }
    }
}

/// Waits for `pid`, forwarding nothing; returns its exit code as a shell reports it.
pub fn wait_exit(pid: Pid) -> i32 {
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return 255,
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn exec_child(
    sync: &OwnedFd,
    join: &[(CloneFlags, OwnedFd)],
    userns: bool,
    console: Option<&OwnedFd>,
    prepared: &config::Prepared,
    process: &Process,
    preserve_fds: u32,
    seccomp: Option<&sc::CompiledSeccomp>,
    landlock: Option<&(LandlockPolicy, ll::LandlockPlan)>,
    personality: Option<oci_spec::runtime::LinuxPersonalityDomain>,
) -> StepError {
    let run = || -> std::result::Result<init::Never, StepError> {
        let mut b = [0u8; 1];
        if nix::unistd::read(sync.as_raw_fd(), &mut b) != Ok(1) {
            return Err(step_err("wait for parent", "the runtime went away"));
        }
        for (flag, fd) in join {
            nix::sched::setns(fd, *flag)
                .map_err(|e| step_err("join namespace", format!("{flag:?}: {e}")))?;
        }
        if userns {
            let (u, g) = (nix::unistd::Uid::from_raw(0), nix::unistd::Gid::from_raw(0));
            nix::unistd::setresgid(g, g, g)
                .map_err(|e| step_err("enter user namespace", e.to_string()))?;
            nix::unistd::setresuid(u, u, u)
                .map_err(|e| step_err("enter user namespace", e.to_string()))?;
        }
        nix::unistd::setsid().map_err(|e| step_err("new session", e.to_string()))?;
        init::join_new_session_keyring()?;
        if let Some(c) = console {
            init::setup_console(c)?;
        }
        let program = init::find_program(prepared, process.cwd())?;
        Err(init::start_process(
            &ProcessPlan {
                process,
                prepared,
                preserve_fds,
                seccomp,
                landlock,
                personality,
            },
            &program,
        ))
    };
    match run() {
        Ok(never) => match never {},
        Err(e) => e,
    }
}
