# Copyright: deepseek.cluster contributors
# Apache License 2.0 (see LICENSE)
"""Place TensorRT-LLM parallel groups on GPUs from gpu_topology facts.

Rules (docs/topology.md explains them):
  * world size = tensor_parallel_size x pipeline_parallel_size; one instance (one Triton
    server / MPI job) uses world-size GPUs;
  * moe_tensor_parallel_size x moe_expert_parallel_size must equal tensor_parallel_size;
  * inside a node, every tensor-parallel group sits in one NVLink clique (all pairs joined by
    NVLink); a group that would cross PCIe/SYS links is refused unless allow_pcie_tp is set;
  * a group larger than a node spans equal shares of several hosts (ranks host-major), each share
    inside NVLink, the only way DeepSeek-V3/R1 fits 16x H100; the hosts of one instance always
    share a site and a fabric (never primary + standby, never two fabrics);
  * no GPU is used twice.

Rank layout and group membership follow TensorRT-LLM's ``Mapping`` (NVIDIA/TensorRT-LLM,
tensorrt_llm/mapping.py, commit b35ac1b64368513d215c57d2ed01d62d910df8da, class ``MpiTopology``,
``_init_parallel_groups`` and the rank properties), with cp_size = 1 and moe_cluster_size = 1:
  tp_rank = rank % tp, pp_rank = rank // tp (so rank = pp_rank * tp + tp_rank);
  TP groups are consecutive blocks of tp ranks, PP groups take every tp-th rank;
  moe_ep_rank = tp_rank % moe_ep, moe_tp_rank = tp_rank // moe_ep: MoE EP groups are consecutive
  blocks of moe_ep ranks inside a TP group, MoE TP groups take every moe_ep-th rank of it;
  attention DP (enable_attention_dp): attention is not sharded (attention TP size 1) and
  dp_size = tp, dp rank = tp_rank.
The rank order of an instance is the order mpirun starts ranks: host by host, each host's GPUs in
the order of its CUDA_VISIBLE_DEVICES.
"""

from __future__ import annotations

import re
from itertools import combinations
from typing import Any, Dict

from ansible_collections.deepseek.cluster.plugins.module_utils.gpu_topology import link_rank

# gpu_topology facts of one host (see module_utils/gpu_topology.py).
Facts = Dict[str, Any]

REQUEST_DEFAULTS = {
    "tensor_parallel_size": 1,
    "pipeline_parallel_size": 1,
    "moe_expert_parallel_size": None,
    "moe_tensor_parallel_size": None,
    "enable_attention_dp": False,
    "instances_per_node": None,
    "allow_pcie_tp": False,
    "socket_ifname": None,
    "nccl_env": None,
}
# What the planner knows of each host besides its GPUs (playbooks/plan.yml fills it from the inventory
# and the gathered network facts; docs/topology.md, "Sites, fabrics and addresses").
HOST_DEFAULTS = {
    "site": "",  # deepseek_site (or the primary/standby group the host is in)
    "fabric": "",  # deepseek_fabric: hosts with different fabrics never share an instance
    "address": "",  # deepseek_fabric_address: the address mpirun reaches this host at
    "nccl_env": None,  # parallel_plan_nccl_env: the operator's NCCL_* for this host; wins over everything
    "interfaces": None,  # {interface: IPv4 address} from gathered facts; None when not gathered
    "default_address": "",  # ansible_facts.default_ipv4.address
    "ansible_host": "",
}
NVLINK_P2P_LEVEL = "NVL"
NCCL_NAME_RE = re.compile(r"^NCCL_[A-Z0-9_]+$")
# Exact search for disjoint NVLink groups gives up after this many steps and keeps the best found
# (boards with up to 16 GPUs finish far below it).
SEARCH_BUDGET = 200_000


class PlanError(ValueError):
    """The request cannot be placed; the message names the hosts and GPUs involved."""


def _positive_int(request: dict[str, Any], key: str) -> int:
    value = request[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PlanError(f"{key} must be a positive integer, got {value!r}")
    return value


def _nccl_env(value: Any, where: str) -> dict[str, str]:
    """Check an operator's NCCL_* mapping; values become strings (as the environment holds them)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise PlanError(f"{where} must be a mapping of NCCL_* variables, got {value!r}")
    env = {}
    for name, setting in value.items():
        if not isinstance(name, str) or not NCCL_NAME_RE.match(name):
            raise PlanError(f"{where}: {name!r} is not an NCCL_* variable name")
        if isinstance(setting, bool) or not isinstance(setting, (str, int)):
            raise PlanError(f"{where}.{name} must be a string or an integer, got {setting!r}")
        env[name] = str(setting)
    return env


def normalise_request(request: dict[str, Any]) -> dict[str, Any]:
    """Fill defaults and check the parallelism arithmetic; returns a new dict."""
    unknown = sorted(set(request) - set(REQUEST_DEFAULTS))
    if unknown:
        raise PlanError(
            "unknown plan option(s) {}; known: {}".format(", ".join(unknown), ", ".join(sorted(REQUEST_DEFAULTS)))
        )
    req = dict(REQUEST_DEFAULTS)
    req.update({k: v for k, v in request.items() if v is not None})
    tp = _positive_int(req, "tensor_parallel_size")
    _positive_int(req, "pipeline_parallel_size")
    # Neither MoE size given: pure expert parallelism over the TP group (what DeepSeek-V3/R1 is served
    # with). TensorRT-LLM's own Mapping default differs (moe_tp = tp, moe_ep = 1), so both sizes are
    # always written into model.yaml from this normalised request (module_utils/triton_layouts).
    if req["moe_expert_parallel_size"] is None and req["moe_tensor_parallel_size"] is None:
        req["moe_expert_parallel_size"], req["moe_tensor_parallel_size"] = tp, 1
    elif req["moe_expert_parallel_size"] is None:
        _positive_int(req, "moe_tensor_parallel_size")
        req["moe_expert_parallel_size"] = tp // req["moe_tensor_parallel_size"]
    elif req["moe_tensor_parallel_size"] is None:
        _positive_int(req, "moe_expert_parallel_size")
        req["moe_tensor_parallel_size"] = tp // req["moe_expert_parallel_size"]
    ep = _positive_int(req, "moe_expert_parallel_size")
    moe_tp = _positive_int(req, "moe_tensor_parallel_size")
    if moe_tp * ep != tp:
        raise PlanError(
            f"moe_tensor_parallel_size ({moe_tp}) x moe_expert_parallel_size ({ep}) = {moe_tp * ep}, "
            f"but it must equal tensor_parallel_size ({tp})"
        )
    if req["instances_per_node"] is not None:
        _positive_int(req, "instances_per_node")
    for key in ("enable_attention_dp", "allow_pcie_tp"):
        if not isinstance(req[key], bool):
            raise PlanError(f"{key} must be true or false, got {req[key]!r}")
    req["nccl_env"] = _nccl_env(req["nccl_env"], "nccl_env")
    ifname = req["socket_ifname"]
    if ifname is not None:
        if not isinstance(ifname, str) or not ifname:
            raise PlanError(f"socket_ifname must be an interface name (or NCCL prefix list), got {ifname!r}")
        if req["nccl_env"].get("NCCL_SOCKET_IFNAME", ifname) != ifname:
            raise PlanError(
                "socket_ifname (%s) and nccl_env.NCCL_SOCKET_IFNAME (%s) disagree; set one of them"
                % (ifname, req["nccl_env"]["NCCL_SOCKET_IFNAME"])
            )
    return req


def normalise_hosts(hosts: dict[str, Any] | None, names: list[str]) -> dict[str, dict[str, Any]]:
    """Per-host site, fabric, address and NCCL settings, defaults filled; unknown keys are refused."""
    hosts = hosts or {}
    if not isinstance(hosts, dict):
        raise PlanError("hosts must be a mapping of host name to its site, fabric, address and nccl_env")
    result = {}
    for name in names:
        given = hosts.get(name) or {}
        if not isinstance(given, dict):
            raise PlanError(f"hosts.{name} must be a mapping, got {given!r}")
        unknown = sorted(set(given) - set(HOST_DEFAULTS))
        if unknown:
            raise PlanError(
                "hosts.{}: unknown key(s) {}; known: {}".format(name, ", ".join(unknown), ", ".join(HOST_DEFAULTS))
            )
        info = dict(HOST_DEFAULTS)
        info.update({k: v for k, v in given.items() if v is not None})
        for key in ("site", "fabric", "address", "default_address", "ansible_host"):
            if not isinstance(info[key], (str, int)) or isinstance(info[key], bool):
                raise PlanError(f"hosts.{name}.{key} must be a string, got {info[key]!r}")
            info[key] = str(info[key])
        info["nccl_env"] = _nccl_env(info["nccl_env"], f"hosts.{name}.nccl_env")
        if info["interfaces"] is not None:
            if not isinstance(info["interfaces"], dict):
                raise PlanError(f"hosts.{name}.interfaces must map interface names to addresses")
            info["interfaces"] = {str(k): str(v) for k, v in info["interfaces"].items() if v}
        result[name] = info
    return result


def _gpu_order(facts: Facts, gpus: list[int]) -> list[int]:
    """GPUs sorted NUMA node first, then index, so groups stay on one socket when they can."""
    numa = {g["index"]: g.get("numa_node") for g in facts["gpus"]}
    return sorted(gpus, key=lambda i: (numa.get(i) if numa.get(i) is not None else -1, i))


def _link(facts: Facts, a: int, b: int) -> str:
    return facts["links"]["GPU%d" % a]["GPU%d" % b]


def _worst_link(facts: Facts, gpus: list[int]) -> str | None:
    """The slowest link code between any two GPUs of a group (None for a single GPU)."""
    worst, worst_key = None, None
    for a in gpus:
        for b in gpus:
            if a < b:
                code = _link(facts, a, b)
                key = link_rank(code)
                if worst_key is None or key > worst_key:
                    worst, worst_key = code, key
    return worst


def _all_nvlink(facts: Facts, gpus: list[int]) -> bool:
    return all(_link(facts, a, b).startswith("NV") for a in gpus for b in gpus if a < b)


def _greedy_groups(facts: Facts, size: int, limit: int) -> list[list[int]]:
    """Disjoint groups from each maximal NVLink clique in turn (largest first), NUMA-local first."""
    used: set[int] = set()
    groups: list[list[int]] = []
    for clique in facts.get("nvlink_cliques") or []:
        free = _gpu_order(facts, [g for g in clique if g not in used])
        while len(free) >= size and len(groups) < limit:
            group, free = sorted(free[:size]), free[size:]
            used.update(group)
            groups.append(group)
    return groups


def _exact_groups(facts: Facts, size: int, limit: int) -> list[list[int]]:
    """The most disjoint NVLink groups of `size` (up to `limit`), by bounded backtracking.

    The greedy pass can miss packings when maximal cliques overlap (e.g. NVLink bridges in a chain);
    this search does not, within SEARCH_BUDGET steps.
    """
    candidates: set[tuple[int, ...]] = set()
    for clique in facts.get("nvlink_cliques") or []:
        if len(clique) >= size:
            candidates.update(combinations(sorted(clique), size))
    by_first: dict[int, list[tuple[int, ...]]] = {}
    for group in sorted(candidates):
        by_first.setdefault(group[0], []).append(group)
    order = sorted(g["index"] for g in facts["gpus"])
    best: list[list[int]] = []
    budget = [SEARCH_BUDGET]

    def search(i: int, free: frozenset[int], chosen: list[list[int]]) -> None:
        nonlocal best
        budget[0] -= 1
        if len(chosen) > len(best):
            best = list(chosen)
        if len(best) >= limit or budget[0] <= 0:
            return
        while i < len(order) and order[i] not in free:
            i += 1
        if i == len(order) or len(chosen) + len(free) // size <= len(best):
            return
        gpu = order[i]
        for group in by_first.get(gpu, []):
            if free.issuperset(group):
                search(i + 1, free.difference(group), [*chosen, list(group)])
                if len(best) >= limit:
                    return
        search(i + 1, free - {gpu}, chosen)

    search(0, frozenset(order), [])
    return best


def nvlink_groups(facts: Facts, size: int, limit: int | None = None) -> list[list[int]]:
    """Disjoint groups of `size` GPUs, each joined pairwise by NVLink: as many as exist, up to `limit`.

    NUMA-local groups from the largest cliques first; when that greedy pass falls short of what the
    GPU count allows, an exact search takes over, so a packing that exists is found.
    """
    indices = [g["index"] for g in facts["gpus"]]
    if size == 1:
        singles = [[g] for g in _gpu_order(facts, indices)]
        return singles[:limit] if limit is not None else singles
    target = len(indices) // size if limit is None else min(limit, len(indices) // size)
    groups = _greedy_groups(facts, size, target)
    if len(groups) < target:
        exact = _exact_groups(facts, size, target)
        if len(exact) > len(groups):
            groups = sorted(exact, key=lambda g: (_gpu_order(facts, g)[0], g))
    return groups


def any_groups(facts: Facts, size: int, limit: int | None = None) -> list[list[int]]:
    """Disjoint groups of `size` GPUs regardless of links (the allow_pcie_tp override)."""
    order = _gpu_order(facts, [g["index"] for g in facts["gpus"]])
    groups = [sorted(order[i : i + size]) for i in range(0, len(order) - size + 1, size)]
    return groups[:limit] if limit is not None else groups


def _largest_clique_text(host: str, facts: Facts) -> str:
    cliques = facts.get("nvlink_cliques") or []
    if not cliques:
        return "%s has no NVLink between its GPUs (%d GPUs)" % (host, facts["gpu_count"])
    best = cliques[0]
    outside = [g["index"] for g in facts["gpus"] if g["index"] not in best]
    pairs = [(a, b, _link(facts, a, b)) for a in best for b in outside]
    pairs.sort(key=lambda pair: pair[2].startswith("NV"))
    example = "; e.g. GPU%d-GPU%d is %s" % pairs[0] if pairs else ""
    return f"{host}: largest NVLink clique is GPUs {best}{example}"


def _cpu_text(cpus: list[int]) -> str:
    """Compress CPU ids into the usual list form, e.g. [0,1,2,5] -> '0-2,5'."""
    ranges: list[list[int]] = []
    for cpu in sorted(set(cpus)):
        if ranges and cpu == ranges[-1][1] + 1:
            ranges[-1][1] = cpu
        else:
            ranges.append([cpu, cpu])
    return ",".join(f"{low}-{high}" if high != low else f"{low}" for low, high in ranges)


def _nearest_nics(facts: Facts, gpus: list[int]) -> list[str]:
    """For each GPU its best-ranked NICs (ties kept); returns the union in first-seen order."""
    names = []
    for gpu in gpus:
        nics = facts["gpus"][gpu].get("nearest_nics") or []
        if not nics:
            continue
        best = nics[0]["link"]
        for nic in nics:
            if nic["link"] == best and nic["name"] not in names:
                names.append(nic["name"])
    return names


def _ifname_address(spec: str, interfaces: dict[str, str]) -> str:
    """The address of the first interface an NCCL_SOCKET_IFNAME value selects ('' if none is known).

    NCCL reads the value as a comma list of name prefixes, '=' for exact names and a leading '^' for
    exclusions (NCCL documentation, Environment Variables, NCCL_SOCKET_IFNAME).
    """
    if spec.startswith("^"):
        return ""
    exact = spec.startswith("=")
    for item in spec.lstrip("=").split(","):
        for name in sorted(interfaces):
            if (name == item) if exact else name.startswith(item):
                return interfaces[name]
    return ""


def _host_part(host: str, facts: Facts, gpus: list[int], req: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    """Placement facts of one host's share of an instance."""
    gpu_facts = [facts["gpus"][g] for g in gpus]
    numa = sorted({g["numa_node"] for g in gpu_facts if g.get("numa_node") is not None})
    cpus = [c for g in gpu_facts for c in g.get("cpu_affinity") or []]
    worst = _worst_link(facts, gpus)
    nics = _nearest_nics(facts, gpus)
    # Derived settings first; the operator's (request, then this host's) override them below.
    derived: dict[str, str] = {}
    # NCCL_P2P_LEVEL only where it matches the hardware: NVL when every pair of the share is NVLink
    # (P2P over NVLink, which NCCL would choose too). Anything else is left to NCCL's own detection:
    # a fixed PCIe level (PIX..SYS) would force P2P across switches or sockets where the platform may not
    # support it (NCCL documentation, Environment Variables, NCCL_P2P_LEVEL).
    if worst is not None and worst.startswith("NV"):
        derived["NCCL_P2P_LEVEL"] = NVLINK_P2P_LEVEL
    # NCCL reads NCCL_IB_HCA and NCCL_SOCKET_IFNAME as lists of name *prefixes* unless the value starts with
    # '=' (exact names, for the whole list): "mlx5_1" would also select mlx5_10 and mlx5_11 (the storage NICs
    # of a DGX H100), "ib1" also ib10. Derived lists are therefore exact (NCCL documentation, Environment
    # Variables; NVIDIA/nccl src/transport/net_ib.cc ncclIbInit, searchExact).
    rdma = [n for n in nics if not n.startswith("NIC")]
    if rdma:
        derived["NCCL_IB_HCA"] = "=" + ",".join(rdma)
    # The RDMA devices' interfaces carry NCCL's bootstrap only where they have an address (IPoIB without
    # one fails the bootstrap); unknown addresses (no gathered facts): NCCL picks an addressed interface.
    netdevs = facts.get("nic_netdevs") or {}
    interfaces = info["interfaces"] or {}
    ifnames = [netdevs[n] for n in nics if n in netdevs and netdevs[n] in interfaces]
    if ifnames:
        derived["NCCL_SOCKET_IFNAME"] = "=" + ",".join(ifnames)
    operator = dict(req["nccl_env"])
    if req["socket_ifname"]:
        operator["NCCL_SOCKET_IFNAME"] = req["socket_ifname"]
    operator.update(info["nccl_env"])
    env = {"CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in gpus), **derived, **operator}
    address, source = info["address"], "deepseek_fabric_address"
    if not address and env.get("NCCL_SOCKET_IFNAME") and interfaces:
        address = _ifname_address(env["NCCL_SOCKET_IFNAME"], interfaces)
        source = "NCCL_SOCKET_IFNAME " + env["NCCL_SOCKET_IFNAME"]
    if not address and info["default_address"]:
        address, source = info["default_address"], "default_ipv4"
    if not address and info["ansible_host"]:
        address, source = info["ansible_host"], "ansible_host"
    if not address:
        address, source = host, "inventory name"
    return {
        "host": host,
        "site": info["site"],
        "fabric": info["fabric"],
        "address": address,
        "address_source": source,
        "gpus": list(gpus),
        "gpu_uuids": [g.get("uuid") for g in gpu_facts],
        "cuda_visible_devices": env["CUDA_VISIBLE_DEVICES"],
        "numa_nodes": numa,
        "cpu_affinity": _cpu_text(cpus),
        "worst_link": worst,
        "nearest_nics": nics,
        "env": env,
        "env_operator": sorted(operator),
    }


def parallel_groups(req: dict[str, Any]) -> dict[str, Any]:
    """Rank groups of one instance as TensorRT-LLM's Mapping forms them (cp_size 1, moe_cluster_size 1)."""
    tp, pp = req["tensor_parallel_size"], req["pipeline_parallel_size"]
    moe_tp, moe_ep = req["moe_tensor_parallel_size"], req["moe_expert_parallel_size"]
    world = tp * pp
    adp = req["enable_attention_dp"]
    tp_groups = [list(range(stage * tp, (stage + 1) * tp)) for stage in range(pp)]
    return {
        "tp_groups": tp_groups,
        "pp_groups": [list(range(tp_rank, world, tp)) for tp_rank in range(tp)],
        "moe_tp_groups": [
            list(range(stage * tp + first, (stage + 1) * tp, moe_ep)) for stage in range(pp) for first in range(moe_ep)
        ],
        "moe_ep_groups": [
            list(range(stage * tp + block * moe_ep, stage * tp + (block + 1) * moe_ep))
            for stage in range(pp)
            for block in range(moe_tp)
        ],
        "attention_tp_groups": [[rank] for rank in range(world)] if adp else [list(g) for g in tp_groups],
        "attention_dp_size": tp if adp else 1,
    }


def _instance(
    number: int, parts: list[dict[str, Any]], req: dict[str, Any], topologies: dict[str, Facts]
) -> dict[str, Any]:
    tp = req["tensor_parallel_size"]
    moe_ep = req["moe_expert_parallel_size"]
    adp = req["enable_attention_dp"]
    ranks = []
    for part in parts:
        for local_rank, gpu in enumerate(part["gpus"]):
            rank = len(ranks)
            tp_rank = rank % tp
            ranks.append(
                {
                    "rank": rank,
                    "host": part["host"],
                    "gpu": gpu,
                    "local_rank": local_rank,
                    "tp_rank": tp_rank,
                    "pp_rank": rank // tp,
                    "moe_tp_rank": tp_rank // moe_ep,
                    "moe_ep_rank": tp_rank % moe_ep,
                    "attention_dp_rank": tp_rank if adp else 0,
                }
            )
    groups = parallel_groups(req)
    # True when every TP group's GPUs on each host are joined pairwise by NVLink (false: allow_pcie_tp).
    nvlink = all(
        _all_nvlink(topologies[part["host"]], [ranks[r]["gpu"] for r in group if ranks[r]["host"] == part["host"]])
        for group in groups["tp_groups"]
        for part in parts
    )
    return {
        "instance": number,
        "world_size": len(ranks),
        "site": parts[0]["site"],
        "fabric": parts[0]["fabric"],
        "hosts": [p["host"] for p in parts],
        "addresses": [p["address"] for p in parts],
        "mpi_hosts": ",".join("%s:%d" % (p["address"], len(p["gpus"])) for p in parts),
        "nvlink": nvlink,
        "parts": parts,
        "ranks": ranks,
        **groups,
    }


def _single_node_parts(
    host: str, facts: Facts, req: dict[str, Any], info: dict[str, Any], warnings: list[str]
) -> list[dict[str, Any]]:
    """Instances that fit on one host: pp stages, each a TP group inside an NVLink clique."""
    tp, pp = req["tensor_parallel_size"], req["pipeline_parallel_size"]
    groups = nvlink_groups(facts, tp)
    if len(groups) < pp and tp > 1:
        if not req["allow_pcie_tp"]:
            raise PlanError(
                "tensor_parallel_size=%d cannot be placed inside NVLink on %s: %s. Lower "
                "tensor_parallel_size, or set allow_pcie_tp=true to accept TP over PCIe/SYS links"
                % (tp, host, _largest_clique_text(host, facts))
            )
        groups = any_groups(facts, tp)
        warnings.append(
            f"{host}: TP groups over PCIe/SYS links (allow_pcie_tp): expect much lower throughput; "
            "NCCL_P2P_LEVEL is left to NCCL unless set in nccl_env"
        )
    per_node = len(groups) // pp
    if req["instances_per_node"] is not None:
        if req["instances_per_node"] > per_node:
            raise PlanError(
                "instances_per_node=%d but %s fits %d instance(s) of %d GPU(s) (%d GPUs)"
                % (req["instances_per_node"], host, per_node, tp * pp, facts["gpu_count"])
            )
        per_node = req["instances_per_node"]
    return [
        _host_part(host, facts, [g for stage in groups[i * pp : (i + 1) * pp] for g in stage], req, info)
        for i in range(per_node)
    ]


def _share(facts: Facts, per_host: int, tp: int, allow: bool) -> list[int] | None:
    """One host's share of a multi-node instance, or None.

    The share holds per_host consecutive ranks. When whole TP groups fit in it (tp divides per_host)
    each TP group is one NVLink clique; otherwise the share is part of one TP group and is one clique.
    """
    chunk = tp if tp < per_host and per_host % tp == 0 else per_host
    groups = nvlink_groups(facts, chunk, limit=per_host // chunk)
    if len(groups) == per_host // chunk:
        return [g for group in groups for g in group]
    if allow and facts["gpu_count"] >= per_host:
        return any_groups(facts, per_host, limit=1)[0]
    return None


def _multi_node_parts(
    hosts: list[str], topologies: dict[str, Facts], req: dict[str, Any], world: int
) -> tuple[list[list[tuple[str, list[int]]]], str]:
    """Instances larger than a node, from hosts of one site and fabric: equal shares, ranks host-major.

    Returns (instances as [(host, gpus), ...], why none when empty).
    """
    per_host = max(topologies[h]["gpu_count"] for h in hosts)
    while per_host > 0 and world % per_host:
        per_host -= 1
    tp = req["tensor_parallel_size"]
    needed = world // per_host
    eligible = []
    problems = []
    for host in hosts:
        share = _share(topologies[host], per_host, tp, req["allow_pcie_tp"])
        if share is not None:
            eligible.append((host, share))
        else:
            problems.append(_largest_clique_text(host, topologies[host]))
    instances = [eligible[start : start + needed] for start in range(0, len(eligible) - needed + 1, needed)]
    why = ""
    if not instances:
        why = "needs %d hosts with %d NVLink-connected GPUs each; %d qualify (%s)%s" % (
            needed,
            per_host,
            len(eligible),
            ", ".join(h for h, _gpus in eligible) or "none",
            "; " + "; ".join(problems) if problems else "",
        )
    left = [h for h, _gpus in eligible[len(instances) * needed :]]
    if instances and left:
        why = "%s not used: an instance needs %d hosts" % (", ".join(left), needed)
    return instances, why


def _group_label(site: str, fabric: str) -> str:
    label = f"site {site}" if site else "site (unnamed)"
    return label + (f", fabric {fabric}" if fabric else "")


def _spanning_warnings(inst: dict[str, Any]) -> list[str]:
    """Which groups of a multi-node instance cross the network, and NCCL settings mpirun overrides."""
    host_of = [r["host"] for r in inst["ranks"]]
    kinds = [
        kind
        for kind in ("tp", "pp", "moe_tp", "moe_ep")
        if any(len({host_of[r] for r in group}) > 1 for group in inst[kind + "_groups"])
    ]
    text = "instance %d spans %d hosts (%s): %s groups cross the network between them" % (
        inst["instance"],
        len(inst["hosts"]),
        ", ".join(inst["hosts"]),
        ", ".join(kinds) or "no",
    )
    if "tp" in kinds:
        text += "; tensor parallelism crosses the network: expect lower throughput than inside one NVLink domain"
    warnings = [text]
    launcher = inst["parts"][0]
    for part in inst["parts"][1:]:
        names = sorted(
            k
            for k in set(launcher["env"]) | set(part["env"])
            if k != "CUDA_VISIBLE_DEVICES" and launcher["env"].get(k) != part["env"].get(k)
        )
        for name in names:
            warnings.append(
                "instance %d: %s is %s on %s but %s on %s; mpirun exports the launcher's value to every rank"
                % (
                    inst["instance"],
                    name,
                    launcher["env"].get(name, "unset"),
                    launcher["host"],
                    part["env"].get(name, "unset"),
                    part["host"],
                )
            )
    for part in inst["parts"]:
        if ":" in part["address"]:
            warnings.append(
                "%s: address %s (%s) is IPv6: mpi_hosts writes address:slots, which an IPv6 address makes "
                "ambiguous; give the host an IPv4 deepseek_fabric_address or a name the launcher resolves"
                % (part["host"], part["address"], part["address_source"])
            )
        if part["address_source"] == "inventory name":
            warnings.append(
                "%s: no address known for mpirun (set deepseek_fabric_address, or gather its network facts); "
                "mpi_hosts uses the inventory name, which the launcher must resolve" % part["host"]
            )
    return warnings


def plan(topologies: dict[str, Facts], request: dict[str, Any], hosts: dict[str, Any] | None = None) -> dict[str, Any]:
    """Place instances for `request` on the hosts of `topologies` ({host: gpu_topology facts}).

    `hosts` ({host: {site, fabric, address, nccl_env, interfaces, default_address, ansible_host}}) says
    where each host is and how it is reached; see HOST_DEFAULTS.
    Returns {"request", "world_size", "instances", "unused_gpus", "warnings"}; raises PlanError.
    """
    req = normalise_request(request)
    world = req["tensor_parallel_size"] * req["pipeline_parallel_size"]
    names = [h for h in topologies if (topologies[h] or {}).get("present") and topologies[h].get("gpu_count")]
    if not names:
        raise PlanError("no host with GPUs among %s" % (", ".join(topologies) or "no hosts"))
    info = normalise_hosts(hosts, names)
    total = sum(topologies[h]["gpu_count"] for h in names)
    if world > total:
        raise PlanError(
            "world size %d (tensor_parallel_size x pipeline_parallel_size) exceeds the %d GPUs of %s"
            % (world, total, ", ".join(names))
        )
    # Hosts of one site and one fabric, in play order; an instance never leaves its group.
    groups: dict[tuple[str, str], list[str]] = {}
    for host in names:
        groups.setdefault((info[host]["site"], info[host]["fabric"]), []).append(host)
    warnings: list[str] = []
    instance_parts: list[list[dict[str, Any]]] = []
    shortfalls = []
    for (site, fabric), members in groups.items():
        if world <= max(topologies[h]["gpu_count"] for h in members):
            for host in members:
                if topologies[host]["gpu_count"] < world:
                    warnings.append(
                        "%s: %d GPUs, fewer than world size %d; not used" % (host, topologies[host]["gpu_count"], world)
                    )
                    continue
                parts = _single_node_parts(host, topologies[host], req, info[host], warnings)
                instance_parts.extend([part] for part in parts)
            continue
        placed, why = _multi_node_parts(members, topologies, req, world)
        for shares in placed:
            instance_parts.append([_host_part(h, topologies[h], g, req, info[h]) for h, g in shares])
        if why:
            message = "%s (%s): %s" % (_group_label(site, fabric), ", ".join(members), why)
            (warnings if placed else shortfalls).append(message)
    if not instance_parts:
        raise PlanError(
            "world size %d (tensor_parallel_size=%d x pipeline_parallel_size=%d) fits nowhere; an instance "
            "never spans two sites or two fabrics: %s"
            % (world, req["tensor_parallel_size"], req["pipeline_parallel_size"], " | ".join(shortfalls))
        )
    warnings.extend(shortfalls)
    instances = [_instance(n, parts, req, topologies) for n, parts in enumerate(instance_parts)]
    for inst in instances:
        if len(inst["hosts"]) > 1:
            warnings.extend(_spanning_warnings(inst))
    used = {}
    for inst in instances:
        for part in inst["parts"]:
            for gpu in part["gpus"]:
                key = (part["host"], gpu)
                if key in used:
                    raise PlanError("internal error: GPU%d of %s placed twice" % (gpu, part["host"]))
                used[key] = inst["instance"]
    unused = {h: [g["index"] for g in topologies[h]["gpus"] if (h, g["index"]) not in used] for h in names}
    return {
        "request": req,
        "world_size": world,
        "instances": instances,
        "unused_gpus": {h: g for h, g in unused.items() if g},
        "warnings": warnings,
    }


TABLE_COLUMNS = ("inst", "site", "fabric", "host", "address", "gpus", "link", "numa", "cpus", "nccl")


def plan_table(result: dict[str, Any]) -> str:
    """Render a plan as a text table, one line per host share of each instance, then one line per instance.

    Columns are separated by at least two spaces; every cell but the last (the NCCL settings, separated
    by single spaces, operator-set ones marked with '*') is one word ('-' when empty).
    """
    rows = [list(TABLE_COLUMNS)]
    for inst in result["instances"]:
        for part in inst["parts"]:
            operator = set(part.get("env_operator", []))
            nccl = " ".join(
                f"{k}={v}{'*' if k in operator else ''}"
                for k, v in sorted(part["env"].items())
                if k != "CUDA_VISIBLE_DEVICES"
            )
            rows.append(
                [
                    str(inst["instance"]),
                    part.get("site") or "-",
                    part.get("fabric") or "-",
                    part["host"],
                    part.get("address") or "-",
                    part["cuda_visible_devices"],
                    part["worst_link"] or "-",
                    ",".join(str(n) for n in part["numa_nodes"]) or "-",
                    part["cpu_affinity"] or "-",
                    nccl or "-",
                ]
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(TABLE_COLUMNS) - 1)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1] for row in rows]
    for inst in result["instances"]:
        lines.append(
            "instance %d: world %d = tp %d x pp %d; moe_tp %d x moe_ep %d; attention_dp %d; mpi_hosts %s"
            % (
                inst["instance"],
                inst["world_size"],
                len(inst["tp_groups"][0]),
                len(inst["pp_groups"][0]),
                len(inst["moe_tp_groups"][0]),
                len(inst["moe_ep_groups"][0]),
                inst["attention_dp_size"],
                inst["mpi_hosts"],
            )
        )
    return "\n".join(lines)
