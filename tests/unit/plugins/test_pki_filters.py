"""The revocation record: what a run adds, and the CRL entries it gives (plugins/filter/pki.py)."""

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.deepseek.cluster.plugins.filter.pki import (
    pki_crl_entries,
    pki_is_revoked,
    pki_new_revocations,
    pki_unix_time,
)

ISSUED = [
    "/store/issued/ops-1f.crt",
    "/store/issued/ops-a0b1.crt",
    "/store/issued/ops-bob-77.crt",
    "/store/issued/probe-3c.crt",
]
NOW = "20261130120000Z"


def test_every_certificate_of_a_revoked_name_and_no_other():
    assert pki_new_revocations(ISSUED, ["ops"], [], NOW) == [
        {"name": "ops", "serial": "1f", "revoked_at": NOW},
        {"name": "ops", "serial": "a0b1", "revoked_at": NOW},
    ]


def test_recorded_serials_are_not_added_again_and_keep_their_time():
    recorded = [{"name": "ops", "serial": "1f", "revoked_at": "20260101000000Z"}]
    assert pki_new_revocations(ISSUED, ["ops"], recorded, NOW) == [{"name": "ops", "serial": "a0b1", "revoked_at": NOW}]


def test_a_name_dropped_from_pki_revoke_adds_nothing_and_removes_nothing():
    recorded = [{"name": "ops", "serial": "1f", "revoked_at": "20260101000000Z"}]
    assert pki_new_revocations(ISSUED, [], recorded, NOW) == []
    assert pki_crl_entries(recorded) == [{"serial_number": 0x1F, "revocation_date": "20260101000000Z"}]


def test_a_broken_record_entry_is_named():
    with pytest.raises(AnsibleFilterError, match="revoked.yml entry 0"):
        pki_crl_entries([{"name": "ops", "serial": "zz", "revoked_at": NOW}])


def test_asn1_times_become_unix_seconds():
    assert pki_unix_time("19700101000000Z") == 0
    assert pki_unix_time("20261207120000Z") == 1796644800
    with pytest.raises(AnsibleFilterError, match="not a time"):
        pki_unix_time("2026-12-07")


def test_a_certificate_whose_serial_is_recorded_is_revoked_and_no_other():
    recorded = [
        {"name": "ops", "serial": "a0b1", "revoked_at": NOW},
        {"name": "old", "serial": "1f", "revoked_at": NOW},
    ]
    assert pki_is_revoked(0xA0B1, recorded)
    assert pki_is_revoked(31, recorded)
    assert not pki_is_revoked(0xA0B2, recorded)
    assert not pki_is_revoked(0xA0B1, [])
    with pytest.raises(AnsibleFilterError, match="not an integer serial"):
        pki_is_revoked("a0b1", recorded)
