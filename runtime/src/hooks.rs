//! The config's hooks: each runs on the host with the container's state on its stdin,
//! bounded by its timeout. A hook is a host program run as the runtime's user, so its
//! path is checked at `create`: absolute, an executable file, and not inside the bundle
//! (whose contents, an image's root filesystem among them, are not the host's to run).

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("config.json `hooks.{kind}[{index}].path` {path}: {reason}")]
    Refused {
        kind: &'static str,
        index: usize,
        path: PathBuf,
        reason: String,
    },
    #[error("hook `hooks.{kind}[{index}]` ({path}) failed: {reason}")]
    Failed {
        kind: &'static str,
        index: usize,
        path: PathBuf,
        reason: String,
    },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Hook {
    pub path: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub timeout: Option<i64>,
}

/// Every hook of a config, by kind.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HookSet {
    pub prestart: Vec<Hook>,
    pub create_runtime: Vec<Hook>,
    pub create_container: Vec<Hook>,
    pub start_container: Vec<Hook>,
    pub poststart: Vec<Hook>,
    pub poststop: Vec<Hook>,
}

fn convert(hooks: &Option<Vec<oci_spec::runtime::Hook>>) -> Vec<Hook> {
    hooks
        .iter()
        .flatten()
        .map(|h| Hook {
            path: h.path().clone(),
            args: h.args().clone().unwrap_or_default(),
            env: h.env().clone().unwrap_or_default(),
            timeout: h.timeout(),
        })
        .collect()
}

impl HookSet {
    #[allow(deprecated)]
    pub fn from_spec(spec: &oci_spec::runtime::Spec) -> Self {
        let Some(h) = spec.hooks() else {
            return Self::default();
        };
        Self {
            prestart: convert(h.prestart()),
            create_runtime: convert(h.create_runtime()),
            create_container: convert(h.create_container()),
            start_container: convert(h.start_container()),
            poststart: convert(h.poststart()),
            poststop: convert(h.poststop()),
        }
    }

    fn kinds(&self) -> [(&'static str, &Vec<Hook>); 6] {
        [
            ("prestart", &self.prestart),
            ("createRuntime", &self.create_runtime),
            ("createContainer", &self.create_container),
            ("startContainer", &self.start_container),
            ("poststart", &self.poststart),
            ("poststop", &self.poststop),
        ]
    }

    /// Refuses a host hook that is not an absolute path to an executable file outside
    /// `bundle` (inside it only when the node allows `allow_bundle_hooks`).
    /// `startContainer` hooks run inside the container and are checked there.
    pub fn check(&self, bundle: &Path, allow_bundle: bool) -> Result<(), HookError> {
        let bundle = std::fs::canonicalize(bundle).unwrap_or_else(|_| bundle.to_path_buf());
        for (kind, hooks) in self.kinds() {
            for (index, hook) in hooks.iter().enumerate() {
                let refuse = |reason: String| HookError::Refused {
                    kind,
                    index,
                    path: hook.path.clone(),
                    reason,
                };
                if !hook.path.is_absolute() {
                    return Err(refuse("must be an absolute path".into()));
                }
                if hook.timeout.is_some_and(|t| t <= 0) {
                    return Err(HookError::Refused {
                        kind,
                        index,
                        path: hook.path.clone(),
                        reason: "`timeout` must be positive".into(),
                    });
                }
                if kind == "startContainer" {
                    continue;
                }
                let real = std::fs::canonicalize(&hook.path)
                    .map_err(|e| refuse(format!("cannot be resolved: {e}")))?;
                if real.starts_with(&bundle) && !allow_bundle {
                    return Err(refuse(format!(
                        "resolves to {} inside the bundle; a host hook must not run the bundle's own files (the node may set `allow_bundle_hooks`)",
                        real.display()
                    )));
                }
                let meta = std::fs::metadata(&real).map_err(|e| refuse(e.to_string()))?;
                use std::os::unix::fs::PermissionsExt;
                if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
                    return Err(refuse("is not an executable file".into()));
                }
            }
        }
        Ok(())
    }
}

/// The (device, inode) each hook's path names now, symlinks followed (`None`: it names
/// nothing).
pub fn identities(hooks: &[Hook]) -> Vec<Option<(u64, u64)>> {
    use std::os::unix::fs::MetadataExt;
    hooks
        .iter()
        .map(|h| std::fs::metadata(&h.path).ok().map(|m| (m.dev(), m.ino())))
        .collect()
}

/// Refuses a hook whose path no longer names the file it named when `checked` was taken
/// (the createContainer hooks run in the container's mount namespace, where a mount
/// could cover the path the runtime checked).
pub fn check_same(
    kind: &'static str,
    hooks: &[Hook],
    checked: &[Option<(u64, u64)>],
) -> Result<(), HookError> {
    for (index, (hook, now)) in hooks.iter().zip(identities(hooks)).enumerate() {
        if now.is_none() || checked.get(index).copied().flatten() != now {
            return Err(HookError::Refused {
                kind,
                index,
                path: hook.path.clone(),
                reason: "names another file in the container's mount namespace than the one checked at create".into(),
            });
        }
    }
    Ok(())
}

/// Runs `hooks` of `kind` in order with `state` on stdin. The first failure stops them.
pub fn run(kind: &'static str, hooks: &[Hook], state: &serde_json::Value) -> Result<(), HookError> {
    let input = serde_json::to_vec(state).unwrap_or_default();
    for (index, hook) in hooks.iter().enumerate() {
        run_one(hook, &input).map_err(|reason| HookError::Failed {
            kind,
            index,
            path: hook.path.clone(),
            reason,
        })?;
    }
    Ok(())
}

/// Runs every hook of `kind` (`poststart`, `poststop`): a failure is a warning on
/// stderr and the rest still run, as the runtime spec requires.
pub fn run_warning(kind: &'static str, hooks: &[Hook], state: &serde_json::Value) {
    let input = serde_json::to_vec(state).unwrap_or_default();
    for (index, hook) in hooks.iter().enumerate() {
        if let Err(reason) = run_one(hook, &input) {
            let e = HookError::Failed {
                kind,
                index,
                path: hook.path.clone(),
                reason,
            };
            eprintln!("warning: {e}");
        }
    }
}

fn run_one(hook: &Hook, input: &[u8]) -> Result<(), String> {
    let mut cmd = Command::new(&hook.path);
    if let Some((first, rest)) = hook.args.split_first() {
        cmd.arg0(first).args(rest);
    }
    cmd.env_clear();
    for e in &hook.env {
        if let Some((k, v)) = e.split_once('=') {
            cmd.env(k, v);
        }
    }
    cmd.stdin(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| e.to_string())?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its stdin is not an error.
        let _ = stdin.write_all(input);
    }
    let deadline = hook
        .timeout
        .map(|t| Instant::now() + Duration::from_secs(t as u64));
    loop {
        match child.try_wait().map_err(|e| e.to_string())? {
            Some(status) if status.success() => return Ok(()),
            Some(status) => return Err(format!("exited with {status}")),
            None => {}
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("timed out after {}s", hook.timeout.unwrap_or(0)));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(path: &Path) -> HookSet {
        HookSet {
            prestart: vec![Hook {
                path: path.to_path_buf(),
                ..Hook::default()
            }],
            ..HookSet::default()
        }
    }

    #[test]
    fn a_hook_that_is_a_symlink_into_the_bundle_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("bundle");
        std::fs::create_dir_all(bundle.join("rootfs/bin")).unwrap();
        std::fs::write(bundle.join("rootfs/bin/evil"), "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            bundle.join("rootfs/bin/evil"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let link = dir.path().join("hook");
        std::os::unix::fs::symlink(bundle.join("rootfs/bin/evil"), &link).unwrap();
        let err = set(&link).check(&bundle, false).unwrap_err().to_string();
        assert!(
            err.contains("hooks.prestart[0].path") && err.contains("inside the bundle"),
            "{err}"
        );
        assert!(set(Path::new("/bin/true")).check(&bundle, false).is_ok());
        assert!(set(&link).check(&bundle, true).is_ok());
        let err = set(Path::new("bin/true"))
            .check(&bundle, false)
            .unwrap_err();
        assert!(err.to_string().contains("absolute"), "{err}");
    }

    #[test]
    fn a_hook_that_outlives_its_timeout_fails() {
        let hook = Hook {
            path: "/bin/sleep".into(),
            args: vec!["sleep".into(), "5".into()],
            env: vec![],
            timeout: Some(1),
        };
        let started = Instant::now();
        let err = run("prestart", &[hook], &serde_json::json!({})).unwrap_err();
        assert!(err.to_string().contains("timed out"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}
