"""The GPU check: six checks of the collection on a machine with an NVIDIA GPU and its driver.

tests/gpu/run.sh runs this file with the standard library only:

    python3 tests/gpu/gpu_check.py --out DIR                every check, each under timeout(1), then the summary
    python3 tests/gpu/gpu_check.py --out DIR --check NAME   one check: prints its one line (what the first runs)

Each check prints exactly one line, `PASS <name>: <detail>`, `FAIL <name>: <why>` or `SKIP <name>: <why>`.
A check FAILs when what it proves is not so: no GPU the driver answers for, a role or module that reports
wrong, a kernel that computes wrong, a server that does not serve. It SKIPs only when the optional software
it exercises is not installed (nvidia-ctk, nvcc, tritonserver); the line says which role installs it.
The run ends with a line `N skipped` and the closing line `N passed, N failed`, and exits 0 only when no
check failed. README.md beside this file says what each check proves and which files it leaves in DIR.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
STATUSES = ("PASS", "FAIL", "SKIP")
LINE = re.compile(r"^(PASS|FAIL|SKIP) ([a-z_]+): (.*)$")
MIB = 1 << 20
# Seconds a check child gets after its timeout's TERM before timeout(1) kills it (Check.kill_after).
KILL_AFTER = 3


class Failed(Exception):
    """What the check proves is not so: the line is FAIL."""


class Skipped(Exception):
    """The optional software the check exercises is not installed: the line is SKIP."""


@dataclass(frozen=True)
class Result:
    """One check's outcome, as printed and as recorded in summary.txt and results.json."""

    status: str
    name: str
    detail: str
    seconds: float = 0.0
    timeout_s: int = 0

    def line(self) -> str:
        """The check's one line: `STATUS name: detail` (the detail on one line)."""
        detail = " ".join(self.detail.split())
        return f"{self.status} {self.name}: {detail}"


@dataclass(frozen=True)
class Check:
    """A check: its name, its time limit and the function that runs it (returns the PASS detail)."""

    name: str
    timeout_s: int
    run: Callable[[Path], str] = field(repr=False)
    kill_after: int = KILL_AFTER


# ----------------------------------------------------------------------------------------------------------
# Small helpers


def command(
    argv: Sequence[str], timeout_s: float, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run argv and capture its output; a missing program is rc 127, a time-out rc 124 (never raises)."""
    try:
        return subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout_s, env=env, cwd=cwd, check=False
        )
    except FileNotFoundError as err:
        return subprocess.CompletedProcess(list(argv), 127, "", f"{argv[0]}: not found ({err.strerror})")
    except subprocess.TimeoutExpired as err:
        out = err.stdout.decode(errors="replace") if isinstance(err.stdout, bytes) else (err.stdout or "")
        return subprocess.CompletedProcess(list(argv), 124, out, f"{argv[0]}: timed out after {timeout_s:g} s")


def tail(text: str, lines: int = 3, width: int = 300) -> str:
    """The last non-empty lines of some output, joined, for a one-line reason."""
    kept = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
    joined = " | ".join(kept)
    return joined if len(joined) <= width else "..." + joined[-width:]


def save(path: Path, text: str) -> Path:
    """Write a text file under the output directory (creating its folder); return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def check_env() -> dict[str, str]:
    """The environment of the checks' commands: the checkout's venv and collection, plain output."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(ROOT / ".venv" / "bin"), env.get("PATH", "/usr/bin:/bin")])
    env.update(
        ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
        ANSIBLE_COLLECTIONS_PATH=str(ROOT / "collections"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
        ANSIBLE_RETRY_FILES_ENABLED="0",
        # CUDA numbers GPUs as nvidia-smi does (PCI order), so "GPU 0" is the same GPU for both.
        CUDA_DEVICE_ORDER="PCI_BUS_ID",
    )
    return env


# ----------------------------------------------------------------------------------------------------------
# The GPU the driver answers for (checks 3 to 6 need one)


def parse_gpu_list(text: str) -> list[str]:
    """The GPUs in `nvidia-smi -L` output ("GPU 0: NVIDIA H200 (UUID: ...)"), MIG devices not counted."""
    return [line.strip() for line in text.splitlines() if re.match(r"^GPU \d+: ", line.strip())]


def visible_gpus(env: dict[str, str]) -> list[str]:
    """The GPUs nvidia-smi lists; Failed with the reason when it lists none."""
    listed = command(["nvidia-smi", "-L"], 30, env=env)
    gpus = parse_gpu_list(listed.stdout)
    if listed.returncode == 127:
        raise Failed("no GPU: nvidia-smi is not installed (the NVIDIA driver is a prerequisite of the check)")
    if listed.returncode != 0 or not gpus:
        why = tail(listed.stdout + "\n" + listed.stderr, 2) or f"rc {listed.returncode}"
        raise Failed(f"no GPU visible to the driver: nvidia-smi -L: {why}")
    return gpus


# ----------------------------------------------------------------------------------------------------------
# Checks 1 to 3: the collection's modules and the driver role through ansible-playbook


def ansible_playbook(playbook: str, out: Path, log_name: str, timeout_s: float) -> str:
    """Run tests/gpu/<playbook> on this machine; return its output (saved as <out>/<log_name>)."""
    env = check_env()
    binary = shutil.which("ansible-playbook", path=env["PATH"])
    if binary is None:
        raise Failed("ansible-playbook not found: make venv (or ansible-core >= 2.17 on PATH)")
    extra = json.dumps({"gpu_check_out": str(out)})
    run = command([binary, "-i", "localhost,", str(HERE / playbook), "-e", extra], timeout_s, env=env)
    text = run.stdout + run.stderr
    save(out / log_name, text)
    if run.returncode != 0:
        raise Failed(f"ansible-playbook {playbook} rc {run.returncode}: {playbook_error(text)} (see {log_name})")
    return text


def playbook_error(text: str) -> str:
    """The first task failure's message in ansible-playbook output, else its last lines."""
    fatal = re.search(r"^fatal: \[[^\]]+\]: \w+! => (.*)$", text, re.MULTILINE)
    if fatal:
        message = re.search(r'"msg": "((?:[^"\\]|\\.)*)"', fatal.group(1))
        return (message.group(1) if message else fatal.group(1))[:400]
    return tail(text, 3)


def parse_recap(text: str, host: str = "localhost") -> dict[str, int]:
    """The PLAY RECAP counters of one host (ok, changed, unreachable, failed, ...); Failed without one."""
    match = re.search(rf"^{re.escape(host)}\s+:\s+(.*)$", text, re.MULTILINE)
    if match is None:
        raise Failed(f"no PLAY RECAP line for {host} in the playbook's output")
    return {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", match.group(1))}


def evaluate_host_facts(facts: dict) -> str:
    """Check 1's verdict on ansible_facts.nvidia_host: a GPU on the PCI bus and the kernel module loaded."""
    count = int(facts.get("gpu_count", 0))
    module = facts.get("kernel_module") or {}
    if count < 1:
        raise Failed("nvidia_host_facts found no NVIDIA GPU on the PCI bus (gpu_count 0, nvidia-host.json)")
    if not module.get("loaded"):
        raise Failed(f"{count} GPU(s) on the PCI bus but the nvidia kernel module is not loaded (nvidia-host.json)")
    return (
        f"{count} GPU(s) on the PCI bus, kernel module {module.get('version') or '?'} ({module.get('flavor') or '?'}),"
        f" {len(facts.get('nvswitches') or [])} NVSwitch(es), container {facts.get('container') or 'no'},"
        f" Secure Boot {facts.get('secure_boot', '?')}; nvidia-host.json"
    )


def check_host_facts(out: Path) -> str:
    """Check 1: deepseek.cluster.nvidia_host_facts on this machine, saved as nvidia-host.json."""
    ansible_playbook("host-facts.yml", out, "host-facts.log", 20)
    return evaluate_host_facts(json.loads((out / "nvidia-host.json").read_text()))


def evaluate_topology(topology: dict) -> str:
    """Check 2's verdict on the gpu_topology result: at least one GPU."""
    count = int(topology.get("gpu_count", 0))
    if not topology.get("present") or count < 1:
        raise Failed(f"gpu_topology found no GPU: {topology.get('reason') or 'gpu_count 0'} (gpu-topology.json)")
    names = sorted({str(gpu["name"]) for gpu in topology.get("gpus") or [] if gpu.get("name")})
    named = f" ({', '.join(names)})" if names else ""
    return (
        f"{count} GPU(s){named}, driver {topology.get('driver_version') or '?'},"
        f" NVLink domains {topology.get('nvlink_domains')}, NVSwitch {str(bool(topology.get('nvswitch'))).lower()};"
        " gpu-topology.json"
    )


def check_topology(out: Path) -> str:
    """Check 2: deepseek.cluster.gpu_topology on the real board, saved as gpu-topology.json."""
    ansible_playbook("topology.yml", out, "topology.log", 35)
    return evaluate_topology(json.loads((out / "gpu-topology.json").read_text()))


def evaluate_persistence(text: str) -> int:
    """Lines of `nvidia-smi --query-gpu=index,persistence_mode`: the GPU count; Failed unless all Enabled."""
    rows = [[cell.strip() for cell in line.split(",")] for line in text.splitlines() if line.strip()]
    if not rows:
        raise Failed("nvidia-smi reported no persistence mode")
    off = [row[0] for row in rows if len(row) < 2 or row[1] != "Enabled"]
    if off:
        raise Failed(
            f"persistence mode is not Enabled on GPU(s) {', '.join(off)} ({'; '.join(', '.join(r) for r in rows)}):"
            " nvidia-persistenced must run (nvidia_driver in install mode enables and starts it)"
        )
    return len(rows)


def evaluate_recap(recap: dict[str, int]) -> dict[str, int]:
    """Check 3's verdict on the recap: verify mode changes nothing and fails nothing (else Failed)."""
    if any(recap.get(key, -1) != 0 for key in ("changed", "failed", "unreachable")):
        raise Failed(f"verify mode must change nothing and fail nothing: recap {recap} (see driver-verify.log)")
    return recap


def driver_report(text: str) -> str:
    """The role's own summary ("driver 580.95.05 (open) on 1 GPU(s)") from its output, if it printed one."""
    report = re.search(r'"msg": "(driver \S+ \([^)]*\) on \d+ GPU\(s\))', text)
    return report.group(1) if report else "driver verified"


def check_driver_verify(out: Path) -> str:
    """Check 3: nvidia_driver in verify mode changes nothing and fails nothing; persistence mode is on."""
    env = check_env()
    visible_gpus(env)
    text = ansible_playbook("driver-verify.yml", out, "driver-verify.log", 100)
    recap = evaluate_recap(parse_recap(text))
    query = command(["nvidia-smi", "--query-gpu=index,persistence_mode", "--format=csv,noheader"], 30, env=env)
    save(out / "persistence-mode.txt", query.stdout + query.stderr)
    if query.returncode != 0:
        raise Failed(f"nvidia-smi --query-gpu=persistence_mode rc {query.returncode}: {tail(query.stderr)}")
    count = evaluate_persistence(query.stdout)
    return (
        f"{driver_report(text)}; recap ok={recap.get('ok')} changed=0 failed=0;"
        f" persistence mode Enabled on {count} GPU(s); driver-verify.log"
    )


# ----------------------------------------------------------------------------------------------------------
# Check 4: CDI spec generated by nvidia-ctk against the real driver, under the output directory

CDI_SYSTEM_DIRS = (Path("/etc/cdi"), Path("/var/run/cdi"), Path("/run/cdi"))


def find_tool(name: str, env: dict[str, str], extra: Iterable[Path] = ()) -> Path | None:
    """An executable from PATH, else the first existing of `extra`."""
    found = shutil.which(name, path=env.get("PATH"))
    if found:
        return Path(found)
    return next((path for path in extra if path.is_file() and os.access(path, os.X_OK)), None)


def tree_state(dirs: Iterable[Path]) -> dict[str, tuple[int, int]]:
    """Path -> (mtime_ns, size) of every file under the given directories (missing ones are empty)."""
    state: dict[str, tuple[int, int]] = {}
    for top in dirs:
        if not top.is_dir():
            continue
        for path in sorted(top.rglob("*")):
            with contextlib.suppress(OSError):
                info = path.stat()
                state[str(path)] = (info.st_mtime_ns, info.st_size)
    return state


def evaluate_cdi_list(text: str, gpu_count: int) -> list[str]:
    """The devices of `nvidia-ctk cdi list`; Failed unless nvidia.com/gpu=all and >= gpu_count others."""
    devices = [line.strip() for line in text.splitlines() if line.strip().startswith("nvidia.com/")]
    others = [device for device in devices if device != "nvidia.com/gpu=all"]
    if "nvidia.com/gpu=all" not in devices or len(others) < gpu_count:
        raise Failed(
            f"nvidia-ctk cdi list shows {devices or 'no device'}; expected nvidia.com/gpu=all and a device for each"
            f" of the {gpu_count} GPU(s) nvidia-smi lists"
        )
    return devices


def check_cdi(out: Path) -> str:
    """Check 4: nvidia-ctk cdi generate into <out>/cdi and cdi list; nothing under /etc or /run changes."""
    env = check_env()
    gpus = visible_gpus(env)
    ctk = find_tool("nvidia-ctk", env, [Path("/usr/bin/nvidia-ctk"), Path("/usr/local/bin/nvidia-ctk")])
    if ctk is None:
        raise Skipped(
            "nvidia-ctk not installed (PATH, /usr/bin); NVIDIA's container toolkit comes with the role"
            " deepseek.cluster.nvidia_container_toolkit (playbooks/gpu_nodes.yml)"
        )
    spec_dir = out / "cdi"
    shutil.rmtree(spec_dir, ignore_errors=True)
    spec_dir.mkdir(parents=True)
    before = tree_state(CDI_SYSTEM_DIRS)
    generate = command([str(ctk), "cdi", "generate", f"--output={spec_dir / 'nvidia.yaml'}"], 25, env=env)
    save(out / "cdi-generate.log", generate.stdout + generate.stderr)
    if generate.returncode != 0 or not (spec_dir / "nvidia.yaml").is_file():
        raise Failed(f"nvidia-ctk cdi generate rc {generate.returncode}: {tail(generate.stderr + generate.stdout)}")
    listed = command([str(ctk), "cdi", "list", f"--spec-dir={spec_dir}"], 10, env=env)
    save(out / "cdi-list.txt", listed.stdout + listed.stderr)
    if listed.returncode != 0:
        raise Failed(f"nvidia-ctk cdi list rc {listed.returncode}: {tail(listed.stderr)}")
    devices = evaluate_cdi_list(listed.stdout, len(gpus))
    after = tree_state(CDI_SYSTEM_DIRS)
    if after != before:
        changed = sorted(path for path in set(after) | set(before) if after.get(path) != before.get(path))
        raise Failed(f"the check changed system CDI specs: {changed}")
    return f"{len(devices)} CDI devices ({', '.join(devices)}); cdi/nvidia.yaml; /etc/cdi and /run/cdi untouched"


# ----------------------------------------------------------------------------------------------------------
# Check 5: CUDA compiles and runs a kernel


def cuda_homes(env: dict[str, str]) -> list[Path]:
    """Where nvcc may be: $CUDA_HOME, $CUDA_PATH, /usr/local/cuda, then /usr/local/cuda-* newest first."""
    homes = [Path(env[key]) for key in ("CUDA_HOME", "CUDA_PATH") if env.get(key)]
    homes.append(Path("/usr/local/cuda"))
    versioned = Path("/usr/local").glob("cuda-*")
    homes.extend(sorted(versioned, key=lambda path: version_key(path.name), reverse=True))
    return homes


def version_key(text: str) -> tuple[int, ...]:
    """Numbers in a version string, for sorting ("cuda-12.10" after "cuda-12.9")."""
    return tuple(int(number) for number in re.findall(r"\d+", text))


def find_nvcc(env: dict[str, str]) -> Path | None:
    """nvcc from $CUDA_HOME, /usr/local/cuda*/bin, else PATH."""
    for home in cuda_homes(env):
        nvcc = home / "bin" / "nvcc"
        if nvcc.is_file() and os.access(nvcc, os.X_OK):
            return nvcc
    found = shutil.which("nvcc", path=env.get("PATH"))
    return Path(found) if found else None


def nvcc_release(version_text: str) -> tuple[int, int] | None:
    """(major, minor) from `nvcc --version` ("Cuda compilation tools, release 12.8, V12.8.93")."""
    match = re.search(r"release (\d+)\.(\d+)", version_text)
    return (int(match.group(1)), int(match.group(2))) if match else None


def arch_flag(release: tuple[int, int] | None, compute_cap: str) -> str:
    """`-arch=native` where nvcc has it (CUDA 11.6 and later), else sm_XY of nvidia-smi's compute_cap."""
    if release is not None and release >= (11, 6):
        return "-arch=native"
    match = re.fullmatch(r"\s*(\d+)\.(\d+)\s*", compute_cap)
    if match is None:
        raise Failed(f"nvcc {release} has no -arch=native and nvidia-smi gave no compute_cap ({compute_cap!r})")
    return f"-arch=sm_{match.group(1)}{match.group(2)}"


def write_cuda_source(directory: Path) -> tuple[Path, Path]:
    """Copy vector_add.cu into the output directory; return (source, executable to build)."""
    directory.mkdir(parents=True, exist_ok=True)
    source = directory / "vector_add.cu"
    shutil.copyfile(HERE / "vector_add.cu", source)
    binary = directory / "vector_add"
    with contextlib.suppress(FileNotFoundError):
        binary.unlink()
    return source, binary


def parse_vector_add(text: str) -> dict[str, str]:
    """The program's `OK key=value ...` line as a dict; Failed with its ERROR line otherwise."""
    for line in text.splitlines():
        if line.startswith("OK "):
            return {key: value.strip('"') for key, value in re.findall(r'(\w+)=("[^"]*"|\S+)', line)}
    error = next((line for line in text.splitlines() if line.startswith("ERROR ")), tail(text) or "no output")
    raise Failed(f"vector_add: {error}")


def check_cuda(out: Path) -> str:
    """Check 5: nvcc builds vector_add.cu for this GPU, which then adds 4 Mi floats on GPU 0 correctly."""
    env = check_env()
    visible_gpus(env)
    nvcc = find_nvcc(env)
    if nvcc is None:
        raise Skipped(
            "nvcc not found ($CUDA_HOME, /usr/local/cuda*/bin, PATH); install the toolkit with the role"
            " deepseek.cluster.cuda_toolkit (cuda_toolkit_profile: toolkit, playbooks/gpu_nodes.yml)"
        )
    source, binary = write_cuda_source(out / "cuda")
    release = nvcc_release(command([str(nvcc), "--version"], 20, env=env).stdout)
    cap = command(["nvidia-smi", "-i", "0", "--query-gpu=compute_cap", "--format=csv,noheader"], 20, env=env)
    flag = arch_flag(release, cap.stdout.strip() if cap.returncode == 0 else "")
    build = command([str(nvcc), flag, "-O2", "-o", str(binary), str(source)], 60, env=env, cwd=source.parent)
    save(
        out / "cuda" / "build.log",
        " ".join([str(nvcc), flag, "-O2", "-o", str(binary), str(source)]) + "\n" + build.stdout + build.stderr,
    )
    if build.returncode != 0 or not binary.is_file():
        raise Failed(f"{nvcc} {flag} rc {build.returncode}: {tail(build.stderr + build.stdout)} (cuda/build.log)")
    ran = command([str(binary)], 30, env=env)
    save(out / "cuda" / "run.log", ran.stdout + ran.stderr)
    values = parse_vector_add(ran.stdout + ran.stderr)
    if ran.returncode != 0:
        raise Failed(f"vector_add exited {ran.returncode}: {tail(ran.stdout + ran.stderr)}")
    release_text = ".".join(map(str, release)) if release else "?"
    return (
        f"nvcc {release_text} ({flag}) built vector_add; on {values.get('device')} (compute capability"
        f" {values.get('cc')}) {values.get('n')} sums correct in {int(values.get('bytes', 0)) // MIB} MiB"
        f" cudaMalloc'd, runtime {values.get('runtime')}, driver API {values.get('driver')}"
    )


# ----------------------------------------------------------------------------------------------------------
# Check 6: Triton from the native runtime serves a python-backend model that allocates GPU memory

TRITON_MODEL = "gpu_alloc"
TRITON_ALLOC_BYTES = 256 * MIB
TRITON_HOLD_MS = 4000
TRITON_READY_S = 75
TRITON_REQUEST_S = 25
TRITON_STOP_S = 8
TRITON_INSTALL = (
    "install it with the role deepseek.cluster.triton_server, native runtime:"
    " ansible-playbook -i localhost, tests/gpu/triton-native.yml (needs its wheels from the package index or"
    " -e triton_server_wheel_cache=DIR), or set GPU_CHECK_TRITONSERVER to a tritonserver binary"
)


def triton_home(env: dict[str, str]) -> Path:
    """The triton_server role's home (triton_server_home): $GPU_CHECK_TRITON_HOME, else /opt/triton."""
    return Path(env.get("GPU_CHECK_TRITON_HOME") or "/opt/triton")


def find_tritonserver(env: dict[str, str]) -> Path | None:
    """$GPU_CHECK_TRITONSERVER, the native runtime's binary in <home>/venv, tritonserver on PATH, NGC's path."""
    given = env.get("GPU_CHECK_TRITONSERVER")
    if given:
        path = Path(given)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise Failed(f"GPU_CHECK_TRITONSERVER={given} is not an executable file")
        return path
    wheel = sorted(triton_home(env).glob("venv/lib/python3*/site-packages/pytriton/tritonserver/bin/tritonserver"))
    if wheel:
        return wheel[-1]
    return find_tool("tritonserver", env, [Path("/opt/tritonserver/bin/tritonserver")])


def wheel_venv(binary: Path) -> tuple[Path, str] | None:
    """For <venv>/lib/pythonX.Y/site-packages/pytriton/tritonserver/bin/tritonserver: (venv, "X.Y")."""
    match = re.search(r"^(.*)/lib/python(3\.\d+)/site-packages/", binary.as_posix())
    return (Path(match.group(1)), match.group(2)) if match else None


def python_backends(binary: Path, env: dict[str, str], out: Path) -> Path:
    """The --backend-directory whose python/ holds libtriton_python.so, the utils and the stub.

    $GPU_CHECK_TRITON_BACKENDS; else the role's <home>/backends (the native runtime links them there); else
    the server's own backends/ (NGC images); else, for the wheel, links made as the role makes them.
    """
    given = env.get("GPU_CHECK_TRITON_BACKENDS")
    if given:
        return Path(given)
    candidates = [triton_home(env) / "backends", binary.parent.parent / "backends"]
    for candidate in candidates:
        if (candidate / "python" / "triton_python_backend_stub").exists():
            return candidate
    tree = binary.parent.parent
    venv = wheel_venv(binary)
    if venv is None:
        raise Failed(f"no python backend (backends/python/triton_python_backend_stub) for {binary}")
    stub = tree / "python_backend_stubs" / venv[1] / "triton_python_backend_stub"
    if not stub.exists():
        raise Failed(f"the wheel at {tree} has no python backend stub for Python {venv[1]}")
    backends = out / "triton" / "backends"
    python = backends / "python"
    shutil.rmtree(backends, ignore_errors=True)
    python.mkdir(parents=True)
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        (python / name).symlink_to(tree / "backends" / "python" / name)
    (python / "triton_python_backend_stub").symlink_to(stub)
    return backends


def write_model_repository(directory: Path) -> Path:
    """Copy the gpu_alloc model (config.pbtxt, 1/model.py) into <directory>/models; return the repository."""
    repository = directory / "models"
    shutil.rmtree(repository, ignore_errors=True)
    shutil.copytree(HERE / "triton" / TRITON_MODEL, repository / TRITON_MODEL, ignore=shutil.ignore_patterns("__py*"))
    return repository


def free_ports(count: int) -> list[int]:
    """Ports on 127.0.0.1 that nothing listens on now."""
    sockets = []
    try:
        while len(sockets) < count:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def server_argv(binary: Path, repository: Path, backends: Path, ports: Sequence[int]) -> list[str]:
    """tritonserver's command line: explicit model control, loopback only, the three given ports."""
    http, grpc, metrics = ports
    return [
        str(binary),
        f"--model-repository={repository}",
        f"--backend-directory={backends}",
        "--model-control-mode=explicit",
        f"--load-model={TRITON_MODEL}",
        "--strict-readiness=true",
        "--http-address=127.0.0.1",
        f"--http-port={http}",
        "--grpc-address=127.0.0.1",
        f"--grpc-port={grpc}",
        "--metrics-address=127.0.0.1",
        f"--metrics-port={metrics}",
        f"--exit-timeout-secs={TRITON_STOP_S // 4}",
        "--log-verbose=0",
    ]


def infer_request(nbytes: int, hold_ms: int) -> dict:
    """The KServe v2 JSON inference request for gpu_alloc."""
    return {
        "inputs": [
            {"name": "BYTES", "shape": [1], "datatype": "INT64", "data": [nbytes]},
            {"name": "HOLD_MS", "shape": [1], "datatype": "INT32", "data": [hold_ms]},
        ],
        "outputs": [{"name": "ALLOCATED"}, {"name": "METHOD"}, {"name": "DEVICE"}],
    }


def evaluate_response(response: dict, nbytes: int) -> dict[str, object]:
    """gpu_alloc's answer as {output name: value}; Failed unless it allocated exactly the bytes asked for."""
    outputs = {item.get("name"): (item.get("data") or [None])[0] for item in response.get("outputs") or []}
    if outputs.get("ALLOCATED") != nbytes:
        raise Failed(f"gpu_alloc answered {outputs or response}, expected ALLOCATED {nbytes}")
    if outputs.get("METHOD") not in ("torch", "cupy", "cuda-driver") or not outputs.get("DEVICE"):
        raise Failed(f"gpu_alloc answered {outputs}: no allocation method or device name")
    return outputs


def process_tree(root_pid: int, proc: Path = Path("/proc")) -> set[int]:
    """root_pid and all its descendants, from /proc/<pid>/stat."""
    parents: dict[int, int] = {}
    for stat in proc.glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
    tree = {root_pid}
    grew = True
    while grew:
        new = {pid for pid, parent in parents.items() if parent in tree and pid not in tree}
        tree |= new
        grew = bool(new)
    return tree


@dataclass
class MemorySample:
    """GPU memory at one moment: MiB held by the server's processes (None: not attributable) and on GPU 0."""

    tree_mib: int | None
    device_mib: int | None


def parse_compute_apps(text: str, pids: set[int]) -> int | None:
    """MiB that the given pids hold in `--query-compute-apps=pid,used_memory --format=csv,noheader,nounits`.

    None when no listed process is one of them (in a container nvidia-smi lists the host's pids or none)
    or the memory is not reported.
    """
    held = None
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.split(",")]
        if len(cells) < 2 or not cells[0].isdigit() or int(cells[0]) not in pids:
            continue
        if cells[1].isdigit():
            held = (held or 0) + int(cells[1])
    return held


def memory_sample(server_pid: int, env: dict[str, str]) -> MemorySample:
    """One nvidia-smi reading of the server's processes and of GPU 0's used memory."""
    apps = command(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"], 10, env=env)
    tree = parse_compute_apps(apps.stdout, process_tree(server_pid)) if apps.returncode == 0 else None
    used = command(["nvidia-smi", "-i", "0", "--query-gpu=memory.used", "--format=csv,noheader,nounits"], 10, env=env)
    device = int(used.stdout.strip()) if used.returncode == 0 and used.stdout.strip().isdigit() else None
    return MemorySample(tree, device)


def evaluate_memory(baseline: MemorySample, samples: Sequence[MemorySample], nbytes: int) -> str:
    """Whether nvidia-smi saw the server's processes hold the allocation during the request.

    Confirmed when the server's processes held at least 90 % of it more than before the request; Failed when
    nvidia-smi attributes memory to them but not that much more. When it lists none of them (a container's
    pid namespace, or the query unsupported), the model's own report stands, with GPU 0's used memory said.
    """
    need = int(nbytes / MIB * 0.9)
    trees = [sample.tree_mib for sample in samples if sample.tree_mib is not None]
    devices = [sample.device_mib for sample in samples if sample.device_mib is not None]
    device_text = ""
    if devices and baseline.device_mib is not None:
        device_text = f"; GPU 0 memory.used +{max(devices) - baseline.device_mib} MiB during the request"
    if trees:
        delta = max(trees) - (baseline.tree_mib or 0)
        if delta < need:
            raise Failed(
                f"nvidia-smi shows tritonserver's processes at +{delta} MiB during the request ({max(trees)} MiB),"
                f" expected at least +{need} MiB{device_text}"
            )
        return f"nvidia-smi: tritonserver's processes held +{delta} MiB during the request ({max(trees)} MiB)"
    return (
        "nvidia-smi lists no process of the server (pid namespace or query unsupported): the model's report"
        f" stands{device_text}"
    )


def answers_ready(url: str) -> bool:
    """Whether Triton at url answers 200 on /v2/health/ready."""
    try:
        with urllib.request.urlopen(url + "/v2/health/ready", timeout=2) as answer:  # noqa: S310 - loopback
            return answer.status == 200
    except OSError:
        return False


def wait_ready(url: str, server: subprocess.Popen, log: Path, seconds: float) -> None:
    """Poll /v2/health/ready until 200; Failed when the server exits or the time runs out."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise Failed(f"tritonserver exited {server.returncode} before it was ready: {server_error(log)}")
        if answers_ready(url):
            return
        time.sleep(0.5)
    raise Failed(f"tritonserver not ready after {seconds:g} s: {server_error(log)}")


def server_error(log: Path) -> str:
    """The last error line of the server's log (Triton's `E1201 ...` lines), else its last lines."""
    text = log.read_text(errors="replace") if log.is_file() else ""
    errors = [line for line in text.splitlines() if re.match(r"^E\d{4} ", line) or "Traceback" in line]
    return (errors[-1][:400] if errors else tail(text, 3)) + " (triton/server.log)"


def stop_server(server: subprocess.Popen, pid_file: Path) -> None:
    """TERM the server's process group, KILL it if it outlives TRITON_STOP_S, remove the pid file."""
    if server.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(TRITON_STOP_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
            server.wait(5)
    with contextlib.suppress(FileNotFoundError):
        pid_file.unlink()


def stop_leftover_server(pid_file: Path) -> None:
    """Stop the server a killed check left behind: the pid file's process group, if it is tritonserver."""
    try:
        pid = int(pid_file.read_text().strip())
        alive = "tritonserver" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
    except (OSError, ValueError):
        alive = False
    if alive:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + TRITON_STOP_S
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(FileNotFoundError):
        pid_file.unlink()


def post_json(url: str, body: dict, timeout_s: float) -> dict:
    """POST a JSON body, return the JSON answer; Failed with Triton's error text on an HTTP error."""
    request = urllib.request.Request(  # noqa: S310 - the check's own server on loopback
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as answer:  # noqa: S310
            return json.loads(answer.read())
    except urllib.error.HTTPError as err:
        raise Failed(f"inference answered HTTP {err.code}: {err.read().decode(errors='replace')[:400]}") from err


def check_triton(out: Path) -> str:
    """Check 6: tritonserver serves gpu_alloc on a GPU instance; nvidia-smi sees it hold the memory."""
    env = check_env()
    visible_gpus(env)
    binary = find_tritonserver(env)
    if binary is None:
        raise Skipped(f"tritonserver not installed ({triton_home(env)}/venv, PATH); {TRITON_INSTALL}")
    work = out / "triton"
    work.mkdir(parents=True, exist_ok=True)
    repository = write_model_repository(work)
    backends = python_backends(binary, env, out)
    venv = wheel_venv(binary)
    if venv is not None:  # the python backend stub finds numpy through python3 on PATH (as the role's unit)
        env["PATH"] = os.pathsep.join([str(venv[0] / "bin"), env["PATH"]])
    ports = free_ports(3)
    argv = server_argv(binary, repository, backends, ports)
    log = work / "server.log"
    pid_file = work / "server.pid"
    save(work / "command.txt", " ".join(argv) + "\n")
    with log.open("w") as log_file:
        server = subprocess.Popen(
            argv, stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=work, start_new_session=True
        )
    save(pid_file, f"{server.pid}\n")
    try:
        url = f"http://127.0.0.1:{ports[0]}"
        wait_ready(url, server, log, TRITON_READY_S)
        baseline = memory_sample(server.pid, env)
        answer: dict[str, object] = {}
        request = threading.Thread(
            target=request_into,
            args=(answer, f"{url}/v2/models/{TRITON_MODEL}/infer", infer_request(TRITON_ALLOC_BYTES, TRITON_HOLD_MS)),
            daemon=True,
        )
        request.start()
        samples = []
        while request.is_alive():
            samples.append(memory_sample(server.pid, env))
            request.join(0.2)
        save(work / "memory.json", json.dumps({"baseline": asdict(baseline), "samples": [asdict(s) for s in samples]}))
        if "error" in answer:
            raise answer["error"]  # type: ignore[misc]
        save(work / "response.json", json.dumps(answer["response"], indent=2) + "\n")
        outputs = evaluate_response(answer["response"], TRITON_ALLOC_BYTES)  # type: ignore[arg-type]
        memory = evaluate_memory(baseline, samples, TRITON_ALLOC_BYTES)
    finally:
        stop_server(server, pid_file)
    return (
        f"{binary.name} ({binary.parent.parent}) served {TRITON_MODEL} on a KIND_GPU instance: allocated"
        f" {TRITON_ALLOC_BYTES // MIB} MiB on {outputs['DEVICE']} with {outputs['METHOD']}; {memory}"
    )


def request_into(answer: dict[str, object], url: str, body: dict) -> None:
    """Send the inference request (in a thread) and keep its answer or its error in `answer`."""
    try:
        answer["response"] = post_json(url, body, TRITON_REQUEST_S)
    except Failed as err:
        answer["error"] = err
    except (OSError, ValueError) as err:
        answer["error"] = Failed(f"inference request failed: {err}")


# ----------------------------------------------------------------------------------------------------------
# The run: each check in a child process under timeout(1), one line each, the summary

CHECKS = (
    Check("nvidia_host_facts", 25, check_host_facts),
    Check("gpu_topology", 40, check_topology),
    Check("nvidia_driver_verify", 110, check_driver_verify),
    Check("cdi", 40, check_cdi),
    Check("cuda", 80, check_cuda),
    # The triton check's grace covers stopping its server after a time-out.
    Check("triton", 130, check_triton, kill_after=12),
)
# summary.txt's nvidia-smi query, before the checks.
HEADER_TIMEOUT_S = 10


def worst_case_seconds(checks: Sequence[Check] = CHECKS) -> int:
    """The longest a whole run can take: every check to its limit and grace, the header, a leftover server."""
    return sum(check.timeout_s + check.kill_after for check in checks) + HEADER_TIMEOUT_S + TRITON_STOP_S


def run_single(name: str, out: Path) -> Result:
    """Run one check in this process and return its result (any unexpected error is a FAIL)."""
    check = next(check for check in CHECKS if check.name == name)
    start = time.monotonic()
    try:
        status, detail = "PASS", check.run(out)
    except Skipped as err:
        status, detail = "SKIP", str(err)
    except Failed as err:
        status, detail = "FAIL", str(err)
    except Exception as err:  # a bug in the check is a FAIL line, not a traceback
        status, detail = "FAIL", f"{type(err).__name__}: {err}"
    return Result(status, name, detail, round(time.monotonic() - start, 1), check.timeout_s)


def parse_line(text: str, name: str) -> tuple[str, str] | None:
    """The (status, detail) of the last `STATUS name: detail` line for `name` in a child's output."""
    found = None
    for line in text.splitlines():
        match = LINE.match(line.strip())
        if match and match.group(2) == name:
            found = (match.group(1), match.group(3))
    return found


def run_child(name: str, argv: Sequence[str], timeout_s: int, stderr_log: Path, kill_after: int = KILL_AFTER) -> Result:
    """Run argv (one check) under timeout(1); its `STATUS name: detail` line is the result.

    A time-out, a kill or a missing line is a FAIL that says so; stderr goes to stderr_log.
    """
    start = time.monotonic()
    stderr_log.parent.mkdir(parents=True, exist_ok=True)
    with stderr_log.open("w") as errors:
        child = subprocess.Popen(
            ["timeout", "-k", str(kill_after), str(timeout_s), *argv], stdout=subprocess.PIPE, stderr=errors, text=True
        )
        try:
            stdout = child.communicate()[0]
        except BaseException:
            child.terminate()
            child.wait()
            raise
    seconds = round(time.monotonic() - start, 1)
    parsed = parse_line(stdout, name)
    if child.returncode in (124, 137) or (child.returncode == -signal.SIGKILL and parsed is None):
        return Result("FAIL", name, f"timed out after {timeout_s} s (see {stderr_log.name})", seconds, timeout_s)
    if parsed is None:
        why = tail(stderr_log.read_text(errors="replace"), 2) or "no output"
        return Result("FAIL", name, f"exited {child.returncode} without a result line: {why}", seconds, timeout_s)
    return Result(parsed[0], name, parsed[1], seconds, timeout_s)


def counts(results: Iterable[Result]) -> dict[str, int]:
    """How many results have each status."""
    tally = dict.fromkeys(STATUSES, 0)
    for result in results:
        tally[result.status] += 1
    return tally


def closing_lines(results: Sequence[Result]) -> list[str]:
    """The two last lines of a run: `N skipped`, then `N passed, N failed`."""
    tally = counts(results)
    return [f"{tally['SKIP']} skipped", f"{tally['PASS']} passed, {tally['FAIL']} failed"]


def exit_code(results: Sequence[Result]) -> int:
    """0 when no check failed (skips do not fail the run), else 1."""
    return 1 if counts(results)["FAIL"] else 0


def machine_header(env: dict[str, str]) -> list[str]:
    """summary.txt's first lines: when, where, and what nvidia-smi says about the GPUs."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")  # noqa: UP017 - py3.8+
    lines = [f"# GPU check {now} on {platform.node()} ({platform.platform()})"]
    query = command(
        [
            "nvidia-smi",
            "--query-gpu=index,name,driver_version,memory.total,persistence_mode,compute_cap",
            "--format=csv,noheader",
        ],
        HEADER_TIMEOUT_S,
        env=env,
    )
    text = (query.stdout if query.returncode == 0 else query.stderr).strip() or f"rc {query.returncode}"
    lines.extend(f"# nvidia-smi: {line}" for line in text.splitlines())
    return lines


def summary_text(header: Sequence[str], results: Sequence[Result]) -> str:
    """summary.txt: the header, one line per check, the seconds each took, the closing lines."""
    lines = list(header)
    lines.extend(result.line() for result in results)
    lines.append("# seconds per check (limit)")
    lines.extend(f"#   {result.name:<22} {result.seconds:>6.1f} s ({result.timeout_s} s)" for result in results)
    total = sum(result.seconds for result in results)
    limit = worst_case_seconds()
    lines.append(f"#   {'total':<22} {total:>6.1f} s ({limit} s)")
    lines.extend(closing_lines(results))
    return "\n".join(lines) + "\n"


def run_all(out: Path, checks: Sequence[Check] = CHECKS) -> int:
    """Every check in its own child under timeout(1): print each line as it comes, write the summary."""
    header = machine_header(check_env())
    results = []
    for check in checks:
        argv = [sys.executable, str(Path(__file__).resolve()), "--out", str(out), "--check", check.name]
        result = run_child(check.name, argv, check.timeout_s, out / "logs" / f"{check.name}.stderr", check.kill_after)
        stop_leftover_server(out / "triton" / "server.pid")
        results.append(result)
        print(result.line(), flush=True)
    save(out / "summary.txt", summary_text(header, results))
    save(out / "results.json", json.dumps([asdict(result) for result in results], indent=2) + "\n")
    for line in closing_lines(results):
        print(line, flush=True)
    return exit_code(results)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: --out DIR [--check NAME]."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--check", choices=[check.name for check in CHECKS], help="run only this check")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.check is None:
        return run_all(out)
    # timeout(1) ends a check with TERM: unwind, so that a Triton server the check started is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    result = run_single(args.check, out)
    print(result.line(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
