//! Images: imported images run on a throwaway overlay, archives import, an image in use is
//! kept, and a kept layer planted with symlinks redirects nothing.

use crate::scene::{
    all_runners, busybox_image, code, mounts_under, runtime, stderr, stdout, Scene,
};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn an_imported_image_runs_on_a_throwaway_overlay_under_every_runner() {
    let Some(s) = Scene::live() else { return };
    let Some(_) = busybox_image(&s) else { return };
    // `sh -c SCRIPT` on the image under `runner`.
    let on_image = |runner: &str, script: &str| {
        s.ctl()
            .args(["run", "--runner", runner, "--rootfs", "image:busy:1"])
            .args(["--", "sh", "-c", script])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    for runner in all_runners() {
        let out = on_image(
            &runner,
            "cat /etc/motd; echo changed > /etc/motd; echo new > /etc/new; cat /etc/motd; id -u",
        );
        assert_eq!(
            stdout(&out),
            "from the image\nchanged\n0\n",
            "{runner}: {}",
            stderr(&out)
        );
        let again = on_image(
            &runner,
            "cat /etc/motd; cat /etc/new 2>/dev/null || echo GONE",
        );
        assert_eq!(
            stdout(&again),
            "from the image\nGONE\n",
            "{runner}: the writable layer must not outlive the run"
        );
    }
    // Changes can be kept in a host directory instead (the overlay's writable layer).
    let keep = s.home.path().join("kept");
    let out = s
        .ctl()
        .args(["run", "--rootfs", "image:busy:1", "--keep-changes"])
        .arg(&keep)
        .args(["--", "sh", "-c", "echo kept > /etc/motd"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(keep.join("upper/etc/motd")).unwrap(),
        "kept\n"
    );
    let out = s
        .ctl()
        .args([
            "run",
            "--runner",
            "gvisor",
            "--rootfs",
            "image:busy:1",
            "--keep-changes",
        ])
        .arg(&keep)
        .args(["--", "true"])
        .output()
        .unwrap();
    if runtime("runsc").is_some() {
        assert_eq!(
            code(&out),
            125,
            "gVisor must refuse a kept layer it would write as host root"
        );
    }
    let overlays = mounts_under(s.home.path());
    assert_eq!(overlays, 0, "an overlay root or layer was left mounted");
}

#[test]
fn image_archives_import_and_rm_refuses_an_image_in_use() {
    let Some(s) = Scene::live() else { return };
    let Some(layout) = busybox_image(&s) else {
        return;
    };
    // The same layout as an OCI archive (a tar of the layout), named on import.
    let archive = s.home.path().join("busy.tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&archive)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
    let out = s
        .ctl()
        .args(["image", "import"])
        .arg(&archive)
        .args(["--name", "busy:tar"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let ls = stdout(&s.ctl().args(["image", "ls"]).output().unwrap());
    assert!(ls.contains("busy:1") && ls.contains("busy:tar"), "{ls}");

    // A running job keeps its image.
    let mut job = s
        .ctl()
        .args(["run", "--rootfs", "image:busy:tar", "--", "sleep", "30"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    // The run holds its image from before its bundle is written: wait for the bundle,
    // in the run's own mount namespace.
    let bundles = Path::new("/proc")
        .join(job.id().to_string())
        .join("root")
        .join(s.home.path().strip_prefix("/").unwrap())
        .join("home/bundles");
    let has_plan = || {
        std::fs::read_dir(&bundles)
            .map(|d| {
                d.flatten().any(|e| {
                    e.path().join("plan.json").exists() && e.path().join("config.json").exists()
                })
            })
            .unwrap_or(false)
    };
    while !has_plan() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(has_plan(), "the run wrote no bundle");
    let refused = loop {
        let out = s.ctl().args(["image", "rm", "busy:tar"]).output().unwrap();
        if code(&out) != 0 && stderr(&out).contains("in use") {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let inspect = stdout(
        &s.ctl()
            .args(["image", "inspect", "busy:tar"])
            .output()
            .unwrap(),
    );
    // SAFETY: kill(2) on a child this test started and has not reaped.
    unsafe { libc::kill(job.id() as i32, libc::SIGTERM) };
    let _ = job.wait();
    assert!(refused, "image rm did not refuse an image in use");
    assert!(inspect.contains("\"in_use\": true"), "{inspect}");
    assert_eq!(
        code(&s.ctl().args(["image", "rm", "busy:tar"]).output().unwrap()),
        0
    );

    // A hostile archive is refused naming the entry, and nothing lands outside the store.
    let hostile = s.home.path().join("hostile.tar");
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..14].copy_from_slice(b"../../../pwned");
    h.set_size(1);
    h.set_mode(0o644);
    h.set_cksum();
    b.append(&h, &b"x"[..]).unwrap();
    std::fs::write(&hostile, b.into_inner().unwrap()).unwrap();
    let out = s
        .ctl()
        .args(["image", "import"])
        .arg(&hostile)
        .args(["--name", "bad:1"])
        .output()
        .unwrap();
    assert_eq!(code(&out), 125);
    assert!(stderr(&out).contains("../../../pwned"), "{}", stderr(&out));
    assert!(!s.home.path().join("pwned").exists() && !s.home.path().join("home/pwned").exists());
    let gc = s.ctl().args(["image", "gc"]).output().unwrap();
    assert_eq!(code(&gc), 0, "{}", stderr(&gc));
}

#[test]
fn a_kept_layer_planted_with_symlinks_neither_chowns_nor_redirects_the_root() {
    let Some(s) = Scene::live() else { return };
    let base = s.home.path();
    // The victim stands in for /etc: root's, and the kept layer's owner plants links to it.
    let victim = base.join("victim");
    std::fs::create_dir(&victim).unwrap();
    std::fs::write(victim.join("passwd"), "precious").unwrap();
    let keep = base.join("keep");
    std::fs::create_dir(&keep).unwrap();
    std::os::unix::fs::symlink(&victim, keep.join("upper")).unwrap();
    std::os::unix::fs::symlink(&victim, keep.join("work")).unwrap();
    std::os::unix::fs::lchown(keep.join("upper"), Some(65534), Some(65534)).unwrap();
    std::os::unix::fs::chown(&keep, Some(65534), Some(65534)).unwrap();
    // A directory root owned by the sandbox's id range, as an imported image's is.
    let root = base.join("root");
    for d in ["etc", "proc", "dev", "sys", "tmp", "usr", "run"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    for (link, to) in [
        ("bin", "usr/bin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
    ] {
        std::os::unix::fs::symlink(to, root.join(link)).unwrap();
    }
    let chown = Command::new("chown")
        .args(["-R", "-h", "100000:100000"])
        .arg(&root)
        .status()
        .unwrap();
    assert!(chown.success());
    let request = |cmd: &str| {
        let mut c = s.ctl();
        c.arg(cmd)
            .arg("--rootfs")
            .arg(format!("dir:{}", root.display()))
            .args(["--exec", "/usr", "--keep-changes"])
            .arg(&keep)
            .args(["--", "/bin/sh", "-c", "echo pwned > /passwd"]);
        c.stdin(Stdio::null()).output().unwrap()
    };
    let plan = request("plan");
    assert_eq!(code(&plan), 0, "{}", stderr(&plan));
    let run = request("run");
    assert_eq!(code(&run), 125, "{}", stderr(&run));
    assert!(stderr(&run).contains("symlink"), "{}", stderr(&run));
    let md = std::fs::metadata(&victim).unwrap();
    assert_eq!((md.uid(), md.gid()), (0, 0), "the victim was given away");
    assert_eq!(
        std::fs::read_to_string(victim.join("passwd")).unwrap(),
        "precious"
    );
    // With the links gone, the layer is prepared for the sandbox's root by descriptor.
    std::fs::remove_file(keep.join("upper")).unwrap();
    std::fs::remove_file(keep.join("work")).unwrap();
    let run = request("run");
    assert_eq!(code(&run), 0, "{}", stderr(&run));
    assert_eq!(
        std::fs::read_to_string(keep.join("upper/passwd")).unwrap(),
        "pwned\n"
    );
    assert_eq!(std::fs::metadata(keep.join("upper")).unwrap().uid(), 100000);
}

/// An OCI runtime's container can outlive a `covenant-ctl` killed outright, and the run's
/// hold on its image dies with the CLI: `image rm` and `gc` still leave the image to the
/// container, until it is gone.
#[test]
fn an_image_under_a_container_that_outlived_its_supervisor_stays() {
    let Some(s) = Scene::live() else { return };
    let Some(_) = busybox_image(&s) else { return };
    let Some(runc) = runtime("runc") else { return };
    let mut ctl = s
        .ctl()
        .args([
            "run",
            "--runner",
            &format!("oci:{runc}"),
            "--rootfs",
            "image:busy:1",
        ])
        .args(["--", "sleep", "300"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let runtime_dir = s.home.path().join("home/runtime");
    let deadline = Instant::now() + Duration::from_secs(20);
    let container = loop {
        let pid = std::fs::read_dir(&runtime_dir)
            .into_iter()
            .flatten()
            .flatten()
            .find_map(|e| std::fs::read_to_string(e.path().join("container.pid")).ok())
            .and_then(|p| p.trim().parse::<i32>().ok());
        if let Some(pid) = pid {
            break pid;
        }
        assert!(Instant::now() < deadline, "the container did not start");
        std::thread::sleep(Duration::from_millis(50));
    };
    // SAFETY: kill(2) on a child this test started and has not reaped.
    unsafe { libc::kill(ctl.id() as i32, libc::SIGKILL) };
    let _ = ctl.wait();
    assert!(
        Path::new(&format!("/proc/{container}")).exists(),
        "the container died with its supervisor: this test shows nothing"
    );
    let rm = s.ctl().args(["image", "rm", "busy:1"]).output().unwrap();
    // The same home named through a symlink: the layers are compared as files, not names.
    let link = s.home.path().join("home-link");
    std::os::unix::fs::symlink(s.home.path().join("home"), &link).unwrap();
    let rm_linked = s
        .ctl()
        .env("COVENANT_HOME", &link)
        .args(["image", "rm", "busy:1"])
        .output()
        .unwrap();
    let gc = s.ctl().args(["image", "gc"]).output().unwrap();
    let inspect = stdout(
        &s.ctl()
            .args(["image", "inspect", "busy:1"])
            .output()
            .unwrap(),
    );
    let listing = Command::new("nsenter")
        .args(["-t", &container.to_string(), "-m", "ls", "/bin/sh"])
        .output()
        .unwrap();
    // SAFETY: kill(2) on the container's process, which this test's run started.
    unsafe { libc::kill(container, libc::SIGKILL) };
    assert_ne!(
        code(&rm),
        0,
        "image rm removed an image a container runs on"
    );
    assert!(stderr(&rm).contains("in use"), "{}", stderr(&rm));
    assert!(
        stderr(&rm_linked).contains("in use"),
        "{}",
        stderr(&rm_linked)
    );
    assert_eq!(code(&gc), 0, "{}", stderr(&gc));
    assert!(inspect.contains("\"in_use\": true"), "{inspect}");
    assert_eq!(
        code(&listing),
        0,
        "the container lost its root: {}",
        stderr(&listing)
    );
    // Once the container is gone, the image can go.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{container}")).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let rm = s.ctl().args(["image", "rm", "busy:1"]).output().unwrap();
    // The runtime's cgroups of the killed run (a later run of this home would sweep them).
    for run in std::fs::read_dir(&runtime_dir).unwrap().flatten() {
        for hierarchy in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
            let _ = std::fs::remove_dir(hierarchy.path().join("covenant").join(run.file_name()));
        }
    }
    assert_eq!(code(&rm), 0, "{}", stderr(&rm));
}
