"""The flow stage in one process, for the conformance suite, tests and documentation.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from detectors.flow import (
    DEFAULT_FLOW_PARAMS,
    FlowParams,
    FlowSketch,
    edge_origins,
    gathered_origins,
)


@dataclass(slots=True)
class InMemoryFlowStage:
    """The flow stage in one process: one sketch per account, records delivered at once.

    What the worker does across partitions and topics, done synchronously: an
    edge is observed at its receiver, its back record at its sender, then
    every relay, breadth first, before the next transfer. For backtests,
    tests and documentation; it holds every account it sees, so it is not
    bounded.

    Parameters
    ----------
    params
        The bounds of every sketch.
    """

    params: FlowParams = DEFAULT_FLOW_PARAMS
    sketches: dict[str, FlowSketch] = field(default_factory=dict)
    #: Relay records delivered so far.
    relays: int = 0

    def sketch(self, account_id: str) -> FlowSketch:
        """The account's sketch, created when unseen."""
        sketch = self.sketches.get(account_id)
        if sketch is None:
            sketch = self.sketches[account_id] = FlowSketch.new(self.params)
        return sketch

    def edge_record(self, event_id: str, ts: int, sender: str, receiver: str,
                    amount_minor: int) -> dict[str, Any]:
        """The edge record stage 1 would send for this transfer now."""
        return {
            "kind": "edge", "event_id": event_id, "event_type": "transfer", "ts": ts,
            "sender": sender, "receiver": receiver, "amount_minor": amount_minor,
            "sender_origins": edge_origins(self.sketches.get(sender), sender, ts),
        }  # fmt: skip

    def deliver(self, edge: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Observe an edge record, its back record and the relays; the features of each."""
        receiver = self.sketch(edge["receiver"])
        features = receiver.observe_edge(edge)
        out = [features]
        back = {
            "kind": "back", "event_id": edge["event_id"], "event_type": edge.get("event_type"),
            "ts": edge["ts"], "sender": edge["sender"], "receiver": edge["receiver"],
            "amount_minor": edge.get("amount_minor"),
            "receiver_dests": receiver.dests_for_back(edge["ts"]),
            "cycle_length": features["cycle_length"], "novel": features["flow_novel"],
            "gathered": gathered_origins(edge),
        }  # fmt: skip
        # the worker's order: the back record, late gathers, then what each record sends
        queue: deque[Mapping[str, Any]] = deque([back, *receiver.late_gathers(edge, features)])
        while queue:
            record = queue.popleft()
            if record.get("kind") == "gather":
                out.append(self.sketch(record["receiver"]).observe_gather(record))
                continue
            sender = self.sketch(record["sender"])
            if record.get("kind") == "back":
                queue.extend(sender.gathers_for_back(record))
            outcome = sender.observe_back(record)
            out.append(outcome.features)
            queue.extend(outcome.relays)
            self.relays += len(outcome.relays)
        return out

    def transfer(self, event_id: str, ts: int, sender: str, receiver: str,
                 amount_minor: int) -> list[dict[str, Any]]:
        """Send one transfer through the stage; the features of every record it caused."""
        return self.deliver(self.edge_record(event_id, ts, sender, receiver, amount_minor))
