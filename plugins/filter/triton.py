# Copyright: deepseek.cluster contributors
# Apache License 2.0 (see LICENSE)
"""Filters for Triton Inference Server model repositories.

triton_pbtxt turns a ModelConfig described as data into config.pbtxt text (module_utils/triton_config).
"""

from __future__ import annotations

from typing import Any, Callable

from ansible.errors import AnsibleFilterError
from ansible_collections.deepseek.cluster.plugins.module_utils.triton_config import to_pbtxt


def triton_pbtxt(config: dict[str, Any]) -> str:
    """config.pbtxt text of ``config``; a configuration without a name is an error."""
    try:
        return to_pbtxt(config)
    except ValueError as exc:
        raise AnsibleFilterError(str(exc)) from exc


class FilterModule:
    """Triton filters."""

    def filters(self) -> dict[str, Callable[..., Any]]:
        """Filter name -> function."""
        return {"triton_pbtxt": triton_pbtxt}
