"""The GPU check (tests/gpu) without a GPU: its verdicts on canned outputs, what it writes, and run.sh here."""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
import types

import numpy as np
import pytest
import yaml
from ansible_collections.deepseek.cluster.plugins.module_utils.gpu_topology import build_facts
from conftest import FIXTURES, ROOT
from deepseek_testkit import load_module
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

GPU = ROOT / "tests" / "gpu"
gpu_check = load_module(GPU / "gpu_check.py")  # a script run on GPU hosts, not a package

Failed = gpu_check.Failed
Result = gpu_check.Result
MIB = 1 << 20


def results(*statuses):
    return [Result(status, f"check_{i}", f"detail {i}", 1.5, 10) for i, status in enumerate(statuses)]


def gpu_on_this_machine():
    if shutil.which("nvidia-smi") is None:
        return False
    listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=False)
    return bool(gpu_check.parse_gpu_list(listed.stdout))


# ---------------------------------------------------------------------------------------------------------
# Counting, the closing lines, the summary, the exit code


def test_closing_lines_count_passed_failed_and_skipped_apart():
    mixed = results("PASS", "FAIL", "SKIP", "PASS", "SKIP")
    assert gpu_check.closing_lines(mixed) == ["2 skipped", "2 passed, 1 failed"]
    assert gpu_check.exit_code(mixed) == 1


def test_skips_do_not_fail_the_run_and_failures_do():
    assert gpu_check.exit_code(results("PASS", "SKIP")) == 0
    assert gpu_check.exit_code(results("SKIP", "SKIP")) == 0
    assert gpu_check.exit_code(results("PASS", "PASS", "FAIL")) == 1
    assert gpu_check.closing_lines([]) == ["0 skipped", "0 passed, 0 failed"]


def test_summary_has_every_line_the_seconds_and_the_closing_line_last():
    text = gpu_check.summary_text(["# GPU check header"], results("PASS", "FAIL", "SKIP"))
    lines = text.splitlines()
    assert lines[0] == "# GPU check header"
    assert lines[1:4] == ["PASS check_0: detail 0", "FAIL check_1: detail 1", "SKIP check_2: detail 2"]
    assert any(re.match(r"^#\s+check_1\s+1\.5 s \(10 s\)$", line) for line in lines)
    assert re.match(r"^#\s+total\s+4\.5 s \(\d+ s\)$", lines[-3])
    assert lines[-2:] == ["1 skipped", "1 passed, 1 failed"]


def test_a_result_is_one_line_whatever_its_detail_holds():
    assert Result("FAIL", "cuda", "first\nsecond\t third ").line() == "FAIL cuda: first second third"


def test_every_check_together_stays_under_eight_minutes():
    worst = gpu_check.worst_case_seconds()
    assert worst >= sum(check.timeout_s + check.kill_after for check in gpu_check.CHECKS)
    assert worst < 8 * 60
    assert [check.name for check in gpu_check.CHECKS] == [
        "nvidia_host_facts",
        "gpu_topology",
        "nvidia_driver_verify",
        "cdi",
        "cuda",
        "triton",
    ]


# ---------------------------------------------------------------------------------------------------------
# A check's child process under timeout(1)


def test_a_childs_line_is_its_result(tmp_path):
    result = gpu_check.run_child("cdi", ["echo", "PASS cdi: 3 devices"], 10, tmp_path / "cdi.stderr")
    assert (result.status, result.detail, result.timeout_s) == ("PASS", "3 devices", 10)


def test_a_child_past_its_timeout_fails_quickly(tmp_path):
    start = time.monotonic()
    result = gpu_check.run_child("cuda", ["sleep", "30"], 1, tmp_path / "cuda.stderr", kill_after=1)
    assert time.monotonic() - start < 10
    assert result.status == "FAIL"
    assert result.detail.startswith("timed out after 1 s")


def test_a_child_that_ignores_term_is_killed(tmp_path):
    script = "trap '' TERM; sleep 30"
    start = time.monotonic()
    result = gpu_check.run_child("cuda", ["sh", "-c", script], 1, tmp_path / "cuda.stderr", kill_after=1)
    assert time.monotonic() - start < 10
    assert result.status == "FAIL"
    assert "timed out" in result.detail


def test_a_child_without_a_line_or_with_another_checks_line_fails(tmp_path):
    crashed = gpu_check.run_child("cuda", ["sh", "-c", "echo boom >&2; exit 3"], 10, tmp_path / "a.stderr")
    assert crashed.status == "FAIL"
    assert crashed.detail == "exited 3 without a result line: boom"
    other = gpu_check.run_child("cuda", ["echo", "PASS cdi: fine"], 10, tmp_path / "b.stderr")
    assert other.status == "FAIL"


def test_the_last_line_of_the_check_counts():
    text = "noise\nSKIP cuda: first\nPASS cdi: other check\nFAIL cuda: last\n"
    assert gpu_check.parse_line(text, "cuda") == ("FAIL", "last")
    assert gpu_check.parse_line("PASScuda: x\n", "cuda") is None


def test_an_unexpected_error_in_a_check_is_a_fail_line(tmp_path, monkeypatch):
    def broken(out):
        raise KeyError("gpu_count")

    check = gpu_check.Check("cuda", 5, broken)
    monkeypatch.setattr(gpu_check, "CHECKS", (check,))
    result = gpu_check.run_single("cuda", tmp_path)
    assert result.line() == "FAIL cuda: KeyError: 'gpu_count'"


# ---------------------------------------------------------------------------------------------------------
# Checks 1 to 3: verdicts on what the modules and the driver role report

HOST_FACTS = {
    "container": "",
    "gpus": [{"pci_bus_id": "0000:18:00.0", "device_id": "0x2335", "open_module_capable": True}],
    "gpu_count": 1,
    "nvswitches": [],
    "nvswitch_present": False,
    "kernel_module": {"loaded": True, "version": "580.95.05", "flavor": "open"},
    "secure_boot": "disabled",
}


def test_host_facts_with_a_gpu_and_the_module_pass():
    detail = gpu_check.evaluate_host_facts(HOST_FACTS)
    assert detail.startswith("1 GPU(s) on the PCI bus, kernel module 580.95.05 (open)")


def test_host_facts_without_a_gpu_or_without_the_module_fail():
    with pytest.raises(Failed, match="no NVIDIA GPU on the PCI bus"):
        gpu_check.evaluate_host_facts({**HOST_FACTS, "gpu_count": 0, "gpus": []})
    unloaded = {**HOST_FACTS, "kernel_module": {"loaded": False, "version": "", "flavor": ""}}
    with pytest.raises(Failed, match="kernel module is not loaded"):
        gpu_check.evaluate_host_facts(unloaded)


def test_topology_of_a_captured_board_passes_and_an_empty_one_fails():
    board = build_facts((FIXTURES / "nvidia-smi" / "topo-8xH100-SXM-nvswitch.txt").read_text())
    detail = gpu_check.evaluate_topology(board)
    assert detail.startswith("8 GPU(s), driver ?, NVLink domains [[0, 1, 2, 3, 4, 5, 6, 7]], NVSwitch true")
    with pytest.raises(Failed, match="nvidia-smi not found"):
        gpu_check.evaluate_topology({"present": False, "reason": "nvidia-smi not found", "gpu_count": 0})


RECAP = """
TASK [deepseek.cluster.nvidia_driver : Report the result] *****
ok: [localhost] => {
    "msg": "driver 580.95.05 (open) on 1 GPU(s): 0, 580.95.05, Enabled"
}

PLAY RECAP *********************************************************************
localhost                  : ok=14   changed=0    unreachable=0    failed=0    skipped=21   rescued=0    ignored=0
"""


def test_the_recap_is_read_for_the_host():
    recap = gpu_check.parse_recap(RECAP)
    assert recap == {"ok": 14, "changed": 0, "unreachable": 0, "failed": 0, "skipped": 21, "rescued": 0, "ignored": 0}
    assert gpu_check.parse_recap(RECAP.replace("changed=0", "changed=2"))["changed"] == 2
    with pytest.raises(Failed, match="no PLAY RECAP"):
        gpu_check.parse_recap("ERROR! the role 'deepseek.cluster.nvidia_driver' was not found")


def test_verify_mode_must_change_and_fail_nothing():
    recap = gpu_check.parse_recap(RECAP)
    assert gpu_check.evaluate_recap(recap) == recap
    assert gpu_check.driver_report(RECAP) == "driver 580.95.05 (open) on 1 GPU(s)"
    for counter in ("changed=0", "failed=0", "unreachable=0"):
        bad = gpu_check.parse_recap(RECAP.replace(counter, counter.replace("0", "1")))
        with pytest.raises(Failed, match="must change nothing"):
            gpu_check.evaluate_recap(bad)


def test_a_playbooks_failure_is_told_by_its_message():
    text = (
        'fatal: [localhost]: FAILED! => {"assertion": "x", "changed": false, '
        '"msg": "nvidia-persistenced is inactive on localhost although the driver is loaded"}\n'
    )
    assert gpu_check.playbook_error(text) == (
        "nvidia-persistenced is inactive on localhost although the driver is loaded"
    )
    assert gpu_check.playbook_error("a\nb\nc\nd\n") == "b | c | d"


def test_persistence_mode_must_be_enabled_on_every_gpu():
    assert gpu_check.evaluate_persistence("0, Enabled\n1, Enabled\n") == 2
    with pytest.raises(Failed, match=r"not Enabled on GPU\(s\) 1 "):
        gpu_check.evaluate_persistence("0, Enabled\n1, Disabled\n")
    with pytest.raises(Failed, match="no persistence mode"):
        gpu_check.evaluate_persistence("\n")


# ---------------------------------------------------------------------------------------------------------
# Check 4: CDI

CDI_LIST = """\
INFO[0000] Found 5 CDI devices
nvidia.com/gpu=0
nvidia.com/gpu=1
nvidia.com/gpu=GPU-3b9c1a0e-8d6f-4b6f-9d8e-1b2c3d4e5f60
nvidia.com/gpu=GPU-9a1b2c3d-4e5f-6071-8293-a4b5c6d7e8f9
nvidia.com/gpu=all
"""


def test_cdi_list_with_all_and_every_gpu_passes():
    devices = gpu_check.evaluate_cdi_list(CDI_LIST, 2)
    assert "nvidia.com/gpu=all" in devices
    assert len(devices) == 5


def test_cdi_list_without_all_or_with_too_few_devices_fails():
    with pytest.raises(Failed, match="expected nvidia.com/gpu=all"):
        gpu_check.evaluate_cdi_list(CDI_LIST.replace("nvidia.com/gpu=all\n", ""), 2)
    with pytest.raises(Failed, match="of the 8 GPU"):
        gpu_check.evaluate_cdi_list(CDI_LIST, 8)


def test_a_changed_system_spec_is_seen(tmp_path):
    spec = tmp_path / "etc-cdi" / "nvidia.yaml"
    spec.parent.mkdir()
    spec.write_text("cdiVersion: 0.5.0\n")
    before = gpu_check.tree_state([spec.parent, tmp_path / "missing"])
    assert gpu_check.tree_state([spec.parent]) == before
    spec.write_text("cdiVersion: 0.6.0\nkind: nvidia.com/gpu\n")
    assert gpu_check.tree_state([spec.parent]) != before


# ---------------------------------------------------------------------------------------------------------
# Check 5: CUDA


def test_arch_is_native_where_nvcc_has_it_else_the_gpus_compute_capability():
    assert gpu_check.arch_flag((12, 8), "9.0") == "-arch=native"
    assert gpu_check.arch_flag((11, 6), "") == "-arch=native"
    assert gpu_check.arch_flag((11, 4), "8.0") == "-arch=sm_80"
    assert gpu_check.arch_flag(None, "9.0\n") == "-arch=sm_90"
    with pytest.raises(Failed, match="no compute_cap"):
        gpu_check.arch_flag((11, 4), "[N/A]")


def test_nvcc_release_is_read_from_its_version():
    text = "nvcc: NVIDIA (R) Cuda compiler driver\nCuda compilation tools, release 12.8, V12.8.93\n"
    assert gpu_check.nvcc_release(text) == (12, 8)
    assert gpu_check.nvcc_release("") is None


def test_nvcc_from_cuda_home_comes_first(tmp_path):
    nvcc = tmp_path / "cuda-12.8" / "bin" / "nvcc"
    nvcc.parent.mkdir(parents=True)
    nvcc.write_text("#!/bin/sh\n")
    nvcc.chmod(0o755)
    assert gpu_check.find_nvcc({"CUDA_HOME": str(nvcc.parent.parent), "PATH": ""}) == nvcc
    assert gpu_check.version_key("cuda-12.10") > gpu_check.version_key("cuda-12.9")


def test_the_cuda_source_is_written_with_the_executable_name(tmp_path):
    source, binary = gpu_check.write_cuda_source(tmp_path / "cuda")
    assert (source, binary) == (tmp_path / "cuda" / "vector_add.cu", tmp_path / "cuda" / "vector_add")
    text = source.read_text()
    assert text == (GPU / "vector_add.cu").read_text()
    assert "__global__ void vector_add" in text
    assert "cudaMalloc" in text
    assert "cudaGetDeviceProperties" in text


@pytest.mark.skipif(gpu_check.find_nvcc(dict(os.environ)) is None, reason="no nvcc on this machine")
def test_the_cuda_source_compiles(tmp_path):
    source, binary = gpu_check.write_cuda_source(tmp_path)
    nvcc = gpu_check.find_nvcc(dict(os.environ))
    build = subprocess.run(
        [str(nvcc), "-arch=sm_80", "-o", str(binary), str(source)], capture_output=True, text=True, check=False
    )
    assert build.returncode == 0, build.stderr
    assert binary.is_file()


def test_the_programs_line_is_read_and_its_error_is_the_reason():
    values = gpu_check.parse_vector_add(
        'OK device="NVIDIA H200" cc=9.0 n=4194304 bytes=50331648 runtime=12080 driver=12080\n'
    )
    assert values == {
        "device": "NVIDIA H200",
        "cc": "9.0",
        "n": "4194304",
        "bytes": "50331648",
        "runtime": "12080",
        "driver": "12080",
    }
    error = "ERROR cudaSetDevice(device): no CUDA-capable device is detected (cudaErrorNoDevice)\n"
    with pytest.raises(Failed, match="no CUDA-capable device"):
        gpu_check.parse_vector_add(error)


# ---------------------------------------------------------------------------------------------------------
# Check 6: Triton


def parsed_config(repository):
    text = (repository / "gpu_alloc" / "config.pbtxt").read_text()
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def test_the_model_repository_is_a_python_model_on_a_gpu_instance(tmp_path):
    repository = gpu_check.write_model_repository(tmp_path / "triton")
    assert repository == tmp_path / "triton" / "models"
    assert (repository / "gpu_alloc" / "1" / "model.py").is_file()
    config = parsed_config(repository)
    assert config.name == gpu_check.TRITON_MODEL
    assert config.backend == "python"
    assert config.max_batch_size == 0
    assert [group.kind for group in config.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_GPU]
    assert list(config.instance_group[0].gpus) == [0]


def test_the_request_and_the_config_name_the_same_tensors(tmp_path):
    config = parsed_config(gpu_check.write_model_repository(tmp_path))
    request = gpu_check.infer_request(256 * MIB, 4000)
    types_ = {
        model_config_pb2.TYPE_INT64: "INT64",
        model_config_pb2.TYPE_INT32: "INT32",
        model_config_pb2.TYPE_STRING: "BYTES",
    }
    assert {i.name: types_[i.data_type] for i in config.input} == {
        item["name"]: item["datatype"] for item in request["inputs"]
    }
    assert [o.name for o in config.output] == [item["name"] for item in request["outputs"]]


def test_the_response_must_hold_the_bytes_asked_for():
    good = {
        "outputs": [
            {"name": "ALLOCATED", "datatype": "INT64", "shape": [1], "data": [256 * MIB]},
            {"name": "METHOD", "datatype": "BYTES", "shape": [1], "data": ["cuda-driver"]},
            {"name": "DEVICE", "datatype": "BYTES", "shape": [1], "data": ["NVIDIA H200"]},
        ]
    }
    assert gpu_check.evaluate_response(good, 256 * MIB)["DEVICE"] == "NVIDIA H200"
    with pytest.raises(Failed, match="expected ALLOCATED"):
        gpu_check.evaluate_response(good, 512 * MIB)
    short = {"outputs": good["outputs"][:1]}
    with pytest.raises(Failed, match="no allocation method"):
        gpu_check.evaluate_response(short, 256 * MIB)


def test_the_server_listens_on_loopback_only_with_explicit_model_control(tmp_path):
    argv = gpu_check.server_argv(tmp_path / "tritonserver", tmp_path / "models", tmp_path / "backends", [1, 2, 3])
    assert argv[0] == str(tmp_path / "tritonserver")
    for flag in ("--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1"):
        assert flag in argv
    assert {"--http-port=1", "--grpc-port=2", "--metrics-port=3"} <= set(argv)
    assert "--model-control-mode=explicit" in argv
    assert "--load-model=gpu_alloc" in argv
    assert len(set(gpu_check.free_ports(3))) == 3


def fake_wheel(root, python="3.11"):
    """A virtualenv with the nvidia-pytriton wheel's tritonserver tree, as the native runtime installs it."""
    tree = root / "venv" / "lib" / f"python{python}" / "site-packages" / "pytriton" / "tritonserver"
    for path in (
        tree / "bin" / "tritonserver",
        tree / "backends" / "python" / "libtriton_python.so",
        tree / "backends" / "python" / "triton_python_backend_utils.py",
        tree / "python_backend_stubs" / python / "triton_python_backend_stub",
    ):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
        path.chmod(0o755)
    return tree / "bin" / "tritonserver"


def test_the_native_runtimes_tritonserver_is_found_in_the_roles_home(tmp_path):
    binary = fake_wheel(tmp_path)
    env = {"GPU_CHECK_TRITON_HOME": str(tmp_path), "PATH": ""}
    assert gpu_check.find_tritonserver(env) == binary
    assert gpu_check.wheel_venv(binary) == (tmp_path / "venv", "3.11")
    assert gpu_check.wheel_venv(tmp_path / "opt" / "tritonserver" / "bin" / "tritonserver") is None
    assert gpu_check.find_tritonserver({"GPU_CHECK_TRITON_HOME": str(tmp_path / "none"), "PATH": ""}) is None
    with pytest.raises(Failed, match="not an executable file"):
        gpu_check.find_tritonserver({"GPU_CHECK_TRITONSERVER": str(tmp_path / "nothing"), "PATH": ""})


def test_the_python_backend_is_linked_as_the_role_links_it(tmp_path):
    binary = fake_wheel(tmp_path)
    env = {"GPU_CHECK_TRITON_HOME": str(tmp_path)}
    backends = gpu_check.python_backends(binary, env, tmp_path / "out")
    python = backends / "python"
    assert backends == tmp_path / "out" / "triton" / "backends"
    assert sorted(p.name for p in python.iterdir()) == [
        "libtriton_python.so",
        "triton_python_backend_stub",
        "triton_python_backend_utils.py",
    ]
    assert os.readlink(python / "triton_python_backend_stub").endswith(
        "python_backend_stubs/3.11/triton_python_backend_stub"
    )
    # The role's own links win when they are there (<triton_server_home>/backends).
    roles = tmp_path / "backends" / "python"
    roles.mkdir(parents=True)
    (roles / "triton_python_backend_stub").symlink_to(python / "triton_python_backend_stub")
    assert gpu_check.python_backends(binary, env, tmp_path / "out") == tmp_path / "backends"


def test_the_servers_processes_are_its_descendants(tmp_path):
    for pid, comm, parent in ((1, "init", 0), (10, "tritonserver", 1), (11, "stub (x) y", 10), (12, "bash", 1)):
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "stat").write_text(f"{pid} ({comm}) S {parent} {pid} {pid} 0 -1\n")
    assert gpu_check.process_tree(10, tmp_path) == {10, 11}


def test_compute_apps_memory_of_the_servers_processes():
    text = "10, 530\n11, 258\n99, 4000\n"
    assert gpu_check.parse_compute_apps(text, {10, 11}) == 788
    assert gpu_check.parse_compute_apps(text, {5}) is None
    assert gpu_check.parse_compute_apps("10, [N/A]\n", {10}) is None
    assert gpu_check.parse_compute_apps("", {10}) is None


def test_nvidia_smi_must_see_the_allocation_when_it_sees_the_server():
    sample = gpu_check.MemorySample
    held = gpu_check.evaluate_memory(sample(530, 1000), [sample(530, 1000), sample(788, 1258)], 256 * MIB)
    assert held.startswith("nvidia-smi: tritonserver's processes held +258 MiB")
    with pytest.raises(Failed, match=r"\+2 MiB during the request"):
        gpu_check.evaluate_memory(sample(530, 1000), [sample(532, 1002)], 256 * MIB)


def test_without_the_servers_pids_the_models_report_stands():
    sample = gpu_check.MemorySample
    text = gpu_check.evaluate_memory(sample(None, 1000), [sample(None, 1258)], 256 * MIB)
    assert "the model's report stands" in text
    assert "GPU 0 memory.used +258 MiB" in text


# ---------------------------------------------------------------------------------------------------------
# The model itself, with a stand-in for Triton's python backend utilities


class FakeTensor:
    def __init__(self, name, array):
        self.name, self.array = name, array

    def as_numpy(self):
        return self.array


class FakeResponse:
    def __init__(self, output_tensors, error=None):
        self.output_tensors, self.error = output_tensors, error


@pytest.fixture
def model(monkeypatch):
    utils = types.ModuleType("triton_python_backend_utils")
    utils.Tensor = FakeTensor
    utils.InferenceResponse = FakeResponse
    utils.TritonError = str
    utils.get_input_tensor_by_name = lambda request, name: FakeTensor(name, request[name])
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", utils)
    spec = importlib.util.spec_from_file_location("gpu_alloc_model", GPU / "triton" / "gpu_alloc" / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Held:
    name = "cuda-driver"
    device_name = "NVIDIA H200"

    def __init__(self, ordinal):
        self.ordinal = ordinal
        self.calls = []

    def hold(self, nbytes, seconds):
        self.calls.append((nbytes, seconds))
        return nbytes

    def close(self):
        pass


class Missing:
    name = "torch"

    def __init__(self, ordinal):
        raise ImportError("No module named 'torch'")


def test_the_first_allocator_that_works_is_used(model):
    allocator = model.first_allocator(1, (Missing, Held))
    assert isinstance(allocator, Held)
    assert allocator.ordinal == 1
    with pytest.raises(RuntimeError, match="torch: No module named 'torch'"):
        model.first_allocator(0, (Missing,))


def test_the_driver_api_without_libcuda_is_a_reason_not_a_crash(model):
    class NoLibcuda(model.CudaDriver):
        def __init__(self, ordinal):
            super().__init__(ordinal, "no-such-libcuda.so.1")

    with pytest.raises(RuntimeError, match="cuda-driver: .*no-such-libcuda"):
        model.first_allocator(0, (NoLibcuda,))


def test_the_model_checks_the_pattern_and_the_request(model):
    model.check_pattern(bytes([model.PATTERN]) * 16)
    with pytest.raises(RuntimeError, match="read back"):
        model.check_pattern(bytes([model.PATTERN]) * 15 + b"\x00")
    assert model.request_values(256 * MIB, 4000) == (256 * MIB, 4.0)
    with pytest.raises(ValueError, match="BYTES"):
        model.request_values(0, 10)
    with pytest.raises(ValueError, match="HOLD_MS"):
        model.request_values(MIB, 60_000)


def test_the_model_refuses_a_cpu_instance(model):
    with pytest.raises(RuntimeError, match="KIND_GPU"):
        model.TritonPythonModel().initialize({"model_instance_kind": "CPU", "model_instance_device_id": "0"})


def test_the_model_answers_the_bytes_it_held_or_the_requests_error(model, monkeypatch):
    monkeypatch.setattr(model, "ALLOCATORS", (Held,))
    monkeypatch.setattr(model, "first_allocator", Held)
    served = model.TritonPythonModel()
    served.initialize({"model_instance_kind": "GPU", "model_instance_device_id": "0"})
    good = {"BYTES": np.array([256 * MIB], dtype=np.int64), "HOLD_MS": np.array([500], dtype=np.int32)}
    bad = {"BYTES": np.array([0], dtype=np.int64), "HOLD_MS": np.array([500], dtype=np.int32)}
    answered, refused = served.execute([good, bad])
    outputs = {tensor.name: tensor.array[0] for tensor in answered.output_tensors}
    assert outputs == {"ALLOCATED": 256 * MIB, "METHOD": b"cuda-driver", "DEVICE": b"NVIDIA H200"}
    assert served.allocator.calls == [(256 * MIB, 0.5)]
    assert "BYTES 0 is outside" in refused.error


# ---------------------------------------------------------------------------------------------------------
# The files and the docs


def test_the_playbooks_run_the_collections_modules_and_the_driver_in_verify_mode():
    facts = yaml.safe_load((GPU / "host-facts.yml").read_text())[0]
    assert "deepseek.cluster.nvidia_host_facts" in facts["tasks"][0]
    topology = yaml.safe_load((GPU / "topology.yml").read_text())[0]
    assert "deepseek.cluster.gpu_topology" in topology["tasks"][0]
    driver = yaml.safe_load((GPU / "driver-verify.yml").read_text())[0]
    role = driver["tasks"][0]
    assert role["ansible.builtin.include_role"]["name"] == "deepseek.cluster.nvidia_driver"
    assert role["vars"] == {"nvidia_driver_mode": "verify"}
    install = yaml.safe_load((GPU / "triton-native.yml").read_text())[0]["tasks"][0]
    assert install["vars"]["triton_server_runtime"] == "native"


def test_the_readme_names_every_check_and_the_last_real_run():
    readme = (GPU / "README.md").read_text()
    for check in gpu_check.CHECKS:
        assert f"`{check.name}`" in readme
    assert "## Last real run" in readme


# ---------------------------------------------------------------------------------------------------------
# run.sh on this machine, which has no GPU


@pytest.mark.skipif(gpu_on_this_machine(), reason="this machine has a GPU: run tests/gpu/run.sh itself")
def test_run_sh_without_a_gpu_fails_every_check_within_seconds(tmp_path):
    env = {key: value for key, value in os.environ.items() if not key.startswith("GPU_CHECK_")}
    start = time.monotonic()
    run = subprocess.run(
        [str(GPU / "run.sh"), str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert time.monotonic() - start < 60
    assert run.returncode == 1, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    names = [check.name for check in gpu_check.CHECKS]
    assert [line.split(":")[0] for line in lines[:-2]] == [f"FAIL {name}" for name in names]
    assert lines[-2:] == ["0 skipped", f"0 passed, {len(names)} failed"]
    summary = (tmp_path / "out" / "summary.txt").read_text().splitlines()
    assert summary[-1] == f"0 passed, {len(names)} failed"
    assert [entry["status"] for entry in json.loads((tmp_path / "out" / "results.json").read_text())] == (
        ["FAIL"] * len(names)
    )
