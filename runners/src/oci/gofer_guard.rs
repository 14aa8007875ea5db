//! The host-side guard around runsc when it is given a writable host path.
//!
//! gVisor's gofer is a host process running as host root with `CAP_FSETID`, `CAP_FOWNER`
//! and `CAP_DAC_OVERRIDE`: whatever mode the sentry asks for, it applies to the host file.
//! The idmapped mount it writes through (see `lifecycle.rs`) already decides who owns what
//! lands there (only the path's owner is representable, so no file can become root's);
//! this filter decides which modes and kinds may land. It is loaded into runsc before it
//! executes, so the sentry, the gofer and every helper runsc starts inherit it, and it
//! holds even if the sentry were taken over and asked the gofer for anything.
//!
//! The sandboxed program's own system calls never reach it: under the ptrace platform
//! they are stopped by `PTRACE_SYSEMU`, which skips seccomp, and the sentry serves them.
//! What is refused (`EPERM`), each with its reason:

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use std::collections::BTreeMap;

const S_ISUID: u64 = libc::S_ISUID as u64;
const S_ISGID: u64 = libc::S_ISGID as u64;
const S_IFMT: u64 = libc::S_IFMT as u64;

/// How a guarded call is matched: the argument holding a mode, and the mode bits that
/// refuse it when any of them is set.
enum Refuse {
    /// Refused when the mode argument has the setuid or the setgid bit.
    SpecialBits { mode_arg: u8 },
    /// Refused when the file type in the mode argument is a character device, a block
    /// device or a FIFO.
    SpecialKinds { mode_arg: u8 },
    /// Refused whatever its arguments.
    Always,
}

/// The guarded calls, as data: (syscall, how it is matched, why).
fn guarded() -> Vec<(i64, Refuse, &'static str)> {
    let mut calls = vec![
        (
            libc::SYS_fchmod,
            Refuse::SpecialBits { mode_arg: 1 },
            "a setuid or setgid bit set through the gofer would land on the host",
        ),
        (
            libc::SYS_fchmodat,
            Refuse::SpecialBits { mode_arg: 2 },
            "as fchmod, by name",
        ),
        (
            // fchmodat2 (Linux 6.6), which has no libc constant on every target yet.
            452,
            Refuse::SpecialBits { mode_arg: 2 },
            "as fchmodat, with flags",
        ),
        (
            libc::SYS_openat,
            Refuse::SpecialBits { mode_arg: 3 },
            "a file created setuid or setgid",
        ),
        (
            libc::SYS_mknodat,
            Refuse::SpecialKinds { mode_arg: 2 },
            "device nodes and FIFOs never land on the host",
        ),
        (
            libc::SYS_openat2,
            Refuse::Always,
            "its mode sits in a struct seccomp cannot read; runsc does not use it",
        ),
        (
            libc::SYS_fsetxattr,
            Refuse::Always,
            "`security.capability` would give a host file capabilities; seccomp cannot read the name",
        ),
        (libc::SYS_setxattr, Refuse::Always, "as fsetxattr, by name"),
        (libc::SYS_lsetxattr, Refuse::Always, "as fsetxattr, by name"),
    ];
    #[cfg(target_arch = "x86_64")]
    calls.extend([
        (
            libc::SYS_chmod,
            Refuse::SpecialBits { mode_arg: 1 },
            "as fchmod, by name",
        ),
        (
            libc::SYS_open,
            Refuse::SpecialBits { mode_arg: 2 },
            "as openat",
        ),
        (
            libc::SYS_creat,
            Refuse::SpecialBits { mode_arg: 1 },
            "as openat",
        ),
        (
            libc::SYS_mknod,
            Refuse::SpecialKinds { mode_arg: 1 },
            "as mknodat",
        ),
    ]);
    calls
}

fn masked(arg: u8, mask: u64, value: u64) -> SeccompRule {
    let condition = SeccompCondition::new(
        arg,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::MaskedEq(mask),
        value,
    )
    .expect("a dword condition on an argument below 6");
    SeccompRule::new(vec![condition]).expect("one condition")
}

/// The guard as BPF for this architecture.
pub(super) fn compile() -> Result<BpfProgram, String> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (nr, refuse, _why) in guarded() {
        let list = match refuse {
            Refuse::SpecialBits { mode_arg } => vec![
                masked(mode_arg, S_ISUID, S_ISUID),
                masked(mode_arg, S_ISGID, S_ISGID),
            ],
            Refuse::SpecialKinds { mode_arg } => [libc::S_IFCHR, libc::S_IFBLK, libc::S_IFIFO]
                .into_iter()
                .map(|kind| masked(mode_arg, S_IFMT, kind as u64))
                .collect(),
            Refuse::Always => Vec::new(),
        };
        rules.insert(nr, list);
    }
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|e| e.to_string())?;
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(|e| e.to_string())?;
    BpfProgram::try_from(filter).map_err(|e| e.to_string())
}

/// Loads `program` into the calling process without `no_new_privs` (the caller holds
/// `CAP_SYS_ADMIN`; runsc re-executes itself and must keep root's capabilities). Runs
/// between fork and exec: one system call on memory prepared before the fork.
pub(super) fn load_in_child(program: &BpfProgram) -> std::io::Result<()> {
    let prog = libc::sock_fprog {
        len: u16::try_from(program.len())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?,
        // seccompiler's sock_filter has the kernel's layout (u16, u8, u8, u32), as
        // libc's does.
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: seccomp(SECCOMP_SET_MODE_FILTER) reads `prog` and the instructions it points
    // to, both alive for the call; it allocates nothing in this process.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &prog as *const libc::sock_fprog,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The guard applied to a forked child: a setuid mode, a setgid mode, a FIFO and an
    /// xattr are refused with EPERM; an ordinary file, mode and directory are not.
    #[test]
    fn the_guard_refuses_special_modes_and_kinds_and_nothing_else() {
        let program = compile().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        let mut cmd = std::process::Command::new("sh");
        cmd.arg("-c").arg(
            "cd \"$0\"; r() { \"$@\" 2>/dev/null && echo ok || echo refused; }; \
             touch f; r chmod 4755 f; r chmod 2755 f; r chmod 0755 f; r mkfifo p; \
             r mkdir d; r python3 -c 'import os; os.setxattr(\"f\", \"user.x\", b\"1\")'",
        );
        cmd.arg(&d);
        // SAFETY: the hook makes one system call on memory prepared before the fork.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || load_in_child(&program))
        };
        let out = cmd.output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "refused\nrefused\nok\nrefused\nok\nrefused\n",
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            std::fs::metadata(d.join("f")).unwrap().mode() & 0o7777,
            0o755
        );
        assert!(!d.join("p").exists());
    }
}
