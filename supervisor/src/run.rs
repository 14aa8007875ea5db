//! One run, embedded: plan → bundle → native runner → report, with the bundle removed
//! afterwards unless the caller keeps it.

use crate::home::covenant_home;
use covenant_images::{write_bundle, BundleError, IdentityMap};
use covenant_policy::{Degradation, NetMode, SandboxPlan};
use covenant_runners::native::{NativeError, NativeRunner};
use covenant_runners::{ExitKind, RunOutcome, Runner};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Host id range the sandbox's ids map to when run as root, unless `/etc/subuid` and
/// `/etc/subgid` have an entry for the user `covenant`.
pub const DEFAULT_SUBORDINATE_BASE: u32 = 100_000;
pub const SUBORDINATE_SIZE: u32 = 65_536;

/// Exit code when the timeout killed the sandbox.
pub const EXIT_TIMEOUT: i32 = 124;
/// Exit code when the run was refused or could not be set up.
pub const EXIT_SETUP: i32 = 125;
/// Exit code when the memory limit killed the program.
pub const EXIT_OOM: i32 = 137;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Native(#[from] NativeError),
    #[error("runner `{0}` is not available in this build; use `native`")]
    UnknownRunner(String),
    #[error("cannot create {path}: {error}")]
    Home {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot remove bundle directory {path}: {error}")]
    Cleanup {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// Caller's choices that are not part of the plan.
#[derive(Debug, Clone, Default)]
pub struct RunSettings {
    /// Write the bundle here and keep it after the run.
    pub keep_bundle: Option<PathBuf>,
    /// Runner name (`native`).
    pub runner: Option<String>,
}

/// The JSON run report (`--report FILE`).
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub job_id: String,
    pub exit_code: i32,
    pub exit: ExitKind,
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub oom_killed: bool,
    pub pids_limit_hits: u64,
    pub duration_ms: f64,
    pub cpu_time_ms: Option<f64>,
    pub peak_memory_bytes: Option<u64>,
    pub runner: String,
    pub namespaces: Vec<covenant_runners::native::Namespace>,
    pub landlock_abi: Option<i32>,
    pub landlock: Option<covenant_runners::native::LandlockPlan>,
    pub seccomp_profile: String,
    pub seccomp_digest: String,
    pub cgroup_version: Option<covenant_runners::native::CgroupVersion>,
    pub net: NetMode,
    pub plan_digest: String,
    pub config_digest: String,
    pub authorisation: covenant_policy::Authorisation,
    pub degradations: Vec<Degradation>,
}

impl RunReport {
    fn new(
        plan: &SandboxPlan,
        outcome: &RunOutcome,
        seccomp_digest: String,
        config_digest: String,
    ) -> Self {
        RunReport {
            job_id: plan.job_id.clone(),
            exit_code: exit_code(outcome),
            exit: outcome.exit,
            signal: match outcome.exit {
                ExitKind::Signaled(s) => Some(s),
                ExitKind::Killed => Some(libc::SIGKILL),
                ExitKind::Exited(_) => None,
            },
            timed_out: outcome.timed_out,
            oom_killed: outcome.oom_killed,
            pids_limit_hits: outcome.pids_limit_hits,
            duration_ms: outcome.duration.as_secs_f64() * 1000.0,
            cpu_time_ms: outcome.cpu_time_ns.map(|ns| ns as f64 / 1e6),
            peak_memory_bytes: outcome.peak_memory_bytes,
            runner: "native".into(),
            namespaces: outcome.namespaces.clone(),
            landlock_abi: outcome.landlock.map(|l| l.abi),
            landlock: outcome.landlock,
            seccomp_profile: plan.seccomp_profile.clone(),
            seccomp_digest,
            cgroup_version: outcome.cgroup_version,
            net: plan.net,
            plan_digest: plan.digest(),
            config_digest,
            authorisation: plan.authorisation.clone(),
            degradations: outcome.degradations_applied.clone(),
        }
    }
}

/// The exit status a caller sees: the program's own code, 128+N for signal N, 124 for the
/// timeout, 137 for an OOM kill.
pub fn exit_code(outcome: &RunOutcome) -> i32 {
    if outcome.timed_out {
        return EXIT_TIMEOUT;
    }
    match outcome.exit {
        ExitKind::Exited(code) => code,
        ExitKind::Signaled(sig) => 128 + sig,
        ExitKind::Killed => EXIT_OOM,
    }
}

/// The id map for this caller: a subordinate range as root, the caller alone otherwise.
pub fn identity_map() -> IdentityMap {
    // SAFETY: getters without failure modes.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    if uid != 0 {
        return IdentityMap::rootless(uid, gid);
    }
    let base = |file: &str| {
        std::fs::read_to_string(file).ok().and_then(|text| {
            text.lines().find_map(|l| {
                let mut parts = l.split(':');
                (parts.next()? == "covenant").then_some(())?;
                let start: u32 = parts.next()?.parse().ok()?;
                let count: u32 = parts.next()?.parse().ok()?;
                (count >= SUBORDINATE_SIZE && start > 0).then_some(start)
            })
        })
    };
    IdentityMap::subordinate(
        base("/etc/subuid").unwrap_or(DEFAULT_SUBORDINATE_BASE),
        base("/etc/subgid").unwrap_or(DEFAULT_SUBORDINATE_BASE),
    )
}

/// Runs `plan` to completion with the caller's stdio and returns the report.
pub fn run_plan(plan: &SandboxPlan, settings: &RunSettings) -> Result<RunReport, RunError> {
    match settings.runner.as_deref() {
        None | Some("native") => {}
        Some(other) => return Err(RunError::UnknownRunner(other.to_string())),
    }
    let (dir, keep) = match &settings.keep_bundle {
        Some(dir) => (dir.clone(), true),
        None => (covenant_home().join("bundles").join(&plan.job_id), false),
    };
    if !keep {
        ensure_traversable(&covenant_home())?;
    }
    let result = (|| {
        let bundle = write_bundle(plan, &dir, identity_map())?;
        let outcome = NativeRunner::default().run(&bundle.dir)?;
        Ok(RunReport::new(
            plan,
            &outcome,
            bundle.seccomp_digest,
            bundle.config_digest,
        ))
    })();
    if !keep {
        remove_bundle(&dir)?;
    }
    result
}

/// `$COVENANT_HOME` and its `bundles` folder, created 0711: the sandbox's host uid must be
/// able to pass through them to reach its rootfs, and nobody may list them.
fn ensure_traversable(home: &Path) -> Result<(), RunError> {
    use std::os::unix::fs::DirBuilderExt;
    for dir in [home.to_path_buf(), home.join("bundles")] {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o711)
                .create(&dir)
                .map_err(|error| RunError::Home {
                    path: dir.clone(),
                    error,
                })?;
        }
    }
    Ok(())
}

fn remove_bundle(dir: &Path) -> Result<(), RunError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(RunError::Cleanup {
            path: dir.to_path_buf(),
            error,
        }),
    }
}
