"""Closed-loop load against Triton, direct or through the mutual-TLS proxy, for the benchmarks.

A worker is a callable that sends one request and checks its answer; ``measure`` runs N workers on N
threads (one connection or stream each, one warm-up call each) and returns requests per second and the
latency percentiles. Targets carry the ports and, for the proxy, the client certificate.
"""

from __future__ import annotations

import http.client
import json
import queue
import socket
import ssl
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from deepseek_testkit.model_inputs import generate_inputs

Worker = Callable[[], None]
PROMPT = "Summarise the failover procedure."
ECHO_PAYLOAD = b"ping"


@dataclass(frozen=True)
class ClientCert:
    """The client's certificate and key, and the CA that signed the proxy's certificate."""

    ca: Path
    crt: Path
    key: Path


@dataclass(frozen=True)
class Target:
    """Where requests go: Triton's own ports, or the proxy's one port with a client certificate."""

    address: str
    http_port: int
    grpc_port: int
    cert: ClientCert | None = None

    def tls_context(self) -> ssl.SSLContext | None:
        """A TLS 1.3 client context holding the client certificate (None for plain Triton)."""
        if self.cert is None:
            return None
        context = ssl.create_default_context(cafile=str(self.cert.ca))
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.load_cert_chain(str(self.cert.crt), str(self.cert.key))
        return context

    def grpc_client(self) -> grpcclient.InferenceServerClient:
        """A gRPC client of its own (TLS with the client certificate when there is one)."""
        url = f"{self.address}:{self.grpc_port}"
        if self.cert is None:
            return grpcclient.InferenceServerClient(url)
        return grpcclient.InferenceServerClient(
            url,
            ssl=True,
            root_certificates=str(self.cert.ca),
            private_key=str(self.cert.key),
            certificate_chain=str(self.cert.crt),
        )


@dataclass
class Figures:
    """What one measurement gave."""

    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float


class HttpSession:
    """One HTTP/1.1 client: a keep-alive connection, or a new one per request (optionally resuming TLS)."""

    def __init__(self, target: Target, fresh: bool = False, resume: bool = False) -> None:
        """Connect lazily; ``fresh`` opens a connection per request, ``resume`` offers the last TLS session."""
        self.target = target
        self.context = target.tls_context()
        self.fresh = fresh
        self.resume = resume
        self.session: ssl.SSLSession | None = None
        self.connection: http.client.HTTPConnection | None = None
        self.handshakes = 0
        self.resumed = 0

    def _connect(self) -> http.client.HTTPConnection:
        connection = http.client.HTTPConnection(self.target.address, self.target.http_port, timeout=60)
        if self.context is not None:
            raw = socket.create_connection((self.target.address, self.target.http_port), timeout=60)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            session = self.session if self.resume else None
            tls = self.context.wrap_socket(raw, server_hostname=self.target.address, session=session)
            self.handshakes += 1
            self.resumed += int(tls.session_reused)
            connection.sock = tls
        return connection

    def post(self, path: str, body: bytes) -> bytes:
        """POST a JSON body and return the answer's body; anything but 200 raises."""
        if self.connection is None or self.fresh:
            self.connection = self._connect()
        self.connection.request("POST", path, body, {"Content-Type": "application/json"})
        answer = self.connection.getresponse()
        data = answer.read()
        if self.fresh:
            if isinstance(self.connection.sock, ssl.SSLSocket):
                self.session = self.connection.sock.session
            self.connection.close()
        if answer.status != 200:
            raise RuntimeError(f"HTTP {answer.status}: {data[:200]!r}")
        return data


def http_generate(target: Target, model: str, max_tokens: int) -> Worker:
    """HTTP generate on a keep-alive connection (the lab model's production interface)."""
    session = HttpSession(target)
    body = json.dumps({"text_input": PROMPT, "sampling_param_max_tokens": max_tokens}).encode()

    def call() -> None:
        if b"text_output" not in session.post(f"/v2/models/{model}/generate", body):
            raise RuntimeError("generate answered without text_output")

    return call


def http_echo(target: Target, model: str, session: HttpSession | None = None) -> Worker:
    """HTTP/JSON infer of the echo model; the answer must carry the payload back."""
    session = session or HttpSession(target)
    body = json.dumps(
        {"inputs": [{"name": "INPUT", "shape": [1], "datatype": "BYTES", "data": [ECHO_PAYLOAD.decode()]}]}
    ).encode()

    def call() -> None:
        answer = json.loads(session.post(f"/v2/models/{model}/infer", body))
        if answer["outputs"][0]["data"] != [ECHO_PAYLOAD.decode()]:
            raise RuntimeError(f"echo answered {answer['outputs'][0]['data']!r}")

    return call


def grpc_stream(target: Target, model: str, max_tokens: int) -> Worker:
    """One gRPC stream; each call sends a request and waits for its final response (decoupled model)."""
    client = target.grpc_client()
    results: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    inputs = generate_inputs(grpcclient, PROMPT, max_tokens)

    def call() -> None:
        client.async_stream_infer(model, inputs)
        result, error = results.get(timeout=60)
        if error is not None or result.as_numpy("text_output") is None:
            raise RuntimeError(f"gRPC stream: {error}")

    return call


def grpc_echo(target: Target, model: str) -> Worker:
    """Unary gRPC infer of the echo model; the answer must carry the payload back."""
    client = target.grpc_client()
    data = grpcclient.InferInput("INPUT", [1], "BYTES")
    data.set_data_from_numpy(np.array([ECHO_PAYLOAD], dtype=np.object_))

    def call() -> None:
        output = client.infer(model, [data]).as_numpy("OUTPUT")
        if output is None or output[0] != ECHO_PAYLOAD:
            raise RuntimeError(f"gRPC echo answered {output!r}")

    return call


def measure(make_worker: Callable[[], Worker], concurrency: int, total: int) -> Figures:
    """Run ``total`` requests over ``concurrency`` workers, each warmed up by one request first."""
    workers = [make_worker() for _ in range(concurrency)]
    for call in workers:
        call()
    latencies: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    per_worker = max(1, total // concurrency)

    def run(call: Worker) -> None:
        mine = []
        try:
            for _ in range(per_worker):
                start = time.perf_counter()
                call()
                mine.append(time.perf_counter() - start)
        except Exception as exc:  # noqa: BLE001 (reported after the threads are joined)
            errors.append(exc)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=run, args=(call,)) for call in workers]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{len(errors)} of {concurrency} workers failed; first: {errors[0]}")
    latencies.sort()
    return Figures(
        requests=len(latencies),
        seconds=elapsed,
        rps=len(latencies) / elapsed,
        p50_ms=statistics.median(latencies) * 1000,
        p99_ms=latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
    )
