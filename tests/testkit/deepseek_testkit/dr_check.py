"""The lab's disaster recovery, through the playbooks an operator runs.

``replication_checks``: every standby host receives (lag under 5 s), golden answers and model repositories are
the same on both sides, a version published on a primary node arrives verified, and a new model version
installed on a primary node is loaded by the standby's Triton without any playbook.
``failover``: the primary site's containers are killed, playbooks/failover.yml runs, and inference through the
service name (resolved by the lab's DNS server) succeeds on the standby; the time from the kill to that first
answer is the RTO. ``failback``: the primary's containers start again, playbooks/failback.yml resynchronises,
verifies and switches back; the trees of both sides are compared file by file.

Used by lab.py (``make lab-test``; ``make lab-failover`` and ``make lab-failback``) and by benchmarks/dr_lab.py.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import dns.message
import dns.query
import dns.rdatatype
import docker

from deepseek_testkit import lab  # the lab's own helpers (lab.py imports this module only inside its commands)

PRIMARY, STANDBY = "primary", "standby"
TEXTFILE = "/var/lib/node_exporter/textfile_collector/deepseek_dr.prom"
INBOX = "/var/lib/deepseek-dr/inbox"
ARTIFACTS = "/var/lib/triton/artifacts"
MODELS = "/var/lib/triton/models"
GOLDEN = "/var/lib/deepseek/golden/answers.json"
SERVICE_NAME = "inference.deepseek.lab"
TREES = (ARTIFACTS, MODELS)


def log(message: str) -> None:
    """Progress on the lab's log."""
    lab.log(f"dr: {message}")


def site_hosts(hosts: list[lab.LabHost], site: str, group: str) -> list[lab.LabHost]:
    """The site's hosts of one group, sorted by name (the order dr.yml pairs them in)."""
    return sorted((h for h in hosts if site in h.groups and group in h.groups), key=lambda h: h.name)


def pairs(hosts: list[lab.LabHost]) -> list[tuple[lab.LabHost, lab.LabHost]]:
    """(primary, standby) hosts that replicate to each other, per function, as dr.yml pairs them."""
    found = []
    for group, exclude in (("fallback_nodes", None), ("gpu_nodes", "fallback_nodes"), ("proxies", None)):
        primary = [h for h in site_hosts(hosts, PRIMARY, group) if exclude not in h.groups]
        standby = [h for h in site_hosts(hosts, STANDBY, group) if exclude not in h.groups]
        found += [(primary[i % len(primary)], s) for i, s in enumerate(standby)]
    return found


def run(client: docker.DockerClient, host: lab.LabHost, script: str) -> tuple[int, str]:
    """A shell script on a lab host through the engine: (exit code, output)."""
    result = client.containers.get(host.name).exec_run(["bash", "-c", script])
    return result.exit_code, result.output.decode(errors="replace")


def textfile(client: docker.DockerClient, host: lab.LabHost) -> dict[str, float]:
    """The receiver's metrics file as {series: value}."""
    _, text = run(client, host, f"cat {TEXTFILE} 2>/dev/null")
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and " " in line:
            series, value = line.rsplit(" ", 1)
            samples[series] = float(value)
    return samples


def tree_sums(client: docker.DockerClient, host: lab.LabHost, roots: tuple[str, ...] = TREES) -> dict[str, str]:
    """sha256 of every file under the roots (relative path -> digest); dot directories of staging excluded."""
    find = "find . -type f -not -path './*/.dr-staging-*' -exec sha256sum {} +"
    script = " ; ".join(f"cd {r} 2>/dev/null && {find} | sed 's|  ./|  {r}/|'" for r in roots)
    _, out = run(client, host, script)
    sums = {}
    for line in out.splitlines():
        digest, _, path = line.partition("  ")
        if len(digest) == 64:
            sums[path] = digest
    return sums


def wait(condition: Callable[[], bool], seconds: float, step: float = 1.0) -> bool:
    """Poll until the condition holds or the time is up."""
    deadline = time.monotonic() + seconds
    while True:
        if condition():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(step)


def dns_server(client: docker.DockerClient, hosts: list[lab.LabHost]) -> str:
    """The address of the lab's DNS server (the host of group dns_servers)."""
    return lab.container_ip(client, next(h for h in hosts if "dns_servers" in h.groups))


def resolve(name: str, server: str) -> list[str]:
    """The A records of a name, asked of one server over TCP (no cache in between)."""
    answer = dns.query.tcp(dns.message.make_query(name, dns.rdatatype.A), server, timeout=3)
    return sorted(r.address for rrset in answer.answer for r in rrset if r.rdtype == dns.rdatatype.A)


class _PinnedHTTPS(http.client.HTTPSConnection):
    """HTTPS to a given address, with the service name for SNI and certificate checking (as a client resolving it)."""

    def __init__(self, name: str, address: str, context: ssl.SSLContext) -> None:
        super().__init__(name, 8443, timeout=10, context=context)
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def infer_by_name(server: str, prompt: str = lab.LAB_PROMPT) -> tuple[str, str]:
    """Resolve the service name, then one inference through the proxy it names: (answer, address)."""
    addresses = resolve(SERVICE_NAME, server)
    if not addresses:
        raise OSError(f"{SERVICE_NAME} has no address")
    conn = _PinnedHTTPS(SERVICE_NAME, addresses[0], lab.tls_context())
    body = json.dumps({"text_input": prompt, "sampling_param_max_tokens": 8})
    conn.request("POST", f"/v2/models/{lab.LAB_MODEL}/generate", body, {"Content-Type": "application/json"})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    if response.status != 200:
        raise OSError(f"{addresses[0]} answered {response.status}: {data[:200]!r}")
    return json.loads(data)["text_output"], addresses[0]


def active_proxy_addresses(client: docker.DockerClient, hosts: list[lab.LabHost], site: str) -> list[str]:
    """The addresses of a site's proxies now (containers may get new ones after a restart)."""
    return sorted(lab.container_ip(client, h) for h in site_hosts(hosts, site, "proxies"))


@dataclass
class Outcome:
    """What a DR step measured and what failed."""

    failures: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def replication_checks(client: docker.DockerClient, hosts: list[lab.LabHost]) -> Outcome:
    """Replication running as dr.yml set it up: lag, the same configuration, a version arrives, a model loads."""
    out = Outcome()
    for primary, standby in pairs(hosts):
        if not wait(lambda s=standby: textfile(client, s).get("deepseek_dr_replication_lag_seconds", 99) < 5, 30):
            samples = textfile(client, standby)
            out.failures.append(f"{standby.name}: no replication lag under 5 s from {primary.name} ({samples})")
        if "gpu_nodes" not in primary.groups:
            continue
        _, recorded = run(client, primary, f"cat {GOLDEN}")
        _, replicated = run(client, standby, f"cat {INBOX}/small/golden/answers.json")
        if not recorded.strip() or recorded != replicated:
            out.failures.append(f"{standby.name}: the golden answers differ from {primary.name}'s")
        models = tree_sums(client, primary, (MODELS,))
        if not models or models != tree_sums(client, standby, (MODELS,)):
            out.failures.append(f"{standby.name}: the model repository differs from {primary.name}'s (or is empty)")
    if not out.failures:
        out.failures += warm_standby_check(client, hosts, out)
    return out


def next_version(client: docker.DockerClient, host: lab.LabHost) -> int:
    """One more than the highest version in the node's model repository or artifact root."""
    _, names = run(client, host, f"ls {MODELS}/{lab.LAB_MODEL} {ARTIFACTS}/{lab.LAB_MODEL} 2>/dev/null")
    return max([int(n) for n in names.split() if n.isdigit()] + [1]) + 1


def publish_on(client: docker.DockerClient, host: lab.LabHost, version: int, megabytes: int) -> None:
    """A version published on a node as the triton_server role publishes one: staged, manifest, marker, a rename."""
    root = f"{ARTIFACTS}/{lab.LAB_MODEL}"
    run(
        client,
        host,
        f"set -e; s={root}/.staging-{version}; install -d -g triton -m 0750 {ARTIFACTS} {root} $s; cd $s;"
        f" head -c {megabytes * 1_000_000} /dev/urandom > weights.bin; sha256sum weights.bin > .manifest;"
        ' echo "$(sha256sum .manifest | cut -d" " -f1)  .manifest" > .published;'
        f" chgrp -R triton . && chmod 0640 weights.bin .manifest .published; mv -T $s {root}/{version}",
    )


def serve_version(client: docker.DockerClient, host: lab.LabHost, version: int) -> None:
    """Make a node serve a new version of the lab model, as the triton_server role does.

    The version directory, the config's version_policy, then Triton's load API with the admin key.
    """
    model = f"{MODELS}/{lab.LAB_MODEL}"
    run(
        client,
        host,
        f"set -e; cp -a {model}/1 {model}/{version}.new && mv -T {model}/{version}.new {model}/{version};"
        f" sed -i -E 's/versions: \\[?[0-9, ]+\\]?/versions: [{version}]/' {model}/config.pbtxt;"
        " . /etc/deepseek/triton-admin.env; addr=$(hostname -I | cut -d' ' -f1);"
        f' curl -sf -X POST -H "deepseek-admin-key: $TRITON_ADMIN_KEY" http://$addr:8000/v2/repository/models/{lab.LAB_MODEL}/load',
    )


def version_ready(client: docker.DockerClient, host: lab.LabHost, version: int) -> bool:
    """Whether the node's Triton serves that version (asked on the node itself)."""
    url = f"http://$(hostname -I | cut -d' ' -f1):8000/v2/models/{lab.LAB_MODEL}/versions/{version}/ready"
    code, _ = run(client, host, f"curl -sf {url}")
    return code == 0


def warm_standby_check(client: docker.DockerClient, hosts: list[lab.LabHost], out: Outcome) -> list[str]:
    """A version published and served on a primary node is published, verified and loaded on its standby."""
    failures = []
    primary, standby = next(
        (p, s) for p, s in pairs(hosts) if "gpu_nodes" in p.groups and "fallback_nodes" not in p.groups
    )
    version = next_version(client, primary)
    start = time.monotonic()
    publish_on(client, primary, version, 20)
    serve_version(client, primary, version)
    if not version_ready(client, primary, version):
        return [f"{primary.name} did not load version {version} (the check's own setup)"]
    if not wait(lambda: version_ready(client, standby, version), 120):
        failures.append(f"{standby.name} did not load version {version} published on {primary.name} within 120 s")
    else:
        took = out.seconds["new version loaded on the standby"] = time.monotonic() - start
        log(f"version {version} published on {primary.name} was loaded on {standby.name} in {took:.1f} s")
    rel = f"{ARTIFACTS}/{lab.LAB_MODEL}/{version}"
    if tree_sums(client, primary, (rel,)) != tree_sums(client, standby, (rel,)):
        failures.append(f"{standby.name}: version {version}'s files differ from {primary.name}'s")
    return failures


def kill_site(client: docker.DockerClient, hosts: list[lab.LabHost], site: str) -> None:
    """The site's containers killed (SIGKILL: no service stops cleanly)."""
    for host in hosts:
        container = client.containers.get(host.name)
        if site in host.groups and container.status == "running":
            container.kill()
    log(f"killed the {site} site: {', '.join(h.name for h in hosts if site in h.groups)}")


def playbook_ok_except(run_result: lab.PlaybookRun, gone: set[str]) -> bool:
    """A run that failed on no host, and found unreachable only the hosts that are gone."""
    failed = {h for h, c in run_result.recap.items() if c.get("failed", 0)}
    unreachable = {h for h, c in run_result.recap.items() if c.get("unreachable", 0)}
    return not failed and unreachable <= gone and run_result.returncode in (0, 4)


def failover(client: docker.DockerClient, hosts: list[lab.LabHost]) -> Outcome:
    """Kill the primary site, fail over, and infer through the service name on the standby."""
    out = Outcome()
    server = dns_server(client, hosts)
    gone = {h.name for h in hosts if PRIMARY in h.groups}
    killed_at = time.monotonic()
    kill_site(client, hosts, PRIMARY)
    result = lab.run_job("failover")
    out.seconds["failover.yml"] = result.seconds
    if not playbook_ok_except(result, gone):
        out.failures.append(f"failover.yml failed (exit {result.returncode}, recap {result.recap})")
        return out
    standby_proxies = active_proxy_addresses(client, hosts, STANDBY)
    answered: list[tuple[str, str]] = []

    def served() -> bool:
        try:
            answered.append(infer_by_name(server))
            return True
        except (OSError, ssl.SSLError, http.client.HTTPException, ValueError, KeyError):
            return False

    if not wait(served, 60, 0.5):
        out.failures.append(f"no inference through {SERVICE_NAME} within 60 s after failover.yml")
        return out
    rto = out.seconds["RTO (kill to first answer by name)"] = time.monotonic() - killed_at
    answer, address = answered[-1]
    if address not in standby_proxies:
        out.failures.append(f"{SERVICE_NAME} answered from {address}, not a standby proxy {standby_proxies}")
    log(f"{SERVICE_NAME} -> {address} (standby) answered {answer!r}; RTO {rto:.1f} s")
    # While the primary is away the standby moves on: a new version, which the failback must bring back.
    node = next(s for p, s in pairs(hosts) if "gpu_nodes" in s.groups and "fallback_nodes" not in s.groups)
    version = next_version(client, node)
    publish_on(client, node, version, 5)
    serve_version(client, node, version)
    if not version_ready(client, node, version):
        out.failures.append(f"{node.name} did not load version {version} (the check's own setup)")
    log(f"{node.name} now serves version {version}, published during the outage")
    return out


def failback(client: docker.DockerClient, hosts: list[lab.LabHost]) -> Outcome:
    """Start the primary site again, fail back (resync, verify, switch), and compare both sides file by file."""
    out = Outcome()
    server = dns_server(client, hosts)
    lab.create_hosts(client, hosts)  # starts the killed containers, records their (maybe new) addresses
    result = lab.run_job("failback", {"failback_switch": "true"})
    out.seconds["failback.yml"] = result.seconds
    if not result.ok:
        out.failures.append(f"failback.yml failed (exit {result.returncode}, recap {result.recap})")
        return out
    try:
        answer, address = infer_by_name(server)
    except (OSError, ssl.SSLError, http.client.HTTPException, ValueError, KeyError) as exc:
        out.failures.append(f"no inference through {SERVICE_NAME} after failback: {exc}")
        return out
    if address not in active_proxy_addresses(client, hosts, PRIMARY):
        out.failures.append(f"{SERVICE_NAME} answered from {address} after failback, not a primary proxy")
    log(f"{SERVICE_NAME} -> {address} (primary) answered {answer!r}")
    for primary, standby in pairs(hosts):
        if "gpu_nodes" not in primary.groups:
            continue
        mine, theirs = tree_sums(client, primary), tree_sums(client, standby)
        if not mine or mine != theirs:
            lost = sorted(set(theirs) - set(mine)) + sorted(k for k in mine if k in theirs and mine[k] != theirs[k])
            out.failures.append(f"{primary.name} and {standby.name} differ after failback: {lost[:5]}")
        else:
            log(f"{primary.name} and {standby.name}: {len(mine)} files, every sha256 equal")
        _, a = run(client, primary, f"cat {GOLDEN}")
        _, b = run(client, standby, f"cat {INBOX}/small/golden/answers.json")
        digests = [json.loads(x).get("digest") if x.strip().startswith("{") else None for x in (a, b)]
        if None in digests or digests[0] != digests[1]:
            out.failures.append(f"golden answers differ between {primary.name} and {standby.name} after failback")
    if not wait(lambda: all(textfile(client, s).get("deepseek_dr_receiving") == 1 for _, s in pairs(hosts)), 30):
        out.failures.append("replication to the standby did not resume after failback")
    return out
