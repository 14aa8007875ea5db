//! Network scopes: what `--net` leaves reachable, and the socket families refused past the
//! network namespace.

use crate::scene::Scene;

#[test]
fn network_is_unreachable_under_net_none() {
    let Some(s) = Scene::live() else { return };
    assert_ne!(s.probe(&["--net", "none"], "connect:1.1.1.1:53"), 0);
    assert_ne!(s.probe(&["--net", "none"], "connect:127.0.0.1:22"), 0);
    assert_ne!(
        s.probe(&["--net", "none"], "loopback_echo"),
        0,
        "loopback works under net none"
    );
    assert_eq!(
        s.probe(&["--net", "loopback"], "loopback_echo"),
        0,
        "loopback broken under net loopback"
    );
    assert_ne!(s.probe(&["--net", "loopback"], "connect:1.1.1.1:53"), 0);
}

#[test]
fn sockets_of_families_past_the_network_namespace_are_refused() {
    let Some(s) = Scene::live() else { return };
    const EAFNOSUPPORT: i32 = libc::EAFNOSUPPORT;
    // AF_VSOCK reaches the VM's vsock port space even under net:none.
    for name in [
        "socket:40:1",      // AF_VSOCK
        "socket_high:40:1", // AF_VSOCK with the high half set
        "socket:17:3",      // AF_PACKET
        "socket:15:3",      // AF_KEY
        "socket:38:5",      // AF_ALG
        "socket:31:1",      // AF_BLUETOOTH
        "socket:29:3",      // AF_CAN
        "socket:44:3",      // AF_XDP
        "socketpair:2:1",   // an AF_INET pair
        "socketpair:40:1",
    ] {
        assert_eq!(
            s.probe(&["--net", "none"], name),
            EAFNOSUPPORT,
            "{name} was not refused"
        );
    }
    for name in ["socket:1:1", "socket:2:1", "socket:16:3", "socketpair:1:1"] {
        assert_eq!(s.probe(&["--net", "none"], name), 0, "{name} must work");
    }
}
