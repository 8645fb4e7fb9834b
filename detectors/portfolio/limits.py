"""The risk committee's limits checked against the merged book: :func:`check_limits`.

Each crossing is a :class:`PortfolioFinding` carrying the numbers for its
alert and a ``trigger`` that names it, so the same crossing found again gives
the same alert id.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from detectors.money import format_minor
from detectors.portfolio.book import Book
from detectors.portfolio.config import OVERFLOW, UNKNOWN, Limit
from detectors.portfolio.periods import period_bounds, period_key


@dataclass(frozen=True, slots=True)
class PortfolioFinding:
    """A limit crossed, with the numbers for the alert.

    ``trigger`` identifies the crossing (limit, period, subject): the same
    crossing found again, on a replay or by another worker, has the same
    ``trigger`` and so the same alert id.
    """

    limit: str
    detector: str
    severity: str
    score: float
    period: str
    subject: str
    reasons: tuple[str, ...]
    account_id: str
    event_type: str
    amount_minor: int | None
    at_ms: int

    @property
    def trigger(self) -> str:
        return f"portfolio:{self.limit}:{self.period}:{self.subject}"


def _pct(value: float) -> str:
    return f"{value:.1%}"


def _roll_findings(book: Book, limit: Limit, currency: str) -> Iterator[PortfolioFinding]:
    assert limit.from_bucket is not None
    granularity = limit.granularity
    periods = book.periods(granularity)
    if limit.periods == "current":
        candidates = periods[-1:]
    else:
        candidates = [p for p in periods if book.is_complete(granularity, p)]
    clock = book.clock_ms or 0
    for period in candidates:
        matrix = book.migration(granularity, period)
        row = limit.from_bucket
        opening = matrix.opening_loans[row]
        if opening < max(1, limit.min_loans):
            continue
        rate = matrix.rate(row, limit.to_buckets, limit.basis)
        if rate is None or rate <= limit.max:
            continue
        moved = sum(matrix.loans[row][c] for c in limit.to_buckets)
        moved_principal = sum(matrix.principal[row][c] for c in limit.to_buckets)
        to = "/".join(limit.to_buckets)
        state = "" if matrix.complete else " so far"
        reasons = (
            f"{granularity} roll rate {row} -> {to} in {period}{state} is "
            f"{_pct(rate)} by {limit.basis}, above the limit of {_pct(limit.max)}",
            f"{moved} of {opening} loans in {row} at the start of {period} moved to {to} "
            f"({_pct(moved / opening)}); {format_minor(moved_principal)} of "
            f"{format_minor(matrix.opening_principal[row])} {currency} opening outstanding "
            f"({_pct(matrix.rate(row, limit.to_buckets, 'principal') or 0.0)})",
        )
        end = period_bounds(period, granularity)[1] - 1
        yield PortfolioFinding(limit.name, limit.detector, limit.severity, round(rate, 6),
                               period, f"{row}->{to}", reasons, "portfolio", "loan_status",
                               moved_principal, min(end, clock))


def _concentration_findings(book: Book, limit: Limit, currency: str,
                            day: str) -> Iterator[PortfolioFinding]:
    assert limit.dimension is not None
    if book.open_loans < max(1, limit.min_loans):
        return
    table = book.concentration(limit.dimension)
    clock = book.clock_ms or 0
    if limit.kind == "hhi":
        if table.hhi is None or table.hhi <= limit.max:
            return
        largest = ", ".join(f"{v.value} {_pct(v.share)}" for v in table.values[:3])
        reasons = (
            f"HHI of outstanding principal by {limit.dimension} is {table.hhi:.4f}, above "
            f"the limit of {limit.max:.4f}",
            f"largest: {largest} of {format_minor(table.total_minor)} {currency} across "
            f"{book.open_loans} open loans",
        )
        yield PortfolioFinding(limit.name, limit.detector, limit.severity,
                               round(table.hhi, 6), day, limit.dimension, reasons, "portfolio",
                               "loan_disbursement", table.total_minor, clock)
        return
    excluded = {UNKNOWN, OVERFLOW, *limit.exclude}
    for value in table.values:
        if value.value in excluded or value.share <= limit.max:
            continue
        reasons = (
            f"{limit.dimension} {value.value} holds {_pct(value.share)} of outstanding "
            f"principal, above the limit of {_pct(limit.max)}",
            f"{format_minor(value.outstanding_minor)} of {format_minor(table.total_minor)} "
            f"{currency} in {value.loans} of {book.open_loans} open loans"
            + (f"; HHI of {limit.dimension} {table.hhi:.4f}" if table.hhi is not None else ""),
        )
        yield PortfolioFinding(limit.name, limit.detector, limit.severity,
                               round(value.share, 6), day, value.value, reasons, "portfolio",
                               "loan_disbursement", value.outstanding_minor, clock)


def _borrower_findings(book: Book, limit: Limit, currency: str,
                       day: str) -> Iterator[PortfolioFinding]:
    if book.open_loans < max(1, limit.min_loans):
        return
    clock = book.clock_ms or 0
    for account, held, share in book.largest_borrowers(book.config.top_borrowers):
        if share <= limit.max:
            break
        reasons = (
            f"borrower {account} holds {_pct(share)} of outstanding principal, above the "
            f"limit of {_pct(limit.max)}",
            f"{format_minor(held)} of {format_minor(book.open_outstanding_minor)} {currency} "
            f"across {book.open_loans} open loans",
        )
        yield PortfolioFinding(limit.name, limit.detector, limit.severity, round(share, 6),
                               day, account, reasons, account, "loan_disbursement", held, clock)


def _vintage_findings(book: Book, limit: Limit, currency: str) -> Iterator[PortfolioFinding]:
    assert limit.months_on_book is not None
    months = limit.months_on_book
    clock = book.clock_ms or 0
    for row in book.vintages():
        cell = row.cells.get(months)
        if cell is None or not cell[4]:
            continue
        observed, bad, observed_out, bad_out, _ = cell
        if observed < max(1, limit.min_loans):
            continue
        share = row.delinquent_share(months, limit.basis)
        if share is None or share <= limit.max:
            continue
        days = book.config.vintage_delinquent_days
        reasons = (
            f"vintage {row.vintage} at {months} months on book: {_pct(share)} by "
            f"{limit.basis} more than {days} days past due or written off, above the "
            f"limit of {_pct(limit.max)}",
            f"{bad} of {observed} loans observed ({row.loans} disbursed); "
            f"{format_minor(bad_out)} of {format_minor(observed_out)} {currency} outstanding",
        )
        yield PortfolioFinding(limit.name, limit.detector, limit.severity, round(share, 6),
                               row.vintage, f"mob{months}", reasons, "portfolio",
                               "loan_status", bad_out, clock)


def check_limits(book: Book, limits: Iterable[Limit] | None = None, *,
                 live: bool = True) -> list[PortfolioFinding]:
    """Every crossing of ``limits`` (default: the configuration's) in the book now.

    ``live=False`` (some partition is behind its input) leaves out the limits
    on the book as it stands.

    Roll rates are checked for each complete period kept (or the current
    one); concentration and the largest borrower against the book now, with
    the current period (event time) of the limit's granularity as the period,
    so an excess that lasts is reported once per period, and only while the
    book is :attr:`Book.consistent`; vintages for each vintage that has fully
    reached the months on book.
    """
    clock = book.clock_ms
    if clock is None:
        return []
    consistent = live and book.consistent
    currency = book.config.currency or ""
    findings: list[PortfolioFinding] = []
    for limit in book.config.limits if limits is None else limits:
        period = period_key(clock, limit.granularity)
        if limit.kind == "roll_rate":
            findings.extend(_roll_findings(book, limit, currency))
        elif limit.kind in ("share", "hhi"):
            if consistent:
                findings.extend(_concentration_findings(book, limit, currency, period))
        elif limit.kind == "largest_borrower":
            if consistent:
                findings.extend(_borrower_findings(book, limit, currency, period))
        else:
            findings.extend(_vintage_findings(book, limit, currency))
    return findings
