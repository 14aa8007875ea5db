//! The `covenant-runtime` command line: runc's commands and global flags.

use clap::{Args, Parser, Subcommand};
use covenant_runtime::audit;
use covenant_runtime::create::{self, CreateOptions};
use covenant_runtime::exec::{self, ExecOptions};
use covenant_runtime::lifecycle;
use covenant_runtime::policy::RuntimePolicy;
use covenant_runtime::state::Root;
use covenant_runtime::RuntimeError;
use covenant_supervisor::store::Kind;
use serde_json::json;
use std::io::Write;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "covenant-runtime",
    version,
    about = "A runc-compatible OCI runtime that enforces Covenant's policy"
)]
struct Cli {
    /// Where container state is kept.
    #[arg(long, global = true, default_value = "/run/covenant-runtime")]
    root: PathBuf,
    /// Also write errors to this file.
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    /// `text` or `json` (one JSON object per line, as container engines read it).
    #[arg(long, global = true, default_value = "text")]
    log_format: String,
    /// Not supported: cgroups are managed directly, never through systemd.
    #[arg(long, global = true)]
    systemd_cgroup: bool,
    /// Print each step's outcome on stderr.
    #[arg(long, global = true)]
    debug: bool,
    /// Accepted for compatibility; rootless mode is decided by the effective uid.
    #[arg(long)]
    rootless: Option<String>,
    #[command(subcommand)]
    command: Command,
}

/// What `create` and `run` both take.
#[derive(Args)]
struct CreateArgs {
    #[arg(short, long, default_value = ".")]
    bundle: PathBuf,
    #[arg(long)]
    pid_file: Option<PathBuf>,
    #[arg(long)]
    console_socket: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    preserve_fds: u32,
    #[arg(long)]
    no_pivot: bool,
    /// Keep the caller's session keyring instead of a new one for the container.
    #[arg(long)]
    no_new_keyring: bool,
    id: String,
}

impl CreateArgs {
    fn options(self) -> Result<CreateOptions, RuntimeError> {
        refuse_no_pivot(self.no_pivot)?;
        Ok(CreateOptions {
            id: self.id,
            bundle: self.bundle,
            pid_file: self.pid_file,
            console_socket: self.console_socket,
            preserve_fds: self.preserve_fds,
            new_keyring: !self.no_new_keyring,
        })
    }
}

#[derive(Subcommand)]
enum Command {
    /// Create a container: set it up and leave its process waiting for `start`.
    Create(#[command(flatten)] CreateArgs),
    /// Start a created container's process.
    Start { id: String },
    /// Print a container's state (runtime-spec JSON).
    State { id: String },
    /// Send a signal (name or number; default TERM) to a container's init, or with --all to every process.
    Kill {
        #[arg(short, long)]
        all: bool,
        id: String,
        #[arg(default_value = "TERM")]
        signal: String,
    },
    /// Delete a stopped container (--force: any container, killed first).
    Delete {
        #[arg(short, long)]
        force: bool,
        id: String,
    },
    /// Create and start a container, wait for it (unless --detach) and delete it.
    Run {
        #[command(flatten)]
        create: CreateArgs,
        #[arg(short, long)]
        detach: bool,
    },
    /// Run a new process in a container.
    Exec {
        #[arg(short, long)]
        process: Option<PathBuf>,
        #[arg(short, long)]
        tty: bool,
        #[arg(long)]
        console_socket: Option<PathBuf>,
        #[arg(long)]
        pid_file: Option<PathBuf>,
        #[arg(short, long)]
        detach: bool,
        #[arg(long)]
        cwd: Option<PathBuf>,
        #[arg(short, long)]
        env: Vec<String>,
        #[arg(short, long)]
        user: Option<String>,
        #[arg(long, default_value_t = 0)]
        preserve_fds: u32,
        id: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// List the processes of a container.
    Ps {
        #[arg(short, long, default_value = "table")]
        format: String,
        id: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ps_args: Vec<String>,
    },
    /// Freeze every process of a container.
    Pause { id: String },
    /// Thaw a paused container.
    Resume { id: String },
    /// Print a container's resource usage (--stats: once).
    Events {
        #[arg(long)]
        stats: bool,
        #[arg(long, default_value = "5s")]
        interval: String,
        id: String,
    },
    /// Change a running container's limits (`linux.resources` JSON from a file or `-`).
    Update {
        #[arg(short, long)]
        resources: Option<PathBuf>,
        id: String,
    },
    /// List containers.
    List {
        #[arg(short, long, default_value = "table")]
        format: String,
        #[arg(short, long)]
        quiet: bool,
    },
    /// Write a default config.json into the bundle.
    Spec {
        #[arg(short, long, default_value = ".")]
        bundle: PathBuf,
        /// Write a config for a rootless container (a user namespace mapping the caller).
        #[arg(long = "rootless", id = "spec_rootless")]
        spec_rootless: bool,
    },
    /// Print what this runtime supports (runtime-spec features JSON).
    Features,
}

fn main() {
    let cli = Cli::parse();
    let log = Log {
        file: cli.log.clone(),
        json: cli.log_format == "json",
        debug: cli.debug,
    };
    let code = match run(cli, &log) {
        Ok(code) => code,
        Err(e) => {
            log.error(&e.to_string());
            if matches!(e, RuntimeError::Config(_) | RuntimeError::Policy(_)) {
                125
            } else {
                1
            }
        }
    };
    std::process::exit(code);
}

struct Log {
    file: Option<PathBuf>,
    json: bool,
    debug: bool,
}

impl Log {
    fn write(&self, level: &str, msg: &str) {
        eprintln!("covenant-runtime: {msg}");
        let Some(path) = &self.file else { return };
        let line = if self.json {
            serde_json::json!({
                "level": level,
                "msg": msg,
                "time": covenant_runtime::state::rfc3339(covenant_runtime::state::now()),
            })
            .to_string()
        } else {
            format!("{level}: {msg}")
        };
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }

    fn error(&self, msg: &str) {
        self.write("error", msg);
    }

    fn debug(&self, msg: &str) {
        if self.debug {
            self.write("debug", msg);
        }
    }
}

fn print_json(v: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn run(cli: Cli, log: &Log) -> Result<i32, RuntimeError> {
    if cli.systemd_cgroup {
        return Err(RuntimeError::Usage(
            "--systemd-cgroup is not supported: covenant-runtime manages cgroups directly; configure the engine with SystemdCgroup = false".into(),
        ));
    }
    let root = Root::new(cli.root.clone());
    match cli.command {
        Command::Create(args) => {
            let opts = args.options()?;
            let policy = RuntimePolicy::load()?;
            let created = create::create(&root, &policy, &opts)?;
            log.debug(&format!("created {} (init pid {})", opts.id, created.pid));
            Ok(0)
        }
        Command::Start { id } => {
            let policy = RuntimePolicy::load()?;
            let pid = lifecycle::state(&root, &id)?["pid"].clone();
            audit::record(
                &policy,
                Kind::ContainerStarted,
                json!({"id": id, "pid": pid}),
            )?;
            lifecycle::start(&root, &id)?;
            Ok(0)
        }
        Command::State { id } => {
            print_json(&lifecycle::state(&root, &id)?);
            Ok(0)
        }
        Command::Kill { all, id, signal } => {
            let sig = lifecycle::parse_signal(&signal)?;
            let policy = RuntimePolicy::load()?;
            root.load(&id)?;
            audit::record(
                &policy,
                Kind::ContainerKilled,
                json!({"id": id, "signal": sig.as_str(), "all": all}),
            )?;
            lifecycle::kill(&root, &id, sig, all)?;
            Ok(0)
        }
        Command::Delete { force, id } => {
            let policy = RuntimePolicy::load()?;
            if let Ok(state) = lifecycle::state(&root, &id) {
                audit::record(
                    &policy,
                    Kind::ContainerDeleted,
                    json!({"id": id, "status": state["status"], "force": force}),
                )?;
            }
            lifecycle::delete(&root, &id, force)?;
            Ok(0)
        }
        Command::Run { create, detach } => {
            let opts = create.options()?;
            let id = opts.id.clone();
            let policy = RuntimePolicy::load()?;
            let forwarded = forwarded_signals();
            if !detach {
                let _ = forwarded.thread_block();
            }
            let created = create::create(&root, &policy, &opts)?;
            if let Err(e) = lifecycle::start(&root, &id) {
                let _ = lifecycle::delete(&root, &id, true);
                return Err(e);
            }
            if detach {
                return Ok(0);
            }
            let code = wait_forwarding(created.pid, &forwarded);
            lifecycle::delete(&root, &id, true)?;
            Ok(code)
        }
        Command::Exec {
            process,
            tty,
            console_socket,
            pid_file,
            detach,
            cwd,
            env,
            user,
            preserve_fds,
            id,
            args,
        } => {
            let process = exec_process(&root, &id, process, tty, cwd, env, user, args)?;
            let opts = ExecOptions {
                id,
                process,
                console_socket,
                pid_file,
                detach,
                preserve_fds,
            };
            exec::exec(&root, &opts)
        }
        Command::Ps {
            format,
            id,
            ps_args: _,
        } => {
            let pids = lifecycle::ps(&root, &id)?;
            if format == "json" {
                println!("{}", serde_json::to_string(&pids).unwrap_or_default());
            } else {
                println!("PID CMD");
                for pid in pids {
                    let cmd =
                        std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                    println!("{pid} {}", cmd.trim());
                }
            }
            Ok(0)
        }
        Command::Pause { id } => {
            lifecycle::pause(&root, &id, true)?;
            Ok(0)
        }
        Command::Resume { id } => {
            lifecycle::pause(&root, &id, false)?;
            Ok(0)
        }
        Command::Events {
            stats,
            interval,
            id,
        } => {
            let every = parse_interval(&interval)?;
            loop {
                println!("{}", lifecycle::stats(&root, &id)?);
                if stats {
                    return Ok(0);
                }
                std::thread::sleep(every);
                if lifecycle::state(&root, &id)?["status"] == "stopped" {
                    return Ok(0);
                }
            }
        }
        Command::Update { resources, id } => {
            let text = match resources.as_deref() {
                None => {
                    return Err(RuntimeError::Usage(
                        "update needs --resources FILE (or - for stdin)".into(),
                    ))
                }
                Some(p) if p == std::path::Path::new("-") => {
                    let mut s = String::new();
                    std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).map_err(|e| {
                        RuntimeError::Io {
                            what: "read",
                            path: "-".into(),
                            source: e,
                        }
                    })?;
                    s
                }
                Some(p) => std::fs::read_to_string(p).map_err(|e| RuntimeError::Io {
                    what: "read",
                    path: p.to_path_buf(),
                    source: e,
                })?,
            };
            let de = &mut serde_json::Deserializer::from_str(&text);
            let r: oci_spec::runtime::LinuxResources = serde_path_to_error::deserialize(de)
                .map_err(|e| {
                    covenant_runtime::config::field(
                        format!("resources.{}", e.path()),
                        e.into_inner().to_string(),
                    )
                })?;
            lifecycle::update(&root, &id, &r)?;
            Ok(0)
        }
        Command::List { format, quiet } => {
            let all = lifecycle::list(&root)?;
            if quiet {
                for s in &all {
                    println!("{}", s["id"].as_str().unwrap_or_default());
                }
            } else if format == "json" {
                println!("{}", serde_json::Value::Array(all));
            } else {
                println!("ID\tPID\tSTATUS\tBUNDLE\tCREATED\tOWNER");
                for s in &all {
                    println!(
                        "{}\t{}\t{}\t{}\t{}\t{}",
                        s["id"].as_str().unwrap_or_default(),
                        s["pid"],
                        s["status"].as_str().unwrap_or_default(),
                        s["bundle"].as_str().unwrap_or_default(),
                        s["created"].as_str().unwrap_or_default(),
                        s["owner"].as_str().unwrap_or_default()
                    );
                }
            }
            Ok(0)
        }
        Command::Spec {
            bundle,
            spec_rootless,
        } => {
            let path = bundle.join("config.json");
            if path.exists() {
                return Err(RuntimeError::Usage(format!(
                    "{} exists; remove it first",
                    path.display()
                )));
            }
            let spec = if spec_rootless {
                oci_spec::runtime::Spec::rootless(0, 0)
            } else {
                oci_spec::runtime::Spec::default()
            };
            let text = serde_json::to_string_pretty(&spec).unwrap_or_default();
            std::fs::write(&path, text).map_err(|e| RuntimeError::Io {
                what: "write",
                path,
                source: e,
            })?;
            Ok(0)
        }
        Command::Features => {
            print_json(&features());
            Ok(0)
        }
    }
}

fn refuse_no_pivot(no_pivot: bool) -> Result<(), RuntimeError> {
    if no_pivot {
        return Err(RuntimeError::Usage(
            "--no-pivot is refused: without pivot_root the host's root stays reachable from the container".into(),
        ));
    }
    Ok(())
}

fn parse_interval(text: &str) -> Result<std::time::Duration, RuntimeError> {
    let bad = || {
        RuntimeError::Usage(format!(
            "--interval `{text}`: use a number of seconds like 5s"
        ))
    };
    let n: u64 = text.trim_end_matches('s').parse().map_err(|_| bad())?;
    if n == 0 {
        return Err(bad());
    }
    Ok(std::time::Duration::from_secs(n))
}

fn forwarded_signals() -> nix::sys::signal::SigSet {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGWINCH,
        Signal::SIGCHLD,
    ] {
        set.add(s);
    }
    set
}

/// Waits for the container's init, passing on the signals the runtime receives.
fn wait_forwarding(pid: nix::unistd::Pid, set: &nix::sys::signal::SigSet) -> i32 {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return 255,
        }
        match set.wait() {
            Ok(nix::sys::signal::Signal::SIGCHLD) => {}
            Ok(sig) => {
                let _ = nix::sys::signal::kill(pid, sig);
            }
            Err(_) => {}
        }
    }
}

/// The process `exec` runs: `--process FILE`, or argv with the flags, on top of the
/// container's own process (its env, user and capabilities).
#[allow(clippy::too_many_arguments)]
fn exec_process(
    root: &Root,
    id: &str,
    file: Option<PathBuf>,
    tty: bool,
    cwd: Option<PathBuf>,
    env: Vec<String>,
    user: Option<String>,
    args: Vec<String>,
) -> Result<oci_spec::runtime::Process, RuntimeError> {
    if let Some(f) = file {
        let text = std::fs::read(&f).map_err(|e| RuntimeError::Io {
            what: "read",
            path: f.clone(),
            source: e,
        })?;
        let de = &mut serde_json::Deserializer::from_slice(&text);
        return serde_path_to_error::deserialize(de).map_err(|e| {
            covenant_runtime::config::field(
                format!("process.{}", e.path()),
                e.into_inner().to_string(),
            )
            .into()
        });
    }
    if args.is_empty() {
        return Err(RuntimeError::Usage(
            "exec needs --process FILE or a command".into(),
        ));
    }
    let record = root.load(id)?;
    let spec = covenant_runtime::config::load(&record.bundle).ok();
    let mut p = spec.and_then(|s| s.process().clone()).unwrap_or_default();
    p.set_args(Some(args));
    p.set_terminal(Some(tty));
    if let Some(c) = cwd {
        p.set_cwd(c);
    }
    if !env.is_empty() {
        let mut all = p.env().clone().unwrap_or_default();
        all.extend(env);
        p.set_env(Some(all));
    }
    if let Some(u) = user {
        let (uid, gid) = u.split_once(':').unwrap_or((&u, "0"));
        let uid = uid
            .parse()
            .map_err(|_| RuntimeError::Usage(format!("--user `{u}`: use UID[:GID]")))?;
        let gid = gid
            .parse()
            .map_err(|_| RuntimeError::Usage(format!("--user `{u}`: use UID[:GID]")))?;
        let mut user = p.user().clone();
        user.set_uid(uid);
        user.set_gid(gid);
        p.set_user(user);
    }
    Ok(p)
}

fn features() -> serde_json::Value {
    serde_json::json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": oci_spec::runtime::VERSION,
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": ["ro", "rw", "nosuid", "suid", "nodev", "dev", "noexec", "exec", "sync", "async", "dirsync", "remount", "mand", "nomand", "atime", "noatime", "diratime", "nodiratime", "relatime", "norelatime", "strictatime", "nostrictatime", "bind", "rbind", "private", "rprivate", "shared", "rshared", "slave", "rslave", "unbindable", "runbindable", "idmap", "ridmap"],
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"],
            "capabilities": caps::all().iter().map(|c| c.to_string()).collect::<Vec<_>>(),
            "cgroup": { "v1": true, "v2": true, "systemd": false, "systemdUser": false },
            "seccomp": {
                "enabled": true,
                "actions": ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_TRAP", "SCMP_ACT_LOG"],
                "operators": ["SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_MASKED_EQ"],
                "archs": ["SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64"],
            },
            "mountExtensions": { "idmap": { "enabled": true } },
            "apparmor": { "enabled": false },
            "selinux": { "enabled": false },
        },
        "annotations": {
            "org.opencovenant.landlock": "enforced",
            "org.opencovenant.capability": "verified against the node's runtime policy",
        },
    })
}
