//! The scope grammar (`docs/capabilities.md`) and the one relation that matters between
//! scopes: whether a granted scope covers a requested one. Every scope maps to a kernel
//! mechanism; the table in the docs names it.
//!
//! Path scopes name host paths. They are absolute and lexically clean when parsed, and a
//! grant covers a request by path alone: neither side's symlinks are resolved here. The
//! supervisor then opens each requested path without following any symlink, so what is
//! mounted is what the granted path names, never what a symlink planted under it points
//! to.

use crate::egress::EgressRule;
use crate::plan::{Degradation, NetMode, RunnerChoice};
use crate::units::{format_size, parse_cpus, parse_duration, parse_size};
use std::fmt;
use std::path::{Component, Path, PathBuf};

/// Seccomp groups a manifest may ask to open (`sys.GROUP`).
pub const SYSCALL_GROUPS: [(&str, &str); 1] =
    [("ptrace", "ptrace and process_vm_readv/writev, for debuggers; confined to the sandbox's own PID namespace")];

/// Filesystem access, weakest first: each level includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FsAccess {
    /// Read files and list directories.
    Read,
    /// Read and execute.
    Exec,
    /// Read, write, create, remove, execute.
    Write,
}

impl FsAccess {
    fn name(self) -> &'static str {
        match self {
            Self::Read => "fs.read",
            Self::Exec => "fs.exec",
            Self::Write => "fs.write",
        }
    }
}

/// A resource ceiling (`res.*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    /// Bytes of memory.
    Mem,
    /// Millicpus.
    Cpu,
    /// Processes and threads.
    Pids,
    /// Milliseconds of wall-clock time.
    Time,
}

impl Resource {
    pub const ALL: [Resource; 4] = [Self::Mem, Self::Cpu, Self::Pids, Self::Time];

    fn name(self) -> &'static str {
        match self {
            Self::Mem => "res.mem",
            Self::Cpu => "res.cpu",
            Self::Pids => "res.pids",
            Self::Time => "res.time",
        }
    }

    fn format(self, v: u64) -> String {
        match self {
            Self::Mem => format_size(v),
            Self::Cpu if v.is_multiple_of(1000) => format!("{}", v / 1000),
            Self::Cpu => format!("{}.{:03}", v / 1000, v % 1000)
                .trim_end_matches('0')
                .to_string(),
            Self::Pids => v.to_string(),
            Self::Time if v.is_multiple_of(1000) => format!("{}s", v / 1000),
            Self::Time => format!("{v}ms"),
        }
    }
}

/// One scope.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    Fs(FsAccess, PathBuf),
    Net(NetMode),
    NetConnectTcp(u16),
    /// A host or network the egress gateway may reach (`net.egress:PATTERN[:PORTS]`).
    NetEgress(EgressRule),
    Res(Resource, u64),
    Sys(String),
    Mem {
        write: bool,
        namespace: String,
    },
    Degrade(Degradation),
    /// A right on the daemon's agent socket (see [`AGENT_RIGHTS`]).
    Agent(String),
    /// The runner that may execute the bundle (`runner:gvisor`, `runner:oci:/usr/sbin/runc`);
    /// the native runner needs no grant.
    Runner(RunnerChoice),
    /// An imported image the run may use as its root (`rootfs:image:alpine:3`), by the
    /// exact reference the request names. The host view needs no grant; a directory root
    /// is an `fs.exec` path.
    RootImage(String),
}

/// Whether `reference` is an image reference a request may name: `NAME[:TAG]` or
/// `NAME@sha256:...` of letters, digits and `-_./:@`, without `..`.
pub fn valid_image_reference(reference: &str) -> bool {
    !reference.is_empty()
        && reference.len() <= 255
        && reference
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:@".contains(c))
        && !reference.contains("..")
}

/// What `agent:RIGHT` may name: `audit` (append agent-authored audit events) and `spawn`
/// (submit sub-intents). A grant holding one of them, or a `mem.*` scope, gets the agent
/// socket when the daemon runs it.
pub const AGENT_RIGHTS: &[&str] = &["audit", "spawn"];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("scope `{input}`: {reason}")]
pub struct ScopeError {
    pub input: String,
    pub reason: String,
}

impl PartialOrd for NetMode {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for NetMode {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let rank = |m: &NetMode| match m {
            NetMode::None => 0,
            NetMode::Loopback => 1,
            NetMode::Egress => 2,
            NetMode::Host => 3,
        };
        rank(self).cmp(&rank(other))
    }
}

/// An absolute path without `.`, `..` or repeated separators.
fn clean_path(input: &str, raw: &str) -> Result<PathBuf, ScopeError> {
    let err = |reason: &str| ScopeError {
        input: input.to_string(),
        reason: reason.to_string(),
    };
    let path = Path::new(raw);
    if !path.is_absolute() {
        return Err(err("the path must be absolute"));
    }
    if raw.contains('\0') {
        return Err(err("the path contains a NUL byte"));
    }
    let mut clean = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(part) => clean.push(part),
            Component::ParentDir => return Err(err("`..` is not allowed in a path scope")),
            Component::Prefix(_) => return Err(err("not a Unix path")),
        }
    }
    Ok(clean)
}

impl Scope {
    /// Parses one scope in its textual form.
    pub fn parse(input: &str) -> Result<Scope, ScopeError> {
        let err = |reason: String| ScopeError {
            input: input.to_string(),
            reason,
        };
        let (family, arg) = input
            .split_once(':')
            .ok_or_else(|| err("expected FAMILY:VALUE, e.g. fs.write:/home/a/proj".into()))?;
        let scope = match family {
            "fs.read" => Scope::Fs(FsAccess::Read, clean_path(input, arg)?),
            "fs.exec" => Scope::Fs(FsAccess::Exec, clean_path(input, arg)?),
            "fs.write" => Scope::Fs(FsAccess::Write, clean_path(input, arg)?),
            "net" => Scope::Net(
                NetMode::parse(arg)
                    .ok_or_else(|| err("expected none, loopback, egress or host".into()))?,
            ),
            "net.egress" => {
                Scope::NetEgress(EgressRule::parse(arg).map_err(|e| err(e.to_string()))?)
            }
            "net.connect" => {
                let port = arg
                    .strip_prefix("tcp:")
                    .ok_or_else(|| err("expected net.connect:tcp:PORT".into()))?;
                let port: u16 = port
                    .parse()
                    .map_err(|_| err(format!("`{port}` is not a TCP port")))?;
                if port == 0 {
                    return Err(err("port 0 is not a port".into()));
                }
                Scope::NetConnectTcp(port)
            }
            "res.mem" => Scope::Res(
                Resource::Mem,
                parse_size(arg).map_err(|e| err(e.to_string()))?,
            ),
            "res.cpu" => Scope::Res(
                Resource::Cpu,
                parse_cpus(arg).map_err(|e| err(e.to_string()))? as u64,
            ),
            "res.pids" => Scope::Res(
                Resource::Pids,
                arg.parse()
                    .map_err(|_| err(format!("`{arg}` is not a count")))?,
            ),
            "res.time" => Scope::Res(
                Resource::Time,
                parse_duration(arg)
                    .map_err(|e| err(e.to_string()))?
                    .as_millis() as u64,
            ),
            "sys" => {
                if !SYSCALL_GROUPS.iter().any(|(g, _)| *g == arg) {
                    let known: Vec<_> = SYSCALL_GROUPS.iter().map(|(g, _)| *g).collect();
                    return Err(err(format!(
                        "unknown syscall group; known: {}",
                        known.join(", ")
                    )));
                }
                Scope::Sys(arg.to_string())
            }
            "mem.read" | "mem.write" => {
                let valid = !arg.is_empty()
                    && arg.len() <= 128
                    && arg
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
                if !valid {
                    return Err(err(
                        "a memory namespace is 1-128 of letters, digits, `-_./`".into(),
                    ));
                }
                Scope::Mem {
                    write: family == "mem.write",
                    namespace: arg.to_string(),
                }
            }
            "degrade" => Scope::Degrade(Degradation::parse(arg).ok_or_else(|| {
                let known: Vec<_> = Degradation::ALL.iter().map(|d| d.name()).collect();
                err(format!("unknown degradation; known: {}", known.join(", ")))
            })?),
            "agent" => {
                if !AGENT_RIGHTS.contains(&arg) {
                    return Err(err(format!(
                        "unknown agent right; known: {}",
                        AGENT_RIGHTS.join(", ")
                    )));
                }
                Scope::Agent(arg.to_string())
            }
            "runner" => Scope::Runner(RunnerChoice::parse(arg).map_err(err)?),
            "rootfs" => {
                let reference = arg
                    .strip_prefix("image:")
                    .ok_or_else(|| err("expected rootfs:image:NAME[:TAG]".into()))?;
                if !valid_image_reference(reference) {
                    return Err(err(format!("`{reference}` is not an image reference")));
                }
                Scope::RootImage(reference.to_string())
            }
            other => return Err(err(format!("unknown scope family `{other}`"))),
        };
        Ok(scope)
    }

    /// Whether this (granted) scope allows `requested`.
    pub fn covers(&self, requested: &Scope) -> bool {
        match (self, requested) {
            (Scope::Fs(granted, gp), Scope::Fs(asked, rp)) => {
                granted >= asked && rp.starts_with(gp)
            }
            (Scope::Net(g), Scope::Net(r)) => g >= r,
            (Scope::Net(NetMode::Host), Scope::NetConnectTcp(_)) => true,
            (Scope::NetConnectTcp(g), Scope::NetConnectTcp(r)) => g == r,
            // The host network reaches every host; an egress rule brings the egress mode
            // (a namespace whose only way out is the gateway) with it.
            (Scope::Net(NetMode::Host), Scope::NetEgress(_)) => true,
            (Scope::NetEgress(_), Scope::Net(NetMode::Egress | NetMode::Loopback)) => true,
            (Scope::NetEgress(g), Scope::NetEgress(r)) => g.covers(r),
            (Scope::Res(gk, gv), Scope::Res(rk, rv)) => gk == rk && rv <= gv,
            (Scope::Sys(g), Scope::Sys(r)) => g == r,
            (
                Scope::Mem {
                    write: gw,
                    namespace: gn,
                },
                Scope::Mem {
                    write: rw,
                    namespace: rn,
                },
            ) => gn == rn && (*gw || !*rw),
            (Scope::Degrade(g), Scope::Degrade(r)) => g == r,
            (Scope::Agent(g), Scope::Agent(r)) => g == r,
            (Scope::Runner(g), Scope::Runner(r)) => g == r,
            (Scope::RootImage(g), Scope::RootImage(r)) => g == r,
            _ => false,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Fs(access, path) => write!(f, "{}:{}", access.name(), path.display()),
            Scope::Net(mode) => write!(f, "net:{}", mode.as_str()),
            Scope::NetConnectTcp(port) => write!(f, "net.connect:tcp:{port}"),
            Scope::NetEgress(rule) => write!(f, "net.egress:{rule}"),
            Scope::Res(kind, v) => write!(f, "{}:{}", kind.name(), kind.format(*v)),
            Scope::Sys(group) => write!(f, "sys:{group}"),
            Scope::Mem { write, namespace } => {
                write!(
                    f,
                    "{}:{namespace}",
                    if *write { "mem.write" } else { "mem.read" }
                )
            }
            Scope::Degrade(d) => write!(f, "degrade:{}", d.name()),
            Scope::Agent(right) => write!(f, "agent:{right}"),
            Scope::Runner(runner) => write!(f, "runner:{}", runner.name()),
            Scope::RootImage(reference) => write!(f, "rootfs:image:{reference}"),
        }
    }
}

/// Whether `granted` covers every scope of `requested`; returns the ones it does not.
pub fn missing(granted: &[Scope], requested: &[Scope]) -> Vec<Scope> {
    requested
        .iter()
        .filter(|r| {
            // No network is no authority: `net:none` needs no grant, nor does the native
            // runner, which enforces the plan itself.
            if matches!(
                r,
                Scope::Net(NetMode::None) | Scope::Runner(RunnerChoice::Native)
            ) {
                return false;
            }
            !granted.iter().any(|g| g.covers(r))
        })
        .cloned()
        .collect()
}

/// The ceiling `scopes` put on `kind`, if any (the smallest when several).
pub fn ceiling(scopes: &[Scope], kind: Resource) -> Option<u64> {
    scopes
        .iter()
        .filter_map(|s| match s {
            Scope::Res(k, v) if *k == kind => Some(*v),
            _ => None,
        })
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> Scope {
        Scope::parse(text).unwrap()
    }

    #[test]
    fn every_family_round_trips_through_its_text() {
        for text in [
            "fs.read:/etc/x",
            "fs.exec:/opt/tool",
            "fs.write:/home/a/proj",
            "net:none",
            "net:loopback",
            "net:host",
            "net.connect:tcp:443",
            "res.mem:512MiB",
            "res.cpu:1.5",
            "res.cpu:2",
            "res.pids:64",
            "res.time:30s",
            "res.time:1500ms",
            "sys:ptrace",
            "mem.read:project",
            "mem.write:agents/a1",
            "degrade:landlock-net",
            "agent:audit",
            "agent:spawn",
        ] {
            assert_eq!(s(text).to_string(), text);
            assert_eq!(Scope::parse(&s(text).to_string()).unwrap(), s(text));
        }
        assert_eq!(s("fs.read://etc/./x/").to_string(), "fs.read:/etc/x");
    }

    /// Each refusal of the scope parser, with its whole message.
    #[test]
    fn every_refusal_quotes_the_scope_and_says_why() {
        let long = format!("mem.read:{}", "n".repeat(129));
        let cases = [
            ("nocolon", "expected FAMILY:VALUE, e.g. fs.write:/home/a/proj"),
            ("", "expected FAMILY:VALUE, e.g. fs.write:/home/a/proj"),
            ("admin:all", "unknown scope family `admin`"),
            ("fs.write:relative", "the path must be absolute"),
            ("fs.read:", "the path must be absolute"),
            ("fs.exec:/opt/\0x", "the path contains a NUL byte"),
            ("fs.write:/a/../b", "`..` is not allowed in a path scope"),
            ("net:wifi", "expected none, loopback or host"),
            ("net.connect:udp:53", "expected net.connect:tcp:PORT"),
            ("net.connect:443", "expected net.connect:tcp:PORT"),
            ("net.connect:tcp:70000", "`70000` is not a TCP port"),
            ("net.connect:tcp:", "`` is not a TCP port"),
            ("net.connect:tcp:0", "port 0 is not a port"),
            (
                "res.mem:lots",
                "`lots` is not a size: use a number with an optional unit B, KiB, MiB, GiB (or K, M, G, KB, MB, GB)",
            ),
            ("res.mem:99999999999TiB", "`99999999999TiB` is too large"),
            (
                "res.cpu:0",
                "`0` is not a CPU count: use a positive decimal number such as 0.5 or 2",
            ),
            ("res.pids:-1", "`-1` is not a count"),
            (
                "res.time:30",
                "`30` is not a duration: use a number with a unit ms, s, m or h (e.g. 30s)",
            ),
            ("sys:everything", "unknown syscall group; known: ptrace"),
            ("mem.read:", "a memory namespace is 1-128 of letters, digits, `-_./`"),
            ("mem.write:a b", "a memory namespace is 1-128 of letters, digits, `-_./`"),
            (
                long.as_str(),
                "a memory namespace is 1-128 of letters, digits, `-_./`",
            ),
            (
                "degrade:seccomp",
                "unknown degradation; known: landlock, landlock-net, landlock-scope, idmap",
            ),
            ("agent:root", "unknown agent right; known: audit, spawn"),
            ("agent:", "unknown agent right; known: audit, spawn"),
            (
                "runner:docker",
                "`docker` is not a runner: use native, gvisor or oci:/ABSOLUTE/PATH",
            ),
            (
                "runner:oci:",
                "`` must be an absolute path without `.`, `..` or repeated `/`",
            ),
            (
                "runner:oci:relative/runc",
                "`relative/runc` must be an absolute path without `.`, `..` or repeated `/`",
            ),
            (
                "runner:oci:/usr/../tmp/x",
                "`/usr/../tmp/x` must be an absolute path without `.`, `..` or repeated `/`",
            ),
            (
                "runner:oci:/usr/sbin//runc",
                "`/usr/sbin//runc` must be an absolute path without `.`, `..` or repeated `/`",
            ),
            (
                "runner:oci:/usr/sbin/./runc",
                "`/usr/sbin/./runc` must be an absolute path without `.`, `..` or repeated `/`",
            ),
            ("rootfs:alpine", "expected rootfs:image:NAME[:TAG]"),
            ("rootfs:image:", "`` is not an image reference"),
            ("rootfs:image:../x", "`../x` is not an image reference"),
            ("rootfs:image:a b", "`a b` is not an image reference"),
        ];
        for (input, reason) in cases {
            assert_eq!(
                Scope::parse(input),
                Err(ScopeError {
                    input: input.to_string(),
                    reason: reason.to_string(),
                })
            );
        }
        assert_eq!(
            Scope::parse("net:wifi").unwrap_err().to_string(),
            "scope `net:wifi`: expected none, loopback or host"
        );
    }

    #[test]
    fn path_scopes_cover_exactly_what_lies_beneath() {
        assert!(s("fs.write:/workspace").covers(&s("fs.write:/workspace/src")));
        assert!(s("fs.write:/workspace").covers(&s("fs.write:/workspace")));
        assert!(!s("fs.write:/workspace").covers(&s("fs.write:/workspacefoo")));
        assert!(!s("fs.write:/workspace/src").covers(&s("fs.write:/workspace")));
        assert!(s("fs.write:/w").covers(&s("fs.read:/w/a")));
        assert!(s("fs.exec:/w").covers(&s("fs.read:/w/a")));
        assert!(!s("fs.read:/w").covers(&s("fs.exec:/w")));
        assert!(!s("fs.exec:/w").covers(&s("fs.write:/w")));
    }

    #[test]
    fn limits_cover_smaller_requests_only() {
        assert!(s("res.mem:512MiB").covers(&s("res.mem:256MiB")));
        assert!(!s("res.mem:256MiB").covers(&s("res.mem:512MiB")));
        assert!(!s("res.mem:512MiB").covers(&s("res.pids:1")));
        assert!(
            s("net:host").covers(&s("net:loopback"))
                && s("net:host").covers(&s("net.connect:tcp:22"))
        );
        assert!(!s("net:loopback").covers(&s("net:host")));
        assert!(!s("net.connect:tcp:443").covers(&s("net.connect:tcp:80")));
        assert!(
            s("mem.write:p").covers(&s("mem.read:p")) && !s("mem.read:p").covers(&s("mem.write:p"))
        );
    }

    #[test]
    fn a_symlinked_grant_path_covers_only_its_own_name() {
        // A holder of fs.write:DIR/link who points `link` at another directory gains
        // nothing: the grant is matched by name, and the target's path is not under it.
        let dir = std::env::temp_dir().join(format!("covenant-scope-{}", std::process::id()));
        let real = dir.join("real");
        std::fs::create_dir_all(&real).unwrap();
        let link = dir.join("link");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let granted = [Scope::Fs(FsAccess::Write, link.clone())];
        let target = Scope::Fs(FsAccess::Write, real.join("src"));
        assert_eq!(
            missing(&granted, std::slice::from_ref(&target)),
            vec![target]
        );
        assert!(missing(&granted, &[Scope::Fs(FsAccess::Write, link.join("src"))]).is_empty());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_runner_other_than_native_is_granted_by_exact_name() {
        for text in [
            "runner:native",
            "runner:gvisor",
            "runner:oci:/usr/sbin/runc",
        ] {
            assert_eq!(s(text).to_string(), text);
        }
        for bad in [
            "runner:oci:relative/runc",
            "runner:oci:/usr/../tmp/x",
            "runner:oci:/usr/sbin//runc",
            "runner:oci:/usr/sbin/./runc",
            "runner:oci:",
            "runner:docker",
            "rootfs:alpine",
            "rootfs:image:",
            "rootfs:image:../x",
        ] {
            assert!(Scope::parse(bad).is_err(), "{bad} accepted");
        }
        let runc = s("runner:oci:/usr/sbin/runc");
        assert!(missing(std::slice::from_ref(&runc), std::slice::from_ref(&runc)).is_empty());
        let crun = s("runner:oci:/usr/bin/crun");
        assert_eq!(
            missing(std::slice::from_ref(&runc), std::slice::from_ref(&crun)),
            vec![crun]
        );
        let under = s("runner:oci:/usr/sbin/runc2");
        assert_eq!(missing(&[runc], std::slice::from_ref(&under)), vec![under]);
        assert_eq!(
            missing(&[], &[s("runner:gvisor")]),
            vec![s("runner:gvisor")]
        );
        assert!(missing(&[], &[s("runner:native")]).is_empty());
    }
}
