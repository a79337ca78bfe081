#!/usr/bin/env bash
# CPU per full EAP-AKA' authentication of `capillary core` alone, under one long
# `capillary bench radius` load (no hostapd, no 1,000-session limit), in a private network
# namespace. Used to measure the steps of docs/PERFORMANCE.md ("Group commit, prefetch").
#
# Usage: bench/core-cpu.sh [BIN...]       (default: $CARGO_TARGET_DIR or target, release/capillary)
# Several binaries are measured one after the other, REPEAT times, interleaved.
# Environment: SUBSCRIBERS (200), CONCURRENCY (32), COUNT (20000), REPEAT (1), PERF=1 records
#   `perf record -g` of the server into the work directory (kept, path printed),
#   CORE_TOML (extra TOML appended to the server's configuration, e.g.
#   $'[eap]\nidentity_store = "memory"').
set -euo pipefail
if [ -z "${BENCH_IN_NETNS:-}" ]; then
    exec unshare -n env BENCH_IN_NETNS=1 "$0" "$@"
fi
ip link set lo up

ROOT=$(cd "$(dirname "$0")/.." && pwd)
[ $# -gt 0 ] || set -- "${CARGO_TARGET_DIR:-$ROOT/target}/release/capillary"
SUBSCRIBERS=${SUBSCRIBERS:-200}
CONCURRENCY=${CONCURRENCY:-32}
COUNT=${COUNT:-20000}
REPEAT=${REPEAT:-1}
IMSI_START=001010000010001
CLK_TCK=$(getconf CLK_TCK)
ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
field() { grep -o "\"$2\":[0-9.]*" "$1" | head -1 | cut -d: -f2; }

one() {
    local bin=$1 W pid t0 t1 pp=
    W=$(mktemp -d /tmp/core-cpu.XXXXXX)
    cat > "$W/core.toml" <<EOF
data_dir = "$W/data"
[radius]
listen = "127.0.0.1:18120"
[[radius.client]]
name = "bench"
address = "127.0.0.1"
secret = "bench-core-secret"
trusted = true
${CORE_TOML:-}
EOF
    "$bin" bench radius --imsi-start "$IMSI_START" --subscribers "$SUBSCRIBERS" \
        --emit-csv "$W/population.csv" 2>/dev/null
    CAPILLARY_LOG=error "$bin" subscriber import "$W/population.csv" --data-dir "$W/data" >/dev/null
    CAPILLARY_LOG=warn "$bin" core --config "$W/core.toml" > "$W/core.out" 2> "$W/core.log" &
    pid=$!
    for _ in $(seq 100); do grep -q '^radius-listen=' "$W/core.out" && break; sleep 0.05; done
    load() {
        "$bin" bench radius --server 127.0.0.1:18120 --secret bench-core-secret \
            --imsi-start "$IMSI_START" --subscribers "$SUBSCRIBERS" --concurrency "$CONCURRENCY" \
            --count "$1" --mode full --json
    }
    load 200 > /dev/null 2>&1 || true   # warm-up
    t0=$(ticks "$pid")
    if [ -n "${PERF:-}" ]; then
        perf record -F 2000 -g -p "$pid" -o "$W/perf.data" 2>/dev/null &
        pp=$!
        sleep 0.3
    fi
    load "$COUNT" > "$W/run.json" 2> "$W/run.err" || true
    t1=$(ticks "$pid")
    [ -z "$pp" ] || { kill -INT "$pp"; wait "$pp" || true; }
    kill "$pid"; wait "$pid" 2>/dev/null || true
    awk -v bin="$bin" -v ok="$(field "$W/run.json" succeeded)" -v f="$(field "$W/run.json" failed)" \
        -v rate="$(field "$W/run.json" auths_per_s)" -v cpu=$((t1 - t0)) -v tck="$CLK_TCK" \
        'BEGIN { printf "%-45s %10.0f auths/s %6d failed %8.1f CPU us/auth\n", bin, rate, f, (ok > 0) ? cpu * 1e6 / tck / ok : 0 }'
    if [ -n "${PERF:-}" ]; then echo "perf data: $W/perf.data"; else rm -rf "$W"; fi
}

for _ in $(seq "$REPEAT"); do
    for bin in "$@"; do one "$bin"; done
done
