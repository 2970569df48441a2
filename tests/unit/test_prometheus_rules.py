"""Prometheus alert rules: promtool checks them and runs their unit tests; every alert is tested and documented.

The rules are roles/prometheus/files/rules/<group>.rules.yml (one group, ``deepseek-<group>``, per file), their
promtool tests tests/prometheus/<group>.test.yml, the page for operators docs/alerts.md (docs/alerts.md says how to
add a rule file). promtool is Debian's (the version the prometheus role installs from the distribution), fetched
into .cache/tools by tests/prometheus/fetch-tools.sh when it is not there yet.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ROOT

RULES_DIR = ROOT / "roles" / "prometheus" / "files" / "rules"
TESTS_DIR = ROOT / "tests" / "prometheus"
ALERTS_DOC = ROOT / "docs" / "alerts.md"
TOOLS = ROOT / ".cache" / "tools"
FETCH_TOOLS = TESTS_DIR / "fetch-tools.sh"
SEVERITIES = {"critical", "warning", "info"}
ANNOTATIONS = {"summary", "description", "runbook"}

RULE_FILES = sorted(RULES_DIR.glob("*.rules.yml"))
TEST_FILES = sorted(TESTS_DIR.glob("*.test.yml"))


@cache
def load(path: Path) -> Any:
    """One YAML document (promtool's files are plain YAML), parsed once per session."""
    return yaml.safe_load(path.read_text())


def alert_rules(path: Path) -> Iterator[dict[str, Any]]:
    """The alerting rules of one rules file (recording rules left out)."""
    for group in load(path)["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                yield rule


@cache
def rule_cases() -> list[tuple[Path, str, str]]:
    """(rules file, alert name, severity) for every alerting rule."""
    return [
        (path, rule["alert"], rule.get("labels", {}).get("severity", ""))
        for path in RULE_FILES
        for rule in alert_rules(path)
    ]


def alert_tests_for(rules_file: Path) -> Iterator[dict[str, Any]]:
    """Every alert_rule_test of every test file that loads ``rules_file``."""
    for test_file in TEST_FILES:
        document = load(test_file)
        loaded = {(test_file.parent / name).resolve() for name in document.get("rule_files", [])}
        if rules_file.resolve() not in loaded:
            continue
        for group in document.get("tests", []):
            yield from group.get("alert_rule_test", []) or []


@cache
def doc_headings() -> set[str]:
    """Text of every Markdown heading of docs/alerts.md."""
    return {m.group(1).strip() for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", ALERTS_DOC.read_text(), re.M)}


def test_there_are_rules_and_tests() -> None:
    """The rule and test files exist where the prometheus role and make unit look for them."""
    assert RULE_FILES, f"no *.rules.yml in {RULES_DIR}"
    assert TEST_FILES, f"no *.test.yml in {TESTS_DIR}"
    assert ALERTS_DOC.is_file()


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_promtool_check_rules(promtool: Path, path: Path) -> None:
    """promtool accepts each rules file (syntax, PromQL, templates)."""
    run = subprocess.run([str(promtool), "check", "rules", str(path)], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.parametrize("path", TEST_FILES, ids=lambda p: p.name)
def test_promtool_test_rules(promtool: Path, path: Path) -> None:
    """Each promtool test file passes (rule_files are relative to the test file: promtool runs in its folder)."""
    run = subprocess.run(
        [str(promtool), "test", "rules", path.name], cwd=path.parent, capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_rules_file_layout(path: Path) -> None:
    """One group per file, named deepseek-<group> after the file; static YAML; sources named in a top comment."""
    text = path.read_text()
    document = load(path)
    group = path.name.removesuffix(".rules.yml")
    assert [g["name"] for g in document["groups"]] == [f"deepseek-{group}"]
    assert "{%" not in text, "rules are static YAML, not Jinja templates"
    assert text.startswith("---\n#"), "a comment at the top names the upstream sources"


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_every_rules_file_has_its_test_file(path: Path) -> None:
    """tests/prometheus/<group>.test.yml loads <group>.rules.yml by its path relative to the test file."""
    test_file = TESTS_DIR / path.name.replace(".rules.yml", ".test.yml")
    assert test_file.is_file(), f"{path.name} has no {test_file.relative_to(ROOT)}"
    document = load(test_file)
    assert document.get("rule_files") == [f"../../roles/prometheus/files/rules/{path.name}"]
    assert document.get("evaluation_interval") == "30s"


@pytest.mark.parametrize(("path", "name", "severity"), rule_cases(), ids=lambda v: v if isinstance(v, str) else v.stem)
def test_alert_labels_and_annotations(path: Path, name: str, severity: str) -> None:
    """Every alert has a known severity, a summary, a description and a runbook anchor named after it."""
    for rule in alert_rules(path):
        if rule["alert"] != name or rule["labels"]["severity"] != severity:
            continue
        assert severity in SEVERITIES
        annotations = rule.get("annotations", {})
        assert set(annotations) >= ANNOTATIONS, f"{name}: annotations {sorted(annotations)}"
        assert all(str(annotations[key]).strip() for key in ANNOTATIONS)
        assert annotations["runbook"] == f"alerts.md#{name.lower()}"


@pytest.mark.parametrize(("path", "name", "severity"), rule_cases(), ids=lambda v: v if isinstance(v, str) else v.stem)
def test_every_alert_fires_in_a_test(path: Path, name: str, severity: str) -> None:
    """A promtool case expects the alert, at this severity, with its annotations checked."""
    firing = [
        alert
        for case in alert_tests_for(path)
        if case.get("alertname") == name
        for alert in case.get("exp_alerts") or []
        if (alert.get("exp_labels") or {}).get("severity") == severity
    ]
    assert firing, f"{name} ({severity}) never fires in tests/prometheus for {path.name}"
    for alert in firing:
        assert set(alert.get("exp_annotations") or {}) >= ANNOTATIONS, f"{name}: a firing case without annotations"


@pytest.mark.parametrize("name", sorted({case[1] for case in rule_cases()}))
def test_every_alert_stays_quiet_in_a_test(name: str) -> None:
    """A promtool case expects no alert of this name (series near the threshold, on the healthy side)."""
    paths = {case[0] for case in rule_cases() if case[1] == name}
    quiet = [
        case
        for path in paths
        for case in alert_tests_for(path)
        if case.get("alertname") == name and not case.get("exp_alerts")
    ]
    assert quiet, f"{name} has no promtool case where it does not fire"


@pytest.mark.parametrize("name", sorted({case[1] for case in rule_cases()}))
def test_every_alert_has_a_section_in_the_docs(name: str) -> None:
    """docs/alerts.md has a heading that is exactly the alert name (its anchor is the runbook's)."""
    assert name in doc_headings(), f"docs/alerts.md has no heading '{name}' (anchor #{name.lower()})"


def test_alert_names_are_unique_across_files() -> None:
    """An alert name lives in one rules file only (its severities may differ within that file)."""
    owner: dict[str, Path] = {}
    for path, name, _rule in rule_cases():
        assert owner.setdefault(name, path) == path, f"{name} is in {owner[name].name} and {path.name}"
