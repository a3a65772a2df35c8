#!/usr/bin/env bash
# The targets of performance.md, in one invocation:
#   1. Embedded SQLite: spread and hot at 64 clients, against the absolute targets.
#   2. PostgreSQL: invsync (one instance, NATS bus) beside pgbench's textbook
#      reservation on the same private server and catalog (100 stores x 10,000 SKUs =
#      1M stock rows): spread at 32 clients, one hot SKU at 128 clients.
# `invsync bench` waits after seeding until the consumers have caught up, so the
# load meets a pipeline in its steady state.
# Prints one line per point, then a Markdown table (BENCHMARKS.md takes it as is).
#   usage: scripts/bench-vs-pgbench.sh [SECONDS]     (env: PGPORT=55432)
set -euo pipefail
cd "$(dirname "$0")/.."
T=${1:-10}
. scripts/bench-common.sh
summary() { python3 -c '
import json, sys
s = json.load(sys.stdin)
v = s.get("visibility_ms") or {}
print("%.0f %.1f %.1f %s %s" % (s["throughput_per_s"], s["latency_ms"]["p50"], s["latency_ms"]["p99"],
      "%.1f" % v["p99"] if v else "-", "ok" if s["oversell_check"].startswith("ok") else "OVERSOLD"))'; }
rss_mb() { awk '/VmHWM/ {printf "%.0f", $2/1024}' "/proc/$1/status"; }
rows=()
point() { # label workload clients url target baseline
  read -r rps p50 p99 vis check < <("$B" bench --url "$3" --workload "$1" --clients "$2" --duration "${T}s" --stores "$STORES" --skus "$SKUS" --json | summary)
  rows+=("$4|$1|$2|$rps|$p50|$p99|$vis|$5|$check")
  echo "$4 $1 clients=$2 res/s=$rps p50=$p50 p99=$p99 visibility_p99=$vis vs=$5 $check"
}

# 1. Embedded SQLite.
hp=$(free_port)
"$B" serve --data-dir "$D/embedded" --listen "127.0.0.1:$hp" 2>>"$D/serve.log" & sq_server=$!; pids+=($sq_server)
wait_up "http://127.0.0.1:$hp"
STORES=1 SKUS=10000
point spread 64 "http://127.0.0.1:$hp" "embedded" "20000 (target)"
STORES=1 SKUS=1
point hot 64 "http://127.0.0.1:$hp" "embedded" "10000 (target)"
sq_rss=$(rss_mb "$sq_server")
kill "$sq_server"; wait "$sq_server" 2>/dev/null || true


# 2. PostgreSQL and NATS (after the embedded points, so that PostgreSQL's own
#    checkpoints after loading 1M rows cannot disturb SQLite's fsyncs).
PORT=$PGPORT "$BASE/setup.sh" "$D/pg" >/dev/null
psql -h 127.0.0.1 -p "$PGPORT" -U postgres -q -c "CREATE DATABASE invsync"
np=$(free_port); mkdir -p "$D/nats"
nats-server -js -a 127.0.0.1 -p "$np" -sd "$D/nats" >/dev/null 2>&1 & pids+=($!)
hp=$(free_port)
"$B" serve --data-dir "$D/pg-node" --listen "127.0.0.1:$hp" \
  --database-url "postgres://postgres@127.0.0.1:$PGPORT/invsync" --bus "nats://127.0.0.1:$np" 2>>"$D/serve.log" & pg_server=$!; pids+=($pg_server)
wait_up "http://127.0.0.1:$hp"
STORES=100 SKUS=10000
base=$(PORT=$PGPORT "$BASE/run.sh" textbook spread 32 "$T" | awk '{print $4}')
point spread 32 "http://127.0.0.1:$hp" "PostgreSQL" "$(printf '%.0f' "$base") (textbook)"
STORES=1 SKUS=1
base=$(PORT=$PGPORT "$BASE/run.sh" textbook hot 128 "$T" | awk '{print $4}')
point hot 128 "http://127.0.0.1:$hp" "PostgreSQL" "$(printf '%.0f' "$base") (textbook)"
pg_rss=$(rss_mb "$pg_server")
kill "$pg_server"; wait "$pg_server" 2>/dev/null || true

echo
echo "$(date -u +%Y-%m-%dT%H:%MZ), ${T}s per point, $(nproc) cores; server peak RSS: PostgreSQL node ${pg_rss} MB, embedded ${sq_rss} MB"
echo "| ledger | workload | clients | invsync res/s | p50 ms | p99 ms | visibility p99 ms | held against | ratio | oversell check |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
for r in "${rows[@]}"; do
  IFS='|' read -r l w c rps p50 p99 vis vs check <<<"$r"
  ratio=$(python3 -c "print('%.2f' % ($rps / ${vs%% *}))")
  echo "| $l | $w | $c | $rps | $p50 | $p99 | $vis | $vs | $ratio | $check |"
done
