"""Money limits per currency: configured where known, learnt from the population elsewhere.

Every detector with an amount limit takes the same three parameters:

* ``currency_limits``: currency code to ``{limit name: minor units}``, for
  example ``{"CNY": {"sum_24h": 50_000_000}}``; the limit names are the
  detector's (:attr:`MoneyLimits.names`);
* ``learnt_quantile``: for a currency without a configured limit, the limit
  is this quantile of the values the detector sees in that currency (the
  per-account window sums, amounts or balances it compares with the limit);
  a number, or ``{limit name: number}`` for a detector with several limits;
* ``min_population``: values of a currency to see before a learnt limit is
  used; until then that limit does not apply.

Learnt limits are global (non-keyed) state, kept in :class:`PopulationQuantiles`
and saved and put back through the detector's ``snapshot``/``restore``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, Final

from detectors.params import positive_int

#: Histogram buckets per doubling of a value: a learnt limit is at most 9% above
#: the exact quantile (it is the upper edge of the bucket holding it).
BUCKETS_PER_DOUBLING: Final = 8
#: Currencies a detector learns limits for; values of further currencies are not learnt.
MAX_CURRENCIES: Final = 64
#: The key of events without a currency.
NO_CURRENCY: Final = ""
#: The key of a population counted over every currency (counts, not money).
ALL_CURRENCIES: Final = "*"


def _bucket(value: int) -> int:
    return math.floor(math.log2(value) * BUCKETS_PER_DOUBLING)


def _upper_edge(bucket: int) -> int:
    """The smallest int above every value of ``bucket``, as minor units."""
    return math.ceil(2.0 ** ((bucket + 1) / BUCKETS_PER_DOUBLING))


class PopulationQuantiles:
    """Quantiles of positive integer values per ``(currency, measure)``.

    Values are counted in log-spaced buckets (:data:`BUCKETS_PER_DOUBLING` per
    doubling), so the result does not depend on the order the values came in
    (a replay at another rate learns the same limits) and the state is bounded:
    at most 64 buckets per doubling range used, about 480 for values up to
    ``10**17``, per measure, for at most :data:`MAX_CURRENCIES` currencies.

    Examples
    --------
    >>> import random
    >>> rng = random.Random(7)
    >>> population = PopulationQuantiles()
    >>> for _ in range(10_000):
    ...     population.add("USD", "amount", round(rng.lognormvariate(10.0, 1.0)))
    >>> population.count("USD", "amount")
    10000
    >>> population.quantile("USD", "amount", 0.5)
    23171
    >>> population.quantile("EUR", "amount", 0.5) is None
    True
    >>> restored = PopulationQuantiles()
    >>> restored.restore(population.snapshot())
    >>> restored.quantile("USD", "amount", 0.999) == population.quantile("USD", "amount", 0.999)
    True
    """

    def __init__(self) -> None:
        self._buckets: dict[str, dict[str, dict[int, int]]] = {}
        self._counts: dict[str, dict[str, int]] = {}

    def add(self, currency: str, measure: str, value: int) -> None:
        """Count ``value`` (ignored when not positive)."""
        if value <= 0:
            return
        by_measure = self._buckets.get(currency)
        if by_measure is None:
            if len(self._buckets) >= MAX_CURRENCIES:
                return
            by_measure = self._buckets[currency] = {}
            self._counts[currency] = {}
        buckets = by_measure.get(measure)
        if buckets is None:
            buckets = by_measure[measure] = {}
        bucket = _bucket(value)
        buckets[bucket] = buckets.get(bucket, 0) + 1
        counts = self._counts[currency]
        counts[measure] = counts.get(measure, 0) + 1

    def count(self, currency: str, measure: str) -> int:
        """Values counted for ``(currency, measure)``."""
        return self._counts.get(currency, {}).get(measure, 0)

    def share_at_least(self, currency: str, measure: str, value: int) -> float:
        """Share of the values counted in ``value``'s bucket or above (0.0 before any value).

        Integers up to 11 each have a bucket of their own, so for the small
        counts a count limit compares with this is the exact share at or above.
        """
        buckets = self._buckets.get(currency, {}).get(measure)
        if not buckets or value <= 0:
            return 0.0
        lowest = _bucket(value)
        above = sum(n for bucket, n in buckets.items() if bucket >= lowest)
        return above / self._counts[currency][measure]

    def quantile(self, currency: str, measure: str, q: float) -> int | None:
        """The ``q`` quantile rounded up to its bucket's upper edge; ``None`` before any value."""
        buckets = self._buckets.get(currency, {}).get(measure)
        if not buckets:
            return None
        total = self._counts[currency][measure]
        # The smallest bucket with at least q of the values at or below it.
        needed = q * total
        seen = 0
        for bucket in sorted(buckets):
            seen += buckets[bucket]
            if seen >= needed:
                return _upper_edge(bucket)
        return _upper_edge(max(buckets))

    def snapshot(self) -> dict[str, dict[str, list[list[int]]]]:
        """A JSON-able copy: currency -> measure -> ``[[bucket, count], ...]`` by bucket."""
        return {
            currency: {
                measure: [[b, n] for b, n in sorted(buckets.items())]
                for measure, buckets in sorted(by_measure.items())
            }
            for currency, by_measure in sorted(self._buckets.items())
        }

    def restore(self, snapshot: Any) -> None:
        """Put back what :meth:`snapshot` returned (``None``: start empty)."""
        self._buckets = {}
        self._counts = {}
        if not snapshot:
            return
        for currency, by_measure in snapshot.items():
            self._buckets[currency] = {}
            self._counts[currency] = {}
            for measure, pairs in by_measure.items():
                self._buckets[currency][measure] = {int(b): int(n) for b, n in pairs}
                self._counts[currency][measure] = sum(int(n) for _, n in pairs)


class MoneyLimits:
    """The money limits of one detector, by currency.

    Parameters
    ----------
    names
        The limit names the detector uses (``sum_1m``, ``threshold`` ...).
    currency_limits
        Currency to ``{name: minor units}``; a name left out of a configured
        currency is learnt like those of an unconfigured currency.
    learnt_quantile
        Quantile in (0, 1) of the values seen that a learnt limit sits at, or
        one per limit name (every name given).
    min_population
        Values of a currency (per limit) seen before its learnt limit applies.

    Examples
    --------
    >>> limits = MoneyLimits(("sum_1h",), {"CNY": {"sum_1h": 10_000_000}}, 0.99, 200)
    >>> limits.limit("CNY", "sum_1h")
    10000000
    >>> for amount in range(1, 201):
    ...     limits.observe("USD", "sum_1h", amount * 100)
    >>> limits.limit("USD", "sum_1h")
    21248
    >>> limits.limit("EUR", "sum_1h") is None
    True
    >>> limits.learns("CNY", "sum_1h"), limits.learns("USD", "sum_1h")
    (False, True)
    """

    def __init__(
        self,
        names: Iterable[str],
        currency_limits: Mapping[str, Mapping[str, int]],
        learnt_quantile: float | Mapping[str, float],
        min_population: int,
    ) -> None:
        self.names = tuple(names)
        self.configured = _validated(currency_limits, self.names)
        if isinstance(learnt_quantile, Mapping):
            if set(learnt_quantile) != set(self.names):
                message = (
                    f"learnt_quantile must give a quantile for each of {list(self.names)},"
                    f" not {learnt_quantile!r}"
                )
                raise ValueError(message)
            quantiles = dict(learnt_quantile)
        else:
            quantiles = dict.fromkeys(self.names, learnt_quantile)
        for name, q in quantiles.items():
            if isinstance(q, bool) or not isinstance(q, int | float) or not 0.0 < q < 1.0:
                message = f"learnt_quantile of {name} must be a number in (0, 1), not {q!r}"
                raise ValueError(message)
        self.quantiles = {name: float(q) for name, q in quantiles.items()}
        self.min_population = positive_int("min_population", min_population)
        self.population = PopulationQuantiles()
        # (population seen, limit) of each learnt limit in use
        self._cached: dict[tuple[str, str], tuple[int, int | None]] = {}

    def learns(self, currency: str, name: str) -> bool:
        """Whether ``name`` is learnt (not configured) for ``currency``."""
        configured = self.configured.get(currency)
        return configured is None or name not in configured

    def observe(self, currency: str, name: str, value: int) -> None:
        """Count a value the limit ``name`` is compared with, if that limit is learnt."""
        if not self.learns(currency, name):
            return
        self.population.add(currency, name, value)
        # The learnt limit is recomputed when its population has grown by 1% (or 64
        # values), here rather than when it is read: quantile() walks up to a few
        # hundred buckets, and what is in use then depends on what was learnt only.
        seen = self.population.count(currency, name)
        if seen < self.min_population:
            return
        key = (currency, name)
        cached = self._cached.get(key)
        if cached is None or seen - cached[0] >= max(64, cached[0] // 100):
            quantile = self.population.quantile(currency, name, self.quantiles[name])
            self._cached[key] = (seen, quantile)

    def limit(self, currency: str, name: str) -> int | None:
        """The limit in minor units; ``None`` while a learnt one lacks its population."""
        configured = self.configured.get(currency)
        if configured is not None and name in configured:
            return configured[name]
        cached = self._cached.get((currency, name))
        return None if cached is None else cached[1]

    def source(self, currency: str, name: str) -> str:
        """Where a limit comes from, for a reason: configured, or the population learnt."""
        if not self.learns(currency, name):
            return f"configured for {currency}"
        seen = self.population.count(currency, name)
        shown = {NO_CURRENCY: "no currency", ALL_CURRENCIES: "all currencies"}.get(
            currency, currency)
        return f"the {self.quantiles[name]:.1%} quantile of {seen:,} values learnt in {shown}"

    def snapshot(self) -> dict[str, Any]:
        """The learnt populations and the limits in use (JSON-able)."""
        return {
            "population": self.population.snapshot(),
            # The limits in use, so that a restored detector scores exactly as before.
            "limits": [[c, n, seen, value] for (c, n), (seen, value) in sorted(
                self._cached.items())],
        }

    def restore(self, snapshot: Any) -> None:
        """Put back what :meth:`snapshot` returned (``None``: start empty)."""
        snapshot = snapshot or {}
        self.population.restore(snapshot.get("population"))
        self._cached = {
            (str(c), str(n)): (int(seen), None if value is None else int(value))
            for c, n, seen, value in snapshot.get("limits", ())
        }


def currency_of(x: Mapping[str, Any]) -> str:
    """The event's currency feature, :data:`NO_CURRENCY` when missing or not a string."""
    currency = x.get("currency")
    return currency if isinstance(currency, str) else NO_CURRENCY


def _validated(
    currency_limits: Any, names: tuple[str, ...]
) -> dict[str, dict[str, int]]:
    if not isinstance(currency_limits, Mapping):
        message = (
            f"currency_limits must be a mapping of currency to limits, not {currency_limits!r}"
        )
        raise ValueError(message)
    out: dict[str, dict[str, int]] = {}
    for currency, limits in currency_limits.items():
        if not isinstance(currency, str) or not currency:
            message = f"currency_limits: a currency must be a non-empty string, not {currency!r}"
            raise ValueError(message)
        if not isinstance(limits, Mapping):
            message = f"currency_limits[{currency!r}] must be a mapping of limit to minor units"
            raise ValueError(message)
        for name, value in limits.items():
            if name not in names:
                message = (
                    f"currency_limits[{currency!r}]: unknown limit {name!r}; expected some of"
                    f" {list(names)}"
                )
                raise ValueError(message)
            positive_int(f"currency_limits[{currency!r}][{name!r}]", value)
        out[currency] = dict(limits)
    return out
