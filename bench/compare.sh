#!/usr/bin/env bash
# Flotilla against bare baselines (see bench/compare.py), then `flotilla up` start-up and idle
# memory (bench/startup.sh). Needs wrk and taskset (Debian's wrk and util-linux); 127.0.0.1 only.
# Usage: bench/compare.sh [ROUNDS]   (default 3; builds release binaries first)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }
cargo build --release --quiet -p flotilla -p loadgen
python3 bench/compare.py "${1:-3}"
echo
bench/startup.sh 9
