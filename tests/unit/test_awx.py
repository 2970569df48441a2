"""AWX as code: playbooks/awx.yml, its data (playbooks/vars/awx.yml) and the surveys generated from the specs.

AWX itself cannot run where this is tested: these tests check what can be checked without it - that every job
template runs a playbook of this checkout, that every survey question is documented and validated by an argument
spec and generated from it faithfully, that every survey is one AWX's API accepts (its own rules, restated), and
that playbooks/awx.yml gives the awx.awx modules only parameters they know.
"""

import ast
import json
import os
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml
from ansible_collections.deepseek.cluster.plugins.filter.awx import awx_survey
from conftest import ROOT, load_yaml

PLAYBOOKS = ROOT / "playbooks"
SPECS = PLAYBOOKS / "specs"
AWX_PLAYBOOK = PLAYBOOKS / "awx.yml"
VARS_FILE = PLAYBOOKS / "vars" / "awx.yml"
VARS = load_yaml(VARS_FILE)
TEMPLATES = VARS["__awx_job_templates"]
TEMPLATE_NAMES = [t["name"] for t in TEMPLATES]
# The operational playbooks that must each have a job template.
OPERATIONAL = {
    "site",
    "gpu_nodes",
    "inference",
    "proxy",
    "monitoring",
    "dr",
    "failover",
    "failback",
    "rolling_upgrade",
    "rotate_certs",
}
TASK_LISTS = ("pre_tasks", "tasks", "post_tasks", "handlers")
BLOCK_LISTS = ("block", "rescue", "always")


def spec_name(template: dict) -> str:
    return template.get("spec", Path(template["playbook"]).stem)


@cache
def spec_options(name: str) -> dict:
    """argument_specs.main.options of playbooks/specs/<name>.yml ({} when the spec has none)."""
    return load_yaml(SPECS / f"{name}.yml")["argument_specs"]["main"].get("options") or {}


@cache
def role_options(role: str) -> dict:
    path = ROOT / "roles" / role / "meta" / "argument_specs.yml"
    return load_yaml(path)["argument_specs"]["main"].get("options") or {}


def playbook_path(ref: str, importer: Path) -> Path:
    """The file an import_playbook names: deepseek.cluster.<name> or a path relative to the importer."""
    if ref.startswith("deepseek.cluster."):
        return PLAYBOOKS / f"{ref.removeprefix('deepseek.cluster.')}.yml"
    return (importer.parent / ref).resolve()


def import_ref(play: dict) -> str | None:
    return play.get("ansible.builtin.import_playbook") or play.get("import_playbook")


def imported_playbooks(path: Path) -> list[Path]:
    return [playbook_path(ref, path) for play in load_yaml(path) if (ref := import_ref(play))]


def role_name(entry) -> str:
    name = entry if isinstance(entry, str) else entry.get("role") or entry.get("name")
    return name.removeprefix("deepseek.cluster.")


def task_roles(tasks: list) -> set[str]:
    """Roles that a task list includes or imports (blocks included)."""
    found = set()
    for task in tasks or []:
        for key in ("ansible.builtin.include_role", "ansible.builtin.import_role", "include_role", "import_role"):
            if key in task:
                found.add(role_name(task[key]))
        for key in BLOCK_LISTS:
            found |= task_roles(task.get(key))
    return found


def roles_applied(path: Path) -> set[str]:
    """Every role a playbook applies, through its imports too."""
    found = set()
    for play in load_yaml(path):
        if ref := import_ref(play):
            found |= roles_applied(playbook_path(ref, path))
            continue
        found |= {role_name(entry) for entry in play.get("roles", [])}
        for key in TASK_LISTS:
            found |= task_roles(play.get(key))
    return found


def applied_role_options(template: dict) -> dict:
    options = {}
    for role in sorted(roles_applied(ROOT / template["playbook"])):
        options.update(role_options(role))
    return options


def survey_of(template: dict) -> dict:
    """The survey playbooks/awx.yml sends for ``template`` (the same filter, the same specs)."""
    return awx_survey(
        spec_options(spec_name(template)), template.get("survey", []), applied_role_options(template), "n", "d"
    )


# The type an argument-spec option must become, restated here (not read from the filter).
EXPECTED_TYPE = {"str": "text", "path": "text", "int": "integer", "float": "float", "bool": "multiplechoice"}


def expected_question(option: dict, from_role: bool) -> dict:
    kind = option.get("type", "str")
    expected = {"type": EXPECTED_TYPE.get(kind)}
    if kind == "list":
        expected["type"] = "multiselect"
    elif option.get("choices"):
        expected["type"] = "multiplechoice"
    elif option.get("no_log"):
        expected["type"] = "password"
    if kind == "bool":
        expected["choices"] = ["true", "false"]
    elif option.get("choices"):
        expected["choices"] = [str(c) for c in option["choices"]]
    default = option.get("default")
    if not from_role and default is not None and not (isinstance(default, str) and "{{" in default):
        if kind == "bool":
            expected["default"] = "true" if default else "false"
        elif kind == "list":
            expected["default"] = "\n".join(default)
        else:
            expected["default"] = default
    expected["required"] = bool(option.get("required")) and not from_role
    return expected


# --- the job templates and their playbooks ---------------------------------------------------------------------


def test_every_operational_playbook_has_a_job_template():
    playbooks = {Path(t["playbook"]).stem for t in TEMPLATES}
    assert playbooks >= OPERATIONAL, f"no job template for {sorted(OPERATIONAL - playbooks)}"
    assert len(set(TEMPLATE_NAMES)) == len(TEMPLATE_NAMES), "two job templates share a name"


@pytest.mark.parametrize("template", TEMPLATES, ids=TEMPLATE_NAMES)
def test_the_playbook_is_in_the_checkout_and_a_playbook(template):
    path = ROOT / template["playbook"]
    assert path.is_file(), f"{template['name']}: {template['playbook']} is not in the checkout"
    plays = load_yaml(path)
    assert isinstance(plays, list), f"{template['playbook']} is not a list of plays"
    assert plays, f"{template['playbook']} is empty"
    for play in plays:
        assert isinstance(play, dict), f"{template['playbook']}: {play!r} is not a play"
        assert "hosts" in play or import_ref(play), f"{template['playbook']}: a play without hosts: {play.get('name')}"
    for imported in imported_playbooks(path):
        assert imported.is_file(), f"{template['playbook']} imports {imported}, which is not in the checkout"


def test_the_playbooks_pass_ansible_syntax_check():
    playbooks = sorted({str(ROOT / t["playbook"]) for t in TEMPLATES} | {str(AWX_PLAYBOOK)})
    missing = [p for p in playbooks if not Path(p).is_file()]
    assert not missing, f"not in the checkout: {missing}"
    env = dict(
        os.environ,
        ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
        ANSIBLE_COLLECTIONS_PATH=str(ROOT / "collections"),
        ANSIBLE_NOCOLOR="1",
    )
    # A required survey answer may name the play's hosts (rolling_upgrade_site): give each one, as AWX would.
    answers = {
        q["variable"]: VARS["__awx_inventories"][0]["site"] if q["type"] == "text" else 1
        for t in TEMPLATES
        for q in survey_of(t)["spec"]
        if q["required"]
    }
    command = [
        str(Path(sys.executable).parent / "ansible-playbook"),
        "--syntax-check",
        "--extra-vars",
        json.dumps(answers),
        *playbooks,
    ]
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]


@pytest.mark.parametrize("template", TEMPLATES, ids=TEMPLATE_NAMES)
def test_the_template_names_a_spec_an_inventory_and_known_fields(template):
    assert (SPECS / f"{spec_name(template)}.yml").is_file(), (
        f"{template['name']}: no playbooks/specs/{spec_name(template)}.yml"
    )
    assert template["inventory"] in [i["site"] for i in VARS["__awx_inventories"]]
    known = {"name", "description", "playbook", "spec", "inventory", "survey", "job_type", "diff_mode", "job_tags",
             "skip_tags", "limit", "extra_vars"}  # fmt: skip
    assert set(template) <= known, (
        f"{template['name']}: fields playbooks/awx.yml does not read: {set(template) - known}"
    )
    assert template.get("job_type", "run") in ("run", "check")


def test_verify_is_read_only():
    verify = next(t for t in TEMPLATES if t["name"] == "verify")
    assert verify["job_type"] == "check"


# --- the specs --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(SPECS.glob("*.yml")), ids=lambda p: p.stem)
def test_each_spec_is_an_argument_spec_of_its_playbook(path):
    assert (PLAYBOOKS / path.name).is_file() or path.stem in {t["playbook"] for t in TEMPLATES}, (
        f"{path.name} specifies no playbook of playbooks/"
    )
    main = load_yaml(path)["argument_specs"]["main"]
    assert main.get("short_description")
    for name, option in (main.get("options") or {}).items():
        assert option.get("description"), f"{path.name}: {name} has no description"
        assert option.get("type", "str") in {"str", "int", "float", "bool", "list", "dict", "path", "raw"}
        if option.get("required"):
            assert "default" not in option, f"{path.name}: {name} is required and has a default"


SPEC_IMPORTS = [
    (path.stem, imported.stem)
    for path in sorted(PLAYBOOKS.glob("*.yml"))
    if (SPECS / path.name).is_file()
    for imported in imported_playbooks(path)
    if (SPECS / imported.name).is_file()
]


@pytest.mark.parametrize(("importer", "imported"), SPEC_IMPORTS, ids=[f"{a}<-{b}" for a, b in SPEC_IMPORTS])
def test_a_playbook_spec_holds_the_variables_of_the_playbooks_it_imports(importer, imported):
    """The same definition in both, but for required (an import may be conditional)."""
    outer = spec_options(importer)
    for name, option in spec_options(imported).items():
        assert name in outer, f"playbooks/specs/{importer}.yml lacks {name} of {imported}.yml, which it imports"
        strip = {k: v for k, v in option.items() if k != "required"}
        assert {k: v for k, v in outer[name].items() if k != "required"} == strip, (
            f"{name} differs between playbooks/specs/{importer}.yml and {imported}.yml"
        )


# --- the surveys ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("template", TEMPLATES, ids=TEMPLATE_NAMES)
def test_every_survey_variable_is_in_the_playbook_spec_or_a_role_it_applies(template):
    playbook, roles = spec_options(spec_name(template)), applied_role_options(template)
    for variable in template.get("survey", []):
        assert variable in playbook or variable in roles, (
            f"{template['name']}: survey variable {variable} is in neither playbooks/specs/{spec_name(template)}.yml "
            f"nor the argument spec of a role {template['playbook']} applies "
            f"({sorted(roles_applied(ROOT / template['playbook']))})"
        )


@pytest.mark.parametrize("template", TEMPLATES, ids=TEMPLATE_NAMES)
def test_the_generated_survey_matches_the_spec(template):
    playbook, roles = spec_options(spec_name(template)), applied_role_options(template)
    survey = survey_of(template)
    assert [q["variable"] for q in survey["spec"]] == template.get("survey", [])
    for question in survey["spec"]:
        variable = question["variable"]
        from_role = variable not in playbook
        option = roles[variable] if from_role else playbook[variable]
        expected = expected_question(option, from_role)
        got = {key: question[key] for key in ("type", "choices", "default", "required") if key in question}
        assert got == expected, f"{template['name']}: {variable} asked as {got}, its spec says {expected}"
        assert question["question_name"] == variable
        assert question["question_description"]


def awx_refusals(survey: dict) -> list[str]:
    """What AWX's API (JobTemplateSurveySpec._validate_spec_data) would refuse in ``survey``, restated."""
    allowed = {"text": str, "textarea": str, "password": str, "multiplechoice": str, "multiselect": str,
               "integer": int, "float": float}  # fmt: skip
    errors = []
    if not isinstance(survey.get("name"), str) or not isinstance(survey.get("description"), str):
        errors.append("name and description must be strings")
    if not isinstance(survey.get("spec"), list) or not survey["spec"]:
        errors.append("spec must be a non-empty list")
        return errors
    variables = set()
    for index, item in enumerate(survey["spec"]):
        for key, kind in (("type", str), ("question_name", str), ("variable", str), ("required", bool)):
            if not isinstance(item.get(key), kind):
                errors.append(f"question {index}: {key} must be {kind.__name__}")
        if item.get("variable") in variables:
            errors.append(f"question {index}: variable {item['variable']} twice")
        variables.add(item.get("variable"))
        qtype = item.get("type")
        if qtype not in allowed:
            errors.append(f"question {index}: type {qtype}")
            continue
        default = item.get("default", "")
        if default != "" and not isinstance(default, allowed[qtype]):
            errors.append(f"question {index}: default {default!r} is not {allowed[qtype].__name__}")
        if qtype == "integer" and isinstance(default, bool):
            errors.append(f"question {index}: default {default!r} is a bool")
        for key in ("min", "max"):
            if item.get(key) is not None and not isinstance(item[key], int):
                errors.append(f"question {index}: {key} must be an integer")
        if qtype in ("multiplechoice", "multiselect"):
            if "choices" not in item:
                errors.append(f"question {index}: {qtype} without choices")
                continue
            defaults = default.splitlines() if isinstance(default, str) else default
            if qtype == "multiplechoice" and len(defaults) > 1:
                errors.append(f"question {index}: more than one default")
            if any(d not in item["choices"] for d in defaults):
                errors.append(f"question {index}: default {default!r} not among the choices")
    return errors


@pytest.mark.parametrize("template", [t for t in TEMPLATES if t.get("survey")], ids=lambda t: t["name"])
def test_each_survey_is_one_awx_accepts(template):
    assert awx_refusals(survey_of(template)) == []


def test_the_awx_rules_restated_here_refuse_what_awx_refuses():
    good = {"name": "", "description": "", "spec": [{"type": "integer", "question_name": "q", "variable": "v",
                                                     "required": False, "default": 3}]}  # fmt: skip
    assert awx_refusals(good) == []
    assert awx_refusals({**good, "spec": []})
    bad_default = {**good, "spec": [{**good["spec"][0], "default": "3"}]}
    assert awx_refusals(bad_default)
    bad_choice = {**good, "spec": [{**good["spec"][0], "type": "multiplechoice", "choices": ["a"], "default": "b"}]}
    assert awx_refusals(bad_choice)


# --- the workflows and the schedule ----------------------------------------------------------------------------


def all_tags() -> set[str]:
    """Every tag the roles' tasks and the playbooks carry."""
    tags = set()
    for path in [*ROOT.glob("roles/*/tasks/**/*.yml"), *PLAYBOOKS.glob("*.yml"), *PLAYBOOKS.glob("tasks/*.yml")]:
        for match in re.finditer(r"^\s*tags:\s*(\[[^\]]*\]|\S+)?\s*\n((?:\s*- \S+\s*\n)*)", path.read_text(), re.M):
            inline, listed = match.group(1) or "", match.group(2)
            tags |= set(re.findall(r"[a-z_0-9]+", inline)) | set(re.findall(r"- (\S+)", listed))
    return tags


def test_the_workflows_and_the_schedule_name_what_exists():
    tags = all_tags()
    workflows = {w["name"]: w for w in VARS["__awx_workflows"]}
    for workflow in workflows.values():
        identifiers = [n["identifier"] for n in workflow["nodes"]]
        assert len(set(identifiers)) == len(identifiers), f"{workflow['name']}: two nodes share an identifier"
        for node in workflow["nodes"]:
            assert node["template"] in TEMPLATE_NAMES, f"{workflow['name']}: no job template {node['template']}"
            for follow in ("success", "failure", "always"):
                for target in node.get(follow, []):
                    assert target in identifiers, f"{workflow['name']}: {node['identifier']} -> {target}: no such node"
                    # playbooks/awx.yml creates the nodes last first: a node only points at later ones.
                    assert identifiers.index(target) > identifiers.index(node["identifier"])
            for tag in filter(None, node.get("job_tags", "").split(",")):
                assert tag in tags, f"{workflow['name']}: tag {tag} is on no task"
    for schedule in VARS["__awx_schedules"]:
        assert schedule["workflow"] in workflows


def test_deploy_is_site_then_verify():
    deploy = next(w for w in VARS["__awx_workflows"] if w["name"] == "deploy")
    assert [(n["template"], n.get("success", [])) for n in deploy["nodes"]] == [("site", ["verify"]), ("verify", [])]


def test_the_crl_refresh_runs_what_the_pki_docs_schedule():
    """docs/roles/pki.md names the playbooks and tags that keep the CRL valid; the scheduled workflow runs them."""
    doc = (ROOT / "docs" / "roles" / "pki.md").read_text()
    documented = dict(re.findall(r"`playbooks/(\w+)\.yml` with tags `([a-z_,]+)`", doc))
    assert documented, "docs/roles/pki.md names no playbook and tags for the CRL refresh"
    crl = next(w for w in VARS["__awx_workflows"] if w["name"] == "crl_refresh")
    assert {n["template"]: n["job_tags"] for n in crl["nodes"]} == documented
    assert [s["workflow"] for s in VARS["__awx_schedules"]] == ["crl_refresh"]


# --- playbooks/awx.yml ------------------------------------------------------------------------------------------


def awx_tasks() -> list[dict]:
    return load_yaml(AWX_PLAYBOOK)[0]["tasks"]


def module_of(task: dict) -> str:
    return next(key for key in task if "." in key and key.split(".")[0] in {"awx", "ansible"})


@cache
def awx_module_docs() -> dict:
    modules = sorted({module_of(t) for t in awx_tasks() if module_of(t).startswith("awx.awx.")})
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    command = [str(Path(sys.executable).parent / "ansible-doc"), "-j", *modules]
    run = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return json.loads(run.stdout)


def known_parameters(module: str) -> set[str]:
    options = awx_module_docs()[module]["doc"]["options"]
    return set(options) | {alias for option in options.values() for alias in option.get("aliases", [])}


def test_the_awx_modules_get_only_parameters_they_know():
    for task in awx_tasks():
        module = module_of(task)
        if module.startswith("awx.awx."):
            unknown = set(task[module]) - known_parameters(module)
            assert not unknown, f"{task['name']}: {module} has no parameter {sorted(unknown)}"
    defaults = load_yaml(AWX_PLAYBOOK)[0]["module_defaults"]["group/awx.awx.controller"]
    assert set(defaults) <= known_parameters("awx.awx.organization")


def no_log_variables() -> set[str]:
    return {name for name, option in spec_options("awx").items() if option.get("no_log")}


def test_tasks_that_carry_a_secret_log_nothing():
    secrets = no_log_variables() - {"awx_controller_token", "awx_controller_password"}  # module_defaults: no_log there
    for task in awx_tasks():
        text = yaml.safe_dump(task[module_of(task)])
        if any(re.search(rf"\b{name}\b", text) for name in secrets):
            assert task.get("no_log") is True, f"{task['name']} passes a secret and may log it"


def test_the_vars_file_holds_no_secret():
    text = VARS_FILE.read_text()
    assert not [name for name in no_log_variables() if name in text]


def test_the_vars_file_applies_the_spec_defaults():
    """Every `awx_x | default(...)` in awx.yml and its vars file gives the spec's default."""
    options = spec_options("awx")
    text = VARS_FILE.read_text() + AWX_PLAYBOOK.read_text()
    found = dict(re.findall(r"\b(awx_\w+) \| default\(('[^']*'|[^,)]*)", text))
    for name, option in options.items():
        if "default" in option:
            assert name in found, f"{name} has a default in the spec that awx.yml never applies"
    for name, literal in found.items():
        assert name in options, f"{name} is not in playbooks/specs/awx.yml"
        if literal != "omit":
            value = ast.literal_eval({"true": "True", "false": "False"}.get(literal, literal))
            assert value == options[name]["default"], f"{name}: awx.yml's default {value!r} is not the spec's"


def test_awx_validates_its_variables_against_its_spec():
    first = awx_tasks()[0]
    assert "ansible.builtin.validate_argument_spec" in first
    assert "specs/awx.yml" in first["ansible.builtin.validate_argument_spec"]["argument_spec"]


def _tagged(item: dict, tags: set[str]) -> bool:
    return bool(set(item.get("tags") or []) & tags)


@pytest.mark.parametrize("template", [t for t in TEMPLATES if t.get("job_tags")], ids=lambda t: t["name"])
def test_a_tagged_template_runs_its_playbooks_own_plays(template):
    """With job_tags, every task of the template's own plays (not the imported playbooks, whose roles carry the
    tags) must run: tagged always or with one of the job's tags, on the play or the task. Untagged, the run would
    skip them and report success having done nothing (rotate_certs.yml's phase, its pki_reissue_before).
    """
    tags = {"always", *template["job_tags"].split(",")}
    path = ROOT / template["playbook"]
    for play in yaml.safe_load(path.read_text()):
        if import_ref(play) is not None or _tagged(play, tags):
            continue
        for task in play.get("tasks", []) + play.get("pre_tasks", []) + play.get("post_tasks", []):
            where = f"{path.name}: play {play['name']!r}, task {task.get('name')!r}"
            assert _tagged(task, tags), f"{where} is skipped by the job tags {sorted(tags)}"
