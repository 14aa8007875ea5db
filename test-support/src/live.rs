//! The skip rule for live tests. A test that needs something the host lacks (root, user
//! namespaces, a runtime, a package) says what is missing and passes, so that `cargo test`
//! works on any machine; with `COVENANT_REQUIRE_LIVE=1` it fails instead, so that CI can
//! never turn green by skipping. Every test that can skip goes through [`cannot_run`]:
//! this is the one place that reads the variable.

use std::path::{Path, PathBuf};

/// The variable that turns a skip into a failure.
pub const REQUIRE_LIVE: &str = "COVENANT_REQUIRE_LIVE";

/// Something a live test needs from the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Effective uid 0: user namespaces with a subordinate id range, cgroups, mounts.
    Root,
    /// `/proc/self/ns/user` exists: the kernel has user namespaces.
    UserNamespaces,
    /// A file the host may lack, and the Debian package that installs it.
    File {
        path: &'static str,
        package: &'static str,
    },
}

/// What every test that starts a sandbox needs.
pub const SANDBOX: &[Need] = &[Need::Root, Need::UserNamespaces];

impl Need {
    /// Why this need is not met here, or `None` when it is.
    pub fn missing(&self) -> Option<String> {
        match *self {
            Need::Root => {
                (!nix::unistd::geteuid().is_root()).then(|| "not running as root".to_string())
            }
            Need::UserNamespaces => (!Path::new("/proc/self/ns/user").exists())
                .then(|| "no user namespaces".to_string()),
            Need::File { path, package } => (!Path::new(path).exists())
                .then(|| format!("{path} is missing (install {package})")),
        }
    }
}

/// Whether the host has every one of `needs`. The first one missing goes to
/// [`cannot_run`]: the test fails under `COVENANT_REQUIRE_LIVE=1`, and otherwise says why
/// and gets `false`, to return early.
pub fn have(needs: &[Need]) -> bool {
    match needs.iter().find_map(Need::missing) {
        None => true,
        Some(reason) => {
            cannot_run(&reason);
            false
        }
    }
}

/// A test that cannot run here: panics when `COVENANT_REQUIRE_LIVE=1`, and prints why
/// otherwise, for the caller to skip what needs it.
pub fn cannot_run(reason: &str) {
    if std::env::var(REQUIRE_LIVE).as_deref() == Ok("1") {
        panic!("live test cannot run: {reason} ({REQUIRE_LIVE}=1)");
    }
    eprintln!("skipping live test: {reason}");
}

/// `name` found on `PATH`; when it is not there, [`cannot_run`] says so and this gives
/// `None`.
pub fn program(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|c| c.is_file())
    });
    if found.is_none() {
        cannot_run(&format!("{name} is not installed"));
    }
    found
}

/// Returns from the calling test (after [`have`] said why) unless the host has every
/// need in the slice given: `skip_unless!(live::SANDBOX);`.
#[macro_export]
macro_rules! skip_unless {
    ($needs:expr) => {
        if !$crate::live::have($needs) {
            return;
        }
    };
}

/// Removes the run cgroups that supervisors of `home` killed outright left behind, as a
/// later run of that home would once they are old enough: every `covenant/*` directory,
/// in each hierarchy under `/sys/fs/cgroup`, tagged with `home` (`trusted.covenant.owner`,
/// the canonical home), given up to 5 s to empty (a sandbox dies with its supervisor).
/// Chosen by the tag, never by a killed supervisor's pid, which another test's supervisor
/// may have by now. Returns the directories that stayed.
pub fn remove_run_cgroups_of(home: &Path) -> Vec<PathBuf> {
    let Ok(home) = std::fs::canonicalize(home) else {
        return Vec::new();
    };
    let tag = home.as_os_str().as_encoded_bytes();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut stayed = Vec::new();
    for dir in run_cgroups() {
        let owner = xattr::get(&dir, "trusted.covenant.owner").ok().flatten();
        if owner.as_deref() != Some(tag) {
            continue;
        }
        while std::fs::remove_dir(&dir).is_err()
            && dir.exists()
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        if dir.exists() {
            stayed.push(dir);
        }
    }
    stayed
}

/// Every run cgroup on the host: the directories under `covenant/` in each hierarchy of
/// `/sys/fs/cgroup` (the unified one included).
pub fn run_cgroups() -> Vec<PathBuf> {
    let hierarchies = std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten();
    let mut found = Vec::new();
    for h in hierarchies.flatten() {
        let entries = std::fs::read_dir(h.path().join("covenant"))
            .into_iter()
            .flatten();
        found.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
    }
    found
}

#[cfg(test)]
mod tests {
    use super::Need;

    #[test]
    fn a_missing_file_names_the_package_that_installs_it() {
        let need = Need::File {
            path: "/nonexistent/covenant-tool",
            package: "covenant-tools",
        };
        assert_eq!(
            need.missing().as_deref(),
            Some("/nonexistent/covenant-tool is missing (install covenant-tools)")
        );
        let present = Need::File {
            path: "/",
            package: "base-files",
        };
        assert_eq!(present.missing(), None);
    }
}
