"""Edge cases of each detector, the money formatting and the configuration."""

from __future__ import annotations

import copy
import json
import math
import random
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from detectors import (
    DEFAULT_CONFIG,
    AmountOutlier,
    GlobalAnomaly,
    ThresholdAlerter,
    VelocityLimits,
    build_alerters,
    format_minor,
)
from detectors.amount_outlier import WINSOR_SD
from detectors.money import contract_amount
from streams.codec import parse_amount_minor

# -- money -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("minor", "text"),
    [
        (0, "0.00"),
        (1, "0.01"),
        (99, "0.99"),
        (100, "1.00"),
        (4_800_000, "48,000.00"),
        (123_456_789, "1,234,567.89"),
        (10**17, "1,000,000,000,000,000.00"),
        (-5, "-0.05"),
    ],
)
def test_format_minor(minor: int, text: str) -> None:
    assert format_minor(minor) == text


@pytest.mark.parametrize("not_minor", [12.5, True, Decimal("1.00"), "100"])
def test_format_minor_refuses_what_is_not_an_int(not_minor: Any) -> None:
    with pytest.raises(TypeError, match="int of hundredths"):
        format_minor(not_minor)


@given(st.integers(min_value=-(10**18), max_value=10**18))
def test_the_human_and_the_contract_forms_of_an_amount_agree(minor: int) -> None:
    contract = contract_amount(minor)
    assert format_minor(minor).replace(",", "") == contract
    if abs(minor) <= 10**17:  # the contract's largest amount, 10^15 major units
        assert parse_amount_minor(contract.removeprefix("-")) == abs(minor)


# -- velocity --------------------------------------------------------------------------------------

LIMITS = {
    "1m": {"count": 10, "distinct_cp": 5},
    "1h": {"count": 30},
    "24h": {"distinct_cp": 30},
}
SUMS = {"CNY": {"sum_1m": 1_000_000, "sum_1h": 5_000_000}}


def _payment(**features: Any) -> dict[str, Any]:
    # two payments in every window, so sum limits apply
    return {"event_type": "payment", "amount_minor": 10_000, "is_outflow": True,
            "currency": "CNY", "count_1m": 2, "count_1h": 2, "count_24h": 2, **features}


def test_velocity_sum_limit_ignores_a_single_large_payment() -> None:
    detector = VelocityLimits({"1h": {"count": 30}}, {"CNY": {"sum_1h": 5_000_000}})
    one = {"event_type": "payment", "amount_minor": 9_000_000, "is_outflow": True,
           "currency": "CNY", "count_1h": 1, "sum_1h": 9_000_000}
    assert detector.score_one(one) == pytest.approx(1 / 30)  # the count limit only
    assert detector.score_one({**one, "count_1h": 2}) == pytest.approx(1.8)


def test_velocity_ignores_money_coming_in() -> None:
    detector = VelocityLimits({"1m": {"count": 2}})
    assert detector.score_one(_payment(count_1m=5, is_outflow=False)) == 0.0


def test_velocity_exactly_at_the_limit_alerts_and_says_the_limit_was_reached() -> None:
    alerter = ThresholdAlerter(VelocityLimits(LIMITS, SUMS), threshold=1.0)
    finding, _ = alerter.process_one(_payment(count_1m=10))
    assert finding is not None
    assert finding.score == 1.0
    assert finding.reasons == ("10 transactions in 1 minute (limit 10 reached)",)


def test_velocity_one_under_the_limit_does_not_alert() -> None:
    alerter = ThresholdAlerter(VelocityLimits(LIMITS, SUMS), threshold=1.0)
    x = _payment(count_1m=9, sum_1h=4_999_999, distinct_cp_24h=29)
    finding, _ = alerter.process_one(x)
    assert finding is None
    assert VelocityLimits(LIMITS, SUMS).score_one(x) == pytest.approx(0.9999998)


def test_velocity_one_cent_over_a_sum_limit_names_both_amounts() -> None:
    detector = VelocityLimits(LIMITS, SUMS)
    x = _payment(sum_1h=5_000_001)
    score = detector.score_one(x)
    assert score > 1.0
    assert detector.explain_one(x, score) == [
        "50,000.01 CNY sent in 1 hour (limit 50,000.00 CNY, configured for CNY)"
    ]


def test_velocity_boundary_stays_exact_for_sums_beyond_float_precision() -> None:
    limit = 10**17  # one cent under it still rounds to 1.0 as a float ratio
    detector = VelocityLimits({"24h": {"count": 200}}, {"CNY": {"sum_24h": limit}})
    assert (limit - 1) / limit == 1.0
    assert detector.score_one(_payment(sum_24h=limit - 1)) < 1.0
    assert detector.score_one(_payment(sum_24h=limit)) == 1.0


def test_velocity_reasons_name_every_exceeded_limit_most_exceeded_first() -> None:
    detector = VelocityLimits(LIMITS, SUMS)
    x = _payment(count_1m=12, sum_1m=1_000_000, distinct_cp_1m=10, count_1h=31, distinct_cp_24h=64)
    score = detector.score_one(x)
    assert score == 64 / 30
    assert detector.explain_one(x, score) == [
        "64 or more different counterparties in 24 hours (limit 30)",
        "10 different counterparties in 1 minute (limit 5)",
        "12 transactions in 1 minute (limit 10)",
        "31 transactions in 1 hour (limit 30)",
        "10,000.00 CNY sent in 1 minute (limit 10,000.00 CNY reached, configured for CNY)",
    ]


def test_velocity_skips_windows_missing_from_the_features() -> None:
    detector = VelocityLimits(LIMITS, SUMS)
    bare = {"event_type": "payment", "amount_minor": 10_000, "is_outflow": True}
    assert detector.score_one(bare) == 0.0
    assert detector.explain_one(bare, 0.0) == [
        "no configured window in the features (0 limits judged)"
    ]
    assert detector.score_one({**bare, "count_1h": 45}) == 1.5


def test_velocity_ignores_events_without_an_amount() -> None:
    detector = VelocityLimits(LIMITS, SUMS)
    login = {"event_type": "login", "amount_minor": 0, "count_1m": 50, "count_1h": 90}
    assert detector.score_one(login) == 0.0


def test_velocity_explains_the_closest_limit_when_none_is_reached() -> None:
    detector = VelocityLimits(LIMITS, SUMS)
    x = _payment(count_1m=8, count_1h=3)
    assert detector.explain_one(x, detector.score_one(x)) == [
        "no limit reached; closest: 8 transactions in 1 minute (limit 10), 80% of it"
    ]


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ({}, "non-empty mapping"),
        ({"5m": {"count": 3}}, "unknown window '5m'"),
        ({"1m": {"amount": 3}}, r"limits\['1m'\]: unknown measure 'amount'"),
        ({"1m": {}}, r"limits\['1m'\] must be a non-empty mapping"),
        ({"1m": {"count": 0}}, r"limits\['1m'\]\['count'\] must be a positive int"),
        ({"1m": {"count": -1}}, "positive int"),
        ({"1m": {"sum": 500}}, r"limits\['1m'\]: sums are money, set them per currency"),
        ({"1m": {"distinct_cp": 5.0}}, r"limits\['1m'\]\['distinct_cp'\] must be a positive int"),
        ({"1m": {"count": True}}, "positive int"),
        ([("1m", {"count": 3})], "mapping"),
    ],
)
def test_velocity_refuses_bad_limits(limits: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        VelocityLimits(limits)


# -- amount outlier --------------------------------------------------------------------------------


def _learn(detector: AmountOutlier, amounts: list[int]) -> list[float]:
    state = detector.new_state()
    for amount in amounts:
        state = detector.learn_one(
            {"event_type": "payment", "amount_minor": amount, "is_outflow": True}, state
        )
    return state


def test_amount_outlier_with_no_history_scores_zero_and_says_why() -> None:
    detector = AmountOutlier()
    state = detector.new_state()
    x = {"event_type": "payment", "amount_minor": 10**12, "is_outflow": True}
    assert detector.score_one(x, state) == 0.0
    assert detector.explain_one(x, state, 0.0) == [
        "only 0 earlier transactions; scoring starts after 5"
    ]


def test_amount_outlier_starts_scoring_at_min_history() -> None:
    detector = AmountOutlier(min_history=5)
    x = {"event_type": "payment", "amount_minor": 5_000_000, "is_outflow": True}
    assert detector.score_one(x, _learn(detector, [10_000] * 4)) == 0.0
    assert detector.score_one(x, _learn(detector, [10_000] * 5)) > 8.0


def test_amount_outlier_constant_history_uses_the_spread_floor() -> None:
    detector = AmountOutlier(sd_floor=0.5)
    state = _learn(detector, [129_000] * 50)
    assert state[2] == 0.0  # no variance at all
    assert detector.score_one({"amount_minor": 129_000, "is_outflow": True}, state) == 0.0
    # Double the usual: log(2) / 0.5, not a division by zero.
    assert detector.score_one(
        {"amount_minor": 258_000, "is_outflow": True}, state
    ) == pytest.approx(math.log(2) / 0.5)


def test_amount_outlier_reason_matches_what_a_person_checks() -> None:
    detector = AmountOutlier(sd_floor=0.5)
    state = _learn(detector, [129_000] * 42)
    x = {"event_type": "transfer", "amount_minor": 4_800_000, "is_outflow": True}
    score = detector.score_one(x, state)
    assert score == pytest.approx(math.log(4_800_000 / 129_000) / 0.5)
    assert detector.explain_one(x, state, score) == [
        "amount 48,000.00 is 37x this account's usual 1,290.00 (z=7.2 over 42 earlier transactions)"
    ]


def test_amount_outlier_scores_only_the_high_side() -> None:
    detector = AmountOutlier()
    state = _learn(detector, [100_000, 120_000, 90_000, 110_000, 95_000, 105_000])
    assert detector.score_one({"amount_minor": 1, "is_outflow": True}, state) == 0.0


def test_amount_outlier_huge_amount_gives_a_finite_score_and_a_readable_reason() -> None:
    detector = AmountOutlier()
    state = _learn(detector, [1_000] * 10)
    x = {"event_type": "transfer", "amount_minor": 10**17, "is_outflow": True}
    score = detector.score_one(x, state)
    assert math.isfinite(score)
    (reason,) = detector.explain_one(x, state, score)
    assert reason.startswith("amount 1,000,000,000,000,000.00 is 100,000,000,000,000x")


def test_amount_outlier_ignores_events_without_an_amount() -> None:
    detector = AmountOutlier()
    state = _learn(detector, [1_000] * 10)
    login = {"event_type": "login", "amount_minor": 0}
    assert detector.score_one(login, state) == 0.0
    assert detector.learn_one(login, state) == state


def test_amount_outlier_ignores_money_coming_in_unless_asked() -> None:
    top_up = {"event_type": "top_up", "amount_minor": 10**9, "is_outflow": False}
    detector = AmountOutlier()
    state = _learn(detector, [1_000] * 10)
    assert detector.score_one(top_up, state) == 0.0
    assert detector.learn_one(top_up, state) == state
    assert detector.explain_one(top_up, state, 0.0) == [
        "not scored: amount outliers apply to outgoing transactions only"
    ]
    no_direction = {"event_type": "payment", "amount_minor": 10**9}
    assert detector.score_one(no_direction, state) == 0.0
    everything = AmountOutlier(outflows_only=False)
    assert everything.score_one(top_up, _learn(everything, [1_000] * 10)) > 10.0


def test_amount_outlier_learning_returns_a_new_state_and_keeps_the_old() -> None:
    detector = AmountOutlier()
    state = _learn(detector, [1_000] * 10)
    before = list(state)
    after = detector.learn_one({"amount_minor": 2_000, "is_outflow": True}, state)
    assert state == before
    assert after != before


def test_amount_outlier_one_learnt_outlier_moves_the_baseline_a_bounded_step() -> None:
    detector = AmountOutlier(half_life=30, sd_floor=0.5)
    state = _learn(detector, [10_000] * 100)
    after = detector.learn_one({"amount_minor": 10**15, "is_outflow": True}, state)
    alpha = 1 - 0.5 ** (1 / 30)
    assert after[1] - state[1] == pytest.approx(alpha * WINSOR_SD * 0.5)


def test_amount_outlier_half_life_is_counted_in_transactions() -> None:
    detector = AmountOutlier(half_life=30)
    state = _learn(detector, [10_000] * 300 + [12_000] * 30)
    halfway = (math.log(10_000) + math.log(12_000)) / 2
    assert state[1] == pytest.approx(halfway, abs=1e-9)


def test_amount_outlier_state_is_plain_json() -> None:
    detector = AmountOutlier()
    state = _learn(detector, [1_234, 5_678, 9_999])
    assert json.loads(json.dumps(state)) == state
    assert isinstance(state[0], int)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"half_life": 0}, "half_life must be positive"),
        ({"half_life": -3}, "half_life must be positive"),
        ({"half_life": math.inf}, "half_life must be positive and finite"),
        ({"half_life": math.nan}, "half_life must be positive"),
        ({"half_life": "30"}, "half_life must be a number"),
        ({"min_history": 0}, "min_history must be an int >= 1"),
        ({"min_history": 2.5}, "min_history must be an int >= 1"),
        ({"sd_floor": 0}, "sd_floor must be positive"),
        ({"sd_floor": False}, "sd_floor must be a number"),
        ({"outflows_only": 1}, "outflows_only must be true or false"),
    ],
)
def test_amount_outlier_refuses_bad_parameters(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AmountOutlier(**params)


@given(st.lists(st.integers(min_value=0, max_value=10**17), max_size=60))
def test_amount_outlier_scores_stay_finite_and_non_negative(amounts: list[int]) -> None:
    detector = AmountOutlier(min_history=1)
    state = detector.new_state()
    for amount in amounts:
        x = {"event_type": "payment", "amount_minor": amount, "is_outflow": True}
        score = detector.score_one(x, state)
        assert math.isfinite(score)
        assert score >= 0.0
        state = detector.learn_one(x, state)
    assert json.loads(json.dumps(state)) == state


# -- global anomaly --------------------------------------------------------------------------------


def _transactions(n: int, seed: int = 3) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    events = []
    for _ in range(n):
        count = rng.randint(1, 3)
        events.append(
            {
                "event_type": "payment",
                "amount_minor": round(rng.lognormvariate(8.5, 0.6)),
                "count_1h": count,
                "distinct_cp_24h": rng.randint(1, count),
                "hour": rng.randint(9, 18),
            }
        )
    return events


ODD = {"event_type": "transfer", "amount_minor": 4_800_000, "count_1h": 40,
       "distinct_cp_24h": 30, "hour": 3}  # fmt: skip


def test_global_anomaly_scores_zero_until_the_warmup_is_learnt() -> None:
    detector = GlobalAnomaly(window_size=50, warmup=120)
    events = _transactions(120)
    for x in events[:-1]:
        detector.learn_one(x)
    assert detector.score_one(ODD) == 0.0
    detector.learn_one(events[-1])
    assert detector.score_one(ODD) > 0.9


def test_global_anomaly_warmup_shorter_than_the_window_waits_for_the_window() -> None:
    detector = GlobalAnomaly(window_size=100, warmup=10)
    for x in _transactions(99):
        detector.learn_one(x)
    assert detector.score_one(ODD) == 0.0


def test_global_anomaly_ignores_events_without_an_amount() -> None:
    detector = GlobalAnomaly(window_size=50, warmup=50)
    for x in _transactions(200):
        detector.learn_one(x)
    before = detector.snapshot()
    login = {"event_type": "login", "amount_minor": 0, "count_1h": 40, "hour": 3}
    assert detector.score_one(login) == 0.0
    detector.learn_one(login)
    assert detector.snapshot() == before


def test_global_anomaly_scores_but_does_not_learn_incomplete_features() -> None:
    detector = GlobalAnomaly(window_size=50, warmup=50)
    for x in _transactions(200):
        detector.learn_one(x)
    before = detector.snapshot()
    no_hour = {k: v for k, v in ODD.items() if k != "hour"}
    assert 0.0 < detector.score_one(no_hour) <= 1.0
    detector.learn_one(no_hour)
    assert detector.snapshot() == before


def test_global_anomaly_huge_amount_is_clipped_not_broken() -> None:
    detector = GlobalAnomaly(window_size=50, warmup=50)
    for x in _transactions(200):
        detector.learn_one(x)
    huge = {**_transactions(1)[0], "amount_minor": 10**17}
    assert 0.0 <= detector.score_one(huge) <= 1.0
    assert detector.explain_one(huge, 1.0)[0] == (
        "amount 1,000,000,000,000,000.00: none of the 200 transactions learnt"
        " were 1,000,000,000,000,000.00 or more"
    )


def test_global_anomaly_reasons_name_the_rare_features_rarest_first() -> None:
    detector = GlobalAnomaly(window_size=50, warmup=50)
    for x in _transactions(400):
        detector.learn_one(x)
    usual_hour = {**ODD, "hour": 12, "count_1h": 2, "distinct_cp_24h": 1}
    reasons = detector.explain_one(usual_hour, detector.score_one(usual_hour))
    assert reasons == [
        "amount 48,000.00: none of the 400 transactions learnt were 20,000.00 or more"
    ]


def test_global_anomaly_names_a_tiny_amount_on_the_low_side() -> None:
    detector = GlobalAnomaly(window_size=50, warmup=50)
    for x in _transactions(400):
        detector.learn_one(x)
    tiny = {"event_type": "payment", "amount_minor": 3, "count_1h": 2, "distinct_cp_24h": 1,
            "hour": 12}  # fmt: skip
    assert detector.explain_one(tiny, 1.0) == [
        "amount 0.03: none of the 400 transactions learnt were 0.99 or less"
    ]


def test_global_anomaly_restore_refuses_other_parameters_and_garbage() -> None:
    detector = GlobalAnomaly(window_size=50, warmup=50)
    for x in _transactions(60):
        detector.learn_one(x)
    with pytest.raises(ValueError, match="snapshot was taken with parameters"):
        GlobalAnomaly(window_size=60, warmup=50).restore(detector.snapshot())
    with pytest.raises(ValueError, match="not a GlobalAnomaly snapshot"):
        detector.restore(b"not a pickle")
    with pytest.raises(ValueError, match="format this version reads"):
        detector.restore({"format": 99})


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"n_trees": 0}, "n_trees must be an int >= 1"),
        ({"height": 2.0}, "height must be an int >= 1"),
        ({"window_size": True}, "window_size must be an int >= 1"),
        ({"warmup": -1}, "warmup must be an int >= 0"),
        ({"seed": None}, "seed must be an int >= 0"),
    ],
)
def test_global_anomaly_refuses_bad_parameters(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GlobalAnomaly(**params)


# -- configuration ---------------------------------------------------------------------------------


def test_default_config_builds_every_account_detector_as_documented() -> None:
    alerters = build_alerters(DEFAULT_CONFIG)
    summary = [
        (a.name, a.threshold, a.budget, a.severity, a.critical_threshold, a.learn_flagged)
        for a in alerters
        if getattr(type(a.detector), "stage", "account") == "account"
    ]
    assert summary == [
        ("velocity", 1.0, None, "high", None, True),
        ("amount_outlier", 3.5, 0.001, "medium", 8.0, False),
        ("global_anomaly", 0.0, 0.002, "low", None, False),
        ("structuring", 1.0, None, "high", None, True),
        ("rapid_pass_through", 0.8, None, "high", None, True),
        ("fan_out", 1.0, None, "medium", None, True),
        ("fund_segregation", 1.0, None, "critical", None, False),
        ("precipitated_funds", 1.0, None, "medium", None, True),
        ("account_takeover", 1.0, None, "high", None, False),
        ("blacklist", 1.0, None, "high", None, False),
        ("borrow_and_vanish", 0.8, None, "high", None, True),
        ("spending_burst", 5.0, None, "high", None, False),
    ]
    assert DEFAULT_CONFIG["version"] == "defaults-6"


def test_default_config_survives_json_and_is_not_changed_by_building() -> None:
    pristine = copy.deepcopy(DEFAULT_CONFIG)
    from_json = build_alerters(json.loads(json.dumps(DEFAULT_CONFIG)))
    assert [repr(a) for a in from_json] == [repr(a) for a in build_alerters(DEFAULT_CONFIG)]
    assert pristine == DEFAULT_CONFIG


def test_editing_the_config_later_does_not_reach_a_built_detector() -> None:
    config = copy.deepcopy(DEFAULT_CONFIG)
    velocity = build_alerters(config)[0].detector
    assert isinstance(velocity, VelocityLimits)
    config["detectors"]["velocity"]["params"]["limits"]["1m"]["count"] = 1
    assert velocity.score_one(_payment(count_1m=5)) < 1.0


def test_amount_outlier_over_the_critical_threshold_is_critical() -> None:
    spec = {k: v for k, v in DEFAULT_CONFIG["detectors"]["amount_outlier"].items()
            if k != "budget"}
    (alerter,) = build_alerters({"version": "v", "detectors": {"amount_outlier": spec}})
    assert isinstance(alerter.detector, AmountOutlier)
    state = _learn(alerter.detector, [10_000] * 20)
    x = {"event_type": "transfer", "amount_minor": 10**9, "is_outflow": True}
    finding, _ = alerter.process_one(x, state)
    assert finding is not None
    assert finding.severity == "critical"


def _config(**spec: Any) -> dict[str, Any]:
    return {"version": "test-1", "detectors": {"amount_outlier": {"threshold": 4.0, **spec}}}


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ([], "detector config must be a mapping"),
        ({"detectors": {}}, "version must be a non-empty string"),
        ({"version": " ", "detectors": {}}, "version must be a non-empty string"),
        ({"version": "v", "detectors": {}, "extra": 1}, "detector config: unknown key 'extra'"),
        ({"version": "v", "detectors": []}, "detectors must be a mapping"),
        ({"version": "v", "detectors": {"nope": {}}}, "detectors.nope: unknown detector"),
        ({"version": "v", "detectors": {"velocity": 1.0}}, "detectors.velocity must be a mapping"),
        (
            {"version": "v", "detectors": {"amount_outlier": {}}},
            "amount_outlier.threshold is required unless a budget is given",
        ),
        (_config(threshold="4"), "detectors.amount_outlier.threshold must be a finite number"),
        (_config(threshold=True), "detectors.amount_outlier.threshold must be a finite number"),
        (_config(threshold=math.nan), "detectors.amount_outlier.threshold must be a finite number"),
        (_config(severity="urgent"), "detectors.amount_outlier.severity must be one of"),
        (_config(critical_threshold=2), r"critical_threshold \(2.0\) must not be below"),
        (_config(critical_threshold="8"), "amount_outlier.critical_threshold must be a finite"),
        (_config(learn_flagged="yes"), "detectors.amount_outlier.learn_flagged must be true"),
        (_config(treshold=4.0), "detectors.amount_outlier: unknown key 'treshold'"),
        (
            {"version": "v", "detectors": {"amount_outlier": {"severity": "low"}}},
            "detectors.amount_outlier.threshold is required unless a budget is given",
        ),
        (_config(budget=0), "detectors.amount_outlier.budget must be a fraction"),
        (_config(budget=1.0), "detectors.amount_outlier.budget must be a fraction"),
        (_config(budget="0.1%"), "detectors.amount_outlier.budget must be a fraction"),
        (_config(budget=True), "detectors.amount_outlier.budget must be a fraction"),
        (_config(segment_by=["currency"]), r"amount_outlier.segment_by applies only with a budget"),
        (_config(min_scored=10), r"amount_outlier.min_scored applies only with a budget"),
        (_config(budget=0.01, segment_by="currency"), "amount_outlier.segment_by must be a list"),
        (_config(budget=0.01, segment_by=[""]), "amount_outlier.segment_by must be a list"),
        (_config(budget=0.01, min_scored=0), "amount_outlier.min_scored must be an int >= 1"),
        (_config(budget=0.01, min_scored=2.5), "amount_outlier.min_scored must be an int >= 1"),
        (
            {"version": "v", "detectors": {"cycle": {"budget": 0.01}}},
            "detectors.cycle.budget: cycle runs in the flow stage",
        ),
        (_config(params=[1]), "detectors.amount_outlier.params must be a mapping"),
        (_config(params={"halflife": 3}), "detectors.amount_outlier.params.halflife: unknown"),
        (_config(params={"half_life": -1}), "detectors.amount_outlier.params: half_life must be"),
        (
            {"version": "v", "detectors": {"velocity": {"threshold": 1.0}}},
            "detectors.velocity.params: missing required parameter 'limits'",
        ),
        (
            {
                "version": "v",
                "detectors": {
                    "velocity": {"threshold": 1.0, "params": {"limits": {"1m": {"count": 2.5}}}}
                },
            },
            r"detectors.velocity.params: limits\['1m'\]\['count'\] must be a positive int",
        ),
    ],
)
def test_build_alerters_names_the_bad_key(config: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_alerters(config)


def test_build_alerters_accepts_an_empty_detector_list() -> None:
    assert build_alerters({"version": "none-1", "detectors": {}}) == []


def test_global_anomaly_snapshot_is_small_json_and_restores_the_same_scores() -> None:
    detector = GlobalAnomaly(window_size=50, warmup=50)
    events = _transactions(400)
    for x in events[:230]:
        detector.learn_one(x)
    raw = json.dumps(detector.snapshot())
    assert len(raw) < 10_000
    restored = GlobalAnomaly(window_size=50, warmup=50)
    restored.restore(json.loads(raw))
    for x in events[230:]:
        assert restored.score_one(x) == detector.score_one(x)
        restored.learn_one(x)
        detector.learn_one(x)
    assert restored.snapshot() == detector.snapshot()


def test_global_anomaly_refuses_a_snapshot_of_other_trees() -> None:
    detector = GlobalAnomaly(window_size=50, warmup=50)
    for x in _transactions(60):
        detector.learn_one(x)
    snapshot = detector.snapshot()
    snapshot["masses"]["shape"] += 1
    with pytest.raises(ValueError, match="trees differ"):
        GlobalAnomaly(window_size=50, warmup=50).restore(snapshot)
