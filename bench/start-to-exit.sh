#!/bin/sh
# Start-to-exit of /bin/true under the native runner (every restriction on) and its peers,
# side by side in one run; prints medians and each one's ratio to crun.
#
#   sudo bench/start-to-exit.sh [RUNS]
#
# Needs: a release build (cargo build --release), hyperfine, jq, runc, crun, runsc, bwrap.
# crun 1.8 refuses the cgroup v1 hybrid layout, so it runs in a private mount namespace
# with /sys/fs/cgroup/unified unmounted; that wrapper (about 3 ms) is counted in its time.
# runc 1.1 cannot bind /dev/tty without a controlling terminal in a user namespace, and
# runsc's own user-namespace handling differs, so runc and runsc run the same bundle with
# the user namespace removed (host root inside), which is their ordinary mode.
set -eu
RUNS=${1:-50}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CTL=$ROOT/target/release/covenant-ctl
[ -x "$CTL" ] || { echo "build first: cargo build --release" >&2; exit 1; }
for tool in hyperfine jq runc crun runsc bwrap; do
    command -v $tool >/dev/null || { echo "missing $tool (apt-get install hyperfine jq runc crun runsc bubblewrap)" >&2; exit 1; }
done
WORK=$(mktemp -d /tmp/covenant-bench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
chmod 711 "$WORK"
export COVENANT_HOME=$WORK/home
"$CTL" bundle --out "$WORK/bundle" -- /bin/true >/dev/null
cp -a "$WORK/bundle" "$WORK/bundle-nouserns"
jq '.linux.namespaces |= map(select(.type != "user")) | del(.linux.uidMappings, .linux.gidMappings)' \
    "$WORK/bundle/config.json" > "$WORK/bundle-nouserns/config.json"
n=0
next() { n=$((n + 1)); echo "c$n-$$"; }

hyperfine -N --warmup 5 --runs "$RUNS" --export-json "$WORK/result.json" \
    -n "fork+exec" "/bin/true" \
    -n "covenant native" "$CTL run --memory 256MiB --pids 64 --timeout 30s --net none -- /bin/true" \
    -n "crun run" "unshare -m --propagation private sh -c 'umount /sys/fs/cgroup/unified; exec crun run -b $WORK/bundle crun-\$\$'" \
    -n "runc run" "sh -c 'exec runc run -b $WORK/bundle-nouserns runc-\$\$'" \
    -n "runsc run" "sh -c 'exec runsc --platform=ptrace --network=none run -bundle $WORK/bundle-nouserns runsc-\$\$'" \
    -n "bwrap --unshare-all" "bwrap --unshare-all --ro-bind /usr /usr --symlink usr/bin /bin --symlink usr/lib /lib --symlink usr/lib64 /lib64 --proc /proc --dev /dev /bin/true" \
    >/dev/null
jq -r '
  (.results[] | select(.command == "crun run") | .median) as $crun
  | ["runner", "median ms", "ratio to crun"], (.results[] | [.command, (.median * 1000 * 100 | round / 100), ((.median / $crun) * 100 | round / 100)])
  | @tsv' "$WORK/result.json" | column -t -s "$(printf '\t')"
