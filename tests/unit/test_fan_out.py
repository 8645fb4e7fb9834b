"""Fan-out: many different counterparties paid by one account within a window."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from detectors import DEFAULT_CONFIG, FanOut, build_alerters
from detectors.fan_out import MAX_COUNTERPARTIES
from detectors.hashing import stable_hash

T0 = 1_709_553_600
HOUR = 3_600


def transfer(payee: str, ts: int, **extra: Any) -> dict[str, Any]:
    x = {
        "event_type": "transfer",
        "amount_minor": 90_000,
        "is_outflow": True,
        "counterparty_id": payee,
        "ts": ts,
        "account_id": "acct-1",
    }
    return {**x, **extra}


def learnt(detector: FanOut, *events: dict[str, Any]) -> list[list[int]]:
    state = detector.new_state()
    for x in events:
        state = detector.learn_one(x, state)
    return state


def test_counts_different_counterparties_not_transfers() -> None:
    detector = FanOut(min_distinct=3, window_seconds=HOUR)
    state = learnt(detector, *(transfer("a", T0 + i) for i in range(10)), transfer("b", T0 + 20))
    assert state == [[stable_hash("a"), T0 + 9], [stable_hash("b"), T0 + 20]]
    assert detector.score_one(transfer("a", T0 + 30), state) == pytest.approx(2 / 3)
    assert detector.score_one(transfer("c", T0 + 30), state) == 1.0


def test_window_edges_are_included() -> None:
    detector = FanOut(min_distinct=3, window_seconds=HOUR)
    state = learnt(detector, transfer("a", T0), transfer("b", T0 + 600))
    assert detector.score_one(transfer("c", T0 + HOUR), state) == 1.0
    assert detector.score_one(transfer("c", T0 + HOUR + 1), state) == pytest.approx(2 / 3)


def test_only_configured_outgoing_types_with_a_counterparty_count() -> None:
    detector = FanOut(min_distinct=1)
    state = detector.new_state()
    assert detector.score_one(transfer("a", T0, event_type="payment"), state) == 0.0
    assert detector.score_one(transfer("a", T0, is_outflow=False), state) == 0.0
    assert detector.score_one(transfer("", T0), state) == 0.0
    assert detector.score_one(transfer("a", T0, counterparty_id=None), state) == 0.0
    assert detector.score_one(transfer("a", T0, amount_minor=0), state) == 0.0
    assert detector.score_one(transfer("a", T0), state) == 1.0
    payments = FanOut(min_distinct=1, event_types=["payment", "transfer"])
    assert payments.score_one(transfer("a", T0, event_type="payment"), state) == 1.0


def test_exempt_accounts_are_never_scored() -> None:
    detector = FanOut(min_distinct=1, exempt_accounts=["escrow-001"])
    x = transfer("acct-9", T0, account_id="escrow-001")
    assert detector.score_one(x, detector.new_state()) == 0.0
    assert detector.learn_one(x, detector.new_state()) == []
    assert detector.explain_one(x, detector.new_state(), 0.0) == [
        "not scored: escrow-001 is one of the 1 accounts exempt from fan-out"
    ]


def test_a_late_transfer_is_counted_with_the_later_ones_in_its_window() -> None:
    detector = FanOut(min_distinct=3, window_seconds=HOUR)
    state = learnt(detector, transfer("b", T0 + 1_800), transfer("c", T0 + 2_400))
    assert detector.score_one(transfer("a", T0), state) == 1.0


def test_reasons_count_the_counterparties_and_say_whether_this_one_is_new() -> None:
    detector = FanOut(min_distinct=3, window_seconds=HOUR)
    state = learnt(detector, transfer("a", T0), transfer("b", T0 + 300))
    new = transfer("c", T0 + 1_260)
    assert detector.explain_one(new, state, 1.0) == [
        "3 different counterparties paid by transfer within 21 min (alert at 3 within 1 h)",
        "this transfer of 900.00 goes to a counterparty not paid within 1 h of it",
    ]
    again = transfer("a", T0 + 1_260)
    assert detector.explain_one(again, state, 0.67)[1].endswith("already paid within 1 h of it")


def test_state_keeps_at_most_64_counterparties_the_most_recently_paid() -> None:
    detector = FanOut(min_distinct=10, window_seconds=86_400)
    state = detector.new_state()
    for i in range(500):
        state = detector.learn_one(transfer(f"mule-{i}", T0 + i), state)
    assert len(state) == MAX_COUNTERPARTIES
    assert {kept[0] for kept in state} == {stable_hash(f"mule-{i}") for i in range(436, 500)}
    assert all(0 <= kept[0] < 2**48 for kept in state)
    assert orjson.loads(orjson.dumps(state)) == state
    assert detector.score_one(transfer("new", T0 + 600), state) == 6.5


def test_old_counterparties_are_forgotten_after_two_windows() -> None:
    detector = FanOut(min_distinct=2, window_seconds=HOUR)
    state = learnt(detector, transfer("a", T0), transfer("b", T0 + 2 * HOUR + 1))
    assert state == [[stable_hash("b"), T0 + 2 * HOUR + 1]]


def test_the_alerter_flags_from_the_tenth_counterparty_and_counts_the_flagged_ones() -> None:
    spec = DEFAULT_CONFIG["detectors"]["fan_out"]
    (alerter,) = build_alerters({"version": "t", "detectors": {"fan_out": spec}})
    assert alerter.learn_flagged
    state = None
    flagged = []
    # Twelve a minute apart, then one more when the first has left the day's window:
    # 11 of the 12 are still in it, 3 of them paid by transfers that were flagged.
    times = [T0 + i * 60 for i in range(12)] + [T0 + 86_400 + 30]
    for i, ts in enumerate(times):
        finding, state = alerter.process_one(transfer(f"mule-{i}", ts), state)
        flagged.append(finding is not None)
    assert flagged == [False] * 9 + [True] * 4
    assert finding is not None and finding.score == 1.2


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"min_distinct": 0}, "min_distinct must be an int >= 1"),
        ({"min_distinct": MAX_COUNTERPARTIES + 1}, "min_distinct must be at most 64"),
        ({"window_seconds": -1}, "window_seconds must be an int >= 1"),
        ({"exempt_accounts": "escrow-001"}, "exempt_accounts must be a list"),
    ],
)
def test_refuses_bad_parameters(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FanOut(**params)
