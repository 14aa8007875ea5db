//! Resource limits (cgroups and the timeout): each stops the program and is reported.

use crate::scene::{
    code, forked, marker, parent_of, read_json, stderr, stdout, still_running, Scene,
};
use std::time::{Duration, Instant};

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
    let forked = forked(&out);
    assert!(forked < 32, "forked {forked} processes past a limit of 32");
    let report: serde_json::Value = read_json(&report);
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
    let report: serde_json::Value = read_json(&report);
    assert_eq!(report["oom_killed"], true);
    assert!(report["peak_memory_bytes"].as_u64().unwrap() <= 48 << 20);
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
    let report: serde_json::Value = read_json(&report);
    let cpu_ms = report["cpu_time_ms"].as_f64().unwrap();
    let wall_ms = report["duration_ms"].as_f64().unwrap();
    assert!(wall_ms >= 1900.0, "{report}");
    assert!(
        cpu_ms < 0.35 * wall_ms,
        "a 0.2 CPU limit let the program use {cpu_ms} ms in {wall_ms} ms"
    );
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

/// Every process of a sandbox, its init and what the program forks (even into a session
/// of its own), is in the run's cgroup in each hierarchy a limit was set in, from the
/// host's view; the supervisor itself is not. On v1 init moves itself there before it
/// does anything else.
#[test]
fn every_process_of_the_sandbox_is_in_the_runs_cgroups() {
    let Some(s) = Scene::live() else { return };
    let marker = marker(5);
    let script = format!("(setsid sh -c 'exec sleep {marker}' &) ; exec sleep {marker}");
    let mut run = s.ctl();
    run.args(["run", "--workspace"])
        .arg(&s.workspace)
        .args([
            "--memory",
            "64MiB",
            "--pids",
            "32",
            "--cpus",
            "1",
            "--timeout",
            "4s",
            "--",
            "sh",
            "-c",
            &script,
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let child = run.spawn().unwrap();
    let supervisor = child.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    let sleepers = loop {
        let out = std::process::Command::new("pgrep")
            .arg("-f")
            .arg(format!("^sleep {marker}$"))
            .output()
            .unwrap();
        let pids: Vec<u32> = stdout(&out)
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        if pids.len() == 2 || Instant::now() > deadline {
            break pids;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(sleepers.len(), 2, "the sandbox's two sleeps never ran");
    // The program exec'd its sleep; its parent is the sandbox's init.
    let init = sleepers
        .iter()
        .map(|&p| parent_of(p))
        .find(|&pp| parent_of(pp) == supervisor)
        .expect("a sleep whose parent is the sandbox's init, the supervisor's child");
    let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let limited = |controllers: &str| {
        let c: Vec<&str> = controllers.split(',').collect();
        match v2 {
            true => controllers.is_empty(),
            false => ["memory", "pids", "cpu"].iter().any(|w| c.contains(w)),
        }
    };
    let run_cgroups = |pid: u32| -> Vec<String> {
        std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .unwrap()
            .lines()
            .filter_map(|l| {
                let mut f = l.splitn(3, ':');
                let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
                limited(controllers).then(|| format!("{controllers}:{path}"))
            })
            .collect()
    };
    let expected_dir = "/covenant/job-";
    let init_view = run_cgroups(init);
    assert!(!init_view.is_empty());
    for line in &init_view {
        let path = line.split_once(':').unwrap().1;
        assert!(
            path.starts_with(expected_dir) && path.ends_with(&format!("-{supervisor}")),
            "init {init} is outside its run's cgroup: {line}"
        );
    }
    for &pid in &sleepers {
        assert_eq!(
            run_cgroups(pid),
            init_view,
            "sleep {pid} is not where init is"
        );
    }
    for line in run_cgroups(supervisor) {
        assert!(
            !line.contains("/covenant/"),
            "the supervisor itself moved into a run cgroup: {line}"
        );
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(code(&out), 124, "{}", stderr(&out));
    assert!(!still_running(&marker), "processes outlived the sandbox");
}
