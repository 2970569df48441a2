"""The inference probe on a host without a proxy: install, hardening, endpoints and deadlines."""

import json
import re
import time

import pytest

BASE = "http://127.0.0.1:9470"
UNIT = "deepseek-inference-probe"
VENV = "/opt/deepseek/inference-probe/venv"
REQUIREMENTS = "/opt/deepseek/inference-probe/requirements.txt"
OUT = "/root/probe.out"


def get(host, path, *headers):
    """Status, body and seconds of one GET to the exporter (curl on the host)."""
    extra = " ".join(f"-H '{h}'" for h in headers)
    start = time.monotonic()
    out = host.run(f"curl -sS --max-time 30 -o {OUT} -w '%{{http_code}}' {extra} '{BASE}{path}'")
    elapsed = time.monotonic() - start
    assert out.rc == 0, out.stderr
    return int(out.stdout), host.file(OUT).content_string, elapsed


def value(body, name):
    """A sample's value, or None when the series is absent."""
    match = re.search(rf"^{name} (\S+)$", body, re.M)
    return None if match is None else float(match.group(1))


def test_service_runs_as_its_own_user_hardened(host):
    assert host.service(UNIT).is_running
    assert host.service(UNIT).is_enabled
    props = host.run(
        f"systemctl show {UNIT} -p NoNewPrivileges -p ProtectSystem -p CapabilityBoundingSet -p MainPID"
    ).stdout
    for expected in ("NoNewPrivileges=yes", "ProtectSystem=strict", "CapabilityBoundingSet=\n"):
        assert expected in props + "\n"
    pid = re.search(r"MainPID=(\d+)", props).group(1)
    assert host.run(f"ps -o user= -p {pid}").stdout.strip() == "deepseek-probe"


def test_listens_on_loopback_only(host):
    sockets = host.socket.get_listening_sockets()
    assert "tcp://127.0.0.1:9470" in sockets
    assert not [s for s in sockets if s.endswith(":9470") and "127.0.0.1" not in s]


def test_virtualenv_holds_exactly_the_pins(host):
    freeze = host.run(f"{VENV}/bin/pip freeze --all --exclude pip --exclude setuptools --exclude wheel").stdout
    installed = dict(line.split("==") for line in freeze.split())
    pinned = dict(re.findall(r"^([\w.-]+)==(\S+)", host.file(REQUIREMENTS).content_string, re.M))
    normalise = lambda d: {k.lower().replace("_", "-"): v for k, v in d.items()}  # noqa: E731
    assert normalise(installed) == normalise(pinned)
    assert "tritonclient" in normalise(installed)


def test_the_probe_reads_its_own_copy_of_the_key(host):
    config = json.loads(host.file("/etc/deepseek/inference-probe/config.json").content_string)
    assert config["key_file"] == "/etc/deepseek/inference-probe/tls/client.key"
    key = host.file(config["key_file"])
    assert (key.user, key.group, key.mode) == ("root", "deepseek-probe", 0o640)
    assert key.content_string == host.file("/etc/deepseek/pki/private/probe.key").content_string
    assert set(config["modules"]) == {"proxy_http", "proxy_grpc", "node_http", "node_grpc"}
    assert config["modules"]["proxy_http"]["golden"] == "blue"
    assert "PRIVATE KEY" not in host.file("/etc/deepseek/inference-probe/config.json").content_string
    copies = host.run("find /etc/deepseek/inference-probe /opt/deepseek/inference-probe -name '*.key'")
    assert copies.stdout.split() == ["/etc/deepseek/inference-probe/tls/client.key"]


@pytest.mark.parametrize("module", ["proxy_http", "proxy_grpc"])
def test_a_dead_target_fails_at_once(host, module):
    status, body, elapsed = get(host, f"/probe?target=127.0.0.1:1&module={module}")
    assert status == 200
    assert value(body, "deepseek_probe_success") == 0
    assert value(body, "deepseek_probe_answer_well_formed") is None  # no answer: not a malformed one
    assert elapsed < 10


@pytest.mark.parametrize("module", ["proxy_http", "node_grpc"])
def test_a_hanging_target_fails_within_the_scrape_timeout(host, module):
    assert host.socket("tcp://127.0.0.1:9999").is_listening, "the hanging target (prepare.yml) is not running"
    status, body, elapsed = get(
        host, f"/probe?target=127.0.0.1:9999&module={module}&node=n1", "X-Prometheus-Scrape-Timeout-Seconds: 3"
    )
    assert status == 200
    assert value(body, "deepseek_probe_success") == 0
    assert 2 <= value(body, "deepseek_probe_duration_seconds") < 3
    assert elapsed < 6


def test_bad_requests_are_refused(host):
    assert get(host, "/probe?target=127.0.0.1:1&module=nope")[0] == 400
    assert get(host, "/probe?target=nohost&module=proxy_http")[0] == 400
    assert get(host, "/probe?target=127.0.0.1:1&module=node_http")[0] == 400


def test_own_metrics_count_checks(host):
    status, body, _ = get(host, "/metrics")
    assert status == 200
    checks = r'^deepseek_probe_checks_total\{module="proxy_http",result="(failure|timeout)"\} [1-9]'
    assert re.search(checks, body, re.M)
