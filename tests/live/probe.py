"""Hostile probes run inside the sandbox. Each prints `NAME errno=N` (0 means the call
succeeded) so the test can assert the exact refusal."""
import ctypes, errno, os, socket, sys

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
NR = {"ptrace": 101, "process_vm_readv": 310, "bpf": 321, "io_uring_setup": 425,
      "keyctl": 250, "add_key": 248, "unshare": 272, "mount": 165, "setns": 308,
      "perf_event_open": 298, "userfaultfd": 323, "kexec_load": 246, "init_module": 175,
      "personality": 135, "clone3": 435, "open_tree": 428, "move_mount": 429, "fsopen": 430,
      "clone": 56}

def sys_errno(name, *args):
    ctypes.set_errno(0)
    rc = libc.syscall(NR[name], *[ctypes.c_long(a) if isinstance(a, int) else a for a in args])
    return 0 if rc >= 0 else ctypes.get_errno()

def report(name, err):
    print(f"{name} errno={err}", flush=True)

def probe(name):
    if name == "ptrace":
        report(name, sys_errno("ptrace", 0, 0, 0, 0))  # PTRACE_TRACEME
    elif name == "process_vm_readv":
        buf = ctypes.create_string_buffer(8)
        iov = (ctypes.c_void_p * 2)(ctypes.cast(buf, ctypes.c_void_p), 8)
        report(name, sys_errno("process_vm_readv", 1, ctypes.byref(iov), 1, ctypes.byref(iov), 1, 0))
    elif name == "bpf":
        # BPF_PROG_LOAD of a two-instruction socket filter: "r0 = 0; exit".
        insns = (ctypes.c_uint64 * 2)(0x00000000000000b7, 0x0000000000000095)
        lic = ctypes.create_string_buffer(b"GPL")
        attr = (ctypes.c_uint8 * 128)()
        ctypes.memmove(attr, (ctypes.c_uint32 * 2)(1, 2), 8)  # prog_type=SOCKET_FILTER, insn_cnt=2
        ctypes.memmove(ctypes.byref(attr, 8), (ctypes.c_uint64 * 2)(ctypes.addressof(insns), ctypes.addressof(lic)), 16)
        report(name, sys_errno("bpf", 5, ctypes.byref(attr), 128))
    elif name == "io_uring_setup":
        params = (ctypes.c_uint8 * 120)()
        report(name, sys_errno("io_uring_setup", 8, ctypes.byref(params)))
    elif name == "keyctl":
        report(name, sys_errno("keyctl", 0, -3, 0, 0, 0))  # KEYCTL_GET_KEYRING_ID of the session keyring
    elif name == "add_key":
        report(name, sys_errno("add_key", ctypes.c_char_p(b"user"), ctypes.c_char_p(b"k"), ctypes.c_char_p(b"v"), 1, -4))
    elif name == "unshare_user":
        report(name, sys_errno("unshare", 0x10000000))
    elif name == "unshare_mount":
        report(name, sys_errno("unshare", 0x00020000))
    elif name == "clone_newuser":
        report(name, sys_errno("clone", 0x10000000 | 17, 0, 0, 0, 0))
    elif name == "clone3":
        report(name, sys_errno("clone3", 0, 0))
    elif name == "mount":
        report(name, sys_errno("mount", ctypes.c_char_p(b"none"), ctypes.c_char_p(b"/tmp"), ctypes.c_char_p(b"tmpfs"), 0, 0))
    elif name == "open_tree":
        report(name, sys_errno("open_tree", -100, ctypes.c_char_p(b"/"), 1))
    elif name == "fsopen":
        report(name, sys_errno("fsopen", ctypes.c_char_p(b"tmpfs"), 0))
    elif name == "perf_event_open":
        attr = (ctypes.c_uint8 * 128)()
        report(name, sys_errno("perf_event_open", ctypes.byref(attr), 0, -1, -1, 0))
    elif name == "userfaultfd":
        report(name, sys_errno("userfaultfd", 0))
    elif name == "kexec_load":
        report(name, sys_errno("kexec_load", 0, 0, 0, 0))
    elif name == "init_module":
        report(name, sys_errno("init_module", 0, 0, ctypes.c_char_p(b"")))
    elif name == "personality":
        report(name, sys_errno("personality", 0x0400000))  # READ_IMPLIES_EXEC
    elif name == "tiocsti":
        import fcntl, termios
        try:
            fcntl.ioctl(0, termios.TIOCSTI, b"x")
            report(name, 0)
        except OSError as e:
            report(name, e.errno)
    elif name == "tiocsti_high_bits":
        ctypes.set_errno(0)
        rc = libc.syscall(16, 0, ctypes.c_ulong((1 << 32) | 0x5412), ctypes.c_char_p(b"x"))
        report(name, 0 if rc >= 0 else ctypes.get_errno())
    elif name.startswith("socket:") or name.startswith("socket_high:") or name.startswith("socketpair:"):
        # socket:FAMILY:TYPE, the family with bits set above 32 (socket_high), or a pair.
        call, family, kind = name.split(":")
        family, kind = int(family), int(kind)
        if call == "socket_high":
            family |= 1 << 32
        ctypes.set_errno(0)
        if call == "socketpair":
            fds = (ctypes.c_int * 2)()
            rc = libc.syscall(53, ctypes.c_ulong(family), kind, 0, ctypes.byref(fds))
        else:
            rc = libc.syscall(41, ctypes.c_ulong(family), kind, 0)
        report(name, 0 if rc >= 0 else ctypes.get_errno())
    elif name == "tcsetattr":
        import termios
        try:
            attrs = termios.tcgetattr(0)
            attrs[3] &= ~(termios.ECHO | termios.ICANON)
            termios.tcsetattr(0, termios.TCSANOW, attrs)
            report(name, 0)
        except termios.error as e:
            report(name, e.args[0])
    elif name == "tiocsetd":
        import fcntl, struct
        try:
            fcntl.ioctl(0, 0x5423, struct.pack("i", 0))  # N_TTY, which needs no module
            report(name, 0)
        except OSError as e:
            report(name, e.errno)
    elif name == "tiocssoftcar":
        import fcntl, struct
        try:
            fcntl.ioctl(0, 0x541A, struct.pack("i", 1))
            report(name, 0)
        except OSError as e:
            report(name, e.errno)
    elif name in ("tcflsh", "tcdrain"):
        import termios
        try:
            if name == "tcflsh":
                termios.tcflush(0, termios.TCIFLUSH)
            else:
                termios.tcdrain(0)
            report(name, 0)
        except termios.error as e:
            report(name, e.args[0])
    elif name == "tcsbrk":
        import fcntl
        try:
            fcntl.ioctl(0, 0x5409, 0)  # argument 0: send a break
            report(name, 0)
        except OSError as e:
            report(name, e.errno)
    elif name == "tiocswinsz":
        import fcntl, struct
        try:
            fcntl.ioctl(0, 0x5414, struct.pack("HHHH", 7, 9, 0, 0))
            report(name, 0)
        except OSError as e:
            report(name, e.errno)
    elif name.startswith("connect:"):
        host, port = name.split(":")[1], int(name.split(":")[2])
        s = socket.socket()
        s.settimeout(3)
        try:
            s.connect((host, port))
            report(name, 0)
        except OSError as e:
            report(name, e.errno or errno.ETIMEDOUT)
    elif name == "loopback_echo":
        srv = socket.socket()
        try:
            srv.bind(("127.0.0.1", 0))
            srv.listen(1)
            c = socket.create_connection(srv.getsockname(), timeout=3)
            a, _ = srv.accept()
            c.sendall(b"ping")
            report(name, 0 if a.recv(4) == b"ping" else 1)
        except OSError as e:
            report(name, e.errno)
    elif name.startswith("kill_host_pid:"):
        try:
            os.kill(int(name.split(":")[1]), 0)
            report(name, 0)
        except OSError as e:
            report(name, e.errno)
    elif name == "fork_bomb":
        children, first_error = [], 0
        for _ in range(500):
            try:
                pid = os.fork()
            except OSError as e:
                first_error = e.errno
                break
            if pid == 0:
                import time
                time.sleep(30)
                os._exit(0)
            children.append(pid)
        print(f"forked={len(children)}", flush=True)
        report(name, first_error)
        os._exit(0)
    else:
        print(f"unknown probe {name}", flush=True)
        sys.exit(2)

for n in sys.argv[1:2]:
    probe(n)
