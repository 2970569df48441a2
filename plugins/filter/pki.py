# Copyright: deepseek.cluster contributors
# Apache License 2.0 (see LICENSE)
"""Filters of the pki role: the revocation record and the CRL entries built from it.

The store keeps every certificate it issued as ``issued/<name>-<serial hex>.crt`` and every revocation
in ``revoked.yml`` as ``{name, serial, revoked_at}``. A revocation, once recorded, stays: the CRL is
built from the record, not from today's ``pki_revoke``.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any, Callable

from ansible.errors import AnsibleFilterError

_ISSUED = re.compile(r"^(?P<name>.+)-(?P<serial>[0-9a-f]+)\.crt$")


def pki_new_revocations(issued: list[str], revoke: list[str], recorded: list[dict[str, Any]], now: str) -> list[dict]:
    """Entries to add to the record: every issued certificate of a name in ``revoke`` not recorded yet.

    ``issued`` are file names of the store's issued/ directory; a name matches its own files only
    (revoking ``ops`` does not touch ``ops-bob``). ``now`` is the ASN.1 time the new entries get.
    """
    known = {str(entry.get("serial", "")) for entry in recorded or []}
    wanted = set(revoke or [])
    found = []
    for filename in sorted(issued or []):
        match = _ISSUED.match(str(filename).rsplit("/", 1)[-1])
        if match and match["name"] in wanted and match["serial"] not in known:
            found.append({"name": match["name"], "serial": match["serial"], "revoked_at": now})
            known.add(match["serial"])
    return found


def pki_crl_entries(recorded: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The record as x509_crl revoked_certificates: integer serial, revocation date as recorded."""
    entries = []
    for index, entry in enumerate(recorded or []):
        try:
            entries.append(
                {"serial_number": int(str(entry["serial"]), 16), "revocation_date": str(entry["revoked_at"])}
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise AnsibleFilterError(
                f"revoked.yml entry {index} is not {{name, serial, revoked_at}}: {entry!r}"
            ) from exc
    return entries


def pki_is_revoked(serial: int | str, recorded: list[dict[str, Any]]) -> bool:
    """Whether a certificate's serial (an integer, as x509_certificate_info reports it) is in the record.

    The record keeps serials as lowercase hex without leading zeros (the issued/ file names).
    """
    try:
        wanted = "%x" % int(serial)
    except (TypeError, ValueError) as exc:
        raise AnsibleFilterError(f"pki_is_revoked: {serial!r} is not an integer serial") from exc
    return any(str(entry.get("serial", "")).lower().lstrip("0") == wanted.lstrip("0") for entry in recorded or [])


def pki_unix_time(asn1: str) -> int:
    """An ASN.1 GeneralizedTime as community.crypto reports it (``20261207120000Z``), as Unix seconds."""
    try:
        return int(datetime.strptime(str(asn1), "%Y%m%d%H%M%SZ").replace(tzinfo=timezone.utc).timestamp())
    except ValueError as exc:
        raise AnsibleFilterError(f"pki_unix_time: {asn1!r} is not a time like 20261207120000Z") from exc


class FilterModule:
    """pki filters."""

    def filters(self) -> dict[str, Callable[..., Any]]:
        """Filter name -> function."""
        return {
            "pki_new_revocations": pki_new_revocations,
            "pki_crl_entries": pki_crl_entries,
            "pki_is_revoked": pki_is_revoked,
            "pki_unix_time": pki_unix_time,
        }
