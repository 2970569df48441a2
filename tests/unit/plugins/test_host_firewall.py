"""Allow rules of the host firewall: what reaches the nftables template, and what is refused first."""

import pytest
from ansible_collections.deepseek.cluster.plugins.module_utils.host_firewall import (
    RuleError,
    admits,
    deployment_rules,
    normalise_rules,
)


def test_rule_is_normalised_and_split_by_family():
    rules = normalise_rules(
        [
            {
                "name": "triton-inference",
                "ports": ["8001", 8000, 8000],
                "sources": ["10.0.1.7", "10.0.1.0/24", "fd00::5", "10.0.1.9/24", "10.0.2.1", "10.0.2.0"],
            }
        ]
    )
    assert rules == [
        {
            "name": "triton-inference",
            "proto": "tcp",
            "ports": ["8000-8001"],
            "ipv4": ["10.0.1.0/24", "10.0.2.0/31"],
            "ipv6": ["fd00::5/128"],
        }
    ]


def test_rule_without_sources_stays_and_admits_nobody():
    (rule,) = normalise_rules([{"name": "metrics", "ports": [8002], "proto": "tcp", "sources": []}])
    assert (rule["ipv4"], rule["ipv6"]) == ([], [])


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ({"name": "x"}, r"host_firewall_rules must be a list"),
        ([{"name": "x", "ports": [80], "sources": ["10.0.0.300"]}], r"host_firewall_rules\[0\]\.sources\[0\]"),
        ([{"name": "x", "ports": [0], "sources": []}], r"\.ports\[0\]: 0 is not a port"),
        ([{"name": "x", "ports": ["9-8"], "sources": []}], r"\.ports\[0\]: '9-8' is not a port"),
        ([{"name": "x", "ports": [True], "sources": []}], r"\.ports\[0\]"),
        ([{"name": "x", "ports": [], "sources": []}], r"\.ports: give a non-empty list"),
        ([{"name": "x", "ports": [80], "proto": "sctp", "sources": []}], r"\.proto: 'sctp' is not one of"),
        ([{"name": "Bad Name", "ports": [80], "sources": []}], r"\.name: 'Bad Name'"),
        ([{"name": "x", "ports": [80], "sources": "10.0.0.1"}], r"\.sources: give a list"),
        ([{"name": "x", "ports": [80], "sources": [], "from": []}], r"unknown field\(s\) \['from'\]"),
        (
            [{"name": "x", "ports": [80], "sources": []}, {"name": "x", "ports": [81], "sources": []}],
            r"repeated: \['x'\]",
        ),
    ],
)
def test_bad_rules_name_the_field(rules, message):
    with pytest.raises(RuleError, match=message):
        normalise_rules(rules)


def test_admits():
    assert admits("172.20.0.1", [])
    assert admits("172.20.0.1", ["172.20.0.0/16"])
    assert admits("::ffff:172.20.0.1", ["172.20.0.1"])
    assert not admits("172.21.0.1", ["172.20.0.0/16", "fd00::/8"])
    assert admits("fd00::1", ["fd00::/8"])


# The lab's shape (inventories/lab/hosts.yml): two sites, each with two GPU nodes and a proxy, one monitor.
GROUPS = {
    "gpu_nodes": ["p-gpu1", "p-gpu2", "s-gpu1"],
    "proxies": ["p-proxy", "s-proxy"],
    "monitoring": ["mon"],
}
SITES = {"p-gpu1": "primary", "p-gpu2": "primary", "p-proxy": "primary", "s-gpu1": "standby", "s-proxy": "standby"}
ADDRESSES = {
    "p-gpu1": ["10.1.0.11"],
    "p-gpu2": ["10.1.0.12"],
    "p-proxy": ["10.1.0.2", "fd01::2"],
    "s-gpu1": ["10.2.0.11"],
    "s-proxy": ["10.2.0.2"],
    "mon": ["10.9.0.5"],
}
PORTS = {
    "triton_http": 8000,
    "triton_grpc": 8001,
    "triton_metrics": 8002,
    "mtls_proxy": 8443,
    "mtls_proxy_admin": 8404,
    "node_exporter": 9100,
}


def rules_of(host, **changes):
    args = {"groups": GROUPS, "addresses": ADDRESSES, "sites": SITES, "ports": PORTS, "client_sources": ["0.0.0.0/0"]}
    args.update(changes)
    return {r["name"]: (r["ports"], r["sources"]) for r in deployment_rules(host, **args)}


def test_gpu_node_admits_its_own_sites_proxy_monitoring_and_peers():
    assert rules_of("p-gpu1") == {
        "triton-inference": ([8000, 8001], ["10.1.0.2", "fd01::2"]),
        "triton-metrics": ([8002], ["10.9.0.5"]),
        "gpu-site-peers": (["1-65535"], ["10.1.0.12"]),
        "node-exporter": ([9100], ["10.9.0.5"]),
    }
    assert rules_of("s-gpu1")["triton-inference"] == ([8000, 8001], ["10.2.0.2"])
    assert rules_of("s-gpu1")["gpu-site-peers"] == (["1-65535"], [])


def test_proxy_admits_clients_and_monitoring_and_monitor_only_node_exporter():
    assert rules_of("p-proxy") == {
        "mtls-proxy": ([8443], ["0.0.0.0/0", "10.9.0.5"]),
        "proxy-admin": ([8404], ["10.9.0.5"]),
        "node-exporter": ([9100], ["10.9.0.5"]),
    }
    assert rules_of("mon") == {"node-exporter": ([9100], ["10.9.0.5"])}


def test_every_derived_rule_is_valid():
    for host in ADDRESSES:
        normalise_rules(deployment_rules(host, GROUPS, ADDRESSES, SITES, PORTS, ["0.0.0.0/0", "::/0"]))


def test_siteless_node_and_unknown_address_are_refused():
    with pytest.raises(RuleError, match="p-gpu1 belongs to no site: set deepseek_site"):
        rules_of("p-gpu1", sites={**SITES, "p-gpu1": ""})
    with pytest.raises(RuleError, match=r"no address known for \['mon'\]"):
        rules_of("p-gpu1", addresses={**ADDRESSES, "mon": []})


def test_port_ranges_are_ordered_and_overlaps_merged():
    (rule,) = normalise_rules([{"name": "x", "ports": [9100, "1024-2048", "22", "2049", 23, 8000], "sources": []}])
    assert rule["ports"] == ["22-23", "1024-2049", "8000", "9100"]


def test_the_filters_turn_rule_errors_into_ansible_errors():
    from ansible.errors import AnsibleFilterError
    from ansible_collections.deepseek.cluster.plugins.filter.host_firewall import FilterModule

    filters = FilterModule().filters()
    with pytest.raises(AnsibleFilterError, match="host_firewall_extra_rules must be a list"):
        filters["host_firewall_rules"]({}, "host_firewall_extra_rules")
    with pytest.raises(AnsibleFilterError, match="not an IPv4/IPv6 address"):
        filters["host_firewall_admits"]("10.0.0.1", ["nonsense"])


MONITORING_PORTS = {
    **PORTS,
    "dcgm_exporter": 9400,
    "prometheus": 9090,
    "alertmanager": 9093,
    "alertmanager_cluster": 9094,
}


def test_monitoring_ports_admit_peers_and_the_named_sources_only():
    groups = {**GROUPS, "monitoring": ["mon", "mon2"]}
    addresses = {**ADDRESSES, "mon2": ["10.9.0.6"]}
    rules = rules_of(
        "mon", groups=groups, addresses=addresses, ports=MONITORING_PORTS, monitoring_sources=["10.8.0.0/24"]
    )
    assert rules["prometheus"] == ([9090], ["10.8.0.0/24", "10.9.0.6"])
    assert rules["alertmanager"] == ([9093], ["10.8.0.0/24", "10.9.0.6"])
    assert rules["alertmanager-cluster"] == ([9094], ["10.9.0.6"])
    assert rules["alertmanager-cluster-udp"] == ([9094], ["10.9.0.6"])
    udp = [
        r for r in deployment_rules("mon", groups, addresses, SITES, MONITORING_PORTS, ["0.0.0.0/0"]) if r.get("proto")
    ]
    assert [(r["name"], r["proto"]) for r in udp] == [("alertmanager-cluster-udp", "udp")]
    assert rules_of("mon", ports=MONITORING_PORTS)["prometheus"] == ([9090], [])
    gpu = rules_of("p-gpu1", groups=groups, addresses=addresses, ports=MONITORING_PORTS)
    assert gpu["dcgm-exporter"] == ([9400], ["10.9.0.5", "10.9.0.6"])
    assert "prometheus" not in gpu
    assert "dcgm-exporter" not in rules_of("p-proxy", ports=MONITORING_PORTS)


def test_grafana_admits_the_monitoring_sources_only():
    groups = {**GROUPS, "grafana": ["mon"]}
    ports = {**MONITORING_PORTS, "grafana": 3000}
    assert rules_of("mon", groups=groups, ports=ports, monitoring_sources=["10.8.0.0/24"])["grafana"] == (
        [3000],
        ["10.8.0.0/24"],
    )
    assert "grafana" not in rules_of("mon", ports=ports)


def test_dns_servers_admit_clients_operators_and_monitoring_over_tcp_and_udp():
    groups = {**GROUPS, "dns_servers": ["mon"]}
    ports = {**MONITORING_PORTS, "dns": 53}
    rules = rules_of(
        "mon", groups=groups, ports=ports, client_sources=["192.0.2.0/24"], monitoring_sources=["10.8.0.0/24"]
    )
    assert rules["dns"] == ([53], ["10.8.0.0/24", "10.9.0.5", "192.0.2.0/24"])
    assert rules["dns-udp"] == ([53], ["10.8.0.0/24", "10.9.0.5", "192.0.2.0/24"])
    udp = [r["name"] for r in deployment_rules("mon", groups, ADDRESSES, SITES, ports, ["0.0.0.0/0"]) if r.get("proto")]
    assert "dns-udp" in udp
    assert "dns" not in rules_of("mon", ports=ports)  # not a DNS server
    assert "dns" not in rules_of("mon", groups=groups, ports=MONITORING_PORTS)  # no port given


def test_the_probe_reaches_the_proxies_whatever_the_client_sources():
    assert rules_of("p-proxy", client_sources=["192.0.2.0/24"])["mtls-proxy"] == ([8443], ["10.9.0.5", "192.0.2.0/24"])
