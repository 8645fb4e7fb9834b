"""The conformance suite: generic checks every registered detector passes.

Each check takes a factory returning a fresh :class:`ThresholdAlerter` (as
:func:`detectors.registry.build_alerters` builds them) and raises
``AssertionError`` with an explanation when the detector breaks the contract.
:func:`checks_for` lists the checks that apply to an alerter's detector;
``tests/unit/test_conformance.py`` runs them with ids ``detector:check``.

The checks run on :func:`labelled_stream`, a seeded synthetic stream of
feature mappings shaped like ``streams/features.py`` output, with a few
injected anomalies of known kind.

Examples
--------
>>> from detectors.registry import DEFAULT_CONFIG, build_alerters
>>> def velocity() -> ThresholdAlerter:
...     return build_alerters(DEFAULT_CONFIG)[0]
>>> [check.__name__ for check in checks_for(velocity())]  # doctest: +NORMALIZE_WHITESPACE
['check_seeded_repeatability', 'check_clone_is_fresh', 'check_missing_optional_fields',
 'check_findings_have_reasons', 'check_beats_chance', 'check_flagged_not_learnt',
 'check_snapshot_restore']
>>> for check in checks_for(velocity()):
...     check(velocity)
"""

from __future__ import annotations

import copy
import json
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson

from detectors.base import SEVERITIES, Detector, Features, Finding, KeyedDetector, ThresholdAlerter

AlerterFactory = Callable[[], ThresholdAlerter]
Check = Callable[[AlerterFactory], None]

#: The keys every feature mapping carries; everything else may be missing.
REQUIRED_FEATURES: Final = ("event_type", "amount_minor")
#: Kinds of injected anomaly in :func:`labelled_stream`.
ANOMALY_KINDS: Final = ("large_amount", "burst", "fan_out")

_OUTFLOW: Final = frozenset({"payment", "transfer", "withdrawal", "pledge"})
_INFLOW: Final = frozenset({"top_up", "refund"})
_NORMAL_TYPES: Final = ("payment", "transfer", "top_up", "login")
_NORMAL_WEIGHTS: Final = (0.6, 0.2, 0.1, 0.1)
#: Monetary events an account needs before an anomaly is injected into it.
_HISTORY_BEFORE_ANOMALY: Final = 10


@dataclass(frozen=True, slots=True)
class LabelledEvent:
    """One synthetic event: its account, its features and what was injected."""

    account_id: str
    x: dict[str, Any]
    #: One of :data:`ANOMALY_KINDS`, or ``None`` for normal behaviour.
    anomaly: str | None


def labelled_stream(
    n_events: int = 4_000,
    *,
    seed: int = 20_240_601,
    n_accounts: int = 40,
    anomaly_rate: float = 0.03,
) -> list[LabelledEvent]:
    """A seeded stream of normal events with a few injected anomalies.

    Normal accounts each have a usual amount (5.00 to 1,000.00, log-normal
    spread), a few counterparties, daytime hours and a handful of transactions
    a day; one event in ten is a login without amount. Once an account has some
    history, an event is replaced with probability ``anomaly_rate`` by a
    ``large_amount`` (50 to 400 times the usual), a ``burst`` (a dozen or more
    transactions in a minute, at night) or a ``fan_out`` (dozens of
    counterparties in a day).

    Parameters
    ----------
    n_events
        Length of the stream.
    seed
        Seed of every random choice: the same arguments give the same stream.
    n_accounts
        Accounts the events are spread over.
    anomaly_rate
        Probability that an eligible event is an injected anomaly.

    Examples
    --------
    >>> stream = labelled_stream(500, seed=1)
    >>> sum(event.anomaly is not None for event in stream)
    4
    >>> stream == labelled_stream(500, seed=1)
    True
    """
    rng = random.Random(seed)
    profiles = [
        {
            "usual": math.exp(rng.uniform(math.log(500), math.log(100_000))),
            "spread": rng.uniform(0.2, 0.7),
            "hour": rng.uniform(9.0, 19.0),
            "counterparties": rng.randint(1, 4),
        }
        for _ in range(n_accounts)
    ]
    history = [0] * n_accounts
    stream = []
    for _ in range(n_events):
        account = rng.randrange(n_accounts)
        profile = profiles[account]
        anomaly = None
        if history[account] >= _HISTORY_BEFORE_ANOMALY and rng.random() < anomaly_rate:
            anomaly = rng.choice(ANOMALY_KINDS)
        x = (
            _anomalous_features(rng, profile, anomaly)
            if anomaly
            else _normal_features(rng, profile)
        )
        x["account_events"] = history[account]
        if x["amount_minor"] > 0:
            history[account] += 1
        stream.append(LabelledEvent(f"acct-{account:03d}", x, anomaly))
    return stream


def _normal_features(rng: random.Random, profile: Mapping[str, float]) -> dict[str, Any]:
    event_type = rng.choices(_NORMAL_TYPES, _NORMAL_WEIGHTS)[0]
    amount = 0
    if event_type != "login":
        amount = max(1, round(profile["usual"] * rng.lognormvariate(0.0, profile["spread"])))
    count_1m = 1 if rng.random() < 0.9 else 2
    count_1h = count_1m + rng.randint(0, 3)
    count_24h = count_1h + rng.randint(0, 8)
    distinct_24h = min(count_24h, rng.randint(1, int(profile["counterparties"])))
    hour = round(rng.gauss(profile["hour"], 2.5)) % 24
    return _window_features(
        rng, profile, event_type, amount, hour,
        (count_1m, count_1h, count_24h),
        (min(count_1m, distinct_24h), min(count_1h, distinct_24h), distinct_24h),
    )  # fmt: skip


def _anomalous_features(
    rng: random.Random, profile: Mapping[str, float], kind: str
) -> dict[str, Any]:
    usual = profile["usual"]
    amount = max(1, round(usual * rng.lognormvariate(0.0, profile["spread"])))
    hour = round(rng.gauss(profile["hour"], 2.5)) % 24
    counts = (1, 1 + rng.randint(0, 2), 3 + rng.randint(0, 6))
    distinct = (1, 1, min(counts[2], int(profile["counterparties"])))
    if kind == "large_amount":
        amount = round(usual * rng.uniform(50.0, 400.0))
        hour = rng.randrange(24)
    elif kind == "burst":
        count_1m = rng.randint(12, 25)
        count_1h = count_1m + rng.randint(10, 40)
        counts = (count_1m, count_1h, count_1h + rng.randint(0, 20))
        d_1m = rng.randint(6, count_1m)
        distinct = (d_1m, d_1m + rng.randint(0, 5), d_1m + rng.randint(5, 10))
        hour = rng.randint(0, 5)
    else:
        count_1h = rng.randint(16, 40)
        count_24h = count_1h + rng.randint(20, 60)
        d_1h = rng.randint(16, count_1h)
        counts = (rng.randint(1, 3), count_1h, count_24h)
        distinct = (min(counts[0], 2), d_1h, min(64, rng.randint(max(31, d_1h), count_24h)))
    return _window_features(rng, profile, "transfer", amount, hour, counts, distinct)


def _window_features(
    rng: random.Random,
    profile: Mapping[str, float],
    event_type: str,
    amount: int,
    hour: int,
    counts: tuple[int, int, int],
    distinct: tuple[int, int, int],
) -> dict[str, Any]:
    x: dict[str, Any] = {
        "event_type": event_type,
        "amount_minor": amount,
        "is_outflow": event_type in _OUTFLOW,
        "is_inflow": event_type in _INFLOW,
        "hour": hour,
    }
    # Each window's sum is this event's amount plus the earlier ones in it, which
    # are nested: what was in the last minute was also in the last hour.
    earlier = 0
    previous = 1
    for window, count, cps in zip(("1m", "1h", "24h"), counts, distinct, strict=True):
        for _ in range(count - previous):
            earlier += max(1, round(profile["usual"] * rng.lognormvariate(0.0, profile["spread"])))
        previous = max(previous, count)
        x[f"count_{window}"] = count
        x[f"sum_{window}"] = amount + earlier
        x[f"distinct_cp_{window}"] = cps
    return x


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


def _first_difference(left: Sequence[float], right: Sequence[float]) -> str:
    for index, (a, b) in enumerate(zip(left, right, strict=True)):
        if a != b:
            return f"event {index}: {a!r} != {b!r}"
    return "none"


# -- the checks ----------------------------------------------------------------------------------


def check_seeded_repeatability(factory: AlerterFactory) -> None:
    """Two fresh alerters fed the same events give the same finite, non-negative scores."""
    events = labelled_stream()
    first = _replay(factory(), events).scores
    second = _replay(factory(), labelled_stream()).scores
    assert first == second, f"scores differ between runs at {_first_difference(first, second)}"
    for index, score in enumerate(first):
        assert isinstance(score, float), f"event {index}: score {score!r} is not a float"
        assert math.isfinite(score) and score >= 0.0, f"event {index}: score {score!r}"


def check_clone_is_fresh(factory: AlerterFactory) -> None:
    """``clone()`` keeps the parameters and forgets what was learnt, without sharing state."""
    events = labelled_stream()
    trained = factory()
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
    cloned = _replay(ThresholdAlerter(clone, trained.threshold), events).scores
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
        original = _replay(alerter, events[half:], copy.deepcopy(states)).scores
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
    """Features with only the required keys, or one optional key missing, do not raise."""
    full = next(e.x for e in labelled_stream() if e.anomaly is None and e.x["amount_minor"] > 0)
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
    _replay(trained, labelled_stream())
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
    findings = [f for f in _replay(alerter, labelled_stream()).findings if f is not None]
    assert findings, "no finding on the labelled stream"
    for finding in findings:
        assert finding.detector == alerter.name
        assert finding.severity in SEVERITIES
        assert finding.score >= alerter.threshold
        assert finding.reasons, f"finding without reasons: {finding}"
        for reason in finding.reasons:
            assert any(c.isdigit() for c in reason), f"reason without a number: {reason!r}"


def check_beats_chance(factory: AlerterFactory) -> None:
    """Injected anomalies are flagged more often than normal events."""
    events = labelled_stream()
    findings = _replay(factory(), events).findings
    flagged = {True: 0, False: 0}
    totals = {True: 0, False: 0}
    for event, finding in zip(events, findings, strict=True):
        is_anomaly = event.anomaly is not None
        totals[is_anomaly] += 1
        flagged[is_anomaly] += finding is not None
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


def checks_for(alerter: ThresholdAlerter) -> list[Check]:
    """The checks that apply to ``alerter``'s kind of detector."""
    checks: list[Check] = [
        check_seeded_repeatability,
        check_clone_is_fresh,
        check_missing_optional_fields,
        check_findings_have_reasons,
        check_beats_chance,
        check_flagged_not_learnt,
    ]
    if isinstance(alerter.detector, KeyedDetector):
        checks.append(check_state_json_round_trip)
    else:
        checks.append(check_snapshot_restore)
    return checks


def check_id(check: Check) -> str:
    """The short name of a check in test ids: ``check_beats_chance`` -> ``beats_chance``."""
    return check.__name__.removeprefix("check_")


__all__ = [
    "ANOMALY_KINDS",
    "REQUIRED_FEATURES",
    "AlerterFactory",
    "Check",
    "LabelledEvent",
    "check_beats_chance",
    "check_clone_is_fresh",
    "check_findings_have_reasons",
    "check_flagged_not_learnt",
    "check_id",
    "check_missing_optional_fields",
    "check_seeded_repeatability",
    "check_snapshot_restore",
    "check_state_json_round_trip",
    "checks_for",
    "labelled_stream",
]
