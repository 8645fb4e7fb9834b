"""Precipitated funds: a wallet holding a large balance on the platform for too long."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Final

from detectors.base import Features, KeyedDetector
from detectors.limits import MoneyLimits, currency_of
from detectors.money import format_minor
from detectors.params import optional_int, positive_int
from detectors.timeline import format_duration, format_time

#: Index of each field in the state list (see :class:`PrecipitatedFunds`).
BALANCE: Final = 0
ABOVE_SINCE: Final = 1
REPORTED: Final = 2
DEFICIT: Final = 3
DEFICIT_TS: Final = 4
EPISODE_LIMIT: Final = 5
#: ``ABOVE_SINCE`` when the balance is at or below the limit.
NOT_ABOVE: Final = -1


def balance_minor(state: Sequence[int] | None) -> int:
    """The wallet balance held in a :class:`PrecipitatedFunds` state, minor units.

    For metrics: the sum over accounts is the money sitting on the platform.

    Examples
    --------
    >>> balance_minor([4_800_000, -1, 0, 0, 0, 0])
    4800000
    >>> balance_minor(None)
    0
    """
    return int(state[BALANCE]) if state else 0


class PrecipitatedFunds(KeyedDetector[list[int]]):
    """A wallet holding more than a limit for longer than a dwell time.

    The detector keeps a running balance of the account's wallet: incoming
    events (``is_inflow``) add their amount, outgoing ones (``is_outflow``)
    subtract it, in integer minor units, and the balance never goes below 0.
    The account's balance before monitoring started is unknown; flooring at 0
    makes the running balance a lower bound of the true one (the true balance
    is this plus whatever was there before), so an alert never rests on money
    that may not be there.

    Events of one account can arrive out of order (lending and payments are
    separate topics). An outflow larger than the balance leaves a *deficit*
    stamped with its time; an inflow that happened before that time (it
    arrives late) first covers the deficit, as it would have in event order,
    instead of inflating the balance.

    The balance limit is money, so it is per currency (``currency_limits``,
    limit name ``balance_limit``; the currency is the event's, an account is
    assumed to hold one). In a currency without one, it is the
    ``learnt_quantile`` of the positive running balances seen after events in
    that currency, once ``min_population`` of them have been seen (see
    :mod:`detectors.limits`); no episode starts before. Learnt limits are the
    detector's global state (:meth:`snapshot`).

    When the balance rises above the limit the episode starts
    (its event time is kept); when it falls back to the limit or below, the
    episode ends. Without timers, the detector learns that the dwell time has
    passed from the account's next event: an event at ``ts`` during an episode
    scores ``(ts - above_since) / max_dwell_seconds`` if that is 1.0 or more,
    so any event (a login will do) once the balance has stayed above the limit
    for ``max_dwell_seconds`` or longer scores 1.0 or more; earlier ones score
    0.0. An episode is reported once: its first event past the dwell time
    marks it, and later events of the same episode score 0.0. The threshold
    must therefore be at most 1.0 (the shipped 1.0); the dwell time itself is
    ``max_dwell_seconds``. An account with no event after the dwell time
    passes is not reported until it has one.

    The state is a ledger of facts that must include every event, flagged or
    not (:attr:`keeps_ledger`): the registry builds this detector with
    ``learn_flagged`` on.

    State layout, a list of six ints (indices are module constants):

    * ``state[BALANCE]``: the running balance in minor units, >= 0. Read it
      with :func:`balance_minor` to export totals as metrics;
    * ``state[ABOVE_SINCE]``: event time the balance rose above the limit, or
      ``-1`` (:data:`NOT_ABOVE`);
    * ``state[REPORTED]``: 1 once the current episode has been reported, else 0;
    * ``state[DEFICIT]``: outflows not covered by the balance, minor units;
    * ``state[DEFICIT_TS]``: event time of the latest of those outflows;
    * ``state[EPISODE_LIMIT]``: the limit the balance rose above, minor units
      (0 outside an episode), so that a login, which carries no currency, is
      judged and explained with it. States of five ints (before it) are read too.

    Events without ``ts`` change nothing.

    Parameters
    ----------
    currency_limits
        Currency to ``{"balance_limit": minor units}``: the balance above which a
        wallet's dwell time counts.
    max_dwell_seconds
        How long a balance may stay above the limit before it is reported.
    learnt_quantile
        Quantile of a currency's balances used as its limit where none is configured.
    min_population
        Balances of a currency to see before its learnt limit applies.

    Examples
    --------
    >>> detector = PrecipitatedFunds(currency_limits={"CNY": {"balance_limit": 5_000_000}},
    ...                              max_dwell_seconds=259_200)
    >>> state = detector.new_state()
    >>> monday = 1_709_510_400
    >>> top_up = {"event_type": "top_up", "amount_minor": 12_000_000, "is_inflow": True,
    ...           "currency": "CNY", "ts": monday}
    >>> state = detector.learn_one(top_up, state)
    >>> balance_minor(state)
    12000000
    >>> login = {"event_type": "login", "amount_minor": 0, "currency": "CNY",
    ...          "ts": monday + 4 * 86_400}
    >>> score = detector.score_one(login, state)
    >>> round(score, 2)
    1.33
    >>> print(*detector.explain_one(login, state, score), sep="\\n")
    balance 120,000.00 has stayed above the 50,000.00 limit (configured for CNY) for 4 d, since 2024-03-04 00:00 UTC (dwell limit 3 d)
    >>> state = detector.learn_one(login, state)
    >>> detector.score_one({**login, "ts": monday + 5 * 86_400}, state)
    0.0
    """  # noqa: E501 - a doctest's expected output is one line

    name: ClassVar[str] = "precipitated_funds"
    #: Every event, flagged or not, must update the balance.
    keeps_ledger: ClassVar[bool] = True
    #: The balance held (minor units) and whether it is above the limit, summed over a
    #: worker's accounts: the money sitting on the platform and the wallets holding too much.
    gauge_names: ClassVar[tuple[str, ...]] = ("held_minor", "above_limit")

    def __init__(
        self,
        currency_limits: Mapping[str, Mapping[str, int]] | None = None,
        max_dwell_seconds: int = 259_200,
        learnt_quantile: float = 0.99,
        min_population: int = 1_000,
    ) -> None:
        positive_int("max_dwell_seconds", max_dwell_seconds)
        self._money = MoneyLimits(
            ("balance_limit",), currency_limits or {}, learnt_quantile, min_population
        )
        self.currency_limits = currency_limits
        self.max_dwell_seconds = max_dwell_seconds
        self.learnt_quantile = learnt_quantile
        self.min_population = min_population
        # configured limits are fixed once built: the gauges read this on every event
        self._smallest_limit = min(
            (limits["balance_limit"] for limits in self._money.configured.values()
             if "balance_limit" in limits), default=2**63 - 1)

    def balance_limit_for(self, currency: str) -> int | None:
        """The balance limit in ``currency`` (minor units), ``None`` while it is not known."""
        return self._money.limit(currency, "balance_limit")

    @property
    def balance_limit_minor(self) -> int:
        """The smallest configured balance limit, for wallet gauges that take one number.

        Prefer :meth:`balance_limit_for`: limits are per currency. Without any
        configured limit this is the largest int64, so nothing counts as above it.
        """
        return self._smallest_limit

    def new_state(self) -> list[int]:
        return [0, NOT_ABOVE, 0, 0, 0, 0]

    def gauges(self, state: list[int] | None) -> tuple[int, ...]:
        """The balance held and 1 when it is above :attr:`balance_limit_minor`.

        >>> detector = PrecipitatedFunds(currency_limits={"CNY": {"balance_limit": 100}})
        >>> detector.gauges([250, -1, 0, 0, 0, 0]), detector.gauges(None)
        ((250, 1), (0, 0))
        """
        balance = balance_minor(state)
        return balance, int(balance > self._smallest_limit)

    def _held(self, x: Features, state: list[int]) -> int | None:
        """Seconds the balance has been above the limit at this event, if it is past due."""
        ts = optional_int(x.get("ts"))
        above_since = state[ABOVE_SINCE]
        if ts is None or above_since == NOT_ABOVE or state[REPORTED]:
            return None
        held = ts - above_since
        return held if held >= self.max_dwell_seconds else None

    def score_one(self, x: Features, state: list[int]) -> float:
        held = self._held(x, state)
        return 0.0 if held is None else held / self.max_dwell_seconds

    def learn_one(self, x: Features, state: list[int]) -> list[int]:
        ts = optional_int(x.get("ts"))
        if ts is None:
            return state
        if self._held(x, state) is not None:
            state[REPORTED] = 1
        amount = optional_int(x.get("amount_minor")) or 0
        if amount > 0 and x.get("is_inflow"):
            if state[DEFICIT] and ts <= state[DEFICIT_TS]:
                covered = min(amount, state[DEFICIT])
                state[DEFICIT] -= covered
                amount -= covered
            state[BALANCE] += amount
        elif amount > 0 and x.get("is_outflow"):
            if amount > state[BALANCE]:
                state[DEFICIT] += amount - state[BALANCE]
                state[DEFICIT_TS] = max(state[DEFICIT_TS], ts)
                state[BALANCE] = 0
            else:
                state[BALANCE] -= amount
        if amount <= 0 or not (x.get("is_inflow") or x.get("is_outflow")):
            # Only money moving changes the balance, and only money has a currency
            # (a login carries none): other events leave the episode as it is.
            return state
        currency = currency_of(x)
        if state[BALANCE] > 0:
            self._money.observe(currency, "balance_limit", state[BALANCE])
        limit = self.balance_limit_for(currency)
        if len(state) <= EPISODE_LIMIT:
            state.append(0)
        if limit is not None and state[BALANCE] > limit:
            if state[ABOVE_SINCE] == NOT_ABOVE:
                state[ABOVE_SINCE] = ts
                state[EPISODE_LIMIT] = limit
        else:
            state[ABOVE_SINCE] = NOT_ABOVE
            state[REPORTED] = 0
            state[EPISODE_LIMIT] = 0
        return state

    def explain_one(self, x: Features, state: list[int], score: float) -> list[str]:
        currency = currency_of(x)
        known = self.balance_limit_for(currency)
        if state[ABOVE_SINCE] != NOT_ABOVE and len(state) > EPISODE_LIMIT:
            known = state[EPISODE_LIMIT]  # the limit the balance rose above
        if known is None:
            seen = self._money.population.count(currency, "balance_limit")
            return [
                f"not scored: no balance limit for {currency or 'money without a currency'} yet"
                f" ({seen:,} of the {self.min_population:,} balances to learn it from)"
            ]
        limit = f"{format_minor(known)} limit"
        if currency:
            limit += f" ({self._money.source(currency, 'balance_limit')})"
        dwell = format_duration(self.max_dwell_seconds)
        balance = format_minor(state[BALANCE])
        ts = optional_int(x.get("ts"))
        above_since = state[ABOVE_SINCE]
        if above_since == NOT_ABOVE or ts is None:
            return [f"balance {balance} is not above the {limit}"]
        held = format_duration(ts - above_since)
        if state[REPORTED]:
            return [
                f"balance {balance} above the {limit} for {held}; this episode was"
                f" reported already"
            ]
        return [
            f"balance {balance} has stayed above the {limit} for {held}, since"
            f" {format_time(above_since)} (dwell limit {dwell})"
        ]

    def snapshot(self) -> dict[str, Any]:
        """The learnt limits of currencies without a configured one (JSON-able)."""
        return self._money.snapshot()

    def restore(self, snapshot: Any) -> None:
        """Put back what :meth:`snapshot` returned."""
        self._money.restore(snapshot)
