//! Fixtures shared by Covenant's tests, so that each exists once: the rule for tests that
//! need the real kernel ([`live`]), scratch homes the sandbox's ids can reach
//! ([`scratch`]), git as a repository's owner runs it ([`git`]), and a key that signs
//! capabilities a home trusts ([`issuer`]), and a test internet on loopback for the egress
//! tests ([`internet`]).
//!
//! It is a dev-dependency only and never published. It must not depend on a Covenant crate
//! that dev-depends on it (supervisor, images, runners): their unit tests would then see a
//! second copy of that crate's types.

pub mod git;
pub mod internet;
pub mod issuer;
pub mod live;
pub mod scratch;

pub use issuer::Issuer;
pub use live::{cannot_run, have, Need};
