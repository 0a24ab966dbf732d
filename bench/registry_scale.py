#!/usr/bin/env python3
"""Helper of bench/registry-scale.sh (Python 3 standard library only).

`run` starts one `flotilla registry` on 127.0.0.1 port 0 with a fresh data directory, registers
INSTANCES instances over Consul's HTTP API, keeps their checks passing for a steady state, measures,
stops the registry and prints one JSON line of figures. `summary` turns such lines into medians.

Every process it starts is stopped in a `finally`, also on SIGTERM (the shell script's time limit);
its PID is also written to `<work>/pids` so the script's EXIT trap can stop it if this helper dies.
"""

import argparse
import http.client
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid

SERVICE_NAMES = [
    "product", "user", "auth", "gateway", "search",
    "cart", "order", "payment", "inventory", "shipping",
]
START_PATIENCE = 30.0
HTTP_TIMEOUT = 30.0


def on_sigterm(_signum, _frame):
    # Turn the time limit's SIGTERM into an exception, so the `finally` blocks stop the processes.
    raise SystemExit("stopped by SIGTERM")


def proc_status(pid):
    """VmRSS, VmHWM (KiB) and Threads of `pid`."""
    figures = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads"):
                figures[key] = int(value.split()[0])
    return figures


def cpu_seconds(pid):
    """User plus system CPU time of `pid`, in seconds."""
    with open(f"/proc/{pid}/stat") as stat:
        # The command name may contain spaces; the fields after it are space-separated.
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start(binary, component, data_dir, env, pids_file, listener):
    """Starts `flotilla serve component` and returns (process, address of `listener`), read from
    its JSON "serving" log line."""
    os.makedirs(data_dir, exist_ok=True)
    log_path = os.path.join(data_dir, "flotilla.log")
    log = open(log_path, "ab")
    # Static discovery: neither process registers itself with, or watches, a registry at the
    # default 127.0.0.1:8500, which may be someone else's; the registry measured is only the one
    # under test.
    full_env = dict(os.environ, RUST_LOG="info", FLOTILLA_LOG_FORMAT="json",
                    FLOTILLA_DISCOVERY="static", **env)
    process = subprocess.Popen(
        [binary, "serve", component, "--data-dir", data_dir],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=full_env,
    )
    log.close()
    with open(pids_file, "a") as pids:
        pids.write(f"{process.pid}\n")
    deadline = time.monotonic() + START_PATIENCE
    while time.monotonic() < deadline:
        with open(log_path, "rb") as text:
            for line in text.read().decode(errors="replace").splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if entry.get("message") == "serving" and entry.get("component") == component:
                    return process, entry[listener]
        if process.poll() is not None:
            raise RuntimeError(f"{component} exited with {process.returncode}; see {log_path}")
        time.sleep(0.02)
    process.kill()
    raise RuntimeError(f"{component} not serving within {START_PATIENCE} s; see {log_path}")


def stop(process):
    """SIGTERM, then wait (the registry writes its last change and stops every check); seconds."""
    if process.poll() is not None:
        return 0.0
    began = time.monotonic()
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise RuntimeError("did not stop within 30 s of SIGTERM")
    if process.returncode != 0:
        raise RuntimeError(f"exited with {process.returncode} after SIGTERM")
    return time.monotonic() - began


class Client:
    """One keep-alive HTTP/1.1 connection to the registry."""

    def __init__(self, addr):
        host, port = addr.rsplit(":", 1)
        self.connection = http.client.HTTPConnection(host, int(port), timeout=HTTP_TIMEOUT)

    def request(self, method, path, body=None):
        """(status, headers, body bytes, seconds)."""
        data = None if body is None else json.dumps(body).encode()
        began = time.perf_counter()
        self.connection.request(method, path, body=data)
        response = self.connection.getresponse()
        payload = response.read()
        elapsed = time.perf_counter() - began
        if response.status != 200:
            raise RuntimeError(f"{method} {path}: {response.status} {payload[:300]!r}")
        return response.status, response.headers, payload, elapsed

    def close(self):
        self.connection.close()


def registration(rng, position, variant, grpc_target):
    """A realistic instance: Flotilla's own registrations carry a gRPC check (10 s interval, 500 ms
    timeout, removed after 60 s critical); the TTL variant is what a service without gRPC uses."""
    name = SERVICE_NAMES[position % len(SERVICE_NAMES)]
    instance = uuid.UUID(int=rng.getrandbits(128), version=4)
    if variant == "grpc":
        check = {"GRPC": grpc_target, "Interval": "10s", "Timeout": "500ms",
                 "DeregisterCriticalServiceAfter": "1m"}
    else:
        check = {"TTL": "30s", "DeregisterCriticalServiceAfter": "1m"}
    return {
        "ID": f"{name}-{instance}",
        "Name": name,
        "Address": "127.0.0.1",
        "Port": 20000 + position,
        "Tags": ["grpc", "v1", f"zone-{'abc'[position % 3]}"],
        "Meta": {"version": "0.1.0", "commit": f"{rng.getrandbits(160):040x}",
                 "zone": "abc"[position % 3]},
        "Check": check,
    }


def passing_count(client, names):
    return sum(
        len(json.loads(client.request("GET", f"/v1/health/service/{name}?passing")[2]))
        for name in names
    )


class TtlKeeper(threading.Thread):
    """Passes every TTL check once per `period`, spread evenly, as services would."""

    def __init__(self, addr, ids, period):
        super().__init__(daemon=True)
        self.addr, self.ids, self.period = addr, ids, period
        self.halt = threading.Event()
        self.latencies = []
        self.error = None

    def run(self):
        client = Client(self.addr)
        gap = self.period / len(self.ids)
        try:
            while not self.halt.is_set():
                round_start = time.monotonic()
                for position, service_id in enumerate(self.ids):
                    self.latencies.append(
                        client.request("PUT", f"/v1/agent/check/pass/service:{service_id}")[3])
                    pause = round_start + (position + 1) * gap - time.monotonic()
                    if pause > 0 and self.halt.wait(pause):
                        return
        except Exception as error:  # reported by the main thread
            self.error = error
        finally:
            client.close()


def blocking_wakeup(addr, client, name, rng):
    """Parks one blocking health query, registers one more instance of its service and times
    the query's answer from the moment the change was sent; then removes the instance.
    (wake-up seconds, the change's own latency in seconds)."""
    index = client.request("GET", f"/v1/health/service/{name}")[1]["X-Consul-Index"]
    answered = {}
    parked = Client(addr)

    def wait():
        answered["result"] = parked.request(
            "GET", f"/v1/health/service/{name}?index={index}&wait=30s")
        answered["at"] = time.perf_counter()

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    # The query must be parked before the change; there is no signal for that, so wait well beyond
    # the request's own latency (a too-early change would only make the wake-up look shorter).
    time.sleep(0.3)
    extra = f"{name}-{uuid.UUID(int=rng.getrandbits(128), version=4)}"
    sent = time.perf_counter()
    change = client.request("PUT", "/v1/agent/service/register",
                            {"ID": extra, "Name": name, "Address": "127.0.0.1", "Port": 1})[3]
    waiter.join(timeout=35)
    parked.close()
    client.request("PUT", f"/v1/agent/service/deregister/{extra}")
    if "at" not in answered:
        raise RuntimeError("the blocking query did not answer")
    if answered["result"][1]["X-Consul-Index"] == index:
        raise RuntimeError("the blocking query answered without a change")
    return answered["at"] - sent, change


def run(args):
    signal.signal(signal.SIGTERM, on_sigterm)
    rng = random.Random(args.seed)
    data_dir = os.path.join(args.work, f"registry-{args.variant}-{args.seed}")
    process, addr = start(
        args.binary, "registry", data_dir,
        {"FLOTILLA_REGISTRY_ADDR": "127.0.0.1:0", "FLOTILLA_REGISTRY_ADMIN_ADDR": "127.0.0.1:0"},
        os.path.join(args.work, "pids"), "http",
    )
    keeper = None
    try:
        pid = process.pid
        time.sleep(0.5)  # let start-up allocations settle
        idle = proc_status(pid)
        client = Client(addr)

        bodies = [registration(rng, i, args.variant, args.grpc_target)
                  for i in range(args.instances)]
        ids = [body["ID"] for body in bodies]
        register_latency, first_pass_latency = [], []
        cpu_began, began = cpu_seconds(pid), time.monotonic()
        for body in bodies:
            register_latency.append(client.request("PUT", "/v1/agent/service/register", body)[3])
            if args.variant == "ttl":
                # A TTL service reports as soon as it is registered (it starts critical).
                first_pass_latency.append(client.request(
                    "PUT", f"/v1/agent/check/pass/service:{body['ID']}")[3])
        register_seconds = time.monotonic() - began
        register_cpu = cpu_seconds(pid) - cpu_began
        after = proc_status(pid)

        if args.variant == "ttl":
            keeper = TtlKeeper(addr, ids, period=10.0)
            keeper.start()
        cpu_before, steady_began = cpu_seconds(pid), time.monotonic()
        time.sleep(args.steady)
        steady_cpu = (cpu_seconds(pid) - cpu_before) / (time.monotonic() - steady_began)
        steady = proc_status(pid)
        if keeper is not None and keeper.error is not None:
            raise RuntimeError(f"TTL pass failed: {keeper.error}")

        passing = passing_count(client, SERVICE_NAMES)
        health, body_bytes = [], []
        for call in range(args.queries):
            name = SERVICE_NAMES[call % len(SERVICE_NAMES)]
            answer = client.request("GET", f"/v1/health/service/{name}?passing")
            health.append(answer[3])
            body_bytes.append(len(answer[2]))
        wakeups, wake_changes = [], []
        for attempt in range(args.wakeups):
            wake, change = blocking_wakeup(addr, client, SERVICE_NAMES[attempt], rng)
            wakeups.append(wake)
            wake_changes.append(change)
        final = proc_status(pid)
        client.close()
        if keeper is not None:
            keeper.halt.set()
            keeper.join(timeout=20)
            if keeper.error is not None:
                raise RuntimeError(f"TTL pass failed: {keeper.error}")
        state_file = os.path.getsize(os.path.join(data_dir, "registry.json"))
        ms = lambda seconds: round(seconds * 1000, 2)  # noqa: E731
        tenth = max(1, args.instances // 10)
        figures = {
            "variant": args.variant,
            "instances": args.instances,
            "passing_after_steady": passing,
            "rss_idle_kib": idle["VmRSS"],
            "rss_after_register_kib": after["VmRSS"],
            "rss_steady_kib": steady["VmRSS"],
            "hwm_kib": final["VmHWM"],
            "per_instance_kib": round((steady["VmRSS"] - idle["VmRSS"]) / args.instances, 1),
            "threads_steady": steady["Threads"],
            "register_total_s": round(register_seconds, 2),
            "register_cpu_s": round(register_cpu, 2),
            "register_ms_median": ms(statistics.median(register_latency)),
            "register_ms_first10pct": ms(statistics.median(register_latency[:tenth])),
            "register_ms_last10pct": ms(statistics.median(register_latency[-tenth:])),
            "first_pass_ms_median": ms(statistics.median(first_pass_latency))
            if first_pass_latency else None,
            "steady_pass_ms_median": ms(statistics.median(keeper.latencies))
            if keeper is not None and keeper.latencies else None,
            "steady_cpu_pct": round(steady_cpu * 100, 1),
            "health_passing_ms_median": ms(statistics.median(health)),
            "health_body_bytes": int(statistics.median(body_bytes)),
            "blocking_wakeup_ms_median": ms(statistics.median(wakeups)),
            "wakeup_change_ms_median": ms(statistics.median(wake_changes)),
            "state_file_bytes": state_file,
        }
    finally:
        if keeper is not None:
            keeper.halt.set()
        stop_seconds = stop(process)
    figures["stop_ms"] = round(stop_seconds * 1000)
    print(json.dumps(figures), flush=True)


def serve_product(args):
    """Starts `flotilla serve product` (the one real gRPC health endpoint) and prints its gRPC
    address then its PID; it runs until SIGTERM from the script."""
    data_dir = os.path.join(args.work, "product")
    process, addr = start(
        args.binary, "product", data_dir,
        {"FLOTILLA_PRODUCT_GRPC_ADDR": "127.0.0.1:0", "FLOTILLA_PRODUCT_ADMIN_ADDR": "127.0.0.1:0",
         "JWT_SECRET": "registry-bench-secret-of-at-least-32-bytes"},
        os.path.join(args.work, "pids"), "grpc",
    )
    print(addr, process.pid, flush=True)


ROWS = [
    ("instances registered / passing after the steady state", None),
    ("RSS before registrations", "rss_idle_kib"),
    ("RSS right after the registrations", "rss_after_register_kib"),
    ("RSS after the steady state", "rss_steady_kib"),
    ("VmHWM (peak RSS) at the end", "hwm_kib"),
    ("RSS growth per instance (steady - before) / n", "per_instance_kib"),
    ("threads (steady)", "threads_steady"),
    ("time to register all (one client, sequential)", "register_total_s"),
    ("registry CPU time spent on those registrations", "register_cpu_s"),
    ("register latency, median", "register_ms_median"),
    ("register latency, first 10 % / last 10 %", None),
    ("first TTL pass after registering, median", "first_pass_ms_median"),
    ("steady TTL pass (no change), median", "steady_pass_ms_median"),
    ("registry CPU during the steady state", "steady_cpu_pct"),
    ("`GET /v1/health/service/<name>?passing`, median", "health_passing_ms_median"),
    ("its answer (about n/10 instances)", "health_body_bytes"),
    ("blocking query wake-up after a registration", "blocking_wakeup_ms_median"),
    ("that registration's own latency", "wakeup_change_ms_median"),
    ("`registry.json` size", "state_file_bytes"),
    ("stop (SIGTERM to exit)", "stop_ms"),
]


def unit(key, value):
    if value is None:
        return "n/a"
    if key.endswith("_kib") and key != "per_instance_kib":
        return f"{value / 1024:.1f} MiB"
    if key == "per_instance_kib":
        return f"{value:.1f} KiB"
    if key.endswith("_ms") or "_ms_" in key:
        return f"{value:.2f} ms" if value < 10 else f"{value:.0f} ms"
    if key.endswith("_s"):
        return f"{value:.1f} s"
    if key.endswith("_pct"):
        return f"{value:.1f} %"
    if key.endswith("_bytes"):
        return f"{value / 1024:.0f} KiB"
    return str(value)


def summary(args):
    runs = {}
    with open(args.results) as results:
        for line in results:
            if line.strip():
                entry = json.loads(line)
                runs.setdefault(entry["variant"], []).append(entry)
    variants = [v for v in ("ttl", "grpc") if v in runs]
    med = lambda variant, key: (  # noqa: E731
        statistics.median(r[key] for r in runs[variant]) if runs[variant][0].get(key) is not None
        else None)
    header = "| figure | " + " | ".join(
        f"{'TTL' if v == 'ttl' else 'gRPC'} checks, median of {len(runs[v])}" for v in variants)
    print(header + " |")
    print("| --- |" + " --- |" * len(variants))
    for label, key in ROWS:
        cells = []
        for variant in variants:
            if label.startswith("instances"):
                cells.append(f"{runs[variant][0]['instances']} / "
                             f"{int(med(variant, 'passing_after_steady'))}")
            elif label.startswith("register latency, first"):
                cells.append(f"{unit('x_ms_', med(variant, 'register_ms_first10pct'))} / "
                             f"{unit('x_ms_', med(variant, 'register_ms_last10pct'))}")
            else:
                cells.append(unit(key, med(variant, key)))
        print(f"| {label} | " + " | ".join(cells) + " |")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    one = commands.add_parser("run")
    one.add_argument("--binary", required=True)
    one.add_argument("--work", required=True)
    one.add_argument("--variant", choices=["ttl", "grpc"], required=True)
    one.add_argument("--grpc-target", default="")
    one.add_argument("--instances", type=int, default=1000)
    one.add_argument("--steady", type=float, default=30.0)
    one.add_argument("--queries", type=int, default=50)
    one.add_argument("--wakeups", type=int, default=5)
    one.add_argument("--seed", type=int, default=1)
    product = commands.add_parser("serve-product")
    product.add_argument("--binary", required=True)
    product.add_argument("--work", required=True)
    table = commands.add_parser("summary")
    table.add_argument("results")
    args = parser.parse_args()
    {"run": run, "serve-product": serve_product, "summary": summary}[args.command](args)


if __name__ == "__main__":
    try:
        main()
    except (RuntimeError, OSError, ValueError, KeyError) as error:
        print(f"registry_scale: {error}", file=sys.stderr)
        sys.exit(1)
