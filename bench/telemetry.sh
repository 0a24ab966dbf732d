#!/usr/bin/env bash
# What tracing costs: GetProduct throughput of the product service under `flotilla up`, with traces
# off (no OTLP endpoint) and on (every span exported at 100 % sampling over OTLP/gRPC to a local
# sink), alternating in one run. The server is pinned to CPU 0 and the load (grpc-load, 16
# concurrent streams on one connection) to CPU 1; each run warms up 3 s and measures 10 s.
# Prints one JSON line per run and the medians.
# Usage: bench/telemetry.sh [ROUNDS] [CONCURRENCY]   (default 3 rounds of off+on, 16 streams;
# builds release binaries first; 127.0.0.1 only)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
concurrency=${2:-16}
cargo build --release --quiet -p flotilla -p loadgen
bin=target/release
work=$(mktemp -d)
sink_pid=""
trap '[ -n "$sink_pid" ] && kill -TERM "$sink_pid" 2>/dev/null; rm -rf "$work"' EXIT

taskset -c 1 "$bin/otlp-sink" >"$work/sink.out" 2>&1 &
sink_pid=$!
for _ in $(seq 1 100); do [ -s "$work/sink.out" ] && break; sleep 0.05; done
sink=$(head -1 "$work/sink.out")

run() { # mode round
  local mode=$1 data="$work/$1-$2" env=()
  mkdir -p "$data"
  [ "$mode" = on ] && env=(OTEL_EXPORTER_OTLP_ENDPOINT="http://$sink" OTEL_TRACES_SAMPLER=always_on)
  env "${env[@]}" RUST_LOG=warn taskset -c 0 "$bin/flotilla" up --listen-ephemeral --data-dir "$data" \
    >"$data/log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 400); do [ -f "$data/endpoints.json" ] && break; sleep 0.025; done
  local product
  product=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["product"]["grpc"])' "$data/endpoints.json")
  local report
  report=$(taskset -c 1 "$bin/grpc-load" "$product" "$concurrency" 3 10)
  local cpu
  cpu=$(awk '{print ($14 + $15) / 100}' "/proc/$pid/stat")
  kill -TERM "$pid"; wait "$pid" || true
  echo "{\"mode\":\"$mode\",\"round\":$2,\"server_cpu_seconds\":$cpu,\"load\":$report}"
}

for round in $(seq 1 "$rounds"); do
  run off "$round" | tee -a "$work/results"
  run on "$round" | tee -a "$work/results"
done
kill -TERM "$sink_pid"; wait "$sink_pid" || true; sink_pid=""
echo "spans received by the sink: $(sed -n 2p "$work/sink.out")"
python3 - "$work/results" <<'PY'
import json, statistics, sys
runs = [json.loads(line) for line in open(sys.argv[1])]
for mode in ("off", "on"):
    mine = [run for run in runs if run["mode"] == mode]
    rate = statistics.median(run["load"]["calls_per_second"] for run in mine)
    p50 = statistics.median(run["load"]["p50_us"] for run in mine)
    p99 = statistics.median(run["load"]["p99_us"] for run in mine)
    failed = sum(run["load"]["failed"] for run in mine)
    print(f"traces {mode:>3}: median {rate:,.0f} calls/s, p50 {p50:.0f} us, p99 {p99:.0f} us, failed {failed}")
off = statistics.median(r["load"]["calls_per_second"] for r in runs if r["mode"] == "off")
on = statistics.median(r["load"]["calls_per_second"] for r in runs if r["mode"] == "on")
print(f"with traces on: {on / off:.1%} of the throughput with traces off")
PY
