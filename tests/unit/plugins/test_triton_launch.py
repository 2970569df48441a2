"""Container launch of Triton + TensorRT-LLM from real placement plans (captured nvidia-smi topologies)."""

import pytest
from ansible_collections.deepseek.cluster.plugins.module_utils.gpu_topology import build_facts
from ansible_collections.deepseek.cluster.plugins.module_utils.parallel_plan import plan
from ansible_collections.deepseek.cluster.plugins.module_utils.triton_launch import (
    LaunchError,
    container_command,
    launch_argv,
    server_command,
    worker_command,
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
    argv = container_command("docker", "triton", IMAGE, inst, "gpu-a", ARGS, "/srv/models")
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
    assert {"--ipc=host", "--network=host", "memlock=-1", "stack=67108864"} <= set(argv)
    # Host IPC means the host's /dev/shm: podman refuses --shm-size with it.
    assert not any(a.startswith("--shm-size") for a in argv)
    assert "/srv/models:/models:ro" in argv


def test_nccl_environment_from_the_plan_but_never_host_gpu_indices():
    instances = plan({"gpu-a": H100}, {"tensor_parallel_size": 4, "instances_per_node": 2})["instances"]
    inst = instances[1]
    argv = container_command("podman", "triton-1", IMAGE, inst, "gpu-a", ARGS, "/srv/models")
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
        container_command("docker", "t", IMAGE, inst, "x", ARGS, "/m")


def test_unknown_engine_and_foreign_host_are_refused():
    inst = one_instance({"gpu-a": H100}, {"tensor_parallel_size": 8})
    with pytest.raises(LaunchError, match="triton_server_container_engine is 'lxc'"):
        container_command("lxc", "t", IMAGE, inst, "gpu-a", ARGS, "/m")
    with pytest.raises(LaunchError, match="places nothing on gpu-z"):
        server_command(inst, "gpu-z", ARGS)


def test_multi_node_launcher_and_worker_share_the_ssh_directory_and_the_worker_runs_sshd():
    inst = one_instance({"a": H100, "b": H100}, {"tensor_parallel_size": 16})
    extra = {"mounts": ("/var/lib/triton/artifacts",), "ssh_dir": "/etc/triton/mpi-ssh", "ssh_port": 2233}
    launcher = container_command("docker", "t", IMAGE, inst, "a", ARGS, "/m", **extra)
    worker = container_command("docker", "t", IMAGE, inst, "b", ARGS, "/m", **extra)
    for argv in (launcher, worker):
        volumes = [argv[i + 1] for i, a in enumerate(argv) if a == "--volume"]
        assert volumes == [
            "/m:/models:ro",
            "/var/lib/triton/artifacts:/var/lib/triton/artifacts:ro",
            "/etc/triton/mpi-ssh:/root/.ssh:ro",
        ]
    assert launcher[launcher.index(IMAGE) + 1] == "mpirun"
    assert worker[worker.index(IMAGE) + 1 :][:2] == ["/bin/sh", "-c"]
    assert "sshd -D -e -p 2233 -h /root/.ssh/host_ed25519_key" in worker[-1]
    with pytest.raises(LaunchError, match="spans a, b: mpirun needs triton_server_mpi_ssh_port"):
        container_command("docker", "t", IMAGE, inst, "b", ARGS, "/m")


def test_one_node_instance_mounts_no_ssh_directory():
    inst = one_instance({"gpu-a": H100}, {"tensor_parallel_size": 8})
    argv = container_command("podman", "t", IMAGE, inst, "gpu-a", ARGS, "/m", ssh_dir="/s", ssh_port=22)
    assert not any(a.endswith(":/root/.ssh:ro") for a in argv)


def test_the_plan_instance_of_a_host_is_found_or_the_choice_is_asked_for():
    two = plan({"gpu-a": H100}, {"tensor_parallel_size": 4, "instances_per_node": 2})
    launch = {
        "engine": "docker",
        "name": "t",
        "image": IMAGE,
        "plan": two,
        "host": "gpu-a",
        "server_args": ARGS,
        "model_repository": "/m",
    }
    with pytest.raises(LaunchError, match="places instances 0, 1 on gpu-a.*set triton_server_plan_instance"):
        launch_argv(launch)
    argv = launch_argv({**launch, "instance": 1, "engine_bin": "/usr/bin/docker"})
    assert argv[0] == "/usr/bin/docker"
    devices = argv[argv.index("--gpus") + 1]
    assert devices == '"device={}"'.format(",".join(str(g) for g in two["instances"][1]["parts"][0]["gpus"]))
    with pytest.raises(LaunchError, match="places no instance on gpu-z"):
        launch_argv({**launch, "host": "gpu-z"})
    with pytest.raises(LaunchError, match="triton_server_plan_instance is 5"):
        launch_argv({**launch, "instance": 5})


def test_worker_ssh_port_must_be_a_port():
    with pytest.raises(LaunchError, match="must be a port number"):
        worker_command(70000)


def test_containers_drop_every_capability_but_what_their_role_needs():
    inst = one_instance({"a": H100, "b": H100}, {"tensor_parallel_size": 16})
    extra = {"ssh_dir": "/etc/triton/mpi-ssh", "ssh_port": 2233, "ssh_address": "10.1.0.12", "pids_limit": 2048}
    launcher = container_command("docker", "t", IMAGE, inst, "a", ARGS, "/m", **extra)
    worker = container_command("docker", "t", IMAGE, inst, "b", ARGS, "/m", **extra)
    for argv, caps in (
        (launcher, ["SYS_PTRACE"]),
        (worker, ["SYS_PTRACE", "SYS_CHROOT", "SETUID", "SETGID", "AUDIT_WRITE"]),
    ):
        before_image = argv[: argv.index(IMAGE)]
        assert "--cap-drop=ALL" in before_image
        assert [a.split("=", 1)[1] for a in before_image if a.startswith("--cap-add=")] == caps
        assert "--security-opt=no-new-privileges" in before_image
        assert "--pids-limit=2048" in before_image
        assert "--privileged" not in argv
    assert "-o ListenAddress=10.1.0.12 " in worker[-1]


def test_worker_ssh_address_must_be_an_address():
    assert "ListenAddress=[fd00::5]" in worker_command(2233, "fd00::5")[-1]
    assert "ListenAddress" not in worker_command(2233)[-1]
    with pytest.raises(LaunchError, match="triton_server_mpi_ssh_address must be an IP address"):
        worker_command(2233, "gpu-b; rm -rf /")
    with pytest.raises(LaunchError, match="pids_limit must be an integer of at least 64"):
        container_command(
            "docker", "t", IMAGE, one_instance({"a": H100}, {"tensor_parallel_size": 8}), "a", ARGS, "/m", pids_limit=8
        )
