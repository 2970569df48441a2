"""llmapi layout for DeepSeek-V3/R1: model.yaml from the plan's parallelism and NVIDIA's recipes, config.pbtxt
derived from the image's own llmapi config.pbtxt and checked with Triton's protobuf."""

from pathlib import Path

import pytest
import yaml
from ansible.errors import AnsibleFilterError
from ansible_collections.deepseek.cluster.plugins.filter.triton import FilterModule
from ansible_collections.deepseek.cluster.plugins.module_utils import llmapi_interface
from ansible_collections.deepseek.cluster.plugins.module_utils.triton_config import to_pbtxt
from ansible_collections.deepseek.cluster.plugins.module_utils.triton_layouts import (
    OPTION_DEFAULTS,
    RECIPES,
    LayoutError,
    derive_llmapi_config,
    llmapi_config,
    llmapi_image_config,
    llmapi_model_yaml,
)
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

FIXTURES = Path(__file__).parent / "fixtures" / "llmapi"
FILTERS = FilterModule().filters()
PINNED = {"specific": {"versions": [3]}}

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


def protobuf(text):
    return text_format.Parse(text, model_config_pb2.ModelConfig())


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
    # Without a recipe nothing is written that TensorRT-LLM would not assume anyway.
    for absent in (
        "speculative_config",
        "moe_config",
        "cuda_graph_config",
        "stream_interval",
        "max_seq_len",
        "enable_chunked_prefill",
        "trust_remote_code",
    ):
        assert absent not in model


def test_hopper_recipe_is_nvidias_r1_throughput_config():
    # examples/configs/curated/deepseek-r1-throughput.yaml (H100/H200), with the plan's TP8/EP8/attention DP.
    model = llmapi_model_yaml(H200_PLAN, {"model": "/models/DeepSeek-R1", "recipe": "hopper_fp8"}, True)
    assert model["max_batch_size"] == 1024
    assert model["max_num_tokens"] == 3200
    assert model["kv_cache_config"] == {"free_gpu_memory_fraction": 0.8, "dtype": "fp8"}
    assert model["cuda_graph_config"] == {"enable_padding": True, "max_batch_size": 128}
    assert model["stream_interval"] == 10
    assert model["trust_remote_code"] is True
    assert model["speculative_config"] == {"decoding_type": "MTP", "num_nextn_predict_layers": 1}
    assert model["moe_config"] == {"backend": "CUTLASS"}
    assert "enable_chunked_prefill" not in model
    assert "max_seq_len" not in model


def test_blackwell_recipes_differ_in_the_moe_backend():
    fp8 = llmapi_model_yaml(H200_PLAN, {"model": "/m", "recipe": "blackwell_fp8"}, True)
    fp4 = llmapi_model_yaml(H200_PLAN, {"model": "/m", "recipe": "blackwell_fp4"}, True)
    # deepseek-r1-deepgemm.yaml for the FP8 checkpoint on B200/GB200; the throughput config for NVFP4.
    assert fp8["moe_config"] == {"backend": "DEEPGEMM", "max_num_tokens": 3200}
    assert fp4["moe_config"] == {"backend": "CUTLASS"}
    assert fp8["kv_cache_config"] == fp4["kv_cache_config"] == {"free_gpu_memory_fraction": 0.8, "dtype": "fp8"}


def test_options_set_explicitly_win_over_the_recipe():
    model = llmapi_model_yaml(
        H200_PLAN,
        {
            "model": "/m",
            "recipe": "hopper_fp8",
            "kv_cache_free_gpu_memory_fraction": 0.7,
            "max_num_tokens": 16384,
            "max_seq_len": 32768,
            "enable_chunked_prefill": True,
            "cuda_graph_config": {"enable_padding": True, "batch_sizes": [1, 2, 4, 8, 64]},
            "stream_interval": 1,
            "mtp_layers": 0,
        },
        True,
    )
    assert model["kv_cache_config"] == {"free_gpu_memory_fraction": 0.7, "dtype": "fp8"}
    assert (model["max_num_tokens"], model["max_seq_len"], model["enable_chunked_prefill"]) == (16384, 32768, True)
    assert model["cuda_graph_config"] == {"enable_padding": True, "batch_sizes": [1, 2, 4, 8, 64]}
    assert "stream_interval" not in model
    assert "speculative_config" not in model
    # An empty mapping drops the recipe's CUDA graph settings (TensorRT-LLM's default applies).
    plain = llmapi_model_yaml(H200_PLAN, {"model": "/m", "recipe": "hopper_fp8", "cuda_graph_config": {}}, True)
    assert "cuda_graph_config" not in plain


def test_recipes_only_use_known_options():
    for values in RECIPES.values():
        assert set(values) <= set(OPTION_DEFAULTS)


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
        ({"recipe": "hopper"}, r"triton_server_llmapi.recipe must be one of none, hopper_fp8, blackwell_fp8"),
        ({"recipe": ["hopper_fp8"]}, r"triton_server_llmapi.recipe must be one of"),
        ({"stream_interval": 0}, r"triton_server_llmapi.stream_interval must be an integer >= 1, got 0"),
        ({"max_seq_len": "32k"}, r"triton_server_llmapi.max_seq_len must be an integer >= 1, got '32k'"),
        ({"moe_max_num_tokens": True}, r"triton_server_llmapi.moe_max_num_tokens must be an integer >= 1"),
        ({"enable_chunked_prefill": "yes"}, r"triton_server_llmapi.enable_chunked_prefill must be true or false"),
        ({"trust_remote_code": 1}, r"triton_server_llmapi.trust_remote_code must be true or false"),
        ({"moe_backend": "cutlass"}, r"triton_server_llmapi.moe_backend must be empty .* got 'cutlass'"),
        ({"kv_cache_dtype": ""}, r"triton_server_llmapi.kv_cache_dtype must be"),
        ({"cuda_graph_config": [128]}, r"triton_server_llmapi.cuda_graph_config must be a mapping"),
        ({"cuda_graph_config": {"padding_enabled": True}}, r"cuda_graph_config: unknown key\(s\) padding_enabled"),
        ({"cuda_graph_config": {"enable_padding": "on"}}, r"cuda_graph_config.enable_padding must be true or false"),
        ({"cuda_graph_config": {"max_batch_size": -1}}, r"cuda_graph_config.max_batch_size must be an integer >= 0"),
        ({"cuda_graph_config": {"batch_sizes": [0, 8]}}, r"cuda_graph_config.batch_sizes must be a non-empty list"),
        (
            {"cuda_graph_config": {"batch_sizes": [1, 8], "max_batch_size": 16}},
            r"cuda_graph_config.max_batch_size \(16\) must equal the largest of batch_sizes \(8\)",
        ),
        (
            {"cuda_graph_config": {"max_batch_size": 64}, "extra": {"cuda_graph_config": {"max_batch_size": 8}}},
            r"triton_server_llmapi sets cuda_graph_config \(and extra.cuda_graph_config\): give each model.yaml key",
        ),
        (
            {"extra": {"kv_cache_config": {"free_gpu_memory_fraction": 0.5}}},
            r"sets kv_cache_dtype \(and extra.kv_cache_config\), kv_cache_free_gpu_memory_fraction",
        ),
    ],
)
def test_bad_options_name_the_variable(change, message):
    with pytest.raises(LayoutError, match=message):
        llmapi_model_yaml(H200_PLAN, {**R1, **change}, decoupled=True)


def test_options_must_be_a_mapping():
    with pytest.raises(LayoutError, match="triton_server_llmapi must be a mapping of options, got list"):
        llmapi_model_yaml(H200_PLAN, [R1], decoupled=True)


def test_attention_dp_needs_tensor_parallelism():
    with pytest.raises(LayoutError, match="enable_attention_dp needs tensor_parallel_size > 1"):
        llmapi_model_yaml({"tensor_parallel_size": 1, "enable_attention_dp": True}, R1, True)


def test_extra_arguments_pass_through():
    # extra still carries any LLM() argument no option writes (and the recipe's keys when no option is set).
    model = llmapi_model_yaml(H200_PLAN, {**R1, "extra": {"max_seq_len": 32768, "attn_backend": "TRTLLM"}}, True)
    assert model["max_seq_len"] == 32768
    assert model["attn_backend"] == "TRTLLM"
    graph = {"cuda_graph_config": {"batch_sizes": [1, 2]}}
    recipe = llmapi_model_yaml(H200_PLAN, {"model": "/m", "recipe": "hopper_fp8", "extra": graph}, True)
    assert recipe["cuda_graph_config"] == {"batch_sizes": [1, 2]}


# --- config.pbtxt -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("decoupled", [True, False])
def test_llmapi_config_parses_with_tritons_schema(decoupled):
    config = protobuf(to_pbtxt(llmapi_config("deepseek", decoupled)))
    assert config.name == "deepseek"
    assert config.backend == "python"
    assert config.max_batch_size == 0
    assert config.model_transaction_policy.decoupled is decoupled
    assert [i.name for i in config.input if not i.optional] == ["text_input"]
    assert [i.name for i in config.input] == [entry[0] for entry in llmapi_interface.INPUTS]
    assert [o.name for o in config.output] == [entry[0] for entry in llmapi_interface.OUTPUTS]


def test_every_input_that_asks_for_an_output_has_it_in_the_record():
    outputs = {entry[0] for entry in llmapi_interface.OUTPUTS}
    for entry in llmapi_interface.INPUTS:
        assert set(llmapi_interface.outputs_asked_by(entry[0])) <= outputs


@pytest.mark.parametrize("decoupled", [True, False])
def test_image_config_keeps_the_images_tensors_and_sets_the_roles_fields(decoupled):
    image = (FIXTURES / "config.pbtxt").read_text()
    text = llmapi_image_config(image, "deepseek", decoupled, PINNED, {"note": "x"})
    config = protobuf(text)
    upstream = protobuf(image)
    assert config.name == "deepseek"
    assert config.backend == "python"
    assert config.max_batch_size == 0
    assert config.model_transaction_policy.decoupled is decoupled
    assert list(config.version_policy.specific.versions) == [3]
    assert list(config.input) == list(upstream.input)
    assert list(config.output) == list(upstream.output)
    assert list(config.instance_group) == list(upstream.instance_group)
    assert config.parameters["note"].string_value == "x"
    assert text.startswith("# Written by deepseek.cluster")
    assert "Outputs added" not in text


def test_the_fixture_and_the_record_agree():
    # The upstream-shaped fixture declares the recorded tensors, so the check-mode config (record) and the
    # config derived from an image with that file are the same model.
    derived = protobuf(llmapi_image_config((FIXTURES / "config.pbtxt").read_text(), "deepseek", True, PINNED))
    record = protobuf(to_pbtxt({**llmapi_config("deepseek", True), "version_policy": PINNED}))
    assert derived == record


def test_outputs_the_images_inputs_ask_for_are_added_from_the_record():
    text = llmapi_image_config((FIXTURES / "reason_outputs_missing.pbtxt").read_text(), "deepseek", True, PINNED)
    config = protobuf(text)
    outputs = {o.name: o for o in config.output}
    for name in ("finish_reason", "stop_reason", "cumulative_logprob", *llmapi_interface.PERF_METRICS_OUTPUTS):
        record = llmapi_interface.output_record(name)
        assert model_config_pb2.DataType.Name(outputs[name].data_type) == record["data_type"]
        assert list(outputs[name].dims) == record["dims"]
    assert [i.name for i in config.input][-1] == "return_cumulative_logprob"  # inputs as the image has them
    assert "\n# Outputs added from the recorded interface (an input of the image's file asks for each):\n" in text
    assert "\n#   finish_reason (asked for by return_finish_reason)\n" in text
    assert "\n#   total_draft_tokens (asked for by sampling_param_return_perf_metrics)\n" in text
    # The image's own parameters are kept.
    assert config.parameters["image_note"].string_value == "from the image"


def test_image_parameters_are_overridden_by_the_roles():
    text = llmapi_image_config(
        (FIXTURES / "reason_outputs_missing.pbtxt").read_text(), "deepseek", True, PINNED, {"image_note": 7}
    )
    assert protobuf(text).parameters["image_note"].string_value == "7"


def test_templated_version_numbers_are_numbers():
    text = llmapi_image_config((FIXTURES / "config.pbtxt").read_text(), "d", True, {"specific": {"versions": ["4"]}})
    assert list(protobuf(text).version_policy.specific.versions) == [4]
    latest = llmapi_image_config((FIXTURES / "config.pbtxt").read_text(), "d", True, {"latest": {"num_versions": 2}})
    assert protobuf(latest).version_policy.latest.num_versions == 2
    assert protobuf(
        llmapi_image_config((FIXTURES / "config.pbtxt").read_text(), "d", True, {"all": {}})
    ).version_policy.HasField("all")


def test_image_model_settings_are_replaced():
    image = (
        'name: "tensorrt_llm"\nbackend: "python"\nmax_batch_size: 64\nmodel_transaction_policy { decoupled: true }\n'
        'version_policy { latest { num_versions: 2 } }\ninput [ { name: "text_input" data_type: TYPE_STRING '
        'dims: [-1] } ]\noutput [ { name: "text_output" data_type: TYPE_STRING dims: [-1] } ]\n'
    )
    config = protobuf(llmapi_image_config(image, "DEEPSEEK", False, PINNED))
    assert config.name == "DEEPSEEK"  # quoted although it looks like an enum
    assert config.max_batch_size == 0
    assert config.model_transaction_policy.decoupled is False
    assert config.version_policy.WhichOneof("policy_choice") == "specific"


@pytest.mark.parametrize(
    ("fixture", "message"),
    [
        ("no_text_output.pbtxt", r"declares no output text_output: the llmapi model.py answers in it"),
        ("unbalanced.pbtxt", r"cannot be read: line 14, column 1: .*unbalanced braces"),
    ],
)
def test_image_files_that_cannot_serve_are_refused(fixture, message):
    with pytest.raises(LayoutError, match=message):
        llmapi_image_config((FIXTURES / fixture).read_text(), "deepseek", True, PINNED)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        ('name: "m"\ninput [ { name: "text_input" data_type: TYPE_STRING dims: [-1] } ]\n', r"no backend"),
        (
            'backend: "python"\noutput [ { name: "text_output" data_type: TYPE_STRING dims: [-1] } ]\n',
            r"declares no input text_input",
        ),
        (
            'backend: "python"\ninput [ { name: "text_input" data_type: TYPE_STRING dims: [-1] },'
            ' { name: "text_input" data_type: TYPE_STRING dims: [-1] } ]\n',
            r"input 'text_input' is declared twice",
        ),
        ('backend: "python"\ninput [ { name: "text_input" dims: [-1] } ]\n', r"input 'text_input' has no data_type"),
        ('backend: "python"\ninput [ { data_type: TYPE_STRING } ]\n', r"input number 1 has no name"),
        (
            'backend: "python"\ninput { name: "text_input" data_type: TYPE_STRING dims: [-1] }\n'
            'output { name: "text_output" data_type: TYPE_STRING dims: [-1] }\nmax_batch_sise: 1\n',
            r"is not valid: Triton's ModelConfig schema refuses it: .*max_batch_sise",
        ),
    ],
    ids=["backend", "text_input", "duplicate", "data_type", "name", "schema"],
)
def test_inconsistent_image_configs_are_refused(image, message):
    with pytest.raises(LayoutError, match=message):
        llmapi_image_config(image, "deepseek", True, PINNED)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("", True, PINNED), r"model name must be a non-empty string"),
        (("deepseek", "yes", PINNED), r"decoupled must be true or false"),
        (("deepseek", True, {"versions": [1]}), r"version_policy must be a mapping with one of latest, all, specific"),
        (("deepseek", True, PINNED, {"a": {"b": 1}}), r"parameters a: a Triton model parameter is one string"),
        (("deepseek", True, {"specific": {"versions": []}}), r"version_policy.specific.versions must be a non-empty"),
        (("deepseek", True, {"specific": {"versions": ["v1"]}}), r"version_policy: 'v1' is not a version number"),
    ],
)
def test_bad_arguments_are_refused(args, message):
    with pytest.raises(LayoutError, match=message):
        llmapi_image_config((FIXTURES / "config.pbtxt").read_text(), *args)


def test_derive_reports_what_it_added():
    image = {
        "backend": "python",
        "input": [
            {"name": "text_input", "data_type": "TYPE_STRING", "dims": [-1]},
            {"name": "return_stop_reason", "data_type": "TYPE_BOOL", "dims": [1], "optional": True},
        ],
        "output": [{"name": "text_output", "data_type": "TYPE_STRING", "dims": [-1]}],
    }
    config, added = derive_llmapi_config(image, "deepseek", True)
    assert added == ["stop_reason (asked for by return_stop_reason)"]
    assert config["output"][-1] == {"name": "stop_reason", "data_type": "TYPE_STRING", "dims": [-1]}
    assert "version_policy" not in config
    assert image["output"] == [{"name": "text_output", "data_type": "TYPE_STRING", "dims": [-1]}]  # not mutated


def test_filters_wrap_errors_and_take_ansible_booleans():
    image = (FIXTURES / "config.pbtxt").read_text()
    text = FILTERS["triton_llmapi_image_config"](image, "deepseek", "false", PINNED)
    assert protobuf(text).model_transaction_policy.decoupled is False
    with pytest.raises(AnsibleFilterError, match=r"^triton_llmapi_image_config: .*declares no output text_output"):
        FILTERS["triton_llmapi_image_config"]((FIXTURES / "no_text_output.pbtxt").read_text(), "d", True, PINNED)
    with pytest.raises(AnsibleFilterError, match="decoupled must be true or false"):
        FILTERS["triton_llmapi_image_config"](image, "deepseek", "maybe", PINNED)
    assert FILTERS["triton_llmapi_config"]("deepseek", "yes")["model_transaction_policy"] == {"decoupled": True}


def test_lab_model_speaks_a_subset_of_the_llmapi_interface():
    # The lab's stand-in must accept what production clients send: same names, types and shapes, and it may
    # not declare an input that asks for an output it lacks.
    role_vars = yaml.safe_load(
        (Path(__file__).resolve().parents[3] / "roles" / "triton_server" / "vars" / "main.yml").read_text()
    )
    lab = role_vars["__triton_server_lab_config"]
    production = llmapi_config("deepseek", True)
    for kind in ("input", "output"):
        if isinstance(lab[kind], str):  # taken from the record through the triton_llmapi_tensors filter
            assert f"'{kind}' | deepseek.cluster.triton_llmapi_tensors" in lab[kind]
            lab[kind] = FILTERS["triton_llmapi_tensors"](kind)
        declared = {t["name"]: t for t in production[kind]}
        for tensor in lab[kind]:
            assert tensor["name"] in declared
            assert (tensor["data_type"], tensor["dims"]) == (
                declared[tensor["name"]]["data_type"],
                declared[tensor["name"]]["dims"],
            )
            assert tensor.get("optional", False) == declared[tensor["name"]].get("optional", False)
    lab_outputs = {t["name"] for t in lab["output"]}
    for tensor in lab["input"]:
        assert set(llmapi_interface.outputs_asked_by(tensor["name"])) <= lab_outputs
