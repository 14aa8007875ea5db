#!/bin/sh
# covenant-runtime against crun and runc as the engines call them, on one default bundle
# (a static busybox root, `/bin/true`, the config `covenant-runtime spec` writes): `run`,
# and a create + start + delete cycle, side by side in one hyperfine run; prints medians
# and each one's ratio to crun.
#
#   sudo bench/runtime.sh [RUNS]
#
# Needs: a release build (cargo build --release -p covenant-runtime), hyperfine, jq,
# runc, crun, /bin/busybox (static). crun 1.8 refuses the cgroup v1 hybrid layout, so it
# runs in a private mount namespace with /sys/fs/cgroup/unified unmounted (about 3 ms,
# counted in its time).
set -eu
RUNS=${1:-40}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RT=$ROOT/target/release/covenant-runtime
[ -x "$RT" ] || { echo "build first: cargo build --release -p covenant-runtime" >&2; exit 1; }
for tool in hyperfine jq runc crun; do
    command -v $tool >/dev/null || { echo "missing $tool" >&2; exit 1; }
done
WORK=$(mktemp -d /tmp/covenant-runtime-bench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/b/rootfs/bin" "$WORK/b/rootfs/proc" "$WORK/b/rootfs/sys" "$WORK/b/rootfs/dev"
cp /bin/busybox "$WORK/b/rootfs/bin/busybox"
ln -s busybox "$WORK/b/rootfs/bin/true"
"$RT" spec --bundle "$WORK/b"
jq '.process.terminal = false | .process.args = ["/bin/true"]' "$WORK/b/config.json" > "$WORK/c.json"
mv "$WORK/c.json" "$WORK/b/config.json"
export COVENANT_RUNTIME_CONFIG=/nonexistent/runtime.toml
cat > "$WORK/crun" <<'SH'
#!/bin/sh
exec unshare -m --propagation private sh -c 'umount /sys/fs/cgroup/unified 2>/dev/null; exec crun "$@"' sh "$@"
SH
chmod +x "$WORK/crun"
C="$WORK/crun --root $WORK/crun-state"
hyperfine -N --warmup 5 --runs "$RUNS" --export-json "$WORK/result.json" \
    -n "covenant-runtime run" "sh -c '$RT --root $WORK/state run -b $WORK/b c\$\$'" \
    -n "crun run" "sh -c '$C run -b $WORK/b c\$\$'" \
    -n "runc run" "sh -c 'runc --root $WORK/runc run -b $WORK/b c\$\$'" \
    -n "covenant-runtime create+start+delete" "sh -c '$RT --root $WORK/state create -b $WORK/b c\$\$ && $RT --root $WORK/state start c\$\$ && $RT --root $WORK/state delete -f c\$\$'" \
    -n "crun create+start+delete" "sh -c '$C create -b $WORK/b c\$\$ && $C start c\$\$ && $C delete -f c\$\$'" \
    -n "runc create+start+delete" "sh -c 'runc --root $WORK/runc create -b $WORK/b c\$\$ && runc --root $WORK/runc start c\$\$ && runc --root $WORK/runc delete -f c\$\$'" \
    >/dev/null
jq -r '
  (.results[] | select(.command == "crun run") | .median) as $run
  | (.results[] | select(.command == "crun create+start+delete") | .median) as $cycle
  | ["runtime", "median ms", "ratio to crun"],
    (.results[] | (if (.command | test("create")) then $cycle else $run end) as $base
     | [.command, (.median * 1000 * 100 | round / 100), ((.median / $base) * 100 | round / 100)])
  | @tsv' "$WORK/result.json" | column -t -s "$(printf '\t')"
