"""Egress probes run inside the sandbox: each prints `RESULT=...` lines the live tests
read. Every address probed is a test host of the test's own internet (127.77.N.x, seen from
the sandbox only through the gateway's names), the gateway itself, or a reserved range."""
import errno
import socket
import struct
import sys
import time

TCP_CLOSE = 7  # tcp_info.tcpi_state


def hello(sni):
    ext = b""
    if sni:
        n = sni.encode()
        ext = struct.pack("!HHHBH", 0, len(n) + 5, len(n) + 3, 0, len(n)) + n
    body = b"\x03\x03" + b"\x07" * 32 + b"\x00\x00\x02\x13\x01\x01\x00"
    body += struct.pack("!H", len(ext)) + ext
    hs = b"\x01" + struct.pack("!I", len(body))[1:] + body
    return b"\x16\x03\x01" + struct.pack("!H", len(hs)) + hs + b"END"


def exchange(addr, port, payload, timeout=3):
    try:
        s = socket.create_connection((addr, port), timeout=timeout)
        s.sendall(payload)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
        return "ok:" + out.decode(errors="replace").strip()
    except OSError as e:
        return "err:" + (errno.errorcode.get(e.errno, str(e)) if e.errno else type(e).__name__)


def keepalive(addr, port, hosts):
    """One connection, one request per host in turn, each asking to keep it open; says of
    each whether its answer came."""
    said = []
    try:
        s = socket.create_connection((addr, port), timeout=3)
        for host in hosts:
            s.sendall(("GET / HTTP/1.1\r\nHost: %s\r\nConnection: keep-alive\r\n\r\n" % host).encode())
            got = b""
            while not got.endswith(b"HELLO\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
            said.append("ok" if got.endswith(b"HELLO\n") else "closed")
    except OSError as e:
        said.append("err:" + (errno.errorcode.get(e.errno, str(e)) if e.errno else type(e).__name__))
    return ",".join(said)


def resolve(name):
    try:
        return sorted({a[4][0] for a in socket.getaddrinfo(name, 443, socket.AF_INET, socket.SOCK_STREAM)})
    except socket.gaierror as e:
        return "gaierror:%s" % e.errno


def dns_query(server, name):
    q = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\x00\x00\x01\x00\x01"
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(1.5)
    try:
        s.sendto(q, (server, 53))
        data = s.recv(1500)
        return "answered rcode=%d" % (data[3] & 0x0F)
    except OSError as e:
        return "err:" + (errno.errorcode.get(e.errno, "timeout") if e.errno else "timeout")


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "resolve":
        print("RESULT=%s" % resolve(args[0]))
    elif cmd == "http":
        name, port, host = args[0], int(args[1]), args[2]
        addrs = resolve(name)
        target = addrs[0] if isinstance(addrs, list) else name
        req = ("GET / HTTP/1.1\r\nHost: %s\r\n\r\n" % host).encode()
        print("RESULT=%s" % exchange(target, port, req))
    elif cmd == "keepalive":
        name, port, hosts = args[0], int(args[1]), args[2:]
        addrs = resolve(name)
        target = addrs[0] if isinstance(addrs, list) else name
        print("RESULT=%s" % keepalive(target, port, hosts))
    elif cmd == "tls":
        name, port, sni = args[0], int(args[1]), args[2]
        addrs = resolve(name)
        target = addrs[0] if isinstance(addrs, list) else name
        print("RESULT=%s" % exchange(target, port, hello(sni if sni != "-" else None)))
    elif cmd == "literal":
        print("RESULT=%s" % exchange(args[0], int(args[1]), hello(args[2])))
    elif cmd == "dns":
        print("RESULT=%s" % dns_query(args[0], args[1]))
    elif cmd == "udp":
        addr = resolve(args[0])[0]
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(1)
        s.sendto(b"probe", (addr, int(args[1])))
        try:
            s.recv(100)
            print("RESULT=answered")
        except OSError:
            print("RESULT=silent")
    elif cmd == "icmp":
        addr = resolve(args[0])[0]
        try:
            s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        except OSError as e:
            print("RESULT=err:%s" % errno.errorcode.get(e.errno, e.errno))
            return
        s.settimeout(1)
        s.sendto(b"\x08\x00\xf7\xff\x00\x00\x00\x00", (addr, 0))
        try:
            s.recv(100)
            print("RESULT=answered")
        except OSError:
            print("RESULT=silent")
    elif cmd == "ping":
        addr = resolve(args[0])[0]
        try:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
        except OSError as e:
            print("RESULT=err:%s" % errno.errorcode.get(e.errno, e.errno))
            return
        s.settimeout(1)
        try:
            s.sendto(b"\x08\x00\x00\x00\x00\x00\x00\x00", (addr, 0))
            s.recv(100)
            print("RESULT=answered")
        except OSError:
            print("RESULT=silent")
    elif cmd == "ipv6":
        try:
            s = socket.create_connection(("2001:db8::1", 443), timeout=1)
            print("RESULT=connected")
        except OSError as e:
            print("RESULT=err:%s" % errno.errorcode.get(e.errno, type(e).__name__))
    elif cmd == "storm":
        # Every connection is held until the gateway has decided it: on the kernel path the
        # handshake is the kernel's, and a refusal is a reset that comes after it.
        name, port, n = args[0], int(args[1]), int(args[2])
        addr = resolve(name)[0]
        socks, failed = [], 0
        for _ in range(n):
            s = socket.socket()
            s.settimeout(2)
            try:
                s.connect((addr, port))
                socks.append(s)
            except OSError:
                failed += 1
        reset = settled(socks, deadline=time.monotonic() + 8)
        held = len(socks) - reset
        for s in socks:
            s.close()
        # The gateway takes the closes in its own time: until it has, a new connection may
        # still meet the limit.
        deadline = time.monotonic() + 10
        after = exchange(addr, port, hello(name))
        while not after.startswith("ok:") and time.monotonic() < deadline:
            time.sleep(0.2)
            after = exchange(addr, port, hello(name))
        print("RESULT=held=%d reset=%d failed=%d after=%s" % (held, reset, failed, after))


def settled(socks, deadline):
    """How many of `socks` the other side has reset, once that count has held still for a
    second (or at `deadline`)."""
    count, still_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        now = sum(1 for s in socks if was_reset(s))
        if now != count:
            count, still_since = now, time.monotonic()
        elif count > 0 and time.monotonic() - still_since >= 1:
            break
        time.sleep(0.1)
    return count


def was_reset(s):
    """Whether the other side reset `s`: a reset leaves it closed, while an end the server
    sent (a held connection the gateway connected upstream after its wait for the server
    to speak first) leaves it in CLOSE_WAIT, still holding its place at the gateway."""
    return s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == TCP_CLOSE

main()
