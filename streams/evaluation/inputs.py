"""What scoring reads: simulator labels, labels CSVs (event_id,label,pattern,group) and alerts.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from detectors.registry import DETECTORS, STAGE_DETECTORS
from streams.codec import parse_occurred_at

Progress = Callable[[str], None]

#: Expected detector of a label that names no scenario and no detector: any detector.
ANY_DETECTOR: Final = "*"
#: Progress lines are this many seconds apart.
PROGRESS_EVERY: Final = 2.0


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


