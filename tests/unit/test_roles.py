"""Every role keeps defaults, argument_specs and its docs page in step."""

import re

import pytest
from conftest import ROOT, load_yaml, role_dirs

ROLES = role_dirs()


def spec_options(role):
    return load_yaml(role / "meta" / "argument_specs.yml")["argument_specs"]["main"]["options"]


def defaults(role):
    return load_yaml(role / "defaults" / "main.yml") or {}


def test_there_are_roles():
    assert ROLES, "no role found under roles/"


@pytest.mark.parametrize("role", ROLES, ids=lambda r: r.name)
def test_defaults_and_argument_specs_name_the_same_variables(role):
    # Required options (an internal role's inputs from its caller) have no default by design.
    optional = {name for name, option in spec_options(role).items() if not option.get("required")}
    assert set(defaults(role)) == optional


@pytest.mark.parametrize("role", ROLES, ids=lambda r: r.name)
def test_argument_spec_defaults_equal_role_defaults(role):
    options, values = spec_options(role), defaults(role)
    mismatched = {k: (options[k].get("default"), v) for k, v in values.items() if options[k].get("default") != v}
    assert not mismatched, f"argument_specs default != defaults/main.yml: {mismatched}"


@pytest.mark.parametrize("role", ROLES, ids=lambda r: r.name)
def test_every_option_is_described_and_typed(role):
    for name, option in spec_options(role).items():
        assert option.get("description"), f"{role.name}: {name} has no description"
        assert option.get("type"), f"{role.name}: {name} has no type"


@pytest.mark.parametrize("role", ROLES, ids=lambda r: r.name)
def test_public_variables_are_role_prefixed(role):
    # _<role>_* are an internal role's inputs (set by the calling role, never by the inventory).
    bad = [name for name in spec_options(role) if not name.startswith((f"{role.name}_", f"_{role.name}_"))]
    assert not bad, f"variables without the {role.name}_ prefix: {bad}"


@pytest.mark.parametrize("role", ROLES, ids=lambda r: r.name)
def test_docs_page_names_every_variable(role):
    page = ROOT / "docs" / "roles" / f"{role.name}.md"
    assert page.is_file(), f"missing {page.relative_to(ROOT)}"
    text = page.read_text()
    missing = [name for name in spec_options(role) if not re.search(rf"(?<![\w]){re.escape(name)}\b", text)]
    assert not missing, f"{page.name} does not mention: {missing}"


@pytest.mark.parametrize("role", ROLES, ids=lambda r: r.name)
def test_role_has_a_molecule_default_scenario(role):
    assert (role / "molecule" / "default" / "molecule.yml").is_file()
