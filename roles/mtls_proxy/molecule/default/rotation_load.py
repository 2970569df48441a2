#!/usr/bin/env python3
"""Continuous load on the proxy while its certificate is rotated (started and stopped by side_effect.yml).

Two clients, each with its own certificate (each stays under the per-client rate limit), until the stop
file appears: one opens a new TLS connection per request and records the serial of the certificate the
proxy presented; one keeps a single keep-alive connection (reconnecting only when the proxy closes it
after an answer). Writes what they saw as JSON for the tests.
"""

import argparse
import http.client
import json
import socket
import ssl
import threading
import time
from pathlib import Path

PATH = "/v2/health/ready"


def context(args: argparse.Namespace, name: str) -> ssl.SSLContext:
    """TLS 1.3 with the named client's certificate, verifying the proxy against the deployment's CA."""
    ctx = ssl.create_default_context(cafile=args.ca)
    ctx.check_hostname = False
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(f"{args.clients}/{name}.crt", f"{args.clients}/{name}.key")
    return ctx


def new_connections(args: argparse.Namespace, stop: threading.Event, seen: dict) -> None:
    """A request per connection; every answer's status and the presented certificate's serial."""
    ctx = context(args, args.new_client)
    while not stop.is_set():
        try:
            with socket.create_connection((args.address, 8443), timeout=10) as raw, ctx.wrap_socket(raw) as tls:
                serial = tls.getpeercert()["serialNumber"]
                tls.sendall(f"GET {PATH} HTTP/1.1\r\nHost: triton\r\nConnection: close\r\n\r\n".encode())
                status = tls.recv(4096).decode(errors="replace").split("\r\n", 1)[0]
            seen["requests"] += 1
            seen["serials"].setdefault(serial, 0)
            seen["serials"][serial] += 1
            if status != "HTTP/1.1 200 OK":
                seen["failures"].append(status or "closed without an answer")
        except (OSError, ssl.SSLError) as exc:
            seen["requests"] += 1
            seen["failures"].append(f"new connection: {exc}")
        time.sleep(args.interval)


def keep_alive(args: argparse.Namespace, stop: threading.Event, seen: dict) -> None:
    """Requests on one keep-alive connection; a closed connection is reopened only after an answer."""
    connection = http.client.HTTPSConnection(
        args.address, 8443, timeout=10, context=context(args, args.keepalive_client)
    )
    while not stop.is_set():
        try:
            connection.request("GET", PATH)
            answer = connection.getresponse()
            answer.read()
            seen["keepalive_requests"] += 1
            if answer.status != 200:
                seen["failures"].append(f"keep-alive: HTTP {answer.status}")
        except (OSError, ssl.SSLError, http.client.HTTPException) as exc:
            seen["keepalive_requests"] += 1
            seen["failures"].append(f"keep-alive: {exc!r}")
            connection.close()
        time.sleep(args.interval)


def main() -> None:
    """Run both clients until the stop file exists (or the time limit), then write the results."""
    parser = argparse.ArgumentParser()
    for name in ("address", "ca", "clients", "new-client", "keepalive-client", "out", "stop"):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between a client's requests")
    parser.add_argument("--limit", type=float, default=240)
    args = parser.parse_args()
    seen = {"requests": 0, "keepalive_requests": 0, "serials": {}, "failures": []}
    stop = threading.Event()
    threads = [threading.Thread(target=f, args=(args, stop, seen)) for f in (new_connections, keep_alive)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + args.limit
    while not Path(args.stop).exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    stop.set()
    for thread in threads:
        thread.join()
    Path(args.out).write_text(json.dumps(seen, indent=1))


if __name__ == "__main__":
    main()
