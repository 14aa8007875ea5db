//! The operator's settings: where the gateway resolves names, and which address ranges
//! count as public. They come from the environment of `covenant-ctl` and `covenantd`
//! (`COVENANT_EGRESS_RESOLVER`, `COVENANT_EGRESS_PUBLIC`), never from a capability.

use covenant_policy::egress::Cidr;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// The upstream resolver, `IP:PORT`; default: the first `nameserver` of `/etc/resolv.conf`.
pub const RESOLVER_VAR: &str = "COVENANT_EGRESS_RESOLVER";
/// Address ranges treated as public, `CIDR[,CIDR...]`, so names resolving there are
/// reachable when allowed (internal registries; test servers on loopback).
pub const PUBLIC_VAR: &str = "COVENANT_EGRESS_PUBLIC";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    #[error("{var}=`{value}`: {reason}")]
    Invalid {
        var: &'static str,
        value: String,
        reason: String,
    },
    #[error("no upstream resolver: set {RESOLVER_VAR}=IP:PORT or a `nameserver` in {path}")]
    NoResolver { path: String },
}

/// What the operator decides about egress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Where allowed names are resolved (from the supervisor's network).
    pub resolver: SocketAddr,
    /// Ranges treated as public although they are special (loopback, private, ...).
    pub public: Vec<Cidr>,
    /// The supervisor host's own addresses: never reached unless a grant names them.
    pub own_addresses: Vec<Ipv4Addr>,
}

impl Settings {
    /// Reads the environment, `/etc/resolv.conf` and the host's own addresses.
    pub fn from_env() -> Result<Settings, SettingsError> {
        let resolver = std::env::var(RESOLVER_VAR).ok();
        let public = std::env::var(PUBLIC_VAR).ok();
        let resolv_conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        Self::from_values(resolver.as_deref(), public.as_deref(), &resolv_conf)
            .map(|s| s.with_own_addresses(host_addresses()))
    }

    /// Builds settings from the two variables' values (absent: `None`) and the text of
    /// `/etc/resolv.conf`.
    pub fn from_values(
        resolver: Option<&str>,
        public: Option<&str>,
        resolv_conf: &str,
    ) -> Result<Settings, SettingsError> {
        let resolver = match resolver.filter(|r| !r.is_empty()) {
            Some(text) => parse_resolver(text)?,
            None => resolv_conf
                .lines()
                .filter_map(|l| l.trim().strip_prefix("nameserver"))
                .filter_map(|rest| rest.trim().parse::<IpAddr>().ok())
                .find(|ip| ip.is_ipv4())
                .map(|ip| SocketAddr::new(ip, 53))
                .ok_or(SettingsError::NoResolver {
                    path: "/etc/resolv.conf".into(),
                })?,
        };
        let public = match public.filter(|p| !p.trim().is_empty()) {
            None => Vec::new(),
            Some(text) => parse_public(text)?,
        };
        Ok(Settings {
            resolver,
            public,
            own_addresses: Vec::new(),
        })
    }

    pub fn with_own_addresses(mut self, own: Vec<Ipv4Addr>) -> Self {
        self.own_addresses = own;
        self
    }
}

/// Parses `IP:PORT` (IPv4).
pub fn parse_resolver(text: &str) -> Result<SocketAddr, SettingsError> {
    let invalid = |reason: &str| SettingsError::Invalid {
        var: RESOLVER_VAR,
        value: text.to_string(),
        reason: reason.to_string(),
    };
    let addr: SocketAddr = text
        .parse()
        .map_err(|_| invalid("expected IPv4:PORT, e.g. 127.0.0.53:53"))?;
    if !addr.is_ipv4() || addr.port() == 0 {
        return Err(invalid("expected IPv4:PORT with a port 1-65535"));
    }
    Ok(addr)
}

/// Parses `CIDR[,CIDR...]`.
pub fn parse_public(text: &str) -> Result<Vec<Cidr>, SettingsError> {
    text.split(',')
        .map(|c| {
            Cidr::parse(c.trim()).map_err(|reason| SettingsError::Invalid {
                var: PUBLIC_VAR,
                value: text.to_string(),
                reason,
            })
        })
        .collect()
}

/// Every IPv4 address of the host's interfaces (the daemon's own addresses).
pub fn host_addresses() -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list freed below by freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, alive until freed.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points at a sockaddr whose family says its layout.
            let family = unsafe { (*ifa.ifa_addr).sa_family } as i32;
            if family == libc::AF_INET {
                // SAFETY: an AF_INET sockaddr is a sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                out.push(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: frees the list getifaddrs allocated, once.
    unsafe { libc::freeifaddrs(head) };
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolver_comes_from_the_variable_or_resolv_conf() {
        let s = Settings::from_values(Some("127.77.0.53:5353"), None, "").unwrap();
        assert_eq!(s.resolver, "127.77.0.53:5353".parse().unwrap());
        let s = Settings::from_values(None, None, "# x\nnameserver ::1\nnameserver 10.0.0.2\n")
            .unwrap();
        assert_eq!(s.resolver, "10.0.0.2:53".parse().unwrap());
        assert!(matches!(
            Settings::from_values(None, None, "").unwrap_err(),
            SettingsError::NoResolver { .. }
        ));
    }

    #[test]
    fn bad_settings_name_the_variable() {
        let e = Settings::from_values(Some("resolver"), None, "").unwrap_err();
        assert!(e.to_string().starts_with(RESOLVER_VAR), "{e}");
        let e = Settings::from_values(Some("1.1.1.1:53"), Some("127.77.0.0/16,x"), "").unwrap_err();
        assert!(e.to_string().starts_with(PUBLIC_VAR), "{e}");
        let s = Settings::from_values(Some("1.1.1.1:53"), Some("127.77.0.0/16"), "").unwrap();
        assert_eq!(s.public.len(), 1);
    }
}
