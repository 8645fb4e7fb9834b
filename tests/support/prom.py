"""Real Prometheus, Alertmanager and a webhook receiver for tests, and a PromQL reader.

Everything here runs on 127.0.0.1 only, on free ports, in a directory the
test owns, and is stopped by the context managers whatever the test does:

* :class:`PrometheusServer` and :class:`AlertmanagerServer` start Debian's
  ``prometheus`` and ``prometheus-alertmanager`` binaries and wait for their
  ``/-/ready`` endpoints;
* :class:`WebhookReceiver` is the HTTP endpoint Alertmanager notifies;
* :func:`read_promql` lists the metric selectors and label names of a PromQL
  expression, so tests can check them against the documented metrics.

Configuration is written as JSON, which is valid YAML: no YAML library needed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self, TypeVar

import pytest

T = TypeVar("T")

#: Debian package that ships each binary, for skip and failure messages.
PACKAGES = {
    "promtool": "prometheus",
    "prometheus": "prometheus",
    "amtool": "prometheus-alertmanager",
    "prometheus-alertmanager": "prometheus-alertmanager",
    "alertmanager": "prometheus-alertmanager",
}


def in_ci() -> bool:
    """Whether this run is CI's (``CI=true``), where a missing tool is a failure."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def require_tool(*names: str) -> str:
    """Path of the first of ``names`` on ``PATH``.

    Absent: the test is skipped on a developer machine, and fails under CI,
    where the Makefile installs Debian's packages and their absence is a bug.
    """
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    package = PACKAGES.get(names[0], names[0])
    message = f"{' or '.join(names)} not found: apt-get install {package}"
    if in_ci():
        pytest.fail(f"{message} (CI=true: the CI setup must install it)", pytrace=False)
    pytest.skip(message)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(
    condition: Callable[[], T | None],
    timeout: float,
    what: str,
    describe: Callable[[], str] | None = None,
) -> T:
    """Poll ``condition`` until it returns something truthy, or fail after ``timeout`` s.

    Returns that value. ``describe`` adds the state seen last to the failure.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            detail = f"\n{describe()}" if describe is not None else ""
            message = f"timed out after {timeout:.0f}s waiting for {what}{detail}"
            raise TimeoutError(message)
        time.sleep(0.2)  # re-check the condition against the deadline


def http_get_json(url: str, timeout: float = 10.0) -> Any:
    """GET ``url`` and decode its JSON body, also for 4xx answers (Prometheus errors)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return json.loads(body)
        except ValueError:
            message = f"GET {url}: HTTP {exc.code}: {body[:500]!r}"
            raise RuntimeError(message) from exc


# -- daemons ----------------------------------------------------------------------------
class _Daemon:
    """A server binary on a free 127.0.0.1 port with its own directory and log."""

    name = "daemon"

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / f"{self.name}.log"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _argv(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def start(self, timeout: float = 60.0) -> None:
        # Another process can take the free port between choosing and binding it;
        # a start that exits at once is retried on a new port.
        for _attempt in range(3):
            self.port = free_port()
            with self.log_path.open("ab") as log:
                self.proc = subprocess.Popen(
                    self._argv(),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    cwd=self.workdir,
                    start_new_session=True,
                )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                if self._ready():
                    return
                time.sleep(0.1)  # polling the readiness endpoint against a deadline
            if self.proc.poll() is None or "address already in use" not in self.log_tail():
                break
        self.stop()
        message = f"{self.name} did not become ready on {self.url}; log tail:\n{self.log_tail()}"
        raise RuntimeError(message)

    def stop(self, timeout: float = 15.0) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class PromQLError(RuntimeError):
    """Prometheus refused a query (syntax or evaluation error)."""


class PrometheusServer(_Daemon):
    """``prometheus`` with a generated configuration (see :func:`prometheus_config`)."""

    name = "prometheus"

    def __init__(self, workdir: Path, config: Mapping[str, Any], binary: str | None = None) -> None:
        super().__init__(binary or require_tool("prometheus"), workdir)
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(json.dumps(config, indent=2))

    def _argv(self) -> list[str]:
        return [
            self.binary,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        body = http_get_json(f"{self.url}/api/v1/{path}{query}")
        if body.get("status") != "success":
            message = f"{path} {params}: {body.get('errorType')}: {body.get('error')}"
            raise PromQLError(message)
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector (or scalar, as one sample) of ``expr`` now."""
        data = self.api("query", query=expr)
        if data["resultType"] in {"scalar", "string"}:
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def rule_groups(self) -> list[dict[str, Any]]:
        groups: list[dict[str, Any]] = self.api("rules")["groups"]
        return groups

    def rules(self) -> list[dict[str, Any]]:
        return [rule for group in self.rule_groups() for rule in group["rules"]]

    def targets(self) -> list[dict[str, Any]]:
        targets: list[dict[str, Any]] = self.api("targets")["activeTargets"]
        return targets


def prometheus_config(
    *,
    scrape: Mapping[str, Sequence[str]] | None = None,
    rule_files: Iterable[Path] = (),
    alertmanagers: Sequence[str] = (),
    interval: str = "1s",
) -> dict[str, Any]:
    """A Prometheus configuration: jobs with static targets, rule files, Alertmanagers."""
    config: dict[str, Any] = {
        "global": {
            "scrape_interval": interval,
            "scrape_timeout": interval,
            "evaluation_interval": interval,
        },
        "rule_files": [str(path.resolve()) for path in rule_files],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": list(targets)}]}
            for job, targets in (scrape or {}).items()
        ],
    }
    if alertmanagers:
        config["alerting"] = {
            "alertmanagers": [{"static_configs": [{"targets": list(alertmanagers)}]}]
        }
    return config


class AlertmanagerServer(_Daemon):
    """``prometheus-alertmanager`` with a configuration file's text, clustering off."""

    name = "alertmanager"

    def __init__(self, workdir: Path, config_text: str, binary: str | None = None) -> None:
        super().__init__(binary or require_tool("prometheus-alertmanager", "alertmanager"), workdir)
        self.config_path = workdir / "alertmanager.yml"
        self.config_path.write_text(config_text)

    @property
    def host_port(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _argv(self) -> list[str]:
        return [
            self.binary,
            f"--config.file={self.config_path}",
            f"--storage.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            # Empty: no gossip port (it would bind 0.0.0.0:9094 and clash).
            "--cluster.listen-address=",
            "--log.level=warn",
        ]

    def alerts(self) -> list[dict[str, Any]]:
        alerts: list[dict[str, Any]] = http_get_json(f"{self.url}/api/v2/alerts")
        return alerts


# -- webhook receiver -------------------------------------------------------------------
@dataclass(frozen=True)
class Notification:
    """One webhook POST from Alertmanager."""

    path: str
    body: dict[str, Any]

    @property
    def alertnames(self) -> set[str]:
        return {a.get("labels", {}).get("alertname", "") for a in self.body.get("alerts", [])}


@dataclass
class WebhookReceiver:
    """An HTTP server on 127.0.0.1 that records every JSON POST it receives."""

    notifications: list[Notification] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def received(self) -> list[Notification]:
        with self._lock:
            return list(self.notifications)

    def start(self) -> WebhookReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = {"unparsed": raw.decode(errors="replace")}
                with receiver._lock:
                    receiver.notifications.append(Notification(self.path, body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                """Silent: the test reads the notifications, not a log."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="webhook-receiver", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- PromQL reading ---------------------------------------------------------------------
AGGREGATIONS = frozenset(
    {
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    }
)
GROUPING = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
KEYWORDS = GROUPING | {"bool", "and", "or", "unless", "atan2", "offset", "inf", "nan"}

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', re.DOTALL)
_DURATION = re.compile(r"(?:\d+(?:ms|[smhdwy]))+")
_NUMBER = re.compile(r"0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_VARIABLE = re.compile(r"\$(?:\{[^}]*\}|[A-Za-z0-9_]+)|\[\[[^\]]*\]\]")
_MATCHER = re.compile(
    r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*("(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`)'
    r"\s*,?"
)


@dataclass(frozen=True)
class Selector:
    """A vector selector: its metric name and its text, label matchers included."""

    metric: str
    text: str

    def __str__(self) -> str:
        return self.text


@dataclass
class PromQLNames:
    """What an expression reads: its selectors and every label name it mentions."""

    selectors: list[Selector] = field(default_factory=list)
    labels: set[str] = field(default_factory=set)

    @property
    def metrics(self) -> set[str]:
        return {s.metric for s in self.selectors}


def _skip_string(expr: str, i: int) -> int:
    match = _STRING.match(expr, i)
    if match is None:
        message = f"unterminated string at {i} in {expr!r}"
        raise ValueError(message)
    return match.end()


def _closing(expr: str, i: int, opening: str, closing: str) -> int:
    """Index just past the bracket that closes the one at ``i``, strings skipped."""
    depth = 0
    while i < len(expr):
        char = expr[i]
        if char in "\"'`":
            i = _skip_string(expr, i)
            continue
        if char == opening:
            depth += 1
        elif char == closing:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    message = f"unbalanced {opening!r} in {expr!r}"
    raise ValueError(message)


def _matchers(text: str, names: PromQLNames) -> str | None:
    """Record the label names of ``{...}`` contents; returns a ``__name__`` equality."""
    metric = None
    position = 0
    text = text.strip()
    while position < len(text):
        match = _MATCHER.match(text, position)
        if match is None:
            message = f"cannot read label matchers {{{text}}}"
            raise ValueError(message)
        label, op, value = match.groups()
        if label == "__name__" and op == "=":
            metric = value[1:-1]
        else:
            names.labels.add(label)
        position = match.end()
    return metric


def read_promql(expr: str) -> PromQLNames:
    """Selectors and label names of a PromQL expression.

    Grafana variables (``$worker``, ``${detector}``, ``$__rate_interval``) are
    skipped, so dashboard queries can be read as they are stored. This is a
    reader, not a validator: Prometheus itself checks the syntax.

    >>> names = read_promql('sum by (reason) (rate(txwatch_dead_letters_total{job="x"}[5m]))')
    >>> [str(s) for s in names.selectors], sorted(names.labels)
    (['txwatch_dead_letters_total{job="x"}'], ['job', 'reason'])
    """
    names = PromQLNames()
    i = 0
    n = len(expr)
    while i < n:
        char = expr[i]
        if char.isspace():
            i += 1
        elif char == "#":
            newline = expr.find("\n", i)
            i = n if newline < 0 else newline
        elif char in "\"'`":
            i = _skip_string(expr, i)
        elif char == "$" or expr.startswith("[[", i):
            match = _VARIABLE.match(expr, i)
            i = match.end() if match else i + 1
        elif char == "[":
            i = _closing(expr, i, "[", "]")
        elif char == "{":
            end = _closing(expr, i, "{", "}")
            metric = _matchers(expr[i + 1 : end - 1], names)
            if metric:
                names.selectors.append(Selector(metric, expr[i:end]))
            i = end
        elif char.isdigit() or (char == "." and i + 1 < n and expr[i + 1].isdigit()):
            match = _DURATION.match(expr, i) or _NUMBER.match(expr, i)
            assert match is not None
            i = match.end()
        elif _IDENT.match(expr, i):
            match = _IDENT.match(expr, i)
            assert match is not None
            word = match.group()
            i = match.end()
            rest = expr[i:].lstrip()
            following = _IDENT.match(rest)
            if word.lower() in GROUPING:
                if rest.startswith("("):
                    start = n - len(rest)
                    end = _closing(expr, start, "(", ")")
                    for label in expr[start + 1 : end - 1].split(","):
                        if label.strip():
                            names.labels.add(label.strip())
                    i = end
            elif word.lower() in KEYWORDS or rest.startswith("("):
                pass  # an operator, a function or an aggregation called right away
            elif word in AGGREGATIONS and following and following.group() in GROUPING:
                pass  # `sum by (...) (...)`
            elif rest.startswith("{"):
                start = n - len(rest)
                end = _closing(expr, start, "{", "}")
                _matchers(expr[start + 1 : end - 1], names)
                names.selectors.append(Selector(word, word + expr[start:end]))
                i = end
            else:
                names.selectors.append(Selector(word, word))
        else:
            i += 1
    return names


# -- Grafana dashboards -----------------------------------------------------------------
def dashboard_panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel of a dashboard, those inside rows included."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def substitute_grafana_variables(expr: str, values: Mapping[str, str]) -> str:
    """``expr`` with ``$name`` and ``${name}`` replaced as Grafana would."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            message = f"no value for Grafana variable ${name} in {expr!r}"
            raise KeyError(message)
        return values[name]

    return re.sub(r"\$\{([A-Za-z0-9_]+)(?::[^}]*)?\}|\$([A-Za-z0-9_]+)", replace, expr)
