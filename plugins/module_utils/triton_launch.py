# Copyright: deepseek.cluster contributors
# Apache License 2.0 (see LICENSE)
"""Command lines that run Triton + TensorRT-LLM in a container on the GPUs the placement plan chose.

``server_command`` is what runs inside the container for one plan instance: ``tritonserver`` alone for a
world of one GPU (``trtllm-llmapi-launch tritonserver`` for the llmapi layout), ``mpirun -n <world>
trtllm-llmapi-launch tritonserver`` on one node, and the launcher's ``mpirun -H <plan's mpi_hosts>`` form for
an instance that spans nodes. ``container_command`` wraps it in
``docker run`` or ``podman run`` with exactly the planned GPUs (never all of them by accident), host IPC
(the host's /dev/shm: no --shm-size, which podman refuses with host IPC and docker ignores) and network,
the ulimits TensorRT-LLM needs, the model repository and further mounts read-only
and the plan's NCCL environment.

An instance that spans nodes runs ``mpirun`` on its first host (the launcher); the other hosts (workers) run
an SSH daemon in the same image on ``ssh_port``, and both sides mount the instance's SSH directory (client
key, host key, known hosts, a config naming the port) read-only at /root/.ssh, so mpirun reaches the
workers' containers, not their hosts, and checks whom it reached. A multi-node container also gets the
RDMA devices (``rdma_devices``: /dev/infiniband or a CDI device) and CAP_IPC_LOCK, and mpirun exports PATH
and LD_LIBRARY_PATH to the remote ranks while each worker's SSH daemon hands its container's PATH,
LD_LIBRARY_PATH, PYTHONPATH, OPAL_PREFIX and its share of the plan's NCCL variables to the sessions mpirun
opens (so ``orted`` is found: an SSH session otherwise gets sshd's default PATH, not the image's; and each
host's ranks use that host's NICs).

``probe_command`` is the install-time check of the image that will run: Triton's version file and binary,
the launchers the plan needs, ``/usr/sbin/sshd`` for a multi-node instance, the ``openai`` that
``tensorrt_llm.serve`` imports (llmapi layout) and, on a host with GPUs, ``import tensorrt_llm``.
``launch_argv`` picks this host's instance from a whole plan and renders its launch (or, with a ``probe``
key, its probe). Errors are ``LaunchError``.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from typing import Any

ENGINES = ("docker", "podman")
MODELS_IN_CONTAINER = "/models"
SSH_IN_CONTAINER = "/root/.ssh"
# What mpirun exports to every rank (the launcher's values: the same image on every host). Open MPI passes
# only these to remote ranks; the rest of their environment is the SSH session's (Open MPI FAQ, "running
# remotely": the remote PATH/LD_LIBRARY_PATH must find Open MPI; TensorRT-LLM
# examples/models/core/deepseek_v3/README.md @ 010892fdde1a42c958a99be2b4e39181b5e7656c, "DeepGEMM", exports
# with -x likewise). The plan's NCCL variables are not exported: they are per host (the NICs nearest each
# host's GPUs, its interfaces, parallel_plan_nccl_env), so each worker's SSH daemon hands its own to its ranks.
MPI_EXPORTS = ("PATH", "LD_LIBRARY_PATH")
# What a worker's SSH daemon hands to each session (sshd_config SetEnv, OpenSSH 7.8+: openssh-portable 28013759f,
# "These override the default environment and any variables set by user configuration"; session.c applies it
# after PAM's environment, so it overrides the PATH sshd and PAM's /etc/environment would set: checked with
# OpenSSH 9.2). orted, started over SSH by
# mpirun, and the ranks it starts then see the image's environment: its PATH and libraries ("orted: command
# not found" otherwise, open-mpi/ompi#599), OPAL_PREFIX for a relocated Open MPI (HPC-X) and the PYTHONPATH
# of the derived image's openai overlay.
SSH_SESSION_ENV = ("PATH", "LD_LIBRARY_PATH", "PYTHONPATH", "OPAL_PREFIX")
# An RDMA device for a multi-node container: a host path under /dev (no "." or ".." segment: docker and podman
# resolve the path and add every device under a directory), or a CDI device (vendor/class=name,
# https://github.com/cncf-tags/container-device-interface, "Fully-qualified device name").
_RDMA_PATH = re.compile(r"^/dev/(?!(?:.*/)?\.\.?(?:/|$))[A-Za-z0-9._/-]+$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CDI_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]*/[a-zA-Z0-9][a-zA-Z0-9._-]*=[a-zA-Z0-9][a-zA-Z0-9._:-]*$")
# Where NVIDIA's Triton images record the server's version (triton-inference-server/server compose.py copies
# /opt/tritonserver/TRITON_VERSION into every image it composes).
TRITON_VERSION_FILE = "/opt/tritonserver/TRITON_VERSION"
# TensorRT-LLM's serve package imports this class (tensorrt_llm/serve/responses_utils.py); openai before
# 1.108.1 lacks it (1.107.3 and 1.108.0 do) and every llmapi model then fails to load (triton-inference-server/
# tutorials Popular_Models_Guide/Qwen2.5-VL/qwen2_5_vl_trtllm_guide.md @ 9511717dc28753922ce5125b36ea1ded031a7a3f,
# "Update the openai package": "This container's openai is too old for tensorrt_llm.serve", for 26.07).
OPENAI_CHECK = "from openai.types.responses.response_content_part_added_event import PartReasoningText"


class LaunchError(ValueError):
    """The launch cannot be rendered as asked; the message names the variable or the plan."""


def _part(instance: dict[str, Any], host: str) -> dict[str, Any]:
    """The share of ``instance`` placed on ``host``."""
    for part in instance.get("parts", []):
        if part["host"] == host:
            return part
    raise LaunchError(f"plan instance {instance.get('instance')} places nothing on {host}")


def _nccl_env(part: dict[str, Any]) -> dict[str, str]:
    """The plan's environment without CUDA_VISIBLE_DEVICES.

    Inside the container only the planned GPUs exist, renumbered from 0, so the host's indices would
    point at the wrong devices.
    """
    return {k: str(v) for k, v in sorted(part.get("env", {}).items()) if k != "CUDA_VISIBLE_DEVICES"}


def server_command(
    instance: dict[str, Any], host: str, server_args: list[str], llmapi_launch: bool = False
) -> list[str]:
    """The command run inside the container on ``host`` for ``instance`` of the plan.

    ``llmapi_launch`` (the llmapi layout) wraps a one-GPU server in ``trtllm-llmapi-launch`` too, as NVIDIA's
    guide for the llmapi model starts it on one GPU (triton-inference-server/tutorials
    Popular_Models_Guide/Qwen2.5-VL/qwen2_5_vl_trtllm_guide.md @ 9511717dc28753922ce5125b36ea1ded031a7a3f,
    "Serving with Triton": ``trtllm-llmapi-launch tritonserver``; the LLM API spawns its workers through MPI).
    The script is then the container's PID 1: a bash without a SIGTERM handler, so ``<engine> stop`` ends it
    with SIGKILL after the stop timeout (pid_namespaces(7)); multi-GPU launches have ``mpirun`` there, which
    forwards SIGTERM to each rank's process group.
    """
    _part(instance, host)
    world = int(instance["world_size"])
    if world == 1:
        prefix = ["trtllm-llmapi-launch"] if llmapi_launch else []
        return [*prefix, "tritonserver", *server_args]
    launch = ["trtllm-llmapi-launch", "tritonserver", *server_args]
    if len(instance["hosts"]) == 1:
        return ["mpirun", "--allow-run-as-root", "-n", str(world), *launch]
    if host != instance["hosts"][0]:
        raise LaunchError(
            f"{host} is a worker of multi-node instance {instance['instance']}: mpirun on "
            f"{instance['hosts'][0]} starts its ranks; only the launcher runs a server command"
        )
    # -H is the plan's own host list (names or the fabric addresses the planner chose), never recomputed here.
    # The plan's NCCL variables are per host: the launcher's ranks have them from this container, a worker's
    # from its own container through its SSH daemon (worker_command), never the launcher's values.
    exported = [arg for name in MPI_EXPORTS for arg in ("-x", name)]
    return ["mpirun", "--allow-run-as-root", "-H", instance["mpi_hosts"], "-n", str(world), *exported, *launch]


def role_of(instance: dict[str, Any], host: str) -> str:
    """``single`` (instance on one host), ``launcher`` (first host of a multi-node one) or ``worker``."""
    _part(instance, host)
    if len(instance["hosts"]) == 1:
        return "single"
    return "launcher" if host == instance["hosts"][0] else "worker"


def worker_command(ssh_port: int, listen_address: str = "", session_env: tuple[str, ...] = ()) -> list[str]:
    """The SSH daemon a multi-node worker runs in the foreground, for the launcher's mpirun.

    With ``listen_address`` (the fabric address) it listens there only, not on every address of the host.
    Each session gets this container's ``SSH_SESSION_ENV`` and ``session_env`` (those that are set: the
    worker's share of the plan's NCCL variables), so that orted and the ranks find the image's programs and
    libraries and use this host's NICs and interfaces.
    """
    if isinstance(ssh_port, bool) or not isinstance(ssh_port, int) or not 0 < ssh_port < 65536:
        raise LaunchError(f"triton_server_mpi_ssh_port must be a port number, got {ssh_port!r}")
    for name in session_env:
        if not isinstance(name, str) or not _ENV_NAME.match(name):
            raise LaunchError(f"the plan's environment holds {name!r}, which is not a variable name")
    listen = ""
    if listen_address:
        try:
            address = ipaddress.ip_address(listen_address)
        except ValueError as exc:
            raise LaunchError(f"triton_server_mpi_ssh_address must be an IP address, got {listen_address!r}") from exc
        listen = f" -o ListenAddress={'[' + str(address) + ']' if address.version == 6 else address}"
    keys = SSH_IN_CONTAINER
    names = " ".join(dict.fromkeys((*SSH_SESSION_ENV, *session_env)))
    return [
        "/bin/sh",
        "-c",
        "mkdir -p /run/sshd && session_env= && "
        f'for name in {names}; do eval "value=\\${{$name-}}"; '
        '[ -n "$value" ] && session_env="$session_env $name=$value"; done; '
        f"exec /usr/sbin/sshd -D -e -p {ssh_port}{listen} -h {keys}/host_ed25519_key "
        f"-o AuthorizedKeysFile={keys}/authorized_keys -o PasswordAuthentication=no "
        '-o "SetEnv=${session_env# }"',
    ]


# What the container keeps of root's powers (everything else is dropped): MPI ranks on one node read each
# other's memory (Open MPI's shared-memory transport uses cross-memory attach, which needs ptrace
# rights); the ranks of a multi-node instance register (pin) memory with the RDMA devices (IPC_LOCK; NVIDIA's
# DeepSeek multi-node example runs its containers --privileged instead: TensorRT-LLM
# examples/models/core/deepseek_v3/README.md @ 010892fdde1a42c958a99be2b4e39181b5e7656c, "mpirun"); a worker's
# SSH daemon separates privileges (chroot, then the sshd user) and, when built with Linux audit support, fails
# every login that cannot write its audit record (docker keeps AUDIT_WRITE in its default set for that reason).
CAPABILITIES = {
    "single": ("SYS_PTRACE",),
    "launcher": ("SYS_PTRACE", "IPC_LOCK"),
    "worker": ("SYS_PTRACE", "IPC_LOCK", "SYS_CHROOT", "SETUID", "SETGID", "AUDIT_WRITE"),
}


def hardening(role: str, pids_limit: int) -> list[str]:
    """Container flags: every capability dropped but the role's, no privilege gain, a process limit."""
    if isinstance(pids_limit, bool) or not isinstance(pids_limit, int) or pids_limit < 64:
        raise LaunchError(f"triton_server_container_pids_limit must be an integer of at least 64, got {pids_limit!r}")
    return [
        "--cap-drop=ALL",
        *(f"--cap-add={cap}" for cap in CAPABILITIES[role]),
        "--security-opt=no-new-privileges",
        f"--pids-limit={pids_limit}",
    ]


def _gpu_devices(engine: str, part: dict[str, Any], instance: dict[str, Any], host: str) -> list[str]:
    """The engine's flags for exactly the planned GPUs of ``part`` (never all of them by accident)."""
    if engine not in ENGINES:
        raise LaunchError(f"triton_server_container_engine is '{engine}'; allowed: {', '.join(ENGINES)}")
    gpus = [int(g) for g in part.get("gpus", [])]
    if not gpus:
        raise LaunchError(
            f"the plan gives {host} no GPU for instance {instance.get('instance')}; refusing to start a "
            "container that would see every GPU"
        )
    if engine == "docker":
        return ["--gpus", '"device={}"'.format(",".join(str(g) for g in gpus))]
    return [arg for g in gpus for arg in ("--device", f"nvidia.com/gpu={g}")]


def rdma_flags(rdma_devices: tuple[str, ...] | list[str]) -> list[str]:
    """``--device=`` for each RDMA device of a multi-node container.

    A device is a host path under /dev (a directory adds every device in it) or a CDI device name (docker 25+
    with CDI enabled, podman).
    """
    flags = []
    for device in rdma_devices:
        if not isinstance(device, str) or not (_RDMA_PATH.match(device) or _CDI_NAME.match(device)):
            raise LaunchError(
                "triton_server_rdma_devices holds host paths under /dev (e.g. /dev/infiniband) or CDI device "
                f"names (vendor/class=name), got {device!r}"
            )
        flags.append(f"--device={device}")
    return flags


def container_command(
    engine: str,
    name: str,
    image: str,
    instance: dict[str, Any],
    host: str,
    server_args: list[str],
    model_repository: str,
    *,
    mounts: tuple[str, ...] = (),
    ssh_dir: str = "",
    ssh_port: int = 0,
    ssh_address: str = "",
    pids_limit: int = 4096,
    rdma_devices: tuple[str, ...] = (),
    llmapi_launch: bool = False,
) -> list[str]:
    """``docker run`` / ``podman run`` argv for this host's share of ``instance``.

    ``mounts`` are host paths mounted read-only at the same path inside. A multi-node instance needs
    ``ssh_dir`` and ``ssh_port``: the launcher runs mpirun, a worker runs the SSH daemon; both get
    ``rdma_devices`` (NCCL's InfiniBand/RoCE transport between the nodes) and CAP_IPC_LOCK. A one-node
    instance gets neither: its ranks talk over NVLink and shared memory.
    """
    part = _part(instance, host)
    devices = _gpu_devices(engine, part, instance, host)
    env = [arg for key, value in _nccl_env(part).items() for arg in ("--env", f"{key}={value}")]
    role = role_of(instance, host)
    if role != "single" and not (ssh_dir and ssh_port):
        raise LaunchError(
            f"instance {instance.get('instance')} spans {', '.join(instance['hosts'])}: mpirun needs "
            "triton_server_mpi_ssh_port and the SSH directory the role writes"
        )
    rdma = rdma_flags(rdma_devices) if role != "single" else []
    volumes = [f"{model_repository}:{MODELS_IN_CONTAINER}:ro", *(f"{m}:{m}:ro" for m in mounts)]
    if role != "single":
        volumes.append(f"{ssh_dir}:{SSH_IN_CONTAINER}:ro")
    command = (
        worker_command(ssh_port, ssh_address, tuple(_nccl_env(part)))
        if role == "worker"
        else server_command(instance, host, server_args, llmapi_launch)
    )
    return [
        engine,
        "run",
        "--rm",
        "--name",
        name,
        *devices,
        *rdma,
        *hardening(role, pids_limit),
        "--ipc=host",
        "--network=host",
        "--ulimit",
        "memlock=-1",
        "--ulimit",
        "stack=67108864",
        *(arg for volume in volumes for arg in ("--volume", volume)),
        *env,
        image,
        *command,
    ]


def probe_script(role: str, world_size: int, *, llmapi: bool = False, gpu: bool = False) -> str:
    """The shell script that checks an image for this host's share of a plan instance.

    Each check prints ``ok: <what>`` or ``probe failed: <what>`` (and exits 1); the first line is Triton's
    version. ``gpu`` adds ``import tensorrt_llm`` (it needs the driver's libraries, which only a container
    with GPUs gets).
    """
    checks = [
        (f"test -r {TRITON_VERSION_FILE}", f"Triton's version file {TRITON_VERSION_FILE}"),
        ("command -v tritonserver >/dev/null", "tritonserver on PATH"),
    ]
    if world_size > 1:
        checks.append(("command -v mpirun >/dev/null", "mpirun on PATH"))
    if world_size > 1 or llmapi:
        checks.append(("command -v trtllm-llmapi-launch >/dev/null", "trtllm-llmapi-launch on PATH"))
    if role != "single":
        checks.append(("test -x /usr/sbin/sshd", "/usr/sbin/sshd (multi-node workers run it for mpirun)"))
    if llmapi:
        checks.append(
            (
                "python3 -c " + shlex.quote(OPENAI_CHECK),
                "openai with PartReasoningText (tensorrt_llm.serve imports it; openai >= 1.108.1)",
            )
        )
    if gpu:
        # The llmapi model.py imports LLM from the package; newer TensorRT-LLM loads it lazily (PEP 562), so
        # `import tensorrt_llm` alone no longer reaches tensorrt_llm.llmapi and what it imports.
        code = "import tensorrt_llm; print(tensorrt_llm.__version__)"
        if llmapi:
            code += "; from tensorrt_llm import LLM"
        checks.append(("python3 -c " + shlex.quote(code), "import tensorrt_llm" + (" and its LLM" if llmapi else "")))
    lines = [f'echo "triton_version: $(cat {TRITON_VERSION_FILE} 2>/dev/null)"']
    for test, what in checks:
        quoted = shlex.quote(what)
        lines.append(f"if {test}; then echo ok: {quoted}; else echo probe failed: {quoted} >&2; exit 1; fi")
    return "\n".join(lines)


def probe_command(
    engine: str,
    image: str,
    instance: dict[str, Any],
    host: str,
    *,
    llmapi: bool = False,
    gpu: bool = False,
    pids_limit: int = 4096,
) -> list[str]:
    """``<engine> run --rm`` of ``probe_script`` in ``image``.

    No network, every capability dropped, and this host's planned GPUs only when ``gpu`` (the host has NVIDIA
    devices).
    """
    if engine not in ENGINES:
        raise LaunchError(f"triton_server_container_engine is '{engine}'; allowed: {', '.join(ENGINES)}")
    part = _part(instance, host)
    devices = _gpu_devices(engine, part, instance, host) if gpu else []
    role = role_of(instance, host)
    script = probe_script(role, int(instance["world_size"]), llmapi=llmapi, gpu=gpu)
    return [
        engine,
        "run",
        "--rm",
        "--network=none",
        *devices,
        # No capability at all (the probe only reads and imports), no privilege gain, the process limit.
        *[flag for flag in hardening("single", pids_limit) if not flag.startswith("--cap-add=")],
        image,
        "/bin/sh",
        "-c",
        script,
    ]


def plan_instance(plan: dict[str, Any], host: str, number: int = -1) -> dict[str, Any]:
    """The instance of ``plan`` that ``host`` serves: ``number`` if >= 0, else the only one it is part of."""
    mine = [inst for inst in plan.get("instances", []) if host in inst.get("hosts", [])]
    if number >= 0:
        for inst in mine:
            if inst["instance"] == number:
                return inst
        raise LaunchError(f"triton_server_plan_instance is {number}, but that plan instance places nothing on {host}")
    if not mine:
        raise LaunchError(f"triton_server_parallel_plan places no instance on {host}; plan with it or drop the host")
    if len(mine) > 1:
        numbers = ", ".join(str(inst["instance"]) for inst in mine)
        raise LaunchError(
            f"triton_server_parallel_plan places instances {numbers} on {host}; one server per host is run: "
            "set triton_server_plan_instance to one of them (or plan with instances_per_node: 1)"
        )
    return mine[0]


def _flag(value: Any, key: str) -> bool:
    """A boolean of the launch mapping; templated values may arrive as the strings 'True' / 'false'."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no", "1", "0"):
        return value.strip().lower() in ("true", "yes", "1")
    raise LaunchError(f"the launch's {key} must be true or false, got {value!r}")


def launch_argv(launch: dict[str, Any]) -> list[str]:
    """``container_command`` for one host, described by the mapping ``launch``.

    Keys: engine, engine_bin (the program to run, default the engine's name), name, image, plan, host,
    instance (-1: the only one), server_args, model_repository, mounts, ssh_dir, ssh_port, ssh_address,
    pids_limit, rdma_devices, llmapi (the llmapi layout). With ``probe`` (a mapping with ``gpu``), the argv of
    ``probe_command`` for the same host instead.
    """
    instance = plan_instance(launch["plan"], launch["host"], int(launch.get("instance", -1)))
    llmapi = _flag(launch.get("llmapi", False), "llmapi")
    probe = launch.get("probe")
    if probe is not None:
        argv = probe_command(
            launch["engine"],
            launch["image"],
            instance,
            launch["host"],
            llmapi=llmapi,
            gpu=_flag(probe.get("gpu", False), "probe.gpu"),
            pids_limit=int(launch.get("pids_limit", 4096)),
        )
    else:
        argv = container_command(
            launch["engine"],
            launch["name"],
            launch["image"],
            instance,
            launch["host"],
            list(launch["server_args"]),
            launch["model_repository"],
            mounts=tuple(launch.get("mounts", ())),
            ssh_dir=launch.get("ssh_dir", ""),
            ssh_port=int(launch.get("ssh_port", 0)),
            ssh_address=str(launch.get("ssh_address", "")),
            pids_limit=int(launch.get("pids_limit", 4096)),
            rdma_devices=tuple(launch.get("rdma_devices", ())),
            llmapi_launch=llmapi,
        )
    return [launch.get("engine_bin") or argv[0], *argv[1:]]
