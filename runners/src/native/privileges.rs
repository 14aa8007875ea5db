//! The program's last steps before `execve`: rlimits, ids, every capability dropped,
//! `no_new_privs`. Runs in the program process, inside the sandbox's user namespace.

use super::spec::NativeSpec;
use super::step::{ChildError, SetupStep};
use caps::CapSet;
use nix::sys::resource::{getrlimit, setrlimit};
use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};

const SECBIT_NOROOT: libc::c_ulong = 1 << 0;
const SECBIT_NOROOT_LOCKED: libc::c_ulong = 1 << 1;
const SECBIT_NO_CAP_AMBIENT_RAISE: libc::c_ulong = 1 << 6;
const SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED: libc::c_ulong = 1 << 7;

/// Sets each rlimit. Raising a hard limit above the caller's needs `CAP_SYS_RESOURCE` on
/// the host, so asking for more than the current hard limit is reported by name.
pub fn set_rlimits(spec: &NativeSpec) -> Result<(), ChildError> {
    for &(resource, soft, hard, name) in &spec.rlimits {
        if let Err(e) = setrlimit(resource, soft, hard) {
            let current = match getrlimit(resource) {
                Ok((_, hard)) => hard.to_string(),
                Err(e) => format!("unknown ({e})"),
            };
            return Err(ChildError::new(
                SetupStep::SetRlimits,
                format!("rlimit {name} {soft}:{hard}: {} (the current hard limit is {current}; only root with CAP_SYS_RESOURCE may raise it)", std::io::Error::from(e)),
            ));
        }
    }
    Ok(())
}

/// Drops every capability for good: `SECBIT_NOROOT` (uid 0 regains nothing at `execve`),
/// empty bounding and ambient sets, then the target ids, then empty effective, permitted
/// and inheritable sets.
pub fn drop_privileges(spec: &NativeSpec) -> Result<(), ChildError> {
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        ChildError::new(SetupStep::DropPrivileges, format!("{what}: {e}"))
    };
    let bits = SECBIT_NOROOT
        | SECBIT_NOROOT_LOCKED
        | SECBIT_NO_CAP_AMBIENT_RAISE
        | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED;
    // nix has no securebits call: a raw prctl.
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_SECUREBITS, bits, 0, 0, 0) } != 0 {
        return Err(fail("securebits", &std::io::Error::last_os_error()));
    }
    caps::clear(None, CapSet::Ambient).map_err(|e| fail("ambient set", &e))?;
    for cap in caps::all() {
        caps::drop(None, CapSet::Bounding, cap)
            .map_err(|e| fail(&format!("bounding set ({cap})"), &e))?;
    }
    let mut groups: Vec<Gid> = vec![Gid::from_raw(spec.gid)];
    groups.extend(spec.additional_gids.iter().map(|&g| Gid::from_raw(g)));
    // A rootless sandbox maps one gid and has setgroups denied; it has no groups to drop.
    if spec.gid_map.size > 1 {
        setgroups(&groups).map_err(|e| fail("setgroups", &e))?;
    }
    let (uid, gid) = (Uid::from_raw(spec.uid), Gid::from_raw(spec.gid));
    setresgid(gid, gid, gid).map_err(|e| fail("setresgid", &e))?;
    setresuid(uid, uid, uid).map_err(|e| fail("setresuid", &e))?;
    for set in [CapSet::Effective, CapSet::Permitted, CapSet::Inheritable] {
        caps::clear(None, set).map_err(|e| fail(&format!("{set:?} set"), &e))?;
    }
    if !caps::read(None, CapSet::Permitted)
        .map_err(|e| fail("verify", &e))?
        .is_empty()
    {
        return Err(ChildError::new(
            SetupStep::DropPrivileges,
            "capabilities remain after dropping them",
        ));
    }
    Ok(())
}

/// `no_new_privs`: `execve` can never grant privileges (setuid bits, file capabilities).
pub fn set_no_new_privs() -> Result<(), ChildError> {
    nix::sys::prctl::set_no_new_privs().map_err(|e| {
        ChildError::new(
            SetupStep::SetNoNewPrivs,
            std::io::Error::from(e).to_string(),
        )
    })
}
