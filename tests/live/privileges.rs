//! Identity and privilege: the sandbox's root is no host root, sees no host process, and
//! gains nothing from setuid, mount or unshare; an ordinary user's run is held alike.

use crate::scene::{code, stderr, stdout, Scene, EPERM, PROBE};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

#[test]
fn sandbox_root_is_not_host_root() {
    let Some(s) = Scene::live() else { return };
    let out = s.run(&[], &["cat", "/proc/self/uid_map", "/proc/self/status"]);
    let text = stdout(&out);
    let map: Vec<u64> = text
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    assert_eq!(map[0], 0);
    assert_ne!(map[1], 0, "sandbox uid 0 maps to host root: {text}");
    for caps in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert!(
            text.contains(&format!("{caps}:\t0000000000000000")),
            "{caps} not empty:\n{text}"
        );
    }
    assert!(text.contains("NoNewPrivs:\t1"), "{text}");
    assert!(text.contains("Seccomp:\t2"), "{text}");
}

#[test]
fn host_processes_are_invisible_and_unreachable() {
    let Some(s) = Scene::live() else { return };
    let me = std::process::id().to_string();
    let out = s.sh("ls /proc | grep -c '^[0-9]'");
    let count: u32 = stdout(&out).trim().parse().unwrap();
    assert!(count <= 4, "sandbox sees {count} processes");
    assert_eq!(
        s.probe(&[], &format!("kill_host_pid:{me}")),
        libc::ESRCH,
        "signal reached host pid"
    );
}

#[test]
fn mount_and_unshare_commands_fail() {
    let Some(s) = Scene::live() else { return };
    let out =
        s.sh("mount -t tmpfs none /tmp && echo MOUNTED; unshare -U true && echo UNSHARED; true");
    assert!(
        !stdout(&out).contains("MOUNTED") && !stdout(&out).contains("UNSHARED"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn setuid_binary_grants_nothing() {
    let Some(s) = Scene::live() else { return };
    let id = s.workspace.join("suid-id");
    std::fs::copy("/usr/bin/id", &id).unwrap();
    std::os::unix::fs::chown(&id, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&id, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let out = s.run(&["--user", "1000:1000"], &["/workspace/suid-id"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.starts_with("uid=1000") && !text.contains("euid=0"),
        "setuid took effect: {text}"
    );
}

#[test]
fn an_ordinary_user_runs_rootless_with_the_same_restrictions() {
    let Some(s) = Scene::live() else { return };
    let nobody = s.home.path().join("nobody");
    std::fs::create_dir(&nobody).unwrap();
    let ctl = nobody.join("covenant-ctl");
    std::fs::copy(env!("CARGO_BIN_EXE_covenant-ctl"), &ctl).unwrap();
    std::fs::write(nobody.join("probe.py"), PROBE).unwrap();
    std::os::unix::fs::chown(&nobody, Some(65534), Some(65534)).unwrap();
    std::os::unix::fs::chown(nobody.join("probe.py"), Some(65534), Some(65534)).unwrap();
    let as_nobody = |args: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "env"])
            .arg(format!("COVENANT_HOME={}", nobody.join("home").display()))
            .arg(&ctl)
            .arg("run")
            .arg("--workspace")
            .arg(&nobody)
            .args(args)
            .output()
            .unwrap()
    };
    let out = as_nobody(&["--", "sh", "-c", "cat /proc/self/uid_map; touch /workspace/made; grep CapEff /proc/self/status; echo x > /usr/x || echo RO"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let text = stdout(&out);
    let map: Vec<&str> = text.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        map,
        ["0", "65534", "1"],
        "rootless maps the sandbox's root to the caller alone"
    );
    assert!(
        text.contains("CapEff:\t0000000000000000") && text.contains("RO"),
        "{text}"
    );
    assert_eq!(std::fs::metadata(nobody.join("made")).unwrap().uid(), 65534);
    let out = as_nobody(&["--", "python3", "/workspace/probe.py", "unshare_user"]);
    assert_eq!(
        stdout(&out).trim(),
        format!("unshare_user errno={EPERM}"),
        "{}",
        stderr(&out)
    );
    let out = as_nobody(&["--memory", "64MiB", "--", "true"]);
    assert_eq!(
        code(&out),
        125,
        "a limit without a writable cgroup must refuse the run"
    );
    assert!(
        stderr(&out).contains("cgroup") && stderr(&out).contains("Permission denied"),
        "{}",
        stderr(&out)
    );
}
