"""Who replicates to whom, the endpoints handed to the role, and which site serves (module_utils/dr_pairs)."""

import pytest
from ansible_collections.deepseek.cluster.plugins.module_utils.dr_pairs import active_site, endpoints, replication_pairs

FUNCTIONS = ["fallback_nodes", "gpu_nodes", "proxies"]
GROUPS = {
    "gpu_nodes": ["p-gpu1", "p-gpu2", "p-fb", "s-gpu1", "s-gpu2", "s-gpu3", "s-fb"],
    "fallback_nodes": ["p-fb", "s-fb"],
    "proxies": ["p-proxy", "s-proxy"],
    "monitoring": ["mon"],
}
SITES = {h: ("primary" if h.startswith("p-") else "standby") for h in GROUPS["gpu_nodes"] + GROUPS["proxies"]}


def test_each_receiver_has_one_sender_of_its_function():
    plan = replication_pairs(GROUPS, SITES, "primary", FUNCTIONS)
    assert plan["s-gpu1"] == {"mode": "receiver", "function": "gpu_nodes", "peers": [], "sender": "p-gpu1"}
    assert plan["s-gpu2"]["sender"] == "p-gpu2"
    assert plan["s-gpu3"]["sender"] == "p-gpu1"  # the third of three standby nodes wraps to the first sender
    assert plan["p-gpu1"]["mode"] == "sender"
    assert plan["p-gpu1"]["peers"] == ["s-gpu1", "s-gpu3"]
    assert plan["p-gpu2"]["peers"] == ["s-gpu2"]
    # A fallback node is a GPU node serving another model: it pairs with the other site's fallback node only.
    assert plan["s-fb"] == {"mode": "receiver", "function": "fallback_nodes", "peers": [], "sender": "p-fb"}
    assert plan["p-fb"]["peers"] == ["s-fb"]
    assert plan["s-proxy"]["sender"] == "p-proxy"
    assert "mon" not in plan


def test_the_other_direction_after_a_failover():
    plan = replication_pairs(GROUPS, SITES, "standby", FUNCTIONS)
    assert plan["p-gpu1"] == {"mode": "receiver", "function": "gpu_nodes", "peers": [], "sender": "s-gpu1"}
    assert plan["p-gpu2"]["sender"] == "s-gpu2"
    assert plan["s-gpu3"] == {"mode": "none", "function": "gpu_nodes", "peers": [], "sender": ""}
    assert plan["s-proxy"]["peers"] == ["p-proxy"]


def test_a_function_with_receivers_and_no_sender_is_refused():
    groups = {"gpu_nodes": ["p-gpu1", "s-gpu1"], "proxies": ["s-proxy"]}
    with pytest.raises(ValueError, match="proxies: s-proxy would receive replication"):
        replication_pairs(
            groups, {"p-gpu1": "primary", "s-gpu1": "standby", "s-proxy": "standby"}, "primary", FUNCTIONS
        )


def test_an_unknown_active_site_is_refused():
    with pytest.raises(ValueError, match="the active site 'dr' is no host's deepseek_site"):
        replication_pairs(GROUPS, SITES, "dr", FUNCTIONS)


def test_a_site_alone_sends_nothing():
    plan = replication_pairs({"gpu_nodes": ["p-gpu1"]}, {"p-gpu1": "primary"}, "primary", FUNCTIONS)
    assert plan["p-gpu1"]["mode"] == "none"


HOSTVARS = {
    "a": {
        "deepseek_dr_address": "10.9.0.1",
        "deepseek_address": "10.0.0.1",
        "ansible_facts": {"default_ipv4": {"address": "10.1.0.1"}},
        "k": "ssh-ed25519 AAAA a",
    },
    "b": {
        "deepseek_address": "10.0.0.2",
        "ansible_facts": {"default_ipv4": {"address": "10.1.0.2"}},
        "k": " ssh-ed25519 BBBB \n",
    },
    "c": {"ansible_facts": {"default_ipv4": {"address": "10.1.0.3"}}, "k": "ssh-ed25519 CCCC"},
    "d": {"ansible_facts": {}, "k": "ssh-ed25519 DDDD"},
    "e": {"ansible_facts": {"default_ipv4": {"address": "10.1.0.5"}}},
}


def test_endpoint_addresses_prefer_the_replication_address_then_the_deployment_address():
    found = endpoints(["a", "b", "c"], HOSTVARS, "public_key", "k")
    assert [e["address"] for e in found] == ["10.9.0.1", "10.0.0.2", "10.1.0.3"]
    assert found[1] == {"name": "b", "address": "10.0.0.2", "public_key": "ssh-ed25519 BBBB"}


def test_endpoints_need_an_address_and_a_key():
    with pytest.raises(ValueError, match="d: no deepseek_dr_address"):
        endpoints(["d"], HOSTVARS, "host_key", "k")
    with pytest.raises(ValueError, match="e: k is not set"):
        endpoints(["e"], HOSTVARS, "host_key", "k")
    assert endpoints(["e"], HOSTVARS, "host_key", "k", True) == [{"name": "e", "address": "10.1.0.5", "host_key": ""}]


def test_the_newest_switch_wins():
    states = {
        "p-proxy": {"active_site": "primary", "epoch": 100},
        "s-proxy": {"active_site": "standby", "epoch": 200, "fenced_site": "primary"},
        "s-gpu1": {"active_site": "standby", "epoch": 200, "fenced_site": "primary"},
        "x": {},
        "y": "garbage",
        "z": {"active_site": "primary", "epoch": "not a number"},
    }
    assert active_site(states, "primary") == {
        "site": "standby",
        "epoch": 200,
        "recorded_by": "s-gpu1",
        "fenced_site": "primary",
    }


def test_without_a_record_the_inventory_decides():
    assert active_site({"a": {}, "b": {"epoch": 5}}, "primary") == {
        "site": "primary",
        "epoch": 0,
        "recorded_by": "inventory",
        "fenced_site": "",
    }


def test_service_addresses_are_what_clients_reach():
    from ansible_collections.deepseek.cluster.plugins.module_utils.dr_pairs import service_addresses

    assert service_addresses(["c", "b"], HOSTVARS) == ["10.0.0.2", "10.1.0.3"]
    with pytest.raises(ValueError, match="d: no deepseek_address"):
        service_addresses(["d"], HOSTVARS)
