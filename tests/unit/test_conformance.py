"""Every registered detector passes every generic check that applies to it.

Test ids are ``detector:check``, e.g. ``amount_outlier:state_json_round_trip``.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from detectors.base import Detector, Features, KeyedDetector, ThresholdAlerter
from detectors.checks import (
    ANOMALY_KINDS,
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
    checks_for,
    labelled_stream,
)
from detectors.registry import DEFAULT_CONFIG, DETECTORS, STAGE_DETECTORS, build_alerters


def _factory(name: str) -> AlerterFactory:
    """Fresh alerters for one detector, configured as it ships."""
    config = {
        "version": DEFAULT_CONFIG["version"],
        "detectors": {name: DEFAULT_CONFIG["detectors"][name]},
    }

    def factory() -> ThresholdAlerter:
        (alerter,) = build_alerters(config)
        return alerter

    return factory


CASES = [
    pytest.param(name, check, id=f"{name}:{check_id(check)}")
    for name in DETECTORS
    if name in DEFAULT_CONFIG["detectors"]
    for check in checks_for(_factory(name)())
]


def test_every_registered_detector_has_a_default_configuration() -> None:
    assert set(DETECTORS) | set(STAGE_DETECTORS) == set(DEFAULT_CONFIG["detectors"])


def test_every_registered_detector_names_the_anomalies_it_exists_to_catch() -> None:
    assert set(TARGET_KINDS) == set(DETECTORS)
    targeted = {kind for kinds in TARGET_KINDS.values() for kind in kinds}
    assert targeted == set(ANOMALY_KINDS)
    injected = {event.anomaly for event in labelled_stream()} - {None}
    assert injected == set(ANOMALY_KINDS)


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
