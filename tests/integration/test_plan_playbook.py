"""playbooks/plan.yml and the gpu_topology module, run by ansible-playbook on captured files."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INVENTORY = ROOT / "tests" / "integration" / "plan" / "hosts.yml"


def run_ansible(tool: str, *args: str):
    """Run an ansible command of the project virtualenv against this checkout's collection."""
    env = dict(
        os.environ,
        ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
        ANSIBLE_COLLECTIONS_PATH=str(ROOT / "collections"),
        ANSIBLE_NOCOLOR="1",
    )
    cmd = [str(Path(sys.executable).parent / tool), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, check=False)


def run_plan(hosts: str, request: str | None):
    extra = f'{{"parallel_plan_hosts": "{hosts}"'
    extra += f', "parallel_plan_request": {request}}}' if request is not None else "}"
    return run_ansible("ansible-playbook", "-i", str(INVENTORY), str(ROOT / "playbooks" / "plan.yml"), "-e", extra)


def test_tp16_over_two_captured_h100_hosts():
    result = run_plan("h100_pair", '{"tensor_parallel_size": 16, "moe_expert_parallel_size": 16}')
    assert result.returncode == 0, result.stdout[-3000:]
    table = [line for line in result.stdout.splitlines() if "NCCL_P2P_LEVEL=NVL" in line]
    assert len(table) == 2
    assert "h100-a" in table[0]
    assert "NCCL_IB_HCA=mlx5_0" in table[0]
    assert "h100-b" in table[1]
    assert "tensor parallelism crosses the network" in result.stdout


def test_impossible_plan_fails_naming_host_and_gpus():
    result = run_plan("a100_pcie", '{"tensor_parallel_size": 4}')
    assert result.returncode != 0
    assert "a100-pairs: largest NVLink clique is GPUs [0, 1]" in result.stdout


@pytest.mark.parametrize(("tp", "instances"), [(1, 4), (2, 2)])
def test_a100_pairs_small_tp(tp, instances):
    result = run_plan("a100_pcie", f'{{"tensor_parallel_size": {tp}}}')
    assert result.returncode == 0, result.stdout[-3000:]
    assert sum(1 for line in result.stdout.splitlines() if "a100-pairs" in line and "CUDA" not in line) >= instances


def test_missing_request_is_refused():
    result = run_plan("h100_pair", None)
    assert result.returncode != 0
    assert "parallel_plan_request is not set" in result.stdout


def test_module_on_a_host_without_nvidia_smi_reports_absent():
    """This machine has no nvidia-smi: the live path must say so, not fail."""
    result = run_ansible(
        "ansible",
        "localhost",
        "-c",
        "local",
        "-i",
        "localhost,",
        "-m",
        "deepseek.cluster.gpu_topology",
        "-a",
        "nvidia_smi=/nonexistent/nvidia-smi",
        "-e",
        f"ansible_python_interpreter={sys.executable}",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert '"present": false' in result.stdout
    assert '"reason": "nvidia-smi not found"' in result.stdout
