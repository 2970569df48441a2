"""AWX survey questions generated from argument specs (plugins/filter/awx.py)."""

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.deepseek.cluster.plugins.filter.awx import FilterModule, SurveyError, awx_survey

PLAYBOOK = {
    "site_name": {"description": ["The site, C(primary) or another."], "type": "str", "required": True},
    "batch": {"description": "Nodes at once.", "type": "int", "default": 1},
    "ratio": {"description": "A share.", "type": "float", "default": 0.5},
    "restart": {"description": "Restart.", "type": "bool", "default": False},
    "mode": {"description": "Mode.", "type": "str", "choices": ["same", "canary"], "default": "same"},
    "apis": {
        "description": "APIs.",
        "type": "list",
        "elements": "str",
        "choices": ["a", "b", "c"],
        "default": ["a", "c"],
    },
    "secret": {"description": "A secret.", "type": "str", "no_log": True},
    "where": {"description": "A path.", "type": "path", "default": "/run/x.sock"},
    "version": {"description": "Optional.", "type": "int"},
    "templated": {"description": "Derived.", "type": "str", "default": "{{ inventory_hostname }}"},
}
ROLE = {
    "role_timeout": {"description": "Seconds.", "type": "int", "default": 1800},
    "role_mode": {"description": "How.", "type": "str", "choices": ["install", "verify"], "default": "install"},
    "role_required": {"description": "Needed.", "type": "str", "required": True},
}


def question(variable, options=PLAYBOOK, roles=None):
    return awx_survey(options, [variable], roles)["spec"][0]


@pytest.mark.parametrize(
    ("variable", "kind"),
    [
        ("site_name", "text"),
        ("batch", "integer"),
        ("ratio", "float"),
        ("restart", "multiplechoice"),
        ("mode", "multiplechoice"),
        ("apis", "multiselect"),
        ("secret", "password"),
        ("where", "text"),
        ("version", "integer"),
    ],
)
def test_each_spec_type_becomes_its_question_type(variable, kind):
    assert question(variable)["type"] == kind


def test_a_playbook_variable_keeps_its_default_and_required():
    assert question("site_name") == {
        "question_name": "site_name",
        "question_description": "The site, primary or another.",
        "variable": "site_name",
        "type": "text",
        "required": True,
    }
    assert question("batch")["default"] == 1
    assert question("batch")["required"] is False
    assert question("ratio")["default"] == 0.5
    assert question("where")["default"] == "/run/x.sock"


def test_choices_and_defaults_are_strings_as_awx_passes_them():
    assert question("restart")["choices"] == ["true", "false"]
    assert question("restart")["default"] == "false"
    assert question("mode")["choices"] == ["same", "canary"]
    assert question("mode")["default"] == "same"
    # A multiselect's default: the items, one a line.
    assert question("apis")["choices"] == ["a", "b", "c"]
    assert question("apis")["default"] == "a\nc"


def test_no_default_where_the_spec_has_none_or_a_template():
    assert "default" not in question("version")
    assert "default" not in question("secret")
    assert "default" not in question("templated")


def test_a_role_variable_has_no_default_and_is_never_required():
    # AWX would pass a default as an extra variable on every run, overriding the inventory's value.
    timeout = question("role_timeout", {}, ROLE)
    assert "default" not in timeout
    assert timeout["required"] is False
    assert timeout["type"] == "integer"
    assert timeout["question_description"] == "Seconds. Unanswered: the inventory's value (role default: 1800)."
    assert question("role_required", {}, ROLE)["required"] is False
    assert question("role_mode", {}, ROLE)["choices"] == ["install", "verify"]


def test_the_playbook_spec_wins_over_a_role_spec_of_the_same_name():
    assert question("batch", PLAYBOOK, {"batch": {"type": "str", "default": "x"}})["default"] == 1


def test_questions_keep_the_order_asked_and_the_survey_its_name():
    survey = awx_survey(PLAYBOOK, ["mode", "batch"], None, name="deepseek x", description="does x")
    assert survey["name"] == "deepseek x"
    assert survey["description"] == "does x"
    assert [q["variable"] for q in survey["spec"]] == ["mode", "batch"]
    assert awx_survey(PLAYBOOK, [])["spec"] == []


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"type": "list", "elements": "str"}, "a list without choices"),
        ({"type": "dict"}, "type dict cannot"),
        ({"type": "raw"}, "type raw cannot"),
        ({"type": "int", "choices": [1, 2]}, "not the int"),
    ],
)
def test_what_a_survey_cannot_ask_is_refused(option, message):
    with pytest.raises(SurveyError, match=message):
        awx_survey({"x": option}, ["x"])


def test_a_variable_in_no_spec_is_refused():
    with pytest.raises(SurveyError, match="nowhere: in no argument spec"):
        awx_survey(PLAYBOOK, ["nowhere"], ROLE)


def test_a_default_of_the_wrong_type_is_refused():
    with pytest.raises(SurveyError, match="the default of a bool"):
        awx_survey({"x": {"type": "bool", "default": "yes"}}, ["x"])
    with pytest.raises(SurveyError, match="the default of an int"):
        awx_survey({"x": {"type": "int", "default": "3"}}, ["x"])


def test_the_filter_raises_ansibles_filter_error():
    survey = FilterModule().filters()["awx_survey"]
    assert survey(PLAYBOOK, ["batch"])["spec"][0]["default"] == 1
    with pytest.raises(AnsibleFilterError, match="in no argument spec"):
        survey(PLAYBOOK, ["nowhere"])
