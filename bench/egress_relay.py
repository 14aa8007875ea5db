"""The reference relay of bench/egress.sh: the least a userspace TCP relay can do, to set
the gateway's bulk rate beside. It listens on 127.77.200.11:443, opens a connection to the
test server (127.77.200.10:443) for each one it accepts, and moves bytes both ways with
`splice` through a pipe, one blocking thread per direction: no checks, no event loop, the
kernel's own buffer autotuning."""
import fcntl
import os
import socket
import threading

LISTEN = ("127.77.200.11", 443)
SERVER = ("127.77.200.10", 443)
F_SETPIPE_SZ = 1031


def pump(src, dst):
    r, w = os.pipe()
    fcntl.fcntl(r, F_SETPIPE_SZ, 1 << 20)
    try:
        while True:
            n = os.splice(src.fileno(), w, 1 << 20, flags=os.SPLICE_F_MOVE)
            if n == 0:
                break
            while n > 0:
                n -= os.splice(r, dst.fileno(), n, flags=os.SPLICE_F_MOVE)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    finally:
        os.close(r)
        os.close(w)


def main():
    lsn = socket.socket()
    lsn.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsn.bind(LISTEN)
    lsn.listen(64)
    print("ready", flush=True)
    while True:
        down, _ = lsn.accept()
        up = socket.create_connection(SERVER)
        for s in (down, up):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=pump, args=(down, up), daemon=True).start()
        threading.Thread(target=pump, args=(up, down), daemon=True).start()


main()
