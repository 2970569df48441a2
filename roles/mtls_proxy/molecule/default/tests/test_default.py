"""mtls_proxy: real clients against HAProxy in front of a real Triton, over TLS 1.3 with client certificates."""

import json
import os
import socket
import ssl
import sys
import threading
import time
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

sys.path.insert(0, str(Path(__file__).resolve().parents[5] / "molecule" / "lab"))
from model_inputs import generate_inputs as inputs  # noqa: E402

EPHEMERAL = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"])
STORE = EPHEMERAL / "pki"
BAD = EPHEMERAL / "bad"
CA = str(STORE / "ca.crt")
MODEL = "deepseek"
AUDIT = "/var/log/haproxy/audit.log"


def client(name):
    return str(STORE / "clients" / f"{name}.crt"), str(STORE / "clients" / f"{name}.key")


@pytest.fixture(scope="module")
def address(host):
    return host.check_output("hostname -I").split()[0]


def grpc_client(address, cert, key):
    """tritonclient gRPC over TLS to the proxy, with a client certificate."""
    return grpcclient.InferenceServerClient(
        f"{address}:8443", ssl=True, root_certificates=CA, private_key=key, certificate_chain=cert
    )


def get(address, cert, key, path="/v2/health/ready", max_version=None, method="GET"):
    """One HTTPS request on a new connection: the status line, or the TLS error that refused it."""
    context = ssl.create_default_context(cafile=CA)
    context.check_hostname = False
    if cert:
        context.load_cert_chain(cert, key)
    if max_version:
        context.maximum_version = max_version
    try:
        with socket.create_connection((address, 8443), timeout=10) as raw, context.wrap_socket(raw) as tls:
            head = f"{method} {path} HTTP/1.1\r\nHost: triton\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            tls.sendall(head.encode())
            answer = tls.recv(4096).decode(errors="replace")
            return answer.split("\r\n", 1)[0] if answer else "closed"
    except (ssl.SSLError, OSError) as exc:
        return f"refused: {exc}"


def test_valid_client_infers_over_https_and_grpc_with_tls(address):
    cert, key = client("app3")
    http = httpclient.InferenceServerClient(
        f"{address}:8443", ssl=True, ssl_options={"keyfile": key, "certfile": cert, "ca_certs": CA}
    )
    answer = http.infer(MODEL, inputs(httpclient, "through the proxy", 8)).as_numpy("text_output")[0].decode()
    assert len(answer) == 8
    grpc = grpc_client(address, cert, key)
    again = grpc.infer(MODEL, inputs(grpcclient, "through the proxy", 8)).as_numpy("text_output")[0].decode()
    assert again == answer


@pytest.mark.parametrize(
    ("label", "cert", "key", "max_version"),
    [
        ("no certificate", None, None, None),
        ("another CA", str(BAD / "foreign.crt"), str(BAD / "foreign.key"), None),
        ("expired", str(BAD / "expired.crt"), str(BAD / "expired.key"), None),
        ("revoked", *client("leaver"), None),
        ("server-only certificate", str(BAD / "serveronly.crt"), str(BAD / "serveronly.key"), None),
        ("TLS 1.2 client", *client("app2"), ssl.TLSVersion.TLSv1_2),
    ],
)
def test_refused(address, label, cert, key, max_version):
    result = get(address, cert, key, max_version=max_version)
    assert result.startswith("refused"), f"{label}: {result}"


def test_the_same_client_is_admitted_when_nothing_is_wrong(address):
    assert get(address, *client("app2")) == "HTTP/1.1 200 OK"


def test_a_client_over_its_rate_gets_429_and_resource_exhausted_while_another_is_served(address):
    cert, key = client("app1")
    statuses = [get(address, cert, key) for _ in range(60)]
    assert "HTTP/1.1 429 Too Many Requests" in statuses
    assert statuses[0] == "HTTP/1.1 200 OK"
    grpc = grpc_client(address, cert, key)
    with pytest.raises(InferenceServerException) as refused:
        grpc.is_server_ready()
    assert "RESOURCE_EXHAUSTED" in str(refused.value.status())
    # A client under its limit is not slowed down by one over it.
    assert get(address, *client("app2")) == "HTTP/1.1 200 OK"


def test_management_api_only_for_the_named_clients(address):
    # app3 is in mtls_proxy_admin_api_clients; app2 is not, and may still infer and read metadata.
    assert get(address, *client("app3"), path="/v2/repository/index", method="POST") == "HTTP/1.1 200 OK"
    assert get(address, *client("app2"), path="/v2/repository/index", method="POST") == "HTTP/1.1 403 Forbidden"
    unload = f"/v2/repository/models/{MODEL}/unload"
    assert get(address, *client("app2"), path=unload, method="POST") == "HTTP/1.1 403 Forbidden"
    assert get(address, *client("app2"), path=f"/v2/models/{MODEL}/trace/setting") == "HTTP/1.1 403 Forbidden"
    assert get(address, *client("app2"), path=f"/v2/models/{MODEL}") == "HTTP/1.1 200 OK"
    cert, key = client("app2")
    grpc = grpc_client(address, cert, key)
    with pytest.raises(InferenceServerException) as refused:
        grpc.get_model_repository_index()
    assert "PERMISSION_DENIED" in str(refused.value.status())
    assert grpc.is_model_ready(MODEL)


def audit_lines(host):
    return [json.loads(line) for line in host.file(AUDIT).content_string.splitlines() if line.strip()]


def test_audit_log_has_one_json_line_per_request_with_the_subject(host, address):
    cert, key = client("app3")
    before = sum(1 for line in audit_lines(host) if "CN=app3" in line.get("client_dn", ""))
    for _ in range(5):
        assert get(address, cert, key, path=f"/v2/models/{MODEL}/ready") == "HTTP/1.1 200 OK"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        mine = [line for line in audit_lines(host) if "CN=app3" in line.get("client_dn", "")]
        if len(mine) >= before + 5:
            break
        time.sleep(0.5)
    assert len(mine) == before + 5
    last = mine[-1]
    assert last["client_dn"] == "CN=app3,O=deepseek"
    assert last["model"] == MODEL
    assert last["path"] == f"/v2/models/{MODEL}/ready"
    assert last["status"] == 200
    assert last["client_serial"]
    assert last["src"]
    assert "body" not in json.dumps(last)
    assert host.file(AUDIT).mode == 0o640


def test_reloads_under_load_lose_no_request(host, address):
    results, stop = [], threading.Event()

    def load(name):
        cert, key = client(name)
        while not stop.is_set():
            results.append(get(address, cert, key))
            time.sleep(0.2)

    threads = [threading.Thread(target=load, args=(name,)) for name in ("app2", "app3")]
    for thread in threads:
        thread.start()
    for _ in range(4):
        time.sleep(1)
        host.run_expect([0], "systemctl reload haproxy")
    time.sleep(1)
    stop.set()
    for thread in threads:
        thread.join()
    assert len(results) > 20
    assert set(results) == {"HTTP/1.1 200 OK"}, [r for r in results if r != "HTTP/1.1 200 OK"][:5]


def test_prometheus_metrics_on_the_admin_address_only(host):
    metrics = host.check_output("curl -s http://127.0.0.1:8404/metrics")
    assert 'haproxy_server_status{proxy="triton_http",server="triton-local",state="UP"} 1' in metrics
    assert host.socket("tcp://127.0.0.1:8404").is_listening
    assert not host.socket("tcp://0.0.0.0:8404").is_listening


def test_certificate_rotation_under_load_loses_no_request():
    """side_effect.yml renewed every certificate (new serials) while rotation_load.py kept requests going."""
    seen = json.loads((EPHEMERAL / "rotation.json").read_text())
    assert seen["failures"] == []
    assert seen["requests"] > 20
    assert seen["keepalive_requests"] > 20
    # Both the old and the new server certificate were presented during the run.
    assert len(seen["serials"]) == 2, seen["serials"]
