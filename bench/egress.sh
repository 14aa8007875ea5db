#!/bin/sh
# The egress gateway against --net host, side by side in one run, on the same loopback test
# server (bench/egress_server.py on 127.77.200.x; nothing leaves this machine):
#   - bulk download of BYTES (default 1 GiB): throughput and the machine's CPU time per GiB,
#     ROUNDS (default 5) interleaved rounds of the host path, the gateway and a plain
#     reference relay (bench/egress_relay.py), each round's ratios and their medians (the
#     host path's own rate swings with the machine's other load, so one round says little);
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
python3 "$ROOT/bench/egress_relay.py" > "$WORK/relay.log" 2>&1 &
RELAY=$!
trap 'kill $SERVER $RELAY 2>/dev/null; rm -rf "$WORK"' EXIT
until grep -q ready "$WORK/server.log" 2>/dev/null; do sleep 0.1; done
until grep -q ready "$WORK/relay.log" 2>/dev/null; do sleep 0.1; done
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

# Busy CPU time of the whole machine, in clock ticks: with the machine otherwise quiet, what
# a download costs every party (server, gateway or relay, client, the kernel's TCP work).
busy() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }
HZ=$(getconf CLK_TCK)
bulk() { # FLAGS TARGET: prints "MiB/s CPU-seconds-per-GiB"
    b0=$(busy)
    rate=$(run "$1" bulk "$2" "$BYTES" | jq .mib_per_s)
    b1=$(busy)
    echo "$rate $(calc "($b1 - $b0) / $HZ / ($BYTES / 1073741824)")"
}

echo "bulk download of $BYTES bytes; each pair interleaved with the reference relay"
echo "(bench/egress_relay.py: splice, blocking threads, no checks, autotuned buffers);"
echo "CPU is the whole machine's busy time per GiB moved"
printf '%-8s %16s %16s %16s %8s %8s\n' "pair" "net host" "egress gateway" "plain relay" "gateway" "relay"
printf '%-8s %16s %16s %16s %8s %8s\n' "" "MiB/s  CPU s" "MiB/s  CPU s" "MiB/s  CPU s" "ratio" "ratio"
: > "$WORK/bulk"
: > "$WORK/relay"
: > "$WORK/bulk.cpu"
: > "$WORK/relay.cpu"
for i in $(seq "$ROUNDS"); do
    set -- $(bulk "$HOST" 127.77.200.10) $(bulk "$EGRESS" bulk.test) $(bulk "$HOST" 127.77.200.11)
    g=$(calc "$3 / $1")
    r=$(calc "$5 / $1")
    echo "$g" >> "$WORK/bulk"
    echo "$r" >> "$WORK/relay"
    calc "$4 / $2" >> "$WORK/bulk.cpu"
    calc "$6 / $2" >> "$WORK/relay.cpu"
    printf '%-8s %9.0f %6.2f %9.0f %6.2f %9.0f %6.2f %8.2f %8.2f\n' "$i" "$1" "$2" "$3" "$4" "$5" "$6" "$g" "$r"
done
median() { sort -n "$1" | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
printf '%-8s %16s %16s %16s %8.2f %8.2f\n' "median" "" "" "" "$(median "$WORK/bulk")" "$(median "$WORK/relay")"
printf '%-42s %16s %8.2f %8.2f\n\n' "CPU per GiB against the host path, median" "" \
    "$(median "$WORK/bulk.cpu")" "$(median "$WORK/relay.cpu")"

printf '%-34s %14s %14s %8s\n' "measure" "net host" "egress gateway" "ratio"
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
