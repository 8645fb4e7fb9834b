"""Fan-out: one account paying many different counterparties within a window."""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Sequence
from typing import ClassVar, Final

from detectors.base import Features, KeyedDetector
from detectors.hashing import stable_hash
from detectors.money import format_minor
from detectors.params import optional_int, positive_int, string_set
from detectors.timeline import KEPT_WINDOWS, densest_window, format_duration

#: Most counterparties an account's state remembers (the most recently paid).
MAX_COUNTERPARTIES: Final = 64

# One remembered counterparty: [counterparty hash, last_ts].
_CP, _TS = range(2)


class FanOut(KeyedDetector[list[list[int]]]):
    """Many different counterparties paid by one account within a window.

    For an outgoing event of one of ``event_types`` that names a
    ``counterparty_id``, the detector finds the window of ``window_seconds``
    (ends included) around the event that holds the most different
    counterparties paid, this one included, and scores
    ``distinct / min_distinct``: 1.0 or more means ``min_distinct``
    counterparties within the window. Other events score 0.0.

    It keeps its own counterparties rather than reading the worker's
    ``distinct_cp_*`` velocity features, for three reasons: those count every
    outgoing event, and paying many different *merchants* is ordinary
    shopping while sending transfers to many different *accounts* is how funds
    are spread over mules; their windows are fixed at 1 minute, 1 hour and 24
    hours; and they end at the account's newest event, so an event that
    arrives late is not placed among its neighbours. The velocity detector
    already limits ``distinct_cp_*`` over all outflows.

    State: ``[[counterparty hash, last_ts], ...]`` sorted by ``last_ts``, one
    pair per counterparty paid within ``2 * window_seconds`` of the newest
    event, at most
    :data:`MAX_COUNTERPARTIES` (the most recently paid): 64 pairs of ints at
    most (under 2 KB of JSON), whatever the traffic, and an empty list for an
    account that sent no transfer for two days. Counterparty ids are kept as 48-bit hashes
    (:func:`detectors.hashing.stable_hash`), so a reason can count them but not name them.
    Only the last time each counterparty was paid is kept: a counterparty paid
    both long before and just after a late event counts at its last time.

    The state is a record of facts, not a model an attack could teach: it is
    learnt from every event, flagged or not (:attr:`keeps_ledger`; the
    registry builds this detector with ``learn_flagged`` on), so that its
    counts always equal a recount of the stream, as the worker's velocity
    windows do. Otherwise a counterparty paid by a transfer that alerted would be missing from the
    next window and the pattern could fall back under the limit while it goes on.

    Parameters
    ----------
    min_distinct
        Different counterparties within one window that score 1.0 (at most 64).
    window_seconds
        Width of the window in seconds of event time.
    event_types
        Outgoing event types that count.
    exempt_accounts
        Account ids never scored (an escrow account paying out to customers
        fans out by design).

    Examples
    --------
    >>> detector = FanOut(min_distinct=4, window_seconds=3_600)
    >>> state = detector.new_state()
    >>> noon = 1_709_553_600
    >>> for minute in range(3):
    ...     x = {"event_type": "transfer", "amount_minor": 90_000, "is_outflow": True,
    ...          "counterparty_id": f"acct-{minute}", "ts": noon + 60 * minute}
    ...     state = detector.learn_one(x, state)
    >>> x = {"event_type": "transfer", "amount_minor": 90_000, "is_outflow": True,
    ...      "counterparty_id": "acct-new", "ts": noon + 600}
    >>> detector.score_one(x, state)
    1.0
    >>> print(*detector.explain_one(x, state, 1.0), sep="\\n")
    4 different counterparties paid by transfer within 10 min (alert at 4 within 1 h)
    this transfer of 900.00 goes to a counterparty not paid within 1 h of it
    >>> detector.score_one({**x, "event_type": "payment"}, state)
    0.0
    """

    name: ClassVar[str] = "fan_out"
    #: Every counterparty paid, flagged or not, is kept.
    keeps_ledger: ClassVar[bool] = True

    def __init__(
        self,
        min_distinct: int = 10,
        window_seconds: int = 86_400,
        event_types: Sequence[str] = ("transfer",),
        exempt_accounts: Sequence[str] = (),
    ) -> None:
        positive_int("min_distinct", min_distinct)
        if min_distinct > MAX_COUNTERPARTIES:
            message = f"min_distinct must be at most {MAX_COUNTERPARTIES}, not {min_distinct!r}"
            raise ValueError(message)
        positive_int("window_seconds", window_seconds)
        self._types = string_set("event_types", event_types, allow_empty=False)
        self._exempt = string_set("exempt_accounts", exempt_accounts)
        self.min_distinct = min_distinct
        self.window_seconds = window_seconds
        self.event_types = event_types
        self.exempt_accounts = exempt_accounts

    def new_state(self) -> list[list[int]]:
        return []

    def _payee(self, x: Features) -> tuple[int, int] | None:
        """``(ts, counterparty_hash)`` of a counting event, ``None`` otherwise."""
        if x.get("event_type") not in self._types or not x.get("is_outflow"):
            return None
        if x.get("account_id") in self._exempt:
            return None
        amount = optional_int(x.get("amount_minor"))
        ts = optional_int(x.get("ts"))
        counterparty = x.get("counterparty_id")
        if amount is None or amount <= 0 or ts is None or not isinstance(counterparty, str):
            return None
        if not counterparty:
            return None
        return ts, stable_hash(counterparty)

    def _window(self, state: list[list[int]], ts: int, cp: int) -> tuple[int, int, bool]:
        """``(distinct, span_seconds, paid_nearby)`` of the densest window around this event."""
        # The state is sorted by time: so are the other counterparties' times.
        times = [kept[_TS] for kept in state if kept[_CP] != cp]
        anchor = bisect_right(times, ts)
        times.insert(anchor, ts)
        lo, hi = densest_window(times, anchor, self.window_seconds)
        seen = any(
            kept[_CP] == cp and abs(kept[_TS] - ts) <= self.window_seconds for kept in state
        )
        return hi - lo, times[hi - 1] - times[lo], seen

    def score_one(self, x: Features, state: list[list[int]]) -> float:
        payee = self._payee(x)
        if payee is None:
            return 0.0
        distinct, _, _ = self._window(state, *payee)
        return distinct / self.min_distinct

    def learn_one(self, x: Features, state: list[list[int]]) -> list[list[int]]:
        payee = self._payee(x)
        if payee is None:
            return state
        ts, cp = payee
        for index, kept in enumerate(state):
            if kept[_CP] == cp:
                if kept[_TS] >= ts:
                    return state
                del state[index]
                break
        insort(state, [cp, ts], key=lambda kept: kept[_TS])
        # Sorted by time: the stale and the surplus are at the front.
        oldest = state[-1][_TS] - KEPT_WINDOWS * self.window_seconds
        stale = bisect_left(state, oldest, key=lambda kept: kept[_TS])
        del state[: max(stale, len(state) - MAX_COUNTERPARTIES)]
        return state

    def explain_one(self, x: Features, state: list[list[int]], score: float) -> list[str]:
        payee = self._payee(x)
        kinds = " or ".join(sorted(self._types))
        if payee is None and x.get("account_id") in self._exempt:
            return [
                f"not scored: {x.get('account_id')} is one of the {len(self._exempt)} accounts"
                f" exempt from fan-out"
            ]
        if payee is None:
            return [
                f"not scored: only outgoing {kinds} events with an amount, a time and a"
                f" counterparty count (limit {self.min_distinct} counterparties)"
            ]
        distinct, span, seen = self._window(state, *payee)
        event_type = x.get("event_type")
        amount = optional_int(x.get("amount_minor")) or 0
        noun = "counterparty" if distinct == 1 else "different counterparties"
        novelty = "already paid" if seen else "not paid"
        within = format_duration(self.window_seconds)
        return [
            f"{distinct} {noun} paid by {kinds} within {format_duration(span)}"
            f" (alert at {self.min_distinct} within {within})",
            f"this {event_type} of {format_minor(amount)} goes to a counterparty {novelty}"
            f" within {within} of it",
        ]
