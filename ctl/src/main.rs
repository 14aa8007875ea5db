//! `covenant-ctl`: run a command in a kernel-enforced sandbox, inspect what a run would
//! be, and check the host. Embedded mode: everything happens in this process, which stays
//! single-threaded until the sandbox has been cloned.

mod capabilities;
mod client_mode;
mod doctor;
mod image_cmd;
mod records;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use covenant_policy::manifest::{CpusValue, Manifest};
use covenant_policy::SandboxPlan;
use covenant_supervisor::authority;
use covenant_supervisor::home::identity_map;
use covenant_supervisor::home::new_job_id;
use covenant_supervisor::run::{EXIT_OOM, EXIT_SETUP, EXIT_TIMEOUT};
use covenant_supervisor::{run_bundle, run_request, RunSettings};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "covenant-ctl",
    version,
    about = "Run commands in kernel-enforced sandboxes"
)]
struct Cli {
    /// Run in this process even when covenantd answers.
    #[arg(long, global = true, conflicts_with = "daemon")]
    embedded: bool,
    /// Run through covenantd ($COVENANT_SOCKET, else covenantd.sock in $COVENANT_HOME, else
    /// /var/lib/covenant/covenantd.sock); fail if it does not answer.
    #[arg(long, global = true)]
    daemon: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a program in a sandbox: `run [MANIFEST] [FLAGS] [-- PROGRAM ARGS...]`.
    Run(RunArgs),
    /// Print the plan and the OCI config.json a run would use, without running anything.
    Plan(RequestArgs),
    /// Write the OCI bundle a run would use to --out, without running it.
    Bundle {
        #[command(flatten)]
        request: RequestArgs,
        /// Directory to write the bundle to (must be empty or missing).
        #[arg(long)]
        out: PathBuf,
    },
    /// Check this host for every kernel feature the sandbox uses.
    Doctor,
    /// Signing keys and the trust store.
    #[command(subcommand)]
    Key(capabilities::KeyCommand),
    /// Capability tokens: grant, attenuate, inspect, verify, revoke.
    #[command(subcommand)]
    Cap(capabilities::CapCommand),
    /// The audit log: tail, show, verify, export, prune.
    #[command(subcommand)]
    Audit(records::AuditCommand),
    /// Images: import, pack, ls, inspect, rm, gc.
    #[command(subcommand)]
    Image(image_cmd::ImageCommand),
    /// The agents' memory: put, get, search, ls, rm, compact.
    #[command(subcommand)]
    Mem(records::MemCommand),
    /// Inside a sandbox run by runc or crun: apply the landlock ruleset, then exec ARGV.
    #[command(hide = true)]
    Enforce {
        #[arg(last = true, required = true)]
        argv: Vec<String>,
    },
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    request: RequestArgs,
    /// Write the bundle to DIR and keep it after the run.
    #[arg(long, value_name = "DIR")]
    keep_bundle: Option<PathBuf>,
    /// Run a bundle written earlier by `covenant-ctl bundle --out DIR`, under the plan it
    /// carries, instead of compiling a request.
    #[arg(long, value_name = "DIR")]
    bundle: Option<PathBuf>,
    /// Write a JSON run report to FILE.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Print how long each step of the run took to stderr, as a table (the report's
    /// `timings_us`).
    #[arg(long)]
    timings: bool,
}

#[derive(Args)]
struct RequestArgs {
    /// Manifest file (TOML, schema v1). Flags override it.
    manifest: Option<PathBuf>,
    /// Host directory mounted read-write at /workspace.
    #[arg(long, value_name = "DIR")]
    workspace: Option<PathBuf>,
    /// Host path visible read-only at the same path (repeatable).
    #[arg(long, value_name = "PATH")]
    read: Vec<PathBuf>,
    /// Host path visible read-write at the same path (repeatable).
    #[arg(long, value_name = "PATH")]
    write: Vec<PathBuf>,
    /// Host path visible read-only, with execute, at the same path (repeatable).
    #[arg(long, value_name = "PATH")]
    exec: Vec<PathBuf>,
    /// TCP port the program may connect to (repeatable; needs --net loopback or host).
    #[arg(long, value_name = "PORT")]
    connect: Vec<u16>,
    /// Seccomp group to open, e.g. ptrace (repeatable).
    #[arg(long = "syscalls", value_name = "GROUP")]
    syscalls: Vec<String>,
    /// Capability authorising the run: a file or the printed token. Without it, the local
    /// operator key authorises exactly what is asked.
    #[arg(long, value_name = "FILE|TOKEN")]
    cap: Option<String>,
    /// Memory limit, e.g. 256MiB.
    #[arg(long, value_name = "SIZE")]
    memory: Option<String>,
    /// Maximum number of processes and threads (the sandbox's init counts as one).
    #[arg(long, value_name = "N")]
    pids: Option<u64>,
    /// CPU limit, e.g. 1.5.
    #[arg(long, value_name = "N")]
    cpus: Option<String>,
    /// Wall-clock timeout, e.g. 30s; the whole sandbox is killed and the exit code is 124.
    #[arg(long, value_name = "DURATION")]
    timeout: Option<String>,
    /// Network: none (default), loopback, egress, or host.
    #[arg(long, value_name = "MODE")]
    net: Option<String>,
    /// Host the program may reach through the egress gateway, HOST[:PORTS] or
    /// *.DOMAIN[:PORTS] or CIDR:PORTS (repeatable; ports default to 443); implies
    /// `--net egress`.
    #[arg(long = "allow-host", value_name = "HOST[:PORTS]")]
    allow_host: Vec<String>,
    /// Environment variable for the program (repeatable).
    #[arg(long, value_name = "K=V")]
    env: Vec<String>,
    /// Working directory inside the sandbox.
    #[arg(long, value_name = "DIR")]
    cwd: Option<PathBuf>,
    /// UID or UID:GID inside the sandbox (never host root).
    #[arg(long, value_name = "UID[:GID]")]
    user: Option<String>,
    /// Host name inside the sandbox.
    #[arg(long)]
    hostname: Option<String>,
    /// Runner: native (default), gvisor, or oci:PATH (a runc-compatible binary such as
    /// /usr/bin/crun); any but native must be granted as a `runner:` scope.
    #[arg(long, value_name = "RUNNER")]
    runner: Option<String>,
    /// Root filesystem: host (default), image:NAME[:TAG|@DIGEST], or dir:PATH.
    #[arg(long)]
    rootfs: Option<String>,
    /// With an image or directory root: keep the run's changes to it in this host directory.
    #[arg(long, value_name = "DIR")]
    keep_changes: Option<PathBuf>,
    /// Run even when the kernel cannot enforce this named restriction (repeatable).
    #[arg(long = "accept-degradation", value_name = "NAME")]
    accept_degradations: Vec<String>,
    /// The program and its arguments.
    #[arg(last = true)]
    argv: Vec<String>,
}

impl RequestArgs {
    /// The manifest (if any) with the flags laid over it.
    fn manifest(&self) -> anyhow::Result<Manifest> {
        let cwd = std::env::current_dir().context("current directory")?;
        let mut flags = Manifest::empty_in(cwd.clone());
        flags.command = self.argv.clone();
        flags.workspace = self.workspace.clone();
        flags.read = self.read.clone();
        flags.write = self.write.clone();
        flags.exec = self.exec.clone();
        flags.connect = self.connect.clone();
        flags.syscalls = self.syscalls.clone();
        flags.cwd = self.cwd.clone();
        for kv in &self.env {
            let (k, v) = kv
                .split_once('=')
                .with_context(|| format!("--env `{kv}`: expected K=V"))?;
            flags.env.insert(k.to_string(), v.to_string());
        }
        flags.rootfs = self.rootfs.clone();
        flags.keep_changes = self.keep_changes.clone();
        flags.hostname = self.hostname.clone();
        flags.user = self.user.clone();
        flags.net = self.net.clone();
        flags.egress = self.allow_host.clone();
        flags.runner = self.runner.clone();
        flags.limits.memory = self.memory.clone();
        flags.limits.pids = self.pids;
        flags.limits.cpus = self.cpus.clone().map(CpusValue::Text);
        flags.limits.timeout = self.timeout.clone();
        flags.accept_degradations = self.accept_degradations.clone();
        let base = match &self.manifest {
            Some(path) => Manifest::load(path)?,
            None => Manifest::empty_in(cwd),
        };
        Ok(base.overlay(flags))
    }

    fn plan(&self) -> anyhow::Result<SandboxPlan> {
        let manifest = self.manifest()?;
        let capability = self
            .cap
            .as_deref()
            .map(authority::load_capability)
            .transpose()?;
        Ok(authority::authorise_run(
            &manifest,
            &new_job_id(),
            capability.as_ref(),
        )?)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mode = match (cli.embedded, cli.daemon) {
        (true, _) => client_mode::Mode::Embedded,
        (_, true) => client_mode::Mode::Daemon,
        _ => client_mode::Mode::Auto,
    };
    let result = match cli.command {
        Command::Run(args) => run(args, mode),
        Command::Plan(request) => plan(request).map(|()| 0),
        Command::Bundle { request, out } => bundle(request, out).map(|()| 0),
        Command::Doctor => Ok(doctor::run()),
        Command::Key(cmd) => capabilities::key(cmd),
        Command::Cap(cmd) => capabilities::cap(cmd),
        Command::Audit(cmd) => records::audit(cmd, mode == client_mode::Mode::Daemon),
        Command::Mem(cmd) => records::mem(cmd),
        Command::Image(cmd) => image_cmd::image(cmd),
        Command::Enforce { argv } => Ok(covenant_runners::enforce::command(&argv)),
    };
    match result {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("covenant: error: {e:#}");
            ExitCode::from(EXIT_SETUP as u8)
        }
    }
}

/// Blocks the signals a run forwards to its sandbox, for the rest of this process.
fn block_forwarded_signals() -> anyhow::Result<()> {
    let mut set = nix::sys::signal::SigSet::empty();
    for s in covenant_runners::supervise::FORWARDED {
        set.add(s);
    }
    set.thread_block()
        .map_err(|e| anyhow::anyhow!("blocking the signals a run forwards: {e}"))
}

fn run(args: RunArgs, mode: client_mode::Mode) -> anyhow::Result<i32> {
    let manifest = args.request.manifest()?;
    let local_only = args.bundle.is_some() || args.keep_bundle.is_some();
    let daemon = if local_only {
        if mode == client_mode::Mode::Daemon {
            anyhow::bail!(
                "--bundle and --keep-bundle work on this host's files: run them with --embedded"
            );
        }
        None
    } else {
        client_mode::daemon_for(mode)?
    };
    if let Some(client) = daemon {
        let status = client_mode::run(&client, &manifest, args.request.cap.as_deref())?;
        let code = client_mode::exit_code(&status);
        match status.get("report").filter(|r| !r.is_null()) {
            Some(report) => {
                let report: covenant_supervisor::run::RunReport =
                    serde_json::from_value(report.clone()).context("the daemon's run report")?;
                finish(&report, &args)?
            }
            None => {
                let reason = status["reason"].as_str().unwrap_or("the job did not run");
                eprintln!("covenant: error: {reason}");
            }
        }
        return Ok(code);
    }
    // From here the run owns files (its bundle, staging places, cgroups) that only this
    // process removes. A signal the caller sends while the sandbox is being set up stays
    // pending, and reaches the program once it runs, like any later one; the run then ends
    // and cleans up. Without this, Ctrl-C during setup would kill this process and leave a
    // bundle behind that keeps its image "in use". (Still single-threaded here; the
    // runners block the same set again around the run.)
    block_forwarded_signals()?;
    let settings = RunSettings {
        keep_bundle: args.keep_bundle.clone(),
        runner: args.request.runner.clone(),
    };
    let report = match &args.bundle {
        Some(dir) => run_bundle(dir, &settings)?,
        None => run_request(&manifest, args.request.cap.as_deref(), &settings)?,
    };
    debug_assert!(report.exit_code != EXIT_TIMEOUT || report.timed_out);
    finish(&report, &args)?;
    Ok(report.exit_code)
}

/// What both modes say after a run: the limit that ended it, the degradations accepted,
/// the step timings when asked, and the report file.
fn finish(typed: &covenant_supervisor::run::RunReport, args: &RunArgs) -> anyhow::Result<()> {
    let report = &serde_json::to_value(typed)?;
    let limits = &report["limits"];
    if report["timed_out"].as_bool() == Some(true) {
        let limit = limits["timeout_ms"].as_u64().unwrap_or(0) as f64 / 1000.0;
        eprintln!("covenant: the sandbox reached its {limit}s timeout and was killed");
    } else if report["oom_killed"].as_bool() == Some(true)
        && report["exit_code"].as_i64() == Some(EXIT_OOM as i64)
    {
        let limit = limits["memory_bytes"]
            .as_u64()
            .map(covenant_policy::units::format_size)
            .unwrap_or_default();
        eprintln!("covenant: the program was killed by the memory limit ({limit})");
    }
    for d in report["degradations"].as_array().into_iter().flatten() {
        let name = d
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| d.to_string());
        eprintln!("covenant: running without `{name}` (accepted degradation)");
    }
    if args.timings {
        eprint!("{}", typed.timings_us.table());
    }
    if let Some(path) = &args.report {
        // Often a path the sandbox could write: a link planted there is replaced, never
        // written through.
        let json = serde_json::to_vec_pretty(typed)?;
        covenant_runners::hostpath::write_new_file(path, &json, 0o644)
            .with_context(|| format!("--report {}", path.display()))?;
    }
    Ok(())
}

fn plan(request: RequestArgs) -> anyhow::Result<()> {
    let plan = request.plan()?;
    let dir = tempfile::tempdir().context("temporary bundle directory")?;
    let bundle = covenant_images::write_bundle(&plan, &dir.path().join("bundle"), identity_map())?;
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(bundle.config_path())?)?;
    let egress: Vec<String> = plan.egress.iter().map(|r| r.to_string()).collect();
    let out = serde_json::json!({
        "plan": plan,
        "plan_digest": plan.digest(),
        "egress_rules": egress,
        "config": config,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

fn bundle(request: RequestArgs, out: PathBuf) -> anyhow::Result<()> {
    let plan = request.plan()?;
    let bundle = covenant_images::write_bundle(&plan, &out, identity_map())?;
    // Signed, so that `run --bundle` can tell this bundle from one edited (or written) by
    // anyone else.
    let key = covenant_supervisor::keys::supervisor_key()?;
    covenant_supervisor::bundle_signature::sign_bundle(&bundle.dir, &key)?;
    println!("{} {}", bundle.dir.display(), bundle.config_digest);
    Ok(())
}
