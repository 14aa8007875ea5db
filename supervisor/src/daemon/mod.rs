//! `covenantd`: the supervisor daemon. It owns the store, the keys and every sandbox on
//! the node; clients talk HTTP/1.1 + JSON to it over a unix socket (`docs/api.md`).
//!
//! One tokio thread serves every connection and watches every job; the store is written
//! by the group-commit writer thread; each sandbox is cloned by its own single-threaded
//! shim process (`covenantd shim`), never from this multithreaded one.

pub mod agent;
pub mod api;
pub mod client;
pub mod connections;
pub mod http;
pub mod jobs;
pub mod metrics;
pub mod recovery;
pub mod request_audit;
pub mod routes;
pub mod shim;

use crate::store::group::AuditWriter;
use crate::store::jobs::JobState;
use crate::store::{AuditEvent, Store};
use connections::Peer;
use jobs::{Caller, Daemon};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// How the daemon runs; `covenantd --help` lists the flags.
#[derive(Debug, Clone)]
pub struct Config {
    pub home: PathBuf,
    pub socket: PathBuf,
    /// Optional TCP listener; requires `tcp_token`.
    pub listen: Option<SocketAddr>,
    pub tcp_token: Option<String>,
    pub max_jobs: usize,
    pub max_queue: usize,
    pub per_subject: usize,
    /// How long running jobs may finish after SIGTERM before they are killed.
    pub grace: Duration,
    /// Bytes of each output stream kept per job.
    pub output_limit: usize,
    /// Limits of the parent cgroup every sandbox runs under.
    pub cgroup_memory: Option<u64>,
    pub cgroup_pids: Option<u64>,
    /// Writes one job's agent may make through its socket, counted with every
    /// sub-intent under it (the lineage's root holds the count).
    pub agent_writes: u64,
    /// Bytes of memory items and agent audit events a lineage may store.
    pub agent_bytes: u64,
    /// Refused requests a lineage's agents may make; past it the asking agent's socket
    /// is closed.
    pub agent_refusals: u64,
    /// Connections open at once to one job's agent socket.
    pub agent_connections: usize,
    /// Connections open at once per caller (uid; all TCP clients together) on the operator
    /// socket; admins are not held to it.
    pub caller_connections: usize,
    /// Client connections open at once in total; admins may use a few more
    /// ([`connections::ADMIN_RESERVE`]).
    pub max_connections: usize,
    /// A client's time to send a request's headers, and again to send its body.
    pub request_timeout: Duration,
    /// Finished jobs whose status and output stay in memory for late readers.
    pub keep_finished: usize,
    /// Members of this group (besides root) see and control every job and all memory.
    pub admin_group: Option<u32>,
    /// The executable started as each job's shim.
    pub shim_exe: PathBuf,
}

impl Config {
    pub fn connection_bounds(&self) -> connections::Bounds {
        connections::Bounds {
            per_caller: self.caller_connections,
            per_agent: self.agent_connections,
            total: self.max_connections,
        }
    }

    /// Descriptors the daemon needs besides client connections: the store, listeners,
    /// each running job's pipes and control socket, each admitted job's agent listener.
    fn descriptors_besides_connections(&self) -> u64 {
        64 + 8 * self.max_jobs as u64 + 2 * (self.max_jobs + self.max_queue) as u64
    }
}

/// How often the agents' request counts are written as summary rows.
const AGENT_SUMMARY_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Setup(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Runs the daemon until SIGTERM or SIGINT; returns once it has shut down cleanly.
pub fn run(config: Config) -> Result<(), DaemonError> {
    if config.listen.is_some() && config.tcp_token.as_deref().is_none_or(str::is_empty) {
        return Err(DaemonError::Setup(
            "--listen needs --tcp-token-file: TCP clients must present a bearer token".into(),
        ));
    }
    // Two malloc arenas are plenty for one async thread and the writer, and keep the
    // daemon's resident size small.
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    let mut config = config;
    fit_connections_to_descriptors(&mut config)?;
    std::env::set_var("COVENANT_HOME", &config.home);
    ensure_home(&config.home)?;
    let mut store = Store::open(
        &config.home.join("covenant.db"),
        &config.home.join("supervisor.key"),
    )?;
    let mut opening = store.opening_events("covenantd")?;
    opening.extend(recover(&store, &config.home)?);
    store.append_batch_signed(&opening, true)?;
    let reader = Store::open(
        &config.home.join("covenant.db"),
        &config.home.join("supervisor.key"),
    )?;
    let writer = AuditWriter::start(store);
    apply_cgroup_limits(&config)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(4)
        .build()
        .map_err(|e| DaemonError::Setup(format!("tokio runtime: {e}")))?;
    let daemon = Daemon::new(config, writer.sender(), reader);
    let result = runtime.block_on(serve(daemon.clone()));
    drop(runtime);
    let store_after = {
        drop(daemon);
        writer.stop()
    };
    store_after.close(Vec::new())?;
    result
}

/// Lowers `max_connections` to what the descriptor limit (RLIMIT_NOFILE) leaves once the
/// jobs' own descriptors and the admins' reserve are counted, so that the bound is met
/// before the kernel's is: a connection past it is refused, not an `accept` that fails.
fn fit_connections_to_descriptors(config: &mut Config) -> Result<(), DaemonError> {
    let (soft, _) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_err(|e| DaemonError::Setup(format!("getrlimit(RLIMIT_NOFILE): {e}")))?;
    let room = soft
        .saturating_sub(config.descriptors_besides_connections())
        .saturating_sub(connections::ADMIN_RESERVE as u64);
    if room < 16 {
        return Err(DaemonError::Setup(format!(
            "the descriptor limit ({soft}) leaves no room for client connections with --max-jobs {} and --max-queue {}: raise it (LimitNOFILE=) or lower them",
            config.max_jobs, config.max_queue
        )));
    }
    if (config.max_connections as u64) > room {
        eprintln!(
            "covenantd: --max-connections {} lowered to {room} to fit the descriptor limit {soft}",
            config.max_connections
        );
        config.max_connections = room as usize;
    }
    Ok(())
}

/// The supplementary groups the peer held when it connected (`SO_PEERGROUPS`, Linux
/// 4.13). Empty when the kernel cannot say: the caller is then judged by its uid and
/// primary gid alone.
fn peer_groups(stream: &tokio::net::UnixStream) -> Vec<u32> {
    #[cfg(any(
        target_arch = "x86_64",
        target_arch = "x86",
        target_arch = "aarch64",
        target_arch = "arm",
        target_arch = "riscv64",
        target_arch = "s390x",
        target_arch = "powerpc64",
        target_arch = "loongarch64"
    ))]
    {
        // The asm-generic value; the libc crate does not name it.
        const SO_PEERGROUPS: libc::c_int = 59;
        let fd = std::os::fd::AsRawFd::as_raw_fd(stream);
        let mut groups = vec![0u32; 64];
        for _ in 0..2 {
            let mut len = (groups.len() * 4) as libc::socklen_t;
            // SAFETY: getsockopt writes at most `len` bytes into the buffer and sets `len`.
            let r = unsafe {
                libc::getsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    SO_PEERGROUPS,
                    groups.as_mut_ptr().cast(),
                    &mut len,
                )
            };
            if r == 0 {
                groups.truncate(len as usize / 4);
                return groups;
            }
            if std::io::Error::last_os_error().raw_os_error() != Some(libc::ERANGE) {
                break;
            }
            groups.resize(len as usize / 4 + 1, 0);
        }
    }
    let _ = stream;
    Vec::new()
}

/// Root is always an admin; so is a peer whose primary or supplementary groups include
/// the configured admin group.
fn is_admin(config: &Config, stream: &tokio::net::UnixStream, uid: u32, gid: u32) -> bool {
    uid == 0
        || config
            .admin_group
            .is_some_and(|admins| gid == admins || peer_groups(stream).contains(&admins))
}

/// The home and its folders. The home and `bundles` are traversable (0711): a sandbox's
/// host uid passes through them to its bundle's rootfs. `agents` holds each job's agent
/// socket and credential and is reached only by the daemon (the sandbox gets its folder
/// as a mount the daemon's side clones), so it is 0700; a folder an older build left
/// wider is tightened.
fn ensure_home(home: &Path) -> Result<(), DaemonError> {
    use std::os::unix::fs::DirBuilderExt;
    for (dir, mode) in [
        (home.to_path_buf(), 0o711),
        (home.join("bundles"), 0o711),
        (home.join("agents"), 0o700),
    ] {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(mode)
                .create(&dir)
                .map_err(|e| DaemonError::Setup(format!("cannot create {}: {e}", dir.display())))?;
        }
        let current = std::fs::metadata(&dir)
            .map_err(|e| DaemonError::Setup(format!("{}: {e}", dir.display())))?
            .permissions()
            .mode()
            & 0o7777;
        if current & !mode & 0o077 != 0 {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(current & mode))
                .map_err(|e| DaemonError::Setup(format!("chmod {}: {e}", dir.display())))?;
        }
    }
    Ok(())
}

/// Finds every job a previous daemon left queued or running, cleans up what it left and
/// records it as interrupted. Returns the audit events (written with the opening ones).
fn recover(store: &Store, home: &Path) -> Result<Vec<AuditEvent>, DaemonError> {
    let mut events = Vec::new();
    let mut rows = Vec::new();
    for mut row in store.unfinished_jobs()? {
        let cleaned = recovery::clean_job(home, &row.id, row.shim_pid);
        events.push(AuditEvent::new(
            "job.interrupted",
            serde_json::json!({"job": row.id, "was": row.state, "cleaned": cleaned}),
        ));
        row.reason = Some(format!(
            "the daemon stopped while the job was {}",
            row.state.as_str()
        ));
        row.state = JobState::Interrupted;
        row.ended_ms = Some(crate::store::audit::now_ms());
        rows.push(row);
    }
    if !rows.is_empty() {
        let mut writable = Store::open(store.path(), &home.join("supervisor.key"))?;
        writable.commit(&[], &rows, false)?;
    }
    // Agent sockets exist only for the daemon's running jobs; one left here belongs to a
    // job that was never admitted (the daemon died between creating it and the commit).
    if let Ok(entries) = std::fs::read_dir(home.join("agents")) {
        for e in entries.flatten() {
            if std::fs::remove_dir_all(e.path()).is_ok() {
                events.push(AuditEvent::new(
                    "daemon.orphan.removed",
                    serde_json::json!({"dir": e.path(), "reason": "left by a stopped daemon"}),
                ));
            }
        }
    }
    Ok(events)
}

/// Writes the daemon's own limits on the parent cgroup all sandboxes are created under.
fn apply_cgroup_limits(config: &Config) -> Result<(), DaemonError> {
    use covenant_runners::native::{CgroupLayout, CGROUP_PARENT};
    if config.cgroup_memory.is_none() && config.cgroup_pids.is_none() {
        return Ok(());
    }
    let layout = CgroupLayout::detect(Path::new("/sys/fs/cgroup"))
        .map_err(|e| DaemonError::Setup(format!("cgroup limits: {e}")))?;
    let write = |dir: &Path, file: &str, value: String| -> Result<(), DaemonError> {
        std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::write(dir.join(file), &value))
            .map_err(|e| {
                DaemonError::Setup(format!(
                    "cannot set the sandboxes' parent cgroup limit {}/{file} = {value}: {e}",
                    dir.display()
                ))
            })
    };
    match layout {
        CgroupLayout::V2 { root } => {
            let dir = root.join(CGROUP_PARENT);
            let _ = std::fs::write(root.join("cgroup.subtree_control"), "+memory +pids");
            if let Some(m) = config.cgroup_memory {
                write(&dir, "memory.max", m.to_string())?;
            }
            if let Some(p) = config.cgroup_pids {
                write(&dir, "pids.max", p.to_string())?;
            }
        }
        CgroupLayout::V1 { memory, pids, .. } => {
            if let Some(m) = config.cgroup_memory {
                let root = memory.ok_or_else(|| {
                    DaemonError::Setup("--cgroup-memory: no memory controller".into())
                })?;
                write(
                    &root.join(CGROUP_PARENT),
                    "memory.limit_in_bytes",
                    m.to_string(),
                )?;
            }
            if let Some(p) = config.cgroup_pids {
                let root = pids.ok_or_else(|| {
                    DaemonError::Setup("--cgroup-pids: no pids controller".into())
                })?;
                write(&root.join(CGROUP_PARENT), "pids.max", p.to_string())?;
            }
        }
    }
    Ok(())
}

/// The unix listener: from systemd socket activation (`LISTEN_FDS`), else bound at the
/// configured path with mode 0660 and group `covenant` when that group exists.
fn unix_listener(config: &Config) -> Result<(tokio::net::UnixListener, bool), DaemonError> {
    let activated = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        == Some(std::process::id())
        && std::env::var("LISTEN_FDS")
            .ok()
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or(0)
            >= 1;
    let std_listener = if activated {
        // SAFETY: systemd passed the listening socket as descriptor 3 to this process.
        let l = unsafe {
            libc::fcntl(3, libc::F_SETFD, libc::FD_CLOEXEC);
            <std::os::unix::net::UnixListener as std::os::fd::FromRawFd>::from_raw_fd(3)
        };
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
        l
    } else {
        let path = &config.socket;
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_socket() {
                return Err(DaemonError::Setup(format!(
                    "{} exists and is not a socket; refusing to replace it",
                    path.display()
                )));
            }
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(DaemonError::Setup(format!(
                    "another daemon answers on {}",
                    path.display()
                )));
            }
            let _ = std::fs::remove_file(path);
        }
        let l = std::os::unix::net::UnixListener::bind(path)
            .map_err(|e| DaemonError::Setup(format!("cannot listen on {}: {e}", path.display())))?;
        let group = nix::unistd::Group::from_name("covenant").ok().flatten();
        if let Some(g) = &group {
            let _ = nix::unistd::chown(path, None, Some(g.gid));
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
            .map_err(|e| DaemonError::Setup(format!("chmod {}: {e}", path.display())))?;
        l
    };
    std_listener
        .set_nonblocking(true)
        .map_err(|e| DaemonError::Setup(e.to_string()))?;
    let listener = tokio::net::UnixListener::from_std(std_listener)
        .map_err(|e| DaemonError::Setup(e.to_string()))?;
    Ok((listener, !activated))
}

async fn serve(daemon: Arc<Daemon>) -> Result<(), DaemonError> {
    use tokio::signal::unix::{signal, SignalKind};
    let (unix, bound_here) = unix_listener(&daemon.config)?;
    let tcp = match daemon.config.listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| DaemonError::Setup(format!("cannot listen on {addr}: {e}")))?,
        ),
        None => None,
    };
    let mut term =
        signal(SignalKind::terminate()).map_err(|e| DaemonError::Setup(e.to_string()))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| DaemonError::Setup(e.to_string()))?;
    daemon.record(vec![AuditEvent::new(
        "daemon.started",
        serde_json::json!({"pid": std::process::id(), "socket": daemon.config.socket,
            "tcp": daemon.config.listen.map(|a| a.to_string()), "max_jobs": daemon.config.max_jobs,
            "max_queue": daemon.config.max_queue, "per_subject": daemon.config.per_subject,
            "admin_group": daemon.config.admin_group, "max_connections": daemon.config.max_connections,
            "caller_connections": daemon.config.caller_connections,
            "agent_connections": daemon.config.agent_connections,
            "agent_refusals": daemon.config.agent_refusals,
            "request_timeout_ms": daemon.config.request_timeout.as_millis() as u64}),
    )]);
    if bound_here {
        eprintln!("covenantd: listening on {}", daemon.config.socket.display());
    } else {
        eprintln!("covenantd: listening on the socket systemd passed in");
    }
    let timeout = daemon.config.request_timeout;
    if let Some(listener) = tcp {
        let d = daemon.clone();
        tokio::spawn(async move {
            loop {
                let (stream, addr) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    // Out of descriptors or similar: wait instead of spinning on the error.
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(slot) = d.connections.admit(Peer::Tcp, false) else {
                    d.metrics.connection_refused("tcp");
                    continue;
                };
                let caller = Caller::Tcp {
                    addr: addr.to_string(),
                };
                let d = d.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    http::serve(stream, timeout, move |req| {
                        Box::pin(routes::handle(d.clone(), caller.clone(), req))
                    })
                    .await
                });
            }
        });
    }
    {
        let d = daemon.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(AGENT_SUMMARY_INTERVAL);
            tick.tick().await;
            loop {
                tick.tick().await;
                let mut events = jobs::agent_summaries(&d);
                events.extend(d.requests.take_summaries());
                if !events.is_empty() {
                    d.record(events);
                }
            }
        });
    }
    let signal_name = loop {
        tokio::select! {
            accepted = unix.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(cred) = stream.peer_cred() else { continue };
                let admin = is_admin(&daemon.config, &stream, cred.uid(), cred.gid());
                let Ok(slot) = daemon.connections.admit(Peer::Uid(cred.uid()), admin) else {
                    daemon.metrics.connection_refused("operator");
                    continue;
                };
                let caller = Caller::Unix { uid: cred.uid(), gid: cred.gid(), pid: cred.pid(), admin };
                let d = daemon.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    http::serve(stream, timeout, move |req| {
                        Box::pin(routes::handle(d.clone(), caller.clone(), req))
                    })
                    .await
                });
            }
            _ = term.recv() => break "TERM",
            _ = int.recv() => break "INT",
        }
    };
    shutdown(&daemon, signal_name).await;
    // A socket systemd passed in stays: it belongs to the socket unit.
    if bound_here {
        let _ = std::fs::remove_file(&daemon.config.socket);
    }
    Ok(())
}

/// Stops admitting, lets running jobs finish within the grace period, kills the rest,
/// and writes a signed checkpoint.
async fn shutdown(daemon: &Arc<Daemon>, signal: &str) {
    daemon.shutting_down.store(true, Ordering::SeqCst);
    let (running, queued) = daemon.counts();
    eprintln!(
        "covenantd: SIG{signal}: {running} running, {queued} queued; grace {:?}",
        daemon.config.grace
    );
    let _ = daemon
        .commit(
            vec![AuditEvent::new(
                "daemon.stopping",
                serde_json::json!({"signal": signal, "running": running, "queued": queued,
                    "grace_ms": daemon.config.grace.as_millis() as u64}),
            )],
            Vec::new(),
            false,
        )
        .await;
    for id in daemon.unfinished() {
        if let Ok(JobState::Cancelled) =
            jobs::kill_queued(daemon, &id, "the daemon is shutting down").await
        {
            continue;
        }
    }
    let mut ended = daemon.ended.subscribe();
    let deadline = tokio::time::Instant::now() + daemon.config.grace;
    while daemon.running() > 0 {
        if tokio::time::timeout_at(deadline, ended.changed())
            .await
            .is_err()
        {
            break;
        }
    }
    for id in daemon.unfinished() {
        let _ = jobs::kill(
            daemon,
            &id,
            libc::SIGKILL,
            "the grace period after SIGTERM ended",
        )
        .await;
    }
    while daemon.running() > 0 {
        if tokio::time::timeout(Duration::from_secs(10), ended.changed())
            .await
            .is_err()
        {
            break;
        }
    }
    let mut last = daemon.requests.take_summaries();
    last.push(AuditEvent::new(
        "daemon.stopped",
        serde_json::json!({"pid": std::process::id(), "left_running": daemon.running()}),
    ));
    let _ = daemon.commit(last, Vec::new(), true).await;
}
