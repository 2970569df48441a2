"""The shipped inventories parse and have the layout the playbooks target."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from deepseek_testkit.lab import expand_group as members


def inventory(name: str) -> dict:
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"))
    out = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-inventory"), "-i", str(ROOT / "inventories" / name), "--list"],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    ).stdout
    return json.loads(out)


@pytest.mark.parametrize("name", ["lab", "example"])
def test_both_sites_have_gpu_nodes_and_proxies(name):
    data = inventory(name)
    for site in ("primary", "standby"):
        site_hosts = members(data, site)
        assert members(data, "gpu_nodes") & site_hosts, f"{name}: {site} has no gpu_nodes"
        assert members(data, "proxies") & site_hosts, f"{name}: {site} has no proxies"
    assert members(data, "monitoring"), f"{name}: no monitoring host"


@pytest.mark.parametrize("name", ["lab", "example"])
def test_every_host_of_a_site_knows_its_site(name):
    data = inventory(name)
    hostvars = data["_meta"]["hostvars"]
    for site in ("primary", "standby"):
        for host in members(data, site):
            assert hostvars[host]["deepseek_site"] == site


@pytest.mark.parametrize("name", ["lab", "example"])
def test_no_host_sits_in_both_sites(name):
    data = inventory(name)
    assert not members(data, "primary") & members(data, "standby")


def test_lab_hosts_are_reached_over_ssh_with_recorded_host_keys():
    # As production hosts are: SSH (pipelining in ansible.cfg), through the configuration lab.py writes
    # with the host keys it read from each new host; nothing turns host key checking off.
    data = inventory("lab")
    hostvars = data["_meta"]["hostvars"]
    for host in members(data, "lab"):
        assert hostvars[host].get("ansible_connection", "ssh") == "ssh"
        assert hostvars[host]["ansible_ssh_common_args"].startswith("-F ")
        assert hostvars[host]["ansible_ssh_common_args"].endswith("/.cache/lab/ssh/config")
        assert "StrictHostKeyChecking" not in hostvars[host]["ansible_ssh_common_args"]
    config = (ROOT / "ansible.cfg").read_text()
    assert "host_key_checking" not in config
    assert re.search(r"(?m)^pipelining\s*=\s*True$", config)


def test_each_lab_site_has_a_fallback_node_outside_its_main_pool():
    # Graceful degradation (docs/roles/mtls_proxy.md): group fallback_nodes is part of gpu_nodes (Triton, the
    # firewall and the metrics treat them as GPU nodes), playbooks/proxy.yml keeps them out of the main pool.
    data = inventory("lab")
    hostvars = data["_meta"]["hostvars"]
    fallback, gpu_nodes = members(data, "fallback_nodes"), members(data, "gpu_nodes")
    assert fallback <= gpu_nodes
    for site in ("primary", "standby"):
        assert fallback & members(data, site), f"{site} has no fallback node"
        assert (gpu_nodes - fallback) & members(data, site), f"{site} has no main pool left"
    # Their own model (another seed, smaller limits) wins over gpu_nodes.yml; the proxies may overflow to it.
    main_seed = {hostvars[h].get("triton_server_lab_seed") for h in gpu_nodes - fallback}
    assert {hostvars[h]["triton_server_lab_seed"] for h in fallback}.isdisjoint(main_seed)
    assert all(hostvars[p]["mtls_proxy_fallback_models"] == ["deepseek"] for p in members(data, "proxies"))
