//! `covenant-runtime` as an engine calls it: one process per command, state under
//! `--root`, a busybox bundle built here. Lifecycle tests, then configs written by an
//! attacker who controls `config.json`.
//!
//! They need root (namespaces, cgroups, mknod); without it they skip with a printed
//! reason, unless `COVENANT_REQUIRE_LIVE=1`, where they fail.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn live() -> bool {
    use covenant_test_support::live::{have, Need};
    have(&[
        Need::Root,
        Need::File {
            path: BUSYBOX,
            package: "busybox-static",
        },
    ])
}

const BUSYBOX: &str = "/bin/busybox";

/// A bundle whose root holds a static busybox, and a state root, in one temp dir.
struct Fixture {
    dir: tempfile::TempDir,
    policy: PathBuf,
}

impl Fixture {
    fn new(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("bundle/rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).unwrap();
        for d in ["proc", "sys", "dev", "tmp", "etc"] {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        std::fs::copy(BUSYBOX, rootfs.join("bin/busybox")).unwrap();
        for tool in [
            "sh", "sleep", "cat", "echo", "id", "hostname", "true", "ls", "mount",
        ] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(tool)).unwrap();
        }
        let policy = dir.path().join("runtime.toml");
        let f = Self { dir, policy };
        assert!(f
            .rt(&["spec", "--bundle", f.bundle().to_str().unwrap()])
            .status
            .success());
        f.edit(|c| {
            c["process"]["terminal"] = json!(false);
            c["process"]["args"] = json!(args);
            c["hostname"] = json!("covenant-test");
        });
        f
    }

    fn bundle(&self) -> PathBuf {
        self.dir.path().join("bundle")
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn edit(&self, f: impl FnOnce(&mut Value)) {
        let path = self.bundle().join("config.json");
        let mut c: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        f(&mut c);
        std::fs::write(&path, serde_json::to_vec_pretty(&c).unwrap()).unwrap();
    }

    /// Runs the runtime with its output in files, as engines do: a container's process
    /// inherits them, and a pipe would stay open as long as it runs.
    fn rt(&self, args: &[&str]) -> Output {
        let out = tempfile::tempfile().unwrap();
        let err = tempfile::tempfile().unwrap();
        let status = Command::new(env!("CARGO_BIN_EXE_covenant-runtime"))
            .arg("--root")
            .arg(self.root())
            .args(args)
            .env("COVENANT_RUNTIME_CONFIG", &self.policy)
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(err.try_clone().unwrap())
            .status()
            .unwrap();
        let read = |mut f: std::fs::File| {
            use std::io::{Read, Seek};
            let mut v = Vec::new();
            f.seek(std::io::SeekFrom::Start(0)).unwrap();
            f.read_to_end(&mut v).unwrap();
            v
        };
        Output {
            status,
            stdout: read(out),
            stderr: read(err),
        }
    }

    fn create(&self, id: &str) -> Output {
        self.rt(&["create", "--bundle", self.bundle().to_str().unwrap(), id])
    }

    fn status(&self, id: &str) -> String {
        let out = self.rt(&["state", id]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["status"].as_str().unwrap().to_string()
    }

    fn wait_status(&self, id: &str, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.status(id) != want {
            assert!(Instant::now() < deadline, "{id} never became {want}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// No state directory of `id` is left.
    fn assert_no_state(&self, id: &str) {
        assert!(!self.root().join(id).exists(), "state of {id} left behind");
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Ok(entries) = std::fs::read_dir(self.root()) {
            for e in entries.flatten() {
                let id = e.file_name().to_string_lossy().to_string();
                let _ = self.rt(&["delete", "--force", &id]);
            }
        }
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[test]
fn create_start_state_kill_delete_across_invocations() {
    if !live() {
        return;
    }
    let f = Fixture::new(&["sleep", "30"]);
    let out = f.create("life");
    assert!(out.status.success(), "{}", stderr(&out));
    let state: Value = serde_json::from_slice(&f.rt(&["state", "life"]).stdout).unwrap();
    assert_eq!(state["status"], "created");
    assert_eq!(state["id"], "life");
    let pid = state["pid"].as_i64().unwrap();
    assert!(pid > 1);
    // The init is waiting at the barrier: it has not exec'd sleep yet.
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert_ne!(comm.trim(), "sleep");
    let listed = f.rt(&["list", "--format", "json"]);
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed[0]["id"], "life");
    // Deleting a created container without --force is refused (runtime spec).
    let out = f.rt(&["delete", "life"]);
    assert!(
        !out.status.success() && stderr(&out).contains("created"),
        "{}",
        stderr(&out)
    );
    let out = f.rt(&["start", "life"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(f.status("life"), "running");
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert_eq!(comm.trim(), "sleep");
    let out = f.rt(&["start", "life"]);
    assert!(!out.status.success(), "a second start must fail");
    let out = f.rt(&["kill", "life", "KILL"]);
    assert!(out.status.success(), "{}", stderr(&out));
    f.wait_status("life", "stopped");
    let out = f.rt(&["kill", "life", "TERM"]);
    assert!(
        !out.status.success(),
        "kill of a stopped container must fail"
    );
    let out = f.rt(&["delete", "life"]);
    assert!(out.status.success(), "{}", stderr(&out));
    f.assert_no_state("life");
    assert!(!f.rt(&["state", "life"]).status.success());
}

#[test]
fn run_reports_the_exit_code_and_leaves_nothing() {
    if !live() {
        return;
    }
    let f = Fixture::new(&["sh", "-c", "test \"$(hostname)\" = covenant-test && exit 7"]);
    let out = f.rt(&["run", "--bundle", f.bundle().to_str().unwrap(), "runner"]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    f.assert_no_state("runner");
    assert!(!Path::new("/sys/fs/cgroup/pids/covenant-runtime/runner").exists());
}

#[test]
fn exec_ps_pause_resume_events_update_on_a_running_container() {
    if !live() {
        return;
    }
    let f = Fixture::new(&["sleep", "30"]);
    assert!(f.create("busy").status.success());
    assert!(f.rt(&["start", "busy"]).status.success());
    // The exec'd process is in the container's pid namespace, next to its init.
    let out = f.rt(&["exec", "busy", "sh", "-c", "echo $$"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let pid: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!((2..10).contains(&pid), "pid {pid} is not the container's");
    let out = f.rt(&["exec", "busy", "hostname"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "covenant-test");
    let out = f.rt(&["exec", "busy", "sh", "-c", "exit 3"]);
    assert_eq!(out.status.code(), Some(3));
    let out = f.rt(&["ps", "--format", "json", "busy"]);
    let pids: Vec<i32> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(pids.len(), 1, "{pids:?}");
    assert!(f.rt(&["pause", "busy"]).status.success());
    assert_eq!(f.status("busy"), "paused");
    assert!(f.rt(&["resume", "busy"]).status.success());
    assert_eq!(f.status("busy"), "running");
    let out = f.rt(&["events", "--stats", "busy"]);
    let ev: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ev["type"], "stats");
    assert!(ev["data"]["pids"]["current"].as_u64().unwrap() >= 1, "{ev}");
    let res = f.dir.path().join("res.json");
    std::fs::write(&res, r#"{"pids": {"limit": 42}}"#).unwrap();
    let out = f.rt(&["update", "--resources", res.to_str().unwrap(), "busy"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = f.rt(&["events", "--stats", "busy"]);
    let ev: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ev["data"]["pids"]["limit"], 42, "{ev}");
    assert!(f.rt(&["delete", "--force", "busy"]).status.success());
    f.assert_no_state("busy");
}

#[test]
fn a_writable_bind_of_the_host_root_is_refused_and_leaves_no_state() {
    if !live() {
        return;
    }
    let f = Fixture::new(&["true"]);
    f.edit(|c| {
        c["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/host", "type": "bind", "source": "/", "options": ["rbind", "rw"]
        }));
    });
    let out = f.create("rootbind");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("source") && stderr(&out).contains("host's `/`"),
        "{}",
        stderr(&out)
    );
    f.assert_no_state("rootbind");
}

#[test]
fn joining_the_host_pid_and_network_namespaces_is_refused() {
    if !live() {
        return;
    }
    let f = Fixture::new(&["true"]);
    // This test runs in the host's namespaces, as an engine does.
    let me = std::process::id();
    for (typ, name) in [("pid", "pid"), ("network", "net"), ("mount", "mnt")] {
        f.edit(|c| {
            let list = c["linux"]["namespaces"].as_array_mut().unwrap();
            list.retain(|n| n["type"] != typ);
            list.push(json!({"type": typ, "path": format!("/proc/{me}/ns/{name}")}));
        });
        let out = f.create("hostns");
        assert!(!out.status.success(), "{typ}");
        assert!(
            stderr(&out).contains("linux.namespaces") && stderr(&out).contains("host's own"),
            "{}",
            stderr(&out)
        );
        f.assert_no_state("hostns");
    }
}

/// Each hook kind runs where the runtime spec says, with the state on its stdin:
/// createRuntime in the runtime's namespaces; createContainer in the container's, after
/// its mounts and before the pivot (so the runtime's paths still resolve, and the
/// container's `/proc` is mounted under the root); startContainer in the container's,
/// after `start`.
#[test]
fn each_hook_kind_runs_in_its_namespaces_with_the_state() {
    if !live() {
        return;
    }
    let f = Fixture::new(&["sleep", "30"]);
    let out_dir = f.dir.path().join("hooks-out");
    std::fs::create_dir(&out_dir).unwrap();
    std::fs::set_permissions(
        &out_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let rootfs = f.bundle().join("rootfs");
    let hook = |kind: &str| {
        let o = out_dir.join(kind);
        json!({"path": "/bin/sh", "args": ["sh", "-c", format!(
            "cat > {o}.state; readlink /proc/self/ns/mnt > {o}.mnt; \
             stat -f -c %T {root}/proc > {o}.proc 2>&1",
            o = o.display(), root = rootfs.display())]})
    };
    f.edit(|c| {
        c["root"]["readonly"] = json!(false);
        c["hooks"] = json!({
            "createRuntime": [hook("createRuntime")],
            "createContainer": [hook("createContainer")],
            // Resolved in the container: its busybox, writing under its /tmp.
            "startContainer": [{"path": "/bin/sh", "args": ["sh", "-c",
                "cat > /tmp/startContainer.state; \
                 busybox readlink /proc/self/ns/mnt > /tmp/startContainer.mnt"]}],
        });
    });
    let out = f.create("hooks");
    assert!(out.status.success(), "{}", stderr(&out));
    let read = |name: &str| {
        let dir = match name.starts_with("startContainer") {
            true => rootfs.join("tmp"),
            false => out_dir.clone(),
        };
        std::fs::read_to_string(dir.join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .trim()
            .to_string()
    };
    let pid = serde_json::from_slice::<Value>(&f.rt(&["state", "hooks"]).stdout).unwrap()["pid"]
        .as_i64()
        .unwrap();
    let host_mnt = std::fs::read_link("/proc/self/ns/mnt").unwrap();
    let container_mnt = std::fs::read_link(format!("/proc/{pid}/ns/mnt")).unwrap();
    assert_ne!(host_mnt, container_mnt);
    assert_eq!(read("createRuntime.mnt"), host_mnt.to_string_lossy());
    assert_eq!(read("createContainer.mnt"), container_mnt.to_string_lossy());
    assert_eq!(
        read("createContainer.proc"),
        "proc",
        "mounted, not yet pivoted"
    );
    assert_ne!(read("createRuntime.proc"), "proc");
    assert!(
        !rootfs.join("tmp/startContainer.state").exists(),
        "startContainer ran before start"
    );
    let out = f.rt(&["start", "hooks"]);
    assert!(out.status.success(), "{}", stderr(&out));
    f.wait_status("hooks", "running");
    assert_eq!(read("startContainer.mnt"), container_mnt.to_string_lossy());
    for kind in ["createRuntime", "createContainer", "startContainer"] {
        let st: Value = serde_json::from_str(&read(&format!("{kind}.state")))
            .unwrap_or_else(|e| panic!("{kind}'s stdin is not the state: {e}"));
        assert_eq!(
            (st["id"].as_str(), st["pid"].as_i64(), st["bundle"].as_str()),
            (Some("hooks"), Some(pid), f.bundle().to_str()),
            "{kind}: {st}"
        );
    }
}

/// A create that dies after making the cgroup but before recording the container leaves
/// a record of the cgroup it claimed; `delete --force` then removes both.
#[test]
fn a_create_that_died_before_its_record_leaves_nothing_after_delete_force() {
    if !live() {
        return;
    }
    let f = Fixture::new(&["sleep", "30"]);
    let out = f.create("half");
    assert!(out.status.success(), "{}", stderr(&out));
    let dir = f.root().join("half");
    let state: Value =
        serde_json::from_slice(&std::fs::read(dir.join("state.json")).unwrap()).unwrap();
    let claimed: Value =
        serde_json::from_slice(&std::fs::read(dir.join("cgroups.json")).unwrap()).unwrap();
    assert_eq!(
        claimed, state["cgroup_dirs"],
        "the claim names the cgroups made"
    );
    let dirs: Vec<PathBuf> = serde_json::from_value(claimed).unwrap();
    assert!(!dirs.is_empty() && dirs.iter().all(|d| d.exists()));
    // As if the create had died before its record: the init is gone, no state.json.
    let pid = state["pid"].as_i64().unwrap() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < deadline, "the init did not die");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::fs::remove_file(dir.join("state.json")).unwrap();
    let out = f.rt(&["delete", "--force", "half"]);
    assert!(out.status.success(), "{}", stderr(&out));
    f.assert_no_state("half");
    for d in &dirs {
        assert!(!d.exists(), "cgroup {} left behind", d.display());
    }
}

#[test]
fn a_hook_that_is_a_symlink_into_the_bundle_is_refused() {
    if !live() {
        return;
    }
    let f = Fixture::new(&["true"]);
    let link = f.dir.path().join("innocent-hook");
    std::os::unix::fs::symlink(f.bundle().join("rootfs/bin/busybox"), &link).unwrap();
    f.edit(|c| {
        c["hooks"] =
            json!({"prestart": [{"path": link, "args": ["sh", "-c", "touch /tmp/pwned"]}]});
    });
    let out = f.create("hook");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("hooks.prestart[0].path")
            && stderr(&out).contains("inside the bundle"),
        "{}",
        stderr(&out)
    );
    f.assert_no_state("hook");
}

#[test]
fn a_mount_through_a_symlink_in_the_image_stays_inside_the_root() {
    if !live() {
        return;
    }
    let f = Fixture::new(&["sh", "-c", "test -d /target/marker-dir"]);
    // The image aims /escape at a host directory; the mount must land in the rootfs.
    let host = f.dir.path().join("host-target");
    std::fs::create_dir_all(&host).unwrap();
    std::os::unix::fs::symlink(&host, f.bundle().join("rootfs/escape")).unwrap();
    std::fs::create_dir_all(f.bundle().join("rootfs/target/marker-dir")).unwrap();
    f.edit(|c| {
        c["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/escape/x", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid"]
        }));
        c["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/target", "type": "bind", "source": f.bundle().join("rootfs/target"), "options": ["rbind", "ro"]
        }));
    });
    let out = f.rt(&["run", "--bundle", f.bundle().to_str().unwrap(), "escape"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        !host.join("x").exists(),
        "the mount point was made on the host"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(host.to_str().unwrap()),
        "a mount reached the host"
    );
}

#[test]
fn a_cgroups_path_that_names_an_occupied_cgroup_is_refused() {
    if !live() {
        return;
    }
    let f = Fixture::new(&["true"]);
    // `kill --all` or `delete --force` of such a container would kill the host's processes.
    for path in ["/", "/.."] {
        f.edit(|c| c["linux"]["cgroupsPath"] = json!(path));
        let out = f.create("cg");
        assert!(!out.status.success(), "{path}");
        assert!(
            stderr(&out).contains("linux.cgroupsPath"),
            "{}",
            stderr(&out)
        );
        f.assert_no_state("cg");
    }
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let pids = own
        .lines()
        .find(|l| l.contains(":pids:"))
        .map(|l| l.rsplit(':').next().unwrap().to_string());
    if let Some(pids) = pids.filter(|p| p != "/") {
        f.edit(|c| c["linux"]["cgroupsPath"] = json!(pids));
        let out = f.create("cg");
        assert!(
            stderr(&out).contains("already holds processes"),
            "{}",
            stderr(&out)
        );
        f.assert_no_state("cg");
    }
}

#[test]
fn a_sysctl_of_the_host_is_refused() {
    if !live() {
        return;
    }
    let f = Fixture::new(&["true"]);
    let before = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap();
    f.edit(|c| c["linux"]["sysctl"] = json!({"kernel.core_pattern": "|/tmp/evil"}));
    let out = f.rt(&["run", "--bundle", f.bundle().to_str().unwrap(), "sysctl"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("linux.sysctl.kernel.core_pattern"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap(),
        before
    );
    f.assert_no_state("sysctl");
    // A sysctl of the container's own network namespace is fine.
    f.edit(|c| c["linux"]["sysctl"] = json!({"net.ipv4.ip_forward": "1"}));
    let out = f.rt(&["run", "--bundle", f.bundle().to_str().unwrap(), "sysctl"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn unsafe_and_taken_ids_are_refused() {
    if !live() {
        return;
    }
    let f = Fixture::new(&["sleep", "30"]);
    for id in ["../x", "/", "a/b", &"x".repeat(300)] {
        let out = f.create(id);
        assert!(!out.status.success(), "{id}");
        assert!(stderr(&out).contains("container id"), "{}", stderr(&out));
    }
    assert!(!f.dir.path().join("x").exists());
    assert!(f.create("twice").status.success());
    let pid =
        serde_json::from_slice::<Value>(&f.rt(&["state", "twice"]).stdout).unwrap()["pid"].clone();
    let out = f.create("twice");
    assert!(
        !out.status.success() && stderr(&out).contains("already exists"),
        "{}",
        stderr(&out)
    );
    let again =
        serde_json::from_slice::<Value>(&f.rt(&["state", "twice"]).stdout).unwrap()["pid"].clone();
    assert_eq!(
        pid, again,
        "the losing create changed the first container's state"
    );
    assert!(f.rt(&["delete", "--force", "twice"]).status.success());
}

/// A change to a config, as a test case.
type ConfigEdit = Box<dyn Fn(&mut Value)>;

#[test]
fn bad_configs_name_the_field_and_leave_no_state() {
    if !live() {
        return;
    }
    let f = Fixture::new(&["true"]);
    let cases: Vec<(ConfigEdit, &str)> = vec![
        (
            Box::new(|c| c["process"]["user"]["uid"] = json!("root")),
            "process.user.uid",
        ),
        (
            Box::new(|c| c["process"]["args"] = json!([])),
            "process.args",
        ),
        (
            Box::new(|c| c["mounts"][0]["destination"] = json!("/proc/../../etc")),
            "mounts[0].destination",
        ),
        (
            Box::new(|c| c["process"]["capabilities"]["bounding"] = json!(["CAP_TEST"])),
            "process.capabilities.bounding",
        ),
        (
            Box::new(|c| c["root"]["path"] = json!("missing-rootfs")),
            "root.path",
        ),
        (
            Box::new(|c| c["process"]["args"] = json!(["/no/such/program"])),
            "process.args[0]",
        ),
    ];
    for (edit, field) in cases {
        let saved = std::fs::read(f.bundle().join("config.json")).unwrap();
        f.edit(|c| edit(c));
        let out = f.create("bad");
        assert!(!out.status.success(), "{field}");
        assert!(stderr(&out).contains(field), "{field}: {}", stderr(&out));
        f.assert_no_state("bad");
        std::fs::write(f.bundle().join("config.json"), saved).unwrap();
    }
    let out = f.rt(&["kill", "nothing", "NOTASIGNAL"]);
    assert!(stderr(&out).contains("unknown signal"), "{}", stderr(&out));
}

#[test]
fn a_node_that_requires_a_capability_refuses_a_container_without_one() {
    if !live() {
        return;
    }
    let f = Fixture::new(&["true"]);
    let key = f.dir.path().join("root.pub");
    std::fs::write(&key, covenant_policy::token::encode_key(&[9u8; 32])).unwrap();
    std::fs::write(
        &f.policy,
        format!(
            "require_capability = true\ntrusted_keys = [\"{}\"]\n",
            key.display()
        ),
    )
    .unwrap();
    let out = f.create("nocap");
    assert_eq!(out.status.code(), Some(125));
    assert!(
        stderr(&out).contains("org.opencovenant.capability") && stderr(&out).contains("missing"),
        "{}",
        stderr(&out)
    );
    f.assert_no_state("nocap");
    f.edit(|c| c["annotations"] = json!({"org.opencovenant.capability": "covenant-cap:garbage"}));
    let out = f.create("nocap");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("org.opencovenant.capability"),
        "{}",
        stderr(&out)
    );
    f.assert_no_state("nocap");
}

#[test]
fn systemd_cgroup_is_refused_clearly() {
    let out = Command::new(env!("CARGO_BIN_EXE_covenant-runtime"))
        .args(["--systemd-cgroup", "list"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--systemd-cgroup is not supported"));
}

#[test]
fn a_terminal_goes_to_the_console_socket() {
    if !live() {
        return;
    }
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::io::Read;
    use std::os::fd::{AsRawFd, FromRawFd};
    let f = Fixture::new(&["sh", "-c", "test -t 0 && test -t 1 && echo on-a-tty"]);
    f.edit(|c| c["process"]["terminal"] = json!(true));
    let sock = f.dir.path().join("console.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let receiver = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        let mut buf = [0u8; 64];
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let msg = recvmsg::<()>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::empty(),
        )
        .unwrap();
        let fd = msg
            .cmsgs()
            .unwrap()
            .find_map(|c| match c {
                ControlMessageOwned::ScmRights(fds) => fds.first().copied(),
                _ => None,
            })
            .expect("no descriptor on the console socket");
        // SAFETY: the descriptor was just received and is owned here.
        unsafe { std::fs::File::from_raw_fd(fd) }
    });
    let out = f.rt(&[
        "create",
        "--bundle",
        f.bundle().to_str().unwrap(),
        "--console-socket",
        sock.to_str().unwrap(),
        "tty",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut master = receiver.join().unwrap();
    assert!(f.rt(&["start", "tty"]).status.success());
    let mut text = Vec::new();
    let mut buf = [0u8; 256];
    // The pty reads EIO once the process is gone.
    while let Ok(n) = master.read(&mut buf) {
        if n == 0 {
            break;
        }
        text.extend_from_slice(&buf[..n]);
    }
    assert!(
        String::from_utf8_lossy(&text).contains("on-a-tty"),
        "{:?}",
        String::from_utf8_lossy(&text)
    );
    f.wait_status("tty", "stopped");
    assert!(f.rt(&["delete", "tty"]).status.success());
}

#[test]
fn create_start_kill_delete_and_refusals_are_audited_when_the_node_asks() {
    if !live() {
        return;
    }
    let f = Fixture::new(&["sleep", "30"]);
    let home = f.dir.path().join("home");
    std::fs::write(
        &f.policy,
        format!("audit = true\nstore_home = \"{}\"\n", home.display()),
    )
    .unwrap();
    assert!(f.create("audited").status.success());
    assert!(f.rt(&["start", "audited"]).status.success());
    assert!(f.rt(&["kill", "audited", "KILL"]).status.success());
    f.wait_status("audited", "stopped");
    assert!(f.rt(&["delete", "audited"]).status.success());
    f.edit(|c| {
        c["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/host", "type": "bind", "source": "/", "options": ["rbind", "rw"]
        }));
    });
    assert!(!f.create("refused").status.success());

    let store = covenant_supervisor::store::Store::open_reader(
        &home.join("covenant.db"),
        &home.join("supervisor.key"),
    )
    .unwrap();
    let rows = store.tail(100).unwrap();
    let kinds: Vec<&str> = rows
        .iter()
        .map(|r| r.kind.as_str())
        .filter(|k| k.starts_with("container."))
        .collect();
    assert_eq!(
        kinds,
        [
            "container.created",
            "container.started",
            "container.killed",
            "container.deleted",
            "container.refused"
        ],
        "{rows:?}"
    );
    let refused = rows.iter().find(|r| r.kind == "container.refused").unwrap();
    assert!(
        refused.body.contains("mounts[") && refused.body.contains("refused"),
        "{}",
        refused.body
    );
    assert!(store.verify().unwrap().is_ok(), "the chain does not verify");
}

/// Idmapped bind mounts: `idmap` alone maps a host directory through the container's own
/// user namespace mappings (host root's files are the container root's), explicit
/// `uidMappings`/`gidMappings` map just what they name (the rest shows as nobody), and a
/// file the container's root makes lands on the host as the on-disk id its mapping gives.
#[test]
fn idmapped_mounts_show_host_files_through_their_mappings() {
    if !live() {
        return;
    }
    use std::os::unix::fs::MetadataExt;
    let f = Fixture::new(&[
        "sh",
        "-c",
        "busybox stat -c %u:%g /data/rootfile /data/userfile /fixed/rootfile /fixed/userfile \
         && busybox touch /data/made",
    ]);
    let data = f.dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    // The mount points: the container's root cannot make them in a root-owned image.
    for d in ["data", "fixed"] {
        std::fs::create_dir(f.bundle().join("rootfs").join(d)).unwrap();
    }
    std::fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    std::fs::write(data.join("rootfile"), "").unwrap();
    std::fs::write(data.join("userfile"), "").unwrap();
    std::os::unix::fs::chown(data.join("userfile"), Some(1000), Some(1000)).unwrap();
    let map = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    f.edit(|c| {
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "user"}));
        c["linux"]["uidMappings"] = map.clone();
        c["linux"]["gidMappings"] = map.clone();
        let mounts = c["mounts"].as_array_mut().unwrap();
        mounts.push(
            json!({"destination": "/data", "type": "bind", "source": data,
            "options": ["rbind", "idmap"]}),
        );
        mounts.push(
            json!({"destination": "/fixed", "type": "bind", "source": data,
            "options": ["rbind", "ro"],
            "uidMappings": [{"containerID": 1000, "hostID": 100007, "size": 1}],
            "gidMappings": [{"containerID": 1000, "hostID": 100007, "size": 1}]}),
        );
    });
    let out = f.rt(&["run", "--bundle", f.bundle().to_str().unwrap(), "idmap"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .collect::<Vec<_>>(),
        ["0:0", "1000:1000", "65534:65534", "7:7"],
        "{}",
        stderr(&out)
    );
    let made = std::fs::metadata(data.join("made")).unwrap();
    assert_eq!(
        (made.uid(), made.gid()),
        (0, 0),
        "the container root's file, on disk"
    );
    f.assert_no_state("idmap");
}

/// An idmapped mount of a filesystem that cannot be idmapped is refused at create, naming
/// the mount, and leaves no state.
#[test]
fn an_idmapped_mount_the_filesystem_refuses_is_refused_naming_it() {
    if !live() {
        return;
    }
    let f = Fixture::new(&["true"]);
    f.edit(|c| {
        c["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/p", "type": "bind", "source": "/proc/self", "options": ["rbind"],
            "uidMappings": [{"containerID": 0, "hostID": 1000, "size": 1}],
            "gidMappings": [{"containerID": 0, "hostID": 1000, "size": 1}]}));
    });
    let out = f.create("noidmap");
    assert!(!out.status.success());
    let n = f.bundle().join("config.json");
    let mounts = serde_json::from_slice::<Value>(&std::fs::read(n).unwrap()).unwrap()["mounts"]
        .as_array()
        .unwrap()
        .len();
    assert!(
        stderr(&out).contains(&format!("mounts[{}]", mounts - 1))
            && stderr(&out).contains("refuses an idmapped mount"),
        "{}",
        stderr(&out)
    );
    f.assert_no_state("noidmap");
}

/// `linux.personality` LINUX32: the container's process and every process `exec` starts
/// in it see a 32-bit machine.
#[test]
fn a_32_bit_personality_holds_for_the_process_and_for_exec() {
    if !live() {
        return;
    }
    let f = Fixture::new(&["sh", "-c", "busybox uname -m > /tmp/machine; exec sleep 30"]);
    f.edit(|c| {
        c["root"]["readonly"] = json!(false);
        c["linux"]["personality"] = json!({"domain": "LINUX32"});
    });
    assert!(f.create("p32").status.success());
    let out = f.rt(&["start", "p32"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let machine = f.bundle().join("rootfs/tmp/machine");
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read_to_string(&machine).map_or(true, |m| m.is_empty()) {
        assert!(
            Instant::now() < deadline,
            "the process never wrote its machine"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(std::fs::read_to_string(&machine).unwrap().trim(), "i686");
    let out = f.rt(&["exec", "p32", "busybox", "uname", "-m"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "i686", "exec");
}

/// The cgroup v2 device program, enforced by this kernel: a shell moved into a v2 cgroup
/// with the program attached opens what the rules allow (null; zero for reading) and
/// nothing else (zero for writing, full). Runs on the unified hierarchy of a hybrid host
/// too, which is enough for device programs: they need no controller.
#[test]
fn the_v2_device_program_is_enforced_by_the_kernel() {
    use covenant_runtime::device_filter::{access_bits, DevType, Rule};
    if !live() {
        return;
    }
    let rule = |allow, typ, major, minor, access| Rule {
        allow,
        typ,
        major,
        minor,
        access: access_bits(access).unwrap(),
    };
    let Some(opened) = opens_under_device_program(
        "devtest",
        &[
            rule(false, None, None, None, "rwm"),
            rule(true, Some(DevType::Char), Some(1), Some(3), "rwm"),
            rule(true, Some(DevType::Char), Some(1), Some(5), "rwm"),
            rule(false, Some(DevType::Char), Some(1), Some(5), "w"),
        ],
        &[
            ("null", "3</dev/null"),
            ("zero-read", "3</dev/zero"),
            ("zero-write", "3<>/dev/zero"),
            ("full", "3</dev/full"),
        ],
    ) else {
        return;
    };
    assert_eq!(opened, ["null", "zero-read"]);
}

/// Moves a shell into a fresh cgroup v2 directory with the device program for `rules`
/// attached, and returns the names of the `opens` (a name, a redirection) that succeeded
/// there; `None` (after saying why) where no cgroup2 hierarchy is mounted.
fn opens_under_device_program(
    name: &str,
    rules: &[covenant_runtime::device_filter::Rule],
    opens: &[(&str, &str)],
) -> Option<Vec<String>> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let Some(v2) = mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        (right.split(' ').next() == Some("cgroup2"))
            .then(|| left.split(' ').nth(4).unwrap().to_string())
    }) else {
        covenant_test_support::live::cannot_run("no cgroup2 hierarchy is mounted");
        return None;
    };
    let dir = Path::new(&v2).join(format!("covenant-{name}-{}", std::process::id()));
    std::fs::create_dir(&dir).unwrap();
    let attached = covenant_runtime::device_filter::attach(&dir, rules);
    let mut script = format!("echo $$ > {};", dir.join("cgroup.procs").display());
    for (what, redirect) in opens {
        script.push_str(&format!(" (exec {redirect}) 2>/dev/null && echo {what};"));
    }
    script.push_str(" true");
    let out = Command::new("/bin/sh").args(["-c", &script]).output();
    let _ = std::fs::remove_dir(&dir);
    attached.unwrap();
    let out = out.unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    Some(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect(),
    )
}

/// The container does not possess the keys of the session that ran the runtime: its init
/// (and an exec'd process) joins a new session keyring, unless `--no-new-keyring`. The
/// container runs as uid 1000, so only possession could show it the caller's keyring.
#[test]
fn the_callers_session_keyring_stays_out_of_the_container() {
    if !live() {
        return;
    }
    let name = std::ffi::CString::new(format!("covenant-test-{}", std::process::id())).unwrap();
    // SAFETY: keyctl joins (making) a named session keyring for this thread, which the
    // runtime it spawns inherits; the name is a valid C string.
    let rc = unsafe { libc::syscall(libc::SYS_keyctl, 1 as libc::c_long, name.as_ptr()) };
    assert!(
        rc > 0,
        "join a session keyring: {}",
        std::io::Error::last_os_error()
    );
    let name = name.to_str().unwrap();
    let sees_it = |extra: &[&str]| {
        let f = Fixture::new(&["cat", "/proc/keys"]);
        f.edit(|c| {
            c["process"]["user"] = json!({"uid": 1000, "gid": 1000});
            // The default config masks /proc/keys; this test reads it.
            c["linux"]["maskedPaths"]
                .as_array_mut()
                .unwrap()
                .retain(|p| p != "/proc/keys");
        });
        let bundle = f.bundle();
        let mut args = vec!["run"];
        args.extend_from_slice(extra);
        args.extend(["--bundle", bundle.to_str().unwrap(), "keys"]);
        let out = f.rt(&args);
        assert!(out.status.success(), "{}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).contains(name)
    };
    assert!(
        !sees_it(&[]),
        "the container possesses the caller's keyring"
    );
    assert!(
        sees_it(&["--no-new-keyring"]),
        "the check cannot see the keyring at all"
    );
}

/// `readonlyPaths` holds for what is mounted below the path too, not only its top mount.
#[test]
fn a_read_only_path_is_read_only_below_too() {
    if !live() {
        return;
    }
    let f = Fixture::new(&[
        "sh",
        "-c",
        "echo x > /data/top 2>/dev/null && echo TOP; echo x > /data/sub/below 2>/dev/null && echo BELOW; echo DONE",
    ]);
    std::fs::create_dir_all(f.bundle().join("rootfs/data")).unwrap();
    f.edit(|c| {
        let mounts = c["mounts"].as_array_mut().unwrap();
        mounts.push(json!({"destination": "/data", "type": "tmpfs", "source": "tmpfs"}));
        mounts.push(json!({"destination": "/data/sub", "type": "tmpfs", "source": "tmpfs"}));
        c["linux"]["readonlyPaths"]
            .as_array_mut()
            .unwrap()
            .push(json!("/data"));
    });
    let out = f.rt(&["run", "--bundle", f.bundle().to_str().unwrap(), "ro"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "DONE\n",
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_time_namespace_gets_the_configured_clock_offsets() {
    if !live() {
        return;
    }
    // Ten days more of boot time than the host has: uptime inside is at least that.
    let f = Fixture::new(&[
        "sh",
        "-c",
        "read up idle < /proc/uptime; test ${up%.*} -ge 864000",
    ]);
    f.edit(|c| {
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "time"}));
        c["linux"]["timeOffsets"] = json!({"boottime": {"secs": 864000, "nanosecs": 0}});
    });
    let out = f.rt(&["run", "--bundle", f.bundle().to_str().unwrap(), "timens"]);
    assert!(out.status.success(), "{}", stderr(&out));
    f.edit(|c| {
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .retain(|n| n["type"] != "time");
    });
    let out = f.create("timens");
    assert!(
        stderr(&out).contains("linux.timeOffsets"),
        "{}",
        stderr(&out)
    );
    f.assert_no_state("timens");
}

/// cgroup v1 reads any `devices.allow` line that starts with `a` as "every device, every
/// access": a rule for both kinds that names a device (or asks only for mknod) must not
/// become that.
#[test]
fn a_device_rule_for_both_kinds_does_not_allow_every_device_on_v1() {
    if !live() {
        return;
    }
    let list = Path::new("/sys/fs/cgroup/devices");
    if !list.join("devices.list").exists() {
        covenant_test_support::live::cannot_run("no cgroup v1 devices controller");
        return;
    }
    let f = Fixture::new(&["sleep", "30"]);
    f.edit(|c| {
        c["linux"]["resources"] = json!({"devices": [
            {"allow": false, "access": "rwm"},
            {"allow": true, "type": "a", "major": 1, "minor": 11, "access": "r"},
            {"allow": true, "access": "m"}]});
    });
    let out = f.create("devall");
    assert!(out.status.success(), "{}", stderr(&out));
    let rules = std::fs::read_to_string(list.join("covenant-runtime/devall/devices.list")).unwrap();
    let rules: Vec<&str> = rules.lines().collect();
    assert!(!rules.contains(&"a *:* rwm"), "{rules:?}");
    for want in ["c 1:11 r", "b 1:11 r", "c *:* m", "b *:* m", "c 1:3 rwm"] {
        assert!(rules.contains(&want), "{want} missing: {rules:?}");
    }
}

/// The longest rule list a config may give compiles into a program the kernel's verifier
/// accepts, and it still decides as the list says.
#[test]
fn the_longest_device_rule_list_loads_and_is_enforced() {
    use covenant_runtime::device_filter::{access_bits, DevType, Rule, MAX_RULES};
    if !live() {
        return;
    }
    let rule = |allow, typ, major, minor: Option<u32>| Rule {
        allow,
        typ,
        major,
        minor,
        access: access_bits("rwm").unwrap(),
    };
    let mut rules = vec![
        rule(false, None, None, None),
        rule(true, Some(DevType::Char), Some(1), Some(3)),
    ];
    rules.extend(
        (0..MAX_RULES as u32 - 2).map(|n| rule(false, Some(DevType::Block), Some(7), Some(n))),
    );
    let Some(opened) = opens_under_device_program(
        "devlong",
        &rules,
        &[("null", "3</dev/null"), ("zero", "3</dev/zero")],
    ) else {
        return;
    };
    assert_eq!(opened, ["null"]);
}

/// A createContainer hook runs in the container's mount namespace, where the config's
/// mounts are in place. A root filesystem outside the bundle that holds the hook's path
/// lets a mount cover it with the bundle's own program: the hook must not run that.
#[test]
fn a_mount_that_covers_a_create_container_hook_is_refused() {
    if !live() {
        return;
    }
    let f = Fixture::new(&["true"]);
    let outside = f.dir.path().join("outside-rootfs");
    std::fs::rename(f.bundle().join("rootfs"), &outside).unwrap();
    let marker = f.dir.path().join("ran");
    let script = |what: &str| format!("#!/bin/sh\necho {what} >> {}\n", marker.display());
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir(outside.join("hooks")).unwrap();
    std::fs::write(outside.join("hooks/h"), script("checked")).unwrap();
    std::fs::create_dir(f.bundle().join("evil")).unwrap();
    std::fs::write(f.bundle().join("evil/h"), script("bundle")).unwrap();
    for p in [outside.join("hooks/h"), f.bundle().join("evil/h")] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    f.edit(|c| {
        c["root"] = json!({"path": outside, "readonly": false});
        c["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/hooks", "type": "bind",
            "source": f.bundle().join("evil"), "options": ["bind", "ro"]}));
        c["hooks"] = json!({"createContainer": [{"path": outside.join("hooks/h")}]});
    });
    let out = f.create("shadow");
    assert!(!out.status.success(), "created");
    assert!(
        stderr(&out).contains("hooks.createContainer[0].path"),
        "{}",
        stderr(&out)
    );
    assert!(!marker.exists(), "a hook ran");
    f.assert_no_state("shadow");
}

/// An idmap that shows host root's files as the container root's does not make a
/// read-only bind writable: `ro` holds on the idmapped tree as on a plain bind.
#[test]
fn an_idmapped_read_only_bind_stays_read_only() {
    if !live() {
        return;
    }
    let f = Fixture::new(&[
        "sh",
        "-c",
        "busybox stat -c %u /ro/rootfile; echo x > /ro/rootfile || echo refused; \
         busybox touch /ro/new || echo refused",
    ]);
    let data = f.dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("rootfile"), "host\n").unwrap();
    std::fs::create_dir(f.bundle().join("rootfs/ro")).unwrap();
    let map = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    f.edit(|c| {
        c["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "user"}));
        c["linux"]["uidMappings"] = map.clone();
        c["linux"]["gidMappings"] = map.clone();
        c["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/ro", "type": "bind", "source": data,
            "options": ["rbind", "ro"],
            "uidMappings": [{"containerID": 0, "hostID": 100000, "size": 1}],
            "gidMappings": [{"containerID": 0, "hostID": 100000, "size": 1}]}));
    });
    let out = f.rt(&["run", "--bundle", f.bundle().to_str().unwrap(), "idro"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .collect::<Vec<_>>(),
        ["0", "refused", "refused"],
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read_to_string(data.join("rootfile")).unwrap(),
        "host\n"
    );
    assert!(!data.join("new").exists());
}

/// A read-only `rbind` is read-only all the way down: a remount reaches only the top
/// mount, and the submounts the bind brought along must not stay writable (the source
/// may be granted for reading only).
#[test]
fn a_read_only_rbind_makes_its_submounts_read_only_too() {
    if !live() {
        return;
    }
    let f = Fixture::new(&[
        "sh",
        "-c",
        "echo x > /data/top 2>/dev/null || echo top-refused; \
         echo x > /data/sub/f 2>/dev/null || echo sub-refused",
    ]);
    let src = f.dir.path().join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::create_dir(f.bundle().join("rootfs/data")).unwrap();
    let sub = src.join("sub");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs"])
        .arg(&sub)
        .status()
        .unwrap();
    assert!(mounted.success());
    f.edit(|c| {
        c["root"]["readonly"] = json!(false);
        c["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/data", "type": "bind", "source": src,
            "options": ["rbind", "ro"]}));
    });
    let out = f.rt(&["run", "--bundle", f.bundle().to_str().unwrap(), "rro"]);
    let written = sub.join("f").exists();
    let _ = Command::new("umount").arg(&sub).status();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .collect::<Vec<_>>(),
        ["top-refused", "sub-refused"],
        "{}",
        stderr(&out)
    );
    assert!(!written);
}
