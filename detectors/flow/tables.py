"""What one account's flow sketch remembers: its tables, their changelog form and their upkeep.

:class:`FlowTables` holds the origins, destinations, senders, two-hop
gathers and recent receivers of one account, writes them as a JSON-able list
and reads them back (:data:`STATE_FORMAT`), and keeps them within the
:class:`~detectors.flow.params.FlowParams` bounds: pruning what fell out of
the windows, merging paths, evicting the oldest. What records do to the
tables and the features they give is :class:`~detectors.flow.sketch.FlowSketch`.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Sequence
from typing import Any, Final, Self

from detectors.flow.params import DEFAULT_FLOW_PARAMS, FlowParams
from detectors.flow.records import _Dest, _extended, _Origin
from detectors.hashing import stable_hash
from detectors.timeline import KEPT_WINDOWS

#: First element of :meth:`FlowSketch.to_state`; bumped when the layout changes.
STATE_FORMAT: Final = 1

# A path entry in memory: [hops, first_ts, last_ts, lo, hi] for origins, [hops, first_ts,
# last_ts, low, lo, hi] for destinations, where low is the smallest account hash on the path
# after this account and lo, hi the smallest and largest amount (minor units) of the path's
# transfers (0 for none known); in JSON the hash comes first.
_HOPS, _FIRST, _LAST, _LOW = range(4)
_DEST_LO, _DEST_HI = 4, 5
# A sender in memory: [last_ts, last_amount_minor, first_ts, transfers, novel_ts,
# novel_amount_minor], the last two of its latest transfer that extended paths (0 if none).
_TS, _AMOUNT, _SEEN, _COUNT, _NOVEL_TS, _NOVEL_AMOUNT = range(6)


class FlowTables:
    """The tables of one account's :class:`~detectors.flow.sketch.FlowSketch`.

    The sketch is the class to use; this base holds its state and keeps it
    within bounds.

    Parameters
    ----------
    params
        The bounds, shared by every sketch of the stage.
    """

    __slots__ = ("account_id", "dests", "gathers", "latest_ts", "origins", "params",
                 "receivers", "senders")

    def __init__(self, params: FlowParams = DEFAULT_FLOW_PARAMS) -> None:
        self.params = params
        self.account_id: str | None = None
        self.latest_ts = 0
        #: origin hash -> [hops, first_ts, last_ts, lo, hi]
        self.origins: dict[int, list[int]] = {}
        #: destination hash -> [hops, first_ts, last_ts, low, lo, hi]
        self.dests: dict[int, list[int]] = {}
        #: sender account id -> [last_ts, last_amount_minor, first_ts, transfers, novel_ts,
        #: novel_amount_minor]
        self.senders: dict[str, list[int]] = {}
        #: two-hop origin hash -> (account id or None, {via hash: ts})
        self.gathers: dict[int, tuple[str | None, dict[int, int]]] = {}
        #: receiver account id -> last novel ts, the most recent max_gather_origins
        self.receivers: dict[str, int] = {}

    # -- state --------------------------------------------------------------------------------

    @classmethod
    def new(cls, params: FlowParams = DEFAULT_FLOW_PARAMS) -> Self:
        """An empty sketch."""
        return cls(params)

    def to_state(self) -> list[Any]:
        """A JSON-able list; :meth:`from_state` rebuilds an equal sketch from it."""
        return [
            STATE_FORMAT,
            self.account_id,
            self.latest_ts,
            [[key, *entry] for key, entry in sorted(self.origins.items())],
            [[key, *entry] for key, entry in sorted(self.dests.items())],
            [[account, *entry] for account, entry in sorted(self.senders.items())],
            [
                [key, account, sorted([via, ts] for via, ts in vias.items())]
                for key, (account, vias) in sorted(self.gathers.items())
            ],
            sorted([account, ts] for account, ts in self.receivers.items()),
        ]

    @classmethod
    def from_state(
        cls, state: Sequence[Any], params: FlowParams = DEFAULT_FLOW_PARAMS
    ) -> Self:
        """The sketch :meth:`to_state` described."""
        if (not isinstance(state, list | tuple) or len(state) not in (7, 8)
                or state[0] != STATE_FORMAT):
            head = state[:1] if isinstance(state, list | tuple) else state
            message = f"unknown flow sketch state format: {head!r}"
            raise ValueError(message)
        _, account_id, latest_ts, origins, dests, senders, gathers = state[:7]
        # receivers are absent before late gathers were sent
        sketch_receivers = {account: ts for account, ts in state[7]} if len(state) > 7 else {}
        sketch = cls(params)
        sketch.account_id = account_id
        sketch.latest_ts = latest_ts
        # entries of format 1 written before amounts were kept have none (0, 0)
        sketch.origins = {row[0]: [*row[1:4], *(row[4:6] or (0, 0))] for row in origins}
        sketch.dests = {row[0]: [*row[1:5], *(row[5:7] or (0, 0))] for row in dests}
        # rows of three items are from before novelty was kept: every transfer was novel
        sketch.senders = {
            row[0]: list(row[1:7]) if len(row) == 7 else [row[1], row[2], row[1], 1, *row[1:3]]
            for row in senders
        }
        sketch.gathers = {
            key: (account, {via: ts for via, ts in vias}) for key, account, vias in gathers
        }
        sketch.receivers = sketch_receivers
        return sketch

    # -- internals: bookkeeping ----------------------------------------------------------------

    def _me(self, account_id: str | None) -> str:
        me = account_id or self.account_id
        if me is None:
            message = "an empty flow sketch needs account_id to say whose origins or dests it gives"
            raise ValueError(message)
        return me

    def _own(self, account_id: str) -> None:
        if self.account_id is None:
            self.account_id = account_id
        elif self.account_id != account_id:
            message = (
                f"record for account {account_id!r} given to the flow sketch of"
                f" {self.account_id!r}: records must be routed by their account"
            )
            raise ValueError(message)

    def _fits(self, first: int, last: int, ts: int) -> bool:
        return max(last, ts) - min(first, ts) <= self.params.window_seconds

    def _advance(self, ts: int) -> None:
        """Move the newest time seen forward and prune what fell out of the windows."""
        if ts <= self.latest_ts:
            return
        self.latest_ts = ts
        oldest = ts - self.params.window_seconds
        for table in (self.origins, self.dests):
            stale = [key for key, entry in table.items() if entry[_FIRST] < oldest]
            for key in stale:
                del table[key]
        forgotten = ts - self.params.sender_seconds
        for account in [a for a, entry in self.senders.items() if entry[_TS] < forgotten]:
            del self.senders[account]
        oldest_via = ts - KEPT_WINDOWS * self.params.hub_seconds
        for account in [a for a, paid in self.receivers.items() if paid < oldest_via]:
            del self.receivers[account]
        for key in list(self.gathers):
            vias = self.gathers[key][1]
            for via in [v for v, seen in vias.items() if seen < oldest_via]:
                del vias[via]
            if not vias:
                del self.gathers[key]

    def _merge(self, table: dict[int, list[int]], key: int, entry: list[int]) -> bool:
        """Keep the shorter, then fresher, path to ``key``; whether a relay should tell it."""
        old = table.get(key)
        if old is None or entry[_HOPS] < old[_HOPS]:
            table[key] = entry
            return True
        if entry[_HOPS] == old[_HOPS] and entry[_FIRST] > old[_FIRST]:
            table[key] = entry
            return entry[_FIRST] - old[_FIRST] >= self.params.refresh_seconds
        return False

    def _evict(self, table: dict[int, list[int]]) -> None:
        excess = len(table) - self.params.max_entries
        if excess <= 0:
            return
        # Oldest path first; among equally old, the farthest.
        if excess == 1:  # the usual case once a table is full: one pass, tuples for ties only
            oldest = min([entry[_FIRST] for entry in table.values()])
            _, key = min([(-entry[_HOPS], key) for key, entry in table.items()
                          if entry[_FIRST] == oldest])
            del table[key]
            return
        order = [(entry[_FIRST], -entry[_HOPS], key) for key, entry in table.items()]
        for _, _, key in heapq.nsmallest(excess, order):
            del table[key]

    def _add_sender(self, sender: str, ts: int, amount: int, novel: bool) -> None:
        entry = self.senders.get(sender)
        if entry is None:
            self.senders[sender] = [ts, amount, ts, 1, *((ts, amount) if novel else (0, 0))]
        else:
            replayed = ts in (entry[_TS], entry[_SEEN], entry[_NOVEL_TS])
            if not replayed:
                entry[_COUNT] += 1
            if ts >= entry[_TS]:
                entry[_TS] = ts
                entry[_AMOUNT] = amount
            entry[_SEEN] = min(entry[_SEEN], ts)
            if novel and ts >= entry[_NOVEL_TS]:
                entry[_NOVEL_TS] = ts
                entry[_NOVEL_AMOUNT] = amount
        excess = len(self.senders) - self.params.max_entries
        if excess > 0:
            others = (
                (entry[_TS], account)
                for account, entry in self.senders.items()
                if account != sender
            )
            for _, account in [min(others)] if excess == 1 else heapq.nsmallest(excess, others):
                del self.senders[account]

    def _add_origins(self, carried: list[_Origin], sender: str, ts: int, amount: int) -> None:
        assert self.account_id is not None
        mine = stable_hash(self.account_id)
        via = stable_hash(sender)
        origins = self.origins
        longest = self.params.path_hops
        window = self.params.window_seconds
        limit = self.params.amount_limit
        # A sender that passes on more direct senders than the gather table holds is too
        # busy to be a scatter-gather intermediary, and its origins would flush the table.
        gathering = sum(1 for entry in carried if entry[1] == 1) <= self.params.max_gather_origins
        gathered = False
        # The merge of _merge, inlined: this loop runs over up to K + 1 entries per transfer,
        # and origins need no "changed" answer since they are not relayed.
        for key, hops, first, last, lo, hi, name in carried:
            if key == mine:
                continue
            # split money changes size: intermediaries count whatever the amounts
            if hops == 1 and gathering and last <= ts:
                self._add_via(key, name, via, ts)
                gathered = True
            if hops >= longest:
                continue
            first = min(first, ts)
            last = max(last, ts)
            if last - first > window:
                continue
            amounts = _extended(lo, hi, hops, amount, limit)
            if amounts is None:
                continue
            lo, hi = amounts
            old = origins.get(key)
            hops += 1
            if old is None or hops < old[_HOPS] or (hops == old[_HOPS] and first > old[_FIRST]):
                origins[key] = [hops, first, last, lo, hi]
        self._evict(origins)
        if gathered:
            self._evict_gathers()

    def _add_receiver(self, receiver: str, ts: int) -> None:
        receivers = self.receivers
        receivers[receiver] = max(ts, receivers.get(receiver, ts))
        if len(receivers) > self.params.max_gather_origins:
            del receivers[min(receivers, key=lambda account: (receivers[account], account))]

    def _add_via(self, origin: int, name: str | None, via: int, ts: int) -> None:
        account, vias = self.gathers.get(origin, (None, {}))
        vias[via] = max(ts, vias.get(via, ts))
        if len(vias) > self.params.max_vias:
            del vias[min(vias, key=lambda v: (vias[v], v))]
        self.gathers[origin] = (name or account, vias)

    def _evict_gathers(self) -> None:
        excess = len(self.gathers) - self.params.max_gather_origins
        if excess <= 0:
            return

        # The origins with the fewest intermediaries go, the stalest among equals: noise
        # (one intermediary each) makes room, a gathering pattern keeps its place.
        def weight(key: int) -> tuple[int, int, int]:
            kept = self.gathers[key][1]
            return len(kept), max(kept.values()), key

        for key in sorted(self.gathers, key=weight)[:excess]:
            del self.gathers[key]

    def _add_dests(self, carried: list[_Dest], receiver: int, ts: int,
                   amount: int) -> list[int]:
        """Merge the receiver's destinations one hop further; the keys that changed."""
        assert self.account_id is not None
        mine = stable_hash(self.account_id)
        params = self.params
        max_ring, path_hops = params.max_ring, params.path_hops
        window, refresh = params.window_seconds, params.refresh_seconds
        limit = params.amount_limit
        dests = self.dests
        changed = []
        # The merge of _merge, inlined: this loop runs over up to K + 1 entries per back
        # or relay record, the stage's hottest loop.
        for key, hops, first, last, low, lo, hi in carried:
            new_hops = hops + 1
            if new_hops > (max_ring if key == mine else path_hops):
                continue
            new_first = min(first, ts)
            new_last = max(last, ts)
            if new_last - new_first > window:
                continue
            amounts = _extended(lo, hi, hops, amount, limit)
            if amounts is None:
                continue
            lo, hi = amounts
            old = dests.get(key)
            if old is None or new_hops < old[_HOPS]:
                dests[key] = [new_hops, new_first, new_last, min(low, receiver), lo, hi]
                changed.append(key)
            elif new_hops == old[_HOPS] and new_first > old[_FIRST]:
                dests[key] = [new_hops, new_first, new_last, min(low, receiver), lo, hi]
                if new_first - old[_FIRST] >= refresh:
                    changed.append(key)
        self._evict(dests)
        return [key for key in changed if key in dests]

    def _origins_by(self, ts: int) -> int:
        """Accounts whose money had reached this one by ``ts`` (at most ``max_entries``).

        Paths that began after ``ts`` do not count, so a transfer arriving
        early does not change what an earlier ring is judged by.
        """
        return sum(1 for entry in self.origins.values() if entry[_FIRST] <= ts)

    def _recent_senders(self) -> int:
        """Senders whose transfers extended paths within the window."""
        oldest = self.latest_ts - self.params.window_seconds
        return sum(1 for entry in self.senders.values() if entry[_NOVEL_TS] >= oldest)

    def _sender_names(self) -> dict[int, str]:
        return {stable_hash(account): account for account in self.senders}

    def _receivers(self) -> Iterator[tuple[int, list[int]]]:
        return ((key, entry) for key, entry in self.dests.items() if entry[_HOPS] == 1)

    def _is_hub(self) -> bool:
        degree = self.params.hub_degree
        if len(self.senders) >= degree and self._recent_senders() >= degree:
            return True
        if len(self.dests) < degree:  # receivers are some of the destinations
            return False
        # asked for every edge and back record: count receivers only as far as needed
        receivers = 0
        for entry in self.dests.values():
            if entry[_HOPS] == 1:
                receivers += 1
                if receivers >= degree:
                    return True
        return False
