"""nvidia_driver upgrade scenario: the state after first install, kernel update, refused skew and upgrade."""

import pytest

VERSIONED = [
    "nvidia-driver-cuda",
    "libcuda1",
    "libnvidia-ml1",
    "nvidia-persistenced",
    "nvidia-kernel-open-dkms",
    "nvidia-fabricmanager",
    "libnvidia-nscq",
]


@pytest.mark.parametrize("name", VERSIONED)
def test_driver_fabric_manager_and_nscq_moved_together_and_are_held(host, name):
    package = host.package(name)
    assert package.is_installed
    assert package.version == "580.105.08-1"
    assert name in host.check_output("apt-mark showhold").split()


def test_the_pinning_package_of_the_version_replaced_the_branch_one(host):
    assert host.package("nvidia-driver-pinning-580.105.08").is_installed
    assert not host.package("nvidia-driver-pinning-580").is_installed
    assert host.file("/etc/apt/preferences.d/nvidia-driver-pin").exists


def test_nothing_of_the_newer_branch_came_in(host):
    versions = host.check_output("dpkg-query -W -f '${Version}\\n' 'nvidia-*' 'libnvidia-*' libcuda1").split()
    assert versions
    assert not [v for v in versions if v.startswith("590")], versions


def test_one_source_for_the_repository_uri_nvidias_own(host):
    files = host.check_output("grep -rl nvidia-standin /etc/apt/sources.list.d/ || true").split()
    assert files == ["/etc/apt/sources.list.d/cuda-debian12-x86_64.list"], files
    # apt reads every source without a Signed-By conflict.
    assert host.run("apt-get update -q").rc == 0


def test_the_kernel_update_was_followed(host):
    assert host.package("linux-headers-amd64").version == "6.1.1000-1"
    assert host.package("linux-headers-6.1.0-1000-amd64").is_installed


def test_fabric_manager_is_enabled_at_the_drivers_version(host):
    assert host.service("nvidia-fabricmanager").is_enabled
    assert "580.105.08" in host.check_output("nv-fabricmanager --version")


def test_persistence_mode_needs_no_drop_in_with_this_packaging(host):
    # NVIDIA's debian12 unit (like Debian's) runs nvidia-persistenced --user nvpd without
    # --no-persistence-mode: persistence mode is on already, so the role leaves the unit alone (Ubuntu's
    # unit, which turns it off, is covered by the unit tests of nvidia_persistenced_command).
    dropin = host.file("/etc/systemd/system/nvidia-persistenced.service.d/deepseek-persistence-mode.conf")
    assert not dropin.exists
    shown = host.check_output("systemctl show -p ExecStart nvidia-persistenced")
    assert "--user nvpd" in shown, shown
    assert "--no-persistence-mode" not in shown, shown
    assert host.service("nvidia-persistenced").is_enabled
