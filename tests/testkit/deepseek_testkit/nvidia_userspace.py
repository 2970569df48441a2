"""Checks every nvidia_driver scenario shares: the driver's user space in a container.

No kernel module can be loaded there. Scenario test files import these test functions, so pytest runs
them in that scenario, against its hosts.
"""


def test_persistenced_unit_enabled_not_running(host):
    service = host.service("nvidia-persistenced")
    assert service.is_enabled
    assert not service.is_running  # no /dev/nvidiactl in a container


def test_nvidia_smi_reaches_nvml_and_finds_no_driver(host):
    # nvidia-smi exits 255 without a driver, the status ssh keeps for its own failures (testinfra's SSH
    # backend raises on it): its status travels in the output instead.
    result = host.run('nvidia-smi 2>&1; echo "nvidia-smi exit status $?"')
    assert result.rc == 0
    status = int(result.stdout.rsplit("nvidia-smi exit status ", 1)[1])
    assert status != 0
    assert "NVML" in result.stdout
