//! podman with `--runtime covenant-runtime`: run, detached run, exec, logs, stop, rm and
//! a terminal, on an image imported from a local tarball (no registry), in a private
//! podman store. Nothing may be left behind: containers, mounts, cgroups.
//!
//! Needs root, podman (with conmon) and a static busybox; without them it skips with a
//! printed reason, unless `COVENANT_REQUIRE_LIVE=1`, where it fails.

use std::path::Path;
use std::process::{Command, Output};

fn live() -> bool {
    use covenant_test_support::live::{have, Need};
    have(&[
        Need::Root,
        Need::File {
            path: "/bin/busybox",
            package: "busybox-static",
        },
        Need::File {
            path: "/usr/bin/podman",
            package: "podman",
        },
    ])
}

struct Podman {
    dir: tempfile::TempDir,
}

impl Podman {
    fn cmd(&self, args: &[&str]) -> Output {
        let d = self.dir.path();
        Command::new("podman")
            .arg("--root")
            .arg(d.join("store"))
            .arg("--runroot")
            .arg(d.join("run"))
            .args(["--cgroup-manager", "cgroupfs", "--events-backend", "file"])
            .args(["--storage-driver", "vfs"])
            .arg("--runtime")
            .arg(env!("CARGO_BIN_EXE_covenant-runtime"))
            .args(args)
            .env("COVENANT_RUNTIME_CONFIG", d.join("runtime.toml"))
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd(args);
        assert!(
            out.status.success(),
            "podman {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.cmd(&["rm", "--all", "--force"]);
    }
}

/// podman's default RLIMIT_NOFILE (1048576) is above these hosts' hard limit, and the
/// bounding set lacks CAP_SYS_RESOURCE: runc refuses it the same way.
const ULIMITS: [&str; 4] = [
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=4096:4096",
];

#[test]
fn podman_runs_execs_logs_stops_and_gives_a_terminal() {
    if !live() {
        return;
    }
    let p = Podman {
        dir: tempfile::tempdir().unwrap(),
    };
    let rootfs = p.dir.path().join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    for d in ["etc", "tmp", "proc", "sys", "dev"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    for tool in ["sh", "echo", "sleep", "true", "cat"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(tool)).unwrap();
    }
    let tar = p.dir.path().join("rootfs.tar");
    let made = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "tar: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    p.ok(&["import", tar.to_str().unwrap(), "localhost/covenant-bb:1"]);

    let mut run = vec!["run", "--rm"];
    run.extend(ULIMITS);
    run.extend([
        "localhost/covenant-bb:1",
        "sh",
        "-c",
        "echo hello-from-podman",
    ]);
    assert_eq!(p.ok(&run).trim(), "hello-from-podman");

    let mut detached = vec!["run", "-d", "--name", "svc"];
    detached.extend(ULIMITS);
    detached.extend(["localhost/covenant-bb:1", "sh", "-c", "echo up; sleep 60"]);
    p.ok(&detached);
    let exec = p.ok(&["exec", "svc", "sh", "-c", "echo exec-pid $$"]);
    assert!(exec.starts_with("exec-pid "), "{exec}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !p.ok(&["logs", "svc"]).contains("up") {
        assert!(std::time::Instant::now() < deadline, "no log line");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    p.ok(&["stop", "-t", "1", "svc"]);
    p.ok(&["rm", "svc"]);

    // A terminal through conmon's console socket; `script` gives podman a tty of its own.
    let podman_cmd = format!(
        "podman --root {d}/store --runroot {d}/run --cgroup-manager cgroupfs --events-backend file --storage-driver vfs --runtime {rt} run --rm -t {u} localhost/covenant-bb:1 sh -c 'test -t 0 && echo on-a-tty'",
        d = p.dir.path().display(),
        rt = env!("CARGO_BIN_EXE_covenant-runtime"),
        u = ULIMITS.join(" "),
    );
    let out = Command::new("script")
        .args(["-qec", &podman_cmd, "/dev/null"])
        .env("COVENANT_RUNTIME_CONFIG", p.dir.path().join("runtime.toml"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("on-a-tty"),
        "{} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    assert_eq!(p.ok(&["ps", "-a", "-q"]).trim(), "", "containers left");
    for h in ["pids", "memory", "freezer"] {
        let parent = Path::new("/sys/fs/cgroup").join(h).join("libpod_parent");
        let left: Vec<_> = std::fs::read_dir(&parent)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n.starts_with("libpod-"))
            .collect();
        assert!(
            left.is_empty(),
            "cgroups left in {}: {left:?}",
            parent.display()
        );
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(p.dir.path().to_str().unwrap()),
        "mounts left"
    );
}
