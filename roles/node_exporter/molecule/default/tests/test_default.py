"""Package method on Debian 12: service, metrics, collectors, textfile, hardening."""

import re

import pytest

UNIT = "prometheus-node-exporter"
URL = "http://127.0.0.1:9100/metrics"
TEXTFILE_DIR = "/var/lib/node_exporter/textfile_collector"


@pytest.fixture(scope="module")
def metrics(host):
    out = host.run(f"curl -fsS --max-time 10 {URL}")
    assert out.rc == 0, out.stderr
    return out.stdout


def test_service_running_and_enabled(host):
    service = host.service(UNIT)
    assert service.is_running
    assert service.is_enabled


def test_metrics_answer_with_node_series(metrics):
    assert re.search(r"^node_cpu_seconds_total\{", metrics, re.M)
    assert re.search(r"^node_load1 ", metrics, re.M)


def test_enabled_collector_runs_with_its_option(metrics):
    assert 'node_scrape_collector_success{collector="systemd"} 1' in metrics
    units = set(re.findall(r'^node_systemd_unit_state\{name="([^"]+)"', metrics, re.M))
    # unit-include keeps exactly the two units named in the scenario.
    assert units == {"prometheus-node-exporter.service", "systemd-journald.service"}


def test_disabled_collector_is_off(metrics):
    assert 'node_scrape_collector_success{collector="cpu"}' in metrics
    assert 'collector="arp"' not in metrics


def test_textfile_directory(host):
    d = host.file(TEXTFILE_DIR)
    assert d.is_directory
    assert (d.user, d.group, d.mode) == ("root", "root", 0o755)


def test_prom_file_in_textfile_dir_is_exported(host):
    prom = f"{TEXTFILE_DIR}/molecule_probe.prom"
    host.run_expect([0], f"printf 'molecule_textfile_probe 42\\n' > {prom} && chmod 0644 {prom}")
    try:
        out = host.check_output(f"curl -fsS --max-time 10 {URL}")
    finally:
        host.run(f"rm -f {prom}")
    assert re.search(r"^molecule_textfile_probe 42$", out, re.M)


def test_drop_in_hardening_is_in_effect(host):
    assert host.file(f"/etc/systemd/system/{UNIT}.service.d/deepseek.conf").is_file
    props = dict(
        line.split("=", 1)
        for line in host.check_output(
            f"systemctl show -p ProtectSystem,NoNewPrivileges,ProtectHome,PrivateTmp,"
            f"ProtectKernelTunables,ProtectKernelModules,ProtectControlGroups,"
            f"RestrictAddressFamilies,CapabilityBoundingSet,DropInPaths {UNIT}"
        ).splitlines()
    )
    assert props["ProtectSystem"] == "strict"
    assert props["NoNewPrivileges"] == "yes"
    assert props["ProtectHome"] == "read-only"
    assert props["PrivateTmp"] == "yes"
    assert props["ProtectKernelTunables"] == "yes"
    assert props["ProtectKernelModules"] == "yes"
    assert props["ProtectControlGroups"] == "yes"
    assert set(props["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}
    assert props["CapabilityBoundingSet"] == ""
    assert "deepseek.conf" in props["DropInPaths"]


def test_running_process_uses_the_role_flags(host):
    pid = host.check_output(f"systemctl show -p MainPID --value {UNIT}")
    cmdline = host.file(f"/proc/{pid}/cmdline").content.split(b"\0")
    assert b"--web.config.file=/etc/node_exporter/web-config.yml" in cmdline
    assert b"--no-collector.arp" in cmdline
    assert b"--collector.systemd.unit-include=(prometheus-node-exporter|systemd-journald)\\.service" in cmdline


def test_process_runs_as_non_root_user(host):
    pid = host.check_output(f"systemctl show -p MainPID --value {UNIT}")
    assert int(pid) > 0
    assert host.check_output(f"ps -o user= -p {pid}").strip() == "prometheus"
    status = host.file(f"/proc/{pid}/status").content_string
    uids = re.search(r"^Uid:\s+(.*)$", status, re.M).group(1).split()
    assert "0" not in uids


def test_web_config_file_is_private_to_the_exporter(host):
    f = host.file("/etc/node_exporter/web-config.yml")
    assert (f.user, f.group, f.mode) == ("root", "prometheus", 0o640)


def _root_mount_options(host, pid):
    for line in host.file(f"/proc/{pid}/mountinfo").content_string.splitlines():
        fields = line.split()
        if fields[4] == "/":
            return set(fields[5].split(","))
    raise AssertionError(f"no / mount in /proc/{pid}/mountinfo")


def test_file_system_is_read_only_for_the_service(host):
    # ProtectSystem=strict: the service sees / read-only, while the host's / is writable.
    pid = host.check_output(f"systemctl show -p MainPID --value {UNIT}")
    assert "ro" in _root_mount_options(host, pid)
    assert "rw" in _root_mount_options(host, 1)
