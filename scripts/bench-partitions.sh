#!/usr/bin/env bash
# Backlog drain of one webhook endpoint by 1, 2 and 4 `invsync consume --partitioned`
# processes sharing its 16 partitions (issue 14, item 4). One private PostgreSQL (the
# baseline's setup); a backlog of events is written once by `invsync bench`; then,
# for each process count, a fresh endpoint (its own name, so it starts from offset 0)
# drains the whole log into a local receiver that answers after DELAY ms, and the
# time from start until every partition has reached the head is measured. Rounds
# alternate the process counts, so drift on the machine hits each alike.
#   usage: scripts/bench-partitions.sh [ROUNDS] [BENCH_SECONDS] [DELAY_MS]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-2} T=${2:-10} DELAY=${3:-5}
. scripts/bench-common.sh
STORES=1 SKUS=1 PORT=$PGPORT "$BASE/setup.sh" "$D/pg" >/dev/null
DB="postgres://postgres@127.0.0.1:$PGPORT/postgres"

# The receiver (Node.js, so that it is not the bottleneck): answers every POST 200
# after DELAY ms (a remote system's latency).
hook=$(free_port)
node -e '
const [port, delay] = process.argv.slice(1).map(Number);
require("http").createServer((req, res) => {
  req.resume();
  req.on("end", () => setTimeout(() => res.end(), delay));
}).listen(port, "127.0.0.1");' "$hook" "$DELAY" & pids+=($!)

port=$(free_port)
"$B" serve --data-dir "$D/server" --listen "127.0.0.1:$port" --database-url "$DB" 2>>"$D/server.log" & pids+=($!)
wait_up "http://127.0.0.1:$port"
"$B" bench --url "http://127.0.0.1:$port" --workload spread --clients 32 --duration "${T}s" \
  --stores 3 --skus 2000 --json >/dev/null
head=$(curl -sf "http://127.0.0.1:$port/v1/events?after=0&limit=1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["head_offset"])')
echo "backlog: $head events"

drain() { # PROCESSES RUN -> "PROCESSES seconds events/s"
  local n=$1 name="drain$1x$2" urls=() procs=()
  printf '[[webhook]]\nname = "%s"\nurl = "http://127.0.0.1:%s/hook"\nsecret = "bench-secret-0123456789"\n' \
    "$name" "$hook" >"$D/$name.toml"
  local start; start=$(date +%s.%N)
  for i in $(seq "$n"); do
    local p; p=$(free_port)
    "$B" consume "$name" --partitioned --config "$D/$name.toml" --database-url "$DB" \
      --data-dir "$D/$name-$i" --listen "127.0.0.1:$p" 2>>"$D/$name.log" & procs+=($!); pids+=($!)
    urls+=("http://127.0.0.1:$p")
  done
  for u in "${urls[@]}"; do wait_up "$u"; done
  python3 - "$head" "${urls[@]}" <<'PY'
import json, sys, time, urllib.request
head, urls = int(sys.argv[1]), sys.argv[2:]
while True:
    done = {}
    for u in urls:
        for c in json.load(urllib.request.urlopen(u + "/v1/consumers"))["items"]:
            done[c["name"]] = c["position"] >= head
    if len(done) == 16 and all(done.values()):
        break
    time.sleep(0.02)
PY
  local end; end=$(date +%s.%N)
  kill "${procs[@]}"; wait "${procs[@]}" 2>/dev/null || true
  python3 -c "import sys; n,h,s,e=sys.argv[1:]; t=float(e)-float(s); print(n, round(t,2), round(int(h)/t))" "$n" "$head" "$start" "$end"
}
for r in $(seq "$ROUNDS"); do for n in 1 2 4; do drain "$n" "$r"; done; done | tee "$D/runs"
python3 - "$D/runs" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
med = {n: statistics.median(float(r[2]) for r in rows if r[0] == n) for n in ("1", "2", "4")}
print("median events/s: " + ", ".join(f"{n} process(es) {v:.0f}" for n, v in med.items())
      + f"; ratios vs 1: 2 → {med['2'] / med['1']:.2f}x, 4 → {med['4'] / med['1']:.2f}x")
PY
