//! Compiles an OCI `linux.seccomp` section into BPF with `seccompiler`, once, in the parent;
//! the sandboxed program loads it as the very last step before `execve`.
//!
//! OCI rules carry one action each, a `seccompiler` filter has one match action, so the
//! profile becomes a small stack of filters: first the allow rules with the profile's
//! default action on mismatch, then one filter per other action that matches only its own
//! rules. The kernel runs every filter and keeps the most restrictive verdict, and among
//! equal ones (two `ERRNO`s) the newest filter's, so a deny rule wins over the default's
//! `ENOSYS` and over any allow rule it overlaps.

use super::syscall_table::{is_known_syscall, syscall_number};
use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp action {action:?} is not supported by the native runner")]
    UnsupportedAction { action: LinuxSeccompAction },
    #[error("seccomp rule for `{syscall}`: argument condition {index} is invalid: {reason}")]
    BadCondition {
        syscall: String,
        index: usize,
        reason: String,
    },
    #[error("seccomp rule ({action:?}) names `{syscall}`, which is no Linux syscall; a deny rule that cannot be enforced is refused, not skipped")]
    UnknownSyscall {
        syscall: String,
        action: LinuxSeccompAction,
    },
    #[error("seccomp filter could not be compiled: {0}")]
    Compile(String),
    #[error("seccomp filter could not be loaded: {0}")]
    Load(String),
}

/// Arguments the kernel reads as 32-bit values: comparing all 64 bits would let a program
/// set the high half and slip past an equality check (`ioctl(fd, TIOCSTI | 1 << 32)`,
/// `socket(AF_VSOCK | 1 << 32, ...)`).
const DWORD_ARGS: [(&str, u8); 4] = [
    ("ioctl", 1),
    ("personality", 0),
    ("socket", 0),
    ("socketpair", 0),
];

fn action(action: LinuxSeccompAction, errno: Option<u32>) -> Result<SeccompAction, SeccompError> {
    Ok(match action {
        LinuxSeccompAction::ScmpActAllow => SeccompAction::Allow,
        LinuxSeccompAction::ScmpActErrno => {
            SeccompAction::Errno(errno.unwrap_or(libc::EPERM as u32))
        }
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            SeccompAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => SeccompAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => SeccompAction::Trap,
        LinuxSeccompAction::ScmpActLog => SeccompAction::Log,
        other => return Err(SeccompError::UnsupportedAction { action: other }),
    })
}

fn arch() -> TargetArch {
    if cfg!(target_arch = "aarch64") {
        TargetArch::aarch64
    } else {
        TargetArch::x86_64
    }
}

/// Rules of one action, by syscall number; `None` means "every call" (unconditional).
type RuleGroup = BTreeMap<i64, Option<Vec<SeccompRule>>>;

/// The compiled filters, in the order they must be loaded.
#[derive(Debug, Clone)]
pub struct CompiledSeccomp {
    pub programs: Vec<BpfProgram>,
}

/// Compiles `profile`. A syscall of another architecture is skipped (no call here can
/// match it). A name that is no syscall at all is skipped in an allow rule (the default
/// action covers it: fail closed) and refused in any other rule, where skipping it would
/// leave the call it meant to deny allowed.
pub fn compile(profile: &LinuxSeccomp) -> Result<CompiledSeccomp, SeccompError> {
    let default = action(profile.default_action(), profile.default_errno_ret())?;
    // One group per action, Allow first, others in first-seen order.
    let mut groups: Vec<(SeccompAction, RuleGroup)> = vec![(SeccompAction::Allow, BTreeMap::new())];
    for rule in profile.syscalls().iter().flatten() {
        let act = action(rule.action(), rule.errno_ret())?;
        if act == default {
            continue;
        }
        let idx = match groups.iter().position(|(a, _)| *a == act) {
            Some(i) => i,
            None => {
                groups.push((act.clone(), BTreeMap::new()));
                groups.len() - 1
            }
        };
        for name in rule.names() {
            if act != SeccompAction::Allow && !is_known_syscall(name) {
                return Err(SeccompError::UnknownSyscall {
                    syscall: name.clone(),
                    action: rule.action(),
                });
            }
            let Some(nr) = syscall_number(name) else {
                continue;
            };
            let conditions = conditions_of(name, rule.args().as_deref().unwrap_or(&[]))?;
            let entry = groups[idx].1.entry(nr).or_insert_with(|| Some(Vec::new()));
            match (entry.as_mut(), conditions) {
                // An unconditional rule matches every call: it absorbs conditional ones.
                (_, None) => *entry = None,
                (Some(rules), Some(c)) => rules.push(c),
                (None, Some(_)) => {}
            }
        }
    }
    let mut programs = Vec::new();
    for (i, (act, rules)) in groups.into_iter().enumerate() {
        // An empty group needs no filter; the allow group is always empty under a
        // default-allow profile (its rules are the default's).
        if rules.is_empty() && (i > 0 || act == default) {
            continue;
        }
        let rules: BTreeMap<i64, Vec<SeccompRule>> = rules
            .into_iter()
            .map(|(nr, r)| (nr, r.unwrap_or_default()))
            .collect();
        let mismatch = if i == 0 {
            default.clone()
        } else {
            SeccompAction::Allow
        };
        let filter = SeccompFilter::new(rules, mismatch, act, arch())
            .map_err(|e| SeccompError::Compile(e.to_string()))?;
        programs
            .push(BpfProgram::try_from(filter).map_err(|e| SeccompError::Compile(e.to_string()))?);
    }
    Ok(CompiledSeccomp { programs })
}

fn conditions_of(
    name: &str,
    args: &[oci_spec::runtime::LinuxSeccompArg],
) -> Result<Option<SeccompRule>, SeccompError> {
    if args.is_empty() {
        return Ok(None);
    }
    let bad = |index: usize, reason: String| SeccompError::BadCondition {
        syscall: name.to_string(),
        index,
        reason,
    };
    let mut conditions = Vec::new();
    for arg in args {
        let index = arg.index();
        let idx = u8::try_from(index).map_err(|_| bad(index, "index out of range".into()))?;
        let len = if DWORD_ARGS.contains(&(name, idx)) {
            SeccompCmpArgLen::Dword
        } else {
            SeccompCmpArgLen::Qword
        };
        let (op, value) = match arg.op() {
            LinuxSeccompOperator::ScmpCmpEq => (SeccompCmpOp::Eq, arg.value()),
            LinuxSeccompOperator::ScmpCmpNe => (SeccompCmpOp::Ne, arg.value()),
            LinuxSeccompOperator::ScmpCmpLt => (SeccompCmpOp::Lt, arg.value()),
            LinuxSeccompOperator::ScmpCmpLe => (SeccompCmpOp::Le, arg.value()),
            LinuxSeccompOperator::ScmpCmpGe => (SeccompCmpOp::Ge, arg.value()),
            LinuxSeccompOperator::ScmpCmpGt => (SeccompCmpOp::Gt, arg.value()),
            LinuxSeccompOperator::ScmpCmpMaskedEq => (
                SeccompCmpOp::MaskedEq(arg.value()),
                arg.value_two().unwrap_or(0),
            ),
        };
        let value = if len == SeccompCmpArgLen::Dword {
            value & 0xffff_ffff
        } else {
            value
        };
        conditions.push(
            SeccompCondition::new(idx, len, op, value).map_err(|e| bad(index, e.to_string()))?,
        );
    }
    SeccompRule::new(conditions)
        .map(Some)
        .map_err(|e| bad(0, e.to_string()))
}

/// Loads the filters into the calling thread. `no_new_privs` must already be set.
pub fn load(compiled: &CompiledSeccomp) -> Result<(), SeccompError> {
    for program in &compiled.programs {
        seccompiler::apply_filter(program).map_err(|e| SeccompError::Load(e.to_string()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use covenant_policy::seccomp_profile::{default_profile, ALLOWED, DENIED};

    #[test]
    fn every_syscall_the_profile_allows_or_denies_on_purpose_is_known_here() {
        let mut names: Vec<&str> = ALLOWED.to_vec();
        names.extend([
            "ptrace",
            "bpf",
            "io_uring_setup",
            "keyctl",
            "mount",
            "unshare",
            "userfaultfd",
        ]);
        for n in names {
            assert!(is_known_syscall(n), "{n} is no syscall");
            // x86_64 has every call the profile names; aarch64 lacks the legacy ones.
            if cfg!(target_arch = "x86_64") {
                assert!(
                    syscall_number(n).is_some(),
                    "{n} missing from the syscall table"
                );
            }
        }
        let _ = DENIED;
    }

    fn with_rule(name: &str, action: LinuxSeccompAction) -> LinuxSeccomp {
        use oci_spec::runtime::LinuxSyscallBuilder;
        let mut oci = covenant_images::oci_seccomp::to_oci(&default_profile());
        let mut rules = oci.syscalls().clone().unwrap_or_default();
        let mut b = LinuxSyscallBuilder::default()
            .names(vec![name.to_string()])
            .action(action);
        if action == LinuxSeccompAction::ScmpActErrno {
            b = b.errno_ret(1u32);
        }
        rules.push(b.build().unwrap());
        oci.set_syscalls(Some(rules));
        oci
    }

    #[test]
    fn a_deny_rule_naming_no_syscall_is_refused_naming_it() {
        for action in [
            LinuxSeccompAction::ScmpActErrno,
            LinuxSeccompAction::ScmpActKillProcess,
            LinuxSeccompAction::ScmpActTrap,
        ] {
            let err = compile(&with_rule("ptrace_typo", action)).unwrap_err();
            assert!(
                matches!(&err, SeccompError::UnknownSyscall { syscall, .. } if syscall == "ptrace_typo"),
                "{err}"
            );
            assert!(err.to_string().contains("`ptrace_typo`"), "{err}");
        }
        // An allow rule naming nothing real allows nothing: skipped, not refused.
        assert!(compile(&with_rule("ptrace_typo", LinuxSeccompAction::ScmpActAllow)).is_ok());
        // A real syscall of another architecture cannot be called here: skipped.
        assert!(compile(&with_rule("vm86", LinuxSeccompAction::ScmpActErrno)).is_ok());
    }

    #[test]
    fn the_default_profile_compiles_to_an_allow_filter_and_one_filter_per_errno() {
        // Allow (else ENOSYS), EPERM, and EAFNOSUPPORT for socket families.
        let oci = covenant_images::oci_seccomp::to_oci(&default_profile());
        let compiled = compile(&oci).unwrap();
        assert_eq!(compiled.programs.len(), 3);
    }
}
