"""Borrow and vanish: a loan cashed out and not repaid by its first due date."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from detectors import DEFAULT_CONFIG, BorrowAndVanish, build_alerters
from detectors.base import ThresholdAlerter
from detectors.borrow_and_vanish import MAX_CASH_OUTS, SETTLED
from streams.alerts import alert_id_for
from streams.codec import Decoder
from streams.pipeline import Monitor

MONDAY = 1_709_510_400  # 2024-03-04 00:00 UTC
DAY = 86_400
HOUR = 3_600
DUE_END = int(datetime(2024, 3, 12, tzinfo=UTC).timestamp())  # end of 2024-03-11
LAG = 86_400  # the shipped max_topic_lag_seconds


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


def application(ts: int) -> dict[str, Any]:
    """A lending-topic event of another loan: the lending topic has reached ``ts``."""
    return {"event_type": "loan_application", "amount_minor": 500_000, "loan_id": "loan-8",
            "ts": ts}  # fmt: skip


def past_due(ts: int = DUE_END + 60, days: int = 1, loan_id: str = "loan-7") -> dict[str, Any]:
    return {"event_type": "loan_status", "loan_id": loan_id, "status": "delinquent",
            "days_past_due": days, "amount_minor": 0, "ts": ts}  # fmt: skip


def repayment(ts: int, loan_id: str = "loan-7") -> dict[str, Any]:
    return {"event_type": "loan_repayment", "amount_minor": 300_000, "loan_id": loan_id, "ts": ts}


def learnt(d: BorrowAndVanish, *events: dict[str, Any]) -> list[Any]:
    state = d.new_state()
    for x in events:
        state = d.learn_one(x, state)
    return state


def alerter() -> ThresholdAlerter:
    spec = DEFAULT_CONFIG["detectors"]["borrow_and_vanish"]
    (built,) = build_alerters({"version": "t", "detectors": {"borrow_and_vanish": spec}})
    return built


def flagged(events: Sequence[dict[str, Any]]) -> list[tuple[int, float]]:
    """``(index, score)`` of each event the shipped alerter flags, fed in this order."""
    a = alerter()
    state = None
    found = []
    for index, x in enumerate(events):
        finding, state = a.process_one(x, state)
        if finding is not None:
            found.append((index, finding.score))
    return found


def arrivals(lending: Sequence[Any], payments: Sequence[Any]) -> Iterator[list[Any]]:
    """Every interleaving of the two topics, each keeping its own order."""
    total = len(lending) + len(payments)
    for places in itertools.combinations(range(total), len(lending)):
        from_lending, from_payments = iter(lending), iter(payments)
        yield [next(from_lending) if i in places else next(from_payments) for i in range(total)]


# -- arrival order between the two topics --------------------------------------------------

CASHED_OUT_LENDING = (disbursement(), past_due())
# 40% + 30% + 22% = 92%: the third cash-out is the one that reaches 80%.
CASHED_OUT_PAYMENTS = (
    cash_out(1_200_000, MONDAY + HOUR),
    cash_out(900_000, MONDAY + 5 * HOUR, "transfer"),
    cash_out(660_000, MONDAY + 9 * HOUR),
    login(DUE_END + 2 * HOUR),  # back after the due time, but not with the money
)


def test_every_arrival_order_of_a_cashed_out_loan_reports_it_once() -> None:
    orders = list(arrivals(CASHED_OUT_LENDING, CASHED_OUT_PAYMENTS))
    assert len(orders) == 15
    triggers = set()
    for order in orders:
        found = flagged(order)
        assert len(found) == 1, order
        index, score = found[0]
        assert score == 0.92, order
        triggers.add(order[index]["event_type"])
    # The past-due status when the cash-outs came first, else the last cash-out.
    assert triggers == {"loan_status", "withdrawal"}


def test_a_payment_far_past_the_due_time_may_be_what_reports_the_loan() -> None:
    payments = (*CASHED_OUT_PAYMENTS, login(DUE_END + LAG))
    for order in arrivals(CASHED_OUT_LENDING, payments):
        assert [score for _, score in flagged(order)] == [0.92], order


def test_every_arrival_order_of_a_repaid_loan_reports_nothing() -> None:
    lending = (
        disbursement(),
        repayment(DUE_END - 2 * HOUR),
        {**past_due(DUE_END + 60, days=0), "status": "repaid"},
        application(DUE_END + 3 * HOUR),
    )
    payments = (
        cash_out(1_500_000, MONDAY + HOUR),
        cash_out(1_350_000, MONDAY + 2 * DAY),
        login(DUE_END + 2 * HOUR),
    )
    for order in arrivals(lending, payments):
        assert flagged(order) == [], order


def test_a_loan_cashed_out_below_the_share_is_reported_in_no_order() -> None:
    payments = (cash_out(1_200_000, MONDAY + HOUR), cash_out(1_100_000, MONDAY + 5 * HOUR),
                login(DUE_END + LAG))  # fmt: skip
    for order in arrivals(CASHED_OUT_LENDING, payments):
        assert flagged(order) == [], order


def raw(event_id: str, ts: int, event_type: str, **fields: Any) -> bytes:
    return orjson.dumps({
        "event_id": event_id, "event_type": event_type, "account_id": "acct-1",
        "occurred_at": datetime.fromtimestamp(ts, UTC).isoformat(), **fields,
    })  # fmt: skip


WIRE_LENDING = (
    raw("e-loan", MONDAY, "loan_disbursement", amount="30000.00", currency="CNY",
        loan_id="loan-7", due_date="2024-03-11"),
    raw("e-status", DUE_END + 60, "loan_status", loan_id="loan-7", status="delinquent",
        days_past_due=1),
)  # fmt: skip
WIRE_PAYMENTS = (
    raw("e-out-1", MONDAY + HOUR, "withdrawal", amount="12000.00", currency="CNY"),
    raw("e-out-2", MONDAY + 5 * HOUR, "withdrawal", amount="15600.00", currency="CNY"),
)


def wire_alerts(order: Sequence[bytes]) -> list[Any]:
    monitor = Monitor(Decoder(pii_key=b"test-key", max_message_bytes=65_536), [alerter()], "t")
    states: dict[bytes, Any] = {}
    now = datetime(2024, 4, 1, tzinfo=UTC)
    alerts = []
    for offset, message in enumerate(order):
        alerts += monitor.process(message, states, topic="t", partition=0, offset=offset,
                                  now=now).alerts  # fmt: skip
    return alerts


def test_the_worker_publishes_one_alert_per_loan_in_every_arrival_order() -> None:
    for order in arrivals(WIRE_LENDING, WIRE_PAYMENTS):
        alerts = wire_alerts(order)
        assert len(alerts) == 1
        assert alerts[0].score == 0.92
        # named after the loan, and pointing at the status that found it past due,
        # whether that status or the last cash-out arrived last
        assert alerts[0].alert_id == alert_id_for("borrow_and_vanish", "loan:loan-7")
        assert alerts[0].event_ids[0] == "e-status"
        assert set(alerts[0].event_ids) <= {"e-status", "e-out-2"}


def test_the_alert_id_is_the_same_in_every_arrival_order() -> None:
    ids = {wire_alerts(order)[0].alert_id for order in arrivals(WIRE_LENDING, WIRE_PAYMENTS)}
    assert len(ids) == 1


# -- when a loan is past due ------------------------------------------------------------


def test_a_lending_event_at_or_after_the_due_time_finds_the_loan_past_due() -> None:
    d = BorrowAndVanish()
    state = learnt(d, disbursement(), cash_out(2_760_000, MONDAY + HOUR))
    assert d.score_one(application(DUE_END - 1), state) == 0.0
    assert d.score_one(application(DUE_END), state) == 0.92
    state = d.learn_one(application(DUE_END), state)
    assert state[0][0][-1] == SETTLED
    assert d.score_one(application(DUE_END + DAY), state) == 0.0


def test_another_event_finds_it_past_due_only_max_topic_lag_after_the_due_time() -> None:
    d = BorrowAndVanish()
    state = learnt(d, disbursement(), cash_out(2_760_000, MONDAY + HOUR))
    # A repayment from before the due time may still be on its way on the lending topic.
    assert d.score_one(login(DUE_END), state) == 0.0
    assert d.score_one(login(DUE_END + LAG - 1), state) == 0.0
    assert d.score_one(login(DUE_END + LAG), state) == 0.92
    # Without the bound, as if everything came in one topic: the first event past due.
    d = BorrowAndVanish(max_topic_lag_seconds=0)
    state = learnt(d, disbursement(), cash_out(2_760_000, MONDAY + HOUR))
    assert d.score_one(login(DUE_END - 1), state) == 0.0
    assert d.score_one(login(DUE_END), state) == 0.92


def test_grace_time_moves_the_due_time() -> None:
    d = BorrowAndVanish(grace_seconds=DAY)
    state = learnt(d, disbursement(), cash_out(3_000_000, MONDAY + 60))
    assert d.score_one(application(DUE_END + DAY - 1), state) == 0.0
    assert d.score_one(application(DUE_END + DAY), state) == 1.0


def test_the_platform_reporting_days_past_due_counts_as_past_due() -> None:
    d = BorrowAndVanish()
    state = learnt(d, disbursement(due_date=None), cash_out(2_500_000, MONDAY + 60))
    status = past_due(MONDAY + 2 * DAY)
    assert d.score_one(status, state) == pytest.approx(2_500_000 / 3_000_000)
    assert d.explain_one(status, state, 0.83)[-1] == (
        "this loan_status reports the loan 1 day past due"
    )
    assert d.score_one({**status, "days_past_due": 0}, state) == 0.0
    assert d.score_one(past_due(MONDAY + 2 * DAY, loan_id="another"), state) == 0.0


def test_without_a_due_date_the_default_first_due_time_applies() -> None:
    d = BorrowAndVanish(default_due_seconds=30 * DAY)
    for due_date in (None, "not a date", 20240311, "2024-03-01"):  # missing, bad, or before
        state = learnt(d, disbursement(due_date=due_date), cash_out(3_000_000, MONDAY + 60))
        assert d.score_one(application(MONDAY + 30 * DAY - 1), state) == 0.0, due_date
        assert d.score_one(application(MONDAY + 30 * DAY), state) == 1.0, due_date


# -- what counts as taken out -----------------------------------------------------------


def test_cash_outs_count_from_the_disbursement_to_just_before_the_due_time() -> None:
    edges = (
        cash_out(1_000_000, MONDAY - 1),  # before the loan: not its money
        cash_out(1_200_000, MONDAY),
        cash_out(1_200_000, DUE_END - 1),
        cash_out(1_000_000, DUE_END),  # after the due time: not part of the verdict
    )
    # In event order, the status reports the 2,400,000 taken: exactly 80%.
    assert flagged([*edges[:1], disbursement(), *edges[1:3], past_due(), edges[3]]) == [(4, 0.8)]
    # The status first: the cash-out at the last second before the due time reports it.
    assert flagged([disbursement(), past_due(), *edges]) == [(4, 0.8)]
    # One minor unit less and nothing is reported, whatever the order.
    short = (*edges[:2], cash_out(1_199_999, DUE_END - 1), edges[3])
    assert flagged([disbursement(), past_due(), *short]) == []
    assert flagged([short[0], disbursement(), *short[1:], past_due()]) == []


def test_spending_is_not_cashing_out() -> None:
    d = BorrowAndVanish()
    state = learnt(d, disbursement(), cash_out(1_000_000, MONDAY + 60, "transfer"),
                   cash_out(900_000, MONDAY + 120, "payment"))  # fmt: skip
    assert d.score_one(past_due(), state) == 0.0  # 1/3 taken: below the share
    assert d.explain_one(past_due(), state, 0.0) == [
        "no loan past its due time and cashed out (1 loan followed)"
    ]


def test_a_past_due_loan_waits_for_late_cash_outs_until_the_bound() -> None:
    d = BorrowAndVanish()
    state = learnt(d, disbursement(), past_due(), login(DUE_END + LAG - 1))
    assert d.score_one(cash_out(2_760_000, MONDAY + HOUR), state) == 0.92
    # Once the account has an event the bound after the due time, every cash-out from
    # before it has arrived: the loan is settled, and one arriving later changes nothing.
    state = d.learn_one(login(DUE_END + LAG), state)
    assert state[0][0][-1] == SETTLED
    assert d.score_one(cash_out(2_760_000, MONDAY + HOUR), state) == 0.0


def test_a_disbursement_arriving_after_its_cash_outs_still_counts_them() -> None:
    d = BorrowAndVanish()
    # The payments topic ran ahead of the lending topic by an hour.
    state = learnt(d, cash_out(2_900_000, MONDAY + 600), disbursement(MONDAY))
    assert d.score_one(past_due(), state) == pytest.approx(2_900_000 / 3_000_000)
    # Other events may overtake it by any time; cash-outs are kept up to the bound
    # behind the newest cash-out.
    state = learnt(d, cash_out(2_900_000, MONDAY + 600), login(MONDAY + 7 * DAY),
                   cash_out(100, MONDAY + 600 + LAG), disbursement(MONDAY))  # fmt: skip
    assert d.score_one(past_due(), state) == pytest.approx(2_900_100 / 3_000_000)
    state = learnt(d, cash_out(2_900_000, MONDAY + 600), cash_out(100, MONDAY + 601 + LAG),
                   disbursement(MONDAY))  # fmt: skip
    assert d.score_one(past_due(), state) == 0.0


def test_a_late_disbursement_sees_only_the_last_cash_outs() -> None:
    d = BorrowAndVanish()
    small = [cash_out(100_000, MONDAY + 60 * i) for i in range(1, 31)]  # 30 x 1,000.00
    state = learnt(d, *small, disbursement(MONDAY))
    assert state[1] == [[x["ts"], 100_000] for x in small[-MAX_CASH_OUTS:]]
    assert state[0][0][4] == MAX_CASH_OUTS * 100_000
    # In event order all 30 count: 100%.
    assert learnt(d, disbursement(MONDAY), *small)[0][0][4] == 3_000_000


# -- repayments ---------------------------------------------------------------------------


def test_a_repayment_before_the_due_date_closes_the_loan() -> None:
    d = BorrowAndVanish()
    state = learnt(d, disbursement(), cash_out(3_000_000, MONDAY + 60), repayment(DUE_END - 60))
    assert d.score_one(past_due(), state) == 0.0
    assert d.score_one(login(DUE_END + LAG), state) == 0.0
    # A repayment of another loan does not.
    state = learnt(d, disbursement(), cash_out(3_000_000, MONDAY + 60), repayment(MONDAY, "x"))
    assert d.score_one(past_due(), state) == 1.0


def test_a_late_repayment_is_the_borrower_coming_back_not_vanishing() -> None:
    d = BorrowAndVanish()
    state = learnt(d, disbursement(), cash_out(3_000_000, MONDAY + 60))
    assert d.score_one(repayment(DUE_END + HOUR), state) == 0.0
    status = {**past_due(DUE_END + HOUR, days=0), "status": "repaid"}
    assert d.score_one(status, state) == 0.0


def test_a_repayment_from_before_the_due_time_clears_a_loan_not_yet_reported() -> None:
    d = BorrowAndVanish()
    # The status came first (nothing taken yet) and the repayment was sent after it.
    state = learnt(d, disbursement(), past_due(), repayment(DUE_END - HOUR))
    assert d.score_one(cash_out(3_000_000, MONDAY + 60), state) == 0.0
    # After the due time it is too late: the status had found the loan unpaid.
    state = learnt(d, disbursement(), past_due(), repayment(DUE_END + HOUR))
    assert d.score_one(cash_out(3_000_000, MONDAY + 60), state) == 1.0
    # And once the loan is reported, nothing clears it.
    state = learnt(d, disbursement(), cash_out(3_000_000, MONDAY + 60), past_due(),
                   repayment(DUE_END - HOUR))  # fmt: skip
    assert state[0][0][-1] == SETTLED


def test_a_repayment_overtaken_by_more_than_the_bound_comes_too_late() -> None:
    events = [disbursement(), cash_out(3_000_000, MONDAY + 60), login(DUE_END + LAG),
              repayment(DUE_END - HOUR)]  # fmt: skip
    assert flagged(events) == [(2, 1.0)]
    assert flagged([*events[:2], events[3], events[2]]) == []


# -- duplicates ---------------------------------------------------------------------------


def test_a_status_sent_again_or_day_after_day_reports_the_loan_once() -> None:
    events = [disbursement(), cash_out(2_760_000, MONDAY + HOUR), past_due(), past_due(),
              past_due(DUE_END + DAY, days=2), past_due(DUE_END + 2 * DAY, days=3)]  # fmt: skip
    assert flagged(events) == [(2, 0.92)]
    late = [
        disbursement(),
        past_due(),
        past_due(DUE_END + 2 * HOUR, days=2),
        cash_out(2_760_000, MONDAY + HOUR),
        past_due(DUE_END + 3 * HOUR, days=3),
    ]
    assert flagged(late) == [(3, 0.92)]


def test_events_sent_again_after_the_report_report_nothing() -> None:
    loan, out, status = disbursement(), cash_out(2_760_000, MONDAY + HOUR), past_due()
    again = [loan, out, status, login(DUE_END + 2 * HOUR)]
    # Long after too: a settled loan is remembered until newer loans need its place.
    events = [loan, out, status, *again, login(DUE_END + LAG + 10), *again]
    assert flagged(events) == [(2, 0.92)]


def test_a_disbursement_sent_again_keeps_what_was_taken() -> None:
    d = BorrowAndVanish()
    # The cash-out has left the late-disbursement memory, not the loan.
    state = learnt(d, disbursement(), cash_out(2_760_000, MONDAY + HOUR),
                   cash_out(100, MONDAY + 2 * DAY), disbursement())  # fmt: skip
    assert state[1] == [[MONDAY + 2 * DAY, 100]]
    assert d.score_one(past_due(), state) == pytest.approx(2_760_100 / 3_000_000)


def test_the_same_loan_disbursed_again_later_is_one_loan() -> None:
    d = BorrowAndVanish()
    state = learnt(d, disbursement(), disbursement(MONDAY + 60, amount=3_500_000))
    assert len(state[0]) == 1 and state[0][0][2] == 3_500_000


# -- reasons, state, configuration ---------------------------------------------------------


def test_reasons_name_the_loan_the_share_taken_and_what_completed_it() -> None:
    d = BorrowAndVanish()
    state = learnt(d, disbursement(), cash_out(2_760_000, MONDAY + HOUR))
    assert d.explain_one(login(DUE_END + LAG), state, 0.92) == [
        "loan loan-7 of 30,000.00 disbursed 2024-03-04 00:00 UTC: 27,600.00 (92%) withdrawn or"
        " transferred before its due time 2024-03-12 00:00 UTC, no repayment by then",
        "this login comes 1 d after the due time",
    ]
    assert d.explain_one(login(MONDAY), d.new_state(), 0.0) == [
        "no loan past its due time and cashed out (0 loans followed)"
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


def test_settled_loans_make_room_first() -> None:
    d = BorrowAndVanish(max_open_loans=2)
    state = learnt(
        d,
        disbursement(MONDAY, loan_id="old"),
        repayment(MONDAY + 60, "old"),
        disbursement(MONDAY + 120, loan_id="a"),
        disbursement(MONDAY + 180, loan_id="b"),
    )
    assert [loan[0] for loan in state[0]] == ["a", "b"]


def test_a_state_written_before_stages_existed_is_read_as_open_loans() -> None:
    d = BorrowAndVanish()
    state = [[["loan-7", MONDAY, 3_000_000, DUE_END, 2_760_000]], []]
    assert d.score_one(past_due(), state) == 0.92


def test_the_alerter_learns_every_event_and_reports_each_loan_once() -> None:
    assert alerter().learn_flagged
    events = [disbursement(), cash_out(2_700_000, MONDAY + HOUR), past_due(),
              past_due(DUE_END + DAY, days=2), login(DUE_END + LAG)]  # fmt: skip
    assert [index for index, _ in flagged(events)] == [2]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"cash_out_types": []}, "cash_out_types must not be empty"),
        ({"grace_seconds": -1}, "grace_seconds must be an int >= 0"),
        ({"default_due_seconds": 0}, "default_due_seconds must be an int >= 1"),
        ({"max_open_loans": 0}, "max_open_loans must be an int >= 1"),
        ({"min_share": 0}, r"min_share must be a number in \(0, 1\]"),
        ({"min_share": 1.5}, r"min_share must be a number in \(0, 1\]"),
        ({"max_topic_lag_seconds": -1}, "max_topic_lag_seconds must be an int >= 0"),
    ],
)
def test_refuses_bad_parameters(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BorrowAndVanish(**params)
