"""triton_server, container runtime, llmapi layout: what two GPU nodes would run, rendered and checked.

One plan instance of DeepSeek-V3/R1 (TP16/EP16, attention DP) spans gpu-a (launcher, podman) and gpu-b
(worker, docker). No image and no GPU here, so the service is staged, not started.
"""

import os
import shlex

import testinfra
import yaml
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

LAUNCHER = "molecule-triton-server-gpu-a"
WORKER = "molecule-triton-server-gpu-b"
testinfra_hosts = [f"ansible://{LAUNCHER}", f"ansible://{WORKER}"]
UNIT = "/etc/systemd/system/tritonserver.service"
IMAGE = "nvcr.io/nvidia/tritonserver:"
SSH = "/opt/triton/mpi-ssh"


def node(name):
    """Another node of the scenario, through molecule's inventory."""
    return testinfra.get_host(f"ansible://{name}?ansible_inventory={os.environ['MOLECULE_INVENTORY_FILE']}")


def exec_start(host):
    """The ExecStart argv as systemd reads it (continuations, quotes, %% and $$)."""
    lines = host.file(UNIT).content_string.replace("\\\n", " ").splitlines()
    (line,) = [x for x in lines if x.startswith("ExecStart=")]
    return [w.replace("%%", "%").replace("$$", "$") for w in shlex.split(line[len("ExecStart=") :])]


def values(argv, flag):
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_unit_passes_systemd_analyze_and_the_service_is_staged_not_started(host):
    result = host.run(f"systemd-analyze verify {UNIT}")
    assert result.rc == 0, result.stderr
    assert "tritonserver.service" not in host.check_output("systemctl list-units --state=active --no-legend")
    assert host.run("systemctl is-enabled tritonserver").stdout.strip() == "disabled"


def test_each_container_sees_exactly_its_eight_planned_gpus(host):
    argv = exec_start(host)
    if host.backend.get_hostname() == LAUNCHER:
        assert argv[:2] == ["/usr/bin/podman", "run"]
        assert values(argv, "--device") == [f"nvidia.com/gpu={g}" for g in range(8)]
    else:
        assert argv[:2] == ["/usr/bin/docker", "run"]
        assert values(argv, "--gpus") == ['"device=0,1,2,3,4,5,6,7"']
    assert {"--ipc=host", "--network=host"} <= set(argv)
    assert values(argv, "--ulimit") == ["memlock=-1", "stack=67108864"]
    assert not any(a.startswith("--shm-size") for a in argv)


def test_mounts_are_read_only_and_the_ssh_directory_is_shared(host):
    argv = exec_start(host)
    assert values(argv, "--volume") == ["/var/lib/triton/models:/models:ro", f"{SSH}:/root/.ssh:ro"]


def test_launcher_runs_mpirun_over_both_hosts_with_the_nccl_environment(host):
    argv = exec_start(host)
    image = next(i for i, a in enumerate(argv) if a.startswith(IMAGE))
    command = argv[image + 1 :]
    envs = dict(e.split("=", 1) for e in values(argv, "--env"))
    assert "CUDA_VISIBLE_DEVICES" not in envs
    assert envs["NCCL_P2P_LEVEL"] == "NVL"
    if host.backend.get_hostname() == LAUNCHER:
        assert command[:7] == ["mpirun", "--allow-run-as-root", "-H", f"{LAUNCHER}:8,{WORKER}:8", "-n", "16", "-x"]
        assert set(values(command, "-x")) == set(envs)
        launch = command.index("trtllm-llmapi-launch")
        assert command[launch + 1] == "tritonserver"
        assert {"--model-repository=/models", "--model-control-mode=explicit", "--load-model=deepseek"} <= set(
            command[launch + 2 :]
        )
    else:
        assert command[:2] == ["/bin/sh", "-c"]
        assert "/usr/sbin/sshd -D -e -p 2233 -h /root/.ssh/host_ed25519_key" in command[2]


def test_the_launcher_trusts_exactly_the_workers_host_key_and_the_worker_admits_exactly_the_launcher():
    launcher, worker = node(LAUNCHER), node(WORKER)
    client_pub = launcher.file(f"{SSH}/id_ed25519.pub").content_string.split()[:2]
    host_pub = worker.file(f"{SSH}/host_ed25519_key.pub").content_string.split()[:2]
    assert worker.file(f"{SSH}/authorized_keys").content_string.split()[:2] == client_pub
    assert launcher.file(f"{SSH}/known_hosts").content_string.split() == [WORKER, *host_pub]
    config = launcher.file(f"{SSH}/config").content_string
    assert "Port 2233" in config
    assert "StrictHostKeyChecking yes" in config
    # ssh looks the key up under the alias (not [address]:2233), so the pinned line matches.
    assert f"HostKeyAlias {WORKER}" in config
    for h, key in ((launcher, "id_ed25519"), (worker, "host_ed25519_key")):
        private = h.file(f"{SSH}/{key}")
        assert private.mode == 0o600
        assert private.user == "root"
        assert h.file(SSH).mode == 0o700
    # No private key was copied to the other side.
    assert not worker.file(f"{SSH}/id_ed25519").exists
    assert not launcher.file(f"{SSH}/host_ed25519_key").exists


def test_model_yaml_takes_its_parallelism_from_the_plan(host):
    model = yaml.safe_load(host.file("/var/lib/triton/models/deepseek/1/model.yaml").content_string)
    assert model["tensor_parallel_size"] == 16
    assert model["moe_expert_parallel_size"] == 16
    assert model["moe_tensor_parallel_size"] == 1
    assert model["enable_attention_dp"] is True
    assert model["backend"] == "pytorch"
    assert model["speculative_config"] == {"decoding_type": "MTP", "num_nextn_predict_layers": 1}
    assert model["moe_config"] == {"backend": "CUTLASS"}
    assert model["triton_config"] == {"max_batch_size": 0, "decoupled": True}


def test_config_pbtxt_parses_with_tritons_protobuf_and_pins_the_version(host):
    config = model_config_pb2.ModelConfig()
    text_format.Parse(host.file("/var/lib/triton/models/deepseek/config.pbtxt").content_string, config)
    assert config.name == "deepseek"
    assert config.backend == "python"
    assert config.model_transaction_policy.decoupled
    assert list(config.version_policy.specific.versions) == [1]
    assert {i.name for i in config.input} >= {"text_input", "streaming", "sampling_param_max_tokens"}
