//! The process's identity: bounding set, supplementary groups, ids, then exactly the
//! capability sets the config lists (none listed: none kept). Runs in the container,
//! after every mount and before exec.

use crate::config::CapSets;
use crate::step::{step_err, StepError};
use caps::CapSet;
use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid};
use oci_spec::runtime::Process;

type Result<T> = std::result::Result<T, StepError>;

pub fn apply_user_and_caps(process: &Process, sets: &CapSets) -> Result<()> {
    let fail = |what: String, e: &dyn std::fmt::Display| {
        step_err("set user and capabilities", format!("{what}: {e}"))
    };
    let user = process.user();
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) } != 0 {
        return Err(fail(
            "keep capabilities".into(),
            &std::io::Error::last_os_error(),
        ));
    }
    for cap in caps::all() {
        if !sets.bounding.contains(&cap)
            && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false)
        {
            caps::drop(None, CapSet::Bounding, cap)
                .map_err(|e| fail(format!("process.capabilities.bounding (drop {cap})"), &e))?;
        }
    }
    let mut groups: Vec<Gid> = user
        .additional_gids()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(Gid::from_raw)
        .collect();
    groups.dedup();
    match setgroups(&groups) {
        Ok(()) => {}
        // A user namespace with setgroups denied: fine when no group was asked for.
        Err(nix::errno::Errno::EPERM) if groups.is_empty() => {}
        Err(e) => return Err(fail("process.user.additionalGids".into(), &e)),
    }
    let (u, g) = (Uid::from_raw(user.uid()), Gid::from_raw(user.gid()));
    setresgid(g, g, g).map_err(|e| fail(format!("process.user.gid {}", user.gid()), &e))?;
    setresuid(u, u, u).map_err(|e| fail(format!("process.user.uid {}", user.uid()), &e))?;
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) };
    let set = |name: &str, which: CapSet, list: &[caps::Capability]| -> Result<()> {
        let wanted: caps::CapsHashSet = list.iter().copied().collect();
        caps::set(None, which, &wanted)
            .map_err(|e| fail(format!("process.capabilities.{name}"), &e))
    };
    // Effective first: a permitted set below the current effective one is refused.
    set("effective", CapSet::Effective, &sets.effective)?;
    set("permitted", CapSet::Permitted, &sets.permitted)?;
    set("inheritable", CapSet::Inheritable, &sets.inheritable)?;
    caps::clear(None, CapSet::Ambient)
        .map_err(|e| fail("process.capabilities.ambient".into(), &e))?;
    for cap in &sets.ambient {
        caps::raise(None, CapSet::Ambient, *cap)
            .map_err(|e| fail(format!("process.capabilities.ambient ({cap})"), &e))?;
    }
    Ok(())
}
