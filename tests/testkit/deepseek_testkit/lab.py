#!/usr/bin/env python3
"""The lab: the whole deepseek.cluster stack on systemd containers on one machine.

The inventory inventories/lab/hosts.yml is the single source of truth: every host in its
`lab` group becomes a Debian 12 systemd container of the same name on one docker network.

Run as ``python -m deepseek_testkit.lab COMMAND`` (the make lab* targets do):

    up        create the lab hosts (if missing), run site.yml, print what runs where
    converge  run site.yml on the existing lab hosts
    status    print what runs where
    test      fresh lab, converge twice (the second must change nothing), end-to-end checks, the DR cycle,
              a rolling upgrade under load (--extended: the certificate and CA rotations too), remove
    failover  kill the primary site's containers, run failover.yml, infer through the service name
    failback  start the primary site again, run failback.yml (resync, verify, switch back), compare
    upgrade       rolling_upgrade.yml over the primary site (Triton restarted on each node) under load
    rotate-certs  rotate_certs.yml (every certificate issued again) under load
    rotate-ca     rotate_certs.yml's CA rotation, phases trust, issue, finish, under load
    down      remove the lab hosts and network
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import docker
from docker.models.containers import Container

from deepseek_testkit import ROOT

INVENTORY = ROOT / "inventories" / "lab"
LABEL = "deepseek.cluster.lab"
BOOT_TIMEOUT_S = 120
LAB_MODEL = "deepseek"
LAB_PROMPT = "What does the standby site do?"
RECAP_LINE = re.compile(r"^(?P<host>\S+)\s*:\s*(?P<counts>(?:\w+=\d+\s*)+)$")
# How the controller reaches the lab hosts: SSH with the lab's own key, to the addresses and host keys
# recorded when the hosts were created (inventories/lab/group_vars/all.yml points ansible at CONFIG).
SSH_DIR = ROOT / ".cache" / "lab" / "ssh"
SSH_KEY = SSH_DIR / "id_ed25519"
SSH_CONFIG = SSH_DIR / "config"
KNOWN_HOSTS = SSH_DIR / "known_hosts"
HOST_KEY = "/etc/ssh/ssh_host_ed25519_key.pub"
APT_LISTS = "/var/lib/apt/lists"


@dataclass
class LabHost:
    """One lab host as the inventory describes it."""

    name: str
    groups: list[str]
    network: str
    image: str


@dataclass
class PlaybookRun:
    """What one ansible-playbook run did: its exit code, duration and per-host recap."""

    returncode: int
    seconds: float
    recap: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def changed(self) -> int:
        """Total number of changed tasks over all hosts."""
        return sum(counts.get("changed", 0) for counts in self.recap.values())

    @property
    def ok(self) -> bool:
        """True when the run exited 0 and no host failed or was unreachable."""
        bad = sum(c.get("failed", 0) + c.get("unreachable", 0) for c in self.recap.values())
        return self.returncode == 0 and bad == 0 and bool(self.recap)


def log(message: str) -> None:
    """Print a lab progress line."""
    print(f"lab: {message}", flush=True)


def tool(name: str) -> str:
    """Path of an ansible command: beside this Python (the project virtualenv) when it is there."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else name


def ansible_env() -> dict[str, str]:
    """Environment for ansible commands run from this checkout."""
    env = dict(os.environ)
    env["ANSIBLE_CONFIG"] = str(ROOT / "ansible.cfg")
    env["ANSIBLE_COLLECTIONS_PATH"] = str(ROOT / "collections")
    return env


def lab_hosts() -> list[LabHost]:
    """Read the lab hosts, their groups and container settings from the lab inventory."""
    out = subprocess.run(
        [tool("ansible-inventory"), "-i", str(INVENTORY), "--list"],
        check=True,
        capture_output=True,
        text=True,
        env=ansible_env(),
        cwd=ROOT,
    ).stdout
    data = json.loads(out)
    hostvars = data.get("_meta", {}).get("hostvars", {})
    groups_of: dict[str, list[str]] = {}
    for group in data:
        if group in ("_meta", "all", "ungrouped", "lab"):
            continue
        for host in expand_group(data, group):
            groups_of.setdefault(host, []).append(group)
    hosts = []
    for name in sorted(expand_group(data, "lab")):
        hv = hostvars.get(name, {})
        hosts.append(LabHost(name, sorted(groups_of.get(name, [])), hv["lab_network"], hv["lab_image"]))
    if not hosts:
        raise SystemExit(f"lab: the inventory {INVENTORY} has no hosts in group 'lab'")
    return hosts


def expand_group(data: dict, group: str) -> set[str]:
    """All hosts of a group in `ansible-inventory --list` output, children included."""
    body = data.get(group, {})
    hosts = set(body.get("hosts", []))
    for child in body.get("children", []):
        hosts |= expand_group(data, child)
    return hosts


def ensure_engine_and_image() -> None:
    """Start the docker engine and build the base image when they are missing."""
    for script in ("ensure-docker.sh", "build-base-image.sh"):
        subprocess.run([str(ROOT / "molecule" / "scripts" / script)], check=True)


def create_hosts(client: docker.DockerClient, hosts: list[LabHost]) -> None:
    """Create (or start) one systemd container per lab host, wait until each has booted, give SSH access.

    A new host starts as a fresh machine: no package lists (checked) and a lists directory dated now, so
    that a role trusting apt's cache age alone fails here, whatever the age of the base image.
    """
    created = []
    for network in {h.network for h in hosts}:
        if not client.networks.list(names=[network]):
            log(f"creating network {network}")
            client.networks.create(network, driver="bridge", labels={LABEL: "1"})
    for host in hosts:
        container = find_container(client, host.name)
        if container is None:
            log(f"creating {host.name}")
            client.containers.run(
                host.image,
                command="/sbin/init",
                name=host.name,
                hostname=host.name,
                detach=True,
                network=host.network,
                cap_add=["SYS_ADMIN", "NET_ADMIN"],
                tmpfs={"/run": "", "/run/lock": ""},
                volumes={"/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"}},
                environment={"container": "docker"},
                stop_signal="SIGRTMIN+3",
                labels={LABEL: "1"},
            )
            created.append(host.name)
        elif container.image.id != client.images.get(host.image).id:
            raise SystemExit(f"lab: {host.name} runs an older {host.image}; remove the lab first (make lab-down)")
        elif container.status != "running":
            log(f"starting {host.name}")
            container.start()
    for host in hosts:
        wait_for_boot(client, host.name)
        if host.name in created:
            fresh_package_index(client.containers.get(host.name))
    grant_ssh(client, hosts)


def fresh_package_index(container: Container) -> None:
    """Check a new host has no package lists, and date the empty lists directory now."""
    found = container.exec_run(["find", APT_LISTS, "-name", "*_Packages*"]).output.decode().split()
    if found:
        raise SystemExit(f"lab: {container.name} starts with {len(found)} package lists; the base image must ship none")
    container.exec_run(["rm", "-f", "/var/lib/apt/periodic/update-success-stamp"])
    container.exec_run(["touch", APT_LISTS])


def ssh_public_key() -> str:
    """The lab's own SSH key (made once, kept in the checkout's ignored .cache); returns the public half."""
    if not SSH_KEY.exists():
        SSH_DIR.mkdir(parents=True, exist_ok=True)
        SSH_DIR.chmod(0o700)
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "deepseek-cluster-lab", "-f", str(SSH_KEY)],
            check=True,
        )
    return SSH_KEY.with_suffix(".pub").read_text().strip()


def authorize(container: Container, public_key: str) -> None:
    """Install the lab key as root's only authorized key (the bootstrap step cloud-init does elsewhere)."""
    data = (public_key + "\n").encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        directory = tarfile.TarInfo(".ssh")
        directory.type, directory.mode = tarfile.DIRTYPE, 0o700
        archive.addfile(directory)
        keys = tarfile.TarInfo(".ssh/authorized_keys")
        keys.size, keys.mode = len(data), 0o600
        archive.addfile(keys, io.BytesIO(data))
    container.put_archive("/root", buffer.getvalue())


def host_key(container: Container) -> str:
    """The host's ed25519 public key ("type base64"), read through the engine (made at its first boot)."""
    deadline = time.monotonic() + BOOT_TIMEOUT_S
    while time.monotonic() < deadline:
        result = container.exec_run(["cat", HOST_KEY])
        fields = result.output.decode().split()
        if result.exit_code == 0 and len(fields) >= 2:
            return " ".join(fields[:2])
        time.sleep(1)
    raise SystemExit(f"lab: {container.name} has no SSH host key ({HOST_KEY})")


def grant_ssh(client: docker.DockerClient, hosts: list[LabHost]) -> None:
    """Authorize the lab key on every host and record each host's address and host key for ansible's SSH."""
    public_key = ssh_public_key()
    blocks, known = [], []
    for host in hosts:
        container = client.containers.get(host.name)
        authorize(container, public_key)
        known.append(f"{host.name} {host_key(container)}")
        blocks += [f"Host {host.name}", f"  HostName {container_ip(client, host)}", f"  HostKeyAlias {host.name}"]
    # The host blocks come before "Host *": ssh keeps the first value it meets for each option.
    common = [
        "Host *",
        "  User root",
        f"  IdentityFile {SSH_KEY}",
        "  IdentitiesOnly yes",
        f"  UserKnownHostsFile {KNOWN_HOSTS}",
        "  StrictHostKeyChecking yes",
        "  PasswordAuthentication no",
        "  ConnectTimeout 10",
    ]
    header = ["# Written by deepseek_testkit.lab: how the controller reaches the lab hosts (ansible: -F this file)."]
    KNOWN_HOSTS.write_text("\n".join(known) + "\n")
    SSH_CONFIG.write_text("\n".join(header + blocks + common) + "\n")
    log(f"SSH: {len(hosts)} hosts, host keys recorded in {KNOWN_HOSTS.relative_to(ROOT)}")


def find_container(client: docker.DockerClient, name: str) -> Container | None:
    """The container of that exact name, or None."""
    for container in client.containers.list(all=True, filters={"name": f"^{name}$"}):
        if container.name == name:
            return container
    return None


def wait_for_boot(client: docker.DockerClient, name: str) -> None:
    """Wait until systemd in the container reports running (or degraded, which is said)."""
    container = client.containers.get(name)
    deadline = time.monotonic() + BOOT_TIMEOUT_S
    state = ""
    while time.monotonic() < deadline:
        state = container.exec_run(["systemctl", "is-system-running"]).output.decode().strip()
        if state in ("running", "degraded"):
            if state == "degraded":
                failed = container.exec_run(["systemctl", "--failed", "--no-legend"]).output.decode()
                log(f"{name} booted degraded: {failed.strip()}")
            return
        time.sleep(1)
    raise SystemExit(f"lab: {name} did not finish booting in {BOOT_TIMEOUT_S} s (last state: {state!r})")


def remove_hosts(client: docker.DockerClient) -> None:
    """Remove every container and network the lab created."""
    for container in client.containers.list(all=True, filters={"label": LABEL}):
        log(f"removing {container.name}")
        container.remove(force=True)
    for network in client.networks.list(filters={"label": LABEL}):
        log(f"removing network {network.name}")
        network.remove()


def parse_recap(output: str) -> dict[str, dict[str, int]]:
    """Per-host counters from the PLAY RECAP block of ansible-playbook's output."""
    recap: dict[str, dict[str, int]] = {}
    in_recap = False
    for raw in output.splitlines():
        line = re.sub(r"\x1b\[[0-9;]*m", "", raw).strip()
        if line.startswith("PLAY RECAP"):
            in_recap, recap = True, {}
            continue
        match = RECAP_LINE.match(line) if in_recap else None
        if match:
            counts = dict(pair.split("=") for pair in match["counts"].split())
            recap[match["host"]] = {key: int(value) for key, value in counts.items()}
    return recap


def run_playbook(playbook: str = "site.yml", extra: list[str] | None = None) -> PlaybookRun:
    """Run a playbook against the lab inventory, streaming its output, and return its recap."""
    cmd = [tool("ansible-playbook"), "-i", str(INVENTORY), str(ROOT / playbook), *(extra or [])]
    env = ansible_env() | {"ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0"}
    log(" ".join([Path(cmd[0]).name] + [os.path.relpath(c, ROOT) if c.startswith(str(ROOT)) else c for c in cmd[1:]]))
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        lines.append(line)
    returncode = proc.wait()
    return PlaybookRun(returncode, time.monotonic() - start, parse_recap("".join(lines)))


def run_job(
    template: str,
    answers: dict[str, object] | None = None,
    playbook: str | None = None,
    collections: Path | None = None,
) -> PlaybookRun:
    """Run an AWX job template's playbook against the lab through ansible-runner (AWX's engine), with the extra
    variables AWX would give it (the template's, the survey's defaults, ``answers``); its recap as run_playbook's.
    """
    from deepseek_testkit.awx_runner import run_template

    log(f"job template {template}: {playbook or ''} {json.dumps(answers or {})}")
    start = time.monotonic()
    rc, stats = run_template(template, INVENTORY, answers, quiet=False, playbook=playbook, collections_path=collections)
    recap = {
        host: {
            "ok": s["ok"],
            "changed": s["changed"],
            "unreachable": s["dark"],
            "failed": s["failures"],
            "skipped": s["skipped"],
            "rescued": s["rescued"],
            "ignored": s["ignored"],
        }
        for host, s in stats.items()
    }
    return PlaybookRun(rc, time.monotonic() - start, recap)


def installed_collection() -> Path:
    """Build the collection's tarball and install it under .cache/collection (the collections path to use)."""
    work = ROOT / ".cache" / "collection"
    dist, installed = work / "dist", work / "installed"
    subprocess.run(["rm", "-rf", str(work)], check=True)
    env = ansible_env()
    subprocess.run(
        [tool("ansible-galaxy"), "collection", "build", "--force", "--output-path", str(dist), str(ROOT)],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    tarball = next(dist.glob("deepseek-cluster-*.tar.gz"))
    subprocess.run(
        [tool("ansible-galaxy"), "collection", "install", "--force", "--no-deps", "-p", str(installed), str(tarball)],
        check=True,
        env=env | {"ANSIBLE_COLLECTIONS_PATH": str(installed)},
        stdout=subprocess.DEVNULL,
    )
    log(f"installed {tarball.name} into {os.path.relpath(installed, ROOT)}")
    return installed


def container_ip(client: docker.DockerClient, host: LabHost) -> str:
    """The host's address on its lab network."""
    container = client.containers.get(host.name)
    return container.attrs["NetworkSettings"]["Networks"][host.network]["IPAddress"]


def status(client: docker.DockerClient, hosts: list[LabHost]) -> None:
    """Print each lab host, its groups, its address and whether node_exporter answers the monitoring host.

    The host firewall admits node_exporter from the monitoring hosts only, so that is where it is read from.
    """
    monitor = next((h for h in hosts if "monitoring" in h.groups), hosts[0])
    print()
    print(f"{'host':<20} {'address':<15} {'groups':<42} node_exporter (from {monitor.name})")
    for host in hosts:
        ip = container_ip(client, host)
        url = f"https://{host.name}:9100/metrics"
        body = exec_text(client, monitor, scrape_argv(monitor, host))
        series = sum(1 for line in body.splitlines() if line.startswith("node_"))
        state = f"{url}  ({series} node_* samples)" if series else f"{url}  NOT ANSWERING"
        groups = ",".join(host.groups)
        print(f"{host.name:<20} {ip:<15} {groups:<42} {state}")
    print()
    from deepseek_testkit import dr_check  # the service name and replication

    try:
        server = dr_check.dns_server(client, hosts)
        addresses = dr_check.resolve(dr_check.SERVICE_NAME, server)
        by_address = {container_ip(client, h): h.name for h in hosts}
        named = ", ".join(f"{a} ({by_address.get(a, '?')})" for a in addresses)
        print(f"Active site: {dr_check.SERVICE_NAME} -> {named}   (DNS server {server})")
    except (OSError, StopIteration, ValueError) as exc:
        print(f"Active site: {dr_check.SERVICE_NAME} not resolved ({exc})")
    for primary, standby in dr_check.pairs(hosts):
        lag = dr_check.textfile(client, standby).get("deepseek_dr_replication_lag_seconds")
        state = f"lag {lag:.1f} s" if lag is not None else "not receiving"
        print(f"Replication: {primary.name} -> {standby.name}: {state}")
    print()
    print(f"Shell on a host:   ssh -F {SSH_CONFIG.relative_to(ROOT)} <host>   (or docker exec -it <host> bash)")
    print("Re-run the stack:  make lab        Remove it:  make lab-down")
    print("Disaster recovery: make lab-failover (kill the primary, fail over)   make lab-failback (bring it back)")


def scrape_argv(monitor: LabHost, host: LabHost, client_cert: bool = True) -> list[str]:
    """The curl command line the monitoring host scrapes a host's node_exporter with.

    TLS 1.3, the deployment's CA, and (unless client_cert is false) the monitoring host's scrape
    certificate from the pki role (playbooks/monitoring.yml).
    """
    argv = ["curl", "-sf", "--max-time", "5", "--tlsv1.3", "--cacert", f"{LAB_PKI_DIR}/ca.crt"]
    if client_cert:
        scrape = f"{monitor.name}-scrape"
        argv += ["--cert", f"{LAB_PKI_DIR}/{scrape}.crt", "--key", f"{LAB_PKI_DIR}/private/{scrape}.key"]
    return [*argv, f"https://{host.name}:9100/metrics"]


def end_to_end_checks(client: docker.DockerClient, hosts: list[LabHost]) -> list[str]:
    """Checks across the lab network; returns the list of failures (empty when all pass)."""
    failures = []
    monitor = next((h for h in hosts if "monitoring" in h.groups), hosts[0])
    scraper = client.containers.get(monitor.name)
    for host in hosts:
        result = scraper.exec_run(scrape_argv(monitor, host))
        body = result.output.decode(errors="replace")
        if result.exit_code != 0 or "node_cpu_seconds_total" not in body:
            failures.append(f"{monitor.name} could not scrape node_* metrics from {host.name}:9100 over mutual TLS")
            continue
        anonymous = scraper.exec_run(scrape_argv(monitor, host, client_cert=False))
        if anonymous.exit_code == 0 or "node_cpu_seconds_total" in anonymous.output.decode(errors="replace"):
            failures.append(f"{host.name}:9100 answered {monitor.name} without a client certificate")
        else:
            log(f"{monitor.name} scraped {host.name}:9100 over TLS 1.3 with its scrape certificate only")
    for host in hosts:
        if "gpu_nodes" in host.groups:
            failures += gpu_node_checks(client.containers.get(host.name), host.name)
    failures += site_checks(client, hosts)
    return failures


def generate_from(client: docker.DockerClient, via: LabHost, address: str, prompt: str, max_tokens: int) -> str:
    """One inference on Triton's HTTP generate endpoint at ``address``, sent from lab host ``via``.

    Triton admits its own site's proxies only (host firewall), so ``via`` is one of them.
    """
    body = json.dumps({"text_input": prompt, "sampling_param_max_tokens": max_tokens})
    url = f"http://{address}:8000/v2/models/{LAB_MODEL}/generate"
    argv = ["curl", "-sf", "--max-time", "30", "-H", "Content-Type: application/json", "-d", body, url]
    answer = exec_text(client, via, argv)
    try:
        return json.loads(answer)["text_output"]
    except (ValueError, KeyError) as exc:
        raise ValueError(f"no answer from {address}:8000 via {via.name}: {answer!r}") from exc


def stream_through_proxy(address: str, prompt: str, max_tokens: int) -> list[tuple[str | None, bool]]:
    """One streamed inference over a gRPC stream through a proxy (mTLS, the lab client).

    Every response as (its text_output, or None for a response without one; whether it is the final one).
    """
    import tritonclient.grpc as grpcclient

    from deepseek_testkit.model_inputs import generate_inputs

    pieces: list[tuple[str | None, bool]] = []
    errors: list[Exception] = []

    def collect(result: grpcclient.InferResult | None, error: Exception | None) -> None:
        if error is not None:
            errors.append(error)
        elif result is not None:
            text = result.as_numpy("text_output")
            final = result.get_response().parameters["triton_final_response"].bool_param
            pieces.append((None if text is None else text[0].decode(), final))

    clients = PKI_STORE / "clients"
    inputs = generate_inputs(grpcclient, prompt, max_tokens, streaming=True)
    client = grpcclient.InferenceServerClient(
        f"{address}:8443",
        ssl=True,
        root_certificates=str(PKI_STORE / "ca.crt"),
        private_key=str(clients / f"{LAB_CLIENT}.key"),
        certificate_chain=str(clients / f"{LAB_CLIENT}.crt"),
    )
    client.start_stream(callback=collect)
    client.async_stream_infer(LAB_MODEL, inputs, enable_empty_final_response=True)
    client.stop_stream()  # waits for the stream's final response
    client.close()
    if errors:
        raise ValueError(f"stream error: {errors[0]}")
    return pieces


def inference_checks(client: docker.DockerClient, nodes: list[LabHost], proxies: list[LabHost]) -> list[str]:
    """A real inference on every inference node (sent from its site's proxy, the one host Triton admits).

    Every node must give the same answer (same seed): the prompt, then the generated words. A gRPC stream
    through each proxy must be one response per token, each carrying the words generated so far (the llmapi
    contract: a streamed text never carries the prompt), the last one the answer's generated words and the
    only one marked final. Then the llmapi conformance suite (tests/conformance) runs once through the first
    proxy.
    """
    failures, answers = [], {}
    for node in nodes:
        via = next(p for p in proxies if site_of(p) == site_of(node))
        try:
            answers[node.name] = generate_from(client, via, container_ip(client, node), LAB_PROMPT, 24)
            log(f"{node.name} (from {via.name}): {LAB_PROMPT!r} -> {answers[node.name]!r}")
        except ValueError as exc:
            failures.append(f"{node.name}: inference on Triton failed: {exc}")
    if len(set(answers.values())) > 1:
        failures.append(f"inference nodes disagree on the same prompt: {answers}")
    if failures:
        return failures
    expected = next(iter(answers.values()))
    if not expected.startswith(LAB_PROMPT):
        return [f"the answer {expected!r} does not start with the prompt {LAB_PROMPT!r}"]
    generated = expected[len(LAB_PROMPT) :]
    for proxy in proxies:
        try:
            pieces = stream_through_proxy(container_ip(client, proxy), LAB_PROMPT, 24)
        except (OSError, ValueError) as exc:
            failures.append(f"{proxy.name}: a gRPC stream through the proxy failed: {exc}")
            continue
        texts = [text for text, _final in pieces]
        cumulative = None not in texts and all(b.startswith(a) for a, b in zip(texts, texts[1:], strict=False))
        finals = [final for _text, final in pieces]
        if len(pieces) != 24 or not cumulative or texts[-1] != generated or finals != [False] * 23 + [True]:
            failures.append(
                f"{proxy.name}: the gRPC stream gave {pieces!r}, not 24 responses with the words generated so far "
                "ending in the answer's, the last one final"
            )
        else:
            log(f"{proxy.name}: gRPC stream through the proxy, 24 responses, each the words so far, the last final")
    return failures or conformance_checks(client, proxies[0])


CONFORMANCE = ROOT / "tests" / "conformance"
CONFORMANCE_TIMEOUT_S = 180


def conformance_checks(client: docker.DockerClient, proxy: LabHost) -> list[str]:
    """The llmapi conformance suite (tests/conformance) against the lab model, through ``proxy``.

    HTTPS and gRPC with TLS to the proxy with the lab client's certificate, as any client reaches the
    model (Triton's own ports admit only the proxies).
    """
    address = container_ip(client, proxy)
    clients = PKI_STORE / "clients"
    env = os.environ | {
        "CONFORMANCE_HTTP_URL": f"https://{address}:8443",
        "CONFORMANCE_GRPC_URL": f"{address}:8443",
        "CONFORMANCE_MODEL": LAB_MODEL,
        "CONFORMANCE_CA": str(PKI_STORE / "ca.crt"),
        "CONFORMANCE_CERT": str(clients / f"{LAB_CLIENT}.crt"),
        "CONFORMANCE_KEY": str(clients / f"{LAB_CLIENT}.key"),
    }
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(CONFORMANCE)]
    started = time.monotonic()
    try:
        run = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=CONFORMANCE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return [f"{proxy.name}: the llmapi conformance suite ran past {CONFORMANCE_TIMEOUT_S} s"]
    summary = (run.stdout.strip().splitlines() or ["no output"])[-1]
    if run.returncode != 0 or " passed" not in summary or "failed" in summary:
        print(run.stdout[-6000:] + run.stderr[-2000:], flush=True)
        return [f"{proxy.name}: the llmapi conformance suite through the proxy: {summary}"]
    log(f"{proxy.name}: llmapi conformance suite through the proxy: {summary} in {time.monotonic() - started:.0f} s")
    return []


def gpu_node_checks(node: Container, name: str) -> list[str]:
    """The user-space path of the GPU node roles: driver libraries held, CUDA runtime found, NVML reached."""
    failures = []
    held = node.exec_run(["apt-mark", "showhold"]).output.decode().split()
    if not {"nvidia-smi", "libcuda1", "libnvidia-ml1", "libcudart11.0"} <= set(held):
        failures.append(f"{name}: driver and CUDA packages are not all held (held: {held})")
    linker = node.exec_run(["ldconfig", "--print-cache"]).output.decode()
    if "libcudart.so.11.0" not in linker or "libcuda.so.1" not in linker:
        failures.append(f"{name}: the dynamic linker does not find libcudart.so.11.0 and libcuda.so.1")
    smi = node.exec_run(["nvidia-smi"])
    if smi.exit_code == 0 or b"NVML" not in smi.output:
        failures.append(f"{name}: nvidia-smi did not reach NVML and report no driver (rc {smi.exit_code})")
    if not failures:
        log(f"{name}: driver user space and CUDA runtime held, NVML reached, no kernel driver (container)")
    return failures


PKI_STORE = ROOT / ".cache" / "pki"
# Where the pki role puts certificates on the lab hosts (its default pki_dir).
LAB_PKI_DIR = "/etc/deepseek/pki"
LAB_CLIENT = "lab-client"


def tls_context(
    client_cert: bool = True, max_version: ssl.TLSVersion | None = None, name: str = LAB_CLIENT
) -> ssl.SSLContext:
    """A client context trusting the lab CA, with a client's certificate (the lab client's by default)."""
    context = ssl.create_default_context(cafile=str(PKI_STORE / "ca.crt"))
    if client_cert:
        clients = PKI_STORE / "clients"
        context.load_cert_chain(str(clients / f"{name}.crt"), str(clients / f"{name}.key"))
    if max_version is not None:
        context.maximum_version = max_version
    return context


def through_proxy(address: str, prompt: str, max_tokens: int, context: ssl.SSLContext | None = None) -> str:
    """One inference through a site's mutual-TLS proxy (HTTP generate), with the lab client's certificate."""
    body = json.dumps({"text_input": prompt, "sampling_param_max_tokens": max_tokens}).encode()
    request = urllib.request.Request(
        f"https://{address}:8443/v2/models/{LAB_MODEL}/generate",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30, context=context or tls_context()) as answer:  # noqa: S310
        return json.loads(answer.read())["text_output"]


def exec_text(client: docker.DockerClient, host: LabHost, argv: list[str]) -> str:
    """Run a read-only command on a lab host through the engine (the test harness's view) and return stdout."""
    return client.containers.get(host.name).exec_run(argv).output.decode(errors="replace")


SERVER_STATUS = re.compile(
    r'^haproxy_server_status\{proxy="(?P<backend>[^"]+)",server="(?P<server>[^"]+)",state="UP"\} 1$'
)
SUCCESS = re.compile(rf'^nv_inference_request_success\{{model="{LAB_MODEL}",version="[^"]*"\}} (?P<n>[0-9.e+]+)$')


def backends_up(metrics: str) -> dict[str, set[str]]:
    """The servers each backend has UP, from HAProxy's Prometheus exporter output."""
    backends: dict[str, set[str]] = {}
    for match in filter(None, map(SERVER_STATUS.match, metrics.splitlines())):
        backends.setdefault(match["backend"], set()).add(match["server"])
    return backends


def successful_requests(metrics: str) -> float:
    """Successful inference requests of the lab model, from Triton's Prometheus metrics output."""
    return sum(float(m["n"]) for m in map(SUCCESS.match, metrics.splitlines()) if m)


PROXY_METRICS_PASSWORD = ROOT / ".cache" / "lab" / "proxy-metrics-password"


def proxy_metrics(client: docker.DockerClient, proxy: LabHost) -> str:
    """A proxy's exporter output, read as Prometheus reads it.

    From the monitoring host, at the proxy's admin address (playbooks/proxy.yml binds it there for the
    monitoring hosts only), with the metrics password.
    """
    monitor = next(h for h in lab_hosts() if "monitoring" in h.groups)
    password = PROXY_METRICS_PASSWORD.read_text().split()[0]
    url = f"http://{container_ip(client, proxy)}:8404/metrics"
    return exec_text(client, monitor, ["curl", "-sf", "--max-time", "5", "-u", f"metrics:{password}", url])


def proxy_backends(client: docker.DockerClient, proxy: LabHost) -> dict[str, set[str]]:
    """The servers each backend of a proxy has UP, read from its exporter on its admin address."""
    return backends_up(proxy_metrics(client, proxy))


def served_requests(client: docker.DockerClient, node: LabHost, monitor: LabHost) -> float:
    """Successful inference requests Triton on the node has served for the lab model.

    Read from its :8002 metrics by the monitoring host, the one the host firewall admits there.
    """
    url = f"http://{container_ip(client, node)}:8002/metrics"
    metrics = exec_text(client, monitor, ["curl", "-sf", "--max-time", "5", url])
    if "nv_inference_request_success" not in metrics:
        raise ValueError(f"{monitor.name} could not read {url}")
    return successful_requests(metrics)


def site_of(host: LabHost) -> str:
    """The site group a lab host belongs to (primary or standby), or '' when it has none."""
    return next((g for g in host.groups if g in ("primary", "standby")), "")


def refused(address: str, context: ssl.SSLContext) -> str:
    """'' when a proxied request with this context is refused in the TLS handshake, else what happened.

    TLS 1.3 clients learn of a refused certificate after their side of the handshake, as an alert or a
    reset on the first read; nothing listening (connection refused) is not a TLS refusal.
    """
    try:
        return f"answered: {through_proxy(address, LAB_PROMPT, 4, context)!r}"
    except urllib.error.URLError as exc:
        reason = exc.reason
    except OSError as exc:
        reason = exc
    if isinstance(reason, ConnectionRefusedError) or not isinstance(reason, ssl.SSLError | ConnectionError):
        return f"failed otherwise: {reason!r}"
    return ""


def wait_for(condition: Callable[[], bool], seconds: float = 10.0) -> bool:
    """Poll a condition until it holds or the time is up; returns its last value."""
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.5)
    return condition()


def served_since(
    client: docker.DockerClient, nodes: list[LabHost], monitor: LabHost, before: dict[str, float], expected: int
) -> dict[str, float]:
    """Requests each node served since `before`, read until they add up to `expected` (10 s at most)."""
    deadline = time.monotonic() + 10
    while True:
        served = {n.name: served_requests(client, n, monitor) - before[n.name] for n in nodes}
        if sum(served.values()) >= expected or time.monotonic() > deadline:
            return served
        time.sleep(0.5)


def proxy_checks(
    client: docker.DockerClient, proxies: list[LabHost], nodes: list[LabHost], monitor: LabHost, expected: str
) -> list[str]:
    """Each proxy: backends = its own site's nodes, inferences land there only, refusals, the audit line."""
    failures = []
    for proxy in proxies:
        own = {n.name for n in nodes if site_of(n) == site_of(proxy)}
        backends = proxy_backends(client, proxy)
        for backend in ("triton_http", "triton_grpc"):
            if backends.get(backend, set()) != own:
                up = sorted(backends.get(backend, []))
                failures.append(f"{proxy.name}: backend {backend} has {up} UP, not {sorted(own)}")
        address = container_ip(client, proxy)
        try:
            before = {n.name: served_requests(client, n, monitor) for n in nodes}
            answers = [through_proxy(address, LAB_PROMPT, 24) for _ in range(PROXIED_REQUESTS)]
            served = served_since(client, nodes, monitor, before, PROXIED_REQUESTS)
        except (OSError, KeyError, ValueError) as exc:
            failures.append(f"{proxy.name}: inference through the proxy failed: {exc}")
            continue
        log(f"{proxy.name} (mTLS, {LAB_CLIENT}): {LAB_PROMPT!r} -> {answers[0]!r}; served by {served}")
        if set(answers) != {expected}:
            failures.append(f"{proxy.name}: the proxy answered {sorted(set(answers))!r}, the nodes {expected!r}")
        if sum(served[n] for n in own) != PROXIED_REQUESTS or any(served[n] for n in served if n not in own):
            failures.append(
                f"{proxy.name}: {PROXIED_REQUESTS} requests were served by {served}, not by {sorted(own)} only"
            )
        audit = exec_text(client, proxy, ["tail", "-n", "1", AUDIT_LOG]).strip()
        log(f"{proxy.name} audit: {audit}")
        if f"CN={LAB_CLIENT}" not in audit or '"status":200' not in audit:
            failures.append(f"{proxy.name}: the audit log's last line is not this request: {audit!r}")
        failures += refusal_checks(client, proxy, address)
    return failures


def refusal_checks(client: docker.DockerClient, proxy: LabHost, address: str) -> list[str]:
    """What the proxy's docs promise: no client certificate and TLS 1.2 refused at the handshake, both audited."""
    failures = []
    for label, context in (
        ("no client certificate", tls_context(client_cert=False)),
        ("TLS 1.2", tls_context(max_version=ssl.TLSVersion.TLSv1_2)),
    ):
        outcome = refused(address, context)
        if outcome:
            failures.append(f"{proxy.name}: a client with {label} was not refused at the handshake ({outcome})")

    def audited() -> bool:  # the lines go through rsyslog
        return exec_text(client, proxy, ["tail", "-n", "2", AUDIT_LOG]).count('"event":"refused"') == 2

    if not wait_for(audited):
        lines = exec_text(client, proxy, ["tail", "-n", "2", AUDIT_LOG])
        failures.append(f"{proxy.name}: the two refused handshakes are not the audit log's last lines: {lines!r}")
    elif not failures:
        log(f"{proxy.name}: refused without a client certificate and over TLS 1.2, both audited")
    return failures


PROXIED_REQUESTS = 4
AUDIT_LOG = "/var/log/haproxy/audit.log"


def site_checks(client: docker.DockerClient, hosts: list[LabHost]) -> list[str]:
    """The firewall, inference on every node and streamed through every proxy, then the proxies' own checks.

    An empty group, a host outside both sites, a site without nodes or without a proxy fails.
    """
    # A site's inference nodes; its fallback nodes (gpu_nodes too) are fallback_check.py's.
    nodes = [h for h in hosts if "gpu_nodes" in h.groups and "fallback_nodes" not in h.groups]
    proxies = [h for h in hosts if "proxies" in h.groups]
    failures = [
        f"the lab has no hosts in group {g}"
        for g, members in (("gpu_nodes", nodes), ("proxies", proxies))
        if not members
    ]
    failures += [f"{h.name} belongs to no site (primary or standby)" for h in nodes + proxies if not site_of(h)]
    failures += [f"site {s} has no inference node" for s in {site_of(p) for p in proxies} - {site_of(n) for n in nodes}]
    failures += [f"site {s} has no proxy" for s in {site_of(n) for n in nodes} - {site_of(p) for p in proxies}]
    if failures:
        return failures
    monitor = next((h for h in hosts if "monitoring" in h.groups), None)
    if monitor is None:
        return ["the lab has no host in group monitoring"]
    failures = firewall_checks(client, nodes, proxies, monitor)
    failures += inference_checks(client, nodes, proxies)
    if failures:
        return failures
    via = next(p for p in proxies if site_of(p) == site_of(nodes[0]))
    expected = generate_from(client, via, container_ip(client, nodes[0]), LAB_PROMPT, 24)
    failures = proxy_checks(client, proxies, nodes, monitor, expected)
    from deepseek_testkit.fallback_check import fallback_checks  # graceful degradation: overflow to the fallback nodes

    return failures + admin_checks(client, proxies, nodes) + fallback_checks(client, hosts)


TRITON_PORTS = (8000, 8001, 8002)


def connects(client: docker.DockerClient, source: LabHost | None, address: str, port: int) -> bool:
    """Whether a TCP handshake with address:port completes from lab host ``source`` (None: this machine)."""
    if source is None:
        try:
            with socket.create_connection((address, port), timeout=3):
                return True
        except OSError:
            return False
    probe = f"import socket; socket.create_connection(({address!r}, {port}), 3)"
    return client.containers.get(source.name).exec_run(["python3", "-c", probe]).exit_code == 0


def firewall_checks(
    client: docker.DockerClient, nodes: list[LabHost], proxies: list[LabHost], monitor: LabHost
) -> list[str]:
    """The proxy is the only door: Triton's ports closed to everyone the host firewall does not name.

    From the monitoring host (not a proxy) and from this machine (the controller), a GPU node's 8000 and
    8001 are closed; 8002 (metrics) is closed to the proxies and this machine, open to the monitoring host;
    8000 is open to the node's own site's proxy and closed to the other site's.
    """
    failures = []
    for node in nodes:
        address = container_ip(client, node)
        own = next(p for p in proxies if site_of(p) == site_of(node))
        other = next((p for p in proxies if site_of(p) != site_of(node)), None)
        expected = {(own.name, 8000): True, (own.name, 8002): False, (monitor.name, 8002): True}
        expected |= {(monitor.name, port): False for port in (8000, 8001)}
        expected |= {("this machine", port): False for port in TRITON_PORTS}
        if other is not None:
            expected[(other.name, 8000)] = False
        hosts = {own.name: own, monitor.name: monitor, "this machine": None} | ({other.name: other} if other else {})
        wrong = [
            f"{source}->{port} {'open' if not should else 'closed'}"
            for (source, port), should in sorted(expected.items())
            if connects(client, hosts[source], address, port) != should
        ]
        if wrong:
            failures.append(f"{node.name}: the host firewall is not what the inventory says: {', '.join(wrong)}")
        else:
            log(f"{node.name}: 8000/8001 only from {own.name}, 8002 only from {monitor.name} (checked from each)")
    return failures


LAB_ADMIN = "lab-admin"
# A name of its own per run: revocations are permanent in the lab's CA store, which outlives the hosts.
LAB_LEAVER = f"lab-leaver-{int(time.time())}"


def proxy_post(address: str, path: str, name: str) -> int:
    """The HTTP status of an empty POST through a proxy with client ``name``'s certificate."""
    request = urllib.request.Request(f"https://{address}:8443{path}", data=b"{}", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60, context=tls_context(name=name)) as answer:  # noqa: S310
            return answer.status
    except urllib.error.HTTPError as err:
        return err.code


def node_status(client: docker.DockerClient, via: LabHost, node: LabHost, method: str, path: str) -> str:
    """The HTTP status Triton on ``node`` gives ``via`` (a host its firewall admits), straight, no key."""
    url = f"http://{container_ip(client, node)}:8000{path}"
    return exec_text(client, via, ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", method, url]).strip()


def site_ready(client: docker.DockerClient, proxy: LabHost, nodes: list[LabHost]) -> bool:
    """Whether every node has the lab model ready (asked from the site's proxy, the host Triton admits)."""
    return all(node_status(client, proxy, n, "GET", f"/v2/models/{LAB_MODEL}/ready") == "200" for n in nodes)


def admin_checks(client: docker.DockerClient, proxies: list[LabHost], nodes: list[LabHost]) -> list[str]:
    """Management through the proxy: the admin client may, the inference client may not, Triton wants the key.

    Per proxy: lab-admin reads the repository index (200), lab-client is refused (403), and the site's
    proxy host itself, straight to Triton without the key, is refused by Triton (403). Then lab-admin
    unloads the model and loads it again through the proxy (one request per node, round robin), and every
    node of the site is ready again.
    """
    failures = []
    for proxy in proxies:
        address = container_ip(client, proxy)
        site_nodes = [n for n in nodes if site_of(n) == site_of(proxy)]
        index = "/v2/repository/index"
        got = {
            LAB_ADMIN: proxy_post(address, index, LAB_ADMIN),
            LAB_CLIENT: proxy_post(address, index, LAB_CLIENT),
            f"{proxy.name} straight to {site_nodes[0].name}": node_status(client, proxy, site_nodes[0], "POST", index),
        }
        if got != {LAB_ADMIN: 200, LAB_CLIENT: 403, f"{proxy.name} straight to {site_nodes[0].name}": "403"}:
            failures.append(f"{proxy.name}: repository index statuses {got}, not admin 200, client 403, straight 403")
            continue
        unload = proxy_post(address, f"/v2/repository/models/{LAB_MODEL}/unload", LAB_ADMIN)
        loads = [proxy_post(address, f"/v2/repository/models/{LAB_MODEL}/load", LAB_ADMIN) for _ in site_nodes]
        ready = wait_for(functools.partial(site_ready, client, proxy, site_nodes), 60)
        if unload != 200 or set(loads) != {200} or not ready:
            failures.append(f"{proxy.name}: lab-admin unload {unload}, loads {loads}, all nodes ready again: {ready}")
        else:
            log(f"{proxy.name}: {LAB_ADMIN} manages models (index, unload, load); {LAB_CLIENT}, no key: 403")
    return failures


def revocation_checks(client: docker.DockerClient, proxies: list[LabHost]) -> list[str]:
    """Revocation and CRL refresh the documented way, through playbooks/proxy.yml, as an operator runs them.

    1. proxy.yml with lab-leaver among pki_clients: it infers through every proxy.
    2. proxy.yml with lab-leaver moved to pki_revoke: every proxy refuses it at the handshake, lab-client
       is still served; a second run changes nothing.
    3. proxy.yml with the CRL inside its refresh window: the CRL is re-signed, and every proxy serves the
       new one (HAProxy's loaded CRL, read from its runtime API, has the store's lastUpdate).
    """
    clients = [{"name": LAB_CLIENT}, {"name": LAB_ADMIN}]
    issue = {"pki_clients": [*clients, {"name": LAB_LEAVER}]}
    revoke = {"pki_clients": clients, "pki_revoke": [LAB_LEAVER]}
    # A refresh window longer than the store's CRL has left, whatever an earlier run signed.
    days_left = crl_days_left(PKI_STORE / "ca.crl")
    refresh = revoke | {"pki_crl_valid_days": days_left + 2, "pki_crl_refresh_days": days_left + 1}
    failures: list[str] = []
    addresses = {p.name: container_ip(client, p) for p in proxies}
    if not run_playbook("playbooks/proxy.yml", ["-e", json.dumps(issue)]).ok:
        return ["proxy.yml issuing lab-leaver failed"]
    # The leaver's certificate and key as they keep them: the store drops a revoked client's key.
    leaver = tls_context(name=LAB_LEAVER)
    for name, address in addresses.items():
        try:
            through_proxy(address, LAB_PROMPT, 4, leaver)
        except OSError as exc:
            failures.append(f"{name}: lab-leaver, just issued, was not served: {exc}")
    if not run_playbook("playbooks/proxy.yml", ["-e", json.dumps(revoke)]).ok:
        return [*failures, "proxy.yml revoking lab-leaver failed"]
    again = run_playbook("playbooks/proxy.yml", ["-e", json.dumps(revoke)])
    changed = {h: c["changed"] for h, c in again.recap.items() if c.get("changed")}
    if not again.ok or changed:
        failures.append(f"proxy.yml after the revocation was not idempotent: changed {changed}")
    for proxy in proxies:
        name, address = proxy.name, addresses[proxy.name]
        outcome = refused(address, leaver)
        if outcome:
            failures.append(f"{name}: revoked lab-leaver was not refused at the handshake ({outcome})")
        elif not wait_for(functools.partial(refused_as_revoked, client, proxy)):
            failures.append(f"{name}: lab-leaver's refusal is not audited as a revoked certificate (cert_error 23)")
        try:
            through_proxy(address, LAB_PROMPT, 4)
        except OSError as exc:
            failures.append(f"{name}: lab-client was not served after lab-leaver's revocation: {exc}")
    before = crl_last_update(PKI_STORE / "ca.crl")
    if not run_playbook("playbooks/proxy.yml", ["-e", json.dumps(refresh)]).ok:
        return [*failures, "proxy.yml with the CRL in its refresh window failed"]
    after = crl_last_update(PKI_STORE / "ca.crl")
    if after == before:
        failures.append(f"the CRL in its refresh window was not re-signed (lastUpdate still {before})")
    for proxy in proxies:
        served = served_crl_last_update(client, proxy)
        if served != after:
            failures.append(f"{proxy.name}: HAProxy serves a CRL of {served}, the store's is of {after}")
    if not failures:
        log(f"lab-leaver issued, served, revoked and refused through proxy.yml; CRL re-signed ({after}) and served")
    return failures


def refused_as_revoked(client: docker.DockerClient, proxy: LabHost) -> bool:
    """Whether the proxy's last audited refusal (lab-leaver's, just made) was for a revoked certificate.

    OpenSSL's X509_V_ERR_CERT_REVOKED is 23: a refusal for any other reason (a reset, a full frontend)
    does not count.
    """
    for line in reversed(exec_text(client, proxy, ["tail", "-n", "20", AUDIT_LOG]).splitlines()):
        entry = json.loads(line) if line.startswith("{") else {}
        if entry.get("event") == "refused":
            return entry.get("cert_error") == 23
    return False


def crl_days_left(path: Path) -> int:
    """Whole days (rounded up) until a CRL file's nextUpdate."""
    out = subprocess.run(["openssl", "crl", "-in", str(path), "-noout", "-nextupdate"], capture_output=True, text=True)
    next_update = time.mktime(time.strptime(out.stdout.strip().removeprefix("nextUpdate="), "%b %d %H:%M:%S %Y %Z"))
    return max(1, -(-int(next_update - time.mktime(time.gmtime())) // 86400))


def crl_last_update(path: Path) -> str:
    """A CRL file's lastUpdate, as openssl prints it."""
    out = subprocess.run(["openssl", "crl", "-in", str(path), "-noout", "-lastupdate"], capture_output=True, text=True)
    return out.stdout.strip().removeprefix("lastUpdate=")


SHOW_CRL = (
    "import socket; s = socket.socket(socket.AF_UNIX); s.connect('/run/haproxy/admin.sock'); "
    "s.sendall(b'show ssl crl-file /etc/deepseek/pki/ca.crl\\n'); print(s.makefile().read())"
)


def served_crl_last_update(client: docker.DockerClient, proxy: LabHost) -> str:
    """The lastUpdate of the CRL HAProxy has loaded (its runtime API: show ssl crl-file), '' if none."""
    out = exec_text(client, proxy, ["python3", "-c", SHOW_CRL])
    match = re.search(r"^\s*Last Update: (.+)$", out, re.M)
    return match.group(1).strip() if match else ""


def cmd_up(client: docker.DockerClient) -> int:
    """Create the lab, converge it and print what runs where."""
    ensure_engine_and_image()
    hosts = lab_hosts()
    create_hosts(client, hosts)
    run = run_playbook()
    if not run.ok:
        log(f"site.yml failed (exit {run.returncode})")
        return 1
    log(f"site.yml converged in {run.seconds:.0f} s with {run.changed} changes")
    status(client, hosts)
    from deepseek_testkit.monitoring_check import (  # Prometheus, the probe's results, the alerts
        monitoring_status,
        probe_paused,
    )

    monitoring_status(client, hosts, next(h for h in hosts if "monitoring" in h.groups))
    with probe_paused(client, hosts):  # the checks count requests one by one
        failures = site_checks(client, hosts)
    for failure in failures:
        log(f"FAILED: {failure}")
    return 1 if failures else 0


def cmd_test(client: docker.DockerClient, keep: bool, extended: bool = False) -> int:
    """A fresh lab, two converges (the second changes nothing), end-to-end checks."""
    ensure_engine_and_image()
    remove_hosts(client)
    hosts = lab_hosts()
    failures: list[str] = []
    try:
        create_hosts(client, hosts)
        # The command docs/playbooks/gpu_nodes.md shows, on fresh hosts: check mode must get through
        # (nothing installed yet, no driver branch known to CUDA) and change nothing.
        check = run_playbook("playbooks/gpu_nodes.yml", ["--check"])
        if not check.ok:
            return report(["playbooks/gpu_nodes.yml --check failed on the fresh GPU nodes"])
        # The first converge: job template "site" (ansible-runner, as AWX runs it) with deepseek.cluster.site
        # from the collection's tarball, installed as an execution environment holds it: every play of it.
        first = run_job("site", playbook="deepseek.cluster.site", collections=installed_collection())
        if not first.ok:
            return report(["first converge (deepseek.cluster.site from the installed tarball) failed"])
        # The second may change nothing: site.yml (make test), or site.yml's playbooks one by one, each that has a job
        # template through it (--extended: through ansible-runner's event callbacks they take about 40 % longer).
        second = second_converge() if extended else run_playbook()
        if not second.ok:
            failures.append("a playbook of the second converge failed")
        changed = {h: c["changed"] for h, c in second.recap.items() if c.get("changed")}
        if changed:
            failures.append(f"second converge was not idempotent: changed tasks per host {changed}")
        if set(second.recap) != {h.name for h in hosts}:
            failures.append(f"recap hosts {sorted(second.recap)} differ from the lab hosts")
        # Monitoring first, while nothing but the converges has happened: a healthy lab raises no alert (the
        # checks after this one refuse and rate-limit requests on purpose).
        from deepseek_testkit.monitoring_check import monitoring_checks, probe_paused

        failures += monitoring_checks(client, hosts, next(h for h in hosts if "monitoring" in h.groups))
        with probe_paused(client, hosts):  # the checks below count requests one by one
            failures += end_to_end_checks(client, hosts)
            if not failures:
                failures += revocation_checks(client, [h for h in hosts if "proxies" in h.groups])
        if not failures:
            failures += dr_cycle(client, hosts)
        if not failures:
            # The rotations take minutes each (every certificate of both sites, HAProxy reloaded): make test-extended.
            failures += operations(client, hosts, ["upgrade"] + (["rotate-certs", "rotate-ca"] if extended else []))
        log(
            f"gpu_nodes.yml --check {check.seconds:.0f} s, first converge {first.seconds:.0f} s "
            f"({first.changed} changes), second {second.seconds:.0f} s"
        )
    finally:
        if not keep:
            remove_hosts(client)
    return report(failures)


# site.yml's playbooks in its order; those with an AWX job template (playbooks/vars/awx.yml) run through it.
SITE_PLAYBOOKS = [
    ("firewall", None),
    ("gpu_nodes", "gpu_nodes"),
    ("inference", "inference"),
    ("proxy", "proxy"),
    ("monitoring", "monitoring"),
    ("dns", None),
    ("dr", "dr"),
]


def second_converge() -> PlaybookRun:
    """site.yml's playbooks one after the other (job templates through ansible-runner); the recaps summed."""
    total = PlaybookRun(0, 0.0, {})
    for playbook, template in SITE_PLAYBOOKS:
        run = run_job(template) if template else run_playbook(f"playbooks/{playbook}.yml")
        log(f"{playbook}: exit {run.returncode}, {run.seconds:.0f} s, {run.changed} changes")
        total.seconds += run.seconds
        total.returncode = total.returncode or run.returncode
        for host, counts in run.recap.items():
            summed = total.recap.setdefault(host, {})
            for key, value in counts.items():
                summed[key] = summed.get(key, 0) + value
    return total


def dr_cycle(client: docker.DockerClient, hosts: list[LabHost]) -> list[str]:
    """Replication as dr.yml set it up, then a failover (the primary killed) and a failback, by the playbooks."""
    from deepseek_testkit import dr_check  # replication, failover and failback through the playbooks

    failures: list[str] = []
    seconds: dict[str, float] = {}
    for step in (dr_check.replication_checks, dr_check.failover, dr_check.failback):
        outcome = step(client, hosts)
        failures += outcome.failures
        seconds |= outcome.seconds
        if outcome.failures:
            break
    log("dr: " + ", ".join(f"{name} {value:.1f} s" for name, value in seconds.items()))
    return failures


# Day-2 operations under load (ops_check): make lab-upgrade, lab-rotate-certs, lab-rotate-ca; make lab-test runs the
# rolling upgrade after the disaster-recovery cycle, make lab-test-extended the rotations too.
OPERATIONS = {"upgrade": "rolling_upgrade", "rotate-certs": "rotate_certs", "rotate-ca": "rotate_ca"}


def operations(client: docker.DockerClient, hosts: list[LabHost], names: list[str]) -> list[str]:
    """Run the named operations under load, one after the other; print their times and failed-request counts."""
    from deepseek_testkit import ops_check

    failures: list[str] = []
    for name in names:
        outcome = getattr(ops_check, OPERATIONS[name])(client, hosts)
        times = ", ".join(f"{step} {value:.1f} s" for step, value in outcome.seconds.items())
        log(f"{name}: {times}; failed requests {sum(outcome.failed_requests.values())} {outcome.failed_requests}")
        failures += outcome.failures
        if outcome.failures:
            break
    return failures


def cmd_dr(client: docker.DockerClient, command: str) -> int:
    """Run `make lab-failover` or `make lab-failback` on a lab that runs."""
    from deepseek_testkit import dr_check

    hosts = lab_hosts()
    outcome = dr_check.failover(client, hosts) if command == "failover" else dr_check.failback(client, hosts)
    for name, value in outcome.seconds.items():
        log(f"{name}: {value:.1f} s")
    return report(outcome.failures)


def report(failures: list[str]) -> int:
    """Print the outcome of the lab test and return its exit code."""
    for failure in failures:
        log(f"FAILED: {failure}")
    print(f"lab: {0 if failures else 1} passed, {1 if failures else 0} failed")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "command",
        choices=["up", "converge", "status", "test", "failover", "failback", *OPERATIONS, "down"],
    )
    parser.add_argument("--keep", action="store_true", help="test: keep the lab afterwards")
    parser.add_argument("--extended", action="store_true", help="test: also the certificate and CA rotations")
    args = parser.parse_args(argv)
    client = docker.from_env()
    if args.command == "up":
        return cmd_up(client)
    if args.command == "converge":
        grant_ssh(client, lab_hosts())
        return 0 if run_playbook().ok else 1
    if args.command == "status":
        status(client, lab_hosts())
        return 0
    if args.command == "test":
        return cmd_test(client, args.keep, args.extended)
    if args.command in ("failover", "failback"):
        return cmd_dr(client, args.command)
    if args.command in OPERATIONS:
        return report(operations(client, lab_hosts(), [args.command]))
    remove_hosts(client)
    return 0


if __name__ == "__main__":
    sys.exit(main())
