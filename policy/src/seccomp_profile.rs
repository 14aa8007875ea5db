//! The default seccomp profile as data: an allowlist modelled on Docker's default profile,
//! the syscalls denied with `EPERM` (each with the reason it is denied), and the few
//! argument-conditional rules. Anything in neither list gets `ENOSYS`, so a syscall added
//! to the kernel after this list was written looks "not implemented" to the program, and
//! libc falls back to an older one it knows (as with `clone3`, which hides its flags from
//! seccomp in a struct and so is left to fall back to `clone`).
//!
//! This module only states the profile. `images` writes it into `config.json` (OCI
//! `linux.seccomp`), and each runner enforces it from there.

use serde::{Deserialize, Serialize};

pub const DEFAULT_PROFILE_NAME: &str = "covenant-default-v1";
/// `errno` for syscalls the profile does not know.
pub const ENOSYS: u32 = 38;
/// `errno` for syscalls the profile denies on purpose.
pub const EPERM: u32 = 1;

/// What a rule does when it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RuleAction {
    Allow,
    Errno(u32),
}

/// How an argument is compared (OCI `SCMP_CMP_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ArgOp {
    /// `arg == value`
    Eq,
    /// `arg != value`
    Ne,
    /// `arg & value == value_two`
    MaskedEq,
    /// `arg > value`
    Gt,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArgCheck {
    pub index: u8,
    pub op: ArgOp,
    pub value: u64,
    pub value_two: u64,
}

/// One rule: the syscalls it names, the action, and conditions that must all hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyscallRule {
    pub names: Vec<String>,
    pub action: RuleAction,
    pub args: Vec<ArgCheck>,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeccompProfile {
    pub name: String,
    pub default_errno: u32,
    pub rules: Vec<SyscallRule>,
}

/// Syscalls every program may make: file, memory, process, time, signal, socket and
/// scheduling calls that act only on the caller's own resources or on namespaced state.
pub const ALLOWED: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "alarm",
    "arch_prctl",
    "bind",
    "brk",
    "capget",
    "capset",
    "chdir",
    "chown",
    "clock_getres",
    "clock_gettime",
    "clock_nanosleep",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fallocate",
    "fchdir",
    "fchown",
    "fchownat",
    "fcntl",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstatfs",
    "fsync",
    "ftruncate",
    "futex",
    "futex_waitv",
    "futimesat",
    "get_robust_list",
    "get_thread_area",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "geteuid",
    "getgid",
    "getgroups",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresuid",
    "getrlimit",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "gettid",
    "gettimeofday",
    "getuid",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_setup",
    "io_submit",
    "ioctl",
    "ioprio_get",
    "ioprio_set",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "madvise",
    "membarrier",
    "memfd_create",
    "mincore",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedsend",
    "mq_unlink",
    "mremap",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "nanosleep",
    "newfstatat",
    "openat2",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "prctl",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "pselect6",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recvfrom",
    "recvmmsg",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_tgsigqueueinfo",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "sendfile",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "set_robust_list",
    "set_thread_area",
    "set_tid_address",
    "setfsgid",
    "setfsuid",
    "setgid",
    "setgroups",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setresgid",
    "setresuid",
    "setreuid",
    "setrlimit",
    "setsid",
    "setsockopt",
    "setuid",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "splice",
    "stat",
    "statfs",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_settime",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_settime",
    "times",
    "tkill",
    "truncate",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "write",
    "writev",
];

/// Syscalls denied with `EPERM`, grouped, each group with the reason.
pub const DENIED: &[(&[&str], &str)] = &[
    (
        &["ptrace"],
        "reads and rewrites other processes' memory and registers",
    ),
    (
        &["process_vm_readv", "process_vm_writev"],
        "reads or writes another process's memory without ptrace",
    ),
    (
        &["pidfd_getfd"],
        "copies a file descriptor out of another process",
    ),
    (&["process_madvise"], "acts on another process's memory"),
    (
        &["kcmp"],
        "compares kernel objects of other processes (an information leak)",
    ),
    (
        &["io_uring_setup", "io_uring_enter", "io_uring_register"],
        "io_uring opens files and sockets in kernel workers that seccomp never sees",
    ),
    (
        &["bpf"],
        "loads programs into the kernel; a large attack surface",
    ),
    (
        &["perf_event_open"],
        "kernel attack surface and side channels across the host",
    ),
    (
        &["keyctl", "add_key", "request_key"],
        "the kernel keyring is not namespaced",
    ),
    (
        &[
            "mount",
            "umount2",
            "pivot_root",
            "chroot",
            "move_mount",
            "open_tree",
            "fsopen",
            "fsconfig",
            "fsmount",
            "fspick",
            "mount_setattr",
        ],
        "the filesystem view is fixed by the runner before the program starts",
    ),
    (
        &["unshare", "setns"],
        "new namespaces would hand the program capabilities inside them",
    ),
    (
        &["kexec_load", "kexec_file_load"],
        "replaces the running kernel",
    ),
    (
        &["init_module", "finit_module", "delete_module"],
        "loads or removes kernel code",
    ),
    (
        &["userfaultfd"],
        "stalls kernel page faults, widening race windows for kernel exploits",
    ),
    (
        &["open_by_handle_at", "name_to_handle_at"],
        "opens files by handle, bypassing the mount view (the 'shocker' escape)",
    ),
    (
        &[
            "swapon", "swapoff", "reboot", "acct", "quotactl", "syslog", "vhangup",
        ],
        "host administration",
    ),
    (
        &["settimeofday", "clock_settime", "clock_adjtime", "adjtimex"],
        "the clock is not namespaced",
    ),
    (
        &["sethostname", "setdomainname"],
        "the host name is fixed by the plan",
    ),
    (
        &["iopl", "ioperm", "modify_ldt"],
        "raw hardware access and old kernel attack surface",
    ),
    (
        &[
            "fanotify_init",
            "lookup_dcookie",
            "nfsservctl",
            "uselib",
            "_sysctl",
            "ustat",
            "sysfs",
            "vm86",
            "vm86old",
            "create_module",
            "get_kernel_syms",
            "query_module",
        ],
        "obsolete or host-wide interfaces",
    ),
    (
        &["memfd_secret"],
        "memory hidden from the kernel's own inspection",
    ),
];

/// Namespace flags of `clone(2)`: CLONE_NEWTIME, CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS,
/// CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET.
pub const CLONE_NAMESPACE_FLAGS: [u64; 8] = [
    0x80,
    0x2_0000,
    0x0200_0000,
    0x0400_0000,
    0x0800_0000,
    0x1000_0000,
    0x2000_0000,
    0x4000_0000,
];

/// `personality(2)` values programs use in practice (PER_LINUX, PER_LINUX32, UNAME26
/// variants, and the query value); any other persona is denied, since personalities such as
/// READ_IMPLIES_EXEC or ADDR_NO_RANDOMIZE weaken memory protections.
pub const ALLOWED_PERSONALITIES: [u64; 5] = [0x0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff];

/// `errno` for a socket family the profile does not allow.
pub const EAFNOSUPPORT: u32 = 97;

/// Socket families a program may create: local sockets, IP, and netlink (routes and
/// addresses of its own network namespace, which `getaddrinfo` and `ip` read). Every
/// other family reaches something the network namespace does not hold or is kernel
/// attack surface: `AF_VSOCK` reaches the VM-wide vsock port space (the hypervisor and
/// every other guest process) even under `net:none`, `AF_PACKET` raw frames, `AF_KEY`
/// and `AF_ALG` kernel crypto and IPsec state, `AF_BLUETOOTH`, `AF_CAN`, `AF_RDS`,
/// `AF_TIPC`, `AF_XDP` drivers and protocols rarely exercised.
pub const ALLOWED_SOCKET_FAMILIES: [(u64, &str); 4] = [
    (1, "AF_UNIX"),
    (2, "AF_INET"),
    (10, "AF_INET6"),
    (16, "AF_NETLINK"),
];

/// `socketpair` makes only local sockets.
pub const ALLOWED_SOCKETPAIR_FAMILIES: [(u64, &str); 1] = [(1, "AF_UNIX")];

/// The rules that deny every family not in `allowed` (sorted), each with one condition:
/// OCI runtimes (runc, crun through libseccomp) read several conditions on the same
/// argument as alternatives, so "none of these" cannot be one rule. Every family up to
/// the largest allowed one is named, everything above it is one `>` rule.
fn other_families(call: &str, allowed: &[(u64, &str)]) -> Vec<SyscallRule> {
    let highest = allowed.iter().map(|&(f, _)| f).max().unwrap_or(0);
    let reason =
        "other socket families reach past the network namespace or are kernel attack surface";
    let mut rules: Vec<SyscallRule> = (0..highest)
        .filter(|f| !allowed.iter().any(|&(a, _)| a == *f))
        .map(|f| {
            rule(
                &[call],
                RuleAction::Errno(EAFNOSUPPORT),
                vec![check(0, ArgOp::Eq, f, 0)],
                reason,
            )
        })
        .collect();
    rules.push(rule(
        &[call],
        RuleAction::Errno(EAFNOSUPPORT),
        vec![check(0, ArgOp::Gt, highest, 0)],
        reason,
    ));
    rules
}

/// ioctls on terminals the program must not make. The program's stdin, stdout and stderr
/// may be the caller's terminal, and a terminal outlives the run: whatever the program
/// sets stays set for the caller's shell. Denied on every terminal (seccomp sees the
/// request number, not what the descriptor is), ptys the program opens itself included.
pub const DENIED_IOCTLS: [(u64, &str, &str); 30] = [
    (
        0x5412,
        "TIOCSTI",
        "pushes characters into the terminal's input: types commands into the caller's shell",
    ),
    (
        0x541C,
        "TIOCLINUX",
        "virtual console control, including pasting input",
    ),
    (
        0x5402,
        "TCSETS",
        "tcsetattr: changes the terminal's modes (echo, raw, signals), which outlive the run",
    ),
    (0x5403, "TCSETSW", "tcsetattr after drain: as TCSETS"),
    (0x5404, "TCSETSF", "tcsetattr after flush: as TCSETS"),
    (0x5406, "TCSETA", "old termio form of TCSETS"),
    (0x5407, "TCSETAW", "old termio form of TCSETSW"),
    (0x5408, "TCSETAF", "old termio form of TCSETSF"),
    (0x402C_542B, "TCSETS2", "termios2 form of TCSETS"),
    (0x402C_542C, "TCSETSW2", "termios2 form of TCSETSW"),
    (0x402C_542D, "TCSETSF2", "termios2 form of TCSETSF"),
    (0x5433, "TCSETX", "termiox settings"),
    (0x5434, "TCSETXF", "termiox settings"),
    (0x5435, "TCSETXW", "termiox settings"),
    (
        0x5423,
        "TIOCSETD",
        "changes the terminal's line discipline, which outlives the run",
    ),
    (
        0x5414,
        "TIOCSWINSZ",
        "changes the size the caller's shell sees",
    ),
    (
        0x540A,
        "TCXONC",
        "TCOOFF stops the terminal's output until someone restarts it",
    ),
    (
        0x540C,
        "TIOCEXCL",
        "exclusive mode: the caller can no longer open its own terminal",
    ),
    (
        0x540E,
        "TIOCSCTTY",
        "takes the terminal as the program's controlling terminal",
    ),
    (
        0x5410,
        "TIOCSPGRP",
        "moves the terminal's foreground process group",
    ),
    (0x541D, "TIOCCONS", "redirects console output"),
    (0x5437, "TIOCVHANGUP", "hangs the terminal up"),
    (0x5427, "TIOCSBRK", "holds a break condition on the line"),
    (0x5418, "TIOCMSET", "sets modem control lines"),
    (0x5416, "TIOCMBIS", "sets modem control lines"),
    (0x5417, "TIOCMBIC", "clears modem control lines"),
    (0x541F, "TIOCSSERIAL", "reconfigures the serial line"),
    (
        0x541A,
        "TIOCSSOFTCAR",
        "sets CLOCAL on the caller's terminal, which outlives the run",
    ),
    (
        0x540B,
        "TCFLSH",
        "throws away what the caller typed ahead, or output not yet shown",
    ),
    (0x5425, "TCSBRKP", "sends a break on the line"),
];

/// `TCSBRK`: with argument 0 it sends a break on the line; any other value is
/// `tcdrain()`, which only waits, and stays allowed.
pub const TCSBRK: u64 = 0x5409;

fn rule(names: &[&str], action: RuleAction, args: Vec<ArgCheck>, reason: &str) -> SyscallRule {
    SyscallRule {
        names: names.iter().map(|s| s.to_string()).collect(),
        action,
        args,
        reason: reason.to_string(),
    }
}

fn check(index: u8, op: ArgOp, value: u64, value_two: u64) -> ArgCheck {
    ArgCheck {
        index,
        op,
        value,
        value_two,
    }
}

/// Calls that set a file's mode, and the argument that holds it.
pub const MODE_CALLS: [(&str, u8); 8] = [
    ("chmod", 1),
    ("fchmod", 1),
    ("fchmodat", 2),
    ("mkdir", 1),
    ("mkdirat", 2),
    ("open", 2),
    ("openat", 3),
    ("creat", 1),
];
/// Calls that make a file of a kind the mode names, and the argument that holds it.
pub const MKNOD_CALLS: [(&str, u8); 2] = [("mknod", 1), ("mknodat", 2)];
const S_ISUID: u64 = 0o4000;
const S_ISGID: u64 = 0o2000;
const S_IFMT: u64 = 0o170000;
/// File kinds `mknod` may make: regular files (also spelled 0) and sockets.
const MKNOD_KINDS: [u64; 3] = [0, 0o100000, 0o140000];
/// File kinds `mknod` may not: a FIFO, a character device, a block device.
const MKNOD_REFUSED: [(u64, &str); 3] = [
    (0o010000, "a FIFO"),
    (0o020000, "a character device"),
    (0o060000, "a block device"),
];

/// What a sandbox makes in a writable host path lands there as the path's owner: a
/// setuid or setgid bit would give the owner's (or group's) rights to whoever runs it on
/// the host, and a FIFO or device node is no file of the workspace. So a mode with either
/// bit is refused on every call that sets one, and `mknod` makes regular files and
/// sockets only.
fn mode_rules() -> Vec<SyscallRule> {
    let special = S_ISUID | S_ISGID;
    let mut rules = Vec::new();
    for (name, arg) in MODE_CALLS {
        rules.push(rule(
            &[name],
            RuleAction::Allow,
            vec![check(arg, ArgOp::MaskedEq, special, 0)],
            "modes without the setuid and setgid bits",
        ));
    }
    for (name, arg) in MKNOD_CALLS {
        for kind in MKNOD_KINDS {
            rules.push(rule(
                &[name],
                RuleAction::Allow,
                vec![
                    check(arg, ArgOp::MaskedEq, special, 0),
                    check(arg, ArgOp::MaskedEq, S_IFMT, kind),
                ],
                "regular files and sockets, without the setuid and setgid bits",
            ));
        }
        for (kind, what) in MKNOD_REFUSED {
            rules.push(rule(
                &[name],
                RuleAction::Errno(EPERM),
                vec![check(arg, ArgOp::MaskedEq, S_IFMT, kind)],
                &format!("{what} made in a writable host path would land there"),
            ));
        }
    }
    for (name, arg) in MODE_CALLS.iter().chain(&MKNOD_CALLS) {
        for (bit, what) in [(S_ISUID, "setuid"), (S_ISGID, "setgid")] {
            rules.push(rule(
                &[name],
                RuleAction::Errno(EPERM),
                vec![check(*arg, ArgOp::MaskedEq, bit, bit)],
                &format!(
                    "a {what} bit set in a writable host path would land there as its owner's"
                ),
            ));
        }
    }
    rules
}

/// The default profile, assembled from the tables above.
pub fn default_profile() -> SeccompProfile {
    let ns_mask = CLONE_NAMESPACE_FLAGS.iter().fold(0, |m, f| m | f);
    let mut rules = vec![rule(
        ALLOWED,
        RuleAction::Allow,
        vec![],
        "ordinary process operations",
    )];
    rules.push(rule(
        &["clone"],
        RuleAction::Allow,
        vec![check(0, ArgOp::MaskedEq, ns_mask, 0)],
        "threads and processes without new namespaces",
    ));
    for flag in CLONE_NAMESPACE_FLAGS {
        rules.push(rule(
            &["clone"],
            RuleAction::Errno(EPERM),
            vec![check(0, ArgOp::MaskedEq, flag, flag)],
            "clone with a namespace flag would hand the program capabilities inside it",
        ));
    }
    for persona in ALLOWED_PERSONALITIES {
        rules.push(rule(
            &["personality"],
            RuleAction::Allow,
            vec![check(0, ArgOp::Eq, persona, 0)],
            "standard personas",
        ));
    }
    rules.push(rule(
        &["personality"],
        RuleAction::Errno(EPERM),
        ALLOWED_PERSONALITIES
            .iter()
            .map(|&p| check(0, ArgOp::Ne, p, 0))
            .collect(),
        "other personas weaken memory protections (READ_IMPLIES_EXEC, ADDR_NO_RANDOMIZE)",
    ));
    for (cmd, name, reason) in DENIED_IOCTLS {
        rules.push(rule(
            &["ioctl"],
            RuleAction::Errno(EPERM),
            vec![check(1, ArgOp::Eq, cmd, 0)],
            &format!("{name} {reason}"),
        ));
    }
    rules.push(rule(
        &["ioctl"],
        RuleAction::Errno(EPERM),
        vec![check(1, ArgOp::Eq, TCSBRK, 0), check(2, ArgOp::Eq, 0, 0)],
        "TCSBRK with 0 sends a break on the line (tcdrain, any other value, only waits)",
    ));
    for (call, families) in [
        ("socket", &ALLOWED_SOCKET_FAMILIES[..]),
        ("socketpair", &ALLOWED_SOCKETPAIR_FAMILIES[..]),
    ] {
        for (family, name) in families {
            rules.push(rule(
                &[call],
                RuleAction::Allow,
                vec![check(0, ArgOp::Eq, *family, 0)],
                &format!("{name} sockets"),
            ));
        }
        rules.extend(other_families(call, families));
    }
    rules.extend(mode_rules());
    for (names, reason) in DENIED {
        rules.push(rule(names, RuleAction::Errno(EPERM), vec![], reason));
    }
    SeccompProfile {
        name: DEFAULT_PROFILE_NAME.to_string(),
        default_errno: ENOSYS,
        rules,
    }
}

/// Syscalls each `sys.*` group opens: they move from the deny list to the allowlist.
pub const GROUP_SYSCALLS: [(&str, &[&str]); 1] = [(
    "ptrace",
    &["ptrace", "process_vm_readv", "process_vm_writev"],
)];

/// The profile name for the default profile with `groups` opened:
/// `covenant-default-v1`, `covenant-default-v1+ptrace`.
pub fn profile_name(groups: &[String]) -> String {
    let mut name = DEFAULT_PROFILE_NAME.to_string();
    for g in groups {
        name.push('+');
        name.push_str(g);
    }
    name
}

/// Looks a profile up by the name a plan carries.
pub fn profile_by_name(name: &str) -> Option<SeccompProfile> {
    let mut parts = name.split('+');
    if parts.next()? != DEFAULT_PROFILE_NAME {
        return None;
    }
    let mut profile = default_profile();
    for group in parts {
        let (_, opened) = GROUP_SYSCALLS.iter().find(|(g, _)| *g == group)?;
        for rule in &mut profile.rules {
            if rule.action != RuleAction::Allow && rule.args.is_empty() {
                rule.names.retain(|n| !opened.contains(&n.as_str()));
            }
        }
        profile.rules.retain(|r| !r.names.is_empty());
        profile.rules.push(rule(
            opened,
            RuleAction::Allow,
            vec![],
            &format!("opened by sys:{group}"),
        ));
    }
    profile.name = name.to_string();
    Some(profile)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn no_syscall_is_both_allowed_and_denied_unconditionally() {
        let allowed: HashSet<_> = ALLOWED.iter().collect();
        for (names, _) in DENIED {
            for n in *names {
                assert!(!allowed.contains(n), "{n} is both allowed and denied");
            }
        }
        assert_eq!(allowed.len(), ALLOWED.len(), "ALLOWED has duplicates");
    }

    #[test]
    fn the_dangerous_syscalls_the_sandbox_promises_to_deny_are_denied() {
        let denied: HashSet<&str> = DENIED.iter().flat_map(|(n, _)| n.iter().copied()).collect();
        for must in [
            "ptrace",
            "process_vm_readv",
            "process_vm_writev",
            "io_uring_setup",
            "io_uring_enter",
            "io_uring_register",
            "bpf",
            "perf_event_open",
            "keyctl",
            "add_key",
            "request_key",
            "mount",
            "umount2",
            "pivot_root",
            "move_mount",
            "fsopen",
            "kexec_load",
            "kexec_file_load",
            "init_module",
            "finit_module",
            "delete_module",
            "unshare",
            "setns",
            "userfaultfd",
        ] {
            assert!(denied.contains(must), "{must} is not denied");
            assert!(!ALLOWED.contains(&must));
        }
        assert!(
            !ALLOWED.contains(&"clone3"),
            "clone3 must fall back to clone (ENOSYS)"
        );
        assert!(!ALLOWED.contains(&"clone") && !ALLOWED.contains(&"personality"));
        assert!(
            !ALLOWED.contains(&"socket") && !ALLOWED.contains(&"socketpair"),
            "socket families are an allowlist"
        );
    }

    /// The families `socket` may create, read back from the profile's rules.
    fn socket_families(profile: &SeccompProfile, call: &str) -> Vec<u64> {
        profile
            .rules
            .iter()
            .filter(|r| r.names == [call] && r.action == RuleAction::Allow)
            .map(|r| {
                assert!(matches!(
                    r.args[..],
                    [ArgCheck {
                        index: 0,
                        op: ArgOp::Eq,
                        ..
                    }]
                ));
                r.args[0].value
            })
            .collect()
    }

    #[test]
    fn sockets_are_limited_to_local_ip_and_netlink_families() {
        let p = default_profile();
        assert_eq!(socket_families(&p, "socket"), vec![1, 2, 10, 16]);
        assert_eq!(socket_families(&p, "socketpair"), vec![1]);
        for (family, name) in [
            (40, "AF_VSOCK"),
            (17, "AF_PACKET"),
            (15, "AF_KEY"),
            (38, "AF_ALG"),
            (31, "AF_BLUETOOTH"),
            (29, "AF_CAN"),
            (44, "AF_XDP"),
        ] {
            assert!(!socket_families(&p, "socket").contains(&family), "{name}");
        }
        // Every family is either allowed or denied, by rules of one condition each.
        for call in ["socket", "socketpair"] {
            let denies = |family: u64| {
                p.rules.iter().any(|r| {
                    r.names == [call]
                        && r.action == RuleAction::Errno(EAFNOSUPPORT)
                        && match r.args[..] {
                            [ArgCheck {
                                index: 0,
                                op: ArgOp::Eq,
                                value,
                                ..
                            }] => value == family,
                            [ArgCheck {
                                index: 0,
                                op: ArgOp::Gt,
                                value,
                                ..
                            }] => family > value,
                            _ => panic!("{call}: a deny rule with more than one condition"),
                        }
                })
            };
            let allowed = socket_families(&p, call);
            for family in 0..64 {
                assert_ne!(
                    allowed.contains(&family),
                    denies(family),
                    "{call} family {family}"
                );
            }
            assert!(denies(u64::from(u32::MAX)));
        }
    }

    #[test]
    fn terminal_setters_are_denied() {
        let p = default_profile();
        let denied: Vec<u64> = p
            .rules
            .iter()
            .filter(|r| r.names == ["ioctl"] && r.action == RuleAction::Errno(EPERM))
            .map(|r| r.args[0].value)
            .collect();
        for cmd in [0x5412, 0x541C, 0x5402, 0x5403, 0x5404, 0x5423, 0x402C_542B] {
            assert!(denied.contains(&cmd), "{cmd:#x} is not denied");
        }
        // Reading the settings stays allowed: isatty and tcgetattr.
        assert!(!denied.contains(&0x5401), "TCGETS must stay allowed");
    }

    #[test]
    fn every_deny_has_a_reason() {
        for r in default_profile().rules {
            assert!(!r.reason.trim().is_empty(), "{:?} has no reason", r.names);
        }
    }
}
