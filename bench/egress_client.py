"""The sandboxed side of bench/egress.sh: `bulk HOST BYTES`, `setup HOST N`, `concurrent
HOST N`, `idle HOST N SECONDS`; prints one JSON line. HOST is a name (through the egress
gateway) or the server's address (with --net host). Every stream starts with a TLS-like
record line naming the host, so the gateway's first-bytes check has an SNI to read."""
import json
import resource
import socket
import struct
import sys
import time


def hello(name):
    n = name.encode()
    ext = struct.pack("!HHHBH", 0, len(n) + 5, len(n) + 3, 0, len(n)) + n
    body = b"\x03\x03" + b"\x07" * 32 + b"\x00\x00\x02\x13\x01\x01\x00" + struct.pack("!H", len(ext)) + ext
    hs = b"\x01" + struct.pack("!I", len(body))[1:] + body
    return b"\x16\x03\x01" + struct.pack("!H", len(hs)) + hs + b"\n"


def connect(host, name):
    s = socket.create_connection((host, 443), timeout=30)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(hello(name))
    return s


def main():
    cmd, host = sys.argv[1], sys.argv[2]
    name = host if not host[0].isdigit() else "bulk.test"
    if not host[0].isdigit():
        host = socket.gethostbyname(host)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if cmd == "bulk":
        n = int(sys.argv[3])
        s = connect(host, name)
        start = time.perf_counter()
        s.sendall(b"BULK %d\n" % n)
        buf = bytearray(1 << 20)
        got = 0
        while True:
            k = s.recv_into(buf)
            if not k:
                break
            got += k
        secs = time.perf_counter() - start
        print(json.dumps({"bytes": got, "seconds": secs, "mib_per_s": got / secs / (1 << 20)}))
    elif cmd == "setup":
        times = []
        for _ in range(int(sys.argv[3])):
            start = time.perf_counter()
            s = connect(host, name)
            s.sendall(b"PING\n")
            assert s.recv(16) == b"PONG\n"
            times.append(time.perf_counter() - start)
            s.close()
        times.sort()
        print(json.dumps({"p50_ms": times[len(times) // 2] * 1000, "p90_ms": times[len(times) * 9 // 10] * 1000}))
    elif cmd == "concurrent":
        n = int(sys.argv[3])
        socks = [connect(host, name) for _ in range(n)]
        for s in socks:
            s.sendall(b"PING\n")
        served = sum(1 for s in socks if s.recv(16) == b"PONG\n")
        print(json.dumps({"opened": len(socks), "served": served}))
    elif cmd == "idle":
        n, secs = int(sys.argv[3]), float(sys.argv[4])
        socks = [connect(host, name) for _ in range(n)]
        for s in socks:
            s.sendall(b"HOLD\n")
        print(json.dumps({"idle": len(socks)}), flush=True)
        time.sleep(secs)


main()
