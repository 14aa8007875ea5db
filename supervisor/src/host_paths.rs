//! The host paths of an authorised plan: checked once right after authorisation (each
//! must exist without a symlink on its way, be of the kind its use needs, and its object
//! is recorded in the plan), and pinned when the run starts (opened again the same way,
//! refused unless it is still the recorded object, and staged by descriptor for the
//! runner). Nothing here decides what is granted: that was decided by name, in policy,
//! before any of these paths was looked at, so a refusal here never tells a caller
//! anything about a path outside its grant.

use crate::gitsafe::{self, GitFinding, GitSafeError, RepoGuard};
use covenant_policy::compile::WORKSPACE_TARGET;
use covenant_policy::PlanMount;
use covenant_policy::{MountAccess, PinnedPath, RootfsSource, RunnerChoice, SandboxPlan};
use covenant_runners::hostpath::{self, HostObject, HostPathError, ObjectKind, Staging};
use std::path::{Path, PathBuf};

/// A host path refused, with the request field that named it.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {error}")]
pub struct PathRefused {
    pub field: &'static str,
    pub error: PathProblem,
}

/// What is wrong with a host path.
#[derive(Debug, thiserror::Error)]
pub enum PathProblem {
    #[error(transparent)]
    Host(#[from] HostPathError),
    #[error(transparent)]
    Git(#[from] GitSafeError),
}

fn refusal<E: Into<PathProblem>>(field: &'static str) -> impl Fn(E) -> PathRefused {
    move |error| PathRefused {
        field,
        error: error.into(),
    }
}

/// Where a host path is used in a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Use {
    Mount(usize),
    RootDir,
    Keep,
}

struct Entry {
    field: &'static str,
    path: PathBuf,
    used: Use,
    /// Must be a directory (the workspace, a root, the kept layer).
    dir: bool,
}

fn entries(plan: &SandboxPlan) -> Vec<Entry> {
    let mut out: Vec<Entry> = plan
        .mounts
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let workspace = m.target == Path::new(WORKSPACE_TARGET);
            Entry {
                field: match m.access {
                    _ if workspace => "workspace",
                    MountAccess::ReadOnly => "read",
                    MountAccess::ReadExec => "exec",
                    MountAccess::ReadWrite => "write",
                },
                path: m.host.clone(),
                used: Use::Mount(i),
                dir: workspace,
            }
        })
        .collect();
    if let RootfsSource::Dir { path } = &plan.rootfs {
        out.push(Entry {
            field: "rootfs",
            path: path.clone(),
            used: Use::RootDir,
            dir: true,
        });
    }
    if let Some(keep) = &plan.keep_changes {
        out.push(Entry {
            field: "keep_changes",
            path: keep.clone(),
            used: Use::Keep,
            dir: true,
        });
    }
    out
}

fn open(entry: &Entry) -> Result<HostObject, PathRefused> {
    let refused = refusal::<HostPathError>(entry.field);
    let object = hostpath::open(&entry.path).map_err(&refused)?;
    if entry.dir {
        object.expect_dir().map_err(&refused)?;
    }
    Ok(object)
}

impl Entry {
    /// A path the sandbox may write.
    fn writable(&self, plan: &SandboxPlan) -> bool {
        match self.used {
            Use::Mount(i) => plan.mounts[i].access == MountAccess::ReadWrite,
            Use::Keep => true,
            Use::RootDir => false,
        }
    }
}

/// Why an authorised plan cannot run here: its runner binary or one of its paths.
#[derive(Debug, thiserror::Error)]
pub enum PlanRefused {
    #[error("runner: {0}")]
    Runner(covenant_runners::oci::OciError),
    #[error(transparent)]
    Path(#[from] PathRefused),
}

/// Right after authorisation: checks that an OCI runner's binary is root's (see
/// `trusted_binary`), opens every host path of `plan` without following symlinks, checks
/// its kind, refuses a writable path inside a git directory, and records the object each
/// names in `plan.pinned`. A kept layer that does not exist yet needs an existing parent;
/// it is created when the run starts.
pub fn check_plan(plan: &mut SandboxPlan) -> Result<(), PlanRefused> {
    if let RunnerChoice::Oci { path } = &plan.runner {
        covenant_runners::oci::trusted_binary(path).map_err(PlanRefused::Runner)?;
    }
    let mut pinned = Vec::new();
    for entry in entries(plan) {
        let refused = refusal::<HostPathError>(entry.field);
        if entry.writable(plan) {
            gitsafe::refuse_inside_git(&entry.path)
                .map_err(refusal::<GitSafeError>(entry.field))?;
        }
        if entry.used == Use::Keep {
            match hostpath::open(&entry.path) {
                Err(HostPathError::Missing { .. }) => {
                    let parent = entry.path.parent().unwrap_or(Path::new("/"));
                    hostpath::open(parent)
                        .and_then(|p| p.expect_dir())
                        .map_err(&refused)?;
                    continue;
                }
                Err(error) => return Err(refused(error).into()),
                Ok(_) => {}
            }
        }
        let object = open(&entry)?;
        pinned.push(PinnedPath {
            path: entry.path.clone(),
            object: object.id,
        });
    }
    plan.pinned = pinned;
    Ok(())
}

/// A run's host paths, open and (as root) staged, and the guards of the repositories in
/// its writable paths.
pub struct PinnedRun {
    /// The plan the bundle is written from: host paths replaced by their staged places,
    /// and the git guard's mounts after the path they guard.
    pub bundle_plan: SandboxPlan,
    staging: Staging,
    /// The open objects, in plan order.
    objects: Vec<HostObject>,
    /// Each guard with the index of the object it walked.
    guards: Vec<(usize, RepoGuard)>,
}

impl PinnedRun {
    /// After the run: what in its writable paths would make git on the host run code
    /// the sandbox chose (see [`gitsafe::findings_after`]); the guards' placeholders are
    /// removed.
    pub fn git_findings(&mut self) -> Vec<GitFinding> {
        let mut findings = Vec::new();
        for (i, guard) in std::mem::take(&mut self.guards) {
            findings.extend(gitsafe::findings_after(
                &guard.host,
                self.objects[i].fd(),
                &guard,
            ));
            gitsafe::remove_placeholders(&guard);
        }
        findings
    }

    /// Detaches every staged object; the staging directory may be removed only after
    /// this succeeded. Removes the guards' placeholders if nobody asked for findings.
    pub fn release(&mut self) -> Result<(), PathRefused> {
        for (_, guard) in std::mem::take(&mut self.guards) {
            gitsafe::remove_placeholders(&guard);
        }
        self.staging
            .detach_all()
            .map_err(refusal::<HostPathError>("bundle"))
    }
}

/// When the run starts: opens every host path of `plan` again without following
/// symlinks, refuses one that no longer names the object recorded at authorisation,
/// creates a missing kept layer (its `upper` and `work` owned by `sandbox_root`, the host
/// ids of the sandbox's root), guards every repository under a writable directory
/// ([`gitsafe::guard_writable`], its mounts opened beneath the object walked), and, when
/// `stage_dir` is given, attaches each object by descriptor there so the bundle names
/// places only root can change. The caller must already be in a private mount namespace
/// when staging.
pub fn pin_for_run(
    plan: &SandboxPlan,
    stage_dir: Option<&Path>,
    sandbox_root: (u32, u32),
) -> Result<PinnedRun, PathRefused> {
    let mut run = PinnedRun {
        bundle_plan: plan.clone(),
        staging: Staging::default(),
        objects: Vec::new(),
        guards: Vec::new(),
    };
    match pin_into(&mut run, plan, stage_dir, sandbox_root) {
        Ok(()) => Ok(run),
        Err(e) => {
            let _ = run.release();
            Err(e)
        }
    }
}

fn pin_into(
    run: &mut PinnedRun,
    plan: &SandboxPlan,
    stage_dir: Option<&Path>,
    sandbox_root: (u32, u32),
) -> Result<(), PathRefused> {
    if let Some(dir) = stage_dir {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o711)
            .create(dir)
            .map_err(|e| {
                refusal::<HostPathError>("bundle")(HostPathError::Open {
                    path: dir.to_path_buf(),
                    errno: nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
                })
            })?;
    }
    // Guard mounts, by the index of the plan mount they go after.
    let mut extra: Vec<(usize, PlanMount)> = Vec::new();
    for (n, entry) in entries(plan).into_iter().enumerate() {
        let refused = refusal::<HostPathError>(entry.field);
        if entry.used == Use::Keep {
            hostpath::create_dir(&entry.path).map_err(&refused)?;
        }
        let object = open(&entry)?;
        if let Some(recorded) = plan.pinned.iter().find(|p| p.path == entry.path) {
            object.expect(recorded.object).map_err(&refused)?;
        }
        if entry.used == Use::Keep {
            // `upper` and `work` for the sandbox's root, by descriptor beneath the object
            // just checked: the names in it are its owner's to swap.
            hostpath::KeptLayer::within(&object, Some(sandbox_root)).map_err(&refused)?;
        }
        let place = |k: Option<usize>| {
            stage_dir.map(|dir| match k {
                None => dir.join(n.to_string()),
                Some(k) => dir.join(format!("{n}.{k}")),
            })
        };
        if let (Use::Mount(i), true) = (entry.used, entry.writable(plan)) {
            if object.kind == ObjectKind::Dir {
                gitsafe::refuse_inside_git(&entry.path)
                    .map_err(refusal::<GitSafeError>(entry.field))?;
                let guard =
                    gitsafe::guard_writable(&entry.path, object.fd(), &plan.mounts[i].target)
                        .map_err(refusal::<GitSafeError>(entry.field))?;
                let guarded = run.objects.len();
                let mounts = guard.mounts.clone();
                run.guards.push((guarded, guard));
                for (k, m) in mounts.into_iter().enumerate() {
                    let relative = m.host.strip_prefix(&entry.path).unwrap_or(&m.host);
                    let inner =
                        hostpath::open_beneath(&object, relative, &m.host).map_err(&refused)?;
                    let host = match place(Some(k)) {
                        Some(at) => {
                            run.staging.attach(&inner, &at).map_err(&refused)?;
                            at
                        }
                        None => m.host.clone(),
                    };
                    extra.push((i, PlanMount { host, ..m }));
                }
            }
        }
        if let Some(at) = place(None) {
            run.staging.attach(&object, &at).map_err(&refused)?;
            match entry.used {
                Use::Mount(i) => run.bundle_plan.mounts[i].host = at,
                Use::RootDir => run.bundle_plan.rootfs = RootfsSource::Dir { path: at },
                Use::Keep => run.bundle_plan.keep_changes = Some(at),
            }
        }
        run.objects.push(object);
    }
    if !extra.is_empty() {
        let mounts = std::mem::take(&mut run.bundle_plan.mounts);
        for (i, m) in mounts.into_iter().enumerate() {
            run.bundle_plan.mounts.push(m);
            run.bundle_plan.mounts.extend(
                extra
                    .iter()
                    .filter(|(j, _)| *j == i)
                    .map(|(_, m)| m.clone()),
            );
        }
    }
    Ok(())
}
