"""The inference probe's exporter (roles/inference_probe/files/deepseek_inference_probe.py) without a server.

What needs a served model (answers through the proxies, per node, over HTTP and gRPC) is checked by the lab
(python -m deepseek_testkit.lab test); here: configuration, judging, exposition, and the deadlines against real sockets
that refuse, or accept and never answer.
"""

from __future__ import annotations

import importlib.util
import json
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT

SCRIPT = ROOT / "roles" / "inference_probe" / "files" / "deepseek_inference_probe.py"


def _load():
    spec = importlib.util.spec_from_file_location("deepseek_inference_probe", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


probe = _load()


@pytest.fixture
def hanging():
    """A listener that accepts connections and never answers; its host:port."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


@pytest.fixture
def refused():
    """host:port where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"127.0.0.1:{port}"


def config(tmp_path: Path, **modules: dict) -> object:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"tls": False, "modules": modules or {"m": {}}}))
    return probe.Config.load(str(path))


def test_module_settings_are_checked():
    with pytest.raises(ValueError, match="protocol"):
        probe.Module.from_config("m", {"protocol": "https"})
    with pytest.raises(ValueError, match="route"):
        probe.Module.from_config("m", {"route": "any"})
    with pytest.raises(ValueError, match="unknown keys"):
        probe.Module.from_config("m", {"targets": []})
    with pytest.raises(ValueError, match="max_tokens"):
        probe.Module.from_config("m", {"max_tokens": 0})


def test_request_is_greedy_generated_text_only_with_the_finish_reason():
    values = probe.Module.from_config("m", {"stream": True}).request()
    assert values["sampling_param_temperature"] == 0.0
    assert values["sampling_param_exclude_input_from_output"] is True
    assert values["return_finish_reason"] is True
    assert values["streaming"] is True
    assert "streaming" not in probe.Module.from_config("m", {"stream": False}).request()


def test_configuration_is_read_with_tls_on_by_default(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"ca_file": "/etc/ca.crt", "cert_file": "/etc/c.crt", "modules": {"m": {}}}))
    loaded = probe.Config.load(str(path))
    assert (loaded.ca_file, loaded.cert_file, loaded.tls) == ("/etc/ca.crt", "/etc/c.crt", True)
    path.write_text(json.dumps({"modules": {}}))
    with pytest.raises(ValueError, match="no modules"):
        probe.Config.load(str(path))


@pytest.mark.parametrize(
    ("target", "expected"),
    [("a:1", ("a", 1)), ("10.0.0.1:8443", ("10.0.0.1", 8443)), ("[::1]:8443", ("::1", 8443))],
)
def test_targets_split(target, expected):
    assert probe.split_target(target) == expected


@pytest.mark.parametrize("target", ["nohost", "a:", ":1", "a:b"])
def test_bad_targets_are_refused(target):
    with pytest.raises(ValueError, match="host:port"):
        probe.split_target(target)


@pytest.mark.parametrize(
    ("text", "reason", "golden", "success", "well_formed", "match"),
    [
        ("blue", "length", "", True, True, None),
        ("blue", "stop", "blue", True, True, True),
        ("blue", "length", "red", False, True, False),
        ("", "length", "", False, False, None),
        ("blue", "", "", False, False, None),
        ("blue", "cancelled", "", False, False, None),
    ],
)
def test_judging(text, reason, golden, success, well_formed, match):
    module = probe.Module.from_config("m", {"golden": golden})
    result = probe.judge(probe.Result(text=text, finish_reason=reason), module)
    assert (result.success, result.well_formed, result.golden_match) == (success, well_formed, match)
    assert bool(result.reason) != success


def test_exposition_follows_prometheus_naming():
    module = probe.Module.from_config("m", {"golden": "blue", "stream": True})
    result = probe.judge(
        probe.Result(text="blue", finish_reason="length", first_token=0.25, fallback=False, responses=3), module
    )
    result.duration = 1.5
    lines = probe.exposition(result, module).decode().splitlines()
    samples = dict(line.split(" ") for line in lines if not line.startswith("#"))
    assert samples == {
        "deepseek_probe_success": "1.0",
        "deepseek_probe_duration_seconds": "1.5",
        "deepseek_probe_answer_well_formed": "1.0",
        "deepseek_probe_time_to_first_token_seconds": "0.25",
        "deepseek_probe_golden_match": "1.0",
        "deepseek_probe_fallback": "0.0",
    }
    assert "# TYPE deepseek_probe_success gauge" in lines


def test_golden_and_fallback_are_absent_when_unknown():
    module = probe.Module.from_config("m", {"stream": False})
    body = probe.exposition(probe.Result(), module).decode()
    assert "well_formed" not in body  # no answer came: a failure, not a malformed answer
    assert "golden_match" not in body
    assert "fallback" not in body
    assert "time_to_first_token" not in body


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_refused_target_fails_at_once(tmp_path, refused, protocol):
    prober = probe.Prober(config(tmp_path, m={"protocol": protocol}))
    result = prober.probe(prober.config.modules["m"], refused, "", 5.0)
    assert not result.success
    assert result.reason
    assert result.duration < 4.5


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_hanging_target_fails_at_the_deadline(tmp_path, hanging, protocol):
    prober = probe.Prober(config(tmp_path, m={"protocol": protocol}))
    result = prober.probe(prober.config.modules["m"], hanging, "", 1.0)
    assert not result.success
    assert 0.9 <= result.duration < 2.0
    assert prober.checks.labels("m", "timeout")._value.get() + prober.checks.labels("m", "failure")._value.get() == 1


def test_a_second_check_of_a_busy_target_is_refused_not_queued(tmp_path, hanging):
    prober = probe.Prober(config(tmp_path, m={"protocol": "http", "timeout_seconds": 3}))
    module = prober.config.modules["m"]
    first = threading.Thread(target=prober.probe, args=(module, hanging, "", 3.0))
    first.start()
    time.sleep(0.3)
    start = time.monotonic()
    second = prober.probe(module, hanging, "", 3.0)
    assert time.monotonic() - start < 0.5
    assert "has not ended" in second.reason
    first.join()
    assert prober.checks.labels("m", "busy")._value.get() == 1


def test_the_http_endpoint_answers_probe_metrics_and_refusals(tmp_path, refused):
    loaded = config(tmp_path, m={"protocol": "http"}, n={"protocol": "grpc", "route": "node"})
    probe.Handler.prober = probe.Prober(loaded)
    server = probe.ThreadingHTTPServer(("127.0.0.1", 0), probe.Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        request = urllib.request.Request(  # noqa: S310 - local test server
            f"{base}/probe?target={refused}&module=m", headers={"X-Prometheus-Scrape-Timeout-Seconds": "2"}
        )
        with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 - local test server
            assert "deepseek_probe_success 0.0" in answer.read().decode()
        for path in (
            f"/probe?target={refused}&module=x",
            "/probe?target=nohost&module=m",
            f"/probe?target={refused}&module=n",
        ):
            with pytest.raises(urllib.error.HTTPError) as refusal:
                urllib.request.urlopen(base + path, timeout=10)  # noqa: S310 - local test server
            assert refusal.value.code == 400
        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as answer:  # noqa: S310 - local test server
            assert 'deepseek_probe_checks_total{module="m",result="failure"} 1.0' in answer.read().decode()
    finally:
        server.shutdown()
        server.server_close()


def test_checks_hanging_behind_one_proxy_do_not_starve_the_others(tmp_path, hanging, refused):
    """20 checks hanging behind one proxy (a site of 9 nodes: 2 pool + 18 node checks) leave workers free."""
    prober = probe.Prober(config(tmp_path, m={"protocol": "http", "timeout_seconds": 3}))
    module = prober.config.modules["m"]
    stuck = [threading.Thread(target=prober.probe, args=(module, hanging, f"gpu{i}", 3.0)) for i in range(20)]
    for thread in stuck:
        thread.start()
    time.sleep(0.3)
    other = prober.probe(module, refused, "", 1.0)
    assert "no answer within" not in other.reason, other.reason  # refused at once, not queued behind the others
    assert other.duration < 0.9
    for thread in stuck:
        thread.join()
