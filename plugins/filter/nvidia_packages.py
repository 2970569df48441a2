# Copyright: deepseek.cluster contributors
# Apache License 2.0 (see LICENSE)
"""Filters that choose NVIDIA repositories and packages per OS.

nvidia_driver_selection, nvidia_cuda_selection, nvidia_container_toolkit_selection,
nvidia_repository, nvidia_cuda_repository, nvidia_mirror_repository, nvidia_debian_nonfree_repository,
nvidia_upstream_version, nvidia_package_name,
nvidia_installed_driver_branch and nvidia_nvcc_release expose
module_utils/nvidia_packages to the nvidia_driver, cuda_toolkit and nvidia_container_toolkit
roles. A request no repository can satisfy fails with a message naming the variable to change.
"""

from __future__ import annotations

from typing import Any, Callable

from ansible_collections.deepseek.cluster.plugins.module_utils import nvidia_packages as sel
from ansible_collections.deepseek.cluster.plugins.plugin_utils.filter_errors import as_filter_error


def _wrap(func: Callable[..., Any]) -> Callable[..., Any]:
    """A SelectionError as AnsibleFilterError with the same message."""
    return as_filter_error(func, (sel.SelectionError,))


class FilterModule:
    """NVIDIA package selection filters."""

    def filters(self) -> dict[str, Callable[..., Any]]:
        """Filter name -> function."""
        return {
            "nvidia_driver_selection": _wrap(sel.driver_selection),
            "nvidia_cuda_selection": _wrap(sel.cuda_selection),
            "nvidia_container_toolkit_selection": _wrap(sel.container_toolkit_selection),
            "nvidia_cuda_repository": _wrap(sel.cuda_repository),
            "nvidia_mirror_repository": _wrap(sel.mirror_repository),
            "nvidia_repository": _wrap(sel.repository),
            "nvidia_debian_nonfree_repository": _wrap(sel.debian_nonfree_repository),
            "nvidia_upstream_version": sel.upstream_version,
            "nvidia_package_name": sel.package_name,
            "nvidia_installed_driver_branch": _wrap(sel.installed_driver_branch),
            "nvidia_nvcc_release": sel.nvcc_release,
        }
