#!/usr/bin/env bash
# Mixed traffic on PostgreSQL: reservations, releases, fulfilments and stock-ins from
# many clients on a few SKUs of one store (the load that once deadlocked), beside
# the spread workload on the same server, then the PostgreSQL log's deadlock count.
#   usage: scripts/bench-mix-pg.sh [SECONDS] [CLIENTS] [SKUS]   (env: PGPORT=55432)
set -euo pipefail
cd "$(dirname "$0")/.."
T=${1:-15} CLIENTS=${2:-48} SKUS=${3:-8}
. scripts/bench-common.sh
STORES=1 PORT=$PGPORT "$BASE/setup.sh" "$D/pg" >/dev/null
psql -h 127.0.0.1 -p "$PGPORT" -U postgres -q -c "CREATE DATABASE invsync"
hp=$(free_port)
"$B" serve --data-dir "$D/node" --listen "127.0.0.1:$hp" \
  --database-url "postgres://postgres@127.0.0.1:$PGPORT/invsync" 2>>"$D/serve.log" & pids+=($!)
wait_up "http://127.0.0.1:$hp"
for w in spread mix; do
  "$B" bench --url "http://127.0.0.1:$hp" --workload "$w" --clients "$CLIENTS" --duration "${T}s" \
    --stores 1 --skus "$SKUS" --json > "$D/$w.json"
  python3 -c '
import json, sys
s = json.load(open(sys.argv[1]))
print("%-6s clients=%s skus=%s  %.0f ops/s  p50 %.1f ms  p99 %.1f ms  %s" % (sys.argv[2], s["clients"], sys.argv[3],
      s["throughput_per_s"], s["latency_ms"]["p50"], s["latency_ms"]["p99"], s["oversell_check"]))' "$D/$w.json" "$w" "$SKUS"
done
[ -n "${KEEP_JSON:-}" ] && cp "$D"/*.json "$KEEP_JSON"/
echo "deadlocks in the PostgreSQL log: $(grep -c 'deadlock detected' "$D/pg/pg.log" || true)"
