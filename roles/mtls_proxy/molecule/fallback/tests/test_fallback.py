"""mtls_proxy graceful degradation: overflow to a fallback pool, marked, and unchanged 503s without one.

The scenario runs a second Triton at 127.0.0.2 (../default/converge.yml) with the lab model drawn from another seed
under the same name, so its answers differ from the primary's. The proxy is re-applied here with small
queues (reconfigure.yml), as an operator re-runs the role, and the primary pool is saturated by lowering
its servers' maxconn through HAProxy's runtime API (restored after each test). The last test re-applies
the role without a fallback; the module ends by re-applying the converged settings.
"""

import http.client
import json
import os
import queue
import shlex
import ssl
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
import tritonclient.grpc as grpcclient
from deepseek_testkit.fallback_check import together
from deepseek_testkit.model_inputs import generate_inputs as inputs
from tritonclient.grpc import service_pb2, service_pb2_grpc

SCENARIO = Path(__file__).resolve().parents[1]
EPHEMERAL = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"])
STORE = EPHEMERAL / "pki"
CA = str(STORE / "ca.crt")
MODEL = "deepseek"
AUDIT = "/var/log/haproxy/audit.log"
MARKER = "deepseek-fallback"
PROMPT = "overflow, please"
TOKENS = 1024  # the longest the lab model takes: each request holds its slot as long as it can
LOAD = 16
# Small queues: 1 request per primary node at once (runtime API), then 1 waiting, then overflow; 2 waiting
# is the most (503). The threshold stays below the queue's size, as docs/roles/mtls_proxy.md advises, so
# that requests deciding at the same instant cannot find the primary's queue full. Queued requests wait
# long enough not to time out. Client limits out of the way: the load comes from one machine.
SMALL_QUEUES = {
    "mtls_proxy_queue_max": 2,
    "mtls_proxy_fallback_queue": 1,
    "mtls_proxy_queue_timeout": "20s",
    "mtls_proxy_rate_limit": 100000,
    "mtls_proxy_client_max_concurrent": 64,
}
SERVER_MAXCONN = 64  # mtls_proxy_server_maxconn (the role's default), restored after each test


def client(name):
    return str(STORE / "clients" / f"{name}.crt"), str(STORE / "clients" / f"{name}.key")


def reconfigure(extra):
    """Re-apply the role (reconfigure.yml) with extra vars, from the controller, as molecule's converge does."""
    inventory = Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent
    argv = [
        str(Path(sys.executable).parent / "ansible-playbook"),
        "-i",
        str(inventory),
        str(SCENARIO / "reconfigure.yml"),
        "--skip-tags",
        "mtls_proxy_install",
        "-e",
        json.dumps(extra),
    ]
    run = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]


ADMIN = (
    "import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect('/run/haproxy/admin.sock'); "
    "s.sendall(sys.argv[1].encode() + b'\\n'); print(s.makefile().read())"
)


def admin(host, command):
    """One command on HAProxy's runtime API (the stats socket, level admin)."""
    return host.check_output(f"python3 -c {shlex.quote(ADMIN)} {shlex.quote(command)}")


def servers_up(host):
    metrics = host.check_output("curl -s -u metrics:molecule-metrics-password http://127.0.0.1:8404/metrics")
    return {
        line.split('proxy="')[1].split('"')[0] + "/" + line.split('server="')[1].split('"')[0]
        for line in metrics.splitlines()
        if line.startswith("haproxy_server_status{") and 'state="UP"} 1' in line
    }


def wait_until(condition, seconds=20):
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.5)
    return condition()


@pytest.fixture(scope="module")
def address(host):
    return host.check_output("hostname -I").split()[0]


@pytest.fixture(scope="module", autouse=True)
def converged_settings_afterwards():
    yield
    reconfigure({})


@pytest.fixture(scope="module")
def small_queues(host):
    reconfigure(SMALL_QUEUES)
    assert wait_until(lambda: {"triton_http/triton-local", "triton_http_fallback/triton-fallback"} <= servers_up(host))


@pytest.fixture(scope="module")
def answers(host):
    """The primary's and the fallback's answer to PROMPT, asked of each Triton on the host itself."""
    body = json.dumps({"text_input": PROMPT, "sampling_param_max_tokens": TOKENS})
    got = {}
    for name, where in (("primary", "127.0.0.1"), ("fallback", "127.0.0.2")):
        out = host.check_output(
            f"curl -sf -H 'Content-Type: application/json' -d '{body}' http://{where}:8000/v2/models/{MODEL}/generate"
        )
        got[name] = json.loads(out)["text_output"]
    assert got["primary"] != got["fallback"], "the two seeds gave the same text: the test could not tell them apart"
    return got


class maxconn:  # noqa: N801 (a context manager read as a phrase)
    """Lower servers' maxconn through the runtime API for a block, then restore it."""

    def __init__(self, host, *servers):
        self.host, self.servers = host, servers

    def __enter__(self):
        for server in self.servers:
            admin(self.host, f"set maxconn server {server} 1")

    def __exit__(self, *exc):
        for server in self.servers:
            admin(self.host, f"set maxconn server {server} {SERVER_MAXCONN}")


def http_generate(address, name="app2", path=f"/v2/models/{MODEL}/generate"):
    """One request on a new TLS connection: status, the marker header, the body."""
    context = ssl.create_default_context(cafile=CA)
    context.check_hostname = False
    context.load_cert_chain(*client(name))
    connection = http.client.HTTPSConnection(address, 8443, context=context, timeout=120)
    try:
        if path.endswith("/generate"):
            body = json.dumps({"text_input": PROMPT, "sampling_param_max_tokens": TOKENS})
            connection.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        else:
            connection.request("GET", path)
        answer = connection.getresponse()
        return answer.status, answer.getheader(MARKER), answer.read().decode(errors="replace")
    finally:
        connection.close()


def stub(address, name="app3"):
    cert, key = client(name)
    with open(CA, "rb") as ca, open(key, "rb") as k, open(cert, "rb") as c:
        credentials = grpc.ssl_channel_credentials(ca.read(), k.read(), c.read())
    return service_pb2_grpc.GRPCInferenceServiceStub(grpc.secure_channel(f"{address}:8443", credentials))


def infer_request():
    request = service_pb2.ModelInferRequest(model_name=MODEL)
    for tensor in inputs(grpcclient, PROMPT, TOKENS):
        request.inputs.extend([tensor._get_tensor()])  # noqa: SLF001 (tritonclient builds requests so)
        request.raw_input_contents.extend([tensor._get_content()])  # noqa: SLF001
    return request


def text_of(response):
    return grpcclient.InferResult(response).as_numpy("text_output")[0].decode()


def grpc_unary(address):
    """ModelInfer over gRPC: the status code name, the marker from the initial metadata, the text."""
    try:
        response, call = stub(address).ModelInfer.with_call(infer_request(), timeout=120)
    except grpc.RpcError as exc:
        metadata = dict(exc.initial_metadata() or ()) | dict(exc.trailing_metadata() or ())
        return exc.code().name, metadata.get(MARKER), exc.details()
    return "OK", dict(call.initial_metadata()).get(MARKER), text_of(response)


def grpc_stream(address):
    """One inference on a ModelStreamInfer stream: status, marker (initial metadata), the text."""
    call = stub(address).ModelStreamInfer(iter([infer_request()]), timeout=120)
    try:
        responses = list(call)
    except grpc.RpcError as exc:
        return exc.code().name, None, exc.details()
    assert len(responses) == 1, responses
    assert not responses[0].error_message, responses
    return "OK", dict(call.initial_metadata()).get(MARKER), text_of(responses[0].infer_response)


def grpc_open_stream(address):
    """One inference on a ModelStreamInfer stream kept open, as tritonclient's start_stream and
    async_stream_infer keep it: the client sends its one small message (about 100 bytes), waits for the
    answer, and only then ends its side. Status, marker (initial metadata), the text."""
    requests = queue.Queue()
    call = stub(address).ModelStreamInfer(iter(requests.get, None), timeout=120)
    requests.put(infer_request())
    try:
        response = next(call)
        marker = dict(call.initial_metadata()).get(MARKER)
    except grpc.RpcError as exc:
        return exc.code().name, None, exc.details()
    finally:
        requests.put(None)
    assert not response.error_message, response
    assert not list(call)  # nothing more once the client has ended its side
    return "OK", marker, text_of(response.infer_response)


def at_once(call, count=LOAD):
    return together(call, count)


def audit_lines(host):
    return [json.loads(line) for line in host.file(AUDIT).content_string.splitlines() if line.startswith("{")]


def new_audit_lines(host, before, count):
    """The audit lines written after the first ``before``, once there are ``count`` of them (rsyslog is async)."""
    wait_until(lambda: len(audit_lines(host)) >= before + count)
    return audit_lines(host)[before:]


def test_the_fallback_pool_is_configured_and_checked(host):
    config = host.file("/etc/haproxy/haproxy.cfg").content_string
    assert "use_backend triton_http_fallback if !is_grpc to_fallback" in config
    assert "server triton-fallback 127.0.0.2:8001 proto h2" in config
    assert wait_until(
        lambda: {"triton_http_fallback/triton-fallback", "triton_grpc_fallback/triton-fallback"} <= servers_up(host)
    )
    # The fallback Triton listens on its own address only, as a node behind the proxy does.
    assert host.socket("tcp://127.0.0.2:8000").is_listening
    assert not host.socket("tcp://0.0.0.0:8000").is_listening


def test_http_overflow_goes_to_the_fallback_marked_and_nothing_fails(host, address, small_queues, answers):
    before = len(audit_lines(host))
    with maxconn(host, "triton_http/triton-local"):
        results = at_once(lambda: http_generate(address, "app2"))
    assert [status for status, _, _ in results] == [200] * LOAD, results
    marked = [json.loads(body)["text_output"] for _, marker, body in results if marker == "overflow"]
    unmarked = [json.loads(body)["text_output"] for _, marker, body in results if marker is None]
    assert marked, results
    assert unmarked, results
    assert len(marked) + len(unmarked) == LOAD, results
    assert set(marked) == {answers["fallback"]}
    assert set(unmarked) == {answers["primary"]}
    lines = [line for line in new_audit_lines(host, before, LOAD) if line.get("path", "").endswith("/generate")]
    by_pool = {(line["backend"], line["server"], line["fallback"], line["status"]) for line in lines}
    assert by_pool == {
        ("triton_http_fallback", "triton-fallback", "overflow", 200),
        ("triton_http", "triton-local", "-", 200),
    }, lines
    assert sum(line["fallback"] == "overflow" for line in lines) == len(marked)


def test_grpc_overflow_is_marked_in_the_initial_metadata(host, address, small_queues, answers):
    before = len(audit_lines(host))
    with maxconn(host, "triton_grpc/triton-local"):
        results = at_once(lambda: grpc_unary(address))
    assert [code for code, _, _ in results] == ["OK"] * LOAD, results
    marked = [text for _, marker, text in results if marker == "overflow"]
    unmarked = [text for _, marker, text in results if marker is None]
    assert marked, results
    assert unmarked, results
    assert set(marked) == {answers["fallback"]}
    assert set(unmarked) == {answers["primary"]}
    lines = [line for line in new_audit_lines(host, before, LOAD) if line.get("path", "").endswith("/ModelInfer")]
    overflowed = [line for line in lines if line["fallback"] == "overflow"]
    assert len(overflowed) == len(marked)
    assert {(line["backend"], line["model"]) for line in overflowed} == {("triton_grpc_fallback", MODEL)}


def test_grpc_streams_kept_open_overflow_too(host, address, small_queues, answers):
    # The proxy reads a stream's first message while the primary is saturated; it must not wait for the
    # body to end (a stream's never does): every stream is answered, some by the fallback.
    before = len(audit_lines(host))
    with maxconn(host, "triton_grpc/triton-local"):
        results = at_once(lambda: grpc_open_stream(address))
    assert [code for code, _, _ in results] == ["OK"] * LOAD, results
    marked = [text for _, marker, text in results if marker == "overflow"]
    unmarked = [text for _, marker, text in results if marker is None]
    assert marked, results
    assert unmarked, results
    assert set(marked) == {answers["fallback"]}
    assert set(unmarked) == {answers["primary"]}
    lines = [line for line in new_audit_lines(host, before, LOAD) if line.get("path", "").endswith("/ModelStreamInfer")]
    overflowed = [line for line in lines if line["fallback"] == "overflow"]
    assert len(overflowed) == len(marked), lines
    assert {(line["backend"], line["model"], line["status"]) for line in overflowed} == {
        ("triton_grpc_fallback", MODEL, 200)
    }, lines


def test_with_no_primary_node_up_model_requests_go_to_the_fallback(host, address, small_queues, answers):
    for backend in ("triton_http", "triton_grpc"):
        admin(host, f"disable server {backend}/triton-local")
    try:
        status, marker, body = http_generate(address)
        assert (status, marker, json.loads(body)["text_output"]) == (200, "primary-down", answers["fallback"])
        assert grpc_unary(address) == ("OK", "primary-down", answers["fallback"])
        # A stream names its model only in its first message, which the proxy reads in this state.
        assert grpc_stream(address) == ("OK", "primary-down", answers["fallback"])
        assert grpc_open_stream(address) == ("OK", "primary-down", answers["fallback"])
        # Requests that name no model do not move: no node of the primary pool, 503 as before.
        assert http_generate(address, path="/v2/health/ready")[:2] == (503, None)
    finally:
        for backend in ("triton_http", "triton_grpc"):
            admin(host, f"enable server {backend}/triton-local")
    assert http_generate(address)[:2] == (200, None)


def test_a_full_fallback_pool_answers_503_marked(host, address, small_queues):
    before = len(audit_lines(host))
    with maxconn(host, "triton_http/triton-local", "triton_http_fallback/triton-fallback"):
        results = at_once(lambda: http_generate(address, "app3"))
    refused = [(marker, json.loads(body)) for status, marker, body in results if status == 503]
    assert ("overflow", {"error": "overloaded"}) in refused, results
    assert {status for status, _, _ in results} == {200, 503}, results
    lines = [line for line in new_audit_lines(host, before, LOAD) if line.get("path", "").endswith("/generate")]
    assert any(
        (line["status"], line["backend"], line["fallback"]) == (503, "triton_http_fallback", "overflow")
        for line in lines
    ), lines


@pytest.fixture(scope="module")
def no_fallback(host):
    reconfigure(SMALL_QUEUES | {"mtls_proxy_fallback_models": []})
    assert wait_until(lambda: "triton_http/triton-local" in servers_up(host))


def test_without_a_fallback_a_full_queue_still_answers_503(host, address, no_fallback, answers):
    config = host.file("/etc/haproxy/haproxy.cfg").content_string
    assert "_fallback" not in config
    assert MARKER not in config
    before = len(audit_lines(host))
    with maxconn(host, "triton_http/triton-local"):
        results = at_once(lambda: http_generate(address, "app2"))
    assert {marker for _, marker, _ in results} == {None}
    assert {status for status, _, _ in results} == {200, 503}, results
    assert {json.loads(body)["text_output"] for status, _, body in results if status == 200} == {answers["primary"]}
    assert all(json.loads(body) == {"error": "overloaded"} for status, _, body in results if status == 503)
    lines = [line for line in new_audit_lines(host, before, LOAD) if line.get("path", "").endswith("/generate")]
    assert {(line["backend"], line["fallback"]) for line in lines} == {("triton_http", "-")}, lines
