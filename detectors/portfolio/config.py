"""How the book is cut and which limits apply: :class:`PortfolioConfig` and :class:`Limit`.

:data:`DEFAULT_PORTFOLIO_CONFIG` is the packaged configuration;
:meth:`PortfolioConfig.from_mapping` checks one read from a file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from detectors.base import SEVERITIES
from detectors.portfolio.buckets import BucketScheme
from detectors.portfolio.periods import GRANULARITIES

#: Concentration dimensions. ``dealer`` is the dealer or broker that originated
#: the loan, ``direct`` for the platform's own channels.
DIMENSIONS: Final = ("age_band", "industry", "region", "dealer")
UNKNOWN: Final = "unknown"
#: Values folded together when a dimension has more than ``max_values``.
OVERFLOW: Final = "(more)"

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
