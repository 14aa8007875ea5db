//! Runners execute an OCI bundle. Only this crate makes namespace, mount, seccomp,
//! landlock or cgroup calls. `native` is Covenant's own runner; other runners (gVisor,
//! any runc-compatible runtime) implement the same [`Runner`] trait.

pub mod doctor;
pub mod native;

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

/// Something that can run an OCI bundle to completion.
pub trait Runner {
    type Error: std::error::Error + Send + Sync + 'static;

    fn name(&self) -> &'static str;

    /// Runs the bundle at `bundle`, with the caller's stdin, stdout and stderr, until the
    /// program exits or is killed; `on_start` is called once the program is running.
    /// Leaves nothing behind but the bundle itself.
    fn run(
        &self,
        bundle: &Path,
        on_start: &mut dyn FnMut(&StartInfo),
    ) -> Result<RunOutcome, Self::Error>;
}
