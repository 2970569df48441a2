#!/usr/bin/env python3
"""Build a signed flat apt repository of stand-in packages from YAML indexes (test fixture).

Each index (tests/fixtures/nvidia-apt/*.yml) lists packages as control fields plus two keys of
this builder: ``stage`` (the first repository stage that publishes the package, default 1) and
``files`` (payload: destination path -> ``{src: path relative to tests/standin/ | content: text,
mode: "0644", conffile: bool}``; files under /etc/ are conffiles unless told otherwise). In
payload files ``@VERSION@`` becomes the package's upstream version (580.95.05) and
``@DEB_VERSION@`` its full version (580.95.05-1).

The repository is flat, as NVIDIA's CUDA repositories are (``deb [signed-by=DIR/keyring.gpg]
file:DIR /``): DIR/pool/*.deb, DIR/Packages(.gz), DIR/Release, DIR/InRelease, DIR/Release.gpg,
DIR/key.asc and DIR/keyring.gpg. The signing key lives in a key directory of its own (default
DIR/../standin-key), made on first use and reused, so rebuilding DIR with a higher stage (how a
test publishes an update) keeps the keyring clients already trust.

Usage: python3 tests/standin/nvidia_repo.py --index FILE [--index FILE ...] --out DIR [--stage N]
[--key-dir KEYDIR]
"""

from __future__ import annotations

import argparse
import email.utils
import gzip
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

STANDIN_DIR = Path(__file__).resolve().parent
# Release fields of NVIDIA's flat CUDA repositories (NVIDIA/cuda-repo-management repo-debian.sh):
# Origin and Label as NVIDIA's, so pins on "release o=NVIDIA" / "release l=NVIDIA CUDA" (the
# cuda-<distro>.pin file) match; no Suite or Codename, as in NVIDIA's; "Architecture: x86_64" is
# NVIDIA's own (non-standard) field, "Architectures" the standard one apt reads.
RELEASE_FIELDS = {
    "Origin": "NVIDIA",
    "Label": "NVIDIA CUDA",
    "Architecture": "x86_64",
    "Architectures": "amd64 all",
}
BUILDER_KEYS = {"stage", "files"}
# Control field order of dpkg-deb/debhelper output; fields not listed follow in index order.
FIELD_ORDER = [
    "Package",
    "Source",
    "Version",
    "Architecture",
    "Maintainer",
    "Installed-Size",
    "Pre-Depends",
    "Depends",
    "Recommends",
    "Suggests",
    "Conflicts",
    "Breaks",
    "Replaces",
    "Provides",
    "Section",
    "Priority",
    "Multi-Arch",
    "Homepage",
    "Description",
]
DEFAULTS = {
    "Priority": "optional",
    "Section": "misc",
    "Maintainer": "NVIDIA stand-in <standin@localhost>",
}
KEY_UID = "NVIDIA stand-in repository (test fixture) <standin@localhost>"
# Fixed timestamp for the payload and ar members: rebuilding a package gives the same bytes.
SOURCE_DATE_EPOCH = 1700000000


class IndexFileError(ValueError):
    """An index file that does not describe packages the builder can make."""


def load_index(path: Path) -> list[dict[str, Any]]:
    """The package entries of one YAML index, checked for the fields every package needs."""
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("packages"), list):
        raise IndexFileError(f"{path}: expected a mapping with a 'packages' list")
    packages = data["packages"]
    for entry in packages:
        missing = [f for f in ("Package", "Version", "Architecture") if not entry.get(f)]
        if missing:
            raise IndexFileError(f"{path}: entry {entry!r} lacks {', '.join(missing)}")
    return packages


def select(packages: Sequence[dict[str, Any]], stage: int) -> list[dict[str, Any]]:
    """The packages a repository of the given stage publishes (stage <= N), duplicates refused."""
    chosen = [p for p in packages if int(p.get("stage", 1)) <= stage]
    seen: set[tuple[str, str, str]] = set()
    for p in chosen:
        key = (str(p["Package"]), str(p["Version"]), str(p["Architecture"]))
        if key in seen:
            raise IndexFileError(f"package {key} is listed twice")
        seen.add(key)
    return chosen


def upstream_version(version: str) -> str:
    """The upstream part of a Debian version: no epoch, no Debian revision."""
    without_epoch = version.split(":", 1)[-1]
    return without_epoch.rsplit("-", 1)[0] if "-" in without_epoch else without_epoch


def control_fields(entry: dict[str, Any], installed_kib: int) -> dict[str, str]:
    """The control fields of an entry in dpkg's order, with the builder's defaults filled in."""
    fields = {k: str(v) for k, v in entry.items() if k not in BUILDER_KEYS}
    for key, value in DEFAULTS.items():
        fields.setdefault(key, value)
    fields.setdefault("Installed-Size", str(installed_kib))
    fields.setdefault(
        "Description",
        f"{fields['Package']} (stand-in)\n Stand-in package for tests; it carries no real payload.",
    )
    ordered = {k: fields[k] for k in FIELD_ORDER if k in fields}
    ordered.update({k: v for k, v in fields.items() if k not in ordered})
    return ordered


def format_stanza(fields: dict[str, str]) -> str:
    """Fields as a deb822 stanza; multi-line values keep their continuation lines."""
    lines = []
    for key, value in fields.items():
        first, *rest = value.split("\n")
        lines.append(f"{key}: {first}")
        lines.extend(f" {line}" if line.strip() else " ." for line in rest)
    return "\n".join(lines) + "\n"


def payload_bytes(spec: dict[str, Any], version: str) -> bytes:
    """The content of one payload file, with @VERSION@/@DEB_VERSION@ substituted."""
    if "content" in spec:
        text = str(spec["content"])
    elif "src" in spec:
        text = (STANDIN_DIR / str(spec["src"])).read_text()
    else:
        raise IndexFileError(f"payload {spec!r} has neither src nor content")
    text = text.replace("@DEB_VERSION@", version).replace("@VERSION@", upstream_version(version))
    return text.encode()


def stage_tree(entry: dict[str, Any], root: Path) -> list[str]:
    """Write an entry's payload under root; returns its conffiles."""
    conffiles = []
    for dest, spec in (entry.get("files") or {}).items():
        if not str(dest).startswith("/"):
            raise IndexFileError(f"{entry['Package']}: payload path {dest!r} is not absolute")
        target = root / str(dest).lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(payload_bytes(spec, str(entry["Version"])))
        target.chmod(int(str(spec.get("mode", "0644")), 8))
        if spec.get("conffile", str(dest).startswith("/etc/")):
            conffiles.append(str(dest))
    return conffiles


def tree_kib(root: Path) -> int:
    """Installed size of a staged tree in KiB, as dpkg-gencontrol counts it (at least 1)."""
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and "DEBIAN" not in p.parts)
    return max(1, -(-total // 1024))


def normalize_tree(root: Path) -> None:
    """Directories 0755 and the fixed build timestamp everywhere, whatever the umask (reproducible)."""
    for path in [root, *root.rglob("*")]:
        if path.is_dir():
            path.chmod(0o755)
        os.utime(path, (SOURCE_DATE_EPOCH, SOURCE_DATE_EPOCH), follow_symlinks=False)


def deb_name(fields: dict[str, str]) -> str:
    """The pool file name of a package: name_version_arch.deb, the epoch left out."""
    version = fields["Version"].split(":", 1)[-1]
    return f"{fields['Package']}_{version}_{fields['Architecture']}.deb"


def build_deb(entry: dict[str, Any], pool: Path) -> tuple[Path, str]:
    """Build one package into the pool with dpkg-deb; returns the .deb and its control stanza."""
    with tempfile.TemporaryDirectory(prefix="standin-deb-") as tmp:
        root = Path(tmp) / "root"
        (root / "DEBIAN").mkdir(parents=True)
        conffiles = stage_tree(entry, root)
        fields = control_fields(entry, tree_kib(root))
        stanza = format_stanza(fields)
        (root / "DEBIAN" / "control").write_text(stanza)
        if conffiles:
            (root / "DEBIAN" / "conffiles").write_text("\n".join(conffiles) + "\n")
        normalize_tree(root)
        deb = pool / deb_name(fields)
        env = {**os.environ, "SOURCE_DATE_EPOCH": str(SOURCE_DATE_EPOCH)}
        subprocess.run(
            ["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(root), str(deb)],
            check=True,
            capture_output=True,
            env=env,
        )
    return deb, stanza


def file_digests(path: Path) -> dict[str, str]:
    """Size and the digests apt checks for one file."""
    data = path.read_bytes()
    return {
        "Size": str(len(data)),
        "MD5sum": hashlib.md5(data).hexdigest(),  # noqa: S324 (apt's index format, not security)
        "SHA1": hashlib.sha1(data).hexdigest(),  # noqa: S324 (apt's index format, not security)
        "SHA256": hashlib.sha256(data).hexdigest(),
    }


def packages_stanza(stanza: str, deb: Path, out: Path) -> str:
    """A Packages entry: the control stanza plus Filename, Size, MD5sum and SHA256."""
    digests = file_digests(deb)
    extra = {
        "Filename": deb.relative_to(out).as_posix(),
        "Size": digests["Size"],
        "MD5sum": digests["MD5sum"],
        "SHA256": digests["SHA256"],
    }
    match = re.search(r"^Description:", stanza, flags=re.MULTILINE)
    cut = match.start() if match else len(stanza)
    return stanza[:cut] + format_stanza(extra) + stanza[cut:]


def write_indexes(stanzas: Sequence[str], out: Path) -> None:
    """DIR/Packages and a reproducible DIR/Packages.gz."""
    text = "\n".join(stanzas)
    (out / "Packages").write_text(text)
    with (out / "Packages.gz").open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        gz.write(text.encode())


def release_text(out: Path) -> str:
    """DIR/Release: NVIDIA's Origin/Label, today's Date and the digests of both indexes."""
    lines = [f"{k}: {v}" for k, v in RELEASE_FIELDS.items()]
    lines.append(f"Date: {email.utils.formatdate(usegmt=True)}")
    files = ["Packages", "Packages.gz"]
    digests = {name: file_digests(out / name) for name in files}
    for field, key in (("MD5Sum", "MD5sum"), ("SHA1", "SHA1"), ("SHA256", "SHA256")):
        lines.append(f"{field}:")
        lines.extend(f" {digests[n][key]} {digests[n]['Size']:>16} {n}" for n in files)
    lines.append("Acquire-By-Hash: no")
    return "\n".join(lines) + "\n"


@contextmanager
def gnupg_home(key_dir: Path) -> Iterator[Path]:
    """A short-lived GNUPGHOME holding the repository key (made in key_dir on first use).

    gpg-agent's socket must fit in a short path, so the home is a fresh directory under the
    system temp dir; the key itself persists in key_dir/secret.asc.
    """
    key_dir.mkdir(parents=True, exist_ok=True)
    secret = key_dir / "secret.asc"
    home = Path(tempfile.mkdtemp(prefix="gpg-"))
    try:
        if secret.exists():
            gpg(home, "--import", str(secret))
        else:
            gpg(home, "--passphrase", "", "--quick-gen-key", KEY_UID, "ed25519", "sign", "never")
            exported = gpg(home, "--armor", "--export-secret-keys", KEY_UID).stdout
            secret.write_bytes(exported)
            secret.chmod(0o600)
        yield home
    finally:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False, capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


def gpg(home: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    """Run gpg non-interactively against a given home."""
    return subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--yes", "--pinentry-mode", "loopback", *args],
        check=True,
        capture_output=True,
    )


def sign(out: Path, key_dir: Path) -> None:
    """InRelease, Release.gpg, key.asc and keyring.gpg for DIR/Release."""
    with gnupg_home(key_dir) as home:
        release = str(out / "Release")
        gpg(home, "--local-user", KEY_UID, "--clearsign", "--output", str(out / "InRelease"), release)
        gpg(home, "--local-user", KEY_UID, "--armor", "--detach-sign", "--output", str(out / "Release.gpg"), release)
        gpg(home, "--armor", "--output", str(out / "key.asc"), "--export", KEY_UID)
        gpg(home, "--output", str(out / "keyring.gpg"), "--export", KEY_UID)


def clean_pool(pool: Path, keep: set[str]) -> None:
    """Remove the .deb files a rebuild no longer publishes."""
    for deb in pool.glob("*.deb"):
        if deb.name not in keep:
            deb.unlink()


def make_readable(out: Path) -> None:
    """Repository files 0644 and directories 0755, whatever the umask: apt's _apt user reads them."""
    for path in [out, out / "pool"]:
        path.chmod(0o755)
    for path in [*out.iterdir(), *(out / "pool").iterdir()]:
        if path.is_file():
            path.chmod(0o644)


def build(indexes: Sequence[Path], out: Path, stage: int = 1, key_dir: Path | None = None) -> Path:
    """Build (or rebuild) the repository of the given stage in out; returns out."""
    out = Path(out).resolve()
    key_dir = Path(key_dir).resolve() if key_dir else out.parent / "standin-key"
    packages = select([p for index in indexes for p in load_index(Path(index))], stage)
    pool = out / "pool"
    pool.mkdir(parents=True, exist_ok=True)
    built = [build_deb(entry, pool) for entry in packages]
    clean_pool(pool, {deb.name for deb, _entry in built})
    ordered = sorted(built, key=lambda item: item[0].name)
    write_indexes([packages_stanza(stanza, deb, out) for deb, stanza in ordered], out)
    (out / "Release").write_text(release_text(out))
    sign(out, key_dir)
    make_readable(out)
    return out


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", action="append", required=True, type=Path, help="YAML index (repeatable)")
    parser.add_argument("--out", required=True, type=Path, help="repository directory")
    parser.add_argument("--stage", type=int, default=1, help="publish packages of stage <= N (default 1)")
    parser.add_argument("--key-dir", type=Path, help="signing key directory (default OUT/../standin-key)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Build the repository the command line asks for."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    out = build(args.index, args.out, args.stage, args.key_dir)
    count = len(re.findall(r"^Package: ", (out / "Packages").read_text(), flags=re.MULTILINE))
    print(f"{out}: {count} packages, stage {args.stage}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
