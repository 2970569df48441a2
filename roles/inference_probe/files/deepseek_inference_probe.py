"""deepseek.cluster inference probe: a real inference per scrape, exported for Prometheus.

Multi-target, as blackbox_exporter is: Prometheus scrapes ``/probe?target=<host:port>&module=<name>`` (and
``&node=<name>`` for the modules that pin one inference node), so its scrape interval sets the cadence. Each
scrape sends one greedy request for the model through the mutual-TLS proxy, with the probe's own client
certificate, over HTTP (Triton's generate / generate_stream endpoints) or gRPC (ModelStreamInfer, or a unary
ModelInfer when the module does not stream), and answers with gauges:

  deepseek_probe_success                      1 when the whole check passed
  deepseek_probe_duration_seconds             wall time of the check
  deepseek_probe_time_to_first_token_seconds  first response carrying text (streaming modules)
  deepseek_probe_answer_well_formed           text, and a final response with a finish reason (only when an
                                              answer came)
  deepseek_probe_golden_match                 the text equals the module's golden answer (only when set)
  deepseek_probe_fallback                     the proxy answered from its fallback pool (HTTP: header)

A check never outlives its deadline: the scrape's own timeout (Prometheus sends
X-Prometheus-Scrape-Timeout-Seconds) less a margin, or the module's timeout if smaller. A target that does not
answer in time yields success 0 at the deadline; the abandoned request ends by its own socket/gRPC deadline,
and a second check of the same module and target is refused (success 0) while one is still running, so a
hanging target never piles up threads. ``/metrics`` carries the exporter's own counters.

The configuration (JSON, written by the deepseek.cluster.inference_probe role) names the modules, the client
certificate, its key, the CA, and the proxy's headers.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LOG = logging.getLogger("deepseek-inference-probe")
MARGIN_S = 0.5  # answer this much before Prometheus gives up on the scrape
DEFAULT_SCRAPE_TIMEOUT_S = 10.0
PROTOCOLS = ("http", "grpc")
ROUTES = ("pool", "node")


class ProbeError(Exception):
    """A check that failed, with the reason the exporter logs."""


@dataclass(frozen=True)
class Module:
    """How one kind of check is made (one entry of the configuration's ``modules``)."""

    name: str
    protocol: str = "http"
    stream: bool = True
    route: str = "pool"
    model: str = "deepseek"
    prompt: str = "Answer with one word: what colour is the sky on a clear day?"
    max_tokens: int = 8
    timeout_seconds: float = 20.0
    golden: str = ""

    @classmethod
    def from_config(cls, name: str, raw: dict[str, Any]) -> Module:
        """A module from its configuration entry; unknown keys and bad values raise ValueError."""
        known = set(cls.__dataclass_fields__) - {"name"}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"module {name}: unknown keys {sorted(unknown)} (allowed: {sorted(known)})")
        module = cls(name=name, **raw)
        if module.protocol not in PROTOCOLS:
            raise ValueError(f"module {name}: protocol must be one of {PROTOCOLS}, got {module.protocol!r}")
        if module.route not in ROUTES:
            raise ValueError(f"module {name}: route must be one of {ROUTES}, got {module.route!r}")
        if module.max_tokens < 1 or module.timeout_seconds <= 0:
            raise ValueError(f"module {name}: max_tokens >= 1 and timeout_seconds > 0 are required")
        return module

    def request(self) -> dict[str, Any]:
        """The llmapi request tensors: greedy, generated text only, with the finish reason."""
        values: dict[str, Any] = {
            "text_input": self.prompt,
            "sampling_param_max_tokens": self.max_tokens,
            "sampling_param_temperature": 0.0,
            "sampling_param_exclude_input_from_output": True,
            "return_finish_reason": True,
        }
        if self.stream:
            values["streaming"] = True
        return values


@dataclass(frozen=True)
class Config:
    """The exporter's configuration."""

    modules: dict[str, Module]
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    node_header: str = "deepseek-node"
    fallback_header: str = "deepseek-fallback"
    tls: bool = True  # false only to probe an unproxied server in tests

    @classmethod
    def load(cls, path: str) -> Config:
        """Read the JSON configuration; unknown module keys or bad values raise ValueError."""
        with open(path, encoding="utf-8") as handle:
            raw = json.load(handle)
        modules = {name: Module.from_config(name, entry) for name, entry in raw.get("modules", {}).items()}
        if not modules:
            raise ValueError(f"{path}: no modules")
        return cls(
            modules=modules,
            ca_file=raw.get("ca_file", ""),
            cert_file=raw.get("cert_file", ""),
            key_file=raw.get("key_file", ""),
            node_header=raw.get("node_header", "deepseek-node"),
            fallback_header=raw.get("fallback_header", "deepseek-fallback"),
            tls=bool(raw.get("tls", True)),
        )


@dataclass
class Result:
    """What one check found."""

    success: bool = False
    duration: float = 0.0
    first_token: float | None = None
    well_formed: bool = False
    text: str = ""
    fallback: bool | None = None
    golden_match: bool | None = None
    reason: str = ""
    responses: int = 0
    finish_reason: str = ""


def split_target(target: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` into host and port; ValueError when there is no port."""
    if target.startswith("["):
        host, rest = target[1:].partition("]")[::2]
        port = rest.lstrip(":")
    else:
        host, port = target.rpartition(":")[::2]
    if not host or not port.isdigit():
        raise ValueError(f"target must be host:port, got {target!r}")
    return host, int(port)


def tls_context(config: Config) -> ssl.SSLContext:
    """TLS 1.3 client context with the probe's certificate, trusting only the deployment's CA."""
    context = ssl.create_default_context(cafile=config.ca_file or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    if config.cert_file:
        context.load_cert_chain(config.cert_file, config.key_file or None)
    return context


def judge(result: Result, module: Module) -> Result:
    """Well formed: text came and the last response says why it ended; success also needs the golden text."""
    result.well_formed = bool(result.text.strip()) and result.finish_reason in ("length", "stop")
    if module.golden:
        result.golden_match = result.text == module.golden
    result.success = result.well_formed and result.golden_match is not False
    if not result.success and not result.reason:
        if not result.well_formed:
            result.reason = f"malformed answer (finish_reason {result.finish_reason!r}, {len(result.text)} chars)"
        else:
            result.reason = "answer differs from the golden answer"
    return result


def _http_request(
    config: Config, module: Module, target: str, node: str, deadline: float
) -> tuple[http.client.HTTPResponse, http.client.HTTPConnection]:
    """POST the module's request to generate (or generate_stream); the open response."""
    host, port = split_target(target)
    timeout = max(0.1, deadline - time.monotonic())
    if config.tls:
        connection: http.client.HTTPConnection = http.client.HTTPSConnection(
            host, port, timeout=timeout, context=tls_context(config)
        )
    else:
        connection = http.client.HTTPConnection(host, port, timeout=timeout)
    endpoint = "generate_stream" if module.stream else "generate"
    body = json.dumps(module.request()).encode()
    headers = {"Content-Type": "application/json", "Content-Length": str(len(body))}
    if node:
        headers[config.node_header] = node
    connection.request("POST", f"/v2/models/{module.model}/{endpoint}", body=body, headers=headers)
    return connection.getresponse(), connection


def _sse_events(response: http.client.HTTPResponse, deadline: float) -> Iterator[dict[str, Any]]:
    """The JSON objects of a server-sent event stream (``data: {...}`` lines), until it ends or the deadline."""
    while True:
        if time.monotonic() > deadline:
            raise ProbeError("deadline passed while the stream was still open")
        line = response.readline()
        if not line:
            return
        line = line.strip()
        if line.startswith(b"data:"):
            yield json.loads(line[5:].strip() or b"{}")


def check_http(config: Config, module: Module, target: str, node: str, deadline: float) -> Result:
    """One request over HTTPS: generate (one JSON answer) or generate_stream (events)."""
    result = Result()
    start = time.monotonic()
    response, connection = _http_request(config, module, target, node, deadline)
    try:
        fallback = response.getheader(config.fallback_header)
        result.fallback = bool(fallback)
        if response.status != 200:
            detail = response.read(512).decode(errors="replace")
            raise ProbeError(f"HTTP {response.status}: {detail.strip()}")
        if not module.stream:
            answer = json.loads(response.read())
            result.responses = 1
            result.text = str(answer.get("text_output", ""))
            result.finish_reason = str(answer.get("finish_reason", ""))
            return result
        for event in _sse_events(response, deadline):
            if "error" in event:
                raise ProbeError(f"stream error: {event['error']}")
            result.responses += 1
            text = str(event.get("text_output", ""))
            if text and result.first_token is None:
                result.first_token = time.monotonic() - start
            # llmapi streams the cumulative text: the last response holds all of it.
            result.text = text or result.text
            result.finish_reason = str(event.get("finish_reason", result.finish_reason))
        return result
    finally:
        connection.close()


def check_grpc(config: Config, module: Module, target: str, node: str, deadline: float) -> Result:
    """One request over gRPC with TLS: a stream (ModelStreamInfer) or a unary ModelInfer."""
    import queue

    import numpy as np
    import tritonclient.grpc as grpcclient

    result = Result()
    start = time.monotonic()
    headers = {config.node_header: node} if node else None
    # tritonclient reads the three files itself.
    client = grpcclient.InferenceServerClient(
        target,
        ssl=config.tls,
        root_certificates=config.ca_file or None,
        private_key=config.key_file or None,
        certificate_chain=config.cert_file or None,
    )
    inputs = []
    for name, value in module.request().items():
        if isinstance(value, bool):
            array, dtype = np.array([value]), "BOOL"
        elif isinstance(value, int):
            array, dtype = np.array([value], dtype=np.int32), "INT32"
        elif isinstance(value, float):
            array, dtype = np.array([value], dtype=np.float32), "FP32"
        else:
            array, dtype = np.array([str(value).encode()], dtype=np.object_), "BYTES"
        tensor = grpcclient.InferInput(name, list(array.shape), dtype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)

    def outputs(answer: grpcclient.InferResult) -> dict[str, str]:
        values = {}
        for output in answer.get_response().outputs:
            item = np.asarray(answer.as_numpy(output.name)).reshape(-1)[0]
            values[output.name] = item.decode() if isinstance(item, bytes) else str(item)
        return values

    try:
        if not module.stream:
            answer = client.infer(
                module.model,
                inputs,
                headers=headers,
                client_timeout=max(0.1, deadline - time.monotonic()),
            )
            values = outputs(answer)
            result.responses = 1
            result.text = values.get("text_output", "")
            result.finish_reason = values.get("finish_reason", "")
            return result
        answers: queue.Queue = queue.Queue()
        client.start_stream(callback=lambda result, error: answers.put((result, error)), headers=headers)
        final = False
        try:
            client.async_stream_infer(
                module.model, inputs, request_id=uuid.uuid4().hex, enable_empty_final_response=True
            )
            while not final:
                try:
                    answer, error = answers.get(timeout=max(0.05, deadline - time.monotonic()))
                except queue.Empty as exc:
                    raise ProbeError("deadline passed while the stream was still open") from exc
                if error is not None:
                    raise ProbeError(f"gRPC error: {error}")
                values = outputs(answer)
                final = answer.get_response().parameters["triton_final_response"].bool_param
                result.responses += 1
                text = values.get("text_output", "")
                if text and result.first_token is None:
                    result.first_token = time.monotonic() - start
                result.text = text or result.text
                result.finish_reason = values.get("finish_reason", result.finish_reason)
        finally:
            # Cancel only a request still in flight (a cancellation after the final response can hold a
            # decoupled model of Triton 2.51 from unloading).
            client.stop_stream(cancel_requests=not final)
        return result
    finally:
        client.close()


CHECKS = {"http": check_http, "grpc": check_grpc}


class Prober:
    """Runs checks with deadlines; at most one running check per module, target and node."""

    def __init__(self, config: Config, workers: int = 256) -> None:
        """A pool of worker threads and the exporter's own counters.

        At most one check runs per module, target and node, so the threads in use never outnumber the scrape
        targets; the pool must not be smaller than that. A small pool (16) let the checks hanging behind one sick
        proxy (2 pool + 2 per node of its site, each until its deadline) take every worker, and the healthy
        site's checks then waited in the queue until their own deadline and were reported failed.
        """
        self.config = config
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="check")
        self.running: set[tuple[str, str, str]] = set()
        self.lock = threading.Lock()
        self.registry = CollectorRegistry()
        self.checks = Counter(
            "deepseek_probe_checks",
            "Checks made, by module and result (success, failure, timeout, busy).",
            ["module", "result"],
            registry=self.registry,
        )

    def probe(self, module: Module, target: str, node: str, budget: float) -> Result:
        """One check within ``budget`` seconds; a late or refused check is a failure, never a wait."""
        key = (module.name, target, node)
        start = time.monotonic()
        deadline = start + max(0.1, min(budget, module.timeout_seconds))
        with self.lock:
            if key in self.running:
                self.checks.labels(module.name, "busy").inc()
                return Result(reason="the previous check of this target has not ended")
            self.running.add(key)
        future = self.pool.submit(self._run, module, target, node, deadline, key)
        try:
            result = future.result(timeout=max(0.05, deadline - time.monotonic()))
        except FutureTimeout:
            result = Result(reason=f"no answer within {deadline - start:.1f} s")
            self.checks.labels(module.name, "timeout").inc()
        else:
            self.checks.labels(module.name, "success" if result.success else "failure").inc()
        result.duration = time.monotonic() - start
        return result

    def _run(self, module: Module, target: str, node: str, deadline: float, key: tuple[str, str, str]) -> Result:
        try:
            return judge(CHECKS[module.protocol](self.config, module, target, node, deadline), module)
        except (ProbeError, OSError, ssl.SSLError, http.client.HTTPException, ValueError) as exc:
            return Result(reason=str(exc) or type(exc).__name__)
        except Exception as exc:  # noqa: BLE001 - tritonclient raises its own types; any failure is a result
            return Result(reason=f"{type(exc).__name__}: {exc}")
        finally:
            with self.lock:
                self.running.discard(key)


def exposition(result: Result, module: Module) -> bytes:
    """The probe's answer to one scrape, in Prometheus text format."""
    registry = CollectorRegistry()

    def gauge(name: str, doc: str, value: float) -> None:
        Gauge(name, doc, registry=registry).set(value)

    gauge("deepseek_probe_success", "Whether the inference check passed.", float(result.success))
    gauge("deepseek_probe_duration_seconds", "How long the inference check took.", result.duration)
    if result.responses > 0:  # no answer at all is a failure, not a malformed answer
        gauge(
            "deepseek_probe_answer_well_formed", "Whether the answer had text and a finish reason.", result.well_formed
        )
    if module.stream and result.first_token is not None:
        gauge("deepseek_probe_time_to_first_token_seconds", "Time to the first response with text.", result.first_token)
    if result.golden_match is not None:
        gauge("deepseek_probe_golden_match", "Whether the answer equals the golden answer.", result.golden_match)
    if result.fallback is not None:
        gauge("deepseek_probe_fallback", "Whether the proxy answered from its fallback pool.", result.fallback)
    return generate_latest(registry)


class Handler(BaseHTTPRequestHandler):
    """/probe, /metrics and / ."""

    prober: Prober
    server_version = "deepseek-inference-probe"

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        """Route a GET."""
        url = urlparse(self.path)
        if url.path == "/probe":
            self._probe(parse_qs(url.query))
        elif url.path == "/metrics":
            self._send(200, generate_latest(self.prober.registry), CONTENT_TYPE_LATEST)
        elif url.path == "/":
            names = ", ".join(sorted(self.prober.config.modules))
            self._send(200, f"deepseek inference probe: /probe?target=&module= ({names}), /metrics\n".encode())
        else:
            self._send(404, b"not found\n")

    def _probe(self, query: dict[str, list[str]]) -> None:
        target = (query.get("target") or [""])[0]
        name = (query.get("module") or [""])[0]
        node = (query.get("node") or [""])[0]
        module = self.prober.config.modules.get(name)
        if module is None:
            self._send(400, f"unknown module {name!r}\n".encode())
            return
        try:
            split_target(target)
        except ValueError as exc:
            self._send(400, f"{exc}\n".encode())
            return
        if module.route == "node" and not node:
            self._send(400, f"module {name} pins one node: give node=<name>\n".encode())
            return
        scrape_timeout = self.headers.get("X-Prometheus-Scrape-Timeout-Seconds", "")
        try:
            budget = float(scrape_timeout) - MARGIN_S
        except ValueError:
            budget = DEFAULT_SCRAPE_TIMEOUT_S - MARGIN_S
        result = self.prober.probe(module, target, node if module.route == "node" else "", budget)
        if not result.success:
            LOG.warning("module=%s target=%s node=%s failed: %s", name, target, node, result.reason)
        self._send(200, exposition(result, module), CONTENT_TYPE_LATEST)

    def _send(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's signature
        """Requests are not logged (Prometheus scrapes every few seconds); failures are."""


def serve(config: Config, address: str, port: int) -> None:
    """Serve until stopped."""
    Handler.prober = Prober(config)
    family = socket.AF_INET6 if ":" in address else socket.AF_INET

    class Server(ThreadingHTTPServer):
        address_family = family
        daemon_threads = True

    with Server((address, port), Handler) as server:
        LOG.info("listening on %s:%d, modules: %s", address, port, ", ".join(sorted(config.modules)))
        server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    """Command line: --config FILE --listen ADDRESS:PORT."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--listen", default="127.0.0.1:9470")
    parser.add_argument("--check-config", action="store_true", help="read the configuration and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    config = Config.load(args.config)
    if args.check_config:
        print(f"configuration ok: modules {', '.join(sorted(config.modules))}")
        return 0
    host, port = split_target(args.listen)
    serve(config, host, port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
