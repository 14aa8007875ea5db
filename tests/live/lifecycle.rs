//! A run's life: exit codes, signals and streams pass through, and nothing outlives the run
//! or its supervisor.

use crate::scene::{
    assert_jobs_left_nothing, code, marker, mounts_under, read_json, stderr, stdout, still_running,
    Scene,
};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn orphans_die_when_the_program_exits() {
    let Some(s) = Scene::live() else { return };
    let marker = marker(2);
    let out = s.sh(&format!("(setsid sh -c 'exec sleep {marker}' &); exit 3"));
    assert_eq!(code(&out), 3);
    assert!(
        !still_running(&marker),
        "a background process outlived the sandbox"
    );
}

#[test]
fn exit_codes_and_signals_propagate() {
    let Some(s) = Scene::live() else { return };
    assert_eq!(code(&s.sh("exit 42")), 42);
    assert_eq!(code(&s.run(&[], &["true"])), 0);
    assert_eq!(code(&s.sh("kill -TERM $$")), 128 + 15);
    assert_eq!(code(&s.sh("kill -KILL $$")), 128 + 9);
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
    let tail = s.audit_tail(20);
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
        let r: serde_json::Value = read_json(&report);
        job_ids.push(r["job_id"].as_str().unwrap().to_string());
    }
    assert_eq!(mounts_under(s.home.path()), mounts_before, "mounts leaked");
    assert_eq!(mounts_before, 0);
    assert_jobs_left_nothing(&s, &job_ids);
    assert!(!still_running(&marker), "processes leaked");
}

/// `covenant-ctl ARGS`, returned once its sandbox's `sleep MARKER` runs.
fn started(s: &Scene, args: &[&str], marker: &str) -> std::process::Child {
    let ctl = s.ctl().args(args).stdin(Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !still_running(marker) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(still_running(marker), "the sandbox never started");
    ctl
}

#[test]
fn a_sandbox_dies_with_its_supervisor() {
    let Some(s) = Scene::live() else { return };
    let marker = marker(4);
    let script = format!("(exec sleep {marker} &); exec sleep {marker}");
    let mut ctl = started(&s, &["run", "--", "sh", "-c", &script], &marker);
    // SAFETY: kill(2) on a child this test started and has not reaped.
    unsafe { libc::kill(ctl.id() as i32, libc::SIGKILL) };
    let _ = ctl.wait();
    let deadline = Instant::now() + Duration::from_secs(5);
    while still_running(&marker) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !still_running(&marker),
        "the sandbox outlived its supervisor"
    );
    crate::scene::remove_cgroups_of(&s.home.path().join("home"));
}

/// The sandbox's init lives as long as the program, inside the sandbox's namespaces: it
/// keeps none of the supervisor's descriptors (the store, the host's mount namespace,
/// staged host objects), only stdio and its status pipe.
#[test]
fn the_sandboxs_init_keeps_no_supervisor_descriptor() {
    let Some(s) = Scene::live() else { return };
    let marker = marker(7);
    let mut ctl = started(&s, &["run", "--", "sleep", &marker], &marker);
    let out = Command::new("pgrep")
        .args(["-f", &format!("^sleep {marker}$")])
        .output()
        .unwrap();
    let program: u32 = stdout(&out).trim().parse().unwrap();
    let init = crate::scene::parent_of(program);
    let fds: Vec<(String, String)> = std::fs::read_dir(format!("/proc/{init}/fd"))
        .unwrap()
        .flatten()
        .map(|e| {
            let target = std::fs::read_link(e.path()).unwrap_or_default();
            (
                e.file_name().to_string_lossy().into_owned(),
                target.display().to_string(),
            )
        })
        .collect();
    // SAFETY: kill(2) on a child this test started and has not reaped.
    unsafe { libc::kill(ctl.id() as i32, libc::SIGTERM) };
    let _ = ctl.wait();
    let beyond_stdio: Vec<_> = fds
        .iter()
        .filter(|(n, _)| !matches!(n.as_str(), "0" | "1" | "2"))
        .collect();
    assert!(
        beyond_stdio.len() == 1 && beyond_stdio[0].1.starts_with("pipe:"),
        "init holds more than its status pipe: {fds:?}"
    );
}

#[test]
fn a_signal_during_setup_still_leaves_nothing_behind() {
    let Some(s) = Scene::live() else { return };
    // SIGTERM at a spread of moments from right after the CLI starts until after the
    // sandbox runs: whenever it lands, the run ends and removes its bundle and cgroups
    // (a run killed mid-setup once left its bundle, which kept its image "in use").
    for delay_ms in [0u64, 1, 2, 4, 8, 16, 32] {
        let child = s
            .ctl()
            .args(["run", "--memory", "64MiB", "--", "sleep", "30"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let started = Instant::now();
        let out = child.wait_with_output().unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the run outlived the signal: it reached the program only at its end"
        );
        // Killed by the signal itself only before the run began (nothing exists yet);
        // after that, the program's 143, or 125 when setup stopped.
        let c = code(&out);
        let killed = std::os::unix::process::ExitStatusExt::signal(&out.status) == Some(15);
        assert!(
            killed || c == 128 + 15 || c == 125,
            "after {delay_ms} ms: exit {c}: {}",
            stderr(&out)
        );
        for dir in ["home/bundles", "home/staging"] {
            let left: Vec<_> = std::fs::read_dir(s.home.path().join(dir))
                .map(|d| d.flatten().map(|e| e.path()).collect())
                .unwrap_or_default();
            assert!(
                left.is_empty(),
                "after {delay_ms} ms: left behind: {left:?}"
            );
        }
    }
}

/// The store opens beside the run's preparation; a store that cannot open still refuses
/// the run before its program starts, loses nothing, and leaves nothing behind.
#[test]
fn a_store_that_cannot_open_refuses_the_run_before_its_program() {
    let Some(s) = Scene::live() else { return };
    // The control: with a store, the same program leaves its mark.
    let control = Scene::new();
    let out = control.sh("touch /workspace/ran");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(control.workspace.join("ran").exists());

    let home = s.home.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let garbage = b"this is not an SQLite database, and it must stay as it is\n".repeat(200);
    let db = home.join("covenant.db");
    std::fs::write(&db, &garbage).unwrap();
    let ran = s.workspace.join("ran");
    let out = s.sh("touch /workspace/ran");
    assert_eq!(code(&out), 125, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("store") || stderr(&out).contains("database"),
        "the refusal does not name the store: {}",
        stderr(&out)
    );
    assert!(!ran.exists(), "the program ran with no store to audit it");
    // Nor is a signed bundle, which outlives the run, made with no store to record it.
    let kept = s.home.path().join("kept");
    let out = s.run(
        &["--keep-bundle", kept.to_str().unwrap()],
        &["sh", "-c", "touch /workspace/ran"],
    );
    assert_eq!(code(&out), 125, "{}", stderr(&out));
    assert!(!ran.exists(), "the program ran with no store to audit it");
    assert!(
        !kept.join("signature.json").exists() && !kept.join("config.json").exists(),
        "a bundle was kept and signed with no store to record it"
    );
    assert_eq!(
        std::fs::read(&db).unwrap(),
        garbage,
        "the refused run changed the file where the store should be"
    );
    for dir in ["bundles", "staging"] {
        let left: Vec<_> = std::fs::read_dir(home.join(dir))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "left behind: {left:?}");
    }
}

/// A supervisor killed outright cannot remove its run's cgroups or folders; the next run
/// with the same home removes them once they are old enough, records it, and leaves every
/// other cgroup (a live run's, another home's) alone.
#[test]
fn a_killed_supervisors_leftovers_are_removed_by_the_next_run() {
    let Some(s) = Scene::live() else { return };
    let marker = marker(6);
    let args = ["run", "--memory", "64MiB", "--", "sleep", &marker];
    let mut ctl = started(&s, &args, &marker);
    let pid = ctl.id();
    let suffix = format!("-{pid}");
    let made = Instant::now();
    let cgroups: Vec<_> = crate::scene::covenant_cgroups()
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(&suffix))
        .collect();
    assert!(!cgroups.is_empty(), "the run has no cgroup named for {pid}");
    let job = cgroups[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .trim_end_matches(&suffix)
        .to_string();
    // SAFETY: kill(2) on a child this test started and has not reaped.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let _ = ctl.wait();
    let home = s.home.path().join("home");
    let left = |p: &std::path::Path| p.symlink_metadata().is_ok();
    assert!(
        cgroups.iter().all(|c| left(c)),
        "the killed run left nothing: this test shows nothing"
    );
    // Its bundle and staging places were in its own mount namespace, gone with it.
    for d in ["bundles", "staging"] {
        assert!(!left(&home.join(d).join(&job)), "{d}/{job} is on the host");
    }

    // A run of this home whose folder has something mounted under it: neither the mount
    // nor its cgroup is touched, even when the home is named through a symlink.
    let planted = "job-00000000000000aa";
    let planted_cgroup =
        std::path::Path::new("/sys/fs/cgroup/memory/covenant").join(format!("{planted}-4194305")); // above PID_MAX_LIMIT: no process
    let victim = s.home.path().join("victim");
    std::fs::create_dir_all(victim.join("sub")).unwrap();
    std::fs::write(victim.join("sub/file"), "precious").unwrap();
    let mount_point = home.join("bundles").join(planted).join("rootfs");
    std::fs::create_dir_all(&mount_point).unwrap();
    nix::mount::mount(
        Some(&victim),
        &mount_point,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .unwrap();
    std::fs::create_dir(&planted_cgroup).unwrap();
    // Untagged cgroups of this home's dead runs, claimed by the folders they left on the
    // host: an older build's bundle folder, an OCI runtime's state folder.
    let memory = std::path::Path::new("/sys/fs/cgroup/memory/covenant");
    let older = ("job-00000000000000bb", "4194306");
    let oci = ("job-00000000000000cc", "4194307");
    let older_cgroup = memory.join(format!("{}-{}", older.0, older.1));
    let oci_cgroup = memory.join(format!("{}-{}", oci.0, oci.1));
    let older_folder = home.join("bundles").join(older.0);
    let oci_folder = home.join("runtime").join(format!("{}-{}", oci.0, oci.1));
    for dir in [&older_cgroup, &oci_cgroup, &older_folder, &oci_folder] {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(older_folder.join("config.json"), "{}").unwrap();
    let link = s.home.path().join("home-link");
    std::os::unix::fs::symlink(&home, &link).unwrap();

    // Another home's run does not touch them, however old they are.
    let other = Scene::new();
    // Too young for this home's next run, too.
    assert_eq!(code(&s.run(&[], &["true"])), 0);
    assert!(cgroups.iter().all(|c| left(c)), "a young cgroup was taken");

    let min_age = Duration::from_secs(10) + Duration::from_millis(500);
    if let Some(wait) = min_age.checked_sub(made.elapsed()) {
        std::thread::sleep(wait);
    }
    assert_eq!(code(&other.run(&[], &["true"])), 0);
    assert!(
        cgroups.iter().all(|c| left(c)),
        "another home's run removed them"
    );

    let out = s
        .ctl()
        .env("COVENANT_HOME", &link)
        .args(["run", "--", "true"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let planted_left = left(&planted_cgroup);
    let victim_left = victim.join("sub/file").exists();
    let claimed_left: Vec<_> = [&older_cgroup, &oci_cgroup, &older_folder, &oci_folder]
        .into_iter()
        .filter(|p| left(p))
        .cloned()
        .collect();
    for c in [&older_cgroup, &oci_cgroup] {
        let _ = std::fs::remove_dir(c);
    }
    let _ = nix::mount::umount2(&mount_point, nix::mount::MntFlags::MNT_DETACH);
    let _ = std::fs::remove_dir(&planted_cgroup);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert!(victim_left, "the sweep deleted files through a mount");
    assert!(
        claimed_left.is_empty(),
        "the sweep left dead runs this home holds folders of: {claimed_left:?}"
    );
    assert!(
        planted_left,
        "a job with a mount under its folder lost its cgroup"
    );
    for c in &cgroups {
        assert!(!left(c), "{} is still there", c.display());
    }
    for d in ["bundles", "staging"] {
        assert!(!left(&home.join(d).join(&job)), "{d}/{job} is still there");
    }
    let text = s.audit_tail(40);
    let abandoned: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("run.abandoned"))
        .collect();
    let pid = pid.to_string();
    for (job, pid) in [(job.as_str(), pid.as_str()), older, oci] {
        assert!(
            abandoned
                .iter()
                .any(|l| l.contains(&format!("\"job\":\"{job}\"")) && l.contains(pid)),
            "no run.abandoned event names {job} ({pid}):\n{text}"
        );
    }
    let verify = s.ctl().args(["audit", "verify"]).output().unwrap();
    assert_eq!(code(&verify), 0, "{}", stderr(&verify));
}

/// A supervisor whose own pids cgroup leaves little room still runs: a native run takes
/// only the tasks of its own steps (its init moves itself into its v1 cgroups, and no
/// helper is forked to warm the lock up; such a helper, forked where 2 or 3 tasks were
/// left, once took the task the idmapped workspace's helper needed).
#[test]
fn a_supervisor_with_few_tasks_to_spare_still_runs() {
    let Some(s) = Scene::live() else { return };
    let pids = std::path::Path::new("/sys/fs/cgroup/pids");
    if !pids.join("tasks").exists() {
        // cgroup v2: sandboxes are cloned into their cgroup, and no helper is forked.
        eprintln!("not applicable: no v1 pids hierarchy");
        return;
    }
    let tight = pids.join(format!("covenant-live-tight-{}", std::process::id()));
    std::fs::create_dir(&tight).unwrap();
    let script = format!(
        "echo $$ > {}/cgroup.procs && exec \"$0\" run --embedded --workspace {} --memory 64MiB --pids 32 -- /bin/echo ok",
        tight.display(),
        s.workspace.display()
    );
    let mut outs = Vec::new();
    for max in ["2", "2", "2", "3", "3", "5", "5"] {
        std::fs::write(tight.join("pids.max"), max).unwrap();
        // Spaced out, so each run meets the lock cold.
        std::thread::sleep(Duration::from_millis(150));
        let out = std::process::Command::new("sh")
            .args(["-c", &script, env!("CARGO_BIN_EXE_covenant-ctl")])
            .env("COVENANT_HOME", s.home.path().join("home"))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        outs.push((max, out));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::remove_dir(&tight).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    for (max, out) in outs {
        assert_eq!(code(&out), 0, "pids.max {max}: {}", stderr(&out));
        assert_eq!(stdout(&out), "ok\n");
    }
}
