"""The lending book: loan states, delinquency buckets, roll rates, concentration, vintages.

Plain Python, no Faust, Kafka or Prometheus: ``streams/portfolio/`` feeds it
from the lending topic, the CLI and the tests feed it from lists.

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

Partitions and merging
----------------------
Every figure above, the concentration tables and the vintage cells are sums
over loans, so a :class:`BookPartial` (the sums over the loans of one
partition) is mergeable: :meth:`BookPartial.merge` of the partials of disjoint
sets of loans equals the partial of their union. Shares, HHI and rates are
computed only from the merged sums (:class:`Book`). The largest-borrower
figures keep each partition's top borrowers only; that is exact because
lending events are keyed by the borrower's account, so all of a borrower's
loans live in one partition.

Examples
--------
>>> scheme = BucketScheme((30, 60, 90))
>>> scheme.open_buckets
('current', '1-30', '31-60', '61-90', '90+')
>>> [scheme.bucket(days) for days in (0, 30, 31, 91)]
['current', '1-30', '31-60', '90+']
"""

from __future__ import annotations

import bisect
import calendar
import heapq
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import Any, Final

import orjson

from detectors.base import SEVERITIES
from detectors.money import format_minor

#: Codes of the non-delinquency states; a code >= 0 is days past due.
NEW: Final = -1
REPAID: Final = -2
WRITTEN_OFF: Final = -3
TERMINAL: Final = frozenset({REPAID, WRITTEN_OFF})

GRANULARITIES: Final = ("daily", "monthly")
#: Concentration dimensions. ``dealer`` is the dealer or broker that originated
#: the loan, ``direct`` for the platform's own channels.
DIMENSIONS: Final = ("age_band", "industry", "region", "dealer")
UNKNOWN: Final = "unknown"
#: Values folded together when a dimension has more than ``max_values``.
OVERFLOW: Final = "(more)"

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
PARTIAL_FORMAT: Final = 1

_MS_PER_DAY: Final = 86_400_000


# -- time ---------------------------------------------------------------------------------


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def period_key(ms: int, granularity: str) -> str:
    """The period of an event time (epoch milliseconds), e.g. ``2024-03-05`` or ``2024-03``."""
    moment = _utc(ms)
    if granularity == "daily":
        return moment.strftime("%Y-%m-%d")
    return moment.strftime("%Y-%m")


def _month_index(key: str) -> int:
    return int(key[:4]) * 12 + int(key[5:7]) - 1


def _month_key(index: int) -> str:
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


def shift_period(key: str, granularity: str, periods: int) -> str:
    """The period ``periods`` after (negative: before) ``key``."""
    if granularity == "daily":
        return (date.fromisoformat(key) + timedelta(days=periods)).isoformat()
    return _month_key(_month_index(key) + periods)


def period_bounds(key: str, granularity: str) -> tuple[int, int]:
    """``[start, end)`` of a period in epoch milliseconds."""
    return _period_start(key, granularity), _period_start(
        shift_period(key, granularity, 1), granularity)


def _period_start(key: str, granularity: str) -> int:
    if granularity == "daily":
        start = datetime.fromisoformat(key).replace(tzinfo=UTC)
    else:
        start = datetime(int(key[:4]), int(key[5:7]), 1, tzinfo=UTC)
    return int(start.timestamp() * 1000)


def add_months(ms: int, months: int) -> int:
    """Event time ``months`` calendar months after ``ms`` (day clamped to the month's end)."""
    moment = _utc(ms)
    index = moment.year * 12 + moment.month - 1 + months
    year, month = divmod(index, 12)
    day = min(moment.day, calendar.monthrange(year, month + 1)[1])
    return int(moment.replace(year=year, month=month + 1, day=day).timestamp() * 1000)


def _oldest_kept(latest: str, granularity: str, periods: int) -> str:
    return shift_period(latest, granularity, -(periods - 1))


def iso_time(ms: int) -> str:
    """RFC 3339 UTC with ``Z``, millisecond precision."""
    return _utc(ms).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- buckets ------------------------------------------------------------------------------


@lru_cache(maxsize=16)
def _bucket_names(edges: tuple[int, ...]) -> tuple[str, ...]:
    names = ["current"]
    low = 1
    for edge in edges:
        names.append(f"{low}-{edge}")
        low = edge + 1
    names.append(f"{edges[-1]}+")
    return tuple(names)


@dataclass(frozen=True, slots=True)
class BucketScheme:
    """Delinquency buckets from days past due.

    Parameters
    ----------
    edges
        Increasing upper bounds (days, inclusive) of the delinquent buckets
        before the last; ``(30, 60, 90)`` gives ``current``, ``1-30``,
        ``31-60``, ``61-90`` and ``90+`` (91 days or more).
    """

    edges: tuple[int, ...] = (30, 60, 90)

    def __post_init__(self) -> None:
        edges = tuple(self.edges)
        if not edges or any(not isinstance(e, int) or e < 1 for e in edges) or list(
            edges
        ) != sorted(set(edges)):
            message = f"bucket edges must be increasing positive whole days, not {self.edges!r}"
            raise ValueError(message)
        object.__setattr__(self, "edges", edges)

    @property
    def open_buckets(self) -> tuple[str, ...]:
        """Buckets of loans still on the book, best first."""
        return _bucket_names(self.edges)

    @property
    def rows(self) -> tuple[str, ...]:
        """Rows of a migration matrix: where loans were at the start of a period."""
        return ("new", *self.open_buckets)

    @property
    def columns(self) -> tuple[str, ...]:
        """Columns of a migration matrix: where loans were at its end."""
        return (*self.open_buckets, "written_off", "repaid")

    def bucket(self, code: int) -> str:
        """The bucket of a state code (days past due, or one of the negative codes)."""
        if code >= 0:
            if code == 0:
                return "current"
            return self.open_buckets[1 + bisect.bisect_left(self.edges, code)]
        if code == REPAID:
            return "repaid"
        if code == WRITTEN_OFF:
            return "written_off"
        return "new"

    def floor(self, bucket: str) -> int:
        """Fewest days past due in an open bucket (``31`` for ``31-60``)."""
        index = self.open_buckets.index(bucket)
        return 0 if index == 0 else 1 if index == 1 else self.edges[index - 2] + 1


# -- configuration ------------------------------------------------------------------------

LIMIT_KINDS: Final = ("roll_rate", "share", "hhi", "largest_borrower", "vintage")
_DETECTOR_BY_KIND: Final = {
    "roll_rate": "portfolio_roll_rate",
    "share": "portfolio_concentration",
    "hhi": "portfolio_hhi",
    "largest_borrower": "portfolio_borrower",
    "vintage": "portfolio_vintage",
}


@dataclass(frozen=True, slots=True)
class Limit:
    """A limit the risk committee set; crossing it raises one alert per period.

    Parameters
    ----------
    name
        Unique name, part of the alert id.
    kind
        ``roll_rate``, ``share`` (of outstanding principal held by one value of
        a dimension), ``hhi`` (of a dimension), ``largest_borrower`` (share of
        the largest borrower) or ``vintage`` (share of a vintage delinquent at
        some months on book).
    max
        The limit; an alert when the figure is above it.
    severity
        Alert severity.
    granularity
        ``roll_rate``: ``daily`` or ``monthly`` periods. ``share``, ``hhi``,
        ``largest_borrower``: how often an excess that lasts is reported
        again (the period is part of the alert id).
    from_bucket, to_buckets
        ``roll_rate``: the rate of loans in ``from_bucket`` at the start of a
        period that are in one of ``to_buckets`` at its end (default: the next
        bucket).
    basis
        ``roll_rate``, ``vintage``: ``loans`` (counts) or ``principal``.
    periods
        ``roll_rate``: ``complete`` periods only (the figures are final), or
        the ``current`` one as it fills.
    dimension, exclude
        ``share`` and ``hhi``: the dimension, and values never flagged
        (``unknown`` never is).
    months_on_book
        ``vintage``: the months on book.
    min_loans
        No alert while fewer loans are in the denominator.
    """

    name: str
    kind: str
    max: float
    severity: str = "high"
    granularity: str = "monthly"
    from_bucket: str | None = None
    to_buckets: tuple[str, ...] = ()
    basis: str = "loans"
    periods: str = "complete"
    dimension: str | None = None
    exclude: tuple[str, ...] = ()
    months_on_book: int | None = None
    min_loans: int = 0

    @property
    def detector(self) -> str:
        """The ``detector`` field of its alerts."""
        return _DETECTOR_BY_KIND[self.kind]

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], scheme: BucketScheme,
                     months_on_book: Sequence[int]) -> Limit:
        """A limit from its configuration entry, checked against the bucket scheme."""
        name = raw.get("name")
        kind = raw.get("kind")
        where = f"portfolio limit {name!r}"
        if not isinstance(name, str) or not name:
            message = f"portfolio limit without a name: {dict(raw)!r}"
            raise ValueError(message)
        if kind not in LIMIT_KINDS:
            message = f"{where}: kind must be one of {LIMIT_KINDS}, not {kind!r}"
            raise ValueError(message)
        maximum = raw.get("max")
        if isinstance(maximum, bool) or not isinstance(maximum, int | float) or maximum < 0:
            message = f"{where}: max must be a non-negative number, not {maximum!r}"
            raise ValueError(message)
        severity = raw.get("severity", "high")
        if severity not in SEVERITIES:
            message = f"{where}: severity must be one of {SEVERITIES}, not {severity!r}"
            raise ValueError(message)
        granularity = raw.get("granularity", "monthly")
        if granularity not in GRANULARITIES:
            message = f"{where}: granularity must be one of {GRANULARITIES}"
            raise ValueError(message)
        basis = raw.get("basis", "loans")
        if basis not in ("loans", "principal"):
            message = f"{where}: basis must be 'loans' or 'principal', not {basis!r}"
            raise ValueError(message)
        periods = raw.get("periods", "complete")
        if periods not in ("complete", "current"):
            message = f"{where}: periods must be 'complete' or 'current', not {periods!r}"
            raise ValueError(message)
        min_loans = raw.get("min_loans", 0)
        if not isinstance(min_loans, int) or min_loans < 0:
            message = f"{where}: min_loans must be a whole number >= 0"
            raise ValueError(message)
        from_bucket: str | None = None
        to_buckets: tuple[str, ...] = ()
        dimension: str | None = None
        mob: int | None = None
        if kind == "roll_rate":
            from_bucket = raw.get("from")
            if from_bucket not in scheme.rows:
                message = f"{where}: 'from' must be one of {scheme.rows}, not {from_bucket!r}"
                raise ValueError(message)
            to = raw.get("to")
            if to is None:
                position = scheme.columns.index(from_bucket) if from_bucket != "new" else -1
                to = scheme.columns[position + 1]
            to_buckets = (to,) if isinstance(to, str) else tuple(to)
            unknown = [b for b in to_buckets if b not in scheme.columns]
            if not to_buckets or unknown:
                message = f"{where}: 'to' must name buckets of {scheme.columns}, not {to!r}"
                raise ValueError(message)
        if kind in ("share", "hhi"):
            dimension = raw.get("dimension")
            if dimension not in DIMENSIONS:
                message = f"{where}: dimension must be one of {DIMENSIONS}, not {dimension!r}"
                raise ValueError(message)
        if kind == "vintage":
            mob = raw.get("months_on_book")
            if mob not in months_on_book:
                message = (f"{where}: months_on_book must be one of the configured "
                           f"{tuple(months_on_book)}, not {mob!r}")
                raise ValueError(message)
        exclude = raw.get("exclude", ())
        return cls(
            name=name, kind=kind, max=float(maximum), severity=severity,
            granularity=granularity, from_bucket=from_bucket, to_buckets=to_buckets,
            basis=basis, periods=periods, dimension=dimension,
            exclude=(exclude,) if isinstance(exclude, str) else tuple(exclude),
            months_on_book=mob, min_loans=min_loans,
        )


#: The packaged configuration; ``TXWATCH_PORTFOLIO_CONFIG`` names a JSON file
#: with the same keys to replace it.
DEFAULT_PORTFOLIO_CONFIG: Final[Mapping[str, Any]] = {
    "version": "portfolio-defaults-1",
    "currency": "CNY",
    "bucket_edges": [30, 60, 90],
    "daily_periods": 35,
    "monthly_periods": 13,
    "months_on_book": [1, 3, 6, 12],
    "vintage_delinquent_days": 30,
    "vintage_months": 24,
    "top_values": 8,
    "top_borrowers": 10,
    "max_values": 2000,
    "closed_retention_days": 400,
    "max_watermark_skew_hours": 24,
    "live_max_lag": 100,
    "limits": [
        {"name": "roll_1_30_to_31_60", "kind": "roll_rate", "granularity": "monthly",
         "from": "1-30", "to": "31-60", "max": 0.40, "min_loans": 30, "severity": "high"},
        {"name": "roll_current_to_1_30", "kind": "roll_rate", "granularity": "monthly",
         "from": "current", "to": "1-30", "max": 0.15, "min_loans": 100,
         "severity": "medium"},
        {"name": "region_share", "kind": "share", "dimension": "region", "max": 0.30,
         "min_loans": 100, "severity": "medium"},
        {"name": "dealer_share", "kind": "share", "dimension": "dealer", "max": 0.10,
         "exclude": ["direct"], "min_loans": 100, "severity": "medium"},
        {"name": "largest_borrower", "kind": "largest_borrower", "max": 0.02,
         "min_loans": 100, "severity": "medium"},
        {"name": "vintage_mob3", "kind": "vintage", "months_on_book": 3, "max": 0.10,
         "min_loans": 30, "severity": "high"},
    ],
}


@dataclass(frozen=True, slots=True)
class PortfolioConfig:
    """How the book is cut and which limits apply.

    Parameters
    ----------
    version
        Carried on alerts (``config_version``) and on published partials.
    currency
        The book's currency; loans in another one are kept out of every figure.
    scheme
        The delinquency buckets.
    daily_periods, monthly_periods
        Periods kept for the migration matrices, counted back from the
        latest.
    months_on_book
        The vintage view's columns.
    vintage_delinquent_days
        A loan counts as delinquent in the vintage view beyond this many days
        past due (a bucket edge, or 0), or when written off.
    vintage_months
        Vintages kept, counted back from the latest event.
    top_values
        Values of each dimension shown and exported (the rest is ``other``).
    top_borrowers
        Largest borrowers each partition publishes.
    max_values
        Values of a dimension a partition publishes before folding the
        smallest into ``(more)``.
    closed_retention_days
        Repaid and written-off loans are dropped this long after closing.
    max_watermark_skew_hours
        Limits on the book as it stands (shares, HHI, largest borrower) are
        checked only while every partition's newest event time is within this
        of the newest: while partitions are far apart (one worker catching up)
        the merged book mixes different moments.
    live_max_lag
        And only while every partition's published partial was at most this
        many input messages behind (``streams/portfolio/`` checks it).
    limits
        The limits checked by :func:`check_limits`.
    """

    version: str = "portfolio-defaults-1"
    currency: str | None = "CNY"
    scheme: BucketScheme = field(default_factory=BucketScheme)
    daily_periods: int = 35
    monthly_periods: int = 13
    months_on_book: tuple[int, ...] = (1, 3, 6, 12)
    vintage_delinquent_days: int = 30
    vintage_months: int = 24
    top_values: int = 8
    top_borrowers: int = 10
    max_values: int = 2000
    closed_retention_days: int = 400
    max_watermark_skew_hours: int = 24
    live_max_lag: int = 100
    limits: tuple[Limit, ...] = ()

    def retention(self, granularity: str) -> int:
        return self.daily_periods if granularity == "daily" else self.monthly_periods

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> PortfolioConfig:
        """Build and check a configuration; missing keys take the packaged defaults."""
        merged = {**DEFAULT_PORTFOLIO_CONFIG, **raw}
        unknown = sorted(set(raw) - set(DEFAULT_PORTFOLIO_CONFIG))
        if unknown:
            message = f"unknown portfolio configuration keys {unknown}"
            raise ValueError(message)
        scheme = BucketScheme(tuple(merged["bucket_edges"]))
        mobs = tuple(merged["months_on_book"])
        if not mobs or any(not isinstance(m, int) or m < 1 for m in mobs):
            message = f"months_on_book must be whole months >= 1, not {mobs!r}"
            raise ValueError(message)
        delinquent_days = merged["vintage_delinquent_days"]
        if delinquent_days != 0 and delinquent_days not in scheme.edges:
            message = (f"vintage_delinquent_days must be 0 or a bucket edge {scheme.edges}, "
                       f"not {delinquent_days!r}")
            raise ValueError(message)
        for key in ("daily_periods", "monthly_periods", "vintage_months", "top_values",
                    "top_borrowers", "max_values", "closed_retention_days",
                    "max_watermark_skew_hours"):
            value = merged[key]
            if not isinstance(value, int) or value < 1:
                message = f"{key} must be a whole number >= 1, not {value!r}"
                raise ValueError(message)
        live_max_lag = merged["live_max_lag"]
        if not isinstance(live_max_lag, int) or live_max_lag < 0:
            message = f"live_max_lag must be a whole number >= 0, not {live_max_lag!r}"
            raise ValueError(message)
        limits = tuple(Limit.from_mapping(entry, scheme, mobs) for entry in merged["limits"])
        names = [limit.name for limit in limits]
        if len(set(names)) != len(names):
            message = f"portfolio limit names must be unique: {names}"
            raise ValueError(message)
        currency = merged["currency"]
        return cls(
            version=str(merged["version"]), currency=currency, scheme=scheme,
            daily_periods=merged["daily_periods"], monthly_periods=merged["monthly_periods"],
            months_on_book=tuple(sorted(mobs)), vintage_delinquent_days=delinquent_days,
            vintage_months=merged["vintage_months"], top_values=merged["top_values"],
            top_borrowers=merged["top_borrowers"], max_values=merged["max_values"],
            closed_retention_days=merged["closed_retention_days"],
            max_watermark_skew_hours=merged["max_watermark_skew_hours"],
            live_max_lag=live_max_lag, limits=limits,
        )

    def delinquent_buckets(self) -> frozenset[str]:
        """Buckets counted as delinquent in the vintage view."""
        scheme = self.scheme
        bad = {b for b in scheme.open_buckets if scheme.floor(b) > self.vintage_delinquent_days}
        return frozenset({*bad, "written_off"})


# -- events and loans ---------------------------------------------------------------------


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


# -- the partial aggregate ----------------------------------------------------------------


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


# -- the merged book ----------------------------------------------------------------------


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


# -- limits -------------------------------------------------------------------------------


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
