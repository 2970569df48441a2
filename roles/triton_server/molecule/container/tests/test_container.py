"""triton_server, container runtime, llmapi layout: what two GPU nodes would run, rendered and checked.

One plan instance of DeepSeek-V3/R1 (TP16/EP16, attention DP) spans gpu-a (launcher, podman) and gpu-b
(worker, docker). No GPU here, so the service is staged, not started. gpu-a has a stand-in of NVIDIA's image
(prepare.yml): the role built the derived image from it, probed it and built the model repository from its
files; gpu-b has no image at all, so its repository comes from the recorded interface.
"""

import hashlib
import json
import os
import re
import shlex

import pytest
import testinfra
import yaml
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

LAUNCHER = "molecule-triton-server-gpu-a"
WORKER = "molecule-triton-server-gpu-b"
testinfra_hosts = [f"ansible://{LAUNCHER}", f"ansible://{WORKER}"]
UNIT = "/etc/systemd/system/tritonserver.service"
IMAGE = "nvcr.io/nvidia/tritonserver:"
DERIVED = "localhost/deepseek-cluster/tritonserver:26.07-trtllm-python-py3"
SSH = "/opt/triton/mpi-ssh"
VERSION_DIR = "/var/lib/triton/models/deepseek/1"
IMAGE_LLMAPI = "/app/all_models/llmapi/tensorrt_llm"


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
    image = argv.index(DERIVED)
    command = argv[image + 1 :]
    envs = dict(e.split("=", 1) for e in values(argv, "--env"))
    assert "CUDA_VISIBLE_DEVICES" not in envs
    assert envs["NCCL_P2P_LEVEL"] == "NVL"
    if host.backend.get_hostname() == LAUNCHER:
        assert command[:7] == ["mpirun", "--allow-run-as-root", "-H", f"{LAUNCHER}:8,{WORKER}:8", "-n", "16", "-x"]
        # The image's PATH and libraries for the remote ranks; the plan's NCCL variables are per host (the
        # worker's SSH daemon hands the worker's own to its ranks), never the launcher's.
        assert values(command, "-x") == ["PATH", "LD_LIBRARY_PATH"]
        launch = command.index("trtllm-llmapi-launch")
        assert command[launch + 1] == "tritonserver"
        assert {"--model-repository=/models", "--model-control-mode=explicit", "--load-model=deepseek"} <= set(
            command[launch + 2 :]
        )
    else:
        assert command[:2] == ["/bin/sh", "-c"]
        assert re.search(
            r"/usr/sbin/sshd -D -e -p 2233 (-o ListenAddress=\S+ )?-h /root/.ssh/host_ed25519_key", command[2]
        )
        # Each SSH session (orted, then the ranks) gets the container's PATH, libraries and Open MPI prefix.
        names = " ".join(["PATH", "LD_LIBRARY_PATH", "PYTHONPATH", "OPAL_PREFIX", *envs])
        assert f"for name in {names}; do" in command[2]
        assert command[2].endswith('-o "SetEnv=${session_env# }"')


def test_both_hosts_run_the_derived_image_with_the_rdma_devices_and_ipc_lock(host):
    argv = exec_start(host)
    before_image = argv[: argv.index(DERIVED)]
    assert "--device=/dev/infiniband" in before_image
    assert "--cap-add=IPC_LOCK" in before_image
    assert not [a for a in argv if a.startswith(IMAGE)]


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


def test_the_launcher_built_the_derived_image_once_from_the_recorded_dockerfile(host):
    if host.backend.get_hostname() != LAUNCHER:
        pytest.skip("the worker has no image: its build waits for one")
    dockerfile = host.file("/opt/triton/image-build/Dockerfile")
    labels = json.loads(host.check_output(f"podman image inspect --format '{{{{json .Config.Labels}}}}' {DERIVED}"))
    assert labels["deepseek.cluster.dockerfile-sha256"] == hashlib.sha256(dockerfile.content).hexdigest()
    base_id = host.check_output(f"podman image inspect --format '{{{{.Id}}}}' {IMAGE}26.07-trtllm-python-py3")
    assert f'deepseek.cluster.base-image-id="{base_id}"' in dockerfile.content_string
    # What the Dockerfile's RUN lines did in the stand-in: a pinned, hash-checked openai beside the image's
    # packages (on PYTHONPATH), and sshd for the workers (the plan spans two hosts).
    run = "podman run --rm --network=none " + DERIVED + " /bin/sh -c "
    pip = host.check_output(run + "'cat /opt/deepseek-cluster/python/openai/standin-pip-args.txt'")
    assert pip.split() == [
        "--no-cache-dir",
        "--no-deps",
        "--require-hashes",
        "--target=/opt/deepseek-cluster/python",
        "-r",
        "/tmp/deepseek-cluster-requirements.txt",  # noqa: S108 (inside the image build, not on this host)
    ]
    requirement = host.check_output(run + "'cat /opt/deepseek-cluster/python/openai/standin-requirements.txt'")
    assert re.fullmatch(r"openai==1\.109\.1 --hash=sha256:[0-9a-f]{64}", requirement)
    assert host.check_output(run + "'echo $PYTHONPATH'") == "/opt/deepseek-cluster/python"
    assert host.run(run + "'test -x /usr/sbin/sshd'").rc == 0


def test_the_probe_passed_once_for_the_image_the_launcher_runs(host):
    stamps = host.file("/opt/triton/image-probes")
    if host.backend.get_hostname() != LAUNCHER:
        assert not stamps.exists
        return
    image_id = host.check_output(f"podman image inspect --format '{{{{.Id}}}}' {DERIVED}")
    (stamp,) = stamps.listdir()
    assert stamp.startswith(image_id.removeprefix("sha256:") + "-")
    lines = host.file(f"/opt/triton/image-probes/{stamp}").content_string.splitlines()
    assert lines[0] == "triton_version: 2.71.0"
    assert "ok: /usr/sbin/sshd (multi-node workers run it for mpirun)" in lines
    assert any(line.startswith("ok: openai with PartReasoningText") for line in lines)
    # No GPU here: the probe did not import tensorrt_llm (it needs the driver's libraries).
    assert "ok: import tensorrt_llm" not in lines


def test_the_launchers_model_is_the_images_own_code_and_the_workers_waits_for_it(host):
    config = host.file("/var/lib/triton/models/deepseek/config.pbtxt").content_string
    if host.backend.get_hostname() != LAUNCHER:
        # No image on the worker: config.pbtxt from the recorded interface, no code yet (staged).
        assert "standin_only_input" not in config
        assert sorted(host.file(VERSION_DIR).listdir()) == ["model.yaml"]
        return
    image_id = host.check_output(f"podman image inspect --format '{{{{.Id}}}}' {DERIVED}").removeprefix("sha256:")
    # The image's templates, copied once and kept under the image's id.
    assert host.file("/opt/triton/image-models").listdir() == [image_id]
    # config.pbtxt derived from the image's own file (its stand-in-only input is there).
    assert "standin_only_input" in config
    # The whole 1/ directory (model.py imports helpers) but the image's sample model.yaml.
    assert sorted(host.file(VERSION_DIR).listdir()) == ["helpers.py", "model.py", "model.yaml", "standin_pkg"]
    run = "podman run --rm --network=none " + DERIVED + " cat "
    for name in ("model.py", "helpers.py", "standin_pkg/__init__.py"):
        assert (
            host.file(f"{VERSION_DIR}/{name}").content_string
            == host.check_output(run + f"{IMAGE_LLMAPI}/1/{name}") + "\n"
        )
    assert "not-this-one" not in host.file(f"{VERSION_DIR}/model.yaml").content_string
