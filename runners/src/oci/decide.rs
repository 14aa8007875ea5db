//! Before anything is created: every restriction the bundle carries, matched to how the
//! runtime enforces it (or refused, naming it), and the config.json the runtime is given.

use crate::native::cgroup::CgroupLimits;
use crate::native::landlock::{check_support, kernel_abi, LandlockPlan};
use crate::native::Namespace;
use covenant_policy::annotations::{self, IdmapMount, LandlockNet, LandlockPolicy, RootfsLayout};
use covenant_policy::Degradation;
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::runner::*;

/// What the runner decided from the bundle before creating anything.
pub(super) struct Decisions {
    pub(super) config: Spec,
    pub(super) landlock: Option<(LandlockPolicy, LandlockPlan)>,
    pub(super) limits: CgroupLimits,
    pub(super) timeout: Option<Duration>,
    pub(super) network: &'static str,
    /// With `net` egress: the gateway's rules; the runtime joins a namespace prepared with
    /// its link (runc, crun: as the container's namespace; runsc: its sandbox joins it and
    /// its netstack takes the link over).
    pub(super) egress: Option<Vec<covenant_policy::EgressRule>>,
    pub(super) degradations: Vec<Degradation>,
    pub(super) namespaces: Vec<Namespace>,
    /// An image or directory root: its read-only layers, top first.
    pub(super) overlay: Option<(Vec<PathBuf>, Option<PathBuf>)>,
    /// gVisor: the writable host paths, each given to runsc through an idmapped mount.
    pub(super) writable: Vec<WritableBind>,
    /// gVisor: the host sockets the sandbox may connect to, through the gofer and the
    /// broker (`host_sockets.rs`); empty for the other runtimes, which bind them directly.
    pub(super) host_sockets: Vec<super::host_sockets::HostSocket>,
}

/// A bind mount under gVisor given to the runtime as an idmapped clone of `source` on
/// which the on-disk `owner` appears as the sandbox's `sandbox` ids and no other id
/// exists: every writable host path, and the folder of a host socket the sandbox may
/// connect to (read-only), which belongs to the sandbox's host uid.
#[derive(Debug, Clone)]
pub(super) struct WritableBind {
    pub(super) destination: PathBuf,
    pub(super) source: PathBuf,
    pub(super) owner: (u32, u32),
    pub(super) sandbox: (u32, u32),
    pub(super) writable: bool,
}

impl Decisions {
    /// Filters the runtime loads: the OCI profile compiles to one.
    pub(super) fn seccomp_filters(&self) -> usize {
        usize::from(
            self.config
                .linux()
                .as_ref()
                .is_some_and(|l| l.seccomp().is_some()),
        )
    }
}

pub(super) fn annotation<T: serde::de::DeserializeOwned>(
    spec: &Spec,
    key: &str,
) -> Result<Option<T>> {
    spec.annotations()
        .as_ref()
        .and_then(|a| a.get(key))
        .map(|v| {
            serde_json::from_str(v).map_err(|e| OciError::Spec(format!("annotation {key}: {e}")))
        })
        .transpose()
}

impl OciRunner {
    pub(super) fn decide(&self, bundle: &Path) -> Result<Decisions> {
        let mut config =
            Spec::load(bundle.join("config.json")).map_err(|e| OciError::Spec(e.to_string()))?;
        let accepted: Vec<Degradation> =
            annotation(&config, annotations::DEGRADATIONS)?.unwrap_or_default();
        let mut degradations = Vec::new();
        if let Some(RootfsLayout::InMemory { .. }) =
            annotation::<RootfsLayout>(&config, annotations::ROOTFS)?
        {
            return Err(self.unenforceable(
                "the in-memory root",
                "only the native runner builds it; write a portable bundle",
            ));
        }
        let gvisor = matches!(self.flavor, Flavor::Gvisor { .. });
        let idmap: Vec<IdmapMount> = annotation(&config, annotations::IDMAP)?.unwrap_or_default();
        let mut writable = Vec::new();
        if gvisor {
            // Measured: the gofer writes as host root with the sandbox's own ids, so a
            // file made setuid by the sandbox's root lands on the host as setuid root. A
            // writable host path is therefore only given to runsc through an idmapped
            // mount on which the path's owner is the sandbox's user and no other id
            // exists, under the gofer guard (`gofer_guard.rs`).
            let user = config.process().as_ref().map(|p| p.user());
            let (uid, gid) = user.map(|u| (u.uid(), u.gid())).unwrap_or((0, 0));
            for m in config.mounts().iter().flatten() {
                let bind = m.typ().as_deref() == Some("bind");
                let writable_bind = bind
                    && !m
                        .options()
                        .as_ref()
                        .is_some_and(|o| o.iter().any(|x| x == "ro"));
                if !writable_bind {
                    continue;
                }
                let source = m.source().clone().unwrap_or_default();
                match idmap.iter().find(|i| i.destination == *m.destination()) {
                    Some(i) => writable.push(WritableBind {
                        destination: m.destination().clone(),
                        source,
                        owner: (i.host_uid, i.host_gid),
                        sandbox: (uid, gid),
                        writable: true,
                    }),
                    None => {
                        return Err(self.unenforceable(
                            &format!("fs.write:{}", source.display()),
                            "gVisor's gofer writes to host paths as host root, so a writable path is only given to it idmapped to the path's owner, and this one has no idmap (org.opencovenant.idmap); use the native runner, or run as root with a subordinate id range",
                        ))
                    }
                }
            }
        } else if !idmap.is_empty() {
            if !accepted.contains(&Degradation::Idmap) {
                return Err(self.unenforceable(
                    &format!("the idmapped mount of {}", idmap[0].destination.display()),
                    "this runtime does not idmap bind mounts; accept the degradation `idmap` to bind without",
                ));
            }
            degradations.push(Degradation::Idmap);
        }
        let net_mode: Option<String> = config
            .annotations()
            .as_ref()
            .and_then(|a| a.get(annotations::NET))
            .cloned();
        let network = match net_mode.as_deref() {
            Some("host") => "host",
            Some("egress") => match self.flavor {
                // runsc's own network stack (netstack) in the namespace Covenant prepared:
                // runsc joins it (config.json's network namespace path), takes the link's
                // address over and reaches the link only through a packet socket bound to
                // it, so every packet of the sandbox goes to the gateway. The link has no
                // hardware address, so netstack frames plain IP packets (no Ethernet
                // header), which is what the gateway reads.
                Flavor::Gvisor { .. } => "sandbox",
                Flavor::Runc | Flavor::Crun => "egress",
            },
            _ => "none",
        };
        // Fail closed, as the native runner does: no filter or no ruleset, no run.
        if !config
            .linux()
            .as_ref()
            .is_some_and(|l| l.seccomp().is_some())
        {
            return Err(self.unenforceable("seccomp", "the bundle has no linux.seccomp filter"));
        }
        let egress: Option<Vec<covenant_policy::EgressRule>> = if net_mode.as_deref()
            == Some("egress")
        {
            Some(
                annotation(&config, annotations::EGRESS)?
                    .ok_or_else(|| self.unenforceable("net egress", "the bundle names no rules"))?,
            )
        } else {
            None
        };
        let policy: Option<LandlockPolicy> = annotation(&config, annotations::LANDLOCK)?;
        if policy.is_none() && !accepted.contains(&Degradation::Landlock) {
            return Err(self.unenforceable(
                "landlock",
                "the bundle has no org.opencovenant.landlock ruleset; accept the degradation `landlock` to run anyway",
            ));
        }
        let landlock = match policy {
            None => None,
            Some(p) if gvisor => {
                if let LandlockNet::ConnectOnly { .. } = p.net {
                    return Err(self.unenforceable(
                        "net.connect:tcp",
                        "gVisor's netstack has no per-port filter",
                    ));
                }
                // Path rules equal the mounts, which the sentry enforces itself; signals and
                // abstract sockets never leave the sentry's kernel.
                None
            }
            Some(p) => {
                let plan = check_support(&p, kernel_abi(), &accepted)?;
                if !plan.fs {
                    degradations.push(Degradation::Landlock);
                    None
                } else {
                    if self.ctx.enforcer.is_none() {
                        return Err(self.unenforceable("landlock", "no enforcer binary to inject"));
                    }
                    Some((p, plan))
                }
            }
        };
        // libseccomp drops conditional denials of a call it also allows outright (the
        // terminal ioctls): the enforcer loads the profile again, so it must be there.
        if !gvisor && self.ctx.enforcer.is_none() {
            return Err(self.unenforceable(
                "seccomp",
                "no enforcer binary to inject for the ioctl rules libseccomp drops",
            ));
        }
        let resources = config.linux().as_ref().and_then(|l| l.resources().as_ref());
        let limits = CgroupLimits::from_oci(resources);
        let timeout = config
            .annotations()
            .as_ref()
            .and_then(|a| a.get(annotations::TIMEOUT_MS))
            .map(|t| {
                t.parse::<u64>().map(Duration::from_millis).map_err(|_| {
                    OciError::Spec(format!(
                        "annotation {}: `{t}` is not a number of milliseconds",
                        annotations::TIMEOUT_MS
                    ))
                })
            })
            .transpose()?;
        let namespaces = config
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().clone())
            .unwrap_or_default()
            .iter()
            .filter_map(|n| match n.typ() {
                LinuxNamespaceType::User if !gvisor => Some(Namespace::User),
                LinuxNamespaceType::Pid => Some(Namespace::Pid),
                LinuxNamespaceType::Mount => Some(Namespace::Mount),
                LinuxNamespaceType::Network => Some(Namespace::Network),
                LinuxNamespaceType::Ipc => Some(Namespace::Ipc),
                LinuxNamespaceType::Uts => Some(Namespace::Uts),
                LinuxNamespaceType::Cgroup => Some(Namespace::Cgroup),
                _ => None,
            })
            .collect();
        if !config
            .root()
            .as_ref()
            .is_some_and(|r| r.path().is_absolute())
        {
            let root = config
                .root()
                .clone()
                .ok_or_else(|| OciError::Spec("root missing".into()))?;
            let mut root = root;
            root.set_path(bundle.join(root.path()));
            config.set_root(Some(root));
        }
        let overlay = match annotation::<RootfsLayout>(&config, annotations::ROOTFS)? {
            Some(RootfsLayout::Overlay { lower, keep }) => Some((lower, keep)),
            _ => None,
        };
        if let (true, Some((_, Some(keep)))) = (gvisor, &overlay) {
            return Err(self.unenforceable(
                &format!("fs.write:{}", keep.display()),
                "gVisor's gofer writes kept changes as host root; keep changes with the native runner",
            ));
        }
        let host_sockets = if gvisor {
            self.host_sockets(&config, &mut writable)?
        } else {
            Vec::new()
        };
        Ok(Decisions {
            host_sockets,
            config,
            landlock,
            limits,
            timeout,
            network,
            egress,
            degradations,
            namespaces,
            overlay,
            writable,
        })
    }

    /// gVisor: each host socket the bundle lets the program connect to, with its host path
    /// (the bind mount it lies in, the longest that holds it); one that is not in a bind
    /// mount or is not a socket refuses the run. A read-only bind holding one is added to
    /// `idmapped`: its owner (the sandbox's host uid, which gVisor, without a user
    /// namespace, would show as a stranger) appears as the sandbox's user.
    fn host_sockets(
        &self,
        config: &Spec,
        idmapped: &mut Vec<WritableBind>,
    ) -> Result<Vec<super::host_sockets::HostSocket>> {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let user = config.process().as_ref().map(|p| p.user());
        let user_ids = user.map(|u| (u.uid(), u.gid())).unwrap_or((0, 0));
        let wanted: Vec<PathBuf> =
            annotation(config, annotations::HOST_SOCKETS)?.unwrap_or_default();
        let mut found = Vec::new();
        for sandbox in wanted {
            let restriction = format!("the host socket {}", sandbox.display());
            let mount = config
                .mounts()
                .iter()
                .flatten()
                .filter(|m| m.typ().as_deref() == Some("bind") && m.source().is_some())
                .filter(|m| sandbox.starts_with(m.destination()) && sandbox != *m.destination())
                .max_by_key(|m| m.destination().components().count())
                .ok_or_else(|| self.unenforceable(&restriction, "it lies in no bind mount"))?;
            let rest = sandbox
                .strip_prefix(mount.destination())
                .map_err(|_| self.unenforceable(&restriction, "it lies in no bind mount"))?;
            let host = mount.source().clone().unwrap_or_default().join(rest);
            let is_socket = fs::symlink_metadata(&host).is_ok_and(|md| md.file_type().is_socket());
            if !is_socket {
                return Err(self.unenforceable(
                    &restriction,
                    &format!("{} is not a unix socket", host.display()),
                ));
            }
            let source = mount.source().clone().unwrap_or_default();
            if !idmapped
                .iter()
                .any(|w| w.destination == *mount.destination())
            {
                let md = fs::metadata(&source)
                    .map_err(|e| self.unenforceable(&restriction, &e.to_string()))?;
                idmapped.push(WritableBind {
                    destination: mount.destination().clone(),
                    source,
                    owner: (md.uid(), md.gid()),
                    sandbox: user_ids,
                    writable: false,
                });
            }
            found.push(super::host_sockets::HostSocket { host });
        }
        Ok(found)
    }

    /// The config the runtime gets: the bundle's, with the enforcer injected (runc, crun),
    /// or with the user namespace and resources left to the sentry and Covenant (gVisor).
    pub(super) fn derive_config(&self, d: &Decisions, rootfs: &Path, id: &str) -> Result<Spec> {
        let mut spec = d.config.clone();
        let mut linux = spec
            .linux()
            .clone()
            .ok_or_else(|| OciError::Spec("linux section missing".into()))?;
        match self.flavor {
            Flavor::Gvisor { .. } => {
                // gVisor runs the sandbox's ids inside its own kernel; host-side it applies
                // its own user namespace and drops to nobody.
                let ns: Vec<_> = linux
                    .namespaces()
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|n| n.typ() != LinuxNamespaceType::User)
                    .collect();
                linux.set_namespaces(Some(ns));
                linux.set_uid_mappings(None);
                linux.set_gid_mappings(None);
                linux.set_resources(None);
                if let Some(seccomp) = linux.seccomp().clone() {
                    linux.set_seccomp(Some(sentry_seccomp(seccomp)?));
                }
                // gVisor's tasks are not host processes, so a host pids limit cannot stop a
                // fork bomb inside it; the sentry enforces RLIMIT_NPROC itself (measured:
                // a fork bomb stops at the limit).
                if let Some(pids) = d.limits.pids {
                    let mut process = spec
                        .process()
                        .clone()
                        .ok_or_else(|| OciError::Spec("process missing".into()))?;
                    let mut rlimits: Vec<_> = process
                        .rlimits()
                        .clone()
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|r| r.typ() != oci_spec::runtime::PosixRlimitType::RlimitNproc)
                        .collect();
                    rlimits.push(
                        oci_spec::runtime::PosixRlimitBuilder::default()
                            .typ(oci_spec::runtime::PosixRlimitType::RlimitNproc)
                            .soft(pids)
                            .hard(pids)
                            .build()
                            .map_err(|e| OciError::Spec(e.to_string()))?,
                    );
                    process.set_rlimits(Some(rlimits));
                    spec.set_process(Some(process));
                }
            }
            _ => {
                linux.set_cgroups_path(Some(PathBuf::from(format!("/covenant/{id}"))));
            }
        }
        spec.set_linux(Some(linux));
        let gvisor = matches!(self.flavor, Flavor::Gvisor { .. });
        if let (false, Some(enforcer)) = (gvisor, &self.ctx.enforcer) {
            let point = rootfs.join(ENFORCER_TARGET.trim_start_matches('/'));
            if !point.exists() {
                fs::File::create(&point)
                    .map_err(io(format!("enforcer mount point {}", point.display())))?;
            }
            let mut mounts = spec.mounts().clone().unwrap_or_default();
            let ro_bind = |source: &Path, destination: &str| {
                oci_spec::runtime::MountBuilder::default()
                    .destination(destination)
                    .typ("bind")
                    .source(source)
                    .options(vec![
                        "bind".to_string(),
                        "ro".to_string(),
                        "nosuid".to_string(),
                        "nodev".to_string(),
                    ])
                    .build()
                    .map_err(|e| OciError::Spec(e.to_string()))
            };
            mounts.push(ro_bind(enforcer, ENFORCER_TARGET)?);
            // An image root has its own (or no) C library: the enforcer then runs on the
            // host's loader and libraries, bound read-only beside it.
            let loader = if d.overlay.is_some() {
                let host_loader = Path::new(HOST_LOADER)
                    .canonicalize()
                    .map_err(io(format!("host loader {HOST_LOADER}")))?;
                let lib_dir = host_loader
                    .parent()
                    .unwrap_or(Path::new("/lib"))
                    .to_path_buf();
                let point = rootfs.join(ENFORCER_LIBS.trim_start_matches('/'));
                fs::create_dir_all(&point)
                    .map_err(io(format!("mount point {}", point.display())))?;
                mounts.push(ro_bind(&lib_dir, ENFORCER_LIBS)?);
                let name = host_loader
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .ok_or_else(|| OciError::Io {
                        what: format!("host loader {}", host_loader.display()),
                        error: std::io::Error::from(std::io::ErrorKind::InvalidInput),
                    })?;
                Some(format!("{ENFORCER_LIBS}/{name}"))
            } else {
                None
            };
            spec.set_mounts(Some(mounts));
            let mut process = spec
                .process()
                .clone()
                .ok_or_else(|| OciError::Spec("process missing".into()))?;
            let mut args = match loader {
                Some(ld) => vec![
                    ld,
                    "--library-path".into(),
                    ENFORCER_LIBS.into(),
                    ENFORCER_TARGET.into(),
                ],
                None => vec![ENFORCER_TARGET.to_string()],
            };
            args.extend(["enforce".to_string(), "--".to_string()]);
            args.extend(process.args().clone().unwrap_or_default());
            process.set_args(Some(args));
            let mut env = process.env().clone().unwrap_or_default();
            // Without a ruleset (the degradation `landlock` accepted) the enforcer loads
            // the seccomp profile alone.
            if let Some((policy, plan)) = &d.landlock {
                env.push(format!(
                    "{}={}",
                    crate::enforce::POLICY_ENV,
                    serde_json::to_string(policy).map_err(|e| OciError::Spec(e.to_string()))?
                ));
                env.push(format!(
                    "{}={}",
                    crate::enforce::PLAN_ENV,
                    serde_json::to_string(plan).map_err(|e| OciError::Spec(e.to_string()))?
                ));
            }
            let seccomp = spec
                .linux()
                .as_ref()
                .and_then(|l| l.seccomp().as_ref())
                .ok_or_else(|| OciError::Spec("linux.seccomp missing".into()))?;
            env.push(format!(
                "{}={}",
                crate::enforce::SECCOMP_ENV,
                serde_json::to_string(seccomp).map_err(|e| OciError::Spec(e.to_string()))?
            ));
            process.set_env(Some(env));
            spec.set_process(Some(process));
        }
        Ok(spec)
    }
}

/// Calls the 2022 sentry does not implement (it answers ENOSYS itself), which the C
/// library must see fail with ENOSYS to fall back: `clone3` to `clone` (glibc's
/// `pthread_create` and `posix_spawn` fail outright on EPERM).
const UNIMPLEMENTED: &[&str] = &["clone3"];

/// Mode calls whose setuid or setgid bit the sentry refuses: (syscall, mode argument).
const MODE_CALLS: &[(&str, usize)] = &[("chmod", 1), ("fchmod", 1), ("fchmodat", 2)];

/// The bundle's profile as the sentry loads it under gVisor, with two changes:
///
/// - `chmod`, `fchmod` and `fchmodat` with a setuid or setgid bit fail with `EPERM`. The
///   gofer guard already keeps such a mode off the host (`gofer_guard.rs`), but the
///   2022 sentry then reports success for a mode it never applied (measured); refusing
///   it in the sentry makes the program see the truth.
/// - `statx` and `clone3` fail with `ENOSYS`: Debian's 2022 sentry answers `statx` with
///   `EINVAL` for files on a gofer mount (measured: `ls -l`, `stat` fail) and the
///   profile's default errno is not honoured (`EPERM` instead), while the C library
///   falls back to `fstatat` and `clone` on `ENOSYS` only.
pub(super) fn sentry_seccomp(
    seccomp: oci_spec::runtime::LinuxSeccomp,
) -> Result<oci_spec::runtime::LinuxSeccomp> {
    use oci_spec::runtime::{
        LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompOperator, LinuxSyscallBuilder,
    };
    let spec_err = |e: oci_spec::OciSpecError| OciError::Spec(e.to_string());
    let special = |index: usize, mask: u64, value: u64| {
        LinuxSeccompArgBuilder::default()
            .index(index)
            .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
            .value(mask)
            .value_two(value)
            .build()
    };
    let special_bits = (libc::S_ISUID | libc::S_ISGID) as u64;
    let mut syscalls = Vec::new();
    let mut allowed_mode_calls = Vec::new();
    for mut rule in seccomp.syscalls().clone().unwrap_or_default() {
        let unconditional_allow =
            rule.action() == LinuxSeccompAction::ScmpActAllow && rule.args().is_none();
        let names: Vec<String> = rule
            .names()
            .iter()
            .filter(|n| {
                let mode_call = MODE_CALLS.iter().any(|(c, _)| c == n);
                if mode_call && unconditional_allow {
                    allowed_mode_calls.push(n.to_string());
                }
                !(unconditional_allow && mode_call)
            })
            .cloned()
            .collect();
        if names.is_empty() {
            continue;
        }
        rule.set_names(names);
        syscalls.push(rule);
    }
    for (call, index) in MODE_CALLS {
        if !allowed_mode_calls.iter().any(|c| c == call) {
            continue;
        }
        syscalls.push(
            LinuxSyscallBuilder::default()
                .names(vec![call.to_string()])
                .action(LinuxSeccompAction::ScmpActAllow)
                .args(vec![special(*index, special_bits, 0).map_err(spec_err)?])
                .build()
                .map_err(spec_err)?,
        );
        for bit in [libc::S_ISUID as u64, libc::S_ISGID as u64] {
            syscalls.push(
                LinuxSyscallBuilder::default()
                    .names(vec![call.to_string()])
                    .action(LinuxSeccompAction::ScmpActErrno)
                    .errno_ret(libc::EPERM as u32)
                    .args(vec![special(*index, bit, bit).map_err(spec_err)?])
                    .build()
                    .map_err(spec_err)?,
            );
        }
    }
    // The sentry ignores every errno a profile names and answers EPERM (measured), so a
    // call the C library must see fail with ENOSYS is allowed through to the sentry,
    // which does not implement it.
    syscalls.push(
        LinuxSyscallBuilder::default()
            .names(
                UNIMPLEMENTED
                    .iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>(),
            )
            .action(LinuxSeccompAction::ScmpActAllow)
            .build()
            .map_err(spec_err)?,
    );
    let mut seccomp = seccomp;
    seccomp.set_syscalls(Some(syscalls));
    Ok(seccomp)
}
