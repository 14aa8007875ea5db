//! The egress gateway of one sandbox. Its link (a TUN device, the sandbox's only route) is
//! created inside the sandbox's network namespace by a short-lived thread of this process
//! that enters it (`setns` of a network namespace is per thread); the gateway itself runs
//! on a thread of this process, with the host's network. The sandbox is let go only once
//! the gateway runs: a gateway that cannot start refuses the run.

use super::NativeError;
use covenant_egress::gateway::Limits;
use covenant_egress::{Gateway, Settings};
use covenant_policy::EgressRule;
use nix::unistd::Pid;
use std::os::fd::AsRawFd;

fn refused(step: &'static str, detail: impl ToString) -> NativeError {
    NativeError::Egress {
        step,
        detail: detail.to_string(),
    }
}

/// Creates the sandbox's link in the network namespace of `pid` and starts the gateway
/// enforcing `rules` with the operator's settings.
pub fn start_gateway(pid: Pid, rules: &[EgressRule]) -> Result<Gateway, NativeError> {
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
            // SAFETY: setns moves only this thread, which ends after creating the link.
            if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
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
