"""A rollout's extra vars against the playbook's variables: names, types, who may set
them, size and nesting; and every value marked unsafe for Ansible."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controller.errors import RolloutRefused
from controller.rollouts.playbook_vars import (
    check_extra_vars,
    parse_schema,
    read_schema,
    unsafe,
)

PLAYBOOKS = Path(__file__).resolve().parent.parent / "playbooks"
TIMESYNC = read_schema(PLAYBOOKS, "timesync.yml")
NOTES = parse_schema(
    """
note: {type: str, school_it: true}
level: {type: int, min: 1, max: 5, school_it: true}
mode: {type: str, choices: [fast, slow]}
tags:
  type: list
  max: 3
  items: {type: str, pattern: "[a-z]+"}
  school_it: true
extra:
  type: dict
  values: {type: [str, int, bool, list], items: {type: str}}
""",
    "notes.yml",
)


def refused(text: str, schema: object = TIMESYNC, *, central: bool = False) -> str:
    assert isinstance(schema, type(TIMESYNC))
    with pytest.raises(RolloutRefused) as caught:
        check_extra_vars(text, schema, central=central)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 400, message
    return message


def test_every_playbook_in_the_folder_has_a_schema_that_reads() -> None:
    for playbook in sorted(PLAYBOOKS.glob("*.yml")):
        if playbook.name.endswith(".vars.yml"):
            continue
        schema = read_schema(PLAYBOOKS, playbook.name)
        assert schema.specs, f"{playbook.name} has no {playbook.stem}.vars.yml"


def test_a_playbook_without_a_schema_takes_no_extra_vars(tmp_path: Path) -> None:
    schema = read_schema(tmp_path, "bare.yml")
    assert check_extra_vars("", schema, central=True) == {}
    assert check_extra_vars("{}", schema, central=True) == {}
    message = refused('{"x": 1}', schema, central=True)
    assert message == "extra var 'x' is not a variable of bare.yml; it takes none"


def test_allowed_values_come_back_as_given() -> None:
    text = json.dumps({"sf_ntp_servers": ["ntp1.city.example", "198.18.0.1"]})
    assert check_extra_vars(text, TIMESYNC, central=False) == {
        "sf_ntp_servers": ["ntp1.city.example", "198.18.0.1"]
    }
    both = {"sf_ntp_servers": ["a"], "sf_manage_services": False}
    assert check_extra_vars(json.dumps(both), TIMESYNC, central=True) == both


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ansible_host", "198.18.0.9"),
        ("ansible_port", 2222),
        ("ansible_connection", "local"),
        ("ansible_ssh_common_args", "-o ProxyCommand=sh"),
        ("ansible_python_interpreter", "/bin/sh"),
        ("ansible_become_exe", "sh -c id"),
        ("ANSIBLE_HOST", "x"),
        ("hostvars", {}),
        ("groups", {}),
        ("group_names", []),
        ("inventory_hostname", "x"),
        ("omit", "x"),
        ("playbook_dir", "/"),
        ("role_path", "/"),
        ("environment", {}),
        ("vars", {}),
        ("lookup", "x"),
        ("_private", 1),
    ],
)
def test_ansibles_own_and_connection_variables_are_refused(name: str, value: object) -> None:
    message = refused(json.dumps({name: value}), central=True)
    assert message.startswith(f"extra var {name!r}: Ansible's own"), message


def test_a_schema_cannot_list_ansibles_variables() -> None:
    for name in ("ansible_host", "hostvars", "omit", "_x"):
        with pytest.raises(RolloutRefused, match=name):
            parse_schema(f"{name}: {{type: str}}", "p.yml")


def test_unknown_names_list_what_the_caller_may_set() -> None:
    message = refused('{"sf_ntp_server": ["a"]}')
    assert message == (
        "extra var 'sf_ntp_server' is not a variable of timesync.yml;"
        " it takes sf_ntp_fallback_servers, sf_ntp_servers"
    )
    central = refused('{"sf_ntp_server": ["a"]}', central=True)
    assert "sf_manage_services" in central


def test_school_it_sets_only_what_is_marked_for_it() -> None:
    message = refused('{"sf_manage_packages": false}')
    assert message == "extra var 'sf_manage_packages' of timesync.yml is for central-ops only"
    assert check_extra_vars('{"sf_manage_packages": false}', TIMESYNC, central=True)


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        ("ntp.example", "must be a list"),
        ([], "at least 1 items"),
        ([1], "item 1 must be text"),
        (["{{ lookup('pipe', 'id') }}"], "item 1 must match"),
        (["a"] * 9, "at most 8 items"),
        (["a" * 300], "item 1 must match"),
        ([["a"]], "item 1 must be text"),
    ],
)
def test_values_breaking_the_schema_are_refused_naming_the_variable(
    value: object, needle: str
) -> None:
    message = refused(json.dumps({"sf_ntp_servers": value}))
    assert message.startswith("extra var 'sf_ntp_servers': "), message
    assert needle in message, message


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('{"level": 0}', "'level': must be at least 1, got 0"),
        ('{"level": 6}', "'level': must be at most 5, got 6"),
        ('{"level": true}', "'level': must be a whole number, got True"),
        ('{"level": 1.5}', "'level': must be a whole number"),
        ('{"level": null}', "'level': must be a whole number"),
        ('{"mode": "medium"}', '\'mode\': must be one of "fast", "slow"'),
        ('{"tags": ["ok", "NO"]}', "'tags': item 2 must match [a-z]+"),
        ('{"extra": {"__ansible_unsafe": "x"}}', "'extra': key '__ansible_unsafe' is not"),
        ('{"extra": {"a b": 1}}', "'extra': key 'a b' is not a name"),
        ('{"extra": {"k": {"x": 1}}}', "'extra': key k must be text or a whole number"),
        ('{"note": "' + "x" * 1100 + '"}', "'note': at most 1024 characters"),
        ('{"note": 1, "note": 2}', "'note' is given twice"),
        ('{"level": NaN}', "NaN is not a number JSON allows"),
        ('{"level": ' + "9" * 5000 + "}", "extra vars:"),
        ("[1]", "extra vars must be a mapping"),
        ("{bad", "extra vars are not valid JSON"),
    ],
)
def test_types_bounds_and_choices(text: str, needle: str) -> None:
    assert needle in refused(text, NOTES, central=True)


def test_deep_nesting_is_refused_before_the_parser_sees_it() -> None:
    deep = '{"note": ' + "[" * 30_000 + "]" * 30_000 + "}"
    assert refused(deep, NOTES) == "extra var 'note': nested deeper than 4"
    braces = '{"a": "[[[[[[[[[[", "note": ' + '{"a": ' * 30_000 + "1" + "}" * 30_001
    assert refused(braces, NOTES) == "extra var 'note': nested deeper than 4"
    assert refused("[" * 30_000, NOTES) == "extra vars are nested deeper than 4"


def test_a_large_value_is_refused_naming_it() -> None:
    text = json.dumps({"level": 1, "note": "x" * 900_000, "tags": []})
    message = refused(text, NOTES)
    assert message.startswith(
        "extra var 'note' is 900002 bytes; extra vars are at most 65536 bytes in all, got 900036"
    )


def test_every_string_is_marked_unsafe_at_every_depth() -> None:
    value = {"a": "x", "b": [1, "y", [True, "z"]], "c": {"k": "v", "n": None}}
    assert unsafe(value) == {
        "a": {"__ansible_unsafe": "x"},
        "b": [1, {"__ansible_unsafe": "y"}, [True, {"__ansible_unsafe": "z"}]],
        "c": {"k": {"__ansible_unsafe": "v"}, "n": None},
    }


@given(st.text(max_size=300))
def test_any_text_is_taken_or_refused_in_one_line(text: str) -> None:
    try:
        check_extra_vars(text, NOTES, central=False)
    except RolloutRefused as exc:
        message = str(exc)
    else:
        message = ""
    assert "\n" not in message


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=30,
)


@given(st.dictionaries(st.sampled_from(["note", "level", "tags", "extra", "x"]), json_values))
def test_any_mapping_is_taken_only_when_the_schema_allows_it(value: dict[str, object]) -> None:
    try:
        taken = check_extra_vars(json.dumps(value), NOTES, central=True)
    except RolloutRefused as exc:
        taken, message = value, str(exc)
    else:
        message = ""
        assert set(taken) <= set(NOTES.specs)
    assert taken == value
    assert "\n" not in message
