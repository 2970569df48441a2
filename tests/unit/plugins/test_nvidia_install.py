"""The shared install flow of the NVIDIA roles (module_utils/nvidia_install), on real apt and dnf outputs.

Fixtures (tests/fixtures/nvidia-facts/, each says on its first line how it was made):
- indextargets-*.txt: real ``apt-get indextargets`` output (apt 2.6.1, Debian 12) for NVIDIA's documented
  source lines (cuda-keyring's cuda-debian12-x86_64.list, the container toolkit's list with $(ARCH)),
  the collection's own deb822 file, a Debian 12 installer-style sources.list and a file:// mirror.
- apt-simulate-debian12-*.txt: real ``apt-get install --simulate`` runs against deb.debian.org.
- apt-signed-by-conflict-stderr*.txt: apt 2.6.1's real stderr for two files giving one URI two Signed-By
  values, in the C locale and in German (research §13); regenerated live where apt-get exists.
Facts about dnf come from research §9 (rpm-software-management/dnf, dnf-plugins-core sources).
"""

import os
import shutil
import subprocess

import pytest
import yaml
from ansible_collections.deepseek.cluster.plugins.module_utils.nvidia_install import (
    INDEXTARGETS_FORMAT,
    InstallError,
    apt_simulate_argv,
    apt_source_plan,
    conflict_uri,
    debian_nonfree,
    dnf_dry_run_argv,
    dnf_dry_run_failed,
    dnf_enabled_streams,
    dnf_module_commands,
    dnf_repoquery_argv,
    installed_versions,
    locks_to_release,
    normal_uri,
    own_source_path,
    parse_indextargets,
    pinned_specs,
    resolve_target,
    same_branch,
    simulation_problems,
)
from ansible_collections.deepseek.cluster.plugins.module_utils.nvidia_packages import (
    SelectionError,
    apt_simulation_versions,
    container_toolkit_selection,
    cuda_repository,
    driver_selection,
    mirror_repository,
    repository,
)
from conftest import NVIDIA_FACTS, ROOT

FACTS = NVIDIA_FACTS
FLOW = ROOT / "roles" / "nvidia_packages" / "tasks"
CUDA_KEYRING_LIST = "/etc/apt/sources.list.d/cuda-debian12-x86_64.list"
TOOLKIT_LIST = "/etc/apt/sources.list.d/nvidia-container-toolkit.list"
CUDA_DEBIAN12 = "https://developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64/"


def lines(name: str) -> list[str]:
    """A fixture's lines without its '#' comment lines (how it was made)."""
    return [line for line in (FACTS / name).read_text().splitlines() if not line.startswith("#")]


# --- apt sources ----------------------------------------------------------------------------------


def test_the_format_is_the_one_the_fixtures_were_captured_with():
    assert INDEXTARGETS_FORMAT == "$(SOURCESENTRY)|$(REPO_URI)|$(RELEASE)|$(COMPONENT)"
    for name in ("indextargets-cuda-keyring.txt", "indextargets-container-toolkit.txt"):
        assert INDEXTARGETS_FORMAT in (FACTS / name).read_text().splitlines()[0]


def test_parse_indextargets_on_the_real_cuda_keyring_host():
    records = parse_indextargets(lines("indextargets-cuda-keyring.txt"))
    # A flat repository: apt prints an empty release and leaves $(COMPONENT) unexpanded.
    assert records[0] == {"file": CUDA_KEYRING_LIST, "uri": CUDA_DEBIAN12, "suite": "", "component": ""}
    assert {"file": "/etc/apt/sources.list.d/debian.sources", "uri": "http://deb.debian.org/debian/",
            "suite": "bookworm", "component": "main"} in records  # fmt: skip
    assert {r["suite"] for r in records} == {"", "bookworm", "bookworm-updates", "bookworm-security"}
    # A flat suite written "/" and "" are the same repository.
    assert parse_indextargets(["/etc/apt/x.list:1|http://m/r|/|$(COMPONENT)"])[0]["suite"] == ""
    # Not a target line (apt's errors, blank lines): ignored.
    assert parse_indextargets(["", "E: The list of sources could not be read.", "a|b|c"]) == []


def test_parse_indextargets_of_a_file_mirror_and_normal_uri():
    # apt prints file:///srv/x as file:/srv/x/ (indextargets-file-mirror.txt).
    records = parse_indextargets(lines("indextargets-file-mirror.txt"))
    assert records[0]["uri"] == "file:/srv/mirror/nvidia/"
    assert records[1]["suite"] == "bookworm"
    assert records[1]["component"] == "contrib"
    assert normal_uri("file:///srv/mirror/nvidia") == "file:/srv/mirror/nvidia/"
    assert normal_uri("https://x.example/repo") == normal_uri("https://x.example/repo/") == "https://x.example/repo/"


@pytest.mark.parametrize("uri", [CUDA_DEBIAN12, CUDA_DEBIAN12.rstrip("/")])
def test_cuda_keyrings_list_is_reused_for_the_same_uri(uri):
    repo = {**cuda_repository("Debian", "12", "x86_64"), "uris": [uri]}
    plan = apt_source_plan(repo, lines("indextargets-cuda-keyring.txt"))
    assert plan == {"write": False, "path": "/etc/apt/sources.list.d/cuda.sources", "reused": CUDA_KEYRING_LIST}


def test_the_toolkits_arch_list_is_reused_for_the_amd64_spec():
    # NVIDIA's list says .../stable/deb/$(ARCH); apt expands it to amd64 on this host.
    amd64 = container_toolkit_selection("Debian", "12", "x86_64", "")["repository"]
    plan = apt_source_plan(amd64, lines("indextargets-container-toolkit.txt"))
    assert plan["reused"] == TOOLKIT_LIST
    assert not plan["write"]
    assert plan["path"] == "/etc/apt/sources.list.d/nvidia-container-toolkit.sources"
    arm64 = container_toolkit_selection("Debian", "12", "aarch64", "")["repository"]
    assert apt_source_plan(arm64, lines("indextargets-container-toolkit.txt"))["write"]


def test_our_own_file_is_not_another_file():
    plan = apt_source_plan(cuda_repository("Debian", "12", "x86_64"), lines("indextargets-own-cuda-source.txt"))
    assert plan == {"write": True, "path": own_source_path("cuda"), "reused": ""}


def test_the_conflict_repair_filter_names_the_collections_own_file():
    # repository.yml removes this file when apt reports "Conflicting values set for option Signed-By".
    from ansible_collections.deepseek.cluster.plugins.filter.nvidia_install import FilterModule

    own = FilterModule().filters()["nvidia_own_source_path"]
    assert own("cuda") == "/etc/apt/sources.list.d/cuda.sources"
    assert own("cuda") == apt_source_plan(cuda_repository("Debian", "12", "x86_64"), [])["path"]
    # The file apt_source_plan compares against: NVIDIA's cuda-keyring list is another file.
    assert own("cuda") != CUDA_KEYRING_LIST


TOOLKIT_AMD64 = "https://nvidia.github.io/libnvidia-container/stable/deb/amd64/"
# research §13: apt's exact line (Debian/apt debmetaindex.cc SetSignedBy, "Conflicting values set for
# option %s regarding source %s %s: %s != %s" with URI, suite, the first and the second Signed-By).
APT_CONFLICT = (
    "E: Conflicting values set for option Signed-By regarding source "
    f"{TOOLKIT_AMD64} /: /usr/share/keyrings/nvidia-container-toolkit-keyring.gpg != "
    "/etc/apt/keyrings/nvidia-container-toolkit.asc"
)


def test_the_captured_conflict_is_apts_format():
    assert APT_CONFLICT in lines("apt-signed-by-conflict-stderr.txt")


@pytest.mark.parametrize(
    ("stderr", "uri"),
    [
        (APT_CONFLICT + "\nE: The list of sources could not be read.\n", TOOLKIT_AMD64),
        ("\n".join(lines("apt-signed-by-conflict-stderr.txt")), TOOLKIT_AMD64),
        # A suite repository and a file: mirror, as apt 2.6.1 prints them (a file:///srv/... line reads
        # file:/srv/..., research §13).
        (
            "E: Conflicting values set for option Signed-By regarding source http://deb.debian.org/debian/ "
            "bookworm: /usr/share/keyrings/debian-archive-keyring.gpg != /etc/apt/keyrings/x.gpg",
            "http://deb.debian.org/debian/",
        ),
        (
            "E: Conflicting values set for option Signed-By regarding source file:/srv/mirror/cuda/ /: "
            "/a.gpg != /b.gpg",
            "file:/srv/mirror/cuda/",
        ),
        # No conflict: nothing to repair.
        ("", ""),
        ("W: Target Packages (Packages) is configured multiple times in a.list:1 and b.sources:1\n", ""),
        # Another option's conflict is not a Signed-By one.
        ("E: Conflicting values set for option Trusted regarding source https://example.invalid/ /", ""),
    ],
    ids=["apt-line", "captured", "suite", "file-mirror", "empty", "warning-only", "other-option"],
)
def test_conflict_uri(stderr, uri):
    assert conflict_uri(stderr) == uri


@pytest.mark.skipif(shutil.which("apt-get") is None, reason="needs apt-get")
def test_conflict_uri_on_apts_live_stderr(tmp_path):
    # The guide's list and the collection's deb822 file for the same URI, in a private SourceParts.
    (tmp_path / "lists").mkdir()
    (tmp_path / "nvidia-container-toolkit.list").write_text(
        "deb [signed-by=/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg]"
        " https://nvidia.github.io/libnvidia-container/stable/deb/$(ARCH) /\n"
    )
    (tmp_path / "nvidia-container-toolkit.sources").write_text(
        "Types: deb\nURIs: https://nvidia.github.io/libnvidia-container/stable/deb/amd64\nSuites: /\n"
        "Signed-By: /etc/apt/keyrings/nvidia-container-toolkit.asc\n"
    )
    options = {
        "Dir::Etc::SourceList": "/dev/null",
        "Dir::Etc::SourceParts": str(tmp_path),
        "Dir::State::Lists": str(tmp_path / "lists"),
        "APT::Architecture": "amd64",
    }
    argv = ["apt-get"] + [a for k, v in options.items() for a in ("-o", f"{k}={v}")]
    argv += ["indextargets", "--no-release-info", "--format", INDEXTARGETS_FORMAT]
    result = subprocess.run(argv, capture_output=True, text=True, check=False, env={**os.environ, "LC_ALL": "C"})
    assert result.returncode != 0
    assert APT_CONFLICT in result.stderr.splitlines()
    assert conflict_uri(result.stderr) == TOOLKIT_AMD64
    # Without the collection's file apt reads the guide's list, and there is nothing to repair.
    (tmp_path / "nvidia-container-toolkit.sources").unlink()
    clean = subprocess.run(argv, capture_output=True, text=True, check=False, env={**os.environ, "LC_ALL": "C"})
    assert clean.returncode == 0, clean.stderr
    assert conflict_uri(clean.stderr) == ""


def _repository_task(name_part: str) -> dict:
    return next(t for t in _tasks("repository.yml") if name_part in str(t.get("name")))


def test_the_conflict_is_read_in_a_locale_conflict_uri_understands():
    german = "\n".join(lines("apt-signed-by-conflict-stderr-de.txt"))
    assert "Widersprüchliche Werte gesetzt für Option Signed-By" in german
    env = _repository_task("List the apt sources the host already has").get("environment") or {}
    # gettext ignores LANGUAGE only in the C/POSIX locale: under LC_ALL=C.UTF-8 a host's LANGUAGE=de still
    # translates apt (research §13), so C.UTF-8 counts only with LANGUAGE pinned as well.
    untranslated = str(env.get("LC_ALL")) in ("C", "POSIX") or (
        str(env.get("LC_ALL")).lower() in ("c.utf-8", "c.utf8")
        and str(env.get("LANGUAGE")) in ("C", "C.UTF-8", "C.utf8")
    )
    assert untranslated or conflict_uri(german) == TOOLKIT_AMD64


def test_another_uri_or_suite_is_written():
    ubuntu = cuda_repository("Ubuntu", "24", "x86_64")
    assert apt_source_plan(ubuntu, lines("indextargets-cuda-keyring.txt"))["write"]
    # The same URI with a suite is not the flat repository.
    suite = mirror_repository("apt", CUDA_DEBIAN12, "bookworm", ["main"], "")
    assert apt_source_plan(suite, lines("indextargets-cuda-keyring.txt"))["write"]
    assert apt_source_plan(ubuntu, [])["write"]


def test_a_file_mirror_the_host_has_is_reused():
    repo = mirror_repository("apt", "file:///srv/mirror/nvidia", "/", [], "")
    plan = apt_source_plan(repo, lines("indextargets-file-mirror.txt"))
    assert plan["reused"] == "/etc/apt/sources.list.d/local-mirror.list"


def test_debian_nonfree_and_dnf_are_never_reused():
    debian = debian_nonfree(
        repository("distro", "Debian", "12", "x86_64", {"codename": "bookworm"}), lines("indextargets-cuda-keyring.txt")
    )
    assert apt_source_plan(debian, lines("indextargets-cuda-keyring.txt")) == {
        "write": True,
        "path": "/etc/apt/sources.list.d/debian-nonfree.sources",
        "reused": "",
    }
    assert not apt_source_plan(cuda_repository("Rocky", "9", "x86_64"), [])["write"]
    assert not apt_source_plan({"kind": "none"}, lines("indextargets-cuda-keyring.txt"))["write"]


def test_a_reused_source_must_carry_the_components_asked_for():
    # A local_mirror (layout distro) of the host's own Debian archive asks for contrib/non-free; the
    # installer's sources.list has main and non-free-firmware only: the source is written.
    host = lines("indextargets-debian12-sources-list.txt")
    repo = mirror_repository(
        "apt", "http://deb.debian.org/debian", "bookworm", ["contrib", "non-free", "non-free-firmware"], ""
    )
    assert apt_source_plan(repo, host) == {"write": True, "path": own_source_path(repo["name"]), "reused": ""}
    # Asking only for what the host's file carries reuses it.
    have = mirror_repository("apt", "http://deb.debian.org/debian/", "bookworm", ["main", "non-free-firmware"], "")
    assert apt_source_plan(have, host) == {
        "write": False,
        "path": own_source_path(have["name"]),
        "reused": "/etc/apt/sources.list",
    }


# --- Debian non-free on the host's own mirrors ----------------------------------------------------


def test_debian_nonfree_resolves_on_the_real_deb822_host():
    spec = repository("distro", "Debian", "12", "x86_64", {"codename": "bookworm", "variable": "nvidia_driver_source"})
    spec = {**spec, "variable": "nvidia_driver_source"}
    repo = debian_nonfree(spec, lines("indextargets-cuda-keyring.txt"))
    assert repo["kind"] == "apt-debian"
    # The host has main only: every group gets all three components.
    nonfree = ["contrib", "non-free", "non-free-firmware"]
    assert repo["groups"] == [
        {"uris": ["http://deb.debian.org/debian"], "suites": ["bookworm", "bookworm-updates"], "components": nonfree},
        {"uris": ["http://deb.debian.org/debian-security"], "suites": ["bookworm-security"], "components": nonfree},
    ]
    assert repo["components"] == nonfree
    assert repo["variable"] == "nvidia_driver_source"


def test_debian_nonfree_on_the_installer_sources_list_leaves_docker_alone():
    repo = debian_nonfree(
        repository("distro", "Debian", "12", "x86_64", {"codename": "bookworm"}),
        lines("indextargets-debian12-sources-list.txt"),
    )
    # The installer's sources.list already has non-free-firmware on every Debian line: only contrib and
    # non-free are added.
    assert repo["groups"] == [
        {
            "uris": ["http://deb.debian.org/debian"],
            "suites": ["bookworm", "bookworm-updates"],
            "components": ["contrib", "non-free"],
        },
        {
            "uris": ["http://security.debian.org/debian-security"],
            "suites": ["bookworm-security"],
            "components": ["contrib", "non-free"],
        },
    ]


def test_debian_nonfree_does_not_repeat_a_component_the_host_has():
    # Debian 12's installer writes "main non-free-firmware"; repeating a component makes apt warn on every
    # run "Target Packages (non-free-firmware/binary-amd64/Packages) is configured multiple times".
    host = lines("indextargets-debian12-sources-list.txt")
    repo = debian_nonfree(repository("distro", "Debian", "12", "x86_64", {"codename": "bookworm"}), host)
    have = {(r["uri"], r["suite"], r["component"]) for r in parse_indextargets(host)}
    assert repo["groups"]
    for group in repo["groups"]:
        components = group["components"]
        for uri in group["uris"]:
            for suite in group["suites"]:
                repeated = [c for c in components if (normal_uri(uri), suite, c) in have]
                assert repeated == [], (uri, suite)


def _with_components(host: list[str], added: list[str], only: str = "") -> list[str]:
    """``host`` (indextargets lines) as if each Debian line also listed ``added`` (apt prints one line per
    component), on the lines whose URI contains ``only``."""
    out = list(host)
    for line in host:
        entry, uri, suite, component = line.split("|")
        if component == "main" and only in uri:
            out += [f"{entry}|{uri}|{suite}|{c}" for c in added]
    return out


def test_debian_nonfree_drops_a_group_whose_components_the_host_has():
    # The installer's sources.list with "main contrib non-free non-free-firmware" on every line (the real
    # capture, plus the lines apt prints for the two components added).
    host = _with_components(lines("indextargets-debian12-sources-list.txt"), ["contrib", "non-free"])
    spec = repository("distro", "Debian", "12", "x86_64", {"codename": "bookworm"})
    repo = debian_nonfree(spec, host)
    assert repo["groups"] == []
    # Nothing to write, and the collection's own file (if an earlier run wrote one) goes.
    assert apt_source_plan(repo, host) == {
        "write": False,
        "path": "/etc/apt/sources.list.d/debian-nonfree.sources",
        "reused": "",
    }
    # Only the security archive lacks them: only its group is written.
    partial = _with_components(lines("indextargets-debian12-sources-list.txt"), ["contrib", "non-free"], "deb.debian")
    repo = debian_nonfree(spec, partial)
    assert repo["groups"] == [
        {
            "uris": ["http://security.debian.org/debian-security"],
            "suites": ["bookworm-security"],
            "components": ["contrib", "non-free"],
        }
    ]
    assert apt_source_plan(repo, partial)["write"]


def test_debian_nonfree_does_not_count_the_collections_own_file():
    # A second run: the host has the debian-nonfree.sources an earlier run wrote. Its components are not
    # the host's own, so the groups (and the file) stay as they were.
    host = lines("indextargets-cuda-keyring.txt")
    own = [
        line.replace("/etc/apt/sources.list.d/debian.sources:", "/etc/apt/sources.list.d/debian-nonfree.sources:")
        for line in _with_components(host, ["contrib", "non-free", "non-free-firmware"])[len(host) :]
    ]
    spec = repository("distro", "Debian", "12", "x86_64", {"codename": "bookworm"})
    assert debian_nonfree(spec, host + own)["groups"] == debian_nonfree(spec, host)["groups"]
    assert apt_source_plan(debian_nonfree(spec, host + own), host + own)["write"]


def test_debian_nonfree_operator_mirrors_and_errors():
    spec = repository(
        "distro",
        "Debian",
        "12",
        "x86_64",
        {"codename": "bookworm", "distro_mirrors": [{"uri": "http://m/debian/", "suites": ["bookworm"]}]},
    )
    assert debian_nonfree(spec, [])["groups"] == [
        {
            "uris": ["http://m/debian"],
            "suites": ["bookworm"],
            "components": ["contrib", "non-free", "non-free-firmware"],
        }
    ]
    bare = repository("distro", "Debian", "12", "x86_64", {"codename": "bookworm"})
    # Only NVIDIA's flat repository: no Debian archive to add non-free to.
    with pytest.raises(SelectionError, match="no Debian 'bookworm' source is configured.*nvidia_driver_distro_mirrors"):
        debian_nonfree(bare, lines("indextargets-cuda-keyring.txt")[:1])


def test_debian_nonfree_passes_other_repositories_through():
    cuda = cuda_repository("Debian", "12", "x86_64")
    assert debian_nonfree(cuda, []) is cuda
    resolved = {"kind": "apt-debian", "groups": [{"uris": ["u"], "suites": ["s"]}], "components": []}
    assert debian_nonfree(resolved, []) is resolved


# --- one version ----------------------------------------------------------------------------------


def test_installed_versions_from_package_facts():
    facts = {
        "libcuda1": [{"version": "535.261.03-1", "arch": "amd64"}, {"version": "535.261.03-1", "arch": "i386"}],
        "nvidia-driver-cuda": [{"version": "580.95.05", "release": "1.el9", "epoch": 3}],
        "bash": [{"version": "5.2.15-2+b2"}],
    }
    assert installed_versions(facts, ["libcuda1", "nvidia-driver-cuda", "nvidia-smi"]) == {
        "libcuda1": "535.261.03",
        "nvidia-driver-cuda": "580.95.05",
    }
    assert installed_versions({}, ["libcuda1"]) == {}


UBUNTU_580 = driver_selection("Ubuntu", "24", "cuda_repo", "", "580", "open", kernel="6.8.0-49-generic")


def test_fabric_manager_added_to_a_running_node_comes_at_the_drivers_version():
    versioned = UBUNTU_580["versioned"]
    installed = {n: "580.95.05" for n in UBUNTU_580["userspace"] + UBUNTU_580["kernel"]}
    # The repository's newest is 580.105.08: what a bare apt install would plan for every package.
    planned = {n: "580.105.08" for n in versioned}
    assert resolve_target("", versioned, installed, planned) == "580.95.05"
    specs = pinned_specs(UBUNTU_580["fabricmanager"], "apt", versioned, "580.95.05")
    assert specs == ["nvidia-fabricmanager=580.95.05-*", "libnvidia-nscq=580.95.05-*"]


def test_resolve_target_cases():
    versioned = ["a", "b", "c"]
    # The requested version wins (a deliberate upgrade or downgrade).
    assert resolve_target("580.105.08", versioned, {"a": "580.95.05"}, {"a": "580.82.07"}) == "580.105.08"
    # A fresh host: what the package manager plans for the first versioned package it plans.
    assert resolve_target("", versioned, {}, {"a": "580.105.08", "b": "580.82.07"}) == "580.105.08"
    assert resolve_target("", versioned, {}, {"b": "580.82.07"}) == "580.82.07"
    assert resolve_target("", versioned, {}, {}) == ""
    # Installed names outside the versioned set (Debian's nvidia-persistenced) do not count.
    assert resolve_target("", versioned, {"nvidia-persistenced": "535.171.04", "a": "535.261.03"}, {}) == "535.261.03"
    with pytest.raises(InstallError, match=r"several versions \(580.82.07, 580.95.05\).*version variable"):
        resolve_target("", versioned, {"a": "580.95.05", "b": "580.82.07"}, {})
    assert resolve_target("", versioned, {"a": "580.95.05", "b": "580.95.05"}, {"a": "580.105.08"}) == "580.95.05"


def test_same_branch_keeps_only_the_branch_asked_for():
    installed = {"a": "580.95.05", "b": "590.44.01"}
    assert same_branch(installed, "580.") == {"a": "580.95.05"}
    assert same_branch(installed, "590.") == {"b": "590.44.01"}
    # No branch asked for: everything installed counts.
    assert same_branch(installed, "") == installed
    # The prefix is the branch and its dot (nvidia_driver passes "<branch>."): 58 is no prefix of 580.
    assert same_branch({"a": "580.95.05"}, "58.") == {}
    assert same_branch({}, "580.") == {}


def test_a_branch_change_resolves_to_the_new_branch():
    # Installed 580, asked for 590 without a version: the old branch's packages do not hold the target.
    versioned = ["nvidia-utils", "libnvidia-compute"]
    installed = {"nvidia-utils": "580.95.05", "libnvidia-compute": "580.95.05"}
    planned = {"nvidia-utils": "590.44.01", "libnvidia-compute": "590.44.01"}
    assert resolve_target("", versioned, installed, planned) == "580.95.05"
    assert resolve_target("", versioned, same_branch(installed, "590."), planned) == "590.44.01"


def test_the_filters_expose_conflict_uri_and_same_branch():
    from ansible_collections.deepseek.cluster.plugins.filter.nvidia_install import FilterModule

    filters = FilterModule().filters()
    assert filters["nvidia_conflict_uri"](APT_CONFLICT) == TOOLKIT_AMD64
    assert filters["nvidia_same_branch"]({"a": "580.95.05", "b": "590.44.01"}, "580.") == {"a": "580.95.05"}


def test_pinned_specs_apt_and_dnf():
    names = ["nvidia-utils-580", "linux-headers-generic", "nvidia-dkms-580-open"]
    versioned = ["nvidia-utils-580", "nvidia-dkms-580-open"]
    assert pinned_specs(names, "apt", versioned, "580.95.05") == [
        "nvidia-utils-580=580.95.05-*",
        "linux-headers-generic",
        "nvidia-dkms-580-open=580.95.05-*",
    ]
    assert pinned_specs(
        ["kmod-nvidia-open-dkms", "kernel-devel-matched"], "dnf", ["kmod-nvidia-open-dkms"], "580.95.05"
    ) == [
        "kmod-nvidia-open-dkms-580.95.05",
        "kernel-devel-matched",
    ]
    assert pinned_specs(names, "apt", versioned, "") == names


def test_apt_simulate_argv():
    assert apt_simulate_argv(["nvidia-smi=535.261.03-*", "libnccl2=*+cuda13.0", "linux-headers-amd64"]) == [
        "apt-get",
        "install",
        "--simulate",
        "--no-install-recommends",
        "--allow-change-held-packages",
        "--allow-downgrades",
        "nvidia-smi=535.261.03-*",
        "libnccl2",
        "linux-headers-amd64",
    ]


def test_simulation_problems():
    versioned = ["nvidia-utils-580", "nvidia-fabricmanager"]
    planned = {"nvidia-fabricmanager": "580.105.08"}
    installed = {"nvidia-utils-580": "580.95.05"}
    assert simulation_problems(planned, installed, versioned, "580.95.05") == [
        "nvidia-fabricmanager would be at 580.105.08, not 580.95.05"
    ]
    assert simulation_problems({"nvidia-fabricmanager": "580.95.05"}, installed, versioned, "580.95.05") == []
    assert simulation_problems(planned, {"nvidia-utils-580": "580.82.07"}, versioned, "") == []
    assert simulation_problems({}, {"nvidia-utils-580": "580.82.07"}, versioned, "580.95.05") == [
        "nvidia-utils-580 would be at 580.82.07, not 580.95.05"
    ]


# --- real apt simulations: Debian 12's own packages on a fresh host ---------------------------------


def test_real_simulation_debian12_proprietary_resolves_to_the_security_release():
    sel = driver_selection("Debian", "12", "distro", "", "535", "proprietary", kernel="")
    planned = apt_simulation_versions(lines("apt-simulate-debian12-proprietary.txt"))
    target = resolve_target("", sel["versioned"], {}, planned)
    assert target == "535.309.01"  # bookworm-security's nvidia-graphics-drivers
    assert simulation_problems(planned, {}, sel["versioned"], target) == []
    # Debian's nvidia-persistenced follows its own version (research §6b).
    assert planned["nvidia-persistenced"] == "535.171.04"


def test_real_simulation_debian12_open_has_no_plan():
    # bookworm-security updated nvidia-graphics-drivers to 535.309.01 but not nvidia-open-gpu-kernel-modules
    # (535.261.03): apt cannot resolve the bare names, so the probe plans nothing and the flow stops at the
    # dry run, asking for nvidia_driver_version.
    sel = driver_selection("Debian", "12", "distro", "", "535", "open", kernel="")
    planned = apt_simulation_versions(lines("apt-simulate-debian12-open.txt"))
    assert resolve_target("", sel["versioned"], {}, planned) == ""
    assert "exit 100" in (FACTS / "apt-simulate-debian12-open.txt").read_text().splitlines()[0]


def _exact_dependencies_apt_moved(name: str) -> set[str]:
    """Names apt reports as 'Depends: X (= V) but W is to be installed' in a failed simulation."""
    found = set()
    for line in lines(name):
        words = line.replace(":", " ").split()
        if "Depends" in words and "(=" in words and "but" in words:
            found.add(words[words.index("Depends") + 1])
    return found


def test_pinning_debian12_to_a_version_pins_its_exact_dependencies_too():
    # nvidia_driver_version=535.261.03 is what the flow asks for when the open modules cannot follow the
    # security update; apt takes the candidate (535.309.01) of every exact dependency left unpinned.
    sel = driver_selection("Debian", "12", "distro", "", "535", "open", version="535.261.03", kernel="")
    install = sel["userspace"] + sel["kernel"] + sel["headers"]
    specs = pinned_specs(install, "apt", sel["versioned"], "535.261.03")
    moved = _exact_dependencies_apt_moved("apt-simulate-debian12-open-pinned.txt")
    assert moved == {"nvidia-alternative", "libnvidia-ptxjitcompiler1", "libnvidia-pkcs11-openssl3"}
    assert {f"{n}=535.261.03-*" for n in moved} <= set(specs)
    # nvidia-persistenced takes libnvidia-cfg1-any, which nvidia-tesla-470's library also provides: pinned
    # so that apt does not pick that one.
    assert "libnvidia-cfg1=535.261.03-*" in specs
    # nvidia-persistenced has its own version line (research §6b): installed, never pinned.
    assert "nvidia-persistenced" in specs


def test_pinning_debian12_proprietary_to_a_version_pins_its_exact_dependencies_too():
    sel = driver_selection("Debian", "12", "distro", "", "535", "proprietary", version="535.261.03", kernel="")
    specs = pinned_specs(sel["userspace"] + sel["kernel"] + sel["headers"], "apt", sel["versioned"], "535.261.03")
    moved = _exact_dependencies_apt_moved("apt-simulate-debian12-open-pinned.txt")
    # The proprietary set installs the packages that carry those dependencies ...
    assert {"libcuda1", "libnvidia-ml1", "nvidia-smi"} <= set(sel["userspace"])
    # ... and so needs what they depend on at the same version.
    assert {f"{n}=535.261.03-*" for n in moved} <= set(specs)


# --- dnf ------------------------------------------------------------------------------------------

# A RECONSTRUCTION, not a capture: `dnf -q module list --enabled nvidia-driver` on RHEL 9 (dnf4) laid out
# as dnf/module/module_base.py prints it (research §9): the repository's name, the column header, one row
# per stream with [e] (or [d][e] when the default is enabled), and the hint line.
DNF_MODULE_LIST_ENABLED = """cuda-rhel9-x86_64
Name              Stream            Profiles                         Summary
nvidia-driver     575-dkms [e]      default [d] [i], fm, ks, src     Nvidia driver for 575-dkms branch

Hint: [d]efault, [e]nabled, [x]disabled, [i]nstalled
"""


def test_dnf_enabled_streams_from_module_list():
    assert dnf_enabled_streams(DNF_MODULE_LIST_ENABLED, "nvidia-driver") == ["575-dkms"]
    default_enabled = DNF_MODULE_LIST_ENABLED.replace("575-dkms [e]   ", "580-open [d][e]")
    assert dnf_enabled_streams(default_enabled, "nvidia-driver") == ["580-open"]
    # Two repositories listing the same module: one stream.
    assert dnf_enabled_streams(DNF_MODULE_LIST_ENABLED * 2, "nvidia-driver") == ["575-dkms"]
    # Nothing enabled: dnf says "Error: No matching Modules to list" (exit 1).
    assert dnf_enabled_streams("Error: No matching Modules to list\n", "nvidia-driver") == []
    assert dnf_enabled_streams(DNF_MODULE_LIST_ENABLED, "nvidia") == []


def test_dnf_module_commands_reset_before_another_stream():
    # research §9: dnf refuses to switch an enabled stream ("It is not possible to switch enabled streams
    # of a module unless explicitly enabled via configuration option module_stream_switch"); reset first.
    enabled = dnf_enabled_streams(DNF_MODULE_LIST_ENABLED, "nvidia-driver")
    assert dnf_module_commands("nvidia-driver:580-open", enabled) == [
        ["dnf", "module", "reset", "-y", "nvidia-driver"],
        ["dnf", "module", "enable", "-y", "nvidia-driver:580-open"],
    ]
    assert dnf_module_commands("nvidia-driver:575-dkms", enabled) == []
    assert dnf_module_commands("nvidia-driver:580-open", []) == [
        ["dnf", "module", "enable", "-y", "nvidia-driver:580-open"]
    ]
    assert dnf_module_commands("", enabled) == []


def test_dnf_command_lines():
    assert dnf_repoquery_argv("nvidia-driver-cuda") == [
        "dnf",
        "-q",
        "repoquery",
        "--latest-limit=1",
        "--queryformat=%{version}",
        "nvidia-driver-cuda",
    ]
    assert dnf_dry_run_argv(["nvidia-driver-cuda-580.95.05", "kernel-devel-matched"]) == [
        "dnf",
        "install",
        "--assumeno",
        "--disableplugin=versionlock",
        "nvidia-driver-cuda-580.95.05",
        "kernel-devel-matched",
    ]


@pytest.mark.parametrize(
    ("rc", "output", "failed"),
    [
        # dnf/cli/cli.py: --assumeno raises CliError("Operation aborted."); main.py resolving() logs it
        # without "Error:" and returns 1: a transaction that resolved.
        (1, "Dependencies resolved.\n...\nOperation aborted.\n", False),
        (0, "Dependencies resolved.\nNothing to do.\nComplete!\n", False),
        # main.py ex_Error: "Error: %s" and exit 1 for a depsolve or match failure.
        (1, "Error: \n Problem: conflicting requests\n  - nothing provides libnvidia-ml = 3:580.95.05\n", True),
        (
            1,
            "No match for argument: nvidia-fabricmanager-580.95.05\n"
            "Error: Unable to find a match: nvidia-fabricmanager-580.95.05\n",
            True,
        ),
        (200, "", True),
    ],
)
def test_dnf_dry_run_failed(rc, output, failed):
    assert dnf_dry_run_failed(rc, output) is failed


def test_locks_to_release():
    installed = {"nvidia-driver-cuda": "580.95.05", "kmod-nvidia-open-dkms": "580.82.07"}
    versioned = ["nvidia-driver-cuda", "kmod-nvidia-open-dkms", "nvidia-fabricmanager"]
    assert locks_to_release(installed, versioned, "580.95.05") == ["kmod-nvidia-open-dkms"]
    assert locks_to_release(installed, versioned, "580.105.08") == ["nvidia-driver-cuda", "kmod-nvidia-open-dkms"]
    assert locks_to_release(installed, versioned, "") == []


# --- the flow's dry runs ask what the install will do ------------------------------------------------


def _tasks(name: str) -> list[dict]:
    """Every task of a tasks file, blocks and rescues flattened, in order."""
    out = []

    def walk(items):
        for task in items or []:
            out.append(task)
            walk(task.get("block"))
            walk(task.get("rescue"))

    walk(yaml.safe_load((FLOW / name).read_text()))
    return out


def _install_task(name: str, module: str) -> dict:
    return next(
        t[module] for t in _tasks(name) if module in t and "__nvidia_packages_specs" in str(t[module].get("name"))
    )


def test_apt_dry_run_flags_match_the_install():
    install = _install_task("apt.yml", "ansible.builtin.apt")
    argv = apt_simulate_argv(["x"])
    assert ("--no-install-recommends" in argv) == (install.get("install_recommends") is False)
    assert ("--allow-change-held-packages" in argv) == bool(install.get("allow_change_held_packages"))
    assert ("--allow-downgrades" in argv) == bool(install.get("allow_downgrade"))


def test_dnf_dry_run_allowerasing_matches_the_install():
    # A transaction that must erase a package (a kmod flavour switch, nvidia-fabric-manager ->
    # nvidia-fabricmanager) must fail the dry run when the install would fail it.
    install = _install_task("dnf.yml", "ansible.builtin.dnf")
    assert ("--allowerasing" in dnf_dry_run_argv(["x"])) == bool(install.get("allowerasing"))


def test_dnf_dry_run_is_not_blocked_by_the_locks_the_flow_releases():
    # The versionlocks are released after the dry run (dnf.yml), and dnf-plugins-core versionlock.py
    # excludes every other version of a locked name whenever dnf resolves (research §9).
    tasks = _tasks("dnf.yml")
    dry = next(i for i, t in enumerate(tasks) if "nvidia_dnf_dry_run_argv" in str(t.get("ansible.builtin.command")))
    release = next(
        i for i, t in enumerate(tasks) if t.get("community.general.dnf_versionlock", {}).get("state") == "absent"
    )
    argv = dnf_dry_run_argv(["nvidia-driver-cuda-580.105.08"])
    assert release < dry or "--disableplugin=versionlock" in argv
