"""Velocity limits: too many transactions, too much money or too many counterparties."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar, Final

from detectors.base import Detector, Features
from detectors.limits import ALL_CURRENCIES, MoneyLimits, currency_of
from detectors.money import format_minor

#: Window label -> the words a reason uses for it. The labels are the suffixes of
#: the velocity features (``count_1m``, ``sum_24h`` ...).
WINDOWS: Final[Mapping[str, str]] = {"1m": "1 minute", "1h": "1 hour", "24h": "24 hours"}
#: Measures that can be limited, the prefixes of the velocity features.
MEASURES: Final = ("count", "distinct_cp")
#: Quantile of a count over the population a count limit is raised to, if higher.
COUNT_QUANTILE: Final = 0.9999
#: Outgoing events seen before a count limit may be raised: bursts are rare in a
#: large population, not necessarily in a small one.
COUNT_MIN_POPULATION: Final = 10_000
#: Share of outgoing events at or above a configured count limit that makes the
#: limit ordinary in the population, and raises it before :data:`COUNT_MIN_POPULATION`.
ORDINARY_SHARE: Final = 0.02
#: Outgoing events seen before a count limit can be found ordinary.
ORDINARY_MIN_POPULATION: Final = 1_000
#: The money limits, per currency (``currency_limits``): one per window.
SUM_LIMITS: Final = tuple(f"sum_{window}" for window in WINDOWS)
#: The worker counts distinct counterparties exactly up to this many, then stops.
DISTINCT_CP_CAP: Final = 64


class VelocityLimits(Detector):
    """Limits on an account's velocity over sliding windows, money limits per currency.

    The worker counts the account's monetary events in the windows ending at
    the current event, the current one included: how many payments went out
    (``count_<w>``), how much money they sent (``sum_<w>``, minor units) and to
    how many distinct counterparties (``distinct_cp_<w>``). This detector
    compares them with limits. Count and counterparty limits (``limits``) hold
    for every currency; where the population the worker sees is busier (every
    event of an hour stamped with one time, a merchant hub), each is raised to
    the :data:`COUNT_QUANTILE` of that count over all outgoing events once
    :data:`COUNT_MIN_POPULATION` have been seen, never lowered. Sooner where the
    limit is plainly ordinary: once :data:`ORDINARY_MIN_POPULATION` outgoing
    events have been seen and at least :data:`ORDINARY_SHARE` of them reached
    the configured limit, a burst limit it is not, and it is raised the same
    way (a burst of 12 payments adds the counts 1 to 12, so bursts alone,
    a few in a thousand accounts, stay under that share). Sum limits are money, so they are per currency
    (``currency_limits``, names ``sum_1m``, ``sum_1h``, ``sum_24h``); in a
    currency without a configured sum limit, the limit is the
    ``learnt_quantile`` of the window sums seen in that currency, once
    ``min_population`` of them have been seen (see :mod:`detectors.limits`).
    A ``sum`` limit applies only once the window holds two payments or more,
    and only such sums are learnt: a single large payment is the amount
    detector's business, not velocity.

    The score is the largest ratio ``observed / limit`` over the limits, so a
    score of 1.0 or more means a limit has been reached: a limit is the level
    that alerts, ``{"count": 10}`` flags the tenth transaction in the window.
    Events without an amount (``amount_minor`` 0: logins, status changes) and
    money coming in score 0.0. A window missing from ``x`` is skipped.

    Learnt limits are this detector's global state (:meth:`snapshot`). They
    are facts about the population, not a model an attack could teach, so
    every event is learnt, flagged or not (:attr:`keeps_ledger`): learning
    only the events under a learnt limit would lower it at every update.

    Parameters
    ----------
    limits
        Window (``"1m"``, ``"1h"``, ``"24h"``) to measure (``"count"``,
        ``"distinct_cp"``) to a positive integer limit. Any subset may be given.
    currency_limits
        Currency to sum limits in minor units, e.g. ``{"CNY": {"sum_1m": 5_000_000}}``.
    learnt_quantile
        Quantile of a currency's window sums used as its sum limit where none is configured.
    min_population
        Window sums of a currency to see before its learnt limit applies.

    Examples
    --------
    >>> detector = VelocityLimits(
    ...     limits={"1m": {"count": 10}, "1h": {"distinct_cp": 5}},
    ...     currency_limits={"CNY": {"sum_1h": 5_000_000}},
    ... )
    >>> x = {"event_type": "transfer", "amount_minor": 2_000_000, "is_outflow": True,
    ...      "currency": "CNY", "count_1m": 12, "count_1h": 3, "sum_1h": 6_000_000,
    ...      "distinct_cp_1h": 2}
    >>> detector.score_one(x)
    1.2
    >>> for reason in detector.explain_one(x, detector.score_one(x)):
    ...     print(reason)
    12 transactions in 1 minute (limit 10)
    60,000.00 CNY sent in 1 hour (limit 50,000.00 CNY, configured for CNY)
    >>> detector.score_one({"event_type": "login", "amount_minor": 0, "count_1m": 99})
    0.0

    In a currency without configured limits, sums are judged against what the
    population sends once enough has been seen:

    >>> import random
    >>> rng = random.Random(3)
    >>> learner = VelocityLimits(limits={"1m": {"count": 10}}, min_population=500)
    >>> for _ in range(2_000):
    ...     amount = round(rng.lognormvariate(9.0, 1.0))
    ...     learner.learn_one({"amount_minor": amount, "is_outflow": True, "currency": "USD",
    ...                        "count_1h": 2, "sum_1h": 2 * amount})
    >>> big = {"amount_minor": 900_000, "is_outflow": True, "currency": "USD",
    ...        "count_1h": 2, "sum_1h": 1_800_000}
    >>> round(learner.score_one(big), 2)
    3.74
    >>> print(learner.explain_one(big, learner.score_one(big))[0])
    18,000.00 USD sent in 1 hour (limit 4,807.75 USD, the 99.9% quantile of 2,000 values learnt in USD)
    """  # noqa: E501 - a doctest's expected output is one line

    name: ClassVar[str] = "velocity"
    #: Every event, flagged or not, counts in the learnt populations.
    keeps_ledger: ClassVar[bool] = True

    def __init__(
        self,
        limits: Mapping[str, Mapping[str, int]],
        currency_limits: Mapping[str, Mapping[str, int]] | None = None,
        learnt_quantile: float = 0.999,
        min_population: int = 1_000,
    ) -> None:
        self.limits = limits
        self.currency_limits = currency_limits
        self.learnt_quantile = learnt_quantile
        self.min_population = min_population
        self._checks = _validated_checks(limits)
        self._money = MoneyLimits(
            SUM_LIMITS, currency_limits or {}, learnt_quantile, min_population
        )
        # Count limits are the same in every currency: one population for all.
        self._busy = MoneyLimits(
            [feature for feature, _, _, _ in self._checks], {}, COUNT_QUANTILE,
            COUNT_MIN_POPULATION,
        )
        # feature -> (population seen at the last check, limit found ordinary early or None)
        self._ordinary: dict[str, tuple[int, int | None]] = {}

    def _count_limit(self, feature: str, configured: int) -> int:
        """A configured count limit, raised to the population's quantile where that is higher."""
        learnt = self._busy.limit(ALL_CURRENCIES, feature)
        if learnt is None and feature in self._ordinary:
            learnt = self._ordinary[feature][1]
        return configured if learnt is None else max(configured, learnt)

    def _find_ordinary(self, feature: str, configured: int) -> None:
        """Raise ``feature``'s limit early when ``configured`` is ordinary in the population."""
        population = self._busy.population
        seen = population.count(ALL_CURRENCIES, feature)
        if not ORDINARY_MIN_POPULATION <= seen < COUNT_MIN_POPULATION:
            return
        cached = self._ordinary.get(feature)
        if cached is not None and seen - cached[0] < 64:
            return  # checked every 64 values, like the learnt limits, raised or not
        limit = None if cached is None else cached[1]  # never lowered
        if population.share_at_least(ALL_CURRENCIES, feature, configured) >= ORDINARY_SHARE:
            learnt = population.quantile(ALL_CURRENCIES, feature, COUNT_QUANTILE) or configured
            limit = learnt if limit is None else max(limit, learnt)
        self._ordinary[feature] = (seen, limit)

    def _sums(self, x: Features) -> list[tuple[str, int, int]]:
        """(window, observed sum, limit) of every sum limit that applies to ``x``."""
        currency = currency_of(x)
        out = []
        for window in WINDOWS:
            observed = x.get(f"sum_{window}")
            if not observed or (x.get(f"count_{window}") or 0) < 2:
                continue
            limit = self._money.limit(currency, f"sum_{window}")
            if limit is not None:
                out.append((window, observed, limit))
        return out

    def score_one(self, x: Features) -> float:
        amount = x.get("amount_minor") or 0
        if amount <= 0 or not x.get("is_outflow", True):
            return 0.0
        score = 0.0
        for feature, configured, _, _ in self._checks:
            observed = x.get(feature)
            if observed:
                limit = self._count_limit(feature, configured)
                ratio = observed / limit
                if ratio > score:
                    score = _exact_ratio(observed, limit, ratio)
        for _, observed, limit in self._sums(x):
            ratio = observed / limit
            if ratio > score:
                score = _exact_ratio(observed, limit, ratio)
        return score

    def learn_one(self, x: Features) -> None:
        amount = x.get("amount_minor") or 0
        if amount <= 0 or not x.get("is_outflow", True):
            return
        currency = currency_of(x)
        for window in WINDOWS:
            observed = x.get(f"sum_{window}")
            if observed and (x.get(f"count_{window}") or 0) >= 2:
                self._money.observe(currency, f"sum_{window}", observed)
        for feature, configured, _, _ in self._checks:
            observed = x.get(feature)
            if observed:
                self._busy.observe(ALL_CURRENCIES, feature, observed)
                self._find_ordinary(feature, configured)

    def explain_one(self, x: Features, score: float) -> list[str]:
        amount = x.get("amount_minor") or 0
        if amount <= 0 or not x.get("is_outflow", True):
            return ["not an outgoing payment: velocity limits apply to money sent only"]
        observations: list[tuple[float, str]] = []
        closest: tuple[float, str] | None = None
        judged: list[tuple[int, int, str]] = []
        for feature, configured, window, measure in self._checks:
            observed = x.get(feature)
            if observed is not None:
                limit = self._count_limit(feature, configured)
                reason = _reason(observed, limit, window, measure)
                if limit > configured:
                    source = self._busy.source(ALL_CURRENCIES, feature)
                    reason = f"{reason[:-1]}, {source}; configured {configured})"
                judged.append((observed, limit, reason))
        currency = currency_of(x)
        for window, observed, limit in self._sums(x):
            source = self._money.source(currency, f"sum_{window}")
            judged.append((observed, limit, _sum_reason(observed, limit, window, currency, source)))
        for observed, limit, reason in judged:
            ratio = _exact_ratio(observed, limit, observed / limit)
            if ratio >= 1.0:
                observations.append((ratio, reason))
            elif closest is None or ratio > closest[0]:
                closest = (ratio, reason)
        if observations:
            # Most exceeded first; sorted() is stable, so ties keep window order.
            return [reason for _, reason in sorted(observations, key=lambda o: -o[0])]
        if closest is not None:
            return [f"no limit reached; closest: {closest[1]}, {closest[0]:.0%} of it"]
        return ["no configured window in the features (0 limits judged)"]

    def snapshot(self) -> dict[str, Any]:
        return {"sums": self._money.snapshot(), "counts": self._busy.snapshot(),
                "ordinary": [[feature, seen, limit]
                             for feature, (seen, limit) in sorted(self._ordinary.items())]}

    def restore(self, snapshot: Any) -> None:
        snapshot = snapshot or {}
        self._money.restore(snapshot.get("sums"))
        self._busy.restore(snapshot.get("counts"))
        self._ordinary = {str(feature): (int(seen), None if limit is None else int(limit))
                          for feature, seen, limit in snapshot.get("ordinary", ())}


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
            if measure == "sum":
                message = (
                    f"limits[{window!r}]: sums are money, set them per currency in"
                    f" currency_limits (e.g. {{'CNY': {{'sum_{window}': ...}}}})"
                )
                raise ValueError(message)
            if measure not in MEASURES:
                message = (
                    f"limits[{window!r}]: unknown measure {measure!r}; expected one of {MEASURES}"
                )
                raise ValueError(message)
            if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
                message = (
                    f"limits[{window!r}][{measure!r}] must be a positive int"
                    f", not {limit!r}"
                )
                raise ValueError(message)
            checks.append((f"{measure}_{window}", limit, window, measure))
    window_order = list(WINDOWS)
    checks.sort(key=lambda c: (window_order.index(c[2]), MEASURES.index(c[3])))
    return tuple(checks)


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
    noun = "counterparty" if observed == 1 else "different counterparties"
    at_least = " or more" if observed >= DISTINCT_CP_CAP else ""
    return f"{observed}{at_least} {noun} in {span} (limit {limit}{reached})"


def _sum_reason(observed: int, limit: int, window: str, currency: str, source: str) -> str:
    reached = " reached" if observed == limit else ""
    unit = f" {currency}" if currency else ""
    return (
        f"{format_minor(observed)}{unit} sent in {WINDOWS[window]} (limit"
        f" {format_minor(limit)}{unit}{reached}, {source})"
    )
