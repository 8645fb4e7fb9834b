"""The dashboards and rules read real data from a real worker, and a page gets through.

One worker runs against the session's Kafka broker while the simulator
publishes 3000 events and a lending book of 200 loans over six months, and
the test adds a few malformed messages. Before the traffic an operator
publishes a new detector configuration version (``txwatch rules publish``)
and a broken one is written straight to the configuration topic; after it an
analyst decides two alerts (``txwatch feedback``) and a case tool sends a
record that is not JSON. A real Prometheus scrapes the worker every second
and evaluates the project's rule file; a real Alertmanager runs the
project's configuration, its receivers pointed at a webhook server inside
the test. Then:

* the worker shows the new version in force, the broken one rejected, and
  the analysts' precision of the detector they judged;
* every query of every Grafana panel returns series, with each dashboard's
  template variables filled as Grafana fills them (``label_values`` on live
  data, filtered by the variable's regex);
* every recording rule returns series, and every alerting rule is valid and
  each series selector it reads returns series (most alerts are only true
  under faults, so their full expressions are only checked for validity);
* no rule reports an evaluation error;
* a critical fraud alert raised by the worker goes through the real
  ``TxwatchCriticalAlert`` rule and the real Alertmanager routes to the pager
  receiver, and not to the team webhook; the rejected configuration goes
  through ``TxwatchConfigRejected`` to the team webhook, and not to the pager.

The worker runs with the packaged detector configuration except that
``velocity`` marks every alert critical (``critical_threshold`` equal to its
``threshold``): the simulator's velocity bursts then raise critical alerts
deterministically, instead of relying on a score crossing a high bar.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from detectors.registry import DEFAULT_CONFIG
from streams.localkafka import create_topics
from streams.rules import CONFIG_KEY
from streams.simulate import lending_book
from tests.support.prom import (
    AlertmanagerServer,
    PrometheusServer,
    PromQLError,
    WebhookReceiver,
    dashboard_panels,
    free_port,
    http_get_json,
    prometheus_config,
    read_promql,
    require_tool,
    substitute_grafana_variables,
    wait_until,
)
from tests.support.worker import consume_until, produce, worker_env

pytestmark = [pytest.mark.integration, pytest.mark.prometheus]

REPO = Path(__file__).resolve().parents[2]
RULE_FILES = sorted((REPO / "deploy" / "prometheus" / "rules").glob("*.yml"))
ALERTMANAGER_CONFIG = REPO / "deploy" / "alertmanager" / "alertmanager.yml"
DASHBOARDS = sorted((REPO / "deploy" / "grafana" / "dashboards").glob("*.json"))
#: The example receivers' address in alertmanager.yml, replaced by the test's server.
EXAMPLE_RECEIVER = "http://127.0.0.1:9095"
PAGER_PATH = "/page"
WEBHOOK_PATH = "/alerts"

SIMULATED_EVENTS = 3000
#: The lending book (``txwatch portfolio simulate``): months enough for vintages at 3
#: months on book and a complete previous month, loans enough for the book's limits
#: (100 loans at least) to raise alerts.
BOOK_SEED = 7
BOOK_BORROWERS = 200
BOOK_MONTHS = 6
CONFIG_VERSION = "ops-live-test"
NEXT_CONFIG_VERSION = "ops-live-test-2"
#: The detector the analyst judges: the configuration makes its alerts certain.
JUDGED_DETECTOR = "velocity"
#: Messages the decoder must reject, one per kind of fault, all on the payments topic.
MALFORMED = [b"not json at all", b"[1, 2, 3]", b'{"event_type": "payment"}', b"\xff\xfe\xfd"]
CRITICAL_ALERTS = 'txwatch_alerts_total{severity="critical"}'
FEEDBACK_SERIES = '{__name__=~"txwatch_feedback.*"}'
#: Grafana's $__rate_interval stand-in: long enough to span the whole run.
RATE_INTERVAL = "2m"


def detector_config_with_critical_velocity() -> dict[str, Any]:
    config = copy.deepcopy(DEFAULT_CONFIG)
    velocity = config["detectors"]["velocity"]
    velocity["critical_threshold"] = velocity["threshold"]
    config["version"] = CONFIG_VERSION
    return config


def label_values(prometheus: PrometheusServer, metric: str, label: str) -> list[str]:
    """What Grafana's ``label_values(metric, label)`` offers."""
    query = urlencode({"match[]": metric})
    data = http_get_json(f"{prometheus.url}/api/v1/label/{label}/values?{query}")
    assert data["status"] == "success", data
    values: list[str] = data["data"]
    return values


def grafana_variables(prometheus: PrometheusServer, path: Path) -> tuple[dict[str, str], list[str]]:
    """One dashboard's variables set to "All" over the live values, as Grafana sends them.

    Also returns the variables that offer no value (left out of the values).
    """
    values = {"__rate_interval": RATE_INTERVAL}
    empty = []
    for variable in json.loads(path.read_text())["templating"]["list"]:
        query = variable["query"]
        text = query["query"] if isinstance(query, dict) else query
        match = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", text.strip())
        assert match, f"{path.name}: ${variable['name']} is not a label_values query"
        found = label_values(prometheus, match.group(1), match.group(2))
        if variable.get("regex"):
            # Grafana's variable regex, written /pattern/, keeps the values it matches.
            pattern = re.fullmatch(r"/(.+)/", variable["regex"])
            assert pattern, f"{path.name}: ${variable['name']} regex is not /pattern/"
            found = [value for value in found if re.search(pattern.group(1), value)]
        if not found:
            empty.append(f"{path.name}: ${variable['name']} ({text}) offers no value")
            continue
        # Grafana's escaping: regex metacharacters get a backslash, written
        # doubled inside the PromQL string.
        escaped = (re.escape(value).replace("\\", "\\\\") for value in found)
        values[variable["name"]] = "(" + "|".join(escaped) + ")"
    return values, empty


def panel_queries(path: Path) -> Iterator[tuple[str, str]]:
    for panel in dashboard_panels(json.loads(path.read_text())):
        for target in panel.get("targets", []):
            if target.get("expr"):
                yield f"{path.name}: {panel['title']!r} {target['refId']}", target["expr"]


def panel_problems(prometheus: PrometheusServer) -> list[str]:
    """What keeps a panel of some dashboard from drawing live data; empty when none."""
    problems = []
    for path in DASHBOARDS:
        variables, empty = grafana_variables(prometheus, path)
        problems += empty
        for where, expr in panel_queries(path):
            try:
                query = substitute_grafana_variables(expr, variables)
            except KeyError as exc:  # a variable that offers no value
                problems.append(f"{where}: {exc.args[0]}")
                continue
            problem = returns_data(prometheus, query)
            if problem:
                problems.append(f"{where}: {problem}: {expr}")
    return problems


class Worker:
    """``python -m streams.cli worker`` on a metrics port the test chose, output in a file."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.metrics_url = f"http://127.0.0.1:{env['TXWATCH_METRICS_PORT']}/metrics"
        self.proc: subprocess.Popen[bytes] | None = None

    def _serves_metrics(self) -> bool:
        try:
            with urllib.request.urlopen(self.metrics_url, timeout=2) as response:
                return b"txwatch_worker_info" in response.read()
        except OSError:
            return False

    def __enter__(self) -> Worker:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streams.cli", "worker"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        proc = self.proc
        wait_until(
            lambda: proc.poll() is not None or self._serves_metrics(),
            60,
            f"the worker to serve {self.metrics_url}",
            self.log_tail,
        )
        assert proc.poll() is None, f"the worker exited ({proc.returncode}):\n{self.log_tail()}"
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def returns_data(prometheus: PrometheusServer, expr: str) -> str | None:
    """``None`` when ``expr`` returns series, else what went wrong."""
    try:
        result = prometheus.query(expr)
    except PromQLError as exc:
        return f"refused: {exc}"
    return None if result else "no series"


def page_for(receiver: WebhookReceiver, alertname: str, detector: str) -> dict[str, Any] | None:
    """The alert ``alertname`` of ``detector`` as the pager receiver got it, if it did."""
    for notification in receiver.received():
        if notification.path != PAGER_PATH or notification.body.get("receiver") != "txwatch-pager":
            continue
        for alert in notification.body.get("alerts", []):
            labels = alert.get("labels", {})
            if labels.get("alertname") == alertname and labels.get("detector") == detector:
                return dict(alert)
    return None


def team_notice_for(receiver: WebhookReceiver, alertname: str) -> dict[str, Any] | None:
    """The alert ``alertname`` as the team webhook got it, if it did."""
    for notification in receiver.received():
        if (
            notification.path != WEBHOOK_PATH
            or notification.body.get("receiver") != "txwatch-webhook"
        ):
            continue
        for alert in notification.body.get("alerts", []):
            if alert.get("labels", {}).get("alertname") == alertname:
                return dict(alert)
    return None


def txwatch_cli(env: dict[str, str], *args: str) -> str:
    """Run ``txwatch ARGS`` as an operator would; its standard output."""
    result = subprocess.run(
        [sys.executable, "-m", "streams.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, f"txwatch {' '.join(args)}:\n{result.stdout}{result.stderr}"
    return result.stdout


def alerts_of(detector: str, count: int) -> Any:
    """A ``consume_until`` condition: ``count`` alerts of ``detector`` read."""

    def done(records: list[dict[str, Any]]) -> bool:
        return sum(record.get("detector") == detector for record in records) >= count

    return done


@pytest.fixture
def stack(kafka_bootstrap: str, topic_prefix: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Worker, Alertmanager with a webhook receiver, and Prometheus, all stopped after."""
    prometheus_binary = require_tool("prometheus")
    alertmanager_binary = require_tool("prometheus-alertmanager", "alertmanager")
    config_path = tmp_path / "detectors.json"
    config_path.write_text(json.dumps(detector_config_with_critical_velocity()))
    env = worker_env(
        kafka_bootstrap,
        topic_prefix,
        TXWATCH_DETECTOR_CONFIG=str(config_path),
        TXWATCH_DATA_DIR=str(tmp_path / "worker"),
        TXWATCH_PII_KEY="ops-live-test-key",
        TXWATCH_METRICS_PORT=str(free_port()),
    )
    partitions = int(env["TXWATCH_PARTITIONS"])
    asyncio.run(
        create_topics(
            kafka_bootstrap,
            [
                env["TXWATCH_PAYMENTS_TOPIC"],
                env["TXWATCH_LENDING_TOPIC"],
                env["TXWATCH_ALERT_TOPIC"],
                env["TXWATCH_DEAD_LETTER_TOPIC"],
            ],
            partitions,
        )
    )

    with contextlib.ExitStack() as stack:
        receiver = stack.enter_context(WebhookReceiver())
        am_config = ALERTMANAGER_CONFIG.read_text()
        assert EXAMPLE_RECEIVER in am_config, (
            f"{ALERTMANAGER_CONFIG} no longer uses {EXAMPLE_RECEIVER}; update this test"
        )
        alertmanager = stack.enter_context(
            AlertmanagerServer(
                tmp_path / "alertmanager",
                am_config.replace(EXAMPLE_RECEIVER, receiver.url),
                alertmanager_binary,
            )
        )

        worker = stack.enter_context(Worker(env, tmp_path / "worker.log"))
        target = f"127.0.0.1:{env['TXWATCH_METRICS_PORT']}"
        config = prometheus_config(
            scrape={"txwatch": [target]},
            rule_files=RULE_FILES,
            alertmanagers=[alertmanager.host_port],
            interval="1s",
        )
        prometheus = stack.enter_context(
            PrometheusServer(tmp_path / "prometheus", config, prometheus_binary)
        )
        yield {
            "env": env,
            "worker": worker,
            "prometheus": prometheus,
            "alertmanager": alertmanager,
            "receiver": receiver,
            "tmp_path": tmp_path,
        }


def test_dashboards_rules_and_pager_work_on_live_worker_metrics(
    stack: dict[str, Any], kafka_bootstrap: str
) -> None:
    prometheus: PrometheusServer = stack["prometheus"]
    worker: Worker = stack["worker"]
    receiver: WebhookReceiver = stack["receiver"]
    env: dict[str, str] = stack["env"]
    tmp_path: Path = stack["tmp_path"]

    wait_until(
        lambda: prometheus.query('up{job="txwatch"} == 1'),
        30,
        "Prometheus to scrape the worker",
        lambda: json.dumps(prometheus.targets(), indent=1),
    )

    # A new configuration version published as an operator does, then a broken one
    # written straight to the topic (the command refuses to publish it).
    next_config = detector_config_with_critical_velocity()
    next_config["version"] = NEXT_CONFIG_VERSION
    next_path = tmp_path / "detectors-next.json"
    next_path.write_text(json.dumps(next_config))
    txwatch_cli(env, "rules", "publish", str(next_path))
    broken = copy.deepcopy(next_config)
    broken["version"] = f"{NEXT_CONFIG_VERSION}-broken"
    broken["detectors"]["velocity"]["threshold"] = "high"
    asyncio.run(
        produce(
            kafka_bootstrap,
            env["TXWATCH_CONFIG_TOPIC"],
            [(CONFIG_KEY, json.dumps(broken).encode())],
        )
    )
    wait_until(
        lambda: (
            prometheus.query(f'txwatch_config_info{{version="{NEXT_CONFIG_VERSION}"}} == 1')
            and prometheus.query("txwatch_config_rejected_total == 1")
        ),
        60,
        f"Prometheus to see {NEXT_CONFIG_VERSION} in force and the broken version rejected",
        lambda: (
            f"seen: {prometheus.query('txwatch_config_info')} "
            f"{prometheus.query('txwatch_config_rejected_total')}\n"
            f"worker log:\n{worker.log_tail()}"
        ),
    )

    txwatch_cli(env, "simulate", "--events", str(SIMULATED_EVENTS), "--rate", "1000")
    txwatch_cli(
        env,
        "portfolio",
        "simulate",
        "--seed",
        str(BOOK_SEED),
        "--borrowers",
        str(BOOK_BORROWERS),
        "--months",
        str(BOOK_MONTHS),
    )
    asyncio.run(
        produce(
            kafka_bootstrap,
            env["TXWATCH_PAYMENTS_TOPIC"],
            [(b"ops-live", value) for value in MALFORMED],
        )
    )

    book = lending_book(BOOK_SEED, borrowers=BOOK_BORROWERS, months=BOOK_MONTHS)
    total = SIMULATED_EVENTS + len(book) + len(MALFORMED)
    wait_until(
        lambda: prometheus.query(f'sum(txwatch_events_total{{job="txwatch"}}) >= {total}'),
        120,
        f"Prometheus to see the worker count {total} input messages",
        lambda: (
            f"seen: {prometheus.query('sum(txwatch_events_total)')}\n"
            f"worker log:\n{worker.log_tail()}"
        ),
    )

    # An analyst confirms one alert of a detector and dismisses another; a case
    # tool sends a record that is not JSON.
    alerts = asyncio.run(
        consume_until(kafka_bootstrap, env["TXWATCH_ALERT_TOPIC"], alerts_of(JUDGED_DETECTOR, 2))
    )
    confirmed, dismissed = [a for a in alerts if a["detector"] == JUDGED_DETECTOR][:2]
    txwatch_cli(env, "feedback", confirmed["alert_id"], "true_positive", "--analyst", "ops")
    txwatch_cli(env, "feedback", dismissed["alert_id"], "false_positive", "--analyst", "ops")
    asyncio.run(
        produce(kafka_bootstrap, env["TXWATCH_FEEDBACK_TOPIC"], [(b"ops-live", b"not json")])
    )
    wait_until(
        lambda: (
            prometheus.query(f'txwatch_feedback_precision{{detector="{JUDGED_DETECTOR}"}} == 0.5')
            and prometheus.query(
                'sum(txwatch_feedback_total{disposition=~"true_positive|false_positive"}) == 2'
            )
            and prometheus.query("txwatch_feedback_rejected_total == 1")
        ),
        60,
        f"Prometheus to see {JUDGED_DETECTOR}'s precision at 0.5 and one feedback record rejected",
        lambda: f"seen: {prometheus.query(FEEDBACK_SERIES)}\nworker log:\n{worker.log_tail()}",
    )

    # Recording rules run every second; give each one its first result.
    rules = prometheus.rules()
    assert rules, "Prometheus loaded no rule"
    recordings = [rule for rule in rules if rule["type"] == "recording"]
    # Reported rule by rule below when some never records.
    with contextlib.suppress(TimeoutError):
        wait_until(
            lambda: all(prometheus.query(rule["name"]) for rule in recordings),
            30,
            "every recording rule to record a series",
        )
    # The merged lending book is evaluated every second (and its limits raise their
    # alerts then); reported panel by panel below when some never draws.
    with contextlib.suppress(TimeoutError):
        wait_until(
            lambda: not panel_problems(prometheus),
            60,
            "every panel to draw live data",
        )

    problems = panel_problems(prometheus)

    for rule in prometheus.rules():
        where = f"{rule['type']} rule {rule['name']}"
        if rule.get("health") != "ok":
            problems.append(f"{where}: health {rule.get('health')}: {rule.get('lastError')}")
        if rule["type"] == "recording":
            problem = returns_data(prometheus, rule["query"])
            if problem:
                problems.append(f"{where}: {problem}: {rule['query']}")
            continue
        try:
            prometheus.query(rule["query"])
        except PromQLError as exc:
            problems.append(f"{where}: refused: {exc}")
        for selector in read_promql(rule["query"]).selectors:
            problem = returns_data(prometheus, str(selector))
            if problem:
                problems.append(f"{where}: selector {selector}: {problem}")

    assert not problems, "\n".join(problems)

    # Forced critical by the detector configuration above; other detectors may page too.
    alert = wait_until(
        lambda: page_for(receiver, "TxwatchCriticalAlert", "velocity"),
        90,
        "Alertmanager to page TxwatchCriticalAlert (velocity) to the pager receiver",
        lambda: (
            f"notifications: {receiver.received()}\n"
            f"alerts in Alertmanager: {stack['alertmanager'].alerts()}\n"
            f"critical alerts counted: {prometheus.query(CRITICAL_ALERTS)}"
        ),
    )
    assert alert["status"] == "firing"
    assert alert["labels"]["severity"] == "critical"
    assert alert["annotations"]["summary"].startswith("velocity raised ")
    misrouted = [
        n
        for n in receiver.received()
        if n.path == WEBHOOK_PATH and "TxwatchCriticalAlert" in n.alertnames
    ]
    assert not misrouted, f"critical alert also sent to the team webhook: {misrouted}"

    # The broken configuration is the team's to fix, not worth waking anyone.
    notice = wait_until(
        lambda: team_notice_for(receiver, "TxwatchConfigRejected"),
        90,
        "Alertmanager to send TxwatchConfigRejected to the team webhook",
        lambda: (
            f"notifications: {receiver.received()}\n"
            f"alerts in Alertmanager: {stack['alertmanager'].alerts()}"
        ),
    )
    assert notice["status"] == "firing"
    assert notice["labels"]["severity"] == "warning"
    paged = [
        n
        for n in receiver.received()
        if n.path == PAGER_PATH and "TxwatchConfigRejected" in n.alertnames
    ]
    assert not paged, f"a rejected configuration paged the on-call: {paged}"
