# Copyright: deepseek.cluster contributors
# Apache License 2.0 (see LICENSE)
"""Model repository contents for TensorRT-LLM's ``llmapi`` layout (DeepSeek-V3/R1 on the PyTorch backend).

The layout is one python model (Triton's ``tensorrt_llm`` llmapi model.py) with ``1/model.yaml``, whose
keys are TensorRT-LLM ``LLM()`` arguments. Parallelism comes from the placement plan's request
(module_utils/parallel_plan: tensor/pipeline/expert parallel sizes, attention data parallelism), so the
served model and the GPUs it was placed on cannot disagree; everything else comes from the role's options,
optionally on top of one of NVIDIA's published DeepSeek-R1 recipes (``recipe``, see ``RECIPES``).

config.pbtxt is derived from the image's own ``llmapi/tensorrt_llm/config.pbtxt`` (``llmapi_image_config``),
so the tensors are those of the model.py that ships beside it; without an image file (check mode) the recorded
interface (module_utils/llmapi_interface) stands in for it (``llmapi_config``). Errors are ``LayoutError`` and
name the variable.
"""

from __future__ import annotations

from typing import Any

from ansible_collections.deepseek.cluster.plugins.module_utils.llmapi_interface import (
    output_record,
    outputs_asked_by,
    tensors,
)
from ansible_collections.deepseek.cluster.plugins.module_utils.parallel_plan import PlanError, normalise_request
from ansible_collections.deepseek.cluster.plugins.module_utils.triton_config import (
    ENUM,
    PbtxtError,
    Quoted,
    parse_pbtxt,
    to_pbtxt,
    validate_with_triton_schema,
)

PARALLEL_KEYS = (
    "tensor_parallel_size",
    "pipeline_parallel_size",
    "moe_expert_parallel_size",
    "moe_tensor_parallel_size",
    "enable_attention_dp",
)
# The role's options; None and {} mean "left to TensorRT-LLM" (the key is not written into model.yaml).
OPTION_DEFAULTS: dict[str, Any] = {
    "model": None,
    "recipe": "none",
    "kv_cache_free_gpu_memory_fraction": 0.9,
    "kv_cache_dtype": "auto",
    "max_batch_size": 64,
    "max_num_tokens": 8192,
    "max_seq_len": None,
    "enable_chunked_prefill": False,
    "mtp_layers": 0,
    "moe_backend": "",
    "moe_max_num_tokens": None,
    "cuda_graph_config": {},
    "stream_interval": 1,
    "trust_remote_code": False,
    "extra": {},
}
# NVIDIA's DeepSeek-R1 "Max Throughput" recipes (TensorRT-LLM examples/configs/curated, selected per GPU by
# examples/configs/curated/lookup.yaml @ 10b22c5c34366e351f8b35bb00560c67cfae7c36):
# - deepseek-r1-throughput.yaml @ 180e9756f04b12abf8ca070b10a4308b7246b006: H100/H200 (FP8 checkpoint) and
#   B200/GB200 with the NVFP4 checkpoint; it sets no MoE backend, so TensorRT-LLM's default CUTLASS runs,
#   the only backend the deployment guide's support matrix lists for FP8 on H100/H200 (docs/source/
#   deployment-guide/deployment-guide-for-deepseek-r1-on-trtllm.md @ 03e4d74f6f34cf703437c95b840e7c470aee1d2b);
#   the recipes here name it, so a changed default cannot change the backend under them.
# - deepseek-r1-deepgemm.yaml @ 6d2ab8f725e4947c663b8c97016faebd53bed669: B200/GB200 with the FP8 checkpoint
#   (the support matrix lists DEEPGEMM, not CUTLASS, for FP8 on Blackwell), moe_config.max_num_tokens 3200.
# Both also set tensor_parallel_size 8, moe_expert_parallel_size 8 and enable_attention_dp: here those come
# from the placement plan (parallel_plan_request), never from a recipe.
_R1_THROUGHPUT: dict[str, Any] = {
    "kv_cache_free_gpu_memory_fraction": 0.8,
    "kv_cache_dtype": "fp8",
    "max_batch_size": 1024,
    "max_num_tokens": 3200,
    "mtp_layers": 1,
    "cuda_graph_config": {"enable_padding": True, "max_batch_size": 128},
    "stream_interval": 10,
    "trust_remote_code": True,
}
RECIPES: dict[str, dict[str, Any]] = {
    "none": {},
    "hopper_fp8": {**_R1_THROUGHPUT, "moe_backend": "CUTLASS"},
    "blackwell_fp8": {**_R1_THROUGHPUT, "moe_backend": "DEEPGEMM", "moe_max_num_tokens": 3200},
    "blackwell_fp4": {**_R1_THROUGHPUT, "moe_backend": "CUTLASS"},
}
# The model.yaml key each option writes: an option set explicitly may not be written again through extra.
_WRITES: dict[str, str] = {
    "kv_cache_free_gpu_memory_fraction": "kv_cache_config",
    "kv_cache_dtype": "kv_cache_config",
    "max_batch_size": "max_batch_size",
    "max_num_tokens": "max_num_tokens",
    "max_seq_len": "max_seq_len",
    "enable_chunked_prefill": "enable_chunked_prefill",
    "mtp_layers": "speculative_config",
    "moe_backend": "moe_config",
    "moe_max_num_tokens": "moe_config",
    "cuda_graph_config": "cuda_graph_config",
    "stream_interval": "stream_interval",
    "trust_remote_code": "trust_remote_code",
}
# TensorRT-LLM CudaGraphConfig fields (tensorrt_llm/llmapi/llm_args.py: batch_sizes Optional[List[int]],
# max_batch_size NonNegativeInt, enable_padding bool; max_batch_size must equal max(batch_sizes) when both
# are given).
_CUDA_GRAPH_KEYS = ("enable_padding", "max_batch_size", "batch_sizes")


class LayoutError(ValueError):
    """The options cannot make a working model; the message names the variable."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_at_least(opts: dict[str, Any], key: str, low: int, variable: str, optional: bool = False) -> None:
    value = opts[key]
    if optional and value is None:
        return
    if not _is_int(value) or value < low:
        raise LayoutError(f"{variable}.{key} must be an integer >= {low}, got {value!r}")


def _cuda_graph(value: Any, variable: str) -> dict[str, Any]:
    """``cuda_graph_config`` checked field by field; ``{}`` leaves CUDA graphs to TensorRT-LLM's default."""
    name = f"{variable}.cuda_graph_config"
    if not isinstance(value, dict):
        raise LayoutError(f"{name} must be a mapping ({', '.join(_CUDA_GRAPH_KEYS)}), got {value!r}")
    unknown = sorted(set(value) - set(_CUDA_GRAPH_KEYS))
    if unknown:
        raise LayoutError(f"{name}: unknown key(s) {', '.join(unknown)}; known: {', '.join(_CUDA_GRAPH_KEYS)}")
    graph = {key: value[key] for key in _CUDA_GRAPH_KEYS if value.get(key) is not None}
    if "enable_padding" in graph and not isinstance(graph["enable_padding"], bool):
        raise LayoutError(f"{name}.enable_padding must be true or false, got {graph['enable_padding']!r}")
    if "max_batch_size" in graph and (not _is_int(graph["max_batch_size"]) or graph["max_batch_size"] < 0):
        raise LayoutError(f"{name}.max_batch_size must be an integer >= 0, got {graph['max_batch_size']!r}")
    if "batch_sizes" in graph:
        sizes = graph["batch_sizes"]
        if not isinstance(sizes, list) or not sizes or not all(_is_int(size) and size >= 1 for size in sizes):
            raise LayoutError(f"{name}.batch_sizes must be a non-empty list of integers >= 1, got {sizes!r}")
        if "max_batch_size" in graph and graph["max_batch_size"] != max(sizes):
            raise LayoutError(
                f"{name}.max_batch_size ({graph['max_batch_size']}) must equal the largest of batch_sizes "
                f"({max(sizes)}), as TensorRT-LLM requires; give one of the two"
            )
    return graph


def _options(options: dict[str, Any], variable: str) -> dict[str, Any]:
    """``options`` over the recipe over ``OPTION_DEFAULTS`` (``None`` means default), checked."""
    if not isinstance(options, dict):
        raise LayoutError(f"{variable} must be a mapping of options, got {type(options).__name__}")
    unknown = sorted(set(options) - set(OPTION_DEFAULTS) - set(PARALLEL_KEYS))
    if unknown:
        raise LayoutError(f"{variable}: unknown option(s) {', '.join(unknown)}; known: {', '.join(OPTION_DEFAULTS)}")
    recipe = options.get("recipe") or "none"
    if not isinstance(recipe, str) or recipe not in RECIPES:
        raise LayoutError(f"{variable}.recipe must be one of {', '.join(RECIPES)}, got {recipe!r}")
    given = {k: v for k, v in options.items() if v is not None}
    opts = {**OPTION_DEFAULTS, **RECIPES[recipe], **given, "recipe": recipe}
    if not opts["model"] or not isinstance(opts["model"], str):
        raise LayoutError(f"{variable}.model is required: the checkpoint directory (or Hugging Face id) to serve")
    fraction = opts["kv_cache_free_gpu_memory_fraction"]
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise LayoutError(f"{variable}.kv_cache_free_gpu_memory_fraction must be in (0, 1], got {fraction!r}")
    for key, low in (("max_batch_size", 1), ("max_num_tokens", 1), ("mtp_layers", 0), ("stream_interval", 1)):
        _int_at_least(opts, key, low, variable)
    for key in ("max_seq_len", "moe_max_num_tokens"):
        _int_at_least(opts, key, 1, variable, optional=True)
    for key in ("enable_chunked_prefill", "trust_remote_code"):
        if not isinstance(opts[key], bool):
            raise LayoutError(f"{variable}.{key} must be true or false, got {opts[key]!r}")
    if not isinstance(opts["kv_cache_dtype"], str) or not opts["kv_cache_dtype"]:
        raise LayoutError(f"{variable}.kv_cache_dtype must be a TensorRT-LLM KV cache dtype (auto, fp8, ...)")
    backend = opts["moe_backend"]
    if not isinstance(backend, str) or (backend and not ENUM.match(backend)):
        raise LayoutError(
            f"{variable}.moe_backend must be empty (TensorRT-LLM's default) or a backend name in capitals "
            f"(CUTLASS, TRTLLM, DEEPGEMM, WIDEEP ...), got {backend!r}"
        )
    opts["cuda_graph_config"] = _cuda_graph(opts["cuda_graph_config"], variable)
    if not isinstance(opts["extra"], dict):
        raise LayoutError(f"{variable}.extra must be a mapping of further LLM() arguments")
    clash = sorted(set(opts["extra"]) & {*PARALLEL_KEYS, "model", "backend", "triton_config"})
    if clash:
        raise LayoutError(f"{variable}.extra may not set {', '.join(clash)}: they come from the plan and the role")
    twice = sorted(f"{key} (and extra.{_WRITES[key]})" for key in given if _WRITES.get(key) in opts["extra"])
    if twice:
        raise LayoutError(f"{variable} sets {', '.join(twice)}: give each model.yaml key once")
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
    model: dict[str, Any] = {
        "model": opts["model"],
        "backend": "pytorch",
        **{key: req[key] for key in PARALLEL_KEYS},
        "max_batch_size": opts["max_batch_size"],
        "max_num_tokens": opts["max_num_tokens"],
    }
    if opts["max_seq_len"] is not None:
        model["max_seq_len"] = opts["max_seq_len"]
    model["kv_cache_config"] = kv_cache
    if opts["enable_chunked_prefill"]:
        model["enable_chunked_prefill"] = True
    if opts["trust_remote_code"]:
        model["trust_remote_code"] = True
    if opts["cuda_graph_config"]:
        model["cuda_graph_config"] = opts["cuda_graph_config"]
    if opts["stream_interval"] != 1:
        model["stream_interval"] = opts["stream_interval"]
    model["triton_config"] = {"max_batch_size": 0, "decoupled": bool(decoupled)}
    if opts["mtp_layers"]:
        model["speculative_config"] = {"decoding_type": "MTP", "num_nextn_predict_layers": opts["mtp_layers"]}
    moe: dict[str, Any] = {}
    if opts["moe_backend"]:
        moe["backend"] = opts["moe_backend"]
    if opts["moe_max_num_tokens"] is not None:
        moe["max_num_tokens"] = opts["moe_max_num_tokens"]
    if moe:
        model["moe_config"] = moe
    return {**model, **opts["extra"]}


# --- config.pbtxt -------------------------------------------------------------------------------------------
# Why the role writes max_batch_size and model_transaction_policy although upstream's file says to leave
# them to model.yaml: upstream's model.py fills them in ``auto_complete_config`` from model.yaml's
# triton_config (TensorRT-LLM triton_backend/all_models/llmapi/tensorrt_llm/1/model.py @
# 044a90d209e380c95e23e8ae42f3583fa05ada78), and the python backend calls that only when Triton's
# auto-complete is on (triton-inference-server/python_backend src/python_be.cc ``ModelState::Create`` @
# 01809ec1207fe246747d5b5fbf617817058c1856). The launcher does not turn it off (TensorRT-LLM
# tensorrt_llm/llmapi/trtllm-llmapi-launch @ 020c89e64e49f24102f1b62be96a1a68283cdf7a runs the command as
# given); the role does, with --disable-auto-complete-config, so the file is served as written: without
# the two fields the model would run with max_batch_size 0 and decoupled false whatever model.yaml says.
LLMAPI_IMAGE_CONFIG = "llmapi/tensorrt_llm/config.pbtxt"
_SOURCE = f"the image's {LLMAPI_IMAGE_CONFIG}"
_VERSION_POLICIES = ("latest", "all", "specific")


def _tensor_list(config: dict[str, Any], kind: str, source: str) -> list[dict[str, Any]]:
    """``input`` or ``output`` of ``config``, each with a name, data_type and dims, names unique."""
    value = config.get(kind, [])
    items = [dict(item) if isinstance(item, dict) else item for item in (value if isinstance(value, list) else [value])]
    seen: set[str] = set()
    for position, item in enumerate(items, 1):
        if not isinstance(item, dict) or not item.get("name"):
            raise LayoutError(f"{source}: {kind} number {position} has no name")
        name = str(item["name"])
        for field in ("data_type", "dims"):
            if field not in item:
                raise LayoutError(f"{source}: {kind} {name!r} has no {field}")
        if name in seen:
            raise LayoutError(f"{source}: {kind} {name!r} is declared twice")
        seen.add(name)
    return items


def _version_number(value: Any, policy: Any) -> int:
    """A version number; templated variables may arrive as digit strings."""
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise LayoutError(f"version_policy: {value!r} is not a version number (an integer >= 1) in {policy!r}")
    return value


def _version_policy(policy: Any) -> dict[str, Any]:
    if not isinstance(policy, dict) or len(policy) != 1 or next(iter(policy)) not in _VERSION_POLICIES:
        raise LayoutError(
            f"version_policy must be a mapping with one of {', '.join(_VERSION_POLICIES)} "
            f"(e.g. {{specific: {{versions: [1]}}}}), got {policy!r}"
        )
    kind, body = next(iter(policy.items()))
    if kind == "specific":
        versions = body.get("versions") if isinstance(body, dict) else None
        if not isinstance(versions, list) or not versions:
            raise LayoutError(f"version_policy.specific.versions must be a non-empty list, got {policy!r}")
        return {"specific": {**body, "versions": [_version_number(v, policy) for v in versions]}}
    if kind == "latest" and isinstance(body, dict) and "num_versions" in body:
        return {"latest": {**body, "num_versions": _version_number(body["num_versions"], policy)}}
    return {kind: body if body is not None else {}}


def _parameters(image: Any, ours: dict[str, Any] | None) -> Any:
    """The image's parameters with ``ours`` (name -> string) set on top."""
    if ours is None:
        return image
    if not isinstance(ours, dict) or not all(isinstance(k, str) and k for k in ours):
        raise LayoutError(f"parameters must be a mapping of names to strings, got {ours!r}")
    bad = sorted(k for k, v in ours.items() if isinstance(v, (dict, list)) or v is None)
    if bad:
        raise LayoutError(f"parameters {', '.join(bad)}: a Triton model parameter is one string")
    strings = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in ours.items()}
    if image is None or isinstance(image, dict):
        return {**(image or {}), **strings}
    # Entries that are not plain string_value pairs stay as the image wrote them; ours replace same-named ones.
    entries = [e for e in image if not (isinstance(e, dict) and e.get("key") in strings)]
    return entries + [{"key": k, "value": {"string_value": v}} for k, v in strings.items()]


def derive_llmapi_config(
    image: dict[str, Any],
    name: str,
    decoupled: bool,
    version_policy: dict[str, Any] | None = None,
    parameters: dict[str, Any] | None = None,
    source: str = _SOURCE,
) -> tuple[dict[str, Any], list[str]]:
    """The served config.pbtxt data from an llmapi config (parsed), and the outputs it had to add.

    Set by the role: ``name``, ``max_batch_size: 0``, ``model_transaction_policy.decoupled``,
    ``version_policy`` (when given) and ``parameters`` (on top of the image's). Kept as the image has them:
    the backend, instance group, inputs and outputs, and any other field. Checked: ``text_input`` and
    ``text_output`` exist, every tensor has a name, data_type and dims, names are unique, and every output an
    input asks for (llmapi_interface.outputs_asked_by: ``return_<x>`` -> ``<x>``, and the performance outputs
    of ``sampling_param_return_perf_metrics``) is declared. A missing one is added with the recorded
    declaration and listed in the second return value: upstream's model.py sends it whenever a request asks,
    and Triton refuses a response with an undeclared output ("unexpected inference output",
    triton-inference-server/core src/infer_response.cc ``InferenceResponse::AddOutput`` @
    05295b706ae45796a7c9e3b2a58c19afd23f0054, which checks the name only), so declaring it is the one way the
    image's own model.py works; refusing would stop a deployment on a defect the record mends exactly.
    """
    if not isinstance(image, dict):
        raise LayoutError(f"{source}: not a model configuration")
    if not isinstance(name, str) or not name:
        raise LayoutError(f"the model name must be a non-empty string, got {name!r}")
    if not isinstance(decoupled, bool):
        raise LayoutError(f"decoupled must be true or false, got {decoupled!r}")
    if not (image.get("backend") or image.get("platform")):
        raise LayoutError(f'{source}: no backend (the llmapi model is backend: "python")')
    inputs = _tensor_list(image, "input", source)
    outputs = _tensor_list(image, "output", source)
    input_names = [str(t["name"]) for t in inputs]
    output_names = {str(t["name"]) for t in outputs}
    if "text_input" not in input_names:
        raise LayoutError(f"{source} declares no input text_input: the llmapi model.py reads every prompt from it")
    if "text_output" not in output_names:
        raise LayoutError(
            f"{source} declares no output text_output: the llmapi model.py answers in it and reads its type at load"
        )
    added: list[str] = []
    for asking in input_names:
        for wanted in outputs_asked_by(asking):
            if wanted not in output_names:
                outputs.append(output_record(wanted))
                output_names.add(wanted)
                added.append(f"{wanted} (asked for by {asking})")
    config: dict[str, Any] = {"name": Quoted(name)}
    for key in ("backend", "platform"):
        if image.get(key):
            config[key] = image[key]
    config["max_batch_size"] = 0
    config["model_transaction_policy"] = {
        **(image.get("model_transaction_policy") or {}),
        "decoupled": decoupled,
    }
    if version_policy is not None:
        config["version_policy"] = _version_policy(version_policy)
    kept = {"name", "backend", "platform", "max_batch_size", "model_transaction_policy", "version_policy"}
    for key, value in image.items():
        if key in kept or key == "parameters":
            continue
        config[key] = inputs if key == "input" else outputs if key == "output" else value
    config.setdefault("input", inputs)
    config.setdefault("output", outputs)
    merged = _parameters(image.get("parameters"), parameters)
    if merged:
        config["parameters"] = merged
    return config, added


def llmapi_record_config() -> dict[str, Any]:
    """The recorded upstream llmapi config.pbtxt (llmapi_interface) as data, for when no image file is at hand."""
    return {
        "name": "tensorrt_llm",
        "backend": "python",
        "instance_group": [{"count": 1, "kind": "KIND_CPU"}],
        "input": tensors("input"),
        "output": tensors("output"),
    }


def llmapi_config(name: str, decoupled: bool) -> dict[str, Any]:
    """The llmapi model's config.pbtxt as data from the recorded interface (for the triton_pbtxt filter).

    For runs without the image's file (check mode); a deployment derives it from the image's own file
    (``llmapi_image_config``). ``max_batch_size`` and the transaction policy are written, not left to model.yaml:
    the role disables auto-complete (see the comment above ``LLMAPI_IMAGE_CONFIG``).
    """
    return derive_llmapi_config(llmapi_record_config(), name, bool(decoupled), source="the recorded interface")[0]


def llmapi_image_config(
    image_text: str,
    name: str,
    decoupled: bool,
    version_policy: dict[str, Any],
    parameters: dict[str, Any] | None = None,
) -> str:
    """config.pbtxt text derived from the image's llmapi config.pbtxt text (see ``derive_llmapi_config``).

    The result starts with comment lines saying what the role set and added; it is checked against Triton's
    ModelConfig protobuf when ``tritonclient`` is importable (triton_config.validate_with_triton_schema).
    """
    try:
        image = parse_pbtxt(image_text)
    except PbtxtError as exc:
        raise LayoutError(f"{_SOURCE} cannot be read: {exc}") from exc
    config, added = derive_llmapi_config(image, name, decoupled, _version_policy(version_policy), parameters)
    header = [
        f"# Written by deepseek.cluster (role triton_server, layout llmapi) from {_SOURCE}.",
        "# Set by the role: name, max_batch_size, model_transaction_policy, version_policy"
        + (", parameters" if parameters else "")
        + ".",
        "# (Triton runs with auto-complete disabled, so model.yaml's triton_config is not read.)",
    ]
    if added:
        header.append("# Outputs added from the recorded interface (an input of the image's file asks for each):")
        header += [f"#   {entry}" for entry in added]
    text = "\n".join(header) + "\n" + to_pbtxt(config)
    try:
        validate_with_triton_schema(text)
    except PbtxtError as exc:
        raise LayoutError(f"the config.pbtxt derived from {_SOURCE} is not valid: {exc}") from exc
    return text
