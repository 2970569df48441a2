"""nvidia_container_toolkit: repository and packages for every OS, rendered through the role itself.

No test machine reaches NVIDIA's repository or has a GPU, so the GPU path of the role is proven here:
the selection filter over the whole matrix (OS x CPU x version pin), then the role's own assert.yml
and vars/main.yml run by ansible-playbook on fake hosts, and the apt source written by the
nvidia_driver role's shared repository template, compared with what NVIDIA's install guide writes:

    deb [signed-by=...keyring] https://nvidia.github.io/libnvidia-container/stable/deb/$(ARCH) /
    [nvidia-container-toolkit] baseurl=https://nvidia.github.io/libnvidia-container/stable/rpm/$basearch
      repo_gpgcheck=1 gpgcheck=0 gpgkey=https://nvidia.github.io/libnvidia-container/gpgkey
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ansible_collections.deepseek.cluster.plugins.module_utils.nvidia_packages import (
    SelectionError,
    container_toolkit_selection,
)
from conftest import ROOT

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


def expected_packages(family: str, version: str) -> list[str]:
    if not version:
        return NAMES
    sep = "=" if family == "apt" else "-"
    return [f"{name}{sep}{version}-1*" for name in NAMES]


@pytest.mark.parametrize(("system", "arch", "version"), MATRIX, ids=lambda v: v if isinstance(v, str) else v[0])
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
        assert sel["packages"] == expected_packages("dnf", version)
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
        assert sel["packages"] == expected_packages("apt", version)


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


def fake_host(dist, major, family, arch, gpus, **role_vars):
    facts = {
        "distribution": dist,
        "distribution_major_version": major,
        "os_family": family,
        "architecture": arch,
        "pkg_mgr": "dnf" if family == "RedHat" else "apt",
        "nvidia_host": {"gpu_count": gpus, "container": "", "kernel_module": {"loaded": gpus > 0}},
    }
    return {"fake": facts, **role_vars}


def render_playbook(out: Path) -> list:
    """A play that runs the role's assert.yml (public vars) and writes what the GPU path would apply.

    The apt source is rendered by the nvidia_driver role's template with the variables its shared
    repository.yml computes (read from that file), as the role's include of it does.
    """
    repository_tasks = yaml.safe_load((ROOT / "roles/nvidia_driver/tasks/repository.yml").read_text())
    apt_block_vars = next(t for t in repository_tasks if "block" in t and "vars" in t)["vars"]
    template = ROOT / "roles/nvidia_driver/templates/apt.sources.j2"
    rendered = (
        "{{ {'gpu': false} if not __nvidia_container_toolkit_gpu_present | bool else"
        " {'gpu': true, 'repository': __nvidia_container_toolkit_repo,"
        " 'packages': __nvidia_container_toolkit_packages, 'names': __nvidia_container_toolkit_names,"
        " 'family': __nvidia_container_toolkit_sel.family,"
        f" 'apt_source': lookup('ansible.builtin.template', '{template}')"
        " if __nvidia_container_toolkit_repo.kind == 'apt' else none} }}"
    )
    return [
        {
            "name": "Render the GPU path of deepseek.cluster.nvidia_container_toolkit",
            "hosts": "all",
            "gather_facts": False,
            "tasks": [
                {"name": "Fake the gathered facts", "fake_facts": {"facts": "{{ fake }}"}},
                {
                    "name": "Validate and select, as the role does",
                    "ansible.builtin.include_role": {
                        "name": "deepseek.cluster.nvidia_container_toolkit",
                        "tasks_from": "assert",
                        "public": True,
                    },
                },
                {
                    "name": "Render the selection and the apt source",
                    "ansible.builtin.set_fact": {"rendered": rendered},
                    "vars": {"__nvidia_driver_repository": "{{ __nvidia_container_toolkit_repo }}", **apt_block_vars},
                },
                {
                    "name": "Write what every host got",
                    "ansible.builtin.copy": {
                        "dest": f"{out}/rendered.json",
                        "mode": "0644",
                        "content": "{{ dict(ansible_play_hosts | zip(ansible_play_hosts"
                        " | map('extract', hostvars, 'rendered'))) | to_json }}",
                    },
                    "run_once": True,
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
    hosts["debian12-mirror"] = fake_host(
        "Debian",
        "12",
        "Debian",
        "x86_64",
        8,
        nvidia_container_toolkit_source="local_mirror",
        nvidia_container_toolkit_local_mirror_url="http://mirror.example/libnvidia-container/stable/deb/amd64",
        nvidia_container_toolkit_local_mirror_signed_by="/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg",
    )
    hosts["rocky9-mirror"] = fake_host(
        "Rocky",
        "9",
        "RedHat",
        "x86_64",
        8,
        nvidia_container_toolkit_source="local_mirror",
        nvidia_container_toolkit_local_mirror_url="https://mirror.example/libnvidia-container/stable/rpm/$basearch",
        nvidia_container_toolkit_local_mirror_signed_by="https://mirror.example/libnvidia-container/gpgkey",
    )
    # No GPU and an OS the toolkit does not support: validated, then skipped, never refused.
    hosts["ubuntu2004-cpu"] = fake_host(
        "Ubuntu", "20", "Debian", "x86_64", 0, nvidia_container_toolkit_runtimes=["podman"]
    )
    common = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    for values in hosts.values():
        values.update(common)
    (work / "hosts.yml").write_text(yaml.safe_dump({"all": {"hosts": hosts}}))
    (work / "play.yml").write_text(yaml.safe_dump(render_playbook(out), sort_keys=False))
    env = dict(
        os.environ,
        ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
        ANSIBLE_COLLECTIONS_PATH=str(ROOT / "collections"),
        ANSIBLE_LIBRARY=str(work / "library"),
        ANSIBLE_NOCOLOR="1",
    )
    playbook = str(Path(sys.executable).parent / "ansible-playbook")
    cmd = [playbook, "-f", str(len(hosts)), "-i", str(work / "hosts.yml"), str(work / "play.yml")]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    return json.loads((out / "rendered.json").read_text())


@pytest.mark.parametrize(("system", "arch", "version"), ROLE_MATRIX, ids=lambda v: v if isinstance(v, str) else v[0])
def test_role_selects_nvidias_repository_and_pinned_packages(rendered, system, arch, version):
    name, family = system[0], system[3]
    host = f"{name}-{arch}-{version or 'newest'}"
    got = rendered[host]
    assert got["gpu"] is True
    assert got["names"] == NAMES
    if family == "RedHat":
        assert got["family"] == "dnf"
        assert got["repository"]["baseurl"] == f"{URL}/stable/rpm/$basearch"
        assert got["repository"]["gpgkey"] == f"{URL}/gpgkey"
        assert (got["repository"]["gpgcheck"], got["repository"]["repo_gpgcheck"]) == (False, True)
        assert got["packages"] == expected_packages("dnf", version)
        assert got["apt_source"] is None
    else:
        assert got["family"] == "apt"
        assert got["packages"] == expected_packages("apt", version)
        source = got["apt_source"].splitlines()
        assert source[1:] == [
            "# deepseek.cluster: nvidia-container-toolkit",
            "Types: deb",
            f"URIs: {URL}/stable/deb/{DEB_ARCH[arch]}",
            "Suites: /",
            "Signed-By: /etc/apt/keyrings/nvidia-container-toolkit.asc",
        ]


def test_role_uses_an_apt_mirror_with_the_operators_keyring(rendered):
    got = rendered["debian12-mirror"]
    assert got["repository"]["name"] == "nvidia-container-toolkit-mirror"
    assert got["packages"] == NAMES
    source = got["apt_source"].splitlines()
    assert source[1:] == [
        "# deepseek.cluster: nvidia-container-toolkit-mirror",
        "Types: deb",
        "URIs: http://mirror.example/libnvidia-container/stable/deb/amd64",
        "Suites: /",
        "Signed-By: /usr/share/keyrings/nvidia-container-toolkit-keyring.gpg",
    ]


def test_role_uses_a_dnf_mirror_with_its_key(rendered):
    got = rendered["rocky9-mirror"]
    assert got["repository"] == {
        "kind": "dnf",
        "name": "nvidia-container-toolkit-mirror",
        "baseurl": "https://mirror.example/libnvidia-container/stable/rpm/$basearch",
        "gpgkey": "https://mirror.example/libnvidia-container/gpgkey",
        "gpgcheck": True,
        "repo_gpgcheck": False,
    }


def test_role_skips_a_gpu_less_host_even_on_an_os_it_does_not_support(rendered):
    assert rendered["ubuntu2004-cpu"] == {"gpu": False}
