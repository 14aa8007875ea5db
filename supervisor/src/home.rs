//! `$COVENANT_HOME`: where bundles (and later the store and keys) live.

use std::path::PathBuf;

/// `$COVENANT_HOME`, else `/var/lib/covenant` as root, else `~/.covenant`.
pub fn covenant_home() -> PathBuf {
    if let Some(home) = std::env::var_os("COVENANT_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(home);
    }
    // SAFETY: geteuid has no failure mode and no memory effects.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/covenant");
    }
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".covenant"))
        .unwrap_or_else(|| PathBuf::from(".covenant"))
}

/// A fresh job id: `job-` and 16 random hex digits.
pub fn new_job_id() -> String {
    let mut bytes = [0u8; 8];
    // SAFETY: getrandom writes at most the buffer's length.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != bytes.len() as isize {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        bytes = ((nanos as u64) ^ ((std::process::id() as u64) << 32)).to_ne_bytes();
    }
    format!("job-{}", covenant_policy::plan::hex(&bytes))
}
