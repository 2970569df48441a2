"""Golden-prompt equivalence (plugins/module_utils/golden_prompts.py and the golden_prompts module).

The server is real (http.server in a thread, plain HTTP and TLS 1.3 with client certificates) and answers as
Triton's generate endpoint answers for TensorRT-LLM's llmapi model:

- request: one JSON object; its top-level keys are the model's inputs (Triton's generate extension,
  server docs/protocol/extension_generate.md: "additional properties ... are passed either as parameters or
  tensors based on model specification");
- success: 200, ``application/json``, ``{"model_name", "model_version", "text_output"}``, a one-element output
  written as a scalar (HTTPAPIServer::GenerateRequestClass::ExactMappingOutput);
- failure: an HTTP error status (400) with ``{"error": "<message>"}``; a model that sends other than one
  response after the first succeeded: 200 with that error object ("generate expects model to produce exactly
  1 response, use generate stream for model that generates various number of responses");
- llmapi: ``text_output`` starts with the prompt unless ``sampling_param_exclude_input_from_output`` is true
  (helpers.py defaults it to false), ``streaming`` true is refused when the model is not decoupled, errors are
  "Error generating request: <why>" (tests/conformance, roles/triton_server/files/lab_model/model.py).

urllib is not mocked anywhere.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import ipaddress
import json
import random
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from ansible_collections.deepseek.cluster.plugins.module_utils import golden_prompts as golden
from ansible_collections.deepseek.cluster.plugins.module_utils import llmapi_interface
from conftest import ROOT
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

MODULE = ROOT / "plugins" / "modules" / "golden_prompts.py"
WORDS = ("sky", "blue", "clear", "day", "one", "two", "three", "spring", "rain", "sun", "cloud", "wind")
PROMPTS = ["What colour is the sky on a clear day?", "Count from one to five.", "Name a season. ☀"]
STREAMING_NEEDS_DECOUPLED = "Streaming is only supported in decoupled mode."
ONE_RESPONSE = (
    "generate expects model to produce exactly 1 response, use generate stream for model that generates "
    "various number of responses"
)


def generated(prompt: str, max_tokens: int, weights: str, greedy: bool) -> str:
    """The stand-in model: greedy is a function of the prompt and the weights, anything else is random."""
    seed = hashlib.sha256(f"{weights}\0{prompt}".encode()).digest() if greedy else None
    rng = random.Random(seed)  # noqa: S311 - a stand-in model's choices, not cryptography
    return "".join(" " + rng.choice(WORDS) for _position in range(max_tokens))


class Triton(BaseHTTPRequestHandler):
    """POST /v2/models/<model>/generate as Triton serves the llmapi model (see the module docstring)."""

    server: TritonServer

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        length = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(length)
        self.server.requests.append({"path": self.path, "headers": dict(self.headers), "body": raw})
        parts = self.path.split("/")
        if len(parts) != 5 or parts[1:3] != ["v2", "models"] or parts[4] != "generate":
            self._json(404, {"error": "Not Found"})
            return
        if urllib.parse.unquote(parts[3]) != self.server.model:
            self._json(400, {"error": f"Request for unknown model: '{urllib.parse.unquote(parts[3])}' is not found"})
            return
        try:
            body = json.loads(raw)
        except ValueError:
            self._json(400, {"error": "failed to parse the request JSON buffer: Invalid value. at 0"})
            return
        self._generate(body)

    def _generate(self, body: dict) -> None:
        prompt = body.get("text_input")
        if not isinstance(prompt, str):
            self._json(400, {"error": "attempt to access JSON non-string as string"})
            return
        if "FAIL400" in prompt:
            self._json(400, {"error": "Error generating request: sampling_param_max_tokens must be between 0 and 4"})
            return
        if "NOTJSON" in prompt:
            self._send(502, b"<html>502 Bad Gateway</html>", "text/html")
            return
        if "MANY" in prompt:  # the status went out with the first response; the error comes in the body
            self._json(200, {"error": ONE_RESPONSE})
            return
        if "SLOW" in prompt:
            time.sleep(self.server.slow_s)
        if body.get("streaming", False) is True:
            self._json(400, {"error": f"Error generating request: {STREAMING_NEEDS_DECOUPLED}"})
            return
        temperature = body.get("sampling_param_temperature")
        greedy = temperature == 0 or body.get("sampling_param_top_k") == 1
        text = generated(prompt, int(body.get("sampling_param_max_tokens", 16)), self.server.weights, greedy)
        if body.get("sampling_param_exclude_input_from_output", False) is not True:
            text = prompt + text
        output = [text] if self.server.array_output else text
        self._json(200, {"model_name": self.server.model, "model_version": "1", "text_output": output})

    def _json(self, status: int, value: dict) -> None:
        self._send(status, json.dumps(value).encode(), "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's signature
        """Quiet."""


class TritonServer(ThreadingHTTPServer):
    """The stand-in server and what it saw."""

    daemon_threads = True

    def __init__(self, context: ssl.SSLContext | None = None) -> None:
        super().__init__(("127.0.0.1", 0), Triton)
        self.model = "deepseek"
        self.weights = "primary"
        self.slow_s = 3.0
        self.array_output = False
        self.requests: list[dict] = []
        self.context = context
        scheme = "https" if context else "http"
        self.url = f"{scheme}://127.0.0.1:{self.server_address[1]}"

    def get_request(self):
        sock, address = super().get_request()
        if self.context is not None:
            sock = self.context.wrap_socket(sock, server_side=True)
        return sock, address

    def handle_error(self, request, client_address) -> None:
        """A client that gave up (the timeout test) is not an error of the server."""

    def bodies(self) -> list[dict]:
        return [json.loads(r["body"]) for r in self.requests]


def serve(context: ssl.SSLContext | None = None):
    server = TritonServer(context)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return server, thread


@pytest.fixture
def triton():
    server, thread = serve()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


@contextlib.contextmanager
def socket_closed():
    """A local port where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    yield port


def params(url: str, **extra) -> dict:
    values = {"url": url, "model": "deepseek", "prompts": list(PROMPTS), "max_tokens": 8, "timeout": 5.0}
    values.update(extra)
    return values


# The request


def test_the_request_is_greedy_of_fixed_length_generated_text_only_and_not_streamed(triton):
    golden.golden_check(params(triton.url, max_tokens=12))
    assert [r["path"] for r in triton.requests] == ["/v2/models/deepseek/generate"] * len(PROMPTS)
    assert triton.bodies() == [
        {
            "text_input": prompt,
            "sampling_param_max_tokens": 12,
            "sampling_param_temperature": 0.0,
            "sampling_param_top_k": 1,
            "sampling_param_exclude_input_from_output": True,
            "streaming": False,
        }
        for prompt in PROMPTS
    ]
    assert all(r["headers"]["Content-Type"] == "application/json" for r in triton.requests)
    # Exactly as sent: JSON types the llmapi inputs accept (FP32 as a number, INT32, BOOL).
    raw = json.loads(triton.requests[0]["body"])
    assert isinstance(raw["sampling_param_temperature"], float)
    assert isinstance(raw["sampling_param_top_k"], int)
    assert not isinstance(raw["sampling_param_top_k"], bool)
    assert raw["sampling_param_exclude_input_from_output"] is True


def test_every_input_sent_is_an_input_of_the_recorded_llmapi_interface():
    declared = {name: dtype for name, dtype, _dims, _optional in llmapi_interface.INPUTS}
    body = golden.request_body("p", 4)
    assert set(body) <= set(declared)
    assert declared["sampling_param_temperature"] == "TYPE_FP32"
    assert declared["sampling_param_top_k"] == declared["sampling_param_max_tokens"] == "TYPE_INT32"
    assert declared["streaming"] == declared["sampling_param_exclude_input_from_output"] == "TYPE_BOOL"


def test_greedy_answers_repeat_and_are_the_generated_text_alone(triton):
    first = golden.golden_check(params(triton.url))
    again = golden.golden_check(params(triton.url))
    assert first["answers"] == again["answers"]
    assert first["digest"] == again["digest"]
    for entry, prompt in zip(first["answers"], PROMPTS, strict=True):
        assert entry["prompt"] == prompt
        assert entry["answer"] == generated(prompt, 8, "primary", greedy=True)
        assert not entry["answer"].startswith(prompt)
        assert entry["sha256"] == hashlib.sha256(entry["answer"].encode()).hexdigest()
    assert first["request"] == {
        "sampling_param_max_tokens": 8,
        "sampling_param_temperature": 0.0,
        "sampling_param_top_k": 1,
        "sampling_param_exclude_input_from_output": True,
        "streaming": False,
    }
    assert "equal" not in first
    assert "mismatches" not in first


def test_the_model_name_and_a_trailing_slash_make_the_url(triton):
    triton.model = "deepseek r1/v3"
    golden.golden_check(params(triton.url + "/", model="deepseek r1/v3", prompts=["p"]))
    assert triton.requests[0]["path"] == "/v2/models/deepseek%20r1%2Fv3/generate"


def test_a_one_element_array_text_output_is_read_too(triton):
    scalar = golden.golden_check(params(triton.url))
    triton.array_output = True
    assert golden.golden_check(params(triton.url))["answers"] == scalar["answers"]


def test_headers_are_sent_and_content_type_stays_json(triton):
    golden.golden_check(params(triton.url, prompts=["p"], headers={"deepseek-node": "gpu1", "Content-Type": "x"}))
    headers = {k.lower(): v for k, v in triton.requests[0]["headers"].items()}
    assert headers["deepseek-node"] == "gpu1"
    assert headers["content-type"] == "application/json"


def test_a_proxy_from_the_environment_is_not_used(triton, monkeypatch):
    with socket_closed() as dead:
        for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
            monkeypatch.setenv(name, f"http://127.0.0.1:{dead}")
        for name in ("no_proxy", "NO_PROXY"):
            monkeypatch.delenv(name, raising=False)
        assert golden.golden_check(params(triton.url, prompts=["p"]))["answers"]
    assert len(triton.requests) == 1


# The digest


def test_the_digest_is_sha256_of_the_canonical_json_of_the_ordered_pairs():
    pairs = [("b", "2"), ("a", "☀ 1")]
    canonical = '[{"answer":"2","prompt":"b"},{"answer":"☀ 1","prompt":"a"}]'.encode()
    assert golden.canonical_json(pairs) == canonical
    assert golden.digest(pairs) == hashlib.sha256(canonical).hexdigest()
    # Stable: a fixed value, so a record made by another release of this module still compares.
    assert golden.digest([("p", "a")]) == hashlib.sha256(b'[{"answer":"a","prompt":"p"}]').hexdigest()


def test_the_digest_changes_with_order_answers_and_prompt_answer_boundaries():
    base = golden.digest([("a", "1"), ("b", "2")])
    assert golden.digest([("b", "2"), ("a", "1")]) != base
    assert golden.digest([("a", "1"), ("b", "3")]) != base
    assert golden.digest([("a", "1b"), ("", "2")]) != base
    assert golden.digest([("a", "1"), ("b", "2")]) == base


def test_asking_in_another_order_changes_the_digest_not_the_answers(triton):
    forward = golden.golden_check(params(triton.url))
    backward = golden.golden_check(params(triton.url, prompts=list(reversed(PROMPTS))))
    assert forward["digest"] != backward["digest"]
    assert sorted(forward["answers"], key=lambda a: a["prompt"]) == sorted(
        backward["answers"], key=lambda a: a["prompt"]
    )


# The comparison


def record(result: dict) -> dict[str, str]:
    return {a["prompt"]: a["answer"] for a in result["answers"]}


def test_the_same_answers_are_equal(triton):
    expected = record(golden.golden_check(params(triton.url)))
    result = golden.golden_check(params(triton.url, expected=expected))
    assert result["equal"] is True
    assert result["mismatches"] == []


def test_other_weights_are_found_prompt_by_prompt(triton):
    expected = record(golden.golden_check(params(triton.url)))
    triton.weights = "standby-with-other-weights"
    result = golden.golden_check(params(triton.url, expected=expected))
    assert result["equal"] is False
    assert [m["prompt"] for m in result["mismatches"]] == PROMPTS
    first = result["mismatches"][0]
    assert first["expected"] == expected[PROMPTS[0]]
    assert first["got"] == generated(PROMPTS[0], 8, "standby-with-other-weights", greedy=True)


def test_one_changed_answer_is_the_only_mismatch():
    answers = [golden.answer_record(p, "answer " + p) for p in PROMPTS]
    expected = {p: "answer " + p for p in PROMPTS}
    expected[PROMPTS[1]] = "something else"
    assert golden.compare(answers, expected) == [
        {"prompt": PROMPTS[1], "expected": "something else", "got": "answer " + PROMPTS[1]}
    ]
    assert golden.compare(answers, {p: "answer " + p for p in PROMPTS}) == []


def test_a_prompt_without_a_record_and_a_recorded_prompt_not_asked_are_mismatches():
    answers = [golden.answer_record("asked", "x")]
    assert golden.compare(answers, {"recorded": "y"}) == [
        {"prompt": "asked", "expected": None, "got": "x"},
        {"prompt": "recorded", "expected": "y", "got": None},
    ]


def test_a_difference_in_whitespace_alone_is_a_mismatch():
    answers = [golden.answer_record("p", " Blue.")]
    assert golden.compare(answers, {"p": "Blue."}) == [{"prompt": "p", "expected": "Blue.", "got": " Blue."}]


def test_the_mismatch_message_names_the_first_mismatching_prompt():
    message = golden.mismatch_message(
        [{"prompt": "Count from one to five.", "expected": " one two", "got": " 1 2"}, {"prompt": "b"}], 3
    )
    assert message == (
        "2 of 3 golden prompts do not match: the answer to golden prompt 'Count from one to five.' differs: "
        "expected ' one two', got ' 1 2'"
    )
    assert "has no expected answer" in golden.mismatch_message([{"prompt": "p", "expected": None, "got": "x"}], 1)
    assert "not among the prompts" in golden.mismatch_message([{"prompt": "p", "expected": "x", "got": None}], 1)


# Errors


def test_a_400_with_tritons_error_object_names_prompt_url_status_and_message(triton):
    prompts = ["fine", "FAIL400 please", "never asked"]
    with pytest.raises(golden.GoldenError) as caught:
        golden.golden_check(params(triton.url, prompts=prompts))
    assert str(caught.value) == (
        f"golden prompt 2 of 3 ('FAIL400 please'): POST {triton.url}/v2/models/deepseek/generate: HTTP 400: "
        "Error generating request: sampling_param_max_tokens must be between 0 and 4"
    )
    assert len(triton.requests) == 2  # stops at the first failure


def test_an_error_body_that_is_not_json_is_quoted(triton):
    with pytest.raises(golden.GoldenError, match=r"HTTP 502: <html>502 Bad Gateway</html>$"):
        golden.golden_check(params(triton.url, prompts=["NOTJSON"]))


def test_an_unknown_model_is_reported_with_tritons_message(triton):
    with pytest.raises(golden.GoldenError, match=r"/v2/models/other/generate: HTTP 400: Request for unknown model"):
        golden.golden_check(params(triton.url, model="other"))


def test_an_error_object_in_a_200_answer_is_an_error(triton):
    with pytest.raises(golden.GoldenError, match="server answered with an error: generate expects model to produce"):
        golden.golden_check(params(triton.url, prompts=["MANY responses"]))


def test_a_timeout_names_the_prompt_and_the_limit(triton):
    triton.slow_s = 2.0
    start = time.monotonic()
    with pytest.raises(golden.GoldenError) as caught:
        golden.golden_check(params(triton.url, prompts=["ok", "SLOW one"], timeout=0.5))
    assert time.monotonic() - start < 1.9
    assert str(caught.value) == (
        f"golden prompt 2 of 2 ('SLOW one'): POST {triton.url}/v2/models/deepseek/generate: no answer within 0.5 s"
    )


def test_a_refused_connection_is_reported():
    server, thread = serve()
    url = server.url
    server.shutdown()
    server.server_close()
    thread.join()
    refused = r"golden prompt 1 of 3 .*: POST http://127\.0\.0\.1:\d+/.*: no answer: "
    with pytest.raises(golden.GoldenError, match=refused):
        golden.golden_check(params(url))


@pytest.mark.parametrize(
    ("prompts", "max_tokens", "message"),
    [
        ([], 8, "at least one prompt"),
        (["a", ""], 8, "non-empty string"),
        (["a", "b", "a"], 8, "must be unique; 'a' appears twice"),
        (["a"], 0, "max_tokens must be at least 1"),
    ],
)
def test_bad_options_are_refused_before_any_request(triton, prompts, max_tokens, message):
    with pytest.raises(ValueError, match=message):
        golden.golden_check(params(triton.url, prompts=prompts, max_tokens=max_tokens))
    assert triton.requests == []


def test_a_url_that_is_not_http_is_refused():
    with pytest.raises(ValueError, match="url must be http"):
        golden.generate_url("10.0.0.5:8000", "deepseek")


# TLS (the mutual-TLS proxy's side: TLS 1.3, client certificate required)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(subject: str, issuer: tuple | None, key, *, ca: bool = False, server: bool = False):
    now = datetime.datetime.now(datetime.UTC)
    issuer_cert, issuer_key = issuer if issuer else (None, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_cert.subject if issuer_cert else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        ).add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    else:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""
    out = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("golden test CA", None, ca_key, ca=True)
    files = {"ca": ca}
    for name, server in (("server", True), ("client", False)):
        key = ec.generate_private_key(ec.SECP256R1())
        files[name] = _certificate(f"golden {name}", (ca, ca_key), key, server=server)
        (out / f"{name}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    for name, cert in files.items():
        (out / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return {p.name: p for p in out.iterdir()}


def _server_context(pki: dict[str, Path], maximum: ssl.TLSVersion = ssl.TLSVersion.MAXIMUM_SUPPORTED):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.maximum_version = maximum
    context.load_cert_chain(pki["server.crt"], pki["server.key"])
    context.load_verify_locations(pki["ca.crt"])
    context.verify_mode = ssl.CERT_REQUIRED
    return context


@pytest.fixture
def tls_server(pki):
    servers = []

    def start(maximum: ssl.TLSVersion = ssl.TLSVersion.MAXIMUM_SUPPORTED) -> TritonServer:
        server, thread = serve(_server_context(pki, maximum))
        servers.append((server, thread))
        return server

    yield start
    for server, thread in servers:
        server.shutdown()
        server.server_close()
        thread.join()


def tls_params(server: TritonServer, pki: dict[str, Path], **extra) -> dict:
    files = {"ca_path": str(pki["ca.crt"]), "client_cert": str(pki["client.crt"]), "client_key": str(pki["client.key"])}
    return params(server.url, **{**files, **extra})


def test_answers_come_through_tls_13_with_a_client_certificate(pki, tls_server):
    server = tls_server()
    result = golden.golden_check(tls_params(server, pki))
    assert [a["answer"] for a in result["answers"]] == [generated(p, 8, "primary", greedy=True) for p in PROMPTS]


def test_without_a_client_certificate_the_proxy_side_refuses(pki, tls_server):
    server = tls_server()
    values = tls_params(server, pki)
    del values["client_cert"], values["client_key"]
    # TLS 1.3 reports the missing certificate after the handshake: an alert, or a closed connection.
    refused = r"golden prompt 1 of 3 .*: no answer: .*(CERTIFICATE_REQUIRED|certificate required|reset|EOF)"
    with pytest.raises(golden.GoldenError, match=refused):
        golden.golden_check(values)


def test_tls_12_is_refused(pki, tls_server):
    server = tls_server(ssl.TLSVersion.TLSv1_2)
    with pytest.raises(golden.GoldenError, match="no answer: .*(VERSION|version|PROTOCOL|protocol)"):
        golden.golden_check(tls_params(server, pki))


def test_a_server_outside_the_ca_is_refused_unless_validation_is_off(pki, tls_server, tmp_path):
    server = tls_server()
    other = tmp_path / "other-ca.crt"
    other_key = ec.generate_private_key(ec.SECP256R1())
    other.write_bytes(_certificate("other CA", None, other_key, ca=True).public_bytes(serialization.Encoding.PEM))
    with pytest.raises(golden.GoldenError, match="CERTIFICATE_VERIFY_FAILED"):
        golden.golden_check(tls_params(server, pki, ca_path=str(other)))
    assert golden.golden_check(tls_params(server, pki, ca_path=str(other), validate_certs=False))["answers"]


def test_a_missing_certificate_file_is_reported_with_the_options(pki, tls_server, tmp_path):
    server = tls_server()
    missing = str(tmp_path / "absent.crt")
    with pytest.raises(golden.GoldenError, match=r"cannot set up TLS for https://.*client_cert .*absent\.crt"):
        golden.golden_check(tls_params(server, pki, client_cert=missing))


# The module, run as Ansible runs it (its arguments in a file), against the same server


def run_module(tmp_path: Path, args: dict, check_mode: bool = False) -> dict:
    path = tmp_path / "args.json"
    path.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {**args, "_ansible_check_mode": check_mode}}))
    env = {"PYTHONPATH": str(ROOT / "collections"), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, str(MODULE), str(path)], capture_output=True, text=True, env=env, check=False, timeout=60
    )
    return json.loads(done.stdout)


def test_the_module_records_and_compares_in_check_mode_too(triton, tmp_path):
    recorded = run_module(tmp_path, {"url": triton.url, "prompts": PROMPTS, "max_tokens": 8})
    assert recorded["changed"] is False
    assert "failed" not in recorded
    assert recorded["digest"] == golden.digest([(a["prompt"], a["answer"]) for a in recorded["answers"]])
    checked = run_module(
        tmp_path,
        {"url": triton.url, "prompts": PROMPTS, "max_tokens": 8, "expected": record(recorded)},
        check_mode=True,
    )
    assert checked["changed"] is False
    assert checked["equal"] is True
    assert checked["mismatches"] == []
    assert checked["digest"] == recorded["digest"]


def test_the_module_fails_on_a_mismatch_naming_the_prompt_and_still_returns_the_answers(triton, tmp_path):
    expected = record(golden.golden_check(params(triton.url)))
    triton.weights = "other"
    args = {"url": triton.url, "prompts": PROMPTS, "max_tokens": 8, "expected": expected}
    failed = run_module(tmp_path, args)
    assert failed["failed"] is True
    assert failed["msg"].startswith(f"3 of 3 golden prompts do not match: the answer to golden prompt {PROMPTS[0]!r}")
    assert failed["equal"] is False
    assert len(failed["answers"]) == 3
    reported = run_module(tmp_path, {**args, "fail_on_mismatch": False})
    assert "failed" not in reported
    assert reported["equal"] is False
    assert [m["prompt"] for m in reported["mismatches"]] == PROMPTS


def test_the_module_reports_an_http_error_and_hides_header_values(triton, tmp_path):
    result = run_module(
        tmp_path, {"url": triton.url, "prompts": ["FAIL400"], "headers": {"deepseek-admin-key": "s3cret-value"}}
    )
    assert result["failed"] is True
    assert "golden prompt 1 of 1 ('FAIL400')" in result["msg"]
    assert "HTTP 400: Error generating request" in result["msg"]
    assert "s3cret-value" not in json.dumps(result)
    assert {k.lower(): v for k, v in triton.requests[0]["headers"].items()}["deepseek-admin-key"] == "s3cret-value"


def test_the_module_refuses_a_key_without_a_certificate(tmp_path):
    result = run_module(tmp_path, {"url": "https://127.0.0.1:1", "prompts": ["p"], "client_key": "/k.pem"})
    assert result["failed"] is True
    assert "client_key" in result["msg"]
    assert "client_cert" in result["msg"]
