#!/usr/bin/env python3
"""Time planning a 1,000-host fleet from captured topologies.

Parses each captured `nvidia-smi topo -m` once per host (as the module would on each host), then
places the parallel groups for a few requests over all hosts at once (as plan.yml does). Prints
seconds per phase and per host; the parse of one host is the baseline the other figures are
divided by. Run: .venv/bin/python benchmarks/plan_1000_hosts.py [--hosts N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from deepseek_testkit import ROOT, collection_module

build_facts = collection_module("plugins.module_utils.gpu_topology").build_facts
plan = collection_module("plugins.module_utils.parallel_plan").plan

SMI = ROOT / "tests" / "fixtures" / "nvidia-smi"
# capture -> (share of the fleet, label)
FLEET = {
    "topo-8xH100-SXM-NV18-8nic-niclegend-gpunumaid-spaces-irregular.txt": (0.6, "8xH100 NV18 + 8 NICs"),
    "topo-8xA100-DGX-A100-NV12-12xmlx5-tabs.txt": (0.3, "8xA100 NV12 + 12 NICs"),
    "topo-8xH100-SXM-nvswitch.txt": (0.1, "8xH100 NV18, no NIC columns"),
}
REQUESTS = {
    "TP8 EP8 (one instance per node)": {"tensor_parallel_size": 8, "moe_expert_parallel_size": 8},
    "TP16 (two nodes per instance)": {"tensor_parallel_size": 16},
    "TP2 (four instances per node)": {"tensor_parallel_size": 2},
}


def timed(func: Callable[..., Any], *args: object) -> tuple[float, Any]:
    """Run func(*args) once; return (seconds, result)."""
    start = time.perf_counter()
    result = func(*args)
    return time.perf_counter() - start, result


def main() -> int:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each phase; the median is printed")
    args = parser.parse_args()

    texts = []
    for name, (share, _label) in FLEET.items():
        texts += [(SMI / name).read_text()] * round(args.hosts * share)
    texts = texts[: args.hosts]

    parse_runs = [timed(lambda: [build_facts(t) for t in texts])[0] for _ in range(args.repeat)]
    topologies = {f"gpu-{i:04d}": build_facts(t) for i, t in enumerate(texts)}
    per_host = statistics.median(parse_runs) / len(texts)

    mix = ", ".join(f"{int(share * 100)}% {label}" for share, label in FLEET.values())
    print(f"hosts: {len(texts)} ({mix})")
    print(f"{'phase':<40} {'seconds':>9} {'ms/host':>9} {'x parse of one host':>20}")
    print(f"{'parse topo -m, all hosts':<40} {statistics.median(parse_runs):>9.3f} {per_host * 1e3:>9.3f} {1.0:>20.1f}")
    for label, request in REQUESTS.items():
        runs = [timed(plan, topologies, request) for _ in range(args.repeat)]
        seconds = statistics.median(r[0] for r in runs)
        instances = len(runs[0][1]["instances"])
        print(
            f"{'plan ' + label:<40} {seconds:>9.3f} {seconds / len(texts) * 1e3:>9.3f} "
            f"{seconds / len(texts) / per_host:>20.1f}   ({instances} instances)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
