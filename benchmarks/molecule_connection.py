#!/usr/bin/env python3
"""Time each molecule scenario with its hosts reached over SSH (as they are) and through docker exec.

For every scenario asked for (default: the main ones, those `make test` runs), `molecule test` runs twice
in a row, first through the docker connection (the baseline: how molecule reached its hosts before), then
over SSH with pipelining; the same containers, image and sequence, only the connection differs
(molecule/shared/create.yml writes `connection: community.docker.docker` into molecule's instance config
when DEEPSEEK_MOLECULE_CONNECTION=docker). Prints the wall time of each run and the SSH run as a ratio of
the docker one, and the totals. A failed run is reported and ends the benchmark.
Run with: .venv/bin/python benchmarks/molecule_connection.py [ROLE[:SCENARIO] ...]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONNECTIONS = ("docker", "ssh")


def scenarios(selected: list[str]) -> list[tuple[str, str]]:
    """(role, scenario) pairs: the selected ones, or every scenario not marked EXTENDED."""
    found = []
    for config in sorted(ROOT.glob("roles/*/molecule/*/molecule.yml")):
        role, scenario = config.parents[2].name, config.parent.name
        wanted = role in selected or f"{role}:{scenario}" in selected
        if wanted or (not selected and not (config.parent / "EXTENDED").exists()):
            found.append((role, scenario))
    return found


def run(role: str, scenario: str, connection: str) -> float | None:
    """`molecule test` of one scenario through one connection: its wall time, or None when it failed."""
    env = dict(os.environ, DEEPSEEK_MOLECULE_CONNECTION=connection, MOLECULE_ROLE=role.replace("_", "-"))
    env["ANSIBLE_COLLECTIONS_PATH"] = str(ROOT / "collections")
    # molecule runs ansible-playbook by name: the virtualenv's tools come first.
    tools = Path(sys.executable).parent
    env["PATH"] = f"{tools}{os.pathsep}{env.get('PATH', '')}"
    molecule = tools / "molecule"
    start = time.monotonic()
    done = subprocess.run(
        [str(molecule), "test", "-s", scenario],
        cwd=ROOT / "roles" / role,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )
    seconds = time.monotonic() - start
    print(f"  {role}/{scenario} via {connection}: {seconds:.0f} s (exit {done.returncode})", flush=True)
    return seconds if done.returncode == 0 else None


def main() -> int:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("selected", nargs="*", help="ROLE or ROLE:SCENARIO (default: every main scenario)")
    args = parser.parse_args()
    subprocess.run([str(ROOT / "molecule" / "scripts" / "build-base-image.sh")], check=True)

    rows = []
    for role, scenario in scenarios(args.selected):
        times = {connection: run(role, scenario, connection) for connection in CONNECTIONS}
        if None in times.values():
            print(f"benchmark: {role}/{scenario} failed; see `molecule test -s {scenario}` in roles/{role}")
            return 1
        rows.append((f"{role}/{scenario}", times["docker"], times["ssh"]))

    print()
    print(f"machine: {platform.machine()}, {len(os.sched_getaffinity(0))} cores; molecule test, wall seconds")
    print(f"{'scenario':<36} {'docker exec':>11} {'ssh':>8} {'x docker':>9}")
    for name, docker, ssh in [*rows, ("total", sum(r[1] for r in rows), sum(r[2] for r in rows))]:
        print(f"{name:<36} {docker:>11.0f} {ssh:>8.0f} {ssh / docker:>9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
