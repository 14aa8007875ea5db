#!/bin/sh
# Start-to-exit of /bin/true under the native runner (every restriction on) and its peers,
# side by side in one run; prints medians, each one's ratio to crun running our bundle and
# to crun's own default bundle (`crun spec`: no user namespace, no seccomp, a busybox
# root), then the native run's median time per step (its reports' `timings_us`).
#
#   sudo [BEFORE=OLD-COVENANT-CTL] [GAP=SECONDS] bench/start-to-exit.sh [RUNS]
#
# Every run follows a pause of GAP seconds (default 0.1), as an agent's commands do: on a
# cgroup v1 host the first move into a cgroup after a quiet spell waits for an RCU grace
# period, which back-to-back runs (GAP=0) hide from each other.
#
# Needs: a release build (cargo build --release), hyperfine, jq, runc, crun, runsc, bwrap.
# crun 1.8 refuses the cgroup v1 hybrid layout, so it runs in a private mount namespace
# with /sys/fs/cgroup/unified unmounted; that wrapper (about 3 ms) is counted in its time.
# runc 1.1 cannot bind /dev/tty without a controlling terminal in a user namespace, and
# runsc's own user-namespace handling differs, so runc and runsc run the same bundle with
# the user namespace removed (host root inside), which is their ordinary mode.
set -eu
RUNS=${1:-50}
GAP=${GAP:-0.1}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CTL=$ROOT/target/release/covenant-ctl
[ -x "$CTL" ] || { echo "build first: cargo build --release" >&2; exit 1; }
for tool in hyperfine jq runc crun runsc bwrap python3 busybox; do
    command -v $tool >/dev/null || { echo "missing $tool (apt-get install hyperfine jq runc crun runsc bubblewrap python3 busybox-static)" >&2; exit 1; }
done
WORK=$(mktemp -d /tmp/covenant-bench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
chmod 711 "$WORK"
export COVENANT_HOME=$WORK/home
"$CTL" bundle --out "$WORK/bundle" -- /bin/true >/dev/null
cp -a "$WORK/bundle" "$WORK/bundle-nouserns"
jq '.linux.namespaces |= map(select(.type != "user")) | del(.linux.uidMappings, .linux.gidMappings)' \
    "$WORK/bundle/config.json" > "$WORK/bundle-nouserns/config.json"
# crun's default bundle, running the same /bin/true from a static busybox root.
mkdir -p "$WORK/default/rootfs/bin"
cp /bin/busybox "$WORK/default/rootfs/bin/true"
(cd "$WORK/default" && crun spec)
jq '.process.args = ["/bin/true"] | .process.terminal = false' "$WORK/default/config.json" > "$WORK/default/c.json"
mv "$WORK/default/c.json" "$WORK/default/config.json"

# BEFORE=PATH times an earlier covenant-ctl beside this one, for before/after figures.
set --
if [ -n "${BEFORE:-}" ]; then
    set -- -n "covenant native (before)" "$BEFORE run --memory 256MiB --pids 64 --timeout 30s --net none -- /bin/true"
fi
hyperfine -N --warmup 5 --runs "$RUNS" --prepare "sleep $GAP" --export-json "$WORK/result.json" \
    -n "fork+exec" "/bin/true" "$@" \
    -n "covenant native" "$CTL run --memory 256MiB --pids 64 --timeout 30s --net none -- /bin/true" \
    -n "crun run" "unshare -m --propagation private sh -c 'umount /sys/fs/cgroup/unified; exec crun run -b $WORK/bundle crun-\$\$'" \
    -n "crun run, default bundle" "unshare -m --propagation private sh -c 'umount /sys/fs/cgroup/unified; exec crun run -b $WORK/default crund-\$\$'" \
    -n "runc run" "sh -c 'exec runc run -b $WORK/bundle-nouserns runc-\$\$'" \
    -n "runsc run" "sh -c 'exec runsc --platform=ptrace --network=none run -bundle $WORK/bundle-nouserns runsc-\$\$'" \
    -n "bwrap --unshare-all" "bwrap --unshare-all --ro-bind /usr /usr --symlink usr/bin /bin --symlink usr/lib /lib --symlink usr/lib64 /lib64 --proc /proc --dev /dev /bin/true" \
    >/dev/null
jq -r '
  (.results[] | select(.command == "crun run") | .median) as $crun
  | (.results[] | select(.command == "crun run, default bundle") | .median) as $default
  | ["runner", "median ms", "vs crun (our bundle)", "vs crun (default bundle)"],
    (.results[] | [.command, (.median * 1000 * 100 | round / 100),
                   ((.median / $crun) * 100 | round / 100), ((.median / $default) * 100 | round / 100)])
  | @tsv' "$WORK/result.json" | column -t -s "$(printf '\t')"

# Where the native run's time goes: the median of each step over RUNS reports.
echo
i=0
while [ $i -lt "$RUNS" ]; do
    "$CTL" run --memory 256MiB --pids 64 --timeout 30s --net none --report "$WORK/r.json" -- /bin/true
    jq -c .timings_us "$WORK/r.json" >> "$WORK/steps.jsonl"
    sleep "$GAP"
    i=$((i + 1))
done
python3 - "$WORK/steps.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
steps = list(rows[0])
prep = ("store", "compile", "authorise", "host_paths", "bundle", "prepare")
print(f"{'step':<14}{'median µs':>10}")
for step in steps:
    print(f"{step:<14}{statistics.median(r.get(step, 0) for r in rows):>10.0f}")
print(f"{'(preparation)':<14}{statistics.median(sum(r.get(s, 0) for s in prep) for r in rows):>10.0f}")
print(f"{'total':<14}{statistics.median(sum(r.values()) for r in rows):>10.0f}")
PY
