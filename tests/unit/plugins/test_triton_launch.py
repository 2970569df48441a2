"""Container launch of Triton + TensorRT-LLM from real placement plans (captured nvidia-smi topologies)."""

import pytest
from ansible_collections.deepseek.cluster.plugins.module_utils.gpu_topology import build_facts
from ansible_collections.deepseek.cluster.plugins.module_utils.parallel_plan import plan
from ansible_collections.deepseek.cluster.plugins.module_utils.triton_launch import (
    LaunchError,
    container_command,
    server_command,
)
from conftest import FIXTURES

H100 = build_facts(
    (FIXTURES / "nvidia-smi" / "topo-8xH100-SXM-NV18-8nic-niclegend-gpunumaid-spaces-irregular.txt").read_text()
)
IMAGE = "nvcr.io/nvidia/tritonserver:25.12-trtllm-python-py3"
ARGS = ["--model-repository=/models", "--model-control-mode=explicit", "--load-model=deepseek"]


def one_instance(topologies, request):
    (instance,) = plan(topologies, request)["instances"]
    return instance


def test_deepseek_tp8_on_one_node_is_mpirun_with_eight_ranks_and_exactly_eight_gpus():
    inst = one_instance({"gpu-a": H100}, {"tensor_parallel_size": 8, "moe_expert_parallel_size": 8})
    argv = container_command("docker", "triton", IMAGE, inst, "gpu-a", ARGS, "/srv/models", "32g")
    assert argv[argv.index("--gpus") + 1] == '"device=0,1,2,3,4,5,6,7"'
    assert argv[argv.index(IMAGE) + 1 :] == [
        "mpirun",
        "--allow-run-as-root",
        "-n",
        "8",
        "trtllm-llmapi-launch",
        "tritonserver",
        *ARGS,
    ]
    assert {"--ipc=host", "--network=host", "--shm-size=32g", "memlock=-1", "stack=67108864"} <= set(argv)
    assert "/srv/models:/models:ro" in argv


def test_nccl_environment_from_the_plan_but_never_host_gpu_indices():
    instances = plan({"gpu-a": H100}, {"tensor_parallel_size": 4, "instances_per_node": 2})["instances"]
    inst = instances[1]
    argv = container_command("podman", "triton-1", IMAGE, inst, "gpu-a", ARGS, "/srv/models", "16g")
    envs = [argv[i + 1] for i, a in enumerate(argv) if a == "--env"]
    assert "NCCL_P2P_LEVEL=NVL" in envs
    assert not any(e.startswith("CUDA_VISIBLE_DEVICES=") for e in envs)
    devices = [argv[i + 1] for i, a in enumerate(argv) if a == "--device"]
    assert devices == [f"nvidia.com/gpu={g}" for g in inst["parts"][0]["gpus"]]
    assert len(devices) == 4
    # The second instance gets the other four GPUs, not the first ones again.
    assert set(inst["parts"][0]["gpus"]).isdisjoint(instances[0]["parts"][0]["gpus"])


def test_one_gpu_runs_tritonserver_alone():
    inst = one_instance({"gpu-a": H100}, {"tensor_parallel_size": 1, "instances_per_node": 1})
    assert server_command(inst, "gpu-a", ARGS) == ["tritonserver", *ARGS]


def test_two_node_instance_launches_from_the_first_host_with_the_host_list():
    inst = one_instance({"a": H100, "b": H100}, {"tensor_parallel_size": 16})
    command = server_command(inst, "a", ARGS)
    assert command[:7] == ["mpirun", "--allow-run-as-root", "-H", "a:8,b:8", "-n", "16", "-x"]
    exported = [command[i + 1] for i, a in enumerate(command) if a == "-x"]
    assert "NCCL_IB_HCA" in exported
    assert "CUDA_VISIBLE_DEVICES" not in exported
    with pytest.raises(LaunchError, match="b is a worker of multi-node instance 0: mpirun on a starts its ranks"):
        server_command(inst, "b", ARGS)


def test_no_planned_gpu_never_becomes_all_gpus():
    inst = {"instance": 0, "world_size": 1, "hosts": ["x"], "parts": [{"host": "x", "gpus": [], "env": {}}]}
    with pytest.raises(LaunchError, match="refusing to start a container that would see every GPU"):
        container_command("docker", "t", IMAGE, inst, "x", ARGS, "/m", "1g")


def test_unknown_engine_and_foreign_host_are_refused():
    inst = one_instance({"gpu-a": H100}, {"tensor_parallel_size": 8})
    with pytest.raises(LaunchError, match="triton_server_container_engine is 'lxc'"):
        container_command("lxc", "t", IMAGE, inst, "gpu-a", ARGS, "/m", "1g")
    with pytest.raises(LaunchError, match="places nothing on gpu-z"):
        server_command(inst, "gpu-z", ARGS)
