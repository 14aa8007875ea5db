//! One run, embedded: plan → bundle → native runner → report, with the bundle removed
//! afterwards unless the caller keeps it.

use crate::authority::{authorise_compiled, load_capability, AuthorityError};
use crate::bundle_signature::{
    trusted_bundle_keys, verify_bundle, BundleSignatureError, VerifiedBundle,
};
use crate::home::{covenant_home, identity_map, new_job_id};
use crate::store::Kind;
use crate::store::{AuditEvent, StoreBeside, StoreError};
use covenant_images::{write_bundle, write_native_bundle, Bundle, BundleError, IdentityMap};
use covenant_policy::Manifest;
use covenant_policy::{Degradation, NetMode, SandboxPlan};
use covenant_runners::timing::{StepTimings, Stopwatch, TimedStep};
use covenant_runners::{runner_for, RunnerContext, RunnerError};
use covenant_runners::{ExitKind, RunOutcome, Runner, StartInfo};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

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
    Runner(#[from] RunnerError),
    #[error(transparent)]
    Authority(#[from] AuthorityError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    BundleSignature(#[from] BundleSignatureError),
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
    #[error(transparent)]
    Path(#[from] crate::host_paths::PathRefused),
    #[error(transparent)]
    Namespace(#[from] covenant_runners::hostpath::HostPathError),
    #[error(transparent)]
    Image(#[from] covenant_images::store::ImageError),
}

/// Caller's choices that are not part of the plan.
#[derive(Debug, Clone, Default)]
pub struct RunSettings {
    /// Write the bundle here and keep it after the run.
    pub keep_bundle: Option<PathBuf>,
    /// The runner for a bundle run from disk (`run --bundle`), the local operator's
    /// choice. A compiled plan always runs on the runner it was authorised for.
    pub runner: Option<String>,
}

/// The JSON run report (`--report FILE`).
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// The limits the run was held to (the request's, or the grant's ceilings).
    pub limits: covenant_policy::Limits,
    pub plan_digest: String,
    pub config_digest: String,
    pub authorisation: covenant_policy::Authorisation,
    pub degradations: Vec<Degradation>,
    /// What in the run's writable paths would make git on the host run code the sandbox
    /// chose: hooks and code-running config of repositories made during the run.
    pub git_findings: Vec<crate::gitsafe::GitFinding>,
    /// With `net` egress: the gateway's totals, the first refusals, and whether the
    /// gateway lasted the run (its events are in the audit log).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress: Option<covenant_egress::EgressReport>,
    /// Microseconds per step of the run, in order, from the request to this report
    /// (`docs/run-report.md`); `covenant-ctl run --timings` prints them.
    #[serde(default)]
    pub timings_us: StepTimings,
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
            runner: String::new(),
            namespaces: outcome.namespaces.clone(),
            landlock_abi: outcome.landlock.map(|l| l.abi),
            landlock: outcome.landlock,
            seccomp_profile: plan.seccomp_profile.clone(),
            seccomp_digest,
            cgroup_version: outcome.cgroup_version,
            net: plan.net,
            limits: plan.limits.clone(),
            plan_digest: plan.digest(),
            config_digest,
            authorisation: plan.authorisation.clone(),
            degradations: outcome.degradations_applied.clone(),
            git_findings: Vec::new(),
            egress: outcome.egress.clone().map(|mut e| {
                e.events = Vec::new();
                e
            }),
            timings_us: StepTimings::default(),
        }
    }
}

/// The gateway's events, in batches of [`EGRESS_BATCH`] per audit event, then its totals.
fn audit_egress(audit: &mut RunAudit<'_>, report: &covenant_egress::EgressReport) {
    use covenant_egress::events::EventKind;
    for (kind, audit_kind) in [
        (EventKind::Connect, Kind::EgressConnect),
        (EventKind::Query, Kind::EgressQuery),
    ] {
        let events: Vec<&covenant_egress::EgressEvent> =
            report.events.iter().filter(|e| e.kind == kind).collect();
        for batch in events.chunks(EGRESS_BATCH) {
            audit.push(audit_kind, serde_json::json!({ "events": batch }));
        }
    }
    let mut summary = report.clone();
    summary.events = Vec::new();
    summary.refused = Vec::new();
    audit.push(Kind::EgressSummary, crate::store::audit::body_of(&summary));
}

/// Gateway events per audit event.
const EGRESS_BATCH: usize = 256;

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

/// Where a run's audit events go when they are flushed: the store itself (embedded), or
/// the daemon that owns it (a daemon job's sandbox process).
pub type AuditSink<'a> = dyn FnMut(Vec<AuditEvent>) -> Result<(), RunError> + 'a;

/// The record of one run as it is made: its audit events, written in a few durable
/// batches (once the program runs, and when it has ended), and the time each step took.
pub struct RunAudit<'a> {
    job: String,
    pending: Vec<AuditEvent>,
    sink: &'a mut AuditSink<'a>,
    /// Laps of the run's steps, from when this record was started (or the clock it was
    /// given) on.
    pub clock: Stopwatch,
    /// Whether the sink's store opens beside the run's preparation: the wait for it is
    /// then the run's [`TimedStep::Store`].
    pub store_beside: bool,
    /// Whether [`RunAudit::ready`] has succeeded: the sink takes events from then on.
    ready: bool,
}

impl<'a> RunAudit<'a> {
    pub fn new(job: &str, pending: Vec<AuditEvent>, sink: &'a mut AuditSink<'a>) -> Self {
        Self {
            job: job.to_string(),
            pending,
            sink,
            clock: Stopwatch::start(),
            store_beside: false,
            ready: false,
        }
    }

    pub fn push(&mut self, kind: Kind, mut body: serde_json::Value) {
        body["job"] = serde_json::Value::String(self.job.clone());
        self.pending.push(AuditEvent::new(kind, body));
    }

    /// Waits until the sink can take events: an empty batch, which an embedded run's sink
    /// takes as "wait for the store opened beside the preparation" (see
    /// [`StoreBeside`]). A run calls it before its sandbox is made, so a sink that cannot
    /// take events refuses the run first.
    pub fn ready(&mut self) -> Result<(), RunError> {
        if self.ready {
            return Ok(());
        }
        (self.sink)(Vec::new())?;
        self.ready = true;
        if self.store_beside {
            self.clock.lap(TimedStep::Store);
        }
        Ok(())
    }

    pub fn flush(&mut self) -> Result<(), RunError> {
        if !self.pending.is_empty() {
            let events = std::mem::take(&mut self.pending);
            (self.sink)(events)?;
        }
        Ok(())
    }

    /// The events not flushed yet.
    pub fn into_pending(self) -> Vec<AuditEvent> {
        self.pending
    }
}

/// Authorises, runs and audits one request end to end: intent, capability verified or
/// refused, plan compiled, bundle written, sandbox started, degradations, limits hit,
/// exit. Returns the report; any refusal or failure is audited before it is returned.
pub fn run_request(
    manifest: &Manifest,
    capability: Option<&str>,
    settings: &RunSettings,
) -> Result<RunReport, RunError> {
    let clock = Stopwatch::start();
    let store = std::cell::RefCell::new(StoreBeside::open_default("covenant-ctl run"));
    let job = new_job_id();
    let mut sink = |events: Vec<AuditEvent>| -> Result<(), RunError> {
        store.borrow_mut().append_batch(events)?;
        Ok(())
    };
    let mut audit = RunAudit::new(&job, Vec::new(), &mut sink);
    audit.clock = clock;
    audit.store_beside = true;
    let uid = nix::unistd::getuid().as_raw();
    audit.push(
        Kind::RunIntent,
        serde_json::json!({
            "uid": uid, "pid": std::process::id(), "argv": manifest.command,
            "capability": if capability.is_some() { "presented" } else { "operator" },
        }),
    );
    let result = authorised_run(&mut audit, manifest, capability, settings);
    covenant_runners::native::cgroup_warmup::finish();
    if let Err(e) = &result {
        audit.push(
            refusal_kind(e),
            serde_json::json!({"reason": e.to_string()}),
        );
    }
    let mut clock = std::mem::take(&mut audit.clock);
    let by = audit.job.clone();
    let mut pending = audit.into_pending();
    pending.extend(crate::abandoned::sweep(&covenant_home(), &by));
    store.into_inner().close(pending)?;
    finish_timings(result, &mut clock)
}

/// Starts the wait a move into a v1 cgroup has after a quiet spell now, beside an
/// authorised embedded run's preparation, instead of after its sandbox's clone (see
/// [`covenant_runners::native::cgroup_warmup`]): an OCI runtime moves its container
/// there on a v1 host. The native runner's init moves itself in without that wait
/// (`cgroup::join`), so its runs start no helper; nor do a daemon's jobs: under load
/// their moves keep the lock warm. The helper is reaped once the runtime has made its
/// container, or when the run has ended.
fn warm_cgroup_attach(runner: &covenant_policy::RunnerChoice) {
    if *runner == covenant_policy::RunnerChoice::Native {
        return;
    }
    let runner = covenant_runners::native::NativeRunner::default();
    covenant_runners::native::cgroup_warmup::start(&runner.cgroup_root);
}

/// Charges what is left (the last commit included) to the teardown and puts the
/// timings in the report.
fn finish_timings(
    result: Result<RunReport, RunError>,
    clock: &mut Stopwatch,
) -> Result<RunReport, RunError> {
    clock.lap(TimedStep::Teardown);
    result.map(|mut report| {
        report.timings_us = clock.timings().clone();
        report
    })
}

/// The audit event kind that records `e`.
pub fn refusal_kind(e: &RunError) -> Kind {
    match e {
        RunError::Authority(
            AuthorityError::Token(_) | AuthorityError::Verify(_) | AuthorityError::Read { .. },
        ) => Kind::CapabilityRefused,
        RunError::Authority(AuthorityError::Refused(_)) => Kind::RequestRefused,
        RunError::Authority(AuthorityError::Compile(_) | AuthorityError::Path(_))
        | RunError::Path(_) => Kind::RequestInvalid,
        _ => Kind::RunFailed,
    }
}

fn authorised_run(
    audit: &mut RunAudit<'_>,
    manifest: &Manifest,
    capability: Option<&str>,
    settings: &RunSettings,
) -> Result<RunReport, RunError> {
    let request =
        covenant_policy::compile_request(manifest, &audit.job).map_err(AuthorityError::from)?;
    audit.clock.lap(TimedStep::Compile);
    let cap = capability.map(load_capability).transpose()?;
    let plan = authorise_compiled(request, cap.as_ref())?;
    audit.clock.lap(TimedStep::Authorise);
    audit.push(
        Kind::CapabilityVerified,
        crate::store::audit::body_of(&plan.authorisation),
    );
    audit.push(
        Kind::PlanCompiled,
        serde_json::json!({"plan_digest": plan.digest(), "seccomp_profile": plan.seccomp_profile}),
    );
    warm_cgroup_attach(&plan.runner);
    run_plan(audit, &plan, settings)
}

fn runner(name: &str) -> Result<Box<dyn Runner>, RunError> {
    let home = covenant_home();
    let ctx = RunnerContext {
        state_dir: home.join("runtime"),
        enforcer: std::env::current_exe().ok(),
        // Matched by `abandoned::sweep` against the home's real path.
        owner: Some(std::fs::canonicalize(&home).unwrap_or(home)),
    };
    Ok(runner_for(name, &ctx)?)
}

/// Where a run's host paths are staged: `$COVENANT_HOME/staging/JOB`, root's alone.
pub fn staging_dir(job: &str) -> PathBuf {
    covenant_home().join("staging").join(job)
}

/// Runs an authorised `plan` with the caller's stdio; returns the report.
///
/// Every host path of the plan is opened again without following symlinks and must
/// still be the object recorded when it was authorised. As root, each is then attached
/// by descriptor under [`staging_dir`], in a mount namespace of this process's own, and
/// the bundle names those places: whatever a path names by the time the runner looks,
/// the sandbox gets the object that was checked. A bundle kept for later
/// (`settings.keep_bundle`) names the host paths themselves; it is written beside this
/// run's own and checked again when it is run.
pub fn run_plan(
    audit: &mut RunAudit<'_>,
    plan: &SandboxPlan,
    settings: &RunSettings,
) -> Result<RunReport, RunError> {
    let runner = runner(&plan.runner.name())?;
    if let Some(kept) = &settings.keep_bundle {
        // A signed bundle outlives the run: it is made only once the store can record it.
        audit.ready()?;
        // The kept bundle names the host paths, to be checked again when it is run, and
        // is signed like `bundle --out`'s; this run goes through a bundle of its own like
        // any other.
        let bundle = write_bundle(plan, kept, identity_map())?;
        let key = crate::keys::supervisor_key().map_err(AuthorityError::from)?;
        crate::bundle_signature::sign_bundle(&bundle.dir, &key)?;
        audit.push(
            Kind::BundleKept,
            serde_json::json!({"config_digest": bundle.config_digest, "dir": bundle.dir}),
        );
    }
    // Until the run ends, its image cannot be removed.
    let _image = crate::images::hold(plan)?;
    let home = covenant_home();
    let dir = home.join("bundles").join(&plan.job_id);
    ensure_traversable(&home)?;
    let stage = nix::unistd::geteuid()
        .is_root()
        .then(|| staging_dir(&plan.job_id));
    // The run's own mount namespace, left again when the run is over: what follows the
    // run (the abandoned-run sweep) sees the host's folders.
    let mut host = None;
    if let Some(stage) = &stage {
        use covenant_runners::hostpath::{enter_private_mount_namespace, mount_private_folder};
        let entered = enter_private_mount_namespace()?;
        let staging = stage.parent().unwrap_or(Path::new("/"));
        // The bundle and the staging places live in memory, in this run's namespace only.
        let private = ensure_traversable_dir(staging)
            .and_then(|()| Ok(mount_private_folder(&home.join("bundles"))?))
            .and_then(|()| Ok(mount_private_folder(staging)?));
        if let Err(e) = private {
            let _ = entered.restore();
            return Err(e);
        }
        host = Some(entered);
    }
    let ids = identity_map();
    let outcome =
        crate::host_paths::pin_for_run(plan, stage.as_deref(), (ids.host_uid, ids.host_gid))
            .map_err(RunError::from)
            .and_then(|mut pinned| {
                audit.clock.lap(TimedStep::HostPaths);
                let result = run_pinned(audit, plan, &mut pinned, &dir, runner.as_ref(), ids);
                // Every staged object is detached before its place is removed.
                let released = pinned.release();
                let report = result?;
                released?;
                Ok(report)
            });
    // The places are removed one by one with rmdir/unlink, which fail on anything still
    // attached instead of descending into it.
    let cleaned = stage
        .as_deref()
        .map_or(Ok(()), remove_staging)
        .and_then(|()| remove_bundle(&dir));
    let restored = host.map_or(Ok(()), |h| h.restore());
    let mut report = outcome?;
    cleaned?;
    restored?;
    audit.clock.lap(TimedStep::Teardown);
    report.timings_us = audit.clock.timings().clone();
    Ok(report)
}

/// Writes the bundle of a pinned run in `dir`, runs it, and names what in its writable
/// paths would make git on the host run code the sandbox chose.
fn run_pinned(
    audit: &mut RunAudit<'_>,
    plan: &SandboxPlan,
    pinned: &mut crate::host_paths::PinnedRun,
    dir: &Path,
    runner: &dyn Runner,
    ids: IdentityMap,
) -> Result<RunReport, RunError> {
    let bundle_plan = &pinned.bundle_plan;
    let bundle = if runner.portable_bundle() {
        write_bundle(bundle_plan, dir, ids)?
    } else {
        write_native_bundle(bundle_plan, dir, ids)?
    };
    audit.push(
        Kind::BundleWritten,
        serde_json::json!({"config_digest": bundle.config_digest, "dir": bundle.dir}),
    );
    audit.clock.lap(TimedStep::Bundle);
    let mut report = execute(audit, plan, &bundle, runner)?;
    report.git_findings = pinned.git_findings();
    if !report.git_findings.is_empty() {
        audit.push(
            Kind::WorkspaceGitFindings,
            serde_json::json!({"findings": report.git_findings}),
        );
    }
    Ok(report)
}

/// Runs a bundle written earlier (`covenant-ctl bundle --out DIR`). The bundle must be
/// signed by a trusted key, its `plan.json` must be the signed plan, and its `config.json`
/// exactly what that plan compiles to (see [`crate::bundle_signature`]); anything else is
/// refused, naming the first field that differs. What runs is the verified plan, written
/// afresh by the normal run path: never the files on disk. The bundle is left in place.
pub fn run_bundle(dir: &Path, settings: &RunSettings) -> Result<RunReport, RunError> {
    let clock = Stopwatch::start();
    let store = std::cell::RefCell::new(StoreBeside::open_default("covenant-ctl run --bundle"));
    let mut sink = |events: Vec<AuditEvent>| -> Result<(), RunError> {
        store.borrow_mut().append_batch(events)?;
        Ok(())
    };
    let mut audit = RunAudit::new(&new_job_id(), Vec::new(), &mut sink);
    audit.clock = clock;
    audit.store_beside = true;
    let uid = nix::unistd::getuid().as_raw();
    audit.push(
        Kind::RunIntent,
        serde_json::json!({"uid": uid, "pid": std::process::id(), "bundle": dir}),
    );
    let result = verified_bundle_run(&mut audit, dir, settings);
    covenant_runners::native::cgroup_warmup::finish();
    if let Err(e) = &result {
        let kind = match e {
            RunError::BundleSignature(_) => Kind::BundleRefused,
            _ => Kind::RunFailed,
        };
        audit.push(kind, serde_json::json!({"reason": e.to_string()}));
    }
    let mut clock = std::mem::take(&mut audit.clock);
    let by = audit.job.clone();
    let mut pending = audit.into_pending();
    pending.extend(crate::abandoned::sweep(&covenant_home(), &by));
    store.into_inner().close(pending)?;
    finish_timings(result, &mut clock)
}

fn verified_bundle_run(
    audit: &mut RunAudit<'_>,
    dir: &Path,
    settings: &RunSettings,
) -> Result<RunReport, RunError> {
    let trusted = trusted_bundle_keys()?;
    let VerifiedBundle {
        mut plan,
        signature,
    } = verify_bundle(dir, &trusted, identity_map())?;
    audit.clock.lap(TimedStep::Authorise);
    // A signed bundle says which plan an operator approved; running it is the local
    // operator's act, and what the bundle claims about its authority is recorded as a
    // claim. Each run is its own job, so a bundle may run again (or twice at once).
    let claimed = crate::store::audit::body_of(&plan.authorisation);
    let bundle_job = std::mem::replace(&mut plan.job_id, audit.job.clone());
    let operator = crate::keys::operator_key().map_err(AuthorityError::from)?;
    plan.authorisation = covenant_policy::Authorisation::Operator {
        key: covenant_policy::token::encode_key(&operator.verifying_key().to_bytes()),
    };
    audit.push(
        Kind::CapabilityVerified,
        crate::store::audit::body_of(&plan.authorisation),
    );
    audit.push(
        Kind::BundleVerified,
        serde_json::json!({
            "dir": dir, "bundle_job": bundle_job, "signed_by": signature.public_key,
            "plan_digest": signature.plan_digest, "config_digest": signature.config_digest,
            "claimed_authorisation": claimed, "argv": plan.argv,
        }),
    );
    // Which runner executes a bundle from disk is the local operator's choice.
    if let Some(name) = &settings.runner {
        plan.runner = covenant_policy::RunnerChoice::parse(name)
            .map_err(|reason| RunError::Bundle(BundleError::Spec(format!("--runner: {reason}"))))?;
    }
    let fresh = RunSettings {
        keep_bundle: None,
        runner: None,
    };
    warm_cgroup_attach(&plan.runner);
    run_plan(audit, &plan, &fresh)
}

/// Runs `bundle` with `runner` and audits what happened.
fn execute(
    audit: &mut RunAudit<'_>,
    plan: &SandboxPlan,
    bundle: &Bundle,
    runner: &dyn Runner,
) -> Result<RunReport, RunError> {
    audit.ready()?;
    let mut start_error = None;
    let mut clock = std::mem::take(&mut audit.clock);
    let outcome = runner.run_written(
        &bundle.dir,
        &bundle.spec,
        &mut clock,
        &mut |info: &StartInfo| {
            audit.push(Kind::SandboxStarted, crate::store::audit::body_of(info));
            for d in &info.degradations {
                audit.push(
                    Kind::DegradationAccepted,
                    serde_json::json!({"degradation": d.name()}),
                );
            }
            if let Err(e) = audit.flush() {
                start_error = Some(e);
            }
        },
    );
    audit.clock = clock;
    let outcome = outcome?;
    let mut report = RunReport::new(
        plan,
        &outcome,
        bundle.seccomp_digest.clone(),
        bundle.config_digest.clone(),
    );
    report.runner = runner.name();
    if report.oom_killed {
        audit.push(
            Kind::LimitHit,
            serde_json::json!({"limit": "memory", "bytes": plan.limits.memory_bytes}),
        );
    }
    if report.pids_limit_hits > 0 {
        audit.push(Kind::LimitHit, serde_json::json!({"limit": "pids", "max": plan.limits.pids, "refused_forks": report.pids_limit_hits}));
    }
    for sig in &outcome.signals_forwarded {
        audit.push(
            Kind::SandboxSignalled,
            serde_json::json!({"signal": sig, "by": "caller"}),
        );
    }
    if report.timed_out {
        audit.push(
            Kind::LimitHit,
            serde_json::json!({"limit": "timeout", "ms": plan.limits.timeout_ms}),
        );
        audit.push(
            Kind::SandboxKilled,
            serde_json::json!({"reason": "timeout"}),
        );
    }
    if let Some(egress) = &outcome.egress {
        audit_egress(audit, egress);
    }
    // The record's teardown runs up to the record itself; the report's includes the rest.
    audit.clock.lap(TimedStep::Teardown);
    audit.push(
        Kind::RunExited,
        serde_json::json!({
            "exit_code": report.exit_code, "signal": report.signal, "duration_ms": report.duration_ms,
            "cpu_time_ms": report.cpu_time_ms, "peak_memory_bytes": report.peak_memory_bytes,
            "timings_us": audit.clock.timings(),
        }),
    );
    match start_error {
        Some(e) => Err(e),
        None => Ok(report),
    }
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

/// A directory others may pass through but not list (0711), created when missing: an
/// overlay root is mounted by the sandbox's own (unprivileged) root, which must reach
/// its staged layers. What is attached there exists only in this process's mount
/// namespace; on the host the places are empty.
fn ensure_traversable_dir(dir: &Path) -> Result<(), RunError> {
    use std::os::unix::fs::DirBuilderExt;
    use std::os::unix::fs::PermissionsExt;
    let home = |error| RunError::Home {
        path: dir.to_path_buf(),
        error,
    };
    match std::fs::DirBuilder::new().mode(0o711).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).map_err(home)
        }
        Err(error) => Err(home(error)),
    }
}

/// Removes a staging directory whose objects were detached: each place is removed with
/// `rmdir`/`unlink`, which fail on a mount point instead of descending into it.
pub fn remove_staging(dir: &Path) -> Result<(), RunError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => {
            return Err(RunError::Cleanup {
                path: dir.to_path_buf(),
                error,
            })
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        let removed = if is_dir {
            std::fs::remove_dir(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.map_err(|error| RunError::Cleanup {
            path: path.clone(),
            error,
        })?;
    }
    std::fs::remove_dir(dir).map_err(|error| RunError::Cleanup {
        path: dir.to_path_buf(),
        error,
    })
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
