#!/usr/bin/python
# Copyright: deepseek.cluster contributors
# Apache License 2.0 (see LICENSE)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: gpu_topology
short_description: Discover NVIDIA GPU, NVLink, NVSwitch, NUMA and NIC topology
version_added: "0.1.0"
description:
  - Runs C(nvidia-smi topo -m) and C(nvidia-smi -q -x) on the host, or reads captured outputs of them,
    and returns the GPU topology as facts (C(ansible_facts.gpu_topology)).
  - Facts cover every GPU (index, name, UUID, memory, PCI bus id, NUMA node, CPU affinity), the link
    matrix, NVLink domains (connected components over NVLink), the maximal NVLink cliques inside them,
    whether an NVSwitch fabric is present and why, and per GPU its NICs ranked PIX < PXB < PHB < NODE < SYS.
  - A host without nvidia-smi or without GPUs gives C(present=false) and no GPUs; the module never fails for that.
  - Never changes anything; supports check mode.
author:
  - deepseek.cluster maintainers (@deepseek-cluster)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - ansible.builtin.action_common_attributes.facts
attributes:
  check_mode:
    support: full
    details: Only reads; check mode returns the same facts.
  diff_mode:
    support: none
    details: Changes nothing, so there is no difference to show.
  facts:
    support: full
  platform:
    platforms: posix
options:
  topo_src:
    description:
      - Path of a captured C(nvidia-smi topo -m) output to parse instead of running nvidia-smi.
      - The path is read where the module runs; delegate to C(localhost) to read files on the controller.
    type: path
  query_src:
    description:
      - Path of a captured C(nvidia-smi -q -x) XML output (names, UUIDs, memory, PCI ids, fabric state).
      - Used with O(topo_src); without it those per-GPU fields are null.
    type: path
  nvidia_smi:
    description:
      - nvidia-smi executable, looked up in PATH when not absolute. Used when O(topo_src) is not given.
    type: str
    default: nvidia-smi
  nvswitch_devices_path:
    description:
      - Directory whose entries are NVSwitch devices. Non-empty means an NVSwitch fabric is present.
      - Only read on live hosts (without O(topo_src)).
    type: path
    default: /proc/driver/nvidia-nvswitch/devices
  nic_netdevs:
    description:
      - Map of RDMA device name to network interface name (for example C(mlx5_0=ib0)), used for
        C(NCCL_SOCKET_IFNAME) by the planner. On live hosts it is read from C(/sys/class/infiniband) and
        this option adds to or overrides it.
    type: dict
    default: {}
notes:
  - The parser accepts the variations seen in real captures, spaces or tabs, NIC columns named C(NIC#) or
    C(mlx5_#) with or without NIC rows and a NIC legend, a C(GPU NUMA ID) column, blank affinity fields,
    a legend block or none.
seealso:
  - name: Topology and placement
    description: How the facts are read and how parallel groups are placed (docs/topology.md).
    link: https://github.com/deepseek-cluster/deepseek.cluster/blob/main/docs/topology.md
"""

EXAMPLES = r"""
- name: Discover the topology of a GPU node
  deepseek.cluster.gpu_topology:
  register: topo

- name: Plan offline from captured files on the controller
  deepseek.cluster.gpu_topology:
    topo_src: "{{ inventory_dir }}/captures/{{ inventory_hostname }}/topo-m.txt"
    query_src: "{{ inventory_dir }}/captures/{{ inventory_hostname }}/q-x.xml"
  delegate_to: localhost
"""

RETURN = r"""
topology:
  description: The topology facts, also set as C(ansible_facts.gpu_topology).
  returned: always
  type: dict
  contains:
    present:
      description: Whether any GPU was found.
      type: bool
      sample: true
    reason:
      description: Why no GPU was found, when RV(topology.present) is false.
      type: str
      sample: nvidia-smi not found
    source:
      description: Where the facts came from, C(nvidia-smi), C(files) or C(none).
      type: str
    gpu_count:
      description: Number of GPUs.
      type: int
      sample: 8
    driver_version:
      description: Driver version from C(-q -x), when available.
      type: str
    gpus:
      description: One entry per GPU with index, name, uuid, memory_mib, pci_bus_id, numa_node,
        gpu_numa_id, cpu_affinity (list of CPU ids), cpu_affinity_text and nearest_nics (name and link, ranked).
      type: list
      elements: dict
    links:
      description: The link matrix as printed, one row per device, e.g. GPU0 -> GPU1 -> NV18.
      type: dict
    nvlink_domains:
      description: GPU indices grouped into connected components over NVLink.
      type: list
      elements: list
      sample: [[0, 1], [2, 3]]
    nvlink_cliques:
      description: Maximal sets of GPUs joined pairwise by NVLink, largest first.
      type: list
      elements: list
    nvswitch:
      description: Whether an NVSwitch fabric is present.
      type: bool
    nvswitch_evidence:
      description: Why RV(topology.nvswitch) was decided so.
      type: str
    nics:
      description: NIC names in column order (legend names such as mlx5_0 where printed).
      type: list
      elements: str
    nic_netdevs:
      description: RDMA device to network interface map.
      type: dict
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.deepseek.cluster.plugins.module_utils.gpu_topology import (
    TopologyParseError,
    build_facts,
)

INFINIBAND_SYSFS = "/sys/class/infiniband"


def read_file(module: AnsibleModule, path: str) -> str:
    """Read a captured output file or fail naming the option's path."""
    try:
        with open(path) as handle:
            return handle.read()
    except OSError as err:
        module.fail_json(msg=f"cannot read {path}: {err}")


def live_netdevs() -> dict[str, str]:
    """RDMA device -> network interface names, from sysfs (empty when there is no RDMA)."""
    netdevs = {}
    if not os.path.isdir(INFINIBAND_SYSFS):
        return netdevs
    for device in sorted(os.listdir(INFINIBAND_SYSFS)):
        net = os.path.join(INFINIBAND_SYSFS, device, "device", "net")
        if os.path.isdir(net):
            names = sorted(os.listdir(net))
            if names:
                netdevs[device] = names[0]
    return netdevs


def nvswitch_devices(path: str | None) -> list[str]:
    """Entries of the NVSwitch device directory (empty when it is missing)."""
    if not path or not os.path.isdir(path):
        return []
    return sorted(os.listdir(path))


def absent(module: AnsibleModule, reason: str) -> None:
    """Exit with present=false and an empty inventory."""
    facts = {
        "present": False,
        "reason": reason,
        "source": "none",
        "gpu_count": 0,
        "driver_version": None,
        "cuda_version": None,
        "gpus": [],
        "links": {},
        "nvlink_domains": [],
        "nvlink_cliques": [],
        "nvswitch": False,
        "nvswitch_evidence": reason,
        "nics": [],
        "nic_netdevs": {},
    }
    module.exit_json(changed=False, topology=facts, ansible_facts={"gpu_topology": facts})


def run_smi(module: AnsibleModule, binary: str, args: list[str]) -> tuple[int, str, str]:
    """Run nvidia-smi; returns (rc, stdout, stderr)."""
    return module.run_command([binary] + args, check_rc=False)


def main() -> None:
    """Module entry point."""
    module = AnsibleModule(
        argument_spec=dict(
            topo_src=dict(type="path"),
            query_src=dict(type="path"),
            nvidia_smi=dict(type="str", default="nvidia-smi"),
            nvswitch_devices_path=dict(type="path", default="/proc/driver/nvidia-nvswitch/devices"),
            nic_netdevs=dict(type="dict", default={}),
        ),
        required_by={"query_src": "topo_src"},
        supports_check_mode=True,
    )
    params = module.params
    netdevs = {}
    switches = []
    if params["topo_src"]:
        source = "files"
        topo_text = read_file(module, params["topo_src"])
        query_text = read_file(module, params["query_src"]) if params["query_src"] else None
    else:
        source = "nvidia-smi"
        binary = params["nvidia_smi"]
        if not os.path.isabs(binary):
            binary = module.get_bin_path(binary)
        if not binary or not os.path.exists(binary):
            absent(module, "nvidia-smi not found")
        rc, topo_text, err = run_smi(module, binary, ["topo", "-m"])
        if rc != 0:
            absent(module, "nvidia-smi topo -m failed (rc=%d): %s" % (rc, (err or topo_text).strip()))
        rc, query_text, err = run_smi(module, binary, ["-q", "-x"])
        if rc != 0:
            query_text = None
            module.warn("nvidia-smi -q -x failed (rc=%d); GPU names, UUIDs and memory are unknown" % rc)
        netdevs = live_netdevs()
        switches = nvswitch_devices(params["nvswitch_devices_path"])
    netdevs.update(params["nic_netdevs"] or {})
    try:
        facts = build_facts(topo_text, query_text, switches)
    except TopologyParseError as err:
        module.fail_json(msg=f"cannot parse nvidia-smi output ({source}): {err}")
    if not facts["present"]:
        absent(module, "no GPU in the nvidia-smi output")
    facts.update({"reason": "", "source": source, "nic_netdevs": netdevs})
    module.exit_json(changed=False, topology=facts, ansible_facts={"gpu_topology": facts})


if __name__ == "__main__":
    main()
