//! Root filesystems and OCI bundles. A bundle is the contract between the supervisor and
//! every runner: `config.json` (written with `oci-spec`) plus the rootfs skeleton and the
//! few generated files the mounts name. This crate never enters a namespace or mounts
//! anything; it only writes files under the bundle directory it is given.

pub mod bundle;
pub mod host_view;
pub mod layout;
pub mod oci_seccomp;
pub mod store;
pub mod unpack;

pub use bundle::{write_bundle, write_native_bundle, Bundle, BundleError, IdentityMap};

#[cfg(test)]
pub(crate) mod test_support {
    /// Unpacking as the image's owners needs root (chown, mknod for whiteouts, trusted
    /// xattrs). Without it a test says so and passes, unless COVENANT_REQUIRE_LIVE=1.
    pub fn privileged() -> bool {
        // SAFETY: geteuid has no failure mode.
        if unsafe { libc::geteuid() } == 0 {
            return true;
        }
        if std::env::var("COVENANT_REQUIRE_LIVE").as_deref() == Ok("1") {
            panic!("this test needs root (COVENANT_REQUIRE_LIVE=1)");
        }
        eprintln!("skipping: unpacking with image owners needs root");
        false
    }
}
