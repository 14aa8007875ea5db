//! git as a repository's owner runs it on the host, made hermetic: the machine's global
//! and system configuration are ignored, the identity is fixed, and file-protocol
//! submodules are allowed (tests add local repositories as submodules).

use std::path::Path;
use std::process::{Command, Output};

/// `git -C DIR` with a fixed identity and no configuration but the repository's own.
pub fn command(dir: &Path) -> Command {
    let mut cmd = Command::new("git");
    cmd.arg("-C")
        .arg(dir)
        .args(["-c", "protocol.file.allow=always"])
        .env_remove("GIT_DIR")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "owner")
        .env("GIT_AUTHOR_EMAIL", "owner@host")
        .env("GIT_COMMITTER_NAME", "owner")
        .env("GIT_COMMITTER_EMAIL", "owner@host");
    cmd
}

/// `git -C DIR ARGS`, whatever its exit status.
pub fn git(dir: &Path, args: &[&str]) -> Output {
    command(dir).args(args).output().expect("git runs")
}

/// `git -C DIR ARGS`, which must succeed; its stdout.
pub fn git_ok(dir: &Path, args: &[&str]) -> String {
    let out = git(dir, args);
    assert!(
        out.status.success(),
        "git {args:?} in {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A new repository at `dir` (created if need be) with one commit of one file.
pub fn repo(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    git_ok(dir, &["init", "-q"]);
    std::fs::write(dir.join("a"), "a\n").unwrap();
    git_ok(dir, &["add", "a"]);
    git_ok(dir, &["commit", "-qm", "first"]);
}

/// Adds the repository at `source` to `repo` as a submodule at `path`, and commits it.
pub fn add_submodule(repo: &Path, source: &Path, path: &str) {
    let source = source.to_str().expect("a UTF-8 path");
    git_ok(repo, &["submodule", "add", "-q", source, path]);
    git_ok(repo, &["commit", "-qm", &format!("submodule {path}")]);
}
