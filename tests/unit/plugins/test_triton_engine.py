"""inflight_batcher_llm (prebuilt engine) layout: placeholder values from the plan, filled configs Triton parses."""

from pathlib import Path

import pytest
from ansible_collections.deepseek.cluster.plugins.module_utils.gpu_topology import build_facts
from ansible_collections.deepseek.cluster.plugins.module_utils.parallel_plan import plan
from ansible_collections.deepseek.cluster.plugins.module_utils.triton_engine import (
    BLS,
    MODELS,
    EngineError,
    engine_placeholders,
    fill_template,
    template_placeholders,
)
from conftest import FIXTURES
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

TEMPLATES = Path(__file__).resolve().parent / "fixtures" / "engine_templates"
H100 = build_facts(
    (FIXTURES / "nvidia-smi" / "topo-8xH100-SXM-NV18-8nic-niclegend-gpunumaid-spaces-irregular.txt").read_text()
)
QWEN = {
    "engine_dir": "/engines/DeepSeek-R1-Distill-Qwen-32B/tp4",
    "tokenizer_dir": "/models/DeepSeek-R1-Distill-Qwen-32B",
    "kv_cache_free_gpu_mem_fraction": 0.85,
    "max_batch_size": 128,
    "max_queue_delay_microseconds": 500,
}


def template(model: str) -> str:
    return (TEMPLATES / model / "config.pbtxt").read_text()


def parsed(model: str, values: dict[str, str]) -> model_config_pb2.ModelConfig:
    return text_format.Parse(fill_template(template(model), values), model_config_pb2.ModelConfig())


def params(config: model_config_pb2.ModelConfig) -> dict[str, str]:
    return {key: value.string_value for key, value in config.parameters.items()}


def tp4_parts():
    """This host's parts of the two TP4 instances the planner puts on one 8x H100 board."""
    return [inst["parts"][0] for inst in plan({"gpu-a": H100}, {"tensor_parallel_size": 4})["instances"]]


def test_tp4_engine_on_the_second_half_of_the_board_sees_container_gpus_from_zero():
    first, second = tp4_parts()
    assert second["gpus"] == [4, 5, 6, 7]
    for part in (first, second):
        config = parsed("tensorrt_llm", engine_placeholders(QWEN, part, 4, decoupled=True)["tensorrt_llm"])
        assert params(config)["gpu_device_ids"] == "0,1,2,3"
        assert params(config)["participant_ids"] == "0,1,2,3"
        assert params(config)["num_nodes"] == "1"


def test_filled_layout_parses_with_tritons_schema_and_carries_the_options():
    values = engine_placeholders(QWEN, tp4_parts()[0], 4, decoupled=True)
    assert set(values) == set(MODELS)

    engine = parsed("tensorrt_llm", values["tensorrt_llm"])
    assert engine.backend == "tensorrtllm"
    assert engine.max_batch_size == 128
    assert engine.model_transaction_policy.decoupled is True
    assert engine.dynamic_batching.max_queue_delay_microseconds == 500
    assert engine.dynamic_batching.default_queue_policy.max_queue_size == 0
    logits = {o.name: o.data_type for o in engine.output if o.name.endswith("_logits")}
    assert set(logits.values()) == {model_config_pb2.TYPE_FP32}
    inputs = {i.name: i.data_type for i in engine.input}
    assert inputs["encoder_input_features"] == inputs["prompt_embedding_table"] == model_config_pb2.TYPE_FP16
    expected = {
        "gpt_model_type": "inflight_fused_batching",
        "gpt_model_path": "/engines/DeepSeek-R1-Distill-Qwen-32B/tp4",
        "kv_cache_free_gpu_mem_fraction": "0.85",
        "exclude_input_in_output": "true",
        "enable_chunked_context": "false",
    }
    assert {key: params(engine)[key] for key in expected} == expected

    ensemble = parsed("ensemble", values["ensemble"])
    assert ensemble.max_batch_size == 128
    assert ensemble.output[1].data_type == model_config_pb2.TYPE_FP32

    pre = parsed("preprocessing", values["preprocessing"])
    assert params(pre)["tokenizer_dir"] == "/models/DeepSeek-R1-Distill-Qwen-32B"
    assert (pre.max_batch_size, pre.instance_group[0].count) == (128, 1)
    assert pre.dynamic_batching.max_queue_delay_microseconds == 0

    post = parsed("postprocessing", values["postprocessing"])
    assert params(post)["tokenizer_dir"] == "/models/DeepSeek-R1-Distill-Qwen-32B"
    assert (post.max_batch_size, post.instance_group[0].count) == (128, 1)


def test_unfilled_placeholders_stay_for_the_backend_to_treat_as_unset():
    values = engine_placeholders(QWEN, tp4_parts()[0], 4, decoupled=False)
    engine = params(parsed("tensorrt_llm", values["tensorrt_llm"]))
    assert engine["encoder_model_path"] == "${encoder_engine_dir}"
    assert engine["decoding_mode"] == "${decoding_mode}"
    assert params(parsed("preprocessing", values["preprocessing"]))["add_special_tokens"] == "${add_special_tokens}"
    assert params(parsed("postprocessing", values["postprocessing"]))["skip_special_tokens"] == "${skip_special_tokens}"


def test_the_raw_templates_do_not_parse_so_filling_is_what_makes_them_valid():
    for model in (*MODELS, BLS):
        with pytest.raises(text_format.ParseError):
            text_format.Parse(template(model), model_config_pb2.ModelConfig())


@pytest.mark.parametrize("model", MODELS)
def test_every_value_names_a_placeholder_of_the_template(model):
    values = engine_placeholders({**QWEN, "bls": True}, tp4_parts()[0], 4, decoupled=True)
    fill_template(template(model), values[model], strict=True)
    assert set(values[model]) <= set(template_placeholders(template(model)))


def test_single_gpu_engine_has_no_participant_ids():
    part = {"host": "gpu-a", "gpus": [3], "env": {"CUDA_VISIBLE_DEVICES": "3"}}
    values = engine_placeholders(QWEN, part, 1, decoupled=False)["tensorrt_llm"]
    assert values["gpu_device_ids"] == "0"
    assert "participant_ids" not in values
    engine = parsed("tensorrt_llm", values)
    assert params(engine)["participant_ids"] == "${participant_ids}"
    assert engine.model_transaction_policy.decoupled is False


def test_multi_host_part_lists_its_local_gpus_and_every_rank_of_the_engine():
    (instance,) = plan(
        {"gpu-a": H100, "gpu-b": H100},
        {"tensor_parallel_size": 16, "moe_expert_parallel_size": 8, "moe_tensor_parallel_size": 2},
    )["instances"]
    second = instance["parts"][1]
    ranks = [r["rank"] for r in instance["ranks"] if r["host"] == second["host"]]
    assert ranks == list(range(8, 16))
    values = engine_placeholders(QWEN, {**second, "ranks": ranks}, instance["world_size"], True)["tensorrt_llm"]
    assert values["gpu_device_ids"] == "0,1,2,3,4,5,6,7"
    assert values["participant_ids"] == ",".join(str(r) for r in range(16))
    assert values["num_nodes"] == "2"


@pytest.mark.parametrize("decoupled", [True, False])
def test_bls_model_only_when_asked(decoupled):
    part = tp4_parts()[0]
    assert BLS not in engine_placeholders(QWEN, part, 4, decoupled)
    values = engine_placeholders({**QWEN, "bls": True, "bls_instance_count": 4}, part, 4, decoupled)
    bls = parsed(BLS, values[BLS])
    assert bls.model_transaction_policy.decoupled is decoupled
    assert (bls.max_batch_size, bls.instance_group[0].count) == (128, 4)
    assert params(bls)["tensorrt_llm_model_name"] == "${tensorrt_llm_model_name}"
    fill_template(template(BLS), values[BLS], strict=True)


def test_bf16_logits_reach_every_model_that_declares_them():
    values = engine_placeholders({**QWEN, "bls": True, "logits_datatype": "TYPE_BF16"}, tp4_parts()[0], 4, True)
    for model in ("ensemble", "tensorrt_llm", BLS):
        config = parsed(model, values[model])
        assert {o.data_type for o in config.output if o.name.endswith("_logits")} == {model_config_pb2.TYPE_BF16}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"engine_dir": None}, r"triton_server_engine.engine_dir is required"),
        ({"tokenizer_dir": ""}, r"triton_server_engine.tokenizer_dir is required"),
        ({"engine_dir": '/engines/"x'}, r"engine_dir may not contain quotes"),
        ({"kv_cache_free_gpu_mem_fraction": 0}, r"kv_cache_free_gpu_mem_fraction must be in \(0, 1\]"),
        ({"kv_cache_free_gpu_mem_fraction": 1.5}, r"kv_cache_free_gpu_mem_fraction must be in \(0, 1\]"),
        ({"kv_cache_free_gpu_mem_fraction": True}, r"kv_cache_free_gpu_mem_fraction must be in \(0, 1\]"),
        ({"max_batch_size": 0}, r"triton_server_engine.max_batch_size must be an integer >= 1"),
        ({"max_queue_size": -1}, r"max_queue_size must be an integer >= 0"),
        ({"preprocessing_instance_count": 0}, r"preprocessing_instance_count must be an integer >= 1"),
        ({"batching_strategy": "static"}, r"batching_strategy is 'static'; allowed: inflight_fused_batching, v1"),
        ({"logits_datatype": "TYPE_FP8"}, r"logits_datatype is 'TYPE_FP8'; allowed"),
        ({"exclude_input_in_output": "yes"}, r"exclude_input_in_output must be true or false"),
        ({"max_seq_len": 4096}, r"unknown option\(s\) max_seq_len; known: engine_dir, tokenizer_dir"),
    ],
)
def test_bad_options_name_the_variable(change, message):
    with pytest.raises(EngineError, match=message):
        engine_placeholders({**QWEN, **change}, tp4_parts()[0], 4, decoupled=True)


def test_the_variable_name_is_the_callers():
    with pytest.raises(EngineError, match=r"^triton_server_llama.engine_dir is required"):
        engine_placeholders({}, tp4_parts()[0], 4, True, variable="triton_server_llama")


def test_a_part_whose_gpus_do_not_match_the_engine_world_is_refused():
    with pytest.raises(EngineError, match=r"placement plan gives gpu-a 4 GPU\(s\) but the instance has world_size 8"):
        engine_placeholders(QWEN, tp4_parts()[0], 8, decoupled=True)


def test_a_part_without_gpus_is_refused():
    with pytest.raises(EngineError, match=r"placement plan gives gpu-a no GPU"):
        engine_placeholders(QWEN, {"host": "gpu-a", "gpus": [], "env": {}}, 1, decoupled=True)


@pytest.mark.parametrize(
    ("ranks", "world", "message"),
    [
        ([8, 9, 10], 16, r"has ranks \[8, 9, 10\] for 4 GPU\(s\)"),
        ([8, 8, 9, 10], 16, r"expected 4 distinct rank\(s\) below world_size 16"),
        ([14, 15, 16, 17], 16, r"below world_size 16"),
        ([6, 7, 8, 9], 10, r"the same number of GPUs on every host"),
    ],
)
def test_bad_multi_host_parts_are_refused(ranks, world, message):
    part = {"host": "gpu-b", "gpus": [0, 1, 2, 3], "ranks": ranks, "env": {}}
    with pytest.raises(EngineError, match=message):
        engine_placeholders(QWEN, part, world, decoupled=True)


def test_fill_template_replaces_only_the_given_braced_names():
    text = 'a: ${x} b: ${xy} c: "$x" d: ${y}'
    assert fill_template(text, {"x": "1", "y": "two"}) == 'a: 1 b: ${xy} c: "$x" d: two'
    assert template_placeholders(text) == ["x", "xy", "y"]


def test_strict_fill_names_the_placeholders_the_template_lacks():
    with pytest.raises(EngineError, match=r"no placeholder\(s\) num_nodes, participant_ids"):
        fill_template("x: ${gpu_device_ids}", {"gpu_device_ids": "0", "participant_ids": "0", "num_nodes": "1"}, True)


def test_the_filter_serves_the_ensemble_under_the_model_name_and_pins_the_version():
    from ansible_collections.deepseek.cluster.plugins.filter.triton import triton_engine_config

    text = (TEMPLATES / "ensemble" / "config.pbtxt").read_text()
    filled = triton_engine_config(text, {"triton_max_batch_size": "8", "logits_datatype": "TYPE_FP32"}, "deepseek", 3)
    config = model_config_pb2.ModelConfig()
    text_format.Parse(filled, config)
    assert config.name == "deepseek"
    assert list(config.version_policy.specific.versions) == [3]
    assert config.max_batch_size == 8
