"""GPU architecture from the PCI device id, checked on every row of NVIDIA's compatible-GPU table.

tests/fixtures/nvidia-facts/open-gpu-kernel-modules-gpus.tsv holds every row of the "Compatible GPUs"
table of NVIDIA/open-gpu-kernel-modules' README (research §1): device id and product name. The product
name says the family for most rows (the keyword map below, written from research §1 and §3); the rows
whose name does not (or misleads) are listed in EXCEPTIONS with the chip pci.ids gives for the id
(pciutils/pciids @ c1c12547, research §1).
"""

import os
import re
from pathlib import Path

import pytest
from ansible_collections.deepseek.cluster.plugins.module_utils.nvidia_host import (
    architecture,
    host_facts,
    infiniband,
    requires_open_modules,
)

TABLE = Path(__file__).resolve().parents[2] / "fixtures" / "nvidia-facts" / "open-gpu-kernel-modules-gpus.tsv"
ROWS = [tuple(line.split("\t")) for line in TABLE.read_text().splitlines() if line and not line.startswith("#")]

# Product-name keywords -> architecture, most specific first.
KEYWORDS = [
    (r"Blackwell|\bG?B(100|200|300)\b|\bGB10\b|GeForce RTX 50\d0", "blackwell"),
    (r"\bG?H(100|200|800|20)\b", "hopper"),
    (r"\bAda\b|\bL(2|4|20|40)S?\b|GeForce RTX 40\d0", "ada"),
    (r"\bA(100|800|30)\b", "ampere"),  # GA100
    (r"\bA(2|10|10G|10M|16|40)\b|GeForce RTX 30\d0|\bRTX A\d", "ampere"),  # GA10x
    (r"\bT4\b|\bT\d{3,4}E?\b|GeForce RTX 20\d0|Quadro RTX|GTX 16\d0|TITAN RTX", "turing"),
]

# Rows the keywords cannot classify (or classify wrongly): product -> (chip from pci.ids, architecture).
EXCEPTIONS = {
    "NVIDIA GeForce RTX 2050": ("GA107 (0x25a7, 0x25a9, 0x25ad, 0x25ed), an Ampere part named like Turing", "ampere"),
    "NVIDIA GeForce RTX 3050 A Laptop GPU": ("AD106M / AD107M (0x2822, 0x28a3, 0x28e3), an Ada part", "ada"),
    "NVIDIA GeForce MX450": ("TU117M", "turing"),
    "NVIDIA GeForce MX550": ("TU117M", "turing"),
    "NVIDIA GeForce MX570": ("GA107M", "ampere"),
    "NVIDIA GeForce MX570 A": ("GA107M", "ampere"),
    "NVIDIA CMP 30HX": ("TU116", "turing"),
    "NVIDIA CMP 40HX": ("TU106", "turing"),
    "NVIDIA CMP 50HX": ("TU102", "turing"),
    "NVIDIA CMP 70HX": ("GA104", "ampere"),
    "NVIDIA CMP 90HX": ("GA102", "ampere"),
    "Matrox D-Series D2450": ("TU106GLM (0x1f76)", "turing"),
    "Matrox D-Series D2480": ("TU106GLM (0x1f76)", "turing"),
    "NVIDIA DGX Display": ("TU117GLM (0x1fb0)", "turing"),
    "NVIDIA PG506-232": ("GA100GL", "ampere"),
    "NVIDIA PG509-210": ("GA100", "ampere"),
    "NVIDIA AX800": ("GA100 [AX800 Converged Accelerator]", "ampere"),
    "NVIDIA DRIVE P2021": ("GB102 (0x29bb), research §1 exception 2", "blackwell"),
    "NVIDIA RTX 6000D": ("GB202GL (0x2bb9)", "blackwell"),
}


def expected(product: str) -> str | None:
    """The architecture the product name (or the exception list) says, or None."""
    if product in EXCEPTIONS:
        return EXCEPTIONS[product][1]
    for pattern, arch in KEYWORDS:
        if re.search(pattern, product):
            return arch
    return None


def test_the_table_is_complete():
    # research §1: 825 rows, 289 distinct device ids, 0x2342 three times.
    assert len(ROWS) == 825
    assert len({d for d, _name in ROWS}) == 289
    assert sum(1 for d, _name in ROWS if d == "0x2342") == 3


def test_every_row_is_classified_by_the_keywords_or_an_exception():
    unclassified = sorted({p for _dev, p in ROWS if expected(p) is None})
    assert unclassified == [], f"rows the keyword map cannot classify: {unclassified}"
    unused = sorted(set(EXCEPTIONS) - {p for _dev, p in ROWS})
    assert unused == [], f"exceptions that match no row: {unused}"


def test_every_row_of_the_table_agrees_with_its_product_name():
    wrong = [(d, p, architecture(d), expected(p)) for d, p in ROWS if architecture(d) != expected(p)]
    assert wrong == []


def test_every_table_id_runs_the_open_modules():
    # The README: "can be used on any Turing or later GPU" -- none of the table is pre-Turing.
    assert {architecture(d) for d, _name in ROWS} == {"turing", "ampere", "ada", "hopper", "blackwell"}


@pytest.mark.parametrize(
    ("device_id", "arch"),
    [
        ("0x1db1", "pre-turing"),  # V100 (GV100)
        ("0x15f8", "pre-turing"),  # P100
        ("0x1eb8", "turing"),  # T4
        ("0x20b5", "ampere"),  # A100 80GB PCIe
        ("0x2330", "hopper"),  # H100 80GB HBM3
        ("0x2342", "hopper"),  # GH200
        ("0x26b9", "ada"),  # L40S
        ("0x2901", "blackwell"),  # B200
        ("0x3182", "blackwell"),  # B300 (GB110, research §1 exception 3)
        ("0x31c2", "blackwell"),  # GB300
        ("0x2e12", "blackwell"),  # GB10
    ],
)
def test_known_ids(device_id, arch):
    assert architecture(device_id) == arch


# --- which hosts must run the open modules (research §3) -----------------------------------------

BLACKWELL_IDS = sorted({d for d, p in ROWS if expected(p) == "blackwell"})


@pytest.mark.parametrize("cpu", ["x86_64", "aarch64"])
def test_every_blackwell_id_requires_the_open_modules(cpu):
    # "For cutting-edge platforms such as NVIDIA Grace Hopper or NVIDIA Blackwell, you must use the
    # open-source GPU kernel modules."
    assert len(BLACKWELL_IDS) == 46
    assert {"0x2901", "0x2941", "0x29bb", "0x2e12", "0x3182", "0x31c2"} <= set(BLACKWELL_IDS)
    assert [d for d in BLACKWELL_IDS if not requires_open_modules([d], cpu)] == []


@pytest.mark.parametrize("cpu", ["x86_64", "aarch64"])
@pytest.mark.parametrize("device_id", ["0x2342", "0x2348"])
def test_grace_hopper_requires_the_open_modules(device_id, cpu):
    # detect-self-hosted.h: 0x2340-0x237f is GH100 self-hosted (GH200).
    assert requires_open_modules([device_id], cpu)


def test_h100_on_x86_may_run_either_flavour_but_not_on_arm():
    assert not requires_open_modules(["0x2330"], "x86_64")
    assert requires_open_modules(["0x2330"], "aarch64")
    assert not requires_open_modules(["0x20b5", "0x26b9", "0x1eb8"], "x86_64")
    assert not requires_open_modules([], "aarch64")
    # One Blackwell GPU among others is enough.
    assert requires_open_modules(["0x2330", "0x2901"], "x86_64")


# --- host facts: architectures, the requirement, RDMA devices ----------------------------------------


def _gpu(root: Path, bus_id: str, device: str) -> None:
    d = root / "sys/bus/pci/devices" / bus_id
    d.mkdir(parents=True)
    (d / "vendor").write_text("0x10de\n")
    (d / "device").write_text(device + "\n")
    (d / "class").write_text("0x030200\n")


def test_host_facts_of_a_gb200_tray(tmp_path):
    for i in range(4):
        _gpu(tmp_path, f"0008:0{i}:00.0", "0x2941")
    for dev in ("mlx5_1", "mlx5_0"):
        (tmp_path / "sys/class/infiniband" / dev).mkdir(parents=True)
    facts = host_facts(str(tmp_path), "aarch64")
    assert facts["architectures"] == ["blackwell"]
    assert facts["requires_open_modules"]
    assert facts["infiniband"] == ["mlx5_0", "mlx5_1"]
    assert infiniband(str(tmp_path)) == ["mlx5_0", "mlx5_1"]
    # No VPD with SW_MNG (research §15): both are network ports, no NVLink switch is managed from here.
    assert facts["nvlink5_switch_ports"] == []
    assert not facts["nvswitch_present"]


def test_infiniband_devices_are_sorted_whatever_the_directory_order(tmp_path, monkeypatch):
    for dev in ("mlx5_0", "mlx5_1", "mlx5_2"):
        (tmp_path / "sys/class/infiniband" / dev).mkdir(parents=True)
    listdir = os.listdir
    monkeypatch.setattr(os, "listdir", lambda path: sorted(listdir(path), reverse=True))
    assert infiniband(str(tmp_path)) == ["mlx5_0", "mlx5_1", "mlx5_2"]


def test_host_facts_of_an_x86_h100_host_without_rdma(tmp_path):
    _gpu(tmp_path, "0000:18:00.0", "0x2330")
    _gpu(tmp_path, "0000:2a:00.0", "0x20b5")
    facts = host_facts(str(tmp_path), "x86_64")
    assert facts["architectures"] == ["ampere", "hopper"]
    assert not facts["requires_open_modules"]
    assert facts["infiniband"] == []
    assert host_facts(str(tmp_path), "aarch64")["requires_open_modules"]
