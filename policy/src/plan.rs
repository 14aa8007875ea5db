//! The `SandboxPlan`: plain data, the single input of every step after authorisation.
//! It names host paths and concrete limits; nothing downstream re-reads the manifest.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Version of the plan's serialised shape.
pub const PLAN_VERSION: u32 = 1;

/// Where the run's authority came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Authorisation {
    /// The local operator ran the command; the plan is exactly what they asked for.
    Operator {
        /// The operator's public key (base64url).
        key: String,
    },
    /// A verified capability chain granted the request.
    Capability {
        subject: String,
        /// The trusted key the chain starts from (base64url).
        root_issuer: String,
        /// Token ids, root first.
        chain: Vec<String>,
    },
}

/// The root filesystem a run starts from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum RootfsSource {
    /// A read-only view of the host's system directories and selected `/etc` files.
    Host,
    /// An imported image: its layers (top first) under a per-run writable layer that is
    /// thrown away after the run. `manifest_digest` and `lower_dirs` are filled in when the
    /// supervisor resolves the reference against its image store.
    Image {
        reference: String,
        manifest_digest: Option<String>,
        lower_dirs: Vec<PathBuf>,
    },
    /// A prepared host directory, read-only, under a per-run writable layer.
    Dir { path: PathBuf },
}

impl RootfsSource {
    /// The read-only directories an overlay root is built from (top first), if any.
    pub fn lower_dirs(&self) -> Option<Vec<PathBuf>> {
        match self {
            Self::Host => None,
            Self::Image { lower_dirs, .. } => Some(lower_dirs.clone()),
            Self::Dir { path } => Some(vec![path.clone()]),
        }
    }
}

/// Which runner executes a plan's bundle. The native runner is Covenant's own and adds no
/// authority, so it needs no grant; any other runner is a scope the capability names
/// exactly (`runner:gvisor`, `runner:oci:/usr/sbin/runc`), because the supervisor starts
/// its binary as root outside any sandbox.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum RunnerChoice {
    #[default]
    Native,
    Gvisor,
    /// A runc-compatible binary at this absolute, lexically clean path.
    Oci {
        path: PathBuf,
    },
}

impl RunnerChoice {
    /// Parses `native`, `gvisor` or `oci:/ABSOLUTE/PATH`; the error says what is accepted.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "native" => return Ok(Self::Native),
            "gvisor" => return Ok(Self::Gvisor),
            _ => {}
        }
        let Some(path) = text.strip_prefix("oci:") else {
            return Err(format!(
                "`{text}` is not a runner: use native, gvisor or oci:/ABSOLUTE/PATH"
            ));
        };
        let clean = Path::new(path).is_absolute()
            && !path.contains('\0')
            && !path.ends_with('/')
            && path[1..]
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != "..");
        if !clean {
            return Err(format!(
                "`{path}` must be an absolute path without `.`, `..` or repeated `/`"
            ));
        }
        Ok(Self::Oci {
            path: PathBuf::from(path),
        })
    }

    /// The name a user selects it by: `native`, `gvisor`, `oci:/usr/sbin/runc`.
    pub fn name(&self) -> String {
        match self {
            Self::Native => "native".into(),
            Self::Gvisor => "gvisor".into(),
            Self::Oci { path } => format!("oci:{}", path.display()),
        }
    }
}

/// The identity of a host object a plan names, taken when the request was authorised:
/// when the run starts, the path must still name this object, or the run is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectId {
    pub dev: u64,
    pub ino: u64,
}

/// A host path of the plan and the object it named when it was checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinnedPath {
    pub path: PathBuf,
    pub object: ObjectId,
}

/// Whether a host path is visible read-only or read-write inside the sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MountAccess {
    /// Read, no execute (`fs.read`): bound read-only and `noexec`.
    ReadOnly,
    /// Read and execute (`fs.exec`): bound read-only.
    ReadExec,
    /// Read, write and execute (`fs.write`): anything writable can be run through an
    /// interpreter anyway, so a writable path is not made `noexec`.
    ReadWrite,
}

/// A host path made visible in the sandbox. `host` is absolute and lexically clean; it is
/// opened without following any symlink, so it names exactly the object mounted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanMount {
    pub host: PathBuf,
    pub target: PathBuf,
    pub access: MountAccess,
}

/// The network the sandbox gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum NetMode {
    /// A fresh network namespace with `lo` down and no other interface.
    #[default]
    None,
    /// A fresh network namespace with `lo` up.
    Loopback,
    /// A fresh network namespace with `lo` up and one way out: the egress gateway, which
    /// reaches only what the plan's `egress` rules name.
    Egress,
    /// The host's network namespace (must be asked for explicitly).
    Host,
}

impl NetMode {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "none" => Some(Self::None),
            "loopback" => Some(Self::Loopback),
            "egress" => Some(Self::Egress),
            "host" => Some(Self::Host),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Loopback => "loopback",
            Self::Egress => "egress",
            Self::Host => "host",
        }
    }
}

/// Resource limits enforced by cgroups and the supervisor's timer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub memory_bytes: Option<u64>,
    pub pids: Option<u64>,
    pub millicpus: Option<u32>,
    pub timeout_ms: Option<u64>,
}

impl Limits {
    /// True when a cgroup is needed to enforce these limits.
    pub fn needs_cgroup(&self) -> bool {
        self.memory_bytes.is_some() || self.pids.is_some() || self.millicpus.is_some()
    }
}

/// A process resource limit (`setrlimit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum RlimitKind {
    Core,
    Nofile,
    Nproc,
    Fsize,
    Stack,
    As,
    Cpu,
    Memlock,
}

impl RlimitKind {
    pub const ALL: [RlimitKind; 8] = [
        Self::Core,
        Self::Nofile,
        Self::Nproc,
        Self::Fsize,
        Self::Stack,
        Self::As,
        Self::Cpu,
        Self::Memlock,
    ];

    /// The manifest key under `[rlimits]`.
    pub fn key(self) -> &'static str {
        match self {
            Self::Core => "core",
            Self::Nofile => "nofile",
            Self::Nproc => "nproc",
            Self::Fsize => "fsize",
            Self::Stack => "stack",
            Self::As => "as",
            Self::Cpu => "cpu",
            Self::Memlock => "memlock",
        }
    }

    /// The OCI `process.rlimits[].type` name.
    pub fn oci_name(self) -> &'static str {
        match self {
            Self::Core => "RLIMIT_CORE",
            Self::Nofile => "RLIMIT_NOFILE",
            Self::Nproc => "RLIMIT_NPROC",
            Self::Fsize => "RLIMIT_FSIZE",
            Self::Stack => "RLIMIT_STACK",
            Self::As => "RLIMIT_AS",
            Self::Cpu => "RLIMIT_CPU",
            Self::Memlock => "RLIMIT_MEMLOCK",
        }
    }

    pub fn from_key(key: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.key() == key)
    }

    pub fn from_oci_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.oci_name() == name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    pub kind: RlimitKind,
    pub soft: u64,
    pub hard: u64,
}

/// A restriction the manifest explicitly agreed to run without when the kernel cannot
/// enforce it. Every accepted degradation is named in the plan and in the run report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord, Hash)]
pub enum Degradation {
    /// Run without any landlock ruleset (kernel without landlock).
    #[serde(rename = "landlock")]
    Landlock,
    /// Run without landlock TCP rules (landlock ABI < 4).
    #[serde(rename = "landlock-net")]
    LandlockNet,
    /// Run without landlock signal and abstract-socket scoping (landlock ABI < 6).
    #[serde(rename = "landlock-scope")]
    LandlockScope,
    /// Bind writable host paths without an idmapped mount (files then keep the sandbox's
    /// host uid, and a directory the sandbox's user does not own is not writable).
    #[serde(rename = "idmap")]
    Idmap,
}

impl Degradation {
    pub const ALL: [Degradation; 4] = [
        Self::Landlock,
        Self::LandlockNet,
        Self::LandlockScope,
        Self::Idmap,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Landlock => "landlock",
            Self::LandlockNet => "landlock-net",
            Self::LandlockScope => "landlock-scope",
            Self::Idmap => "idmap",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.name() == name)
    }
}

/// The ids the program runs as, inside the sandbox's user namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserIds {
    pub uid: u32,
    pub gid: u32,
}

/// Everything a runner needs to build and start one sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxPlan {
    pub version: u32,
    pub job_id: String,
    pub authorisation: Authorisation,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    pub user: UserIds,
    pub hostname: String,
    pub rootfs: RootfsSource,
    /// The runner that executes the bundle.
    #[serde(default)]
    pub runner: RunnerChoice,
    /// Where the overlay root's writable layer is kept (an image or directory root);
    /// `None`: in memory, thrown away after the run.
    #[serde(default)]
    pub keep_changes: Option<PathBuf>,
    /// Host paths made visible, in mount order. The workspace, when there is one, is the
    /// mount whose target is `/workspace`.
    pub mounts: Vec<PlanMount>,
    pub net: NetMode,
    /// With `net` egress: the hosts and networks the gateway lets the sandbox reach.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<crate::egress::EgressRule>,
    /// Host unix sockets the program may connect to, by their path inside the sandbox
    /// (the daemon's agent socket); each lies in one of `mounts`. A runner whose runtime
    /// reaches host sockets through a broker (gVisor's gofer) lets it reach these and no
    /// other.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_sockets: Vec<PathBuf>,
    /// TCP ports the program may connect to; empty means no port restriction beyond `net`.
    pub connect_tcp: Vec<u16>,
    pub limits: Limits,
    pub rlimits: Vec<Rlimit>,
    /// Name of the seccomp profile (see [`crate::seccomp_profile`]), with the syscall
    /// groups it opens (`covenant-default-v1+ptrace`).
    pub seccomp_profile: String,
    /// Syscall groups opened (`sys.*` scopes).
    pub syscall_groups: Vec<String>,
    pub accepted_degradations: Vec<Degradation>,
    /// The objects the host paths named when the request was authorised (filled in by the
    /// supervisor after authorisation; empty until then).
    #[serde(default)]
    pub pinned: Vec<PinnedPath>,
}

impl SandboxPlan {
    /// Canonical JSON of the plan (field order is the struct's, maps are vectors), the
    /// input of [`SandboxPlan::digest`].
    pub fn canonical_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a plan is always serialisable")
    }

    /// `sha256:` digest of the canonical JSON, recorded in the bundle and the run report.
    pub fn digest(&self) -> String {
        use sha2::{Digest, Sha256};
        let hash = Sha256::digest(self.canonical_json());
        format!("sha256:{}", hex(&hash))
    }

    /// Every host path the plan names and the access it is used at: the mounts, a
    /// directory root (read and execute) and the kept writable layer.
    pub fn host_paths(&self) -> Vec<(&Path, MountAccess)> {
        let mut paths: Vec<(&Path, MountAccess)> = self
            .mounts
            .iter()
            .map(|m| (m.host.as_path(), m.access))
            .collect();
        if let RootfsSource::Dir { path } = &self.rootfs {
            paths.push((path, MountAccess::ReadExec));
        }
        if let Some(keep) = &self.keep_changes {
            paths.push((keep, MountAccess::ReadWrite));
        }
        paths
    }

    pub fn accepts(&self, degradation: Degradation) -> bool {
        self.accepted_degradations.contains(&degradation)
    }
}

/// Lower-case hex of a byte slice.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}
