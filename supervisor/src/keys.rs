//! Key files, the trust store and the revocation list under `$COVENANT_HOME`.
//!
//! - a private key file holds `covenant-ed25519-private-v1` and the base64url seed; it is
//!   created 0600, never overwritten, and refused when others can read it;
//! - `trust/NAME.pub` holds one trusted issuer's public key (base64url);
//! - `revoked` lists revoked token ids, one per line (32 hex digits).

use crate::home::covenant_home;
use covenant_policy::token::{decode_key, encode_key};
use ed25519_dalek::SigningKey;
use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

const PRIVATE_HEADER: &str = "covenant-ed25519-private-v1";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path} already exists; a key file is never overwritten")]
    Exists { path: PathBuf },
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path} is not a covenant private key file")]
    NotAKey { path: PathBuf },
    #[error("{path} is readable by other users (mode {mode:o}); run `chmod 600 {path}`")]
    Exposed { path: PathBuf, mode: u32 },
    #[error("`{0}` is neither a base64url public key nor a file holding one")]
    BadPublicKey(String),
    #[error("`{0}` is not a trust store name (letters, digits, `-_.`)")]
    BadName(String),
    #[error("no trusted key is named or equal to `{0}`")]
    NotTrusted(String),
    #[error("`{0}` is not a token id (32 hex digits)")]
    BadTokenId(String),
    #[error("the system random generator failed: {0}")]
    Random(std::io::Error),
}

type Result<T> = std::result::Result<T, KeyError>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |error| KeyError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// A fresh key from the kernel's random generator.
pub fn generate_key() -> Result<SigningKey> {
    let mut seed = [0u8; 32];
    // SAFETY: getrandom writes at most the buffer's length into it.
    let n = unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), 0) };
    if n != seed.len() as isize {
        return Err(KeyError::Random(std::io::Error::last_os_error()));
    }
    Ok(SigningKey::from_bytes(&seed))
}

/// Random bytes for token ids and nonces.
pub fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut out = [0u8; N];
    // SAFETY: getrandom writes at most the buffer's length into it.
    let n = unsafe { libc::getrandom(out.as_mut_ptr().cast(), N, 0) };
    if n != N as isize {
        return Err(KeyError::Random(std::io::Error::last_os_error()));
    }
    Ok(out)
}

/// Writes a new private key file (0600); refuses to replace an existing file.
pub fn write_private_key(path: &Path, key: &SigningKey) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(io(dir))?;
    }
    if path.exists() {
        return Err(KeyError::Exists {
            path: path.to_path_buf(),
        });
    }
    // Written whole under a private name, then linked into place: a reader never sees a
    // half-written key, and `link` refuses to replace a file another writer put there.
    // The name is this call's alone: two threads of one process (the store opened beside
    // a run that loads the same key) must not share, and so remove, each other's.
    let tmp = path.with_extension(format!(
        "tmp.{}.{}",
        std::process::id(),
        covenant_policy::plan::hex(&random_bytes::<8>()?)
    ));
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io(&tmp))?;
        let text = format!("{PRIVATE_HEADER}\n{}\n", encode_key(&key.to_bytes()));
        file.write_all(text.as_bytes()).map_err(io(&tmp))?;
        file.sync_all().map_err(io(&tmp))?;
        match fs::hard_link(&tmp, path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(KeyError::Exists {
                path: path.to_path_buf(),
            }),
            Err(e) => Err(io(path)(e)),
        }
    })();
    let _ = fs::remove_file(&tmp);
    result
}

/// Reads a private key file, refusing one that others can read.
pub fn read_private_key(path: &Path) -> Result<SigningKey> {
    let meta = fs::metadata(path).map_err(io(path))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Exposed {
            path: path.to_path_buf(),
            mode,
        });
    }
    let text = fs::read_to_string(path).map_err(io(path))?;
    let mut lines = text.lines();
    let not_a_key = || KeyError::NotAKey {
        path: path.to_path_buf(),
    };
    if lines.next() != Some(PRIVATE_HEADER) {
        return Err(not_a_key());
    }
    let seed = lines.next().ok_or_else(not_a_key)?;
    let bytes = base64_decode(seed).ok_or_else(not_a_key)?;
    let seed: [u8; 32] = bytes.try_into().map_err(|_| not_a_key())?;
    Ok(SigningKey::from_bytes(&seed))
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text.trim())
        .ok()
}

/// The operator's key (`$COVENANT_HOME/operator.key`), created on first use.
pub fn operator_key() -> Result<SigningKey> {
    key_created_on_first_use(&covenant_home().join("operator.key"))
}

/// The supervisor's key (`$COVENANT_HOME/supervisor.key`), which signs audit checkpoints
/// and kept bundles; created on first use.
pub fn supervisor_key() -> Result<SigningKey> {
    key_created_on_first_use(&covenant_home().join("supervisor.key"))
}

/// The private key at `path`, created (0600) when there is none.
pub fn key_created_on_first_use(path: &Path) -> Result<SigningKey> {
    match read_private_key(path) {
        Ok(key) => Ok(key),
        Err(KeyError::Io { error, .. }) if error.kind() == std::io::ErrorKind::NotFound => {
            let key = generate_key()?;
            match write_private_key(path, &key) {
                Ok(()) => Ok(key),
                // Another process created it first: use theirs.
                Err(KeyError::Exists { .. }) => read_private_key(path),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

/// A public key given as base64url text or as a file that holds one (a `.pub` file, or a
/// private key file, whose public half is taken).
pub fn parse_public_key(arg: &str) -> Result<[u8; 32]> {
    if let Ok(key) = decode_key(arg) {
        return Ok(key);
    }
    let path = Path::new(arg);
    if path.is_file() {
        if let Ok(key) = read_private_key(path) {
            return Ok(key.verifying_key().to_bytes());
        }
        let text = fs::read_to_string(path).map_err(io(path))?;
        return decode_key(text.trim()).map_err(|_| KeyError::BadPublicKey(arg.to_string()));
    }
    Err(KeyError::BadPublicKey(arg.to_string()))
}

fn trust_dir() -> PathBuf {
    covenant_home().join("trust")
}

/// The trust store: (name, key), sorted by name.
pub fn trusted_keys() -> Result<Vec<(String, [u8; 32])>> {
    let dir = trust_dir();
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(&dir)(e)),
    };
    let mut keys = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".pub"))
        else {
            continue;
        };
        let text = fs::read_to_string(&path).map_err(io(&path))?;
        let key = decode_key(text.trim())
            .map_err(|_| KeyError::BadPublicKey(path.display().to_string()))?;
        keys.push((name.to_string(), key));
    }
    keys.sort();
    Ok(keys)
}

/// Adds `key` to the trust store as `name` (default: its first 12 characters).
pub fn trust(key: &[u8; 32], name: Option<&str>) -> Result<String> {
    let text = encode_key(key);
    let name = name
        .map(str::to_string)
        .unwrap_or_else(|| text[..12].replace(['-', '_'], "x"));
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        || name.starts_with('.')
    {
        return Err(KeyError::BadName(name));
    }
    let dir = trust_dir();
    fs::create_dir_all(&dir).map_err(io(&dir))?;
    let path = dir.join(format!("{name}.pub"));
    fs::write(&path, format!("{text}\n")).map_err(io(&path))?;
    Ok(name)
}

/// Removes the trusted key named `name_or_key` (or equal to it).
pub fn untrust(name_or_key: &str) -> Result<String> {
    let by_key = decode_key(name_or_key).ok();
    for (name, key) in trusted_keys()? {
        if name == name_or_key || Some(key) == by_key {
            let path = trust_dir().join(format!("{name}.pub"));
            fs::remove_file(&path).map_err(io(&path))?;
            return Ok(name);
        }
    }
    Err(KeyError::NotTrusted(name_or_key.to_string()))
}

fn revoked_path() -> PathBuf {
    covenant_home().join("revoked")
}

/// Parses a token id (32 hex digits).
pub fn parse_token_id(text: &str) -> Result<[u8; 16]> {
    let text = text.trim();
    let bad = || KeyError::BadTokenId(text.to_string());
    if text.len() != 32 {
        return Err(bad());
    }
    let mut id = [0u8; 16];
    for (i, byte) in id.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(id)
}

/// Revoked token ids.
pub fn revoked() -> Result<HashSet<[u8; 16]>> {
    let path = revoked_path();
    match fs::read_to_string(&path) {
        Ok(text) => text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(parse_token_id)
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(HashSet::new()),
        Err(e) => Err(io(&path)(e)),
    }
}

/// Adds a token id to the revocation list (durably: appended and synced).
pub fn revoke(id: &[u8; 16]) -> Result<bool> {
    if revoked()?.contains(id) {
        return Ok(false);
    }
    let path = revoked_path();
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let mut file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o644)
        .open(&path)
        .map_err(io(&path))?;
    file.write_all(format!("{}\n", covenant_policy::token::id_text(id)).as_bytes())
        .map_err(io(&path))?;
    file.sync_all().map_err(io(&path))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Threads of one process creating the same key at once all end with the key on disk.
    #[test]
    fn concurrent_first_uses_agree_on_the_one_key_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        for round in 0..100 {
            let path = dir.path().join(format!("k{round}.key"));
            let keys: Vec<_> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..4)
                    .map(|_| s.spawn(|| key_created_on_first_use(&path).map(|k| k.to_bytes())))
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let on_disk = read_private_key(&path).unwrap().to_bytes();
            for key in keys {
                assert_eq!(key.unwrap(), on_disk, "round {round}");
            }
        }
        let left: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .filter(|n| n.to_string_lossy().contains(".tmp."))
            .collect();
        assert!(left.is_empty(), "temporary files left: {left:?}");
    }
}
