"""deepseek.cluster dr_replication receiver: publish what the active site replicated, keep the standby warm.

The sender can only write into the inbox (rrsync -wo). Nothing there is trusted or served as it is; every
`interval` seconds this loop, as root:

* reads the heartbeat and writes the replication lag for node_exporter's textfile collector;
* publishes each model version whose marker has arrived, once every file matches the version's manifest
  (sha256) and the marker matches the manifest: the files are linked (or copied) into a staging
  directory beside the versions, owned root:<group>, and the directory is renamed into place in one
  step, so that Triton never sees a partial version; a version that fails is counted and not retried
  until its marker changes;
* installs the replicated model repository (the active site's rendered config.pbtxt and version
  directories) once every version it names that the active site published as artifacts is published
  here too, then asks the local Triton to load it (the standby stays warm on the same version);
* installs a replicated CRL that verifies against the local CA certificates and is newer than the
  installed one, then runs the configured reload (the proxies refuse a certificate revoked on the
  active site within seconds).

While the host does not receive (it was promoted, or it is the active site), it only writes its metrics.
"""

from __future__ import annotations

import argparse
import calendar
import grp
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

PUBLISHED_MARKER = ".published"
MANIFEST = ".manifest"
MANIFEST_LINE = re.compile(r"^(?P<sha>[0-9a-fA-F]{64}) [ *](?P<path>.+)$")
VERSION_POLICY = re.compile(r"version_policy\s*:?\s*\{\s*specific\s*:?\s*\{(?P<body>[^}]*)\}")
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # also a metric label value: nothing to escape
VERSION_NAME = re.compile(r"^[1-9][0-9]*$")
# What a version_policy's specific block may hold (Triton's ModelVersionPolicy.Specific: versions only).
POLICY_BODY = re.compile(r"^\s*(versions\s*:\s*(\d+|\[\s*\d+(\s*,\s*\d+)*\s*\])\s*)+$")
CRL_PEM = re.compile(r"-----BEGIN X509 CRL-----.+?-----END X509 CRL-----\n?", re.S)


@dataclass
class Config:
    """The receiver's configuration (the role renders it as JSON)."""

    inbox: Path
    receiving: bool
    textfile: Path | None
    interval: float = 1.0
    artifact_root: Path | None = None
    group: str = "root"
    model_repository: Path | None = None
    triton_url: str = ""
    admin_header: str = ""
    admin_env: Path | None = None
    load_timeout: float = 7200.0
    pki_dir: Path | None = None
    pki_reload: list[str] = field(default_factory=list)
    pinned: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> Config:
        """Read the JSON configuration file."""
        raw = json.loads(path.read_text(encoding="utf-8"))

        def opt_path(key: str) -> Path | None:
            return Path(raw[key]) if raw.get(key) else None

        return cls(
            inbox=Path(raw["inbox"]),
            receiving=bool(raw["receiving"]),
            textfile=opt_path("textfile"),
            interval=float(raw.get("interval", 1.0)),
            artifact_root=opt_path("artifact_root"),
            group=raw.get("group", "root"),
            model_repository=opt_path("model_repository"),
            triton_url=raw.get("triton_url", ""),
            admin_header=raw.get("admin_header", ""),
            admin_env=opt_path("admin_env"),
            load_timeout=float(raw.get("load_timeout", 7200)),
            pki_dir=opt_path("pki_dir"),
            pki_reload=list(raw.get("pki_reload", [])),
            pinned=dict(raw.get("pinned", {})),
        )


def sha256_file(path: Path) -> str:
    """sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def parse_manifest(text: str) -> dict[str, str]:
    """sha256sum output -> {relative path: sha256}; paths that could leave the version are refused."""
    files: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        match = MANIFEST_LINE.match(line)
        if not match:
            raise ValueError(f"manifest line {number} is not sha256sum output")
        rel = match.group("path")
        parts = Path(rel).parts
        if rel.startswith("/") or ".." in parts or not parts or rel in (MANIFEST, PUBLISHED_MARKER):
            raise ValueError(f"manifest line {number} names an unsafe path: {rel!r}")
        files[rel] = match.group("sha").lower()
    if not files:
        raise ValueError("the manifest lists no file")
    return files


def verify_version(version_dir: Path, pinned: str = "") -> dict[str, str]:
    """Check a replicated version against its manifest and marker; return the manifest or raise ValueError.

    pinned: the sha256 the inventory pins for this version's manifest (triton_server_artifact_manifest_sha256),
    which the controller gives the receiver: then the manifest must be that one, whatever the sender says.
    """
    manifest_path = version_dir / MANIFEST
    marker = (version_dir / PUBLISHED_MARKER).read_text(encoding="utf-8").split()
    if not manifest_path.is_file():
        raise ValueError("no manifest")
    digest = sha256_file(manifest_path)
    if not marker or marker[0].lower() != digest:
        raise ValueError("the marker does not match the manifest")
    if pinned and digest != pinned.lower():
        raise ValueError(f"the manifest's sha256 {digest} is not the pinned {pinned.lower()}")
    files = parse_manifest(manifest_path.read_text(encoding="utf-8"))
    for rel, sha in files.items():
        path = version_dir / rel
        if path.is_symlink() or not path.is_file():
            raise ValueError(f"{rel} is missing")
        if sha256_file(path) != sha:
            raise ValueError(f"the sha256 of {rel} differs from the manifest")
    return files


def _stage_file(src: Path, target: Path, gid: int) -> None:
    """Copy one inbox file into the root-only staging directory, root:gid 0640.

    A copy, not a link: what is hashed afterwards is an inode the sender's account never had, so no rename in
    the inbox and no write handle it kept open (rsync --inplace) can change it between the check and the
    publishing.
    """
    if src.is_symlink() or not src.is_file():
        raise ValueError(f"{src.name} is missing or not a regular file")
    target.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    shutil.copyfile(src, target, follow_symlinks=False)
    os.chown(target, 0, gid)
    os.chmod(target, 0o640)


def publish_version(cfg: Config, rel: str, pinned: str = "") -> Path:
    """Copy the version into a staging directory beside the published ones, verify the copy, rename it in.

    The staging directory is root:group 0750; every file is checked there (manifest, marker, pin), so that
    what is published is exactly what was verified. Raises ValueError (and leaves nothing) when it fails.
    """
    assert cfg.artifact_root is not None
    src = cfg.inbox / "artifacts" / rel
    dest = cfg.artifact_root / rel
    gid = grp.getgrnam(cfg.group).gr_gid
    staging = dest.parent / f".dr-staging-{dest.name}"
    if staging.exists():
        shutil.rmtree(staging)
    for directory in (cfg.artifact_root, dest.parent, staging):
        directory.mkdir(mode=0o750, exist_ok=True)
        os.chown(directory, 0, gid)
        os.chmod(directory, 0o750)  # noqa: S103 - read by the group that serves it
    try:
        for name in (MANIFEST, PUBLISHED_MARKER):
            _stage_file(src / name, staging / name, gid)
        for rel_file in parse_manifest((staging / MANIFEST).read_text(encoding="utf-8")):
            _stage_file(src / rel_file, staging / rel_file, gid)
        for directory in [staging, *(p for p in staging.rglob("*") if p.is_dir())]:
            os.chown(directory, 0, gid)
            os.chmod(directory, 0o750)  # noqa: S103 - read by the group that serves it
        verify_version(staging, pinned)
    except (OSError, ValueError):
        shutil.rmtree(staging, ignore_errors=True)
        raise
    os.rename(staging, dest)
    return dest


def policy_versions(config_text: str, version_dirs: list[str]) -> list[str]:
    """The versions a config.pbtxt serves: its specific version_policy, else every version directory."""
    match = VERSION_POLICY.search(config_text)
    if match:
        return re.findall(r"\d+", match.group("body"))
    return version_dirs


def tree(root: Path) -> dict[str, bytes | None]:
    """Relative path -> content (None for a directory) of every entry under root.

    Symlinks and dot entries (rsync's --delay-updates directory .~tmp~, temporary files) are left out.
    """
    entries: dict[str, bytes | None] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink() or any(part.startswith(".") for part in Path(rel).parts):
            continue
        entries[rel] = None if path.is_dir() else path.read_bytes()
    return entries


def install_tree(want: dict[str, bytes | None], dest: Path, gid: int) -> bool:
    """Make dest hold exactly the files of `want` (tree()'s form; root:gid, 0750/0640), each in one rename."""
    have = tree(dest) if dest.is_dir() else {}
    if want == have:
        return False
    dest.mkdir(mode=0o750, parents=True, exist_ok=True)
    os.chown(dest, 0, gid)
    for rel, content in want.items():
        target = dest / rel
        if content is None:
            target.mkdir(mode=0o750, exist_ok=True)
            os.chown(target, 0, gid)
            os.chmod(target, 0o750)  # noqa: S103 - read by the group that serves it
        elif have.get(rel) != content:
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
            with os.fdopen(fd, "wb") as handle:
                handle.write(content)
            os.chown(tmp, 0, gid)
            os.chmod(tmp, 0o640)
            os.replace(tmp, target)
    for rel in sorted(set(have) - set(want), reverse=True):
        target = dest / rel
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
    return True


def admin_key(cfg: Config) -> str:
    """The key of Triton's restricted APIs, from the triton_server role's environment file."""
    if cfg.admin_env is None or not cfg.admin_env.is_file():
        return ""
    return cfg.admin_env.read_text(encoding="utf-8").strip().partition("=")[2]


def load_model(cfg: Config, model: str) -> None:
    """Ask the local Triton to (re)load a model from its repository; raise on anything but 200."""
    request = urllib.request.Request(  # noqa: S310 - the configured http(s) URL
        f"{cfg.triton_url.rstrip('/')}/v2/repository/models/{model}/load", data=b"", method="POST"
    )
    key = admin_key(cfg)
    if cfg.admin_header and key:
        request.add_header(cfg.admin_header, key)
    with urllib.request.urlopen(request, timeout=cfg.load_timeout) as response:  # noqa: S310 - configured URL
        response.read()


def crl_last_update(pem: str) -> float:
    """The lastUpdate of one PEM CRL, Unix time (openssl)."""
    out = subprocess.run(
        ["openssl", "crl", "-noout", "-lastupdate"], input=pem, capture_output=True, text=True, check=True
    ).stdout
    stamp = " ".join(out.strip().split("=", 1)[1].split())  # lastUpdate=Dec  1 16:00:00 2026 GMT
    return float(calendar.timegm(time.strptime(stamp, "%b %d %H:%M:%S %Y GMT")))


def crl_verifies(pem: str, ca_file: Path) -> bool:
    """True when the CRL's signature verifies against one of the CA certificates in ca_file."""
    proc = subprocess.run(
        ["openssl", "crl", "-noout", "-CAfile", str(ca_file)], input=pem, capture_output=True, text=True, check=False
    )
    return proc.returncode == 0 and "verify OK" in (proc.stdout + proc.stderr)


def newest_update(text: str) -> float:
    """The latest lastUpdate of the CRLs in a bundle (0 when none)."""
    return max((crl_last_update(pem) for pem in CRL_PEM.findall(text)), default=0.0)


@dataclass
class State:
    """What the loop has done, for its metrics and to avoid redoing work."""

    rejected_total: dict[str, int] = field(default_factory=dict)  # model -> count
    published: dict[str, int] = field(default_factory=dict)  # model -> newest version published here
    installed: dict[str, str] = field(default_factory=dict)  # model -> versions installed in the repository
    refused: dict[str, list[str]] = field(default_factory=dict)  # model -> files new to this host, last seen
    refused_total: dict[str, int] = field(default_factory=dict)
    unpinned: set[str] = field(default_factory=set)  # versions waiting for the controller's pin (logged once)
    retry_at: dict[str, float] = field(default_factory=dict)  # model -> when a failed load may be tried again
    load_failures: dict[str, int] = field(default_factory=dict)
    loaded_at: dict[str, float] = field(default_factory=dict)
    loading: set[str] = field(default_factory=set)
    crl_installed_at: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)


def publish_artifacts(cfg: Config, state: State) -> None:
    """Publish every complete, verified version that is not published here yet."""
    incoming = cfg.inbox / "artifacts"
    if cfg.artifact_root is None or not incoming.is_dir():
        return
    for marker in sorted(incoming.glob(f"*/*/{PUBLISHED_MARKER}")):
        version_dir = marker.parent
        model, version = version_dir.parent.name, version_dir.name
        if not VERSION_NAME.match(version) or not MODEL_NAME.match(model):
            continue
        rel = f"{model}/{version}"
        if (cfg.artifact_root / rel).exists():
            state.published[model] = max(state.published.get(model, 0), int(version))
            continue
        if cfg.pinned and rel not in cfg.pinned:
            # The controller vouches for manifests (it pins them): a version it has not pinned waits for it
            # (the next dr.yml or site.yml run after the deploy), untouched in the inbox.
            if rel not in state.unpinned:
                state.unpinned.add(rel)
                print(f"version {rel} waits: the controller has pinned no manifest for it", file=sys.stderr, flush=True)
            continue
        try:
            publish_version(cfg, rel, cfg.pinned.get(rel, ""))
        except (OSError, ValueError) as exc:
            # Removed from the inbox: the sender sends it whole again (it looks again every resend interval).
            shutil.rmtree(version_dir, ignore_errors=True)
            with state.lock:
                state.rejected_total[model] = state.rejected_total.get(model, 0) + 1
            print(
                f"version {rel} rejected and removed from the inbox, not published: {exc}", file=sys.stderr, flush=True
            )
            continue
        state.published[model] = max(state.published.get(model, 0), int(version))
        print(f"version {rel} verified and published", flush=True)


def prune_inbox(cfg: Config, _state: State | None = None) -> None:
    """Drop inbox versions the active site no longer lists (it pruned them); the published ones stay."""
    listing = cfg.inbox / "small" / "published.json"
    incoming = cfg.inbox / "artifacts"
    if not listing.is_file() or not incoming.is_dir():
        return
    listed = set(json.loads(listing.read_text(encoding="utf-8")))
    for version_dir in incoming.glob("*/*"):
        rel = f"{version_dir.parent.name}/{version_dir.name}"
        if (
            version_dir.is_dir()
            and version_dir.name.isdigit()
            and rel not in listed
            and (version_dir / PUBLISHED_MARKER).exists()
        ):
            shutil.rmtree(version_dir)


def models_ready(cfg: Config, model_src: Path) -> list[str]:
    """The versions the replicated config serves, when all that have artifacts are published here; else []."""
    config = model_src / "config.pbtxt"
    if not config.is_file():
        return []
    dirs = sorted(p.name for p in model_src.iterdir() if p.is_dir() and p.name.isdigit())
    versions = policy_versions(config.read_text(encoding="utf-8"), dirs)
    if not versions or any(v not in dirs for v in versions):
        return []
    listing = cfg.inbox / "small" / "published.json"
    with_artifacts = set(json.loads(listing.read_text(encoding="utf-8"))) if listing.is_file() else set()
    for version in versions:
        rel = f"{model_src.name}/{version}"
        if rel in with_artifacts and not (
            cfg.artifact_root is not None and (cfg.artifact_root / rel / PUBLISHED_MARKER).is_file()
        ):
            return []
    return versions


def _normalised(rel: str, content: bytes, model: str) -> bytes:
    """A configuration with its version numbers blanked: config.pbtxt's version_policy, <model>/<N> paths."""
    text = content.decode("utf-8", errors="replace")
    if Path(rel).name == "config.pbtxt":
        text = VERSION_POLICY.sub("version_policy {}", text)
    text = re.sub(rf"(/{re.escape(model)}/)\d+\b", r"\1N", text)
    return text.encode()


def _plain_policy(content: bytes | None) -> bool:
    """A config.pbtxt whose version numbers can be blanked safely: no comment, one version_policy, versions only."""
    text = (content or b"").decode("utf-8", errors="replace")
    policies = list(VERSION_POLICY.finditer(text))
    return (
        "#" not in text
        and text.count("version_policy") == len(policies) <= 1
        and all(POLICY_BODY.match(m.group("body")) for m in policies)
    )


def foreign_files(want: dict[str, bytes | None], have: dict[str, bytes | None], model: str) -> list[str]:
    """Files of a replicated model repository this host could not have produced itself.

    No new code comes over the wire: a file is accepted when a file with the same content is already in the
    local repository (the code and tokenizer the host's own triton_server role rendered: a new version
    directory of the same code), or when it is config.pbtxt or model.yaml and equals the local one but for
    version numbers. Anything else (a changed model.py, another backend, new parameters) waits for this site's
    own converge (site.yml), which renders it from the inventory.
    """
    known = {hashlib.sha256(c).hexdigest() for c in have.values() if c is not None}
    configs: dict[str, set[bytes]] = {}
    for rel, content in have.items():
        if content is not None and Path(rel).name in ("config.pbtxt", "model.yaml"):
            configs.setdefault(Path(rel).name, set()).add(_normalised(rel, content, model))
    foreign = []
    for rel, content in want.items():
        if rel.split("/")[0].isdigit() and not VERSION_NAME.match(rel.split("/")[0]):
            foreign.append(rel)
            continue
        if Path(rel).name == "config.pbtxt" and not _plain_policy(content):
            foreign.append(rel)
            continue
        if content is None or hashlib.sha256(content).hexdigest() in known:
            continue
        if _normalised(rel, content, model) in configs.get(Path(rel).name, set()):
            continue
        foreign.append(rel)
    return foreign


def install_models(cfg: Config, state: State) -> None:
    """Install each replicated model whose versions are all here, and load it in the background."""
    incoming = cfg.inbox / "small" / "models"
    if cfg.model_repository is None or not incoming.is_dir():
        return
    gid = grp.getgrnam(cfg.group).gr_gid
    for model_src in sorted(p for p in incoming.iterdir() if p.is_dir()):
        model = model_src.name
        versions = models_ready(cfg, model_src)
        if not versions or model in state.loading:
            continue
        dest = cfg.model_repository / model
        if not MODEL_NAME.match(model) or time.monotonic() < state.retry_at.get(model, 0.0):
            continue
        want = tree(model_src)  # read once: what is checked is what is installed
        foreign = foreign_files(want, tree(dest) if dest.is_dir() else {}, model)
        if foreign:
            if state.refused.get(model) != foreign:
                print(
                    f"model {model}: not installed, new to this host: {', '.join(foreign[:5])}",
                    file=sys.stderr,
                    flush=True,
                )
                with state.lock:
                    state.refused[model] = foreign
                    state.refused_total[model] = state.refused_total.get(model, 0) + 1
            continue
        state.refused.pop(model, None)
        if not install_tree(want, dest, gid) and state.installed.get(model):
            continue
        state.installed[model] = ",".join(versions)
        if cfg.triton_url:
            state.loading.add(model)
            threading.Thread(target=load_in_background, args=(cfg, state, model, versions), daemon=True).start()


def load_in_background(cfg: Config, state: State, model: str, versions: list[str]) -> None:
    """Load a model without holding up the loop (a first DeepSeek load takes most of an hour)."""
    try:
        load_model(cfg, model)
        with state.lock:
            state.loaded_at[model] = time.time()
        print(f"model {model} version(s) {','.join(versions)} loaded", flush=True)
    except (OSError, urllib.error.URLError) as exc:
        with state.lock:
            state.load_failures[model] = state.load_failures.get(model, 0) + 1
            state.installed.pop(model, None)  # try again, in a minute
            state.retry_at[model] = time.monotonic() + 60
        print(f"model {model}: load failed: {exc}", file=sys.stderr, flush=True)
    finally:
        with state.lock:
            state.loading.discard(model)


def install_crl(cfg: Config, state: State) -> None:
    """Install a replicated CRL that verifies and is newer than ours, then reload its users."""
    src = cfg.inbox / "small" / "pki" / "ca.crl"
    if cfg.pki_dir is None or not src.is_file():
        return
    dest = cfg.pki_dir / "ca.crl"
    text = src.read_text(encoding="utf-8")
    current = dest.read_text(encoding="utf-8") if dest.is_file() else ""
    pems = CRL_PEM.findall(text)
    if text == current or not pems or not all(crl_verifies(pem, cfg.pki_dir / "ca.crt") for pem in pems):
        return
    if current and newest_update(text) <= newest_update(current):
        return
    mode = dest.stat().st_mode & 0o777 if dest.exists() else 0o644
    fd, tmp = tempfile.mkstemp(dir=cfg.pki_dir, prefix=".ca.crl.")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, dest)
    state.crl_installed_at = time.time()
    print("replicated CRL installed", flush=True)
    if cfg.pki_reload:
        subprocess.run(cfg.pki_reload, check=False)


def heartbeat(cfg: Config) -> float | None:
    """The sender's clock when it wrote the last heartbeat that arrived, or None."""
    try:
        return float((cfg.inbox / "small" / "heartbeat").read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return None


def metrics_text(cfg: Config, state: State, now: float) -> str:
    """The textfile collector's file: receiving, heartbeat and lag, versions, loads."""
    beat = heartbeat(cfg)
    lines = [
        "# HELP deepseek_dr_receiving 1 while this host accepts replication from the active site.",
        "# TYPE deepseek_dr_receiving gauge",
        f"deepseek_dr_receiving {int(cfg.receiving)}",
        "# HELP deepseek_dr_metrics_timestamp_seconds When the receiver last wrote these metrics, Unix time.",
        "# TYPE deepseek_dr_metrics_timestamp_seconds gauge",
        f"deepseek_dr_metrics_timestamp_seconds {now:.3f}",
    ]
    if beat is not None:
        lines += [
            "# HELP deepseek_dr_heartbeat_timestamp_seconds Sender's clock when it wrote the last heartbeat received.",
            "# TYPE deepseek_dr_heartbeat_timestamp_seconds gauge",
            f"deepseek_dr_heartbeat_timestamp_seconds {beat:.3f}",
            "# HELP deepseek_dr_replication_lag_seconds Age of the last heartbeat received, when written.",
            "# TYPE deepseek_dr_replication_lag_seconds gauge",
            f"deepseek_dr_replication_lag_seconds {max(0.0, now - beat):.3f}",
        ]
    with state.lock:
        series = [
            ("deepseek_dr_version_published", "gauge", "Newest model version published here.", state.published),
            (
                "deepseek_dr_version_rejected_total",
                "counter",
                "Versions that failed their checksums.",
                state.rejected_total,
            ),
            (
                "deepseek_dr_model_load_failures_total",
                "counter",
                "Failed loads of a replicated model.",
                state.load_failures,
            ),
            (
                "deepseek_dr_model_loaded_timestamp_seconds",
                "gauge",
                "When a replicated model was last loaded.",
                state.loaded_at,
            ),
            (
                "deepseek_dr_model_refused_total",
                "counter",
                "Replicated models not installed: files new to this host.",
                state.refused_total,
            ),
        ]
        for name, kind, text, values in series:
            lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
            lines += [f'{name}{{model="{model}"}} {value}' for model, value in sorted(values.items())]
    return "\n".join(lines) + "\n"


def write_metrics(cfg: Config, state: State) -> None:
    """Replace the textfile in one rename."""
    if cfg.textfile is None:
        return
    cfg.textfile.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cfg.textfile.parent, prefix=f".{cfg.textfile.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(metrics_text(cfg, state, time.time()))
    os.chmod(tmp, 0o644)
    os.replace(tmp, cfg.textfile)


def known_models(cfg: Config, state: State) -> None:
    """Every model the inbox names starts its counters at zero, so that a first rejection is an increase."""
    for parent in (cfg.inbox / "artifacts", cfg.inbox / "small" / "models"):
        if parent.is_dir():
            for model in parent.iterdir():
                if model.is_dir() and MODEL_NAME.match(model.name):
                    with state.lock:
                        state.rejected_total.setdefault(model.name, 0)
                        state.load_failures.setdefault(model.name, 0)
                        state.refused_total.setdefault(model.name, 0)


def cycle(cfg: Config, state: State) -> None:
    """One pass: publish, install, then metrics (which are written even when a step failed)."""
    try:
        known_models(cfg, state)
        if cfg.receiving:
            for step in (publish_artifacts, install_models, install_crl, prune_inbox):
                try:
                    step(cfg, state)
                except Exception as exc:  # noqa: BLE001 - one failing step must not stop the others
                    print(f"{step.__name__}: {exc!r}", file=sys.stderr, flush=True)
    finally:
        write_metrics(cfg, state)


def main() -> int:
    """Loop until SIGTERM (or one pass with --once)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--once", action="store_true", help="one pass, loads waited for, then exit")
    args = parser.parse_args()
    cfg = Config.load(args.config)
    state = State()
    if args.once:
        cycle(cfg, state)
        while state.loading:
            time.sleep(0.1)
        write_metrics(cfg, state)
        return 0
    known_models(cfg, state)
    write_metrics(cfg, state)  # every counter at zero first: a first event is then an increase
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while not stop.is_set():
        start = time.monotonic()
        cycle(cfg, state)
        stop.wait(max(0.0, cfg.interval - (time.monotonic() - start)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
