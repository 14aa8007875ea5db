//! Capabilities: each scope family allows what it grants and nothing else; attenuation
//! narrows, revocation reaches children, and untrusted or forged tokens are refused.

use crate::scene::{code, forked, stderr, stdout, Scene, EPERM};
use std::path::PathBuf;
use std::process::Output;

/// An issuer key trusted by the scene's store, an agent key, and helpers to grant.
struct Authority<'a> {
    scene: &'a Scene,
    issuer: PathBuf,
    agent: PathBuf,
}

impl<'a> Authority<'a> {
    fn new(scene: &'a Scene) -> Self {
        let issuer = scene.home.path().join("issuer.key");
        let agent = scene.home.path().join("agent.key");
        for key in [&issuer, &agent] {
            let out = scene
                .ctl()
                .args(["key", "gen", "--out"])
                .arg(key)
                .output()
                .unwrap();
            assert_eq!(code(&out), 0, "{}", stderr(&out));
        }
        let out = scene
            .ctl()
            .args(["key", "trust", "--name", "ci"])
            .arg(&issuer)
            .output()
            .unwrap();
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        Authority {
            scene,
            issuer,
            agent,
        }
    }

    fn agent_subject(&self) -> String {
        let out = self
            .scene
            .ctl()
            .args(["key", "pub"])
            .arg(&self.agent)
            .output()
            .unwrap();
        format!("key:{}", stdout(&out).trim())
    }

    /// Grants `scopes` to the agent key; returns the printed token.
    fn grant(&self, scopes: &[&str], ttl: &str) -> String {
        let mut cmd = self.scene.ctl();
        cmd.args(["cap", "grant", "--key"]).arg(&self.issuer).args([
            "--subject",
            &self.agent_subject(),
            "--ttl",
            ttl,
        ]);
        for s in scopes {
            cmd.args(["--scope", s]);
        }
        let out = cmd.output().unwrap();
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        stdout(&out).trim().to_string()
    }

    fn attenuate(&self, parent: &str, scopes: &[&str]) -> Output {
        let mut cmd = self.scene.ctl();
        cmd.args(["cap", "attenuate", "--from", parent, "--key"])
            .arg(&self.agent)
            .args(["--subject", "worker"]);
        for s in scopes {
            cmd.args(["--scope", s]);
        }
        cmd.output().unwrap()
    }

    fn run(&self, cap: &str, flags: &[&str], argv: &[&str]) -> Output {
        let mut all = vec!["--cap", cap];
        all.extend_from_slice(flags);
        self.scene.run(&all, argv)
    }
}

#[test]
fn each_scope_family_allows_what_it_grants_and_nothing_else() {
    let Some(s) = Scene::live() else { return };
    let a = Authority::new(&s);
    let ws = s.workspace.display().to_string();
    let data = s.home.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("secret"), "granted-read\n").unwrap();
    let data_s = data.display().to_string();
    let cap = a.grant(
        &[
            &format!("fs.write:{ws}"),
            &format!("fs.read:{data_s}"),
            "net:loopback",
            "res.mem:64MiB",
            "res.pids:16",
            "res.time:2s",
        ],
        "10m",
    );

    // write: granted workspace works; another directory is refused before anything runs.
    let out = a.run(
        &cap,
        &[],
        &["sh", "-c", "echo ok > /workspace/w && cat /workspace/w"],
    );
    assert_eq!(stdout(&out), "ok\n", "{}", stderr(&out));
    let elsewhere = s.home.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let out = a.run(&cap, &["--write", elsewhere.to_str().unwrap()], &["true"]);
    assert_eq!(code(&out), 125);
    assert!(
        stderr(&out).contains(&format!("fs.write:{}", elsewhere.display())),
        "{}",
        stderr(&out)
    );

    // read: granted read-only, not writable, not executable; a write request is refused.
    let out = a.run(
        &cap,
        &["--read", &data_s],
        &[
            "sh",
            "-c",
            &format!("cat {data_s}/secret; echo x > {data_s}/secret || echo RO"),
        ],
    );
    assert_eq!(stdout(&out), "granted-read\nRO\n", "{}", stderr(&out));
    let out = a.run(&cap, &["--write", &data_s], &["true"]);
    assert_eq!(code(&out), 125);

    // network: loopback granted, host refused.
    assert_eq!(code(&a.run(&cap, &["--net", "loopback"], &["true"])), 0);
    let out = a.run(&cap, &["--net", "host"], &["true"]);
    assert_eq!(code(&out), 125);
    assert!(stderr(&out).contains("net:host"), "{}", stderr(&out));

    // memory, pids, time: the grant's ceilings hold even when the request names none.
    let out = a.run(
        &cap,
        &[],
        &["python3", "-c", "x = bytearray(300 * 1024 * 1024)"],
    );
    assert_eq!(code(&out), 137, "{}", stderr(&out));
    let out = a.run(&cap, &[], &["python3", "/workspace/probe.py", "fork_bomb"]);
    let forked = forked(&out);
    assert!(forked < 16, "forked {forked} under res.pids:16");
    assert_eq!(code(&a.run(&cap, &[], &["sleep", "30"])), 124);
    let out = a.run(
        &cap,
        &["--memory", "1GiB", "--pids", "100", "--timeout", "1h"],
        &["true"],
    );
    assert_eq!(code(&out), 125);
    let err = stderr(&out);
    assert!(
        err.contains("res.mem:1GiB")
            && err.contains("res.pids:100")
            && err.contains("res.time:3600s"),
        "every missing scope is listed: {err}"
    );
}

#[test]
fn attenuated_tokens_narrow_and_revocation_reaches_children() {
    let Some(s) = Scene::live() else { return };
    let a = Authority::new(&s);
    let ws = s.workspace.display().to_string();
    let parent = a.grant(
        &[&format!("fs.write:{ws}"), "res.mem:512MiB", "net:host"],
        "10m",
    );
    let out = a.attenuate(&parent, &[&format!("fs.write:{ws}"), "res.mem:256MiB"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let child = stdout(&out).trim().to_string();
    assert_eq!(code(&a.run(&child, &[], &["true"])), 0);
    assert_eq!(
        code(&a.run(&child, &["--net", "host"], &["true"])),
        125,
        "the child dropped net:host"
    );

    let wider = a.attenuate(&parent, &[&format!("fs.write:{ws}"), "res.mem:1GiB"]);
    assert_ne!(code(&wider), 0);
    assert!(
        stderr(&wider).contains("res.mem:1GiB"),
        "{}",
        stderr(&wider)
    );
    let dropped = a.attenuate(&parent, &[&format!("fs.write:{ws}")]);
    assert!(
        stderr(&dropped).contains("drops the parent's ceiling"),
        "{}",
        stderr(&dropped)
    );

    let inspect = s.ctl().args(["cap", "inspect", &child]).output().unwrap();
    let text = stdout(&inspect);
    assert!(
        text.contains("link 0 (root)")
            && text.contains("link 1")
            && text.contains("valid on this host"),
        "{text}"
    );
    let root_id = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("id"))
        .unwrap()
        .trim()
        .to_string();
    let out = s.ctl().args(["cap", "revoke", &root_id]).output().unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let out = a.run(&child, &[], &["true"]);
    assert_eq!(code(&out), 125);
    assert!(
        stderr(&out).contains("link 0") && stderr(&out).contains("revoked"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        code(&s.ctl().args(["cap", "verify", &child]).output().unwrap()),
        1
    );
}

#[test]
fn untrusted_forged_and_garbage_capabilities_are_refused() {
    let Some(s) = Scene::live() else { return };
    let a = Authority::new(&s);
    let ws = s.workspace.display().to_string();
    let cap = a.grant(&[&format!("fs.write:{ws}")], "10m");
    let out = s.ctl().args(["key", "untrust", "ci"]).output().unwrap();
    assert_eq!(code(&out), 0);
    let out = a.run(&cap, &[], &["true"]);
    assert_eq!(code(&out), 125);
    assert!(
        stderr(&out).contains("not a trusted key"),
        "{}",
        stderr(&out)
    );
    let out = s
        .ctl()
        .args(["key", "trust", "--name", "ci"])
        .arg(&a.issuer)
        .output()
        .unwrap();
    assert_eq!(code(&out), 0);
    let mut forged = cap.clone().into_bytes();
    let i = forged.len() - 10;
    forged[i] = if forged[i] == b'A' { b'B' } else { b'A' };
    let out = a.run(&String::from_utf8(forged).unwrap(), &[], &["true"]);
    assert_eq!(code(&out), 125);
    assert!(stderr(&out).contains("signature"), "{}", stderr(&out));
    let out = a.run("cov1.garbage", &[], &["true"]);
    assert_eq!(code(&out), 125);
    assert!(stderr(&out).contains("capability"), "{}", stderr(&out));
}

#[test]
fn connect_ports_exec_paths_and_syscall_groups_are_enforced() {
    let Some(s) = Scene::live() else { return };
    let allowed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let denied = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (pa, pd) = (
        allowed.local_addr().unwrap().port(),
        denied.local_addr().unwrap().port(),
    );
    let flags = ["--net", "host", "--connect", &pa.to_string()];
    assert_eq!(
        s.probe(&flags, &format!("connect:127.0.0.1:{pa}")),
        0,
        "the granted port is reachable"
    );
    assert_eq!(
        s.probe(&flags, &format!("connect:127.0.0.1:{pd}")),
        libc::EACCES,
        "landlock stops other ports"
    );

    let tools = s.home.path().join("tools");
    std::fs::create_dir(&tools).unwrap();
    std::fs::copy("/usr/bin/true", tools.join("tool")).unwrap();
    let t = tools.to_str().unwrap();
    let tool = format!("{t}/tool");
    assert_eq!(
        code(&s.run(&["--exec", t], &[&tool])),
        0,
        "an fs.exec path runs"
    );
    let out = s.run(
        &["--read", t],
        &[
            "sh",
            "-c",
            &format!("{tool} && echo RAN; cat {tool} > /dev/null && echo READ"),
        ],
    );
    assert_eq!(
        stdout(&out),
        "READ\n",
        "an fs.read path is not executable: {}",
        stderr(&out)
    );

    assert_eq!(s.probe(&[], "ptrace"), EPERM);
    assert_eq!(
        s.probe(&["--syscalls", "ptrace"], "ptrace"),
        0,
        "sys:ptrace opens ptrace"
    );
    assert_eq!(
        s.probe(&["--syscalls", "ptrace"], "bpf"),
        EPERM,
        "and nothing else"
    );
}
