"""The native runtime's pinned wheels: every default digest is one PyPI publishes for that wheel.

The fixture holds the file names and sha256 digests of PyPI's simple index (PEP 503) for the pinned
versions, so a mistyped or stale digest, or a version bumped without its digests, fails here.
"""

import re

import pytest
from conftest import FIXTURES, ROOT, load_yaml

DEFAULTS = load_yaml(ROOT / "roles" / "triton_server" / "defaults" / "main.yml")
# PEP 427: {distribution}-{version}-{python tag}-{abi tag}-{platform tag}.whl
WHEEL = re.compile(
    r"^(?P<name>[A-Za-z0-9_]+)-(?P<version>[^-]+)-(?P<python>[^-]+)-(?P<abi>[^-]+)-(?P<platform>[^ ]+)\.whl$"
)


def published() -> dict[str, dict]:
    """sha256 -> the wheel's name parts, from the recorded index."""
    digests = {}
    for line in (FIXTURES / "pypi" / "wheel-digests.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            filename, digest = line.split()
            digests[digest] = WHEEL.match(filename).groupdict()
    return digests


def test_the_pinned_requirements_are_the_default_versions():
    assert set(DEFAULTS["triton_server_wheel_hashes"]) == {
        f"nvidia-pytriton=={DEFAULTS['triton_server_pytriton_version']}",
        f"numpy=={DEFAULTS['triton_server_numpy_version']}",
    }


@pytest.mark.parametrize("requirement", sorted(DEFAULTS["triton_server_wheel_hashes"]))
def test_every_digest_is_a_published_linux_wheel_of_that_requirement(requirement):
    name, version = requirement.split("==")
    index = published()
    for digest in DEFAULTS["triton_server_wheel_hashes"][requirement]:
        assert digest in index, f"{requirement}: {digest} is not a digest PyPI lists"
        wheel = index[digest]
        assert (wheel["name"], wheel["version"]) == (name.replace("-", "_"), version)
        assert "manylinux" in wheel["platform"]


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
@pytest.mark.parametrize("requirement", sorted(DEFAULTS["triton_server_wheel_hashes"]))
def test_debian_12_python_3_11_finds_a_wheel_on_each_architecture(requirement, arch):
    wheels = [published()[d] for d in DEFAULTS["triton_server_wheel_hashes"][requirement]]
    assert any(w["python"] in ("py3", "cp311") and w["platform"].endswith(arch) for w in wheels)
