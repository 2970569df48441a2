"""Triton python-backend model serving the lab's stand-in (tiny_moe.TinyMoE) with TensorRT-LLM's llmapi contract.

Production serves DeepSeek-V3/R1 with TensorRT-LLM's ``llmapi`` python model (NVIDIA/TensorRT-LLM
``triton_backend/all_models/llmapi/tensorrt_llm/``: ``config.pbtxt`` at 0a71057313ec0626527e164a8fc0205c5822e2f5,
``1/model.py`` at b35ac1b64368513d215c57d2ed01d62d910df8da, ``1/helpers.py`` at
0df60f9ad779c4dc4f55da07e08b969fc4684e56). This model is written from what those files do, not copied:

- every tensor of the interface is declared (plugins/module_utils/llmapi_interface.py records them);
- streaming (decoupled models only, else "Streaming is only supported in decoupled mode."): one response per
  generated token, each ``text_output`` the whole text so far, the final flag on the last of them (no empty
  final response); not streaming: one response with the whole text (final flag when decoupled);
- not streaming, ``text_output`` starts with the prompt unless ``sampling_param_exclude_input_from_output`` is
  true; streaming, it never does (TensorRT-LLM's executor leaves the prompt's tokens out of streamed results
  whatever that flag says: ``LlmRequest::createResult``, cpp/tensorrt_llm/batch_manager/llmRequest.cpp);
- ``return_finish_reason`` / ``return_stop_reason`` / ``return_cumulative_logprob`` add ``finish_reason``
  (``length``, ``stop`` or ``cancelled``), ``stop_reason`` (the matched stop string, else ``None``) and
  ``cumulative_logprob``, each as a string tensor made with ``str()``, as upstream sends them;
- ``sampling_param_stop`` strings end the generation where the generated text contains one (the string
  itself is left out of the text);
- ``stop`` with a request id cancels that id's requests in flight on this instance and is answered with the
  error "Request cancelled by client" (CANCELLED); without an id, "A request id must be provided for
  request cancellation"; a request the client cancels (``is_cancelled()``) ends with that CANCELLED error;
- any other refusal is an error "Error generating request: <why>", with ``text_output`` "N/A".

Where the lab deviates (docs/roles/triton_server.md says why): perf metrics carry their declared dtypes
(upstream sends them with the text dtype), ``cumulative_logprob`` is a number (upstream's is ``None``: its
helpers.py never asks TensorRT-LLM for log-probabilities), a request stopped by ``stop`` ends with a final
response (its text so far, finish reason ``cancelled``) also when not streaming, and inputs the stand-in
cannot honour (``image_url``, ``lora_*``, ``sampling_param_best_of`` > 1) are refused by name.

Decoupled, each request runs in a thread of its own and checks for cancellation between tokens, so a
``stop`` request (which arrives in a later ``execute`` call) reaches a generation in progress.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import triton_python_backend_utils as pb_utils
from tiny_moe import MoEConfig, Sampling, Step, TinyMoE

STREAMING_NEEDS_DECOUPLED = "Streaming is only supported in decoupled mode."
CANCELLED = "Request cancelled by client"
NEEDS_REQUEST_ID = "A request id must be provided for request cancellation"
# Inputs of the interface that the stand-in cannot honour: refused, by name, when a request sets them.
UNSUPPORTED = ("image_url", "lora_id", "lora_name", "lora_path", "lora_ckpt_source")
# return_<x> input -> the output it asks for (string tensors, as upstream builds them with str()).
REQUESTED_OUTPUTS = {
    "return_finish_reason": "finish_reason",
    "return_stop_reason": "stop_reason",
    "return_cumulative_logprob": "cumulative_logprob",
}
# What sampling_param_return_perf_metrics adds. No KV cache, no speculative decoding: those are zero.
PERF_METRICS = (
    "kv_cache_reused_block",
    "kv_cache_missed_block",
    "kv_cache_alloc_new_blocks",
    "kv_cache_alloc_total_blocks",
    "kv_cache_hit_rate",
    "arrival_time_ns",
    "first_scheduled_time_ns",
    "first_token_time_ns",
    "last_token_time_ns",
    "acceptance_rate",
    "total_accepted_draft_tokens",
    "total_draft_tokens",
)
FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


class RequestError(ValueError):
    """A request the model refuses; the message says why."""


def _parameter(config: dict, name: str, default: int) -> int:
    """An integer model parameter from config.pbtxt (``parameters { key: ... string_value: ... }``)."""
    value = config.get("parameters", {}).get(name, {}).get("string_value", "")
    return int(value) if value else default


def _string_parameter(config: dict, name: str) -> str:
    """A string model parameter from config.pbtxt, empty when unset."""
    return config.get("parameters", {}).get(name, {}).get("string_value", "")


def _string(value: object) -> str:
    """A string tensor element as text."""
    return value.decode("utf-8") if isinstance(value, (bytes, np.bytes_)) else str(value)


def _scalar(request: pb_utils.InferenceRequest, name: str, default: object = None) -> object:
    """The one element of an optional input, or ``default`` when the request does not carry it."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return default
    array = tensor.as_numpy()
    if array.size != 1:
        raise RequestError(f"Expected a scalar tensor for tensor {name}")
    return array.reshape(-1)[0].item()


@dataclass
class Ask:
    """One generation request, decoded."""

    prompt: str
    max_tokens: int
    streaming: bool = False
    sampling: Sampling = field(default_factory=Sampling)
    stop: tuple[str, ...] = ()
    echo: bool = True
    outputs: tuple[str, ...] = ()
    perf_metrics: bool = False


@dataclass(eq=False)
class Generation:
    """One request's progress: the text so far, why it finished, when its tokens came."""

    ask: Ask
    arrival_ns: int
    cancel: threading.Event = field(default_factory=threading.Event)
    pieces: list[str] = field(default_factory=list)
    generated: str = ""
    logprob: float = 0.0
    finish_reason: str | None = None
    stop_reason: str | None = None
    scheduled_ns: int = 0
    first_token_ns: int = 0
    last_token_ns: int = 0

    def add(self, step: Step, now_ns: int) -> None:
        """Take one token: a stop string in the generated text ends it there; the last allowed token, length."""
        self.pieces.append(step.piece)
        self.logprob += step.logprob
        self.first_token_ns = self.first_token_ns or now_ns
        self.last_token_ns = now_ns
        text = "".join(self.pieces)
        found = [(text.find(stop), n, stop) for n, stop in enumerate(self.ask.stop) if stop in text]
        if found:
            index, _order, stop = min(found)
            self.generated, self.finish_reason, self.stop_reason = text[:index], "stop", stop
            return
        self.generated = text
        if len(self.pieces) >= self.ask.max_tokens:
            self.finish_reason = "length"

    @property
    def text(self) -> str:
        """``text_output``: the prompt (not streaming, unless excluded), then the generated text."""
        return self.ask.prompt + self.generated if self.ask.echo else self.generated

    def perf_metrics(self) -> dict[str, float]:
        """The values of PERF_METRICS (monotonic clock, ns)."""
        values = dict.fromkeys(PERF_METRICS, 0)
        values.update(
            arrival_time_ns=self.arrival_ns,
            first_scheduled_time_ns=self.scheduled_ns,
            first_token_time_ns=self.first_token_ns,
            last_token_time_ns=self.last_token_ns,
        )
        return values


class TritonPythonModel:
    """The lab model: TinyMoE's words behind the request/response contract of TensorRT-LLM's llmapi model."""

    def initialize(self, args: dict) -> None:
        """Load this version's weights (artifact) or draw them from the seed; read the transaction policy.

        With the ``artifact_dir`` parameter set, version N loads ``<artifact_dir>/N/weights.npz``, the
        artifact the role fetched, verified and published for that version.
        """
        config = json.loads(args["model_config"])
        self.default_max_tokens = _parameter(config, "default_max_tokens", 32)
        self.max_tokens_limit = _parameter(config, "max_tokens_limit", 1024)
        artifact_dir = _string_parameter(config, "artifact_dir")
        if artifact_dir:
            weights = os.path.join(artifact_dir, str(args["model_version"]), "weights.npz")
            self.moe = TinyMoE.load(weights)
        else:
            self.moe = TinyMoE(MoEConfig(seed=_parameter(config, "seed", MoEConfig.seed)))
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(config)
        self.dtypes = {o["name"]: pb_utils.triton_string_to_numpy(o["data_type"]) for o in config.get("output", [])}
        self.lock = threading.Lock()
        self.in_flight: dict[str, set[Generation]] = {}
        self.threads: set[threading.Thread] = set()

    def execute(self, requests: list) -> list | None:
        """Answer every request: a list of responses, or None when decoupled (each request's thread sends)."""
        if not self.decoupled:
            return [self._last(request, time.monotonic_ns()) for request in requests]
        for request in requests:
            thread = threading.Thread(
                target=self._send_all,
                args=(request, request.get_response_sender(), time.monotonic_ns()),
                daemon=True,
            )
            with self.lock:
                self.threads.add(thread)
            thread.start()
        return None

    def finalize(self) -> None:
        """Stop every generation in flight and wait (briefly) for their threads."""
        with self.lock:
            for generations in self.in_flight.values():
                for generation in generations:
                    generation.cancel.set()
            threads = list(self.threads)
        for thread in threads:
            thread.join(timeout=5)

    # Requests -----------------------------------------------------------------------------------------

    def _send_all(self, request: pb_utils.InferenceRequest, sender: object, arrival_ns: int) -> None:
        """Decoupled: send one request's responses as they come (thread body)."""
        final_sent = False
        try:
            for response, final in self._answer(request, arrival_ns):
                sender.send(response, flags=FINAL if final else 0)
                final_sent = final
        except Exception as exc:  # any failure is the client's error response, as upstream's
            pb_utils.Logger.log_error(f"lab model: error generating request: {exc}")
            if not final_sent:
                try:
                    sender.send(self._failure(exc), flags=FINAL)
                except Exception as again:  # the client may be gone
                    pb_utils.Logger.log_error(f"lab model: could not send the error: {again}")
        finally:
            with self.lock:
                self.threads.discard(threading.current_thread())

    def _last(self, request: pb_utils.InferenceRequest, arrival_ns: int) -> pb_utils.InferenceResponse:
        """Not decoupled: the one response of a request (streaming is refused, so there is only one)."""
        try:
            return list(self._answer(request, arrival_ns))[-1][0]
        except Exception as exc:  # any failure is the client's error response, as upstream's
            pb_utils.Logger.log_error(f"lab model: error generating request: {exc}")
            return self._failure(exc)

    def _answer(
        self, request: pb_utils.InferenceRequest, arrival_ns: int
    ) -> Iterator[tuple[pb_utils.InferenceResponse, bool]]:
        """The responses to one request, each with whether it is the final one."""
        try:
            stop = bool(_scalar(request, "stop", False))
            ask = None if stop else self._decode(request)
        except (RequestError, UnicodeDecodeError) as exc:
            yield self._failure(exc), True
            return
        request_id = request.request_id()
        if ask is None:
            yield self._stop(request_id), True
            return
        generation = Generation(ask, arrival_ns)
        self._track(request_id, generation, True)
        try:
            yield from self._generate(request, generation)
        finally:
            self._track(request_id, generation, False)

    def _decode(self, request: pb_utils.InferenceRequest) -> Ask:
        """A generation request's inputs, as TensorRT-LLM's helpers read them; bad values raise RequestError."""
        text = pb_utils.get_input_tensor_by_name(request, "text_input")
        if text is None:
            raise RequestError("text_input is missing from the request")
        prompts = text.as_numpy()
        if prompts.ndim > 1:
            raise RequestError("The current implementation only supports text_input being a 1D tensor.")
        if prompts.size == 0:
            raise RequestError("text_input is empty")
        unsupported = [name for name in UNSUPPORTED if pb_utils.get_input_tensor_by_name(request, name) is not None]
        if unsupported:
            raise RequestError(
                f"the lab model does not implement {', '.join(unsupported)} "
                "(declared for TensorRT-LLM's interface; the stand-in serves text only)"
            )
        max_tokens = int(_scalar(request, "sampling_param_max_tokens", self.default_max_tokens))
        if not 0 <= max_tokens <= self.max_tokens_limit:
            raise RequestError(f"sampling_param_max_tokens must be between 0 and {self.max_tokens_limit}")
        if int(_scalar(request, "sampling_param_best_of", 1)) != 1:
            raise RequestError("the lab model does not implement sampling_param_best_of other than 1")
        streaming = bool(_scalar(request, "streaming", False))
        if streaming and not self.decoupled:
            raise RequestError(STREAMING_NEEDS_DECOUPLED)
        stops = pb_utils.get_input_tensor_by_name(request, "sampling_param_stop")
        exclude_input = bool(_scalar(request, "sampling_param_exclude_input_from_output", False))
        return Ask(
            prompt=_string(prompts.reshape(-1)[0]),
            max_tokens=max_tokens,
            streaming=streaming,
            sampling=self._sampling(request),
            stop=tuple(s for s in (_string(v) for v in stops.as_numpy().reshape(-1)) if s) if stops is not None else (),
            # Streamed results never carry the prompt upstream, whatever exclude_input_from_output says.
            echo=not (exclude_input or streaming),
            outputs=tuple(out for flag, out in REQUESTED_OUTPUTS.items() if bool(_scalar(request, flag, False))),
            perf_metrics=bool(_scalar(request, "sampling_param_return_perf_metrics", False)),
        )

    @staticmethod
    def _sampling(request: pb_utils.InferenceRequest) -> Sampling:
        """Temperature, top-k, top-p, seed and penalties; out-of-range values raise RequestError."""
        temperature = _scalar(request, "sampling_param_temperature")
        top_k = int(_scalar(request, "sampling_param_top_k", 0))
        top_p = float(_scalar(request, "sampling_param_top_p", 0.0))
        seed = _scalar(request, "sampling_param_seed")
        if temperature is not None and not temperature >= 0:
            raise RequestError("sampling_param_temperature must be >= 0")
        if top_k < 0:
            raise RequestError("sampling_param_top_k must be >= 0")
        if not 0 <= top_p <= 1:
            raise RequestError("sampling_param_top_p must be between 0 and 1")
        return Sampling(
            temperature=None if temperature is None else float(temperature),
            top_k=top_k,
            top_p=top_p,
            seed=None if seed is None else int(seed),
            presence_penalty=float(_scalar(request, "sampling_param_presence_penalty", 0.0)),
            frequency_penalty=float(_scalar(request, "sampling_param_frequency_penalty", 0.0)),
        )

    def _generate(
        self, request: pb_utils.InferenceRequest, generation: Generation
    ) -> Iterator[tuple[pb_utils.InferenceResponse, bool]]:
        """Token by token: streamed responses, then the final one (or the client's cancellation)."""
        ask = generation.ask
        generation.scheduled_ns = time.monotonic_ns()
        steps = self.moe.stream(ask.prompt, ask.max_tokens, ask.sampling)
        if ask.max_tokens == 0:
            generation.finish_reason = "length"
        while generation.finish_reason is None:
            if generation.cancel.is_set():
                generation.finish_reason = "cancelled"
                break
            if request.is_cancelled():
                yield self._error(CANCELLED, pb_utils.TritonError.CANCELLED), True
                return
            step = next(steps, None)
            if step is None:  # the model gives max_tokens steps; the last one already set "length"
                generation.finish_reason = "length"
                break
            generation.add(step, time.monotonic_ns())
            if ask.streaming and generation.finish_reason is None:
                yield self._response(generation), False
        yield self._response(generation), True

    def _stop(self, request_id: str) -> pb_utils.InferenceResponse:
        """A ``stop`` request: cancel the generations of its request id; answered with CANCELLED."""
        if not request_id:
            return self._error(NEEDS_REQUEST_ID)
        with self.lock:
            for generation in self.in_flight.get(request_id, ()):
                generation.cancel.set()
        return self._error(CANCELLED, pb_utils.TritonError.CANCELLED)

    def _track(self, request_id: str, generation: Generation, running: bool) -> None:
        """Record (or forget) a generation under its request id, for ``stop`` requests."""
        if not request_id:
            return
        with self.lock:
            if running:
                self.in_flight.setdefault(request_id, set()).add(generation)
                return
            generations = self.in_flight.get(request_id, set())
            generations.discard(generation)
            if not generations:
                self.in_flight.pop(request_id, None)

    # Responses ----------------------------------------------------------------------------------------

    def _response(self, generation: Generation) -> pb_utils.InferenceResponse:
        """The text so far, plus the outputs the request asked for."""
        tensors = [pb_utils.Tensor("text_output", np.array([generation.text.encode("utf-8")], dtype=np.object_))]
        values = {
            "finish_reason": generation.finish_reason,
            "stop_reason": generation.stop_reason,
            "cumulative_logprob": generation.logprob,
        }
        for name in generation.ask.outputs:
            tensors.append(pb_utils.Tensor(name, np.array([str(values[name]).encode("utf-8")], dtype=np.object_)))
        if generation.ask.perf_metrics:
            for name, value in generation.perf_metrics().items():
                tensors.append(pb_utils.Tensor(name, np.array([value], dtype=self.dtypes.get(name, np.int64))))
        return pb_utils.InferenceResponse(output_tensors=tensors)

    @staticmethod
    def _error(message: str, code: object = None) -> pb_utils.InferenceResponse:
        """An error response (``code``: a TritonError code, else Triton's default)."""
        error = pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)
        return pb_utils.InferenceResponse(error=error)

    @staticmethod
    def _failure(exc: BaseException) -> pb_utils.InferenceResponse:
        """A refused or failed request, as upstream answers one: an error and ``text_output`` "N/A"."""
        output = pb_utils.Tensor("text_output", np.array([b"N/A"], dtype=np.object_))
        return pb_utils.InferenceResponse(
            output_tensors=[output], error=pb_utils.TritonError(f"Error generating request: {exc}")
        )
