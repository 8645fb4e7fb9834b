"""Every registered detector passes every generic check that applies to it.

Test ids are ``detector:check``, e.g. ``amount_outlier:state_json_round_trip``
or ``cycle:snapshot_restore``. Stage detectors (flow, identity, project) go
through the checks of ``detectors/conformance/`` on their stage's features, then
through the checks of the stage itself (``tests/support/stage_conformance.py``:
snapshot and restore, replays, records with fields missing).
"""

from __future__ import annotations

import copy
import doctest
import random
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, ClassVar

import orjson
import pytest

from detectors.base import Detector, Features, KeyedDetector, Sketch, ThresholdAlerter
from detectors.conformance import (
    ANOMALY_KINDS,
    STAGE_ANOMALY_KINDS,
    TARGET_KINDS,
    AlerterFactory,
    Check,
    check_beats_chance,
    check_clone_is_fresh,
    check_flagged_not_learnt,
    check_id,
    check_ledger_learns_every_event,
    check_missing_optional_fields,
    check_seeded_repeatability,
    check_snapshot_restore,
    check_state_json_round_trip,
    check_stateless,
    checks_for,
    labelled_stage_records,
    labelled_stream,
    stage_of,
)
from detectors.crowdfunding import ProjectSketch
from detectors.flow import edge_origins
from detectors.registry import DEFAULT_CONFIG, DETECTORS, STAGE_DETECTORS, build_alerters
from streams.events import Event
from streams.stages import STAGES, DerivedStage, StageOutcome, _sketch_of, forwards_for
from tests.support import stage_conformance
from tests.support.stage_conformance import (
    STAGE_CHECKS,
    StageCheck,
    StageFactory,
    stage_check_id,
    stage_factory,
)

#: Parameters laid over the shipped ones. The packaged blacklist is empty (a deployment
#: lists its own hashes); with an empty list, detectors.conformance injects the stand-in hash
#: "0" * 32 as the listed identity, so the suite lists that one.
_LISTED_FOR_THE_CHECKS: dict[str, dict[str, Any]] = {"blacklist": {"hashes": ["0" * 32]}}
#: Fixed thresholds standing in for a shipped alert budget without a floor. The
#: labelled stream is too short and too rich in anomalies for a budget (0.2% of
#: 4,000 events is 8 alerts); budgets have their own suite, tests/unit/test_budget.py.
_THRESHOLD_IN_PLACE_OF_BUDGET: dict[str, float] = {"global_anomaly": 0.9}


def _factory(name: str) -> AlerterFactory:
    """Fresh alerters for one detector, configured as it ships but with a fixed threshold."""
    spec = copy.deepcopy(DEFAULT_CONFIG["detectors"][name])
    if name in _LISTED_FOR_THE_CHECKS:
        spec["params"].update(_LISTED_FOR_THE_CHECKS[name])
    if spec.pop("budget", None) is not None:
        if "threshold" not in spec:
            spec["threshold"] = _THRESHOLD_IN_PLACE_OF_BUDGET[name]
        spec.pop("segment_by", None)
        spec.pop("min_scored", None)
    config = {"version": DEFAULT_CONFIG["version"], "detectors": {name: spec}}

    def factory() -> ThresholdAlerter:
        (alerter,) = build_alerters(config)
        return alerter

    return factory


CASES = [
    pytest.param(name, check, id=f"{name}:{check_id(check)}")
    for name in [*DETECTORS, *STAGE_DETECTORS]
    if name in DEFAULT_CONFIG["detectors"]
    for check in checks_for(_factory(name)())
]

#: Stage checks known to fail, with the reason (none at present): (detector, check) -> mark.
_KNOWN_STAGE_BUGS: dict[tuple[str, str], pytest.MarkDecorator] = {}

STAGE_CASES = [
    pytest.param(
        name, check, id=f"{name}:{stage_check_id(check)}",
        marks=_KNOWN_STAGE_BUGS.get((name, stage_check_id(check)), ()),
    )
    for name in STAGE_DETECTORS
    for check in STAGE_CHECKS
]  # fmt: skip


def test_every_registered_detector_has_a_default_configuration() -> None:
    assert set(DETECTORS) | set(STAGE_DETECTORS) == set(DEFAULT_CONFIG["detectors"])


def test_every_registered_detector_names_the_anomalies_it_exists_to_catch() -> None:
    assert set(TARGET_KINDS) == set(DETECTORS) | set(STAGE_DETECTORS)
    targeted = {kind for name in DETECTORS for kind in TARGET_KINDS[name]}
    assert targeted == set(ANOMALY_KINDS)
    injected = {event.anomaly for event in labelled_stream()} - {None}
    assert injected == set(ANOMALY_KINDS)
    for stage, kinds in STAGE_ANOMALY_KINDS.items():
        detectors = [name for name, cls in STAGE_DETECTORS.items() if stage_of(cls) == stage]
        assert {kind for name in detectors for kind in TARGET_KINDS[name]} == set(kinds), stage
        records = labelled_stage_records(stage)
        labels = {r.anomaly for r in records} | {r.back_anomaly for r in records}
        assert labels - {None} == set(kinds), stage


def test_every_registered_detector_documents_a_runnable_example() -> None:
    finder = doctest.DocTestFinder(recurse=False)
    for name, cls in {**DETECTORS, **STAGE_DETECTORS}.items():
        examples = sum(len(test.examples) for test in finder.find(cls))
        assert examples, f"{name}: {cls.__name__} has no Examples section with a doctest"


def _forwarded(event: Event) -> list[dict[str, Any]]:
    x = {"ts": int(event.occurred_at.timestamp()), "account_events": 3}
    return [forward.record for forward in forwards_for(event, x, lambda _: None, edge_origins)]


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_sketch_keeps_the_sketch_contract(stage: str) -> None:
    # what a restarted worker relies on: the changelog form rebuilds an equal sketch
    factory, observe = _sketch_of(stage)
    sketches: dict[str, Any] = {}
    for labelled in labelled_stage_records(stage)[:300]:
        record = dict(labelled.record)
        if record.get("kind") == "edge":  # stage 1 adds these as it forwards (none known here)
            record["sender_origins"] = edge_origins(None, record["sender"], record["ts"])
        key = record["_key"]
        observe(sketches.setdefault(key, factory.new()), record)
    assert len(sketches) > 10
    for sketch in sketches.values():
        assert isinstance(sketch, Sketch)
        state = sketch.to_state()
        assert isinstance(state, list) and orjson.loads(orjson.dumps(state)) == state
        assert factory.from_state(state) == sketch


def test_labelled_stage_records_are_shaped_like_what_stage_1_forwards() -> None:
    at = datetime(2024, 3, 4, tzinfo=UTC)
    pii = {"device_id": "d" * 32, "phone": "p" * 32, "national_id": "n" * 32}
    transfer = Event("e1", "transfer", at, "acct-1", 100, "CNY", counterparty_id="acct-2")
    login = Event("e2", "login", at, "acct-1", pii=pii)
    pledge = Event("e3", "pledge", at, "acct-1", 100, "CNY", pii=pii,
                   attributes={"project_id": "proj-1"})  # fmt: skip
    (edge,) = _forwarded(transfer)
    expected = {
        "flow": {frozenset(edge) - {"sender_origins"}},
        "identity": {frozenset(record) for record in _forwarded(login)},
        "project": {frozenset(record) for record in _forwarded(pledge)},
    }
    for stage, shapes in expected.items():
        generated = {frozenset(r.record) for r in labelled_stage_records(stage)}
        assert generated == shapes, stage


def test_ledger_detectors_learn_flagged_events_and_others_do_not() -> None:
    for name, cls in DETECTORS.items():
        (alerter,) = build_alerters(
            {"version": "v", "detectors": {name: DEFAULT_CONFIG["detectors"][name]}}
        )
        assert alerter.learn_flagged == getattr(cls, "keeps_ledger", False), name
        names = [check.__name__ for check in checks_for(alerter)]
        ledger = "check_ledger_learns_every_event" in names
        assert ledger != ("check_flagged_not_learnt" in names), name


@pytest.mark.parametrize(("name", "check"), CASES)
def test_conformance(name: str, check: Check) -> None:
    check(_factory(name))


@pytest.mark.parametrize(("name", "check"), STAGE_CASES)
def test_stage_conformance(name: str, check: StageCheck) -> None:
    check(stage_factory(name))


# -- the checks themselves: each must fail the kind of detector it exists to catch ---------------


class _UnseededNoise(Detector):
    name = "unseeded_noise"

    def score_one(self, x: Features) -> float:
        return random.random()

    def explain_one(self, x: Features, score: float) -> list[str]:
        return [f"noise {score}"]


class _RaisesOnMissingWindow(Detector):
    name = "raises_on_missing_window"

    def score_one(self, x: Features) -> float:
        return float(x["count_1h"] > 10)

    def explain_one(self, x: Features, score: float) -> list[str]:
        return [f"{x['count_1h']} in the hour"]


class _FlagsTheOrdinary(Detector):
    """Scores high exactly when nothing is going on."""

    name = "flags_the_ordinary"

    def score_one(self, x: Features) -> float:
        return float(x.get("count_1m", 0) == 1)

    def explain_one(self, x: Features, score: float) -> list[str]:
        return ["1 transaction in a minute"]


class _LiveSnapshot(Detector):
    """Hands out its live counter instead of a copy."""

    name = "live_snapshot"

    def __init__(self) -> None:
        self._seen = [0]

    def learn_one(self, x: Features) -> None:
        self._seen[0] += 1

    def score_one(self, x: Features) -> float:
        return self._seen[0] / 1e9

    def explain_one(self, x: Features, score: float) -> list[str]:
        return [f"{self._seen[0]} seen"]

    def snapshot(self) -> Any:
        return self._seen

    def restore(self, snapshot: Any) -> None:
        self._seen = snapshot


class _SharedMemory(Detector):
    """Keeps what it learns in a parameter, so clones share it."""

    name = "shared_memory"

    def __init__(self, memory: list[int] | None = None) -> None:
        self.memory = [] if memory is None else memory

    def learn_one(self, x: Features) -> None:
        self.memory.append(x["amount_minor"])

    def score_one(self, x: Features) -> float:
        return len(self.memory) / 1e9

    def explain_one(self, x: Features, score: float) -> list[str]:
        return [f"{len(self.memory)} remembered"]

    def snapshot(self) -> Any:
        return list(self.memory)

    def restore(self, snapshot: Any) -> None:
        self.memory = list(snapshot)


class _LearnsWhileScoring(KeyedDetector[list[int]]):
    """Updates the account's state in score_one, so even flagged events are learnt."""

    name = "learns_while_scoring"

    def new_state(self) -> list[int]:
        return [0]

    def score_one(self, x: Features, state: list[int]) -> float:
        state[0] += 1
        return float(x.get("count_1m", 0) > 10)

    def learn_one(self, x: Features, state: list[int]) -> list[int]:
        return state

    def explain_one(self, x: Features, state: list[int], score: float) -> list[str]:
        return [f"{state[0]} events"]


class _TupleState(KeyedDetector[Any]):
    """Keeps a tuple, which JSON turns into a list."""

    name = "tuple_state"

    def new_state(self) -> Any:
        return (0, 0.0)

    def score_one(self, x: Features, state: Any) -> float:
        return float(x.get("count_1m", 0) > 10)

    def learn_one(self, x: Features, state: Any) -> Any:
        return (state[0] + 1, state[1] + 0.5)

    def explain_one(self, x: Features, state: Any, score: float) -> list[str]:
        return [f"{state[0]} events"]


class _ForgetfulLedger(KeyedDetector[list[int]]):
    """A running balance that, under a default alerter, misses the events it flags."""

    name = "forgetful_ledger"
    keeps_ledger = True

    def new_state(self) -> list[int]:
        return [0]

    def score_one(self, x: Features, state: list[int]) -> float:
        return float(x.get("amount_minor", 0) >= 1_000_000)

    def learn_one(self, x: Features, state: list[int]) -> list[int]:
        sign = 1 if x.get("is_inflow") else -1 if x.get("is_outflow") else 0
        return [max(0, state[0] + sign * x.get("amount_minor", 0))]

    def explain_one(self, x: Features, state: list[int], score: float) -> list[str]:
        return [f"balance {state[0]}"]


@pytest.mark.parametrize(
    ("detector", "check"),
    [
        pytest.param(_UnseededNoise(), check_seeded_repeatability, id="seeded_repeatability"),
        pytest.param(_ForgetfulLedger(), check_ledger_learns_every_event, id="ledger"),
        pytest.param(_RaisesOnMissingWindow(), check_missing_optional_fields, id="missing_fields"),
        pytest.param(_FlagsTheOrdinary(), check_beats_chance, id="beats_chance"),
        pytest.param(_LiveSnapshot(), check_snapshot_restore, id="snapshot_restore"),
        pytest.param(_SharedMemory(), check_clone_is_fresh, id="clone_is_fresh"),
        pytest.param(_LearnsWhileScoring(), check_flagged_not_learnt, id="flagged_not_learnt"),
        pytest.param(_TupleState(), check_state_json_round_trip, id="state_json_round_trip"),
    ],
)
def test_check_fails_a_detector_that_breaks_its_rule(
    detector: Detector | KeyedDetector[Any], check: Check
) -> None:
    def factory() -> ThresholdAlerter:
        return ThresholdAlerter(detector.clone(), threshold=1.0)

    with pytest.raises(AssertionError):
        check(factory)


def test_ledger_check_fails_a_ledger_that_counts_flagged_events_twice() -> None:
    class _DoubleCounting(_ForgetfulLedger):
        def score_one(self, x: Features, state: list[int]) -> float:
            score = super().score_one(x, state)
            if score:
                state[0] += x["amount_minor"]  # learning while scoring
            return score

    def factory() -> ThresholdAlerter:
        return ThresholdAlerter(_DoubleCounting(), threshold=1.0, learn_flagged=True)

    with pytest.raises(AssertionError, match="differs from the one learnt"):
        check_ledger_learns_every_event(factory)


# -- the stage checks: each must fail the kind of stage it exists to catch ------------------------


class _LearnsFromRecords(Detector):
    """A stage detector that counts the records it saw: its stage would forget the count."""

    name = "learns_from_records"
    stage: ClassVar[str] = "project"

    def __init__(self) -> None:
        self._seen = 0

    def learn_one(self, x: Features) -> None:
        self._seen += 1

    def score_one(self, x: Features) -> float:
        return float(x.get("event_type") == "pledge_refund") + self._seen / 1e6

    def explain_one(self, x: Features, score: float) -> list[str]:
        return [f"{self._seen} records seen"]


def test_stateless_check_fails_a_stage_detector_that_learns() -> None:
    def factory() -> ThresholdAlerter:
        return ThresholdAlerter(_LearnsFromRecords(), threshold=1.0)

    with pytest.raises(AssertionError, match="depend on earlier records"):
        check_stateless(factory)


class _ForgetsRefunds(ProjectSketch):
    """Leaves its refunds out of its snapshot."""

    def to_state(self) -> list[Any]:
        state = super().to_state()
        state[3] = []
        return state


class _GuessesBrandNew(ProjectSketch):
    """Takes an account without a known history for a brand-new one."""

    def observe(self, record: Any) -> dict[str, Any]:
        if record.get("account_events") is None:
            record = {**record, "account_events": 0}
        return super().observe(record)


class _NeedsDevice(ProjectSketch):
    """Refuses a record without its device key."""

    def observe(self, record: Any) -> dict[str, Any]:
        _ = record["device_id_hash"]  # the lookup is the bug
        return super().observe(record)


class _DoublesChurn(ProjectSketch):
    """Computes features the stage detector's checks never saw."""

    def observe(self, record: Any) -> dict[str, Any]:
        features = super().observe(record)
        return {**features, "churn_refunds": 2 * features["churn_refunds"]}


class _ForgetfulGuard(DerivedStage):
    """Forgets the offsets and event ids it applied: no replay guard."""

    def process(self, raw: bytes, states: Any, *, offset: int | None,
                now: datetime | None = None,
                source_timestamp: float | None = None) -> StageOutcome:
        outcome = super().process(raw, states, offset=offset, now=now,
                                  source_timestamp=source_timestamp)
        if outcome.key is not None and outcome.rejected is None:
            entry = states[outcome.key]
            entry.offset = -1
            entry.recent_ids.clear()
            entry.alerted.clear()
        return outcome


def _project_stage(detector: str, sketch: type[ProjectSketch]) -> StageFactory:
    def factory() -> DerivedStage:
        shipped = stage_factory(detector)()
        return DerivedStage(shipped.name, sketch.new, sketch.from_state,
                            lambda s, record: (s.observe(record), []),
                            shipped.alerters, shipped.config_version)  # fmt: skip

    return factory


def _unguarded(detector: str) -> StageFactory:
    def factory() -> DerivedStage:
        shipped = stage_factory(detector)()
        return _ForgetfulGuard(shipped.name, shipped.new_sketch, shipped.load_sketch,
                               shipped.observe, shipped.alerters, shipped.config_version)

    return factory


@pytest.mark.parametrize(
    ("factory", "check", "message"),
    [
        pytest.param(_project_stage("pledge_churn", _ForgetsRefunds),
                     stage_conformance.check_snapshot_restore, "differ after restarts",
                     id="snapshot_restore"),
        pytest.param(_unguarded("loan_stacking"), stage_conformance.check_replay_no_second_alert,
                     "second alert", id="replay_no_second_alert"),
        pytest.param(_project_stage("suspicious_pledging", _GuessesBrandNew),
                     stage_conformance.check_missing_record_fields, "full records do not raise",
                     id="missing_record_fields:invented_alert"),
        pytest.param(_project_stage("suspicious_pledging", _NeedsDevice),
                     stage_conformance.check_missing_record_fields, "refused",
                     id="missing_record_fields:refused"),
        pytest.param(_project_stage("pledge_churn", _DoublesChurn),
                     stage_conformance.check_stage_matches_features, "disagree",
                     id="stage_matches_features"),
    ],
)  # fmt: skip
def test_stage_check_fails_a_stage_that_breaks_its_rule(
    factory: Callable[[], DerivedStage], check: StageCheck, message: str
) -> None:
    with pytest.raises(AssertionError, match=message):
        check(factory)


def test_the_shipped_stages_pass_the_checks_their_broken_variants_fail() -> None:
    # The broken variants above differ from the shipped stage only in what they break.
    stage_conformance.check_snapshot_restore(_project_stage("pledge_churn", ProjectSketch))
    stage_conformance.check_missing_record_fields(_project_stage("suspicious_pledging",
                                                                 ProjectSketch))
    stage_conformance.check_stage_matches_features(_project_stage("pledge_churn", ProjectSketch))
