"""Scoring alerts against labels, and the tables ``txwatch evaluate`` and ``backtest`` print.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Final

import orjson

from streams.evaluation.inputs import (
    ANY_DETECTOR,
    GroupLabel,
    LabelledEvent,
    ScoredAlert,
    expected_detector,
)
from streams.tables import render, share

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
    latency_head = ["median latency"] if live else []
    rows = []
    for row in result.scenarios:
        latency = [format_duration(row.median_latency_seconds)] if live else []
        rows.append([row.scenario, row.expected_detector, f"{row.incidents:,}",
                     f"{row.detected:,}", share(row.recall),
                     format_duration(row.median_delay_seconds), *latency])
    lines.extend(render(["scenario", "expected detector", "incidents", "detected", "recall",
                         "median delay", *latency_head], rows, right=range(2, 7)))
    lines.append("")
    rows = []
    for d in result.detectors:
        latency = [format_duration(d.median_latency_seconds)] if live else []
        rows.append([d.detector, f"{d.alerts:,}", f"{d.true_positives:,}",
                     f"{d.other_labelled:,}", share(d.precision) if d.expected else "n/a",
                     format_duration(d.median_delay_seconds), *latency])
    lines.extend(render(["detector", "alerts", "true pos.", "other lbl.", "precision",
                         "median delay", *latency_head], rows, right=range(1, 7)))
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
    return share(value)


def render_labelled(report: LabelReport) -> str:
    """The per-pattern and per-detector tables of alerts scored against a labels CSV."""
    lines = [f"{report.alerts:,} alerts on {report.events:,} events: "
             f"{_rate(report.alerts_per_1000)} per 1,000 events; precision "
             f"{_percent(report.precision)} (alerts naming a labelled event: "
             f"{report.on_labelled:,}); {report.labelled_events:,} labelled events", ""]
    rows = []
    for row in report.patterns:
        by = ", ".join(f"{name} {count}" for name, count in row.caught_by.items()) or "-"
        rows.append([row.pattern, f"{row.groups:,}", f"{row.caught:,}",
                     _percent(row.group_recall), _percent(row.first_3_share),
                     f"{row.labelled_events:,}", f"{row.named_events:,}",
                     _percent(row.event_recall), by])
    lines.extend(render(["pattern", "groups", "caught", "group recall", "first 3", "events",
                         "named", "event recall", "caught by"], rows, right=range(1, 8)))
    lines.append("")
    rows = [[d.detector, f"{d.alerts:,}", _rate(d.alerts_per_1000), f"{d.on_labelled:,}",
             _percent(d.precision)] for d in report.detectors]
    rows.append(["all detectors", f"{report.alerts:,}", _rate(report.alerts_per_1000),
                 f"{report.on_labelled:,}", _percent(report.precision)])
    lines.extend(render(["detector", "alerts", "per 1,000", "on labelled", "precision"], rows,
                        right=range(1, 5)))
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


