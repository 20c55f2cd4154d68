"""docs/metrics.md is the catalogue of what the controller exports: every exported
``schoolfleet_*`` metric is in it with its type and labels, and everything in it that
the controller's code has is exported; the rules read only catalogued metrics."""

from __future__ import annotations

import re
import urllib.request
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from tests.procs import Controller
from tests.prom import ROOT, RULES, catalogue, family, metric_names, recorded_names, rules

# Issue 9's metrics, catalogued before their code lands. Each is required to be
# exported as soon as the controller's code names it, so nothing here needs removing.
PENDING = frozenset(
    {
        "schoolfleet_access_points",
        "schoolfleet_servers",
        "schoolfleet_access_points_unseen",
        "schoolfleet_probe_duration_seconds",
        "schoolfleet_school_uplink_mbps",
        "schoolfleet_uplink_checks_total",
    }
)
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? ")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="')


def exported(text: str) -> dict[str, tuple[str, set[str]]]:
    """/metrics' ``schoolfleet_*`` families as a query names them: type and label names.
    prometheus_client's ``NAME_created`` companions are part of their counter or
    histogram, not families of their own."""
    types: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE schoolfleet_"):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
    for name in [n for n in types if n.endswith("_created")]:
        base = name.removesuffix("_created")
        if types.get(f"{base}_total") == "counter" or types.get(base) == "histogram":
            del types[name]
    labels: dict[str, set[str]] = defaultdict(set)
    for line in text.splitlines():
        sample = _SAMPLE.match(line)
        if sample is None or not sample[1].startswith("schoolfleet_"):
            continue
        name = sample[1]
        for suffix in ("_bucket", "_sum", "_count"):
            if types.get(name.removesuffix(suffix)) == "histogram":
                name = name.removesuffix(suffix)
        if name in types:
            labels[name] |= set(_LABEL.findall(sample[2] or "")) - {"le"}
    return {name: (kind, labels[name]) for name, kind in types.items()}


def _named_in_code(name: str) -> bool:
    """Whether the controller's code registers a metric of this name."""
    literal = f'"{name.removesuffix("_total")}"'
    sources = (ROOT / "controller").rglob("*.py")
    return any(literal in path.read_text() for path in sources)


@pytest.mark.e2e
def test_the_catalogue_lists_what_the_controller_exports(tmp_path: Path) -> None:
    c = Controller(tmp_path).start()
    try:
        url = f"http://127.0.0.1:{c.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            families = exported(response.read().decode())
    finally:
        c.stop()
    known = catalogue()
    assert "schoolfleet_devices" in families and "schoolfleet_rollouts" in families

    undocumented = sorted(set(families) - set(known))
    assert undocumented == [], "exported but not in docs/metrics.md"
    for name, (kind, labels) in families.items():
        assert kind == known[name].type, f"{name} is a {kind}, docs/metrics.md says otherwise"
        # Families without samples yet show no labels; those with show all of theirs.
        assert labels <= known[name].labels, f"{name} has labels {sorted(labels)}"

    missing = set(known) - set(families)
    in_code = sorted(n for n in missing if _named_in_code(n))
    assert in_code == [], "in the controller's code and docs/metrics.md, but not exported"
    assert missing <= PENDING, "in docs/metrics.md, but neither exported nor pending"


def test_rules_read_only_catalogued_metrics() -> None:
    known = catalogue()
    recorded = {r.name for r in rules() if r.kind == "record"}
    for rule in rules():
        names = {family(n, known) for n in metric_names(rule.expr)}
        assert names <= set(known), f"{rule.name}: not in docs/metrics.md"
        assert recorded_names(rule.expr) <= recorded, f"{rule.name} reads an unrecorded series"
        assert names or recorded_names(rule.expr) or rule.expr.startswith("up{"), rule.name


def test_the_catalogue_gives_every_metric_its_labels_and_budget() -> None:
    known = catalogue()
    assert len(known) >= 27
    text = (ROOT / "docs" / "metrics.md").read_text()
    for name, entry in known.items():
        for label in entry.labels:
            assert f"`{label}`" in text, f"{name}: label {label} has no values listed"
    assert "2,000 schools" in text
    # No label may name a device, access point, lesson or anything else without bound.
    unbounded = {"device", "device_id", "ap", "ap_id", "host", "lesson", "rollout", "user"}
    # The one exception: the newest 50 unfinished rollouts' own gauges, gone when they end.
    per_rollout = {n for n, e in known.items() if "rollout" in e.labels}
    assert per_rollout == {
        "schoolfleet_rollout_info",
        "schoolfleet_rollout_progress",
        "schoolfleet_rollout_waiting_hosts",
    }
    assert all(known[n].type == "gauge" for n in per_rollout)
    assert "the newest 50 unfinished rollouts" in text
    for name, entry in known.items():
        allowed = unbounded - {"rollout"} if name in per_rollout else unbounded
        assert not (entry.labels & allowed), name


def test_the_catalogue_gives_every_alert_its_for_and_why() -> None:
    text = (ROOT / "docs" / "metrics.md").read_text()
    section = text.split("## Alerts: when each fires, and why that soon")[1]
    cells = [line.split("|")[1:5] for line in section.splitlines() if line.startswith("| ")]
    documented = {c[0].strip(): c[1].strip().strip("`") for c in cells[1:]}
    shipped = yaml.safe_load(RULES.read_text())
    alerts = {
        r["alert"]: r.get("for", "none")
        for g in shipped["groups"]
        for r in g["rules"]
        if "alert" in r
    }
    assert documented == alerts, "docs/metrics.md's alerts and their for: differ from rules.yml"
    assert all(len(c[3].strip()) > 40 for c in cells[1:]), "each for: needs its reason"
