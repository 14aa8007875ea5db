//! The seccomp filter: each dangerous syscall fails with the errno the profile names.

use crate::scene::{Scene, EPERM};

/// The probes (of `probe.py`) whose calls every runner's sandbox must refuse with `EPERM`.
pub const DENIED_PROBES: &[&str] = &[
    "ptrace",
    "process_vm_readv",
    "bpf",
    "io_uring_setup",
    "keyctl",
    "add_key",
    "unshare_user",
    "unshare_mount",
    "clone_newuser",
    "mount",
    "open_tree",
    "fsopen",
    "perf_event_open",
    "userfaultfd",
    "kexec_load",
    "init_module",
    "personality",
];

#[test]
fn dangerous_syscalls_are_denied_with_eperm() {
    let Some(s) = Scene::live() else { return };
    for name in DENIED_PROBES
        .iter()
        .chain(&["tiocsti", "tiocsti_high_bits"])
    {
        assert_eq!(
            s.probe(&[], name),
            EPERM,
            "{name} was not denied with EPERM"
        );
    }
    assert_eq!(
        s.probe(&[], "clone3"),
        libc::ENOSYS,
        "clone3 must look unimplemented"
    );
}
