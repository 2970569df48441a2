# Copyright: deepseek.cluster contributors
# Apache License 2.0 (see LICENSE)
"""Command lines for systemd unit files.

systemd parses ``ExecStart=`` itself (no shell): words split on whitespace, double quotes group, C-style
backslash escapes, ``%`` starts a specifier and ``$`` an environment expansion. ``exec_line`` writes an
argv so that systemd hands the program exactly those arguments.
"""

from __future__ import annotations

_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_=/.,:+@")


def exec_word(arg: str, expand: tuple[str, ...] = ()) -> str:
    """One argument, escaped for systemd and double-quoted unless it is plain.

    ``${NAME}`` stays an expansion for each NAME in ``expand`` (a secret systemd reads from the unit's
    EnvironmentFile, so that it is not written into the unit); every other ``$`` is literal.
    """
    escaped = arg.replace("%", "%%").replace("$", "$$")
    for name in expand:
        escaped = escaped.replace("$${" + name + "}", "${" + name + "}")
    if escaped and set(escaped) <= _PLAIN:
        return escaped
    return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'


def exec_line(argv: list[str], separator: str = " \\\n  ", expand: tuple[str, ...] = ()) -> str:
    """``argv`` as the value of ``ExecStart=``, one argument per continued line by default."""
    if not argv:
        raise ValueError("an empty command cannot be a systemd Exec line")
    return separator.join(exec_word(str(arg), expand) for arg in argv)
