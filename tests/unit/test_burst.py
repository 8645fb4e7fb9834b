"""spending_burst: runs of outflows far above the account's own baseline, to new payees."""

from __future__ import annotations

import random
from typing import Any

import orjson

from detectors import DEFAULT_CONFIG, build_alerters
from detectors.amount_outlier import AmountOutlier
from detectors.base import ThresholdAlerter
from detectors.burst import KNOWN_COUNTERPARTIES, SpendingBurst

T0 = 1_709_510_400
HOUR = 3_600


def payment(amount: int, ts: int, payee: str, event_type: str = "payment") -> dict[str, Any]:
    return {"event_type": event_type, "amount_minor": amount, "is_outflow": True,
            "currency": "USD", "counterparty_id": payee, "ts": ts}


def shipped() -> ThresholdAlerter:
    (alerter,) = build_alerters({"version": "t", "detectors": {
        "spending_burst": DEFAULT_CONFIG["detectors"]["spending_burst"]}})
    return alerter


def ordinary_history(
    rng: random.Random, alerter: ThresholdAlerter, days: int = 60
) -> tuple[Any, int, int]:
    """Two or three payments a day of about 40.00 to a dozen usual payees.

    Returns the state, the payments and the findings among them.
    """
    state = None
    events = findings = 0
    for day in range(days):
        for k in range(rng.randint(2, 3)):
            x = payment(round(4_000 * rng.lognormvariate(0.0, 0.6)),
                        T0 + day * 86_400 + (9 + 4 * k) * HOUR, f"shop-{rng.randrange(12)}")
            finding, state = alerter.process_one(x, state)
            events += 1
            findings += finding is not None
    return state, events, findings


def test_a_burst_to_new_payees_is_caught_within_its_first_three_events() -> None:
    caught = 0
    for seed in range(20):
        rng = random.Random(seed)
        alerter = shipped()
        state, _, _ = ordinary_history(rng, alerter)
        start = T0 + 61 * 86_400 + 2 * HOUR
        for k in range(3):
            x = payment(round(40_000 * rng.lognormvariate(0.0, 0.5)), start + k * 1_200,
                        f"new-{seed}-{k}")
            finding, state = alerter.process_one(x, state)
            if finding is not None:
                caught += 1
                assert any(c.isdigit() for c in finding.reasons[0])
                break
    assert caught >= 18, caught


def test_ordinary_spending_of_many_accounts_stays_quiet() -> None:
    rng = random.Random(1)
    alerter = shipped()
    events = findings = 0
    for _ in range(30):
        _, seen, found = ordinary_history(rng, alerter, days=30)
        events += seen
        findings += found
    # lognormal spending has its tail: at most 1 alert in 200 ordinary payments
    assert findings <= events / 200, (findings, events)


def test_a_new_account_is_judged_against_its_currencys_population() -> None:
    alerter = shipped()
    detector = alerter.detector
    assert isinstance(detector, SpendingBurst)
    rng = random.Random(4)
    for i in range(1_200):
        detector.learn_one(payment(round(5_000 * rng.lognormvariate(0.0, 0.5)), T0 + i,
                                   f"p{i}", "withdrawal"), detector.new_state())
    cash_out = payment(900_000, T0 + 2_000, "atm", "withdrawal")
    score = detector.score_one(cash_out, detector.new_state())
    assert score >= alerter.threshold
    assert "the currency's withdrawals" in detector.explain_one(
        cash_out, detector.new_state(), score)[0]
    assert detector.score_one(cash_out | {"currency": "EUR"}, detector.new_state()) == 0.0
    restored = detector.clone()
    restored.restore(orjson.loads(orjson.dumps(detector.snapshot())))
    assert restored.score_one(cash_out, detector.new_state()) == score


def test_the_state_stays_small_whatever_the_traffic() -> None:
    detector = SpendingBurst()
    state = detector.new_state()
    for i in range(5_000):
        state = detector.learn_one(payment(1_000 + i, T0 + i * 60, f"payee-{i}",
                                           ("payment", "transfer", "withdrawal", "pledge",
                                            "other")[i % 5]), state)
        state = detector.learn_one({"event_type": "top_up", "amount_minor": 500,
                                    "is_inflow": True, "ts": T0 + i * 60}, state)
    assert len(state[4]) == KNOWN_COUNTERPARTIES
    assert len(orjson.dumps(state)) < 450


def test_amount_outlier_halves_the_score_of_an_amount_to_a_known_payee() -> None:
    detector = AmountOutlier(min_history=5)
    state = detector.new_state()
    for i in range(20):
        state = detector.learn_one(payment(4_000 + 10 * i, T0 + i, f"shop-{i % 3}"), state)
    stranger = payment(400_000, T0 + 100, "stranger")
    landlord = payment(400_000, T0 + 100, "shop-1")
    assert detector.score_one(landlord, state) == 0.5 * detector.score_one(stranger, state)
    assert "paid most recently" in detector.explain_one(
        landlord, state, detector.score_one(landlord, state))[-1]
    assert detector.score_one(landlord, state[:4]) == detector.score_one(stranger, state)


def test_outflows_stamped_with_the_same_time_say_nothing_about_pace() -> None:
    # A clock of an hour (or a day) stamps a whole sequence alike: a gap of 0 s is not
    # ten times faster than anything. A gap the clock can show still is.
    detector = SpendingBurst()
    state = detector.new_state()
    for day in range(30):
        state = detector.learn_one(payment(4_000, T0 + day * 86_400, f"shop-{day % 4}"), state)
    later = T0 + 31 * 86_400
    state = detector.learn_one(payment(4_000, later, "shop-1"), state)
    big = payment(20_000, later, "shop-2")
    tied = detector.explain_one(big, state, detector.score_one(big, state))
    assert not any("follows the previous outflow" in reason for reason in tied)
    soon = {**big, "ts": later + 600}
    paced = detector.explain_one(soon, state, detector.score_one(soon, state))
    assert any("follows the previous outflow after 10 min" in reason for reason in paced)
    assert detector.score_one(soon, state) == detector.score_one(big, state) + detector.pace_weight
