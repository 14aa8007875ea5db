#!/usr/bin/env python3
"""What moving a process into its v1 cgroups costs, per controller and in both orders.

    sudo bench/cgroup-attach.py [ROUNDS [HEAD_START_MS]]

Each round starts a `sleep`, makes one cgroup per controller under each hierarchy, waits
half a second (so no other move happened lately), then writes the pid to each
cgroup.procs in turn and times every write. Prints the median per controller and
position, for the order memory,pids,cpu,cpuacct and its reverse. The first write of a
round pays the cgroup core's RCU grace period whichever controller it is; the others do
not. Then the same first write after a head start, as a run makes it
(runners/src/native/cgroup/warmup.rs): a child moves itself into the cgroup it is
already in, and the real write follows HEAD_START later (the head start as measured is
printed beside it: a sleep oversleeps). Last, a fresh process that moves itself, as the
native runner's init does (runners/src/native/cgroup.rs, `join`): `0` written to each
hierarchy's `tasks`, which the kernel (5.16 or later) does without the lock. Needs the
v1 (or hybrid) layout under /sys/fs/cgroup.
"""
import os
import statistics
import subprocess
import sys
import time

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 6
HEAD_START = float(sys.argv[2]) / 1000 if len(sys.argv) > 2 else 0.005
ORDERS = [["memory", "pids", "cpu", "cpuacct"], ["cpuacct", "cpu", "pids", "memory"]]


def remove_cgroup(path):
    """Removes an emptied cgroup, waiting while the kernel still counts its last task."""
    while True:
        try:
            os.rmdir(path)
            return
        except OSError:
            time.sleep(0.001)


def print_medians(title, order, rounds):
    """One line per controller: the median, least and most of its writes over the rounds."""
    print(title + ",".join(order))
    for i, c in enumerate(order):
        values = [r[i] for r in rounds]
        print(f"  {i + 1}. {c:<8} median {statistics.median(values):>7.0f} µs"
              f"  min {min(values):>6} µs  max {max(values):>6} µs")


def one_round(order, n):
    child = subprocess.Popen(["sleep", "30"])
    name = f"covenant-bench-{os.getpid()}-{n}"
    for c in order:
        os.mkdir(f"/sys/fs/cgroup/{c}/{name}")
    time.sleep(0.5)
    costs = []
    try:
        for c in order:
            start = time.monotonic_ns()
            with open(f"/sys/fs/cgroup/{c}/{name}/cgroup.procs", "w") as f:
                f.write(str(child.pid))
            costs.append((time.monotonic_ns() - start) // 1000)
    finally:
        child.kill()
        child.wait()
        for c in order:
            remove_cgroup(f"/sys/fs/cgroup/{c}/{name}")
    return costs


for order in ORDERS:
    print_medians("order: ", order, [one_round(order, n) for n in range(ROUNDS)])


def own_procs(controller):
    for line in open("/proc/self/cgroup"):
        _, controllers, path = line.rstrip("\n").split(":", 2)
        if controller in controllers.split(","):
            return f"/sys/fs/cgroup/{controller}{path.rstrip('/')}/cgroup.procs"
    raise SystemExit(f"no {controller} v1 hierarchy")


def head_start_round(n):
    child = subprocess.Popen(["sleep", "30"])
    name = f"covenant-bench-{os.getpid()}-h{n}"
    os.mkdir(f"/sys/fs/cgroup/memory/{name}")
    time.sleep(0.5)
    procs = own_procs("pids")
    try:
        begun = time.monotonic_ns()
        helper = os.fork()
        if helper == 0:
            fd = os.open(procs, os.O_WRONLY)
            os.write(fd, str(os.getpid()).encode())
            os._exit(0)
        time.sleep(HEAD_START)
        start = time.monotonic_ns()
        with open(f"/sys/fs/cgroup/memory/{name}/cgroup.procs", "w") as f:
            f.write(str(child.pid))
        end = time.monotonic_ns()
        os.waitpid(helper, 0)
        return (end - start) // 1000, (start - begun) // 1000
    finally:
        child.kill()
        child.wait()
        remove_cgroup(f"/sys/fs/cgroup/memory/{name}")


rounds = [head_start_round(n) for n in range(ROUNDS)]
print(f"after a head start of {HEAD_START * 1000:.0f} ms (the helper moves in pids, the sandbox in memory)")
for i, what in enumerate(["the write", "the head start it had"]):
    values = [r[i] for r in rounds]
    print(f"  {what:<30} median {statistics.median(values):>7.0f} µs"
          f"  min {min(values):>6} µs  max {max(values):>6} µs")


def self_join_round(n, order):
    """A fresh child moves itself in, as the native runner's init does: `0` written to
    each hierarchy's `tasks`, through files its parent opened. Times the child's writes."""
    name = f"covenant-bench-{os.getpid()}-j{n}"
    for c in order:
        os.mkdir(f"/sys/fs/cgroup/{c}/{name}")
    files = [os.open(f"/sys/fs/cgroup/{c}/{name}/tasks", os.O_WRONLY) for c in order]
    time.sleep(0.5)
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        costs = []
        for fd in files:
            start = time.monotonic_ns()
            os.write(fd, b"0")
            costs.append((time.monotonic_ns() - start) // 1000)
        os.write(w, ",".join(map(str, costs)).encode())
        os._exit(0)
    os.close(w)
    costs = [int(v) for v in os.read(r, 200).decode().split(",")]
    os.close(r)
    os.waitpid(child, 0)
    for fd in files:
        os.close(fd)
    for c in order:
        remove_cgroup(f"/sys/fs/cgroup/{c}/{name}")
    return costs


print_medians("a process moving itself (`0` to tasks, as the native runner's init): ",
              ORDERS[0], [self_join_round(n, ORDERS[0]) for n in range(ROUNDS)])
