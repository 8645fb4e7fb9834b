"""The lending book's Prometheus series, set from the merged book.
"""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

from detectors.portfolio import (
    DIMENSIONS,
    GRANULARITIES,
    OUTCOMES,
    Book,
    PortfolioConfig,
)

# -- metrics ------------------------------------------------------------------------------


class PortfolioMetrics:
    """The portfolio gauges; every label has a bounded set of values.

    Parameters
    ----------
    registry
        Where the metrics are registered; tests pass a fresh ``CollectorRegistry``.
    config
        Bucket names, dimensions' top values and months on book.
    """

    def __init__(self, config: PortfolioConfig, registry: CollectorRegistry = REGISTRY) -> None:
        self.config = config
        self.events = Counter(
            "txwatch_portfolio_events", "Lending events applied to the book, by outcome.",
            ["outcome"], registry=registry,
        )
        for outcome in OUTCOMES:
            self.events.labels(outcome=outcome)
        self.loans = Gauge(
            "txwatch_portfolio_loans", "Loans in the book by delinquency bucket (closed ones "
            "within their retention).", ["bucket"], registry=registry,
        )
        self.outstanding = Gauge(
            "txwatch_portfolio_outstanding",
            "Outstanding principal by bucket, in currency units (written_off: charged off).",
            ["bucket"], registry=registry,
        )
        self.roll_rate = Gauge(
            "txwatch_portfolio_roll_rate",
            "Share of the loans (basis=loans) or opening principal (basis=principal) in "
            "from_bucket at the start of the period that ended it in to_bucket; period is "
            "'current' (in progress) or 'previous'.",
            ["granularity", "period", "from_bucket", "to_bucket", "basis"], registry=registry,
        )
        self.share = Gauge(
            "txwatch_portfolio_concentration_share",
            "Share of outstanding principal by dimension value (top values, then 'other').",
            ["dimension", "value"], registry=registry,
        )
        self.hhi = Gauge(
            "txwatch_portfolio_concentration_hhi",
            "Herfindahl-Hirschman index (0-1) of outstanding principal over a dimension's "
            "known values.", ["dimension"], registry=registry,
        )
        self.largest_borrower = Gauge(
            "txwatch_portfolio_largest_borrower_share",
            "Share of outstanding principal held by the largest borrower.", registry=registry,
        )
        self.vintage = Gauge(
            "txwatch_portfolio_vintage_delinquent_share",
            "Share of a vintage's observed loans delinquent (beyond the configured days or "
            "written off) at months on book; the 12 latest vintages.",
            ["vintage", "months_on_book"], registry=registry,
        )
        self.book_time = Gauge(
            "txwatch_portfolio_book_time_seconds",
            "Newest event time in the merged book (Unix seconds).", registry=registry,
        )
        self.partitions = Gauge(
            "txwatch_portfolio_partitions_reporting",
            "Partitions whose partial is in the merged book.", registry=registry,
        )
        self._shares: set[tuple[str, str]] = set()
        self._vintages: set[tuple[str, str]] = set()

    def observe(self, book: Book, partitions: int) -> None:
        """Set every gauge from the merged book."""
        config = self.config
        self.partitions.set(partitions)
        if book.clock_ms is not None:
            self.book_time.set(book.clock_ms / 1000)
        for bucket, (loans, held) in book.bucket_stock().items():
            self.loans.labels(bucket=bucket).set(loans)
            self.outstanding.labels(bucket=bucket).set(held / 100)
        for granularity in GRANULARITIES:
            periods = book.periods(granularity)
            for label, index in (("current", -1), ("previous", -2)):
                if len(periods) < -index:
                    continue
                matrix = book.migration(granularity, periods[index])
                for row in matrix.rows:
                    for column in matrix.columns:
                        for basis in ("loans", "principal"):
                            rate = matrix.rate(row, column, basis)
                            self.roll_rate.labels(
                                granularity=granularity, period=label, from_bucket=row,
                                to_bucket=column, basis=basis,
                            ).set(0.0 if rate is None else rate)
        shares: set[tuple[str, str]] = set()
        for dimension in DIMENSIONS:
            table = book.concentration(dimension)
            self.hhi.labels(dimension=dimension).set(table.hhi or 0.0)
            for value in table.top(config.top_values):
                shares.add((dimension, value.value))
                self.share.labels(dimension=dimension, value=value.value).set(value.share)
        for dimension, stale_value in self._shares - shares:
            self.share.remove(dimension, stale_value)
        self._shares = shares
        largest = book.largest_borrowers(1)
        self.largest_borrower.set(largest[0][2] if largest else 0.0)
        vintages: set[tuple[str, str]] = set()
        for vintage_row in book.vintages()[-12:]:
            for months in config.months_on_book:
                share = vintage_row.delinquent_share(months)
                if share is None:
                    continue
                vintages.add((vintage_row.vintage, str(months)))
                self.vintage.labels(vintage=vintage_row.vintage,
                                    months_on_book=str(months)).set(share)
        for vintage, months_label in self._vintages - vintages:
            self.vintage.remove(vintage, months_label)
        self._vintages = vintages


