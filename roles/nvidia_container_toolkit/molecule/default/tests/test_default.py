"""nvidia_container_toolkit on a Debian 12 container without a GPU: validated, skipped, nothing written."""

import pytest

PACKAGES = [
    "nvidia-container-toolkit",
    "nvidia-container-toolkit-base",
    "libnvidia-container-tools",
    "libnvidia-container1",
]


def test_the_host_really_has_no_nvidia_gpu(host):
    # Precondition of this scenario: no PCI function of vendor 0x10de is visible.
    vendors = host.run("cat /sys/bus/pci/devices/*/vendor 2>/dev/null").stdout.split()
    assert "0x10de" not in vendors


@pytest.mark.parametrize(
    "path",
    [
        "/etc/apt/sources.list.d/nvidia-container-toolkit.sources",
        "/etc/apt/keyrings/nvidia-container-toolkit.asc",
        "/etc/cdi/nvidia.yaml",
        "/var/run/cdi/nvidia.yaml",
        "/etc/docker/daemon.json",
    ],
)
def test_nothing_was_written(host, path):
    assert not host.file(path).exists


@pytest.mark.parametrize("name", PACKAGES)
def test_no_toolkit_package_installed(host, name):
    assert not host.package(name).is_installed


def test_nvidia_ctk_absent(host):
    assert not host.exists("nvidia-ctk")
