"""Triton python-backend model serving the lab's stand-in (tiny_moe.TinyMoE) with DeepSeek's interface.

The request and response tensors are those of TensorRT-LLM's ``llmapi`` model, which serves DeepSeek-V3/R1
in production: ``text_input`` (required), ``sampling_param_max_tokens`` and ``streaming`` (optional) in,
``text_output`` out. Decoupled (the production default) answers through the response sender: one response
per token when ``streaming`` is true, else one response with the whole text. Not decoupled, it answers one
response per request and refuses ``streaming`` as the production model does.
"""

from __future__ import annotations

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils
from tiny_moe import MoEConfig, TinyMoE, detokenize


def _parameter(config: dict, name: str, default: int) -> int:
    """An integer model parameter from config.pbtxt (``parameters { key: ... string_value: ... }``)."""
    value = config.get("parameters", {}).get(name, {}).get("string_value", "")
    return int(value) if value else default


def _string_parameter(config: dict, name: str) -> str:
    """A string model parameter from config.pbtxt, empty when unset."""
    return config.get("parameters", {}).get(name, {}).get("string_value", "")


def _optional(request: pb_utils.InferenceRequest, name: str, default: object) -> object:
    """The first element of an optional input, or ``default`` when the client did not send it."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return default if tensor is None else tensor.as_numpy().reshape(-1)[0].item()


def _text(text: str) -> pb_utils.InferenceResponse:
    """A response carrying ``text`` as a one-element ``text_output``."""
    output = pb_utils.Tensor("text_output", np.array([text.encode("utf-8")], dtype=np.object_))
    return pb_utils.InferenceResponse(output_tensors=[output])


class TritonPythonModel:
    """The lab model: deterministic text from a routed mixture of experts, token by token."""

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

    def _decode(self, request: pb_utils.InferenceRequest) -> tuple[str, int, bool]:
        """Prompt, token budget and streaming flag of one request; bad values raise ValueError."""
        prompt = pb_utils.get_input_tensor_by_name(request, "text_input").as_numpy().reshape(-1)[0]
        prompt = prompt.decode("utf-8") if isinstance(prompt, bytes) else str(prompt)
        max_tokens = int(_optional(request, "sampling_param_max_tokens", self.default_max_tokens))
        if not 0 <= max_tokens <= self.max_tokens_limit:
            raise ValueError(f"sampling_param_max_tokens must be between 0 and {self.max_tokens_limit}")
        streaming = bool(_optional(request, "streaming", False))
        if streaming and not self.decoupled:
            raise ValueError("Streaming is only supported in decoupled mode.")
        return prompt, max_tokens, streaming

    def execute(self, requests: list) -> list | None:
        """Answer every request: a list of responses, or None when decoupled (sent by the senders)."""
        responses = []
        for request in requests:
            sender = request.get_response_sender() if self.decoupled else None
            try:
                prompt, max_tokens, streaming = self._decode(request)
            except (ValueError, UnicodeDecodeError) as exc:
                error = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc)))
                if sender is None:
                    responses.append(error)
                else:
                    sender.send(error, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                continue
            steps = self.moe.generate(prompt, max_tokens)
            if sender is None:
                responses.append(_text(detokenize(steps)))
            elif streaming:
                for step in steps:
                    sender.send(_text(detokenize([step])))
                sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            else:
                sender.send(_text(detokenize(steps)), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None if self.decoupled else responses
