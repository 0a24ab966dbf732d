#!/usr/bin/env bash
# Start-up of `flotilla up` on a fresh data directory (migrations and demo seed included): time from
# launch until endpoints.json exists (every listener bound, the store migrated and seeded), and the
# resident memory of the idle process right after. Prints one line per run and the medians.
# Usage: bench/startup.sh [RUNS]   (default 9; builds the release binary first; 127.0.0.1 only)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-9}
cargo build --release --quiet
binary=target/release/flotilla
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

ready=(); rss=()
for run in $(seq 1 "$runs"); do
  data="$work/run-$run"
  mkdir -p "$data"
  start=$(date +%s%N)
  "$binary" up --listen-ephemeral --data-dir "$data" >/dev/null 2>&1 &
  pid=$!
  for _ in $(seq 1 2000); do [ -f "$data/endpoints.json" ] && break; sleep 0.002; done
  end=$(date +%s%N)
  [ -f "$data/endpoints.json" ] || { echo "run $run: not ready within 4 s" >&2; kill "$pid"; exit 1; }
  sleep 0.2  # let start-up allocations settle before reading the idle RSS
  ready+=($(( (end - start) / 1000000 )))
  rss+=($(awk '/VmRSS/ {print $2}' "/proc/$pid/status"))
  kill -TERM "$pid"; wait "$pid"
  echo "run $run: ready ${ready[-1]} ms, idle RSS ${rss[-1]} KiB"
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "median over $runs runs: ready $(median "${ready[@]}") ms, idle RSS $(median "${rss[@]}") KiB"
