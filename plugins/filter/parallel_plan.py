# Copyright: deepseek.cluster contributors
# Apache License 2.0 (see LICENSE)
"""Filters parallel_plan and parallel_plan_table: NVLink-aware placement of parallel groups."""

from __future__ import annotations

DOCUMENTATION = r"""
---
name: parallel_plan
short_description: Place TensorRT-LLM tensor/expert/pipeline parallel groups on GPUs
version_added: "0.1.0"
description:
  - Takes a mapping of host to gpu_topology facts and a parallelism request and returns the placement, GPU ids per
    instance and MPI rank, C(CUDA_VISIBLE_DEVICES), the NCCL environment, CPU/NUMA pinning, and the host
    list and rank layout when an instance spans hosts.
  - Fails, naming the hosts and GPUs, when a tensor-parallel group would cross PCIe/SYS links inside a node
    (unless O(allow_pcie_tp)), when moe_tensor_parallel_size x moe_expert_parallel_size differs from
    tensor_parallel_size, or when the GPUs do not suffice. No GPU is used twice.
  - C(parallel_plan_table) renders the result as a text table.
author:
  - deepseek.cluster maintainers (@deepseek-cluster)
options:
  _input:
    description: Mapping of host name to the C(gpu_topology) facts of that host.
    type: dict
    required: true
  request:
    description: The options below as one dict; keyword arguments override its keys.
    type: dict
  tensor_parallel_size:
    description: TP size of one instance.
    type: int
    default: 1
  pipeline_parallel_size:
    description: PP size; world size is tensor_parallel_size x pipeline_parallel_size.
    type: int
    default: 1
  moe_expert_parallel_size:
    description: Expert parallel size; default tensor_parallel_size / moe_tensor_parallel_size.
    type: int
  moe_tensor_parallel_size:
    description:
      - MoE tensor parallel size; default tensor_parallel_size / moe_expert_parallel_size.
      - 1 when neither MoE size is set.
    type: int
  enable_attention_dp:
    description: Attention data parallelism (passed through to the model configuration).
    type: bool
    default: false
  instances_per_node:
    description: Instances per host; default as many as fit.
    type: int
  allow_pcie_tp:
    description: Accept TP groups over PCIe/SYS links when NVLink cannot hold them.
    type: bool
    default: false
  socket_ifname:
    description:
      - C(NCCL_SOCKET_IFNAME) on every host (NCCL's bootstrap and socket interface); it wins over the interfaces
        derived from the RDMA devices. Same as O(nccl_env.NCCL_SOCKET_IFNAME).
    type: str
  nccl_env:
    description:
      - The operator's C(NCCL_*) variables for every host; they win over the derived ones
        (C(NCCL_P2P_LEVEL), C(NCCL_IB_HCA), C(NCCL_SOCKET_IFNAME)).
      - A host's own C(nccl_env) in O(hosts) wins over these.
    type: dict
  hosts:
    description:
      - Per host (by name) what the topology does not say, as playbooks/plan.yml fills it from the inventory
        and the gathered network facts. Not a request option, so it is not part of the returned C(request).
      - C(site) (C(deepseek_site)) and C(fabric) (C(deepseek_fabric)); an instance never spans two sites or two fabrics.
      - C(address) (C(deepseek_fabric_address)), the address mpirun reaches the host at; without it the address
        of the C(NCCL_SOCKET_IFNAME) interface, C(default_address) (the default IPv4), C(ansible_host), and last
        the inventory name with a warning.
      - C(nccl_env), this host's C(NCCL_*) (C(parallel_plan_nccl_env)); C(interfaces), interface name to address
        from gathered facts (an RDMA device's interface is used for C(NCCL_SOCKET_IFNAME) only when it has one).
    type: dict
"""

EXAMPLES = r"""
- name: Plan DeepSeek-V3 FP8 on the GPU nodes
  ansible.builtin.set_fact:
    plan: >-
      {{ dict(groups['gpu_nodes'] | zip(groups['gpu_nodes'] | map('extract', hostvars, 'gpu_topology')))
         | deepseek.cluster.parallel_plan(tensor_parallel_size=8, moe_expert_parallel_size=8) }}

- name: Plan TP16 over two 8-GPU hosts, each instance inside one site and fabric, mpirun over fabric addresses
  ansible.builtin.set_fact:
    plan: >-
      {{ topologies | deepseek.cluster.parallel_plan({'tensor_parallel_size': 16, 'moe_expert_parallel_size': 8},
           hosts={'gpu-a01': {'site': 'primary', 'address': '10.30.0.11'},
                  'gpu-a02': {'site': 'primary', 'address': '10.30.0.12'}}) }}
"""

RETURN = r"""
_value:
  description:
    - The plan, C(request), C(world_size), C(instances), C(unused_gpus) and C(warnings).
    - Each instance has C(parts) (one per host, with C(env), C(address), C(site), C(fabric)), C(hosts), C(addresses),
      C(mpi_hosts) (C(address:slots,...)), C(ranks) (rank, host, gpu, local_rank, tp_rank, pp_rank, moe_tp_rank,
      moe_ep_rank, attention_dp_rank), and the rank groups of TensorRT-LLM's Mapping, C(tp_groups),
      C(pp_groups), C(moe_tp_groups), C(moe_ep_groups), C(attention_tp_groups), C(attention_dp_size), and C(nvlink).
  type: dict
"""

from typing import Any, Callable

from ansible.errors import AnsibleFilterError
from ansible_collections.deepseek.cluster.plugins.module_utils.parallel_plan import (
    PlanError,
    plan,
    plan_table,
)


def parallel_plan(
    topologies: dict[str, Any],
    request: dict[str, Any] | None = None,
    hosts: dict[str, Any] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Return the placement for `request` (dict) and/or keyword options over {host: topology facts}.

    `hosts` gives each host's site, fabric, address and NCCL settings (module_utils/parallel_plan.HOST_DEFAULTS).
    """
    if not isinstance(topologies, dict):
        raise AnsibleFilterError("parallel_plan expects a mapping of host to gpu_topology facts")
    merged = dict(request or {})
    merged.update(options)
    try:
        return plan(topologies, merged, hosts)
    except PlanError as err:
        raise AnsibleFilterError(f"parallel_plan: {err}") from err


def parallel_plan_table(result: dict[str, Any]) -> str:
    """Render a plan as a fixed-width text table."""
    return plan_table(result)


class FilterModule:
    """Placement filters of deepseek.cluster."""

    def filters(self) -> dict[str, Callable[..., Any]]:
        """Map filter names to functions."""
        return {"parallel_plan": parallel_plan, "parallel_plan_table": parallel_plan_table}
