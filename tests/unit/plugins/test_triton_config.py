"""config.pbtxt from data: parsed back with Triton's own ModelConfig protobuf (shipped by tritonclient)."""

import pytest
from ansible_collections.deepseek.cluster.plugins.module_utils.triton_config import to_pbtxt
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

LLMAPI = {
    "name": "deepseek",
    "backend": "python",
    "max_batch_size": 0,
    "model_transaction_policy": {"decoupled": True},
    "input": [
        {"name": "text_input", "data_type": "TYPE_STRING", "dims": [-1]},
        {"name": "streaming", "data_type": "TYPE_BOOL", "dims": [1], "optional": True},
        {"name": "sampling_param_max_tokens", "data_type": "TYPE_INT32", "dims": [1], "optional": True},
    ],
    "output": [{"name": "text_output", "data_type": "TYPE_STRING", "dims": [-1]}],
    "instance_group": [{"count": 1, "kind": "KIND_CPU"}],
    "parameters": {"seed": "7", "gpu_device_ids": "0,1;2,3"},
}


def parse(text):
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def test_llmapi_shaped_config_parses_with_every_field():
    config = parse(to_pbtxt(LLMAPI))
    assert config.name == "deepseek"
    assert config.model_transaction_policy.decoupled is True
    assert [i.name for i in config.input] == ["text_input", "streaming", "sampling_param_max_tokens"]
    assert config.input[0].data_type == model_config_pb2.TYPE_STRING
    assert list(config.input[0].dims) == [-1]
    assert config.input[1].optional is True
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert config.parameters["gpu_device_ids"].string_value == "0,1;2,3"


def test_nested_messages_numbers_and_quoting():
    text = to_pbtxt(
        {
            "name": 'quote"d',
            "max_batch_size": 64,
            "dynamic_batching": {"max_queue_delay_microseconds": 100, "preferred_batch_size": [8, 16]},
            "response_cache": {"enable": True},
        }
    )
    config = parse(text)
    assert config.name == 'quote"d'
    assert config.dynamic_batching.max_queue_delay_microseconds == 100
    assert list(config.dynamic_batching.preferred_batch_size) == [8, 16]
    assert config.response_cache.enable is True


def test_unknown_field_is_refused_by_triton_schema():
    with pytest.raises(text_format.ParseError, match="no field named"):
        parse(to_pbtxt({"name": "m", "max_batch_sise": 8}))


def test_a_config_needs_a_name():
    with pytest.raises(ValueError, match="needs at least a name"):
        to_pbtxt({"backend": "python"})
