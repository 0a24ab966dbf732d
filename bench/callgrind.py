#!/usr/bin/env python3
"""Instructions per GetProduct call, counted by valgrind's callgrind: the bare tonic server
(`bare-product`) against `flotilla serve product` at RUST_LOG=info and warn.

Wall-clock throughput on a shared 2-core machine moves by up to a third between runs; instruction
counts do not (the same binary, inputs and environment give the same count whatever else the machine
is doing), so this is the figure to compare a change by. Each server runs under callgrind with
instrumentation off; it is switched on (`callgrind_control -i on`) just before `grpc-load` starts
(16 streams, 2 s warm-up, SECONDS of load) and off right after, and the instructions counted are
divided by every call made, warm-up included.

Usage: bench/callgrind.py [SECONDS] [FLOTILLA_BINARY ...]
  SECONDS           load per server (default 20; under callgrind a call is ~50 times slower)
  FLOTILLA_BINARY   other `flotilla` binaries to count too (a build of an earlier commit, say)
Needs valgrind (Debian's package) and release binaries (`cargo build --release -p flotilla -p
loadgen`). 127.0.0.1 only; every process is stopped at the end.
"""

import json
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402  (the shared helpers: free ports, waiting, stopping)

BIN = "target/release"
STREAMS, WARMUP = 16, 2


def under_callgrind(work, label, command, env):
    name = re.sub(r"[^A-Za-z0-9]+", "-", label)
    out = f"{work}/{name}.callgrind"
    process = subprocess.Popen(
        ["taskset", "-c", "0", "valgrind", "--tool=callgrind", "--instr-atstart=no",
         f"--callgrind-out-file={out}", *command],
        env=env, stdout=subprocess.DEVNULL, stderr=open(f"{work}/{name}.log", "w"))
    return process, out


def count(work, label, command, env, port, seconds):
    process, out = under_callgrind(work, label, command, env)
    try:
        compare.wait_for_port(port, patience=120)
        time.sleep(1)
        subprocess.run(["callgrind_control", "-i", "on", str(process.pid)], check=True,
                       capture_output=True)
        load = subprocess.run(
            ["taskset", "-c", "1", f"{BIN}/grpc-load", f"127.0.0.1:{port}", str(STREAMS),
             str(WARMUP), str(seconds)],
            check=True, capture_output=True, text=True).stdout
        subprocess.run(["callgrind_control", "-i", "off", str(process.pid)], check=True,
                       capture_output=True)
    finally:
        compare.stop(process)
    report = json.loads(load)
    instructions = 0
    # The final dump holds everything counted while instrumentation was on.
    for line in open(out):
        match = re.match(r"(?:summary|totals): (\d+)", line)
        if match:
            instructions = max(instructions, int(match.group(1)))
    return {"server": label, "all_calls": report["all_calls"], "failed": report["failed"],
            "instructions": instructions,
            "instructions_per_call": instructions / max(report["all_calls"], 1)}


def flotilla(binary, work, label, level, seconds):
    port = compare.free_port()
    name = re.sub(r"[^A-Za-z0-9]+", "-", label)
    env = compare.product_env(work, name, port, level)
    command = [binary, "serve", "product", "--data-dir", f"{work}/{name}"]
    return count(work, label, command, env, port, seconds)


def main():
    seconds = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    binaries = [f"{BIN}/flotilla", *sys.argv[2:]]
    rows = []
    with tempfile.TemporaryDirectory() as work:
        port = compare.free_port()
        command = [f"{BIN}/bare-product", f"127.0.0.1:{port}", f"sqlite://{work}/bare.db"]
        rows.append(count(work, "bare tonic", command, dict(os.environ), port, seconds))
        print(json.dumps(rows[-1]), flush=True)
        for binary in binaries:
            for level in ("info", "warn"):
                label = f"{binary} RUST_LOG={level}"
                rows.append(flotilla(binary, work, label, level, seconds))
                print(json.dumps(rows[-1]), flush=True)
    bare = rows[0]["instructions_per_call"]
    print()
    print("| server | calls counted | instructions per call | against bare |")
    print("| --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['server']} | {row['all_calls']:,} | {row['instructions_per_call'] / 1000:,.1f} k | "
              f"{row['instructions_per_call'] / bare:.1%} |")


if __name__ == "__main__":
    main()
