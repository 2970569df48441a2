# Copyright: deepseek.cluster contributors
# Apache License 2.0 (see LICENSE)
"""The request and response tensors of TensorRT-LLM's llmapi Triton model, as recorded from upstream.

Recorded by hand from TensorRT-LLM ``triton_backend/all_models/llmapi/tensorrt_llm/config.pbtxt`` at commit
0a71057313ec0626527e164a8fc0205c5822e2f5 (the ``llmapi`` model that serves DeepSeek-V3/R1 on the PyTorch
backend), and from the same directory's ``1/helpers.py`` for what each input means:

- ``get_sampling_params_from_request`` maps ``sampling_param_<x>`` to ``SamplingParams(<x>)`` with defaults
  ``best_of=1``, ``exclude_input_from_output=False``, ``return_perf_metrics=False``; ``sampling_param_stop`` is a
  list of strings.
- ``get_output_config_from_request`` reads ``return_finish_reason``, ``return_stop_reason`` and
  ``return_cumulative_logprob`` (default false each).
- ``get_streaming_from_request`` reads ``streaming`` (default false).

The record is data, not a copy of the file: the role derives a production model's config.pbtxt from the
image's own file (so a newer image's tensors win); the lab model declares exactly these tensors, and the
tests check that both agree with this record.
"""

from __future__ import annotations

from typing import Any

SOURCE = (
    "TensorRT-LLM triton_backend/all_models/llmapi/tensorrt_llm/config.pbtxt @ 0a71057313ec0626527e164a8fc0205c5822e2f5"
)

# (name, data_type, dims, optional)
INPUTS: tuple[tuple[str, str, tuple[int, ...], bool], ...] = (
    ("text_input", "TYPE_STRING", (-1,), False),
    ("image_url", "TYPE_STRING", (-1,), True),
    ("streaming", "TYPE_BOOL", (1,), True),
    ("sampling_param_best_of", "TYPE_INT32", (1,), True),
    ("sampling_param_temperature", "TYPE_FP32", (1,), True),
    ("sampling_param_top_k", "TYPE_INT32", (1,), True),
    ("sampling_param_top_p", "TYPE_FP32", (1,), True),
    ("sampling_param_frequency_penalty", "TYPE_FP32", (1,), True),
    ("sampling_param_presence_penalty", "TYPE_FP32", (1,), True),
    ("sampling_param_max_tokens", "TYPE_INT32", (1,), True),
    ("sampling_param_stop", "TYPE_STRING", (-1,), True),
    ("sampling_param_seed", "TYPE_UINT64", (1,), True),
    ("sampling_param_exclude_input_from_output", "TYPE_BOOL", (1,), True),
    ("sampling_param_return_perf_metrics", "TYPE_BOOL", (1,), True),
    ("return_finish_reason", "TYPE_BOOL", (1,), True),
    ("return_stop_reason", "TYPE_BOOL", (1,), True),
    ("return_cumulative_logprob", "TYPE_BOOL", (1,), True),
    ("stop", "TYPE_BOOL", (1,), True),
    ("lora_id", "TYPE_UINT64", (1,), True),
    ("lora_name", "TYPE_STRING", (1,), True),
    ("lora_path", "TYPE_STRING", (1,), True),
    ("lora_ckpt_source", "TYPE_STRING", (1,), True),
)

# (name, data_type, dims): every output is declared; the model fills those the request asked for.
OUTPUTS: tuple[tuple[str, str, tuple[int, ...]], ...] = (
    ("text_output", "TYPE_STRING", (-1,)),
    ("finish_reason", "TYPE_STRING", (-1,)),
    ("stop_reason", "TYPE_STRING", (-1,)),
    ("cumulative_logprob", "TYPE_FP32", (-1,)),
    ("kv_cache_reused_block", "TYPE_INT32", (-1,)),
    ("kv_cache_missed_block", "TYPE_INT32", (-1,)),
    ("kv_cache_alloc_new_blocks", "TYPE_INT32", (-1,)),
    ("kv_cache_alloc_total_blocks", "TYPE_INT32", (-1,)),
    ("kv_cache_hit_rate", "TYPE_FP32", (-1,)),
    ("arrival_time_ns", "TYPE_INT64", (1,)),
    ("first_scheduled_time_ns", "TYPE_INT64", (1,)),
    ("first_token_time_ns", "TYPE_INT64", (1,)),
    ("last_token_time_ns", "TYPE_INT64", (1,)),
    ("acceptance_rate", "TYPE_FP32", (1,)),
    ("total_accepted_draft_tokens", "TYPE_INT32", (1,)),
    ("total_draft_tokens", "TYPE_INT32", (1,)),
)

# An input that asks for an output: the output must be declared wherever the input is.
REQUESTS_OUTPUT: dict[str, str] = {
    "return_finish_reason": "finish_reason",
    "return_stop_reason": "stop_reason",
    "return_cumulative_logprob": "cumulative_logprob",
}


# The performance outputs that ``sampling_param_return_perf_metrics`` asks for: ``1/model.py``
# ``_create_response`` sends all of them together when the request's output carries perf metrics (TensorRT-LLM
# triton_backend/all_models/llmapi/tensorrt_llm/1/model.py @ 044a90d209e380c95e23e8ae42f3583fa05ada78).
PERF_METRICS_INPUT = "sampling_param_return_perf_metrics"
PERF_METRICS_OUTPUTS: tuple[str, ...] = (
    "kv_cache_reused_block",
    "kv_cache_hit_rate",
    "kv_cache_alloc_new_blocks",
    "kv_cache_alloc_total_blocks",
    "kv_cache_missed_block",
    "arrival_time_ns",
    "first_scheduled_time_ns",
    "first_token_time_ns",
    "last_token_time_ns",
    "acceptance_rate",
    "total_accepted_draft_tokens",
    "total_draft_tokens",
)


def outputs_asked_by(input_name: str) -> tuple[str, ...]:
    """The outputs the model sends when a request sets ``input_name`` (none for other inputs)."""
    if input_name in REQUESTS_OUTPUT:
        return (REQUESTS_OUTPUT[input_name],)
    if input_name == PERF_METRICS_INPUT:
        return PERF_METRICS_OUTPUTS
    return ()


def output_record(name: str) -> dict[str, Any]:
    """The recorded declaration of output ``name`` as config.pbtxt data (KeyError for an unknown one)."""
    for n, t, d in OUTPUTS:
        if n == name:
            return {"name": n, "data_type": t, "dims": list(d)}
    raise KeyError(name)


def tensors(kind: str) -> list[dict[str, Any]]:
    """``input`` or ``output`` as config.pbtxt data (the shape ``triton_pbtxt`` writes)."""
    if kind == "input":
        return [
            {"name": n, "data_type": t, "dims": list(d), **({"optional": True} if optional else {})}
            for n, t, d, optional in INPUTS
        ]
    if kind == "output":
        return [{"name": n, "data_type": t, "dims": list(d)} for n, t, d in OUTPUTS]
    raise ValueError(f"kind must be input or output, got {kind!r}")
