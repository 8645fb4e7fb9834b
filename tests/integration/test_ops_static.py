"""The monitoring configuration is valid, tested and speaks the worker's metric names.

No broker: ``promtool`` and ``amtool`` check the files, ``promtool test rules``
runs the rule unit tests, and a Prometheus with no targets loads the rules and
parses every dashboard query. Every metric and label name used in the rules
and dashboards must be one ``docs/design.md`` ("Metrics") documents, or a
recording rule's, so a typo fails here instead of drawing an empty panel.

Debian's ``prometheus`` and ``prometheus-alertmanager`` provide the tools;
without them these tests skip on a developer machine and fail under CI.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.prom import (
    PrometheusServer,
    PromQLError,
    dashboard_panels,
    prometheus_config,
    read_promql,
    require_tool,
    substitute_grafana_variables,
)

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
PROMETHEUS_DIR = DEPLOY / "prometheus"
RULE_FILES = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
RULE_TEST_FILES = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
PROMETHEUS_CONFIGS = [PROMETHEUS_DIR / "prometheus.yml", PROMETHEUS_DIR / "prometheus.local.yml"]
ALERTMANAGER_CONFIG = DEPLOY / "alertmanager" / "alertmanager.yml"
DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
DATASOURCES = sorted((DEPLOY / "grafana" / "provisioning" / "datasources").glob("*.yaml"))
DESIGN = REPO / "docs" / "design.md"

#: Values for Grafana's variables when a dashboard query is sent to Prometheus.
GRAFANA_VARIABLES = {"worker": ".*", "detector": ".*", "__rate_interval": "1m"}
#: Labels Prometheus itself adds (target labels, histogram buckets).
PROMETHEUS_LABELS = frozenset({"job", "instance", "le"})
#: Series Prometheus itself produces that the rules and dashboards may use.
PROMETHEUS_SERIES = frozenset({"up"})
#: Alert severities and the Alertmanager receiver each must reach.
RECEIVER_BY_SEVERITY = {"critical": "txwatch-pager", "warning": "txwatch-webhook"}
#: Template variables every dashboard offers, with the query that fills them.
REQUIRED_VARIABLES = {
    "worker": "label_values(txwatch_worker_info, instance)",
    "detector": re.compile(r"label_values\(txwatch_\w+, detector\)"),
}


# -- what the worker documents ----------------------------------------------------------
def _split_top_level(cell: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in cell:
        depth += char == "("
        depth -= char == ")"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return [*parts, current]


def documented_metrics() -> dict[str, tuple[str, set[str]]]:
    """``{name: (type, labels)}`` from the "Metrics" table of docs/design.md."""
    metrics = {}
    for line in DESIGN.read_text().splitlines():
        match = re.match(r"\|\s*`(txwatch_\w+)`\s*\|\s*([\w ()0-9]+?)\s*\|(.*)\|\s*$", line)
        if not match:
            continue
        name, kind, label_cell = match.groups()
        labels = set()
        for part in _split_top_level(label_cell):
            first = re.match(r"\s*`(\w+)`", part)
            if first:
                labels.add(first.group(1))
        metrics[name] = (kind.split()[0], labels)
    return metrics


def documented_series() -> set[str]:
    """Series names the worker exports: histograms add ``_bucket``, ``_sum``, ``_count``."""
    names: set[str] = set()
    for name, (kind, _) in documented_metrics().items():
        if kind == "histogram":
            names.update(f"{name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        else:
            names.add(name)
    return names


def documented_labels() -> set[str]:
    return {label for _, labels in documented_metrics().values() for label in labels}


# -- what the rules and dashboards use -------------------------------------------------
def load_dashboard(path: Path) -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(path.read_text())
    return dashboard


def dashboard_queries() -> Iterator[tuple[str, str]]:
    """``(where, expr)`` for every panel target of every dashboard."""
    for path in DASHBOARDS:
        for panel in dashboard_panels(load_dashboard(path)):
            for target in panel.get("targets", []):
                if target.get("expr"):
                    yield (
                        f"{path.name}: {panel.get('title')!r} {target.get('refId')}",
                        target["expr"],
                    )


def variable_queries() -> Iterator[tuple[str, str, str]]:
    """``(where, metric, label)`` of every ``label_values(metric, label)`` variable."""
    for path in DASHBOARDS:
        for variable in load_dashboard(path).get("templating", {}).get("list", []):
            query = variable.get("query")
            text = query.get("query", "") if isinstance(query, dict) else str(query or "")
            match = re.fullmatch(r"\s*label_values\((\w+),\s*(\w+)\)\s*", text)
            if match:
                yield f"{path.name}: variable ${variable['name']}", match.group(1), match.group(2)


def datasource_uids() -> set[str]:
    uids = set()
    for path in DATASOURCES:
        uids.update(re.findall(r"^\s*uid:\s*(\S+)\s*$", path.read_text(), re.MULTILINE))
    return uids


def rule_unit_test_cases() -> dict[str, set[str]]:
    """``{alertname: {"firing", "quiet"}}`` found in deploy/prometheus/tests.

    Reads the ``alertname:`` / ``exp_alerts:`` pairs of ``alert_rule_test``
    entries as these files write them; promtool itself checks their content.
    """
    cases: dict[str, set[str]] = defaultdict(set)
    for path in RULE_TEST_FILES:
        current = None
        for line in path.read_text().splitlines():
            stripped = line.strip()
            if stripped.startswith("alertname:"):
                current = stripped.split(":", 1)[1].strip()
            elif stripped.startswith("exp_alerts:") and current:
                value = stripped.split(":", 1)[1].strip()
                cases[current].add("quiet" if value == "[]" else "firing")
                current = None
    return cases


def rule_unit_test_exprs() -> list[str]:
    exprs = []
    for path in RULE_TEST_FILES:
        for line in path.read_text().splitlines():
            match = re.match(r"\s*-?\s*expr:\s*(.+)$", line)
            if match:
                exprs.append(match.group(1).strip().strip("'\""))
    return exprs


def run(argv: list[str], cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


# -- fixtures ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def promtool() -> str:
    return require_tool("promtool")


@pytest.fixture(scope="module")
def amtool() -> str:
    return require_tool("amtool")


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    """A Prometheus with the rule files loaded and nothing to scrape."""
    binary = require_tool("prometheus")
    workdir = tmp_path_factory.mktemp("prometheus")
    with PrometheusServer(workdir, prometheus_config(rule_files=RULE_FILES), binary) as server:
        yield server


@pytest.fixture(scope="module")
def rules(prometheus: PrometheusServer) -> list[dict[str, Any]]:
    """Every rule as Prometheus loaded it (``/api/v1/rules``)."""
    loaded = prometheus.rules()
    assert loaded, f"Prometheus loaded no rule from {RULE_FILES}"
    return loaded


def _alerts(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [rule for rule in rules if rule["type"] == "alerting"]


def _recordings(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [rule for rule in rules if rule["type"] == "recording"]


# -- Prometheus -------------------------------------------------------------------------
@pytest.mark.parametrize("config", PROMETHEUS_CONFIGS, ids=lambda p: p.name)
def test_prometheus_configuration_is_valid(promtool: str, config: Path) -> None:
    result = run([promtool, "check", "config", str(config)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_files_are_valid(promtool: str) -> None:
    assert RULE_FILES, "no rule file in deploy/prometheus/rules"
    result = run([promtool, "check", "rules", *map(str, RULE_FILES)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_unit_tests_pass(promtool: str) -> None:
    assert RULE_TEST_FILES, "no rule unit test in deploy/prometheus/tests"
    result = run([promtool, "test", "rules", *map(str, RULE_TEST_FILES)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_quiet_unit_test(rules: list[dict[str, Any]]) -> None:
    cases = rule_unit_test_cases()
    missing = {
        alert["name"]: sorted({"firing", "quiet"} - cases.get(alert["name"], set()))
        for alert in _alerts(rules)
        if cases.get(alert["name"], set()) != {"firing", "quiet"}
    }
    assert not missing, (
        f"alerts without a firing or a quiet case in {PROMETHEUS_DIR / 'tests'}: {missing}"
    )


def test_every_recording_rule_has_a_unit_test(rules: list[dict[str, Any]]) -> None:
    tested = set()
    for expr in rule_unit_test_exprs():
        tested |= read_promql(expr).metrics
    untested = sorted(rule["name"] for rule in _recordings(rules) if rule["name"] not in tested)
    assert not untested, f"recording rules no promql_expr_test evaluates: {untested}"


def test_alerts_say_how_bad_and_quote_their_numbers(rules: list[dict[str, Any]]) -> None:
    problems = []
    for alert in _alerts(rules):
        name, labels, annotations = alert["name"], alert["labels"], alert["annotations"]
        if labels.get("severity") not in RECEIVER_BY_SEVERITY:
            problems.append(f"{name}: severity {labels.get('severity')!r}")
        for key in ("summary", "description"):
            if not annotations.get(key, "").strip():
                problems.append(f"{name}: no {key} annotation")
        if "$value" not in annotations.get("summary", "") + annotations.get("description", ""):
            problems.append(f"{name}: annotations do not quote {{{{ $value }}}}")
    assert not problems, problems


def test_every_alert_links_its_runbook_section(rules: list[dict[str, Any]]) -> None:
    """``runbook_url`` names a heading of docs/operations.md (anchors as Markdown renders them)."""
    headings = re.findall(r"^#+ (.+)$", (REPO / "docs" / "operations.md").read_text(),
                          flags=re.MULTILINE)
    anchors = {re.sub(r"[^a-z0-9 _-]", "", h.strip().lower()).replace(" ", "-")
               for h in headings}
    problems = []
    for alert in _alerts(rules):
        url = alert["annotations"].get("runbook_url", "")
        page, _, anchor = url.partition("#")
        if page != "docs/operations.md" or anchor not in anchors:
            problems.append(f"{alert['name']}: runbook_url {url!r}")
    assert not problems, problems


def test_every_alert_states_its_for_duration() -> None:
    # /api/v1/rules reports an absent `for:` and `for: 0m` alike; the file tells them apart.
    unstated = []
    for path in RULE_FILES:
        blocks = re.split(r"^\s*- (?=alert:|record:)", path.read_text(), flags=re.MULTILINE)
        for block in blocks:
            if block.startswith("alert:") and not re.search(r"^\s*for:\s*\S", block, re.MULTILINE):
                unstated.append(f"{path.name}: {block.split()[1]}")
    assert not unstated, f"alerts without a `for:` line: {unstated}"


# -- Alertmanager -----------------------------------------------------------------------
def test_alertmanager_configuration_is_valid(amtool: str) -> None:
    result = run([amtool, "check-config", str(ALERTMANAGER_CONFIG)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_alertmanager_routes_every_alert_by_its_severity(
    amtool: str, rules: list[dict[str, Any]]
) -> None:
    wrong = []
    for alert in _alerts(rules):
        severity = alert["labels"].get("severity", "")
        labels = [f"alertname={alert['name']}", f"severity={severity}", "detector=velocity"]
        result = run(
            [amtool, "config", "routes", "test", f"--config.file={ALERTMANAGER_CONFIG}", *labels]
        )
        receivers = result.stdout.split()
        expected = RECEIVER_BY_SEVERITY.get(severity)
        if result.returncode != 0 or receivers != [expected]:
            wrong.append(
                f"{alert['name']} ({severity}): {receivers or result.stderr}, expected [{expected}]"
            )
    assert not wrong, wrong


# -- Grafana ----------------------------------------------------------------------------
@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_is_well_formed(path: Path) -> None:
    dashboard = load_dashboard(path)
    uids = datasource_uids()
    assert uids, f"no datasource uid in {DATASOURCES}"
    assert dashboard.get("uid") and dashboard.get("title"), "dashboard needs a uid and a title"
    panels = list(dashboard_panels(dashboard))
    assert panels, "dashboard has no panel"
    problems = []
    ids = [panel.get("id") for panel in panels]
    if len(ids) != len(set(ids)):
        problems.append(f"duplicate panel ids {ids}")
    for panel in panels:
        title = panel.get("title") or f"panel {panel.get('id')}"
        if panel.get("type") == "row":
            continue
        if panel.get("datasource", {}).get("uid") not in uids:
            problems.append(f"{title}: datasource {panel.get('datasource')} is not provisioned")
        targets = panel.get("targets", [])
        if not any(target.get("expr", "").strip() for target in targets):
            problems.append(f"{title}: no target with an expr")
        refs = [target.get("refId") for target in targets]
        if len(refs) != len(set(refs)) or None in refs:
            problems.append(f"{title}: refIds {refs} must be present and distinct")
        if not {"x", "y", "w", "h"} <= set(panel.get("gridPos", {})):
            problems.append(f"{title}: no gridPos")
    variables = {v["name"]: v for v in dashboard.get("templating", {}).get("list", [])}
    for name, expected in REQUIRED_VARIABLES.items():
        variable = variables.get(name)
        if variable is None:
            problems.append(f"no ${name} variable")
            continue
        query = variable.get("query")
        text = query.get("query", "") if isinstance(query, dict) else str(query)
        ok = expected.fullmatch(text) if isinstance(expected, re.Pattern) else text == expected
        if not ok:
            problems.append(f"${name} is filled by {text!r}, expected {expected}")
        if variable.get("datasource", {}).get("uid") not in uids:
            problems.append(f"${name}: datasource is not provisioned")
    assert not problems, problems


def test_dashboard_queries_are_valid_promql(prometheus: PrometheusServer) -> None:
    refused = []
    queries = list(dashboard_queries())
    assert queries
    for where, expr in queries:
        try:
            prometheus.query(substitute_grafana_variables(expr, GRAFANA_VARIABLES))
        except (PromQLError, KeyError) as exc:
            refused.append(f"{where}: {exc}")
    assert not refused, "\n".join(refused)


# -- names ------------------------------------------------------------------------------
def test_design_documents_the_metrics_these_checks_rely_on() -> None:
    # If the table's layout changes, the name checks below would pass vacuously.
    metrics = documented_metrics()
    assert {"txwatch_events_total", "txwatch_alerts_total", "txwatch_worker_info"} <= set(metrics)
    assert metrics["txwatch_alerts_total"][1] == {"detector", "severity"}
    assert metrics["txwatch_event_to_alert_seconds"] == ("histogram", {"detector"})


def test_rules_and_dashboards_use_only_documented_names(rules: list[dict[str, Any]]) -> None:
    known_series = documented_series() | PROMETHEUS_SERIES
    known_series |= {rule["name"] for rule in _recordings(rules)}
    known_labels = documented_labels() | PROMETHEUS_LABELS
    uses = [(f"rule {rule['name']}", rule["query"]) for rule in rules]
    uses += list(dashboard_queries())
    unknown = []
    for where, expr in uses:
        names = read_promql(expr)
        unknown += [f"{where}: metric {m}" for m in sorted(names.metrics - known_series)]
        unknown += [f"{where}: label {label}" for label in sorted(names.labels - known_labels)]
    for where, metric, label in variable_queries():
        if metric not in known_series:
            unknown.append(f"{where}: metric {metric}")
        if label not in known_labels:
            unknown.append(f"{where}: label {label}")
    assert not unknown, "not in docs/design.md (Metrics) nor a recording rule:\n" + "\n".join(
        unknown
    )


def test_every_documented_metric_is_on_a_dashboard() -> None:
    used = set()
    for _, expr in dashboard_queries():
        used |= read_promql(expr).metrics
    used |= {metric for _, metric, _ in variable_queries()}
    missing = []
    for name, (kind, _) in documented_metrics().items():
        series = {f"{name}_bucket", f"{name}_count"} if kind == "histogram" else {name}
        if not series & used:
            missing.append(name)
    assert not missing, f"documented metrics no dashboard shows: {missing}"


# -- the compose stack ------------------------------------------------------------------
def test_compose_stack_refers_to_files_that_exist() -> None:
    compose = (REPO / "docker-compose.yml").read_text()
    mounted = re.findall(r"^\s*-\s*\.\/([^:\s]+):", compose, re.MULTILINE)
    assert mounted, "docker-compose.yml bind-mounts nothing from the repository"
    missing = [path for path in mounted if not (REPO / path).exists()]
    copied = re.findall(r"^COPY\s+(.+?)\s+\S+\s*$", (REPO / "Dockerfile").read_text(), re.MULTILINE)
    missing += [src for line in copied for src in line.split() if not (REPO / src).exists()]
    assert not missing, f"referenced by docker-compose.yml or Dockerfile but absent: {missing}"


def test_compose_prometheus_scrapes_the_compose_workers() -> None:
    compose = (REPO / "docker-compose.yml").read_text()
    workers = set(re.findall(r"^  (worker-\d+):\s*$", compose, re.MULTILINE))
    port = re.search(r'TXWATCH_METRICS_PORT:\s*"?(\d+)"?', compose)
    assert workers and port, "docker-compose.yml defines no worker-N service with a metrics port"
    targets = set(re.findall(r'"([\w-]+:\d+)"', (PROMETHEUS_DIR / "prometheus.yml").read_text()))
    expected = {f"{worker}:{port.group(1)}" for worker in workers}
    assert expected <= targets, f"prometheus.yml scrapes {sorted(targets)}, not {sorted(expected)}"
