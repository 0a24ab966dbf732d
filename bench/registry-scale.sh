#!/usr/bin/env bash
# The embedded registry (`flotilla serve registry`, the same as `flotilla registry`) at scale: each
# run starts it on 127.0.0.1 port 0 with a fresh data directory, registers INSTANCES instances over
# Consul's HTTP API (IDs <name>-<uuid> spread over 10 service names, tags, meta, one check each),
# keeps the checks passing for 30 s, and measures resident memory (VmRSS before, right after, after
# the steady state; VmHWM), registration latency, `GET /v1/health/service/<name>?passing` (median of
# 50), the wake-up of a blocking query, the size of registry.json and the time to stop.
# Two variants, RUNS runs each: TTL checks (30 s TTL, passed every 10 s by the script, as services
# would) and gRPC checks (10 s interval, 500 ms timeout, as Flotilla's own services register them)
# against one real `flotilla serve product`. Prints one JSON line per run, then a table of medians.
# Both processes run with FLOTILLA_DISCOVERY=static: nothing talks to a registry at 127.0.0.1:8500.
# Usage: bench/registry-scale.sh [RUNS] [INSTANCES]   (defaults 3 and 1000; 127.0.0.1 only; builds
# the release binary first into $CARGO_TARGET_DIR, default /work/target-bench)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
instances=${2:-1000}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/work/target-bench}
export PROTOC=/nonexistent/protoc  # nothing may rely on a system protoc
cargo build --release --quiet -j 2 -p flotilla
binary=$CARGO_TARGET_DIR/release/flotilla

work=$(mktemp -d)
cleanup() {
  # The helper stops what it starts; this catches what it left behind if it was killed.
  if [ -f "$work/pids" ]; then
    local pid left=()
    while read -r pid; do
      # Only a PID that is still our binary: a stopped process's PID may have been reused.
      if grep -qF "$binary" "/proc/$pid/cmdline" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null && left+=("$pid")
      fi
    done <"$work/pids"
    for _ in $(seq 1 100); do
      [ "${#left[@]}" -eq 0 ] && break
      local alive=()
      for pid in "${left[@]}"; do
        grep -qF "$binary" "/proc/$pid/cmdline" 2>/dev/null && alive+=("$pid")
      done
      left=("${alive[@]}")
      sleep 0.1
    done
    for pid in "${left[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  fi
  rm -rf "$work"
}
trap cleanup EXIT

helper() { python3 bench/registry_scale.py "$@"; }
# Bounded: a run takes about a minute (registration, 30 s of steady state, the queries).
bounded() { timeout --signal=TERM --kill-after=10 300 python3 bench/registry_scale.py "$@"; }

read -r grpc_target product_pid < <(helper serve-product --binary "$binary" --work "$work")
echo "gRPC health endpoint: flotilla serve product at $grpc_target (pid $product_pid)"

results="$work/results.jsonl"
for run in $(seq 1 "$runs"); do
  for variant in ttl grpc; do
    bounded run --binary "$binary" --work "$work" --variant "$variant" \
      --grpc-target "$grpc_target" --instances "$instances" --seed "$run" | tee -a "$results"
  done
done
kill -TERM "$product_pid"

echo
echo "medians over $runs runs of $instances instances ($(nproc) cores):"
helper summary "$results"
