#!/usr/bin/env python3
"""Drive the lab model on one lab node directly: HTTP and gRPC, concurrency 1, 8, 16 and 32.

The lab model is served as production serves DeepSeek-V3/R1 (decoupled, TensorRT-LLM llmapi interface), so
HTTP requests go to /v2/models/<model>/generate (one JSON answer) and gRPC requests to a bidirectional
stream (one stream per client thread), each asking for --max-tokens tokens. Every client thread keeps its own
connection. Prints requests per second, p50 and p99 latency in ms, and throughput as a ratio of the same
protocol at concurrency 1 (the baseline, measured in the same run). These are the direct figures the mTLS
proxy's benchmark compares against.

Needs the lab (`make lab`); the target defaults to lab-primary-gpu1.
Run with: .venv/bin/python benchmarks/triton_lab_model.py [--host lab-primary-gpu1] [--requests 400]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import queue
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import docker
import numpy as np
import tritonclient.grpc as grpcclient

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "molecule" / "lab"))
import lab  # noqa: E402

CONCURRENCY = (1, 8, 16, 32)
PROMPT = "Summarise the failover procedure."


def http_worker(address: str, model: str, max_tokens: int) -> Callable[[], None]:
    """One keep-alive HTTP connection; each call is one generate request."""
    connection = http.client.HTTPConnection(address, 8000, timeout=60)
    body = json.dumps({"text_input": PROMPT, "sampling_param_max_tokens": max_tokens})

    def call() -> None:
        connection.request("POST", f"/v2/models/{model}/generate", body, {"Content-Type": "application/json"})
        answer = connection.getresponse()
        data = answer.read()
        if answer.status != 200 or b"text_output" not in data:
            raise RuntimeError(f"HTTP {answer.status}: {data[:200]!r}")

    return call


def grpc_worker(address: str, model: str, max_tokens: int) -> Callable[[], None]:
    """One gRPC stream; each call sends one request and waits for its final response."""
    client = grpcclient.InferenceServerClient(f"{address}:8001")
    results: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    text = grpcclient.InferInput("text_input", [1], "BYTES")
    text.set_data_from_numpy(np.array([PROMPT.encode()], dtype=np.object_))
    tokens = grpcclient.InferInput("sampling_param_max_tokens", [1], "INT32")
    tokens.set_data_from_numpy(np.array([max_tokens], dtype=np.int32))

    def call() -> None:
        client.async_stream_infer(model, [text, tokens])
        result, error = results.get(timeout=60)
        if error is not None or result.as_numpy("text_output") is None:
            raise RuntimeError(f"gRPC: {error}")

    return call


def measure(make_worker: Callable[[], Callable[[], None]], concurrency: int, total: int) -> dict[str, float]:
    """Run ``total`` requests over ``concurrency`` workers (after one warm-up call each)."""
    workers = [make_worker() for _ in range(concurrency)]
    for call in workers:
        call()
    latencies: list[float] = []
    lock = threading.Lock()
    per_worker = max(1, total // concurrency)

    def run(call: Callable[[], None]) -> None:
        mine = []
        for _ in range(per_worker):
            start = time.perf_counter()
            call()
            mine.append(time.perf_counter() - start)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=run, args=(call,)) for call in workers]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    latencies.sort()
    return {
        "requests": len(latencies),
        "rps": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
    }


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
    rows = []
    for protocol, factory in (("http", http_worker), ("grpc", grpc_worker)):
        for concurrency in CONCURRENCY:
            figures = measure(lambda f=factory: f(address, args.model, args.max_tokens), concurrency, args.requests)
            rows.append((protocol, concurrency, figures))

    baseline = {p: f["rps"] for p, c, f in rows if c == 1}
    print()
    print(f"{args.model} on {args.host} ({address}), {args.max_tokens} tokens per request")
    print(f"machine: {platform.machine()}, {len(os.sched_getaffinity(0))} cores (client and server share them)")
    print(f"{'protocol':<9} {'conc':>5} {'requests':>9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'x conc 1':>9}")
    for protocol, concurrency, f in rows:
        print(
            f"{protocol:<9} {concurrency:>5} {f['requests']:>9} {f['rps']:>8.1f} {f['p50_ms']:>8.2f} "
            f"{f['p99_ms']:>8.2f} {f['rps'] / baseline[protocol]:>9.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
