//! `$COVENANT_HOME` (where the store, keys and bundles live), job ids, and the host id
//! range sandboxes map to.

use covenant_images::IdentityMap;
use std::path::PathBuf;

/// Host id range the sandbox's ids map to when run as root, unless `/etc/subuid` and
/// `/etc/subgid` have an entry for the user `covenant`.
pub const DEFAULT_SUBORDINATE_BASE: u32 = 100_000;
pub const SUBORDINATE_SIZE: u32 = 65_536;

/// `$COVENANT_HOME`, else `/var/lib/covenant` as root, else `~/.covenant`.
pub fn covenant_home() -> PathBuf {
    if let Some(home) = std::env::var_os("COVENANT_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(home);
    }
    if nix::unistd::geteuid().is_root() {
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

/// The id map for this caller: a subordinate range as root, the caller alone otherwise.
pub fn identity_map() -> IdentityMap {
    let (uid, gid) = (
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getegid().as_raw(),
    );
    if uid != 0 {
        return IdentityMap::rootless(uid, gid);
    }
    let base = |file: &str| {
        std::fs::read_to_string(file).ok().and_then(|text| {
            text.lines().find_map(|l| {
                let mut parts = l.split(':');
                (parts.next()? == "covenant").then_some(())?;
                let start: u32 = parts.next()?.parse().ok()?;
                let count: u32 = parts.next()?.parse().ok()?;
                (count >= SUBORDINATE_SIZE && start > 0).then_some(start)
            })
        })
    };
    IdentityMap::subordinate(
        base("/etc/subuid").unwrap_or(DEFAULT_SUBORDINATE_BASE),
        base("/etc/subgid").unwrap_or(DEFAULT_SUBORDINATE_BASE),
    )
}
