//! `cargo bench -p covenant-supervisor --bench daemon_load [-- JOBS CLIENTS MAX_JOBS]` (as
//! root): JOBS runs of `/bin/true` (default 1,000) from CLIENTS concurrent clients
//! (default 32) through one `covenantd --max-jobs MAX_JOBS` (default 16), with the audit log on. Prints jobs/s, p50/p99 submit-to-exit
//! latency and the daemon's idle RSS, checks that every job ended with its audit rows
//! and left no bundle or staging folder, and runs the same load side by side through the
//! daemon without its shim pool (`--shim-pool 0`), embedded `covenant-ctl run` processes
//! and `crun run`, printing each one's ratio to the daemon. With `BEFORE=PATH` (an older
//! build's `covenantd`), that daemon runs the same load too, second in the table.
//! Targets: at least 250 jobs/s on 2 cores with p99 under 250 ms, no job lost, idle RSS
//! at most 20 MiB.

use covenant_supervisor::daemon::client::Client;
use covenant_test_support::scratch::traversable_dir;
use covenant_test_support::Issuer;
use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Result {
    name: String,
    jobs: usize,
    wall: Duration,
    latencies: Vec<Duration>,
    /// CPU time of the serving side (user and system): the daemon with its shims and
    /// sandboxes, or the `covenant-ctl` and `crun` processes with theirs; not the clients.
    cpu: Duration,
}

impl Result {
    fn rate(&self) -> f64 {
        self.jobs as f64 / self.wall.as_secs_f64()
    }

    fn percentile(&self, p: f64) -> f64 {
        let mut l = self.latencies.clone();
        l.sort();
        let i = ((l.len() as f64 - 1.0) * p).round() as usize;
        l[i].as_secs_f64() * 1000.0
    }
}

/// Runs `jobs` calls of `one` from `clients` threads; `one(i)` returns once job `i` ended.
fn load(name: &str, jobs: usize, clients: usize, one: Arc<dyn Fn(usize) + Send + Sync>) -> Result {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let (next, one) = (next.clone(), one.clone());
            std::thread::spawn(move || {
                let mut lat = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= jobs {
                        return lat;
                    }
                    let t = Instant::now();
                    one(i);
                    lat.push(t.elapsed());
                }
            })
        })
        .collect();
    let latencies = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    Result {
        name: name.to_string(),
        jobs,
        wall: start.elapsed(),
        latencies,
        cpu: Duration::ZERO,
    }
}

/// CPU time (user and system) of this process's children that have been waited for.
fn children_cpu() -> Duration {
    // SAFETY: an all-zero rusage is a valid value for getrusage to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes only into `usage`, which lives for the call.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    assert_eq!(rc, 0, "getrusage");
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// CPU time of process `pid` (`/proc/PID/stat`: utime, stime) and with it that of its
/// children it has waited for (cutime, cstime): for the daemon, itself (its runtime and
/// writer threads), and itself with its shims and their sandboxes.
fn process_cpu(pid: u32) -> (Duration, Duration) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<u64> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .skip(11)
        .take(4)
        .map(|f| f.parse().unwrap())
        .collect();
    // SAFETY: sysconf has no failure mode for _SC_CLK_TCK.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    let ms = |t: u64| Duration::from_millis(t * 1000 / ticks);
    (ms(fields[0] + fields[1]), ms(fields.iter().sum::<u64>()))
}

/// Runs `load` and records the CPU time its waited-for child processes used.
fn load_children(
    name: &str,
    jobs: usize,
    clients: usize,
    one: Arc<dyn Fn(usize) + Send + Sync>,
) -> Result {
    let before = children_cpu();
    let mut result = load(name, jobs, clients, one);
    result.cpu = children_cpu() - before;
    result
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A capability for `bench` that the daemon at `home` trusts.
fn capability(home: &Path) -> String {
    let issuer = Issuer::random();
    issuer.trust_in(home, "bench");
    issuer.token_for_an_hour("bench", &["res.time:60s"])
}

fn main() {
    // SAFETY: geteuid has no failure mode.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("daemon_load: needs root (sandboxes with user namespaces and cgroups); skipped");
        return;
    }
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let jobs = args.first().copied().unwrap_or(1000);
    let clients = args.get(1).copied().unwrap_or(32);
    let max_jobs = args.get(2).copied().unwrap_or(16).to_string();
    let work = traversable_dir("daemon-load-");
    let home = work.path().join("daemon");
    let daemon_exe = PathBuf::from(env!("CARGO_BIN_EXE_covenantd"));
    let ctl = daemon_exe.with_file_name("covenant-ctl");
    let help = Command::new(&ctl)
        .arg("--help")
        .output()
        .map(|o| o.stdout)
        .unwrap_or_default();
    if !String::from_utf8_lossy(&help).contains("--embedded") {
        eprintln!(
            "daemon_load: {} is missing or stale: run `cargo build --release` first",
            ctl.display()
        );
        std::process::exit(1);
    }
    // The daemon with its default shim pool, then starting each job's shim on demand
    // (`--shim-pool 0`, as before the pool), on the same load.
    let pooled = through_daemon(
        "covenantd (pool 4)",
        &daemon_exe,
        &home,
        &["--max-jobs", &max_jobs],
        jobs,
        clients,
    );
    let on_demand = through_daemon(
        "covenantd --shim-pool 0",
        &daemon_exe,
        &work.path().join("daemon-on-demand"),
        &["--max-jobs", &max_jobs, "--shim-pool", "0"],
        jobs,
        clients,
    );

    // An older build on the same load, for before-and-after figures taken side by side.
    let before = std::env::var_os("BEFORE").map(|exe| {
        through_daemon(
            "covenantd BEFORE (pool 4)",
            Path::new(&exe),
            &work.path().join("daemon-before"),
            &["--max-jobs", &max_jobs],
            jobs,
            clients,
        )
    });

    // Peers, same load: embedded covenant-ctl processes, and crun.
    let ctl_home = work.path().join("embedded");
    let embedded = {
        let (ctl, ctl_home) = (ctl.clone(), ctl_home.clone());
        load_children(
            "covenant-ctl (embedded)",
            jobs,
            clients,
            Arc::new(move |_| {
                let s = Command::new(&ctl)
                    .args(["--embedded", "run", "--", "/bin/true"])
                    .env("COVENANT_HOME", &ctl_home)
                    .status()
                    .unwrap();
                assert!(s.success());
            }),
        )
    };
    let mut results = vec![pooled.result];
    let before_checks = before.map(|b| {
        results.push(b.result);
        b.checks
    });
    results.extend([on_demand.result, embedded]);
    if Path::new("/usr/bin/crun").exists() {
        let bundle = work.path().join("bundle");
        let s = Command::new(&ctl)
            .args(["bundle", "--out"])
            .arg(&bundle)
            .args(["--", "/bin/true"])
            .env("COVENANT_HOME", &ctl_home)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(s.success());
        let bundle = bundle.display().to_string();
        results.push(load_children(
            "crun run",
            jobs,
            clients,
            Arc::new(move |i| {
                // crun 1.8 refuses the hybrid cgroup layout; it runs with the unified
                // hierarchy unmounted in a private mount namespace, as in start-to-exit.sh.
                let s = Command::new("unshare")
                    .args(["-m", "--propagation", "private", "sh", "-c"])
                    .arg(format!(
                        "umount /sys/fs/cgroup/unified 2>/dev/null; exec crun run -b {bundle} load-{}-{i}",
                        std::process::id()
                    ))
                    .stdout(Stdio::null())
                    .status()
                    .unwrap();
                assert!(s.success());
            }),
        ));
    }

    println!(
        "{jobs} jobs of /bin/true from {clients} concurrent clients, audit on, covenantd --max-jobs {max_jobs}"
    );
    // SAFETY: sysconf has no failure mode for _SC_NPROCESSORS_ONLN.
    let cores = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as f64;
    println!(
        "{:<26} {:>9} {:>10} {:>10} {:>14} {:>11} {:>16}",
        "",
        "jobs/s",
        "p50 ms",
        "p99 ms",
        "rate vs daemon",
        "CPU ms/job",
        format!("CPU floor/s ({cores})")
    );
    let base = results[0].rate();
    for r in &results {
        let cpu_ms = r.cpu.as_secs_f64() * 1000.0 / r.jobs as f64;
        println!(
            "{:<26} {:>9.1} {:>10.1} {:>10.1} {:>14.2} {:>11.2} {:>16.1}",
            r.name,
            r.rate(),
            r.percentile(0.5),
            r.percentile(0.99),
            r.rate() / base,
            cpu_ms,
            cores * 1000.0 / cpu_ms
        );
    }
    println!(
        "CPU floor: the jobs/s the serving side's CPU per job allows if every core did nothing else"
    );
    for run in [
        Some(&pooled.checks),
        before_checks.as_ref(),
        Some(&on_demand.checks),
    ]
    .into_iter()
    .flatten()
    {
        println!("{run}");
    }
}

/// One daemon's run of the load, and what was checked after it.
struct DaemonRun {
    result: Result,
    /// Idle RSS, jobs lost, the chain's verification, the exit on SIGTERM.
    checks: String,
}

/// Starts `covenantd` on `home` with `extra` flags (besides room in the queue for every
/// client), runs the load through it, checks that no job was lost
/// and that the chain verifies, and stops it with SIGTERM.
fn through_daemon(
    name: &str,
    daemon_exe: &Path,
    home: &Path,
    extra: &[&str],
    jobs: usize,
    clients: usize,
) -> DaemonRun {
    std::fs::create_dir_all(home).unwrap();
    std::fs::set_permissions(home, std::fs::Permissions::from_mode(0o711)).unwrap();
    let cap = capability(home);
    let mut daemon = Command::new(daemon_exe)
        .arg("--home")
        .arg(home)
        .args(["--max-queue", "4096", "--per-subject", "4096"])
        .args(extra)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let client = Client::new(&home.join("covenantd.sock"));
    while !client.answers() {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(300));
    let idle_before = rss_kib(daemon.id());

    let ids = Arc::new(std::sync::Mutex::new(Vec::new()));
    let one: Arc<dyn Fn(usize) + Send + Sync> = {
        let (client, cap, ids) = (client.clone(), cap.clone(), ids.clone());
        Arc::new(move |_| {
            let a = client
                .request(
                    "POST",
                    "/v1/jobs",
                    Some(&json!({"capability": cap, "argv": ["/bin/true"]})),
                )
                .unwrap();
            assert_eq!(a.status, 201, "{}", a.error_text());
            let id = a.json()["id"].as_str().unwrap().to_string();
            let s = client
                .request("GET", &format!("/v1/jobs/{id}?wait=120"), None)
                .unwrap()
                .json();
            assert_eq!(s["exit_code"], 0, "{s}");
            ids.lock().unwrap().push(id);
        })
    };
    let (own_before, tree_before) = process_cpu(daemon.id());
    let mut result = load(name, jobs, clients, one);
    std::thread::sleep(Duration::from_millis(500));
    let (own_after, tree_after) = process_cpu(daemon.id());
    result.cpu = tree_after - tree_before;
    let own_ms = (own_after - own_before).as_secs_f64() * 1000.0 / jobs as f64;
    let idle_after = rss_kib(daemon.id());

    // No job lost: every id is final in the store, with its rows in the audit log.
    let ids = ids.lock().unwrap().clone();
    let mut finished = std::collections::HashSet::new();
    let mut after = 0u64;
    loop {
        let page = client
            .request("GET", &format!("/v1/audit?after={after}&limit=10000"), None)
            .unwrap()
            .json();
        let rows = page["rows"].as_array().unwrap();
        let Some(last) = rows.last() else { break };
        after = last["seq"].as_u64().unwrap();
        finished.extend(
            rows.iter()
                .filter(|r| r["kind"] == "job.finished")
                .filter_map(|r| r["body"]["job"].as_str().map(str::to_string)),
        );
    }
    let listed = client
        .request("GET", "/v1/jobs?state=exited&limit=10000", None)
        .unwrap()
        .json();
    let exited = listed["jobs"].as_array().map(Vec::len).unwrap_or(0);
    let lost: Vec<&String> = ids.iter().filter(|id| !finished.contains(*id)).collect();
    let verify = client.request("GET", "/v1/audit/verify", None).unwrap();
    // SAFETY: kill(2) on the daemon this bench started and has not reaped.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let stopped = daemon.wait().unwrap();
    assert!(
        lost.is_empty(),
        "{name}: jobs without a final audit row: {lost:?}"
    );
    assert_eq!(
        verify.status,
        200,
        "{name}: {}",
        String::from_utf8_lossy(&verify.body)
    );
    // Nothing left behind: every bundle and staging folder was removed.
    for sub in ["bundles", "staging"] {
        let left = std::fs::read_dir(home.join(sub))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(left, 0, "{name}: {sub} left behind");
    }
    let checks = format!(
        "{name}: the daemon process itself {own_ms:.2} CPU ms/job, its shims and sandboxes the rest; idle RSS {:.1} MiB at start, {:.1} MiB after the load (target <= 20 MiB); \
         jobs lost: {} of {} (job.finished rows for {}, exited rows {exited}); audit verify: ok; \
         SIGTERM exit: {stopped}",
        idle_before as f64 / 1024.0,
        idle_after as f64 / 1024.0,
        lost.len(),
        ids.len(),
        finished.len(),
    );
    DaemonRun { result, checks }
}
