"""Where an account's money went, hop by hop: bounded per-account edges and the trace over them.

An investigator's first question after an alert is where the money came from
and where it went. :class:`FlowLedger` keeps, per account, what it sent to and
received from each counterparty (per currency: total, count, first and last
time, the latest few event ids) over a window of event time, and folds the
smallest, oldest counterparties into one ``other`` edge once it knows more
than ``max_counterparties`` on a side, so its size is bounded whatever the
traffic. :func:`trace` walks those ledgers from one account up to ``hops``
transfers away, asking ``lookup`` for each account's ledger: the caller
decides where ledgers live (a dictionary offline, a table partitioned by
account in a worker).

Money is in integer minor units; account ids are the only identifiers kept.

Examples
--------
>>> ledgers = {}
>>> def pay(event_id, ts, sender, receiver, amount):
...     for account in (sender, receiver):
...         ledgers.setdefault(account, FlowLedger(account))
...     ledgers[sender].add("out", receiver, "CNY", amount, ts, event_id)
...     ledgers[receiver].add("in", sender, "CNY", amount, ts, event_id)
>>> pay("t1", 1_709_251_200, "acct-a", "acct-b", 1_200_000)
>>> pay("t2", 1_709_254_800, "acct-b", "acct-c", 1_150_000)
>>> pay("t3", 1_709_258_400, "acct-b", "acct-d", 40_000)
>>> found = trace("acct-a", ledgers.get, hops=3)
>>> [(e.source, e.target, e.amount_minor, e.hop) for e in found.edges]
[('acct-a', 'acct-b', 1200000, 1), ('acct-b', 'acct-c', 1150000, 2), ('acct-b', 'acct-d', 40000, 2)]
>>> found.truncated
False
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from detectors.params import positive_int

Direction = Literal["out", "in"]
#: Directions a ledger keeps.
DIRECTIONS: Final = ("out", "in")
#: Counterparty name of the edge that holds the folded, smallest counterparties.
OTHER: Final = "*other*"
#: Latest event ids kept per edge.
EVENT_IDS: Final = 3
#: First element of :meth:`FlowLedger.to_state`; bumped when the layout changes.
STATE_FORMAT: Final = 1
#: Hops a trace may follow.
MAX_HOPS: Final = 6

# An edge in memory: [amount_minor, count, first_ts, last_ts, [event ids, latest last]].
_AMOUNT, _COUNT, _FIRST, _LAST, _IDS = range(5)


@dataclass(frozen=True, slots=True)
class Edge:
    """Money one account sent another (``source`` to ``target``), in one currency."""

    source: str
    target: str
    currency: str
    amount_minor: int
    count: int
    first_ts: int
    last_ts: int
    event_ids: tuple[str, ...]
    #: transfers from the traced account to ``target`` (``out``) or ``source`` (``in``)
    hop: int = 1
    #: which way the trace walked to reach it: ``out`` (from the traced account) or ``in``
    side: str = "out"

    def to_json(self) -> dict[str, Any]:
        """The edge as a case tool reads it (``other`` stands for folded counterparties)."""
        return {"source": self.source, "target": self.target, "currency": self.currency,
                "amount_minor": self.amount_minor, "count": self.count,
                "first_ts": self.first_ts, "last_ts": self.last_ts,
                "event_ids": list(self.event_ids), "hop": self.hop, "side": self.side}


class FlowLedger:
    """One account's transfers per counterparty and currency, both ways, bounded.

    Parameters
    ----------
    account_id
        The account the ledger belongs to.
    max_counterparties
        Counterparty-currency edges kept per direction; beyond it the edge with
        the least money (the oldest among equals) joins the direction's
        ``other`` edge of its currency.
    window_seconds
        Event time an edge is kept after its last transfer (the newest time
        the ledger has seen is "now", so a late transfer cannot revive what
        was dropped).

    The size is bounded: per direction at most ``max_counterparties`` edges
    plus one ``other`` edge per currency seen, each with at most
    :data:`EVENT_IDS` event ids (:meth:`max_state_bytes`).
    """

    __slots__ = ("account_id", "latest_ts", "max_counterparties", "oldest_ts", "sides",
                 "window_seconds")

    def __init__(self, account_id: str, max_counterparties: int = 32,
                 window_seconds: int = 90 * 86_400) -> None:
        positive_int("max_counterparties", max_counterparties)
        positive_int("window_seconds", window_seconds)
        self.account_id = account_id
        self.max_counterparties = max_counterparties
        self.window_seconds = window_seconds
        self.latest_ts = 0
        #: no edge's last transfer is older (a lower bound): pruning scans only past it
        self.oldest_ts = 0
        #: direction -> (counterparty, currency) -> edge
        self.sides: dict[str, dict[tuple[str, str], list[Any]]] = {d: {} for d in DIRECTIONS}

    def add(self, direction: Direction, counterparty: str, currency: str, amount_minor: int,
            ts: int, event_id: str) -> None:
        """Count one transfer: ``out`` to ``counterparty``, or ``in`` from it."""
        if direction not in DIRECTIONS:
            message = f"direction must be one of {DIRECTIONS}, not {direction!r}"
            raise ValueError(message)
        if isinstance(amount_minor, bool) or not isinstance(amount_minor, int):
            message = f"amount_minor must be an int of minor units, not {amount_minor!r}"
            raise TypeError(message)
        if ts < self.latest_ts - self.window_seconds:
            return  # older than everything the ledger still keeps
        side = self.sides[direction]
        edge = side.get((counterparty, currency))
        if edge is None:
            side[(counterparty, currency)] = [amount_minor, 1, ts, ts, [event_id]]
        else:
            _merge_into(edge, [amount_minor, 1, ts, ts, [event_id]])
        if ts > self.latest_ts:
            self.latest_ts = ts
            if self.oldest_ts < ts - self.window_seconds:
                self._prune()
        self.oldest_ts = min(self.oldest_ts, ts)
        self._fold(direction)

    def edges(self, direction: Direction, *, since: int | None = None,
              until: int | None = None, min_amount: int = 0) -> list[Edge]:
        """The direction's edges whose transfers overlap ``[since, until]``, largest first.

        An edge's totals cover every transfer the ledger kept for it; it is
        listed when its first-to-last span overlaps the interval.
        """
        out = []
        for (counterparty, currency), edge in self.sides[direction].items():
            if since is not None and edge[_LAST] < since:
                continue
            if until is not None and edge[_FIRST] > until:
                continue
            if edge[_AMOUNT] < min_amount:
                continue
            source, target = ((self.account_id, counterparty) if direction == "out"
                              else (counterparty, self.account_id))
            out.append(Edge(source, target, currency, edge[_AMOUNT], edge[_COUNT],
                            edge[_FIRST], edge[_LAST], tuple(edge[_IDS])))
        out.sort(key=lambda e: (-e.amount_minor, e.source, e.target, e.currency))
        return out

    # -- bounds --------------------------------------------------------------------------
    def _prune(self) -> None:
        oldest = self.latest_ts - self.window_seconds
        for side in self.sides.values():
            for key in [key for key, edge in side.items() if edge[_LAST] < oldest]:
                del side[key]
        self.oldest_ts = min((edge[_LAST] for side in self.sides.values()
                              for edge in side.values()), default=self.latest_ts)

    def _fold(self, direction: str) -> None:
        side = self.sides[direction]
        if len(side) <= self.max_counterparties:  # the usual case: nothing to fold
            return
        named = [key for key in side if key[0] != OTHER]
        excess = len(named) - self.max_counterparties
        if excess <= 0:
            return
        smallest = heapq.nsmallest(
            excess, named, key=lambda key: (side[key][_AMOUNT], side[key][_LAST], key))
        for key in smallest:
            edge = side.pop(key)
            other = side.get((OTHER, key[1]))
            if other is None:
                side[(OTHER, key[1])] = edge
            else:
                _merge_into(other, edge)

    def max_state_bytes(self, id_bytes: int = 64, currencies: int = 1) -> int:
        """Upper bound of ``len(orjson.dumps(self.to_state()))`` for ids up to ``id_bytes``.

        Examples
        --------
        >>> FlowLedger("a").max_state_bytes(24)
        11354
        """
        ident = id_bytes + 2
        # [counterparty, currency, amount<=18 digits, count<=10, ts<=10, ts<=10, [3 ids]],
        edge = 1 + ident + 1 + 5 + 1 + 18 + 1 + 10 + 1 + 10 + 1 + 10 + 1 + (
            2 + EVENT_IDS * (ident + 1)) + 1 + 1
        per_side = (self.max_counterparties + currencies) * edge + 2
        header = 1 + 2 + ident + 1 + 10 + 1 + 10 + 1 + 10 + 1
        return header + 2 * per_side + 1

    # -- durable form --------------------------------------------------------------------
    def to_state(self) -> list[Any]:
        """A JSON-able list: format, account, bounds, latest time, then each side's edges."""
        return [STATE_FORMAT, self.account_id, self.max_counterparties, self.window_seconds,
                self.latest_ts,
                *([[cp, cur, *edge[:_IDS], list(edge[_IDS])]
                   for (cp, cur), edge in sorted(self.sides[d].items())] for d in DIRECTIONS)]

    @classmethod
    def from_state(cls, state: Any) -> FlowLedger:
        """Rebuild what :meth:`to_state` wrote; ``ValueError`` for another layout."""
        if not isinstance(state, list) or len(state) != 7 or state[0] != STATE_FORMAT:
            message = f"not a flow ledger state of format {STATE_FORMAT}: {state!r:.80}"
            raise ValueError(message)
        _, account_id, max_counterparties, window_seconds, latest_ts, outs, ins = state
        ledger = cls(str(account_id), int(max_counterparties), int(window_seconds))
        ledger.latest_ts = int(latest_ts)
        for direction, rows in zip(DIRECTIONS, (outs, ins), strict=True):
            ledger.sides[direction] = {
                (str(cp), str(cur)): [int(a), int(n), int(f), int(last), [str(i) for i in ids]]
                for cp, cur, a, n, f, last, ids in rows}
        ledger.oldest_ts = min((edge[_LAST] for side in ledger.sides.values()
                                for edge in side.values()), default=ledger.latest_ts)
        return ledger


def _merge_into(edge: list[Any], more: list[Any]) -> None:
    edge[_AMOUNT] += more[_AMOUNT]
    edge[_COUNT] += more[_COUNT]
    edge[_FIRST] = min(edge[_FIRST], more[_FIRST])
    edge[_LAST] = max(edge[_LAST], more[_LAST])
    ids = edge[_IDS] + [i for i in more[_IDS] if i not in edge[_IDS]]
    edge[_IDS] = ids[-EVENT_IDS:]


@dataclass(slots=True)
class Trace:
    """The accounts and edges within ``hops`` transfers of ``account``."""

    account: str
    direction: str
    hops: int
    #: account -> fewest transfers from (or to) the traced account
    accounts: dict[str, int] = field(default_factory=dict)
    edges: list[Edge] = field(default_factory=list)
    #: the node limit stopped the walk before every hop was followed
    truncated: bool = False
    #: account -> detectors with alerts on it (as the caller marked them)
    flagged: dict[str, list[str]] = field(default_factory=dict)

    def money_through(self) -> dict[str, int]:
        """Per account, the money of the trace's edges into it or out of it, the larger."""
        into: dict[str, int] = {}
        out: dict[str, int] = {}
        for edge in self.edges:
            out[edge.source] = out.get(edge.source, 0) + edge.amount_minor
            into[edge.target] = into.get(edge.target, 0) + edge.amount_minor
        return {a: max(into.get(a, 0), out.get(a, 0)) for a in self.accounts}


def trace(account: str, lookup: Callable[[str], FlowLedger | None], *,
          direction: str = "out", hops: int = 3, since: int | None = None,
          until: int | None = None, min_amount: int = 0, max_accounts: int = 200,
          flagged: Callable[[str], Iterable[str]] | None = None, ordered: bool = True) -> Trace:
    """Follow the money from ``account`` (``out``), into it (``in``), or ``both``.

    Breadth first, each account expanded once at its fewest hops; the
    ``other`` edges are listed but not followed. Past the first hop an edge is
    followed only if money could have passed through: walking out, one of its
    transfers is no earlier than the first that reached the account; walking
    in, no later than the last the account passed on (``ordered=False``
    follows every edge whatever its times: rings are laundered in any order).
    Stops adding accounts at ``max_accounts`` and says so (``truncated``).

    Raises
    ------
    ValueError
        For a direction other than ``out``, ``in`` or ``both``, ``hops`` outside
        1 to :data:`MAX_HOPS`, or a negative ``min_amount``.
    """
    if direction not in ("out", "in", "both"):
        message = f"direction must be out, in or both, not {direction!r}"
        raise ValueError(message)
    if isinstance(hops, bool) or not isinstance(hops, int) or not 1 <= hops <= MAX_HOPS:
        message = f"hops must be an int from 1 to {MAX_HOPS}, not {hops!r}"
        raise ValueError(message)
    if min_amount < 0:
        message = f"min_amount must not be negative, not {min_amount!r}"
        raise ValueError(message)
    positive_int("max_accounts", max_accounts)
    result = Trace(account, direction, hops, accounts={account: 0})
    sides: tuple[Direction, ...] = (("out", "in") if direction == "both"
                                    else ("out",) if direction == "out" else ("in",))
    for side in sides:
        # Money cannot leave before it arrived: past the first hop, an account's onward
        # edges count only if one of their transfers is no earlier than the first that
        # reached it (walking out), or no later than the last it passed on (walking in).
        reached: dict[str, int | None] = {account: None}
        frontier = [account]
        for hop in range(1, hops + 1):
            following: list[str] = []
            for current in frontier:
                ledger = lookup(current)
                if ledger is None:
                    continue
                at = reached[current]
                for edge in ledger.edges(side, since=since, until=until,
                                         min_amount=min_amount):
                    if ordered and at is not None and (edge.last_ts < at if side == "out"
                                                       else edge.first_ts > at):
                        continue
                    nxt = edge.target if side == "out" else edge.source
                    if nxt not in result.accounts and len(result.accounts) >= max_accounts:
                        result.truncated = True
                        continue
                    result.edges.append(_at_hop(edge, hop, side))
                    result.accounts.setdefault(nxt, hop)
                    if nxt == OTHER:
                        continue
                    when = edge.first_ts if side == "out" else edge.last_ts
                    if nxt not in reached:
                        reached[nxt] = when
                        following.append(nxt)
                    elif nxt in following:
                        known = reached[nxt]
                        reached[nxt] = (when if known is None else
                                        min(known, when) if side == "out" else max(known, when))
            frontier = following
    if flagged is not None:
        for name in result.accounts:
            detectors = sorted(set(flagged(name)))
            if detectors:
                result.flagged[name] = detectors
    return result


def _at_hop(edge: Edge, hop: int, side: str) -> Edge:
    return Edge(edge.source, edge.target, edge.currency, edge.amount_minor, edge.count,
                edge.first_ts, edge.last_ts, edge.event_ids, hop, side)


def ledgers_from_transfers(
        transfers: Iterable[tuple[str, int, str, str, str, int]], *,
        max_counterparties: int = 32,
        window_seconds: int = 90 * 86_400) -> dict[str, FlowLedger]:
    """Ledgers of ``(event_id, ts, sender, receiver, currency, amount_minor)`` transfers."""
    ledgers: dict[str, FlowLedger] = {}

    def ledger(account: str) -> FlowLedger:
        found = ledgers.get(account)
        if found is None:
            found = ledgers[account] = FlowLedger(account, max_counterparties, window_seconds)
        return found

    for event_id, ts, sender, receiver, currency, amount in transfers:
        ledger(sender).add("out", receiver, currency, amount, ts, event_id)
        ledger(receiver).add("in", sender, currency, amount, ts, event_id)
    return ledgers


def flagged_accounts(alerts: Iterable[Mapping[str, Any]]) -> dict[str, list[str]]:
    """Account id -> detectors, from alert records (``account_id``, ``detector``)."""
    out: dict[str, set[str]] = {}
    for alert in alerts:
        account, detector = alert.get("account_id"), alert.get("detector")
        if isinstance(account, str) and isinstance(detector, str):
            out.setdefault(account, set()).add(detector)
    return {account: sorted(names) for account, names in out.items()}
