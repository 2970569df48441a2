# Copyright: deepseek.cluster contributors
# Apache License 2.0 (see LICENSE)
"""Controller-side helper for filter plugins: a library's own error becomes Ansible's filter error."""

from __future__ import annotations

from typing import Any, Callable

from ansible.errors import AnsibleFilterError


def as_filter_error(func: Callable[..., Any], errors: tuple[type[Exception], ...]) -> Callable[..., Any]:
    """``func``, raising AnsibleFilterError with the same message where it raised one of ``errors``."""

    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except errors as exc:
            raise AnsibleFilterError(str(exc)) from exc

    call.__doc__ = func.__doc__
    return call
