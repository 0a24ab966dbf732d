#!/usr/bin/env python3
"""Helper of bench/resilience.sh: what the resilience stack costs and buys, every component its own
process.

  run      one run, two figures; prints one JSON line.
           Figure 1, an open breaker: a product instance whose GetProduct always fails
           (FLOTILLA_FAULTS abort:unavailable:100%) behind its own registry and a gateway with a
           10 min breaker cool-down. GETs of one product until the gateway answers 503 with
           Retry-After and the product sees no more GetProduct calls; then N sequential GETs over
           one keep-alive connection: the gateway's own logged latency of those 503s and the
           client's, and the GetProduct calls the product handled meanwhile (should be 0). The same
           N GETs through a healthy product and gateway (their own registry) for comparison.
           Figure 2, a rolling restart under load: products A (demo seed) and B on one PostgreSQL
           database behind a gateway, 4 closed-loop keep-alive clients; start C, wait until the
           registry lists C as passing, SIGTERM A and wait for its exit; the same with D and B;
           1 s more of load. Requests, failed requests, requests/s, the restart's duration.
  probe    N sequential GETs over one keep-alive connection (run starts it as its own process, so
           it can be pinned to the load's core); writes every answer to --out.
  summary  medians, min and max over the JSON lines of the runs, as a Markdown table.

The processes, the load generator and the registry watch are discovery_bench.py's (imported from
the same directory). Only the Python standard library. Every wait is bounded; every process
started is stopped in a finally block, and its PID is appended to <work>/pids for the shell's trap.
"""

import argparse
import http.client
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import time
import urllib.request

from discovery_bench import (
    ANY_PORT,
    PATIENCE,
    SECRET,
    Component,
    Failed,
    Load,
    interrupted,
    ms,
    parse_rfc3339,
    summarise,
    until_passing,
)

FAULTY = "flotilla.product.v1.ProductService/GetProduct=abort:unavailable:100%"
# GETs sent before the measured ones, on each path, so both measure warm connections and caches.
WARM_UP = 200
# The most GETs the bench sends to open the breaker (it opens after 6 with the defaults).
TRIP_PATIENCE = 200


# --- the probe: sequential GETs over one connection --------------------------------------------


def probe_main(args):
    host, port = args.gateway.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    reconnects = 0
    with open(args.out, "w") as out:
        for _ in range(args.count):
            began_wall = time.time()
            began = time.perf_counter()
            try:
                connection.request("GET", args.path)
                response = connection.getresponse()
                response.read()
                status = str(response.status)
                retry_after = response.getheader("retry-after", "-")
                if response.getheader("connection", "").lower() == "close":
                    connection.close()
                    reconnects += 1
            except (OSError, http.client.HTTPException) as error:
                status = f"error:{type(error).__name__}".replace(" ", "_")
                retry_after = "-"
                connection.close()
                reconnects += 1
            elapsed = time.perf_counter() - began
            out.write(f"{began_wall:.6f} {elapsed * 1e6:.1f} {status} {retry_after}\n")
    connection.close()
    print(json.dumps({"reconnects": reconnects}), flush=True)


def probe(work, name, gateway, path, count, cpu):
    """Runs `probe` as its own process; [(started at, client µs, status, Retry-After)] and the
    number of times the connection had to be opened again."""
    out = os.path.join(work, f"probe-{name}.txt")
    command = [
        sys.executable, os.path.abspath(__file__), "probe",
        "--gateway", gateway, "--path", path, "--count", str(count), "--out", out,
    ]
    if cpu is not None:
        command = ["taskset", "-c", str(cpu)] + command
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    with open(os.path.join(work, "pids"), "a") as pids:
        pids.write(f"{process.pid}\n")
    try:
        output, _ = process.communicate(timeout=PATIENCE + count * 0.05)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise Failed(f"probe {name}: {count} GETs not done in time")
    if process.returncode != 0:
        raise Failed(f"probe {name} exited with {process.returncode}")
    answers = []
    with open(out) as lines:
        for line in lines:
            at, client_micros, status, retry_after = line.split()
            answers.append((float(at), float(client_micros), status, retry_after))
    return answers, json.loads(output)["reconnects"]


# --- logs --------------------------------------------------------------------------------------

LATENCY = re.compile(r"^\s*([0-9.]+)\s*(ns|μs|µs|us|ms|s)\s*$")
TO_MICROS = {"ns": 1e-3, "μs": 1.0, "µs": 1.0, "us": 1.0, "ms": 1e3, "s": 1e6}


def latency_micros(value):
    """tower_http's `latency` field ("153 μs") in microseconds."""
    if isinstance(value, (int, float)):
        return float(value)
    match = LATENCY.match(str(value))
    if not match:
        raise Failed(f"unexpected latency field {value!r}")
    return float(match.group(1)) * TO_MICROS[match.group(2)]


def gateway_answers(gateway, path, since, until):
    """The gateway's own `finished processing request` lines for `path` between two instants:
    [(status, latency µs)]."""
    answers = []
    for line in gateway.lines():
        if line.get("message") != "finished processing request":
            continue
        if path not in json.dumps(line.get("spans", "")):
            continue
        at = parse_rfc3339(line["timestamp"])
        if since <= at <= until:
            answers.append((str(line.get("status")), latency_micros(line.get("latency"))))
    return answers


def percentile(values, share):
    """Nearest rank."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def rounded(value):
    return round(value, 1)


# --- the registry ------------------------------------------------------------------------------


def passing_ids(registry, index=0, wait="5s"):
    """One (blocking) `?passing` query: the passing instance IDs and the index to wait on next."""
    url = f"http://{registry}/v1/health/service/product?passing"
    if index > 0:
        url += f"&index={index}&wait={wait}"
    with urllib.request.urlopen(url, timeout=30) as response:
        entries = json.load(response)
        next_index = int(response.headers.get("X-Consul-Index", "0"))
    return {entry["Service"]["ID"] for entry in entries}, next_index


def until_listed(registry, service_id):
    """Blocks on the passing set until it lists `service_id`; when the bench saw it. By ID, not
    port: a new instance may be given the port of one that stopped."""
    deadline = time.monotonic() + PATIENCE
    index = 0
    while time.monotonic() < deadline:
        ids, next_index = passing_ids(registry, index)
        if service_id in ids:
            return time.time()
        index = 0 if next_index < index else max(next_index, 1)
    raise Failed(f"{service_id} not passing within {PATIENCE} s")


def registered_id(instance):
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline:
        line = instance.first("registered")
        if line is not None:
            return line["id"]
        time.sleep(0.02)
    raise Failed(f"{instance.label} never logged `registered`:\n{instance.text()[-4000:]}")


def get_json(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


# --- one run -----------------------------------------------------------------------------------


class Stack:
    """The processes of one run, stopped together in reverse order."""

    def __init__(self, args):
        self.args = args
        self.cpu = None if args.servers_cpu < 0 else args.servers_cpu
        self.started = []

    def component(self, name, label, env):
        instance = Component(self.args.binary, self.args.work, name, label, env, self.cpu)
        self.started.append(instance)
        return instance

    def registry(self, label):
        return self.component("registry", label, {
            "FLOTILLA_REGISTRY_ADDR": ANY_PORT,
            "FLOTILLA_REGISTRY_ADMIN_ADDR": ANY_PORT,
        })

    def product(self, label, registry, database_url, seed, extra=None):
        env = {
            "DATABASE_URL": database_url,
            "JWT_SECRET": SECRET,
            "FLOTILLA_PRODUCT_GRPC_ADDR": ANY_PORT,
            "FLOTILLA_PRODUCT_ADMIN_ADDR": ANY_PORT,
            "FLOTILLA_PRODUCT_SEED_DEMO": "true" if seed else "false",
            "CONSUL_HTTP_ADDR": registry.addrs["http"],
            "FLOTILLA_CHECK_INTERVAL": self.args.check_interval,
            "FLOTILLA_CHECK_TIMEOUT": self.args.check_timeout,
            "FLOTILLA_DEREGISTER_DELAY": self.args.deregister_delay,
            # One debug line per handled call: how the bench counts GetProduct calls.
            "RUST_LOG": "info,tower_http=debug",
        }
        env.update(extra or {})
        return self.component("product", label, env)

    def gateway(self, label, registry, extra=None):
        env = {
            "JWT_SECRET": SECRET,
            "CONSUL_HTTP_ADDR": registry.addrs["http"],
            "FLOTILLA_GATEWAY_HTTP_ADDR": ANY_PORT,
            "FLOTILLA_GATEWAY_ADMIN_ADDR": ANY_PORT,
        }
        env.update(extra or {})
        return self.component("gateway", label, env)

    def stop(self):
        for instance in reversed(self.started):
            instance.terminate()
        for instance in reversed(self.started):
            try:
                instance.wait(15)
            except Failed:
                instance.kill()
        self.started = []


def port(instance):
    return int(instance.addrs["grpc"].rsplit(":", 1)[1])


def first_product_id(gateway):
    return get_json(f"http://{gateway.addrs['http']}/v1/products?page_size=1")["products"][0]["id"]


def open_breaker(gateway, product, path):
    """GETs until the gateway answers 503 with the breaker's `Retry-After` (the rest of its
    cool-down; the gateway says 1 s on any other 503). (GETs it took, GetProduct calls the product
    handled meanwhile, retries included.)"""
    host, gateway_port = gateway.addrs["http"].rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(gateway_port), timeout=10)
    try:
        for sent in range(1, TRIP_PATIENCE + 1):
            connection.request("GET", path)
            response = connection.getresponse()
            response.read()
            if response.status == 503 and int(response.getheader("retry-after", "0")) > 1:
                break
            if response.status not in (503, 504):
                raise Failed(f"opening the breaker: answer {response.status}")
        else:
            raise Failed(f"breaker not open after {TRIP_PATIENCE} GETs")
    finally:
        connection.close()
    # The product logs a call when it has answered; give the last line time to be written.
    time.sleep(0.2)
    return sent, len(product.calls())


def measure(args, work, name, gateway, path, expect, product):
    """WARM_UP GETs, then args.count measured ones: the gateway's and the client's latencies, and
    the GetProduct calls `product` handled during each part."""
    load_cpu = None if args.load_cpu < 0 else args.load_cpu
    calls_before = len(product.calls())
    warm, _ = probe(work, f"{name}-warm-up", gateway.addrs["http"], path, WARM_UP, load_cpu)
    odd = [status for _, _, status, _ in warm if status != expect]
    if odd:
        raise Failed(f"{name} warm-up: {len(odd)} answers other than {expect}: {odd[:5]}")
    time.sleep(0.2)
    calls_warm = len(product.calls())
    answers, reconnects = probe(
        work, name, gateway.addrs["http"], path, args.count, load_cpu)
    since = answers[0][0]
    # The gateway writes its line before the client has read the answer; 1 s of margin, since
    # nothing else talks to this gateway.
    until = answers[-1][0] + 1.0
    time.sleep(0.3)
    calls_measured = len(product.calls())
    logged = gateway_answers(gateway, path, since, until)
    statuses = {status for status, _ in logged} | {status for _, _, status, _ in answers}
    if statuses != {expect}:
        raise Failed(f"{name}: answers other than {expect}: {sorted(statuses)}")
    if len(logged) != args.count:
        raise Failed(f"{name}: the gateway logged {len(logged)} of {args.count} answers")
    gateway_us = [latency for _, latency in logged]
    client_us = [client for _, client, _, _ in answers]
    return {
        f"{name}_gateway_us_median": rounded(statistics.median(gateway_us)),
        f"{name}_gateway_us_p99": rounded(percentile(gateway_us, 0.99)),
        f"{name}_client_us_median": rounded(statistics.median(client_us)),
        f"{name}_client_us_p99": rounded(percentile(client_us, 0.99)),
        f"{name}_reconnects": reconnects,
        f"{name}_retry_after": sorted({retry for _, _, _, retry in answers}, key=str),
        f"{name}_calls_warm_up": calls_warm - calls_before,
        f"{name}_calls_measured": calls_measured - calls_warm,
    }


def figure_1(args, stack):
    result = {}
    # Two stacks, each with its own registry: both products register as `product`, and each
    # gateway must see only its own.
    broken_registry = stack.registry("registry-broken")
    broken = stack.product("product-broken", broken_registry, args.breaker_database_url, True,
                           {"FLOTILLA_FAULTS": FAULTY})
    until_passing(broken_registry.addrs["http"], [port(broken)])
    broken_gateway = stack.gateway("gateway-broken", broken_registry, {
        "FLOTILLA_BREAKER_COOL_DOWN": "10m",
        "RUST_LOG": "info,tower_http=debug",
    })
    healthy_registry = stack.registry("registry-healthy")
    healthy = stack.product("product-healthy", healthy_registry, args.breaker_database_url, False)
    until_passing(healthy_registry.addrs["http"], [port(healthy)])
    healthy_gateway = stack.gateway("gateway-healthy", healthy_registry, {
        "RUST_LOG": "info,tower_http=debug",
    })
    # ListProducts is not faulty: the same database, so the same id through either gateway.
    product_id = first_product_id(broken_gateway)
    path = f"/v1/products/{product_id}"

    sent, calls_opening = open_breaker(broken_gateway, broken, path)
    result.update({
        "gets_to_open": sent,
        "get_product_calls_while_opening": calls_opening,
        "breaker_opened_lines": len([
            1 for line in broken_gateway.lines()
            if line.get("message") == "circuit breaker opened"]),
    })
    result.update(measure(args, args.work, "open", broken_gateway, path, "503", broken))
    result.update(measure(args, args.work, "healthy", healthy_gateway, path, "200", healthy))
    return result


def figure_2(args, stack):
    load_cpu = None if args.load_cpu < 0 else args.load_cpu
    registry = stack.registry("registry")
    registry_addr = registry.addrs["http"]
    database = args.rolling_database_url
    a = stack.product("product-a", registry, database, True)
    b = stack.product("product-b", registry, database, False)
    until_passing(registry_addr, [port(a), port(b)])
    gateway = stack.gateway("gateway", registry)
    product_id = first_product_id(gateway)

    load = Load(args.work, gateway.addrs["http"], product_id, args.clients, 0, load_cpu)
    try:
        time.sleep(args.warm_up)
        if not a.calls() or not b.calls():
            raise Failed(f"warm-up did not reach A and B: {len(a.calls())}, {len(b.calls())} calls")

        steps = {}
        restart_began = time.time()
        old_and_new = []
        for old, label in ((a, "c"), (b, "d")):
            launched = time.time()
            new = stack.product(f"product-{label}", registry, database, False)
            new_id = registered_id(new)
            listed = until_listed(registry_addr, new_id)
            sigterm = time.time()
            old.terminate()
            status = old.wait(PATIENCE)
            exited = time.time()
            if status != 0:
                raise Failed(f"{old.label} exited with {status}")
            steps[f"{label}_launch_to_passing_ms"] = ms(listed - launched)
            old_name = old.label[-1]
            steps[f"{old_name}_sigterm_to_exit_ms"] = ms(exited - sigterm)
            old_and_new.append((old, new, new_id, sigterm))
        restart_ended = time.time()
        time.sleep(1.0)
        # In time order: the load writes each client's outcomes one client after the other.
        outcomes = sorted(load.finish())
        load = None
    finally:
        if load is not None:
            load.kill()

    failed = [(at, status) for at, status in outcomes if status != "200"]
    span = outcomes[-1][0] - outcomes[0][0] if len(outcomes) > 1 else 0.0
    during = [at for at, _ in outcomes if restart_began <= at <= restart_ended]
    # What the gateway said about failures, to explain any (its warnings and errors).
    load_began = outcomes[0][0] if outcomes else restart_began
    explained = [
        {k: v for k, v in line.items() if k not in ("target", "spans")}
        for line in gateway.lines()
        if line.get("level") in ("WARN", "ERROR")
        and parse_rfc3339(line["timestamp"]) >= load_began
    ]
    result = {
        "requests": len(outcomes),
        "failed": len(failed),
        "failed_during_restart": len(
            [1 for at, _ in failed if restart_began <= at <= restart_ended]),
        "rate_per_s": round(len(outcomes) / span) if span > 0 else None,
        "rate_during_restart_per_s": round(len(during) / (restart_ended - restart_began)),
        "restart_s": round(restart_ended - restart_began, 2),
        "calls": {
            instance.label[-1]: len(instance.calls())
            for instance in (a, b) + tuple(step[1] for step in old_and_new)
        },
        "failed_samples": failed[:5],
        "gateway_warnings": explained[:10],
    }
    result.update(steps)
    for old, new, new_id, sigterm in old_and_new:
        # Whether the gateway already sent to the new instance when the old one was stopped
        # (the bench waits for the registry only, as an orchestrator would).
        added = gateway.first("instance added to the balancer", instance=new_id)
        result[f"{new.label[-1]}_added_before_{old.label[-1]}_sigterm"] = (
            added is not None and added["at"] < sigterm)
    return result


def run_main(args):
    # `timeout` and the shell stop a run with SIGTERM: unwind, so the finally block stops it all.
    signal.signal(signal.SIGTERM, interrupted)
    stack = Stack(args)
    try:
        result = figure_1(args, stack)
        stack.stop()
        result.update(figure_2(args, stack))
    finally:
        stack.stop()
    print(json.dumps(result), flush=True)


# --- summary -----------------------------------------------------------------------------------

FIGURES = [
    ("gets_to_open", "GETs until the gateway answered 503 with `Retry-After` (breaker open)", ""),
    ("get_product_calls_while_opening", "GetProduct calls the faulty product handled meanwhile (retries included)", ""),
    ("open_gateway_us_median", "**open breaker**: gateway's logged latency of a 503, median", "µs"),
    ("open_gateway_us_p99", "open breaker: gateway's logged latency of a 503, p99", "µs"),
    ("open_client_us_median", "open breaker: client-observed latency of a 503, median", "µs"),
    ("open_client_us_p99", "open breaker: client-observed latency of a 503, p99", "µs"),
    ("open_calls_measured", "GetProduct calls the faulty product handled during those GETs", ""),
    ("healthy_gateway_us_median", "**healthy path**: gateway's logged latency of a 200, median", "µs"),
    ("healthy_gateway_us_p99", "healthy path: gateway's logged latency of a 200, p99", "µs"),
    ("healthy_client_us_median", "healthy path: client-observed latency of a 200, median", "µs"),
    ("healthy_client_us_p99", "healthy path: client-observed latency of a 200, p99", "µs"),
    ("requests", "**rolling restart**: requests of the load (warm-up, restart, 1 s after)", ""),
    ("failed", "failed requests (not 200, or a transport error)", ""),
    ("failed_during_restart", "of which between the launch of C and the exit of B", ""),
    ("rate_per_s", "requests per second, whole load", ""),
    ("rate_during_restart_per_s", "requests per second during the restart", ""),
    ("restart_s", "duration of the restart: launch of C to the exit of B", "s"),
    ("c_launch_to_passing_ms", "launch of C to the bench's blocking query listing it as passing", "ms"),
    ("a_sigterm_to_exit_ms", "SIGTERM of A to its exit (2 s deregister delay + drain)", "ms"),
    ("d_launch_to_passing_ms", "launch of D to passing", "ms"),
    ("b_sigterm_to_exit_ms", "SIGTERM of B to its exit", "ms"),
]


def summary_main(args):
    summarise(args.results, FIGURES)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run")
    run.add_argument("--binary", required=True)
    run.add_argument("--work", required=True)
    run.add_argument("--breaker-database-url", required=True)
    run.add_argument("--rolling-database-url", required=True)
    run.add_argument("--count", type=int, default=2000, help="measured GETs per path (figure 1)")
    run.add_argument("--check-interval", default="1s")
    run.add_argument("--check-timeout", default="1s")
    run.add_argument("--deregister-delay", default="2s")
    run.add_argument("--clients", type=int, default=4)
    run.add_argument("--warm-up", type=float, default=1.0)
    run.add_argument("--servers-cpu", type=int, default=-1, help="pin the servers; -1: do not pin")
    run.add_argument("--load-cpu", type=int, default=-1, help="pin the load; -1: do not pin")

    one = commands.add_parser("probe")
    one.add_argument("--gateway", required=True)
    one.add_argument("--path", required=True)
    one.add_argument("--count", type=int, required=True)
    one.add_argument("--out", required=True)

    summary = commands.add_parser("summary")
    summary.add_argument("results")

    args = parser.parse_args()
    try:
        {"run": run_main, "probe": probe_main, "summary": summary_main}[args.command](args)
    except Failed as failure:
        sys.exit(f"resilience_bench: {failure}")


if __name__ == "__main__":
    main()
