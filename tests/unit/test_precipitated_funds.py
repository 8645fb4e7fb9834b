"""Precipitated funds: a running wallet balance and how long it stays above a limit."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from detectors import DEFAULT_CONFIG, PrecipitatedFunds, balance_minor, build_alerters
from detectors.precipitated_funds import ABOVE_SINCE, BALANCE, DEFICIT, NOT_ABOVE, REPORTED

T0 = 1_709_510_400
DAY = 86_400
LIMIT = 5_000_000
DWELL = 3 * DAY


def inflow(amount: int, ts: int) -> dict[str, Any]:
    return {"event_type": "top_up", "amount_minor": amount, "ts": ts, "is_inflow": True,
            "currency": "CNY"}


def outflow(amount: int, ts: int) -> dict[str, Any]:
    return {"event_type": "withdrawal", "amount_minor": amount, "ts": ts, "is_outflow": True,
            "currency": "CNY"}


def login(ts: int) -> dict[str, Any]:
    return {"event_type": "login", "amount_minor": 0, "ts": ts, "currency": "CNY"}


def detector() -> PrecipitatedFunds:
    return PrecipitatedFunds(currency_limits={"CNY": {"balance_limit": LIMIT}},
                             max_dwell_seconds=DWELL)


def learnt(d: PrecipitatedFunds, *events: dict[str, Any]) -> list[int]:
    state = d.new_state()
    for x in events:
        state = d.learn_one(x, state)
    return state


def test_running_balance_in_minor_units_never_below_zero() -> None:
    d = detector()
    state = learnt(d, inflow(10_000, T0), outflow(2_501, T0 + 1), inflow(1, T0 + 2))
    assert balance_minor(state) == 7_500
    state = learnt(d, outflow(9_000, T0), inflow(100, T0 + 1))
    assert balance_minor(state) == 100
    assert state[DEFICIT] == 9_000


def test_the_dwell_limit_is_reached_exactly_at_max_dwell_seconds() -> None:
    d = detector()
    state = learnt(d, inflow(LIMIT + 1, T0))
    assert state[ABOVE_SINCE] == T0
    assert d.score_one(login(T0 + DWELL - 1), state) == 0.0
    assert d.score_one(login(T0 + DWELL), state) == 1.0
    assert d.score_one(login(T0 + 2 * DWELL), state) == 2.0


def test_a_balance_exactly_at_the_limit_is_not_above_it() -> None:
    d = detector()
    state = learnt(d, inflow(LIMIT, T0))
    assert state[ABOVE_SINCE] == NOT_ABOVE
    assert d.score_one(login(T0 + 10 * DWELL), state) == 0.0


def test_dropping_to_the_limit_ends_the_episode_and_a_new_one_starts_afresh() -> None:
    d = detector()
    state = learnt(d, inflow(2 * LIMIT, T0), outflow(LIMIT, T0 + DAY), inflow(1, T0 + 2 * DAY))
    assert state[ABOVE_SINCE] == T0 + 2 * DAY
    assert d.score_one(login(T0 + DWELL + 1), state) == 0.0
    assert d.score_one(login(T0 + 2 * DAY + DWELL), state) == 1.0


def test_an_episode_is_reported_once_by_the_first_event_past_the_dwell_time() -> None:
    (alerter,) = build_alerters(
        {"version": "t", "detectors": {"precipitated_funds": DEFAULT_CONFIG["detectors"][
            "precipitated_funds"]}}
    )  # fmt: skip
    assert alerter.learn_flagged
    events = [inflow(8_000_000, T0), login(T0 + DAY), login(T0 + 3 * DAY + 5),
              inflow(100, T0 + 4 * DAY), login(T0 + 5 * DAY)]  # fmt: skip
    state = None
    flagged = []
    for x in events:
        finding, state = alerter.process_one(x, state)
        flagged.append(finding is not None)
    assert flagged == [False, False, True, False, False]
    assert state[REPORTED] == 1
    # The flagged event was learnt too: the later inflow is in the balance.
    assert balance_minor(state) == 8_000_100


def test_a_late_inflow_covers_the_outflow_it_funded_instead_of_inflating_the_balance() -> None:
    d = detector()
    # Event order: loan in at T0, cashed out at T0 + 1 h. Arrival: the withdrawal first.
    state = learnt(d, outflow(6_000_000, T0 + 3_600), inflow(6_000_000, T0))
    assert balance_minor(state) == 0
    assert state[ABOVE_SINCE] == NOT_ABOVE
    # An inflow after the uncovered outflow is new money: the deficit does not eat it.
    state = learnt(d, outflow(6_000_000, T0 + 3_600), inflow(6_000_000, T0 + 7_200))
    assert balance_minor(state) == 6_000_000


def test_reasons_give_the_balance_the_limit_and_the_time_held() -> None:
    d = detector()
    state = learnt(d, inflow(12_000_000, T0))
    x = login(T0 + 4 * DAY + 2 * 3_600)
    assert d.explain_one(x, state, d.score_one(x, state)) == [
        "balance 120,000.00 has stayed above the 50,000.00 limit (configured for CNY) for 4 d 2 h,"
        " since 2024-03-04 00:00 UTC (dwell limit 3 d)"
    ]
    assert d.explain_one(login(T0), d.new_state(), 0.0) == [
        "balance 0.00 is not above the 50,000.00 limit (configured for CNY)"
    ]


def test_events_without_time_change_nothing_and_state_is_six_ints() -> None:
    d = detector()
    state = learnt(d, inflow(LIMIT * 2, T0))
    before = list(state)
    assert d.learn_one({"event_type": "top_up", "amount_minor": 5, "is_inflow": True}, state) == (
        before
    )
    assert len(state) == 6 and all(type(v) is int for v in state)
    assert orjson.loads(orjson.dumps(state)) == state
    assert balance_minor(None) == 0
    assert state[BALANCE] == balance_minor(state)


def test_a_ledger_cannot_be_configured_to_skip_flagged_events() -> None:
    spec = {**DEFAULT_CONFIG["detectors"]["precipitated_funds"], "learn_flagged": False}
    with pytest.raises(ValueError, match="learn_flagged must be true: precipitated_funds keeps"):
        build_alerters({"version": "t", "detectors": {"precipitated_funds": spec}})
    spec = {k: v for k, v in spec.items() if k != "learn_flagged"}
    (alerter,) = build_alerters({"version": "t", "detectors": {"precipitated_funds": spec}})
    assert alerter.learn_flagged


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"currency_limits": {"CNY": {"balance_limit": 0}}}, "must be an int >= 1"),
        ({"max_dwell_seconds": 1.5}, "max_dwell_seconds must be an int >= 1"),
    ],
)
def test_refuses_bad_parameters(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PrecipitatedFunds(**params)
