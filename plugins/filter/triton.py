# Copyright: deepseek.cluster contributors
# Apache License 2.0 (see LICENSE)
"""Filters for Triton Inference Server model repositories.

triton_pbtxt turns a ModelConfig described as data into config.pbtxt text (module_utils/triton_config);
triton_llmapi_model_yaml and triton_llmapi_config give the llmapi layout's model.yaml and config.pbtxt
data for DeepSeek-V3/R1 (module_utils/triton_layouts).
"""

from __future__ import annotations

from typing import Any, Callable

from ansible.errors import AnsibleFilterError
from ansible_collections.deepseek.cluster.plugins.module_utils.triton_config import to_pbtxt
from ansible_collections.deepseek.cluster.plugins.module_utils.triton_layouts import (
    LayoutError,
    llmapi_config,
    llmapi_model_yaml,
)


def triton_pbtxt(config: dict[str, Any]) -> str:
    """config.pbtxt text of ``config``; a configuration without a name is an error."""
    try:
        return to_pbtxt(config)
    except ValueError as exc:
        raise AnsibleFilterError(str(exc)) from exc


def triton_llmapi_model_yaml(
    plan_request: dict[str, Any], options: dict[str, Any], decoupled: bool = True
) -> dict[str, Any]:
    """model.yaml content of the llmapi layout; a bad combination fails naming the variable."""
    try:
        return llmapi_model_yaml(plan_request, options, decoupled)
    except LayoutError as exc:
        raise AnsibleFilterError(str(exc)) from exc


def triton_llmapi_config(name: str, decoupled: bool = True) -> dict[str, Any]:
    """config.pbtxt data of the llmapi model served as ``name``."""
    return llmapi_config(name, decoupled)


class FilterModule:
    """Triton filters."""

    def filters(self) -> dict[str, Callable[..., Any]]:
        """Filter name -> function."""
        return {
            "triton_pbtxt": triton_pbtxt,
            "triton_llmapi_model_yaml": triton_llmapi_model_yaml,
            "triton_llmapi_config": triton_llmapi_config,
        }
