"""Borrow and vanish: a loan cashed out and never repaid by its first due date."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, ClassVar, Final

from detectors.base import Features, KeyedDetector
from detectors.money import format_minor
from detectors.params import non_negative_int, optional_int, positive_int, string_set
from detectors.timeline import format_duration, format_time

#: Cash-outs kept so that a disbursement arriving after them (the lending topic
#: lagging the payments topic) still counts the money that left after it.
MAX_CASH_OUTS: Final = 8
#: How late, in seconds of event time, a disbursement may arrive and still see them.
LATE_DISBURSEMENT_SECONDS: Final = 86_400
#: Characters of a loan id kept in the state and shown in reasons.
LOAN_ID_CHARS: Final = 64

# One open loan: [loan_id, disbursed_ts, principal_minor, due_ts, withdrawn_minor].
_ID, _DISBURSED, _PRINCIPAL, _DUE, _WITHDRAWN = range(5)
# State: [loans, cash_outs]; one cash-out: [ts, amount_minor].
_LOANS, _CASH_OUTS = range(2)


class BorrowAndVanish(KeyedDetector[list[list[list[Any]]]]):
    """A loan mostly withdrawn after its disbursement, with no repayment by its first due date.

    A ``loan_disbursement`` (amount, ``loan_id``, ``due_date``) opens a loan.
    Every later cash-out of the account (events of ``cash_out_types``:
    withdrawals to a bank, transfers to other accounts) adds to what was
    taken out since. A ``loan_repayment`` of the loan, or a ``loan_status``
    saying ``repaid``, closes it: the borrower came back.

    The loan is due at the end of its ``due_date`` (UTC) plus
    ``grace_seconds``, or ``default_due_seconds`` after the disbursement when
    the event has no usable ``due_date``. A detector has no timers, so the
    decision is taken on the account's first later event whose ``ts`` is at or
    past that time (a login, a payment, the platform's own ``loan_status``;
    a ``loan_status`` of the loan with ``days_past_due`` >= 1 counts as past
    due whatever the date): that event scores the share of the principal
    taken out, ``min(taken, principal) / principal`` from 0.0 to 1.0, and the
    loan is judged and forgotten whether or not it alerts. The configured
    threshold is the share that alerts (0.8). Limitations: an account with no
    event after the due date is not judged until it has one; a repayment
    that the pipeline delivers after a later event past the due date comes too
    late to prevent the alert.

    The state is a ledger of facts that must include every event, flagged or
    not (:attr:`keeps_ledger`): the registry builds this detector with
    ``learn_flagged`` on.

    State: ``[loans, cash_outs]``: ``loans`` holds at most
    ``max_open_loans`` open loans ``[loan_id, disbursed_ts, principal_minor,
    due_ts, taken_minor]`` (the most recently disbursed; loan ids cut to
    :data:`LOAN_ID_CHARS` characters); ``cash_outs`` the last
    :data:`MAX_CASH_OUTS` cash-outs ``[ts, amount_minor]`` within
    :data:`LATE_DISBURSEMENT_SECONDS` of the newest, for disbursements that
    arrive late. A few hundred bytes at most; ``[[], []]`` for an account that
    never borrows or cashes out.

    Parameters
    ----------
    cash_out_types
        Event types that take money out of reach.
    grace_seconds
        Time allowed after the end of the due date.
    default_due_seconds
        First due date after the disbursement when the event gives none.
    max_open_loans
        Open loans remembered per account (the most recently disbursed).

    Examples
    --------
    >>> detector = BorrowAndVanish()
    >>> state = detector.new_state()
    >>> monday = 1_709_510_400
    >>> loan = {"event_type": "loan_disbursement", "amount_minor": 3_000_000,
    ...         "is_inflow": True, "loan_id": "loan-7", "due_date": "2024-03-11", "ts": monday}
    >>> state = detector.learn_one(loan, state)
    >>> cash_out = {"event_type": "withdrawal", "amount_minor": 2_760_000, "is_outflow": True,
    ...             "ts": monday + 3_600}
    >>> state = detector.learn_one(cash_out, state)
    >>> login = {"event_type": "login", "amount_minor": 0, "ts": monday + 9 * 86_400}
    >>> detector.score_one(login, state)
    0.92
    >>> print(*detector.explain_one(login, state, 0.92), sep="\\n")
    loan loan-7 of 30,000.00 disbursed 2024-03-04 00:00 UTC: 27,600.00 (92%) withdrawn or transferred since, no repayment by its due time 2024-03-12 00:00 UTC
    this login comes 1 d after the due time
    >>> state = detector.learn_one(login, state)
    >>> state[0]
    []
    """  # noqa: E501 - a doctest's expected output is one line

    name: ClassVar[str] = "borrow_and_vanish"
    #: Every event, flagged or not, must update the loans and cash-outs.
    keeps_ledger: ClassVar[bool] = True

    def __init__(
        self,
        cash_out_types: Sequence[str] = ("withdrawal", "transfer"),
        grace_seconds: int = 0,
        default_due_seconds: int = 2_592_000,
        max_open_loans: int = 4,
    ) -> None:
        self._cash_out = string_set("cash_out_types", cash_out_types, allow_empty=False)
        non_negative_int("grace_seconds", grace_seconds)
        positive_int("default_due_seconds", default_due_seconds)
        positive_int("max_open_loans", max_open_loans)
        self.cash_out_types = cash_out_types
        self.grace_seconds = grace_seconds
        self.default_due_seconds = default_due_seconds
        self.max_open_loans = max_open_loans

    def new_state(self) -> list[list[list[Any]]]:
        return [[], []]

    def _due(self, x: Features, disbursed: int) -> int:
        value = x.get("due_date")
        if isinstance(value, str):
            try:
                day = date.fromisoformat(value)
                end = datetime.combine(day + timedelta(days=1), time(), UTC)
            except (ValueError, OverflowError):  # 9999-12-31 has no next day
                day = None
            if day is not None:
                due = int(end.timestamp()) + self.grace_seconds
                if due > disbursed:
                    return due
        return disbursed + self.default_due_seconds

    @staticmethod
    def _closes(x: Features, loan: list[Any]) -> bool:
        """Whether ``x`` shows the borrower repaying ``loan``."""
        if x.get("loan_id") is None or str(x["loan_id"])[:LOAN_ID_CHARS] != loan[_ID]:
            return False
        event_type = x.get("event_type")
        return event_type == "loan_repayment" or (
            event_type == "loan_status" and x.get("status") == "repaid"
        )

    @staticmethod
    def _past_due(x: Features, loan: list[Any], ts: int) -> bool:
        if ts >= loan[_DUE]:
            return True
        days = optional_int(x.get("days_past_due"))
        return (
            x.get("event_type") == "loan_status"
            and days is not None
            and days >= 1
            and str(x.get("loan_id"))[:LOAN_ID_CHARS] == loan[_ID]
        )

    def _cash_out_amount(self, x: Features) -> int:
        amount = optional_int(x.get("amount_minor"))
        if x.get("event_type") not in self._cash_out or amount is None or amount <= 0:
            return 0
        return amount

    def _judged(self, x: Features, state: list[list[list[Any]]]) -> list[tuple[list[Any], int]]:
        """Loans this event finds past due and unpaid, with what was taken out of each."""
        ts = optional_int(x.get("ts"))
        if ts is None:
            return []
        cash_out = self._cash_out_amount(x)
        judged = []
        for loan in state[_LOANS]:
            if self._closes(x, loan) or not self._past_due(x, loan, ts):
                continue
            taken = loan[_WITHDRAWN] + (cash_out if ts >= loan[_DISBURSED] else 0)
            judged.append((loan, taken))
        return judged

    def score_one(self, x: Features, state: list[list[list[Any]]]) -> float:
        shares = [min(taken, loan[_PRINCIPAL]) / loan[_PRINCIPAL] for loan, taken in
                  self._judged(x, state)]  # fmt: skip
        return max(shares, default=0.0)

    def learn_one(self, x: Features, state: list[list[list[Any]]]) -> list[list[list[Any]]]:
        ts = optional_int(x.get("ts"))
        if ts is None:
            return state
        loans, cash_outs = state
        amount = optional_int(x.get("amount_minor"))
        event_type = x.get("event_type")
        if event_type == "loan_disbursement" and amount is not None and amount > 0:
            loan_id = str(x.get("loan_id") or "")[:LOAN_ID_CHARS]
            taken = sum(kept[1] for kept in cash_outs if kept[0] >= ts)
            loans[:] = [loan for loan in loans if loan[_ID] != loan_id]
            loans.append([loan_id, ts, amount, self._due(x, ts), taken])
            loans.sort(key=lambda loan: loan[_DISBURSED])
            del loans[: -self.max_open_loans]
        cash_out = self._cash_out_amount(x)
        if cash_out:
            for loan in loans:
                if ts >= loan[_DISBURSED]:
                    loan[_WITHDRAWN] += cash_out
            cash_outs.append([ts, cash_out])
            cash_outs.sort(key=lambda kept: kept[0])
            oldest = cash_outs[-1][0] - LATE_DISBURSEMENT_SECONDS
            cash_outs[:] = [kept for kept in cash_outs if kept[0] >= oldest][-MAX_CASH_OUTS:]
        # Judged loans are forgotten, alert or not: each loan is decided once.
        loans[:] = [
            loan for loan in loans if not (self._closes(x, loan) or self._past_due(x, loan, ts))
        ]
        return state

    def explain_one(self, x: Features, state: list[list[list[Any]]], score: float) -> list[str]:
        judged = self._judged(x, state)
        if not judged:
            open_loans = len(state[_LOANS])
            noun = "loan" if open_loans == 1 else "loans"
            return [f"no open loan past its due time ({open_loans} open {noun} followed)"]
        ts = optional_int(x.get("ts")) or 0
        event_type = x.get("event_type") or "event"
        reasons = []
        latest_due = 0
        for loan, taken in sorted(judged, key=lambda judged: -judged[1] / judged[0][_PRINCIPAL]):
            principal = loan[_PRINCIPAL]
            share = min(taken, principal) / principal
            reasons.append(
                f"loan {loan[_ID] or '(no id)'} of {format_minor(principal)} disbursed"
                f" {format_time(loan[_DISBURSED])}: {format_minor(taken)} ({share:.0%}) withdrawn"
                f" or transferred since, no repayment by its due time {format_time(loan[_DUE])}"
            )
            latest_due = max(latest_due, loan[_DUE])
        if ts >= latest_due:
            reasons.append(
                f"this {event_type} comes {format_duration(ts - latest_due)} after the due time"
            )
        else:
            days = x.get("days_past_due")
            unit = "day" if days == 1 else "days"
            reasons.append(f"this {event_type} reports the loan {days} {unit} past due")
        return reasons
