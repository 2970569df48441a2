# Copyright: deepseek.cluster contributors
# Apache License 2.0 (see LICENSE)
"""Filters of the nvidia_driver role's decisions after the install.

nvidia_mok_state, nvidia_persistenced_command, nvidia_reboot_plan, nvidia_fabric_states, nvidia_fabric_problems,
nvidia_kernels_to_check, nvidia_modules_missing and nvidia_no_module_reasons expose
module_utils/nvidia_driver_checks (reboot, Secure Boot enrollment, NVSwitch fabric state, the
module of each kernel, why no module is loaded).
"""

from __future__ import annotations

from typing import Any, Callable

from ansible_collections.deepseek.cluster.plugins.module_utils import nvidia_driver_checks as checks


class FilterModule:
    """nvidia_driver decision filters."""

    def filters(self) -> dict[str, Callable[..., Any]]:
        """Filter name -> function."""
        return {
            "nvidia_mok_state": checks.mok_state,
            "nvidia_persistenced_command": checks.persistenced_command,
            "nvidia_reboot_plan": checks.reboot_plan,
            "nvidia_fabric_states": checks.fabric_states,
            "nvidia_fabric_problems": checks.fabric_problems,
            "nvidia_kernels_to_check": checks.kernels_to_check,
            "nvidia_modules_missing": checks.modules_missing,
            "nvidia_no_module_reasons": checks.no_module_reasons,
        }
