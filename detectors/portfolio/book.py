"""Figures from the merged sums: migration matrices, roll rates, concentration, vintages.

Periods and the migration matrix
--------------------------------
Periods (``daily`` ``2024-03-05``, ``monthly`` ``2024-03``) are cut from
**event time**, UTC, never from the wall clock. For each period in which a
loan changed, the loan keeps ``[opening code, opening outstanding, closing
code, closing outstanding]`` (the opening state is its state at the end of the
previous period). A loan without a change in a period simply stayed, so the
whole matrix follows from the sums ``T`` of those entries and the book as it
stands now:

``opening(Q, b) = stock_now(b) - sum over periods R >= Q of (T_R[., b] - T_R[b, .])``

``matrix(Q, a, b) = T_Q[a, b] + [a == b] * (opening(Q, a) - T_Q[a, .])``

Roll rates are ``matrix(Q, a, b) / opening(Q, a)`` by loan count, and by
principal with the opening outstanding. Row ``new`` holds the loans that
entered the book in the period. A period is **complete** once every partition
holding loans has seen an event after its end (each partition's newest event
time is its watermark); limits on roll rates and vintages look only at
complete periods, whose figures are final.

Concentration and vintages
--------------------------
Concentration is over the outstanding of open loans, by borrower age band,
industry, region and dealer (``direct`` without one): shares of the total,
and the Herfindahl-Hirschman index (0-1) over the known values. A vintage
(disbursement month) records each loan's state as it was at 1, 3, 6 and 12
months on book, observed when the loan's next event comes after that point
(a closed loan stays closed at every later point); its delinquent share is
over the loans observed.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass

from detectors.portfolio.config import OVERFLOW, UNKNOWN, PortfolioConfig
from detectors.portfolio.partial import BookPartial
from detectors.portfolio.periods import (
    _oldest_kept,
    add_months,
    period_bounds,
    period_key,
    shift_period,
)


@dataclass(frozen=True, slots=True)
class Migration:
    """The migration matrix of one period.

    ``loans[row][column]`` counts loans by their bucket at the start of the
    period (row; ``new``: entered the book during it) and at its end
    (column); ``principal`` is their opening outstanding (closing for
    ``new``). ``opening_loans`` and ``opening_principal`` are the row totals.
    """

    granularity: str
    period: str
    complete: bool
    rows: tuple[str, ...]
    columns: tuple[str, ...]
    loans: dict[str, dict[str, int]]
    principal: dict[str, dict[str, int]]
    opening_loans: dict[str, int]
    opening_principal: dict[str, int]

    def rate(self, row: str, columns: str | Iterable[str], basis: str = "loans") -> float | None:
        """Share of the row that ended in ``columns``; ``None`` for an empty row."""
        wanted = (columns,) if isinstance(columns, str) else tuple(columns)
        table, total = ((self.loans, self.opening_loans[row]) if basis == "loans"
                        else (self.principal, self.opening_principal[row]))
        if total <= 0:
            return None
        return sum(table[row][c] for c in wanted) / total


@dataclass(frozen=True, slots=True)
class ValueShare:
    value: str
    loans: int
    outstanding_minor: int
    share: float


@dataclass(frozen=True, slots=True)
class Concentration:
    """Outstanding principal of the open loans by the values of one dimension.

    ``hhi`` is the Herfindahl-Hirschman index (0-1) over the known values
    (``unknown`` and ``(more)`` left out), ``values`` every value, largest first.
    """

    dimension: str
    total_minor: int
    values: tuple[ValueShare, ...]
    hhi: float | None

    def top(self, n: int) -> tuple[ValueShare, ...]:
        """The ``n`` largest values and ``other`` for the rest (when there is a rest)."""
        head = self.values[:n]
        rest = self.values[n:]
        if not rest:
            return head
        loans = sum(v.loans for v in rest)
        held = sum(v.outstanding_minor for v in rest)
        share = held / self.total_minor if self.total_minor else 0.0
        return (*head, ValueShare("other", loans, held, share))


@dataclass(frozen=True, slots=True)
class VintageRow:
    """Loans disbursed in one month and their delinquency at months on book.

    ``cells[months]`` is ``(observed loans, delinquent loans, observed
    outstanding, delinquent outstanding, complete)`` for the months on book
    every loan of the vintage has reached (``complete``) or some have.
    """

    vintage: str
    loans: int
    principal_minor: int
    cells: dict[int, tuple[int, int, int, int, bool]]

    def delinquent_share(self, months: int, basis: str = "loans") -> float | None:
        cell = self.cells.get(months)
        if cell is None:
            return None
        observed, bad, observed_out, bad_out, _ = cell
        if basis == "loans":
            return bad / observed if observed else None
        return bad_out / observed_out if observed_out else None


class Book:
    """Figures computed from merged sums: matrices, concentration, vintages.

    Parameters
    ----------
    partial
        The merged :class:`BookPartial` of every partition.
    config
        Periods kept, top values, the vintage definition of delinquency.
    """

    def __init__(self, partial: BookPartial, config: PortfolioConfig) -> None:
        self.partial = partial
        self.config = config
        self.scheme = config.scheme
        if partial.buckets != config.scheme.open_buckets:
            message = (f"the partials were cut with buckets {partial.buckets}, the "
                       f"configuration has {config.scheme.open_buckets}")
            raise ValueError(message)

    @property
    def clock_ms(self) -> int | None:
        """Newest event time in the book."""
        return max(self.partial.clocks.values(), default=None)

    @property
    def settled_ms(self) -> int | None:
        """Event time every partition with loans has reached."""
        return min(self.partial.clocks.values(), default=None)

    @property
    def consistent(self) -> bool:
        """The partitions' newest event times are within the configured skew."""
        clock, settled = self.clock_ms, self.settled_ms
        if clock is None or settled is None:
            return False
        return clock - settled <= self.config.max_watermark_skew_hours * 3_600_000

    def bucket_stock(self) -> dict[str, tuple[int, int]]:
        """Bucket -> (loans, outstanding) now, every bucket present."""
        return {name: (self.partial.stock.get(name, [0, 0])[0],
                       self.partial.stock.get(name, [0, 0])[1])
                for name in self.scheme.columns}

    @property
    def open_loans(self) -> int:
        return sum(self.partial.stock.get(b, [0, 0])[0] for b in self.scheme.open_buckets)

    @property
    def open_outstanding_minor(self) -> int:
        return sum(self.partial.stock.get(b, [0, 0])[1] for b in self.scheme.open_buckets)

    # periods --------------------------------------------------------------------
    def periods(self, granularity: str) -> list[str]:
        """The periods kept, oldest first, from the book's first event to the current one."""
        clock = self.clock_ms
        if clock is None:
            return []
        latest = period_key(clock, granularity)
        oldest = _oldest_kept(latest, granularity, self.config.retention(granularity))
        since = self.partial.since
        first = oldest if since is None else min(latest, max(oldest,
                                                             period_key(since, granularity)))
        keys = [first]
        while keys[-1] < latest:
            keys.append(shift_period(keys[-1], granularity, 1))
        return keys

    def is_complete(self, granularity: str, period: str) -> bool:
        """Every partition with loans has events past the period's end."""
        settled = self.settled_ms
        return settled is not None and settled >= period_bounds(period, granularity)[1]

    def migration(self, granularity: str, period: str) -> Migration:
        """The migration matrix of ``period``."""
        scheme = self.scheme
        rows, columns, opens = scheme.rows, scheme.columns, scheme.open_buckets
        by_period = self.partial.transitions.get(granularity, {})
        # Opening stock: the stock now, less the net change of every period from this one.
        opening_loans = {b: self.partial.stock.get(b, [0, 0])[0] for b in opens}
        opening_principal = {b: self.partial.stock.get(b, [0, 0])[1] for b in opens}
        for later, cells in by_period.items():
            if later < period:
                continue
            for move, (count, opening_out, closing_out) in cells.items():
                source, _, target = move.partition(">")
                if target in opening_loans:
                    opening_loans[target] -= count
                    opening_principal[target] -= closing_out
                if source in opening_loans:
                    opening_loans[source] += count
                    opening_principal[source] += opening_out
        loans = {r: dict.fromkeys(columns, 0) for r in rows}
        principal = {r: dict.fromkeys(columns, 0) for r in rows}
        moved_loans = dict.fromkeys(rows, 0)
        moved_principal = dict.fromkeys(rows, 0)
        for move, (count, opening_out, closing_out) in by_period.get(period, {}).items():
            source, _, target = move.partition(">")
            loans[source][target] += count
            held = closing_out if source == "new" else opening_out
            principal[source][target] += held
            moved_loans[source] += count
            moved_principal[source] += held
        for bucket in opens:
            loans[bucket][bucket] += max(0, opening_loans[bucket] - moved_loans[bucket])
            principal[bucket][bucket] += max(0, opening_principal[bucket]
                                             - moved_principal[bucket])
        totals_loans = {"new": moved_loans["new"], **opening_loans}
        totals_principal = {"new": moved_principal["new"], **opening_principal}
        return Migration(granularity, period, self.is_complete(granularity, period), rows,
                         columns, loans, principal, totals_loans, totals_principal)

    # concentration ---------------------------------------------------------------
    def concentration(self, dimension: str) -> Concentration:
        values_by = self.partial.dimensions.get(dimension, {})
        total = sum(held for _, held in values_by.values())
        ranked = sorted(values_by.items(), key=lambda item: (-item[1][1], item[0]))
        values = tuple(ValueShare(value, loans, held, held / total if total else 0.0)
                       for value, (loans, held) in ranked)
        known = [held for value, (_, held) in values_by.items()
                 if value not in (UNKNOWN, OVERFLOW) and held > 0]
        known_total = sum(known)
        hhi = sum((held / known_total) ** 2 for held in known) if known_total else None
        return Concentration(dimension, total, values, hhi)

    def largest_borrowers(self, n: int) -> list[tuple[str, int, float]]:
        """``(account, outstanding, share of open outstanding)``, largest first."""
        total = self.open_outstanding_minor
        ranked = heapq.nlargest(n, self.partial.borrowers.items(),
                                key=lambda item: (item[1], item[0]))
        return [(account, held, held / total if total else 0.0) for account, held in ranked]

    # vintages --------------------------------------------------------------------
    def vintages(self) -> list[VintageRow]:
        """Each vintage kept, oldest first; a cell is ``complete`` once every partition is
        past the day the vintage's last loan reaches those months on book."""
        clock, settled = self.clock_ms, self.settled_ms
        bad_buckets = self.config.delinquent_buckets()
        rows = []
        for vintage in sorted(self.partial.vintages):
            count, principal = self.partial.vintages[vintage]
            start, end = period_bounds(vintage, "monthly")
            cells: dict[int, tuple[int, int, int, int, bool]] = {}
            for months in self.config.months_on_book:
                if clock is None or add_months(start, months) > clock:
                    continue
                by_bucket = self.partial.vintage_cells.get(vintage, {}).get(str(months), {})
                observed = sum(v[0] for v in by_bucket.values())
                observed_out = sum(v[1] for v in by_bucket.values())
                bad = sum(v[0] for b, v in by_bucket.items() if b in bad_buckets)
                bad_out = sum(v[1] for b, v in by_bucket.items() if b in bad_buckets)
                complete = settled is not None and add_months(end - 1, months) <= settled
                cells[months] = (observed, bad, observed_out, bad_out, complete)
            rows.append(VintageRow(vintage, count, principal, cells))
        return rows
