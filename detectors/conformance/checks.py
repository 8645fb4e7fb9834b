"""The checks every registered detector passes, and which apply to which detector.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from detectors.base import SEVERITIES, Detector, Features, Finding, KeyedDetector, ThresholdAlerter
from detectors.conformance.account_stream import (
    ANOMALY_KINDS,
    REQUIRED_FEATURES,
    TARGET_KINDS,
    LabelledEvent,
    labelled_stream,
)
from detectors.conformance.stage_stream import stage_stream

AlerterFactory = Callable[[], ThresholdAlerter]
Check = Callable[[AlerterFactory], None]


# -- helpers -------------------------------------------------------------------------------------


def _score(detector: Detector | KeyedDetector[Any], x: Features, state: Any) -> float:
    if isinstance(detector, KeyedDetector):
        return detector.score_one(x, state)
    return detector.score_one(x)


@dataclass(slots=True)
class _Replay:
    scores: list[float]
    findings: list[Finding | None]
    states: dict[str, Any]


def _replay(
    alerter: ThresholdAlerter,
    events: Sequence[LabelledEvent],
    states: dict[str, Any] | None = None,
) -> _Replay:
    """Score and process every event as the worker would, one state per account."""
    states = {} if states is None else states
    scores: list[float] = []
    findings: list[Finding | None] = []
    detector = alerter.detector
    for event in events:
        state = states.get(event.account_id)
        if isinstance(detector, KeyedDetector) and state is None:
            state = detector.new_state()
        scores.append(_score(detector, event.x, state))
        finding, states[event.account_id] = alerter.process_one(event.x, state)
        findings.append(finding)
    return _Replay(scores, findings, states)


def stage_of(detector: object) -> str | None:
    """The derived stage a detector (or detector class) runs in, ``None`` for the account stage.

    Examples
    --------
    >>> from detectors.flow import Cycle
    >>> stage_of(Cycle), stage_of(Cycle()), stage_of(object())
    ('flow', 'flow', None)
    """
    stage = getattr(detector, "stage", None)
    return stage if isinstance(stage, str) else None


def _events_for(alerter: ThresholdAlerter) -> list[LabelledEvent]:
    """The labelled stream a check runs on: the stage's features for a stage detector."""
    stage = stage_of(alerter.detector)
    return labelled_stream() if stage is None else stage_stream(stage)


def _first_difference(left: Sequence[float], right: Sequence[float]) -> str:
    for index, (a, b) in enumerate(zip(left, right, strict=True)):
        if a != b:
            return f"event {index}: {a!r} != {b!r}"
    return "none"


# -- the checks ----------------------------------------------------------------------------------


def check_seeded_repeatability(factory: AlerterFactory) -> None:
    """Two fresh alerters fed the same events give the same finite, non-negative scores.

    The stream is generated twice, so for a stage detector this covers its
    stage's sketches too.
    """
    first = _replay(factory(), _events_for(factory())).scores
    second = _replay(factory(), _events_for(factory())).scores
    assert first == second, f"scores differ between runs at {_first_difference(first, second)}"
    for index, score in enumerate(first):
        assert isinstance(score, float), f"event {index}: score {score!r} is not a float"
        assert math.isfinite(score) and score >= 0.0, f"event {index}: score {score!r}"


def check_clone_is_fresh(factory: AlerterFactory) -> None:
    """``clone()`` keeps the parameters and forgets what was learnt, without sharing state."""
    trained = factory()
    events = _events_for(trained)
    _replay(trained, events)
    detector = trained.detector
    clone = detector.clone()
    assert type(clone) is type(detector)
    assert repr(clone) == repr(detector), f"{clone!r} != {detector!r}"
    if isinstance(detector, KeyedDetector):
        fresh_detector = factory().detector
        assert isinstance(clone, KeyedDetector)
        assert isinstance(fresh_detector, KeyedDetector)
        assert clone.new_state() == fresh_detector.new_state()
        return
    assert isinstance(clone, Detector)
    before = detector.snapshot()
    cloned = _replay(
        ThresholdAlerter(clone, trained.threshold, learn_flagged=trained.learn_flagged), events
    ).scores
    fresh = _replay(factory(), events).scores
    assert cloned == fresh, f"the clone is not fresh: {_first_difference(cloned, fresh)}"
    assert detector.snapshot() == before, "training the clone changed the original"


def check_state_json_round_trip(factory: AlerterFactory) -> None:
    """Keyed state survives JSON (orjson and the standard library) with identical next scores."""
    events = labelled_stream()
    half = len(events) // 2
    alerter = factory()
    states = _replay(alerter, events[:half]).states
    for codec, dumps, loads in (
        ("orjson", orjson.dumps, orjson.loads),
        ("json", json.dumps, json.loads),
    ):
        restored = {account: loads(dumps(state)) for account, state in states.items()}
        assert restored == states, f"{codec}: states changed in a round trip"
        # A keyed detector may keep global state as well (learnt population limits):
        # both replays start from the same.
        snapshot = alerter.detector.snapshot()
        original = _replay(alerter, events[half:], copy.deepcopy(states)).scores
        if snapshot is not None:
            alerter.detector.restore(loads(dumps(snapshot)))
        after = _replay(alerter, events[half:], restored).scores
        assert original == after, (
            f"{codec}: next scores differ at {_first_difference(original, after)}"
        )


def check_snapshot_restore(factory: AlerterFactory) -> None:
    """A global model restored from a snapshot scores the next events as the original does."""
    events = labelled_stream()
    half = len(events) // 2
    original = factory()
    assert isinstance(original.detector, Detector)
    _replay(original, events[:half])
    snapshot = original.detector.snapshot()
    restored = factory()
    assert isinstance(restored.detector, Detector)
    restored.detector.restore(snapshot)
    # The original runs on first: a snapshot that shared its live objects would
    # hand the restored model what the original learnt since.
    expected = _replay(original, events[half:]).scores
    actual = _replay(restored, events[half:]).scores
    assert expected == actual, f"next scores differ at {_first_difference(expected, actual)}"


def check_missing_optional_fields(factory: AlerterFactory) -> None:
    """Features with only the required keys, or one optional key missing, do not raise.

    A stage detector drops keys from the features of a record it alerts on, so
    that each key it reads goes missing once.
    """
    probe = factory()
    events = _events_for(probe)
    if stage_of(probe.detector) is None:
        full = next(e.x for e in events if e.anomaly is None and e.x["amount_minor"] > 0)
    else:
        targets = TARGET_KINDS.get(probe.name, ())
        full = next(e.x for e in events if e.anomaly in targets)
    sparse: list[dict[str, Any]] = [
        {"event_type": "login", "amount_minor": 0},
        {"event_type": "payment", "amount_minor": 12_345},
        {"event_type": "payment", "amount_minor": 1},
        {"event_type": "payment", "amount_minor": 10**17},
    ]
    sparse += [
        {k: v for k, v in full.items() if k != missing}
        for missing in full
        if missing not in REQUIRED_FEATURES
    ]
    fresh = factory()
    trained = factory()
    _replay(trained, events)
    for alerter in (fresh, trained):
        detector = alerter.detector
        for x in sparse:
            state = detector.new_state() if isinstance(detector, KeyedDetector) else None
            try:
                score = _score(detector, x, state)
                if isinstance(detector, KeyedDetector):
                    reasons = detector.explain_one(x, state, score)
                else:
                    reasons = detector.explain_one(x, score)
                alerter.process_one(x, state)
            except Exception as error:
                message = f"{error!r} on features {x}"
                raise AssertionError(message) from error
            assert math.isfinite(score), f"score {score!r} for {x}"
            assert reasons and all(isinstance(r, str) and r for r in reasons), reasons


def check_findings_have_reasons(factory: AlerterFactory) -> None:
    """Every finding names its detector, a valid severity and reasons with numbers in them."""
    alerter = factory()
    findings = [f for f in _replay(alerter, _events_for(alerter)).findings if f is not None]
    assert findings, "no finding on the labelled stream"
    for finding in findings:
        assert finding.detector == alerter.name
        assert finding.severity in SEVERITIES
        assert finding.score >= alerter.threshold
        assert finding.reasons, f"finding without reasons: {finding}"
        for reason in finding.reasons:
            assert any(c.isdigit() for c in reason), f"reason without a number: {reason!r}"


def check_beats_chance(factory: AlerterFactory) -> None:
    """Injected anomalies of the kinds a detector targets are flagged more often than normal events.

    The kinds are those of :data:`TARGET_KINDS` (every kind for a detector not
    listed there); anomalies of other kinds count neither way.
    """
    alerter = factory()
    targets = TARGET_KINDS.get(alerter.name, ANOMALY_KINDS)
    events = _events_for(alerter)
    findings = _replay(alerter, events).findings
    flagged = {True: 0, False: 0}
    totals = {True: 0, False: 0}
    for event, finding in zip(events, findings, strict=True):
        if event.anomaly is not None and event.anomaly not in targets:
            continue
        is_anomaly = event.anomaly is not None
        totals[is_anomaly] += 1
        flagged[is_anomaly] += finding is not None
    assert totals[True], f"no injected anomaly of the kinds {targets}"
    anomaly_rate = flagged[True] / totals[True]
    normal_rate = flagged[False] / totals[False]
    assert anomaly_rate > normal_rate, (
        f"flagged {anomaly_rate:.1%} of {totals[True]} anomalies"
        f" but {normal_rate:.1%} of {totals[False]} normal events"
    )


def check_flagged_not_learnt(factory: AlerterFactory) -> None:
    """By default, processing an event that is flagged leaves the model as it was."""
    alerter = factory()
    assert not alerter.learn_flagged, "the default must not learn flagged events"
    detector = alerter.detector
    states: dict[str, Any] = {}
    flagged = 0
    for event in labelled_stream():
        state = states.get(event.account_id)
        if isinstance(detector, KeyedDetector) and state is None:
            state = detector.new_state()
        if _score(detector, event.x, state) < alerter.threshold:
            _, states[event.account_id] = alerter.process_one(event.x, state)
            continue
        # Only about to be flagged: a snapshot of a large global model is not free.
        before = (
            copy.deepcopy(state) if isinstance(detector, KeyedDetector) else detector.snapshot()
        )
        finding, states[event.account_id] = alerter.process_one(event.x, state)
        assert finding is not None, f"score at the threshold but no finding: {event.x}"
        flagged += 1
        if isinstance(detector, KeyedDetector):
            after = states[event.account_id]
        else:
            after = detector.snapshot()
        assert after == before, f"the model learnt a flagged event: {event.x}"
    assert flagged, "no event was flagged, so nothing was checked"


def check_stateless(factory: AlerterFactory) -> None:
    """A stage detector keeps nothing between records: scores depend on the features alone.

    Its stage persists the sketches and nothing of the detector, so what a
    detector learnt would be lost at every restart and scores would differ
    after one.
    """
    events = _events_for(factory())
    half = len(events) // 2
    seasoned = factory()
    _replay(seasoned, events[:half])
    after_history = _replay(seasoned, events[half:]).scores
    fresh = _replay(factory(), events[half:]).scores
    assert after_history == fresh, (
        f"scores depend on earlier records: {_first_difference(after_history, fresh)}"
    )
    detector = seasoned.detector
    assert isinstance(detector, Detector), "a stage detector is a Detector, not a KeyedDetector"
    snapshot = detector.snapshot()
    assert snapshot is None, f"a stage detector has state its stage would lose: {snapshot!r}"


def check_ledger_learns_every_event(factory: AlerterFactory) -> None:
    """A detector keeping a ledger records every event, flagged or not.

    Its state holds facts (a balance, open loans, the population a learnt
    limit comes from), not a model an attack could teach: processing the
    stream with alerts must leave exactly the states (for a global detector,
    the snapshot) that learning every event gives.
    """
    alerter = factory()
    assert alerter.learn_flagged, "a detector keeping a ledger must learn the events it flags"
    events = labelled_stream()
    processed = _replay(alerter, events)
    assert any(processed.findings), "no event was flagged, so nothing was checked"
    detector = factory().detector
    if isinstance(detector, Detector):
        for event in events:
            detector.learn_one(event.x)
        processed_detector = alerter.detector
        assert isinstance(processed_detector, Detector)
        assert processed_detector.snapshot() == detector.snapshot(), (
            "the snapshot after alerting differs from the one learnt from every event"
        )
        return
    learnt: dict[str, Any] = {}
    for event in events:
        state = learnt.get(event.account_id)
        if state is None:
            state = detector.new_state()
        learnt[event.account_id] = detector.learn_one(event.x, state)
    for account, state in learnt.items():
        assert processed.states[account] == state, (
            f"{account}: the ledger after alerting differs from the one learnt from every event"
        )


def checks_for(alerter: ThresholdAlerter) -> list[Check]:
    """The checks that apply to ``alerter``'s kind of detector.

    A detector that keeps a ledger (class attribute ``keeps_ledger``) learns the
    events it flags, so :func:`check_ledger_learns_every_event` replaces
    :func:`check_flagged_not_learnt` for it. A stage detector (class attribute
    ``stage``) runs on its stage's features (:func:`stage_stream`) and must
    keep no state (:func:`check_stateless`); its stage's sketch snapshot and
    replay guard are checked where the stage is, in
    ``tests/support/stage_conformance.py``.
    """
    checks: list[Check] = [
        check_seeded_repeatability,
        check_clone_is_fresh,
        check_missing_optional_fields,
        check_findings_have_reasons,
        check_beats_chance,
    ]
    if stage_of(alerter.detector) is not None:
        checks.append(check_stateless)
        return checks
    if alerter.detector.keeps_ledger:
        checks.append(check_ledger_learns_every_event)
    else:
        checks.append(check_flagged_not_learnt)
    if isinstance(alerter.detector, KeyedDetector):
        checks.append(check_state_json_round_trip)
    else:
        checks.append(check_snapshot_restore)
    return checks


def check_id(check: Check) -> str:
    """The short name of a check in test ids: ``check_beats_chance`` -> ``beats_chance``."""
    return check.__name__.removeprefix("check_")
