"""Money flowing across accounts: rings, scatter-gather, gather-scatter and fan-in.

One account's payments say little about laundering; the shape of the flows
between accounts says a lot. Accounts live on different partitions, so the
flow stage is message passing in which every step reads and writes the state
of one account only: a :class:`FlowSketch` per account, kept by the worker in
a durable table like stage 1 keeps velocity windows, and stateless detectors
(:class:`Cycle`, :class:`ScatterGather`, :class:`GatherScatter`,
:class:`FanIn`) over the features the sketch computes.

Records, relays, the ring check, novelty and amounts, the bounds of the
sketch and what it may miss: `docs/design.md`, "Flow stage internals".

Features
--------
``observe_edge`` returns, for the receiver *v*:

==========================  ==============================================================
``record_kind``             ``"edge"`` (``"back"`` or ``"relay"`` from :meth:`~FlowSketch.observe_back`)
``event_id``, ``event_type``  of the transfer (``"transfer"`` when the record has none)
``ts``, ``amount_minor``    of the transfer
``account_id``              *v*, the receiver (for back and relay records: the sender)
``counterparty_id``         *u*, the sender (for back and relay records: the receiver)
``cycle_length``            accounts in the shortest ring this record completes; 0 if none
``cycle_amount_minor``      amount of the ring's closing transfer (0 if unknown or no ring)
``cycle_span_seconds``      event time from the ring's first to its last transfer (0 if none)
``cycle_origins``           accounts whose money had reached *v* through new relationships
                            within the window by the ring's last transfer (at most *K*; 0 if
                            no ring): where many do, rings close by chance
``fan_in_senders``          distinct senders of *v* in the densest ``fan_in_seconds`` window
                            around this transfer, this one included (at most *K*)
``fan_in_span_seconds``     first to last of those senders' transfers
``fan_in_seconds``          the fan-in window, for reasons
``scatter_gather_vias``     most distinct intermediaries through which one origin reached *v*
                            in two hops, within ``hub_seconds`` of this transfer, among the
                            origins whose money came through this transfer's sender
``scatter_gather_origin``   that origin's hash as 12 hex digits, or ``None``
``scatter_gather_origin_id``  its account id when known (the intermediary's sender), or ``None``
``gather_scatter_in``       distinct senders of the account within ``hub_seconds`` of ``ts``
``gather_scatter_out``      distinct receivers of the account within ``hub_seconds`` of ``ts``
``gather_scatter_new``      whether this record's counterparty is new among them (an edge's
                            sender, a back record's receiver); ``False`` on relays
``hub_seconds``             the hub window, for reasons
==========================  ==============================================================

On back records the fan-in and scatter-gather features are 0 (nothing came
in); on relays the hub features are 0 too (nothing new was sent).

Examples
--------
The ring of the section above, in the order that needs relays:

>>> from detectors.conformance import InMemoryFlowStage
>>> stage = InMemoryFlowStage()
>>> day = 86_400
>>> ring = ["acct-a", "acct-b", "acct-c", "acct-d"]
>>> found = []
>>> for i, (u, v) in enumerate([(0, 1), (2, 3), (1, 2), (3, 0)]):
...     for x in stage.transfer(f"t{i}", 1_709_251_200 + i * day, ring[u], ring[v], 1_200_000):
...         if x["cycle_length"]:
...             found.append((x["event_id"], x["account_id"], x["cycle_length"]))
>>> found
[('t3', 'acct-a', 4)]
"""  # noqa: E501 - the feature table's rows are one line each

from __future__ import annotations

import hashlib
import heapq
from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final, NamedTuple

from detectors.base import Detector, Features
from detectors.hashing import hash_hex, stable_hash
from detectors.money import format_minor
from detectors.params import non_negative_int, optional_int, positive_int
from detectors.timeline import KEPT_WINDOWS, densest_window, format_duration

#: First element of :meth:`FlowSketch.to_state`; bumped when the layout changes.
STATE_FORMAT: Final = 1
#: Record kinds the flow stage handles.
RECORD_KINDS: Final = ("edge", "back", "relay")

# A path entry in memory: [hops, first_ts, last_ts, lo, hi] for origins, [hops, first_ts,
# last_ts, low, lo, hi] for destinations, where low is the smallest account hash on the path
# after this account and lo, hi the smallest and largest amount (minor units) of the path's
# transfers (0 for none known); in JSON the hash comes first.
_HOPS, _FIRST, _LAST, _LOW = range(4)
_DEST_LO, _DEST_HI = 4, 5
# A sender in memory: [last_ts, last_amount_minor, first_ts, transfers, novel_ts,
# novel_amount_minor], the last two of its latest transfer that extended paths (0 if none).
_TS, _AMOUNT, _SEEN, _COUNT, _NOVEL_TS, _NOVEL_AMOUNT = range(6)


@dataclass(frozen=True, slots=True)
class FlowParams:
    """The bounds of every :class:`FlowSketch` of one stage.

    Parameters
    ----------
    max_entries
        Most origins, destinations and senders kept per account, each.
    window_seconds
        Longest event time from a ring's first transfer to its last; entries
        older than it (behind the newest record seen) are pruned.
    max_ring
        Most accounts (transfers) in a ring; paths are kept up to
        ``max_ring - 1`` hops.
    fan_in_seconds
        Width of the window in which distinct senders are counted.
    hub_seconds
        Half-width of the window around a transfer in which a hub's senders and
        receivers, and scatter-gather intermediaries, are counted.
    hub_degree
        An account with this many senders, or receivers, within the window is a
        hub: it keeps its own sketch but passes no origins or destinations on.
    max_vias
        Intermediaries kept per two-hop origin.
    max_gather_origins
        Two-hop origins whose intermediaries are kept.
    relay_hops
        Longest path, in transfers, whose changes are relayed; ``None`` for every
        kept path (``max_ring - 1``), which the any-order guarantee needs. Fewer
        relays mean less traffic and rings found only in favourable orders: 0
        turns relays off.
    amount_ratio
        How many times larger than the smallest transfer of a path or ring its
        largest may be; ``None`` keeps paths whatever their amounts. Mules take
        cuts, split and merge, so hop amounts vary; a path that joins a 30.00
        transfer to a 9,000.00 one is still not money moving on.
    novel_transfers
        Transfers between two accounts, counted by the receiver's memory of its
        senders, that extend paths: 1 keeps only the first transfer of a
        relationship, ``None`` every transfer. Repeat payments between the same
        accounts are ordinary life; laundering routes run over new relationships.
    memory_seconds
        How long a sender is remembered after its last transfer, for novelty
        and the fan-in count (at least ``window_seconds``). A year: ordinary
        relationships repeat quarterly, half-yearly or yearly, and one
        forgotten sooner comes back as new, extending paths by chance (on an
        AML simulator's history 90 days took about half of its "new"
        relationships for new; ``docs/detection.md``).
    """

    max_entries: int = 64
    window_seconds: int = 28 * 86_400
    max_ring: int = 10
    fan_in_seconds: int = 86_400
    hub_seconds: int = 3 * 86_400
    hub_degree: int = 32
    max_vias: int = 8
    max_gather_origins: int = 8
    relay_hops: int | None = None
    amount_ratio: int | None = 10
    novel_transfers: int | None = 1
    memory_seconds: int = 365 * 86_400

    def __post_init__(self) -> None:
        for name in (
            "max_entries", "window_seconds", "fan_in_seconds", "hub_seconds", "hub_degree",
            "max_vias", "max_gather_origins", "memory_seconds",
        ):  # fmt: skip
            positive_int(name, getattr(self, name))
        if self.relay_hops is not None:
            non_negative_int("relay_hops", self.relay_hops)
        if self.amount_ratio is not None:
            positive_int("amount_ratio", self.amount_ratio)
        if self.novel_transfers is not None:
            positive_int("novel_transfers", self.novel_transfers)
        positive_int("max_ring", self.max_ring)
        if not 2 <= self.max_ring <= 64:
            message = f"max_ring must be between 2 and 64 accounts, not {self.max_ring!r}"
            raise ValueError(message)

    @property
    def path_hops(self) -> int:
        """Most hops of a kept path: a ring of ``max_ring`` is such a path plus one transfer."""
        return self.max_ring - 1

    @property
    def relayed_hops(self) -> int:
        """Longest path whose changes are relayed."""
        if self.relay_hops is None:
            return self.path_hops
        return min(self.relay_hops, self.path_hops)

    @property
    def amount_limit(self) -> int | None:
        """``100 * amount_ratio``: amounts fit when ``hi * 100 <= lo * amount_limit``."""
        return None if self.amount_ratio is None else 100 * self.amount_ratio

    @property
    def sender_seconds(self) -> int:
        """How long a sender is remembered after its last transfer."""
        return max(self.memory_seconds, self.window_seconds)

    @property
    def refresh_seconds(self) -> int:
        """How much fresher an equally short path must be to be relayed again."""
        return max(1, self.window_seconds // 8)

    def max_state_bytes(self, id_bytes: int = 128) -> int:
        """Upper bound of ``len(orjson.dumps(sketch.to_state()))``.

        Parameters
        ----------
        id_bytes
            The JSON length of the longest account id, quotes excluded.

        Examples
        --------
        >>> FlowParams().max_state_bytes(24)
        21108
        >>> FlowParams().max_state_bytes()
        29532
        """
        ident = id_bytes + 2
        # [hash<=15 digits, hops<=2, ts<=10, ts<=10, lo<=18, hi<=18] and a comma;
        # destinations add a low hash
        path = 1 + 15 + 1 + 2 + 1 + 10 + 1 + 10 + 1 + 18 + 1 + 18 + 1 + 1
        dest = path + 1 + 15
        # [id, ts<=10, amount<=18 digits (10**17 minor units), ts, count<=10 digits, ts,
        # amount] and a comma
        sender = 1 + ident + 1 + 10 + 1 + 18 + 1 + 10 + 1 + 10 + 1 + 10 + 1 + 18 + 1 + 1
        via = 1 + 15 + 1 + 10 + 1 + 1
        gather = 1 + 15 + 1 + max(ident, 4) + 1 + 2 + via * self.max_vias + 1 + 1
        header = 1 + 2 + ident + 1 + 10 + 1 + 5 * 2 + 1
        # [id, ts] and a comma
        receiver = 1 + ident + 1 + 10 + 1 + 1
        return (
            header
            + receiver * self.max_gather_origins
            + (path + dest) * self.max_entries
            + sender * self.max_entries
            + gather * self.max_gather_origins
        )


DEFAULT_FLOW_PARAMS: Final = FlowParams()


class BackOutcome(NamedTuple):
    """What :meth:`FlowSketch.observe_back` returns."""

    #: Features of the account as a hub and of any ring the record completed.
    features: dict[str, Any]
    #: Relay records to send, each to the partition of its ``"sender"``.
    relays: list[dict[str, Any]]


class FlowSketch:
    """One account's bounded view of the flows through it.

    See the module documentation for the records, the bounds and the
    features. Build one with :meth:`new` or :meth:`from_state`; the account id
    is learnt from the first record (the receiver of an edge, the sender of a
    back or relay record).

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
    def new(cls, params: FlowParams = DEFAULT_FLOW_PARAMS) -> FlowSketch:
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
    ) -> FlowSketch:
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

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FlowSketch):
            return NotImplemented
        return self.params == other.params and self.to_state() == other.to_state()

    __hash__ = None  # type: ignore[assignment]  # mutable: not hashable

    def __repr__(self) -> str:
        return (
            f"FlowSketch(account_id={self.account_id!r}, origins={len(self.origins)},"
            f" dests={len(self.dests)}, senders={len(self.senders)})"
        )

    # -- what records carry -------------------------------------------------------------------

    def origins_for_edge(self, ts: int, account_id: str | None = None) -> list[list[Any]]:
        """The ``sender_origins`` of an edge leaving this account at ``ts``.

        This account at hop 0, then its origins that fit a ring's window with
        ``ts``, as ``[hash, hops, first_ts, last_ts, lo, hi]``. Hop-1 entries
        carry the sender's account id as a seventh element when the sketch
        still has it, so the receiver can name a
        scatter-gather origin. A hub sends itself only.
        """
        me = self._me(account_id)
        out: list[list[Any]] = [[stable_hash(me), 0, ts, ts, 0, 0]]
        if self._is_hub():
            return out
        named = self._sender_names() if self.origins else {}
        for key, (hops, first, last, lo, hi) in sorted(self.origins.items()):
            if self._fits(first, last, ts):
                entry: list[Any] = [key, hops, first, last, lo, hi]
                if hops == 1 and key in named:
                    entry.append(named[key])
                out.append(entry)
        return out

    def dests_for_back(self, ts: int, account_id: str | None = None) -> list[list[Any]]:
        """The ``receiver_dests`` of the back record of an edge into this account at ``ts``.

        This account at hop 0, then its destinations that fit with ``ts`` (the
        entry for the account itself excluded; those at ``max_ring - 1`` hops
        can only close a ring at the account they name). A hub sends itself
        only.
        """
        me = self._me(account_id)
        mine = stable_hash(me)
        out: list[list[Any]] = [[mine, 0, ts, ts, mine, 0, 0]]
        if self._is_hub():
            return out
        for key, entry in sorted(self.dests.items()):
            if key != mine and self._fits(entry[_FIRST], entry[_LAST], ts):
                out.append([key, *entry])
        return out

    # -- records ------------------------------------------------------------------------------

    def observe_edge(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """Apply an ``edge`` record at its receiver and return the receiver's features.

        Raises ``ValueError`` when the record lacks ``ts``, ``sender`` or
        ``receiver``, or belongs to another account: records are built by the
        worker, so a bad one is a bug for the stage to log and skip.
        """
        ts, sender, receiver = _transfer(record)
        self._own(receiver)
        amount = _amount(record)
        self._advance(ts)
        features = self._features(record, "edge", receiver, sender, ts, amount)
        if sender == receiver:
            return features
        novel = self._novel(sender, ts)
        features["flow_novel"] = novel
        carried = _origins(record.get("sender_origins"), sender, ts) if novel else []
        ring = self._ring_at_edge(carried, ts, amount) if novel else None
        if ring is not None:
            length, first, last, lo, hi = ring
            features.update(cycle_length=length, cycle_amount_minor=amount,
                            cycle_span_seconds=last - first, cycle_low_minor=lo,
                            cycle_high_minor=hi, cycle_key=ring_key(length, first, last, lo, hi))
            # Remembered as the ring through this account, so that no later wave reports it
            # here again. Its low is not read: only a new or shorter ring's low is.
            self._merge(self.dests, stable_hash(receiver), [length, first, last, 0, lo, hi])
            self._evict(self.dests)
        self._add_sender(sender, ts, amount, novel)
        if not novel:  # a repeat payment: it counts nowhere
            return features
        self._add_origins(carried, sender, ts, amount)
        if ring is not None:
            features["cycle_origins"] = self._origins_by(ring[2])
        features.update(self._fan_in(sender))
        features.update(self._scatter_gather(ts, stable_hash(sender)))
        features.update(self._hub(ts, sender=sender))
        features["gather_scatter_new"] = True
        return features

    def _novel(self, sender: str, ts: int) -> bool:
        """Whether the transfer from ``sender`` at ``ts`` is among a relationship's first.

        Decided on event time: a transfer no later than the first one
        remembered is novel whatever order the two arrive in.
        """
        known = self.senders.get(sender)
        limit = self.params.novel_transfers
        return (known is None or limit is None or known[_COUNT] < limit
                or ts <= known[_SEEN] or ts == known[_NOVEL_TS])

    def observe_back(self, record: Mapping[str, Any]) -> BackOutcome:
        """Apply a ``back`` or ``relay`` record at its sender.

        Returns the sender's features and the relays to send to the sender's
        own senders when its destinations changed. Raises ``ValueError`` like
        :meth:`observe_edge`.
        """
        ts, sender, receiver = _transfer(record)
        self._own(sender)
        amount = _amount(record)
        kind = "relay" if record.get("kind") == "relay" else "back"
        self._advance(ts)
        features = self._features(record, kind, sender, receiver, ts, amount)
        if sender == receiver:
            return BackOutcome(features, [])
        if record.get("novel") is False:  # a repeat payment, decided at the receiver
            return BackOutcome(features, [])
        features["flow_novel"] = True
        reported = optional_int(record.get("cycle_length")) or 0
        carried = _dests(record.get("receiver_dests"), receiver, ts)
        receiver_hash = stable_hash(receiver)
        known = self.dests.get(receiver_hash)
        new_receiver = known is None or known[_HOPS] != 1 or known[_FIRST] >= ts
        changed = self._add_dests(carried, receiver_hash, ts, amount)
        ring = None if reported else self._ring_at_back(changed)
        if ring is not None:
            length, first, last, lo, hi = ring
            reported = length
            features.update(cycle_length=length, cycle_amount_minor=amount,
                            cycle_span_seconds=last - first, cycle_low_minor=lo,
                            cycle_high_minor=hi, cycle_origins=self._origins_by(last),
                            cycle_key=ring_key(length, first, last, lo, hi))
        if kind == "back":
            features.update(self._hub(ts, receiver=receiver))
            features["gather_scatter_new"] = new_receiver
            self._add_receiver(receiver, ts)
        relays = self._relays(record, changed, reported)
        return BackOutcome(features, relays)

    def late_gathers(self, record: Mapping[str, Any], features: Mapping[str, Any]) -> list[
            dict[str, Any]]:
        """``gather`` records for receivers this account paid after the edge's event time.

        An edge ``o -> u`` processed after ``u -> r`` although it happened
        before (a backlog) arrives too late to travel with ``u -> r``: each such
        ``r``, paid within ``hub_seconds`` after it, is told that ``o``'s money
        reached it through ``u``, as it would have been in event order.
        Nothing to send when records arrive in order.
        """
        ts, sender, receiver = _transfer(record)
        if not features.get("flow_novel") or sender == receiver or self._is_hub():
            return []
        if len(self.senders) > self.params.max_gather_origins:
            return []  # too busy to be an intermediary (see _add_origins)
        reach = self.params.window_seconds
        out = []
        for account, paid in sorted(self.receivers.items()):
            if not ts <= paid <= ts + reach:
                continue
            out.append({
                "kind": "gather", "event_id": record.get("event_id"),
                "event_type": record.get("event_type") or "transfer",
                "relay_id": f"gather-{record.get('event_id')}-{account}",
                "ts": paid, "sender": receiver, "receiver": account,
                "amount_minor": 0, "origin": sender,
            })  # fmt: skip
        return out

    def gathers_for_back(self, record: Mapping[str, Any]) -> list[dict[str, Any]]:
        """``gather`` records for the senders this account had that the edge did not carry.

        Called with a ``back`` record: an edge built before this account's own
        incoming transfers were processed (a backlog) carried none of them;
        ``record["gathered"]`` lists the hop-1 origins it did carry.
        """
        ts, sender, receiver = _transfer(record)
        if record.get("novel") is False or sender == receiver or self._is_hub():
            return []
        if len(self.senders) > self.params.max_gather_origins:
            return []
        carried = set(record.get("gathered") or ())
        oldest = ts - self.params.window_seconds
        return [
            {"kind": "gather", "event_id": record.get("event_id"),
             "event_type": record.get("event_type") or "transfer",
             "relay_id": f"gather-{record.get('event_id')}-{origin}",
             "ts": ts, "sender": sender, "receiver": receiver, "amount_minor": 0,
             "origin": origin}
            for origin, entry in sorted(self.senders.items())
            if entry[_NOVEL_TS] and oldest <= entry[_SEEN] <= ts and origin != receiver
            and stable_hash(origin) not in carried
        ]  # fmt: skip

    def observe_gather(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """Apply a ``gather`` record (see :meth:`late_gathers`) at its receiver."""
        ts, via, receiver = _transfer(record)
        origin = record.get("origin")
        if not isinstance(origin, str) or not origin:
            message = f"a gather record needs its origin account, not {origin!r}"
            raise ValueError(message)
        self._own(receiver)
        self._advance(ts)
        features = self._features(record, "gather", receiver, via, ts, 0)
        via_hash = stable_hash(via)
        self._add_via(stable_hash(origin), origin, via_hash, ts)
        self._evict_gathers()
        features.update(self._scatter_gather(ts, via_hash))
        return features

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

    # -- internals: rings ---------------------------------------------------------------------

    def _ring_at_edge(self, carried: list[_Origin], ts: int,
                      amount: int) -> tuple[int, int, int, int, int] | None:
        """(length, first_ts, last_ts, lo, hi) of the shortest ring the edge closes, or None."""
        assert self.account_id is not None
        mine = stable_hash(self.account_id)
        params = self.params
        limit = params.amount_limit
        best: tuple[int, int, int, int, int, int] | None = None
        for key, hops, first, last, lo, hi, _ in carried:
            if key == mine:
                reach: list[int] | None = [0, ts, ts, mine, 0, 0]
            else:
                reach = self.dests.get(key)
            if reach is None:
                continue
            length = reach[_HOPS] + hops + 1
            if not 2 <= length <= params.max_ring:
                continue
            ring_first = min(first, reach[_FIRST], ts)
            ring_last = max(last, reach[_LAST], ts)
            span = ring_last - ring_first
            if span > params.window_seconds:
                continue
            # the carried path and this edge, then the receiver's path back to ``key``
            amounts = _extended(lo, hi, hops, amount, limit)
            if amounts is None:
                continue
            amounts = _joined(amounts, reach[_DEST_LO], reach[_DEST_HI], reach[_HOPS], limit)
            if amounts is None:
                continue
            ring_lo, ring_hi = amounts
            if best is None or (length, span) < best[:2]:
                best = (length, span, ring_first, ring_last, ring_lo, ring_hi)
        if best is None:
            return None
        length, _, ring_first, ring_last, ring_lo, ring_hi = best
        return length, ring_first, ring_last, ring_lo, ring_hi

    def _ring_at_back(self, changed: list[int]) -> tuple[int, int, int, int, int] | None:
        """(length, first_ts, last_ts, lo, hi) of a ring through this account just learnt, or None.

        Every account of a ring learns that it reaches itself, each through the
        relay wave of whichever transfer completed the ring for it; only the
        ring's leader, the account with the smallest hash on it, reports, so
        one ring gives one finding whatever the order in which waves arrive.
        """
        assert self.account_id is not None
        mine = stable_hash(self.account_id)
        if mine not in changed:
            return None
        hops, first, last, low, lo, hi = self.dests[mine]
        if low != mine or not 2 <= hops <= self.params.max_ring:
            return None
        return hops, first, last, lo, hi

    def _relays(self, record: Mapping[str, Any], changed: list[int],
                reported: int) -> list[dict[str, Any]]:
        assert self.account_id is not None
        mine = stable_hash(self.account_id)
        if not changed or self._is_hub():
            return []
        # An entry at the longest path can grow no further: it only closes a ring at the
        # account it names, so it goes to that sender alone.
        longest = self.params.path_hops
        relayed = self.params.relayed_hops
        spread = min(longest - 1, relayed)
        shared = [
            [key, *self.dests[key]]
            for key in sorted(changed)
            if key != mine and self.dests[key][_HOPS] <= spread
        ]
        last_hop = {
            key: [key, *self.dests[key]]
            for key in changed
            if key != mine and self.dests[key][_HOPS] == longest and longest <= relayed
        }
        parent = str(record.get("relay_id") or record.get("event_id", ""))
        relays = []
        oldest = self.latest_ts - self.params.window_seconds
        for account, entry in sorted(self.senders.items()):
            sent_ts, sent_amount = entry[_NOVEL_TS], entry[_NOVEL_AMOUNT]
            if sent_ts < oldest or not sent_ts:
                continue  # only transfers that extended paths carry their changes back
            closing = last_hop.get(stable_hash(account))
            payload = [*shared, closing] if closing is not None else shared
            if not payload:
                continue
            relay_key = f"{parent}\x1f{self.account_id}\x1f{account}".encode()
            relay_id = "relay-" + hashlib.blake2b(relay_key, digest_size=12).hexdigest()
            relays.append({
                "kind": "relay",
                "event_id": record.get("event_id"),
                "event_type": record.get("event_type") or "transfer",
                "relay_id": relay_id,
                "ts": sent_ts,
                "sender": account,
                "receiver": self.account_id,
                "amount_minor": sent_amount,
                # fresh lists made above, never the sketch's own: shared, not copied, by relays
                "receiver_dests": payload,
                "cycle_length": reported,
            })  # fmt: skip
        return relays

    # -- internals: features ------------------------------------------------------------------

    def _features(self, record: Mapping[str, Any], kind: str, account: str, counterparty: str,
                  ts: int, amount: int) -> dict[str, Any]:
        return {
            "record_kind": kind,
            "event_id": record.get("event_id"),
            "event_type": record.get("event_type") or "transfer",
            "ts": ts,
            "amount_minor": amount,
            "account_id": account,
            "counterparty_id": counterparty,
            "cycle_length": 0,
            "cycle_amount_minor": 0,
            "cycle_span_seconds": 0,
            "cycle_low_minor": 0,
            "cycle_high_minor": 0,
            "cycle_origins": 0,
            "fan_in_senders": 0,
            "fan_in_span_seconds": 0,
            "fan_in_seconds": self.params.fan_in_seconds,
            "scatter_gather_vias": 0,
            "scatter_gather_origin": None,
            "scatter_gather_origin_id": None,
            "gather_scatter_in": 0,
            "gather_scatter_out": 0,
            "gather_scatter_new": False,
            "hub_seconds": self.params.hub_seconds,
            "flow_novel": False,
            "cycle_key": None,
            "scatter_gather_key": None,
            "gather_scatter_key": None,
            "fan_in_key": None,
        }

    def _fan_in(self, sender: str) -> dict[str, Any]:
        """New senders in the densest window around this sender's first transfer.

        Each sender counts at the time of its first remembered transfer, so the
        count does not depend on the order in which transfers arrive.
        """
        ts = self.senders[sender][_SEEN]
        others = [entry[_SEEN] for account, entry in self.senders.items() if account != sender]
        times = sorted(others)
        insort(times, ts)
        anchor = times.index(ts)
        lo, hi = densest_window(times, anchor, self.params.fan_in_seconds)
        return {"fan_in_senders": hi - lo, "fan_in_span_seconds": times[hi - 1] - times[lo],
                "fan_in_key": f"fan_in:{self.account_id}"}

    def _scatter_gather(self, ts: int, via: int | None = None) -> dict[str, Any]:
        """The origin reaching this account through the most intermediaries around ``ts``.

        With ``via`` (the hash of this edge's sender), only origins whose money came
        through that intermediary count, in the densest window of ``2 * hub_seconds``
        that holds that intermediary's time: a later, unrelated transfer into a
        collector does not report the pattern again, and whichever of the
        intermediaries arrives last sees the same window.
        """
        width = 2 * self.params.hub_seconds
        best: tuple[int, int] | None = None
        for key, (_, vias) in self.gathers.items():
            if via is not None and via not in vias:
                continue
            times = sorted(vias.values())
            anchor = times.index(vias[via]) if via is not None else times.index(
                min(times, key=lambda seen: abs(seen - ts)))
            lo, hi = densest_window(times, anchor, width)
            count = hi - lo
            if count and (best is None or (count, -key) > (best[0], -best[1])):
                best = (count, key)
        if best is None:
            return {}
        count, key = best
        return {
            "scatter_gather_vias": count,
            "scatter_gather_origin": hash_hex(key),
            "scatter_gather_origin_id": self.gathers[key][0],
            "scatter_gather_key": f"scatter_gather:{hash_hex(key)}:{self.account_id}",
        }

    def _hub(self, ts: int, *, sender: str | None = None,
             receiver: str | None = None) -> dict[str, Any]:
        """New senders and receivers in the busiest window of ``2 * hub_seconds`` holding ``ts``.

        Senders count at their first transfer, receivers at their latest that
        extended paths: a record arriving late finds the window it completes.
        """
        width = 2 * self.params.hub_seconds
        ins = [entry[_SEEN] for account, entry in self.senders.items()
               if entry[_NOVEL_TS] and account != sender and abs(entry[_SEEN] - ts) <= width]
        outs = [entry[_LAST] for key, entry in self.dests.items()
                if entry[_HOPS] == 1 and abs(entry[_LAST] - ts) <= width]
        mine = stable_hash(receiver) if receiver is not None else None
        if mine is not None:
            outs = [last for key, entry in self.dests.items()
                    if entry[_HOPS] == 1 and key != mine
                    for last in (entry[_LAST],) if abs(last - ts) <= width]
            outs.append(ts)
        if sender is not None:
            ins.append(self.senders[sender][_SEEN] if sender in self.senders else ts)
        ins.sort()
        outs.sort()
        best = (0, 0)
        for start in sorted({t for t in (*ins, *outs, ts) if ts - width <= t <= ts}):
            end = start + width
            count_in = bisect_right(ins, end) - bisect_left(ins, start)
            count_out = bisect_right(outs, end) - bisect_left(outs, start)
            if min(count_in, count_out) > min(best) or (
                    min(count_in, count_out) == min(best) and count_in + count_out > sum(best)):
                best = (count_in, count_out)
        return {"gather_scatter_in": best[0], "gather_scatter_out": best[1],
                "gather_scatter_key": f"gather_scatter:{self.account_id}"}


def gathered_origins(edge: Mapping[str, Any]) -> list[int]:
    """Hashes of the hop-1 origins an edge record carried (its back record lists them)."""
    rows = edge.get("sender_origins")
    if not isinstance(rows, list):
        return []
    return sorted({row[0] for row in rows if isinstance(row, list) and len(row) > 1
                   and row[1] == 1 and type(row[0]) is int})


def ring_key(length: int, first: int, last: int, lo: int, hi: int) -> str:
    """What names one ring whichever of its accounts finds it and in whatever order.

    Its length, first and last transfer times and smallest and largest
    amounts: the same for every account of the ring, unlike the record that
    happens to close it.

    Examples
    --------
    >>> ring_key(4, 1_709_251_200, 1_709_510_400, 90_000, 120_000)
    'ring:4:1709251200:1709510400:90000:120000'
    """
    return f"ring:{length}:{first}:{last}:{lo}:{hi}"


def edge_origins(sketch: FlowSketch | None, account_id: str, ts: int) -> list[list[Any]]:
    """``sender_origins`` for an edge leaving ``account_id`` at ``ts``, its sketch possibly unseen.

    Examples
    --------
    >>> edge_origins(None, "acct-1", 1_709_251_200) == [[stable_hash("acct-1"), 0, 1_709_251_200,
    ...                                                   1_709_251_200]]
    True
    """
    if sketch is None:
        return [[stable_hash(account_id), 0, ts, ts]]
    return sketch.origins_for_edge(ts, account_id)


# -- records in -----------------------------------------------------------------------------------

# A carried origin: (hash, hops, first_ts, last_ts, lo, hi, account id or None).
_Origin = tuple[int, int, int, int, int, int, str | None]
# A carried destination: (hash, hops, first_ts, last_ts, low, lo, hi).
_Dest = tuple[int, int, int, int, int, int, int]


def _extended(lo: int, hi: int, hops: int, amount: int,
              limit: int | None) -> tuple[int, int] | None:
    """The amount range of a path of ``hops`` transfers once a transfer of ``amount`` is added.

    ``None`` when the path fails the amount check (``limit`` is
    :attr:`FlowParams.amount_limit`): its amounts spread too far, or the
    transfer or the path (``hops > 0`` with ``lo`` 0) has no known amount, so
    no checked path can go through it. Without a limit the range is kept but
    never checked. Called for every carried entry: keep it cheap.
    """
    if limit is not None and (not amount or (hops and not lo)):
        return None
    if amount:
        if not lo or amount < lo:
            lo = amount
        if amount > hi:
            hi = amount
    if limit is not None and hi * 100 > lo * limit:
        return None
    return lo, hi


def _joined(amounts: tuple[int, int], lo: int, hi: int, hops: int,
            limit: int | None) -> tuple[int, int] | None:
    """Two paths' amount ranges as one (a ring), or ``None`` when it fails the check."""
    if hops and not lo:
        return None if limit is not None else amounts
    if not hops:
        return amounts
    joined = min(amounts[0], lo) if amounts[0] else lo, max(amounts[1], hi)
    if limit is not None and joined[1] * 100 > joined[0] * limit:
        return None
    return joined


def _transfer(record: Mapping[str, Any]) -> tuple[int, str, str]:
    ts = optional_int(record.get("ts"))
    sender = record.get("sender")
    receiver = record.get("receiver")
    if ts is None or not isinstance(sender, str) or not isinstance(receiver, str):
        message = (
            "a flow record needs an int ts and string sender and receiver, not"
            f" ts={record.get('ts')!r} sender={sender!r} receiver={receiver!r}"
        )
        raise ValueError(message)
    return ts, sender, receiver


def _amount(record: Mapping[str, Any]) -> int:
    amount = optional_int(record.get("amount_minor"))
    return amount if amount is not None and amount > 0 else 0


def _origins(raw: Any, account: str, ts: int) -> list[_Origin]:
    """Carried origins; the sender itself at hop 0 when missing.

    Rows are ``[hash, hops, first_ts, last_ts, lo, hi(, account_id)]``; rows
    of four or five items (with no amounts) are from before amounts were kept.
    """
    if raw is None:
        return [(stable_hash(account), 0, ts, ts, 0, 0, None)]
    out: list[_Origin] = []
    shape = "[hash, hops, first_ts, last_ts, lo, hi(, account_id)]"
    for item in _rows(raw, "sender_origins", shape):
        size = len(item)
        if size >= 6:
            lo, hi = _amounts(item, 4, "sender_origins", shape)
            name = item[6] if size == 7 and isinstance(item[6], str) else None
        else:
            lo = hi = 0
            name = item[4] if size == 5 and isinstance(item[4], str) else None
        out.append((item[0], item[1], item[2], item[3], lo, hi, name))
    return out


def _dests(raw: Any, account: str, ts: int) -> list[_Dest]:
    """Carried destinations; the receiver itself at hop 0 when missing.

    Rows are ``[hash, hops, first_ts, last_ts, low, lo, hi]``; rows of five
    items are from before amounts were kept.
    """
    if raw is None:
        key = stable_hash(account)
        return [(key, 0, ts, ts, key, 0, 0)]
    out: list[_Dest] = []
    shape = "[hash, hops, first_ts, last_ts, low, lo, hi]"
    for item in _rows(raw, "receiver_dests", shape):
        low = optional_int(item[4]) if len(item) in (5, 7) else None
        if low is None:
            message = f"receiver_dests entries must be {shape}, not {item!r}"
            raise ValueError(message)
        lo, hi = _amounts(item, 5, "receiver_dests", shape) if len(item) == 7 else (0, 0)
        out.append((item[0], item[1], item[2], item[3], low, lo, hi))
    return out


def _amounts(item: list[Any], at: int, name: str, shape: str) -> tuple[int, int]:
    lo, hi = item[at], item[at + 1]
    if type(lo) is not int or type(hi) is not int or lo < 0 or hi < lo:
        message = f"{name} entries must be {shape} with 0 <= lo <= hi, not {item!r}"
        raise ValueError(message)
    return lo, hi


def _rows(raw: Any, name: str, shape: str) -> list[list[Any]]:
    if not isinstance(raw, list):
        message = f"{name} must be a list, not {type(raw).__name__}"
        raise ValueError(message)
    for item in raw:
        # type() is int, not isinstance: a bool is no hash, hop count or time. Checked
        # inline because a record carries up to K + 1 entries on every transfer.
        if (
            type(item) is not list
            or not 4 <= len(item) <= 7
            or type(item[0]) is not int
            or type(item[1]) is not int
            or type(item[2]) is not int
            or type(item[3]) is not int
        ):
            message = f"{name} entries must be {shape}, not {item!r}"
            raise ValueError(message)
    return raw


# -- detectors ------------------------------------------------------------------------------------


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


__all__ = [
    "DEFAULT_FLOW_PARAMS",
    "RECORD_KINDS",
    "STATE_FORMAT",
    "BackOutcome",
    "Cycle",
    "FanIn",
    "FlowParams",
    "FlowSketch",
    "GatherScatter",
    "ScatterGather",
    "edge_origins",
    "hash_hex",
    "stable_hash",
]
