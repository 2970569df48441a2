"""Tarball method: the binary served by the local mirror, own unit, own user, hardening."""

import hashlib
import os
import re

BINARY = "/usr/local/bin/node_exporter"
UNIT = "node_exporter"


def test_binary_is_the_one_the_mirror_served(host):
    built = os.path.join(
        os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "mirror-build", "root", "usr", "bin", "prometheus-node-exporter"
    )
    with open(built, "rb") as f:
        expected = hashlib.sha256(f.read()).hexdigest()
    f = host.file(BINARY)
    assert f.is_file
    assert (f.user, f.group, f.mode) == ("root", "root", 0o755)
    assert f.sha256sum == expected
    version = host.run(f"{BINARY} --version")
    assert "version 1.5.0" in version.stdout + version.stderr


def test_no_distribution_package(host):
    assert not host.package("prometheus-node-exporter").is_installed


def test_own_unit_running_and_enabled(host):
    assert host.file(f"/etc/systemd/system/{UNIT}.service").is_file
    service = host.service(UNIT)
    assert service.is_running
    assert service.is_enabled


def test_own_system_user(host):
    user = host.user("node_exporter")
    assert user.exists
    assert user.uid < 1000
    assert user.shell.endswith("nologin")
    pid = host.check_output(f"systemctl show -p MainPID --value {UNIT}")
    assert int(pid) > 0
    assert host.check_output(f"ps -o user= -p {pid}").strip() == "node_exporter"


def test_hardening_in_effect(host):
    props = dict(
        line.split("=", 1)
        for line in host.check_output(
            f"systemctl show -p ProtectSystem,NoNewPrivileges,ProtectHome,PrivateTmp,User {UNIT}"
        ).splitlines()
    )
    assert props == {
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "ProtectHome": "read-only",
        "PrivateTmp": "yes",
        "User": "node_exporter",
    }


def test_metrics_answer(host):
    out = host.check_output("curl -fsS --max-time 10 http://127.0.0.1:9100/metrics")
    assert re.search(r"^node_cpu_seconds_total\{", out, re.M)
    assert 'node_scrape_collector_success{collector="systemd"} 1' in out
    assert re.search(r'^node_exporter_build_info\{.*version="1\.5\.0"', out, re.M)
