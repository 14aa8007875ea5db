//! `cargo bench -p covenant-supervisor`: durable audit appends (group commit from 32
//! threads, and batches from one), and verification of a 1,000,000-event chain.
//! Targets: at least 20,000 durable events/s; verification of 1,000,000 events under 3 s.

use covenant_supervisor::store::group::AuditWriter;
use covenant_supervisor::store::{AuditEvent, CheckpointPolicy, Store};
use std::time::{Duration, Instant};

fn event(i: u64) -> AuditEvent {
    AuditEvent::new(
        covenant_supervisor::store::Kind::RunExited,
        serde_json::json!({"job": format!("job-{i:016x}"), "exit_code": 0, "duration_ms": 12.5, "cpu_time_ms": 3.1}),
    )
}

fn open(dir: &std::path::Path) -> Store {
    Store::open(&dir.join("covenant.db"), &dir.join("supervisor.key")).unwrap()
}

fn main() {
    let dir = tempfile::tempdir().unwrap();

    // Group commit: 32 threads, each waiting for durability of every event it appends.
    let writer = AuditWriter::start(open(dir.path()));
    let (threads, per_thread) = (32u64, 1_500u64);
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let sender = writer.sender();
            std::thread::spawn(move || {
                for i in 0..per_thread {
                    sender.append(event(t * per_thread + i)).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let grouped = (threads * per_thread) as f64 / start.elapsed().as_secs_f64();
    drop(writer.stop());

    // One writer, batches of 256 events per transaction.
    let mut store = open(dir.path());
    let batch: Vec<AuditEvent> = (0..256).map(event).collect();
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(2) {
        store.append_batch(&batch).unwrap();
        n += batch.len() as u64;
    }
    let batched = n as f64 / start.elapsed().as_secs_f64();

    // One writer, one event per transaction (one fsync each), for reference.
    let start = Instant::now();
    let mut single = 0u64;
    while start.elapsed() < Duration::from_secs(1) {
        store.append(&event(single)).unwrap();
        single += 1;
    }
    let single_rate = single as f64 / start.elapsed().as_secs_f64();
    drop(store);

    // Verification of 1,000,000 events.
    let big = tempfile::tempdir().unwrap();
    let mut store = open(big.path());
    store.set_checkpoint_policy(CheckpointPolicy {
        every_events: 100_000,
        every: Duration::from_secs(3600),
    });
    let chunk: Vec<AuditEvent> = (0..10_000).map(event).collect();
    for _ in 0..100 {
        store.append_batch(&chunk).unwrap();
    }
    store.checkpoint().unwrap();
    let start = Instant::now();
    let report = store.verify().unwrap().expect("the chain verifies");
    let verify_time = start.elapsed();
    assert_eq!(report.summary.rows, 1_000_000);

    println!("{:<52} {:>14} {:>10}", "measure", "value", "target");
    let row = |name: &str, value: String, met: bool, target: &str| {
        println!(
            "{name:<52} {value:>14} {:>10}",
            if met {
                format!("{target} met")
            } else {
                format!("{target} MISSED")
            }
        );
    };
    row(
        "durable appends/s, group commit, 32 threads",
        format!("{grouped:.0}"),
        grouped >= 20_000.0,
        "20000",
    );
    row(
        "durable appends/s, one writer, 256 per commit",
        format!("{batched:.0}"),
        batched >= 20_000.0,
        "20000",
    );
    println!(
        "{:<52} {:>14}",
        "durable appends/s, one writer, one per commit",
        format!("{single_rate:.0}")
    );
    row(
        "verify 1,000,000 events, seconds",
        format!("{:.2}", verify_time.as_secs_f64()),
        verify_time < Duration::from_secs(3),
        "3 s",
    );
}
