"""The book's sums over a set of loans: :class:`BookPartial`, one per partition, mergeable.

Partitions and merging
----------------------
Every figure of the book (:mod:`detectors.portfolio.book`), the
concentration tables and the vintage cells are sums over loans, so a
:class:`BookPartial` (the sums over the loans of one partition) is
mergeable: :meth:`BookPartial.merge` of the partials of disjoint sets of
loans equals the partial of their union. Shares, HHI and rates are
computed only from the merged sums (:class:`Book`). The largest-borrower
figures keep each partition's top borrowers only; that is exact because
lending events are keyed by the borrower's account, so all of a borrower's
loans live in one partition.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

from detectors.portfolio.buckets import NEW, BucketScheme
from detectors.portfolio.config import DIMENSIONS, OVERFLOW, UNKNOWN, PortfolioConfig
from detectors.portfolio.loans import LoanState
from detectors.portfolio.periods import _oldest_kept, period_key

PARTIAL_FORMAT: Final = 1


def _add(table: dict[str, list[int]], key: str, values: Sequence[int], sign: int) -> None:
    cell = table.get(key)
    if cell is None:
        cell = table[key] = [0] * len(values)
    for i, value in enumerate(values):
        cell[i] += sign * value
    if not any(cell):
        del table[key]


def _transition_key(row: str, column: str) -> str:
    return f"{row}>{column}"


@dataclass(slots=True)
class BookPartial:
    """Sums over a set of loans (one partition's, or merged); see :meth:`merge`.

    Parameters
    ----------
    buckets
        Open bucket names these sums were cut with (partials with other
        buckets cannot be merged).
    clocks
        Newest event time seen per partition that holds loans (its watermark:
        a period is complete once every partition is past its end).
    since
        Oldest event time of the loans (where the periods start).
    loans
        Loans in the sums.
    stock
        Bucket -> ``[loans, outstanding]`` now (closed buckets too).
    repaid_early
        Loans repaid before their due date.
    transitions
        Granularity -> period -> ``"from>to"`` -> ``[loans, opening
        outstanding, closing outstanding]`` of the loans that changed.
    dimensions
        Dimension -> value -> ``[loans, outstanding]`` of the open loans.
    borrowers
        Account -> outstanding of its open loans.
    vintages
        Disbursement month -> ``[loans, principal]``.
    vintage_cells
        Disbursement month -> months on book -> bucket -> ``[loans, outstanding]``.
    """

    buckets: tuple[str, ...] = BucketScheme().open_buckets
    clocks: dict[int, int] = field(default_factory=dict)
    since: int | None = None
    loans: int = 0
    stock: dict[str, list[int]] = field(default_factory=dict)
    repaid_early: int = 0
    transitions: dict[str, dict[str, dict[str, list[int]]]] = field(default_factory=dict)
    dimensions: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    borrowers: dict[str, int] = field(default_factory=dict)
    vintages: dict[str, list[int]] = field(default_factory=dict)
    vintage_cells: dict[str, dict[str, dict[str, list[int]]]] = field(default_factory=dict)

    @classmethod
    def of_loans(cls, loans: Iterable[LoanState], config: PortfolioConfig,
                 partition: int | None = None) -> BookPartial:
        """The sums over ``loans`` (of ``partition``, when given, for its clock)."""
        partial = cls(buckets=config.scheme.open_buckets)
        for loan in loans:
            partial.add_loan(loan, config, +1, partition)
        return partial

    def add_loan(self, loan: LoanState, config: PortfolioConfig, sign: int,
                 partition: int | None = None) -> None:
        """Add (``sign=+1``) or take out (``-1``) one loan's contribution."""
        if loan.code == NEW or (config.currency and loan.currency
                                and loan.currency != config.currency):
            return
        scheme = config.scheme
        seen = loan.seen_at if loan.seen_at is not None else loan.updated_at
        if sign > 0 and seen is not None:
            owner = loan.partition if partition is None else partition
            self.clocks[owner] = max(self.clocks.get(owner, seen), seen)
        if sign > 0 and loan.first_at is not None:
            # Kept when the loan is taken out again: it only sets where periods start.
            self.since = min(self.since or loan.first_at, loan.first_at)
        self.loans += sign
        outstanding = loan.outstanding_minor
        _add(self.stock, scheme.bucket(loan.code), (1, outstanding), sign)
        if loan.repaid_early:
            self.repaid_early += sign
        if loan.is_open:
            for dimension in DIMENSIONS:
                values = self.dimensions.setdefault(dimension, {})
                _add(values, loan.dims.get(dimension) or UNKNOWN, (1, outstanding), sign)
                if not values:
                    del self.dimensions[dimension]
            held = self.borrowers.get(loan.account_id, 0) + sign * outstanding
            if held:
                self.borrowers[loan.account_id] = held
            else:
                self.borrowers.pop(loan.account_id, None)
        for granularity, history in loan.periods.items():
            by_period = self.transitions.setdefault(granularity, {})
            for period, (opening, opening_out, closing, closing_out) in history.items():
                cells = by_period.setdefault(period, {})
                move = _transition_key(scheme.bucket(opening), scheme.bucket(closing))
                _add(cells, move, (1, opening_out, closing_out), sign)
                if not cells:
                    del by_period[period]
        if loan.disbursed_at is not None:
            vintage = period_key(loan.disbursed_at, "monthly")
            _add(self.vintages, vintage, (1, loan.principal_minor), sign)
            for months, (code, held_out) in loan.mob.items():
                by_mob = self.vintage_cells.setdefault(vintage, {})
                cells = by_mob.setdefault(months, {})
                _add(cells, scheme.bucket(code), (1, held_out), sign)
                if not cells:
                    del by_mob[months]
                if not by_mob:
                    del self.vintage_cells[vintage]

    @classmethod
    def merge(cls, partials: Iterable[BookPartial]) -> BookPartial:
        """The sums over the union of the (disjoint) loan sets of ``partials``."""
        merged: BookPartial | None = None
        for partial in partials:
            if merged is None:
                merged = cls(buckets=partial.buckets)
            if partial.buckets != merged.buckets:
                message = (f"cannot merge partials cut with buckets {partial.buckets} "
                           f"and {merged.buckets}")
                raise ValueError(message)
            for owner, clock in partial.clocks.items():
                merged.clocks[owner] = max(merged.clocks.get(owner, clock), clock)
            if partial.since is not None:
                merged.since = min(merged.since or partial.since, partial.since)
            merged.loans += partial.loans
            merged.repaid_early += partial.repaid_early
            for name, values in partial.stock.items():
                _add(merged.stock, name, values, +1)
            for granularity, by_period in partial.transitions.items():
                target = merged.transitions.setdefault(granularity, {})
                for period, cells in by_period.items():
                    into = target.setdefault(period, {})
                    for key, values in cells.items():
                        _add(into, key, values, +1)
            for dimension, values_by in partial.dimensions.items():
                into = merged.dimensions.setdefault(dimension, {})
                for value, values in values_by.items():
                    _add(into, value, values, +1)
            for account, held in partial.borrowers.items():
                merged.borrowers[account] = merged.borrowers.get(account, 0) + held
            for vintage, values in partial.vintages.items():
                _add(merged.vintages, vintage, values, +1)
            for vintage, by_mob in partial.vintage_cells.items():
                vinto = merged.vintage_cells.setdefault(vintage, {})
                for months, cells in by_mob.items():
                    minto = vinto.setdefault(months, {})
                    for bucket, values in cells.items():
                        _add(minto, bucket, values, +1)
        return merged if merged is not None else cls()

    def published(self, config: PortfolioConfig) -> BookPartial:
        """A bounded copy to publish: periods and vintages in retention, top borrowers,
        at most ``max_values`` values per dimension."""
        copy = BookPartial.merge([self])
        clock = max(self.clocks.values(), default=None)
        if clock is not None:
            for granularity, by_period in copy.transitions.items():
                oldest = _oldest_kept(period_key(clock, granularity), granularity,
                                      config.retention(granularity))
                for old in [p for p in by_period if p < oldest]:
                    del by_period[old]
            oldest_vintage = _oldest_kept(period_key(clock, "monthly"), "monthly",
                                          config.vintage_months)
            for old in [v for v in copy.vintages if v < oldest_vintage]:
                del copy.vintages[old]
                copy.vintage_cells.pop(old, None)
        top = heapq.nlargest(config.top_borrowers, copy.borrowers.items(),
                             key=lambda item: (item[1], item[0]))
        copy.borrowers = dict(top)
        for dimension, values in copy.dimensions.items():
            if len(values) > config.max_values:
                ranked = sorted(values.items(), key=lambda item: (-item[1][1], item[0]))
                kept = dict(ranked[: config.max_values - 1])
                rest = [0, 0]
                for _, (loans, held) in ranked[config.max_values - 1:]:
                    rest[0] += loans
                    rest[1] += held
                kept[OVERFLOW] = rest
                copy.dimensions[dimension] = kept
        return copy

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": PARTIAL_FORMAT,
            "buckets": list(self.buckets),
            "clocks": {str(k): v for k, v in self.clocks.items()},
            "since": self.since,
            "loans": self.loans,
            "stock": self.stock,
            "repaid_early": self.repaid_early,
            "transitions": self.transitions,
            "dimensions": self.dimensions,
            "borrowers": self.borrowers,
            "vintages": self.vintages,
            "vintage_cells": self.vintage_cells,
        }

    def dumps(self) -> bytes:
        return orjson.dumps(self.as_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BookPartial:
        if data.get("format") != PARTIAL_FORMAT:
            message = f"partial format {data.get('format')!r} is not {PARTIAL_FORMAT}"
            raise ValueError(message)
        return cls(
            buckets=tuple(data["buckets"]),
            clocks={int(k): int(v) for k, v in data["clocks"].items()},
            since=data.get("since"),
            loans=int(data["loans"]),
            stock=data["stock"],
            repaid_early=int(data["repaid_early"]),
            transitions=data["transitions"],
            dimensions=data["dimensions"],
            borrowers=data["borrowers"],
            vintages=data["vintages"],
            vintage_cells=data["vintage_cells"],
        )

    @classmethod
    def loads(cls, raw: bytes) -> BookPartial:
        return cls.from_dict(orjson.loads(raw))
