# Sourced by the bench scripts: builds the release binary, makes a work dir removed
# on exit (with every process listed in `pids`, and the private PostgreSQL if one was
# set up there), and offers `free_port` and `wait_up URL`.
PGPORT=${PGPORT:-55432}
# The PostgreSQL baseline of performance.md, kept in the repository (bench/).
BASE=bench/pgbench-baseline
cargo build -q --release -p invsync
B=$PWD/target/release/invsync
D=$(mktemp -d)
chmod 755 "$D"  # PostgreSQL runs as its own user when we are root
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ -d "$D/pg" ]; then PORT=$PGPORT "$BASE/stop.sh" "$D/pg" >/dev/null 2>&1 || true; fi
  rm -rf "$D"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_up() { for _ in $(seq 200); do curl -sf "$1/healthz" >/dev/null && return; sleep 0.05; done; echo "no answer from $1" >&2; exit 1; }
