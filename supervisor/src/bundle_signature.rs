//! A kept bundle's signature, and the checks that decide whether `run --bundle` may run it.
//!
//! `covenant-ctl bundle --out DIR` signs the digests of `plan.json` and `config.json` with
//! the supervisor key and writes them to `signature.json`. A bundle on disk is otherwise
//! just files: an agent can write one into its workspace, and anyone who can write the
//! directory can edit it. So a bundle runs only when
//!
//! 1. `signature.json` is signed by a key of this home's (the supervisor key or the
//!    operator key; capability issuers in the trust store sign capabilities, not bundles),
//! 2. `plan.json` is the plan that was signed, and
//! 3. `config.json` is exactly what that plan compiles to on this host (checked by writing
//!    the plan again into a scratch directory and comparing the two documents); the first
//!    field that differs is named as a JSON pointer.
//!
//! Even then the files on disk are not what runs: the caller runs the verified plan, and
//! the bundle the runner reads is written afresh.

use crate::keys::{self, KeyError};
use covenant_images::{write_bundle, BundleError, IdentityMap};
use covenant_policy::plan::hex;
use covenant_policy::token::{decode_key, encode_key};
use covenant_policy::SandboxPlan;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The file beside `plan.json` and `config.json` that holds the signature.
pub const SIGNATURE_FILE: &str = "signature.json";
const DOMAIN: &[u8] = b"covenant-bundle-v1\0";

#[derive(Debug, thiserror::Error)]
pub enum BundleSignatureError {
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path} is not valid JSON of the expected shape: {reason}")]
    Malformed { path: PathBuf, reason: String },
    #[error("{path}: the bundle is not signed; write it with `covenant-ctl bundle --out`")]
    Unsigned { path: PathBuf },
    #[error("{SIGNATURE_FILE} `/public_key`: {key} is not a key of this home (bundles are signed by the supervisor or operator key; a bundle from elsewhere must be written again here with `covenant-ctl bundle`)")]
    UntrustedKey { key: String },
    #[error("{SIGNATURE_FILE} `/signature`: the signature does not verify with {key}")]
    BadSignature { key: String },
    #[error("plan.json: digest {found} is not the signed plan digest {signed} (`/plan_digest` of {SIGNATURE_FILE})")]
    PlanChanged { found: String, signed: String },
    #[error("config.json `{pointer}`: differs from what the signed plan compiles to ({detail}); the bundle is refused")]
    ConfigChanged { pointer: String, detail: String },
    #[error("config.json: digest {found} is not the signed config digest {signed} (`/config_digest` of {SIGNATURE_FILE})")]
    ConfigDigest { found: String, signed: String },
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Bundle(#[from] BundleError),
}

type Result<T> = std::result::Result<T, BundleSignatureError>;

/// `signature.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleSignature {
    pub version: u32,
    pub plan_digest: String,
    pub config_digest: String,
    /// base64url ed25519 public key.
    pub public_key: String,
    /// base64url signature over the domain, the plan digest and the config digest.
    pub signature: String,
}

fn signed_bytes(plan_digest: &str, config_digest: &str) -> Vec<u8> {
    let mut out = DOMAIN.to_vec();
    out.extend_from_slice(plan_digest.as_bytes());
    out.push(0);
    out.extend_from_slice(config_digest.as_bytes());
    out
}

/// `sha256:` digest of a file's bytes, as bundle digests are written.
pub fn file_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64(text: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text.trim())
        .ok()
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|error| BundleSignatureError::Io {
        path: path.to_path_buf(),
        error,
    })
}

/// Signs the bundle in `dir` (its `plan.json` and `config.json` as they are on disk) with
/// `key`, writing `signature.json` (created new, 0600).
pub fn sign_bundle(dir: &Path, key: &SigningKey) -> Result<BundleSignature> {
    let plan_digest = file_digest(&read(&dir.join("plan.json"))?);
    let config_digest = file_digest(&read(&dir.join("config.json"))?);
    let signature = key.sign(&signed_bytes(&plan_digest, &config_digest));
    let sig = BundleSignature {
        version: 1,
        plan_digest,
        config_digest,
        public_key: encode_key(&key.verifying_key().to_bytes()),
        signature: b64(&signature.to_bytes()),
    };
    let path = dir.join(SIGNATURE_FILE);
    let io = |error| BundleSignatureError::Io {
        path: path.clone(),
        error,
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(io)?;
    let json = serde_json::to_vec_pretty(&sig).expect("serialisable");
    file.write_all(&json).map_err(io)?;
    Ok(sig)
}

/// The keys a bundle may be signed by: this home's supervisor key and operator key. The
/// trust store's keys are not among them: they issue capabilities, which are checked
/// scope by scope, while a signed bundle runs with the local operator's authority.
pub fn trusted_bundle_keys() -> Result<Vec<[u8; 32]>> {
    Ok(vec![
        keys::supervisor_key()?.verifying_key().to_bytes(),
        keys::operator_key()?.verifying_key().to_bytes(),
    ])
}

/// A bundle whose signature, plan and config were all checked; `plan` is what may run.
#[derive(Debug, Clone)]
pub struct VerifiedBundle {
    pub plan: SandboxPlan,
    pub signature: BundleSignature,
}

/// Checks the bundle in `dir` against `trusted` keys and against what its plan compiles
/// to with `ids`; see the module documentation for the order of the checks.
pub fn verify_bundle(dir: &Path, trusted: &[[u8; 32]], ids: IdentityMap) -> Result<VerifiedBundle> {
    let sig_path = dir.join(SIGNATURE_FILE);
    let sig_bytes = match std::fs::read(&sig_path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(BundleSignatureError::Unsigned { path: sig_path })
        }
        Err(error) => {
            return Err(BundleSignatureError::Io {
                path: sig_path,
                error,
            })
        }
    };
    let malformed = |path: &Path, reason: String| BundleSignatureError::Malformed {
        path: path.to_path_buf(),
        reason,
    };
    let signature: BundleSignature =
        serde_json::from_slice(&sig_bytes).map_err(|e| malformed(&sig_path, e.to_string()))?;
    let key = decode_key(&signature.public_key)
        .map_err(|_| malformed(&sig_path, "`/public_key` is not a base64url key".into()))?;
    if !trusted.contains(&key) {
        return Err(BundleSignatureError::UntrustedKey {
            key: signature.public_key.clone(),
        });
    }
    let bad_signature = || BundleSignatureError::BadSignature {
        key: signature.public_key.clone(),
    };
    let raw: [u8; 64] = unb64(&signature.signature)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(bad_signature)?;
    VerifyingKey::from_bytes(&key)
        .map_err(|_| bad_signature())?
        .verify_strict(
            &signed_bytes(&signature.plan_digest, &signature.config_digest),
            &Signature::from_bytes(&raw),
        )
        .map_err(|_| bad_signature())?;

    let plan_path = dir.join("plan.json");
    let plan_bytes = read(&plan_path)?;
    let found = file_digest(&plan_bytes);
    if found != signature.plan_digest {
        return Err(BundleSignatureError::PlanChanged {
            found,
            signed: signature.plan_digest.clone(),
        });
    }
    let plan: SandboxPlan =
        serde_json::from_slice(&plan_bytes).map_err(|e| malformed(&plan_path, e.to_string()))?;

    let config_path = dir.join("config.json");
    let config_bytes = read(&config_path)?;
    let on_disk: Value = serde_json::from_slice(&config_bytes)
        .map_err(|e| malformed(&config_path, e.to_string()))?;
    let expected = compile_config(&plan, dir, ids)?;
    if let Some((pointer, detail)) = first_difference(&expected, &on_disk) {
        return Err(BundleSignatureError::ConfigChanged { pointer, detail });
    }
    let found = file_digest(&config_bytes);
    if found != signature.config_digest {
        return Err(BundleSignatureError::ConfigDigest {
            found,
            signed: signature.config_digest.clone(),
        });
    }
    Ok(VerifiedBundle { plan, signature })
}

/// What `plan` compiles to as a bundle in `dir`: written into a scratch directory, with
/// the scratch directory's paths read back as `dir`'s.
fn compile_config(plan: &SandboxPlan, dir: &Path, ids: IdentityMap) -> Result<Value> {
    let nonce = keys::random_bytes::<8>()?;
    let scratch = std::env::temp_dir().join(format!("covenant-bundle-check-{}", hex(&nonce)));
    let result = (|| {
        let bundle = write_bundle(plan, &scratch.join("b"), ids)?;
        let bytes = read(&bundle.config_path())?;
        let mut value: Value =
            serde_json::from_slice(&bytes).map_err(|e| BundleSignatureError::Malformed {
                path: bundle.config_path(),
                reason: e.to_string(),
            })?;
        let from = bundle.dir.display().to_string();
        let to = dir.display().to_string();
        rebase_paths(&mut value, &from, &to);
        Ok(value)
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

/// Rewrites every string that is `from` or starts with `from/` to start with `to`.
fn rebase_paths(value: &mut Value, from: &str, to: &str) {
    match value {
        Value::String(s) => {
            if s == from {
                *s = to.to_string();
            } else if let Some(rest) = s.strip_prefix(from).filter(|r| r.starts_with('/')) {
                *s = format!("{to}{rest}");
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| rebase_paths(v, from, to)),
        Value::Object(map) => map.values_mut().for_each(|v| rebase_paths(v, from, to)),
        _ => {}
    }
}

fn escape_pointer(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn short(v: Option<&Value>) -> String {
    let text = v.map(Value::to_string).unwrap_or_else(|| "nothing".into());
    if text.chars().count() > 120 {
        text.chars().take(117).chain(['…']).collect()
    } else {
        text
    }
}

/// The first place where `found` differs from `expected`, as a JSON pointer (RFC 6901)
/// and a note of both values; `None` when they are equal. Object keys are visited in
/// sorted order, so the answer does not depend on key order in the file.
pub fn first_difference(expected: &Value, found: &Value) -> Option<(String, String)> {
    fn walk(path: &str, e: Option<&Value>, f: Option<&Value>) -> Option<(String, String)> {
        match (e, f) {
            (Some(Value::Object(a)), Some(Value::Object(b))) => {
                let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
                keys.sort();
                keys.dedup();
                keys.into_iter().find_map(|k| {
                    walk(&format!("{path}/{}", escape_pointer(k)), a.get(k), b.get(k))
                })
            }
            (Some(Value::Array(a)), Some(Value::Array(b))) => (0..a.len().max(b.len()))
                .find_map(|i| walk(&format!("{path}/{i}"), a.get(i), b.get(i))),
            (e, f) if e == f => None,
            (e, f) => Some((
                if path.is_empty() {
                    "/".into()
                } else {
                    path.to_string()
                },
                format!("expected {}, found {}", short(e), short(f)),
            )),
        }
    }
    walk("", Some(expected), Some(found))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_first_differing_field_is_named_as_a_json_pointer() {
        let a = json!({"linux": {"uidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}]}, "mounts": [{"destination": "/proc"}]});
        let mut b = a.clone();
        assert_eq!(first_difference(&a, &b), None);
        b["linux"]["uidMappings"][0]["hostID"] = json!(0);
        let (p, detail) = first_difference(&a, &b).unwrap();
        assert_eq!(p, "/linux/uidMappings/0/hostID");
        assert!(
            detail.contains("100000") && detail.contains("found 0"),
            "{detail}"
        );
        let mut c = a.clone();
        c["mounts"]
            .as_array_mut()
            .unwrap()
            .push(json!({"destination": "/"}));
        assert_eq!(first_difference(&a, &c).unwrap().0, "/mounts/1");
        let mut d = a.clone();
        d["annotations"] = json!({"org.opencovenant/x": "1"});
        assert_eq!(
            first_difference(&a, &d).unwrap().0,
            "/annotations",
            "a whole new member is named where it starts"
        );
    }

    #[test]
    fn scratch_paths_are_read_as_the_bundle_s_own() {
        let mut v = json!({"mounts": [{"source": "/tmp/x/b/generated/passwd"}, {"source": "/tmp/x/bb"}], "root": "/tmp/x/b"});
        rebase_paths(&mut v, "/tmp/x/b", "/home/k");
        assert_eq!(v["mounts"][0]["source"], "/home/k/generated/passwd");
        assert_eq!(v["mounts"][1]["source"], "/tmp/x/bb");
        assert_eq!(v["root"], "/home/k");
    }

    fn plan(dir: &Path) -> SandboxPlan {
        let mut m =
            covenant_policy::Manifest::parse("version = 1\ncommand = [\"true\"]\n").unwrap();
        m.base_dir = dir.to_path_buf();
        covenant_policy::compile_request(&m, "job-signature").unwrap()
    }

    fn written(dir: &Path, key: &SigningKey) -> PathBuf {
        let ids = IdentityMap::subordinate(100_000, 100_000);
        let b = dir.join("bundle");
        write_bundle(&plan(dir), &b, ids).unwrap();
        sign_bundle(&b, key).unwrap();
        b
    }

    #[test]
    fn a_signed_bundle_verifies_and_each_edit_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::from_bytes(&[7; 32]);
        let trusted = [key.verifying_key().to_bytes()];
        let ids = IdentityMap::subordinate(100_000, 100_000);
        let b = written(dir.path(), &key);
        let verified = verify_bundle(&b, &trusted, ids).unwrap();
        assert_eq!(verified.plan.job_id, "job-signature");

        // Untrusted signer.
        let err = verify_bundle(&b, &[[1; 32]], ids).unwrap_err();
        assert!(
            matches!(err, BundleSignatureError::UntrustedKey { .. }),
            "{err}"
        );

        // config.json edited: the root of the sandbox mapped to host root.
        let config = b.join("config.json");
        let original = std::fs::read(&config).unwrap();
        let mut v: Value = serde_json::from_slice(&original).unwrap();
        v["linux"]["uidMappings"][0]["hostID"] = json!(0);
        std::fs::write(&config, serde_json::to_vec(&v).unwrap()).unwrap();
        let err = verify_bundle(&b, &trusted, ids).unwrap_err().to_string();
        assert!(err.contains("`/linux/uidMappings/0/hostID`"), "{err}");
        std::fs::write(&config, &original).unwrap();

        // Same content, other formatting: accepted by content, refused by the digest.
        std::fs::write(
            &config,
            serde_json::to_vec(&serde_json::from_slice::<Value>(&original).unwrap()).unwrap(),
        )
        .unwrap();
        let err = verify_bundle(&b, &trusted, ids).unwrap_err();
        assert!(
            matches!(err, BundleSignatureError::ConfigDigest { .. }),
            "{err}"
        );
        std::fs::write(&config, &original).unwrap();

        // plan.json edited.
        let plan_path = b.join("plan.json");
        let mut p: Value = serde_json::from_slice(&std::fs::read(&plan_path).unwrap()).unwrap();
        p["argv"] = json!(["sh", "-c", "id"]);
        std::fs::write(&plan_path, serde_json::to_vec(&p).unwrap()).unwrap();
        let err = verify_bundle(&b, &trusted, ids).unwrap_err();
        assert!(
            matches!(err, BundleSignatureError::PlanChanged { .. }),
            "{err}"
        );

        // Signature file removed.
        std::fs::remove_file(b.join(SIGNATURE_FILE)).unwrap();
        let err = verify_bundle(&b, &trusted, ids).unwrap_err();
        assert!(
            matches!(err, BundleSignatureError::Unsigned { .. }),
            "{err}"
        );
    }

    #[test]
    fn a_signature_over_other_digests_does_not_verify() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::from_bytes(&[9; 32]);
        let b = written(dir.path(), &key);
        let path = b.join(SIGNATURE_FILE);
        let mut sig: BundleSignature =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        sig.config_digest = format!("sha256:{}", "0".repeat(64));
        std::fs::write(&path, serde_json::to_vec(&sig).unwrap()).unwrap();
        let err = verify_bundle(
            &b,
            &[key.verifying_key().to_bytes()],
            IdentityMap::subordinate(100_000, 100_000),
        )
        .unwrap_err();
        assert!(
            matches!(err, BundleSignatureError::BadSignature { .. }),
            "{err}"
        );
    }
}
