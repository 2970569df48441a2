"""nvidia_container_toolkit's GPU path on a stand-in GPU node (see ../prepare.yml and ../side_effect.yml).

The role saw one GPU with a loaded module (a sysfs/procfs tree under /srv/fake-gpu), installed the toolkit
from the signed stand-in repository, made the control device nodes before generating the CDI spec,
registered the nvidia runtime with the stand-in docker (restarting it only when daemon.json changed),
and put nvidia as the default runtime and docker's CDI support on and took both back off again.
"""

import json

import pytest
import yaml

PACKAGES = [
    "nvidia-container-toolkit",
    "nvidia-container-toolkit-base",
    "libnvidia-container-tools",
    "libnvidia-container1",
]
GPU_UUID = "GPU-9b5c7d0e-1f2a-4b3c-8d4e-5f6a7b8c9d0e"
CONTROL_NODES = {"/dev/nvidiactl": 255, "/dev/nvidia-modeset": 254, "/dev/nvidia-uvm": 0, "/dev/nvidia-uvm-tools": 1}
PHASES = "/var/lib/ctk-standin-phases"
RUNTIMES = {"nvidia": {"args": [], "path": "nvidia-container-runtime"}}
OPERATOR = {"features": {"containerd-snapshotter": True}, "log-driver": "json-file"}


def go_json(value) -> str:
    """What nvidia-ctk writes: Go's json.MarshalIndent(value, "", "    ") (ASCII, no <, > or &)."""
    return json.dumps(value, indent=4, sort_keys=True)


def phase(host, name, what):
    return host.file(f"{PHASES}/{name}.{what}").content_string


def starts(host, name):
    """The stand-in dockerd's starts up to a phase: one JSON line each (time, pid, sha256, config)."""
    return [json.loads(line) for line in phase(host, name, "dockerd-standin.log").splitlines()]


def test_the_host_has_no_real_gpu_only_the_stand_in_tree(host):
    vendors = host.run("cat /sys/bus/pci/devices/*/vendor 2>/dev/null").stdout.split()
    assert "0x10de" not in vendors
    assert host.file("/srv/fake-gpu/sys/bus/pci/devices/0000:18:00.0/vendor").content_string.strip() == "0x10de"


@pytest.mark.parametrize("name", PACKAGES)
def test_toolkit_package_installed_at_the_pinned_release_and_held(host, name):
    assert host.package(name).version == "1.18.1-1"
    assert host.check_output(f"dpkg --get-selections {name}").split()[1] == "hold"


def test_nvidia_ctk_is_the_packages(host):
    assert host.check_output("nvidia-ctk --version").splitlines()[0] == "NVIDIA Container Toolkit CLI version 1.18.1"


def test_control_device_nodes_are_character_devices_with_the_drivers_numbers(host):
    devices = host.file("/srv/fake-gpu/proc/devices").content_string
    # nvidia-uvm has a dynamic major; it is in proc/devices only since the role had nvidia-ctk load it.
    uvm_major = next(int(line.split()[0]) for line in devices.splitlines() if line.endswith(" nvidia-uvm"))
    for path, minor in CONTROL_NODES.items():
        kind, mode, major_hex, minor_hex = host.check_output(f"stat -c '%F|%a|%t|%T' {path}").split("|")
        assert (kind, mode) == ("character special file", "666"), path
        assert (int(major_hex, 16), int(minor_hex, 16)) == (uvm_major if "uvm" in path else 195, minor), path


def test_device_nodes_were_made_before_the_first_spec_was_generated(host):
    calls = [
        json.loads(line)["argv"][1:]
        for line in host.file("/var/log/nvidia-ctk-standin.log").content_string.splitlines()
    ]
    create = calls.index(["system", "create-device-nodes", "--control-devices", "--load-kernel-modules"])
    generate = calls.index(["cdi", "generate"])
    assert create < generate


def test_cdi_spec_offers_the_gpu_with_the_control_nodes(host):
    spec = yaml.safe_load(host.file("/etc/cdi/nvidia.yaml").content_string)
    assert spec["kind"] == "nvidia.com/gpu"
    assert [d["name"] for d in spec["devices"]] == ["0", GPU_UUID, "all"]
    assert {n["path"] for n in spec["containerEdits"]["deviceNodes"]} == set(CONTROL_NODES)
    all_device = next(d for d in spec["devices"] if d["name"] == "all")
    assert all_device["containerEdits"]["deviceNodes"] == [{"path": "/dev/nvidia0"}]
    listed = host.check_output("nvidia-ctk cdi list --spec-dir=/etc/cdi").split()
    assert "nvidia.com/gpu=all" in listed


def test_nvidia_cdi_refresh_is_kept_enabled(host):
    for unit in ("nvidia-cdi-refresh.path", "nvidia-cdi-refresh.service"):
        assert host.service(unit).is_enabled, unit
    assert host.service("nvidia-cdi-refresh.path").is_running


def test_converge_registered_the_runtime_and_restarted_docker_once(host):
    assert phase(host, "1-converged", "daemon.json") == go_json({**OPERATOR, "runtimes": RUNTIMES})
    log = starts(host, "1-converged")
    # prepare started it; converge restarted it once; the idempotence run did not.
    assert len(log) == 2
    assert "runtimes" not in log[0]["config"]
    assert log[1]["config"]["runtimes"] == RUNTIMES


def test_options_on_set_the_default_runtime_and_cdi_and_restart_docker(host):
    assert json.loads(phase(host, "2-on", "daemon.json")) == {
        "default-runtime": "nvidia",
        "features": {"cdi": True, "containerd-snapshotter": True},
        "log-driver": "json-file",
        "runtimes": RUNTIMES,
    }
    assert json.loads(phase(host, "2-on", "restart.json")) == ["docker"]
    log = starts(host, "2-on")
    assert len(log) == 3
    assert log[2]["config"]["default-runtime"] == "nvidia"


def test_options_on_again_change_nothing(host):
    assert phase(host, "3-on-again", "daemon.json") == phase(host, "2-on", "daemon.json")
    assert json.loads(phase(host, "3-on-again", "restart.json")) == []
    assert len(starts(host, "3-on-again")) == 3


def test_options_off_again_take_both_back_and_restart_docker(host):
    assert phase(host, "4-off", "daemon.json") == phase(host, "1-converged", "daemon.json")
    assert json.loads(phase(host, "4-off", "restart.json")) == ["docker"]
    log = starts(host, "4-off")
    assert len(log) == 4
    assert log[3]["config"] == {**OPERATOR, "runtimes": RUNTIMES}
    assert host.service("docker").is_running


def test_check_mode_leaves_a_missing_node_missing_and_a_real_run_makes_it(host):
    assert json.loads(phase(host, "5-check", "node.json")) == {"exists": False, "said": True}
    # The final state (checked above for all four nodes) comes from the real run after it; docker was
    # not restarted by either run.
    assert len(starts(host, "5-restored")) == 4
    assert json.loads(phase(host, "5-restored", "restart.json")) == []
    assert phase(host, "5-restored", "daemon.json") == phase(host, "4-off", "daemon.json")
