"""Prometheus and Alertmanager from Debian's packages, configured by the role."""

import json
import time

import pytest

PROMETHEUS = "http://127.0.0.1:9090"
ALERTMANAGER = "http://127.0.0.1:9093"
GROUPS = {
    "deepseek-gpu",
    "deepseek-triton",
    "deepseek-probe",
    "deepseek-proxy",
    "deepseek-node",
    "deepseek-certs",
    "deepseek-replication",
    "deepseek-monitoring",
}


def api(host, url, data=None):
    """GET (or POST JSON) on the host; the decoded JSON answer."""
    post = f"-H 'Content-Type: application/json' --data '{json.dumps(data)}'" if data is not None else ""
    out = host.run(f"curl -fsS --max-time 10 {post} '{url}'")
    assert out.rc == 0, out.stderr
    return json.loads(out.stdout) if out.stdout.strip() else None


def wait_for(check, seconds=90):
    """Poll ``check`` until it returns something true; that value."""
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(2)


@pytest.mark.parametrize("unit", ["prometheus", "prometheus-alertmanager"])
def test_services_run(host, unit):
    assert host.service(unit).is_running
    assert host.service(unit).is_enabled


def test_every_rule_group_is_loaded_with_the_scenarios_own(host):
    groups = {g["name"] for g in api(host, f"{PROMETHEUS}/api/v1/rules")["data"]["groups"]}
    assert groups == GROUPS | {"molecule"}


def test_targets_come_from_file_sd_with_their_labels_and_probe_parameters(host):
    targets = api(host, f"{PROMETHEUS}/api/v1/targets")["data"]["activeTargets"]
    probe = next(t for t in targets if t["labels"]["job"] == "deepseek_probe")
    assert probe["labels"]["node"] == "gpu1"
    assert probe["labels"]["instance"] == "10.0.0.1:8443"
    assert "module=node_http" in probe["scrapeUrl"]
    assert "node=gpu1" in probe["scrapeUrl"]
    assert "target=10.0.0.1%3A8443" in probe["scrapeUrl"]
    assert probe["scrapeUrl"].startswith("http://127.0.0.1:9470/probe?")
    node = next(t for t in targets if t["labels"]["job"] == "node")
    assert node["labels"]["site"] == "primary"
    assert {t["labels"]["job"] for t in targets} >= {"prometheus", "alertmanager", "node", "deepseek_probe"}


def test_prometheus_scrapes_itself_and_alertmanager(host):
    def up():
        result = api(host, f"{PROMETHEUS}/api/v1/query?query=up")["data"]["result"]
        return {r["metric"]["job"]: r["value"][1] for r in result}

    jobs = wait_for(
        lambda: (lambda u: u if u.get("prometheus") == "1" and u.get("alertmanager") == "1" else None)(up())
    )
    assert jobs, up()


def test_an_alert_reaches_alertmanager(host):
    def firing():
        alerts = api(host, f"{ALERTMANAGER}/api/v2/alerts?filter=alertname%3D%22MoleculeAlwaysFiring%22")
        return [a for a in alerts if a["status"]["state"] == "active"]

    assert wait_for(firing), "MoleculeAlwaysFiring never reached Alertmanager"


def test_node_down_inhibits_that_nodes_probe_alerts_only(host):
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    alerts = [
        {"labels": {"alertname": "NodeDown", "node": "gpu7", "severity": "critical"}, "startsAt": now},
        {"labels": {"alertname": "DeepseekProbeFailed", "node": "gpu7", "severity": "critical"}, "startsAt": now},
        {"labels": {"alertname": "DeepseekProbeFailed", "node": "gpu8", "severity": "critical"}, "startsAt": now},
    ]
    api(host, f"{ALERTMANAGER}/api/v2/alerts", alerts)

    def states():
        found = api(host, f"{ALERTMANAGER}/api/v2/alerts?filter=alertname%3D%22DeepseekProbeFailed%22")
        by_node = {a["labels"]["node"]: a["status"]["state"] for a in found}
        return by_node if len(by_node) == 2 else None

    assert wait_for(states) == {"gpu7": "suppressed", "gpu8": "active"}


def test_no_cluster_port_without_peers(host):
    assert not [s for s in host.socket.get_listening_sockets() if s.endswith(":9094")]


def test_the_proxies_password_is_prometheus_only(host):
    secret = host.file("/etc/prometheus/deepseek/haproxy.password")
    assert secret.mode == 0o640
    assert (secret.user, secret.group) == ("root", "prometheus")
    assert secret.content_string == "molecule-haproxy-secret"
    assert "molecule-haproxy-secret" not in host.file("/etc/prometheus/prometheus.yml").content_string


def test_configuration_passes_the_tools_own_checks(host):
    assert host.run("promtool check config /etc/prometheus/prometheus.yml").rc == 0
    assert host.run("amtool check-config /etc/prometheus/alertmanager.yml").rc == 0
