//! The supervisor: where plans become runs. This crate owns the job lifecycle (bundle
//! directory, runner, cleanup, report); later it also owns the store and the daemon.

pub mod abandoned;
pub mod authority;
pub mod bundle_signature;
pub mod daemon;
pub mod gitsafe;
pub mod home;
pub mod host_paths;
pub mod images;
pub mod keys;
pub mod run;
pub mod store;

pub use run::{run_bundle, run_request, RunError, RunReport, RunSettings};
