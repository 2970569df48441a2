"""requirements.yml, tests/requirements.yml and galaxy.yml name collections that the pinned ansible bundle satisfies.

Galaxy is not reachable where this project is tested, so instead of installing from it we
prove that the collections bundled with the pinned `ansible` package meet every range.
"""

import re

import pytest
from ansible.galaxy.dependency_resolution.versioning import meets_requirements
from conftest import ROOT, bundled_version, load_yaml

FQCN_KEY = re.compile(r"^\s*(?:- )?(?P<namespace>[a-z_]+)\.(?P<name>[a-z_]+)\.[a-z_0-9]+:(?:\s|$)", re.MULTILINE)
REQUIREMENTS = load_yaml(ROOT / "requirements.yml")["collections"]
TEST_REQUIREMENTS = load_yaml(ROOT / "tests" / "requirements.yml")["collections"]
GALAXY = load_yaml(ROOT / "galaxy.yml")


@pytest.mark.parametrize("entry", REQUIREMENTS + TEST_REQUIREMENTS, ids=lambda e: e["name"])
def test_bundle_satisfies_requirements_yml(entry):
    version = bundled_version(entry["name"])
    assert version is not None, f"{entry['name']} is not in the pinned ansible bundle"
    assert meets_requirements(version, entry["version"]), f"{entry['name']} {version} does not meet {entry['version']}"


def test_galaxy_dependencies_match_requirements_yml():
    from_requirements = {e["name"]: e["version"] for e in REQUIREMENTS}
    assert GALAXY["dependencies"] == from_requirements


def test_every_collection_used_is_required():
    """Any FQCN used in roles or playbooks belongs to ansible.builtin, this collection or requirements.yml."""
    allowed = {"ansible.builtin", "deepseek.cluster"} | {e["name"] for e in REQUIREMENTS}
    used = set()
    for path in [
        *ROOT.glob("roles/*/tasks/**/*.yml"),
        *ROOT.glob("roles/*/handlers/*.yml"),
        *ROOT.glob("playbooks/*.yml"),
    ]:
        for match in FQCN_KEY.finditer(path.read_text()):
            used.add(f"{match['namespace']}.{match['name']}")
    assert used, "no FQCN found: the scan is broken"
    assert used <= allowed, f"collections used but not in requirements.yml: {sorted(used - allowed)}"


def test_test_requirements_are_not_dependencies():
    """A collection only the tests use is no dependency of the shipped content, and none is listed twice."""
    assert not {e["name"] for e in TEST_REQUIREMENTS} & {e["name"] for e in REQUIREMENTS}
