"""The identity stage's sketch and detectors: shared identities and stacked loans."""

from __future__ import annotations

import copy
import json
from typing import Any

import orjson
import pytest

from detectors.identity import (
    DEFAULT_IDENTITY_PARAMS,
    IdentityParams,
    IdentityReuse,
    IdentitySketch,
    LoanStacking,
)

T0 = 1_709_251_200
DAY = 86_400
HASH = "5f0c1d2e3a4b5c6d7e8f90a1b2c3d4e5"  # what the worker keys the stage by, never shown


def record(account: str, ts: int, event_id: str, event_type: str = "login",
           kind: str = "national_id", amount: int = 0) -> dict[str, Any]:
    return {
        "_key": f"{kind}:{HASH}", "kind": "identity", "identity_kind": kind,
        "event_id": event_id, "event_type": event_type, "ts": ts, "account_id": account,
        "amount_minor": amount,
    }  # fmt: skip


def test_accounts_sharing_an_identity_are_counted_and_explained_without_the_hash() -> None:
    sketch = IdentitySketch.new()
    for i in range(4):
        x = sketch.observe(record(f"acct-{i}", T0 + i * 3 * DAY, f"e{i}", "account_opened"))
    assert x["identity_accounts"] == 4
    assert x["identity_account_is_new"] is True
    detector = IdentityReuse()
    assert detector.score_one(x) == pytest.approx(4 / 3)
    reasons = detector.explain_one(x, detector.score_one(x))
    assert reasons == ["national ID shared by 4 accounts within 9 d (limit 3 within 30 d)"]
    assert all(HASH not in reason and HASH[:8] not in reason for reason in reasons)


@pytest.mark.parametrize(("gap", "expected"), [(30 * DAY, 2), (30 * DAY + 1, 1)])
def test_identity_window_includes_both_ends(gap: int, expected: int) -> None:
    sketch = IdentitySketch.new()
    sketch.observe(record("acct-1", T0, "e1"))
    assert sketch.observe(record("acct-2", T0 + gap, "e2"))["identity_accounts"] == expected


def test_a_late_record_is_counted_among_its_neighbours_in_event_time() -> None:
    sketch = IdentitySketch.new()
    for i in range(3):
        sketch.observe(record(f"acct-{i}", T0 + 40 * DAY + i, f"e{i}"))
    late = sketch.observe(record("acct-late", T0 + 39 * DAY, "late"))
    assert late["identity_accounts"] == 4
    # acct-late was seen 30 days less 10 s after this one; the others a day later still.
    very_late = sketch.observe(record("acct-old", T0 + 9 * DAY + 10, "old"))
    assert very_late["identity_accounts"] == 2


def test_the_same_record_twice_counts_once_and_is_not_new_the_second_time() -> None:
    sketch = IdentitySketch.new()
    first = sketch.observe(record("acct-1", T0, "e1", "loan_application", amount=500_000))
    state = copy.deepcopy(sketch.to_state())
    second = sketch.observe(record("acct-1", T0, "e1", "loan_application", amount=500_000))
    assert sketch.to_state() == state
    assert first["identity_accounts"] == second["identity_accounts"] == 1
    assert first["loan_applications_window"] == second["loan_applications_window"] == 1
    assert second["identity_account_is_new"] is False
    assert IdentityReuse(min_accounts={"national_id": 2}).score_one(second) == 0.0


@pytest.mark.parametrize(("gap", "expected"), [(7 * DAY, 2), (7 * DAY + 1, 1)])
def test_loan_window_includes_both_ends(gap: int, expected: int) -> None:
    sketch = IdentitySketch.new()
    sketch.observe(record("acct-1", T0, "l1", "loan_application"))
    x = sketch.observe(record("acct-2", T0 + gap, "l2", "loan_application"))
    assert x["loan_applications_window"] == expected
    assert x["loan_disbursements_window"] == 0


def test_loan_stacking_counts_across_accounts_and_explains() -> None:
    sketch = IdentitySketch.new()
    for i, account in enumerate(["acct-1", "acct-2", "acct-1", "acct-3"]):
        x = sketch.observe(record(account, T0 + i * 12 * 3_600, f"l{i}", "loan_application",
                                  kind="phone", amount=300_000))
    assert x["loan_applications_window"] == 4
    detector = LoanStacking(max_applications=3)
    assert detector.score_one(x) == pytest.approx(4 / 3)
    assert detector.explain_one(x, detector.score_one(x)) == [
        "4 loan applications under one phone number within 1 d 12 h (limit 3 within 7 d)"
    ]
    login = sketch.observe(record("acct-1", T0 + 2 * DAY, "login-1", "login", kind="phone"))
    assert login["loan_applications_window"] == 4
    assert detector.score_one(login) == 0.0
    assert detector.score_one({**x, "identity_kind": "device_id"}) == 0.0


def test_disbursements_are_counted_apart_from_applications() -> None:
    sketch = IdentitySketch.new()
    sketch.observe(record("acct-1", T0, "a1", "loan_application"))
    sketch.observe(record("acct-1", T0 + 60, "d1", "loan_disbursement"))
    x = sketch.observe(record("acct-2", T0 + 120, "d2", "loan_disbursement"))
    assert (x["loan_applications_window"], x["loan_disbursements_window"]) == (1, 2)
    assert LoanStacking(max_disbursements=2).score_one(x) == 1.0
    (reason,) = LoanStacking(max_disbursements=2).explain_one(x, 1.0)
    assert reason == "2 loan disbursements under one national ID within 1 min (limit 2 within 7 d)"


def test_state_stays_bounded_under_a_flood_of_100_000_accounts_and_loans() -> None:
    sketch = IdentitySketch.new()
    for i in range(100_000):
        x = sketch.observe(record(f"acct-{i:07d}", T0 + i, f"e{i}", "loan_application",
                                  kind="device_id"))
    params = DEFAULT_IDENTITY_PARAMS
    assert len(sketch.accounts) == params.max_accounts
    assert len(sketch.loans) == params.max_loans
    assert x["identity_accounts"] == params.max_accounts
    assert len(orjson.dumps(sketch.to_state())) <= params.max_state_bytes()
    assert IdentityReuse().explain_one(x, 3.2)[0].startswith("device shared by 16 or more accounts")


@pytest.mark.parametrize("codec", ["orjson", "json"])
def test_state_round_trips_exactly_and_scores_the_same_afterwards(codec: str) -> None:
    dumps, loads = (orjson.dumps, orjson.loads) if codec == "orjson" else (json.dumps, json.loads)
    sketch = IdentitySketch.new()
    kinds = ("login", "loan_application", "loan_disbursement", "account_opened")
    for i in range(60):
        sketch.observe(record(f"acct-{i % 23}", T0 + (i * 7_919) % (40 * DAY), f"e{i}",
                              kinds[i % 4]))
    restored = IdentitySketch.from_state(loads(dumps(sketch.to_state())))
    assert restored == sketch
    later = [record(f"acct-{i % 29}", T0 + 41 * DAY + i * 3_600, f"n{i}", kinds[i % 4])
             for i in range(30)]
    assert [sketch.observe(r) for r in later] == [restored.observe(r) for r in later]


def test_bad_records_state_and_parameters_are_refused_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match="unknown identity sketch state format"):
        IdentitySketch.from_state([2, 0, [], []])
    with pytest.raises(ValueError, match="identity_kind in"):
        IdentitySketch.new().observe(record("acct-1", T0, "e1", kind="email"))
    with pytest.raises(ValueError, match="needs an int ts"):
        IdentitySketch.new().observe({**record("acct-1", T0, "e1"), "ts": "yesterday"})
    with pytest.raises(ValueError, match="max_accounts must be an int >= 1"):
        IdentityParams(max_accounts=0)
    with pytest.raises(ValueError, match="unknown identity kind 'email'"):
        IdentityReuse(min_accounts={"email": 3})
    with pytest.raises(ValueError, match=r"min_accounts\['phone'\] must be between 2 and 16"):
        IdentityReuse(min_accounts={"phone": 17})
    with pytest.raises(ValueError, match="max_applications must be at most 32"):
        LoanStacking(max_applications=33)
    with pytest.raises(ValueError, match="identity_kinds: unknown"):
        LoanStacking(identity_kinds=["email"])
    with pytest.raises(ValueError, match="list of non-empty strings"):
        LoanStacking(identity_kinds="phone")


@pytest.mark.parametrize("detector", [IdentityReuse(), LoanStacking()], ids=lambda d: d.name)
def test_detectors_clone_and_tolerate_sparse_features(detector: Any) -> None:
    assert repr(detector.clone()) == repr(detector)
    assert detector.stage == "identity"
    for x in ({}, {"event_type": "loan_application", "amount_minor": 0},
              {"identity_kind": "phone", "identity_accounts": "many"}):
        score = detector.score_one(x)
        assert isinstance(score, float) and score == 0.0
        reasons = detector.explain_one(x, score)
        assert reasons and all(isinstance(r, str) and r for r in reasons)
