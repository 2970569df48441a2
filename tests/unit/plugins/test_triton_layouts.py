"""llmapi layout for DeepSeek-V3/R1: model.yaml from the plan's parallelism, config.pbtxt that Triton parses."""

from pathlib import Path

import pytest
import yaml
from ansible_collections.deepseek.cluster.plugins.module_utils.triton_config import to_pbtxt
from ansible_collections.deepseek.cluster.plugins.module_utils.triton_layouts import (
    LayoutError,
    llmapi_config,
    llmapi_model_yaml,
)
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

# DeepSeek-R1 FP8 on one 8x H200 board (TensorRT-LLM's published throughput settings).
H200_PLAN = {"tensor_parallel_size": 8, "moe_expert_parallel_size": 8, "enable_attention_dp": True}
R1 = {
    "model": "/models/DeepSeek-R1",
    "kv_cache_free_gpu_memory_fraction": 0.75,
    "kv_cache_dtype": "fp8",
    "max_num_tokens": 2048,
    "mtp_layers": 1,
    "moe_backend": "CUTLASS",
}


def test_deepseek_r1_on_8x_h200():
    model = llmapi_model_yaml(H200_PLAN, R1, decoupled=True)
    assert model["backend"] == "pytorch"
    assert (model["tensor_parallel_size"], model["moe_expert_parallel_size"], model["moe_tensor_parallel_size"]) == (
        8,
        8,
        1,
    )
    assert model["enable_attention_dp"] is True
    assert model["kv_cache_config"] == {"free_gpu_memory_fraction": 0.75, "dtype": "fp8"}
    assert model["speculative_config"] == {"decoding_type": "MTP", "num_nextn_predict_layers": 1}
    assert model["moe_config"] == {"backend": "CUTLASS"}
    assert model["triton_config"] == {"max_batch_size": 0, "decoupled": True}


def test_two_node_h100_form_and_defaults():
    model = llmapi_model_yaml(
        {"tensor_parallel_size": 16, "moe_expert_parallel_size": 8, "moe_tensor_parallel_size": 2},
        {"model": "/models/DeepSeek-V3"},
        decoupled=False,
    )
    assert (model["tensor_parallel_size"], model["moe_expert_parallel_size"], model["moe_tensor_parallel_size"]) == (
        16,
        8,
        2,
    )
    assert model["kv_cache_config"] == {"free_gpu_memory_fraction": 0.9}
    assert "speculative_config" not in model
    assert "moe_config" not in model


def test_parallelism_disagreeing_with_the_plan_is_refused():
    with pytest.raises(LayoutError, match=r"triton_server_llmapi.tensor_parallel_size is 4 but the placement plan"):
        llmapi_model_yaml(H200_PLAN, {**R1, "tensor_parallel_size": 4}, decoupled=True)


def test_moe_product_must_equal_tp():
    with pytest.raises(LayoutError, match=r"parallel_plan_request: .*must equal tensor_parallel_size \(8\)"):
        llmapi_model_yaml(
            {"tensor_parallel_size": 8, "moe_expert_parallel_size": 4, "moe_tensor_parallel_size": 4}, R1, True
        )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model": ""}, r"triton_server_llmapi.model is required"),
        ({"kv_cache_free_gpu_memory_fraction": 1.5}, r"kv_cache_free_gpu_memory_fraction must be in \(0, 1\]"),
        ({"max_num_tokens": 0}, r"max_num_tokens must be an integer >= 1"),
        ({"mtp_layers": -1}, r"mtp_layers must be an integer >= 0"),
        ({"extra": {"tensor_parallel_size": 2}}, r"extra may not set tensor_parallel_size"),
        ({"max_seq_length": 4096}, r"unknown option\(s\) max_seq_length"),
    ],
)
def test_bad_options_name_the_variable(change, message):
    with pytest.raises(LayoutError, match=message):
        llmapi_model_yaml(H200_PLAN, {**R1, **change}, decoupled=True)


def test_attention_dp_needs_tensor_parallelism():
    with pytest.raises(LayoutError, match="enable_attention_dp needs tensor_parallel_size > 1"):
        llmapi_model_yaml({"tensor_parallel_size": 1, "enable_attention_dp": True}, R1, True)


def test_extra_arguments_pass_through():
    model = llmapi_model_yaml(H200_PLAN, {**R1, "extra": {"max_seq_len": 32768}}, True)
    assert model["max_seq_len"] == 32768


@pytest.mark.parametrize("decoupled", [True, False])
def test_llmapi_config_parses_with_tritons_schema(decoupled):
    config = text_format.Parse(to_pbtxt(llmapi_config("deepseek", decoupled)), model_config_pb2.ModelConfig())
    assert config.name == "deepseek"
    assert config.max_batch_size == 0
    assert config.model_transaction_policy.decoupled is decoupled
    required = [i.name for i in config.input if not i.optional]
    assert required == ["text_input"]
    assert {"streaming", "sampling_param_max_tokens"} <= {i.name for i in config.input}
    assert [o.name for o in config.output] == ["text_output"]


def test_lab_model_speaks_a_subset_of_the_llmapi_interface():
    # The lab's stand-in must accept what production clients send: same names, types and shapes.
    role_vars = yaml.safe_load(
        (Path(__file__).resolve().parents[3] / "roles" / "triton_server" / "vars" / "main.yml").read_text()
    )
    lab = role_vars["__triton_server_lab_config"]
    production = {i["name"]: i for i in llmapi_config("deepseek", True)["input"]}
    for tensor in lab["input"]:
        assert tensor["name"] in production
        assert (tensor["data_type"], tensor["dims"]) == (
            production[tensor["name"]]["data_type"],
            production[tensor["name"]]["dims"],
        )
        assert tensor.get("optional", False) == production[tensor["name"]].get("optional", False)
    assert lab["output"] == llmapi_config("deepseek", True)["output"]
