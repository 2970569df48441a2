# Copyright: deepseek.cluster contributors
# Apache License 2.0 (see LICENSE)
"""Filters of the NVIDIA roles' shared install flow (role deepseek.cluster.nvidia_packages).

Each exposes one function of module_utils/nvidia_install: where the apt source comes from, which
version every versioned package goes to, the install specifications, and every apt and dnf command
line of the flow. A state the flow refuses fails with a message saying what to change.
"""

from __future__ import annotations

from typing import Any, Callable

from ansible_collections.deepseek.cluster.plugins.module_utils import nvidia_install as flow
from ansible_collections.deepseek.cluster.plugins.module_utils import nvidia_packages as sel
from ansible_collections.deepseek.cluster.plugins.module_utils.nvidia_packages import SelectionError
from ansible_collections.deepseek.cluster.plugins.plugin_utils.filter_errors import as_filter_error


def _wrap(func: Callable[..., Any]) -> Callable[..., Any]:
    """An InstallError or SelectionError as AnsibleFilterError with the same message."""
    return as_filter_error(func, (flow.InstallError, SelectionError))


class FilterModule:
    """Install-flow filters."""

    def filters(self) -> dict[str, Callable[..., Any]]:
        """Filter name -> function."""
        return {
            "nvidia_apt_source_plan": flow.apt_source_plan,
            "nvidia_own_source_path": flow.own_source_path,
            "nvidia_conflict_uri": flow.conflict_uri,
            "nvidia_same_branch": flow.same_branch,
            "nvidia_debian_nonfree": _wrap(flow.debian_nonfree),
            "nvidia_installed_versions": flow.installed_versions,
            "nvidia_resolve_target": _wrap(flow.resolve_target),
            "nvidia_pinned_specs": flow.pinned_specs,
            "nvidia_apt_simulate_argv": flow.apt_simulate_argv,
            "nvidia_apt_simulation_versions": sel.apt_simulation_versions,
            "nvidia_simulation_problems": flow.simulation_problems,
            "nvidia_dnf_enabled_streams": flow.dnf_enabled_streams,
            "nvidia_dnf_module_commands": flow.dnf_module_commands,
            "nvidia_dnf_repoquery_argv": flow.dnf_repoquery_argv,
            "nvidia_dnf_dry_run_argv": flow.dnf_dry_run_argv,
            "nvidia_dnf_dry_run_failed": flow.dnf_dry_run_failed,
            "nvidia_locks_to_release": flow.locks_to_release,
        }
