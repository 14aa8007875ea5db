//! Landlock: filesystem rules equal to the mounts, TCP rules for `net:none`, and signal /
//! abstract-socket scoping. The parent checks what the kernel supports before anything is
//! created ([`check_support`]); the program applies the ruleset just before seccomp and
//! `execve` ([`apply`]). A ruleset the kernel would only partly enforce is an error unless
//! the plan accepted that named degradation.

use super::step::{ChildError, SetupStep};
use covenant_policy::annotations::{LandlockAccess, LandlockNet, LandlockPolicy};
use covenant_policy::Degradation;
use landlock::{
    path_beneath_rules, Access, AccessFs, AccessNet, CompatLevel, Compatible, NetPort, Ruleset,
    RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};

#[derive(Debug, thiserror::Error)]
pub enum LandlockError {
    #[error("landlock is not available on this kernel, so filesystem access cannot be restricted by it; accept the degradation `landlock` to run anyway")]
    Unsupported,
    #[error("landlock ABI {found} found, `net:none` needs TCP rules from ABI 4 (kernel ≥ 6.7); accept the degradation `landlock-net` to rely on the network namespace alone")]
    NoNetRules { found: i32 },
    #[error("landlock ABI {found} found, signal and abstract-socket scoping needs ABI 6 (kernel ≥ 6.12); accept the degradation `landlock-scope` to run without it")]
    NoScope { found: i32 },
}

/// The landlock ABI of the running kernel (0 when landlock is off).
pub fn kernel_abi() -> i32 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with a NULL attr, size 0 and the VERSION flag the syscall only returns a number.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if v < 0 {
        0
    } else {
        v as i32
    }
}

fn abi_enum(v: i32) -> ABI {
    match v {
        ..=0 => ABI::Unsupported,
        1 => ABI::V1,
        2 => ABI::V2,
        3 => ABI::V3,
        4 => ABI::V4,
        5 => ABI::V5,
        6 => ABI::V6,
        _ => ABI::V7,
    }
}

/// What will actually be enforced, decided before the sandbox is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LandlockPlan {
    pub abi: i32,
    pub fs: bool,
    pub net: bool,
    pub scope: bool,
}

/// Decides what of `policy` this kernel can enforce; refuses what it cannot unless the
/// matching degradation was accepted.
pub fn check_support(
    policy: &LandlockPolicy,
    abi: i32,
    accepted: &[Degradation],
) -> Result<LandlockPlan, LandlockError> {
    if abi < 1 {
        return if accepted.contains(&Degradation::Landlock) {
            Ok(LandlockPlan {
                abi,
                fs: false,
                net: false,
                scope: false,
            })
        } else {
            Err(LandlockError::Unsupported)
        };
    }
    let wants_net = policy.net != LandlockNet::Unrestricted;
    let net = wants_net && abi >= 4;
    if wants_net && !net && !accepted.contains(&Degradation::LandlockNet) {
        return Err(LandlockError::NoNetRules { found: abi });
    }
    let scope = policy.scope && abi >= 6;
    if policy.scope && !scope && !accepted.contains(&Degradation::LandlockScope) {
        return Err(LandlockError::NoScope { found: abi });
    }
    Ok(LandlockPlan {
        abi,
        fs: true,
        net,
        scope,
    })
}

/// Restricts the calling process. Runs in the program after `pivot_root` (so the paths are
/// sandbox paths) and after `no_new_privs`.
pub fn apply(policy: &LandlockPolicy, plan: LandlockPlan) -> Result<(), ChildError> {
    if !plan.fs {
        return Ok(());
    }
    let fail = |e: &dyn std::fmt::Display| ChildError::new(SetupStep::ApplyLandlock, e.to_string());
    let abi = abi_enum(plan.abi);
    let all = AccessFs::from_all(abi);
    let read_exec = AccessFs::from_read(abi);
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(all)
        .map_err(|e| fail(&e))?;
    if plan.net {
        ruleset = ruleset
            .handle_access(AccessNet::from_all(abi))
            .map_err(|e| fail(&e))?;
    }
    if plan.scope {
        ruleset = ruleset.scope(Scope::from_all(abi)).map_err(|e| fail(&e))?;
    }
    let mut created = ruleset.create().map_err(|e| fail(&e))?;
    for rule in &policy.fs {
        if std::fs::symlink_metadata(&rule.path).is_err() {
            continue;
        }
        let access = match rule.access {
            LandlockAccess::Read => read_exec & !AccessFs::Execute,
            LandlockAccess::ReadExec => read_exec,
            LandlockAccess::ReadWrite => all,
        };
        created = created
            .set_compatibility(CompatLevel::BestEffort)
            .add_rules(path_beneath_rules([&rule.path], access))
            .map_err(|e| {
                ChildError::new(
                    SetupStep::ApplyLandlock,
                    format!("rule for {}: {e}", rule.path.display()),
                )
            })?;
    }
    if let (true, LandlockNet::ConnectOnly { ports }) = (plan.net, &policy.net) {
        for &port in ports {
            created = created
                .add_rule(NetPort::new(port, AccessNet::ConnectTcp))
                .map_err(|e| {
                    ChildError::new(SetupStep::ApplyLandlock, format!("TCP port {port}: {e}"))
                })?;
        }
    }
    let status = created.restrict_self().map_err(|e| fail(&e))?;
    if status.ruleset != RulesetStatus::FullyEnforced {
        return Err(ChildError::new(
            SetupStep::ApplyLandlock,
            format!(
                "the kernel enforces the ruleset only as {:?}",
                status.ruleset
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use covenant_policy::annotations::LandlockPathRule;

    fn policy(net: LandlockNet) -> LandlockPolicy {
        LandlockPolicy {
            fs: vec![LandlockPathRule {
                path: "/".into(),
                access: LandlockAccess::ReadExec,
            }],
            net,
            scope: true,
        }
    }

    #[test]
    fn an_old_kernel_fails_closed_for_each_missing_feature() {
        assert!(matches!(
            check_support(&policy(LandlockNet::DenyAll), 0, &[]),
            Err(LandlockError::Unsupported)
        ));
        assert!(matches!(
            check_support(&policy(LandlockNet::DenyAll), 2, &[]),
            Err(LandlockError::NoNetRules { found: 2 })
        ));
        assert!(matches!(
            check_support(&policy(LandlockNet::DenyAll), 5, &[]),
            Err(LandlockError::NoScope { found: 5 })
        ));
        assert!(matches!(
            check_support(
                &policy(LandlockNet::Unrestricted),
                2,
                &[Degradation::LandlockNet]
            ),
            Err(LandlockError::NoScope { found: 2 })
        ));
    }

    #[test]
    fn accepted_degradations_are_dropped_and_reported() {
        let plan = check_support(
            &policy(LandlockNet::DenyAll),
            2,
            &[Degradation::LandlockNet, Degradation::LandlockScope],
        )
        .unwrap();
        assert_eq!(
            plan,
            LandlockPlan {
                abi: 2,
                fs: true,
                net: false,
                scope: false
            }
        );
        let plan =
            check_support(&policy(LandlockNet::DenyAll), 0, &[Degradation::Landlock]).unwrap();
        assert!(!plan.fs);
        let plan = check_support(&policy(LandlockNet::DenyAll), 7, &[]).unwrap();
        assert_eq!(
            plan,
            LandlockPlan {
                abi: 7,
                fs: true,
                net: true,
                scope: true
            }
        );
    }
}
