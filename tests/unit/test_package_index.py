"""Every package a role installs goes through the package_index role, and nothing else refreshes an index.

The walk follows each role's tasks in the order Ansible runs them (blocks, include/import of task files,
include/import of the collection's roles and their tasks_from files), ignoring conditions: a task that
installs packages (apt/dnf/yum/package modules, or an apt-get/dnf/yum install command, simulations
included, since they read the index too) must come after an include of deepseek.cluster.package_index.
Task files that no walk reaches are walked on their own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, role_dirs

INDEX_ROLE = "deepseek.cluster.package_index"
PACKAGE_MODULES = {"apt", "dnf", "dnf5", "yum", "package", "zypper"}
COMMAND_MODULES = {"command", "shell"}
ROLE_INCLUDES = {"include_role", "import_role"}
TASK_INCLUDES = {"include_tasks", "import_tasks"}
INSTALL_COMMAND = re.compile(r"\b(apt-get|apt|dnf|yum)\b['\",\s]+(?:-\S+['\",\s]+)*install\b")
REFRESH = re.compile(r"\b(update_cache|cache_valid_time|makecache)\b|\bapt(-get)?\b(?:['\",\s]+-\S+)*['\",\s]+update\b")


def short(key: str) -> str:
    """A module's short name: ansible.builtin.apt and apt are both apt."""
    return key.rsplit(".", 1)[-1]


def module_of(task: dict) -> tuple[str, object]:
    """The task's action (short name) and its arguments; ('', None) for anything else."""
    for key, value in task.items():
        name = short(key)
        if name in PACKAGE_MODULES | COMMAND_MODULES | ROLE_INCLUDES | TASK_INCLUDES:
            return name, value
    return "", None


def command_text(args: object) -> str:
    """The command line of a command/shell task, argv lists joined."""
    text = args.get("argv", args.get("cmd", "")) if isinstance(args, dict) else args
    return " ".join(text) if isinstance(text, list) else str(text)


def installs(task: dict) -> bool:
    """True when the task installs packages or asks the package manager about an install."""
    name, args = module_of(task)
    if name in PACKAGE_MODULES and isinstance(args, dict):
        wanted = any(k in args for k in ("name", "pkg", "deb"))
        return wanted and str(args.get("state", "present")) != "absent"
    if name in COMMAND_MODULES:
        return bool(INSTALL_COMMAND.search(command_text(args)))
    return False


@dataclass
class Walk:
    """The state of a walk over the collection's roles: what was reached and what went wrong."""

    roles: Path
    reached: set[Path] = field(default_factory=set)
    violations: list[str] = field(default_factory=list)

    def tasks_file(self, role: str, name: str) -> Path:
        """A role's task file by the name include/import/tasks_from use."""
        base = self.roles / role / "tasks"
        return base / (name if name.endswith((".yml", ".yaml")) else f"{name}.yml")

    def file(self, path: Path, covered: bool, stack: tuple[Path, ...] = ()) -> bool:
        """Walk one task file; returns whether the index was refreshed by its end."""
        if path in stack:
            return covered
        self.reached.add(path)
        for task in yaml.safe_load(path.read_text()) or []:
            covered = self.task(path, task, covered, (*stack, path))
        return covered

    def task(self, path: Path, task: dict, covered: bool, stack: tuple[Path, ...]) -> bool:
        """Visit one task (and what it includes); returns whether the index is refreshed after it."""
        for key in ("block", "rescue", "always"):
            for inner in task.get(key) or []:
                covered = self.task(path, inner, covered, stack)
        name, args = module_of(task)
        if path.parts[-3] == "package_index" and REFRESH.search(yaml.safe_dump(task)):
            return True  # the role's own refresh
        if name in ROLE_INCLUDES:
            role = args["name"]
            if role == INDEX_ROLE:
                return True
            if role.startswith("deepseek.cluster."):
                target = self.tasks_file(role.rsplit(".", 1)[-1], args.get("tasks_from", "main"))
                return self.file(target, covered, stack)
        if name in TASK_INCLUDES:
            return self.include(path, args if isinstance(args, str) else args["file"], covered, stack)
        if installs(task) and not covered:
            self.violations.append(
                f"{path.relative_to(self.roles)}: '{task.get('name', '?')}' installs packages "
                f"before any include of {INDEX_ROLE}"
            )
        return covered

    def include(self, path: Path, name: str, covered: bool, stack: tuple[Path, ...]) -> bool:
        """include/import_tasks: a templated name is every file it can match (each one walked)."""
        tasks_dir = next(p for p in path.parents if p.name == "tasks")
        pattern = re.sub(r"\{\{.*?\}\}", "*", name)
        targets = sorted(tasks_dir.glob(pattern)) or sorted(path.parent.glob(pattern))
        assert targets, f"{path}: include of {name!r} matches no file"
        return all(self.file(target, covered, stack) for target in targets)

    def role(self, role: Path) -> None:
        """Walk a role from its main entry point (meta dependencies on the index count as a refresh)."""
        meta = yaml.safe_load((role / "meta" / "main.yml").read_text()) or {}
        deps = [d if isinstance(d, str) else d.get("role", d.get("name")) for d in meta.get("dependencies") or []]
        self.file(role / "tasks" / "main.yml", INDEX_ROLE in deps)

    def everything(self) -> list[str]:
        """Walk every role, then every task file no walk reached; returns the violations."""
        for role in sorted(p for p in self.roles.iterdir() if (p / "tasks" / "main.yml").is_file()):
            self.role(role)
        for path in sorted(self.roles.glob("*/tasks/*.yml")):
            if path not in self.reached:
                self.file(path, covered=False)
        return self.violations


def test_every_install_comes_after_the_package_index():
    assert Walk(ROOT / "roles").everything() == []


def test_the_walk_reaches_the_installs_it_judges():
    # The check above must be looking at something: the roles that install packages are reached.
    walk = Walk(ROOT / "roles")
    walk.everything()
    installing = {
        path.parts[-3]
        for path in walk.reached
        for task in yaml.safe_load(path.read_text()) or []
        for t in [task, *(task.get("block") or [])]
        if installs(t)
    }
    # The NVIDIA roles install through their shared flow (nvidia_packages); the driver role installs
    # EPEL itself on RHEL.
    assert {"package_index", "nvidia_packages", "nvidia_driver"} <= installing


@pytest.mark.parametrize("role", [r for r in role_dirs() if r.name != "package_index"], ids=lambda r: r.name)
def test_no_role_refreshes_an_index_itself(role):
    hits = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in sorted([*(role / "tasks").glob("*.yml"), *(role / "handlers").glob("*.yml")])
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if REFRESH.search(line) and not line.lstrip().startswith("#")
    ]
    assert hits == []


def flat(tasks: list) -> list[dict]:
    """Tasks with the contents of their blocks, in order."""
    out = []
    for task in tasks or []:
        out.append(task)
        for key in ("block", "rescue", "always"):
            out += flat(task.get(key))
    return out


def refreshes_hosts_index(task: dict) -> bool:
    """A task that refreshes the managed host's own package index."""
    if task.get("delegate_to") in ("localhost", "127.0.0.1"):
        return False
    name, args = module_of(task)
    if name in PACKAGE_MODULES:
        return isinstance(args, dict) and bool(args.get("update_cache") or args.get("cache_valid_time"))
    text = yaml.safe_dump(task)
    own_lists = "Dir::State::Lists" in text
    return name in COMMAND_MODULES and bool(REFRESH.search(command_text(args))) and not own_lists


def test_playbooks_neither_refresh_nor_install():
    # Playbooks compose roles; packages and the index are the roles' business.
    hits = [
        f"{path.relative_to(ROOT)}: {task.get('name')}"
        for path in sorted(ROOT.glob("playbooks/*.yml"))
        for play in yaml.safe_load(path.read_text()) or []
        for key in ("pre_tasks", "tasks", "post_tasks", "handlers")
        for task in flat(play.get(key))
        if installs(task) or refreshes_hosts_index(task)
    ]
    assert hits == []


def test_no_scenario_refreshes_the_hosts_index():
    # A scenario that refreshed the host's lists would hide a role that does not: fixtures are installed with
    # lists of their own (molecule/shared/tasks/fixture-packages.yml). Plays on the controller do not count.
    hits = []
    for path in sorted([*ROOT.glob("roles/*/molecule/**/*.yml"), *ROOT.glob("molecule/**/*.yml")]):
        body = yaml.safe_load(path.read_text()) or []
        if not isinstance(body, list):
            continue
        plays = (
            [body]
            if path.parent.name == "tasks"
            else [p.get("tasks", []) for p in body if p.get("hosts") not in ("localhost", "127.0.0.1")]
        )
        hits += [
            f"{path.relative_to(ROOT)}: {t.get('name')}"
            for tasks in plays
            for t in flat(tasks)
            if refreshes_hosts_index(t)
        ]
    assert hits == []


def test_scenario_check_sees_a_refresh(tmp_path):
    refresh = {"name": "Refresh", "ansible.builtin.apt": {"update_cache": True}}
    own = {"name": "Own lists", "ansible.builtin.shell": "apt-get -o Dir::State::Lists=/x update"}
    assert refreshes_hosts_index(refresh)
    assert refreshes_hosts_index({"name": "Aged", "ansible.builtin.apt": {"cache_valid_time": 60}})
    assert refreshes_hosts_index({"name": "Update", "ansible.builtin.command": {"cmd": "apt-get update"}})
    assert refreshes_hosts_index({"name": "Quiet", "ansible.builtin.command": {"argv": ["apt-get", "-q", "update"]}})
    assert not refreshes_hosts_index(own)
    assert not refreshes_hosts_index(refresh | {"delegate_to": "localhost"})


# The check itself, on roles written for it: it must fail where an install skips the index.
def write_role(base: Path, name: str, tasks: dict[str, list], deps: list | None = None) -> None:
    (base / name / "tasks").mkdir(parents=True)
    (base / name / "meta").mkdir()
    (base / name / "meta" / "main.yml").write_text(yaml.safe_dump({"dependencies": deps or []}))
    for file, body in tasks.items():
        (base / name / "tasks" / file).write_text(yaml.safe_dump(body))


INSTALL = {"name": "Install haproxy", "ansible.builtin.package": {"name": "haproxy", "state": "present"}}
INDEX = {"name": "Refresh", "ansible.builtin.include_role": {"name": INDEX_ROLE}}


def test_check_fails_on_an_install_without_the_index(tmp_path):
    write_role(tmp_path, "bad", {"main.yml": [INSTALL]})
    assert len(Walk(tmp_path).everything()) == 1


def test_check_fails_on_an_install_before_the_index(tmp_path):
    write_role(tmp_path, "late", {"main.yml": [INSTALL, INDEX]})
    assert len(Walk(tmp_path).everything()) == 1


def test_check_follows_templated_includes_and_every_alternative(tmp_path):
    per_os = [{"name": "Per OS", "ansible.builtin.include_tasks": "install-{{ ansible_facts['os_family'] }}.yml"}]
    write_role(
        tmp_path,
        "os",
        {"main.yml": per_os, "install-Debian.yml": [INDEX, INSTALL], "install-RedHat.yml": [{"block": [INSTALL]}]},
    )
    assert [v.split(":")[0] for v in Walk(tmp_path).everything()] == ["os/tasks/install-RedHat.yml"]


def test_check_follows_tasks_from_of_another_role_and_simulations(tmp_path):
    simulate = {"name": "Simulate", "ansible.builtin.command": {"argv": "{{ ['apt-get', 'install', '--simulate'] }}"}}
    shared = {"name": "Shared", "ansible.builtin.include_role": {"name": "deepseek.cluster.lib", "tasks_from": "repo"}}
    write_role(tmp_path, "lib", {"main.yml": [], "repo.yml": [INDEX]})
    write_role(tmp_path, "user", {"main.yml": [shared, simulate]})
    write_role(tmp_path, "early", {"main.yml": [simulate, shared]})
    assert [v.split("/")[0] for v in Walk(tmp_path).everything()] == ["early"]


def test_check_accepts_a_meta_dependency_on_the_index(tmp_path):
    write_role(tmp_path, "dep", {"main.yml": [INSTALL]}, deps=[INDEX_ROLE])
    assert Walk(tmp_path).everything() == []
