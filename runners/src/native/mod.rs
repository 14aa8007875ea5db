//! The native runner: our own namespaces, mounts, `pivot_root`, capabilities,
//! `no_new_privs`, rlimits, landlock, seccomp and cgroups, driven from an OCI bundle.
//!
//! Process model: the caller must be single-threaded (the CLI runs before any thread
//! starts). It clones the sandbox's init straight into new user, PID, mount, IPC, UTS and
//! network namespaces, writes the id maps, moves it into the run's cgroup, and lets it go.
//! Init unshares its cgroup namespace, builds the rootfs, pivots, and forks the program,
//! which drops every privilege, applies landlock and then seccomp, and `exec`s. Errors
//! from the child side come back over a close-on-exec pipe, so "the pipe closed empty"
//! means "the program is running".

pub(crate) mod cgroup;
pub(crate) mod egress;
pub mod idmap;
mod init;
pub mod landlock;
pub(crate) mod mounts;
mod net;
mod privileges;
pub mod seccomp;
pub mod spec;
mod step;
mod syscall_table;

pub use self::cgroup::warmup as cgroup_warmup;
pub use self::cgroup::{
    owner_of as cgroup_owner, remove_abandoned as remove_abandoned_cgroups,
    Abandoned as AbandonedCgroups, CgroupError, CgroupLayout, CgroupVersion,
    PARENT as CGROUP_PARENT,
};
pub use self::landlock::{kernel_abi as landlock_abi, LandlockPlan};
pub use self::spec::Namespace;
pub use self::step::{ChildError, SetupStep, UnknownStep};

use self::cgroup::{CgroupLimits, RunCgroup};
use self::landlock::LandlockError;
use self::mounts::{DetachedTree, MountError};
use self::seccomp::{CompiledSeccomp, SeccompError};
use self::spec::{MountKind, NativeSpec, SpecError};
use crate::outcome::{CgroupEntry, ExitKind, RunOutcome, StartInfo};
use crate::supervise::{forwarded_signals, supervise, Supervised};
use crate::timing::{monotonic_ns, Stopwatch, TimedStep};
use covenant_policy::Degradation;
use nix::sys::signal::{kill, SigHandler, SigSet, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::{
    access, sethostname, setresgid, setresuid, setsid, AccessFlags, ForkResult, Gid, Pid, Uid,
};
use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Exit code of a setup failure, as the CLI reports it.
pub const SETUP_FAILED: i32 = 125;

#[derive(Debug, thiserror::Error)]
pub enum NativeError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Landlock(#[from] LandlockError),
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error("{0}; accept the degradation `idmap` to bind it without an idmap")]
    Idmap(String),
    #[error("writing the sandbox's {file}: {error}")]
    IdMap {
        file: &'static str,
        error: std::io::Error,
    },
    #[error("{what}: {errno}")]
    Sys {
        what: &'static str,
        errno: nix::errno::Errno,
    },
    #[error("sandbox setup failed at step `{step}`: {detail}")]
    Setup { step: SetupStep, detail: String },
    #[error(transparent)]
    UnknownStep(#[from] UnknownStep),
    #[error(transparent)]
    Egress(#[from] egress::EgressError),
}

type Result<T> = std::result::Result<T, NativeError>;

fn sys(what: &'static str) -> impl FnOnce(nix::errno::Errno) -> NativeError {
    move |errno| NativeError::Sys { what, errno }
}

/// The native runner.
#[derive(Debug, Clone)]
pub struct NativeRunner {
    /// Where the cgroup hierarchies are mounted (normally `/sys/fs/cgroup`).
    pub cgroup_root: PathBuf,
    /// What the run's cgroups are tagged with ([`RunnerContext::owner`]).
    pub owner: Option<PathBuf>,
}

impl Default for NativeRunner {
    fn default() -> Self {
        Self {
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            owner: None,
        }
    }
}

/// Everything prepared in the parent before the clone, so the start path after it is short.
struct Prepared {
    /// The directory holding the rootfs, entered by the child while it still has the
    /// caller's host ids (see [`enter_bundle_directory`]).
    root_parent: Option<PathBuf>,
    landlock: Option<LandlockPlan>,
    seccomp: Option<CompiledSeccomp>,
    trees: Vec<Option<DetachedTree>>,
    degradations: Vec<Degradation>,
}

impl Prepared {
    /// How many seccomp programs the sandbox is held by.
    fn seccomp_filters(&self) -> usize {
        self.seccomp.as_ref().map(|s| s.programs.len()).unwrap_or(0)
    }
}

impl NativeRunner {
    /// Runs `spec` to its end, charging each step of the start to `clock` (the child's
    /// steps by the stamps it sends, see [`ChildClock`]) and the program's run to
    /// [`TimedStep::Wait`].
    pub fn run_spec(
        &self,
        spec: &NativeSpec,
        clock: &mut Stopwatch,
        on_start: &mut dyn FnMut(&StartInfo),
    ) -> Result<RunOutcome> {
        let rootless = !Uid::effective().is_root();
        let in_cgroup = !rootless || spec.limits != CgroupLimits::default();
        let mut prepared = prepare(spec)?;
        clock.lap(TimedStep::Prepare);
        // The child reaches its rootfs relative to the directory that holds it, which it
        // enters before it takes the sandbox's ids: a home only its owner may pass
        // through (0700, or under /root) stays closed to the sandbox's host uid.
        let relative;
        if spec.egress.is_some() && !spec.has(Namespace::Network) {
            return Err(NativeError::Egress(egress::EgressError {
                step: "check the bundle",
                detail: "net egress needs a network namespace of its own".into(),
            }));
        }
        let spec = match (spec.rootfs.parent(), spec.rootfs.file_name()) {
            (Some(parent), Some(name)) if !parent.as_os_str().is_empty() => {
                prepared.root_parent = Some(parent.to_path_buf());
                let mut s = spec.clone();
                s.rootfs = PathBuf::from(name);
                relative = s;
                &relative
            }
            _ => spec,
        };
        let layout = match in_cgroup {
            true => Some(CgroupLayout::detect(&self.cgroup_root)?),
            false => None,
        };
        let cgroup_name = format!("{}-{}", spec.job_id, std::process::id());
        // Made before the clone: on v2 the sandbox is cloned into it; on v1 its init moves
        // itself in through the `tasks` files opened here (`cgroup::join`).
        let mut cgroup = match &layout {
            Some(layout) => Some(RunCgroup::create(
                layout,
                &cgroup_name,
                spec.limits,
                self.owner.as_deref(),
            )?),
            None => None,
        };
        let join = match &cgroup {
            Some(cg) => cg.join_files()?,
            None => Vec::new(),
        };
        clock.lap(TimedStep::Cgroup);
        let (sync_rd, sync_wr) = pipe()?;
        let (err_rd, err_wr) = pipe()?;
        let (status_rd, status_wr) = pipe()?;
        let (stamps_rd, stamps_wr) = pipe()?;
        let into_cgroup = match &cgroup {
            Some(cg) => cg.clone_target()?,
            None => None,
        };

        let mut gateway: Option<covenant_egress::Gateway> = None;
        let (sfd, old_mask) = forwarded_signals().map_err(sys("block forwarded signals"))?;
        let result = (|| {
            let (pid, pidfd, entry) = clone_sandbox(spec, into_cgroup.as_ref())?;
            let Some(pidfd) = pidfd else {
                // The child's copies of the parent's pipe ends.
                drop((sync_wr, err_rd, status_rd, stamps_rd, sfd));
                let pipes = ChildPipes {
                    sync: sync_rd,
                    err: err_wr,
                    status: status_wr,
                    stamps: ChildClock(stamps_wr),
                };
                child_main(spec, &mut prepared, join, pipes);
            };
            drop((sync_rd, err_wr, status_wr, stamps_wr, into_cgroup));
            let joins = !join.is_empty();
            drop(join);
            clock.lap(TimedStep::Clone);
            prepared.trees.clear();
            let supervise = || -> Result<Supervised> {
                write_id_maps(pid, spec, rootless)?;
                clock.lap(TimedStep::IdMaps);
                // On v1 init moves itself in once let go, before anything else; a move
                // that fails is its setup error, and the run does not start.
                let cgroup_entry = match &cgroup {
                    Some(_) if entry == CgroupEntry::Clone => Some(CgroupEntry::Clone),
                    Some(_) if joins => Some(CgroupEntry::Join),
                    Some(cg) => {
                        cg.add_process(pid.as_raw())?;
                        clock.lap(TimedStep::Cgroup);
                        Some(CgroupEntry::Move)
                    }
                    None => None,
                };
                if let Some(rules) = &spec.egress {
                    gateway = Some(egress::start_gateway(pid, rules)?);
                    clock.lap(TimedStep::Gateway);
                }
                File::from(sync_wr)
                    .write_all(b"g")
                    .map_err(|e| NativeError::Setup {
                        step: SetupStep::StartSandbox,
                        detail: e.to_string(),
                    })?;
                if let Some(err) = read_child_error(err_rd) {
                    let err = err?;
                    return Err(NativeError::Setup {
                        step: err.step,
                        detail: err.detail,
                    });
                }
                // The error pipe closed at exec: the program runs.
                let exec_ns = monotonic_ns();
                for (step, at_ns) in ChildClock::read(stamps_rd) {
                    clock.lap_at(step, at_ns);
                }
                clock.lap_at(TimedStep::Exec, exec_ns);
                let started = Instant::now();
                on_start(&StartInfo {
                    runner: "native",
                    pid: pid.as_raw(),
                    cgroup: cgroup.as_ref().map(|cg| (cg.version(), cg.dirs().to_vec())),
                    cgroup_entry,
                    namespaces: spec.namespaces.clone(),
                    landlock: prepared.landlock,
                    seccomp_filters: prepared.seccomp_filters(),
                    degradations: prepared.degradations.clone(),
                });
                clock.lap(TimedStep::Audit);
                supervise(&pidfd, &sfd, spec.timeout, started, &mut |sig| {
                    let _ = kill(pid, sig);
                })
                .map_err(sys("poll"))
            };
            let outcome = supervise();
            if outcome.is_err() {
                let _ = kill(pid, Signal::SIGKILL);
            }
            let _ = waitpid(pid, None);
            clock.lap(TimedStep::Wait);
            // Init is gone: its report, if it made one, is all the pipe holds.
            outcome.map(|supervised| (supervised, read_status(status_rd)))
        })();
        let _ = old_mask.thread_set_mask();
        // The sandbox is gone: its gateway stops and says whether it lasted the run.
        let egress_report = gateway.map(|g| g.stop_after_sandbox());
        let (supervised, status) = result?;
        // Without a cgroup (rootless, no limits) nothing was measured.
        let usage = cgroup.as_ref().map(|cg| cg.usage()).unwrap_or_default();
        let cgroup_version = cgroup.as_ref().map(|cg| cg.version());
        if let Some(cg) = cgroup.as_mut() {
            cg.remove(Duration::from_secs(5))?;
        }
        let exit = match status {
            Some(raw) if libc::WIFEXITED(raw) => ExitKind::Exited(libc::WEXITSTATUS(raw)),
            Some(raw) if libc::WIFSIGNALED(raw) => ExitKind::Signaled(libc::WTERMSIG(raw)),
            _ => ExitKind::Killed,
        };
        Ok(RunOutcome {
            exit,
            timed_out: supervised.timed_out,
            oom_killed: usage.oom_kills > 0,
            pids_limit_hits: usage.pids_limit_hits,
            duration: supervised.duration,
            cpu_time_ns: usage.cpu_time_ns,
            peak_memory_bytes: usage.peak_memory_bytes,
            namespaces: spec.namespaces.clone(),
            landlock: prepared.landlock,
            seccomp_filters: prepared.seccomp_filters(),
            cgroup_version,
            degradations_applied: prepared.degradations.clone(),
            signals_forwarded: supervised.forwarded.clone(),
            egress: egress_report,
        })
    }
}

/// Decides landlock, compiles seccomp and clones every host path, before any namespace
/// exists: a restriction that cannot be enforced stops the run here.
fn prepare(spec: &NativeSpec) -> Result<Prepared> {
    let mut degradations = Vec::new();
    let landlock = match &spec.landlock {
        Some(policy) => {
            let plan = landlock::check_support(
                policy,
                landlock::kernel_abi(),
                &spec.accepted_degradations,
            )?;
            if !plan.fs {
                degradations.push(Degradation::Landlock);
            } else {
                if policy.net != covenant_policy::annotations::LandlockNet::Unrestricted
                    && !plan.net
                {
                    degradations.push(Degradation::LandlockNet);
                }
                if policy.scope && !plan.scope {
                    degradations.push(Degradation::LandlockScope);
                }
            }
            Some(plan)
        }
        None => None,
    };
    let seccomp = spec.seccomp.as_ref().map(seccomp::compile).transpose()?;
    let mut trees = Vec::with_capacity(spec.mounts.len());
    // Cloning trees needs CAP_SYS_ADMIN over the caller's mount namespace: rootless, the
    // child binds the paths itself, inside its own user namespace.
    let rootless = !Uid::effective().is_root();
    // Idmapped mounts need host root; a bundle that asks for one is not run without it.
    if rootless && !spec.idmap.is_empty() {
        if !spec.accepts(Degradation::Idmap) {
            return Err(NativeError::Idmap(format!(
                "the idmapped mount of {} needs root",
                spec.idmap[0].destination.display()
            )));
        }
        degradations.push(Degradation::Idmap);
    }
    let mut userns_cache: Vec<((u32, u32), OwnedFd)> = Vec::new();
    for m in &spec.mounts {
        if rootless || !matches!(m.kind, MountKind::Bind { .. }) {
            trees.push(None);
            continue;
        }
        let wanted = spec.idmap.iter().find(|i| i.destination == m.destination);
        let idmap_fd = match wanted {
            None => None,
            Some(i) => {
                let key = (i.host_uid, i.host_gid);
                if !userns_cache.iter().any(|(k, _)| *k == key) {
                    let fd = idmap::idmap_userns(
                        i.host_uid,
                        spec.uid_map.host + spec.uid,
                        i.host_gid,
                        spec.gid_map.host + spec.gid,
                    )
                    .map_err(|e| NativeError::Idmap(e.to_string()))?;
                    userns_cache.push((key, fd));
                }
                userns_cache
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, fd)| fd)
            }
        };
        let tree = match mounts::clone_host_tree(m, idmap_fd) {
            Err(e @ MountError::SetAttr { .. }) if idmap_fd.is_some() => {
                if !spec.accepts(Degradation::Idmap) {
                    return Err(NativeError::Idmap(e.to_string()));
                }
                if !degradations.contains(&Degradation::Idmap) {
                    degradations.push(Degradation::Idmap);
                }
                mounts::clone_host_tree(m, None)?
            }
            other => other?,
        };
        trees.push(Some(tree));
    }
    Ok(Prepared {
        root_parent: None,
        landlock,
        seccomp,
        trees,
        degradations,
    })
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys("pipe"))
}

/// Clones the sandbox's init into its namespaces (all but the cgroup namespace, which init
/// enters once it is in the run's cgroup): straight into the cgroup `into_cgroup` names
/// when there is one (cgroup v2, `clone3` with `CLONE_INTO_CGROUP`), so it never has to be
/// moved there. Returns pid 0 in the child, and how the child's cgroup is to be entered.
fn clone_sandbox(
    spec: &NativeSpec,
    into_cgroup: Option<&OwnedFd>,
) -> Result<(Pid, Option<OwnedFd>, CgroupEntry)> {
    let mut flags =
        libc::CLONE_NEWUSER | libc::CLONE_NEWPID | libc::CLONE_NEWNS | libc::CLONE_PIDFD;
    for (ns, flag) in [
        (Namespace::Ipc, libc::CLONE_NEWIPC),
        (Namespace::Uts, libc::CLONE_NEWUTS),
        (Namespace::Network, libc::CLONE_NEWNET),
    ] {
        if spec.has(ns) {
            flags |= flag;
        }
    }
    let mut pidfd: libc::c_int = -1;
    let mut entry = CgroupEntry::Move;
    let mut pid = -1;
    if let Some(cgroup) = into_cgroup {
        let mut args = libc::clone_args {
            flags: flags as u64 | CLONE_INTO_CGROUP,
            pidfd: &mut pidfd as *mut libc::c_int as u64,
            child_tid: 0,
            parent_tid: 0,
            exit_signal: libc::SIGCHLD as u64,
            stack: 0,
            stack_size: 0,
            tls: 0,
            set_tid: 0,
            set_tid_size: 0,
            cgroup: cgroup.as_raw_fd() as u64,
        };
        // SAFETY: a fork-like clone3 (no stack given: the child runs on a copy of this
        // one) of a single-threaded process; the child continues in child_main and never
        // returns into the caller's frames. The kernel reads `args` and writes the pidfd.
        pid = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                &mut args as *mut libc::clone_args,
                std::mem::size_of::<libc::clone_args>(),
            )
        };
        match nix::errno::Errno::last() {
            // A kernel without clone3 (before 5.3) or without CLONE_INTO_CGROUP (before
            // 5.7, which refuses the larger argument): the child is moved instead.
            nix::errno::Errno::ENOSYS | nix::errno::Errno::E2BIG if pid < 0 => {}
            errno if pid < 0 => return Err(sys(
                "clone3 the sandbox into its cgroup (user, pid, mount, ipc, uts, net namespaces)",
            )(errno)),
            _ => entry = CgroupEntry::Clone,
        }
    }
    if pid < 0 {
        // SAFETY: as above, with the fork-like clone (no new stack); the pidfd is written
        // to `pidfd` in the parent only.
        pid = unsafe {
            libc::syscall(
                libc::SYS_clone,
                (flags | libc::SIGCHLD) as libc::c_ulong,
                0usize,
                &mut pidfd as *mut libc::c_int,
                0usize,
                0usize,
            )
        };
    }
    if pid < 0 {
        return Err(sys(
            "clone the sandbox (user, pid, mount, ipc, uts, net namespaces)",
        )(nix::errno::Errno::last()));
    }
    if pid == 0 {
        return Ok((Pid::from_raw(0), None, entry));
    }
    // SAFETY: the kernel returned a fresh pidfd for the child.
    Ok((
        Pid::from_raw(pid as i32),
        Some(unsafe { OwnedFd::from_raw_fd(pidfd) }),
        entry,
    ))
}

/// `CLONE_INTO_CGROUP` (Linux 5.7), a 64-bit flag only `clone3` takes.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Maps the sandbox's ids: a subordinate range when run as root, the caller alone rootless.
fn write_id_maps(pid: Pid, spec: &NativeSpec, rootless: bool) -> Result<()> {
    let write = |file: &'static str, text: String| {
        std::fs::write(format!("/proc/{pid}/{file}"), text)
            .map_err(|error| NativeError::IdMap { file, error })
    };
    if rootless {
        write("setgroups", "deny".into())?;
    }
    write(
        "uid_map",
        format!("0 {} {}\n", spec.uid_map.host, spec.uid_map.size),
    )?;
    write(
        "gid_map",
        format!("0 {} {}\n", spec.gid_map.host, spec.gid_map.size),
    )
}

/// The child's report, if it wrote one before the pipe closed (see [`ChildError::decode`]).
fn read_child_error(fd: OwnedFd) -> Option<std::result::Result<ChildError, UnknownStep>> {
    let mut buf = Vec::new();
    // A read error keeps what was read so far.
    let _ = File::from(fd).read_to_end(&mut buf);
    ChildError::decode(&buf)
}

/// The child's ends of the pipes to the parent.
struct ChildPipes {
    /// Reads the parent's go-ahead.
    sync: OwnedFd,
    /// The setup error, if any; closes empty at exec.
    err: OwnedFd,
    /// Init's report of the program's status.
    status: OwnedFd,
    stamps: ChildClock,
}

/// The child side's step stamps: when each step ended on the monotonic clock, sent to the
/// parent as fixed records (a step code, then the nanoseconds) on a close-on-exec pipe.
/// A record is 9 bytes, so each write is atomic and a handful never fills the pipe; the
/// parent reads them once the program runs. Lost or garbled stamps cost only timings.
struct ChildClock(OwnedFd);

impl ChildClock {
    /// The steps the child side stamps, in order; a record carries the index.
    const STEPS: [TimedStep; 7] = [
        TimedStep::Init,
        TimedStep::Mounts,
        TimedStep::Pivot,
        TimedStep::Privileges,
        TimedStep::Landlock,
        TimedStep::Seccomp,
        TimedStep::Cgroup,
    ];
    const RECORD: usize = 9;

    fn stamp(&self, step: TimedStep) {
        let Some(code) = Self::STEPS.iter().position(|s| *s == step) else {
            return;
        };
        let mut record = [0u8; Self::RECORD];
        record[0] = code as u8;
        record[1..].copy_from_slice(&monotonic_ns().to_le_bytes());
        let _ = nix::unistd::write(&self.0, &record);
    }

    /// Every whole record in the pipe, in the order written; an unknown code is skipped.
    fn read(fd: OwnedFd) -> Vec<(TimedStep, u64)> {
        let mut buf = Vec::new();
        let _ = File::from(fd).read_to_end(&mut buf);
        Self::decode(&buf)
    }

    fn decode(buf: &[u8]) -> Vec<(TimedStep, u64)> {
        buf.chunks_exact(Self::RECORD)
            .filter_map(|r| {
                let step = *Self::STEPS.get(r[0] as usize)?;
                let mut ns = [0u8; 8];
                ns.copy_from_slice(&r[1..]);
                Some((step, u64::from_le_bytes(ns)))
            })
            .collect()
    }
}

fn read_status(fd: OwnedFd) -> Option<i32> {
    let mut buf = [0u8; 4];
    File::from(fd)
        .read_exact(&mut buf)
        .ok()
        .map(|_| i32::from_ne_bytes(buf))
}

/// The child side: never returns. Init's setup runs in order, then init forks the program:
/// the program reports its own setup error and execs, init closes its copy of the error
/// pipe (so the parent reads end-of-file at exec) and becomes PID 1. Any error is sent to
/// the parent and ends the process with [`SETUP_FAILED`].
fn child_main(
    spec: &NativeSpec,
    prepared: &mut Prepared,
    join: Vec<cgroup::JoinFile>,
    pipes: ChildPipes,
) -> ! {
    let ChildPipes {
        sync,
        err,
        status,
        stamps,
    } = pipes;
    let signals = match init_sandbox(spec, prepared, join, sync, &err, &stamps) {
        Ok(signals) => signals,
        Err(e) => report_and_exit(&err, &e),
    };
    // SAFETY: init is single-threaded; the program child only runs its own setup and execs.
    match unsafe { nix::unistd::fork() } {
        Err(e) => report_and_exit(
            &err,
            &ChildError::new(SetupStep::ForkProgram, e.to_string()),
        ),
        Ok(ForkResult::Child) => {
            drop(status);
            let e = start_program(spec, prepared, &stamps);
            report_and_exit(&err, &e)
        }
        Ok(ForkResult::Parent { child }) => {
            // The stamps first: the parent reads them once the error pipe has closed.
            drop(stamps);
            drop(err);
            keep_only(status.as_raw_fd());
            init::run_init(child, &signals, status)
        }
    }
}

/// Closes every descriptor init inherited from the supervisor (the store's, the host's
/// mount namespace, staging places, sockets) but stdio and `keep`, its status pipe: init
/// lives in the sandbox's namespaces as long as the program, and needs nothing else. It
/// never returns, so no owner of a closed descriptor closes it again.
fn keep_only(keep: std::os::fd::RawFd) {
    let keep = keep as u32;
    for (first, last) in [(3, keep.wrapping_sub(1)), (keep + 1, u32::MAX)] {
        if first <= last {
            // SAFETY: closes descriptor numbers only; nothing in init uses them again.
            unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) };
        }
    }
}

/// Writes the step's code and the detail to the error pipe, then ends the process without
/// running the parent's destructors. Both writes are plain syscalls on ready buffers.
fn report_and_exit(err: &OwnedFd, e: &ChildError) -> ! {
    let _ = nix::unistd::write(err, &e.code());
    let _ = nix::unistd::write(err, e.detail.as_bytes());
    // SAFETY: _exit ends this process at once; nothing of the parent's state is touched.
    unsafe { libc::_exit(SETUP_FAILED) }
}

/// Init's setup sequence, one step per line, in order. Returns the signals init waits on,
/// already blocked, so none is lost before the program runs.
fn init_sandbox(
    spec: &NativeSpec,
    prepared: &mut Prepared,
    join: Vec<cgroup::JoinFile>,
    sync: OwnedFd,
    err: &OwnedFd,
    stamps: &ChildClock,
) -> std::result::Result<SigSet, ChildError> {
    await_parent(sync)?;
    if !join.is_empty() {
        cgroup::join(&join).map_err(|(path, e)| {
            ChildError::new(SetupStep::JoinCgroup, format!("{}: {e}", path.display()))
        })?;
        drop(join);
        stamps.stamp(TimedStep::Cgroup);
    }
    enter_bundle_directory(prepared.root_parent.as_deref())?;
    become_namespace_root()?;
    // After the last change of credentials: changing them clears the parent-death signal.
    die_with_parent(err)?;
    if spec.has(Namespace::Cgroup) {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWCGROUP)
            .map_err(|e| ChildError::new(SetupStep::EnterCgroupNamespace, e.to_string()))?;
    }
    if let (true, Some(name)) = (spec.has(Namespace::Uts), &spec.hostname) {
        sethostname(name).map_err(|e| ChildError::new(SetupStep::SetHostname, e.to_string()))?;
    }
    if spec.has(Namespace::Network) && spec.loopback_up {
        net::bring_up_loopback()?;
    }
    stamps.stamp(TimedStep::Init);
    let root_dir = mounts::build_rootfs(spec, &prepared.trees)?;
    stamps.stamp(TimedStep::Mounts);
    mounts::enter_rootfs(spec, &root_dir)?;
    stamps.stamp(TimedStep::Pivot);
    prepared.trees.clear();
    setsid().map_err(|e| ChildError::new(SetupStep::NewSession, e.to_string()))?;
    let signals = init::init_signals();
    signals
        .thread_block()
        .map_err(|e| ChildError::new(SetupStep::BlockSignals, e.to_string()))?;
    Ok(signals)
}

/// If the supervisor dies (even by SIGKILL), the sandbox dies with it: init gets SIGKILL,
/// and with init the whole PID namespace. A supervisor gone before the sandbox was let go
/// is caught by `await_parent`, whose pipe then reads end-of-file; one gone after that but
/// before the signal was set is caught here, by `err`, the error pipe whose only reader
/// is the supervisor (init's parent is outside its PID namespace, so `getppid` says 0
/// either way).
fn die_with_parent(err: &OwnedFd) -> std::result::Result<(), ChildError> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(|e| {
        ChildError::new(
            SetupStep::SetParentDeathSignal,
            std::io::Error::from(e).to_string(),
        )
    })?;
    match reader_gone(err) {
        false => Ok(()),
        true => Err(ChildError::new(
            SetupStep::SetParentDeathSignal,
            "the supervisor went away before the parent-death signal was set",
        )),
    }
}

/// Whether nothing can read from the pipe whose write end is `fd` any more (`POLLERR`).
/// A poll that fails answers yes: the run stops rather than go on unsure of its
/// supervisor (the pipe is empty, so a zero-timeout poll has an answer at once).
fn reader_gone(fd: &OwnedFd) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLOUT)];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(_) => fds[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLERR | PollFlags::POLLHUP)),
        Err(_) => true,
    }
}

fn await_parent(sync: OwnedFd) -> std::result::Result<(), ChildError> {
    let mut b = [0u8; 1];
    match File::from(sync).read(&mut b) {
        Ok(1) => Ok(()),
        _ => Err(ChildError::new(
            SetupStep::WaitForParent,
            "the supervisor went away before the sandbox started",
        )),
    }
}

/// Makes the directory that holds the rootfs the working directory. Still holding the
/// caller's host ids, the child may pass through every directory the caller may (the
/// caller owns the home); once it has the sandbox's ids, it keeps the directory without
/// looking its ancestors up again, and every rootfs path is relative to it.
fn enter_bundle_directory(dir: Option<&Path>) -> std::result::Result<(), ChildError> {
    match dir {
        Some(dir) => nix::unistd::chdir(dir).map_err(|e| {
            ChildError::new(
                SetupStep::EnterBundleDirectory,
                format!("{}: {e}", dir.display()),
            )
        }),
        None => Ok(()),
    }
}

/// Takes uid/gid 0 of the new user namespace (mapped to an unprivileged host id).
fn become_namespace_root() -> std::result::Result<(), ChildError> {
    let (u, g) = (Uid::from_raw(0), Gid::from_raw(0));
    setresgid(g, g, g)
        .map_err(|e| ChildError::new(SetupStep::EnterUserNamespace, format!("setresgid: {e}")))?;
    setresuid(u, u, u)
        .map_err(|e| ChildError::new(SetupStep::EnterUserNamespace, format!("setresuid: {e}")))
}

enum Never {}

/// The program's setup, ending in `execve`; returns only the error that stopped it.
fn start_program(spec: &NativeSpec, prepared: &Prepared, stamps: &ChildClock) -> ChildError {
    let run = || -> std::result::Result<Never, ChildError> {
        SigSet::empty()
            .thread_set_mask()
            .map_err(|e| ChildError::new(SetupStep::ResetSignals, e.to_string()))?;
        // SAFETY: restores the default disposition the Rust runtime changed for itself; no
        // handler is installed.
        let _ = unsafe { nix::sys::signal::signal(Signal::SIGPIPE, SigHandler::SigDfl) };
        privileges::set_rlimits(spec)?;
        privileges::drop_privileges(spec)?;
        privileges::set_no_new_privs()?;
        nix::unistd::chdir(&spec.cwd).map_err(|e| {
            ChildError::new(
                SetupStep::ChangeDirectory,
                format!("cwd {}: {e}", spec.cwd.display()),
            )
        })?;
        stamps.stamp(TimedStep::Privileges);
        if let (Some(policy), Some(plan)) = (&spec.landlock, prepared.landlock) {
            landlock::apply(policy, plan)?;
        }
        stamps.stamp(TimedStep::Landlock);
        let program = find_program(spec)?;
        // SAFETY: marks every descriptor above stderr close-on-exec; no memory effects.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            )
        };
        if rc != 0 {
            // A descriptor the supervisor holds must never reach the program.
            return Err(ChildError::new(
                SetupStep::CloseInheritedDescriptors,
                std::io::Error::last_os_error().to_string(),
            ));
        }
        if let Some(filters) = &prepared.seccomp {
            seccomp::load(filters)
                .map_err(|e| ChildError::new(SetupStep::LoadSeccomp, e.to_string()))?;
        }
        // The last write before `execve`; the seccomp profile allows `write` and
        // `clock_gettime` (the vDSO's, no system call) to every program.
        stamps.stamp(TimedStep::Seccomp);
        let e = nix::unistd::execve(&program, &spec.args, &spec.env).unwrap_err();
        Err(ChildError::new(
            SetupStep::Exec,
            format!("{}: {e}", program.to_string_lossy()),
        ))
    };
    match run() {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

/// Finds `args[0]` on the sandbox's `PATH`, as a shell would.
fn find_program(spec: &NativeSpec) -> std::result::Result<CString, ChildError> {
    let name = spec.args[0].as_bytes();
    if name.contains(&b'/') {
        return Ok(spec.args[0].clone());
    }
    for dir in spec.path_var.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(std::ffi::OsStr::from_bytes(name));
        // A directory with a NUL byte names no file; a shell would pass over it too.
        let Ok(c) = CString::new(candidate.as_os_str().as_bytes()) else {
            continue;
        };
        if access(c.as_c_str(), AccessFlags::X_OK).is_ok() && candidate.is_file() {
            return Ok(c);
        }
    }
    Err(ChildError::new(
        SetupStep::Exec,
        format!(
            "{}: ENOENT: not found on PATH {}",
            String::from_utf8_lossy(name),
            spec.path_var
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pipe whose reader is gone is told apart from one whose reader is only slow.
    #[test]
    fn a_pipe_without_its_reader_is_seen_gone() {
        let (rd, wr) = pipe().unwrap();
        assert!(!reader_gone(&wr));
        nix::unistd::write(&wr, b"x").unwrap();
        assert!(!reader_gone(&wr), "unread data is not a gone reader");
        drop(rd);
        assert!(reader_gone(&wr));
    }

    #[test]
    fn stamps_decode_whole_known_records_in_order() {
        let mut buf = Vec::new();
        for (code, ns) in [(6u8, 5u64), (0, 10), (2, 30), (9, 40), (5, 50)] {
            buf.push(code);
            buf.extend_from_slice(&ns.to_le_bytes());
        }
        // A record cut short (the writer died mid-way) is not read as one.
        buf.extend_from_slice(&[1, 0xff, 0xff]);
        assert_eq!(
            ChildClock::decode(&buf),
            vec![
                (TimedStep::Cgroup, 5),
                (TimedStep::Init, 10),
                (TimedStep::Pivot, 30),
                (TimedStep::Seccomp, 50)
            ]
        );
    }
}
