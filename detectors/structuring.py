"""Structuring: several amounts just below a reporting threshold from one account."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any, ClassVar, Final

from detectors.base import Features, KeyedDetector
from detectors.limits import MoneyLimits, currency_of
from detectors.money import format_minor
from detectors.params import fraction, optional_int, positive_int, string_set
from detectors.timeline import KEPT_WINDOWS, densest_window, format_duration

#: Most qualifying amounts an account's state keeps (the newest by event time).
MAX_KEPT: Final = 32

# One kept amount: [ts, amount_minor].
_TS, _AMOUNT = range(2)


class Structuring(KeyedDetector[list[list[int]]]):
    """Amounts kept just below a reporting threshold, several times within a window.

    An amount *qualifies* when the event's type is one of ``event_types`` and
    ``ceil(band_fraction * threshold) <= amount_minor < threshold``: 45,000.00
    up to 49,999.99 under a 50,000.00 threshold. The reporting threshold is
    money, so it is per currency (``currency_limits``, limit name
    ``threshold``); in a currency without one, it is the ``learnt_quantile`` of
    the amounts of the watched types seen in that currency, once
    ``min_population`` of them have been seen (see :mod:`detectors.limits`),
    and amounts are not judged before. Learnt thresholds are the detector's
    global state (:meth:`snapshot`).
    For a qualifying event the detector finds the window of ``window_seconds``
    (ends included) around it that holds the most qualifying amounts of the
    account, this one included, and scores ``count / min_count``: 1.0 or more
    means ``min_count`` amounts were kept under the threshold within the
    window. Other events score 0.0. The window may extend on both sides of the
    event, so an event that arrives late still meets those around it.

    State: ``[[ts, amount_minor], ...]``, the account's qualifying amounts
    sorted by event time, only those within ``2 * window_seconds`` of the
    newest, and at most :data:`MAX_KEPT` of them: at most 32 pairs of ints
    (under 700 bytes of JSON), whatever the account's traffic, and an empty
    list for the accounts that never come near the threshold. An event without ``ts`` is neither scored
    nor kept.

    The state is a record of facts, not a model an attack could teach: it is
    learnt from every event, flagged or not (:attr:`keeps_ledger`; the
    registry builds this detector with ``learn_flagged`` on), so that its
    counts always equal a recount of the stream, as the worker's velocity
    windows do. Otherwise an amount that alerted would be missing from the
    next window and the pattern could fall back under the limit while it goes on.

    Parameters
    ----------
    currency_limits
        Currency to ``{"threshold": minor units}``: the reporting threshold; an
        amount at or above it is reported anyway and does not qualify.
    band_fraction
        Lowest fraction of the threshold that counts as "just below" it.
    min_count
        Qualifying amounts within one window that score 1.0 (at most 32).
    window_seconds
        Width of the window in seconds of event time.
    event_types
        Event types whose amounts are watched.
    learnt_quantile
        Quantile of a currency's amounts used as its threshold where none is configured.
    min_population
        Amounts of a currency to see before its learnt threshold applies.

    Examples
    --------
    >>> detector = Structuring(currency_limits={"CNY": {"threshold": 5_000_000}},
    ...                        band_fraction=0.9, min_count=3)
    >>> state = detector.new_state()
    >>> day = 1_709_510_400
    >>> for hours, amount in ((1, 4_800_000), (5, 4_950_000)):
    ...     x = {"event_type": "top_up", "amount_minor": amount, "currency": "CNY",
    ...          "ts": day + hours * 3_600}
    ...     state = detector.learn_one(x, state)
    >>> x = {"event_type": "transfer", "amount_minor": 4_990_000, "currency": "CNY",
    ...      "ts": day + 9 * 3_600}
    >>> detector.score_one(x, state)
    1.0
    >>> for reason in detector.explain_one(x, state, 1.0):
    ...     print(reason)
    3 amounts between 45,000.00 and 49,999.99, just below the 50,000.00 CNY reporting threshold (configured for CNY), within 8 h (alert at 3 within 1 d)
    amounts 48,000.00, 49,500.00 and 49,900.00: 147,400.00 in all
    >>> detector.score_one({**x, "amount_minor": 5_000_000}, state)
    0.0
    >>> detector.score_one({**x, "currency": "USD"}, state)  # no USD threshold learnt yet
    0.0
    """  # noqa: E501 - a doctest's expected output is one line

    name: ClassVar[str] = "structuring"
    #: Every qualifying amount, flagged or not, is kept.
    keeps_ledger: ClassVar[bool] = True

    def __init__(
        self,
        currency_limits: Mapping[str, Mapping[str, int]] | None = None,
        band_fraction: float = 0.9,
        min_count: int = 3,
        window_seconds: int = 86_400,
        event_types: Sequence[str] = ("transfer", "top_up", "withdrawal"),
        learnt_quantile: float = 0.999,
        min_population: int = 1_000,
    ) -> None:
        fraction("band_fraction", band_fraction)
        positive_int("min_count", min_count)
        if min_count > MAX_KEPT:
            message = f"min_count must be at most {MAX_KEPT}, not {min_count!r}"
            raise ValueError(message)
        positive_int("window_seconds", window_seconds)
        self._types = string_set("event_types", event_types, allow_empty=False)
        self._money = MoneyLimits(
            ("threshold",), currency_limits or {}, learnt_quantile, min_population
        )
        self.currency_limits = currency_limits
        self.band_fraction = band_fraction
        self.min_count = min_count
        self.window_seconds = window_seconds
        self.event_types = event_types
        self.learnt_quantile = learnt_quantile
        self.min_population = min_population

    def _band(self, currency: str) -> tuple[int, int] | None:
        """``(lowest, threshold)`` of the qualifying band in ``currency``, if it has a threshold."""
        threshold = self._money.limit(currency, "threshold")
        if threshold is None:
            return None
        # Decimal: 0.9 * 5,000,000 must be 4,500,000 exactly, not 4,500,000.000000001.
        lowest = max(1, math.ceil(Decimal(threshold) * Decimal(str(self.band_fraction))))
        return lowest, threshold

    def new_state(self) -> list[list[int]]:
        return []

    def _qualifying(self, x: Features) -> tuple[int, int] | None:
        """``(ts, amount)`` of a qualifying event, ``None`` otherwise."""
        if x.get("event_type") not in self._types:
            return None
        amount = optional_int(x.get("amount_minor"))
        ts = optional_int(x.get("ts"))
        if amount is None or ts is None:
            return None
        band = self._band(currency_of(x))
        if band is None or not band[0] <= amount < band[1]:
            return None
        return ts, amount

    def _episode(self, state: list[list[int]], ts: int, amount: int) -> list[list[int]]:
        """The qualifying amounts in the densest window around this event, in time order."""
        merged = sorted([*state, [ts, amount]], key=lambda kept: kept[_TS])
        # The current event goes after the kept ones of the same second.
        anchor = max(i for i, kept in enumerate(merged) if kept[_TS] == ts)
        lo, hi = densest_window([kept[_TS] for kept in merged], anchor, self.window_seconds)
        return merged[lo:hi]

    def score_one(self, x: Features, state: list[list[int]]) -> float:
        qualifying = self._qualifying(x)
        if qualifying is None:
            return 0.0
        return len(self._episode(state, *qualifying)) / self.min_count

    def learn_one(self, x: Features, state: list[list[int]]) -> list[list[int]]:
        ts = optional_int(x.get("ts"))
        if ts is None:
            return state
        qualifying = self._qualifying(x)
        if x.get("event_type") in self._types:
            amount = optional_int(x.get("amount_minor"))
            if amount is not None:
                self._money.observe(currency_of(x), "threshold", amount)
        if qualifying is not None:
            state.append(list(qualifying))
            state.sort(key=lambda kept: kept[_TS])
        if state:
            newest = max(ts, state[-1][_TS])
            oldest = newest - KEPT_WINDOWS * self.window_seconds
            if state[0][_TS] < oldest:
                state[:] = [kept for kept in state if kept[_TS] >= oldest]
            del state[:-MAX_KEPT]
        return state

    def explain_one(self, x: Features, state: list[list[int]], score: float) -> list[str]:
        currency = currency_of(x)
        limits = self._band(currency)
        if limits is None:
            event_type = x.get("event_type")
            if event_type not in self._types:
                watched = ", ".join(sorted(self._types))
                return [f"not scored: {event_type} is not a watched type ({watched})"]
            seen = self._money.population.count(currency, "threshold")
            return [
                f"not scored: no reporting threshold for {currency or 'amounts without a currency'}"
                f" yet ({seen:,} of the {self.min_population:,} amounts to learn it from)"
            ]
        lowest, threshold = limits
        unit = f" {currency}" if currency else ""
        band = f"between {format_minor(lowest)} and {format_minor(threshold - 1)}"
        qualifying = self._qualifying(x)
        if qualifying is None:
            event_type = x.get("event_type")
            if event_type not in self._types:
                watched = ", ".join(sorted(self._types))
                return [f"not scored: {event_type} is not a watched type ({watched})"]
            if optional_int(x.get("ts")) is None:
                return ["not scored: the event has no event time to place it in a window"]
            amount = optional_int(x.get("amount_minor")) or 0
            return [f"amount {format_minor(amount)} is not {band}"]
        episode = self._episode(state, *qualifying)
        span = episode[-1][_TS] - episode[0][_TS]
        amounts = [format_minor(kept[_AMOUNT]) for kept in episode]
        listed = amounts[-1]
        if len(amounts) > 1:
            listed = ", ".join(amounts[:-1]) + " and " + listed
        noun = "amount" if len(episode) == 1 else "amounts"
        return [
            f"{len(episode)} {noun} {band}, just below the"
            f" {format_minor(threshold)}{unit} reporting threshold"
            f" ({self._money.source(currency, 'threshold')}), within"
            f" {format_duration(span)} (alert at {self.min_count} within"
            f" {format_duration(self.window_seconds)})",
            f"{noun} {listed}: {format_minor(sum(kept[_AMOUNT] for kept in episode))} in all",
        ]

    def snapshot(self) -> dict[str, Any]:
        """The learnt thresholds of currencies without a configured one (JSON-able)."""
        return self._money.snapshot()

    def restore(self, snapshot: Any) -> None:
        """Put back what :meth:`snapshot` returned."""
        self._money.restore(snapshot)
