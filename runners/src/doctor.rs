//! Host checks for `covenant-ctl doctor`: every kernel feature the runners use, probed for
//! real (a namespace is checked by creating one in a throwaway child), with what to do when
//! one is missing.

use crate::native::{landlock_abi, CgroupLayout};
use nix::sched::{unshare, CloneFlags};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, geteuid, ForkResult};
use std::os::unix::process::CommandExt;
use std::path::Path;

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    /// Whether the native runner cannot work without it.
    pub required: bool,
    pub detail: String,
    pub fix: Option<String>,
}

fn check(
    name: &str,
    ok: bool,
    required: bool,
    detail: impl Into<String>,
    fix: Option<&str>,
) -> Check {
    Check {
        name: name.to_string(),
        ok,
        required,
        detail: detail.into(),
        fix: fix.filter(|_| !ok).map(str::to_string),
    }
}

/// Creates a namespace of `flag` in a forked child; returns the errno on failure. The
/// caller must be single-threaded.
fn probe_namespace(flag: CloneFlags) -> Result<(), std::io::Error> {
    // SAFETY: the child only makes plain syscalls and ends with _exit; the caller is
    // single-threaded.
    match unsafe { fork() }? {
        ForkResult::Child => {
            let user = if geteuid().is_root() {
                CloneFlags::empty()
            } else {
                CloneFlags::CLONE_NEWUSER
            };
            let code = match unshare(flag | user) {
                Ok(()) => 0,
                Err(errno) => errno as i32,
            };
            // SAFETY: _exit ends the child at once, running none of the parent's destructors.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => match waitpid(child, None)? {
            WaitStatus::Exited(_, 0) => Ok(()),
            WaitStatus::Exited(_, errno) => Err(std::io::Error::from_raw_os_error(errno)),
            other => Err(std::io::Error::other(format!(
                "the probe ended unexpectedly: {other:?}"
            ))),
        },
    }
}

/// Makes the egress kernel path's link in a scratch network namespace, on a thread of its
/// own (`unshare` of a network namespace moves only the calling thread), and drops it.
fn probe_egress_kernel_path() -> Result<(), std::io::Error> {
    std::thread::spawn(|| {
        unshare(CloneFlags::CLONE_NEWNET)?;
        covenant_egress::link::create_kernel_link().map(drop)
    })
    .join()
    .unwrap_or_else(|_| Err(std::io::Error::other("the probe panicked")))
}

fn on_path(binary: &str) -> Option<String> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .map(|d| Path::new(d).join(binary))
        .find(|p| p.is_file())
        .map(|p| p.display().to_string())
}

/// The platform the gvisor runner will use, and why: `COVENANT_GVISOR_PLATFORM`, or
/// ptrace, the one that works under nested virtualisation (kvm hangs there, and
/// Debian's 2022 runsc has no systrap).
pub fn gvisor_platform_choice() -> (String, &'static str) {
    match std::env::var("COVENANT_GVISOR_PLATFORM") {
        Ok(p) if !p.is_empty() => (p, "named by COVENANT_GVISOR_PLATFORM"),
        _ => (
            "ptrace".into(),
            "the default: it works on nested virtualisation, where kvm hangs",
        ),
    }
}

/// Runs `true` under runsc on `platform`, killing it after `deadline` (the kvm platform
/// hangs on nested virtualisation instead of failing).
fn probe_gvisor_platform(
    runsc: &str,
    platform: &str,
    deadline: std::time::Duration,
) -> (bool, String) {
    let child = std::process::Command::new(runsc)
        .args([
            format!("--platform={platform}"),
            "--network=none".into(),
            "do".into(),
            "true".into(),
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        // A group of its own: runsc re-executes itself and starts a gofer and a sandbox,
        // and a probe that hangs must take all of them with it.
        .process_group(0)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return (false, e.to_string()),
    };
    let group = nix::unistd::Pid::from_raw(child.id() as i32);
    let result = wait_for_probe(&mut child, deadline);
    // Whatever the probe left running (a re-executed runsc still booting its sandbox)
    // goes with it; a group already empty answers ESRCH.
    let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
    let _ = child.wait();
    result
}

fn wait_for_probe(
    child: &mut std::process::Child,
    deadline: std::time::Duration,
) -> (bool, String) {
    let started = std::time::Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => {
                return (
                    true,
                    format!(
                        "runs (`runsc do true` in {} ms)",
                        started.elapsed().as_millis()
                    ),
                )
            }
            Ok(Some(_)) => {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                let line = err
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("failed")
                    .trim()
                    .to_string();
                return (false, line.chars().take(120).collect());
            }
            Ok(None) if started.elapsed() > deadline => {
                return (
                    false,
                    format!(
                        "no answer after {} s; killed (treat as unusable)",
                        deadline.as_secs()
                    ),
                );
            }
            Ok(None) => std::thread::sleep(std::time::Duration::from_millis(20)),
            Err(e) => return (false, e.to_string()),
        }
    }
}

/// Runs every check.
pub fn run_checks() -> Vec<Check> {
    let mut checks = Vec::new();
    for (name, flag) in [
        ("user namespace", CloneFlags::CLONE_NEWUSER),
        ("pid namespace", CloneFlags::CLONE_NEWPID),
        ("mount namespace", CloneFlags::CLONE_NEWNS),
        ("network namespace", CloneFlags::CLONE_NEWNET),
        ("ipc namespace", CloneFlags::CLONE_NEWIPC),
        ("uts namespace", CloneFlags::CLONE_NEWUTS),
        ("cgroup namespace", CloneFlags::CLONE_NEWCGROUP),
    ] {
        let r = probe_namespace(flag);
        checks.push(check(
            name,
            r.is_ok(),
            true,
            r.as_ref()
                .map(|_| "can be created".to_string())
                .unwrap_or_else(|e| e.to_string()),
            Some("enable it in the kernel (CONFIG_*_NS) and check user.max_*_namespaces sysctls"),
        ));
    }
    let actions =
        std::fs::read_to_string("/proc/sys/kernel/seccomp/actions_avail").unwrap_or_default();
    checks.push(check(
        "seccomp filters",
        actions.contains("errno") && actions.contains("allow"),
        true,
        format!("actions: {}", actions.trim()),
        Some("a kernel with CONFIG_SECCOMP_FILTER"),
    ));
    let abi = landlock_abi();
    checks.push(check(
        "landlock",
        abi >= 1,
        true,
        format!("ABI {abi}"),
        Some("boot with landlock in the lsm= list (CONFIG_SECURITY_LANDLOCK)"),
    ));
    checks.push(check(
        "landlock TCP rules (ABI >= 4)",
        abi >= 4,
        false,
        format!("ABI {abi}"),
        Some("kernel >= 6.7; until then `net:none` needs the degradation `landlock-net`"),
    ));
    checks.push(check(
        "landlock signal scoping (ABI >= 6)",
        abi >= 6,
        false,
        format!("ABI {abi}"),
        Some("kernel >= 6.12; until then runs need the degradation `landlock-scope`"),
    ));
    match CgroupLayout::detect(Path::new("/sys/fs/cgroup")) {
        Ok(layout) => {
            let controllers = layout.controllers();
            checks.push(check(
                "cgroups",
                true,
                true,
                format!(
                    "{:?}, controllers: {}",
                    layout.version(),
                    controllers.join(" ")
                ),
                None,
            ));
            for c in ["memory", "pids", "cpu"] {
                checks.push(check(
                    &format!("cgroup controller {c}"),
                    controllers.contains(&c),
                    false,
                    if controllers.contains(&c) {
                        "available"
                    } else {
                        "missing"
                    },
                    Some("enable the controller; runs that set this limit are refused without it"),
                ));
            }
            let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
            let expedited =
                std::fs::read_to_string("/sys/kernel/rcu_expedited").is_ok_and(|v| v.trim() == "1");
            let (ok, detail) =
                cgroup_entry_cost(layout.version(), kernel_version(), &mountinfo, expedited);
            checks.push(check(
                "cgroup attach",
                ok,
                false,
                detail,
                Some(FAVORDYNMODS_FIX),
            ));
        }
        Err(e) => checks.push(check(
            "cgroups",
            false,
            true,
            e.to_string(),
            Some("mount cgroup2 at /sys/fs/cgroup"),
        )),
    }
    let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    checks.push(check(
        "overlayfs",
        filesystems.contains("overlay"),
        false,
        "for image rootfs sources",
        Some("modprobe overlay"),
    ));
    let kernel_path = probe_egress_kernel_path();
    checks.push(check(
        "egress kernel path",
        kernel_path.is_ok(),
        false,
        kernel_path
            .map(|()| "AnyIP route, sk_lookup steering and the observer, made in a scratch network namespace".to_string())
            .unwrap_or_else(|e| e.to_string()),
        Some("net egress on the native runner, runc and crun needs root and a kernel with BPF sk_lookup (Linux 5.9, CONFIG_BPF_SYSCALL); gVisor uses /dev/net/tun instead"),
    ));
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm");
    checks.push(check(
        "/dev/kvm",
        kvm.is_ok(),
        false,
        kvm.map(|_| {
            "openable (nested hosts may still hang: probe gVisor's kvm platform with a deadline)"
                .to_string()
        })
        .unwrap_or_else(|e| e.to_string()),
        Some("only gVisor's kvm platform needs it; use the ptrace platform otherwise"),
    ));
    if let Some(runsc) = on_path("runsc") {
        let mut works = Vec::new();
        for platform in ["ptrace", "systrap", "kvm"] {
            let (ok, detail) =
                probe_gvisor_platform(&runsc, platform, std::time::Duration::from_secs(8));
            if ok {
                works.push(platform);
            }
            checks.push(check(
                &format!("gVisor platform {platform}"),
                ok,
                false,
                detail,
                Some("the gvisor runner uses the ptrace platform; only a platform that works here can be chosen"),
            ));
        }
        let (chosen, why) = gvisor_platform_choice();
        let ok = works.contains(&chosen.as_str());
        checks.push(check(
            "gVisor platform used",
            ok,
            false,
            format!(
                "{chosen} ({why}; {})",
                if ok {
                    "its probe above ran"
                } else {
                    "its probe above failed, so gvisor runs will fail"
                }
            ),
            Some(&format!(
                "set COVENANT_GVISOR_PLATFORM to one that works here: {}",
                if works.is_empty() {
                    "none does".to_string()
                } else {
                    works.join(", ")
                }
            )),
        ));
    }
    for binary in ["runsc", "runc", "crun"] {
        let found = on_path(binary);
        checks.push(check(
            binary,
            found.is_some(),
            false,
            found.unwrap_or_else(|| "not on PATH".into()),
            Some("apt-get install runc crun runsc"),
        ));
    }
    checks
}

/// What to do when a move into a v1 cgroup waits for an RCU grace period.
const FAVORDYNMODS_FIX: &str = "mount -o remount,favordynmods /sys/fs/cgroup/unified (the cgroup2 mount of the hybrid layout; the lock it relaxes is shared by every hierarchy, so v1 moves stop waiting; Linux 6.0 or later; forks and exits get slightly dearer), or run on cgroup v2, where sandboxes are cloned into their cgroup";

/// Whether putting a sandbox into its cgroup is cheap here, and why: on v2 the native
/// runner clones it straight in; on v1 its init moves itself in, which skips the
/// process-group lock on Linux 5.16 or later (`cgroup::join`). A move by pid (an OCI
/// runtime's, or the native runner's own on an older kernel) takes that lock for writing,
/// whose first writer after a quiet spell waits for an RCU grace period (5-18 ms
/// measured) unless a cgroup hierarchy is mounted `favordynmods` or the kernel expedites
/// grace periods.
fn cgroup_entry_cost(
    version: crate::native::CgroupVersion,
    kernel: (u32, u32),
    mountinfo: &str,
    rcu_expedited: bool,
) -> (bool, String) {
    if version == crate::native::CgroupVersion::V2 {
        return (
            true,
            "v2: sandboxes are cloned into their cgroup (clone3 CLONE_INTO_CGROUP), never moved"
                .into(),
        );
    }
    let favoured = mountinfo.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        let mut fields = after.split_whitespace();
        let fstype = fields.next()?;
        let options = fields.nth(1)?;
        let point = before.split_whitespace().nth(4)?;
        (fstype.starts_with("cgroup") && options.split(',').any(|o| o == "favordynmods"))
            .then(|| point.to_string())
    });
    let move_by_pid = match (&favoured, rcu_expedited) {
        (Some(point), _) => format!("does not wait ({point} is mounted favordynmods)"),
        (None, true) => {
            "waits about 1 ms (RCU grace periods are expedited, /sys/kernel/rcu_expedited)".into()
        }
        (None, false) => "waits for an RCU grace period after a quiet spell (5-18 ms measured on a 2-core VM, whatever the controller order)".into(),
    };
    if kernel >= (5, 16) {
        return (
            true,
            format!("v1: native sandboxes move themselves into their cgroups, which skips the process-group lock on Linux 5.16 or later; an OCI runtime's move of its container {move_by_pid}"),
        );
    }
    (
        favoured.is_some() || rcu_expedited,
        format!(
            "v1, Linux {}.{}: moving a sandbox into its cgroups {move_by_pid}",
            kernel.0, kernel.1
        ),
    )
}

/// The running kernel's major and minor version (`uname -r`); (0, 0) when unreadable.
fn kernel_version() -> (u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse().unwrap_or(0));
    (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::native::CgroupVersion;

    const HYBRID: &str =
        "35 25 0:30 / /sys/fs/cgroup/unified rw,nosuid shared:9 - cgroup2 cgroup2 rw\n\
        36 25 0:31 / /sys/fs/cgroup/memory rw,nosuid shared:10 - cgroup cgroup rw,memory\n";

    #[test]
    fn cgroup_attach_is_cheap_on_v2_and_with_favordynmods_or_expedited_rcu() {
        const OLD: (u32, u32) = (5, 15);
        assert!(cgroup_entry_cost(CgroupVersion::V2, OLD, "", false).0);
        let (ok, detail) = cgroup_entry_cost(CgroupVersion::V1, OLD, HYBRID, false);
        assert!(!ok && detail.contains("RCU grace period"), "{detail}");
        let favoured = HYBRID.replace("cgroup2 rw\n", "cgroup2 rw,favordynmods\n");
        let (ok, detail) = cgroup_entry_cost(CgroupVersion::V1, OLD, &favoured, false);
        assert!(ok && detail.contains("/sys/fs/cgroup/unified"), "{detail}");
        assert!(cgroup_entry_cost(CgroupVersion::V1, OLD, HYBRID, true).0);
        // The option counts only among a cgroup mount's own options.
        let elsewhere = "40 25 0:40 / /mnt/favordynmods rw - ext4 /dev/vda rw\n";
        assert!(!cgroup_entry_cost(CgroupVersion::V1, OLD, elsewhere, false).0);
    }

    /// From 5.16 a native sandbox moves itself without the lock; what an OCI runtime's
    /// move costs is still said.
    #[test]
    fn on_a_newer_kernel_v1_attach_is_cheap_for_native_runs_and_says_what_oci_pays() {
        for kernel in [(5, 16), (6, 1), (6, 18), (7, 0)] {
            let (ok, detail) = cgroup_entry_cost(CgroupVersion::V1, kernel, HYBRID, false);
            assert!(ok, "{kernel:?}: {detail}");
            assert!(detail.contains("OCI runtime") && detail.contains("RCU grace period"));
        }
        let favoured = HYBRID.replace("cgroup2 rw\n", "cgroup2 rw,favordynmods\n");
        let (_, detail) = cgroup_entry_cost(CgroupVersion::V1, (6, 1), &favoured, false);
        assert!(detail.contains("does not wait"), "{detail}");
        let release = kernel_version();
        assert!(release >= (3, 0), "{release:?}");
    }
}
