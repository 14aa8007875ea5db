"""A package host for the egress tests' own internet: serves DIR/www on ADDR, plain HTTP on
port 80 and TLS on port 443 (a self-signed certificate for NAME, written to DIR/ca.pem),
both HTTP/1.1 with connections kept open. DIR/www holds what real clients fetch: a text
file, a git repository (dumb HTTP) and a one-package PyPI simple index.

    python3 egress_files.py ADDR NAME DIR

Prints `ready` once both ports listen."""
import base64
import functools
import hashlib
import http.server
import os
import ssl
import subprocess
import sys
import threading
import zipfile


def certificate(name, d):
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=" + name, "-addext", "subjectAltName=DNS:" + name,
         "-keyout", os.path.join(d, "key.pem"), "-out", os.path.join(d, "ca.pem")],
        check=True, capture_output=True)


def repository(www, d):
    src = os.path.join(d, "src")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t.test", "-c", "init.defaultBranch=main"]
    subprocess.run(git + ["init", "-q", src], check=True)
    with open(os.path.join(src, "README"), "w") as f:
        f.write("a repository on the test internet\n")
    subprocess.run(git + ["-C", src, "add", "README"], check=True)
    subprocess.run(git + ["-C", src, "commit", "-q", "-m", "first"], check=True)
    bare = os.path.join(www, "repo.git")
    subprocess.run(git + ["clone", "-q", "--bare", src, bare], check=True)
    subprocess.run(["git", "-C", bare, "update-server-info"], check=True)


def wheel(www):
    files = {
        "tinypkg/__init__.py": b"VALUE = 42\n",
        "tinypkg-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: tinypkg\nVersion: 1.0\n",
        "tinypkg-1.0.dist-info/WHEEL":
            b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = ""
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record += "%s,sha256=%s,%d\n" % (path, digest, len(data))
    record += "tinypkg-1.0.dist-info/RECORD,,\n"
    files["tinypkg-1.0.dist-info/RECORD"] = record.encode()
    os.makedirs(os.path.join(www, "packages"))
    name = "tinypkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(www, "packages", name), "w") as z:
        for path, data in files.items():
            z.writestr(path, data)
    os.makedirs(os.path.join(www, "simple", "tinypkg"))
    with open(os.path.join(www, "simple", "tinypkg", "index.html"), "w") as f:
        f.write('<html><body><a href="/packages/%s">%s</a></body></html>\n' % (name, name))


class Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass


def serve(server):
    server.serve_forever()


def main():
    addr, name, d = sys.argv[1], sys.argv[2], sys.argv[3]
    www = os.path.join(d, "www")
    os.makedirs(www)
    with open(os.path.join(www, "hello.txt"), "w") as f:
        f.write("hello from %s\n" % name)
    certificate(name, d)
    repository(www, d)
    wheel(www)
    handler = functools.partial(Handler, directory=www)
    plain = http.server.ThreadingHTTPServer((addr, 80), handler)
    tls = http.server.ThreadingHTTPServer((addr, 443), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(os.path.join(d, "ca.pem"), os.path.join(d, "key.pem"))
    tls.socket = context.wrap_socket(tls.socket, server_side=True)
    for s in (plain, tls):
        threading.Thread(target=serve, args=(s,), daemon=True).start()
    print("ready", flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()
