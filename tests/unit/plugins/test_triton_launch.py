"""Container launch of Triton + TensorRT-LLM from real placement plans (captured nvidia-smi topologies)."""

import os
import subprocess

import pytest
from ansible_collections.deepseek.cluster.plugins.module_utils.gpu_topology import build_facts
from ansible_collections.deepseek.cluster.plugins.module_utils.parallel_plan import plan
from ansible_collections.deepseek.cluster.plugins.module_utils.triton_launch import (
    SSH_SESSION_ENV,
    TRITON_VERSION_FILE,
    LaunchError,
    container_command,
    launch_argv,
    probe_command,
    probe_script,
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
    # The plan's NCCL variables are per host: never the launcher's values for the worker's ranks.
    assert exported == ["PATH", "LD_LIBRARY_PATH"]
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
        (launcher, ["SYS_PTRACE", "IPC_LOCK"]),
        (worker, ["SYS_PTRACE", "IPC_LOCK", "SYS_CHROOT", "SETUID", "SETGID", "AUDIT_WRITE"]),
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


def values(argv, flag):
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


MULTI = {"ssh_dir": "/opt/triton/mpi-ssh", "ssh_port": 2233, "rdma_devices": ("/dev/infiniband",)}


def test_multi_node_containers_get_the_rdma_devices_and_ipc_lock_and_mpirun_exports_path():
    inst = one_instance({"a": H100, "b": H100}, {"tensor_parallel_size": 16})
    for host in ("a", "b"):
        argv = container_command("docker", "t", IMAGE, inst, host, ARGS, "/m", **MULTI)
        before_image = argv[: argv.index(IMAGE)]
        assert "--device=/dev/infiniband" in before_image
        assert "--cap-add=IPC_LOCK" in before_image
        assert values(before_image, "--ulimit") == ["memlock=-1", "stack=67108864"]
    command = server_command(inst, "a", ARGS)
    # PATH and LD_LIBRARY_PATH (the remote ranks find the image's programs); not the plan's NCCL variables.
    assert values(command, "-x") == ["PATH", "LD_LIBRARY_PATH"]
    # podman: the RDMA device is one --device= argument, the GPUs stay CDI devices of their own.
    podman = container_command("podman", "t", IMAGE, inst, "a", ARGS, "/m", **MULTI)
    assert values(podman, "--device") == [f"nvidia.com/gpu={g}" for g in range(8)]
    assert "--device=/dev/infiniband" in podman


def test_single_node_containers_get_no_rdma_device_no_ipc_lock_and_no_exports():
    inst = one_instance({"gpu-a": H100}, {"tensor_parallel_size": 8})
    argv = container_command("docker", "t", IMAGE, inst, "gpu-a", ARGS, "/m", **MULTI)
    assert not [a for a in argv if a.startswith("--device")]
    assert "--cap-add=IPC_LOCK" not in argv
    assert "-x" not in argv
    assert [a for a in argv if a.startswith("--cap-add=")] == ["--cap-add=SYS_PTRACE"]


def test_mpirun_uses_the_plans_host_list_as_given():
    inst = one_instance({"a": H100, "b": H100}, {"tensor_parallel_size": 16})
    # The planner may name the hosts by fabric address: the launch takes the list as it is.
    by_address = {**inst, "mpi_hosts": "10.10.0.1:8,10.10.0.2:8"}
    command = server_command(by_address, "a", ARGS)
    assert values(command, "-H") == ["10.10.0.1:8,10.10.0.2:8"]


def test_rdma_devices_are_dev_paths_or_cdi_names():
    inst = one_instance({"a": H100, "b": H100}, {"tensor_parallel_size": 16})
    cdi = {**MULTI, "rdma_devices": ("nvidia.com/rdma=all", "/dev/infiniband/uverbs0")}
    argv = container_command("podman", "t", IMAGE, inst, "b", ARGS, "/m", **cdi)
    assert {"--device=nvidia.com/rdma=all", "--device=/dev/infiniband/uverbs0"} <= set(argv)
    # Without RDMA devices (a TCP-only fabric) the containers still get IPC_LOCK but no device.
    tcp = container_command("docker", "t", IMAGE, inst, "a", ARGS, "/m", **{**MULTI, "rdma_devices": ()})
    assert not [a for a in tcp if a.startswith("--device")]
    for bad in ("/etc/passwd", "infiniband", "/dev/infiniband:/dev/x", "--privileged", "/dev/../etc", "/dev/x/.."):
        with pytest.raises(LaunchError, match="triton_server_rdma_devices holds host paths under /dev"):
            container_command("docker", "t", IMAGE, inst, "a", ARGS, "/m", **{**MULTI, "rdma_devices": (bad,)})


def test_llmapi_on_one_gpu_runs_through_trtllm_llmapi_launch():
    inst = one_instance({"gpu-a": H100}, {"tensor_parallel_size": 1, "instances_per_node": 1})
    assert server_command(inst, "gpu-a", ARGS, llmapi_launch=True) == ["trtllm-llmapi-launch", "tritonserver", *ARGS]
    launch = {"engine": "docker", "name": "t", "image": IMAGE, "plan": {"instances": [inst]}, "host": "gpu-a"}
    argv = launch_argv({**launch, "server_args": ARGS, "model_repository": "/m", "llmapi": True})
    assert argv[argv.index(IMAGE) + 1 :][:2] == ["trtllm-llmapi-launch", "tritonserver"]


def run_worker_script(tmp_path, env):
    """The worker's /bin/sh script, run for real with sshd replaced by printf (one argument per line)."""
    script = worker_command(2233)[2]
    script = script.replace("mkdir -p /run/sshd", f"mkdir -p {tmp_path}/run-sshd")
    script = script.replace("exec /usr/sbin/sshd", "exec printf '%s\\n'")
    result = subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, text=True, check=True)
    return result.stdout.splitlines()


def test_worker_sshd_hands_the_containers_environment_to_each_session(tmp_path):
    env = {"PATH": "/opt/hpcx/ompi/bin:/usr/bin:/bin", "LD_LIBRARY_PATH": "/opt/hpcx/ompi/lib", "OPAL_PREFIX": "/opt/x"}
    args = run_worker_script(tmp_path, env)
    assert args[args.index("-o", args.index("PasswordAuthentication=no") - 1) :][-2:] == [
        "-o",
        "SetEnv=PATH=/opt/hpcx/ompi/bin:/usr/bin:/bin LD_LIBRARY_PATH=/opt/hpcx/ompi/lib OPAL_PREFIX=/opt/x",
    ]
    # Unset variables are left out (an empty OPAL_PREFIX would mislead Open MPI).
    args = run_worker_script(tmp_path, {"PATH": "/usr/bin:/bin", "PYTHONPATH": "/opt/deepseek-cluster/python"})
    assert args[-1] == "SetEnv=PATH=/usr/bin:/bin PYTHONPATH=/opt/deepseek-cluster/python"
    assert set(SSH_SESSION_ENV) == {"PATH", "LD_LIBRARY_PATH", "PYTHONPATH", "OPAL_PREFIX"}


def test_probe_checks_what_this_hosts_share_of_the_plan_needs():
    single = probe_script("single", 8, llmapi=True)
    assert "command -v mpirun >/dev/null" in single
    assert "command -v trtllm-llmapi-launch" in single
    assert "/usr/sbin/sshd" not in single
    assert "PartReasoningText" in single
    assert "import tensorrt_llm" not in single
    worker = probe_script("worker", 16, llmapi=True, gpu=True)
    assert "test -x /usr/sbin/sshd" in worker
    assert "import tensorrt_llm" in worker
    # What the llmapi model.py imports (newer TensorRT-LLM loads LLM lazily, so the package import alone is weak).
    assert "from tensorrt_llm import LLM" in worker
    assert "from tensorrt_llm import LLM" not in probe_script("single", 1, gpu=True)
    engine = probe_script("single", 1)
    for absent in ("mpirun", "trtllm-llmapi-launch", "openai"):
        assert absent not in engine


def test_probe_runs_without_network_and_with_gpus_only_on_a_gpu_host():
    inst = one_instance({"a": H100, "b": H100}, {"tensor_parallel_size": 16})
    cpu = probe_command("podman", IMAGE, inst, "b", llmapi=True)
    assert cpu[:4] == ["podman", "run", "--rm", "--network=none"]
    assert "--device" not in cpu
    assert "--cap-drop=ALL" in cpu
    assert not [a for a in cpu if a.startswith("--cap-add")]
    assert cpu[cpu.index(IMAGE) + 1 : cpu.index(IMAGE) + 3] == ["/bin/sh", "-c"]
    gpu = probe_command("docker", IMAGE, inst, "b", gpu=True)
    assert values(gpu, "--gpus") == ['"device=0,1,2,3,4,5,6,7"']
    plan = {"instances": [inst]}
    argv = launch_argv(
        {
            "engine": "docker",
            "engine_bin": "/usr/bin/docker",
            "image": IMAGE,
            "plan": plan,
            "host": "a",
            "probe": {"gpu": False},
            "llmapi": True,
        }
    )
    assert argv[0] == "/usr/bin/docker"
    assert "--network=none" in argv
    assert "/usr/sbin/sshd" in argv[-1]


def test_probe_script_passes_on_a_complete_image_and_names_what_is_missing(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("tritonserver", "mpirun", "trtllm-llmapi-launch"):
        (bin_dir / name).write_text("#!/bin/sh\n")
        (bin_dir / name).chmod(0o755)
    version = tmp_path / "TRITON_VERSION"
    version.write_text("2.71.0\n")
    script = probe_script("single", 8).replace(TRITON_VERSION_FILE, str(version))
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    ok = subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.splitlines()[0] == "triton_version: 2.71.0"
    assert "ok: mpirun on PATH" in ok.stdout
    (bin_dir / "mpirun").unlink()
    missing = subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, text=True, check=False)
    assert missing.returncode == 1
    assert missing.stderr.strip() == "probe failed: mpirun on PATH"
    assert os.path.exists(version)


def test_launch_flags_that_arrive_as_strings_are_read_as_booleans():
    inst = one_instance({"gpu-a": H100}, {"tensor_parallel_size": 1, "instances_per_node": 1})
    launch = {"engine": "docker", "name": "t", "image": IMAGE, "plan": {"instances": [inst]}, "host": "gpu-a"}
    launch = {**launch, "server_args": ARGS, "model_repository": "/m"}
    assert launch_argv({**launch, "llmapi": "False"})[launch_argv(launch).index(IMAGE) + 1] == "tritonserver"
    assert "trtllm-llmapi-launch" in launch_argv({**launch, "llmapi": "true"})
    with pytest.raises(LaunchError, match="the launch's llmapi must be true or false"):
        launch_argv({**launch, "llmapi": "maybe"})


def test_each_workers_ranks_get_that_workers_own_nccl_variables(tmp_path):
    """The plan derives NCCL_IB_HCA / NCCL_SOCKET_IFNAME per host (and parallel_plan_nccl_env is per host): the
    worker's SSH daemon hands its own values to the ranks mpirun starts there; mpirun does not export the
    launcher's."""
    inst = one_instance({"a": H100, "b": H100}, {"tensor_parallel_size": 16})
    parts = {p["host"]: p for p in inst["parts"]}
    parts["b"]["env"] = {**parts["b"]["env"], "NCCL_IB_HCA": "=mlx5_9", "NCCL_SOCKET_IFNAME": "=ib9"}
    worker = container_command("docker", "t", IMAGE, inst, "b", ARGS, "/m", **MULTI)
    envs = dict(e.split("=", 1) for e in values(worker, "--env"))
    assert envs["NCCL_IB_HCA"] == "=mlx5_9"
    script = worker[-1].replace("mkdir -p /run/sshd", f"mkdir -p {tmp_path}/run-sshd")
    script = script.replace("exec /usr/sbin/sshd", "exec printf '%s\\n'")
    out = subprocess.run(
        ["/bin/sh", "-c", script], env={"PATH": "/usr/bin:/bin", **envs}, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert "NCCL_IB_HCA==mlx5_9" in out[-1].split()
    assert "NCCL_SOCKET_IFNAME==ib9" in out[-1].split()
    assert "CUDA_VISIBLE_DEVICES" not in out[-1]
    with pytest.raises(LaunchError, match="not a variable name"):
        worker_command(2233, "", ("NCCL_X; rm -rf /",))
