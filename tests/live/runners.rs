//! Every runner (native, runc, crun, gVisor): the same bundle runs alike, the hostile probes
//! fail alike, and the external runtimes leave nothing behind.

use crate::scene::{
    all_runners, assert_jobs_left_nothing, code, forked, read_json, runtime, stderr, stdout, Scene,
    EPERM,
};
use std::process::{Command, Stdio};

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
        let forked = forked(&out);
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
            let r: serde_json::Value = read_json(&report);
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
