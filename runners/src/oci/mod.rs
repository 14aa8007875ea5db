//! Runners that drive an external OCI runtime through its command line: `oci:PATH` for
//! any runc-compatible binary (runc, crun) and `gvisor` for runsc. Each run goes through
//! the runtime's full lifecycle (create, start, wait, kill, delete) with a private state
//! directory, so nothing of it is left behind.
//!
//! Fail closed: before anything is created, every restriction the bundle carries is
//! matched to how this runtime enforces it, and a bundle with one it cannot enforce is
//! refused naming it:
//!
//! | restriction | runc / crun | gVisor (runsc) |
//! |---|---|---|
//! | namespaces, uid maps, mounts, caps, `no_new_privs`, rlimits, seccomp | the runtime, from `config.json` | the sentry; seccomp inside it (`--oci-seccomp`) |
//! | landlock (`org.opencovenant.landlock`) | `covenant-ctl enforce` injected as the first program | path rules: the sentry's own mount table; TCP port rules: refused |
//! | cgroup limits | the runtime (`linux.resources`, under `covenant/ID`) | Covenant's cgroup around the whole sandbox (`--ignore-cgroups`) |
//! | network `none` / `loopback` / `host` | network namespace (landlock denies TCP for `none`) | `--network=none` / `none` / `host` |
//! | network `egress` | joins a namespace Covenant prepared with the gateway's link | `--network=sandbox` in that namespace: netstack takes the link over (`--gso=false`) |
//! | idmapped writable paths | refused (degradation `idmap`) | an idmapped clone (owner ↔ the sandbox's user) under the gofer guard (`gofer_guard.rs`); without an idmap, refused |
//! | host sockets (`org.opencovenant.host-sockets`, the agent socket) | the bind mount itself | `--host-uds=open` with every `connect` of runsc decided by the supervisor (`host_sockets.rs`) |
//! | timeout | Covenant kills the container | Covenant kills the sandbox |

mod decide;
mod gofer_guard;
mod host_sockets;
mod lifecycle;
mod runner;

pub use runner::{
    trusted_binary, Flavor, OciError, OciRunner, GVISOR_MEMORY_ALLOWANCE, GVISOR_PIDS_ALLOWANCE,
    GVISOR_PIDS_PER_TASK,
};

#[cfg(test)]
mod tests {
    use super::decide::*;

    use crate::native::landlock::{check_support, kernel_abi};

    use crate::outcome::RunnerContext;
    use covenant_policy::annotations::{self, LandlockPolicy};
    use covenant_policy::Degradation;

    use oci_spec::runtime::Spec;

    use std::fs;

    use std::path::{Path, PathBuf};

    use super::runner::*;

    use covenant_images::{write_bundle, IdentityMap};
    use covenant_policy::{compile_request, Manifest};

    #[test]
    fn a_runtime_binary_others_could_write_is_refused() {
        // Under /tmp (1777) anybody could have planted or could swap it.
        let dir = tempfile::tempdir().unwrap();
        let planted = dir.path().join("runc");
        fs::copy("/bin/true", &planted).unwrap();
        let err = trusted_binary(&planted).unwrap_err();
        assert!(matches!(err, OciError::Untrusted { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("writable by its group or by others"),
            "{err}"
        );
        // A symlink to a trusted binary, from a folder others can write, is refused too.
        let link = dir.path().join("true");
        std::os::unix::fs::symlink("/usr/bin/true", &link).unwrap();
        assert!(matches!(
            trusted_binary(&link),
            Err(OciError::Untrusted { .. })
        ));
        assert!(trusted_binary(Path::new("usr/bin/true")).is_err());
        // The system's own binaries, also through root's symlinks (/bin on merged /usr).
        assert!(trusted_binary(Path::new("/usr/bin/true")).is_ok());
        assert!(trusted_binary(Path::new("/bin/true")).is_ok());
    }

    fn runner() -> OciRunner {
        let ctx = RunnerContext {
            state_dir: std::env::temp_dir(),
            enforcer: Some(PathBuf::from("/bin/true")),
            owner: None,
        };
        OciRunner::generic(Path::new("/bin/true"), &ctx).unwrap()
    }

    /// A bundle with `edit` applied to its config.json.
    fn bundle(edit: impl FnOnce(&mut serde_json::Value)) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Manifest::parse("version = 1\ncommand = [\"true\"]\n").unwrap();
        m.base_dir = dir.path().to_path_buf();
        let plan = compile_request(&m, "job-oci").unwrap();
        write_bundle(
            &plan,
            &dir.path().join("b"),
            IdentityMap::subordinate(100_000, 100_000),
        )
        .unwrap();
        let path = dir.path().join("b/config.json");
        let mut config: serde_json::Value =
            serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        edit(&mut config);
        fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
        dir
    }

    fn gvisor() -> OciRunner {
        OciRunner {
            binary: PathBuf::from("/usr/bin/runsc"),
            flavor: Flavor::Gvisor {
                platform: "ptrace".into(),
            },
            ctx: RunnerContext {
                state_dir: std::env::temp_dir(),
                enforcer: None,
                owner: None,
            },
            cgroup_root: "/sys/fs/cgroup".into(),
        }
    }

    fn without_enforcer() -> OciRunner {
        let mut r = runner();
        r.ctx.enforcer = None;
        r
    }

    /// What `decide` says of the fixture bundle with `edit` applied to its config.
    fn refusal(r: &OciRunner, edit: impl FnOnce(&mut serde_json::Value)) -> String {
        let dir = bundle(edit);
        match r.decide(&dir.path().join("b")) {
            Ok(_) => panic!("accepted"),
            Err(e) => e.to_string(),
        }
    }

    fn note(config: &mut serde_json::Value, key: &str, value: &str) {
        config["annotations"][key] = value.into();
    }

    type Edit = fn(&mut serde_json::Value);

    const IDMAPPED: &str = r#"[{"destination": "/workspace", "host_uid": 1000, "host_gid": 1000}]"#;

    /// Each refusal of `decide` that does not depend on the kernel, by the one thing
    /// changed from a bundle both runtimes accept.
    #[test]
    fn every_refusal_names_the_restriction_and_the_reason() {
        use serde_json::json;
        const RUNC: &str = "oci:/usr/bin/true";
        let runc = runner();
        let bare = without_enforcer();
        let gvisor = gvisor();
        let cases: &[(&str, &OciRunner, Edit, String)] = &[
            (
                "degradations that are not JSON",
                &runc,
                |c| note(c, annotations::DEGRADATIONS, "landlock"),
                "config.json: annotation org.opencovenant.accepted-degradations: expected value at line 1 column 1".into(),
            ),
            (
                "an unknown root layout",
                &runc,
                |c| note(c, annotations::ROOTFS, r#"{"layout": "squashfs"}"#),
                "config.json: annotation org.opencovenant.rootfs: unknown variant `squashfs`, expected one of `skeleton`, `in-memory`, `overlay` at line 1 column 21".into(),
            ),
            (
                "idmapped mounts that are not a list",
                &runc,
                |c| note(c, annotations::IDMAP, "{}"),
                "config.json: annotation org.opencovenant.idmap: invalid type: map, expected a sequence at line 1 column 0".into(),
            ),
            (
                "a landlock ruleset without its paths",
                &runc,
                |c| note(c, annotations::LANDLOCK, r#"{"net": {"mode": "deny-all"}, "scope": true}"#),
                "config.json: annotation org.opencovenant.landlock: missing field `fs` at line 1 column 44".into(),
            ),
            (
                "an in-memory root",
                &runc,
                |c| note(c, annotations::ROOTFS, r#"{"layout": "in-memory", "links": []}"#),
                format!("{RUNC} cannot enforce the in-memory root: only the native runner builds it; write a portable bundle"),
            ),
            (
                "an idmapped mount without the degradation",
                &runc,
                |c| note(c, annotations::IDMAP, IDMAPPED),
                format!("{RUNC} cannot enforce the idmapped mount of /workspace: this runtime does not idmap bind mounts; accept the degradation `idmap` to bind without"),
            ),
            (
                "no seccomp filter",
                &runc,
                |c| {
                    c["linux"].as_object_mut().unwrap().remove("seccomp");
                },
                format!("{RUNC} cannot enforce seccomp: the bundle has no linux.seccomp filter"),
            ),
            (
                "no landlock ruleset",
                &runc,
                |c| {
                    c["annotations"].as_object_mut().unwrap().remove(annotations::LANDLOCK);
                },
                format!("{RUNC} cannot enforce landlock: the bundle has no org.opencovenant.landlock ruleset; accept the degradation `landlock` to run anyway"),
            ),
            (
                "no enforcer to load the ioctl rules",
                &bare,
                |c| {
                    c["annotations"].as_object_mut().unwrap().remove(annotations::LANDLOCK);
                    note(c, annotations::DEGRADATIONS, r#"["landlock"]"#);
                },
                format!("{RUNC} cannot enforce seccomp: no enforcer binary to inject for the ioctl rules libseccomp drops"),
            ),
            (
                "a timeout that is not a number",
                &runc,
                |c| note(c, annotations::TIMEOUT_MS, "10s"),
                "config.json: annotation org.opencovenant.timeout-ms: `10s` is not a number of milliseconds".into(),
            ),
            (
                "no root",
                &runc,
                |c| {
                    c.as_object_mut().unwrap().remove("root");
                },
                "config.json: root missing".into(),
            ),
            (
                "a writable bind under gVisor",
                &gvisor,
                |c| {
                    c["mounts"].as_array_mut().unwrap().push(json!({
                        "destination": "/w", "type": "bind", "source": "/srv/w", "options": ["rbind"]
                    }));
                },
                "gvisor cannot enforce fs.write:/srv/w: gVisor's gofer writes to host paths as host root, so a writable path is only given to it idmapped to the path's owner, and this one has no idmap (org.opencovenant.idmap); use the native runner, or run as root with a subordinate id range".into(),
            ),
            (
                "TCP port rules under gVisor",
                &gvisor,
                |c| note(c, annotations::LANDLOCK, r#"{"fs": [], "net": {"mode": "connect-only", "ports": [443]}, "scope": true}"#),
                "gvisor cannot enforce net.connect:tcp: gVisor's netstack has no per-port filter".into(),
            ),
            (
                "net egress without its rules, under gVisor",
                &gvisor,
                |c| note(c, annotations::NET, "egress"),
                "gvisor cannot enforce net egress: the bundle names no rules".into(),
            ),
            (
                "a host socket in no bind mount, under gVisor",
                &gvisor,
                |c| note(c, annotations::HOST_SOCKETS, r#"["/run/covenant/agent.sock"]"#),
                "gvisor cannot enforce the host socket /run/covenant/agent.sock: it lies in no bind mount".into(),
            ),
            (
                "a host socket that is not one, under gVisor",
                &gvisor,
                |c| {
                    c["mounts"].as_array_mut().unwrap().push(json!({
                        "destination": "/run/covenant", "type": "bind", "source": "/nonexistent/agents/job", "options": ["rbind", "ro"]
                    }));
                    note(c, annotations::HOST_SOCKETS, r#"["/run/covenant/agent.sock"]"#);
                },
                "gvisor cannot enforce the host socket /run/covenant/agent.sock: /nonexistent/agents/job/agent.sock is not a unix socket".into(),
            ),
            (
                "kept root changes under gVisor",
                &gvisor,
                |c| note(c, annotations::ROOTFS, r#"{"layout": "overlay", "lower": ["/img"], "keep": "/srv/keep"}"#),
                "gvisor cannot enforce fs.write:/srv/keep: gVisor's gofer writes kept changes as host root; keep changes with the native runner".into(),
            ),
        ];
        let mut wrong = Vec::new();
        for (what, r, edit, expected) in cases {
            let got = refusal(r, edit);
            if &got != expected {
                wrong.push(format!("{what}:\n  expected {expected}\n  got      {got}"));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn a_bundle_without_config_json_is_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let reason = Spec::load(dir.path().join("config.json"))
            .unwrap_err()
            .to_string();
        match runner().decide(dir.path()) {
            Err(OciError::Spec(got)) => assert_eq!(got, reason),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("accepted"),
        }
    }

    /// With a ruleset to enforce, the kernel's support is checked first, then the runner
    /// needs its enforcer; which of the two refuses depends on the kernel's landlock ABI.
    #[test]
    fn landlock_needs_kernel_support_and_then_the_enforcer() {
        let dir = bundle(|_| {});
        let config = Spec::load(dir.path().join("b/config.json")).unwrap();
        let policy: LandlockPolicy = annotation(&config, annotations::LANDLOCK).unwrap().unwrap();
        let expected = match check_support(&policy, kernel_abi(), &[]) {
            Err(e) => e.to_string(),
            Ok(plan) if plan.fs => {
                "oci:/usr/bin/true cannot enforce landlock: no enforcer binary to inject".into()
            }
            Ok(_) => "oci:/usr/bin/true cannot enforce seccomp: no enforcer binary to inject for the ioctl rules libseccomp drops".into(),
        };
        assert_eq!(refusal(&without_enforcer(), |_| {}), expected);
    }

    #[test]
    fn what_a_refusal_guards_is_accepted_in_its_allowed_forms() {
        let accepted = |r: &OciRunner, edit: Edit| {
            let dir = bundle(edit);
            r.decide(&dir.path().join("b"))
                .map(|d| d.degradations)
                .unwrap()
        };
        // An idmapped mount, bound without idmapping once that is accepted.
        let degraded = accepted(&runner(), |c| {
            note(c, annotations::IDMAP, IDMAPPED);
            note(c, annotations::DEGRADATIONS, r#"["idmap"]"#);
        });
        assert!(degraded.contains(&Degradation::Idmap));
        // gVisor: a writable bind the bundle idmaps, given to runsc through an idmapped
        // clone owned by the path's owner.
        let dir = bundle(|c| {
            c["mounts"].as_array_mut().unwrap().push(serde_json::json!({
                "destination": "/workspace", "type": "bind", "source": "/srv/w", "options": ["rbind"]
            }));
            note(c, annotations::IDMAP, IDMAPPED);
        });
        let d = gvisor().decide(&dir.path().join("b")).unwrap();
        assert_eq!(d.writable.len(), 1);
        assert_eq!(d.writable[0].source, Path::new("/srv/w"));
        assert_eq!(
            (d.writable[0].owner, d.writable[0].sandbox),
            ((1000, 1000), (0, 0))
        );
        assert!(d.degradations.is_empty(), "bound idmapped, not degraded");
        // gVisor: net egress, on runsc's own network stack in the namespace prepared with
        // the gateway's link, with the gateway's rules.
        let dir = bundle(|c| {
            note(c, annotations::NET, "egress");
            note(
                c,
                annotations::EGRESS,
                r#"[{"target": {"name": "api.test"}, "ports": [443]}]"#,
            );
        });
        let d = gvisor().decide(&dir.path().join("b")).unwrap();
        assert_eq!(d.network, "sandbox");
        assert_eq!(d.egress.as_ref().map(Vec::len), Some(1));
        // gVisor: a host socket the program may connect to, in a read-only bind of a folder
        // of another owner, which runsc is given idmapped (read-only) so that its owner is
        // the sandbox's user.
        let agents = tempfile::tempdir().unwrap();
        let _listener =
            std::os::unix::net::UnixListener::bind(agents.path().join("agent.sock")).unwrap();
        let owner = {
            use std::os::unix::fs::MetadataExt;
            let md = fs::metadata(agents.path()).unwrap();
            (md.uid(), md.gid())
        };
        let source = agents.path().to_path_buf();
        let dir = bundle(move |c| {
            c["mounts"].as_array_mut().unwrap().push(serde_json::json!({
                "destination": "/run/covenant", "type": "bind", "source": source, "options": ["rbind", "ro"]
            }));
            note(
                c,
                annotations::HOST_SOCKETS,
                r#"["/run/covenant/agent.sock"]"#,
            );
        });
        let d = gvisor().decide(&dir.path().join("b")).unwrap();
        assert_eq!(d.host_sockets.len(), 1);
        assert_eq!(d.host_sockets[0].host, agents.path().join("agent.sock"));
        let idmapped = d
            .writable
            .iter()
            .find(|w| w.destination == Path::new("/run/covenant"))
            .unwrap();
        assert_eq!(
            (idmapped.owner, idmapped.sandbox, idmapped.writable),
            (owner, (0, 0), false)
        );
        // gVisor: a read-only bind, and an overlay root whose changes are thrown away.
        accepted(&gvisor(), |c| {
            c["mounts"].as_array_mut().unwrap().push(serde_json::json!({
                "destination": "/r", "type": "bind", "source": "/srv/r", "options": ["rbind", "ro"]
            }));
            note(
                c,
                annotations::ROOTFS,
                r#"{"layout": "overlay", "lower": ["/img"]}"#,
            );
        });
    }

    /// Under gVisor the sentry refuses a setuid or setgid mode itself and lets `clone3`
    /// through to its own ENOSYS; every other rule is the bundle's.
    #[test]
    fn the_sentry_profile_refuses_special_modes_and_lets_clone3_fall_back() {
        let dir = bundle(|_| {});
        let config = Spec::load(dir.path().join("b/config.json")).unwrap();
        let original = config.linux().as_ref().unwrap().seccomp().clone().unwrap();
        let derived = sentry_seccomp(original.clone()).unwrap();
        let rules = derived.syscalls().clone().unwrap();
        let of = |name: &str| -> Vec<_> {
            rules
                .iter()
                .filter(|r| r.names().iter().any(|n| n == name))
                .collect()
        };
        for call in ["chmod", "fchmod", "fchmodat"] {
            let found = of(call);
            assert_eq!(found.len(), 3, "{call}: {found:?}");
            assert!(
                found.iter().all(|r| r.args().is_some()),
                "{call} allowed outright"
            );
            let denials: Vec<_> = found
                .iter()
                .filter(|r| r.action() == oci_spec::runtime::LinuxSeccompAction::ScmpActErrno)
                .flat_map(|r| r.args().clone().unwrap())
                .map(|a| (a.value(), a.value_two()))
                .collect();
            assert_eq!(
                denials,
                vec![(0o4000, Some(0o4000)), (0o2000, Some(0o2000))]
            );
        }
        let clone3 = of("clone3");
        assert_eq!(clone3.len(), 1);
        assert_eq!(
            clone3[0].action(),
            oci_spec::runtime::LinuxSeccompAction::ScmpActAllow
        );
        // Nothing else changed: the same rules for every other call.
        let others = |s: &oci_spec::runtime::LinuxSeccomp| -> usize {
            s.syscalls()
                .clone()
                .unwrap()
                .iter()
                .flat_map(|r| r.names().clone())
                .filter(|n| !["chmod", "fchmod", "fchmodat", "clone3"].contains(&n.as_str()))
                .count()
        };
        assert_eq!(others(&original), others(&derived));
    }
}
