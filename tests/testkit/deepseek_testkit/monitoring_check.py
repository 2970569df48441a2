"""The lab's monitoring, end to end.

Prometheus on the monitoring host scrapes every target of both sites, the inference probe answers for every
proxy and every node, no alert is pending or firing, every dashboard panel has series; then one Triton is
stopped, the probe reports it, the alert reaches Alertmanager, and resolves once Triton is back.

Used by lab.py (``make lab`` prints ``monitoring_status``; ``make lab-test`` runs ``monitoring_checks``) and by
benchmarks/probe_detection.py (``detection_trial``).
"""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import docker

from deepseek_testkit import ROOT

DASHBOARDS = ROOT / "roles" / "grafana" / "files" / "dashboards"
PROMETHEUS_PORT = 9090
ALERTMANAGER_PORT = 9093
PROBE_ALERT = "DeepseekProbeFailed"
TRITON_UNIT = "tritonserver"


class Host(Protocol):
    """A lab host (lab.py's LabHost)."""

    name: str
    groups: list[str]
    network: str


def log(message: str) -> None:
    """One line of progress."""
    print(f"[lab] {message}", flush=True)


def get_json(url: str, timeout: float = 10.0) -> Any:  # noqa: ANN401 - any JSON document
    """GET ``url``; the decoded JSON answer."""
    with urllib.request.urlopen(url, timeout=timeout) as answer:  # noqa: S310 - the lab's own monitoring host
        return json.loads(answer.read())


def query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    """An instant query's result vector."""
    url = f"{prometheus}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    return get_json(url)["data"]["result"]


def wait_until(check: Callable[[], Any], seconds: float, every: float = 2.0) -> Any:  # noqa: ANN401 - check's value
    """Poll ``check`` until it returns something true (that value) or ``seconds`` pass (its last value)."""
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(every)


@dataclass(frozen=True)
class Endpoints:
    """Where the lab's Prometheus and Alertmanager answer this machine."""

    prometheus: str
    alertmanager: str


def endpoints(client: docker.DockerClient, monitor_name: str, network: str) -> Endpoints:
    """The monitoring host's Prometheus and Alertmanager URLs on the lab network."""
    address = client.containers.get(monitor_name).attrs["NetworkSettings"]["Networks"][network]["IPAddress"]
    return Endpoints(f"http://{address}:{PROMETHEUS_PORT}", f"http://{address}:{ALERTMANAGER_PORT}")


def expected_targets(hosts: list[Host]) -> dict[str, set[str]]:
    """Job -> the ``node`` labels it must have up, from the lab's inventory groups."""
    gpu = {h.name for h in hosts if "gpu_nodes" in h.groups}
    proxies = {h.name for h in hosts if "proxies" in h.groups}
    monitors = {h.name for h in hosts if "monitoring" in h.groups}
    return {
        "node": {h.name for h in hosts},
        "triton": gpu,
        "haproxy": proxies,
        "deepseek_probe": gpu | proxies,
        "prometheus": monitors,
        "alertmanager": monitors,
    }


def targets_down(prometheus: str, expected: dict[str, set[str]]) -> list[str]:
    """Expected job/node pairs that are missing or not up (every probe module must be up for its node)."""
    up: dict[tuple[str, str], list[str]] = {}
    for sample in query(prometheus, "up"):
        key = (sample["metric"].get("job", ""), sample["metric"].get("node", ""))
        up.setdefault(key, []).append(sample["value"][1])
    down = []
    for job, nodes in sorted(expected.items()):
        for node in sorted(nodes):
            values = up.get((job, node), [])
            if not values:
                down.append(f"{job}/{node} (no target)")
            elif any(v != "1" for v in values):
                down.append(f"{job}/{node}")
    return down


def probe_table(prometheus: str) -> list[tuple[str, str, str, float, float]]:
    """(module, node, site, success, duration) of every probe target now."""
    success = {
        (s["metric"]["module"], s["metric"]["node"]): (s["metric"].get("site", ""), float(s["value"][1]))
        for s in query(prometheus, 'deepseek_probe_success{job="deepseek_probe"}')
    }
    duration = {
        (s["metric"]["module"], s["metric"]["node"]): float(s["value"][1])
        for s in query(prometheus, 'deepseek_probe_duration_seconds{job="deepseek_probe"}')
    }
    return sorted((m, n, site, ok, duration.get((m, n), float("nan"))) for (m, n), (site, ok) in success.items())


# The lab's hosts are containers on one machine: they share its CPUs, its disk and its clock, so the host
# alerts of node-mixin (load, filesystem, clock) say something about that machine, not about the deployment.
# They are listed, not failed on; every other alert (the deployment's own, and NodeDown) must stay quiet, but
# Watchdog, which always fires by design (the dead man's switch: docs/alerts.md#watchdog).
MACHINE_ALERTS = 'ALERTS{alertname=~"Node.*",alertname!="NodeDown"}'
DEPLOYMENT_ALERTS = 'ALERTS{alertname!~"Node.*|Watchdog"} or ALERTS{alertname="NodeDown"}'


def alerts_now(prometheus: str, machine: bool = False) -> list[str]:
    """Alerts pending or firing, as 'name{node} state': the deployment's, or (machine) the lab machine's."""
    return sorted(
        f"{s['metric']['alertname']}{{node={s['metric'].get('node', '')}}} {s['metric']['alertstate']}"
        for s in query(prometheus, MACHINE_ALERTS if machine else DEPLOYMENT_ALERTS)
    )


def alertmanager_active(alertmanager: str, alertname: str, node: str) -> bool:
    """Whether Alertmanager holds an active alert of that name for that node."""
    selector = urllib.parse.quote(f'alertname="{alertname}"')
    found = get_json(f"{alertmanager}/api/v2/alerts?filter={selector}")
    return any(a["labels"].get("node") == node and a["status"]["state"] == "active" for a in found)


def node_probes(prometheus: str, node: str) -> list[float]:
    """The per-node probe results of one node now."""
    expr = f'deepseek_probe_success{{job="deepseek_probe",node="{node}",module=~"node_.*"}}'
    return [float(s["value"][1]) for s in query(prometheus, expr)]


def systemctl(client: docker.DockerClient, host: str, action: str, unit: str = TRITON_UNIT) -> None:
    """Run systemctl on a lab host."""
    result = client.containers.get(host).exec_run(["systemctl", action, unit])
    if result.exit_code != 0:
        raise RuntimeError(f"systemctl {action} {unit} on {host}: {result.output.decode(errors='replace')}")


PROBE_UNIT = "deepseek-inference-probe"


@contextmanager
def probe_paused(client: docker.DockerClient, hosts: list[Host]) -> Iterator[None]:
    """The inference probe stopped on the monitoring hosts meanwhile.

    It sends requests through the proxies every 30 s; checks that count requests, Triton's counters and audit
    lines one by one (proxy_checks, fallback_check.py) run without it.
    """
    monitors = [h.name for h in hosts if "monitoring" in h.groups]
    for name in monitors:
        systemctl(client, name, "stop", PROBE_UNIT)
    try:
        yield
    finally:
        for name in monitors:
            systemctl(client, name, "start", PROBE_UNIT)


@dataclass
class Detection:
    """One stopped Triton, in seconds.

    From the stop to the probe's failure in Prometheus and to the alert in Alertmanager, and from the start to
    the alert's end (None where it never came).
    """

    node: str
    probe_failed_s: float | None = None
    alert_s: float | None = None
    resolved_s: float | None = None


def detection_trial(client: docker.DockerClient, ends: Endpoints, node: str, wait_alert: bool = True) -> Detection:
    """Stop Triton on ``node``, time what monitoring sees, start it again and wait for the alert to end."""
    found = Detection(node)
    if not wait_until(
        lambda: node_probes(ends.prometheus, node) and all(v == 1 for v in node_probes(ends.prometheus, node)), 120
    ):
        return found
    start = time.monotonic()
    systemctl(client, node, "stop")
    try:
        if wait_until(lambda: 0.0 in node_probes(ends.prometheus, node), 120, every=0.5):
            found.probe_failed_s = time.monotonic() - start
        if wait_alert and wait_until(lambda: alertmanager_active(ends.alertmanager, PROBE_ALERT, node), 240, every=1.0):
            found.alert_s = time.monotonic() - start
    finally:
        systemctl(client, node, "start")
    restart = time.monotonic()
    ended = lambda: not alertmanager_active(ends.alertmanager, PROBE_ALERT, node)  # noqa: E731
    if wait_alert and found.alert_s is not None and wait_until(ended, 300, every=1.0):
        found.resolved_s = time.monotonic() - restart
    return found


# Series the lab cannot have, besides the GPU-only ones dashboard_check.py skips itself: Triton 2.51 (the
# nvidia-pytriton wheel) accepts --metrics-config=histogram_latencies=true but serves no histogram (the time to
# first response histogram comes with Triton 2.52), and the lab sets no golden answer for the probe.
LAB_ABSENT = (
    "nv_inference_first_response_histogram_ms_bucket",
    "nv_inference_first_response_histogram_ms_sum",
    "nv_inference_first_response_histogram_ms_count",
    "deepseek_probe_golden_match",
)


def dashboard_gaps(prometheus: str) -> list[str]:
    """Dashboard panels whose queries return no series in the lab (GPU-only panels and LAB_ABSENT excepted)."""
    from deepseek_testkit.dashboard_check import EMPTY_WHEN_HEALTHY, empty_panels

    dashboards = sorted(DASHBOARDS.glob("*.json"))
    return empty_panels(prometheus, dashboards, {}, allowed_empty=[*EMPTY_WHEN_HEALTHY, *LAB_ABSENT])


def monitoring_checks(client: docker.DockerClient, hosts: list[Host], monitor: Host) -> list[str]:
    """The lab's monitoring on a healthy lab, then with one Triton stopped; the failures.

    Targets of both sites up, every probe succeeding, no alert pending or firing, dashboards with series;
    then a Triton stopped: the probe fails, the alert reaches Alertmanager, and ends after Triton is back.
    """
    ends = endpoints(client, monitor.name, monitor.network)
    expected = expected_targets(hosts)
    down = wait_until(lambda: not targets_down(ends.prometheus, expected), 240) or targets_down(
        ends.prometheus, expected
    )
    if down is not True:
        return [f"Prometheus targets not up after 4 minutes: {', '.join(down)}"]
    log(
        f"Prometheus {ends.prometheus}: every target of both sites is up "
        f"({sum(map(len, expected.values()))} job/node pairs)"
    )
    failures = []
    probes = probe_table(ends.prometheus)
    failing = [f"{m}/{n}" for m, n, _, ok, _ in probes if ok != 1]
    if failing or len(probes) != 2 * len(expected["deepseek_probe"]):
        failures.append(f"inference probe: {len(probes)} results, failing {failing}")
    else:
        log(f"inference probe: {len(probes)} checks succeed (HTTP and gRPC streams, each proxy and each node)")
    firing = alerts_now(ends.prometheus)
    if firing:
        failures.append(f"alerts pending or firing on a healthy lab: {firing}")
    else:
        log("no alert of the deployment pending or firing")
    machine = alerts_now(ends.prometheus, machine=True)
    if machine:
        log(f"host alerts about the machine the lab runs on (shared CPUs, disk, clock): {', '.join(machine)}")
    gaps = dashboard_gaps(ends.prometheus)
    if gaps:
        failures.append(f"dashboard panels without series in the lab: {gaps}")
    else:
        log("every dashboard panel that the lab can feed has series")
    if failures:
        return failures
    node = next(h.name for h in hosts if "gpu_nodes" in h.groups and "fallback_nodes" not in h.groups)
    trial = detection_trial(client, ends, node)
    if trial.probe_failed_s is None:
        return [f"{TRITON_UNIT} stopped on {node}: the probe never reported a failure"]
    if trial.alert_s is None:
        return [f"{TRITON_UNIT} stopped on {node}: {PROBE_ALERT} never reached Alertmanager"]
    if trial.resolved_s is None:
        return [f"{TRITON_UNIT} started again on {node}: {PROBE_ALERT} did not end"]
    log(
        f"{TRITON_UNIT} stopped on {node}: probe failure in Prometheus after {trial.probe_failed_s:.0f} s, "
        f"{PROBE_ALERT} in Alertmanager after {trial.alert_s:.0f} s, ended {trial.resolved_s:.0f} s after the restart"
    )
    return []


def monitoring_status(client: docker.DockerClient, hosts: list[Host], monitor: Host) -> None:
    """What ``make lab`` prints: where Prometheus and Alertmanager answer, the probe's results, the alerts."""
    ends = endpoints(client, monitor.name, monitor.network)
    expected = expected_targets(hosts)
    wait_until(lambda: not targets_down(ends.prometheus, expected), 120)
    print()
    print(f"Prometheus:   {ends.prometheus}   Alertmanager: {ends.alertmanager}")
    down = targets_down(ends.prometheus, expected)
    print("targets:      " + ("all up" if not down else f"NOT UP: {', '.join(down)}"))
    print(f"{'probe module':<14} {'node':<22} {'site':<8} {'success':<8} seconds")
    for module, node, site, ok, seconds in probe_table(ends.prometheus):
        print(f"{module:<14} {node:<22} {site:<8} {int(ok):<8} {seconds:.2f}")
    firing = alerts_now(ends.prometheus)
    print("alerts:       " + ("none pending or firing" if not firing else ", ".join(firing)))
    machine = alerts_now(ends.prometheus, machine=True)
    if machine:
        print(f"              about the machine the lab runs on (shared CPUs, disk, clock): {', '.join(machine)}")
