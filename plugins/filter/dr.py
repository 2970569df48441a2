# Copyright: deepseek.cluster contributors
# Apache License 2.0 (see LICENSE)
"""Filters of disaster recovery (module_utils/dr_pairs).

dr_replication_pairs: per host, its replication mode (sender, receiver, none), its peers or its sender.
dr_replication_endpoints: the named hosts' replication address and key, as the role's peers or senders.
dr_active_site: the site that serves, from the hosts' records of the last switch (failover, failback).
dr_service_addresses: the addresses clients reach the named hosts at (the service name's A records).
"""

from __future__ import annotations

from typing import Any, Callable

from ansible_collections.deepseek.cluster.plugins.module_utils import dr_pairs
from ansible_collections.deepseek.cluster.plugins.plugin_utils.filter_errors import as_filter_error


class FilterModule:
    """Disaster-recovery filters."""

    def filters(self) -> dict[str, Callable[..., Any]]:
        """Filter name -> function."""
        return {
            "dr_replication_pairs": as_filter_error(dr_pairs.replication_pairs, (ValueError,)),
            "dr_replication_endpoints": as_filter_error(dr_pairs.endpoints, (ValueError,)),
            "dr_active_site": dr_pairs.active_site,
            "dr_service_addresses": as_filter_error(dr_pairs.service_addresses, (ValueError,)),
        }
