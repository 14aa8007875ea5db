//! The guard's pass before the run: for every git dir the walk shows, the mounts that keep
//! its control files read-only, and the placeholders those mounts need.

use super::fsat::{self, has, Kind, Listing};
use super::model::*;
use super::walk::*;
use covenant_policy::{MountAccess, PlanMount};
use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

/// The guard's visitor: protects what the walk shows it.
pub(super) struct Guarding<'a> {
    pub(super) host: &'a Path,
    pub(super) target: &'a Path,
    pub(super) guard: RepoGuard,
    /// Git dirs and `.git` files already handled (relative paths).
    pub(super) done: BTreeSet<PathBuf>,
    /// `.git` files inside the walked path whose git dir lies inside it too.
    pub(super) gitfile_targets: Vec<(PathBuf, PathBuf)>,
}

impl Guarding<'_> {
    pub(super) fn run(&mut self, dir: BorrowedFd<'_>, limits: WalkLimits) -> Result<()> {
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

    pub(super) fn mount(&mut self, rel: &Path, access: MountAccess) {
        self.guard.mounts.push(PlanMount {
            host: self.host.join(rel),
            target: self.target.join(rel),
            access,
        });
    }

    pub(super) fn protect_git_dir(
        &mut self,
        rel: &Path,
        g: BorrowedFd<'_>,
        names: &Listing,
    ) -> Result<()> {
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
    pub(super) fn placeholder(
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

    pub(super) fn protect_git_file(&mut self, rel: &Path, parent: BorrowedFd<'_>) -> Result<()> {
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
