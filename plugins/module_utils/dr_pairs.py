# Copyright: deepseek.cluster contributors
# Apache License 2.0 (see LICENSE)
"""Who replicates to whom between the active site and the other sites (dr_replication).

Hosts pair within a function (the first of `functions` whose group holds them: fallback nodes before GPU
nodes, since a fallback node is a GPU node serving another model): the i-th receiver of a function (sorted
by name) takes its replication from the (i mod n)-th of the n hosts of that function on the active site.
Each receiver has exactly one sender; each sender serves its share of receivers.
"""

from __future__ import annotations

from typing import Any


def _function_of(host: str, groups: dict[str, list[str]], functions: list[str]) -> str | None:
    """The first function group that holds the host, or None."""
    for function in functions:
        if host in groups.get(function, []):
            return function
    return None


def replication_pairs(
    groups: dict[str, list[str]], site_of: dict[str, str], active_site: str, functions: list[str]
) -> dict[str, dict[str, Any]]:
    """Host -> {mode: sender|receiver|none, function, peers: [receivers], sender: name or ''}.

    groups: the inventory's groups (name -> hosts); site_of: host -> its deepseek_site; active_site: the site
    that serves. Raises ValueError when the active site is not among the hosts' sites, or when a function has
    receivers but no host on the active site to send to them.
    """
    if active_site not in set(site_of.values()):
        raise ValueError(
            f"the active site '{active_site}' is no host's deepseek_site (sites: {sorted(set(site_of.values()))})"
        )
    plan: dict[str, dict[str, Any]] = {}
    by_function: dict[str, list[str]] = {}
    for host in sorted(site_of):
        function = _function_of(host, groups, functions)
        if function is not None:
            by_function.setdefault(function, []).append(host)
    for function, hosts in by_function.items():
        senders = [h for h in hosts if site_of[h] == active_site]
        receivers = [h for h in hosts if site_of[h] != active_site]
        if receivers and not senders:
            raise ValueError(
                f"{function}: {', '.join(receivers)} would receive replication, but the active site '{active_site}' "
                f"has no host in {function}"
            )
        for host in senders:
            plan[host] = {"mode": "none", "function": function, "peers": [], "sender": ""}
        for index, host in enumerate(receivers):
            sender = senders[index % len(senders)]
            plan[sender]["mode"] = "sender"
            plan[sender]["peers"].append(host)
            plan[host] = {"mode": "receiver", "function": function, "peers": [], "sender": sender}
    return plan


def endpoints(
    names: list[str], hostvars: dict[str, Any], key_field: str, key_var: str, allow_missing_key: bool = False
) -> list[dict[str, Any]]:
    """[{name, address, <key_field>: hostvars[name][key_var]}] for the named hosts.

    The address is the host's `deepseek_dr_address` when set (a replication network, or an address the other
    site reaches through NAT), else its `deepseek_address`, else its default IPv4 address from its facts.
    Raises ValueError when a host has none, or lacks the key variable (the play that makes the keys did not
    run on it), unless allow_missing_key (check mode on a fresh host, where no key exists yet): the key is then "".
    """
    found: list[dict[str, Any]] = []
    for name in names:
        host = hostvars[name]
        facts = host.get("ansible_facts", {})
        address = (
            host.get("deepseek_dr_address")
            or host.get("deepseek_address")
            or facts.get("default_ipv4", {}).get("address")
        )
        if isinstance(address, (list, tuple)):  # deepseek_address may list several: the first is the one to use
            address = address[0] if address else None
        if not address:
            raise ValueError(
                f"{name}: no deepseek_dr_address and no default IPv4 address in its facts (gather facts first)"
            )
        if not host.get(key_var) and not allow_missing_key:
            raise ValueError(f"{name}: {key_var} is not set (run the dr_replication role's keys.yml on it first)")
        found.append({"name": name, "address": str(address), key_field: str(host.get(key_var) or "").strip()})
    return found


def active_site(states: dict[str, Any], default: str) -> dict[str, Any]:
    """Which site serves: the newest switch any reachable host recorded, else the inventory's default.

    states: host -> its local fact deepseek_dr ({active_site, epoch}, written by failover.yml and
    failback.yml on every host they reach), or anything else for a host without one. A host that was
    unreachable during a switch keeps an older record; the newest epoch wins, so a returning old primary
    cannot take the service back by being asked first. Returns {site, epoch, recorded_by, fenced_site}: the
    fenced site (the one failed over from) keeps its proxies stopped until a failback switches back.
    """
    best: dict[str, Any] = {"site": default, "epoch": 0, "recorded_by": "inventory", "fenced_site": ""}
    for host in sorted(states):
        state = states[host]
        if not isinstance(state, dict) or not state.get("active_site"):
            continue
        try:
            epoch = int(state.get("epoch", 0))
        except (TypeError, ValueError):
            continue
        if epoch > best["epoch"]:
            fenced = str(state.get("fenced_site") or "")
            best = {"site": str(state["active_site"]), "epoch": epoch, "recorded_by": host, "fenced_site": fenced}
    return best


def service_addresses(names: list[str], hostvars: dict[str, Any]) -> list[str]:
    """The address clients reach each named host at (deepseek_address, else its default IPv4), sorted.

    For the service name's A records (dns.yml, failover.yml, failback.yml). Raises ValueError for a host
    with neither (its facts were not gathered: it did not answer).
    """
    found = []
    for name in names:
        host = hostvars[name]
        address = host.get("deepseek_address") or host.get("ansible_facts", {}).get("default_ipv4", {}).get("address")
        if isinstance(address, (list, tuple)):
            address = address[0] if address else None
        if not address:
            raise ValueError(f"{name}: no deepseek_address and no default IPv4 address in its facts (did it answer?)")
        found.append(str(address))
    return sorted(found)
