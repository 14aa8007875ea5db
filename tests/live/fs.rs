//! Filesystem scopes: what the sandbox may read and write on the host, who owns what it
//! writes there, and that no other user reads the home's own files.

use crate::scene::{code, stderr, stdout, Scene};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

#[test]
fn reading_host_secrets_is_denied() {
    let Some(s) = Scene::live() else { return };
    let out = s.sh("cat /etc/shadow; ls /root; ls /home; cat /etc/passwd");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("/etc/shadow") && err.contains("No such file"),
        "{err}"
    );
    assert!(err.contains("/root") && err.contains("/home"), "{err}");
    assert!(
        !stdout(&out).contains("daemon:"),
        "host accounts leaked: {}",
        stdout(&out)
    );
}

#[test]
fn writing_outside_workspace_and_tmp_is_denied() {
    let Some(s) = Scene::live() else { return };
    let script = "for p in /usr/evil /etc/evil /evil /bin/evil /proc/sys/kernel/hostname; do \
                  if echo x > $p 2>/dev/null; then echo WROTE $p; else echo DENIED $p; fi; done; \
                  echo ok > /tmp/t && echo ok > /workspace/w && echo WRITABLE";
    let out = s.sh(script);
    let text = stdout(&out);
    assert!(!text.contains("WROTE"), "{text}");
    assert_eq!(text.matches("DENIED").count(), 5, "{text}");
    assert!(text.contains("WRITABLE"), "{text}{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(s.workspace.join("w")).unwrap(),
        "ok\n"
    );
}

#[test]
fn workspace_files_belong_to_its_owner_on_the_host() {
    let Some(s) = Scene::live() else { return };
    std::os::unix::fs::chown(&s.workspace, Some(1234), Some(2345)).unwrap();
    let out = s.sh("stat -c '%u:%g' /workspace; id -u; echo hi > /workspace/made");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "0:0\n0\n",
        "the workspace appears owned by the sandbox's user"
    );
    let meta = std::fs::metadata(s.workspace.join("made")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (1234, 2345));
}

/// Tries to read `path` as user `nobody`; returns what `cat` said.
fn read_as_nobody(path: &Path) -> Output {
    use std::os::unix::process::CommandExt;
    Command::new("cat")
        .arg(path)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap()
}

/// `out` is another user's read of `f`, refused by the file's modes.
fn assert_denied(out: &Output, f: &Path) {
    assert_ne!(code(out), 0, "nobody read {}", f.display());
    assert!(
        stderr(out).contains("Permission denied"),
        "{}: {}",
        f.display(),
        stderr(out)
    );
}

#[test]
fn a_private_home_runs_and_other_users_read_none_of_its_files() {
    let Some(s) = Scene::live() else { return };
    // A home only its owner may pass through, as `mktemp -d` makes it.
    std::fs::set_permissions(s.home.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let out = s.sh("echo ran > /workspace/ran");
    assert_eq!(code(&out), 0, "a 0700 home must run: {}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(s.workspace.join("ran")).unwrap(),
        "ran\n"
    );

    // Open the way to the files, so that only their own modes stand between them and
    // another user.
    std::fs::set_permissions(s.home.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let home = s.home.path().join("home");
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o711)).unwrap();
    let mut running = s
        .ctl()
        .arg("run")
        .arg("--workspace")
        .arg(&s.workspace)
        .args(["--env", "SECRET=hunter2-live", "--", "sleep", "20"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The bundle lives in the run's own mount namespace: root finds it through the
    // run's root, and the host's folder stays empty.
    let deadline = Instant::now() + Duration::from_secs(10);
    let inside = Path::new("/proc")
        .join(running.id().to_string())
        .join("root")
        .join(home.strip_prefix("/").unwrap());
    let bundle = loop {
        let found = std::fs::read_dir(inside.join("bundles"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.join("config.json").exists() && p.join("plan.json").exists());
        if let Some(b) = found {
            break b;
        }
        assert!(Instant::now() < deadline, "the run wrote no bundle");
        std::thread::sleep(Duration::from_millis(20));
    };
    let on_host: Vec<_> = std::fs::read_dir(home.join("bundles"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(
        on_host.is_empty(),
        "the host sees the run's bundle: {on_host:?}"
    );
    let config = bundle.join("config.json");
    assert!(std::fs::read_to_string(&config)
        .unwrap()
        .contains("hunter2-live"));
    // Inside the run's namespace, only the files' own modes stand between them and
    // another user.
    let in_run = |p: &Path| home.join(p.strip_prefix(&inside).unwrap());
    for f in [config, bundle.join("plan.json")] {
        let out = Command::new("nsenter")
            .arg(format!("--mount=/proc/{}/ns/mnt", running.id()))
            .args(["--setuid", "65534", "--setgid", "65534", "cat"])
            .arg(in_run(&f))
            .output()
            .unwrap();
        assert_denied(&out, &f);
    }
    let mut files = vec![
        home.join("covenant.db"),
        home.join("covenant.db-wal"),
        home.join("supervisor.key"),
        home.join("operator.key"),
    ];
    if home.join("covenant.db-shm").exists() {
        files.push(home.join("covenant.db-shm"));
    }
    for f in &files {
        assert!(f.exists(), "{} does not exist", f.display());
        assert_denied(&read_as_nobody(f), f);
    }
    let _ = running.kill();
    let _ = running.wait();
    crate::scene::remove_cgroups_of(&home);

    // A home an older build left readable is tightened when the store opens.
    let db = home.join("covenant.db");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = s.run(&[], &["true"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(std::fs::metadata(&db).unwrap().mode() & 0o777, 0o600);
}
