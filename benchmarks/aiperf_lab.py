#!/usr/bin/env python3
"""The lab model measured with NVIDIA's AIPerf, in the terms LLM serving is measured in.

Time to first token, output tokens per second and request throughput, from AIPerf (PyPI ``aiperf``) run
against Triton's generate endpoints of one lab node, with the command line that would run against a GPU
deployment of DeepSeek-R1 (only ``--url`` and ``--tokenizer`` change), so the figures read like NVIDIA's
published ones. The lab model's vocabulary ships as a real tokenizer (roles/triton_server/files/lab_model/
tokenizer): AIPerf's default tokenizer is a download, which fails offline.

Two passes per concurrency, because the llmapi model streams CUMULATIVE text (every streamed response
carries the whole answer so far, as TensorRT-LLM's llmapi model.py sends ``output.text``):

- ``generate`` (one answer per request): request throughput, request latency, output tokens/s. Token
  counts are exact: the answer is tokenized once, without the prompt (exclude_input_from_output).
- ``generate_stream`` (server-sent events): time to first token only. AIPerf joins the streamed chunks
  before counting tokens and takes their gaps as inter-token latency, which is right for delta streams
  (OpenAI's) and wrong for cumulative ones, so its token counts and ITL are not reported for this pass.

Concurrency 1 is the baseline, measured in the same run; other rows print throughput as a ratio to it.
AIPerf is installed into the checkout's ignored .cache/aiperf (its own virtualenv: it is not needed by
``make test``). Needs the lab (``make lab``).

The node's Triton ports admit only its own site's proxy (the host firewall, playbooks/firewall.yml; the lab
checks that this machine is refused), and AIPerf has no client-certificate option for the mutual-TLS proxy
(whose fallback pool would also take part of the load). So AIPerf talks to a relay on this machine
(127.0.0.1): each connection is carried by ``docker exec -i <proxy> python3`` to the node's port 8000, from
the host the firewall admits. AIPerf pools its connections, so the relay's start-up falls in the warm-up;
every request still crosses it: the figures are those of that path, not of a direct connection.

Run with: .venv/bin/python benchmarks/aiperf_lab.py [--host lab-primary-gpu1] [--requests 200]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import docker
from deepseek_testkit import ROOT, lab

AIPERF_VERSION = "0.13.0"
AIPERF_VENV = ROOT / ".cache" / "aiperf"
TOKENIZER = ROOT / "roles" / "triton_server" / "files" / "lab_model" / "tokenizer"
CONCURRENCY = (1, 4, 16)
# The llmapi model's request body on Triton's generate extension: the tensors by name
# (llmapi_interface: text_input, sampling_param_max_tokens, sampling_param_exclude_input_from_output).
PAYLOAD = (
    '{"text_input": {{ text|tojson }}, "sampling_param_max_tokens": {{ max_tokens or 16 }}, '
    '"sampling_param_exclude_input_from_output": true{% if stream %}, "streaming": true{% endif %}}'
)


# Runs on the proxy (python3 -c RELAY <address> <port>): stdin to a TCP connection, the connection to stdout.
RELAY = """
import os, socket, sys, threading
conn = socket.create_connection((sys.argv[1], int(sys.argv[2])))
conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
def up():
    while data := os.read(0, 65536):
        conn.sendall(data)
    conn.shutdown(socket.SHUT_WR)
threading.Thread(target=up, daemon=True).start()
while data := conn.recv(65536):
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
"""


class Relay:
    """A listening port on 127.0.0.1 whose every connection is carried by a command's stdin and stdout."""

    def __init__(self, command: list[str]) -> None:
        """Listen (an ephemeral port, ``self.port``) and serve connections on a daemon thread."""
        self.command = command
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        """Stop listening (connections in flight end with their clients)."""
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _peer = self.listener.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # small SSE chunks: no Nagle delay
            threading.Thread(target=self._carry, args=(conn,), daemon=True).start()

    def _carry(self, conn: socket.socket) -> None:
        """One connection: client to the command's stdin, its stdout back to the client, until either ends."""
        proc = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)  # noqa: S603

        def down() -> None:
            try:
                while data := proc.stdout.read(65536):
                    conn.sendall(data)
            except OSError:
                pass
            finally:
                conn.close()

        threading.Thread(target=down, daemon=True).start()
        try:
            while data := conn.recv(65536):
                view = memoryview(data)
                while view:
                    view = view[proc.stdin.write(view) :]
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                proc.stdin.close()
            proc.wait()


def aiperf() -> Path:
    """The aiperf executable of the benchmark's own virtualenv, installed at the pinned version if absent."""
    exe = AIPERF_VENV / "bin" / "aiperf"
    stamp = AIPERF_VENV / f".installed-{AIPERF_VERSION}"
    if not stamp.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(AIPERF_VENV)], check=True)
        subprocess.run(
            [str(AIPERF_VENV / "bin" / "pip"), "install", "--quiet", f"aiperf=={AIPERF_VERSION}"], check=True
        )
        stamp.touch()
    return exe


def profile(exe: Path, url: str, model: str, streaming: bool, concurrency: int, requests: int, tokens: int) -> dict:
    """One AIPerf run; returns its profile_export_aiperf.json as data."""
    with tempfile.TemporaryDirectory(prefix="aiperf-") as out:
        argv = [
            str(exe),
            "profile",
            "--model",
            model,
            "--url",
            url,
            "--endpoint-type",
            "template",
            "--endpoint",
            f"/v2/models/{model}/{'generate_stream' if streaming else 'generate'}",
            "--extra-inputs",
            json.dumps({"payload_template": PAYLOAD, "response_field": "text_output"}),
            "--tokenizer",
            str(TOKENIZER),
            "--concurrency",
            str(concurrency),
            "--request-count",
            str(requests),
            "--warmup-request-count",
            str(min(concurrency * 2, requests)),
            "--synthetic-input-tokens-mean",
            "32",
            "--output-tokens-mean",
            str(tokens),
            "--random-seed",
            "1",
            "--artifact-dir",
            out,
            *(["--streaming"] if streaming else []),
        ]
        run = subprocess.run(argv, capture_output=True, text=True, check=False)
        if run.returncode != 0:
            raise RuntimeError(f"aiperf failed ({run.returncode}):\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
        found = list(Path(out).rglob("profile_export_aiperf.json"))
        if not found:
            raise RuntimeError(f"aiperf wrote no profile_export_aiperf.json under {out}")
        return json.loads(found[0].read_text())


def metric(data: dict, tag: str, stat: str = "avg") -> float:
    """A statistic of one AIPerf metric (``nan`` when AIPerf did not report it, or reported null).

    profile_export_aiperf.json has one top-level object per metric tag (``{"unit": ..., "avg": ...,
    "p50": ...}``, AIPerf's JsonMetricResult; statistics it has no value for are left out or null).
    """
    value = data.get(tag)
    if isinstance(value, dict) and value.get(stat) is not None:
        return float(value[stat])
    return float("nan")


def main() -> int:
    """Run AIPerf against a lab node and print its figures, throughput as a ratio to concurrency 1."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="lab-primary-gpu1", help="lab node serving the model")
    parser.add_argument("--model", default=lab.LAB_MODEL)
    parser.add_argument("--requests", type=int, default=200, help="requests per pass and concurrency")
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args()

    client = docker.from_env()
    host = next((h for h in lab.lab_hosts() if h.name == args.host), None)
    if host is None or lab.find_container(client, args.host) is None:
        print(f"benchmark: {args.host} is not running; start the lab with `make lab`", file=sys.stderr)
        return 2
    proxy = next((h for h in lab.lab_hosts() if "proxies" in h.groups and lab.site_of(h) == lab.site_of(host)), None)
    if proxy is None or lab.find_container(client, proxy.name) is None:
        print(f"benchmark: {args.host} has no running proxy on its site to relay from", file=sys.stderr)
        return 2
    address = lab.container_ip(client, host)
    relay = Relay(["docker", "exec", "-i", proxy.name, "python3", "-c", RELAY, address, "8000"])
    url = f"http://127.0.0.1:{relay.port}"
    exe = aiperf()
    rows = []
    try:
        for concurrency in CONCURRENCY:
            whole = profile(exe, url, args.model, False, concurrency, args.requests, args.max_tokens)
            stream = profile(exe, url, args.model, True, concurrency, args.requests, args.max_tokens)
            rows.append((concurrency, whole, stream))
    finally:
        relay.close()

    base_rps = metric(rows[0][1], "request_throughput")
    base_tps = metric(rows[0][1], "output_token_throughput")
    print()
    print(
        f"AIPerf {AIPERF_VERSION}: {args.model} on {args.host} ({address}:8000, relayed from {proxy.name}), "
        f"{args.max_tokens} output tokens, 32 input"
    )
    print(f"machine: {platform.machine()}, {len(os.sched_getaffinity(0))} cores (AIPerf and Triton share them)")
    header = ("conc", "req/s", "x c1", "out tok/s", "x c1", "latency p50 ms", "TTFT p50 ms", "TTFT p99 ms")
    print("  ".join(f"{h:>14}" for h in header))
    for concurrency, whole, stream in rows:
        rps, tps = metric(whole, "request_throughput"), metric(whole, "output_token_throughput")
        cells = (
            f"{concurrency}",
            f"{rps:.1f}",
            f"{rps / base_rps:.2f}",
            f"{tps:.1f}",
            f"{tps / base_tps:.2f}",
            f"{metric(whole, 'request_latency', 'p50'):.2f}",
            f"{metric(stream, 'time_to_first_token', 'p50'):.2f}",
            f"{metric(stream, 'time_to_first_token', 'p99'):.2f}",
        )
        print("  ".join(f"{c:>14}" for c in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
