"""BIND authoritative for one zone, changed only by TSIG-signed updates of the granted names and types.

Runs after side_effect.yml switched inference to 192.0.2.20 with community.general.nsupdate and a converge
after that update changed nothing. dig and nsupdate (bind9-dnsutils, a fixture) run on the host itself.
"""

import base64
import os
import re
import shlex
import time
from pathlib import Path

import pytest
import yaml

SCENARIO = Path(os.environ.get("MOLECULE_SCENARIO_DIRECTORY", Path(__file__).resolve().parents[1]))
VARS = yaml.safe_load((SCENARIO / "molecule.yml").read_text())["provisioner"]["inventory"]["group_vars"]["all"]
ZONE = VARS["dns_server_zone"]
KEY = f"{VARS['dns_server_tsig_algorithm']}:{VARS['dns_server_tsig_key_name']}:{VARS['dns_server_tsig_secret']}"
# Another well-formed secret of the same length (32 zero bytes): a key with the right name and the wrong secret.
WRONG_SECRET = base64.b64encode(bytes(32)).decode()
SERVICE = f"inference.{ZONE}."
ZONE_FILE = f"/var/lib/bind/db.{ZONE}"
KEY_FILE = "/etc/bind/deepseek-update.key"


def dig(host, *args, server="127.0.0.1"):
    """dig's header and answer section: (status, flags, answer records as [name, ttl, class, type, data])."""
    out = host.run(f"dig @{server} +time=3 +tries=1 +noall +comments +answer {' '.join(map(shlex.quote, args))}")
    assert out.rc == 0, out.stdout + out.stderr
    status = re.search(r"status: (\w+)", out.stdout)
    flags = re.search(r";; flags: ([a-z ]*);", out.stdout)
    answers = [line.split(None, 4) for line in out.stdout.splitlines() if line and not line.startswith(";")]
    return (status.group(1) if status else None), set(flags.group(1).split() if flags else []), answers


def rdata(host, name, rrtype, **kwargs):
    """The answer's data for one name and type, sorted, with the status and flags."""
    status, flags, answers = dig(host, name, rrtype, **kwargs)
    return status, flags, sorted(a[4] for a in answers if a[3] == rrtype)


def nsupdate(host, *commands, key=KEY, server="127.0.0.1", local=None):
    """One update message sent with nsupdate (TCP); returns (rc, output)."""
    lines = ([f"local {local}"] if local else []) + [f"server {server}", f"zone {ZONE}", *commands, "send"]
    script = "".join(f"{line}\n" for line in lines)
    signed = f"-y {shlex.quote(key)}" if key else ""
    out = host.run(f"printf %s {shlex.quote(script)} | nsupdate -v -t 5 {signed}")
    return out.rc, out.stdout + out.stderr


@pytest.fixture(scope="module")
def own_address(host):
    """The host's own (non-loopback) address: a query source outside allow-query."""
    return host.ansible("setup", "gather_subset=network")["ansible_facts"]["ansible_default_ipv4"]["address"]


def test_named_runs_and_listens_on_53(host, own_address):
    named = host.service("named")
    assert named.is_running
    assert named.is_enabled
    # listen-on { any; }: named binds each interface address, the loopback and the host's own.
    for address in ("127.0.0.1", own_address):
        assert host.socket(f"tcp://{address}:53").is_listening
        assert host.socket(f"udp://{address}:53").is_listening


def test_configuration_checks_and_is_layered_as_debian_has_it(host):
    assert host.run("named-checkconf /etc/bind/named.conf").rc == 0
    conf = host.file("/etc/bind/named.conf").content_string
    for part in ("named.conf.options", "named.conf.local", "named.conf.default-zones"):
        assert f'include "/etc/bind/{part}";' in conf
    local = host.file("/etc/bind/named.conf.local").content_string
    assert f'grant "deepseek-failover" name {SERVICE} A AAAA TXT;' in local
    assert f'grant "deepseek-failover" name status.{ZONE}. A AAAA TXT;' in local
    assert local.count("grant ") == 2


def test_key_file_is_root_bind_0640_and_the_secret_is_nowhere_else(host):
    key = host.file(KEY_FILE)
    assert (key.user, key.group, key.mode) == ("root", "bind", 0o640)
    assert VARS["dns_server_tsig_secret"] in key.content_string
    for path in ("/etc/bind/named.conf.options", "/etc/bind/named.conf.local", ZONE_FILE):
        assert VARS["dns_server_tsig_secret"] not in host.file(path).content_string


def test_zone_file_is_in_var_lib_bind_owned_by_bind(host):
    zone = host.file(ZONE_FILE)
    assert zone.is_file
    assert (zone.user, zone.group) == ("bind", "bind")
    assert host.run(f"named-checkzone -j {ZONE} {ZONE_FILE}").rc == 0


def test_seeded_records_answer_authoritatively(host):
    status, flags, addresses = rdata(host, f"static.{ZONE}", "AAAA")
    assert status == "NOERROR"
    assert "aa" in flags
    assert addresses == ["2001:db8::1", "2001:db8::2"]
    _, _, answers = dig(host, f"docs.{ZONE}", "CNAME")
    assert [(a[0], a[4]) for a in answers] == [(f"docs.{ZONE}.", SERVICE)]
    _, _, text = rdata(host, SERVICE, "TXT")
    assert text == ['"site=primary"']


def test_seeded_ttls(host):
    _, _, answers = dig(host, f"static.{ZONE}", "AAAA")
    assert {a[1] for a in answers} == {"3600"}
    _, _, answers = dig(host, f"docs.{ZONE}", "CNAME")
    assert {a[1] for a in answers} == {str(30)}  # dns_server_ttl's default: no ttl given


def test_long_txt_with_quotes_and_backslashes_is_split_and_escaped(host):
    out = host.check_output(f"dig @127.0.0.1 +short notes.{ZONE} TXT")
    # dig prints the character-strings quoted, with " and \ escaped, separated by spaces.
    pieces = re.findall(r'"((?:[^"\\]|\\.)*)"', out)
    assert len(pieces) == 2
    assert all(len(p.replace('\\"', '"').replace("\\\\", "\\")) <= 255 for p in pieces)
    text = "".join(p.replace('\\"', '"').replace("\\\\", "\\") for p in pieces)
    assert text == 'say "hi" \\ ' * 30


def test_failover_switch_survived_the_converge_after_it(host):
    # side_effect.yml switched the record (community.general.nsupdate, TTL 30), then idempotence converged
    # again with zero changes: the seeded 192.0.2.10 is not back.
    _, _, answers = dig(host, SERVICE, "A")
    assert [(a[1], a[4]) for a in answers] == [("30", "192.0.2.20")]
    journal = host.file(f"{ZONE_FILE}.jnl")
    assert journal.is_file
    assert journal.user == "bind"


def test_signed_update_of_a_granted_name_succeeds(host):
    rc, out = nsupdate(host, f"update delete {SERVICE} TXT", f'update add {SERVICE} 30 TXT "site=standby"')
    assert rc == 0, out
    assert rdata(host, SERVICE, "TXT")[2] == ['"site=standby"']
    rc, out = nsupdate(host, f"update add status.{ZONE}. 30 AAAA 2001:db8::20")
    assert rc == 0, out
    assert rdata(host, f"status.{ZONE}.", "AAAA")[2] == ["2001:db8::20"]


def test_unsigned_update_is_refused(host):
    rc, out = nsupdate(host, f"update delete {SERVICE} A", f"update add {SERVICE} 30 A 198.51.100.66", key=None)
    assert rc != 0
    assert "update failed: REFUSED" in out, out
    assert rdata(host, SERVICE, "A")[2] == ["192.0.2.20"]


def test_update_signed_with_a_wrong_secret_is_refused(host):
    wrong = KEY.rsplit(":", 1)[0] + ":" + WRONG_SECRET
    rc, out = nsupdate(host, f"update delete {SERVICE} A", f"update add {SERVICE} 30 A 198.51.100.66", key=wrong)
    assert rc != 0
    # The server answers NOTAUTH with the TSIG error BADSIG (RFC 8945 5.2.2): not applied, and not signed.
    assert "update failed: NOTAUTH(BADSIG)" in out, out
    assert rdata(host, SERVICE, "A")[2] == ["192.0.2.20"]


def test_update_signed_with_an_unknown_key_is_refused(host):
    other = f"hmac-sha256:someone-else:{VARS['dns_server_tsig_secret']}"
    rc, out = nsupdate(host, f"update add {SERVICE} 30 A 198.51.100.66", key=other)
    assert rc != 0
    assert "update failed: NOTAUTH(BADKEY)" in out, out
    assert rdata(host, SERVICE, "A")[2] == ["192.0.2.20"]


@pytest.mark.parametrize(
    "commands",
    [
        # A name not in dns_server_update_names: an existing one, and a new one.
        [f"update delete docs.{ZONE}. CNAME", f"update add docs.{ZONE}. 30 A 198.51.100.66"],
        [f"update add rogue.{ZONE}. 30 A 198.51.100.66"],
        # A granted name, but a type the key may not touch.
        [f"update add {SERVICE} 30 MX 10 mail.example.net."],
        [f"update add {SERVICE} 30 NS ns.example.net."],
        # The zone's own records.
        [f"update add {ZONE}. 30 NS ns.example.net."],
        [f"update delete ns1.{ZONE}. A"],
    ],
    ids=["other-name", "new-name", "mx-at-service", "ns-at-service", "apex-ns", "ns-glue"],
)
def test_signed_update_outside_the_policy_is_refused(host, commands):
    serial_before = rdata(host, f"{ZONE}.", "SOA")[2]
    rc, out = nsupdate(host, *commands)
    assert rc != 0
    assert "update failed: REFUSED" in out, out
    assert rdata(host, f"{ZONE}.", "SOA")[2] == serial_before
    assert rdata(host, f"rogue.{ZONE}.", "A")[0] == "NXDOMAIN"
    assert rdata(host, f"docs.{ZONE}.", "CNAME")[2] == [SERVICE]
    assert rdata(host, SERVICE, "MX")[2] == []


def test_query_from_outside_allow_query_is_refused(host, own_address):
    status, _, answers = dig(host, "-b", own_address, SERVICE, "A", server=own_address)
    assert status == "REFUSED"
    assert answers == []


def test_signed_update_from_outside_allow_query_is_refused(host, own_address):
    # BIND checks allow-query before the key: the failover's updater must be allowed to query.
    rc, out = nsupdate(host, f"update add {SERVICE} 30 TXT outside", server=own_address, local=own_address)
    assert rc != 0
    assert "update failed: REFUSED" in out, out
    assert '"outside"' not in rdata(host, SERVICE, "TXT")[2]


def test_recursion_is_refused(host):
    status, flags, answers = dig(host, "+recurse", "example.com", "A")
    assert status == "REFUSED"
    assert "ra" not in flags
    assert answers == []


def test_zone_transfer_is_refused(host):
    out = host.run(f"dig @127.0.0.1 +time=3 +tries=1 {ZONE} AXFR")
    assert "Transfer failed" in out.stdout
    assert "192.0.2.20" not in out.stdout


def test_version_is_not_told(host):
    out = host.run("dig @127.0.0.1 +time=3 +tries=1 +short CH TXT version.bind").stdout
    assert "9.18" not in out


def test_updates_survive_a_restart(host):
    host.run_expect([0], "systemctl restart named")
    for _ in range(30):
        status, _, addresses = rdata(host, SERVICE, "A")
        if status == "NOERROR":
            break
        time.sleep(1)
    assert addresses == ["192.0.2.20"]
    assert rdata(host, SERVICE, "TXT")[2] == ['"site=standby"']
    assert rdata(host, f"status.{ZONE}.", "AAAA")[2] == ["2001:db8::20"]
