//! `create`: the parent's side. Everything that can be refused is refused before any
//! state exists (config, hooks, policy, landlock support, seccomp); then the id is
//! claimed, the cgroup made, and the container's init cloned into its namespaces. The
//! parent writes the id maps, moves the init into the cgroup and lets it go; the init
//! builds the container and reports "ready", then waits at the start barrier (a unix
//! socket in the container's state directory) for `start`. The parent records the
//! state, runs the create-time hooks and exits: the init outlives it.

use crate::audit;
use crate::cgroups::Cgroup;
use crate::config::{self, field};
use crate::error::RuntimeError;
use crate::hooks::{self, HookSet};
use crate::init::{child_main, ChildContext};
use crate::mounts::BindSource;
use crate::policy::RuntimePolicy;
use crate::state::{self, Record, Root, Status, START_SOCKET};
use crate::step::StepError;
use covenant_policy::annotations::{self, LandlockPolicy};
use covenant_policy::Degradation;
use covenant_runners::mount_api;
use covenant_runners::native::idmap::idmap_userns_lines;
use covenant_runners::native::landlock as ll;
use covenant_runners::native::seccomp as sc;
use covenant_supervisor::store::Kind;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

type Result<T> = std::result::Result<T, RuntimeError>;

#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    pub id: String,
    pub bundle: PathBuf,
    pub pid_file: Option<PathBuf>,
    pub console_socket: Option<PathBuf>,
    pub preserve_fds: u32,
    /// The init joins a new session keyring of its own (not `--no-new-keyring`), so the
    /// container cannot reach the keys of the session that ran the runtime.
    pub new_keyring: bool,
}

/// A created container: its record and its init.
pub struct Created {
    pub record: Record,
    pub pid: Pid,
    /// The capability the container carried, verified.
    pub grant: Option<covenant_policy::Grant>,
}

/// Landlock from Covenant's annotation, if the config carries one: what this kernel
/// enforces of it, decided now (fail closed unless a degradation is accepted).
fn landlock_of(spec: &Spec) -> Result<Option<(LandlockPolicy, ll::LandlockPlan)>> {
    let notes = spec.annotations().clone().unwrap_or_default();
    let Some(text) = notes.get(annotations::LANDLOCK) else {
        return Ok(None);
    };
    let policy: LandlockPolicy = serde_json::from_str(text).map_err(|e| {
        field(
            format!("annotations.{}", annotations::LANDLOCK),
            e.to_string(),
        )
    })?;
    let accepted: Vec<Degradation> = match notes.get(annotations::DEGRADATIONS) {
        Some(t) => serde_json::from_str(t).map_err(|e| {
            field(
                format!("annotations.{}", annotations::DEGRADATIONS),
                e.to_string(),
            )
        })?,
        None => Vec::new(),
    };
    let plan = ll::check_support(&policy, ll::kernel_abi(), &accepted).map_err(|e| {
        field(
            format!("annotations.{}", annotations::LANDLOCK),
            e.to_string(),
        )
    })?;
    Ok(Some((policy, plan)))
}

/// A config that passed every check, and what the checks opened.
pub struct Checked {
    pub bundle: PathBuf,
    pub spec: Spec,
    pub prepared: config::Prepared,
    pub hooks: HookSet,
    pub grant: Option<covenant_policy::Grant>,
    /// Each bind mount's source, held open since it was checked, and its idmapped tree
    /// (by mount index).
    pub bind_sources: Vec<Option<BindSource>>,
}

/// Checks everything about `opts` that needs no state; returns the loaded config.
pub fn check(root: &Root, policy: &RuntimePolicy, opts: &CreateOptions) -> Result<Checked> {
    state::check_id(&opts.id)?;
    let bundle = std::fs::canonicalize(&opts.bundle).map_err(|e| config::ConfigError::Bundle {
        bundle: opts.bundle.clone(),
        reason: e.to_string(),
    })?;
    let (spec, idmaps) = config::load_with_idmaps(&bundle)?;
    let prepared = config::prepare(&bundle, &spec)?;
    let hooks = HookSet::from_spec(&spec);
    hooks.check(&bundle, policy.allow_bundle_hooks)?;
    let pinned = pin_bind_sources(&bundle, &spec)?;
    let real: Vec<Option<PathBuf>> = pinned
        .iter()
        .map(|p| p.as_ref().map(|(_, r)| r.clone()))
        .collect();
    let grant = if policy.require_capability
        || spec
            .annotations()
            .as_ref()
            .is_some_and(|a| a.contains_key(crate::policy::CAPABILITY_ANNOTATION))
    {
        let inits: Vec<i32> = root
            .ids()?
            .iter()
            .filter_map(|id| root.load(id).ok())
            .filter(state::init_alive)
            .map(|r| r.pid)
            .collect();
        policy.check(&spec, &real, &crate::policy::shareable_namespaces(&inits))?
    } else {
        policy.check(&spec, &real, &[])?
    };
    let bind_sources = idmapped_sources(pinned, &idmaps, &spec)?;
    Ok(Checked {
        bundle,
        spec,
        prepared,
        hooks,
        grant,
        bind_sources,
    })
}

/// Each bind source with, for an idmapped mount, its tree: the pinned source cloned
/// (with its submounts for `rbind`) and idmapped through a user namespace made for it
/// (its submounts too for `ridmap`). The init attaches the tree as it is.
fn idmapped_sources(
    pinned: Vec<Option<(OwnedFd, PathBuf)>>,
    idmaps: &[Option<config::Idmap>],
    spec: &Spec,
) -> Result<Vec<Option<BindSource>>> {
    let mounts: Vec<_> = spec.mounts().iter().flatten().collect();
    let mut out = Vec::new();
    for (i, p) in pinned.into_iter().enumerate() {
        let Some((checked, _)) = p else {
            out.push(None);
            continue;
        };
        let idmapped = match idmaps.get(i).and_then(Option::as_ref) {
            None => None,
            Some(map) => {
                let rbind = mounts
                    .get(i)
                    .and_then(|m| m.options().as_ref())
                    .is_some_and(|o| o.iter().any(|o| o == "rbind"));
                let at = format!("mounts[{i}]");
                let userns = idmap_userns_lines(&map.uid, &map.gid)
                    .map_err(|e| field(&at, format!("idmap: {e}")))?;
                let tree = mount_api::clone_fd_tree(&checked, rbind)
                    .map_err(|e| field(&at, format!("idmap: clone the source: {e}")))?;
                mount_api::set_attributes(&tree, 0, Some(&userns), map.recursive).map_err(|e| {
                    field(
                        &at,
                        format!("idmap: the source's filesystem refuses an idmapped mount: {e}"),
                    )
                })?;
                Some(tree)
            }
        };
        out.push(Some(BindSource { checked, idmapped }));
    }
    Ok(out)
}

/// Creates the container, and records it (or the refusal) when the node audits.
pub fn create(root: &Root, policy: &RuntimePolicy, opts: &CreateOptions) -> Result<Created> {
    let result = create_container(root, policy, opts);
    match &result {
        Err(e) => {
            // The refusal stands whether or not the store takes it.
            let _ = audit::record(
                policy,
                Kind::ContainerRefused,
                serde_json::json!({"id": opts.id, "bundle": opts.bundle, "reason": e.to_string()}),
            );
        }
        Ok(c) => {
            let recorded = audit::record(
                policy,
                Kind::ContainerCreated,
                serde_json::json!({
                    "id": opts.id,
                    "bundle": c.record.bundle,
                    "pid": c.record.pid,
                    "capability": audit::describe_grant(c.grant.as_ref()),
                }),
            );
            // Nothing of the container has run yet: unaudited, it is removed again.
            if let Err(e) = recorded {
                let _ = crate::lifecycle::delete(root, &opts.id, true);
                return Err(e);
            }
        }
    }
    result
}

fn create_container(root: &Root, policy: &RuntimePolicy, opts: &CreateOptions) -> Result<Created> {
    let Checked {
        bundle,
        spec,
        prepared,
        hooks,
        grant,
        bind_sources: pinned,
    } = check(root, policy, opts)?;
    let landlock = landlock_of(&spec)?;
    let seccomp = spec
        .linux()
        .as_ref()
        .and_then(|l| l.seccomp().as_ref())
        .map(sc::compile)
        .transpose()
        .map_err(|e| field("linux.seccomp", e.to_string()))?;
    let dir = root.claim(&opts.id)?;
    let linux = spec.linux().as_ref().expect("checked by config::prepare");
    let cgroup = match Cgroup::resolve(linux.cgroups_path().as_deref(), &opts.id) {
        Ok(c) => c,
        Err(e) => {
            let _ = root.remove(&opts.id);
            return Err(e.into());
        }
    };
    let result = root
        .save_cgroups(&opts.id, &cgroup.paths())
        .map_err(RuntimeError::from)
        .and_then(|()| {
            spawn(
                root, &dir, &bundle, &spec, &prepared, &hooks, &cgroup, opts, landlock, seccomp,
                pinned,
            )
        });
    if result.is_err() {
        cgroup.remove();
        let _ = root.remove(&opts.id);
    }
    result.map(|c| Created { grant, ..c })
}

#[allow(clippy::too_many_arguments)]
fn spawn(
    root: &Root,
    dir: &Path,
    bundle: &Path,
    spec: &Spec,
    prepared: &config::Prepared,
    hooks: &HookSet,
    cgroup: &Cgroup,
    opts: &CreateOptions,
    landlock: Option<(LandlockPolicy, ll::LandlockPlan)>,
    seccomp: Option<sc::CompiledSeccomp>,
    bind_sources: Vec<Option<BindSource>>,
) -> Result<Created> {
    cgroup.create()?;
    cgroup.apply(&resources_with_devices(spec))?;
    let barrier = bind_barrier(dir)?;
    let console = match &opts.console_socket {
        Some(p) => Some(connect_console(p)?),
        None if spec.process().as_ref().and_then(|p| p.terminal()) == Some(true) => {
            return Err(field("process.terminal", "a terminal needs --console-socket").into())
        }
        None => None,
    };
    // Namespaces joined by path are opened now, in the host's mount namespace.
    let mut join = Vec::new();
    let mut pid_ns: Option<OwnedFd> = None;
    let mut time_ns: Option<OwnedFd> = None;
    let mut new_time = false;
    let mut flags = 0;
    for (i, ns) in prepared.namespaces.iter().enumerate() {
        match (&ns.path, ns.typ) {
            (Some(path), typ) => {
                let fd = nix::fcntl::open(
                    path,
                    nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
                    nix::sys::stat::Mode::empty(),
                )
                .map_err(|e| {
                    field(
                        format!("linux.namespaces[{i}].path"),
                        format!("{}: {e}", path.display()),
                    )
                })?;
                // SAFETY: open returned a fresh descriptor.
                let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                check_ns_type(&fd, typ).map_err(|r| {
                    field(
                        format!("linux.namespaces[{i}].path"),
                        format!("{}: {r}", path.display()),
                    )
                })?;
                if typ == LinuxNamespaceType::Pid {
                    pid_ns = Some(fd);
                } else if typ == LinuxNamespaceType::Time {
                    time_ns = Some(fd);
                } else if typ == LinuxNamespaceType::User {
                    join.insert(0, (typ, fd));
                } else {
                    join.push((typ, fd));
                }
            }
            (None, LinuxNamespaceType::Cgroup) => {}
            // CLONE_NEWTIME is no clone() flag: the parent unshares it for its children.
            (None, LinuxNamespaceType::Time) => new_time = true,
            (None, typ) => flags |= typ as i32,
        }
    }
    let has = |t: LinuxNamespaceType| prepared.namespaces.iter().any(|n| n.typ == t);
    let new_userns = flags & libc::CLONE_NEWUSER != 0;
    if let Some(fd) = &pid_ns {
        nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWPID)
            .map_err(|e| field("linux.namespaces", format!("join pid namespace: {e}")))?;
    }
    enter_time_namespace(spec, new_time, time_ns.as_ref())?;
    let create_container_hooks = hooks::identities(&hooks.create_container);
    let (sync_rd, sync_wr) = pipe()?;
    let (report_rd, report_wr) = pipe()?;
    // SAFETY: a fork-like clone (no new stack) of a single-threaded process; the child
    // continues in child_main and never returns into the caller's frames.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid < 0 {
        return Err(RuntimeError::Sys {
            what: "clone the container's init",
            errno: nix::errno::Errno::last(),
        });
    }
    if pid == 0 {
        drop((sync_wr, report_rd));
        child_main(ChildContext {
            spec,
            prepared,
            bundle,
            sync: sync_rd,
            report: report_wr,
            barrier: Some(barrier),
            bind_sources,
            join,
            new_cgroupns: has(LinuxNamespaceType::Cgroup)
                && !prepared
                    .namespaces
                    .iter()
                    .any(|n| n.typ == LinuxNamespaceType::Cgroup && n.path.is_some()),
            has_mountns: has(LinuxNamespaceType::Mount),
            has_utsns: has(LinuxNamespaceType::Uts),
            userns: new_userns,
            console,
            preserve_fds: opts.preserve_fds,
            new_keyring: opts.new_keyring,
            seccomp,
            landlock,
            create_container_hooks,
        });
    }
    drop((sync_rd, report_wr, barrier, console, join, bind_sources));
    let pid = Pid::from_raw(pid as i32);
    let abort = |e: RuntimeError| {
        let _ = kill(pid, Signal::SIGKILL);
        let _ = waitpid(pid, None);
        e
    };
    if new_userns {
        write_id_maps(pid, spec).map_err(abort)?;
    }
    cgroup.add(pid.as_raw()).map_err(|e| abort(e.into()))?;
    nix::unistd::write(&sync_wr, b"g").map_err(|e| {
        abort(RuntimeError::Sys {
            what: "release the container's init",
            errno: e,
        })
    })?;
    // `M`, then `R`, mean mounted and ready (the init keeps the pipe open while it
    // waits); anything else is an error the init wrote before it exited.
    let mut report = std::fs::File::from(report_rd);
    await_report(&mut report, b'M').map_err(abort)?;
    let pid_start = state::proc_stat(pid.as_raw()).map(|(_, s)| s).unwrap_or(0);
    let record = Record {
        id: opts.id.clone(),
        bundle: bundle.to_path_buf(),
        pid: pid.as_raw(),
        pid_start,
        created: state::now(),
        started: false,
        annotations: spec
            .annotations()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
        cgroup_dirs: cgroup.paths(),
        freezer: cgroup.freezer(),
        hooks: hooks.clone(),
        namespaces: prepared.namespaces.iter().map(|n| n.proc_name()).collect(),
        userns: has(LinuxNamespaceType::User),
        rootfs: prepared.rootfs.clone(),
        // SAFETY: geteuid has no failure mode.
        owner: unsafe { libc::geteuid() },
        seccomp: spec.linux().as_ref().and_then(|l| l.seccomp().clone()),
        personality: spec
            .linux()
            .as_ref()
            .and_then(|l| l.personality().as_ref())
            .map(|p| p.domain()),
    };
    root.save(&record).map_err(|e| abort(e.into()))?;
    if let Some(p) = &opts.pid_file {
        write_pid_file(p, pid.as_raw()).map_err(abort)?;
    }
    let st = state::hook_state(&record, Status::Created);
    for (kind, list) in [
        ("createRuntime", &hooks.create_runtime),
        ("prestart", &hooks.prestart),
    ] {
        hooks::run(kind, list, &st).map_err(|e| abort(e.into()))?;
    }
    // The init runs the createContainer hooks in the container's namespaces, then
    // pivots and reports ready.
    let body = serde_json::to_vec(&st).expect("a state serialises");
    let mut framed = (body.len() as u32).to_be_bytes().to_vec();
    framed.extend_from_slice(&body);
    write_all(&sync_wr, &framed).map_err(|errno| {
        abort(RuntimeError::Sys {
            what: "send the container's state to its init",
            errno,
        })
    })?;
    await_report(&mut report, b'R').map_err(abort)?;
    // The container is recorded: the init may go on to the barrier. Had this process
    // died before, the init would have read end-of-file here and exited.
    nix::unistd::write(&sync_wr, b"c").map_err(|e| {
        abort(RuntimeError::Sys {
            what: "commit the container's init",
            errno: e,
        })
    })?;
    Ok(Created {
        record,
        pid,
        grant: None,
    })
}

/// Writes all of `buf` to a pipe.
fn write_all(fd: &OwnedFd, mut buf: &[u8]) -> nix::Result<()> {
    while !buf.is_empty() {
        match nix::unistd::write(fd, buf) {
            Ok(n) => buf = &buf[n..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads the init's next report byte: `want`, or the error it wrote before it exited.
fn await_report(report: &mut std::fs::File, want: u8) -> Result<()> {
    let mut buf = vec![0u8; 1];
    if report.read(&mut buf).unwrap_or(0) == 0 {
        buf.clear();
    }
    if buf.first() == Some(&want) {
        return Ok(());
    }
    let _ = report.read_to_end(&mut buf);
    let (step, detail) = if buf.is_empty() {
        (
            "container setup".to_string(),
            "the container's init died before it was ready".to_string(),
        )
    } else {
        StepError::decode(&buf)
    };
    Err(RuntimeError::Setup { step, detail })
}

/// The config's resources, with an allow rule for each device it lists (as runc does:
/// a device the config creates is one it may use).
fn resources_with_devices(spec: &Spec) -> oci_spec::runtime::LinuxResources {
    let linux = spec.linux().as_ref();
    let mut r = linux
        .and_then(|l| l.resources().clone())
        .unwrap_or_default();
    let mut rules = r.devices().clone().unwrap_or_default();
    for d in linux.and_then(|l| l.devices().clone()).unwrap_or_default() {
        let mut rule = oci_spec::runtime::LinuxDeviceCgroup::default();
        rule.set_allow(true);
        rule.set_typ(Some(d.typ()));
        rule.set_major(Some(d.major()));
        rule.set_minor(Some(d.minor()));
        rule.set_access(Some("rwm".into()));
        rules.push(rule);
    }
    r.set_devices(Some(rules));
    r
}

/// Opens every bind source once (`O_PATH`, symlinks followed) and returns the
/// descriptor with the path it really is. The policy judges that path; the init binds
/// the name and then checks that the mount's root is this very object, so a source
/// swapped after the check is refused, not mounted.
fn pin_bind_sources(bundle: &Path, spec: &Spec) -> Result<Vec<Option<(OwnedFd, PathBuf)>>> {
    let mut out = Vec::new();
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        let (Some(source), true) = (m.source(), crate::mounts::is_bind_mount(m)) else {
            out.push(None);
            continue;
        };
        let source = if source.is_absolute() {
            source.clone()
        } else {
            bundle.join(source)
        };
        let f = format!("mounts[{i}].source");
        let fd = nix::fcntl::open(
            &source,
            nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| field(&f, format!("{}: {e}", source.display())))?;
        // SAFETY: open returned a fresh descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let real = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .map_err(|e| field(&f, format!("{}: {e}", source.display())))?;
        out.push(Some((fd, real)));
    }
    Ok(out)
}

/// Puts this process's future children (the init) in the container's time namespace:
/// a new one with the config's clock offsets, or one joined by path. Like the PID
/// namespace, it changes only what this process forks next.
fn enter_time_namespace(spec: &Spec, new: bool, join: Option<&OwnedFd>) -> Result<()> {
    const CLONE_NEWTIME: libc::c_int = 0x80;
    if let Some(fd) = join {
        // SAFETY: setns with a namespace descriptor this process owns.
        if unsafe { libc::setns(fd.as_raw_fd(), CLONE_NEWTIME) } != 0 {
            return Err(field(
                "linux.namespaces",
                format!("join time namespace: {}", std::io::Error::last_os_error()),
            )
            .into());
        }
    }
    if !new {
        return Ok(());
    }
    // SAFETY: unshare with a namespace flag; affects this process's future children.
    if unsafe { libc::unshare(CLONE_NEWTIME) } != 0 {
        return Err(field(
            "linux.namespaces",
            format!("new time namespace: {}", std::io::Error::last_os_error()),
        )
        .into());
    }
    let offsets = spec
        .linux()
        .as_ref()
        .and_then(|l| l.time_offsets().clone())
        .unwrap_or_default();
    let text: String = offsets
        .iter()
        .map(|(clock, o)| {
            format!(
                "{clock} {} {}\n",
                o.secs().unwrap_or(0),
                o.nanosecs().unwrap_or(0)
            )
        })
        .collect();
    if !text.is_empty() {
        std::fs::write("/proc/self/timens_offsets", text)
            .map_err(|e| field("linux.timeOffsets", e.to_string()))?;
    }
    Ok(())
}

fn check_ns_type(fd: &OwnedFd, typ: LinuxNamespaceType) -> std::result::Result<(), String> {
    const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
    // SAFETY: NS_GET_NSTYPE takes no argument and returns a CLONE_NEW* value.
    let got = unsafe { libc::ioctl(fd.as_raw_fd(), NS_GET_NSTYPE) };
    if got < 0 {
        return Err("is not a namespace file".into());
    }
    if got != typ as i32 {
        return Err(format!("is not a {typ} namespace"));
    }
    Ok(())
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|errno| RuntimeError::Sys {
        what: "pipe",
        errno,
    })
}

/// Binds the start barrier in the container's state directory. A long `--root` would
/// overflow a socket path, so it is bound relative to the directory.
fn bind_barrier(dir: &Path) -> Result<OwnedFd> {
    let cwd = std::env::current_dir().ok();
    let io = |e: std::io::Error| RuntimeError::Io {
        what: "bind the start barrier",
        path: dir.join(START_SOCKET),
        source: e,
    };
    std::env::set_current_dir(dir).map_err(io)?;
    let listener = UnixListener::bind(START_SOCKET);
    if let Some(c) = cwd {
        let _ = std::env::set_current_dir(c);
    }
    Ok(OwnedFd::from(listener.map_err(io)?))
}

fn connect_console(path: &Path) -> Result<OwnedFd> {
    let s = std::os::unix::net::UnixStream::connect(path).map_err(|e| RuntimeError::Io {
        what: "connect to the console socket",
        path: path.to_path_buf(),
        source: e,
    })?;
    Ok(OwnedFd::from(s))
}

fn write_id_maps(pid: Pid, spec: &Spec) -> Result<()> {
    let linux = spec.linux().as_ref().expect("checked");
    for (file, maps, name) in [
        ("uid_map", linux.uid_mappings(), "linux.uidMappings"),
        ("gid_map", linux.gid_mappings(), "linux.gidMappings"),
    ] {
        let text: String = maps
            .iter()
            .flatten()
            .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
            .collect();
        std::fs::write(format!("/proc/{pid}/{file}"), text)
            .map_err(|e| field(name, e.to_string()))?;
    }
    Ok(())
}

/// Writes the pid file atomically (a reader never sees it half written).
pub fn write_pid_file(path: &Path, pid: i32) -> Result<()> {
    let tmp = path.with_extension("covenant-tmp");
    let io = |e: std::io::Error| RuntimeError::Io {
        what: "write the pid file",
        path: path.to_path_buf(),
        source: e,
    };
    std::fs::write(&tmp, pid.to_string()).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}
