#!/usr/bin/env bash
# A/B of two invsync builds on the embedded ledger, in one invocation: each run starts
# a fresh server of each build in turn (alternating, so drift on the machine hits both)
# and drives the same workload; prints every run and the ratio of the medians.
#   usage: scripts/bench-ab.sh BASE_BINARY [RUNS] [WORKLOAD] [SECONDS] [CLIENTS]
#   (env: SKUS=10000, the catalog size)
# The candidate is this tree's release build.
set -euo pipefail
cd "$(dirname "$0")/.."
A=$(realpath "$1") RUNS=${2:-3} W=${3:-spread} T=${4:-10} C=${5:-64}
. scripts/bench-common.sh
run() {  # run NAME BINARY N -> "NAME res/s p99"
  local port; port=$(free_port)
  "$2" serve --data-dir "$D/$1-$3" --listen "127.0.0.1:$port" 2>"$D/$1-$3.log" & local srv=$!; pids+=($srv)
  wait_up "http://127.0.0.1:$port"
  "$B" bench --url "http://127.0.0.1:$port" --workload "$W" --clients "$C" --duration "${T}s" --skus "${SKUS:-10000}" --json --no-visibility \
    | python3 -c 'import json,sys; s=json.load(sys.stdin); print(sys.argv[1], round(s["throughput_per_s"]), s["latency_ms"]["p99"], "ok" if s["oversell_check"].startswith("ok") else "OVERSOLD")' "$1"
  kill "$srv"; wait "$srv" 2>/dev/null || true
}
for i in $(seq "$RUNS"); do run base "$A" "$i"; run new "$B" "$i"; done | tee "$D/runs"
python3 - "$D/runs" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
med = lambda name, i: statistics.median(float(r[i]) for r in rows if r[0] == name)
b, n = med("base", 1), med("new", 1)
print(f"median res/s: base {b:.0f}, new {n:.0f}, ratio {n / b:.2f}; "
      f"median p99 ms: base {med('base', 2):.1f}, new {med('new', 2):.1f}")
PY
