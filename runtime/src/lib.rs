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
pub mod device_filter;
pub mod error;
pub mod exec;
pub mod hooks;
pub mod init;
pub mod lifecycle;
pub mod mounts;
pub mod policy;
mod privileges;
pub mod state;
pub mod step;

pub use error::RuntimeError;
