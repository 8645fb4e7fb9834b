"""Account takeover: a credential change or a new device, then a large outflow."""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from typing import Any, ClassVar, Final

from detectors.base import Features, KeyedDetector
from detectors.limits import MoneyLimits, currency_of
from detectors.money import format_minor
from detectors.params import optional_int, positive_int, positive_number
from detectors.timeline import format_duration

#: Outgoing amounts kept to say what is usual for the account (the newest).
USUAL_OUTFLOWS: Final = 8
#: Hex characters of a device hash kept in the state: 48 bits, ample for 8 devices.
DEVICE_PREFIX: Final = 12
#: Where no limit is configured: large from the 99th percentile of the currency's
#: outgoing amounts, judged from its median.
DEFAULT_LEARNT_QUANTILES: Final = {"large_outflow": 0.99, "min_outflow": 0.5}
#: Trigger kind of a device never seen on the account.
NEW_DEVICE: Final = "new_device"

# State: [devices, trigger_ts, trigger_kind, outflows].
_DEVICES, _TRIGGER_TS, _TRIGGER_KIND, _OUTFLOWS = range(4)
_NO_TRIGGER: Final = -1


class AccountTakeover(KeyedDetector[list[Any]]):
    """A large outflow soon after a credential change or a login from a device never seen.

    A *trigger* is a ``credential_change`` event (password, phone, email or
    device) or a ``login`` whose ``device_id_hash`` is not among the account's
    ``known_devices`` most recently seen devices (an account with no known
    device yet has no new one). Devices are learnt from every event that
    carries one, but only a login counts as a new-device trigger: on the
    simulator's traffic, counting payments from a new phone as well tripled
    the alerts on ordinary accounts without catching one more takeover. The
    detector remembers the latest trigger; an outgoing event (``is_outflow``)
    at most ``window_seconds`` after it is *large* when its amount reaches
    ``min_outflow`` and either

    * ``large_outflow`` (an absolute limit), or
    * ``usual_multiple`` times the account's usual outflow, the median of its
      last :data:`USUAL_OUTFLOWS` outgoing amounts, once it has
      ``min_history`` of them.

    ``large_outflow`` and ``min_outflow`` are money, so they are per currency
    (``currency_limits``); in a currency without them, they are the
    ``learnt_quantile`` of the outgoing amounts seen in that currency, once
    ``min_population`` of them have been seen (see :mod:`detectors.limits`),
    and no outflow is judged before. Learnt limits are the detector's global
    state (:meth:`snapshot`).

    The score is the larger of ``amount / large_outflow`` and
    ``amount / (usual_multiple * usual)`` for an outflow within the window of
    a trigger and at least ``min_outflow``, so 1.0 or more means large;
    everything else scores 0.0. By default flagged outflows are not learnt, so
    an attacker's withdrawals never become the account's usual, and each large
    outflow within the window is flagged, not only the first.

    Events may arrive out of order: a trigger counts for outflows at or after
    it (by event time) within the window; an outflow processed before the
    trigger that preceded it is missed.

    State: ``[devices, trigger_ts, trigger_kind, outflows]``: ``devices`` the
    first :data:`DEVICE_PREFIX` hex characters of up to ``known_devices``
    device hashes, least recently seen first; ``trigger_ts`` the event time of
    the latest trigger (``-1`` for none) and ``trigger_kind`` its kind
    (``"password"``, ``"phone"`` ... or ``"new_device"``); ``outflows`` the
    last :data:`USUAL_OUTFLOWS` outgoing amounts in minor units. At most
    ``known_devices`` short strings and 10 ints, whatever the traffic (about
    200 bytes of JSON with the defaults).

    Parameters
    ----------
    window_seconds
        How long after a trigger an outflow is suspicious, in seconds.
    known_devices
        Device hashes remembered per account (the most recently seen).
    currency_limits
        Currency to ``{"large_outflow": ..., "min_outflow": ...}`` in minor units:
        an outflow at or above ``large_outflow`` is large whatever the account's
        history; outflows below ``min_outflow`` are never large (a tiny usual
        makes every multiple small).
    usual_multiple
        An outflow this many times the usual is large; ``None``: only the
        absolute limit applies.
    min_history
        Outgoing amounts learnt before the usual is trusted.
    learnt_quantile
        ``{"large_outflow": q, "min_outflow": q}``: quantiles of a currency's
        outgoing amounts used where no limit is configured.
    min_population
        Outgoing amounts of a currency to see before its learnt limits apply.

    Examples
    --------
    >>> detector = AccountTakeover(
    ...     window_seconds=3_600, usual_multiple=10.0,
    ...     currency_limits={"CNY": {"large_outflow": 5_000_000, "min_outflow": 100_000}})
    >>> state = detector.new_state()
    >>> noon = 1_709_553_600
    >>> for i, amount in enumerate((110_000, 125_000, 90_000, 130_000, 120_000)):
    ...     payment = {"event_type": "payment", "amount_minor": amount, "is_outflow": True,
    ...                "currency": "CNY", "device_id_hash": "a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6", "ts": noon + i}
    ...     state = detector.learn_one(payment, state)
    >>> change = {"event_type": "credential_change", "kind": "password", "amount_minor": 0,
    ...           "device_id_hash": "a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6", "ts": noon + 600}
    >>> state = detector.learn_one(change, state)
    >>> out = {"event_type": "withdrawal", "amount_minor": 3_000_000, "is_outflow": True,
    ...        "currency": "CNY", "ts": noon + 1_440}
    >>> detector.score_one(out, state)
    2.5
    >>> print(*detector.explain_one(out, state, 2.5), sep="\\n")
    password change 14 min before this withdrawal (window 1 h)
    withdrawal of 30,000.00 is 25.0x the usual outflow of 1,200.00 (median of the last 5; large from 10x)
    >>> detector.score_one({**out, "ts": noon + 600 + 3_601}, state)
    0.0
    """  # noqa: E501 - a doctest's expected output is one line

    name: ClassVar[str] = "account_takeover"

    def __init__(
        self,
        window_seconds: int = 3_600,
        known_devices: int = 8,
        currency_limits: Mapping[str, Mapping[str, int]] | None = None,
        usual_multiple: float | None = 10.0,
        min_history: int = 3,
        learnt_quantile: float | Mapping[str, float] | None = None,
        min_population: int = 1_000,
    ) -> None:
        positive_int("window_seconds", window_seconds)
        positive_int("known_devices", known_devices)
        if usual_multiple is not None:
            positive_number("usual_multiple", usual_multiple)
        self._money = MoneyLimits(
            ("large_outflow", "min_outflow"), currency_limits or {},
            DEFAULT_LEARNT_QUANTILES if learnt_quantile is None else learnt_quantile,
            min_population,
        )
        positive_int("min_history", min_history)
        if min_history > USUAL_OUTFLOWS:
            message = f"min_history must be at most {USUAL_OUTFLOWS}, not {min_history!r}"
            raise ValueError(message)
        self.window_seconds = window_seconds
        self.known_devices = known_devices
        self.currency_limits = currency_limits
        self.usual_multiple = usual_multiple
        self.min_history = min_history
        self.learnt_quantile = learnt_quantile
        self.min_population = min_population

    def new_state(self) -> list[Any]:
        return [[], _NO_TRIGGER, "", []]

    @staticmethod
    def _device(x: Features) -> str | None:
        device = x.get("device_id_hash")
        if not isinstance(device, str) or not device:
            return None
        return device[:DEVICE_PREFIX]

    def _trigger(self, x: Features, state: list[Any], ts: int) -> tuple[int, str]:
        """The latest trigger at or before ``ts``, this event included."""
        event_type = x.get("event_type")
        if event_type == "credential_change":
            return ts, str(x.get("kind") or "credential")
        device = self._device(x)
        if (
            event_type == "login"
            and device is not None
            and state[_DEVICES]
            and device not in state[_DEVICES]
        ):
            return ts, NEW_DEVICE
        trigger_ts: int = state[_TRIGGER_TS]
        if trigger_ts == _NO_TRIGGER or trigger_ts > ts:
            return _NO_TRIGGER, ""
        return trigger_ts, state[_TRIGGER_KIND]

    def _usual(self, state: list[Any]) -> int | None:
        outflows = state[_OUTFLOWS]
        if len(outflows) < self.min_history:
            return None
        return max(1, round(statistics.median(outflows)))

    def _limits(self, x: Features) -> tuple[int, int] | None:
        """``(large_outflow, min_outflow)`` in the event's currency, once known."""
        currency = currency_of(x)
        large = self._money.limit(currency, "large_outflow")
        smallest = self._money.limit(currency, "min_outflow")
        if large is None or smallest is None:
            return None
        return large, smallest

    def _suspect(self, x: Features, state: list[Any]) -> tuple[int, int, int, str] | None:
        """``(ts, amount, trigger_ts, trigger_kind)`` of an outflow within a trigger's window."""
        if not x.get("is_outflow"):
            return None
        ts = optional_int(x.get("ts"))
        amount = optional_int(x.get("amount_minor"))
        limits = self._limits(x)
        if ts is None or amount is None or limits is None or amount < max(1, limits[1]):
            return None
        trigger_ts, kind = self._trigger(x, state, ts)
        if trigger_ts == _NO_TRIGGER or ts - trigger_ts > self.window_seconds:
            return None
        return ts, amount, trigger_ts, kind

    def score_one(self, x: Features, state: list[Any]) -> float:
        suspect = self._suspect(x, state)
        if suspect is None:
            return 0.0
        amount = suspect[1]
        limits = self._limits(x)
        score = 0.0 if limits is None else amount / limits[0]
        usual = self._usual(state)
        if self.usual_multiple is not None and usual is not None:
            score = max(score, amount / (self.usual_multiple * usual))
        return score

    def learn_one(self, x: Features, state: list[Any]) -> list[Any]:
        ts = optional_int(x.get("ts"))
        if ts is None:
            return state
        trigger_ts, kind = self._trigger(x, state, ts)
        if trigger_ts == ts and ts >= state[_TRIGGER_TS]:
            state[_TRIGGER_TS], state[_TRIGGER_KIND] = ts, kind
        device = self._device(x)
        if device is not None:
            devices: list[str] = state[_DEVICES]
            if device in devices:
                devices.remove(device)
            devices.append(device)
            del devices[: -self.known_devices]
        amount = optional_int(x.get("amount_minor"))
        if x.get("is_outflow") and amount is not None and amount > 0:
            currency = currency_of(x)
            self._money.observe(currency, "large_outflow", amount)
            self._money.observe(currency, "min_outflow", amount)
            outflows: list[int] = state[_OUTFLOWS]
            outflows.append(amount)
            del outflows[:-USUAL_OUTFLOWS]
        return state

    def explain_one(self, x: Features, state: list[Any], score: float) -> list[str]:
        suspect = self._suspect(x, state)
        limits = self._limits(x)
        currency = currency_of(x)
        if limits is None:
            seen = self._money.population.count(currency, "large_outflow")
            return [
                f"not scored: no outflow limits for {currency or 'money without a currency'} yet"
                f" ({seen:,} of the {self.min_population:,} outflows to learn them from)"
            ]
        large, smallest = limits
        if suspect is None:
            return [
                f"not scored: no outflow of {format_minor(smallest)} or more within"
                f" {format_duration(self.window_seconds)} of a credential change or a new device"
            ]
        ts, amount, trigger_ts, kind = suspect
        event_type = x.get("event_type") or "outflow"
        window = format_duration(self.window_seconds)
        if kind == NEW_DEVICE:
            trigger = (
                f"login from a device not among the {len(state[_DEVICES])} known"
                f" {format_duration(ts - trigger_ts)} before this {event_type}"
            )
        else:
            trigger = f"{kind} change {format_duration(ts - trigger_ts)} before this {event_type}"
        reasons = [f"{trigger} (window {window})"]
        what = f"{event_type} of {format_minor(amount)}"
        usual = self._usual(state)
        if self.usual_multiple is not None and usual is not None:
            reasons.append(
                f"{what} is {amount / usual:.1f}x the usual outflow of {format_minor(usual)}"
                f" (median of the last {len(state[_OUTFLOWS])}; large from"
                f" {self.usual_multiple:g}x)"
            )
        if amount >= large or len(reasons) == 1:
            reached = "reaches" if amount >= large else "is below"
            reasons.append(
                f"{what} {reached} the large-outflow limit of"
                f" {format_minor(large)} ({self._money.source(currency, 'large_outflow')})"
            )
        return reasons

    def snapshot(self) -> dict[str, Any]:
        """The learnt limits of currencies without configured ones (JSON-able)."""
        return self._money.snapshot()

    def restore(self, snapshot: Any) -> None:
        """Put back what :meth:`snapshot` returned."""
        self._money.restore(snapshot)
