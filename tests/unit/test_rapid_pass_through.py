"""Rapid pass-through: the share of incoming money that left again within the window."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from detectors import DEFAULT_CONFIG, RapidPassThrough, build_alerters

#: The shipped limit in the simulator's currency.
CNY = {"CNY": {"min_inflow": 1_000_000}}
NOON = 1_709_553_600  # a multiple of 60: bucket edges fall on whole minutes


def inflow(amount: int, ts: int, event_type: str = "top_up") -> dict[str, Any]:
    return {"event_type": event_type, "amount_minor": amount, "ts": ts, "is_inflow": True,
            "currency": "CNY"}


def outflow(amount: int, ts: int, event_type: str = "withdrawal") -> dict[str, Any]:
    return {"event_type": event_type, "amount_minor": amount, "ts": ts, "is_outflow": True,
            "currency": "CNY"}


def learnt(detector: RapidPassThrough, *events: dict[str, Any]) -> list[list[int]]:
    state = detector.new_state()
    for x in events:
        state = detector.learn_one(x, state)
    return state


def test_share_of_the_inflow_that_left_including_this_outflow() -> None:
    detector = RapidPassThrough(currency_limits=CNY)
    state = learnt(detector, inflow(2_000_000, NOON), outflow(600_000, NOON + 300))
    assert detector.score_one(outflow(1_000_000, NOON + 600), state) == 0.8
    assert detector.score_one(outflow(999_999, NOON + 600), state) < 0.8


def test_spending_more_than_came_in_scores_one_not_more() -> None:
    detector = RapidPassThrough(currency_limits=CNY)
    state = learnt(detector, inflow(1_000_000, NOON))
    assert detector.score_one(outflow(5_000_000, NOON + 60), state) == 1.0


def test_inflows_below_the_minimum_are_not_judged() -> None:
    detector = RapidPassThrough(currency_limits={"CNY": {"min_inflow": 1_000_000}})
    state = learnt(detector, inflow(999_999, NOON))
    assert detector.score_one(outflow(999_999, NOON + 60), state) == 0.0
    assert "9,999.99 received in the last 30 min, below the 10,000.00 judged" in (
        detector.explain_one(outflow(999_999, NOON + 60), state, 0.0)[0]
    )
    # Two inflows in the window add up.
    state = learnt(detector, inflow(500_000, NOON), inflow(500_000, NOON + 120))
    assert detector.score_one(outflow(1_000_000, NOON + 180), state) == 1.0


def test_the_window_reaches_back_between_one_window_and_one_bucket_more() -> None:
    detector = RapidPassThrough(window_seconds=1_800, bucket_seconds=60, currency_limits=CNY)
    state = learnt(detector, inflow(2_000_000, NOON))
    # The inflow's bucket starts at NOON: an outflow 30 min 59 s later still sees it ...
    assert detector.score_one(outflow(2_000_000, NOON + 1_859), state) == 1.0
    # ... and one in the next minute does not.
    assert detector.score_one(outflow(2_000_000, NOON + 1_860), state) == 0.0


def test_outflows_before_the_first_inflow_do_not_count() -> None:
    detector = RapidPassThrough(currency_limits=CNY)
    state = learnt(detector, outflow(1_900_000, NOON), inflow(2_000_000, NOON + 300))
    assert detector.score_one(outflow(100_000, NOON + 600), state) == 0.05


def test_money_coming_in_and_events_without_amount_or_time_score_zero() -> None:
    detector = RapidPassThrough(currency_limits=CNY)
    state = learnt(detector, inflow(2_000_000, NOON), outflow(1_900_000, NOON + 60))
    assert detector.score_one(inflow(2_000_000, NOON + 120, "refund"), state) == 0.0
    assert detector.score_one({"event_type": "login", "amount_minor": 0, "ts": NOON}, state) == 0.0
    no_time = {"event_type": "withdrawal", "amount_minor": 2_000_000, "is_outflow": True}
    assert detector.score_one(no_time, state) == 0.0
    assert detector.learn_one(no_time, state) == state
    assert detector.explain_one(no_time, state, 0.0)[0].startswith("not scored")


def test_a_late_outflow_is_judged_against_what_came_in_before_it() -> None:
    detector = RapidPassThrough(currency_limits=CNY)
    # The payments topic ran ahead: a later outflow was processed before this one.
    state = learnt(detector, inflow(3_000_000, NOON), outflow(500_000, NOON + 1_200))
    late = outflow(2_500_000, NOON + 600)
    # Only what left up to its own time counts: the later 5,000.00 does not.
    assert detector.score_one(late, state) == pytest.approx(2_500_000 / 3_000_000)


def test_a_late_inflow_is_judged_by_the_next_outflow() -> None:
    detector = RapidPassThrough(currency_limits=CNY)
    early = outflow(1_500_000, NOON + 300)
    # The outflow is processed before the inflow that preceded it: nothing to judge yet.
    assert detector.score_one(early, detector.new_state()) == 0.0
    state = learnt(detector, early, inflow(2_000_000, NOON))
    # The next outflow sees both: 15,000.00 + 2,000.00 of 20,000.00.
    assert detector.score_one(outflow(200_000, NOON + 600), state) == 0.85


def test_reason_gives_the_share_amounts_and_time() -> None:
    detector = RapidPassThrough(currency_limits=CNY)
    state = learnt(detector, inflow(5_000_000, NOON))
    x = outflow(4_600_000, NOON + 720, "transfer")
    assert detector.explain_one(x, state, detector.score_one(x, state)) == [
        "92% of the 50,000.00 received in the last 30 min has left again: 46,000.00 out within"
        " about 12 min of the first inflow, this transfer of 46,000.00 included"
        " (judged from 10,000.00, configured for CNY)"
    ]


def test_state_is_bounded_buckets_of_plain_ints() -> None:
    detector = RapidPassThrough(window_seconds=1_800, bucket_seconds=60, currency_limits=CNY)
    state = detector.new_state()
    for second in range(0, 5 * 3_600, 7):
        state = detector.learn_one(inflow(1_000, NOON + second), state)
        state = detector.learn_one(outflow(900, NOON + second), state)
    assert len(state) <= 2 * 30 + 1
    assert [b[0] for b in state] == sorted(b[0] for b in state)
    assert orjson.loads(orjson.dumps(state)) == state
    # An account quiet for an hour keeps nothing of the old buckets but the last.
    state = detector.learn_one(inflow(1_000, NOON + 10 * 3_600), state)
    assert len(state) == 1


def test_the_alerter_flags_every_outflow_from_the_one_that_takes_the_share_to_80_percent() -> None:
    spec = DEFAULT_CONFIG["detectors"]["rapid_pass_through"]
    (alerter,) = build_alerters({"version": "t", "detectors": {"rapid_pass_through": spec}})
    assert alerter.learn_flagged
    events = [
        inflow(5_000_000, NOON),
        outflow(2_000_000, NOON + 300),
        outflow(2_000_000, NOON + 600),  # 80%
        outflow(500_000, NOON + 900),  # 90%: the flagged outflow was counted too
    ]
    state = None
    scores = []
    for x in events:
        finding, state = alerter.process_one(x, state)
        scores.append(None if finding is None else finding.score)
    assert scores == [None, None, 0.8, 0.9]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"window_seconds": 0}, "window_seconds must be an int >= 1"),
        ({"currency_limits": {"CNY": {"min_inflow": 10.5}}}, "must be an int >= 1"),
        ({"currency_limits": {"CNY": {"min_inflow_minor": 1}}}, "unknown limit"),
        ({"learnt_quantile": 1.0}, "must be a number in"),
        ({"bucket_seconds": 3_600}, "must not exceed window_seconds"),
    ],
)
def test_refuses_bad_parameters(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RapidPassThrough(**params)
