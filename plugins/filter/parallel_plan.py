# Copyright: deepseek.cluster contributors
# Apache License 2.0 (see LICENSE)
"""Filters parallel_plan and parallel_plan_table: NVLink-aware placement of parallel groups.

Their documentation is in parallel_plan.yml and parallel_plan_table.yml beside this file.
"""

from __future__ import annotations

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
