#!/usr/bin/env bash
# invsync on PostgreSQL with 1, 2 and 3 instances beside pgbench's textbook reservation
# transaction, on one private PostgreSQL (the baseline of bench/pgbench-baseline), in one
# invocation, so every ratio compares figures taken minutes apart on the same server.
#   usage: scripts/bench-instances.sh [SECONDS] [CLIENTS] [INSTANCES...]
#   env:   BUS=nats (default) or embedded; PGPORT=55432
# Prints one line per point and a table at the end. Needs PostgreSQL 15 and, for
# BUS=nats, nats-server (both as .ci/run installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
T=${1:-10} C=${2:-64}
shift $(( $# > 2 ? 2 : $# )) || true
COUNTS=("${@:-1 2 3}")
read -r -a COUNTS <<<"${COUNTS[*]}"
BUS=${BUS:-nats}
. scripts/bench-common.sh

PORT=$PGPORT "$BASE/setup.sh" "$D/pg" >/dev/null
PSQL="psql -h 127.0.0.1 -p $PGPORT -U postgres -q"
point() { python3 -c '
import json, sys
s = json.load(sys.stdin)
print("%.0f %.1f %s" % (s["throughput_per_s"], s["latency_ms"]["p99"], "ok" if s["oversell_check"].startswith("ok") else "OVERSOLD"))'; }

rows=()
for n in "${COUNTS[@]}"; do
  db=invsync_$n
  $PSQL -c "CREATE DATABASE $db"
  flags=(--database-url "postgres://postgres@127.0.0.1:$PGPORT/$db")
  if [ "$BUS" = nats ]; then
    np=$(free_port); mkdir -p "$D/nats$n"
    nats-server -js -a 127.0.0.1 -p "$np" -sd "$D/nats$n" >/dev/null 2>&1 & pids+=($!)
    flags+=(--bus "nats://127.0.0.1:$np")
  fi
  urls=()
  for i in $(seq "$n"); do
    hp=$(free_port); mkdir -p "$D/i$n-$i"
    "$B" serve --data-dir "$D/i$n-$i" --listen "127.0.0.1:$hp" "${flags[@]}" 2>>"$D/serve.log" & pids+=($!)
    urls+=("http://127.0.0.1:$hp")
  done
  for u in "${urls[@]}"; do wait_up "$u"; done
  list=$(IFS=,; echo "${urls[*]}")
  for w in spread hot; do
    base=$(PORT=$PGPORT "$BASE/run.sh" textbook "$w" "$C" "$T" | awk '{print $4}')
    read -r rps p99 check < <("$B" bench --url "$list" --workload "$w" --clients "$C" --duration "${T}s" --json | point)
    ratio=$(python3 -c "print('%.2f' % ($rps / $base))")
    line="$n $w $base $rps $p99 $ratio $check"
    echo "instances=$n workload=$w pgbench_tps=$base invsync_res_per_s=$rps p99_ms=$p99 ratio=$ratio $check"
    rows+=("$line")
  done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
done

echo
echo "bus=$BUS clients=$C seconds=$T (textbook pgbench on the same server, same invocation)"
echo "| instances | workload | pgbench textbook tps | invsync res/s | invsync p99 ms | ratio | oversell check |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
for r in "${rows[@]}"; do read -r n w base rps p99 ratio check <<<"$r"; echo "| $n | $w | $base | $rps | $p99 | $ratio | $check |"; done
