#!/usr/bin/env bash
# What a reservation through a channel costs beside a store-direct one (issue 13:
# at most 1.5x), on both ledgers, in one invocation. The catalogue is the same for
# both workloads: 3 stores x 10,000 SKUs, 1,000,000 on hand each. `spread` reserves
# one unit at a random (store, sku); `channels --till-sales 0` reserves one unit of a
# random SKU through a channel of those 3 locations (each reservation reads and locks
# all 3 candidate rows). The two alternate, ROUNDS times each, so drift hits both;
# the medians and their ratio are printed. A last `channels` run with 10 % till
# sales shows the race the workload is named for, with its check.
#   usage: scripts/bench-channels.sh [SECONDS] [ROUNDS]     (env: PGPORT=55432)
set -euo pipefail
cd "$(dirname "$0")/.."
T=${1:-10}
ROUNDS=${2:-2}
. scripts/bench-common.sh
one() { # url workload extra... -> "res/s p50 p99 check"
  local url=$1 workload=$2; shift 2
  "$B" bench --url "$url" --workload "$workload" --stores 3 --skus 10000 --clients 32 \
    --duration "${T}s" --no-visibility --json "$@" | python3 -c '
import json, sys
s = json.load(sys.stdin)
print("%.0f %.2f %.2f %s" % (s["throughput_per_s"], s["latency_ms"]["p50"], s["latency_ms"]["p99"],
      "ok" if s["oversell_check"].startswith("ok") else "FAILED:" + s["oversell_check"]))'
}
median() { python3 -c 'import statistics, sys; print("%.2f" % statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }
compare() { # label url
  local label=$1 url=$2 s_rps=() s_p50=() c_rps=() c_p50=()
  # Seed once, by a short run of each, so the measured rounds meet the same state.
  one "$url" spread >/dev/null
  for r in $(seq "$ROUNDS"); do
    read -r rps p50 p99 check < <(one "$url" spread --no-seed)
    echo "$label round $r spread   res/s=$rps p50=$p50 p99=$p99 $check"
    s_rps+=("$rps"); s_p50+=("$p50")
    read -r rps p50 p99 check < <(one "$url" channels --no-seed --till-sales 0)
    echo "$label round $r channels res/s=$rps p50=$p50 p99=$p99 $check"
    c_rps+=("$rps"); c_p50+=("$p50")
  done
  local sr cr sp cp
  sr=$(median "${s_rps[@]}"); cr=$(median "${c_rps[@]}")
  sp=$(median "${s_p50[@]}"); cp=$(median "${c_p50[@]}")
  echo "$label median: spread $sr res/s p50 $sp ms; channels $cr res/s p50 $cp ms;" \
    "cost of a channel reservation: $(python3 -c "print('%.2f' % ($sr / $cr))")x by throughput," \
    "$(python3 -c "print('%.2f' % ($cp / $sp))")x by p50 (target <= 1.5x)"
  read -r rps p50 p99 check < <(one "$url" channels --no-seed --till-sales 10)
  echo "$label channels with 10 % till sales: res/s=$rps p50=$p50 p99=$p99 $check"
}

# 1. Embedded SQLite.
hp=$(free_port)
"$B" serve --data-dir "$D/embedded" --listen "127.0.0.1:$hp" 2>>"$D/serve.log" & server=$!; pids+=($server)
wait_up "http://127.0.0.1:$hp"
compare embedded "http://127.0.0.1:$hp"
kill "$server"; wait "$server" 2>/dev/null || true

# 2. PostgreSQL (the baseline's private server, its default configuration).
STORES=1 SKUS=1 PORT=$PGPORT "$BASE/setup.sh" "$D/pg" >/dev/null
psql -h 127.0.0.1 -p "$PGPORT" -U postgres -q -c "CREATE DATABASE invsync"
hp=$(free_port)
"$B" serve --data-dir "$D/pg-node" --listen "127.0.0.1:$hp" \
  --database-url "postgres://postgres@127.0.0.1:$PGPORT/invsync" 2>>"$D/serve.log" & server=$!; pids+=($server)
wait_up "http://127.0.0.1:$hp"
compare PostgreSQL "http://127.0.0.1:$hp"
