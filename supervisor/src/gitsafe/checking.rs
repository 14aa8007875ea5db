//! The check after the run: what in the writable path would now make git on the host run
//! code the sandbox chose.

use super::fsat::{self, Kind};
use super::gitconfig;
use super::model::*;
use super::walk::*;
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// The after-run visitor: names what new repositories would run.
pub(super) struct Checking<'a> {
    pub(super) host: &'a Path,
    pub(super) guard: &'a RepoGuard,
    pub(super) dir: BorrowedFd<'a>,
    pub(super) findings: Vec<GitFinding>,
}

impl Checking<'_> {
    pub(super) fn found(&mut self, repo: &Path, what: String) {
        self.findings.push(GitFinding {
            repo: repo.to_path_buf(),
            what,
        });
    }

    pub(super) fn guarded(&self, repo: &Path) -> bool {
        self.guard.repos_at_start.iter().any(|r| r == repo)
    }

    /// A path written inside the sandbox names sandbox places; read it as the host's.
    pub(super) fn to_host(&self, base: &Path, path: &Path) -> PathBuf {
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
    pub(super) fn open_pointed(&mut self, repo: &Path, what: &str, abs: &Path) -> Option<OwnedFd> {
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
    pub(super) fn scan_repo(&mut self, repo: &Path, g: BorrowedFd<'_>, prefix: &str, follow: bool) {
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

    pub(super) fn scan_hooks(&mut self, repo: &Path, g: BorrowedFd<'_>, prefix: &str) {
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

    pub(super) fn scan_config(&mut self, repo: &Path, g: BorrowedFd<'_>, name: &str, prefix: &str) {
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
