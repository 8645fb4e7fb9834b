"""The backtest: a history through the worker's own code, without Kafka, partition by partition.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict, deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import orjson
from aiokafka.partitioner import murmur2

from streams.codec import parse_occurred_at
from streams.rejects import RejectedLine, numbered_lines

if TYPE_CHECKING:
    from streams.sensors import Sensor
    from streams.settings import Settings


from streams.evaluation.inputs import (
    PROGRESS_EVERY,
    GroupLabel,
    LabelledEvent,
    Progress,
    ScoredAlert,
)
from streams.evaluation.scoring import Evaluation, score, score_labelled

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
    stages = build_stages(rules.stages, rules.version, rules.bounds, sensor)
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


