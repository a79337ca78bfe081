#!/bin/sh
# Prints criterion's results as ratios to the floor of the machine: one AES-128 block and one
# SHA-256 compression (docs/PERFORMANCE.md, "Crypto against the floor").
#
# Usage: bench/floor-ratios.sh [CRITERION_DIR] [ID_REGEX]
#   CRITERION_DIR  default: ${CARGO_TARGET_DIR:-target}/criterion
#   ID_REGEX       only benchmarks whose id matches (Python regex, searched), e.g. '^(floor|milenage)/'
#
# Run it right after
#   cargo bench -p capillary-aka --bench floor -- --warm-up-time 1 --measurement-time 2
#   cargo bench -p capillary-oscore --bench oscore -- --warm-up-time 1 --measurement-time 2
#
# For each benchmark it reads new/benchmark.json (the id) and new/estimates.json (the median,
# criterion's `median.point_estimate`, in ns). The floor of a benchmark `G/...` is
# `G/floor/aes128_block` and `G/floor/hmac_sha256_compression` when that binary measured its own
# floor under its group (crates/oscore/benches/oscore.rs does), otherwise `floor/aes128_block`
# and `floor/hmac_sha256_compression` (crates/aka/benches/floor.rs). The "floor" column says
# which; "other binary" marks a benchmark whose floor was not measured in the same binary and
# run (e.g. crates/network/benches/auth.rs), so its ratio also carries the run-to-run noise.
# The "run" column is the UTC time criterion wrote the estimate, to spot stale results.
set -eu
dir=${1:-${CARGO_TARGET_DIR:-target}/criterion}
filter=${2:-}
[ -d "$dir" ] || { echo "no criterion results in $dir" >&2; exit 1; }
exec python3 - "$dir" "$filter" <<'PY'
import datetime, json, os, re, sys

root, flt = sys.argv[1], sys.argv[2]
# Groups whose benchmarks share a binary (and a run) with floor/* (crates/aka/benches/floor.rs).
AKA_FLOOR_BINARY = {"floor", "milenage", "aka_prime"}
AES, SHA = "floor/aes128_block", "floor/hmac_sha256_compression"

res = {}
for d, _, files in os.walk(root):
    if os.path.basename(d) != "new" or "estimates.json" not in files:
        continue
    try:
        with open(os.path.join(d, "benchmark.json")) as f:
            bid = json.load(f)["full_id"]
        with open(os.path.join(d, "estimates.json")) as f:
            med = json.load(f)["median"]["point_estimate"]
    except (OSError, KeyError, ValueError) as e:
        print(f"skipping {d}: {e}", file=sys.stderr)
        continue
    mtime = os.path.getmtime(os.path.join(d, "estimates.json"))
    res[bid] = (med, datetime.datetime.fromtimestamp(mtime, datetime.timezone.utc))

if AES not in res or SHA not in res:
    sys.exit(f"{AES} and {SHA} are missing in {root}: run the aka floor bench first")

def fmt(ns):
    if ns < 1000:
        return f"{ns:.2f} ns" if ns < 100 else f"{ns:.1f} ns"
    return f"{ns / 1000:.3f} µs" if ns < 10000 else f"{ns / 1000:.1f} µs"

def floors(bid):
    g = bid.split("/", 1)[0]
    own = (f"{g}/{AES}", f"{g}/{SHA}")
    if own[0] in res and own[1] in res:
        return own, f"`{g}/floor`"
    return (AES, SHA), "`floor`" if g in AKA_FLOOR_BINARY else "`floor`, other binary"

ORDER = {"floor": 0, "milenage": 1, "aka_prime": 2, "oscore": 3}

def key(bid):
    g = bid.split("/", 1)[0]
    return (ORDER.get(g, len(ORDER)), "/floor/" not in f"/{bid}", bid)

print("| Benchmark | Median | × AES-128 block | × SHA-256 compression | Floor | Run (UTC) |")
print("|---|---:|---:|---:|---|---|")
for bid in sorted(res, key=key):
    if flt and not re.search(flt, bid):
        continue
    med, t = res[bid]
    (a, s), src = floors(bid)
    print(f"| `{bid}` | {fmt(med)} | {med / res[a][0]:.1f} | {med / res[s][0]:.1f} | {src} "
          f"| {t:%Y-%m-%d %H:%M} |")
PY
