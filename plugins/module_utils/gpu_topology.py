# Copyright: deepseek.cluster contributors
# Apache License 2.0 (see LICENSE)
"""Parse ``nvidia-smi topo -m`` and ``nvidia-smi -q -x`` output into topology facts.

Pure Python, no Ansible imports: the module ``deepseek.cluster.gpu_topology`` and the
planner both use it, and unit tests feed it real captured outputs.

Facts (see ``build_facts``):
  gpus            one dict per GPU: index, name, uuid, memory_mib, pci_bus_id, numa_node,
                  cpu_affinity (list of CPU ids), nearest_nics (ranked PIX < PXB < PHB < NODE < SYS)
  links           {"GPU0": {"GPU1": "NV18", "NIC0": "PIX", ...}, ...} as printed
  nvlink_domains  connected components of GPUs over NVLink (lists of GPU indices)
  nvlink_cliques  maximal sets of GPUs that are all NVLink-connected pairwise
  nvswitch        whether an NVSwitch fabric is present, and nvswitch_evidence saying why
  nics            NIC names in column order (legend names such as mlx5_0 where given)
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET  # noqa: S405 (parses nvidia-smi's own output)
from typing import Any, Iterable

# Path types, nearest first. SOC is the name older drivers printed for SYS.
PCIE_RANK = {"X": 0, "PIX": 1, "PXB": 2, "PHB": 3, "NODE": 4, "SYS": 5}
LEGACY_CODES = {"SOC": "SYS"}
NVLINK_RE = re.compile(r"^NV(\d+)$")
GPU_RE = re.compile(r"^GPU(\d+)$")
AFFINITY_COLUMNS = (
    ("CPU Affinity", "cpu_affinity"),
    ("NUMA Affinity", "numa_affinity"),
    ("GPU NUMA ID", "gpu_numa_id"),
)
NIC_LEGEND_RE = re.compile(r"^\s*(NIC\d+)\s*:\s*(\S+)\s*$")
# Eight GPUs or more, every pair joined by the same bonded NVLink count of at least this,
# is how NVSwitch baseboards (HGX A100 NV12, HGX H100/H200 NV18) print in `topo -m`.
NVSWITCH_MIN_LINKS = 12
NVSWITCH_MIN_GPUS = 8


class TopologyParseError(ValueError):
    """The text is not ``nvidia-smi topo -m`` output this parser understands."""


def link_rank(code: str) -> tuple[int, int]:
    """Sort key of a link code: NVLink first (more links nearer), then PCIe path types."""
    match = NVLINK_RE.match(code)
    if match:
        return (0, -int(match.group(1)))
    return (1, PCIE_RANK.get(code, len(PCIE_RANK)))


def nvlink_count(code: str) -> int:
    """Number of bonded NVLinks a link code stands for (0 for PCIe paths)."""
    match = NVLINK_RE.match(code)
    return int(match.group(1)) if match else 0


def parse_cpu_list(text: str | None) -> list[int]:
    """Expand a CPU list such as ``0-3,8,10-11`` into ``[0, 1, 2, 3, 8, 10, 11]``; N/A or blank gives []."""
    text = (text or "").strip()
    if not text or text.upper() == "N/A":
        return []
    cpus = []
    for part in text.split(","):
        bounds = part.split("-")
        if len(bounds) == 2 and bounds[0].isdigit() and bounds[1].isdigit():
            cpus.extend(range(int(bounds[0]), int(bounds[1]) + 1))
        elif part.isdigit():
            cpus.append(int(part))
        else:
            raise TopologyParseError(f"unreadable CPU list {text!r}")
    return cpus


def parse_numa(text: str | None) -> int | None:
    """NUMA node of a GPU: an int for ``1``; the first node for ``0-1``; None for N/A or blank."""
    text = (text or "").strip()
    if not text or text.upper() == "N/A":
        return None
    first = text.split(",")[0].split("-")[0]
    if not first.isdigit():
        raise TopologyParseError(f"unreadable NUMA affinity {text!r}")
    return int(first)


def _header_columns(line: str) -> list[tuple[str, int]]:
    """Column names and their start offsets in a (tab-expanded) header line."""
    columns = []
    tokens = list(re.finditer(r"\S+", line))
    i = 0
    while i < len(tokens):
        matched = False
        for title, key in AFFINITY_COLUMNS:
            words = title.split()
            window = [t.group(0) for t in tokens[i : i + len(words)]]
            if window == words:
                columns.append((key, tokens[i].start()))
                i += len(words)
                matched = True
                break
        if not matched:
            columns.append((tokens[i].group(0), tokens[i].start()))
            i += 1
    return columns


def _normalise_code(code: str, line: str) -> str:
    code = LEGACY_CODES.get(code, code)
    if code in PCIE_RANK or NVLINK_RE.match(code):
        return code
    raise TopologyParseError(f"unknown link type {code!r} in line {line.strip()!r}")


def _assign_trailing(tokens: list[re.Match], columns: list[tuple[str, int]]) -> dict[str, str]:
    """Map the tokens after the link codes to the affinity columns.

    When every column has a value they come in order. Blank fields (seen in containers, where
    CPU and NUMA affinity print empty) leave fewer tokens; each is then placed under the header
    column whose start is nearest at or before it.
    """
    values = {}
    names = [name for name, _start in columns]
    if len(tokens) == len(columns):
        for (name, _start), token in zip(columns, tokens):
            values[name] = token.group(0)
        return values
    if len(tokens) > len(columns):
        raise TopologyParseError("more values than columns ({})".format(", ".join(names)))
    for token in tokens:
        placed = [name for name, start in columns if start <= token.start() + 2]
        name = placed[-1] if placed else names[0]
        values[name] = token.group(0)
    return values


def parse_topo_matrix(text: str) -> dict[str, Any]:
    """Parse ``nvidia-smi topo -m`` text.

    Returns ``{"devices": [...], "links": {dev: {dev: code}}, "affinity": {gpu: {...}},
    "nic_legend": {"NIC0": "mlx5_0"}}``. Raises TopologyParseError on text it cannot read;
    returns empty devices when the text holds no matrix (no GPU).
    """
    lines = [line.expandtabs(8).rstrip() for line in text.splitlines()]
    header_at = None
    for number, line in enumerate(lines):
        tokens = line.split()
        # The header starts with GPU0 followed by another column name; a row starts GPU0 X.
        if tokens and tokens[0] == "GPU0" and (len(tokens) == 1 or tokens[1] != "X"):
            header_at = number
            break
    if header_at is None:
        return {"devices": [], "links": {}, "affinity": {}, "nic_legend": {}}

    columns = _header_columns(lines[header_at])
    affinity_keys = {key for _title, key in AFFINITY_COLUMNS}
    devices = [name for name, _start in columns if name not in affinity_keys]
    trailing = [(name, start) for name, start in columns if name not in devices]
    links = {}
    affinity = {}
    for line in lines[header_at + 1 :]:
        if not line.strip() or line.strip().startswith("Legend"):
            break
        tokens = list(re.finditer(r"\S+", line))
        name = tokens[0].group(0)
        if name not in devices:
            raise TopologyParseError(f"row {name!r} is not one of the header's devices {devices}")
        codes = [t.group(0) for t in tokens[1 : 1 + len(devices)]]
        if len(codes) != len(devices):
            raise TopologyParseError("row %r has %d link codes for %d devices" % (name, len(codes), len(devices)))
        links[name] = {dev: _normalise_code(code, line) for dev, code in zip(devices, codes)}
        if links[name][name] != "X":
            raise TopologyParseError(f"row {name!r} does not have X on the diagonal")
        if GPU_RE.match(name):
            affinity[name] = _assign_trailing(tokens[1 + len(devices) :], trailing)
    missing = [d for d in devices if d not in links and GPU_RE.match(d)]
    if missing:
        raise TopologyParseError("no matrix row for {}".format(", ".join(missing)))
    legend = {}
    for line in lines:
        match = NIC_LEGEND_RE.match(line)
        if match:
            legend[match.group(1)] = match.group(2)
    return {"devices": devices, "links": links, "affinity": affinity, "nic_legend": legend}


def _text(element: ET.Element, path: str) -> str | None:
    found = element.find(path)
    if found is None or found.text is None:
        return None
    value = found.text.strip()
    return None if value in ("", "N/A") else value


def parse_query_xml(text: str) -> dict[str, Any]:
    """Parse ``nvidia-smi -q -x`` XML into driver facts and one dict per GPU, in index order."""
    try:
        root = ET.fromstring(text)  # noqa: S314
    except ET.ParseError as err:
        raise TopologyParseError(f"nvidia-smi -q -x output is not XML: {err}") from err
    if root.tag != "nvidia_smi_log":
        raise TopologyParseError(f"XML root is <{root.tag}>, expected <nvidia_smi_log>")
    gpus = []
    for index, gpu in enumerate(root.findall("gpu")):
        memory = _text(gpu, "fb_memory_usage/total")
        gpus.append(
            {
                "index": index,
                "name": _text(gpu, "product_name"),
                "uuid": _text(gpu, "uuid"),
                "pci_bus_id": gpu.get("id") or _text(gpu, "pci/pci_bus_id"),
                "memory_mib": int(memory.split()[0]) if memory and memory.split()[0].isdigit() else None,
                "architecture": _text(gpu, "product_architecture"),
                "mig_mode": _text(gpu, "mig_mode/current_mig"),
                "fabric_state": _text(gpu, "fabric/state"),
                "fabric_clique_id": _text(gpu, "fabric/clique_id"),
            }
        )
    return {
        "driver_version": _text(root, "driver_version"),
        "cuda_version": _text(root, "cuda_version"),
        "gpus": gpus,
    }


def connected_components(nodes: Iterable[int], adjacent: dict[int, set[int]]) -> list[list[int]]:
    """Connected components of an undirected graph, each sorted, in order of their smallest node."""
    seen = set()
    components = []
    for start in sorted(nodes):
        if start in seen:
            continue
        stack, component = [start], []
        seen.add(start)
        while stack:
            node = stack.pop()
            component.append(node)
            for other in adjacent[node]:
                if other not in seen:
                    seen.add(other)
                    stack.append(other)
        components.append(sorted(component))
    return components


def maximal_cliques(nodes: Iterable[int], adjacent: dict[int, set[int]]) -> list[list[int]]:
    """All maximal cliques (Bron-Kerbosch with pivoting), each sorted, largest first."""
    cliques = []

    def expand(r: set[int], p: set[int], x: set[int]) -> None:
        if not p and not x:
            cliques.append(sorted(r))
            return
        pivot = max(p | x, key=lambda n: len(adjacent[n] & p))
        for node in sorted(p - adjacent[pivot]):
            expand(r | {node}, p & adjacent[node], x & adjacent[node])
            p = p - {node}
            x = x | {node}

    expand(set(), set(nodes), set())
    return sorted(cliques, key=lambda c: (-len(c), c))


def nvswitch_evidence(
    gpu_links: dict[int, dict[int, str]], xml_gpus: list[dict[str, Any]], nvswitch_devices: list[str]
) -> tuple[bool, str]:
    """Decide whether an NVSwitch fabric is present; returns (present, evidence)."""
    if nvswitch_devices:
        return True, "/proc/driver/nvidia-nvswitch/devices lists %d NVSwitch device(s)" % len(nvswitch_devices)
    states = [g.get("fabric_state") for g in xml_gpus if g.get("fabric_state")]
    if states and all(state in ("Completed", "In Progress") for state in states):
        return True, f"nvidia-smi -q reports an NVLink fabric (state {states[0]})"
    indices = sorted(gpu_links)
    counts = {nvlink_count(gpu_links[a][b]) for a in indices for b in indices if a != b}
    if len(indices) >= NVSWITCH_MIN_GPUS and len(counts) == 1 and min(counts) >= NVSWITCH_MIN_LINKS:
        return True, "uniform NV%d between all %d GPUs (NVSwitch baseboard pattern)" % (min(counts), len(indices))
    return False, "no NVSwitch device, fabric state or all-to-all NVSwitch pattern"


def build_facts(
    topo_text: str | None = None, query_text: str | None = None, nvswitch_devices: list[str] | None = None
) -> dict[str, Any]:
    """Combine parsed ``topo -m`` text and ``-q -x`` XML into the facts described in the module doc."""
    matrix = parse_topo_matrix(topo_text) if topo_text else {"devices": [], "links": {}, "affinity": {}}
    query = parse_query_xml(query_text) if query_text else {"driver_version": None, "cuda_version": None, "gpus": []}
    gpu_names = [d for d in matrix["devices"] if GPU_RE.match(d)]
    nic_columns = [d for d in matrix["devices"] if not GPU_RE.match(d)]
    legend = matrix.get("nic_legend", {})
    nic_name = {column: legend.get(column, column) for column in nic_columns}
    count = len(gpu_names) or len(query["gpus"])
    if gpu_names and query["gpus"] and len(query["gpus"]) != len(gpu_names):
        raise TopologyParseError(
            "topo -m shows %d GPUs but -q -x shows %d: were they captured on the same host?"
            % (len(gpu_names), len(query["gpus"]))
        )

    gpus = []
    for index in range(count):
        name = "GPU%d" % index
        xml = query["gpus"][index] if index < len(query["gpus"]) else {}
        aff = matrix["affinity"].get(name, {})
        nics = (
            sorted(
                ({"name": nic_name[col], "link": matrix["links"][name][col]} for col in nic_columns),
                key=lambda n: (link_rank(n["link"]), n["name"]),
            )
            if name in matrix["links"]
            else []
        )
        gpu_numa = parse_numa(aff.get("gpu_numa_id"))
        gpus.append(
            {
                "index": index,
                "name": xml.get("name"),
                "uuid": xml.get("uuid"),
                "memory_mib": xml.get("memory_mib"),
                "pci_bus_id": xml.get("pci_bus_id"),
                "numa_node": parse_numa(aff.get("numa_affinity")),
                "gpu_numa_id": gpu_numa,
                "cpu_affinity": parse_cpu_list(aff.get("cpu_affinity")),
                "cpu_affinity_text": (aff.get("cpu_affinity") or "").strip(),
                "nearest_nics": nics,
            }
        )

    gpu_links = {
        int(GPU_RE.match(a).group(1)): {
            int(GPU_RE.match(b).group(1)): code for b, code in row.items() if GPU_RE.match(b)
        }
        for a, row in matrix["links"].items()
        if GPU_RE.match(a)
    }
    adjacent = {a: {b for b, code in row.items() if nvlink_count(code)} for a, row in gpu_links.items()}
    for a, neighbours in adjacent.items():
        for b in neighbours:
            if a not in adjacent.get(b, set()):
                raise TopologyParseError("the matrix is not symmetric: GPU%d-GPU%d" % (a, b))
    domains = connected_components(adjacent, adjacent) if adjacent else []
    cliques = []
    for domain in domains:
        if len(domain) > 1:
            cliques.extend(maximal_cliques(domain, {n: adjacent[n] & set(domain) for n in domain}))
    nvswitch, evidence = nvswitch_evidence(gpu_links, query["gpus"], nvswitch_devices or [])
    return {
        "present": count > 0,
        "gpu_count": count,
        "driver_version": query["driver_version"],
        "cuda_version": query["cuda_version"],
        "gpus": gpus,
        "links": {a: dict(row) for a, row in matrix["links"].items()},
        "nvlink_domains": [d for d in domains if len(d) > 1] + [d for d in domains if len(d) == 1],
        "nvlink_cliques": cliques,
        "nvswitch": nvswitch,
        "nvswitch_evidence": evidence,
        "nics": [nic_name[c] for c in nic_columns],
    }
