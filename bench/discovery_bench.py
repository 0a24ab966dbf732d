#!/usr/bin/env python3
"""Helper of bench/discovery.sh: service-discovery propagation, every component its own process.

  run      one run: registry, product A (demo seed) and B on one PostgreSQL database, gateway; a
           steady load of GET /v1/products/{id} through the gateway; SIGTERM of A (figure 1:
           A's "deregistered" log line to the last GetProduct call A handled; failed requests);
           start of product C (figure 2: the registry's ?passing set first listing C, seen by a
           blocking query, to C's first GetProduct call). Prints one JSON line.
  load     the load generator (run starts it as its own process, so it can be pinned to a core and
           does not share a GIL with the watcher); writes every outcome to --out at SIGTERM.
  summary  medians, min and max over the JSON lines of the runs, as a Markdown table.

Only the Python standard library. Every wait is bounded; every process started is stopped in a
finally block, and its PID is appended to <work>/pids for the shell's trap.
"""

import argparse
import calendar
import http.client
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

SECRET = "a-shared-secret-of-at-least-32-bytes!"
ANY_PORT = "127.0.0.1:0"
START_PATIENCE = 30.0
# How long a change may take to show in the registry or in a log before the run is given up.
PATIENCE = 20.0
# Removed from the inherited environment so nothing from the caller's shell changes the setup.
FOREIGN = re.compile(r"^(FLOTILLA_|CONSUL_|DATABASE_URL$|JWT_|RUST_LOG$)")


class Failed(Exception):
    pass


# --- timestamps -------------------------------------------------------------------------------

RFC3339 = re.compile(
    r"^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$"
)


def parse_rfc3339(text):
    """Seconds since the epoch, keeping the sub-microsecond digits datetime would drop."""
    match = RFC3339.match(text)
    if not match:
        raise ValueError(f"not an RFC 3339 timestamp: {text!r}")
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    whole = calendar.timegm(
        (int(year), int(month), int(day), int(hour), int(minute), int(second))
    )
    if zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        whole -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    return whole + (float("0." + fraction) if fraction else 0.0)


# --- processes --------------------------------------------------------------------------------


class Component:
    """One `flotilla serve <component>` with its JSON log in <dir>/flotilla.log."""

    def __init__(self, binary, work, name, label, env, cpu):
        self.name, self.label = name, label
        self.dir = os.path.join(work, label)
        os.makedirs(self.dir, exist_ok=True)
        self.log_path = os.path.join(self.dir, "flotilla.log")
        environment = {k: v for k, v in os.environ.items() if not FOREIGN.match(k)}
        environment.update({"FLOTILLA_LOG_FORMAT": "json", "RUST_LOG": "info"})
        environment.update(env)
        command = [binary, "serve", name, "--data-dir", self.dir]
        if cpu is not None:
            command = ["taskset", "-c", str(cpu)] + command
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        with open(os.path.join(work, "pids"), "a") as pids:
            pids.write(f"{self.process.pid}\n")
        self.addrs = self._wait_serving()

    def _wait_serving(self):
        deadline = time.monotonic() + START_PATIENCE
        while time.monotonic() < deadline:
            for line in self.lines():
                if line.get("message") == "serving" and line.get("component") == self.name:
                    return {k: line[k] for k in ("grpc", "http", "admin") if k in line}
            if self.process.poll() is not None:
                raise Failed(f"{self.label} exited with {self.process.returncode}:\n{self.text()}")
            time.sleep(0.02)
        raise Failed(f"{self.label} not serving within {START_PATIENCE} s:\n{self.text()}")

    def text(self):
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as log:
                return log.read()
        except FileNotFoundError:
            return ""

    def lines(self):
        for raw in self.text().splitlines():
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            if isinstance(line, dict):
                yield line

    def first(self, message, **fields):
        """The first log line whose message starts with `message` and which has `fields`, with
        its timestamp as "at"; None if there is none."""
        for line in self.lines():
            if str(line.get("message", "")).startswith(message) and all(
                line.get(key) == value for key, value in fields.items()
            ):
                return dict(line, at=parse_rfc3339(line["timestamp"]))
        return None

    def at(self, message, **fields):
        line = self.first(message, **fields)
        if line is None:
            raise Failed(f"{self.label} never logged {message!r} {fields}:\n{self.text()[-4000:]}")
        return line["at"]

    def calls(self, message="finished processing request"):
        """When this instance finished (or, with "started processing request", received)
        GetProduct calls, from tower_http's debug lines."""
        return sorted(
            parse_rfc3339(line["timestamp"])
            for line in self.lines()
            if line.get("message") == message
            and "ProductService/GetProduct" in json.dumps(line.get("spans", ""))
        )

    def terminate(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def wait(self, patience):
        try:
            return self.process.wait(timeout=patience)
        except subprocess.TimeoutExpired:
            raise Failed(f"{self.label} did not exit within {patience} s:\n{self.text()[-4000:]}")

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


# --- the registry, seen as a client would ------------------------------------------------------


def health(registry, index=0, wait="30s"):
    """One (blocking) `?passing` health query: the passing ports and the index to wait on next."""
    url = f"http://{registry}/v1/health/service/product?passing"
    if index > 0:
        url += f"&index={index}&wait={wait}"
    with urllib.request.urlopen(url, timeout=60) as response:
        entries = json.load(response)
        next_index = int(response.headers.get("X-Consul-Index", "0"))
    ports = {entry["Service"]["Port"] for entry in entries}
    return ports, next_index


class Watch(threading.Thread):
    """Holds a blocking query on the passing set, as the gateway does, and records when each port
    first appears in it and when it first leaves it."""

    def __init__(self, registry):
        super().__init__(daemon=True)
        self.registry = registry
        self.seen = {}
        self.gone = {}
        self.error = None
        self.changed = threading.Condition()

    def run(self):
        index = 0
        try:
            while True:
                ports, next_index = health(self.registry, index)
                now = time.time()
                with self.changed:
                    for port in ports:
                        self.seen.setdefault(port, now)
                    for port in self.seen:
                        if port not in ports:
                            self.gone.setdefault(port, now)
                    self.changed.notify_all()
                # Consul's rules for blocking queries: reset when the index goes backwards.
                index = 0 if next_index < index else max(next_index, 1)
        except Exception as error:  # reported by until(); the thread has no one else to tell
            with self.changed:
                self.error = error
                self.changed.notify_all()

    def until(self, port, table="seen"):
        deadline = time.monotonic() + PATIENCE
        with self.changed:
            while port not in getattr(self, table):
                if self.error is not None:
                    raise Failed(f"watching the registry failed: {self.error}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Failed(f"port {port}: not {table} within {PATIENCE} s")
                self.changed.wait(left)
            return getattr(self, table)[port]


def until_passing(registry, ports):
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline:
        try:
            if set(ports) <= health(registry)[0]:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise Failed(f"ports {ports} not all passing within {PATIENCE} s")


# --- the load ---------------------------------------------------------------------------------


def load_main(args):
    host, port = args.gateway.rsplit(":", 1)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    outcomes = [[] for _ in range(args.clients)]
    # Paced per client so the rate is steady and the servers' core is not simply saturated.
    period = args.clients / args.rate if args.rate > 0 else 0.0

    def client(mine):
        connection = None
        next_at = time.monotonic()
        while not stop.is_set():
            if period:
                next_at += period
                pause = next_at - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                else:
                    next_at = time.monotonic()  # behind: do not burst to catch up
            try:
                if connection is None:
                    connection = http.client.HTTPConnection(host, int(port), timeout=10)
                connection.request("GET", args.path)
                response = connection.getresponse()
                response.read()
                status = str(response.status)
                if response.getheader("connection", "").lower() == "close":
                    connection.close()
                    connection = None
            except (OSError, http.client.HTTPException) as error:
                status = f"error:{type(error).__name__}:{error}".replace(" ", "_")
                if connection is not None:
                    connection.close()
                connection = None
            mine.append((time.time(), status))

    threads = [threading.Thread(target=client, args=(outcomes[i],)) for i in range(args.clients)]
    for thread in threads:
        thread.start()
    print("started", flush=True)
    while not stop.wait(0.1):
        pass
    for thread in threads:
        thread.join()
    with open(args.out, "w") as out:
        for mine in outcomes:
            for at, status in mine:
                out.write(f"{at:.6f} {status}\n")


class Load:
    def __init__(self, work, gateway, product_id, clients, rate, cpu):
        self.out = os.path.join(work, "load.txt")
        command = [
            sys.executable, os.path.abspath(__file__), "load",
            "--gateway", gateway, "--path", f"/v1/products/{product_id}",
            "--clients", str(clients), "--rate", str(rate), "--out", self.out,
        ]
        if cpu is not None:
            command = ["taskset", "-c", str(cpu)] + command
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        with open(os.path.join(work, "pids"), "a") as pids:
            pids.write(f"{self.process.pid}\n")
        if self.process.stdout.readline().strip() != "started":
            raise Failed("the load generator did not start")

    def finish(self):
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=30)
        outcomes = []
        with open(self.out) as lines:
            for line in lines:
                at, status = line.split(" ", 1)
                outcomes.append((float(at), status.strip()))
        return outcomes

    def kill(self):
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


# --- one run ----------------------------------------------------------------------------------


def interrupted(signum, _frame):
    raise Failed(f"stopped by signal {signum}")


def run_main(args):
    # `timeout` and the shell stop a run with SIGTERM: unwind, so the finally block stops it all.
    signal.signal(signal.SIGTERM, interrupted)
    work = args.work
    cpu = None if args.servers_cpu < 0 else args.servers_cpu
    load_cpu = None if args.load_cpu < 0 else args.load_cpu
    started = []
    load = None

    def component(name, label, env):
        instance = Component(args.binary, work, name, label, env, cpu)
        started.append(instance)
        return instance

    def product(label, registry, seed):
        return component("product", label, {
            "DATABASE_URL": args.database_url,
            "JWT_SECRET": SECRET,
            "FLOTILLA_PRODUCT_GRPC_ADDR": ANY_PORT,
            "FLOTILLA_PRODUCT_ADMIN_ADDR": ANY_PORT,
            "FLOTILLA_PRODUCT_SEED_DEMO": "true" if seed else "false",
            "CONSUL_HTTP_ADDR": registry,
            "FLOTILLA_CHECK_INTERVAL": args.check_interval,
            "FLOTILLA_CHECK_TIMEOUT": args.check_timeout,
            "FLOTILLA_DEREGISTER_DELAY": args.deregister_delay,
            "RUST_LOG": "info,tower_http=debug",
        })

    def port(instance):
        return int(instance.addrs["grpc"].rsplit(":", 1)[1])

    try:
        registry_process = component("registry", "registry", {
            "FLOTILLA_REGISTRY_ADDR": ANY_PORT,
            "FLOTILLA_REGISTRY_ADMIN_ADDR": ANY_PORT,
        })
        registry = registry_process.addrs["http"]
        a = product("product-a", registry, True)
        b = product("product-b", registry, False)
        until_passing(registry, [port(a), port(b)])
        gateway_process = component("gateway", "gateway", {
            "JWT_SECRET": SECRET,
            "CONSUL_HTTP_ADDR": registry,
            "FLOTILLA_GATEWAY_HTTP_ADDR": ANY_PORT,
            "FLOTILLA_GATEWAY_ADMIN_ADDR": ANY_PORT,
        })
        gateway = gateway_process.addrs["http"]
        with urllib.request.urlopen(
            f"http://{gateway}/v1/products?page_size=1", timeout=10
        ) as response:
            product_id = json.load(response)["products"][0]["id"]
        watch = Watch(registry)
        watch.start()
        watch.until(port(a))

        load = Load(work, gateway, product_id, args.clients, args.rate, load_cpu)
        time.sleep(args.warm_up)
        warm_a, warm_b = len(a.calls()), len(b.calls())
        if warm_a == 0 or warm_b == 0:
            raise Failed(f"warm-up did not reach both instances: A {warm_a}, B {warm_b} calls")

        # Figure 1: SIGTERM of A under load.
        sigterm_at = time.time()
        a.terminate()
        a_gone_seen = watch.until(port(a), "gone")
        a_status = a.wait(PATIENCE)
        a_exited_at = time.time()
        time.sleep(0.5)
        phase1_end = time.time()
        a_id = a.first("registered")["id"]
        a_deregistered = a.at("deregistered")
        registry_deregistered = registry_process.at("deregistered", service_id=a_id)
        removed = gateway_process.first("instance removed from the balancer", instance=a_id)
        if removed is None:
            raise Failed(f"the gateway never removed A:\n{gateway_process.text()[-4000:]}")
        a_calls = a.calls()
        if not a_calls:
            raise Failed("A handled no GetProduct call")
        a_last = a_calls[-1]
        # Resolution of figure 1: the mean gap between A's calls in the second before SIGTERM.
        a_recent = [at for at in a_calls if sigterm_at - 1.0 <= at <= sigterm_at]
        a_gap = 1.0 / len(a_recent) if a_recent else None

        # Figure 2: a new instance C.
        c_launched = time.time()
        c = product("product-c", registry, False)
        c_passing_seen = watch.until(port(c))
        deadline = time.monotonic() + PATIENCE
        while not c.calls() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        c_calls = c.calls()
        if not c_calls:
            raise Failed(f"C handled no GetProduct call within {PATIENCE} s")
        c_first = c_calls[0]
        c_first_received = c.calls("started processing request")[0]
        c_id = c.first("registered")["id"]
        c_registered = c.at("registered")
        registry_passing = registry_process.at(
            "check status changed", service_id=c_id, to="passing"
        )
        c_added = gateway_process.at("instance added to the balancer", instance=c_id)

        outcomes = load.finish()
        load = None
        failed = [(at, status) for at, status in outcomes if status != "200"]
        span = outcomes[-1][0] - outcomes[0][0] if len(outcomes) > 1 else 0.0
        result = {
            "requests": len(outcomes),
            "rate_per_s": round(len(outcomes) / span) if span > 0 else None,
            "failed_total": len(failed),
            "failed_phase1": len([1 for at, _ in failed if sigterm_at <= at <= phase1_end]),
            "failed_phase2": len([1 for at, _ in failed if at > phase1_end]),
            "a_exit": a_status,
            "sigterm_to_exit_ms": ms(a_exited_at - sigterm_at),
            "fig1_dereg_to_last_call_ms": ms(a_last - a_deregistered),
            "fig1_calls_after_dereg": len([at for at in a_calls if at > a_deregistered]),
            "a_call_gap_ms": ms(a_gap) if a_gap else None,
            "registry_dereg_to_last_call_ms": ms(a_last - registry_deregistered),
            "registry_dereg_to_gateway_removed_ms": ms(removed["at"] - registry_deregistered),
            "gateway_removed_to_last_call_ms": ms(a_last - removed["at"]),
            "gateway_removed_in_flight": removed.get("in_flight"),
            "registry_dereg_to_a_dereg_line_ms": ms(a_deregistered - registry_deregistered),
            "registry_dereg_to_watch_gone_ms": ms(a_gone_seen - registry_deregistered),
            "fig2_passing_to_first_call_ms": ms(c_first - c_passing_seen),
            "registry_passing_to_watch_ms": ms(c_passing_seen - registry_passing),
            "registry_passing_to_gateway_added_ms": ms(c_added - registry_passing),
            "gateway_added_to_first_call_ms": ms(c_first - c_added),
            "gateway_added_to_first_received_ms": ms(c_first_received - c_added),
            "c_first_call_latency_ms": ms(c_first - c_first_received),
            "c_registered_to_registry_passing_ms": ms(registry_passing - c_registered),
            "c_launch_to_registered_ms": ms(c_registered - c_launched),
            "failed_samples": failed[:5],
        }
        print(json.dumps(result), flush=True)
    finally:
        if load is not None:
            load.kill()
        for instance in reversed(started):
            instance.terminate()
        for instance in reversed(started):
            try:
                instance.wait(15)
            except Failed:
                instance.kill()


def ms(seconds):
    return round(seconds * 1000, 1)


# --- summary ----------------------------------------------------------------------------------

FIGURES = [
    ("fig1_dereg_to_last_call_ms", "**figure 1**: A's `deregistered` log line to the last GetProduct call A handled", "ms"),
    ("fig1_calls_after_dereg", "GetProduct calls A handled after its `deregistered` line", ""),
    ("a_call_gap_ms", "mean gap between A's calls before SIGTERM (the resolution of figure 1)", "ms"),
    ("registry_dereg_to_last_call_ms", "registry's `deregistered` line to the last GetProduct call A handled", "ms"),
    ("registry_dereg_to_a_dereg_line_ms", "registry's `deregistered` line to A's", "ms"),
    ("registry_dereg_to_gateway_removed_ms", "registry's `deregistered` line to the gateway's `instance removed from the balancer`", "ms"),
    ("registry_dereg_to_watch_gone_ms", "registry's `deregistered` line to the bench's blocking query returning without A", "ms"),
    ("gateway_removed_to_last_call_ms", "gateway's `instance removed` to the last call A handled", "ms"),
    ("gateway_removed_in_flight", "calls in flight on A when the gateway removed it", ""),
    ("failed_phase1", "**failed requests** of the load from SIGTERM of A until 0.5 s after it exited", ""),
    ("sigterm_to_exit_ms", "SIGTERM of A to its exit (2 s deregister delay + drain)", "ms"),
    ("fig2_passing_to_first_call_ms", "**figure 2**: the bench's blocking `?passing` query first listing C to C's first GetProduct call", "ms"),
    ("registry_passing_to_watch_ms", "registry's `check status changed … passing` line for C to the bench's blocking query listing C", "ms"),
    ("registry_passing_to_gateway_added_ms", "registry's passing line for C to the gateway's `instance added to the balancer`", "ms"),
    ("gateway_added_to_first_call_ms", "gateway's `instance added` to C's first GetProduct call", "ms"),
    ("gateway_added_to_first_received_ms", "gateway's `instance added` to C receiving its first call (`started processing request`)", "ms"),
    ("c_first_call_latency_ms", "C's first call, received to handled (fresh pool, cold caches)", "ms"),
    ("c_registered_to_registry_passing_ms", "C's `registered` line to the registry's passing line (C's first check)", "ms"),
    ("c_launch_to_registered_ms", "launch of C to its `registered` line", "ms"),
    ("failed_phase2", "failed requests of the load after the SIGTERM phase (C joining)", ""),
    ("rate_per_s", "load: requests per second through the gateway", ""),
]


def summarise(results, figures):
    """Prints a Markdown table of the median, min and max of each of `figures` ((key, label,
    unit) triples) over the JSON lines in the file `results`."""
    runs = []
    with open(results) as lines:
        for line in lines:
            line = line.strip()
            if line.startswith("{"):
                runs.append(json.loads(line))
    if not runs:
        sys.exit("no runs to summarise")
    print(f"| figure | median of {len(runs)} | min | max |")
    print("| --- | --- | --- | --- |")
    for key, label, unit in figures:
        values = [run[key] for run in runs if run.get(key) is not None]
        if not values:
            continue
        suffix = f" {unit}" if unit else ""

        def shown(value):
            return f"{value:g}{suffix}"

        print(f"| {label} | {shown(statistics.median(values))} | {shown(min(values))} "
              f"| {shown(max(values))} |")


def summary_main(args):
    summarise(args.results, FIGURES)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run")
    run.add_argument("--binary", required=True)
    run.add_argument("--work", required=True)
    run.add_argument("--database-url", required=True)
    run.add_argument("--check-interval", default="1s")
    run.add_argument("--check-timeout", default="1s")
    run.add_argument("--deregister-delay", default="2s")
    run.add_argument("--clients", type=int, default=4)
    run.add_argument("--rate", type=float, default=0, help="total requests/s; 0: as fast as it goes")
    run.add_argument("--warm-up", type=float, default=1.0)
    run.add_argument("--servers-cpu", type=int, default=-1, help="pin the servers; -1: do not pin")
    run.add_argument("--load-cpu", type=int, default=-1, help="pin the load; -1: do not pin")

    load = commands.add_parser("load")
    load.add_argument("--gateway", required=True)
    load.add_argument("--path", required=True)
    load.add_argument("--clients", type=int, required=True)
    load.add_argument("--rate", type=float, default=0)
    load.add_argument("--out", required=True)

    summary = commands.add_parser("summary")
    summary.add_argument("results")

    args = parser.parse_args()
    try:
        {"run": run_main, "load": load_main, "summary": summary_main}[args.command](args)
    except Failed as failure:
        sys.exit(f"discovery_bench: {failure}")


if __name__ == "__main__":
    main()
