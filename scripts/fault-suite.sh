#!/usr/bin/env bash
# The fault suite's long run: invsync (release build) on two PostgreSQL nodes under
# Patroni and a three-server NATS cluster, every kind of fault ROUNDS times, the whole
# history checked. Writes docs/faults/REPORT.md (and REPORT.json); exits non-zero when
# a check failed. Needs patroni, etcd-server, postgresql-15 and nats-server
# (`.ci/run` installs them).
#
#   scripts/fault-suite.sh [ROUNDS]      # default 5
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-5}"
cargo build --release --locked -p invsync -p invsync-faults
mkdir -p docs/faults
target/release/invsync-faults --invsync target/release/invsync --rounds "$rounds" \
  --report docs/faults/REPORT.md --json docs/faults/REPORT.json
