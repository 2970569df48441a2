#!/usr/bin/env python3
"""Time site.yml on the lab, over SSH (how the lab and production reach hosts) and through docker exec.

For each connection: a fresh lab, the first converge, then idempotent re-runs. Prints, per run, wall
time and the number of changed tasks, and each time as a ratio of the same step through the docker
connection measured in the same run (the baseline: how the lab reached its hosts before it used SSH).
The docker runs add an inventory source that sets `ansible_connection: community.docker.docker` on the
`lab` group (not with -e, which would also take the controller's own delegated tasks into a container), so
everything else is the same.
Leaves no lab behind unless --keep is given (then the last connection's lab stays up).
Run with: make bench   (or .venv/bin/python benchmarks/lab_playbook_time.py)
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import docker
from deepseek_testkit import lab

CONNECTIONS = ("docker", "ssh")
DOCKER_OVERLAY = "lab:\n  vars:\n    ansible_connection: community.docker.docker\n"


def measure(client: docker.DockerClient, hosts: list[lab.LabHost], extra: list[str], reruns: int) -> list:
    """A fresh lab, the first converge and the re-runs: (step, seconds, changed) rows; [] on a failure."""
    lab.remove_hosts(client)
    start = time.monotonic()
    lab.create_hosts(client, hosts)
    rows: list[tuple[str, float, int | str]] = [("create lab hosts (boot, SSH access)", time.monotonic() - start, "-")]
    for n in range(reruns + 1):
        run = lab.run_playbook(extra=extra)
        if not run.ok:
            print(f"benchmark: site.yml run {n} failed", file=sys.stderr)
            return []
        rows.append(
            ("site.yml first converge" if n == 0 else f"site.yml re-run {n} (idempotent)", run.seconds, run.changed)
        )
    return rows


def main() -> int:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reruns", type=int, default=2, help="idempotent re-runs after the first converge")
    parser.add_argument(
        "--connections", default="docker,ssh", help="comma-separated, in order: docker (the baseline), ssh"
    )
    parser.add_argument("--keep", action="store_true", help="keep the last lab afterwards")
    args = parser.parse_args()
    names = args.connections.split(",")
    if not set(names) <= set(CONNECTIONS):
        parser.error(f"--connections: choose from {', '.join(CONNECTIONS)}")

    client = docker.from_env()
    lab.ensure_engine_and_image()
    hosts = lab.lab_hosts()
    results: dict[str, list] = {}
    with tempfile.TemporaryDirectory() as tmp:
        overlay = Path(tmp) / "docker-connection.yml"
        overlay.write_text(DOCKER_OVERLAY)
        extra = {"docker": ["-i", str(overlay)], "ssh": []}
        try:
            for name in names:
                results[name] = measure(client, hosts, extra[name], args.reruns)
                if not results[name]:
                    return 1
        finally:
            if not args.keep:
                lab.remove_hosts(client)

    baseline = dict((step, seconds) for step, seconds, _ in results.get("docker", []))
    print()
    print(f"lab: {len(hosts)} hosts; machine: {platform.machine()}, {len(os.sched_getaffinity(0))} cores")
    print(f"{'connection':<11} {'step':<40} {'seconds':>8} {'changed':>8} {'x docker':>9}")
    for name, rows in results.items():
        for step, seconds, changed in rows:
            ratio = f"{seconds / baseline[step]:.2f}" if step in baseline and step.startswith("site.yml") else ""
            print(f"{name:<11} {step:<40} {seconds:>8.1f} {changed!s:>8} {ratio:>9}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
