"""One account's flow sketch: what the stage's records do to it and the features it gives.

:class:`FlowSketch` applies ``edge``, ``back``, ``relay`` and ``gather``
records to the tables of one account (:mod:`detectors.flow.tables`) and
returns the features the flow detectors judge
(:mod:`detectors.flow.typologies`), with the relay and gather records to
send on. Records, relays, the ring check, novelty and amounts, the bounds of
the sketch and what it may miss: `docs/design.md`, "Flow stage internals".

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
A ring of four accounts, in an order that needs relays (`docs/design.md`, "Why relays"):

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
from bisect import bisect_left, bisect_right, insort
from collections.abc import Mapping
from typing import Any, NamedTuple

from detectors.flow.records import (
    _amount,
    _dests,
    _extended,
    _joined,
    _Origin,
    _origins,
    _transfer,
    ring_key,
)
from detectors.flow.tables import (
    _COUNT,
    _DEST_HI,
    _DEST_LO,
    _FIRST,
    _HOPS,
    _LAST,
    _NOVEL_AMOUNT,
    _NOVEL_TS,
    _SEEN,
    FlowTables,
)
from detectors.hashing import hash_hex, stable_hash
from detectors.params import optional_int
from detectors.timeline import densest_window


class BackOutcome(NamedTuple):
    """What :meth:`FlowSketch.observe_back` returns."""

    #: Features of the account as a hub and of any ring the record completed.
    features: dict[str, Any]
    #: Relay records to send, each to the partition of its ``"sender"``.
    relays: list[dict[str, Any]]


class FlowSketch(FlowTables):
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

    __slots__ = ()  # the tables' slots: no instance dict

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
