"""Money limits per currency: configured where known, learnt from the population elsewhere."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from detectors import DEFAULT_CONFIG, build_alerters
from detectors.account_takeover import AccountTakeover
from detectors.limits import MoneyLimits, PopulationQuantiles
from detectors.precipitated_funds import PrecipitatedFunds
from detectors.rapid_pass_through import RapidPassThrough
from detectors.structuring import Structuring
from detectors.velocity import COUNT_MIN_POPULATION, ORDINARY_MIN_POPULATION, VelocityLimits

T0 = 1_709_510_400


def test_learnt_quantiles_do_not_depend_on_the_order_values_came_in() -> None:
    rng = random.Random(5)
    values = [round(rng.lognormvariate(8.0, 1.5)) for _ in range(5_000)]
    forward, backward = PopulationQuantiles(), PopulationQuantiles()
    for value in values:
        forward.add("USD", "amount", value)
    for value in reversed(values):
        backward.add("USD", "amount", value)
    assert forward.snapshot() == backward.snapshot()
    exact = sorted(values)[int(0.99 * len(values))]
    learnt = forward.quantile("USD", "amount", 0.99)
    assert learnt is not None
    # the upper edge of the bucket holding the quantile: at most 9% above it
    assert exact <= learnt <= exact * 1.0905


def test_a_currency_without_limits_never_uses_another_currencys() -> None:
    limits = MoneyLimits(("threshold",), {"CNY": {"threshold": 5_000_000}}, 0.999, 100)
    assert limits.limit("USD", "threshold") is None
    for amount in range(1, 100):
        limits.observe("USD", "threshold", amount)
    assert limits.limit("USD", "threshold") is None  # 99 of the 100 needed
    limits.observe("USD", "threshold", 100)
    assert limits.limit("USD", "threshold") == 108  # 100 rounded up to its bucket's edge
    assert limits.limit("CNY", "threshold") == 5_000_000
    limits.observe("CNY", "threshold", 10**9)  # a configured currency learns nothing
    assert limits.population.count("CNY", "threshold") == 0


def test_snapshot_restores_the_limits_in_use_exactly() -> None:
    limits = MoneyLimits(("sum_1h",), {}, 0.99, 100)
    for amount in range(1, 1_000):
        limits.observe("USD", "sum_1h", amount * 37)
    restored = MoneyLimits(("sum_1h",), {}, 0.99, 100)
    restored.restore(orjson.loads(orjson.dumps(limits.snapshot())))
    assert restored.limit("USD", "sum_1h") == limits.limit("USD", "sum_1h")
    for more in (limits, restored):
        for amount in range(1, 200):
            more.observe("USD", "sum_1h", amount * 1_000)
    assert restored.snapshot() == limits.snapshot()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (({"CNY": {"sum_1d": 1}}, 0.99, 10), "unknown limit 'sum_1d'"),
        (({"": {"sum_1h": 1}}, 0.99, 10), "non-empty string"),
        (({"CNY": {"sum_1h": 1.5}}, 0.99, 10), r"currency_limits\['CNY'\]\['sum_1h'\]"),
        (({}, 1.0, 10), "learnt_quantile of sum_1h must be a number in"),
        (({}, 0.99, 0), "min_population must be an int >= 1"),
    ],
)
def test_bad_limits_are_refused_with_their_name(args: tuple[Any, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MoneyLimits(("sum_1h",), *args)


def _usd_payment(amount: int, count: int = 2) -> dict[str, Any]:
    return {"event_type": "payment", "amount_minor": amount, "is_outflow": True,
            "currency": "USD", "count_1h": count, "sum_1h": amount * count}


def test_velocity_learns_a_usd_sum_limit_and_resumes_from_a_snapshot() -> None:
    detector = VelocityLimits({"1h": {"count": 30}}, {"CNY": {"sum_1h": 10_000_000}},
                              learnt_quantile=0.99, min_population=200)
    big = _usd_payment(10_000_000)
    assert detector.score_one(big) == pytest.approx(2 / 30)  # no USD sum limit yet
    rng = random.Random(9)
    for _ in range(1_000):
        detector.learn_one(_usd_payment(round(rng.lognormvariate(9.0, 0.5))))
    assert detector.score_one(big) > 10.0
    assert "the 99.0% quantile of 1,000 values learnt in USD" in detector.explain_one(
        big, detector.score_one(big))[0]
    restored = detector.clone()
    restored.restore(orjson.loads(orjson.dumps(detector.snapshot())))
    assert restored.score_one(big) == detector.score_one(big)


def test_velocity_count_limits_are_raised_only_on_a_large_busy_population() -> None:
    detector = VelocityLimits({"1m": {"count": 5}})
    busy = {"event_type": "payment", "amount_minor": 100, "is_outflow": True, "count_1m": 6}
    assert detector.score_one(busy) == 1.2
    # 1% of the outflows reach the limit: bursts, so the configured limit holds ...
    for i in range(COUNT_MIN_POPULATION - 1):
        detector.learn_one({**busy, "count_1m": 8 if i % 100 == 0 else 1})
    assert detector.score_one(busy) == 1.2  # one short of the population needed
    # ... until the population is large enough to say how rare 8 is
    detector.learn_one({**busy, "count_1m": 8})
    assert detector.score_one(busy) < 1.0
    assert detector.score_one({**busy, "count_1m": 3}) == pytest.approx(3 / 9)  # the edge of 8


def test_a_count_limit_that_the_population_reaches_every_day_is_raised_early() -> None:
    # Every event of an hour stamped with one time: 5 payees "in a minute" is ordinary
    # (3% of the outflows here), not a burst, and the limit is raised after 1,000 outflows.
    detector = VelocityLimits({"1m": {"distinct_cp": 5}})
    payment = {"event_type": "payment", "amount_minor": 100, "is_outflow": True}
    rng = random.Random(5)
    ordinary = [1] * 80 + [2] * 10 + [3] * 4 + [4] * 3 + [5] * 2 + [6]
    for _ in range(ORDINARY_MIN_POPULATION - 1):
        detector.learn_one({**payment, "distinct_cp_1m": rng.choice(ordinary)})
    assert detector.score_one({**payment, "distinct_cp_1m": 5}) == 1.0  # not yet
    detector.learn_one({**payment, "distinct_cp_1m": 1})
    raised = detector.score_one({**payment, "distinct_cp_1m": 5})
    assert raised < 1.0
    # a burst far above what the population does still alerts, and says why
    burst = {**payment, "distinct_cp_1m": 20}
    assert detector.score_one(burst) >= 1.0
    (reason,) = detector.explain_one(burst, detector.score_one(burst))
    assert "quantile of 1,000 values learnt in all currencies; configured 5" in reason
    # the raised limit is part of the snapshot: a restored worker decides alike
    restored = detector.clone()
    restored.restore(orjson.loads(orjson.dumps(detector.snapshot())))
    assert restored.score_one({**payment, "distinct_cp_1m": 5}) == raised


def test_velocity_learns_from_flagged_events_so_its_limits_do_not_sink() -> None:
    (alerter,) = build_alerters({"version": "t", "detectors": {
        "velocity": {**DEFAULT_CONFIG["detectors"]["velocity"]}}})
    assert alerter.learn_flagged
    rng = random.Random(2)
    flagged = 0
    for _ in range(20_000):
        finding, _ = alerter.process_one(_usd_payment(round(rng.lognormvariate(9.0, 1.0))))
        flagged += finding is not None
    # 99.9th percentile: about 20 of 20,000 (learning only the unflagged sinks the limit)
    assert flagged < 60


def test_every_money_detector_waits_for_a_usd_population_instead_of_using_cny_limits() -> None:
    # Amounts that cross every shipped CNY limit, in USD: not judged before USD is learnt.
    structuring = Structuring(currency_limits={"CNY": {"threshold": 5_000_000}})
    deposit = {"event_type": "top_up", "amount_minor": 4_900_000, "ts": T0, "currency": "USD"}
    state = structuring.new_state()
    for hour in range(3):
        state = structuring.learn_one({**deposit, "ts": T0 + hour * 3_600}, state)
    assert structuring.score_one({**deposit, "ts": T0 + 4 * 3_600}, state) == 0.0
    assert structuring.score_one({**deposit, "currency": "CNY"}, state) > 0.0

    passing = RapidPassThrough(currency_limits={"CNY": {"min_inflow": 1_000_000}})
    state = passing.learn_one({"event_type": "top_up", "amount_minor": 5_000_000,
                               "is_inflow": True, "ts": T0, "currency": "USD"},
                              passing.new_state())
    out = {"event_type": "withdrawal", "amount_minor": 5_000_000, "is_outflow": True,
           "ts": T0 + 60, "currency": "USD"}
    assert passing.score_one(out, state) == 0.0

    wallet = PrecipitatedFunds(currency_limits={"CNY": {"balance_limit": 5_000_000}})
    state = wallet.learn_one({"event_type": "top_up", "amount_minor": 90_000_000,
                              "is_inflow": True, "ts": T0, "currency": "USD"}, wallet.new_state())
    assert wallet.score_one({"event_type": "login", "amount_minor": 0,
                             "ts": T0 + 10 * 86_400}, state) == 0.0

    takeover = AccountTakeover(currency_limits={"CNY": {"large_outflow": 5_000_000,
                                                        "min_outflow": 100_000}})
    state = takeover.learn_one({"event_type": "credential_change", "kind": "password",
                                "amount_minor": 0, "ts": T0}, takeover.new_state())
    assert takeover.score_one({**out, "amount_minor": 90_000_000}, state) == 0.0


def test_precipitated_funds_learns_a_usd_balance_limit_and_reports_above_it() -> None:
    wallet = PrecipitatedFunds(max_dwell_seconds=86_400, learnt_quantile=0.9, min_population=50)
    states = []
    for account in range(100):
        state = wallet.learn_one({"event_type": "top_up", "amount_minor": 10_000 + account,
                                  "is_inflow": True, "ts": T0, "currency": "USD"},
                                 wallet.new_state())
        states.append(state)
    limit = wallet.balance_limit_for("USD")
    assert limit is not None and 10_050 < limit < 11_000
    rich = wallet.learn_one({"event_type": "top_up", "amount_minor": 50_000, "is_inflow": True,
                             "ts": T0, "currency": "USD"}, wallet.new_state())
    login = {"event_type": "login", "amount_minor": 0, "ts": T0 + 2 * 86_400}
    assert wallet.score_one(login, rich) == 2.0
    assert "quantile" not in wallet.explain_one(login, rich, 2.0)[0]  # a login has no currency
    assert f"above the {limit // 100:,}." in wallet.explain_one(login, rich, 2.0)[0]
