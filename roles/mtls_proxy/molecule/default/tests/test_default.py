"""mtls_proxy: real clients against HAProxy in front of a real Triton, over TLS 1.3 with client certificates."""

import json
import os
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from deepseek_testkit.model_inputs import generate_inputs as inputs
from tritonclient.utils import InferenceServerException

EPHEMERAL = Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"])
STORE = EPHEMERAL / "pki"
BAD = EPHEMERAL / "bad"
CA = str(STORE / "ca.crt")
MODEL = "deepseek"
AUDIT = "/var/log/haproxy/audit.log"


def client(name):
    # The revoked leaver's files as it kept them (side_effect.yml): the store deleted its key.
    where = STORE.parent / "pki-leaver" if name == "leaver" else STORE / "clients"
    return str(where / f"{name}.crt"), str(where / f"{name}.key")


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
    # The llmapi contract: the prompt, then the generated words (one per token).
    assert answer.startswith("through the proxy")
    assert len(answer.removeprefix("through the proxy").split()) == 8
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
    # Triton itself wants the key (restricted APIs): the proxy adds it for app3 over gRPC too.
    admin_cert, admin_key = client("app3")
    assert grpc_client(address, admin_cert, admin_key).get_model_repository_index() is not None


def test_the_admin_key_stays_out_of_the_configuration(host):
    env = host.file("/etc/haproxy/deepseek-admin.env")
    assert (env.user, env.mode) == ("root", 0o600)
    values = dict(line.split("=", 1) for line in env.content_string.splitlines())
    key, password = values["DEEPSEEK_TRITON_ADMIN_KEY"].strip('"'), values["DEEPSEEK_PROXY_ADMIN_PASSWORD"].strip('"')
    assert len(key) >= 16
    assert password == "molecule-metrics-password"  # noqa: S105 (the scenario's test value)
    config = host.file("/etc/haproxy/haproxy.cfg").content_string
    assert key not in config
    assert password not in config
    assert "${DEEPSEEK_TRITON_ADMIN_KEY}" in config


def audit_lines(host):
    return [json.loads(line) for line in host.file(AUDIT).content_string.splitlines() if line.strip()]


def settled_count(host, subject, seconds=10.0):
    """The number of audit lines of a subject once no more arrive (a request of an earlier test may still be on its
    way through rsyslog)."""
    deadline = time.monotonic() + seconds
    count = -1
    while time.monotonic() < deadline:
        now = sum(1 for line in audit_lines(host) if subject in line.get("client_dn", ""))
        if now == count:
            return now
        count = now
        time.sleep(1)
    return count


def test_audit_log_has_one_json_line_per_request_with_the_subject(host, address):
    cert, key = client("app3")
    before = settled_count(host, "CN=app3")
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
    assert host.check_output("curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8404/metrics") == "401"
    metrics = host.check_output("curl -s -u metrics:molecule-metrics-password http://127.0.0.1:8404/metrics")
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


def raw(address, cert, key, head):
    """Send a request head as given on a new TLS connection; the status line."""
    context = ssl.create_default_context(cafile=CA)
    context.check_hostname = False
    context.load_cert_chain(cert, key)
    with socket.create_connection((address, 8443), timeout=10) as conn, context.wrap_socket(conn) as tls:
        tls.sendall(head.encode())
        return tls.recv(4096).decode(errors="replace").split("\r\n", 1)[0]


def test_bodies_over_the_limit_or_without_a_length_are_refused(address):
    path = f"/v2/models/{MODEL}/generate"
    big = f"POST {path} HTTP/1.1\r\nHost: triton\r\nContent-Length: 9000000\r\nConnection: close\r\n\r\n"
    assert raw(address, *client("app2"), big) == "HTTP/1.1 413 Payload Too Large"
    chunked = f"POST {path} HTTP/1.1\r\nHost: triton\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    assert raw(address, *client("app2"), chunked) == "HTTP/1.1 411 Length Required"


def test_one_certificate_cannot_take_every_slot(address):
    # app4 may have 4 requests in flight (mtls_proxy_client_max_concurrent); it sends 16 long ones at once.
    # The rest get 429 at once, and app2 is served meanwhile.
    cert, key = client("app4")
    statuses, lock = [], threading.Lock()

    def long_request():
        http = httpclient.InferenceServerClient(
            f"{address}:8443",
            ssl=True,
            ssl_options={"keyfile": key, "certfile": cert, "ca_certs": CA},
            network_timeout=120,
        )
        try:
            http.infer(MODEL, inputs(httpclient, "hold a slot", 1024))
            outcome = 200
        except InferenceServerException as exc:
            outcome = int(exc.status() or 0)
        with lock:
            statuses.append(outcome)

    threads = [threading.Thread(target=long_request) for _ in range(16)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    served_meanwhile = get(address, *client("app2"), path=f"/v2/models/{MODEL}/ready")
    for thread in threads:
        thread.join()
    assert served_meanwhile == "HTTP/1.1 200 OK"
    assert statuses.count(429) >= 1, statuses
    assert 1 <= statuses.count(200) <= 16 - statuses.count(429), statuses


def test_audit_has_exactly_one_line_per_request_at_concurrency_32(host, address):
    cert, key = client("app1")
    count = lambda: sum(1 for line in audit_lines(host) if "CN=app1" in line.get("client_dn", ""))  # noqa: E731
    before, total = settled_count(host, "CN=app1"), 320
    barrier, statuses, lock = threading.Barrier(32), [], threading.Lock()

    def worker():
        barrier.wait()
        for _ in range(total // 32):
            status = get(address, cert, key, path=f"/v2/models/{MODEL}/ready")
            with lock:
                statuses.append(status)

    threads = [threading.Thread(target=worker) for _ in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Every request got an HTTP answer (200, or 429 past app1's rate limit): each must have its line.
    assert all(status.startswith("HTTP/1.1 ") for status in statuses), sorted(set(statuses))
    # rsyslog writes the lines behind the requests; on a loaded machine that takes a while (none may be missing).
    deadline = time.monotonic() + 60
    while count() < before + total and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(1)
    assert count() == before + total


def test_a_local_process_cannot_write_audit_lines(host):
    host.run_expect([0], """logger -t haproxy-audit '{"forged":"line"}'""")
    time.sleep(2)
    assert "forged" not in host.file(AUDIT).content_string
    directory = host.file("/var/lib/haproxy/audit")
    assert (directory.user, directory.group, directory.mode) == ("root", "haproxy", 0o750)


def closed_by_proxy(conn, wait):
    """Whether the proxy closes ``conn`` (EOF or reset) within ``wait`` seconds, sending nothing first."""
    conn.settimeout(wait)
    try:
        return conn.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_a_half_open_handshake_is_cut(address):
    # The client connects and never sends its ClientHello: the proxy closes it after timeout client (10 s),
    # not after the 600 s it used to allow.
    with socket.create_connection((address, 8443), timeout=5) as conn:
        start = time.monotonic()
        assert closed_by_proxy(conn, 60)
        assert time.monotonic() - start < 30


def test_one_source_cannot_hold_every_connection(address):
    # mtls_proxy_source_maxconn is 48: of 60 idle connections from this machine, at least the 12 over the
    # cap are closed at once (more if earlier tests' clients still hold connections), and not all of them.
    conns = [socket.create_connection((address, 8443), timeout=5) for _ in range(60)]
    try:
        closed = sum(closed_by_proxy(conn, 0.5) for conn in conns)
    finally:
        for conn in conns:
            conn.close()
    assert 12 <= closed < 60
