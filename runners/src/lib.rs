//! Runners execute an OCI bundle. Only this crate makes namespace, mount, seccomp,
//! landlock or cgroup calls. `native` is Covenant's own runner; other runners (gVisor,
//! any runc-compatible runtime) implement the same [`Runner`] trait.

pub mod doctor;
pub mod enforce;
pub mod hostpath;
pub mod mount_api;
pub mod native;
pub mod oci;
pub mod supervise;
pub mod timing;

mod outcome;

pub use outcome::{CgroupEntry, ExitKind, RunOutcome, RunnerContext, StartInfo};

use std::path::Path;

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
    /// Each step is charged to `clock` as it ends, the last one being
    /// [`TimedStep::Wait`](timing::TimedStep::Wait) when the sandbox is gone.
    /// Leaves nothing behind but the bundle itself.
    fn run(
        &self,
        bundle: &Path,
        clock: &mut timing::Stopwatch,
        on_start: &mut dyn FnMut(&StartInfo),
    ) -> Result<RunOutcome, RunnerError>;

    /// [`Runner::run`] for a bundle whose `config.json` this process wrote from `spec`
    /// and still holds. A runner that reads the config itself takes it from memory
    /// instead of parsing the file again; one that hands the bundle to another program
    /// runs it from disk.
    fn run_written(
        &self,
        bundle: &Path,
        spec: &oci_spec::runtime::Spec,
        clock: &mut timing::Stopwatch,
        on_start: &mut dyn FnMut(&StartInfo),
    ) -> Result<RunOutcome, RunnerError> {
        let _ = spec;
        self.run(bundle, clock, on_start)
    }
}

/// The runner a name selects.
pub fn runner_for(name: &str, ctx: &RunnerContext) -> Result<Box<dyn Runner>, RunnerError> {
    match name {
        "native" => Ok(Box::new(native::NativeRunner {
            owner: ctx.owner.clone(),
            ..native::NativeRunner::default()
        })),
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

// The runners' side of the trait. Each runner is a plain struct with its own error; the
// trait, the error that gathers theirs, and the choice between them live here, so no
// runner module depends on this one.

impl Runner for native::NativeRunner {
    fn name(&self) -> String {
        "native".into()
    }

    fn portable_bundle(&self) -> bool {
        false
    }

    fn run(
        &self,
        bundle: &Path,
        clock: &mut timing::Stopwatch,
        on_start: &mut dyn FnMut(&StartInfo),
    ) -> Result<RunOutcome, RunnerError> {
        let spec = native::spec::NativeSpec::load(bundle)?;
        clock.lap(timing::TimedStep::Bundle);
        Ok(self.run_spec(&spec, clock, on_start)?)
    }

    fn run_written(
        &self,
        bundle: &Path,
        spec: &oci_spec::runtime::Spec,
        clock: &mut timing::Stopwatch,
        on_start: &mut dyn FnMut(&StartInfo),
    ) -> Result<RunOutcome, RunnerError> {
        let spec = native::spec::NativeSpec::from_spec(bundle, spec)?;
        clock.lap(timing::TimedStep::Bundle);
        Ok(self.run_spec(&spec, clock, on_start)?)
    }
}

impl Runner for oci::OciRunner {
    fn name(&self) -> String {
        self.label()
    }

    fn portable_bundle(&self) -> bool {
        true
    }

    fn run(
        &self,
        bundle: &Path,
        clock: &mut timing::Stopwatch,
        on_start: &mut dyn FnMut(&StartInfo),
    ) -> Result<RunOutcome, RunnerError> {
        Ok(self.run_bundle(bundle, clock, on_start)?)
    }
}
