"""The derived stages' part of the conformance suite: what the stage, not the detector, owns.

A stage detector (``cycle``, ``identity_reuse``, ``suspicious_payout`` ...)
is stateless over the features its stage's sketch computes;
``detectors/conformance/`` checks the detector on those features. Whether its
alerts survive a restart and a replay depends on
:class:`streams.stages.DerivedStage`: the sketch snapshot written to the
table's changelog (``StageEntry.dumps()``) and rebuilt on recovery
(``DerivedStage.entry``), and the replay guard (each key's last offset and
recent event-id digests). The checks here feed a detector's labelled records
(:func:`detectors.conformance.labelled_stage_records`) through a real
``DerivedStage`` configured as shipped with that detector alone, as one
partition of the stage's topic:

* :class:`StageRun` appends every record to the topic, stage 1's forwards and
  the stage's own (the flow stage's back and relay records) alike, and
  processes them in offset order, so a transfer is processed with everything
  it causes before the next one; a flow edge gets its ``sender_origins`` from
  the sender's sketch when it is forwarded, as ``streams.app`` does;
* each check takes a factory of fresh stages and raises ``AssertionError``
  with an explanation; :data:`STAGE_CHECKS` lists them and
  ``tests/unit/test_conformance.py`` runs them with ids ``detector:check``.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from detectors.conformance import labelled_stage_records, stage_of, stage_stream
from detectors.flow import edge_origins
from detectors.registry import DEFAULT_CONFIG, STAGE_DETECTORS, build_alerters, stage_bounds
from streams.alerts import Alert
from streams.stages import FLOW, DerivedStage, StageEntry, StageOutcome, build_stages
from streams.state import RECENT_IDS

StageFactory = Callable[[], DerivedStage]
StageCheck = Callable[[StageFactory], None]
#: What an alert says, ``detected_at`` (wall clock) aside.
AlertContent = tuple[Any, ...]

#: ``detected_at`` of every alert: runs compare alerts, not clocks.
DETECTED_AT: Final = datetime(2024, 4, 1, tzinfo=UTC)
#: A restarted run rebuilds the stage from JSON after this many processed records, so
#: restarts fall between a transfer and its back record, and inside relay waves.
RESTART_EVERY: Final = 37
#: A delayed duplicate of a forwarded record arrives after this many more forwards.
DUPLICATE_DELAY: Final = 3
#: The keys a stage cannot do without: where it routes the record, what it is, when and
#: whose; and the event id, on which the replay guard is keyed. Everything else stage 1
#: forwards is optional.
REQUIRED_RECORD_FIELDS: Final[Mapping[str, tuple[str, ...]]] = {
    "flow": ("_key", "kind", "event_id", "ts", "sender", "receiver"),
    "identity": ("_key", "kind", "identity_kind", "event_id", "ts", "account_id"),
    "project": ("_key", "kind", "event_type", "event_id", "ts", "account_id"),
}
OPTIONAL_RECORD_FIELDS: Final[Mapping[str, tuple[str, ...]]] = {
    "flow": ("event_type", "amount_minor", "currency", "sender_origins"),
    "identity": ("event_type", "amount_minor", "currency"),
    "project": ("amount_minor", "currency", "device_id_hash", "account_events", "project_id"),
}


def stage_factory(name: str) -> StageFactory:
    """Fresh derived stages running the stage detector ``name`` alone, configured as shipped."""
    config = {
        "version": DEFAULT_CONFIG["version"],
        "detectors": {name: DEFAULT_CONFIG["detectors"][name]},
    }
    stage = stage_of(STAGE_DETECTORS[name])
    assert stage is not None, name

    def factory() -> DerivedStage:
        return build_stages({stage: build_alerters(config)}, config["version"],
                            stage_bounds(config))[stage]

    return factory


def content(alert: Alert) -> AlertContent:
    """Everything an alert says but its detection time."""
    return (alert.alert_id, alert.detector, alert.event_ids, alert.score, alert.reasons,
            alert.severity, alert.account_id, alert.event_type, alert.amount, alert.occurred_at)


class StageRun:
    """One partition of a derived stage's topic, its table and its agent, run synchronously.

    Parameters
    ----------
    factory
        Makes the stage; called again at each restart.
    carry_origins
        Add ``sender_origins`` to a flow edge that has none when it is forwarded,
        as stage 1 does.
    restart_every
        Restart after this many processed records: the table is rebuilt from the
        JSON of its changelog and the stage from ``factory``.
    after_each
        Called with the run, the raw record, its offset and the outcome after each
        record taken from the topic.
    """

    def __init__(self, factory: StageFactory, *, carry_origins: bool = True,
                 restart_every: int | None = None,
                 after_each: Callable[[StageRun, bytes, int, StageOutcome], None] | None = None,
                 ) -> None:
        self.factory = factory
        self.stage = factory()
        self.carry_origins = carry_origins
        self.restart_every = restart_every
        self.after_each = after_each
        self.states: dict[Any, Any] = {}
        self.topic: deque[tuple[bytes, int]] = deque()
        self.end_offset = 0
        self.processed = 0
        self.alerts: list[Alert] = []
        #: (offset, reason, record) of each record the stage refused
        self.rejected: list[tuple[int, str, bytes]] = []
        #: records applied per key: the replay guard remembers the last RECENT_IDS of them
        self.applied: Counter[bytes] = Counter()
        #: alerts raised before the first restart
        self.alerts_before_restart: int | None = None

    def allocate_offset(self) -> int:
        offset = self.end_offset
        self.end_offset += 1
        return offset

    def forward(self, record: Mapping[str, Any]) -> tuple[bytes, int]:
        """Append what stage 1 forwards for one event, then process the topic to its end."""
        if (self.stage.name == FLOW and self.carry_origins and record.get("kind") == "edge"
                and "sender_origins" not in record):
            sender, ts = record["sender"], record["ts"]
            sketch = self.stage.peek(self.states, str(sender).encode())
            record = {**record, "sender_origins": edge_origins(sketch, sender, ts)}
        appended = orjson.dumps(record), self.allocate_offset()
        self.topic.append(appended)
        self.drain()
        return appended

    def forward_all(self, records: Iterable[Mapping[str, Any]]) -> None:
        for record in records:
            self.forward(record)

    def drain(self) -> None:
        while self.topic:
            raw, offset = self.topic.popleft()
            outcome = self.stage.process(raw, self.states, offset=offset, now=DETECTED_AT)
            self.processed += 1
            self.alerts.extend(outcome.alerts)
            if outcome.rejected is not None:
                self.rejected.append((offset, outcome.rejected, raw))
            elif outcome.key is not None:
                self.applied[outcome.key] += 1
            for follow_up in outcome.forwards:
                assert follow_up.stage == self.stage.name, follow_up
                self.topic.append((follow_up.dumps(), self.allocate_offset()))
            if self.after_each is not None:
                self.after_each(self, raw, offset, outcome)
            if self.restart_every and self.processed % self.restart_every == 0:
                self.restart()

    def restart(self) -> None:
        """A new worker: the stage rebuilt, each key's entry read back from its changelog JSON."""
        if self.alerts_before_restart is None:
            self.alerts_before_restart = len(self.alerts)
        self.states = {key: self.entry_json(key) for key in self.states}
        self.stage = self.factory()

    def entry_json(self, key: bytes) -> Any:
        """The key's entry as the changelog holds it: ``[offset, recent_ids, sketch state]``."""
        value = self.states.get(key)
        if isinstance(value, StageEntry):
            return orjson.loads(value.dumps())
        return value

    def table_json(self) -> dict[bytes, Any]:
        return {key: self.entry_json(key) for key in sorted(self.states)}


def _records(factory: StageFactory) -> list[dict[str, Any]]:
    return [item.record for item in labelled_stage_records(factory().name)]


def _names(factory: StageFactory) -> str:
    return ", ".join(alerter.name for alerter in factory().alerters)


def _clean_run(factory: StageFactory) -> StageRun:
    run = StageRun(factory)
    run.forward_all(_records(factory))
    assert run.alerts, f"{_names(factory)}: no alert on the labelled records, nothing to check"
    assert not run.rejected, f"records rejected: {run.rejected[:3]}"
    return run


def _first_difference(expected: list[AlertContent], actual: list[AlertContent]) -> str:
    for index, (left, right) in enumerate(zip(expected, actual, strict=False)):
        if left != right:
            return f"alert {index}: expected {left}, got {right}"
    return f"{len(expected)} alerts expected, {len(actual)} raised"


# -- the checks ----------------------------------------------------------------------------------


def check_snapshot_restore(factory: StageFactory) -> None:
    """Restarts from the changelog's JSON leave the alerts and the states of an uninterrupted run.

    The restarted run rebuilds the table from ``StageEntry.dumps()`` and a
    new stage every :data:`RESTART_EVERY` records, also between a transfer
    and its back record and inside relay waves, as a crash between two
    batches would.
    """
    clean = _clean_run(factory)
    restarted = StageRun(factory, restart_every=RESTART_EVERY)
    restarted.forward_all(_records(factory))
    before = restarted.alerts_before_restart
    assert before is not None and before < len(clean.alerts), "no alert after a restart"
    expected = [content(alert) for alert in clean.alerts]
    actual = [content(alert) for alert in restarted.alerts]
    assert actual == expected, (
        f"alerts differ after restarts: {_first_difference(expected, actual)}"
    )
    clean_table = clean.table_json()
    restarted_table = restarted.table_json()
    for key, entry in clean_table.items():
        assert restarted_table.get(key) == entry, (
            f"state of {key!r} differs after restarts: {restarted_table.get(key)} != {entry}"
        )


def check_replay_no_second_alert(factory: StageFactory) -> None:
    """A record seen again (same, new or no offset) raises nothing and changes nothing.

    Right after each record, the same bytes are processed again with the same
    offset (a batch replayed after a crash), with no offset, and with a new
    offset (a producer's duplicate); and each record stage 1 forwards comes
    again :data:`DUPLICATE_DELAY` forwards later, with a new offset, when its
    key has taken fewer than ``RECENT_IDS`` records since. None may raise an
    alert, forward a record or change the key's entry, and the run must raise
    exactly the alerts of a run without duplicates.
    """
    clean = _clean_run(factory)
    problems: list[str] = []
    replayed_alerting = 0
    applied_at: dict[int, int] = {}  # offset -> records its key had applied, this one included

    def replay(run: StageRun, raw: bytes, key: bytes, offsets: Iterable[tuple[str, int | None]],
               ) -> None:
        before = run.entry_json(key)
        for label, offset in offsets:
            outcome = run.stage.process(raw, run.states, offset=offset, now=DETECTED_AT)
            if outcome.alerts:
                problems.append(f"{label}: second alert {content(outcome.alerts[0])}"
                                f" for {raw.decode()[:300]}")
            if outcome.forwards:
                problems.append(f"{label}: forwarded {len(outcome.forwards)} records again"
                                f" for {raw.decode()[:300]}")
            if run.entry_json(key) != before:
                problems.append(f"{label}: changed the state of {key!r} for {raw.decode()[:300]}")

    def right_after(run: StageRun, raw: bytes, offset: int, outcome: StageOutcome) -> None:
        nonlocal replayed_alerting
        if outcome.key is None or outcome.rejected is not None:
            return
        replayed_alerting += bool(outcome.alerts)
        applied_at[offset] = run.applied[outcome.key]
        replay(run, raw, outcome.key, [("same offset", offset), ("no offset", None),
                                       ("new offset", run.allocate_offset())])

    run = StageRun(factory, after_each=right_after)
    forwarded: deque[tuple[bytes, bytes, int]] = deque()  # (raw, key, offset)
    delayed = 0
    for record in _records(factory):
        raw, offset = run.forward(record)
        forwarded.append((raw, str(record["_key"]).encode(), offset))
        if len(forwarded) > DUPLICATE_DELAY:
            raw, key, offset = forwarded.popleft()
            # The guard remembers the last RECENT_IDS records applied to a key.
            if offset in applied_at and run.applied[key] - applied_at[offset] < RECENT_IDS:
                delayed += 1
                replay(run, raw, key, [("delayed duplicate", run.allocate_offset())])
    assert not problems, f"{len(problems)} replays were not ignored; first: {problems[0]}"
    assert replayed_alerting, "no record that alerted was replayed, so nothing was checked"
    assert delayed, "no delayed duplicate was within the replay guard's reach"
    expected = [content(alert) for alert in clean.alerts]
    actual = [content(alert) for alert in run.alerts]
    assert actual == expected, f"replays changed the alerts: {_first_difference(expected, actual)}"


def _sparse(record: Mapping[str, Any], field: str, absent: bool) -> dict[str, Any]:
    if absent:
        return {key: value for key, value in record.items() if key != field}
    return {**record, field: None}


def check_missing_record_fields(factory: StageFactory) -> None:
    """Records without an optional field are applied, and raise no alert the full ones do not.

    Each optional field stage 1 forwards (:data:`OPTIONAL_RECORD_FIELDS`) is
    left out of every record, then sent as ``null``: the stage must refuse
    none of them, and a missing value is no evidence, so every alert must be
    one the full records raise (same detector and event). A record with only
    the required fields (:data:`REQUIRED_RECORD_FIELDS`) of each kind, alone
    in a fresh stage, must be applied, raise nothing and change its key's
    sketch.
    """
    stage_name = factory().name
    records = _records(factory)
    full = {(alert.detector, alert.event_ids) for alert in _clean_run(factory).alerts}
    for field in OPTIONAL_RECORD_FIELDS[stage_name]:
        for absent in (True, False):
            how = f"{field} {'left out' if absent else 'null'}"
            run = StageRun(factory, carry_origins=not absent)
            run.forward_all(_sparse(record, field, absent) for record in records)
            if run.rejected:
                _, reason, raw = run.rejected[0]
                message = (f"{how}: {len(run.rejected)} records refused, the first ({reason})"
                           f" {raw.decode()[:300]}")
                raise AssertionError(message)
            invented = [a for a in run.alerts if (a.detector, a.event_ids) not in full]
            assert not invented, (
                f"{how}: {len(invented)} alerts the full records do not raise, the first"
                f" {content(invented[0])}"
            )
    required = REQUIRED_RECORD_FIELDS[stage_name]
    shapes: dict[tuple[Any, Any], dict[str, Any]] = {}
    for record in records:
        shapes.setdefault((record.get("kind"), record.get("event_type")), record)
    empty = factory().new_sketch().to_state()
    for record in shapes.values():
        minimal = {key: value for key, value in record.items() if key in required}
        run = StageRun(factory, carry_origins=False)
        run.forward(minimal)
        assert not run.rejected, f"refused {minimal}: {run.rejected[0][1]}"
        assert not run.alerts, f"alert {content(run.alerts[0])} on the lone record {minimal}"
        entry = run.entry_json(str(minimal["_key"]).encode())
        assert entry is not None and entry[2] != empty, f"{minimal} changed nothing in its sketch"


def check_one_content_per_alert_id(factory: StageFactory) -> None:
    """An alert id is raised with one content only.

    Alert ids are the detector and the triggering event: a consumer keeps one
    alert per id, so two alerts with one id and different reasons or scores
    mean one of them is lost.
    """
    seen: dict[str, AlertContent] = {}
    for alert in _clean_run(factory).alerts:
        first = seen.setdefault(alert.alert_id, content(alert))
        assert first == content(alert), (
            f"alert id {alert.alert_id} raised twice with different content: {first} and"
            f" {content(alert)}"
        )


def check_stage_matches_features(factory: StageFactory) -> None:
    """The stage raises exactly what its detectors find on the conformance ``stage_stream``.

    The detector checks of ``detectors/conformance/`` judge a stage detector on
    the features of the sketches wired in one process; this ties them to the
    stage as the worker runs it.
    """
    stage = factory()
    expected: list[tuple[Any, ...]] = []
    named: set[tuple[str, str]] = set()
    for event in stage_stream(stage.name):
        for alerter in stage.alerters:
            finding, _ = alerter.process_one(event.x)
            if finding is not None:
                # a finding that names what it is about (a ring, a collector) is one alert
                key = event.x.get(f"{finding.detector}_key")
                if isinstance(key, str) and key:
                    if (finding.detector, key) in named:
                        continue
                    named.add((finding.detector, key))
                identity = (finding.detector, (str(event.x.get("event_id")),))
                expected.append((*identity, round(finding.score, 6), finding.reasons))
    actual = [(alert.detector, alert.event_ids, alert.score, alert.reasons)
              for alert in _clean_run(factory).alerts]
    difference = _first_difference(expected, actual)
    assert actual == expected, f"the stage and its sketches disagree: {difference}"


#: The stage checks, run for every stage detector.
STAGE_CHECKS: Final[tuple[StageCheck, ...]] = (
    check_snapshot_restore,
    check_replay_no_second_alert,
    check_missing_record_fields,
    check_one_content_per_alert_id,
    check_stage_matches_features,
)


def stage_check_id(check: StageCheck) -> str:
    """The short name of a check in test ids: ``check_snapshot_restore`` -> ``snapshot_restore``."""
    return check.__name__.removeprefix("check_")
