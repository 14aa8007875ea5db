//! Git-safe writable paths. A sandbox that can write a repository's control files (config,
//! hooks, `commondir`, worktree and submodule git dirs) can make the owner's next `git
//! status` on the host run its code. This module finds every git directory under a
//! writable path before the run and returns the extra mounts that keep those control files
//! read-only while objects, refs, logs, the index and git's lock files stay writable; after
//! the run it names the hooks and code-running config of repositories that appeared during
//! the run, and any control file that changed although it should not have been able to.
//!
//! It never follows a symlink inside the walked tree (every name is opened relative to its
//! parent's descriptor with `O_NOFOLLOW`, paths with `openat2` refusing symlinks), the walk
//! is bounded and refuses when a bound is reached, and it makes no mount itself: the run
//! path mounts what [`RepoGuard::mounts`] lists, in that order.

mod fsat;
mod gitconfig;

use covenant_policy::{MountAccess, PlanMount};
use fsat::{has, Kind, Listing};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// How many directories below the writable path the walk goes before refusing.
pub const MAX_DEPTH: usize = 64;
/// How many directory entries the walk reads before refusing (a large `node_modules` or
/// build directory is tens of thousands).
pub const MAX_ENTRIES: usize = 250_000;
/// Largest config file read after the run; git's own are a few KiB.
const CONFIG_CAP: u64 = 1 << 20;
/// Largest `.git` file or `commondir` read (one path).
const POINTER_CAP: u64 = 4096;

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

type Result<T> = std::result::Result<T, GitSafeError>;

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
const SEQUENCER_STATE: [&str; 3] = ["rebase-merge", "rebase-apply", "sequencer"];

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
enum Cover {
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
const COMMON_GIT_DIR: &[(&str, Cover, MountAccess)] = &[
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
const WORKTREE_GIT_DIR: &[(&str, Cover, MountAccess)] = &[
    ("commondir", Cover::IfPresent, MountAccess::ReadOnly),
    ("gitdir", Cover::IfPresent, MountAccess::ReadOnly),
    ("config.worktree", Cover::File(b""), MountAccess::ReadOnly),
    ("info", Cover::IfPresent, MountAccess::ReadOnly),
];

/// Directories in a git dir the walk does not enter: git's data (large, and nothing git
/// runs lives there) and the ones handled by name.
const NOT_WALKED_IN_GIT_DIR: &[&str] = &[
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

/// Refuses a writable host path that lies inside a git directory: any path with a `.git`
/// component (`/r/.git`, `/r/.git/hooks`, `/r/.git/modules/x`), and any path that is, or is
/// under, a directory git would take for a git dir (it holds `HEAD` and `objects/` and
/// `refs/`, or `HEAD` and `commondir`, and no `.git`): a bare repository, a worktree's or a
/// submodule's git dir. Writing there is writing hooks and config. `host` is absolute,
/// lexically clean and free of symlinks (the caller resolved it).
pub fn refuse_inside_git(host: &Path) -> Result<()> {
    let refuse = |git_dir: &Path| GitSafeError::InsideGitDir {
        path: host.to_path_buf(),
        git_dir: git_dir.to_path_buf(),
    };
    if let Some(git) = host
        .ancestors()
        .find(|a| a.file_name() == Some(OsStr::new(".git")))
    {
        return Err(refuse(git));
    }
    let exists = |p: PathBuf| p.symlink_metadata().is_ok();
    for dir in host.ancestors() {
        let shaped = exists(dir.join("HEAD"))
            && !exists(dir.join(".git"))
            && ((exists(dir.join("objects")) && exists(dir.join("refs")))
                || exists(dir.join("commondir")));
        if shaped {
            return Err(refuse(dir));
        }
    }
    Ok(())
}

/// Walks the writable path `host`, opened by the caller as `dir` (`O_PATH` or
/// `O_DIRECTORY`, reached without symlinks), and returns the mounts that keep every
/// repository found there safe: for each git dir (`.git` directories at any depth, bare
/// repositories, `.git/modules/*` recursively, `.git/worktrees/*`, the target of a `.git`
/// file inside `host`) the git dir itself is bound again read-write (a mount point cannot
/// be renamed or replaced), and `config`, `config.worktree`, `hooks` (runnable), `info`,
/// `commondir` are bound read-only, created first as harmless placeholders when absent
/// (owned like the git dir, with git's modes); a worktree's git dir gets `commondir`,
/// `gitdir`, `config.worktree` and `info` read-only; an absent `modules` or `worktrees`
/// becomes an empty read-only directory. A `.git` file is bound read-only. `target` is
/// where `host` appears in the sandbox. On error, placeholders already made are removed.
pub fn guard_writable(host: &Path, dir: BorrowedFd<'_>, target: &Path) -> Result<RepoGuard> {
    guard_writable_with(host, dir, target, WalkLimits::default())
}

/// [`guard_writable`] with other bounds.
pub fn guard_writable_with(
    host: &Path,
    dir: BorrowedFd<'_>,
    target: &Path,
    limits: WalkLimits,
) -> Result<RepoGuard> {
    let mut guarding = Guarding {
        host,
        target,
        guard: RepoGuard {
            host: host.to_path_buf(),
            target: target.to_path_buf(),
            limits,
            ..RepoGuard::default()
        },
        done: BTreeSet::new(),
        gitfile_targets: Vec::new(),
    };
    match guarding.run(dir, limits) {
        Ok(()) => {
            let mut guard = guarding.guard;
            // Parents before children: a mount made after one inside it would hide it.
            guard.mounts.sort_by_key(|m| m.target.components().count());
            Ok(guard)
        }
        Err(e) => {
            remove_placeholders(&guarding.guard);
            Err(e)
        }
    }
}

/// After the run: names what in `host` would make git on the host run code the sandbox
/// chose. For every repository not in `guard.repos_at_start` (new `.git` directories,
/// files and symlinks, new bare repositories, new `modules/*` and `worktrees/*` entries,
/// at any depth within the walk's bounds) it lists the hooks (executable files or symlinks
/// in `hooks/` other than `*.sample`), the code-running keys of `config` and
/// `config.worktree`, and those of the `commondir` it points to when that is not a guarded
/// repository. For repositories guarded at start it names every covered control file that
/// changed (impossible through the read-only mounts; a change means the protection failed,
/// or the owner changed it on the host meanwhile). What could not be checked (a bound, an
/// unreadable directory) is itself a finding, never silently skipped.
pub fn findings_after(host: &Path, dir: BorrowedFd<'_>, guard: &RepoGuard) -> Vec<GitFinding> {
    let mut checking = Checking {
        host,
        guard,
        dir,
        findings: Vec::new(),
    };
    let mut walk = Walk {
        host,
        limits: guard.limits,
        entries: 0,
    };
    if let Err(e) = walk.root(&mut checking, dir) {
        checking.found(host, format!("not fully checked: {e}"));
    }
    for (rel, before) in &guard.control {
        let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
            continue;
        };
        let now = match fsat::open_resolved(dir, parent, libc::O_PATH | libc::O_DIRECTORY, true) {
            Ok(fd) => fingerprint(fd.as_fd(), name),
            Err(e) => format!("error:{e}"),
        };
        if now != *before {
            checking.found(
                &host.join(parent),
                format!("{} changed during the run", name.to_string_lossy()),
            );
        }
    }
    for repo in &guard.repos_at_start {
        let Ok(rel) = repo.strip_prefix(host) else {
            continue;
        };
        for name in SEQUENCER_STATE {
            let state = rel.join(name);
            let now = fsat::open_resolved(dir, &state, libc::O_PATH, true).is_ok();
            if now && !guard.sequencers_at_start.contains(&repo.join(name)) {
                checking.found(
                    repo,
                    format!("{name} written during the run: its todo's `exec` lines run at the next `git rebase --continue`"),
                );
            }
        }
    }
    let mut findings = checking.findings;
    findings.sort();
    findings.dedup();
    // The sandbox chose how many repositories and keys there are, and their names: the
    // report and its audit row stay bounded.
    for f in &mut findings {
        if f.what.len() > MAX_FINDING_BYTES {
            let end = (0..=MAX_FINDING_BYTES)
                .rev()
                .find(|&i| f.what.is_char_boundary(i))
                .unwrap_or(0);
            f.what.truncate(end);
            f.what.push_str("...");
        }
    }
    if findings.len() > MAX_FINDINGS {
        let more = findings.len() - MAX_FINDINGS;
        findings.truncate(MAX_FINDINGS);
        findings.push(GitFinding {
            repo: host.to_path_buf(),
            what: format!("{more} more findings not listed"),
        });
    }
    findings
}

/// Most findings one writable path reports, and bytes of each one's text.
const MAX_FINDINGS: usize = 200;
const MAX_FINDING_BYTES: usize = 256;

/// Removes the placeholders `guard` created, newest first, and returns those left in
/// place. A file is removed only if it is still the same inode in the same git dir with the
/// content it was created with; a directory only if it is the same inode and empty (rmdir
/// refuses a non-empty one, so a submodule or worktree the owner added meanwhile stays).
/// Paths are opened without following symlinks and the git dir's identity is checked
/// first, so a directory renamed or replaced during the run never makes this remove
/// anything else. Anything left behind is harmless (see [`Placeholder`]).
pub fn remove_placeholders(guard: &RepoGuard) -> Vec<PathBuf> {
    guard
        .placeholders
        .iter()
        .rev()
        .filter(|p| !matches!(remove_placeholder(p), Ok(true)))
        .map(|p| p.path.clone())
        .collect()
}

/// `Ok(true)` when the placeholder is gone.
fn remove_placeholder(p: &Placeholder) -> io::Result<bool> {
    let (Some(parent), Some(name)) = (p.path.parent(), p.path.file_name()) else {
        return Ok(false);
    };
    let pfd = fsat::open_absolute(parent, libc::O_PATH | libc::O_DIRECTORY)?;
    let pst = fsat::fstat(pfd.as_fd())?;
    if (pst.st_dev, pst.st_ino) != (p.parent_dev, p.parent_ino) {
        return Ok(false);
    }
    let Some(st) = fsat::stat_at(pfd.as_fd(), name)? else {
        return Ok(true);
    };
    if (st.st_dev, st.st_ino) != (p.dev, p.ino) {
        return Ok(false);
    }
    if !p.dir && fsat::read_small(pfd.as_fd(), name, POINTER_CAP)?.as_ref() != Some(&p.content) {
        return Ok(false);
    }
    match fsat::unlink_at(pfd.as_fd(), name, p.dir) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether git would take a directory with these entries for a git dir (setup.c,
/// `is_git_directory`); one that also holds `.git` is a working tree.
fn looks_like_git_dir(names: &Listing) -> bool {
    has(names, "HEAD").is_some()
        && has(names, ".git").is_none()
        && ((has(names, "objects").is_some() && has(names, "refs").is_some())
            || has(names, "commondir").is_some())
}

/// What the walk shows its visitor.
enum Seen<'a> {
    /// A git dir: a `.git` directory, a directory shaped like a git dir, an entry of a git
    /// dir's `worktrees/`. `rel` is relative to the walked path.
    Dir {
        rel: &'a Path,
        fd: BorrowedFd<'a>,
        names: &'a Listing,
    },
    /// A regular file named `.git`, and the directory holding it.
    File {
        rel: &'a Path,
        parent: BorrowedFd<'a>,
    },
    /// A symlink named `.git`, and the directory holding it.
    Symlink {
        rel: &'a Path,
        parent: BorrowedFd<'a>,
    },
}

trait Visitor {
    fn seen(&mut self, seen: Seen<'_>) -> Result<()>;
    /// A directory the walk could not open or read: the guard refuses, the after-run check
    /// records it and goes on.
    fn unreadable(&mut self, rel: &Path, op: &'static str, error: io::Error) -> Result<()>;
}

/// One bounded walk. Directories are opened one name at a time relative to their parent,
/// never through a symlink; at most `max_depth` descriptors are open at once.
struct Walk<'h> {
    host: &'h Path,
    limits: WalkLimits,
    entries: usize,
}

impl Walk<'_> {
    fn root(&mut self, v: &mut dyn Visitor, dir: BorrowedFd<'_>) -> Result<()> {
        let rel = Path::new("");
        let fd = fsat::open_child(dir, OsStr::new("."), libc::O_RDONLY | libc::O_DIRECTORY, 0)
            .map_err(|source| GitSafeError::Io {
                op: "open",
                path: self.host.to_path_buf(),
                source,
            })?;
        let Some(names) = self.read(v, fd.as_fd(), rel)? else {
            return Ok(());
        };
        self.classified(v, fd.as_fd(), rel, 0, &names)
    }

    /// Opens and lists the directory `name` under `parent`; `None` when the visitor
    /// accepted that it cannot be read.
    fn enter(
        &mut self,
        v: &mut dyn Visitor,
        parent: BorrowedFd<'_>,
        name: &OsStr,
        rel: &Path,
        depth: usize,
    ) -> Result<Option<(OwnedFd, Listing)>> {
        if depth > self.limits.max_depth {
            return Err(GitSafeError::TooDeep {
                path: self.host.join(rel),
                limit: self.limits.max_depth,
            });
        }
        let fd = match fsat::open_child(parent, name, libc::O_RDONLY | libc::O_DIRECTORY, 0) {
            Ok(fd) => fd,
            Err(e) => {
                v.unreadable(rel, "open directory", e)?;
                return Ok(None);
            }
        };
        Ok(self.read(v, fd.as_fd(), rel)?.map(|names| (fd, names)))
    }

    fn read(
        &mut self,
        v: &mut dyn Visitor,
        fd: BorrowedFd<'_>,
        rel: &Path,
    ) -> Result<Option<Listing>> {
        let names = match fsat::list(fd) {
            Ok(names) => names,
            Err(e) => {
                v.unreadable(rel, "read directory", e)?;
                return Ok(None);
            }
        };
        self.entries += names.len();
        if self.entries > self.limits.max_entries {
            return Err(GitSafeError::TooManyEntries {
                path: self.host.join(rel),
                limit: self.limits.max_entries,
            });
        }
        Ok(Some(names))
    }

    /// A directory not named `.git`: a git dir if shaped like one, else an ordinary tree.
    fn classified(
        &mut self,
        v: &mut dyn Visitor,
        fd: BorrowedFd<'_>,
        rel: &Path,
        depth: usize,
        names: &Listing,
    ) -> Result<()> {
        if looks_like_git_dir(names) {
            self.git_dir(v, fd, rel, depth, names)
        } else {
            self.tree(v, fd, rel, depth, names)
        }
    }

    fn tree(
        &mut self,
        v: &mut dyn Visitor,
        fd: BorrowedFd<'_>,
        rel: &Path,
        depth: usize,
        names: &Listing,
    ) -> Result<()> {
        for (name, kind) in names {
            let child = rel.join(name);
            let is_git = name.as_bytes() == b".git";
            match (is_git, kind) {
                (true, Kind::Dir) => {
                    if let Some((cfd, cnames)) = self.enter(v, fd, name, &child, depth + 1)? {
                        self.git_dir(v, cfd.as_fd(), &child, depth + 1, &cnames)?;
                    }
                }
                (true, Kind::File) => v.seen(Seen::File {
                    rel: &child,
                    parent: fd,
                })?,
                (true, Kind::Symlink) => v.seen(Seen::Symlink {
                    rel: &child,
                    parent: fd,
                })?,
                (false, Kind::Dir) => {
                    if let Some((cfd, cnames)) = self.enter(v, fd, name, &child, depth + 1)? {
                        self.classified(v, cfd.as_fd(), &child, depth + 1, &cnames)?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// A git dir: shown to the visitor, then its `modules/` tree (submodule git dirs,
    /// nested at any depth since a submodule's name may hold slashes), its `worktrees/*`,
    /// and the rest of it except git's data directories.
    fn git_dir(
        &mut self,
        v: &mut dyn Visitor,
        fd: BorrowedFd<'_>,
        rel: &Path,
        depth: usize,
        names: &Listing,
    ) -> Result<()> {
        v.seen(Seen::Dir { rel, fd, names })?;
        if has(names, "modules") == Some(Kind::Dir) {
            let modules = rel.join("modules");
            let name = OsStr::new("modules");
            if let Some((mfd, mnames)) = self.enter(v, fd, name, &modules, depth + 1)? {
                self.tree(v, mfd.as_fd(), &modules, depth + 1, &mnames)?;
            }
        }
        if has(names, "worktrees") == Some(Kind::Dir) {
            let worktrees = rel.join("worktrees");
            let name = OsStr::new("worktrees");
            if let Some((wfd, wnames)) = self.enter(v, fd, name, &worktrees, depth + 1)? {
                for (entry, kind) in &wnames {
                    if *kind != Kind::Dir {
                        continue;
                    }
                    let erel = worktrees.join(entry);
                    if let Some((efd, enames)) =
                        self.enter(v, wfd.as_fd(), entry, &erel, depth + 2)?
                    {
                        self.git_dir(v, efd.as_fd(), &erel, depth + 2, &enames)?;
                    }
                }
            }
        }
        let rest: Listing = names
            .iter()
            .filter(|(n, _)| {
                !NOT_WALKED_IN_GIT_DIR
                    .iter()
                    .any(|s| n.as_bytes() == s.as_bytes())
            })
            .cloned()
            .collect();
        self.tree(v, fd, rel, depth, &rest)
    }
}

/// Lexically normalises an absolute path (`.` dropped, `..` pops).
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// Where the symlink `name` under `parent` points, for a finding; a link that cannot be
/// read is still reported, with why its target is unknown.
fn link_target(parent: BorrowedFd<'_>, name: &OsStr) -> String {
    match fsat::readlink_at(parent, name) {
        Ok(to) => to.display().to_string(),
        Err(e) => format!("an unreadable target ({e})"),
    }
}

/// The path in a `.git` file (`gitdir: PATH`), as git's `read_gitfile_gently` reads it.
fn gitfile_path(content: &[u8]) -> Option<PathBuf> {
    let rest = content.strip_prefix(b"gitdir: ")?;
    let end = rest
        .iter()
        .rposition(|c| *c != b'\n' && *c != b'\r')
        .map_or(0, |i| i + 1);
    let path = &rest[..end];
    (!path.is_empty()).then(|| PathBuf::from(OsStr::from_bytes(path)))
}

/// Largest file whose content a fingerprint hashes; a larger one is described by size,
/// modification time and inode.
const HASHED_CAP: u64 = 64 << 10;
/// Most names one fingerprint looks at, so a huge `hooks` tree costs a bounded amount.
const FINGERPRINT_BUDGET: usize = 1024;

/// A stable description of a name under `parent`: type, mode, owner, and a hash of the
/// content (files) or of the entries (directories, a few levels deep). Never follows it.
/// Bounded: past [`FINGERPRINT_BUDGET`] names it stops at the same place every time.
fn fingerprint(parent: BorrowedFd<'_>, name: &OsStr) -> String {
    let mut budget = FINGERPRINT_BUDGET;
    fingerprint_within(parent, name, 0, &mut budget)
}

fn fingerprint_within(
    parent: BorrowedFd<'_>,
    name: &OsStr,
    depth: usize,
    budget: &mut usize,
) -> String {
    let st = match fsat::stat_at(parent, name) {
        Ok(Some(st)) => st,
        Ok(None) => return "absent".into(),
        Err(e) => return format!("error:{e}"),
    };
    let head = format!("{:o}:{}:{}", st.st_mode, st.st_uid, st.st_gid);
    match Kind::of_mode(st.st_mode) {
        Kind::File if st.st_size as u64 > HASHED_CAP => format!(
            "file:{head}:{}:{}.{}:{}",
            st.st_size, st.st_mtime, st.st_mtime_nsec, st.st_ino
        ),
        Kind::File => match fsat::read_small(parent, name, HASHED_CAP) {
            Ok(Some(bytes)) => format!("file:{head}:{:x}", Sha256::digest(&bytes)),
            Ok(None) => "absent".into(),
            Err(e) => format!("file:{head}:{}:{e}", st.st_size),
        },
        Kind::Symlink => match fsat::readlink_at(parent, name) {
            Ok(to) => format!("symlink:{}", to.display()),
            Err(e) => format!("symlink:{e}"),
        },
        Kind::Dir if depth < 4 => {
            let listed = fsat::open_child(parent, name, libc::O_RDONLY | libc::O_DIRECTORY, 0)
                .and_then(|fd| fsat::list(fd.as_fd()).map(|names| (fd, names)));
            let (fd, mut names) = match listed {
                Ok(listed) => listed,
                Err(e) => return format!("dir:{head}:{e}"),
            };
            names.sort();
            let mut hash = Sha256::new();
            for (n, _) in &names {
                if *budget == 0 {
                    hash.update(format!("{} entries", names.len()).as_bytes());
                    break;
                }
                *budget -= 1;
                hash.update(n.as_bytes());
                hash.update(b"=");
                hash.update(fingerprint_within(fd.as_fd(), n, depth + 1, budget).as_bytes());
                hash.update(b"\n");
            }
            format!("dir:{head}:{:x}", hash.finalize())
        }
        Kind::Dir => format!("dir:{head}"),
        Kind::Other => format!("other:{head}"),
    }
}

/// The guard's visitor: protects what the walk shows it.
struct Guarding<'a> {
    host: &'a Path,
    target: &'a Path,
    guard: RepoGuard,
    /// Git dirs and `.git` files already handled (relative paths).
    done: BTreeSet<PathBuf>,
    /// `.git` files inside the walked path whose git dir lies inside it too.
    gitfile_targets: Vec<(PathBuf, PathBuf)>,
}

impl Guarding<'_> {
    fn run(&mut self, dir: BorrowedFd<'_>, limits: WalkLimits) -> Result<()> {
        let mut walk = Walk {
            host: self.host,
            limits,
            entries: 0,
        };
        walk.root(self, dir)?;
        // A `.git` file's git dir is guarded even when nothing marks it as one (the
        // sandbox could fill an empty directory), and whatever the walk saw of it first.
        for (file, rel) in std::mem::take(&mut self.gitfile_targets) {
            if self.done.contains(&rel) {
                continue;
            }
            let problem = |problem| GitSafeError::GitFileTarget {
                file: self.host.join(&file),
                target: self.host.join(&rel),
                problem,
            };
            if rel.as_os_str().is_empty() {
                return Err(problem("is the writable path itself"));
            }
            let fd = match fsat::open_resolved(dir, &rel, libc::O_RDONLY | libc::O_DIRECTORY, true)
            {
                Ok(fd) => fd,
                Err(e) => {
                    return Err(match e.raw_os_error() {
                        Some(libc::ENOENT) => problem("does not exist"),
                        Some(libc::ELOOP | libc::EXDEV) => problem("is reached through a symlink"),
                        Some(libc::ENOTDIR) => problem("is not a directory"),
                        _ => GitSafeError::Io {
                            op: "open",
                            path: self.host.join(&rel),
                            source: e,
                        },
                    })
                }
            };
            let Some(names) = walk.read(self, fd.as_fd(), &rel)? else {
                continue;
            };
            let depth = rel.components().count();
            walk.git_dir(self, fd.as_fd(), &rel, depth, &names)?;
        }
        Ok(())
    }

    fn mount(&mut self, rel: &Path, access: MountAccess) {
        self.guard.mounts.push(PlanMount {
            host: self.host.join(rel),
            target: self.target.join(rel),
            access,
        });
    }

    fn protect_git_dir(&mut self, rel: &Path, g: BorrowedFd<'_>, names: &Listing) -> Result<()> {
        let host_g = self.host.join(rel);
        let io = |op, path: PathBuf| move |source| GitSafeError::Io { op, path, source };
        let st = fsat::fstat(g).map_err(io("stat", host_g.clone()))?;
        self.mount(rel, MountAccess::ReadWrite);
        self.guard.repos_at_start.push(host_g.clone());
        for name in SEQUENCER_STATE {
            if has(names, name).is_some() {
                self.guard.sequencers_at_start.push(host_g.join(name));
            }
        }
        let items = if has(names, "commondir").is_some() {
            WORKTREE_GIT_DIR
        } else {
            COMMON_GIT_DIR
        };
        for &(name, cover, access) in items {
            let os = OsStr::new(name);
            let path = host_g.join(name);
            let now = fsat::stat_at(g, os)
                .map_err(io("stat", path.clone()))?
                .map(|s| Kind::of_mode(s.st_mode));
            match (now, cover) {
                (Some(Kind::Symlink), _) => return Err(GitSafeError::Symlink { path }),
                (None, Cover::IfPresent) | (Some(Kind::Dir), Cover::Container) => continue,
                (None, Cover::File(content)) => {
                    self.placeholder(g, &st, &host_g, name, Some(content))?
                }
                (None, Cover::Dir | Cover::Container) => {
                    self.placeholder(g, &st, &host_g, name, None)?
                }
                (Some(_), _) => {}
            }
            self.mount(&rel.join(name), access);
            self.guard
                .control
                .insert(rel.join(name), fingerprint(g, os));
        }
        Ok(())
    }

    /// Creates `name` in the git dir `g` (a file with `content`, or a directory), owned
    /// like `g` and with the modes git would give it there (group-shared repositories
    /// included), and records it.
    fn placeholder(
        &mut self,
        g: BorrowedFd<'_>,
        g_st: &libc::stat,
        host_g: &Path,
        name: &str,
        content: Option<&[u8]>,
    ) -> Result<()> {
        let path = host_g.join(name);
        let os = OsStr::new(name);
        let fail = |source| GitSafeError::Io {
            op: "create placeholder",
            path: path.clone(),
            source,
        };
        let (fd, mode) = match content {
            Some(bytes) => (fsat::create_file(g, os, bytes), g_st.st_mode & 0o666),
            None => (fsat::create_dir(g, os), g_st.st_mode & 0o7777),
        };
        let fd = fd.map_err(fail)?;
        let finished = fsat::set_owner_mode(fd.as_fd(), g_st.st_uid, g_st.st_gid, mode)
            .and_then(|()| fsat::fstat(fd.as_fd()));
        let st = match finished {
            Ok(st) => st,
            Err(e) => {
                let _ = fsat::unlink_at(g, os, content.is_none());
                return Err(fail(e));
            }
        };
        self.guard.placeholders.push(Placeholder {
            path,
            dir: content.is_none(),
            content: content.unwrap_or_default().to_vec(),
            dev: st.st_dev,
            ino: st.st_ino,
            parent_dev: g_st.st_dev,
            parent_ino: g_st.st_ino,
        });
        Ok(())
    }

    fn protect_git_file(&mut self, rel: &Path, parent: BorrowedFd<'_>) -> Result<()> {
        let host_f = self.host.join(rel);
        let name = OsStr::new(".git");
        self.mount(rel, MountAccess::ReadOnly);
        self.guard
            .control
            .insert(rel.to_path_buf(), fingerprint(parent, name));
        let content = fsat::read_small(parent, name, POINTER_CAP)
            .map_err(|source| GitSafeError::Io {
                op: "read",
                path: host_f.clone(),
                source,
            })?
            // Gone since the walk saw it: nothing points anywhere, and the path is
            // mounted read-only above either way.
            .unwrap_or_default();
        let Some(pointed) = gitfile_path(&content) else {
            return Ok(());
        };
        let base = host_f.parent().unwrap_or(self.host);
        let abs = lexical(&base.join(&pointed));
        let inside = abs.strip_prefix(self.host).ok().map(Path::to_path_buf);
        let problem = |problem| GitSafeError::GitFileTarget {
            file: host_f.clone(),
            target: abs.clone(),
            problem,
        };
        // git follows symlinks here; one inside the writable path could be repointed, and
        // one outside that leads inside would send git to a place the walk did not guard.
        match std::fs::canonicalize(&abs) {
            Ok(real) if real != abs && (inside.is_some() || real.starts_with(self.host)) => {
                Err(problem("is reached through a symlink"))
            }
            Ok(_) => {
                if let Some(rel_t) = inside {
                    self.gitfile_targets.push((rel.to_path_buf(), rel_t));
                }
                Ok(())
            }
            Err(_) if inside.is_some() => Err(problem("does not exist")),
            Err(_) => Ok(()),
        }
    }
}

impl Visitor for Guarding<'_> {
    fn seen(&mut self, seen: Seen<'_>) -> Result<()> {
        match seen {
            Seen::Dir { rel, fd, names } => {
                if rel.as_os_str().is_empty() {
                    return Err(GitSafeError::InsideGitDir {
                        path: self.host.to_path_buf(),
                        git_dir: self.host.to_path_buf(),
                    });
                }
                if self.done.insert(rel.to_path_buf()) {
                    self.protect_git_dir(rel, fd, names)?;
                }
            }
            Seen::File { rel, parent } => {
                if self.done.insert(rel.to_path_buf()) {
                    self.protect_git_file(rel, parent)?;
                }
            }
            Seen::Symlink { rel, .. } => {
                return Err(GitSafeError::Symlink {
                    path: self.host.join(rel),
                })
            }
        }
        Ok(())
    }

    fn unreadable(&mut self, rel: &Path, op: &'static str, source: io::Error) -> Result<()> {
        Err(GitSafeError::Io {
            op,
            path: self.host.join(rel),
            source,
        })
    }
}

/// The after-run visitor: names what new repositories would run.
struct Checking<'a> {
    host: &'a Path,
    guard: &'a RepoGuard,
    dir: BorrowedFd<'a>,
    findings: Vec<GitFinding>,
}

impl Checking<'_> {
    fn found(&mut self, repo: &Path, what: String) {
        self.findings.push(GitFinding {
            repo: repo.to_path_buf(),
            what,
        });
    }

    fn guarded(&self, repo: &Path) -> bool {
        self.guard.repos_at_start.iter().any(|r| r == repo)
    }

    /// A path written inside the sandbox names sandbox places; read it as the host's.
    fn to_host(&self, base: &Path, path: &Path) -> PathBuf {
        let path = match path.strip_prefix(&self.guard.target) {
            Ok(rest) if path.is_absolute() && !self.guard.target.as_os_str().is_empty() => {
                self.host.join(rest)
            }
            _ => base.join(path),
        };
        lexical(&path)
    }

    /// Opens a git dir the sandbox pointed at (from a `.git` file or `commondir`), without
    /// following symlinks; `None` after recording why it could not be checked.
    fn open_pointed(&mut self, repo: &Path, what: &str, abs: &Path) -> Option<OwnedFd> {
        let Ok(rel) = abs.strip_prefix(self.host) else {
            self.found(
                repo,
                format!("{what} points outside the writable path: {}", abs.display()),
            );
            return None;
        };
        match fsat::open_resolved(self.dir, rel, libc::O_RDONLY | libc::O_DIRECTORY, true) {
            Ok(fd) => Some(fd),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => None,
            Err(e) => {
                let why = match e.raw_os_error() {
                    Some(libc::ELOOP | libc::EXDEV) => "through a symlink".to_string(),
                    _ => e.to_string(),
                };
                self.found(repo, format!("{what} points at {} ({why})", abs.display()));
                None
            }
        }
    }

    /// Hooks and code-running config of a git dir; `commondir` is followed once, as git does.
    fn scan_repo(&mut self, repo: &Path, g: BorrowedFd<'_>, prefix: &str, follow: bool) {
        self.scan_hooks(repo, g, prefix);
        for name in ["config", "config.worktree"] {
            self.scan_config(repo, g, name, prefix);
        }
        if !follow {
            return;
        }
        let pointer = match fsat::read_small(g, OsStr::new("commondir"), POINTER_CAP) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return,
            Err(e) => {
                self.found(repo, format!("{prefix}commondir not checked: {e}"));
                return;
            }
        };
        let end = pointer
            .iter()
            .rposition(|c| *c != b'\n' && *c != b'\r')
            .map_or(0, |i| i + 1);
        let common = self.to_host(repo, Path::new(OsStr::from_bytes(&pointer[..end])));
        if common == repo || self.guarded(&common) {
            return;
        }
        if let Some(fd) = self.open_pointed(repo, "commondir", &common) {
            let prefix = format!("commondir {}: ", common.display());
            self.scan_repo(repo, fd.as_fd(), &prefix, false);
        }
    }

    fn scan_hooks(&mut self, repo: &Path, g: BorrowedFd<'_>, prefix: &str) {
        let hooks = OsStr::new("hooks");
        match fsat::stat_at(g, hooks).map(|s| s.map(|s| Kind::of_mode(s.st_mode))) {
            Ok(Some(Kind::Dir)) => {}
            Ok(Some(Kind::Symlink)) => {
                let to = link_target(g, hooks);
                self.found(repo, format!("{prefix}hooks is a symlink to {to}"));
                return;
            }
            Ok(_) => return,
            Err(e) => {
                self.found(repo, format!("{prefix}hooks not checked: {e}"));
                return;
            }
        }
        let listed = fsat::open_child(g, hooks, libc::O_RDONLY | libc::O_DIRECTORY, 0)
            .and_then(|fd| fsat::list(fd.as_fd()).map(|names| (fd, names)));
        let (fd, mut names) = match listed {
            Ok(listed) => listed,
            Err(e) => {
                self.found(repo, format!("{prefix}hooks not checked: {e}"));
                return;
            }
        };
        names.sort();
        for (name, kind) in &names {
            if name.as_bytes().ends_with(b".sample") {
                continue;
            }
            let runnable = match kind {
                Kind::Symlink => true,
                Kind::File => fsat::stat_at(fd.as_fd(), name)
                    .ok()
                    .flatten()
                    .is_some_and(|s| s.st_mode & 0o111 != 0),
                _ => false,
            };
            if runnable {
                self.found(repo, format!("{prefix}hook {}", name.to_string_lossy()));
            }
        }
    }

    fn scan_config(&mut self, repo: &Path, g: BorrowedFd<'_>, name: &str, prefix: &str) {
        let os = OsStr::new(name);
        match fsat::stat_at(g, os) {
            Ok(None) => return,
            Ok(Some(st)) if Kind::of_mode(st.st_mode) == Kind::Symlink => {
                let to = link_target(g, os);
                self.found(repo, format!("{prefix}{name} is a symlink to {to}"));
                return;
            }
            _ => {}
        }
        let bytes = match fsat::read_small(g, os, CONFIG_CAP) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return,
            Err(e) => {
                self.found(repo, format!("{prefix}{name} not checked: {e}"));
                return;
            }
        };
        match gitconfig::parse(&bytes) {
            Ok(entries) => {
                for e in entries.iter().filter(|e| gitconfig::runs_code(e).is_some()) {
                    self.found(repo, format!("{prefix}{name} {}", e.name()));
                }
            }
            Err(line) => self.found(
                repo,
                format!("{prefix}{name} line {line} is not valid git config"),
            ),
        }
    }
}

impl Visitor for Checking<'_> {
    fn seen(&mut self, seen: Seen<'_>) -> Result<()> {
        match seen {
            Seen::Dir { rel, fd, .. } => {
                let repo = self.host.join(rel);
                if !self.guarded(&repo) {
                    self.scan_repo(&repo, fd, "", true);
                }
            }
            Seen::File { rel, parent } => {
                if self.guard.control.contains_key(rel) {
                    return Ok(());
                }
                let file = self.host.join(rel);
                let dir = file.parent().unwrap_or(self.host).to_path_buf();
                let content = match fsat::read_small(parent, OsStr::new(".git"), POINTER_CAP) {
                    // Gone since the walk saw it: there is no pointer to follow.
                    Ok(content) => content.unwrap_or_default(),
                    Err(e) => {
                        self.found(&file, format!("`.git` file not checked: {e}"));
                        return Ok(());
                    }
                };
                let Some(pointed) = gitfile_path(&content) else {
                    return Ok(());
                };
                let gitdir = self.to_host(&dir, &pointed);
                if self.guarded(&gitdir) {
                    return Ok(());
                }
                if let Some(fd) = self.open_pointed(&file, "`.git` file", &gitdir) {
                    self.scan_repo(&gitdir, fd.as_fd(), "", true);
                }
            }
            Seen::Symlink { rel, parent } => {
                let to = link_target(parent, OsStr::new(".git"));
                self.found(&self.host.join(rel), format!("`.git` is a symlink to {to}"));
            }
        }
        Ok(())
    }

    fn unreadable(&mut self, rel: &Path, op: &'static str, error: io::Error) -> Result<()> {
        self.found(
            &self.host.join(rel),
            format!("not checked: cannot {op}: {error}"),
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use covenant_test_support::git::{add_submodule, git_ok, repo};
    use covenant_test_support::{have, Need};
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::process::Command;

    const SANDBOX: &str = "/workspace";

    fn open(path: &Path) -> OwnedFd {
        fsat::open_absolute(path, libc::O_PATH | libc::O_DIRECTORY).unwrap()
    }

    fn guard(root: &Path) -> Result<RepoGuard> {
        guard_writable(root, open(root).as_fd(), Path::new(SANDBOX))
    }

    fn access_of(g: &RepoGuard, rel: &str) -> Option<MountAccess> {
        let m = g.mounts.iter().find(|m| m.host == g.host.join(rel))?;
        assert_eq!(m.target, Path::new(SANDBOX).join(rel));
        Some(m.access)
    }

    /// The control files of a common git dir are covered, and the dir itself is re-bound.
    fn assert_common_guarded(g: &RepoGuard, git_dir: &str) {
        use MountAccess::*;
        assert_eq!(access_of(g, git_dir), Some(ReadWrite), "{git_dir}");
        for (name, access) in [
            ("config", ReadOnly),
            ("config.worktree", ReadOnly),
            ("hooks", ReadExec),
            ("info", ReadOnly),
            ("commondir", ReadOnly),
        ] {
            let rel = format!("{git_dir}/{name}");
            assert_eq!(access_of(g, &rel), Some(access), "{rel}: {:#?}", g.mounts);
            assert!(g.host.join(&rel).exists(), "{rel} exists");
        }
        assert!(g.repos_at_start.contains(&g.host.join(git_dir)));
    }

    fn assert_parents_first(g: &RepoGuard) {
        for (i, m) in g.mounts.iter().enumerate() {
            for later in &g.mounts[i + 1..] {
                assert!(
                    !m.target.starts_with(&later.target),
                    "{} is mounted before its parent {}",
                    m.target.display(),
                    later.target.display()
                );
            }
        }
    }

    #[test]
    fn top_repo_control_files_are_covered_and_placeholders_keep_git_working() {
        let t = tempfile::tempdir().unwrap();
        let ws = t.path().join("ws");
        repo(&ws);
        let g = guard(&ws).unwrap();
        assert_common_guarded(&g, ".git");
        assert_eq!(access_of(&g, ".git/modules"), Some(MountAccess::ReadOnly));
        assert_eq!(access_of(&g, ".git/worktrees"), Some(MountAccess::ReadOnly));
        assert_parents_first(&g);
        assert_eq!(
            std::fs::read(ws.join(".git/commondir")).unwrap(),
            b".\n",
            "commondir names the git dir itself"
        );
        let made: BTreeSet<_> = g
            .placeholders
            .iter()
            .map(|p| p.path.strip_prefix(&ws).unwrap().to_path_buf())
            .collect();
        let expected: BTreeSet<PathBuf> = [
            ".git/config.worktree",
            ".git/commondir",
            ".git/modules",
            ".git/worktrees",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        assert_eq!(made, expected);

        // The owner's git keeps working with the placeholders in place.
        assert_eq!(git_ok(&ws, &["status", "--porcelain"]), "");
        std::fs::write(ws.join("b"), "b\n").unwrap();
        git_ok(&ws, &["add", "b"]);
        git_ok(&ws, &["commit", "-qm", "second"]);
        assert_eq!(git_ok(&ws, &["log", "--format=%s"]), "second\nfirst\n");
        assert_eq!(git_ok(&ws, &["fsck", "--no-progress"]), "");

        assert!(findings_after(&ws, open(&ws).as_fd(), &g).is_empty());
        assert!(remove_placeholders(&g).is_empty());
        for p in &g.placeholders {
            assert!(!p.path.exists(), "{} removed", p.path.display());
        }
        assert_eq!(git_ok(&ws, &["status", "--porcelain"]), "");
    }

    #[test]
    fn submodule_and_worktree_git_dirs_get_the_same_protection() {
        let t = tempfile::tempdir().unwrap();
        let (lib, ws) = (t.path().join("lib"), t.path().join("ws"));
        repo(&lib);
        repo(&ws);
        add_submodule(&ws, &lib, "vendor/lib");
        git_ok(&ws, &["worktree", "add", "-q", "wt"]);
        let g = guard(&ws).unwrap();

        assert_common_guarded(&g, ".git");
        assert_common_guarded(&g, ".git/modules/vendor/lib");
        assert_eq!(
            access_of(&g, "vendor/lib/.git"),
            Some(MountAccess::ReadOnly)
        );
        assert_eq!(
            access_of(&g, ".git/worktrees/wt"),
            Some(MountAccess::ReadWrite)
        );
        for name in ["commondir", "gitdir", "config.worktree"] {
            let rel = format!(".git/worktrees/wt/{name}");
            assert_eq!(access_of(&g, &rel), Some(MountAccess::ReadOnly), "{rel}");
        }
        assert_eq!(access_of(&g, "wt/.git"), Some(MountAccess::ReadOnly));
        // Existing modules/ and worktrees/ stay writable; each entry is guarded.
        assert_eq!(access_of(&g, ".git/modules"), None);
        assert_eq!(access_of(&g, ".git/worktrees"), None);
        assert_parents_first(&g);

        assert_eq!(git_ok(&ws, &["status", "--porcelain"]), "?? wt/\n");
        assert_eq!(git_ok(&ws.join("wt"), &["status", "--porcelain"]), "");
        assert_eq!(
            git_ok(&ws.join("vendor/lib"), &["status", "--porcelain"]),
            ""
        );
        assert!(git_ok(&ws, &["submodule", "status"]).contains("vendor/lib"));
        assert!(findings_after(&ws, open(&ws).as_fd(), &g).is_empty());
        assert!(remove_placeholders(&g).is_empty());
    }

    #[test]
    fn nested_repositories_and_git_files_are_guarded() {
        let t = tempfile::tempdir().unwrap();
        let ws = t.path().join("ws");
        std::fs::create_dir(&ws).unwrap();
        repo(&ws.join("deep/sub"));
        // `other/.git` is a file pointing at a git dir elsewhere in the workspace.
        std::fs::create_dir(ws.join("other")).unwrap();
        git_ok(
            &ws.join("other"),
            &[
                "init",
                "-q",
                "--separate-git-dir",
                ws.join("store").to_str().unwrap(),
            ],
        );
        let g = guard(&ws).unwrap();
        assert_common_guarded(&g, "deep/sub/.git");
        assert_common_guarded(&g, "store");
        assert_eq!(access_of(&g, "other/.git"), Some(MountAccess::ReadOnly));
        assert_parents_first(&g);
        assert_eq!(git_ok(&ws.join("other"), &["status", "--porcelain"]), "");
        remove_placeholders(&g);
    }

    #[test]
    fn a_git_file_pointing_at_nothing_inside_the_workspace_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let ws = t.path().join("ws");
        repo(&ws);
        std::fs::create_dir(ws.join("x")).unwrap();
        std::fs::write(ws.join("x/.git"), "gitdir: ../later\n").unwrap();
        let err = guard(&ws).unwrap_err();
        assert!(
            matches!(
                err,
                GitSafeError::GitFileTarget {
                    problem: "does not exist",
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            !ws.join(".git/commondir").exists(),
            "placeholders removed on error"
        );
    }

    #[test]
    fn symlinks_are_never_followed_and_a_git_symlink_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let (ws, elsewhere) = (t.path().join("ws"), t.path().join("elsewhere"));
        repo(&ws);
        repo(&elsewhere);
        std::os::unix::fs::symlink(&elsewhere, ws.join("evil")).unwrap();
        std::os::unix::fs::symlink("/etc", ws.join("etc")).unwrap();
        let g = guard(&ws).unwrap();
        assert!(
            g.mounts.iter().all(|m| m.host.starts_with(&ws)),
            "{:#?}",
            g.mounts
        );
        assert_eq!(g.repos_at_start, [ws.join(".git")]);
        assert!(!elsewhere.join(".git/commondir").exists());
        remove_placeholders(&g);

        std::fs::create_dir(ws.join("s")).unwrap();
        std::os::unix::fs::symlink(elsewhere.join(".git"), ws.join("s/.git")).unwrap();
        let err = guard(&ws).unwrap_err();
        assert!(matches!(err, GitSafeError::Symlink { .. }), "{err}");
        std::fs::remove_file(ws.join("s/.git")).unwrap();

        std::fs::rename(ws.join(".git/config"), ws.join("real-config")).unwrap();
        std::os::unix::fs::symlink("../real-config", ws.join(".git/config")).unwrap();
        let err = guard(&ws).unwrap_err();
        assert!(
            matches!(err, GitSafeError::Symlink { ref path } if path.ends_with(".git/config")),
            "{err}"
        );
        assert!(
            !ws.join(".git/commondir").exists(),
            "placeholders removed on error"
        );
    }

    #[test]
    fn refuse_inside_git_refuses_each_form() {
        let t = tempfile::tempdir().unwrap();
        let (r, bare) = (t.path().join("r"), t.path().join("bare.git"));
        repo(&r);
        git_ok(t.path(), &["init", "-q", "--bare", bare.to_str().unwrap()]);
        git_ok(&r, &["worktree", "add", "-q", "../wt"]);
        for inside in [
            r.join(".git"),
            r.join(".git/hooks"),
            r.join(".git/modules/x"),
            r.join(".git/worktrees/wt"),
            bare.clone(),
            bare.join("hooks"),
        ] {
            let err = refuse_inside_git(&inside).unwrap_err();
            assert!(
                matches!(err, GitSafeError::InsideGitDir { .. }),
                "{inside:?}"
            );
        }
        for fine in [r.clone(), r.join("src"), t.path().join("wt")] {
            refuse_inside_git(&fine).unwrap();
        }
        let err = guard(&bare).unwrap_err();
        assert!(matches!(err, GitSafeError::InsideGitDir { .. }), "{err}");
    }

    #[test]
    fn the_walk_refuses_a_tree_beyond_its_bounds_and_names_the_bound() {
        let t = tempfile::tempdir().unwrap();
        let deep = t.path().join("deep");
        std::fs::create_dir_all(deep.join("1/2/3/4/5/6/7")).unwrap();
        let limits = WalkLimits {
            max_depth: 5,
            max_entries: 1000,
        };
        let err = guard_writable_with(&deep, open(&deep).as_fd(), Path::new(SANDBOX), limits)
            .unwrap_err();
        assert!(
            matches!(err, GitSafeError::TooDeep { limit: 5, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("more than 5 directories"), "{err}");

        let wide = t.path().join("wide");
        std::fs::create_dir(&wide).unwrap();
        for i in 0..50 {
            std::fs::write(wide.join(i.to_string()), "").unwrap();
        }
        let limits = WalkLimits {
            max_depth: 5,
            max_entries: 20,
        };
        let err = guard_writable_with(&wide, open(&wide).as_fd(), Path::new(SANDBOX), limits)
            .unwrap_err();
        assert!(err.to_string().contains("more than 20 entries"), "{err}");
        let g = RepoGuard {
            host: wide.clone(),
            limits,
            ..RepoGuard::default()
        };
        let findings = findings_after(&wide, open(&wide).as_fd(), &g);
        assert!(
            findings[0].what.contains("more than 20 entries"),
            "the after-run check says it stopped: {findings:?}"
        );
    }

    #[test]
    fn findings_name_hooks_and_command_config_of_repositories_made_during_the_run() {
        let t = tempfile::tempdir().unwrap();
        let ws = t.path().join("ws");
        repo(&ws);
        let g = guard(&ws).unwrap();

        // What a sandbox could leave behind.
        repo(&ws.join("planted"));
        let planted = ws.join("planted/.git");
        git_ok(
            &ws.join("planted"),
            &["config", "core.fsmonitor", "./run-me"],
        );
        git_ok(&ws.join("planted"), &["config", "filter.x.smudge", "evil"]);
        git_ok(
            &ws.join("planted"),
            &["config", "core.fsmonitor", "true", "--add"],
        );
        let hook = planted.join("hooks/pre-commit");
        std::fs::write(&hook, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(planted.join("hooks/post-checkout"), "not executable").unwrap();
        git_ok(
            t.path(),
            &["init", "-q", "--bare", ws.join("b.git").to_str().unwrap()],
        );
        std::fs::write(
            ws.join("b.git/config"),
            "[core]\n\tbare = true\n\tsshCommand = x\n",
        )
        .unwrap();
        std::fs::create_dir(ws.join("x")).unwrap();
        std::fs::write(ws.join("x/.git"), "gitdir: /workspace/planted/.git\n").unwrap();
        repo(&ws.join("clean"));

        let findings = findings_after(&ws, open(&ws).as_fd(), &g);
        let expect = |repo: &Path, what: &str| GitFinding {
            repo: repo.to_path_buf(),
            what: what.to_string(),
        };
        assert_eq!(
            findings,
            [
                expect(&ws.join("b.git"), "config core.sshcommand"),
                expect(&planted, "config core.fsmonitor"),
                expect(&planted, "config filter.x.smudge"),
                expect(&planted, "hook pre-commit"),
            ]
        );

        // A control file of a guarded repository that changed is named too.
        std::fs::write(ws.join(".git/hooks/post-update"), "").unwrap();
        let findings = findings_after(&ws, open(&ws).as_fd(), &g);
        assert!(
            findings.contains(&expect(&ws.join(".git"), "hooks changed during the run")),
            "{findings:?}"
        );
        // So is a rebase left in progress, whose todo may `exec` on the owner's continue.
        std::fs::create_dir(ws.join(".git/rebase-merge")).unwrap();
        std::fs::write(ws.join(".git/rebase-merge/git-rebase-todo"), "exec ./x\n").unwrap();
        let findings = findings_after(&ws, open(&ws).as_fd(), &g);
        assert!(
            findings
                .iter()
                .any(|f| f.repo == ws.join(".git") && f.what.starts_with("rebase-merge written")),
            "{findings:?}"
        );
        // One that was in progress before the run is the owner's own.
        let again = guard(&ws).unwrap();
        let findings = findings_after(&ws, open(&ws).as_fd(), &again);
        assert!(
            !findings.iter().any(|f| f.what.starts_with("rebase-merge")),
            "{findings:?}"
        );
        remove_placeholders(&again);
        remove_placeholders(&g);
    }

    #[test]
    fn findings_are_bounded_in_number_and_length() {
        let t = tempfile::tempdir().unwrap();
        let ws = t.path().join("ws");
        std::fs::create_dir(&ws).unwrap();
        let g = guard(&ws).unwrap();
        for i in 0..(MAX_FINDINGS + 20) {
            let git = ws.join(format!("r{i}/.git"));
            std::fs::create_dir_all(git.join("hooks")).unwrap();
            std::fs::write(git.join("HEAD"), "ref: refs/heads/main\n").unwrap();
            let key = format!("[filter \"{}\"]\n\tsmudge = x\n", "k".repeat(1000));
            std::fs::write(git.join("config"), key).unwrap();
        }
        let findings = findings_after(&ws, open(&ws).as_fd(), &g);
        assert_eq!(findings.len(), MAX_FINDINGS + 1, "{:?}", &findings[..3]);
        assert!(findings
            .iter()
            .all(|f| f.what.len() <= MAX_FINDING_BYTES + 3));
        assert!(findings
            .last()
            .unwrap()
            .what
            .ends_with("more findings not listed"));
    }

    #[test]
    fn findings_follow_commondir_and_git_files_written_inside_the_sandbox() {
        let t = tempfile::tempdir().unwrap();
        let ws = t.path().join("ws");
        std::fs::create_dir(&ws).unwrap();
        let g = guard(&ws).unwrap();
        assert!(g.mounts.is_empty());

        // A common dir with a filter, reached from a new repository's commondir.
        std::fs::create_dir_all(ws.join("common")).unwrap();
        std::fs::write(ws.join("common/config"), "[diff \"x\"]\n\ttextconv = y\n").unwrap();
        repo(&ws.join("r"));
        std::fs::write(ws.join("r/.git/commondir"), "/workspace/common\n").unwrap();
        // A new `.git` file pointing outside the workspace.
        std::fs::create_dir(ws.join("o")).unwrap();
        std::fs::write(ws.join("o/.git"), "gitdir: /somewhere/else\n").unwrap();

        let findings = findings_after(&ws, open(&ws).as_fd(), &g);
        let whats: Vec<_> = findings
            .iter()
            .map(|f| {
                (
                    f.repo.strip_prefix(&ws).unwrap().to_path_buf(),
                    f.what.clone(),
                )
            })
            .collect();
        let common = ws.join("common");
        assert_eq!(
            whats,
            [
                (
                    PathBuf::from("o/.git"),
                    "`.git` file points outside the writable path: /somewhere/else".to_string()
                ),
                (
                    PathBuf::from("r/.git"),
                    format!("commondir {}: config diff.x.textconv", common.display())
                ),
            ]
        );
    }

    #[test]
    fn placeholders_are_owned_like_the_git_dir_and_removed_only_when_unchanged() {
        let t = tempfile::tempdir().unwrap();
        let ws = t.path().join("ws");
        repo(&ws);
        // Files owned by another user need root to make.
        let owned = have(&[Need::Root]);
        if owned {
            let out = Command::new("chown")
                .args(["-R", "1234:2345"])
                .arg(&ws)
                .status()
                .unwrap();
            assert!(out.success());
        }
        std::fs::set_permissions(ws.join(".git"), std::fs::Permissions::from_mode(0o2775)).unwrap();
        let g = guard(&ws).unwrap();
        for p in &g.placeholders {
            let meta = std::fs::symlink_metadata(&p.path).unwrap();
            if owned {
                assert_eq!(
                    (meta.uid(), meta.gid()),
                    (1234, 2345),
                    "{}",
                    p.path.display()
                );
            }
            let mode = meta.mode() & 0o7777;
            assert_eq!(
                mode,
                if p.dir { 0o2775 } else { 0o664 },
                "{}",
                p.path.display()
            );
        }
        // The owner used the names meanwhile: those placeholders stay.
        std::fs::write(ws.join(".git/config.worktree"), "[core]\n").unwrap();
        std::fs::write(ws.join(".git/modules/keep"), "").unwrap();
        let kept = remove_placeholders(&g);
        assert_eq!(
            kept,
            [ws.join(".git/modules"), ws.join(".git/config.worktree")]
        );
        assert!(!ws.join(".git/commondir").exists());
        assert!(!ws.join(".git/worktrees").exists());
    }
}
