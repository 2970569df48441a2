#!/usr/bin/env python3
"""What the mutual-TLS proxy costs: direct to Triton versus through the proxy, in one run.

Two models on one lab node: `bench_echo` (loaded for the run through Triton's repository API, then
unloaded: a python-backend echo, the proxy's worst case) and the lab model (decoupled, llmapi interface).
HTTP (infer / generate on keep-alive connections) and gRPC (unary / one stream per client), concurrency
1, 8, 16 and 32. The proxy is pinned to that one node for the run, so both paths reach the same server.

Each proxy configuration ("variant") is applied with playbooks/proxy.yml and role variables (what an
operator would set), then every cell is measured direct and through the proxy alternately (--rounds each),
so the baseline is the same cell's direct mean, taken in the same minutes; the spread of its direct rounds
is printed as the cell's noise. --as-deployed measures the proxy as it is instead. Printed per cell: added
p50/p99 latency in ms, the throughput ratio (proxy / direct), and the proxy's CPU seconds per 1,000
requests (HAProxy, and rsyslog writing the audit log). Then, per variant, a client opening a new
connection per request: plain TCP to Triton, a full TLS handshake with the proxy, a resumed TLS session;
and what one signature verification with the CA's key costs (a full handshake pays several).

Needs the lab (`make lab`). Restores the lab's proxy configuration at the end.
Run with: .venv/bin/python benchmarks/mtls_proxy_overhead.py [--site primary] [--variants plain,one-thread]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import statistics
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import docker
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from deepseek_testkit import lab, loadgen
from deepseek_testkit.loadgen import ClientCert, Figures, HttpSession, Target

CONCURRENCY = (1, 8, 16, 32)
ECHO = "bench_echo"
ECHO_SOURCE = Path(__file__).resolve().parent / "echo_model" / "model.py"
ECHO_CONFIG = {
    "name": ECHO,
    "backend": "python",
    "max_batch_size": 0,
    "input": [{"name": "INPUT", "data_type": "TYPE_STRING", "dims": [1]}],
    "output": [{"name": "OUTPUT", "data_type": "TYPE_STRING", "dims": [1]}],
    "instance_group": [{"kind": "KIND_CPU", "count": 1}],
}
CPU_PROCESSES = ("haproxy", "rsyslogd")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Variant:
    """A proxy configuration: role variables for playbooks/proxy.yml, and what they change."""

    name: str
    about: str
    role_vars: dict = field(default_factory=dict)


# Every variant: the rate limiter still tracks each request (its cost is measured), but the benchmark's one
# client certificate must not be cut off by it.
BENCH_VARS = {"mtls_proxy_rate_limit": 10_000_000}

# In the order they are tried: each adds one change to the one before it.
VARIANTS = (
    Variant(
        "plain",
        "HAProxy's own defaults: one thread per CPU, http-reuse safe",
        {"mtls_proxy_threads": 0, "mtls_proxy_http_reuse": "safe"},
    ),
    Variant("one-thread", "one HAProxy thread", {"mtls_proxy_threads": 1, "mtls_proxy_http_reuse": "safe"}),
    Variant(
        "reuse-always",
        "one thread, and idle connections to Triton shared with first requests too",
        {"mtls_proxy_threads": 1, "mtls_proxy_http_reuse": "always"},
    ),
)


@dataclass(frozen=True)
class Cell:
    """One measured combination."""

    model: str
    protocol: str
    concurrency: int


@dataclass
class Pair:
    """A cell measured direct and through the proxy, with the proxy's CPU seconds per 1,000 requests."""

    direct: Figures
    proxy: Figures
    cpu: dict[str, float]
    noise: float


def load_echo(node: str) -> None:
    """Load bench_echo on a node through Triton's repository API (config and model.py in the request)."""
    body = {
        "parameters": {
            "config": json.dumps(ECHO_CONFIG),
            "file:1/model.py": base64.b64encode(ECHO_SOURCE.read_bytes()).decode(),
        }
    }
    request = urllib.request.Request(
        f"http://{node}:8000/v2/repository/models/{ECHO}/load",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    urllib.request.urlopen(request, timeout=120).read()  # noqa: S310 (lab addresses only)


def unload_echo(node: str) -> None:
    """Unload bench_echo again (the node serves only its configured model afterwards)."""
    request = urllib.request.Request(f"http://{node}:8000/v2/repository/models/{ECHO}/unload", data=b"{}")
    urllib.request.urlopen(request, timeout=120).read()  # noqa: S310 (lab addresses only)


def proxy_cpu(container: docker.models.containers.Container) -> dict[str, float]:
    """CPU seconds (user + system) used so far by the proxy's HAProxy and rsyslog processes."""
    out = container.exec_run(["sh", "-c", "cat /proc/[0-9]*/stat 2>/dev/null"]).output.decode(errors="replace")
    used = dict.fromkeys(CPU_PROCESSES, 0.0)
    for line in out.splitlines():
        name = line[line.find("(") + 1 : line.rfind(")")]
        if name in used:
            fields = line[line.rfind(")") + 2 :].split()
            used[name] += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return used


def worker_factory(cell: Cell, target: Target, args: argparse.Namespace) -> Callable[[], loadgen.Worker]:
    """The worker for a cell: echo or lab model, HTTP or gRPC."""
    if cell.model == ECHO:
        make = loadgen.http_echo if cell.protocol == "http" else loadgen.grpc_echo
        return lambda: make(target, ECHO)
    if cell.protocol == "http":
        return lambda: loadgen.http_generate(target, args.model, args.max_tokens)
    return lambda: loadgen.grpc_stream(target, args.model, args.max_tokens)


def measure_cell(
    cell: Cell, targets: tuple[Target, Target], args: argparse.Namespace, cpu_of: Callable[[], dict[str, float]]
) -> Pair:
    """Direct and proxied in alternation (args.rounds each), so that both see the same machine."""
    total = args.echo_requests if cell.model == ECHO else args.requests
    direct, proxied, cpu = [], [], dict.fromkeys(CPU_PROCESSES, 0.0)
    for _ in range(args.rounds):
        direct.append(loadgen.measure(worker_factory(cell, targets[0], args), cell.concurrency, total))
        before = cpu_of()
        proxied.append(loadgen.measure(worker_factory(cell, targets[1], args), cell.concurrency, total))
        after = cpu_of()
        for name in cpu:
            cpu[name] += after[name] - before[name]
    # The warm-up requests (one per worker) count too: the CPU deltas cover them.
    served = sum(f.requests + cell.concurrency for f in proxied)
    pair = Pair(
        direct=mean(direct),
        proxy=mean(proxied),
        cpu={n: used * 1000 / served for n, used in cpu.items()},
        noise=max(f.rps for f in direct) / min(f.rps for f in direct),
    )
    lab.log(
        f"{cell.model} {cell.protocol} c{cell.concurrency}: direct {pair.direct.rps:.0f}/s "
        f"p50 {pair.direct.p50_ms:.2f} ms, proxy {pair.proxy.rps:.0f}/s p50 {pair.proxy.p50_ms:.2f} ms"
    )
    return pair


def mean(runs: list[Figures]) -> Figures:
    """The mean of several measurements of the same cell."""
    return Figures(
        requests=sum(f.requests for f in runs),
        seconds=sum(f.seconds for f in runs),
        rps=statistics.mean(f.rps for f in runs),
        p50_ms=statistics.mean(f.p50_ms for f in runs),
        p99_ms=statistics.mean(f.p99_ms for f in runs),
    )


def apply_variant(proxy: str, node: str, variant: Variant) -> None:
    """Render the proxy with the variant's role variables, pinned to one node; fail loudly otherwise."""
    extra = {"mtls_proxy_backends": [{"name": node, "address": node}], **BENCH_VARS, **variant.role_vars}
    run = lab.run_playbook("playbooks/proxy.yml", ["--limit", proxy, "-e", json.dumps(extra)])
    if not run.ok:
        raise SystemExit(f"benchmark: applying the variant {variant.name!r} failed")
    time.sleep(3)  # the health check marks the (new) server up


def new_connections(target: Target, total: int, resume: bool = False) -> tuple[Figures, str]:
    """Echo over HTTP from one client opening a new connection per request (resuming TLS when asked)."""
    sessions: list[HttpSession] = []

    def make() -> loadgen.Worker:
        session = HttpSession(target, fresh=True, resume=resume)
        sessions.append(session)
        return loadgen.http_echo(target, ECHO, session)

    figures = loadgen.measure(make, 1, total)
    done = sum(s.handshakes for s in sessions)
    return figures, (f"{sum(s.resumed for s in sessions) / done:.0%} resumed" if done else "")


def signature_cost(ca: Path, client: Path, count: int = 200) -> list[tuple[str, float]]:
    """Milliseconds per ECDSA verification with the CA's key (every full handshake pays it), and P-256 for scale."""
    ca_key = x509.load_pem_x509_certificate(ca.read_bytes()).public_key()
    leaf = x509.load_pem_x509_certificate(client.read_bytes())
    p256 = ec.generate_private_key(ec.SECP256R1())
    p256_signature = p256.sign(leaf.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))
    cases = (
        (f"the CA's {ca_key.curve.name}", ca_key, leaf.signature, leaf.signature_hash_algorithm),
        ("secp256r1 for comparison", p256.public_key(), p256_signature, hashes.SHA256()),
    )
    rows = []
    for name, key, signature, digest in cases:
        start = time.perf_counter()
        for _ in range(count):
            key.verify(signature, leaf.tbs_certificate_bytes, ec.ECDSA(digest))
        rows.append((name, (time.perf_counter() - start) * 1000 / count))
    return rows


def print_variant(variant: Variant, pairs: dict[Cell, Pair]) -> None:
    """One table: direct versus proxied per cell, with the ratios and the proxy's CPU."""
    print()
    print(f"variant {variant.name}: {variant.about}")
    print(f"  role variables: {json.dumps(variant.role_vars)}")
    print(
        f"{'model':<11} {'proto':<5} {'conc':>4} {'direct/s':>9} {'proxy/s':>8} {'x direct':>8} {'d p50':>7} "
        f"{'p p50':>7} {'+p50 ms':>8} {'+p99 ms':>8} {'haproxy':>8} {'rsyslog':>8} {'noise':>6}"
    )
    for cell, pair in pairs.items():
        d, p = pair.direct, pair.proxy
        print(
            f"{cell.model:<11} {cell.protocol:<5} {cell.concurrency:>4} {d.rps:>9.1f} {p.rps:>8.1f} "
            f"{p.rps / d.rps:>8.2f} {d.p50_ms:>7.2f} {p.p50_ms:>7.2f} {p.p50_ms - d.p50_ms:>8.2f} "
            f"{p.p99_ms - d.p99_ms:>8.2f} {pair.cpu['haproxy']:>8.3f} {pair.cpu['rsyslogd']:>8.3f} {pair.noise:>6.2f}"
        )


def main() -> int:
    """Run the benchmark on the lab and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--site", default="primary", help="lab site whose proxy and first node are used")
    parser.add_argument("--model", default=lab.LAB_MODEL)
    parser.add_argument("--requests", type=int, default=400, help="lab-model requests per cell")
    parser.add_argument("--echo-requests", type=int, default=2000, help="echo requests per cell")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--variants", default=",".join(v.name for v in VARIANTS), help="comma-separated")
    parser.add_argument("--as-deployed", action="store_true", help="measure the proxy as it is; apply nothing")
    parser.add_argument("--concurrency", default=",".join(map(str, CONCURRENCY)), help="comma-separated")
    parser.add_argument("--models", default="echo,lab", help="comma-separated: echo, lab")
    parser.add_argument("--rounds", type=int, default=2, help="direct and proxied runs per cell, alternating")
    parser.add_argument("--handshakes", type=int, default=400, help="requests per new-connection case")
    args = parser.parse_args()

    client = docker.from_env()
    hosts = {h.name: h for h in lab.lab_hosts()}
    proxy, node = f"lab-{args.site}-proxy", f"lab-{args.site}-gpu1"
    if proxy not in hosts or node not in hosts or lab.find_container(client, proxy) is None:
        print(f"benchmark: {proxy} or {node} is not running; start the lab with `make lab`", file=sys.stderr)
        return 2
    node_ip, proxy_ip = lab.container_ip(client, hosts[node]), lab.container_ip(client, hosts[proxy])
    store = lab.PKI_STORE
    clients = store / "clients"
    cert = ClientCert(store / "ca.crt", clients / f"{lab.LAB_CLIENT}.crt", clients / f"{lab.LAB_CLIENT}.key")
    chosen = [v for v in VARIANTS if v.name in args.variants.split(",")] if not args.as_deployed else []
    concurrency = [int(c) for c in args.concurrency.split(",")]
    models = [{"echo": ECHO, "lab": args.model}[m] for m in args.models.split(",")]
    cells = [Cell(m, p, c) for m in models for p in ("http", "grpc") for c in concurrency]
    container = client.containers.get(proxy)

    targets = (Target(node_ip, 8000, 8001), Target(proxy_ip, 8443, 8443, cert))
    load_echo(node_ip)
    measured: list[tuple[Variant, dict[Cell, Pair], dict[str, tuple[Figures, str]]]] = []
    try:
        for variant in chosen or [Variant("as-deployed", "the proxy as it was found")]:
            if chosen:
                apply_variant(proxy, node, variant)
            lab.log(f"variant {variant.name}")
            pairs = {c: measure_cell(c, targets, args, lambda: proxy_cpu(container)) for c in cells}
            fresh = {
                "direct, new TCP connection": new_connections(targets[0], args.handshakes),
                "proxy, full TLS handshake": new_connections(targets[1], args.handshakes),
                "proxy, resumed TLS session": new_connections(targets[1], args.handshakes, resume=True),
            }
            measured.append((variant, pairs, fresh))
    finally:
        unload_echo(node_ip)
        if chosen:
            lab.run_playbook("playbooks/proxy.yml", ["--limit", proxy])

    print()
    print(f"{proxy} ({proxy_ip}) in front of {node} ({node_ip}); lab model: {args.max_tokens} tokens per request")
    print(f"machine: {platform.machine()}, {len(os.sched_getaffinity(0))} cores (client, proxy and Triton share them)")
    print(
        f"each cell: direct and proxied alternately, {args.rounds} rounds each, means; noise = best / worst direct "
        "throughput of the cell's rounds; haproxy and rsyslog = CPU seconds per 1,000 proxied requests"
    )
    for variant, pairs, fresh in measured:
        print_variant(variant, pairs)
        print("  a new connection per request (echo over HTTP, one client):")
        base = next(iter(fresh.values()))[0]
        for name, (figures, resumed) in fresh.items():
            print(
                f"    {name:<28} {figures.rps:>7.1f} req/s  x direct {figures.rps / base.rps:>5.2f}  "
                f"p50 {figures.p50_ms:>6.2f} ms  {resumed}"
            )
    print("ECDSA signature verification (every full handshake verifies CA signatures on both sides):")
    for name, ms in signature_cost(cert.ca, cert.crt):
        print(f"  {name:<30} {ms:>6.3f} ms per verification")
    return 0


if __name__ == "__main__":
    sys.exit(main())
