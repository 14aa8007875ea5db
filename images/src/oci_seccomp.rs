//! The policy's seccomp profile written as OCI `linux.seccomp`, so that any OCI runtime
//! enforces the same filter.

use covenant_policy::seccomp_profile::{ArgOp, RuleAction, SeccompProfile};
use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompBuilder,
    LinuxSeccompOperator, LinuxSyscallBuilder,
};

/// Converts a profile to its OCI form.
pub fn to_oci(profile: &SeccompProfile) -> LinuxSeccomp {
    let syscalls = profile
        .rules
        .iter()
        .map(|rule| {
            let (action, errno) = match rule.action {
                RuleAction::Allow => (LinuxSeccompAction::ScmpActAllow, None),
                RuleAction::Errno(e) => (LinuxSeccompAction::ScmpActErrno, Some(e)),
            };
            let args: Vec<_> = rule
                .args
                .iter()
                .map(|a| {
                    let (op, value, value_two) = match a.op {
                        ArgOp::Eq => (LinuxSeccompOperator::ScmpCmpEq, a.value, None),
                        ArgOp::Ne => (LinuxSeccompOperator::ScmpCmpNe, a.value, None),
                        ArgOp::Gt => (LinuxSeccompOperator::ScmpCmpGt, a.value, None),
                        ArgOp::MaskedEq => (
                            LinuxSeccompOperator::ScmpCmpMaskedEq,
                            a.value,
                            Some(a.value_two),
                        ),
                    };
                    let mut b = LinuxSeccompArgBuilder::default()
                        .index(a.index as usize)
                        .value(value)
                        .op(op);
                    if let Some(v2) = value_two {
                        b = b.value_two(v2);
                    }
                    b.build().expect("all fields set")
                })
                .collect();
            let mut b = LinuxSyscallBuilder::default()
                .names(rule.names.clone())
                .action(action);
            if let Some(e) = errno {
                b = b.errno_ret(e);
            }
            if !args.is_empty() {
                b = b.args(args);
            }
            b.build().expect("all fields set")
        })
        .collect::<Vec<_>>();
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActErrno)
        .default_errno_ret(profile.default_errno)
        .architectures(vec![native_arch()])
        .syscalls(syscalls)
        .build()
        .expect("all fields set")
}

fn native_arch() -> Arch {
    if cfg!(target_arch = "aarch64") {
        Arch::ScmpArchAarch64
    } else {
        Arch::ScmpArchX86_64
    }
}
