//! Git safety: the sandbox commits in its workspace, but no route plants code that the
//! owner's next git command on the host would run.

use crate::scene::{code, read_json, stderr, stdout, Scene};
use covenant_test_support::git::{add_submodule, git, git_ok, repo};

#[test]
fn git_commit_works_inside_but_hooks_and_config_cannot_be_planted() {
    let Some(s) = Scene::live() else { return };
    git_ok(&s.workspace, &["init", "-q"]);
    let out = s.sh("cd /workspace && echo a > a && git add a && git -c user.email=a@b -c user.name=a commit -qm inside && echo COMMITTED; \
           echo 'echo pwned' > .git/hooks/pre-commit && echo HOOK-PLANTED; \
           git config core.hooksPath /workspace/h && echo CONFIG-CHANGED; \
           mv .git .git-old && echo GIT-MOVED; rm -rf .git/hooks && echo HOOKS-REMOVED; true");
    let text = stdout(&out);
    assert!(text.contains("COMMITTED"), "{text}{}", stderr(&out));
    for planted in [
        "HOOK-PLANTED",
        "CONFIG-CHANGED",
        "GIT-MOVED",
        "HOOKS-REMOVED",
    ] {
        assert!(!text.contains(planted), "{planted}: {text}");
    }
    assert!(!s.workspace.join(".git/hooks/pre-commit").exists());
    assert_eq!(git_ok(&s.workspace, &["log", "--format=%s"]), "inside\n");
}

#[test]
fn no_git_route_plants_code_for_the_owners_next_git_command() {
    let Some(s) = Scene::live() else { return };
    let ws = &s.workspace;
    let lib = s.home.path().join("lib");
    repo(&lib);
    git_ok(ws, &["init", "-q"]);
    add_submodule(ws, &lib, "vendor/lib");
    std::fs::create_dir(ws.join("nested")).unwrap();
    git_ok(&ws.join("nested"), &["init", "-q"]);
    // What the host's git would run if any of the plants took: it leaves a mark.
    let mark = s.home.path().join("host-ran-planted-code");
    let evil = format!(
        "[core]\n\tfsmonitor = touch {0}\n\thooksPath = /workspace/h\n[alias]\n\tst = !touch {0}\n",
        mark.display()
    );
    std::fs::write(ws.join("evil.config"), &evil).unwrap();
    let script = r#"cd /workspace
mkdir -p evil && cp evil.config evil/config
try() { if sh -c "$2" 2>/dev/null; then echo "PLANTED:$1"; fi; }
try commondir 'echo ../evil > .git/commondir'
try config-worktree 'cat evil.config > .git/config.worktree'
try info 'echo "* filter=x" > .git/info/attributes'
try config 'cat evil.config >> .git/config'
try hook 'echo "touch /x" > .git/hooks/post-checkout && chmod +x .git/hooks/post-checkout'
try module-config 'cat evil.config >> .git/modules/vendor/lib/config'
try module-hook 'echo "touch /x" > .git/modules/vendor/lib/hooks/post-checkout'
try module-commondir 'echo ../../../../evil > .git/modules/vendor/lib/commondir'
try worktrees 'mkdir -p .git/worktrees/w && echo ../../../evil > .git/worktrees/w/commondir'
try gitfile 'echo "gitdir: /workspace/evil" > vendor/lib/.git'
try nested-config 'cat evil.config >> nested/.git/config'
try nested-hook 'echo "touch /x" > nested/.git/hooks/pre-commit'
try nested-commondir 'echo ../../evil > nested/.git/commondir'
try swap-git 'mv .git .git-old'
try swap-nested 'mv nested/.git nested/.git-old'
git init -q fresh && git -C fresh config core.fsmonitor "touch /x" && echo FRESH-MADE
git init -q --bare .git/modules/other && cat evil.config >> .git/modules/other/config && echo MODULE-MADE
echo a > a && git add a && git -c user.email=a@b -c user.name=a commit -qm inside && echo COMMITTED
"#;
    let report = s.home.path().join("report.json");
    let out = s.run(
        &["--report", report.to_str().unwrap()],
        &["sh", "-c", script],
    );
    let text = stdout(&out);
    assert_eq!(code(&out), 0, "{text}{}", stderr(&out));
    let planted: Vec<&str> = text.lines().filter(|l| l.starts_with("PLANTED:")).collect();
    assert!(planted.is_empty(), "{planted:?}\n{text}");
    assert!(text.contains("COMMITTED"), "{text}{}", stderr(&out));
    assert!(
        text.contains("FRESH-MADE") && text.contains("MODULE-MADE"),
        "{text}"
    );
    // The owner's next git commands, in every repository the sandbox could reach.
    for dir in [ws.clone(), ws.join("vendor/lib"), ws.join("nested")] {
        git_ok(&dir, &["status", "--porcelain"]);
        let _ = git(&dir, &["st"]);
    }
    assert!(!mark.exists(), "the host ran code the sandbox planted");
    assert_eq!(git_ok(ws, &["log", "-1", "--format=%s"]), "inside\n");
    // The repository made during the run is not protected, but it is named.
    let report: serde_json::Value = read_json(&report);
    let findings = report["git_findings"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        findings.iter().any(|f| f["repo"]
            .as_str()
            .is_some_and(|r| r.ends_with("fresh") || r.ends_with("fresh/.git"))
            && f["what"].as_str().unwrap_or("").contains("core.fsmonitor")),
        "{report}"
    );
    assert!(
        findings.iter().any(|f| f["repo"]
            .as_str()
            .is_some_and(|r| r.ends_with("modules/other"))
            && f["what"].as_str().unwrap_or("").contains("core.fsmonitor")),
        "{report}"
    );
    // Placeholders the run needed are gone again.
    assert!(!ws.join(".git/commondir").exists());
    // A writable path inside a git directory is refused, whatever names it.
    for (flag, path) in [
        ("--workspace", ws.join(".git")),
        ("--write", ws.join(".git/hooks")),
        ("--write", ws.join(".git/modules/vendor/lib")),
    ] {
        let out = s
            .ctl()
            .args(["run", flag])
            .arg(&path)
            .args(["--", "true"])
            .output()
            .unwrap();
        assert_eq!(code(&out), 125, "{}", path.display());
        assert!(stderr(&out).contains(".git"), "{}", stderr(&out));
    }
}
