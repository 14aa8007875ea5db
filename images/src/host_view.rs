//! The `host` rootfs source: which parts of the host a sandbox sees, read-only. The list is
//! explicit (as in bubblewrap) so that nothing reaches the sandbox by accident.

/// Host system directories bound read-only when they exist. Where the host has a symlink
/// (merged-`/usr` systems: `/bin -> usr/bin`), the rootfs gets the same symlink instead.
pub const SYSTEM_DIRS: [&str; 8] = [
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/etc/alternatives",
];

/// Host `/etc` entries bound read-only when they exist, each with why a program needs it.
pub const ETC_ENTRIES: &[(&str, &str)] = &[
    ("/etc/ld.so.cache", "the dynamic linker's library index"),
    ("/etc/ld.so.conf", "the dynamic linker's search path"),
    ("/etc/ld.so.conf.d", "the dynamic linker's search path"),
    (
        "/etc/nsswitch.conf",
        "how libc resolves users, groups and hosts",
    ),
    ("/etc/localtime", "the host's time zone"),
    ("/etc/ssl", "TLS certificates"),
    ("/etc/ca-certificates", "TLS certificates"),
    ("/etc/gitconfig", "system git configuration (read-only)"),
    ("/etc/os-release", "tools that check the distribution"),
    ("/etc/debian_version", "tools that check the distribution"),
    ("/etc/bash.bashrc", "interactive shells"),
    ("/etc/profile", "login shells"),
    ("/etc/inputrc", "readline"),
];

/// Host `/etc` entries bound only when the sandbox shares the host's network.
pub const ETC_NETWORK_ENTRIES: &[(&str, &str)] = &[
    ("/etc/resolv.conf", "DNS servers"),
    ("/etc/host.conf", "resolver configuration"),
    ("/etc/services", "service names for ports"),
    ("/etc/protocols", "protocol names"),
];

/// Paths under `/proc` hidden behind an empty, read-only object (OCI `maskedPaths`): each
/// leaks host state or offers a kernel interface a sandbox has no use for.
pub const MASKED_PATHS: [&str; 12] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/sysrq-trigger",
    "/proc/kallsyms",
    "/proc/interrupts",
];

/// Paths under `/proc` remounted read-only (OCI `readonlyPaths`): kernel tunables.
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];
