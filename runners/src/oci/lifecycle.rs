//! One run through the runtime's lifecycle (create, start, wait, kill, delete) in a private
//! state directory, with the sandbox's cgroup, overlay root and enforcer around it.

use crate::native::cgroup::{CgroupLayout, CgroupLimits, RunCgroup};
use crate::outcome::{ExitKind, RunOutcome, StartInfo};
use crate::supervise::{forwarded_signals, pidfd_open, supervise};
use crate::timing::{Stopwatch, TimedStep};
use covenant_policy::annotations::{self};
use nix::fcntl::{open, OFlag};
use nix::mount::{umount2, MntFlags};
use nix::sys::prctl::set_child_subreaper;
use nix::sys::signal::{kill, Signal};
use nix::sys::stat::Mode;
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag};
use nix::unistd::{chown, setsid, write, Gid, Pid, Uid};
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use std::ffi::CString;
use std::fs;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::decide::*;
use super::runner::*;

/// Runs `cmd` to completion while reaping the runtime's other processes that were
/// reparented to us (we are their subreaper): a runtime that waits for its helper to die
/// would otherwise see it as a zombie, alive, until its own timeout (runsc: 5 s).
pub(super) fn run_reaping_orphans(mut cmd: Command) -> std::io::Result<std::process::ExitStatus> {
    let mut child = cmd.spawn()?;
    let own = Pid::from_raw(child.id() as i32);
    loop {
        if let Some(status) = child.try_wait()? {
            reap_orphans(own);
            return Ok(status);
        }
        reap_orphans(own);
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Reaps every exited child but `keep`.
pub(super) fn reap_orphans(keep: Pid) {
    loop {
        // WNOWAIT only looks; the child seen is reaped below unless it is `keep`.
        let seen = waitid(
            Id::All,
            WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT,
        );
        let pid = match seen.map(|status| status.pid()) {
            Ok(Some(pid)) if pid != keep => pid,
            _ => return,
        };
        let _ = waitpid(pid, Some(WaitPidFlag::WNOHANG));
    }
}

/// Writes "0" to each `cgroup.procs`: the calling process moves itself into the cgroup.
/// Runs between fork and exec, so it only makes syscalls on prepared buffers.
pub(super) fn join_cgroup_in_child(cmd: &mut Command, procs: Vec<CString>) {
    let join = move || -> std::io::Result<()> {
        for p in &procs {
            let fd = open(
                p.as_c_str(),
                OFlag::O_WRONLY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )?;
            // SAFETY: open just returned this descriptor; dropping it closes it.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            if write(&fd, b"0")? != 1 {
                return Err(std::io::Error::from(std::io::ErrorKind::WriteZero));
            }
        }
        Ok(())
    };
    // SAFETY: the hook only makes async-signal-safe syscalls (open, write, close) on C
    // strings built before the fork.
    unsafe { cmd.pre_exec(join) };
}

/// Points the config's network namespace at `path` (a namespace the runtime joins instead
/// of making one).
fn join_network_namespace(spec: &mut Spec, path: &Path) -> Result<()> {
    let mut linux = spec
        .linux()
        .clone()
        .ok_or_else(|| OciError::Spec("linux section missing".into()))?;
    let mut namespaces: Vec<_> = linux
        .namespaces()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.typ() != LinuxNamespaceType::Network)
        .collect();
    namespaces.push(
        oci_spec::runtime::LinuxNamespaceBuilder::default()
            .typ(LinuxNamespaceType::Network)
            .path(path.to_path_buf())
            .build()
            .map_err(|e| OciError::Spec(e.to_string()))?,
    );
    linux.set_namespaces(Some(namespaces));
    spec.set_linux(Some(linux));
    Ok(())
}

/// Runs the runtime (runsc) in a mount namespace of its own in which the network
/// namespace at `netns` shows no `/proc/sys/net/core` entries.
///
/// runsc 2022 (`isRootNS` in `runsc/sandbox/network.go`) refuses to take over a
/// namespace's links when `/proc/sys/net/core/rmem_default` exists in it, taking that
/// as the mark of the host's namespace; since Linux 6.11 every network namespace has it
/// (gVisor issue 10704), so it refuses every namespace. The folder is covered by an
/// empty read-only tmpfs, mounted while this child is in `netns` so that it covers that
/// namespace's entries only (proc's sysctl entries are per namespace): the host's
/// namespace still shows its own to runsc. Nothing else of runsc's view changes, the
/// mount goes with the runtime's last process, and the namespace is known not to be the
/// host's: `egress::prepare_namespace` made it. Runs between fork and exec: only
/// syscalls on descriptors opened and strings built before the fork.
fn hide_core_sysctls_in_child(cmd: &mut Command, netns: OwnedFd, host: OwnedFd) {
    use nix::mount::{mount, MsFlags};
    use nix::sched::{setns, CloneFlags};
    let hide = move || -> std::io::Result<()> {
        super::runner::private_mount_namespace()?;
        setns(&netns, CloneFlags::CLONE_NEWNET)?;
        mount(
            Some(c"tmpfs"),
            c"/proc/sys/net/core",
            Some(c"tmpfs"),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some(c"mode=0555,size=4k"),
        )?;
        setns(&host, CloneFlags::CLONE_NEWNET)?;
        Ok(())
    };
    // SAFETY: the hook only makes async-signal-safe syscalls (unshare, mount, setns) on
    // static C strings and descriptors opened before the fork.
    unsafe { cmd.pre_exec(hide) };
}

/// Mount points at or below `dir` in this process's mount namespace; `None` when the
/// mount table cannot be read.
fn mount_points_under(dir: &Path) -> Option<Vec<PathBuf>> {
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let points = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        // mountinfo escapes space, tab, newline and backslash in octal.
        .map(|p| {
            PathBuf::from(
                p.replace("\\040", " ")
                    .replace("\\011", "\t")
                    .replace("\\012", "\n")
                    .replace("\\134", "\\"),
            )
        })
        .filter(|p| p.starts_with(dir))
        .collect();
    Some(points)
}

/// Where the `i`th writable host path is attached idmapped, for gVisor.
fn writable_point(derived: &Path, i: usize) -> PathBuf {
    derived.join(format!("writable{i}"))
}

/// Points each writable bind of the config at its idmapped clone (gVisor).
fn point_writable_binds(spec: &mut Spec, d: &Decisions, derived: &Path) -> Result<()> {
    if d.writable.is_empty() {
        return Ok(());
    }
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    for (i, w) in d.writable.iter().enumerate() {
        let m = mounts
            .iter_mut()
            .find(|m| m.destination() == &w.destination && m.typ().as_deref() == Some("bind"))
            .ok_or_else(|| OciError::Spec(format!("mount {} missing", w.destination.display())))?;
        m.set_source(Some(writable_point(derived, i)));
        let mut options = m.options().clone().unwrap_or_default();
        for o in ["nosuid", "nodev"] {
            if !options.iter().any(|x| x == o) {
                options.push(o.to_string());
            }
        }
        m.set_options(Some(options));
    }
    spec.set_mounts(Some(mounts));
    Ok(())
}

/// One run's private places: the container id, the runtime's state directory
/// (`--root`), the derived bundle and the runtime's log.
pub(super) struct Work {
    pub(super) id: String,
    pub(super) state: PathBuf,
    pub(super) derived: PathBuf,
    pub(super) log: PathBuf,
}

impl OciRunner {
    pub fn run_bundle(
        &self,
        bundle: &Path,
        clock: &mut Stopwatch,
        on_start: &mut dyn FnMut(&StartInfo),
    ) -> Result<RunOutcome> {
        let decisions = self.decide(bundle)?;
        clock.lap(TimedStep::Prepare);
        let job = decisions
            .config
            .annotations()
            .as_ref()
            .and_then(|a| a.get(annotations::JOB_ID))
            .cloned()
            .unwrap_or_else(|| "job".into());
        let id = format!("{job}-{}", std::process::id());
        let work = self.ctx.state_dir.join(&id);
        let w = Work {
            state: work.join("state"),
            derived: work.join("bundle"),
            log: work.join("runtime.log"),
            id,
        };
        let (id, state, log) = (&w.id, &w.state, &w.log);
        // The run's folder and its derived bundle are traversable (the sandbox's host uid
        // reaches the rootfs through them); the runtime's state is the runtime's alone.
        {
            use std::os::unix::fs::DirBuilderExt;
            for (dir, mode, what) in [
                (&work, 0o711, "run directory"),
                (state, 0o700, "state directory"),
                (&w.derived, 0o711, "bundle directory"),
            ] {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(mode)
                    .create(dir)
                    .map_err(io(format!("{what} {}", dir.display())))?;
            }
        }
        // What the runtime does between our start and the program's is its own: one step.
        let result = self.lifecycle_run(&decisions, &w, &mut |info: &StartInfo| {
            clock.lap(TimedStep::Runtime);
            on_start(info);
            clock.lap(TimedStep::Audit);
        });
        clock.lap(TimedStep::Wait);
        // Whatever happened: no container, no state directory, no derived bundle.
        // `runsc run` deletes its container itself; anything left in the state directory
        // is a container to delete.
        if fs::read_dir(state)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
        {
            let mut delete = self.command(state, log, &["delete", "--force", id]);
            delete
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let _ = run_reaping_orphans(delete);
        }
        // A writable host path still attached below (its detach failed) would be
        // emptied by the removal: the run's folder is then left in place.
        if mount_points_under(&work).is_some_and(|m| m.is_empty()) {
            let _ = fs::remove_dir_all(&work);
        }
        result
    }

    pub(super) fn lifecycle_run(
        &self,
        d: &Decisions,
        w: &Work,
        on_start: &mut dyn FnMut(&StartInfo),
    ) -> Result<RunOutcome> {
        let derived = w.derived.as_path();
        let rootfs = match &d.overlay {
            Some((lower, keep)) => self.mount_overlay(d, lower, keep.as_deref(), derived)?,
            None => d
                .config
                .root()
                .as_ref()
                .map(|r| r.path().clone())
                .ok_or_else(|| OciError::Spec("root missing".into()))?,
        };
        let mut attached = Vec::new();
        let result = self
            .attach_writable(d, derived, &mut attached)
            .and_then(|()| self.lifecycle_in_root(d, w, &rootfs, on_start));
        for point in attached.iter().rev() {
            let _ = umount2(point, MntFlags::MNT_DETACH);
        }
        if let Some((lower, _)) = &d.overlay {
            let mut points = vec![rootfs.clone()];
            points.extend((0..lower.len()).map(|i| derived.join(format!("lower{i}"))));
            for p in points {
                // A path that is not a mount point (its mount failed) just fails.
                let _ = umount2(&p, MntFlags::MNT_DETACH);
            }
        }
        result
    }

    /// gVisor: attaches each writable host path idmapped at `derived/writableN` (the
    /// path's owner shown as the sandbox's user, no other id representable, nosuid and
    /// nodev), the source runsc is given instead of the plain bind. `attached` lists what
    /// was attached, for the caller to detach whatever happens.
    fn attach_writable(
        &self,
        d: &Decisions,
        derived: &Path,
        attached: &mut Vec<PathBuf>,
    ) -> Result<()> {
        for (i, w) in d.writable.iter().enumerate() {
            let fail = |e: String| OciError::Io {
                what: format!("the idmapped mount of {}", w.destination.display()),
                error: std::io::Error::other(e),
            };
            let ns =
                crate::native::idmap::idmap_userns(w.owner.0, w.sandbox.0, w.owner.1, w.sandbox.1)
                    .map_err(|e| fail(e.to_string()))?;
            let target = writable_point(derived, i);
            fs::create_dir_all(&target).map_err(io(format!("mount point {}", target.display())))?;
            crate::native::mounts::attach_idmapped(&w.source, &target, &ns, w.writable)
                .map_err(|e| fail(e.to_string()))?;
            attached.push(target);
        }
        Ok(())
    }

    /// Mounts an image root for the runtime: the layers under a writable layer in the
    /// run's state directory, at `derived/rootfs`; unmounted after the run.
    pub(super) fn mount_overlay(
        &self,
        d: &Decisions,
        lower: &[PathBuf],
        keep: Option<&Path>,
        derived: &Path,
    ) -> Result<PathBuf> {
        let (upper, work, merged) = (
            derived.join("upper"),
            derived.join("work"),
            derived.join("rootfs"),
        );
        for dir in [&upper, &work, &merged] {
            fs::create_dir_all(dir).map_err(io(format!("overlay directory {}", dir.display())))?;
        }
        // The root directory belongs to the sandbox's root, as the image's files do.
        let owner = d
            .config
            .linux()
            .as_ref()
            .and_then(|l| l.uid_mappings().as_ref())
            .and_then(|m| m.first())
            .map(|m| m.host_id());
        let group = d
            .config
            .linux()
            .as_ref()
            .and_then(|l| l.gid_mappings().as_ref())
            .and_then(|m| m.first())
            .map(|m| m.host_id());
        let sandbox_root = match (owner, group, &self.flavor) {
            (Some(u), Some(g), f) if !matches!(f, Flavor::Gvisor { .. }) => Some((u, g)),
            _ => None,
        };
        // A kept layer is the granted owner's directory: its `upper` and `work` are opened
        // beneath it without symlinks, owned by descriptor, and named by descriptor.
        let kept = keep
            .map(|k| crate::hostpath::KeptLayer::open(k, sandbox_root))
            .transpose()
            .map_err(|e| OciError::Io {
                what: "the kept layer".into(),
                error: std::io::Error::other(e.to_string()),
            })?;
        if let (None, Some((u, g))) = (&kept, sandbox_root) {
            // Without it the sandbox's root could not write its own root directory.
            chown(&upper, Some(Uid::from_raw(u)), Some(Gid::from_raw(g))).map_err(|e| {
                OciError::Io {
                    what: format!("giving {} to the sandbox's root", upper.display()),
                    error: e.into(),
                }
            })?;
        }
        let mut lowers: Vec<String> = lower.iter().map(|l| l.display().to_string()).collect();
        if let (Flavor::Gvisor { .. }, Some(base)) = (&self.flavor, owner) {
            // gVisor has no user namespace: show the layers (stored for the sandbox's id
            // range) with their image ids, through idmapped mounts of each layer.
            let gbase = group.unwrap_or(base);
            let ns = crate::native::idmap::idmap_userns_range(base, 0, gbase, 0, 65_536).map_err(
                |e| OciError::Io {
                    what: "idmap for the image layers".into(),
                    error: std::io::Error::other(e.to_string()),
                },
            )?;
            lowers.clear();
            for (i, l) in lower.iter().enumerate() {
                let target = derived.join(format!("lower{i}"));
                fs::create_dir_all(&target)
                    .map_err(io(format!("layer mount point {}", target.display())))?;
                crate::native::mounts::attach_idmapped(l, &target, &ns, false).map_err(|e| {
                    OciError::Io {
                        what: format!("layer {}", l.display()),
                        error: std::io::Error::other(e.to_string()),
                    }
                })?;
                lowers.push(target.display().to_string());
            }
        }
        let layer = match &kept {
            Some(kept) => kept.overlay_options(),
            None => format!("upperdir={},workdir={}", upper.display(), work.display()),
        };
        let options = format!("lowerdir={},{layer}", lowers.join(":"));
        nix::mount::mount(
            Some("overlay"),
            &merged,
            Some("overlay"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
            Some(options.as_str()),
        )
        .map_err(|e| OciError::Io {
            what: format!("overlay root at {}", merged.display()),
            error: e.into(),
        })?;
        Ok(merged)
    }

    /// With `net` egress, prepares the namespace the runtime joins and its gateway, runs,
    /// and stops the gateway once the container has ended.
    pub(super) fn lifecycle_in_root(
        &self,
        d: &Decisions,
        w: &Work,
        rootfs: &Path,
        on_start: &mut dyn FnMut(&StartInfo),
    ) -> Result<RunOutcome> {
        let Some(rules) = &d.egress else {
            return self.lifecycle_with_netns(d, w, rootfs, None, on_start);
        };
        // gVisor's own network stack reads the namespace's devices and routes, so it gets
        // the device; a runtime on the host's kernel gets the kernel path.
        let link = match self.flavor {
            Flavor::Gvisor { .. } => crate::native::egress::Link::Device,
            _ => crate::native::egress::Link::Kernel,
        };
        let (held, gateway) = crate::native::egress::prepare_namespace(rules, link)
            .map_err(|e| self.unenforceable("net egress", &e.to_string()))?;
        let outcome = self.lifecycle_with_netns(d, w, rootfs, Some(&held.path), on_start);
        let report = gateway.stop_after_sandbox();
        drop(held);
        outcome.map(|mut o| {
            o.egress = Some(report);
            o
        })
    }

    fn lifecycle_with_netns(
        &self,
        d: &Decisions,
        w: &Work,
        rootfs: &Path,
        netns: Option<&Path>,
        on_start: &mut dyn FnMut(&StartInfo),
    ) -> Result<RunOutcome> {
        let (id, state, derived, log) = (w.id.as_str(), &w.state, &w.derived, &w.log);
        let mut spec = self.derive_config(d, rootfs, id)?;
        point_writable_binds(&mut spec, d, derived)?;
        if let Some(path) = netns {
            join_network_namespace(&mut spec, path)?;
        }
        if d.overlay.is_some() {
            let mut root = spec
                .root()
                .clone()
                .ok_or_else(|| OciError::Spec("root missing".into()))?;
            root.set_path(rootfs.to_path_buf());
            root.set_readonly(Some(false));
            spec.set_root(Some(root));
        }
        // 0600 from creation: the config carries the job's environment.
        let config_path = derived.join("config.json");
        let json = serde_json::to_vec(&spec).map_err(|e| OciError::Spec(e.to_string()))?;
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&config_path)
                .and_then(|mut f| f.write_all(&json))
                .map_err(io(format!("derived config {}", config_path.display())))?;
        }
        let gvisor = matches!(self.flavor, Flavor::Gvisor { .. });
        let layout = CgroupLayout::detect(&self.cgroup_root)?;
        // gVisor: Covenant's cgroup holds the whole sandbox, with an allowance for the
        // sentry's and gofer's own memory and threads.
        let own_cgroup = if gvisor && d.limits != CgroupLimits::default() {
            // The program's process count is held by the sentry (RLIMIT_NPROC, see
            // `derive_config`); on the host, the ptrace platform adds stub processes per
            // task, so the host-side pids ceiling only bounds the sandbox as a whole.
            let limits = CgroupLimits {
                memory_bytes: d.limits.memory_bytes.map(|m| m + GVISOR_MEMORY_ALLOWANCE),
                pids: d
                    .limits
                    .pids
                    .map(|p| p.saturating_mul(GVISOR_PIDS_PER_TASK) + GVISOR_PIDS_ALLOWANCE),
                cpu: d.limits.cpu,
            };
            Some(RunCgroup::create(
                &layout,
                id,
                limits,
                self.ctx.owner.as_deref(),
            )?)
        } else {
            None
        };
        let pid_file = derived.with_file_name("container.pid");
        let pid_arg = pid_file.display().to_string();
        let bundle_arg = derived.display().to_string();
        let mut network_flags = Vec::new();
        if gvisor {
            network_flags.push(format!("--network={}", d.network));
            if !d.host_sockets.is_empty() {
                // The gofer may connect to host sockets; which ones is decided by the
                // broker (`host_sockets.rs`).
                network_flags.push("--host-uds=open".to_string());
            }
            if netns.is_some() {
                // runsc's default host GSO sees the link's generic segmentation offload
                // and has the packet socket carry virtio headers asking for offloads, which
                // the gateway reads as not its own (it asked the device for none).
                // Measured: with it, every TCP connection to an allowed name timed out
                // (refusals still came); without it, netstack segments and checksums
                // every packet itself and the connections go through.
                network_flags.push("--gso=false".to_string());
            }
        }
        // The runtime's first process is reparented to us once `create` returns.
        set_child_subreaper(true).map_err(|e| OciError::Io {
            what: "becoming the runtime's subreaper".into(),
            error: e.into(),
        })?;
        let (sfd, old_mask) = forwarded_signals().map_err(|e| OciError::Io {
            what: "signals".into(),
            error: e.into(),
        })?;
        let outcome = (|| {
            // Stopped (and its thread joined) when this closure returns, after runsc.
            let mut broker: Option<super::host_sockets::Broker> = None;
            let mut args: Vec<&str> = network_flags.iter().map(String::as_str).collect();
            // gVisor: `run` creates, starts, waits and deletes in one runsc process (each
            // runsc invocation costs tens of milliseconds); runc and crun: create + start.
            args.extend([
                if gvisor { "run" } else { "create" },
                "--bundle",
                &bundle_arg,
                "--pid-file",
                &pid_arg,
                id,
            ]);
            let mut create = self.command(state, log, &args);
            // The container gets a session of its own: no controlling terminal, so even a
            // runtime whose seccomp library lets TIOCSTI through cannot type into ours.
            let new_session = || -> std::io::Result<()> {
                let _ = setsid();
                Ok(())
            };
            // SAFETY: the hook only calls setsid, which is async-signal-safe.
            unsafe { create.pre_exec(new_session) };
            // gVisor: `runsc run` is the sandbox's lifeline (it starts the sandbox
            // `--attached`, which dies with it), so it dies with this process: a killed
            // supervisor (and with it the egress gateway) leaves no sandbox running.
            // Measured before: after a SIGKILL of `covenant-ctl run`, runsc, its sandbox
            // and its gofer kept running.
            if gvisor {
                let supervisor = Pid::this();
                let die_with_supervisor = move || -> std::io::Result<()> {
                    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
                    // The supervisor died before the line above: no signal would come.
                    if nix::unistd::getppid() != supervisor {
                        return Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
                    }
                    Ok(())
                };
                // SAFETY: the hook only makes async-signal-safe syscalls (prctl, getppid).
                unsafe { create.pre_exec(die_with_supervisor) };
            }
            // gVisor on the gateway's link: runsc sees that namespace as one it may take
            // the links of (see `hide_core_sysctls_in_child`).
            if let (true, Some(path)) = (gvisor, netns) {
                let open_ns = |p: &Path| -> Result<OwnedFd> {
                    fs::File::open(p)
                        .map(OwnedFd::from)
                        .map_err(io(format!("network namespace {}", p.display())))
                };
                hide_core_sysctls_in_child(
                    &mut create,
                    open_ns(path)?,
                    open_ns(Path::new("/proc/thread-self/ns/net"))?,
                );
            }
            // gVisor: the gofer guard, loaded last, so runsc and everything it starts
            // carry it (see `gofer_guard.rs`).
            if gvisor {
                let program = super::gofer_guard::compile().map_err(|e| {
                    self.unenforceable("fs.write", &format!("the gofer guard: {e}"))
                })?;
                let load = move || super::gofer_guard::load_in_child(&program);
                // SAFETY: the hook makes one system call (seccomp) on a program built
                // before the fork.
                unsafe { create.pre_exec(load) };
            }
            // gVisor with host sockets to reach: every connect of runsc and its helpers is
            // decided by this process (see `host_sockets.rs`); the listener comes back over
            // `broker_channel`.
            let broker_channel = if gvisor && !d.host_sockets.is_empty() {
                let (ours, theirs) = nix::sys::socket::socketpair(
                    nix::sys::socket::AddressFamily::Unix,
                    nix::sys::socket::SockType::SeqPacket,
                    None,
                    nix::sys::socket::SockFlag::SOCK_CLOEXEC,
                )
                .map_err(|e| OciError::Io {
                    what: "the host sockets' channel".into(),
                    error: e.into(),
                })?;
                let program = super::host_sockets::filter();
                let channel = std::os::fd::AsRawFd::as_raw_fd(&theirs);
                let load = move || super::host_sockets::load_in_child(&program, channel);
                // SAFETY: the hook makes system calls (seccomp, sendmsg, close) on memory
                // prepared before the fork.
                unsafe { create.pre_exec(load) };
                Some((ours, theirs))
            } else {
                None
            };
            if let Some(cg) = &own_cgroup {
                let procs = cg
                    .dirs()
                    .iter()
                    .map(|d| {
                        let procs = d.join("cgroup.procs");
                        CString::new(procs.as_os_str().as_bytes()).map_err(|_| OciError::Io {
                            what: format!("the run's cgroup {}", procs.display()),
                            error: std::io::Error::from(std::io::ErrorKind::InvalidInput),
                        })
                    })
                    .collect::<Result<_>>()?;
                join_cgroup_in_child(&mut create, procs);
            }
            let read_pid =
                || -> Option<i32> { fs::read_to_string(&pid_file).ok()?.trim().parse().ok() };
            let (pid, mut waiter) = if gvisor {
                let mut child = create
                    .spawn()
                    .map_err(io(format!("{} run", self.binary.display())))?;
                if let Some((ours, theirs)) = broker_channel {
                    drop(theirs);
                    let started = super::host_sockets::receive_listener(&ours).and_then(|l| {
                        super::host_sockets::Broker::start(l, &d.host_sockets, child.id() as i32)
                    });
                    match started {
                        Ok(b) => broker = Some(b),
                        Err(e) => {
                            let _ = child.kill();
                            let _ = child.wait();
                            return Err(self.unenforceable(
                                "the host sockets (org.opencovenant.host-sockets)",
                                &format!(
                                    "the supervisor could not take over runsc's connects: {e}"
                                ),
                            ));
                        }
                    }
                }
                let deadline = Instant::now() + Duration::from_secs(60);
                let pid = loop {
                    if let Some(pid) = read_pid() {
                        break pid;
                    }
                    if let Some(status) = child.try_wait().map_err(io("runsc run"))? {
                        return Err(runtime_failure(&self.binary, &["run"], &status, log, b""));
                    }
                    if Instant::now() > deadline {
                        let _ = child.kill();
                        return Err(OciError::Spec(
                            "runsc did not start the sandbox within 60 s".into(),
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(1));
                };
                (pid, Some(child))
            } else {
                let status = create
                    .status()
                    .map_err(io(format!("{} create", self.binary.display())))?;
                if !status.success() {
                    return Err(runtime_failure(
                        &self.binary,
                        &["create"],
                        &status,
                        log,
                        b"",
                    ));
                }
                let pid = read_pid()
                    .ok_or_else(|| OciError::Spec("the runtime wrote no valid pid file".into()))?;
                let mut start_args: Vec<&str> = network_flags.iter().map(String::as_str).collect();
                start_args.extend(["start", id]);
                self.lifecycle(state, log, &start_args)?;
                (pid, None)
            };
            // The container is in its cgroups (created and started; under gVisor, its
            // pid written): a warm-up helper the caller started has done its part, and is
            // reaped now rather than held (a task of this process's pids cgroup) for the
            // whole run.
            crate::native::cgroup_warmup::finish();
            let started = Instant::now();
            let watched = waiter.as_ref().map(|c| c.id() as i32).unwrap_or(pid);
            let pidfd = pidfd_open(watched).map_err(io("pidfd_open"))?;
            let cgroup = own_cgroup
                .as_ref()
                .map(|c| (c.version(), c.dirs().to_vec()))
                .or_else(|| {
                    let c = RunCgroup::existing(&layout, id);
                    (!c.dirs().is_empty()).then(|| (c.version(), c.dirs().to_vec()))
                });
            on_start(&StartInfo {
                runner: if gvisor { "gvisor" } else { "oci" },
                pid,
                cgroup: cgroup.clone(),
                // The runtime put it there, however it does.
                cgroup_entry: None,
                namespaces: d.namespaces.clone(),
                landlock: d.landlock.as_ref().map(|(_, p)| *p),
                seccomp_filters: d.seccomp_filters(),
                degradations: d.degradations.clone(),
            });
            let mut forward = |sig: Signal| {
                if sig == Signal::SIGKILL {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
                let _ = self
                    .command(
                        state,
                        log,
                        &["kill", id, sig.as_str().trim_start_matches("SIG")],
                    )
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            };
            let supervised =
                supervise(&pidfd, &sfd, d.timeout, started, &mut forward).map_err(|e| {
                    OciError::Io {
                        what: "waiting".into(),
                        error: e.into(),
                    }
                })?;
            let exit = match waiter.as_mut() {
                // `runsc run` exits with the container's status.
                Some(child) => {
                    // Its end is seen but not reaped until the broker has stopped: a zombie
                    // keeps its pid, so no process started later can take the pid the
                    // broker lets through.
                    let _ = waitid(
                        Id::Pid(Pid::from_raw(child.id() as i32)),
                        WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT,
                    );
                    if let Some(b) = broker.take() {
                        b.stop();
                    }
                    let status = child.wait().map_err(io("runsc run"))?;
                    reap_orphans(Pid::from_raw(0));
                    use std::os::unix::process::ExitStatusExt;
                    match (status.code(), status.signal()) {
                        (Some(c), _) => ExitKind::Exited(c),
                        (_, Some(s)) => ExitKind::Signaled(s),
                        _ => ExitKind::Killed,
                    }
                }
                None => match nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None) {
                    Ok(nix::sys::wait::WaitStatus::Exited(_, c)) => ExitKind::Exited(c),
                    Ok(nix::sys::wait::WaitStatus::Signaled(_, s, _)) => {
                        ExitKind::Signaled(s as i32)
                    }
                    _ => ExitKind::Killed,
                },
            };
            let usage = match &own_cgroup {
                Some(c) => c.usage(),
                None => RunCgroup::existing(&layout, id).usage(),
            };
            Ok(RunOutcome {
                exit,
                timed_out: supervised.timed_out,
                oom_killed: usage.oom_kills > 0,
                pids_limit_hits: usage.pids_limit_hits,
                duration: supervised.duration,
                cpu_time_ns: usage.cpu_time_ns,
                peak_memory_bytes: usage.peak_memory_bytes,
                namespaces: d.namespaces.clone(),
                landlock: d.landlock.as_ref().map(|(_, p)| *p),
                seccomp_filters: d.seccomp_filters(),
                cgroup_version: cgroup.map(|(v, _)| v),
                degradations_applied: d.degradations.clone(),
                signals_forwarded: supervised.forwarded.clone(),
                egress: None,
            })
        })();
        let _ = old_mask.thread_set_mask();
        if let Some(mut cg) = own_cgroup {
            cg.remove(Duration::from_secs(5))?;
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_are_found_below_a_folder_and_only_there() {
        let proc_mounts = mount_points_under(Path::new("/proc")).unwrap();
        assert!(
            proc_mounts.contains(&PathBuf::from("/proc")),
            "{proc_mounts:?}"
        );
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(mount_points_under(dir.path()), Some(Vec::new()));
    }
}
