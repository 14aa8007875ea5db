//! `covenant-ctl image ...`: import, list, inspect, remove, collect garbage.

use clap::Subcommand;
use covenant_policy::units::{format_size, format_unix_time};
use covenant_supervisor::images::{id_shift, orphan_using, store};
use covenant_supervisor::store as audit_store;
use covenant_supervisor::store::Kind;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Import an OCI image layout (directory or tar) or a `docker save` tar.
    Import {
        path: PathBuf,
        /// NAME[:TAG]; by default the layout's ref.name annotation or the archive's repo tag.
        #[arg(long)]
        name: Option<String>,
    },
    /// Pack a directory as a single-layer OCI image layout (to import or hand to others).
    Pack {
        dir: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        name: String,
    },
    Ls,
    Inspect {
        reference: String,
    },
    /// Remove a name (refused while a job runs on the image); `gc` frees the space.
    Rm {
        reference: String,
    },
    /// Delete blobs and layers no image names.
    Gc,
}

pub fn image(cmd: ImageCommand) -> anyhow::Result<i32> {
    match cmd {
        ImageCommand::Import { path, name } => {
            let tty = std::io::stderr().is_terminal();
            let mut progress = |line: &str| {
                if tty {
                    eprint!("\r\x1b[2K{line}");
                    let _ = std::io::stderr().flush();
                } else {
                    eprintln!("{line}");
                }
            };
            let record = store()?.import(&path, name.as_deref(), id_shift(), &mut progress)?;
            if tty {
                eprintln!();
            }
            audit_store::record(
                Kind::ImageImported,
                serde_json::json!({"name": record.name, "manifest_digest": record.manifest_digest, "layers": record.layers, "source": path}),
            )?;
            println!("{} {}", record.name, record.manifest_digest);
        }
        ImageCommand::Pack { dir, out, name } => {
            let layer = covenant_images::layout::tar_directory(&dir)?;
            let digest =
                covenant_images::layout::write_oci_layout(&[layer], &out, &name, &["/bin/sh"])?;
            println!("{} {digest}", out.display());
        }
        ImageCommand::Ls => {
            for r in store()?.list()? {
                println!(
                    "{}\t{}\t{}\t{}",
                    r.name,
                    &r.manifest_digest[..19],
                    format_size(r.size_bytes),
                    format_unix_time(r.imported_ms / 1000)
                );
            }
        }
        ImageCommand::Inspect { reference } => {
            let s = store()?;
            let r = s.resolve(&reference)?;
            let lowers = s.lower_dirs(&r)?;
            let mut v = serde_json::to_value(&r)?;
            v["layer_dirs"] = serde_json::to_value(lowers)?;
            v["in_use"] = serde_json::Value::Bool(s.in_use(&r)? || orphan_using(&s, &r));
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        ImageCommand::Rm { reference } => {
            let s = store()?;
            let r = s.remove(&reference, &|r| orphan_using(&s, r))?;
            audit_store::record(
                Kind::ImageRemoved,
                serde_json::json!({"name": r.name, "manifest_digest": r.manifest_digest}),
            )?;
            println!("removed {}", r.name);
        }
        ImageCommand::Gc => {
            let s = store()?;
            let n = s.gc(&|r| orphan_using(&s, r))?;
            if n > 0 {
                audit_store::record(Kind::ImageGc, serde_json::json!({"removed": n}))?;
            }
            println!("removed {n} unreferenced blobs and layers");
        }
    }
    Ok(0)
}
