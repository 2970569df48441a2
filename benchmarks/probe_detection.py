#!/usr/bin/env python3
"""How fast the lab's monitoring sees a Triton stop, and what the inference probe costs.

Needs a running lab (make lab). For each trial: Triton is stopped on one inference node, and the script times
(1) Prometheus's own view of Triton's metrics port going down (up{job="triton"} == 0: the baseline, what a
plain scrape of the exporter sees, measured in the same trial), (2) the probe's failure for that node in
Prometheus (deepseek_probe_success == 0), (3) DeepseekProbeFailed active in Alertmanager; then Triton is
started and the end of the alert is timed. Prints each figure's p50 over the trials and the probe's as a ratio
of the baseline; the goal is the probe's failure within 35 s with the 30 s cadence.

Then the probe's cost per check: CPU seconds of the probe process (its cgroup's usage on the monitoring host)
over a number of checks of one node, and the inference each check adds on that node (requests, and Triton's
compute time per request from its own counters).

Run with: .venv/bin/python benchmarks/probe_detection.py [--trials 5] [--node lab-primary-gpu1] [--checks 20]
"""

from __future__ import annotations

import argparse
import statistics
import time

import docker
from deepseek_testkit import lab
from deepseek_testkit import monitoring_check as mc


def triton_metrics_down(prometheus: str, node: str) -> bool:
    """Whether Prometheus's last scrape of the node's Triton metrics port failed."""
    return any(s["value"][1] == "0" for s in mc.query(prometheus, f'up{{job="triton",node="{node}"}}'))


def trial(client: docker.DockerClient, ends: mc.Endpoints, node: str) -> dict[str, float | None]:
    """One stop and start of Triton on ``node``: seconds to each observation (None when it never came)."""
    if not mc.wait_until(lambda: mc.node_probes(ends.prometheus, node) == [1.0, 1.0], 180):
        raise SystemExit(f"the probes of {node} do not succeed before the trial")
    seen: dict[str, float | None] = {"baseline up==0": None, "probe failure": None, "alert": None, "resolved": None}
    start = time.monotonic()
    mc.systemctl(client, node, "stop")
    try:
        while time.monotonic() - start < 300 and None in (seen["baseline up==0"], seen["probe failure"], seen["alert"]):
            now = time.monotonic() - start
            if seen["baseline up==0"] is None and triton_metrics_down(ends.prometheus, node):
                seen["baseline up==0"] = now
            if seen["probe failure"] is None and 0.0 in mc.node_probes(ends.prometheus, node):
                seen["probe failure"] = now
            if seen["alert"] is None and mc.alertmanager_active(ends.alertmanager, mc.PROBE_ALERT, node):
                seen["alert"] = now
            time.sleep(0.5)
    finally:
        mc.systemctl(client, node, "start")
    restart = time.monotonic()
    if seen["alert"] is not None and mc.wait_until(
        lambda: not mc.alertmanager_active(ends.alertmanager, mc.PROBE_ALERT, node), 300, every=1.0
    ):
        seen["resolved"] = time.monotonic() - restart
    return seen


def cgroup_cpu_seconds(client: docker.DockerClient, monitor: str) -> float:
    """CPU seconds used so far by the probe's service (systemd's accounting)."""
    out = client.containers.get(monitor).exec_run(
        ["systemctl", "show", "deepseek-inference-probe", "-p", "CPUUsageNSec", "--value"]
    )
    return int(out.output.decode().strip() or 0) / 1e9


def triton_counters(ends: mc.Endpoints, node: str) -> tuple[float, float]:
    """The node's successful requests and compute-infer microseconds of the model, summed."""

    def total(metric: str) -> float:
        return sum(float(s["value"][1]) for s in mc.query(ends.prometheus, f'sum({metric}{{node="{node}"}})'))

    return total("nv_inference_request_success"), total("nv_inference_compute_infer_duration_us")


def probe_cost(client: docker.DockerClient, ends: mc.Endpoints, monitor: str, node: str, checks: int) -> None:
    """CPU per check on the monitoring host, and requests and compute per check on the node."""
    proxy = next(
        t["labels"]["instance"]
        for t in mc.get_json(f"{ends.prometheus}/api/v1/targets")["data"]["activeTargets"]
        if t["labels"].get("job") == "deepseek_probe" and t["labels"].get("node") == node
    )
    box = client.containers.get(monitor)
    url = f"http://127.0.0.1:9470/probe?target={proxy}&module=node_http&node={node}"
    requests_before, compute_before = triton_counters(ends, node)
    cpu_before = cgroup_cpu_seconds(client, monitor)
    start = time.monotonic()
    for _ in range(checks):
        box.exec_run(["curl", "-sf", "--max-time", "30", url])
    elapsed = time.monotonic() - start
    cpu = cgroup_cpu_seconds(client, monitor) - cpu_before
    time.sleep(35)  # one scrape of the node's Triton counters after the last check
    requests_after, compute_after = triton_counters(ends, node)
    added = requests_after - requests_before
    print(f"probe cost over {checks} node_http checks of {node} ({elapsed / checks:.2f} s each):")
    print(f"  monitoring host: {cpu / checks * 1000:.1f} ms CPU per check (the probe's service)")
    print(
        f"  {node}: {added:.0f} requests in that time (the probe's {checks}, and Prometheus's own probe scrapes), "
        f"{(compute_after - compute_before) / max(added, 1) / 1000:.1f} ms of model compute per request"
    )


def main() -> int:
    """Run the trials and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--node", default="lab-primary-gpu1")
    parser.add_argument("--checks", type=int, default=20)
    args = parser.parse_args()
    client = docker.from_env()
    hosts = lab.lab_hosts()
    monitor = next(h for h in hosts if "monitoring" in h.groups)
    ends = mc.endpoints(client, monitor.name, monitor.network)
    rows = []
    for n in range(args.trials):
        seen = trial(client, ends, args.node)
        rows.append(seen)
        print(f"trial {n + 1}: " + ", ".join(f"{k} {'-' if v is None else f'{v:.1f} s'}" for k, v in seen.items()))
    print()
    print(f"Triton stopped on {args.node}, p50 over {args.trials} trials (scrape interval 30 s):")
    medians = {}
    for key in ("baseline up==0", "probe failure", "alert", "resolved"):
        values = [r[key] for r in rows if r[key] is not None]
        medians[key] = statistics.median(values) if values else None
        missed = len(rows) - len(values)
        text = "never" if medians[key] is None else f"{medians[key]:.1f} s"
        print(f"  {key:<16} {text}" + (f"  ({missed} trials without it)" if missed else ""))
    if medians["baseline up==0"] and medians["probe failure"]:
        print(f"  probe failure / baseline: {medians['probe failure'] / medians['baseline up==0']:.2f}")
    print()
    probe_cost(client, ends, monitor.name, args.node, args.checks)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
