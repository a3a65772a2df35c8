#!/usr/bin/env bash
# The growth run of performance.md: the same spread reservation workload on 10,000 and
# on 10,000,000 stock rows (embedded SQLite, 64 clients), and the server's peak RSS.
#   usage: scripts/bench-growth.sh [SECONDS] [BIG_ROWS]
set -euo pipefail
cd "$(dirname "$0")/.."
T=${1:-10} BIG=${2:-10000000}
. scripts/bench-common.sh
port=$(free_port)
"$B" serve --data-dir "$D/data" --listen "127.0.0.1:$port" 2>"$D/log" & SERVER=$!; pids+=($SERVER)
wait_up "http://127.0.0.1:$port"
line() { python3 -c '
import json, sys
s = json.load(sys.stdin)
print("%s %.0f %.1f %.1f %s" % (sys.argv[1], s["throughput_per_s"], s["latency_ms"]["p50"], s["latency_ms"]["p99"],
      "ok" if s["oversell_check"].startswith("ok") else "OVERSOLD"))' "$1"; }
small=$("$B" bench --url "http://127.0.0.1:$port" --workload spread --clients 64 --duration "${T}s" --skus 10000 --json --no-visibility | line 10000)
echo "$small"
# Seed the big catalog first (and let the storefront apply it), then reset the
# server's peak RSS (clear_refs 5) so that it covers the reservation load alone: the
# target is about memory under load, not while 10M seeding events stream through.
"$B" bench --url "http://127.0.0.1:$port" --workload spread --clients 64 --duration 1s --skus "$BIG" --json --no-visibility >/dev/null
echo 5 >"/proc/$SERVER/clear_refs"
big=$("$B" bench --url "http://127.0.0.1:$port" --workload spread --clients 64 --duration "${T}s" --skus "$BIG" --no-seed --json --no-visibility | line "$BIG")
echo "$big"
rss=$(awk '/VmHWM/ {printf "%.0f", $2/1024}' "/proc/$SERVER/status")
read -r _ _ _ p99_small _ <<<"$small"
read -r _ _ _ p99_big _ <<<"$big"
echo "p99 ratio ${BIG} rows / 10,000 rows: $(python3 -c "print('%.2f' % ($p99_big / $p99_small))"); server peak RSS under the ${BIG}-row load ${rss} MB; ledger file $(du -h "$D/data/ledger.db" | cut -f1)"
