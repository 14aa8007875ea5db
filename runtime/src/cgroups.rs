//! The container's cgroup at `linux.cgroupsPath`, on cgroup v1 (every mounted
//! controller, hybrid hosts included) or v2: created at `create`, limits written before
//! the container's init joins, frozen and thawed for `pause`/`resume`, read for `events`
//! and `ps`, and removed (the leaf only) at `delete`. A limit the host cannot apply is an
//! error that names the resource; nothing is skipped silently.

use crate::device_filter::{self, DevType, Rule};
use oci_spec::runtime::LinuxResources;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup hierarchy is mounted")]
    NoHierarchy,
    #[error("config.json `linux.cgroupsPath` {0}: must not contain `..`")]
    BadPath(String),
    #[error("config.json `linux.cgroupsPath`: {path} {reason}; a container gets a cgroup of its own (kill --all and delete act on every process in it)")]
    Occupied { path: PathBuf, reason: &'static str },
    #[error("config.json `linux.resources.{field}`: {action} {path}: {source}")]
    Write {
        field: &'static str,
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config.json `linux.resources.{field}`: {reason}")]
    Unsupported { field: &'static str, reason: String },
}

type Result<T> = std::result::Result<T, CgroupError>;

/// One mounted hierarchy: its mount point and, on v1, its controllers.
#[derive(Debug, Clone)]
pub struct Hierarchy {
    pub mount: PathBuf,
    pub controllers: Vec<String>,
    pub v2: bool,
}

/// The hierarchies of this host, from `/proc/self/mountinfo`. A v2 hierarchy counts only
/// when it is the sole one (a pure v2 host): on a hybrid host the unified mount holds no
/// controller the config can name.
pub fn hierarchies() -> Vec<Hierarchy> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut v1 = Vec::new();
    let mut v2 = Vec::new();
    for line in text.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let mount = pre.split_whitespace().nth(4).unwrap_or_default();
        let mut post = post.split_whitespace();
        let fstype = post.next().unwrap_or_default();
        let _source = post.next();
        let opts = post.next().unwrap_or_default();
        match fstype {
            "cgroup" => {
                let controllers: Vec<String> = opts
                    .split(',')
                    .filter(|o| {
                        !matches!(
                            *o,
                            "rw" | "ro"
                                | "nosuid"
                                | "nodev"
                                | "noexec"
                                | "relatime"
                                | "clone_children"
                        ) && !o.starts_with("release_agent")
                    })
                    .map(str::to_string)
                    .collect();
                if !controllers.is_empty()
                    && !v1.iter().any(|h: &Hierarchy| h.controllers == controllers)
                {
                    v1.push(Hierarchy {
                        mount: PathBuf::from(mount),
                        controllers,
                        v2: false,
                    });
                }
            }
            "cgroup2" => v2.push(Hierarchy {
                mount: PathBuf::from(mount),
                controllers: Vec::new(),
                v2: true,
            }),
            _ => {}
        }
    }
    if v1.is_empty() {
        v2.truncate(1);
        v2
    } else {
        v1
    }
}

/// The caller's own cgroup in a hierarchy (for a relative `cgroupsPath`).
fn own_cgroup(h: &Hierarchy) -> PathBuf {
    let text = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrls, path) = (parts.next(), parts.next(), parts.next());
        let (Some(ctrls), Some(path)) = (ctrls, path) else {
            continue;
        };
        let matches = if h.v2 {
            ctrls.is_empty()
        } else {
            let set: Vec<&str> = ctrls.split(',').collect();
            h.controllers.iter().all(|c| set.contains(&c.as_str()))
        };
        if matches {
            return PathBuf::from(path.trim_start_matches('/'));
        }
    }
    PathBuf::new()
}

/// The container's cgroup directories.
#[derive(Debug, Clone)]
pub struct Cgroup {
    pub dirs: Vec<(Hierarchy, PathBuf)>,
}

impl Cgroup {
    /// Resolves `cgroups_path` (absolute: from each hierarchy's root; relative: below the
    /// caller's own cgroup; none: `/covenant-runtime/ID`) in every hierarchy.
    pub fn resolve(cgroups_path: Option<&Path>, id: &str) -> Result<Self> {
        let hs = hierarchies();
        if hs.is_empty() {
            return Err(CgroupError::NoHierarchy);
        }
        let path = cgroups_path
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(format!("/covenant-runtime/{id}")));
        if path
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(CgroupError::BadPath(path.display().to_string()));
        }
        let dirs = hs
            .into_iter()
            .map(|h| {
                let dir = if path.is_absolute() {
                    h.mount.join(path.strip_prefix("/").unwrap_or(&path))
                } else {
                    h.mount.join(own_cgroup(&h)).join(&path)
                };
                (h, dir)
            })
            .collect();
        Ok(Self { dirs })
    }

    pub fn paths(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|(_, d)| d.clone()).collect()
    }

    fn dir_of(&self, controller: &str) -> Option<&Path> {
        self.dirs
            .iter()
            .find(|(h, _)| h.v2 || h.controllers.iter().any(|c| c == controller))
            .map(|(_, d)| d.as_path())
    }

    pub fn is_v2(&self) -> bool {
        self.dirs.iter().any(|(h, _)| h.v2)
    }

    /// The freezer's state file.
    pub fn freezer(&self) -> Option<PathBuf> {
        if self.is_v2() {
            return self.dirs.first().map(|(_, d)| d.join("cgroup.freeze"));
        }
        self.dir_of("freezer").map(|d| d.join("freezer.state"))
    }

    /// Creates every directory; on v1 a new cpuset inherits its parent's cpus and mems
    /// (an empty cpuset takes no task).
    pub fn create(&self) -> Result<()> {
        for (h, dir) in &self.dirs {
            if dir == &h.mount {
                return Err(CgroupError::Occupied {
                    path: dir.clone(),
                    reason: "is the root of the hierarchy",
                });
            }
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            if !procs.trim().is_empty() {
                return Err(CgroupError::Occupied {
                    path: dir.clone(),
                    reason: "already holds processes",
                });
            }
            let mut missing = Vec::new();
            let mut d = dir.as_path();
            while !d.exists() && d.starts_with(&h.mount) && d != h.mount {
                missing.push(d.to_path_buf());
                d = match d.parent() {
                    Some(p) => p,
                    None => break,
                };
            }
            for m in missing.iter().rev() {
                std::fs::create_dir(m).or_else(|e| {
                    if e.kind() == std::io::ErrorKind::AlreadyExists {
                        Ok(())
                    } else {
                        Err(CgroupError::Write {
                            field: "cgroupsPath",
                            action: "create",
                            path: m.clone(),
                            source: e,
                        })
                    }
                })?;
                if !h.v2 && h.controllers.iter().any(|c| c == "cpuset") {
                    for f in ["cpuset.cpus", "cpuset.mems"] {
                        let own = m.join(f);
                        if std::fs::read_to_string(&own)
                            .unwrap_or_default()
                            .trim()
                            .is_empty()
                        {
                            if let Some(p) = m.parent() {
                                let v = std::fs::read_to_string(p.join(f)).unwrap_or_default();
                                let _ = std::fs::write(&own, v.trim());
                            }
                        }
                    }
                }
            }
            if h.v2 {
                // Let the leaf use every controller its parent offers.
                if let Some(p) = dir.parent() {
                    let ctl =
                        std::fs::read_to_string(p.join("cgroup.controllers")).unwrap_or_default();
                    for c in ctl.split_whitespace() {
                        let _ = std::fs::write(p.join("cgroup.subtree_control"), format!("+{c}"));
                    }
                }
            }
        }
        Ok(())
    }

    /// Moves `pid` into every hierarchy.
    pub fn add(&self, pid: i32) -> Result<()> {
        for (_, dir) in &self.dirs {
            let f = dir.join("cgroup.procs");
            std::fs::write(&f, pid.to_string()).map_err(|source| CgroupError::Write {
                field: "cgroupsPath",
                action: "join",
                path: f.clone(),
                source,
            })?;
        }
        Ok(())
    }

    fn write(&self, field: &'static str, controller: &str, file: &str, value: &str) -> Result<()> {
        let Some(dir) = self.dir_of(controller) else {
            return Err(CgroupError::Unsupported {
                field,
                reason: format!("the host has no {controller} controller"),
            });
        };
        let path = dir.join(file);
        std::fs::write(&path, value).map_err(|source| CgroupError::Write {
            field,
            action: "write",
            path,
            source,
        })
    }

    /// Writes every limit in `resources`, and the device rules.
    pub fn apply(&self, r: &LinuxResources) -> Result<()> {
        self.apply_limits(r)?;
        self.apply_devices(r)
    }

    /// `update`: the limits given, and the device rules only if it lists some (on v1;
    /// on v2 a second device program would only narrow the first, so new device rules
    /// are refused there).
    pub fn update(&self, r: &LinuxResources) -> Result<()> {
        if r.devices().is_some() && self.is_v2() {
            return Err(CgroupError::Unsupported {
                field: "devices",
                reason: "device rules on cgroup v2 are set at create; update does not replace the device program".into(),
            });
        }
        self.apply_limits(r)?;
        if r.devices().is_some() {
            self.apply_devices(r)?;
        }
        Ok(())
    }

    fn apply_limits(&self, r: &LinuxResources) -> Result<()> {
        if self.is_v2() {
            return self.apply_v2(r);
        }
        if let Some(m) = r.memory() {
            let limit = m.limit().map(|l| l.to_string());
            let swap = m.swap().map(|s| s.to_string());
            if let Some(l) = &limit {
                // Raising: the limit first, then memory+swap; lowering the other way.
                if self
                    .write("memory.limit", "memory", "memory.limit_in_bytes", l)
                    .is_err()
                {
                    if let Some(s) = &swap {
                        self.write("memory.swap", "memory", "memory.memsw.limit_in_bytes", s)?;
                    }
                    self.write("memory.limit", "memory", "memory.limit_in_bytes", l)?;
                }
            }
            if let Some(s) = &swap {
                self.write("memory.swap", "memory", "memory.memsw.limit_in_bytes", s)?;
            }
            if let Some(v) = m.reservation() {
                self.write(
                    "memory.reservation",
                    "memory",
                    "memory.soft_limit_in_bytes",
                    &v.to_string(),
                )?;
            }
            if let Some(v) = m.kernel_tcp() {
                self.write(
                    "memory.kernelTCP",
                    "memory",
                    "memory.kmem.tcp.limit_in_bytes",
                    &v.to_string(),
                )?;
            }
            if let Some(v) = m.swappiness() {
                self.write(
                    "memory.swappiness",
                    "memory",
                    "memory.swappiness",
                    &v.to_string(),
                )?;
            }
            if m.disable_oom_killer() == Some(true) {
                self.write(
                    "memory.disableOOMKiller",
                    "memory",
                    "memory.oom_control",
                    "1",
                )?;
            }
        }
        if let Some(c) = r.cpu() {
            if let Some(v) = c.shares() {
                self.write("cpu.shares", "cpu", "cpu.shares", &v.to_string())?;
            }
            if let Some(v) = c.period() {
                self.write("cpu.period", "cpu", "cpu.cfs_period_us", &v.to_string())?;
            }
            if let Some(v) = c.quota() {
                self.write("cpu.quota", "cpu", "cpu.cfs_quota_us", &v.to_string())?;
            }
            if let Some(v) = c.realtime_period() {
                self.write(
                    "cpu.realtimePeriod",
                    "cpu",
                    "cpu.rt_period_us",
                    &v.to_string(),
                )?;
            }
            if let Some(v) = c.realtime_runtime() {
                self.write(
                    "cpu.realtimeRuntime",
                    "cpu",
                    "cpu.rt_runtime_us",
                    &v.to_string(),
                )?;
            }
            if let Some(v) = c.cpus() {
                self.write("cpu.cpus", "cpuset", "cpuset.cpus", v)?;
            }
            if let Some(v) = c.mems() {
                self.write("cpu.mems", "cpuset", "cpuset.mems", v)?;
            }
        }
        if let Some(p) = r.pids() {
            let v = if p.limit() > 0 {
                p.limit().to_string()
            } else {
                "max".into()
            };
            self.write("pids.limit", "pids", "pids.max", &v)?;
        }
        if let Some(b) = r.block_io() {
            if let Some(v) = b.weight() {
                self.write("blockIO.weight", "blkio", "blkio.weight", &v.to_string())?;
            }
            if let Some(v) = b.leaf_weight() {
                self.write(
                    "blockIO.leafWeight",
                    "blkio",
                    "blkio.leaf_weight",
                    &v.to_string(),
                )?;
            }
            for d in b.weight_device().iter().flatten() {
                if let Some(w) = d.weight() {
                    self.write(
                        "blockIO.weightDevice",
                        "blkio",
                        "blkio.weight_device",
                        &format!("{}:{} {w}", d.major(), d.minor()),
                    )?;
                }
            }
            for (field, file, list) in [
                (
                    "blockIO.throttleReadBpsDevice",
                    "blkio.throttle.read_bps_device",
                    b.throttle_read_bps_device(),
                ),
                (
                    "blockIO.throttleWriteBpsDevice",
                    "blkio.throttle.write_bps_device",
                    b.throttle_write_bps_device(),
                ),
                (
                    "blockIO.throttleReadIOPSDevice",
                    "blkio.throttle.read_iops_device",
                    b.throttle_read_iops_device(),
                ),
                (
                    "blockIO.throttleWriteIOPSDevice",
                    "blkio.throttle.write_iops_device",
                    b.throttle_write_iops_device(),
                ),
            ] {
                for d in list.iter().flatten() {
                    self.write(
                        field,
                        "blkio",
                        file,
                        &format!("{}:{} {}", d.major(), d.minor(), d.rate()),
                    )?;
                }
            }
        }
        for h in r.hugepage_limits().iter().flatten() {
            self.write(
                "hugepageLimits",
                "hugetlb",
                &format!("hugetlb.{}.limit_in_bytes", h.page_size()),
                &h.limit().to_string(),
            )?;
        }
        if let Some(n) = r.network() {
            if let Some(id) = n.class_id() {
                self.write(
                    "network.classID",
                    "net_cls",
                    "net_cls.classid",
                    &id.to_string(),
                )?;
            }
            for p in n.priorities().iter().flatten() {
                self.write(
                    "network.priorities",
                    "net_prio",
                    "net_prio.ifpriomap",
                    &format!("{} {}", p.name(), p.priority()),
                )?;
            }
        }
        Ok(())
    }

    /// The device rules: everything denied, then the config's rules in order, then the
    /// devices every container gets. On v1 they are written to `devices.deny`/`allow`; on
    /// v2 they become a device program attached to the cgroup ([`device_filter`]).
    fn apply_devices(&self, r: &LinuxResources) -> Result<()> {
        let rules = device_rules(r)?;
        if self.is_v2() {
            let dir = self
                .dir_of("devices")
                .expect("a v2 cgroup has its one directory");
            return device_filter::attach(dir, &rules).map_err(|e| CgroupError::Unsupported {
                field: "devices",
                reason: e.to_string(),
            });
        }
        if self.dir_of("devices").is_none() {
            return Ok(());
        }
        self.write("devices", "devices", "devices.deny", "a")?;
        for rule in &rules[1..] {
            let file = if rule.allow {
                "devices.allow"
            } else {
                "devices.deny"
            };
            for line in v1_lines(rule) {
                self.write("devices", "devices", file, &line)?;
            }
        }
        Ok(())
    }

    fn apply_v2(&self, r: &LinuxResources) -> Result<()> {
        if let Some(m) = r.memory() {
            if let Some(l) = m.limit() {
                let v = if l < 0 {
                    "max".to_string()
                } else {
                    l.to_string()
                };
                self.write("memory.limit", "memory", "memory.max", &v)?;
            }
            if let Some(v) = m.reservation() {
                self.write("memory.reservation", "memory", "memory.low", &v.to_string())?;
            }
            if let (Some(s), Some(l)) = (m.swap(), m.limit()) {
                let v = if s < 0 {
                    "max".to_string()
                } else {
                    (s - l).max(0).to_string()
                };
                self.write("memory.swap", "memory", "memory.swap.max", &v)?;
            }
        }
        if let Some(c) = r.cpu() {
            if let Some(s) = c.shares() {
                let w = 1 + ((s.clamp(2, 262_144) - 2) * 9999) / 262_142;
                self.write("cpu.shares", "cpu", "cpu.weight", &w.to_string())?;
            }
            if c.quota().is_some() || c.period().is_some() {
                let q = c
                    .quota()
                    .filter(|q| *q > 0)
                    .map(|q| q.to_string())
                    .unwrap_or_else(|| "max".into());
                self.write(
                    "cpu.quota",
                    "cpu",
                    "cpu.max",
                    &format!("{q} {}", c.period().unwrap_or(100_000)),
                )?;
            }
            if let Some(v) = c.cpus() {
                self.write("cpu.cpus", "cpuset", "cpuset.cpus", v)?;
            }
            if let Some(v) = c.mems() {
                self.write("cpu.mems", "cpuset", "cpuset.mems", v)?;
            }
        }
        if let Some(p) = r.pids() {
            let v = if p.limit() > 0 {
                p.limit().to_string()
            } else {
                "max".into()
            };
            self.write("pids.limit", "pids", "pids.max", &v)?;
        }
        Ok(())
    }

    /// Every pid in the container's cgroup.
    pub fn pids(&self) -> Vec<i32> {
        let dir = self
            .dir_of("pids")
            .or_else(|| self.dir_of("freezer"))
            .or_else(|| self.dirs.first().map(|(_, d)| d.as_path()));
        let Some(dir) = dir else { return Vec::new() };
        std::fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Freezes (`true`) or thaws the container and waits until the kernel says so.
    pub fn freeze(&self, frozen: bool) -> Result<()> {
        let Some(file) = self.freezer() else {
            return Err(CgroupError::Unsupported {
                field: "freezer",
                reason: "the host has no freezer controller".into(),
            });
        };
        let value = match (self.is_v2(), frozen) {
            (true, true) => "1",
            (true, false) => "0",
            (false, true) => "FROZEN",
            (false, false) => "THAWED",
        };
        std::fs::write(&file, value).map_err(|source| CgroupError::Write {
            field: "freezer",
            action: "write",
            path: file.clone(),
            source,
        })?;
        for _ in 0..500 {
            let now = std::fs::read_to_string(&file).unwrap_or_default();
            if now.trim() == value {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        Ok(())
    }

    /// Removes the leaf directories, waiting briefly for the last processes to leave.
    pub fn remove(&self) {
        for (_, dir) in &self.dirs {
            for _ in 0..200 {
                match std::fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
                }
            }
        }
    }

    /// Rebuilds the handle from the directories `create` recorded.
    pub fn from_dirs(dirs: &[PathBuf]) -> Self {
        let hs = hierarchies();
        Self {
            dirs: dirs
                .iter()
                .filter_map(|d| {
                    hs.iter()
                        .filter(|h| d.starts_with(&h.mount))
                        .max_by_key(|h| h.mount.as_os_str().len())
                        .map(|h| (h.clone(), d.clone()))
                })
                .collect(),
        }
    }

    /// The `events --stats` numbers this host has.
    pub fn stats(&self) -> serde_json::Value {
        let read = |ctrl: &str, file: &str| -> Option<u64> {
            let d = self.dir_of(ctrl)?;
            std::fs::read_to_string(d.join(file))
                .ok()?
                .trim()
                .parse()
                .ok()
        };
        let v2 = self.is_v2();
        let mem_usage = if v2 {
            read("memory", "memory.current")
        } else {
            read("memory", "memory.usage_in_bytes")
        };
        let mem_limit = if v2 {
            None
        } else {
            read("memory", "memory.limit_in_bytes")
        };
        let mem_max = if v2 {
            read("memory", "memory.peak")
        } else {
            read("memory", "memory.max_usage_in_bytes")
        };
        let cpu_total = if v2 {
            self.dir_of("cpu").and_then(|d| {
                let t = std::fs::read_to_string(d.join("cpu.stat")).ok()?;
                t.lines()
                    .find_map(|l| l.strip_prefix("usage_usec "))
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(|us| us * 1000)
            })
        } else {
            read("cpuacct", "cpuacct.usage")
        };
        serde_json::json!({
            "cpu": { "usage": { "total": cpu_total.unwrap_or(0) } },
            "memory": { "usage": { "usage": mem_usage.unwrap_or(0), "max": mem_max.unwrap_or(0), "limit": mem_limit.unwrap_or(0) } },
            "pids": { "current": read("pids", "pids.current").unwrap_or(0), "limit": read("pids", "pids.max").unwrap_or(0) },
        })
    }
}

/// A rule as cgroup v1 lines. v1 reads any line that starts with `a` as "every device,
/// every access" (and drops the exceptions listed so far), whatever numbers and access
/// follow; so `a` is written only for a rule that means exactly that, and a rule for both
/// kinds with numbers or fewer accesses becomes one line per kind.
fn v1_lines(rule: &Rule) -> Vec<String> {
    let n = |v: Option<u32>| v.map(|v| v.to_string()).unwrap_or_else(|| "*".into());
    let access: String = [
        (device_filter::READ, 'r'),
        (device_filter::WRITE, 'w'),
        (device_filter::MKNOD, 'm'),
    ]
    .iter()
    .filter(|(bit, _)| rule.access & bit != 0)
    .map(|(_, c)| *c)
    .collect();
    let kinds: &[char] = match rule.typ {
        None if rule.major.is_none() && rule.minor.is_none() && access == "rwm" => &['a'],
        None => &['c', 'b'],
        Some(DevType::Block) => &['b'],
        Some(DevType::Char) => &['c'],
    };
    kinds
        .iter()
        .map(|k| format!("{k} {}:{} {access}", n(rule.major), n(rule.minor)))
        .collect()
}

/// The character devices every container may use (`major`, `minor`; `None` is any
/// minor): null, zero, full, random, urandom, tty, ptmx and the ptys.
pub const DEFAULT_DEVICES: [(u32, Option<u32>); 8] = [
    (1, Some(3)),
    (1, Some(5)),
    (1, Some(7)),
    (1, Some(8)),
    (1, Some(9)),
    (5, Some(0)),
    (5, Some(2)),
    (136, None),
];

/// The container's device rules in order: deny everything, the config's rules (a fifo is no
/// device to the cgroup; `u`, unbuffered, is a character device), then the devices every
/// container gets (null, zero, full, random, urandom, tty, ptmx, the ptys).
fn device_rules(r: &LinuxResources) -> Result<Vec<Rule>> {
    let mut rules = vec![Rule {
        allow: false,
        typ: None,
        major: None,
        minor: None,
        access: device_filter::access_bits("rwm").expect("rwm"),
    }];
    let listed = r.devices().as_ref().map(Vec::len).unwrap_or(0);
    if listed > device_filter::MAX_RULES - 9 {
        return Err(CgroupError::Unsupported {
            field: "devices",
            reason: format!(
                "{listed} rules; at most {} are taken",
                device_filter::MAX_RULES - 9
            ),
        });
    }
    for (i, d) in r.devices().iter().flatten().enumerate() {
        let typ = match d.typ().map(|t| t.as_str().to_string()).as_deref() {
            Some("p") => continue,
            None | Some("a") => None,
            Some("c") | Some("u") => Some(DevType::Char),
            Some("b") => Some(DevType::Block),
            Some(other) => {
                return Err(CgroupError::Unsupported {
                    field: "devices",
                    reason: format!("[{i}].type `{other}` is not a device type"),
                })
            }
        };
        let number = |v: Option<i64>, what: &str| -> Result<Option<u32>> {
            match v {
                None | Some(-1) => Ok(None),
                Some(n) => u32::try_from(n)
                    .map(Some)
                    .map_err(|_| CgroupError::Unsupported {
                        field: "devices",
                        reason: format!("[{i}].{what} {n} is not a device number"),
                    }),
            }
        };
        let access = d.access().clone().unwrap_or_default();
        rules.push(Rule {
            allow: d.allow(),
            typ,
            major: number(d.major(), "major")?,
            minor: number(d.minor(), "minor")?,
            access: device_filter::access_bits(&access).ok_or_else(|| {
                CgroupError::Unsupported {
                    field: "devices",
                    reason: format!("[{i}].access `{access}` is not a subset of `rwm`"),
                }
            })?,
        });
    }
    for (major, minor) in DEFAULT_DEVICES {
        rules.push(Rule {
            allow: true,
            typ: Some(DevType::Char),
            major: Some(major),
            minor,
            access: device_filter::access_bits("rwm").expect("rwm"),
        });
    }
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(json: serde_json::Value) -> Vec<Rule> {
        let r: LinuxResources =
            serde_json::from_value(serde_json::json!({ "devices": json })).unwrap();
        device_rules(&r).unwrap()
    }

    /// v1 takes any line starting with `a` as "allow (or deny) everything": a rule for
    /// both kinds with numbers, or with fewer accesses, must never be written that way.
    #[test]
    fn a_rule_for_both_kinds_is_never_allow_all_on_v1() {
        let r = rules(serde_json::json!([
            {"allow": true, "type": "a", "major": 1, "minor": 3, "access": "r"},
            {"allow": true, "access": "m"},
            {"allow": false, "type": "a", "major": 8, "access": "w"},
            {"allow": true, "access": "rwm"},
        ]));
        let lines: Vec<Vec<String>> = r.iter().map(v1_lines).collect();
        assert_eq!(lines[1], ["c 1:3 r", "b 1:3 r"]);
        assert_eq!(lines[2], ["c *:* m", "b *:* m"]);
        assert_eq!(lines[3], ["c 8:* w", "b 8:* w"]);
        assert_eq!(lines[4], ["a *:* rwm"]);
        assert_eq!(lines[5], ["c 1:3 rwm"], "the defaults follow");
    }

    #[test]
    fn too_many_device_rules_are_refused() {
        let one =
            serde_json::json!({"allow": true, "type": "c", "major": 1, "minor": 3, "access": "r"});
        let many = vec![one; device_filter::MAX_RULES];
        let r: LinuxResources =
            serde_json::from_value(serde_json::json!({ "devices": many })).unwrap();
        let err = device_rules(&r).unwrap_err().to_string();
        assert!(
            err.contains("linux.resources.devices") && err.contains("at most"),
            "{err}"
        );
    }

    #[test]
    fn a_cgroups_path_with_dotdot_is_refused() {
        let err = Cgroup::resolve(Some(Path::new("/a/../../etc")), "c").unwrap_err();
        assert!(err.to_string().contains("linux.cgroupsPath"), "{err}");
    }
}
