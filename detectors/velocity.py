"""Velocity limits: too many transactions, too much money or too many counterparties."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar, Final

from detectors.base import Detector, Features
from detectors.money import format_minor

#: Window label -> the words a reason uses for it. The labels are the suffixes of
#: the velocity features (``count_1m``, ``sum_24h`` ...).
WINDOWS: Final[Mapping[str, str]] = {"1m": "1 minute", "1h": "1 hour", "24h": "24 hours"}
#: Measures that can be limited, the prefixes of the velocity features.
MEASURES: Final = ("count", "sum", "distinct_cp")
#: The worker counts distinct counterparties exactly up to this many, then stops.
DISTINCT_CP_CAP: Final = 64


class VelocityLimits(Detector):
    """Fixed limits on an account's velocity over sliding windows.

    The worker counts the account's monetary events in the windows ending at
    the current event, the current one included: how many payments went out
    (``count_<w>``), how much money they sent (``sum_<w>``, minor units) and to
    how many distinct counterparties (``distinct_cp_<w>``). This detector
    compares them with fixed limits and learns nothing. A ``sum`` limit applies
    only once the window holds two payments or more: a single large payment is
    the amount detector's business, not velocity.

    The score is the largest ratio ``observed / limit`` over the configured
    limits, so a score of 1.0 or more means a limit has been reached: a limit
    is the level that alerts, ``{"count": 10}`` flags the tenth transaction in
    the window. Events without an amount (``amount_minor`` 0: logins, status
    changes) and money coming in score 0.0. A configured
    window missing from ``x`` is skipped.

    Parameters
    ----------
    limits
        Window (``"1m"``, ``"1h"``, ``"24h"``) to measure (``"count"``, ``"sum"``,
        ``"distinct_cp"``) to a positive integer limit; ``sum`` limits are in
        minor units. Any subset may be given.

    Examples
    --------
    >>> detector = VelocityLimits(limits={
    ...     "1m": {"count": 10},
    ...     "1h": {"sum": 5_000_000, "distinct_cp": 5},
    ... })
    >>> x = {"event_type": "transfer", "amount_minor": 2_000_000, "is_outflow": True,
    ...      "count_1m": 12, "count_1h": 3, "sum_1h": 6_000_000, "distinct_cp_1h": 2}
    >>> detector.score_one(x)
    1.2
    >>> for reason in detector.explain_one(x, detector.score_one(x)):
    ...     print(reason)
    12 transactions in 1 minute (limit 10)
    60,000.00 sent in 1 hour (limit 50,000.00)
    >>> detector.score_one({"event_type": "login", "amount_minor": 0, "count_1m": 99})
    0.0
    """

    name: ClassVar[str] = "velocity"

    def __init__(self, limits: Mapping[str, Mapping[str, int]]) -> None:
        self.limits = limits
        self._checks = _validated_checks(limits)
        # (feature, limit, the count a sum limit needs at 2 or more, else None)
        self._scored = tuple(
            (feature, limit, f"count_{window}" if measure == "sum" else None)
            for feature, limit, window, measure in self._checks
        )

    def score_one(self, x: Features) -> float:
        amount = x.get("amount_minor") or 0
        if amount <= 0 or not x.get("is_outflow", True):
            return 0.0
        score = 0.0
        # _applies inlined: this loop runs for every payment
        for feature, limit, count_feature in self._scored:
            observed = x.get(feature)
            if observed and (count_feature is None or (x.get(count_feature) or 0) >= 2):
                ratio = observed / limit
                if ratio > score:
                    score = _exact_ratio(observed, limit, ratio)
        return score

    def explain_one(self, x: Features, score: float) -> list[str]:
        amount = x.get("amount_minor") or 0
        if amount <= 0 or not x.get("is_outflow", True):
            return ["not an outgoing payment: velocity limits apply to money sent only"]
        observations: list[tuple[float, str]] = []
        closest: tuple[float, str] | None = None
        for feature, limit, window, measure in self._checks:
            observed = x.get(feature)
            if observed is None or not _applies(x, window, measure):
                continue
            ratio = _exact_ratio(observed, limit, observed / limit)
            if ratio >= 1.0:
                observations.append((ratio, _reason(observed, limit, window, measure)))
            elif closest is None or ratio > closest[0]:
                closest = (ratio, _reason(observed, limit, window, measure))
        if observations:
            # Most exceeded first; sorted() is stable, so ties keep configuration order.
            return [reason for _, reason in sorted(observations, key=lambda o: -o[0])]
        if closest is not None:
            return [f"no limit reached; closest: {closest[1]}, {closest[0]:.0%} of it"]
        return ["no configured window in the features"]


def _validated_checks(limits: Any) -> tuple[tuple[str, int, str, str], ...]:
    """(feature, limit, window, measure) for every configured limit, in window order."""
    if not isinstance(limits, Mapping) or not limits:
        message = f"limits must be a non-empty mapping of window to limits, not {limits!r}"
        raise ValueError(message)
    checks = []
    for window, measures in limits.items():
        if window not in WINDOWS:
            message = f"limits: unknown window {window!r}; expected one of {list(WINDOWS)}"
            raise ValueError(message)
        if not isinstance(measures, Mapping) or not measures:
            message = f"limits[{window!r}] must be a non-empty mapping of measure to limit"
            raise ValueError(message)
        for measure, limit in measures.items():
            if measure not in MEASURES:
                message = (
                    f"limits[{window!r}]: unknown measure {measure!r}; expected one of {MEASURES}"
                )
                raise ValueError(message)
            if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
                message = (
                    f"limits[{window!r}][{measure!r}] must be a positive int"
                    f" (sums in minor units), not {limit!r}"
                )
                raise ValueError(message)
            checks.append((f"{measure}_{window}", limit, window, measure))
    window_order = list(WINDOWS)
    checks.sort(key=lambda c: (window_order.index(c[2]), MEASURES.index(c[3])))
    return tuple(checks)


def _applies(x: Features, window: str, measure: str) -> bool:
    """A sum limit needs two payments in the window: one large payment is not velocity
    (it is the amount detector's business)."""
    return measure != "sum" or (x.get(f"count_{window}") or 0) >= 2


def _exact_ratio(observed: int, limit: int, ratio: float) -> float:
    """``ratio`` unless float rounding lifted a value under its limit to 1.0."""
    # Above 2**53 minor units, observed / limit can round up to 1.0 for observed
    # one cent under the limit; the alerting boundary must be exact.
    if ratio >= 1.0 and observed < limit:
        return math.nextafter(1.0, 0.0)
    return ratio


def _reason(observed: int, limit: int, window: str, measure: str) -> str:
    span = WINDOWS[window]
    reached = " reached" if observed == limit else ""
    if measure == "count":
        noun = "transaction" if observed == 1 else "transactions"
        return f"{observed} {noun} in {span} (limit {limit}{reached})"
    if measure == "sum":
        return f"{format_minor(observed)} sent in {span} (limit {format_minor(limit)}{reached})"
    noun = "counterparty" if observed == 1 else "different counterparties"
    at_least = " or more" if observed >= DISTINCT_CP_CAP else ""
    return f"{observed}{at_least} {noun} in {span} (limit {limit}{reached})"
