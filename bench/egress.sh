#!/bin/sh
# The egress gateway against --net host, side by side in one run, on the same loopback test
# server (bench/egress_server.py on 127.77.200.x; nothing leaves this machine):
#   - bulk download of BYTES (default 1 GiB): throughput, ROUNDS (default 5) interleaved
#     pairs, each pair's ratio and the median (the host path's own rate swings with the
#     machine's other load, so one pair says little);
#   - connection setup (connect, first bytes, one round trip): p50 and p90 over 200;
#   - 1,000 concurrent connections from one sandbox: how many are served;
#   - the supervising process's resident memory per idle connection (1,000 held).
#
#   sudo bench/egress.sh [BYTES [ROUNDS]]
#
# Needs: a release build (cargo build --release), python3, jq.
set -eu
BYTES=${1:-1073741824}
ROUNDS=${2:-5}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
CTL=$ROOT/target/release/covenant-ctl
[ -x "$CTL" ] || { echo "build first: cargo build --release" >&2; exit 1; }
command -v jq >/dev/null || { echo "missing jq" >&2; exit 1; }
WORK=$(mktemp -d /tmp/covenant-egress-bench.XXXXXX)
chmod 711 "$WORK"
cp "$ROOT/bench/egress_client.py" "$WORK/client.py"
python3 "$ROOT/bench/egress_server.py" > "$WORK/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; rm -rf "$WORK"' EXIT
until grep -q ready "$WORK/server.log" 2>/dev/null; do sleep 0.1; done
export COVENANT_HOME=$WORK/home
export COVENANT_EGRESS_RESOLVER=127.77.200.53:53
export COVENANT_EGRESS_PUBLIC=127.77.200.0/24
EGRESS="--allow-host bulk.test"
HOST="--net host"

calc() { awk "BEGIN { print $1 }"; }

run() { # MODE-FLAGS TARGET ARGS...
    flags=$1; shift
    # shellcheck disable=SC2086
    "$CTL" run --workspace "$WORK" --pids 256 $flags -- python3 /workspace/client.py "$@"
}

printf '%-34s %14s %14s %8s\n' "measure" "net host" "egress gateway" "ratio"
: > "$WORK/bulk"
for i in $(seq "$ROUNDS"); do
    h=$(run "$HOST" bulk 127.77.200.10 "$BYTES" | jq .mib_per_s)
    e=$(run "$EGRESS" bulk bulk.test "$BYTES" | jq .mib_per_s)
    r=$(calc "$e / $h")
    echo "$r" >> "$WORK/bulk"
    printf '%-34s %12.0f/s %12.0f/s %8.2f\n' "bulk download, MiB, pair $i" "$h" "$e" "$r"
done
printf '%-34s %14s %14s %8.2f\n' "bulk download, median ratio" "" "" \
    "$(sort -n "$WORK/bulk" | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')"

h=$(run "$HOST" setup 127.77.200.10 200)
e=$(run "$EGRESS" setup bulk.test 200)
printf '%-34s %12.3fms %12.3fms %+7.3fms\n' "connection setup + 1 RTT, p50" "$(echo "$h" | jq .p50_ms)" "$(echo "$e" | jq .p50_ms)" \
    "$(calc "$(echo "$e" | jq .p50_ms) - $(echo "$h" | jq .p50_ms)")"
printf '%-34s %12.3fms %12.3fms\n' "connection setup + 1 RTT, p90" "$(echo "$h" | jq .p90_ms)" "$(echo "$e" | jq .p90_ms)"

h=$(run "$HOST" concurrent 127.77.200.10 1000 | jq -r '"\(.served)/\(.opened)"')
e=$(run "$EGRESS" concurrent bulk.test 1000 | jq -r '"\(.served)/\(.opened)"')
printf '%-34s %14s %14s\n' "1,000 concurrent, served" "$h" "$e"

# Resident memory of the supervising process (the gateway's owner) with 1 and with 1,000
# idle connections held through the gateway.
rss_with() { # N
    run "$EGRESS" idle bulk.test "$1" 3 > "$WORK/idle.out" &
    until grep -q idle "$WORK/idle.out" 2>/dev/null; do sleep 0.05; done
    pid=$(pgrep -o -f "covenant-ctl run --workspace $WORK")
    awk '/VmRSS/ {print $2}' "/proc/$pid/status"
    wait
}
one=$(rss_with 1)
many=$(rss_with 1000)
printf '%-34s %14s %12.1fKiB   (resident %s KiB with 1, %s KiB with 1,000)\n' "gateway memory per idle connection" "-" \
    "$(calc "($many - $one) / 999")" "$one" "$many"
