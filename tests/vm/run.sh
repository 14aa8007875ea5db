#!/bin/sh
# Boots Debian's current kernel with every cgroup controller on cgroup v2
# (cgroup_no_v1=all) under QEMU's TCG emulator, runs a statically linked covenant-ctl in
# it, and prints one `VMTEST name ...` line per check. The host here keeps memory and pids
# on cgroup v1, so this is where the v2 path and landlock's fail-closed refusals (the
# guest kernel has landlock ABI 2: no TCP rules, no scopes) are exercised live.
#
#   tests/vm/run.sh STATIC-COVENANT-CTL
#
# Needs: qemu-system-x86, busybox-static, jq, apt-get download access to Debian's kernel.
set -eu
CTL=$(realpath "$1")
WORK=$(mktemp -d /tmp/covenant-vm.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
CACHE=${COVENANT_VM_CACHE:-/var/cache/covenant-vm}
mkdir -p "$CACHE"
if ! ls "$CACHE"/linux-image-*.deb >/dev/null 2>&1; then
    pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image/ {print $2; exit}')
    (cd "$CACHE" && apt-get download -q "$pkg" >/dev/null 2>&1)
fi
dpkg-deb -x "$(ls "$CACHE"/linux-image-*.deb | head -1)" kernel
VMLINUZ=$(ls kernel/boot/vmlinuz-* | head -1)

mkdir -p root/bin root/usr/bin root/sbin root/etc root/proc root/sys root/dev root/tmp root/newroot
cp /bin/busybox root/bin/busybox
for applet in $(root/bin/busybox --list); do
    [ -e "root/bin/$applet" ] || ln -s busybox "root/bin/$applet"
done
cp "$CTL" root/bin/covenant-ctl
cp "$(dirname "$CTL")/covenantd" root/bin/covenantd
echo 'root:x:0:0:root:/root:/bin/sh' > root/etc/passwd
# covenant-runtime, when built beside covenant-ctl: one busybox root and three bundles
# (device rules, a memory limit, a pids limit), written here with the runtime's own
# default config edited by jq.
RT="$(dirname "$CTL")/covenant-runtime"
if [ -x "$RT" ]; then
    cp "$RT" root/bin/covenant-runtime
    mkdir -p root/rootfs/bin root/rootfs/proc root/rootfs/sys root/rootfs/dev root/rootfs/tmp
    cp /bin/busybox root/rootfs/bin/busybox
    for applet in sh head tail sleep true echo; do ln -s busybox "root/rootfs/bin/$applet"; done
    mkdir spec
    "$RT" spec --bundle spec
    bundle() { # NAME JQ-FILTER
        mkdir -p "root/$1"
        jq ".root.path = \"/rootfs\" | .process.terminal = false | $2" spec/config.json > "root/$1/config.json"
    }
    bundle b-devices '.process.args = ["sh", "-c", "(exec 3</dev/null) && echo null; (exec 3</dev/kmsg) 2>/dev/null && echo kmsg; true"] | .mounts += [{"destination": "/dev/kmsg", "type": "bind", "source": "/dev/kmsg", "options": ["bind"]}]'
    bundle b-memory '.process.args = ["sh", "-c", "head -c 300000000 /dev/zero | tail"] | .linux.resources.memory = {"limit": 33554432}'
    bundle b-pids '.process.args = ["sh", "-c", "for i in 1 2 3 4 5 6 7 8 9 10 11 12; do sleep 1 & done; wait"] | .linux.resources.pids = {"limit": 8}'
fi
cat > root/init <<'EOF'
#!/bin/sh
export PATH=/bin:/usr/bin:/sbin
if [ ! -e /.stage2 ]; then
    # pivot_root cannot leave the initial ramfs: move everything to a tmpfs first.
    mount -t tmpfs -o size=400m stage /newroot
    cp -a /bin /usr /sbin /etc /init /newroot/
    for d in /rootfs /b-devices /b-memory /b-pids; do
        if [ -e "$d" ]; then cp -a "$d" /newroot/; fi
    done
    mkdir -p /newroot/proc /newroot/sys /newroot/dev /newroot/tmp /newroot/newroot
    touch /newroot/.stage2
    exec switch_root /newroot /init
fi
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mount -t cgroup2 none /sys/fs/cgroup
echo "+memory +pids +cpu" > /sys/fs/cgroup/cgroup.subtree_control
export COVENANT_HOME=/tmp/cov
echo "VMTEST kernel $(uname -r) controllers=$(cat /sys/fs/cgroup/cgroup.controllers | tr ' ' ',')"
covenant-ctl doctor > /tmp/doctor 2>&1
echo "VMTEST doctor $(grep -E '^(ok|FAIL|warn) +(landlock|cgroups) ' /tmp/doctor | tr -s ' ' | tr '\n' ';')"
covenant-ctl run -- true > /tmp/o 2>&1
echo "VMTEST failclosed exit=$? $(tr '\n' ' ' < /tmp/o)"
D="--accept-degradation landlock-net --accept-degradation landlock-scope"
covenant-ctl run $D --report /tmp/r.json -- echo hello > /tmp/o 2>&1
echo "VMTEST degraded exit=$? out=$(head -1 /tmp/o) $(grep -o '"cgroup_version": "[a-z0-9]*"' /tmp/r.json)"
echo "VMTEST cgroup-entry $(covenant-ctl audit tail -n 20 | grep -o '"cgroup_entry":"[a-z]*"' | tail -1)"
covenant-ctl run $D --pids 8 -- sh -c 'for i in 1 2 3 4 5 6 7 8 9 10 11 12; do sleep 1 & done; wait' > /tmp/o 2>&1
echo "VMTEST pids exit=$? forkfail=$(grep -c -i 'fork' /tmp/o)"
covenant-ctl run $D --memory 32MiB -- sh -c 'head -c 300000000 /dev/zero | tail' > /tmp/o 2>&1
echo "VMTEST memory exit=$?"
covenant-ctl run $D --timeout 2s -- sh -c '(sleep 60 &); sleep 60' > /tmp/o 2>&1
echo "VMTEST timeout exit=$?"
covenant-ctl key trust "$COVENANT_HOME/operator.key" --name operator > /dev/null 2>&1
waitsock() { i=0; until covenantd health > /dev/null 2>&1 || [ $i -ge 300 ]; do sleep 0.1; i=$((i+1)); done; }
covenantd --home "$COVENANT_HOME" --cgroup-pids 200 > /tmp/d.log 2>&1 &
DPID=$!
waitsock
covenant-ctl --daemon run $D -- echo via-daemon > /tmp/o 2>&1
echo "VMTEST daemon exit=$? out=$(head -1 /tmp/o) parent-pids=$(cat /sys/fs/cgroup/covenant/pids.max)"
covenant-ctl --daemon run $D --memory 32MiB -- sh -c 'head -c 300000000 /dev/zero | tail' > /tmp/o 2>&1
echo "VMTEST daemon-memory exit=$?"
covenant-ctl --daemon run $D --timeout 120s -- sleep 120 > /dev/null 2>&1 &
i=0; while [ "$(ls -d /sys/fs/cgroup/covenant/job-*/ 2>/dev/null | wc -l)" = 0 ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
kill -9 $DPID
sleep 1
covenantd --home "$COVENANT_HOME" > /tmp/d.log 2>&1 &
DPID=$!
waitsock
echo "VMTEST daemon-restart cgroups-left=$(ls -d /sys/fs/cgroup/covenant/*/ 2>/dev/null | wc -l) sleeping=$(for f in /proc/[0-9]*/cmdline; do tr '\0' ' ' < "$f"; echo; done | grep -c '^sleep 120')"
kill -TERM $DPID
wait $DPID
echo "VMTEST daemon-stop exit=$?"
echo "VMTEST cgroups-left $(ls -d /sys/fs/cgroup/covenant/*/ 2>/dev/null | wc -l)"
echo "VMTEST audit $(covenant-ctl audit verify | head -c 5)"
if [ -x /bin/covenant-runtime ]; then
    covenant-runtime --root /tmp/rt run --bundle /b-devices d1 > /tmp/o 2>&1
    echo "VMTEST runtime-devices exit=$? out=$(tr '\n' ' ' < /tmp/o)"
    covenant-runtime --root /tmp/rt run --bundle /b-memory m1 > /tmp/o 2>&1
    echo "VMTEST runtime-memory exit=$?"
    covenant-runtime --root /tmp/rt run --bundle /b-pids p1 > /tmp/o 2>&1
    echo "VMTEST runtime-pids exit=$? forkfail=$(grep -c -i 'fork' /tmp/o)"
    echo "VMTEST runtime-left state=$(ls /tmp/rt 2>/dev/null | wc -l) cgroups=$(find /sys/fs/cgroup -name d1 -o -name m1 -o -name p1 | wc -l)"
fi
echo "VMTEST done"
poweroff -f
EOF
chmod +x root/init
(cd root && find . | /bin/busybox cpio -o -H newc 2>/dev/null | gzip -1) > initramfs.gz
timeout "${COVENANT_VM_TIMEOUT:-300}" qemu-system-x86_64 -accel tcg -cpu max -m 768 -smp 1 \
    -kernel "$VMLINUZ" -initrd initramfs.gz \
    -append "console=ttyS0 cgroup_no_v1=all panic=-1 quiet" \
    -nographic -no-reboot -nodefaults -serial stdio </dev/null | tr -d '\r' | grep -o 'VMTEST.*'
