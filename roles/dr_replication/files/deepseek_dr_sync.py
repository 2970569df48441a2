"""deepseek.cluster dr_replication sender: one-way replication to the standby site's hosts.

Two streams, each in a thread of its own, so that a long model transfer never delays the heartbeat:

* small: every `interval` seconds, the heartbeat (this host's clock) is written into the outbox, the
  configured small files and directories (the rendered model repository, the golden answers, the CA
  certificate and CRL) are copied into it locally, and the outbox goes to every peer in one rsync with
  --delay-updates (the files of a cycle land together, the heartbeat with them) and --delete (a file
  deleted here is deleted there).
* artifacts: every published model version (a directory with a `.published` marker, written last by
  the triton_server role) goes to every peer that has not had it: its files first (resumable through
  --partial-dir, bandwidth-limited), the marker alone after them. The receiver verifies every file
  against the version's manifest before it publishes anything.

The peers' side forces rrsync (write-only, inside the inbox) on the key: this script can only push.
After each cycle it writes its metrics for node_exporter's textfile collector.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

PUBLISHED_MARKER = ".published"
PARTIAL_DIR = ".rsync-partial"


@dataclass
class Peer:
    """One receiving host."""

    name: str
    address: str
    port: int = 22
    user: str = "deepseek-dr"


@dataclass
class Config:
    """The sender's configuration (the role renders it as JSON)."""

    peers: list[Peer]
    outbox: Path
    ssh_key: Path
    known_hosts: Path
    control_dir: Path
    textfile: Path | None
    small: list[dict[str, str]] = field(default_factory=list)
    artifact_root: Path | None = None
    interval: float = 1.0
    artifact_interval: float = 5.0
    bwlimit_kib: int = 0
    timeout: int = 30

    @classmethod
    def load(cls, path: Path) -> Config:
        """Read the JSON configuration file."""
        raw = json.loads(path.read_text(encoding="utf-8"))
        root = raw.get("artifact_root") or None
        textfile = raw.get("textfile") or None
        return cls(
            peers=[Peer(**p) for p in raw["peers"]],
            outbox=Path(raw["outbox"]),
            ssh_key=Path(raw["ssh_key"]),
            known_hosts=Path(raw["known_hosts"]),
            control_dir=Path(raw["control_dir"]),
            textfile=Path(textfile) if textfile else None,
            small=list(raw.get("small", [])),
            artifact_root=Path(root) if root else None,
            interval=float(raw.get("interval", 1.0)),
            artifact_interval=float(raw.get("artifact_interval", 5.0)),
            bwlimit_kib=int(raw.get("bwlimit_kib", 0)),
            timeout=int(raw.get("timeout", 30)),
        )


def ssh_command(cfg: Config, peer: Peer, stream: str) -> str:
    """The remote shell rsync uses: the dedicated key only, a known host key, one kept connection per stream.

    One connection per stream (ControlPath ends in the stream's name): a model transfer filling its
    connection never holds up the heartbeat's, and one dying connection does not take both streams down.
    """
    opts = [
        "ssh",
        "-i",
        str(cfg.ssh_key),
        "-p",
        str(peer.port),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"UserKnownHostsFile={cfg.known_hosts}",
        "-o",
        "ConnectTimeout=5",
        "-o",
        "ServerAliveInterval=5",
        "-o",
        "ServerAliveCountMax=2",
        "-o",
        "ControlMaster=auto",
        "-o",
        f"ControlPath={cfg.control_dir}/%C-{stream}",
        "-o",
        "ControlPersist=60",
    ]
    return " ".join(opts)


def remote(peer: Peer, path: str) -> str:
    """Rsync's destination for a path inside the peer's inbox (rrsync anchors it there)."""
    host = f"[{peer.address}]" if ":" in peer.address else peer.address
    return f"{peer.user}@{host}:{path}"


def small_rsync_argv(cfg: Config, peer: Peer) -> list[str]:
    """The outbox to the peer's inbox: whole cycle at once, deletions included, content compared."""
    return [
        "rsync",
        "--recursive",
        "--links",
        "--times",
        "--checksum",
        "--delete",
        "--delay-updates",
        "--chmod=D0750,F0640",
        f"--timeout={cfg.timeout}",
        "-e",
        ssh_command(cfg, peer, "small"),
        f"{cfg.outbox}/",
        remote(peer, "small/"),
    ]


def artifact_rsync_argv(cfg: Config, peer: Peer, version_dir: Path, rel: str, marker_only: bool) -> list[str]:
    """One published version to the peer: its files (resumable, limited), or then its marker alone."""
    argv = [
        "rsync",
        "--recursive",
        "--times",
        "--mkpath",
        "--chmod=D0750,F0640",
        f"--timeout={cfg.timeout}",
        "-e",
        ssh_command(cfg, peer, "artifacts"),
    ]
    if marker_only:
        return [*argv, str(version_dir / PUBLISHED_MARKER), remote(peer, f"artifacts/{rel}/")]
    argv += [f"--partial-dir={PARTIAL_DIR}", f"--exclude=/{PUBLISHED_MARKER}"]
    if cfg.bwlimit_kib > 0:
        argv.append(f"--bwlimit={cfg.bwlimit_kib}")
    return [*argv, f"{version_dir}/", remote(peer, f"artifacts/{rel}/")]


def published_versions(root: Path | None) -> dict[str, str]:
    """Every published version under the artifact root, `<model>/<version>` -> its marker's content."""
    found: dict[str, str] = {}
    if root is None or not root.is_dir():
        return found
    for model in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for version in sorted(v for v in model.iterdir() if v.is_dir() and v.name.isdigit()):
            marker = version / PUBLISHED_MARKER
            if marker.is_file():
                found[f"{model.name}/{version.name}"] = marker.read_text(encoding="utf-8").strip()
    return found


def write_atomic(path: Path, text: str) -> None:
    """Replace a file in one rename, so that no reader ever sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def stage_small(cfg: Config, versions: dict[str, str], now: float) -> None:
    """Fill the outbox: the configured sources, the list of published versions, the heartbeat last."""
    cfg.outbox.mkdir(parents=True, exist_ok=True)
    wanted = {"heartbeat", "published.json"}
    for item in cfg.small:
        src, dest = Path(item["src"]), item["dest"].strip("/")
        wanted.add(dest.split("/")[0])
        target = cfg.outbox / dest
        if src.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                ["rsync", "--recursive", "--links", "--times", "--checksum", "--delete", f"{src}/", f"{target}/"],
                check=True,
                capture_output=True,
            )
        elif src.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.is_file() or target.read_bytes() != src.read_bytes():
                shutil.copy2(src, target)
        elif target.exists():  # gone at the source: gone here, hence on the peers
            shutil.rmtree(target) if target.is_dir() else target.unlink()
    for stray in cfg.outbox.iterdir():
        if stray.name not in wanted and not stray.name.startswith("."):
            shutil.rmtree(stray) if stray.is_dir() else stray.unlink()
    write_atomic(cfg.outbox / "published.json", json.dumps(versions, sort_keys=True) + "\n")
    write_atomic(cfg.outbox / "heartbeat", f"{now:.3f}\n")


class Metrics:
    """Per stream and peer: last success, failures, last duration; written as one textfile."""

    def __init__(self, path: Path | None, peers: list[str]) -> None:
        """Every stream and peer starts at zero failures (a first failure then shows as an increase)."""
        self.path = path
        self.lock = threading.Lock()
        self.success: dict[tuple[str, str], float] = {}
        self.failures: dict[tuple[str, str], int] = {(s, p): 0 for s in ("small", "artifacts") for p in peers}
        self.duration: dict[tuple[str, str], float] = {}
        with self.lock:
            self._write()

    def record(self, stream: str, peer: str, ok: bool, seconds: float) -> None:
        """Account one attempt and rewrite the file."""
        with self.lock:
            key = (stream, peer)
            self.failures.setdefault(key, 0)
            self.duration[key] = seconds
            if ok:
                self.success[key] = time.time()
            else:
                self.failures[key] += 1
            self._write()

    def _write(self) -> None:
        if self.path is None:
            return
        lines = [
            "# HELP deepseek_dr_sending 1 while this host replicates to the other site.",
            "# TYPE deepseek_dr_sending gauge",
            "deepseek_dr_sending 1",
        ]
        series = (
            ("last_success_timestamp_seconds", "gauge", "When a stream last reached a peer, Unix time.", self.success),
            ("failures_total", "counter", "Failed attempts per stream and peer.", self.failures),
            ("duration_seconds", "gauge", "Duration of the last attempt per stream and peer.", self.duration),
        )
        for suffix, kind, text, values in series:
            name = f"deepseek_dr_sync_{suffix}"
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
            lines += [f'{name}{{stream="{s}",peer="{p}"}} {_number(v)}' for (s, p), v in sorted(values.items())]
        write_atomic(self.path, "\n".join(lines) + "\n")


def _number(value: float) -> str:
    """A sample's value: counters as integers, times to the millisecond (never in exponent form)."""
    return str(value) if isinstance(value, int) else f"{value:.3f}"


def run(argv: list[str], label: str) -> bool:
    """Run one rsync; say why on failure (journal), never raise."""
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        print(f"{label}: rsync exit {proc.returncode}: {proc.stderr.strip()[-500:]}", file=sys.stderr, flush=True)
    return proc.returncode == 0


def small_cycle(cfg: Config, metrics: Metrics) -> None:
    """Stage the outbox and push it to every peer."""
    stage_small(cfg, published_versions(cfg.artifact_root), time.time())
    for peer in cfg.peers:
        start = time.monotonic()
        ok = run(small_rsync_argv(cfg, peer), f"small -> {peer.name}")
        metrics.record("small", peer.name, ok, time.monotonic() - start)


RESEND_SECONDS = 600.0


def artifact_cycle(cfg: Config, metrics: Metrics, sent: dict[str, dict[str, tuple[str, float]]]) -> None:
    """Send every published version a peer has not had yet: files first, the marker after them.

    A version sent is sent again every RESEND_SECONDS (rsync then moves nothing if the peer has it): a peer
    that rejected a copy and removed it gets it again.
    """
    versions = published_versions(cfg.artifact_root)
    for peer in cfg.peers:
        done = sent.setdefault(peer.name, {})
        start = time.monotonic()
        ok = True
        for rel, marker in versions.items():
            previous = done.get(rel)
            if previous is not None and previous[0] == marker and time.monotonic() - previous[1] < RESEND_SECONDS:
                continue
            version_dir = cfg.artifact_root / rel  # type: ignore[operator]
            if run(artifact_rsync_argv(cfg, peer, version_dir, rel, False), f"artifacts {rel} -> {peer.name}") and run(
                artifact_rsync_argv(cfg, peer, version_dir, rel, True), f"marker {rel} -> {peer.name}"
            ):
                if previous is None or previous[0] != marker:
                    print(f"version {rel} sent to {peer.name}", flush=True)
                done[rel] = (marker, time.monotonic())
            else:
                ok = False
                break
        metrics.record("artifacts", peer.name, ok, time.monotonic() - start)


def loop(name: str, every: float, body: Callable[[], None], stop: threading.Event) -> None:
    """Call body every `every` seconds (measured from start to start) until stopped; log, never die."""
    while not stop.is_set():
        start = time.monotonic()
        try:
            body()
        except Exception as exc:  # noqa: BLE001 - a replication loop must outlive one bad cycle
            print(f"{name}: {exc!r}", file=sys.stderr, flush=True)
        stop.wait(max(0.0, every - (time.monotonic() - start)))


def main() -> int:
    """Run both streams until SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--once", action="store_true", help="one cycle of each stream, then exit (tests, benchmarks)")
    parser.add_argument("--stream", choices=["small", "artifacts", "all"], default="all", help="with --once: which")
    args = parser.parse_args()
    cfg = Config.load(args.config)
    cfg.control_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # the unit's RuntimeDirectory, or a manual run
    metrics = Metrics(cfg.textfile, [peer.name for peer in cfg.peers])
    sent: dict[str, dict[str, tuple[str, float]]] = {}
    if args.once:
        if args.stream in ("small", "all"):
            small_cycle(cfg, metrics)
        if args.stream in ("artifacts", "all"):
            artifact_cycle(cfg, metrics, sent)
        return 0 if all(n == 0 for n in metrics.failures.values()) else 1
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threads = [
        threading.Thread(target=loop, args=("small", cfg.interval, lambda: small_cycle(cfg, metrics), stop)),
        threading.Thread(
            target=loop, args=("artifacts", cfg.artifact_interval, lambda: artifact_cycle(cfg, metrics, sent), stop)
        ),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
