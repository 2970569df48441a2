"""What a client of TensorRT-LLM's llmapi model may rely on, checked on a served model (lab or production).

Written from the contract (TensorRT-LLM triton_backend/all_models/llmapi/tensorrt_llm: config.pbtxt, 1/model.py,
1/helpers.py; recorded in plugins/module_utils/llmapi_interface.py), not from the lab model's code: every
check holds for TensorRT-LLM serving DeepSeek-R1 as well as for the lab's stand-in.
"""

from __future__ import annotations

import re
import time
import uuid

import pytest
from llmapi_client import Response, Stream, answer, ask
from tritonclient.utils import InferenceServerException

PROMPT = "Write one sentence about the weather in spring."
TOKENS = 12
CANCELLED = "Request cancelled by client"


def greedy(**extra: object) -> dict:
    """A greedy request for TOKENS tokens, plus ``extra`` inputs."""
    return {"text_input": PROMPT, "sampling_param_max_tokens": TOKENS, "sampling_param_temperature": 0.0, **extra}


def test_declared_inputs_and_outputs_are_the_recorded_contract(served_config, record):
    """Every recorded tensor is served as recorded. A newer image may declare more (the role derives a
    production config.pbtxt from the image's own file, so its tensors win): those are allowed, not required."""
    if "_unreachable" in served_config:
        pytest.fail(f"the model configuration endpoint did not answer: {served_config['_unreachable']}")
    inputs = {
        i["name"]: (i["data_type"], [int(d) for d in i["dims"]], bool(i.get("optional", False)))
        for i in served_config["input"]
    }
    outputs = {o["name"]: (o["data_type"], [int(d) for d in o["dims"]]) for o in served_config["output"]}
    recorded_inputs = {name: (dtype, list(dims), optional) for name, dtype, dims, optional in record.INPUTS}
    recorded_outputs = {name: (dtype, list(dims)) for name, dtype, dims in record.OUTPUTS}
    assert {name: inputs.get(name) for name in recorded_inputs} == recorded_inputs
    assert {name: outputs.get(name) for name in recorded_outputs} == recorded_outputs
    # A tensor the record lacks may only be an optional input: a required one would break every client.
    assert all(inputs[name][2] for name in set(inputs) - set(recorded_inputs)), inputs


def test_an_answer_is_one_final_response_that_starts_with_the_prompt(target, decoupled):
    text = answer(target, greedy(), decoupled).text
    assert text.startswith(PROMPT), text
    assert text[len(PROMPT) :].strip(), "nothing was generated after the prompt"


def test_exclude_input_from_output_leaves_the_prompt_out(target, decoupled):
    echoed = answer(target, greedy(), decoupled).text
    generated = answer(target, greedy(sampling_param_exclude_input_from_output=True), decoupled).text
    assert not generated.startswith(PROMPT), generated
    assert generated.strip()
    assert echoed.startswith(PROMPT)
    assert echoed.endswith(generated), (echoed, generated)


def test_greedy_and_seeded_answers_repeat(target, decoupled):
    assert answer(target, greedy(), decoupled).text == answer(target, greedy(), decoupled).text
    seeded = {
        "text_input": PROMPT,
        "sampling_param_max_tokens": TOKENS,
        "sampling_param_temperature": 0.8,
        "sampling_param_top_p": 0.95,
        "sampling_param_seed": 1234,
    }
    assert answer(target, seeded, decoupled).text == answer(target, seeded, decoupled).text


def test_max_tokens_reached_is_finish_reason_length_without_a_stop_reason(target, decoupled):
    reasons = greedy(return_finish_reason=True, return_stop_reason=True)
    outputs = answer(target, reasons, decoupled).outputs
    assert outputs["finish_reason"] == "length"
    assert outputs["stop_reason"] == "None"


def stop_word(generated: str) -> str:
    """A stop string that occurs in ``generated`` as a whole word after some text: ``" word"``."""
    for match in re.finditer(r" (\w+)", generated):
        whole = match.end() == len(generated) or not generated[match.end()].isalnum()
        if match.start() > 0 and whole and generated.find(match.group(0)) == match.start():
            return match.group(0)
    raise AssertionError(f"no word to stop at in {generated!r}")


def test_a_stop_string_ends_the_text_before_it_with_finish_reason_stop(target, decoupled):
    generated = answer(target, greedy(sampling_param_exclude_input_from_output=True), decoupled).text
    stop = stop_word(generated)
    values = greedy(
        sampling_param_exclude_input_from_output=True,
        sampling_param_stop=[stop],
        return_finish_reason=True,
        return_stop_reason=True,
    )
    outputs = answer(target, values, decoupled).outputs
    assert (outputs["finish_reason"], outputs["stop_reason"]) == ("stop", stop)
    assert outputs["text_output"] == generated[: generated.index(stop)]


def test_streaming_sends_the_cumulative_text_with_the_final_flag_on_the_last_response(grpc_target, decoupled):
    if not decoupled:
        pytest.skip("streaming needs a decoupled model")
    # Enough tokens for several responses where the server streams every few steps (stream_interval, MTP).
    tokens = 48
    values = greedy(sampling_param_max_tokens=tokens)
    responses = ask(grpc_target, {**values, "streaming": True, "return_finish_reason": True}, decoupled)
    texts = [r.outputs.get("text_output") for r in responses]
    assert None not in texts, "a response without text_output (an empty final response)"
    assert [r.final for r in responses] == [False] * (len(responses) - 1) + [True]
    assert 2 <= len(responses) <= tokens
    for before, after in zip(texts, texts[1:], strict=False):
        assert after.startswith(before), (before, after)
    assert [r.outputs["finish_reason"] for r in responses] == ["None"] * (len(responses) - 1) + ["length"]
    # Streamed results carry the generated text only, whatever exclude_input_from_output says: TensorRT-LLM's
    # executor starts a streamed result after the tokens already sent, the prompt's among them
    # (LlmRequest::createResult in TensorRT-LLM cpp/tensorrt_llm/batch_manager/llmRequest.cpp).
    excluded = answer(grpc_target, {**values, "sampling_param_exclude_input_from_output": True}, decoupled).text
    assert texts[-1] == excluded, (texts[-1], excluded)
    assert not texts[0].startswith(PROMPT), texts[0]


def test_streaming_is_refused_when_the_model_is_not_decoupled(grpc_target, decoupled):
    if decoupled:
        pytest.skip("the model is decoupled")
    with pytest.raises(InferenceServerException, match="Streaming is only supported in decoupled mode"):
        # Unique inputs: a response cache in front of the model must not answer this from an earlier run.
        ask(grpc_target, greedy(streaming=True, text_input=f"{PROMPT} {uuid.uuid4().hex}"), decoupled)


def stop_request() -> dict:
    """A ``stop`` request whose inputs no earlier request had.

    Triton's response cache (a non-decoupled model with ``response_cache { enable: true }``) keys on the
    inputs, not the request id, and answers a repeated request from the cache: Triton 2.51 even stores an
    error response there, as an empty success. Unique inputs keep these control requests out of it.
    """
    return {"text_input": f"stop {uuid.uuid4().hex}", "stop": True}


def test_stop_without_a_request_id_is_refused(grpc_target, decoupled):
    with pytest.raises(InferenceServerException, match="A request id must be provided for request cancellation"):
        ask(grpc_target, stop_request(), decoupled)


def test_stop_with_a_request_id_is_answered_cancelled(grpc_target, decoupled):
    with pytest.raises(InferenceServerException, match=CANCELLED):
        ask(grpc_target, stop_request(), decoupled, request_id=f"idle-{uuid.uuid4().hex}")


def test_stop_cancels_the_streamed_request_of_that_id(grpc_target, decoupled):
    if not decoupled:
        pytest.skip("a request in flight can be stopped on a decoupled model only")
    long = grpc_target.long_max_tokens
    request_id = f"conformance-{uuid.uuid4().hex}"
    # Both on one stream, so that a load balancer in front sends them to the same server.
    stream = Stream(grpc_target)
    try:
        values = {"text_input": PROMPT, "sampling_param_max_tokens": long, "streaming": True}
        stream.send({**values, "return_finish_reason": True}, request_id)
        first = stream.next()
        assert isinstance(first, Response), f"the request failed: {first}"
        stream.send(stop_request(), request_id)
        responses, errors = [first], []
        deadline = time.monotonic() + 60
        while not (responses[-1].final and errors):
            got = stream.next(max(0.1, deadline - time.monotonic()))
            (errors if isinstance(got, InferenceServerException) else responses).append(got)
    finally:
        stream.close()
    assert len(errors) == 1, errors
    assert CANCELLED in str(errors[0])
    assert responses[-1].outputs["finish_reason"] == "cancelled", responses[-1].outputs
    assert len(responses) < long, f"all {long} tokens came before the stop took effect"
    assert all(r.request_id == request_id for r in responses)
