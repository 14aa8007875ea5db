//! The command line around a run: manifests, refused requests, `doctor`, and the memory
//! and audit commands.

use crate::scene::{code, read_json, stderr, stdout, Scene};
use std::path::Path;
use std::process::Command;

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
    // With runsc here, doctor names the platform the gvisor runner will use and why, and
    // says whether that platform's probe ran; a named platform that does not exist fails.
    if crate::scene::runtime("runsc").is_some() {
        let used = |out: &std::process::Output| {
            stdout(out)
                .lines()
                .find(|l| l.contains("gVisor platform used"))
                .unwrap_or_else(|| panic!("no platform line:\n{}", stdout(out)))
                .to_string()
        };
        let line = used(&out);
        assert!(
            line.starts_with("ok") && line.contains("ptrace (the default"),
            "{line}"
        );
        let out = s
            .ctl()
            .arg("doctor")
            .env("COVENANT_GVISOR_PLATFORM", "nosuchplatform")
            .output()
            .unwrap();
        let line = used(&out);
        assert!(
            line.starts_with("warn")
                && line.contains("nosuchplatform (named by COVENANT_GVISOR_PLATFORM")
                && line.contains("gvisor runs will fail"),
            "{line}"
        );
    }
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
    let job = read_json(&report)["job_id"].as_str().unwrap().to_string();
    assert_eq!(code(&s.run(&["--memory", "lots"], &["true"])), 125);
    let text = s.audit_tail(100);
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

/// The steps a native run reports, in the order they run.
const NATIVE_STEPS: [&str; 19] = [
    "store",
    "compile",
    "authorise",
    "host_paths",
    "bundle",
    "prepare",
    "cgroup",
    "clone",
    "id_maps",
    "init",
    "mounts",
    "pivot",
    "privileges",
    "landlock",
    "seccomp",
    "exec",
    "audit",
    "wait",
    "teardown",
];

#[test]
fn a_run_reports_the_time_of_each_step_in_its_report_audit_and_table() {
    let Some(s) = Scene::live() else { return };
    let report = s.home.path().join("report.json");
    let begun = std::time::Instant::now();
    let out = s.run(
        &[
            "--timings",
            "--memory",
            "64MiB",
            "--pids",
            "32",
            "--report",
            report.to_str().unwrap(),
        ],
        &["true"],
    );
    let wall_us = begun.elapsed().as_micros() as u64;
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    // In the file, in the order the steps ran (`timings_us` is the report's last field).
    let raw = std::fs::read_to_string(&report).unwrap();
    let section = &raw[raw.find("\"timings_us\"").unwrap()..];
    let at: Vec<usize> = NATIVE_STEPS
        .iter()
        .map(|step| section.find(&format!("\"{step}\":")).unwrap())
        .collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "{section}");
    let report = read_json(&report);
    let timings = report["timings_us"].as_object().unwrap();
    let steps: Vec<&str> = timings.keys().map(String::as_str).collect();
    let mut expected = NATIVE_STEPS.to_vec();
    expected.sort_unstable();
    assert_eq!(steps, expected, "the report names every step once");
    let us = |step: &str| timings[step].as_u64().unwrap();
    // The sandbox's own steps crossed from the child: each took some time, and none was
    // folded into `exec`, where a lost stamp would land.
    for step in [
        "init",
        "mounts",
        "pivot",
        "privileges",
        "landlock",
        "seccomp",
    ] {
        assert!(us(step) > 0, "{step}: {timings:?}");
    }
    let total: u64 = NATIVE_STEPS.iter().map(|s| us(s)).sum();
    assert!(
        total <= wall_us,
        "the steps ({total} µs) cannot outlast the command ({wall_us} µs)"
    );
    // The table on stderr, in the order the steps ran, then the preparation and total.
    let printed = stderr(&out);
    let table: Vec<&str> = printed
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let mut want = vec!["step"];
    want.extend(NATIVE_STEPS);
    want.extend(["(preparation)", "total"]);
    assert_eq!(table, want, "{printed}");
    // The audit's run record carries them up to the record itself.
    let tail = s.audit_tail(40);
    let exited = tail
        .lines()
        .find(|l| l.contains("run.exited"))
        .map(str::to_string)
        .unwrap_or_default();
    assert!(
        exited.contains("\"timings_us\"") && exited.contains("\"wait\""),
        "{}",
        tail
    );
    // On cgroup v2 the sandbox is cloned into its cgroup; on v1 its init moves itself in.
    let entry = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        "clone"
    } else {
        "join"
    };
    assert!(
        tail.contains(&format!("\"cgroup_entry\":\"{entry}\"")),
        "{}",
        tail
    );
}

#[test]
fn an_oci_runtime_run_reports_its_runtime_as_one_step() {
    let Some(s) = Scene::live() else { return };
    let Some(runc) = crate::scene::runtime("runc") else {
        return;
    };
    let report = s.home.path().join("report.json");
    let out = s.run_with(
        &format!("oci:{runc}"),
        &["--report", report.to_str().unwrap()],
        &["true"],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let report = read_json(&report);
    let mut steps: Vec<&str> = report["timings_us"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    steps.sort_unstable();
    let mut want = vec![
        "store",
        "compile",
        "authorise",
        "host_paths",
        "bundle",
        "prepare",
        "runtime",
        "audit",
        "wait",
        "teardown",
    ];
    want.sort_unstable();
    assert_eq!(steps, want);
}
