# Copyright: deepseek.cluster contributors
# Apache License 2.0 (see LICENSE)
"""Command lines that run Triton + TensorRT-LLM in a container on the GPUs the placement plan chose.

``server_command`` is what runs inside the container for one plan instance: ``tritonserver`` alone for a
world of one GPU, ``mpirun -n <world> trtllm-llmapi-launch tritonserver`` on one node, and the launcher's
``mpirun -H <host:slots,...>`` form for an instance that spans nodes. ``container_command`` wraps it in
``docker run`` or ``podman run`` with exactly the planned GPUs (never all of them by accident), host IPC and
network, the shared memory and ulimits TensorRT-LLM needs, the model repository read-only and the plan's
NCCL environment. Errors are ``LaunchError``.
"""

from __future__ import annotations

from typing import Any

ENGINES = ("docker", "podman")
MODELS_IN_CONTAINER = "/models"


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


def container_command(
    engine: str,
    name: str,
    image: str,
    instance: dict[str, Any],
    host: str,
    server_args: list[str],
    model_repository: str,
    shm_size: str,
) -> list[str]:
    """``docker run`` / ``podman run`` argv for this host's share of ``instance``."""
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
    return [
        engine,
        "run",
        "--rm",
        "--name",
        name,
        *devices,
        "--ipc=host",
        "--network=host",
        f"--shm-size={shm_size}",
        "--ulimit",
        "memlock=-1",
        "--ulimit",
        "stack=67108864",
        "--volume",
        f"{model_repository}:{MODELS_IN_CONTAINER}:ro",
        *env,
        image,
        *server_command(instance, host, server_args),
    ]
