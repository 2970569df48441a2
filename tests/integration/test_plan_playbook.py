"""playbooks/plan.yml and the gpu_topology module, run by ansible-playbook on captured files.

The runs use the ansible.posix.json callback, so the tests read the plan table the playbook printed and the
plan it set as a fact, and compare both with what the inventory (tests/integration/plan/hosts.yml) implies.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INVENTORY = ROOT / "tests" / "integration" / "plan" / "hosts.yml"
COLUMNS = ["inst", "site", "fabric", "host", "address", "gpus", "link", "numa", "cpus", "nccl"]
HGX_HCAS = "=" + ",".join(f"mlx5_{i}" for i in range(8))  # exact names, see the planner


def run_ansible(tool: str, *args: str, callback: str = "default"):
    """Run an ansible command of the project virtualenv against this checkout's collection."""
    env = dict(
        os.environ,
        ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
        ANSIBLE_COLLECTIONS_PATH=str(ROOT / "collections"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_STDOUT_CALLBACK=callback,
        ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
    )
    cmd = [str(Path(sys.executable).parent / tool), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, check=False)


class PlanRun:
    """One plan.yml run: return code, per-task results, the printed table and the plan fact."""

    def __init__(self, hosts: str, request: dict | None):
        extra = {"parallel_plan_hosts": hosts}
        if request is not None:
            extra["parallel_plan_request"] = request
        proc = run_ansible(
            "ansible-playbook",
            "-i",
            str(INVENTORY),
            str(ROOT / "playbooks" / "plan.yml"),
            "-e",
            json.dumps(extra),
            callback="ansible.posix.json",
        )
        self.returncode = proc.returncode
        self.raw = proc.stdout + proc.stderr
        self.tasks = {}
        for task in json.loads(proc.stdout)["plays"][0]["tasks"]:
            self.tasks[task["task"]["name"]] = task["hosts"]

    def result(self, task: str) -> dict:
        """The one host result of a run_once task."""
        (result,) = [r for r in self.tasks[task].values() if not r.get("skipped")]
        return result

    @property
    def lines(self) -> list[str]:
        return self.result("Show the plan")["msg"]

    @property
    def plan(self) -> dict:
        return self.result("Place the parallel groups")["ansible_facts"]["parallel_plan"]

    @property
    def table(self) -> list[dict[str, str]]:
        """The table's rows as dicts: cells are separated by two spaces or more, the last (nccl) may hold spaces."""
        header, *rest = self.lines
        assert re.split(r"\s{2,}", header) == COLUMNS, header
        rows = []
        for line in rest:
            if line.startswith(("instance ", "warning: ")):
                break
            cells = re.split(r"\s{2,}", line, maxsplit=len(COLUMNS) - 1)
            assert len(cells) == len(COLUMNS), line
            rows.append(dict(zip(COLUMNS, cells, strict=True)))
        return rows

    @property
    def summaries(self) -> list[str]:
        return [line for line in self.lines if line.startswith("instance ")]

    @property
    def warnings(self) -> list[str]:
        return [line.removeprefix("warning: ") for line in self.lines if line.startswith("warning: ")]

    def failure(self) -> str:
        failed = [r.get("msg", "") for hosts in self.tasks.values() for r in hosts.values() if r.get("failed")]
        return "\n".join(str(m) for m in failed)


def nccl(cell: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in cell.split()) if cell != "-" else {}


def test_tp16_over_two_captured_h100_hosts():
    run = PlanRun("h100_pair", {"tensor_parallel_size": 16, "moe_expert_parallel_size": 8})
    assert run.returncode == 0, run.raw[-3000:]
    rows = run.table
    assert [(r["inst"], r["host"], r["address"], r["gpus"]) for r in rows] == [
        ("0", "h100-a", "10.30.0.11", "0,1,2,3,4,5,6,7"),
        ("0", "h100-b", "10.30.0.12", "0,1,2,3,4,5,6,7"),
    ]
    assert [r["link"] for r in rows] == ["NV18", "NV18"]
    assert nccl(rows[0]["nccl"]) == {"NCCL_IB_HCA": HGX_HCAS, "NCCL_P2P_LEVEL": "NVL"}
    # The second capture prints no NICs: nothing derived but the P2P level.
    assert nccl(rows[1]["nccl"]) == {"NCCL_P2P_LEVEL": "NVL"}
    assert run.summaries == [
        "instance 0: world 16 = tp 16 x pp 1; moe_tp 2 x moe_ep 8; attention_dp 1; mpi_hosts 10.30.0.11:8,10.30.0.12:8"
    ]
    # The table is the fact, printed: same hosts, GPUs and groups.
    (inst,) = run.plan["instances"]
    assert inst["mpi_hosts"] == "10.30.0.11:8,10.30.0.12:8"
    assert inst["moe_ep_groups"] == [list(range(8)), list(range(8, 16))]
    assert inst["moe_tp_groups"] == [[i, i + 8] for i in range(8)]
    assert any("tensor parallelism crosses the network" in w for w in run.warnings)
    # mpirun -x hands the launcher's NCCL_IB_HCA to h100-b's ranks too: the plan says so.
    assert any("NCCL_IB_HCA" in w and "h100-b" in w and "launcher" in w for w in run.warnings)
    assert not any("no address known" in w for w in run.warnings)


def test_instances_stay_inside_one_site_and_one_fabric():
    run = PlanRun(
        "two_sites",
        {"tensor_parallel_size": 16, "moe_expert_parallel_size": 16, "socket_ifname": "bond0"},
    )
    assert run.returncode == 0, run.raw[-3000:]
    rows = run.table
    assert [(r["inst"], r["site"], r["fabric"], r["host"], r["address"]) for r in rows] == [
        ("0", "primary", "ib-a", "p1", "10.30.0.21"),
        ("0", "primary", "ib-a", "p3", "10.30.0.23"),
        ("1", "standby", "-", "s1", "10.20.1.11"),
        ("1", "standby", "-", "s2", "s2"),
    ]
    # The operator's settings win (marked '*'): the request's interface everywhere, p3's own HCAs there.
    env = {r["host"]: nccl(r["nccl"]) for r in rows}
    assert env["p1"] == {"NCCL_IB_HCA": HGX_HCAS, "NCCL_P2P_LEVEL": "NVL", "NCCL_SOCKET_IFNAME": "bond0*"}
    assert env["p3"] == {
        "NCCL_DEBUG": "WARN*",
        "NCCL_IB_HCA": "=mlx5_0,mlx5_1*",
        "NCCL_P2P_LEVEL": "NVL",
        "NCCL_SOCKET_IFNAME": "bond0*",
    }
    assert [s.rsplit(" ", 1)[-1] for s in run.summaries] == ["10.30.0.21:8,10.30.0.23:8", "10.20.1.11:8,s2:8"]
    assert any(w.startswith("site primary, fabric ib-b (p2): ") for w in run.warnings)
    assert any(w.startswith("s2: no address known for mpirun") for w in run.warnings)
    assert run.plan["unused_gpus"] == {"p2": list(range(8))}
    for inst in run.plan["instances"]:
        assert len({(p["site"], p["fabric"]) for p in inst["parts"]}) == 1


def test_impossible_plan_fails_naming_host_and_gpus():
    run = PlanRun("a100_pcie", {"tensor_parallel_size": 4})
    assert run.returncode != 0
    assert "a100-pairs: largest NVLink clique is GPUs [0, 1]" in run.failure()


@pytest.mark.parametrize(
    ("tp", "expected"),
    [
        (1, [("0", "0"), ("1", "1"), ("2", "2"), ("3", "3")]),
        (2, [("0", "0,1"), ("1", "2,3")]),
    ],
)
def test_a100_pairs_small_tp(tp, expected):
    run = PlanRun("a100_pcie", {"tensor_parallel_size": tp})
    assert run.returncode == 0, run.raw[-3000:]
    rows = run.table
    assert [(r["inst"], r["gpus"]) for r in rows] == expected
    assert {r["host"] for r in rows} == {"a100-pairs"}
    # P2P level only where a share has two GPUs joined by NVLink; one GPU has no P2P to set.
    assert all(("NCCL_P2P_LEVEL" in nccl(r["nccl"])) == (tp > 1) for r in rows)
    # No address is known offline, but a one-host instance needs none: no warning about it.
    assert not any("no address known" in w for w in run.warnings)


def test_missing_request_is_refused():
    run = PlanRun("h100_pair", None)
    assert run.returncode != 0
    assert "parallel_plan_request is not set" in run.failure()


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
