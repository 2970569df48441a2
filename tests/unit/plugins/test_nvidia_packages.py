"""Repository and package selection for every supported OS and source, including the unreachable ones.

Sources of the expectations (not the code's own output):
- tests/fixtures/nvidia-facts/SOURCES.md sections 1-12 (cited as "research §N");
- tests/fixtures/nvidia-facts/ubuntu-*-candidates.* and debian12-kernel-metapackages-candidates.tsv:
  apt-cache answers of the real Ubuntu and Debian archives (how they were made is their first line).
"""

import re
from pathlib import Path

import pytest
from ansible_collections.deepseek.cluster.plugins.module_utils.nvidia_packages import (
    SelectionError,
    apt_simulation_versions,
    container_toolkit_selection,
    cuda_repository,
    cuda_selection,
    debian_nonfree_repository,
    driver_selection,
    installed_driver_branch,
    kernel_flavour,
    mirror_name,
    mirror_repository,
    nvcc_release,
    package_name,
    repository,
    upstream_version,
)
from conftest import FIXTURES, NVIDIA_FACTS

KERNEL = "6.8.0-49-generic"
FACTS = NVIDIA_FACTS
UBUNTU_RELEASE = {"22": "jammy", "24": "noble"}


def _data_lines(path: Path) -> list[str]:
    """Lines of a fixture without its '#' comment lines."""
    return [line for line in path.read_text().splitlines() if not line.startswith("#")]


def _candidates(name: str) -> dict[tuple[str, str], str]:
    """(release, package) -> candidate version apt reported (a *-candidates.tsv fixture)."""
    rows = [line.split("\t") for line in _data_lines(FACTS / name) if line]
    return {(release, package): candidate for release, package, candidate in rows}


UBUNTU_META = _candidates("ubuntu-kernel-metapackages-candidates.tsv")
DEBIAN_META = _candidates("debian12-kernel-metapackages-candidates.tsv")


# --- Debian 12's own packages (bookworm contrib/non-free) ---------------------------------------


def test_debian12_distro_r535_proprietary():
    sel = driver_selection("Debian", "12", "distro", "", "535", "proprietary", kernel="6.1.0-27-amd64")
    assert sel["family"] == "apt"
    assert sel["pre_install"] == []
    # The driver's libraries depend on these at one exact version (apt-simulate-debian12-open-pinned.txt):
    # named, so the flow pins them with the rest, whichever module flavour.
    assert sel["userspace"] == [
        "nvidia-smi",
        "libcuda1",
        "libnvidia-ml1",
        "nvidia-persistenced",
        "nvidia-alternative",
        "libnvidia-ptxjitcompiler1",
        "libnvidia-pkcs11-openssl3",
        "libnvidia-cfg1",
    ]
    assert sel["kernel"] == ["nvidia-kernel-dkms", "firmware-nvidia-gsp"]
    # The running kernel's headers now, and the metapackage that brings the next kernel's headers
    # (research §11: Debian's linux-headers-<flavour>).
    assert sel["headers"] == ["linux-headers-6.1.0-27-amd64", "linux-headers-amd64"]
    assert sel["dkms"]
    assert not sel["fabricmanager_available"]
    assert sel["fabricmanager"] == []
    assert sel["dnf_module"] == sel["dnf_module_name"] == ""


def test_debian12_distro_open_bare_names_and_what_is_versioned():
    sel = driver_selection("Debian", "12", "distro", "", "535", "open", version="535.261.03")
    # Bare names: the shared install flow pins them (nvidia_install.pinned_specs).
    assert sel["kernel"] == ["nvidia-open-kernel-dkms", "firmware-nvidia-gsp"]
    assert not any("=" in n or "*" in n for n in sel["userspace"] + sel["kernel"] + sel["headers"])
    # research §6(b): Debian's nvidia-persistenced has its own version line (535.171.04-1~deb12u1), so
    # it is installed but never pinned to the driver's version.
    assert "nvidia-persistenced" in sel["userspace"]
    assert "nvidia-persistenced" not in sel["versioned"]
    # contrib's open modules lag behind the security updates of the user space: pinning the set to the
    # modules' version pins what libcuda1, libnvidia-ml1 and nvidia-smi depend on at one exact version
    # (apt-simulate-debian12-open-pinned.txt), and libnvidia-cfg1, which nvidia-persistenced takes through
    # libnvidia-cfg1-any (Debian's nvidia-graphics-drivers debian/control.in pre-selects it for that).
    assert sel["versioned"] == [
        "nvidia-smi",
        "libcuda1",
        "libnvidia-ml1",
        "nvidia-alternative",
        "libnvidia-ptxjitcompiler1",
        "libnvidia-pkcs11-openssl3",
        "libnvidia-cfg1",
        "nvidia-open-kernel-dkms",
        "firmware-nvidia-gsp",
    ]
    assert set(sel["versioned"]) - set(sel["kernel"]) <= set(sel["userspace"])


@pytest.mark.parametrize(
    ("kernel", "cpu", "headers", "metapackages"),
    [
        # research §11: Debian's headers metapackages; the candidates fixture shows each exists.
        (
            "6.1.0-27-amd64",
            "x86_64",
            ["linux-headers-6.1.0-27-amd64", "linux-headers-amd64"],
            ["linux-image-amd64", "linux-headers-amd64"],
        ),
        (
            "6.1.0-27-cloud-amd64",
            "x86_64",
            ["linux-headers-6.1.0-27-cloud-amd64", "linux-headers-cloud-amd64"],
            ["linux-image-cloud-amd64", "linux-headers-cloud-amd64"],
        ),
        # A container has no kernel of its own: only the metapackage that follows the distribution's.
        ("", "x86_64", ["linux-headers-amd64"], ["linux-image-amd64", "linux-headers-amd64"]),
        ("", "aarch64", ["linux-headers-arm64"], ["linux-image-arm64", "linux-headers-arm64"]),
    ],
)
@pytest.mark.parametrize("source", ["distro", "cuda_repo"])
def test_debian12_headers_metapackage_follows_the_kernel_flavour(source, kernel, cpu, headers, metapackages):
    sel = driver_selection(
        "Debian", "12", source, "", "535" if source == "distro" else "580", "open", kernel=kernel, cpu_arch=cpu
    )
    assert sel["headers"] == headers
    assert sel["kernel_metapackages"] == metapackages
    for name in headers + metapackages:
        if name.endswith("amd64") and not name.startswith("linux-headers-6"):
            assert DEBIAN_META[("bookworm", name)] not in ("", "(none)"), name


def test_debian12_distro_refuses_r580_and_names_the_way_out():
    with pytest.raises(SelectionError, match=r"nvidia_driver_branch 580 is not packaged by Debian 12 .*535.*cuda_repo"):
        driver_selection("Debian", "12", "distro", "", "580", "open")


# --- Ubuntu's own packages: -server branches, precompiled modules ------------------------------


@pytest.mark.parametrize(
    ("major", "kernel", "flavour"),
    [
        ("22", "5.15.0-130-generic", "generic"),
        # research §11: a generic kernel of another series than the release's GA kernel is the HWE stack,
        # whose metapackages carry -hwe-<release> (22.04 GA 5.15, HWE 6.8; 24.04 GA 6.8, HWE 6.11/6.14/...).
        ("22", "6.8.0-52-generic", "generic-hwe-22.04"),
        ("24", "6.8.0-49-generic", "generic"),
        ("24", "6.11.0-29-generic", "generic-hwe-24.04"),
        ("24", "6.14.0-37-generic", "generic-hwe-24.04"),
        ("22", "6.8.0-1021-aws", "aws"),
        ("24", "6.14.0-1015-aws", "aws"),
        # NVIDIA's kernels: linux-nvidia follows the GA series; another series has its own metapackage
        # (candidates fixture: jammy linux-nvidia-6.8, noble linux-nvidia-hwe-24.04).
        ("22", "5.15.0-1116-nvidia", "nvidia"),
        ("22", "6.8.0-1068-nvidia", "nvidia-6.8"),
        ("24", "6.8.0-1068-nvidia", "nvidia"),
        ("24", "7.0.0-1025-nvidia", "nvidia-hwe-24.04"),
    ],
)
@pytest.mark.parametrize("modules", ["open", "proprietary"])
def test_ubuntu_distro_precompiled_modules_and_kernel_following_metapackage(major, kernel, flavour, modules):
    sel = driver_selection("Ubuntu", major, "distro", "", "580", modules, kernel=kernel)
    suffix = "580-server-open" if modules == "open" else "580-server"
    # research §11 (ubuntu-drivers-common detect.py): the running kernel's ABI package and the
    # metapackage linux-modules-nvidia-<flavour>-<kernel-meta-suffix>.
    assert sel["kernel"] == [f"linux-modules-nvidia-{suffix}-{kernel}", f"linux-modules-nvidia-{suffix}-{flavour}"]
    assert sel["kernel_metapackages"] == [f"linux-{flavour}", f"linux-image-{flavour}", f"linux-headers-{flavour}"]
    assert sel["headers"] == []  # precompiled: nothing is built on the host
    assert not sel["dkms"]
    # Every metapackage the selection names exists in the real archive (candidates fixture).
    for name in [sel["kernel"][1], *sel["kernel_metapackages"]]:
        assert UBUNTU_META[(UBUNTU_RELEASE[major], name)] not in ("", "(none)"), name


@pytest.mark.parametrize(
    ("major", "kernel"),
    [
        # Kernels of the series each metapackage currently follows in the archive (candidates fixture).
        ("22", "5.15.0-204-generic"),
        ("22", "6.8.0-149-generic"),
        ("24", "6.8.0-151-generic"),
        ("24", "7.0.0-44-generic"),
        ("22", "6.8.0-1070-aws"),
        ("24", "7.0.0-1018-aws"),
        ("24", "6.8.0-1068-nvidia"),
        ("22", "5.15.0-1116-nvidia"),
        # NVIDIA's kernel of another series: linux-nvidia-6.8 on 22.04, linux-nvidia-hwe-24.04 on 24.04.
        ("22", "6.8.0-1068-nvidia"),
        ("24", "7.0.0-1025-nvidia"),
    ],
)
def test_the_kernel_following_metapackages_follow_the_running_kernels_series(major, kernel):
    # research §11 (ubuntu-drivers kerneldetection.py): the metapackage is the installed linux-image-*
    # metapackage of the running kernel; its candidate in the archive is of the running kernel's series.
    sel = driver_selection("Ubuntu", major, "distro", "", "580", "open", kernel=kernel)
    release = UBUNTU_RELEASE[major]
    series = ".".join(kernel.split(".")[:2]) + "."
    for name in [sel["kernel"][1], *sel["kernel_metapackages"]]:
        assert UBUNTU_META[(release, name)].startswith(series), (name, UBUNTU_META[(release, name)])


@pytest.mark.parametrize("major", ["22", "24"])
def test_ubuntu_distro_server_branch_names(major):
    sel = driver_selection("Ubuntu", major, "distro", "", "580", "open", kernel=KERNEL)
    assert sel["pre_install"] == []
    assert sel["userspace"] == [
        "nvidia-utils-580-server",
        "libnvidia-compute-580-server",
        "nvidia-compute-utils-580-server",
    ]
    # Ubuntu multiverse: nvidia-fabricmanager-580, libnvidia-nscq-580 (apt-cache policy, jammy and noble).
    assert sel["fabricmanager"] == ["nvidia-fabricmanager-580", "libnvidia-nscq-580"]
    # The module packages follow the kernel ABI, not the driver's version: not versioned.
    assert sel["versioned"] == sel["userspace"] + sel["fabricmanager"]


def test_ubuntu_container_has_only_the_metapackage():
    sel = driver_selection("Ubuntu", "24", "distro", "", "580", "open", kernel="")
    assert sel["kernel"] == ["linux-modules-nvidia-580-server-open-generic"]
    assert sel["kernel_metapackages"] == ["linux-generic", "linux-image-generic", "linux-headers-generic"]


def test_kernel_flavour():
    assert kernel_flavour("6.8.0-45-generic") == "generic"
    assert kernel_flavour("6.1.0-27-cloud-amd64") == "cloud-amd64"
    assert kernel_flavour("6.8.0-1021-aws") == "aws"
    assert kernel_flavour("") == ""


def test_ubuntu_transitional_570_is_refused_naming_580():
    # research §11 precedent; the archive (ubuntu-server-branches-candidates.txt): nvidia-utils-570-server
    # 570.211.01 Depends: nvidia-utils-580-server.
    with pytest.raises(SelectionError, match=r"570 is only a transitional package that installs 580"):
        driver_selection("Ubuntu", "24", "distro", "", "570", "proprietary", kernel=KERNEL)


def _transitional_branches() -> list[tuple[str, str, str]]:
    """(release, branch, final branch) for every -server branch whose candidate only depends on another branch.

    From the real archive (ubuntu-server-branches-candidates.txt): nvidia-utils-<b>-server whose
    Depends is nvidia-utils-<other>-server and nothing else; chains (550 -> 570 -> 580) followed.
    """
    release, found = "", {}
    for stanza in re.split(r"\n\s*\n|\n(?=## )", (FACTS / "ubuntu-server-branches-candidates.txt").read_text()):
        for line in stanza.splitlines():
            if line.startswith("## "):
                release = line[3:].strip()
        package = re.search(r"^Package: nvidia-utils-(\d{3})-server$", stanza, re.MULTILINE)
        depends = re.search(r"^Depends: nvidia-utils-(\d{3})-server$", stanza, re.MULTILINE)
        if package and depends:
            found[(release, package.group(1))] = depends.group(1)
    cases = []
    for (rel, branch), target in sorted(found.items()):
        while (rel, target) in found:
            target = found[(rel, target)]
        cases.append((rel, branch, target))
    return cases


# The archive has turned every -server branch but 580 (and 595) into a transitional package: 535, 550
# (-> 570 -> 580), 565, 570, 575 (-> 580) and 590 (-> 595).
@pytest.mark.parametrize(("release", "branch", "final"), _transitional_branches())
def test_every_transitional_server_branch_of_the_archive_is_refused(release, branch, final):
    major = {"jammy": "22", "noble": "24"}[release]
    with pytest.raises(
        SelectionError, match=rf"nvidia_driver_branch {branch} is not packaged by Ubuntu {major}"
    ) as err:
        driver_selection("Ubuntu", major, "distro", "", branch, "open", kernel=KERNEL)
    # The message names the branch the transitional package ends up installing (chains followed).
    assert f"{branch} is only a transitional package that installs {final}" in str(err.value)


def test_the_archive_fixture_has_the_transitional_branches_the_tests_rely_on():
    cases = {(r, b) for r, b, _final in _transitional_branches()}
    assert {("jammy", "570"), ("noble", "570"), ("jammy", "535"), ("noble", "550")} <= cases
    assert ("noble", "580") not in cases


def test_nvlsm_is_added_to_fabric_manager_but_not_versioned():
    plain = driver_selection("Ubuntu", "24", "cuda_repo", "", "580", "open", kernel=KERNEL)
    nvl5 = driver_selection("Ubuntu", "24", "cuda_repo", "", "580", "open", kernel=KERNEL, nvlsm=True)
    assert nvl5["fabricmanager"] == plain["fabricmanager"] + ["nvlsm", "infiniband-diags"]
    assert "nvlsm" not in nvl5["versioned"]
    assert "infiniband-diags" not in nvl5["versioned"]
    # Debian's own packages have no fabric manager: nothing to add NVLSM to.
    assert driver_selection("Debian", "12", "distro", "", "535", "open", nvlsm=True)["fabricmanager"] == []


@pytest.mark.parametrize(
    ("major", "source", "layout"), [("24", "distro", ""), ("22", "distro", ""), ("24", "local_mirror", "distro")]
)
def test_nvlsm_board_with_ubuntus_own_packages_is_refused_naming_cuda_repo(major, source, layout):
    # A Blackwell NVSwitch board needs NVLSM next to fabric manager; Ubuntu's own packages carry fabric
    # manager but not nvlsm: refused before anything is installed, naming the source that has it.
    with pytest.raises(SelectionError, match=r"NVLink subnet manager \(nvlsm\).*nvidia_driver_source=cuda_repo"):
        driver_selection("Ubuntu", major, source, layout, "580", "open", kernel=KERNEL, nvlsm=True)
    # The same board without NVLSM (Hopper NVSwitch) keeps Ubuntu's fabric manager.
    plain = driver_selection("Ubuntu", major, source, layout, "580", "open", kernel=KERNEL)
    assert plain["fabricmanager"] == ["nvidia-fabricmanager-580", "libnvidia-nscq-580"]
    # NVIDIA's repository (or a mirror of its layout) is what the message sends the operator to.
    mirror = driver_selection("Ubuntu", major, "local_mirror", "cuda_repo", "580", "open", kernel=KERNEL, nvlsm=True)
    assert mirror["fabricmanager"][-2:] == ["nvlsm", "infiniband-diags"]


# --- NVIDIA's CUDA repository -------------------------------------------------------------------


def test_ubuntu_cuda_repo_r580_pinning_package_comes_first_and_alone():
    sel = driver_selection("Ubuntu", "24", "cuda_repo", "", "580", "open", kernel=KERNEL)
    # research §7: "install the pinning package prior to installing the driver"; the branch's package
    # when no version is set ("nvidia-driver-pinning-580 - APT driver pinning file for driver branch 580").
    assert sel["pre_install"] == ["nvidia-driver-pinning-580"]
    assert not any(n.startswith("nvidia-driver-pinning") for n in sel["userspace"] + sel["versioned"])
    assert sel["userspace"] == ["nvidia-utils-580", "libnvidia-compute-580", "nvidia-compute-utils-580"]
    assert sel["kernel"] == ["nvidia-dkms-580-open"]
    assert sel["fabricmanager"] == ["nvidia-fabricmanager", "libnvidia-nscq"]
    assert sel["headers"] == [f"linux-headers-{KERNEL}", "linux-headers-generic"]
    assert sel["versioned"] == sel["userspace"] + sel["kernel"] + sel["fabricmanager"]


def test_cuda_repo_pinning_package_of_a_set_version():
    # apt-cache search in NVIDIA's repository (a third-party capture, code index id 54187524998):
    # "nvidia-driver-pinning-580.105.08 - APT driver pinning file for driver version 580.105.08".
    sel = driver_selection("Ubuntu", "24", "cuda_repo", "", "580", "open", version="580.105.08", kernel=KERNEL)
    assert sel["pre_install"] == ["nvidia-driver-pinning-580.105.08"]
    assert driver_selection("Debian", "12", "cuda_repo", "", "580", "open", version="580.95.05")["pre_install"] == [
        "nvidia-driver-pinning-580.95.05"
    ]
    # No pinning package before R580, nor on RHEL (versionlock there), nor for the distributions' own packages.
    assert driver_selection("Ubuntu", "24", "cuda_repo", "", "575", "open", version="575.57.08")["pre_install"] == []
    assert driver_selection("Rocky", "9", "cuda_repo", "", "580", "open", version="580.95.05")["pre_install"] == []
    assert driver_selection("Ubuntu", "24", "distro", "", "580", "open", version="580.95.05")["pre_install"] == []


def test_ubuntu_cuda_repo_headers_follow_the_hwe_kernel():
    sel = driver_selection("Ubuntu", "22", "cuda_repo", "", "580", "open", kernel="6.8.0-52-generic")
    assert sel["headers"] == ["linux-headers-6.8.0-52-generic", "linux-headers-generic-hwe-22.04"]
    assert UBUNTU_META[("jammy", "linux-headers-generic-hwe-22.04")] not in ("", "(none)")
    container = driver_selection("Ubuntu", "24", "cuda_repo", "", "580", "open", kernel="")
    assert container["headers"] == ["linux-headers-generic"]


def test_ubuntu_cuda_repo_r570_fabric_manager_keeps_the_branch_suffix():
    sel = driver_selection("Ubuntu", "22", "cuda_repo", "", "570", "proprietary")
    assert sel["fabricmanager"] == ["nvidia-fabricmanager-570", "libnvidia-nscq-570"]
    assert sel["kernel"] == ["nvidia-dkms-570"]
    assert sel["pre_install"] == []
    assert not any(p.startswith("nvidia-driver-pinning") for p in sel["userspace"])


@pytest.mark.parametrize(("modules", "kmod"), [("open", "nvidia-dkms-open"), ("proprietary", "nvidia-dkms")])
def test_ubuntu_cuda_repo_r590_names_carry_no_branch(modules, kmod):
    # research §16: from R590 NVIDIA's Ubuntu packages drop the branch ("libnvidia-compute-580 ->
    # libnvidia-compute", "nvidia-dkms-580-open -> nvidia-dkms-open"); the pinning package picks the branch.
    sel = driver_selection("Ubuntu", "24", "cuda_repo", "", "590", modules, kernel=KERNEL)
    assert sel["userspace"] == ["nvidia-utils", "libnvidia-compute", "nvidia-compute-utils"]
    assert sel["kernel"] == [kmod]
    assert not any(re.search(r"-5\d\d(-|$)", n) for n in sel["userspace"] + sel["kernel"])
    assert sel["fabricmanager"] == ["nvidia-fabricmanager", "libnvidia-nscq"]  # "no change" in the same table
    # Unbranched names resolve to any branch: only the pinning package, installed first, holds 590.
    assert sel["pre_install"] == ["nvidia-driver-pinning-590"]
    assert sel["versioned"] == sel["userspace"] + sel["kernel"] + sel["fabricmanager"]
    assert sel["headers"] == [f"linux-headers-{KERNEL}", "linux-headers-generic"]
    pinned = driver_selection("Ubuntu", "22", "cuda_repo", "", "590", modules, version="590.44.01", kernel=KERNEL)
    assert pinned["pre_install"] == ["nvidia-driver-pinning-590.44.01"]
    assert pinned["userspace"] == sel["userspace"]


def test_debian12_cuda_repo_names():
    sel = driver_selection("Debian", "12", "cuda_repo", "", "580", "open", kernel="6.1.0-27-amd64")
    assert sel["kernel"] == ["nvidia-kernel-open-dkms"]
    assert sel["pre_install"] == ["nvidia-driver-pinning-580"]
    assert sel["userspace"] == ["nvidia-driver-cuda", "libcuda1", "libnvidia-ml1", "nvidia-persistenced"]
    assert sel["headers"] == ["linux-headers-6.1.0-27-amd64", "linux-headers-amd64"]
    assert driver_selection("Debian", "12", "cuda_repo", "", "580", "proprietary")["kernel"] == ["nvidia-kernel-dkms"]


@pytest.mark.parametrize("dist", ["RedHat", "Rocky", "AlmaLinux"])
def test_rhel9_cuda_repo_module_stream_and_names(dist):
    sel = driver_selection(
        dist, "9", "cuda_repo", "", "580", "open", version="580.95.05", kernel="5.14.0-503.el9.x86_64"
    )
    assert sel["family"] == "dnf"
    assert sel["dnf_module"] == "nvidia-driver:580-open"
    assert sel["dnf_module_name"] == "nvidia-driver"
    assert sel["kernel"] == ["kmod-nvidia-open-dkms"]
    # kernel-devel-matched pulls the kernel-devel of every installed kernel (NVIDIA's RHEL 9 steps).
    assert sel["headers"] == ["kernel-devel-matched", "kernel-headers"]
    assert sel["pre_install"] == []  # dnf pins with versionlock (research §7), no pinning package
    assert sel["kernel_metapackages"] == []
    assert sel["userspace"] == ["nvidia-driver-cuda", "nvidia-driver-cuda-libs", "libnvidia-ml", "nvidia-persistenced"]


@pytest.mark.parametrize(
    ("branch", "fabric"),
    [
        # Before R580 NVIDIA's RHEL names are nvidia-fabric-manager and libnvidia-nscq-<branch>; from R580
        # nvidia-fabricmanager and libnvidia-nscq (gpu-driver-container rhel9/install.sh).
        ("570", ["nvidia-fabric-manager", "libnvidia-nscq-570"]),
        ("575", ["nvidia-fabric-manager", "libnvidia-nscq-575"]),
        ("580", ["nvidia-fabricmanager", "libnvidia-nscq"]),
    ],
)
def test_rhel9_fabric_manager_names_before_and_from_r580(branch, fabric):
    sel = driver_selection("Rocky", "9", "cuda_repo", "", branch, "open")
    assert sel["fabricmanager"] == fabric
    assert sel["versioned"][-2:] == fabric


def test_rhel9_cuda_repo_before_r560_is_refused_naming_560():
    # research §16: NVIDIA's RHEL packages named the NVML library nvidia-driver-NVML up to R550
    # (gpu-driver-container e087e09: "After driver version 550, the nvidia-driver-NVML package has been
    # replaced by libnvidia-ml"); the selection installs libnvidia-ml.
    with pytest.raises(SelectionError, match=r"nvidia_driver_branch 550\b.*nvidia_driver_branch 560 or newer"):
        driver_selection("Rocky", "9", "cuda_repo", "", "550", "open")
    with pytest.raises(SelectionError, match=r"nvidia_driver_branch 535: .*NVML.*560 or newer"):
        driver_selection("RedHat", "9", "local_mirror", "cuda_repo", "535", "proprietary")


@pytest.mark.parametrize("branch", ["560", "570", "580"])
def test_rhel9_cuda_repo_from_r560_installs_libnvidia_ml(branch):
    sel = driver_selection("Rocky", "9", "cuda_repo", "", branch, "open")
    assert "libnvidia-ml" in sel["userspace"]
    assert "nvidia-driver-NVML" not in sel["versioned"]
    assert sel["dnf_module"] == f"nvidia-driver:{branch}-open"


def test_rhel9_proprietary_stream():
    assert (
        driver_selection("Rocky", "9", "cuda_repo", "", "570", "proprietary")["dnf_module"] == "nvidia-driver:570-dkms"
    )
    assert driver_selection("Rocky", "9", "cuda_repo", "", "570", "proprietary")["kernel"] == [
        "kmod-nvidia-latest-dkms"
    ]


def test_rhel_distro_is_refused():
    with pytest.raises(SelectionError, match="does not package the NVIDIA driver; use nvidia_driver_source=cuda_repo"):
        driver_selection("RedHat", "9", "distro", "", "580", "open")


def test_local_mirror_takes_the_layout_it_mirrors():
    mirror = driver_selection("Debian", "12", "local_mirror", "distro", "535", "proprietary")
    assert mirror["userspace"] == driver_selection("Debian", "12", "distro", "", "535", "proprietary")["userspace"]
    cuda = driver_selection("Ubuntu", "24", "local_mirror", "cuda_repo", "580", "open")
    assert cuda["pre_install"] == ["nvidia-driver-pinning-580"]
    with pytest.raises(SelectionError, match="nvidia_driver_local_mirror_layout is 'rpm'"):
        driver_selection("Debian", "12", "local_mirror", "rpm", "535", "open")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("Debian", "12", "ppa", "", "535", "open"),
            "nvidia_driver_source is 'ppa'; allowed values: distro, cuda_repo",
        ),
        (("Debian", "12", "distro", "", "535", "auto"), "nvidia_driver_kernel_modules is 'auto'"),
        (("Debian", "12", "distro", "", "R580", "open"), "nvidia_driver_branch is 'R580'"),
        (("Ubuntu", "20", "distro", "", "535", "open"), "Ubuntu 20 is not supported"),
    ],
)
def test_bad_input_names_the_variable(args, message):
    with pytest.raises(SelectionError, match=message):
        driver_selection(*args)


def test_version_must_belong_to_the_branch():
    with pytest.raises(
        SelectionError, match="nvidia_driver_version '570.1.2' is not a release of nvidia_driver_branch 580"
    ):
        driver_selection("Ubuntu", "24", "distro", "", "580", "open", version="570.1.2")
    assert driver_selection("Ubuntu", "24", "distro", "", "580", "open", version="580.95.05")["family"] == "apt"


# --- repositories -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dist", "major", "arch", "url"),
    [
        ("Debian", "12", "x86_64", "https://developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64/"),
        ("Ubuntu", "22", "x86_64", "https://developer.download.nvidia.com/compute/cuda/repos/ubuntu2204/x86_64/"),
        ("Ubuntu", "24", "aarch64", "https://developer.download.nvidia.com/compute/cuda/repos/ubuntu2404/sbsa/"),
    ],
)
def test_cuda_repository_apt(dist, major, arch, url):
    repo = cuda_repository(dist, major, arch)
    assert repo["kind"] == "apt"
    assert repo["name"] == "cuda"
    assert repo["uris"] == [url]
    assert repo["suites"] == ["/"]
    assert repo["components"] == []
    assert repo["signed_by"] == url + "3bf863cc.pub"


# research §7: NVIDIA's cuda-<distro>.pin, installed as /etc/apt/preferences.d/cuda-repository-pin-600.
NVIDIA_CUDA_PIN = """Package: nsight-compute
Pin: origin *ubuntu.com*
Pin-Priority: -1

Package: nsight-systems
Pin: origin *ubuntu.com*
Pin-Priority: -1

Package: *
Pin: release l=NVIDIA CUDA
Pin-Priority: 600
"""


@pytest.mark.parametrize("major", ["22", "24"])
def test_ubuntu_cuda_repository_carries_nvidias_pin(major):
    prefs = cuda_repository("Ubuntu", major, "x86_64")["preferences"]
    assert prefs["name"] == "cuda-repository-pin-600"
    assert prefs["content"] == NVIDIA_CUDA_PIN


def test_only_ubuntu_gets_the_cuda_pin():
    assert "preferences" not in cuda_repository("Debian", "12", "x86_64")
    assert "preferences" not in cuda_repository("Rocky", "9", "x86_64")


def test_cuda_repository_rhel9():
    repo = cuda_repository("Rocky", "9", "x86_64")
    assert repo["kind"] == "dnf"
    assert repo["name"] == "cuda-rhel9-x86_64"
    assert repo["baseurl"] == "https://developer.download.nvidia.com/compute/cuda/repos/rhel9/x86_64"
    assert repo["gpgkey"] == "https://developer.download.nvidia.com/compute/cuda/repos/rhel9/x86_64/D42D0685.pub"
    assert repo["gpgcheck"]
    assert cuda_repository("Rocky", "9", "aarch64")["name"] == "cuda-rhel9-sbsa"
    with pytest.raises(SelectionError, match="no build for architecture ppc64le"):
        cuda_repository("Rocky", "9", "ppc64le")


def test_mirror_repository_flat_and_suite():
    flat = mirror_repository("apt", "http://mirror:8080/nvidia/", "/", ["main"], "")
    assert flat["suites"] == ["/"]
    assert flat["components"] == []
    assert flat["name"] == mirror_name("http://mirror:8080/nvidia/")
    suite = mirror_repository("apt", "https://m/debian", "bookworm", ["non-free"], "k")
    assert suite["components"] == ["non-free"]
    assert suite["signed_by"] == "k"
    dnf = mirror_repository("dnf", "http://mirror/rhel9", "", [], "")
    assert dnf["kind"] == "dnf"
    assert dnf["baseurl"] == "http://mirror/rhel9"
    assert not dnf["gpgcheck"]
    with pytest.raises(SelectionError, match="local mirror URL is 'mirror:8080'"):
        mirror_repository("apt", "mirror:8080", "/", [], "")


MIRROR = {"url": "http://mirror.example/nvidia/", "suite": "/", "components": [], "signed_by": ""}


def test_mirror_name_is_one_name_per_url_for_driver_and_cuda():
    driver = repository("local_mirror", "Ubuntu", "24", "x86_64", {"variable": "nvidia_driver_source", **MIRROR})
    cuda = repository("local_mirror", "Ubuntu", "24", "x86_64", {"variable": "cuda_toolkit_source", **MIRROR})
    assert driver["name"] == cuda["name"] == "nvidia-mirror-mirror-example-nvidia"
    # The same URL without its trailing slash is the same mirror.
    assert mirror_name("http://mirror.example/nvidia") == driver["name"]
    # Another URL, another name; dnf names the repository the same way.
    assert mirror_name("http://mirror.example/cuda/") != driver["name"]
    assert repository("local_mirror", "Rocky", "9", "x86_64", MIRROR)["name"] == driver["name"]


def test_mirror_name_is_bounded():
    name = mirror_name("https://very-long-host.example.internal/" + "x/" * 60)
    assert len(name) <= 80
    assert not name.endswith("-")


def test_debian_nonfree_reuses_the_hosts_own_mirrors():
    targets = [
        "http://mirror.example/debian/ bookworm main",
        "http://mirror.example/debian/ bookworm-updates main",
        "http://security.example/debian-security/ bookworm-security main",
        "http://mirror.example/debian/ bookworm main",  # one line per index file in indextargets
        "https://download.docker.com/linux/debian/ bookworm stable",  # third-party archive: left alone
        "http://apt.postgresql.example/pub/repos/apt/ bookworm-pgdg main",
        "http://ppa.example/ stable main",
    ]
    repo = debian_nonfree_repository(targets, "bookworm")
    assert repo["groups"][0] == {"uris": ["http://mirror.example/debian"], "suites": ["bookworm", "bookworm-updates"]}
    assert repo["groups"][1] == {"uris": ["http://security.example/debian-security"], "suites": ["bookworm-security"]}
    assert len(repo["groups"]) == 2
    assert repo["components"] == ["contrib", "non-free", "non-free-firmware"]
    assert repo["signed_by"] == "/usr/share/keyrings/debian-archive-keyring.gpg"
    with pytest.raises(SelectionError, match="no Debian 'bookworm' source"):
        debian_nonfree_repository(["http://x/ trixie main"], "bookworm")


def test_debian_nonfree_operator_mirrors_replace_detection():
    repo = debian_nonfree_repository([], "bookworm", [{"uri": "http://m/debian/", "suites": ["bookworm"]}])
    assert repo["groups"] == [{"uris": ["http://m/debian"], "suites": ["bookworm"]}]


def test_repository_dispatches_on_the_source():
    settings = {"variable": "cuda_toolkit_source", "cuda_repo_url": "https://example.invalid/repos", **MIRROR}
    assert repository("cuda_repo", "Ubuntu", "24", "x86_64", settings)["uris"] == [
        "https://example.invalid/repos/ubuntu2404/x86_64/"
    ]
    assert repository("local_mirror", "Rocky", "9", "x86_64", settings)["kind"] == "dnf"
    assert repository("local_mirror", "Debian", "12", "x86_64", settings)["uris"] == ["http://mirror.example/nvidia/"]
    assert repository("distro", "Ubuntu", "22", "x86_64", settings) == {"kind": "none"}
    assert repository("distro", "Rocky", "9", "x86_64", settings) == {"kind": "none"}
    # Debian's distro source is resolved later against the host's own sources (nvidia_install.debian_nonfree).
    debian = repository("distro", "Debian", "12", "x86_64", {**settings, "codename": "bookworm"})
    assert debian == {"kind": "apt-debian", "name": "debian-nonfree", "codename": "bookworm", "distro_mirrors": []}
    mirrors = [{"uri": "http://m/debian", "suites": ["bookworm"]}]
    assert (
        repository("distro", "Debian", "12", "x86_64", {**settings, "codename": "bookworm", "distro_mirrors": mirrors})[
            "distro_mirrors"
        ]
        == mirrors
    )
    with pytest.raises(SelectionError, match="cuda_toolkit_source is 'ppa'; allowed values: distro, cuda_repo"):
        repository("ppa", "Debian", "12", "x86_64", settings)


# --- CUDA -----------------------------------------------------------------------------------------


def test_cuda_distro_debian12_is_11_8_and_default_picks_it():
    sel = cuda_selection("Debian", "12", "distro", "", "", "toolkit", False, "535")
    assert sel["version"] == "11.8"
    assert sel["packages"] == ["nvidia-cuda-toolkit"]
    # nvcc needs this directory on PATH to find Debian's host compiler wrapper.
    assert sel["bin_dir"] == "/usr/lib/nvidia-cuda-toolkit/bin"
    runtime = cuda_selection("Debian", "12", "distro", "", "", "runtime", False, "535")
    assert runtime["packages"] == ["libcudart11.0"]
    assert runtime["cuda_home"] == runtime["bin_dir"] == ""


def test_cuda_repo_default_follows_the_driver_branch():
    sel = cuda_selection("Ubuntu", "24", "cuda_repo", "", "", "toolkit", True, "580")
    assert sel["version"] == "13.0"
    assert sel["packages"] == ["cuda-toolkit-13-0", "libnccl2=*+cuda13.0", "libnccl-dev=*+cuda13.0"]
    assert sel["cuda_home"] == "/usr/local/cuda-13.0"
    rhel = cuda_selection("RedHat", "9", "cuda_repo", "", "12.8", "toolkit", True, "570")
    assert rhel["packages"] == ["cuda-toolkit-12-8", "libnccl-*+cuda12.8", "libnccl-devel-*+cuda12.8"]


@pytest.mark.parametrize(
    ("version", "branch"),
    [("13.0", "570"), ("12.8", "520"), ("13.0", "535")],
)
def test_cuda_major_needs_a_new_enough_branch(version, branch):
    with pytest.raises(
        SelectionError, match=rf"CUDA {version} needs driver R\d+ or newer; the driver branch is {branch}"
    ):
        cuda_selection("Ubuntu", "24", "cuda_repo", "", version, "toolkit", False, branch)


def test_cuda_12_runs_on_r580():
    assert cuda_selection("Ubuntu", "24", "cuda_repo", "", "12.8", "toolkit", False, "580")["version"] == "12.8"


def test_cuda_distro_refusals():
    with pytest.raises(SelectionError, match=r"cuda_toolkit_version 13.0 is not what Debian 12 packages \(11.8\)"):
        cuda_selection("Debian", "12", "distro", "", "13.0", "toolkit", False, "535")
    with pytest.raises(SelectionError, match="cuda_toolkit_nccl: Debian 12 does not package NCCL"):
        cuda_selection("Debian", "12", "distro", "", "", "toolkit", True, "535")
    with pytest.raises(SelectionError, match="cuda_toolkit_profile is 'full'"):
        cuda_selection("Debian", "12", "distro", "", "", "full", False, "535")
    with pytest.raises(SelectionError, match="cuda_toolkit_version is '13'"):
        cuda_selection("Debian", "12", "cuda_repo", "", "13", "toolkit", False, "580")


def test_cuda_older_than_the_gpu_architecture_is_refused():
    # research §2: sm_90 (Hopper) needs CUDA 11.8; Ubuntu 22.04 packages CUDA 11.5.
    with pytest.raises(SelectionError, match=r"CUDA 11.5 cannot .* hopper GPU\(s\): they need CUDA 11.8 or newer"):
        cuda_selection("Ubuntu", "22", "distro", "", "", "toolkit", False, "535", ["hopper"])
    # research §2: sm_100/sm_120 (Blackwell) need CUDA 12.8.
    with pytest.raises(SelectionError, match=r"CUDA 12.4 cannot .* blackwell GPU\(s\): they need CUDA 12.8 or newer"):
        cuda_selection("Ubuntu", "24", "cuda_repo", "", "12.4", "toolkit", False, "550", ["blackwell"])
    # Both at once: the message names both and the newest requirement.
    with pytest.raises(SelectionError, match=r"blackwell, hopper GPU\(s\): they need CUDA 12.8"):
        cuda_selection("Ubuntu", "22", "distro", "", "", "toolkit", False, "535", ["hopper", "blackwell", "ampere"])


@pytest.mark.parametrize(
    ("dist", "major", "source", "version", "branch", "arches"),
    [
        ("Ubuntu", "22", "distro", "", "535", ["ampere", "turing"]),  # 11.5 covers sm_75/sm_86 (research §2)
        ("Debian", "12", "distro", "", "535", ["hopper", "ada"]),  # 11.8 covers sm_89/sm_90
        ("Ubuntu", "24", "cuda_repo", "12.8", "570", ["blackwell", "hopper"]),
        ("Ubuntu", "24", "cuda_repo", "", "580", ["blackwell"]),  # default 13.0
    ],
)
def test_cuda_new_enough_for_the_gpu_architecture_is_accepted(dist, major, source, version, branch, arches):
    assert cuda_selection(dist, major, source, "", version, "toolkit", False, branch, arches)["version"]


def test_cuda_13_is_refused_for_gpus_older_than_turing_naming_12():
    # research §2: CUDA 13.0 dropped Maxwell, Pascal and Volta (sm_5x, sm_6x, sm_70/72); CUDA 12 is their
    # last major. nvidia_host_facts calls them "pre-turing".
    with pytest.raises(SelectionError, match=r"CUDA 13\.0 .*older than Turing.*12\.x"):
        cuda_selection("Ubuntu", "24", "cuda_repo", "", "13.0", "toolkit", False, "580", ["pre-turing"])
    # The default of R580 is 13.0 (BRANCH_CUDA): refused the same way, not silently installed.
    with pytest.raises(SelectionError, match=r"12\.x"):
        cuda_selection("Ubuntu", "24", "cuda_repo", "", "", "toolkit", False, "580", ["pre-turing"])
    # One old GPU among new ones is enough.
    with pytest.raises(SelectionError, match=r"12\.x"):
        cuda_selection("RedHat", "9", "cuda_repo", "", "13.0", "toolkit", False, "580", ["hopper", "pre-turing"])


@pytest.mark.parametrize(
    ("version", "branch", "arches"),
    [
        ("12.8", "580", ["pre-turing"]),
        ("12.9", "575", ["pre-turing"]),
        # Blackwell needs 12.8, Volta ends at 12.x: a mixed host has exactly the 12.8-12.x window.
        ("12.8", "570", ["blackwell", "pre-turing"]),
    ],
)
def test_cuda_12_is_accepted_for_gpus_older_than_turing(version, branch, arches):
    assert cuda_selection("Ubuntu", "24", "cuda_repo", "", version, "toolkit", False, branch, arches)["version"] == (
        version
    )


def test_cuda_distro_11_is_accepted_for_gpus_older_than_turing():
    assert (
        cuda_selection("Debian", "12", "distro", "", "", "toolkit", False, "535", ["pre-turing"])["version"] == "11.8"
    )


# --- container toolkit ------------------------------------------------------------------------------


def test_container_toolkit_apt_and_dnf():
    apt = container_toolkit_selection("Ubuntu", "24", "aarch64", "1.18.1")
    assert apt["family"] == "apt"
    assert apt["repository"]["uris"] == ["https://nvidia.github.io/libnvidia-container/stable/deb/arm64"]
    assert apt["repository"]["suites"] == ["/"]
    assert apt["repository"]["signed_by"] == "https://nvidia.github.io/libnvidia-container/gpgkey"
    # Bare names; the shared install flow pins all four to one version.
    assert apt["packages"] == [
        "nvidia-container-toolkit",
        "nvidia-container-toolkit-base",
        "libnvidia-container-tools",
        "libnvidia-container1",
    ]
    assert apt["versioned"] == apt["packages"]
    dnf = container_toolkit_selection("Rocky", "9", "x86_64", "1.18.1")
    assert dnf["family"] == "dnf"
    assert dnf["repository"]["baseurl"].endswith("/stable/rpm/$basearch")
    assert dnf["repository"]["repo_gpgcheck"]
    assert dnf["packages"][-1] == "libnvidia-container1"
    assert container_toolkit_selection("Debian", "12", "x86_64", "")["repository"]["uris"] == [
        "https://nvidia.github.io/libnvidia-container/stable/deb/amd64"
    ]
    with pytest.raises(SelectionError, match="nvidia_container_toolkit_version is 'v1.18'"):
        container_toolkit_selection("Debian", "12", "x86_64", "v1.18")


# --- helpers ------------------------------------------------------------------------------------------


def test_apt_simulation_versions_from_a_real_bookworm_simulation():
    # Inst lines of apt-get install --simulate on Debian 12 (apt-simulate-debian12-proprietary.txt has a full one).
    lines = [
        "NOTE: This is only a simulation!",
        "Inst nvidia-smi (535.261.03-1 Debian:12.12/oldstable [amd64])",
        "Inst libcuda1 [535.247.01-1~deb12u1] (535.309.01-0+deb12u1 Debian-Security:12/oldstable-security [amd64])",
        "Conf nvidia-smi (535.261.03-1 Debian:12.12/oldstable [amd64])",
    ]
    assert apt_simulation_versions(lines) == {"nvidia-smi": "535.261.03", "libcuda1": "535.309.01"}


def test_package_names_and_upstream_versions():
    assert package_name("nvidia-smi=535.261.03*") == "nvidia-smi"
    assert package_name("kmod-nvidia-open-dkms-580.95.05*") == "kmod-nvidia-open-dkms"
    assert package_name("nvidia-driver-pinning-580") == "nvidia-driver-pinning-580"
    assert package_name("nvidia-container-toolkit-1.18.1-1*") == "nvidia-container-toolkit"
    assert package_name("libnvidia-container1=1.18.1-1*") == "libnvidia-container1"
    assert package_name("cuda-toolkit-12-8") == "cuda-toolkit-12-8"
    assert upstream_version("1:535.261.03-1~deb12u1") == "535.261.03"
    assert upstream_version("580.95.05-1.el9") == "580.95.05"
    assert upstream_version("580.178.04-0ubuntu0.24.04.1") == "580.178.04"


def _facts(**versions):
    return {name.replace("_", "-"): [{"version": v, "arch": "amd64"}] for name, v in versions.items()}


@pytest.mark.parametrize(
    ("packages", "branch"),
    [
        (_facts(libcuda1="535.261.03-1", libnvidia_ml1="535.261.03-1", bash="5.2.15-2+b2"), "535"),
        (_facts(libnvidia_compute_580_server="580.95.05-0ubuntu0.24.04.2"), "580"),
        (_facts(libnvidia_compute_570="570.172.08-0ubuntu1"), "570"),
        (_facts(nvidia_driver_cuda_libs="3:580.95.05-1.el9"), "580"),
        (_facts(libnvidia_ml1="535.261.03-1", bash="5.2.15-2+b2"), ""),
        ({}, ""),
    ],
)
def test_installed_driver_branch_from_the_cuda_library_package(packages, branch):
    assert installed_driver_branch(packages) == branch


def test_installed_driver_branch_refuses_two_branches():
    packages = _facts(libnvidia_compute_570="570.172.08-0ubuntu1", libnvidia_compute_580="580.95.05-0ubuntu1")
    with pytest.raises(SelectionError, match="several branches are installed .570, 580.*cuda_toolkit_driver_branch"):
        installed_driver_branch(packages)


def test_nvcc_release_parses_the_version_banner():
    # Captured from `nvcc --version` of Debian 12's nvidia-cuda-toolkit 11.8.89~11.8.0-5~deb12u1.
    banner = (FIXTURES / "cuda" / "nvcc-version-debian12.txt").read_text()
    assert nvcc_release(banner) == "11.8"
    assert nvcc_release("bash: nvcc: command not found") == ""
