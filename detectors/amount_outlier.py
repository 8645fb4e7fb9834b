"""Amount outliers: a transaction far larger than what this account usually moves."""

from __future__ import annotations

import math
from typing import Any, ClassVar, Final

from detectors.base import Features, KeyedDetector
from detectors.counterparties import counterparty_token, remember
from detectors.money import format_minor
from detectors.params import fraction, non_negative_int

#: A learnt log amount is clipped to this many standard deviations around the
#: mean, so one extreme transaction (learnt when ``learn_flagged`` is on, or just
#: under the threshold) moves the baseline by a bounded step.
WINSOR_SD: Final = 3.0

# State layout: a JSON-able list, stored by the caller with the account.
_N, _MEAN_LOG, _VAR_LOG, _MEAN_AMOUNT, _PAYEES = range(5)


class AmountOutlier(KeyedDetector[list[Any]]):
    """How many standard deviations an amount sits above the account's usual.

    For each account the state holds exponentially weighted statistics of the
    amounts it has moved: the mean and variance of ``log(amount)``, which is
    what the score uses (amounts are roughly log-normal, and a ratio is what
    matters: 10.00 to 500.00 is as strange as 1,000.00 to 50,000.00), and the
    mean of the amount itself, which is what a person reads in the reason.

    The score is ``(log(amount) - mean) / sd`` on the high side only (an unusually
    small amount scores 0), with ``sd`` floored at ``sd_floor`` so that an
    account that always pays the same amount does not turn a few cents' change
    into an alert. The baseline is robust to the outliers it learns: each log
    amount is clipped to within ``WINSOR_SD`` standard deviations of the mean
    before it updates the statistics. Until ``min_history`` amounts have been
    learnt the score is 0.0. Events without an amount are neither scored nor
    learnt, and by default neither is money coming in (``is_outflow`` false or
    missing): a top-up or a loan disbursement is not a payment, and one
    baseline for both is so wide that a real spike no longer stands out.

    Counterparties count too: an amount going to a counterparty (or merchant)
    among the account's ``known_counterparties`` most recent ones has its
    score multiplied by ``known_counterparty_factor``: the rent paid to the
    usual landlord is less strange than the same sum to a stranger.

    The state is ``[n, mean_log, var_log, mean_amount, payees]``: the count of
    amounts learnt (int), three floats and at most ``known_counterparties``
    tokens of 8 hex digits (about 160 bytes of JSON with the defaults; a state
    of the four numbers alone, from before, is read as knowing no payee).
    ``mean_amount`` is a statistic in minor units; it becomes money again
    (rounded to an int) only to be printed.

    Parameters
    ----------
    half_life
        Number of amounts after which an amount's weight in the statistics has
        halved. Early on, while fewer amounts than that are known, every amount
        counts equally.
    min_history
        Amounts to learn before the account is scored.
    sd_floor
        Smallest standard deviation of ``log(amount)`` used in the score; 0.5
        means an amount must be ``e**(0.5 * z)`` times the usual to score ``z``
        even after a perfectly constant history.
    outflows_only
        Score and learn only money going out of the account (``is_outflow``).
    known_counterparties
        Counterparties remembered per account (the most recent); 0: none.
    known_counterparty_factor
        Factor on the score of an amount going to a remembered counterparty.

    Examples
    --------
    >>> import random
    >>> rng = random.Random(42)
    >>> detector = AmountOutlier(half_life=30, min_history=5)
    >>> state = detector.new_state()
    >>> for _ in range(42):
    ...     amount = round(129_000 * rng.lognormvariate(0.0, 0.6))
    ...     state = detector.learn_one({"amount_minor": amount, "is_outflow": True}, state)
    >>> x = {"event_type": "transfer", "amount_minor": 4_800_000, "is_outflow": True}
    >>> score = detector.score_one(x, state)
    >>> round(score, 1)
    5.4
    >>> print(*detector.explain_one(x, state, score))
    amount 48,000.00 is 28x this account's usual 1,695.40 (z=5.4 over 42 earlier transactions)
    >>> usual = {"event_type": "transfer", "amount_minor": 130_000, "is_outflow": True}
    >>> top_up = {"event_type": "top_up", "amount_minor": 4_800_000, "is_outflow": False}
    >>> detector.score_one(usual, state), detector.score_one(top_up, state)
    (0.0, 0.0)
    """

    name: ClassVar[str] = "amount_outlier"

    def __init__(
        self,
        half_life: float = 30,
        min_history: int = 5,
        sd_floor: float = 0.5,
        outflows_only: bool = True,
        known_counterparties: int = 8,
        known_counterparty_factor: float = 0.5,
    ) -> None:
        if isinstance(half_life, bool) or not isinstance(half_life, int | float):
            message = f"half_life must be a number of events, not {half_life!r}"
            raise ValueError(message)
        if not half_life > 0 or math.isinf(half_life):
            message = f"half_life must be positive and finite, not {half_life!r}"
            raise ValueError(message)
        if isinstance(min_history, bool) or not isinstance(min_history, int) or min_history < 1:
            message = f"min_history must be an int >= 1, not {min_history!r}"
            raise ValueError(message)
        if isinstance(sd_floor, bool) or not isinstance(sd_floor, int | float):
            message = f"sd_floor must be a number, not {sd_floor!r}"
            raise ValueError(message)
        if not sd_floor > 0 or math.isinf(sd_floor):
            message = f"sd_floor must be positive and finite, not {sd_floor!r}"
            raise ValueError(message)
        if not isinstance(outflows_only, bool):
            message = f"outflows_only must be true or false, not {outflows_only!r}"
            raise ValueError(message)
        self.half_life = half_life
        self.min_history = min_history
        self.sd_floor = sd_floor
        self.outflows_only = outflows_only
        non_negative_int("known_counterparties", known_counterparties)
        fraction("known_counterparty_factor", known_counterparty_factor)
        self.known_counterparties = known_counterparties
        self.known_counterparty_factor = known_counterparty_factor
        # Weight of the newest amount once the history is longer than the half-life.
        self._alpha = 1.0 - 0.5 ** (1.0 / half_life)

    def _amount(self, x: Features) -> int:
        """The amount this detector looks at, 0 for events it ignores."""
        if self.outflows_only and not x.get("is_outflow"):
            return 0
        amount: int = x.get("amount_minor") or 0
        return amount

    def new_state(self) -> list[Any]:
        return [0, 0.0, 0.0, 0.0, []]

    def _known(self, x: Features, state: list[Any]) -> bool:
        """Whether the event's counterparty is one the account paid recently."""
        token = counterparty_token(x)
        return token is not None and len(state) > _PAYEES and token in state[_PAYEES]

    def score_one(self, x: Features, state: list[Any]) -> float:
        amount = self._amount(x)
        if amount <= 0 or state[_N] < self.min_history:
            return 0.0
        sd = max(math.sqrt(state[_VAR_LOG]), self.sd_floor)
        z = (math.log(amount) - state[_MEAN_LOG]) / sd
        if z <= 0.0:
            return 0.0
        return z * self.known_counterparty_factor if self._known(x, state) else z

    def learn_one(self, x: Features, state: list[Any]) -> list[Any]:
        amount = self._amount(x)
        if amount <= 0:
            return state
        n, mean_log, var_log, mean_amount = state[:_PAYEES]
        payees: list[str] = list(state[_PAYEES]) if len(state) > _PAYEES else []
        token = counterparty_token(x)
        if token is not None and self.known_counterparties:
            remember(payees, token, self.known_counterparties)
        value = math.log(amount)
        learnt_amount = float(amount)
        if n >= self.min_history:
            reach = WINSOR_SD * max(math.sqrt(var_log), self.sd_floor)
            clipped = min(max(value, mean_log - reach), mean_log + reach)
            if clipped != value:
                value = clipped
                learnt_amount = math.exp(clipped)
        n += 1
        # 1/n while the history is short: a plain mean, not one dominated by
        # whatever the state was initialised with.
        alpha = max(self._alpha, 1.0 / n)
        diff = value - mean_log
        step = alpha * diff
        mean_log += step
        var_log = (1.0 - alpha) * (var_log + diff * step)
        mean_amount += alpha * (learnt_amount - mean_amount)
        return [n, mean_log, var_log, mean_amount, payees]

    def explain_one(self, x: Features, state: list[Any], score: float) -> list[str]:
        amount = self._amount(x)
        n = int(state[_N])
        if amount <= 0:
            what = "outgoing transactions" if self.outflows_only else "transactions"
            return [f"not scored: amount outliers apply to {what} only"]
        if n < self.min_history:
            return [f"only {n} earlier transactions; scoring starts after {self.min_history}"]
        usual = max(round(state[_MEAN_AMOUNT]), 1)
        ratio = amount / usual
        times = f"{ratio:,.0f}x" if ratio >= 10 else f"{ratio:.1f}x"
        noun = "transaction" if n == 1 else "transactions"
        known = self._known(x, state)
        sd = max(math.sqrt(state[_VAR_LOG]), self.sd_floor)
        z = max(0.0, (math.log(amount) - state[_MEAN_LOG]) / sd)
        reasons = [
            f"amount {format_minor(amount)} is {times} this account's usual"
            f" {format_minor(usual)} (z={z:.1f} over {n} earlier {noun})"
        ]
        if known:
            reasons.append(
                f"to a counterparty among the {len(state[_PAYEES])} it paid most recently:"
                f" score {z:.1f} x {self.known_counterparty_factor:g} = {score:.1f}"
            )
        return reasons
