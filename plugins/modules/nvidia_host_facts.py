#!/usr/bin/python
# Copyright: deepseek.cluster contributors
# Apache License 2.0 (see LICENSE)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: nvidia_host_facts
short_description: What a host's kernel reports about NVIDIA GPUs, NVSwitches, the driver and Secure Boot
version_added: "0.1.0"
description:
  - Reads sysfs and procfs only (no nvidia-smi), so it answers before any driver is installed, and
    returns C(ansible_facts.nvidia_host).
  - GPUs and NVSwitches come from the PCI functions of vendor 0x10de (class 0x0300/0x0302 and 0x0680),
    or for NVSwitches from C(/proc/driver/nvidia-nvswitch/devices) when the driver lists them.
  - Open kernel modules are recommended when every GPU is Turing or newer (PCI device id 0x1e00 and up),
    and required on Blackwell and Grace Hopper (C(requires_open_modules)).
  - Each GPU's architecture comes from its PCI device id block (turing, ampere, hopper, ada, blackwell).
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
  root:
    description:
      - Directory under which C(sys/), C(proc/) and C(run/) are read. C(/) on a live host.
    type: path
    default: /
notes:
  - Inside a container the PCI functions of the host may be visible while no kernel module can be
    loaded; the C(container) fact says so and the roles take their user-space-only path.
"""

EXAMPLES = r"""
- name: Read the NVIDIA facts of a GPU node
  deepseek.cluster.nvidia_host_facts:

- name: Fabric manager belongs only on NVSwitch boards
  ansible.builtin.debug:
    msg: "NVSwitches: {{ ansible_facts.nvidia_host.nvswitches | join(', ') }}"
  when: ansible_facts.nvidia_host.nvswitch_present
"""

RETURN = r"""
ansible_facts:
  description: Facts under C(nvidia_host).
  returned: always
  type: complex
  contains:
    nvidia_host:
      description:
        - C(container) (docker, podman, lxc ... or empty), C(gpus) (pci_bus_id, device_id,
          open_module_capable, architecture), C(gpu_count), C(architectures), C(requires_open_modules),
          C(infiniband) (RDMA devices), C(nvswitches), C(nvswitch_present),
          C(recommended_kernel_modules) (open or proprietary), C(kernel_module) (loaded, version,
          flavor), C(nouveau_loaded), C(secure_boot) (enabled, disabled or unsupported).
      type: dict
      returned: always
      sample:
        container: ""
        gpus:
          - {pci_bus_id: "0000:18:00.0", device_id: "0x2330", open_module_capable: true, architecture: hopper}
        gpu_count: 1
        architectures: [hopper]
        requires_open_modules: false
        infiniband: [mlx5_0]
        nvswitches: ["0000:05:00.0"]
        nvswitch_present: true
        recommended_kernel_modules: open
        kernel_module: {loaded: true, version: "580.95.05", flavor: open}
        nouveau_loaded: false
        secure_boot: disabled
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.deepseek.cluster.plugins.module_utils.nvidia_host import host_facts


def main() -> None:
    """Read the facts and return them; never fails for missing hardware."""
    module = AnsibleModule(argument_spec={"root": {"type": "path", "default": "/"}}, supports_check_mode=True)
    facts = host_facts(module.params["root"])
    module.exit_json(changed=False, ansible_facts={"nvidia_host": facts})


if __name__ == "__main__":
    main()
