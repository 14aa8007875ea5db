//! One cgroup per run, on cgroup v1 (the hybrid layout) or v2, with memory, pids and CPU
//! limits, usage read back for the report, and removal afterwards.
//!
//! Written against paths rather than through `cgroups-rs`: that crate decides v1/v2 by
//! `statfs("/sys/fs/cgroup")` and hard-codes the v2 root, while a hybrid host needs v1
//! controllers beside a cgroup2 mount, and the tests here need to point the code at a fake
//! cgroupfs. Every limit asked for must be written, or the run does not start.

mod abandoned;
pub mod warmup;

pub use abandoned::{remove_abandoned, Abandoned};

use std::fs;
use std::io::ErrorKind;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The directory under each hierarchy that holds Covenant's run cgroups.
pub const PARENT: &str = "covenant";

/// The extended attribute naming a run cgroup's owner ([`RunCgroup::create`]): `trusted.`,
/// so only a privileged process can write or read it.
pub const OWNER_XATTR: &str = "trusted.covenant.owner";

/// A v1 hierarchy's `tasks` file of a run cgroup, opened by the supervisor for the
/// sandbox's init to move itself in ([`RunCgroup::join_files`], [`join`]).
#[derive(Debug)]
pub struct JoinFile {
    pub path: PathBuf,
    pub fd: OwnedFd,
}

/// Moves the calling thread into every cgroup of `files` by writing `0` to its `tasks`
/// file. For a single-threaded process (the sandbox's init before it forks) that moves
/// the process.
///
/// Why the process moves itself: a move the supervisor makes names a pid, and the kernel
/// takes the cgroup core's process-group lock for writing for it, a per-CPU rwsem whose
/// first writer after a quiet spell waits for an RCU grace period (5 to 20 ms on a
/// 2-core VM). A thread that names itself (`0`) in `tasks` cannot exit or exec under the
/// move, and since Linux 5.16 the kernel moves it without that lock; on an older kernel
/// the move takes the lock, as the supervisor's would. The file was opened by the
/// supervisor, and v1 checks the opener's credentials, so the move is allowed whatever
/// ids the caller has taken since.
///
/// Returns the path of the file whose write failed, and the error.
pub fn join(files: &[JoinFile]) -> std::result::Result<(), (&Path, std::io::Error)> {
    for file in files {
        match nix::unistd::write(&file.fd, b"0") {
            Ok(1) => {}
            Ok(_) => return Err((&file.path, ErrorKind::WriteZero.into())),
            Err(e) => return Err((&file.path, e.into())),
        }
    }
    Ok(())
}

/// The owner a run cgroup's directory was tagged with, if any.
pub fn owner_of(dir: &Path) -> Option<Vec<u8>> {
    xattr::get(dir, OWNER_XATTR).ok().flatten()
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroup: no cgroup filesystem found under {root}")]
    NoHierarchy { root: PathBuf },
    #[error("cgroup: the {controller} controller is not available on this host, so the `{limit}` limit cannot be enforced")]
    MissingController {
        controller: &'static str,
        limit: &'static str,
    },
    #[error("cgroup: cannot {action} {path}: {error}{hint}")]
    Io {
        action: &'static str,
        path: PathBuf,
        error: std::io::Error,
        hint: &'static str,
    },
}

type Result<T> = std::result::Result<T, CgroupError>;

fn io(action: &'static str, path: &Path, error: std::io::Error) -> CgroupError {
    let hint = if error.kind() == ErrorKind::PermissionDenied {
        " (cgroup limits need root, or a cgroup delegated to this user)"
    } else {
        ""
    };
    CgroupError::Io {
        action,
        path: path.to_path_buf(),
        error,
        hint,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum CgroupVersion {
    #[serde(rename = "v1")]
    V1,
    #[serde(rename = "v2")]
    V2,
}

/// The limits a run's cgroup enforces.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupLimits {
    pub memory_bytes: Option<u64>,
    pub pids: Option<u64>,
    /// CFS quota and period, in microseconds.
    pub cpu: Option<(u64, u64)>,
}

impl CgroupLimits {
    /// The limits an OCI `linux.resources` section sets (memory, pids, CFS quota).
    pub fn from_oci(resources: Option<&oci_spec::runtime::LinuxResources>) -> Self {
        CgroupLimits {
            memory_bytes: resources
                .and_then(|r| r.memory().as_ref())
                .and_then(|m| m.limit())
                .map(|l| l.max(0) as u64),
            pids: resources
                .and_then(|r| r.pids().as_ref())
                .map(|p| p.limit().max(0) as u64),
            cpu: resources.and_then(|r| r.cpu().as_ref()).and_then(|c| {
                match (c.quota(), c.period()) {
                    (Some(q), p) if q > 0 => Some((q as u64, p.unwrap_or(100_000))),
                    _ => None,
                }
            }),
        }
    }
}

/// Where the controllers live on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupLayout {
    /// Everything on one cgroup2 hierarchy.
    V2 { root: PathBuf },
    /// One v1 hierarchy per controller (the hybrid layout keeps cgroup2 at `unified`, with
    /// no controllers we need).
    V1 {
        memory: Option<PathBuf>,
        pids: Option<PathBuf>,
        cpu: Option<PathBuf>,
        cpuacct: Option<PathBuf>,
    },
}

impl CgroupLayout {
    /// Reads the layout under `root` (normally `/sys/fs/cgroup`).
    pub fn detect(root: &Path) -> Result<Self> {
        if root.join("cgroup.controllers").exists() {
            return Ok(Self::V2 {
                root: root.to_path_buf(),
            });
        }
        let v1 = |names: &[&str]| {
            names
                .iter()
                .map(|n| root.join(n))
                .find(|p| p.join("cgroup.procs").exists() && p.join("tasks").exists())
        };
        let layout = Self::V1 {
            memory: v1(&["memory"]),
            pids: v1(&["pids"]),
            cpu: v1(&["cpu", "cpu,cpuacct"]),
            cpuacct: v1(&["cpuacct", "cpu,cpuacct"]),
        };
        match &layout {
            Self::V1 {
                memory: None,
                pids: None,
                cpu: None,
                cpuacct: None,
            } => Err(CgroupError::NoHierarchy {
                root: root.to_path_buf(),
            }),
            _ => Ok(layout),
        }
    }

    pub fn version(&self) -> CgroupVersion {
        match self {
            Self::V1 { .. } => CgroupVersion::V1,
            Self::V2 { .. } => CgroupVersion::V2,
        }
    }

    /// The hierarchies that hold run cgroups: the v2 root, or each v1 controller's.
    pub fn roots(&self) -> Vec<PathBuf> {
        let mut roots: Vec<PathBuf> = match self {
            Self::V2 { root } => vec![root.clone()],
            Self::V1 {
                memory,
                pids,
                cpu,
                cpuacct,
            } => [memory, pids, cpu, cpuacct]
                .into_iter()
                .flatten()
                .cloned()
                .collect(),
        };
        roots.dedup();
        roots
    }

    /// Controllers available for run cgroups, for `doctor`.
    pub fn controllers(&self) -> Vec<&'static str> {
        match self {
            Self::V2 { root } => {
                let text = fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
                ["memory", "pids", "cpu"]
                    .into_iter()
                    .filter(|c| text.split_whitespace().any(|x| x == *c))
                    .collect()
            }
            Self::V1 {
                memory,
                pids,
                cpu,
                cpuacct,
            } => [
                ("memory", memory),
                ("pids", pids),
                ("cpu", cpu),
                ("cpuacct", cpuacct),
            ]
            .into_iter()
            .filter(|(_, p)| p.is_some())
            .map(|(n, _)| n)
            .collect(),
        }
    }
}

/// Usage read back after the run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupUsage {
    pub peak_memory_bytes: Option<u64>,
    pub cpu_time_ns: Option<u64>,
    pub oom_kills: u64,
    pub pids_limit_hits: u64,
}

/// A run's cgroup: one directory per v1 hierarchy, or one v2 directory.
#[derive(Debug)]
pub struct RunCgroup {
    version: CgroupVersion,
    dirs: Vec<PathBuf>,
    /// Whether this cgroup is ours to remove.
    owned: bool,
}

fn write(path: &Path, value: &str) -> Result<()> {
    fs::write(path, value).map_err(|e| io("write", path, e))
}

fn make_dir(path: &Path) -> Result<()> {
    match fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io("create", path, e)),
    }
}

/// Tags a run cgroup's directory with its owner, so that once its supervisor is gone a
/// later run can tell whose it was ([`remove_abandoned`](abandoned::remove_abandoned)). A
/// kernel without extended attributes on cgroups (`EOPNOTSUPP`), or a supervisor that is
/// root only in a user namespace of its own (`EPERM`: `trusted.` needs the host's
/// `CAP_SYS_ADMIN`), leaves it untagged: such a cgroup, abandoned, is left for the
/// operator, never taken; the run itself is not refused for it.
fn mark(dir: &Path, owner: Option<&Path>) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let Some(owner) = owner else { return Ok(()) };
    match xattr::set(dir, OWNER_XATTR, owner.as_os_str().as_bytes()) {
        Err(e) if !matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EPERM)) => {
            Err(io("tag", dir, e))
        }
        _ => Ok(()),
    }
}

fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The value of `key` in a flat keyed file (`memory.events`, `cpu.stat`, `memory.oom_control`).
fn read_key(path: &Path, key: &str) -> Option<u64> {
    let text = fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

impl RunCgroup {
    /// Creates the cgroup `name`, tags each of its directories with `owner` (see
    /// [`OWNER_XATTR`]) and writes `limits`. A limit whose controller is missing is an
    /// error; on any error, what was created is removed again.
    pub fn create(
        layout: &CgroupLayout,
        name: &str,
        limits: CgroupLimits,
        owner: Option<&Path>,
    ) -> Result<Self> {
        let mut cg = RunCgroup {
            version: layout.version(),
            dirs: Vec::new(),
            owned: true,
        };
        match cg.populate(layout, name, limits, owner) {
            Ok(()) => Ok(cg),
            Err(e) => {
                let _ = cg.remove(Duration::from_millis(200));
                Err(e)
            }
        }
    }

    fn populate(
        &mut self,
        layout: &CgroupLayout,
        name: &str,
        limits: CgroupLimits,
        owner: Option<&Path>,
    ) -> Result<()> {
        match layout {
            CgroupLayout::V2 { root } => {
                let controllers = layout.controllers();
                for (needed, controller, limit) in [
                    (limits.memory_bytes.is_some(), "memory", "memory"),
                    (limits.pids.is_some(), "pids", "pids"),
                    (limits.cpu.is_some(), "cpu", "cpus"),
                ] {
                    if needed && !controllers.contains(&controller) {
                        return Err(CgroupError::MissingController { controller, limit });
                    }
                }
                let enable: String = controllers.iter().map(|c| format!("+{c} ")).collect();
                let parent = root.join(PARENT);
                make_dir(&parent)?;
                if !enable.is_empty() {
                    write(&root.join("cgroup.subtree_control"), enable.trim())?;
                    write(&parent.join("cgroup.subtree_control"), enable.trim())?;
                }
                let dir = parent.join(name);
                make_dir(&dir)?;
                self.dirs.push(dir.clone());
                mark(&dir, owner)?;
                if let Some(mem) = limits.memory_bytes {
                    write(&dir.join("memory.max"), &mem.to_string())?;
                    if dir.join("memory.swap.max").exists() {
                        write(&dir.join("memory.swap.max"), "0")?;
                    }
                }
                if let Some(pids) = limits.pids {
                    write(&dir.join("pids.max"), &pids.to_string())?;
                }
                if let Some((quota, period)) = limits.cpu {
                    write(&dir.join("cpu.max"), &format!("{quota} {period}"))?;
                }
            }
            CgroupLayout::V1 {
                memory,
                pids,
                cpu,
                cpuacct,
            } => {
                let required =
                    |p: &Option<PathBuf>, needed: bool, controller, limit| match (p, needed) {
                        (None, true) => Err(CgroupError::MissingController { controller, limit }),
                        _ => Ok(()),
                    };
                required(memory, limits.memory_bytes.is_some(), "memory", "memory")?;
                required(pids, limits.pids.is_some(), "pids", "pids")?;
                required(cpu, limits.cpu.is_some(), "cpu", "cpus")?;
                let mut seen: Vec<PathBuf> = Vec::new();
                for hierarchy in [memory, pids, cpu, cpuacct].into_iter().flatten() {
                    if seen.contains(hierarchy) {
                        continue;
                    }
                    seen.push(hierarchy.clone());
                    let parent = hierarchy.join(PARENT);
                    make_dir(&parent)?;
                    let dir = parent.join(name);
                    make_dir(&dir)?;
                    self.dirs.push(dir.clone());
                    mark(&dir, owner)?;
                }
                let dir_in = |h: &Option<PathBuf>| h.as_ref().map(|h| h.join(PARENT).join(name));
                if let (Some(mem), Some(dir)) = (limits.memory_bytes, dir_in(memory)) {
                    write(&dir.join("memory.limit_in_bytes"), &mem.to_string())?;
                    // Without swap accounting the limit still holds for RAM; with it, swap
                    // must not extend the limit.
                    if dir.join("memory.memsw.limit_in_bytes").exists() {
                        write(&dir.join("memory.memsw.limit_in_bytes"), &mem.to_string())?;
                    }
                }
                if let (Some(n), Some(dir)) = (limits.pids, dir_in(pids)) {
                    write(&dir.join("pids.max"), &n.to_string())?;
                }
                if let (Some((quota, period)), Some(dir)) = (limits.cpu, dir_in(cpu)) {
                    write(&dir.join("cpu.cfs_period_us"), &period.to_string())?;
                    write(&dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
                }
            }
        }
        Ok(())
    }

    pub fn version(&self) -> CgroupVersion {
        self.version
    }

    /// A cgroup another runtime created (`covenant/NAME` in each hierarchy), to read its
    /// usage. It is not removed when dropped; the runtime that made it removes it.
    pub fn existing(layout: &CgroupLayout, name: &str) -> Self {
        let mut dirs: Vec<PathBuf> = layout
            .roots()
            .into_iter()
            .map(|r| r.join(PARENT).join(name))
            .filter(|d| d.is_dir())
            .collect();
        dirs.dedup();
        RunCgroup {
            version: layout.version(),
            dirs,
            owned: false,
        }
    }

    /// The cgroup's directories (one per v1 hierarchy).
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// On cgroup v2, the cgroup's directory opened for `clone3(CLONE_INTO_CGROUP)`, so a
    /// process can start inside it instead of being moved there (a move takes the cgroup
    /// core's process-group lock for writing, which waits for an RCU grace period).
    /// `None` on v1, where a process can only be moved.
    pub fn clone_target(&self) -> Result<Option<std::os::fd::OwnedFd>> {
        match (self.version, self.dirs.as_slice()) {
            (CgroupVersion::V2, [dir]) => fs::File::open(dir)
                .map(|f| Some(f.into()))
                .map_err(|e| io("open", dir, e)),
            _ => Ok(None),
        }
    }

    /// On cgroup v1, the `tasks` file of every hierarchy's directory, opened for writing
    /// (close-on-exec), for the sandbox's init to move itself in with [`join`]. Empty on
    /// v2, where the sandbox is cloned into its cgroup.
    pub fn join_files(&self) -> Result<Vec<JoinFile>> {
        if self.version != CgroupVersion::V1 {
            return Ok(Vec::new());
        }
        self.dirs
            .iter()
            .map(|dir| {
                let path = dir.join("tasks");
                fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
                    .open(&path)
                    .map(|f| JoinFile {
                        path: path.clone(),
                        fd: f.into(),
                    })
                    .map_err(|e| io("open", &path, e))
            })
            .collect()
    }

    /// Moves `pid` into the cgroup, in every hierarchy.
    pub fn add_process(&self, pid: i32) -> Result<()> {
        for dir in &self.dirs {
            write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    fn file(&self, name: &str) -> Option<PathBuf> {
        self.dirs.iter().map(|d| d.join(name)).find(|p| p.exists())
    }

    /// Usage so far. Missing files (an old kernel) read as unknown, not as zero.
    pub fn usage(&self) -> CgroupUsage {
        let pids_limit_hits = self
            .file("pids.events")
            .and_then(|p| read_key(&p, "max"))
            .unwrap_or(0);
        match self.version {
            CgroupVersion::V2 => CgroupUsage {
                peak_memory_bytes: self.file("memory.peak").and_then(|p| read_u64(&p)),
                cpu_time_ns: self
                    .file("cpu.stat")
                    .and_then(|p| read_key(&p, "usage_usec"))
                    .map(|us| us * 1000),
                oom_kills: self
                    .file("memory.events")
                    .and_then(|p| read_key(&p, "oom_kill"))
                    .unwrap_or(0),
                pids_limit_hits,
            },
            CgroupVersion::V1 => CgroupUsage {
                peak_memory_bytes: self
                    .file("memory.max_usage_in_bytes")
                    .and_then(|p| read_u64(&p)),
                cpu_time_ns: self.file("cpuacct.usage").and_then(|p| read_u64(&p)),
                oom_kills: self
                    .file("memory.oom_control")
                    .and_then(|p| read_key(&p, "oom_kill"))
                    .unwrap_or(0),
                pids_limit_hits,
            },
        }
    }

    /// Kills whatever is left (`cgroup.kill` where the kernel has it) and removes the
    /// directories, waiting up to `patience` for the kernel to finish reaping.
    pub fn remove(&mut self, patience: Duration) -> Result<()> {
        let deadline = Instant::now() + patience;
        if let Some(kill) = self.file("cgroup.kill") {
            let _ = fs::write(kill, "1");
        }
        let mut result = Ok(());
        for dir in std::mem::take(&mut self.dirs) {
            loop {
                // Unreadable (the directory is already gone) means nothing to kill; a
                // cgroup still populated is caught below, when it cannot be removed.
                for pid in fs::read_to_string(dir.join("cgroup.procs"))
                    .unwrap_or_default()
                    .lines()
                {
                    if let Ok(pid) = pid.trim().parse::<i32>() {
                        // A stale pid is harmless here: it was read from this cgroup
                        // just now.
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
                match fs::remove_dir(&dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == ErrorKind::NotFound => break,
                    Err(e)
                        if Instant::now() < deadline && e.raw_os_error() == Some(libc::EBUSY) =>
                    {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(e) => {
                        result = Err(io("remove", &dir, e));
                        break;
                    }
                }
            }
        }
        result
    }
}

impl Drop for RunCgroup {
    fn drop(&mut self) {
        if self.owned && !self.dirs.is_empty() {
            let _ = self.remove(Duration::from_secs(2));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    /// Each file gets `0` (the caller, by itself); a file that cannot be written stops
    /// the join and is named.
    #[test]
    fn join_writes_zero_to_every_file_and_names_the_one_that_fails() {
        let dir = tempfile::tempdir().unwrap();
        let open = |name: &str, write: bool| {
            let path = dir.path().join(name);
            fs::write(&path, "").unwrap();
            let file = fs::OpenOptions::new()
                .read(!write)
                .write(write)
                .open(&path)
                .unwrap();
            JoinFile {
                path,
                fd: file.into(),
            }
        };
        let files = [open("memory", true), open("pids", true)];
        join(&files).unwrap();
        for f in &files {
            assert_eq!(fs::read_to_string(&f.path).unwrap(), "0");
        }
        let files = [
            open("cpu", true),
            open("cpuacct", false),
            open("blkio", true),
        ];
        let (path, e) = join(&files).unwrap_err();
        assert_eq!(path, dir.path().join("cpuacct"));
        assert_eq!(e.raw_os_error(), Some(libc::EBADF));
        assert_eq!(fs::read_to_string(dir.path().join("blkio")).unwrap(), "");
    }

    fn fake_v2() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("cgroup.controllers"),
            "cpuset cpu io memory hugetlb pids rdma misc\n",
        )
        .unwrap();
        dir
    }

    /// A fake cgroupfs with one v1 hierarchy per controller named (the warm-up's tests
    /// use it too).
    pub(super) fn fake_v1(controllers: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for c in controllers {
            let h = dir.path().join(c);
            fs::create_dir(&h).unwrap();
            fs::write(h.join("cgroup.procs"), "").unwrap();
            fs::write(h.join("tasks"), "").unwrap();
        }
        dir
    }

    const LIMITS: CgroupLimits = CgroupLimits {
        memory_bytes: Some(256 << 20),
        pids: Some(64),
        cpu: Some((150_000, 100_000)),
    };

    #[test]
    fn v2_limits_are_written_to_the_v2_files() {
        let fake = fake_v2();
        let layout = CgroupLayout::detect(fake.path()).unwrap();
        assert_eq!(layout.version(), CgroupVersion::V2);
        let mut cg = RunCgroup::create(&layout, "job1", LIMITS, None).unwrap();
        let dir = fake.path().join("covenant/job1");
        assert_eq!(
            fs::read_to_string(dir.join("memory.max")).unwrap(),
            "268435456"
        );
        assert_eq!(fs::read_to_string(dir.join("pids.max")).unwrap(), "64");
        assert_eq!(
            fs::read_to_string(dir.join("cpu.max")).unwrap(),
            "150000 100000"
        );
        assert_eq!(
            fs::read_to_string(fake.path().join("cgroup.subtree_control")).unwrap(),
            "+memory +pids +cpu"
        );
        cg.add_process(42).unwrap();
        assert_eq!(fs::read_to_string(dir.join("cgroup.procs")).unwrap(), "42");
        // On v2 the sandbox is cloned in: nothing to join.
        assert!(cg.join_files().unwrap().is_empty());
        fs::write(dir.join("memory.peak"), "1048576\n").unwrap();
        fs::write(
            dir.join("memory.events"),
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
        )
        .unwrap();
        fs::write(dir.join("cpu.stat"), "usage_usec 2500\nuser_usec 2000\n").unwrap();
        let usage = cg.usage();
        assert_eq!(usage.peak_memory_bytes, Some(1 << 20));
        assert_eq!(usage.oom_kills, 1);
        assert_eq!(usage.cpu_time_ns, Some(2_500_000));
        cg.dirs.clear();
    }

    #[test]
    fn v2_without_a_controller_refuses_the_limit() {
        let fake = tempfile::tempdir().unwrap();
        fs::write(fake.path().join("cgroup.controllers"), "cpu hugetlb\n").unwrap();
        let layout = CgroupLayout::detect(fake.path()).unwrap();
        let err = RunCgroup::create(&layout, "job", LIMITS, None).unwrap_err();
        assert!(
            matches!(
                err,
                CgroupError::MissingController {
                    controller: "memory",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn v1_limits_go_to_each_hierarchy() {
        let fake = fake_v1(&["memory", "pids", "cpu", "cpuacct"]);
        let layout = CgroupLayout::detect(fake.path()).unwrap();
        assert_eq!(layout.version(), CgroupVersion::V1);
        let mut cg = RunCgroup::create(&layout, "job", LIMITS, None).unwrap();
        assert_eq!(cg.dirs().len(), 4);
        let p = fake.path();
        assert_eq!(
            fs::read_to_string(p.join("memory/covenant/job/memory.limit_in_bytes")).unwrap(),
            "268435456"
        );
        assert_eq!(
            fs::read_to_string(p.join("pids/covenant/job/pids.max")).unwrap(),
            "64"
        );
        assert_eq!(
            fs::read_to_string(p.join("cpu/covenant/job/cpu.cfs_quota_us")).unwrap(),
            "150000"
        );
        fs::write(
            p.join("memory/covenant/job/memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )
        .unwrap();
        fs::write(p.join("cpuacct/covenant/job/cpuacct.usage"), "123456\n").unwrap();
        assert_eq!(cg.usage().oom_kills, 2);
        assert_eq!(cg.usage().cpu_time_ns, Some(123456));
        // Init joins through every hierarchy's `tasks` file.
        for dir in cg.dirs() {
            fs::write(dir.join("tasks"), "").unwrap();
        }
        let files = cg.join_files().unwrap();
        let paths: Vec<PathBuf> = files.iter().map(|f| f.path.clone()).collect();
        let expected: Vec<PathBuf> = cg.dirs().iter().map(|d| d.join("tasks")).collect();
        assert_eq!(paths, expected);
        join(&files).unwrap();
        for path in &paths {
            assert_eq!(fs::read_to_string(path).unwrap(), "0");
        }
        cg.dirs.clear();
    }

    /// Each directory of a run cgroup names its owner, and only a privileged process
    /// reads or writes the tag (`trusted.`).
    #[test]
    fn a_run_cgroup_names_its_owner_in_every_hierarchy() {
        covenant_test_support::skip_unless!(&[covenant_test_support::live::Need::Root]);
        let fake = fake_v1(&["memory", "pids", "cpu", "cpuacct"]);
        let layout = CgroupLayout::detect(fake.path()).unwrap();
        let home = Path::new("/var/lib/covenant-a");
        let mut cg = RunCgroup::create(&layout, "job", LIMITS, Some(home)).unwrap();
        assert_eq!(cg.dirs().len(), 4);
        for dir in cg.dirs() {
            assert_eq!(owner_of(dir).as_deref(), Some(home.as_os_str().as_bytes()));
        }
        let untagged = RunCgroup::create(&layout, "job2", LIMITS, None).unwrap();
        for dir in untagged.dirs() {
            assert_eq!(owner_of(dir), None);
        }
        cg.dirs.clear();
    }

    #[test]
    fn v1_without_pids_refuses_a_pids_limit_and_leaves_nothing() {
        let fake = fake_v1(&["memory"]);
        let layout = CgroupLayout::detect(fake.path()).unwrap();
        let err = RunCgroup::create(&layout, "job", LIMITS, None).unwrap_err();
        assert!(
            matches!(
                err,
                CgroupError::MissingController {
                    controller: "pids",
                    ..
                }
            ),
            "{err}"
        );
        assert!(!fake.path().join("memory/covenant/job").exists());
    }

    #[test]
    fn a_folder_without_cgroups_is_not_a_layout() {
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            CgroupLayout::detect(empty.path()),
            Err(CgroupError::NoHierarchy { .. })
        ));
    }
}
