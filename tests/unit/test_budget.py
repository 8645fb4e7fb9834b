"""Alert budgets: the share of scored events that alert stays within the budget."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from detectors.amount_outlier import AmountOutlier
from detectors.base import ThresholdAlerter
from detectors.budget import OTHER, ScoreBudget, score_bin
from detectors.halfspace import GlobalAnomaly
from detectors.registry import DEFAULT_CONFIG, build_alerters


def _stream(n: int, *, scale: float = 1.0, currency: str = "USD",
            seed: int = 5) -> Iterator[dict[str, Any]]:
    """Outflows of 200 accounts with log-normal habits and heavy-tailed surprises."""
    rng = random.Random(seed)
    usual = [rng.lognormvariate(9.0, 1.2) for _ in range(200)]
    for i in range(n):
        account = rng.randrange(200)
        # one in twenty is a Pareto-sized surprise: far more than any sensible budget
        surprise = rng.paretovariate(0.8) if rng.random() < 0.05 else 1.0
        amount = max(1, round(usual[account] * rng.lognormvariate(0.0, 0.5) * surprise * scale))
        yield {
            "account_id": f"acct-{account}",
            "event_type": rng.choice(("payment", "transfer")),
            "currency": currency,
            "amount_minor": amount,
            "is_outflow": True,
            "count_1h": rng.randint(1, 4),
            "distinct_cp_24h": rng.randint(1, 3),
            "hour": (i // 40) % 24,
        }


def _run(alerter: ThresholdAlerter, events: Iterator[dict[str, Any]]) -> tuple[int, int]:
    """Events and findings, one state per account as the worker keeps them."""
    states: dict[str, Any] = {}
    n = findings = 0
    for x in events:
        finding, states[x["account_id"]] = alerter.process_one(x, states.get(x["account_id"]))
        n += 1
        findings += finding is not None
    return n, findings


def _amount_outlier(**budget: Any) -> ThresholdAlerter:
    return ThresholdAlerter(AmountOutlier(half_life=30, min_history=5), threshold=3.5,
                            severity="medium", **budget)


@pytest.mark.parametrize(
    ("scale", "currency"), [(1.0, "USD"), (0.01, "USD"), (100.0, "USD"), (1.0, "JPY")])
def test_amount_outlier_budget_holds_whatever_the_scale(scale: float, currency: str) -> None:
    events = list(_stream(30_000, scale=scale, currency=currency))
    n, budgeted = _run(_amount_outlier(budget=0.002, min_scored=500), iter(events))
    _, fixed = _run(_amount_outlier(), iter(events))
    # the stream is one a fixed threshold drowns in: without the budget, the test fails
    assert fixed > 0.002 * n * 2, fixed
    assert 0 < budgeted <= 0.002 * n


@pytest.mark.parametrize(("scale", "currency"), [(1.0, "USD"), (0.01, "USD"), (100.0, "EUR")])
def test_global_anomaly_budget_holds_whatever_the_scale(scale: float, currency: str) -> None:
    detector = GlobalAnomaly(n_trees=5, height=6, window_size=100, warmup=200)
    alerter = ThresholdAlerter(detector, budget=0.002, severity="low")
    n, findings = _run(alerter, _stream(20_000, scale=scale, currency=currency))
    assert 0 < findings <= 0.002 * n


def test_the_default_configuration_budgets_the_score_detectors() -> None:
    alerters = {a.name: a for a in build_alerters(DEFAULT_CONFIG)}
    events = list(_stream(20_000))
    for name in ("amount_outlier", "global_anomaly"):
        budget = alerters[name].budget
        assert budget is not None
        n, findings = _run(alerters[name], iter(events))
        assert findings <= budget * n, name


def test_no_score_below_the_floor_alerts() -> None:
    budget = ScoreBudget(0.01, segment_by=[], min_scored=100)
    rng = random.Random(1)
    admitted = [budget.admit({}, rng.uniform(0.1, 2.0), floor=2.0) for _ in range(5_000)]
    assert not any(admitted)
    assert sum(budget.admit({}, 3.0, floor=2.0) for _ in range(10)) > 0


def test_a_rising_stream_spends_no_more_than_its_budget() -> None:
    # every score is the highest yet: a quantile alone would let each one alert
    budget = ScoreBudget(0.01, segment_by=[], min_scored=100)
    admitted = sum(budget.admit({}, 1.0 + i / 1_000, floor=0.0) for i in range(10_000))
    assert 0 < admitted <= 100


def test_ties_never_exceed_the_budget() -> None:
    budget = ScoreBudget(0.01, segment_by=[], min_scored=100)
    assert not any(budget.admit({}, 0.5, floor=0.0) for _ in range(5_000))


def test_each_segment_has_its_own_distribution() -> None:
    budget = ScoreBudget(0.01, segment_by=["currency"], min_scored=100)
    rng = random.Random(2)
    admitted = {"USD": 0, "JPY": 0}
    for _ in range(20_000):
        currency = rng.choice(("USD", "JPY"))
        # JPY scores are a hundred times smaller: pooled, none of them would alert
        score = rng.expovariate(1.0) * (0.01 if currency == "JPY" else 1.0)
        admitted[currency] += budget.admit({"currency": currency}, score, floor=0.0)
    assert admitted["JPY"] > 20
    assert admitted["USD"] > 20
    assert admitted["JPY"] + admitted["USD"] <= 200


def test_a_new_segment_waits_for_min_scored_events() -> None:
    budget = ScoreBudget(0.01, segment_by=["currency"], min_scored=300)
    decisions = [budget.admit({"currency": "EUR"}, 10.0 ** (i / 100), floor=0.0)
                 for i in range(400)]
    assert not any(decisions[:299])
    assert any(decisions[299:])


def test_segments_are_bounded() -> None:
    budget = ScoreBudget(0.01, segment_by=["currency"], min_scored=1, max_segments=4)
    for i in range(50):
        budget.admit({"currency": f"C{i:02d}"}, 1.0, floor=0.0)
    keys = [tuple(key) for key, *_ in budget.snapshot()["segments"]]
    assert len(keys) == 4
    assert OTHER in keys
    assert budget.segment_of({"currency": "C49"}) == OTHER


def test_zero_scores_are_not_counted() -> None:
    budget = ScoreBudget(0.01, segment_by=[], min_scored=100)
    for _ in range(1_000):
        budget.admit({}, 0.0, floor=0.0)
    assert budget.snapshot()["segments"] == []


def test_snapshot_and_restore_give_identical_decisions() -> None:
    rng = random.Random(9)
    scores = [(rng.choice(("USD", "EUR")), rng.lognormvariate(0.0, 2.0)) for _ in range(40_000)]
    original = ScoreBudget(0.005, segment_by=["currency"], min_scored=200, half_life=5_000)
    for currency, score in scores[:20_000]:
        original.admit({"currency": currency}, score, floor=0.0)
    restored = ScoreBudget(0.005, segment_by=["currency"], min_scored=200, half_life=5_000)
    restored.restore(orjson.loads(orjson.dumps(original.snapshot())))
    assert restored.snapshot() == original.snapshot()
    expected = [original.admit({"currency": c}, s, floor=0.0) for c, s in scores[20_000:]]
    actual = [restored.admit({"currency": c}, s, floor=0.0) for c, s in scores[20_000:]]
    assert any(expected)
    assert actual == expected


def test_an_alerter_snapshot_carries_its_budget() -> None:
    events = list(_stream(12_000))
    original = _amount_outlier(budget=0.005, min_scored=200)
    states: dict[str, Any] = {}
    for x in events[:6_000]:
        _, states[x["account_id"]] = original.process_one(x, states.get(x["account_id"]))
    restored = original.clone()
    restored.restore(orjson.loads(orjson.dumps(original.snapshot())))
    copied = orjson.loads(orjson.dumps(states))
    expected = [original.process_one(x, states.get(x["account_id"]))[0] is not None
                for x in events[6_000:]]
    actual = [restored.process_one(x, copied.get(x["account_id"]))[0] is not None
              for x in events[6_000:]]
    assert any(expected)
    assert actual == expected


def test_a_finding_says_where_its_score_stands() -> None:
    alerter = _amount_outlier(budget=0.005, min_scored=200)
    states: dict[str, Any] = {}
    for x in _stream(10_000):
        finding, states[x["account_id"]] = alerter.process_one(x, states.get(x["account_id"]))
        if finding is not None:
            assert "of the recent scores of the" in finding.reasons[-1]
            assert "alert budget 0.50%" in finding.reasons[-1]
            return
    pytest.fail("no finding")


def test_bins_are_one_percent_wide_and_clamped() -> None:
    assert score_bin(1e-9) == score_bin(1e-3) == 1
    assert score_bin(1.0) < score_bin(1.0105) <= score_bin(1.0) + 2
    assert score_bin(1e9) == score_bin(1e5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"budget": 0.0}, "budget must be a fraction"),
        ({"budget": 1.5}, "budget must be a fraction"),
        ({"budget": 0.1, "segment_by": "currency"}, "segment_by must be a list"),
        ({"budget": 0.1, "min_scored": 0}, "min_scored must be an int >= 1"),
        ({"budget": 0.1, "max_segments": 0}, "max_segments must be an int >= 1"),
    ],
)
def test_score_budget_refuses_bad_parameters(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ScoreBudget(**kwargs)


def test_bounded_scores_crowded_under_their_bound_are_told_apart() -> None:
    # Half-Space Trees' scores: most within a percent of 1.0, as on card payments
    rng = random.Random(4)
    scores = [1.0 - 0.02 * rng.betavariate(2.0, 1.0) for _ in range(20_000)]
    bounded = ScoreBudget(0.005, segment_by=[], min_scored=200, max_score=1.0)
    unbounded = ScoreBudget(0.005, segment_by=[], min_scored=200)
    admitted = sum(bounded.admit({}, s, floor=0.0) for s in scores)
    assert 50 <= admitted <= 100
    assert sum(unbounded.admit({}, s, floor=0.0) for s in scores) < 10
