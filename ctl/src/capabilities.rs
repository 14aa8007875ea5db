//! `covenant-ctl key ...` and `covenant-ctl cap ...`.

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use covenant_policy::token::{encode_key, id_text, Capability};
use covenant_policy::units::{format_unix_time, parse_duration};
use covenant_policy::{Scope, Subject};
use covenant_supervisor::authority::{self, load_capability};
use covenant_supervisor::home::covenant_home;
use covenant_supervisor::keys;
use covenant_supervisor::store;
use covenant_supervisor::store::Kind;
use ed25519_dalek::SigningKey;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Subcommand)]
pub enum KeyCommand {
    /// Generate an ed25519 key (file mode 0600; an existing file is never overwritten).
    Gen {
        /// Where to write the private key (default: $COVENANT_HOME/keys/<public prefix>.key).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print the public key of a private key file.
    Pub { file: PathBuf },
    /// Trust an issuer's public key (base64url, or a file holding one).
    Trust {
        key: String,
        #[arg(long)]
        name: Option<String>,
    },
    /// Stop trusting a key, by name or by key.
    Untrust { name_or_key: String },
    /// List trusted keys.
    Ls,
}

/// What a new token says, and who signs it.
#[derive(Args)]
pub struct TokenArgs {
    /// The signing key: the issuer's (grant) or the parent subject's (attenuate).
    #[arg(long)]
    key: PathBuf,
    /// A name, or key:BASE64URL (only a key-held token can be attenuated).
    #[arg(long)]
    subject: String,
    #[arg(long = "scope", required = true)]
    scopes: Vec<String>,
    #[arg(long, default_value = "1h")]
    ttl: String,
    /// Also write the token to this file (mode 0600).
    #[arg(long)]
    out: Option<PathBuf>,
}

impl TokenArgs {
    /// The signing key, subject, scopes and validity, parsed.
    fn parse(&self) -> anyhow::Result<(SigningKey, Subject, Vec<Scope>, Duration)> {
        Ok((
            keys::read_private_key(&self.key)?,
            Subject::parse(&self.subject)?,
            parse_scopes(&self.scopes)?,
            parse_duration(&self.ttl).context("--ttl")?,
        ))
    }
}

#[derive(Subcommand)]
pub enum CapCommand {
    /// Grant scopes to a subject, signed with an issuer key.
    Grant(#[command(flatten)] TokenArgs),
    /// Narrow a capability you hold (the parent's subject key signs the child).
    Attenuate {
        #[arg(long)]
        from: String,
        #[command(flatten)]
        token: TokenArgs,
    },
    /// Show a capability's whole chain and whether it verifies here.
    Inspect { cap: String },
    /// Verify a capability against the trust store and revocations (exit 0 when valid).
    Verify { cap: String },
    /// Revoke a token by id; every token derived from it is revoked with it.
    Revoke { id: String },
}

pub fn key(cmd: KeyCommand) -> anyhow::Result<i32> {
    match cmd {
        KeyCommand::Gen { out } => {
            let key = keys::generate_key()?;
            let public = encode_key(&key.verifying_key().to_bytes());
            let path = out.unwrap_or_else(|| {
                covenant_home()
                    .join("keys")
                    .join(format!("{}.key", &public[..12]))
            });
            keys::write_private_key(&path, &key)?;
            store::record(
                Kind::KeyGenerated,
                serde_json::json!({"public_key": public, "path": path}),
            )?;
            println!("{}", path.display());
            println!("public key: {public}");
        }
        KeyCommand::Pub { file } => {
            let key = keys::read_private_key(&file)?;
            println!("{}", encode_key(&key.verifying_key().to_bytes()));
        }
        KeyCommand::Trust { key, name } => {
            let public = keys::parse_public_key(&key)?;
            let name = keys::trust(&public, name.as_deref())?;
            store::record(
                Kind::KeyTrusted,
                serde_json::json!({"public_key": encode_key(&public), "name": name}),
            )?;
            println!("trusted {} as {name}", encode_key(&public));
        }
        KeyCommand::Untrust { name_or_key } => {
            let name = keys::untrust(&name_or_key)?;
            store::record(Kind::KeyUntrusted, serde_json::json!({"name": name}))?;
            println!("no longer trusted: {name}");
        }
        KeyCommand::Ls => {
            for (name, key) in keys::trusted_keys()? {
                println!("{name}\t{}", encode_key(&key));
            }
        }
    }
    Ok(0)
}

fn parse_scopes(texts: &[String]) -> anyhow::Result<Vec<Scope>> {
    texts
        .iter()
        .map(|t| Scope::parse(t).map_err(anyhow::Error::from))
        .collect()
}

fn emit(cap: &Capability, out: Option<PathBuf>) -> anyhow::Result<()> {
    let printed = cap.print();
    if let Some(path) = out {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("--out {}", path.display()))?;
        writeln!(f, "{printed}")?;
    }
    println!("{printed}");
    Ok(())
}

/// The audit body of an issued token: ids, parties, scopes, validity; never the token.
fn describe(cap: &Capability) -> serde_json::Value {
    let leaf = &cap.leaf().body;
    serde_json::json!({
        "id": id_text(&leaf.id),
        "chain": cap.chain.iter().map(|t| id_text(&t.body.id)).collect::<Vec<_>>(),
        "issuer": encode_key(&leaf.issuer),
        "subject": leaf.subject.to_string(),
        "scopes": leaf.scopes.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        "not_before": leaf.not_before,
        "expires": leaf.expires,
    })
}

pub fn cap(cmd: CapCommand) -> anyhow::Result<i32> {
    match cmd {
        CapCommand::Grant(args) => {
            let (issuer, subject, scopes, ttl) = args.parse()?;
            let cap = authority::grant(&issuer, subject, &scopes, ttl)?;
            store::record(Kind::CapabilityGranted, describe(&cap))?;
            emit(&cap, args.out)?;
        }
        CapCommand::Attenuate { from, token } => {
            let parent = load_capability(&from)?;
            let (holder, subject, scopes, ttl) = token.parse()?;
            let cap = authority::attenuate(&parent, &holder, subject, &scopes, ttl)?;
            store::record(Kind::CapabilityAttenuated, describe(&cap))?;
            emit(&cap, token.out)?;
        }
        CapCommand::Inspect { cap } => {
            let cap = load_capability(&cap)?;
            for (i, link) in cap.chain.iter().enumerate() {
                let b = &link.body;
                println!("link {i}{}", if i == 0 { " (root)" } else { "" });
                println!("  id         {}", id_text(&b.id));
                println!("  issuer     key:{}", encode_key(&b.issuer));
                println!("  subject    {}", b.subject);
                println!(
                    "  valid      {} .. {}",
                    format_unix_time(b.not_before),
                    format_unix_time(b.expires)
                );
                if let Some(p) = &b.parent {
                    println!("  parent     {}", id_text(&p.id));
                }
                for s in &b.scopes {
                    println!("  scope      {s}");
                }
            }
            match authority::verify(&cap) {
                Ok(_) => println!("status     valid on this host"),
                Err(e) => println!("status     {e}"),
            }
        }
        CapCommand::Verify { cap } => {
            let cap = load_capability(&cap)?;
            match authority::verify(&cap) {
                Ok(grant) => {
                    println!(
                        "valid: {} scopes for {}, until {}",
                        grant.scopes.len(),
                        grant.subject,
                        format_unix_time(grant.expires)
                    );
                }
                Err(e) => {
                    eprintln!("covenant: {e}");
                    return Ok(1);
                }
            }
        }
        CapCommand::Revoke { id } => {
            let id = keys::parse_token_id(&id)?;
            if keys::revoke(&id)? {
                store::record(
                    Kind::CapabilityRevoked,
                    serde_json::json!({"id": id_text(&id)}),
                )?;
                println!("revoked {}", id_text(&id));
            } else {
                bail!("{} was already revoked", id_text(&id));
            }
        }
    }
    Ok(0)
}
