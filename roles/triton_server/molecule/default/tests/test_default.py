"""triton_server, native runtime, lab layout: a real Triton on CPU serving the lab model over HTTP and gRPC."""

import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from deepseek_testkit import ROOT, load_module
from deepseek_testkit.model_inputs import generate_inputs as inputs
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

ROLE = ROOT / "roles" / "triton_server"
tiny_moe = load_module(ROLE / "files" / "lab_model" / "tiny_moe.py")  # shipped with the lab model, not a package
MoEConfig, TinyMoE = tiny_moe.MoEConfig, tiny_moe.TinyMoE
# The recorded llmapi tensors: a plain module_utils file, no Ansible needed.
llmapi_interface = load_module(ROOT / "plugins" / "module_utils" / "llmapi_interface.py")

MODEL = "deepseek"
PROMPT = "What is a mixture of experts?"


@pytest.fixture(scope="module")
def address(host):
    return host.check_output("hostname -I").split()[0]


def wait_ready(address, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{address}:8000/v2/models/{MODEL}/ready", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise AssertionError(f"{MODEL} not ready within {timeout} s")


def expected(prompt, max_tokens):
    # side_effect.yml upgraded the model to version 2: the artifact written from seed 202. The answer is the
    # prompt, then the generated words (the llmapi contract echoes the prompt).
    return TinyMoE(MoEConfig(seed=202)).answer(prompt, max_tokens)


def success_count(address):
    with urllib.request.urlopen(f"http://{address}:8002/metrics", timeout=5) as answer:
        metrics = answer.read().decode()
    match = re.search(rf'^nv_inference_request_success{{model="{MODEL}",version="2"}} (\d+)', metrics, re.M)
    return int(match.group(1)) if match else 0


def test_service_runs_hardened_as_its_own_user(host):
    service = host.service("tritonserver")
    assert service.is_enabled
    assert service.is_running
    show = host.check_output("systemctl show tritonserver -p User -p NoNewPrivileges -p ProtectSystem")
    assert "User=triton" in show
    assert "NoNewPrivileges=yes" in show
    assert "ProtectSystem=strict" in show
    assert host.run("systemd-analyze verify /etc/systemd/system/tritonserver.service").rc == 0


def test_rendered_config_is_a_valid_triton_model_config(host):
    text = host.file(f"/var/lib/triton/models/{MODEL}/config.pbtxt").content_string
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert config.name == MODEL
    assert config.backend == "python"
    assert not config.model_transaction_policy.decoupled
    assert [i.name for i in config.input] == [name for name, _t, _d, _o in llmapi_interface.INPUTS]
    assert [o.name for o in config.output] == [name for name, _t, _d in llmapi_interface.OUTPUTS]
    assert config.response_cache.enable
    tokenizer = host.file(f"/var/lib/triton/models/{MODEL}/2/tokenizer/tokenizer.json")
    assert (tokenizer.user, tokenizer.group, tokenizer.mode) == ("root", "triton", 0o640)


def test_http_inference_gives_the_lab_models_exact_text(address):
    client = httpclient.InferenceServerClient(f"{address}:8000")
    result = client.infer(MODEL, inputs(httpclient, PROMPT, 12))
    assert result.as_numpy("text_output")[0].decode() == expected(PROMPT, 12)


def test_grpc_inference_gives_the_same_text(address):
    client = grpcclient.InferenceServerClient(f"{address}:8001")
    result = client.infer(MODEL, inputs(grpcclient, PROMPT, 12))
    assert result.as_numpy("text_output")[0].decode() == expected(PROMPT, 12)


def test_metrics_count_every_inference(address):
    before = success_count(address)
    client = httpclient.InferenceServerClient(f"{address}:8000")
    for n in range(3):
        client.infer(MODEL, inputs(httpclient, f"count me {n}", 4))
    assert success_count(address) == before + 3


def test_out_of_range_max_tokens_is_an_error_not_a_crash(address):
    client = grpcclient.InferenceServerClient(f"{address}:8001")
    with pytest.raises(InferenceServerException, match="sampling_param_max_tokens must be between 0 and 1024"):
        client.infer(MODEL, inputs(grpcclient, PROMPT, 5000))
    assert client.is_server_ready()


def test_the_llmapi_conformance_suite_passes_against_the_node(address):
    # tests/conformance, the client-side contract checks, against this node's Triton (not decoupled).
    env = os.environ | {
        "CONFORMANCE_HTTP_URL": f"http://{address}:8000",
        "CONFORMANCE_GRPC_URL": f"{address}:8001",
        "CONFORMANCE_MODEL": MODEL,
    }
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "tests" / "conformance")]
    run = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]


def test_streaming_is_refused_when_not_decoupled(address):
    client = grpcclient.InferenceServerClient(f"{address}:8001")
    with pytest.raises(InferenceServerException, match="Streaming is only supported in decoupled mode"):
        client.infer(MODEL, inputs(grpcclient, PROMPT, 3, streaming=True))


def test_restart_comes_back_ready_and_serving(host, address):
    host.run_expect([0], "systemctl restart tritonserver")
    wait_ready(address)
    client = httpclient.InferenceServerClient(f"{address}:8000")
    result = client.infer(MODEL, inputs(httpclient, "after restart", 8))
    assert result.as_numpy("text_output")[0].decode() == expected("after restart", 8)


def test_the_served_version_is_the_published_artifact_and_nothing_is_left_staged(host):
    config = text_format.Parse(
        host.file(f"/var/lib/triton/models/{MODEL}/config.pbtxt").content_string, model_config_pb2.ModelConfig()
    )
    assert list(config.version_policy.specific.versions) == [2]
    weights = host.file(f"/var/lib/triton/artifacts/{MODEL}/2/weights.npz")
    assert (weights.user, weights.group, weights.mode) == ("root", "triton", 0o640)
    assert host.file(f"/var/lib/triton/artifacts/{MODEL}/2/.published").exists
    # Version 1 was pruned; broken version 3 stayed in staging (kept to resume), never published.
    assert host.check_output(f"ls -A /var/lib/triton/artifacts/{MODEL}").split() == [".staging-3", "2"]
    assert host.check_output(f"ls /var/lib/triton/models/{MODEL}").split() == ["2", "config.pbtxt"]


def repository_index(address, headers=None):
    """POST /v2/repository/index (model-repository API): the HTTP status."""
    request = urllib.request.Request(
        f"http://{address}:8000/v2/repository/index", data=b"{}", headers=headers or {}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:  # noqa: S310 (the node under test)
            return answer.status
    except urllib.error.HTTPError as err:
        return err.code


def test_management_apis_need_the_admin_key_and_it_stays_out_of_the_unit(host, address):
    env = host.file("/etc/deepseek/triton-admin.env")
    assert (env.user, env.mode) == ("root", 0o600)
    key = env.content_string.strip().split("=", 1)[1]
    assert len(key) >= 32
    assert key not in host.file("/etc/systemd/system/tritonserver.service").content_string
    assert repository_index(address) == 403
    assert repository_index(address, {"deepseek-admin-key": "wrong"}) == 403
    assert repository_index(address, {"deepseek-admin-key": key}) == 200


def test_grpc_management_needs_the_key_too(address):
    client = grpcclient.InferenceServerClient(f"{address}:8001")
    with pytest.raises(InferenceServerException, match="restricted"):
        client.get_model_repository_index()
    assert client.is_model_ready(MODEL)


def test_triton_listens_on_the_backend_address_only(host, address):
    for port in (8000, 8001, 8002):
        assert host.socket(f"tcp://{address}:{port}").is_listening
        assert not host.socket(f"tcp://0.0.0.0:{port}").is_listening


def test_systemd_admits_only_the_allowed_sources(host, address):
    # A source the unit does not name (an address added on the node for the purpose) is refused by
    # systemd's cgroup firewall; the node's own backend address is admitted.
    props = dict(
        line.split("=", 1)
        for line in host.check_output("systemctl show -p IPAddressDeny -p IPAddressAllow tritonserver").splitlines()
    )
    # systemd prints the set in no fixed order.
    assert set(props["IPAddressDeny"].split()) == {"0.0.0.0/0", "::/0"}
    url = f"http://{address}:8000/v2/health/live"
    assert host.run(f"curl -s -o /dev/null -w '%{{http_code}}' --max-time 5 {url}").stdout == "200"
    host.run_expect([0, 2], "ip address add 192.0.2.77/32 dev lo")
    outsider = host.run(f"curl -s -o /dev/null --max-time 5 --interface 192.0.2.77 {url}")
    assert outsider.rc != 0
