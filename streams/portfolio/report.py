"""The lending book in the terminal and as CSV files: buckets, migration, concentration, vintages.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from detectors.money import contract_amount, format_minor
from detectors.portfolio import (
    DIMENSIONS,
    GRANULARITIES,
    Book,
    Migration,
    iso_time,
)
from streams.tables import render, share

# -- terminal tables and CSV --------------------------------------------------------------


def render_matrix(matrix: Migration, basis: str = "loans") -> list[str]:
    state = "complete" if matrix.complete else "in progress"
    what = "loans" if basis == "loans" else "opening outstanding principal"
    lines = [f"{matrix.granularity.capitalize()} migration {matrix.period} ({state}): "
             f"share of {what} in each bucket at the start of the period (rows) by bucket "
             f"at its end"]
    header = ["from \\ to", *matrix.columns, "loans", "outstanding"]
    rows = []
    for row in matrix.rows:
        if matrix.opening_loans[row] == 0 and row == "new":
            continue
        rows.append([row, *[share(matrix.rate(row, c, basis)) for c in matrix.columns],
                     f"{matrix.opening_loans[row]:,}",
                     format_minor(matrix.opening_principal[row])])
    lines.extend(render(header, rows, right=range(1, len(header))))
    return lines


def render_book(book: Book, granularity: str = "monthly", period: str | None = None,
                top: int | None = None, missing: Sequence[int] = (),
                partitions: int | None = None, behind: Sequence[int] = ()) -> str:
    """The terminal report: buckets, migration, concentration, borrowers, vintages."""
    config = book.config
    currency = config.currency or ""
    top = top or config.top_values
    lines: list[str] = []
    clock = book.clock_ms
    reporting = len(book.partial.clocks)
    head = f"txwatch portfolio: book as of {iso_time(clock) if clock else '-'} (event time)"
    if partitions is not None:
        head += f", partials from {partitions - len(missing)} of {partitions} partitions"
    lines.append(head + f", {reporting} with loans, config {config.version}")
    settled = book.settled_ms
    if clock is not None and settled is not None and not book.consistent:
        lines.append(f"NOTE: partitions are between {iso_time(settled)} and {iso_time(clock)} "
                     "(catching up): concentration is a mix of moments")
    if missing:
        lines.append(f"WARNING: no partial yet from partitions {list(missing)}: figures are "
                     "partial")
    if behind:
        lines.append(f"NOTE: partitions {list(behind)} are behind their input (lag "
                     f"> {config.live_max_lag}): the latest events are not all in")
    stock = book.bucket_stock()
    lines.append(
        f"open loans {book.open_loans:,}, outstanding {format_minor(book.open_outstanding_minor)} "
        f"{currency}; written off {stock['written_off'][0]:,} "
        f"({format_minor(stock['written_off'][1])}); repaid {stock['repaid'][0]:,} "
        f"({book.partial.repaid_early:,} early)")
    lines.append("")
    lines.append("Delinquency buckets")
    total_loans = book.open_loans
    total_out = book.open_outstanding_minor
    rows = []
    for bucket, (loans, held) in stock.items():
        is_open = bucket in config.scheme.open_buckets
        rows.append([bucket, f"{loans:,}", share(loans / total_loans) if is_open and total_loans
                     else "", format_minor(held),
                     share(held / total_out) if is_open and total_out else ""])
    lines.extend(render(["bucket", "loans", "share", f"outstanding {currency}", "share"],
                        rows, right=(1, 2, 3, 4)))
    periods = book.periods(granularity)
    shown: list[str]
    if period is not None:
        shown = [period]
    else:
        complete = [p for p in periods if book.is_complete(granularity, p)]
        shown = [*complete[-1:], *[p for p in periods[-1:] if p not in complete[-1:]]]
    for key in shown:
        matrix = book.migration(granularity, key)
        lines.append("")
        lines.extend(render_matrix(matrix, "loans"))
        if matrix.complete:
            lines.append("")
            lines.extend(render_matrix(matrix, "principal"))
    for dimension in DIMENSIONS:
        table = book.concentration(dimension)
        lines.append("")
        hhi = "-" if table.hhi is None else f"{table.hhi:.4f}"
        lines.append(f"Concentration by {dimension}: HHI {hhi} (known values)")
        lines.extend(render(
            [dimension, "loans", f"outstanding {currency}", "share"],
            ([v.value, f"{v.loans:,}", format_minor(v.outstanding_minor), share(v.share)]
             for v in table.top(top)), right=(1, 2, 3)))
    lines.append("")
    lines.append("Largest borrowers")
    lines.extend(render(
        ["account", f"outstanding {currency}", "share"],
        ([account, format_minor(held), share(part)]
         for account, held, part in book.largest_borrowers(min(5, config.top_borrowers))),
        right=(1, 2)))
    lines.append("")
    bad_days = config.vintage_delinquent_days
    lines.append(f"Vintages: share of observed loans more than {bad_days} days past due or "
                 "written off, by months on book (* = not every loan there yet)")
    header = ["vintage", "loans", f"disbursed {currency}",
              *[f"MOB {m}" for m in config.months_on_book]]
    vintage_rows = []
    for vintage in book.vintages()[-config.monthly_periods:]:
        cells = []
        for months in config.months_on_book:
            cell = vintage.cells.get(months)
            delinquent = vintage.delinquent_share(months)
            cells.append("-" if cell is None else share(delinquent) + ("" if cell[4] else "*"))
        vintage_rows.append([vintage.vintage, f"{vintage.loans:,}",
                             format_minor(vintage.principal_minor), *cells])
    lines.extend(render(header, vintage_rows, right=range(1, len(header))))
    return "\n".join(lines)


def write_csv(book: Book, directory: Path) -> list[Path]:
    """``buckets``, ``migration``, ``concentration``, ``borrowers``, ``vintages`` CSV files.

    Money is exact decimal text in currency units; shares have six decimals.
    """
    directory.mkdir(parents=True, exist_ok=True)
    config = book.config
    written: list[Path] = []

    def share(value: float | None) -> str:
        return "" if value is None else f"{value:.6f}"

    def emit(name: str, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        path = directory / f"{name}.csv"
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(rows)
        written.append(path)

    emit("buckets", ["bucket", "loans", "outstanding"],
         ([b, loans, contract_amount(held)] for b, (loans, held) in book.bucket_stock().items()))
    migration_rows = []
    for granularity in GRANULARITIES:
        for period in book.periods(granularity):
            matrix = book.migration(granularity, period)
            for row in matrix.rows:
                for column in matrix.columns:
                    migration_rows.append([
                        granularity, period, "true" if matrix.complete else "false", row, column,
                        matrix.loans[row][column], share(matrix.rate(row, column, "loans")),
                        contract_amount(matrix.principal[row][column]),
                        share(matrix.rate(row, column, "principal")),
                        matrix.opening_loans[row], contract_amount(matrix.opening_principal[row]),
                    ])
    emit("migration", ["granularity", "period", "complete", "from_bucket", "to_bucket", "loans",
                       "loans_share", "principal", "principal_share", "opening_loans",
                       "opening_principal"], migration_rows)
    concentration_rows = []
    for dimension in DIMENSIONS:
        table = book.concentration(dimension)
        for value in table.values:
            concentration_rows.append([dimension, value.value, value.loans,
                                       contract_amount(value.outstanding_minor), share(value.share),
                                       share(table.hhi)])
    emit("concentration", ["dimension", "value", "loans", "outstanding", "share", "hhi"],
         concentration_rows)
    emit("borrowers", ["account_id", "outstanding", "share"],
         ([account, contract_amount(held), share(s)]
          for account, held, s in book.largest_borrowers(config.top_borrowers)))
    vintage_rows = []
    for vintage in book.vintages():
        for months in config.months_on_book:
            cell = vintage.cells.get(months)
            if cell is None:
                continue
            observed, bad, observed_out, bad_out, complete = cell
            vintage_rows.append([
                vintage.vintage, vintage.loans, contract_amount(vintage.principal_minor), months,
                "true" if complete else "false", observed, bad,
                share(vintage.delinquent_share(months)), contract_amount(observed_out),
                contract_amount(bad_out),
            ])
    emit("vintages", ["vintage", "loans", "principal", "months_on_book", "complete",
                      "observed_loans", "delinquent_loans", "delinquent_share",
                      "observed_outstanding", "delinquent_outstanding"], vintage_rows)
    return written


