//! Resource limits (cgroups and the timeout): each stops the program and is reported.

use crate::scene::{code, forked, marker, read_json, stderr, stdout, still_running, Scene};
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
