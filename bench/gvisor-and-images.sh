#!/bin/sh
# Side by side in one run: Covenant's gVisor runner against plain `runsc run` on the same
# bundle, and a run from an imported image (overlay root) against the host rootfs.
# Prints medians and ratios.
#
#   sudo bench/gvisor-and-images.sh [RUNS]
#
# Needs: a release build, hyperfine, jq, runsc, busybox-static.
set -eu
RUNS=${1:-20}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CTL=$ROOT/target/release/covenant-ctl
[ -x "$CTL" ] || { echo "build first: cargo build --release" >&2; exit 1; }
for tool in hyperfine jq runsc busybox; do
    command -v $tool >/dev/null || { echo "missing $tool (apt-get install hyperfine jq runsc busybox-static)" >&2; exit 1; }
done
WORK=$(mktemp -d /tmp/covenant-bench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
chmod 711 "$WORK"
export COVENANT_HOME=$WORK/home

# The same bundle for both: Covenant's portable bundle; plain runsc gets it without the
# user namespace (gVisor's own model, which Covenant's gvisor runner derives too).
"$CTL" bundle --out "$WORK/bundle" -- /bin/true >/dev/null
cp -a "$WORK/bundle" "$WORK/plain"
jq '.linux.namespaces |= map(select(.type != "user")) | del(.linux.uidMappings, .linux.gidMappings, .linux.resources)' \
    "$WORK/bundle/config.json" > "$WORK/plain/config.json"

# A busybox image.
mkdir -p "$WORK/img/bin"
cp "$(command -v busybox)" "$WORK/img/bin/busybox"
ln -s busybox "$WORK/img/bin/true"
ln -s busybox "$WORK/img/bin/sh"
"$CTL" image pack "$WORK/img" --out "$WORK/layout" --name bench:1 >/dev/null
"$CTL" image import "$WORK/layout" >/dev/null 2>&1

hyperfine -N --warmup 3 --runs "$RUNS" --export-json "$WORK/result.json" \
    -n "runsc run (plain)" "sh -c 'exec runsc --platform=ptrace --network=none --oci-seccomp --ignore-cgroups run -bundle $WORK/plain plain-\$\$'" \
    -n "covenant gvisor" "$CTL run --runner gvisor --bundle $WORK/bundle" \
    -n "covenant native, host rootfs" "$CTL run -- /bin/true" \
    -n "covenant native, image rootfs" "$CTL run --rootfs image:bench:1 -- /bin/true" \
    >/dev/null
jq -r '
  (.results | map({(.command): .median}) | add) as $m
  | ["comparison", "median ms", "baseline ms", "ratio"],
    ["covenant gvisor vs runsc run", ($m["covenant gvisor"] * 1000 * 10 | round / 10), ($m["runsc run (plain)"] * 1000 * 10 | round / 10), ($m["covenant gvisor"] / $m["runsc run (plain)"] * 100 | round / 100)],
    ["image rootfs vs host rootfs (native)", ($m["covenant native, image rootfs"] * 1000 * 10 | round / 10), ($m["covenant native, host rootfs"] * 1000 * 10 | round / 10), ($m["covenant native, image rootfs"] / $m["covenant native, host rootfs"] * 100 | round / 100)]
  | @tsv' "$WORK/result.json" | column -t -s "$(printf '\t')"
