//! A guest kernel with cgroup v2 only and an old landlock, booted under qemu: limits hold
//! there, landlock fails closed, and covenantd runs and recovers.

use crate::scene::{live, runtime, stderr, stdout};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds covenant-ctl, covenantd and covenant-runtime statically (for the guest kernel's bare initramfs)
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
            "-p",
            "covenant-runtime",
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
    for tool in ["qemu-system-x86_64", "busybox", "dpkg-deb", "apt-get", "jq"] {
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
    assert_eq!(
        line("cgroup-entry"),
        r#""cgroup_entry":"clone""#,
        "on v2 the sandbox is cloned straight into its cgroup"
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
    // covenant-runtime on v2: the device program lets /dev/null open and not a bound
    // /dev/kmsg; memory.max and pids.max hold; nothing is left.
    assert_eq!(
        line("runtime-devices"),
        "exit=0 out=null ",
        "v2 device rules under covenant-runtime"
    );
    assert_eq!(
        line("runtime-memory"),
        "exit=137",
        "covenant-runtime, v2 memory.max"
    );
    let pids = line("runtime-pids");
    assert!(
        !pids.ends_with("forkfail=0"),
        "covenant-runtime, v2 pids.max: {pids}"
    );
    assert_eq!(line("runtime-left"), "state=0 cgroups=0");
}
