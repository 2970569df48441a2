"""The NVLink-aware planner: worked examples on real captures, TensorRT-LLM's rank groups re-derived, and
properties on random multi-host inventories checked against a brute-force oracle."""

from itertools import combinations

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
# Derived NCCL lists are exact names ("="): NCCL reads them as prefixes otherwise.
HCAS = "=" + ",".join(f"mlx5_{i}" for i in range(8))


def test_deepseek_on_8x_h200_class_node_tp8_ep8():
    result = plan({"gpu-a": topo(H100)}, {"tensor_parallel_size": 8, "moe_expert_parallel_size": 8})
    (inst,) = result["instances"]
    (part,) = inst["parts"]
    assert part["gpus"] == list(range(8))
    assert part["env"]["NCCL_P2P_LEVEL"] == "NVL"
    assert part["env"]["NCCL_IB_HCA"] == HCAS
    assert part["numa_nodes"] == [0, 1]
    assert inst["mpi_hosts"] == "gpu-a:8"
    assert result["request"]["moe_tensor_parallel_size"] == 1
    assert inst["moe_ep_groups"] == [list(range(8))]
    # One host: no address is needed, so no warning about it.
    assert result["warnings"] == []


def test_tp16_spans_two_h100_nodes_host_major():
    result = plan({"a": topo(H100), "b": topo(H100)}, {"tensor_parallel_size": 16})
    (inst,) = result["instances"]
    assert inst["hosts"] == ["a", "b"]
    assert inst["mpi_hosts"] == "a:8,b:8"
    assert [(r["rank"], r["host"], r["gpu"]) for r in inst["ranks"][7:9]] == [(7, "a", 7), (8, "b", 0)]
    assert any("tensor parallelism crosses the network" in w for w in result["warnings"])
    # Neither host has an address: mpi_hosts falls back to the names, and says so.
    assert sum("no address known for mpirun" in w for w in result["warnings"]) == 2


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


def test_override_accepts_tp_over_pcie_but_never_forces_a_p2p_level():
    """NCCL_P2P_LEVEL=SYS would force P2P across the CPU interconnect; NCCL decides unless the operator does."""
    result = plan({"azure-a100": topo(A100_PAIRS)}, {"tensor_parallel_size": 4, "allow_pcie_tp": True})
    (inst,) = result["instances"]
    assert inst["nvlink"] is False
    assert inst["parts"][0]["worst_link"] == "SYS"
    assert "NCCL_P2P_LEVEL" not in inst["parts"][0]["env"]
    assert any("allow_pcie_tp" in w and "NCCL_P2P_LEVEL is left to NCCL" in w for w in result["warnings"])
    chosen = plan(
        {"azure-a100": topo(A100_PAIRS)},
        {"tensor_parallel_size": 4, "allow_pcie_tp": True, "nccl_env": {"NCCL_P2P_LEVEL": "PHB"}},
    )
    assert chosen["instances"][0]["parts"][0]["env"]["NCCL_P2P_LEVEL"] == "PHB"


def test_p2p_level_only_where_every_pair_is_nvlink():
    # A single GPU has no peer: nothing to set.
    one = plan({"a": topo(H100)}, {"tensor_parallel_size": 1, "instances_per_node": 1})
    assert "NCCL_P2P_LEVEL" not in one["instances"][0]["parts"][0]["env"]
    # DGX-1, TP4 x PP2: each stage is an NVLink quad, but GPU0-GPU5 is SYS; NVL would forbid the PCIe P2P
    # NCCL may use between the stages, so it is left unset.
    staged = plan({"dgx1": topo(DGX1)}, {"tensor_parallel_size": 4, "pipeline_parallel_size": 2})
    (inst,) = staged["instances"]
    assert inst["nvlink"] is True
    assert "NCCL_P2P_LEVEL" not in inst["parts"][0]["env"]


def test_dgx1_tp8_refused_tp4_in_each_quad():
    with pytest.raises(PlanError, match="largest NVLink clique is GPUs \\[0, 1, 2, 3\\]"):
        plan({"dgx1": topo(DGX1)}, {"tensor_parallel_size": 8})
    result = plan({"dgx1": topo(DGX1)}, {"tensor_parallel_size": 4})
    assert [i["parts"][0]["gpus"] for i in result["instances"]] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    # GPU0-1 sit on mlx5_0 (PIX), GPU2-3 on mlx5_1 (PIX)
    assert result["instances"][0]["parts"][0]["env"]["NCCL_IB_HCA"] == "=mlx5_0,mlx5_1"


def test_dgx1_pair_takes_tp4_pp4_with_each_tp_group_in_a_quad():
    """World 16 over two DGX-1: a host's share is two TP4 groups, each one NVLink quad (no 8-GPU clique)."""
    result = plan({"a": topo(DGX1), "b": topo(DGX1)}, {"tensor_parallel_size": 4, "pipeline_parallel_size": 4})
    (inst,) = result["instances"]
    assert inst["nvlink"] is True
    assert inst["tp_groups"] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]]
    assert [inst["ranks"][r]["gpu"] for r in range(8)] == [0, 1, 2, 3, 4, 5, 6, 7]
    # Only pipeline groups cross the network.
    assert any("spans 2 hosts (a, b): pp groups cross" in w for w in result["warnings"])
    assert not any("tensor parallelism crosses" in w for w in result["warnings"])


def test_pipeline_stages_each_stay_in_a_clique():
    result = plan({"dgx1": topo(DGX1)}, {"tensor_parallel_size": 4, "pipeline_parallel_size": 2})
    (inst,) = result["instances"]
    assert inst["world_size"] == 8
    assert inst["tp_groups"] == [[0, 1, 2, 3], [4, 5, 6, 7]]


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        ({"tensor_parallel_size": 8, "moe_expert_parallel_size": 4, "moe_tensor_parallel_size": 4}, "must equal"),
        ({"tensor_parallel_size": 0}, "positive integer"),
        ({"tensor_parallel_size": 8, "bogus": 1}, "unknown plan option"),
        ({"tensor_parallel_size": 32}, "exceeds the 16 GPUs"),
        ({"tensor_parallel_size": 8, "instances_per_node": 2}, "fits 1 instance"),
        ({"tensor_parallel_size": 8, "enable_attention_dp": "yes"}, "true or false"),
        ({"tensor_parallel_size": 8, "nccl_env": {"CUDA_VISIBLE_DEVICES": "0"}}, "not an NCCL_"),
        ({"tensor_parallel_size": 8, "nccl_env": {"NCCL_IB_HCA": ["mlx5_0"]}}, "string or an integer"),
        (
            {"tensor_parallel_size": 8, "socket_ifname": "eth0", "nccl_env": {"NCCL_SOCKET_IFNAME": "eth1"}},
            "disagree",
        ),
    ],
)
def test_bad_requests_are_refused(request_, message):
    with pytest.raises(PlanError, match=message):
        plan({"a": topo(H100), "b": topo(H100)}, request_)


def test_bad_host_information_is_refused():
    with pytest.raises(PlanError, match="hosts.a: unknown key"):
        plan({"a": topo(H100)}, {"tensor_parallel_size": 8}, {"a": {"zone": "x"}})
    with pytest.raises(PlanError, match="hosts.a.nccl_env"):
        plan({"a": topo(H100)}, {"tensor_parallel_size": 8}, {"a": {"nccl_env": {"ib": "x"}}})


def test_hosts_without_gpus_are_refused():
    with pytest.raises(PlanError, match="no host with GPUs"):
        plan({"lab-1": build_facts("No devices were found\n")}, {"tensor_parallel_size": 1})


def test_table_is_one_row_per_host_share_and_one_line_per_instance():
    result = plan(
        {"a": topo(H100), "b": topo(H100)},
        {"tensor_parallel_size": 16, "nccl_env": {"NCCL_DEBUG": "WARN"}},
        {"a": {"site": "primary", "address": "10.0.0.1"}, "b": {"site": "primary", "address": "10.0.0.2"}},
    )
    lines = plan_table(result).splitlines()
    assert lines[0].split() == ["inst", "site", "fabric", "host", "address", "gpus", "link", "numa", "cpus", "nccl"]
    rows = [line.split(None, 9) for line in lines[1:3]]
    assert [row[:6] for row in rows] == [
        ["0", "primary", "-", "a", "10.0.0.1", "0,1,2,3,4,5,6,7"],
        ["0", "primary", "-", "b", "10.0.0.2", "0,1,2,3,4,5,6,7"],
    ]
    # Operator-set variables are starred.
    assert rows[0][9].split() == ["NCCL_DEBUG=WARN*", f"NCCL_IB_HCA={HCAS}", "NCCL_P2P_LEVEL=NVL"]
    assert lines[3:] == [
        "instance 0: world 16 = tp 16 x pp 1; moe_tp 1 x moe_ep 16; attention_dp 1; mpi_hosts 10.0.0.1:8,10.0.0.2:8"
    ]


# --- TensorRT-LLM's rank groups ------------------------------------------------------------------
# Derived here, independently of the planner, from the rank properties of TensorRT-LLM's Mapping
# (NVIDIA/TensorRT-LLM tensorrt_llm/mapping.py, commit b35ac1b64368513d215c57d2ed01d62d910df8da,
# MpiTopology.tp_rank / pp_rank and MappingBase.moe_tp_rank / moe_ep_rank, cp_size = moe_cluster_size = 1):
#   tp_rank = rank % tp            pp_rank = rank // tp
#   moe_ep_rank = tp_rank % moe_ep moe_tp_rank = tp_rank // moe_ep
# Two ranks share a TP group iff they share pp_rank; a PP group iff they share tp_rank; a MoE EP group iff
# they share (pp_rank, moe_tp_rank); a MoE TP group iff they share (pp_rank, moe_ep_rank). The accessors
# tp_group / pp_group / moe_tp_group / moe_ep_group index the group lists with pp_rank, tp_rank,
# pp_rank * moe_ep + moe_ep_rank and pp_rank * moe_tp + moe_tp_rank; attention DP gives dp_size = tp with
# attention unsharded (tp_size 1 for attention, e.g. the KV cache managers).


def mapping_groups(world, tp, moe_tp, moe_ep, adp=False):
    assert moe_tp * moe_ep == tp
    ranks = range(world)
    tp_rank = {r: r % tp for r in ranks}
    pp_rank = {r: r // tp for r in ranks}
    moe_ep_rank = {r: tp_rank[r] % moe_ep for r in ranks}
    moe_tp_rank = {r: tp_rank[r] // moe_ep for r in ranks}

    def partition(key):
        groups = {}
        for r in ranks:
            groups.setdefault(key(r), []).append(r)
        return groups

    return {
        "tp": partition(lambda r: pp_rank[r]),
        "pp": partition(lambda r: tp_rank[r]),
        "moe_ep": partition(lambda r: (pp_rank[r], moe_tp_rank[r])),
        "moe_tp": partition(lambda r: (pp_rank[r], moe_ep_rank[r])),
        "attention_tp": partition(lambda r: r if adp else pp_rank[r]),
        "ranks": {r: (tp_rank[r], pp_rank[r], moe_tp_rank[r], moe_ep_rank[r], tp_rank[r] if adp else 0) for r in ranks},
        "index": {
            "tp": lambda r: pp_rank[r],
            "pp": lambda r: tp_rank[r],
            "moe_tp": lambda r: pp_rank[r] * moe_ep + moe_ep_rank[r],
            "moe_ep": lambda r: pp_rank[r] * moe_tp + moe_tp_rank[r],
        },
    }


def assert_matches_mapping(inst, request):
    tp = request["tensor_parallel_size"]
    moe_tp, moe_ep = request["moe_tensor_parallel_size"], request["moe_expert_parallel_size"]
    adp = request["enable_attention_dp"]
    world = inst["world_size"]
    expected = mapping_groups(world, tp, moe_tp, moe_ep, adp)
    for kind in ("tp", "pp", "moe_ep", "moe_tp", "attention_tp"):
        got = inst[kind + "_groups"]
        assert sorted(map(sorted, got)) == sorted(expected[kind].values()), kind
    for kind, index in expected["index"].items():
        for rank in range(world):
            assert rank in inst[kind + "_groups"][index(rank)], (kind, rank)
    assert inst["attention_dp_size"] == (tp if adp else 1)
    for r in inst["ranks"]:
        assert (r["tp_rank"], r["pp_rank"], r["moe_tp_rank"], r["moe_ep_rank"], r["attention_dp_rank"]) == expected[
            "ranks"
        ][r["rank"]]


def ep_hosts(inst):
    host = {r["rank"]: r["host"] for r in inst["ranks"]}
    return [sorted({host[r] for r in group}) for group in inst["moe_ep_groups"]]


def test_tp8_ep8_groups_as_tensorrt_llm_forms_them():
    request = {"tensor_parallel_size": 8, "moe_expert_parallel_size": 8}
    result = plan({"a": topo(H100)}, request)
    (inst,) = result["instances"]
    assert_matches_mapping(inst, result["request"])
    assert inst["moe_ep_groups"] == [[0, 1, 2, 3, 4, 5, 6, 7]]
    assert inst["moe_tp_groups"] == [[r] for r in range(8)]


def test_tp16_ep8_moe_tp2_keeps_each_expert_group_on_one_host():
    request = {"tensor_parallel_size": 16, "moe_expert_parallel_size": 8, "moe_tensor_parallel_size": 2}
    result = plan({"a": topo(H100), "b": topo(H100)}, request)
    (inst,) = result["instances"]
    assert_matches_mapping(inst, result["request"])
    # Contiguous expert groups (not every other rank): each one is one host's NVLink domain.
    assert inst["moe_ep_groups"] == [list(range(8)), list(range(8, 16))]
    assert ep_hosts(inst) == [["a"], ["b"]]
    assert inst["moe_tp_groups"] == [[r, r + 8] for r in range(8)]
    assert any("tp, moe_tp groups cross the network" in w for w in result["warnings"])


def test_tp16_ep16_expert_group_spans_both_hosts():
    request = {"tensor_parallel_size": 16, "moe_expert_parallel_size": 16}
    result = plan({"a": topo(H100), "b": topo(H100)}, request)
    (inst,) = result["instances"]
    assert_matches_mapping(inst, result["request"])
    assert inst["moe_ep_groups"] == [list(range(16))]
    assert ep_hosts(inst) == [["a", "b"]]


def test_attention_dp_unshards_attention():
    request = {"tensor_parallel_size": 8, "moe_expert_parallel_size": 8, "enable_attention_dp": True}
    result = plan({"a": topo(H100)}, request)
    (inst,) = result["instances"]
    assert_matches_mapping(inst, result["request"])
    assert inst["attention_dp_size"] == 8
    assert inst["attention_tp_groups"] == [[r] for r in range(8)]
    assert [r["attention_dp_rank"] for r in inst["ranks"]] == list(range(8))


def test_mapping_docstring_examples():
    """The worked examples in Mapping's docstring (same file and commit), literally."""
    one = plan(
        {"a": topo(H100)}, {"tensor_parallel_size": 8, "moe_tensor_parallel_size": 2, "moe_expert_parallel_size": 4}
    )
    (inst,) = one["instances"]
    assert inst["moe_tp_groups"] == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert inst["moe_ep_groups"] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    two = plan(
        {"a": topo(H100), "b": topo(H100)},
        {
            "tensor_parallel_size": 8,
            "pipeline_parallel_size": 2,
            "moe_tensor_parallel_size": 2,
            "moe_expert_parallel_size": 4,
        },
    )
    (inst,) = two["instances"]
    assert inst["moe_tp_groups"] == [[0, 4], [1, 5], [2, 6], [3, 7], [8, 12], [9, 13], [10, 14], [11, 15]]
    assert inst["moe_ep_groups"] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]]
    assert inst["pp_groups"] == [[r, r + 8] for r in range(8)]
    assert_matches_mapping(inst, two["request"])


# --- NCCL settings: the operator's win ------------------------------------------------------------


def ib_host():
    facts = topo(H100)
    facts["nic_netdevs"] = {f"mlx5_{i}": f"ib{i}" for i in range(8)}
    return facts


def test_rdma_interfaces_carry_the_bootstrap_only_where_they_have_an_address():
    request = {"tensor_parallel_size": 8}
    unknown = plan({"a": ib_host()}, request)
    # Addresses not known (no gathered facts): NCCL picks an addressed interface itself.
    assert "NCCL_SOCKET_IFNAME" not in unknown["instances"][0]["parts"][0]["env"]
    some = plan(
        {"a": ib_host()}, request, {"a": {"interfaces": {"ib0": "10.1.0.1", "ib1": "10.1.1.1", "eth0": "10.0.0.1"}}}
    )
    part = some["instances"][0]["parts"][0]
    assert part["env"]["NCCL_SOCKET_IFNAME"] == "=ib0,ib1"
    # The address for mpirun is the first interface that exact list selects.
    assert (part["address"], part["address_source"]) == ("10.1.0.1", "NCCL_SOCKET_IFNAME =ib0,ib1")


def test_operator_socket_ifname_wins_over_derived_interfaces():
    hosts = {"a": {"interfaces": {f"ib{i}": f"10.1.{i}.1" for i in range(8)} | {"bond0": "10.9.0.1"}}}
    result = plan({"a": ib_host()}, {"tensor_parallel_size": 8, "socket_ifname": "bond0"}, hosts)
    part = result["instances"][0]["parts"][0]
    assert part["env"]["NCCL_SOCKET_IFNAME"] == "bond0"
    assert part["address"] == "10.9.0.1"
    assert part["address_source"] == "NCCL_SOCKET_IFNAME bond0"


def test_host_nccl_env_wins_over_request_and_derived():
    result = plan(
        {"a": ib_host(), "b": ib_host()},
        {"tensor_parallel_size": 8, "nccl_env": {"NCCL_IB_HCA": "=mlx5_0", "NCCL_DEBUG": "INFO"}},
        {"b": {"nccl_env": {"NCCL_IB_HCA": "^mlx5_7", "NCCL_P2P_LEVEL": "LOC", "NCCL_IB_GID_INDEX": 3}}},
    )
    a, b = (inst["parts"][0] for inst in result["instances"])
    assert a["env"]["NCCL_IB_HCA"] == "=mlx5_0"
    assert a["env"]["NCCL_DEBUG"] == "INFO"
    assert a["env"]["NCCL_P2P_LEVEL"] == "NVL"
    assert b["env"]["NCCL_IB_HCA"] == "^mlx5_7"
    assert b["env"]["NCCL_P2P_LEVEL"] == "LOC"
    assert b["env"]["NCCL_IB_GID_INDEX"] == "3"
    assert b["env_operator"] == ["NCCL_DEBUG", "NCCL_IB_GID_INDEX", "NCCL_IB_HCA", "NCCL_P2P_LEVEL"]


def nccl_selects(value, names):
    """The names an NCCL_IB_HCA / NCCL_SOCKET_IFNAME value selects, as NCCL documents it: a comma list of name
    prefixes; a leading '^' excludes, a leading '=' (after any '^') makes every item an exact name."""
    exclude = value.startswith("^")
    value = value.removeprefix("^")
    exact = value.startswith("=")
    items = value.removeprefix("=").split(",")
    hit = {n for n in names if any(n == i if exact else n.startswith(i) for i in items)}
    return set(names) - hit if exclude else hit


def test_derived_nccl_lists_select_exactly_the_nearest_devices():
    """Twelve HCAs (a DGX H100 has storage NICs mlx5_10, mlx5_11): a derived list must not reach them."""
    facts = build_facts(render(2, {(0, 1)}, [1, 1], nics=12))
    names = [f"mlx5_{k}" for k in range(12)]
    facts["nic_netdevs"] = {name: f"ib{k}" for k, name in enumerate(names)}
    interfaces = {f"ib{k}": f"10.2.{k}.1" for k in range(12)}
    result = plan({"h": facts}, {"tensor_parallel_size": 1}, {"h": {"interfaces": interfaces}})
    nearest = {f"mlx5_{k}" for k in range(1, 12, 2)}  # render(): odd NICs are PIX to NUMA node 1
    for inst in result["instances"]:
        env = inst["parts"][0]["env"]
        assert nccl_selects(env["NCCL_IB_HCA"], names) == nearest
        assert nccl_selects(env["NCCL_SOCKET_IFNAME"], list(interfaces)) == {f"ib{k}" for k in range(1, 12, 2)}


# --- sites, fabrics and addresses -----------------------------------------------------------------


def test_instances_never_span_sites_even_when_play_order_interleaves_them():
    topologies = {name: topo(H100) for name in ("p1", "s1", "p2", "s2")}
    hosts = {
        "p1": {"site": "primary", "address": "10.10.9.1"},
        "s1": {"site": "standby", "address": "10.20.9.1"},
        "p2": {"site": "primary", "address": "10.10.9.2"},
        "s2": {"site": "standby", "default_address": "10.20.1.2"},
    }
    result = plan(topologies, {"tensor_parallel_size": 16}, hosts)
    assert [(i["site"], i["hosts"], i["mpi_hosts"]) for i in result["instances"]] == [
        ("primary", ["p1", "p2"], "10.10.9.1:8,10.10.9.2:8"),
        ("standby", ["s1", "s2"], "10.20.9.1:8,10.20.1.2:8"),
    ]
    assert [p["address_source"] for p in result["instances"][1]["parts"]] == [
        "deepseek_fabric_address",
        "default_ipv4",
    ]


def test_fabrics_split_a_site_and_a_lone_host_is_named():
    topologies = {name: topo(H100) for name in ("f1", "f2", "f3")}
    hosts = {"f1": {"fabric": "ib-a"}, "f2": {"fabric": "ib-b"}, "f3": {"fabric": "ib-a"}}
    result = plan(topologies, {"tensor_parallel_size": 16}, hosts)
    assert [i["hosts"] for i in result["instances"]] == [["f1", "f3"]]
    assert result["unused_gpus"] == {"f2": list(range(8))}
    assert any(w.startswith("site (unnamed), fabric ib-b (f2): needs 2 hosts") for w in result["warnings"])


def test_no_site_has_enough_hosts_is_refused():
    topologies = {"p1": topo(H100), "s1": topo(H100)}
    hosts = {"p1": {"site": "primary"}, "s1": {"site": "standby"}}
    with pytest.raises(PlanError, match="never spans two sites or two fabrics: site primary \\(p1\\): needs 2 hosts"):
        plan(topologies, {"tensor_parallel_size": 16}, hosts)


def test_address_sources_in_order():
    hosts = {
        "a": {"address": "10.0.0.1", "default_address": "192.0.2.1"},
        "b": {
            "interfaces": {"ens1f0": "10.3.0.2"},
            "default_address": "192.0.2.2",
            "nccl_env": {"NCCL_SOCKET_IFNAME": "ens"},
        },
        "c": {
            "interfaces": {"ib0": "10.4.0.3"},
            "nccl_env": {"NCCL_SOCKET_IFNAME": "=ib0"},
            "ansible_host": "gpu-c.example",
        },
        "d": {"ansible_host": "10.5.0.4"},
    }
    result = plan({h: topo(H100) for h in "abcd"}, {"tensor_parallel_size": 1, "instances_per_node": 1}, hosts)
    parts = {i["parts"][0]["host"]: i["parts"][0] for i in result["instances"]}
    assert {h: (p["address"], p["address_source"]) for h, p in parts.items()} == {
        "a": ("10.0.0.1", "deepseek_fabric_address"),
        "b": ("10.3.0.2", "NCCL_SOCKET_IFNAME ens"),
        "c": ("10.4.0.3", "NCCL_SOCKET_IFNAME =ib0"),
        "d": ("10.5.0.4", "ansible_host"),
    }


def test_an_ipv6_address_in_mpi_hosts_is_flagged():
    hosts = {"a": {"address": "fd00::11"}, "b": {"address": "10.0.0.2"}}
    result = plan({"a": topo(H100), "b": topo(H100)}, {"tensor_parallel_size": 16}, hosts)
    assert result["instances"][0]["mpi_hosts"] == "fd00::11:8,10.0.0.2:8"
    assert [w for w in result["warnings"] if "IPv6" in w] == [
        "a: address fd00::11 (deepseek_fabric_address) is IPv6: mpi_hosts writes address:slots, which an IPv6 "
        "address makes ambiguous; give the host an IPv4 deepseek_fabric_address or a name the launcher resolves"
    ]


# --- exact placement where the greedy pass falls short ----------------------------------------------


def render(n, linked, numa, nics=0):
    """nvidia-smi topo -m text for n GPUs, NVLink on the `linked` pairs, and `nics` mlx5 columns."""
    names = [f"GPU{i}" for i in range(n)] + [f"mlx5_{k}" for k in range(nics)]
    header = "\t" + "\t".join(names) + "\tCPU Affinity\tNUMA Affinity"
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
        codes += ["PIX" if k % 2 == numa[a] else "SYS" for k in range(nics)]
        rows.append(f"GPU{a}\t" + "\t".join(codes) + f"\t{numa[a] * 8}-{numa[a] * 8 + 7}\t{numa[a]}")
    return "\n".join([header, *rows]) + "\n"


def test_chained_nvlink_bridges_still_give_two_pairs():
    """NVLink 0-1, 0-2, 1-3: taking the first clique [0, 1] leaves 2 and 3 apart; 0-2 + 1-3 exists."""
    facts = build_facts(render(4, {(0, 1), (0, 2), (1, 3)}, [0, 0, 0, 0]))
    result = plan({"h": facts}, {"tensor_parallel_size": 2, "pipeline_parallel_size": 2})
    (inst,) = result["instances"]
    assert sorted(map(sorted, ([inst["ranks"][r]["gpu"] for r in g] for g in inst["tp_groups"]))) == [[0, 2], [1, 3]]


# --- properties over random inventories, against a brute-force oracle -------------------------------


def max_disjoint_cliques(n, linked, size):
    """The most disjoint groups of `size` GPUs, all pairs NVLink-joined (brute force)."""
    if size == 1:
        return n
    cliques = [c for c in combinations(range(n), size) if all(p in linked for p in combinations(c, 2))]

    def best(free, start):
        most = 0
        for i in range(start, len(cliques)):
            if free.issuperset(cliques[i]):
                most = max(most, 1 + best(free.difference(cliques[i]), i + 1))
        return most

    return best(frozenset(range(n)), 0)


def oracle(drawn, tp, pp, allow):
    """Instances per host (None: refused), from the rules in docs/topology.md, computed without the planner."""
    world = tp * pp
    if world > sum(h["n"] for h in drawn.values()):
        return None
    groups = {}
    for name, h in drawn.items():
        groups.setdefault((h["site"], h["fabric"]), []).append(name)
    count = dict.fromkeys(drawn, 0)
    for members in groups.values():
        largest = max(drawn[m]["n"] for m in members)
        if world <= largest:
            for m in members:
                h = drawn[m]
                if h["n"] < world:
                    continue
                fits = max_disjoint_cliques(h["n"], h["linked"], tp)
                if fits < pp:
                    if not allow:
                        return None
                    fits = h["n"] // tp
                count[m] += fits // pp
            continue
        per_host = max(d for d in range(1, largest + 1) if world % d == 0)
        chunk = tp if tp < per_host and per_host % tp == 0 else per_host
        eligible = [
            m
            for m in members
            if max_disjoint_cliques(drawn[m]["n"], drawn[m]["linked"], chunk) >= per_host // chunk
            or (allow and drawn[m]["n"] >= per_host)
        ]
        needed = world // per_host
        for m in eligible[: len(eligible) // needed * needed]:
            count[m] += 1
    return count if any(count.values()) else None


def draw_host(draw, number, n, board):
    """One host: n GPUs on a board (NVSwitch, NVLink pairs, a chain of bridges or random bridges), NUMA,
    0-2 NICs, a site, a fabric and maybe an address; rendered as nvidia-smi text and parsed."""
    pairs = [(a, b) for a in range(n) for b in range(a + 1, n)]
    if board == "nvswitch":
        linked = set(pairs)
    elif board == "pairs":
        linked = {(a, a + 1) for a in range(0, n - 1, 2)}
    elif board == "chain":
        # Bridges daisy-chained in any order: overlapping cliques, where a first-come packing falls short.
        order = draw(st.permutations(range(n)))
        linked = {(min(a, b), max(a, b)) for a, b in zip(order, order[1:], strict=False)}
    else:
        linked = {p for p in pairs if draw(st.booleans())}
    numa = [draw(st.integers(min_value=0, max_value=1)) for _gpu in range(n)]
    return {
        "n": n,
        "linked": linked,
        "facts": build_facts(render(n, linked, numa, draw(st.integers(min_value=0, max_value=2)))),
        "site": draw(st.sampled_from(["primary", "standby"])),
        "fabric": draw(st.sampled_from(["", "ib-a"])),
        "address": draw(st.sampled_from(["", f"10.0.0.{number + 1}"])),
    }


BOARDS = st.sampled_from(["nvswitch", "pairs", "chain", "random"])


@st.composite
def hosts(draw):
    """1-4 hosts of any size (1-8 GPUs) and board."""
    count = draw(st.integers(min_value=1, max_value=4))
    return {f"h{i}": draw_host(draw, i, draw(st.sampled_from([1, 2, 3, 4, 5, 8])), draw(BOARDS)) for i in range(count)}


@st.composite
def fleets(draw):
    """2-6 hosts of one size and board (as real fleets are), over sites and fabrics."""
    n, board = draw(st.sampled_from([2, 4, 8])), draw(BOARDS)
    return {f"h{i}": draw_host(draw, i, n, board) for i in range(draw(st.integers(min_value=2, max_value=6)))}


def check_plan(drawn, tp, pp, allow, moe_tp=1):
    """Plan, and hold the result to the oracle and to TensorRT-LLM's groups."""
    topologies = {name: h["facts"] for name, h in drawn.items()}
    info = {name: {"site": h["site"], "fabric": h["fabric"], "address": h["address"]} for name, h in drawn.items()}
    moe_tp = moe_tp if tp % moe_tp == 0 else 1
    request = {
        "tensor_parallel_size": tp,
        "pipeline_parallel_size": pp,
        "allow_pcie_tp": allow,
        "moe_tensor_parallel_size": moe_tp,
    }
    expected = oracle(drawn, tp, pp, allow)
    if expected is None:
        with pytest.raises(PlanError):
            plan(topologies, request, info)
        return None
    # A refusal here (PlanError) fails the test: the oracle found a placement.
    result = plan(topologies, request, info)
    placed = dict.fromkeys(drawn, 0)
    for inst in result["instances"]:
        for part in inst["parts"]:
            placed[part["host"]] += 1
    assert placed == expected
    # An NVLink clique as large as an instance always gets one.
    for name, h in drawn.items():
        if tp * pp <= h["n"] and max_disjoint_cliques(h["n"], h["linked"], tp * pp) >= 1:
            assert placed[name] >= 1, name
    seen = set()
    for inst in result["instances"]:
        assert inst["world_size"] == tp * pp
        assert len({(drawn[h]["site"], drawn[h]["fabric"]) for h in inst["hosts"]}) == 1
        assert [p["gpus"] for p in inst["parts"]] == [
            [r["gpu"] for r in inst["ranks"] if r["host"] == h] for h in inst["hosts"]
        ]
        assert len({len(p["gpus"]) for p in inst["parts"]}) == 1
        assert inst["mpi_hosts"] == ",".join(
            f"{drawn[p['host']]['address'] or p['host']}:{len(p['gpus'])}" for p in inst["parts"]
        )
        gpus = {(p["host"], g) for p in inst["parts"] for g in p["gpus"]}
        assert len(gpus) == tp * pp
        assert not seen & gpus, "a GPU was placed twice"
        seen |= gpus
        all_nvlink = True
        for group in inst["tp_groups"]:
            for host in inst["hosts"]:
                members = [inst["ranks"][r]["gpu"] for r in group if inst["ranks"][r]["host"] == host]
                linked = all(p in drawn[host]["linked"] for p in combinations(sorted(members), 2))
                all_nvlink = all_nvlink and linked
                if not allow:
                    assert linked
        assert inst["nvlink"] is all_nvlink
        assert_matches_mapping(inst, result["request"])
    for name, h in drawn.items():
        assert {g for host, g in seen if host == name} | set(result["unused_gpus"].get(name, [])) == set(range(h["n"]))
    return result


@settings(max_examples=300, deadline=None)
@given(
    drawn=hosts(),
    tp=st.sampled_from([1, 2, 4, 8, 16]),
    pp=st.sampled_from([1, 2]),
    allow=st.booleans(),
    moe_tp=st.sampled_from([1, 2, 4]),
)
def test_plans_place_exactly_what_the_hardware_allows(drawn, tp, pp, allow, moe_tp):
    check_plan(drawn, tp, pp, allow, moe_tp)


@settings(max_examples=200, deadline=None)
@given(
    drawn=fleets(),
    factor=st.sampled_from([2, 4]),
    # pp 4: TP groups smaller than a host's share (whole TP groups on each host, PP across hosts).
    pp=st.sampled_from([1, 2, 4]),
    allow=st.booleans(),
    moe_tp=st.sampled_from([1, 2]),
)
def test_instances_larger_than_a_host_stay_in_one_site_and_fabric(drawn, factor, pp, allow, moe_tp):
    """World sizes above a host's GPUs: shares on several hosts of one site and fabric."""
    n = next(iter(drawn.values()))["n"]
    check_plan(drawn, n * factor // pp, pp, allow, moe_tp)


@settings(max_examples=100, deadline=None)
@given(tp=st.sampled_from([1, 2, 4, 8, 16]), ep=st.integers(min_value=1, max_value=16))
def test_moe_split_must_multiply_to_tp(tp, ep):
    request = {"tensor_parallel_size": tp, "moe_expert_parallel_size": ep, "moe_tensor_parallel_size": max(tp // ep, 1)}
    hosts_ = {"a": topo(H100), "b": topo(H100)}
    if max(tp // ep, 1) * ep != tp:
        with pytest.raises(PlanError, match="must equal"):
            plan(hosts_, request)
    else:
        result = plan(hosts_, request)
        assert result["request"]["moe_tensor_parallel_size"] * result["request"]["moe_expert_parallel_size"] == tp
        for inst in result["instances"]:
            assert_matches_mapping(inst, result["request"])
