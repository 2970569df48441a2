# Copyright: deepseek.cluster contributors
# Apache License 2.0 (see LICENSE)
"""Prometheus scrape targets of a deployment, derived from the inventory (playbooks/monitoring.yml).

Each job is a list of target groups in Prometheus's file_sd format ({"targets": [...], "labels": {...}}), and
every target carries the labels ``node`` (the inventory name of the host it is about) and ``site``. The jobs:

- node: node_exporter on every host of the deployment (GPU nodes, proxies, monitoring hosts);
- triton: Triton's metrics port on every GPU node; dcgm: dcgm-exporter on the GPU nodes that run it;
- haproxy: each proxy's admin frontend (HAProxy's prometheus-exporter);
- deepseek_probe: the inference probe, once per proxy and pool module (target: the proxy's mTLS port), and
  once per GPU node and node module through the first proxy of the node's site (``__param_node`` names the
  node, so the proxy pins it: docs/roles/inference_probe.md).
"""

from __future__ import annotations

from typing import Any

PORT_KEYS = ("node_exporter", "triton_metrics", "dcgm_exporter", "mtls_proxy", "mtls_proxy_admin")


class TargetError(ValueError):
    """The inventory cannot give a target (an address or a site is missing)."""


def host_port(address: str, port: int | str) -> str:
    """``address:port``, with an IPv6 address in brackets."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def scrape_targets(
    groups: dict[str, list[str]],
    addresses: dict[str, list[str]],
    sites: dict[str, str],
    ports: dict[str, Any],
    options: dict[str, Any] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Every job's target groups.

    ``addresses`` maps each host to the addresses it connects from (the first is scraped); ``sites`` each host
    to its site. ``options``: ``dcgm_hosts`` (GPU nodes running dcgm-exporter; default none),
    ``admin_addresses`` (proxy -> address of its admin frontend, when not its first address),
    ``pool_modules`` and ``node_modules`` (the probe's module names).
    """
    options = dict(options or {})
    missing = [k for k in PORT_KEYS if k not in ports]
    if missing:
        raise TargetError(f"scrape_targets: ports {missing} not given")
    gpu_nodes = sorted(groups.get("gpu_nodes", []))
    proxies = sorted(groups.get("proxies", []))
    monitoring = sorted(groups.get("monitoring", []))
    hosts = sorted(set(gpu_nodes) | set(proxies) | set(monitoring))

    def address(host: str) -> str:
        found = addresses.get(host) or []
        if not found:
            raise TargetError(f"no address known for {host} (gather its facts or set deepseek_address)")
        return str(found[0])

    def site(host: str) -> str:
        value = sites.get(host, "")
        if not value and host in set(gpu_nodes) | set(proxies):
            raise TargetError(f"{host} belongs to no site: set deepseek_site (primary or standby groups)")
        return value

    def group(host: str, port: Any, target_address: str = "", **labels: str) -> dict[str, Any]:
        return {
            "targets": [host_port(target_address or address(host), port)],
            "labels": {"node": host, "site": site(host), **labels},
        }

    dcgm_hosts = sorted(set(options.get("dcgm_hosts", [])) & set(gpu_nodes))
    admin = dict(options.get("admin_addresses", {}))
    jobs: dict[str, list[dict[str, Any]]] = {
        "node": [group(h, ports["node_exporter"]) for h in hosts],
        "triton": [group(h, ports["triton_metrics"]) for h in gpu_nodes],
        "dcgm": [group(h, ports["dcgm_exporter"]) for h in dcgm_hosts],
        "haproxy": [group(p, ports["mtls_proxy_admin"], str(admin.get(p) or "")) for p in proxies],
        "deepseek_probe": [],
    }
    probes = jobs["deepseek_probe"]
    for proxy in proxies:
        for module in options.get("pool_modules", ["proxy_http", "proxy_grpc"]):
            probes.append(group(proxy, ports["mtls_proxy"], module=module, __param_module=module))
    for node in gpu_nodes:
        entry = [p for p in proxies if site(p) == site(node)]
        if not entry:
            continue  # a site without a proxy: nothing can reach its nodes (the playbook says so)
        for module in options.get("node_modules", ["node_http", "node_grpc"]):
            probes.append(
                {
                    "targets": [host_port(address(entry[0]), ports["mtls_proxy"])],
                    "labels": {
                        "node": node,
                        "site": site(node),
                        "proxy": entry[0],
                        "module": module,
                        "__param_module": module,
                        "__param_node": node,
                    },
                }
            )
    return jobs


def sites_without_proxy(groups: dict[str, list[str]], sites: dict[str, str]) -> list[str]:
    """GPU nodes whose site has no proxy (the per-node probe cannot reach them)."""
    proxied = {sites.get(p, "") for p in groups.get("proxies", [])}
    return sorted(n for n in groups.get("gpu_nodes", []) if sites.get(n, "") not in proxied)
