# Copyright: deepseek.cluster contributors
# Apache License 2.0 (see LICENSE)
"""Model artifacts: the sha256 manifest that lists them, and which published versions to remove.

A manifest is ``sha256sum`` output: one ``<64 hex digits>  <relative path>`` line per file (``*`` before
the path, binary mode, is accepted). Paths stay inside the version directory: absolute paths, ``..``
and duplicates are refused, so a manifest cannot write anywhere else. Errors are ``ArtifactError``.
"""

from __future__ import annotations

import posixpath
import re

_LINE = re.compile(r"^(?P<digest>[0-9a-fA-F]{64}) [ *](?P<path>.+)$")


class ArtifactError(ValueError):
    """The manifest or the version settings are unusable; the message says which line or variable."""


def _safe_path(path: str, number: int) -> str:
    """``path`` normalised; refuses what would leave the version directory or hide in it."""
    clean = posixpath.normpath(path)
    if path.startswith("/") or clean == "." or clean.startswith("../") or clean == "..":
        raise ArtifactError(f"manifest line {number}: path {path!r} leaves the version directory")
    if any(part.startswith(".") for part in clean.split("/")):
        raise ArtifactError(f"manifest line {number}: hidden path {path!r} (names starting with '.' are the role's)")
    return clean


def parse_manifest(text: str) -> list[dict[str, str]]:
    """``[{"path": ..., "sha256": ...}]`` in manifest order; blank lines and ``#`` comments are skipped."""
    files: list[dict[str, str]] = []
    seen: set[str] = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip("\r")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _LINE.match(line)
        if not match:
            raise ArtifactError(f"manifest line {number} is not '<sha256>  <path>': {line[:80]!r}")
        path = _safe_path(match["path"], number)
        if path in seen:
            raise ArtifactError(f"manifest line {number}: {path} is listed twice")
        seen.add(path)
        files.append({"path": path, "sha256": match["digest"].lower()})
    if not files:
        raise ArtifactError("the manifest lists no file")
    return files


def manifest_dirs(files: list[dict[str, str]]) -> list[str]:
    """The subdirectories the manifest's files need, parents first."""
    dirs: set[str] = set()
    for entry in files:
        parent = posixpath.dirname(entry["path"])
        while parent:
            dirs.add(parent)
            parent = posixpath.dirname(parent)
    return sorted(dirs, key=lambda d: (d.count("/"), d))


def versions_to_remove(names: list[str], current: int, keep: int) -> list[str]:
    """Version directories (numeric names) beyond the newest ``keep``; ``current`` is never among them."""
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ArtifactError(f"triton_server_keep_versions must be an integer >= 1, got {keep!r}")
    versions = sorted({int(n) for n in names if n.isdigit() and int(n) > 0}, reverse=True)
    kept = set(versions[:keep]) | {int(current)}
    return [str(v) for v in sorted(versions) if v not in kept]


def mismatched(stat_results: list[dict]) -> list[str]:
    """Paths whose staged file is missing or whose sha256 differs from the manifest.

    ``stat_results`` are the results of a looped ``ansible.builtin.stat`` (checksum_algorithm sha256)
    over the manifest's entries: each has ``item`` (path, sha256) and ``stat``.
    """
    bad = []
    for result in stat_results:
        stat, item = result.get("stat", {}), result["item"]
        if not stat.get("exists") or stat.get("checksum", "").lower() != item["sha256"].lower():
            bad.append(item["path"])
    return bad
