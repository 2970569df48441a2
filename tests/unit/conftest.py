"""Shared fixtures for the repository-level unit tests."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
# Sourced NVIDIA facts and real captures (SOURCES.md says where each comes from).
NVIDIA_FACTS = FIXTURES / "nvidia-facts"


def load_yaml(path: Path):
    """Parse one YAML file."""
    return yaml.safe_load(path.read_text())


def bundled_version(fqcn: str) -> str | None:
    """Version of a collection bundled in the installed ansible package, or None."""
    import ansible_collections

    namespace, name = fqcn.split(".")
    for base in ansible_collections.__path__:
        manifest = Path(base) / namespace / name / "MANIFEST.json"
        if manifest.is_file():
            return json.loads(manifest.read_text())["collection_info"]["version"]
    return None


def role_dirs() -> list[Path]:
    """Every role of the collection."""
    return sorted(p for p in (ROOT / "roles").iterdir() if (p / "tasks").is_dir())


@pytest.fixture
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def promtool() -> Path:
    """Debian's promtool in .cache/tools, fetched by tests/prometheus/fetch-tools.sh when missing."""
    tool = ROOT / ".cache" / "tools" / "promtool"
    fetch = ROOT / "tests" / "prometheus" / "fetch-tools.sh"
    if not tool.is_file():
        run = subprocess.run(["bash", str(fetch)], cwd=ROOT, capture_output=True, text=True, check=False)
        if run.returncode != 0 or not tool.is_file():
            pytest.fail(
                f"promtool is not in {tool.parent} and {fetch.relative_to(ROOT)} could not fetch it "
                f"(it needs apt-get and Debian's prometheus package; exit {run.returncode}):\n{run.stdout}{run.stderr}"
            )
    return tool


def run_local_play(work: Path, hosts: dict, play: list, out: Path) -> dict:
    """Run ``play`` on ``hosts`` (inventory host -> variables) with a local connection, from this checkout.

    Each host sets the fact ``rendered``; a last task writes every host's to ``out``/rendered.json, which is
    returned. ``work``/library may hold stand-in modules.
    """
    play[-1]["tasks"].append(
        {
            "name": "Write what every host got",
            "ansible.builtin.copy": {
                "dest": f"{out}/rendered.json",
                "mode": "0644",
                "content": "{{ dict(ansible_play_hosts | zip(ansible_play_hosts"
                " | map('extract', hostvars, 'rendered'))) | to_json }}",
            },
            "run_once": True,
        }
    )
    common = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    for values in hosts.values():
        values.update(common)
    (work / "hosts.yml").write_text(yaml.safe_dump({"all": {"hosts": hosts}}))
    (work / "play.yml").write_text(yaml.safe_dump(play, sort_keys=False))
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
