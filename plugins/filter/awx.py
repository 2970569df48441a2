# Copyright: deepseek.cluster contributors
# Apache License 2.0 (see LICENSE)
"""Filters of AWX as code (playbooks/awx.yml).

awx_survey: an AWX survey spec generated from argument specs (a playbook's playbooks/specs/<name>.yml and the
roles' meta/argument_specs.yml), one question per variable a job template exposes.

Mapping (AWX has no boolean or list question, and every choice is a string):

- ``str``/``path`` -> ``text``, ``password`` when the option is ``no_log``; with ``choices`` -> ``multiplechoice``
- ``int`` -> ``integer``, ``float`` -> ``float``
- ``bool`` -> ``multiplechoice`` of ``true``/``false`` (the playbooks read such answers through ``| bool``)
- ``list`` with ``choices`` -> ``multiselect`` (its default: the items, one a line)

The playbook's own variables (``options``) keep their spec's default and ``required``. A role's variable
(``role_options``) is asked without a default and never required: AWX passes a survey's default as an extra
variable, which would override the inventory's value on every run; an unanswered question leaves it alone.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping, Sequence

from ansible_collections.deepseek.cluster.plugins.plugin_utils.filter_errors import as_filter_error

# The argument-spec type -> AWX question type, for types without choices.
QUESTION_TYPES = {"str": "text", "path": "text", "int": "integer", "float": "float"}
BOOL_CHOICES = ["true", "false"]
_MARKUP = re.compile(r"\b[CIBVOM]\(([^)]*)\)")


class SurveyError(ValueError):
    """A variable that cannot become an AWX survey question."""


def question_type(name: str, option: Mapping[str, Any]) -> str:
    """The AWX question type of one argument-spec option."""
    kind = option.get("type", "str")
    choices = option.get("choices")
    if kind == "bool":
        return "multiplechoice"
    if kind == "list":
        if not choices:
            raise SurveyError(f"{name}: a list without choices cannot be an AWX survey question")
        return "multiselect"
    if kind not in QUESTION_TYPES:
        raise SurveyError(f"{name}: type {kind} cannot be an AWX survey question")
    if choices:
        if kind != "str":
            raise SurveyError(f"{name}: AWX answers a choice with a string, not the {kind} the spec wants")
        return "multiplechoice"
    if option.get("no_log") and kind in ("str", "path"):
        return "password"
    return QUESTION_TYPES[kind]


def question_choices(option: Mapping[str, Any]) -> list[str] | None:
    """The choices of a multiple-choice question, as the strings AWX passes; None for other questions."""
    if option.get("type") == "bool":
        return list(BOOL_CHOICES)
    choices = option.get("choices")
    if not choices:
        return None
    return [str(choice) for choice in choices]


def has_default(option: Mapping[str, Any]) -> bool:
    """Whether the spec gives a literal default (a template is resolved by the play, not by AWX)."""
    default = option.get("default")
    if default is None:
        return False
    return not (isinstance(default, str) and "{{" in default)


def question_default(name: str, option: Mapping[str, Any]) -> Any:
    """The spec's default in the form AWX wants for the question's type."""
    default = option["default"]
    kind = option.get("type", "str")
    if kind == "bool":
        if not isinstance(default, bool):
            raise SurveyError(f"{name}: the default of a bool is {default!r}")
        return "true" if default else "false"
    if kind == "list":
        return "\n".join(str(item) for item in default)
    if kind == "int":
        if isinstance(default, bool) or not isinstance(default, int):
            raise SurveyError(f"{name}: the default of an int is {default!r}")
        return default
    if kind == "float":
        return float(default)
    return str(default)


def question_description(option: Mapping[str, Any]) -> str:
    """The option's description as plain text (ansible-doc markup removed)."""
    text = option.get("description", "")
    if isinstance(text, (list, tuple)):
        text = " ".join(str(line) for line in text)
    return _MARKUP.sub(r"\1", " ".join(str(text).split()))


def survey_question(name: str, option: Mapping[str, Any], from_role: bool = False) -> dict[str, Any]:
    """One AWX survey question for the variable ``name`` described by ``option``."""
    question: dict[str, Any] = {
        "question_name": name,
        "question_description": question_description(option),
        "variable": name,
        "type": question_type(name, option),
        "required": bool(option.get("required", False)) and not from_role,
    }
    choices = question_choices(option)
    if choices is not None:
        question["choices"] = choices
    if from_role:
        shown = f" (role default: {option['default']})" if has_default(option) else ""
        question["question_description"] += f" Unanswered: the inventory's value{shown}."
    elif has_default(option):
        question["default"] = question_default(name, option)
    return question


def awx_survey(
    options: Mapping[str, Mapping[str, Any]] | None,
    variables: Sequence[str] | None,
    role_options: Mapping[str, Mapping[str, Any]] | None = None,
    name: str = "",
    description: str = "",
) -> dict[str, Any]:
    """The survey spec of a job template exposing ``variables``.

    ``options``: the playbook's argument-spec options (argument_specs.main.options of playbooks/specs/<name>.yml);
    ``role_options``: the options of the roles it applies (meta/argument_specs.yml), merged. A variable in
    neither is an error: every question must be documented and validated somewhere.
    """
    options = options or {}
    role_options = role_options or {}
    spec = []
    for variable in variables or []:
        if variable in options:
            spec.append(survey_question(variable, options[variable]))
        elif variable in role_options:
            spec.append(survey_question(variable, role_options[variable], from_role=True))
        else:
            raise SurveyError(f"{variable}: in no argument spec of the playbook or its roles")
    return {"name": name, "description": description, "spec": spec}


class FilterModule:
    """AWX-as-code filters."""

    def filters(self) -> dict[str, Callable[..., Any]]:
        """Filter name -> function."""
        return {"awx_survey": as_filter_error(awx_survey, (SurveyError,))}
