"""deploy/grafana/ is loadable as provisioned: every dashboard names the provisioned data
source, defines the variables it uses, and asks only valid PromQL over catalogued
metrics. (Grafana is not packaged for Debian; tests/test_e2e_prometheus.py runs each
query against a real Prometheus.)"""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.prom import (
    DATASOURCE_UID,
    GRAFANA_DIR,
    catalogue,
    dashboards,
    family,
    metric_names,
    panel_queries,
    panels,
    promtool_run,
    recorded_names,
    rules,
    substitute,
)

BOARDS = {"city-overview.json", "school.json", "lessons.json", "rollouts.json"}


def test_the_four_dashboards_are_there_with_unique_ids() -> None:
    boards = dashboards()
    assert set(boards) == BOARDS
    assert len({b["uid"] for b in boards.values()}) == len(boards)
    for name, board in boards.items():
        ids = [p["id"] for p in panels(board)]
        assert len(ids) == len(set(ids)), f"{name}: panel ids repeat"
        assert "schoolfleet" in board["tags"], name


def test_every_panel_uses_the_provisioned_data_source() -> None:
    provisioned = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "datasources" / "schoolfleet.yaml").read_text()
    )
    [source] = provisioned["datasources"]
    assert (source["uid"], source["type"]) == (DATASOURCE_UID, "prometheus")
    for name, board in dashboards().items():
        for panel in panels(board):
            if panel["type"] == "row":
                continue
            assert panel["targets"], f"{name} / {panel['title']}: no query"
            for where in (panel, *panel["targets"]):
                assert where["datasource"]["uid"] == DATASOURCE_UID, f"{name} / {panel['title']}"
        for var in board["templating"]["list"]:
            assert var["datasource"]["uid"] == DATASOURCE_UID, f"{name} / ${var['name']}"


def test_the_dashboard_folder_is_provisioned() -> None:
    provider = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "dashboards" / "schoolfleet.yaml").read_text()
    )
    [entry] = provider["providers"]
    assert entry["type"] == "file" and entry["options"]["path"]


def test_variables_used_are_defined() -> None:
    for name, board in dashboards().items():
        defined = {var["name"] for var in board["templating"]["list"]}
        for query in panel_queries():
            if query.dashboard != board["title"]:
                continue
            used = "school" if "$school" in query.expr or "${school}" in query.expr else None
            assert used is None or used in defined, f"{name}: {query.where()} uses ${used}"


def test_panels_read_only_catalogued_metrics() -> None:
    known = catalogue()
    recorded = {r.name for r in rules() if r.kind == "record"}
    for query in panel_queries():
        names = {family(n, known) for n in metric_names(query.expr)}
        reads = recorded_names(query.expr)
        # Besides catalogued and recorded series, Prometheus's own `up` is all a panel reads.
        assert names or reads or 'up{job="schoolfleet-controller"}' in query.expr, query.where()
        assert names <= set(known), f"{query.where()}: not in docs/metrics.md"
        assert reads <= recorded, f"{query.where()}: reads a series rules.yml does not record"


def test_the_school_dashboard_takes_several_schools_and_all() -> None:
    [var] = dashboards()["school.json"]["templating"]["list"]
    assert (var["name"], var["multi"], var["includeAll"], var["allValue"]) == (
        "school",
        True,
        True,
        ".+",
    )
    for query in panel_queries():
        if query.dashboard == "SchoolFleet: one school":
            # A regex match: several schools are sent as (a|b), All as .+
            assert 'school=~"$school"' in query.expr, query.where()
            assert 'school="$school"' not in query.expr, query.where()


# Units a count is never shown in; every other panel shows whole numbers.
_NOT_COUNTS = {"percentunit", "s", "Mbits", "ops", "reqps"}


def test_counts_are_whole_numbers() -> None:
    for name, board in dashboards().items():
        for panel in panels(board):
            if panel["type"] == "row" or not panel["title"]:
                continue
            defaults = panel["fieldConfig"]["defaults"]
            exprs = " ".join(t["expr"] for t in panel["targets"])
            counting = "lesson" in exprs or "schoolfleet_devices" in exprs
            if counting and defaults.get("unit") not in _NOT_COUNTS and panel["type"] != "table":
                assert defaults.get("decimals") == 0, f"{name} / {panel['title']}"
            for override in panel["fieldConfig"]["overrides"]:
                props = {p["id"]: p["value"] for p in override["properties"]}
                if props.get("unit") == "short":
                    assert props.get("decimals") == 0, f"{name} / {panel['title']}"


def test_every_panel_query_is_valid_promql(tmp_path: Path) -> None:
    # promtool parses rule expressions: each query, variables filled in, as a recording rule.
    queries = panel_queries()
    records = [
        {"record": f"panel:query_{i}:check", "expr": substitute(q.expr, "1234", "2m")}
        for i, q in enumerate(queries)
    ]
    for rule in records:
        assert "$" not in rule["expr"], f"an unknown variable left in {rule['expr']}"
    path = tmp_path / "panels.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": records}]}))
    done = promtool_run("check", "rules", str(path), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
