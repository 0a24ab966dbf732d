#!/usr/bin/env bash
# Service-discovery propagation, every component its own `flotilla serve` process on 127.0.0.1:
# a registry, product A (demo seed) and product B on one fresh PostgreSQL database, a gateway that
# finds them through the registry, and a steady load of GET /v1/products/{id} through the gateway.
#   figure 1: SIGTERM of A; from A's log, its "deregistered" line to the last GetProduct call it
#             handled (calls the gateway routed before it noticed); and the failed requests.
#   figure 2: start product C; the registry's `?passing` set first listing C (held as a blocking
#             query) to C's first handled GetProduct call.
# Check interval 1 s, timeout 1 s, deregister delay 2 s (override with CHECK_INTERVAL,
# CHECK_TIMEOUT, DEREGISTER_DELAY). The servers are pinned to CPU 0 and the load generator to
# CPU 1 (SERVERS_CPU / LOAD_CPU; -1 does not pin). CLIENTS (default 4) concurrent connections,
# RATE total requests/s (default 0: as fast as they go).
# Prints one JSON line per run, then a Markdown table of medians, min and max.
# Usage: bench/discovery.sh [RUNS]   (default 5; needs PostgreSQL at 127.0.0.1:5432 as user
# postgres; builds the release binary first into $CARGO_TARGET_DIR, default /work/target-bench)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/work/target-bench}
export PROTOC=/nonexistent/protoc  # nothing may rely on a system protoc
cargo build --release --quiet -j 2 -p flotilla
binary=$CARGO_TARGET_DIR/release/flotilla

work=$(mktemp -d)
bench_scripts=(discovery_bench.py)
# shellcheck source=bench/fleet.sh
source bench/fleet.sh

results="$work/results.jsonl"
for run in $(seq 1 "$runs"); do
  database="flotilla_bench_discovery_$$_$run"
  databases+=("$database")
  psql_admin -c "CREATE DATABASE $database"
  mkdir -p "$work/run-$run"
  # Bounded: a run takes about 15 s (start-up, 1 s warm-up, SIGTERM + 2 s delay + drain, C).
  timeout --signal=TERM --kill-after=10 120 python3 bench/discovery_bench.py run \
    --binary "$binary" --work "$work/run-$run" \
    --database-url "postgres://postgres@127.0.0.1:5432/$database" \
    --check-interval "${CHECK_INTERVAL:-1s}" --check-timeout "${CHECK_TIMEOUT:-1s}" \
    --deregister-delay "${DEREGISTER_DELAY:-2s}" \
    --clients "${CLIENTS:-4}" --rate "${RATE:-0}" \
    --servers-cpu "${SERVERS_CPU:-0}" --load-cpu "${LOAD_CPU:-1}" | tee -a "$results"
  if [ -n "${KEEP_LOGS:-}" ]; then
    mkdir -p "$KEEP_LOGS/run-$run"
    cp -r "$work/run-$run/." "$KEEP_LOGS/run-$run/"
  fi
  psql_admin -c "DROP DATABASE $database WITH (FORCE)"
done

echo
echo "over $runs runs ($(nproc) cores; check interval ${CHECK_INTERVAL:-1s}, timeout ${CHECK_TIMEOUT:-1s}, deregister delay ${DEREGISTER_DELAY:-2s}):"
python3 bench/discovery_bench.py summary "$results"
