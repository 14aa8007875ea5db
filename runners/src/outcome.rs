//! What every runner shares: how a run ended, what it reports when the program starts,
//! and where runners keep their state. Plain data; no runner's code.

use serde::Serialize;
use std::time::Duration;

/// How the program ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
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
    pub namespaces: Vec<crate::native::spec::Namespace>,
    pub landlock: Option<crate::native::landlock::LandlockPlan>,
    pub seccomp_filters: usize,
    pub cgroup_version: Option<crate::native::cgroup::CgroupVersion>,
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
    pub cgroup: Option<(
        crate::native::cgroup::CgroupVersion,
        Vec<std::path::PathBuf>,
    )>,
    /// How the sandbox entered its cgroup, when the runner put it there itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup_entry: Option<CgroupEntry>,
    pub namespaces: Vec<crate::native::spec::Namespace>,
    pub landlock: Option<crate::native::landlock::LandlockPlan>,
    pub seccomp_filters: usize,
    pub degradations: Vec<covenant_policy::Degradation>,
}

/// How a sandbox's first process came to be in its cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CgroupEntry {
    /// Cloned straight into it (`clone3` with `CLONE_INTO_CGROUP`, cgroup v2).
    Clone,
    /// Moved there by the supervisor after the clone (`cgroup.procs`: cgroup v2 on a
    /// kernel without `CLONE_INTO_CGROUP`).
    Move,
    /// Moved itself in after the clone (`0` written to `tasks` in every hierarchy, cgroup
    /// v1): a move the kernel makes without the process-group lock, see
    /// [`crate::native::cgroup::join`].
    Join,
}

/// Where runners keep state and find the helper binary they inject.
#[derive(Debug, Clone)]
pub struct RunnerContext {
    /// A directory for runtime state (`--root`) and derived bundles.
    pub state_dir: std::path::PathBuf,
    /// A binary that runs `enforce -- ARGV` (the CLI itself), for runtimes that cannot
    /// apply landlock on their own.
    pub enforcer: Option<std::path::PathBuf>,
    /// The tag a run's own cgroups carry (the supervisor's home): once the supervisor is
    /// gone, a later run takes only its own home's abandoned cgroups.
    pub owner: Option<std::path::PathBuf>,
}
