#!/usr/bin/env bash
# A/B of two invsync builds on PostgreSQL, in one invocation: one private
# PostgreSQL (the baseline's setup, default configuration) with a database per
# build; each build's server is started in turn against its own database
# (alternating, so drift on the machine hits both) and drives the same workload.
# Prints every run and the ratio of the medians, with visibility p99.
#   usage: scripts/bench-ab-pg.sh BASE_BINARY [RUNS] [SECONDS] [CLIENTS] [WORKLOAD]
#   (env: STORES=3 SKUS=10000, the catalogue; PGPORT=55432)
# The candidate is this tree's release build. Embedded bus (no NATS).
set -euo pipefail
cd "$(dirname "$0")/.."
A=$(realpath "$1") RUNS=${2:-3} T=${3:-10} C=${4:-32} W=${5:-spread}
. scripts/bench-common.sh
STORES=1 SKUS=1 PORT=$PGPORT "$BASE/setup.sh" "$D/pg" >/dev/null
for db in base new; do psql -h 127.0.0.1 -p "$PGPORT" -U postgres -q -c "CREATE DATABASE $db"; done
run() { # NAME BINARY [--no-seed] -> "NAME res/s p50 p99 visibility_p99 check"
  local port; port=$(free_port)
  "$2" serve --data-dir "$D/node-$1" --listen "127.0.0.1:$port" \
    --database-url "postgres://postgres@127.0.0.1:$PGPORT/$1" 2>>"$D/$1.log" & local srv=$!; pids+=($srv)
  wait_up "http://127.0.0.1:$port"
  "$B" bench --url "http://127.0.0.1:$port" --workload "$W" --clients "$C" --duration "${T}s" \
    --stores "${STORES:-3}" --skus "${SKUS:-10000}" --json ${3:-} | python3 -c '
import json, sys
s = json.load(sys.stdin); v = s.get("visibility_ms") or {}
print(sys.argv[1], round(s["throughput_per_s"]), s["latency_ms"]["p50"], s["latency_ms"]["p99"],
      v.get("p99", "-"), "ok" if s["oversell_check"].startswith("ok") else "FAILED")' "$1"
  kill "$srv"; wait "$srv" 2>/dev/null || true
}
# Seed each database once; the measured runs reuse the catalogue.
run base "$A" >/dev/null; run new "$B" >/dev/null
for _ in $(seq "$RUNS"); do run base "$A" --no-seed; run new "$B" --no-seed; done | tee "$D/runs"
python3 - "$D/runs" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
med = lambda name, i: statistics.median(float(r[i]) for r in rows if r[0] == name)
b, n = med("base", 1), med("new", 1)
print(f"median res/s: base {b:.0f}, new {n:.0f}, ratio {n / b:.2f}; "
      f"p99 ms: base {med('base', 3):.1f}, new {med('new', 3):.1f}; "
      f"visibility p99 ms: base {med('base', 4):.1f}, new {med('new', 4):.1f}")
PY
