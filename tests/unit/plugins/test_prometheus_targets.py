"""Scrape targets derived from the inventory (playbooks/monitoring.yml): jobs, labels, the probe's routes."""

import pytest
from ansible_collections.deepseek.cluster.plugins.module_utils.prometheus_targets import (
    TargetError,
    host_port,
    scrape_targets,
    sites_without_proxy,
)

GROUPS = {
    "gpu_nodes": ["p-gpu2", "p-gpu1", "p-fb", "s-gpu1"],
    "fallback_nodes": ["p-fb"],
    "proxies": ["p-proxy", "s-proxy"],
    "monitoring": ["mon"],
}
ADDRESSES = {
    "p-gpu1": ["10.0.1.1"],
    "p-gpu2": ["10.0.1.2"],
    "p-fb": ["10.0.1.9"],
    "p-proxy": ["10.0.1.100", "fd00::100"],
    "s-gpu1": ["10.0.2.1"],
    "s-proxy": ["fd00:2::100"],
    "mon": ["10.0.9.1"],
}
SITES = {
    "p-gpu1": "primary",
    "p-gpu2": "primary",
    "p-fb": "primary",
    "p-proxy": "primary",
    "s-gpu1": "standby",
    "s-proxy": "standby",
}
PORTS = {
    "node_exporter": 9100,
    "triton_metrics": 8002,
    "dcgm_exporter": 9400,
    "mtls_proxy": 8443,
    "mtls_proxy_admin": 8404,
}


def targets(job, **options):
    return scrape_targets(GROUPS, ADDRESSES, SITES, PORTS, options)[job]


def flat(groups):
    return {(g["targets"][0], g["labels"]["node"]) for g in groups}


def test_every_host_is_scraped_by_node_exporter_with_node_and_site_labels():
    found = targets("node")
    assert flat(found) == {
        ("10.0.1.1:9100", "p-gpu1"),
        ("10.0.1.2:9100", "p-gpu2"),
        ("10.0.1.9:9100", "p-fb"),
        ("10.0.1.100:9100", "p-proxy"),
        ("10.0.2.1:9100", "s-gpu1"),
        ("[fd00:2::100]:9100", "s-proxy"),
        ("10.0.9.1:9100", "mon"),
    }
    assert {g["labels"]["node"]: g["labels"]["site"] for g in found}["mon"] == ""
    assert {g["labels"]["node"]: g["labels"]["site"] for g in found}["s-gpu1"] == "standby"


def test_triton_on_every_gpu_node_dcgm_only_where_it_runs():
    assert {pair[1] for pair in flat(targets("triton"))} == {"p-gpu1", "p-gpu2", "p-fb", "s-gpu1"}
    assert targets("dcgm") == []
    assert flat(targets("dcgm", dcgm_hosts=["p-gpu1", "mon"])) == {("10.0.1.1:9400", "p-gpu1")}


def test_haproxy_is_scraped_at_its_admin_address():
    assert flat(targets("haproxy")) == {("10.0.1.100:8404", "p-proxy"), ("[fd00:2::100]:8404", "s-proxy")}
    assert flat(targets("haproxy", admin_addresses={"p-proxy": "192.168.0.5"})) == {
        ("192.168.0.5:8404", "p-proxy"),
        ("[fd00:2::100]:8404", "s-proxy"),
    }


def test_probe_checks_each_proxy_and_each_node_through_its_own_sites_proxy():
    probes = targets("deepseek_probe")
    pool = [g for g in probes if "__param_node" not in g["labels"]]
    nodes = [g for g in probes if "__param_node" in g["labels"]]
    assert {(g["targets"][0], g["labels"]["module"]) for g in pool} == {
        ("10.0.1.100:8443", "proxy_http"),
        ("10.0.1.100:8443", "proxy_grpc"),
        ("[fd00:2::100]:8443", "proxy_http"),
        ("[fd00:2::100]:8443", "proxy_grpc"),
    }
    assert all(g["labels"]["__param_module"] == g["labels"]["module"] for g in probes)
    routes = {(g["labels"]["__param_node"], g["labels"]["module"]): g["targets"][0] for g in nodes}
    assert routes[("p-fb", "node_grpc")] == "10.0.1.100:8443"
    assert routes[("s-gpu1", "node_http")] == "[fd00:2::100]:8443"
    assert len(routes) == 8
    assert all(g["labels"]["node"] == g["labels"]["__param_node"] for g in nodes)


def test_a_site_without_a_proxy_leaves_its_nodes_unprobed_and_says_so():
    groups = {**GROUPS, "proxies": ["p-proxy"]}
    probes = scrape_targets(groups, ADDRESSES, SITES, PORTS)["deepseek_probe"]
    assert "s-gpu1" not in {g["labels"].get("__param_node") for g in probes}
    assert sites_without_proxy(groups, SITES) == ["s-gpu1"]
    assert sites_without_proxy(GROUPS, SITES) == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"addresses": {**ADDRESSES, "p-gpu2": []}}, "no address known for p-gpu2"),
        ({"sites": {k: v for k, v in SITES.items() if k != "s-proxy"}}, "s-proxy belongs to no site"),
        ({"ports": {k: v for k, v in PORTS.items() if k != "dcgm_exporter"}}, "dcgm_exporter"),
    ],
)
def test_missing_inventory_facts_are_named(change, message):
    args = {"addresses": ADDRESSES, "sites": SITES, "ports": PORTS, **change}
    with pytest.raises(TargetError, match=message):
        scrape_targets(GROUPS, args["addresses"], args["sites"], args["ports"])


def test_ipv6_in_brackets():
    assert host_port("fd00::1", 9100) == "[fd00::1]:9100"
    assert host_port("10.0.0.1", 9100) == "10.0.0.1:9100"
