"""A small client for the llmapi contract: the request tensors, and the responses as the contract describes them.

Two transports: gRPC (tritonclient; a decoupled model is asked over a bidirectional stream with
``enable_empty_final_response`` so that every response says whether it is the final one, a model that is
not decoupled with one unary call) and HTTP (Triton's ``generate`` endpoint, one JSON answer), each
optionally over TLS with a client certificate (through the mutual-TLS proxy).
"""

from __future__ import annotations

import json
import os
import queue
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

# Request inputs by type (TensorRT-LLM llmapi config.pbtxt); anything else is a string tensor.
BOOLS = {
    "streaming",
    "sampling_param_exclude_input_from_output",
    "sampling_param_return_perf_metrics",
    "return_finish_reason",
    "return_stop_reason",
    "return_cumulative_logprob",
    "stop",
}
INT32 = {"sampling_param_best_of", "sampling_param_top_k", "sampling_param_max_tokens"}
FP32 = {
    "sampling_param_temperature",
    "sampling_param_top_p",
    "sampling_param_frequency_penalty",
    "sampling_param_presence_penalty",
}
UINT64 = {"sampling_param_seed", "lora_id"}
WAIT_S = 120.0


@dataclass
class Target:
    """Where the model is served and how to reach it (from CONFORMANCE_* environment variables)."""

    model: str
    http_url: str = ""
    grpc_url: str = ""
    ca: str = ""
    cert: str = ""
    key: str = ""
    decoupled: bool | None = None
    long_max_tokens: int = 1024

    @classmethod
    def from_environment(cls, env: dict[str, str] | None = None) -> Target:
        """CONFORMANCE_HTTP_URL, _GRPC_URL, _MODEL, _CA, _CERT, _KEY, _DECOUPLED, _LONG_MAX_TOKENS."""
        env = dict(os.environ if env is None else env)
        decoupled = env.get("CONFORMANCE_DECOUPLED", "")
        return cls(
            model=env.get("CONFORMANCE_MODEL", "deepseek"),
            http_url=env.get("CONFORMANCE_HTTP_URL", "").rstrip("/"),
            grpc_url=env.get("CONFORMANCE_GRPC_URL", ""),
            ca=env.get("CONFORMANCE_CA", ""),
            cert=env.get("CONFORMANCE_CERT", ""),
            key=env.get("CONFORMANCE_KEY", ""),
            decoupled=None if decoupled == "" else decoupled.lower() in ("1", "true", "yes"),
            long_max_tokens=int(env.get("CONFORMANCE_LONG_MAX_TOKENS", "1024")),
        )

    def ssl_context(self) -> ssl.SSLContext | None:
        """The HTTPS client context: the CA (else the system's), the client certificate when given."""
        if not self.http_url.startswith("https://"):
            return None
        context = ssl.create_default_context(cafile=self.ca or None)
        if self.cert:
            context.load_cert_chain(self.cert, self.key or None)
        return context

    def grpc_client(self) -> grpcclient.InferenceServerClient:
        """A gRPC client; TLS (with the client certificate when given) when a CA is given."""
        if not self.ca:
            return grpcclient.InferenceServerClient(self.grpc_url)
        return grpcclient.InferenceServerClient(
            self.grpc_url,
            ssl=True,
            root_certificates=self.ca,
            private_key=self.key or None,
            certificate_chain=self.cert or None,
        )

    def http_json(self, path: str, body: dict | None = None) -> dict:
        """GET (or POST ``body`` to) ``path`` on the HTTP endpoint; the JSON answer, or InferenceServerException."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(  # noqa: S310 (the configured endpoint)
            self.http_url + path, data=data, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=WAIT_S, context=self.ssl_context()) as answer:  # noqa: S310
                return json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            text = exc.read().decode(errors="replace")
            try:
                message = json.loads(text).get("error", text)
            except ValueError:
                message = text
            raise InferenceServerException(msg=message, status=str(exc.code)) from exc

    def model_config(self) -> dict:
        """The served model's configuration as JSON (HTTP config endpoint, else gRPC ModelConfig)."""
        if self.http_url:
            return self.http_json(f"/v2/models/{self.model}/config")
        client = self.grpc_client()
        try:
            return client.get_model_config(self.model, as_json=True)["config"]
        finally:
            client.close()


@dataclass
class Response:
    """One response: its outputs (first element of each, strings decoded) and whether it was the final one."""

    outputs: dict[str, Any] = field(default_factory=dict)
    final: bool = True
    request_id: str = ""

    @property
    def text(self) -> str:
        """``text_output``."""
        return self.outputs["text_output"]


def _first(value: Any) -> Any:
    """The first element of an output, a string when it is bytes."""
    item = np.asarray(value).reshape(-1)[0] if np.ndim(value) else value
    if isinstance(item, (bytes, np.bytes_)):
        return item.decode("utf-8")
    return item.item() if hasattr(item, "item") else item


def infer_inputs(module: Any, values: dict[str, Any]) -> list:
    """InferInput tensors for ``values`` (name -> value or list of strings), typed as the contract declares."""
    inputs = []
    for name, value in values.items():
        if name in BOOLS:
            array, dtype = np.array([bool(value)]), "BOOL"
        elif name in INT32:
            array, dtype = np.array([value], dtype=np.int32), "INT32"
        elif name in FP32:
            array, dtype = np.array([value], dtype=np.float32), "FP32"
        elif name in UINT64:
            array, dtype = np.array([value], dtype=np.uint64), "UINT64"
        else:
            items = value if isinstance(value, list) else [value]
            array, dtype = np.array([str(v).encode("utf-8") for v in items], dtype=np.object_), "BYTES"
        tensor = module.InferInput(name, list(array.shape), dtype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


class Stream:
    """One gRPC bidirectional stream: requests go out, responses (or errors) are collected as they come."""

    def __init__(self, target: Target) -> None:
        """Open the stream."""
        self.target = target
        self.client = target.grpc_client()
        self.results: queue.Queue = queue.Queue()
        self.pending = 0  # requests sent whose final response (or error) has not been read yet
        self.client.start_stream(callback=lambda result, error: self.results.put((result, error)))

    def send(self, values: dict[str, Any], request_id: str = "") -> None:
        """Send one request on the stream."""
        self.client.async_stream_infer(
            self.target.model,
            infer_inputs(grpcclient, values),
            request_id=request_id,
            enable_empty_final_response=True,
        )
        self.pending += 1

    def next(self, timeout: float = WAIT_S) -> Response | InferenceServerException:
        """The next response on the stream, or the error that came instead."""
        result, error = self.results.get(timeout=timeout)
        if error is not None:
            self.pending -= 1
            return error
        response = result.get_response()
        outputs = {o.name: _first(result.as_numpy(o.name)) for o in response.outputs}
        final = response.parameters["triton_final_response"].bool_param
        self.pending -= final
        return Response(outputs, final, response.id)

    def close(self) -> None:
        """Close the stream and the client, cancelling only requests still in flight.

        A stream whose requests are all answered is closed without cancelling: Triton 2.51 (the lab's) can
        keep a decoupled python model from unloading, until its exit timeout, after a cancellation that
        arrives once the final response is out (seen with the lab model before and after it followed the
        llmapi contract).
        """
        self.client.stop_stream(cancel_requests=self.pending > 0)
        self.client.close()


def ask(target: Target, values: dict[str, Any], decoupled: bool, request_id: str = "") -> list[Response]:
    """Every response to one request, in order, up to and including the final one; an error raises.

    gRPC when configured (stream when decoupled, unary call when not), else HTTP generate (one answer).
    """
    if not target.grpc_url:
        return [Response(target.http_json(f"/v2/models/{target.model}/generate", values))]
    if not decoupled:
        client = target.grpc_client()
        try:
            result = client.infer(
                target.model, infer_inputs(grpcclient, values), request_id=request_id, client_timeout=WAIT_S
            )
            return [Response({o.name: _first(result.as_numpy(o.name)) for o in result.get_response().outputs})]
        finally:
            client.close()
    stream = Stream(target)
    try:
        stream.send(values, request_id)
        responses: list[Response] = []
        deadline = time.monotonic() + WAIT_S
        while not responses or not responses[-1].final:
            answer = stream.next(max(0.1, deadline - time.monotonic()))
            if isinstance(answer, InferenceServerException):
                raise answer
            responses.append(answer)
        return responses
    finally:
        stream.close()


def answer(target: Target, values: dict[str, Any], decoupled: bool) -> Response:
    """The one (final) response of a request that is not streamed."""
    responses = ask(target, values, decoupled)
    assert len(responses) == 1, f"a request that is not streamed got {len(responses)} responses"
    assert responses[0].final, "the only response of a request that is not streamed is not marked final"
    return responses[0]
