//! What every live test stands on: a scratch home and workspace (`Scene`) with the real
//! `covenant-ctl`, the probe script, the readers of a run's output, and the checks that a
//! run left nothing behind.

use covenant_test_support::cannot_run;
use covenant_test_support::live::{have, program, Need};
use covenant_test_support::scratch::traversable_dir;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub const PROBE: &str = include_str!("probe.py");

/// What the live tests need: root, python3 (the probe) and user namespaces. Where one is
/// missing the test says so and skips, or fails under `COVENANT_REQUIRE_LIVE=1`.
pub fn live() -> bool {
    have(&[
        Need::Root,
        Need::File {
            path: "/usr/bin/python3",
            package: "python3",
        },
        Need::UserNamespaces,
    ])
}

/// A scratch `$COVENANT_HOME` and workspace for one test.
pub struct Scene {
    pub home: tempfile::TempDir,
    pub workspace: PathBuf,
}

impl Scene {
    /// A scene when live tests can run here (see [`live`]).
    pub fn live() -> Option<Self> {
        live().then(Self::new)
    }

    pub fn new() -> Self {
        let home = traversable_dir("covenant-live-");
        let workspace = home.path().join("ws");
        std::fs::create_dir(&workspace).unwrap();
        std::fs::write(workspace.join("probe.py"), PROBE).unwrap();
        Scene { home, workspace }
    }

    pub fn ctl(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_covenant-ctl"));
        cmd.env("COVENANT_HOME", self.home.path().join("home"));
        cmd
    }

    /// What `covenant-ctl audit tail -n N` prints: the store's last `n` events.
    pub fn audit_tail(&self, n: u32) -> String {
        let out = self
            .ctl()
            .args(["audit", "tail", "-n", &n.to_string()])
            .output()
            .unwrap();
        stdout(&out)
    }

    /// `covenant-ctl run --workspace WS FLAGS -- ARGV`.
    pub fn run(&self, flags: &[&str], argv: &[&str]) -> Output {
        let mut cmd = self.ctl();
        cmd.arg("run")
            .arg("--workspace")
            .arg(&self.workspace)
            .args(flags)
            .arg("--")
            .args(argv);
        cmd.stdin(Stdio::null()).output().unwrap()
    }

    /// `covenant-ctl run --workspace WS -- sh -c SCRIPT`.
    pub fn sh(&self, script: &str) -> Output {
        self.run(&[], &["sh", "-c", script])
    }

    /// Runs one probe and returns the errno it printed.
    pub fn probe(&self, flags: &[&str], name: &str) -> i32 {
        let out = self.run(flags, &["python3", "/workspace/probe.py", name]);
        errno_printed(&out, name).unwrap_or_else(|| {
            panic!(
                "probe {name} printed nothing; status {:?}\nstdout: {}\nstderr: {}",
                out.status,
                stdout(&out),
                stderr(&out)
            )
        })
    }

    /// `covenant-ctl run --runner R --read WS FLAGS -- ARGV`: the workspace read-only,
    /// which every runner can enforce.
    pub fn run_with(&self, runner: &str, flags: &[&str], argv: &[&str]) -> Output {
        let mut cmd = self.ctl();
        cmd.args(["run", "--runner", runner, "--read"])
            .arg(&self.workspace)
            .args(flags)
            .arg("--")
            .args(argv);
        cmd.stdin(Stdio::null()).output().unwrap()
    }

    /// Runs one probe under `runner` and returns the errno it printed.
    pub fn probe_with(&self, runner: &str, flags: &[&str], name: &str) -> i32 {
        let probe = self.workspace.join("probe.py").display().to_string();
        let out = self.run_with(runner, flags, &["python3", &probe, name]);
        errno_printed(&out, name).unwrap_or_else(|| {
            panic!(
                "{runner}: probe {name} printed nothing; {:?}\n{}\n{}",
                out.status,
                stdout(&out),
                stderr(&out)
            )
        })
    }
}

/// The errno probe `name` printed (its line `NAME errno=N`), if it printed one.
fn errno_printed(out: &Output, name: &str) -> Option<i32> {
    let prefix = format!("{name} errno=");
    stdout(out)
        .lines()
        .find_map(|l| l.strip_prefix(&prefix).map(|v| v.trim().parse().unwrap()))
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

/// A JSON file the run wrote: a `--report`, a bundle's `config.json` or `plan.json`.
pub fn read_json(path: &Path) -> serde_json::Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap()
}

/// How many processes the `fork_bomb` probe forked (its `forked=N` line).
pub fn forked(out: &Output) -> u32 {
    stdout(out)
        .lines()
        .find_map(|l| l.strip_prefix("forked="))
        .unwrap_or_else(|| panic!("the fork bomb printed no count: {}", stderr(out)))
        .parse()
        .unwrap()
}

pub const EPERM: i32 = libc::EPERM;

/// Mounts on the host whose mount point lies in `under` (tests run in parallel, and other
/// tests' runtimes mount things of their own).
pub fn mounts_under(under: &Path) -> usize {
    let prefix = under.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| {
            l.split(' ')
                .nth(4)
                .is_some_and(|point| point.starts_with(&prefix))
        })
        .count()
}

pub fn covenant_cgroups() -> Vec<PathBuf> {
    covenant_test_support::live::run_cgroups()
}

/// The parent of process `pid`, from `/proc/PID/stat` (the field after the name, which
/// may hold spaces and parentheses, and the state).
pub fn parent_of(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let (_, rest) = stat.rsplit_once(") ").unwrap();
    rest.split(' ').nth(1).unwrap().parse().unwrap()
}

/// Removes the run cgroups supervisors of `home` killed outright left behind (see
/// [`covenant_test_support::live::remove_run_cgroups_of`]): a test leaves nothing.
pub fn remove_cgroups_of(home: &Path) {
    let stayed = covenant_test_support::live::remove_run_cgroups_of(home);
    assert!(stayed.is_empty(), "run cgroups stayed: {stayed:?}");
}

/// A `sleep` duration no other process on the host uses: a test's processes are found by
/// it (`pgrep -f 'sleep MARKER'`), since `sh` here (dash) cannot rename a process.
pub fn marker(n: u32) -> String {
    format!("{}.{:06}", 1000 + n, std::process::id() % 1_000_000)
}

/// Whether a process of this test (by its marker) is still running on the host.
pub fn still_running(marker: &str) -> bool {
    let out = Command::new("pgrep")
        .arg("-f")
        .arg(format!("^sleep {marker}$"))
        .output()
        .unwrap();
    !out.stdout.is_empty()
}

/// No bundle directory of the scene and no cgroup of these jobs is left.
pub fn assert_jobs_left_nothing(s: &Scene, jobs: &[String]) {
    let bundles = s.home.path().join("home/bundles");
    assert_eq!(
        std::fs::read_dir(&bundles).unwrap().count(),
        0,
        "bundle directories left behind"
    );
    let cgroups: Vec<_> = covenant_cgroups()
        .into_iter()
        .filter(|p| {
            jobs.iter().any(|j| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(j.as_str())
            })
        })
        .collect();
    assert!(cgroups.is_empty(), "cgroups left behind: {cgroups:?}");
}

/// `oci:PATH` for a runtime on PATH; a missing runtime fails the test when live tests are
/// required (CI installs runc, crun and runsc), and skips it otherwise.
pub fn runtime(name: &str) -> Option<String> {
    program(name).map(|path| path.display().to_string())
}

/// Every runner this host has: native, runc, crun, gVisor.
pub fn all_runners() -> Vec<String> {
    let mut runners = vec!["native".to_string()];
    for (name, label) in [("runc", None), ("crun", None), ("runsc", Some("gvisor"))] {
        if let Some(path) = runtime(name) {
            runners.push(label.map(str::to_string).unwrap_or(format!("oci:{path}")));
        }
    }
    runners
}

/// A busybox image directory (Debian's busybox-static), packed and imported as `busy:1`.
pub fn busybox_image(s: &Scene) -> Option<PathBuf> {
    let busybox = Path::new("/bin/busybox");
    if !busybox.exists() {
        cannot_run("/bin/busybox is missing (install busybox-static)");
        return None;
    }
    let root = s.home.path().join("image-root");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
    for applet in ["sh", "echo", "cat", "ls", "id", "touch", "uname", "sleep"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(root.join("etc/motd"), "from the image\n").unwrap();
    let layout = s.home.path().join("layout");
    let out = s
        .ctl()
        .args(["image", "pack"])
        .arg(&root)
        .arg("--out")
        .arg(&layout)
        .args(["--name", "busy:1"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = s
        .ctl()
        .args(["image", "import"])
        .arg(&layout)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("busy:1 sha256:"),
        "{}",
        stdout(&out)
    );
    Some(layout)
}
