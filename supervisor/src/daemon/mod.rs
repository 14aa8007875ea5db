//! `covenantd`: the supervisor daemon. It owns the store, the keys and every sandbox on
//! the node; clients talk HTTP/1.1 + JSON to it over a unix socket (`docs/api.md`).
//!
//! One tokio thread serves every connection and watches every job; the store is written
//! by the group-commit writer thread; each sandbox is cloned by its own single-threaded
//! shim process (`covenantd shim`), never from this multithreaded one.

pub mod admission;
pub mod agent;
mod agent_socket;
pub mod api;
pub mod client;
pub mod config;
pub mod connections;
pub mod control;
pub mod driver;
pub mod http;
pub mod lineage;
pub mod memory;
pub mod metrics;
mod peer;
mod pool;
pub mod recovery;
pub mod request_audit;
pub mod routes;
mod setup;
pub mod shim;
pub mod state;

pub use config::{Config, DaemonError};

use crate::store::group::AuditWriter;
use crate::store::jobs::JobState;
use crate::store::Kind;
use crate::store::{AuditEvent, Store};
use api::Caller;
use connections::Peer;
use setup::{
    apply_cgroup_limits, ensure_home, fit_connections_to_descriptors, recover, unix_listener,
};
use state::Daemon;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// How often the agents' request counts are written as summary rows.
const AGENT_SUMMARY_INTERVAL: Duration = Duration::from_secs(60);

/// The page cache of each of the daemon's two store connections, in KiB.
const DAEMON_CACHE_KIB: u32 = 256;

/// Runs the daemon until SIGTERM or SIGINT; returns once it has shut down cleanly.
pub fn run(config: Config) -> Result<(), DaemonError> {
    if config.listen.is_some() && config.tcp_token.as_deref().is_none_or(str::is_empty) {
        return Err(DaemonError::TcpWithoutToken);
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
    // The daemon's resident size: each connection would otherwise keep up to 2 MB of
    // pages for as long as the daemon runs.
    store.limit_cache(DAEMON_CACHE_KIB)?;
    reader.limit_cache(DAEMON_CACHE_KIB)?;
    let writer = AuditWriter::start(store);
    apply_cgroup_limits(&config)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(4)
        .build()
        .map_err(|e| DaemonError::io("tokio runtime", e))?;
    let (daemon, starts) = Daemon::new(config, writer.sender(), reader);
    let result = runtime.block_on(async {
        tokio::spawn(driver::run_starts(daemon.clone(), starts));
        serve(daemon.clone()).await
    });
    drop(runtime);
    let store_after = {
        drop(daemon);
        writer.stop()
    };
    store_after.close(Vec::new())?;
    result
}

async fn serve(daemon: Arc<Daemon>) -> Result<(), DaemonError> {
    use tokio::signal::unix::{signal, SignalKind};
    let (unix, bound_here) = unix_listener(&daemon.config)?;
    let tcp = match daemon.config.listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| DaemonError::io(format!("cannot listen on {addr}"), e))?,
        ),
        None => None,
    };
    let mut term =
        signal(SignalKind::terminate()).map_err(|e| DaemonError::io("SIGTERM handler", e))?;
    let mut int =
        signal(SignalKind::interrupt()).map_err(|e| DaemonError::io("SIGINT handler", e))?;
    daemon.record(vec![AuditEvent::new(
        Kind::DaemonStarted,
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
                let mut events = lineage::agent_summaries(&d);
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
                let admin = peer::is_admin(&daemon.config, &stream, cred.uid(), cred.gid());
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
    daemon.pool.drain().await;
    let (running, queued) = daemon.counts();
    eprintln!(
        "covenantd: SIG{signal}: {running} running, {queued} queued; grace {:?}",
        daemon.config.grace
    );
    let _ = daemon
        .commit(
            vec![AuditEvent::new(
                Kind::DaemonStopping,
                serde_json::json!({"signal": signal, "running": running, "queued": queued,
                    "grace_ms": daemon.config.grace.as_millis() as u64}),
            )],
            Vec::new(),
            false,
        )
        .await;
    for id in daemon.unfinished() {
        if let Ok(JobState::Cancelled) =
            control::kill_queued(daemon, &id, "the daemon is shutting down").await
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
        let _ = control::kill(
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
        Kind::DaemonStopped,
        serde_json::json!({"pid": std::process::id(), "left_running": daemon.running()}),
    ));
    let _ = daemon.commit(last, Vec::new(), true).await;
}
