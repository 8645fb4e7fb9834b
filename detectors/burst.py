"""Spending bursts: outflows far above the account's own baseline, to new counterparties."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar, Final

from detectors.base import Features, KeyedDetector
from detectors.counterparties import counterparty_token, remember
from detectors.limits import PopulationQuantiles, currency_of
from detectors.money import format_minor
from detectors.params import optional_int, positive_int, positive_number
from detectors.timeline import format_duration

#: Counterparties remembered per account (the most recently paid), as 8-hex-digit tokens.
KNOWN_COUNTERPARTIES: Final = 16
#: A learnt log amount is clipped to this many standard deviations around the mean.
WINSOR_SD: Final = 3.0

#: Event types with a baseline of their own per account (the first seen; others share "").
MAX_TYPES: Final = 4

# State: [baselines, n, last_ts, gap_log, counterparties, run_ts, run_evidence, run_count,
#         run_sum, balance, run_start]; baselines: {event type: [n, mean_log, var_log]}
(_BASE, _N, _LAST_TS, _GAP, _CPS, _RUN_TS, _RUN_EV, _RUN_COUNT, _RUN_SUM,
 _BALANCE, _RUN_START) = range(11)
_NEVER: Final = -1


class SpendingBurst(KeyedDetector[list[Any]]):
    """A run of payments or transfers far above what the account usually does, to new payees.

    Every outgoing event (``is_outflow``) is weighed against the account's own
    baseline: how far its amount sits above the account's usual amounts (a
    z-score of ``log(amount)`` over exponentially weighted statistics, as
    :class:`~detectors.amount_outlier.AmountOutlier` keeps), whether its
    counterparty (or merchant) is one the account has paid before, and how
    soon it follows the previous outflow compared with the account's usual
    pace. Its *evidence* is

    ``max(0, z - 1)``, times ``novelty_weight`` for a counterparty the account
    never paid (1 for a known one), plus ``pace_weight`` when it follows the
    previous outflow at least ten times faster than usual (at a later time:
    outflows stamped alike say nothing of pace, since clocks of an hour or a
    day stamp whole sequences with one time), plus
    ``drain_weight`` when it takes at least ``drain_fraction`` of the
    balance the detector has seen come in (top-ups, refunds ... minus what
    went out since).

    Evidence adds up over a *run*: the run's total halves every
    ``half_life_seconds`` of event time, so a few strong outflows within
    hours score like one very strong one, and a day of ordinary spending
    fades. The score is the run's total with this event included.

    Before ``min_history`` outflows the account has no baseline of its own:
    amounts are compared with the population's in the same currency (the
    median and the 84th percentile of the outflows the worker has seen in that
    currency, kept in :class:`~detectors.limits.PopulationQuantiles`, the
    detector's global state), and a new counterparty is not news. The
    baseline learns only outflows that do not alert (``learn_flagged`` off), so
    a burst never becomes the account's usual; the run and the balance are
    facts and are updated in :meth:`learn_one` for unflagged events only as
    well, so an alerting burst keeps alerting while it goes on.

    State: ``[baselines, n, last_ts, gap_log, counterparties, run_ts,
    run_evidence, run_count, run_sum, balance, run_start]``: ``baselines``
    maps up to :data:`MAX_TYPES` event types to ``[n, mean_log, var_log]``
    (floats rounded to 4 and 5 decimals), then nine numbers and at most
    :data:`KNOWN_COUNTERPARTIES` tokens of 8 hex digits: at most about 450
    bytes of JSON whatever the account's traffic, about 250 for an account
    that only pays.

    Parameters
    ----------
    half_life
        Outflows after which an amount's weight in the baseline has halved.
    min_history
        Outflows learnt before the account's own baseline is used.
    sd_floor
        Smallest standard deviation of ``log(amount)`` used in the z-score.
    novelty_weight
        Factor on the amount evidence of an outflow to a counterparty never paid.
    pace_weight
        Evidence added for an outflow ten times faster than the account's pace.
    drain_fraction
        Share of the known balance an outflow to a new counterparty must move to
        count as draining the account.
    drain_weight
        Evidence added for a draining outflow to a new counterparty.
    half_life_seconds
        Event time after which a run's evidence has halved.
    min_population
        Outflows of a currency seen before a new account is judged against them.

    Examples
    --------
    >>> import random
    >>> rng = random.Random(11)
    >>> detector = SpendingBurst()
    >>> state = detector.new_state()
    >>> noon = 1_709_553_600
    >>> for day in range(40):
    ...     x = {"event_type": "payment", "is_outflow": True, "currency": "USD",
    ...          "amount_minor": round(4_000 * rng.lognormvariate(0.0, 0.5)),
    ...          "counterparty_id": f"grocer-{day % 4}", "ts": noon + day * 86_400}
    ...     state = detector.learn_one(x, state)
    >>> first = {"event_type": "payment", "is_outflow": True, "currency": "USD",
    ...          "amount_minor": 12_000, "counterparty_id": "shop-x", "ts": noon + 41 * 86_400}
    >>> round(detector.score_one(first, state), 1)  # under the shipped threshold of 5.0
    2.4
    >>> state = detector.learn_one(first, state)
    >>> second = {**first, "amount_minor": 30_000, "counterparty_id": "shop-y",
    ...           "ts": first["ts"] + 900}
    >>> score = detector.score_one(second, state)
    >>> round(score, 1)
    8.5
    >>> print(*detector.explain_one(second, state, score), sep="\\n")
    2 outflows in 15 min, 420.00 in all, far above this account's usual
    payment of 300.00 to a counterparty never paid before: 8.2x the usual 36.74 (z=3.6 over 41 earlier payments)
    follows the previous outflow after 15 min, where this account usually waits 1 d
    """  # noqa: E501 - a doctest's expected output is one line

    name: ClassVar[str] = "spending_burst"

    def __init__(
        self,
        half_life: float = 30,
        min_history: int = 5,
        sd_floor: float = 0.5,
        novelty_weight: float = 2.0,
        pace_weight: float = 1.0,
        drain_fraction: float = 0.8,
        drain_weight: float = 2.0,
        half_life_seconds: int = 14_400,
        min_population: int = 1_000,
    ) -> None:
        positive_number("half_life", half_life)
        positive_int("min_history", min_history)
        positive_number("sd_floor", sd_floor)
        positive_number("novelty_weight", novelty_weight)
        positive_number("pace_weight", pace_weight)
        positive_number("drain_fraction", drain_fraction)
        positive_number("drain_weight", drain_weight)
        positive_int("half_life_seconds", half_life_seconds)
        positive_int("min_population", min_population)
        self.half_life = half_life
        self.min_history = min_history
        self.sd_floor = sd_floor
        self.novelty_weight = novelty_weight
        self.pace_weight = pace_weight
        self.drain_fraction = drain_fraction
        self.drain_weight = drain_weight
        self.half_life_seconds = half_life_seconds
        self.min_population = min_population
        self._alpha = 1.0 - 0.5 ** (1.0 / half_life)
        self._population = PopulationQuantiles()

    def new_state(self) -> list[Any]:
        return [{}, 0, _NEVER, 0.0, [], _NEVER, 0.0, 0, 0, 0, _NEVER]

    # -- the signals --------------------------------------------------------------------------
    @staticmethod
    def _outflow(x: Features) -> tuple[int, int] | None:
        """``(ts, amount)`` of an outgoing event with an amount and a time."""
        if not x.get("is_outflow"):
            return None
        amount = optional_int(x.get("amount_minor"))
        ts = optional_int(x.get("ts"))
        if amount is None or amount <= 0 or ts is None:
            return None
        return ts, amount

    @staticmethod
    def _kind(x: Features, state: list[Any]) -> str:
        """The baseline an event of this type is judged against in ``state``."""
        event_type = x.get("event_type")
        kind = event_type if isinstance(event_type, str) else ""
        if kind in state[_BASE] or len(state[_BASE]) < MAX_TYPES:
            return kind
        return ""

    def _baseline(self, x: Features, state: list[Any]) -> tuple[float, float, str] | None:
        """``(mean_log, sd_log, whose)`` the amount is judged against, if any."""
        own = state[_BASE].get(self._kind(x, state))
        if own is not None and own[0] >= self.min_history:
            return own[1], max(math.sqrt(own[2]), self.sd_floor), "account"
        currency = currency_of(x)
        measure = f"amount:{x.get('event_type')}"
        if self._population.count(currency, measure) < self.min_population:
            return None
        median = self._population.quantile(currency, measure, 0.5)
        upper = self._population.quantile(currency, measure, 0.84)
        if median is None or upper is None:
            return None
        return math.log(median), max(math.log(upper / median), self.sd_floor), "population"

    def _evidence(self, x: Features, state: list[Any]) -> tuple[float, dict[str, Any]] | None:
        outgoing = self._outflow(x)
        baseline = self._baseline(x, state)
        if outgoing is None or baseline is None:
            return None
        ts, amount = outgoing
        mean, sd, whose = baseline
        z = (math.log(amount) - mean) / sd
        counterparty = counterparty_token(x)
        own = whose == "account"
        novel = own and counterparty is not None and counterparty not in state[_CPS]
        # Only an amount clearly above the baseline is evidence; pace and draining the
        # account add to it, they are not evidence alone (a busy hour is not a burst).
        above = z > 1.0
        evidence = (z - 1.0) * (self.novelty_weight if novel else 1.0) if above else 0.0
        gap = ts - state[_LAST_TS] if state[_LAST_TS] != _NEVER else None
        fast = (
            above and own and gap is not None and gap > 0 and state[_N] >= 2
            and math.log1p(gap) + math.log(10.0) <= state[_GAP]
        )
        if fast:
            evidence += self.pace_weight
        balance = state[_BALANCE]
        drains = above and novel and balance > 0 and amount >= self.drain_fraction * balance
        if drains:
            evidence += self.drain_weight
        detail = {"ts": ts, "amount": amount, "z": z, "mean": mean, "whose": whose,
                  "novel": novel, "gap": gap, "fast": fast, "drains": drains,
                  "balance": balance}
        return evidence, detail

    def _run_before(self, state: list[Any], ts: int) -> float:
        """The run's evidence, decayed to ``ts``."""
        if state[_RUN_TS] == _NEVER:
            return 0.0
        elapsed = max(0, ts - state[_RUN_TS])
        return float(state[_RUN_EV]) * 0.5 ** (elapsed / self.half_life_seconds)

    # -- the contract -------------------------------------------------------------------------
    def score_one(self, x: Features, state: list[Any]) -> float:
        found = self._evidence(x, state)
        if found is None:
            return 0.0
        evidence, detail = found
        if evidence <= 0.0:
            return 0.0
        return self._run_before(state, detail["ts"]) + evidence

    def learn_one(self, x: Features, state: list[Any]) -> list[Any]:
        amount = optional_int(x.get("amount_minor"))
        if amount is None or amount <= 0:
            return state
        if x.get("is_inflow"):
            state[_BALANCE] += amount
            return state
        outgoing = self._outflow(x)
        if outgoing is None:
            return state
        ts, amount = outgoing
        found = self._evidence(x, state)
        if found is not None and found[0] > 0.0:
            run = self._run_before(state, ts)
            if run < 0.01:  # a fresh run
                state[_RUN_COUNT], state[_RUN_SUM], state[_RUN_START] = 0, 0, ts
            state[_RUN_TS] = max(ts, state[_RUN_TS])
            state[_RUN_EV] = round(run + found[0], 4)
            state[_RUN_COUNT] += 1
            state[_RUN_SUM] += amount
        self._population.add(currency_of(x), f"amount:{x.get('event_type')}", amount)
        state[_BALANCE] = max(0, state[_BALANCE] - amount)
        self._learn_baseline(state, self._kind(x, state), ts, amount)
        counterparty = counterparty_token(x)
        if counterparty is not None:
            remember(state[_CPS], counterparty, KNOWN_COUNTERPARTIES)
        return state

    def _learn_baseline(self, state: list[Any], kind: str, ts: int, amount: int) -> None:
        n, mean, var = state[_BASE].get(kind) or (0, 0.0, 0.0)
        value = math.log(amount)
        if n >= self.min_history:
            reach = WINSOR_SD * max(math.sqrt(var), self.sd_floor)
            value = min(max(value, mean - reach), mean + reach)
        n += 1
        alpha = max(self._alpha, 1.0 / n)
        diff = value - mean
        mean += alpha * diff
        var = (1.0 - alpha) * (var + diff * alpha * diff)
        # Rounded: the state is stored per account, and a 17-digit float costs 19 bytes.
        state[_BASE][kind] = [n, round(mean, 4), round(var, 5)]
        state[_N] += 1
        if state[_LAST_TS] != _NEVER and ts >= state[_LAST_TS]:
            gap = math.log1p(ts - state[_LAST_TS])
            # the first gap is the baseline; then a weighted mean over the same half-life
            weight = max(self._alpha, 1.0 / state[_N])
            state[_GAP] = round(
                gap if state[_N] == 2 else state[_GAP] + weight * (gap - state[_GAP]), 4)
        state[_LAST_TS] = max(ts, state[_LAST_TS])

    def explain_one(self, x: Features, state: list[Any], score: float) -> list[str]:
        found = self._evidence(x, state)
        if found is None:
            if self._outflow(x) is None:
                return ["not scored: only money leaving the account (with an amount and a time) is"]
            return [
                f"not scored: fewer than {self.min_history} outflows of this type learnt, and fewer"
                f" than {self.min_population:,} outflows seen in"
                f" {currency_of(x) or 'this currency'} to compare with"
            ]
        _, d = found
        usual = max(1, round(math.exp(d["mean"])))
        event_type = x.get("event_type") or "outflow"
        whose = "this account's" if d["whose"] == "account" else "the population's"
        count = state[_RUN_COUNT] + 1 if self._run_before(state, d["ts"]) >= 0.01 else 1
        total = (state[_RUN_SUM] if count > 1 else 0) + d["amount"]
        reasons = []
        if count > 1:
            span = format_duration(max(0, d["ts"] - self._run_start(state, d["ts"])))
            reasons.append(
                f"{count} outflows in {span}, {format_minor(total)} in all, far above"
                f" {whose} usual"
            )
        to = "a counterparty never paid before" if d["novel"] else "a known counterparty"
        ratio = d["amount"] / usual
        times = f"{ratio:,.0f}x" if ratio >= 10 else f"{ratio:.1f}x"
        own = state[_BASE].get(self._kind(x, state)) or [0]
        kind = f"{x.get('event_type')}s" if x.get("event_type") else "outflows"
        over = f"{own[0]} earlier {kind}" if d["whose"] == "account" else f"the currency's {kind}"
        reasons.append(
            f"{event_type} of {format_minor(d['amount'])} to {to}: {times} the usual"
            f" {format_minor(usual)} (z={d['z']:.1f} over {over})"
        )
        if d["fast"]:
            usual_gap = format_duration(round(math.expm1(state[_GAP])))
            reasons.append(
                f"follows the previous outflow after {format_duration(d['gap'])}, where this"
                f" account usually waits {usual_gap}"
            )
        if d["drains"]:
            reasons.append(
                f"moves {d['amount'] / d['balance']:.0%} of the {format_minor(d['balance'])}"
                f" balance seen come in"
            )
        return reasons

    @staticmethod
    def _run_start(state: list[Any], ts: int) -> int:
        """When the current run began."""
        return int(state[_RUN_START]) if state[_RUN_START] != _NEVER else ts

    def snapshot(self) -> Mapping[str, Any]:
        """The population's outflow amounts per currency (JSON-able)."""
        return self._population.snapshot()

    def restore(self, snapshot: Any) -> None:
        """Put back what :meth:`snapshot` returned."""
        self._population.restore(snapshot)
