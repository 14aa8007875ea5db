//! The daemon over its real socket: a real `covenantd` process per test, requests made
//! with the crate's client (and curl where a header matters).
//!
//! Tests that run sandboxes need root (user namespaces, cgroups); without it they skip
//! with a printed reason, unless `COVENANT_REQUIRE_LIVE=1`, where they fail.

use covenant_policy::Subject;
use covenant_supervisor::daemon::client::{Answer, Client};
use covenant_test_support::issuer::now;
use covenant_test_support::live::SANDBOX;
use covenant_test_support::scratch::traversable_dir;
use covenant_test_support::{skip_unless, Issuer, Need};
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Live tests share the sandboxes' parent cgroup; the one that puts limits on it runs
/// alone.
static SANDBOXES: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// A `$COVENANT_HOME` with a trusted issuer, and a daemon running on it.
struct Daemon {
    home: tempfile::TempDir,
    issuer: Issuer,
    child: Option<Child>,
    client: Client,
    args: Vec<String>,
}

impl Daemon {
    fn start(args: &[&str]) -> Self {
        let home = traversable_dir("covenantd-");
        let issuer = Issuer::random();
        issuer.trust_in(home.path(), "ci");
        let client = Client::new(&home.path().join("covenantd.sock"));
        let mut d = Daemon {
            home,
            issuer,
            child: None,
            client,
            args: args.iter().map(|s| s.to_string()).collect(),
        };
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        let child = Command::new(env!("CARGO_BIN_EXE_covenantd"))
            .arg("--home")
            .arg(self.home.path())
            .args(&self.args)
            .env_remove("COVENANT_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.client.answers() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                let mut err = String::new();
                use std::io::Read;
                let _ = self
                    .child
                    .as_mut()
                    .unwrap()
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err);
                panic!("covenantd exited ({status}): {err}");
            }
            assert!(
                Instant::now() < deadline,
                "covenantd did not answer in 20 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A capability for `subject` with these scopes, valid for an hour.
    fn cap(&self, subject: &str, scopes: &[&str]) -> String {
        self.issuer.token_for_an_hour(subject, scopes)
    }

    fn get(&self, path: &str) -> Answer {
        self.client.request("GET", path, None).unwrap()
    }

    fn post(&self, path: &str, body: Value) -> Answer {
        self.client.request("POST", path, Some(&body)).unwrap()
    }

    fn submit(&self, cap: &str, argv: &[&str]) -> Answer {
        self.post("/v1/jobs", json!({"capability": cap, "argv": argv}))
    }

    fn submit_ok(&self, cap: &str, argv: &[&str]) -> String {
        let a = self.submit(cap, argv);
        assert_eq!(a.status, 201, "{}", a.error_text());
        a.json()["id"].as_str().unwrap().to_string()
    }

    fn wait(&self, id: &str) -> Value {
        let a = self.get(&format!("/v1/jobs/{id}?wait=60"));
        assert_eq!(a.status, 200, "{}", a.error_text());
        let v = a.json();
        assert!(
            !matches!(v["state"].as_str(), Some("running" | "queued")),
            "job {id} did not end: {v}"
        );
        v
    }

    /// The job's stdout and stderr, decoded.
    fn output(&self, id: &str) -> (String, String) {
        use base64::Engine;
        let mut out = (String::new(), String::new());
        self.client
            .lines(&format!("/v1/jobs/{id}/output"), |line| {
                let v: Value = serde_json::from_slice(line).unwrap();
                if v["type"] == "data" {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(v["data"].as_str().unwrap())
                        .unwrap();
                    let text = String::from_utf8_lossy(&bytes).into_owned();
                    match v["stream"].as_str() {
                        Some("stdout") => out.0 += &text,
                        _ => out.1 += &text,
                    }
                }
                true
            })
            .unwrap();
        out
    }

    fn audit_kinds(&self, job: &str) -> Vec<String> {
        let rows = self.get("/v1/audit?tail=2000").json();
        rows["rows"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["body"]["job"] == job)
            .map(|r| r["kind"].as_str().unwrap().to_string())
            .collect()
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM; the daemon's exit status.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().unwrap();
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        c.wait().unwrap()
    }

    fn verify_store(&self) {
        let out = Command::new(ctl())
            .args(["audit", "verify"])
            .env("COVENANT_HOME", self.home.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "audit verify: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        // Jobs still running die with their shims; their cgroups are left to a later
        // daemon of this home, which there is not: the test removes them.
        let _ = covenant_test_support::live::remove_run_cgroups_of(self.home.path());
    }
}

/// `covenant-ctl`, built beside `covenantd` by the workspace's test build.
fn ctl() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_covenantd")).with_file_name("covenant-ctl");
    assert!(
        path.exists(),
        "{} is missing: build the workspace (`cargo test --workspace`)",
        path.display()
    );
    path
}

const TRUE: &[&str] = &["/bin/true"];

/// `covenant-ctl [--daemon] audit verify` against the daemon's home: exit code, stdout.
fn ctl_verify(d: &Daemon, through_daemon: bool) -> (i32, String) {
    let mut cmd = Command::new(ctl());
    if through_daemon {
        cmd.arg("--daemon");
    }
    let out = cmd
        .args(["audit", "verify"])
        .env("COVENANT_HOME", d.home.path())
        .env_remove("COVENANT_SOCKET")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn audit_verify_of_a_live_daemon_names_its_unsigned_tail_and_still_catches_tampering() {
    let d = Daemon::start(&[]);
    // Audited requests, written after the daemon's opening checkpoint.
    for _ in 0..3 {
        assert_eq!(d.get("/v1/audit?tail=1").status, 200);
    }
    let (code, out) = ctl_verify(&d, false);
    assert_eq!(
        code, 0,
        "a live daemon's unsigned rows are not tampering: {out}"
    );
    assert!(out.starts_with("clean:"), "{out}");
    let pid = d.child.as_ref().unwrap().id();
    assert!(
        out.contains("unsigned tail") && out.contains(&format!("covenantd (pid {pid})")),
        "the unsigned rows and their writer are named: {out}"
    );
    let (code, out) = ctl_verify(&d, true);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("signed and verified by covenantd"), "{out}");

    // An edited row is tampering, whoever is writing.
    edit_first_audit_row(d.home.path());
    let (code, out) = ctl_verify(&d, false);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("TAMPERED") && out.contains("Modified"),
        "{out}"
    );
    let (code, out) = ctl_verify(&d, true);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("TAMPERED") && out.contains("Modified"),
        "{out}"
    );
}

/// Edits audit row 1 behind the store's back, as someone with write access to the file
/// would: drops the append-only trigger first.
fn edit_first_audit_row(home: &Path) {
    let conn = rusqlite::Connection::open(home.join("covenant.db")).unwrap();
    conn.execute_batch(
        "DROP TRIGGER audit_no_update; UPDATE audit SET body = replace(body, 'covenantd', 'forged') WHERE seq = 1;",
    )
    .unwrap();
}

#[test]
fn health_metrics_and_unknown_paths() {
    let d = Daemon::start(&[]);
    let h = d.get("/v1/health");
    assert_eq!(h.status, 200);
    assert_eq!(h.json()["status"], "ok");
    assert_eq!(h.json()["api"], "v1");
    let m = d.get("/metrics");
    assert_eq!(m.status, 200);
    let text = String::from_utf8(m.body).unwrap();
    for needle in [
        "covenant_jobs{state=\"running\"} 0",
        "covenant_run_duration_seconds_count",
        "covenant_refusals_total{reason=\"capability\"}",
        "covenant_limits_hit_total{limit=\"memory\"}",
        "covenant_store_bytes",
    ] {
        assert!(text.contains(needle), "metrics lack {needle}:\n{text}");
    }
    // Every path the OpenAPI file lists is routed (an unknown id is not an unknown path).
    let spec = include_str!("../../docs/openapi.yaml");
    let paths: Vec<&str> = spec
        .lines()
        .filter_map(|l| l.strip_prefix("  /"))
        .filter_map(|l| l.strip_suffix(':'))
        .collect();
    assert!(paths.len() >= 10, "{paths:?}");
    for path in paths {
        let path = format!("/{}", path.replace("{id}", "job-0000000000000000"));
        let a = d.client.request("GET", &path, None).unwrap();
        assert!(
            !a.error_text().contains("no such endpoint"),
            "{path} is in openapi.yaml but not routed"
        );
    }
    let a = d.get("/v2/health");
    assert_eq!(a.status, 404);
    assert!(a.error_text().contains("no such endpoint"));
    assert_eq!(d.post("/v1/health", json!({})).status, 405);
    assert_eq!(d.get("/v1/jobs/job-0000000000000000").status, 404);
    let socket = std::fs::metadata(d.home.path().join("covenantd.sock")).unwrap();
    assert_eq!(socket.permissions().mode() & 0o777, 0o660);
}

#[test]
fn bad_requests_get_a_reason_and_store_nothing_but_the_refusal() {
    let d = Daemon::start(&[]);
    let good = d.cap("agent-a", &["res.time:60s"]);
    let raw = |body: &[u8], ctype: &str| {
        d.client
            .request_raw("POST", "/v1/jobs", Some(body.to_vec()), ctype)
            .unwrap()
    };
    let a = raw(b"{not json", "application/json");
    assert_eq!(a.status, 400);
    assert!(
        a.error_text().contains("invalid JSON"),
        "{}",
        a.error_text()
    );

    let a = d.post(
        "/v1/jobs",
        json!({"capability": good, "argv": TRUE, "priority": 9}),
    );
    assert_eq!(a.status, 400);
    assert!(a.error_text().contains("priority"), "{}", a.error_text());
    assert_eq!(a.json()["field"], "priority");

    let a = raw(&vec![b' '; 2 * 1024 * 1024], "application/json");
    assert_eq!(a.status, 413, "{}", a.error_text());

    let a = raw(b"{}", "text/plain");
    assert_eq!(a.status, 415);

    let a = d.post("/v1/jobs", json!({"argv": TRUE}));
    assert_eq!(a.status, 400);
    assert!(a.error_text().contains("capability"), "{}", a.error_text());

    let a = d.post(
        "/v1/jobs",
        json!({"capability": good, "manifest": {"version": 1, "net": "host", "colour": "red"}}),
    );
    assert_eq!(a.status, 400);
    assert_eq!(a.json()["field"], "manifest");
    assert!(a.error_text().contains("colour"), "{}", a.error_text());

    let a = d.post(
        "/v1/jobs",
        json!({"capability": good, "argv": TRUE, "runner": "docker"}),
    );
    assert_eq!(
        (a.status, a.json()["field"].as_str()),
        (400, Some("runner"))
    );

    let a = d.submit("cov1.garbage!", TRUE);
    assert_eq!(
        (a.status, a.json()["field"].as_str()),
        (400, Some("capability"))
    );

    let stranger = Issuer::random().token(
        Subject::Name("agent-a".into()),
        &["res.time:60s"],
        now() - 5,
        now() + 60,
    );
    let a = d.submit(&stranger, TRUE);
    assert_eq!(a.status, 403);
    assert!(
        a.error_text().contains("not a trusted key"),
        "{}",
        a.error_text()
    );

    let expired = d.issuer.token(
        Subject::Name("agent-a".into()),
        &["res.time:60s"],
        now() - 7200,
        now() - 3600,
    );
    let a = d.submit(&expired, TRUE);
    assert_eq!(a.status, 403);
    assert!(a.error_text().contains("expired"), "{}", a.error_text());

    let delegation = d.issuer.token(
        Subject::Key(Issuer::random().public()),
        &["res.time:60s"],
        now() - 5,
        now() + 60,
    );
    let a = d.submit(&delegation, TRUE);
    assert_eq!(a.status, 403);
    assert!(a.error_text().contains("attenuate"), "{}", a.error_text());

    let a = d.post(
        "/v1/jobs",
        json!({"capability": good, "argv": TRUE, "net": "host"}),
    );
    assert_eq!(a.status, 400);
    let a = d.post(
        "/v1/jobs",
        json!({"capability": good, "argv": TRUE, "manifest": {"version": 1, "net": "host"}}),
    );
    assert_eq!(a.status, 403);
    assert!(a.error_text().contains("net:host"), "{}", a.error_text());

    // Nothing was admitted; each refusal is in the audit log with the caller.
    assert_eq!(
        d.get("/v1/jobs").json()["jobs"].as_array().unwrap().len(),
        0
    );
    let rows = d.get("/v1/audit?tail=200").json();
    let rows = rows["rows"].as_array().unwrap();
    let refusals: Vec<&Value> = rows
        .iter()
        .filter(|r| {
            r["kind"] == "capability.refused"
                || r["kind"] == "request.refused"
                || r["kind"] == "request.invalid"
        })
        .collect();
    assert!(refusals.len() >= 5, "{refusals:?}");
    let intent = rows.iter().find(|r| r["kind"] == "run.intent").unwrap();
    // SAFETY: getuid has no failure mode.
    let uid = unsafe { libc::getuid() };
    assert_eq!(intent["body"]["caller"]["uid"], json!(uid));
    assert_eq!(intent["body"]["caller"]["via"], "unix");
    assert!(!rows.iter().any(|r| r["kind"] == "job.admitted"));
    // Refused requests are not a row each: they are counted in the caller's summary,
    // written at least when the daemon stops.
    assert!(!rows.iter().any(|r| r["kind"] == "api.request"));
    let mut d = d;
    assert!(d.terminate().success());
    let conn = rusqlite::Connection::open(d.home.path().join("covenant.db")).unwrap();
    let summary: String = conn
        .query_row(
            "SELECT body FROM audit WHERE kind = 'api.requests' ORDER BY seq DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let summary: Value = serde_json::from_str(&summary).unwrap();
    assert_eq!(summary["by_status"]["POST 413"], 1, "{summary}");
    assert!(summary["requests"].as_u64().unwrap() >= 5, "{summary}");
}

#[test]
fn tcp_listener_requires_a_token_and_the_bearer() {
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_covenantd"))
        .arg("--home")
        .arg(home.path())
        .args(["--listen", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tcp-token-file"));

    let token_file = home.path().join("tcp.token");
    std::fs::write(&token_file, "s3cret-s3cret-s3cret-s3cret\n").unwrap();
    let port = 20000 + (std::process::id() % 20000) as u16;
    let d = Daemon::start(&[
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--tcp-token-file",
        token_file.to_str().unwrap(),
    ]);
    let curl = |auth: &str| {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", auth])
            .arg(format!("http://127.0.0.1:{port}/v1/health"))
            .output()
            .expect("curl");
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(curl("X-None: 1"), "401");
    assert_eq!(
        curl("Authorization: Bearer s3cret-s3cret-s3cret-s3creX"),
        "401"
    );
    assert_eq!(
        curl("Authorization: Bearer s3cret-s3cret-s3cret-s3cret"),
        "200"
    );
    drop(d);
}

#[test]
fn a_job_runs_with_stdin_output_status_and_audit() {
    skip_unless!(SANDBOX);
    let _shared = SANDBOXES.read().unwrap_or_else(|e| e.into_inner());
    let d = Daemon::start(&[]);
    let cap = d.cap("agent-a", &["res.time:60s", "res.mem:256MiB"]);
    let a = d.post(
        "/v1/jobs",
        json!({"capability": cap, "stdin": "pipe",
               "argv": ["/bin/sh", "-c", "read line; echo got:$line; echo oops >&2; exit 3"]}),
    );
    assert_eq!(a.status, 201, "{}", a.error_text());
    let id = a.json()["id"].as_str().unwrap().to_string();
    let w = d
        .client
        .request_raw(
            "POST",
            &format!("/v1/jobs/{id}/stdin"),
            Some(b"hello\n".to_vec()),
            "application/octet-stream",
        )
        .unwrap();
    assert_eq!(w.status, 200, "{}", w.error_text());
    let status = d.wait(&id);
    assert_eq!(status["state"], "exited");
    assert_eq!(status["exit_code"], 3);
    assert_eq!(
        status["report"]["limits"]["memory_bytes"],
        256 * 1024 * 1024
    );
    assert_eq!(status["subject"], "agent-a");
    // The report's steps: the daemon's (admission, queue), then the shim's, each once.
    let mut steps: Vec<&str> = status["report"]["timings_us"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    steps.sort_unstable();
    let mut want = vec![
        "admit",
        "queue",
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
    want.sort_unstable();
    assert_eq!(steps, want, "{}", status["report"]["timings_us"]);
    let (out, err) = d.output(&id);
    assert_eq!(out, "got:hello\n");
    assert_eq!(err, "oops\n");
    let listed = d.get("/v1/jobs?state=exited").json();
    assert!(listed["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .any(|j| j["id"] == id.as_str()));
    let kinds = d.audit_kinds(&id);
    for k in [
        "run.intent",
        "capability.verified",
        "plan.compiled",
        "job.admitted",
        "job.started",
        "bundle.written",
        "sandbox.started",
        "run.exited",
        "job.finished",
    ] {
        assert!(kinds.iter().any(|x| x == k), "{k} missing from {kinds:?}");
    }
    assert_eq!(
        d.post(&format!("/v1/jobs/{id}/stdin"), json!({})).status,
        409
    );
    let v = d.get("/v1/audit/verify");
    assert_eq!(v.status, 200, "{}", String::from_utf8_lossy(&v.body));
}

#[test]
fn kill_stops_a_running_job_and_cancels_a_queued_one() {
    skip_unless!(SANDBOX);
    let _shared = SANDBOXES.read().unwrap_or_else(|e| e.into_inner());
    let d = Daemon::start(&["--max-jobs", "1", "--max-queue", "1"]);
    let cap = d.cap("agent-a", &["res.time:60s"]);
    let running = d.submit_ok(&cap, &["/bin/sleep", "30"]);
    let queued = d.submit(&cap, &["/bin/sleep", "30"]);
    assert_eq!(queued.status, 201);
    assert_eq!(queued.json()["state"], "queued");
    let queued = queued.json()["id"].as_str().unwrap().to_string();
    // The queue holds one: the next is turned away with a retry hint.
    let full = d.submit(&cap, TRUE);
    assert_eq!(full.status, 429, "{}", full.error_text());
    assert_eq!(full.json()["retry_after_s"], 1);
    let hinted = Command::new("curl")
        .args(["-s", "-D", "-", "-o", "/dev/null", "--unix-socket"])
        .arg(&d.client.socket)
        .args(["-H", "content-type: application/json", "-d"])
        .arg(json!({"capability": cap, "argv": TRUE}).to_string())
        .arg("http://covenantd/v1/jobs")
        .output()
        .expect("curl");
    assert!(String::from_utf8_lossy(&hinted.stdout)
        .to_ascii_lowercase()
        .contains("retry-after: 1"));

    let k = d.post(&format!("/v1/jobs/{queued}/kill"), json!({}));
    assert_eq!(
        (k.status, k.json()["state"].as_str()),
        (202, Some("cancelled"))
    );
    let k = d.post(
        &format!("/v1/jobs/{running}/kill"),
        json!({"signal": "KILL"}),
    );
    assert_eq!(k.status, 202, "{}", k.error_text());
    let s = d.wait(&running);
    assert_eq!(s["exit_code"], 137, "{s}");
    assert_eq!(d.wait(&queued)["state"], "cancelled");
    let k = d.post(
        &format!("/v1/jobs/{running}/kill"),
        json!({"signal": "BOGUS"}),
    );
    assert_eq!(
        (k.status, k.json()["field"].as_str()),
        (400, Some("signal"))
    );
    // A TERM is forwarded to the program.
    let t = d.submit_ok(&cap, &["/bin/sleep", "30"]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        d.post(&format!("/v1/jobs/{t}/kill"), json!({"signal": "TERM"}))
            .status,
        202
    );
    assert_eq!(d.wait(&t)["exit_code"], 128 + libc::SIGTERM);
}

#[test]
fn per_subject_quota_holds() {
    skip_unless!(SANDBOX);
    let _shared = SANDBOXES.read().unwrap_or_else(|e| e.into_inner());
    let d = Daemon::start(&["--per-subject", "2"]);
    let a = d.cap("agent-a", &["res.time:60s"]);
    let b = d.cap("agent-b", &["res.time:60s"]);
    let first = d.submit_ok(&a, &["/bin/sleep", "30"]);
    let _second = d.submit_ok(&a, &["/bin/sleep", "30"]);
    let third = d.submit(&a, TRUE);
    assert_eq!(third.status, 429);
    assert!(
        third.error_text().contains("agent-a"),
        "{}",
        third.error_text()
    );
    d.submit_ok(&b, TRUE);
    d.post(&format!("/v1/jobs/{first}/kill"), json!({}));
    d.wait(&first);
    d.submit_ok(&a, TRUE);
}

#[test]
fn a_job_outlives_the_client_that_submitted_it() {
    skip_unless!(SANDBOX);
    let _shared = SANDBOXES.read().unwrap_or_else(|e| e.into_inner());
    let d = Daemon::start(&[]);
    let cap = d.cap("agent-a", &["res.time:60s"]);
    let id = d.submit_ok(&cap, &["/bin/sh", "-c", "sleep 1; echo done"]);
    // A follower that goes away mid-stream.
    let mut follower = Command::new("curl")
        .args(["-s", "-N", "--unix-socket"])
        .arg(&d.client.socket)
        .arg(format!("http://covenantd/v1/jobs/{id}/output?follow=true"))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    follower.kill().unwrap();
    follower.wait().unwrap();
    let s = d.wait(&id);
    assert_eq!(
        (s["state"].as_str(), s["exit_code"].as_i64()),
        (Some("exited"), Some(0))
    );
    assert_eq!(d.output(&id).0, "done\n");
}

/// How many of `jobs` have a cgroup (in any hierarchy).
fn count_cgroups(jobs: &[String]) -> usize {
    jobs.iter()
        .filter(|j| !covenant_supervisor::daemon::recovery::cgroup_dirs(j).is_empty())
        .count()
}

#[test]
fn sigkill_of_the_daemon_with_20_jobs_running_then_restart_cleans_up_everything() {
    skip_unless!(SANDBOX);
    let _shared = SANDBOXES.read().unwrap_or_else(|e| e.into_inner());
    let mut d = Daemon::start(&["--max-jobs", "32"]);
    let cap = d.cap(
        "agent-a",
        &["res.time:120s", "res.mem:64MiB", "mem.write:notes"],
    );
    let ids: Vec<String> = (0..20)
        .map(|_| d.submit_ok(&cap, &["/bin/sleep", "600"]))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let running = d.get("/v1/jobs?state=running").json()["jobs"]
            .as_array()
            .unwrap()
            .len();
        if running == 20 && count_cgroups(&ids) == 20 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "20 jobs did not start: {running} running"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    d.kill9();
    d.spawn();
    for id in &ids {
        let s = d.get(&format!("/v1/jobs/{id}")).json();
        assert_eq!(s["state"], "interrupted", "{s}");
    }
    assert_eq!(count_cgroups(&ids), 0, "cgroups left behind");
    for sub in ["bundles", "agents", "runtime"] {
        let left: Vec<_> = std::fs::read_dir(d.home.path().join(sub))
            .map(|r| r.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{sub} left behind: {left:?}");
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(d.home.path().to_str().unwrap()),
        "mounts left behind"
    );
    let ps = Command::new("pgrep")
        .args(["-f", "^/bin/sleep 600$"])
        .output()
        .unwrap();
    assert!(
        ps.stdout.is_empty(),
        "sandboxed processes left: {}",
        String::from_utf8_lossy(&ps.stdout)
    );
    for id in &ids {
        let kinds = d.audit_kinds(id);
        assert!(
            kinds.iter().any(|k| k == "job.interrupted"),
            "{id}: {kinds:?}"
        );
    }
    let v = d.get("/v1/audit/verify");
    assert_eq!(v.status, 200, "{}", String::from_utf8_lossy(&v.body));
    d.terminate();
    d.verify_store();
}

/// The live shims `covenantd` (process `daemon`) has started: its children running
/// `covenantd shim`.
fn shims_of(daemon: u32) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if process_state(pid).is_none_or(|(state, ppid)| state == 'Z' || ppid != daemon) {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if args.get(1) == Some(&&b"shim"[..]) {
            pids.push(pid);
        }
    }
    pids
}

/// A process's state letter and parent, or none once it is gone.
fn process_state(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Waits until `pids` have all ended (gone, or zombies waiting to be reaped); fails the
/// test naming those still running after `secs`.
fn until_ended(pids: &[u32], secs: u64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let running: Vec<u32> = pids
            .iter()
            .copied()
            .filter(|p| process_state(*p).is_some_and(|(state, _)| state != 'Z'))
            .collect();
        if running.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: still running: {running:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the daemon's pool holds `n` idle shims; returns their ids.
fn idle_shims(d: &Daemon, n: usize) -> Vec<u32> {
    let pid = d.child.as_ref().unwrap().id();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let shims = shims_of(pid);
        if shims.len() == n {
            return shims;
        }
        assert!(
            Instant::now() < deadline,
            "the pool did not fill to {n} shims: {shims:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_descriptor_the_daemon_inherited_never_reaches_a_shim() {
    skip_unless!(SANDBOX);
    let home = traversable_dir("covenantd-");
    let marker = home.path().join("inherited-marker");
    let file = std::fs::File::create(&marker).unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_covenantd"));
    cmd.arg("--home")
        .arg(home.path())
        .env_remove("COVENANT_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // The daemon gets the file open without close-on-exec, as a careless parent's would.
    let keep = move || {
        nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
        )
        .map(drop)
        .map_err(std::io::Error::from)
    };
    // SAFETY: the hook makes one fcntl call on a descriptor of this process.
    unsafe { std::os::unix::process::CommandExt::pre_exec(&mut cmd, keep) };
    let mut child = cmd.spawn().unwrap();
    let holds = |pid: u32| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| std::fs::read_link(e.path()).is_ok_and(|t| t == marker))
    };
    // Its pool of idle shims (children of the daemon, each started with posix_spawn).
    let deadline = Instant::now() + Duration::from_secs(30);
    let shims = loop {
        let shims = shims_of(child.id());
        if !shims.is_empty() {
            break shims;
        }
        assert!(Instant::now() < deadline, "no shim was started");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(holds(child.id()), "the daemon did not inherit the file");
    for shim in &shims {
        assert!(
            !holds(*shim),
            "shim {shim} inherited the daemon's descriptor"
        );
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_pooled_shim_killed_before_its_job_is_never_handed_one() {
    skip_unless!(SANDBOX);
    let _shared = SANDBOXES.read().unwrap_or_else(|e| e.into_inner());
    let d = Daemon::start(&["--max-jobs", "2", "--shim-pool", "2"]);
    let cap = d.cap("agent-a", &["res.time:60s"]);
    let pooled = idle_shims(&d, 2);
    for pid in &pooled {
        // SAFETY: kill(2) on a process of the daemon this test started.
        assert_eq!(unsafe { libc::kill(*pid as i32, libc::SIGKILL) }, 0);
    }
    until_ended(&pooled, 20, "killed pooled shims");
    // Every idle shim is dead: the job gets a live one, and its stdin, asked for by
    // nobody, reads as /dev/null (`cat` ends at once).
    let id = d.submit_ok(&cap, &["/bin/sh", "-c", "cat; echo done"]);
    let status = d.wait(&id);
    assert_eq!(status["state"], "exited", "{status}");
    assert_eq!(status["exit_code"], 0, "{status}");
    assert_eq!(d.output(&id).0, "done\n");
    let shim = status["shim_pid"].as_u64().map(|p| p as u32);
    assert!(
        shim.is_some_and(|p| !pooled.contains(&p)),
        "the job ran on {shim:?}, one of the killed shims {pooled:?}"
    );
    let kinds = d.audit_kinds(&id);
    assert!(kinds.iter().any(|k| k == "job.finished"), "{kinds:?}");
    // The pool fills again, with new processes.
    let refilled = idle_shims(&d, 2);
    assert!(refilled.iter().all(|p| !pooled.contains(p)), "{refilled:?}");
    let v = d.get("/v1/audit/verify");
    assert_eq!(v.status, 200, "{}", String::from_utf8_lossy(&v.body));
}

#[test]
fn sigkill_of_the_daemon_with_idle_pooled_shims_leaves_nothing_behind() {
    skip_unless!(SANDBOX);
    let _shared = SANDBOXES.read().unwrap_or_else(|e| e.into_inner());
    let mut d = Daemon::start(&["--max-jobs", "8", "--shim-pool", "4"]);
    let cap = d.cap("agent-a", &["res.time:60s"]);
    // One job through the pool first, so the idle shims include ones started to refill it.
    let id = d.submit_ok(&cap, TRUE);
    assert_eq!(d.wait(&id)["exit_code"], 0);
    let pooled = idle_shims(&d, 4);
    d.kill9();
    until_ended(&pooled, 20, "idle shims of a daemon killed with SIGKILL");
    d.spawn();
    for sub in ["bundles", "staging", "agents", "runtime"] {
        let left: Vec<_> = std::fs::read_dir(d.home.path().join(sub))
            .map(|r| r.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{sub} left behind: {left:?}");
    }
    let id = d.submit_ok(&cap, TRUE);
    let status = d.wait(&id);
    assert_eq!(status["exit_code"], 0, "{status}");
    d.terminate();
    assert!(
        shims_of_any(&pooled),
        "a pooled shim outlived its daemon: {pooled:?}"
    );
    d.verify_store();
}

/// True when none of `pids` is a running process.
fn shims_of_any(pids: &[u32]) -> bool {
    pids.iter()
        .all(|p| process_state(*p).is_none_or(|(state, _)| state == 'Z'))
}

/// Starts `covenantd shim` with one end of a socket pair as its control socket and
/// `parent` as the daemon it must be a child of; returns what it wrote back on the socket
/// after a line that is not a job, and its exit code.
fn shim_answer(parent: u32) -> (String, Option<i32>) {
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let (mut ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let fd = theirs.as_raw_fd();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_covenantd"));
    cmd.args([
        "shim",
        "--control-fd",
        &fd.to_string(),
        "--parent",
        &parent.to_string(),
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    // SAFETY: fcntl is async-signal-safe; it only makes the socket inheritable.
    unsafe {
        cmd.pre_exec(move || {
            nix::fcntl::fcntl(
                fd,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
            )?;
            Ok(())
        })
    };
    let mut child = cmd.spawn().unwrap();
    drop(theirs);
    // Fails with EPIPE when the shim is already gone; what it answered is what counts.
    let _ = ours.write_all(b"not a job\n");
    let mut answer = String::new();
    let _ = ours.read_to_string(&mut answer);
    (answer, child.wait().unwrap().code())
}

#[test]
fn a_shim_whose_parent_is_not_the_daemon_it_names_exits_before_reading_a_job() {
    // Its parent is this test, not process 1: it must not serve, as a shim whose daemon
    // died before it could ask for the parent-death signal must not.
    let (answer, code) = shim_answer(1);
    assert_eq!(code, Some(125));
    assert_eq!(answer, "", "a shim of a dead daemon answered: {answer}");
    // The same shim with its real parent reads the line and says why it is no job.
    let (answer, code) = shim_answer(std::process::id());
    assert_eq!(code, Some(125));
    assert!(answer.contains("no job on the control channel"), "{answer}");
}

#[test]
fn sigterm_lets_jobs_finish_within_the_grace_then_kills_and_signs() {
    skip_unless!(SANDBOX);
    let _shared = SANDBOXES.read().unwrap_or_else(|e| e.into_inner());
    let mut d = Daemon::start(&["--grace", "1s"]);
    let cap = d.cap("agent-a", &["res.time:60s"]);
    let quick = d.submit_ok(&cap, &["/bin/sh", "-c", "sleep 0.3; echo finished"]);
    let slow = d.submit_ok(&cap, &["/bin/sleep", "60"]);
    std::thread::sleep(Duration::from_millis(150));
    let started = Instant::now();
    let status = d.terminate();
    assert!(status.success(), "covenantd exited with {status}");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(!d.home.path().join("covenantd.sock").exists());
    d.verify_store();
    d.spawn();
    assert_eq!(
        d.get(&format!("/v1/jobs/{quick}")).json()["state"],
        "exited"
    );
    assert_eq!(
        d.get(&format!("/v1/jobs/{slow}")).json()["state"],
        "interrupted"
    );
    let rows = d.get("/v1/audit?tail=400").json();
    let kinds: Vec<&str> = rows["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"daemon.stopping") && kinds.contains(&"daemon.stopped"),
        "{kinds:?}"
    );
}

/// Runs `script` in a job holding `scopes`; returns (exit code, stdout, stderr).
fn agent_run(d: &Daemon, scopes: &[&str], script: &str) -> (i64, String, String) {
    let cap = d.cap("agent-a", scopes);
    let id = d.submit_ok(&cap, &["/bin/sh", "-c", script]);
    let s = d.wait(&id);
    let (out, err) = d.output(&id);
    (s["exit_code"].as_i64().unwrap_or(-1), out, err)
}

const AGENT: &str = r#"T=$(cat /run/covenant/token)
call() { curl -s -o /dev/null -w '%{http_code}\n' --unix-socket /run/covenant/agent.sock -H "Authorization: Bearer $T" "$@"; }
body() { curl -s --unix-socket /run/covenant/agent.sock -H "Authorization: Bearer $T" "$@"; }
"#;

#[test]
fn the_agent_socket_exists_only_with_its_scope_and_holds_to_the_grant() {
    skip_unless!(SANDBOX);
    let _shared = SANDBOXES.read().unwrap_or_else(|e| e.into_inner());
    if !Path::new("/usr/bin/curl").exists() {
        panic!("/usr/bin/curl is needed inside the sandbox (install curl)");
    }
    let d = Daemon::start(&[]);
    // No scope, no socket.
    let (code, out, _) = agent_run(
        &d,
        &["res.time:30s"],
        "ls /run/covenant 2>&1; test -e /run/covenant/agent.sock",
    );
    assert_ne!(code, 0, "{out}");

    let scopes = [
        "res.time:60s",
        "res.pids:32",
        "mem.write:notes",
        "mem.read:shared",
        "agent:audit",
        "agent:spawn",
    ];
    let script = format!(
        r#"{AGENT}
call -H content-type:application/json -d '{{"namespace":"notes","text":"the build is green"}}' http://a/v1/mem
call -H content-type:application/json -d '{{"namespace":"secrets","text":"x"}}' http://a/v1/mem
call "http://a/v1/mem?namespace=notes&q=green"
call "http://a/v1/mem?namespace=secrets"
call -H content-type:application/json -d '{{"kind":"plan.step","body":{{"n":1}}}}' http://a/v1/audit
curl -s -o /dev/null -w '%{{http_code}}\n' --unix-socket /run/covenant/agent.sock -H "Authorization: Bearer wrong" http://a/v1/self
call -H content-type:application/json -d '{{"capability":"","argv":["/bin/true"],"manifest":{{"version":1,"net":"host"}}}}' http://a/v1/jobs
call -H content-type:application/json -d '{{"capability":"","argv":["/bin/true"],"manifest":{{"version":1,"limits":{{"pids":500}}}}}}' http://a/v1/jobs
call -H content-type:application/json -d '{{"capability":"cov1.AAAA","argv":["/bin/true"]}}' http://a/v1/jobs
R=$(body -H content-type:application/json -d '{{"capability":"","argv":["/bin/echo","from-child"]}}' http://a/v1/jobs)
echo "$R"
ID=$(echo "$R" | sed 's/.*"id":"\([^"]*\)".*/\1/')
body "http://a/v1/jobs/$ID?wait=30" > /dev/null
body -H content-type:application/json -d '{{"capability":"","argv":["/bin/sleep","600"]}}' http://a/v1/jobs
echo
ls -ld /run/covenant /run/covenant/token
echo x > /run/covenant/token || echo token-is-read-only
"#
    );
    let (code, out, err) = agent_run(&d, &scopes, &script);
    assert_eq!(code, 0, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        &lines[..9],
        &["201", "403", "200", "403", "201", "401", "403", "403", "400"],
        "{out}"
    );
    let child: Value = serde_json::from_str(lines[9]).unwrap();
    let child = child["id"].as_str().unwrap();
    let s = d.wait(child);
    assert_eq!(s["state"], "exited");
    assert_eq!(
        s["parent"].as_str().map(|p| p.starts_with("job-")),
        Some(true)
    );
    // The child's limits count against the parent's: it gets what is left.
    assert!(s["report"]["limits"]["pids"].as_u64().unwrap() <= 31, "{s}");
    assert_eq!(d.output(child).0, "from-child\n");
    // A child does not outlive its parent.
    let orphan: Value = serde_json::from_str(lines[10]).unwrap();
    let orphan = d.wait(orphan["id"].as_str().unwrap());
    assert_ne!(orphan["exit_code"], 0, "{orphan}");
    assert!(
        orphan["reason"].as_str().unwrap_or("").contains("parent"),
        "{orphan}"
    );
    assert!(out.contains("token-is-read-only"), "{out}");
    let rows = d.get("/v1/audit?tail=500").json();
    let agent_event = rows["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == "agent.plan.step")
        .expect("agent event");
    assert_eq!(agent_event["body"]["authored_by"], "agent");
    assert_eq!(agent_event["body"]["body"]["n"], 1);
    let mem = d.get("/v1/mem?namespace=notes&q=green").json();
    assert_eq!(mem["items"].as_array().unwrap().len(), 1, "{mem}");
}

#[test]
fn an_agent_cannot_flood_the_store() {
    skip_unless!(SANDBOX);
    let _shared = SANDBOXES.read().unwrap_or_else(|e| e.into_inner());
    let d = Daemon::start(&["--agent-writes", "3"]);
    let script = format!(
        r#"{AGENT}
for i in 1 2 3 4 5; do call -H content-type:application/json -d '{{"kind":"spam"}}' http://a/v1/audit; done
call -H content-type:application/json -d '{{"namespace":"notes","text":"one more"}}' http://a/v1/mem
"#
    );
    let (code, out, err) = agent_run(
        &d,
        &["res.time:30s", "agent:audit", "mem.write:notes"],
        &script,
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["201", "201", "201", "429", "429", "429"]
    );
    let rows = d.get("/v1/audit?tail=500").json();
    let spam = rows["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == "agent.spam")
        .count();
    assert_eq!(spam, 3);
}

#[test]
fn covenant_ctl_runs_through_the_daemon_with_the_same_exit_codes() {
    skip_unless!(SANDBOX);
    let _shared = SANDBOXES.read().unwrap_or_else(|e| e.into_inner());
    let d = Daemon::start(&[]);
    // The operator key of this home signs the request; the daemon must trust it first.
    let run = |args: &[&str], stdin: &str| {
        let mut child = Command::new(ctl())
            .args(args)
            .env("COVENANT_HOME", d.home.path())
            .env_remove("COVENANT_SOCKET")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let refused = run(&["--daemon", "run", "--", "/bin/true"], "");
    assert_eq!(refused.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not a trusted key"));
    let trust = run(
        &[
            "key",
            "trust",
            d.home.path().join("operator.key").to_str().unwrap(),
            "--name",
            "operator",
        ],
        "",
    );
    assert!(
        trust.status.success(),
        "{}",
        String::from_utf8_lossy(&trust.stderr)
    );
    let out = run(
        &["run", "--", "/bin/sh", "-c", "cat; echo e >&2; exit 7"],
        "piped\n",
    );
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "piped\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("e\n"));
    let report = d.home.path().join("report.json");
    let out = run(
        &[
            "--daemon",
            "run",
            "--timeout",
            "1s",
            "--report",
            report.to_str().unwrap(),
            "--",
            "/bin/sleep",
            "10",
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(124));
    assert!(String::from_utf8_lossy(&out.stderr).contains("timeout"));
    let r: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(r["timed_out"], true);
    let embedded = run(
        &[
            "--embedded",
            "run",
            "--timeout",
            "1s",
            "--",
            "/bin/sleep",
            "10",
        ],
        "",
    );
    assert_eq!(embedded.status.code(), Some(124));
    // Runs went through the daemon: its jobs table has them.
    let jobs = d.get("/v1/jobs").json();
    assert_eq!(jobs["jobs"].as_array().unwrap().len(), 2, "{jobs}");
}

#[test]
fn socket_activation_serves_the_socket_systemd_passes_and_leaves_it() {
    const ACTIVATE: &str = "/usr/bin/systemd-socket-activate";
    skip_unless!(&[Need::File {
        path: ACTIVATE,
        package: "systemd"
    }]);
    let tool = Path::new(ACTIVATE);
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("activated.sock");
    let mut child = Command::new(tool)
        .arg("-l")
        .arg(&socket)
        .arg(env!("CARGO_BIN_EXE_covenantd"))
        .arg("--home")
        .arg(dir.path().join("home"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let client = Client::new(&socket);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !socket.exists() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    // The first connection starts the daemon, which answers on the passed socket.
    let health = client.request("GET", "/v1/health", None).unwrap();
    assert_eq!(health.status, 200);
    let probe = Command::new(env!("CARGO_BIN_EXE_covenantd"))
        .arg("health")
        .arg("--socket")
        .arg(&socket)
        .output()
        .unwrap();
    assert!(probe.status.success());
    assert!(!dir.path().join("home/covenantd.sock").exists());
    // SAFETY: kill(2) on our own child (the daemon, after exec).
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    assert!(
        socket.exists(),
        "the passed socket belongs to systemd and stays"
    );
}

#[test]
fn after_a_daemon_sigkill_a_runc_container_that_kept_running_is_killed_on_restart() {
    skip_unless!(SANDBOX);
    let _shared = SANDBOXES.read().unwrap_or_else(|e| e.into_inner());
    let runc = Path::new("/usr/sbin/runc");
    let runc = if runc.exists() {
        runc.to_path_buf()
    } else {
        PathBuf::from("/usr/bin/runc")
    };
    if !runc.exists() {
        panic!("runc is needed (apt-get install runc)");
    }
    let mut d = Daemon::start(&[]);
    let runner = format!("oci:{}", runc.display());
    let cap = d.cap(
        "agent-a",
        &["res.time:120s", "res.pids:16", &format!("runner:{runner}")],
    );
    let a = d.post(
        "/v1/jobs",
        json!({"capability": cap, "argv": ["/bin/sleep", "700"], "runner": runner}),
    );
    assert_eq!(a.status, 201, "{}", a.error_text());
    let id = a.json()["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    let sleeping = || {
        let out = Command::new("pgrep")
            .args(["-f", "^/bin/sleep 700$"])
            .output()
            .unwrap();
        !out.stdout.is_empty()
    };
    while !sleeping() {
        assert!(Instant::now() < deadline, "the container did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    d.kill9();
    std::thread::sleep(Duration::from_millis(300));
    // runc's container is not a child of the shim: it outlives the daemon.
    assert!(
        sleeping(),
        "expected the runc container to outlive its daemon"
    );
    d.spawn();
    assert!(
        !sleeping(),
        "the restarted daemon left the container running"
    );
    let s = d.get(&format!("/v1/jobs/{id}")).json();
    assert_eq!(s["state"], "interrupted", "{s}");
    assert_eq!(count_cgroups(std::slice::from_ref(&id)), 0);
    let runtime: Vec<_> = std::fs::read_dir(d.home.path().join("runtime"))
        .map(|r| r.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(runtime.is_empty(), "runtime state left: {runtime:?}");
    let rows = d.get("/v1/audit?tail=100").json();
    let interrupted = rows["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["kind"] == "job.interrupted" && r["body"]["job"] == id.as_str())
        .expect("job.interrupted row");
    assert!(
        interrupted["body"]["cleaned"]["processes_killed"]
            .as_u64()
            .unwrap()
            >= 1,
        "{interrupted}"
    );
}

#[test]
fn memory_endpoints_and_audit_paging() {
    let d = Daemon::start(&[]);
    let put = d.post("/v1/mem", json!({"namespace": "team/notes", "text": "the cache key includes the rust version", "tier": "long-term", "metadata": {"source": "ci"}}));
    assert_eq!(put.status, 201, "{}", put.error_text());
    let id = put.json()["id"].as_str().unwrap().to_string();
    let got = d.get(&format!("/v1/mem/{id}")).json();
    assert_eq!(got["text"], "the cache key includes the rust version");
    assert_eq!(got["tier"], "long-term");
    let found = d
        .get("/v1/mem?namespace=team%2Fnotes&q=%22rust%20version%22")
        .json();
    assert_eq!(found["items"].as_array().unwrap().len(), 1, "{found}");
    let listed = d.get("/v1/mem?namespace=team/notes&tier=long-term").json();
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);
    let bad = d.post(
        "/v1/mem",
        json!({"namespace": "x", "text": "t", "tier": "forever"}),
    );
    assert_eq!(
        (bad.status, bad.json()["field"].as_str()),
        (400, Some("tier"))
    );
    let bad = d.post("/v1/mem", json!({"namespace": "x", "text": ""}));
    assert_eq!(bad.status, 400);
    assert_eq!(d.get("/v1/mem?tier=sometimes").status, 400);
    let del = d
        .client
        .request("DELETE", &format!("/v1/mem/{id}"), None)
        .unwrap();
    assert_eq!(del.status, 200);
    assert_eq!(d.get(&format!("/v1/mem/{id}")).status, 404);
    assert_eq!(
        d.client
            .request("DELETE", &format!("/v1/mem/{id}"), None)
            .unwrap()
            .status,
        404
    );
    // The memory writes are in the chain, without their text.
    let rows = d.get("/v1/audit?after=0&limit=10000").json();
    let rows = rows["rows"].as_array().unwrap();
    assert!(rows.iter().any(|r| r["kind"] == "memory.put"));
    assert!(rows.iter().any(|r| r["kind"] == "memory.removed"));
    assert!(!rows
        .iter()
        .any(|r| r["body"].to_string().contains("cache key includes")));
    let seqs: Vec<u64> = rows.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    let page = d
        .get(&format!("/v1/audit?after={}&limit=2", seqs[0]))
        .json();
    let page: Vec<u64> = page["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(page, vec![seqs[0] + 1, seqs[0] + 2]);
    assert_eq!(d.get("/v1/audit?tail=abc").json()["field"], "tail");
    assert_eq!(d.get("/v1/audit/verify").json()["ok"], true);
}

#[test]
fn covenant_ctl_waits_out_a_full_queue() {
    skip_unless!(SANDBOX);
    let _shared = SANDBOXES.read().unwrap_or_else(|e| e.into_inner());
    let d = Daemon::start(&["--max-jobs", "1", "--max-queue", "0"]);
    let operator = d.home.path().join("operator.key");
    let ctl_in_home = |args: &[&str]| {
        Command::new(ctl())
            .args(args)
            .env("COVENANT_HOME", d.home.path())
            .env_remove("COVENANT_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // Creates the operator key, then trusts it.
    let _ = ctl_in_home(&["--embedded", "plan", "--", "/bin/true"]).wait_with_output();
    let t = ctl_in_home(&[
        "key",
        "trust",
        operator.to_str().unwrap(),
        "--name",
        "operator",
    ])
    .wait_with_output()
    .unwrap();
    assert!(t.status.success(), "{}", String::from_utf8_lossy(&t.stderr));
    let cap = d.cap("agent-a", &["res.time:60s"]);
    let blocker = d.submit_ok(&cap, &["/bin/sleep", "30"]);
    let waiting = ctl_in_home(&["--daemon", "run", "--", "/bin/echo", "after the wait"]);
    std::thread::sleep(Duration::from_millis(1500));
    d.post(&format!("/v1/jobs/{blocker}/kill"), json!({}));
    let out = waiting.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "after the wait\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("retrying"));
}

#[test]
fn all_sandboxes_together_stay_under_the_daemons_parent_cgroup_limit() {
    skip_unless!(SANDBOX);
    let _alone = SANDBOXES.write().unwrap_or_else(|e| e.into_inner());
    let layout =
        covenant_runners::native::CgroupLayout::detect(Path::new("/sys/fs/cgroup")).unwrap();
    let pids_max = match &layout {
        covenant_runners::native::CgroupLayout::V2 { root } => root.join("covenant/pids.max"),
        covenant_runners::native::CgroupLayout::V1 { pids, .. } => {
            pids.as_ref().unwrap().join("covenant/pids.max")
        }
    };
    struct Reset(PathBuf);
    impl Drop for Reset {
        fn drop(&mut self) {
            let _ = std::fs::write(&self.0, "max");
        }
    }
    let _reset = Reset(pids_max.clone());
    // The program forks 40 sleepers, counting the forks that succeed; its own pids limit
    // (64) would allow them all.
    let forker = "import os, time\nn = 0\nfor i in range(40):\n    try:\n        pid = os.fork()\n    except OSError:\n        break\n    if pid == 0:\n        time.sleep(2)\n        os._exit(0)\n    n += 1\nprint(n)\n";
    let run = |d: &Daemon| {
        let cap = d.cap("agent-a", &["res.time:60s", "res.pids:64"]);
        let id = d.submit_ok(&cap, &["/usr/bin/python3", "-c", forker]);
        d.wait(&id);
        d.output(&id).0.trim().parse::<u32>().unwrap()
    };
    {
        let unlimited = Daemon::start(&[]);
        assert_eq!(
            run(&unlimited),
            40,
            "without a parent limit every fork succeeds"
        );
    }
    let d = Daemon::start(&["--cgroup-pids", "20"]);
    assert_eq!(std::fs::read_to_string(&pids_max).unwrap().trim(), "20");
    let forked = run(&d);
    assert!(
        forked < 20,
        "{forked} forks succeeded under a parent limit of 20"
    );
}

/// A directory others can enter, under a fresh temporary one, for host paths a job names.
fn shared_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// Root's secret: a 0700 directory holding a file.
fn secret_dir(base: &Path) -> PathBuf {
    let secret = base.join("secret");
    std::fs::create_dir(&secret).unwrap();
    std::fs::write(secret.join("key"), "root's").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o700)).unwrap();
    secret
}

fn submit_in(d: &Daemon, cap: &str, workspace: &Path, script: &str) -> Answer {
    d.post(
        "/v1/jobs",
        json!({"capability": cap, "argv": ["/bin/sh", "-c", script],
               "manifest": {"version": 1, "workspace": workspace}}),
    )
}

#[test]
fn a_runner_is_authority_the_capability_must_name() {
    skip_unless!(SANDBOX);
    let _shared = SANDBOXES.read().unwrap_or_else(|e| e.into_inner());
    let d = Daemon::start(&[]);
    let base = shared_dir();
    let marker = base.path().join("ran-as-root");
    let planted = base.path().join("runtime");
    std::fs::write(&planted, format!("#!/bin/sh\ntouch {}\n", marker.display())).unwrap();
    std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o755)).unwrap();
    let post = |cap: &str, runner: &str| {
        d.post(
            "/v1/jobs",
            json!({"capability": cap, "argv": TRUE, "runner": runner}),
        )
    };
    // Any valid capability used to be enough to pick any binary.
    let cap = d.cap("agent-a", &["res.time:60s"]);
    for runner in [
        "oci:/usr/sbin/runc".to_string(),
        "gvisor".into(),
        format!("oci:{}", planted.display()),
    ] {
        let a = post(&cap, &runner);
        assert_eq!(a.status, 403, "{runner}: {}", a.error_text());
        assert!(
            a.error_text().contains(&format!("runner:{runner}")),
            "{runner}: {}",
            a.error_text()
        );
    }
    // A grant naming one binary does not cover another, nor a path beside it.
    let runc = d.cap("agent-a", &["res.time:60s", "runner:oci:/usr/sbin/runc"]);
    let a = post(&runc, "oci:/usr/sbin/runc2");
    assert_eq!(a.status, 403, "{}", a.error_text());
    let a = post(&runc, "oci:/usr/sbin/../sbin/runc");
    assert_eq!(a.status, 400, "{}", a.error_text());
    // Even granted by name, a binary others could write is not run as root.
    let granted = d.cap(
        "agent-a",
        &["res.time:60s", &format!("runner:oci:{}", planted.display())],
    );
    let a = post(&granted, &format!("oci:{}", planted.display()));
    assert_eq!(a.status, 403, "{}", a.error_text());
    assert_eq!(a.json()["field"], "runner", "{}", a.error_text());
    assert!(a.error_text().contains("not trusted"), "{}", a.error_text());
    std::thread::sleep(Duration::from_millis(300));
    assert!(!marker.exists(), "the planted runtime ran");
    // An imported image as the root is a choice too.
    let a = d.post(
        "/v1/jobs",
        json!({"capability": cap, "argv": TRUE, "manifest": {"version": 1, "rootfs": "image:busy:1"}}),
    );
    assert_eq!(a.status, 403, "{}", a.error_text());
    assert!(
        a.error_text().contains("rootfs:image:busy:1"),
        "{}",
        a.error_text()
    );
}

#[test]
fn a_granted_path_that_is_a_symlink_grants_nothing_beyond_its_name() {
    skip_unless!(SANDBOX);
    let _shared = SANDBOXES.read().unwrap_or_else(|e| e.into_inner());
    let d = Daemon::start(&[]);
    let base = shared_dir();
    let secret = secret_dir(base.path());
    let ws = base.path().join("ws");
    std::os::unix::fs::symlink(&secret, &ws).unwrap();
    let cap = d.cap(
        "agent-a",
        &["res.time:60s", &format!("fs.write:{}", ws.display())],
    );
    // The granted name is a symlink now: it is not followed.
    let a = submit_in(&d, &cap, &ws, "touch /workspace/planted");
    assert_eq!(a.status, 400, "{}", a.error_text());
    assert!(a.error_text().contains("symlink"), "{}", a.error_text());
    // Its target is not what was granted.
    let a = submit_in(&d, &cap, &secret, "touch /workspace/planted");
    assert_eq!(a.status, 403, "{}", a.error_text());
    // Nor is anything reached through it.
    let a = submit_in(&d, &cap, &ws.join("."), "touch /workspace/planted");
    assert_eq!(a.status, 400, "{}", a.error_text());
    assert!(!secret.join("planted").exists());
    // A refusal outside the grant says nothing about whether the path exists.
    let narrow = d.cap("agent-a", &["res.time:60s", "fs.write:/nonexistent"]);
    let exists = submit_in(&d, &narrow, Path::new("/root"), "true");
    let missing = submit_in(&d, &narrow, Path::new("/root/no-such-dir"), "true");
    assert_eq!(exists.status, 403);
    assert_eq!(missing.status, 403);
    assert_eq!(
        exists.error_text().replace("/root", "P"),
        missing.error_text().replace("/root/no-such-dir", "P")
    );
}

#[test]
fn a_queued_jobs_workspace_swapped_after_submission_is_refused_at_start() {
    skip_unless!(SANDBOX);
    let _shared = SANDBOXES.read().unwrap_or_else(|e| e.into_inner());
    let d = Daemon::start(&["--max-jobs", "1"]);
    let base = shared_dir();
    let secret = secret_dir(base.path());
    let ws = base.path().join("ws");
    std::fs::create_dir(&ws).unwrap();
    let cap = d.cap(
        "agent-a",
        &["res.time:60s", &format!("fs.write:{}", ws.display())],
    );
    for swap in ["symlink", "directory"] {
        let blocker = d.submit_ok(&cap, &["/bin/sleep", "1"]);
        let a = submit_in(&d, &cap, &ws, "touch /workspace/planted");
        assert_eq!(a.status, 201, "{}", a.error_text());
        let id = a.json()["id"].as_str().unwrap().to_string();
        assert_eq!(d.get(&format!("/v1/jobs/{id}")).json()["state"], "queued");
        let old = base.path().join(format!("ws-{swap}"));
        std::fs::rename(&ws, &old).unwrap();
        match swap {
            "symlink" => std::os::unix::fs::symlink(&secret, &ws).unwrap(),
            _ => std::fs::create_dir(&ws).unwrap(),
        }
        d.wait(&blocker);
        let s = d.wait(&id);
        assert_ne!(s["state"], "exited", "{s}");
        let reason = s["reason"].as_str().unwrap_or("");
        let expected = if swap == "symlink" {
            "symlink"
        } else {
            "replaced"
        };
        assert!(reason.contains(expected), "{swap}: {s}");
        assert!(!secret.join("planted").exists());
        assert!(!ws.join("planted").exists());
        std::fs::remove_file(&ws)
            .or_else(|_| std::fs::remove_dir(&ws))
            .unwrap();
        std::fs::rename(&old, &ws).unwrap();
    }
    // Nothing staged for the refused jobs is left behind.
    let staging = d.home.path().join("staging");
    let left: Vec<_> = std::fs::read_dir(&staging)
        .map(|r| r.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn an_agent_cannot_swap_a_sub_intents_path_between_submission_and_start() {
    skip_unless!(SANDBOX);
    let _shared = SANDBOXES.read().unwrap_or_else(|e| e.into_inner());
    if !Path::new("/usr/bin/curl").exists() {
        panic!("/usr/bin/curl is needed inside the sandbox (install curl)");
    }
    let d = Daemon::start(&["--max-jobs", "2"]);
    let base = shared_dir();
    let secret = secret_dir(base.path());
    let ws = base.path().join("ws");
    std::fs::create_dir(&ws).unwrap();
    std::fs::set_permissions(&ws, std::fs::Permissions::from_mode(0o777)).unwrap();
    let scopes = [
        "res.time:60s".to_string(),
        "agent:spawn".into(),
        format!("fs.write:{}", ws.display()),
    ];
    let scopes: Vec<&str> = scopes.iter().map(String::as_str).collect();
    let cap = d.cap("agent-a", &scopes);
    // The other slot is taken, so the sub-intent waits in the queue.
    let blocker = d.submit_ok(&cap, &["/bin/sleep", "2"]);
    let sub = ws.join("sub");
    let script = format!(
        r#"{AGENT}
mkdir /workspace/sub
# Straight away: a symlink is refused at submission.
ln -s {secret} /workspace/direct
body -H content-type:application/json -d '{{"capability":"","argv":["/bin/touch","/workspace/planted"],"manifest":{{"version":1,"workspace":"{ws}/direct"}}}}' http://a/v1/jobs
echo
# A sub-intent whose workspace is a git directory would write its hooks and config.
git init -q /workspace/repo
body -H content-type:application/json -d '{{"capability":"","argv":["/bin/true"],"manifest":{{"version":1,"workspace":"{ws}/repo/.git"}}}}' http://a/v1/jobs
echo
R=$(body -H content-type:application/json -d '{{"capability":"","argv":["/bin/touch","/workspace/planted"],"manifest":{{"version":1,"workspace":"{sub}"}}}}' http://a/v1/jobs)
ID=$(echo "$R" | sed 's/.*"id":"\([^"]*\)".*/\1/')
rmdir /workspace/sub && ln -s {secret} /workspace/sub
body "http://a/v1/jobs/$ID?wait=30"
"#,
        secret = secret.display(),
        ws = ws.display(),
        sub = sub.display(),
    );
    let id = submit_in(&d, &cap, &ws, &script);
    assert_eq!(id.status, 201, "{}", id.error_text());
    let id = id.json()["id"].as_str().unwrap().to_string();
    d.wait(&blocker);
    let s = d.wait(&id);
    let (out, err) = d.output(&id);
    assert_eq!(s["exit_code"], 0, "{out}{err}");
    let mut lines = out.lines().filter(|l| !l.trim().is_empty());
    let direct: Value = serde_json::from_str(lines.next().unwrap_or(""))
        .unwrap_or_else(|e| panic!("{e}: {out}{err}"));
    assert!(
        direct["error"].as_str().unwrap_or("").contains("symlink"),
        "{out}"
    );
    let git_dir: Value = serde_json::from_str(lines.next().unwrap_or(""))
        .unwrap_or_else(|e| panic!("{e}: {out}{err}"));
    assert!(
        git_dir["error"].as_str().unwrap_or("").contains(".git"),
        "{out}"
    );
    let child: Value = serde_json::from_str(lines.next().unwrap_or(""))
        .unwrap_or_else(|e| panic!("{e}: {out}{err}"));
    assert_ne!(child["state"], "exited", "{out}");
    assert!(
        child["reason"].as_str().unwrap_or("").contains("symlink"),
        "{out}"
    );
    assert!(!secret.join("planted").exists());
}

// ---- Hostile clients: the daemon stays up, and each caller reaches only its own ----

/// Runs `f` on its own thread; fails the test when it has not returned within `secs`.
fn within<T: Send + 'static>(secs: u64, what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(secs))
        .unwrap_or_else(|_| panic!("{what} did not return within {secs} s: the daemon hangs"))
}

/// How many descriptors process `pid` holds.
fn fds_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The sequence number of the newest audit row.
fn last_seq(d: &Daemon) -> u64 {
    d.get("/v1/audit?tail=1").json()["rows"][0]["seq"]
        .as_u64()
        .unwrap()
}

/// Credentials a client process runs with: uid, primary gid, supplementary groups.
#[derive(Clone, Copy)]
struct As {
    uid: u32,
    gid: u32,
    groups: &'static [u32],
}

/// The socket's group in these tests, and the admin group (numbers no account uses).
const SOCKET_GID: u32 = 64999;
const ADMIN_GID: u32 = 64998;
const VICTIM: As = As {
    uid: 64990,
    gid: SOCKET_GID,
    groups: &[SOCKET_GID],
};
const MEMBER: As = As {
    uid: 64991,
    gid: SOCKET_GID,
    groups: &[SOCKET_GID],
};
const OUTSIDER: As = As {
    uid: 64992,
    gid: 64992,
    groups: &[64992],
};
const ADMIN: As = As {
    uid: 64993,
    gid: SOCKET_GID,
    groups: &[SOCKET_GID, ADMIN_GID],
};

/// `program` started with `who`'s credentials (groups, then gid, then uid are dropped to
/// in the child before it execs).
fn command_as(who: As, program: &str) -> Command {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(program);
    // Built before the fork: the hook allocates nothing.
    let groups: Vec<nix::unistd::Gid> = who
        .groups
        .iter()
        .map(|&g| nix::unistd::Gid::from_raw(g))
        .collect();
    let drop_to = move || -> std::io::Result<()> {
        nix::unistd::setgroups(&groups)?;
        nix::unistd::setgid(nix::unistd::Gid::from_raw(who.gid))?;
        nix::unistd::setuid(nix::unistd::Uid::from_raw(who.uid))?;
        Ok(())
    };
    // SAFETY: the hook only makes async-signal-safe calls (setgroups, setgid, setuid).
    unsafe { cmd.pre_exec(drop_to) };
    cmd
}

/// One request with curl as `who`; (status, body). Status 0: no connection.
fn curl_as(
    who: As,
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &[String],
) -> (u16, String) {
    let mut cmd = command_as(who, "curl");
    cmd.args(["-s", "-w", "\n%{http_code}", "-X", method, "--unix-socket"])
        .arg(socket);
    for h in headers {
        cmd.args(["-H", h]);
    }
    if let Some(b) = body {
        cmd.args(["-H", "content-type: application/json", "--data-binary", b]);
    }
    let out = cmd
        .arg(format!("http://covenantd{path}"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[test]
fn status_wait_on_a_forgotten_job_neither_hangs_nor_stops_the_daemon() {
    skip_unless!(SANDBOX);
    let _shared = SANDBOXES.read().unwrap_or_else(|e| e.into_inner());
    // The daemon keeps one finished job in memory: the first is forgotten once the
    // second ends, and is then only in the store.
    let mut d = Daemon::start(&["--keep-finished", "1"]);
    let cap = d.cap("agent-a", &["res.time:60s"]);
    let first = d.submit_ok(&cap, TRUE);
    d.wait(&first);
    let second = d.submit_ok(&cap, TRUE);
    d.wait(&second);
    let started = Instant::now();
    let client = d.client.clone();
    let path = format!("/v1/jobs/{first}?wait=5");
    let a = within(15, "GET ?wait=5 of a forgotten job", move || {
        client.request("GET", &path, None).unwrap()
    });
    assert_eq!(a.status, 200, "{}", a.error_text());
    assert_eq!(a.json()["state"], "exited");
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(2), "answered after {waited:?}");
    // An id the daemon never held, too.
    let client = d.client.clone();
    let a = within(15, "GET ?wait=5 of an unknown job", move || {
        client
            .request("GET", "/v1/jobs/job-0000000000000000?wait=5", None)
            .unwrap()
    });
    assert_eq!(a.status, 404);
    let client = d.client.clone();
    let health = within(10, "health after the waits", move || {
        client.request("GET", "/v1/health", None).unwrap()
    });
    assert_eq!(health.status, 200);
    let pid = d.child.as_ref().unwrap().id();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = d.child.as_mut().unwrap().try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "SIGTERM went unanswered");
        std::thread::sleep(Duration::from_millis(20));
    };
    d.child = None;
    assert!(status.success(), "{status}");
    eprintln!(
        "?wait=5 on a forgotten job answered in {} ms; health and SIGTERM answered",
        waited.as_millis()
    );
}

#[test]
fn a_socket_member_reaches_only_its_own_jobs_and_memory_through_mem_scopes() {
    skip_unless!(SANDBOX);
    let _shared = SANDBOXES.read().unwrap_or_else(|e| e.into_inner());
    let d = Daemon::start(&["--admin-group", &ADMIN_GID.to_string()]);
    let socket = d.client.socket.clone();
    // The deployment's socket group.
    std::os::unix::fs::chown(&socket, None, Some(SOCKET_GID)).unwrap();
    let call = |who: As, method: &str, path: &str, body: Option<&str>| {
        curl_as(who, &socket, method, path, body, &[])
    };
    let with_cap = |who: As, method: &str, path: &str, body: Option<&str>, cap: &str| {
        curl_as(
            who,
            &socket,
            method,
            path,
            body,
            &[format!("covenant-capability: {cap}")],
        )
    };
    let cap = d.cap("agent-a", &["res.time:60s"]);
    let submit = json!({"capability": cap, "stdin": "pipe",
        "argv": ["/bin/sh", "-c", "cat; echo victim-secret"]})
    .to_string();
    let (status, body) = call(VICTIM, "POST", "/v1/jobs", Some(&submit));
    assert_eq!(status, 201, "{body}");
    let victim_job = serde_json::from_str::<Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();

    // A non-member cannot connect at all.
    assert_eq!(call(OUTSIDER, "GET", "/v1/health", None).0, 0);

    // A member sees nothing of the other uid's job and cannot touch it.
    let job = format!("/v1/jobs/{victim_job}");
    for (method, path, body) in [
        ("GET", job.clone(), None),
        ("GET", format!("{job}?wait=1"), None),
        ("GET", format!("{job}/output"), None),
        ("POST", format!("{job}/stdin"), Some("stolen\n")),
        ("POST", format!("{job}/kill"), Some("{}")),
    ] {
        let (status, answer) = call(MEMBER, method, &path, body);
        assert_eq!(status, 404, "{method} {path}: {answer}");
        assert!(!answer.contains("victim-secret"), "{answer}");
    }
    let (status, mine) = call(
        MEMBER,
        "POST",
        "/v1/jobs",
        Some(&json!({"capability": cap, "argv": TRUE}).to_string()),
    );
    assert_eq!(status, 201, "{mine}");
    let mine = serde_json::from_str::<Value>(&mine).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        call(MEMBER, "GET", &format!("/v1/jobs/{mine}?wait=30"), None).0,
        200
    );
    let (_, listed) = call(MEMBER, "GET", "/v1/jobs", None);
    let listed: Value = serde_json::from_str(&listed).unwrap();
    let ids: Vec<&str> = listed["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [mine.as_str()], "a member lists only its own jobs");
    assert_eq!(call(MEMBER, "GET", "/v1/audit?tail=5", None).0, 403);

    // Memory on the operator socket needs a mem scope.
    let put = d.post(
        "/v1/mem",
        json!({"namespace": "team", "text": "the deploy key rotates monthly"}),
    );
    assert_eq!(put.status, 201, "{}", put.error_text());
    let item = put.json()["id"].as_str().unwrap().to_string();
    let (status, answer) = call(MEMBER, "GET", "/v1/mem?namespace=team", None);
    assert_eq!(status, 403, "{answer}");
    assert!(answer.contains("mem.read"), "{answer}");
    assert_eq!(call(MEMBER, "GET", &format!("/v1/mem/{item}"), None).0, 403);
    assert_eq!(
        call(MEMBER, "DELETE", &format!("/v1/mem/{item}"), None).0,
        403
    );
    let put_body = json!({"namespace": "team", "text": "planted"}).to_string();
    assert_eq!(call(MEMBER, "POST", "/v1/mem", Some(&put_body)).0, 403);
    let other = d.cap("agent-a", &["mem.read:other"]);
    let (status, answer) = with_cap(MEMBER, "GET", "/v1/mem?namespace=team", None, &other);
    assert_eq!(status, 403, "{answer}");
    assert!(answer.contains("team"), "{answer}");
    assert_eq!(
        with_cap(MEMBER, "GET", &format!("/v1/mem/{item}"), None, &other).0,
        404
    );
    let forged = Issuer::random().token(
        Subject::Name("agent-a".into()),
        &["mem.write:team"],
        now() - 5,
        now() + 60,
    );
    assert_eq!(
        with_cap(MEMBER, "GET", "/v1/mem?namespace=team", None, &forged).0,
        403
    );
    let reader = d.cap("agent-a", &["mem.read:team"]);
    let (status, answer) = with_cap(MEMBER, "GET", "/v1/mem?namespace=team", None, &reader);
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("rotates monthly"), "{answer}");
    let (status, answer) = with_cap(MEMBER, "DELETE", &format!("/v1/mem/{item}"), None, &reader);
    assert_eq!(status, 403, "{answer}");
    assert!(answer.contains("mem.write:team"), "{answer}");
    let writer = d.cap("agent-a", &["mem.write:team"]);
    assert_eq!(
        with_cap(MEMBER, "POST", "/v1/mem", Some(&put_body), &writer).0,
        201
    );

    // An admin (by its supplementary group) and root reach everything.
    assert_eq!(call(ADMIN, "GET", &job, None).0, 200);
    let (_, all) = call(ADMIN, "GET", "/v1/jobs", None);
    assert!(all.contains(&victim_job) && all.contains(&mine), "{all}");
    assert_eq!(call(ADMIN, "GET", "/v1/mem?namespace=team", None).0, 200);
    assert_eq!(call(ADMIN, "GET", "/v1/audit?tail=5", None).0, 200);

    // The owner still has its job, untouched: its stdin, output and status.
    let (status, answer) = call(VICTIM, "POST", &format!("{job}/stdin"), Some("owner\n"));
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = call(VICTIM, "GET", &format!("{job}?wait=30"), None);
    assert_eq!(status, 200, "{answer}");
    let s: Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(
        (s["state"].as_str(), s["exit_code"].as_i64()),
        (Some("exited"), Some(0)),
        "{s}"
    );
    assert_eq!(d.output(&victim_job).0, "owner\nvictim-secret\n");
    assert_eq!(d.get(&format!("/v1/mem/{item}")).status, 200);
    eprintln!("member: 5 requests on another uid's job answered 404; memory without a mem scope 403; outsider could not connect");
}

/// Audit rows about `job`, by kind.
fn job_rows(d: &Daemon, job: &str) -> Vec<Value> {
    d.get("/v1/audit?tail=10000").json()["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["body"]["job"] == job)
        .cloned()
        .collect()
}

const REFUSED_FLOOD: &str = r#"
import socket
tok = open('/run/covenant/token').read().strip()
req = ('GET /v1/nope HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer %s\r\nConnection: close\r\n\r\n' % tok).encode()
seen = {}
for i in range(5000):
    try:
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(5)
        s.connect('/run/covenant/agent.sock')
        s.sendall(req)
        data = b''
        while True:
            c = s.recv(65536)
            if not c:
                break
            data += c
        s.close()
        code = data.split(b' ')[1].decode() if data.startswith(b'HTTP/') else 'cut'
    except OSError:
        code = 'closed'
    seen[code] = seen.get(code, 0) + 1
print(' '.join('%s=%d' % kv for kv in sorted(seen.items())))
"#;

#[test]
fn an_agent_flooding_refused_requests_is_summarised_and_cut_off() {
    skip_unless!(SANDBOX);
    let _shared = SANDBOXES.read().unwrap_or_else(|e| e.into_inner());
    let d = Daemon::start(&["--agent-refusals", "1000"]);
    let before = last_seq(&d);
    let cap = d.cap("agent-a", &["res.time:120s", "mem.read:notes"]);
    let id = d.submit_ok(&cap, &["/usr/bin/python3", "-c", REFUSED_FLOOD]);
    let status = d.wait(&id);
    let (out, err) = d.output(&id);
    assert_eq!(status["exit_code"], 0, "{out}{err}");
    let added = last_seq(&d) - before;
    let rows = job_rows(&d, &id);
    let agent_rows: Vec<&Value> = rows
        .iter()
        .filter(|r| r["kind"].as_str().unwrap().starts_with("agent."))
        .collect();
    let count = |key: &str| -> u64 {
        out.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let fds = fds_of(d.child.as_ref().unwrap().id());
    eprintln!(
        "agent made 5000 requests ({}); audit rows added: {added} ({} agent.*); daemon fds: {fds}",
        out.trim(),
        agent_rows.len()
    );
    // Answered until the 1000th refusal, then the socket is gone.
    assert!((999..=1000).contains(&count("404")), "{out}");
    assert!(count("closed") + count("cut") >= 4000, "{out}");
    assert!(agent_rows.len() <= 3, "{agent_rows:?}");
    let refused: u64 = agent_rows
        .iter()
        .filter(|r| r["kind"] == "agent.requests")
        .map(|r| r["body"]["refused"]["not-found"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(refused, 1000, "{agent_rows:?}");
    assert!(agent_rows
        .iter()
        .any(|r| r["kind"] == "agent.socket.closed"));
    assert!(added < 40, "{added} audit rows for one job");
    assert!(fds < 100, "{fds}");
    assert_eq!(d.get("/v1/health").status, 200);
}

#[test]
fn a_slow_body_is_dropped_after_the_request_timeout_while_others_are_answered() {
    use std::io::{Read, Write};
    let d = Daemon::start(&["--request-timeout", "1s"]);
    let connect = || std::os::unix::net::UnixStream::connect(&d.client.socket).unwrap();
    let mut slow_body = connect();
    slow_body
        .write_all(b"POST /v1/jobs HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n{\"capa")
        .unwrap();
    let mut slow_head = connect();
    slow_head
        .write_all(b"GET /v1/health HTTP/1.1\r\nhost: x\r\n")
        .unwrap();
    let mut idle = connect();
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for _ in 0..5 {
        let t = Instant::now();
        assert_eq!(d.get("/v1/health").status, 200);
        slowest = slowest.max(t.elapsed());
    }
    assert!(slowest < Duration::from_millis(500), "{slowest:?}");
    let mut answer = Vec::new();
    slow_body
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    slow_body.read_to_end(&mut answer).unwrap();
    let body_dropped = started.elapsed();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        body_dropped >= Duration::from_millis(800) && body_dropped < Duration::from_secs(5),
        "{body_dropped:?}"
    );
    slow_head
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut rest = Vec::new();
    let _ = slow_head.read_to_end(&mut rest);
    let head_dropped = started.elapsed();
    assert!(head_dropped < Duration::from_secs(5), "{head_dropped:?}");
    assert!(!String::from_utf8_lossy(&rest).contains("200 OK"));
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = idle.read_to_end(&mut rest);
    let idle_dropped = started.elapsed();
    assert!(idle_dropped < Duration::from_secs(5), "{idle_dropped:?}");
    eprintln!(
        "slow body dropped with 408 after {} ms, slow headers after {} ms, a silent connection after {} ms; health answered meanwhile in at most {} ms",
        body_dropped.as_millis(),
        head_dropped.as_millis(),
        idle_dropped.as_millis(),
        slowest.as_millis()
    );
}

#[test]
fn memory_listings_and_audit_answers_are_bounded() {
    skip_unless!(SANDBOX);
    let _shared = SANDBOXES.read().unwrap_or_else(|e| e.into_inner());
    let d = Daemon::start(&[]);
    for i in 0..250 {
        let a = d.post(
            "/v1/mem",
            json!({"namespace": "bulk", "text": format!("note {i} about caching")}),
        );
        assert_eq!(a.status, 201, "{}", a.error_text());
    }
    let first = d.get("/v1/mem?namespace=bulk").json();
    assert_eq!(
        first["items"].as_array().unwrap().len(),
        100,
        "the default page"
    );
    assert!(first["next"].is_string());
    let mut seen = std::collections::BTreeSet::new();
    let mut pages = 0;
    let mut next: Option<String> = None;
    loop {
        let path = match &next {
            Some(c) => format!("/v1/mem?namespace=bulk&limit=70&after={c}"),
            None => "/v1/mem?namespace=bulk&limit=70".into(),
        };
        let page = d.get(&path).json();
        pages += 1;
        for item in page["items"].as_array().unwrap() {
            assert!(seen.insert(item["id"].as_str().unwrap().to_string()));
        }
        match page["next"].as_str() {
            Some(c) => next = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!((seen.len(), pages), (250, 4));
    let huge = d.get("/v1/mem?namespace=bulk&limit=1000000").json();
    assert_eq!(huge["items"].as_array().unwrap().len(), 250);
    assert_eq!(
        d.get("/v1/mem?namespace=bulk&limit=0").json()["items"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        d.get("/v1/mem?namespace=bulk&after=bogus").json()["field"],
        "after"
    );
    let search = d.get("/v1/mem?namespace=bulk&q=caching&limit=5").json();
    assert_eq!(search["items"].as_array().unwrap().len(), 5);
    assert_eq!(search["truncated"], true);
    // Big items: a page stops at its byte bound and hands on a cursor.
    let text = "x".repeat(200 * 1024);
    for _ in 0..25 {
        assert_eq!(
            d.post("/v1/mem", json!({"namespace": "big", "text": text}))
                .status,
            201
        );
    }
    let a = d.get("/v1/mem?namespace=big&limit=1000");
    let page = a.json();
    let n = page["items"].as_array().unwrap().len();
    assert!(n < 25 && page["next"].is_string(), "{n} items");
    // Audit answers stop at their byte bound too: twelve admitted jobs with a 900 KB argv
    // each are 10 MB of rows (a refused submission keeps only 4 KiB of its argv).
    let cap = d.cap("agent-a", &["res.time:60s"]);
    let mut argv = vec!["/bin/true".to_string()];
    argv.extend((0..8).map(|_| "a".repeat(112 * 1024)));
    for _ in 0..12 {
        let a = d.post("/v1/jobs", json!({"capability": cap, "argv": argv}));
        assert_eq!(a.status, 201, "{}", a.error_text());
        d.wait(a.json()["id"].as_str().unwrap());
    }
    let audit = d.get("/v1/audit?tail=100");
    assert_eq!(audit.json()["truncated"], true);
    assert!(audit.body.len() < 10 * 1024 * 1024, "{}", audit.body.len());
    eprintln!(
        "250 items: default page 100, 4 pages of 70, limit=1000000 gave 250 (max 1000); 25 items of 200 KiB: first page {n} items, {} bytes; audit tail=100 of 10 MB rows: {} rows, {} bytes",
        a.body.len(),
        audit.json()["rows"].as_array().unwrap().len(),
        audit.body.len()
    );
}

const CONNECTION_FLOOD: &str = r#"
import socket, sys, time
path = sys.argv[1] if len(sys.argv) > 1 else '/run/covenant/agent.sock'
socks, failed = [], 0
for i in range(3000):
    try:
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(3)
        s.connect(path)
        socks.append(s)
    except OSError:
        failed += 1
time.sleep(1)
answered = 0
for s in socks:
    try:
        s.sendall(b'GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n')
        if s.recv(16).startswith(b'HTTP/1.1'):
            answered += 1
    except OSError:
        pass
time.sleep(4)
print(len(socks), failed, answered)
"#;

#[test]
fn connection_floods_from_an_agent_and_a_uid_are_bounded_while_others_submit() {
    skip_unless!(SANDBOX);
    let _shared = SANDBOXES.read().unwrap_or_else(|e| e.into_inner());
    let d = Daemon::start(&[
        "--agent-connections",
        "8",
        "--caller-connections",
        "16",
        "--agent-refusals",
        "100000",
    ]);
    let socket = d.client.socket.clone();
    std::os::unix::fs::chown(&socket, None, Some(SOCKET_GID)).unwrap();
    let daemon_pid = d.child.as_ref().unwrap().id();
    let fds_before = fds_of(daemon_pid);
    let cap = d.cap("agent-a", &["res.time:120s", "mem.read:notes"]);
    let flood = d.submit_ok(&cap, &["/usr/bin/python3", "-c", CONNECTION_FLOOD]);
    let member_flood = command_as(MEMBER, "/usr/bin/python3")
        .args(["-c", CONNECTION_FLOOD])
        .arg(&socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    let fds_during = fds_of(daemon_pid);
    let open = d.get("/metrics");
    let open = String::from_utf8_lossy(&open.body)
        .lines()
        .find_map(|l| l.strip_prefix("covenant_connections_open "))
        .unwrap()
        .to_string();
    // Another uid's submission goes through meanwhile.
    let body = json!({"capability": cap, "argv": ["/bin/echo", "still served"]}).to_string();
    let (status, answer) = curl_as(VICTIM, &socket, "POST", "/v1/jobs", Some(&body), &[]);
    assert_eq!(status, 201, "{answer}");
    let other: Value = serde_json::from_str(&answer).unwrap();
    let other = other["id"].as_str().unwrap();
    assert_eq!(d.wait(other)["exit_code"], 0);
    assert_eq!(d.output(other).0, "still served\n");
    let member = member_flood.wait_with_output().unwrap();
    let member = String::from_utf8_lossy(&member.stdout).into_owned();
    d.wait(&flood);
    let (agent, err) = d.output(&flood);
    let nums = |text: &str| -> Vec<usize> {
        text.split_whitespace()
            .map(|n| n.parse().unwrap())
            .collect()
    };
    let (agent_n, member_n) = (nums(&agent), nums(&member));
    assert_eq!(agent_n.len(), 3, "{agent}{err}");
    assert_eq!(member_n.len(), 3, "{member}");
    eprintln!(
        "agent opened {} connections ({} failed), {} answered; uid {} opened {}, {} answered; daemon fds {fds_before} before, {fds_during} during the floods; connections open: {open}",
        agent_n[0], agent_n[1], agent_n[2], MEMBER.uid, member_n[0], member_n[2]
    );
    assert!(agent_n[0] >= 500, "the agent could not flood: {agent}");
    assert!(agent_n[2] <= 8, "{agent}");
    assert!(member_n[0] >= 200, "the uid could not flood: {member}");
    assert!(member_n[2] <= 16, "{member}");
    assert!(fds_during < fds_before + 100, "{fds_during}");
    assert_eq!(d.get("/v1/health").status, 200);
}

#[test]
fn an_output_reader_that_never_reads_is_dropped() {
    use std::io::{Read, Write};
    skip_unless!(SANDBOX);
    let _shared = SANDBOXES.read().unwrap_or_else(|e| e.into_inner());
    let d = Daemon::start(&["--request-timeout", "1s"]);
    let cap = d.cap("agent-a", &["res.time:60s"]);
    let id = d.submit_ok(&cap, &["/bin/sh", "-c", "head -c 8388608 /dev/zero"]);
    d.wait(&id);
    let mut stalled = std::os::unix::net::UnixStream::connect(&d.client.socket).unwrap();
    stalled
        .write_all(format!("GET /v1/jobs/{id}/output HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(d.get("/v1/health").status, 200);
    stalled
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = Vec::new();
    let started = Instant::now();
    let _ = stalled.read_to_end(&mut got);
    let whole = 8 * 1024 * 1024 * 4 / 3;
    eprintln!(
        "a reader that stalled for 3 s then read got {} of about {whole} bytes; closed {} ms later",
        got.len(),
        started.elapsed().as_millis()
    );
    assert!(got.len() < whole / 2, "{} bytes", got.len());
    assert!(!String::from_utf8_lossy(&got).contains("\"type\":\"end\""));
    // A reader that keeps reading gets all of it.
    let (out, _) = d.output(&id);
    assert_eq!(out.len(), 8 * 1024 * 1024);
}

/// An agent that spawns a sub-intent (down to depth 3), then writes `kind` (`audit`
/// events or `mem` items) of 30 KB until the daemon refuses; prints what it was allowed.
const AGENT_CHAIN: &str = r#"
import socket, json, sys
T = open("/run/covenant/token").read().strip()
SRC = open("/proc/self/cmdline", "rb").read().split(b"\0")[2].decode()
def req(method, path, body=None):
    s = socket.socket(socket.AF_UNIX); s.connect("/run/covenant/agent.sock")
    b = json.dumps(body).encode() if body is not None else b""
    s.sendall(f"{method} {path} HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {T}\r\nContent-Type: application/json\r\nContent-Length: {len(b)}\r\nConnection: close\r\n\r\n".encode() + b)
    d = b""
    while True:
        x = s.recv(65536)
        if not x: break
        d += x
    return d.split(b" ", 2)[1].decode(), d.split(b"\r\n\r\n", 1)[-1].decode()
depth, kind = int(sys.argv[1]), sys.argv[2]
child = None
if depth < 3:
    st, b = req("POST", "/v1/jobs", {"capability": "", "argv": ["/usr/bin/python3", "-c", SRC, str(depth + 1), kind]})
    child = json.loads(b).get("id") if st == "201" else None
ok = 0
while True:
    if kind == "audit":
        st, _ = req("POST", "/v1/audit", {"kind": "flood", "body": {"pad": "P" * 30000}})
    else:
        st, _ = req("POST", "/v1/mem", {"namespace": "notes", "text": ("%05d" % ok) * 6000})
    if st != "201": break
    ok += 1
print(f"depth {depth}: {ok} then {st}", flush=True)
if child:
    req("GET", f"/v1/jobs/{child}?wait=60")
"#;

#[test]
fn an_agent_and_its_sub_intents_share_one_write_and_byte_budget() {
    skip_unless!(SANDBOX);
    let _shared = SANDBOXES.read().unwrap_or_else(|e| e.into_inner());
    let scopes = [
        "res.time:120s",
        "agent:audit",
        "agent:spawn",
        "mem.write:notes",
    ];
    // Writes: five for the whole lineage, however deep it spawns.
    let d = Daemon::start(&["--agent-writes", "5"]);
    let cap = d.cap("agent-a", &scopes);
    let id = d.submit_ok(&cap, &["/usr/bin/python3", "-c", AGENT_CHAIN, "0", "audit"]);
    d.wait(&id);
    let rows = d.get("/v1/audit?tail=10000").json();
    let flood = rows["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["kind"] == "agent.flood")
        .count();
    println!(
        "lineage with --agent-writes 5 wrote {flood} audit events: {:?}",
        d.output(&id).0
    );
    assert!(
        (1..=4).contains(&flood),
        "{flood} agent events for a budget of 5"
    );
    drop(d);
    // Bytes: 200 KiB of memory items for the whole lineage.
    let d = Daemon::start(&["--agent-bytes", "200KiB"]);
    let cap = d.cap("agent-a", &scopes);
    let id = d.submit_ok(&cap, &["/usr/bin/python3", "-c", AGENT_CHAIN, "0", "mem"]);
    d.wait(&id);
    let (out, err) = d.output(&id);
    let items = d.get("/v1/mem?namespace=notes&limit=1000").json();
    let stored = items["items"].as_array().map_or(0, |a| a.len());
    println!("lineage with --agent-bytes 200KiB stored {stored} items of 30 KB: {out:?}");
    assert!(stored >= 1 && stored * 30_000 <= 200 * 1024, "{items}");
    assert!(out.contains("then 429"), "{out}{err}");
}

#[test]
fn a_flood_of_refused_submissions_stores_a_bounded_number_of_small_rows() {
    let d = Daemon::start(&[]);
    let db = d.home.path().join("covenant.db");
    let size = || {
        ["covenant.db", "covenant.db-wal"]
            .iter()
            .map(|f| std::fs::metadata(d.home.path().join(f)).map_or(0, |m| m.len()))
            .sum::<u64>()
    };
    let before = size();
    let big = "A".repeat(600 * 1024);
    let bad = d.cap("agent-a", &["res.time:60s"]).replace('.', "!");
    for _ in 0..200 {
        let a = d.post(
            "/v1/jobs",
            json!({"capability": bad, "argv": ["/bin/echo", big]}),
        );
        assert_eq!(a.status, 400, "{}", a.error_text());
    }
    let grown = size().saturating_sub(before);
    let conn = rusqlite::Connection::open(&db).unwrap();
    let intents: i64 = conn
        .query_row(
            "SELECT count(*) FROM audit WHERE kind = 'run.intent'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let longest: i64 = conn
        .query_row("SELECT max(length(body)) FROM audit", [], |r| r.get(0))
        .unwrap();
    println!(
        "200 refused submissions of 600 KiB: {intents} intent rows, longest row {longest} bytes, store grew {} KiB",
        grown / 1024
    );
    assert!(intents <= 60, "{intents} intent rows");
    assert!(longest < 16 * 1024, "a row of {longest} bytes");
    assert!(grown < 8 << 20, "the store grew {grown} bytes");
}

#[test]
fn repeated_kills_of_an_ended_job_write_bounded_rows() {
    skip_unless!(SANDBOX);
    let _shared = SANDBOXES.read().unwrap_or_else(|e| e.into_inner());
    let d = Daemon::start(&[]);
    let cap = d.cap("agent-a", &["res.time:60s"]);
    let id = d.submit_ok(&cap, TRUE);
    d.wait(&id);
    // The path padded with empty segments, which routing ignores.
    let path = format!("/v1/{}jobs/{id}/kill", "/".repeat(30_000));
    let mut accepted = 0;
    for _ in 0..700 {
        let a = d.client.request("POST", &path, Some(&json!({}))).unwrap();
        if a.status == 202 {
            accepted += 1;
        }
    }
    let rows = d.get("/v1/audit?tail=10000").json();
    let rows = rows["rows"].as_array().unwrap();
    let kills: Vec<&Value> = rows
        .iter()
        .filter(|r| {
            r["kind"] == "api.request"
                && r["body"]["path"]
                    .as_str()
                    .is_some_and(|p| p.ends_with("/kill"))
        })
        .collect();
    let longest = kills.iter().map(|r| r.to_string().len()).max().unwrap_or(0);
    println!(
        "700 kills of an ended job ({accepted} accepted): {} rows, longest {longest} bytes",
        kills.len()
    );
    assert!(kills.len() <= 600, "{} rows", kills.len());
    assert!(longest < 2048, "a row of {longest} bytes");
    assert_eq!(kills[0]["body"]["path"], format!("/v1/jobs/{id}/kill"));
}

/// Host processes whose command line names `job` (runsc's sandbox, gofer and helpers carry
/// the job's container id or bundle path).
fn processes_naming(job: &str) -> String {
    let out = Command::new("pgrep")
        .args(["-a", "-f", job])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_gvisor_job_writes_its_workspace_as_its_owner_and_a_sigkill_leaves_no_sandbox() {
    skip_unless!(SANDBOX);
    let _shared = SANDBOXES.read().unwrap_or_else(|e| e.into_inner());
    if covenant_test_support::live::program("runsc").is_none() {
        return;
    }
    let mut d = Daemon::start(&[]);
    let base = shared_dir();
    let ws = base.path().join("ws");
    std::fs::create_dir(&ws).unwrap();
    std::os::unix::fs::chown(&ws, Some(1234), Some(2345)).unwrap();
    let scopes = [
        "res.time:120s",
        "res.mem:256MiB",
        "runner:gvisor",
        &format!("fs.write:{}", ws.display()),
    ];
    let cap = d.cap("agent-a", &scopes);
    let post = |cap: &str, script: &str| {
        d.post(
            "/v1/jobs",
            json!({"capability": cap, "argv": ["/bin/sh", "-c", script], "runner": "gvisor",
                   "manifest": {"version": 1, "workspace": ws}}),
        )
    };
    let submit = |script: &str| {
        let a = post(&cap, script);
        assert_eq!(a.status, 201, "{}", a.error_text());
        a.json()["id"].as_str().unwrap().to_string()
    };
    let id = submit(
        "echo made > /workspace/made; chmod 4755 /workspace/made 2>/dev/null || echo SETUID-REFUSED",
    );
    let s = d.wait(&id);
    let (out, err) = d.output(&id);
    assert_eq!(s["exit_code"], 0, "{s}\n{out}{err}");
    assert_eq!(s["report"]["runner"], "gvisor", "{s}");
    assert_eq!(out, "SETUID-REFUSED\n", "{err}");
    use std::os::unix::fs::MetadataExt;
    let made = std::fs::metadata(ws.join("made")).unwrap();
    assert_eq!((made.uid(), made.gid()), (1234, 2345));
    assert_eq!(made.mode() & 0o6000, 0);

    // A daemon SIGKILL while a gVisor job runs: the restarted daemon leaves no runsc
    // sandbox, gofer or mount of it behind.
    let id = submit("echo started > /workspace/started; sleep 700");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ws.join("started").exists() || processes_naming(&id).is_empty() {
        assert!(Instant::now() < deadline, "the gVisor job did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    d.kill9();
    d.spawn();
    let s = d.get(&format!("/v1/jobs/{id}")).json();
    assert_eq!(s["state"], "interrupted", "{s}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_naming(&id).is_empty() {
        assert!(
            Instant::now() < deadline,
            "runsc processes left: {}",
            processes_naming(&id)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(d.home.path().to_str().unwrap()),
        "mounts left behind"
    );
    for sub in ["bundles", "agents", "runtime"] {
        let left: Vec<_> = std::fs::read_dir(d.home.path().join(sub))
            .map(|r| r.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{sub} left behind: {left:?}");
    }
}

/// A host listener for the gVisor test below: accepts on `path` and counts the
/// connections it got.
fn counting_listener(path: &Path) -> std::sync::Arc<std::sync::atomic::AtomicUsize> {
    let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777)).unwrap();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = count.clone();
    std::thread::spawn(move || {
        for c in listener.incoming() {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if let Ok(mut c) = c {
                let _ = std::io::Write::write_all(&mut c, b"HOST\n");
            }
        }
    });
    count
}

/// Under gVisor the agent socket works, and it is the only host socket the sandbox
/// reaches: runsc's gofer connects as host root to any socket file in the sandbox's
/// mounts, so every connection it makes is decided by the job's shim. A host daemon's
/// socket in the workspace, and one in a read-only bind, stay out of reach, by name and
/// through a symlink made inside.
#[test]
fn a_gvisor_job_reaches_its_agent_socket_and_no_other_host_socket() {
    skip_unless!(SANDBOX);
    let _shared = SANDBOXES.read().unwrap_or_else(|e| e.into_inner());
    if covenant_test_support::live::program("runsc").is_none() {
        return;
    }
    for tool in ["/usr/bin/curl", "/usr/bin/python3"] {
        if !Path::new(tool).exists() {
            panic!("{tool} is needed inside the sandbox");
        }
    }
    let d = Daemon::start(&[]);
    let base = shared_dir();
    let ws = base.path().join("ws");
    let ro = base.path().join("ro");
    std::fs::create_dir(&ws).unwrap();
    std::fs::create_dir(&ro).unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
    // The workspace owner's own daemon (its socket theirs, 0600), and root's in a
    // read-only bind.
    let in_workspace = counting_listener(&ws.join("host.sock"));
    std::os::unix::fs::chown(ws.join("host.sock"), Some(1234), Some(2345)).unwrap();
    std::fs::set_permissions(ws.join("host.sock"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let in_read_only = counting_listener(&ro.join("host.sock"));
    std::os::unix::fs::chown(&ws, Some(1234), Some(2345)).unwrap();
    let scopes = [
        "res.time:120s",
        "res.mem:256MiB",
        "runner:gvisor",
        "agent:audit",
        &format!("fs.write:{}", ws.display()),
        &format!("fs.read:{}", ro.display()),
    ];
    let cap = d.cap("agent-a", &scopes);
    let probe = format!(
        r#"{AGENT}
for p in /workspace/host.sock {ro}/host.sock /workspace/link.sock; do
  python3 -c '
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
    print("CONNECTED", s.recv(10))
except OSError as e:
    print("REFUSED", e.errno)
' "$p"
  [ "$p" = {ro}/host.sock ] && ln -s {ro}/host.sock /workspace/link.sock
done
call http://a/v1/self
"#,
        ro = ro.display()
    );
    let a = d.post(
        "/v1/jobs",
        json!({"capability": cap, "argv": ["/bin/sh", "-c", probe], "runner": "gvisor",
               "manifest": {"version": 1, "workspace": ws, "read": [ro]}}),
    );
    assert_eq!(a.status, 201, "{}", a.error_text());
    let id = a.json()["id"].as_str().unwrap().to_string();
    let s = d.wait(&id);
    let (out, err) = d.output(&id);
    assert_eq!(s["report"]["runner"], "gvisor", "{s}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        ["REFUSED 111", "REFUSED 111", "REFUSED 111", "200"],
        "{s}\n{out}{err}"
    );
    use std::sync::atomic::Ordering::SeqCst;
    assert_eq!(
        in_workspace.load(SeqCst),
        0,
        "the workspace's host socket was reached"
    );
    assert_eq!(
        in_read_only.load(SeqCst),
        0,
        "the read-only bind's host socket was reached"
    );

    // With `net` egress too: runsc in the gateway's namespace and the agent socket in one
    // job. Only a name not granted is asked for, which the gateway refuses without
    // asking any resolver, so nothing leaves this machine.
    let mut with_egress = scopes.to_vec();
    with_egress.push("net.egress:api.test:443");
    let cap = d.cap("agent-a", &with_egress);
    let script = format!(
        r#"{AGENT}
python3 -c 'import socket; socket.getaddrinfo("other.test", 443)' 2>/dev/null || echo NAME-REFUSED
call http://a/v1/self
"#
    );
    let a = d.post(
        "/v1/jobs",
        json!({"capability": cap, "argv": ["/bin/sh", "-c", script], "runner": "gvisor",
               "manifest": {"version": 1, "workspace": ws, "egress": ["api.test:443"]}}),
    );
    assert_eq!(a.status, 201, "{}", a.error_text());
    let id = a.json()["id"].as_str().unwrap().to_string();
    let s = d.wait(&id);
    let (out, err) = d.output(&id);
    assert_eq!(s["report"]["net"], "egress", "{s}");
    assert_eq!(out, "NAME-REFUSED\n200\n", "{s}\n{out}{err}");
}
