"""How good are the detectors? ``txwatch evaluate`` (live) and ``txwatch backtest`` (offline).

Both score alerts against labelled events and print the same table.

Scoring
-------
A labelled event carries the name of the scenario it belongs to (the
simulator's ``label``; see :data:`streams.simulate.SCENARIOS`).

* An **incident** is the labelled events of one scenario on one account (or
  sharing an ``incident`` id, when the labels carry one). It starts at its
  first labelled event.
* An alert is a **true positive** for scenario *S* when one of its
  ``event_ids`` is labelled *S* and its detector is *S*'s expected detector.
  A label that is not a registered scenario is taken as a detector name when
  it is one, else any detector's alert on it counts (a team's own history
  labelled ``fraud``, say).
* **Recall** of a scenario: its incidents with at least one true-positive
  alert, over its incidents.
* **Precision** of a detector: its true-positive alerts over all its alerts
  (alerts deduplicated by ``alert_id``). A detector no scenario expects (the
  global anomaly model) has no true positives by construction: its precision
  is shown as ``-``.
* **Detection delay**: event time of the first true-positive alert of an
  incident (the ``occurred_at`` of its triggering event) minus the incident's
  first labelled event time; the median over detected incidents. It measures
  how much of an incident a detector needs to see, not the worker's speed.
* **Processing latency** (``evaluate`` only): the alert's ``detected_at``
  minus the wall-clock time its triggering event was handed to the producer,
  median per detector. Traffic published as fast as possible queues up in
  front of the worker, so this includes the backlog; pass ``--rate`` for a
  steady-state figure.

With a labels CSV (``event_id,label,pattern,group``, as ``txwatch import-csv
--labels-out`` writes) the scoring is :func:`score_labelled`'s instead: any
detector counts for any pattern, recall is per group and per event, and
precision and alerts per 1,000 events are per detector and overall.

``txwatch backtest FILE`` runs a JSON Lines history through the detector code
the worker runs (:class:`streams.pipeline.Monitor`, with a plain ``dict`` of
account states), offline, in file order and at full speed; labels come from
each line's ``label`` field or from ``--labels FILE`` (the simulator's labels
file). The derived stages (money flow, identity, project) run in line: each
event's records for them, and the records those stages send on, are
processed before the next event, as if their topics had no lag.

``txwatch evaluate`` generates the simulator's traffic with every scenario,
publishes it to topics of its own on ``TXWATCH_BROKER`` (or a broker it
starts, ``--local-broker``), runs a real ``txwatch worker`` on them, waits
until it has caught up, and scores what the worker published. Caught up,
from the worker's ``/metrics``: every input event counted in
``txwatch_events_total``, ``txwatch_consumer_lag`` at 0 on every partition of
the input topics **and** of the derived stages' internal topics (flow,
identity, project) for :data:`LAG_SETTLE_SECONDS`, and no new alert on the
alert topic for :data:`QUIET_SECONDS`. The stage topics matter: the flow
stage's relays can keep a worker busy long after the last input event, and
its alerts only come then. Progress lines show the stage lag while waiting;
``--timeout`` ends the wait with an error naming the topics still behind.
Its topics are deleted afterwards unless ``--keep-topics``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Final

import orjson
from aiokafka.partitioner import murmur2

from detectors.registry import DEFAULT_CONFIG, DETECTORS, STAGE_DETECTORS
from streams.codec import parse_occurred_at
from streams.rejects import RejectedLine, describe_rejected, numbered_lines

if TYPE_CHECKING:
    from streams.sensors import Sensor
    from streams.settings import Settings
    from streams.simulate import Producer

log = logging.getLogger(__name__)

Progress = Callable[[str], None]

#: Expected detector of a label that names no scenario and no detector: any detector.
ANY_DETECTOR: Final = "*"
#: Seconds without a new alert, once every event is processed, before ``evaluate`` scores.
QUIET_SECONDS: Final = 3.0
#: Seconds every input and stage partition must read lag 0 before ``evaluate`` scores: the
#: worker refreshes the gauge every ``LAG_INTERVAL_SECONDS`` (5 s), so a 0 read earlier may
#: predate the last records; one refresh inside this window makes it current.
LAG_SETTLE_SECONDS: Final = 6.0
PROGRESS_EVERY: Final = 2.0
METRICS_LINE: Final = re.compile(rb"metrics on (http://\S+/metrics)")


def progress_to_stderr(line: str) -> None:
    """A progress line on stderr, flushed (the long commands share it)."""
    print(line, file=sys.stderr, flush=True)


# -- inputs ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LabelledEvent:
    """One labelled event: the ground truth."""

    event_id: str
    scenario: str
    account_id: str
    occurred_at: datetime
    incident: str | None = None

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> LabelledEvent | None:
        """From an event with a ``label`` or a labels-file line (``scenario``); else ``None``."""
        scenario = record.get("scenario", record.get("label"))
        event_id = record.get("event_id")
        account_id = record.get("account_id")
        occurred_at = record.get("occurred_at")
        if not (isinstance(scenario, str) and scenario and isinstance(event_id, str)
                and isinstance(account_id, str) and isinstance(occurred_at, str)):
            return None
        try:
            moment = parse_occurred_at(occurred_at)
        except ValueError:
            return None
        incident = record.get("incident")
        return cls(event_id, scenario, account_id, moment,
                   incident if isinstance(incident, str) and incident else None)


@dataclass(frozen=True, slots=True)
class ScoredAlert:
    """What scoring needs of an alert."""

    alert_id: str
    detector: str
    event_ids: tuple[str, ...]
    occurred_at: datetime
    #: seconds from the triggering event's publication to the alert (``evaluate`` only)
    latency_seconds: float | None = None
    #: 0-based index in the history of the input event being processed when the alert
    #: was raised (``backtest`` only)
    position: int | None = None

    @classmethod
    def from_record(cls, record: Mapping[str, Any],
                    published_at: Mapping[str, float] | None = None) -> ScoredAlert | None:
        """From an alert as published (``alert.schema.json``); ``None`` when unusable."""
        try:
            event_ids = tuple(str(e) for e in record["event_ids"])
            occurred = parse_occurred_at(str(record["occurred_at"]))
            alert = cls(str(record["alert_id"]), str(record["detector"]), event_ids, occurred)
        except (KeyError, TypeError, ValueError):
            return None
        if published_at is not None and event_ids and event_ids[0] in published_at:
            try:
                detected = parse_occurred_at(str(record["detected_at"]))
            except (KeyError, ValueError):
                return alert
            latency = max(0.0, detected.timestamp() - published_at[event_ids[0]])
            alert = ScoredAlert(alert.alert_id, alert.detector, event_ids, occurred, latency)
        return alert


def expected_detector(label: str) -> str:
    """The detector that should catch events labelled ``label`` (see the module docstring)."""
    from streams.simulate import scenario_named

    scenario = scenario_named(label)
    if scenario is not None:
        return scenario.expected_detector
    return label if label in DETECTORS or label in STAGE_DETECTORS else ANY_DETECTOR


@dataclass(frozen=True, slots=True)
class GroupLabel:
    """One labelled event of a labels CSV (``event_id,label,pattern,group``)."""

    event_id: str
    pattern: str
    group: str


#: Columns a labels CSV must have (``txwatch import-csv --labels-out`` writes them).
LABEL_CSV_COLUMNS: Final = ("event_id", "label", "pattern", "group")


def is_label_csv(path: Path) -> bool:
    """Whether ``path`` is a labels CSV rather than a JSON Lines labels file."""
    with path.open("rb") as source:
        for line in source:
            if line.strip():
                return not line.lstrip().startswith(b"{")
    return False


def load_label_csv(path: Path) -> list[GroupLabel]:
    """The rows of a labels CSV whose ``label`` is ``1`` (or ``true``).

    An empty ``pattern`` is ``labelled``; an empty ``group`` is
    ``<pattern>:<event_id>`` (the event is a group of its own).

    Raises
    ------
    ValueError
        When a column is missing, with the columns found.
    """
    import csv

    labels = []
    with path.open(newline="", encoding="utf-8-sig") as source:
        reader = csv.DictReader(source)
        missing = [c for c in LABEL_CSV_COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            message = (f"{path}: a labels CSV needs the columns {','.join(LABEL_CSV_COLUMNS)}; "
                       f"missing {', '.join(missing)}")
            raise ValueError(message)
        for row in reader:
            event_id = (row.get("event_id") or "").strip()
            if not event_id or (row.get("label") or "").strip() not in ("1", "true", "True"):
                continue
            pattern = (row.get("pattern") or "").strip() or "labelled"
            group = (row.get("group") or "").strip() or f"{pattern}:{event_id}"
            labels.append(GroupLabel(event_id, pattern, group))
    return labels


# -- scoring --------------------------------------------------------------------------------


@dataclass(slots=True)
class ScenarioRow:
    scenario: str
    expected_detector: str
    incidents: int
    detected: int
    labelled_events: int
    recall: float | None
    median_delay_seconds: float | None
    median_latency_seconds: float | None = None


@dataclass(slots=True)
class DetectorRow:
    detector: str
    alerts: int
    true_positives: int
    #: alerts on an event labelled with a scenario this detector is not expected to catch
    other_labelled: int
    #: whether some scenario expects this detector (else precision is not meaningful)
    expected: bool
    precision: float | None
    median_delay_seconds: float | None
    median_latency_seconds: float | None = None


@dataclass(slots=True)
class Evaluation:
    """The table both commands print, and its JSON form."""

    mode: str
    scenarios: list[ScenarioRow]
    detectors: list[DetectorRow]
    events: int = 0
    alerts: int = 0
    dead_letters: int = 0
    config_version: str | None = None
    elapsed_seconds: float | None = None
    notes: list[str] = field(default_factory=list)
    #: the alerts scored against a labels CSV (``--labels FILE.csv``), else ``None``
    labelled: LabelReport | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def dumps(self) -> bytes:
        return orjson.dumps(self.as_dict(), option=orjson.OPT_INDENT_2)

    def table(self) -> str:
        return render_table(self)


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def score(labels: Iterable[LabelledEvent], alerts: Iterable[ScoredAlert], *,
          detectors: Iterable[str] = (), mode: str = "backtest") -> Evaluation:
    """Precision, recall and delays of ``alerts`` against ``labels``.

    Parameters
    ----------
    labels
        The labelled events.
    alerts
        The alerts raised; repeated ``alert_id`` s count once.
    detectors
        Detectors to list even when they raised nothing (the configuration's).
    mode
        ``backtest`` or ``evaluate``, shown in the table.

    Examples
    --------
    >>> from datetime import UTC
    >>> t = datetime(2024, 3, 4, tzinfo=UTC)
    >>> labels = [LabelledEvent("e1", "velocity_burst", "a1", t),
    ...           LabelledEvent("e2", "velocity_burst", "a2", t)]
    >>> alerts = [ScoredAlert("x1", "velocity", ("e1",), t),
    ...           ScoredAlert("x2", "velocity", ("e9",), t)]
    >>> result = score(labels, alerts)
    >>> result.scenarios[0].recall, result.detectors[0].precision
    (0.5, 0.5)
    """
    # event_id -> (scenario, incident key); incident key -> first labelled time
    label_of: dict[str, tuple[str, tuple[str, str]]] = {}
    incident_start: dict[tuple[str, str], datetime] = {}
    incidents_of: dict[str, set[tuple[str, str]]] = defaultdict(set)
    labelled_events: dict[str, int] = defaultdict(int)
    for label in labels:
        key = (label.scenario, label.incident or f"account:{label.account_id}")
        label_of[label.event_id] = (label.scenario, key)
        first = incident_start.get(key)
        if first is None or label.occurred_at < first:
            incident_start[key] = label.occurred_at
        incidents_of[label.scenario].add(key)
        labelled_events[label.scenario] += 1

    unique: dict[str, ScoredAlert] = {}
    for alert in alerts:
        unique.setdefault(alert.alert_id, alert)

    per_detector: dict[str, list[ScoredAlert]] = defaultdict(list)
    true_positives: dict[str, int] = defaultdict(int)
    other_labelled: dict[str, int] = defaultdict(int)
    # incident -> (delay of its first true-positive alert, that alert)
    detected: dict[tuple[str, str], tuple[float, ScoredAlert]] = {}
    for alert in unique.values():
        per_detector[alert.detector].append(alert)
        hit = False
        on_label = False
        for event_id in alert.event_ids:
            found = label_of.get(event_id)
            if found is None:
                continue
            on_label = True
            scenario, key = found
            wanted = expected_detector(scenario)
            if wanted not in (alert.detector, ANY_DETECTOR):
                continue
            hit = True
            delay = max(0.0, (alert.occurred_at - incident_start[key]).total_seconds())
            if key not in detected or delay < detected[key][0]:
                detected[key] = (delay, alert)
        if hit:
            true_positives[alert.detector] += 1
        elif on_label:
            other_labelled[alert.detector] += 1

    scenario_rows: list[ScenarioRow] = []
    delays_by_detector: dict[str, list[float]] = defaultdict(list)
    for scenario in sorted(incidents_of):
        keys = incidents_of[scenario]
        found_delays = [detected[k][0] for k in keys if k in detected]
        latencies = [lat for k in keys if k in detected
                     for lat in [detected[k][1].latency_seconds] if lat is not None]
        for k in keys:
            if k in detected:
                delays_by_detector[detected[k][1].detector].append(detected[k][0])
        scenario_rows.append(ScenarioRow(
            scenario=scenario, expected_detector=expected_detector(scenario),
            incidents=len(keys), detected=len(found_delays),
            labelled_events=labelled_events[scenario],
            recall=len(found_delays) / len(keys) if keys else None,
            median_delay_seconds=_median(found_delays),
            median_latency_seconds=_median(latencies),
        ))

    expected = {row.expected_detector for row in scenario_rows}
    detector_rows: list[DetectorRow] = []
    for detector in sorted(set(detectors) | set(per_detector)):
        raised = per_detector.get(detector, [])
        is_expected = detector in expected or ANY_DETECTOR in expected
        latencies = [a.latency_seconds for a in raised if a.latency_seconds is not None]
        detector_rows.append(DetectorRow(
            detector=detector, alerts=len(raised), true_positives=true_positives[detector],
            other_labelled=other_labelled[detector], expected=is_expected,
            precision=(true_positives[detector] / len(raised)) if raised and is_expected else None,
            median_delay_seconds=_median(delays_by_detector.get(detector, [])),
            median_latency_seconds=_median(latencies),
        ))
    return Evaluation(mode=mode, scenarios=scenario_rows, detectors=detector_rows,
                      alerts=len(unique))


# -- scoring against a labels CSV ----------------------------------------------------------

#: A group counts as caught early when an alert names it by its this-many-th event.
EARLY_EVENTS: Final = 3


@dataclass(slots=True)
class PatternRow:
    """How the alerts cover one labelled pattern of a labels CSV."""

    pattern: str
    groups: int
    #: groups with at least one event named by an alert of any detector
    caught: int
    group_recall: float | None
    #: groups named by an alert raised by the time their third event was processed
    caught_first_3: int
    first_3_share: float | None
    labelled_events: int
    #: labelled events named by an alert
    named_events: int
    event_recall: float | None
    #: groups caught, by a detector naming one of their events
    caught_by: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class LabelledDetectorRow:
    """One detector's alerts against a labels CSV."""

    detector: str
    alerts: int
    alerts_per_1000: float | None
    #: alerts naming at least one labelled event
    on_labelled: int
    precision: float | None


@dataclass(slots=True)
class LabelReport:
    """Alerts scored against a labels CSV: per pattern, per detector and overall."""

    events: int
    alerts: int
    alerts_per_1000: float | None
    on_labelled: int
    precision: float | None
    labelled_events: int
    #: labelled event ids that are not in the history
    missing_events: int
    patterns: list[PatternRow]
    detectors: list[LabelledDetectorRow]


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _per_1000(alerts: int, events: int) -> float | None:
    return 1000 * alerts / events if events else None


def score_labelled(labels: Iterable[GroupLabel], alerts: Iterable[ScoredAlert], *,
                   events: int, history: Mapping[str, tuple[int, datetime]],
                   detectors: Iterable[str] = ()) -> LabelReport:
    """Pattern recall and detector precision of ``alerts`` against a labels CSV.

    Any detector's alert counts for any pattern: a third party's pattern names
    are not detector names.

    Parameters
    ----------
    labels
        The labelled events, with their pattern and group.
    alerts
        The alerts raised; repeated ``alert_id`` s count once.
    events
        Events in the history, for alerts per 1,000 events.
    history
        ``(position, occurred_at)`` by event id for the labelled events found in
        the history: the order that decides a group's first three events. An
        alert with a ``position`` is early when it is at most the third event's
        position, else when its ``occurred_at`` is at most the third event's.
    detectors
        Detectors to list even when they raised nothing.

    Examples
    --------
    >>> from datetime import UTC
    >>> t = datetime(2024, 3, 4, tzinfo=UTC)
    >>> labels = [GroupLabel(f"e{n}", "burst", "g1") for n in range(1, 6)]
    >>> history = {f"e{n}": (n, t) for n in range(1, 6)}
    >>> alerts = [ScoredAlert("x1", "velocity", ("e5",), t, position=5),
    ...           ScoredAlert("x2", "velocity", ("e9",), t, position=9)]
    >>> report = score_labelled(labels, alerts, events=1000, history=history)
    >>> row = report.patterns[0]
    >>> row.group_recall, row.first_3_share, row.event_recall, report.precision
    (1.0, 0.0, 0.2, 0.5)
    """
    group_of: dict[str, tuple[str, str]] = {}
    members: dict[tuple[str, str], list[str]] = defaultdict(list)
    for label in labels:
        if label.event_id in group_of:
            continue
        key = (label.pattern, label.group)
        group_of[label.event_id] = key
        members[key].append(label.event_id)
    # the group's third event (or its last, when it has fewer) in the history's order
    early_by: dict[tuple[str, str], tuple[int, datetime]] = {}
    for key, event_ids in members.items():
        found = sorted(history[e] for e in event_ids if e in history)
        if found:
            early_by[key] = found[min(EARLY_EVENTS, len(found)) - 1]

    unique: dict[str, ScoredAlert] = {}
    for alert in alerts:
        unique.setdefault(alert.alert_id, alert)
    raised: dict[str, int] = defaultdict(int)
    on_labelled: dict[str, int] = defaultdict(int)
    named: set[str] = set()
    caught_by: dict[tuple[str, str], set[str]] = defaultdict(set)
    early: set[tuple[str, str]] = set()
    for alert in unique.values():
        raised[alert.detector] += 1
        hit = False
        for event_id in alert.event_ids:
            member = group_of.get(event_id)
            if member is None:
                continue
            hit = True
            named.add(event_id)
            caught_by[member].add(alert.detector)
            limit = early_by.get(member)
            if limit is not None and (alert.position <= limit[0] if alert.position is not None
                                      else alert.occurred_at <= limit[1]):
                early.add(member)
        if hit:
            on_labelled[alert.detector] += 1

    patterns: list[PatternRow] = []
    for pattern in sorted({key[0] for key in members}):
        keys = [key for key in members if key[0] == pattern]
        event_ids = [e for key in keys for e in members[key]]
        caught = [key for key in keys if key in caught_by]
        by_detector: dict[str, int] = defaultdict(int)
        for key in caught:
            for detector in caught_by[key]:
                by_detector[detector] += 1
        first_3 = sum(key in early for key in keys)
        named_here = sum(e in named for e in event_ids)
        patterns.append(PatternRow(
            pattern=pattern, groups=len(keys), caught=len(caught),
            group_recall=_ratio(len(caught), len(keys)), caught_first_3=first_3,
            first_3_share=_ratio(first_3, len(keys)), labelled_events=len(event_ids),
            named_events=named_here, event_recall=_ratio(named_here, len(event_ids)),
            caught_by=dict(sorted(by_detector.items(), key=lambda item: (-item[1], item[0]))),
        ))
    detector_rows = [
        LabelledDetectorRow(detector=name, alerts=raised[name],
                            alerts_per_1000=_per_1000(raised[name], events),
                            on_labelled=on_labelled[name],
                            precision=_ratio(on_labelled[name], raised[name]))
        for name in sorted(set(detectors) | set(raised))
    ]
    total_on_labelled = sum(on_labelled.values())
    return LabelReport(
        events=events, alerts=len(unique), alerts_per_1000=_per_1000(len(unique), events),
        on_labelled=total_on_labelled, precision=_ratio(total_on_labelled, len(unique)),
        labelled_events=len(group_of), missing_events=sum(e not in history for e in group_of),
        patterns=patterns, detectors=detector_rows)


# -- the table ------------------------------------------------------------------------------


def format_duration(seconds: float | None) -> str:
    """``6.2 s``, ``21 s``, ``12.5 min``, ``3.2 h``, ``3.0 d``; ``-`` for none.

    Examples
    --------
    >>> format_duration(6.24), format_duration(21.34), format_duration(750)
    ('6.2 s', '21 s', '12.5 min')
    >>> format_duration(259_300), format_duration(None)
    ('3.0 d', '-')
    """
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    if seconds < 7_200:
        return f"{seconds / 60:.1f} min"
    if seconds < 172_800:
        return f"{seconds / 3_600:.1f} h"
    return f"{seconds / 86_400:.1f} d"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def render_table(result: Evaluation) -> str:
    """The per-scenario and per-detector tables of an evaluation."""
    live = result.mode == "evaluate"
    head = f"{result.mode}: {result.events:,} events, {result.alerts:,} alerts"
    if result.dead_letters:
        head += f", {result.dead_letters:,} dead letters"
    if result.config_version:
        head += f", config {result.config_version}"
    if result.elapsed_seconds and live:
        head += f", {result.elapsed_seconds:.1f} s end to end (worker start included)"
    elif result.elapsed_seconds:
        rate = result.events / result.elapsed_seconds
        head += f", {result.elapsed_seconds:.1f} s ({rate:,.0f} events/s)"
    if result.labelled is not None:
        return "\n".join([head, "", render_labelled(result.labelled),
                          *(f"note: {note}" for note in result.notes)])
    lines = [head, ""]
    latency_head = "  median latency" if live else ""
    lines.append(f"{'scenario':22} {'expected detector':20} {'incidents':>9} {'detected':>8} "
                 f"{'recall':>7} {'median delay':>13}{latency_head}")
    for row in result.scenarios:
        latency = f"  {format_duration(row.median_latency_seconds):>14}" if live else ""
        lines.append(f"{row.scenario:22} {row.expected_detector:20} {row.incidents:>9,} "
                     f"{row.detected:>8,} {_share(row.recall):>7} "
                     f"{format_duration(row.median_delay_seconds):>13}{latency}")
    lines.append("")
    lines.append(f"{'detector':22} {'alerts':>8} {'true pos.':>9} {'other lbl.':>10} "
                 f"{'precision':>9} {'median delay':>13}{latency_head}")
    for d in result.detectors:
        latency = f"  {format_duration(d.median_latency_seconds):>14}" if live else ""
        precision = _share(d.precision) if d.expected else "n/a"
        lines.append(f"{d.detector:22} {d.alerts:>8,} {d.true_positives:>9,} "
                     f"{d.other_labelled:>10,} {precision:>9} "
                     f"{format_duration(d.median_delay_seconds):>13}{latency}")
    lines.append("")
    lines.append("recall: incidents (labelled events of a scenario on one account) with an alert "
                 "of the expected detector; precision: that detector's alerts on its scenarios' "
                 "events over all its alerts; delay: event time from an incident's first "
                 "labelled event to the alert" + ("; latency: event published to alert "
                                                  "detected, wall clock." if live else "."))
    if any(not d.expected for d in result.detectors):
        lines.append("n/a: no scenario expects this detector, so none of its alerts can be a "
                     "true positive here.")
    lines.extend(f"note: {note}" for note in result.notes)
    return "\n".join(lines)


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _percent(value: float | None) -> str:
    """Like ``_share``, with two decimals below 1%, so 1 alert in 3,309 is not ``0.0%``.

    Examples
    --------
    >>> _percent(1 / 3309), _percent(0.5), _percent(0.0), _percent(None)
    ('0.03%', '50.0%', '0.0%', '-')
    """
    if value is not None and 0 < value < 0.01:
        return f"{100 * value:.2f}%"
    return _share(value)


def render_labelled(report: LabelReport) -> str:
    """The per-pattern and per-detector tables of alerts scored against a labels CSV."""
    lines = [f"{report.alerts:,} alerts on {report.events:,} events: "
             f"{_rate(report.alerts_per_1000)} per 1,000 events; precision "
             f"{_percent(report.precision)} (alerts naming a labelled event: "
             f"{report.on_labelled:,}); {report.labelled_events:,} labelled events", ""]
    lines.append(f"{'pattern':22} {'groups':>6} {'caught':>6} {'group recall':>12} "
                 f"{'first 3':>7} {'events':>6} {'named':>6} {'event recall':>12}  caught by")
    for row in report.patterns:
        by = ", ".join(f"{name} {count}" for name, count in row.caught_by.items()) or "-"
        lines.append(f"{row.pattern:22} {row.groups:>6,} {row.caught:>6,} "
                     f"{_percent(row.group_recall):>12} {_percent(row.first_3_share):>7} "
                     f"{row.labelled_events:>6,} {row.named_events:>6,} "
                     f"{_percent(row.event_recall):>12}  {by}")
    lines.append("")
    lines.append(f"{'detector':22} {'alerts':>8} {'per 1,000':>9} {'on labelled':>11} "
                 f"{'precision':>9}")
    for d in report.detectors:
        lines.append(f"{d.detector:22} {d.alerts:>8,} {_rate(d.alerts_per_1000):>9} "
                     f"{d.on_labelled:>11,} {_percent(d.precision):>9}")
    lines.append(f"{'all detectors':22} {report.alerts:>8,} {_rate(report.alerts_per_1000):>9} "
                 f"{report.on_labelled:>11,} {_percent(report.precision):>9}")
    lines.append("")
    lines.append("A group is caught when an alert of any detector names one of its events "
                 "(event_ids); first 3: named by an alert raised by the time the group's third "
                 "event (in the history's order) was processed; event recall: labelled events "
                 "named by an alert; precision: alerts naming at least one labelled event over "
                 "all alerts.")
    if report.missing_events:
        lines.append(f"note: {report.missing_events:,} labelled events are not in the history; "
                     "they count as missed.")
    return "\n".join(lines)


# -- backtest -------------------------------------------------------------------------------


def load_labels(path: Path) -> list[LabelledEvent]:
    """Labels from a JSON Lines file: the simulator's labels file, or labelled events."""
    labels = []
    with path.open("rb") as source:
        for line in source:
            if not line.strip():
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(record, dict):
                label = LabelledEvent.from_record(record)
                if label is not None:
                    labels.append(label)
    return labels


def history_positions(path: Path, labels: Iterable[GroupLabel]) -> dict[str, tuple[int, datetime]]:
    """``(line index, occurred_at)`` of the labelled events in a JSON Lines history."""
    wanted = {label.event_id for label in labels}
    found: dict[str, tuple[int, datetime]] = {}
    for position, raw in enumerate(_lines(path)):
        with contextlib.suppress(orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            record = orjson.loads(raw)
            event_id = record["event_id"]
            if event_id in wanted and event_id not in found:
                found[event_id] = (position, parse_occurred_at(str(record["occurred_at"])))
    return found


def _lines(path: Path) -> Iterator[bytes]:
    with path.open("rb") as source:
        for line in source:
            raw = line.rstrip(b"\r\n")
            if raw.strip():
                yield raw


def input_partition(key: bytes | None, partitions: int) -> int:
    """The partition Kafka's default partitioner (murmur2, as aiokafka's and Java's) gives ``key``.

    A line without an account id (a dead letter to be) goes to partition 0;
    live, the producer picks one at random.

    >>> input_partition(b"acct-1", 1), input_partition(None, 4)
    (0, 0)
    >>> sorted({input_partition(f"acct-{i}".encode(), 4) for i in range(100)})
    [0, 1, 2, 3]
    """
    if key is None or partitions <= 1:
        return 0
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def backtest(path: Path, config: Mapping[str, Any] | None = None, *,
             settings: Settings | None = None, labels: Iterable[LabelledEvent] | None = None,
             group_labels: Sequence[GroupLabel] | None = None,
             alerts_out: BinaryIO | None = None,
             progress: Progress | None = None,
             sensor: Sensor | None = None,
             rejected: list[RejectedLine] | None = None) -> Evaluation:
    """Run a JSON Lines history through the monitor offline and score its alerts.

    Parameters
    ----------
    path
        One event per line, in the order to process (as ``txwatch replay`` reads it).
    config
        Detector configuration; default :func:`streams.rules.detector_config`.
    settings
        For the PII key and message size limit (default: from the environment).
        In development mode the demo configuration's blacklist lists the
        simulator's people under the development key.
    labels
        Ground truth; default the ``label`` field of the lines.
    group_labels
        A labels CSV's rows (:func:`load_label_csv`): scored per pattern and
        group into ``Evaluation.labelled`` (:func:`score_labelled`).
    alerts_out
        Receives every alert as JSON Lines, the record the worker publishes.
    progress
        Called with a line of text about every 2 s.
    sensor
        Observability hooks for the monitor and the derived stages
        (``txwatch calibrate`` records every score with one).
    rejected
        Receives each dead-lettered line's number, reason and detail.

    Each line goes to the input topic and partition ``txwatch replay`` would
    send it to (``settings.partitions``, Kafka's default partitioner on the
    account id), with that partition's own offsets: the global models and
    alert budgets, one per input partition, see what a worker's see.
    """
    from streams.codec import Decoder
    from streams.pipeline import Monitor
    from streams.rules import build_rules, detector_config
    from streams.settings import Settings
    from streams.simulate import route_line
    from streams.stages import FLOW, STAGES, build_stages, stage_deriver
    from streams.state import AccountState

    settings = settings or Settings.from_env()
    if config is None:
        config = detector_config(settings)
    rules = build_rules(config, STAGES)
    decoder = Decoder(pii_key=settings.hashing_key(),
                      max_message_bytes=settings.max_message_bytes,
                      clear_dead_letter_payload=settings.dead_letter_clear_payload)
    # The derived stages run in line: each event's records go through their stage
    # (and the records that stage sends on, a flow relay wave) before the next event,
    # as if every internal topic were one partition consumed without lag.
    stages = build_stages(rules.stages, rules.version, sensor)
    stage_states: dict[str, dict[bytes, Any]] = {name: {} for name in stages}
    stage_offsets = dict.fromkeys(stages, -1)
    derive = stage_deriver(stages, stage_states.get(FLOW)) if stages else None
    monitor = Monitor(decoder, rules.account, rules.version, sensor=sensor, derive=derive)
    states: dict[bytes, AccountState] = {}
    found_labels: list[LabelledEvent] = []
    alerts: list[ScoredAlert] = []
    events = dead_letters = stage_records = 0
    wanted = {label.event_id for label in group_labels or ()}
    history: dict[str, tuple[int, datetime]] = {}
    partitions = settings.partitions
    next_offset: dict[tuple[str, int], int] = defaultdict(int)
    started = last_report = time.monotonic()
    for offset, (line_number, raw) in enumerate(numbered_lines(path)):
        events += 1
        if labels is None and b'"label"' in raw:
            with contextlib.suppress(orjson.JSONDecodeError):
                record = orjson.loads(raw)
                if isinstance(record, dict):
                    label = LabelledEvent.from_record(record)
                    if label is not None:
                        found_labels.append(label)
        topic, key, _ = route_line(raw, settings)
        partition = input_partition(key, partitions)
        position = next_offset[topic, partition]
        next_offset[topic, partition] = position + 1
        outcome = monitor.process(raw, states, topic=topic, partition=partition,
                                  offset=position)
        if outcome.dead_letter is not None:
            dead_letters += 1
            if rejected is not None:
                rejected.append(RejectedLine(line_number, outcome.dead_letter.reason,
                                             outcome.dead_letter.detail))
        elif outcome.event is not None and outcome.event.event_id in wanted:
            history.setdefault(outcome.event.event_id, (offset, outcome.event.occurred_at))
        found = list(outcome.alerts)
        pending = deque(outcome.forwards)
        while pending:
            forward = pending.popleft()
            stage_records += 1
            stage_offsets[forward.stage] += 1
            done = stages[forward.stage].process(
                forward.dumps(), stage_states[forward.stage], offset=stage_offsets[forward.stage])
            found.extend(done.alerts)
            pending.extend(f for f in done.forwards if f.stage in stages)
        for alert in found:
            alerts.append(ScoredAlert(alert.alert_id, alert.detector, alert.event_ids,
                                      alert.occurred_at, position=offset))
            if alerts_out is not None:
                alerts_out.write(alert.dumps() + b"\n")
        if progress is not None and events % 4096 == 0:
            now = time.monotonic()
            if now - last_report >= PROGRESS_EVERY:
                last_report = now
                progress(f"backtest: {events:,} events, {len(alerts):,} alerts, "
                         f"{events / (now - started):,.0f} events/s")
    elapsed = time.monotonic() - started
    detectors = [a.name for a in rules.account]
    detectors += [a.name for alerters in rules.stages.values() for a in alerters]
    result = score(found_labels if labels is None else labels, alerts,
                   detectors=detectors, mode="backtest")
    result.events, result.dead_letters = events, dead_letters
    result.config_version, result.elapsed_seconds = rules.version, elapsed
    if group_labels is not None:
        result.labelled = score_labelled(group_labels, alerts, events=events, history=history,
                                         detectors=detectors)
    if stage_records:
        result.notes.append(f"{stage_records:,} derived-stage records processed in line "
                            f"({', '.join(sorted(stages))})")
    _note_shared_accounts(result)
    return result


def _note_shared_accounts(result: Evaluation) -> None:
    from streams.simulate import SCENARIOS

    if any(row.scenario == "fund_segregation" for row in result.scenarios) and \
            "fund_segregation" in SCENARIOS:
        result.notes.append(
            "fund_segregation incidents reuse the simulator's few escrow accounts, so without "
            "an incident id in the labels they merge into one incident per escrow account")


# -- evaluate -------------------------------------------------------------------------------


class _RecordingProducer:
    """The simulator's producer, noting when each event was handed to it."""

    def __init__(self, inner: Producer, published_at: dict[str, float]) -> None:
        self.inner = inner
        self.published_at = published_at

    async def start(self) -> None:
        await self.inner.start()

    async def stop(self) -> None:
        await self.inner.stop()

    async def flush(self) -> None:
        await self.inner.flush()

    async def send(self, topic: str, value: bytes | None = None,
                   key: bytes | None = None) -> asyncio.Future[Any]:
        future = await self.inner.send(topic, value=value, key=key)
        if value is not None:
            with contextlib.suppress(orjson.JSONDecodeError, KeyError, TypeError):
                self.published_at[orjson.loads(value)["event_id"]] = time.time()
        return future


def evaluation_env(bootstrap: str, prefix: str, data_dir: Path, partitions: int,
                   config_path: Path | None = None) -> dict[str, str]:
    """The worker's environment: topics, group and state of the evaluation's own."""
    env = {
        **os.environ,
        "TXWATCH_BROKER": bootstrap,
        "TXWATCH_APP_ID": f"{prefix}-app",
        "TXWATCH_PAYMENTS_TOPIC": f"{prefix}.payments",
        "TXWATCH_LENDING_TOPIC": f"{prefix}.lending",
        "TXWATCH_ALERT_TOPIC": f"{prefix}.alerts",
        "TXWATCH_DEAD_LETTER_TOPIC": f"{prefix}.dead-letters",
        "TXWATCH_CONFIG_TOPIC": f"{prefix}.config",
        "TXWATCH_FEEDBACK_TOPIC": f"{prefix}.feedback",
        "TXWATCH_PORTFOLIO_TOPIC": f"{prefix}.portfolio-partials",
        "TXWATCH_METRICS_PORT": "0",
        "TXWATCH_METRICS_HOST": "127.0.0.1",
        "TXWATCH_PARTITIONS": str(partitions),
        "TXWATCH_DATA_DIR": str(data_dir),
    }
    if config_path is not None:
        env["TXWATCH_DETECTOR_CONFIG"] = str(config_path.resolve())
    return env


@dataclass
class WorkerProgress:
    """What the worker's /metrics says about its progress."""

    processed: float = 0.0
    #: ``txwatch_consumer_lag`` by (topic, partition); a partition not reported yet is absent
    lag: dict[tuple[str, int], float] = field(default_factory=dict)

    def lagging(self, topics: Iterable[str], partitions: int) -> dict[str, float | None]:
        """Topics with a partition behind, or not reported yet (``None``), and their lag."""
        behind: dict[str, float | None] = {}
        for topic in topics:
            values = [self.lag.get((topic, p)) for p in range(partitions)]
            if any(v is None for v in values):
                behind[topic] = None
            elif any(values):
                behind[topic] = sum(v for v in values if v is not None)
        return behind


def stage_topic_names(app_id: str, stages: Iterable[str]) -> dict[str, str]:
    """The derived stages' internal topics by stage, as ``streams.app.create_app`` names them."""
    from streams.stages import stage_topic

    return {name: stage_topic(app_id, name) for name in stages}


def _describe_lag(behind: Mapping[str, float | None]) -> str:
    """``topic lag, ...`` for the topics still behind."""
    unknown = "no lag reported (partitions unassigned?)"
    parts = [f"{topic} {unknown if lag is None else f'{lag:,.0f}'}"
             for topic, lag in behind.items()]
    return ", ".join(parts) if parts else "none"


def _stage_lag(state: WorkerProgress, stage_topics: Mapping[str, str], partitions: int) -> str:
    """``flow 1,234, identity 0, project 0`` (``?``: not reported yet)."""
    parts = []
    for stage, topic in stage_topics.items():
        lag = state.lagging([topic], partitions).get(topic, 0.0)
        parts.append(f"{stage} {'?' if lag is None else f'{lag:,.0f}'}")
    return ", ".join(parts) if parts else "no stages"


class _Worker:
    """A ``txwatch worker`` child process with its log in a file."""

    def __init__(self, env: Mapping[str, str], log_path: Path) -> None:
        self.env = dict(env)
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.metrics_url: str | None = None

    def start(self, timeout: float = 90.0) -> None:
        with self.log_path.open("ab") as log_file:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streams.cli", "worker"], env=self.env,
                stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = METRICS_LINE.search(self.log_path.read_bytes())
            if match:
                self.metrics_url = match.group(1).decode()
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)  # polling the log for the start line
        message = f"the worker did not start; its log: {self.log_path}\n{self.log_tail()}"
        raise RuntimeError(message)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def progress(self) -> WorkerProgress:
        """``txwatch_events_total`` summed and ``txwatch_consumer_lag``, from /metrics."""
        from prometheus_client.parser import text_string_to_metric_families

        assert self.metrics_url is not None
        with urllib.request.urlopen(self.metrics_url, timeout=5) as response:
            text = response.read().decode()
        processed = 0.0
        lag: dict[tuple[str, int], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "txwatch_events_total":
                    processed += sample.value
                elif sample.name == "txwatch_consumer_lag":
                    lag[sample.labels["topic"], int(sample.labels["partition"])] = sample.value
        return WorkerProgress(processed, lag)

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def _delete_topics(settings: Settings, prefix: str) -> list[str]:
    from streams import clients

    admin = clients.admin(settings, client_id="txwatch-evaluate")
    await admin.start()
    try:
        doomed = sorted(t for t in await admin.list_topics() if t.startswith(prefix))
        if doomed:
            await admin.delete_topics(doomed)
        return doomed
    finally:
        await admin.close()


async def evaluate_live(settings: Settings, *, events: int = 20_000, seed: int = 7,
                        accounts: int = 5_000, rate: float | None = None,
                        config_path: Path | None = None, timeout: float = 600.0,
                        work_dir: Path | None = None, keep_topics: bool = False,
                        history: Path | None = None,
                        labels: Sequence[LabelledEvent] | None = None,
                        group_labels: Sequence[GroupLabel] | None = None,
                        alerts_sink: list[dict[str, Any]] | None = None,
                        progress: Progress | None = None) -> Evaluation:
    """Simulated labelled traffic, or a history, through a real worker, scored.

    Parameters
    ----------
    settings
        The broker and the number of partitions; topics are the evaluation's own.
    events, seed, accounts
        Of the simulated traffic (every scenario injected).
    rate
        Events per second; ``None``: as fast as possible.
    config_path
        The detector configuration the worker runs (``TXWATCH_DETECTOR_CONFIG``).
    timeout
        Seconds allowed for the worker to process everything.
    work_dir
        Worker log, state and labels file; a temporary directory by default.
    keep_topics
        Leave the evaluation's topics on the broker.
    history
        A JSON Lines history to replay (``txwatch replay``) instead of simulating.
    labels
        Ground truth for a history; default the ``label`` field of its lines.
    group_labels
        A labels CSV's rows: scored into ``Evaluation.labelled``, as by ``backtest``.
    alerts_sink
        Receives every alert record read off the alert topic.
    progress
        Receives progress lines.
    """
    from streams import clients
    from streams.rules import build_rules, read_config_file
    from streams.settings import Settings
    from streams.simulate import kafka_producer, replay, simulate
    from streams.stages import STAGES

    report = progress or (lambda line: None)
    config = read_config_file(config_path) if config_path is not None else DEFAULT_CONFIG
    rules = build_rules(config, STAGES)
    work_dir = work_dir or Path(tempfile.mkdtemp(prefix="txwatch-evaluate-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    prefix = f"txwatch-eval-{uuid.uuid4().hex[:10]}"
    env = evaluation_env(settings.broker, prefix, work_dir / "data", settings.partitions,
                         config_path)
    eval_settings = Settings.from_env(env)
    stage_topics = stage_topic_names(
        eval_settings.app_id, [name for name, alerters in rules.stages.items() if alerters])
    # The stage topics too: left to the worker, one created a few ms before its consumer
    # subscribes can be missing from the metadata the group leader assigns from; Faust
    # then skips it ("Ignoring missing topic") and that stage reads nothing until the
    # next metadata refresh and rebalance, minutes later.
    await clients.create_topics(settings, [
        *eval_settings.input_topics, eval_settings.alert_topic, eval_settings.dead_letter_topic,
        *stage_topics.values()])
    worker = _Worker(env, work_dir / "worker.log")
    report(f"evaluate: starting a worker on topics {prefix}.* (log {worker.log_path})")
    started = time.monotonic()
    try:
        await asyncio.to_thread(worker.start)
        published_at: dict[str, float] = {}
        labels_path = work_dir / "labels.jsonl"
        incidents: Mapping[str, int] = {}
        if history is None:
            report(f"evaluate: worker up, metrics on {worker.metrics_url}; publishing "
                   f"{events:,} simulated events (seed {seed}, every scenario)")
            sim = await simulate(
                eval_settings, rate=rate, events=events, seed=seed, labels_path=labels_path,
                progress=report, accounts=accounts, create_topics=False,
                producer_factory=lambda s: _RecordingProducer(kafka_producer(s), published_at),
            )
            sent, failed, first_error, incidents = (sim.sent, sim.failed, sim.first_error,
                                                    sim.incidents)
        else:
            report(f"evaluate: worker up, metrics on {worker.metrics_url}; replaying {history}")
            replayed = await replay(
                eval_settings, history, rate=rate, progress=report, create_topics=False,
                producer_factory=lambda s: _RecordingProducer(kafka_producer(s), published_at),
            )
            sent, failed, first_error = replayed.sent, replayed.failed, replayed.first_error
        if failed:
            message = f"{failed:,} events were not delivered: {first_error}"
            raise RuntimeError(message)
        consumer = clients.consumer(eval_settings, eval_settings.alert_topic)
        await consumer.start()
        records: list[dict[str, Any]] = []
        watched = [*eval_settings.input_topics, *stage_topics.values()]
        partitions = eval_settings.partitions
        try:
            deadline = time.monotonic() + timeout
            last_alert = last_report = time.monotonic()
            state = WorkerProgress()
            behind: dict[str, float | None] = dict.fromkeys(watched)
            caught_up_since: float | None = None
            while True:
                batch = await consumer.getmany(timeout_ms=250)
                for items in batch.values():
                    for item in items:
                        with contextlib.suppress(orjson.JSONDecodeError):
                            records.append(orjson.loads(item.value))
                        last_alert = time.monotonic()
                now = time.monotonic()
                if caught_up_since is None or behind or now - last_report >= PROGRESS_EVERY:
                    try:
                        state = await asyncio.to_thread(worker.progress)
                    except OSError as exc:  # a busy worker may drop a scrape: ask again
                        log.debug("evaluate: /metrics scrape failed: %s", exc)
                    behind = state.lagging(watched, partitions)
                if state.processed >= sent and not behind:
                    caught_up_since = caught_up_since or now
                else:
                    caught_up_since = None
                if now - last_report >= PROGRESS_EVERY:
                    last_report = now
                    report(f"evaluate: worker processed {state.processed:,.0f} of {sent:,} "
                           f"events; stage lag {_stage_lag(state, stage_topics, partitions)}; "
                           f"{len(records):,} alerts so far")
                if (caught_up_since is not None and now - caught_up_since >= LAG_SETTLE_SECONDS
                        and now - last_alert >= QUIET_SECONDS):
                    break
                if not worker.alive():
                    message = f"the worker exited; its log: {worker.log_path}\n{worker.log_tail()}"
                    raise RuntimeError(message)
                if now > deadline:
                    message = (f"the worker did not catch up in {timeout:.0f} s: processed "
                               f"{state.processed:,.0f} of {sent:,} input events; still "
                               f"lagging: {_describe_lag(behind)}; its log: "
                               f"{worker.log_path}")
                    raise TimeoutError(message)
        finally:
            await consumer.stop()
    finally:
        await asyncio.to_thread(worker.stop)
        if not keep_topics:
            with contextlib.suppress(Exception):
                deleted = await _delete_topics(settings, prefix)
                report(f"evaluate: deleted {len(deleted)} topics {prefix}.*")
    if alerts_sink is not None:
        alerts_sink.extend(records)
    alerts = [a for a in (ScoredAlert.from_record(r, published_at) for r in records)
              if a is not None]
    detectors = [a.name for a in rules.account]
    detectors += [a.name for alerters in rules.stages.values() for a in alerters]
    if history is None:
        truth = load_labels(labels_path)
    else:
        truth = list(labels) if labels is not None else load_labels(history)
    result = score(truth, alerts, detectors=detectors, mode="evaluate")
    result.events = sent
    result.config_version = rules.version
    result.elapsed_seconds = time.monotonic() - started
    if history is not None and group_labels is not None:
        result.labelled = score_labelled(group_labels, alerts, events=sent,
                                         history=history_positions(history, group_labels),
                                         detectors=detectors)
    for row in result.scenarios:
        started_incidents = incidents.get(row.scenario)
        if started_incidents is not None and started_incidents != row.incidents:
            result.notes.append(
                f"{row.scenario}: the simulator started {started_incidents} incidents; the "
                f"labels group into {row.incidents} (incidents sharing an account merge)")
    return result


# -- command line ---------------------------------------------------------------------------


def run_backtest(settings: Settings, args: argparse.Namespace) -> int:
    """``txwatch backtest FILE [--config FILE] [--labels FILE] [--alerts FILE] [--json]``."""
    from streams.rules import read_config_file

    if not args.file.exists():
        print(f"txwatch backtest: no such file: {args.file}", file=sys.stderr)
        return 2
    rejected: list[RejectedLine] = []
    alerts_path: Path | None = getattr(args, "alerts", None)
    try:
        config = read_config_file(args.config) if args.config is not None else None
        labels: list[LabelledEvent] | None = None
        group_labels: list[GroupLabel] | None = None
        if args.labels is not None and is_label_csv(args.labels):
            group_labels = load_label_csv(args.labels)
        elif args.labels is not None:
            labels = load_labels(args.labels)
        with contextlib.ExitStack() as stack:
            alerts_out = (stack.enter_context(alerts_path.open("wb"))
                          if alerts_path is not None else None)
            result = backtest(args.file, config, settings=settings, labels=labels,
                              group_labels=group_labels, alerts_out=alerts_out,
                              progress=progress_to_stderr, rejected=rejected)
    except (ValueError, OSError) as exc:
        print(f"txwatch backtest: {exc}", file=sys.stderr)
        return 2
    if args.json:
        sys.stdout.write(result.dumps().decode() + "\n")
    else:
        print(result.table())
    if alerts_path is not None:
        progress_to_stderr(f"backtest: {result.alerts:,} alerts written to {alerts_path}")
    verbose, allow_bad = getattr(args, "verbose", False), getattr(args, "allow_bad", False)
    for line in describe_rejected(rejected, result.events, args.file, verbose=verbose):
        print(line, file=sys.stderr)
    return 1 if rejected and not allow_bad else 0


def run_evaluate(settings: Settings, args: argparse.Namespace) -> int:
    """``txwatch evaluate [--events N] [--seed S] [--history FILE [--labels FILE]] [--json]``."""
    from streams.broker import LocalKafka

    history: Path | None = getattr(args, "history", None)
    labels_path: Path | None = getattr(args, "labels", None)
    for path in (args.config, history, labels_path):
        if path is not None and not path.exists():
            print(f"txwatch evaluate: no such file: {path}", file=sys.stderr)
            return 2
    if labels_path is not None and history is None:
        print("txwatch evaluate: --labels needs --history (the simulator labels its own "
              "traffic)", file=sys.stderr)
        return 2
    try:
        labels: list[LabelledEvent] | None = None
        group_labels: list[GroupLabel] | None = None
        if labels_path is not None and is_label_csv(labels_path):
            group_labels = load_label_csv(labels_path)
        elif labels_path is not None:
            labels = load_labels(labels_path)
    except (ValueError, OSError) as exc:
        print(f"txwatch evaluate: {exc}", file=sys.stderr)
        return 2

    def run(target: Settings) -> Evaluation:
        return asyncio.run(evaluate_live(
            target, events=args.events, seed=args.seed, accounts=args.accounts, rate=args.rate,
            config_path=args.config, timeout=args.timeout, work_dir=args.work_dir,
            keep_topics=args.keep_topics, history=history, labels=labels,
            group_labels=group_labels, progress=progress_to_stderr))

    try:
        if args.local_broker:
            from dataclasses import replace

            progress_to_stderr("evaluate: starting a local Kafka broker ...")
            with LocalKafka(progress=progress_to_stderr) as kafka:
                result = run(replace(settings, broker=kafka.bootstrap))
        else:
            result = run(settings)
    except ValueError as exc:
        print(f"txwatch evaluate: {exc}", file=sys.stderr)
        return 2
    except (RuntimeError, TimeoutError, OSError) as exc:
        print(f"txwatch evaluate: {exc}", file=sys.stderr)
        return 1
    if args.json:
        sys.stdout.write(result.dumps().decode() + "\n")
    else:
        print(result.table())
    return 0


def register_cli(subparsers: Any) -> None:
    """Add ``txwatch evaluate`` and ``txwatch backtest FILE``."""
    evaluate = subparsers.add_parser(
        "evaluate", help="score the detectors on simulated scenarios through a real worker",
        description="Publish the simulator's labelled scenarios to topics of their own, run a "
                    "txwatch worker on them and print precision, recall and median detection "
                    "delay per scenario and per detector.")
    evaluate.add_argument("--events", type=int, default=20_000, help="events to simulate")
    evaluate.add_argument("--seed", type=int, default=7)
    evaluate.add_argument("--accounts", type=int, default=5_000)
    evaluate.add_argument("--rate", type=float, default=None,
                          help="events per second (default: as fast as possible)")
    evaluate.add_argument("--config", type=Path, default=None,
                          help="detector configuration file for the worker")
    evaluate.add_argument("--local-broker", action="store_true",
                          help="start a local Kafka broker instead of using TXWATCH_BROKER")
    evaluate.add_argument("--timeout", type=float, default=600.0,
                          help="seconds allowed for the worker to process everything")
    evaluate.add_argument("--work-dir", type=Path, default=None,
                          help="worker log, state and labels (default: a temporary directory)")
    evaluate.add_argument("--keep-topics", action="store_true",
                          help="leave the evaluation's topics on the broker")
    evaluate.add_argument("--history", type=Path, default=None,
                          help="replay this JSON Lines history (e.g. from txwatch import-csv) "
                               "instead of simulating; --rate paces it")
    evaluate.add_argument("--labels", type=Path, default=None,
                          help="with --history: a labels CSV (event_id,label,pattern,group) or "
                               "JSON Lines labels; default the history's label fields")
    evaluate.add_argument("--json", action="store_true", help="print JSON instead of tables")
    evaluate.set_defaults(func=run_evaluate)

    backtest_parser = subparsers.add_parser(
        "backtest", help="score the detectors offline on a JSON Lines history",
        description="Run FILE (one event per line, an optional 'label' field naming the "
                    "scenario) through the worker's detector code without Kafka, at full "
                    "speed, and print the same table as txwatch evaluate.")
    backtest_parser.add_argument("file", type=Path)
    backtest_parser.add_argument("--config", type=Path, default=None,
                                 help="detector configuration file (default: "
                                      "TXWATCH_DETECTOR_CONFIG, else the packaged defaults)")
    backtest_parser.add_argument("--labels", type=Path, default=None,
                                 help="labels JSON Lines file (txwatch simulate --labels) "
                                      "instead of the events' label field, or a labels CSV "
                                      "(event_id,label,pattern,group; txwatch import-csv "
                                      "--labels-out): recall per pattern and group, precision "
                                      "and alerts per 1,000 events per detector")
    backtest_parser.add_argument("--alerts", type=Path, default=None,
                                 help="write every alert to this file as JSON Lines, the "
                                      "records the worker publishes")
    backtest_parser.add_argument("--json", action="store_true",
                                 help="print JSON instead of tables")
    backtest_parser.add_argument("--allow-bad", action="store_true",
                                 help="exit 0 even when lines were dead-lettered")
    backtest_parser.add_argument("--verbose", action="store_true",
                                 help="list every dead-lettered line (default: the first 5)")
    backtest_parser.set_defaults(func=run_backtest)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m streams.evaluation evaluate|backtest ...``."""
    from streams.settings import Settings, SettingsError

    parser = argparse.ArgumentParser(prog="txwatch")
    register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"txwatch: bad setting: {exc}", file=sys.stderr)
        return 2
    result: int = args.func(settings, args)
    return result


if __name__ == "__main__":
    sys.exit(main())
