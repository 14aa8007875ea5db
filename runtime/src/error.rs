//! The error every command returns: one variant per module error, each naming the
//! field, file or step at fault.

use std::path::PathBuf;

/// Every way a command can fail; the message names the field, file or step at fault.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    #[error(transparent)]
    Hook(#[from] crate::hooks::HookError),
    #[error(transparent)]
    Cgroup(#[from] crate::cgroups::CgroupError),
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
