//! A job's agent socket as a thing on disk: its folder under `HOME/agents/JOB`, the
//! socket and the per-job credential, owned by the sandbox's host uid. What it answers is
//! [`super::agent`]'s; the job holds this handle, and dropping it closes the socket.

use crate::home::identity_map;
use covenant_policy::plan::{MountAccess, PlanMount};
use covenant_policy::{Grant, SandboxPlan, Scope};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Where the socket's folder appears inside the sandbox.
pub const MOUNT_POINT: &str = "/run/covenant";

/// Whether a grant gets the agent socket.
pub fn wanted(grant: &Grant) -> bool {
    grant
        .scopes
        .iter()
        .any(|s| matches!(s, Scope::Mem { .. } | Scope::Agent(_)))
}

/// One job's socket: its folder on the host, its credential, the task serving it.
pub struct AgentSocket {
    pub dir: PathBuf,
    token: String,
    listener: Option<std::os::unix::net::UnixListener>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for AgentSocket {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl AgentSocket {
    /// Creates `HOME/agents/JOB` with the socket and the credential, owned by the host
    /// uid the sandbox's user maps to, and by nobody else.
    pub fn create(home: &Path, job: &str, plan: &SandboxPlan) -> Result<Self, String> {
        let dir = home.join("agents").join(job);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let token = crate::keys::random_bytes::<32>()
            .map(|b| covenant_policy::plan::hex(&b))
            .map_err(|e| e.to_string())?;
        let mut socket = AgentSocket {
            dir: dir.clone(),
            token: token.clone(),
            listener: None,
            task: None,
        };
        let token_path = dir.join("token");
        std::fs::write(&token_path, format!("{token}\n"))
            .map_err(|e| format!("{}: {e}", token_path.display()))?;
        let sock_path = dir.join("agent.sock");
        let listener = std::os::unix::net::UnixListener::bind(&sock_path)
            .map_err(|e| format!("{}: {e}", sock_path.display()))?;
        let ids = identity_map();
        let (uid, gid) = if ids.size > plan.user.uid && ids.size > plan.user.gid {
            (ids.host_uid + plan.user.uid, ids.host_gid + plan.user.gid)
        } else {
            (ids.host_uid, ids.host_gid)
        };
        for (path, mode) in [(&sock_path, 0o600), (&token_path, 0o400), (&dir, 0o500)] {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .and_then(|()| {
                    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                })
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        socket.listener = Some(listener);
        Ok(socket)
    }

    /// Adds the read-only mount of the socket's folder to the plan, and the socket to the
    /// host sockets the program may connect to.
    pub fn mount_into(&self, plan: &mut SandboxPlan) {
        plan.mounts.push(PlanMount {
            host: self.dir.clone(),
            target: PathBuf::from(MOUNT_POINT),
            access: MountAccess::ReadOnly,
        });
        plan.host_sockets
            .push(Path::new(MOUNT_POINT).join("agent.sock"));
    }

    /// Starts serving the socket: `serve` gets the listener and the credential and
    /// starts the task that answers it, which is aborted when this handle is dropped.
    pub fn start(
        &mut self,
        serve: impl FnOnce(tokio::net::UnixListener, String) -> tokio::task::JoinHandle<()>,
    ) -> Result<(), String> {
        let Some(listener) = self.listener.take() else {
            return Ok(());
        };
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let listener = tokio::net::UnixListener::from_std(listener).map_err(|e| e.to_string())?;
        self.task = Some(serve(listener, self.token.clone()));
        Ok(())
    }
}
