"""Tarball method: the binaries the local mirror served, the role's own units and user, a working scrape."""

import hashlib
import json
import os
import time

import pytest

PROMETHEUS = "http://127.0.0.1:9090"
ALERTMANAGER = "http://127.0.0.1:9093"
# Installed binary -> the Debian package's binary the mirror packed.
BINARIES = {
    "prometheus": "usr/bin/prometheus",
    "promtool": "usr/bin/promtool",
    "alertmanager": "usr/bin/prometheus-alertmanager",
    "amtool": "usr/bin/amtool",
}
# The role's units are named after the binaries they run.
UNITS = ["prometheus", "alertmanager"]


def api(host, url):
    out = host.run(f"curl -fsS --max-time 10 '{url}'")
    assert out.rc == 0, out.stderr
    return json.loads(out.stdout)


def wait_for(check, seconds=90):
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(2)


@pytest.mark.parametrize("name", sorted(BINARIES))
def test_binary_is_the_one_the_mirror_served(host, name):
    built = os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "mirror-build", "root", BINARIES[name])
    with open(built, "rb") as f:
        expected = hashlib.sha256(f.read()).hexdigest()
    installed = host.file(f"/usr/local/bin/{name}")
    assert installed.is_file
    assert (installed.user, installed.group, installed.mode) == ("root", "root", 0o755)
    assert installed.sha256sum == expected


def test_no_distribution_package(host):
    assert not host.package("prometheus").is_installed
    assert not host.package("prometheus-alertmanager").is_installed
    assert not host.file("/lib/systemd/system/prometheus.service").exists


def test_own_system_user(host):
    user = host.user("prometheus")
    assert user.exists
    assert user.uid < 1000
    assert user.group == "prometheus"
    assert user.shell.endswith("nologin")


def test_directories_owned_as_they_should(host):
    config = host.file("/etc/prometheus")
    assert (config.user, config.group, config.mode) == ("root", "root", 0o755)
    for path in ("/var/lib/prometheus/metrics2", "/var/lib/alertmanager"):
        data = host.file(path)
        assert (data.user, data.group, data.mode) == ("prometheus", "prometheus", 0o750), path
    assert host.file("/var/lib/prometheus/metrics2/wal").is_directory


@pytest.mark.parametrize("unit", UNITS)
def test_own_units_run_the_release_binaries_with_the_args_file(host, unit):
    assert host.file(f"/etc/systemd/system/{unit}.service").is_file
    service = host.service(unit)
    assert service.is_running
    assert service.is_enabled
    props = dict(
        line.split("=", 1)
        for line in host.check_output(
            f"systemctl show -p MainPID,User,ProtectSystem,NoNewPrivileges,ProtectHome,PrivateTmp,PrivateDevices,"
            f"EnvironmentFiles,FragmentPath {unit}"
        ).splitlines()
    )
    assert props["FragmentPath"] == f"/etc/systemd/system/{unit}.service"
    assert props["EnvironmentFiles"].startswith(f"/etc/default/{unit} ")
    assert {
        k: props[k] for k in ("User", "ProtectSystem", "NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices")
    } == {
        "User": "prometheus",
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
    }
    pid = props["MainPID"]
    assert host.check_output(f"ps -o user= -p {pid}").strip() == "prometheus"
    # /proc/<pid>/exe needs CAP_SYS_PTRACE, which the container's root lacks: the command line says as much.
    cmdline = host.file(f"/proc/{pid}/cmdline").content.split(b"\0")
    assert cmdline[0] == f"/usr/local/bin/{unit}".encode()
    assert f"--config.file=/etc/prometheus/{unit}.yml".encode() in cmdline


def test_arguments_name_the_storage(host):
    assert "--storage.tsdb.path=/var/lib/prometheus/metrics2" in host.file("/etc/default/prometheus").content_string
    assert "--storage.path=/var/lib/alertmanager" in host.file("/etc/default/alertmanager").content_string


def test_prometheus_scrapes_itself_and_alertmanager(host):
    def up():
        result = api(host, f"{PROMETHEUS}/api/v1/query?query=up")["data"]["result"]
        jobs = {r["metric"]["job"]: r["value"][1] for r in result}
        return jobs if jobs.get("prometheus") == "1" and jobs.get("alertmanager") == "1" else None

    assert wait_for(up)


def test_an_alert_reaches_alertmanager(host):
    def firing():
        alerts = api(host, f"{ALERTMANAGER}/api/v2/alerts?filter=alertname%3D%22MoleculeAlwaysFiring%22")
        return [a for a in alerts if a["status"]["state"] == "active"]

    assert wait_for(firing), "MoleculeAlwaysFiring never reached Alertmanager"


def test_the_installed_tools_check_the_configuration(host):
    assert host.run("/usr/local/bin/promtool check config /etc/prometheus/prometheus.yml").rc == 0
    assert host.run("/usr/local/bin/amtool check-config /etc/prometheus/alertmanager.yml").rc == 0


def test_a_reload_is_applied_without_a_restart(host):
    def last_config():
        return api(host, f"{PROMETHEUS}/api/v1/status/runtimeinfo")["data"]["lastConfigTime"]

    pid = host.check_output("systemctl show -p MainPID --value prometheus")
    before = last_config()
    time.sleep(1)
    host.run_expect([0], "systemctl reload prometheus")
    assert wait_for(lambda: last_config() != before, 30)
    assert host.check_output("systemctl show -p MainPID --value prometheus") == pid
