# Copyright: deepseek.cluster contributors
# Apache License 2.0 (see LICENSE)
"""Golden-prompt equivalence: greedy answers to fixed prompts, their digest, and the comparison with a record.

The primary site records the answers after each deploy; a standby is ready for failover when it gives the
same answers (docs/golden-prompts.md). Each prompt is one POST to Triton's generate endpoint
(``/v2/models/<model>/generate``, Triton's generate extension: server docs/protocol/extension_generate.md),
whose request object carries the model's input tensors as top-level keys. The inputs are those of TensorRT-LLM's
``llmapi`` model (recorded in llmapi_interface.py), named as the inference probe and tests/conformance name them:

- ``sampling_param_temperature`` 0.0 and ``sampling_param_top_k`` 1: greedy under every TensorRT-LLM release
  (``SamplingParams._greedy_decoding``: older ones need top_k 1 or unset, newer ones take either);
- ``sampling_param_max_tokens``: a fixed length, so both sites stop at the same token;
- ``sampling_param_exclude_input_from_output`` true: ``text_output`` is the generated text alone (upstream's
  helpers.py defaults it to false, which echoes the prompt);
- ``streaming`` false: one response, which is what ``generate`` requires of a decoupled model (Triton answers
  "generate expects model to produce exactly 1 response" otherwise; the llmapi model sends exactly one final
  response when not streaming).

Upstream read for this (triton-inference-server/server): docs/protocol/extension_generate.md @ 0bd93bc80166
(request and response objects, ``{"error": ...}`` with an error status), src/http_server.cc @ 00a165a65e77
(a one-element output is written as a scalar; ``generate`` accepts one response, else the error above),
qa/L0_http/generate_endpoint_test.py @ 0a336fb7e4b1 (``test_one_response``: a decoupled model that sends one
response and a flag-only final one is served by ``generate``). TensorRT-LLM tensorrt_llm/sampling_params.py
(``_greedy_decoding`` / ``params_imply_greedy_decoding``).

Only the Python standard library is used, so the module runs on any managed host.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

# The inputs every golden request carries besides text_input and sampling_param_max_tokens.
GREEDY_INPUTS: dict[str, Any] = {
    "sampling_param_temperature": 0.0,
    "sampling_param_top_k": 1,
    "sampling_param_exclude_input_from_output": True,
    "streaming": False,
}
EXCERPT_CHARS = 300  # of an error body, in messages
PROMPT_CHARS = 60  # of a prompt, in messages


class GoldenError(Exception):
    """A golden check that could not be made (bad options, an unreachable server, an answer without text)."""


def request_body(prompt: str, max_tokens: int) -> dict[str, Any]:
    """The generate request object for one prompt: greedy, ``max_tokens`` tokens, the generated text only."""
    return {"text_input": prompt, "sampling_param_max_tokens": max_tokens, **GREEDY_INPUTS}


def generate_url(url: str, model: str) -> str:
    """``<url>/v2/models/<model>/generate`` (the model name quoted); ValueError for a URL that is not http(s)."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError("url must be http://host:port or https://host:port, got %r" % url)
    return "%s/v2/models/%s/generate" % (url.rstrip("/"), urllib.parse.quote(model, safe=""))


def ssl_context(
    ca_path: str | None = None,
    client_cert: str | None = None,
    client_key: str | None = None,
    validate_certs: bool = True,
) -> ssl.SSLContext:
    """A TLS 1.3-only client context: the CA bundle (else the system's), the client certificate when given."""
    context = ssl.create_default_context(cafile=ca_path or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    if not validate_certs:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if client_cert:
        context.load_cert_chain(client_cert, client_key or None)
    return context


def short(text: str, limit: int = PROMPT_CHARS) -> str:
    """``text`` cut to ``limit`` characters (with an ellipsis when cut), for messages."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def error_detail(body: bytes) -> str:
    """What an error body says: Triton's ``{"error": ...}`` message, else the start of the body."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
        text = parsed["error"]
    return short(text, EXCERPT_CHARS) if text else "(empty body)"


def parse_answer(body: bytes) -> str:
    """``text_output`` of a generate response (a string, or a list of one string); GoldenError otherwise.

    Triton writes a one-element output tensor as a scalar and a longer one as an array (HTTPAPIServer::
    GenerateRequestClass::ExactMappingOutput), and can answer 200 with an ``{"error": ...}`` body when the
    model sent more or fewer responses than one after the first was sent (SendChunkResponse).
    """
    try:
        answer = json.loads(body.decode("utf-8"))
    except ValueError as exc:
        raise GoldenError("the answer is not JSON (%s): %s" % (exc, error_detail(body))) from exc
    if not isinstance(answer, dict):
        raise GoldenError("the answer is not a JSON object: %s" % error_detail(body))
    if "error" in answer:
        raise GoldenError("the server answered with an error: %s" % error_detail(body))
    text = answer.get("text_output")
    if isinstance(text, list) and len(text) == 1:
        text = text[0]
    if not isinstance(text, str):
        raise GoldenError("the answer has no single text_output string: %s" % error_detail(body))
    return text


def opener(context: ssl.SSLContext | None = None) -> urllib.request.OpenerDirector:
    """A urllib opener that goes straight to the server (no proxy from the environment), with ``context``.

    A proxy set for package downloads (``http_proxy``) must not carry the check, and the URL may already be
    the mutual-TLS proxy.
    """
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    return urllib.request.build_opener(*handlers)


def _read_error_body(error: urllib.error.HTTPError) -> bytes:
    """The body of an HTTP error answer, empty when it cannot be read."""
    try:
        return error.read()
    except (OSError, http.client.HTTPException):
        return b""


def generate(
    url: str,
    body: dict[str, Any],
    headers: dict[str, str] | None = None,
    timeout: float = 60.0,
    context: ssl.SSLContext | None = None,
) -> str:
    """POST ``body`` to the generate ``url``; the answer's text. Any failure raises GoldenError saying why."""
    data = json.dumps(body).encode("utf-8")
    sent = dict(headers or {})
    sent.update({"Content-Type": "application/json", "Accept": "application/json"})
    request = urllib.request.Request(url, data=data, headers=sent, method="POST")  # noqa: S310 (http/https only)
    try:
        with opener(context).open(request, timeout=timeout) as response:
            return parse_answer(response.read())
    except urllib.error.HTTPError as exc:
        raise GoldenError("HTTP %d: %s" % (exc.code, error_detail(_read_error_body(exc)))) from exc
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, (socket.timeout, TimeoutError)):
            raise GoldenError("no answer within %g s" % timeout) from exc
        raise GoldenError("no answer: %s" % (exc.reason,)) from exc
    except (socket.timeout, TimeoutError) as exc:
        raise GoldenError("no answer within %g s" % timeout) from exc
    except (OSError, http.client.HTTPException) as exc:
        raise GoldenError("no answer: %s: %s" % (type(exc).__name__, exc)) from exc


def answer_record(prompt: str, answer: str) -> dict[str, str]:
    """One entry of ``answers``: the prompt, the answer and the answer's sha256 (of its UTF-8 bytes)."""
    return {"prompt": prompt, "answer": answer, "sha256": hashlib.sha256(answer.encode("utf-8")).hexdigest()}


def canonical_json(pairs: list[tuple[str, str]]) -> bytes:
    """The ordered prompt/answer pairs as canonical JSON (UTF-8, sorted keys, no spaces, no ASCII escapes)."""
    items = [{"prompt": prompt, "answer": answer} for prompt, answer in pairs]
    return json.dumps(items, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def digest(pairs: list[tuple[str, str]]) -> str:
    """sha256 (hex) of canonical_json(``pairs``): it changes with any prompt, answer or their order."""
    return hashlib.sha256(canonical_json(pairs)).hexdigest()


def compare(answers: list[dict[str, str]], expected: dict[str, str]) -> list[dict[str, str | None]]:
    """Every difference between the answers and the recorded ones, in prompt order.

    A prompt the record lacks counts (``expected`` null), and so does a recorded prompt that was not asked
    (``got`` null): the record and the answers must cover the same prompts to count as equal.
    """
    mismatches: list[dict[str, str | None]] = []
    for entry in answers:
        prompt, got = entry["prompt"], entry["answer"]
        if expected.get(prompt) != got:
            mismatches.append({"prompt": prompt, "expected": expected.get(prompt), "got": got})
    asked = {entry["prompt"] for entry in answers}
    for prompt, answer in expected.items():
        if prompt not in asked:
            mismatches.append({"prompt": prompt, "expected": answer, "got": None})
    return mismatches


def mismatch_message(mismatches: list[dict[str, str | None]], total: int) -> str:
    """The failure message: how many prompts differ, and the first of them."""
    first = mismatches[0]
    prompt = short(str(first["prompt"]))
    if first["expected"] is None:
        why = "golden prompt %r has no expected answer (got %r)" % (prompt, short(str(first["got"])))
    elif first["got"] is None:
        why = "the expected answers name prompt %r, which is not among the prompts" % prompt
    else:
        why = "the answer to golden prompt %r differs: expected %r, got %r" % (
            prompt,
            short(str(first["expected"])),
            short(str(first["got"])),
        )
    return "%d of %d golden prompts do not match: %s" % (len(mismatches), total, why)


def check_prompts(prompts: list[str], max_tokens: int) -> None:
    """ValueError unless the prompts are non-empty, unique strings and max_tokens is at least 1."""
    if not prompts:
        raise ValueError("prompts must name at least one prompt")
    if any(not isinstance(p, str) or not p for p in prompts):
        raise ValueError("every prompt must be a non-empty string")
    seen: set[str] = set()
    for prompt in prompts:
        if prompt in seen:
            raise ValueError("prompts must be unique; %r appears twice" % short(prompt))
        seen.add(prompt)
    if max_tokens < 1:
        raise ValueError("max_tokens must be at least 1, got %d" % max_tokens)


def ask_all(
    url: str,
    model: str,
    prompts: list[str],
    max_tokens: int = 32,
    headers: dict[str, str] | None = None,
    timeout: float = 60.0,
    context: ssl.SSLContext | None = None,
) -> list[dict[str, str]]:
    """Each prompt's greedy answer, in order; GoldenError naming the prompt and the URL at the first failure."""
    check_prompts(prompts, max_tokens)
    endpoint = generate_url(url, model)
    answers = []
    for number, prompt in enumerate(prompts, start=1):
        try:
            answer = generate(endpoint, request_body(prompt, max_tokens), headers, timeout, context)
        except GoldenError as exc:
            raise GoldenError(
                "golden prompt %d of %d (%r): POST %s: %s" % (number, len(prompts), short(prompt), endpoint, exc)
            ) from exc
        answers.append(answer_record(prompt, answer))
    return answers


def golden_check(params: dict[str, Any]) -> dict[str, Any]:
    """The module's work from its parameters: answers, digest and, with ``expected``, mismatches and ``equal``.

    Raises GoldenError (or ValueError for bad options); a mismatch is a result, not an error.
    """
    context = None
    if params["url"].lower().startswith("https://"):
        try:
            context = ssl_context(
                params.get("ca_path"),
                params.get("client_cert"),
                params.get("client_key"),
                params.get("validate_certs", True),
            )
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise GoldenError(
                "cannot set up TLS for %s (ca_path %s, client_cert %s, client_key %s): %s"
                % (params["url"], params.get("ca_path"), params.get("client_cert"), params.get("client_key"), exc)
            ) from exc
    answers = ask_all(
        params["url"],
        params.get("model") or "deepseek",
        list(params["prompts"]),
        int(params.get("max_tokens", 32)),
        params.get("headers"),
        float(params.get("timeout", 60.0)),
        context,
    )
    result: dict[str, Any] = {
        "answers": answers,
        "digest": digest([(a["prompt"], a["answer"]) for a in answers]),
        "request": {"sampling_param_max_tokens": int(params.get("max_tokens", 32)), **GREEDY_INPUTS},
    }
    if params.get("expected") is not None:
        result["mismatches"] = compare(answers, params["expected"])
        result["equal"] = not result["mismatches"]
    return result
