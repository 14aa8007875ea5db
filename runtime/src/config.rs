//! Reads a bundle's `config.json` and turns it into the settings `create` acts on. Every
//! refusal names the JSON field at fault. What this module decides without the kernel
//! (ids, mount destinations, namespaces, rlimits, capabilities) is decided here, before
//! anything is created, so a refused config leaves no state behind.

use oci_spec::runtime::{LinuxNamespaceType, Spec};
use std::ffi::CString;
use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("bundle {bundle}: {reason}")]
    Bundle { bundle: PathBuf, reason: String },
    #[error("config.json `{field}`: {reason}")]
    Field { field: String, reason: String },
}

pub fn field(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Field {
        field: field.into(),
        reason: reason.into(),
    }
}

type Result<T> = std::result::Result<T, ConfigError>;

/// Loads `bundle/config.json`; a parse error names the JSON path of the bad value.
pub fn load(bundle: &Path) -> Result<Spec> {
    load_with_idmaps(bundle).map(|(spec, _)| spec)
}

/// [`load`], and each mount's idmap ([`idmapped_mounts`]).
pub fn load_with_idmaps(bundle: &Path) -> Result<(Spec, Vec<Option<Idmap>>)> {
    let path = bundle.join("config.json");
    let text = std::fs::read(&path).map_err(|e| ConfigError::Bundle {
        bundle: bundle.to_path_buf(),
        reason: format!("cannot read config.json: {e}"),
    })?;
    let de = &mut serde_json::Deserializer::from_slice(&text);
    let spec = serde_path_to_error::deserialize(de).map_err(|e| {
        let at = e.path().to_string();
        field(
            if at == "." { "(document)".into() } else { at },
            e.into_inner().to_string(),
        )
    })?;
    let idmaps = idmapped_mounts(&text, &spec)?;
    Ok((spec, idmaps))
}

/// An idmapped bind mount: the mount shows a file owned on disk by `containerID` as owned
/// by `hostID` (for `size` ids), through a user namespace that exists only for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idmap {
    /// `(containerID, hostID, size)` lines.
    pub uid: Vec<(u32, u32, u32)>,
    pub gid: Vec<(u32, u32, u32)>,
    /// `ridmap`: the submounts of a recursive bind are idmapped too.
    pub recursive: bool,
}

/// The most lines an id map may have (the kernel's limit).
const MAX_MAP_LINES: usize = 340;

/// Each mount's idmap, if it asks for one. The spec types this runtime reads drop a
/// mount's `uidMappings`/`gidMappings`, so they are read from the document itself: a
/// mount with mappings, or with the `idmap`/`ridmap` option (whose mappings are then the
/// container's user namespace's), is idmapped; never silently not.
pub fn idmapped_mounts(text: &[u8], spec: &Spec) -> Result<Vec<Option<Idmap>>> {
    let doc: serde_json::Value =
        serde_json::from_slice(text).map_err(|e| field("(document)", e.to_string()))?;
    let Some(mounts) = doc.get("mounts").and_then(|m| m.as_array()) else {
        return Ok(Vec::new());
    };
    let linux = spec.linux().as_ref();
    let own_userns = linux
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|ns| {
            ns.iter()
                .any(|n| n.typ() == LinuxNamespaceType::User && n.path().is_none())
        });
    let container_map =
        |m: Option<&Vec<oci_spec::runtime::LinuxIdMapping>>| -> Vec<(u32, u32, u32)> {
            m.into_iter()
                .flatten()
                .map(|l| (l.container_id(), l.host_id(), l.size()))
                .collect()
        };
    let mut out = Vec::new();
    for (i, m) in mounts.iter().enumerate() {
        let options: Vec<&str> = m
            .get("options")
            .and_then(|o| o.as_array())
            .into_iter()
            .flatten()
            .filter_map(|o| o.as_str())
            .collect();
        let recursive = options.contains(&"ridmap");
        let asked = recursive || options.contains(&"idmap");
        let uid = m.get("uidMappings");
        let gid = m.get("gidMappings");
        if !asked && uid.is_none() && gid.is_none() {
            out.push(None);
            continue;
        }
        let bind = m.get("type").and_then(|t| t.as_str()) == Some("bind")
            || options.iter().any(|o| *o == "bind" || *o == "rbind");
        if !bind {
            return Err(field(
                format!("mounts[{i}]"),
                "an idmapped mount must be a bind mount",
            ));
        }
        let (uid, gid) = match (uid, gid) {
            (Some(u), Some(g)) => (
                id_lines(u, &format!("mounts[{i}].uidMappings"))?,
                id_lines(g, &format!("mounts[{i}].gidMappings"))?,
            ),
            (None, None) if own_userns => (
                container_map(linux.and_then(|l| l.uid_mappings().as_ref())),
                container_map(linux.and_then(|l| l.gid_mappings().as_ref())),
            ),
            (None, None) => {
                return Err(field(
                    format!("mounts[{i}].options"),
                    "`idmap` without `uidMappings`/`gidMappings` takes the container's user namespace mappings, and the container has no user namespace of its own",
                ))
            }
            (Some(_), None) => {
                return Err(field(
                    format!("mounts[{i}].gidMappings"),
                    "an idmapped mount needs both uidMappings and gidMappings",
                ))
            }
            (None, Some(_)) => {
                return Err(field(
                    format!("mounts[{i}].uidMappings"),
                    "an idmapped mount needs both uidMappings and gidMappings",
                ))
            }
        };
        out.push(Some(Idmap {
            uid,
            gid,
            recursive,
        }));
    }
    Ok(out)
}

/// An id map's lines: each `{containerID, hostID, size}` in range, at least one, within
/// the kernel's limit.
fn id_lines(v: &serde_json::Value, at: &str) -> Result<Vec<(u32, u32, u32)>> {
    let lines = v
        .as_array()
        .ok_or_else(|| field(at, "must be an array of {containerID, hostID, size}"))?;
    if lines.is_empty() || lines.len() > MAX_MAP_LINES {
        return Err(field(at, format!("needs 1 to {MAX_MAP_LINES} lines")));
    }
    lines
        .iter()
        .enumerate()
        .map(|(n, l)| {
            let get = |k: &str| -> Result<u32> {
                l.get(k)
                    .and_then(|x| x.as_u64())
                    .and_then(|x| u32::try_from(x).ok())
                    .ok_or_else(|| field(format!("{at}[{n}].{k}"), "must be an id (0 to 2^32-1)"))
            };
            let (inside, host, size) = (get("containerID")?, get("hostID")?, get("size")?);
            if size == 0 || inside.checked_add(size).is_none() || host.checked_add(size).is_none() {
                return Err(field(
                    format!("{at}[{n}].size"),
                    "must be at least 1 and keep both ranges below 2^32",
                ));
            }
            Ok((inside, host, size))
        })
        .collect()
}

/// One namespace: created new (`path` none) or joined.
#[derive(Debug, Clone)]
pub struct NamespaceSpec {
    pub typ: LinuxNamespaceType,
    pub path: Option<PathBuf>,
}

impl NamespaceSpec {
    /// The name under `/proc/PID/ns`.
    pub fn proc_name(&self) -> String {
        self.typ.to_string()
    }
}

/// What the child needs, checked and converted once in the parent.
#[derive(Debug, Clone, Default)]
pub struct Prepared {
    pub rootfs: PathBuf,
    pub args: Vec<CString>,
    pub env: Vec<CString>,
    pub path_var: String,
    pub namespaces: Vec<NamespaceSpec>,
    pub rlimits: Vec<(libc::__rlimit_resource_t, u64, u64)>,
    pub caps: CapSets,
}

#[derive(Debug, Clone, Default)]
pub struct CapSets {
    pub bounding: Vec<caps::Capability>,
    pub effective: Vec<caps::Capability>,
    pub permitted: Vec<caps::Capability>,
    pub inheritable: Vec<caps::Capability>,
    pub ambient: Vec<caps::Capability>,
}

fn cap_list(
    name: &str,
    set: &Option<oci_spec::runtime::Capabilities>,
) -> Result<Vec<caps::Capability>> {
    let mut out = Vec::new();
    for c in set.iter().flatten() {
        let text = format!("CAP_{c}");
        let cap: caps::Capability = text.parse().map_err(|_| {
            field(
                format!("process.capabilities.{name}"),
                format!("{text} is not a capability this kernel interface knows"),
            )
        })?;
        out.push(cap);
    }
    Ok(out)
}

/// Checks the parts of `spec` the kernel is not asked about and prepares the child's view.
pub fn prepare(bundle: &Path, spec: &Spec) -> Result<Prepared> {
    let root = spec
        .root()
        .as_ref()
        .ok_or_else(|| field("root", "missing"))?;
    let rootfs = if root.path().is_absolute() {
        root.path().clone()
    } else {
        bundle.join(root.path())
    };
    let rootfs = std::fs::canonicalize(&rootfs)
        .map_err(|e| field("root.path", format!("{}: {e}", rootfs.display())))?;
    if !rootfs.is_dir() {
        return Err(field(
            "root.path",
            format!("{} is not a directory", rootfs.display()),
        ));
    }
    if rootfs == Path::new("/") {
        return Err(field(
            "root.path",
            "the host's own root cannot be a container's root filesystem",
        ));
    }
    // A config without `process` may be created; `start` then fails (runtime spec).
    let mut prepared = match spec.process().as_ref() {
        Some(process) => prepare_process(process)?,
        None => Prepared::default(),
    };
    prepared.rootfs = rootfs;
    let linux = spec
        .linux()
        .as_ref()
        .ok_or_else(|| field("linux", "missing"))?;
    let mut namespaces: Vec<NamespaceSpec> = Vec::new();
    for (i, ns) in linux.namespaces().iter().flatten().enumerate() {
        if namespaces.iter().any(|n| n.typ == ns.typ()) {
            return Err(field(
                format!("linux.namespaces[{i}].type"),
                format!("{} is listed twice", ns.typ()),
            ));
        }
        if let Some(p) = ns.path() {
            if !p.is_absolute() {
                return Err(field(
                    format!("linux.namespaces[{i}].path"),
                    "must be absolute",
                ));
            }
        }
        namespaces.push(NamespaceSpec {
            typ: ns.typ(),
            path: ns.path().clone(),
        });
    }
    let new_timens = namespaces
        .iter()
        .any(|n| n.typ == LinuxNamespaceType::Time && n.path.is_none());
    if let Some(offsets) = linux.time_offsets() {
        if !new_timens {
            return Err(field(
                "linux.timeOffsets",
                "offsets need a new time namespace in linux.namespaces",
            ));
        }
        if let Some(k) = offsets
            .keys()
            .find(|k| *k != "monotonic" && *k != "boottime")
        {
            return Err(field(
                format!("linux.timeOffsets.{k}"),
                "only monotonic and boottime clocks can be offset",
            ));
        }
    }
    // Fail closed: a setting this runtime would not apply is refused, never ignored.
    if linux.intel_rdt().is_some() {
        return Err(field("linux.intelRdt", "not supported by this runtime"));
    }
    if linux.memory_policy().is_some() {
        return Err(field("linux.memoryPolicy", "not supported by this runtime"));
    }
    if let Some(p) = linux.personality() {
        if p.flags().as_ref().is_some_and(|f| !f.is_empty()) {
            return Err(field(
                "linux.personality.flags",
                "personality flags are not supported by this runtime",
            ));
        }
    }
    let has_userns = namespaces
        .iter()
        .any(|n| n.typ == LinuxNamespaceType::User && n.path.is_none());
    if has_userns && linux.uid_mappings().as_ref().map(Vec::len).unwrap_or(0) == 0 {
        return Err(field(
            "linux.uidMappings",
            "a new user namespace needs uid and gid mappings",
        ));
    }
    if !namespaces
        .iter()
        .any(|n| n.typ == LinuxNamespaceType::Mount)
        && linux.masked_paths().as_ref().is_some_and(|m| !m.is_empty())
    {
        // Masking without a mount namespace would mask the host's own paths.
        return Err(field(
            "linux.maskedPaths",
            "masking paths needs a mount namespace (it would mask the host's)",
        ));
    }
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        check_destination(&format!("mounts[{i}].destination"), m.destination())?;
    }
    for (i, d) in linux.devices().iter().flatten().enumerate() {
        check_destination(&format!("linux.devices[{i}].path"), d.path())?;
    }
    for (key, _) in linux.sysctl().iter().flatten() {
        if key.contains('/') || key.split('.').any(|p| p.is_empty() || p == "..") {
            return Err(field(format!("linux.sysctl.{key}"), "not a sysctl name"));
        }
        let new = |t: LinuxNamespaceType| namespaces.iter().any(|n| n.typ == t && n.path.is_none());
        let joined = |t: LinuxNamespaceType| namespaces.iter().any(|n| n.typ == t);
        if !sysctl_is_namespaced(key, new, joined) {
            return Err(field(
                format!("linux.sysctl.{key}"),
                "not a sysctl of the container's own namespaces: writing it would change the host (kernel.core_pattern runs a program as host root)",
            ));
        }
    }
    prepared.namespaces = namespaces;
    Ok(prepared)
}

/// Whether the LSM whose switch is `file` is on (`Y` or `1`); an unreadable file means the
/// kernel has no such LSM.
fn lsm_active(file: &str) -> bool {
    std::fs::read_to_string(file).is_ok_and(|t| matches!(t.trim(), "Y" | "1"))
}

/// Checks and converts the process part (also what `exec` runs).
pub fn prepare_process(process: &oci_spec::runtime::Process) -> Result<Prepared> {
    // This runtime applies neither LSM. Where the kernel has none, a profile or label means
    // nothing (as with runc); where it has one, the container would run without what the
    // config asks for, so it is refused.
    if process.apparmor_profile().is_some() && lsm_active("/sys/module/apparmor/parameters/enabled")
    {
        return Err(field(
            "process.apparmorProfile",
            "AppArmor is enabled on this host and this runtime does not apply profiles",
        ));
    }
    if process.selinux_label().is_some() && lsm_active("/sys/fs/selinux/enforce") {
        return Err(field(
            "process.selinuxLabel",
            "SELinux is enabled on this host and this runtime does not apply labels",
        ));
    }
    let args = process.args().clone().unwrap_or_default();
    if args.is_empty() {
        return Err(field("process.args", "empty"));
    }
    let cstr = |f: &str, s: &str| CString::new(s).map_err(|_| field(f, "contains a NUL byte"));
    let env_list = process.env().clone().unwrap_or_default();
    for (i, e) in env_list.iter().enumerate() {
        if !e.contains('=') {
            return Err(field(format!("process.env[{i}]"), "must be KEY=VALUE"));
        }
    }
    if !process.cwd().is_absolute() {
        return Err(field("process.cwd", "must be an absolute path"));
    }
    let path_var = env_list
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .to_string();
    let mut rlimits = Vec::new();
    for (i, r) in process.rlimits().iter().flatten().enumerate() {
        let name = format!("{:?}", r.typ());
        let resource = rlimit_resource(&name).ok_or_else(|| {
            field(
                format!("process.rlimits[{i}].type"),
                format!("{name} is not supported"),
            )
        })?;
        if r.soft() > r.hard() {
            return Err(field(
                format!("process.rlimits[{i}]"),
                format!("soft {} is above hard {}", r.soft(), r.hard()),
            ));
        }
        if rlimits.iter().any(|(res, _, _)| *res == resource) {
            return Err(field(
                format!("process.rlimits[{i}].type"),
                format!("{name} is listed twice"),
            ));
        }
        rlimits.push((resource, r.soft(), r.hard()));
    }
    let caps = match process.capabilities() {
        Some(c) => CapSets {
            bounding: cap_list("bounding", c.bounding())?,
            effective: cap_list("effective", c.effective())?,
            permitted: cap_list("permitted", c.permitted())?,
            inheritable: cap_list("inheritable", c.inheritable())?,
            ambient: cap_list("ambient", c.ambient())?,
        },
        None => CapSets::default(),
    };
    Ok(Prepared {
        rootfs: PathBuf::new(),
        args: args
            .iter()
            .map(|a| cstr("process.args", a))
            .collect::<Result<_>>()?,
        env: env_list
            .iter()
            .map(|e| cstr("process.env", e))
            .collect::<Result<_>>()?,
        path_var,
        namespaces: Vec::new(),
        rlimits,
        caps,
    })
}

/// Whether `key` belongs to a namespace the container has (as runc decides it): IPC
/// sysctls with an IPC namespace, `net.*` with a network namespace, the host and domain
/// name with a UTS namespace. Everything else is the host's.
fn sysctl_is_namespaced(
    key: &str,
    new: impl Fn(LinuxNamespaceType) -> bool,
    has: impl Fn(LinuxNamespaceType) -> bool,
) -> bool {
    const IPC: [&str; 7] = [
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
    ];
    if IPC.contains(&key) || key == "kernel.shm_rmid_forced" || key.starts_with("fs.mqueue.") {
        return has(LinuxNamespaceType::Ipc);
    }
    if key.starts_with("net.") {
        return new(LinuxNamespaceType::Network) || has(LinuxNamespaceType::Network);
    }
    if key == "kernel.hostname" || key == "kernel.domainname" {
        return new(LinuxNamespaceType::Uts);
    }
    false
}

/// A destination is a path inside the container: absolute, and it never climbs with `..`.
fn check_destination(name: &str, dest: &Path) -> Result<()> {
    if !dest.is_absolute() {
        return Err(field(name, format!("{} must be absolute", dest.display())));
    }
    if dest.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(field(
            name,
            format!("{} must not contain `..`", dest.display()),
        ));
    }
    Ok(())
}

fn rlimit_resource(debug_name: &str) -> Option<libc::__rlimit_resource_t> {
    Some(match debug_name {
        "RlimitCore" => libc::RLIMIT_CORE,
        "RlimitNofile" => libc::RLIMIT_NOFILE,
        "RlimitNproc" => libc::RLIMIT_NPROC,
        "RlimitFsize" => libc::RLIMIT_FSIZE,
        "RlimitStack" => libc::RLIMIT_STACK,
        "RlimitAs" => libc::RLIMIT_AS,
        "RlimitCpu" => libc::RLIMIT_CPU,
        "RlimitMemlock" => libc::RLIMIT_MEMLOCK,
        "RlimitData" => libc::RLIMIT_DATA,
        "RlimitMsgqueue" => libc::RLIMIT_MSGQUEUE,
        "RlimitNice" => libc::RLIMIT_NICE,
        "RlimitRtprio" => libc::RLIMIT_RTPRIO,
        "RlimitRttime" => libc::RLIMIT_RTTIME,
        "RlimitSigpending" => libc::RLIMIT_SIGPENDING,
        "RlimitRss" => libc::RLIMIT_RSS,
        "RlimitLocks" => libc::RLIMIT_LOCKS,
        _ => return None,
    })
}

/// Resolves `dest` inside `root` as the container would see it: symlinks are followed
/// relative to `root`, and neither they nor `..` can leave it. The result is a host path
/// under `root` (its last components may not exist yet).
pub fn resolve_in_root(root: &Path, dest: &Path) -> PathBuf {
    let mut parts: Vec<std::ffi::OsString> = Vec::new();
    let mut pending: Vec<std::ffi::OsString> = dest
        .components()
        .filter_map(|c| match c {
            Component::Normal(p) => Some(p.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .rev()
        .collect();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            parts.pop();
            continue;
        }
        let mut candidate = root.to_path_buf();
        candidate.extend(&parts);
        candidate.push(&part);
        match std::fs::read_link(&candidate) {
            Ok(target) if links < 40 => {
                links += 1;
                if target.is_absolute() {
                    parts.clear();
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(p) => pending.push(p.to_os_string()),
                        Component::ParentDir => pending.push("..".into()),
                        _ => {}
                    }
                }
            }
            _ => parts.push(part),
        }
    }
    let mut out = root.to_path_buf();
    out.extend(&parts);
    out
}

#[cfg(test)]
mod tests {

    #[test]
    fn idmapped_mounts_are_read_from_the_document_and_bad_ones_refused() {
        let read = |mount: &str, userns: bool| {
            let ns = if userns {
                r#", "linux": {"namespaces": [{"type": "user"}], "uidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}], "gidMappings": [{"containerID": 0, "hostID": 200000, "size": 65536}]}"#
            } else {
                ""
            };
            let text = format!(
                r#"{{"ociVersion": "1.0.2", "mounts": [{{"destination": "/proc", "type": "proc", "source": "proc"}}, {mount}]{ns}}}"#
            );
            let spec: Spec = serde_json::from_str(&text).unwrap();
            idmapped_mounts(text.as_bytes(), &spec).map_err(|e| e.to_string())
        };
        let maps = r#""uidMappings": [{"containerID": 0, "hostID": 1000, "size": 1}, {"containerID": 1, "hostID": 5000, "size": 10}], "gidMappings": [{"containerID": 0, "hostID": 1001, "size": 1}]"#;
        assert_eq!(
            read(
                &format!(
                    r#"{{"destination": "/w", "type": "bind", "source": "/tmp", "options": ["rbind", "ridmap"], {maps}}}"#
                ),
                false
            ),
            Ok(vec![
                None,
                Some(Idmap {
                    uid: vec![(0, 1000, 1), (1, 5000, 10)],
                    gid: vec![(0, 1001, 1)],
                    recursive: true
                })
            ])
        );
        // Mappings alone mean `idmap`.
        assert_eq!(
            read(
                &format!(r#"{{"destination": "/w", "type": "bind", "source": "/tmp", {maps}}}"#),
                false
            )
            .unwrap()[1]
                .as_ref()
                .map(|m| m.recursive),
            Some(false)
        );
        // `idmap` alone takes the container's own user namespace mappings.
        assert_eq!(
            read(
                r#"{"destination": "/w", "type": "bind", "source": "/tmp", "options": ["idmap"]}"#,
                true
            ),
            Ok(vec![
                None,
                Some(Idmap {
                    uid: vec![(0, 100000, 65536)],
                    gid: vec![(0, 200000, 65536)],
                    recursive: false
                })
            ])
        );
        for (mount, want) in [
            (r#"{"destination": "/w", "type": "bind", "source": "/tmp", "options": ["idmap"]}"#,
             "config.json `mounts[1].options`: `idmap` without `uidMappings`/`gidMappings` takes the container's user namespace mappings, and the container has no user namespace of its own"),
            (r#"{"destination": "/w", "type": "tmpfs", "source": "tmpfs", "options": ["idmap"]}"#,
             "config.json `mounts[1]`: an idmapped mount must be a bind mount"),
            (r#"{"destination": "/w", "type": "bind", "source": "/tmp", "uidMappings": [{"containerID": 0, "hostID": 1000, "size": 1}]}"#,
             "config.json `mounts[1].gidMappings`: an idmapped mount needs both uidMappings and gidMappings"),
            (r#"{"destination": "/w", "type": "bind", "source": "/tmp", "uidMappings": [], "gidMappings": []}"#,
             "config.json `mounts[1].uidMappings`: needs 1 to 340 lines"),
            (r#"{"destination": "/w", "type": "bind", "source": "/tmp", "uidMappings": [{"containerID": 0, "hostID": 4294967295, "size": 2}], "gidMappings": [{"containerID": 0, "hostID": 0, "size": 1}]}"#,
             "config.json `mounts[1].uidMappings[0].size`: must be at least 1 and keep both ranges below 2^32"),
            (r#"{"destination": "/w", "type": "bind", "source": "/tmp", "uidMappings": [{"containerID": -1, "hostID": 0, "size": 1}], "gidMappings": [{"containerID": 0, "hostID": 0, "size": 1}]}"#,
             "config.json `mounts[1].uidMappings[0].containerID`: must be an id (0 to 2^32-1)"),
        ] {
            assert_eq!(read(mount, false), Err(want.to_string()), "{mount}");
        }
        assert_eq!(
            read(
                r#"{"destination": "/w", "type": "bind", "source": "/tmp", "options": ["rbind", "ro"]}"#,
                false
            ),
            Ok(vec![None, None])
        );
    }
    use super::*;

    #[test]
    fn a_symlinked_destination_cannot_leave_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("rootfs");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("escape")).unwrap();
        std::os::unix::fs::symlink("../../../../..", root.join("etc/up")).unwrap();
        assert_eq!(
            resolve_in_root(&root, Path::new("/escape/x")),
            root.join("etc/x")
        );
        assert_eq!(
            resolve_in_root(&root, Path::new("/etc/up/tmp")),
            root.join("tmp")
        );
        std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
        assert!(resolve_in_root(&root, Path::new("/loop")).starts_with(&root));
    }

    #[test]
    fn a_malformed_config_names_the_field() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"ociVersion":"1.0.2","process":{"cwd":"/","args":["sh"],"user":{"uid":"zero","gid":0}}}"#,
        )
        .unwrap();
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("process.user.uid"), "{err}");
        let err = load(&dir.path().join("missing")).unwrap_err().to_string();
        assert!(err.contains("cannot read config.json"), "{err}");
    }
}
