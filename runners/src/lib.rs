//! Runners execute an OCI bundle. Only this crate makes namespace, mount, seccomp,
//! landlock or cgroup calls. `native` is Covenant's own runner; other runners (gVisor,
//! any runc-compatible runtime) implement the same [`Runner`] trait.

pub mod doctor;
pub mod enforce;
pub mod hostpath;
pub mod native;
pub mod oci;
pub mod supervise;

use serde::Serialize;
use std::path::Path;
use std::time::Duration;

/// How the program ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "value")]
pub enum ExitKind {
    /// It exited with this code.
    Exited(i32),
    /// It was killed by this signal.
    Signaled(i32),
    /// The sandbox was killed before the program's status could be read (timeout).
    Killed,
}

/// What a run did, as the runner saw it.
#[derive(Debug, Clone, Serialize)]
pub struct RunOutcome {
    pub exit: ExitKind,
    pub timed_out: bool,
    pub oom_killed: bool,
    pub pids_limit_hits: u64,
    pub duration: Duration,
    pub cpu_time_ns: Option<u64>,
    pub peak_memory_bytes: Option<u64>,
    pub namespaces: Vec<native::Namespace>,
    pub landlock: Option<native::LandlockPlan>,
    pub seccomp_filters: usize,
    pub cgroup_version: Option<native::CgroupVersion>,
    pub degradations_applied: Vec<covenant_policy::Degradation>,
    /// Signals the caller sent that reached the sandbox (SIGINT, SIGTERM, ...).
    pub signals_forwarded: Vec<i32>,
    /// With `net` egress: what the gateway decided, and whether it outlived the run.
    pub egress: Option<covenant_egress::EgressReport>,
}

/// What a runner reports once the program is running (for the audit log).
#[derive(Debug, Clone, Serialize)]
pub struct StartInfo {
    pub runner: &'static str,
    /// The sandbox's init, as the host sees it.
    pub pid: i32,
    pub cgroup: Option<(native::CgroupVersion, Vec<std::path::PathBuf>)>,
    pub namespaces: Vec<native::Namespace>,
    pub landlock: Option<native::LandlockPlan>,
    pub seccomp_filters: usize,
    pub degradations: Vec<covenant_policy::Degradation>,
}

/// Why a runner could not run a bundle.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error(transparent)]
    Native(#[from] native::NativeError),
    #[error(transparent)]
    Spec(#[from] native::spec::SpecError),
    #[error(transparent)]
    Oci(#[from] oci::OciError),
    #[error("runner `{0}` is unknown: use native, gvisor, or oci:PATH (a runc-compatible binary)")]
    Unknown(String),
}

/// Something that can run an OCI bundle to completion.
pub trait Runner {
    /// The name a user selects it by (`native`, `gvisor`, `oci:/usr/bin/crun`).
    fn name(&self) -> String;

    /// Whether it needs a portable bundle (a rootfs holding every mount point) rather
    /// than the native runner's in-memory root.
    fn portable_bundle(&self) -> bool;

    /// Runs the bundle at `bundle`, with the caller's stdin, stdout and stderr, until the
    /// program exits or is killed; `on_start` is called once the program is running.
    /// Leaves nothing behind but the bundle itself.
    fn run(
        &self,
        bundle: &Path,
        on_start: &mut dyn FnMut(&StartInfo),
    ) -> Result<RunOutcome, RunnerError>;
}

/// Where runners keep state and find the helper binary they inject.
#[derive(Debug, Clone)]
pub struct RunnerContext {
    /// A directory for runtime state (`--root`) and derived bundles.
    pub state_dir: std::path::PathBuf,
    /// A binary that runs `enforce -- ARGV` (the CLI itself), for runtimes that cannot
    /// apply landlock on their own.
    pub enforcer: Option<std::path::PathBuf>,
}

/// The runner a name selects.
pub fn runner_for(name: &str, ctx: &RunnerContext) -> Result<Box<dyn Runner>, RunnerError> {
    match name {
        "native" => Ok(Box::new(native::NativeRunner::default())),
        "gvisor" => Ok(Box::new(oci::OciRunner::gvisor(ctx)?)),
        other => match other.strip_prefix("oci:") {
            Some(path) => Ok(Box::new(oci::OciRunner::generic(
                std::path::Path::new(path),
                ctx,
            )?)),
            None => Err(RunnerError::Unknown(other.to_string())),
        },
    }
}
