"""The flow detectors, one per typology: rings, scatter-gather, gather-scatter and fan-in.

:class:`Cycle`, :class:`ScatterGather`, :class:`GatherScatter` and
:class:`FanIn` are stateless: each judges the features one flow sketch
computed for a record (:mod:`detectors.flow.sketch`, "Features"), so the
worker keeps no state for them beyond the sketches.
"""

from __future__ import annotations

from typing import ClassVar, Final

from detectors.base import Detector, Features
from detectors.flow.params import DEFAULT_FLOW_PARAMS
from detectors.money import format_minor
from detectors.params import optional_int, positive_int
from detectors.timeline import format_duration


def _count(x: Features, key: str) -> int:
    value = optional_int(x.get(key))
    return value if value is not None and value > 0 else 0


#: Longest horizon a flow detector counts over: the sketch remembers senders this long.
MAX_HORIZON_SECONDS: Final = 90 * 86_400


def _horizon(name: str, seconds: int) -> None:
    if seconds > MAX_HORIZON_SECONDS:
        message = f"{name} must be at most {MAX_HORIZON_SECONDS} s (90 days), not {seconds!r}"
        raise ValueError(message)


def _account(x: Features) -> str:
    account = x.get("account_id")
    return account if isinstance(account, str) and account else "the account"


class Cycle(Detector):
    """Funds that come back to where they started through a ring of accounts.

    A ring (``cycle_length``) of ``min_ring`` to ``max_ring`` accounts whose
    transfers span at most ``max_span_seconds`` of event time scores; any
    other record scores 0.0. A ring of 2 is a transfer paid back, ordinary
    between people, hence the default minimum 3. The flow stage sizes its
    sketches from these parameters (``streams.stages.flow_params``):
    ``max_ring`` sets the longest path kept and ``max_span_seconds`` the
    window within which a ring must close.

    How much a ring says depends on how much money converges where it
    closes. Where the money of many accounts reaches the reporting account
    through new relationships (``cycle_origins``), some of it comes back by
    chance: in a densely connected population rings close on a tenth of all
    new transfers. A ring scores ``(max_origins + 1) / (cycle_origins + 1)``,
    so 1.0 or more means at most ``max_origins`` such accounts, and a higher
    threshold (``txwatch calibrate`` raises it) asks for fewer;
    ``max_origins=None`` scores every ring 1.0. A record without the feature
    (from a worker that did not compute it) scores 1.0.

    Parameters
    ----------
    min_ring
        Fewest accounts in a ring that scores (at least 2).
    max_ring
        Most accounts in a ring that scores.
    max_span_seconds
        Longest event time from the ring's first transfer to its last.
    max_origins
        Most accounts whose money reached the ring's reporting account for
        the ring to score 1.0; ``None`` for no limit. Above the flow sketch's
        ``max_entries`` (64) it never applies: the sketch counts no further.

    Examples
    --------
    >>> detector = Cycle(min_ring=3, max_ring=8, max_span_seconds=7 * 86_400)
    >>> x = {"account_id": "acct-17", "counterparty_id": "acct-42", "amount_minor": 1_200_000,
    ...      "cycle_length": 4, "cycle_amount_minor": 1_200_000, "cycle_span_seconds": 266_400,
    ...      "cycle_origins": 3}
    >>> detector.score_one(x)
    4.25
    >>> for reason in detector.explain_one(x, detector.score_one(x)):
    ...     print(reason)
    funds returned to acct-17 through a ring of 4 accounts within 3 d 2 h (12,000.00 on the closing transfer)
    money from 3 accounts had reached acct-17 in the window (a ring scores 1.0 at 16)
    >>> detector.score_one({**x, "cycle_origins": 40})
    0.4146341463414634
    >>> detector.score_one({**x, "cycle_length": 2})
    0.0
    """  # noqa: E501 - a doctest's expected output is one line

    name: ClassVar[str] = "cycle"
    stage: ClassVar[str] = "flow"

    def __init__(self, min_ring: int = 3, max_ring: int = 10,
                 max_span_seconds: int = 28 * 86_400, max_origins: int | None = 16) -> None:
        positive_int("min_ring", min_ring)
        positive_int("max_ring", max_ring)
        positive_int("max_span_seconds", max_span_seconds)
        if max_origins is not None:
            positive_int("max_origins", max_origins)
        if min_ring < 2:
            message = f"min_ring must be at least 2 accounts, not {min_ring!r}"
            raise ValueError(message)
        if max_ring < min_ring:
            message = f"max_ring ({max_ring!r}) must be at least min_ring ({min_ring!r})"
            raise ValueError(message)
        if max_ring > 64:
            message = f"max_ring must be at most 64 accounts (a flow sketch's), not {max_ring!r}"
            raise ValueError(message)
        self.min_ring = min_ring
        self.max_ring = max_ring
        self.max_span_seconds = max_span_seconds
        self.max_origins = max_origins

    def score_one(self, x: Features) -> float:
        length = _count(x, "cycle_length")
        if not self.min_ring <= length <= self.max_ring:
            return 0.0
        if _count(x, "cycle_span_seconds") > self.max_span_seconds:
            return 0.0
        origins = x.get("cycle_origins")
        if self.max_origins is None or origins is None:
            return 1.0
        return (self.max_origins + 1) / (_count(x, "cycle_origins") + 1)

    def explain_one(self, x: Features, score: float) -> list[str]:
        length = _count(x, "cycle_length")
        span = format_duration(_count(x, "cycle_span_seconds"))
        if not length:
            return [f"no ring of {self.min_ring} to {self.max_ring} accounts closed by this record"]
        ring = f"a ring of {length} accounts within {span}"
        if not self.min_ring <= length <= self.max_ring:
            return [f"{ring}: outside the {self.min_ring} to {self.max_ring} accounts that alert"]
        if _count(x, "cycle_span_seconds") > self.max_span_seconds:
            limit = format_duration(self.max_span_seconds)
            return [f"{ring}: slower than the {limit} that alerts"]
        amount = _count(x, "cycle_amount_minor")
        closing = f" ({format_minor(amount)} on the closing transfer)" if amount else ""
        reasons = [f"funds returned to {_account(x)} through {ring}{closing}"]
        low, high = _count(x, "cycle_low_minor"), _count(x, "cycle_high_minor")
        if low and high:
            reasons.append(f"every transfer of the ring between {format_minor(low)}"
                           f" and {format_minor(high)}")
        if self.max_origins is not None and x.get("cycle_origins") is not None:
            origins = _count(x, "cycle_origins")
            accounts = "1 account" if origins == 1 else f"{origins} accounts"
            reasons.append(f"money from {accounts} had reached {_account(x)} in the window"
                           f" (a ring scores 1.0 at {self.max_origins})")
        return reasons


class ScatterGather(Detector):
    """Money from one account split over several intermediaries and recombined at another.

    Scores ``scatter_gather_vias / min_vias``: the most distinct
    intermediaries through which one origin reached this account in two hops
    within the sketch's ``hub_seconds`` of the transfer (3 days by default),
    so 1.0 or more means ``min_vias`` of them. Back and relay records score
    0.0.

    Parameters
    ----------
    min_vias
        Distinct intermediaries that score 1.0 (the sketch keeps at most 8).
    window_seconds
        Half-width, in event time, of the window around the transfer in which
        intermediaries count (the sketch's ``hub_seconds``, shared with
        ``gather_scatter``: the stage uses the longer of the two).

    Examples
    --------
    >>> detector = ScatterGather(min_vias=3)
    >>> x = {"record_kind": "edge", "account_id": "acct-c", "scatter_gather_vias": 4,
    ...      "scatter_gather_origin": "9a2f2c4f3e7b", "scatter_gather_origin_id": "acct-a",
    ...      "hub_seconds": 259_200}
    >>> detector.score_one(x)
    1.3333333333333333
    >>> print(*detector.explain_one(x, detector.score_one(x)))
    money from acct-a reached acct-c through 4 different intermediaries within 3 d of this transfer (alert at 3)
    """  # noqa: E501 - a doctest's expected output is one line

    name: ClassVar[str] = "scatter_gather"
    stage: ClassVar[str] = "flow"

    def __init__(self, min_vias: int = 3, window_seconds: int = 3 * 86_400) -> None:
        positive_int("min_vias", min_vias)
        positive_int("window_seconds", window_seconds)
        if min_vias < 2:
            message = f"min_vias must be at least 2 intermediaries, not {min_vias!r}"
            raise ValueError(message)
        _horizon("window_seconds", window_seconds)
        self.min_vias = min_vias
        self.window_seconds = window_seconds

    def score_one(self, x: Features) -> float:
        if x.get("record_kind", "edge") not in ("edge", "gather"):
            return 0.0
        return _count(x, "scatter_gather_vias") / self.min_vias

    def explain_one(self, x: Features, score: float) -> list[str]:
        vias = _count(x, "scatter_gather_vias")
        window = format_duration(_count(x, "hub_seconds"))
        if not vias:
            return [f"no money reached {_account(x)} from one account through 2 or more"
                    f" intermediaries (alert at {self.min_vias})"]
        origin = x.get("scatter_gather_origin_id")
        source = origin if isinstance(origin, str) and origin else "one origin account"
        noun = "intermediary" if vias == 1 else "different intermediaries"
        return [f"money from {source} reached {_account(x)} through {vias} {noun} within"
                f" {window} of this transfer (alert at {self.min_vias})"]


class GatherScatter(Detector):
    """An account that collects from many senders and pays many receivers: a hub.

    Scores ``min(in / min_in, out / min_out)`` with ``in`` and ``out`` the
    distinct senders and receivers of the account within the sketch's
    ``hub_seconds`` of the record (either side), so 1.0 or more means both
    limits are reached. The out side is known from back records, so the
    score is computed on incoming edges and outgoing back records alike;
    relay records, and records whose counterparty was already counted in
    the window (``gather_scatter_new`` false), score 0.0: a hub is reported
    when a new sender or receiver takes it over the limits, not again on
    every later transfer with the same counterparties.

    Parameters
    ----------
    min_in
        Distinct senders that, with ``min_out`` receivers, score 1.0.
    min_out
        Distinct receivers that, with ``min_in`` senders, score 1.0.
    window_seconds
        Half-width, in event time, of the window around the record in which new
        senders and receivers count (the sketch's ``hub_seconds``).

    Examples
    --------
    >>> detector = GatherScatter(min_in=5, min_out=5)
    >>> x = {"record_kind": "back", "account_id": "acct-h", "gather_scatter_in": 12,
    ...      "gather_scatter_out": 6, "hub_seconds": 259_200}
    >>> detector.score_one(x)
    1.2
    >>> print(*detector.explain_one(x, 1.2))
    acct-h received from 12 different senders and paid 6 different receivers within 3 d of this transfer (alert at 5 and 5)
    """  # noqa: E501 - a doctest's expected output is one line

    name: ClassVar[str] = "gather_scatter"
    stage: ClassVar[str] = "flow"

    def __init__(self, min_in: int = 5, min_out: int = 5,
                 window_seconds: int = 3 * 86_400) -> None:
        positive_int("min_in", min_in)
        positive_int("min_out", min_out)
        positive_int("window_seconds", window_seconds)
        _horizon("window_seconds", window_seconds)
        self.min_in = min_in
        self.min_out = min_out
        self.window_seconds = window_seconds

    def score_one(self, x: Features) -> float:
        if x.get("record_kind", "edge") == "relay" or x.get("gather_scatter_new") is False:
            return 0.0  # a relay, or a counterparty already counted in the window
        return min(_count(x, "gather_scatter_in") / self.min_in,
                   _count(x, "gather_scatter_out") / self.min_out)

    def explain_one(self, x: Features, score: float) -> list[str]:
        received = _count(x, "gather_scatter_in")
        paid = _count(x, "gather_scatter_out")
        window = format_duration(_count(x, "hub_seconds"))
        senders = "sender" if received == 1 else "different senders"
        receivers = "receiver" if paid == 1 else "different receivers"
        return [f"{_account(x)} received from {received} {senders} and paid {paid} {receivers}"
                f" within {window} of this transfer (alert at {self.min_in} and {self.min_out})"]


class FanIn(Detector):
    """Many distinct senders paying one account within a window.

    Scores ``fan_in_senders / max_senders``: the distinct senders in the
    densest ``fan_in_seconds`` window (1 day by default) around the transfer,
    this one included, so 1.0 or more means ``max_senders`` of them. The
    sketch counts at most its ``max_entries`` (64) senders. Back and relay
    records score 0.0.

    Parameters
    ----------
    max_senders
        Distinct senders that score 1.0 (at most 64).
    window_seconds
        Width of the window, in event time, in which new senders count (the
        sketch's ``fan_in_seconds``); each sender counts at its first transfer.

    Examples
    --------
    >>> detector = FanIn(max_senders=20)
    >>> x = {"record_kind": "edge", "account_id": "acct-m", "fan_in_senders": 25,
    ...      "fan_in_span_seconds": 18_725, "fan_in_seconds": 86_400}
    >>> detector.score_one(x)
    1.25
    >>> print(*detector.explain_one(x, 1.25))
    25 different senders paid acct-m within 5 h 12 min (alert at 20 within 1 d)
    """

    name: ClassVar[str] = "fan_in"
    stage: ClassVar[str] = "flow"

    def __init__(self, max_senders: int = 20, window_seconds: int = 86_400) -> None:
        positive_int("max_senders", max_senders)
        positive_int("window_seconds", window_seconds)
        _horizon("window_seconds", window_seconds)
        if max_senders > DEFAULT_FLOW_PARAMS.max_entries:
            message = (
                f"max_senders must be at most {DEFAULT_FLOW_PARAMS.max_entries} (the senders a"
                f" flow sketch keeps), not {max_senders!r}"
            )
            raise ValueError(message)
        self.max_senders = max_senders
        self.window_seconds = window_seconds

    def score_one(self, x: Features) -> float:
        if x.get("record_kind", "edge") != "edge":
            return 0.0
        return _count(x, "fan_in_senders") / self.max_senders

    def explain_one(self, x: Features, score: float) -> list[str]:
        senders = _count(x, "fan_in_senders")
        window = format_duration(_count(x, "fan_in_seconds"))
        span = format_duration(_count(x, "fan_in_span_seconds"))
        noun = "sender" if senders == 1 else "different senders"
        at_least = " or more" if senders >= DEFAULT_FLOW_PARAMS.max_entries else ""
        return [f"{senders}{at_least} {noun} paid {_account(x)} within {span}"
                f" (alert at {self.max_senders} within {window})"]
