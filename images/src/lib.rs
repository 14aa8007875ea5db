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

/// What the unpack and store tests share.
#[cfg(test)]
mod test_fixtures {
    use crate::unpack::IdShift;
    use covenant_test_support::Need;

    /// Unpacking as the image's owners needs root: chown, whiteout devices, trusted xattrs.
    pub const AS_OWNERS: &[Need] = &[Need::Root];

    /// Image ids kept as they are: the tests unpack as the host's own root.
    pub const IDS: IdShift = IdShift {
        uid: 0,
        gid: 0,
        size: 65_536,
    };
}
