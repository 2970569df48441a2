#!/usr/bin/env python3
"""The lab: the whole deepseek.cluster stack on systemd containers on one machine.

The inventory inventories/lab/hosts.yml is the single source of truth: every host in its
`lab` group becomes a Debian 12 systemd container of the same name on one docker network.

    lab.py up        create the lab hosts (if missing), run site.yml, print what runs where
    lab.py converge  run site.yml on the existing lab hosts
    lab.py status    print what runs where
    lab.py test      fresh lab, converge twice (the second must change nothing), end-to-end checks, remove
    lab.py down      remove the lab hosts and network
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
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

ROOT = Path(__file__).resolve().parents[2]
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
                cap_add=["SYS_ADMIN"],
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
    header = ["# Written by molecule/lab/lab.py: how the controller reaches the lab hosts (ansible: -F this file)."]
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


def container_ip(client: docker.DockerClient, host: LabHost) -> str:
    """The host's address on its lab network."""
    container = client.containers.get(host.name)
    return container.attrs["NetworkSettings"]["Networks"][host.network]["IPAddress"]


def fetch(url: str, timeout: float = 5.0) -> str:
    """GET a URL from this machine and return the body."""
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (lab addresses only)
        return response.read().decode()


def status(client: docker.DockerClient, hosts: list[LabHost]) -> None:
    """Print each lab host, its groups, its address and the endpoints that answer."""
    print()
    print(f"{'host':<20} {'address':<15} {'groups':<42} node_exporter")
    for host in hosts:
        ip = container_ip(client, host)
        url = f"http://{ip}:9100/metrics"
        try:
            series = sum(1 for line in fetch(url).splitlines() if line.startswith("node_"))
            state = f"{url}  ({series} node_* samples)"
        except OSError as err:
            state = f"{url}  NOT ANSWERING ({err})"
        groups = ",".join(host.groups)
        print(f"{host.name:<20} {ip:<15} {groups:<42} {state}")
    print()
    print(f"Shell on a host:   ssh -F {SSH_CONFIG.relative_to(ROOT)} <host>   (or docker exec -it <host> bash)")
    print("Re-run the stack:  make lab        Remove it:  make lab-down")


def end_to_end_checks(client: docker.DockerClient, hosts: list[LabHost]) -> list[str]:
    """Checks across the lab network; returns the list of failures (empty when all pass)."""
    failures = []
    monitor = next((h for h in hosts if "monitoring" in h.groups), hosts[0])
    scraper = client.containers.get(monitor.name)
    for host in hosts:
        result = scraper.exec_run(["curl", "-sf", "--max-time", "5", f"http://{host.name}:9100/metrics"])
        body = result.output.decode(errors="replace")
        if result.exit_code != 0 or "node_cpu_seconds_total" not in body:
            failures.append(f"{monitor.name} could not scrape node_* metrics from {host.name}:9100")
        else:
            log(f"{monitor.name} scraped {host.name}:9100 ({body.count(chr(10))} lines)")
    for host in hosts:
        if "gpu_nodes" in host.groups:
            failures += gpu_node_checks(client.containers.get(host.name), host.name)
    failures += site_checks(client, hosts)
    return failures


def generate(address: str, prompt: str, max_tokens: int) -> str:
    """One inference through Triton's HTTP generate endpoint (the production model's interface)."""
    body = json.dumps({"text_input": prompt, "sampling_param_max_tokens": max_tokens}).encode()
    request = urllib.request.Request(
        f"http://{address}:8000/v2/models/{LAB_MODEL}/generate",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310 (lab addresses only)
        return json.loads(answer.read())["text_output"]


def stream(address: str, prompt: str, max_tokens: int) -> list[str]:
    """One streamed inference over a gRPC stream (decoupled): the text of every response, in order."""
    import tritonclient.grpc as grpcclient
    from model_inputs import generate_inputs

    pieces: list[str] = []
    errors: list[Exception] = []

    def collect(result: grpcclient.InferResult | None, error: Exception | None) -> None:
        if error is not None:
            errors.append(error)
        elif result is not None and result.as_numpy("text_output") is not None:
            pieces.append(result.as_numpy("text_output")[0].decode())

    inputs = generate_inputs(grpcclient, prompt, max_tokens, streaming=True)
    client = grpcclient.InferenceServerClient(f"{address}:8001")
    client.start_stream(callback=collect)
    client.async_stream_infer(LAB_MODEL, inputs, enable_empty_final_response=True)
    client.stop_stream()  # waits for the stream's final response
    client.close()
    if errors:
        raise ValueError(f"stream error: {errors[0]}")
    return pieces


def inference_checks(client: docker.DockerClient, nodes: list[LabHost]) -> list[str]:
    """A real inference on every inference node, whole and streamed token by token over gRPC.

    Every node must give the same answer (same seed), and the stream must be one response per token
    that adds up to the whole answer.
    """
    failures, answers = [], {}
    for node in nodes:
        try:
            address = container_ip(client, node)
            answers[node.name] = generate(address, LAB_PROMPT, 24)
            log(f"{node.name}: {LAB_PROMPT!r} -> {answers[node.name]!r}")
            pieces = stream(address, LAB_PROMPT, 24)
            if len(pieces) != 24 or "".join(pieces) != answers[node.name]:
                failures.append(f"{node.name}: the gRPC stream gave {pieces!r}, not the answer token by token")
        except (OSError, KeyError, ValueError) as exc:
            failures.append(f"{node.name}: inference on Triton failed: {exc}")
    if len(set(answers.values())) > 1:
        failures.append(f"inference nodes disagree on the same prompt: {answers}")
    return failures


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
LAB_CLIENT = "lab-client"


def tls_context(client_cert: bool = True, max_version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    """A client context trusting the lab CA, with the lab client's certificate unless told otherwise."""
    context = ssl.create_default_context(cafile=str(PKI_STORE / "ca.crt"))
    if client_cert:
        clients = PKI_STORE / "clients"
        context.load_cert_chain(str(clients / f"{LAB_CLIENT}.crt"), str(clients / f"{LAB_CLIENT}.key"))
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


def proxy_backends(client: docker.DockerClient, proxy: LabHost) -> dict[str, set[str]]:
    """The servers each backend of a proxy has UP, read from its exporter on its admin address."""
    return backends_up(exec_text(client, proxy, ["curl", "-sf", "--max-time", "5", "http://127.0.0.1:8404/metrics"]))


def served_requests(client: docker.DockerClient, node: LabHost) -> float:
    """Successful inference requests Triton on the node has served for the lab model (its :8002 metrics)."""
    return successful_requests(fetch(f"http://{container_ip(client, node)}:8002/metrics"))


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
    client: docker.DockerClient, nodes: list[LabHost], before: dict[str, float], expected: int
) -> dict[str, float]:
    """Requests each node served since `before`, read until they add up to `expected` (10 s at most)."""
    deadline = time.monotonic() + 10
    while True:
        served = {n.name: served_requests(client, n) - before[n.name] for n in nodes}
        if sum(served.values()) >= expected or time.monotonic() > deadline:
            return served
        time.sleep(0.5)


def proxy_checks(client: docker.DockerClient, proxies: list[LabHost], nodes: list[LabHost], expected: str) -> list[str]:
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
            before = {n.name: served_requests(client, n) for n in nodes}
            answers = [through_proxy(address, LAB_PROMPT, 24) for _ in range(PROXIED_REQUESTS)]
            served = served_since(client, nodes, before, PROXIED_REQUESTS)
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
    """Inference on every node (whole and streamed), then through every proxy; an empty site fails."""
    nodes = [h for h in hosts if "gpu_nodes" in h.groups]
    proxies = [h for h in hosts if "proxies" in h.groups]
    failures = [
        f"the lab has no hosts in group {g}"
        for g, members in (("gpu_nodes", nodes), ("proxies", proxies))
        if not members
    ]
    failures += [f"{h.name} belongs to no site (primary or standby)" for h in nodes + proxies if not site_of(h)]
    failures += [f"site {s} has no inference node" for s in {site_of(p) for p in proxies} - {site_of(n) for n in nodes}]
    if failures:
        return failures
    failures = inference_checks(client, nodes)
    if failures:
        return failures
    expected = generate(container_ip(client, nodes[0]), LAB_PROMPT, 24)
    return proxy_checks(client, proxies, nodes, expected)


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
    failures = site_checks(client, hosts)
    for failure in failures:
        log(f"FAILED: {failure}")
    return 1 if failures else 0


def cmd_test(client: docker.DockerClient, keep: bool) -> int:
    """A fresh lab, two converges (the second changes nothing), end-to-end checks."""
    ensure_engine_and_image()
    remove_hosts(client)
    hosts = lab_hosts()
    failures: list[str] = []
    try:
        create_hosts(client, hosts)
        first = run_playbook()
        if not first.ok:
            return report(["first converge of site.yml failed"])
        second = run_playbook()
        if not second.ok:
            failures.append("second converge of site.yml failed")
        changed = {h: c["changed"] for h, c in second.recap.items() if c.get("changed")}
        if changed:
            failures.append(f"second converge was not idempotent: changed tasks per host {changed}")
        if set(second.recap) != {h.name for h in hosts}:
            failures.append(f"recap hosts {sorted(second.recap)} differ from the lab hosts")
        failures += end_to_end_checks(client, hosts)
        log(f"first converge {first.seconds:.0f} s ({first.changed} changes), second {second.seconds:.0f} s")
    finally:
        if not keep:
            remove_hosts(client)
    return report(failures)


def report(failures: list[str]) -> int:
    """Print the outcome of the lab test and return its exit code."""
    for failure in failures:
        log(f"FAILED: {failure}")
    print(f"lab: {0 if failures else 1} passed, {1 if failures else 0} failed")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["up", "converge", "status", "test", "down"])
    parser.add_argument("--keep", action="store_true", help="test: keep the lab afterwards")
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
        return cmd_test(client, args.keep)
    remove_hosts(client)
    return 0


if __name__ == "__main__":
    sys.exit(main())
