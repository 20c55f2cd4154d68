"""deploy/prometheus/ passes Debian's promtool: the rules load, their unit tests pass,
every alert is unit-tested, and the example configuration is valid."""

from __future__ import annotations

import yaml

from tests.prom import PROMETHEUS_DIR, promtool_run, rules


def test_promtool_accepts_the_rules() -> None:
    done = promtool_run("check", "rules", "rules.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules())} rules found" in done.stdout


def test_the_rules_unit_tests_pass() -> None:
    done = promtool_run("test", "rules", "rules_test.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    tests = yaml.safe_load((PROMETHEUS_DIR / "rules_test.yml").read_text())["tests"]
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    alerts = {r.name for r in rules() if r.kind == "alert"}
    assert alerts - firing == set(), "alerts never tested firing"
    assert alerts - quiet == set(), "alerts never tested staying quiet"


def test_every_alert_says_what_and_what_to_do() -> None:
    loaded = yaml.safe_load((PROMETHEUS_DIR / "rules.yml").read_text())
    for group in loaded["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
                assert rule["annotations"]["summary"], rule["alert"]
                assert len(rule["annotations"]["description"]) > 80, rule["alert"]


def test_the_example_configuration_is_valid() -> None:
    done = promtool_run("check", "config", "prometheus.yml")
    assert done.returncode == 0, done.stdout + done.stderr
