//! `compile_plan`: from an authorised manifest to the [`SandboxPlan`]. Every refusal names
//! the manifest field (or the flag that set it) and says what would be accepted.

use crate::manifest::{Manifest, RlimitSpec};
use crate::plan::{
    Authorisation, Degradation, Limits, MountAccess, NetMode, PlanMount, Rlimit, RlimitKind,
    RootfsSource, SandboxPlan, UserIds, PLAN_VERSION,
};
use crate::seccomp_profile::DEFAULT_PROFILE_NAME;
use crate::units::{parse_cpus, parse_duration, parse_size};
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

/// Compiles an operator-authorised manifest into a plan for job `job_id`.
pub fn compile_plan(manifest: &Manifest, job_id: &str) -> Result<SandboxPlan, CompileError> {
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
    Ok(SandboxPlan {
        version: PLAN_VERSION,
        job_id: job_id.to_string(),
        authorisation: Authorisation::Operator,
        argv,
        env: compile_env(manifest, home)?,
        cwd,
        user: compile_user(manifest.user.as_deref())?,
        hostname: compile_hostname(manifest.hostname.as_deref())?,
        rootfs: compile_rootfs(manifest.rootfs.as_deref())?,
        mounts,
        net: match manifest.net.as_deref() {
            None => NetMode::None,
            Some(s) => NetMode::parse(s).ok_or_else(|| {
                refuse("net", format!("`{s}` is not one of none, loopback, host"))
            })?,
        },
        limits: compile_limits(manifest)?,
        rlimits: compile_rlimits(manifest)?,
        seccomp_profile: DEFAULT_PROFILE_NAME.to_string(),
        accepted_degradations: compile_degradations(&manifest.accept_degradations)?,
    })
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

/// Resolves a host path the request names: relative to the manifest's folder, symlinks
/// resolved, so the plan names the object that will actually be mounted.
fn host_path(field: &str, base: &Path, path: &Path) -> Result<PathBuf, CompileError> {
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    };
    let resolved = joined
        .canonicalize()
        .map_err(|e| refuse(field, format!("`{}`: {e}", joined.display())))?;
    if resolved == Path::new("/") {
        return Err(refuse(
            field,
            "the host's root directory cannot be mounted into a sandbox",
        ));
    }
    Ok(resolved)
}

fn compile_mounts(manifest: &Manifest) -> Result<Vec<PlanMount>, CompileError> {
    let base = &manifest.base_dir;
    let mut mounts: Vec<PlanMount> = Vec::new();
    if let Some(ws) = &manifest.workspace {
        let host = host_path("workspace", base, ws)?;
        if !host.is_dir() {
            return Err(refuse(
                "workspace",
                format!("`{}` is not a directory", host.display()),
            ));
        }
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
        mounts.push(PlanMount {
            host,
            target,
            access,
        });
    }
    for (i, m) in mounts.iter().enumerate() {
        if mounts[..i].iter().any(|o| o.target == m.target) {
            return Err(refuse(
                "write",
                format!("`{}` is mounted twice", m.target.display()),
            ));
        }
    }
    Ok(mounts)
}

fn compile_env(manifest: &Manifest, home: &str) -> Result<Vec<(String, String)>, CompileError> {
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), DEFAULT_PATH.into()),
        ("HOME".into(), home.into()),
    ];
    for (key, value) in &manifest.env {
        let field = format!("env.{key}");
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

fn compile_rootfs(rootfs: Option<&str>) -> Result<RootfsSource, CompileError> {
    match rootfs.unwrap_or("host") {
        "host" => Ok(RootfsSource::Host),
        other => Err(refuse(
            "rootfs",
            format!("`{other}` is not a rootfs source this build can prepare; use `host`"),
        )),
    }
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
        compile_plan(&manifest(text), "job").unwrap_err().field
    }

    #[test]
    fn a_minimal_manifest_compiles_with_safe_defaults() {
        let plan = compile_plan(&manifest("version = 1\ncommand = [\"true\"]"), "job").unwrap();
        assert_eq!(plan.net, NetMode::None);
        assert_eq!(plan.user, UserIds { uid: 0, gid: 0 });
        assert_eq!(plan.cwd, PathBuf::from("/"));
        assert!(plan.mounts.is_empty());
        assert!(plan.rlimits.contains(&Rlimit {
            kind: RlimitKind::Core,
            soft: 0,
            hard: 0
        }));
        assert_eq!(plan.seccomp_profile, DEFAULT_PROFILE_NAME);
        assert!(plan.digest().starts_with("sha256:"));
    }

    #[test]
    fn workspace_is_canonical_and_becomes_the_cwd() {
        let dir = std::env::temp_dir().canonicalize().unwrap();
        let text = format!(
            "version = 1\ncommand = [\"true\"]\nworkspace = \"{}/./\"",
            dir.display()
        );
        let plan = compile_plan(&manifest(&text), "job").unwrap();
        assert_eq!(plan.mounts[0].host, dir);
        assert_eq!(plan.mounts[0].target, PathBuf::from(WORKSPACE_TARGET));
        assert_eq!(plan.cwd, PathBuf::from(WORKSPACE_TARGET));
    }

    #[test]
    fn each_bad_field_is_named() {
        assert_eq!(field_of("version = 1"), "command");
        assert_eq!(
            field_of("version = 1\ncommand = [\"x\"]\nnet = \"wifi\""),
            "net"
        );
        assert_eq!(
            field_of("version = 1\ncommand = [\"x\"]\nuser = \"70000\""),
            "user"
        );
        assert_eq!(
            field_of("version = 1\ncommand = [\"x\"]\nuser = \"root\""),
            "user"
        );
        assert_eq!(
            field_of("version = 1\ncommand = [\"x\"]\ncwd = \"rel\""),
            "cwd"
        );
        assert_eq!(
            field_of("version = 1\ncommand = [\"x\"]\ncwd = \"/a/../b\""),
            "cwd"
        );
        assert_eq!(
            field_of("version = 1\ncommand = [\"x\"]\nrootfs = \"image:alpine\""),
            "rootfs"
        );
        assert_eq!(
            field_of("version = 1\ncommand = [\"x\"]\nworkspace = \"/nonexistent/x\""),
            "workspace"
        );
        assert_eq!(
            field_of("version = 1\ncommand = [\"x\"]\nread = [\"/\"]"),
            "read"
        );
        assert_eq!(
            field_of("version = 1\ncommand = [\"x\"]\nwrite = [\"/proc/self\"]"),
            "write"
        );
        assert_eq!(
            field_of("version = 1\ncommand = [\"x\"]\n[limits]\nmemory = \"lots\""),
            "limits.memory"
        );
        assert_eq!(
            field_of("version = 1\ncommand = [\"x\"]\n[limits]\nmemory = \"1MiB\""),
            "limits.memory"
        );
        assert_eq!(
            field_of("version = 1\ncommand = [\"x\"]\n[limits]\npids = 1"),
            "limits.pids"
        );
        assert_eq!(
            field_of("version = 1\ncommand = [\"x\"]\n[limits]\ncpus = 0"),
            "limits.cpus"
        );
        assert_eq!(
            field_of("version = 1\ncommand = [\"x\"]\n[limits]\ntimeout = \"0s\""),
            "limits.timeout"
        );
        assert_eq!(
            field_of("version = 1\ncommand = [\"x\"]\n[rlimits]\nstack2 = 1"),
            "rlimits.stack2"
        );
        assert_eq!(
            field_of("version = 1\ncommand = [\"x\"]\n[rlimits]\nnofile = { soft = 9, hard = 8 }"),
            "rlimits.nofile"
        );
        assert_eq!(
            field_of("version = 1\ncommand = [\"x\"]\n[env]\n\"A=B\" = \"c\""),
            "env.A=B"
        );
        assert_eq!(
            field_of("version = 1\ncommand = [\"x\"]\nhostname = \"a b\""),
            "hostname"
        );
        assert_eq!(
            field_of("version = 1\ncommand = [\"x\"]\naccept_degradations = [\"seccomp\"]"),
            "accept_degradations"
        );
    }

    #[test]
    fn a_symlinked_host_path_resolves_to_its_target() {
        let dir = tempdir();
        let real = dir.join("real");
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, dir.join("link")).unwrap();
        let text = format!(
            "version = 1\ncommand = [\"x\"]\nread = [\"{}/link\"]",
            dir.display()
        );
        let plan = compile_plan(&manifest(&text), "job").unwrap();
        assert_eq!(plan.mounts[0].host, real.canonicalize().unwrap());
        assert_eq!(plan.mounts[0].target, plan.mounts[0].host);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn env_overrides_defaults_and_rlimits_replace_defaults() {
        let plan = compile_plan(
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

    fn tempdir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("covenant-policy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
