#!/usr/bin/env python3
"""Drive the lab model on one lab node directly: HTTP and gRPC, concurrency 1, 8, 16 and 32.

The lab model is served as production serves DeepSeek-V3/R1 (decoupled, TensorRT-LLM llmapi interface), so
HTTP requests go to /v2/models/<model>/generate (one JSON answer) and gRPC requests to a bidirectional
stream (one stream per client thread), each asking for --max-tokens tokens. Every client thread keeps its own
connection. Prints requests per second, p50 and p99 latency in ms, and throughput as a ratio of the same
protocol at concurrency 1 (the baseline, measured in the same run). The mTLS proxy's benchmark
(mtls_proxy_overhead.py) takes the same direct figures again in its own run, as its baseline.

Needs the lab (`make lab`); the target defaults to lab-primary-gpu1.
Run with: .venv/bin/python benchmarks/triton_lab_model.py [--host lab-primary-gpu1] [--requests 400]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

import docker
from deepseek_testkit import lab, loadgen
from deepseek_testkit.loadgen import Target

CONCURRENCY = (1, 8, 16, 32)


def main() -> int:
    """Run the benchmark against a lab node and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="lab-primary-gpu1", help="lab node serving the model")
    parser.add_argument("--model", default=lab.LAB_MODEL)
    parser.add_argument("--requests", type=int, default=400, help="requests per protocol and concurrency")
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args()

    client = docker.from_env()
    host = next((h for h in lab.lab_hosts() if h.name == args.host), None)
    if host is None or lab.find_container(client, args.host) is None:
        print(f"benchmark: {args.host} is not running; start the lab with `make lab`", file=sys.stderr)
        return 2
    address = lab.container_ip(client, host)
    target = Target(address, 8000, 8001)
    rows = []
    for protocol, factory in (("http", loadgen.http_generate), ("grpc", loadgen.grpc_stream)):
        for concurrency in CONCURRENCY:
            figures = loadgen.measure(
                lambda f=factory: f(target, args.model, args.max_tokens), concurrency, args.requests
            )
            rows.append((protocol, concurrency, figures))

    baseline = {p: f.rps for p, c, f in rows if c == 1}
    print()
    print(f"{args.model} on {args.host} ({address}), {args.max_tokens} tokens per request")
    print(f"machine: {platform.machine()}, {len(os.sched_getaffinity(0))} cores (client and server share them)")
    print(f"{'protocol':<9} {'conc':>5} {'requests':>9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'x conc 1':>9}")
    for protocol, concurrency, f in rows:
        print(
            f"{protocol:<9} {concurrency:>5} {f.requests:>9} {f.rps:>8.1f} {f.p50_ms:>8.2f} "
            f"{f.p99_ms:>8.2f} {f.rps / baseline[protocol]:>9.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
