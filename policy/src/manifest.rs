//! The run manifest, schema version 1 (documented in `docs/manifest.md`). A manifest is a
//! request: it says what the agent wants to run and what it asks for. It grants nothing by
//! itself; [`crate::compile_plan`] turns an authorised manifest into a plan.
//!
//! Unknown keys are refused so that a typo (`memroy = ...`) can never silently drop a limit.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The manifest schema this build reads.
pub const MANIFEST_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read manifest {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("manifest {path} is invalid: {message}")]
    Parse { path: PathBuf, message: String },
}

/// A CPU count written either as a TOML number (`1.5`) or a string (`"1.5"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    untagged,
    expecting = "a CPU count, as a number (1.5) or a string (\"1.5\")"
)]
pub enum CpusValue {
    Number(f64),
    Text(String),
}

impl CpusValue {
    pub fn as_text(&self) -> String {
        match self {
            Self::Number(n) => format!("{n}"),
            Self::Text(s) => s.clone(),
        }
    }
}

/// `[limits]`: cgroup limits and the wall-clock timeout.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSpec {
    pub memory: Option<String>,
    pub pids: Option<u64>,
    pub cpus: Option<CpusValue>,
    pub timeout: Option<String>,
}

/// One `[rlimits]` entry: a single number sets soft and hard alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged, expecting = "a number, or { soft = N, hard = N }")]
pub enum RlimitSpec {
    Both(u64),
    Split { soft: u64, hard: u64 },
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Schema version; must be 1.
    pub version: Option<u32>,
    /// The program and its arguments.
    #[serde(default)]
    pub command: Vec<String>,
    /// Host directory mounted read-write at `/workspace` (relative to the manifest's folder).
    pub workspace: Option<PathBuf>,
    /// Extra host paths visible read-only at the same path.
    #[serde(default)]
    pub read: Vec<PathBuf>,
    /// Extra host paths visible read-write at the same path.
    #[serde(default)]
    pub write: Vec<PathBuf>,
    /// Extra host paths visible read-only, with execute, at the same path.
    #[serde(default)]
    pub exec: Vec<PathBuf>,
    /// TCP ports the program may connect to (landlock); needs `net` loopback or host.
    #[serde(default)]
    pub connect: Vec<u16>,
    /// Seccomp groups to open, e.g. `["ptrace"]`.
    #[serde(default)]
    pub syscalls: Vec<String>,
    /// Working directory inside the sandbox.
    pub cwd: Option<PathBuf>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// `host` (the default), `image:NAME[:TAG]` or `dir:PATH`.
    pub rootfs: Option<String>,
    /// For an image or directory root: keep the run's changes to it in this host directory
    /// (the overlay's writable layer) instead of throwing them away.
    pub keep_changes: Option<PathBuf>,
    pub hostname: Option<String>,
    /// `UID` or `UID:GID` inside the sandbox (default `0:0`, never host root).
    pub user: Option<String>,
    /// `none` (default), `loopback`, `egress` or `host`.
    pub net: Option<String>,
    /// Hosts the sandbox may reach through the egress gateway, `PATTERN[:PORTS]`
    /// (`github.com:443`, `*.pypi.org`); implies `net = "egress"`.
    #[serde(default)]
    pub egress: Vec<String>,
    /// `native` (default), `gvisor` or `oci:/ABSOLUTE/PATH`; any but native must be granted
    /// as a `runner:` scope.
    pub runner: Option<String>,
    #[serde(default)]
    pub limits: LimitsSpec,
    #[serde(default)]
    pub rlimits: BTreeMap<String, RlimitSpec>,
    /// Named restrictions the run may go without when the kernel cannot enforce them.
    #[serde(default)]
    pub accept_degradations: Vec<String>,
    /// The folder relative paths are resolved against (the manifest's own folder, or the
    /// current directory for a request made of flags alone). Not part of the file.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

impl Manifest {
    /// Reads and parses a manifest file; relative paths in it resolve against its folder.
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|error| ManifestError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        let mut manifest = Self::parse(&text).map_err(|message| ManifestError::Parse {
            path: path.to_path_buf(),
            message,
        })?;
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        // The manifest's own folder, as the operator named it, resolved once here: the
        // paths the manifest names are then taken from it by name, without symlinks.
        manifest.base_dir = dir.canonicalize().map_err(|error| ManifestError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        Ok(manifest)
    }

    /// Parses manifest text. The error message names the offending key and line.
    pub fn parse(text: &str) -> Result<Self, String> {
        let manifest: Manifest = toml::from_str(text).map_err(|e| e.to_string())?;
        manifest.checked_version()
    }

    /// A manifest sent as JSON (the daemon's API): the same keys and checks as the file;
    /// relative paths resolve against `base_dir`.
    pub fn from_json(value: serde_json::Value, base_dir: PathBuf) -> Result<Self, String> {
        // The error names the path of the key at fault (`limits.memory: invalid type ...`).
        let mut manifest: Manifest = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            if path == "." || path == "?" {
                e.inner().to_string()
            } else {
                format!("{path}: {}", e.inner())
            }
        })?;
        manifest.base_dir = base_dir;
        manifest.checked_version()
    }

    fn checked_version(self) -> Result<Self, String> {
        let manifest = self;
        match manifest.version {
            Some(MANIFEST_VERSION) => Ok(manifest),
            Some(other) => Err(format!(
                "version: manifest version {other} is not supported (this build reads version {MANIFEST_VERSION})"
            )),
            None => Err(format!("version: missing; add `version = {MANIFEST_VERSION}`")),
        }
    }

    /// A request made of command-line flags alone.
    pub fn empty_in(base_dir: PathBuf) -> Self {
        Self {
            version: Some(MANIFEST_VERSION),
            base_dir,
            ..Self::default()
        }
    }

    /// Applies `flags` on top of `self`: every value the flags set replaces the manifest's;
    /// list values (`read`, `write`, `accept_degradations`) and `env` are added to. Paths
    /// given as flags resolve against the flags' own base folder, so each is made absolute
    /// here before the two are merged.
    pub fn overlay(mut self, flags: Manifest) -> Manifest {
        let absolute = |p: PathBuf, base: &Path| if p.is_absolute() { p } else { base.join(p) };
        let fb = flags.base_dir.clone();
        let mb = self.base_dir.clone();
        self.workspace = self.workspace.map(|p| absolute(p, &mb));
        self.read = self.read.into_iter().map(|p| absolute(p, &mb)).collect();
        self.write = self.write.into_iter().map(|p| absolute(p, &mb)).collect();
        self.exec = self.exec.into_iter().map(|p| absolute(p, &mb)).collect();
        if !flags.command.is_empty() {
            self.command = flags.command;
        }
        if let Some(ws) = flags.workspace {
            self.workspace = Some(absolute(ws, &fb));
        }
        self.read
            .extend(flags.read.into_iter().map(|p| absolute(p, &fb)));
        self.write
            .extend(flags.write.into_iter().map(|p| absolute(p, &fb)));
        self.exec
            .extend(flags.exec.into_iter().map(|p| absolute(p, &fb)));
        for port in flags.connect {
            if !self.connect.contains(&port) {
                self.connect.push(port);
            }
        }
        for host in flags.egress {
            if !self.egress.contains(&host) {
                self.egress.push(host);
            }
        }
        for group in flags.syscalls {
            if !self.syscalls.contains(&group) {
                self.syscalls.push(group);
            }
        }
        self.cwd = flags.cwd.or(self.cwd);
        self.env.extend(flags.env);
        self.rootfs = flags.rootfs.or(self.rootfs);
        self.keep_changes = flags
            .keep_changes
            .map(|p| absolute(p, &fb))
            .or(self.keep_changes.map(|p| absolute(p, &mb)));
        self.hostname = flags.hostname.or(self.hostname);
        self.user = flags.user.or(self.user);
        self.net = flags.net.or(self.net);
        self.runner = flags.runner.or(self.runner);
        self.limits.memory = flags.limits.memory.or(self.limits.memory);
        self.limits.pids = flags.limits.pids.or(self.limits.pids);
        self.limits.cpus = flags.limits.cpus.or(self.limits.cpus);
        self.limits.timeout = flags.limits.timeout.or(self.limits.timeout);
        self.rlimits.extend(flags.rlimits);
        for d in flags.accept_degradations {
            if !self.accept_degradations.contains(&d) {
                self.accept_degradations.push(d);
            }
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each refusal of the manifest file's reader, by the text that triggers it. The
    /// reader's message names the line and the key; the semantic checks are
    /// `compile_request`'s.
    #[test]
    fn every_refusal_of_the_reader_names_the_line_and_key() {
        let cases = [
            ("", "version: missing; add `version = 1`"),
            (
                "command = [\"true\"]\n",
                "version: missing; add `version = 1`",
            ),
            (
                "version = 2\n",
                "version: manifest version 2 is not supported (this build reads version 1)",
            ),
            (
                "version = -1\n",
                "TOML parse error at line 1, column 11\n  |\n1 | version = -1\n  |           ^^\ninvalid value: integer `-1`, expected u32\n",
            ),
            (
                "version = \n",
                "TOML parse error at line 1, column 11\n  |\n1 | version = \n  |           ^\ninvalid string\nexpected `\"`, `'`\n",
            ),
            (
                "version = 1\nversion = 1\n",
                "TOML parse error at line 2, column 1\n  |\n2 | version = 1\n  | ^\nduplicate key `version` in document root\n",
            ),
            (
                "version = 1\nmemroy = 1\n",
                "TOML parse error at line 2, column 1\n  |\n2 | memroy = 1\n  | ^^^^^^\nunknown field `memroy`, expected one of `version`, `command`, `workspace`, `read`, `write`, `exec`, `connect`, `syscalls`, `cwd`, `env`, `rootfs`, `keep_changes`, `hostname`, `user`, `net`, `runner`, `limits`, `rlimits`, `accept_degradations`\n",
            ),
            (
                "version = 1\n[limits]\nmemroy = \"1G\"\n",
                "TOML parse error at line 3, column 1\n  |\n3 | memroy = \"1G\"\n  | ^^^^^^\nunknown field `memroy`, expected one of `memory`, `pids`, `cpus`, `timeout`\n",
            ),
            (
                "version = 1\ncommand = \"true\"\n",
                "TOML parse error at line 2, column 11\n  |\n2 | command = \"true\"\n  |           ^^^^^^\ninvalid type: string \"true\", expected a sequence\n",
            ),
            (
                "version = 1\nconnect = [70000]\n",
                "TOML parse error at line 2, column 12\n  |\n2 | connect = [70000]\n  |            ^^^^^\ninvalid value: integer `70000`, expected u16\n",
            ),
            (
                "version = 1\n[limits]\ncpus = true\n",
                "TOML parse error at line 3, column 8\n  |\n3 | cpus = true\n  |        ^^^^\na CPU count, as a number (1.5) or a string (\"1.5\")\n",
            ),
            (
                "version = 1\n[rlimits]\nnofile = \"x\"\n",
                "TOML parse error at line 3, column 10\n  |\n3 | nofile = \"x\"\n  |          ^^^\na number, or { soft = N, hard = N }\n",
            ),
            (
                "version = 1\n[rlimits]\nnofile = { soft = 1 }\n",
                "TOML parse error at line 3, column 10\n  |\n3 | nofile = { soft = 1 }\n  |          ^^^^^^^^^^^^\na number, or { soft = N, hard = N }\n",
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(Manifest::parse(text).unwrap_err(), expected, "{text:?}");
        }
    }

    #[test]
    fn a_manifest_file_is_refused_naming_the_file() {
        let dir = std::env::temp_dir().join(format!("covenant-manifest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.toml");
        match Manifest::load(&missing) {
            Err(ManifestError::Read { path, error }) => {
                assert_eq!(
                    (path, error.kind()),
                    (missing, std::io::ErrorKind::NotFound)
                );
            }
            other => panic!("{other:?}"),
        }
        let bad = dir.join("bad.toml");
        std::fs::write(&bad, "version = 2\n").unwrap();
        assert_eq!(
            Manifest::load(&bad).unwrap_err().to_string(),
            format!(
                "manifest {} is invalid: version: manifest version 2 is not supported (this build reads version 1)",
                bad.display()
            )
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn every_refusal_of_the_json_reader() {
        use serde_json::json;
        let cases = [
            (
                json!({"command": ["x"]}),
                "version: missing; add `version = 1`",
            ),
            (
                json!({"version": 3}),
                "version: manifest version 3 is not supported (this build reads version 1)",
            ),
            (
                json!({"version": 1, "memroy": 1}),
                "memroy: unknown field `memroy`, expected one of `version`, `command`, `workspace`, `read`, `write`, `exec`, `connect`, `syscalls`, `cwd`, `env`, `rootfs`, `keep_changes`, `hostname`, `user`, `net`, `runner`, `limits`, `rlimits`, `accept_degradations`",
            ),
            (
                json!({"version": 1, "limits": {"pids": "x"}}),
                "limits.pids: invalid type: string \"x\", expected u64",
            ),
        ];
        for (value, expected) in cases {
            let text = value.to_string();
            assert_eq!(
                Manifest::from_json(value, PathBuf::from("/")).unwrap_err(),
                expected,
                "{text}"
            );
        }
    }

    #[test]
    fn flags_override_and_extend_the_manifest() {
        let mut m = Manifest::parse(
            "version = 1\ncommand = [\"a\"]\nread = [\"data\"]\nnet = \"loopback\"\n[limits]\nmemory = \"1GiB\"\npids = 10\n",
        )
        .unwrap();
        m.base_dir = PathBuf::from("/m");
        let mut flags = Manifest::empty_in(PathBuf::from("/f"));
        flags.command = vec!["b".into()];
        flags.read = vec![PathBuf::from("more")];
        flags.limits.memory = Some("256MiB".into());
        let merged = m.overlay(flags);
        assert_eq!(merged.command, vec!["b"]);
        assert_eq!(
            merged.read,
            vec![PathBuf::from("/m/data"), PathBuf::from("/f/more")]
        );
        assert_eq!(merged.net.as_deref(), Some("loopback"));
        assert_eq!(merged.limits.memory.as_deref(), Some("256MiB"));
        assert_eq!(merged.limits.pids, Some(10));
    }

    #[test]
    fn cpus_may_be_a_number_or_a_string() {
        let m = Manifest::parse("version = 1\n[limits]\ncpus = 1.5\n").unwrap();
        assert_eq!(m.limits.cpus.unwrap().as_text(), "1.5");
        let m = Manifest::parse("version = 1\n[limits]\ncpus = \"0.5\"\n").unwrap();
        assert_eq!(m.limits.cpus.unwrap().as_text(), "0.5");
    }
}
