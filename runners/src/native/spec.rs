//! Reads a bundle's `config.json` into the plain settings the native runner acts on, and
//! refuses anything it would not enforce exactly (joining existing namespaces, kept
//! capabilities, unknown mount types), naming the field.

use covenant_policy::annotations::{self, IdmapMount, LandlockPolicy};
use covenant_policy::Degradation;
use nix::mount::MsFlags;
use nix::sys::resource::Resource;
use oci_spec::runtime::{LinuxNamespaceType, LinuxSeccomp, Spec};
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::cgroup::CgroupLimits;

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("bundle {path}: cannot read config.json: {reason}")]
    Load { path: PathBuf, reason: String },
    #[error("config.json `{field}`: {reason}")]
    Field { field: String, reason: String },
}

/// The field name of annotation `key`, as a refusal names it.
fn note(key: &str) -> String {
    format!("annotations.{key}")
}

fn field(field: &str, reason: impl Into<String>) -> SpecError {
    SpecError::Field {
        field: field.to_string(),
        reason: reason.into(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountKind {
    /// A host path; `recursive` for `rbind`.
    Bind { source: PathBuf, recursive: bool },
    /// A fresh kernel filesystem (`proc`, `tmpfs`, `devpts`, `mqueue`).
    Fresh { fstype: String, data: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    pub destination: PathBuf,
    pub kind: MountKind,
    pub flags: MsFlags,
}

impl MountSpec {
    pub fn read_only(&self) -> bool {
        self.flags.contains(MsFlags::MS_RDONLY)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    pub host: u32,
    pub size: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Namespace {
    User,
    Pid,
    Mount,
    Network,
    Ipc,
    Uts,
    Cgroup,
}

#[derive(Debug, Clone)]
pub struct NativeSpec {
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub root_readonly: bool,
    pub hostname: Option<String>,
    pub args: Vec<CString>,
    pub env: Vec<CString>,
    /// `PATH` from `env`, to find `args[0]`.
    pub path_var: String,
    pub cwd: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub rlimits: Vec<(Resource, u64, u64, &'static str)>,
    pub namespaces: Vec<Namespace>,
    pub uid_map: IdRange,
    pub gid_map: IdRange,
    pub mounts: Vec<MountSpec>,
    pub masked_paths: Vec<PathBuf>,
    pub readonly_paths: Vec<PathBuf>,
    pub seccomp: Option<LinuxSeccomp>,
    pub landlock: Option<LandlockPolicy>,
    pub idmap: Vec<IdmapMount>,
    pub limits: CgroupLimits,
    pub timeout: Option<Duration>,
    pub loopback_up: bool,
    /// With `net` egress: the rules of the gateway the runner starts for the sandbox.
    pub egress: Option<Vec<covenant_policy::EgressRule>>,
    /// How the root is built (see `org.opencovenant.rootfs`).
    pub root_layout: annotations::RootfsLayout,
    pub accepted_degradations: Vec<Degradation>,
    pub job_id: String,
}

impl NativeSpec {
    pub fn has(&self, ns: Namespace) -> bool {
        self.namespaces.contains(&ns)
    }

    pub fn accepts(&self, d: Degradation) -> bool {
        self.accepted_degradations.contains(&d)
    }

    /// Loads and checks `bundle/config.json`.
    pub fn load(bundle: &Path) -> Result<Self, SpecError> {
        let load = |reason: String| SpecError::Load {
            path: bundle.to_path_buf(),
            reason,
        };
        // Read whole, then parsed from memory: a reader parses a byte at a time, several
        // times slower on a 25 KB config (it showed in the start path's profile).
        let text = std::fs::read(bundle.join("config.json"))
            .map_err(|e| load(format!("config.json: {e}")))?;
        let spec: Spec =
            serde_json::from_slice(&text).map_err(|e| load(format!("config.json: {e}")))?;
        Self::from_spec(bundle, &spec)
    }

    pub fn from_spec(bundle: &Path, spec: &Spec) -> Result<Self, SpecError> {
        let root = spec
            .root()
            .as_ref()
            .ok_or_else(|| field("root", "missing"))?;
        let rootfs = if root.path().is_absolute() {
            root.path().clone()
        } else {
            bundle.join(root.path())
        };
        let process = spec
            .process()
            .as_ref()
            .ok_or_else(|| field("process", "missing"))?;
        if process.terminal() == Some(true) {
            return Err(field(
                "process.terminal",
                "a console socket is not supported; run with terminal=false",
            ));
        }
        let args = process.args().clone().unwrap_or_default();
        if args.is_empty() {
            return Err(field("process.args", "empty"));
        }
        let cstr = |f: &str, s: &str| CString::new(s).map_err(|_| field(f, "contains a NUL byte"));
        let env_list = process.env().clone().unwrap_or_default();
        let path_var = env_list
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or("/usr/local/bin:/usr/bin:/bin")
            .to_string();
        if let Some(caps) = process.capabilities() {
            let sets = [
                ("bounding", caps.bounding()),
                ("effective", caps.effective()),
                ("permitted", caps.permitted()),
                ("inheritable", caps.inheritable()),
                ("ambient", caps.ambient()),
            ];
            for (name, set) in sets {
                if set.as_ref().is_some_and(|s| !s.is_empty()) {
                    return Err(field(
                        &format!("process.capabilities.{name}"),
                        "the native runner drops every capability; a bundle that keeps one is refused",
                    ));
                }
            }
        }
        if process.no_new_privileges() != Some(true) {
            return Err(field(
                "process.noNewPrivileges",
                "must be true: the native runner always sets no_new_privs",
            ));
        }
        let mut rlimits = Vec::new();
        for r in process.rlimits().iter().flatten() {
            let name = format!("{:?}", r.typ());
            let (resource, label) = rlimit_resource(&name)
                .ok_or_else(|| field("process.rlimits", format!("{name} is not supported")))?;
            if r.soft() > r.hard() {
                return Err(field(
                    "process.rlimits",
                    format!("{label}: soft {} above hard {}", r.soft(), r.hard()),
                ));
            }
            rlimits.push((resource, r.soft(), r.hard(), label));
        }

        let linux = spec
            .linux()
            .as_ref()
            .ok_or_else(|| field("linux", "missing"))?;
        let mut namespaces = Vec::new();
        for ns in linux.namespaces().iter().flatten() {
            if ns.path().is_some() {
                return Err(field(
                    "linux.namespaces",
                    "joining an existing namespace (path) is not supported",
                ));
            }
            namespaces.push(match ns.typ() {
                LinuxNamespaceType::User => Namespace::User,
                LinuxNamespaceType::Pid => Namespace::Pid,
                LinuxNamespaceType::Mount => Namespace::Mount,
                LinuxNamespaceType::Network => Namespace::Network,
                LinuxNamespaceType::Ipc => Namespace::Ipc,
                LinuxNamespaceType::Uts => Namespace::Uts,
                LinuxNamespaceType::Cgroup => Namespace::Cgroup,
                other => {
                    return Err(field(
                        "linux.namespaces",
                        format!("{other:?} is not supported"),
                    ))
                }
            });
        }
        for required in [Namespace::User, Namespace::Pid, Namespace::Mount] {
            if !namespaces.contains(&required) {
                return Err(field(
                    "linux.namespaces",
                    format!("the native runner requires a {required:?} namespace"),
                ));
            }
        }
        let id_range = |f: &str,
                        maps: &Option<Vec<oci_spec::runtime::LinuxIdMapping>>|
         -> Result<IdRange, SpecError> {
            match maps.as_deref() {
                // Host id 0 in the range would make a sandbox id the host's root, with the
                // host root's access to every file the sandbox can reach. A rootless
                // caller is never host root and the kernel refuses the map anyway; as
                // root, the sandbox always runs in a subordinate range.
                Some([m]) if m.host_id() == 0 => Err(field(
                    f,
                    format!(
                        "container ids 0..{} map onto host id 0 (root); a sandbox never runs as host root",
                        m.size()
                    ),
                )),
                Some([m]) if m.host_id().checked_add(m.size()).is_none() => Err(field(
                    f,
                    format!(
                        "host ids {}+{} run past the largest id",
                        m.host_id(),
                        m.size()
                    ),
                )),
                Some([m]) if m.container_id() == 0 && m.size() > 0 => Ok(IdRange {
                    host: m.host_id(),
                    size: m.size(),
                }),
                _ => Err(field(
                    f,
                    "exactly one mapping starting at container id 0 is supported",
                )),
            }
        };
        let uid_map = id_range("linux.uidMappings", linux.uid_mappings())?;
        let gid_map = id_range("linux.gidMappings", linux.gid_mappings())?;
        let user = process.user();
        if user.uid() >= uid_map.size || user.gid() >= gid_map.size {
            return Err(field(
                "process.user",
                format!(
                    "{}:{} is outside the user namespace's id mappings",
                    user.uid(),
                    user.gid()
                ),
            ));
        }

        let mut mounts = spec
            .mounts()
            .iter()
            .flatten()
            .map(mount_spec)
            .collect::<Result<Vec<_>, _>>()?;
        add_default_devices(&mut mounts);
        let annotations = spec.annotations().clone().unwrap_or_default();
        let parse_json = |key: &str| -> Result<Option<serde_json::Value>, SpecError> {
            annotations
                .get(key)
                .map(|v| serde_json::from_str(v).map_err(|e| field(&note(key), e.to_string())))
                .transpose()
        };
        let landlock: Option<LandlockPolicy> = parse_json(annotations::LANDLOCK)?
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| field(&note(annotations::LANDLOCK), e.to_string()))?;
        let idmap = parse_json(annotations::IDMAP)?
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| field(&note(annotations::IDMAP), e.to_string()))?
            .unwrap_or_default();
        let accepted_degradations: Vec<Degradation> = parse_json(annotations::DEGRADATIONS)?
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| field(&note(annotations::DEGRADATIONS), e.to_string()))?
            .unwrap_or_default();
        // Fail closed: a bundle that lost its filter or its ruleset is refused, not run bare.
        if linux.seccomp().is_none() {
            return Err(field(
                "linux.seccomp",
                "missing: the native runner does not run a program without a seccomp filter",
            ));
        }
        if landlock.is_none() && !accepted_degradations.contains(&Degradation::Landlock) {
            return Err(field(
                &note(annotations::LANDLOCK),
                "missing: without a ruleset the program would run with no landlock restriction; accept the degradation `landlock` to run anyway",
            ));
        }
        let timeout = annotations
            .get(annotations::TIMEOUT_MS)
            .map(|t| {
                t.parse::<u64>().map(Duration::from_millis).map_err(|_| {
                    field(
                        &note(annotations::TIMEOUT_MS),
                        format!("`{t}` is not a number of milliseconds"),
                    )
                })
            })
            .transpose()?;
        let loopback_up = match annotations.get(annotations::NET).map(String::as_str) {
            None | Some("loopback") | Some("egress") => true,
            Some("none") | Some("host") => false,
            Some(other) => {
                return Err(field(
                    &note(annotations::NET),
                    format!("`{other}` is not none, loopback, egress or host"),
                ))
            }
        };
        let egress = match annotations.get(annotations::NET).map(String::as_str) {
            Some("egress") => {
                let text = annotations
                    .get(annotations::EGRESS)
                    .ok_or_else(|| field(annotations::EGRESS, "missing with net egress"))?;
                let rules: Vec<covenant_policy::EgressRule> = serde_json::from_str(text)
                    .map_err(|e| field(annotations::EGRESS, e.to_string()))?;
                // Rules in a bundle pass the same grammar as rules in a request.
                for rule in &rules {
                    covenant_policy::EgressRule::parse(&rule.to_string())
                        .map_err(|e| field(annotations::EGRESS, e.to_string()))?;
                }
                Some(rules)
            }
            _ => None,
        };

        let root_layout = match parse_json(annotations::ROOTFS)?
            .map(serde_json::from_value::<annotations::RootfsLayout>)
            .transpose()
            .map_err(|e| field(&note(annotations::ROOTFS), e.to_string()))?
        {
            None | Some(annotations::RootfsLayout::Skeleton) => annotations::RootfsLayout::Skeleton,
            Some(annotations::RootfsLayout::Overlay { lower, keep }) => {
                if lower.is_empty()
                    || lower.iter().any(|l| {
                        !l.is_absolute()
                            || l.as_os_str().as_encoded_bytes().contains(&b':')
                            || l.as_os_str().as_encoded_bytes().contains(&b',')
                    })
                {
                    return Err(field(
                        &note(annotations::ROOTFS),
                        "overlay lower directories must be absolute paths without `:` or `,`",
                    ));
                }
                annotations::RootfsLayout::Overlay { lower, keep }
            }
            Some(annotations::RootfsLayout::InMemory { links }) => {
                for (link, _) in &links {
                    if !link.is_absolute()
                        || link
                            .components()
                            .any(|c| matches!(c, std::path::Component::ParentDir))
                    {
                        return Err(field(
                            &note(annotations::ROOTFS),
                            format!("link {} must be absolute without `..`", link.display()),
                        ));
                    }
                }
                annotations::RootfsLayout::InMemory { links }
            }
        };
        let resources = linux.resources().as_ref();
        let limits = CgroupLimits::from_oci(resources);

        Ok(NativeSpec {
            bundle: bundle.to_path_buf(),
            rootfs,
            root_readonly: root.readonly().unwrap_or(false),
            hostname: spec.hostname().clone(),
            args: args
                .iter()
                .map(|a| cstr("process.args", a))
                .collect::<Result<_, _>>()?,
            env: env_list
                .iter()
                .map(|e| cstr("process.env", e))
                .collect::<Result<_, _>>()?,
            path_var,
            cwd: process.cwd().clone(),
            uid: user.uid(),
            gid: user.gid(),
            additional_gids: user.additional_gids().clone().unwrap_or_default(),
            rlimits,
            namespaces,
            uid_map,
            gid_map,
            mounts,
            masked_paths: linux
                .masked_paths()
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(PathBuf::from)
                .collect(),
            readonly_paths: linux
                .readonly_paths()
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(PathBuf::from)
                .collect(),
            seccomp: linux.seccomp().clone(),
            landlock,
            idmap,
            limits,
            timeout,
            loopback_up,
            egress,
            root_layout,
            accepted_degradations,
            job_id: annotations
                .get(annotations::JOB_ID)
                .cloned()
                .unwrap_or_else(|| "unnamed".to_string()),
        })
    }
}

/// Device nodes every OCI runtime provides in a fresh `/dev`, bound from the host's.
pub const DEFAULT_DEVICES: [&str; 6] = [
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/dev/tty",
];

/// Inserts the default devices right after a fresh `/dev`, unless the bundle lists them.
fn add_default_devices(mounts: &mut Vec<MountSpec>) {
    let Some(dev) = mounts.iter().position(|m| {
        m.destination == Path::new("/dev") && matches!(m.kind, MountKind::Fresh { .. })
    }) else {
        return;
    };
    let devices: Vec<MountSpec> = DEFAULT_DEVICES
        .iter()
        .filter(|d| !mounts.iter().any(|m| m.destination == Path::new(d)))
        .map(|d| MountSpec {
            destination: PathBuf::from(d),
            kind: MountKind::Bind {
                source: PathBuf::from(d),
                recursive: false,
            },
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        })
        .collect();
    mounts.splice(dev + 1..dev + 1, devices);
}

fn rlimit_resource(debug_name: &str) -> Option<(Resource, &'static str)> {
    Some(match debug_name {
        "RlimitCore" => (Resource::RLIMIT_CORE, "core"),
        "RlimitNofile" => (Resource::RLIMIT_NOFILE, "nofile"),
        "RlimitNproc" => (Resource::RLIMIT_NPROC, "nproc"),
        "RlimitFsize" => (Resource::RLIMIT_FSIZE, "fsize"),
        "RlimitStack" => (Resource::RLIMIT_STACK, "stack"),
        "RlimitAs" => (Resource::RLIMIT_AS, "as"),
        "RlimitCpu" => (Resource::RLIMIT_CPU, "cpu"),
        "RlimitMemlock" => (Resource::RLIMIT_MEMLOCK, "memlock"),
        "RlimitData" => (Resource::RLIMIT_DATA, "data"),
        "RlimitMsgqueue" => (Resource::RLIMIT_MSGQUEUE, "msgqueue"),
        "RlimitNice" => (Resource::RLIMIT_NICE, "nice"),
        "RlimitRtprio" => (Resource::RLIMIT_RTPRIO, "rtprio"),
        "RlimitSigpending" => (Resource::RLIMIT_SIGPENDING, "sigpending"),
        "RlimitRss" => (Resource::RLIMIT_RSS, "rss"),
        "RlimitLocks" => (Resource::RLIMIT_LOCKS, "locks"),
        _ => return None,
    })
}

fn mount_spec(m: &oci_spec::runtime::Mount) -> Result<MountSpec, SpecError> {
    let dest = m.destination().clone();
    let f = format!("mounts[{}]", dest.display());
    if !dest.is_absolute()
        || dest
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(field(&f, "destination must be absolute without `..`"));
    }
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    let mut bind = false;
    let mut recursive = false;
    for opt in m.options().iter().flatten() {
        match opt.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" => {}
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "strictatime" => flags |= MsFlags::MS_STRICTATIME,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "bind" => bind = true,
            "rbind" => {
                bind = true;
                recursive = true;
            }
            "private" | "rprivate" | "slave" | "rslave" => {}
            other if other.contains('=') || other == "newinstance" => data.push(other.to_string()),
            other => {
                return Err(field(
                    &f,
                    format!("mount option `{other}` is not supported"),
                ))
            }
        }
    }
    let typ = m.typ().clone().unwrap_or_default();
    let kind = if bind || typ == "bind" {
        let source = m
            .source()
            .clone()
            .ok_or_else(|| field(&f, "a bind mount needs a source"))?;
        if !source.is_absolute() {
            return Err(field(&f, "a bind source must be an absolute host path"));
        }
        MountKind::Bind { source, recursive }
    } else {
        match typ.as_str() {
            "proc" | "tmpfs" | "devpts" | "mqueue" => MountKind::Fresh {
                fstype: typ,
                data: data.join(","),
            },
            other => return Err(field(&f, format!("mount type `{other}` is not supported"))),
        }
    };
    Ok(MountSpec {
        destination: dest,
        kind,
        flags,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use covenant_images::{write_bundle, IdentityMap};
    use covenant_policy::{compile_request, Manifest};

    fn bundle() -> (tempfile::TempDir, Spec) {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Manifest::parse("version = 1\ncommand = [\"true\"]\n").unwrap();
        m.base_dir = dir.path().to_path_buf();
        let plan = compile_request(&m, "job-spec").unwrap();
        write_bundle(
            &plan,
            &dir.path().join("b"),
            IdentityMap::subordinate(100_000, 100_000),
        )
        .unwrap();
        let spec = Spec::load(dir.path().join("b/config.json")).unwrap();
        (dir, spec)
    }

    #[test]
    fn a_written_bundle_loads() {
        let (dir, spec) = bundle();
        let native = NativeSpec::from_spec(&dir.path().join("b"), &spec).unwrap();
        assert!(native.seccomp.is_some() && native.landlock.is_some());
    }

    /// The fixture's config as JSON, with `edit` applied, read back as a spec.
    fn edited(spec: &Spec, edit: impl FnOnce(&mut serde_json::Value)) -> Spec {
        let mut config = serde_json::to_value(spec).unwrap();
        edit(&mut config);
        serde_json::from_value(config).unwrap()
    }

    /// What `from_spec` says of the fixture bundle with `edit` applied to its config.
    fn refusal(edit: impl FnOnce(&mut serde_json::Value)) -> String {
        let (dir, spec) = bundle();
        match NativeSpec::from_spec(&dir.path().join("b"), &edited(&spec, edit)) {
            Ok(_) => panic!("accepted"),
            Err(e) => e.to_string(),
        }
    }

    fn note(config: &mut serde_json::Value, key: &str, value: &str) {
        config["annotations"][key] = value.into();
    }

    fn drop_note(config: &mut serde_json::Value, key: &str) {
        config["annotations"].as_object_mut().unwrap().remove(key);
    }

    fn mount(config: &mut serde_json::Value, m: serde_json::Value) {
        config["mounts"].as_array_mut().unwrap().push(m);
    }

    type Edit = fn(&mut serde_json::Value);

    /// Each refusal of `from_spec`, by the one field changed from a bundle it accepts.
    #[test]
    fn every_refusal_names_its_field_and_reason() {
        use serde_json::json;
        let cases: &[(&str, Edit, &str)] = &[
            ("no root", |c| c["root"] = json!(null), "config.json `root`: missing"),
            ("no process", |c| c["process"] = json!(null), "config.json `process`: missing"),
            (
                "a terminal",
                |c| c["process"]["terminal"] = json!(true),
                "config.json `process.terminal`: a console socket is not supported; run with terminal=false",
            ),
            ("no args", |c| c["process"]["args"] = json!([]), "config.json `process.args`: empty"),
            (
                "a NUL in an argument",
                |c| c["process"]["args"] = json!(["tr\0ue"]),
                "config.json `process.args`: contains a NUL byte",
            ),
            (
                "a NUL in the environment",
                |c| c["process"]["env"] = json!(["A=\0"]),
                "config.json `process.env`: contains a NUL byte",
            ),
            (
                "no_new_privs off",
                |c| c["process"]["noNewPrivileges"] = json!(false),
                "config.json `process.noNewPrivileges`: must be true: the native runner always sets no_new_privs",
            ),
            (
                "no_new_privs absent",
                |c| {
                    c["process"].as_object_mut().unwrap().remove("noNewPrivileges");
                },
                "config.json `process.noNewPrivileges`: must be true: the native runner always sets no_new_privs",
            ),
            (
                "an rlimit the runner does not know",
                |c| c["process"]["rlimits"] = json!([{"type": "RLIMIT_RTTIME", "soft": 1, "hard": 1}]),
                "config.json `process.rlimits`: RlimitRttime is not supported",
            ),
            (
                "an rlimit whose soft value is above its hard one",
                |c| c["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "soft": 10, "hard": 5}]),
                "config.json `process.rlimits`: nofile: soft 10 above hard 5",
            ),
            (
                "a user outside the uid map",
                |c| c["process"]["user"] = json!({"uid": 65_536, "gid": 0}),
                "config.json `process.user`: 65536:0 is outside the user namespace's id mappings",
            ),
            (
                "a group outside the gid map",
                |c| c["process"]["user"] = json!({"uid": 0, "gid": 65_536}),
                "config.json `process.user`: 0:65536 is outside the user namespace's id mappings",
            ),
            ("no linux section", |c| c["linux"] = json!(null), "config.json `linux`: missing"),
            (
                "joining a namespace",
                |c| c["linux"]["namespaces"][1] = json!({"type": "pid", "path": "/proc/1/ns/pid"}),
                "config.json `linux.namespaces`: joining an existing namespace (path) is not supported",
            ),
            (
                "a time namespace",
                |c| c["linux"]["namespaces"].as_array_mut().unwrap().push(json!({"type": "time"})),
                "config.json `linux.namespaces`: Time is not supported",
            ),
            (
                "no user namespace",
                |c| c["linux"]["namespaces"].as_array_mut().unwrap().retain(|n| n["type"] != "user"),
                "config.json `linux.namespaces`: the native runner requires a User namespace",
            ),
            (
                "no pid namespace",
                |c| c["linux"]["namespaces"].as_array_mut().unwrap().retain(|n| n["type"] != "pid"),
                "config.json `linux.namespaces`: the native runner requires a Pid namespace",
            ),
            (
                "no mount namespace",
                |c| c["linux"]["namespaces"].as_array_mut().unwrap().retain(|n| n["type"] != "mount"),
                "config.json `linux.namespaces`: the native runner requires a Mount namespace",
            ),
            (
                "uids mapped onto host root",
                |c| c["linux"]["uidMappings"][0]["hostID"] = json!(0),
                "config.json `linux.uidMappings`: container ids 0..65536 map onto host id 0 (root); a sandbox never runs as host root",
            ),
            (
                "gids mapped onto host root",
                |c| c["linux"]["gidMappings"] = json!([{"hostID": 0, "containerID": 0, "size": 1}]),
                "config.json `linux.gidMappings`: container ids 0..1 map onto host id 0 (root); a sandbox never runs as host root",
            ),
            (
                "a uid range past the largest id",
                |c| c["linux"]["uidMappings"][0]["hostID"] = json!(u32::MAX - 10),
                "config.json `linux.uidMappings`: host ids 4294967285+65536 run past the largest id",
            ),
            (
                "no uid mapping",
                |c| c["linux"]["uidMappings"] = json!(null),
                "config.json `linux.uidMappings`: exactly one mapping starting at container id 0 is supported",
            ),
            (
                "two gid mappings",
                |c| {
                    let m = c["linux"]["gidMappings"][0].clone();
                    c["linux"]["gidMappings"].as_array_mut().unwrap().push(m);
                },
                "config.json `linux.gidMappings`: exactly one mapping starting at container id 0 is supported",
            ),
            (
                "a uid mapping that does not start at 0",
                |c| c["linux"]["uidMappings"][0]["containerID"] = json!(1),
                "config.json `linux.uidMappings`: exactly one mapping starting at container id 0 is supported",
            ),
            (
                "an empty uid mapping",
                |c| c["linux"]["uidMappings"][0]["size"] = json!(0),
                "config.json `linux.uidMappings`: exactly one mapping starting at container id 0 is supported",
            ),
            (
                "a relative mount destination",
                |c| mount(c, json!({"destination": "mnt", "type": "tmpfs", "source": "tmpfs"})),
                "config.json `mounts[mnt]`: destination must be absolute without `..`",
            ),
            (
                "a mount destination with `..`",
                |c| mount(c, json!({"destination": "/tmp/../etc", "type": "tmpfs", "source": "tmpfs"})),
                "config.json `mounts[/tmp/../etc]`: destination must be absolute without `..`",
            ),
            (
                "an unknown mount option",
                |c| mount(c, json!({"destination": "/mnt", "type": "tmpfs", "options": ["suid"]})),
                "config.json `mounts[/mnt]`: mount option `suid` is not supported",
            ),
            (
                "a bind mount without a source",
                |c| mount(c, json!({"destination": "/mnt", "type": "bind", "options": ["rbind"]})),
                "config.json `mounts[/mnt]`: a bind mount needs a source",
            ),
            (
                "a bind mount from a relative source",
                |c| mount(c, json!({"destination": "/mnt", "options": ["bind"], "source": "usr"})),
                "config.json `mounts[/mnt]`: a bind source must be an absolute host path",
            ),
            (
                "a mount type the runner does not make",
                |c| mount(c, json!({"destination": "/sys", "type": "sysfs", "source": "sysfs"})),
                "config.json `mounts[/sys]`: mount type `sysfs` is not supported",
            ),
            (
                "a mount without a type or bind option",
                |c| mount(c, json!({"destination": "/mnt", "source": "/usr"})),
                "config.json `mounts[/mnt]`: mount type `` is not supported",
            ),
            (
                "no seccomp filter",
                |c| {
                    c["linux"].as_object_mut().unwrap().remove("seccomp");
                },
                "config.json `linux.seccomp`: missing: the native runner does not run a program without a seccomp filter",
            ),
            (
                "no landlock ruleset",
                |c| drop_note(c, annotations::LANDLOCK),
                "config.json `annotations.org.opencovenant.landlock`: missing: without a ruleset the program would run with no landlock restriction; accept the degradation `landlock` to run anyway",
            ),
            (
                "a landlock ruleset that is not JSON",
                |c| note(c, annotations::LANDLOCK, "fs"),
                "config.json `annotations.org.opencovenant.landlock`: expected ident at line 1 column 2",
            ),
            (
                "a landlock ruleset without its paths",
                |c| note(c, annotations::LANDLOCK, r#"{"net": {"mode": "deny-all"}, "scope": true}"#),
                "config.json `annotations.org.opencovenant.landlock`: missing field `fs`",
            ),
            (
                "idmapped mounts that are not a list",
                |c| note(c, annotations::IDMAP, "{}"),
                "config.json `annotations.org.opencovenant.idmap`: invalid type: map, expected a sequence",
            ),
            (
                "an unknown degradation",
                |c| note(c, annotations::DEGRADATIONS, r#"["seccomp"]"#),
                "config.json `annotations.org.opencovenant.accepted-degradations`: unknown variant `seccomp`, expected one of `landlock`, `landlock-net`, `landlock-scope`, `idmap`",
            ),
            (
                "a timeout that is not a number",
                |c| note(c, annotations::TIMEOUT_MS, "10s"),
                "config.json `annotations.org.opencovenant.timeout-ms`: `10s` is not a number of milliseconds",
            ),
            (
                "an unknown network mode",
                |c| note(c, annotations::NET, "wifi"),
                "config.json `annotations.org.opencovenant.net`: `wifi` is not none, loopback, egress or host",
            ),
            (
                "an unknown root layout",
                |c| note(c, annotations::ROOTFS, r#"{"layout": "squashfs"}"#),
                "config.json `annotations.org.opencovenant.rootfs`: unknown variant `squashfs`, expected one of `skeleton`, `in-memory`, `overlay`",
            ),
            (
                "an overlay without lower directories",
                |c| note(c, annotations::ROOTFS, r#"{"layout": "overlay", "lower": []}"#),
                "config.json `annotations.org.opencovenant.rootfs`: overlay lower directories must be absolute paths without `:` or `,`",
            ),
            (
                "an overlay with a relative lower directory",
                |c| note(c, annotations::ROOTFS, r#"{"layout": "overlay", "lower": ["img"]}"#),
                "config.json `annotations.org.opencovenant.rootfs`: overlay lower directories must be absolute paths without `:` or `,`",
            ),
            (
                "an overlay lower directory with `:`",
                |c| note(c, annotations::ROOTFS, r#"{"layout": "overlay", "lower": ["/a:/b"]}"#),
                "config.json `annotations.org.opencovenant.rootfs`: overlay lower directories must be absolute paths without `:` or `,`",
            ),
            (
                "an overlay lower directory with `,`",
                |c| note(c, annotations::ROOTFS, r#"{"layout": "overlay", "lower": ["/a,upperdir=/b"]}"#),
                "config.json `annotations.org.opencovenant.rootfs`: overlay lower directories must be absolute paths without `:` or `,`",
            ),
            (
                "an in-memory root with a relative link",
                |c| note(c, annotations::ROOTFS, r#"{"layout": "in-memory", "links": [["bin", "usr/bin"]]}"#),
                "config.json `annotations.org.opencovenant.rootfs`: link bin must be absolute without `..`",
            ),
            (
                "an in-memory root with a link through `..`",
                |c| note(c, annotations::ROOTFS, r#"{"layout": "in-memory", "links": [["/tmp/../bin", "usr/bin"]]}"#),
                "config.json `annotations.org.opencovenant.rootfs`: link /tmp/../bin must be absolute without `..`",
            ),
        ];
        let mut wrong = Vec::new();
        for (what, edit, expected) in cases {
            let got = refusal(edit);
            if got != *expected {
                wrong.push(format!("{what}:\n  expected {expected}\n  got      {got}"));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn every_kept_capability_set_is_refused_by_name() {
        for set in [
            "bounding",
            "effective",
            "permitted",
            "inheritable",
            "ambient",
        ] {
            let err = refusal(|c| {
                c["process"]["capabilities"][set] = serde_json::json!(["CAP_SYS_ADMIN"])
            });
            assert_eq!(
                err,
                format!("config.json `process.capabilities.{set}`: the native runner drops every capability; a bundle that keeps one is refused")
            );
        }
    }

    #[test]
    fn a_bundle_without_config_json_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        match NativeSpec::load(dir.path()) {
            Err(SpecError::Load { path, reason }) => {
                assert_eq!(path.as_path(), dir.path());
                assert!(
                    reason.starts_with("config.json: No such file or directory"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
        std::fs::write(dir.path().join("config.json"), b"{\"ociVersion\": 3}").unwrap();
        match NativeSpec::load(dir.path()) {
            Err(SpecError::Load { reason, .. }) => {
                assert!(reason.starts_with("config.json: invalid type"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn what_a_refusal_guards_is_accepted_in_its_allowed_forms() {
        let (dir, spec) = bundle();
        let b = dir.path().join("b");
        let load = |edit: Edit| NativeSpec::from_spec(&b, &edited(&spec, edit)).unwrap();
        // Capabilities absent altogether: nothing is kept.
        load(|c| c["process"]["capabilities"] = serde_json::json!(null));
        // No ruleset, with the degradation accepted.
        let native = load(|c| {
            drop_note(c, annotations::LANDLOCK);
            note(c, annotations::DEGRADATIONS, r#"["landlock"]"#);
        });
        assert!(native.landlock.is_none() && native.accepts(Degradation::Landlock));
        // Each network mode, and the default.
        for (mode, up) in [("none", false), ("host", false), ("loopback", true)] {
            let mut config = serde_json::to_value(&spec).unwrap();
            note(&mut config, annotations::NET, mode);
            let native =
                NativeSpec::from_spec(&b, &serde_json::from_value(config).unwrap()).unwrap();
            assert_eq!(native.loopback_up, up, "{mode}");
        }
        assert!(load(|c| drop_note(c, annotations::NET)).loopback_up);
        let native = load(|c| note(c, annotations::TIMEOUT_MS, "1500"));
        assert_eq!(native.timeout, Some(Duration::from_millis(1500)));
    }
}
