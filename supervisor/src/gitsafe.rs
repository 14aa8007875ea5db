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

mod checking;
mod fsat;
mod gitconfig;
mod guarding;
mod model;
mod walk;

use checking::Checking;
use guarding::Guarding;
use model::{MAX_FINDINGS, MAX_FINDING_BYTES, POINTER_CAP, SEQUENCER_STATE};
use walk::{fingerprint, Walk};

pub use model::{
    GitFinding, GitSafeError, Placeholder, RepoGuard, Result, WalkLimits, MAX_DEPTH, MAX_ENTRIES,
};

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

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

#[cfg(test)]
mod tests {
    use super::*;
    use covenant_policy::MountAccess;
    use covenant_test_support::git::{add_submodule, git_ok, repo};
    use covenant_test_support::{have, Need};
    use std::os::fd::OwnedFd;
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
