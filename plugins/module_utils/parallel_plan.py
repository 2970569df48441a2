# Copyright: deepseek.cluster contributors
# Apache License 2.0 (see LICENSE)
"""Place TensorRT-LLM parallel groups on GPUs from gpu_topology facts.

Rules (docs/topology.md explains them):
  * world size = tensor_parallel_size x pipeline_parallel_size; one instance (one Triton
    server / MPI job) uses world-size GPUs;
  * moe_tensor_parallel_size x moe_expert_parallel_size must equal tensor_parallel_size;
  * inside a node, every tensor-parallel group sits in one NVLink clique (all pairs joined by
    NVLink); a group that would cross PCIe/SYS links is refused unless allow_pcie_tp is set;
  * a group larger than a node spans whole NVLink cliques of equal size on several nodes
    (ranks host-major), the only way DeepSeek-V3/R1 fits 16x H100;
  * no GPU is used twice.
"""

from __future__ import annotations

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
}
NVLINK_P2P_LEVEL = "NVL"


class PlanError(ValueError):
    """The request cannot be placed; the message names the hosts and GPUs involved."""


def _positive_int(request: dict[str, Any], key: str) -> int:
    value = request[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PlanError(f"{key} must be a positive integer, got {value!r}")
    return value


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
    return req


def _gpu_order(facts: Facts, gpus: list[int]) -> list[int]:
    """GPUs sorted NUMA node first, then index, so groups stay on one socket when they can."""
    numa = {g["index"]: g.get("numa_node") for g in facts["gpus"]}
    return sorted(gpus, key=lambda i: (numa.get(i) if numa.get(i) is not None else -1, i))


def _worst_link(facts: Facts, gpus: list[int]) -> str | None:
    """The slowest link code between any two GPUs of a group (None for a single GPU)."""
    worst, worst_key = None, None
    for a in gpus:
        for b in gpus:
            if a < b:
                code = facts["links"]["GPU%d" % a]["GPU%d" % b]
                key = link_rank(code)
                if worst_key is None or key > worst_key:
                    worst, worst_key = code, key
    return worst


def nvlink_groups(facts: Facts, size: int, limit: int | None = None) -> list[list[int]]:
    """Disjoint groups of `size` GPUs, each inside one NVLink clique, NUMA-local first."""
    used = set()
    groups = []
    cliques = list(facts.get("nvlink_cliques") or [])
    if size == 1:
        cliques = [[g["index"]] for g in facts["gpus"]]
    for clique in cliques:
        free = _gpu_order(facts, [g for g in clique if g not in used])
        while len(free) >= size and (limit is None or len(groups) < limit):
            group, free = sorted(free[:size]), free[size:]
            used.update(group)
            groups.append(group)
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
    pairs = [(a, b, facts["links"]["GPU%d" % a]["GPU%d" % b]) for a in best for b in outside]
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


def _host_part(host: str, facts: Facts, gpus: list[int], req: dict[str, Any]) -> dict[str, Any]:
    """Placement facts of one host's share of an instance."""
    gpu_facts = [facts["gpus"][g] for g in gpus]
    numa = sorted({g["numa_node"] for g in gpu_facts if g.get("numa_node") is not None})
    cpus = [c for g in gpu_facts for c in g.get("cpu_affinity") or []]
    worst = _worst_link(facts, gpus)
    nics = _nearest_nics(facts, gpus)
    env = {"CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in gpus)}
    if worst is None or worst.startswith("NV"):
        env["NCCL_P2P_LEVEL"] = NVLINK_P2P_LEVEL
    else:
        env["NCCL_P2P_LEVEL"] = worst
    rdma = [n for n in nics if not n.startswith("NIC")]
    if rdma:
        env["NCCL_IB_HCA"] = ",".join(rdma)
    netdevs = facts.get("nic_netdevs") or {}
    ifnames = [netdevs[n] for n in nics if n in netdevs]
    if ifnames:
        env["NCCL_SOCKET_IFNAME"] = ",".join(ifnames)
    elif req["socket_ifname"]:
        env["NCCL_SOCKET_IFNAME"] = req["socket_ifname"]
    return {
        "host": host,
        "gpus": list(gpus),
        "gpu_uuids": [g.get("uuid") for g in gpu_facts],
        "cuda_visible_devices": env["CUDA_VISIBLE_DEVICES"],
        "numa_nodes": numa,
        "cpu_affinity": _cpu_text(cpus),
        "worst_link": worst,
        "nearest_nics": nics,
        "env": env,
    }


def _instance(number: int, parts: list[dict[str, Any]], req: dict[str, Any]) -> dict[str, Any]:
    tp, pp = req["tensor_parallel_size"], req["pipeline_parallel_size"]
    ranks = []
    for part in parts:
        for local_rank, gpu in enumerate(part["gpus"]):
            ranks.append({"rank": len(ranks), "host": part["host"], "gpu": gpu, "local_rank": local_rank})
    _ep, moe_tp = req["moe_expert_parallel_size"], req["moe_tensor_parallel_size"]
    return {
        "instance": number,
        "world_size": len(ranks),
        "hosts": [p["host"] for p in parts],
        "mpi_hosts": ",".join("%s:%d" % (p["host"], len(p["gpus"])) for p in parts),
        "nvlink": all(p["worst_link"] is None or p["worst_link"].startswith("NV") for p in parts),
        "parts": parts,
        "ranks": ranks,
        "tp_groups": [[r["rank"] for r in ranks[s * tp : (s + 1) * tp]] for s in range(pp)],
        "moe_ep_groups": [
            [r["rank"] for r in ranks[s * tp : (s + 1) * tp]][m::moe_tp] for s in range(pp) for m in range(moe_tp)
        ],
    }


def _single_node_parts(host: str, facts: Facts, req: dict[str, Any], warnings: list[str]) -> list[dict[str, Any]]:
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
        warnings.append(f"{host}: TP groups over PCIe/SYS links (allow_pcie_tp): expect much lower throughput")
    per_node = len(groups) // pp
    if req["instances_per_node"] is not None:
        if req["instances_per_node"] > per_node:
            raise PlanError(
                "instances_per_node=%d but %s fits %d instance(s) of %d GPU(s) (%d GPUs)"
                % (req["instances_per_node"], host, per_node, tp * pp, facts["gpu_count"])
            )
        per_node = req["instances_per_node"]
    return [
        _host_part(host, facts, [g for stage in groups[i * pp : (i + 1) * pp] for g in stage], req)
        for i in range(per_node)
    ]


def _multi_node_parts(
    hosts: list[str], topologies: dict[str, Facts], req: dict[str, Any], world: int
) -> list[list[dict[str, Any]]]:
    """Instances larger than a node: equal NVLink cliques on consecutive hosts, ranks host-major."""
    sizes = {h: topologies[h]["gpu_count"] for h in hosts}
    per_host = max(sizes.values())
    while per_host > 0 and world % per_host:
        per_host -= 1
    tp = req["tensor_parallel_size"]
    needed = world // per_host
    eligible = []
    problems = []
    for host in hosts:
        groups = nvlink_groups(topologies[host], per_host, limit=1)
        if groups:
            eligible.append((host, groups[0]))
        elif req["allow_pcie_tp"] and sizes[host] >= per_host:
            eligible.append((host, any_groups(topologies[host], per_host, limit=1)[0]))
        else:
            problems.append(_largest_clique_text(host, topologies[host]))
    if len(eligible) < needed:
        raise PlanError(
            "world size %d (tensor_parallel_size=%d x pipeline_parallel_size=%d) needs %d hosts with %d "
            "NVLink-connected GPUs each; %d qualify (%s)%s"
            % (
                world,
                tp,
                req["pipeline_parallel_size"],
                needed,
                per_host,
                len(eligible),
                ", ".join(h for h, _gpus in eligible) or "none",
                "; " + "; ".join(problems) if problems else "",
            )
        )
    instances = []
    for start in range(0, len(eligible) - needed + 1, needed):
        instances.append([_host_part(h, topologies[h], g, req) for h, g in eligible[start : start + needed]])
    return instances


def plan(topologies: dict[str, Facts], request: dict[str, Any]) -> dict[str, Any]:
    """Place instances for `request` on the hosts of `topologies` ({host: gpu_topology facts}).

    Returns {"request", "world_size", "instances", "unused_gpus", "warnings"}; raises PlanError.
    """
    req = normalise_request(request)
    world = req["tensor_parallel_size"] * req["pipeline_parallel_size"]
    hosts = [h for h in topologies if (topologies[h] or {}).get("present") and topologies[h].get("gpu_count")]
    if not hosts:
        raise PlanError("no host with GPUs among %s" % (", ".join(topologies) or "no hosts"))
    total = sum(topologies[h]["gpu_count"] for h in hosts)
    if world > total:
        raise PlanError(
            "world size %d (tensor_parallel_size x pipeline_parallel_size) exceeds the %d GPUs of %s"
            % (world, total, ", ".join(hosts))
        )
    warnings = []
    instance_parts = []
    if world <= max(topologies[h]["gpu_count"] for h in hosts):
        for host in hosts:
            if topologies[host]["gpu_count"] < world:
                warnings.append(
                    "%s: %d GPUs, fewer than world size %d; not used" % (host, topologies[host]["gpu_count"], world)
                )
                continue
            instance_parts.extend([part] for part in _single_node_parts(host, topologies[host], req, warnings))
    else:
        instance_parts = _multi_node_parts(hosts, topologies, req, world)
        warnings.append(
            "instances span %d hosts: tensor parallelism crosses the network between them" % len(instance_parts[0])
        )
    instances = [_instance(n, parts, req) for n, parts in enumerate(instance_parts)]
    used = {}
    for inst in instances:
        for part in inst["parts"]:
            for gpu in part["gpus"]:
                key = (part["host"], gpu)
                if key in used:
                    raise PlanError("internal error: GPU%d of %s placed twice" % (gpu, part["host"]))
                used[key] = inst["instance"]
    unused = {h: [g["index"] for g in topologies[h]["gpus"] if (h, g["index"]) not in used] for h in hosts}
    return {
        "request": req,
        "world_size": world,
        "instances": instances,
        "unused_gpus": {h: g for h, g in unused.items() if g},
        "warnings": warnings,
    }


def plan_table(result: dict[str, Any]) -> str:
    """Render a plan as a fixed-width text table, one line per host part of each instance."""
    lines = ["%-4s %-28s %-18s %-8s %-10s %-14s %s" % ("inst", "host", "gpus", "link", "numa", "cpus", "nccl")]
    for inst in result["instances"]:
        for part in inst["parts"]:
            nccl = " ".join(f"{k}={v}" for k, v in sorted(part["env"].items()) if k != "CUDA_VISIBLE_DEVICES")
            lines.append(
                "%-4d %-28s %-18s %-8s %-10s %-14s %s"
                % (
                    inst["instance"],
                    part["host"],
                    part["cuda_visible_devices"],
                    part["worst_link"] or "-",
                    ",".join(str(n) for n in part["numa_nodes"]) or "-",
                    part["cpu_affinity"] or "-",
                    nccl,
                )
            )
    return "\n".join(lines)
