"""Structuring: amounts just below the reporting threshold, several within a window."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from detectors import DEFAULT_CONFIG, Structuring, build_alerters
from detectors.structuring import MAX_KEPT

#: The shipped threshold in the simulator's currency.
CNY = {"CNY": {"threshold": 5_000_000}}
DAY = 86_400
T0 = 1_709_510_400


def top_up(amount: int, ts: int, event_type: str = "top_up") -> dict[str, Any]:
    return {"event_type": event_type, "amount_minor": amount, "ts": ts, "is_inflow": True,
            "currency": "CNY"}


def learnt(detector: Structuring, *events: dict[str, Any]) -> list[list[int]]:
    state = detector.new_state()
    for x in events:
        state = detector.learn_one(x, state)
    return state


@pytest.mark.parametrize(
    ("amount", "qualifies"),
    [
        (4_499_999, False),  # one cent under the band
        (4_500_000, True),  # the band's floor, 90% of the threshold exactly
        (4_999_999, True),  # one cent under the threshold
        (5_000_000, False),  # at the threshold: reported anyway
        (7_000_000, False),
    ],
)
def test_band_edges_are_exact_to_the_cent(amount: int, qualifies: bool) -> None:
    detector = Structuring(currency_limits=CNY)
    state = learnt(detector, top_up(4_800_000, T0), top_up(4_900_000, T0 + 60))
    score = detector.score_one(top_up(amount, T0 + 120), state)
    assert score == (1.0 if qualifies else 0.0)


def test_the_band_floor_is_computed_without_float_error() -> None:
    # 0.7 * 1,000 is 700.0000000000001 in floats; the floor must be 700, not 701.
    detector = Structuring(
        currency_limits={"CNY": {"threshold": 1_000}}, band_fraction=0.7, min_count=1
    )
    assert detector.score_one(top_up(700, T0), detector.new_state()) == 1.0
    assert detector.score_one(top_up(699, T0), detector.new_state()) == 0.0


def test_events_exactly_a_window_apart_are_in_one_window_a_second_more_is_not() -> None:
    detector = Structuring(window_seconds=DAY, currency_limits=CNY)
    state = learnt(detector, top_up(4_800_000, T0), top_up(4_800_000, T0 + DAY // 2))
    assert detector.score_one(top_up(4_800_000, T0 + DAY), state) == 1.0
    assert detector.score_one(top_up(4_800_000, T0 + DAY + 1), state) == pytest.approx(2 / 3)


def test_only_watched_types_count() -> None:
    detector = Structuring(currency_limits=CNY)
    state = learnt(
        detector, top_up(4_800_000, T0, "payment"), top_up(4_800_000, T0 + 1, "refund")
    )
    assert state == []
    assert detector.score_one(top_up(4_800_000, T0 + 2, "withdrawal"), state) == pytest.approx(
        1 / 3
    )
    assert detector.score_one(top_up(4_800_000, T0 + 2, "payment"), state) == 0.0


def test_a_late_event_meets_the_events_on_both_sides_of_it() -> None:
    # Arrival order 3rd, 1st, then the 2nd arrives last: the window around it holds all three.
    detector = Structuring(currency_limits=CNY)
    state = learnt(detector, top_up(4_700_000, T0 + 7_200), top_up(4_600_000, T0))
    late = top_up(4_900_000, T0 + 3_600)
    assert detector.score_one(late, state) == 1.0
    reasons = detector.explain_one(late, state, 1.0)
    assert "amounts 46,000.00, 49,000.00 and 47,000.00: 142,000.00 in all" in reasons[1]
    assert "within 2 h" in reasons[0]


def test_a_window_late_event_is_still_placed_but_older_ones_are_forgotten() -> None:
    detector = Structuring(window_seconds=DAY, currency_limits=CNY)
    state = learnt(detector, top_up(4_800_000, T0), top_up(4_800_000, T0 + 3 * DAY))
    # The first is more than two windows behind the newest: pruned.
    assert [kept[0] for kept in state] == [T0 + 3 * DAY]
    state = learnt(detector, top_up(4_800_000, T0 + 10 * DAY), top_up(4_800_000, T0 + 9 * DAY))
    assert [kept[0] for kept in state] == [T0 + 9 * DAY, T0 + 10 * DAY]


def test_reasons_name_every_amount_the_threshold_and_the_span() -> None:
    detector = Structuring(currency_limits=CNY)
    state = learnt(detector, top_up(4_800_000, T0), top_up(4_950_000, T0 + 3_600))
    x = top_up(4_990_000, T0 + 5 * 3_600 + 720)
    (summary, amounts) = detector.explain_one(x, state, detector.score_one(x, state))
    assert summary == (
        "3 amounts between 45,000.00 and 49,999.99, just below the 50,000.00 CNY reporting"
        " threshold (configured for CNY), within 5 h 12 min (alert at 3 within 1 d)"
    )
    assert amounts == "amounts 48,000.00, 49,500.00 and 49,900.00: 147,400.00 in all"


def test_not_scored_events_say_why() -> None:
    detector = Structuring(currency_limits=CNY)
    state = detector.new_state()
    assert "login is not a watched type" in detector.explain_one(
        {"event_type": "login", "amount_minor": 0}, state, 0.0
    )[0]
    assert detector.explain_one(top_up(120_000, T0), state, 0.0) == [
        "amount 1,200.00 is not between 45,000.00 and 49,999.99"
    ]
    no_time = {"event_type": "top_up", "amount_minor": 4_800_000, "currency": "CNY"}
    assert detector.score_one(no_time, state) == 0.0
    assert detector.learn_one(no_time, state) == []
    assert "no event time" in detector.explain_one(no_time, state, 0.0)[0]


def test_state_is_bounded_json_whatever_the_traffic() -> None:
    detector = Structuring(currency_limits=CNY)
    state = detector.new_state()
    for i in range(1_000):
        state = detector.learn_one(top_up(4_800_000 + i, T0 + 10 * i), state)
    assert len(state) == MAX_KEPT
    assert [kept[0] for kept in state] == sorted(kept[0] for kept in state)
    assert state[-1] == [T0 + 9_990, 4_800_999]
    assert orjson.loads(orjson.dumps(state)) == state
    # A saturated state still scores: at most MAX_KEPT + 1 amounts in a window.
    assert detector.score_one(top_up(4_800_000, T0 + 10_000), state) == (MAX_KEPT + 1) / 3


def test_the_alerter_flags_the_third_and_every_one_after_while_the_pattern_lasts() -> None:
    (alerter,) = build_alerters(
        {"version": "t", "detectors": {"structuring": DEFAULT_CONFIG["detectors"]["structuring"]}}
    )
    assert alerter.learn_flagged
    state = None
    scores = []
    # Every 10 hours: the first two age out of the window, but the flagged ones count.
    for i in range(6):
        finding, state = alerter.process_one(top_up(4_900_000, T0 + i * 36_000), state)
        scores.append(None if finding is None else round(finding.score, 2))
    assert scores == [None, None, 1.0, 1.0, 1.0, 1.0]
    # All learnt, flagged or not; the first is more than two windows old and forgotten.
    assert [kept[0] for kept in state] == [T0 + i * 36_000 for i in range(1, 6)]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"currency_limits": {"CNY": {"threshold": 0}}}, "must be an int >= 1"),
        ({"band_fraction": 0}, "band_fraction must be a number in"),
        ({"band_fraction": 1.2}, "band_fraction must be a number in"),
        ({"min_count": MAX_KEPT + 1}, "min_count must be at most"),
        ({"window_seconds": 1.5}, "window_seconds must be an int >= 1"),
        ({"event_types": "transfer"}, "event_types must be a list"),
        ({"event_types": []}, "event_types must not be empty"),
    ],
)
def test_refuses_bad_parameters(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Structuring(**params)
