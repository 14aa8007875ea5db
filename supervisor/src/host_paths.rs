//! The host paths of an authorised plan: checked once right after authorisation (each
//! must exist without a symlink on its way, be of the kind its use needs, and its object
//! is recorded in the plan), and pinned when the run starts (opened again the same way,
//! refused unless it is still the recorded object, and staged by descriptor for the
//! runner). Nothing here decides what is granted: that was decided by name, in policy,
//! before any of these paths was looked at, so a refusal here never tells a caller
//! anything about a path outside its grant.

use covenant_policy::compile::WORKSPACE_TARGET;
use covenant_policy::{MountAccess, PinnedPath, RootfsSource, RunnerChoice, SandboxPlan};
use covenant_runners::hostpath::{self, HostObject, HostPathError, Staging};
use std::path::{Path, PathBuf};

/// A host path refused, with the request field that named it.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {error}")]
pub struct PathRefused {
    pub field: &'static str,
    pub error: HostPathError,
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
    let refused = |error| PathRefused {
        field: entry.field,
        error,
    };
    let object = hostpath::open(&entry.path).map_err(refused)?;
    if entry.dir {
        object.expect_dir().map_err(refused)?;
    }
    Ok(object)
}

/// Why an authorised plan cannot run here: its runner binary or one of its paths.
#[derive(Debug, thiserror::Error)]
pub enum RunnerRefused {
    #[error("runner: {0}")]
    Runner(covenant_runners::oci::OciError),
    #[error(transparent)]
    Path(#[from] PathRefused),
}

/// Right after authorisation: checks that an OCI runner's binary is root's (see
/// `trusted_binary`), opens every host path of `plan` without following symlinks, checks
/// its kind, and records the object each names in `plan.pinned`. A kept layer that does
/// not exist yet needs an existing parent; it is created when the run starts.
pub fn check_plan(plan: &mut SandboxPlan) -> Result<(), RunnerRefused> {
    if let RunnerChoice::Oci { path } = &plan.runner {
        covenant_runners::oci::trusted_binary(path).map_err(RunnerRefused::Runner)?;
    }
    let mut pinned = Vec::new();
    for entry in entries(plan) {
        if entry.used == Use::Keep {
            match hostpath::open(&entry.path) {
                Err(HostPathError::Missing { .. }) => {
                    let parent = entry.path.parent().unwrap_or(Path::new("/"));
                    let refused = |error| PathRefused {
                        field: entry.field,
                        error,
                    };
                    hostpath::open(parent)
                        .and_then(|p| p.expect_dir())
                        .map_err(refused)?;
                    continue;
                }
                Err(error) => {
                    return Err(PathRefused {
                        field: entry.field,
                        error,
                    }
                    .into())
                }
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

/// A run's host paths, open and (as root) staged under the bundle directory.
pub struct PinnedRun {
    /// The plan the bundle is written from: host paths replaced by their staged places.
    pub bundle_plan: SandboxPlan,
    staging: Staging,
    /// The open objects, in plan order, for the checks made after the run.
    pub objects: Vec<(PathBuf, HostObject)>,
}

impl PinnedRun {
    /// Detaches every staged object; the bundle directory may be removed only after
    /// this succeeded.
    pub fn release(&mut self) -> Result<(), PathRefused> {
        self.staging.detach_all().map_err(|error| PathRefused {
            field: "bundle",
            error,
        })
    }
}

/// When the run starts: opens every host path of `plan` again without following
/// symlinks, refuses one that no longer names the object recorded at authorisation,
/// creates a missing kept layer, and, when `stage` is set, attaches each object by
/// descriptor under `stage_dir` so the bundle names places only root can change. The
/// caller must already be in a private mount namespace when staging.
pub fn pin_for_run(plan: &SandboxPlan, stage_dir: Option<&Path>) -> Result<PinnedRun, PathRefused> {
    let mut bundle_plan = plan.clone();
    let mut staging = Staging::default();
    let mut objects = Vec::new();
    if let Some(dir) = stage_dir {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o711)
            .create(dir)
            .map_err(|e| PathRefused {
                field: "bundle",
                error: HostPathError::Open {
                    path: dir.to_path_buf(),
                    errno: nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
                },
            })?;
    }
    for (n, entry) in entries(plan).into_iter().enumerate() {
        let refused = |error| PathRefused {
            field: entry.field,
            error,
        };
        if entry.used == Use::Keep {
            hostpath::create_dir(&entry.path).map_err(refused)?;
        }
        let object = open(&entry)?;
        if let Some(recorded) = plan.pinned.iter().find(|p| p.path == entry.path) {
            object.expect(recorded.object).map_err(refused)?;
        }
        if let Some(dir) = stage_dir {
            let at = dir.join(n.to_string());
            staging.attach(&object, &at).map_err(refused)?;
            match entry.used {
                Use::Mount(i) => bundle_plan.mounts[i].host = at,
                Use::RootDir => bundle_plan.rootfs = RootfsSource::Dir { path: at },
                Use::Keep => bundle_plan.keep_changes = Some(at),
            }
        }
        objects.push((entry.path, object));
    }
    Ok(PinnedRun {
        bundle_plan,
        staging,
        objects,
    })
}
