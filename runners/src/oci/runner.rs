//! The OCI runners themselves: which runtime binary, trusted how, and how it is called.

use crate::outcome::RunnerContext;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use std::ffi::CStr;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Where the enforcer is bound inside the container.
pub(super) const ENFORCER_TARGET: &str = "/.covenant-enforce";
/// Where the host's C library is bound for the enforcer, in an image root.
pub(super) const ENFORCER_LIBS: &str = "/.covenant-enforce-libs";
/// The host's dynamic loader.
#[cfg(target_arch = "x86_64")]
pub(super) const HOST_LOADER: &str = "/lib64/ld-linux-x86-64.so.2";
#[cfg(target_arch = "aarch64")]
pub(super) const HOST_LOADER: &str = "/lib/ld-linux-aarch64.so.1";

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

pub(super) type Result<T> = std::result::Result<T, OciError>;

pub(super) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> OciError {
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

pub(super) fn on_path(name: &str) -> Option<PathBuf> {
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

    pub fn label(&self) -> String {
        match self.flavor {
            Flavor::Gvisor { .. } => "gvisor".into(),
            _ => format!("oci:{}", self.binary.display()),
        }
    }

    pub(super) fn unenforceable(&self, restriction: &str, reason: &str) -> OciError {
        OciError::Unenforceable {
            runtime: self.label(),
            restriction: restriction.into(),
            reason: reason.into(),
        }
    }

    /// The runtime's global flags.
    pub(super) fn global_args(&self, state: &Path, log: &Path) -> Vec<String> {
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

impl OciRunner {
    pub(super) fn command(&self, state: &Path, log: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.args(self.global_args(state, log)).args(args);
        if self.flavor == Flavor::Crun
            && Path::new("/sys/fs/cgroup/unified/cgroup.controllers").exists()
        {
            // crun refuses the hybrid layout; hide the cgroup2 mount in a private mount
            // namespace of its own (measured: about 3 ms).
            // Paths are C string literals, so nothing is allocated between fork and exec.
            let hide_unified = || -> std::io::Result<()> {
                private_mount_namespace()?;
                let _ = umount2(c"/sys/fs/cgroup/unified", MntFlags::MNT_DETACH);
                Ok(())
            };
            // SAFETY: the hook only makes async-signal-safe syscalls (unshare, mount,
            // umount2) on static C strings.
            unsafe { cmd.pre_exec(hide_unified) };
        }
        cmd
    }

    /// Runs one lifecycle command to completion, with its output captured.
    pub(super) fn lifecycle(
        &self,
        state: &Path,
        log: &Path,
        args: &[&str],
    ) -> Result<std::process::Output> {
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

pub(super) fn runtime_failure(
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

/// Between fork and exec: a mount namespace of the runtime's own, every mount in it
/// private, so what the hook mounts or unmounts next stays there. Only syscalls on static
/// C strings.
pub(super) fn private_mount_namespace() -> std::io::Result<()> {
    unshare(CloneFlags::CLONE_NEWNS)?;
    mount(
        None::<&CStr>,
        c"/",
        None::<&CStr>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&CStr>,
    )?;
    Ok(())
}
