//! containerd (its runc v2 shim) with `covenant-runtime` as the runc binary
//! (`ctr run --runc-binary`): run, a detached task, exec, pause and resume, kill, and a
//! terminal, on an image imported from a docker archive built here (no registry). A
//! private containerd serves the test on its own socket; nothing may be left behind.
//!
//! Needs root, containerd and a static busybox; without them it skips with a printed
//! reason, unless `COVENANT_REQUIRE_LIVE=1`, where it fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

fn live() -> bool {
    use covenant_test_support::live::{have, Need};
    have(&[
        Need::Root,
        Need::File {
            path: "/bin/busybox",
            package: "busybox-static",
        },
        Need::File {
            path: "/usr/bin/containerd",
            package: "containerd",
        },
    ])
}

struct Containerd {
    dir: tempfile::TempDir,
    daemon: Child,
}

impl Containerd {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let config = d.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n[grpc]\n  address = \"{0}/containerd.sock\"\n",
                d.display()
            ),
        )
        .unwrap();
        let daemon = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdout(std::fs::File::create(d.join("containerd.log")).unwrap())
            .stderr(std::fs::File::create(d.join("containerd.err")).unwrap())
            .spawn()
            .unwrap();
        let c = Self { dir, daemon };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !c.cmd(&["version"]).status.success() {
            assert!(Instant::now() < deadline, "containerd did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("containerd.sock")
    }

    fn cmd(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("-a")
            .arg(self.socket())
            .args(["-n", "covenant-test"])
            .args(args)
            .env(
                "COVENANT_RUNTIME_CONFIG",
                self.dir.path().join("runtime.toml"),
            )
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd(args);
        assert!(
            out.status.success(),
            "ctr {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.cmd(&["task", "kill", "-s", "KILL", "svc"]);
        let _ = self.cmd(&["task", "rm", "-f", "svc"]);
        let _ = self.cmd(&["container", "rm", "svc"]);
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        // The daemon's snapshot mounts live under its root.
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let root = self.dir.path().to_string_lossy().to_string();
        let mut mine: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4))
            .filter(|m| m.starts_with(&root))
            .collect();
        mine.reverse();
        for m in mine {
            let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// A docker archive of a static busybox root, tagged `localhost/covenant-bb:1`.
fn docker_archive(dir: &Path) -> PathBuf {
    use sha2_free::sha256_file;
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    for d in ["etc", "tmp", "proc", "sys", "dev"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    for tool in ["sh", "echo", "sleep", "true"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(tool)).unwrap();
    }
    let arc = dir.join("archive");
    std::fs::create_dir_all(&arc).unwrap();
    let tar = |src: &Path, out: &Path| {
        assert!(Command::new("tar")
            .arg("-C")
            .arg(src)
            .arg("-cf")
            .arg(out)
            .arg(".")
            .status()
            .unwrap()
            .success());
    };
    tar(&rootfs, &arc.join("layer.tar"));
    let diff_id = sha256_file(&arc.join("layer.tar"));
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"Cmd":["sh"]}},"rootfs":{{"type":"layers","diff_ids":["sha256:{diff_id}"]}}}}"#
    );
    std::fs::write(arc.join("config.json"), &config).unwrap();
    let config_id = sha256_file(&arc.join("config.json"));
    std::fs::rename(
        arc.join("config.json"),
        arc.join(format!("{config_id}.json")),
    )
    .unwrap();
    std::fs::write(
        arc.join("manifest.json"),
        format!(
            r#"[{{"Config":"{config_id}.json","RepoTags":["localhost/covenant-bb:1"],"Layers":["layer.tar"]}}]"#
        ),
    )
    .unwrap();
    let out = dir.join("image.tar");
    tar(&arc, &out);
    out
}

/// sha256 through coreutils (the test needs no hashing crate of its own).
mod sha2_free {
    pub fn sha256_file(path: &std::path::Path) -> String {
        let out = std::process::Command::new("sha256sum")
            .arg(path)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    }
}

#[test]
fn containerd_runs_tasks_through_the_runc_shim() {
    if !live() {
        return;
    }
    let c = Containerd::start();
    let rt = env!("CARGO_BIN_EXE_covenant-runtime");
    let image = docker_archive(c.dir.path());
    c.ok(&["image", "import", image.to_str().unwrap()]);
    let img = "localhost/covenant-bb:1";

    let out = c.ok(&[
        "run",
        "--rm",
        "--runc-binary",
        rt,
        img,
        "once",
        "sh",
        "-c",
        "echo hello-containerd",
    ]);
    assert_eq!(out.trim(), "hello-containerd");

    c.ok(&["run", "-d", "--runc-binary", rt, img, "svc", "sleep", "60"]);
    let exec = c.ok(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "svc",
        "sh",
        "-c",
        "echo exec-pid $$",
    ]);
    assert!(exec.starts_with("exec-pid "), "{exec}");
    c.ok(&["task", "pause", "svc"]);
    assert!(c.ok(&["task", "ls"]).contains("PAUSED"));
    c.ok(&["task", "resume", "svc"]);
    assert!(c.ok(&["task", "ls"]).contains("RUNNING"));
    c.ok(&["task", "kill", "-s", "KILL", "svc"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !c.ok(&["task", "ls"]).contains("STOPPED") {
        assert!(Instant::now() < deadline, "the task never stopped");
        std::thread::sleep(Duration::from_millis(50));
    }
    c.ok(&["task", "rm", "svc"]);
    c.ok(&["container", "rm", "svc"]);

    // A terminal through the shim's console socket; `script` gives ctr a tty of its own.
    let ctr = format!(
        "ctr -a {} -n covenant-test run --rm -t --runc-binary {rt} {img} tty sh -c 'test -t 0 && echo on-a-tty'",
        c.socket().display()
    );
    let out = Command::new("script")
        .args(["-qec", &ctr, "/dev/null"])
        .env("COVENANT_RUNTIME_CONFIG", c.dir.path().join("runtime.toml"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("on-a-tty"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    assert_eq!(c.ok(&["task", "ls", "-q"]).trim(), "", "tasks left");
    assert_eq!(
        c.ok(&["container", "ls", "-q"]).trim(),
        "",
        "containers left"
    );
    for h in ["pids", "memory", "freezer"] {
        let ns = Path::new("/sys/fs/cgroup").join(h).join("covenant-test");
        let left: Vec<_> = std::fs::read_dir(&ns)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect();
        assert!(
            left.is_empty(),
            "cgroups left in {}: {left:?}",
            ns.display()
        );
    }
}
