"""The NVLink-aware planner: worked examples on real captures and invariants on random topologies."""

import pytest
from ansible_collections.deepseek.cluster.plugins.module_utils.gpu_topology import build_facts
from ansible_collections.deepseek.cluster.plugins.module_utils.parallel_plan import PlanError, plan, plan_table
from conftest import FIXTURES
from hypothesis import given, settings
from hypothesis import strategies as st

SMI = FIXTURES / "nvidia-smi"


def topo(name):
    return build_facts((SMI / name).read_text())


H100 = "topo-8xH100-SXM-NV18-8nic-niclegend-gpunumaid-spaces-irregular.txt"
A100_PAIRS = "topo-4xA100-PCIe-nvlink-pairs.txt"
DGX1 = "topo-8xV100-DGX1-hybrid-cube-mesh-mlx5-tabs.txt"


def test_deepseek_on_8x_h200_class_node_tp8_ep8():
    result = plan({"gpu-a": topo(H100)}, {"tensor_parallel_size": 8, "moe_expert_parallel_size": 8})
    (inst,) = result["instances"]
    (part,) = inst["parts"]
    assert part["gpus"] == list(range(8))
    assert part["env"]["NCCL_P2P_LEVEL"] == "NVL"
    assert part["env"]["NCCL_IB_HCA"] == ",".join(f"mlx5_{i}" for i in range(8))
    assert part["numa_nodes"] == [0, 1]
    assert inst["mpi_hosts"] == "gpu-a:8"
    assert result["request"]["moe_tensor_parallel_size"] == 1
    assert inst["moe_ep_groups"] == [list(range(8))]


def test_tp16_spans_two_h100_nodes_host_major():
    result = plan({"a": topo(H100), "b": topo(H100)}, {"tensor_parallel_size": 16})
    (inst,) = result["instances"]
    assert inst["hosts"] == ["a", "b"]
    assert inst["mpi_hosts"] == "a:8,b:8"
    assert [(r["rank"], r["host"], r["gpu"]) for r in inst["ranks"][7:9]] == [(7, "a", 7), (8, "b", 0)]
    assert any("network" in w for w in result["warnings"])


def test_a100_pcie_pairs_refuse_tp4_naming_host_and_gpus():
    with pytest.raises(PlanError) as err:
        plan({"azure-a100": topo(A100_PAIRS)}, {"tensor_parallel_size": 4})
    message = str(err.value)
    assert "azure-a100" in message
    assert "[0, 1]" in message
    assert "SYS" in message
    assert "allow_pcie_tp" in message


def test_a100_pcie_pairs_take_tp2_per_nvlink_pair():
    result = plan({"azure-a100": topo(A100_PAIRS)}, {"tensor_parallel_size": 2})
    assert [i["parts"][0]["gpus"] for i in result["instances"]] == [[0, 1], [2, 3]]
    assert [i["parts"][0]["numa_nodes"] for i in result["instances"]] == [[0, 1], [2, 3]]


def test_override_accepts_tp_over_pcie_with_a_warning():
    result = plan({"azure-a100": topo(A100_PAIRS)}, {"tensor_parallel_size": 4, "allow_pcie_tp": True})
    assert result["instances"][0]["nvlink"] is False
    assert result["instances"][0]["parts"][0]["env"]["NCCL_P2P_LEVEL"] == "SYS"
    assert result["warnings"]


def test_dgx1_tp8_refused_tp4_in_each_quad():
    with pytest.raises(PlanError, match="largest NVLink clique is GPUs \\[0, 1, 2, 3\\]"):
        plan({"dgx1": topo(DGX1)}, {"tensor_parallel_size": 8})
    result = plan({"dgx1": topo(DGX1)}, {"tensor_parallel_size": 4})
    assert [i["parts"][0]["gpus"] for i in result["instances"]] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    # GPU0-1 sit on mlx5_0 (PIX), GPU2-3 on mlx5_1 (PIX)
    assert result["instances"][0]["parts"][0]["env"]["NCCL_IB_HCA"] == "mlx5_0,mlx5_1"


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        ({"tensor_parallel_size": 8, "moe_expert_parallel_size": 4, "moe_tensor_parallel_size": 4}, "must equal"),
        ({"tensor_parallel_size": 0}, "positive integer"),
        ({"tensor_parallel_size": 8, "bogus": 1}, "unknown plan option"),
        ({"tensor_parallel_size": 32}, "exceeds the 16 GPUs"),
        ({"tensor_parallel_size": 8, "instances_per_node": 2}, "fits 1 instance"),
        ({"tensor_parallel_size": 8, "enable_attention_dp": "yes"}, "true or false"),
    ],
)
def test_bad_requests_are_refused(request_, message):
    with pytest.raises(PlanError, match=message):
        plan({"a": topo(H100), "b": topo(H100)}, request_)


def test_hosts_without_gpus_are_refused():
    with pytest.raises(PlanError, match="no host with GPUs"):
        plan({"lab-1": build_facts("No devices were found\n")}, {"tensor_parallel_size": 1})


def test_pipeline_stages_each_stay_in_a_clique():
    result = plan({"dgx1": topo(DGX1)}, {"tensor_parallel_size": 4, "pipeline_parallel_size": 2})
    (inst,) = result["instances"]
    assert inst["world_size"] == 8
    assert inst["tp_groups"] == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_table_names_every_host_part():
    table = plan_table(plan({"a": topo(H100), "b": topo(H100)}, {"tensor_parallel_size": 16}))
    assert table.splitlines()[0].split()[:3] == ["inst", "host", "gpus"]
    assert sum(1 for line in table.splitlines() if line.startswith("0 ")) == 2


# --- invariants over random topologies -------------------------------------------------


@st.composite
def topologies(draw):
    """A random host: n GPUs, random symmetric NVLink pairs, rendered as nvidia-smi text and parsed."""
    n = draw(st.integers(min_value=1, max_value=10))
    pairs = [(a, b) for a in range(n) for b in range(a + 1, n)]
    linked = {p for p in pairs if draw(st.booleans())}
    numa = [draw(st.integers(min_value=0, max_value=1)) for _gpu in range(n)]
    header = "\t" + "\t".join(f"GPU{i}" for i in range(n)) + "\tCPU Affinity\tNUMA Affinity"
    rows = []
    for a in range(n):
        codes = []
        for b in range(n):
            if a == b:
                codes.append(" X ")
            elif (min(a, b), max(a, b)) in linked:
                codes.append("NV4")
            else:
                codes.append("SYS" if numa[a] != numa[b] else "NODE")
        rows.append(f"GPU{a}\t" + "\t".join(codes) + f"\t{numa[a] * 8}-{numa[a] * 8 + 7}\t{numa[a]}")
    return build_facts("\n".join([header, *rows]) + "\n"), linked


@settings(max_examples=200, deadline=None)
@given(host=topologies(), tp=st.sampled_from([1, 2, 4, 8]), pp=st.sampled_from([1, 2]), allow=st.booleans())
def test_plans_never_reuse_a_gpu_and_tp_groups_are_nvlink_cliques(host, tp, pp, allow):
    facts, linked = host
    refusal = ""
    try:
        result = plan({"h": facts}, {"tensor_parallel_size": tp, "pipeline_parallel_size": pp, "allow_pcie_tp": allow})
    except PlanError as err:
        refusal = str(err)
        result = None
    if result is None:
        assert "on h" in refusal or "exceeds" in refusal or "fits" in refusal
        return
    seen = set()
    for inst in result["instances"]:
        assert inst["world_size"] == tp * pp
        gpus = [g for part in inst["parts"] for g in part["gpus"]]
        assert len(gpus) == tp * pp
        assert not seen & set(gpus), "a GPU was placed twice"
        seen |= set(gpus)
        for stage in inst["tp_groups"]:
            members = [inst["ranks"][r]["gpu"] for r in stage]
            if not allow:
                assert all((min(a, b), max(a, b)) in linked for a in members for b in members if a != b)
    assert seen | set(result["unused_gpus"].get("h", [])) == set(range(facts["gpu_count"]))


@settings(max_examples=100, deadline=None)
@given(tp=st.sampled_from([1, 2, 4, 8, 16]), ep=st.integers(min_value=1, max_value=16))
def test_moe_split_must_multiply_to_tp(tp, ep):
    request = {"tensor_parallel_size": tp, "moe_expert_parallel_size": ep, "moe_tensor_parallel_size": max(tp // ep, 1)}
    hosts = {"a": topo(H100), "b": topo(H100)}
    if max(tp // ep, 1) * ep != tp:
        with pytest.raises(PlanError, match="must equal"):
            plan(hosts, request)
    else:
        result = plan(hosts, request)
        assert result["request"]["moe_tensor_parallel_size"] * result["request"]["moe_expert_parallel_size"] == tp
