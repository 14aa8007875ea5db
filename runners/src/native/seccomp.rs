//! Compiles an OCI `linux.seccomp` section into BPF with `seccompiler`, once, in the parent;
//! the sandboxed program loads it as the very last step before `execve`.
//!
//! OCI rules carry one action each, a `seccompiler` filter has one match action, so the
//! profile becomes a small stack of filters: first the allow rules with the profile's
//! default action on mismatch, then one filter per other action that matches only its own
//! rules. The kernel runs every filter and keeps the most restrictive verdict, and among
//! equal ones (two `ERRNO`s) the newest filter's, so a deny rule wins over the default's
//! `ENOSYS` and over any allow rule it overlaps.
//!
//! In each filter, the calls matched whatever their arguments are found by a binary
//! search in front of seccompiler's program ([`dispatch`]), which keeps the rules that
//! look at arguments.

mod dispatch;

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
    let programs = filters(profile)?
        .into_iter()
        .map(|f| program(f.rules, f.mismatch, f.act))
        .collect::<Result<_, _>>()?;
    Ok(CompiledSeccomp { programs })
}

/// One filter of the stack, before it is compiled.
struct Filter {
    rules: RuleGroup,
    mismatch: SeccompAction,
    act: SeccompAction,
}

/// The filters `profile` needs, in the order they are loaded.
fn filters(profile: &LinuxSeccomp) -> Result<Vec<Filter>, SeccompError> {
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
    let mut filters = Vec::new();
    for (i, (act, rules)) in groups.into_iter().enumerate() {
        // An empty group needs no filter; the allow group is always empty under a
        // default-allow profile (its rules are the default's).
        if rules.is_empty() && (i > 0 || act == default) {
            continue;
        }
        let mismatch = if i == 0 {
            default.clone()
        } else {
            SeccompAction::Allow
        };
        filters.push(Filter {
            rules,
            mismatch,
            act,
        });
    }
    Ok(filters)
}

/// One filter: `act` for the calls `rules` match, `mismatch` for every other call. The
/// calls matched whatever their arguments are found by a binary search (see
/// [`dispatch`]); seccompiler compiles the rest.
fn program(
    rules: RuleGroup,
    mismatch: SeccompAction,
    act: SeccompAction,
) -> Result<BpfProgram, SeccompError> {
    program_within(rules, mismatch, act, dispatch::MAX_INSTRUCTIONS)
}

/// [`program`], with the search given up for the linear program when it would be longer
/// than `limit` instructions.
fn program_within(
    rules: RuleGroup,
    mismatch: SeccompAction,
    act: SeccompAction,
    limit: usize,
) -> Result<BpfProgram, SeccompError> {
    let mut searched = Vec::new();
    let mut conditional: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (nr, rule) in rules {
        match (rule, u32::try_from(nr)) {
            (None, Ok(n)) => searched.push(n),
            // `None` is an unconditional rule, which seccompiler spells as no conditions.
            (rule, _) => {
                conditional.insert(nr, rule.unwrap_or_default());
            }
        }
    }
    let program = dispatch::prepend(
        &dispatch::ranges(searched.iter().copied()),
        u32::from(act.clone()),
        linear(conditional.clone(), mismatch.clone(), act.clone())?,
    );
    if program.len() <= limit {
        return Ok(program);
    }
    // Scattered numbers can make the search a little longer than the linear program
    // (three instructions a number against two or three), so a profile the kernel takes
    // linearly is never refused for the search's sake; and seccompiler refuses, naming
    // the limit, a program the kernel would not take.
    let mut all = conditional;
    all.extend(searched.iter().map(|&nr| (i64::from(nr), Vec::new())));
    linear(all, mismatch, act)
}

/// seccompiler's program for `rules`: one comparison after another.
fn linear(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    mismatch: SeccompAction,
    act: SeccompAction,
) -> Result<BpfProgram, SeccompError> {
    let filter = SeccompFilter::new(rules, mismatch, act, arch())
        .map_err(|e| SeccompError::Compile(e.to_string()))?;
    BpfProgram::try_from(filter).map_err(|e| SeccompError::Compile(e.to_string()))
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
    use super::super::syscall_table::SYSCALLS;
    use super::*;
    use covenant_policy::seccomp_profile::{
        default_profile, profile_by_name, profile_name, RuleAction, SeccompProfile, ALLOWED,
        DENIED, ENOSYS, EPERM, GROUP_SYSCALLS,
    };
    use std::collections::BTreeSet;

    /// Every profile a plan can name: the default, and the default with each group opened.
    fn every_profile() -> Vec<(Vec<&'static str>, SeccompProfile)> {
        let mut out = vec![(Vec::new(), default_profile())];
        for (group, opened) in GROUP_SYSCALLS {
            let profile = profile_by_name(&profile_name(&[group.to_string()])).unwrap();
            out.push((opened.to_vec(), profile));
        }
        out
    }

    /// Every name any rule of any profile names is a Linux syscall, and x86_64 numbers
    /// every call a profile allows. A deny rule may name a call this architecture lacks
    /// (i386's `vm86`, the module calls removed from the kernel): the default ENOSYS
    /// answers it here.
    #[test]
    fn every_syscall_a_profile_names_is_known_here() {
        let profiles = every_profile();
        let mut names: BTreeSet<&str> = BTreeSet::new();
        for (_, profile) in &profiles {
            for rule in &profile.rules {
                names.extend(rule.names.iter().map(|n| n.as_str()));
                if cfg!(target_arch = "x86_64") && rule.action == RuleAction::Allow {
                    for n in &rule.names {
                        assert!(
                            syscall_number(n).is_some(),
                            "{n} is allowed but missing from the syscall table"
                        );
                    }
                }
            }
        }
        // The tables the profiles are built from are all in them.
        for n in ALLOWED
            .iter()
            .chain(DENIED.iter().flat_map(|(n, _)| n.iter()))
        {
            assert!(names.contains(n), "{n} is in a table but in no profile");
        }
        for n in names {
            assert!(is_known_syscall(n), "{n} is no syscall");
        }
    }

    /// Classic BPF as the kernel runs a seccomp filter, for the instructions seccompiler
    /// emits; `data` is a `struct seccomp_data`. Its opcodes are written out here, not
    /// taken from `dispatch.rs`: an oracle that shared the generator's constants would
    /// read a wrong one the same wrong way.
    fn run_filter(program: &[seccompiler::sock_filter], data: &[u8; 64]) -> u32 {
        const LD_W_ABS: u16 = 0x20;
        const ALU_AND_K: u16 = 0x54;
        const JA: u16 = 0x05;
        const JEQ_K: u16 = 0x15;
        const JGT_K: u16 = 0x25;
        const JGE_K: u16 = 0x35;
        const JSET_K: u16 = 0x45;
        const RET_K: u16 = 0x06;
        let (mut a, mut pc) = (0u32, 0usize);
        loop {
            let i = &program[pc];
            pc += 1;
            match i.code {
                LD_W_ABS => {
                    let at = i.k as usize;
                    a = u32::from_ne_bytes(data[at..at + 4].try_into().unwrap());
                }
                ALU_AND_K => a &= i.k,
                JA => pc += i.k as usize,
                JEQ_K | JGT_K | JGE_K | JSET_K => {
                    let taken = match i.code {
                        JEQ_K => a == i.k,
                        JGT_K => a > i.k,
                        JGE_K => a >= i.k,
                        _ => a & i.k != 0,
                    };
                    pc += usize::from(if taken { i.jt } else { i.jf });
                }
                RET_K => return i.k,
                other => panic!("BPF instruction {other:#x} is not interpreted here"),
            }
        }
    }

    /// A `struct seccomp_data` for call `nr` of `arch` with arguments `args`.
    fn call(arch: u32, nr: u32, args: [u64; 6]) -> [u8; 64] {
        let mut data = [0u8; 64];
        data[..4].copy_from_slice(&nr.to_ne_bytes());
        data[4..8].copy_from_slice(&arch.to_ne_bytes());
        for (i, a) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_ne_bytes());
        }
        data
    }

    /// The verdict of the loaded stack on syscall `nr` with every argument 0.
    fn verdict(compiled: &CompiledSeccomp, nr: i64) -> u32 {
        verdict_on(compiled, &call(dispatch::AUDIT_ARCH, nr as u32, [0; 6]))
    }

    /// The verdict of the loaded stack on `data`: the most restrictive action, and among
    /// equal ones the newest filter's.
    fn verdict_on(compiled: &CompiledSeccomp, data: &[u8; 64]) -> u32 {
        let action = |ret: u32| (ret & 0xffff_0000) as i32;
        compiled
            .programs
            .iter()
            .rev()
            .map(|p| run_filter(p, data))
            .reduce(|kept, older| {
                if action(older) < action(kept) {
                    older
                } else {
                    kept
                }
            })
            .unwrap()
    }

    /// Runs the compiled filters of every profile on every syscall of this architecture
    /// that no rule treats by its arguments: each is allowed if a table allows it (or its
    /// group is opened), denied with EPERM if the deny table names it, and ENOSYS
    /// otherwise, exactly as the tables say.
    #[test]
    fn the_compiled_filters_give_every_syscall_the_verdict_of_its_table() {
        const ALLOW: u32 = 0x7fff_0000;
        const ERRNO: u32 = 0x0005_0000;
        let denied: BTreeSet<&str> = DENIED.iter().flat_map(|(n, _)| n.iter().copied()).collect();
        for (opened, profile) in every_profile() {
            let compiled = compile(&covenant_images::oci_seccomp::to_oci(&profile)).unwrap();
            let by_arguments: BTreeSet<&str> = profile
                .rules
                .iter()
                .filter(|r| !r.args.is_empty())
                .flat_map(|r| r.names.iter().map(|n| n.as_str()))
                .collect();
            let mut checked = [0; 3];
            for &(name, nr) in SYSCALLS {
                if by_arguments.contains(name) {
                    continue;
                }
                let (expected, i) = if ALLOWED.contains(&name) || opened.contains(&name) {
                    (ALLOW, 0)
                } else if denied.contains(name) {
                    (ERRNO | EPERM, 1)
                } else {
                    (ERRNO | ENOSYS, 2)
                };
                assert_eq!(
                    verdict(&compiled, nr),
                    expected,
                    "{name} under {}",
                    profile.name
                );
                checked[i] += 1;
            }
            let on_this_arch = |list: &mut dyn Iterator<Item = &&str>| {
                list.filter(|n| syscall_number(n).is_some() && !by_arguments.contains(**n))
                    .count()
            };
            let allowed = on_this_arch(&mut ALLOWED.iter().chain(opened.iter()));
            let denied_here = on_this_arch(&mut denied.iter().filter(|n| !opened.contains(n)));
            assert_eq!(
                checked[..2],
                [allowed, denied_here],
                "every allowed and denied call was run under {}",
                profile.name
            );
        }
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

    /// `profile` compiled without the search: every rule in seccompiler's program.
    fn compile_linear(profile: &LinuxSeccomp) -> CompiledSeccomp {
        let programs = filters(profile)
            .unwrap()
            .into_iter()
            .map(|f| {
                let rules = f
                    .rules
                    .into_iter()
                    .map(|(nr, r)| (nr, r.unwrap_or_default()))
                    .collect();
                linear(rules, f.mismatch, f.act).unwrap()
            })
            .collect();
        CompiledSeccomp { programs }
    }

    /// The search changes no verdict. Every profile, and the default with rules of other
    /// actions added (one on a call another rule treats by its arguments), is compiled
    /// both ways and run on every number up to 1,023, on x32's numbers, on the extremes,
    /// under this architecture, i386 and an unknown one. A call some rule treats by its
    /// arguments is also run with arguments from a fixed pseudo-random sequence and with
    /// the values the rules compare against.
    #[test]
    fn the_search_gives_every_call_the_verdict_of_the_linear_filter() {
        let mut profiles: Vec<LinuxSeccomp> = every_profile()
            .iter()
            .map(|(_, p)| covenant_images::oci_seccomp::to_oci(p))
            .collect();
        profiles.push(with_rule("ptrace", LinuxSeccompAction::ScmpActKillProcess));
        profiles.push(with_rule("getpid", LinuxSeccompAction::ScmpActErrno));
        profiles.push(with_rule("socket", LinuxSeccompAction::ScmpActTrap));
        profiles.push(with_rule("ioctl", LinuxSeccompAction::ScmpActErrno));
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let numbers: Vec<u32> = (0..1024)
            .chain((0..600).map(|n| n | 0x4000_0000))
            .chain([0x3fff_ffff, 0x7fff_ffff, 0x8000_0000, u32::MAX])
            .collect();
        for oci in &profiles {
            let (searched, linear) = (compile(oci).unwrap(), compile_linear(oci));
            let by_arguments: BTreeSet<u32> = oci
                .syscalls()
                .iter()
                .flatten()
                .filter(|r| r.args().as_ref().is_some_and(|a| !a.is_empty()))
                .flat_map(|r| r.names().iter().filter_map(|n| syscall_number(n)))
                .map(|nr| nr as u32)
                .collect();
            let compared: Vec<u64> = oci
                .syscalls()
                .iter()
                .flatten()
                .flat_map(|r| r.args().clone().unwrap_or_default())
                .flat_map(|a| [a.value(), a.value_two().unwrap_or(0)])
                .collect();
            let mut runs = 0;
            for arch in [dispatch::AUDIT_ARCH, 0x4000_0003, 0] {
                for &nr in &numbers {
                    let mut args = vec![[0u64; 6], [u64::MAX; 6]];
                    if by_arguments.contains(&nr) {
                        args.extend((0..32).map(|_| std::array::from_fn(|_| next())));
                        args.extend(compared.iter().flat_map(|&v| {
                            (0..6).map(move |i| std::array::from_fn(|j| if i == j { v } else { 0 }))
                        }));
                    }
                    for a in args {
                        let data = call(arch, nr, a);
                        assert_eq!(
                            verdict_on(&searched, &data),
                            verdict_on(&linear, &data),
                            "call {nr:#x} of arch {arch:#x} with {a:x?}"
                        );
                        runs += 1;
                    }
                }
            }
            assert!(runs > 3 * numbers.len(), "{runs} calls compared");
        }
    }

    /// A profile of many isolated unconditional calls and many conditional rules, whose
    /// linear program is just within the kernel's limit, is not pushed over it by the
    /// search: every filter `compile` returns is one the kernel takes.
    #[test]
    fn no_filter_is_longer_than_the_kernel_takes_and_the_longest_loadable_still_compiles() {
        use oci_spec::runtime::{LinuxSeccompArgBuilder, LinuxSeccompBuilder, LinuxSyscallBuilder};
        let isolated: Vec<String> = SYSCALLS
            .iter()
            .filter(|(n, nr)| nr % 2 == 0 && *n != "ioctl")
            .map(|(n, _)| n.to_string())
            .collect();
        let profile = |ioctl_rules: u64| {
            let mut rules = vec![LinuxSyscallBuilder::default()
                .names(isolated.clone())
                .action(LinuxSeccompAction::ScmpActAllow)
                .build()
                .unwrap()];
            rules.extend((0..ioctl_rules).map(|v| {
                let arg = LinuxSeccompArgBuilder::default()
                    .index(1usize)
                    .value(0x5400 + v)
                    .op(LinuxSeccompOperator::ScmpCmpEq)
                    .build()
                    .unwrap();
                LinuxSyscallBuilder::default()
                    .names(vec!["ioctl".to_string()])
                    .action(LinuxSeccompAction::ScmpActAllow)
                    .args(vec![arg])
                    .build()
                    .unwrap()
            }));
            LinuxSeccompBuilder::default()
                .default_action(LinuxSeccompAction::ScmpActErrno)
                .syscalls(rules)
                .build()
                .unwrap()
        };
        let linear_fits = |n: u64| {
            let f = filters(&profile(n)).unwrap().pop().unwrap();
            let rules = f
                .rules
                .into_iter()
                .map(|(nr, r)| (nr, r.unwrap_or_default()));
            linear(rules.collect(), f.mismatch, f.act).is_ok()
        };
        // The most ioctl rules whose linear program seccompiler still takes.
        let (mut fits, mut too_many) = (0, 2048);
        while too_many - fits > 1 {
            let mid = (fits + too_many) / 2;
            if linear_fits(mid) {
                fits = mid;
            } else {
                too_many = mid;
            }
        }
        assert!(fits > 100, "{fits} rules");
        let oci = profile(fits);
        let compiled = compile(&oci).unwrap();
        assert!(compiled.programs[0].len() <= dispatch::MAX_INSTRUCTIONS);
        let linear = compile_linear(&oci);
        for nr in 0..1024 {
            for arg in [0, 0x5400, 0x5400 + fits - 1, 0x5400 + fits] {
                let data = call(dispatch::AUDIT_ARCH, nr, [0, arg, 0, 0, 0, 0]);
                assert_eq!(
                    verdict_on(&compiled, &data),
                    verdict_on(&linear, &data),
                    "{nr}"
                );
            }
        }
        // One rule more is refused when compiled, naming the limit, not at load.
        let err = compile(&profile(too_many)).unwrap_err();
        assert!(matches!(err, SeccompError::Compile(_)), "{err}");
        // A search over the limit gives way to the linear program, verdicts unchanged.
        let f = filters(&oci).unwrap().pop().unwrap();
        let (searched, fallen_back) = (
            program(f.rules.clone(), f.mismatch.clone(), f.act.clone()).unwrap(),
            program_within(f.rules, f.mismatch, f.act, 100).unwrap(),
        );
        assert_ne!(searched, fallen_back);
        assert_eq!(fallen_back, linear.programs[0]);
    }

    /// What the search is for: the default profile's filters are shorter (about half).
    #[test]
    fn the_search_makes_the_default_filters_shorter() {
        let oci = covenant_images::oci_seccomp::to_oci(&default_profile());
        let length = |c: &CompiledSeccomp| c.programs.iter().map(Vec::len).sum::<usize>();
        let (searched, linear) = (
            length(&compile(&oci).unwrap()),
            length(&compile_linear(&oci)),
        );
        assert!(
            searched * 3 < linear * 2,
            "{searched} instructions against {linear}"
        );
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
