"""Borrow and vanish: a loan cashed out and never repaid by its first due date."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, ClassVar, Final

from detectors.base import Features, KeyedDetector
from detectors.money import format_minor
from detectors.params import fraction, non_negative_int, optional_int, positive_int, string_set
from detectors.timeline import format_duration, format_time

#: Event types of the lending topic. They keep their order among themselves (one
#: partition per account) but not with the account's other events, which come
#: from the payments topic.
LOAN_EVENT_TYPES: Final = frozenset(
    {"loan_application", "loan_disbursement", "loan_repayment", "loan_status"}
)
#: Cash-outs kept so that a disbursement arriving after them still counts them.
MAX_CASH_OUTS: Final = 8
#: Characters of a loan id kept in the state and shown in reasons.
LOAN_ID_CHARS: Final = 64

# One loan: [loan_id, disbursed_ts, principal_minor, due_ts, taken_minor, stage], plus,
# while it is PAST_DUE, the id of the event that found it past due (the alert's evidence
# when a late cash-out completes it).
_ID, _DISBURSED, _PRINCIPAL, _DUE, _TAKEN, _STAGE, _PAST_DUE_EVENT = range(7)
# State: [loans, cash_outs]; one cash-out: [ts, amount_minor].
_LOANS, _CASH_OUTS = range(2)

#: Stage of a loan not yet known to be past due.
OPEN: Final = 0
#: Stage of a loan past due and unpaid, with less than ``min_share`` taken out so
#: far: cash-outs from before its due time may still arrive.
PAST_DUE: Final = 1
#: Stage of a loan decided for good (reported, repaid, or past due and not
#: cashed out), kept so that an event sent again changes nothing.
SETTLED: Final = 2

# What completed a loan's evidence, for the reasons.
_BY_STATUS: Final = "status"
_BY_TIME: Final = "time"
_BY_CASH_OUT: Final = "cash_out"


class BorrowAndVanish(KeyedDetector[list[list[list[Any]]]]):
    """A loan mostly withdrawn before its first due date, and not repaid by then.

    A ``loan_disbursement`` (amount, ``loan_id``, ``due_date``) opens a loan,
    due at the end of its ``due_date`` (UTC) plus ``grace_seconds``, or
    ``default_due_seconds`` after the disbursement when the event has no
    usable ``due_date``. What the borrower *took out* is the sum of the
    cash-outs (events of ``cash_out_types``: withdrawals to a bank, transfers
    to other accounts) whose event time lies between the disbursement
    (included) and the due time (excluded), whenever they arrive. A
    ``loan_repayment`` of the loan, or a ``loan_status`` saying ``repaid``,
    clears it: the borrower came back.

    The detector has no timers and the worker reads the lending and payments
    topics independently, so an account's events arrive in an order that
    differs from event time. The loan is found *past due* by the first of:

    * a ``loan_status`` of the loan with ``days_past_due`` >= 1;
    * a lending event (:data:`LOAN_EVENT_TYPES`) at or after the due time:
      the lending topic keeps its order, so every repayment sent before it
      has arrived;
    * any other event at least ``max_topic_lag_seconds`` after the due time,
      by which time, within the bound below, a repayment from before the due
      time has arrived.

    The loan is reported once, with the share taken out ``min(taken,
    principal) / principal`` as the score, by whichever event completes the
    evidence: the event that finds it past due when ``min_share`` or more is
    already taken out, or else the late cash-out (event time before the due
    time, arriving after that) that brings the share to ``min_share``. Every
    other event scores 0.0. A past-due loan with less taken out is settled
    without a report at the account's first event ``max_topic_lag_seconds``
    after the due time. A repayment clears an open loan whenever it arrives,
    and a past-due one if its event time is before the due time (a lending
    producer that sent it late); once the report is out, nothing clears it.

    **The bound.** With ``L = max_topic_lag_seconds``, the verdict is the
    same in every arrival order of the account's events provided that

    * every cash-out from before the due time arrives before any event of
      the account ``L`` or more after the due time (up to that, the lending
      topic may run any distance ahead of the payments topic);
    * a repayment from before the due time arrives before any payments-topic
      event ``L`` or more after the due time (lending events keep their
      order, so the past-due status does not overtake it);
    * a disbursement that arrives after its cash-outs finds them among the
      last :data:`MAX_CASH_OUTS` cash-outs within ``L`` of the newest one;
    * the threshold is at most ``min_share`` (the shipped 0.8 both): a
      higher one would again depend on which cash-outs were in when the
      report was made.

    The score and the reasons count what has arrived when the report is
    made, and the event that makes it (hence the alert id the worker derives
    from it) is the past-due event or a late cash-out, depending on the
    order. Limitations: a loan is not found past due before the account has
    such an event; without a past-due ``loan_status`` the report comes ``L``
    after the due time; a cash-out sent again after the worker's replay guard
    has forgotten it counts twice.

    The state is a ledger of facts that must include every event, flagged or
    not (:attr:`keeps_ledger`): the registry builds this detector with
    ``learn_flagged`` on.

    State: ``[loans, cash_outs]``: ``loans`` holds at most
    ``max_open_loans`` loans ``[loan_id, disbursed_ts, principal_minor,
    due_ts, taken_minor, stage]`` (the most recently disbursed, settled ones
    dropped first; loan ids cut to :data:`LOAN_ID_CHARS` characters; a loan
    of five fields, as written before stages existed, is :data:`OPEN`);
    ``cash_outs`` the last :data:`MAX_CASH_OUTS` cash-outs ``[ts,
    amount_minor]`` within ``L`` of the newest of them, for disbursements
    that arrive late. Settled loans stay until newer loans need their place.
    A few hundred bytes at most; ``[[], []]`` for an account that never
    borrows or cashes out.

    Parameters
    ----------
    cash_out_types
        Event types that take money out of reach.
    grace_seconds
        Time allowed after the end of the due date.
    default_due_seconds
        First due date after the disbursement when the event gives none.
    max_open_loans
        Loans remembered per account (the most recently disbursed).
    min_share
        Share of the principal taken out at which a past-due loan is reported.
    max_topic_lag_seconds
        The bound above, in seconds of event time (0: any event at or after
        the due time finds the loan past due, as if there were one topic).

    Examples
    --------
    The lending topic runs ahead: the platform's past-due status arrives
    before the withdrawal made days earlier.

    >>> detector = BorrowAndVanish()
    >>> state = detector.new_state()
    >>> monday = 1_709_510_400
    >>> loan = {"event_type": "loan_disbursement", "amount_minor": 3_000_000,
    ...         "is_inflow": True, "loan_id": "loan-7", "due_date": "2024-03-11", "ts": monday}
    >>> state = detector.learn_one(loan, state)
    >>> past_due = {"event_type": "loan_status", "amount_minor": 0, "loan_id": "loan-7",
    ...             "status": "delinquent", "days_past_due": 1, "ts": monday + 8 * 86_400 + 60}
    >>> detector.score_one(past_due, state)
    0.0
    >>> state = detector.learn_one(past_due, state)
    >>> cash_out = {"event_type": "withdrawal", "amount_minor": 2_760_000, "is_outflow": True,
    ...             "ts": monday + 3_600}
    >>> detector.score_one(cash_out, state)
    0.92
    >>> print(*detector.explain_one(cash_out, state, 0.92), sep="\\n")
    loan loan-7 of 30,000.00 disbursed 2024-03-04 00:00 UTC: 27,600.00 (92%) withdrawn or transferred before its due time 2024-03-12 00:00 UTC, no repayment by then
    this withdrawal of 27,600.00 at 2024-03-04 01:00 UTC arrived after the loan was found past due
    >>> state = detector.learn_one(cash_out, state)
    >>> detector.score_one(past_due, state)  # reported once: the status sent again is nothing new
    0.0
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
        min_share: float = 0.8,
        max_topic_lag_seconds: int = 86_400,
    ) -> None:
        self._cash_out = string_set("cash_out_types", cash_out_types, allow_empty=False)
        non_negative_int("grace_seconds", grace_seconds)
        positive_int("default_due_seconds", default_due_seconds)
        positive_int("max_open_loans", max_open_loans)
        fraction("min_share", min_share)
        non_negative_int("max_topic_lag_seconds", max_topic_lag_seconds)
        self.cash_out_types = cash_out_types
        self.grace_seconds = grace_seconds
        self.default_due_seconds = default_due_seconds
        self.max_open_loans = max_open_loans
        self.min_share = min_share
        self.max_topic_lag_seconds = max_topic_lag_seconds

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
    def _of_loan(x: Features, loan: list[Any]) -> bool:
        loan_id = x.get("loan_id")
        return loan_id is not None and str(loan_id)[:LOAN_ID_CHARS] == loan[_ID]

    def _repays(self, x: Features, loan: list[Any]) -> bool:
        """Whether ``x`` shows the borrower repaying ``loan``."""
        event_type = x.get("event_type")
        return self._of_loan(x, loan) and (
            event_type == "loan_repayment"
            or (event_type == "loan_status" and x.get("status") == "repaid")
        )

    def _past_due_by(self, x: Features, loan: list[Any], ts: int) -> str | None:
        """What in ``x`` shows ``loan`` past due with its repayments in, or ``None``."""
        if x.get("event_type") == "loan_status" and self._of_loan(x, loan):
            days = optional_int(x.get("days_past_due"))
            if days is not None and days >= 1:
                return _BY_STATUS
        if x.get("event_type") in LOAN_EVENT_TYPES:
            return _BY_TIME if ts >= loan[_DUE] else None
        return _BY_TIME if ts >= loan[_DUE] + self.max_topic_lag_seconds else None

    def _cash_out_amount(self, x: Features) -> int:
        amount = optional_int(x.get("amount_minor"))
        if x.get("event_type") not in self._cash_out or amount is None or amount <= 0:
            return 0
        return amount

    @staticmethod
    def _share(loan: list[Any]) -> float:
        principal: int = loan[_PRINCIPAL]
        return min(loan[_TAKEN], principal) / principal

    def _advance(self, x: Features, loan: list[Any], ts: int) -> tuple[list[Any], str | None]:
        """``loan`` after ``x`` (a new list) and, when ``x`` reports it, what completed it."""
        stage = loan[_STAGE] if len(loan) > _STAGE else OPEN
        if stage == SETTLED:
            return loan, None
        found_by = loan[_PAST_DUE_EVENT] if len(loan) > _PAST_DUE_EVENT else None
        loan = [*loan[:_STAGE], stage]
        due = loan[_DUE]
        if self._repays(x, loan) and (stage == OPEN or ts < due):
            loan[_STAGE] = SETTLED
            return loan, None
        cash_out = self._cash_out_amount(x) if loan[_DISBURSED] <= ts < due else 0
        loan[_TAKEN] += cash_out
        by = self._past_due_by(x, loan, ts) if stage == OPEN else None
        if stage == PAST_DUE and cash_out:
            by = _BY_CASH_OUT
        if by is not None and self._share(loan) >= self.min_share:
            loan[_STAGE] = SETTLED
            return loan, by
        if stage == PAST_DUE or by is not None:
            # Past due, not (yet) cashed out: cash-outs from before the due time may
            # still come, until the bound says every one of them has arrived.
            loan[_STAGE] = SETTLED if ts >= due + self.max_topic_lag_seconds else PAST_DUE
            if loan[_STAGE] == PAST_DUE:
                loan.append(found_by if found_by is not None else str(x.get("event_id") or ""))
        return loan, None

    def _reported(self, x: Features, state: list[list[list[Any]]]) -> list[tuple[list[Any], str]]:
        """Loans ``x`` reports, as they are after ``x``, with what completed each."""
        ts = optional_int(x.get("ts"))
        if ts is None:
            return []
        reported = []
        for loan in state[_LOANS]:
            after, by = self._advance(x, loan, ts)
            if by is not None:
                reported.append((after, by))
        return reported

    def anchor_one(self, x: Features,
                   state: list[list[list[Any]]]) -> tuple[str | None, tuple[str, ...]]:
        """The loan(s) a finding is about, and the event that found a loan past due.

        The alert id is derived from the loan, not from the event that completed
        the evidence, so it is the same in every interleaving of the two topics;
        when a late cash-out completes it, the past-due event is its evidence.
        """
        ts = optional_int(x.get("ts"))
        if ts is None:
            return None, ()
        loans: list[str] = []
        evidence: list[str] = []
        for loan in state[_LOANS]:
            _, by = self._advance(x, loan, ts)
            if by is None:
                continue
            loans.append(loan[_ID])
            if by == _BY_CASH_OUT and len(loan) > _PAST_DUE_EVENT and loan[_PAST_DUE_EVENT]:
                evidence.append(str(loan[_PAST_DUE_EVENT]))
        if not loans:
            return None, ()
        return "loan:" + "+".join(sorted(loans)), tuple(evidence)

    def score_one(self, x: Features, state: list[list[list[Any]]]) -> float:
        return max((self._share(loan) for loan, _ in self._reported(x, state)), default=0.0)

    def learn_one(self, x: Features, state: list[list[list[Any]]]) -> list[list[list[Any]]]:
        ts = optional_int(x.get("ts"))
        if ts is None:
            return state
        loans, cash_outs = state
        if loans:
            loans[:] = [self._advance(x, loan, ts)[0] for loan in loans]
        amount = optional_int(x.get("amount_minor"))
        if x.get("event_type") == "loan_disbursement" and amount is not None and amount > 0:
            self._disburse(x, loans, cash_outs, ts, amount)
        cash_out = self._cash_out_amount(x)
        if cash_out:
            cash_outs.append([ts, cash_out])
            cash_outs.sort(key=lambda kept: kept[0])
            oldest = cash_outs[-1][0] - self.max_topic_lag_seconds
            cash_outs[:] = [kept for kept in cash_outs if kept[0] >= oldest][-MAX_CASH_OUTS:]
        if len(loans) > self.max_open_loans:
            kept = sorted(loans, key=lambda loan: (loan[_STAGE] != SETTLED, loan[_DISBURSED]))
            loans[:] = sorted(kept[-self.max_open_loans :], key=lambda loan: loan[_DISBURSED])
        return state

    def _disburse(self, x: Features, loans: list[list[Any]], cash_outs: list[list[Any]],
                  ts: int, amount: int) -> None:  # fmt: skip
        loan_id = str(x.get("loan_id") or "")[:LOAN_ID_CHARS]
        known = next((loan for loan in loans if loan[_ID] == loan_id), None)
        if known is not None and (known[_STAGE] == SETTLED or known[_DISBURSED] == ts):
            return  # the same disbursement sent again, or a loan already decided
        due = self._due(x, ts)
        taken = sum(kept[1] for kept in cash_outs if ts <= kept[0] < due)
        loans[:] = [loan for loan in loans if loan[_ID] != loan_id]
        loans.append([loan_id, ts, amount, due, taken, OPEN])
        loans.sort(key=lambda loan: loan[_DISBURSED])

    def explain_one(self, x: Features, state: list[list[list[Any]]], score: float) -> list[str]:
        reported = self._reported(x, state)
        if not reported:
            followed = sum(1 for loan in state[_LOANS] if loan[_STAGE:] != [SETTLED])
            noun = "loan" if followed == 1 else "loans"
            return [f"no loan past its due time and cashed out ({followed} {noun} followed)"]
        ts = optional_int(x.get("ts")) or 0
        event_type = x.get("event_type") or "event"
        reasons = []
        for loan, _ in sorted(reported, key=lambda item: -self._share(item[0])):
            reasons.append(
                f"loan {loan[_ID] or '(no id)'} of {format_minor(loan[_PRINCIPAL])} disbursed"
                f" {format_time(loan[_DISBURSED])}: {format_minor(loan[_TAKEN])}"
                f" ({self._share(loan):.0%}) withdrawn or transferred before its due time"
                f" {format_time(loan[_DUE])}, no repayment by then"
            )
        kinds = {by for _, by in reported}
        if _BY_STATUS in kinds:
            days = x.get("days_past_due")
            unit = "day" if days == 1 else "days"
            reasons.append(f"this {event_type} reports the loan {days} {unit} past due")
        if _BY_TIME in kinds:
            latest_due = max(loan[_DUE] for loan, by in reported if by == _BY_TIME)
            reasons.append(
                f"this {event_type} comes {format_duration(ts - latest_due)} after the due time"
            )
        if _BY_CASH_OUT in kinds:
            amount = format_minor(self._cash_out_amount(x))
            reasons.append(
                f"this {event_type} of {amount} at {format_time(ts)} arrived after the loan"
                " was found past due"
            )
        return reasons
