//! Covenant's pure policy layer: the manifest schema, the units it speaks in, the default
//! seccomp profile as data, and the compiler from an authorised request to the
//! [`SandboxPlan`] that every later step reads.
//!
//! Nothing here makes a syscall beyond reading files the caller names (the manifest and
//! keys). Host paths are compiled and authorised as names; the supervisor opens them
//! afterwards. Everything security-relevant that can be decided without the kernel is
//! decided here and tested here.

#![forbid(unsafe_code)]

pub mod annotations;
pub mod compile;
pub mod egress;
pub mod manifest;
pub mod plan;
pub mod scope;
pub mod seccomp_profile;
pub mod token;
pub mod units;
pub mod verify;

pub use compile::{
    authorise, compile_plan, compile_request, requested_scopes, AuthoriseError, CompileError,
};
pub use egress::{EgressRule, EgressTarget};
pub use manifest::{Manifest, ManifestError};
pub use plan::{
    Authorisation, Degradation, Limits, MountAccess, NetMode, ObjectId, PinnedPath, PlanMount,
    Rlimit, RlimitKind, RootfsSource, RunnerChoice, SandboxPlan, UserIds,
};
pub use scope::Scope;
pub use token::{Capability, Subject};
pub use verify::{verify_capability, Grant, VerifyContext, VerifyError};
