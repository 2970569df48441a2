"""Repository and package selection for every supported OS and source, including the unreachable ones."""

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
    mirror_repository,
    nvcc_release,
    package_name,
    repository,
    upstream_version,
)

KERNEL = "6.8.0-49-generic"
FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"


def test_debian12_distro_r535_proprietary():
    sel = driver_selection("Debian", "12", "distro", "", "535", "proprietary", kernel="6.1.0-27-amd64")
    assert sel["family"] == "apt"
    assert sel["userspace"] == ["nvidia-smi", "libcuda1", "libnvidia-ml1", "nvidia-persistenced"]
    assert sel["kernel"] == ["nvidia-kernel-dkms", "firmware-nvidia-gsp"]
    assert sel["headers"] == ["linux-headers-6.1.0-27-amd64"]
    assert not sel["fabricmanager_available"]


def test_debian12_distro_open_pinned_to_the_version_contrib_carries():
    sel = driver_selection("Debian", "12", "distro", "", "535", "open", version="535.261.03")
    assert sel["kernel"] == ["nvidia-open-kernel-dkms=535.261.03*", "firmware-nvidia-gsp=535.261.03*"]
    # persistenced has its own version line in Debian and is never pinned to the driver's.
    assert "nvidia-persistenced" in sel["userspace"]
    assert "nvidia-smi=535.261.03*" in sel["userspace"]


def test_debian12_distro_refuses_r580_and_names_the_way_out():
    with pytest.raises(SelectionError, match=r"nvidia_driver_branch 580 is not packaged by Debian 12 .*535.*cuda_repo"):
        driver_selection("Debian", "12", "distro", "", "580", "open")


@pytest.mark.parametrize("major", ["22", "24"])
def test_ubuntu_distro_server_branch_precompiled_modules(major):
    sel = driver_selection("Ubuntu", major, "distro", "", "580", "open", kernel=KERNEL)
    assert sel["userspace"] == [
        "nvidia-utils-580-server",
        "libnvidia-compute-580-server",
        "nvidia-compute-utils-580-server",
    ]
    assert sel["kernel"] == [f"linux-modules-nvidia-580-server-open-{KERNEL}"]
    assert sel["fabricmanager"] == ["nvidia-fabricmanager-580", "libnvidia-nscq-580"]
    assert sel["headers"] == []  # precompiled: nothing is built on the host
    assert not sel["dkms"]


def test_ubuntu_proprietary_modules():
    sel = driver_selection("Ubuntu", "24", "distro", "", "570", "proprietary", kernel=KERNEL)
    assert sel["kernel"] == [f"linux-modules-nvidia-570-server-{KERNEL}"]


def test_ubuntu_cuda_repo_r580_pinning_and_unsuffixed_fabric_manager():
    sel = driver_selection("Ubuntu", "24", "cuda_repo", "", "580", "open", version="580.95.05", kernel=KERNEL)
    assert sel["userspace"][0] == "nvidia-driver-pinning-580"
    assert "nvidia-utils-580=580.95.05*" in sel["userspace"]
    assert sel["kernel"] == ["nvidia-dkms-580-open=580.95.05*"]
    assert sel["fabricmanager"] == ["nvidia-fabricmanager=580.95.05*", "libnvidia-nscq=580.95.05*"]
    assert sel["headers"] == [f"linux-headers-{KERNEL}"]


def test_ubuntu_cuda_repo_r570_fabric_manager_keeps_the_branch_suffix():
    sel = driver_selection("Ubuntu", "22", "cuda_repo", "", "570", "proprietary")
    assert sel["fabricmanager"] == ["nvidia-fabricmanager-570", "libnvidia-nscq-570"]
    assert sel["kernel"] == ["nvidia-dkms-570"]
    assert not any(p.startswith("nvidia-driver-pinning") for p in sel["userspace"])


def test_debian12_cuda_repo_names():
    sel = driver_selection("Debian", "12", "cuda_repo", "", "580", "open")
    assert sel["kernel"] == ["nvidia-kernel-open-dkms"]
    assert "nvidia-driver-cuda" in sel["userspace"]


@pytest.mark.parametrize("dist", ["RedHat", "Rocky", "AlmaLinux"])
def test_rhel9_cuda_repo_module_stream_and_versionlock_names(dist):
    sel = driver_selection(
        dist, "9", "cuda_repo", "", "580", "open", version="580.95.05", kernel="5.14.0-503.el9.x86_64"
    )
    assert sel["family"] == "dnf"
    assert sel["dnf_module"] == "nvidia-driver:580-open"
    assert sel["kernel"] == ["kmod-nvidia-open-dkms-580.95.05*"]
    assert sel["headers"] == ["kernel-devel-5.14.0-503.el9.x86_64", "kernel-headers-5.14.0-503.el9.x86_64"]
    assert "nvidia-fabricmanager-580.95.05*" in sel["fabricmanager"]


def test_rhel9_proprietary_stream():
    assert (
        driver_selection("Rocky", "9", "cuda_repo", "", "570", "proprietary")["dnf_module"] == "nvidia-driver:570-dkms"
    )


def test_rhel_distro_is_refused():
    with pytest.raises(SelectionError, match="does not package the NVIDIA driver; use nvidia_driver_source=cuda_repo"):
        driver_selection("RedHat", "9", "distro", "", "580", "open")


def test_local_mirror_takes_the_layout_it_mirrors():
    mirror = driver_selection("Debian", "12", "local_mirror", "distro", "535", "proprietary")
    assert mirror["userspace"] == driver_selection("Debian", "12", "distro", "", "535", "proprietary")["userspace"]
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
    with pytest.raises(SelectionError, match="nvidia_driver_version '570.1.2' is not of nvidia_driver_branch 580"):
        driver_selection("Ubuntu", "24", "distro", "", "580", "open", version="570.1.2")


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
    assert repo["uris"] == [url]
    assert repo["suites"] == ["/"]
    assert repo["signed_by"] == url + "3bf863cc.pub"


def test_cuda_repository_rhel9():
    repo = cuda_repository("Rocky", "9", "x86_64")
    assert repo["name"] == "cuda-rhel9-x86_64"
    assert repo["gpgkey"] == "https://developer.download.nvidia.com/compute/cuda/repos/rhel9/x86_64/D42D0685.pub"
    assert repo["gpgcheck"]


def test_mirror_repository_flat_and_suite():
    flat = mirror_repository("apt", "nvidia-mirror", "http://mirror:8080/nvidia/", "/", ["main"], "")
    assert flat["suites"] == ["/"]
    assert flat["components"] == []
    assert mirror_repository("apt", "m", "https://m/debian", "bookworm", ["non-free"], "k")["components"] == [
        "non-free"
    ]
    with pytest.raises(SelectionError, match="local mirror URL is 'mirror:8080'"):
        mirror_repository("apt", "m", "mirror:8080", "/", [], "")


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
    assert repo["components"] == ["contrib", "non-free", "non-free-firmware"]
    with pytest.raises(SelectionError, match="no Debian 'bookworm' source"):
        debian_nonfree_repository(["http://x/ trixie main"], "bookworm")


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


def test_container_toolkit_apt_and_dnf():
    apt = container_toolkit_selection("Ubuntu", "24", "aarch64", "1.18.1")
    assert apt["repository"]["uris"] == ["https://nvidia.github.io/libnvidia-container/stable/deb/arm64"]
    assert apt["repository"]["signed_by"] == "https://nvidia.github.io/libnvidia-container/gpgkey"
    assert apt["packages"][0] == "nvidia-container-toolkit=1.18.1-1*"
    assert len(apt["packages"]) == 4
    dnf = container_toolkit_selection("Rocky", "9", "x86_64", "1.18.1")
    assert dnf["repository"]["baseurl"].endswith("/stable/rpm/$basearch")
    assert dnf["repository"]["repo_gpgcheck"]
    assert dnf["packages"][-1] == "libnvidia-container1-1.18.1-1*"
    with pytest.raises(SelectionError, match="nvidia_container_toolkit_version is 'v1.18'"):
        container_toolkit_selection("Debian", "12", "x86_64", "v1.18")


def test_apt_simulation_versions_from_a_real_bookworm_simulation():
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


MIRROR = {"name": "cuda-mirror", "url": "http://mirror/cuda/", "suite": "/", "components": ["main"], "signed_by": ""}


def test_repository_dispatches_on_the_source():
    settings = {"variable": "cuda_toolkit_source", "cuda_repo_url": "https://example.invalid/repos", **MIRROR}
    assert repository("cuda_repo", "Ubuntu", "24", "x86_64", settings)["uris"] == [
        "https://example.invalid/repos/ubuntu2404/x86_64/"
    ]
    assert repository("local_mirror", "Rocky", "9", "x86_64", settings)["kind"] == "dnf"
    assert repository("local_mirror", "Debian", "12", "x86_64", settings)["uris"] == ["http://mirror/cuda/"]
    assert repository("distro", "Ubuntu", "22", "x86_64", settings) == {"kind": "none"}
    debian = repository(
        "distro",
        "Debian",
        "12",
        "x86_64",
        {**settings, "codename": "bookworm", "indextargets": ["http://deb.debian.org/debian/ bookworm main"]},
    )
    assert debian["kind"] == "apt-debian"
    assert debian["groups"] == [{"uris": ["http://deb.debian.org/debian"], "suites": ["bookworm"]}]
    with pytest.raises(SelectionError, match="cuda_toolkit_source is 'ppa'; allowed values: distro, cuda_repo"):
        repository("ppa", "Debian", "12", "x86_64", settings)
