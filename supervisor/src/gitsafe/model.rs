//! What the git guard knows and produces: its bounds and errors, the plain-data guard a
//! run carries from preparation to report, and the tables of what in a git directory is
//! covered, and how.

use covenant_policy::{MountAccess, PlanMount};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;

/// How many directories below the writable path the walk goes before refusing.
pub const MAX_DEPTH: usize = 64;
/// How many directory entries the walk reads before refusing (a large `node_modules` or
/// build directory is tens of thousands).
pub const MAX_ENTRIES: usize = 250_000;
/// Largest config file read after the run; git's own are a few KiB.
pub(super) const CONFIG_CAP: u64 = 1 << 20;
/// Largest `.git` file or `commondir` read (one path).
pub(super) const POINTER_CAP: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum GitSafeError {
    #[error(
        "`{path}` is inside the git directory `{git_dir}`: a writable git directory lets the \
         sandbox plant hooks and config that run on the host; grant the repository's working \
         tree instead"
    )]
    InsideGitDir { path: PathBuf, git_dir: PathBuf },
    #[error(
        "`{path}` is more than {limit} directories below the writable path, the most the git \
         guard walks; grant a narrower path"
    )]
    TooDeep { path: PathBuf, limit: usize },
    #[error(
        "the writable path holds more than {limit} entries (reached at `{path}`), the most the \
         git guard reads; grant a narrower path"
    )]
    TooManyEntries { path: PathBuf, limit: usize },
    #[error(
        "`{path}` is a symlink inside a writable path; git follows it, so the sandbox could \
         repoint it at files it controls; replace it with the file or directory itself"
    )]
    Symlink { path: PathBuf },
    #[error(
        "`{file}` points at `{target}`, which {problem}; git would use whatever the sandbox \
         puts there; fix or remove the `.git` file"
    )]
    GitFileTarget {
        file: PathBuf,
        target: PathBuf,
        problem: &'static str,
    },
    #[error("cannot {op} `{path}`: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

pub type Result<T> = std::result::Result<T, GitSafeError>;

/// Bounds of one walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalkLimits {
    pub max_depth: usize,
    pub max_entries: usize,
}

impl Default for WalkLimits {
    fn default() -> Self {
        Self {
            max_depth: MAX_DEPTH,
            max_entries: MAX_ENTRIES,
        }
    }
}

/// What the guard found and arranged for one writable path. Plain data, so it can travel
/// from the process that prepares a run to the one that reports on it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RepoGuard {
    /// The writable host path that was walked, and where it appears in the sandbox.
    pub host: PathBuf,
    pub target: PathBuf,
    /// Extra mounts, parents before children, to be made after the writable path's own.
    pub mounts: Vec<PlanMount>,
    /// Names created on the host so that a mount could cover them; see [`Placeholder`].
    pub placeholders: Vec<Placeholder>,
    /// Every git directory found at start (host paths).
    pub repos_at_start: Vec<PathBuf>,
    /// A fingerprint (type, mode, owner, content hash) of every name mounted read-only,
    /// by path relative to `host`, to tell after the run whether one changed.
    pub control: BTreeMap<PathBuf, String>,
    pub limits: WalkLimits,
    /// Rebases and cherry-picks in progress at start (host paths of their state
    /// directories, see [`SEQUENCER_STATE`]).
    #[serde(default)]
    pub sequencers_at_start: Vec<PathBuf>,
}

/// State a git dir keeps for an operation the owner continues later: their todo lists
/// may hold `exec` lines, which `git rebase --continue` runs on the host. They stay
/// writable (git inside the sandbox uses them); one that appears during the run is named.
pub(super) const SEQUENCER_STATE: [&str; 3] = ["rebase-merge", "rebase-apply", "sequencer"];

/// A file or directory the guard created so that a dangerous name exists and can be
/// covered by a read-only mount (a bind mount needs an existing target).
///
/// Each placeholder means to git exactly what its absence means, so one left behind (a
/// crash before [`remove_placeholders`]) is harmless:
/// - `commondir` holding `.`: git reads `commondir` as a path relative to the git dir and
///   uses `realpath(gitdir/.)`, the git dir itself, as the common dir, which is what it
///   does without the file (setup.c, `get_common_dir_noenv`). An *empty* `commondir` would
///   not do: git dies with "failed to read commondir".
/// - an empty `config` or `config.worktree`: no settings, as without the file.
/// - empty `hooks`, `info`, `modules`, `worktrees` directories: no hooks, no attributes or
///   excludes, no submodule git dirs, no linked worktrees, as without them (`git init`
///   creates `hooks` and `info` itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placeholder {
    /// Host path.
    pub path: PathBuf,
    pub dir: bool,
    /// What a placeholder file holds (empty for directories).
    pub content: Vec<u8>,
    /// Identity of the placeholder and of the git dir holding it, checked before removal.
    pub dev: u64,
    pub ino: u64,
    pub parent_dev: u64,
    pub parent_ino: u64,
}

/// Something in a repository that would make git on the host run code the sandbox chose.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GitFinding {
    /// The git directory (or the directory holding a `.git` file) on the host.
    pub repo: PathBuf,
    /// What was found: `config core.fsmonitor`, `hook pre-commit`, `config changed during
    /// the run`, `not checked: ...`.
    pub what: String,
}

/// How a dangerous name in a git directory is covered.
#[derive(Clone, Copy)]
pub(super) enum Cover {
    /// Mounted read-only; created with this content first when absent.
    File(&'static [u8]),
    /// Mounted; created as an empty directory first when absent.
    Dir,
    /// Mounted only when present.
    IfPresent,
    /// A directory of git dirs (`modules`, `worktrees`): when present it stays writable and
    /// each git dir in it is guarded on its own (new ones are reported after the run); when
    /// absent an empty read-only placeholder stops the sandbox creating one.
    Container,
}

/// A common git dir (a repository's `.git`, a bare repository, a submodule's git dir): the
/// names git reads code or redirections from.
pub(super) const COMMON_GIT_DIR: &[(&str, Cover, MountAccess)] = &[
    // every config key, among them core.fsmonitor, core.hooksPath, filter drivers
    ("config", Cover::File(b""), MountAccess::ReadOnly),
    // per-worktree config, read when extensions.worktreeConfig is set
    ("config.worktree", Cover::File(b""), MountAccess::ReadOnly),
    // hooks; runnable inside, so `git commit` in the sandbox still runs the owner's hooks
    ("hooks", Cover::Dir, MountAccess::ReadExec),
    // attributes (pick filter and diff drivers), sparse-checkout, excludes
    ("info", Cover::Dir, MountAccess::ReadOnly),
    // would move config, hooks and objects to a directory the sandbox chose
    ("commondir", Cover::File(b".\n"), MountAccess::ReadOnly),
    ("modules", Cover::Container, MountAccess::ReadOnly),
    ("worktrees", Cover::Container, MountAccess::ReadOnly),
];

/// A linked worktree's own git dir (`.git/worktrees/NAME`): config, hooks and info come
/// from the common dir it names, so only the pointers and its own config matter.
pub(super) const WORKTREE_GIT_DIR: &[(&str, Cover, MountAccess)] = &[
    ("commondir", Cover::IfPresent, MountAccess::ReadOnly),
    ("gitdir", Cover::IfPresent, MountAccess::ReadOnly),
    ("config.worktree", Cover::File(b""), MountAccess::ReadOnly),
    ("info", Cover::IfPresent, MountAccess::ReadOnly),
];

/// Directories in a git dir the walk does not enter: git's data (large, and nothing git
/// runs lives there) and the ones handled by name.
pub(super) const NOT_WALKED_IN_GIT_DIR: &[&str] = &[
    "objects",
    "refs",
    "logs",
    "lfs",
    "annex",
    "rr-cache",
    "svn",
    "hooks",
    "info",
    "modules",
    "worktrees",
];

/// Most findings one writable path reports, and bytes of each one's text.
pub(super) const MAX_FINDINGS: usize = 200;
pub(super) const MAX_FINDING_BYTES: usize = 256;
