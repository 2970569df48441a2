# Copyright: deepseek.cluster contributors
# Apache License 2.0 (see LICENSE)
"""Filters of the prometheus role (module_utils/prometheus_targets).

prometheus_scrape_targets: every scrape job's target groups (file_sd format) derived from the inventory.
prometheus_unprobed_nodes: GPU nodes whose site has no proxy, so that no per-node probe reaches them.
"""

from __future__ import annotations

from typing import Any, Callable

from ansible_collections.deepseek.cluster.plugins.module_utils import prometheus_targets as pt
from ansible_collections.deepseek.cluster.plugins.plugin_utils.filter_errors import as_filter_error


class FilterModule:
    """Prometheus filters."""

    def filters(self) -> dict[str, Callable[..., Any]]:
        """Filter name -> function."""
        return {
            "prometheus_scrape_targets": as_filter_error(pt.scrape_targets, (ValueError,)),
            "prometheus_unprobed_nodes": as_filter_error(pt.sites_without_proxy, (ValueError,)),
        }
