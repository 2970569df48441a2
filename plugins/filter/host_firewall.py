# Copyright: deepseek.cluster contributors
# Apache License 2.0 (see LICENSE)
"""Filters of the host_firewall role (module_utils/host_firewall).

host_firewall_rules: validate and normalise allow rules for the nftables template; a bad rule fails
with a message naming the variable, the rule and the field.
host_firewall_deployment_rules: one host's allow rules derived from the inventory (playbooks/firewall.yml).
host_firewall_admits: whether an address is inside a list of sources (the lock-out guard).
"""

from __future__ import annotations

from typing import Any, Callable

from ansible_collections.deepseek.cluster.plugins.module_utils import host_firewall as fw
from ansible_collections.deepseek.cluster.plugins.plugin_utils.filter_errors import as_filter_error


def _wrap(func: Callable[..., Any]) -> Callable[..., Any]:
    """RuleError (and a bad address, a ValueError too) as AnsibleFilterError."""
    return as_filter_error(func, (ValueError,))


class FilterModule:
    """Host firewall filters."""

    def filters(self) -> dict[str, Callable[..., Any]]:
        """Filter name -> function."""
        return {
            "host_firewall_rules": _wrap(fw.normalise_rules),
            "host_firewall_admits": _wrap(lambda address, sources: fw.admits(str(address), list(sources))),
            "host_firewall_deployment_rules": _wrap(fw.deployment_rules),
        }
