# Copyright: deepseek.cluster contributors
# Apache License 2.0 (see LICENSE)
"""Which repository and which packages install NVIDIA's driver, CUDA and container toolkit.

One pure function per role turns (OS, source, branch, ...) into a selection: the repository to
configure and the package names, per OS family. The roles only apply the selection, so every OS and
source is checked here by unit tests, including those no test machine can reach.

Errors are ``SelectionError`` with a message that names the variable and the allowed values.
"""

from __future__ import annotations

import re
from typing import Any

CUDA_REPO_URL = "https://developer.download.nvidia.com/compute/cuda/repos"
CTK_REPO_URL = "https://nvidia.github.io/libnvidia-container"
DEBIAN_ARCHIVE_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"

SOURCES = ("distro", "cuda_repo", "local_mirror")
KERNEL_MODULES = ("open", "proprietary")
# Driver branches each distribution ships itself. Debian 12 carries R535 only; RHEL none.
DISTRO_BRANCHES = {
    ("Debian", "12"): ("535",),
    ("Ubuntu", "22"): ("580",),
    ("Ubuntu", "24"): ("580",),
}
# Ubuntu -server branches that are now transitional packages pulling in a newer branch (the archive's
# jammy/noble -updates, tests/fixtures/nvidia-facts/ubuntu-server-branches-candidates.txt): holding
# one holds nothing, and its "version" is not the driver's.
UBUNTU_TRANSITIONAL = {"535": "580", "550": "580", "565": "580", "570": "580", "575": "580", "590": "595"}
# NVLink 5 boards (Blackwell HGX/GB200): fabric manager needs the NVLink subnet manager.
NVLSM_PACKAGES = ["nvlsm", "infiniband-diags"]
# The CUDA toolkit each distribution ships: (version, runtime library package).
DISTRO_CUDA = {
    ("Debian", "12"): ("11.8", "libcudart11.0"),
    ("Ubuntu", "22"): ("11.5", "libcudart11.0"),
    ("Ubuntu", "24"): ("12.0", "libcudart12"),
}
# The oldest driver branch each CUDA major runs on (NVIDIA's minor version compatibility table),
# and the CUDA version each branch ships with (the cuda_repo default toolkit for that branch).
CUDA_MIN_BRANCH = {11: 450, 12: 525, 13: 580}
BRANCH_CUDA = {"535": "12.2", "550": "12.4", "570": "12.8", "575": "12.9", "580": "13.0"}
CUDA_REPO_DISTROS = {("Debian", "12"): "debian12", ("Ubuntu", "22"): "ubuntu2204", ("Ubuntu", "24"): "ubuntu2404"}
RHEL_LIKE = ("RedHat", "Rocky", "AlmaLinux", "CentOS")
CUDA_REPO_ARCH = {"x86_64": "x86_64", "aarch64": "sbsa"}
DEB_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}
# NVIDIA's pin file for its Ubuntu CUDA repositories (cuda-ubuntu2204.pin, cuda-ubuntu2404.pin).
CUDA_UBUNTU_PIN = (
    "Package: nsight-compute\nPin: origin *ubuntu.com*\nPin-Priority: -1\n\n"
    "Package: nsight-systems\nPin: origin *ubuntu.com*\nPin-Priority: -1\n\n"
    "Package: *\nPin: release l=NVIDIA CUDA\nPin-Priority: 600\n"
)


class SelectionError(ValueError):
    """A request that no repository can satisfy; the message names the variable to change."""


def os_key(distribution: str, major: str) -> tuple[str, str]:
    """(family key, major version) with RHEL rebuilds folded into RedHat."""
    if distribution in RHEL_LIKE:
        return ("RedHat", str(major))
    return (distribution, str(major))


def check_os(distribution: str, major: str) -> tuple[str, str]:
    """The OS key, or an error naming the supported systems."""
    key = os_key(distribution, major)
    if key not in (("Debian", "12"), ("Ubuntu", "22"), ("Ubuntu", "24"), ("RedHat", "9")):
        raise SelectionError(
            f"{distribution} {major} is not supported: Debian 12, Ubuntu 22.04/24.04 and RHEL/Rocky 9 are."
        )
    return key


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise SelectionError(f"{name} is '{value}'; allowed values: {', '.join(allowed)}.")


def cuda_repository(distribution: str, major: str, arch: str, base_url: str = CUDA_REPO_URL) -> dict[str, Any]:
    """NVIDIA's CUDA network repository for this OS and CPU architecture."""
    key = check_os(distribution, major)
    if arch not in CUDA_REPO_ARCH:
        raise SelectionError(f"the CUDA repository has no build for architecture {arch}; x86_64 and aarch64 have.")
    if key[0] == "RedHat":
        path = f"{base_url}/rhel{key[1]}/{CUDA_REPO_ARCH[arch]}"
        return {
            "kind": "dnf",
            "name": f"cuda-rhel{key[1]}-{CUDA_REPO_ARCH[arch]}",
            "baseurl": path,
            "gpgkey": f"{path}/D42D0685.pub",
            "gpgcheck": True,
            "repo_gpgcheck": False,
        }
    path = f"{base_url}/{CUDA_REPO_DISTROS[key]}/{CUDA_REPO_ARCH[arch]}/"
    spec: dict[str, Any] = {}
    if key[0] == "Ubuntu":
        # NVIDIA's cuda-<distro>.pin, installed as /etc/apt/preferences.d/cuda-repository-pin-600:
        # the CUDA repository wins over Ubuntu's archive for the packages both carry.
        spec["preferences"] = {"name": "cuda-repository-pin-600", "content": CUDA_UBUNTU_PIN}
    return spec | {
        "kind": "apt",
        "name": "cuda",
        "uris": [path],
        "suites": ["/"],
        "components": [],
        "signed_by": path + "3bf863cc.pub",
    }


def mirror_name(url: str) -> str:
    """One name per mirror URL ("nvidia-mirror-mirror-example-com-nvidia"), whichever role writes it.

    The driver and CUDA roles pointed at one mirror write one file, not two names for one URI.
    """
    slug = re.sub(r"[^a-z0-9]+", "-", re.sub(r"^[a-z]+://", "", str(url).lower())).strip("-")
    return f"nvidia-mirror-{slug}"[:80].rstrip("-")


def mirror_repository(kind: str, url: str, suite: str, components: list[str], signed_by: str) -> dict[str, Any]:
    """An operator's mirror (air-gapped sites): flat (suite "/") or with a suite and components."""
    if not re.match(r"^(https?|file)://", url or ""):
        raise SelectionError(f"the local mirror URL is '{url}'; expected http://, https:// or file://.")
    name = mirror_name(url)
    if kind == "dnf":
        return {
            "kind": "dnf",
            "name": name,
            "baseurl": url,
            "gpgkey": signed_by,
            "gpgcheck": bool(signed_by),
            "repo_gpgcheck": False,
        }
    return {
        "kind": "apt",
        "name": name,
        "uris": [url],
        "suites": [suite],
        "components": [] if suite.endswith("/") else list(components),
        "signed_by": signed_by,
    }


def debian_nonfree_repository(
    targets: list[str], codename: str, mirrors: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """contrib/non-free/non-free-firmware on every Debian archive the host already uses.

    ``targets`` are "URI SUITE COMPONENT" lines (``apt-get indextargets``). Debian's own archives are
    the ones with a ``main`` component for ``codename`` or its -updates/-security/-backports suites,
    so the host's mirrors are reused and third-party repositories are left alone. ``mirrors``
    ({uri, suites} mappings chosen by the operator) replace the detection when given.
    """
    if mirrors:
        return _nonfree({str(m["uri"]).rstrip("/"): [str(s) for s in m["suites"]] for m in mirrors})
    debian_suites = [codename] + [f"{codename}-{s}" for s in ("updates", "security", "backports")]
    groups: dict[str, list[str]] = {}
    for line in targets:
        parts = line.split()
        if len(parts) != 3 or parts[1] not in debian_suites or parts[2] != "main":
            continue
        suites = groups.setdefault(parts[0].rstrip("/"), [])
        if parts[1] not in suites:
            suites.append(parts[1])
    if not groups:
        raise SelectionError(
            f"no Debian '{codename}' source is configured on this host; set nvidia_driver_distro_mirrors "
            "(a list of {uri, suites}) to the Debian mirror to add non-free to."
        )
    return _nonfree(groups)


def _nonfree(groups: dict[str, list[str]]) -> dict[str, Any]:
    return {
        "kind": "apt-debian",
        "name": "debian-nonfree",
        "groups": [{"uris": [uri], "suites": suites} for uri, suites in groups.items()],
        "components": ["contrib", "non-free", "non-free-firmware"],
        "signed_by": DEBIAN_ARCHIVE_KEYRING,
    }


def repository(source: str, distribution: str, major: str, arch: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The repository one role configures for ``source`` (spec for nvidia_driver's repository.yml).

    ``settings`` carries the role's variables: ``cuda_repo_url``; for local_mirror ``url``, ``suite``,
    ``components``, ``signed_by``; for Debian's distro source ``codename`` and ``distro_mirrors`` (the
    non-free components are added to the host's own Debian mirrors by the install flow).
    Distributions other than Debian need no extra repository for ``distro`` (kind "none").
    """
    _choice(settings.get("variable", "source"), source, SOURCES)
    if source == "cuda_repo":
        return cuda_repository(distribution, major, arch, settings["cuda_repo_url"])
    if source == "local_mirror":
        kind = "dnf" if os_key(distribution, major)[0] == "RedHat" else "apt"
        return mirror_repository(
            kind,
            settings["url"],
            settings["suite"],
            list(settings["components"]),
            settings["signed_by"],
        )
    if distribution == "Debian":
        # Resolved against the host's own sources by the install flow (nvidia_install.debian_nonfree).
        return {
            "kind": "apt-debian",
            "name": "debian-nonfree",
            "codename": settings["codename"],
            "distro_mirrors": list(settings.get("distro_mirrors") or []),
        }
    return {"kind": "none"}


def check_branch(branch: str) -> int:
    """The branch as an integer, or an error for anything but a three-digit branch."""
    if not re.match(r"^[0-9]{3}$", str(branch)):
        raise SelectionError(f'nvidia_driver_branch is \'{branch}\'; expected a driver branch such as "580" or "570".')
    return int(branch)


def kernel_flavour(kernel: str) -> str:
    """The flavour of a kernel release: "6.8.0-45-generic" -> "generic", "6.1.0-27-cloud-amd64" -> "cloud-amd64"."""
    match = re.match(r"^[0-9]+\.[0-9]+(?:\.[0-9]+)?-[0-9]+(?:\.[0-9]+)?-(.+)$", str(kernel))
    return match.group(1) if match else ""


# Ubuntu's general-availability kernel per release; a "generic" (or "nvidia") kernel of another series
# is a hardware-enablement stack, whose metapackages carry another suffix: generic-hwe-22.04,
# generic-hwe-24.04, nvidia-hwe-24.04, and on 22.04 nvidia-6.8 (the archive's metapackage names,
# tests/fixtures/nvidia-facts/ubuntu-kernel-metapackages-candidates.tsv). Cloud flavours (aws, ...)
# follow one series per release under their own name.
UBUNTU_GA_KERNEL = {"22": "5.15", "24": "6.8"}
UBUNTU_HWE_FLAVOURS = {"generic": "generic-hwe-{major}.04", "nvidia": "nvidia-hwe-{major}.04"}
UBUNTU_HWE_EXCEPTIONS = {("22", "nvidia"): "nvidia-{series}"}


def ubuntu_metapackage_flavour(major: str, kernel: str) -> str:
    """Flavour for Ubuntu's kernel-following metapackages: generic, generic-hwe-24.04, nvidia-6.8, aws, ..."""
    flavour = kernel_flavour(kernel) or "generic"
    series = ".".join(str(kernel).split(".")[:2])
    if flavour in UBUNTU_HWE_FLAVOURS and kernel and series != UBUNTU_GA_KERNEL.get(str(major), series):
        pattern = UBUNTU_HWE_EXCEPTIONS.get((str(major), flavour), UBUNTU_HWE_FLAVOURS[flavour])
        return pattern.format(major=major, series=series)
    return flavour


def driver_selection(
    distribution: str,
    major: str,
    source: str,
    layout: str,
    branch: str,
    kernel_modules: str,
    version: str = "",
    kernel: str = "",
    nvlsm: bool = False,
    cpu_arch: str = "x86_64",
) -> dict[str, Any]:
    """Packages of the NVIDIA driver for one host, as bare names.

    ``kernel`` is the running kernel's release, or "" in a container (no running kernel of its own:
    only the metapackages that follow the distribution's kernel are selected).

    Returns ``family``; ``pre_install`` (NVIDIA's pinning package: installed in a transaction of its
    own before anything else, so that its apt preferences are in force when the driver is chosen);
    ``userspace``, ``kernel`` (module packages, including the metapackage that follows kernel
    updates), ``headers`` (the running kernel's and the metapackage that follows updates) and
    ``fabricmanager`` (fabric manager and NSCQ, plus NVLSM on NVLink 5 boards when ``nvlsm``);
    ``versioned``: the names that must be at the driver's exact version (installed at one version in
    one transaction, held, compared); ``dkms``; ``dnf_module`` (RHEL module stream) and
    ``dnf_module_name``.
    """
    _choice("nvidia_driver_source", source, SOURCES)
    _choice("nvidia_driver_kernel_modules", kernel_modules, KERNEL_MODULES)
    num = check_branch(branch)
    key = check_os(distribution, major)
    if version and not re.match(rf"^{branch}\.[0-9]+(\.[0-9]+)?$", str(version)):
        raise SelectionError(
            f"nvidia_driver_version '{version}' is not a release of nvidia_driver_branch {branch} "
            f"(e.g. {branch}.95.05)."
        )
    flavor = layout if source == "local_mirror" else source
    _choice("nvidia_driver_local_mirror_layout", flavor, ("distro", "cuda_repo"))
    if flavor == "distro":
        if key not in DISTRO_BRANCHES:
            raise SelectionError(
                f"nvidia_driver_source=distro: {distribution} {major} does not package the NVIDIA driver; "
                "use nvidia_driver_source=cuda_repo or local_mirror."
            )
        if branch not in DISTRO_BRANCHES[key]:
            raise SelectionError(
                f"nvidia_driver_branch {branch} is not packaged by {distribution} {major} (it has "
                f"{', '.join(DISTRO_BRANCHES[key])}"
                + (
                    f"; {branch} is only a transitional package that installs {UBUNTU_TRANSITIONAL[branch]}"
                    if key[0] == "Ubuntu" and branch in UBUNTU_TRANSITIONAL
                    else ""
                )
                + "); set nvidia_driver_branch to one of those, or use nvidia_driver_source=cuda_repo."
            )
        table = _distro_packages(key, branch, kernel_modules, kernel, cpu_arch)
    else:
        table = _cuda_repo_packages(key, branch, num, kernel_modules, kernel, cpu_arch, str(version))
    if nvlsm and table["fabricmanager"]:
        if flavor == "distro":
            raise SelectionError(
                "this NVSwitch board has Blackwell GPUs: fabric manager needs the NVLink subnet manager (nvlsm), "
                "which only NVIDIA's repository carries; use nvidia_driver_source=cuda_repo or local_mirror "
                "(layout cuda_repo)."
            )
        table["fabricmanager"] = table["fabricmanager"] + NVLSM_PACKAGES
    table["family"] = "dnf" if key[0] == "RedHat" else "apt"
    if not table["dkms"]:
        table["headers"] = []
    table["kernel_metapackages"] = kernel_metapackages(key, kernel, cpu_arch)
    return table


def kernel_metapackages(key: tuple[str, str], kernel: str, cpu_arch: str = "x86_64") -> list[str]:
    """The packages that bring a new kernel (held with nvidia_driver_kernel_updates=hold).

    dnf has none: there the kernel packages themselves are versionlocked.
    """
    if key[0] == "Debian":
        flavour = kernel_flavour(kernel) or DEB_ARCH.get(cpu_arch, "amd64")
        return [f"linux-image-{flavour}", f"linux-headers-{flavour}"]
    if key[0] == "Ubuntu":
        flavour = ubuntu_metapackage_flavour(key[1], kernel)
        return [f"linux-{flavour}", f"linux-image-{flavour}", f"linux-headers-{flavour}"]
    return []


def _debian_headers(kernel: str, cpu_arch: str) -> list[str]:
    """The running kernel's headers and the metapackage of its flavour (linux-headers-amd64).

    The metapackage pulls the headers of every new kernel, so DKMS builds the module before the reboot.
    """
    flavour = kernel_flavour(kernel) or DEB_ARCH.get(cpu_arch, "amd64")
    return ([f"linux-headers-{kernel}"] if kernel else []) + [f"linux-headers-{flavour}"]


def _distro_packages(key: tuple[str, str], branch: str, modules: str, kernel: str, cpu_arch: str) -> dict[str, Any]:
    if key[0] == "Debian":
        userspace = ["nvidia-smi", "libcuda1", "libnvidia-ml1", "nvidia-persistenced"]
        kmod = "nvidia-open-kernel-dkms" if modules == "open" else "nvidia-kernel-dkms"
        # contrib's open modules lag behind the security updates of the user space (535.261.03 vs
        # 535.309.01): pinning the set to the modules' version needs the packages the driver's packages
        # depend on at one exact version pinned too, or apt takes their newer candidate (and without
        # libnvidia-cfg1, nvidia-tesla-470's). Captured: tests/fixtures/nvidia-facts/apt-simulate-debian12-*.
        exact = ["nvidia-alternative", "libnvidia-ptxjitcompiler1", "libnvidia-pkcs11-openssl3", "libnvidia-cfg1"]
        return {
            "pre_install": [],
            "userspace": userspace + exact,
            "kernel": [kmod, "firmware-nvidia-gsp"],
            "headers": _debian_headers(kernel, cpu_arch),
            "fabricmanager": [],
            "fabricmanager_available": False,
            "versioned": ["nvidia-smi", "libcuda1", "libnvidia-ml1", *exact, kmod, "firmware-nvidia-gsp"],
            "dkms": True,
            "dnf_module": "",
            "dnf_module_name": "",
        }
    suffix = f"{branch}-server" + ("-open" if modules == "open" else "")
    # Ubuntu's precompiled, Canonical-signed modules: no DKMS build, and they load under Secure Boot
    # without a MOK. The package for the running kernel makes the module available now; the
    # metapackage of the kernel's flavour (linux-modules-nvidia-580-server-open-generic, or
    # -generic-hwe-24.04) depends on the module package of the newest kernel, so a kernel update
    # brings the matching module with it (as ubuntu-drivers installs it).
    kmods = [f"linux-modules-nvidia-{suffix}-{ubuntu_metapackage_flavour(key[1], kernel)}"]
    if kernel:
        kmods = [f"linux-modules-nvidia-{suffix}-{kernel}"] + kmods
    userspace = [
        f"nvidia-utils-{branch}-server",
        f"libnvidia-compute-{branch}-server",
        f"nvidia-compute-utils-{branch}-server",
    ]
    fabric = [f"nvidia-fabricmanager-{branch}", f"libnvidia-nscq-{branch}"]
    return {
        "pre_install": [],
        "userspace": userspace,
        "kernel": kmods,
        "headers": [],
        "fabricmanager": fabric,
        "fabricmanager_available": True,
        "versioned": userspace + fabric,
        "dkms": False,
        "dnf_module": "",
        "dnf_module_name": "",
    }


def _cuda_repo_packages(
    key: tuple[str, str], branch: str, num: int, modules: str, kernel: str, cpu_arch: str, version: str
) -> dict[str, Any]:
    # From R580 the fabric manager and NSCQ packages lost their branch suffix.
    fabric = (
        ["nvidia-fabricmanager", "libnvidia-nscq"]
        if num >= 580
        else [f"nvidia-fabricmanager-{branch}", f"libnvidia-nscq-{branch}"]
    )
    if key[0] == "RedHat":
        if num < 560:
            raise SelectionError(
                f"nvidia_driver_branch {branch}: NVIDIA's RHEL 9 packaging names the NVML library libnvidia-ml "
                "only from R560 (nvidia-driver-NVML before); use nvidia_driver_branch 560 or newer on RHEL."
            )
        # NVIDIA's RHEL names: before R580 nvidia-fabric-manager and libnvidia-nscq-<branch>, from
        # R580 nvidia-fabricmanager and libnvidia-nscq (gpu-driver-container rhel9/install.sh).
        fabric = (
            ["nvidia-fabricmanager", "libnvidia-nscq"]
            if num >= 580
            else ["nvidia-fabric-manager", f"libnvidia-nscq-{branch}"]
        )
        userspace = ["nvidia-driver-cuda", "nvidia-driver-cuda-libs", "libnvidia-ml", "nvidia-persistenced"]
        kmod = "kmod-nvidia-open-dkms" if modules == "open" else "kmod-nvidia-latest-dkms"
        stream = f"{branch}-open" if modules == "open" else f"{branch}-dkms"
        return {
            "pre_install": [],
            "userspace": userspace,
            "kernel": [kmod],
            # kernel-devel-matched pulls the kernel-devel of every installed kernel, so DKMS builds
            # for the next kernel too (NVIDIA's RHEL 9 instructions).
            "headers": ["kernel-devel-matched", "kernel-headers"],
            "fabricmanager": fabric,
            "fabricmanager_available": True,
            "versioned": userspace + [kmod] + fabric,
            "dkms": True,
            "dnf_module": f"nvidia-driver:{stream}",
            "dnf_module_name": "nvidia-driver",
        }
    if key[0] == "Debian":
        userspace = ["nvidia-driver-cuda", "libcuda1", "libnvidia-ml1", "nvidia-persistenced"]
        kmod = "nvidia-kernel-open-dkms" if modules == "open" else "nvidia-kernel-dkms"
        headers = _debian_headers(kernel, cpu_arch)
    elif num >= 590:
        # From R590 NVIDIA's Ubuntu packages drop the branch from their names (Driver Installation Guide,
        # "Recent updates"); the pinning package chooses the branch.
        userspace = ["nvidia-utils", "libnvidia-compute", "nvidia-compute-utils"]
        kmod = "nvidia-dkms-open" if modules == "open" else "nvidia-dkms"
        headers = ([f"linux-headers-{kernel}"] if kernel else []) + [
            f"linux-headers-{ubuntu_metapackage_flavour(key[1], kernel)}"
        ]
    else:
        userspace = [f"nvidia-utils-{branch}", f"libnvidia-compute-{branch}", f"nvidia-compute-utils-{branch}"]
        kmod = f"nvidia-dkms-{branch}-open" if modules == "open" else f"nvidia-dkms-{branch}"
        headers = ([f"linux-headers-{kernel}"] if kernel else []) + [
            f"linux-headers-{ubuntu_metapackage_flavour(key[1], kernel)}"
        ]
    # The pinning package keeps apt on this branch (without it cuda-drivers-580 pulls in 590); it
    # must be installed in an earlier transaction than the driver, or its pin is not in force yet.
    # NVIDIA publishes nvidia-driver-pinning-<branch> (Pin: version <branch>.*) and, per release,
    # nvidia-driver-pinning-<version>; all ship /etc/apt/preferences.d/nvidia-driver-pin (priority
    # 1000) and conflict with each other, so a version change swaps one for the other.
    pinning = [f"nvidia-driver-pinning-{version or branch}"] if num >= 580 else []
    return {
        "pre_install": pinning,
        "userspace": userspace,
        "kernel": [kmod],
        "headers": headers,
        "fabricmanager": fabric,
        "fabricmanager_available": True,
        "versioned": userspace + [kmod] + fabric,
        "dkms": True,
        "dnf_module": "",
        "dnf_module_name": "",
    }


def cuda_major(version: str) -> int:
    """Major of a CUDA version "12.8"; an error for anything else."""
    match = re.match(r"^([0-9]{2})\.([0-9])$", str(version))
    if not match:
        raise SelectionError(f'cuda_toolkit_version is \'{version}\'; expected MAJOR.MINOR such as "13.0" or "12.8".')
    return int(match.group(1))


def cuda_selection(
    distribution: str,
    major: str,
    source: str,
    layout: str,
    version: str,
    profile: str,
    nccl: bool,
    driver_branch: str,
    gpu_architectures: list[str] | None = None,
) -> dict[str, Any]:
    """CUDA packages, install prefix and the version actually selected (``version`` "" = the default).

    ``gpu_architectures`` (the host's GPUs, nvidia_host_facts) must all be supported by the selected
    CUDA: a toolkit older than an architecture cannot build or run code for it (Ubuntu 22.04's CUDA
    11.5 on an H100, for instance).
    """
    _choice("cuda_toolkit_source", source, SOURCES)
    _choice("cuda_toolkit_profile", profile, ("toolkit", "runtime"))
    key = check_os(distribution, major)
    flavor = layout if source == "local_mirror" else source
    _choice("cuda_toolkit_local_mirror_layout", flavor, ("distro", "cuda_repo"))
    branch = check_branch(driver_branch)
    if flavor == "distro":
        if key not in DISTRO_CUDA:
            raise SelectionError(
                f"cuda_toolkit_source=distro: {distribution} {major} does not package CUDA; "
                "use cuda_repo or local_mirror."
            )
        shipped, runtime = DISTRO_CUDA[key]
        if version and version != shipped:
            raise SelectionError(
                f"cuda_toolkit_version {version} is not what {distribution} {major} packages ({shipped}); "
                f'set cuda_toolkit_version to "{shipped}" or "", or use cuda_toolkit_source=cuda_repo.'
            )
        if nccl:
            raise SelectionError(
                f"cuda_toolkit_nccl: {distribution} {major} does not package NCCL; "
                "use cuda_toolkit_source=cuda_repo or local_mirror, or set cuda_toolkit_nccl=false."
            )
        selected = shipped
        packages = ["nvidia-cuda-toolkit"] if profile == "toolkit" else [runtime]
        home = "/usr/lib/nvidia-cuda-toolkit" if profile == "toolkit" else ""
        # Debian/Ubuntu's nvcc finds its host compiler wrapper (gcc -> a supported gcc-N) only with this
        # directory on PATH.
        bin_dir = f"{home}/bin" if home else ""
    else:
        selected = version or BRANCH_CUDA.get(str(driver_branch), "")
        if not selected:
            raise SelectionError(f"no default CUDA for driver branch {driver_branch}; set cuda_toolkit_version.")
        dashed = selected.replace(".", "-")
        packages = [f"cuda-toolkit-{dashed}"] if profile == "toolkit" else [f"cuda-cudart-{dashed}"]
        if nccl:
            dev = "libnccl-devel" if key[0] == "RedHat" else "libnccl-dev"
            runtime_lib = "libnccl" if key[0] == "RedHat" else "libnccl2"
            sep = "-" if key[0] == "RedHat" else "="
            packages += [f"{runtime_lib}{sep}*+cuda{selected}", f"{dev}{sep}*+cuda{selected}"]
        home = f"/usr/local/cuda-{selected}"
        bin_dir = f"{home}/bin" if profile == "toolkit" else ""
    cmajor = cuda_major(selected)
    minimum = CUDA_MIN_BRANCH.get(cmajor)
    if minimum is None or branch < minimum:
        need = f"R{minimum} or newer" if minimum else "a branch this role does not know"
        raise SelectionError(
            f"CUDA {selected} needs driver {need}; the driver branch is {driver_branch} "
            "(cuda_toolkit_driver_branch / nvidia_driver_branch). Raise the branch or lower cuda_toolkit_version."
        )
    _check_cuda_covers(selected, gpu_architectures or [])
    return {
        "family": "dnf" if key[0] == "RedHat" else "apt",
        "version": selected,
        "packages": packages,
        "cuda_home": home,
        "bin_dir": bin_dir,
    }


# The first CUDA release that builds for each GPU architecture (CUDA release notes: sm_75 10.0,
# sm_80 11.0, sm_86 11.1, sm_89 and sm_90 11.8, sm_100 and sm_120 12.8).
CUDA_MIN_FOR_ARCHITECTURE = {
    "turing": "10.0",
    "ampere": "11.1",
    "ada": "11.8",
    "hopper": "11.8",
    "blackwell": "12.8",
}


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in str(version).split(".") if p.isdigit())


# CUDA 13.0 dropped Maxwell, Pascal and Volta (sm_5x, sm_6x, sm_70/72): CUDA 12 is their last major.
CUDA_LAST_MAJOR_FOR_ARCHITECTURE = {"pre-turing": 12}


def _check_cuda_covers(selected: str, architectures: list[str]) -> None:
    """An error when the selected CUDA predates one of the host's GPU architectures, or dropped it."""
    dropped = sorted(
        a for a in architectures if _version_tuple(selected)[0] > CUDA_LAST_MAJOR_FOR_ARCHITECTURE.get(a, 99)
    )
    if dropped:
        raise SelectionError(
            f"CUDA {selected} no longer supports this host's GPUs older than Turing (CUDA 13 dropped Maxwell, "
            "Pascal and Volta): set cuda_toolkit_version to a 12.x release."
        )
    too_new = sorted(
        {
            arch
            for arch in architectures
            if _version_tuple(selected) < _version_tuple(CUDA_MIN_FOR_ARCHITECTURE.get(arch, "0"))
        }
    )
    if too_new:
        need = max((CUDA_MIN_FOR_ARCHITECTURE[a] for a in too_new), key=_version_tuple)
        raise SelectionError(
            f"CUDA {selected} cannot build or run code for this host's {', '.join(too_new)} GPU(s): they need "
            f"CUDA {need} or newer (cuda_toolkit_version, or cuda_toolkit_source=cuda_repo)."
        )


def container_toolkit_selection(
    distribution: str, major: str, arch: str, version: str, base_url: str = CTK_REPO_URL
) -> dict[str, Any]:
    """NVIDIA container toolkit repository and its four packages (installed and held at one version)."""
    key = check_os(distribution, major)
    if version and not re.match(r"^[0-9]+\.[0-9]+\.[0-9]+$", str(version)):
        raise SelectionError(f"nvidia_container_toolkit_version is '{version}'; expected a release such as \"1.18.1\".")
    names = [
        "nvidia-container-toolkit",
        "nvidia-container-toolkit-base",
        "libnvidia-container-tools",
        "libnvidia-container1",
    ]
    if key[0] == "RedHat":
        repo = {
            "kind": "dnf",
            "name": "nvidia-container-toolkit",
            "baseurl": f"{base_url}/stable/rpm/$basearch",
            "gpgkey": f"{base_url}/gpgkey",
            "gpgcheck": False,
            "repo_gpgcheck": True,
        }
    else:
        if arch not in DEB_ARCH:
            raise SelectionError(f"no container toolkit build for architecture {arch}; x86_64 and aarch64 have one.")
        repo = {
            "kind": "apt",
            "name": "nvidia-container-toolkit",
            "uris": [f"{base_url}/stable/deb/{DEB_ARCH[arch]}"],
            "suites": ["/"],
            "components": [],
            "signed_by": f"{base_url}/gpgkey",
        }
    # Bare names: the shared install flow (the nvidia_packages role) pins all four to one version.
    return {"family": repo["kind"], "repository": repo, "packages": names, "versioned": names}


def upstream_version(version: str) -> str:
    """The upstream part of a package version: "1:535.261.03-1~deb12u1" -> "535.261.03"."""
    match = re.match(r"^(?:[0-9]+:)?([0-9][0-9.]*[0-9])", str(version))
    return match.group(1) if match else ""


def apt_simulation_versions(lines: list[str]) -> dict[str, str]:
    """Package -> upstream version that ``apt-get install --simulate`` would install ("Inst" lines)."""
    planned = {}
    for line in lines:
        match = re.match(r"^Inst (\S+) (?:\[[^\]]*\] )?\((\S+)", line)
        if match:
            planned[match.group(1)] = upstream_version(match.group(2))
    return planned


def package_name(spec: str) -> str:
    """The bare package name of a selection entry: "pkg=580.95.05*", "pkg-580.95.05*" or "pkg-1.18.1-1*" -> "pkg"."""
    return re.sub(r"(=.*|-[0-9][0-9.]*(-[0-9][0-9.]*)?\*)$", "", str(spec))


# Packages that carry libcuda.so, the driver's CUDA library, per packaging: Debian (and NVIDIA's
# debian12 repository), Ubuntu and NVIDIA's Ubuntu repositories, RHEL.
DRIVER_CUDA_LIBRARY = re.compile(r"^(libcuda1|libnvidia-compute-[0-9]{3}(-server)?|nvidia-driver-cuda-libs)$")


def installed_driver_branch(packages: dict[str, list[dict[str, Any]]]) -> str:
    """Branch ("535") of the installed driver's CUDA library (package_facts format); "" if none.

    More than one installed branch is an error: CUDA would load whichever libcuda comes first.
    """
    branches = sorted(
        {
            upstream_version(entry.get("version", "")).split(".")[0]
            for name, entries in packages.items()
            if DRIVER_CUDA_LIBRARY.match(name)
            for entry in entries
        }
        - {""}
    )
    if len(branches) > 1:
        raise SelectionError(
            f"driver CUDA libraries of several branches are installed ({', '.join(branches)}); "
            "remove all but one, or set cuda_toolkit_driver_branch."
        )
    return branches[0] if branches else ""


def nvcc_release(output: str) -> str:
    """CUDA release from ``nvcc --version`` ("Cuda compilation tools, release 12.8, V12.8.93" -> "12.8")."""
    match = re.search(r"release ([0-9]+\.[0-9]+)", str(output))
    return match.group(1) if match else ""
