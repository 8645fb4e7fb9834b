"""Borrow and vanish: a loan cashed out and not repaid by its first due date."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from detectors import DEFAULT_CONFIG, BorrowAndVanish, build_alerters
from detectors.borrow_and_vanish import LATE_DISBURSEMENT_SECONDS, MAX_CASH_OUTS

MONDAY = 1_709_510_400  # 2024-03-04 00:00 UTC
DAY = 86_400
DUE_END = int(datetime(2024, 3, 12, tzinfo=UTC).timestamp())  # end of 2024-03-11


def disbursement(ts: int = MONDAY, amount: int = 3_000_000, loan_id: str = "loan-7",
                 due_date: Any = "2024-03-11") -> dict[str, Any]:  # fmt: skip
    x = {"event_type": "loan_disbursement", "amount_minor": amount, "is_inflow": True,
         "loan_id": loan_id, "ts": ts}  # fmt: skip
    if due_date is not None:
        x["due_date"] = due_date
    return x


def cash_out(amount: int, ts: int, event_type: str = "withdrawal") -> dict[str, Any]:
    return {"event_type": event_type, "amount_minor": amount, "is_outflow": True, "ts": ts}


def login(ts: int) -> dict[str, Any]:
    return {"event_type": "login", "amount_minor": 0, "ts": ts}


def repayment(ts: int, loan_id: str = "loan-7") -> dict[str, Any]:
    return {"event_type": "loan_repayment", "amount_minor": 300_000, "loan_id": loan_id, "ts": ts}


def learnt(d: BorrowAndVanish, *events: dict[str, Any]) -> list[Any]:
    state = d.new_state()
    for x in events:
        state = d.learn_one(x, state)
    return state


def test_judged_on_the_first_event_at_or_after_the_end_of_the_due_date() -> None:
    d = BorrowAndVanish()
    state = learnt(d, disbursement(), cash_out(2_760_000, MONDAY + 3_600))
    assert d.score_one(login(DUE_END - 1), state) == 0.0
    assert d.score_one(login(DUE_END), state) == 0.92
    # Judged once: the loan is forgotten after the event that passes its due time.
    state = d.learn_one(login(DUE_END), state)
    assert state[0] == []
    assert d.score_one(login(DUE_END + DAY), state) == 0.0


def test_grace_time_moves_the_due_time() -> None:
    d = BorrowAndVanish(grace_seconds=DAY)
    state = learnt(d, disbursement(), cash_out(3_000_000, MONDAY + 60))
    assert d.score_one(login(DUE_END + DAY - 1), state) == 0.0
    assert d.score_one(login(DUE_END + DAY), state) == 1.0


def test_a_repayment_before_the_due_date_closes_the_loan() -> None:
    d = BorrowAndVanish()
    state = learnt(d, disbursement(), cash_out(3_000_000, MONDAY + 60), repayment(DUE_END - 60))
    assert state[0] == []
    assert d.score_one(login(DUE_END + 60), state) == 0.0
    # A repayment of another loan does not.
    state = learnt(d, disbursement(), cash_out(3_000_000, MONDAY + 60), repayment(MONDAY, "x"))
    assert d.score_one(login(DUE_END + 60), state) == 1.0


def test_a_late_repayment_is_the_borrower_coming_back_not_vanishing() -> None:
    d = BorrowAndVanish()
    state = learnt(d, disbursement(), cash_out(3_000_000, MONDAY + 60))
    assert d.score_one(repayment(DUE_END + 3_600), state) == 0.0
    status = {"event_type": "loan_status", "loan_id": "loan-7", "status": "repaid",
              "amount_minor": 0, "ts": DUE_END + 3_600}  # fmt: skip
    assert d.score_one(status, state) == 0.0


def test_the_platform_reporting_days_past_due_counts_as_past_due() -> None:
    d = BorrowAndVanish()
    state = learnt(d, disbursement(due_date=None), cash_out(2_500_000, MONDAY + 60))
    status = {"event_type": "loan_status", "loan_id": "loan-7", "status": "delinquent",
              "days_past_due": 1, "amount_minor": 0, "ts": MONDAY + 2 * DAY}  # fmt: skip
    assert d.score_one(status, state) == pytest.approx(2_500_000 / 3_000_000)
    assert d.explain_one(status, state, 0.83)[-1] == (
        "this loan_status reports the loan 1 day past due"
    )
    assert d.score_one({**status, "days_past_due": 0}, state) == 0.0


def test_without_a_due_date_the_default_first_due_time_applies() -> None:
    d = BorrowAndVanish(default_due_seconds=30 * DAY)
    for due_date in (None, "not a date", 20240311, "2024-03-01"):  # missing, bad, or before
        state = learnt(d, disbursement(due_date=due_date), cash_out(3_000_000, MONDAY + 60))
        assert d.score_one(login(MONDAY + 30 * DAY - 1), state) == 0.0, due_date
        assert d.score_one(login(MONDAY + 30 * DAY), state) == 1.0, due_date


def test_only_cash_outs_after_the_disbursement_count() -> None:
    d = BorrowAndVanish()
    state = learnt(
        d,
        cash_out(1_000_000, MONDAY - 7 * DAY),  # long before: not this loan's money
        disbursement(),
        cash_out(1_000_000, MONDAY + 60, "transfer"),
        cash_out(900_000, MONDAY + 120, "payment"),  # spending is not cashing out
    )
    assert d.score_one(login(DUE_END), state) == pytest.approx(1 / 3)


def test_a_disbursement_arriving_after_its_cash_outs_still_counts_them() -> None:
    d = BorrowAndVanish()
    # The payments topic ran ahead of the lending topic by an hour.
    state = learnt(d, cash_out(2_900_000, MONDAY + 600), disbursement(MONDAY))
    assert d.score_one(login(DUE_END), state) == pytest.approx(2_900_000 / 3_000_000)
    # Cash-outs are kept one day behind the newest: a day late is the limit.
    a_day_later = MONDAY + 600 + LATE_DISBURSEMENT_SECONDS + 1
    state = learnt(
        d, cash_out(2_900_000, MONDAY + 600), cash_out(100, a_day_later), disbursement(MONDAY)
    )
    assert d.score_one(login(DUE_END), state) == pytest.approx(100 / 3_000_000)


def test_a_cash_out_past_the_due_date_counts_for_the_event_that_judges() -> None:
    d = BorrowAndVanish()
    state = learnt(d, disbursement(), cash_out(1_500_000, MONDAY + 60))
    assert d.score_one(cash_out(1_500_000, DUE_END + 60), state) == 1.0


def test_reasons_name_the_loan_the_share_taken_and_the_due_time() -> None:
    d = BorrowAndVanish()
    state = learnt(d, disbursement(), cash_out(2_760_000, MONDAY + 3_600))
    assert d.explain_one(login(DUE_END + DAY), state, 0.92) == [
        "loan loan-7 of 30,000.00 disbursed 2024-03-04 00:00 UTC: 27,600.00 (92%) withdrawn or"
        " transferred since, no repayment by its due time 2024-03-12 00:00 UTC",
        "this login comes 1 d after the due time",
    ]
    assert d.explain_one(login(MONDAY), d.new_state(), 0.0) == [
        "no open loan past its due time (0 open loans followed)"
    ]


def test_state_is_bounded_whatever_the_traffic() -> None:
    d = BorrowAndVanish(max_open_loans=4)
    state = d.new_state()
    for i in range(50):
        state = d.learn_one(disbursement(MONDAY + i, loan_id=f"loan-{i}" + "x" * 200), state)
        state = d.learn_one(cash_out(1_000, MONDAY + i), state)
    loans, cash_outs = state
    assert [loan[0][:7] for loan in loans] == ["loan-46", "loan-47", "loan-48", "loan-49"]
    assert all(len(loan[0]) == 64 for loan in loans)
    assert len(cash_outs) == MAX_CASH_OUTS
    assert orjson.loads(orjson.dumps(state)) == state
    assert len(orjson.dumps(state)) < 800


def test_the_same_loan_disbursed_twice_is_one_loan() -> None:
    d = BorrowAndVanish()
    state = learnt(d, disbursement(), disbursement(MONDAY + 60, amount=3_500_000))
    assert len(state[0]) == 1 and state[0][0][2] == 3_500_000


def test_the_alerter_learns_every_event_and_judges_each_loan_once() -> None:
    spec = DEFAULT_CONFIG["detectors"]["borrow_and_vanish"]
    (alerter,) = build_alerters({"version": "t", "detectors": {"borrow_and_vanish": spec}})
    assert alerter.learn_flagged
    events = [disbursement(), cash_out(2_700_000, MONDAY + 3_600), login(DUE_END + 10),
              login(DUE_END + 20)]  # fmt: skip
    state = None
    flagged = []
    for x in events:
        finding, state = alerter.process_one(x, state)
        flagged.append(finding is not None)
    assert flagged == [False, False, True, False]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"cash_out_types": []}, "cash_out_types must not be empty"),
        ({"grace_seconds": -1}, "grace_seconds must be an int >= 0"),
        ({"default_due_seconds": 0}, "default_due_seconds must be an int >= 1"),
        ({"max_open_loans": 0}, "max_open_loans must be an int >= 1"),
    ],
)
def test_refuses_bad_parameters(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BorrowAndVanish(**params)
