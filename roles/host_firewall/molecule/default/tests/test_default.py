"""host_firewall on Debian 12: the table, the boot unit, and what reaches the target from where.

The peer is the one source the inference rule admits; the controller (this process, on the machine
that runs the containers) is admitted to SSH only; nobody reaches the metrics port. Connections are
real TCP handshakes, so a missing or wrong rule fails here.
"""

import json
import os
import socket

import testinfra

TARGET = "molecule-host-firewall-target"
PEER = "molecule-host-firewall-peer"
TABLE = "deepseek_filter"
testinfra_hosts = [f"ansible://{TARGET}"]


def other(name):
    """Another host of the scenario, through molecule's inventory."""
    return testinfra.get_host(f"ansible://{name}?ansible_inventory={os.environ['MOLECULE_INVENTORY_FILE']}")


def address(host):
    return host.ansible("setup", "gather_subset=network")["ansible_facts"]["ansible_default_ipv4"]["address"]


def ruleset(host):
    """The live table as nft's JSON (libnftables schema)."""
    out = host.check_output(f"nft -j list table inet {TABLE}")
    return json.loads(out)["nftables"]


def connects_from_controller(ip, port):
    try:
        with socket.create_connection((ip, port), timeout=3):
            return True
    except OSError:
        return False


def test_table_has_default_deny_on_input(host):
    (chain,) = [item["chain"] for item in ruleset(host) if "chain" in item]
    assert (chain["hook"], chain["policy"], chain["type"]) == ("input", "drop", "filter")


def test_config_file_and_unit(host):
    config = host.file("/etc/deepseek/host-firewall.nft")
    assert (config.user, config.mode) == ("root", 0o600)
    assert host.run("nft -c -f /etc/deepseek/host-firewall.nft").rc == 0
    unit = host.service("deepseek-host-firewall")
    assert unit.is_enabled
    assert unit.is_running


def test_the_admitted_peer_reaches_the_inference_port_only(host):
    peer = other(PEER)
    target = address(host)
    assert peer.run(f"python3 -c 'import socket; socket.create_connection((\"{target}\", 8000), 3)'").rc == 0
    assert peer.run(f"python3 -c 'import socket; socket.create_connection((\"{target}\", 8002), 3)'").rc != 0


def test_the_controller_reaches_ssh_and_nothing_else(host):
    target = address(host)
    assert connects_from_controller(target, 22)
    assert not connects_from_controller(target, 8000)
    assert not connects_from_controller(target, 8002)


def test_listeners_are_up_so_refusals_are_the_firewalls(host):
    for port in (8000, 8002):
        assert host.socket(f"tcp://0.0.0.0:{port}").is_listening


def test_the_operators_own_table_is_kept(host):
    tables = host.check_output("nft list tables").splitlines()
    assert f"table inet {TABLE}" in tables
    assert "table inet operator" in tables
