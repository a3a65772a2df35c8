#!/usr/bin/env bash
# Measures how long a backlog of N events (default 100,000) takes to drain into the
# storefront projection and into a local webhook receiver, on the embedded default.
#   usage: scripts/measure-drain.sh [EVENTS]      (builds the release binaries first)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-100000}
PORT=18282 HOOK_PORT=19900 SECRET=drain-secret-0123456789
cargo build -q --release -p invsync --bin invsync --example webhook_receiver
B=target/release/invsync
D=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$D"; }
trap cleanup EXIT
start() { $B serve --data-dir "$D" --listen 127.0.0.1:$PORT "$@" 2>>"$D/log" & SERVER=$!; pids+=($SERVER)
  for _ in $(seq 100); do curl -sf localhost:$PORT/healthz >/dev/null && return; sleep 0.1; done; echo "server did not start" >&2; exit 1; }
stop() { kill -TERM "$SERVER"; wait "$SERVER" || true; }
lag() { curl -sf localhost:$PORT/v1/consumers | python3 -c "import json,sys; print(next(c['lag_events'] for c in json.load(sys.stdin)['items'] if c['name']=='$1'))"; }
wait_drained() { local t0; t0=$(date +%s%N); while [ "$(lag "$1")" != 0 ]; do sleep 0.05; done
  local ms=$(( ($(date +%s%N) - t0) / 1000000 )); printf '%d.%03d' $((ms / 1000)) $((ms % 1000)); }

echo "seeding $N events"
start
python3 - "$N" "$PORT" <<'PY'
import json, sys, urllib.request
n, port = int(sys.argv[1]), sys.argv[2]
for start in range(0, n, 1000):
    items = [{"store_id": "S%d" % (i % 10), "sku": "SKU-%05d" % (i % 10000), "delta": 1, "reason": "stock_in"} for i in range(start, min(n, start + 1000))]
    req = urllib.request.Request("http://127.0.0.1:%s/v1/adjustments/batch" % port, json.dumps({"items": items}).encode(), {"content-type": "application/json"})
    urllib.request.urlopen(req).read()
PY
wait_drained storefront >/dev/null
stop

echo "storefront: dropping its store, then timing the rebuild from the log"
rm -f "$D"/storefront.db*
start
echo "storefront drained $N events in $(wait_drained storefront) s"
stop

echo "webhook: timing delivery of the whole log to a local receiver"
target/release/examples/webhook_receiver 127.0.0.1:$HOOK_PORT $SECRET > "$D/receiver.log" & pids+=($!)
sleep 0.3
start --webhook-url http://127.0.0.1:$HOOK_PORT/hook --webhook-secret $SECRET
echo "webhook drained $N events in $(wait_drained webhook) s"
tail -1 "$D/receiver.log"
stop
