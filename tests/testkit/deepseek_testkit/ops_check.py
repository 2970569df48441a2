"""Day-2 operations under load in the lab: a rolling upgrade and a certificate rotation, each with a steady
stream of HTTP requests and gRPC streams through a site's mutual-TLS proxy, counting the requests that failed.

A request fails when it raises, answers other than 200 (HTTP) or ends without a final response or with an
error (gRPC), or gives an empty answer. The clients behave as the runbooks ask real clients to: HTTP keep-alive
connections that the proxy closes (a reload) are opened again, and clients take up the CA bundle they are handed
(``Load.refresh_trust``, after a CA rotation's trust phase) for their next connections.
"""

from __future__ import annotations

import http.client
import json
import ssl
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from deepseek_testkit.lab import LAB_CLIENT, LAB_MODEL, PKI_STORE, log
from deepseek_testkit.model_inputs import generate_inputs

PROMPT = "Summarise the failover procedure."
MAX_TOKENS = 8


def ca_bundle() -> str:
    """The CA certificates a lab client trusts: the store's CA and, during a CA rotation, the previous ones."""
    pems = [(PKI_STORE / "ca.crt").read_text()]
    pems += [path.read_text() for path in sorted(PKI_STORE.glob("previous-*/ca.crt"))]
    return "".join(pems)


@dataclass
class Tally:
    """Requests that succeeded and failed, per kind, with the first errors seen."""

    ok: Counter = field(default_factory=Counter)
    failed: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def success(self, kind: str) -> None:
        """Count one request that worked."""
        with self.lock:
            self.ok[kind] += 1

    def failure(self, kind: str, error: str) -> None:
        """Count one failed request and keep its error (the first 20)."""
        with self.lock:
            self.failed[kind] += 1
            if len(self.errors) < 20:
                self.errors.append(f"{time.strftime('%H:%M:%S')} {kind}: {error}")

    def summary(self) -> str:
        """One line: per kind, requests and failures."""
        kinds = sorted(set(self.ok) | set(self.failed))
        counts = [(kind, self.ok[kind] + self.failed[kind], self.failed[kind]) for kind in kinds]
        return ", ".join(f"{kind} {total} requests, {failed} failed" for kind, total, failed in counts)


class Load:
    """Closed-loop load through one proxy: ``http`` threads of generate requests, ``grpc`` threads of streams."""

    def __init__(self, address: str, http: int = 3, grpc: int = 2, rate: float = 7.0) -> None:
        """Start nothing yet; ``with Load(...) as load`` runs the threads for the block's duration.

        ``rate``: requests per second of all workers together, kept under the proxy's per-client limit
        (mtls_proxy_rate_limit, 100 per 10 s by default): the load's clients share one certificate.
        """
        self.address = address
        self.interval = (http + grpc) / rate
        self.local = threading.local()
        self.tally = Tally()
        self.stop = threading.Event()
        self.generation = 0  # bumped by refresh_trust: workers build new clients from the current files
        self.bundle = Path(tempfile.mkstemp(prefix="lab-ca-", suffix=".pem")[1])
        self.bundle.write_text((PKI_STORE / "ca.crt").read_text())
        self.threads = [threading.Thread(target=self._http, daemon=True) for _ in range(http)]
        self.threads += [threading.Thread(target=self._grpc, daemon=True) for _ in range(grpc)]

    def __enter__(self) -> Load:
        """Start the workers."""
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop the workers (each finishes its request) and remove the bundle file."""
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)
        self.bundle.unlink(missing_ok=True)

    def refresh_trust(self) -> None:
        """Hand the clients the current CA bundle and their current certificates (a CA rotation's runbook steps):
        each worker builds its next connection or channel from the files as they are now.
        """
        self.bundle.write_text(ca_bundle())
        self.generation += 1

    def _pause(self) -> float:
        """Seconds to wait before a worker's next request, so that each sends one per ``interval``."""
        now = time.monotonic()
        last = getattr(self.local, "last", None)
        self.local.last = max(now, (last or now) + self.interval)
        return self.local.last - now if last is not None else 0.0

    def _context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.bundle))
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        clients = PKI_STORE / "clients"
        context.load_cert_chain(str(clients / f"{LAB_CLIENT}.crt"), str(clients / f"{LAB_CLIENT}.key"))
        return context

    def _http(self) -> None:
        body = json.dumps({"text_input": PROMPT, "sampling_param_max_tokens": MAX_TOKENS}).encode()
        connection: http.client.HTTPSConnection | None = None
        generation = -1
        while not self.stop.wait(self._pause()):
            if connection is None or connection.sock is None or generation != self.generation:
                if connection is not None:
                    connection.close()
                generation = self.generation
                connection = http.client.HTTPSConnection(self.address, 8443, timeout=60, context=self._context())
            try:
                connection.request(
                    "POST", f"/v2/models/{LAB_MODEL}/generate", body, {"Content-Type": "application/json"}
                )
                answer = connection.getresponse()
                payload = answer.read()
                if answer.status != 200:
                    self.tally.failure("http", f"status {answer.status}: {payload[:200]!r}")
                elif not json.loads(payload).get("text_output"):
                    self.tally.failure("http", "empty text_output")
                else:
                    self.tally.success("http")
                if answer.will_close:
                    connection.close()
            except (OSError, http.client.HTTPException, ValueError) as error:
                self.tally.failure("http", repr(error))
                connection.close()
                connection = None
                time.sleep(0.2)
        if connection is not None:
            connection.close()

    def _grpc_client(self) -> object:
        import tritonclient.grpc as grpcclient

        clients = PKI_STORE / "clients"
        return grpcclient.InferenceServerClient(
            f"{self.address}:8443",
            ssl=True,
            root_certificates=str(self.bundle),
            private_key=str(clients / f"{LAB_CLIENT}.key"),
            certificate_chain=str(clients / f"{LAB_CLIENT}.crt"),
        )

    def _grpc(self) -> None:
        import tritonclient.grpc as grpcclient

        client = None
        generation = -1
        while not self.stop.wait(self._pause()):
            if client is None or generation != self.generation:
                if client is not None:
                    client.close()
                generation = self.generation
                client = self._grpc_client()
            outcome = self._one_stream(client, grpcclient)
            if outcome:
                self.tally.failure("grpc stream", outcome)
                client.close()
                client = None
                time.sleep(0.2)
            else:
                self.tally.success("grpc stream")
        if client is not None:
            client.close()

    @staticmethod
    def _one_stream(client: object, grpcclient: object) -> str:
        """One stream: a request, its responses to the final one. The error, or '' when it worked."""
        pieces: list[str] = []
        errors: list[str] = []
        final = threading.Event()

        def collect(result: object, error: object) -> None:
            if error is not None:
                errors.append(f"{type(error).__name__}: {error}")
                final.set()
                return
            text = result.as_numpy("text_output")
            if text is not None:
                pieces.append(text[0].decode())
            if result.get_response().parameters["triton_final_response"].bool_param:
                final.set()

        try:
            client.start_stream(callback=collect, stream_timeout=60)
            client.async_stream_infer(
                LAB_MODEL,
                generate_inputs(grpcclient, PROMPT, MAX_TOKENS, streaming=True),
                enable_empty_final_response=True,
            )
            final.wait(60)
            client.stop_stream()
        except Exception as error:  # noqa: BLE001 - any client error is a failed stream
            return f"{type(error).__name__}: {error}"
        if errors:
            return errors[0]
        if not final.is_set():
            return "no final response within 60 s"
        return "" if "".join(pieces) else "empty answer"


def under_load(address: str, action: Callable[[Load], bool], label: str, warmup: float = 5.0) -> tuple[bool, Tally]:
    """Run ``action`` while the load runs through the proxy at ``address``; log and return the tally."""
    with Load(address) as load:
        time.sleep(warmup)
        before = sum(load.tally.ok.values())
        if before == 0:
            log(f"{label}: no request succeeded before the operation began ({load.tally.errors[:3]})")
        ok = action(load)
        time.sleep(warmup)
    tally = load.tally
    log(f"{label}: {tally.summary()}")
    for error in tally.errors:
        log(f"  {error}")
    return ok, tally


# --- The operations, through their playbooks, with the checks that they did what they say ---------------------


@dataclass
class Outcome:
    """What an operation measured and what failed."""

    failures: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    failed_requests: dict[str, int] = field(default_factory=dict)


def _site(hosts: list, site: str, group: str) -> list:
    return [h for h in hosts if site in h.groups and group in h.groups]


def _started_at(client: object, host: object) -> str:
    """When tritonserver last started on the host (systemd's monotonic timestamp)."""
    from deepseek_testkit.lab import exec_text

    return exec_text(client, host, ["systemctl", "show", "-p", "ActiveEnterTimestampMonotonic", "tritonserver"]).strip()


def served_certificate(address: str, port: int = 8443) -> bytes:
    """The certificate (DER) the proxy presents now, read with the lab client's certificate and any CA."""
    import socket

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    clients = PKI_STORE / "clients"
    context.load_cert_chain(str(clients / f"{LAB_CLIENT}.crt"), str(clients / f"{LAB_CLIENT}.key"))
    with socket.create_connection((address, port), timeout=10) as raw, context.wrap_socket(raw) as tls:
        return tls.getpeercert(binary_form=True) or b""


def issuer_name(der: bytes) -> str:
    """The issuer common name of a DER certificate (openssl, as an operator would read it)."""
    import subprocess

    pem = ssl.DER_cert_to_PEM_cert(der)
    out = subprocess.run(
        ["openssl", "x509", "-noout", "-issuer", "-nameopt", "multiline"],
        input=pem,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return next((line.split("=", 1)[1].strip() for line in out.splitlines() if "commonName" in line), "")


def _run(template: str, answers: dict[str, object]) -> object:
    """The operation's AWX job template, run as AWX runs it (ansible-runner), against the lab."""
    from deepseek_testkit import lab

    return lab.run_job(template, {k: v if isinstance(v, str) else json.dumps(v) for k, v in answers.items()})


def rolling_upgrade(client: object, hosts: list, site: str = "primary") -> Outcome:
    """rolling_upgrade.yml over every inference node of a site (Triton restarted on each) under load."""
    from deepseek_testkit.lab import container_ip

    out = Outcome()
    proxy = _site(hosts, site, "proxies")[0]
    nodes = _site(hosts, site, "gpu_nodes")
    before = {n.name: _started_at(client, n) for n in nodes}
    result: dict[str, object] = {}

    def action(_load: Load) -> bool:
        start = time.monotonic()
        run = _run("rolling_upgrade", {"rolling_upgrade_site": site, "rolling_upgrade_restart": True})
        out.seconds["rolling_upgrade.yml"] = time.monotonic() - start
        result["run"] = run
        return run.ok

    ok, tally = under_load(container_ip(client, proxy), action, f"rolling upgrade of {site}")
    out.failed_requests = dict(tally.failed)
    if not ok:
        out.failures.append("rolling_upgrade.yml failed")
    restarted = [n.name for n in nodes if _started_at(client, n) != before[n.name]]
    if sorted(restarted) != sorted(before):
        out.failures.append(f"rolling_upgrade.yml restarted Triton on {restarted}, not on every node {sorted(before)}")
    if sum(tally.failed.values()):
        out.failures.append(f"requests failed during the rolling upgrade: {tally.summary()}")
    if sum(tally.ok.values()) == 0:
        out.failures.append("no request succeeded during the rolling upgrade: the load did not run")
    return out


MAINTENANCE_FILE = "/etc/haproxy/deepseek-maintenance"  # mtls_proxy's __mtls_proxy_maintenance_file


def haproxy_admin(client: object, proxy: object, command: str) -> str:
    """One command on a proxy's runtime API socket (the lab's proxies have python3, not socat)."""
    script = (
        "import socket,sys;s=socket.socket(socket.AF_UNIX);s.connect('/run/haproxy/admin.sock');"
        "s.sendall(sys.argv[1].encode()+b'\\n');print(s.makefile().read())"
    )
    return client.containers.get(proxy.name).exec_run(["python3", "-c", script, command]).output.decode()


def server_status(client: object, proxy: object, backend: str, server: str) -> str:
    """The status HAProxy's show stat gives a server (UP, DRAIN, MAINT ...)."""
    import csv
    import io

    rows = csv.DictReader(io.StringIO(haproxy_admin(client, proxy, "show stat").lstrip("# ")))
    return next((row["status"] for row in rows if row["pxname"] == backend and row["svname"] == server), "")


def rotate_certs(client: object, hosts: list, site: str = "primary") -> Outcome:
    """rotate_certs.yml (phase none) under load: every certificate issued again, no failed request; a node held in
    maintenance (as rolling_upgrade.yml holds it) stays out of rotation through the reload the rotation causes.
    """
    from deepseek_testkit.lab import container_ip

    out = Outcome()
    proxy_host = _site(hosts, site, "proxies")[0]
    proxy = container_ip(client, proxy_host)
    served_before = served_certificate(proxy)
    client_before = (PKI_STORE / "clients" / f"{LAB_CLIENT}.crt").read_bytes()
    # A main-pool node, as rolling_upgrade.yml holds one (the other main node and the fallback pool carry the load).
    held = sorted(h.name for h in _site(hosts, site, "gpu_nodes") if "fallback_nodes" not in h.groups)[-1]
    container = client.containers.get(proxy_host.name)
    container.exec_run(["sh", "-c", f"echo {held} >> {MAINTENANCE_FILE}"])
    for backend in ("triton_http", "triton_grpc"):
        haproxy_admin(client, proxy_host, f"disable server {backend}/{held}")

    def action(_load: Load) -> bool:
        start = time.monotonic()
        run = _run("rotate_certs", {})
        out.seconds["rotate_certs.yml"] = time.monotonic() - start
        return run.ok

    ok, tally = under_load(proxy, action, "certificate rotation")
    out.failed_requests = dict(tally.failed)
    if not ok:
        out.failures.append("rotate_certs.yml failed")
    if served_certificate(proxy) == served_before:
        out.failures.append("the proxy presents the same certificate after rotate_certs.yml")
    if (PKI_STORE / "clients" / f"{LAB_CLIENT}.crt").read_bytes() == client_before:
        out.failures.append(f"the store's {LAB_CLIENT} certificate was not issued again")
    status = server_status(client, proxy_host, "triton_http", held)
    if "MAINT" not in status:
        out.failures.append(f"{held}, held in maintenance, is {status or 'gone'} on {proxy_host.name} after the reload")
    container.exec_run(["sed", "-i", f"/^{held}$/d", MAINTENANCE_FILE])
    for backend in ("triton_http", "triton_grpc"):
        haproxy_admin(client, proxy_host, f"enable server {backend}/{held}")
    if sum(tally.failed.values()):
        out.failures.append(f"requests failed during the certificate rotation: {tally.summary()}")
    return out


def rotate_ca(client: object, hosts: list, site: str = "primary") -> Outcome:
    """A CA rotation (trust, issue, finish) under load; afterwards a certificate of the previous CA is refused."""
    from deepseek_testkit.lab import container_ip

    out = Outcome()
    proxy = container_ip(client, _site(hosts, site, "proxies")[0])
    old_issuer = issuer_name(served_certificate(proxy))
    keep = Path(tempfile.mkdtemp(prefix="lab-old-client-"))
    for suffix in ("crt", "key"):
        (keep / f"client.{suffix}").write_bytes((PKI_STORE / "clients" / f"{LAB_CLIENT}.{suffix}").read_bytes())

    def action(load: Load) -> bool:
        for phase in ("trust", "issue", "finish"):
            start = time.monotonic()
            extra: dict[str, object] = {"rotate_certs_ca_phase": phase}
            if phase == "finish":
                extra["rotate_certs_ca_force"] = True  # the lab does not wait the overlap
            run = _run("rotate_certs", extra)
            out.seconds[f"rotate_certs.yml {phase}"] = time.monotonic() - start
            if not run.ok:
                out.failures.append(f"rotate_certs.yml rotate_certs_ca_phase={phase} failed")
                return False
            # The runbook: after trust, hand clients both CA certificates; after issue, hand the store-kept clients
            # their new certificates (finish stops trusting the previous CA, whose certificate they would present).
            load.refresh_trust()
        return True

    ok, tally = under_load(proxy, action, "CA rotation")
    out.failed_requests = dict(tally.failed)
    new_issuer = issuer_name(served_certificate(proxy))
    if ok and new_issuer == old_issuer:
        out.failures.append(f"the proxy's certificate is still issued by {old_issuer} after the CA rotation")
    if ok:
        clients = PKI_STORE / "clients"
        current = client_outcome(proxy, clients / f"{LAB_CLIENT}.crt", clients / f"{LAB_CLIENT}.key")
        previous = client_outcome(proxy, keep / "client.crt", keep / "client.key")
        if current != "served":
            out.failures.append(f"the new CA's {LAB_CLIENT} certificate after the finish phase: {current}, not served")
        if previous != "refused":
            out.failures.append(f"the previous CA's client certificate after the finish phase: {previous}, not refused")
    if sum(tally.failed.values()):
        out.failures.append(f"requests failed during the CA rotation: {tally.summary()}")
    return out


def client_outcome(address: str, crt: Path, key: Path) -> str:
    """What the proxy does with a request made with this client certificate: 'served', 'refused' (a TLS alert
    or 403), or the error that is neither (so that a proxy that is down does not pass for a refusal).
    """
    context = ssl.create_default_context(cafile=str(PKI_STORE / "ca.crt"))
    context.load_cert_chain(str(crt), str(key))
    connection = http.client.HTTPSConnection(address, 8443, timeout=30, context=context)
    try:
        connection.request("GET", f"/v2/models/{LAB_MODEL}/ready")
        status = connection.getresponse().status
        return "served" if status == 200 else "refused" if status == 403 else f"status {status}"
    except ssl.SSLError as error:
        return "refused" if "alert" in str(error).lower() or "certificate" in str(error).lower() else repr(error)
    except (OSError, http.client.HTTPException) as error:
        return repr(error)
    finally:
        connection.close()
