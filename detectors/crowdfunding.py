"""Crowdfunding risks: fake backers, pledge churn and a payout right after them.

A project owner who fakes popularity pledges to their own project from many
brand-new accounts, or from accounts run on one device; pledging then
refunding ("churn") inflates a project's ranking or moves money between
accounts under cover of refunds; and a payout right after a wave of such
pledges is how the money leaves. None of this shows in one account. The
project stage keeps one :class:`ProjectSketch` per project id and runs
:class:`PledgeChurn`, :class:`SuspiciousPledging` and
:class:`PayoutAfterSuspiciousPledges` over the features it returns.

Record
------
``{"kind": "project", "event_type": "pledge" | "pledge_refund" | "project_payout",
"event_id", "ts", "account_id", "amount_minor", "device_id_hash" (or None),
"account_events", "project_id" (optional)}``: ``account_events`` is how many
money events the account had before this one; at most ``new_account_events``
(2) makes it *brand new*. ``features = sketch.observe(record)``.

A pledge is *suspicious* when its account was brand new when it pledged, or
when its device was used by another account pledging to the project within
the window (decided when features are computed, so the second account on a
device makes the first one's pledge suspicious too).

Sketch and bounds
-----------------
* pledges: up to ``max_pledges`` (128) entries ``[ts, account_hash, amount_minor,
  device_hash or 0, brand_new 0/1, event_hash]``, the most recent;
* refunds: up to ``max_refunds`` (64) entries ``[ts, account_hash,
  amount_minor, event_hash]``, the most recent.

Both are pruned ``2 * window_seconds`` behind the newest record; the event
hash makes a record seen twice count once. Hashes are 48-bit
(:func:`detectors.flow.stable_hash`). JSON size: at most ``20 + 82 *
max_pledges + 64 * max_refunds`` bytes, 14,612 with the defaults
(:meth:`ProjectParams.max_state_bytes`). A project with more pledges in one
window than the sketch keeps is judged on its most recent ones
(``pledges_saturated``).

Features
--------
Every count is over the window of ``window_seconds`` ending at the record's
``ts``: a record that arrives late is judged on what came before it in event
time.

==============================  ===========================================================
``record_kind``                 ``"project"``
``event_id``, ``event_type``,   of the source event; ``project_id`` when the record has it
``ts``, ``amount_minor``,
``account_id``
``project_window_seconds``      the window, for reasons
``pledges_window``              pledges in the window
``pledged_amount_minor``        their total
``new_account_pledges``         of them, from brand-new accounts
``shared_device_pledges``       of them, from a device another pledging account used
``suspicious_pledges``          of them, either (counted once)
``suspicious_amount_minor``     the money of those
``suspicious_share``            ``suspicious_amount_minor / pledged_amount_minor``, 0.0 to 1.0
``last_suspicious_pledge_ts``   time of the latest suspicious pledge, or ``None``
``refunds_window``              pledge refunds in the window
``refunded_amount_minor``       their total
``churn_refunds``               refunds to accounts that pledged in the window
``churn_ratio``                 ``churn_refunds / pledges_window`` (0.0 without pledges)
``pledges_saturated``           the sketch may have dropped earlier pledges of the window
==============================  ===========================================================

Examples
--------
>>> sketch = ProjectSketch.new()
>>> noon = 1_709_553_600
>>> for i in range(4):
...     x = sketch.observe({"kind": "project", "event_type": "pledge", "event_id": f"p{i}",
...                         "ts": noon + 60 * i, "account_id": f"acct-{i}",
...                         "amount_minor": 100_000, "device_id_hash": "d1" if i < 2 else None,
...                         "account_events": 0 if i == 3 else 40})
>>> x["suspicious_pledges"], x["suspicious_share"]
(3, 0.75)
"""

from __future__ import annotations

from bisect import insort
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from detectors.base import Detector, Features
from detectors.flow import stable_hash
from detectors.money import format_minor
from detectors.params import fraction, non_negative_int, optional_int, positive_int
from detectors.timeline import KEPT_WINDOWS, format_duration

#: First element of :meth:`ProjectSketch.to_state`.
STATE_FORMAT: Final = 1
#: The event types of the project stage.
PROJECT_EVENT_TYPES: Final = ("pledge", "pledge_refund", "project_payout")

# A pledge: [ts, account_hash, amount_minor, device_hash or 0, brand_new, event_hash].
_TS, _ACCOUNT, _AMOUNT, _DEVICE, _NEW, _PLEDGE_EVENT = range(6)
# A refund: [ts, account_hash, amount_minor, event_hash].
_REFUND_EVENT = 3


@dataclass(frozen=True, slots=True)
class ProjectParams:
    """The bounds of every :class:`ProjectSketch` of the stage.

    Parameters
    ----------
    window_seconds
        Width of the window, ending at each record, over which pledges and
        refunds are counted.
    max_pledges
        Most pledges remembered per project.
    max_refunds
        Most refunds remembered per project.
    new_account_events
        An account with at most this many earlier money events is brand new.
    """

    window_seconds: int = 7 * 86_400
    max_pledges: int = 128
    max_refunds: int = 64
    new_account_events: int = 2

    def __post_init__(self) -> None:
        for name in ("window_seconds", "max_pledges", "max_refunds"):
            positive_int(name, getattr(self, name))
        non_negative_int("new_account_events", self.new_account_events)

    def max_state_bytes(self) -> int:
        """Upper bound of ``len(orjson.dumps(sketch.to_state()))``.

        Examples
        --------
        >>> ProjectParams().max_state_bytes()
        14612
        """
        header = len("[1,,[],[]]") + 10
        # [ts, hash, amount<=18 digits, hash, 0/1, hash],
        pledge = 1 + 10 + 1 + 15 + 1 + 18 + 1 + 15 + 1 + 1 + 1 + 15 + 1 + 1
        refund = 1 + 10 + 1 + 15 + 1 + 18 + 1 + 15 + 1 + 1  # [ts, hash, amount, hash],
        return header + pledge * self.max_pledges + refund * self.max_refunds


DEFAULT_PROJECT_PARAMS: Final = ProjectParams()


class ProjectSketch:
    """What the stage remembers about one crowdfunding project.

    Parameters
    ----------
    params
        The bounds, shared by every sketch of the stage.
    """

    __slots__ = ("latest_ts", "params", "pledges", "refunds")

    def __init__(self, params: ProjectParams = DEFAULT_PROJECT_PARAMS) -> None:
        self.params = params
        self.latest_ts = 0
        #: sorted by time
        self.pledges: list[list[int]] = []
        #: sorted by time
        self.refunds: list[list[int]] = []

    @classmethod
    def new(cls, params: ProjectParams = DEFAULT_PROJECT_PARAMS) -> ProjectSketch:
        """An empty sketch."""
        return cls(params)

    def to_state(self) -> list[Any]:
        """A JSON-able list; :meth:`from_state` rebuilds an equal sketch from it."""
        return [
            STATE_FORMAT,
            self.latest_ts,
            [list(pledge) for pledge in self.pledges],
            [list(refund) for refund in self.refunds],
        ]

    @classmethod
    def from_state(
        cls, state: Sequence[Any], params: ProjectParams = DEFAULT_PROJECT_PARAMS
    ) -> ProjectSketch:
        """The sketch :meth:`to_state` described."""
        if not isinstance(state, list | tuple) or len(state) != 4 or state[0] != STATE_FORMAT:
            head = state[:1] if isinstance(state, list | tuple) else state
            message = f"unknown project sketch state format: {head!r}"
            raise ValueError(message)
        _, latest_ts, pledges, refunds = state
        sketch = cls(params)
        sketch.latest_ts = latest_ts
        sketch.pledges = [list(pledge) for pledge in pledges]
        sketch.refunds = [list(refund) for refund in refunds]
        return sketch

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ProjectSketch):
            return NotImplemented
        return self.params == other.params and self.to_state() == other.to_state()

    __hash__ = None  # type: ignore[assignment]  # mutable: not hashable

    def __repr__(self) -> str:
        return f"ProjectSketch(pledges={len(self.pledges)}, refunds={len(self.refunds)})"

    def observe(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """Count one pledge or refund (a payout is only judged); the project's features.

        Raises ``ValueError`` when the record lacks an int ``ts``, an
        ``account_id`` or a project ``event_type``: records are built by the
        worker, so a bad one is a bug for the stage to log and skip.
        """
        ts = optional_int(record.get("ts"))
        account = record.get("account_id")
        event_type = record.get("event_type")
        if ts is None or not isinstance(account, str) or event_type not in PROJECT_EVENT_TYPES:
            message = (
                "a project record needs an int ts, an account_id and an event_type in"
                f" {list(PROJECT_EVENT_TYPES)}, not ts={record.get('ts')!r}"
                f" account_id={account!r} event_type={event_type!r}"
            )
            raise ValueError(message)
        amount = optional_int(record.get("amount_minor"))
        amount = amount if amount is not None and amount > 0 else 0
        event_id = record.get("event_id")
        event = stable_hash(event_id) if isinstance(event_id, str) and event_id else None
        self._advance(ts)
        if event_type == "pledge":
            device = record.get("device_id_hash")
            prior = optional_int(record.get("account_events"))
            brand_new = prior is not None and prior <= self.params.new_account_events
            entry = [
                ts,
                stable_hash(account),
                amount,
                stable_hash(device) if isinstance(device, str) and device else 0,
                int(brand_new),
                event if event is not None else stable_hash(f"{account}\x1f{ts}\x1f{amount}"),
            ]
            _add(self.pledges, entry, _PLEDGE_EVENT, self.params.max_pledges)
        elif event_type == "pledge_refund":
            key = event if event is not None else stable_hash(f"{account}\x1f{ts}\x1f{amount}")
            _add(self.refunds, [ts, stable_hash(account), amount, key], _REFUND_EVENT,
                 self.params.max_refunds)
        features: dict[str, Any] = {
            "record_kind": "project",
            "event_id": event_id,
            "event_type": event_type,
            "ts": ts,
            "amount_minor": amount,
            "account_id": account,
            "project_id": record.get("project_id"),
            "project_window_seconds": self.params.window_seconds,
        }
        features.update(self._window(ts))
        return features

    def _advance(self, ts: int) -> None:
        if ts <= self.latest_ts:
            return
        self.latest_ts = ts
        oldest = ts - KEPT_WINDOWS * self.params.window_seconds
        for entries in (self.pledges, self.refunds):
            if entries and entries[0][_TS] < oldest:
                entries[:] = [entry for entry in entries if entry[_TS] >= oldest]

    def _window(self, ts: int) -> dict[str, Any]:
        start = ts - self.params.window_seconds
        pledges = [p for p in self.pledges if start <= p[_TS] <= ts]
        accounts_by_device: dict[int, set[int]] = {}
        for pledge in pledges:
            if pledge[_DEVICE]:
                accounts_by_device.setdefault(pledge[_DEVICE], set()).add(pledge[_ACCOUNT])
        shared = {device for device, accounts in accounts_by_device.items() if len(accounts) > 1}
        pledged = new_count = shared_count = suspicious = suspicious_amount = 0
        last_suspicious: int | None = None
        for pledge in pledges:
            pledged += pledge[_AMOUNT]
            is_new = bool(pledge[_NEW])
            is_shared = pledge[_DEVICE] in shared
            new_count += is_new
            shared_count += is_shared
            if is_new or is_shared:
                suspicious += 1
                suspicious_amount += pledge[_AMOUNT]
                last_suspicious = pledge[_TS]
        pledgers = {pledge[_ACCOUNT] for pledge in pledges}
        refunds = [r for r in self.refunds if start <= r[_TS] <= ts]
        churn = sum(1 for refund in refunds if refund[_ACCOUNT] in pledgers)
        saturated = (
            len(self.pledges) >= self.params.max_pledges and self.pledges[0][_TS] >= start
        )
        return {
            "pledges_window": len(pledges),
            "pledged_amount_minor": pledged,
            "new_account_pledges": new_count,
            "shared_device_pledges": shared_count,
            "suspicious_pledges": suspicious,
            "suspicious_amount_minor": suspicious_amount,
            "suspicious_share": suspicious_amount / pledged if pledged else 0.0,
            "last_suspicious_pledge_ts": last_suspicious,
            "refunds_window": len(refunds),
            "refunded_amount_minor": sum(refund[_AMOUNT] for refund in refunds),
            "churn_refunds": churn,
            "churn_ratio": churn / len(pledges) if pledges else 0.0,
            "pledges_saturated": saturated,
        }


def _add(entries: list[list[int]], entry: list[int], event_index: int, bound: int) -> None:
    """Insert ``entry`` in time order unless its event is kept; drop the oldest past ``bound``."""
    event = entry[event_index]
    if any(kept[event_index] == event for kept in entries):
        return
    insort(entries, entry)
    if len(entries) > bound:
        oldest = next(i for i, kept in enumerate(entries) if kept[event_index] != event)
        del entries[oldest]


# -- detectors ------------------------------------------------------------------------------------


def _count(x: Features, key: str) -> int:
    value = optional_int(x.get(key))
    return value if value is not None and value > 0 else 0


def _share(x: Features, key: str) -> float:
    value = x.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        return 0.0
    return float(value)


def _window(x: Features) -> str:
    return format_duration(_count(x, "project_window_seconds"))


class PledgeChurn(Detector):
    """Pledges to one project refunded to the accounts that made them.

    On a pledge refund, scores ``min(churn_refunds / min_refunds, churn_ratio /
    min_churn_ratio)``: refunds within the sketch's window (7 days by
    default) to accounts that pledged to the project in it, and those refunds
    per pledge. 1.0 or more means both limits are reached. Other events score
    0.0.

    Parameters
    ----------
    min_refunds
        Refunds to pledging accounts that, with the ratio, score 1.0.
    min_churn_ratio
        Such refunds per pledge, in (0, 1], that with the count score 1.0.

    Examples
    --------
    >>> detector = PledgeChurn(min_refunds=5, min_churn_ratio=0.3)
    >>> x = {"event_type": "pledge_refund", "churn_refunds": 8, "pledges_window": 20,
    ...      "churn_ratio": 0.4, "project_window_seconds": 604_800}
    >>> detector.score_one(x)
    1.3333333333333335
    >>> print(*detector.explain_one(x, 1.3333333333333335))
    8 refunds within 7 d went back to accounts that had pledged to this project, 40% of its 20 pledges (limit 5 and 30%)
    >>> detector.score_one({**x, "event_type": "pledge"})
    0.0
    """  # noqa: E501 - a doctest's expected output is one line

    name: ClassVar[str] = "pledge_churn"
    stage: ClassVar[str] = "project"

    def __init__(self, min_refunds: int = 5, min_churn_ratio: float = 0.3) -> None:
        positive_int("min_refunds", min_refunds)
        fraction("min_churn_ratio", min_churn_ratio)
        self.min_refunds = min_refunds
        self.min_churn_ratio = min_churn_ratio

    def score_one(self, x: Features) -> float:
        if x.get("event_type") != "pledge_refund":
            return 0.0
        return min(_count(x, "churn_refunds") / self.min_refunds,
                   _share(x, "churn_ratio") / self.min_churn_ratio)

    def explain_one(self, x: Features, score: float) -> list[str]:
        refunds = _count(x, "churn_refunds")
        if x.get("event_type") != "pledge_refund":
            return [f"not a pledge refund ({refunds} refunds to pledgers in the window)"]
        pledges = _count(x, "pledges_window")
        noun = "refund" if refunds == 1 else "refunds"
        plural = "pledge" if pledges == 1 else "pledges"
        return [f"{refunds} {noun} within {_window(x)} went back to accounts that had pledged"
                f" to this project, {_share(x, 'churn_ratio'):.0%} of its {pledges} {plural}"
                f" (limit {self.min_refunds} and {self.min_churn_ratio:.0%})"]


def _suspicious_words(x: Features) -> str:
    new = _count(x, "new_account_pledges")
    shared = _count(x, "shared_device_pledges")
    return (f"brand-new accounts ({new}) or accounts sharing a device with another pledger"
            f" ({shared})")


class SuspiciousPledging(Detector):
    """Many pledges to one project from brand-new or device-sharing accounts.

    On a pledge, scores ``min(suspicious_pledges / min_pledges,
    suspicious_share / min_share)``: the pledges within the sketch's window
    (7 days by default) from accounts that were brand new or shared a device
    with another pledger, and their share of the money pledged. 1.0 or more
    means both limits are reached. Other events score 0.0.

    Parameters
    ----------
    min_pledges
        Suspicious pledges that, with the share, score 1.0.
    min_share
        Their share of the pledged money, in (0, 1], that with the count scores 1.0.

    Examples
    --------
    >>> detector = SuspiciousPledging(min_pledges=10, min_share=0.5)
    >>> x = {"event_type": "pledge", "pledges_window": 15, "suspicious_pledges": 12,
    ...      "new_account_pledges": 9, "shared_device_pledges": 5,
    ...      "pledged_amount_minor": 6_000_000, "suspicious_amount_minor": 4_920_000,
    ...      "suspicious_share": 0.82, "project_window_seconds": 604_800}
    >>> detector.score_one(x)
    1.2
    >>> print(*detector.explain_one(x, 1.2))
    12 of 15 pledges to this project within 7 d came from brand-new accounts (9) or accounts sharing a device with another pledger (5): 82% of the 60,000.00 pledged (limit 10 pledges and 50%)
    """  # noqa: E501 - a doctest's expected output is one line

    name: ClassVar[str] = "suspicious_pledging"
    stage: ClassVar[str] = "project"

    def __init__(self, min_pledges: int = 10, min_share: float = 0.5) -> None:
        positive_int("min_pledges", min_pledges)
        fraction("min_share", min_share)
        self.min_pledges = min_pledges
        self.min_share = min_share

    def score_one(self, x: Features) -> float:
        if x.get("event_type") != "pledge":
            return 0.0
        return min(_count(x, "suspicious_pledges") / self.min_pledges,
                   _share(x, "suspicious_share") / self.min_share)

    def explain_one(self, x: Features, score: float) -> list[str]:
        suspicious = _count(x, "suspicious_pledges")
        if x.get("event_type") != "pledge":
            return [f"not a pledge ({suspicious} suspicious pledges in the window)"]
        pledges = _count(x, "pledges_window")
        pledged = format_minor(_count(x, "pledged_amount_minor"))
        saturated = " (the most recent kept)" if x.get("pledges_saturated") else ""
        return [f"{suspicious} of {pledges} pledges{saturated} to this project within"
                f" {_window(x)} came from {_suspicious_words(x)}:"
                f" {_share(x, 'suspicious_share'):.0%} of the {pledged} pledged"
                f" (limit {self.min_pledges} pledges and {self.min_share:.0%})"]


class PayoutAfterSuspiciousPledges(Detector):
    """A project paid out soon after pledges from brand-new or device-sharing accounts.

    On a project payout whose latest suspicious pledge (see
    :class:`SuspiciousPledging`) was at most ``max_delay_seconds`` before it,
    scores ``min(suspicious_pledges / min_pledges, suspicious_share /
    min_share)`` over the sketch's window ending at the payout; 1.0 or more
    means both limits are reached. Other events, and payouts long after the
    last suspicious pledge, score 0.0.

    Parameters
    ----------
    min_share
        Suspicious share of the pledged money, in (0, 1], that with the count scores 1.0.
    min_pledges
        Suspicious pledges that, with the share, score 1.0.
    max_delay_seconds
        Longest time from the latest suspicious pledge to the payout that scores.

    Examples
    --------
    >>> detector = PayoutAfterSuspiciousPledges(min_share=0.5, min_pledges=5,
    ...                                         max_delay_seconds=259_200)
    >>> x = {"event_type": "project_payout", "ts": 1_709_560_800, "amount_minor": 5_000_000,
    ...      "last_suspicious_pledge_ts": 1_709_553_600, "suspicious_pledges": 12,
    ...      "new_account_pledges": 12, "shared_device_pledges": 0,
    ...      "pledged_amount_minor": 6_000_000, "suspicious_share": 0.8,
    ...      "project_window_seconds": 604_800}
    >>> detector.score_one(x)
    1.6
    >>> print(*detector.explain_one(x, 1.6))
    payout of 50,000.00 2 h after the last of 12 pledges from brand-new accounts (12) or accounts sharing a device with another pledger (0), which made 80% of the 60,000.00 pledged within 7 d (limit 5 pledges and 50% within 3 d)
    """  # noqa: E501 - a doctest's expected output is one line

    name: ClassVar[str] = "suspicious_payout"
    stage: ClassVar[str] = "project"

    def __init__(self, min_share: float = 0.5, min_pledges: int = 5,
                 max_delay_seconds: int = 3 * 86_400) -> None:
        fraction("min_share", min_share)
        positive_int("min_pledges", min_pledges)
        positive_int("max_delay_seconds", max_delay_seconds)
        self.min_share = min_share
        self.min_pledges = min_pledges
        self.max_delay_seconds = max_delay_seconds

    def _delay(self, x: Features) -> int | None:
        """Seconds from the latest suspicious pledge to the payout, ``None`` if not a payout."""
        ts = optional_int(x.get("ts"))
        last = optional_int(x.get("last_suspicious_pledge_ts"))
        if x.get("event_type") != "project_payout" or ts is None or last is None:
            return None
        return max(0, ts - last)

    def score_one(self, x: Features) -> float:
        delay = self._delay(x)
        if delay is None or delay > self.max_delay_seconds:
            return 0.0
        return min(_count(x, "suspicious_pledges") / self.min_pledges,
                   _share(x, "suspicious_share") / self.min_share)

    def explain_one(self, x: Features, score: float) -> list[str]:
        delay = self._delay(x)
        limit = (f"limit {self.min_pledges} pledges and {self.min_share:.0%} within"
                 f" {format_duration(self.max_delay_seconds)}")
        if delay is None:
            return [f"not a payout after suspicious pledges ({limit})"]
        payout = format_minor(_count(x, "amount_minor"))
        pledged = format_minor(_count(x, "pledged_amount_minor"))
        return [f"payout of {payout} {format_duration(delay)} after the last of"
                f" {_count(x, 'suspicious_pledges')} pledges from {_suspicious_words(x)},"
                f" which made {_share(x, 'suspicious_share'):.0%} of the {pledged} pledged"
                f" within {_window(x)} ({limit})"]


__all__ = [
    "DEFAULT_PROJECT_PARAMS",
    "PROJECT_EVENT_TYPES",
    "STATE_FORMAT",
    "PayoutAfterSuspiciousPledges",
    "PledgeChurn",
    "ProjectParams",
    "ProjectSketch",
    "SuspiciousPledging",
]
