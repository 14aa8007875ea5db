//! `covenant-runtime`: a runc-compatible OCI runtime over the native runner's kernel
//! work. `create` builds a container and leaves its init waiting at a barrier; `start`
//! releases it; every later command reads the state `create` left under `--root`.
//! Covenant's policy (the node's `runtime.toml`, capability tokens, landlock
//! annotations) is applied on top of any standard bundle.
//!
//! Like the native runner, the runtime is single-threaded whenever it forks or clones.

pub mod audit;
pub mod cgroups;
pub mod config;
pub mod create;
pub mod exec;
pub mod hooks;
pub mod init;
pub mod lifecycle;
pub mod mounts;
pub mod policy;
mod privileges;
pub mod state;

use std::path::PathBuf;

/// Every way a command can fail; the message names the field, file or step at fault.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    State(#[from] state::StateError),
    #[error(transparent)]
    Policy(#[from] policy::PolicyError),
    #[error(transparent)]
    Hook(#[from] hooks::HookError),
    #[error(transparent)]
    Cgroup(#[from] cgroups::CgroupError),
    #[error("container `{id}` is {status}: cannot {action} it")]
    Status {
        id: String,
        action: &'static str,
        status: &'static str,
    },
    #[error("unknown signal `{0}`")]
    Signal(String),
    #[error("{what}: {errno}")]
    Sys {
        what: &'static str,
        errno: nix::errno::Errno,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("container setup failed at step `{step}`: {detail}")]
    Setup { step: String, detail: String },
    #[error("{0}")]
    Usage(String),
    #[error("the node's runtime policy requires audit, and the store refused the event: {0}")]
    Audit(String),
}
