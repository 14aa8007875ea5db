//! Runners that drive an external OCI runtime through its command line: `oci:PATH` for
//! any runc-compatible binary (runc, crun) and `gvisor` for runsc. Each run goes through
//! the runtime's full lifecycle (create, start, wait, kill, delete) with a private state
//! directory, so nothing of it is left behind.
//!
//! Fail closed: before anything is created, every restriction the bundle carries is
//! matched to how this runtime enforces it, and a bundle with one it cannot enforce is
//! refused naming it:
//!
//! | restriction | runc / crun | gVisor (runsc) |
//! |---|---|---|
//! | namespaces, uid maps, mounts, caps, `no_new_privs`, rlimits, seccomp | the runtime, from `config.json` | the sentry; seccomp inside it (`--oci-seccomp`) |
//! | landlock (`org.opencovenant.landlock`) | `covenant-ctl enforce` injected as the first program | path rules: the sentry's own mount table; TCP port rules: refused |
//! | cgroup limits | the runtime (`linux.resources`, under `covenant/ID`) | Covenant's cgroup around the whole sandbox (`--ignore-cgroups`) |
//! | network `none` / `loopback` / `host` | network namespace (landlock denies TCP for `none`) | `--network=none` / `none` / `host` |
//! | network `egress` | joins a namespace Covenant prepared with the gateway's link | refused |
//! | idmapped writable paths | refused (degradation `idmap`) | refused (degradation `idmap`) |
//! | timeout | Covenant kills the container | Covenant kills the sandbox |

use crate::native::cgroup::{CgroupLayout, CgroupLimits, RunCgroup};
use crate::native::landlock::{check_support, kernel_abi, LandlockPlan};
use crate::native::Namespace;
use crate::supervise::{forwarded_signals, supervise};
use crate::{ExitKind, RunOutcome, Runner, RunnerContext, RunnerError, StartInfo};
use covenant_policy::annotations::{self, IdmapMount, LandlockNet, LandlockPolicy, RootfsLayout};
use covenant_policy::Degradation;
use nix::sys::signal::Signal;
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use std::ffi::CString;
use std::fs;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where the enforcer is bound inside the container.
const ENFORCER_TARGET: &str = "/.covenant-enforce";
/// Where the host's C library is bound for the enforcer, in an image root.
const ENFORCER_LIBS: &str = "/.covenant-enforce-libs";
/// The host's dynamic loader.
#[cfg(target_arch = "x86_64")]
const HOST_LOADER: &str = "/lib64/ld-linux-x86-64.so.2";
#[cfg(target_arch = "aarch64")]
const HOST_LOADER: &str = "/lib/ld-linux-aarch64.so.1";

/// Memory the gVisor sentry and gofer need on top of the program's own limit.
pub const GVISOR_MEMORY_ALLOWANCE: u64 = 96 << 20;
/// Host threads of the gVisor sentry and gofer, on top of the program's pids limit.
pub const GVISOR_PIDS_ALLOWANCE: u64 = 256;
/// Host processes and threads the ptrace platform uses per sandbox task.
pub const GVISOR_PIDS_PER_TASK: u64 = 4;

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("runtime {0} not found or not executable")]
    NotFound(PathBuf),
    #[error("runtime {binary} is not trusted: {reason}; a runtime binary and every folder above it must belong to root and be writable by root alone")]
    Untrusted { binary: PathBuf, reason: String },
    #[error("config.json: {0}")]
    Spec(String),
    #[error("{runtime} cannot enforce {restriction}: {reason}")]
    Unenforceable {
        runtime: String,
        restriction: String,
        reason: String,
    },
    #[error("`{command}` failed ({status}){log}")]
    Runtime {
        command: String,
        status: String,
        log: String,
    },
    #[error("{what}: {error}")]
    Io { what: String, error: std::io::Error },
    #[error(transparent)]
    Landlock(#[from] crate::native::landlock::LandlockError),
    #[error(transparent)]
    Cgroup(#[from] crate::native::cgroup::CgroupError),
}

type Result<T> = std::result::Result<T, OciError>;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> OciError {
    let what = what.into();
    move |error| OciError::Io { what, error }
}

/// Which runtime, for the few things they do differently.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flavor {
    /// runc or another runtime that behaves like it.
    Runc,
    /// crun: on a cgroup v1 hybrid host it is run with the cgroup2 mount hidden.
    Crun,
    /// runsc, with the platform `doctor` found working.
    Gvisor { platform: String },
}

#[derive(Debug, Clone)]
pub struct OciRunner {
    pub binary: PathBuf,
    pub flavor: Flavor,
    pub ctx: RunnerContext,
    pub cgroup_root: PathBuf,
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .find(|c| c.is_file())
        })
        .unwrap_or(None)
}

/// Checks that `binary` can only have been put there by root (or, for a caller that is
/// not root, by root or the caller): the file and every folder on its path, symlinks
/// included, belong to such an owner and are writable by it alone. The supervisor starts
/// the runtime with its own privileges outside any sandbox, so a binary another user can
/// write or swap would be theirs to run as root. Returns the path to execute.
pub fn trusted_binary(binary: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let untrusted = |reason: String| OciError::Untrusted {
        binary: binary.to_path_buf(),
        reason,
    };
    let euid = nix::unistd::geteuid().as_raw();
    let owner_ok = |uid: u32| uid == 0 || uid == euid;
    let check = |path: &Path, md: &fs::Metadata| -> Result<()> {
        if !owner_ok(md.uid()) {
            return Err(untrusted(format!(
                "{} belongs to uid {}",
                path.display(),
                md.uid()
            )));
        }
        if !md.file_type().is_symlink() && md.mode() & 0o022 != 0 {
            return Err(untrusted(format!(
                "{} is writable by its group or by others (mode {:o})",
                path.display(),
                md.mode() & 0o7777
            )));
        }
        Ok(())
    };
    if !binary.is_absolute() {
        return Err(untrusted("the path is not absolute".into()));
    }
    let real = binary
        .canonicalize()
        .map_err(|_| OciError::NotFound(binary.to_path_buf()))?;
    // Every prefix of the name given and of the file it resolves to.
    for path in [binary, real.as_path()] {
        for prefix in path.ancestors().collect::<Vec<_>>().into_iter().rev() {
            let md = fs::symlink_metadata(prefix)
                .map_err(|_| OciError::NotFound(binary.to_path_buf()))?;
            check(prefix, &md)?;
        }
    }
    let md = fs::metadata(&real).map_err(|_| OciError::NotFound(binary.to_path_buf()))?;
    if !md.is_file() || md.mode() & 0o111 == 0 {
        return Err(OciError::NotFound(binary.to_path_buf()));
    }
    Ok(real)
}

impl OciRunner {
    /// `oci:PATH`: a runc-compatible binary, trusted as [`trusted_binary`] says.
    pub fn generic(binary: &Path, ctx: &RunnerContext) -> Result<Self> {
        // Executed by the resolved path, so a chain of links is never followed again.
        let real = trusted_binary(binary)?;
        let name = binary
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let flavor = if name.contains("crun") {
            Flavor::Crun
        } else if name.contains("runsc") {
            Flavor::Gvisor {
                platform: "ptrace".into(),
            }
        } else {
            Flavor::Runc
        };
        Ok(Self {
            binary: real,
            flavor,
            ctx: ctx.clone(),
            cgroup_root: "/sys/fs/cgroup".into(),
        })
    }

    /// `gvisor`: runsc from `PATH` on the platform `COVENANT_GVISOR_PLATFORM` names, by
    /// default ptrace (the one that works on nested virtualisation; `doctor` probes each
    /// platform with a deadline before one is chosen).
    pub fn gvisor(ctx: &RunnerContext) -> Result<Self> {
        let binary = on_path("runsc").ok_or_else(|| OciError::NotFound("runsc".into()))?;
        let binary = trusted_binary(&binary)?;
        let platform =
            std::env::var("COVENANT_GVISOR_PLATFORM").unwrap_or_else(|_| "ptrace".into());
        if platform.is_empty() || !platform.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(OciError::Spec(format!(
                "COVENANT_GVISOR_PLATFORM `{platform}` is not a platform name"
            )));
        }
        Ok(Self {
            binary,
            flavor: Flavor::Gvisor { platform },
            ctx: ctx.clone(),
            cgroup_root: "/sys/fs/cgroup".into(),
        })
    }

    fn label(&self) -> String {
        match self.flavor {
            Flavor::Gvisor { .. } => "gvisor".into(),
            _ => format!("oci:{}", self.binary.display()),
        }
    }

    fn unenforceable(&self, restriction: &str, reason: &str) -> OciError {
        OciError::Unenforceable {
            runtime: self.label(),
            restriction: restriction.into(),
            reason: reason.into(),
        }
    }

    /// The runtime's global flags.
    fn global_args(&self, state: &Path, log: &Path) -> Vec<String> {
        let mut args = vec![
            "--root".into(),
            state.display().to_string(),
            "--log".into(),
            log.display().to_string(),
        ];
        if let Flavor::Gvisor { platform } = &self.flavor {
            args.push(format!("--platform={platform}"));
            args.push("--oci-seccomp".into());
            args.push("--ignore-cgroups".into());
        }
        args
    }
}

/// What the runner decided from the bundle before creating anything.
struct Decisions {
    config: Spec,
    landlock: Option<(LandlockPolicy, LandlockPlan)>,
    limits: CgroupLimits,
    timeout: Option<Duration>,
    network: &'static str,
    /// With `net` egress (runc, crun): the gateway's rules; the runtime joins a namespace
    /// prepared with its link.
    egress: Option<Vec<covenant_policy::EgressRule>>,
    degradations: Vec<Degradation>,
    namespaces: Vec<Namespace>,
    /// An image or directory root: its read-only layers, top first.
    overlay: Option<(Vec<PathBuf>, Option<PathBuf>)>,
}

impl Decisions {
    /// Filters the runtime loads: the OCI profile compiles to one.
    fn seccomp_filters(&self) -> usize {
        usize::from(
            self.config
                .linux()
                .as_ref()
                .is_some_and(|l| l.seccomp().is_some()),
        )
    }
}

fn annotation<T: serde::de::DeserializeOwned>(spec: &Spec, key: &str) -> Result<Option<T>> {
    spec.annotations()
        .as_ref()
        .and_then(|a| a.get(key))
        .map(|v| {
            serde_json::from_str(v).map_err(|e| OciError::Spec(format!("annotation {key}: {e}")))
        })
        .transpose()
}

impl OciRunner {
    fn decide(&self, bundle: &Path) -> Result<Decisions> {
        let mut config =
            Spec::load(bundle.join("config.json")).map_err(|e| OciError::Spec(e.to_string()))?;
        let accepted: Vec<Degradation> =
            annotation(&config, annotations::DEGRADATIONS)?.unwrap_or_default();
        let mut degradations = Vec::new();
        if let Some(RootfsLayout::InMemory { .. }) =
            annotation::<RootfsLayout>(&config, annotations::ROOTFS)?
        {
            return Err(self.unenforceable(
                "the in-memory root",
                "only the native runner builds it; write a portable bundle",
            ));
        }
        let gvisor = matches!(self.flavor, Flavor::Gvisor { .. });
        if gvisor {
            // Measured: a file made setuid inside gVisor lands on the host owned by root
            // with its setuid bit, because the gofer writes as host root.
            for m in config.mounts().iter().flatten() {
                let bind = m.typ().as_deref() == Some("bind");
                let writable = !m
                    .options()
                    .as_ref()
                    .is_some_and(|o| o.iter().any(|x| x == "ro"));
                if bind && writable {
                    return Err(self.unenforceable(
                        &format!("fs.write:{}", m.source().as_ref().map(|s| s.display().to_string()).unwrap_or_default()),
                        "gVisor's gofer writes to host paths as host root (a file made setuid inside would be setuid root on the host); use the native runner for writable paths",
                    ));
                }
            }
        }
        let idmap: Vec<IdmapMount> = annotation(&config, annotations::IDMAP)?.unwrap_or_default();
        if !idmap.is_empty() {
            if !accepted.contains(&Degradation::Idmap) {
                return Err(self.unenforceable(
                    &format!("the idmapped mount of {}", idmap[0].destination.display()),
                    "this runtime does not idmap bind mounts; accept the degradation `idmap` to bind without",
                ));
            }
            degradations.push(Degradation::Idmap);
        }
        let net_mode: Option<String> = config
            .annotations()
            .as_ref()
            .and_then(|a| a.get(annotations::NET))
            .cloned();
        let network = match net_mode.as_deref() {
            Some("host") => "host",
            Some("egress") => match self.flavor {
                // runsc would have to run inside the gateway's namespace with its own
                // network stack in host mode; until it does, the sandbox would have no
                // gateway. Refused rather than run without a network.
                Flavor::Gvisor { .. } => {
                    return Err(self.unenforceable(
                        "net egress",
                        "runsc does not yet run inside the egress gateway's network namespace; use runner native, runc or crun",
                    ))
                }
                Flavor::Runc | Flavor::Crun => "egress",
            },
            _ => "none",
        };
        // Fail closed, as the native runner does: no filter or no ruleset, no run.
        if !config
            .linux()
            .as_ref()
            .is_some_and(|l| l.seccomp().is_some())
        {
            return Err(self.unenforceable("seccomp", "the bundle has no linux.seccomp filter"));
        }
        let egress: Option<Vec<covenant_policy::EgressRule>> = if network == "egress" {
            Some(
                annotation(&config, annotations::EGRESS)?
                    .ok_or_else(|| self.unenforceable("net egress", "the bundle names no rules"))?,
            )
        } else {
            None
        };
        let policy: Option<LandlockPolicy> = annotation(&config, annotations::LANDLOCK)?;
        if policy.is_none() && !accepted.contains(&Degradation::Landlock) {
            return Err(self.unenforceable(
                "landlock",
                "the bundle has no org.opencovenant.landlock ruleset; accept the degradation `landlock` to run anyway",
            ));
        }
        let landlock = match policy {
            None => None,
            Some(p) if gvisor => {
                if let LandlockNet::ConnectOnly { .. } = p.net {
                    return Err(self.unenforceable(
                        "net.connect:tcp",
                        "gVisor's netstack has no per-port filter",
                    ));
                }
                // Path rules equal the mounts, which the sentry enforces itself; signals and
                // abstract sockets never leave the sentry's kernel.
                None
            }
            Some(p) => {
                let plan = check_support(&p, kernel_abi(), &accepted)?;
                if !plan.fs {
                    degradations.push(Degradation::Landlock);
                    None
                } else {
                    if self.ctx.enforcer.is_none() {
                        return Err(self.unenforceable("landlock", "no enforcer binary to inject"));
                    }
                    Some((p, plan))
                }
            }
        };
        // libseccomp drops conditional denials of a call it also allows outright (the
        // terminal ioctls): the enforcer loads the profile again, so it must be there.
        if !gvisor && self.ctx.enforcer.is_none() {
            return Err(self.unenforceable(
                "seccomp",
                "no enforcer binary to inject for the ioctl rules libseccomp drops",
            ));
        }
        let resources = config.linux().as_ref().and_then(|l| l.resources().as_ref());
        let limits = CgroupLimits::from_oci(resources);
        let timeout = config
            .annotations()
            .as_ref()
            .and_then(|a| a.get(annotations::TIMEOUT_MS))
            .map(|t| t.parse::<u64>().map(Duration::from_millis))
            .transpose()
            .map_err(|e| OciError::Spec(format!("annotation {}: {e}", annotations::TIMEOUT_MS)))?;
        let namespaces = config
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().clone())
            .unwrap_or_default()
            .iter()
            .filter_map(|n| match n.typ() {
                LinuxNamespaceType::User if !gvisor => Some(Namespace::User),
                LinuxNamespaceType::Pid => Some(Namespace::Pid),
                LinuxNamespaceType::Mount => Some(Namespace::Mount),
                LinuxNamespaceType::Network => Some(Namespace::Network),
                LinuxNamespaceType::Ipc => Some(Namespace::Ipc),
                LinuxNamespaceType::Uts => Some(Namespace::Uts),
                LinuxNamespaceType::Cgroup => Some(Namespace::Cgroup),
                _ => None,
            })
            .collect();
        if !config
            .root()
            .as_ref()
            .is_some_and(|r| r.path().is_absolute())
        {
            let root = config
                .root()
                .clone()
                .ok_or_else(|| OciError::Spec("root missing".into()))?;
            let mut root = root;
            root.set_path(bundle.join(root.path()));
            config.set_root(Some(root));
        }
        let overlay = match annotation::<RootfsLayout>(&config, annotations::ROOTFS)? {
            Some(RootfsLayout::Overlay { lower, keep }) => Some((lower, keep)),
            _ => None,
        };
        if let (true, Some((_, Some(keep)))) = (gvisor, &overlay) {
            return Err(self.unenforceable(
                &format!("fs.write:{}", keep.display()),
                "gVisor's gofer writes kept changes as host root; keep changes with the native runner",
            ));
        }
        Ok(Decisions {
            config,
            landlock,
            limits,
            timeout,
            network,
            egress,
            degradations,
            namespaces,
            overlay,
        })
    }

    /// The config the runtime gets: the bundle's, with the enforcer injected (runc, crun),
    /// or with the user namespace and resources left to the sentry and Covenant (gVisor).
    fn derive_config(&self, d: &Decisions, rootfs: &Path, id: &str) -> Result<Spec> {
        let mut spec = d.config.clone();
        let mut linux = spec
            .linux()
            .clone()
            .ok_or_else(|| OciError::Spec("linux section missing".into()))?;
        match self.flavor {
            Flavor::Gvisor { .. } => {
                // gVisor runs the sandbox's ids inside its own kernel; host-side it applies
                // its own user namespace and drops to nobody.
                let ns: Vec<_> = linux
                    .namespaces()
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|n| n.typ() != LinuxNamespaceType::User)
                    .collect();
                linux.set_namespaces(Some(ns));
                linux.set_uid_mappings(None);
                linux.set_gid_mappings(None);
                linux.set_resources(None);
                // gVisor's tasks are not host processes, so a host pids limit cannot stop a
                // fork bomb inside it; the sentry enforces RLIMIT_NPROC itself (measured:
                // a fork bomb stops at the limit).
                if let Some(pids) = d.limits.pids {
                    let mut process = spec
                        .process()
                        .clone()
                        .ok_or_else(|| OciError::Spec("process missing".into()))?;
                    let mut rlimits: Vec<_> = process
                        .rlimits()
                        .clone()
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|r| r.typ() != oci_spec::runtime::PosixRlimitType::RlimitNproc)
                        .collect();
                    rlimits.push(
                        oci_spec::runtime::PosixRlimitBuilder::default()
                            .typ(oci_spec::runtime::PosixRlimitType::RlimitNproc)
                            .soft(pids)
                            .hard(pids)
                            .build()
                            .map_err(|e| OciError::Spec(e.to_string()))?,
                    );
                    process.set_rlimits(Some(rlimits));
                    spec.set_process(Some(process));
                }
            }
            _ => {
                linux.set_cgroups_path(Some(PathBuf::from(format!("/covenant/{id}"))));
            }
        }
        spec.set_linux(Some(linux));
        let gvisor = matches!(self.flavor, Flavor::Gvisor { .. });
        if let (false, Some(enforcer)) = (gvisor, &self.ctx.enforcer) {
            let point = rootfs.join(ENFORCER_TARGET.trim_start_matches('/'));
            if !point.exists() {
                fs::File::create(&point)
                    .map_err(io(format!("enforcer mount point {}", point.display())))?;
            }
            let mut mounts = spec.mounts().clone().unwrap_or_default();
            let ro_bind = |source: &Path, destination: &str| {
                oci_spec::runtime::MountBuilder::default()
                    .destination(destination)
                    .typ("bind")
                    .source(source)
                    .options(vec![
                        "bind".to_string(),
                        "ro".to_string(),
                        "nosuid".to_string(),
                        "nodev".to_string(),
                    ])
                    .build()
                    .map_err(|e| OciError::Spec(e.to_string()))
            };
            mounts.push(ro_bind(enforcer, ENFORCER_TARGET)?);
            // An image root has its own (or no) C library: the enforcer then runs on the
            // host's loader and libraries, bound read-only beside it.
            let loader = if d.overlay.is_some() {
                let host_loader = Path::new(HOST_LOADER)
                    .canonicalize()
                    .map_err(io(format!("host loader {HOST_LOADER}")))?;
                let lib_dir = host_loader
                    .parent()
                    .unwrap_or(Path::new("/lib"))
                    .to_path_buf();
                let point = rootfs.join(ENFORCER_LIBS.trim_start_matches('/'));
                fs::create_dir_all(&point)
                    .map_err(io(format!("mount point {}", point.display())))?;
                mounts.push(ro_bind(&lib_dir, ENFORCER_LIBS)?);
                let name = host_loader
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                Some(format!("{ENFORCER_LIBS}/{name}"))
            } else {
                None
            };
            spec.set_mounts(Some(mounts));
            let mut process = spec
                .process()
                .clone()
                .ok_or_else(|| OciError::Spec("process missing".into()))?;
            let mut args = match loader {
                Some(ld) => vec![
                    ld,
                    "--library-path".into(),
                    ENFORCER_LIBS.into(),
                    ENFORCER_TARGET.into(),
                ],
                None => vec![ENFORCER_TARGET.to_string()],
            };
            args.extend(["enforce".to_string(), "--".to_string()]);
            args.extend(process.args().clone().unwrap_or_default());
            process.set_args(Some(args));
            let mut env = process.env().clone().unwrap_or_default();
            // Without a ruleset (the degradation `landlock` accepted) the enforcer loads
            // the seccomp profile alone.
            if let Some((policy, plan)) = &d.landlock {
                env.push(format!(
                    "{}={}",
                    crate::enforce::POLICY_ENV,
                    serde_json::to_string(policy).unwrap_or_default()
                ));
                env.push(format!(
                    "{}={}",
                    crate::enforce::PLAN_ENV,
                    serde_json::to_string(plan).unwrap_or_default()
                ));
            }
            let seccomp = spec
                .linux()
                .as_ref()
                .and_then(|l| l.seccomp().as_ref())
                .ok_or_else(|| OciError::Spec("linux.seccomp missing".into()))?;
            env.push(format!(
                "{}={}",
                crate::enforce::SECCOMP_ENV,
                serde_json::to_string(seccomp).map_err(|e| OciError::Spec(e.to_string()))?
            ));
            process.set_env(Some(env));
            spec.set_process(Some(process));
        }
        Ok(spec)
    }

    fn command(&self, state: &Path, log: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.args(self.global_args(state, log)).args(args);
        if self.flavor == Flavor::Crun
            && Path::new("/sys/fs/cgroup/unified/cgroup.controllers").exists()
        {
            // crun refuses the hybrid layout; hide the cgroup2 mount in a private mount
            // namespace of its own (measured: about 3 ms).
            // SAFETY: unshare, mount and umount2 are async-signal-safe syscalls.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::unshare(libc::CLONE_NEWNS) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let root = c"/";
                    if libc::mount(
                        std::ptr::null(),
                        root.as_ptr(),
                        std::ptr::null(),
                        libc::MS_REC | libc::MS_PRIVATE,
                        std::ptr::null(),
                    ) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                    let unified = c"/sys/fs/cgroup/unified";
                    libc::umount2(unified.as_ptr(), libc::MNT_DETACH);
                    Ok(())
                });
            }
        }
        cmd
    }

    /// Runs one lifecycle command to completion, with its output captured.
    fn lifecycle(&self, state: &Path, log: &Path, args: &[&str]) -> Result<std::process::Output> {
        let out = self
            .command(state, log, args)
            .stdin(Stdio::null())
            .output()
            .map_err(io(format!("{} {}", self.binary.display(), args.join(" "))))?;
        if !out.status.success() {
            return Err(runtime_failure(
                &self.binary,
                args,
                &out.status,
                log,
                &out.stderr,
            ));
        }
        Ok(out)
    }
}

fn runtime_failure(
    binary: &Path,
    args: &[&str],
    status: &std::process::ExitStatus,
    log: &Path,
    stderr: &[u8],
) -> OciError {
    let mut text = String::from_utf8_lossy(stderr).trim().to_string();
    if let Ok(l) = fs::read_to_string(log) {
        let tail: Vec<&str> = l.lines().rev().take(3).collect();
        if !tail.is_empty() {
            text = format!(
                "{text}\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
    OciError::Runtime {
        command: format!(
            "{} {}",
            binary.display(),
            args.first().copied().unwrap_or("")
        ),
        status: status.to_string(),
        log: if text.trim().is_empty() {
            String::new()
        } else {
            format!(": {}", text.trim())
        },
    }
}

/// Runs `cmd` to completion while reaping the runtime's other processes that were
/// reparented to us (we are their subreaper): a runtime that waits for its helper to die
/// would otherwise see it as a zombie, alive, until its own timeout (runsc: 5 s).
fn run_reaping_orphans(mut cmd: Command) -> std::io::Result<std::process::ExitStatus> {
    let mut child = cmd.spawn()?;
    let own = child.id() as libc::pid_t;
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
fn reap_orphans(keep: libc::pid_t) {
    loop {
        // SAFETY: siginfo_t is plain data; waitid fills it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid with WNOWAIT only looks; it reaps nothing.
        let rc = unsafe {
            libc::waitid(
                libc::P_ALL,
                0,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        // SAFETY: si_pid is valid for a WEXITED result.
        let pid = unsafe { info.si_pid() };
        if rc != 0 || pid == 0 || pid == keep {
            return;
        }
        // SAFETY: reaps the one exited child just seen.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
    }
}

fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Writes "0" to each `cgroup.procs`: the calling process moves itself into the cgroup.
/// Runs between fork and exec, so it only makes syscalls on prepared buffers.
fn join_cgroup_in_child(cmd: &mut Command, procs: Vec<CString>) {
    // SAFETY: open, write and close are async-signal-safe; the paths were built before fork.
    unsafe {
        cmd.pre_exec(move || {
            for p in &procs {
                let fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let ok = libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
                libc::close(fd);
                if !ok {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

impl Runner for OciRunner {
    fn name(&self) -> String {
        self.label()
    }

    fn portable_bundle(&self) -> bool {
        true
    }

    fn run(
        &self,
        bundle: &Path,
        on_start: &mut dyn FnMut(&StartInfo),
    ) -> std::result::Result<RunOutcome, RunnerError> {
        Ok(self.run_bundle(bundle, on_start)?)
    }
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

/// One run's private places: the container id, the runtime's state directory
/// (`--root`), the derived bundle and the runtime's log.
struct Work {
    id: String,
    state: PathBuf,
    derived: PathBuf,
    log: PathBuf,
}

impl OciRunner {
    fn run_bundle(
        &self,
        bundle: &Path,
        on_start: &mut dyn FnMut(&StartInfo),
    ) -> Result<RunOutcome> {
        let decisions = self.decide(bundle)?;
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
        let result = self.lifecycle_run(&decisions, &w, on_start);
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
        let _ = fs::remove_dir_all(&work);
        result
    }

    fn lifecycle_run(
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
                .unwrap_or_default(),
        };
        let result = self.lifecycle_in_root(d, w, &rootfs, on_start);
        if let Some((lower, _)) = &d.overlay {
            let mut points = vec![rootfs.clone()];
            points.extend((0..lower.len()).map(|i| derived.join(format!("lower{i}"))));
            for p in points {
                let c = CString::new(p.display().to_string()).unwrap_or_default();
                // SAFETY: umount2 reads a NUL-terminated path; a path that is not a mount
                // point just fails.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
        result
    }

    /// Mounts an image root for the runtime: the layers under a writable layer in the
    /// run's state directory, at `derived/rootfs`; unmounted after the run.
    fn mount_overlay(
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
            let c = CString::new(upper.display().to_string()).unwrap_or_default();
            // SAFETY: chown reads a NUL-terminated path (the run's own state directory).
            unsafe { libc::chown(c.as_ptr(), u, g) };
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
                crate::native::mounts::attach_idmapped(l, &target, &ns).map_err(|e| {
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
    fn lifecycle_in_root(
        &self,
        d: &Decisions,
        w: &Work,
        rootfs: &Path,
        on_start: &mut dyn FnMut(&StartInfo),
    ) -> Result<RunOutcome> {
        let Some(rules) = &d.egress else {
            return self.lifecycle_with_netns(d, w, rootfs, None, on_start);
        };
        let (held, gateway) = crate::native::egress::prepare_namespace(rules)
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
            Some(RunCgroup::create(&layout, id, limits)?)
        } else {
            None
        };
        let pid_file = derived.with_file_name("container.pid");
        let pid_arg = pid_file.display().to_string();
        let bundle_arg = derived.display().to_string();
        let mut network_flag = None;
        if gvisor {
            network_flag = Some(format!("--network={}", d.network));
        }
        // The runtime's first process is reparented to us once `create` returns.
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
            return Err(OciError::Io {
                what: "becoming the runtime's subreaper".into(),
                error: std::io::Error::last_os_error(),
            });
        }
        let (sfd, old_mask) = forwarded_signals().map_err(|e| OciError::Io {
            what: "signals".into(),
            error: e.into(),
        })?;
        let outcome = (|| {
            let mut args: Vec<&str> = Vec::new();
            if let Some(flag) = &network_flag {
                args.push(flag);
            }
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
            // SAFETY: setsid is async-signal-safe.
            unsafe {
                create.pre_exec(|| {
                    libc::setsid();
                    Ok(())
                });
            }
            if let Some(cg) = &own_cgroup {
                let procs = cg
                    .dirs()
                    .iter()
                    .map(|d| {
                        CString::new(d.join("cgroup.procs").display().to_string())
                            .unwrap_or_default()
                    })
                    .collect();
                join_cgroup_in_child(&mut create, procs);
            }
            let read_pid =
                || -> Option<i32> { fs::read_to_string(&pid_file).ok()?.trim().parse().ok() };
            let (pid, mut waiter) = if gvisor {
                let mut child = create
                    .spawn()
                    .map_err(io(format!("{} run", self.binary.display())))?;
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
                let mut start_args: Vec<&str> = Vec::new();
                if let Some(flag) = &network_flag {
                    start_args.push(flag);
                }
                start_args.extend(["start", id]);
                self.lifecycle(state, log, &start_args)?;
                (pid, None)
            };
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
                namespaces: d.namespaces.clone(),
                landlock: d.landlock.as_ref().map(|(_, p)| *p),
                seccomp_filters: d.seccomp_filters(),
                degradations: d.degradations.clone(),
            });
            let mut forward = |sig: Signal| {
                if sig == Signal::SIGKILL {
                    // SAFETY: kill(2) of the container's first process; no memory effects.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
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
                    let status = child.wait().map_err(io("runsc run"))?;
                    reap_orphans(0);
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
    use covenant_images::{write_bundle, IdentityMap};
    use covenant_policy::{compile_request, Manifest};

    #[test]
    fn a_runtime_binary_others_could_write_is_refused() {
        // Under /tmp (1777) anybody could have planted or could swap it.
        let dir = tempfile::tempdir().unwrap();
        let planted = dir.path().join("runc");
        fs::copy("/bin/true", &planted).unwrap();
        let err = trusted_binary(&planted).unwrap_err();
        assert!(matches!(err, OciError::Untrusted { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("writable by its group or by others"),
            "{err}"
        );
        // A symlink to a trusted binary, from a folder others can write, is refused too.
        let link = dir.path().join("true");
        std::os::unix::fs::symlink("/usr/bin/true", &link).unwrap();
        assert!(matches!(
            trusted_binary(&link),
            Err(OciError::Untrusted { .. })
        ));
        assert!(trusted_binary(Path::new("usr/bin/true")).is_err());
        // The system's own binaries, also through root's symlinks (/bin on merged /usr).
        assert!(trusted_binary(Path::new("/usr/bin/true")).is_ok());
        assert!(trusted_binary(Path::new("/bin/true")).is_ok());
    }

    fn runner() -> OciRunner {
        let ctx = RunnerContext {
            state_dir: std::env::temp_dir(),
            enforcer: Some(PathBuf::from("/bin/true")),
        };
        OciRunner::generic(Path::new("/bin/true"), &ctx).unwrap()
    }

    /// A bundle with `edit` applied to its config.json.
    fn bundle(edit: impl FnOnce(&mut serde_json::Value)) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Manifest::parse("version = 1\ncommand = [\"true\"]\n").unwrap();
        m.base_dir = dir.path().to_path_buf();
        let plan = compile_request(&m, "job-oci").unwrap();
        write_bundle(
            &plan,
            &dir.path().join("b"),
            IdentityMap::subordinate(100_000, 100_000),
        )
        .unwrap();
        let path = dir.path().join("b/config.json");
        let mut config: serde_json::Value =
            serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        edit(&mut config);
        fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
        dir
    }

    #[test]
    fn a_bundle_without_seccomp_or_landlock_is_refused() {
        let r = runner();
        let ok = bundle(|_| {});
        assert!(r.decide(&ok.path().join("b")).is_ok());
        let no_seccomp = bundle(|c| {
            c["linux"].as_object_mut().unwrap().remove("seccomp");
        });
        let err = r.decide(&no_seccomp.path().join("b")).err().unwrap();
        assert!(err.to_string().contains("seccomp"), "{err}");
        let no_landlock = bundle(|c| {
            c["annotations"]
                .as_object_mut()
                .unwrap()
                .remove(annotations::LANDLOCK);
        });
        let err = r.decide(&no_landlock.path().join("b")).err().unwrap();
        assert!(err.to_string().contains("landlock"), "{err}");
    }
}
