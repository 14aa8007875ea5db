//! Scratch directories for a test's `$COVENANT_HOME` and workspaces.

use std::os::unix::fs::PermissionsExt;

/// A fresh temporary directory that other users may pass through but not list (0711):
/// the sandbox's subordinate ids must reach a workspace inside it, as they reach one under
/// a real home.
pub fn traversable_dir(prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    dir
}
