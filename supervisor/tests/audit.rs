//! The audit chain against a real database file: tampering of every kind is caught and
//! named, crashes lose no acknowledged event, and writers in several processes keep one
//! linear chain.

use covenant_supervisor::store::audit::verify_export;
use covenant_supervisor::store::chain::FaultKind;
use covenant_supervisor::store::{AuditEvent, Kind, Store};
use rusqlite::Connection;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

fn store_at(dir: &Path) -> Store {
    Store::open(&dir.join("covenant.db"), &dir.join("supervisor.key")).unwrap()
}

/// A store with `n` events, closed cleanly (so every row is under a signed checkpoint).
fn filled(n: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut store = store_at(dir.path());
    for i in 0..n {
        store
            .append(&AuditEvent::by_agent(
                "test",
                serde_json::json!({"i": i, "note": "x"}),
            ))
            .unwrap();
    }
    drop(store);
    dir
}

/// Replaces the store in `to` with the one in `from`, as someone with file access would:
/// the database and its WAL (closing does not fold the WAL into the file).
fn replace_store(from: &Path, to: &Path) {
    for file in ["covenant.db-shm", "covenant.db-wal"] {
        let _ = std::fs::remove_file(to.join(file));
    }
    for file in ["covenant.db", "covenant.db-wal"] {
        if from.join(file).exists() {
            std::fs::copy(from.join(file), to.join(file)).unwrap();
        }
    }
}

/// A second connection that lifts the triggers, as an attacker with file access would.
fn tamper(dir: &Path, sql: &str) {
    let conn = Connection::open(dir.join("covenant.db")).unwrap();
    conn.execute_batch(&format!(
        "DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete; DROP TRIGGER checkpoints_no_delete; {sql}"
    ))
    .unwrap();
}

fn fault_of(dir: &Path) -> (u64, FaultKind) {
    let store = store_at(dir);
    let fault = store
        .verify()
        .unwrap()
        .expect_err("tampering went unnoticed");
    (fault.seq, fault.kind)
}

#[test]
fn a_clean_chain_verifies_and_triggers_refuse_update_and_delete() {
    let dir = filled(20);
    let store = store_at(dir.path());
    let report = store.verify().unwrap().unwrap();
    assert_eq!(
        (report.summary.rows, report.summary.last_checkpoint),
        (20, Some(20))
    );
    let conn = Connection::open(dir.path().join("covenant.db")).unwrap();
    let err = conn
        .execute("UPDATE audit SET body = '{}' WHERE seq = 3", [])
        .unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");
    assert!(conn.execute("DELETE FROM audit WHERE seq = 3", []).is_err());
}

#[test]
fn a_flipped_byte_is_named_as_modified() {
    let dir = filled(20);
    tamper(
        dir.path(),
        "UPDATE audit SET body = replace(body, '\"note\":\"x\"', '\"note\":\"y\"') WHERE seq = 8;",
    );
    assert_eq!(fault_of(dir.path()), (8, FaultKind::Modified));
}

#[test]
fn a_deleted_row_is_named() {
    let dir = filled(20);
    tamper(dir.path(), "DELETE FROM audit WHERE seq = 11;");
    assert_eq!(fault_of(dir.path()), (11, FaultKind::Deleted));
}

#[test]
fn swapped_rows_are_named_as_reordered() {
    let dir = filled(20);
    tamper(
        dir.path(),
        "UPDATE audit SET seq = -5 WHERE seq = 5; UPDATE audit SET seq = 5 WHERE seq = 6; UPDATE audit SET seq = 6 WHERE seq = -5;",
    );
    assert_eq!(fault_of(dir.path()), (5, FaultKind::Reordered));
    let dir = filled(20);
    tamper(
        dir.path(),
        "CREATE TEMP TABLE t AS SELECT * FROM audit WHERE seq IN (5, 6);
         UPDATE audit SET time_ms = (SELECT time_ms FROM t WHERE seq = 6), kind = (SELECT kind FROM t WHERE seq = 6), body = (SELECT body FROM t WHERE seq = 6) WHERE seq = 5;
         UPDATE audit SET time_ms = (SELECT time_ms FROM t WHERE seq = 5), kind = (SELECT kind FROM t WHERE seq = 5), body = (SELECT body FROM t WHERE seq = 5) WHERE seq = 6;",
    );
    assert_eq!(fault_of(dir.path()), (5, FaultKind::Reordered));
}

#[test]
fn a_forged_appended_row_is_named_as_inserted() {
    let dir = filled(20);
    // A well-formed row: the forger computes the chain hash correctly, but cannot sign.
    let store = store_at(dir.path());
    let last = store.row(20).unwrap().unwrap();
    drop(store);
    let body = "{\"forged\":true}";
    let hash = covenant_supervisor::store::chain::event_hash(
        &last.hash,
        21,
        last.time_ms + 1,
        "agent.test",
        body,
    );
    let conn = Connection::open(dir.path().join("covenant.db")).unwrap();
    conn.execute(
        "INSERT INTO audit (seq, time_ms, kind, body, prev_hash, hash) VALUES (21, ?1, 'agent.test', ?2, ?3, ?4)",
        rusqlite::params![last.time_ms + 1, body, &last.hash[..], &hash[..]],
    )
    .unwrap();
    drop(conn);
    let store = Store::open(
        &dir.path().join("covenant.db"),
        &dir.path().join("supervisor.key"),
    )
    .unwrap();
    let fault = store.verify().unwrap().unwrap_err();
    assert_eq!(
        (fault.seq, fault.kind),
        (21, FaultKind::Inserted),
        "{fault}"
    );
    std::mem::forget(store); // no closing checkpoint: it would adopt the forged row
}

fn reader_at(dir: &Path) -> Store {
    Store::open_reader(&dir.join("covenant.db"), &dir.join("supervisor.key")).unwrap()
}

/// A writer that opened the store as process `pid` and wrote `n` events after the last
/// checkpoint, then stopped without closing it (no closing checkpoint).
fn unsigned_tail_by(dir: &Path, pid: u32, n: u64) {
    let mut writer = store_at(dir);
    writer.set_checkpoint_policy(covenant_supervisor::store::CheckpointPolicy {
        every_events: u64::MAX,
        every: std::time::Duration::from_secs(3600),
    });
    writer
        .append(&AuditEvent::new(
            covenant_supervisor::store::Kind::StoreOpened,
            serde_json::json!({"by": "covenantd", "pid": pid}),
        ))
        .unwrap();
    for i in 0..n {
        writer
            .append(&AuditEvent::by_agent("test", serde_json::json!({"i": i})))
            .unwrap();
    }
    std::mem::forget(writer); // no closing checkpoint, as a writer that is still running
}

#[test]
fn an_unsigned_tail_of_a_running_writer_is_reported_as_such_not_as_tampering() {
    let dir = filled(10);
    unsigned_tail_by(dir.path(), std::process::id(), 3);
    let report = reader_at(dir.path())
        .verify()
        .unwrap()
        .expect("a running writer's unsigned rows are not tampering");
    let tail = report.summary.unsigned_tail.expect("the tail is named");
    assert_eq!((tail.from, tail.to), (11, 14));
    assert_eq!(tail.writer.pid, std::process::id());
    assert_eq!(tail.writer.by, "covenantd");
}

#[test]
fn an_unsigned_tail_without_a_running_writer_is_named_as_inserted() {
    let dir = filled(10);
    let mut gone = Command::new("true").spawn().unwrap();
    let pid = gone.id();
    gone.wait().unwrap();
    unsigned_tail_by(dir.path(), pid, 3);
    let fault = reader_at(dir.path()).verify().unwrap().unwrap_err();
    assert_eq!(
        (fault.seq, fault.kind),
        (11, FaultKind::Inserted),
        "{fault}"
    );
    assert!(fault.detail.contains("no writer"), "{fault}");
    // A row edited inside a running writer's tail is still tampering.
    let dir = filled(10);
    unsigned_tail_by(dir.path(), std::process::id(), 3);
    tamper(
        dir.path(),
        "UPDATE audit SET body = '{\"i\":7}' WHERE seq = 13;",
    );
    let fault = reader_at(dir.path()).verify().unwrap().unwrap_err();
    assert_eq!(
        (fault.seq, fault.kind),
        (13, FaultKind::Modified),
        "{fault}"
    );
}

#[test]
fn a_truncated_tail_is_named_even_with_its_checkpoints_gone() {
    let dir = filled(20);
    tamper(
        dir.path(),
        "DELETE FROM audit WHERE seq > 15; DELETE FROM checkpoints WHERE seq > 15;",
    );
    assert_eq!(fault_of(dir.path()), (16, FaultKind::Truncated));
}

#[test]
fn a_replaced_file_with_a_shorter_valid_chain_is_caught() {
    let dir = filled(20);
    let other = filled(10);
    replace_store(other.path(), dir.path());
    let (_, kind) = fault_of(dir.path());
    assert_eq!(
        kind,
        FaultKind::BadSignature,
        "checkpoints signed by another key"
    );
    // Even re-signed with the right key, the recorded head outlives the shorter chain.
    let dir = filled(20);
    let old = tempfile::tempdir().unwrap();
    std::fs::copy(
        dir.path().join("supervisor.key"),
        old.path().join("supervisor.key"),
    )
    .unwrap();
    {
        let mut s = store_at(old.path());
        for _ in 0..5 {
            s.append(&AuditEvent::by_agent("test", serde_json::json!({})))
                .unwrap();
        }
    }
    replace_store(old.path(), dir.path());
    assert_eq!(fault_of(dir.path()).1, FaultKind::Truncated);
}

#[test]
fn exports_verify_without_the_database_and_pruning_keeps_the_chain_verifiable() {
    let dir = filled(30);
    let export = dir.path().join("export.jsonl");
    let mut store = store_at(dir.path());
    store
        .export(&mut std::fs::File::create(&export).unwrap(), None)
        .unwrap();
    assert!(verify_export(&export, None).unwrap().is_ok());
    let text =
        std::fs::read_to_string(&export)
            .unwrap()
            .replacen("\\\"i\\\":3,", "\\\"i\\\":4,", 1);
    std::fs::write(&export, text).unwrap();
    assert_eq!(
        verify_export(&export, None).unwrap().unwrap_err().kind,
        FaultKind::Modified
    );

    for _ in 0..10 {
        store
            .append(&AuditEvent::by_agent("test", serde_json::json!({})))
            .unwrap();
    }
    store.checkpoint().unwrap();
    let archive = dir.path().join("archive.jsonl");
    assert_eq!(store.prune(30, &archive).unwrap(), 30);
    let report = store.verify().unwrap().unwrap();
    assert_eq!(
        (report.summary.pruned_up_to, report.summary.first_seq),
        (Some(30), Some(31))
    );
    assert!(verify_export(&archive, None).unwrap().is_ok());
    let seq = store
        .append(&AuditEvent::by_agent("test", serde_json::json!({})))
        .unwrap();
    assert_eq!(seq, 41);
    drop(store);
    assert!(store_at(dir.path()).verify().unwrap().is_ok());
}

const CHILD_ENV: &str = "COVENANT_AUDIT_TEST_CHILD";
const COUNT_ENV: &str = "COVENANT_AUDIT_TEST_COUNT";
const STEP_ENV: &str = "COVENANT_AUDIT_TEST_STEP";
/// The test that, given `CHILD_ENV`, is a writer process instead.
const WRITER_TEST: &str = "a_second_process_appends_to_the_same_chain";

/// The writer process of the crash and concurrency tests: appends `count` events to the
/// store in `dir`, printing each sequence number once its commit has returned.
/// With `STEP_ENV` set, it waits for a line on stdin before each append.
fn append_and_acknowledge(dir: &Path, count: u64) {
    let mut store = store_at(dir);
    let stepped = std::env::var_os(STEP_ENV).is_some();
    let mut stdin = std::io::stdin().lock();
    for i in 0..count {
        if stepped {
            let mut go = String::new();
            if stdin.read_line(&mut go).unwrap() == 0 {
                return;
            }
        }
        let seq = store
            .append(&AuditEvent::by_agent(
                "test",
                serde_json::json!({"pid": std::process::id(), "i": i}),
            ))
            .unwrap();
        println!("ACK {seq}");
    }
}

/// The sequence number a writer acknowledged on `line`. The first shares its line with the
/// test harness's `test NAME ... `, which has no newline of its own.
fn acknowledged(line: &str) -> Option<u64> {
    let (_, seq) = line.split_once("ACK ")?;
    Some(seq.parse().unwrap())
}

/// Another process (this test binary again, as a writer) appends to the store while this
/// one holds it open: the two take turns, one append each, so each must see the other's
/// rows (no cached chain head), and together they make one gapless chain in which every
/// row holds what its writer was told it wrote. Free-running writers are the next test's.
/// With `CHILD_ENV` set, this test is that writer (and the writer of the tests below).
#[test]
fn a_second_process_appends_to_the_same_chain() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        let count = std::env::var(COUNT_ENV)
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(u64::MAX);
        append_and_acknowledge(Path::new(&dir), count);
        return;
    }
    const THEIRS: u64 = 300;
    const MINE: u64 = 150;
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn_child(dir.path(), Some(THEIRS), true);
    let child_pid = child.id();
    let mut go = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut theirs: Vec<u64> = Vec::new();
    let mut their_turn = |theirs: &mut Vec<u64>| {
        go.write_all(b"go\n").unwrap();
        let seq = lines
            .by_ref()
            .map_while(Result::ok)
            .find_map(|l| acknowledged(&l))
            .expect("the other writer acknowledged its append");
        theirs.push(seq);
    };
    their_turn(&mut theirs);
    let mut store = store_at(dir.path());
    let mut mine: Vec<u64> = Vec::new();
    for i in 0..MINE {
        let seq = store
            .append(&AuditEvent::by_agent(
                "test",
                serde_json::json!({"pid": std::process::id(), "i": i}),
            ))
            .unwrap();
        mine.push(seq);
        their_turn(&mut theirs);
    }
    while (theirs.len() as u64) < THEIRS {
        their_turn(&mut theirs);
    }
    assert!(child.wait().unwrap().success(), "the other writer failed");

    assert_eq!(theirs[..3], [1, 3, 5], "the turns interleave");
    assert_eq!(mine[..3], [2, 4, 6], "the turns interleave");
    for (who, seqs) in [("mine", &mine), ("theirs", &theirs)] {
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{who} rise: {seqs:?}");
    }
    let mut all: Vec<u64> = mine.iter().chain(&theirs).copied().collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=MINE + THEIRS).collect::<Vec<_>>(),
        "one gapless sequence"
    );
    for (pid, seqs) in [(std::process::id(), &mine), (child_pid, &theirs)] {
        for (i, &seq) in seqs.iter().enumerate() {
            let row = store.row(seq).unwrap().unwrap();
            let body: serde_json::Value = serde_json::from_str(&row.body).unwrap();
            assert_eq!(
                (&body["pid"], &body["i"]),
                (&serde_json::json!(pid), &serde_json::json!(i)),
                "row {seq}"
            );
        }
    }
    drop(store);
    let report = store_at(dir.path()).verify().unwrap().unwrap();
    assert_eq!(
        (report.summary.rows, report.summary.last_seq),
        (MINE + THEIRS, Some(MINE + THEIRS))
    );
}

fn spawn_child(dir: &Path, count: Option<u64>, stepped: bool) -> std::process::Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", WRITER_TEST, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir);
    if let Some(c) = count {
        cmd.env(COUNT_ENV, c.to_string());
    }
    if stepped {
        cmd.env(STEP_ENV, "1").stdin(Stdio::piped());
    }
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn sigkill_at_random_points_loses_no_acknowledged_event() {
    let dir = tempfile::tempdir().unwrap();
    let mut acks: Vec<u64> = Vec::new();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15 ^ std::process::id() as u64;
    for _ in 0..20 {
        let mut child = spawn_child(dir.path(), None, false);
        let stdout = child.stdout.take().unwrap();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let wanted = 5 + seed % 200;
        let mut lines = BufReader::new(stdout).lines();
        let mut seen = 0;
        while let Some(Ok(line)) = lines.next() {
            if let Some(seq) = acknowledged(&line) {
                acks.push(seq);
                seen += 1;
                if seen >= wanted {
                    break;
                }
            }
        }
        // SAFETY: kill(2) on a child this test started and has not reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        child.wait().unwrap();
        // Whatever the child printed after we stopped reading was acknowledged too.
        for line in lines.map_while(Result::ok) {
            if let Some(seq) = acknowledged(&line) {
                acks.push(seq);
            }
        }
    }
    let mut store = store_at(dir.path());
    store.checkpoint().unwrap();
    let report = store
        .verify()
        .unwrap()
        .expect("the chain verifies after 20 crashes");
    for seq in &acks {
        assert!(
            store.row(*seq).unwrap().is_some(),
            "acknowledged event {seq} is missing"
        );
    }
    assert!(report.summary.rows >= acks.len() as u64);
}

#[test]
fn writers_in_several_processes_keep_one_linear_chain() {
    let dir = tempfile::tempdir().unwrap();
    let children: Vec<_> = (0..4)
        .map(|_| spawn_child(dir.path(), Some(150), false))
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "a writer failed ({:?}): {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .last()
                .unwrap_or("")
        );
    }
    let store = store_at(dir.path());
    let report = store.verify().unwrap().unwrap();
    assert_eq!(report.summary.rows, 600);
    assert_eq!(report.summary.last_seq, Some(600));
}

/// A writer's close keeps the WAL short, so the next process to open the store does not
/// read a long one back; the chain stays whole across the checkpoint and the new WAL.
#[test]
fn a_writers_close_bounds_the_wal_and_the_chain_stays_whole() {
    let dir = tempfile::tempdir().unwrap();
    let wal = dir.path().join("covenant.db-wal");
    let wal_len = || std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    let body = serde_json::json!({"padding": "x".repeat(2048)});
    let mut grown = 0;
    for round in 0..3 {
        let mut store = store_at(dir.path());
        while wal_len() <= covenant_supervisor::store::WAL_BOUND_BYTES {
            store
                .append_batch(&[AuditEvent::new(Kind::RunIntent, body.clone())])
                .unwrap();
        }
        grown = grown.max(wal_len());
        store.close(Vec::new()).unwrap();
        assert_eq!(wal_len(), 0, "round {round}: the close truncated the WAL");
        // The next writer starts a new one.
        let mut store = store_at(dir.path());
        store
            .append_batch(&[AuditEvent::new(
                Kind::RunIntent,
                serde_json::json!({"round": round}),
            )])
            .unwrap();
        assert!(
            wal_len() < covenant_supervisor::store::WAL_BOUND_BYTES / 2,
            "round {round}: the WAL holds {} bytes after a close at {grown}",
            wal_len()
        );
        store.close(Vec::new()).unwrap();
    }
    assert!(grown > covenant_supervisor::store::WAL_BOUND_BYTES);
    let report = reader_at(dir.path()).verify().unwrap();
    assert!(report.is_ok(), "{report:?}");
}

/// A reader verifying while writers append, close (signing checkpoints, bounding the
/// WAL) and open again never reports a fault: what it reads is one snapshot.
#[test]
fn verifying_while_writers_append_and_close_never_reports_tampering() {
    let dir = tempfile::tempdir().unwrap();
    store_at(dir.path()).close(Vec::new()).unwrap();
    let body = serde_json::json!({"padding": "x".repeat(3000)});
    let done = std::sync::atomic::AtomicBool::new(false);
    let (verifies, faults) = std::thread::scope(|s| {
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let (dir, body) = (dir.path(), body.clone());
                s.spawn(move || {
                    for round in 0..40 {
                        let mut store = store_at(dir);
                        let mut batch = store.opening_events("writer").unwrap();
                        batch.push(AuditEvent::new(Kind::RunIntent, body.clone()));
                        store.append_batch(&batch).unwrap();
                        for _ in 0..6 {
                            store
                                .append_batch(&[AuditEvent::new(Kind::RunIntent, body.clone())])
                                .unwrap();
                        }
                        let last = serde_json::json!({"writer": w, "round": round});
                        store
                            .close(vec![AuditEvent::new(Kind::RunIntent, last)])
                            .unwrap();
                    }
                })
            })
            .collect();
        let verifier = s.spawn(|| {
            let (mut verifies, mut faults) = (0, Vec::new());
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                if let Err(fault) = reader_at(dir.path()).verify().unwrap() {
                    faults.push(format!("{fault:?}"));
                }
                verifies += 1;
            }
            (verifies, faults)
        });
        for w in writers {
            w.join().unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        verifier.join().unwrap()
    });
    assert!(verifies > 0);
    assert!(
        faults.is_empty(),
        "{} of {verifies}: {faults:?}",
        faults.len()
    );
    let report = reader_at(dir.path()).verify().unwrap();
    assert!(report.is_ok(), "{report:?}");
}
