"""dcgm_exporter on a Debian 12 container without a GPU: validated, skipped, nothing written."""

import pytest

PACKAGES = [
    "datacenter-gpu-manager-4-core",
    "datacenter-gpu-manager-4-proprietary",
    "datacenter-gpu-manager-exporter",
]


def test_the_host_really_has_no_nvidia_gpu(host):
    # Precondition of this scenario: no PCI function of vendor 0x10de, no driver control node.
    vendors = host.run("cat /sys/bus/pci/devices/*/vendor 2>/dev/null").stdout.split()
    assert "0x10de" not in vendors
    assert not host.file("/dev/nvidiactl").exists


@pytest.mark.parametrize(
    "path",
    [
        "/etc/deepseek/dcgm-exporter",
        "/etc/systemd/system/nvidia-dcgm-exporter.service.d/deepseek.conf",
        "/etc/systemd/system/dcgm-exporter.service",
        "/var/lib/node_exporter/textfile_collector/deepseek_gpu.prom",
        "/etc/apt/sources.list.d/cuda.sources",
        "/etc/apt/preferences.d/cuda-repository-pin-600",
    ],
)
def test_nothing_was_written(host, path):
    assert not host.file(path).exists


@pytest.mark.parametrize("name", PACKAGES)
def test_no_dcgm_package_installed(host, name):
    assert not host.package(name).is_installed


def test_no_exporter_listens(host):
    assert not host.exists("dcgm-exporter")
    assert not host.socket("tcp://0.0.0.0:9400").is_listening
    assert not host.socket("tcp://:::9400").is_listening
