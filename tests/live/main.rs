//! Live tests: the real `covenant-ctl` binary, the real kernel. Each hostile test has the
//! sandboxed program try to break one restriction and asserts that it could not.
//!
//! They need root (user namespaces with a subordinate id range, cgroups, idmapped
//! mounts). Without it they skip with a printed reason, unless `COVENANT_REQUIRE_LIVE=1`,
//! in which case a test that cannot run fails.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const PROBE: &str = include_str!("probe.py");

/// Returns false (after printing why) when live tests cannot run here; panics instead when
/// `COVENANT_REQUIRE_LIVE=1`.
fn live() -> bool {
    // SAFETY: geteuid has no failure mode.
    let euid = unsafe { libc::geteuid() };
    let missing = if euid != 0 {
        Some("not running as root".to_string())
    } else if !Path::new("/usr/bin/python3").exists() {
        Some("/usr/bin/python3 is missing (install python3)".to_string())
    } else if !Path::new("/proc/self/ns/user").exists() {
        Some("no user namespaces".to_string())
    } else {
        None
    };
    match missing {
        None => true,
        Some(reason) => {
            cannot_run(&reason);
            false
        }
    }
}

/// A live test that cannot run here: it fails when `COVENANT_REQUIRE_LIVE=1`, and says
/// why and skips otherwise.
fn cannot_run(reason: &str) {
    if std::env::var("COVENANT_REQUIRE_LIVE").as_deref() == Ok("1") {
        panic!("live test cannot run: {reason} (COVENANT_REQUIRE_LIVE=1)");
    }
    eprintln!("skipping live test: {reason}");
}

/// A scratch `$COVENANT_HOME` and workspace for one test.
struct Scene {
    home: tempfile::TempDir,
    workspace: PathBuf,
}

impl Scene {
    /// A scene when live tests can run here (see [`live`]).
    fn live() -> Option<Self> {
        live().then(Self::new)
    }

    fn new() -> Self {
        let home = tempfile::Builder::new()
            .prefix("covenant-live-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        let workspace = home.path().join("ws");
        std::fs::create_dir(&workspace).unwrap();
        std::fs::write(workspace.join("probe.py"), PROBE).unwrap();
        Scene { home, workspace }
    }

    fn ctl(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_covenant-ctl"));
        cmd.env("COVENANT_HOME", self.home.path().join("home"));
        cmd
    }

    /// `covenant-ctl run --workspace WS FLAGS -- ARGV`.
    fn run(&self, flags: &[&str], argv: &[&str]) -> Output {
        let mut cmd = self.ctl();
        cmd.arg("run")
            .arg("--workspace")
            .arg(&self.workspace)
            .args(flags)
            .arg("--")
            .args(argv);
        cmd.stdin(Stdio::null()).output().unwrap()
    }

    /// Runs one probe and returns the errno it printed.
    fn probe(&self, flags: &[&str], name: &str) -> i32 {
        let out = self.run(flags, &["python3", "/workspace/probe.py", name]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let prefix = format!("{name} errno=");
        let line = stdout
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| {
                panic!(
                    "probe {name} printed nothing; status {:?}\nstdout: {stdout}\nstderr: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                )
            });
        line.trim().parse().unwrap()
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

const EPERM: i32 = libc::EPERM;

#[test]
fn reading_host_secrets_is_denied() {
    let Some(s) = Scene::live() else { return };
    let out = s.run(
        &[],
        &[
            "sh",
            "-c",
            "cat /etc/shadow; ls /root; ls /home; cat /etc/passwd",
        ],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("/etc/shadow") && err.contains("No such file"),
        "{err}"
    );
    assert!(err.contains("/root") && err.contains("/home"), "{err}");
    assert!(
        !stdout(&out).contains("daemon:"),
        "host accounts leaked: {}",
        stdout(&out)
    );
}

#[test]
fn writing_outside_workspace_and_tmp_is_denied() {
    let Some(s) = Scene::live() else { return };
    let script = "for p in /usr/evil /etc/evil /evil /bin/evil /proc/sys/kernel/hostname; do \
                  if echo x > $p 2>/dev/null; then echo WROTE $p; else echo DENIED $p; fi; done; \
                  echo ok > /tmp/t && echo ok > /workspace/w && echo WRITABLE";
    let out = s.run(&[], &["sh", "-c", script]);
    let text = stdout(&out);
    assert!(!text.contains("WROTE"), "{text}");
    assert_eq!(text.matches("DENIED").count(), 5, "{text}");
    assert!(text.contains("WRITABLE"), "{text}{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(s.workspace.join("w")).unwrap(),
        "ok\n"
    );
}

#[test]
fn workspace_files_belong_to_its_owner_on_the_host() {
    let Some(s) = Scene::live() else { return };
    std::os::unix::fs::chown(&s.workspace, Some(1234), Some(2345)).unwrap();
    let out = s.run(
        &[],
        &[
            "sh",
            "-c",
            "stat -c '%u:%g' /workspace; id -u; echo hi > /workspace/made",
        ],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "0:0\n0\n",
        "the workspace appears owned by the sandbox's user"
    );
    let meta = std::fs::metadata(s.workspace.join("made")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (1234, 2345));
}

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
    let out = s.run(&[], &["sh", "-c", "ls /proc | grep -c '^[0-9]'"]);
    let count: u32 = stdout(&out).trim().parse().unwrap();
    assert!(count <= 4, "sandbox sees {count} processes");
    assert_eq!(
        s.probe(&[], &format!("kill_host_pid:{me}")),
        libc::ESRCH,
        "signal reached host pid"
    );
}

#[test]
fn network_is_unreachable_under_net_none() {
    let Some(s) = Scene::live() else { return };
    assert_ne!(s.probe(&["--net", "none"], "connect:1.1.1.1:53"), 0);
    assert_ne!(s.probe(&["--net", "none"], "connect:127.0.0.1:22"), 0);
    assert_ne!(
        s.probe(&["--net", "none"], "loopback_echo"),
        0,
        "loopback works under net none"
    );
    assert_eq!(
        s.probe(&["--net", "loopback"], "loopback_echo"),
        0,
        "loopback broken under net loopback"
    );
    assert_ne!(s.probe(&["--net", "loopback"], "connect:1.1.1.1:53"), 0);
}

#[test]
fn dangerous_syscalls_are_denied_with_eperm() {
    let Some(s) = Scene::live() else { return };
    for name in [
        "ptrace",
        "process_vm_readv",
        "bpf",
        "io_uring_setup",
        "keyctl",
        "add_key",
        "unshare_user",
        "unshare_mount",
        "clone_newuser",
        "mount",
        "open_tree",
        "fsopen",
        "perf_event_open",
        "userfaultfd",
        "kexec_load",
        "init_module",
        "personality",
        "tiocsti",
        "tiocsti_high_bits",
    ] {
        assert_eq!(
            s.probe(&[], name),
            EPERM,
            "{name} was not denied with EPERM"
        );
    }
    assert_eq!(
        s.probe(&[], "clone3"),
        libc::ENOSYS,
        "clone3 must look unimplemented"
    );
}

#[test]
fn sockets_of_families_past_the_network_namespace_are_refused() {
    let Some(s) = Scene::live() else { return };
    const EAFNOSUPPORT: i32 = libc::EAFNOSUPPORT;
    // AF_VSOCK reaches the VM's vsock port space even under net:none.
    for name in [
        "socket:40:1",      // AF_VSOCK
        "socket_high:40:1", // AF_VSOCK with the high half set
        "socket:17:3",      // AF_PACKET
        "socket:15:3",      // AF_KEY
        "socket:38:5",      // AF_ALG
        "socket:31:1",      // AF_BLUETOOTH
        "socket:29:3",      // AF_CAN
        "socket:44:3",      // AF_XDP
        "socketpair:2:1",   // an AF_INET pair
        "socketpair:40:1",
    ] {
        assert_eq!(
            s.probe(&["--net", "none"], name),
            EAFNOSUPPORT,
            "{name} was not refused"
        );
    }
    for name in ["socket:1:1", "socket:2:1", "socket:16:3", "socketpair:1:1"] {
        assert_eq!(s.probe(&["--net", "none"], name), 0, "{name} must work");
    }
}

/// A pseudo-terminal pair: (controller, terminal).
fn open_pty() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    use std::os::fd::FromRawFd;
    let (mut controller, mut terminal) = (-1, -1);
    // SAFETY: openpty writes two descriptors; the name, settings and size are optional.
    let rc = unsafe {
        libc::openpty(
            &mut controller,
            &mut terminal,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors are new and owned here.
    unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(controller),
            std::os::fd::OwnedFd::from_raw_fd(terminal),
        )
    }
}

/// What a terminal's settings are: modes, line discipline and size.
fn terminal_state(fd: &std::os::fd::OwnedFd) -> (String, i32, (u16, u16)) {
    use std::os::fd::AsRawFd;
    // SAFETY: reads into zeroed structures of the kernel's layout from an open terminal.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        assert_eq!(
            libc::tcgetattr(fd.as_raw_fd(), &mut t),
            0,
            "tcgetattr: {}",
            std::io::Error::last_os_error()
        );
        let mut ldisc: libc::c_int = -1;
        assert_eq!(libc::ioctl(fd.as_raw_fd(), libc::TIOCGETD, &mut ldisc), 0);
        let mut size: libc::winsize = std::mem::zeroed();
        assert_eq!(libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut size), 0);
        let modes = format!(
            "{:x} {:x} {:x} {:x} {:?}",
            t.c_iflag, t.c_oflag, t.c_cflag, t.c_lflag, t.c_cc
        );
        (modes, ldisc, (size.ws_row, size.ws_col))
    }
}

#[test]
fn the_callers_terminal_keeps_its_settings_after_a_hostile_run() {
    let Some(s) = Scene::live() else { return };
    // runc and crun build their filters with libseccomp, which reads the ioctl rules its
    // own way: the terminal must hold under every runner that shares it.
    for (runner, extra) in [
        ("native", &[][..]),
        ("oci:/usr/sbin/runc", &["--accept-degradation", "idmap"][..]),
        ("oci:/usr/bin/crun", &["--accept-degradation", "idmap"][..]),
    ] {
        hostile_run_on_a_pty(&s, runner, extra, EPERM);
    }
    // Under gVisor the caller's terminal is not a terminal inside at all: every terminal
    // call answers ENOTTY from the sentry, and nothing reaches the host's.
    if Path::new("/usr/bin/runsc").exists() || Path::new("/usr/sbin/runsc").exists() {
        hostile_run_on_a_pty(&s, "gvisor", &[], libc::ENOTTY);
    } else {
        cannot_run("runsc is not installed (apt-get install runsc)");
    }
}

/// Runs the terminal probes on a fresh pty under `runner`; each must fail with `denied`
/// (tcdrain too, unless `denied` is EPERM: seccomp lets it through), and the terminal's
/// settings must be as they were.
fn hostile_run_on_a_pty(s: &Scene, runner: &str, extra: &[&str], denied: i32) {
    let (controller, terminal) = open_pty();
    let before = terminal_state(&terminal);
    let probe = s.workspace.join("probe.py");
    let script = format!(
        "for p in tcsetattr tiocsetd tiocswinsz tiocsti tiocssoftcar tcflsh tcsbrk tcdrain; do python3 {} $p; done; \
                  stty raw -echo; echo stty=$?",
        probe.display()
    );
    let mut cmd = s.ctl();
    // Read-only, so that gVisor (no writable host paths) runs it too.
    cmd.arg("run")
        .arg("--read")
        .arg(&s.workspace)
        .args(["--runner", runner])
        .args(extra)
        .args(["--", "sh", "-c", &script]);
    cmd.stdin(Stdio::from(terminal.try_clone().unwrap()))
        .stdout(Stdio::from(terminal.try_clone().unwrap()))
        .stderr(Stdio::from(terminal.try_clone().unwrap()));
    let status = cmd.status().unwrap();
    // SAFETY: the controller is an open descriptor owned by this test.
    unsafe {
        use std::os::fd::AsRawFd;
        libc::fcntl(controller.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK);
    }
    let mut out = Vec::new();
    // Read through a duplicate: closing the controller would hang the terminal up.
    let mut reader = std::fs::File::from(controller.try_clone().unwrap());
    let _ = std::io::Read::read_to_end(&mut reader, &mut out);
    let out = String::from_utf8_lossy(&out).replace('\r', "");
    assert_eq!(status.code(), Some(0), "{runner}: {status:?}: {out}");
    for probe in [
        "tcsetattr",
        "tiocsetd",
        "tiocswinsz",
        "tiocsti",
        "tiocssoftcar",
        "tcflsh",
        "tcsbrk",
    ] {
        assert!(
            out.contains(&format!("{probe} errno={denied}\n")),
            "{runner}: {probe} was not denied: {out}"
        );
    }
    // Waiting for output to drain changes nothing, and programs use it.
    let drained = if denied == EPERM { 0 } else { denied };
    assert!(
        out.contains(&format!("tcdrain errno={drained}\n")),
        "{runner}: tcdrain: {out}"
    );
    assert!(out.contains("stty=1"), "{runner}: stty must fail: {out}");
    assert_eq!(
        terminal_state(&terminal),
        before,
        "{runner}: the run changed the caller's terminal"
    );
    drop(controller);
}

#[test]
fn mount_and_unshare_commands_fail() {
    let Some(s) = Scene::live() else { return };
    let out = s.run(
        &[],
        &[
            "sh",
            "-c",
            "mount -t tmpfs none /tmp && echo MOUNTED; unshare -U true && echo UNSHARED; true",
        ],
    );
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
fn fork_bomb_stops_at_the_pids_limit() {
    let Some(s) = Scene::live() else { return };
    let report = s.home.path().join("report.json");
    let out = s.run(
        &["--pids", "32", "--report", report.to_str().unwrap()],
        &["python3", "/workspace/probe.py", "fork_bomb"],
    );
    let text = stdout(&out);
    assert!(
        text.contains(&format!("fork_bomb errno={}", libc::EAGAIN)),
        "{text}{}",
        stderr(&out)
    );
    let forked: u32 = text
        .lines()
        .find_map(|l| l.strip_prefix("forked="))
        .unwrap()
        .parse()
        .unwrap();
    assert!(forked < 32, "forked {forked} processes past a limit of 32");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report).unwrap()).unwrap();
    assert!(report["pids_limit_hits"].as_u64().unwrap() > 0, "{report}");
}

#[test]
fn memory_limit_kills_and_is_reported() {
    let Some(s) = Scene::live() else { return };
    let report = s.home.path().join("report.json");
    let out = s.run(
        &["--memory", "48MiB", "--report", report.to_str().unwrap()],
        &[
            "python3",
            "-c",
            "x = bytearray(400 * 1024 * 1024); print('ALLOCATED')",
        ],
    );
    assert_eq!(code(&out), 137, "{}", stderr(&out));
    assert!(!stdout(&out).contains("ALLOCATED"));
    assert!(
        stderr(&out).contains("memory limit (48MiB)"),
        "{}",
        stderr(&out)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report).unwrap()).unwrap();
    assert_eq!(report["oom_killed"], true);
    assert!(report["peak_memory_bytes"].as_u64().unwrap() <= 48 << 20);
}

#[test]
fn timeout_kills_double_forked_children() {
    let Some(s) = Scene::live() else { return };
    let marker = marker(1);
    let script = format!("(setsid sh -c 'exec sleep {marker}' &) ; (sh -c 'exec sleep {marker}' &) ; exec sleep {marker}");
    let started = Instant::now();
    let out = s.run(&["--timeout", "1s"], &["sh", "-c", &script]);
    assert_eq!(code(&out), 124, "{}", stderr(&out));
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(stderr(&out).contains("timeout"), "{}", stderr(&out));
    assert!(!still_running(&marker), "processes outlived the sandbox");
}

#[test]
fn orphans_die_when_the_program_exits() {
    let Some(s) = Scene::live() else { return };
    let marker = marker(2);
    let out = s.run(
        &[],
        &[
            "sh",
            "-c",
            &format!("(setsid sh -c 'exec sleep {marker}' &); exit 3"),
        ],
    );
    assert_eq!(code(&out), 3);
    assert!(
        !still_running(&marker),
        "a background process outlived the sandbox"
    );
}

#[test]
fn exit_codes_and_signals_propagate() {
    let Some(s) = Scene::live() else { return };
    assert_eq!(code(&s.run(&[], &["sh", "-c", "exit 42"])), 42);
    assert_eq!(code(&s.run(&[], &["true"])), 0);
    assert_eq!(code(&s.run(&[], &["sh", "-c", "kill -TERM $$"])), 128 + 15);
    assert_eq!(code(&s.run(&[], &["sh", "-c", "kill -KILL $$"])), 128 + 9);
    let missing = s.run(&[], &["no-such-program"]);
    assert_eq!(code(&missing), 125);
    assert!(
        stderr(&missing).contains("no-such-program"),
        "{}",
        stderr(&missing)
    );
}

#[test]
fn sigterm_to_the_cli_reaches_the_program() {
    let Some(s) = Scene::live() else { return };
    let mut cmd = s.ctl();
    cmd.args([
        "run",
        "--",
        "sh",
        "-c",
        "trap 'echo GOT-TERM; exit 3' TERM; echo READY; while :; do sleep 0.1; done",
    ]);
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert_eq!(line, "READY\n");
    // SAFETY: kill(2) on a child this test started and has not reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert_eq!(rest, "GOT-TERM\n");
    assert_eq!(status.code(), Some(3));
    let tail_out = s
        .ctl()
        .args(["audit", "tail", "-n", "20"])
        .output()
        .unwrap();
    let tail = String::from_utf8_lossy(&tail_out.stdout);
    assert!(
        tail.contains("sandbox.signalled") && tail.contains("\"signal\":15"),
        "the forwarded signal is audited:\n{tail}"
    );
}

#[test]
fn stdin_and_stdout_are_streamed() {
    let Some(s) = Scene::live() else { return };
    let mut cmd = s.ctl();
    cmd.args(["run", "--", "sh", "-c", "read line; echo got:$line; cat"]);
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"first\nsecond\n").unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "got:first\nsecond\n");
}

#[test]
fn bad_requests_are_refused_with_125_naming_the_field() {
    let Some(s) = Scene::live() else { return };
    let out = s.run(&["--memory", "lots"], &["true"]);
    assert_eq!(code(&out), 125);
    assert!(stderr(&out).contains("limits.memory"), "{}", stderr(&out));
    let manifest = s.home.path().join("bad.toml");
    std::fs::write(
        &manifest,
        "version = 1\ncommand = [\"true\"]\n[limits]\nmemroy = \"1G\"\n",
    )
    .unwrap();
    let out = s.ctl().arg("run").arg(&manifest).output().unwrap();
    assert_eq!(code(&out), 125);
    assert!(stderr(&out).contains("memroy"), "{}", stderr(&out));
    let out = s.run(&["--rlimit-nonsense"], &["true"]);
    assert_ne!(code(&out), 0);
}

#[test]
fn a_manifest_runs_and_flags_override_it() {
    let Some(s) = Scene::live() else { return };
    let manifest = s.home.path().join("covenant.toml");
    std::fs::write(
        &manifest,
        format!(
            "version = 1\ncommand = [\"sh\", \"-c\", \"echo $GREETING; hostname\"]\nworkspace = \"{}\"\nhostname = \"agent\"\n[env]\nGREETING = \"from-manifest\"\n",
            s.workspace.display()
        ),
    )
    .unwrap();
    let out = s.ctl().arg("run").arg(&manifest).output().unwrap();
    assert_eq!(stdout(&out), "from-manifest\nagent\n", "{}", stderr(&out));
    let out = s
        .ctl()
        .arg("run")
        .arg(&manifest)
        .args(["--env", "GREETING=from-flag"])
        .output()
        .unwrap();
    assert_eq!(stdout(&out), "from-flag\nagent\n");
}

/// Mounts on the host whose mount point lies in `under` (tests run in parallel, and other
/// tests' runtimes mount things of their own).
fn mounts_under(under: &Path) -> usize {
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

fn covenant_cgroups() -> Vec<PathBuf> {
    let mut found = Vec::new();
    for h in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        if let Ok(entries) = std::fs::read_dir(h.path().join("covenant")) {
            found.extend(
                entries
                    .flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.path()),
            );
        }
    }
    found
}

/// A `sleep` duration no other process on the host uses: a test's processes are found by
/// it (`pgrep -f 'sleep MARKER'`), since `sh` here (dash) cannot rename a process.
fn marker(n: u32) -> String {
    format!("{}.{:06}", 1000 + n, std::process::id() % 1_000_000)
}

/// Whether a process of this test (by its marker) is still running on the host.
fn still_running(marker: &str) -> bool {
    let out = Command::new("pgrep")
        .arg("-f")
        .arg(format!("^sleep {marker}$"))
        .output()
        .unwrap();
    !out.stdout.is_empty()
}

/// No bundle directory of the scene and no cgroup of these jobs is left.
fn assert_jobs_left_nothing(s: &Scene, jobs: &[String]) {
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

#[test]
fn a_hundred_runs_leave_nothing_behind() {
    let Some(s) = Scene::live() else { return };
    let mounts_before = mounts_under(s.home.path());
    let marker = marker(3);
    let report = s.home.path().join("report.json");
    let mut job_ids = Vec::new();
    for i in 0..100 {
        let out = s.run(
            &[
                "--memory",
                "64MiB",
                "--pids",
                "16",
                "--timeout",
                "20s",
                "--report",
                report.to_str().unwrap(),
            ],
            &[
                "sh",
                "-c",
                &format!("(exec sleep {marker} &); echo {i} > /tmp/x; cat /tmp/x"),
            ],
        );
        assert_eq!(stdout(&out), format!("{i}\n"), "{}", stderr(&out));
        let r: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
        job_ids.push(r["job_id"].as_str().unwrap().to_string());
    }
    assert_eq!(mounts_under(s.home.path()), mounts_before, "mounts leaked");
    assert_eq!(mounts_before, 0);
    assert_jobs_left_nothing(&s, &job_ids);
    assert!(!still_running(&marker), "processes leaked");
}

#[test]
fn the_example_manifest_runs_from_a_relative_path() {
    let Some(s) = Scene::live() else { return };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let out = s
        .ctl()
        .current_dir(root)
        .args(["run", "examples/hello/covenant.toml"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("hello from hello\n"),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains("covenant.toml"),
        "the workspace is the manifest's folder"
    );
}

#[test]
fn doctor_finds_every_required_feature() {
    let Some(s) = Scene::live() else { return };
    let out = s.ctl().arg("doctor").output().unwrap();
    let text = stdout(&out);
    assert_eq!(code(&out), 0, "{text}");
    for feature in [
        "user namespace",
        "pid namespace",
        "cgroup namespace",
        "seccomp filters",
        "landlock",
        "cgroups",
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with("ok") && l.contains(feature)),
            "{feature} not ok:\n{text}"
        );
    }
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

#[test]
fn cpu_use_is_held_to_the_cpus_limit() {
    let Some(s) = Scene::live() else { return };
    let report = s.home.path().join("report.json");
    let out = s.run(
        &["--cpus", "0.2", "--report", report.to_str().unwrap()],
        &["sh", "-c", "timeout 2 sh -c 'while :; do :; done'; true"],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(report).unwrap()).unwrap();
    let cpu_ms = report["cpu_time_ms"].as_f64().unwrap();
    let wall_ms = report["duration_ms"].as_f64().unwrap();
    assert!(wall_ms >= 1900.0, "{report}");
    assert!(
        cpu_ms < 0.35 * wall_ms,
        "a 0.2 CPU limit let the program use {cpu_ms} ms in {wall_ms} ms"
    );
}

#[test]
fn keep_bundle_leaves_a_bundle_another_runtime_can_read() {
    let Some(s) = Scene::live() else { return };
    let dir = s.home.path().join("kept");
    let out = s.run(&["--keep-bundle", dir.to_str().unwrap()], &["true"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["process"]["args"][0], "true");
    assert_eq!(config["process"]["noNewPrivileges"], true);
    assert!(config["annotations"]["org.opencovenant.landlock"].is_string());
    assert!(dir.join("rootfs/usr").is_dir());
    let plan = s
        .ctl()
        .args(["plan", "--memory", "1GiB", "--", "true"])
        .output()
        .unwrap();
    let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    assert_eq!(plan["plan"]["limits"]["memory_bytes"], 1u64 << 30);
    assert_eq!(
        plan["config"]["linux"]["resources"]["memory"]["limit"],
        1u64 << 30
    );
}

/// An issuer key trusted by the scene's store, an agent key, and helpers to grant.
struct Authority<'a> {
    scene: &'a Scene,
    issuer: PathBuf,
    agent: PathBuf,
}

impl<'a> Authority<'a> {
    fn new(scene: &'a Scene) -> Self {
        let issuer = scene.home.path().join("issuer.key");
        let agent = scene.home.path().join("agent.key");
        for key in [&issuer, &agent] {
            let out = scene
                .ctl()
                .args(["key", "gen", "--out"])
                .arg(key)
                .output()
                .unwrap();
            assert_eq!(code(&out), 0, "{}", stderr(&out));
        }
        let out = scene
            .ctl()
            .args(["key", "trust", "--name", "ci"])
            .arg(&issuer)
            .output()
            .unwrap();
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        Authority {
            scene,
            issuer,
            agent,
        }
    }

    fn agent_subject(&self) -> String {
        let out = self
            .scene
            .ctl()
            .args(["key", "pub"])
            .arg(&self.agent)
            .output()
            .unwrap();
        format!("key:{}", stdout(&out).trim())
    }

    /// Grants `scopes` to the agent key; returns the printed token.
    fn grant(&self, scopes: &[&str], ttl: &str) -> String {
        let mut cmd = self.scene.ctl();
        cmd.args(["cap", "grant", "--key"]).arg(&self.issuer).args([
            "--subject",
            &self.agent_subject(),
            "--ttl",
            ttl,
        ]);
        for s in scopes {
            cmd.args(["--scope", s]);
        }
        let out = cmd.output().unwrap();
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        stdout(&out).trim().to_string()
    }

    fn attenuate(&self, parent: &str, scopes: &[&str]) -> Output {
        let mut cmd = self.scene.ctl();
        cmd.args(["cap", "attenuate", "--from", parent, "--key"])
            .arg(&self.agent)
            .args(["--subject", "worker"]);
        for s in scopes {
            cmd.args(["--scope", s]);
        }
        cmd.output().unwrap()
    }

    fn run(&self, cap: &str, flags: &[&str], argv: &[&str]) -> Output {
        let mut all = vec!["--cap", cap];
        all.extend_from_slice(flags);
        self.scene.run(&all, argv)
    }
}

#[test]
fn each_scope_family_allows_what_it_grants_and_nothing_else() {
    let Some(s) = Scene::live() else { return };
    let a = Authority::new(&s);
    let ws = s.workspace.display().to_string();
    let data = s.home.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("secret"), "granted-read\n").unwrap();
    let data_s = data.display().to_string();
    let cap = a.grant(
        &[
            &format!("fs.write:{ws}"),
            &format!("fs.read:{data_s}"),
            "net:loopback",
            "res.mem:64MiB",
            "res.pids:16",
            "res.time:2s",
        ],
        "10m",
    );

    // write: granted workspace works; another directory is refused before anything runs.
    let out = a.run(
        &cap,
        &[],
        &["sh", "-c", "echo ok > /workspace/w && cat /workspace/w"],
    );
    assert_eq!(stdout(&out), "ok\n", "{}", stderr(&out));
    let elsewhere = s.home.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let out = a.run(&cap, &["--write", elsewhere.to_str().unwrap()], &["true"]);
    assert_eq!(code(&out), 125);
    assert!(
        stderr(&out).contains(&format!("fs.write:{}", elsewhere.display())),
        "{}",
        stderr(&out)
    );

    // read: granted read-only, not writable, not executable; a write request is refused.
    let out = a.run(
        &cap,
        &["--read", &data_s],
        &[
            "sh",
            "-c",
            &format!("cat {data_s}/secret; echo x > {data_s}/secret || echo RO"),
        ],
    );
    assert_eq!(stdout(&out), "granted-read\nRO\n", "{}", stderr(&out));
    let out = a.run(&cap, &["--write", &data_s], &["true"]);
    assert_eq!(code(&out), 125);

    // network: loopback granted, host refused.
    assert_eq!(code(&a.run(&cap, &["--net", "loopback"], &["true"])), 0);
    let out = a.run(&cap, &["--net", "host"], &["true"]);
    assert_eq!(code(&out), 125);
    assert!(stderr(&out).contains("net:host"), "{}", stderr(&out));

    // memory, pids, time: the grant's ceilings hold even when the request names none.
    let out = a.run(
        &cap,
        &[],
        &["python3", "-c", "x = bytearray(300 * 1024 * 1024)"],
    );
    assert_eq!(code(&out), 137, "{}", stderr(&out));
    let out = a.run(&cap, &[], &["python3", "/workspace/probe.py", "fork_bomb"]);
    let forked: u32 = stdout(&out)
        .lines()
        .find_map(|l| l.strip_prefix("forked="))
        .unwrap()
        .parse()
        .unwrap();
    assert!(forked < 16, "forked {forked} under res.pids:16");
    assert_eq!(code(&a.run(&cap, &[], &["sleep", "30"])), 124);
    let out = a.run(
        &cap,
        &["--memory", "1GiB", "--pids", "100", "--timeout", "1h"],
        &["true"],
    );
    assert_eq!(code(&out), 125);
    let err = stderr(&out);
    assert!(
        err.contains("res.mem:1GiB")
            && err.contains("res.pids:100")
            && err.contains("res.time:3600s"),
        "every missing scope is listed: {err}"
    );
}

#[test]
fn attenuated_tokens_narrow_and_revocation_reaches_children() {
    let Some(s) = Scene::live() else { return };
    let a = Authority::new(&s);
    let ws = s.workspace.display().to_string();
    let parent = a.grant(
        &[&format!("fs.write:{ws}"), "res.mem:512MiB", "net:host"],
        "10m",
    );
    let out = a.attenuate(&parent, &[&format!("fs.write:{ws}"), "res.mem:256MiB"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let child = stdout(&out).trim().to_string();
    assert_eq!(code(&a.run(&child, &[], &["true"])), 0);
    assert_eq!(
        code(&a.run(&child, &["--net", "host"], &["true"])),
        125,
        "the child dropped net:host"
    );

    let wider = a.attenuate(&parent, &[&format!("fs.write:{ws}"), "res.mem:1GiB"]);
    assert_ne!(code(&wider), 0);
    assert!(
        stderr(&wider).contains("res.mem:1GiB"),
        "{}",
        stderr(&wider)
    );
    let dropped = a.attenuate(&parent, &[&format!("fs.write:{ws}")]);
    assert!(
        stderr(&dropped).contains("drops the parent's ceiling"),
        "{}",
        stderr(&dropped)
    );

    let inspect = s.ctl().args(["cap", "inspect", &child]).output().unwrap();
    let text = stdout(&inspect);
    assert!(
        text.contains("link 0 (root)")
            && text.contains("link 1")
            && text.contains("valid on this host"),
        "{text}"
    );
    let root_id = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("id"))
        .unwrap()
        .trim()
        .to_string();
    let out = s.ctl().args(["cap", "revoke", &root_id]).output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = a.run(&child, &[], &["true"]);
    assert_eq!(code(&out), 125);
    assert!(
        stderr(&out).contains("link 0") && stderr(&out).contains("revoked"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        code(&s.ctl().args(["cap", "verify", &child]).output().unwrap()),
        1
    );
}

#[test]
fn untrusted_forged_and_garbage_capabilities_are_refused() {
    let Some(s) = Scene::live() else { return };
    let a = Authority::new(&s);
    let ws = s.workspace.display().to_string();
    let cap = a.grant(&[&format!("fs.write:{ws}")], "10m");
    let out = s.ctl().args(["key", "untrust", "ci"]).output().unwrap();
    assert_eq!(code(&out), 0);
    let out = a.run(&cap, &[], &["true"]);
    assert_eq!(code(&out), 125);
    assert!(
        stderr(&out).contains("not a trusted key"),
        "{}",
        stderr(&out)
    );
    let out = s
        .ctl()
        .args(["key", "trust", "--name", "ci"])
        .arg(&a.issuer)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0);
    let mut forged = cap.clone().into_bytes();
    let i = forged.len() - 10;
    forged[i] = if forged[i] == b'A' { b'B' } else { b'A' };
    let out = a.run(&String::from_utf8(forged).unwrap(), &[], &["true"]);
    assert_eq!(code(&out), 125);
    assert!(stderr(&out).contains("signature"), "{}", stderr(&out));
    let out = a.run("cov1.garbage", &[], &["true"]);
    assert_eq!(code(&out), 125);
    assert!(stderr(&out).contains("capability"), "{}", stderr(&out));
}

#[test]
fn git_commit_works_inside_but_hooks_and_config_cannot_be_planted() {
    let Some(s) = Scene::live() else { return };
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(&s.workspace)
            .args(args)
            .output()
            .unwrap()
    };
    assert_eq!(code(&git(&["init", "-q"])), 0);
    let out = s.run(
        &[],
        &["sh", "-c", "cd /workspace && echo a > a && git add a && git -c user.email=a@b -c user.name=a commit -qm inside && echo COMMITTED; \
           echo 'echo pwned' > .git/hooks/pre-commit && echo HOOK-PLANTED; \
           git config core.hooksPath /workspace/h && echo CONFIG-CHANGED; \
           mv .git .git-old && echo GIT-MOVED; rm -rf .git/hooks && echo HOOKS-REMOVED; true"],
    );
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
    let log = git(&["log", "--format=%s"]);
    assert_eq!(stdout(&log), "inside\n");
}

#[test]
fn no_git_route_plants_code_for_the_owners_next_git_command() {
    let Some(s) = Scene::live() else { return };
    let ws = &s.workspace;
    let host_git = |dir: &Path, args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.email=o@h", "-c", "user.name=owner"])
            .args(["-c", "protocol.file.allow=always"])
            .args(args)
            .env_remove("GIT_DIR")
            .output()
            .unwrap()
    };
    let lib = s.home.path().join("lib");
    std::fs::create_dir(&lib).unwrap();
    for (dir, args) in [
        (lib.as_path(), &["init", "-q"][..]),
        (
            lib.as_path(),
            &["commit", "-q", "--allow-empty", "-m", "lib"][..],
        ),
        (ws.as_path(), &["init", "-q"][..]),
        (
            ws.as_path(),
            &[
                "submodule",
                "add",
                "-q",
                lib.to_str().unwrap(),
                "vendor/lib",
            ][..],
        ),
        (
            ws.as_path(),
            &["commit", "-q", "-m", "with a submodule"][..],
        ),
    ] {
        let out = host_git(dir, args);
        assert_eq!(code(&out), 0, "git {args:?}: {}", stderr(&out));
    }
    std::fs::create_dir(ws.join("nested")).unwrap();
    assert_eq!(code(&host_git(&ws.join("nested"), &["init", "-q"])), 0);
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
        let out = host_git(&dir, &["status", "--porcelain"]);
        assert_eq!(code(&out), 0, "{}: {}", dir.display(), stderr(&out));
        let _ = host_git(&dir, &["st"]);
    }
    assert!(!mark.exists(), "the host ran code the sandbox planted");
    assert_eq!(
        stdout(&host_git(ws, &["log", "-1", "--format=%s"])),
        "inside\n"
    );
    // The repository made during the run is not protected, but it is named.
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
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

#[test]
fn a_kept_layer_planted_with_symlinks_neither_chowns_nor_redirects_the_root() {
    let Some(s) = Scene::live() else { return };
    let base = s.home.path();
    // The victim stands in for /etc: root's, and the kept layer's owner plants links to it.
    let victim = base.join("victim");
    std::fs::create_dir(&victim).unwrap();
    std::fs::write(victim.join("passwd"), "precious").unwrap();
    let keep = base.join("keep");
    std::fs::create_dir(&keep).unwrap();
    std::os::unix::fs::symlink(&victim, keep.join("upper")).unwrap();
    std::os::unix::fs::symlink(&victim, keep.join("work")).unwrap();
    std::os::unix::fs::lchown(keep.join("upper"), Some(65534), Some(65534)).unwrap();
    std::os::unix::fs::chown(&keep, Some(65534), Some(65534)).unwrap();
    // A directory root owned by the sandbox's id range, as an imported image's is.
    let root = base.join("root");
    for d in ["etc", "proc", "dev", "sys", "tmp", "usr", "run"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    for (link, to) in [
        ("bin", "usr/bin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
    ] {
        std::os::unix::fs::symlink(to, root.join(link)).unwrap();
    }
    let chown = Command::new("chown")
        .args(["-R", "-h", "100000:100000"])
        .arg(&root)
        .status()
        .unwrap();
    assert!(chown.success());
    let request = |cmd: &str| {
        let mut c = s.ctl();
        c.arg(cmd)
            .arg("--rootfs")
            .arg(format!("dir:{}", root.display()))
            .args(["--exec", "/usr", "--keep-changes"])
            .arg(&keep)
            .args(["--", "/bin/sh", "-c", "echo pwned > /passwd"]);
        c.stdin(Stdio::null()).output().unwrap()
    };
    use std::os::unix::fs::MetadataExt;
    let plan = request("plan");
    assert_eq!(code(&plan), 0, "{}", stderr(&plan));
    let run = request("run");
    assert_eq!(code(&run), 125, "{}", stderr(&run));
    assert!(stderr(&run).contains("symlink"), "{}", stderr(&run));
    let md = std::fs::metadata(&victim).unwrap();
    assert_eq!((md.uid(), md.gid()), (0, 0), "the victim was given away");
    assert_eq!(
        std::fs::read_to_string(victim.join("passwd")).unwrap(),
        "precious"
    );
    // With the links gone, the layer is prepared for the sandbox's root by descriptor.
    std::fs::remove_file(keep.join("upper")).unwrap();
    std::fs::remove_file(keep.join("work")).unwrap();
    let run = request("run");
    assert_eq!(code(&run), 0, "{}", stderr(&run));
    assert_eq!(
        std::fs::read_to_string(keep.join("upper/passwd")).unwrap(),
        "pwned\n"
    );
    assert_eq!(std::fs::metadata(keep.join("upper")).unwrap().uid(), 100000);
}

#[test]
fn a_kept_bundles_paths_are_checked_again_when_it_runs() {
    let Some(s) = Scene::live() else { return };
    let base = s.home.path();
    let secret = base.join("secret");
    std::fs::create_dir(&secret).unwrap();
    std::fs::write(secret.join("key"), "root's").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o700)).unwrap();
    let shared = base.join("shared");
    std::fs::create_dir(&shared).unwrap();
    for (i, swap) in ["symlink", "directory"].into_iter().enumerate() {
        let bundle = base.join(format!("bundle-{i}"));
        let out = s
            .ctl()
            .arg("bundle")
            .arg("--read")
            .arg(&shared)
            .arg("--out")
            .arg(&bundle)
            .args(["--", "cat", &format!("{}/key", shared.display())])
            .output()
            .unwrap();
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let old = base.join(format!("shared-{i}"));
        std::fs::rename(&shared, &old).unwrap();
        match swap {
            "symlink" => std::os::unix::fs::symlink(&secret, &shared).unwrap(),
            _ => {
                std::fs::create_dir(&shared).unwrap();
                std::fs::write(shared.join("key"), "another's").unwrap();
            }
        }
        let out = s
            .ctl()
            .args(["run", "--bundle"])
            .arg(&bundle)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(code(&out), 125, "{swap}: {}{}", stdout(&out), stderr(&out));
        let expected = if swap == "symlink" {
            "symlink"
        } else {
            "replaced"
        };
        assert!(stderr(&out).contains(expected), "{swap}: {}", stderr(&out));
        assert!(!stdout(&out).contains("root's") && !stdout(&out).contains("another's"));
        std::fs::remove_file(&shared)
            .or_else(|_| std::fs::remove_dir_all(&shared))
            .unwrap();
        std::fs::rename(&old, &shared).unwrap();
    }
}

#[test]
fn connect_ports_exec_paths_and_syscall_groups_are_enforced() {
    let Some(s) = Scene::live() else { return };
    let allowed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let denied = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (pa, pd) = (
        allowed.local_addr().unwrap().port(),
        denied.local_addr().unwrap().port(),
    );
    let flags = ["--net", "host", "--connect", &pa.to_string()];
    assert_eq!(
        s.probe(&flags, &format!("connect:127.0.0.1:{pa}")),
        0,
        "the granted port is reachable"
    );
    assert_eq!(
        s.probe(&flags, &format!("connect:127.0.0.1:{pd}")),
        libc::EACCES,
        "landlock stops other ports"
    );

    let tools = s.home.path().join("tools");
    std::fs::create_dir(&tools).unwrap();
    std::fs::copy("/usr/bin/true", tools.join("tool")).unwrap();
    let t = tools.to_str().unwrap();
    let tool = format!("{t}/tool");
    assert_eq!(
        code(&s.run(&["--exec", t], &[&tool])),
        0,
        "an fs.exec path runs"
    );
    let out = s.run(
        &["--read", t],
        &[
            "sh",
            "-c",
            &format!("{tool} && echo RAN; cat {tool} > /dev/null && echo READ"),
        ],
    );
    assert_eq!(
        stdout(&out),
        "READ\n",
        "an fs.read path is not executable: {}",
        stderr(&out)
    );

    assert_eq!(s.probe(&[], "ptrace"), EPERM);
    assert_eq!(
        s.probe(&["--syscalls", "ptrace"], "ptrace"),
        0,
        "sys:ptrace opens ptrace"
    );
    assert_eq!(
        s.probe(&["--syscalls", "ptrace"], "bpf"),
        EPERM,
        "and nothing else"
    );
}

#[test]
fn every_run_leaves_a_verifiable_audit_trail() {
    let Some(s) = Scene::live() else { return };
    let report = s.home.path().join("report.json");
    let out = s.run(
        &["--timeout", "1s", "--report", report.to_str().unwrap()],
        &["sleep", "10"],
    );
    assert_eq!(code(&out), 124);
    let job = serde_json::from_slice::<serde_json::Value>(&std::fs::read(&report).unwrap())
        .unwrap()["job_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(code(&s.run(&["--memory", "lots"], &["true"])), 125);
    let tail = s
        .ctl()
        .args(["audit", "tail", "-n", "100"])
        .output()
        .unwrap();
    let text = stdout(&tail);
    for kind in [
        "run.intent",
        "capability.verified",
        "plan.compiled",
        "bundle.written",
        "sandbox.started",
        "limit.hit",
        "sandbox.killed",
        "run.exited",
        "request.invalid",
        "store.closed",
    ] {
        assert!(text.contains(kind), "{kind} missing:\n{text}");
    }
    assert!(
        text.lines().filter(|l| l.contains(&job)).count() >= 7,
        "{text}"
    );
    let verify = s.ctl().args(["audit", "verify"]).output().unwrap();
    assert_eq!(code(&verify), 0, "{}", stdout(&verify));
    let db = s.home.path().join("home/covenant.db");
    let status = Command::new("python3")
        .arg("-c")
        .arg("import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute('DROP TRIGGER audit_no_update'); c.execute(\"UPDATE audit SET body=replace(body,'sleep','true') WHERE kind='run.intent'\"); c.commit()")
        .arg(&db)
        .status()
        .unwrap();
    assert!(status.success());
    let verify = s.ctl().args(["audit", "verify"]).output().unwrap();
    assert_eq!(code(&verify), 1);
    assert!(
        stdout(&verify).contains("TAMPERED: row 2: Modified"),
        "{}",
        stdout(&verify)
    );
}

#[test]
fn memory_commands_round_trip_and_refuse_bad_input() {
    let Some(s) = Scene::live() else { return };
    let put = s
        .ctl()
        .args([
            "mem",
            "put",
            "--ns",
            "proj",
            "--tier",
            "long-term",
            "--meta",
            "{\"by\":\"test\"}",
            "cargo needs libssl-dev",
        ])
        .output()
        .unwrap();
    assert_eq!(code(&put), 0, "{}", stderr(&put));
    let id = stdout(&put).trim().to_string();
    let found = s
        .ctl()
        .args(["mem", "search", "--ns", "proj", "libssl"])
        .output()
        .unwrap();
    assert!(stdout(&found).starts_with(&id), "{}", stdout(&found));
    let bad = s
        .ctl()
        .args(["mem", "put", "--ns", "proj", "--tier", "forever", "x"])
        .output()
        .unwrap();
    assert_eq!(code(&bad), 125);
    assert!(stderr(&bad).contains("tier `forever`"), "{}", stderr(&bad));
    let bad = s
        .ctl()
        .args(["mem", "put", "--ns", "proj", "--meta", "{oops", "x"])
        .output()
        .unwrap();
    assert!(
        stderr(&bad).contains("metadata is not valid JSON"),
        "{}",
        stderr(&bad)
    );
    assert_eq!(code(&s.ctl().args(["mem", "rm", &id]).output().unwrap()), 0);
    assert_eq!(
        code(&s.ctl().args(["audit", "verify"]).output().unwrap()),
        0
    );
}

/// `oci:PATH` for a runtime on PATH; a missing runtime fails the test when live tests are
/// required (CI installs runc, crun and runsc), and skips it otherwise.
fn runtime(name: &str) -> Option<String> {
    let found = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|c| c.is_file())
    });
    match found {
        Some(path) => Some(path.display().to_string()),
        None => {
            cannot_run(&format!("{name} is not installed"));
            None
        }
    }
}

/// Every runner this host has: native, runc, crun, gVisor.
fn all_runners() -> Vec<String> {
    let mut runners = vec!["native".to_string()];
    for (name, label) in [("runc", None), ("crun", None), ("runsc", Some("gvisor"))] {
        if let Some(path) = runtime(name) {
            runners.push(label.map(str::to_string).unwrap_or(format!("oci:{path}")));
        }
    }
    runners
}

impl Scene {
    /// `covenant-ctl run --runner R --read WS FLAGS -- ARGV`: the workspace read-only,
    /// which every runner can enforce.
    fn run_with(&self, runner: &str, flags: &[&str], argv: &[&str]) -> Output {
        let mut cmd = self.ctl();
        cmd.args(["run", "--runner", runner, "--read"])
            .arg(&self.workspace)
            .args(flags)
            .arg("--")
            .args(argv);
        cmd.stdin(Stdio::null()).output().unwrap()
    }

    fn probe_with(&self, runner: &str, flags: &[&str], name: &str) -> i32 {
        let probe = self.workspace.join("probe.py").display().to_string();
        let out = self.run_with(runner, flags, &["python3", &probe, name]);
        let text = stdout(&out);
        let prefix = format!("{name} errno=");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or_else(|| {
                panic!(
                    "{runner}: probe {name} printed nothing; {:?}\n{text}\n{}",
                    out.status,
                    stderr(&out)
                )
            })
    }
}

#[test]
fn the_same_bundle_runs_alike_under_every_runner() {
    let Some(s) = Scene::live() else { return };
    let dir = s.home.path().join("bundle");
    let out = s
        .ctl()
        .args(["bundle", "--out"])
        .arg(&dir)
        .args([
            "--hostname",
            "same",
            "--",
            "sh",
            "-c",
            "echo hello from $(hostname); id -u; head -1 /etc/passwd; exit 7",
        ])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    for runner in all_runners() {
        let out = s
            .ctl()
            .args(["run", "--runner", &runner, "--bundle"])
            .arg(&dir)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(
            stdout(&out),
            "hello from same\n0\nroot:x:0:0:root:/root:/bin/sh\n",
            "{runner}: {}",
            stderr(&out)
        );
        assert_eq!(code(&out), 7, "{runner}: {}", stderr(&out));
    }
    assert!(
        dir.join("config.json").exists(),
        "a bundle run leaves the bundle in place"
    );
}

/// `covenant-ctl bundle --out DIR` with the scene's workspace, for `argv`.
fn write_bundle(s: &Scene, dir: &Path, argv: &[&str]) {
    let out = s
        .ctl()
        .args(["bundle", "--workspace"])
        .arg(&s.workspace)
        .arg("--out")
        .arg(dir)
        .arg("--")
        .args(argv)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

#[test]
fn an_edited_or_foreign_bundle_is_refused_and_nothing_runs() {
    let Some(s) = Scene::live() else { return };
    let marker = s.workspace.join("marker");
    let argv = ["sh", "-c", "touch /workspace/marker"];
    let run_bundle = |dir: &Path| {
        s.ctl()
            .args(["run", "--bundle"])
            .arg(dir)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    // The bundle as written runs.
    let good = s.home.path().join("good");
    write_bundle(&s, &good, &argv);
    let out = run_bundle(&good);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(marker.exists(), "the untouched bundle did not run");
    std::fs::remove_file(&marker).unwrap();

    type Edit = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "container root mapped to host root",
            Box::new(|d: &Path| {
                edit_json(&d.join("config.json"), |c| {
                    c["linux"]["uidMappings"][0]["hostID"] = 0.into();
                    c["linux"]["gidMappings"][0]["hostID"] = 0.into();
                })
            }),
            "`/linux/gidMappings/0/hostID`",
        ),
        (
            "an extra read-write bind of host /",
            Box::new(|d: &Path| {
                edit_json(&d.join("config.json"), |c| {
                    let mounts = c["mounts"].as_array_mut().unwrap();
                    mounts.push(serde_json::json!({"destination": "/host", "type": "bind",
                        "source": "/", "options": ["rbind", "rw"]}));
                })
            }),
            "`/mounts/",
        ),
        (
            "a widened landlock ruleset",
            Box::new(|d: &Path| {
                edit_json(&d.join("config.json"), |c| {
                    let key = "org.opencovenant.landlock";
                    let mut rules: serde_json::Value =
                        serde_json::from_str(c["annotations"][key].as_str().unwrap()).unwrap();
                    let mut all = rules["fs"][0].clone();
                    all["path"] = "/".into();
                    all["access"] = "read-write".into();
                    rules["fs"].as_array_mut().unwrap().push(all);
                    c["annotations"][key] = rules.to_string().into();
                })
            }),
            "`/annotations/org.opencovenant.landlock`",
        ),
        (
            "an edited plan with its digest rewritten",
            Box::new(|d: &Path| {
                edit_json(&d.join("plan.json"), |p| {
                    p["argv"] =
                        serde_json::json!(["sh", "-c", "touch /workspace/marker; cat /etc/shadow"]);
                });
                let plan = std::fs::read(d.join("plan.json")).unwrap();
                let digest = format!("sha256:{}", sha256_hex(&plan));
                edit_json(&d.join("config.json"), |c| {
                    c["annotations"]["org.opencovenant.plan-digest"] = digest.into();
                });
            }),
            "`/plan_digest` of signature.json",
        ),
        (
            "a bundle signed by a key this home does not trust",
            Box::new(|d: &Path| {
                // Rewritten and signed in another home, then put in place of this one.
                let other = tempfile::tempdir().unwrap();
                let foreign = other.path().join("b");
                let out = Command::new(env!("CARGO_BIN_EXE_covenant-ctl"))
                    .env("COVENANT_HOME", other.path().join("home"))
                    .args(["bundle", "--workspace"])
                    .arg(d.parent().unwrap().join("ws"))
                    .arg("--out")
                    .arg(&foreign)
                    .args(["--", "sh", "-c", "touch /workspace/marker"])
                    .output()
                    .unwrap();
                assert_eq!(code(&out), 0, "{}", stderr(&out));
                std::fs::copy(foreign.join("signature.json"), d.join("signature.json")).unwrap();
            }),
            "is not a key of this home",
        ),
    ];
    for (i, (what, edit, named)) in cases.iter().enumerate() {
        let dir = s.home.path().join(format!("edited-{i}"));
        write_bundle(&s, &dir, &argv);
        edit(&dir);
        let out = run_bundle(&dir);
        assert_eq!(code(&out), 125, "{what}: {}", stderr(&out));
        assert!(stderr(&out).contains(named), "{what}: {}", stderr(&out));
        assert!(!marker.exists(), "{what}: the refused bundle ran");
    }
    // The refusals are audited.
    let out = s
        .ctl()
        .args(["audit", "tail", "-n", "200"])
        .output()
        .unwrap();
    assert_eq!(
        stdout(&out).matches("bundle.refused").count(),
        cases.len(),
        "{}",
        stdout(&out)
    );
}

/// Hex sha256 of `bytes`, by `sha256sum`.
fn sha256_hex(bytes: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    stdout(&out).split_whitespace().next().unwrap().to_string()
}

/// Tries to read `path` as user `nobody`; returns what `cat` said.
fn read_as_nobody(path: &Path) -> Output {
    use std::os::unix::process::CommandExt;
    Command::new("cat")
        .arg(path)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap()
}

#[test]
fn a_private_home_runs_and_other_users_read_none_of_its_files() {
    let Some(s) = Scene::live() else { return };
    // A home only its owner may pass through, as `mktemp -d` makes it.
    std::fs::set_permissions(s.home.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let out = s.run(&[], &["sh", "-c", "echo ran > /workspace/ran"]);
    assert_eq!(code(&out), 0, "a 0700 home must run: {}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(s.workspace.join("ran")).unwrap(),
        "ran\n"
    );

    // Open the way to the files, so that only their own modes stand between them and
    // another user.
    std::fs::set_permissions(s.home.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let home = s.home.path().join("home");
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o711)).unwrap();
    let mut running = s
        .ctl()
        .arg("run")
        .arg("--workspace")
        .arg(&s.workspace)
        .args(["--env", "SECRET=hunter2-live", "--", "sleep", "20"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let bundle = loop {
        let found = std::fs::read_dir(home.join("bundles"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.join("config.json").exists() && p.join("plan.json").exists());
        if let Some(b) = found {
            break b;
        }
        assert!(Instant::now() < deadline, "the run wrote no bundle");
        std::thread::sleep(Duration::from_millis(20));
    };
    let config = bundle.join("config.json");
    assert!(std::fs::read_to_string(&config)
        .unwrap()
        .contains("hunter2-live"));
    let mut files = vec![
        config,
        bundle.join("plan.json"),
        home.join("covenant.db"),
        home.join("covenant.db-wal"),
        home.join("supervisor.key"),
        home.join("operator.key"),
    ];
    if home.join("covenant.db-shm").exists() {
        files.push(home.join("covenant.db-shm"));
    }
    for f in &files {
        assert!(f.exists(), "{} does not exist", f.display());
        let out = read_as_nobody(f);
        assert_ne!(code(&out), 0, "nobody read {}", f.display());
        assert!(
            stderr(&out).contains("Permission denied"),
            "{}: {}",
            f.display(),
            stderr(&out)
        );
    }
    let _ = running.kill();
    let _ = running.wait();

    // A home an older build left readable is tightened when the store opens.
    let db = home.join("covenant.db");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = s.run(&[], &["true"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(std::fs::metadata(&db).unwrap().mode() & 0o777, 0o600);
}

#[test]
fn hostile_probes_fail_under_every_runner() {
    let Some(s) = Scene::live() else { return };
    for runner in all_runners() {
        for name in [
            "ptrace",
            "bpf",
            "io_uring_setup",
            "keyctl",
            "unshare_user",
            "mount",
        ] {
            assert_eq!(
                s.probe_with(&runner, &[], name),
                EPERM,
                "{runner}: {name} was not denied"
            );
        }
        assert_ne!(
            s.probe_with(&runner, &[], "connect:1.1.1.1:53"),
            0,
            "{runner}: network reachable under net none"
        );
        // Socket families: each runtime's seccomp reads the profile's rules alike.
        for (name, errno) in [
            ("socket:40:1", libc::EAFNOSUPPORT),
            ("socket:17:3", libc::EAFNOSUPPORT),
            ("socket:1:1", 0),
            ("socket:2:1", 0),
            ("socketpair:1:1", 0),
        ] {
            let found = s.probe_with(&runner, &[], name);
            // gVisor answers for its own kernel, which has no vsock or packet sockets
            // for the sandbox either way.
            assert!(
                found == errno || (errno != 0 && runner == "gvisor" && found != 0),
                "{runner}: {name} gave errno {found}, expected {errno}"
            );
        }
        let probe = s.workspace.join("probe.py").display().to_string();
        let out = s.run_with(
            &runner,
            &["--pids", "16"],
            &["python3", &probe, "fork_bomb"],
        );
        let forked: u32 = stdout(&out)
            .lines()
            .find_map(|l| l.strip_prefix("forked="))
            .unwrap_or_else(|| panic!("{runner}: {}", stderr(&out)))
            .parse()
            .unwrap();
        assert!(
            forked < 16,
            "{runner}: forked {forked} under a pids limit of 16"
        );
        let out = s.run_with(
            &runner,
            &["--memory", "64MiB"],
            &[
                "python3",
                "-c",
                "x = bytearray(400 * 1024 * 1024); print('ALLOCATED')",
            ],
        );
        assert_eq!(code(&out), 137, "{runner}: {}", stderr(&out));
        assert!(!stdout(&out).contains("ALLOCATED"));
        let out = s.run_with(
            &runner,
            &["--timeout", "2s"],
            &["sh", "-c", "(sleep 300 &); sleep 300"],
        );
        assert_eq!(code(&out), 124, "{runner}: {}", stderr(&out));
        let out = s.run_with(
            &runner,
            &[],
            &[
                "sh",
                "-c",
                "cat /etc/shadow || echo NO-SHADOW; echo x > /usr/evil || echo RO",
            ],
        );
        assert_eq!(
            stdout(&out),
            "NO-SHADOW\nRO\n",
            "{runner}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn gvisor_shows_its_own_kernel_and_refuses_what_it_cannot_enforce() {
    let Some(s) = Scene::live() else { return };
    if runtime("runsc").is_none() {
        return;
    }
    let host = std::fs::read_to_string("/proc/version").unwrap();
    let out = s.run_with("gvisor", &[], &["sh", "-c", "uname -r; cat /proc/version"]);
    let text = stdout(&out);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(
        !text.contains(host.trim()),
        "the sandbox sees the host kernel: {text}"
    );
    let host_release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_ne!(text.lines().next().unwrap_or(""), host_release.trim());
    let out = s
        .ctl()
        .args(["run", "--runner", "gvisor", "--workspace"])
        .arg(&s.workspace)
        .args(["--", "true"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 125);
    assert!(stderr(&out).contains("fs.write"), "{}", stderr(&out));
    let out = s.run_with("gvisor", &["--net", "host", "--connect", "443"], &["true"]);
    assert_eq!(code(&out), 125);
    assert!(stderr(&out).contains("net.connect"), "{}", stderr(&out));
}

#[test]
fn external_runtimes_leave_nothing_behind() {
    let Some(s) = Scene::live() else { return };
    let report = s.home.path().join("report.json");
    let mut jobs = Vec::new();
    for runner in all_runners().into_iter().filter(|r| r != "native") {
        for argv in [&["true"][..], &["sh", "-c", "exit 3"][..]] {
            let out = s.run_with(
                &runner,
                &["--memory", "128MiB", "--report", report.to_str().unwrap()],
                argv,
            );
            assert!(
                code(&out) == 0 || code(&out) == 3,
                "{runner}: {}",
                stderr(&out)
            );
            let r: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
            assert_eq!(r["runner"].as_str().unwrap(), runner);
            jobs.push(r["job_id"].as_str().unwrap().to_string());
        }
    }
    let runtime_dir = s.home.path().join("home/runtime");
    let left: Vec<_> = std::fs::read_dir(&runtime_dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "runtime state left behind: {left:?}");
    assert_jobs_left_nothing(&s, &jobs);
    for j in &jobs {
        let left = Command::new("pgrep").arg("-f").arg(j).output().unwrap();
        assert!(
            left.stdout.is_empty(),
            "processes of {j} left behind: {}",
            stdout(&left)
        );
    }
}

/// A busybox image directory (Debian's busybox-static), packed and imported as `busy:1`.
fn busybox_image(s: &Scene) -> Option<PathBuf> {
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

#[test]
fn an_imported_image_runs_on_a_throwaway_overlay_under_every_runner() {
    let Some(s) = Scene::live() else { return };
    let Some(_) = busybox_image(&s) else { return };
    for runner in all_runners() {
        let script =
            "cat /etc/motd; echo changed > /etc/motd; echo new > /etc/new; cat /etc/motd; id -u";
        let out = s
            .ctl()
            .args([
                "run",
                "--runner",
                &runner,
                "--rootfs",
                "image:busy:1",
                "--",
                "sh",
                "-c",
                script,
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(
            stdout(&out),
            "from the image\nchanged\n0\n",
            "{runner}: {}",
            stderr(&out)
        );
        let again = s
            .ctl()
            .args([
                "run",
                "--runner",
                &runner,
                "--rootfs",
                "image:busy:1",
                "--",
                "sh",
                "-c",
                "cat /etc/motd; cat /etc/new 2>/dev/null || echo GONE",
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(
            stdout(&again),
            "from the image\nGONE\n",
            "{runner}: the writable layer must not outlive the run"
        );
    }
    // Changes can be kept in a host directory instead (the overlay's writable layer).
    let keep = s.home.path().join("kept");
    let out = s
        .ctl()
        .args(["run", "--rootfs", "image:busy:1", "--keep-changes"])
        .arg(&keep)
        .args(["--", "sh", "-c", "echo kept > /etc/motd"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(keep.join("upper/etc/motd")).unwrap(),
        "kept\n"
    );
    let out = s
        .ctl()
        .args([
            "run",
            "--runner",
            "gvisor",
            "--rootfs",
            "image:busy:1",
            "--keep-changes",
        ])
        .arg(&keep)
        .args(["--", "true"])
        .output()
        .unwrap();
    if runtime("runsc").is_some() {
        assert_eq!(
            code(&out),
            125,
            "gVisor must refuse a kept layer it would write as host root"
        );
    }
    let overlays = mounts_under(s.home.path());
    assert_eq!(overlays, 0, "an overlay root or layer was left mounted");
}

#[test]
fn image_archives_import_and_rm_refuses_an_image_in_use() {
    let Some(s) = Scene::live() else { return };
    let Some(layout) = busybox_image(&s) else {
        return;
    };
    // The same layout as an OCI archive (a tar of the layout), named on import.
    let archive = s.home.path().join("busy.tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&archive)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
    let out = s
        .ctl()
        .args(["image", "import"])
        .arg(&archive)
        .args(["--name", "busy:tar"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let ls = stdout(&s.ctl().args(["image", "ls"]).output().unwrap());
    assert!(ls.contains("busy:1") && ls.contains("busy:tar"), "{ls}");

    // A running job keeps its image.
    let mut job = s
        .ctl()
        .args(["run", "--rootfs", "image:busy:tar", "--", "sleep", "30"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let bundles = s.home.path().join("home/bundles");
    let has_plan = || {
        std::fs::read_dir(&bundles)
            .map(|d| {
                d.flatten().any(|e| {
                    e.path().join("plan.json").exists() && e.path().join("config.json").exists()
                })
            })
            .unwrap_or(false)
    };
    while !has_plan() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let refused = loop {
        let out = s.ctl().args(["image", "rm", "busy:tar"]).output().unwrap();
        if code(&out) != 0 && stderr(&out).contains("in use") {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // SAFETY: kill(2) on a child this test started and has not reaped.
    unsafe { libc::kill(job.id() as i32, libc::SIGTERM) };
    let _ = job.wait();
    assert!(refused, "image rm did not refuse an image in use");
    assert_eq!(
        code(&s.ctl().args(["image", "rm", "busy:tar"]).output().unwrap()),
        0
    );

    // A hostile archive is refused naming the entry, and nothing lands outside the store.
    let hostile = s.home.path().join("hostile.tar");
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..14].copy_from_slice(b"../../../pwned");
    h.set_size(1);
    h.set_mode(0o644);
    h.set_cksum();
    b.append(&h, &b"x"[..]).unwrap();
    std::fs::write(&hostile, b.into_inner().unwrap()).unwrap();
    let out = s
        .ctl()
        .args(["image", "import"])
        .arg(&hostile)
        .args(["--name", "bad:1"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 125);
    assert!(stderr(&out).contains("../../../pwned"), "{}", stderr(&out));
    assert!(!s.home.path().join("pwned").exists() && !s.home.path().join("home/pwned").exists());
    let gc = s.ctl().args(["image", "gc"]).output().unwrap();
    assert_eq!(code(&gc), 0, "{}", stderr(&gc));
}

#[test]
fn every_bundle_validates_against_the_runtime_spec_schema() {
    let Some(s) = Scene::live() else { return };
    let schema = Path::new(
        "/usr/share/gocode/src/github.com/opencontainers/runtime-spec/schema/config-schema.json",
    );
    if !schema.exists() {
        cannot_run("the runtime-spec schema is missing (install golang-github-opencontainers-specs-dev python3-jsonschema)");
        return;
    }
    let validator = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/live/validate_config.py");
    let validate = |config: &Path| {
        Command::new("/usr/bin/python3")
            .arg("-W")
            .arg("ignore")
            .arg(&validator)
            .arg(config)
            .output()
            .unwrap()
    };
    let image = busybox_image(&s);
    let mut requests: Vec<Vec<String>> = vec![
        vec!["--".into(), "true".into()],
        vec![
            "--workspace".into(),
            s.workspace.display().to_string(),
            "--memory".into(),
            "64MiB".into(),
            "--pids".into(),
            "9".into(),
            "--cpus".into(),
            "0.5".into(),
            "--timeout".into(),
            "5s".into(),
            "--".into(),
            "true".into(),
        ],
        vec![
            "--net".into(),
            "host".into(),
            "--connect".into(),
            "443".into(),
            "--syscalls".into(),
            "ptrace".into(),
            "--user".into(),
            "1000:1000".into(),
            "--".into(),
            "true".into(),
        ],
    ];
    if image.is_some() {
        requests.push(vec![
            "--rootfs".into(),
            "image:busy:1".into(),
            "--".into(),
            "sh".into(),
        ]);
    }
    for (i, request) in requests.iter().enumerate() {
        let dir = s.home.path().join(format!("bundle-{i}"));
        let out = s
            .ctl()
            .args(["bundle", "--out"])
            .arg(&dir)
            .args(request)
            .output()
            .unwrap();
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let v = validate(&dir.join("config.json"));
        assert!(
            v.status.success(),
            "bundle {i} is not valid:\n{}{}",
            stdout(&v),
            stderr(&v)
        );
    }
    // The check is real: a config that breaks the schema fails it.
    let broken = s.home.path().join("broken.json");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s.home.path().join("bundle-0/config.json")).unwrap())
            .unwrap();
    config["ociVersion"] = serde_json::json!(5);
    std::fs::write(&broken, serde_json::to_vec(&config).unwrap()).unwrap();
    assert!(!validate(&broken).status.success());
}

/// Builds covenant-ctl and covenantd statically (for the guest kernel's bare initramfs)
/// in their own target directory; returns covenant-ctl's path (covenantd is beside it).
fn static_ctl() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let target = root.join("target/static");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "--locked",
            "-p",
            "covenant-ctl",
            "-p",
            "covenant-supervisor",
            "--bins",
            "--target",
            "x86_64-unknown-linux-gnu",
            "--target-dir",
        ])
        .arg(&target)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env("CARGO_PROFILE_RELEASE_DEBUG", "0")
        .status()
        .unwrap();
    assert!(status.success(), "the static build failed");
    target.join("x86_64-unknown-linux-gnu/release/covenant-ctl")
}

#[test]
fn a_pure_cgroup_v2_kernel_enforces_limits_and_landlock_fails_closed() {
    // covenantd runs there too: parent cgroup limit, OOM through the daemon, recovery of a
    // job after a SIGKILL of the daemon, and a clean SIGTERM.
    if !live() {
        return;
    }
    for tool in ["qemu-system-x86_64", "busybox", "dpkg-deb", "apt-get"] {
        if runtime(tool).is_none() {
            return;
        }
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/vm/run.sh");
    let out = Command::new(script).arg(static_ctl()).output().unwrap();
    let text = stdout(&out);
    let line = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("VMTEST {name} ")))
            .unwrap_or_else(|| {
                panic!(
                    "no `{name}` result from the guest:\n{text}\n{}",
                    stderr(&out)
                )
            })
            .to_string()
    };
    assert!(
        text.contains("VMTEST done"),
        "the guest did not finish:\n{text}\n{}",
        stderr(&out)
    );
    assert!(
        line("doctor").contains("cgroups V2, controllers: memory pids cpu"),
        "{text}"
    );
    let refused = line("failclosed");
    assert!(
        refused.starts_with("exit=125")
            && refused.contains("landlock ABI 2")
            && refused.contains("landlock-net"),
        "{refused}"
    );
    let degraded = line("degraded");
    assert!(
        degraded.starts_with("exit=0 out=hello") && degraded.contains("\"cgroup_version\": \"v2\""),
        "{degraded}"
    );
    let pids = line("pids");
    assert!(
        !pids.ends_with("forkfail=0"),
        "a v2 pids limit did not stop forks: {pids}"
    );
    assert_eq!(line("memory"), "exit=137", "v2 memory.max did not OOM-kill");
    assert_eq!(line("timeout"), "exit=124");
    let daemon = line("daemon");
    assert_eq!(
        daemon, "exit=0 out=via-daemon parent-pids=200",
        "covenantd on cgroup v2"
    );
    assert_eq!(
        line("daemon-memory"),
        "exit=137",
        "v2 memory.max through the daemon"
    );
    assert_eq!(
        line("daemon-restart"),
        "cgroups-left=0 sleeping=0",
        "a restarted covenantd left a v2 job behind"
    );
    assert_eq!(line("daemon-stop"), "exit=0");
    assert_eq!(line("cgroups-left"), "0", "v2 cgroups left behind");
    assert_eq!(line("audit"), "clean");
}

#[test]
fn a_sandbox_dies_with_its_supervisor() {
    let Some(s) = Scene::live() else { return };
    let marker = marker(4);
    let mut ctl = s
        .ctl()
        .args([
            "run",
            "--",
            "sh",
            "-c",
            &format!("(exec sleep {marker} &); exec sleep {marker}"),
        ])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let running = |m: &str| still_running(m);
    while !running(&marker) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(running(&marker), "the sandbox never started");
    // SAFETY: kill(2) on a child this test started and has not reaped.
    unsafe { libc::kill(ctl.id() as i32, libc::SIGKILL) };
    let _ = ctl.wait();
    let deadline = Instant::now() + Duration::from_secs(5);
    while running(&marker) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!running(&marker), "the sandbox outlived its supervisor");
}
