"""Run a job template of playbooks/vars/awx.yml the way AWX does, through ansible-runner (AWX's engine).

AWX itself cannot run here. What a job of a template runs is reproduced instead: the template's playbook from the
checkout (the project), its job type (check mode and diffs), tags, skip tags and limit, and its extra variables as
AWX builds them - the template's extra_vars, then the survey's defaults (the survey generated from the specs by
deepseek.cluster.awx_survey, as playbooks/awx.yml sends it), then the answers given at launch. A required question
without an answer is refused, as AWX refuses the launch.

    rc, stats = run_template("failover", ROOT / "inventories/lab/hosts.yml", {"failover_skip_golden": "true"})
    stats["lab-standby-proxy"]["failures"] == 0
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import ansible_runner
import yaml

from deepseek_testkit import ROOT, collection_module

VARS_FILE = ROOT / "playbooks" / "vars" / "awx.yml"
SPECS = ROOT / "playbooks" / "specs"
# ansible-runner's stats, per host (ok, changed, failures, dark (unreachable), skipped, ignored, rescued, processed).
STATS = ("ok", "changed", "failures", "dark", "skipped", "ignored", "rescued", "processed")


def templates() -> dict[str, dict[str, Any]]:
    """The job templates of playbooks/vars/awx.yml, by name (``site``, ``failover`` ...)."""
    data = yaml.safe_load(VARS_FILE.read_text())
    return {template["name"]: template for template in data["__awx_job_templates"]}


def _options(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())["argument_specs"]["main"].get("options") or {}


def survey(template: dict[str, Any]) -> dict[str, Any]:
    """The survey playbooks/awx.yml gives ``template``: its playbook's spec, every role's spec."""
    spec = template.get("spec", Path(template["playbook"]).stem)
    role_options: dict[str, Any] = {}
    for path in sorted((ROOT / "roles").glob("*/meta/argument_specs.yml")):
        role_options.update(_options(path))
    awx_survey = collection_module("plugins.filter.awx").awx_survey
    return awx_survey(_options(SPECS / f"{spec}.yml"), template.get("survey", []), role_options)


def launch_vars(template: dict[str, Any], answers: dict[str, Any] | None = None) -> dict[str, Any]:
    """The extra variables of a job: the template's, the survey's defaults, the answers (later ones win)."""
    answers = dict(answers or {})
    extravars = dict(template.get("extra_vars") or {})
    for question in survey(template)["spec"]:
        variable = question["variable"]
        if variable in answers:
            continue
        if question["required"]:
            raise ValueError(f"{template['name']}: the survey requires {variable}")
        if "default" in question:
            extravars[variable] = question["default"]
    extravars.update(answers)
    return extravars


def _per_host(stats: dict[str, dict[str, int]] | None) -> dict[str, dict[str, int]]:
    """ansible-runner's stats (stat -> host -> count) as host -> stat -> count, every stat present."""
    hosts: dict[str, dict[str, int]] = {}
    for stat, counts in (stats or {}).items():
        for host, count in (counts or {}).items():
            hosts.setdefault(host, dict.fromkeys(STATS, 0))[stat] = count
    return hosts


def run_template(
    name: str,
    inventory: Path,
    extravars: dict[str, Any] | None = None,
    private_dir: Path | None = None,
    *,
    job_tags: str | None = None,
    limit: str | None = None,
    cmdline: str = "",
    quiet: bool = True,
    playbook: str | None = None,
    collections_path: Path | None = None,
) -> tuple[int, dict[str, dict[str, int]]]:
    """Run job template ``name`` against ``inventory``; return the exit code and each host's stats.

    ``extravars``: the survey's answers (and any other launch variables). ``private_dir``: ansible-runner's
    private data directory (artifacts, the job's events); a temporary one when None. ``job_tags``, ``limit``: the
    launch's prompts (a workflow node's job_tags), instead of the template's. ``cmdline``: further
    ansible-playbook options (``--syntax-check``, ``-v`` ...), after the template's own. ``playbook`` and
    ``collections_path``: another playbook than the template's and where collections come from (the template's
    playbook from an installed copy of the collection, ``deepseek.cluster.site``, as an execution environment holds it).
    """
    template = templates()[name]
    options = []
    if template.get("job_type", "run") == "check":
        options.append("--check")
    if template.get("diff_mode"):
        options.append("--diff")
    if cmdline:
        options.append(cmdline)
    if private_dir is not None:
        Path(private_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="awx-runner-") as scratch:
        runner = ansible_runner.run(
            private_data_dir=str(private_dir or scratch),
            project_dir=str(ROOT),
            playbook=playbook or template["playbook"],
            inventory=str(Path(inventory).resolve()),
            extravars=launch_vars(template, extravars),
            tags=(template.get("job_tags") if job_tags is None else job_tags) or None,
            skip_tags=template.get("skip_tags") or None,
            limit=(template.get("limit") if limit is None else limit) or None,
            cmdline=" ".join(options) or None,
            envvars={
                # This interpreter's ansible-playbook, as the execution environment has its own.
                "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
                "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
                "ANSIBLE_COLLECTIONS_PATH": str(collections_path or ROOT / "collections"),
                "ANSIBLE_NOCOLOR": "1",
            },
            quiet=quiet,
        )
        return runner.rc, _per_host(runner.stats)
