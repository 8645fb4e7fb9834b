"""The lending book: loan states, delinquency buckets, roll rates, concentration, vintages.

Plain Python, no Faust, Kafka or Prometheus: ``streams/portfolio/`` feeds it
from the lending topic, the CLI and the tests feed it from lists.

The package, lowest layer first: ``periods`` (event-time periods),
``buckets`` (state codes and :class:`BucketScheme`), ``config``
(:class:`PortfolioConfig`, :class:`Limit`), ``loans`` (:class:`LoanState`,
:func:`apply_event`, and the rules for duplicates and late events),
``partial`` (:class:`BookPartial`, one partition's mergeable sums), ``book``
(:class:`Book`: migration matrices, concentration, vintages) and ``limits``
(:func:`check_limits`). Callers import from the package.
"""

from __future__ import annotations

from detectors.portfolio.book import Book, Concentration, Migration, ValueShare, VintageRow
from detectors.portfolio.buckets import NEW, REPAID, TERMINAL, WRITTEN_OFF, BucketScheme
from detectors.portfolio.config import (
    DEFAULT_PORTFOLIO_CONFIG,
    DIMENSIONS,
    LIMIT_KINDS,
    OVERFLOW,
    UNKNOWN,
    Limit,
    PortfolioConfig,
)
from detectors.portfolio.limits import PortfolioFinding, check_limits
from detectors.portfolio.loans import (
    AFTER_CLOSE,
    APPLIED,
    DUPLICATE,
    LENDING_BOOK_TYPES,
    LOAN_FORMAT,
    MAX_REPAYMENTS,
    OTHER_CURRENCY,
    OUTCOMES,
    RECENT_IDS,
    STALE,
    LendingEvent,
    LoanState,
    apply_event,
    evictable,
)
from detectors.portfolio.partial import PARTIAL_FORMAT, BookPartial
from detectors.portfolio.periods import (
    GRANULARITIES,
    add_months,
    iso_time,
    period_bounds,
    period_key,
    shift_period,
)

__all__ = [
    "AFTER_CLOSE",
    "APPLIED",
    "DEFAULT_PORTFOLIO_CONFIG",
    "DIMENSIONS",
    "DUPLICATE",
    "GRANULARITIES",
    "LENDING_BOOK_TYPES",
    "LIMIT_KINDS",
    "LOAN_FORMAT",
    "MAX_REPAYMENTS",
    "NEW",
    "OTHER_CURRENCY",
    "OUTCOMES",
    "OVERFLOW",
    "PARTIAL_FORMAT",
    "RECENT_IDS",
    "REPAID",
    "STALE",
    "TERMINAL",
    "UNKNOWN",
    "WRITTEN_OFF",
    "Book",
    "BookPartial",
    "BucketScheme",
    "Concentration",
    "LendingEvent",
    "Limit",
    "LoanState",
    "Migration",
    "PortfolioConfig",
    "PortfolioFinding",
    "ValueShare",
    "VintageRow",
    "add_months",
    "apply_event",
    "check_limits",
    "evictable",
    "iso_time",
    "period_bounds",
    "period_key",
    "shift_period",
]
