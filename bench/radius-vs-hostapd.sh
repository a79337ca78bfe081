#!/usr/bin/env bash
# capillary core vs hostapd as EAP-AKA' RADIUS servers, under the same `capillary bench radius`
# load (full authentications, fixed count), in one run.
#
# - hostapd (integrated RADIUS + EAP server) uses Capillary as its AuC over the hlr_auc_gw
#   interface (eap_sim_db=unix:<socket>), exactly as crates/capillary/tests/interop_hostapd.rs;
# - `capillary core` answers RADIUS itself on another port, over the same store;
# - one population (written by `capillary bench radius --emit-csv`, provisioned with
#   `capillary subscriber import`) serves both;
# - each server's CPU time (utime + stime from /proc/<pid>/stat) is read before and after its load.
#   For hostapd the AuC's share (the capillary core process answering hlr_auc_gw) is shown too.
#
# hostapd binds 0.0.0.0, so the whole script re-executes itself inside a private network
# namespace (`unshare -n`, loopback only).
#
# Usage: bench/radius-vs-hostapd.sh            (after `cargo build --release -p capillary`)
# Environment: CAPILLARY_BIN (default: $CARGO_TARGET_DIR or target, release/capillary),
#   BASELINE_BIN (optional: another capillary binary, e.g. a copy of the previous build; its
#   `capillary core` runs on its own copy of the population on port 18121 and is measured in
#   the same run, first, under the same load),
#   SUBSCRIBERS (200), CONCURRENCY (32), COUNT (900 per round), ROUNDS (3), KEEP=1 keeps the
#   work directory, MEMORY (1: also measure CAPILLARY_BIN's `capillary core` with
#   `[eap] identity_store = "memory"` on its own copy of the population, port 18122; 0: skip),
#   PREFETCH (0: `[auc] prefetch` of every capillary core measured, baseline included).
#
# hostapd 2.10 keeps at most 1000 RADIUS sessions and keeps finished ones 5 s
# (RADIUS_MAX_SESSION, RADIUS_SESSION_MAINTAIN in src/radius/radius_server.c); a round therefore
# stays under 1000 authentications and rounds are 6 s apart. Both servers get the same rounds.
set -euo pipefail

if [ -z "${BENCH_IN_NETNS:-}" ]; then
    exec unshare -n env BENCH_IN_NETNS=1 "$0" "$@"
fi
ip link set lo up

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${CAPILLARY_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/capillary}
SUBSCRIBERS=${SUBSCRIBERS:-200}
CONCURRENCY=${CONCURRENCY:-32}
COUNT=${COUNT:-900}
ROUNDS=${ROUNDS:-3}
IMSI_START=001010000010001
CORE_PORT=18120
BASE_PORT=18121
MEM_PORT=18122
MEMORY=${MEMORY:-1}
PREFETCH=${PREFETCH:-0}
BASELINE_BIN=${BASELINE_BIN:-}
HOSTAPD_PORT=1812
CORE_SECRET=bench-core-secret
HOSTAPD_SECRET=bench-hostapd-secret

[ -x "$BIN" ] || { echo "no $BIN: cargo build --release -p capillary" >&2; exit 2; }
[ -z "$BASELINE_BIN" ] || [ -x "$BASELINE_BIN" ] || { echo "no $BASELINE_BIN" >&2; exit 2; }
command -v hostapd >/dev/null || { echo "hostapd is not installed" >&2; exit 2; }

W=$(mktemp -d /tmp/radius-vs-hostapd.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ -z "${KEEP:-}" ]; then rm -rf "$W"; else echo "work directory: $W" >&2; fi
}
trap cleanup EXIT

# --- capillary core: RADIUS on $CORE_PORT, AuC for hostapd on $W/hlr.sock -------------------
cat > "$W/core.toml" <<EOF
data_dir = "$W/data"
[radius]
listen = "127.0.0.1:$CORE_PORT"
[[radius.client]]
name = "bench"
address = "127.0.0.1"
secret = "$CORE_SECRET"
trusted = true
[auc]
prefetch = $PREFETCH
[hlr_auc_gw]
socket = "$W/hlr.sock"
EOF
"$BIN" bench radius --imsi-start "$IMSI_START" --subscribers "$SUBSCRIBERS" \
    --emit-csv "$W/population.csv" 2>/dev/null
CAPILLARY_LOG=error "$BIN" subscriber import "$W/population.csv" --data-dir "$W/data" >/dev/null

CAPILLARY_LOG=warn "$BIN" core --config "$W/core.toml" > "$W/core.out" 2> "$W/core.log" &
CORE_PID=$!
PIDS+=("$CORE_PID")
for _ in $(seq 100); do grep -qs '^radius-listen=' "$W/core.out" && break; sleep 0.05; done
grep -q '^radius-listen=' "$W/core.out" || { echo "core did not start:"; cat "$W/core.log"; exit 1; } >&2
for _ in $(seq 100); do [ -S "$W/hlr.sock" ] && break; sleep 0.05; done

# --- optional baseline: another build's `capillary core`, own data directory ---------------
if [ -n "$BASELINE_BIN" ]; then
    cat > "$W/base.toml" <<EOF
data_dir = "$W/base-data"
[radius]
listen = "127.0.0.1:$BASE_PORT"
[[radius.client]]
name = "bench"
address = "127.0.0.1"
secret = "$CORE_SECRET"
trusted = true
[auc]
prefetch = $PREFETCH
EOF
    CAPILLARY_LOG=error "$BASELINE_BIN" subscriber import "$W/population.csv" \
        --data-dir "$W/base-data" >/dev/null
    CAPILLARY_LOG=warn "$BASELINE_BIN" core --config "$W/base.toml" > "$W/base.out" 2> "$W/base.log" &
    BASE_PID=$!
    PIDS+=("$BASE_PID")
    for _ in $(seq 100); do grep -qs '^radius-listen=' "$W/base.out" && break; sleep 0.05; done
    grep -q '^radius-listen=' "$W/base.out" || { echo "baseline core did not start:"; cat "$W/base.log"; exit 1; } >&2
fi

# --- optional: this build's `capillary core` with in-memory identities, own data directory ---
if [ "$MEMORY" = 1 ]; then
    cat > "$W/mem.toml" <<EOF
data_dir = "$W/mem-data"
[radius]
listen = "127.0.0.1:$MEM_PORT"
[[radius.client]]
name = "bench"
address = "127.0.0.1"
secret = "$CORE_SECRET"
trusted = true
[eap]
identity_store = "memory"
[auc]
prefetch = $PREFETCH
EOF
    CAPILLARY_LOG=error "$BIN" subscriber import "$W/population.csv" --data-dir "$W/mem-data" >/dev/null
    CAPILLARY_LOG=warn "$BIN" core --config "$W/mem.toml" > "$W/mem.out" 2> "$W/mem.log" &
    MEM_PID=$!
    PIDS+=("$MEM_PID")
    for _ in $(seq 100); do grep -qs '^radius-listen=' "$W/mem.out" && break; sleep 0.05; done
    grep -q '^radius-listen=' "$W/mem.out" || { echo "memory-identity core did not start:"; cat "$W/mem.log"; exit 1; } >&2
fi

# --- hostapd: RADIUS on $HOSTAPD_PORT, vectors from Capillary ---------------------------------
printf '"6"*\tAKA'"'"'\n"7"*\tAKA'"'"'\n"8"*\tAKA'"'"'\n' > "$W/eap_user"
printf '127.0.0.1/32 %s\n' "$HOSTAPD_SECRET" > "$W/clients"
cat > "$W/hostapd.conf" <<EOF
driver=none
interface=capillary-as
logger_stdout=-1
logger_stdout_level=2
eap_server=1
eap_user_file=$W/eap_user
eap_sim_db=unix:$W/hlr.sock
radius_server_clients=$W/clients
radius_server_auth_port=$HOSTAPD_PORT
EOF
hostapd "$W/hostapd.conf" > "$W/hostapd.log" 2>&1 &
HOSTAPD_PID=$!
PIDS+=("$HOSTAPD_PID")
for _ in $(seq 100); do grep -q 'ENABLED' "$W/hostapd.log" 2>/dev/null && break; sleep 0.05; done
grep -q 'ENABLED' "$W/hostapd.log" || { echo "hostapd did not start:"; cat "$W/hostapd.log"; exit 1; } >&2

# --- measurement --------------------------------------------------------------------------
CLK_TCK=$(getconf CLK_TCK)
# utime + stime of a process, in clock ticks (proc(5): fields 14 and 15, counted after "comm").
ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
# A top-level numeric field of the bench's JSON report.
field() { grep -o "\"$2\":[0-9.]*" "$1" | head -1 | cut -d: -f2; }

# run NAME PORT SECRET: ROUNDS rounds of COUNT full authentications; sums into globals.
run() {
    local name=$1 port=$2 secret=$3 r
    OK=0 FAILED=0 ELAPSED=0 P99=0
    for r in $(seq "$ROUNDS"); do
        [ "$r" -gt 1 ] && sleep 6
        "$BIN" bench radius --server "127.0.0.1:$port" --secret "$secret" \
            --imsi-start "$IMSI_START" --subscribers "$SUBSCRIBERS" \
            --concurrency "$CONCURRENCY" --count "$COUNT" --mode full --json \
            > "$W/$name.$r.json" 2> "$W/$name.$r.err" || true
        [ -s "$W/$name.$r.json" ] || { echo "$name round $r: no report"; cat "$W/$name.$r.err"; exit 1; } >&2
        OK=$((OK + $(field "$W/$name.$r.json" succeeded)))
        FAILED=$((FAILED + $(field "$W/$name.$r.json" failed)))
        ELAPSED=$(awk -v a="$ELAPSED" -v b="$(field "$W/$name.$r.json" elapsed_s)" 'BEGIN{print a+b}')
        P99=$(awk -v a="$P99" -v b="$(field "$W/$name.$r.json" p99)" 'BEGIN{print (b>a)?b:a}')
    done
}

# A short unmeasured warm-up of each path (page cache, SQLite, hostapd's first vectors).
TARGETS=("$CORE_PORT $CORE_SECRET" "$HOSTAPD_PORT $HOSTAPD_SECRET")
[ -z "$BASELINE_BIN" ] || TARGETS+=("$BASE_PORT $CORE_SECRET")
[ "$MEMORY" != 1 ] || TARGETS+=("$MEM_PORT $CORE_SECRET")
for target in "${TARGETS[@]}"; do
    set -- $target
    "$BIN" bench radius --server "127.0.0.1:$1" --secret "$2" --imsi-start "$IMSI_START" \
        --subscribers "$SUBSCRIBERS" --concurrency "$CONCURRENCY" --count 50 --json \
        > /dev/null 2>&1 || true
done
sleep 6

if [ -n "$BASELINE_BIN" ]; then
    b0=$(ticks "$BASE_PID")
    run baseline "$BASE_PORT" "$CORE_SECRET"
    b1=$(ticks "$BASE_PID")
    BASE_OK=$OK BASE_FAILED=$FAILED BASE_ELAPSED=$ELAPSED BASE_P99=$P99
    BASE_CPU=$((b1 - b0))
    sleep 6
fi

c0=$(ticks "$CORE_PID")
run capillary "$CORE_PORT" "$CORE_SECRET"
c1=$(ticks "$CORE_PID")
CAP_OK=$OK CAP_FAILED=$FAILED CAP_ELAPSED=$ELAPSED CAP_P99=$P99
CAP_CPU=$((c1 - c0))
CAP_ROUNDS_PER_AUTH=$(grep -o '"round_trips_per_auth":[0-9.]*' "$W/capillary.1.json" | head -1 | cut -d: -f2)

if [ "$MEMORY" = 1 ]; then
    sleep 6
    m0=$(ticks "$MEM_PID")
    run memory "$MEM_PORT" "$CORE_SECRET"
    m1=$(ticks "$MEM_PID")
    MEM_OK=$OK MEM_FAILED=$FAILED MEM_ELAPSED=$ELAPSED MEM_P99=$P99
    MEM_CPU=$((m1 - m0))
fi

sleep 6
h0=$(ticks "$HOSTAPD_PID"); a0=$(ticks "$CORE_PID")
run hostapd "$HOSTAPD_PORT" "$HOSTAPD_SECRET"
h1=$(ticks "$HOSTAPD_PID"); a1=$(ticks "$CORE_PID")
HAP_OK=$OK HAP_FAILED=$FAILED HAP_ELAPSED=$ELAPSED HAP_P99=$P99
HAP_CPU=$((h1 - h0)) AUC_CPU=$((a1 - a0))
HAP_ROUNDS_PER_AUTH=$(grep -o '"round_trips_per_auth":[0-9.]*' "$W/hostapd.1.json" | head -1 | cut -d: -f2)

echo "capillary bench radius: $SUBSCRIBERS subscribers, concurrency $CONCURRENCY," \
    "$ROUNDS x $COUNT full EAP-AKA' authentications per server (CPU: utime+stime, 1/$CLK_TCK s ticks)," \
    "[auc] prefetch = $PREFETCH; RADIUS round trips per authentication: capillary" \
    "${CAP_ROUNDS_PER_AUTH:-?}, hostapd ${HAP_ROUNDS_PER_AUTH:-?}"
awk -v tck="$CLK_TCK" \
    -v cok="$CAP_OK" -v cf="$CAP_FAILED" -v ce="$CAP_ELAPSED" -v cc="$CAP_CPU" -v cp="$CAP_P99" \
    -v hok="$HAP_OK" -v hf="$HAP_FAILED" -v he="$HAP_ELAPSED" -v hc="$HAP_CPU" -v hp="$HAP_P99" \
    -v ac="$AUC_CPU" -v base="${BASELINE_BIN:+1}" -v bok="${BASE_OK:-0}" -v bf="${BASE_FAILED:-0}" \
    -v be="${BASE_ELAPSED:-0}" -v bc="${BASE_CPU:-0}" -v bp="${BASE_P99:-0}" \
    -v mem="${MEM_PID:+1}" -v mok="${MEM_OK:-0}" -v mf="${MEM_FAILED:-0}" \
    -v me="${MEM_ELAPSED:-0}" -v mc="${MEM_CPU:-0}" -v mp="${MEM_P99:-0}" 'BEGIN {
    crate = (ce > 0) ? cok / ce : 0;  hrate = (he > 0) ? hok / he : 0
    cus = (cok > 0) ? cc * 1e6 / tck / cok : 0
    hus = (hok > 0) ? hc * 1e6 / tck / hok : 0
    aus = (hok > 0) ? ac * 1e6 / tck / hok : 0
    printf "%-26s %10s %8s %10s %16s %10s\n", "server", "auths/s", "failed", "p99 ms", "CPU us/auth", "+AuC us"
    if (base) {
        brate = (be > 0) ? bok / be : 0
        bus = (bok > 0) ? bc * 1e6 / tck / bok : 0
        printf "%-26s %10.1f %8d %10.2f %16.1f %10s\n", "capillary core (baseline)", brate, bf, bp, bus, "-"
    }
    printf "%-26s %10.1f %8d %10.2f %16.1f %10s\n", "capillary core", crate, cf, cp, cus, "-"
    if (mem) {
        mrate = (me > 0) ? mok / me : 0
        mus = (mok > 0) ? mc * 1e6 / tck / mok : 0
        printf "%-26s %10.1f %8d %10.2f %16.1f %10s\n", "capillary core (memory ids)", mrate, mf, mp, mus, "-"
    }
    printf "%-26s %10.1f %8d %10.2f %16.1f %10.1f\n", "hostapd (+capillary AuC)", hrate, hf, hp, hus, aus
    printf "%-26s %10s %8s %10s %16s %10s\n", "ratio capillary/hostapd", \
        (hrate > 0) ? sprintf("%.2f", crate / hrate) : "n/a", "", "", \
        (hus > 0) ? sprintf("%.2f", cus / hus) : "n/a", \
        (hus + aus > 0) ? sprintf("%.2f*", cus / (hus + aus)) : "n/a"
    if (mem) printf "%-26s %10s %8s %10s %16s %10s\n", "ratio memory ids/hostapd", \
        (hrate > 0) ? sprintf("%.2f", mrate / hrate) : "n/a", "", "", \
        (hus > 0) ? sprintf("%.2f", mus / hus) : "n/a", \
        (hus + aus > 0) ? sprintf("%.2f*", mus / (hus + aus)) : "n/a"
    print "(* CPU ratio against hostapd plus the AuC work it delegates to capillary core)"
}'
[ "$CAP_FAILED" -eq 0 ] && [ "$HAP_FAILED" -eq 0 ] && [ "${BASE_FAILED:-0}" -eq 0 ] &&
    [ "${MEM_FAILED:-0}" -eq 0 ] || { echo "some authentications failed; see KEEP=1 and $W" >&2; exit 1; }
