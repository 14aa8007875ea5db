//! gVisor with a writable workspace: what the sandbox writes lands owned by the
//! workspace's owner, and no setuid or setgid bit, device node, FIFO, root-owned file,
//! symlink or hardlink it makes reaches further on the host than the native runner
//! allows (and the native runner's own line, for the same attempts). Every check is made
//! on the host side, after the run.

use crate::scene::{code, runtime, stderr, stdout, Scene, EPERM, PROBE};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Output;

/// A scene when live tests and runsc are both here.
fn scene() -> Option<Scene> {
    let s = Scene::live()?;
    runtime("runsc")?;
    Some(s)
}

const OWNER: (u32, u32) = (1234, 2345);

impl Scene {
    /// `covenant-ctl run --runner gvisor --workspace WS FLAGS -- sh -c SCRIPT`, the
    /// workspace owned by [`OWNER`].
    fn gvisor_sh(&self, flags: &[&str], script: &str) -> Output {
        std::os::unix::fs::chown(&self.workspace, Some(OWNER.0), Some(OWNER.1)).unwrap();
        let mut all = vec!["--runner", "gvisor"];
        all.extend_from_slice(flags);
        self.run(&all, &["sh", "-c", script])
    }
}

/// Every entry under `dir` (not following symlinks), with its metadata.
fn walk(dir: &Path) -> Vec<(PathBuf, std::fs::Metadata)> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let meta = std::fs::symlink_metadata(e.path()).unwrap();
            if meta.is_dir() {
                todo.push(e.path());
            }
            found.push((e.path(), meta));
        }
    }
    found
}

/// What on the host side of the workspace breaks a guarantee: an entry not owned by the
/// owner, a setuid or setgid bit, a device node, a FIFO or a socket.
fn violations(ws: &Path) -> Vec<String> {
    walk(ws)
        .into_iter()
        .filter(|(p, _)| p.file_name().unwrap() != "probe.py")
        .filter_map(|(p, m)| {
            let t = m.file_type();
            let bad = (m.uid(), m.gid()) != OWNER
                || m.mode() & 0o6000 != 0
                || t.is_char_device()
                || t.is_block_device()
                || t.is_fifo()
                || t.is_socket();
            bad.then(|| format!("{} {:o} {}:{}", p.display(), m.mode(), m.uid(), m.gid()))
        })
        .collect()
}

#[test]
fn gvisor_workspace_files_belong_to_its_owner_on_the_host() {
    let Some(s) = scene() else { return };
    let out = s.gvisor_sh(
        &[],
        "cd /workspace && id -u && echo hi > made && mkdir -p d/e && echo deep > d/e/f \
         && mv d moved && git init -q repo && cd repo && echo x > a && git add a \
         && git -c user.email=a@b -c user.name=n commit -qm m && git status --porcelain && echo DONE",
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "0\nDONE\n", "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(s.workspace.join("moved/e/f")).unwrap(),
        "deep\n"
    );
    assert!(s.workspace.join("repo/.git/HEAD").is_file());
    assert_eq!(violations(&s.workspace), Vec::<String>::new());
}

#[test]
fn gvisor_setuid_setgid_device_fifo_and_root_owned_files_never_land_on_the_host() {
    let Some(s) = scene() else { return };
    // Each attempt prints its name and whether the call said it succeeded.
    let script = r#"cd /workspace
t() { n=$1; shift; if "$@" 2>/dev/null; then echo "$n ok"; else echo "$n refused"; fi; }
echo x > suid; echo x > sgid
t chmod-setuid chmod 4755 suid
t chmod-setgid chmod 2755 sgid
t creat-setuid python3 -c 'import os; os.close(os.open("/workspace/creat", os.O_CREAT | os.O_WRONLY, 0o6755))'
t mkdir-setgid mkdir -m 2775 sgiddir
t mkfifo mkfifo fifo
t mknod-char mknod char c 1 3
t mknod-block mknod block b 7 0
t socket python3 -c 'import socket; socket.socket(socket.AF_UNIX).bind("/workspace/sock")'
echo x > owned
# The owner is the sandbox's root: a chown to root inside changes nothing on the host.
t chown-root chown 0:0 owned
t chown-other chown 5:5 owned
t setcap python3 -c 'import os; os.setxattr("/workspace/owned", "security.capability", b"\x01\x00\x00\x02" + b"\xff" * 16)'
t cp-preserve cp -p /usr/bin/passwd passwd-copy
"#;
    let out = s.gvisor_sh(&[], script);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let said = stdout(&out);
    for refused in [
        "chmod-setuid",
        "chmod-setgid",
        "creat-setuid",
        "mkdir-setgid",
        "mknod-char",
        "mknod-block",
        "chown-other",
        "setcap",
    ] {
        assert!(
            said.contains(&format!("{refused} refused")),
            "{refused} was not refused:\n{said}"
        );
    }
    // Whatever the sandbox was told, the host holds no special file, bit or owner.
    assert_eq!(violations(&s.workspace), Vec::<String>::new(), "{said}");
    for name in ["fifo", "char", "block", "sock"] {
        assert!(
            std::fs::symlink_metadata(s.workspace.join(name)).is_err(),
            "{name} exists on the host:\n{said}"
        );
    }
    let copy = std::fs::metadata(s.workspace.join("passwd-copy"));
    if let Ok(m) = copy {
        assert_eq!(m.mode() & 0o6000, 0, "passwd's setuid bit was copied");
    }
}

/// The native runner holds the same line: the default seccomp profile refuses a setuid or
/// setgid mode on every call that sets one, and `mknod` of a FIFO or a device, so none
/// lands in the workspace as its owner's.
#[test]
fn native_setuid_setgid_fifo_and_device_files_never_land_on_the_host() {
    let Some(s) = Scene::live() else { return };
    std::os::unix::fs::chown(&s.workspace, Some(OWNER.0), Some(OWNER.1)).unwrap();
    let script = r#"cd /workspace
t() { n=$1; shift; if "$@" 2>/dev/null; then echo "$n ok"; else echo "$n refused"; fi; }
echo x > suid; echo x > sgid
t chmod-setuid chmod 4755 suid
t chmod-setgid chmod 2755 sgid
t chmod-plain chmod 0750 suid
t creat-setuid python3 -c 'import os; os.close(os.open("/workspace/creat", os.O_CREAT | os.O_WRONLY, 0o6755))'
t creat-plain python3 -c 'import os; os.close(os.open("/workspace/plain", os.O_CREAT | os.O_WRONLY, 0o644))'
t mkdir-setgid mkdir -m 2775 sgiddir
t mkdir-plain mkdir -m 0755 plaindir
t mkfifo mkfifo fifo
t mknod-char mknod char c 1 3
"#;
    let out = s.run(&[], &["sh", "-c", script]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let said = stdout(&out);
    for (name, want) in [
        ("chmod-setuid", "refused"),
        ("chmod-setgid", "refused"),
        ("chmod-plain", "ok"),
        ("creat-setuid", "refused"),
        ("creat-plain", "ok"),
        ("mkdir-setgid", "refused"),
        ("mkdir-plain", "ok"),
        ("mkfifo", "refused"),
        ("mknod-char", "refused"),
    ] {
        assert!(
            said.contains(&format!("{name} {want}")),
            "{name} not {want}:\n{said}"
        );
    }
    assert_eq!(violations(&s.workspace), Vec::<String>::new(), "{said}");
}

#[test]
fn gvisor_a_symlink_made_inside_never_carries_a_later_write_out() {
    let Some(s) = scene() else { return };
    let victim = s.home.path().join("victim");
    std::fs::write(&victim, "precious").unwrap();
    let report = s.workspace.join("report.json");
    let script = format!(
        "cd /workspace && ln -s {victim} report.json && ln -s ../../../../../../{victim} climb \
         && ln -s /etc/hostname etc-link; echo owned > etc-link 2>/dev/null && echo WROTE-ETC; \
         echo owned > climb 2>/dev/null && echo WROTE-CLIMB; echo DONE",
        victim = victim.display()
    );
    let out = s.gvisor_sh(&["--report", report.to_str().unwrap()], &script);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "DONE\n", "{}", stderr(&out));
    // The report replaced the planted link instead of writing through it.
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    assert!(!std::fs::symlink_metadata(&report).unwrap().is_symlink());
    // A second run writes through the links the first one left: still inside.
    let out = s.gvisor_sh(
        &[],
        "cd /workspace && for l in climb etc-link; do echo again > $l 2>/dev/null && echo WROTE-$l; done; echo DONE",
    );
    assert_eq!(stdout(&out), "DONE\n", "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    assert_ne!(
        std::fs::read_to_string("/etc/hostname").unwrap_or_default(),
        "owned\n"
    );
    // The links stayed links, owned by the owner.
    for l in ["climb", "etc-link"] {
        let m = std::fs::symlink_metadata(s.workspace.join(l)).unwrap();
        assert!(m.is_symlink(), "{l}");
        assert_eq!((m.uid(), m.gid()), OWNER, "{l}");
    }
}

#[test]
fn gvisor_a_hardlink_to_a_host_file_cannot_be_made() {
    let Some(s) = scene() else { return };
    let outside = s.home.path().join("readable");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret"), "host's").unwrap();
    let before = std::fs::metadata(outside.join("secret")).unwrap().nlink();
    let passwd_links = std::fs::metadata("/etc/passwd").unwrap().nlink();
    let script = format!(
        "cd /workspace && echo mine > own && ln own own-link && echo LINKED-OWN; \
         ln {}/secret stolen 2>/dev/null && echo LINKED-READ; \
         ln /etc/passwd passwd 2>/dev/null && echo LINKED-ETC; echo DONE",
        outside.display()
    );
    let out = s.gvisor_sh(&["--read", outside.to_str().unwrap()], &script);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(stdout(&out), "LINKED-OWN\nDONE\n", "{}", stderr(&out));
    assert_eq!(
        std::fs::metadata(outside.join("secret")).unwrap().nlink(),
        before
    );
    assert_eq!(
        std::fs::metadata("/etc/passwd").unwrap().nlink(),
        passwd_links
    );
    // A hardlink within the workspace is the workspace's own business.
    assert_eq!(
        std::fs::metadata(s.workspace.join("own-link"))
            .unwrap()
            .nlink(),
        2
    );
    assert_eq!(violations(&s.workspace), Vec::<String>::new());
}

/// The native runner's probe set, under gVisor with a writable workspace: every
/// dangerous call fails (gVisor's own kernel answers some of them, with its own errno,
/// but none succeeds), and `clone3` looks unimplemented so that the C library falls back.
#[test]
fn hostile_probes_fail_under_gvisor_with_a_writable_workspace() {
    let Some(s) = scene() else { return };
    std::fs::write(s.workspace.join("probe.py"), PROBE).unwrap();
    let flags = ["--runner", "gvisor"];
    std::os::unix::fs::chown(&s.workspace, Some(OWNER.0), Some(OWNER.1)).unwrap();
    for name in crate::seccomp::DENIED_PROBES {
        assert_eq!(s.probe(&flags, name), EPERM, "{name} was not denied");
    }
    assert_eq!(
        s.probe(&flags, "clone3"),
        libc::ENOSYS,
        "clone3 must look unimplemented"
    );
    let me = std::process::id();
    assert_ne!(
        s.probe(&flags, &format!("kill_host_pid:{me}")),
        0,
        "the sandbox signalled a host process"
    );
    assert_ne!(
        s.probe(&flags, "connect:1.1.1.1:53"),
        0,
        "net none reached out"
    );
    for (name, errno) in [
        ("socket:40:1", libc::EAFNOSUPPORT),
        ("socket:17:3", libc::EAFNOSUPPORT),
    ] {
        assert_ne!(s.probe(&flags, name), 0, "{name} (expected {errno})");
    }
    let out = s.run(
        &["--runner", "gvisor", "--pids", "16"],
        &["python3", "/workspace/probe.py", "fork_bomb"],
    );
    assert!(crate::scene::forked(&out) < 16, "{}", stdout(&out));
    let out = s.run(
        &["--runner", "gvisor", "--memory", "64MiB"],
        &[
            "python3",
            "-c",
            "x = bytearray(400 * 1024 * 1024); print('ALLOCATED')",
        ],
    );
    assert_eq!(code(&out), 137, "{}", stderr(&out));
    let out = s.run(
        &["--runner", "gvisor", "--timeout", "2s"],
        &["sh", "-c", "(sleep 300 &); sleep 300"],
    );
    assert_eq!(code(&out), 124, "{}", stderr(&out));
    let out = s.gvisor_sh(
        &[],
        "cat /etc/shadow 2>/dev/null || echo NO-SHADOW; echo x > /usr/evil 2>/dev/null || echo RO",
    );
    assert_eq!(stdout(&out), "NO-SHADOW\nRO\n", "{}", stderr(&out));
    // Threads start (glibc's pthread_create falls back from clone3).
    let out = s.run(
        &["--runner", "gvisor"],
        &[
            "python3",
            "-c",
            "import threading; t = threading.Thread(target=print, args=('THREAD',)); t.start(); t.join()",
        ],
    );
    assert_eq!(stdout(&out), "THREAD\n", "{}", stderr(&out));
    assert_eq!(violations(&s.workspace), Vec::<String>::new());
}

/// Git-safe workspaces under gVisor: the repository's control files are read-only binds
/// inside the writable workspace, as under the native runner.
#[test]
fn gvisor_git_commit_works_inside_but_hooks_and_config_cannot_be_planted() {
    let Some(s) = scene() else { return };
    covenant_test_support::git::git_ok(&s.workspace, &["init", "-q"]);
    let out = s.run(
        &["--runner", "gvisor"],
        &[
            "sh",
            "-c",
            "cd /workspace && echo a > a && git add a && git -c user.email=a@b -c user.name=a commit -qm inside && echo COMMITTED; \
             echo 'echo pwned' > .git/hooks/pre-commit 2>/dev/null && echo HOOK-PLANTED; \
             git config core.hooksPath /workspace/h 2>/dev/null && echo CONFIG-CHANGED; \
             mv .git .git-old 2>/dev/null && echo GIT-MOVED; true",
        ],
    );
    let text = stdout(&out);
    assert_eq!(text, "COMMITTED\n", "{}", stderr(&out));
    assert!(!s.workspace.join(".git/hooks/pre-commit").exists());
    assert_eq!(
        covenant_test_support::git::git_ok(&s.workspace, &["log", "--format=%s"]),
        "inside\n"
    );
}

/// The rest of the scope table under gVisor with a writable workspace: loopback inside,
/// the cpu quota, and what it cannot enforce refused naming the scope.
#[test]
fn gvisor_enforces_net_and_cpu_and_refuses_what_it_cannot_naming_the_scope() {
    let Some(s) = scene() else { return };
    std::fs::write(s.workspace.join("probe.py"), PROBE).unwrap();
    for net in ["none", "loopback"] {
        assert_eq!(
            s.probe(&["--runner", "gvisor", "--net", net], "loopback_echo"),
            0,
            "loopback inside the sandbox under net {net}"
        );
        assert_ne!(
            s.probe(&["--runner", "gvisor", "--net", net], "connect:1.1.1.1:53"),
            0,
            "net {net} reached out"
        );
    }
    // A spinning program under a quarter of a cpu: the sandbox as a whole (sentry and
    // gofer included) stays well under one cpu.
    let report = s.home.path().join("cpu.json");
    let out = s.run(
        &[
            "--runner",
            "gvisor",
            "--cpus",
            "0.25",
            "--report",
            report.to_str().unwrap(),
        ],
        &[
            "python3",
            "-c",
            "import time\nt = time.time()\nwhile time.time() - t < 2: pass",
        ],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let r = crate::scene::read_json(&report);
    let (cpu, wall) = (
        r["cpu_time_ms"].as_f64().unwrap(),
        r["duration_ms"].as_f64().unwrap(),
    );
    assert!(
        cpu < 0.6 * wall,
        "{cpu} ms of cpu in {wall} ms under 0.25 cpus"
    );
    // `net` egress runs behind the gateway (tests/live/egress.rs); TCP port rules have no
    // enforcement point in the sentry's netstack.
    let flags = ["--runner", "gvisor", "--net", "host", "--connect", "443"];
    let out = s.run(&flags, &["true"]);
    assert_eq!(code(&out), 125, "{}", stderr(&out));
    assert!(stderr(&out).contains("net.connect"), "{}", stderr(&out));
}
