"""nvidia_driver, Debian 12 distro source, in a container: what is really installed and configured."""

import re

# Shared with every scenario of this role (collected and run here, against this scenario's hosts).
from deepseek_testkit.nvidia_userspace import (  # noqa: F401
    test_nvidia_smi_reaches_nvml_and_finds_no_driver,
    test_persistenced_unit_enabled_not_running,
)

USERSPACE = ["nvidia-smi", "libcuda1", "libnvidia-ml1"]


def upstream(version):
    return re.match(r"^(?:\d+:)?([0-9.]+)", version).group(1)


def test_user_space_installed_at_one_r535_version(host):
    versions = {upstream(host.package(p).version) for p in USERSPACE}
    assert all(host.package(p).is_installed for p in USERSPACE)
    assert len(versions) == 1
    assert versions.pop().startswith("535.")


def test_driver_packages_are_held(host):
    selections = host.check_output("dpkg --get-selections " + " ".join(USERSPACE))
    held = {line.split()[0].split(":")[0] for line in selections.splitlines() if line.split()[1] == "hold"}
    assert held == set(USERSPACE)


def test_no_kernel_module_packages_in_a_container(host):
    for name in ("nvidia-kernel-dkms", "nvidia-open-kernel-dkms", "dkms"):
        assert not host.package(name).is_installed


def test_non_free_added_on_the_hosts_own_debian_mirror(host):
    source = host.file("/etc/apt/sources.list.d/debian-nonfree.sources")
    assert source.exists
    assert re.search(r"^Components: contrib non-free non-free-firmware$", source.content_string, re.M)
    assert re.search(r"^Suites: bookworm$", source.content_string, re.M)
    mirror = re.search(r"^deb (\S+) bookworm main", host.file("/etc/apt/sources.list").content_string, re.M).group(1)
    assert f"URIs: {mirror.rstrip('/')}" in source.content_string
