//! The `org.opencovenant.*` annotations: what a bundle says that OCI cannot. `images`
//! writes them, runners read them; `docs/bundle.md` documents each key. A runner that meets
//! a restriction it cannot enforce refuses the bundle, so every key here is a promise.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

pub const JOB_ID: &str = "org.opencovenant.job-id";
pub const PLAN_DIGEST: &str = "org.opencovenant.plan-digest";
pub const SECCOMP_PROFILE: &str = "org.opencovenant.seccomp-profile";
pub const LANDLOCK: &str = "org.opencovenant.landlock";
pub const IDMAP: &str = "org.opencovenant.idmap";
pub const TIMEOUT_MS: &str = "org.opencovenant.timeout-ms";
pub const DEGRADATIONS: &str = "org.opencovenant.accepted-degradations";
/// How the rootfs directory is used. Absent: it holds the root (with every mount point).
/// `{"layout": "in-memory", "links": [["/bin", "usr/bin"], ...]}`: it is empty, and the
/// runner builds the root on a private tmpfs with these symlinks and the mount points.
pub const ROOTFS: &str = "org.opencovenant.rootfs";

/// The value of [`ROOTFS`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "layout", rename_all = "kebab-case")]
pub enum RootfsLayout {
    /// The rootfs directory is the root: portable to any OCI runtime.
    Skeleton,
    /// Build the root in memory: nothing to create or remove on disk per run.
    InMemory { links: Vec<(PathBuf, PathBuf)> },
    /// The root is an overlay of these read-only directories (top first) under a writable
    /// layer the runner creates per run and throws away after it.
    Overlay {
        lower: Vec<PathBuf>,
        /// A host directory holding the writable layer (`upper/`, `work/`) to keep;
        /// absent: the layer lives in memory and is thrown away.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        keep: Option<PathBuf>,
    },
}

/// `none` (no interface up), `loopback` (`lo` up), `egress` (`lo` up and the gateway's
/// device) or `host`; OCI runtimes bring `lo` up by default.
pub const NET: &str = "org.opencovenant.net";
/// With `net` egress: the rules the gateway enforces, a JSON list of
/// [`crate::egress::EgressRule`]. A runner that cannot run the gateway refuses the bundle.
pub const EGRESS: &str = "org.opencovenant.egress";

/// Host unix sockets the program may connect to, a JSON list of paths inside the sandbox
/// (each inside a bind mount). Runtimes that bind host paths directly need nothing more;
/// under gVisor, whose gofer connects to host sockets for the sandbox, these are the only
/// ones it may reach.
pub const HOST_SOCKETS: &str = "org.opencovenant.host-sockets";

/// Access granted beneath a path by landlock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LandlockAccess {
    /// Read files, list directories.
    Read,
    /// Read files, list directories, execute.
    ReadExec,
    /// Everything landlock controls on files: read, write, create, remove, execute.
    ReadWrite,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LandlockPathRule {
    /// Path inside the sandbox (after `pivot_root`).
    pub path: PathBuf,
    pub access: LandlockAccess,
}

/// TCP policy enforced by landlock (ABI ≥ 4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "mode")]
pub enum LandlockNet {
    /// Landlock does not restrict TCP (the network namespace does).
    Unrestricted,
    /// No TCP bind or connect at all.
    DenyAll,
    /// No TCP bind; connect only to these ports.
    ConnectOnly { ports: Vec<u16> },
}

/// `org.opencovenant.landlock`: the ruleset the program runs under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LandlockPolicy {
    pub fs: Vec<LandlockPathRule>,
    pub net: LandlockNet,
    /// Confine signals and abstract unix sockets to the sandbox (ABI ≥ 6).
    pub scope: bool,
}

/// One entry of `org.opencovenant.idmap`: a bind mount that must be idmapped so that files
/// owned by `host_uid:host_gid` on disk appear owned by the process's user inside, and
/// files the process creates are owned by `host_uid:host_gid` on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdmapMount {
    pub destination: PathBuf,
    pub host_uid: u32,
    pub host_gid: u32,
}
