//! `covenantd`: the supervisor daemon (`docs/api.md`, `docs/deploy.md`).

use clap::Parser;
use covenant_supervisor::daemon::{self, Config};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

/// Idle shims kept by default: enough to cover the jobs that start between two refills
/// on a small machine, few enough to cost little memory (each is a few MiB resident).
const DEFAULT_SHIM_POOL: usize = 4;

#[derive(Parser)]
#[command(name = "covenantd", version, about = "The Covenant supervisor daemon")]
struct Args {
    /// State directory (store, keys, bundles); default $COVENANT_HOME, /var/lib/covenant as root.
    #[arg(long, value_name = "DIR", global = true)]
    home: Option<PathBuf>,
    /// Unix socket to listen on; default HOME/covenantd.sock.
    #[arg(long, value_name = "PATH", global = true)]
    socket: Option<PathBuf>,
    /// Also listen on TCP (needs --tcp-token-file: clients present the bearer token).
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// File holding the bearer token TCP clients must present.
    #[arg(long, value_name = "FILE")]
    tcp_token_file: Option<PathBuf>,
    /// Most sandboxes running at once.
    #[arg(long, default_value_t = 16)]
    max_jobs: usize,
    /// Shims started ahead of their jobs and kept idle (each still runs one job only);
    /// 0 starts every job's shim when it starts. At most --max-jobs; default 4, or
    /// --max-jobs if that is less.
    #[arg(long, value_name = "N")]
    shim_pool: Option<usize>,
    /// Most jobs waiting for a slot; past it, submissions get 429.
    #[arg(long, default_value_t = 256)]
    max_queue: usize,
    /// Most jobs queued or running per capability subject.
    #[arg(long, default_value_t = 64)]
    per_subject: usize,
    /// How long running jobs may finish after SIGTERM, e.g. 30s.
    #[arg(long, default_value = "30s")]
    grace: String,
    /// Bytes of stdout and of stderr kept per job, e.g. 16MiB.
    #[arg(long, default_value = "16MiB")]
    output_limit: String,
    /// Writes (memory items, audit events, sub-intents) one job's agent, together with
    /// every sub-intent under it, may make.
    #[arg(long, default_value_t = 10_000)]
    agent_writes: u64,
    /// Bytes of memory items and agent audit events one job's agent, together with every
    /// sub-intent under it, may store, e.g. 32MiB (the full-text index about doubles it
    /// on disk).
    #[arg(long, default_value = "32MiB")]
    agent_bytes: String,
    /// Refused requests one job's agent, together with every sub-intent under it, may
    /// make; past it the asking agent's socket is closed.
    #[arg(long, default_value_t = 1_000)]
    agent_refusals: u64,
    /// Connections open at once to one job's agent socket.
    #[arg(long, default_value_t = 16)]
    agent_connections: usize,
    /// Connections open at once per caller uid (and for all TCP clients together) on the
    /// operator socket; admins are exempt.
    #[arg(long, default_value_t = 64)]
    caller_connections: usize,
    /// Client connections open at once in total (admins may use 32 more).
    #[arg(long, default_value_t = 4096)]
    max_connections: usize,
    /// Time a client has to send a request's headers, and again its body, e.g. 30s.
    #[arg(long, default_value = "30s")]
    request_timeout: String,
    /// Finished jobs whose status and output stay in memory for late readers.
    #[arg(long, default_value_t = 512)]
    keep_finished: usize,
    /// Group (name or gid) whose members see and control every job and all memory, and
    /// read the audit log; root always does.
    #[arg(long, value_name = "GROUP")]
    admin_group: Option<String>,
    /// Memory limit of the cgroup all sandboxes run under, e.g. 8GiB.
    #[arg(long, value_name = "SIZE")]
    cgroup_memory: Option<String>,
    /// Process limit of the cgroup all sandboxes run under.
    #[arg(long, value_name = "N")]
    cgroup_pids: Option<u64>,
    /// Upstream resolver of the egress gateways, IP:PORT (sets COVENANT_EGRESS_RESOLVER
    /// for every job; default: that variable, else /etc/resolv.conf).
    #[arg(long, value_name = "IP:PORT")]
    egress_resolver: Option<String>,
    /// Address ranges the egress gateways treat as public, CIDR[,CIDR...] (sets
    /// COVENANT_EGRESS_PUBLIC for every job).
    #[arg(long, value_name = "CIDRS")]
    egress_public: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// One job's sandbox process (started by the daemon itself).
    #[command(hide = true)]
    Shim {
        /// The descriptor of the control socket the daemon passed.
        #[arg(long)]
        control_fd: i32,
        /// The daemon's process id: the shim exits unless it is still its parent.
        #[arg(long)]
        parent: i32,
    },
    /// Exit 0 when a daemon answers on the socket (for liveness probes).
    Health,
    /// Inside a sandbox run by runc or crun: apply the landlock ruleset, then exec ARGV
    /// (the daemon's shim injects its own executable, as `covenant-ctl` does).
    #[command(hide = true)]
    Enforce {
        #[arg(last = true, required = true)]
        argv: Vec<String>,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    match &args.command {
        Some(Command::Shim { control_fd, parent }) => {
            return ExitCode::from(daemon::shim::main(*control_fd, *parent).clamp(0, 255) as u8)
        }
        Some(Command::Health) => return health(&args),
        Some(Command::Enforce { argv }) => {
            return ExitCode::from(covenant_runners::enforce::command(argv) as u8)
        }
        None => {}
    }
    // Nothing the daemon was started with reaches a shim, nor through one a runtime:
    // every inherited descriptor above stderr is marked close-on-exec (still open here;
    // a socket systemd passes is one of them).
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets a flag on descriptors.
    if unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    } != 0
    {
        eprintln!(
            "covenantd: error: marking inherited descriptors close-on-exec: {}",
            std::io::Error::last_os_error()
        );
        return ExitCode::from(1);
    }
    if let Err(e) = egress_settings(&args) {
        eprintln!("covenantd: error: {e}");
        return ExitCode::from(1);
    }
    match config(args).and_then(|c| daemon::run(c).map_err(|e| e.to_string())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("covenantd: error: {e}");
            ExitCode::from(1)
        }
    }
}

/// Checks the egress flags and hands them to every job's shim through its environment
/// (the shim runs the gateway). Called before any thread starts.
fn egress_settings(args: &Args) -> Result<(), String> {
    use covenant_egress::settings::{parse_public, parse_resolver, PUBLIC_VAR, RESOLVER_VAR};
    if let Some(resolver) = &args.egress_resolver {
        parse_resolver(resolver).map_err(|e| format!("--egress-resolver: {e}"))?;
        std::env::set_var(RESOLVER_VAR, resolver);
    }
    if let Some(public) = &args.egress_public {
        parse_public(public).map_err(|e| format!("--egress-public: {e}"))?;
        std::env::set_var(PUBLIC_VAR, public);
    }
    Ok(())
}

fn health(args: &Args) -> ExitCode {
    let home = args
        .home
        .clone()
        .unwrap_or_else(covenant_supervisor::home::covenant_home);
    let socket = args
        .socket
        .clone()
        .unwrap_or_else(|| home.join("covenantd.sock"));
    let client = daemon::client::Client::new(&socket);
    match client.request("GET", "/v1/health", None) {
        Ok(a) if a.status == 200 => {
            print!("{}", String::from_utf8_lossy(&a.body));
            ExitCode::SUCCESS
        }
        Ok(a) => {
            eprintln!("covenantd: health: {} {}", a.status, a.error_text());
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("covenantd: health: {e}");
            ExitCode::from(1)
        }
    }
}

/// The gid of `--admin-group`: a group name, or a number.
fn admin_gid(group: &str) -> Result<u32, String> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err(format!("--admin-group: no group named `{group}`")),
        Err(e) => Err(format!("--admin-group {group}: {e}")),
    }
}

fn config(args: Args) -> Result<Config, String> {
    use covenant_policy::units::{parse_duration, parse_size};
    let home = args
        .home
        .unwrap_or_else(covenant_supervisor::home::covenant_home);
    let home = if home.is_absolute() {
        home
    } else {
        std::env::current_dir()
            .map_err(|e| e.to_string())?
            .join(home)
    };
    let tcp_token = match &args.tcp_token_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| format!("--tcp-token-file {}: {e}", path.display()))?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    if tcp_token.as_deref().is_some_and(|t| t.len() < 16) {
        return Err("--tcp-token-file: the token must be at least 16 characters".into());
    }
    let positive = |n: usize, flag: &str| {
        if n == 0 {
            Err(format!("{flag} must be at least 1"))
        } else {
            Ok(n)
        }
    };
    Ok(Config {
        socket: args.socket.unwrap_or_else(|| home.join("covenantd.sock")),
        listen: args.listen,
        tcp_token,
        max_jobs: positive(args.max_jobs, "--max-jobs")?,
        max_queue: args.max_queue,
        per_subject: positive(args.per_subject, "--per-subject")?,
        grace: parse_duration(&args.grace).map_err(|e| format!("--grace: {e}"))?,
        output_limit: parse_size(&args.output_limit).map_err(|e| format!("--output-limit: {e}"))?
            as usize,
        cgroup_memory: args
            .cgroup_memory
            .as_deref()
            .map(parse_size)
            .transpose()
            .map_err(|e| format!("--cgroup-memory: {e}"))?,
        cgroup_pids: args.cgroup_pids,
        agent_writes: args.agent_writes,
        agent_bytes: parse_size(&args.agent_bytes).map_err(|e| format!("--agent-bytes: {e}"))?,
        agent_refusals: args.agent_refusals.max(1),
        agent_connections: positive(args.agent_connections, "--agent-connections")?,
        caller_connections: positive(args.caller_connections, "--caller-connections")?,
        max_connections: positive(args.max_connections, "--max-connections")?,
        request_timeout: parse_duration(&args.request_timeout)
            .map_err(|e| format!("--request-timeout: {e}"))
            .and_then(|d| {
                if d.is_zero() {
                    Err("--request-timeout must be more than 0".to_string())
                } else {
                    Ok(d)
                }
            })?,
        keep_finished: args.keep_finished,
        admin_group: args.admin_group.as_deref().map(admin_gid).transpose()?,
        // The running image itself, even if the file has been replaced by an upgrade
        // since: a shim always speaks its daemon's protocol.
        shim_exe: PathBuf::from("/proc/self/exe"),
        shim_pool: match args.shim_pool {
            None => DEFAULT_SHIM_POOL.min(args.max_jobs),
            Some(n) if n > args.max_jobs => {
                return Err(format!(
                    "--shim-pool {n} is more than --max-jobs {}: idle shims beyond the running jobs are never used",
                    args.max_jobs
                ))
            }
            Some(n) => n,
        },
        home,
    })
}
