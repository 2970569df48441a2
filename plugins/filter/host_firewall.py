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

from ansible.errors import AnsibleFilterError
from ansible_collections.deepseek.cluster.plugins.module_utils import host_firewall as fw


def host_firewall_rules(rules: Any, variable: str = "host_firewall_rules") -> list[dict[str, Any]]:
    """Rules as ``{name, proto, ports, ipv4, ipv6}``; AnsibleFilterError on the first bad field."""
    try:
        return fw.normalise_rules(rules, variable)
    except fw.RuleError as exc:
        raise AnsibleFilterError(str(exc)) from exc


def host_firewall_admits(address: str, sources: list[Any]) -> bool:
    """True when ``address`` falls inside one of ``sources`` (or ``sources`` is empty)."""
    try:
        return fw.admits(str(address), list(sources))
    except ValueError as exc:
        raise AnsibleFilterError(str(exc)) from exc


def host_firewall_deployment_rules(
    host: str,
    groups: dict[str, list[str]],
    addresses: dict[str, list[str]],
    sites: dict[str, str],
    ports: dict[str, Any],
    client_sources: list[str],
) -> list[dict[str, Any]]:
    """Allow rules for ``host`` from the inventory's groups, sites and addresses (module_utils docstring)."""
    try:
        return fw.deployment_rules(host, groups, addresses, sites, ports, client_sources)
    except fw.RuleError as exc:
        raise AnsibleFilterError(str(exc)) from exc


class FilterModule:
    """Host firewall filters."""

    def filters(self) -> dict[str, Callable[..., Any]]:
        """Filter name -> function."""
        return {
            "host_firewall_rules": host_firewall_rules,
            "host_firewall_admits": host_firewall_admits,
            "host_firewall_deployment_rules": host_firewall_deployment_rules,
        }
