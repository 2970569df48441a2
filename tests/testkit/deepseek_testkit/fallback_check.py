#!/usr/bin/env python3
"""The lab's graceful degradation: overflow to the fallback node under load, and nothing fails.

Each site has a fallback node (group fallback_nodes: the lab model from another seed, smaller limits) that
its proxy overflows to when the main pool has no free slot (inventories/lab/group_vars/proxies.yml,
docs/roles/mtls_proxy.md). For each proxy:

1. its fallback backends (triton_http_fallback, triton_grpc_fallback) have exactly the site's fallback
   nodes UP, and a fallback node's Triton admits the site's proxy only (8000), its metrics the monitoring
   host only (8002), as every GPU node's;
2. the main pool is made small for the check (each main server's maxconn set to 1 through HAProxy's runtime
   API, restored afterwards), then LOAD streaming requests (HTTP generate_stream, the lab client's
   certificate) go through the proxy at once. None may fail; some must carry ``deepseek-fallback:
   overflow`` and the rest none; Triton's success counters (read by the monitoring host) must show the
   marked ones served by the fallback node and the others by the main nodes; the audit log must have one
   line per request, whose ``fallback`` field and backend say the same.

Called from lab.py's checks (make lab, make lab-test); alone against a running lab:
    .venv/bin/python -m deepseek_testkit.fallback_check
"""

from __future__ import annotations

import csv
import io
import json
import re
import ssl
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import docker

from deepseek_testkit import (
    ROOT,
    lab,  # the lab's own helpers (lab.py imports this module only inside its checks)
)

PKI_STORE = ROOT / ".cache" / "pki"
CLIENT = "lab-client"
MODEL = "deepseek"
MARKER = "deepseek-fallback"
AUDIT_LOG = "/var/log/haproxy/audit.log"
LOAD = 12
TOKENS = 256  # within the fallback's smaller limit (inventories/lab/group_vars/fallback_nodes.yml)
PROMPT = "What does the fallback pool do?"
ADMIN_SOCKET = "/run/haproxy/admin.sock"
RUNTIME_API = (
    "import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
    "s.sendall(sys.argv[2].encode() + b'\\n'); print(s.makefile().read())"
)
SUCCESS = re.compile(rf'^nv_inference_request_success\{{model="{MODEL}",version="[^"]*"\}} (?P<n>[0-9.e+]+)$')
SERVER_UP = re.compile(r'^haproxy_server_status\{proxy="(?P<backend>[^"]+)",server="(?P<server>[^"]+)",state="UP"\} 1$')


class Host(Protocol):
    """A lab host as lab.py describes it (LabHost)."""

    name: str
    groups: list[str]
    network: str


@dataclass
class Stream:
    """One streamed request through the proxy: its status, the marker header, the events it got."""

    status: int
    marker: str | None
    events: list[dict[str, Any]] = field(default_factory=list)
    error: str = ""

    @property
    def ok(self) -> bool:
        """Answered 200 with at least one event and no error event."""
        return (
            self.status == 200 and bool(self.events) and not self.error and all("error" not in e for e in self.events)
        )


def log(message: str) -> None:
    """Print a lab progress line."""
    print(f"lab: {message}", flush=True)


def parse_sse(body: str) -> list[dict[str, Any]]:
    """The JSON objects of a server-sent event stream (``data: {...}`` lines), in order."""
    return [json.loads(line[5:].strip()) for line in body.splitlines() if line.startswith("data:") and line[5:].strip()]


def successes(metrics: str) -> float:
    """Successful requests of the lab model in Triton's Prometheus output."""
    return sum(float(m["n"]) for m in map(SUCCESS.match, metrics.splitlines()) if m)


def servers_up(metrics: str) -> dict[str, set[str]]:
    """The servers each backend has UP, from HAProxy's Prometheus exporter."""
    up: dict[str, set[str]] = {}
    for match in filter(None, map(SERVER_UP.match, metrics.splitlines())):
        up.setdefault(match["backend"], set()).add(match["server"])
    return up


def configured_maxconn(show_stat: str, backend: str) -> dict[str, int]:
    """Each server's maxconn (slim) in a backend, from the runtime API's ``show stat`` CSV."""
    rows = csv.DictReader(io.StringIO(show_stat.lstrip("# ")))
    return {
        row["svname"]: int(row["slim"])
        for row in rows
        if row.get("pxname") == backend and row.get("svname") not in ("FRONTEND", "BACKEND") and row.get("slim")
    }


def verdict(
    proxy: str,
    streams: list[Stream],
    audit: list[dict[str, Any]],
    served: dict[str, float],
    main: set[str],
    fallback: set[str],
) -> list[str]:
    """What the check requires of one proxy's run; the failures (empty when it holds).

    ``audit``: the audit lines written during the run; ``served``: the requests each node's Triton served
    during it (main and fallback nodes).
    """
    failures = []
    failed = [s for s in streams if not s.ok]
    if failed:
        failures.append(f"{proxy}: {len(failed)} of {len(streams)} streams failed: {failed[:2]}")
    marked = [s for s in streams if s.marker == "overflow"]
    unmarked = [s for s in streams if s.marker is None]
    if len(marked) + len(unmarked) != len(streams):
        failures.append(f"{proxy}: unexpected {MARKER} values {sorted({str(s.marker) for s in streams})}")
    if not marked or not unmarked:
        failures.append(f"{proxy}: {len(marked)} answers marked {MARKER}: overflow, {len(unmarked)} not: not both")
    by_fallback = sum(served.get(n, 0) for n in fallback)
    by_main = sum(served.get(n, 0) for n in main)
    if (by_fallback, by_main) != (len(marked), len(unmarked)):
        failures.append(
            f"{proxy}: Triton counted {by_fallback:.0f} on the fallback and {by_main:.0f} on the main pool, "
            f"the answers say {len(marked)} and {len(unmarked)} ({served})"
        )
    lines = [a for a in audit if a.get("path", "").endswith("/generate_stream")]
    kinds = {
        (
            a.get("fallback"),
            a.get("backend"),
            a.get("server") in (fallback if a.get("fallback") == "overflow" else main),
        )
        for a in lines
    }
    expected = {("overflow", "triton_http_fallback", True), ("-", "triton_http", True)}
    overflowed = sum(a.get("fallback") == "overflow" for a in lines)
    if len(lines) != len(streams) or not kinds <= expected or overflowed != len(marked):
        failures.append(
            f"{proxy}: {len(lines)} audit lines for {len(streams)} streams, {overflowed} with fallback overflow "
            f"for {len(marked)} marked answers, kinds {sorted(map(str, kinds))}"
        )
    return failures


def tls_context() -> ssl.SSLContext:
    """The lab client's certificate, the lab CA (the checkout's ignored .cache/pki)."""
    context = ssl.create_default_context(cafile=str(PKI_STORE / "ca.crt"))
    clients = PKI_STORE / "clients"
    context.load_cert_chain(str(clients / f"{CLIENT}.crt"), str(clients / f"{CLIENT}.key"))
    return context


def stream(address: str, context: ssl.SSLContext) -> Stream:
    """One HTTP generate_stream request through the proxy, token by token."""
    body = json.dumps({"text_input": PROMPT, "sampling_param_max_tokens": TOKENS, "streaming": True}).encode()
    request = urllib.request.Request(
        f"https://{address}:8443/v2/models/{MODEL}/generate_stream",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=120, context=context) as answer:  # noqa: S310
            return Stream(answer.status, answer.headers.get(MARKER), parse_sse(answer.read().decode()))
    except urllib.error.HTTPError as exc:
        return Stream(exc.code, exc.headers.get(MARKER), error=exc.read().decode(errors="replace")[:200])
    except (OSError, ValueError) as exc:
        return Stream(0, None, error=repr(exc))


def together(call: Callable[[], T], count: int) -> list[T]:
    """``call`` run ``count`` times at once, each on a thread of its own released together (a barrier)."""
    results: list[T] = []
    lock, barrier = threading.Lock(), threading.Barrier(count)

    def run() -> None:
        barrier.wait()
        outcome = call()
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def at_once(address: str, count: int) -> list[Stream]:
    """``count`` streams started together (a barrier), each on its own connection."""
    context = tls_context()
    return together(lambda: stream(address, context), count)


def exec_text(client: docker.DockerClient, host: Host, argv: list[str]) -> str:
    """A command on a lab host through the engine (the test harness's view); its stdout."""
    return client.containers.get(host.name).exec_run(argv).output.decode(errors="replace")


def address_of(client: docker.DockerClient, host: Host) -> str:
    """The host's address on its lab network."""
    return client.containers.get(host.name).attrs["NetworkSettings"]["Networks"][host.network]["IPAddress"]


def runtime_api(client: docker.DockerClient, proxy: Host, command: str) -> str:
    """One command on the proxy's HAProxy runtime API (stats socket, level admin)."""
    return exec_text(client, proxy, ["python3", "-c", RUNTIME_API, ADMIN_SOCKET, command])


def served(client: docker.DockerClient, nodes: list[Host], monitor: Host) -> dict[str, float]:
    """Successful lab-model requests per node, read from each Triton's :8002 by the monitoring host."""
    counts = {}
    for node in nodes:
        url = f"http://{address_of(client, node)}:8002/metrics"
        metrics = exec_text(client, monitor, ["curl", "-sf", "--max-time", "5", url])
        if "nv_inference_request_success" not in metrics:
            raise ValueError(f"{monitor.name} could not read {url}")
        counts[node.name] = successes(metrics)
    return counts


def firewall_checks(
    client: docker.DockerClient, node: Host, proxy: Host, other: Host | None, monitor: Host
) -> list[str]:
    """A fallback node keeps every GPU node's allow list: 8000 its site's proxy only, 8002 the monitor only."""
    address = address_of(client, node)
    expected = {(proxy.name, 8000): True, (monitor.name, 8000): False, (monitor.name, 8002): True}
    expected |= {(proxy.name, 8002): False, ("this machine", 8000): False, ("this machine", 8002): False}
    sources: dict[str, Host | None] = {proxy.name: proxy, monitor.name: monitor, "this machine": None}
    if other is not None:
        expected[(other.name, 8000)] = False
        sources[other.name] = other
    wrong = [
        f"{source}->{port} {'closed' if should else 'open'}"
        for (source, port), should in sorted(expected.items())
        if lab.connects(client, sources[source], address, port) != should
    ]
    return [f"{node.name}: the host firewall is not what the inventory says: {', '.join(wrong)}"] if wrong else []


def audit_since(client: docker.DockerClient, proxy: Host, before: int) -> list[dict[str, Any]]:
    """The proxy's audit lines after the first ``before``."""
    text = exec_text(client, proxy, ["tail", "-n", f"+{before + 1}", AUDIT_LOG])
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def audit_count(client: docker.DockerClient, proxy: Host) -> int:
    """Lines in the proxy's audit log now."""
    return int(exec_text(client, proxy, ["wc", "-l", AUDIT_LOG]).split()[0] or 0)


T = TypeVar("T")


def wait_for(condition: Callable[[], T | None], seconds: float = 15.0) -> T | None:
    """Poll until ``condition()`` is truthy or the time is up; its last value."""
    deadline = time.monotonic() + seconds
    while not (value := condition()) and time.monotonic() < deadline:
        time.sleep(0.5)
    return value


def proxy_check(
    client: docker.DockerClient, proxy: Host, main: list[Host], fallback: list[Host], monitor: Host
) -> list[str]:
    """Backends, then the overflow under load through one proxy (the main pool made small meanwhile)."""
    metrics = lab.proxy_metrics(client, proxy)
    up, names = servers_up(metrics), {n.name for n in fallback}
    wrong = [b for b in ("triton_http_fallback", "triton_grpc_fallback") if up.get(b, set()) != names]
    if wrong:
        return [f"{proxy.name}: {wrong} do not have exactly {sorted(names)} UP ({up})"]
    limits = configured_maxconn(runtime_api(client, proxy, "show stat"), "triton_http")
    before_served = served(client, main + fallback, monitor)
    before_audit = audit_count(client, proxy)
    start = time.monotonic()
    try:
        for server in limits:
            runtime_api(client, proxy, f"set maxconn server triton_http/{server} 1")
        streams = at_once(address_of(client, proxy), LOAD)
    finally:
        for server, limit in limits.items():
            runtime_api(client, proxy, f"set maxconn server triton_http/{server} {limit}")
    seconds = time.monotonic() - start

    def counted() -> dict[str, float] | None:
        now = served(client, main + fallback, monitor)
        delta = {n: now[n] - before_served[n] for n in now}
        return delta if sum(delta.values()) >= sum(s.ok for s in streams) else None

    def audited() -> list[dict[str, Any]] | None:  # rsyslog writes the lines a moment later
        lines = audit_since(client, proxy, before_audit)
        return lines if len(lines) >= LOAD else None

    delta = wait_for(counted) or {n: 0.0 for n in before_served}
    audit = wait_for(audited) or audit_since(client, proxy, before_audit)
    failures = verdict(proxy.name, streams, audit, delta, {n.name for n in main}, names)
    if not failures:
        marked = sum(s.marker == "overflow" for s in streams)
        log(
            f"{proxy.name}: {LOAD} streams at once with the main pool at 1 slot per node: {marked} overflowed to "
            f"{sorted(names)} (marked {MARKER}: overflow, audited), {LOAD - marked} served by the main pool, "
            f"none failed ({seconds:.1f} s)"
        )
    return failures


def site_of(host: Host) -> str:
    """The site group of a lab host (primary or standby), or ''."""
    return next((g for g in host.groups if g in ("primary", "standby")), "")


def fallback_checks(client: docker.DockerClient, hosts: list[Host]) -> list[str]:
    """Every proxy's fallback pool: backends, the fallback nodes' firewall, overflow under load."""
    fallback = [h for h in hosts if "fallback_nodes" in h.groups]
    if not fallback:
        log("no fallback nodes in the inventory: graceful degradation not checked")
        return []
    proxies = [h for h in hosts if "proxies" in h.groups]
    main = [h for h in hosts if "gpu_nodes" in h.groups and "fallback_nodes" not in h.groups]
    monitor = next((h for h in hosts if "monitoring" in h.groups), None)
    if monitor is None:
        return ["the lab has no host in group monitoring"]
    return proxy_fallback_checks(client, proxies, main, fallback, monitor)


def proxy_fallback_checks(
    client: docker.DockerClient, proxies: list[Host], main: list[Host], fallback: list[Host], monitor: Host
) -> list[str]:
    """Each proxy's fallback pool, with nothing else sending requests."""
    failures = []
    for proxy in proxies:
        site = site_of(proxy)
        own_fallback = [h for h in fallback if site_of(h) == site]
        own_main = [h for h in main if site_of(h) == site]
        if not own_fallback:
            failures.append(f"site {site} has no fallback node")
            continue
        other = next((p for p in proxies if site_of(p) != site), None)
        for node in own_fallback:
            failures += firewall_checks(client, node, proxy, other, monitor)
        try:
            failures += proxy_check(client, proxy, own_main, own_fallback, monitor)
        except (OSError, ValueError, KeyError) as exc:
            failures.append(f"{proxy.name}: the overflow check could not run: {exc!r}")
    return failures


def main() -> int:
    """Run the check against the running lab (make lab first)."""
    from deepseek_testkit.lab import lab_hosts
    from deepseek_testkit.monitoring_check import probe_paused

    client, hosts = docker.from_env(), lab_hosts()
    with probe_paused(client, hosts):
        failures = fallback_checks(client, hosts)
    for failure in failures:
        log(f"FAILED: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
