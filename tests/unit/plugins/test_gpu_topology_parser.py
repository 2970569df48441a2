"""The topology parser on real captured nvidia-smi outputs."""

import pytest
from ansible_collections.deepseek.cluster.plugins.module_utils.gpu_topology import (
    TopologyParseError,
    build_facts,
    maximal_cliques,
    parse_cpu_list,
    parse_query_xml,
)
from conftest import FIXTURES

SMI = FIXTURES / "nvidia-smi"


def facts(name, query=None):
    return build_facts((SMI / name).read_text(), (SMI / query).read_text() if query else None)


def test_every_capture_parses_into_a_symmetric_matrix():
    captures = sorted(SMI.glob("topo-*.txt"))
    assert len(captures) >= 6
    for path in captures:
        result = build_facts(path.read_text())
        assert result["present"], path.name
        for a, row in result["links"].items():
            assert row[a] == "X", path.name
            for b, code in row.items():
                assert result["links"][b][a] == code, f"{path.name}: {a}-{b}"


def test_h100_nvswitch_board_is_one_clique_with_nvswitch():
    result = facts("topo-8xH100-SXM-nvswitch.txt")
    assert result["gpu_count"] == 8
    assert result["nvlink_domains"] == [list(range(8))]
    assert result["nvlink_cliques"] == [list(range(8))]
    assert result["nvswitch"] is True
    assert "NV18" in result["nvswitch_evidence"]
    assert result["gpus"][4]["numa_node"] == 1
    assert result["gpus"][0]["cpu_affinity"][:3] == [0, 1, 2]
    assert len(result["gpus"][0]["cpu_affinity"]) == 104


def test_a100_pcie_pairs_are_two_domains_without_nvswitch():
    result = facts("topo-4xA100-PCIe-nvlink-pairs.txt")
    assert result["nvlink_domains"] == [[0, 1], [2, 3]]
    assert result["nvlink_cliques"] == [[0, 1], [2, 3]]
    assert result["nvswitch"] is False
    assert [g["numa_node"] for g in result["gpus"]] == [0, 1, 2, 3]


@pytest.mark.parametrize(
    "name", ["topo-8xV100-DGX1-hybrid-cube-mesh-mlx5-tabs.txt", "topo-8xV100-DGX1-hybrid-cube-mesh-mlx5-spaces.txt"]
)
def test_dgx1_hybrid_cube_mesh_is_connected_but_not_all_to_all(name):
    result = facts(name)
    assert result["nvlink_domains"] == [list(range(8))]
    assert result["nvlink_cliques"][:2] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert all(len(c) < 8 for c in result["nvlink_cliques"])
    assert result["nvswitch"] is False


def test_dgx1_nic_columns_keep_their_printed_order_and_rank_by_path():
    result = facts("topo-8xV100-DGX1-hybrid-cube-mesh-mlx5-tabs.txt")
    assert result["nics"] == ["mlx5_0", "mlx5_2", "mlx5_1", "mlx5_3"]
    nearest = result["gpus"][0]["nearest_nics"]
    assert [n["link"] for n in nearest] == ["PIX", "PHB", "SYS", "SYS"]
    assert nearest[0]["name"] == "mlx5_0"
    assert result["gpus"][2]["nearest_nics"][0] == {"name": "mlx5_1", "link": "PIX"}


def test_dgx_a100_twelve_nics_and_nvswitch():
    result = facts("topo-8xA100-DGX-A100-NV12-12xmlx5-tabs.txt")
    assert len(result["nics"]) == 12
    assert result["nvswitch"] is True
    assert result["nvlink_cliques"] == [list(range(8))]


def test_nic_legend_maps_nic_columns_to_device_names():
    result = facts("topo-8xH100-SXM-NV18-8nic-niclegend-gpunumaid-spaces-irregular.txt")
    assert result["nics"] == [f"mlx5_{i}" for i in range(8)]
    assert [n["name"] for n in result["gpus"][0]["nearest_nics"][:2]] == ["mlx5_0", "mlx5_1"]
    assert result["gpus"][6]["nearest_nics"][0] == {"name": "mlx5_6", "link": "PIX"}
    assert result["gpus"][0]["gpu_numa_id"] is None


def test_nic_columns_without_legend_keep_nic_names():
    result = facts("topo-4xH100-NV6-4nic-gpunumaid-spaces-legend-truncated.txt")
    assert result["nics"] == ["NIC0", "NIC1", "NIC2", "NIC3"]
    assert [g["numa_node"] for g in result["gpus"]] == [3, 1, 7, 5]
    assert result["gpus"][0]["cpu_affinity"] == [6, 14, 22, 30]


def test_blank_affinity_fields_do_not_shift_columns():
    result = facts("topo-2gpu-NV12-8nic-blank-affinity-spaces-legend-truncated.txt")
    gpu0 = result["gpus"][0]
    assert gpu0["cpu_affinity"] == []
    assert gpu0["numa_node"] is None
    assert gpu0["gpu_numa_id"] is None
    assert gpu0["nearest_nics"][0]["link"] == "PXB"


def test_na_numa_with_extra_tab():
    result = facts("topo-2xRTX3090-pcie-SYS-numa-NA-tabs-legend-truncated.txt")
    assert result["gpus"][0]["numa_node"] is None
    assert result["gpus"][0]["cpu_affinity_text"] == "0-7,16-23"
    assert result["gpus"][1]["numa_node"] == 1


def test_mixed_leading_spaces_and_tabs_with_a_nic_row():
    result = facts("topo-4xA100-PCIe-NODE-SYS-mlx5-mixed-leading-spaces-tabs.txt")
    assert result["nvlink_domains"] == [[0], [1], [2], [3]]
    assert result["nvlink_cliques"] == []
    assert result["gpus"][2]["cpu_affinity"] == [1, 3, 5, 7, 9, 11]
    assert result["gpus"][0]["nearest_nics"] == [{"name": "mlx5_0", "link": "NODE"}]


def test_nvlink_bridge_pairs_that_are_not_adjacent_indices():
    result = facts("topo-4xRTX3090-nvlink-bridge-NV4-pairs-spaces.txt")
    assert result["nvlink_cliques"] == [[0, 2], [1, 3]]


def test_pcie_only_view_has_no_nvlink():
    result = facts("topo-mp-8xV100-DGX1-pcie-only-view-mlx5-tabs.txt")
    assert result["nvlink_cliques"] == []
    assert result["nvswitch"] is False


def test_query_xml_gives_names_uuids_memory_and_mig():
    query = parse_query_xml((SMI / "smi-q-x-a100-sxm4-mig.xml").read_text())
    assert query["driver_version"] == "510.47.03"
    gpu = query["gpus"][0]
    assert gpu["name"] == "NVIDIA A100-SXM4-40GB"
    assert gpu["uuid"].startswith("GPU-")
    assert gpu["memory_mib"] == 40960
    assert gpu["mig_mode"] == "Enabled"


def test_gpu_count_mismatch_between_topo_and_query_is_refused():
    with pytest.raises(TopologyParseError, match="same host"):
        facts("topo-4xA100-PCIe-nvlink-pairs.txt", "smi-q-x-tesla-p100.xml")


@pytest.mark.parametrize(
    "text",
    ["No devices were found\n", "", "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n"],
)
def test_no_gpu_output_gives_present_false(text):
    result = build_facts(text)
    assert result["present"] is False
    assert result["gpus"] == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("\tGPU0\tGPU1\nGPU0\t X \tNV4\nGPU1\tQPI\t X \n", "unknown link type"),
        ("\tGPU0\tGPU1\nGPU0\t X \tNV4\n", "no matrix row"),
        ("\tGPU0\tGPU1\nGPU0\tNV4\t X \nGPU1\tNV4\t X \n", "diagonal"),
        ("\tGPU0\tGPU1\nGPU0\t X \tNV4\nGPU1\tSYS\t X \n", "not symmetric"),
        ("\tGPU0\tCPU Affinity\nGPU0\t X \t0-x\n", "CPU list"),
    ],
)
def test_malformed_captures_fail_with_a_reason(text, message):
    with pytest.raises(TopologyParseError, match=message):
        build_facts(text)


def test_legacy_soc_is_read_as_sys():
    result = build_facts("\tGPU0\tGPU1\nGPU0\t X \tSOC\nGPU1\tSOC\t X \n")
    assert result["links"]["GPU0"]["GPU1"] == "SYS"


def test_cpu_list_expansion():
    assert parse_cpu_list("0-2,8,10-11") == [0, 1, 2, 8, 10, 11]
    assert parse_cpu_list("N/A") == []


def test_cliques_of_a_known_graph():
    adjacent = {0: {1, 2}, 1: {0, 2}, 2: {0, 1, 3}, 3: {2}}
    assert maximal_cliques(adjacent, adjacent) == [[0, 1, 2], [2, 3]]
