"""The Prometheus side of the tests: the catalogue in docs/metrics.md, the queries of
deploy/prometheus/rules.yml and deploy/grafana/*.json, and a real Prometheus process."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.debian_tools import need
from tests.procs import free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent
CATALOGUE = ROOT / "docs" / "metrics.md"
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS_DIR / "rules.yml"
GRAFANA_DIR = ROOT / "deploy" / "grafana"
# The data source uid deploy/grafana/provisioning/datasources/ gives Prometheus.
DATASOURCE_UID = "schoolfleet-prometheus"

_ROW = re.compile(r"^\| `(schoolfleet_[a-z0-9_]+)` \| (gauge|counter|histogram) \|([^|]*)\|")
_SCHOOLFLEET = re.compile(r"(?<![:\w])schoolfleet_[a-z0-9_]+(?![:\w])")
# level:metric:operations, as rules.yml names what it records.
_RECORDED = re.compile(r"\b[a-z_]+:[a-z0-9_]+:[a-z0-9_]+\b")
# Label matchers hold `=~`, `!=` and quoted text: comparisons are looked for outside them.
_MATCHERS = re.compile(r"(\{[^}]*\})")
_COMPARISON = re.compile(r"(==|!=|>=|<=|>|<)(?!\s*bool\b)")


@dataclass(frozen=True)
class Documented:
    """A metric as docs/metrics.md lists it."""

    # gauge, counter or histogram.
    type: str
    labels: frozenset[str]


def catalogue() -> dict[str, Documented]:
    """The catalogue's metrics by the name a query uses (a counter's with ``_total``)."""
    rows = (_ROW.match(line) for line in CATALOGUE.read_text().splitlines())
    return {
        m[1]: Documented(m[2], frozenset(x.strip() for x in m[3].split(",") if x.strip()))
        for m in rows
        if m
    }


def metric_names(expr: str) -> set[str]:
    """The ``schoolfleet_*`` series an expression reads, as written (``_bucket`` and all)."""
    return set(_SCHOOLFLEET.findall(expr))


def recorded_names(expr: str) -> set[str]:
    """The recording rules' series an expression reads."""
    return set(_RECORDED.findall(expr))


def family(series: str, known: dict[str, Documented]) -> str:
    """The catalogue name a series belongs to: a histogram's ``_bucket`` is its own."""
    for suffix in ("_bucket", "_sum", "_count"):
        base = series.removesuffix(suffix)
        if base != series and base in known and known[base].type == "histogram":
            return base
    return series


def with_bool(expr: str) -> str:
    """An alert's expression with ``bool`` comparisons: instead of only the series in
    trouble, it answers 0 or 1 for every series it watches."""
    parts = _MATCHERS.split(expr)
    return "".join(p if p.startswith("{") else _COMPARISON.sub(r"\1 bool", p) for p in parts)


@dataclass(frozen=True)
class Rule:
    group: str
    name: str
    # "record" or "alert".
    kind: str
    expr: str


def rules() -> list[Rule]:
    """Every rule of deploy/prometheus/rules.yml, in file order."""
    loaded = yaml.safe_load(RULES.read_text())
    found = []
    for group in loaded["groups"]:
        for rule in group["rules"]:
            kind = "record" if "record" in rule else "alert"
            found.append(Rule(group["name"], rule[kind], kind, rule["expr"].strip()))
    return found


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel: str
    ref: str
    expr: str

    def where(self) -> str:
        return f"{self.dashboard} / {self.panel} ({self.ref})"


def dashboards() -> dict[str, dict[str, Any]]:
    """deploy/grafana/*.json by file name."""
    return {p.name: json.loads(p.read_text()) for p in sorted(GRAFANA_DIR.glob("*.json"))}


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel of a dashboard, those inside collapsed rows too."""
    found = []
    for panel in board["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def panel_queries() -> list[PanelQuery]:
    """Every query of every panel of every dashboard."""
    return [
        PanelQuery(board["title"], panel["title"], target["refId"], target["expr"])
        for board in dashboards().values()
        for panel in panels(board)
        for target in panel.get("targets", [])
    ]


def template_queries() -> list[tuple[str, str, str]]:
    """(dashboard, variable, query) of every query variable."""
    return [
        (board["title"], var["name"], var["query"])
        for board in dashboards().values()
        for var in board.get("templating", {}).get("list", [])
        if var["type"] == "query"
    ]


def substitute(expr: str, school: str, rate_interval: str) -> str:
    """What Grafana sends for a panel query: variables replaced by values."""
    out = expr.replace("$__rate_interval", rate_interval)
    return out.replace("${school}", school).replace("$school", school)


def promtool_run(*args: str, cwd: Path = PROMETHEUS_DIR) -> subprocess.CompletedProcess[str]:
    """Runs Debian's promtool (a missing one fails the test, naming its package)."""
    tool = need("promtool", "prometheus")
    return subprocess.run(
        [tool, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def quick_rules(path: Path, wait: str = "1s") -> Path:
    """rules.yml with every alert's ``for:`` set to ``wait``, written to ``path``: a live
    Prometheus checks what the rules compute, promtool's unit tests (rules_test.yml)
    check the shipped ``for:`` values."""
    loaded = yaml.safe_load(RULES.read_text())
    for group in loaded["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = wait
    path.write_text(yaml.safe_dump(loaded, sort_keys=False))
    return path


class PrometheusError(Exception):
    """Prometheus answered a query with an error."""


class Prometheus:
    """Debian's ``prometheus`` on 127.0.0.1, a free port and a temporary TSDB,
    scraping the given targets with deploy/prometheus/prometheus.yml's job every second."""

    def __init__(self, workdir: Path, targets: list[str], rule_file: Path = RULES) -> None:
        self.workdir = workdir
        self.targets = targets
        self.rule_file = rule_file
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.workdir / "prometheus.log"

    def config(self) -> dict[str, Any]:
        """The deployed example, pointed at the test's controller, with 1 s intervals,
        the repository's rules and no Alertmanager."""
        config: dict[str, Any] = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
        config["global"].update(scrape_interval="1s", evaluation_interval="1s")
        config.pop("alerting", None)
        config["rule_files"] = [str(self.rule_file)]
        [job] = config["scrape_configs"]
        job.update(scrape_interval="1s", scrape_timeout="1s")
        job["static_configs"] = [{"targets": self.targets}]
        return config

    def start(self) -> Prometheus:
        binary = need("prometheus", "prometheus")
        config = self.workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(self.config()))
        self.port = free_port()
        argv = [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={self.workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log)
        proc = self.proc

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"prometheus exited {proc.returncode}:\n{self.log_text()}")
            try:
                url = f"http://127.0.0.1:{self.port}/-/ready"
                with urllib.request.urlopen(url, timeout=2) as response:
                    return bool(response.status == 200)
            except OSError:
                return False

        wait_until(ready, 30, "prometheus ready", step=0.2)
        return self

    def stop(self) -> None:
        """SIGTERM by pid; SIGKILL if it is not gone in 20 s."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        finally:
            self.proc = None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    @staticmethod
    def _target(path: str, **params: str) -> str:
        return f"{path}?{urllib.parse.urlencode(params)}" if params else path

    def api(self, path: str, **params: str) -> Any:
        """The ``data`` of an HTTP API answer; PrometheusError if it reports an error."""
        try:
            url = f"http://127.0.0.1:{self.port}{self._target(path, **params)}"
            with urllib.request.urlopen(url, timeout=10) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read() or b"{}")
        if body.get("status") != "success":
            raise PrometheusError(f"{body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result (a vector's samples, or a scalar as one sample)."""
        data = self.api("/api/v1/query", query=expr)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def values(self, expr: str) -> dict[tuple[tuple[str, str], ...], float]:
        """An instant query's samples by their labels (without job, instance and the
        metric's name), sorted: what a panel shows, as numbers."""
        skip = {"job", "instance", "__name__"}
        return {
            tuple(sorted((k, v) for k, v in r["metric"].items() if k not in skip)): float(
                r["value"][1]
            )
            for r in self.query(expr)
        }

    def firing(self) -> set[tuple[str, str]]:
        """(alert name, school or instance) of every firing alert."""
        return {
            (a["labels"]["alertname"], a["labels"].get("school", a["labels"].get("instance", "")))
            for a in self.api("/api/v1/alerts")["alerts"]
            if a["state"] == "firing"
        }

    def names(self) -> set[str]:
        """Every metric name Prometheus holds."""
        return set(self.api("/api/v1/label/__name__/values"))
