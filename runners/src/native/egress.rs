//! The egress gateway of one sandbox. Its link (a TUN device, the sandbox's only route) is
//! created inside the sandbox's network namespace by a short-lived thread of this process
//! that enters it (`setns` of a network namespace is per thread); the gateway itself runs
//! on a thread of this process, with the host's network. The sandbox is let go only once
//! the gateway runs: a gateway that cannot start refuses the run.

use covenant_egress::gateway::Limits;
use covenant_egress::{Gateway, Settings};
use covenant_policy::EgressRule;
use nix::unistd::Pid;

/// Why the gateway could not be set up: the run is refused.
#[derive(Debug, thiserror::Error)]
#[error("net egress: {step}: {detail}; the run is refused, the sandbox would have no way out")]
pub struct EgressError {
    pub step: &'static str,
    pub detail: String,
}

fn refused(step: &'static str, detail: impl ToString) -> EgressError {
    EgressError {
        step,
        detail: detail.to_string(),
    }
}

/// Creates the sandbox's link in the network namespace of `pid` and starts the gateway
/// enforcing `rules` with the operator's settings.
pub fn start_gateway(pid: Pid, rules: &[EgressRule]) -> Result<Gateway, EgressError> {
    let settings = Settings::from_env().map_err(|e| refused("read the operator's settings", e))?;
    let path = format!("/proc/{pid}/ns/net");
    let netns = std::fs::File::open(&path).map_err(|e| {
        refused(
            "open the sandbox's network namespace",
            format!("{path}: {e}"),
        )
    })?;
    let link = std::thread::Builder::new()
        .name("egress-link".into())
        .spawn(move || {
            // Moves only this thread, which ends after creating the link.
            nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)?;
            covenant_egress::link::create_link()
        })
        .map_err(|e| refused("start the link thread", e))?
        .join()
        .map_err(|_| refused("create the link", "the thread panicked"))?
        .map_err(|e| {
            refused(
                "create the link in the sandbox's network namespace",
                format!("{e} (needs root and /dev/net/tun)"),
            )
        })?;
    Gateway::start(link, rules.to_vec(), settings, Limits::default())
        .map_err(|e| refused("start the gateway", e))
}

/// A network namespace made for a runtime to join (runc, crun: `linux.namespaces` network
/// `path`), holding the gateway's link. A parked thread of this process is its only member
/// until the runtime joins; the namespace is named by that thread's `/proc` path, so
/// nothing is mounted and nothing outlives this process.
pub struct HeldNamespace {
    pub path: std::path::PathBuf,
    release: std::sync::mpsc::Sender<()>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for HeldNamespace {
    fn drop(&mut self) {
        let _ = self.release.send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Makes a network namespace with the gateway's link in it and starts the gateway;
/// returns both (drop the namespace after the gateway is stopped).
pub fn prepare_namespace(rules: &[EgressRule]) -> Result<(HeldNamespace, Gateway), EgressError> {
    let settings = Settings::from_env().map_err(|e| refused("read the operator's settings", e))?;
    let (tx, rx) = std::sync::mpsc::channel();
    let (release, wait) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("egress-netns".into())
        .spawn(move || {
            // Moves only this thread into a new network namespace.
            let made = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)
                .and_then(|()| covenant_egress::link::create_link());
            let tid = nix::unistd::gettid();
            let path = format!("/proc/{}/task/{tid}/ns/net", std::process::id());
            let ok = made.is_ok();
            let _ = tx.send(made.map(|fd| (fd, path)));
            if ok {
                // Parked until the run is over: the runtime joins by this path.
                let _ = wait.recv();
            }
        })
        .map_err(|e| refused("start the namespace thread", e))?;
    let (link, path) = rx
        .recv()
        .map_err(|_| refused("create the link", "the thread ended"))?
        .map_err(|e| {
            refused(
                "create the sandbox's network namespace and link",
                format!("{e} (needs root and /dev/net/tun)"),
            )
        })?;
    let held = HeldNamespace {
        path: path.into(),
        release,
        thread: Some(thread),
    };
    let gateway = Gateway::start(link, rules.to_vec(), settings, Limits::default())
        .map_err(|e| refused("start the gateway", e))?;
    Ok((held, gateway))
}
