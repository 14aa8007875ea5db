//! The egress gateway of one sandbox. Its link is made inside the sandbox's network
//! namespace by a short-lived thread of this process that enters it (`setns` of a network
//! namespace is per thread); the gateway itself runs on a thread of this process, with the
//! host's network. The sandbox is let go only once the gateway runs: a gateway that cannot
//! start refuses the run.
//!
//! Two kinds of link ([`Link`]): for a sandbox on the host's kernel (the native runner,
//! runc, crun), the kernel path, in which the namespace's loopback takes every destination
//! and a BPF program hands the sandbox's connections to the gateway's listener there; for
//! gVisor, whose own network stack reads the namespace's devices and routes, a TUN device
//! and a default route to it.

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

/// Which link a sandbox's namespace gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Connections reach the gateway's listener in the namespace, and are relayed by the
    /// kernel.
    Kernel,
    /// A TUN device whose other end is the gateway's own TCP/IP stack.
    Device,
}

/// The link made in the calling thread's namespace, not yet with its gateway.
enum Made {
    Kernel(covenant_egress::link::KernelLink),
    Device(std::os::fd::OwnedFd),
}

impl Link {
    /// Makes the link in the calling thread's network namespace.
    fn make(self) -> std::io::Result<Made> {
        match self {
            Link::Kernel => covenant_egress::link::create_kernel_link().map(Made::Kernel),
            Link::Device => covenant_egress::link::create_link().map(Made::Device),
        }
    }
}

impl Made {
    fn start(self, rules: &[EgressRule], settings: Settings) -> Result<Gateway, EgressError> {
        let rules = rules.to_vec();
        match self {
            Made::Kernel(link) => Gateway::start_kernel(link, rules, settings, Limits::default()),
            Made::Device(tun) => Gateway::start(tun, rules, settings, Limits::default()),
        }
        .map_err(|e| refused("start the gateway", e))
    }
}

/// Creates the sandbox's link (the kernel path) in the network namespace of `pid` and
/// starts the gateway enforcing `rules` with the operator's settings.
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
            Link::Kernel.make()
        })
        .map_err(|e| refused("start the link thread", e))?
        .join()
        .map_err(|_| refused("create the link", "the thread panicked"))?
        .map_err(|e| {
            refused(
                "create the link in the sandbox's network namespace",
                format!("{e} (needs root)"),
            )
        })?;
    link.start(rules, settings)
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

/// Makes a network namespace with the gateway's link (`kind`) in it and starts the gateway;
/// returns both (drop the namespace after the gateway is stopped).
pub fn prepare_namespace(
    rules: &[EgressRule],
    kind: Link,
) -> Result<(HeldNamespace, Gateway), EgressError> {
    let settings = Settings::from_env().map_err(|e| refused("read the operator's settings", e))?;
    let (tx, rx) = std::sync::mpsc::channel();
    let (release, wait) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("egress-netns".into())
        .spawn(move || {
            // Moves only this thread into a new network namespace.
            let made = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)
                .and_then(|()| kind.make());
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
                format!("{e} (needs root, and /dev/net/tun for a device)"),
            )
        })?;
    let held = HeldNamespace {
        path: path.into(),
        release,
        thread: Some(thread),
    };
    let gateway = link.start(rules, settings)?;
    Ok((held, gateway))
}
