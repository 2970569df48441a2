"""config.pbtxt from data and back: written, parsed, and checked against Triton's own ModelConfig protobuf.

tritonclient ships ``tritonclient.grpc.model_config_pb2`` (Triton's model_config.proto), so every text here is
also read by the parser Triton itself uses (protobuf text format).
"""

from pathlib import Path

import pytest
from ansible_collections.deepseek.cluster.plugins.module_utils.triton_config import (
    Bare,
    PbtxtError,
    Quoted,
    parse_pbtxt,
    to_pbtxt,
    validate_with_triton_schema,
)
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

FIXTURES = Path(__file__).parent / "fixtures" / "llmapi"

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


# --- the parser ---------------------------------------------------------------------------------------------

ROUND_TRIP = [
    LLMAPI,
    {
        "name": "m",
        "max_batch_size": 8,
        "dynamic_batching": {"max_queue_delay_microseconds": 100, "preferred_batch_size": [4, 8]},
        "response_cache": {},
        "version_policy": {"specific": {"versions": [1, 3]}},
        "optimization": {"priority": "PRIORITY_MAX", "input_pinned_memory": {"enable": False}},
        "instance_group": [{"count": 2, "kind": "KIND_GPU", "gpus": [0, 1]}, {"count": 1, "kind": "KIND_CPU"}],
        "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [-1, 4], "optional": False}],
        "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": []}],
    },
    # Strings that need escapes or stay UTF-8, and one that looks like an enum but is a name.
    {
        "name": Quoted("DEEPSEEK"),
        "backend": "python",
        "parameters": {"path": 'C:\\models\\"x"', "note": "déjà vu ☃\nline two\ttab", "empty": ""},
    },
    {"name": "floats", "dynamic_batching": {"default_queue_policy": {"default_timeout_microseconds": 2}}},
]


@pytest.mark.parametrize("data", ROUND_TRIP, ids=["llmapi", "nested", "strings", "deep"])
def test_parse_reads_back_what_to_pbtxt_writes(data):
    text = to_pbtxt(data)
    assert parse_pbtxt(text) == data
    assert validate_with_triton_schema(text) is True


def test_parser_and_protobuf_read_the_upstream_shaped_fixture_alike():
    # The fixture has upstream's layout (comments, `kind : KIND_CPU`, `dims: [ -1 ]`); parsing it and writing
    # it again must give the message protobuf reads from the original.
    text = (FIXTURES / "config.pbtxt").read_text()
    assert parse(to_pbtxt(parse_pbtxt(text))) == parse(text)


def test_text_format_variants_protobuf_accepts():
    text = """
    # every way of writing a field that config.pbtxt files use
    name: 'single' "-joined"   # adjacent literals are one string
    max_batch_size: 0x10;
    model_transaction_policy: { decoupled: True }
    dynamic_batching < preferred_batch_size: [ 2, 4 ], max_queue_delay_microseconds: 5 >
    input { name: "a" data_type: TYPE_FP32 dims: [ -1 ] }
    input { name: "b\\303\\251\\x41\\u00e9" data_type: TYPE_FP32 dims: [ 2 ] optional: t }
    parameters: { key: "k" value { string_value: "v" } }
    parameters [ { key: "path", value: { string_value: "${engine_dir}" } }, { key: "q" value: { string_value: "" } } ]
    """
    data = parse_pbtxt(text)
    assert data["name"] == "single-joined"
    assert data["max_batch_size"] == 16
    assert data["model_transaction_policy"] == {"decoupled": True}
    assert data["dynamic_batching"] == {"preferred_batch_size": [2, 4], "max_queue_delay_microseconds": 5}
    assert [i["name"] for i in data["input"]] == ["a", "béAé"]
    assert data["input"][1]["optional"] is True
    # Map entries in both forms (one field per entry, or a list), template placeholders kept as text.
    assert data["parameters"] == {"k": "v", "path": "${engine_dir}", "q": ""}
    assert parse(to_pbtxt(data)) == parse(text)


def test_quoting_is_kept_across_a_read_and_a_write():
    data = parse_pbtxt('name: "KIND_CPU"\nbackend: "python"\noptimization { priority: lower_case_enum }\n')
    assert isinstance(data["name"], Quoted)
    assert isinstance(data["optimization"]["priority"], Bare)
    text = to_pbtxt(data)
    assert 'name: "KIND_CPU"' in text
    assert "priority: lower_case_enum" in text


def test_parameters_that_are_not_string_values_stay_entries():
    # ModelConfig.parameters is map<string, ModelParameter>; other maps (an accelerator's) hold plain strings.
    text = (
        'name: "m"\noptimization { execution_accelerators { gpu_execution_accelerator [ '
        '{ name: "tensorrt" parameters { key: "precision_mode" value: "FP16" } } ] } }\n'
    )
    data = parse_pbtxt(text)
    accelerator = data["optimization"]["execution_accelerators"]["gpu_execution_accelerator"][0]
    assert accelerator["parameters"] == [{"key": "precision_mode", "value": "FP16"}]
    assert parse(to_pbtxt(data)) == parse(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            (FIXTURES / "unbalanced.pbtxt").read_text(),
            r"line 14, column 1: '\]' while '\{' opened at line 10.*unbalanced",
        ),
        ('name: "m"\ninput {\n  name: "x"\n', r"line 4.*'\{' opened at line 2, column 7 is never closed"),
        ('name: "m"\n}\n', r"line 2, column 1: '\}' without a matching opening brace"),
        ('name: "m>\n', r"line 1, column 7: string not closed on its line"),
        ('name "m"\n', r"line 1, column 6: expected ':' or '\{' after field name 'name'"),
        ('name: "a\\qb"\n', r"unknown escape \\q"),
        ("dims: [1 2]\n", r"line 1, column 10: expected ',' or '\]' in the list of 'dims'"),
        ("input { name: }\n", r"line 1, column 15: expected a value for 'name'"),
        ("[ext.field]: 1\n", r"extension or Any fields"),
        ("name: @\n", r"line 1, column 7: unexpected text '@'"),
        ('name: "\\377"\n', r"not UTF-8"),
        ("max_batch_size: ${triton_max_batch_size}\n", r"line 1, column 17: unfilled template placeholder"),
    ],
    ids=[
        "unbalanced-fixture",
        "never-closed",
        "extra-close",
        "open-string",
        "missing-colon",
        "bad-escape",
        "list-separator",
        "missing-value",
        "extension",
        "stray-character",
        "not-utf8",
        "placeholder",
    ],
)
def test_bad_text_gives_line_and_column(text, message):
    with pytest.raises(PbtxtError, match=message):
        parse_pbtxt(text)


def test_schema_check_names_what_triton_refuses():
    with pytest.raises(PbtxtError, match='ModelConfig schema refuses it: .*no field named "max_batch_sise"'):
        validate_with_triton_schema('name: "m"\nmax_batch_sise: 8\n')
