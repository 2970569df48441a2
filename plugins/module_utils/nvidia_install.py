# Copyright: deepseek.cluster contributors
# Apache License 2.0 (see LICENSE)
"""The shared install flow of the NVIDIA roles (role deepseek.cluster.nvidia_packages), as pure functions.

repository -> index -> pre-install transaction -> one target version -> simulate -> install ->
hold/versionlock -> assert one version. The roles run commands and modules; every decision and every
command line is made here, so the apt and dnf paths are unit-tested, including dnf, which no test
machine runs.
"""

from __future__ import annotations

import re
from typing import Any

from ansible_collections.deepseek.cluster.plugins.module_utils.nvidia_packages import (
    debian_nonfree_repository,
    upstream_version,
)

APT_SOURCES_DIR = "/etc/apt/sources.list.d"
# apt-get indextargets --format: the file:line that defines a source, its URI, suite and component.
INDEXTARGETS_FORMAT = "$(SOURCESENTRY)|$(REPO_URI)|$(RELEASE)|$(COMPONENT)"


class InstallError(ValueError):
    """A state the flow refuses before changing anything; the message says what to change."""


def normal_uri(uri: str) -> str:
    """A repository URI as apt prints it: ending in "/", and "file:///x" written "file:/x"."""
    return re.sub(r"^file://(?=/)", "file:", str(uri).strip()).rstrip("/") + "/"


def parse_indextargets(lines: list[str]) -> list[dict[str, str]]:
    """Sources apt knows, from ``apt-get indextargets --format INDEXTARGETS_FORMAT`` lines.

    Each: ``file`` (without ":line"), ``uri`` (always ending in "/"), ``suite`` ("" for a flat
    repository) and ``component`` ("" for a flat repository, where apt prints "$(COMPONENT)").
    """
    records = []
    for line in lines:
        parts = line.split("|")
        if len(parts) != 4:
            continue
        entry, uri, suite, component = (p.strip() for p in parts)
        records.append(
            {
                "file": re.sub(r":[0-9]+$", "", entry),
                "uri": normal_uri(uri),
                "suite": "" if suite in ("", "/") else suite,
                "component": "" if component.startswith("$(") else component,
            }
        )
    return records


def own_source_path(name: str) -> str:
    """Where the collection writes the apt source ``name`` (a deb822 file)."""
    return f"{APT_SOURCES_DIR}/{name}.sources"


def apt_source_plan(repository: dict[str, Any], lines: list[str]) -> dict[str, Any]:
    """Whether to write the apt source of ``repository`` or reuse one the host already has.

    A host set up the NVIDIA way (the cuda-keyring package's cuda-<distro>-<arch>.list, the container
    toolkit's nvidia-container-toolkit.list) already has a source for the URI, with its own keyring:
    a second file for the same URI and suite with another Signed-By makes apt refuse every source
    ("Conflicting values set for option Signed-By"). Then the existing one is used and the
    collection's own file for that name is removed. Returns ``write`` (bool), ``path`` (the
    collection's file) and ``reused`` (the other file, or "").
    """
    path = own_source_path(str(repository.get("name", "")))
    if repository.get("kind") != "apt":
        wanted = repository.get("kind") == "apt-debian" and bool(repository.get("groups"))
        return {"write": wanted, "path": path, "reused": ""}
    suites = ["" if s in ("", "/") else str(s) for s in repository["suites"]]
    components = [""] if not any(suites) else list(repository.get("components") or [])
    wanted = {(normal_uri(u), s, c) for u in repository["uris"] for s in suites for c in components}
    others = [r for r in parse_indextargets(lines) if r["file"] != path]
    have = {(r["uri"], r["suite"], r["component"]) for r in others}
    # Reused only when the host's sources already carry every suite and component asked for.
    if wanted and wanted <= have:
        reused = next(r["file"] for r in others if (r["uri"], r["suite"], r["component"]) in wanted)
        return {"write": False, "path": path, "reused": reused}
    return {"write": True, "path": path, "reused": ""}


def debian_nonfree(repository: dict[str, Any], lines: list[str]) -> dict[str, Any]:
    """Resolve a Debian non-free request (kind apt-debian) against the host's own sources.

    Each group (URIs, suites) gets only the components the host's other sources lack for it: Debian
    12's installer already writes "main non-free-firmware", and a component listed twice makes apt
    warn on every run ("configured multiple times"). No group left: nothing to write.
    """
    if repository.get("kind") != "apt-debian" or repository.get("groups"):
        return repository
    records = parse_indextargets(lines)
    targets = [f"{r['uri']} {r['suite']} {r['component']}" for r in records if r["suite"]]
    resolved = debian_nonfree_repository(targets, repository["codename"], repository.get("distro_mirrors"))
    own = own_source_path(resolved["name"])
    have = {(r["uri"], r["suite"], r["component"]) for r in records if r["file"] != own}
    groups: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    for group in resolved["groups"]:
        for uri in group["uris"]:
            for suite in group["suites"]:
                missing = tuple(c for c in resolved["components"] if (normal_uri(uri), suite, c) not in have)
                if missing:
                    groups.setdefault((uri, missing), []).append(suite)
    resolved["groups"] = [
        {"uris": [uri], "suites": suites, "components": list(missing)} for (uri, missing), suites in groups.items()
    ]
    return {**resolved, "variable": repository.get("variable", "")}


def installed_versions(packages: dict[str, list[dict[str, Any]]], names: list[str]) -> dict[str, str]:
    """Upstream version of each installed name (package_facts format): {"libcuda1": "580.95.05"}."""
    found = {}
    for name in names:
        entries = packages.get(name) or []
        if entries:
            found[name] = upstream_version(str(entries[0].get("version", "")))
    return found


def conflict_uri(stderr: str) -> str:
    """The URI apt names in "Conflicting values set for option Signed-By regarding source URI SUITE: A != B"."""
    match = re.search(r"Conflicting values set for option Signed-By regarding source (\S+)", str(stderr))
    return normal_uri(match.group(1)) if match else ""


def same_branch(installed: dict[str, str], prefix: str) -> dict[str, str]:
    """Installed versions of the branch asked for ("580.").

    Another branch's packages do not count, so a branch change resolves to the new branch instead of
    keeping the old version.
    """
    return {n: v for n, v in installed.items() if not prefix or v.startswith(prefix)}


def resolve_target(requested: str, versioned: list[str], installed: dict[str, str], planned: dict[str, str]) -> str:
    """The one version every versioned package is installed at.

    The requested version when one is set (a deliberate upgrade or downgrade). Otherwise nothing
    moves: the version already installed (so fabric manager added to a running node comes at the
    driver's version, not the newest), and on a fresh host the version the package manager would
    pick for the first versioned package (with NVIDIA's pinning package already in force). More than
    one installed version is an error: the operator says which one by setting the version.
    """
    if requested:
        return str(requested)
    present = sorted({v for n, v in installed.items() if n in versioned and v})
    if len(present) > 1:
        raise InstallError(
            f"the installed packages are at several versions ({', '.join(present)}): "
            "set the role's version variable to the one they should all be at."
        )
    if present:
        return present[0]
    for name in versioned:
        if planned.get(name):
            return planned[name]
    return ""


def pinned_specs(names: list[str], family: str, versioned: list[str], target: str) -> list[str]:
    """Install specifications: each versioned name at ``target``, other entries unchanged.

    apt: "pkg=580.95.05-*" (any Debian revision of that upstream version); dnf: "pkg-580.95.05".
    """
    if not target:
        return list(names)
    pattern = "{name}={target}-*" if family == "apt" else "{name}-{target}"
    return [pattern.format(name=n, target=target) if n in versioned else n for n in names]


def apt_simulate_argv(specs: list[str]) -> list[str]:
    """The apt-get dry run of one transaction (changes nothing; held packages may move, as in the install).

    apt-get matches a version prefix ("=580.95.05-*"), not other patterns: an entry such as
    "libnccl2=*+cuda13.0" (resolved by Ansible's apt module in the install itself) is dry-run by name.
    """
    simulated = [re.sub(r"=\*.*$", "", s) for s in specs]
    return [
        "apt-get",
        "install",
        "--simulate",
        "--no-install-recommends",
        "--allow-change-held-packages",
        "--allow-downgrades",
        *simulated,
    ]


def simulation_problems(
    planned: dict[str, str], installed: dict[str, str], versioned: list[str], target: str
) -> list[str]:
    """Versioned packages that would end at another version than ``target`` after the transaction."""
    problems = []
    for name in versioned:
        final = planned.get(name) or installed.get(name, "")
        if target and final and final != target:
            problems.append(f"{name} would be at {final}, not {target}")
    return problems


def dnf_enabled_streams(text: str, module: str) -> list[str]:
    """Streams of ``module`` in ``dnf module list --enabled MODULE`` output (rows "name stream ...")."""
    streams = []
    for line in str(text).splitlines():
        match = re.match(rf"^{re.escape(module)}\s+(\S+)", line)
        if match and match.group(1) not in streams:
            streams.append(match.group(1))
    return streams


def dnf_module_commands(wanted: str, enabled: list[str]) -> list[list[str]]:
    """Commands that leave exactly stream ``wanted`` ("nvidia-driver:580-open") enabled.

    dnf refuses to enable a second stream of a module; a branch change therefore resets the module
    first (NVIDIA's RHEL instructions: dnf module reset nvidia-driver), then enables the new stream.
    """
    if not wanted:
        return []
    module, _sep, stream = wanted.partition(":")
    if enabled == [stream]:
        return []
    commands = [["dnf", "module", "reset", "-y", module]] if enabled else []
    return commands + [["dnf", "module", "enable", "-y", wanted]]


def dnf_repoquery_argv(name: str) -> list[str]:
    """The newest version of ``name`` dnf offers, module streams applied.

    Versionlock applies only when dnf resolves a transaction, not here: this runs on fresh hosts, where
    nothing is locked.
    """
    return ["dnf", "-q", "repoquery", "--latest-limit=1", "--queryformat=%{version}", name]


def dnf_dry_run_argv(specs: list[str]) -> list[str]:
    """The dnf dry run of one transaction: it resolves, prints, and answers no (exit 1 with a plan).

    As strict as the install (no --allowerasing). The versionlock plugin is off for it: the flow
    releases the locks of packages whose version changes only after the dry run, and while they hold,
    dnf hides every other version of a locked name.
    """
    return ["dnf", "install", "--assumeno", "--disableplugin=versionlock", *specs]


def dnf_dry_run_failed(rc: int, output: str) -> bool:
    """Whether dnf could not resolve the transaction (it exits 1 on --assumeno even when it could)."""
    return rc not in (0, 1) or bool(re.search(r"^(Error|Problem)", str(output), re.MULTILINE))


def locks_to_release(installed: dict[str, str], versioned: list[str], target: str) -> list[str]:
    """Held/locked names whose version changes now: their hold or versionlock must go first."""
    return [n for n in versioned if n in installed and target and installed[n] != target]
