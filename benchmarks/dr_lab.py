#!/usr/bin/env python3
"""Disaster recovery on the lab: replication lag, a model version's way to the standby, the RTO.

Needs a running lab (make lab). Three measurements:

1. **Lag under a steady stream of small writes.** A writer on lab-primary-gpu1 writes a small file every
   0.2 s into /var/lib/deepseek/shared (replicated: deepseek_dr_small_paths in the lab inventory), each holding
   the time it was written; a watcher on lab-standby-gpu1 polls the inbox every 10 ms and records each file's
   arrival. Both containers read the same clock (one machine), so arrival - written is the lag. Three ways of
   replicating, one after the other with the same stream: the role's loop (deepseek-dr-sync, 1 s cycle), a
   systemd timer running one cycle a second (the same program with --once --stream small), and lsyncd 2.2
   (Debian's, installed for the benchmark; inotify-driven, delay 0, rsync through the same restricted key).
   p50 and p99 of each, and each as a ratio of the loop's.
2. **A 100 MB model version**: published on lab-primary-gpu1 as the triton_server role publishes one (staged,
   manifest, marker, a rename) and served there (version directory, version_policy, Triton's load API); the
   seconds until the standby's Triton reports that version ready. Baseline, in the same run: a plain
   `rsync -rt` of the same files over the same SSH key and path. Printed: both, their ratio, the difference
   (goal: at most rsync + 10 s).
3. **RTO**: the primary site's containers killed, playbooks/failover.yml, inference through the service name
   until the standby answers (dr_check.failover); then failback (restores the lab, timed too).

Run with: .venv/bin/python benchmarks/dr_lab.py [--seconds 60] [--megabytes 100] [--skip-rto]
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time

import docker
from deepseek_testkit import dr_check, lab

SHARED = "/var/lib/deepseek/shared"
SENDER_UNIT = "deepseek-dr-sync"
SYNC = "/usr/local/lib/deepseek-dr/deepseek_dr_sync.py"
SSH = (
    "ssh -i /etc/deepseek/dr/id_ed25519 -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=yes"
    " -o UserKnownHostsFile=/etc/deepseek/dr/known_hosts"
)

WRITER = """
import os, sys, time
d, seconds = sys.argv[1], float(sys.argv[2])
os.makedirs(d, exist_ok=True)
for f in os.listdir(d):
    os.unlink(os.path.join(d, f))
end, n = time.time() + seconds, 0
while time.time() < end:
    n += 1
    tmp = os.path.join(d, f".w{n}")
    with open(tmp, "w") as fh:
        fh.write(f"{time.time():.6f}")
    os.rename(tmp, os.path.join(d, f"w{n:06d}"))
    if n > 25:
        try:
            os.unlink(os.path.join(d, f"w{n - 25:06d}"))
        except FileNotFoundError:
            pass
    time.sleep(0.2)
"""

WATCHER = """
import json, os, sys, time
d, seconds = sys.argv[1], float(sys.argv[2])
seen, lags, end = set(), [], time.time() + seconds
while time.time() < end:
    try:
        names = os.listdir(d)
    except FileNotFoundError:
        names = []
    now = time.time()
    for name in names:
        if name.startswith("w") and name not in seen:
            try:
                lags.append(now - float(open(os.path.join(d, name)).read()))
                seen.add(name)
            except (OSError, ValueError):
                pass
    time.sleep(0.01)
print(json.dumps(lags))
"""

LSYNCD = """
settings {{ nodaemon = true, insist = true }}
sync {{
  default.rsync,
  source = "{source}/",
  target = "deepseek-dr@{address}:small/shared/",
  delay = 0,
  rsync = {{
    rsh = "{ssh}", protect_args = false, archive = false, links = true, times = true, _extra = {{"--checksum"}}
  }}
}}
"""


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def stream_lags(client: docker.DockerClient, writer: lab.LabHost, watcher: lab.LabHost, seconds: float) -> list[float]:
    """Run the watcher (in a thread) and the writer at once for `seconds`; the lag of every file that arrived."""
    watch = client.containers.get(watcher.name)
    inbox = f"{dr_check.INBOX}/small/shared"
    exec_id = client.api.exec_create(watch.id, ["python3", "-c", WATCHER, inbox, str(seconds + 5)])
    result: dict[str, bytes] = {}
    thread = threading.Thread(target=lambda: result.update(out=client.api.exec_start(exec_id)))
    thread.start()
    time.sleep(1)
    client.containers.get(writer.name).exec_run(["python3", "-c", WRITER, SHARED, str(seconds)])
    thread.join()
    return json.loads(result["out"].decode().strip().splitlines()[-1])


def method_loop(client, primary, standby, seconds):  # noqa: ANN001, ANN201 - the three methods share one shape
    """The role's own sender, as it runs."""
    return stream_lags(client, primary, standby, seconds)


def method_timer(client, primary, standby, seconds):  # noqa: ANN001, ANN201
    """A systemd timer running one small cycle a second (the sender service stopped meanwhile)."""
    node = client.containers.get(primary.name)
    node.exec_run(["systemctl", "stop", SENDER_UNIT])
    try:
        node.exec_run(
            [
                "systemd-run", "--unit=dr-bench-timer", "--on-active=0", "--on-unit-active=1s",
                "--timer-property=AccuracySec=10ms", "/usr/bin/python3", SYNC,
                "--config", "/etc/deepseek/dr/sync.json", "--once", "--stream", "small",
            ]
        )  # fmt: skip
        return stream_lags(client, primary, standby, seconds)
    finally:
        node.exec_run(["systemctl", "stop", "dr-bench-timer.timer", "dr-bench-timer.service"])
        node.exec_run(["systemctl", "start", SENDER_UNIT])


def method_lsyncd(client, primary, standby, seconds):  # noqa: ANN001, ANN201
    """Lsyncd (inotify, delay 0) through the same key and rrsync, the sender service stopped meanwhile."""
    node = client.containers.get(primary.name)
    code, out = dr_check.run(
        client,
        primary,
        "command -v lsyncd || (apt-get update -qq && apt-get install -y -qq lsyncd) >/dev/null 2>&1; command -v lsyncd",
    )
    if code != 0:
        raise SystemExit(f"lsyncd could not be installed on {primary.name}: {out}")
    address = lab.container_ip(client, standby)
    config = LSYNCD.format(source=SHARED, address=address, ssh=SSH)
    dr_check.run(client, primary, f"cat > /root/lsyncd-bench.lua <<'EOF'\n{config}\nEOF")
    node.exec_run(["systemctl", "stop", SENDER_UNIT])
    try:
        node.exec_run(["systemd-run", "--unit=dr-bench-lsyncd", "lsyncd", "/root/lsyncd-bench.lua"])
        time.sleep(2)
        return stream_lags(client, primary, standby, seconds)
    finally:
        node.exec_run(["systemctl", "stop", "dr-bench-lsyncd.service"])
        node.exec_run(["systemctl", "start", SENDER_UNIT])


def version_transfer(
    client: docker.DockerClient, primary: lab.LabHost, standby: lab.LabHost, megabytes: int
) -> dict[str, float]:
    """Seconds for a plain rsync of a new version's files, then for the same version published → loaded there."""
    _, versions = dr_check.run(client, primary, f"ls {dr_check.ARTIFACTS}/{lab.LAB_MODEL} 2>/dev/null")
    version = max([int(v) for v in versions.split() if v.isdigit()] + [1]) + 1
    address = lab.container_ip(client, standby)
    # Baseline: the same amount of new data, a plain rsync over the same key and network.
    dr_check.run(
        client,
        primary,
        f"mkdir -p /root/baseline && head -c {megabytes * 1_000_000} /dev/urandom > /root/baseline/weights.bin",
    )
    start = time.monotonic()
    code, out = dr_check.run(
        client, primary, f"rsync -rt -e '{SSH}' /root/baseline/ deepseek-dr@{address}:bench-baseline/"
    )
    baseline = time.monotonic() - start
    if code != 0:
        raise SystemExit(f"the baseline rsync failed: {out}")
    dr_check.run(client, standby, f"rm -rf {dr_check.INBOX}/bench-baseline")
    start = time.monotonic()
    dr_check.publish_on(client, primary, version, megabytes)
    dr_check.serve_version(client, primary, version)
    if not dr_check.wait(lambda: dr_check.version_ready(client, standby, version), 600, 0.25):
        raise SystemExit(f"version {version} was not loaded on {standby.name} within 600 s")
    return {"rsync": baseline, "published → loaded": time.monotonic() - start, "version": version}


def main() -> int:
    """Run the measurements and print them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60, help="length of each small-write stream")
    parser.add_argument("--megabytes", type=int, default=100)
    parser.add_argument("--skip-rto", action="store_true", help="leave the primary running (no failover)")
    args = parser.parse_args()
    client = docker.from_env()
    hosts = lab.lab_hosts()
    primary, standby = next(
        (p, s) for p, s in dr_check.pairs(hosts) if "gpu_nodes" in p.groups and "fallback_nodes" not in p.groups
    )

    print(
        f"\nLag of small writes ({args.seconds:.0f} s per method, one write every 0.2 s,"
        f" {primary.name} -> {standby.name})"
    )
    results = {}
    for name, method in (
        ("loop (the role)", method_loop),
        ("systemd timer 1 s", method_timer),
        ("lsyncd", method_lsyncd),
    ):
        lags = method(client, primary, standby, args.seconds)
        if not lags:
            print(f"  {name:<20} no write arrived")
            continue
        results[name] = (percentile(lags, 0.5), percentile(lags, 0.99), len(lags))
    base = results.get("loop (the role)")
    print(f"  {'method':<20} {'n':>5} {'p50 s':>8} {'p99 s':>8} {'p50 / loop':>11} {'p99 / loop':>11}")
    for name, (p50, p99, n) in results.items():
        r50 = f"{p50 / base[0]:.2f}" if base and base[0] else "-"
        r99 = f"{p99 / base[1]:.2f}" if base and base[1] else "-"
        print(f"  {name:<20} {n:>5} {p50:>8.2f} {p99:>8.2f} {r50:>11} {r99:>11}")

    print(f"\nA {args.megabytes} MB model version, {primary.name} -> {standby.name}")
    figures = version_transfer(client, primary, standby, args.megabytes)
    ours, rsync = figures["published → loaded"], figures["rsync"]
    print(f"  plain rsync of the files (baseline)       {rsync:7.1f} s")
    print(
        f"  published on the primary -> loaded there  {ours:7.1f} s"
        f"   ({ours / rsync:.2f} x rsync, rsync + {ours - rsync:.1f} s)"
    )

    if not args.skip_rto:
        print("\nRTO: the primary site killed, failover.yml, the first answer through the service name")
        out = dr_check.failover(client, hosts)
        back = dr_check.failback(client, hosts)
        for name, value in {**out.seconds, **back.seconds}.items():
            print(f"  {name:<40} {value:7.1f} s")
        for failure in out.failures + back.failures:
            print(f"  FAILED: {failure}")
        return 1 if out.failures or back.failures else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
