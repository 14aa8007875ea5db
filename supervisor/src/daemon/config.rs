//! How the daemon runs (its flags), and how it fails to start.

use super::connections;
use std::net::SocketAddr;
use std::path::PathBuf;
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
    /// Shims started ahead of their jobs and kept idle, at most this many (0: each job
    /// starts its own); `daemon::pool`.
    pub shim_pool: usize,
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
    pub(super) fn descriptors_besides_connections(&self) -> u64 {
        64 + 8 * (self.max_jobs + self.shim_pool) as u64
            + 2 * (self.max_jobs + self.max_queue) as u64
    }
}

/// Why the daemon could not start; each names what to change.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("--listen needs --tcp-token-file: TCP clients must present a bearer token")]
    TcpWithoutToken,
    #[error("the descriptor limit ({soft}) leaves no room for client connections with --max-jobs {max_jobs} and --max-queue {max_queue}: raise it (LimitNOFILE=) or lower them")]
    TooFewDescriptors {
        soft: u64,
        max_jobs: usize,
        max_queue: usize,
    },
    #[error("cgroup limits: {0}")]
    CgroupLayout(#[source] covenant_runners::native::CgroupError),
    #[error("--cgroup-{0}: no {0} controller")]
    NoController(&'static str),
    #[error("cannot set the sandboxes' parent cgroup limit {} = {value}: {error}", file.display())]
    CgroupLimit {
        file: PathBuf,
        value: String,
        #[source]
        error: std::io::Error,
    },
    #[error("{} exists and is not a socket; refusing to replace it", .0.display())]
    NotASocket(PathBuf),
    #[error("another daemon answers on {}", .0.display())]
    SocketInUse(PathBuf),
    /// A system call of the daemon's setup failed; `what` says which, on what.
    #[error("{what}: {error}")]
    Io {
        what: String,
        #[source]
        error: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

impl DaemonError {
    pub(super) fn io(what: impl Into<String>, error: std::io::Error) -> Self {
        DaemonError::Io {
            what: what.into(),
            error,
        }
    }
}

#[cfg(test)]
impl Config {
    /// Small bounds for unit tests: `max_jobs` jobs (queue and per-subject alike),
    /// `shim_pool` idle shims of `shim_exe`, state under `home`.
    pub(super) fn for_tests(
        home: &std::path::Path,
        max_jobs: usize,
        shim_exe: &str,
        shim_pool: usize,
    ) -> Self {
        Config {
            home: home.to_path_buf(),
            socket: home.join("covenantd.sock"),
            listen: None,
            tcp_token: None,
            max_jobs,
            max_queue: max_jobs,
            per_subject: max_jobs,
            grace: std::time::Duration::from_secs(1),
            output_limit: 1024,
            cgroup_memory: None,
            cgroup_pids: None,
            agent_writes: 10,
            agent_bytes: 1024,
            agent_refusals: 10,
            agent_connections: 2,
            caller_connections: 2,
            max_connections: 16,
            request_timeout: std::time::Duration::from_secs(1),
            keep_finished: 2,
            admin_group: None,
            shim_exe: shim_exe.into(),
            shim_pool,
        }
    }
}
