#!/bin/sh
# gVisor with a writable workspace, side by side in one run:
#  1. Covenant's gvisor runner against plain `runsc run` on the same bundle (a writable
#     workspace bind; plain runsc binds it as is, Covenant idmaps it and runs runsc under
#     the gofer guard), `/bin/true`;
#  2. file-heavy work in the workspace, gvisor against native: unpacking a 10,000-file
#     tarball, and `git status` in a repository of 10,000 files.
# Prints medians and ratios.
#
#   sudo bench/gvisor-workspace.sh [RUNS]
#
# COVENANT_CTL names another covenant-ctl binary (a debug build, say).
# Needs: a release build, hyperfine, jq, runsc, git.
set -eu
RUNS=${1:-10}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CTL=${COVENANT_CTL:-$ROOT/target/release/covenant-ctl}
[ -x "$CTL" ] || { echo "build first: cargo build --release -p covenant-ctl" >&2; exit 1; }
for tool in hyperfine jq runsc git; do
    command -v $tool >/dev/null || { echo "missing $tool (apt-get install hyperfine jq runsc git)" >&2; exit 1; }
done
# On a tmpfs of its own: this VM's disk discards on every unlink, which makes removing
# 10,000 files take minutes and would measure the disk, not the runners.
WORK=$(mktemp -d /tmp/covenant-bench.XXXXXX)
mount -t tmpfs -o size=2g,mode=0711 covenant-bench "$WORK"
trap 'umount -l "$WORK"; rmdir "$WORK"' EXIT
export COVENANT_HOME=$WORK/home
WS=$WORK/ws
mkdir "$WS"

# The same bundle for both: Covenant's portable bundle with the workspace; plain runsc
# gets it without the user namespace (gVisor's own model, which Covenant derives too).
"$CTL" bundle --out "$WORK/bundle" --workspace "$WS" -- /bin/true >/dev/null
cp -a "$WORK/bundle" "$WORK/plain"
jq '.linux.namespaces |= map(select(.type != "user")) | del(.linux.uidMappings, .linux.gidMappings, .linux.resources)' \
    "$WORK/bundle/config.json" > "$WORK/plain/config.json"

# 10,000 files in 100 folders: a tarball, and a committed repository.
mkdir -p "$WORK/src"
i=0
while [ $i -lt 100 ]; do
    mkdir "$WORK/src/d$i"
    j=0
    while [ $j -lt 100 ]; do
        echo "$i $j" > "$WORK/src/d$i/f$j"
        j=$((j + 1))
    done
    i=$((i + 1))
done
tar -cf "$WS/files.tar" -C "$WORK/src" .
cp -a "$WORK/src" "$WS/repo"
git -C "$WS/repo" init -q
git -C "$WS/repo" add -A
git -C "$WS/repo" -c user.email=b@b -c user.name=b commit -qm files

UNPACK='rm -rf /workspace/out && mkdir /workspace/out && tar -xf /workspace/files.tar -C /workspace/out'
STATUS='git -C /workspace/repo status --porcelain'

hyperfine -N --warmup 1 --runs "$RUNS" --export-json "$WORK/result.json" \
    -n "runsc run (plain)" "sh -c 'exec runsc --platform=ptrace --network=none --oci-seccomp --ignore-cgroups run -bundle $WORK/plain plain-\$\$'" \
    -n "covenant gvisor" "$CTL run --runner gvisor --bundle $WORK/bundle" \
    -n "unpack gvisor" "$CTL run --runner gvisor --workspace $WS -- sh -c '$UNPACK'" \
    -n "unpack native" "$CTL run --workspace $WS -- sh -c '$UNPACK'" \
    -n "status gvisor" "$CTL run --runner gvisor --workspace $WS -- $STATUS" \
    -n "status native" "$CTL run --workspace $WS -- $STATUS" \
    >/dev/null
jq -r '
  (.results | map({(.command): .median}) | add) as $m
  | def ms(k): $m[k] * 1000 * 10 | round / 10;
    def ratio(a; b): $m[a] / $m[b] * 100 | round / 100;
    ["comparison", "median ms", "baseline ms", "ratio"],
    ["covenant gvisor (writable workspace) vs runsc run", ms("covenant gvisor"), ms("runsc run (plain)"), ratio("covenant gvisor"; "runsc run (plain)")],
    ["unpack 10k-file tar: gvisor vs native", ms("unpack gvisor"), ms("unpack native"), ratio("unpack gvisor"; "unpack native")],
    ["git status, 10k files: gvisor vs native", ms("status gvisor"), ms("status native"), ratio("status gvisor"; "status native")]
  | @tsv' "$WORK/result.json" | column -t -s "$(printf '\t')"
