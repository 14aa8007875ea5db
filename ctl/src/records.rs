//! `covenant-ctl audit ...` and `covenant-ctl mem ...`: the store's two halves.

use anyhow::{bail, Context};
use clap::Subcommand;
use covenant_policy::units::format_unix_time;
use covenant_supervisor::store::audit::verify_export;
use covenant_supervisor::store::chain::AuditRow;
use covenant_supervisor::store::memory::{MemoryItem, Tier};
use covenant_supervisor::store::Store;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Print the last events; with -f, keep printing new ones.
    Tail {
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: u64,
        #[arg(short = 'f', long)]
        follow: bool,
    },
    /// Print one event in full.
    Show { seq: u64 },
    /// Recompute the chain and check every checkpoint (exit 0 only when clean).
    Verify {
        /// Verify an export file instead, without any database.
        #[arg(long, value_name = "FILE")]
        from_export: Option<PathBuf>,
        /// With --from-export: the public key the export must be signed with.
        #[arg(long, value_name = "PUB")]
        key: Option<String>,
    },
    /// Write a self-contained export (events, hashes, checkpoints, public key).
    Export {
        /// JSON lines (the only format).
        #[arg(long, required = true)]
        jsonl: bool,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Archive events up to a checkpointed SEQ to FILE and drop them, keeping a signed marker.
    Prune {
        #[arg(long)]
        up_to: u64,
        #[arg(long)]
        archive: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum MemCommand {
    /// Store an item; prints its id.
    Put {
        #[arg(long)]
        ns: String,
        #[arg(long, default_value = "working")]
        tier: String,
        /// JSON object of metadata.
        #[arg(long)]
        meta: Option<String>,
        #[arg(long)]
        parent: Option<String>,
        text: String,
    },
    Get {
        id: String,
    },
    /// Full-text search in a namespace, best match first.
    Search {
        #[arg(long)]
        ns: String,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        query: String,
    },
    Ls {
        #[arg(long)]
        ns: Option<String>,
        #[arg(long)]
        tier: Option<String>,
    },
    Rm {
        id: String,
    },
    /// Report items past their tier's TTL; delete them with --apply.
    Compact {
        #[arg(long)]
        apply: bool,
    },
}

fn print_row(r: &AuditRow) {
    println!(
        "{:>8}  {}  {:<22} {}",
        r.seq,
        format_unix_time(r.time_ms / 1000),
        r.kind,
        r.body
    );
}

/// `audit verify --daemon`: the daemon signs its head and verifies the chain on its
/// writer's connection, so no row it wrote is left unsigned.
fn verify_through_daemon() -> anyhow::Result<i32> {
    let Some(client) = crate::client_mode::daemon_for(crate::client_mode::Mode::Daemon)? else {
        bail!("--daemon: no covenantd answers");
    };
    let answer = client.request("GET", "/v1/audit/verify", None)?;
    let body = answer.json();
    match answer.status {
        200 => {
            println!(
                "clean (signed and verified by covenantd): {}",
                body["report"]
            );
            Ok(0)
        }
        409 => {
            println!(
                "TAMPERED: {}",
                body["error"].as_str().unwrap_or("the daemon found a fault")
            );
            Ok(1)
        }
        status => bail!("covenantd answered {status}: {}", answer.error_text()),
    }
}

/// `covenant-ctl audit ...`; `through_daemon` for `--daemon`, which `verify` honours.
pub fn audit(cmd: AuditCommand, through_daemon: bool) -> anyhow::Result<i32> {
    match cmd {
        AuditCommand::Tail { lines, follow } => {
            let store = Store::open_default_reader()?;
            let rows = store.tail(lines)?;
            let mut last = rows.last().map(|r| r.seq).unwrap_or(0);
            rows.iter().for_each(print_row);
            if !follow {
                return Ok(0);
            }
            loop {
                std::thread::sleep(Duration::from_millis(200));
                for r in store.rows_after(last, 1_000)? {
                    print_row(&r);
                    last = r.seq;
                }
            }
        }
        AuditCommand::Show { seq } => {
            let store = Store::open_default_reader()?;
            let Some(r) = store.row(seq)? else {
                bail!("no event {seq}")
            };
            let body: serde_json::Value = serde_json::from_str(&r.body)?;
            let out = serde_json::json!({
                "seq": r.seq, "time": format_unix_time(r.time_ms / 1000), "time_ms": r.time_ms, "kind": r.kind, "body": body,
                "prev_hash": covenant_policy::plan::hex(&r.prev_hash), "hash": covenant_policy::plan::hex(&r.hash),
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        AuditCommand::Verify { from_export, key } => {
            if through_daemon {
                if from_export.is_some() {
                    bail!("--from-export verifies a file on this host: run it without --daemon");
                }
                return verify_through_daemon();
            }
            let result = match from_export {
                Some(file) => {
                    let pinned = key
                        .map(|k| covenant_supervisor::keys::parse_public_key(&k))
                        .transpose()?;
                    verify_export(&file, pinned)?.map(serde_json::to_value)
                }
                None => Store::open_default_reader()?
                    .verify()?
                    .map(serde_json::to_value),
            };
            match result {
                Ok(summary) => {
                    let summary = summary?;
                    println!("clean: {summary}");
                    if let Some(tail) = summary.get("unsigned_tail") {
                        println!(
                            "unsigned tail: rows {}..{} chain correctly and are not signed yet: {} (pid {}) is still writing; `covenant-ctl --daemon audit verify` has the daemon sign them first",
                            tail["from"], tail["to"],
                            tail["writer"]["by"].as_str().unwrap_or("a writer"),
                            tail["writer"]["pid"]
                        );
                    }
                }
                Err(fault) => {
                    println!("TAMPERED: {fault}");
                    return Ok(1);
                }
            }
        }
        AuditCommand::Export { jsonl: _, out } => {
            let store = Store::open_default_reader()?;
            let n = match out {
                Some(path) => {
                    let mut f = std::fs::File::create(&path)
                        .with_context(|| format!("--out {}", path.display()))?;
                    store.export(&mut f, None)?
                }
                None => store.export(&mut std::io::stdout().lock(), None)?,
            };
            eprintln!("exported {n} events");
        }
        AuditCommand::Prune { up_to, archive } => {
            let mut store = Store::open_default()?;
            let n = store.prune(up_to, &archive)?;
            store.append(&covenant_supervisor::store::AuditEvent::new(
                covenant_supervisor::store::Kind::AuditPruned,
                serde_json::json!({"up_to": up_to, "archived": n, "archive": archive}),
            ))?;
            println!(
                "archived and dropped {n} events up to {up_to} into {}",
                archive.display()
            );
        }
    }
    Ok(0)
}

fn print_item(i: &MemoryItem) {
    println!(
        "{}\t{}\t{}\t{}\t{}",
        i.id,
        i.namespace,
        i.tier.as_str(),
        format_unix_time(i.updated_ms / 1000),
        i.text.replace('\n', " ")
    );
}

pub fn mem(cmd: MemCommand) -> anyhow::Result<i32> {
    let mut store = Store::open_default()?;
    match cmd {
        MemCommand::Put {
            ns,
            tier,
            meta,
            parent,
            text,
        } => {
            let id = store.mem_put(
                &ns,
                Tier::parse(&tier)?,
                &text,
                meta.as_deref(),
                parent.as_deref(),
            )?;
            println!("{id}");
        }
        MemCommand::Get { id } => {
            let Some(item) = store.mem_get(&id)? else {
                bail!("no memory item `{id}`")
            };
            println!("{}", serde_json::to_string_pretty(&item)?);
        }
        MemCommand::Search { ns, limit, query } => store
            .mem_search(&ns, &query, limit)?
            .iter()
            .for_each(print_item),
        MemCommand::Ls { ns, tier } => {
            let tier = tier.as_deref().map(Tier::parse).transpose()?;
            store
                .mem_list(ns.as_deref(), tier)?
                .iter()
                .for_each(print_item);
        }
        MemCommand::Rm { id } => {
            if !store.mem_remove(&id)? {
                bail!("no memory item `{id}`");
            }
        }
        MemCommand::Compact { apply } => {
            let report = store.mem_compact(apply, covenant_supervisor::store::audit::now_ms())?;
            for (id, ns, tier) in &report.expired {
                println!(
                    "{} {id}\t{ns}\t{tier}",
                    if apply { "removed" } else { "would remove" }
                );
            }
            if !apply && !report.expired.is_empty() {
                println!(
                    "{} expired items; run with --apply to remove them",
                    report.expired.len()
                );
            }
        }
    }
    Ok(0)
}
