"""The lab model (files/lab_model/model.py) against the llmapi contract, with a stand-in for Triton's python utilities.

The role's config (vars/main.yml, rendered as Ansible renders it) declares exactly the recorded tensors; the
model reads every recorded input and can fill every recorded output; and it answers as TensorRT-LLM's llmapi
model does: cumulative streaming with the final flag on the last response, the prompt echoed (not streaming)
unless excluded and never streamed, finish and stop reasons, stop strings, ``stop`` requests by request id,
client cancellation.
"""

import importlib.util
import json
import sys
import threading
import types
from pathlib import Path

import numpy as np
import pytest
import yaml
from ansible_collections.deepseek.cluster.plugins.module_utils import llmapi_interface
from ansible_collections.deepseek.cluster.plugins.module_utils.triton_config import to_pbtxt
from deepseek_testkit import load_module
from google.protobuf import text_format
from jinja2.nativetypes import NativeEnvironment
from tritonclient.grpc import model_config_pb2

ROLE = Path(__file__).resolve().parents[3] / "roles" / "triton_server"
LAB = ROLE / "files" / "lab_model"
FINAL = 1
PROMPT = "What does the standby site do?"
NUMPY = {
    "TYPE_STRING": np.object_,
    "TYPE_BOOL": np.bool_,
    "TYPE_INT32": np.int32,
    "TYPE_INT64": np.int64,
    "TYPE_UINT64": np.uint64,
    "TYPE_FP32": np.float32,
}
INPUT_TYPES = {name: dtype for name, dtype, _dims, _optional in llmapi_interface.INPUTS}


def lab_config(decoupled):
    """__triton_server_lab_config as the role renders it (the tensors through the collection's filter)."""
    lab = yaml.safe_load((ROLE / "vars" / "main.yml").read_text())["__triton_server_lab_config"]
    env = NativeEnvironment()
    env.filters["deepseek.cluster.triton_llmapi_tensors"] = llmapi_interface.tensors
    return {
        "name": "deepseek",
        "backend": "python",
        "max_batch_size": 0,
        "model_transaction_policy": {"decoupled": decoupled},
        "input": env.from_string(lab["input"]).render(),
        "output": env.from_string(lab["output"]).render(),
        "instance_group": [{"kind": "KIND_CPU", "count": 1}],
        "parameters": {"seed": "20250101", "default_max_tokens": "32", "max_tokens_limit": "1024"},
    }


# ---------------------------------------------------------------------------------------------------------
# A stand-in for triton_python_backend_utils


class FakeTensor:
    def __init__(self, name, array):
        self._name, self.array = name, np.asarray(array)

    def name(self):
        return self._name

    def as_numpy(self):
        return self.array


class FakeError:
    INTERNAL, CANCELLED = "INTERNAL", "CANCELLED"

    def __init__(self, message, code="INTERNAL"):
        self.message, self.code = message, code


class FakeResponse:
    def __init__(self, output_tensors=None, error=None):
        self.tensors = {t.name(): t.as_numpy() for t in output_tensors or []}
        self.error = error

    def text(self, name="text_output"):
        return self.tensors[name][0].decode()


class FakeSender:
    def __init__(self, on_send=None):
        self.sent, self.done, self.on_send = [], threading.Event(), on_send

    def send(self, response=None, flags=0):
        self.sent.append((response, flags))
        if self.on_send:
            self.on_send(self, response, flags)
        if flags & FINAL:
            self.done.set()


class FakeRequest:
    def __init__(self, request_id="", cancelled=lambda: False, on_send=None, **values):
        self.inputs = {name: self.typed(name, value) for name, value in values.items()}
        self.asked, self.id, self.cancelled = set(), request_id, cancelled
        self.sender = FakeSender(on_send)

    @staticmethod
    def typed(name, value):
        dtype = NUMPY[INPUT_TYPES[name]]
        items = value if isinstance(value, list) else [value]
        if dtype is np.object_:
            return np.array([str(v).encode() for v in items], dtype=np.object_)
        return np.array(items, dtype=dtype)

    def request_id(self):
        return self.id

    def is_cancelled(self):
        return self.cancelled()

    def get_response_sender(self):
        return self.sender


def get_input_tensor_by_name(request, name):
    request.asked.add(name)
    return FakeTensor(name, request.inputs[name]) if name in request.inputs else None


@pytest.fixture
def utils(monkeypatch):
    module = types.ModuleType("triton_python_backend_utils")
    module.Tensor = FakeTensor
    module.InferenceResponse = FakeResponse
    module.TritonError = FakeError
    module.TRITONSERVER_RESPONSE_COMPLETE_FINAL = FINAL
    module.get_input_tensor_by_name = get_input_tensor_by_name
    module.using_decoupled_model_transaction_policy = lambda config: config["model_transaction_policy"]["decoupled"]
    module.triton_string_to_numpy = lambda name: NUMPY[name]
    module.Logger = types.SimpleNamespace(log_error=lambda message: None, log_warn=lambda message: None)
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", module)
    # load_model registers the model's module here (its dataclasses look themselves up); undone afterwards.
    monkeypatch.setitem(sys.modules, "lab_model", types.ModuleType("lab_model"))
    load_module(LAB / "tiny_moe.py")  # model.py's own `from tiny_moe import ...` finds it loaded
    return module


def load_model(decoupled):
    spec = importlib.util.spec_from_file_location("lab_model", LAB / "model.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["lab_model"] = module
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    config = lab_config(decoupled)
    # Triton gives the model its configuration as JSON, parameters as {name: {string_value: ...}}.
    config["parameters"] = {name: {"string_value": value} for name, value in config["parameters"].items()}
    model.initialize({"model_config": json.dumps(config), "model_version": "1"})
    return module, model


@pytest.fixture
def decoupled(utils):
    module, model = load_model(True)
    yield model
    model.finalize()


@pytest.fixture
def unary(utils):
    return load_model(False)[1]


@pytest.fixture(scope="module")
def moe():
    return load_module(LAB / "tiny_moe.py").TinyMoE()


def run(model, request):
    """Every response a decoupled model sends to one request, waited for."""
    assert model.execute([request]) is None
    assert request.sender.done.wait(30), "no final response within 30 s"
    return request.sender.sent


def only(model, request):
    """The one response a model that is not decoupled returns."""
    responses = model.execute([request])
    assert len(responses) == 1
    return responses[0]


# ---------------------------------------------------------------------------------------------------------
# The interface: the role's config and the model's handling equal the record


def test_the_lab_config_declares_exactly_the_recorded_tensors():
    config = lab_config(True)
    assert config["input"] == llmapi_interface.tensors("input")
    assert config["output"] == llmapi_interface.tensors("output")
    parsed = text_format.Parse(to_pbtxt(config), model_config_pb2.ModelConfig())
    assert [(i.name, list(i.dims), i.optional) for i in parsed.input] == [
        (name, list(dims), optional) for name, _t, dims, optional in llmapi_interface.INPUTS
    ]
    assert [o.name for o in parsed.output] == [name for name, _t, _d in llmapi_interface.OUTPUTS]


def test_the_role_installs_the_models_code_and_its_vocabulary():
    files = yaml.safe_load((ROLE / "vars" / "main.yml").read_text())["__triton_server_lab_files"]
    assert {"model.py", "tiny_moe.py", "tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json"} <= set(files)
    assert all((LAB / name).is_file() for name in files)


def test_the_model_reads_every_recorded_input_and_fills_every_recorded_output(decoupled):
    values = {
        "text_input": PROMPT,
        "streaming": False,
        "sampling_param_best_of": 1,
        "sampling_param_temperature": 0.5,
        "sampling_param_top_k": 5,
        "sampling_param_top_p": 0.9,
        "sampling_param_frequency_penalty": 0.1,
        "sampling_param_presence_penalty": 0.1,
        "sampling_param_max_tokens": 4,
        "sampling_param_stop": ["never in the answer"],
        "sampling_param_seed": 7,
        "sampling_param_exclude_input_from_output": False,
        "sampling_param_return_perf_metrics": True,
        "return_finish_reason": True,
        "return_stop_reason": True,
        "return_cumulative_logprob": True,
        "stop": False,
    }
    unsupported = {"image_url", "lora_id", "lora_name", "lora_path", "lora_ckpt_source"}
    assert set(values) | unsupported == set(INPUT_TYPES)
    request = FakeRequest(**values)
    ((response, flags),) = run(decoupled, request)
    assert flags == FINAL
    assert response.error is None
    assert request.asked == set(INPUT_TYPES)
    assert set(response.tensors) == {name for name, _t, _d in llmapi_interface.OUTPUTS}


def test_the_models_output_flags_are_the_recorded_ones(utils):
    module, _model = load_model(True)
    assert module.REQUESTED_OUTPUTS == llmapi_interface.REQUESTS_OUTPUT
    assert set(module.UNSUPPORTED) <= set(INPUT_TYPES)
    assert set(module.PERF_METRICS) | set(module.REQUESTED_OUTPUTS.values()) | {"text_output"} == {
        name for name, _t, _d in llmapi_interface.OUTPUTS
    }


@pytest.mark.parametrize("name", ["image_url", "lora_id", "lora_path"])
def test_inputs_the_stand_in_cannot_honour_are_refused_by_name(decoupled, name):
    value = "x" if INPUT_TYPES[name] == "TYPE_STRING" else 3
    ((response, flags),) = run(decoupled, FakeRequest(text_input=PROMPT, **{name: value}))
    assert flags == FINAL
    assert response.error.message.startswith("Error generating request: the lab model does not implement ")
    assert name in response.error.message
    assert response.text() == "N/A"


# ---------------------------------------------------------------------------------------------------------
# Answers


def test_streaming_sends_the_cumulative_text_one_token_per_response_and_final_on_the_last(decoupled, moe):
    sent = run(decoupled, FakeRequest(text_input=PROMPT, sampling_param_max_tokens=6, streaming=True))
    assert [flags for _r, flags in sent] == [0] * 5 + [FINAL]
    texts = [response.text() for response, _f in sent]
    assert all(response is not None and response.error is None for response, _f in sent)
    for before, after in zip(texts, texts[1:], strict=False):
        assert after.startswith(before)
        assert len(after.split()) == len(before.split()) + 1
    # The generated text only: TensorRT-LLM streams no prompt tokens (llmRequest.cpp createResult).
    assert len(texts[0].split()) == 1
    assert PROMPT + texts[-1] == moe.answer(PROMPT, 6)


@pytest.mark.parametrize("exclude", [False, True])
def test_streamed_text_never_carries_the_prompt(decoupled, moe, exclude):
    request = FakeRequest(
        text_input=PROMPT, sampling_param_max_tokens=4, streaming=True, sampling_param_exclude_input_from_output=exclude
    )
    texts = [response.text() for response, _f in run(decoupled, request)]
    assert [PROMPT + text for text in texts] == [moe.answer(PROMPT, n) for n in range(1, 5)]


def test_not_streaming_one_final_response_with_the_whole_text(decoupled, moe):
    ((response, flags),) = run(decoupled, FakeRequest(text_input=PROMPT, sampling_param_max_tokens=6))
    assert flags == FINAL
    assert response.text() == moe.answer(PROMPT, 6)
    assert set(response.tensors) == {"text_output"}


def test_the_prompt_is_echoed_unless_excluded(decoupled, moe):
    request = FakeRequest(text_input=PROMPT, sampling_param_max_tokens=5, sampling_param_exclude_input_from_output=True)
    ((response, _flags),) = run(decoupled, request)
    assert PROMPT + response.text() == moe.answer(PROMPT, 5)
    assert response.text().startswith(" ")
    assert len(response.text().split()) == 5


def test_default_max_tokens_and_zero_tokens(decoupled, moe):
    ((response, _flags),) = run(decoupled, FakeRequest(text_input=PROMPT))
    assert response.text() == moe.answer(PROMPT, 32)
    request = FakeRequest(text_input=PROMPT, sampling_param_max_tokens=0, streaming=True, return_finish_reason=True)
    ((response, flags),) = run(decoupled, request)
    assert (response.text(), response.text("finish_reason"), flags) == ("", "length", FINAL)
    ((response, flags),) = run(decoupled, FakeRequest(text_input=PROMPT, sampling_param_max_tokens=0))
    assert (response.text(), flags) == (PROMPT, FINAL)


def test_length_finish_reason_none_stop_reason_and_the_cumulative_logprob_as_strings(decoupled, moe):
    request = FakeRequest(
        text_input=PROMPT,
        sampling_param_max_tokens=4,
        streaming=True,
        return_finish_reason=True,
        return_stop_reason=True,
        return_cumulative_logprob=True,
    )
    sent = run(decoupled, request)
    assert [r.text("finish_reason") for r, _f in sent] == ["None", "None", "None", "length"]
    assert [r.text("stop_reason") for r, _f in sent] == ["None"] * 4
    assert sent[-1][0].tensors["cumulative_logprob"].dtype == np.object_
    expected = sum(step.logprob for step in moe.generate(PROMPT, 4))
    assert float(sent[-1][0].text("cumulative_logprob")) == pytest.approx(expected)
    assert float(sent[0][0].text("cumulative_logprob")) > float(sent[-1][0].text("cumulative_logprob"))


def test_a_stop_string_ends_the_text_before_it(decoupled, moe):
    generated = moe.answer(PROMPT, 12)[len(PROMPT) :]
    stop = " " + generated.split()[4]
    request = FakeRequest(
        text_input=PROMPT,
        sampling_param_max_tokens=12,
        sampling_param_stop=["not a word here", stop],
        return_finish_reason=True,
        return_stop_reason=True,
        streaming=True,
    )
    sent = run(decoupled, request)
    final = sent[-1][0]
    assert (final.text("finish_reason"), final.text("stop_reason")) == ("stop", stop)
    assert final.text() == generated[: generated.index(stop)]
    assert len(sent) == 5
    assert sent[-1][1] == FINAL


def test_streaming_is_refused_when_not_decoupled(unary):
    response = only(unary, FakeRequest(text_input=PROMPT, streaming=True))
    assert response.error.message == "Error generating request: Streaming is only supported in decoupled mode."


def test_not_decoupled_answers_are_returned(unary, moe):
    response = only(unary, FakeRequest(text_input=PROMPT, sampling_param_max_tokens=3, return_finish_reason=True))
    assert (response.text(), response.text("finish_reason")) == (moe.answer(PROMPT, 3), "length")


# ---------------------------------------------------------------------------------------------------------
# Cancellation


def test_stop_without_a_request_id_is_refused_and_with_one_answered_cancelled(decoupled, unary):
    ((response, flags),) = run(decoupled, FakeRequest(text_input="", stop=True))
    assert (response.error.message, response.error.code, flags) == (
        "A request id must be provided for request cancellation",
        "INTERNAL",
        FINAL,
    )
    ((response, flags),) = run(decoupled, FakeRequest(request_id="idle", text_input="", stop=True))
    assert (response.error.message, response.error.code) == ("Request cancelled by client", "CANCELLED")
    response = only(unary, FakeRequest(request_id="idle", text_input="", stop=True))
    assert (response.error.message, response.error.code) == ("Request cancelled by client", "CANCELLED")


@pytest.mark.parametrize("streaming", [True, False])
def test_stop_cancels_the_requests_in_flight_with_that_id(decoupled, streaming):
    stopper = FakeRequest(request_id="r1", text_input="", stop=True)
    other = FakeRequest(request_id="r2", text_input=PROMPT, sampling_param_max_tokens=1024)
    first_token = threading.Event()

    def cancelled():
        # The stop arrives (in another execute call) once the first token is out.
        if not first_token.is_set():
            first_token.set()
            decoupled.execute([stopper])
            assert stopper.sender.done.wait(10)
        return False

    request = FakeRequest(
        request_id="r1",
        cancelled=cancelled,
        text_input=PROMPT,
        sampling_param_max_tokens=1024,
        streaming=streaming,
        return_finish_reason=True,
    )
    assert decoupled.execute([request, other]) is None
    assert request.sender.done.wait(30)
    assert other.sender.done.wait(30)
    final, flags = request.sender.sent[-1]
    assert flags == FINAL
    assert final.error is None
    assert final.text("finish_reason") == "cancelled"
    # Streamed, the text is the generated words alone; not streamed, the prompt comes first.
    assert final.text().startswith(PROMPT) != streaming
    assert 1 <= len(final.text().removeprefix(PROMPT).split()) < 1024
    assert [flags for _r, flags in request.sender.sent[:-1]] == [0] * (len(request.sender.sent) - 1)
    assert (stopper.sender.sent[0][0].error.code, stopper.sender.sent[0][1]) == ("CANCELLED", FINAL)
    # Another id's request ran to its end.
    assert len(other.sender.sent[-1][0].text()[len(PROMPT) :].split()) == 1024
    assert decoupled.in_flight == {}


def test_a_request_the_client_cancels_ends_with_the_cancelled_error(decoupled):
    calls = []

    def cancelled():
        calls.append(1)
        return len(calls) > 3

    request = FakeRequest(text_input=PROMPT, sampling_param_max_tokens=50, streaming=True, cancelled=cancelled)
    sent = run(decoupled, request)
    assert [flags for _r, flags in sent] == [0, 0, 0, FINAL]
    assert (sent[-1][0].error.message, sent[-1][0].error.code) == ("Request cancelled by client", "CANCELLED")


# ---------------------------------------------------------------------------------------------------------
# Sampling, perf metrics, refusals


def test_sampling_is_greedy_by_default_and_seeded_sampling_repeats(decoupled, moe):
    def text(**values):
        ((response, _flags),) = run(decoupled, FakeRequest(text_input=PROMPT, sampling_param_max_tokens=10, **values))
        return response.text()

    greedy = moe.answer(PROMPT, 10)
    assert (
        text(sampling_param_temperature=0.0) == text(sampling_param_top_k=1, sampling_param_temperature=2.0) == greedy
    )
    seeded = {"sampling_param_temperature": 1.5, "sampling_param_seed": 11}
    assert text(**seeded) == text(**seeded) != greedy
    assert text(sampling_param_temperature=1.5, sampling_param_seed=12) != text(**seeded)
    assert text(sampling_param_temperature=1.5) == text(sampling_param_temperature=1.5, sampling_param_seed=0)


def test_perf_metrics_have_the_declared_dtypes_and_ordered_times(decoupled):
    request = FakeRequest(text_input=PROMPT, sampling_param_max_tokens=3, sampling_param_return_perf_metrics=True)
    ((response, _flags),) = run(decoupled, request)
    declared = {name: NUMPY[dtype] for name, dtype, _d in llmapi_interface.OUTPUTS}
    for name in ("arrival_time_ns", "first_scheduled_time_ns", "first_token_time_ns", "last_token_time_ns"):
        assert response.tensors[name].dtype == np.int64 == declared[name]
    assert response.tensors["kv_cache_hit_rate"].dtype == np.float32
    assert response.tensors["total_draft_tokens"].dtype == np.int32
    times = [int(response.tensors[n][0]) for n in ("arrival_time_ns", "first_scheduled_time_ns")]
    times += [int(response.tensors[n][0]) for n in ("first_token_time_ns", "last_token_time_ns")]
    assert times == sorted(times)
    assert times[0] > 0


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"sampling_param_max_tokens": 5000}, "sampling_param_max_tokens must be between 0 and 1024"),
        ({"sampling_param_max_tokens": -1}, "sampling_param_max_tokens must be between 0 and 1024"),
        ({"sampling_param_temperature": -0.5}, "sampling_param_temperature must be >= 0"),
        ({"sampling_param_top_k": -1}, "sampling_param_top_k must be >= 0"),
        ({"sampling_param_top_p": 1.5}, "sampling_param_top_p must be between 0 and 1"),
        ({"sampling_param_best_of": 2}, "does not implement sampling_param_best_of other than 1"),
        ({"sampling_param_seed": [1, 2]}, "Expected a scalar tensor for tensor sampling_param_seed"),
    ],
)
def test_bad_values_are_errors_naming_the_input(decoupled, unary, values, message):
    ((response, flags),) = run(decoupled, FakeRequest(text_input=PROMPT, **values))
    assert flags == FINAL
    assert response.error.message.startswith("Error generating request: ")
    assert message in response.error.message
    assert message in only(unary, FakeRequest(text_input=PROMPT, **values)).error.message


def test_a_failure_inside_the_generation_is_the_clients_error(decoupled, monkeypatch):
    def broken(*_args, **_kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(decoupled.moe, "stream", broken)
    ((response, flags),) = run(decoupled, FakeRequest(text_input=PROMPT))
    assert (response.error.message, flags) == ("Error generating request: boom", FINAL)
