//! Live tests: the real `covenant-ctl` binary, the real kernel. Each hostile test has the
//! sandboxed program try to break one restriction and asserts that it could not.
//!
//! They need root (user namespaces with a subordinate id range, cgroups, idmapped
//! mounts). Without it they skip with a printed reason, unless `COVENANT_REQUIRE_LIVE=1`,
//! in which case a test that cannot run fails.
//!
//! One module per scope family or mechanism; what they all stand on is in `scene`.

mod scene;

mod bundles;
mod cli;
mod fs;
mod git_safe;
mod gvisor;
mod images;
mod lifecycle;
mod limits;
mod net;
mod privileges;
mod pty;
mod runners;
mod scopes;
mod seccomp;
mod vm;
