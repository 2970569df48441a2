# Copyright: deepseek.cluster contributors
# Apache License 2.0 (see LICENSE)
"""Triton model configuration (config.pbtxt) from plain data.

Roles describe a model as a mapping that mirrors Triton's ModelConfig message (model_config.proto):
scalars, nested messages as mappings, repeated fields as lists. ``to_pbtxt`` writes the protobuf text
format Triton reads. Two conventions keep the data short and the output exact:

- a string made only of capitals, digits and underscores (``TYPE_STRING``, ``KIND_CPU``) is an enum
  value and is written bare; every other string is quoted;
- ``parameters`` is a mapping of name to string, written as Triton's
  ``parameters { key: "..." value: { string_value: "..." } }`` map entries.
"""

from __future__ import annotations

import json
import re
from typing import Any

ENUM = re.compile(r"^[A-Z][A-Z0-9_]*$")


def _scalar(value: Any) -> str:
    """One scalar in text format: bools lower-case, numbers as they are, enums bare, strings quoted."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value)
    return text if ENUM.match(text) else json.dumps(text)


def _field(name: str, value: Any, indent: str) -> list[str]:
    """Lines for one field (which may be repeated or a nested message)."""
    if name == "parameters" and isinstance(value, dict):
        return [
            f"{indent}parameters {{ key: {json.dumps(str(key))} value: {{ string_value: {json.dumps(str(val))} }} }}"
            for key, val in value.items()
        ]
    if isinstance(value, dict):
        return [f"{indent}{name} {{", *_message(value, indent + "  "), f"{indent}}}"]
    if isinstance(value, list):
        if value and all(isinstance(item, dict) for item in value):
            lines = [f"{indent}{name} ["]
            for position, item in enumerate(value):
                closing = "}," if position < len(value) - 1 else "}"
                lines += [f"{indent}  {{", *_message(item, indent + "    "), f"{indent}  {closing}"]
            return [*lines, f"{indent}]"]
        return [f"{indent}{name}: [{', '.join(_scalar(item) for item in value)}]"]
    return [f"{indent}{name}: {_scalar(value)}"]


def _message(message: dict[str, Any], indent: str) -> list[str]:
    lines = []
    for name, value in message.items():
        if value is None:
            continue
        lines += _field(str(name), value, indent)
    return lines


def to_pbtxt(config: dict[str, Any]) -> str:
    """config.pbtxt text for a ModelConfig given as data (see the module docstring)."""
    if not isinstance(config, dict) or not config.get("name"):
        raise ValueError("a Triton model configuration needs at least a name")
    return "\n".join(_message(config, "")) + "\n"
