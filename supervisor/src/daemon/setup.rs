//! What the daemon sets up before it serves: its home's folders, the descriptor budget,
//! the sandboxes' parent cgroup, the operator socket, and the recovery of jobs a stopped
//! daemon left behind.

use super::config::{Config, DaemonError};
use super::{connections, recovery};
use crate::store::jobs::JobState;
use crate::store::Kind;
use crate::store::{AuditEvent, Store};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Lowers `max_connections` to what the descriptor limit (RLIMIT_NOFILE) leaves once the
/// jobs' own descriptors and the admins' reserve are counted, so that the bound is met
/// before the kernel's is: a connection past it is refused, not an `accept` that fails.
pub(super) fn fit_connections_to_descriptors(config: &mut Config) -> Result<(), DaemonError> {
    let (soft, _) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_err(|e| DaemonError::io("getrlimit(RLIMIT_NOFILE)", e.into()))?;
    let room = soft
        .saturating_sub(config.descriptors_besides_connections())
        .saturating_sub(connections::ADMIN_RESERVE as u64);
    if room < 16 {
        return Err(DaemonError::TooFewDescriptors {
            soft,
            max_jobs: config.max_jobs,
            max_queue: config.max_queue,
        });
    }
    if (config.max_connections as u64) > room {
        eprintln!(
            "covenantd: --max-connections {} lowered to {room} to fit the descriptor limit {soft}",
            config.max_connections
        );
        config.max_connections = room as usize;
    }
    Ok(())
}

/// The home and its folders. The home and `bundles` are traversable (0711): a sandbox's
/// host uid passes through them to its bundle's rootfs. `agents` holds each job's agent
/// socket and credential and is reached only by the daemon (the sandbox gets its folder
/// as a mount the daemon's side clones), so it is 0700; a folder an older build left
/// wider is tightened.
pub(super) fn ensure_home(home: &Path) -> Result<(), DaemonError> {
    use std::os::unix::fs::DirBuilderExt;
    for (dir, mode) in [
        (home.to_path_buf(), 0o711),
        (home.join("bundles"), 0o711),
        (home.join("agents"), 0o700),
    ] {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(mode)
                .create(&dir)
                .map_err(|e| DaemonError::io(format!("cannot create {}", dir.display()), e))?;
        }
        let current = std::fs::metadata(&dir)
            .map_err(|e| DaemonError::io(dir.display().to_string(), e))?
            .permissions()
            .mode()
            & 0o7777;
        if current & !mode & 0o077 != 0 {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(current & mode))
                .map_err(|e| DaemonError::io(format!("chmod {}", dir.display()), e))?;
        }
    }
    Ok(())
}

/// Finds every job a previous daemon left queued or running, cleans up what it left and
/// records it as interrupted. Returns the audit events (written with the opening ones).
pub(super) fn recover(store: &Store, home: &Path) -> Result<Vec<AuditEvent>, DaemonError> {
    let mut events = Vec::new();
    let mut rows = Vec::new();
    for mut row in store.unfinished_jobs()? {
        let cleaned = recovery::clean_job(home, &row.id, row.shim_pid);
        events.push(AuditEvent::new(
            Kind::JobInterrupted,
            serde_json::json!({"job": row.id, "was": row.state, "cleaned": cleaned}),
        ));
        row.reason = Some(format!(
            "the daemon stopped while the job was {}",
            row.state.as_str()
        ));
        row.state = JobState::Interrupted;
        row.ended_ms = Some(crate::store::audit::now_ms());
        rows.push(row);
    }
    if !rows.is_empty() {
        let mut writable = Store::open(store.path(), &home.join("supervisor.key"))?;
        writable.commit(&[], &rows, false)?;
    }
    // Agent sockets exist only for the daemon's running jobs; one left here belongs to a
    // job that was never admitted (the daemon died between creating it and the commit).
    if let Ok(entries) = std::fs::read_dir(home.join("agents")) {
        for e in entries.flatten() {
            if std::fs::remove_dir_all(e.path()).is_ok() {
                events.push(AuditEvent::new(
                    Kind::DaemonOrphanRemoved,
                    serde_json::json!({"dir": e.path(), "reason": "left by a stopped daemon"}),
                ));
            }
        }
    }
    Ok(events)
}

/// Writes the daemon's own limits on the parent cgroup all sandboxes are created under.
pub(super) fn apply_cgroup_limits(config: &Config) -> Result<(), DaemonError> {
    use covenant_runners::native::{CgroupLayout, CGROUP_PARENT};
    if config.cgroup_memory.is_none() && config.cgroup_pids.is_none() {
        return Ok(());
    }
    let layout =
        CgroupLayout::detect(Path::new("/sys/fs/cgroup")).map_err(DaemonError::CgroupLayout)?;
    let write = |dir: &Path, file: &str, value: String| -> Result<(), DaemonError> {
        std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::write(dir.join(file), &value))
            .map_err(|error| DaemonError::CgroupLimit {
                file: dir.join(file),
                value,
                error,
            })
    };
    match layout {
        CgroupLayout::V2 { root } => {
            let dir = root.join(CGROUP_PARENT);
            let _ = std::fs::write(root.join("cgroup.subtree_control"), "+memory +pids");
            if let Some(m) = config.cgroup_memory {
                write(&dir, "memory.max", m.to_string())?;
            }
            if let Some(p) = config.cgroup_pids {
                write(&dir, "pids.max", p.to_string())?;
            }
        }
        CgroupLayout::V1 { memory, pids, .. } => {
            if let Some(m) = config.cgroup_memory {
                let root = memory.ok_or_else(|| DaemonError::NoController("memory"))?;
                write(
                    &root.join(CGROUP_PARENT),
                    "memory.limit_in_bytes",
                    m.to_string(),
                )?;
            }
            if let Some(p) = config.cgroup_pids {
                let root = pids.ok_or_else(|| DaemonError::NoController("pids"))?;
                write(&root.join(CGROUP_PARENT), "pids.max", p.to_string())?;
            }
        }
    }
    Ok(())
}

/// The unix listener: from systemd socket activation (`LISTEN_FDS`), else bound at the
/// configured path with mode 0660 and group `covenant` when that group exists.
pub(super) fn unix_listener(
    config: &Config,
) -> Result<(tokio::net::UnixListener, bool), DaemonError> {
    let activated = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        == Some(std::process::id())
        && std::env::var("LISTEN_FDS")
            .ok()
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or(0)
            >= 1;
    let std_listener = if activated {
        let cloexec = nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC);
        let _ = nix::fcntl::fcntl(3, cloexec);
        // SAFETY: systemd passed the listening socket as descriptor 3 to this process.
        let l =
            unsafe { <std::os::unix::net::UnixListener as std::os::fd::FromRawFd>::from_raw_fd(3) };
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
        l
    } else {
        let path = &config.socket;
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_socket() {
                return Err(DaemonError::NotASocket(path.clone()));
            }
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(DaemonError::SocketInUse(path.clone()));
            }
            let _ = std::fs::remove_file(path);
        }
        let l = std::os::unix::net::UnixListener::bind(path)
            .map_err(|e| DaemonError::io(format!("cannot listen on {}", path.display()), e))?;
        let group = nix::unistd::Group::from_name("covenant").ok().flatten();
        if let Some(g) = &group {
            let _ = nix::unistd::chown(path, None, Some(g.gid));
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
            .map_err(|e| DaemonError::io(format!("chmod {}", path.display()), e))?;
        l
    };
    std_listener
        .set_nonblocking(true)
        .map_err(|e| DaemonError::io("the daemon's socket", e))?;
    let listener = tokio::net::UnixListener::from_std(std_listener)
        .map_err(|e| DaemonError::io("the daemon's socket", e))?;
    Ok((listener, !activated))
}
