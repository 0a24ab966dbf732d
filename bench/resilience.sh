#!/usr/bin/env bash
# What the resilience stack costs and buys, every component its own `flotilla serve` process on
# 127.0.0.1 with PostgreSQL at 127.0.0.1:5432:
#   figure 1: an open circuit breaker. A product instance whose GetProduct always fails
#             (FLOTILLA_FAULTS=...GetProduct=abort:unavailable:100%) behind a gateway with
#             FLOTILLA_BREAKER_COOL_DOWN=10m; GETs until the gateway answers 503 with Retry-After,
#             then COUNT (default 2000) sequential GETs over one keep-alive connection: the
#             gateway's own logged latency of those 503s and the client's (median, p99), and the
#             GetProduct calls the product handled meanwhile (should be 0). The same COUNT GETs
#             through a healthy product and gateway for comparison (200s).
#   figure 2: a rolling restart under load. Products A (demo seed) and B on one fresh database
#             behind a gateway, CLIENTS (default 4) closed-loop keep-alive clients of
#             GET /v1/products/{id}; start C, wait until the registry lists it as passing, SIGTERM
#             A and wait for its exit; the same with D and B; 1 s more of load. Requests, failed
#             requests, requests/s, the restart's duration.
# Check interval 1 s, timeout 1 s, deregister delay 2 s (override with CHECK_INTERVAL,
# CHECK_TIMEOUT, DEREGISTER_DELAY). The servers are pinned to CPU 0 and the clients to CPU 1
# (SERVERS_CPU / LOAD_CPU; -1 does not pin). KEEP_LOGS=DIR keeps every run's logs.
# Prints one JSON line per run, then a Markdown table of medians, min and max.
# Usage: bench/resilience.sh [RUNS]   (default 5; needs PostgreSQL at 127.0.0.1:5432 as user
# postgres; builds the release binary first into $CARGO_TARGET_DIR, default /work/target-bench)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/work/target-bench}
export PROTOC=/nonexistent/protoc  # nothing may rely on a system protoc
cargo build --release --quiet -j 2 -p flotilla
binary=$CARGO_TARGET_DIR/release/flotilla

work=$(mktemp -d)
bench_scripts=(resilience_bench.py discovery_bench.py)
# shellcheck source=bench/fleet.sh
source bench/fleet.sh

results="$work/results.jsonl"
for run in $(seq 1 "$runs"); do
  breaker_database="flotilla_bench_resilience_$$_${run}_breaker"
  rolling_database="flotilla_bench_resilience_$$_${run}_rolling"
  databases+=("$breaker_database" "$rolling_database")
  psql_admin -c "CREATE DATABASE $breaker_database"
  psql_admin -c "CREATE DATABASE $rolling_database"
  mkdir -p "$work/run-$run"
  # Bounded: a run takes about 30 s (figure 1: start-up and 2 x (200 + COUNT) GETs; figure 2:
  # start-up, 1 s of warm-up, two new instances and two SIGTERMs with their 2 s delay, 1 s more).
  # In the background, so that a signal to this script is handled at once, not after the run.
  timeout --signal=TERM --kill-after=10 240 python3 bench/resilience_bench.py run \
    --binary "$binary" --work "$work/run-$run" \
    --breaker-database-url "postgres://postgres@127.0.0.1:5432/$breaker_database" \
    --rolling-database-url "postgres://postgres@127.0.0.1:5432/$rolling_database" \
    --count "${COUNT:-2000}" \
    --check-interval "${CHECK_INTERVAL:-1s}" --check-timeout "${CHECK_TIMEOUT:-1s}" \
    --deregister-delay "${DEREGISTER_DELAY:-2s}" --clients "${CLIENTS:-4}" \
    --servers-cpu "${SERVERS_CPU:-0}" --load-cpu "${LOAD_CPU:-1}" >"$work/run-$run/result.json" &
  runner=$!
  status=0
  wait "$runner" || status=$?
  runner=
  tee -a "$results" <"$work/run-$run/result.json"
  # Kept before giving up on a failed run: its logs are what explains it.
  if [ -n "${KEEP_LOGS:-}" ]; then
    mkdir -p "$KEEP_LOGS/run-$run"
    cp -r "$work/run-$run/." "$KEEP_LOGS/run-$run/"
  fi
  [ "$status" -eq 0 ] || { echo "run $run failed ($status)" >&2; exit "$status"; }
  psql_admin -c "DROP DATABASE $breaker_database WITH (FORCE)"
  psql_admin -c "DROP DATABASE $rolling_database WITH (FORCE)"
done

echo
echo "over $runs runs ($(nproc) cores; ${COUNT:-2000} GETs per path; check interval ${CHECK_INTERVAL:-1s}, timeout ${CHECK_TIMEOUT:-1s}, deregister delay ${DEREGISTER_DELAY:-2s}):"
python3 bench/resilience_bench.py summary "$results"
