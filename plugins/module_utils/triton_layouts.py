# Copyright: deepseek.cluster contributors
# Apache License 2.0 (see LICENSE)
"""Model repository contents for TensorRT-LLM's ``llmapi`` layout (DeepSeek-V3/R1 on the PyTorch backend).

The layout is one python model (Triton's ``tensorrt_llm`` llmapi model.py) with ``1/model.yaml``, whose
keys are TensorRT-LLM ``LLM()`` arguments. Parallelism comes from the placement plan's request
(module_utils/parallel_plan: tensor/pipeline/expert parallel sizes, attention data parallelism), so the
served model and the GPUs it was placed on cannot disagree; everything else comes from the role's options.
Errors are ``LayoutError`` and name the variable.
"""

from __future__ import annotations

from typing import Any

from ansible_collections.deepseek.cluster.plugins.module_utils.parallel_plan import PlanError, normalise_request

PARALLEL_KEYS = (
    "tensor_parallel_size",
    "pipeline_parallel_size",
    "moe_expert_parallel_size",
    "moe_tensor_parallel_size",
    "enable_attention_dp",
)
OPTION_DEFAULTS: dict[str, Any] = {
    "model": None,
    "kv_cache_free_gpu_memory_fraction": 0.9,
    "kv_cache_dtype": "auto",
    "max_batch_size": 64,
    "max_num_tokens": 8192,
    "mtp_layers": 0,
    "moe_backend": "",
    "extra": {},
}
# The llmapi model's request and response tensors (TensorRT-LLM triton_backend/all_models/llmapi).
LLMAPI_INPUTS: list[tuple[str, str, list[int], bool]] = [
    ("text_input", "TYPE_STRING", [-1], False),
    ("streaming", "TYPE_BOOL", [1], True),
    ("sampling_param_max_tokens", "TYPE_INT32", [1], True),
    ("sampling_param_temperature", "TYPE_FP32", [1], True),
    ("sampling_param_top_p", "TYPE_FP32", [1], True),
    ("sampling_param_top_k", "TYPE_INT32", [1], True),
    ("sampling_param_frequency_penalty", "TYPE_FP32", [1], True),
    ("sampling_param_presence_penalty", "TYPE_FP32", [1], True),
    ("sampling_param_seed", "TYPE_UINT64", [1], True),
    ("sampling_param_stop", "TYPE_STRING", [-1], True),
    ("sampling_param_exclude_input_from_output", "TYPE_BOOL", [1], True),
    ("return_finish_reason", "TYPE_BOOL", [1], True),
    ("return_stop_reason", "TYPE_BOOL", [1], True),
]


class LayoutError(ValueError):
    """The options cannot make a working model; the message names the variable."""


def _options(options: dict[str, Any], variable: str) -> dict[str, Any]:
    unknown = sorted(set(options) - set(OPTION_DEFAULTS) - set(PARALLEL_KEYS))
    if unknown:
        raise LayoutError(f"{variable}: unknown option(s) {', '.join(unknown)}; known: {', '.join(OPTION_DEFAULTS)}")
    opts = {**OPTION_DEFAULTS, **{k: v for k, v in options.items() if v is not None}}
    if not opts["model"]:
        raise LayoutError(f"{variable}.model is required: the checkpoint directory (or Hugging Face id) to serve")
    fraction = opts["kv_cache_free_gpu_memory_fraction"]
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise LayoutError(f"{variable}.kv_cache_free_gpu_memory_fraction must be in (0, 1], got {fraction!r}")
    for key, low in (("max_batch_size", 1), ("max_num_tokens", 1), ("mtp_layers", 0)):
        value = opts[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise LayoutError(f"{variable}.{key} must be an integer >= {low}, got {value!r}")
    if not isinstance(opts["extra"], dict):
        raise LayoutError(f"{variable}.extra must be a mapping of further LLM() arguments")
    clash = sorted(set(opts["extra"]) & {*PARALLEL_KEYS, "model", "backend", "triton_config"})
    if clash:
        raise LayoutError(f"{variable}.extra may not set {', '.join(clash)}: they come from the plan and the role")
    return opts


def llmapi_model_yaml(
    plan_request: dict[str, Any], options: dict[str, Any], decoupled: bool, variable: str = "triton_server_llmapi"
) -> dict[str, Any]:
    """The content of ``1/model.yaml``: parallelism from the plan's request, the rest from ``options``.

    A parallelism key given in ``options`` must equal the plan's, or this fails naming both.
    """
    try:
        req = normalise_request(plan_request)
    except PlanError as exc:
        raise LayoutError(f"parallel_plan_request: {exc}") from exc
    opts = _options(options, variable)
    for key in PARALLEL_KEYS:
        if key in options and options[key] is not None and options[key] != req[key]:
            raise LayoutError(
                f"{variable}.{key} is {options[key]!r} but the placement plan (parallel_plan_request) has "
                f"{req[key]!r}; remove it from {variable} or change the plan"
            )
    if req["enable_attention_dp"] and req["tensor_parallel_size"] < 2:
        raise LayoutError("enable_attention_dp needs tensor_parallel_size > 1 (parallel_plan_request)")
    kv_cache: dict[str, Any] = {"free_gpu_memory_fraction": opts["kv_cache_free_gpu_memory_fraction"]}
    if opts["kv_cache_dtype"] != "auto":
        kv_cache["dtype"] = opts["kv_cache_dtype"]
    model = {
        "model": opts["model"],
        "backend": "pytorch",
        **{key: req[key] for key in PARALLEL_KEYS},
        "max_batch_size": opts["max_batch_size"],
        "max_num_tokens": opts["max_num_tokens"],
        "kv_cache_config": kv_cache,
        "triton_config": {"max_batch_size": 0, "decoupled": bool(decoupled)},
    }
    if opts["mtp_layers"]:
        model["speculative_config"] = {"decoding_type": "MTP", "num_nextn_predict_layers": opts["mtp_layers"]}
    if opts["moe_backend"]:
        model["moe_config"] = {"backend": opts["moe_backend"]}
    return {**model, **opts["extra"]}


def llmapi_config(name: str, decoupled: bool) -> dict[str, Any]:
    """The llmapi model's config.pbtxt as data (for the triton_pbtxt filter).

    ``max_batch_size`` and the transaction policy are written here, not left to model.yaml: the upstream
    launcher disables auto-complete, so model.yaml's ``triton_config`` alone would be ignored.
    """
    return {
        "name": name,
        "backend": "python",
        "max_batch_size": 0,
        "model_transaction_policy": {"decoupled": bool(decoupled)},
        "input": [
            {"name": n, "data_type": t, "dims": d, **({"optional": True} if optional else {})}
            for n, t, d, optional in LLMAPI_INPUTS
        ],
        "output": [{"name": "text_output", "data_type": "TYPE_STRING", "dims": [-1]}],
        "instance_group": [{"count": 1, "kind": "KIND_CPU"}],
    }
