"""The execution environment (execution-environment.yml, meta/ee/) holds what the code needs, at tested versions.

Python: every third-party import of plugins/ and of the inference probe, found by reading the code, is pinned
exactly in meta/ee/requirements.txt, at the version installed here (the one the tests run with). Collections:
this collection as a tarball of galaxy.yml's version, and every dependency at the version the pinned `ansible`
bundle carries, which meets galaxy.yml's range. ansible-core and ansible-runner: requirements.txt's pins.
"""

import ast
import importlib.metadata
import os
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
from ansible.galaxy.dependency_resolution.versioning import meets_requirements
from conftest import ROOT, bundled_version, load_yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

EE_FILE = ROOT / "execution-environment.yml"
EE = load_yaml(EE_FILE)
DEPENDENCIES = EE["dependencies"]
GALAXY = load_yaml(ROOT / "galaxy.yml")
# The code whose imports the execution environment must satisfy.
CODE = [*sorted((ROOT / "plugins").rglob("*.py")), *sorted((ROOT / "roles" / "inference_probe" / "files").glob("*.py"))]
OWN = {"ansible", "ansible_collections", "__future__"}
FQCN_KEY = re.compile(r"^\s*(?:- )?(?P<namespace>[a-z_]+)\.(?P<name>[a-z_]+)\.[a-z_0-9]+:(?:\s|$)", re.MULTILINE)


def pins(path: Path) -> dict[str, Requirement]:
    """Canonical distribution name -> requirement, of a pip requirements file."""
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            found[canonicalize_name(requirement.name)] = requirement
    return found


def exact(requirement: Requirement) -> str | None:
    """The version of an exact pin (==), else None."""
    specifiers = list(requirement.specifier)
    if len(specifiers) == 1 and specifiers[0].operator == "==" and "*" not in specifiers[0].version:
        return specifiers[0].version
    return None


def imported_modules(path: Path) -> set[str]:
    """Absolute imports of one file, as dotted names (``from a.b import c`` gives ``a.b``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def third_party(modules: set[str]) -> set[str]:
    """Leave out the standard library, ansible, and this collection."""
    return {m for m in modules if m.split(".")[0] not in sys.stdlib_module_names and m.split(".")[0] not in OWN}


@cache
def code_imports() -> dict[str, set[str]]:
    """Third-party module -> the files of the code that import it."""
    found: dict[str, set[str]] = {}
    for path in CODE:
        for module in third_party(imported_modules(path)):
            found.setdefault(module, set()).add(str(path.relative_to(ROOT)))
    return found


def distribution_of(module: str) -> str:
    """The installed distribution that provides ``module`` (a namespace package: the one holding its path)."""
    top = module.split(".")[0]
    candidates = importlib.metadata.packages_distributions().get(top, [])
    if len(set(candidates)) > 1:
        prefix = module.replace(".", "/") + "/"
        candidates = [
            d
            for d in set(candidates)
            if any(str(f).startswith(prefix) for f in importlib.metadata.distribution(d).files or [])
        ]
    assert len(set(candidates)) == 1, f"{module}: no single installed distribution provides it ({candidates})"
    return canonicalize_name(candidates[0])


def galaxy_entries() -> list[dict]:
    return load_yaml(EE_FILE.parent / DEPENDENCIES["galaxy"])["collections"]


# --- the file itself --------------------------------------------------------------------------------------------


def test_it_is_an_ansible_builder_v3_definition_with_every_dependency_file():
    assert EE["version"] == 3
    assert EE["images"]["base_image"]["name"]
    for kind in ("galaxy", "python", "system"):
        assert (EE_FILE.parent / DEPENDENCIES[kind]).is_file(), f"{kind}: {DEPENDENCIES[kind]} is not in the checkout"


def test_ansible_core_and_runner_are_requirements_txt_pins():
    tooling = pins(ROOT / "requirements.txt")
    for key, name in (("ansible_core", "ansible-core"), ("ansible_runner", "ansible-runner")):
        pinned = Requirement(DEPENDENCIES[key]["package_pip"])
        assert canonicalize_name(pinned.name) == name
        assert exact(pinned), f"{key} is not pinned exactly: {pinned}"
        assert exact(pinned) == exact(tooling[name]), f"{key} {pinned} is not requirements.txt's {tooling[name]}"


# --- Python -----------------------------------------------------------------------------------------------------


def test_the_import_scan_finds_the_known_imports():
    """The scan reads the code: the probe's and triton_config's lazy imports are found, the stdlib is not."""
    found = code_imports()
    assert {"tritonclient.grpc", "google.protobuf", "numpy", "prometheus_client"} <= set(found)
    assert not {m for m in found if m.split(".")[0] in {"json", "re", "ansible", "ansible_collections"}}
    assert "roles/inference_probe/files/deepseek_inference_probe.py" in found["prometheus_client"]


def test_every_third_party_import_is_pinned_exactly():
    pinned = pins(EE_FILE.parent / DEPENDENCIES["python"])
    missing = {}
    for module, files in sorted(code_imports().items()):
        distribution = distribution_of(module)
        if distribution not in pinned or not exact(pinned[distribution]):
            missing[module] = (distribution, sorted(files))
    assert not missing, f"imports without an exact pin in {DEPENDENCIES['python']}: {missing}"


def test_every_pin_is_the_version_tested_here():
    for name, requirement in pins(EE_FILE.parent / DEPENDENCIES["python"]).items():
        version = exact(requirement)
        assert version, f"{requirement} is not an exact pin"
        assert importlib.metadata.version(name) == version, (
            f"{name}: the execution environment pins {version}, the tests run with {importlib.metadata.version(name)}"
        )


def test_the_system_packages_parse_as_bindep():
    bindep = pytest.importorskip("bindep.depends")
    depends = bindep.Depends((EE_FILE.parent / DEPENDENCIES["system"]).read_text())
    names = {rule[0] for rule in depends._rules}
    assert {"tar", "gzip"} <= names


# --- collections ------------------------------------------------------------------------------------------------


def test_this_collection_is_its_own_tarball_added_to_the_build():
    tarball = f"{GALAXY['namespace']}-{GALAXY['name']}-{GALAXY['version']}.tar.gz"
    files = [e for e in galaxy_entries() if e.get("type") == "file"]
    assert [e["name"] for e in files] == [f"collections/{tarball}"]
    added = {(Path(f["src"]).name, f["dest"]) for f in EE.get("additional_build_files", [])}
    assert (tarball, "collections") in added, f"additional_build_files does not add {tarball} to collections/"


@pytest.mark.parametrize("entry", [e for e in galaxy_entries() if e.get("type") != "file"], ids=lambda e: e["name"])
def test_each_collection_is_the_bundled_version_exactly(entry):
    bundled = bundled_version(entry["name"])
    assert bundled is not None, f"{entry['name']} is not in the pinned ansible bundle"
    assert str(entry["version"]) == bundled, f"{entry['name']}: {entry['version']} is not the bundled {bundled}"


@pytest.mark.parametrize("name", sorted(GALAXY.get("dependencies") or {}))
def test_each_galaxy_dependency_is_there_and_in_range(name):
    versions = {e["name"]: str(e["version"]) for e in galaxy_entries() if e.get("type") != "file"}
    assert name in versions, f"galaxy.yml depends on {name}; {DEPENDENCIES['galaxy']} does not install it"
    assert meets_requirements(versions[name], GALAXY["dependencies"][name]), (
        f"{name} {versions[name]} does not meet galaxy.yml's {GALAXY['dependencies'][name]}"
    )


def test_every_collection_the_content_uses_is_installed():
    installed = {"ansible.builtin", f"{GALAXY['namespace']}.{GALAXY['name']}"} | {e["name"] for e in galaxy_entries()}
    used = set()
    for path in [
        *ROOT.glob("roles/*/tasks/**/*.yml"),
        *ROOT.glob("roles/*/handlers/*.yml"),
        *ROOT.glob("playbooks/**/*.yml"),
    ]:
        used |= {f"{m['namespace']}.{m['name']}" for m in FQCN_KEY.finditer(path.read_text())}
    assert "community.crypto" in used, "the scan is broken"
    assert used <= installed, f"used but not in the execution environment: {sorted(used - installed)}"


# --- ansible-builder --------------------------------------------------------------------------------------------


def test_ansible_builder_creates_the_build_context(tmp_path):
    builder = Path(sys.executable).parent / "ansible-builder"
    if not builder.is_file():
        pytest.skip("ansible-builder is not installed (requirements.txt pins it: make venv)")
    galaxy = Path(sys.executable).parent / "ansible-galaxy"
    tarball = next(Path(f["src"]) for f in EE["additional_build_files"] if f["dest"] == "collections")
    env = dict(os.environ, ANSIBLE_NOCOLOR="1")
    built = subprocess.run(
        [str(galaxy), "collection", "build", "--force", "--output-path", str(ROOT / tarball.parent), str(ROOT)],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    run = subprocess.run(
        [str(builder), "create", "--file", str(EE_FILE), "--context", str(tmp_path / "context")],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    context = tmp_path / "context"
    containerfile = next(p for p in (context / "Containerfile", context / "Dockerfile") if p.is_file())
    text = containerfile.read_text()
    assert DEPENDENCIES["ansible_core"]["package_pip"] in text
    assert (context / "_build" / "collections" / tarball.name).is_file()
    assert (context / "_build" / "requirements.txt").read_text() == (
        EE_FILE.parent / DEPENDENCIES["python"]
    ).read_text()
