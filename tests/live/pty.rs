//! The caller's terminal: a hostile run shares it and must leave it as it found it.

use crate::scene::{Scene, EPERM};
use covenant_test_support::cannot_run;
use std::path::Path;
use std::process::Stdio;

/// A pseudo-terminal pair: (controller, terminal).
fn open_pty() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    use std::os::fd::FromRawFd;
    let (mut controller, mut terminal) = (-1, -1);
    // SAFETY: openpty writes two descriptors; the name, settings and size are optional.
    let rc = unsafe {
        libc::openpty(
            &mut controller,
            &mut terminal,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: the descriptor is new and owned here.
    let controller = unsafe { std::os::fd::OwnedFd::from_raw_fd(controller) };
    // SAFETY: the descriptor is new and owned here.
    let terminal = unsafe { std::os::fd::OwnedFd::from_raw_fd(terminal) };
    (controller, terminal)
}

/// What a terminal's settings are: modes, line discipline and size.
fn terminal_state(fd: &std::os::fd::OwnedFd) -> (String, i32, (u16, u16)) {
    use std::os::fd::AsRawFd;
    // SAFETY: termios is plain data; all-zero is a valid value.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: tcgetattr fills the termios passed, which outlives the call.
    let rc = unsafe { libc::tcgetattr(fd.as_raw_fd(), &mut t) };
    assert_eq!(rc, 0, "tcgetattr: {}", std::io::Error::last_os_error());
    let mut ldisc: libc::c_int = -1;
    // SAFETY: TIOCGETD writes one int, which outlives the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGETD, &mut ldisc) };
    assert_eq!(rc, 0);
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ fills the winsize passed, which outlives the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut size) };
    assert_eq!(rc, 0);
    let modes = format!(
        "{:x} {:x} {:x} {:x} {:?}",
        t.c_iflag, t.c_oflag, t.c_cflag, t.c_lflag, t.c_cc
    );
    (modes, ldisc, (size.ws_row, size.ws_col))
}

#[test]
fn the_callers_terminal_keeps_its_settings_after_a_hostile_run() {
    let Some(s) = Scene::live() else { return };
    // runc and crun build their filters with libseccomp, which reads the ioctl rules its
    // own way: the terminal must hold under every runner that shares it.
    for (runner, extra) in [
        ("native", &[][..]),
        ("oci:/usr/sbin/runc", &["--accept-degradation", "idmap"][..]),
        ("oci:/usr/bin/crun", &["--accept-degradation", "idmap"][..]),
    ] {
        hostile_run_on_a_pty(&s, runner, extra, EPERM);
    }
    // Under gVisor the caller's terminal is not a terminal inside at all: every terminal
    // call answers ENOTTY from the sentry, and nothing reaches the host's.
    if Path::new("/usr/bin/runsc").exists() || Path::new("/usr/sbin/runsc").exists() {
        hostile_run_on_a_pty(&s, "gvisor", &[], libc::ENOTTY);
    } else {
        cannot_run("runsc is not installed (apt-get install runsc)");
    }
}

/// Runs the terminal probes on a fresh pty under `runner`; each must fail with `denied`
/// (tcdrain too, unless `denied` is EPERM: seccomp lets it through), and the terminal's
/// settings must be as they were.
fn hostile_run_on_a_pty(s: &Scene, runner: &str, extra: &[&str], denied: i32) {
    let (controller, terminal) = open_pty();
    let before = terminal_state(&terminal);
    let probe = s.workspace.join("probe.py");
    let script = format!(
        "for p in tcsetattr tiocsetd tiocswinsz tiocsti tiocssoftcar tcflsh tcsbrk tcdrain; do python3 {} $p; done; \
                  stty raw -echo; echo stty=$?",
        probe.display()
    );
    let mut cmd = s.ctl();
    // Read-only, so that gVisor (no writable host paths) runs it too.
    cmd.arg("run")
        .arg("--read")
        .arg(&s.workspace)
        .args(["--runner", runner])
        .args(extra)
        .args(["--", "sh", "-c", &script]);
    cmd.stdin(Stdio::from(terminal.try_clone().unwrap()))
        .stdout(Stdio::from(terminal.try_clone().unwrap()))
        .stderr(Stdio::from(terminal.try_clone().unwrap()));
    let status = cmd.status().unwrap();
    // SAFETY: the controller is an open descriptor owned by this test.
    unsafe {
        use std::os::fd::AsRawFd;
        libc::fcntl(controller.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK);
    }
    let mut out = Vec::new();
    // Read through a duplicate: closing the controller would hang the terminal up.
    let mut reader = std::fs::File::from(controller.try_clone().unwrap());
    let _ = std::io::Read::read_to_end(&mut reader, &mut out);
    let out = String::from_utf8_lossy(&out).replace('\r', "");
    assert_eq!(status.code(), Some(0), "{runner}: {status:?}: {out}");
    for probe in [
        "tcsetattr",
        "tiocsetd",
        "tiocswinsz",
        "tiocsti",
        "tiocssoftcar",
        "tcflsh",
        "tcsbrk",
    ] {
        assert!(
            out.contains(&format!("{probe} errno={denied}\n")),
            "{runner}: {probe} was not denied: {out}"
        );
    }
    // Waiting for output to drain changes nothing, and programs use it.
    let drained = if denied == EPERM { 0 } else { denied };
    assert!(
        out.contains(&format!("tcdrain errno={drained}\n")),
        "{runner}: tcdrain: {out}"
    );
    assert!(out.contains("stty=1"), "{runner}: stty must fail: {out}");
    assert_eq!(
        terminal_state(&terminal),
        before,
        "{runner}: the run changed the caller's terminal"
    );
    drop(controller);
}
