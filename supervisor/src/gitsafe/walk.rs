//! The bounded walk both passes share: directories opened one name at a time relative to
//! their parent, never through a symlink, showing a visitor every git dir, `.git` file and
//! `.git` symlink; and the fingerprints that tell whether a control file changed.

use super::fsat::{self, has, Kind, Listing};
use super::model::*;
use sha2::{Digest, Sha256};
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// Whether git would take a directory with these entries for a git dir (setup.c,
/// `is_git_directory`); one that also holds `.git` is a working tree.
pub(super) fn looks_like_git_dir(names: &Listing) -> bool {
    has(names, "HEAD").is_some()
        && has(names, ".git").is_none()
        && ((has(names, "objects").is_some() && has(names, "refs").is_some())
            || has(names, "commondir").is_some())
}

/// What the walk shows its visitor.
pub(super) enum Seen<'a> {
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

pub(super) trait Visitor {
    fn seen(&mut self, seen: Seen<'_>) -> Result<()>;
    /// A directory the walk could not open or read: the guard refuses, the after-run check
    /// records it and goes on.
    fn unreadable(&mut self, rel: &Path, op: &'static str, error: io::Error) -> Result<()>;
}

/// One bounded walk. Directories are opened one name at a time relative to their parent,
/// never through a symlink; at most `max_depth` descriptors are open at once.
pub(super) struct Walk<'h> {
    pub(super) host: &'h Path,
    pub(super) limits: WalkLimits,
    pub(super) entries: usize,
}

impl Walk<'_> {
    pub(super) fn root(&mut self, v: &mut dyn Visitor, dir: BorrowedFd<'_>) -> Result<()> {
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
    pub(super) fn enter(
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

    pub(super) fn read(
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
    pub(super) fn classified(
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

    pub(super) fn tree(
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
    pub(super) fn git_dir(
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
pub(super) fn lexical(path: &Path) -> PathBuf {
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
pub(super) fn link_target(parent: BorrowedFd<'_>, name: &OsStr) -> String {
    match fsat::readlink_at(parent, name) {
        Ok(to) => to.display().to_string(),
        Err(e) => format!("an unreadable target ({e})"),
    }
}

/// The path in a `.git` file (`gitdir: PATH`), as git's `read_gitfile_gently` reads it.
pub(super) fn gitfile_path(content: &[u8]) -> Option<PathBuf> {
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
pub(super) const HASHED_CAP: u64 = 64 << 10;
/// Most names one fingerprint looks at, so a huge `hooks` tree costs a bounded amount.
pub(super) const FINGERPRINT_BUDGET: usize = 1024;

/// A stable description of a name under `parent`: type, mode, owner, and a hash of the
/// content (files) or of the entries (directories, a few levels deep). Never follows it.
/// Bounded: past [`FINGERPRINT_BUDGET`] names it stops at the same place every time.
pub(super) fn fingerprint(parent: BorrowedFd<'_>, name: &OsStr) -> String {
    let mut budget = FINGERPRINT_BUDGET;
    fingerprint_within(parent, name, 0, &mut budget)
}

pub(super) fn fingerprint_within(
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
