"""nvidia_host_facts: facts read from sysfs/procfs trees shaped like real hosts."""

from pathlib import Path

import pytest
from ansible_collections.deepseek.cluster.plugins.module_utils.nvidia_host import (
    host_facts,
    nvlink5_ports,
    open_module_capable,
    peer_memory_supported,
)
from conftest import FIXTURES

BANNERS = FIXTURES / "nvidia-host"
EFI_GUID = "8be4df61-93ca-11d2-aa0d-00e098032b8c"


def pci(root: Path, bus_id: str, vendor: str, device: str, klass: str) -> None:
    d = root / "sys/bus/pci/devices" / bus_id
    d.mkdir(parents=True)
    (d / "vendor").write_text(vendor + "\n")
    (d / "device").write_text(device + "\n")
    (d / "class").write_text(klass + "\n")


def hgx_h100(root: Path) -> Path:
    """An HGX H100 board: 8 GPUs (3D controller class), 4 NVSwitches, a Mellanox NIC."""
    for i in range(8):
        pci(root, f"0000:{0x18 + i * 0x10:02x}:00.0", "0x10de", "0x2330", "0x030200")
    for i in range(4):
        pci(root, f"0000:{0x05 + i:02x}:00.0", "0x10de", "0x22a3", "0x068000")
    pci(root, "0000:1a:00.0", "0x15b3", "0x101b", "0x020700")
    return root


def test_turing_is_the_first_open_capable_generation():
    assert open_module_capable("0x1eb8")  # T4
    assert open_module_capable("0x2330")  # H100
    assert not open_module_capable("0x1db1")  # V100
    assert not open_module_capable("0x15f8")  # P100


def test_hgx_h100_before_any_driver(tmp_path):
    facts = host_facts(str(hgx_h100(tmp_path)))
    assert facts["gpu_count"] == 8
    assert {g["device_id"] for g in facts["gpus"]} == {"0x2330"}
    assert facts["nvswitch_present"]
    assert len(facts["nvswitches"]) == 4
    assert facts["recommended_kernel_modules"] == "open"
    assert facts["kernel_module"] == {"loaded": False, "version": "", "flavor": ""}
    assert facts["secure_boot"] == "unsupported"
    assert facts["container"] == ""


def test_the_driver_list_of_nvswitches_wins_over_pci(tmp_path):
    root = hgx_h100(tmp_path)
    devices = root / "proc/driver/nvidia-nvswitch/devices"
    devices.mkdir(parents=True)
    for bus in ("0000:05:00.0", "0000:06:00.0"):
        (devices / bus).mkdir()
    assert host_facts(str(root))["nvswitches"] == ["0000:05:00.0", "0000:06:00.0"]


def test_pcie_board_without_nvswitch(tmp_path):
    for i in range(4):
        pci(tmp_path, f"0000:{0x31 + i:02x}:00.0", "0x10de", "0x20b0", "0x030200")
    facts = host_facts(str(tmp_path))
    assert facts["gpu_count"] == 4
    assert not facts["nvswitch_present"]


def test_one_volta_makes_the_whole_host_proprietary(tmp_path):
    pci(tmp_path, "0000:3b:00.0", "0x10de", "0x1eb8", "0x030200")
    pci(tmp_path, "0000:5e:00.0", "0x10de", "0x1db1", "0x030200")
    facts = host_facts(str(tmp_path))
    assert [g["open_module_capable"] for g in facts["gpus"]] == [True, False]
    assert facts["recommended_kernel_modules"] == "proprietary"


def test_nvidia_audio_function_is_not_a_gpu(tmp_path):
    pci(tmp_path, "0000:01:00.0", "0x10de", "0x2684", "0x030000")
    pci(tmp_path, "0000:01:00.1", "0x10de", "0x22ba", "0x040300")
    assert host_facts(str(tmp_path))["gpu_count"] == 1


@pytest.mark.parametrize(
    ("banner", "version", "flavor"),
    [
        ("proc-driver-nvidia-version-open-580.txt", "580.95.05", "open"),
        ("proc-driver-nvidia-version-proprietary-535.txt", "535.104.05", "proprietary"),
    ],
)
def test_loaded_module_version_and_flavor(tmp_path, banner, version, flavor):
    proc = tmp_path / "proc/driver/nvidia"
    proc.mkdir(parents=True)
    (proc / "version").write_text((BANNERS / banner).read_text())
    assert host_facts(str(tmp_path))["kernel_module"] == {"loaded": True, "version": version, "flavor": flavor}
    # sysfs, when present, is the authority for the version.
    mod = tmp_path / "sys/module/nvidia"
    mod.mkdir(parents=True)
    (mod / "version").write_text("1.2.3\n")
    assert host_facts(str(tmp_path))["kernel_module"]["version"] == "1.2.3"


@pytest.mark.parametrize(("value", "state"), [(1, "enabled"), (0, "disabled")])
def test_secure_boot_from_the_efi_variable(tmp_path, value, state):
    efivars = tmp_path / "sys/firmware/efi/efivars"
    efivars.mkdir(parents=True)
    (efivars / f"SecureBoot-{EFI_GUID}").write_bytes(bytes([6, 0, 0, 0, value]))
    assert host_facts(str(tmp_path))["secure_boot"] == state


def test_efi_without_the_variable_is_disabled(tmp_path):
    (tmp_path / "sys/firmware/efi").mkdir(parents=True)
    assert host_facts(str(tmp_path))["secure_boot"] == "disabled"


def test_nouveau(tmp_path):
    (tmp_path / "sys/module/nouveau").mkdir(parents=True)
    assert host_facts(str(tmp_path))["nouveau_loaded"]


@pytest.mark.parametrize(
    ("path", "content", "kind"),
    [
        ("run/systemd/container", "docker\n", "docker"),
        (".dockerenv", "", "docker"),
        ("run/.containerenv", "", "podman"),
        ("proc/1/environ", "PATH=/bin\0container=lxc\0", "lxc"),
    ],
)
def test_container_markers(tmp_path, path, content, kind):
    target = tmp_path / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(content)
    assert host_facts(str(tmp_path))["container"] == kind


def test_this_machine_answers_without_a_traceback():
    facts = host_facts("/")
    assert facts["gpu_count"] == len(facts["gpus"])
    assert facts["secure_boot"] in {"enabled", "disabled", "unsupported"}


# --- NVLink 5 switch management ports and the peer-memory API (research §15, §12) -------------------


def vpd(*keywords: tuple[str, str]) -> bytes:
    """PCI VPD bytes: identifier string (tag 0x82), read-only keywords (tag 0x90), end tag (0x78)."""
    ident = b"NVIDIA ConnectX-7 adapter"
    body = b"".join(k.encode() + bytes([len(v)]) + v.encode() for k, v in keywords)
    return (
        b"\x82" + len(ident).to_bytes(2, "little") + ident + b"\x90" + len(body).to_bytes(2, "little") + body + b"\x78"
    )


def rdma(root: Path, name: str, data: bytes | None) -> None:
    """/sys/class/infiniband/<name>/device, with its vpd file when ``data`` is given."""
    device = root / "sys/class/infiniband" / name / "device"
    device.mkdir(parents=True)
    if data is not None:
        (device / "vpd").write_bytes(data)


# gpu-driver-container _assert_nvlink5_system: grep -q "SW_MNG" /sys/class/infiniband/*/device/vpd.
SWITCH_PORT = vpd(("PN", "MCX750500B-0D00"), ("VA", "MLX:MN=MLNX:CSKU=V2:UUID=V3:PCI=V0:SMDL=SW_MNG"))
NIC_PORT = vpd(("PN", "MCX755106AS-HEAT"), ("VA", "MLX:MN=MLNX:CSKU=V2:UUID=V3:PCI=V0:MODL=CX755106A"))


def hgx_b200(root: Path) -> Path:
    """A Blackwell HGX board: 8 B200 (0x2901), NVSwitches only behind a ConnectX management port."""
    for i in range(8):
        pci(root, f"0000:{0x18 + i * 0x10:02x}:00.0", "0x10de", "0x2901", "0x030200")
    rdma(root, "mlx5_0", SWITCH_PORT)
    rdma(root, "mlx5_1", NIC_PORT)
    return root


def test_nvlink5_ports_are_the_rdma_devices_whose_vpd_says_sw_mng(tmp_path):
    root = hgx_b200(tmp_path)
    assert b"SW_MNG" in SWITCH_PORT
    assert b"SW_MNG" not in NIC_PORT
    assert nvlink5_ports(str(root), ["mlx5_0", "mlx5_1"]) == ["mlx5_0"]
    # A device without a vpd file (a soft-RoCE rxe0, say) and an unknown name are not switch ports.
    rdma(root, "rxe0", None)
    assert nvlink5_ports(str(root), ["rxe0", "mlx5_9"]) == []


def test_hgx_b200_switches_come_from_the_management_port(tmp_path):
    facts = host_facts(str(hgx_b200(tmp_path)), cpu="x86_64")
    assert facts["gpu_count"] == 8
    assert facts["nvswitch_present"] is True
    assert facts["nvswitches"] == ["mlx5_0"]
    assert facts["nvlink5_switch_ports"] == ["mlx5_0"]
    # The management port is no network adapter for GPUDirect RDMA.
    assert facts["infiniband"] == ["mlx5_1"]
    assert facts["requires_open_modules"] is True


def test_hgx_h100_keeps_its_pci_nvswitches_and_every_rdma_device(tmp_path):
    root = hgx_h100(tmp_path)
    rdma(root, "mlx5_0", NIC_PORT)
    facts = host_facts(str(root), cpu="x86_64")
    assert facts["nvswitches"] == ["0000:05:00.0", "0000:06:00.0", "0000:07:00.0", "0000:08:00.0"]
    assert facts["nvlink5_switch_ports"] == []
    assert facts["infiniband"] == ["mlx5_0"]


KALLSYMS_MOFED = (
    "ffffffffc0a10000 t ib_uverbs_open\t[ib_uverbs]\n"
    "ffffffffc08f3c20 T ib_register_peer_memory_client\t[ib_core]\n"
    "ffffffffc08f3d90 T ib_unregister_peer_memory_client\t[ib_core]\n"
    "ffffffffc08e1000 T ib_register_client\t[ib_core]\n"
)
# An inbox kernel's ib_core exports no peer-memory API (research §12: conftest.sh ib_peer_memory_symbols).
KALLSYMS_INBOX = "ffffffffc08e1000 T ib_register_client\t[ib_core]\nffffffffc08e2000 T ib_register_device\t[ib_core]\n"


@pytest.mark.parametrize(
    ("kallsyms", "supported"),
    [
        (KALLSYMS_MOFED, True),
        (KALLSYMS_INBOX, False),
        # Only the unregister half: not the symbol nvidia-peermem registers with.
        ("ffffffffc08f3d90 T ib_unregister_peer_memory_client\t[ib_core]\n", False),
        (None, False),  # no proc/kallsyms at all
    ],
    ids=["mofed", "inbox", "unregister-only", "missing"],
)
def test_peer_memory_supported_from_kallsyms(tmp_path, kallsyms, supported):
    if kallsyms is not None:
        (tmp_path / "proc").mkdir()
        (tmp_path / "proc/kallsyms").write_text(kallsyms)
    assert peer_memory_supported(str(tmp_path)) is supported
    assert host_facts(str(tmp_path), cpu="x86_64")["peer_memory_supported"] is supported
