#!/usr/bin/env python3
"""Time site.yml on the lab: a fresh lab, the first converge, then idempotent re-runs.

Prints, per run, wall time and the number of changed tasks, and the re-run's time as a
ratio of the first converge measured in the same run (the baseline). Leaves no lab behind
unless --keep is given. Run with: make bench   (or .venv/bin/python benchmarks/lab_playbook_time.py)
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import docker

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "molecule" / "lab"))
import lab  # noqa: E402


def main() -> int:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reruns", type=int, default=2, help="idempotent re-runs after the first converge")
    parser.add_argument("--keep", action="store_true", help="keep the lab afterwards")
    args = parser.parse_args()

    client = docker.from_env()
    lab.ensure_engine_and_image()
    lab.remove_hosts(client)
    hosts = lab.lab_hosts()
    rows: list[tuple[str, float, int | str]] = []
    try:
        start = time.monotonic()
        lab.create_hosts(client, hosts)
        rows.append(("create lab hosts (boot to systemd running)", time.monotonic() - start, "-"))
        first = lab.run_playbook()
        if not first.ok:
            print("benchmark: the first converge failed", file=sys.stderr)
            return 1
        rows.append(("site.yml first converge", first.seconds, first.changed))
        for n in range(1, args.reruns + 1):
            again = lab.run_playbook()
            if not again.ok:
                print("benchmark: a re-run failed", file=sys.stderr)
                return 1
            rows.append((f"site.yml re-run {n} (idempotent)", again.seconds, again.changed))
    finally:
        if not args.keep:
            lab.remove_hosts(client)

    baseline = rows[1][1]
    print()
    print(f"lab: {len(hosts)} hosts; machine: {platform.machine()}, {len(os.sched_getaffinity(0))} cores")
    print(f"{'step':<46} {'seconds':>8} {'changed':>8} {'x first converge':>17}")
    for name, seconds, changed in rows:
        ratio = f"{seconds / baseline:.2f}" if name.startswith("site.yml") else ""
        print(f"{name:<46} {seconds:>8.1f} {changed!s:>8} {ratio:>17}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
