//! `compile_plan`: from an authorised manifest to the [`SandboxPlan`]. Every refusal names
//! the manifest field (or the flag that set it) and says what would be accepted.

use crate::egress::EgressRule;
use crate::manifest::{Manifest, RlimitSpec};
use crate::plan::{
    Authorisation, Degradation, Limits, MountAccess, NetMode, PlanMount, Rlimit, RlimitKind,
    RootfsSource, RunnerChoice, SandboxPlan, UserIds, PLAN_VERSION,
};
use crate::scope::{ceiling, missing, FsAccess, Resource, Scope, SYSCALL_GROUPS};
use crate::seccomp_profile::profile_name;
use crate::units::{parse_cpus, parse_duration, parse_size};
use crate::verify::Grant;
use std::path::{Component, Path, PathBuf};

/// Where a workspace appears inside every sandbox.
pub const WORKSPACE_TARGET: &str = "/workspace";

/// The `PATH` a sandbox gets unless the manifest sets one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Sandbox paths a host mount may not cover: the runner builds these itself.
const RESERVED_TARGETS: [&str; 4] = ["/proc", "/dev", "/sys", "/run/covenant"];

/// Highest uid/gid a sandbox may run as: the user namespace maps 65,536 ids.
pub const MAX_SANDBOX_ID: u32 = 65_535;

/// Every rlimit a plan gets unless the manifest sets it: no core dumps (they could leak
/// memory contents to the workspace) and a bounded descriptor table.
const DEFAULT_RLIMITS: [(RlimitKind, u64, u64); 2] =
    [(RlimitKind::Core, 0, 0), (RlimitKind::Nofile, 4096, 4096)];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct CompileError {
    /// The manifest key (or dotted path) that was refused.
    pub field: String,
    pub reason: String,
}

fn refuse(field: &str, reason: impl Into<String>) -> CompileError {
    CompileError {
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// Why an authorised request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthoriseError {
    #[error(transparent)]
    Request(#[from] CompileError),
    #[error("the capability does not grant {}: {}", if .0.len() == 1 { "this scope" } else { "these scopes" }, .0.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", "))]
    Missing(Vec<Scope>),
}

/// Compiles `manifest` under `grant`: the request must lie within the grant (every
/// missing scope is listed), and the grant's resource ceilings bound whatever the
/// request leaves open.
pub fn compile_plan(
    grant: &Grant,
    manifest: &Manifest,
    job_id: &str,
    authorisation: Authorisation,
) -> Result<SandboxPlan, AuthoriseError> {
    let request = compile_request(manifest, job_id)?;
    authorise(request, grant, authorisation)
}

/// Checks a compiled request against a grant and applies the grant's ceilings.
pub fn authorise(
    mut plan: SandboxPlan,
    grant: &Grant,
    authorisation: Authorisation,
) -> Result<SandboxPlan, AuthoriseError> {
    let missing = missing(&grant.scopes, &requested_scopes(&plan));
    if !missing.is_empty() {
        return Err(AuthoriseError::Missing(missing));
    }
    let limits = &mut plan.limits;
    limits.memory_bytes = limits
        .memory_bytes
        .or(ceiling(&grant.scopes, Resource::Mem));
    limits.millicpus = limits
        .millicpus
        .or(ceiling(&grant.scopes, Resource::Cpu).map(|c| c as u32));
    limits.pids = limits.pids.or(ceiling(&grant.scopes, Resource::Pids));
    limits.timeout_ms = limits.timeout_ms.or(ceiling(&grant.scopes, Resource::Time));
    plan.authorisation = authorisation;
    Ok(plan)
}

/// The scopes a request needs: its host paths, network, ports, limits, syscall groups
/// and accepted degradations. `net:none` is in every request and needs no grant.
pub fn requested_scopes(plan: &SandboxPlan) -> Vec<Scope> {
    let mut scopes: Vec<Scope> = plan
        .mounts
        .iter()
        .map(|m| {
            let access = match m.access {
                MountAccess::ReadOnly => FsAccess::Read,
                MountAccess::ReadExec => FsAccess::Exec,
                MountAccess::ReadWrite => FsAccess::Write,
            };
            Scope::Fs(access, m.host.clone())
        })
        .collect();
    // The base system view (host or image) comes with every run; a host directory used as
    // the root is a host path like any other.
    match &plan.rootfs {
        RootfsSource::Host => {}
        RootfsSource::Dir { path } => scopes.push(Scope::Fs(FsAccess::Exec, path.clone())),
        RootfsSource::Image { reference, .. } => scopes.push(Scope::RootImage(reference.clone())),
    }
    if let Some(keep) = &plan.keep_changes {
        scopes.push(Scope::Fs(FsAccess::Write, keep.clone()));
    }
    scopes.push(Scope::Net(plan.net));
    scopes.push(Scope::Runner(plan.runner.clone()));
    scopes.extend(plan.connect_tcp.iter().map(|&p| Scope::NetConnectTcp(p)));
    scopes.extend(plan.egress.iter().cloned().map(Scope::NetEgress));
    let l = &plan.limits;
    for (kind, value) in [
        (Resource::Mem, l.memory_bytes),
        (Resource::Cpu, l.millicpus.map(u64::from)),
        (Resource::Pids, l.pids),
        (Resource::Time, l.timeout_ms),
    ] {
        if let Some(v) = value {
            scopes.push(Scope::Res(kind, v));
        }
    }
    scopes.extend(plan.syscall_groups.iter().map(|g| Scope::Sys(g.clone())));
    scopes.extend(
        plan.accepted_degradations
            .iter()
            .map(|&d| Scope::Degrade(d)),
    );
    scopes
}

/// Compiles what `manifest` asks for into a plan for job `job_id`, before any
/// authorisation (its `authorisation` is a placeholder until [`authorise`]).
pub fn compile_request(manifest: &Manifest, job_id: &str) -> Result<SandboxPlan, CompileError> {
    let argv = compile_command(&manifest.command)?;
    let mounts = compile_mounts(manifest)?;
    let has_workspace = manifest.workspace.is_some();
    let cwd = match &manifest.cwd {
        Some(cwd) => sandbox_path("cwd", cwd)?,
        None if has_workspace => PathBuf::from(WORKSPACE_TARGET),
        None => PathBuf::from("/"),
    };
    let home = if has_workspace {
        WORKSPACE_TARGET
    } else {
        "/tmp"
    };
    let egress = compile_egress(&manifest.egress)?;
    let net = match manifest.net.as_deref() {
        None if !egress.is_empty() => NetMode::Egress,
        None => NetMode::None,
        Some(s) => NetMode::parse(s).ok_or_else(|| {
            refuse(
                "net",
                format!("`{s}` is not one of none, loopback, egress, host"),
            )
        })?,
    };
    match (net, egress.is_empty()) {
        (NetMode::Egress, true) => {
            return Err(refuse(
                "egress",
                "`net = \"egress\"` with no `egress` rules reaches nothing; list hosts or use `net = \"none\"`",
            ))
        }
        (NetMode::Egress, false) | (_, true) => {}
        (other, false) => {
            return Err(refuse(
                "egress",
                format!(
                    "`egress` rules need `net = \"egress\"` (or no `net`), not `{}`",
                    other.as_str()
                ),
            ))
        }
    }
    let connect_tcp = compile_connect(&manifest.connect, net)?;
    let syscall_groups = compile_syscall_groups(&manifest.syscalls)?;
    Ok(SandboxPlan {
        version: PLAN_VERSION,
        job_id: job_id.to_string(),
        authorisation: Authorisation::Operator { key: String::new() },
        argv,
        env: compile_env(manifest, home)?,
        cwd,
        user: compile_user(manifest.user.as_deref())?,
        hostname: compile_hostname(manifest.hostname.as_deref())?,
        rootfs: compile_rootfs(manifest.rootfs.as_deref(), &manifest.base_dir)?,
        runner: match manifest.runner.as_deref() {
            None => RunnerChoice::Native,
            Some(text) => RunnerChoice::parse(text).map_err(|e| refuse("runner", e))?,
        },
        keep_changes: compile_keep_changes(manifest)?,
        mounts,
        net,
        egress,
        host_sockets: Vec::new(),
        connect_tcp,
        limits: compile_limits(manifest)?,
        rlimits: compile_rlimits(manifest)?,
        seccomp_profile: profile_name(&syscall_groups),
        syscall_groups,
        accepted_degradations: compile_degradations(&manifest.accept_degradations)?,
        pinned: Vec::new(),
    })
}

fn compile_connect(ports: &[u16], net: NetMode) -> Result<Vec<u16>, CompileError> {
    if ports.is_empty() {
        return Ok(Vec::new());
    }
    if net == NetMode::None {
        return Err(refuse(
            "connect",
            "TCP ports need `net` loopback or host; with none there is nothing to connect to",
        ));
    }
    if ports.contains(&0) {
        return Err(refuse("connect", "port 0 is not a port"));
    }
    let mut out = ports.to_vec();
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// The manifest's `egress` list as rules, sorted and without duplicates; a bad entry is
/// refused naming it.
fn compile_egress(entries: &[String]) -> Result<Vec<EgressRule>, CompileError> {
    const MAX_RULES: usize = 256;
    if entries.len() > MAX_RULES {
        return Err(refuse("egress", format!("more than {MAX_RULES} rules")));
    }
    let mut rules = Vec::with_capacity(entries.len());
    for entry in entries {
        rules.push(EgressRule::parse(entry).map_err(|e| refuse("egress", e.to_string()))?);
    }
    rules.sort();
    rules.dedup();
    Ok(rules)
}

fn compile_syscall_groups(groups: &[String]) -> Result<Vec<String>, CompileError> {
    let mut out = Vec::new();
    for g in groups {
        if !SYSCALL_GROUPS.iter().any(|(known, _)| known == g) {
            let known: Vec<_> = SYSCALL_GROUPS.iter().map(|(k, _)| *k).collect();
            return Err(refuse(
                "syscalls",
                format!("`{g}` is not a syscall group; known: {}", known.join(", ")),
            ));
        }
        if !out.contains(g) {
            out.push(g.clone());
        }
    }
    out.sort();
    Ok(out)
}

fn compile_command(command: &[String]) -> Result<Vec<String>, CompileError> {
    if command.is_empty() {
        return Err(refuse(
            "command",
            "nothing to run: give `command = [...]` or `-- PROGRAM ARGS`",
        ));
    }
    if command[0].is_empty() {
        return Err(refuse("command", "the program name is empty"));
    }
    if command.iter().any(|a| a.contains('\0')) {
        return Err(refuse("command", "an argument contains a NUL byte"));
    }
    Ok(command.to_vec())
}

/// A path inside the sandbox: absolute, no `..`, no NUL.
fn sandbox_path(field: &str, path: &Path) -> Result<PathBuf, CompileError> {
    if !path.is_absolute() {
        return Err(refuse(
            field,
            format!(
                "`{}` must be an absolute path inside the sandbox",
                path.display()
            ),
        ));
    }
    if path.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(refuse(
            field,
            format!("`{}` must not contain `..`", path.display()),
        ));
    }
    if path.as_os_str().as_encoded_bytes().contains(&0) {
        return Err(refuse(field, "path contains a NUL byte"));
    }
    Ok(path.components().collect())
}

/// A host path the request names: made absolute against the manifest's folder and
/// cleaned by name alone (`.` dropped, `..` takes back one component). Nothing is looked
/// up here, so a refusal never tells whether a path exists: the supervisor opens the
/// result after authorisation without following any symlink, so the object mounted is
/// the one this name (and the grant that covers it) names.
fn host_path(field: &str, base: &Path, path: &Path) -> Result<PathBuf, CompileError> {
    if path.as_os_str().as_encoded_bytes().contains(&0) {
        return Err(refuse(field, "path contains a NUL byte"));
    }
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else if base.is_absolute() {
        base.join(path)
    } else {
        return Err(refuse(
            field,
            format!(
                "`{}` is relative and the request has no absolute folder to resolve it against",
                path.display()
            ),
        ));
    };
    let mut clean = PathBuf::from("/");
    for c in joined.components() {
        match c {
            Component::Normal(part) => clean.push(part),
            Component::ParentDir => {
                clean.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    if clean == Path::new("/") {
        return Err(refuse(
            field,
            "the host's root directory cannot be mounted into a sandbox",
        ));
    }
    Ok(clean)
}

fn compile_mounts(manifest: &Manifest) -> Result<Vec<PlanMount>, CompileError> {
    let base = &manifest.base_dir;
    let mut mounts: Vec<PlanMount> = Vec::new();
    if let Some(ws) = &manifest.workspace {
        let host = host_path("workspace", base, ws)?;
        mounts.push(PlanMount {
            host,
            target: PathBuf::from(WORKSPACE_TARGET),
            access: MountAccess::ReadWrite,
        });
    }
    let extra = manifest
        .read
        .iter()
        .map(|p| ("read", p, MountAccess::ReadOnly))
        .chain(
            manifest
                .exec
                .iter()
                .map(|p| ("exec", p, MountAccess::ReadExec)),
        )
        .chain(
            manifest
                .write
                .iter()
                .map(|p| ("write", p, MountAccess::ReadWrite)),
        );
    for (field, path, access) in extra {
        let host = host_path(field, base, path)?;
        let target = host.clone();
        if let Some(reserved) = RESERVED_TARGETS.iter().find(|r| target.starts_with(r)) {
            return Err(refuse(
                field,
                format!(
                    "`{}` lies under {reserved}, which the sandbox builds itself",
                    target.display()
                ),
            ));
        }
        if mounts.iter().any(|o| o.target == target) {
            return Err(refuse(
                field,
                format!("`{}` is mounted twice", target.display()),
            ));
        }
        mounts.push(PlanMount {
            host,
            target,
            access,
        });
    }
    Ok(mounts)
}

fn compile_env(manifest: &Manifest, home: &str) -> Result<Vec<(String, String)>, CompileError> {
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), DEFAULT_PATH.into()),
        ("HOME".into(), home.into()),
    ];
    for (key, value) in &manifest.env {
        let field = if key.is_empty() {
            "env".to_string()
        } else {
            format!("env.{key}")
        };
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(refuse(
                &field,
                "a variable name must be non-empty without `=` or NUL",
            ));
        }
        if value.contains('\0') {
            return Err(refuse(&field, "the value contains a NUL byte"));
        }
        env.retain(|(k, _)| k != key);
        env.push((key.clone(), value.clone()));
    }
    Ok(env)
}

fn compile_user(user: Option<&str>) -> Result<UserIds, CompileError> {
    let Some(spec) = user else {
        return Ok(UserIds { uid: 0, gid: 0 });
    };
    let parse = |s: &str| -> Result<u32, CompileError> {
        let id: u32 = s
            .parse()
            .map_err(|_| refuse("user", format!("`{spec}` is not UID or UID:GID (numbers)")))?;
        if id > MAX_SANDBOX_ID {
            return Err(refuse(
                "user",
                format!("id {id} is above {MAX_SANDBOX_ID}, the last id the sandbox maps"),
            ));
        }
        Ok(id)
    };
    let (uid, gid) = spec.split_once(':').unwrap_or((spec, spec));
    Ok(UserIds {
        uid: parse(uid)?,
        gid: parse(gid)?,
    })
}

fn compile_hostname(hostname: Option<&str>) -> Result<String, CompileError> {
    let name = hostname.unwrap_or("covenant");
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        && !name.starts_with('-');
    if !valid {
        return Err(refuse(
            "hostname",
            format!("`{name}` is not a valid host name (letters, digits, `-`, `.`; at most 63)"),
        ));
    }
    Ok(name.to_string())
}

fn compile_rootfs(rootfs: Option<&str>, base: &Path) -> Result<RootfsSource, CompileError> {
    let spec = rootfs.unwrap_or("host");
    if spec == "host" {
        return Ok(RootfsSource::Host);
    }
    if let Some(reference) = spec.strip_prefix("image:") {
        if !crate::scope::valid_image_reference(reference) {
            return Err(refuse(
                "rootfs",
                format!("`{reference}` is not an image reference (NAME[:TAG] or NAME@sha256:...)"),
            ));
        }
        return Ok(RootfsSource::Image {
            reference: reference.to_string(),
            manifest_digest: None,
            lower_dirs: Vec::new(),
        });
    }
    if let Some(path) = spec.strip_prefix("dir:") {
        let path = host_path("rootfs", base, Path::new(path))?;
        return Ok(RootfsSource::Dir { path });
    }
    Err(refuse(
        "rootfs",
        format!("`{spec}` is not a rootfs source: use host, image:NAME[:TAG] or dir:PATH"),
    ))
}

fn compile_keep_changes(manifest: &Manifest) -> Result<Option<PathBuf>, CompileError> {
    let Some(path) = &manifest.keep_changes else {
        return Ok(None);
    };
    let rootfs = manifest.rootfs.as_deref().unwrap_or("host");
    if rootfs == "host" {
        return Err(refuse(
            "keep_changes",
            "only an image or directory root has changes to keep",
        ));
    }
    // Created (when missing) only once the run is authorised and starts.
    Ok(Some(host_path("keep_changes", &manifest.base_dir, path)?))
}

fn compile_limits(manifest: &Manifest) -> Result<Limits, CompileError> {
    let spec = &manifest.limits;
    let memory_bytes = match &spec.memory {
        None => None,
        Some(s) => {
            let bytes = parse_size(s).map_err(|e| refuse("limits.memory", e.to_string()))?;
            if bytes < 4 << 20 {
                return Err(refuse(
                    "limits.memory",
                    format!("`{s}` is below 4MiB, too small to start a process"),
                ));
            }
            Some(bytes)
        }
    };
    if let Some(pids) = spec.pids {
        if pids < 2 {
            return Err(refuse(
                "limits.pids",
                "must be at least 2: the sandbox's init counts as one",
            ));
        }
    }
    let millicpus = match &spec.cpus {
        None => None,
        Some(v) => {
            Some(parse_cpus(&v.as_text()).map_err(|e| refuse("limits.cpus", e.to_string()))?)
        }
    };
    let timeout_ms = match &spec.timeout {
        None => None,
        Some(s) => {
            let d = parse_duration(s).map_err(|e| refuse("limits.timeout", e.to_string()))?;
            if d.is_zero() {
                return Err(refuse("limits.timeout", "must be longer than zero"));
            }
            Some(d.as_millis() as u64)
        }
    };
    Ok(Limits {
        memory_bytes,
        pids: spec.pids,
        millicpus,
        timeout_ms,
    })
}

fn compile_rlimits(manifest: &Manifest) -> Result<Vec<Rlimit>, CompileError> {
    let mut out: Vec<Rlimit> = DEFAULT_RLIMITS
        .iter()
        .map(|&(kind, soft, hard)| Rlimit { kind, soft, hard })
        .collect();
    for (key, spec) in &manifest.rlimits {
        let field = format!("rlimits.{key}");
        let kind = RlimitKind::from_key(key).ok_or_else(|| {
            let known: Vec<_> = RlimitKind::ALL.iter().map(|k| k.key()).collect();
            refuse(
                &field,
                format!("unknown rlimit; known: {}", known.join(", ")),
            )
        })?;
        let (soft, hard) = match *spec {
            RlimitSpec::Both(v) => (v, v),
            RlimitSpec::Split { soft, hard } => (soft, hard),
        };
        if soft > hard {
            return Err(refuse(
                &field,
                format!("soft limit {soft} is above hard limit {hard}"),
            ));
        }
        out.retain(|r| r.kind != kind);
        out.push(Rlimit { kind, soft, hard });
    }
    out.sort_by_key(|r| r.kind);
    Ok(out)
}

fn compile_degradations(names: &[String]) -> Result<Vec<Degradation>, CompileError> {
    let mut out = Vec::new();
    for name in names {
        let d = Degradation::parse(name).ok_or_else(|| {
            let known: Vec<_> = Degradation::ALL.iter().map(|d| d.name()).collect();
            refuse(
                "accept_degradations",
                format!("`{name}` is not a degradation; known: {}", known.join(", ")),
            )
        })?;
        if !out.contains(&d) {
            out.push(d);
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(text: &str) -> Manifest {
        let mut m = Manifest::parse(text).unwrap();
        m.base_dir = std::env::temp_dir();
        m
    }

    fn field_of(text: &str) -> String {
        compile_request(&manifest(text), "job").unwrap_err().field
    }

    #[test]
    fn a_minimal_manifest_compiles_with_safe_defaults() {
        let plan = compile_request(&manifest("version = 1\ncommand = [\"true\"]"), "job").unwrap();
        assert_eq!(plan.net, NetMode::None);
        assert_eq!(plan.user, UserIds { uid: 0, gid: 0 });
        assert_eq!(plan.cwd, PathBuf::from("/"));
        assert!(plan.mounts.is_empty());
        assert!(plan.rlimits.contains(&Rlimit {
            kind: RlimitKind::Core,
            soft: 0,
            hard: 0
        }));
        assert_eq!(
            plan.seccomp_profile,
            crate::seccomp_profile::DEFAULT_PROFILE_NAME
        );
        assert!(plan.digest().starts_with("sha256:"));
    }

    #[test]
    fn workspace_is_cleaned_by_name_and_becomes_the_cwd() {
        let text = "version = 1\ncommand = [\"true\"]\nworkspace = \"/srv/./a/../w/\"";
        let plan = compile_request(&manifest(text), "job").unwrap();
        assert_eq!(plan.mounts[0].host, PathBuf::from("/srv/w"));
        assert_eq!(plan.mounts[0].target, PathBuf::from(WORKSPACE_TARGET));
        assert_eq!(plan.cwd, PathBuf::from(WORKSPACE_TARGET));
    }

    use crate::manifest::CpusValue;

    type Edit = fn(&mut Manifest);

    /// Each refusal of `compile_request`, by the one field changed from a manifest it
    /// accepts.
    #[test]
    fn every_refusal_names_its_field_and_reason() {
        let cases: &[(Edit, &str)] = &[
            (
                |m| m.command.clear(),
                "command: nothing to run: give `command = [...]` or `-- PROGRAM ARGS`",
            ),
            (
                |m| m.command = vec![String::new(), "x".into()],
                "command: the program name is empty",
            ),
            (
                |m| m.command.push("a\0b".into()),
                "command: an argument contains a NUL byte",
            ),
            (
                |m| m.workspace = Some("/srv/w\0".into()),
                "workspace: path contains a NUL byte",
            ),
            (
                |m| {
                    m.base_dir = PathBuf::new();
                    m.workspace = Some("w".into());
                },
                "workspace: `w` is relative and the request has no absolute folder to resolve it against",
            ),
            (
                |m| m.workspace = Some("../../..".into()),
                "workspace: the host's root directory cannot be mounted into a sandbox",
            ),
            (
                |m| m.read = vec!["/proc/self".into()],
                "read: `/proc/self` lies under /proc, which the sandbox builds itself",
            ),
            (
                |m| m.exec = vec!["/dev".into()],
                "exec: `/dev` lies under /dev, which the sandbox builds itself",
            ),
            (
                |m| m.write = vec!["/run/covenant/agent".into()],
                "write: `/run/covenant/agent` lies under /run/covenant, which the sandbox builds itself",
            ),
            (
                |m| m.read = vec!["/sys".into()],
                "read: `/sys` lies under /sys, which the sandbox builds itself",
            ),
            (
                |m| m.exec = vec!["/opt/tool".into(), "/opt/./tool/".into()],
                "exec: `/opt/tool` is mounted twice",
            ),
            (
                |m| {
                    m.read = vec!["/srv/data".into()];
                    m.write = vec!["/srv/data".into()];
                },
                "write: `/srv/data` is mounted twice",
            ),
            (
                |m| m.cwd = Some("src".into()),
                "cwd: `src` must be an absolute path inside the sandbox",
            ),
            (
                |m| m.cwd = Some("/a/../b".into()),
                "cwd: `/a/../b` must not contain `..`",
            ),
            (
                |m| m.cwd = Some("/a\0".into()),
                "cwd: path contains a NUL byte",
            ),
            (
                |m| m.net = Some("wifi".into()),
                "net: `wifi` is not one of none, loopback, egress, host",
            ),
            (
                |m| m.connect = vec![443],
                "connect: TCP ports need `net` loopback or host; with none there is nothing to connect to",
            ),
            (
                |m| {
                    m.net = Some("loopback".into());
                    m.connect = vec![80, 0];
                },
                "connect: port 0 is not a port",
            ),
            (
                |m| m.syscalls = vec!["mount".into()],
                "syscalls: `mount` is not a syscall group; known: ptrace",
            ),
            (
                |m| {
                    m.env.insert(String::new(), "x".into());
                },
                "env: a variable name must be non-empty without `=` or NUL",
            ),
            (
                |m| {
                    m.env.insert("A=B".into(), "x".into());
                },
                "env.A=B: a variable name must be non-empty without `=` or NUL",
            ),
            (
                |m| {
                    m.env.insert("A\0".into(), "x".into());
                },
                "env.A\0: a variable name must be non-empty without `=` or NUL",
            ),
            (
                |m| {
                    m.env.insert("A".into(), "x\0".into());
                },
                "env.A: the value contains a NUL byte",
            ),
            (
                |m| m.user = Some("root".into()),
                "user: `root` is not UID or UID:GID (numbers)",
            ),
            (
                |m| m.user = Some("1000:staff".into()),
                "user: `1000:staff` is not UID or UID:GID (numbers)",
            ),
            (
                |m| m.user = Some("70000".into()),
                "user: id 70000 is above 65535, the last id the sandbox maps",
            ),
            (
                |m| m.user = Some("0:65536".into()),
                "user: id 65536 is above 65535, the last id the sandbox maps",
            ),
            (
                |m| m.hostname = Some("-box".into()),
                "hostname: `-box` is not a valid host name (letters, digits, `-`, `.`; at most 63)",
            ),
            (
                |m| m.hostname = Some(String::new()),
                "hostname: `` is not a valid host name (letters, digits, `-`, `.`; at most 63)",
            ),
            (
                |m| m.hostname = Some("a b".into()),
                "hostname: `a b` is not a valid host name (letters, digits, `-`, `.`; at most 63)",
            ),
            (
                |m| m.hostname = Some("h".repeat(64)),
                "hostname: `hhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhhh` is not a valid host name (letters, digits, `-`, `.`; at most 63)",
            ),
            (
                |m| m.rootfs = Some("image:../alpine".into()),
                "rootfs: `../alpine` is not an image reference (NAME[:TAG] or NAME@sha256:...)",
            ),
            (
                |m| m.rootfs = Some("image:".into()),
                "rootfs: `` is not an image reference (NAME[:TAG] or NAME@sha256:...)",
            ),
            (
                |m| m.rootfs = Some("dir:/".into()),
                "rootfs: the host's root directory cannot be mounted into a sandbox",
            ),
            (
                |m| m.rootfs = Some("tar:root.tar".into()),
                "rootfs: `tar:root.tar` is not a rootfs source: use host, image:NAME[:TAG] or dir:PATH",
            ),
            (
                |m| m.runner = Some("docker".into()),
                "runner: `docker` is not a runner: use native, gvisor or oci:/ABSOLUTE/PATH",
            ),
            (
                |m| m.runner = Some("oci:bin/runc".into()),
                "runner: `bin/runc` must be an absolute path without `.`, `..` or repeated `/`",
            ),
            (
                |m| m.runner = Some("oci:/usr/bin/".into()),
                "runner: `/usr/bin/` must be an absolute path without `.`, `..` or repeated `/`",
            ),
            (
                |m| m.keep_changes = Some("/srv/keep".into()),
                "keep_changes: only an image or directory root has changes to keep",
            ),
            (
                |m| {
                    m.rootfs = Some("image:alpine".into());
                    m.keep_changes = Some("/srv/keep\0".into());
                },
                "keep_changes: path contains a NUL byte",
            ),
            (
                |m| m.limits.memory = Some("lots".into()),
                "limits.memory: `lots` is not a size: use a number with an optional unit B, KiB, MiB, GiB (or K, M, G, KB, MB, GB)",
            ),
            (
                |m| m.limits.memory = Some("1MiB".into()),
                "limits.memory: `1MiB` is below 4MiB, too small to start a process",
            ),
            (
                |m| m.limits.memory = Some("99999999999TiB".into()),
                "limits.memory: `99999999999TiB` is too large",
            ),
            (
                |m| m.limits.pids = Some(1),
                "limits.pids: must be at least 2: the sandbox's init counts as one",
            ),
            (
                |m| m.limits.cpus = Some(CpusValue::Number(0.0)),
                "limits.cpus: `0` is not a CPU count: use a positive decimal number such as 0.5 or 2",
            ),
            (
                |m| m.limits.cpus = Some(CpusValue::Text("2000".into())),
                "limits.cpus: `2000` is not a CPU count: use a positive decimal number such as 0.5 or 2",
            ),
            (
                |m| m.limits.cpus = Some(CpusValue::Text("0.0001".into())),
                "limits.cpus: `0.0001` is not a CPU count: use a positive decimal number such as 0.5 or 2",
            ),
            (
                |m| m.limits.timeout = Some("30".into()),
                "limits.timeout: `30` is not a duration: use a number with a unit ms, s, m or h (e.g. 30s)",
            ),
            (
                |m| m.limits.timeout = Some("0s".into()),
                "limits.timeout: must be longer than zero",
            ),
            (
                |m| m.limits.timeout = Some("99999999999999999h".into()),
                "limits.timeout: `99999999999999999h` is too large",
            ),
            (
                |m| {
                    m.rlimits.insert("stack2".into(), RlimitSpec::Both(1));
                },
                "rlimits.stack2: unknown rlimit; known: core, nofile, nproc, fsize, stack, as, cpu, memlock",
            ),
            (
                |m| {
                    m.rlimits
                        .insert("nofile".into(), RlimitSpec::Split { soft: 9, hard: 8 });
                },
                "rlimits.nofile: soft limit 9 is above hard limit 8",
            ),
            (
                |m| m.accept_degradations = vec!["seccomp".into()],
                "accept_degradations: `seccomp` is not a degradation; known: landlock, landlock-net, landlock-scope, idmap",
            ),
        ];
        let mut wrong = Vec::new();
        for (edit, expected) in cases {
            let mut m = manifest("version = 1\ncommand = [\"true\"]");
            m.base_dir = PathBuf::from("/srv/m");
            compile_request(&m, "job").expect("the fixture compiles");
            edit(&mut m);
            match compile_request(&m, "job") {
                Ok(_) => wrong.push(format!("accepted, expected {expected}")),
                Err(e) if e.to_string() != *expected => wrong.push(format!(
                    "expected {expected:?}\n  got      {:?}",
                    e.to_string()
                )),
                Err(_) => {}
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn a_refusal_is_the_field_and_the_reason() {
        let err = compile_request(
            &manifest("version = 1\nnet = \"wifi\"\ncommand = [\"x\"]"),
            "job",
        )
        .unwrap_err();
        assert_eq!(
            err,
            CompileError {
                field: "net".into(),
                reason: "`wifi` is not one of none, loopback, egress, host".into(),
            }
        );
    }

    #[test]
    fn rootfs_sources_parse_and_a_dir_root_needs_its_scope() {
        assert!(field_of("version = 1\ncommand = [\"x\"]\nrootfs = \"dir:/\"") == "rootfs");
        assert!(field_of("version = 1\ncommand = [\"x\"]\nrootfs = \"vm:x\"") == "rootfs");
        let plan = compile_request(
            &manifest("version = 1\ncommand = [\"x\"]\nrootfs = \"image:alpine:3\""),
            "job",
        )
        .unwrap();
        assert!(
            matches!(plan.rootfs, RootfsSource::Image { ref reference, .. } if reference == "alpine:3")
        );
        let image = Scope::parse("rootfs:image:alpine:3").unwrap();
        assert!(requested_scopes(&plan).contains(&image));
        let err = authorise(
            plan.clone(),
            &grant(&["rootfs:image:alpine:4"]),
            capability(),
        );
        assert_eq!(err.unwrap_err(), AuthoriseError::Missing(vec![image]));
        assert!(authorise(plan, &grant(&["rootfs:image:alpine:3"]), capability()).is_ok());
        let text = "version = 1\ncommand = [\"x\"]\nrootfs = \"dir:/srv/root\"";
        let plan = compile_request(&manifest(text), "job").unwrap();
        assert!(requested_scopes(&plan).contains(&Scope::Fs(FsAccess::Exec, "/srv/root".into())));
    }

    #[test]
    fn host_paths_are_names_nothing_is_looked_up_or_created() {
        // A symlink is not resolved here (the supervisor refuses it when it opens the
        // path), a missing path is not reported (a refusal must not tell whether a host
        // path exists), and keep_changes is not created before the run is authorised.
        let dir = tempdir("names");
        let real = dir.join("real");
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, dir.join("link")).unwrap();
        let keep = dir.join("keep");
        let text = format!(
            "version = 1\ncommand = [\"x\"]\nread = [\"{0}/link\", \"{0}/missing\"]\nrootfs = \"dir:{0}/real\"\nkeep_changes = \"{0}/keep\"",
            dir.display()
        );
        let plan = compile_request(&manifest(&text), "job").unwrap();
        assert_eq!(plan.mounts[0].host, dir.join("link"));
        assert_eq!(plan.mounts[1].host, dir.join("missing"));
        assert_eq!(plan.keep_changes, Some(keep.clone()));
        assert!(
            !keep.exists(),
            "keep_changes was created before authorisation"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_runner_is_requested_as_a_scope() {
        let plan = compile_request(&manifest("version = 1\ncommand = [\"x\"]"), "job").unwrap();
        assert_eq!(plan.runner, RunnerChoice::Native);
        let text = "version = 1\ncommand = [\"x\"]\nrunner = \"oci:/usr/sbin/runc\"";
        let plan = compile_request(&manifest(text), "job").unwrap();
        let runc = Scope::parse("runner:oci:/usr/sbin/runc").unwrap();
        assert!(requested_scopes(&plan).contains(&runc));
        let err = authorise(plan.clone(), &grant(&["fs.read:/x"]), capability()).unwrap_err();
        assert_eq!(err, AuthoriseError::Missing(vec![runc.clone()]));
        assert!(authorise(plan, &grant(&["runner:oci:/usr/sbin/runc"]), capability()).is_ok());
    }

    #[test]
    fn env_overrides_defaults_and_rlimits_replace_defaults() {
        let plan = compile_request(
            &manifest(
                "version = 1\ncommand = [\"x\"]\n[env]\nPATH = \"/bin\"\n[rlimits]\nnofile = 64\n",
            ),
            "job",
        )
        .unwrap();
        assert_eq!(plan.env.iter().filter(|(k, _)| k == "PATH").count(), 1);
        assert!(plan.env.contains(&("PATH".into(), "/bin".into())));
        assert!(plan.rlimits.contains(&Rlimit {
            kind: RlimitKind::Nofile,
            soft: 64,
            hard: 64
        }));
    }

    fn grant(list: &[&str]) -> Grant {
        Grant {
            scopes: list.iter().map(|s| Scope::parse(s).unwrap()).collect(),
            subject: crate::token::Subject::Name("t".into()),
            chain_ids: vec![[0; 16]],
            root_issuer: [0; 32],
            expires: 0,
        }
    }

    fn capability() -> Authorisation {
        Authorisation::Capability {
            subject: "t".into(),
            root_issuer: "k".into(),
            chain: vec![],
        }
    }

    #[test]
    fn a_request_beyond_the_grant_lists_every_missing_scope() {
        let dir = tempdir("missing").canonicalize().unwrap();
        let text = format!(
            "version = 1\ncommand = [\"x\"]\nworkspace = \"{}\"\nnet = \"host\"\n[limits]\nmemory = \"1GiB\"\n",
            dir.display()
        );
        let request = compile_request(&manifest(&text), "job").unwrap();
        let err =
            authorise(request.clone(), &grant(&["res.mem:512MiB"]), capability()).unwrap_err();
        let AuthoriseError::Missing(missing) = &err else {
            panic!("{err}")
        };
        let texts: Vec<String> = missing.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            texts,
            [
                format!("fs.write:{}", dir.display()),
                "net:host".into(),
                "res.mem:1GiB".into()
            ]
        );
        assert!(err.to_string().contains("these scopes"));
        let ok = authorise(
            request,
            &grant(&[
                &format!("fs.write:{}", dir.display()),
                "net:host",
                "res.mem:2GiB",
            ]),
            capability(),
        );
        assert!(ok.is_ok());
    }

    #[test]
    fn grant_ceilings_bound_what_the_request_leaves_open() {
        let request = compile_request(
            &manifest("version = 1\ncommand = [\"x\"]\n[limits]\npids = 10\n"),
            "job",
        )
        .unwrap();
        let plan = authorise(
            request,
            &grant(&[
                "res.mem:256MiB",
                "res.pids:100",
                "res.time:1m",
                "res.cpu:0.5",
            ]),
            capability(),
        )
        .unwrap();
        assert_eq!(plan.limits.memory_bytes, Some(256 << 20));
        assert_eq!(
            plan.limits.pids,
            Some(10),
            "the request's own smaller limit stays"
        );
        assert_eq!(plan.limits.timeout_ms, Some(60_000));
        assert_eq!(plan.limits.millicpus, Some(500));
        assert_eq!(plan.authorisation, capability());
    }

    #[test]
    fn net_none_needs_no_grant_but_degradations_and_syscalls_do() {
        let request = compile_request(
            &manifest("version = 1\ncommand = [\"x\"]\nsyscalls = [\"ptrace\"]\naccept_degradations = [\"landlock-net\"]\n"),
            "job",
        )
        .unwrap();
        assert_eq!(request.seccomp_profile, "covenant-default-v1+ptrace");
        let err = authorise(request.clone(), &grant(&["res.pids:1"]), capability()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the capability does not grant these scopes: sys:ptrace, degrade:landlock-net"
        );
        assert!(authorise(
            request,
            &grant(&["sys:ptrace", "degrade:landlock-net"]),
            capability()
        )
        .is_ok());
    }

    #[test]
    fn connect_ports_need_a_network() {
        assert_eq!(
            field_of("version = 1\ncommand = [\"x\"]\nconnect = [443]"),
            "connect"
        );
        let plan = compile_request(
            &manifest("version = 1\ncommand = [\"x\"]\nnet = \"host\"\nconnect = [443, 80, 443]"),
            "job",
        )
        .unwrap();
        assert_eq!(plan.connect_tcp, vec![80, 443]);
        assert!(requested_scopes(&plan).contains(&Scope::NetConnectTcp(443)));
    }

    #[test]
    fn egress_rules_imply_the_egress_mode_and_are_authorised_by_narrower_grants() {
        let plan = compile_request(
            &manifest(
                "version = 1\ncommand = [\"x\"]\negress = [\"GitHub.com\", \"*.pypi.org:80,443\"]",
            ),
            "job",
        )
        .unwrap();
        assert_eq!(plan.net, NetMode::Egress);
        let rules: Vec<String> = plan.egress.iter().map(|r| r.to_string()).collect();
        assert_eq!(rules, ["github.com:443", "*.pypi.org:80,443"]);
        let ok = authorise(
            plan.clone(),
            &grant(&[
                "net.egress:github.com:443",
                "net.egress:*.pypi.org:80,443,8080",
            ]),
            capability(),
        );
        assert!(ok.is_ok(), "{ok:?}");
        let wider = authorise(
            plan.clone(),
            &grant(&["net.egress:github.com:443", "net.egress:files.pypi.org:443"]),
            capability(),
        )
        .unwrap_err();
        assert!(
            wider.to_string().contains("net.egress:*.pypi.org:80,443"),
            "{wider}"
        );
        assert!(authorise(plan, &grant(&["net:host"]), capability()).is_ok());
    }

    #[test]
    fn bad_egress_requests_are_refused_naming_the_field() {
        for text in [
            "egress = [\"*\"]",
            "egress = [\"10.0.0.1\"]",
            "egress = [\"a..com\"]",
            "egress = [\"a.com:0\"]",
            "net = \"egress\"",
            "net = \"host\"\negress = [\"a.com\"]",
        ] {
            assert_eq!(
                field_of(&format!("version = 1\ncommand = [\"x\"]\n{text}")),
                "egress",
                "{text}"
            );
        }
    }

    fn tempdir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("covenant-policy-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
