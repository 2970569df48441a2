# Copyright: deepseek.cluster contributors
# Apache License 2.0 (see LICENSE)
"""Filter systemd_exec: an argv list as a systemd ``ExecStart=`` value (module_utils/systemd_unit)."""

from __future__ import annotations

from typing import Any, Callable

from ansible.errors import AnsibleFilterError
from ansible_collections.deepseek.cluster.plugins.module_utils.systemd_unit import exec_line


def systemd_exec(argv: list[Any], expand: list[str] | None = None) -> str:
    """``argv`` quoted and escaped for systemd, one argument per continued line.

    ``${NAME}`` stays a systemd expansion for the names in ``expand`` (values from an EnvironmentFile).
    """
    if not isinstance(argv, list):
        raise AnsibleFilterError("systemd_exec expects a list of arguments")
    try:
        return exec_line([str(arg) for arg in argv], expand=tuple(expand or ()))
    except ValueError as exc:
        raise AnsibleFilterError(str(exc)) from exc


class FilterModule:
    """systemd filters."""

    def filters(self) -> dict[str, Callable[..., Any]]:
        """Filter name -> function."""
        return {"systemd_exec": systemd_exec}
