"""Loans as the book knows them: :class:`LoanState`, changed only by :func:`apply_event`.

Loan state
----------
One :class:`LoanState` per loan, changed only by :func:`apply_event` with a
:class:`LendingEvent` (``loan_disbursement``, ``loan_repayment`` or
``loan_status``). What each field comes from:

* **days past due and status** come only from ``loan_status``; a repayment
  never cures a loan by itself (the servicing system says when it does);
* **outstanding** is the ``outstanding`` of the newest status that carried one,
  minus the repayments that occurred after it; before any such status, the
  disbursed principal minus repayments;
* **bucket**: ``current`` (0 days past due), then one bucket per interval of
  :attr:`BucketScheme.edges` (``1-30``, ``31-60``, ``61-90``), ``90+`` (91 days
  or more), and the terminal ``written_off`` and ``repaid``. A loan enters the
  book ("``new``") with its first disbursement, repayment or status.

Duplicates and late events
--------------------------
An event whose id is among the loan's last :data:`RECENT_IDS`, or whose input
offset is not after the loan's last applied offset (a replay after a crash),
changes nothing. Late events follow one rule: **a loan never moves backwards
in event time**.

* A ``loan_status`` older than the newest status already applied is stale and
  ignored, so an old "current" cannot undo a newer "31-60".
* A repayment older than the status that set the outstanding is already in
  that figure and is ignored; a newer one is subtracted whatever order it
  arrives in.
* A late disbursement fills in what only it knows (principal, vintage, age
  band, dealer ...) but does not move the bucket.
* Repaid and written-off loans are closed: later events change nothing.
* A late event never reopens a past period: a change it makes is booked in the
  loan's current period (the period of its newest event).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

import orjson

from detectors.portfolio.buckets import NEW, REPAID, TERMINAL, WRITTEN_OFF
from detectors.portfolio.config import PortfolioConfig
from detectors.portfolio.periods import (
    GRANULARITIES,
    _oldest_kept,
    add_months,
    iso_time,
    period_key,
)

#: What :func:`apply_event` did with an event.
APPLIED: Final = "applied"
DUPLICATE: Final = "duplicate"
STALE: Final = "stale"
AFTER_CLOSE: Final = "after_close"
OTHER_CURRENCY: Final = "other_currency"
OUTCOMES: Final = (APPLIED, DUPLICATE, STALE, AFTER_CLOSE, OTHER_CURRENCY)

RECENT_IDS: Final = 16
#: Repayments remembered individually after the outstanding's base; older
#: ones are folded into the base.
MAX_REPAYMENTS: Final = 48
LOAN_FORMAT: Final = 1

_MS_PER_DAY: Final = 86_400_000


@dataclass(frozen=True, slots=True)
class LendingEvent:
    """What the book needs from one lending event (the caller maps its event model).

    Parameters
    ----------
    event_id, event_type, at_ms, account_id, loan_id
        Identity, type (``loan_disbursement``, ``loan_repayment`` or
        ``loan_status``), event time in epoch milliseconds, borrower, loan.
    amount_minor, currency
        The disbursed or repaid amount, integer minor units.
    status, days_past_due, outstanding_minor
        Of a ``loan_status``.
    due_date, term_months, age_band, industry, region, dealer
        Descriptive fields, from whichever event carries them.
    """

    event_id: str
    event_type: str
    at_ms: int
    account_id: str
    loan_id: str
    amount_minor: int | None = None
    currency: str | None = None
    status: str | None = None
    days_past_due: int | None = None
    outstanding_minor: int | None = None
    due_date: str | None = None
    term_months: int | None = None
    age_band: str | None = None
    industry: str | None = None
    region: str | None = None
    dealer: str | None = None


LENDING_BOOK_TYPES: Final = frozenset({"loan_disbursement", "loan_repayment", "loan_status"})


@dataclass(slots=True)
class LoanState:
    """One loan as the book knows it (see the module docstring for the rules).

    ``periods[granularity][period]`` holds ``[opening code, opening
    outstanding, closing code, closing outstanding]`` for the periods in which
    the loan changed; ``mob[months]`` holds ``[code, outstanding]`` at that
    many months on book. Times are epoch milliseconds, money minor units.
    """

    loan_id: str
    account_id: str
    partition: int = 0
    code: int = NEW
    base_minor: int = 0
    base_at: int | None = None
    repayments: list[list[int]] = field(default_factory=list)
    status_at: int | None = None
    updated_at: int | None = None
    seen_at: int | None = None
    first_at: int | None = None
    closed_at: int | None = None
    disbursed_at: int | None = None
    principal_minor: int = 0
    due_date: str | None = None
    term_months: int | None = None
    currency: str | None = None
    repaid_early: bool = False
    dims: dict[str, str] = field(default_factory=dict)
    periods: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    mob: dict[str, list[int]] = field(default_factory=dict)
    mob_from: int | None = None
    recent_ids: list[str] = field(default_factory=list)
    last_offset: int | None = None

    @property
    def outstanding_minor(self) -> int:
        if self.code == REPAID:
            return 0
        return max(0, self.base_minor - sum(amount for _, amount in self.repayments))

    @property
    def is_open(self) -> bool:
        return self.code >= 0

    def dumps(self) -> bytes:
        """Compact JSON for the changelog."""
        return orjson.dumps({"v": LOAN_FORMAT, **{name: getattr(self, name)
                                                  for name in self.__slots__}})

    @classmethod
    def loads(cls, raw: bytes) -> LoanState:
        data = orjson.loads(raw)
        version = data.pop("v", None)
        if version != LOAN_FORMAT:
            message = f"loan state format {version!r} is not {LOAN_FORMAT}"
            raise ValueError(message)
        return cls(**data)


def _remember(loan: LoanState, event_id: str, offset: int | None) -> bool:
    """False when the event was applied before (same id or an offset already passed)."""
    if event_id in loan.recent_ids:
        return False
    if offset is not None and loan.last_offset is not None and offset <= loan.last_offset:
        return False
    loan.recent_ids.append(event_id)
    if len(loan.recent_ids) > RECENT_IDS:
        del loan.recent_ids[0]
    if offset is not None:
        loan.last_offset = offset
    return True


def _take_attributes(loan: LoanState, event: LendingEvent) -> None:
    if event.region and "region" not in loan.dims:
        loan.dims["region"] = event.region
    if event.industry and "industry" not in loan.dims:
        loan.dims["industry"] = event.industry
    if event.currency and loan.currency is None and event.event_type != "loan_status":
        loan.currency = event.currency
    if event.event_type != "loan_disbursement" or loan.disbursed_at is not None:
        return
    # The first disbursement is the authority on what it carries.
    if loan.updated_at is not None:
        loan.mob_from = loan.updated_at  # months on book before now were not observed
    loan.disbursed_at = event.at_ms
    loan.principal_minor = event.amount_minor or 0
    loan.due_date = event.due_date
    loan.term_months = event.term_months
    if event.currency:
        loan.currency = event.currency
    if event.age_band:
        loan.dims["age_band"] = event.age_band
    if event.region:
        loan.dims["region"] = event.region
    if event.industry:
        loan.dims["industry"] = event.industry
    loan.dims["dealer"] = event.dealer or "direct"
    if loan.base_at is None:
        loan.base_minor = loan.principal_minor


def _observe_months_on_book(loan: LoanState, code: int, outstanding: int, until: int,
                            config: PortfolioConfig) -> None:
    """Record the state (before the event at ``until``) at the points passed by ``until``."""
    if loan.disbursed_at is None or code == NEW:
        return
    for months in config.months_on_book:
        key = str(months)
        if key in loan.mob:
            continue
        point = add_months(loan.disbursed_at, months)
        if point > until:
            break
        if loan.mob_from is None or point > loan.mob_from:
            loan.mob[key] = [code, outstanding]


def _change(loan: LoanState, event: LendingEvent) -> str:
    at = event.at_ms
    if event.event_type == "loan_disbursement":
        if loan.code == NEW:
            loan.code = 0
        return APPLIED
    if event.event_type == "loan_repayment":
        if loan.base_at is not None and at <= loan.base_at:
            return STALE  # already in the outstanding reported at base_at
        loan.repayments.append([at, event.amount_minor or 0])
        if len(loan.repayments) > MAX_REPAYMENTS:
            loan.repayments.sort()
            folded_at, folded = loan.repayments.pop(0)
            loan.base_minor -= folded
            loan.base_at = folded_at
        if loan.code == NEW:
            loan.code = 0
        return APPLIED
    # loan_status
    if loan.status_at is not None and at < loan.status_at:
        return STALE
    loan.status_at = at
    status = event.status
    if status == "repaid":
        loan.code = REPAID
    elif status == "written_off":
        loan.code = WRITTEN_OFF
    elif event.days_past_due is not None:
        loan.code = event.days_past_due
    elif status == "delinquent":
        loan.code = max(1, loan.code)
    else:
        loan.code = 0
    if event.outstanding_minor is not None and (loan.base_at is None or at >= loan.base_at):
        loan.base_minor = event.outstanding_minor
        loan.base_at = at
        loan.repayments = [r for r in loan.repayments if r[0] > at]
    return APPLIED


def _book(loan: LoanState, before: tuple[int, int], after: tuple[int, int],
          config: PortfolioConfig) -> None:
    """Record a change in the loan's current period of each granularity."""
    assert loan.updated_at is not None
    for granularity in GRANULARITIES:
        key = period_key(loan.updated_at, granularity)
        history = loan.periods.setdefault(granularity, {})
        entry = history.get(key)
        if entry is None:
            history[key] = [before[0], before[1], after[0], after[1]]
            oldest = _oldest_kept(key, granularity, config.retention(granularity))
            for old in [k for k in history if k < oldest]:
                del history[old]
        else:
            entry[2], entry[3] = after


def apply_event(loan: LoanState, event: LendingEvent, config: PortfolioConfig,
                offset: int | None = None) -> str:
    """Apply one lending event to its loan; return what happened (:data:`OUTCOMES`).

    Parameters
    ----------
    loan
        The loan's state, changed in place.
    event
        A ``loan_disbursement``, ``loan_repayment`` or ``loan_status`` of this loan.
    config
        Periods kept and months on book observed.
    offset
        The event's input offset, for the replay guard (``None`` offline).

    Examples
    --------
    >>> config = PortfolioConfig()
    >>> loan = LoanState("loan-1", "acct-1")
    >>> day = 86_400_000
    >>> t0 = 1_709_251_200_000  # 2024-03-01T00:00Z
    >>> disbursed = LendingEvent("e1", "loan_disbursement", t0, "acct-1", "loan-1",
    ...                          amount_minor=1_000_000, currency="CNY")
    >>> apply_event(loan, disbursed, config)
    'applied'
    >>> late = LendingEvent("e3", "loan_status", t0 + 40 * day, "acct-1", "loan-1",
    ...                     status="delinquent", days_past_due=10)
    >>> newer = LendingEvent("e2", "loan_status", t0 + 45 * day, "acct-1", "loan-1",
    ...                      status="delinquent", days_past_due=45)
    >>> apply_event(loan, newer, config), apply_event(loan, late, config)
    ('applied', 'stale')
    >>> apply_event(loan, newer, config)
    'duplicate'
    >>> config.scheme.bucket(loan.code), loan.outstanding_minor
    ('31-60', 1000000)
    """
    if event.loan_id != loan.loan_id:
        message = f"event {event.event_id} is for loan {event.loan_id}, not {loan.loan_id}"
        raise ValueError(message)
    if not _remember(loan, event.event_id, offset):
        return DUPLICATE
    loan.seen_at = max(loan.seen_at or event.at_ms, event.at_ms)
    loan.first_at = min(loan.first_at or event.at_ms, event.at_ms)
    _take_attributes(loan, event)
    if loan.code in TERMINAL:
        return AFTER_CLOSE
    before = (loan.code, loan.outstanding_minor)
    at = event.at_ms
    if loan.updated_at is None or at > loan.updated_at:
        _observe_months_on_book(loan, before[0], before[1], at, config)
        loan.updated_at = at
    outcome = _change(loan, event)
    after = (loan.code, loan.outstanding_minor)
    if after != before:
        _book(loan, before, after, config)
        if loan.code in TERMINAL:
            loan.closed_at = loan.updated_at
            if loan.code == REPAID and loan.due_date is not None:
                # Early: in a month before the due date's (not a last instalment paid
                # a few days ahead).
                loan.repaid_early = iso_time(loan.updated_at)[:7] < loan.due_date[:7]
            for months in config.months_on_book:
                loan.mob.setdefault(str(months), [after[0], after[1]])
    if config.currency and loan.currency and loan.currency != config.currency:
        return OTHER_CURRENCY
    return outcome


def evictable(loan: LoanState, clock_ms: int, config: PortfolioConfig) -> bool:
    """A closed loan past its retention (its contributions leave the book with it)."""
    return (loan.closed_at is not None
            and loan.closed_at < clock_ms - config.closed_retention_days * _MS_PER_DAY)
