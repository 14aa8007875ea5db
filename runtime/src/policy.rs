//! Covenant's policy over a standard bundle. The node's file
//! (`/etc/covenant/runtime.toml`, or `$COVENANT_RUNTIME_CONFIG`) decides how far the
//! author of a `config.json` is trusted:
//!
//! - always: a host hook that is a file of the bundle, joining the host's own
//!   namespaces (those of host PID 1) and binding the host's `/` writable are refused
//!   unless the node allows each by name;
//! - with `require_capability = true`: every container must carry a capability token
//!   (annotation `org.opencovenant.capability`) that verifies against the node's trusted
//!   keys, and the config is held to its grant: bind mounts only under granted `fs.*`
//!   paths (read-only unless `fs.write`), the host network only with `net:host`, no
//!   host hooks, no namespace joined by path, nothing outside a new PID, mount, IPC and UTS
//!   namespace.
//!
//! A file that does not exist means the defaults; a file that exists and does not parse
//! is an error (fail closed).

use covenant_policy::scope::{FsAccess, Scope};
use covenant_policy::{verify_capability, Capability, Grant, NetMode, VerifyContext};
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use serde::Deserialize;
use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The annotation that carries a capability token.
pub const CAPABILITY_ANNOTATION: &str = "org.opencovenant.capability";
/// The default location of the node's runtime policy.
pub const DEFAULT_PATH: &str = "/etc/covenant/runtime.toml";
/// Overrides [`DEFAULT_PATH`] (tests, unusual layouts).
pub const PATH_ENV: &str = "COVENANT_RUNTIME_CONFIG";

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("runtime policy {path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("refused by the runtime policy: config.json `{field}`: {reason}")]
    Refused { field: String, reason: String },
}

fn refuse(field: impl Into<String>, reason: impl Into<String>) -> PolicyError {
    PolicyError::Refused {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The node's runtime policy.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimePolicy {
    /// Every container must carry a capability that verifies.
    #[serde(default)]
    pub require_capability: bool,
    /// Files holding the trusted root keys (one `BASE64URL` key each, as `covenant-ctl key
    /// export` prints them).
    #[serde(default)]
    pub trusted_keys: Vec<PathBuf>,
    /// Allow joining the namespaces of the host's PID 1 by path.
    #[serde(default)]
    pub allow_host_namespaces: bool,
    /// Allow host hooks that are files of the bundle (its root filesystem included):
    /// the config's author then runs the image's own programs on the host.
    #[serde(default)]
    pub allow_bundle_hooks: bool,
    /// Allow a writable bind of the host's `/`.
    #[serde(default)]
    pub allow_host_root_bind: bool,
    /// Record create, start, kill and delete in the node's store.
    #[serde(default)]
    pub audit: bool,
    /// `COVENANT_HOME` of the node's store (default: the supervisor's default).
    #[serde(default)]
    pub store_home: Option<PathBuf>,
}

impl RuntimePolicy {
    /// Reads the node's policy file.
    pub fn load() -> Result<Self, PolicyError> {
        let path = std::env::var_os(PATH_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_PATH));
        Self::load_from(&path)
    }

    pub fn load_from(path: &Path) -> Result<Self, PolicyError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => {
                return Err(PolicyError::File {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })
            }
        };
        let policy: Self = toml::from_str(&text).map_err(|e| PolicyError::File {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        if policy.require_capability && policy.trusted_keys.is_empty() {
            return Err(PolicyError::File {
                path: path.to_path_buf(),
                reason: "`require_capability` needs at least one `trusted_keys` file".into(),
            });
        }
        Ok(policy)
    }

    fn trusted_roots(&self) -> Result<Vec<[u8; 32]>, PolicyError> {
        self.trusted_keys
            .iter()
            .map(|p| {
                let text = std::fs::read_to_string(p).map_err(|e| PolicyError::File {
                    path: p.clone(),
                    reason: e.to_string(),
                })?;
                covenant_policy::token::decode_key(text.trim()).map_err(|e| PolicyError::File {
                    path: p.clone(),
                    reason: e.to_string(),
                })
            })
            .collect()
    }

    /// Holds `spec` to the node's policy; returns the verified grant when one was given.
    /// `pinned[i]` is the real path of mount `i`'s source as `create` holds it open (see
    /// `create::pin_bind_sources`); a source not in it is resolved here.
    pub fn check(
        &self,
        spec: &Spec,
        pinned: &[Option<PathBuf>],
        shared: &[NamespaceId],
    ) -> Result<Option<Grant>, PolicyError> {
        let grant = self.verify_token(spec)?;
        check_namespace_paths(spec, self.allow_host_namespaces)?;
        check_binds(spec, pinned, self.allow_host_root_bind, grant.as_ref())?;
        if let Some(g) = &grant {
            check_against_grant(spec, g, shared)?;
        }
        Ok(grant)
    }

    fn verify_token(&self, spec: &Spec) -> Result<Option<Grant>, PolicyError> {
        let field = format!("annotations.{CAPABILITY_ANNOTATION}");
        let token = spec
            .annotations()
            .as_ref()
            .and_then(|a| a.get(CAPABILITY_ANNOTATION));
        let Some(token) = token else {
            if self.require_capability {
                return Err(refuse(
                    field,
                    "missing: this node runs only containers that carry a capability token",
                ));
            }
            return Ok(None);
        };
        if !self.require_capability && self.trusted_keys.is_empty() {
            return Err(refuse(
                field,
                "a capability was given but this node trusts no key to verify it (set `trusted_keys` in the runtime policy)",
            ));
        }
        let cap = Capability::parse(token).map_err(|e| refuse(&field, e.to_string()))?;
        let roots = self.trusted_roots()?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let revoked = HashSet::new();
        let grant = verify_capability(
            &cap,
            VerifyContext {
                now,
                trusted_roots: &roots,
                revoked: &revoked,
            },
        )
        .map_err(|e| refuse(&field, e.to_string()))?;
        Ok(Some(grant))
    }
}

/// The (device, inode) of the host's namespaces of this type: those of host PID 1 (when
/// it may be read) and the runtime's own (an engine runs it in the host's).
fn host_namespaces(name: &str) -> Vec<(u64, u64)> {
    ["/proc/1/ns", "/proc/self/ns"]
        .iter()
        .filter_map(|dir| std::fs::metadata(format!("{dir}/{name}")).ok())
        .map(|m| (m.dev(), m.ino()))
        .collect()
}

fn check_namespace_paths(spec: &Spec, allow_host: bool) -> Result<(), PolicyError> {
    let Some(linux) = spec.linux() else {
        return Ok(());
    };
    for (i, ns) in linux.namespaces().iter().flatten().enumerate() {
        let Some(path) = ns.path() else { continue };
        let field = format!("linux.namespaces[{i}].path");
        let m = std::fs::metadata(path)
            .map_err(|e| refuse(&field, format!("{}: {e}", path.display())))?;
        let name = ns.typ().to_string();
        if !allow_host && host_namespaces(&name).contains(&(m.dev(), m.ino())) {
            return Err(refuse(
                field,
                format!(
                    "{} is the host's own {name} namespace; set `allow_host_namespaces` in the runtime policy to allow it",
                    path.display()
                ),
            ));
        }
    }
    Ok(())
}

fn is_bind(m: &oci_spec::runtime::Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options()
            .iter()
            .flatten()
            .any(|o| o == "bind" || o == "rbind")
}

fn check_binds(
    spec: &Spec,
    pinned: &[Option<PathBuf>],
    allow_root: bool,
    grant: Option<&Grant>,
) -> Result<(), PolicyError> {
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        if !is_bind(m) {
            continue;
        }
        let field = format!("mounts[{i}].source");
        let Some(source) = m.source() else { continue };
        let real = match pinned.get(i).cloned().flatten() {
            Some(p) => p,
            None => std::fs::canonicalize(source)
                .map_err(|e| refuse(&field, format!("{}: {e}", source.display())))?,
        };
        let ro = m.options().iter().flatten().any(|o| o == "ro");
        if real == Path::new("/") && !ro && !allow_root {
            return Err(refuse(
                field,
                "a writable bind of the host's `/` gives the container the host; set `allow_host_root_bind` in the runtime policy to allow it",
            ));
        }
        if let Some(g) = grant {
            let asked = Scope::Fs(
                if ro { FsAccess::Read } else { FsAccess::Write },
                real.clone(),
            );
            if !g.scopes.iter().any(|s| s.covers(&asked)) {
                return Err(refuse(
                    field,
                    format!(
                        "{} is not granted by the capability (needs `{asked}`)",
                        real.display()
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The capabilities a container under a capability token may keep: the set container
/// engines give by default, none of which reaches beyond the container's namespaces.
const GRANTABLE_CAPABILITIES: [&str; 14] = [
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "NET_RAW",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// What a verified grant allows beyond binds.
/// A namespace, by the (device, inode) of its nsfs file.
pub type NamespaceId = (u64, u64);

/// The namespaces a governed container may join by path: those of the other containers
/// this runtime runs (a pod's containers join its sandbox's) and the named network
/// namespaces under `/run/netns` (where CNI plugins leave a pod's). Never the host's.
pub fn shareable_namespaces(inits: &[i32]) -> Vec<NamespaceId> {
    let mut out = Vec::new();
    for pid in inits {
        for name in ["net", "ipc", "uts", "pid", "mnt", "user", "cgroup"] {
            if let Ok(m) = std::fs::metadata(format!("/proc/{pid}/ns/{name}")) {
                out.push((m.dev(), m.ino()));
            }
        }
    }
    for dir in ["/run/netns", "/var/run/netns"] {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if let Ok(m) = std::fs::metadata(e.path()) {
                out.push((m.dev(), m.ino()));
            }
        }
    }
    out
}

/// The character devices a governed container may be allowed to read and write by its
/// device rules: those every container gets ([`crate::cgroups::DEFAULT_DEVICES`]) and the
/// tun device, which acts in the container's own network namespace.
fn grantable_devices() -> impl Iterator<Item = (i64, Option<i64>)> {
    crate::cgroups::DEFAULT_DEVICES
        .into_iter()
        .chain([(10, Some(200))])
        .map(|(major, minor)| (i64::from(major), minor.map(i64::from)))
}

/// Device rules can only narrow, except an allow that is mknod alone (a node the
/// container may create but not open) or one of [`grantable_devices`]: with `CAP_MKNOD`
/// any other allow would let the container make and open a host disk.
fn check_device_rules(linux: Option<&oci_spec::runtime::Linux>) -> Result<(), PolicyError> {
    let rules = linux
        .and_then(|l| l.resources().as_ref())
        .and_then(|r| r.devices().clone())
        .unwrap_or_default();
    for (i, d) in rules.iter().enumerate() {
        if !d.allow() {
            continue;
        }
        let access = d.access().clone().unwrap_or_default();
        if !access.is_empty() && access.chars().all(|c| c == 'm') {
            continue;
        }
        let char_dev = matches!(
            d.typ().map(|t| t.as_str().to_string()).as_deref(),
            Some("c") | Some("u")
        );
        let minor = d.minor().filter(|m| *m != -1);
        if char_dev
            && grantable_devices()
                .any(|(ma, mi)| d.major() == Some(ma) && (mi.is_none() || mi == minor))
        {
            continue;
        }
        return Err(refuse(
            format!("linux.resources.devices[{i}]"),
            "a capability grants no device access beyond the default devices (null, zero, full, random, urandom, tty, ptmx, the ptys, tun), except mknod alone",
        ));
    }
    Ok(())
}

fn check_against_grant(
    spec: &Spec,
    grant: &Grant,
    shared: &[NamespaceId],
) -> Result<(), PolicyError> {
    #[allow(deprecated)]
    if let Some(h) = spec.hooks() {
        let any = [
            h.prestart(),
            h.create_runtime(),
            h.create_container(),
            h.poststart(),
            h.poststop(),
        ]
        .iter()
        .any(|l| l.as_ref().is_some_and(|l| !l.is_empty()));
        if any {
            return Err(refuse(
                "hooks",
                "host hooks run as the runtime on the host; a capability cannot grant them",
            ));
        }
    }
    let linux = spec.linux().as_ref();
    if linux.and_then(|l| l.seccomp().as_ref()).is_none() {
        return Err(refuse(
            "linux.seccomp",
            "missing: a container run under a capability is never run without a seccomp filter",
        ));
    }
    if linux
        .and_then(|l| l.devices().as_ref())
        .is_some_and(|d| !d.is_empty())
    {
        return Err(refuse(
            "linux.devices",
            "device nodes are not grantable by a capability",
        ));
    }
    check_device_rules(linux)?;
    if let Some(caps) = spec
        .process()
        .as_ref()
        .and_then(|p| p.capabilities().as_ref())
    {
        let ptrace = grant
            .scopes
            .iter()
            .any(|s| s.covers(&Scope::Sys("ptrace".into())));
        for (name, set) in [
            ("bounding", caps.bounding()),
            ("effective", caps.effective()),
            ("permitted", caps.permitted()),
            ("inheritable", caps.inheritable()),
            ("ambient", caps.ambient()),
        ] {
            for cap in set.iter().flatten() {
                let text = cap.to_string();
                let allowed = GRANTABLE_CAPABILITIES.contains(&text.as_str())
                    || (text == "SYS_PTRACE" && ptrace);
                if !allowed {
                    return Err(refuse(
                        format!("process.capabilities.{name}"),
                        format!("CAP_{text} is beyond what a capability grants (the engines' default set; CAP_SYS_PTRACE with `sys.ptrace`)"),
                    ));
                }
            }
        }
    }
    let namespaces: Vec<_> = linux
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    for (i, ns) in namespaces.iter().enumerate() {
        let Some(path) = ns.path() else { continue };
        let id = std::fs::metadata(path).map(|m| (m.dev(), m.ino())).ok();
        if !id.is_some_and(|id| shared.contains(&id)) {
            return Err(refuse(
                format!("linux.namespaces[{i}].path"),
                format!(
                    "{} is neither another container's namespace nor one under /run/netns; a capability grants joining no other",
                    path.display()
                ),
            ));
        }
    }
    for required in [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
    ] {
        if !namespaces.iter().any(|n| n.typ() == required) {
            return Err(refuse(
                "linux.namespaces",
                format!("a {required} namespace is required; sharing the host's is not grantable"),
            ));
        }
    }
    if !namespaces
        .iter()
        .any(|n| n.typ() == LinuxNamespaceType::Network)
        && !grant
            .scopes
            .iter()
            .any(|s| s.covers(&Scope::Net(NetMode::Host)))
    {
        return Err(refuse(
            "linux.namespaces",
            "no network namespace means the host's network, which needs `net:host`",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> Spec {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn a_writable_bind_of_the_host_root_is_refused() {
        let s = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "mounts": [{"destination": "/host", "type": "bind", "source": "/", "options": ["rbind", "rw"]}]
        }));
        let err = RuntimePolicy::default()
            .check(&s, &[], &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("mounts[0].source") && err.contains("host's `/`"),
            "{err}"
        );
        let allowed = RuntimePolicy {
            allow_host_root_bind: true,
            ..RuntimePolicy::default()
        };
        assert!(allowed.check(&s, &[], &[]).is_ok());
    }

    #[test]
    fn joining_the_host_pid_namespace_is_refused() {
        let s = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "linux": {"namespaces": [{"type": "pid", "path": "/proc/self/ns/pid"}]}
        }));
        let err = RuntimePolicy::default()
            .check(&s, &[], &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("linux.namespaces[0].path") && err.contains("host's own"),
            "{err}"
        );
    }

    #[test]
    fn a_required_capability_that_is_missing_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("root.pub");
        std::fs::write(&key, covenant_policy::token::encode_key(&[7u8; 32])).unwrap();
        let file = dir.path().join("runtime.toml");
        std::fs::write(
            &file,
            format!(
                "require_capability = true\ntrusted_keys = [\"{}\"]\n",
                key.display()
            ),
        )
        .unwrap();
        let policy = RuntimePolicy::load_from(&file).unwrap();
        let s = spec(serde_json::json!({"ociVersion": "1.0.2"}));
        let err = policy.check(&s, &[], &[]).unwrap_err().to_string();
        assert!(
            err.contains(CAPABILITY_ANNOTATION) && err.contains("missing"),
            "{err}"
        );
        let s = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "annotations": {CAPABILITY_ANNOTATION: "not-a-token"}
        }));
        let err = policy.check(&s, &[], &[]).unwrap_err().to_string();
        assert!(err.contains(CAPABILITY_ANNOTATION), "{err}");
    }

    #[test]
    fn a_policy_file_that_does_not_parse_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("runtime.toml");
        std::fs::write(&file, "require_capabilty = true\n").unwrap();
        assert!(RuntimePolicy::load_from(&file).is_err());
        assert!(RuntimePolicy::load_from(&dir.path().join("absent")).is_ok());
    }

    /// A node that requires capabilities, a key it trusts, and a token from that key.
    fn governed(dir: &Path, scopes: &[&str]) -> (RuntimePolicy, String) {
        use covenant_policy::token::{SignedToken, TokenBody};
        let key = ed25519_dalek::SigningKey::from_bytes(&[5u8; 32]);
        let public = dir.join("root.pub");
        std::fs::write(
            &public,
            covenant_policy::token::encode_key(&key.verifying_key().to_bytes()),
        )
        .unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let mut scopes: Vec<Scope> = scopes.iter().map(|s| Scope::parse(s).unwrap()).collect();
        scopes.sort_by_key(|s| s.to_string());
        let body = TokenBody {
            id: [1u8; 16],
            issuer: key.verifying_key().to_bytes(),
            subject: covenant_policy::Subject::Name("pod".into()),
            not_before: now - 60,
            expires: now + 3600,
            parent: None,
            scopes,
            nonce: [2u8; 16],
        };
        let token = Capability {
            chain: vec![SignedToken::sign(body, &key).unwrap()],
        }
        .print();
        let policy = RuntimePolicy {
            require_capability: true,
            trusted_keys: vec![public],
            ..RuntimePolicy::default()
        };
        (policy, token)
    }

    fn governed_spec(token: &str, edit: impl FnOnce(&mut serde_json::Value)) -> Spec {
        let mut v = serde_json::json!({
            "ociVersion": "1.0.2",
            "annotations": {CAPABILITY_ANNOTATION: token},
            "process": {"cwd": "/", "args": ["true"], "user": {"uid": 0, "gid": 0},
                        "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"]}},
            "mounts": [{"destination": "/data", "type": "bind", "source": "/tmp", "options": ["rbind", "ro"]}],
            "linux": {
                "namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"}, {"type": "network"}],
                "seccomp": {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": []}
            }
        });
        edit(&mut v);
        spec(v)
    }

    type SpecEdit = Box<dyn Fn(&mut serde_json::Value)>;

    #[test]
    fn a_governed_config_is_held_to_its_grant() {
        let dir = tempfile::tempdir().unwrap();
        let (policy, token) = governed(dir.path(), &["fs.read:/tmp"]);
        let tmp = std::fs::canonicalize("/tmp").unwrap();
        let pinned = [Some(tmp)];
        assert!(policy
            .check(&governed_spec(&token, |_| {}), &pinned, &[])
            .unwrap()
            .is_some());
        let cases: Vec<(SpecEdit, &str)> = vec![
            (
                Box::new(|v| v["mounts"][0]["options"] = serde_json::json!(["rbind", "rw"])),
                "mounts[0].source",
            ),
            (
                Box::new(|v| {
                    v["process"]["capabilities"]["bounding"] = serde_json::json!(["CAP_SYS_ADMIN"])
                }),
                "process.capabilities.bounding",
            ),
            (
                Box::new(|v| {
                    v["linux"].as_object_mut().unwrap().remove("seccomp");
                }),
                "linux.seccomp",
            ),
            (
                Box::new(
                    |v| v["linux"]["namespaces"] = serde_json::json!([{"type": "pid"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"}]),
                ),
                "net:host",
            ),
            (
                Box::new(|v| v["hooks"] = serde_json::json!({"prestart": [{"path": "/bin/true"}]})),
                "hooks",
            ),
            (
                Box::new(|v| {
                    v["linux"]["devices"] = serde_json::json!([{"path": "/dev/sda", "type": "b", "major": 8, "minor": 0}])
                }),
                "linux.devices",
            ),
            // With CAP_MKNOD, an allow rule lets the container make and open a host disk.
            (
                Box::new(|v| {
                    v["linux"]["resources"] = serde_json::json!({"devices": [
                        {"allow": false, "access": "rwm"},
                        {"allow": true, "type": "c", "major": 136, "access": "rwm"},
                        {"allow": true, "access": "rwm"}]})
                }),
                "linux.resources.devices[2]",
            ),
            (
                Box::new(|v| {
                    v["linux"]["resources"] = serde_json::json!({"devices": [
                        {"allow": true, "type": "b", "major": 8, "minor": 0, "access": "r"}]})
                }),
                "linux.resources.devices[0]",
            ),
            (
                Box::new(|v| {
                    v["linux"]["resources"] = serde_json::json!({"devices": [
                        {"allow": true, "type": "c", "major": 1, "access": "rw"}]})
                }),
                "linux.resources.devices[0]",
            ),
        ];
        for (edit, field) in cases {
            let err = policy
                .check(&governed_spec(&token, edit), &pinned, &[])
                .unwrap_err()
                .to_string();
            assert!(err.contains(field), "{field}: {err}");
        }
        // What engines list by default passes: deny all, mknod of anything, the default
        // devices and tun.
        let engine_default = governed_spec(&token, |v| {
            v["linux"]["resources"] = serde_json::json!({"devices": [
                {"allow": false, "access": "rwm"},
                {"allow": true, "type": "c", "access": "m"},
                {"allow": true, "type": "b", "access": "m"},
                {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
                {"allow": true, "type": "c", "major": 136, "minor": -1, "access": "rwm"},
                {"allow": true, "type": "c", "major": 10, "minor": 200, "access": "rwm"},
                {"allow": false, "type": "b", "major": 8, "access": "rwm"}]})
        });
        assert!(policy.check(&engine_default, &pinned, &[]).is_ok());
        let (other, _) = governed(dir.path(), &["fs.read:/tmp"]);
        let forged = token.replace('A', "B");
        assert!(other
            .check(&governed_spec(&forged, |_| {}), &pinned, &[])
            .is_err());
    }

    #[test]
    fn a_governed_container_joins_only_a_namespace_it_may_share() {
        let dir = tempfile::tempdir().unwrap();
        let (mut policy, token) = governed(dir.path(), &["fs.read:/tmp"]);
        // The test runs in the host's namespaces; let the host rule pass to reach the grant's.
        policy.allow_host_namespaces = true;
        let tmp = std::fs::canonicalize("/tmp").unwrap();
        let pinned = [Some(tmp)];
        let spec = governed_spec(&token, |v| {
            v["linux"]["namespaces"][3] =
                serde_json::json!({"type": "uts", "path": "/proc/self/ns/uts"});
        });
        let err = policy.check(&spec, &pinned, &[]).unwrap_err().to_string();
        assert!(err.contains("linux.namespaces[3].path"), "{err}");
        let m = std::fs::metadata("/proc/self/ns/uts").unwrap();
        assert!(policy.check(&spec, &pinned, &[(m.dev(), m.ino())]).is_ok());
    }
}
