"""The project stage's sketch and detectors: fake backers, churn and early payouts."""

from __future__ import annotations

import copy
import json
from typing import Any

import orjson
import pytest

from detectors.crowdfunding import (
    DEFAULT_PROJECT_PARAMS,
    PayoutAfterSuspiciousPledges,
    PledgeChurn,
    ProjectParams,
    ProjectSketch,
    SuspiciousPledging,
)

T0 = 1_709_251_200
DAY = 86_400


def record(event_type: str, account: str, ts: int, event_id: str, amount: int = 100_000,
           device: str | None = None, prior_events: int = 40) -> dict[str, Any]:
    return {
        "kind": "project", "event_type": event_type, "event_id": event_id, "ts": ts,
        "account_id": account, "amount_minor": amount, "device_id_hash": device,
        "account_events": prior_events, "project_id": "proj-7",
    }  # fmt: skip


def pledge(account: str, ts: int, event_id: str, **kwargs: Any) -> dict[str, Any]:
    return record("pledge", account, ts, event_id, **kwargs)


def test_brand_new_and_device_sharing_pledges_are_suspicious_once_each() -> None:
    sketch = ProjectSketch.new()
    sketch.observe(pledge("acct-1", T0, "p1", device="dev-a"))
    x = sketch.observe(pledge("acct-2", T0 + 60, "p2", device="dev-b", prior_events=2))
    assert (x["new_account_pledges"], x["shared_device_pledges"], x["suspicious_pledges"]) == (
        1, 0, 1)
    # A second account on dev-a makes acct-1's earlier pledge suspicious too; acct-3 is
    # both brand new and device-sharing and counts once.
    x = sketch.observe(pledge("acct-3", T0 + 120, "p3", device="dev-a", prior_events=0))
    assert (x["new_account_pledges"], x["shared_device_pledges"], x["suspicious_pledges"]) == (
        2, 2, 3)
    assert x["suspicious_share"] == 1.0
    assert x["last_suspicious_pledge_ts"] == T0 + 120
    # The same account pledging twice from one device is not device sharing.
    y = ProjectSketch.new()
    y.observe(pledge("acct-9", T0, "q1", device="dev-z"))
    assert y.observe(pledge("acct-9", T0 + 1, "q2", device="dev-z"))["shared_device_pledges"] == 0


def test_suspicious_pledging_scores_and_explains() -> None:
    sketch = ProjectSketch.new()
    for i in range(12):
        x = sketch.observe(pledge(f"new-{i}", T0 + i * 600, f"p{i}", prior_events=0,
                                  amount=410_000))
    for i in range(3):
        x = sketch.observe(pledge(f"old-{i}", T0 + 8_000 + i, f"o{i}", amount=360_000))
    detector = SuspiciousPledging(min_pledges=10, min_share=0.5)
    assert x["suspicious_amount_minor"] == 4_920_000 and x["pledged_amount_minor"] == 6_000_000
    assert detector.score_one(x) == pytest.approx(min(12 / 10, 0.82 / 0.5))
    assert detector.explain_one(x, 1.2) == [
        "12 of 15 pledges to this project within 7 d came from brand-new accounts (12) or"
        " accounts sharing a device with another pledger (0): 82% of the 60,000.00 pledged"
        " (limit 10 pledges and 50%)"
    ]
    assert detector.score_one({**x, "event_type": "project_payout"}) == 0.0


@pytest.mark.parametrize(("gap", "expected"), [(7 * DAY, 2), (7 * DAY + 1, 1)])
def test_the_window_ends_at_the_record_and_includes_its_start(gap: int, expected: int) -> None:
    sketch = ProjectSketch.new()
    sketch.observe(pledge("acct-1", T0, "p1"))
    assert sketch.observe(pledge("acct-2", T0 + gap, "p2"))["pledges_window"] == expected


def test_a_late_record_is_judged_on_what_came_before_it() -> None:
    sketch = ProjectSketch.new()
    for i in range(5):
        sketch.observe(pledge(f"acct-{i}", T0 + DAY + i, f"p{i}", prior_events=0))
    late = sketch.observe(pledge("acct-late", T0, "late"))
    assert late["pledges_window"] == 1 and late["suspicious_pledges"] == 0
    after = sketch.observe(pledge("acct-next", T0 + DAY + 10, "next"))
    assert after["pledges_window"] == 7


def test_the_same_record_twice_counts_once() -> None:
    sketch = ProjectSketch.new()
    first = sketch.observe(pledge("acct-1", T0, "p1", device="dev-a"))
    state = copy.deepcopy(sketch.to_state())
    second = sketch.observe(pledge("acct-1", T0, "p1", device="dev-a"))
    assert sketch.to_state() == state and first == second
    refund = record("pledge_refund", "acct-1", T0 + 60, "r1")
    once = sketch.observe(refund)
    assert sketch.observe(refund) == once and once["churn_refunds"] == 1


def test_pledge_churn_counts_refunds_to_pledgers_only() -> None:
    sketch = ProjectSketch.new()
    for i in range(10):
        sketch.observe(pledge(f"acct-{i}", T0 + i * 60, f"p{i}"))
    for i in range(5):
        x = sketch.observe(record("pledge_refund", f"acct-{i}", T0 + 3_600 + i, f"r{i}"))
    x = sketch.observe(record("pledge_refund", "stranger", T0 + 3_700, "r-stranger"))
    assert (x["refunds_window"], x["churn_refunds"], x["pledges_window"]) == (6, 5, 10)
    assert x["churn_ratio"] == 0.5
    detector = PledgeChurn(min_refunds=5, min_churn_ratio=0.3)
    assert detector.score_one(x) == 1.0
    assert detector.explain_one(x, 1.0) == [
        "5 refunds within 7 d went back to accounts that had pledged to this project, 50% of"
        " its 10 pledges (limit 5 and 30%)"
    ]
    assert detector.score_one({**x, "event_type": "pledge"}) == 0.0


@pytest.mark.parametrize(("delay", "scores"), [(3 * DAY, True), (3 * DAY + 1, False)])
def test_a_payout_soon_after_suspicious_pledges(delay: int, scores: bool) -> None:
    sketch = ProjectSketch.new()
    for i in range(6):
        sketch.observe(pledge(f"new-{i}", T0 + i * 60, f"p{i}", prior_events=1))
    last = T0 + 5 * 60
    x = sketch.observe(record("project_payout", "owner", last + delay, "payout",
                              amount=600_000))
    detector = PayoutAfterSuspiciousPledges(min_share=0.5, min_pledges=5,
                                            max_delay_seconds=3 * DAY)
    assert (detector.score_one(x) >= 1.0) is scores
    if scores:
        assert detector.explain_one(x, 1.2) == [
            "payout of 6,000.00 3 d after the last of 6 pledges from brand-new accounts (6) or"
            " accounts sharing a device with another pledger (0), which made 100% of the"
            " 6,000.00 pledged within 7 d (limit 5 pledges and 50% within 3 d)"
        ]


def test_state_stays_bounded_under_a_flood_of_100_000_pledges() -> None:
    sketch = ProjectSketch.new()
    for i in range(100_000):
        kind = "pledge_refund" if i % 4 == 3 else "pledge"
        x = sketch.observe(record(kind, f"acct-{i:07d}", T0 + i, f"e{i}", amount=10**17,
                                  device=f"dev-{i}", prior_events=i % 5))
    params = DEFAULT_PROJECT_PARAMS
    assert len(sketch.pledges) == params.max_pledges
    assert len(sketch.refunds) == params.max_refunds
    assert x["pledges_saturated"] is True
    assert len(orjson.dumps(sketch.to_state())) <= params.max_state_bytes()


@pytest.mark.parametrize("codec", ["orjson", "json"])
def test_state_round_trips_exactly_and_scores_the_same_afterwards(codec: str) -> None:
    dumps, loads = (orjson.dumps, orjson.loads) if codec == "orjson" else (json.dumps, json.loads)
    sketch = ProjectSketch.new()
    kinds = ("pledge", "pledge", "pledge_refund", "project_payout")
    for i in range(80):
        sketch.observe(record(kinds[i % 4], f"acct-{i % 17}", T0 + (i * 7_919) % (10 * DAY),
                              f"e{i}", device=f"dev-{i % 5}", prior_events=i % 4))
    restored = ProjectSketch.from_state(loads(dumps(sketch.to_state())))
    assert restored == sketch
    later = [record(kinds[i % 4], f"acct-{i % 19}", T0 + 11 * DAY + i * 600, f"n{i}",
                    device=f"dev-{i % 3}", prior_events=i % 4) for i in range(40)]
    assert [sketch.observe(r) for r in later] == [restored.observe(r) for r in later]


def test_bad_records_state_and_parameters_are_refused_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match="unknown project sketch state format"):
        ProjectSketch.from_state({"pledges": []})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="event_type in"):
        ProjectSketch.new().observe(record("donation", "acct-1", T0, "e1"))
    with pytest.raises(ValueError, match="new_account_events must be an int >= 0"):
        ProjectParams(new_account_events=-1)
    with pytest.raises(ValueError, match=r"min_share must be a number in \(0, 1\]"):
        SuspiciousPledging(min_share=1.5)
    with pytest.raises(ValueError, match="min_refunds must be an int >= 1"):
        PledgeChurn(min_refunds=0)
    with pytest.raises(ValueError, match="max_delay_seconds must be an int >= 1"):
        PayoutAfterSuspiciousPledges(max_delay_seconds=0)


@pytest.mark.parametrize(
    "detector", [PledgeChurn(), SuspiciousPledging(), PayoutAfterSuspiciousPledges()],
    ids=lambda d: d.name,
)
def test_detectors_clone_and_tolerate_sparse_features(detector: Any) -> None:
    assert repr(detector.clone()) == repr(detector)
    assert detector.stage == "project"
    for x in ({}, {"event_type": "pledge", "amount_minor": 0},
              {"event_type": "project_payout", "ts": T0, "suspicious_share": "high"}):
        score = detector.score_one(x)
        assert isinstance(score, float) and score == 0.0
        reasons = detector.explain_one(x, score)
        assert reasons and all(isinstance(r, str) and r for r in reasons)
