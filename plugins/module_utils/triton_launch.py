# Copyright: deepseek.cluster contributors
# Apache License 2.0 (see LICENSE)
"""Command lines that run Triton + TensorRT-LLM in a container on the GPUs the placement plan chose.

``server_command`` is what runs inside the container for one plan instance: ``tritonserver`` alone for a
world of one GPU, ``mpirun -n <world> trtllm-llmapi-launch tritonserver`` on one node, and the launcher's
``mpirun -H <host:slots,...>`` form for an instance that spans nodes. ``container_command`` wraps it in
``docker run`` or ``podman run`` with exactly the planned GPUs (never all of them by accident), host IPC
(the host's /dev/shm: no --shm-size, which podman refuses with host IPC and docker ignores) and network,
the ulimits TensorRT-LLM needs, the model repository and further mounts read-only
and the plan's NCCL environment.

An instance that spans nodes runs ``mpirun`` on its first host (the launcher); the other hosts (workers) run
an SSH daemon in the same image on ``ssh_port``, and both sides mount the instance's SSH directory (client
key, host key, known hosts, a config naming the port) read-only at /root/.ssh, so mpirun reaches the
workers' containers, not their hosts, and checks whom it reached. ``launch_argv`` picks this host's
instance from a whole plan and renders its command.
Errors are ``LaunchError``.
"""

from __future__ import annotations

import ipaddress
from typing import Any

ENGINES = ("docker", "podman")
MODELS_IN_CONTAINER = "/models"
SSH_IN_CONTAINER = "/root/.ssh"


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


def server_command(instance: dict[str, Any], host: str, server_args: list[str]) -> list[str]:
    """The command run inside the container on ``host`` for ``instance`` of the plan."""
    part = _part(instance, host)
    world = int(instance["world_size"])
    if world == 1:
        return ["tritonserver", *server_args]
    launch = ["trtllm-llmapi-launch", "tritonserver", *server_args]
    if len(instance["hosts"]) == 1:
        return ["mpirun", "--allow-run-as-root", "-n", str(world), *launch]
    if host != instance["hosts"][0]:
        raise LaunchError(
            f"{host} is a worker of multi-node instance {instance['instance']}: mpirun on "
            f"{instance['hosts'][0]} starts its ranks; only the launcher runs a server command"
        )
    exported = [arg for name in _nccl_env(part) for arg in ("-x", name)]
    return ["mpirun", "--allow-run-as-root", "-H", instance["mpi_hosts"], "-n", str(world), *exported, *launch]


def role_of(instance: dict[str, Any], host: str) -> str:
    """``single`` (instance on one host), ``launcher`` (first host of a multi-node one) or ``worker``."""
    _part(instance, host)
    if len(instance["hosts"]) == 1:
        return "single"
    return "launcher" if host == instance["hosts"][0] else "worker"


def worker_command(ssh_port: int, listen_address: str = "") -> list[str]:
    """The SSH daemon a multi-node worker runs in the foreground, for the launcher's mpirun.

    With ``listen_address`` (the fabric address) it listens there only, not on every address of the host.
    """
    if isinstance(ssh_port, bool) or not isinstance(ssh_port, int) or not 0 < ssh_port < 65536:
        raise LaunchError(f"triton_server_mpi_ssh_port must be a port number, got {ssh_port!r}")
    listen = ""
    if listen_address:
        try:
            address = ipaddress.ip_address(listen_address)
        except ValueError as exc:
            raise LaunchError(f"triton_server_mpi_ssh_address must be an IP address, got {listen_address!r}") from exc
        listen = f" -o ListenAddress={'[' + str(address) + ']' if address.version == 6 else address}"
    keys = SSH_IN_CONTAINER
    return [
        "/bin/sh",
        "-c",
        f"mkdir -p /run/sshd && exec /usr/sbin/sshd -D -e -p {ssh_port}{listen} -h {keys}/host_ed25519_key "
        f"-o AuthorizedKeysFile={keys}/authorized_keys -o PasswordAuthentication=no",
    ]


# What the container keeps of root's powers (everything else is dropped): MPI ranks on one node read each
# other's memory (Open MPI's shared-memory transport uses cross-memory attach, which needs ptrace
# rights), and a worker's SSH daemon separates privileges (chroot, then the sshd user) and, when built
# with Linux audit support, fails every login that cannot write its audit record (docker keeps
# AUDIT_WRITE in its default set for that reason).
CAPABILITIES = {
    "single": ("SYS_PTRACE",),
    "launcher": ("SYS_PTRACE",),
    "worker": ("SYS_PTRACE", "SYS_CHROOT", "SETUID", "SETGID", "AUDIT_WRITE"),
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
) -> list[str]:
    """``docker run`` / ``podman run`` argv for this host's share of ``instance``.

    ``mounts`` are host paths mounted read-only at the same path inside. A multi-node instance needs
    ``ssh_dir`` and ``ssh_port``: the launcher runs mpirun, a worker runs the SSH daemon.
    """
    if engine not in ENGINES:
        raise LaunchError(f"triton_server_container_engine is '{engine}'; allowed: {', '.join(ENGINES)}")
    part = _part(instance, host)
    gpus = [int(g) for g in part.get("gpus", [])]
    if not gpus:
        raise LaunchError(
            f"the plan gives {host} no GPU for instance {instance.get('instance')}; refusing to start a "
            "container that would see every GPU"
        )
    if engine == "docker":
        devices = ["--gpus", '"device={}"'.format(",".join(str(g) for g in gpus))]
    else:
        devices = [arg for g in gpus for arg in ("--device", f"nvidia.com/gpu={g}")]
    env = [arg for key, value in _nccl_env(part).items() for arg in ("--env", f"{key}={value}")]
    role = role_of(instance, host)
    if role != "single" and not (ssh_dir and ssh_port):
        raise LaunchError(
            f"instance {instance.get('instance')} spans {', '.join(instance['hosts'])}: mpirun needs "
            "triton_server_mpi_ssh_port and the SSH directory the role writes"
        )
    volumes = [f"{model_repository}:{MODELS_IN_CONTAINER}:ro", *(f"{m}:{m}:ro" for m in mounts)]
    if role != "single":
        volumes.append(f"{ssh_dir}:{SSH_IN_CONTAINER}:ro")
    command = worker_command(ssh_port, ssh_address) if role == "worker" else server_command(instance, host, server_args)
    return [
        engine,
        "run",
        "--rm",
        "--name",
        name,
        *devices,
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


def launch_argv(launch: dict[str, Any]) -> list[str]:
    """``container_command`` for one host, described by the mapping ``launch``.

    Keys: engine, engine_bin (the program to run, default the engine's name), name, image, plan, host,
    instance (-1: the only one), server_args, model_repository, mounts, ssh_dir, ssh_port, ssh_address,
    pids_limit.
    """
    instance = plan_instance(launch["plan"], launch["host"], int(launch.get("instance", -1)))
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
    )
    return [launch.get("engine_bin") or argv[0], *argv[1:]]
