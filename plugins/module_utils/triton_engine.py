# Copyright: deepseek.cluster contributors
# Apache License 2.0 (see LICENSE)
"""Placeholder values for TensorRT-LLM's ``inflight_batcher_llm`` layout (prebuilt engines: Llama/Qwen distills).

The role copies the template model directories (``ensemble``, ``preprocessing``, ``tensorrt_llm``,
``postprocessing`` and optionally ``tensorrt_llm_bls``) out of the container image at run time; this module
says what to write into each ``config.pbtxt``. Filling works like upstream's ``tools/fill_template.py``:
``${name}`` is replaced for the names given and every other placeholder is left as it is, because the
backends treat a parameter whose value still starts with ``${`` as unset.

The GPU and MPI placeholders come from this host's share of a placement-plan instance. Inside the
container only the planned GPUs exist, renumbered from 0, so ``gpu_device_ids`` is ``0..n-1``; the MPI
world of an instance is the instance alone, so ``participant_ids`` is ``0..world_size-1`` (the executor
requires exactly tensor x pipeline parallel ranks there, on every host). Errors are ``EngineError`` and
name the variable or the plan.
"""

from __future__ import annotations

import re
from typing import Any

MODELS = ("ensemble", "preprocessing", "tensorrt_llm", "postprocessing")
BLS = "tensorrt_llm_bls"
BATCHING_STRATEGIES = ("inflight_fused_batching", "v1")
DATA_TYPES = ("TYPE_FP32", "TYPE_FP16", "TYPE_BF16")
OPTION_DEFAULTS: dict[str, Any] = {
    "engine_dir": None,
    "tokenizer_dir": None,
    "batching_strategy": "inflight_fused_batching",
    "kv_cache_free_gpu_mem_fraction": 0.9,
    "max_batch_size": 64,
    "max_queue_delay_microseconds": 0,
    "max_queue_size": 0,
    "preprocessing_instance_count": 1,
    "postprocessing_instance_count": 1,
    "bls": False,
    "bls_instance_count": 1,
    "logits_datatype": "TYPE_FP32",
    "encoder_input_features_data_type": "TYPE_FP16",
    "prompt_embedding_table_data_type": "TYPE_FP16",
    "exclude_input_in_output": True,
    "enable_chunked_context": False,
}
_INTEGERS = {
    "max_batch_size": 1,
    "max_queue_delay_microseconds": 0,
    "max_queue_size": 0,
    "preprocessing_instance_count": 1,
    "postprocessing_instance_count": 1,
    "bls_instance_count": 1,
}
_BOOLEANS = ("bls", "exclude_input_in_output", "enable_chunked_context")
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class EngineError(ValueError):
    """The engine layout cannot be filled as asked; the message names the variable or the plan."""


def _text(value: bool | int | float | str) -> str:
    """A value as a config.pbtxt placeholder expects it: booleans as ``true``/``false``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _path(opts: dict[str, Any], key: str, variable: str) -> str:
    """A required path option; it lands inside a quoted pbtxt string, so quotes and escapes are refused."""
    value = opts[key]
    if not isinstance(value, str) or not value.strip():
        raise EngineError(f"{variable}.{key} is required: a directory as seen inside the container")
    if any(c in value for c in '"\\\n'):
        raise EngineError(f"{variable}.{key} may not contain quotes, backslashes or newlines: {value!r}")
    return value


def normalise_options(options: dict[str, Any], variable: str = "triton_server_engine") -> dict[str, Any]:
    """``options`` over ``OPTION_DEFAULTS`` (``None`` means default), checked; refuses unknown keys."""
    unknown = sorted(set(options) - set(OPTION_DEFAULTS))
    if unknown:
        raise EngineError(f"{variable}: unknown option(s) {', '.join(unknown)}; known: {', '.join(OPTION_DEFAULTS)}")
    opts = {**OPTION_DEFAULTS, **{k: v for k, v in options.items() if v is not None}}
    for key in ("engine_dir", "tokenizer_dir"):
        _path(opts, key, variable)
    if opts["batching_strategy"] not in BATCHING_STRATEGIES:
        raise EngineError(
            f"{variable}.batching_strategy is {opts['batching_strategy']!r}; allowed: {', '.join(BATCHING_STRATEGIES)}"
        )
    fraction = opts["kv_cache_free_gpu_mem_fraction"]
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise EngineError(f"{variable}.kv_cache_free_gpu_mem_fraction must be in (0, 1], got {fraction!r}")
    for key, low in _INTEGERS.items():
        value = opts[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise EngineError(f"{variable}.{key} must be an integer >= {low}, got {value!r}")
    for key in _BOOLEANS:
        if not isinstance(opts[key], bool):
            raise EngineError(f"{variable}.{key} must be true or false, got {opts[key]!r}")
    for key in ("logits_datatype", "encoder_input_features_data_type", "prompt_embedding_table_data_type"):
        if opts[key] not in DATA_TYPES:
            raise EngineError(f"{variable}.{key} is {opts[key]!r}; allowed: {', '.join(DATA_TYPES)}")
    return opts


def _local_gpus(part: dict[str, Any], world_size: int) -> tuple[int, int]:
    """(GPUs on this host, hosts of the instance), checked against the engine's ``world_size``.

    A part without ``ranks`` is a single-host instance and must hold every rank of the engine; a part
    with ``ranks`` holds one rank per GPU, all below ``world_size``, and the instance is equal shares on
    ``world_size / gpus`` hosts (the executor checks ``gpu_device_ids x num_nodes == world size``).
    """
    host = part.get("host", "?")
    gpus = part.get("gpus") or []
    if not gpus:
        raise EngineError(
            f"the placement plan gives {host} no GPU for this instance; refusing to fill gpu_device_ids that "
            "would let the engine pick any GPU"
        )
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise EngineError(f"the placement plan's world_size must be an integer >= 1, got {world_size!r}")
    count = len(gpus)
    ranks = part.get("ranks")
    if ranks is None:
        if count != world_size:
            raise EngineError(
                f"the placement plan gives {host} {count} GPU(s) but the instance has world_size {world_size}: "
                f"an engine built for {world_size} rank(s) needs exactly that many GPUs on one host "
                "(or a multi-host part that lists its ranks)"
            )
        return count, 1
    if len(ranks) != count or len(set(ranks)) != count or any(not 0 <= int(r) < world_size for r in ranks):
        raise EngineError(
            f"the placement plan's part for {host} has ranks {list(ranks)} for {count} GPU(s); expected {count} "
            f"distinct rank(s) below world_size {world_size}"
        )
    if world_size % count:
        raise EngineError(
            f"the placement plan gives {host} {count} GPU(s) of a {world_size}-rank instance; TensorRT-LLM needs "
            "the same number of GPUs on every host"
        )
    return count, world_size // count


def _engine_model(opts: dict[str, Any], gpus: int, nodes: int, world_size: int, decoupled: bool) -> dict[str, str]:
    """Placeholders of the ``tensorrt_llm`` model (C++ ``tensorrtllm`` backend)."""
    values = {
        "triton_backend": "tensorrtllm",
        "triton_max_batch_size": opts["max_batch_size"],
        "decoupled_mode": bool(decoupled),
        "engine_dir": opts["engine_dir"],
        "batching_strategy": opts["batching_strategy"],
        "kv_cache_free_gpu_mem_fraction": opts["kv_cache_free_gpu_mem_fraction"],
        "max_queue_delay_microseconds": opts["max_queue_delay_microseconds"],
        "max_queue_size": opts["max_queue_size"],
        "encoder_input_features_data_type": opts["encoder_input_features_data_type"],
        "logits_datatype": opts["logits_datatype"],
        "prompt_embedding_table_data_type": opts["prompt_embedding_table_data_type"],
        "exclude_input_in_output": opts["exclude_input_in_output"],
        "enable_chunked_context": opts["enable_chunked_context"],
        "gpu_device_ids": ",".join(str(i) for i in range(gpus)),
        "num_nodes": nodes,
    }
    if world_size > 1:
        values["participant_ids"] = ",".join(str(r) for r in range(world_size))
    return {key: _text(value) for key, value in values.items()}


def engine_placeholders(
    options: dict[str, Any],
    part: dict[str, Any],
    world_size: int,
    decoupled: bool,
    variable: str = "triton_server_engine",
) -> dict[str, dict[str, str]]:
    """Model directory name -> {placeholder: value} for this host's ``part`` of a plan instance.

    ``tensorrt_llm_bls`` is present only when the ``bls`` option is true. The preprocessing model's queue
    placeholders get upstream's defaults (0: no delay, unbounded); the queue options apply to the engine.
    """
    opts = normalise_options(options, variable)
    gpus, nodes = _local_gpus(part, world_size)
    batch = _text(opts["max_batch_size"])
    models = {
        "ensemble": {"triton_max_batch_size": batch, "logits_datatype": opts["logits_datatype"]},
        "preprocessing": {
            "tokenizer_dir": opts["tokenizer_dir"],
            "triton_max_batch_size": batch,
            "preprocessing_instance_count": _text(opts["preprocessing_instance_count"]),
            "max_queue_delay_microseconds": "0",
            "max_queue_size": "0",
        },
        "tensorrt_llm": _engine_model(opts, gpus, nodes, world_size, decoupled),
        "postprocessing": {
            "tokenizer_dir": opts["tokenizer_dir"],
            "triton_max_batch_size": batch,
            "postprocessing_instance_count": _text(opts["postprocessing_instance_count"]),
        },
    }
    if opts["bls"]:
        models[BLS] = {
            "triton_max_batch_size": batch,
            "decoupled_mode": _text(bool(decoupled)),
            "bls_instance_count": _text(opts["bls_instance_count"]),
            "logits_datatype": opts["logits_datatype"],
            "prompt_embedding_table_data_type": opts["prompt_embedding_table_data_type"],
        }
    return models


def template_placeholders(text: str) -> list[str]:
    """The distinct ``${name}`` placeholders of a template, sorted."""
    return sorted(set(_PLACEHOLDER.findall(text)))


def fill_template(text: str, values: dict[str, str], strict: bool = False) -> str:
    """``text`` with ``${key}`` replaced by ``values[key]``; placeholders not in ``values`` stay as they are.

    With ``strict``, a key of ``values`` that the template does not contain is an error (as upstream's
    fill_template.py asserts): the image's templates do not match what this module was written for.
    """
    if strict:
        absent = sorted(set(values) - set(template_placeholders(text)))
        if absent:
            raise EngineError(f"the template has no placeholder(s) {', '.join(absent)}; is the image's layout newer?")
    return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]) if m.group(1) in values else m.group(0), text)
