# Copyright: deepseek.cluster contributors
# Apache License 2.0 (see LICENSE)
"""Read what a host's kernel says about its NVIDIA hardware, without needing a driver.

Everything comes from sysfs and procfs under a root directory (``/`` on a live host, a fixture
tree in tests): PCI functions of vendor 0x10de (GPUs and NVSwitches), the loaded ``nvidia`` kernel
module and its flavour, ``nouveau``, Secure Boot state from the EFI variable, and whether the host
is a container. Nothing here runs a program, so it answers before any driver is installed.
"""

from __future__ import annotations

import os
from typing import Any

NVIDIA_VENDOR = "0x10de"
# PCI class codes (class << 16 | subclass << 8 | prog-if): VGA and 3D controllers are GPUs,
# "bridge, other" functions of NVIDIA are NVSwitches.
GPU_CLASSES = ("0x0300", "0x0302")
NVSWITCH_CLASS = "0x0680"
# Turing (TU10x/TU11x) starts at device id 0x1e00; every later architecture has higher ids.
# Maxwell, Pascal and Volta (GV100 is 0x1db*) sit below and need the proprietary modules.
FIRST_OPEN_MODULE_DEVICE_ID = 0x1E00
SECURE_BOOT_VAR = "sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"
CONTAINER_MARKERS = {".dockerenv": "docker", "run/.containerenv": "podman"}


def _read(root: str, rel: str) -> str | None:
    """Text of root/rel stripped, or None when it is missing or unreadable."""
    try:
        with open(os.path.join(root, rel), encoding="utf-8", errors="replace") as handle:
            return handle.read().strip()
    except OSError:
        return None


def _read_bytes(root: str, rel: str) -> bytes | None:
    try:
        with open(os.path.join(root, rel), "rb") as handle:
            return handle.read()
    except OSError:
        return None


# GPU architecture by the first byte of the PCI device id (NVIDIA assigns id blocks per chip family;
# checked against every row of open-gpu-kernel-modules' compatible-GPU table,
# tests/fixtures/nvidia-facts/open-gpu-kernel-modules-gpus.tsv). Later blocks are Blackwell or newer.
ARCHITECTURE_BY_ID_BLOCK = {
    0x1E: "turing",
    0x1F: "turing",
    0x20: "ampere",
    0x21: "turing",
    0x22: "ampere",
    0x23: "hopper",
    0x24: "ampere",
    0x25: "ampere",
    0x26: "ada",
    0x27: "ada",
    0x28: "ada",
}
FIRST_BLACKWELL_ID_BLOCK = 0x29


def architecture(device_id: str) -> str:
    """GPU architecture of a PCI device id: turing ... blackwell, or "pre-turing"."""
    value = int(device_id, 16)
    if value < FIRST_OPEN_MODULE_DEVICE_ID:
        return "pre-turing"
    block = value >> 8
    if block >= FIRST_BLACKWELL_ID_BLOCK:
        return "blackwell"
    return ARCHITECTURE_BY_ID_BLOCK.get(block, "unknown")


# Grace Hopper superchips' GPU ids (the driver's detect-self-hosted.h: 0x2340-0x237f).
GRACE_HOPPER_IDS = range(0x2340, 0x2380)


def requires_open_modules(device_ids: list[str], cpu: str) -> bool:
    """NVIDIA supports only the open modules on Blackwell and on Grace Hopper (GH200, or Hopper on Arm)."""
    arches = {architecture(d) for d in device_ids}
    grace_hopper = any(int(d, 16) in GRACE_HOPPER_IDS for d in device_ids) or ("hopper" in arches and cpu == "aarch64")
    return "blackwell" in arches or grace_hopper


def open_module_capable(device_id: str) -> bool:
    """Whether a GPU of this PCI device id (``0x2330``) runs NVIDIA's open kernel modules."""
    return int(device_id, 16) >= FIRST_OPEN_MODULE_DEVICE_ID


def pci_functions(root: str) -> list[dict[str, str]]:
    """NVIDIA PCI functions: bus id, device id and class, sorted by bus id."""
    base = os.path.join(root, "sys/bus/pci/devices")
    try:
        entries = sorted(os.listdir(base))
    except OSError:
        return []
    found = []
    for bus_id in entries:
        rel = os.path.join("sys/bus/pci/devices", bus_id)
        if (_read(root, rel + "/vendor") or "").lower() != NVIDIA_VENDOR:
            continue
        found.append(
            {
                "pci_bus_id": bus_id,
                "device_id": (_read(root, rel + "/device") or "").lower(),
                "class": (_read(root, rel + "/class") or "").lower(),
            }
        )
    return found


def gpus(functions: list[dict[str, str]]) -> list[dict[str, Any]]:
    """The GPUs among NVIDIA PCI functions, with open-module capability per GPU."""
    return [
        {
            "pci_bus_id": f["pci_bus_id"],
            "device_id": f["device_id"],
            "open_module_capable": open_module_capable(f["device_id"]),
            "architecture": architecture(f["device_id"]),
        }
        for f in functions
        if f["class"][:6] in GPU_CLASSES
    ]


def nvswitches(root: str, functions: list[dict[str, str]]) -> list[str]:
    """NVSwitch devices: the driver's device list when it is loaded, else PCI bridge functions."""
    try:
        listed = sorted(os.listdir(os.path.join(root, "proc/driver/nvidia-nvswitch/devices")))
    except OSError:
        listed = []
    if listed:
        return listed
    return [f["pci_bus_id"] for f in functions if f["class"][:6] == NVSWITCH_CLASS]


def kernel_module(root: str) -> dict[str, Any]:
    """The loaded nvidia module: version and flavour (open or proprietary), or not loaded."""
    version = _read(root, "sys/module/nvidia/version")
    banner = _read(root, "proc/driver/nvidia/version") or ""
    flavor = ""
    if version or banner:
        flavor = "open" if "Open Kernel Module" in banner else "proprietary"
    if not version and banner:
        version = next((w for w in banner.split() if w.count(".") >= 1 and w.replace(".", "").isdigit()), None)
    return {"loaded": bool(version), "version": version or "", "flavor": flavor}


def secure_boot(root: str) -> str:
    """``enabled``, ``disabled`` or ``unsupported`` (no EFI: legacy BIOS boot or no efivarfs)."""
    if not os.path.isdir(os.path.join(root, "sys/firmware/efi")):
        return "unsupported"
    data = _read_bytes(root, SECURE_BOOT_VAR)
    # efivarfs files start with 4 bytes of attributes; the fifth byte is the variable's value.
    if data is None or len(data) < 5:
        return "disabled"
    return "enabled" if data[4] == 1 else "disabled"


def container(root: str) -> str:
    """The container technology the host runs in, or "" on bare metal and VMs."""
    marker = _read(root, "run/systemd/container")
    if marker:
        return marker
    for rel, kind in CONTAINER_MARKERS.items():
        if os.path.exists(os.path.join(root, rel)):
            return kind
    environ = _read_bytes(root, "proc/1/environ") or b""
    for entry in environ.split(b"\0"):
        if entry.startswith(b"container="):
            return entry.split(b"=", 1)[1].decode(errors="replace") or "container"
    return ""


def infiniband(root: str) -> list[str]:
    """RDMA devices (mlx5_0, ...) the kernel has registered, NVLink management ports included."""
    try:
        return sorted(os.listdir(os.path.join(root, "sys/class/infiniband")))
    except OSError:
        return []


def nvlink5_ports(root: str, devices: list[str]) -> list[str]:
    """RDMA devices that are NVLink 5 switch management ports: their VPD carries SW_MNG.

    On NVLink 5 boards (Blackwell HGX) the NVSwitches are managed through ConnectX ports, not PCI bridge
    functions; NVIDIA's driver container detects them this way (gpu-driver-container, _assert_nvlink5_system).
    """
    return [d for d in devices if b"SW_MNG" in (_read_bytes(root, f"sys/class/infiniband/{d}/device/vpd") or b"")]


def peer_memory_supported(root: str) -> bool:
    """Whether the RDMA stack exports the peer-memory API nvidia-peermem needs (MLNX_OFED/DOCA kernels).

    Without ib_register_peer_memory_client, loading nvidia-peermem fails with EINVAL (open-gpu-kernel-modules,
    nvidia-peermem.c).
    """
    return b"ib_register_peer_memory_client" in (_read_bytes(root, "proc/kallsyms") or b"")


def host_facts(root: str = "/", cpu: str = "") -> dict[str, Any]:
    """All facts the GPU node roles decide on, read under ``root`` (``cpu``: uname machine)."""
    functions = pci_functions(root)
    gpu_list = gpus(functions)
    rdma = infiniband(root)
    nvlink5 = nvlink5_ports(root, rdma)
    switches = nvswitches(root, functions) or nvlink5
    capable = [g["open_module_capable"] for g in gpu_list]
    architectures = sorted({g["architecture"] for g in gpu_list})
    cpu = cpu or os.uname().machine
    return {
        "architectures": architectures,
        "requires_open_modules": requires_open_modules([g["device_id"] for g in gpu_list], cpu),
        # RDMA devices for GPUDirect RDMA: NVLink management ports are not network adapters.
        "infiniband": [d for d in rdma if d not in nvlink5],
        "nvlink5_switch_ports": nvlink5,
        "peer_memory_supported": peer_memory_supported(root),
        "container": container(root),
        "gpus": gpu_list,
        "gpu_count": len(gpu_list),
        "nvswitches": switches,
        "nvswitch_present": bool(switches),
        # Open modules need every GPU of the host to be Turing or newer; with no GPU visible, open
        # (NVIDIA's default since R560) is the sensible choice.
        "recommended_kernel_modules": "open" if all(capable) else "proprietary",
        "kernel_module": kernel_module(root),
        "nouveau_loaded": os.path.isdir(os.path.join(root, "sys/module/nouveau")),
        "secure_boot": secure_boot(root),
    }
