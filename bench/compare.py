#!/usr/bin/env python3
"""Flotilla against bare baselines, in one run (bench/compare.sh builds the release binaries first).

1. gRPC GetProduct: the product service under `flotilla serve product` (auth layer, metrics, spans
   with no exporter, deadline, concurrency limit) against `bare-product`, the same tonic service and
   SQLite store behind a bare tonic server; 1, 16 and 64 concurrent streams on one connection.
2. HTTP GET /v1/products/{id} through the gateway of `flotilla up` with a valid JWT (wrk, 64
   connections) against GetProduct straight to the product service of the same process (64 streams).

Servers are pinned to CPU 0, load generators to CPU 1; every measurement is a 3 s warm-up and a
10 s run, repeated ROUNDS times with the servers alternating; figures are medians. Server CPU time
is read from /proc around each run (warm-up included) and divided by every call made; RSS is the
server's resident set at the end of the run. Flotilla runs at its default log level, `info`, as
its users run it. 127.0.0.1 only; every process is stopped at the end.
"""

import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

BIN = "target/release"
CONCURRENCIES = (1, 16, 64)
WARMUP, SECONDS = 3, 10
TICKS = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port, patience=30):
    deadline = time.time() + patience
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port} after {patience} s")


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def stop(process):
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


def grpc_load(addr, concurrency, pid):
    before = cpu_seconds(pid)
    out = subprocess.run(
        ["taskset", "-c", "1", f"{BIN}/grpc-load", addr, str(concurrency), str(WARMUP), str(SECONDS)],
        check=True, capture_output=True, text=True).stdout
    report = json.loads(out)
    cpu = cpu_seconds(pid) - before
    report["server_cpu_us_per_call"] = cpu * 1e6 / max(report["all_calls"], 1)
    report["server_rss_mib"] = rss_mib(pid)
    return report


def product_env(work, label, port, level="info"):
    """`flotilla serve product` on `port` (admin on a free one), SQLite with the demo seed, static
    discovery, no trace export, RUST_LOG=`level`."""
    env = dict(os.environ,
               DATABASE_URL=f"sqlite://{work}/{label}.db", FLOTILLA_PRODUCT_SEED_DEMO="true",
               FLOTILLA_DISCOVERY="static", FLOTILLA_PRODUCT_GRPC_ADDR=f"127.0.0.1:{port}",
               FLOTILLA_PRODUCT_ADMIN_ADDR=f"127.0.0.1:{free_port()}", RUST_LOG=level)
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    return env


def start_full(work, label):
    port = free_port()
    env = product_env(work, label, port)
    process = subprocess.Popen(
        ["taskset", "-c", "0", f"{BIN}/flotilla", "serve", "product", "--data-dir", f"{work}/{label}"],
        env=env, stdout=subprocess.DEVNULL, stderr=open(f"{work}/{label}.log", "w"))
    wait_for_port(port)
    return process, f"127.0.0.1:{port}"


def start_bare(work, label):
    port = free_port()
    process = subprocess.Popen(
        ["taskset", "-c", "0", f"{BIN}/bare-product", f"127.0.0.1:{port}", f"sqlite://{work}/{label}.db"],
        stdout=subprocess.DEVNULL, stderr=open(f"{work}/{label}.log", "w"))
    wait_for_port(port)
    return process, f"127.0.0.1:{port}"


def start_up(work, label):
    data = f"{work}/{label}"
    env = dict(os.environ, FLOTILLA_ADMIN_EMAIL="bench@example.com",
               FLOTILLA_ADMIN_PASSWORD="benchmark password", RUST_LOG="info")
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    process = subprocess.Popen(
        ["taskset", "-c", "0", f"{BIN}/flotilla", "up", "--listen-ephemeral", "--data-dir", data],
        env=env, stdout=subprocess.DEVNULL, stderr=open(f"{data}.log", "w"))
    for _ in range(600):
        if os.path.exists(f"{data}/endpoints.json"):
            break
        time.sleep(0.05)
    endpoints = json.load(open(f"{data}/endpoints.json"))
    return process, endpoints


def http_json(method, url, body=None, token=None):
    import urllib.request
    request = urllib.request.Request(url, method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"content-type": "application/json"})
    if token:
        request.add_header("authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def wrk(url, token, pid):
    command = ["taskset", "-c", "1", "wrk", "-t1", "-c64", "--latency", "-H", f"Authorization: Bearer {token}"]
    subprocess.run(command + [f"-d{WARMUP}s", url], check=True, capture_output=True)
    before = cpu_seconds(pid)
    out = subprocess.run(command + [f"-d{SECONDS}s", url], check=True, capture_output=True, text=True).stdout
    cpu = cpu_seconds(pid) - before

    def micros(text):
        value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()
        return float(value) * {"us": 1, "ms": 1e3, "s": 1e6}[unit]

    requests = int(re.search(r"(\d+) requests in", out).group(1))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "calls": requests,
        "failed": (int(non_2xx.group(1)) if non_2xx else 0) + (sum(map(int, errors.groups())) if errors else 0),
        "calls_per_second": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_us": micros(re.search(r"50%\s+(\S+)", out).group(1)),
        "p99_us": micros(re.search(r"99%\s+(\S+)", out).group(1)),
        "server_cpu_us_per_call": cpu * 1e6 / max(requests, 1),
        "server_rss_mib": rss_mib(pid),
    }


def median_of(runs, key):
    return statistics.median(run[key] for run in runs)


def row(name, runs):
    return (f"| {name} | {median_of(runs, 'calls_per_second'):,.0f} | {median_of(runs, 'p50_us'):,.0f} | "
            f"{median_of(runs, 'p99_us'):,.0f} | {median_of(runs, 'server_cpu_us_per_call'):.1f} | "
            f"{median_of(runs, 'server_rss_mib'):.1f} | {sum(run['failed'] for run in runs)} |")


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    results = {}
    with tempfile.TemporaryDirectory() as work:
        for round_ in range(1, rounds + 1):
            for name, start in (("bare tonic", start_bare), ("flotilla serve product", start_full)):
                process, addr = start(work, f"{name.split()[0]}-{round_}")
                try:
                    for concurrency in CONCURRENCIES:
                        report = grpc_load(addr, concurrency, process.pid)
                        results.setdefault((name, concurrency), []).append(report)
                        print(json.dumps({"round": round_, "server": name, **report}), flush=True)
                finally:
                    stop(process)
            process, endpoints = start_up(work, f"up-{round_}")
            try:
                gateway = endpoints["gateway"]["http"]
                token = http_json("POST", f"http://{gateway}/v1/auth/login",
                                  {"email": "bench@example.com", "password": "benchmark password"})["access_token"]
                product_id = http_json("GET", f"http://{gateway}/v1/products?page_size=1")["products"][0]["id"]
                report = wrk(f"http://{gateway}/v1/products/{product_id}", token, process.pid)
                results.setdefault(("gateway HTTP, wrk", 64), []).append(report)
                print(json.dumps({"round": round_, "server": "gateway HTTP", **report}), flush=True)
                report = grpc_load(endpoints["product"]["grpc"], 64, process.pid)
                results.setdefault(("direct gRPC in up", 64), []).append(report)
                print(json.dumps({"round": round_, "server": "direct gRPC in up", **report}), flush=True)
            finally:
                stop(process)

    print()
    print("| server | streams | calls/s | p50 µs | p99 µs | server CPU µs/call | server RSS MiB | failed |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for (name, concurrency), runs in results.items():
        print(row(name, runs).replace(f"| {name} |", f"| {name} | {concurrency} |", 1))
    print()
    # The machine's speed drifts between runs by more than the gap measured: each round's two
    # servers ran back to back, so the median of the rounds' own ratios is the steadier figure.
    for concurrency in CONCURRENCIES:
        print(ratio_line(f"full stack at {concurrency} streams", "the bare server's",
                         results[("flotilla serve product", concurrency)],
                         results[("bare tonic", concurrency)]))
    print(ratio_line("gateway path", "the direct gRPC", results[("gateway HTTP, wrk", 64)],
                     results[("direct gRPC in up", 64)]))


def ratio_line(label, baseline, runs, baseline_runs):
    ratio = median_of(runs, "calls_per_second") / median_of(baseline_runs, "calls_per_second")
    paired = statistics.median(run["calls_per_second"] / base["calls_per_second"]
                               for run, base in zip(runs, baseline_runs))
    return (f"{label}: {ratio:.1%} of {baseline} throughput "
            f"(median of the rounds' own ratios: {paired:.1%})")


if __name__ == "__main__":
    main()
