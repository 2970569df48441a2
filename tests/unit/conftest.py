"""Shared fixtures for the repository-level unit tests."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
# Sourced NVIDIA facts and real captures (SOURCES.md says where each comes from).
NVIDIA_FACTS = FIXTURES / "nvidia-facts"

# deepseek.cluster.* imports resolve from this checkout (collections/ links back to the root).
sys.path.insert(0, str(ROOT / "collections"))


def load_yaml(path: Path):
    """Parse one YAML file."""
    return yaml.safe_load(path.read_text())


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
