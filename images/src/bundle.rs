//! `write_bundle`: a [`SandboxPlan`] written down as an OCI bundle. The mount list is
//! explicit and ordered; the rootfs directory holds only the mount points and the
//! symlinks of a merged-`/usr` host, and is mounted read-only by the runner.

use crate::host_view::{
    ETC_ENTRIES, ETC_NETWORK_ENTRIES, MASKED_PATHS, READONLY_PATHS, SYSTEM_DIRS,
};
use crate::oci_seccomp;
use covenant_policy::annotations::{
    self, IdmapMount, LandlockAccess, LandlockNet, LandlockPathRule, LandlockPolicy, RootfsLayout,
};
use covenant_policy::plan::hex;
use covenant_policy::seccomp_profile::profile_by_name;
use covenant_policy::{MountAccess, NetMode, RootfsSource, SandboxPlan};
use oci_spec::runtime::{
    LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxIdMappingBuilder,
    LinuxMemoryBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder,
    LinuxResourcesBuilder, Mount, MountBuilder, PosixRlimitBuilder, PosixRlimitType,
    ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// CFS period the `cpus` limit is expressed in (100 ms, the kernel default).
pub const CPU_PERIOD_US: u64 = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("bundle directory {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("bundle directory {path} already exists and is not empty")]
    NotEmpty { path: PathBuf },
    #[error("seccomp profile `{name}` is unknown")]
    UnknownSeccompProfile { name: String },
    #[error("user: a rootless run maps only the caller's own uid, so the sandbox can run only as uid 0 (which is the caller); asked for {uid}:{gid}")]
    RootlessUser { uid: u32, gid: u32 },
    #[error("config.json could not be built: {0}")]
    Spec(String),
}

type Result<T> = std::result::Result<T, BundleError>;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> BundleError + '_ {
    move |error| BundleError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// How the sandbox's ids map to host ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdentityMap {
    /// Host uid of the sandbox's uid 0.
    pub host_uid: u32,
    /// Host gid of the sandbox's gid 0.
    pub host_gid: u32,
    /// How many ids are mapped (65,536 for a root-run sandbox, 1 rootless).
    pub size: u32,
    /// Whether writable host paths are idmapped (needs host root).
    pub idmap_writable: bool,
}

impl IdentityMap {
    /// A root-run sandbox: ids 0..65536 map to an unprivileged host range.
    pub fn subordinate(host_uid: u32, host_gid: u32) -> Self {
        Self {
            host_uid,
            host_gid,
            size: 65_536,
            idmap_writable: true,
        }
    }

    /// A rootless sandbox: the sandbox's uid 0 is the caller.
    pub fn rootless(uid: u32, gid: u32) -> Self {
        Self {
            host_uid: uid,
            host_gid: gid,
            size: 1,
            idmap_writable: false,
        }
    }
}

/// A bundle on disk.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub dir: PathBuf,
    pub config_digest: String,
    pub seccomp_digest: String,
    /// What `config.json` holds, as written: a runner that takes it from here never reads
    /// the file back.
    pub spec: Spec,
}

impl Bundle {
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.json")
    }
}

/// Writes `plan` as a portable OCI bundle in `dir` (created if missing, refused if not
/// empty): the rootfs directory holds every mount point, so any OCI runtime can run it.
pub fn write_bundle(plan: &SandboxPlan, dir: &Path, ids: IdentityMap) -> Result<Bundle> {
    write_bundle_with(plan, dir, ids, false)
}

/// Writes a bundle for the native runner only: the rootfs directory stays empty and the
/// runner builds the root on a private tmpfs, so a run creates and removes a handful of
/// files on disk instead of one per mount point.
pub fn write_native_bundle(plan: &SandboxPlan, dir: &Path, ids: IdentityMap) -> Result<Bundle> {
    write_bundle_with(plan, dir, ids, true)
}

fn write_bundle_with(
    plan: &SandboxPlan,
    dir: &Path,
    ids: IdentityMap,
    in_memory: bool,
) -> Result<Bundle> {
    if ids.size == 1 && (plan.user.uid != 0 || plan.user.gid != 0) {
        return Err(BundleError::RootlessUser {
            uid: plan.user.uid,
            gid: plan.user.gid,
        });
    }
    create_bundle_dir(dir)?;
    let generated = dir.join("generated");
    fs::DirBuilder::new()
        .mode(0o755)
        .create(&generated)
        .map_err(io_err(&generated))?;
    write_generated_etc(plan, &generated)?;

    let mounts = build_mounts(plan, &generated);
    let rootfs = dir.join("rootfs");
    fs::DirBuilder::new()
        .mode(0o755)
        .create(&rootfs)
        .map_err(io_err(&rootfs))?;
    let layout = if let Some(lower) = plan.rootfs.lower_dirs() {
        RootfsLayout::Overlay {
            lower,
            keep: plan.keep_changes.clone(),
        }
    } else if in_memory {
        RootfsLayout::InMemory {
            links: system_links()?,
        }
    } else {
        create_mount_points(&rootfs, &mounts)?;
        RootfsLayout::Skeleton
    };

    let profile = profile_by_name(&plan.seccomp_profile).ok_or_else(|| {
        BundleError::UnknownSeccompProfile {
            name: plan.seccomp_profile.clone(),
        }
    })?;
    let seccomp = oci_seccomp::to_oci(&profile);
    let seccomp_digest = digest(&serde_json::to_vec(&seccomp).expect("serialisable"));

    let spec = build_spec(plan, ids, mounts, seccomp, &layout)?;
    // A bundle another runtime reads, or a person, is indented; the native runner's own,
    // which lives only as long as its run (as root, on the run's own tmpfs) and is read
    // by nobody, is not: a third less to serialise, write and digest, at every run.
    let json = match in_memory {
        false => serde_json::to_vec_pretty(&spec),
        true => serde_json::to_vec(&spec),
    }
    .map_err(|e| BundleError::Spec(e.to_string()))?;
    // The plan travels with its bundle, so a kept bundle can be run again under it; its
    // digest is in the `plan-digest` annotation.
    let plan_path = dir.join("plan.json");
    write_private(&plan_path, &plan.canonical_json())?;
    let config = dir.join("config.json");
    write_private(&config, &json)?;
    Ok(Bundle {
        dir: dir.to_path_buf(),
        config_digest: digest(&json),
        seccomp_digest,
        spec,
    })
}

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

/// The bundle directory is traversable (0711) but not listable by others: the sandbox's
/// host uid must be able to reach `rootfs` for `pivot_root`.
fn create_bundle_dir(dir: &Path) -> Result<()> {
    match fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(BundleError::NotEmpty {
                    path: dir.to_path_buf(),
                });
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o711)
                .create(dir)
                .map_err(io_err(dir))?;
        }
        Err(e) => return Err(io_err(dir)(e)),
    }
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o711)).map_err(io_err(dir))
}

/// Creates `path` readable and writable by its owner only (0600 from the start, no window
/// where it is wider): the plan and config.json carry the job's environment, secrets
/// passed with `--env` included.
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))?;
    f.write_all(bytes).map_err(io_err(path))
}

/// `/etc/passwd`, `/etc/group`, `/etc/hosts` and `/etc/hostname` describing the sandbox,
/// not the host: host account names stay on the host.
fn write_generated_etc(plan: &SandboxPlan, dir: &Path) -> Result<()> {
    let (uid, gid) = (plan.user.uid, plan.user.gid);
    let home = plan
        .env
        .iter()
        .find(|(k, _)| k == "HOME")
        .map(|(_, v)| v.as_str())
        .unwrap_or("/tmp");
    let mut passwd = String::from("root:x:0:0:root:/root:/bin/sh\n");
    let mut group = String::from("root:x:0:\n");
    if uid != 0 {
        passwd.push_str(&format!("sandbox:x:{uid}:{gid}:sandbox:{home}:/bin/sh\n"));
    }
    if gid != 0 {
        group.push_str(&format!("sandbox:x:{gid}:\n"));
    }
    passwd.push_str("nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n");
    group.push_str("nogroup:x:65534:\n");
    let hosts = format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{}\n",
        plan.hostname
    );
    for (name, text) in [
        ("passwd", passwd),
        ("group", group),
        ("hosts", hosts),
        ("hostname", format!("{}\n", plan.hostname)),
        (
            "resolv.conf",
            // Read only under `net` egress: the gateway is the only resolver there is.
            format!(
                "nameserver {}\noptions attempts:2 timeout:2\n",
                covenant_policy::egress::GATEWAY_ADDR
            ),
        ),
    ] {
        let path = dir.join(name);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&path)
            .map_err(io_err(&path))?;
        f.write_all(text.as_bytes()).map_err(io_err(&path))?;
    }
    Ok(())
}

fn bind(source: &Path, destination: &Path, read_only: bool) -> Mount {
    let access = if read_only { "ro" } else { "rw" };
    MountBuilder::default()
        .destination(destination)
        .typ("bind")
        .source(source)
        .options(vec![
            "rbind".into(),
            access.into(),
            "nosuid".into(),
            "nodev".into(),
        ])
        .build()
        .expect("all fields set")
}

fn special(typ: &str, destination: &str, options: &[&str]) -> Mount {
    MountBuilder::default()
        .destination(destination)
        .typ(typ)
        .source(typ)
        .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()
        .expect("all fields set")
}

/// The ordered mount list. Host system paths come first, then the kernel filesystems, then
/// the plan's own host paths, so a plan path may sit inside `/tmp` but never under `/proc`.
fn build_mounts(plan: &SandboxPlan, generated: &Path) -> Vec<Mount> {
    let mut mounts = Vec::new();
    match plan.rootfs {
        RootfsSource::Host => {
            for dir in SYSTEM_DIRS {
                let path = Path::new(dir);
                if path.is_dir() && !path.is_symlink() {
                    mounts.push(bind(path, path, true));
                }
            }
            let network = match plan.net {
                NetMode::Host => ETC_NETWORK_ENTRIES,
                // The gateway's resolv.conf is generated; the rest are plain tables.
                NetMode::Egress => &ETC_NETWORK_ENTRIES[1..],
                NetMode::None | NetMode::Loopback => &[],
            };
            for (entry, _why) in ETC_ENTRIES.iter().chain(network) {
                let path = Path::new(entry);
                if let Ok(real) = path.canonicalize() {
                    mounts.push(bind(&real, path, true));
                }
            }
        }
        RootfsSource::Image { .. } | RootfsSource::Dir { .. } => {
            if plan.net == NetMode::Host {
                if let Ok(real) = Path::new("/etc/resolv.conf").canonicalize() {
                    mounts.push(bind(&real, Path::new("/etc/resolv.conf"), true));
                }
            }
        }
    }
    // An image brings its own accounts; the host view gets the sandbox's.
    let mut generated_files: Vec<&str> = match plan.rootfs {
        RootfsSource::Host => vec!["passwd", "group", "hosts", "hostname"],
        RootfsSource::Image { .. } | RootfsSource::Dir { .. } => vec!["hosts", "hostname"],
    };
    if plan.net == NetMode::Egress {
        generated_files.push("resolv.conf");
    }
    for name in &generated_files {
        mounts.push(bind(
            &generated.join(name),
            &Path::new("/etc").join(name),
            true,
        ));
    }
    mounts.push(special("proc", "/proc", &["nosuid", "noexec", "nodev"]));
    mounts.push(special(
        "tmpfs",
        "/dev",
        &["nosuid", "noexec", "strictatime", "mode=755", "size=65536k"],
    ));
    // The default devices (null, zero, full, random, urandom, tty, ptmx) are not listed:
    // every OCI runtime provides them, and listing /dev/tty breaks runc without a terminal.
    mounts.push(special(
        "devpts",
        "/dev/pts",
        &[
            "nosuid",
            "noexec",
            "newinstance",
            "ptmxmode=0666",
            "mode=0620",
        ],
    ));
    let shm_size = format!(
        "size={}",
        plan.limits.memory_bytes.unwrap_or(64 << 20).min(64 << 20)
    );
    mounts.push(special(
        "tmpfs",
        "/dev/shm",
        &["nosuid", "noexec", "nodev", "mode=1777", &shm_size],
    ));
    let tmp_size = plan.limits.memory_bytes.map(|m| format!("size={m}"));
    let mut tmp_opts = vec!["nosuid", "nodev", "mode=1777"];
    if let Some(size) = &tmp_size {
        tmp_opts.push(size);
    }
    mounts.push(special("tmpfs", "/tmp", &tmp_opts));
    for m in &plan.mounts {
        let mut mount = bind(&m.host, &m.target, m.access != MountAccess::ReadWrite);
        if m.access == MountAccess::ReadOnly {
            let mut options = mount.options().clone().unwrap_or_default();
            options.push("noexec".into());
            mount.set_options(Some(options));
        }
        mounts.push(mount);
    }
    mounts
}

/// Destinations under these are created by the runner inside filesystems it mounts fresh.
const FRESH_MOUNTS: [&str; 3] = ["/proc", "/dev", "/tmp"];

/// The host's merged-`/usr` symlinks among the system directories (`/bin -> usr/bin`).
fn system_links() -> Result<Vec<(PathBuf, PathBuf)>> {
    let mut links = Vec::new();
    for dir in SYSTEM_DIRS {
        let path = Path::new(dir);
        if path.is_symlink() {
            links.push((
                path.to_path_buf(),
                fs::read_link(path).map_err(io_err(path))?,
            ));
        }
    }
    Ok(links)
}

/// Creates, inside `rootfs`, the directory or file each mount is attached to, and the
/// symlinks of a merged-`/usr` host (`/bin -> usr/bin`).
fn create_mount_points(rootfs: &Path, mounts: &[Mount]) -> Result<()> {
    for (path, target) in system_links()? {
        {
            let dir = path.to_str().unwrap_or("/");
            let link = rootfs.join(dir.trim_start_matches('/'));
            if let Some(parent) = link.parent() {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(parent)
                    .map_err(io_err(parent))?;
            }
            std::os::unix::fs::symlink(&target, &link).map_err(io_err(&link))?;
        }
    }
    let mut done: HashSet<PathBuf> = HashSet::new();
    for m in mounts {
        let dest = m.destination();
        if FRESH_MOUNTS
            .iter()
            .any(|f| dest.starts_with(f) && dest != Path::new(f))
            || !done.insert(dest.clone())
        {
            continue;
        }
        let inside = rootfs.join(dest.strip_prefix("/").unwrap_or(dest));
        let is_file = m.source().as_ref().map(|s| s.is_file()).unwrap_or(false);
        let dir_part = if is_file {
            inside.parent().map(Path::to_path_buf)
        } else {
            Some(inside.clone())
        };
        if let Some(d) = dir_part {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(&d)
                .map_err(io_err(&d))?;
        }
        if is_file && !inside.exists() {
            fs::File::create(&inside).map_err(io_err(&inside))?;
        }
    }
    Ok(())
}

/// Landlock rules equal to the mounts: the root read-only, the host system directories
/// read+execute, the fresh kernel filesystems and `/tmp` read-write, each plan path at the
/// access it was granted.
fn landlock_policy(plan: &SandboxPlan, mounts: &[Mount]) -> LandlockPolicy {
    // An overlay root is the run's own throwaway copy: all of it is the program's to use.
    let root_access = match plan.rootfs {
        RootfsSource::Host => LandlockAccess::Read,
        RootfsSource::Image { .. } | RootfsSource::Dir { .. } => LandlockAccess::ReadWrite,
    };
    let mut fs_rules = vec![LandlockPathRule {
        path: "/".into(),
        access: root_access,
    }];
    let system: Vec<&Path> = SYSTEM_DIRS.iter().map(Path::new).collect();
    for m in mounts {
        let dest = m.destination();
        let access = match m.typ().as_deref() {
            Some("bind") if system.contains(&dest.as_path()) => Some(LandlockAccess::ReadExec),
            Some("tmpfs") | Some("devpts") | Some("proc") => Some(LandlockAccess::ReadWrite),
            Some("bind") if dest.starts_with("/dev") => Some(LandlockAccess::ReadWrite),
            _ => None,
        };
        if let Some(access) = access {
            fs_rules.push(LandlockPathRule {
                path: dest.clone(),
                access,
            });
        }
    }
    for m in &plan.mounts {
        let access = match m.access {
            MountAccess::ReadOnly => LandlockAccess::Read,
            MountAccess::ReadExec => LandlockAccess::ReadExec,
            MountAccess::ReadWrite => LandlockAccess::ReadWrite,
        };
        fs_rules.push(LandlockPathRule {
            path: m.target.clone(),
            access,
        });
    }
    LandlockPolicy {
        fs: fs_rules,
        net: match (plan.net, plan.connect_tcp.is_empty()) {
            (NetMode::None, _) => LandlockNet::DenyAll,
            (_, false) => LandlockNet::ConnectOnly {
                ports: plan.connect_tcp.clone(),
            },
            (NetMode::Loopback | NetMode::Egress | NetMode::Host, true) => {
                LandlockNet::Unrestricted
            }
        },
        scope: true,
    }
}

fn idmap_mounts(plan: &SandboxPlan, ids: IdentityMap) -> Vec<IdmapMount> {
    if !ids.idmap_writable {
        return Vec::new();
    }
    plan.mounts
        .iter()
        .filter(|m| m.access == MountAccess::ReadWrite)
        .filter_map(|m| {
            let meta = fs::metadata(&m.host).ok()?;
            Some(IdmapMount {
                destination: m.target.clone(),
                host_uid: meta.uid(),
                host_gid: meta.gid(),
            })
        })
        .collect()
}

fn rlimit_type(name: &str) -> Option<PosixRlimitType> {
    Some(match name {
        "RLIMIT_CORE" => PosixRlimitType::RlimitCore,
        "RLIMIT_NOFILE" => PosixRlimitType::RlimitNofile,
        "RLIMIT_NPROC" => PosixRlimitType::RlimitNproc,
        "RLIMIT_FSIZE" => PosixRlimitType::RlimitFsize,
        "RLIMIT_STACK" => PosixRlimitType::RlimitStack,
        "RLIMIT_AS" => PosixRlimitType::RlimitAs,
        "RLIMIT_CPU" => PosixRlimitType::RlimitCpu,
        "RLIMIT_MEMLOCK" => PosixRlimitType::RlimitMemlock,
        _ => return None,
    })
}

fn build_spec(
    plan: &SandboxPlan,
    ids: IdentityMap,
    mounts: Vec<Mount>,
    seccomp: oci_spec::runtime::LinuxSeccomp,
    layout: &RootfsLayout,
) -> Result<Spec> {
    let spec_err = |e: oci_spec::OciSpecError| BundleError::Spec(e.to_string());
    let no_caps = LinuxCapabilitiesBuilder::default()
        .bounding(HashSet::new())
        .effective(HashSet::new())
        .permitted(HashSet::new())
        .inheritable(HashSet::new())
        .ambient(HashSet::new())
        .build()
        .map_err(spec_err)?;
    let rlimits = plan
        .rlimits
        .iter()
        .filter_map(|r| {
            let typ = rlimit_type(r.kind.oci_name())?;
            PosixRlimitBuilder::default()
                .typ(typ)
                .soft(r.soft)
                .hard(r.hard)
                .build()
                .ok()
        })
        .collect::<Vec<_>>();
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(
            UserBuilder::default()
                .uid(plan.user.uid)
                .gid(plan.user.gid)
                .build()
                .map_err(spec_err)?,
        )
        .args(plan.argv.clone())
        .env(
            plan.env
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>(),
        )
        .cwd(&plan.cwd)
        .capabilities(no_caps)
        .no_new_privileges(true)
        .rlimits(rlimits)
        .build()
        .map_err(spec_err)?;

    let mut namespaces = vec![
        LinuxNamespaceType::User,
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Cgroup,
    ];
    if plan.net != NetMode::Host {
        namespaces.push(LinuxNamespaceType::Network);
    }
    let namespaces = namespaces
        .into_iter()
        .map(|t| LinuxNamespaceBuilder::default().typ(t).build())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(spec_err)?;
    let id_map = |host: u32| {
        LinuxIdMappingBuilder::default()
            .container_id(0u32)
            .host_id(host)
            .size(ids.size)
            .build()
    };

    let mut resources = LinuxResourcesBuilder::default();
    if let Some(mem) = plan.limits.memory_bytes {
        resources = resources.memory(
            LinuxMemoryBuilder::default()
                .limit(mem as i64)
                .swap(mem as i64)
                .build()
                .map_err(spec_err)?,
        );
    }
    if let Some(pids) = plan.limits.pids {
        resources = resources.pids(
            LinuxPidsBuilder::default()
                .limit(pids as i64)
                .build()
                .map_err(spec_err)?,
        );
    }
    if let Some(millis) = plan.limits.millicpus {
        let quota = (millis as u64 * CPU_PERIOD_US / 1000) as i64;
        resources = resources.cpu(
            LinuxCpuBuilder::default()
                .quota(quota)
                .period(CPU_PERIOD_US)
                .build()
                .map_err(spec_err)?,
        );
    }
    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .uid_mappings(vec![id_map(ids.host_uid).map_err(spec_err)?])
        .gid_mappings(vec![id_map(ids.host_gid).map_err(spec_err)?])
        .resources(resources.build().map_err(spec_err)?)
        .masked_paths(
            MASKED_PATHS
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )
        .readonly_paths(
            READONLY_PATHS
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )
        .seccomp(seccomp)
        .build()
        .map_err(spec_err)?;

    let mut notes: HashMap<String, String> = HashMap::new();
    notes.insert(annotations::JOB_ID.into(), plan.job_id.clone());
    notes.insert(annotations::PLAN_DIGEST.into(), plan.digest());
    notes.insert(
        annotations::SECCOMP_PROFILE.into(),
        plan.seccomp_profile.clone(),
    );
    notes.insert(
        annotations::LANDLOCK.into(),
        json(&landlock_policy(plan, &mounts)),
    );
    notes.insert(annotations::IDMAP.into(), json(&idmap_mounts(plan, ids)));
    notes.insert(
        annotations::DEGRADATIONS.into(),
        json(&plan.accepted_degradations),
    );
    notes.insert(annotations::NET.into(), plan.net.as_str().to_string());
    if plan.net == NetMode::Egress {
        notes.insert(annotations::EGRESS.into(), json(&plan.egress));
    }
    if !plan.host_sockets.is_empty() {
        notes.insert(annotations::HOST_SOCKETS.into(), json(&plan.host_sockets));
    }
    if *layout != RootfsLayout::Skeleton {
        notes.insert(annotations::ROOTFS.into(), json(layout));
    }
    if let Some(t) = plan.limits.timeout_ms {
        notes.insert(annotations::TIMEOUT_MS.into(), t.to_string());
    }

    SpecBuilder::default()
        .version("1.0.2")
        .root(
            RootBuilder::default()
                .path("rootfs")
                .readonly(plan.rootfs == RootfsSource::Host)
                .build()
                .map_err(spec_err)?,
        )
        .hostname(plan.hostname.clone())
        .process(process)
        .mounts(mounts)
        .linux(linux)
        .annotations(notes)
        .build()
        .map_err(spec_err)
}

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("annotation values are serialisable")
}

#[cfg(test)]
mod tests {
    use super::*;
    use covenant_policy::{compile_request, Manifest};

    /// A plan with a fresh workspace; keep the returned directory alive while it is used.
    fn plan(extra: &str) -> (SandboxPlan, tempfile::TempDir) {
        let ws = tempfile::tempdir().unwrap();
        let text = format!(
            "version = 1\ncommand = [\"true\"]\nworkspace = \"{}\"\n{extra}",
            ws.path().display()
        );
        let mut m = Manifest::parse(&text).unwrap();
        m.base_dir = std::env::temp_dir();
        (compile_request(&m, "job-test").unwrap(), ws)
    }

    #[test]
    fn config_json_round_trips_through_oci_spec_with_every_restriction() {
        let dir = tempfile::tempdir().unwrap();
        let (p, _ws) =
            plan("[limits]\nmemory = \"256MiB\"\npids = 64\ncpus = 1.5\ntimeout = \"30s\"\n");
        let bundle = write_bundle(
            &p,
            &dir.path().join("b"),
            IdentityMap::subordinate(100_000, 100_000),
        )
        .unwrap();
        let spec = Spec::load(bundle.config_path()).unwrap();
        let linux = spec.linux().as_ref().unwrap();
        let ns: Vec<_> = linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| n.typ())
            .collect();
        for t in [
            LinuxNamespaceType::User,
            LinuxNamespaceType::Pid,
            LinuxNamespaceType::Mount,
            LinuxNamespaceType::Network,
            LinuxNamespaceType::Ipc,
            LinuxNamespaceType::Uts,
            LinuxNamespaceType::Cgroup,
        ] {
            assert!(ns.contains(&t), "{t:?} missing");
        }
        let uid_map = &linux.uid_mappings().as_ref().unwrap()[0];
        assert_eq!(
            (uid_map.container_id(), uid_map.host_id(), uid_map.size()),
            (0, 100_000, 65_536)
        );
        let res = linux.resources().as_ref().unwrap();
        assert_eq!(res.memory().as_ref().unwrap().limit(), Some(256 << 20));
        assert_eq!(res.pids().as_ref().unwrap().limit(), 64);
        assert_eq!(res.cpu().as_ref().unwrap().quota(), Some(150_000));
        let process = spec.process().as_ref().unwrap();
        assert_eq!(process.no_new_privileges(), Some(true));
        assert!(process
            .capabilities()
            .as_ref()
            .unwrap()
            .bounding()
            .as_ref()
            .unwrap()
            .is_empty());
        assert!(spec.root().as_ref().unwrap().readonly().unwrap());
        let notes = spec.annotations().as_ref().unwrap();
        assert_eq!(notes[annotations::TIMEOUT_MS], "30000");
        assert_eq!(notes[annotations::NET], "none");
        assert_eq!(notes[annotations::PLAN_DIGEST], p.digest());
        let landlock: LandlockPolicy = serde_json::from_str(&notes[annotations::LANDLOCK]).unwrap();
        assert_eq!(landlock.net, LandlockNet::DenyAll);
        assert!(landlock
            .fs
            .iter()
            .any(|r| r.path == Path::new("/workspace") && r.access == LandlockAccess::ReadWrite));
        let idmap: Vec<IdmapMount> = serde_json::from_str(&notes[annotations::IDMAP]).unwrap();
        assert_eq!(idmap.len(), 1);
        assert_eq!(idmap[0].destination, Path::new("/workspace"));
        assert!(linux.seccomp().is_some());
    }

    #[test]
    fn mounts_come_in_a_safe_order_and_the_rootfs_holds_only_mount_points() {
        let dir = tempfile::tempdir().unwrap();
        let (p, _ws) = plan("");
        let bundle = write_bundle(&p, &dir.path().join("b"), IdentityMap::rootless(1000, 1000));
        assert!(bundle.is_ok());
        let spec = Spec::load(dir.path().join("b/config.json")).unwrap();
        let dests: Vec<_> = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| m.destination().clone())
            .collect();
        let pos = |d: &str| dests.iter().position(|x| x == Path::new(d)).unwrap();
        assert!(
            pos("/usr") < pos("/proc")
                && pos("/dev") < pos("/dev/pts")
                && pos("/tmp") < pos("/workspace")
        );
        let notes = spec.annotations().as_ref().unwrap();
        assert_eq!(
            notes[annotations::IDMAP],
            "[]",
            "rootless bundles cannot idmap"
        );
        assert!(
            !dests.iter().any(|d| d == Path::new("/dev/tty")),
            "default devices are the runtime's"
        );
        let usr: Vec<_> = fs::read_dir(dir.path().join("b/rootfs/usr"))
            .unwrap()
            .collect();
        assert!(
            usr.is_empty(),
            "rootfs/usr is a mount point and must be empty: {usr:?}"
        );
        assert!(!dir.path().join("b/rootfs/etc/shadow").exists());
    }

    #[test]
    fn a_rootless_bundle_refuses_a_non_root_user_and_a_non_empty_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (p, _ws) = plan("user = \"1000\"\n");
        assert!(matches!(
            write_bundle(&p, &dir.path().join("a"), IdentityMap::rootless(1000, 1000)),
            Err(BundleError::RootlessUser { uid: 1000, .. })
        ));
        fs::write(dir.path().join("file"), "x").unwrap();
        assert!(matches!(
            write_bundle(&plan("").0, dir.path(), IdentityMap::rootless(0, 0)),
            Err(BundleError::NotEmpty { .. })
        ));
    }
}
