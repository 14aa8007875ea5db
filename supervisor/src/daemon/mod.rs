//! `covenantd`: the supervisor daemon. It owns the store, the keys and every sandbox on
//! the node; clients talk HTTP/1.1 + JSON to it over a unix socket (`docs/api.md`).
//!
//! One tokio thread serves every connection and watches every job; the store is written
//! by the group-commit writer thread; each sandbox is cloned by its own single-threaded
//! shim process (`covenantd shim`), never from this multithreaded one.

pub mod agent;
pub mod api;
pub mod client;
pub mod http;
pub mod jobs;
pub mod metrics;
pub mod recovery;
pub mod routes;
pub mod shim;

use crate::store::group::AuditWriter;
use crate::store::jobs::JobState;
use crate::store::{AuditEvent, Store};
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
    /// Writes one job's agent may make through its socket.
    pub agent_writes: u64,
    /// The executable started as each job's shim.
    pub shim_exe: PathBuf,
}

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

fn ensure_home(home: &Path) -> Result<(), DaemonError> {
    use std::os::unix::fs::DirBuilderExt;
    for dir in [
        home.to_path_buf(),
        home.join("bundles"),
        home.join("agents"),
    ] {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o711)
                .create(&dir)
                .map_err(|e| DaemonError::Setup(format!("cannot create {}: {e}", dir.display())))?;
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
            "max_queue": daemon.config.max_queue, "per_subject": daemon.config.per_subject}),
    )]);
    if bound_here {
        eprintln!("covenantd: listening on {}", daemon.config.socket.display());
    } else {
        eprintln!("covenantd: listening on the socket systemd passed in");
    }
    if let Some(listener) = tcp {
        let d = daemon.clone();
        tokio::spawn(async move {
            while let Ok((stream, addr)) = listener.accept().await {
                let caller = Caller::Tcp {
                    addr: addr.to_string(),
                };
                let d = d.clone();
                tokio::spawn(http::serve(stream, move |req| {
                    Box::pin(routes::handle(d.clone(), caller.clone(), req))
                }));
            }
        });
    }
    let signal_name = loop {
        tokio::select! {
            accepted = unix.accept() => {
                if let Ok((stream, _)) = accepted {
                    let caller = match stream.peer_cred() {
                        Ok(c) => Caller::Unix { uid: c.uid(), gid: c.gid(), pid: c.pid() },
                        Err(_) => continue,
                    };
                    let d = daemon.clone();
                    tokio::spawn(http::serve(stream, move |req| {
                        Box::pin(routes::handle(d.clone(), caller.clone(), req))
                    }));
                }
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
    let _ = daemon
        .commit(
            vec![AuditEvent::new(
                "daemon.stopped",
                serde_json::json!({"pid": std::process::id(), "left_running": daemon.running()}),
            )],
            Vec::new(),
            true,
        )
        .await;
}
