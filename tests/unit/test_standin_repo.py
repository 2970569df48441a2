"""The stand-in NVIDIA apt repository (tests/standin/nvidia_repo.py), checked with the real tools.

Built from tests/fixtures/nvidia-apt/debian12-x86_64.yml at stage 1 and 2: dpkg-deb reads back the
control fields the index gives, gpgv verifies InRelease with the exported keyring, Packages lists
exactly the packages of the stage, and apt-get itself, with a private configuration, resolves the
driver installs the role makes. The packages' Debian main dependencies (libc6, adduser, ...) are
marked installed in a private dpkg status file, as a Debian 12 system has them or gets them from
Debian main; everything else must come from the repository.

Facts the apt checks pin down (NVIDIA's packaging, see the index's sources): the driver's packages
depend on each other at exactly their version, so apt (which only installs candidate versions of
dependencies) installs an older release only with that release's pinning package in effect, and
the branch pinning package makes the newest release of its branch the candidate.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import FIXTURES, ROOT

INDEX = FIXTURES / "nvidia-apt" / "debian12-x86_64.yml"
BUILDER = ROOT / "tests" / "standin" / "nvidia_repo.py"
TOOLS = ("dpkg-deb", "gpg", "gpgv", "gpgconf", "apt-get", "apt-cache")
MISSING = [tool for tool in TOOLS if shutil.which(tool) is None]
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"needs {', '.join(MISSING)} (Debian/Ubuntu tools)")

# Debian 12 main packages the stand-ins depend on (bookworm versions); the private dpkg status
# marks them installed. Anything else a package depends on must be in the repository.
DEBIAN_MAIN = {
    "libc6": ("2.36-9+deb12u10", "amd64", ""),
    "dpkg": ("1.21.22", "amd64", ""),
    "debconf": ("1.5.82", "all", "debconf-2.0"),
    "adduser": ("3.134", "all", ""),
    "pciutils": ("1:3.9.0-4", "amd64", ""),
    "libtirpc3": ("1.3.3+ds-1", "amd64", ""),
}
# The packages of the driver that carry its version (NVIDIA's index): an install of one release
# must bring them all at that release.
REQUESTED = ["nvidia-driver-cuda", "nvidia-fabricmanager", "libnvidia-nscq", "nvidia-kernel-open-dkms"]
NEWEST_580 = {1: "580.95.05-1", 2: "580.105.08-1"}
HEADERS = {1: ("6.1.999-1", "linux-headers-6.1.0-999-amd64"), 2: ("6.1.1000-1", "linux-headers-6.1.0-1000-amd64")}
DRIVER_VERSION = re.compile(r"^5[0-9]{2}\.[0-9]+\.[0-9]+-1$")
BUILDER_KEYS = {"stage", "files"}


def load_builder():
    """tests/standin/nvidia_repo.py as a module."""
    spec = importlib.util.spec_from_file_location("nvidia_repo", BUILDER)
    module = importlib.util.module_from_spec(spec)
    sys.modules["nvidia_repo"] = module
    spec.loader.exec_module(module)
    return module


nvidia_repo = load_builder()


def entries(stage: int, index: Path = INDEX) -> list[dict]:
    """The index's packages a repository of the given stage publishes."""
    return [p for p in yaml.safe_load(index.read_text())["packages"] if int(p.get("stage", 1)) <= stage]


def entry(name: str, version: str) -> dict:
    """One package of the index."""
    return next(p for p in entries(2) if p["Package"] == name and p["Version"] == version)


def parse_stanzas(text: str) -> list[dict[str, str]]:
    """deb822 stanzas as dicts (continuation lines joined with newlines)."""
    stanzas = []
    for block in re.split(r"\n\s*\n", text.strip()):
        fields: dict[str, str] = {}
        key = ""
        for line in block.splitlines():
            if line[:1] in (" ", "\t") and key:
                fields[key] += "\n" + line[1:]
            elif ":" in line:
                key, _sep, value = line.partition(":")
                fields[key] = value.strip()
        stanzas.append(fields)
    return stanzas


def dep_names(value: str) -> set[str]:
    """Package names in a Depends-style field (versions, architectures and alternatives flattened)."""
    names = set()
    for alt in re.split(r"[,|]", value):
        name = alt.strip().split(" ", 1)[0].split("(", 1)[0].split(":", 1)[0]
        if name:
            names.add(name)
    return names


def build_repo(base: Path, stage: int, index: Path = INDEX) -> Path:
    """Build the repository of a stage in base/repo with the key in base/key."""
    return nvidia_repo.build([index], base / "repo", stage, base / "key")


@pytest.fixture(scope="module")
def repos(tmp_path_factory) -> dict[int, Path]:
    """Stage 1 built on its own; key 2: stages 2 and 3 rebuilt over a stage-1 repository (how tests
    publish; stage 3 completes 580.105.08 with its fabric manager and NSCQ)."""
    first = build_repo(tmp_path_factory.mktemp("stage1"), 1)
    base = tmp_path_factory.mktemp("stage2")
    build_repo(base, 1)
    build_repo(base, 2)
    latest = build_repo(base, 3)
    return {1: first, 2: latest}


class Apt:
    """apt-get/apt-cache with a private configuration: only the stand-in repository, own state."""

    def __init__(self, repo: Path, work: Path, preferences: str = "") -> None:
        self.work = work
        for sub in ("lists/partial", "cache/archives/partial", "sources.d", "preferences.d", "trusted.d"):
            (work / sub).mkdir(parents=True, exist_ok=True)
        (work / "sources.list").write_text(f"deb [signed-by={repo / 'keyring.gpg'}] file:{repo} /\n")
        (work / "status").write_text(debian_main_status())
        self.prefer(preferences)

    def prefer(self, preferences: str) -> None:
        """Replace the preferences in effect (one file, like a pinning package's)."""
        path = self.work / "preferences.d" / "nvidia-driver-pin"
        path.unlink(missing_ok=True)
        if preferences:
            path.write_text(preferences)

    def options(self) -> list[str]:
        """The -o options that keep apt off the host's sources, keys, state and preferences."""
        w = self.work
        settings = {
            "Dir::Etc::SourceList": w / "sources.list",
            "Dir::Etc::SourceParts": w / "sources.d",
            "Dir::Etc::Preferences": "/dev/null",
            "Dir::Etc::PreferencesParts": w / "preferences.d",
            "Dir::Etc::Trusted": "/dev/null",
            "Dir::Etc::TrustedParts": w / "trusted.d",
            "Dir::State::Lists": w / "lists",
            "Dir::State::status": w / "status",
            "Dir::State::extended_states": w / "extended_states",
            "Dir::Cache": w / "cache",
            "Debug::NoLocking": "1",
            "APT::Sandbox::User": "root",
            "APT::Architecture": "amd64",
            "APT::Architectures": "amd64",
            "APT::Install-Recommends": "0",
        }
        return [arg for key, value in settings.items() for arg in ("-o", f"{key}={value}")]

    def run(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run apt-get or apt-cache; on failure the output is in the assertion message."""
        done = subprocess.run([tool, *self.options(), *args], capture_output=True, text=True, check=False)
        if check:
            assert done.returncode == 0, f"{tool} {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
        return done

    def update(self) -> None:
        """apt-get update, which also verifies InRelease against the keyring (signed-by)."""
        done = self.run("apt-get", "update")
        assert not re.search(r"^(W|E):", done.stdout + done.stderr, re.MULTILINE), done.stdout + done.stderr

    def simulate(self, *packages: str, check: bool = True) -> dict[str, str]:
        """apt-get install --simulate (as the role: no recommends); {package: version} it installs."""
        done = self.run("apt-get", "install", "--simulate", "--no-install-recommends", *packages, check=check)
        if done.returncode != 0:
            return {}
        return dict(re.findall(r"^Inst (\S+) (?:\[\S+\] )?\((\S+)", done.stdout, re.MULTILINE))

    def candidate(self, package: str) -> str:
        """apt-cache policy's candidate version."""
        found = re.search(r"Candidate: (\S+)", self.run("apt-cache", "policy", package).stdout)
        assert found, package
        return found.group(1)


def debian_main_status() -> str:
    """A dpkg status file with the Debian main dependencies installed."""
    stanzas = []
    for name, (version, arch, provides) in DEBIAN_MAIN.items():
        lines = [f"Package: {name}", "Status: install ok installed", f"Architecture: {arch}", f"Version: {version}"]
        lines += [f"Provides: {provides}"] if provides else []
        lines += ["Maintainer: Debian", "Description: Debian 12 main package (marked installed for the test)"]
        stanzas.append("\n".join(lines) + "\n")
    return "\n".join(stanzas)


def pin_file(package: str, version: str) -> str:
    """The preferences file a pinning package of the index ships."""
    return entry(package, version)["files"]["/etc/apt/preferences.d/nvidia-driver-pin"]["content"]


def deb_fields(deb: Path) -> dict[str, str]:
    """The control fields of a built package, read back with dpkg-deb."""
    return parse_stanzas(
        subprocess.run(["dpkg-deb", "-f", str(deb)], capture_output=True, text=True, check=True).stdout
    )[0]


def extract(deb: Path, into: Path) -> Path:
    """Unpack a package's payload."""
    subprocess.run(["dpkg-deb", "-x", str(deb), str(into)], check=True)
    return into


def pool_deb(repo: Path, name: str, version: str, arch: str = "amd64") -> Path:
    """A package's file in the pool."""
    return repo / "pool" / f"{name}_{version}_{arch}.deb"


@pytest.mark.parametrize("stage", [1, 2])
def test_built_packages_carry_the_index_fields(repos, stage):
    for p in entries(stage):
        deb = pool_deb(repos[stage], p["Package"], p["Version"], p["Architecture"])
        assert deb.is_file(), deb
        fields = deb_fields(deb)
        for key, value in p.items():
            if key not in BUILDER_KEYS:
                assert fields.get(key) == str(value), (deb.name, key)


@pytest.mark.parametrize("stage", [1, 2])
def test_packages_index_lists_every_package_of_the_stage(repos, stage):
    repo = repos[stage]
    stanzas = parse_stanzas((repo / "Packages").read_text())
    listed = {(s["Package"], s["Version"]) for s in stanzas}
    published = {1: 1, 2: 3}[stage]  # the fixture's key 2 is the repository rebuilt up to stage 3
    assert listed == {(p["Package"], str(p["Version"])) for p in entries(published)}
    assert len(stanzas) == len(listed)
    assert sorted(p.name for p in (repo / "pool").glob("*.deb")) == sorted(Path(s["Filename"]).name for s in stanzas)
    for s in stanzas:
        data = (repo / s["Filename"]).read_bytes()
        assert int(s["Size"]) == len(data)
        assert s["SHA256"] == hashlib.sha256(data).hexdigest()
        assert s["MD5sum"] == hashlib.md5(data).hexdigest()  # noqa: S324 (apt's index format)
    assert gzip.decompress((repo / "Packages.gz").read_bytes()) == (repo / "Packages").read_bytes()


@pytest.mark.parametrize("stage", [1, 2])
def test_release_mirrors_nvidia_and_is_signed(repos, stage):
    repo = repos[stage]
    release = parse_stanzas((repo / "Release").read_text())[0]
    assert (release["Origin"], release["Label"]) == ("NVIDIA", "NVIDIA CUDA")
    assert "Suite" not in release
    assert "Codename" not in release
    for name in ("Packages", "Packages.gz"):
        digest = hashlib.sha256((repo / name).read_bytes()).hexdigest()
        assert re.search(rf"^{digest} +\d+ {re.escape(name)}$", release["SHA256"], re.MULTILINE), name
    keyring = str(repo / "keyring.gpg")
    subprocess.run(["gpgv", "--keyring", keyring, str(repo / "InRelease")], check=True, capture_output=True)
    subprocess.run(
        ["gpgv", "--keyring", keyring, str(repo / "Release.gpg"), str(repo / "Release")],
        check=True,
        capture_output=True,
    )
    assert (repo / "key.asc").read_text().startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")


def test_a_changed_release_fails_verification(repos, tmp_path):
    tampered = tmp_path / "InRelease"
    tampered.write_text((repos[1] / "InRelease").read_text().replace("Label: NVIDIA CUDA", "Label: NVIDIA CUDB"))
    done = subprocess.run(
        ["gpgv", "--keyring", str(repos[1] / "keyring.gpg"), str(tampered)], capture_output=True, check=False
    )
    assert done.returncode != 0


def test_payloads_follow_the_real_tools(repos, tmp_path):
    fm = extract(pool_deb(repos[2], "nvidia-fabricmanager", "580.105.08-1"), tmp_path / "fm")
    version = subprocess.run([fm / "usr/bin/nv-fabricmanager", "--version"], capture_output=True, text=True, check=True)
    assert version.stdout == "Fabric Manager version is : 580.105.08\n"
    unit = (fm / "lib/systemd/system/nvidia-fabricmanager.service").read_text()
    assert "Type=forking" in unit
    assert "ExecStart=/usr/bin/nvidia-fabricmanager-start.sh --mode start" in unit
    cuda = extract(pool_deb(repos[1], "nvidia-driver-cuda", "580.95.05-1"), tmp_path / "cuda")
    smi = subprocess.run([cuda / "usr/bin/nvidia-smi"], capture_output=True, text=True, check=False)
    assert smi.returncode == 9
    assert smi.stdout.startswith("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.")
    pd = extract(pool_deb(repos[1], "nvidia-persistenced", "580.95.05-1"), tmp_path / "pd")
    pd_unit = (pd / "lib/systemd/system/nvidia-persistenced.service").read_text()
    assert "ExecStart=/usr/bin/nvidia-persistenced --user nvpd\n" in pd_unit
    pin = pool_deb(repos[1], "nvidia-driver-pinning-580", "580-1", "all")
    assert (extract(pin, tmp_path / "pin") / "etc/apt/preferences.d/nvidia-driver-pin").read_text() == pin_file(
        "nvidia-driver-pinning-580", "580-1"
    )
    conffiles = subprocess.run(["dpkg-deb", "-I", str(pin), "conffiles"], capture_output=True, text=True, check=True)
    assert conffiles.stdout.split() == ["/etc/apt/preferences.d/nvidia-driver-pin"]


def test_dependencies_resolve_in_the_index_or_debian_main():
    """Every name a package depends on is a package (or Provides) of the index, or Debian main."""
    published = {p["Package"] for p in entries(2)}
    published |= {n for p in entries(2) for n in dep_names(str(p.get("Provides", "")))}
    for p in entries(2):
        for field in ("Pre-Depends", "Depends"):
            unknown = dep_names(str(p.get(field, ""))) - published - set(DEBIAN_MAIN) - {"debconf-2.0"}
            assert not unknown, f"{p['Package']} {p['Version']} {field}: {sorted(unknown)}"


def test_debian_main_names_are_in_debian_main():
    """The allowlisted names are Debian 12 main packages (checked where the host has those lists)."""
    lists = list(Path("/var/lib/apt/lists").glob("*debian_dists_bookworm_main_binary-amd64_Packages*"))
    if not lists:
        pytest.skip("the host has no Debian 12 main package lists")
    for name in DEBIAN_MAIN:
        done = subprocess.run(["apt-cache", "show", name], capture_output=True, text=True, check=False)
        assert done.returncode == 0, name
        assert f"Package: {name}\n" in done.stdout, name


@pytest.mark.parametrize("stage", [1, 2])
def test_apt_installs_one_release_with_its_version_pin(repos, stage, tmp_path):
    apt = Apt(repos[stage], tmp_path, pin_file("nvidia-driver-pinning-580.95.05", "580.95.05-1"))
    apt.update()
    installed = apt.simulate(*(f"{name}=580.95.05*" for name in REQUESTED))
    assert set(REQUESTED) <= set(installed)
    driver_versions = {v for v in installed.values() if DRIVER_VERSION.match(v)}
    assert driver_versions == {"580.95.05-1"}, installed
    # The closure NVIDIA's index needs beyond the requested packages, all from the repository.
    for name in ("libcuda1", "libnvidia-ml1", "nvidia-alternative", "nvidia-kernel-support", "firmware-nvidia-gsp"):
        assert installed.get(name) == "580.95.05-1", name
    for name in ("nvidia-support", "nvidia-kernel-common", "nvidia-installer-cleanup", "glx-alternative-nvidia"):
        assert name in installed, name
    assert not set(installed) & set(DEBIAN_MAIN)


def test_an_older_release_does_not_install_without_its_pin(repos, tmp_path):
    """Exact-version dependencies: apt takes a dependency's candidate (the newest), so =old fails."""
    apt = Apt(repos[2], tmp_path)
    apt.update()
    assert apt.simulate(*(f"{name}=580.95.05*" for name in REQUESTED), check=False) == {}
    assert set(apt.simulate(*REQUESTED).values()) >= {"590.44.01-1"}


@pytest.mark.parametrize("stage", [1, 2])
def test_branch_pin_makes_the_newest_580_the_candidate(repos, stage, tmp_path):
    apt = Apt(repos[stage], tmp_path)
    apt.update()
    assert apt.candidate("nvidia-driver-cuda") == "590.44.01-1"
    apt.prefer(pin_file("nvidia-driver-pinning-580", "580-1"))
    for name in (*REQUESTED, "libcuda1", "nvidia-persistenced"):
        assert apt.candidate(name) == NEWEST_580[stage], name
    installed = apt.simulate(*REQUESTED, "nvidia-persistenced")
    assert {v for v in installed.values() if DRIVER_VERSION.match(v)} == {NEWEST_580[stage]}, installed
    apt.prefer(pin_file("nvidia-driver-pinning-590", "590-1"))
    assert apt.candidate("nvidia-driver-cuda") == "590.44.01-1"


@pytest.mark.parametrize("stage", [1, 2])
def test_kernel_headers_metapackage_follows_the_stage(repos, stage, tmp_path):
    apt = Apt(repos[stage], tmp_path)
    apt.update()
    version, per_abi = HEADERS[stage]
    assert apt.candidate("linux-headers-amd64") == version
    assert apt.simulate("linux-headers-amd64") == {"linux-headers-amd64": version, per_abi: version}


def test_republishing_a_higher_stage_keeps_clients_trusting(tmp_path):
    """A client that trusted stage 1 updates to stage 2 (CLI rebuild into the same directory)."""
    repo = build_repo(tmp_path / "base", 1)
    keyring = (repo / "keyring.gpg").read_bytes()
    apt = Apt(repo, tmp_path / "client", pin_file("nvidia-driver-pinning-580", "580-1"))
    apt.update()
    assert apt.candidate("nvidia-driver-cuda") == NEWEST_580[1]
    args = ["--index", str(INDEX), "--out", str(repo), "--stage", "2", "--key-dir", str(tmp_path / "base" / "key")]
    subprocess.run([sys.executable, str(BUILDER), *args], check=True, capture_output=True)
    assert (repo / "keyring.gpg").read_bytes() == keyring
    apt.update()
    assert apt.candidate("nvidia-driver-cuda") == NEWEST_580[2]
    assert apt.candidate("linux-headers-amd64") == HEADERS[2][0]


def test_a_broken_dependency_is_caught(tmp_path):
    """The apt check fails when a Depends names a package the repository does not have."""
    data = yaml.safe_load(INDEX.read_text())
    for p in data["packages"]:
        if p["Package"] == "nvidia-kernel-support" and p["Version"] == "580.95.05-1":
            p["Depends"] = p["Depends"].replace("nvidia-modprobe (", "nvidia-modprobe-missing (")
    broken = tmp_path / "broken.yml"
    broken.write_text(yaml.safe_dump(data))
    repo = build_repo(tmp_path / "base", 1, broken)
    apt = Apt(repo, tmp_path / "client", pin_file("nvidia-driver-pinning-580", "580-1"))
    apt.update()
    assert apt.simulate(*REQUESTED, check=False) == {}
