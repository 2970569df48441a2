# Copyright: deepseek.cluster contributors
# Apache License 2.0 (see LICENSE)
"""Allow rules of the host firewall: validated, normalised for the nftables template.

A rule is ``{name, ports, proto, sources}``: the TCP or UDP ports (or ``low-high`` ranges) it opens and the addresses or
networks (IPv4 or IPv6, CIDR allowed) that may reach them. Everything else that arrives is dropped
by the table's policy. Errors name the rule and the field, so the role can stop before anything
changes.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Union

PROTOCOLS = ("tcp", "udp")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


class RuleError(ValueError):
    """A rule the firewall cannot enforce as written."""


def parse_source(value: Any, where: str) -> Network:
    """One address or network (``10.0.0.5``, ``10.0.0.0/24``, ``fd00::/64``); host bits are ignored."""
    try:
        return ipaddress.ip_network(str(value).strip(), strict=False)
    except ValueError as exc:
        raise RuleError(f"{where}: {value!r} is not an IPv4/IPv6 address or network") from exc


def parse_port(value: Any, where: str) -> str:
    """A port number or a range ``low-high``, 1-65535 (digits in a string are accepted, as inventories give them)."""
    match = re.fullmatch(r"(\d{1,5})(?:-(\d{1,5}))?", str(value))
    if isinstance(value, bool) or not match:
        raise RuleError(f"{where}: {value!r} is not a port number or range (1-65535, low-high)")
    low, high = int(match[1]), int(match[2] or match[1])
    if not 1 <= low <= high <= 65535:
        raise RuleError(f"{where}: {value!r} is not a port number or range (1-65535, low-high)")
    return str(low) if low == high else f"{low}-{high}"


def _merged_ports(ports: list[str]) -> list[str]:
    """Ports and ranges sorted, overlapping or adjacent ones merged (nft refuses overlaps in one set)."""
    spans: list[list[int]] = []
    bounds = sorted((int(low), int(high or low)) for low, _sep, high in (p.partition("-") for p in ports))
    for start, end in bounds:
        if spans and start <= spans[-1][1] + 1:
            spans[-1][1] = max(spans[-1][1], end)
        else:
            spans.append([start, end])
    return [str(a) if a == b else f"{a}-{b}" for a, b in spans]


def _collapsed(networks: set[Network], version: int) -> list[str]:
    """The networks of one family, overlaps merged (nft refuses overlapping elements in one set)."""
    return [str(n) for n in ipaddress.collapse_addresses(sorted(n for n in networks if n.version == version))]


def normalise_rule(rule: Any, where: str) -> dict[str, Any]:
    """One rule checked and reduced to ``{name, proto, ports, ipv4, ipv6}``: sorted, unique, merged."""
    if not isinstance(rule, dict):
        raise RuleError(f"{where}: a rule is a mapping with name, ports, proto and sources")
    unknown = sorted(set(rule) - {"name", "ports", "proto", "sources"})
    if unknown:
        raise RuleError(f"{where}: unknown field(s) {unknown}; allowed: name, ports, proto, sources")
    name = str(rule.get("name", ""))
    if not _NAME.match(name):
        raise RuleError(f"{where}.name: {name!r} must be lower-case letters, digits, '-' or '_' (1-63)")
    proto = rule.get("proto", "tcp")
    if proto not in PROTOCOLS:
        raise RuleError(f"{where}.proto: {proto!r} is not one of {list(PROTOCOLS)}")
    ports = rule.get("ports")
    if not isinstance(ports, list) or not ports:
        raise RuleError(f"{where}.ports: give a non-empty list of port numbers")
    sources = rule.get("sources")
    if not isinstance(sources, list):
        raise RuleError(f"{where}.sources: give a list of addresses or networks ([] admits nobody)")
    networks = {parse_source(s, f"{where}.sources[{i}]") for i, s in enumerate(sources)}
    return {
        "name": name,
        "proto": proto,
        "ports": _merged_ports([parse_port(p, f"{where}.ports[{i}]") for i, p in enumerate(ports)]),
        "ipv4": _collapsed(networks, 4),
        "ipv6": _collapsed(networks, 6),
    }


def normalise_rules(rules: Any, variable: str = "host_firewall_rules") -> list[dict[str, Any]]:
    """Every rule of ``variable`` normalised; names must be unique. Rules that admit nobody stay (closed)."""
    if not isinstance(rules, list):
        raise RuleError(f"{variable} must be a list of rules")
    result = [normalise_rule(rule, f"{variable}[{i}]") for i, rule in enumerate(rules)]
    names = [r["name"] for r in result]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise RuleError(f"{variable}: rule names must be unique, repeated: {duplicates}")
    return result


def admits(address: str, sources: list[Any]) -> bool:
    """Whether ``address`` is inside one of ``sources`` (an empty list admits everyone: no restriction)."""
    if not sources:
        return True
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in parse_source(s, "source") for s in sources)


PORT_KEYS = (
    "triton_http",
    "triton_grpc",
    "triton_metrics",
    "mtls_proxy",
    "mtls_proxy_admin",
    "node_exporter",
)


def deployment_rules(
    host: str,
    groups: dict[str, list[str]],
    addresses: dict[str, list[str]],
    sites: dict[str, str],
    ports: dict[str, Any],
    client_sources: list[str],
    monitoring_sources: list[str] | None = None,
) -> list[dict[str, Any]]:
    """The allow rules of one host of the deployment, from the inventory.

    GPU nodes admit Triton's HTTP and gRPC ports from their own site's proxies only, Triton's metrics
    from the monitoring hosts, every TCP port from their own site's other GPU nodes (a multi-node instance:
    mpirun's SSH, then Open MPI's out-of-band and NCCL's bootstrap and socket connections, which use
    ephemeral ports). Proxies
    admit their mTLS port from ``client_sources`` and the monitoring hosts (the inference probe), and their admin port
    from the monitoring hosts. Every
    host admits node_exporter from the monitoring hosts, GPU nodes dcgm-exporter too (when ``ports`` has
    ``dcgm_exporter``). Monitoring hosts admit Prometheus and Alertmanager (``prometheus``, ``alertmanager``)
    from each other and ``monitoring_sources``, Alertmanager's cluster port (TCP and UDP) from each other; hosts
    of group ``grafana`` admit Grafana (``grafana``) from ``monitoring_sources``; hosts of group ``dns_servers``
    admit DNS (``dns``, TCP and UDP) from ``client_sources``, ``monitoring_sources`` and the monitoring hosts.
    ``addresses`` maps each host to the addresses it connects from; a GPU node or proxy without a site fails (it would
    admit nobody or the wrong site).
    """
    missing = [k for k in PORT_KEYS if k not in ports]
    if missing:
        raise RuleError(f"deployment_rules: ports {missing} not given")

    def members(group: str) -> list[str]:
        return sorted(groups.get(group, []))

    def sources(hosts: list[str]) -> list[str]:
        unknown = [h for h in hosts if not addresses.get(h)]
        if unknown:
            raise RuleError(f"no address known for {unknown} (gather their facts or set deepseek_address)")
        return sorted({a for h in hosts for a in addresses[h]})

    monitors = sources(members("monitoring"))
    rules: list[dict[str, Any]] = []
    if (host in groups.get("gpu_nodes", []) or host in groups.get("proxies", [])) and not sites.get(host):
        raise RuleError(f"{host} belongs to no site: set deepseek_site (primary or standby groups)")
    site = sites.get(host, "")
    if host in groups.get("gpu_nodes", []):
        proxies = [p for p in members("proxies") if sites.get(p) == site]
        peers = [n for n in members("gpu_nodes") if sites.get(n) == site and n != host]
        rules += [
            {
                "name": "triton-inference",
                "ports": [ports["triton_http"], ports["triton_grpc"]],
                "sources": sources(proxies),
            },
            {"name": "triton-metrics", "ports": [ports["triton_metrics"]], "sources": monitors},
            {"name": "gpu-site-peers", "ports": ["1-65535"], "sources": sources(peers)},
        ]
    if host in groups.get("proxies", []):
        rules += [
            # The monitoring hosts' inference probes come in here too, whatever client_sources allows.
            {
                "name": "mtls-proxy",
                "ports": [ports["mtls_proxy"]],
                "sources": sorted(set(client_sources) | set(monitors)),
            },
            {"name": "proxy-admin", "ports": [ports["mtls_proxy_admin"]], "sources": monitors},
        ]
    if host in groups.get("gpu_nodes", []) and ports.get("dcgm_exporter"):
        rules.append({"name": "dcgm-exporter", "ports": [ports["dcgm_exporter"]], "sources": monitors})
    if host in groups.get("monitoring", []):
        # Prometheus's and Alertmanager's web ports: the other monitoring hosts (Prometheus sends alerts to
        # every Alertmanager) and monitoring_sources (operators, Grafana); Alertmanager's cluster port: the
        # other monitoring hosts only.
        peers = sources([m for m in members("monitoring") if m != host])
        web = sorted(set(peers) | set(monitoring_sources or []))
        if ports.get("prometheus"):
            rules.append({"name": "prometheus", "ports": [ports["prometheus"]], "sources": web})
        if ports.get("alertmanager"):
            rules.append({"name": "alertmanager", "ports": [ports["alertmanager"]], "sources": web})
        if ports.get("alertmanager_cluster"):
            # Gossip (memberlist) needs TCP and UDP on the cluster port (Alertmanager's README, High Availability).
            rules.append({"name": "alertmanager-cluster", "ports": [ports["alertmanager_cluster"]], "sources": peers})
            rules.append(
                {
                    "name": "alertmanager-cluster-udp",
                    "proto": "udp",
                    "ports": [ports["alertmanager_cluster"]],
                    "sources": peers,
                }
            )
    if host in groups.get("grafana", []) and ports.get("grafana"):
        rules.append({"name": "grafana", "ports": [ports["grafana"]], "sources": sorted(set(monitoring_sources or []))})
    if host in groups.get("dns_servers", []) and ports.get("dns"):
        # The service name's zone (dns_server): clients resolve it, the failover's updates (TSIG-signed) come
        # from the controller, which must be among client_sources or monitoring_sources.
        dns = sorted(set(client_sources) | set(monitoring_sources or []) | set(monitors))
        rules.append({"name": "dns", "ports": [ports["dns"]], "sources": dns})
        rules.append({"name": "dns-udp", "proto": "udp", "ports": [ports["dns"]], "sources": dns})
    rules.append({"name": "node-exporter", "ports": [ports["node_exporter"]], "sources": monitors})
    return rules
