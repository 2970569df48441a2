"""dcgm_exporter: the GPU path of the role, rendered through the role itself on fake hosts.

No test machine here has a GPU, NVIDIA's repository or a registry, so what the role would write on a GPU
node is rendered by ansible-playbook on fake local hosts: the role's own preflight.yml (its checks, with
the role's defaults and vars) and its templates, then checked here:

- every counters file row is a field name dcgm-exporter 4.8.3 accepts (tests/fixtures/dcgm-exporter/,
  taken from go-dcgm v1.4601.1 and the exporter's own names at tag 4.6.0-4.8.3), in the three-column
  format its parser needs, and the fields the alert rules and dashboards use are all there;
- the web config is exporter-toolkit's format; the textfile metric parses as Prometheus text;
- the package method hands NVIDIA's packages, pinned, to the shared install flow, with the CUDA
  repository or the mirror; the container method runs the image with the GPUs of its engine;
- the systemd drop-in and unit load in systemd-analyze where it exists;
- a host without a GPU, or with GPUs but no loaded driver, is not run on.
"""

import csv
import io
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, load_yaml, run_local_play

ROLE = ROOT / "roles/dcgm_exporter"
FIELDS = ROOT / "tests/fixtures/dcgm-exporter/field-names-4.6.0-4.8.3.tsv"
HASH = "$2y$10$Bt0GUFvTcVOgjbIJwdLjA.mbI2EIGfbaRCGHhAldYsm9t6mFpBxbC"
CUDA = "https://developer.download.nvidia.com/compute/cuda/repos"
DNF_MIRROR = "https://mirror.example/cuda/rhel9/x86_64"

# Deprecated (legacy) names the counters file keeps on purpose, each for its unit (see the template).
LEGACY_KEPT = {"DCGM_FI_DEV_GPU_UTIL"}

# What the alert rules (roles/prometheus/files/rules/gpu.rules.yml) and the GPU dashboards read.
REQUIRED = {
    # XID
    "DCGM_FI_DEV_XID_ERROR",
    "DCGM_EXP_XID_ERRORS_COUNT",
    # temperatures and limits
    "DCGM_FI_DEV_GPU_TEMP_CELSIUS",
    "DCGM_FI_DEV_MEMORY_TEMP_CELSIUS",
    "DCGM_FI_DEV_GPU_TEMP_SLOWDOWN_CELSIUS",
    # power, violations, throttle reasons
    "DCGM_FI_DEV_BOARD_POWER_WATTS",
    "DCGM_FI_DEV_POWER_VIOLATION",
    "DCGM_FI_DEV_THERMAL_VIOLATION",
    "DCGM_FI_DEV_CLOCKS_EVENT_REASONS",
    # framebuffer
    "DCGM_FI_DEV_FB_USED",
    "DCGM_FI_DEV_FB_FREE",
    # ECC and row remapping
    "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL",
    "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL",
    "DCGM_FI_DEV_ECC_SBE_AGG_TOTAL",
    "DCGM_FI_DEV_ECC_DBE_AGG_TOTAL",
    "DCGM_FI_DEV_ROW_REMAP_CORRECTABLE_TOTAL",
    "DCGM_FI_DEV_ROW_REMAP_UNCORRECTABLE_TOTAL",
    "DCGM_FI_DEV_ROW_REMAP_PENDING",
    "DCGM_FI_DEV_ROW_REMAP_FAILED",
    # PCIe, NVLink
    "DCGM_FI_DEV_PCIE_REPLAY_TOTAL",
    "DCGM_FI_DEV_NVLINK_CRC_FLIT_ERROR_TOTAL",
    "DCGM_FI_DEV_NVLINK_CRC_DATA_ERROR_TOTAL",
    "DCGM_FI_DEV_NVLINK_REPLAY_ERROR_TOTAL",
    "DCGM_FI_DEV_NVLINK_RECOVERY_ERROR_TOTAL",
    "DCGM_FI_DEV_NVLINK_THROUGHPUT_TOTAL",
    # health
    "DCGM_FI_DEV_FABRIC_MANAGER_STATUS",
    "DCGM_FI_DEV_GPU_RECOVERY_ACTION",
}
PROFILING = {
    "DCGM_FI_PROF_SM_UTIL_RATIO",
    "DCGM_FI_PROF_SM_OCCUPANCY_RATIO",
    "DCGM_FI_PROF_TENSOR_UTIL_RATIO",
    "DCGM_FI_PROF_DRAM_UTIL_RATIO",
    "DCGM_FI_PROF_FP16_UTIL_RATIO",
    "DCGM_FI_PROF_FP32_UTIL_RATIO",
    "DCGM_FI_PROF_FP64_UTIL_RATIO",
    "DCGM_FI_PROF_NVLINK_TX_BYTES",
    "DCGM_FI_PROF_NVLINK_RX_BYTES",
}
# The names the GPU rules use must be exported (the rules file reads them; see test_rules_read_exported_fields).
RULES = ROOT / "roles/prometheus/files/rules/gpu.rules.yml"


def field_names() -> dict[str, str]:
    """Name -> kind (current, legacy, exporter) from the fixture."""
    names = {}
    for line in FIELDS.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, _id, kind = line.split("\t")
        names[name] = kind
    return names


FAKE_FACTS_MODULE = '''#!/usr/bin/python
"""Return the facts it is given (test double for a host's gathered facts)."""
from ansible.module_utils.basic import AnsibleModule


def main():
    module = AnsibleModule(argument_spec={"facts": {"type": "dict", "required": True}}, supports_check_mode=True)
    module.exit_json(changed=False, ansible_facts=module.params["facts"])


if __name__ == "__main__":
    main()
'''


def fake_host(dist, major, family, gpus, loaded=True, **role_vars):
    facts = {
        "distribution": dist,
        "distribution_major_version": major,
        "os_family": family,
        "architecture": "x86_64",
        "nvidia_host": {"gpu_count": gpus, "container": "", "kernel_module": {"loaded": loaded}},
    }
    return {
        "fake": facts,
        "family": family,
        "__dcgm_exporter_nvidiactl": {"stat": {"exists": loaded, "ischr": loaded}},
        **role_vars,
    }


def render_playbook(out: Path) -> list:
    """The role's preflight (with its defaults and vars), then its templates and the values it hands on."""
    templates = ROLE / "templates"
    unit = (
        f"lookup('ansible.builtin.template', '{templates}/dcgm-exporter-package.conf.j2')"
        " if __dcgm_exporter_package | bool else "
        f"lookup('ansible.builtin.template', '{templates}/dcgm-exporter-container.service.j2')"
    )
    rendered = (
        "{{ {'run_here': __dcgm_exporter_run_here | bool, 'expected': __dcgm_exporter_expected | int,"
        f" 'counters': lookup('ansible.builtin.template', '{templates}/counters.csv.j2'),"
        f" 'web_config': lookup('ansible.builtin.template', '{templates}/web-config.yml.j2'),"
        f" 'textfile': lookup('ansible.builtin.template', '{templates}/deepseek_gpu.prom.j2'),"
        f" 'unit': {unit}, 'unit_file': __dcgm_exporter_unit_file, 'service': __dcgm_exporter_service,"
        " 'args': __dcgm_exporter_args, 'hostengine': dcgm_exporter_hostengine,"
        " 'package': __dcgm_exporter_package | bool,"
        " 'specs': __dcgm_exporter_package_specs if __dcgm_exporter_package | bool else none,"
        " 'hold': __dcgm_exporter_package_names if __dcgm_exporter_package | bool else none,"
        " 'repo': __dcgm_exporter_repo if __dcgm_exporter_package | bool else none,"
        " 'argv': none if __dcgm_exporter_package | bool else __dcgm_exporter_container_argv,"
        " 'textfile_path': __dcgm_exporter_textfile} }}"
    )
    return [
        {
            "name": "Render the GPU path of deepseek.cluster.dcgm_exporter",
            "hosts": "all",
            "gather_facts": False,
            "tasks": [
                {"name": "Fake the gathered facts", "fake_facts": {"facts": "{{ fake }}"}},
                {
                    "name": "The OS family's values, as main.yml loads them",
                    "ansible.builtin.include_vars": str(ROLE / "vars") + "/{{ family }}.yml",
                },
                {
                    "name": "Preflight, as the role does",
                    "ansible.builtin.include_role": {
                        "name": "deepseek.cluster.dcgm_exporter",
                        "tasks_from": "preflight",
                        "public": True,
                    },
                },
                {"name": "Render", "ansible.builtin.set_fact": {"rendered": rendered}},
            ],
        }
    ]


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """Stand-ins for the pki role's files (preflight checks that they exist)."""
    d = tmp_path_factory.mktemp("pki")
    for name in ("gpu1-metrics.crt", "gpu1-metrics.key", "ca.crt"):
        (d / name).write_text("-----BEGIN X-----\n-----END X-----\n")
    return d


@pytest.fixture(scope="module")
def rendered(tmp_path_factory, pki):
    work = tmp_path_factory.mktemp("dcgm")
    out = work / "out"
    out.mkdir()
    (work / "library").mkdir()
    (work / "library" / "fake_facts.py").write_text(FAKE_FACTS_MODULE)
    tls = {
        "dcgm_exporter_tls_cert_file": str(pki / "gpu1-metrics.crt"),
        "dcgm_exporter_tls_key_file": str(pki / "gpu1-metrics.key"),
        "dcgm_exporter_tls_client_ca_file": str(pki / "ca.crt"),
        "dcgm_exporter_tls_min_version": "TLS13",
        "dcgm_exporter_basic_auth_users": {"prometheus": HASH},
    }
    hosts = {
        # Production defaults on Debian 12: packages from the CUDA repository, mutual TLS, basic auth.
        "debian12-package": fake_host("Debian", "12", "Debian", 8, **tls),
        # EL 9 from a mirror, plain HTTP, an inventory count below what the bus shows.
        "rocky9-package-mirror": fake_host(
            "Rocky",
            "9",
            "RedHat",
            8,
            dcgm_exporter_source="local_mirror",
            dcgm_exporter_local_mirror_url=DNF_MIRROR,
            dcgm_exporter_local_mirror_signed_by=f"{DNF_MIRROR}/repomd.xml.key",
            dcgm_exporter_expected_gpus=4,
        ),
        "ubuntu2404-docker": fake_host("Ubuntu", "24", "Debian", 8, dcgm_exporter_install_method="container", **tls),
        # podman from a site registry, by digest, no profiling, one more counter and one more flag.
        "debian12-podman": fake_host(
            "Debian",
            "12",
            "Debian",
            2,
            dcgm_exporter_install_method="container",
            dcgm_exporter_container_engine="podman",
            dcgm_exporter_registry_mirror="registry.site.example:5000/nvcr",
            dcgm_exporter_image_digest="sha256:" + "a" * 64,
            dcgm_exporter_profiling=False,
            dcgm_exporter_listen_address="10.0.0.5:9400",
            dcgm_exporter_extra_counters=[
                {"field": "DCGM_FI_DEV_GPU_PSTATE", "type": "gauge", "help": "Performance state (P-State) 0-15."}
            ],
            dcgm_exporter_extra_args=["--log-format=json"],
            dcgm_exporter_textfile_dir="/srv/textfile",
        ),
        "debian12-cpu": fake_host("Debian", "12", "Debian", 0, loaded=False),
        "debian12-no-driver": fake_host("Debian", "12", "Debian", 8, loaded=False),
    }
    return run_local_play(work, hosts, render_playbook(out), out)


def rows(counters: str) -> list[list[str]]:
    """The counters file as dcgm-exporter reads it (encoding/csv with Comment '#', fields trimmed).

    Go's encoding/csv takes a line as a comment only when '#' is its first character, and skips empty lines
    only: an indented comment or a line of blanks is a record there (and fails the three-column check).
    """
    lines = [line for line in counters.splitlines() if line and not line.startswith("#")]
    return [[cell.strip() for cell in row] for row in csv.reader(io.StringIO("\n".join(lines)))]


# ---- the counters file ----------------------------------------------------------------------------------

GPU_HOSTS = ["debian12-package", "rocky9-package-mirror", "ubuntu2404-docker", "debian12-podman"]


@pytest.mark.parametrize("host", GPU_HOSTS)
def test_counters_rows_have_three_columns_and_a_known_type(rendered, host):
    for row in rows(rendered[host]["counters"]):
        assert len(row) == 3, row
        assert row[1] in {"gauge", "counter", "label"}, row
        assert row[2], row


@pytest.mark.parametrize("host", GPU_HOSTS)
def test_every_counter_is_a_field_the_pinned_exporter_accepts(rendered, host):
    known = field_names()
    fields = [row[0] for row in rows(rendered[host]["counters"])]
    unknown = [f for f in fields if f not in known]
    assert not unknown, f"not a field name of dcgm-exporter 4.8.3 / go-dcgm v1.4601.1: {unknown}"
    # Current DCGM names (what dcgm-exporter 4.9 renamed its defaults to), except the documented ones.
    legacy = {f for f in fields if known[f] == "legacy"}
    assert legacy <= LEGACY_KEPT, f"deprecated names: {legacy - LEGACY_KEPT}"
    assert len(fields) == len(set(fields)), "a field appears twice"


def test_counters_cover_what_the_rules_and_dashboards_read(rendered):
    fields = {row[0] for row in rows(rendered["debian12-package"]["counters"])}
    assert fields >= REQUIRED, REQUIRED - fields
    assert fields >= PROFILING, PROFILING - fields


def test_profiling_off_drops_every_profiling_field_and_extra_counters_are_appended(rendered):
    got = rows(rendered["debian12-podman"]["counters"])
    fields = [row[0] for row in got]
    assert not [f for f in fields if f.startswith("DCGM_FI_PROF_")]
    assert set(fields) >= REQUIRED
    assert got[-1] == ["DCGM_FI_DEV_GPU_PSTATE", "gauge", "Performance state (P-State) 0-15."]


def test_rules_read_exported_fields(rendered):
    """Every DCGM metric name in the GPU rules is exported by the default counters file."""
    fields = {row[0] for row in rows(rendered["debian12-package"]["counters"])}
    exprs = [rule["expr"] for group in load_yaml(RULES)["groups"] for rule in group["rules"]]
    used = {name for expr in exprs for name in re.findall(r"\bDCGM_(?:FI|EXP)_[A-Z0-9_]+", expr)}
    assert used, "the rules use no DCGM metric"
    assert used <= fields, f"rules read fields the exporter does not export: {used - fields}"


# ---- web config, textfile -------------------------------------------------------------------------------


def test_web_config_is_exporter_toolkits_with_the_role_copies(rendered):
    got = yaml.safe_load(rendered["debian12-package"]["web_config"])
    assert got == {
        "tls_server_config": {
            "cert_file": "/etc/deepseek/dcgm-exporter/tls-server.crt",
            "key_file": "/etc/deepseek/dcgm-exporter/tls-server.key",
            "client_ca_file": "/etc/deepseek/dcgm-exporter/tls-client-ca.crt",
            "client_auth_type": "RequireAndVerifyClientCert",
            "min_version": "TLS13",
        },
        "basic_auth_users": {"prometheus": HASH},
    }


def test_a_changed_web_config_restarts_the_exporter():
    # exporter-toolkit decides between TLS and plain HTTP once, when the exporter starts (web/tls_config.go,
    # Serve: errNoTLSConfig -> server.Serve): without a restart, turning TLS on leaves it serving plain HTTP.
    tasks = load_yaml(ROLE / "tasks/configure.yml")
    task = next(t for t in tasks if t.get("ansible.builtin.template", {}).get("src") == "web-config.yml.j2")
    notify = task.get("notify", [])
    assert "Restart dcgm_exporter" in ([notify] if isinstance(notify, str) else notify)
    handlers = [h["name"] for h in load_yaml(ROLE / "handlers/main.yml")]
    assert "Restart dcgm_exporter" in handlers


def test_web_config_without_tls_is_empty(rendered):
    assert yaml.safe_load(rendered["rocky9-package-mirror"]["web_config"]) in (None, {})


def test_textfile_metric_parses_and_carries_the_expected_count(rendered):
    from prometheus_client.parser import text_string_to_metric_families

    for host, count in (("debian12-package", 8), ("rocky9-package-mirror", 4), ("debian12-podman", 2)):
        families = list(text_string_to_metric_families(rendered[host]["textfile"]))
        assert [(f.name, f.type) for f in families] == [("deepseek_gpus_expected", "gauge")]
        assert [(s.name, s.labels, s.value) for s in families[0].samples] == [
            ("deepseek_gpus_expected", {}, float(count))
        ]
    assert rendered["debian12-package"]["textfile_path"] == (
        "/var/lib/node_exporter/textfile_collector/deepseek_gpu.prom"
    )
    assert rendered["debian12-podman"]["textfile_path"] == "/srv/textfile/deepseek_gpu.prom"


def test_textfile_passes_promtool_check_metrics(rendered, promtool):
    result = subprocess.run(
        [str(promtool), "check", "metrics"],
        input=rendered["debian12-package"]["textfile"],
        capture_output=True,
        text=True,
        check=False,
    )
    # No parse error (exit 1) and no lint finding (exit 3).
    assert result.returncode == 0, result.stdout + result.stderr


# ---- package method -------------------------------------------------------------------------------------


def test_package_method_pins_nvidias_packages_for_the_shared_flow(rendered):
    deb = rendered["debian12-package"]
    assert deb["specs"] == [
        "datacenter-gpu-manager-4-core=*4.6.0-*",
        "datacenter-gpu-manager-4-proprietary=*4.6.0-*",
        "datacenter-gpu-manager-exporter=*4.8.3-*",
    ]
    assert deb["hold"] == [
        "datacenter-gpu-manager-4-core",
        "datacenter-gpu-manager-4-proprietary",
        "datacenter-gpu-manager-exporter",
    ]
    assert deb["repo"]["kind"] == "apt"
    assert deb["repo"]["uris"] == [f"{CUDA}/debian12/x86_64/"]
    el = rendered["rocky9-package-mirror"]
    assert el["specs"] == [
        "datacenter-gpu-manager-4-core-4.6.0",
        "datacenter-gpu-manager-4-proprietary-4.6.0",
        "datacenter-gpu-manager-exporter-4.8.3",
    ]
    assert el["repo"]["kind"] == "dnf"
    assert el["repo"]["baseurl"] == DNF_MIRROR


def test_package_method_runs_nvidias_unit_against_the_standalone_host_engine(rendered):
    got = rendered["debian12-package"]
    assert got["hostengine"] == "standalone"
    assert got["service"] == "nvidia-dcgm-exporter"
    assert got["unit_file"] == "/etc/systemd/system/nvidia-dcgm-exporter.service.d/deepseek.conf"
    assert got["args"] == [
        "--collectors=/etc/deepseek/dcgm-exporter/counters.csv",
        "--address=:9400",
        "--collect-interval=15000",
        "--kubernetes=false",
        "--web-config-file=/etc/deepseek/dcgm-exporter/web-config.yml",
        "--remote-hostengine-info=localhost:5555",
    ]
    unit = got["unit"]
    assert "\nExecStart=\nExecStart=/usr/bin/dcgm-exporter \\\n" in unit
    for line in ("NoNewPrivileges=yes", "CapabilityBoundingSet=", "ProtectSystem=strict", "StandardOutput=journal"):
        assert f"\n{line}\n" in unit


# ---- container method -----------------------------------------------------------------------------------


def test_docker_gets_every_gpu_and_the_profiling_capability(rendered):
    got = rendered["ubuntu2404-docker"]
    assert got["hostengine"] == "embedded"
    assert got["service"] == "dcgm-exporter"
    assert got["unit_file"] == "/etc/systemd/system/dcgm-exporter.service"
    argv = got["argv"]
    image = "nvcr.io/nvidia/k8s/dcgm-exporter:4.6.0-4.8.3-distroless"
    assert argv[:4] == ["/usr/bin/docker", "run", "--rm", "--name"]
    at = argv.index(image)
    options = argv[:at]
    assert options[options.index("--gpus") : options.index("--gpus") + 2] == ["--gpus", "all"]
    assert options[options.index("--cap-add") : options.index("--cap-add") + 2] == ["--cap-add", "SYS_ADMIN"]
    assert options[options.index("--network") : options.index("--network") + 2] == ["--network", "host"]
    assert "/etc/deepseek/dcgm-exporter:/etc/deepseek/dcgm-exporter:ro" in options
    assert "--remote-hostengine-info=localhost:5555" not in argv
    assert argv[at + 1 :] == got["args"]


def test_podman_gets_the_cdi_device_from_the_site_registry_by_digest(rendered):
    got = rendered["debian12-podman"]
    argv = got["argv"]
    image = "registry.site.example:5000/nvcr/nvidia/k8s/dcgm-exporter@sha256:" + "a" * 64
    assert argv[0] == "/usr/bin/podman"
    at = argv.index(image)
    options = argv[:at]
    assert options[options.index("--device") : options.index("--device") + 2] == ["--device", "nvidia.com/gpu=all"]
    assert "--gpus" not in options
    assert "--cap-add" not in options  # no profiling, no capability
    assert argv[at + 1 :][-1] == "--log-format=json"
    assert "--address=10.0.0.5:9400" in argv


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="no systemd-analyze")
@pytest.mark.parametrize("host", ["ubuntu2404-docker", "debian12-podman"])
def test_container_unit_loads_in_systemd(rendered, host, tmp_path):
    unit = tmp_path / "dcgm-exporter.service"
    unit.write_text(rendered[host]["unit"])
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", "--generators=no", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    # Only complaints about this unit's own syntax count (the engine binary is absent here).
    lines = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if "dcgm-exporter.service" in line and "executable" not in line.lower() and "docker.service" not in line
    ]
    assert not lines, "\n".join(lines)


# NVIDIA's unit as datacenter-gpu-manager-exporter installs it (NVIDIA/dcgm-exporter 4.6.0-4.8.3,
# packaging/config-files/systemd/nvidia-dcgm-exporter.service, less its license header).
UPSTREAM_UNIT = """[Unit]
Description=NVIDIA DCGM-exporter service
Wants=nvidia-dcgm.service
After=nvidia-dcgm.service
StartLimitIntervalSec=0

[Service]
User=root
PrivateTmp=false

ExecStart=/usr/bin/dcgm-exporter -f /etc/dcgm-exporter/default-counters.csv

Restart=on-failure
RestartSec=10s

[Install]
WantedBy=multi-user.target
"""


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="no systemd-analyze")
def test_package_drop_in_loads_on_nvidias_unit(rendered, tmp_path):
    unit = tmp_path / "nvidia-dcgm-exporter.service"
    unit.write_text(UPSTREAM_UNIT)
    (tmp_path / "nvidia-dcgm-exporter.service.d").mkdir()
    (tmp_path / "nvidia-dcgm-exporter.service.d" / "deepseek.conf").write_text(rendered["debian12-package"]["unit"])
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", "--generators=no", str(unit)],
        capture_output=True,
        text=True,
        check=False,
        env=dict(os.environ, SYSTEMD_UNIT_PATH=f"{tmp_path}:"),
    )
    output = (result.stdout + result.stderr).splitlines()
    # The drop-in is read (a line it breaks would name it) and adds no complaint; the binary is absent here.
    assert not [line for line in output if "deepseek.conf" in line], "\n".join(output)
    assert not [line for line in output if "nvidia-dcgm-exporter" in line and "executable" not in line.lower()], (
        "\n".join(output)
    )


# ---- hosts the role skips -------------------------------------------------------------------------------


def test_hosts_without_a_gpu_or_its_driver_are_skipped(rendered):
    assert rendered["debian12-cpu"]["run_here"] is False
    assert rendered["debian12-no-driver"]["run_here"] is False
    for host in GPU_HOSTS:
        assert rendered[host]["run_here"] is True


def test_role_defaults_pin_the_release_pair_the_fixture_comes_from():
    defaults = load_yaml(ROLE / "defaults/main.yml")
    assert (defaults["dcgm_exporter_dcgm_version"], defaults["dcgm_exporter_version"]) == ("4.6.0", "4.8.3")
    assert "4.6.0-4.8.3" in FIELDS.name
