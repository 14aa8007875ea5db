//! The state a container leaves under `--root`: one directory per container holding
//! `state.json` (written atomically) and, until `start`, the start barrier socket.
//! Every later invocation (`state`, `kill`, `delete`, `ps`, ...) reads it from here; the
//! process itself is named by pid *and* its start time, so a recycled pid is never
//! taken for the container.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::hooks::HookSet;

/// The name of the barrier socket `create` leaves and `start` connects to.
pub const START_SOCKET: &str = "start.sock";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("container id `{id}`: {reason}")]
    BadId { id: String, reason: &'static str },
    #[error("container `{0}` already exists")]
    Exists(String),
    #[error("container `{0}` does not exist")]
    NotFound(String),
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: corrupt state: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

type Result<T> = std::result::Result<T, StateError>;

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StateError + 'a {
    move |source| StateError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Refuses an id that is not a plain file name: it becomes a directory under `--root`,
/// so `..`, `/` or an over-long name would reach outside it or fail half-way.
pub fn check_id(id: &str) -> Result<()> {
    let bad = |reason| {
        Err(StateError::BadId {
            id: id.chars().take(80).collect(),
            reason,
        })
    };
    if id.is_empty() {
        return bad("empty");
    }
    if id.len() > 200 {
        return bad("longer than 200 bytes");
    }
    if id == "." || id == ".." {
        return bad("`.` and `..` are not container ids");
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'+'))
    {
        return bad("only letters, digits, `_`, `-`, `.` and `+` are allowed");
    }
    Ok(())
}

/// The lifecycle status, as the runtime spec names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        }
    }
}

/// What `create` records and later commands read.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub bundle: PathBuf,
    /// The container's init as the host sees it.
    pub pid: i32,
    /// Field 22 of `/proc/PID/stat` when it was created: tells a recycled pid apart.
    pub pid_start: u64,
    /// Seconds since the epoch.
    pub created: u64,
    pub started: bool,
    pub annotations: BTreeMap<String, String>,
    /// One directory per cgroup hierarchy the container was put in.
    pub cgroup_dirs: Vec<PathBuf>,
    /// The freezer's file (`freezer.state` on v1, `cgroup.freeze` on v2), if any.
    pub freezer: Option<PathBuf>,
    pub hooks: HookSet,
    /// The namespaces `exec` joins, by type, as `/proc/PID/ns` names.
    pub namespaces: Vec<String>,
    /// Whether the config asked for a user namespace (exec then enters it first).
    pub userns: bool,
    pub rootfs: PathBuf,
    pub owner: u32,
    /// The config's filter, which every `exec`'d process is held to as well.
    pub seccomp: Option<oci_spec::runtime::LinuxSeccomp>,
    /// The config's personality domain, which every `exec`'d process takes as well.
    #[serde(default)]
    pub personality: Option<oci_spec::runtime::LinuxPersonalityDomain>,
}

/// The `--root` directory.
#[derive(Debug, Clone)]
pub struct Root {
    pub dir: PathBuf,
}

impl Root {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// Creates `--root` (0700) if needed.
    pub fn ensure(&self) -> Result<()> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(io("create state root", &self.dir))
    }

    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    /// Claims `id`: its directory is created exclusively, so two creates of one id race
    /// safely and the loser changes nothing.
    pub fn claim(&self, id: &str) -> Result<PathBuf> {
        check_id(id)?;
        self.ensure()?;
        let dir = self.container_dir(id);
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(StateError::Exists(id.to_string()))
            }
            Err(e) => Err(io("create state directory", &dir)(e)),
        }
    }

    pub fn save(&self, record: &Record) -> Result<()> {
        let dir = self.container_dir(&record.id);
        let tmp = dir.join("state.json.tmp");
        let path = dir.join("state.json");
        let bytes = serde_json::to_vec(record).map_err(|e| StateError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io("write", &tmp))?;
        f.write_all(&bytes).map_err(io("write", &tmp))?;
        f.sync_all().map_err(io("sync", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(io("rename", &path))
    }

    pub fn load(&self, id: &str) -> Result<Record> {
        check_id(id)?;
        let path = self.container_dir(id).join("state.json");
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StateError::NotFound(id.to_string()))
            }
            Err(e) => return Err(io("read", &path)(e)),
        };
        serde_json::from_slice(&bytes).map_err(|e| StateError::Corrupt {
            path,
            reason: e.to_string(),
        })
    }

    /// Removes the container's directory (its state and barrier).
    pub fn remove(&self, id: &str) -> Result<()> {
        check_id(id)?;
        let dir = self.container_dir(id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("remove", &dir)(e)),
        }
    }

    /// Records, before the cgroup is made, which cgroup directories a create claims, so a
    /// create that dies before `state.json` leaves nothing `delete --force` cannot find.
    pub fn save_cgroups(&self, id: &str, dirs: &[PathBuf]) -> Result<()> {
        let dir = self.container_dir(id);
        let tmp = dir.join("cgroups.json.tmp");
        let path = dir.join("cgroups.json");
        let body = serde_json::to_vec(dirs).expect("paths serialise");
        std::fs::write(&tmp, body).map_err(io("write", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(io("rename", &path))
    }

    /// The cgroup directories a create of `id` claimed (empty if it recorded none).
    pub fn claimed_cgroups(&self, id: &str) -> Vec<PathBuf> {
        check_id(id)
            .ok()
            .and_then(|()| std::fs::read(self.container_dir(id).join("cgroups.json")).ok())
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Every container id with a directory here, sorted.
    pub fn ids(&self) -> Result<Vec<String>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io("list", &self.dir)(e)),
        };
        let mut ids: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|id| check_id(id).is_ok())
            .collect();
        ids.sort();
        Ok(ids)
    }
}

/// State and start time of a process, from `/proc/PID/stat`; `None` if it is gone.
pub fn proc_stat(pid: i32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last `)`.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    // Field 22 overall is the 20th after the name and state.
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

/// Whether the recorded init is still this container's and still alive (a zombie is not).
pub fn init_alive(record: &Record) -> bool {
    match proc_stat(record.pid) {
        Some((state, start)) => start == record.pid_start && !matches!(state, 'Z' | 'X'),
        None => false,
    }
}

/// The status `state` reports.
pub fn status(record: &Record) -> Status {
    if !init_alive(record) {
        return Status::Stopped;
    }
    if let Some(f) = &record.freezer {
        if let Ok(s) = std::fs::read_to_string(f) {
            let s = s.trim();
            if s == "FROZEN" || s == "FREEZING" || s == "1" {
                return Status::Paused;
            }
        }
    }
    if record.started {
        Status::Running
    } else {
        Status::Created
    }
}

/// The runtime-spec state document.
pub fn state_json(record: &Record) -> serde_json::Value {
    let status = status(record);
    let mut v = serde_json::json!({
        "ociVersion": oci_spec::runtime::VERSION,
        "id": record.id,
        "status": status.as_str(),
        "bundle": record.bundle,
        "rootfs": record.rootfs,
        "created": rfc3339(record.created),
        "owner": if record.owner == 0 { String::new() } else { record.owner.to_string() },
    });
    if status != Status::Stopped {
        v["pid"] = serde_json::Value::from(record.pid);
    } else {
        v["pid"] = serde_json::Value::from(0);
    }
    if !record.annotations.is_empty() {
        v["annotations"] = serde_json::to_value(&record.annotations).unwrap_or_default();
    }
    v
}

/// The state document hooks read on stdin.
pub fn hook_state(record: &Record, status: Status) -> serde_json::Value {
    let mut v = state_json(record);
    v["status"] = serde_json::Value::from(status.as_str());
    if status != Status::Stopped {
        v["pid"] = serde_json::Value::from(record.pid);
    }
    v
}

/// Seconds since the epoch as an RFC 3339 UTC time.
pub fn rfc3339(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (h, m, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if mo <= 2 { y + 1 } else { y };
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}Z")
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsafe_ids_are_refused() {
        for id in [
            "",
            ".",
            "..",
            "../x",
            "/",
            "a/b",
            "a b",
            "x\0y",
            &"a".repeat(201),
        ] {
            assert!(check_id(id).is_err(), "{id:?}");
        }
        for id in ["abc", "a.b-c_d+1", &"f".repeat(64)] {
            assert!(check_id(id).is_ok(), "{id:?}");
        }
    }

    #[test]
    fn a_taken_id_is_refused_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path().join("root"));
        root.claim("c1").unwrap();
        std::fs::write(root.container_dir("c1").join("marker"), "x").unwrap();
        assert!(matches!(root.claim("c1"), Err(StateError::Exists(_))));
        assert!(root.container_dir("c1").join("marker").exists());
    }

    #[test]
    fn dates_print_as_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_798_761_600), "2027-01-01T00:00:00Z");
    }

    #[test]
    fn own_process_reads_as_alive() {
        let (state, start) = proc_stat(std::process::id() as i32).unwrap();
        assert!(state != 'Z' && start > 0);
    }
}
