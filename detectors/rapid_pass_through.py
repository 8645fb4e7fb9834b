"""Rapid pass-through: money that enters an account leaves it again within minutes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from detectors.base import Features, KeyedDetector
from detectors.limits import MoneyLimits, currency_of
from detectors.money import format_minor
from detectors.params import optional_int, positive_int
from detectors.timeline import KEPT_WINDOWS, format_duration

# One bucket: [bucket_index, inflow_minor, outflow_minor]; bucket_index = ts // bucket_seconds.
_INDEX, _IN, _OUT = range(3)


class RapidPassThrough(KeyedDetector[list[list[int]]]):
    """The share of the money that entered an account which has already left it again.

    Money enters an account with the events it carries whose ``is_inflow`` is
    true (top-ups, refunds, loan disbursements, pledge refunds, project
    payouts); transfers *received* are events of the sender's account and are
    not seen here. Money leaves with ``is_outflow`` events (payments,
    transfers, withdrawals, pledges).

    For an outgoing event at time ``ts`` the detector sums the inflows of the
    window ending at ``ts``; when they reach the currency's ``min_inflow`` it sums the
    outflows since the first of those inflows, this one included, and scores
    ``min(out, in) / in``: the share of the incoming money that has left, from
    0.0 to 1.0 (an account spending more than it received scores 1.0, not
    more). Incoming events, events without an amount or without ``ts`` score
    0.0. The configured threshold is the share that alerts (0.8: 80% gone).

    ``min_inflow`` is money, so it is per currency (``currency_limits``); in a
    currency without one it is the ``learnt_quantile`` of the window inflows
    seen at outgoing events in that currency (events with no inflow in their
    window not counted), once ``min_population`` of them have been seen (see
    :mod:`detectors.limits`); nothing is judged before. Learnt limits are the
    detector's global state (:meth:`snapshot`).

    Time is counted in buckets of ``bucket_seconds``: the window covers
    between ``window_seconds`` and ``window_seconds + bucket_seconds``, and
    outflows in the bucket of the first inflow count even if they were a few
    seconds earlier. An outflow that arrives late is judged against the money
    that came in before it, as it should; an inflow that arrives after the
    outflows that followed it is judged by the account's next outflow within
    the window, and missed when there is none.

    State: ``[[bucket_index, inflow_minor, outflow_minor], ...]`` sorted by
    bucket, only buckets with money, only those within ``2 * window_seconds``
    of the newest event: at most ``2 * ceil(window / bucket) + 1`` triples of
    ints (61 with the defaults, about 1.5 KB of JSON for an account with money
    moving every minute for an hour; a few dozen bytes typically), and an
    empty list for an account idle for an hour.

    The state is a record of facts, not a model an attack could teach: it is
    learnt from every event, flagged or not (:attr:`keeps_ledger`; the
    registry builds this detector with ``learn_flagged`` on), so that its
    counts always equal a recount of the stream, as the worker's velocity
    windows do. Otherwise an outflow that alerted would be missing from the
    next window and the pattern could look smaller than it is.

    Parameters
    ----------
    window_seconds
        How far back the inflows are looked for, in seconds of event time.
    currency_limits
        Currency to ``{"min_inflow": minor units}``: inflows within the window
        below this total are not judged (small change passing through is ordinary).
    bucket_seconds
        Width of the time buckets; smaller is more exact, and a larger state.
    learnt_quantile
        Quantile of a currency's window inflows used as its ``min_inflow`` where none is
        configured.
    min_population
        Window inflows of a currency to see before its learnt ``min_inflow`` applies.

    Examples
    --------
    >>> detector = RapidPassThrough(window_seconds=1_800,
    ...                             currency_limits={"CNY": {"min_inflow": 1_000_000}})
    >>> state = detector.new_state()
    >>> noon = 1_709_553_600
    >>> top_up = {"event_type": "top_up", "amount_minor": 5_000_000, "is_inflow": True,
    ...           "currency": "CNY", "ts": noon}
    >>> state = detector.learn_one(top_up, state)
    >>> out = {"event_type": "withdrawal", "amount_minor": 4_600_000, "is_outflow": True,
    ...        "currency": "CNY", "ts": noon + 720}
    >>> detector.score_one(out, state)
    0.92
    >>> print(*detector.explain_one(out, state, 0.92), sep="\\n")
    92% of the 50,000.00 received in the last 30 min has left again: 46,000.00 out within about 12 min of the first inflow, this withdrawal of 46,000.00 included (judged from 10,000.00, configured for CNY)
    >>> detector.score_one({**out, "ts": noon + 3 * 3_600}, state)
    0.0
    >>> detector.score_one({**out, "currency": "USD"}, state)  # no USD limit learnt yet
    0.0
    """  # noqa: E501 - a doctest's expected output is one line

    name: ClassVar[str] = "rapid_pass_through"
    #: Every amount in or out, flagged or not, is counted.
    keeps_ledger: ClassVar[bool] = True

    def __init__(
        self,
        window_seconds: int = 1_800,
        currency_limits: Mapping[str, Mapping[str, int]] | None = None,
        bucket_seconds: int = 60,
        learnt_quantile: float = 0.99,
        min_population: int = 1_000,
    ) -> None:
        positive_int("window_seconds", window_seconds)
        positive_int("bucket_seconds", bucket_seconds)
        if bucket_seconds > window_seconds:
            message = (
                f"bucket_seconds ({bucket_seconds}) must not exceed window_seconds"
                f" ({window_seconds})"
            )
            raise ValueError(message)
        self._money = MoneyLimits(
            ("min_inflow",), currency_limits or {}, learnt_quantile, min_population
        )
        self.window_seconds = window_seconds
        self.currency_limits = currency_limits
        self.bucket_seconds = bucket_seconds
        self.learnt_quantile = learnt_quantile
        self.min_population = min_population
        # Buckets before the current one that the window reaches into.
        self._span = -(-window_seconds // bucket_seconds)

    def new_state(self) -> list[list[int]]:
        return []

    def _outflow(self, x: Features) -> tuple[int, int] | None:
        """``(ts, amount)`` of an outgoing event with an amount and a time."""
        if not x.get("is_outflow"):
            return None
        amount = optional_int(x.get("amount_minor"))
        ts = optional_int(x.get("ts"))
        if amount is None or amount <= 0 or ts is None:
            return None
        return ts, amount

    def _passed(self, state: list[list[int]], ts: int, amount: int) -> tuple[int, int, int]:
        """``(inflow, outflow, first_inflow_bucket)`` of the window ending at ``ts``."""
        current = ts // self.bucket_seconds
        earliest = current - self._span
        inflow = 0
        first = current + 1
        for bucket in state:
            if earliest <= bucket[_INDEX] <= current and bucket[_IN]:
                inflow += bucket[_IN]
                first = min(first, bucket[_INDEX])
        outflow = amount
        for bucket in state:
            if first <= bucket[_INDEX] <= current:
                outflow += bucket[_OUT]
        return inflow, outflow, first

    def score_one(self, x: Features, state: list[list[int]]) -> float:
        outgoing = self._outflow(x)
        if outgoing is None:
            return 0.0
        inflow, outflow, _ = self._passed(state, *outgoing)
        min_inflow = self._money.limit(currency_of(x), "min_inflow")
        if min_inflow is None or inflow < min_inflow or inflow <= 0:
            return 0.0
        return min(outflow, inflow) / inflow

    def learn_one(self, x: Features, state: list[list[int]]) -> list[list[int]]:
        amount = optional_int(x.get("amount_minor"))
        ts = optional_int(x.get("ts"))
        if amount is None or amount <= 0 or ts is None:
            return state
        if x.get("is_inflow"):
            column = _IN
        elif x.get("is_outflow"):
            column = _OUT
            currency = currency_of(x)
            if self._money.learns(currency, "min_inflow"):
                inflow, _, _ = self._passed(state, ts, amount)
                self._money.observe(currency, "min_inflow", inflow)
        else:
            return state
        index = ts // self.bucket_seconds
        for bucket in state:
            if bucket[_INDEX] == index:
                bucket[column] += amount
                break
        else:
            bucket = [index, 0, 0]
            bucket[column] = amount
            state.append(bucket)
            state.sort(key=lambda b: b[_INDEX])
        oldest = state[-1][_INDEX] - KEPT_WINDOWS * self._span
        if state[0][_INDEX] < oldest:
            state[:] = [b for b in state if b[_INDEX] >= oldest]
        return state

    def explain_one(self, x: Features, state: list[list[int]], score: float) -> list[str]:
        outgoing = self._outflow(x)
        if outgoing is None:
            return ["not scored: only money leaving the account (with an amount and a time) is"]
        ts, amount = outgoing
        inflow, outflow, first = self._passed(state, ts, amount)
        window = format_duration(self.window_seconds)
        currency = currency_of(x)
        min_inflow = self._money.limit(currency, "min_inflow")
        if min_inflow is None:
            seen = self._money.population.count(currency, "min_inflow")
            return [
                f"not scored: no min_inflow for {currency or 'money without a currency'} yet"
                f" ({seen:,} of the {self.min_population:,} window inflows to learn it from)"
            ]
        if inflow < min_inflow:
            return [
                f"{format_minor(inflow)} received in the last {window}, below the"
                f" {format_minor(min_inflow)} judged ({self._money.source(currency, 'min_inflow')})"
            ]
        since = ts - first * self.bucket_seconds
        source = self._money.source(currency, "min_inflow")
        event_type = x.get("event_type") or "outflow"
        return [
            f"{score:.0%} of the {format_minor(inflow)} received in the last {window} has left"
            f" again: {format_minor(outflow)} out within about {format_duration(since)} of the"
            f" first inflow, this {event_type} of {format_minor(amount)} included"
            f" (judged from {format_minor(min_inflow)}, {source})"
        ]

    def snapshot(self) -> dict[str, Any]:
        """The learnt limits of currencies without a configured one (JSON-able)."""
        return self._money.snapshot()

    def restore(self, snapshot: Any) -> None:
        """Put back what :meth:`snapshot` returned."""
        self._money.restore(snapshot)
