"""nvidia_container_toolkit: repository and packages for every OS, rendered through the role itself.

No test machine reaches NVIDIA's repository or has a GPU, so the GPU path of the role is proven here:
the selection filter over the whole matrix (OS x CPU x version pin, the pins written as the shared
install flow writes them), then the role's own preflight.yml and select.yml run by ansible-playbook on
fake hosts, handed to the shared install flow (role deepseek.cluster.nvidia_packages) with the inputs
the role's main.yml gives it. The flow's repository step decides from the host's apt sources whether
to write its own source or use one the host already has; the apt source it writes (its
templates/apt.sources.j2) and the dnf repository (its yum_repository task, into a scratch directory)
are compared with what NVIDIA's install guide writes:

    deb [signed-by=...keyring] https://nvidia.github.io/libnvidia-container/stable/deb/$(ARCH) /
    [nvidia-container-toolkit] baseurl=https://nvidia.github.io/libnvidia-container/stable/rpm/$basearch
      repo_gpgcheck=1 gpgcheck=0 enabled=1 gpgkey=https://nvidia.github.io/libnvidia-container/gpgkey

Where apt-get is installed, apt itself reads both the guide's line and the rendered source.
"""

import configparser
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ansible_collections.deepseek.cluster.plugins.module_utils.nvidia_install import (
    INDEXTARGETS_FORMAT,
    parse_indextargets,
    pinned_specs,
)
from ansible_collections.deepseek.cluster.plugins.module_utils.nvidia_packages import (
    SelectionError,
    container_toolkit_selection,
)
from conftest import ROOT, run_local_play

URL = "https://nvidia.github.io/libnvidia-container"
NAMES = [
    "nvidia-container-toolkit",
    "nvidia-container-toolkit-base",
    "libnvidia-container-tools",
    "libnvidia-container1",
]
DEB_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}
# (host name, distribution, major, os_family)
SYSTEMS = [
    ("debian12", "Debian", "12", "Debian"),
    ("ubuntu2204", "Ubuntu", "22", "Debian"),
    ("ubuntu2404", "Ubuntu", "24", "Debian"),
    ("rhel9", "RedHat", "9", "RedHat"),
    ("rocky9", "Rocky", "9", "RedHat"),
]
MATRIX = [(s, arch, version) for s in SYSTEMS for arch in ("x86_64", "aarch64") for version in ("", "1.18.1")]
# The role's own run covers every OS and both CPUs, pinned and not (one ansible-playbook run, one host each).
ROLE_MATRIX = [
    (s, arch, version)
    for i, s in enumerate(SYSTEMS)
    for arch, version in (
        (("x86_64", ""), ("aarch64", "1.18.1")) if i % 2 == 0 else (("x86_64", "1.18.1"), ("aarch64", ""))
    )
]
APT_ROLE_MATRIX = [m for m in ROLE_MATRIX if m[0][3] == "Debian"]
ROLE_IDS = dict(ids=lambda v: v if isinstance(v, str) else v[0])

ROLE = ROOT / "roles/nvidia_container_toolkit"
FLOW = ROOT / "roles/nvidia_packages"
# The source NVIDIA's install guide writes (curl .../stable/deb/nvidia-container-toolkit.list | sed
# 's#deb https://#deb [signed-by=/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg] https://#g').
GUIDE_LIST = "/etc/apt/sources.list.d/nvidia-container-toolkit.list"
GUIDE_LINE = (
    "deb [signed-by=/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg]"
    " https://nvidia.github.io/libnvidia-container/stable/deb/$(ARCH) /"
)
# apt-get indextargets of a Debian 12 host with the guide's list (captured with apt 2.6.1; see its header).
GUIDE_INDEXTARGETS = ROOT / "tests/fixtures/nvidia-facts/indextargets-container-toolkit.txt"
OWN_SOURCE = "/etc/apt/sources.list.d/nvidia-container-toolkit.sources"
APT_MIRROR = "http://mirror.example/libnvidia-container/stable/deb/amd64"
APT_MIRROR_NAME = "nvidia-mirror-mirror-example-libnvidia-container-stable-deb-amd64"
DNF_MIRROR = "https://mirror.example/libnvidia-container/stable/rpm/$basearch"
DNF_MIRROR_NAME = "nvidia-mirror-mirror-example-libnvidia-container-stable-rpm-basearch"


def expected_specs(family: str, version: str) -> list[str]:
    """What the shared flow installs: bare names unpinned, else all four at the one version."""
    if not version:
        return NAMES
    return [f"{name}={version}-*" if family == "apt" else f"{name}-{version}" for name in NAMES]


@pytest.mark.parametrize(("system", "arch", "version"), MATRIX, **ROLE_IDS)
def test_selection_is_nvidias_repository_and_four_packages_at_one_version(system, arch, version):
    dist, major, family = system[1:]
    sel = container_toolkit_selection(dist, major, arch, version)
    if family == "RedHat":
        assert sel["family"] == "dnf"
        assert sel["repository"] == {
            "kind": "dnf",
            "name": "nvidia-container-toolkit",
            "baseurl": f"{URL}/stable/rpm/$basearch",
            "gpgkey": f"{URL}/gpgkey",
            "gpgcheck": False,
            "repo_gpgcheck": True,
        }
    else:
        assert sel["family"] == "apt"
        assert sel["repository"] == {
            "kind": "apt",
            "name": "nvidia-container-toolkit",
            "uris": [f"{URL}/stable/deb/{DEB_ARCH[arch]}"],
            "suites": ["/"],
            "components": [],
            "signed_by": f"{URL}/gpgkey",
        }
    # Bare names, all four versioned: the shared flow pins every one of them to the one version.
    assert sel["packages"] == NAMES
    assert sel["versioned"] == NAMES
    assert pinned_specs(sel["packages"], sel["family"], sel["versioned"], version) == expected_specs(
        sel["family"], version
    )


def test_selection_refuses_what_nvidia_does_not_build():
    with pytest.raises(SelectionError, match="Ubuntu 20 is not supported"):
        container_toolkit_selection("Ubuntu", "20", "x86_64", "")
    with pytest.raises(SelectionError, match="architecture ppc64le"):
        container_toolkit_selection("Debian", "12", "ppc64le", "")
    with pytest.raises(SelectionError, match="nvidia_container_toolkit_version is '1.18'"):
        container_toolkit_selection("Ubuntu", "24", "x86_64", "1.18")


# ---- the role itself, on fake hosts ---------------------------------------------------------------

FAKE_FACTS_MODULE = '''#!/usr/bin/python
"""Return the facts it is given (test double for a host's gathered facts)."""
from ansible.module_utils.basic import AnsibleModule


def main():
    module = AnsibleModule(argument_spec={"facts": {"type": "dict", "required": True}}, supports_check_mode=True)
    module.exit_json(changed=False, ansible_facts=module.params["facts"])


if __name__ == "__main__":
    main()
'''


def fake_host(dist, major, family, arch, gpus, indextargets=(), **role_vars):
    facts = {
        "distribution": dist,
        "distribution_major_version": major,
        "os_family": family,
        "architecture": arch,
        "pkg_mgr": "dnf" if family == "RedHat" else "apt",
        "nvidia_host": {"gpu_count": gpus, "container": "", "kernel_module": {"loaded": gpus > 0}},
    }
    return {"fake": facts, "indextargets": list(indextargets), **role_vars}


def condition(when) -> str:
    """A task's `when` (a string or a list of them) as one expression."""
    return " and ".join(f"({c})" for c in ([when] if isinstance(when, str) else when))


def render_playbook(out: Path) -> list:
    """A play that runs the role's preflight.yml and select.yml, then the shared flow's repository step.

    The flow's inputs are the ones the role's main.yml passes to deepseek.cluster.nvidia_packages; the
    repository step's decisions (the repository, write or reuse the host's source) are its own set_fact
    expressions, read from roles/nvidia_packages/tasks/repository.yml, on the host's apt-get indextargets
    lines (the host var `indextargets`). The apt source is its template with its block's variables; the
    dnf repository is its yum_repository task, written under `out`.
    """
    main = yaml.safe_load((ROLE / "tasks/main.yml").read_text())
    call = next(
        t for t in main if t.get("ansible.builtin.include_role", {}).get("name") == "deepseek.cluster.nvidia_packages"
    )
    steps = yaml.safe_load((FLOW / "tasks/repository.yml").read_text())

    def step(fact: str) -> dict:
        return next(t["ansible.builtin.set_fact"] for t in steps if fact in t.get("ansible.builtin.set_fact", {}))

    apt_block = next(t for t in steps if "block" in t and "vars" in t)
    write_source = next(t for t in apt_block["block"] if "ansible.builtin.template" in t)
    assert write_source["ansible.builtin.template"]["src"] == "apt.sources.j2"
    write_repo = next(t for t in steps if "ansible.builtin.yum_repository" in t)
    template = FLOW / "templates" / write_source["ansible.builtin.template"]["src"]
    reposdir = f"{out}/yum.repos.d/{{{{ inventory_hostname }}}}"
    rendered = (
        "{{ {'gpu': true, 'family': _nvidia_packages_family, 'repository': __nvidia_packages_repo,"
        " 'install': _nvidia_packages_install, 'versioned': _nvidia_packages_versioned,"
        " 'version': _nvidia_packages_version, 'specs': __nvidia_packages_specs,"
        " 'hold': _nvidia_packages_hold, 'hold_enabled': _nvidia_packages_hold_enabled | bool,"
        " 'source': __nvidia_packages_source,"
        f" 'apt_source': lookup('ansible.builtin.template', '{template}')"
        f" if ({condition(apt_block['when'])}) and ({condition(write_source['when'])}) else none,"
        f" 'dnf_repo': lookup('ansible.builtin.file', '{out}/yum.repos.d/' ~ inventory_hostname ~ '/'"
        " ~ __nvidia_packages_repo.name ~ '.repo')"
        f" if ({condition(write_repo['when'])}) else none}} }}}}"
    )
    return [
        {
            "name": "Render the GPU path of deepseek.cluster.nvidia_container_toolkit",
            "hosts": "all",
            "gather_facts": False,
            "vars_files": [str(FLOW / "vars/main.yml")],
            "tasks": [
                {"name": "Fake the gathered facts", "fake_facts": {"facts": "{{ fake }}"}},
                {
                    "name": "Preflight, as the role does",
                    "ansible.builtin.include_role": {
                        "name": "deepseek.cluster.nvidia_container_toolkit",
                        "tasks_from": "preflight",
                        "public": True,
                    },
                },
                {
                    "name": "Select, as the role does",
                    "ansible.builtin.include_role": {
                        "name": "deepseek.cluster.nvidia_container_toolkit",
                        "tasks_from": "select",
                        "public": True,
                    },
                },
                {
                    "name": "The shared flow's repository step, with the inputs main.yml gives it",
                    "when": call["when"],
                    "vars": call["vars"],
                    "block": [
                        {
                            "name": "The host's apt sources",
                            "ansible.builtin.set_fact": {
                                "__nvidia_packages_indextargets": {"stdout_lines": "{{ indextargets }}"}
                            },
                        },
                        {"name": "The repository", "ansible.builtin.set_fact": step("__nvidia_packages_repo")},
                        {"name": "Write or reuse", "ansible.builtin.set_fact": step("__nvidia_packages_source")},
                        {
                            "name": "A scratch yum.repos.d",
                            "ansible.builtin.file": {"path": reposdir, "state": "directory", "mode": "0755"},
                            "when": write_repo["when"],
                        },
                        {
                            "name": "Write the dnf repository as the flow does, into the scratch directory",
                            "ansible.builtin.yum_repository": {
                                **write_repo["ansible.builtin.yum_repository"],
                                "reposdir": reposdir,
                            },
                            "when": write_repo["when"],
                        },
                        {
                            "name": "Render what the flow applies",
                            "ansible.builtin.set_fact": {"rendered": rendered},
                            "vars": {
                                **apt_block["vars"],
                                # A fresh host: nothing installed, the requested version (if any) wins.
                                "__nvidia_packages_target": "{{ _nvidia_packages_version | string"
                                " | deepseek.cluster.nvidia_resolve_target(_nvidia_packages_versioned, {}, {}) }}",
                            },
                        },
                    ],
                },
                {
                    "name": "Say a GPU-less host got nothing",
                    "ansible.builtin.set_fact": {"rendered": {"gpu": False}},
                    "when": "not __nvidia_container_toolkit_gpu_present | bool",
                },
            ],
        }
    ]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    work = tmp_path_factory.mktemp("ctk")
    out = work / "out"
    out.mkdir()
    (work / "library").mkdir()
    (work / "library" / "fake_facts.py").write_text(FAKE_FACTS_MODULE)
    hosts = {}
    for (name, dist, major, family), arch, version in ROLE_MATRIX:
        hosts[f"{name}-{arch}-{version or 'newest'}"] = fake_host(
            dist, major, family, arch, 8, nvidia_container_toolkit_version=version
        )
    # A host set up by NVIDIA's install guide: its list (with its own keyring) is used, none written.
    guide = [line for line in GUIDE_INDEXTARGETS.read_text().splitlines() if not line.startswith("#")]
    hosts["debian12-guide"] = fake_host("Debian", "12", "Debian", "x86_64", 8, indextargets=guide)
    hosts["debian12-mirror"] = fake_host(
        "Debian",
        "12",
        "Debian",
        "x86_64",
        8,
        nvidia_container_toolkit_source="local_mirror",
        nvidia_container_toolkit_local_mirror_url=APT_MIRROR,
        nvidia_container_toolkit_local_mirror_signed_by="/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg",
    )
    hosts["rocky9-mirror"] = fake_host(
        "Rocky",
        "9",
        "RedHat",
        "x86_64",
        8,
        nvidia_container_toolkit_source="local_mirror",
        nvidia_container_toolkit_local_mirror_url=DNF_MIRROR,
        nvidia_container_toolkit_local_mirror_signed_by="https://mirror.example/libnvidia-container/gpgkey",
    )
    # No GPU and an OS the toolkit does not support: validated, then skipped, never refused.
    hosts["ubuntu2004-cpu"] = fake_host(
        "Ubuntu", "20", "Debian", "x86_64", 0, nvidia_container_toolkit_runtimes=["podman"]
    )
    return run_local_play(work, hosts, render_playbook(out), out)


def repo_file(text: str) -> dict:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read_string(text)
    return {section: dict(parser[section]) for section in parser.sections()}


@pytest.mark.parametrize(("system", "arch", "version"), ROLE_MATRIX, **ROLE_IDS)
def test_role_selects_nvidias_repository_and_pinned_packages(rendered, system, arch, version):
    name, family = system[0], system[3]
    got = rendered[f"{name}-{arch}-{version or 'newest'}"]
    assert got["gpu"] is True
    # The flow gets the four bare names, all versioned and held, and the role's version.
    assert (got["install"], got["versioned"], got["hold"], got["hold_enabled"]) == (NAMES, NAMES, NAMES, True)
    assert got["version"] == version
    if family == "RedHat":
        assert got["family"] == "dnf"
        assert got["specs"] == expected_specs("dnf", version)
        assert got["source"] == {"write": False, "path": OWN_SOURCE, "reused": ""}
        assert got["apt_source"] is None
        # NVIDIA's nvidia-container-toolkit.repo, less sslverify/sslcacert (dnf's defaults).
        assert repo_file(got["dnf_repo"]) == {
            "nvidia-container-toolkit": {
                "baseurl": f"{URL}/stable/rpm/$basearch",
                "enabled": "1",
                "gpgcheck": "0",
                "gpgkey": f"{URL}/gpgkey",
                "name": "nvidia-container-toolkit",
                "repo_gpgcheck": "1",
            }
        }
    else:
        assert got["family"] == "apt"
        assert got["specs"] == expected_specs("apt", version)
        assert got["dnf_repo"] is None
        # A host without the guide's list: the flow writes its own source, keyed by the downloaded key.
        assert got["source"] == {"write": True, "path": OWN_SOURCE, "reused": ""}
        assert got["repository"]["signed_by"] == f"{URL}/gpgkey"
        assert got["apt_source"].splitlines()[1:] == [
            "# deepseek.cluster: nvidia-container-toolkit",
            "Types: deb",
            f"URIs: {URL}/stable/deb/{DEB_ARCH[arch]}",
            "Suites: /",
            "Signed-By: /etc/apt/keyrings/nvidia-container-toolkit.asc",
        ]


def test_role_uses_the_source_nvidias_install_guide_wrote(rendered):
    got = rendered["debian12-guide"]
    assert got["repository"]["uris"] == [f"{URL}/stable/deb/amd64"]
    # Its own file would carry another Signed-By for the same URI, which stops apt on the whole host.
    assert got["source"] == {"write": False, "path": OWN_SOURCE, "reused": GUIDE_LIST}
    assert got["apt_source"] is None
    assert got["specs"] == NAMES


def test_role_uses_an_apt_mirror_with_the_operators_keyring(rendered):
    got = rendered["debian12-mirror"]
    # Named by its URL (one file per mirror, whichever role writes it).
    assert got["repository"]["name"] == APT_MIRROR_NAME
    assert got["specs"] == NAMES
    assert got["source"] == {"write": True, "path": f"/etc/apt/sources.list.d/{APT_MIRROR_NAME}.sources", "reused": ""}
    assert got["apt_source"].splitlines()[1:] == [
        f"# deepseek.cluster: {APT_MIRROR_NAME}",
        "Types: deb",
        f"URIs: {APT_MIRROR}",
        "Suites: /",
        "Signed-By: /usr/share/keyrings/nvidia-container-toolkit-keyring.gpg",
    ]


def test_role_uses_a_dnf_mirror_with_its_key(rendered):
    got = rendered["rocky9-mirror"]
    assert got["repository"] == {
        "kind": "dnf",
        "name": DNF_MIRROR_NAME,
        "baseurl": DNF_MIRROR,
        "gpgkey": "https://mirror.example/libnvidia-container/gpgkey",
        "gpgcheck": True,
        "repo_gpgcheck": False,
    }
    section = repo_file(got["dnf_repo"])[DNF_MIRROR_NAME]
    assert (section["baseurl"], section["gpgcheck"], section["repo_gpgcheck"]) == (DNF_MIRROR, "1", "0")


def test_role_skips_a_gpu_less_host_even_on_an_os_it_does_not_support(rendered):
    assert rendered["ubuntu2004-cpu"] == {"gpu": False}


# ---- apt itself reads the rendered source and the guide's line -------------------------------------

APT_GET = shutil.which("apt-get")


def apt_indextargets(parts: Path, arch: str) -> subprocess.CompletedProcess:
    """apt-get indextargets over the sources in ``parts`` only, for CPU ``arch`` (what $(ARCH) expands to)."""
    options = {
        "Dir::Etc::SourceList": "/dev/null",
        "Dir::Etc::SourceParts": str(parts),
        "Dir::State::Lists": str(parts / "lists"),
        "APT::Architecture": arch,
    }
    argv = [APT_GET] + [a for k, v in options.items() for a in ("-o", f"{k}={v}")]
    argv += ["indextargets", "--no-release-info", "--format", INDEXTARGETS_FORMAT]
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def repositories(result: subprocess.CompletedProcess) -> set:
    assert result.returncode == 0, result.stderr
    return {(r["uri"], r["suite"], r["component"]) for r in parse_indextargets(result.stdout.splitlines())}


@pytest.mark.skipif(APT_GET is None, reason="needs apt-get")
@pytest.mark.parametrize(("system", "arch", "version"), APT_ROLE_MATRIX, **ROLE_IDS)
def test_apt_reads_the_rendered_source_as_the_guides_repository(rendered, tmp_path, system, arch, version):
    got = rendered[f"{system[0]}-{arch}-{version or 'newest'}"]
    ours, guide, both = (tmp_path / d for d in ("ours", "guide", "both"))
    for parts in (ours, guide, both):
        parts.mkdir()
    for parts in (ours, both):
        (parts / Path(got["source"]["path"]).name).write_text(got["apt_source"])
    for parts in (guide, both):
        (parts / Path(GUIDE_LIST).name).write_text(GUIDE_LINE + "\n")
    expected = {(f"{URL}/stable/deb/{DEB_ARCH[arch]}/", "", "")}
    assert repositories(apt_indextargets(ours, DEB_ARCH[arch])) == expected
    assert repositories(apt_indextargets(guide, DEB_ARCH[arch])) == expected
    # Both on one host: apt refuses every source. Why the flow uses the guide's list where it exists.
    conflict = apt_indextargets(both, DEB_ARCH[arch])
    assert conflict.returncode != 0
    assert "Conflicting values set for option Signed-By" in conflict.stderr


# ---- engine options and device nodes, with the stand-in nvidia-ctk --------------------------------
#
# tests/standin/files/ctk-nvidia-ctk follows nvidia-ctk v1.18.1's contract for what the role calls (its
# docstring cites the upstream sources); the molecule scenario `standin` installs it from a stand-in
# apt repository. Here it runs directly (its own behaviour) and under the role's configure tasks
# (what the role asks of it, and what the role itself does to daemon.json around it).

STANDIN = ROOT / "tests/standin/files/ctk-nvidia-ctk"
GPU_UUID = "GPU-9b5c7d0e-1f2a-4b3c-8d4e-5f6a7b8c9d0e"
CONTROL_NODES = {"nvidiactl": 255, "nvidia-modeset": 254, "nvidia-uvm": 0, "nvidia-uvm-tools": 1}


def fake_system(tmp: Path) -> Path:
    """A driver as procfs/sysfs show it: nvidia loaded (580.95.05), one H100, nvidia-uvm not loaded yet."""
    system = tmp / "system"
    (system / "sys/module/nvidia").mkdir(parents=True)
    (system / "sys/module/nvidia/version").write_text("580.95.05\n")
    gpu = system / "proc/driver/nvidia/gpus/0000:18:00.0"
    gpu.mkdir(parents=True)
    (gpu / "information").write_text(
        f"Model: \t\t NVIDIA H100 80GB HBM3\nGPU UUID: \t {GPU_UUID}\n"
        "Bus Location: \t 0000:18:00.0\nDevice Minor: \t 0\n"
    )
    (system / "proc/devices").write_text(
        "Character devices:\n  1 mem\n195 nvidia\n234 nvidia-caps\n\nBlock devices:\n  8 sd\n"
    )
    return system


def standin(tmp: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(
        os.environ,
        NVIDIA_CTK_STANDIN_SYSTEM_ROOT=str(tmp / "system"),
        NVIDIA_CTK_STANDIN_LOG=str(tmp / "ctk.log"),
    )
    result = subprocess.run([sys.executable, str(STANDIN), *args], capture_output=True, text=True, env=env, check=False)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def go_json(value) -> str:
    """json.MarshalIndent(value, "", "    ") of Go, for ASCII content without <, > or &."""
    return json.dumps(value, indent=4, sort_keys=True)


def test_standin_runtime_configure_merges_as_nvidia_ctk_does(tmp_path):
    fake_system(tmp_path)
    daemon = tmp_path / "etc/docker/daemon.json"
    daemon.parent.mkdir(parents=True)
    daemon.write_text('{\n  "log-driver": "json-file",\n  "features": {"containerd-snapshotter": true}\n}\n')
    standin(tmp_path, "runtime", "configure", "--runtime=docker", f"--config={daemon}")
    first = {
        "features": {"containerd-snapshotter": True},
        "log-driver": "json-file",
        "runtimes": {"nvidia": {"args": [], "path": "nvidia-container-runtime"}},
    }
    assert daemon.read_text() == go_json(first)  # keys sorted, four spaces, no final newline
    standin(tmp_path, "runtime", "configure", "--runtime=docker", f"--config={daemon}", "--set-as-default")
    assert json.loads(daemon.read_text()) == {**first, "default-runtime": "nvidia"}
    # Without the flag nothing takes the default back (docker.go AddRuntime only ever sets it).
    standin(tmp_path, "runtime", "configure", "--runtime=docker", f"--config={daemon}")
    assert json.loads(daemon.read_text())["default-runtime"] == "nvidia"
    # --cdi.enabled replaces the whole "features" object (docker.go EnableCDI): the snapshotter is lost.
    standin(tmp_path, "runtime", "configure", "--runtime=docker", f"--config={daemon}", "--cdi.enabled")
    assert json.loads(daemon.read_text())["features"] == {"cdi": True}


def test_standin_escapes_and_numbers_as_go_does(tmp_path):
    fake_system(tmp_path)
    daemon = tmp_path / "daemon.json"
    daemon.write_text('{"labels": ["a<b&c>"], "mtu": 1500, "big": 1.5e30}')
    standin(tmp_path, "runtime", "configure", f"--config={daemon}")
    text = daemon.read_text()
    assert '"a\\u003cb\\u0026c\\u003e"' in text
    assert '"mtu": 1500,' in text
    assert '"big": 1.5e+30,' in text


def test_standin_refuses_what_nvidia_ctk_refuses(tmp_path):
    fake_system(tmp_path)
    assert standin(tmp_path, "runtime", "configure", "--bogus", check=False).returncode == 1
    assert standin(tmp_path, "runtime", "configure", "--runtime=podman", check=False).returncode == 1
    (tmp_path / "system/sys/module/nvidia/version").unlink()
    (tmp_path / "system/sys/module/nvidia").rmdir()
    result = standin(tmp_path, "cdi", "generate", check=False)
    assert result.returncode == 1
    assert "Driver Not Loaded" in result.stderr
    result = standin(tmp_path, "system", "create-device-nodes", "--load-kernel-modules", check=False)
    assert result.returncode == 1
    assert "failed to load module nvidia" in result.stderr


def test_standin_spec_has_the_control_nodes_only_once_they_exist(tmp_path):
    fake_system(tmp_path)
    dev = tmp_path / "dev"
    dev.mkdir()
    (dev / "nvidia0").write_text("")  # the GPU's own node, made by the driver
    before = standin(tmp_path, "cdi", "generate", f"--dev-root={tmp_path}").stdout
    assert "/dev/nvidiactl" not in before
    assert "/dev/nvidia-uvm" not in before
    # nvidia-uvm is not loaded: its major is unknown until --load-kernel-modules loads it.
    result = standin(
        tmp_path, "system", "create-device-nodes", "--control-devices", f"--dev-root={tmp_path}", check=False
    )
    assert result.returncode == 1
    assert "nvidia-uvm: failed to determine major" in result.stderr
    standin(
        tmp_path,
        "system",
        "create-device-nodes",
        "--control-devices",
        "--load-kernel-modules",
        f"--dev-root={tmp_path}",
    )
    assert "nvidia-uvm" in (tmp_path / "system/proc/devices").read_text().split("Block devices")[0]
    uvm_major = next(
        int(line.split()[0])
        for line in (tmp_path / "system/proc/devices").read_text().splitlines()
        if line.endswith(" nvidia-uvm")
    )
    for node, minor in CONTROL_NODES.items():
        mode = (dev / node).lstat()
        assert oct(mode.st_mode & 0o777) == "0o666"
        if os.geteuid() == 0:  # mknod needs CAP_MKNOD; without it the stand-in writes a regular file
            assert stat.S_ISCHR(mode.st_mode)
            assert os.major(mode.st_rdev) == (uvm_major if "uvm" in node else 195)
            assert os.minor(mode.st_rdev) == minor
    again = standin(
        tmp_path,
        "system",
        "create-device-nodes",
        "--control-devices",
        "--load-kernel-modules",
        f"--dev-root={tmp_path}",
    )
    assert again.stderr.count("already exists") == 4
    spec = standin(tmp_path, "cdi", "generate", f"--dev-root={tmp_path}").stdout
    assert spec.startswith("---\ncdiVersion: 0.5.0\nkind: nvidia.com/gpu\n")
    parsed = yaml.safe_load(spec)
    assert [d["name"] for d in parsed["devices"]] == ["0", GPU_UUID, "all"]
    assert [n["path"] for n in parsed["containerEdits"]["deviceNodes"]] == [
        "/dev/nvidia-modeset",
        "/dev/nvidia-uvm",
        "/dev/nvidia-uvm-tools",
        "/dev/nvidiactl",
    ]
    (tmp_path / "cdi").mkdir()
    (tmp_path / "cdi/nvidia.yaml").write_text(spec)
    listed = standin(tmp_path, "cdi", "list", f"--spec-dir={tmp_path / 'cdi'}").stdout.split()
    assert listed == ["nvidia.com/gpu=0", f"nvidia.com/gpu={GPU_UUID}", "nvidia.com/gpu=all"]


CONFIGURE_PLAY = """
- name: Apply the role's configure tasks, phase {phase}
  hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: Count the nvidia-ctk calls so far
      ansible.builtin.set_fact:
        calls_before: "{{{{ lookup('ansible.builtin.file', '{work}/argv.log').splitlines() | length }}}}"
    - name: Configure the engines as the role does
      ansible.builtin.include_role:
        name: deepseek.cluster.nvidia_container_toolkit
        tasks_from: configure
      vars:
        __nvidia_container_toolkit_ctk: {work}/nvidia-ctk
        __nvidia_container_toolkit_binary_dirs: [{work}/bin]
        __nvidia_container_toolkit_runtime_info: {info}
        nvidia_container_toolkit_runtimes: {runtimes}
        nvidia_container_toolkit_restart_runtimes: false
        nvidia_container_toolkit_default_runtime: {default_runtime}
        nvidia_container_toolkit_engine_cdi: {engine_cdi}
    - name: Record what the phase did
      ansible.builtin.set_fact:
        phases: >-
          {{{{ phases | default({{}}) | combine({{'{phase}': {{
                'restart': __nvidia_container_toolkit_restart,
                'daemon.json': lookup('ansible.builtin.file', '{work}/daemon.json', rstrip=false),
                'argv': (lookup('ansible.builtin.file', '{work}/argv.log').splitlines())[calls_before | int:]}}}}) }}}}
"""
WRITE_PLAY = """
- name: Write what every phase did
  hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: Write the phases
      ansible.builtin.copy:
        dest: {work}/phases.json
        mode: "0644"
        content: "{{{{ phases | to_json }}}}"
"""
# nvidia-ctk for the role: the stand-in for docker (its file redirected with the real --config flag),
# and for containerd and cri-o (which the stand-in does not implement) only a record of the call.
WRAPPER = """#!/bin/sh
echo "$*" >> {work}/argv.log
case "$*" in
  *--runtime=containerd*|*--runtime=crio*) exit 0 ;;
  "runtime configure "*) shift 2; exec {python} {standin} runtime configure --config={work}/daemon.json "$@" ;;
esac
exec {python} {standin} "$@"
"""


@pytest.fixture(scope="module")
def configure_phases(tmp_path_factory):
    """The role's configure tasks over phases of the two options; what each phase left behind."""
    work = tmp_path_factory.mktemp("ctk-configure")
    (work / "bin").mkdir()
    for binary in ("dockerd", "containerd", "crio"):
        (work / "bin" / binary).write_text("")
    wrapper = work / "nvidia-ctk"
    wrapper.write_text(WRAPPER.format(work=work, python=sys.executable, standin=STANDIN))
    wrapper.chmod(0o755)
    (work / "daemon.json").write_text(
        '{\n  "log-driver": "json-file",\n  "features": {"containerd-snapshotter": true}\n}\n'
    )
    info = yaml.safe_load((ROOT / "roles/nvidia_container_toolkit/vars/main.yml").read_text())[
        "__nvidia_container_toolkit_runtime_info"
    ]
    info["docker"]["config_files"] = [str(work / "daemon.json")]
    info["docker"]["daemon_json"] = str(work / "daemon.json")
    for engine in ("containerd", "crio"):
        info[engine]["config_files"] = [str(work / f"{engine}.toml")]
    everything = ["docker", "containerd", "crio"]
    phases = [
        ("1-defaults", ["docker"], False, False),
        ("2-defaults-again", ["docker"], False, False),
        ("3-on", everything, True, True),
        ("4-on-again", ["docker"], True, True),
        ("5-off", everything, False, False),
    ]
    env = dict(
        os.environ,
        ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
        ANSIBLE_COLLECTIONS_PATH=str(ROOT / "collections"),
        ANSIBLE_NOCOLOR="1",
        NVIDIA_CTK_STANDIN_LOG=str(work / "ctk.log"),
    )
    playbook = str(Path(sys.executable).parent / "ansible-playbook")
    plays = "".join(
        CONFIGURE_PLAY.format(
            phase=phase,
            work=work,
            info=json.dumps(info),
            runtimes=json.dumps(runtimes),
            default_runtime=str(default_runtime).lower(),
            engine_cdi=str(engine_cdi).lower(),
        )
        for phase, runtimes, default_runtime, engine_cdi in phases
    )
    (work / "argv.log").write_text("")
    (work / "play.yml").write_text(plays + WRITE_PLAY.format(work=work))
    cmd = [playbook, "-i", "localhost,", "-e", f"ansible_python_interpreter={sys.executable}", str(work / "play.yml")]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    return json.loads((work / "phases.json").read_text())


def test_role_registers_the_runtime_and_keeps_the_operators_settings(configure_phases):
    got = configure_phases["1-defaults"]
    assert got["restart"] == ["docker"]
    assert got["argv"] == ["runtime configure --runtime=docker"]
    assert got["daemon.json"] == go_json(
        {
            "features": {"containerd-snapshotter": True},
            "log-driver": "json-file",
            "runtimes": {"nvidia": {"args": [], "path": "nvidia-container-runtime"}},
        }
    )
    again = configure_phases["2-defaults-again"]
    assert again["restart"] == []
    assert again["daemon.json"] == got["daemon.json"]


def test_role_sets_default_runtime_and_cdi_without_losing_other_features(configure_phases):
    got = configure_phases["3-on"]
    # containerd and cri-o files were not touched (the wrapper only records their calls): no restart.
    assert got["restart"] == ["docker"]
    # docker: --set-as-default from nvidia-ctk, features.cdi from the role (--cdi.enabled would replace the
    # whole "features" object); containerd: both flags; cri-o: nvidia-ctk ignores --cdi.enabled, not passed.
    assert got["argv"] == [
        "runtime configure --runtime=docker --set-as-default",
        "runtime configure --runtime=containerd --set-as-default --cdi.enabled",
        "runtime configure --runtime=crio --set-as-default",
    ]
    assert json.loads(got["daemon.json"]) == {
        "default-runtime": "nvidia",
        "features": {"cdi": True, "containerd-snapshotter": True},
        "log-driver": "json-file",
        "runtimes": {"nvidia": {"args": [], "path": "nvidia-container-runtime"}},
    }
    assert got["daemon.json"] == go_json(json.loads(got["daemon.json"]))  # nvidia-ctk wrote it last
    again = configure_phases["4-on-again"]
    assert again["restart"] == []
    assert again["daemon.json"] == got["daemon.json"]


def test_role_takes_default_runtime_and_cdi_back_when_switched_off(configure_phases):
    got = configure_phases["5-off"]
    assert got["restart"] == ["docker"]
    assert got["argv"] == [
        "runtime configure --runtime=docker",
        "runtime configure --runtime=containerd",
        "runtime configure --runtime=crio",
    ]
    # Byte for byte the file of the first run: the operator's settings back, nothing of the options left.
    assert got["daemon.json"] == configure_phases["1-defaults"]["daemon.json"]
