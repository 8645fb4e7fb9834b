"""Properties of the flow stage: every ring is found, whatever the order; no ring is invented.

The message passing of the worker is simulated in one process. In order
(:class:`detectors.conformance.InMemoryFlowStage`), each transfer is observed at its
receiver, then its back record at its sender, then every relay it causes,
before the next transfer. Out of order, every record waits in one pool and
the next one delivered is drawn at random, so an edge may carry origins read
long before it is observed and relays may lag behind later transfers.
"""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from detectors.conformance import InMemoryFlowStage
from detectors.flow import DEFAULT_FLOW_PARAMS, FlowSketch, edge_origins

T0 = 1_709_251_200
WINDOW = DEFAULT_FLOW_PARAMS.window_seconds
MAX_RING = DEFAULT_FLOW_PARAMS.max_ring

# No deadline: the machines that run the suite are shared and their timing noisy.
PROPERTY = settings(max_examples=300, deadline=None)

account_names = st.lists(
    st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12),
    min_size=MAX_RING, max_size=MAX_RING, unique=True,
)


@st.composite
def rings(draw: st.DrawFn) -> tuple[list[tuple[str, str]], list[int], list[int], int]:
    """A ring of 2 to 8 accounts: its transfers, their event times, a processing order, a bound."""
    length = draw(st.integers(2, MAX_RING))
    names = draw(account_names)[:length]
    transfers = [(names[i], names[(i + 1) % length]) for i in range(length)]
    bound = draw(st.integers(0, WINDOW))
    times = draw(st.lists(st.integers(T0, T0 + bound), min_size=length, max_size=length))
    order = draw(st.permutations(range(length)))
    return transfers, times, list(order), bound


@st.composite
def layered_flows(draw: st.DrawFn) -> tuple[list[tuple[str, str]], list[int]]:
    """Transfers from each layer of accounts to later layers only: no ring is possible."""
    layers = draw(st.lists(st.integers(1, 4), min_size=2, max_size=6))
    names = [[f"L{layer}-{i}" for i in range(width)] for layer, width in enumerate(layers)]
    pairs = [
        (sender, receiver)
        for layer, senders in enumerate(names)
        for later in names[layer + 1:layer + 3]
        for sender in senders
        for receiver in later
    ]
    transfers = draw(st.lists(st.sampled_from(pairs), min_size=1, max_size=40))
    times = draw(st.lists(st.integers(T0, T0 + WINDOW), min_size=len(transfers),
                          max_size=len(transfers)))
    return transfers, times


def ring_reports(features: list[dict[str, Any]]) -> list[tuple[str, str, int]]:
    return [(x["event_id"], x["record_kind"], x["cycle_length"])
            for x in features if x["cycle_length"]]


def in_order(transfers: list[tuple[str, str]], times: list[int],
             order: list[int]) -> list[dict[str, Any]]:
    stage = InMemoryFlowStage()
    features: list[dict[str, Any]] = []
    for index in order:
        sender, receiver = transfers[index]
        features += stage.transfer(f"t{index}", times[index], sender, receiver, 100_000)
    return features


def out_of_order(transfers: list[tuple[str, str]], times: list[int],
                 rng: random.Random) -> list[dict[str, Any]]:
    """Deliver every record from one pool in a random order; the features of each."""
    sketches: dict[str, FlowSketch] = {}

    def sketch(account: str) -> FlowSketch:
        return sketches.setdefault(account, FlowSketch.new())

    # ("emit", index): stage 1 reads the sender's origins; then the edge travels.
    pool: list[tuple[str, Any]] = [("emit", index) for index in range(len(transfers))]
    features: list[dict[str, Any]] = []
    while pool:
        kind, item = pool.pop(rng.randrange(len(pool)))
        if kind == "emit":
            sender, receiver = transfers[item]
            ts = times[item]
            pool.append(("edge", {
                "kind": "edge", "event_id": f"t{item}", "ts": ts, "sender": sender,
                "receiver": receiver, "amount_minor": 100_000,
                "sender_origins": edge_origins(sketches.get(sender), sender, ts),
            }))  # fmt: skip
        elif kind == "edge":
            receiver_sketch = sketch(item["receiver"])
            x = receiver_sketch.observe_edge(item)
            features.append(x)
            pool.append(("back", {
                "kind": "back", "event_id": item["event_id"], "ts": item["ts"],
                "sender": item["sender"], "receiver": item["receiver"],
                "amount_minor": item["amount_minor"],
                "receiver_dests": receiver_sketch.dests_for_back(item["ts"]),
                "cycle_length": x["cycle_length"],
            }))  # fmt: skip
        else:
            outcome = sketch(item["sender"]).observe_back(item)
            features.append(outcome.features)
            pool += [("back", relay) for relay in outcome.relays]
    return features


@PROPERTY
@given(rings())
def test_a_ring_is_found_exactly_once_on_its_last_transfer_in_any_order(
    ring: tuple[list[tuple[str, str]], list[int], list[int], int],
) -> None:
    transfers, times, order, bound = ring
    features = in_order(transfers, times, order)
    last = f"t{order[-1]}"
    assert ring_reports(features) == [(last, "edge", len(transfers))]
    closing = next(x for x in features if x["cycle_length"])
    assert closing["cycle_span_seconds"] == max(times) - min(times) <= bound


@PROPERTY
@given(rings(), st.randoms(use_true_random=False))
def test_a_ring_is_found_when_records_arrive_in_any_interleaving(
    ring: tuple[list[tuple[str, str]], list[int], list[int], int], rng: random.Random,
) -> None:
    transfers, times, _, _ = ring
    reports = ring_reports(out_of_order(transfers, times, rng))
    assert reports, "the ring was never reported"
    assert all(length == len(transfers) for _, _, length in reports), reports
    # The edge check of the last transfer and the ring's leader, at most.
    assert len(reports) <= 2, reports


@PROPERTY
@given(layered_flows(), st.booleans(), st.randoms(use_true_random=False))
def test_no_ring_is_reported_on_flows_without_one(
    flows: tuple[list[tuple[str, str]], list[int]], ordered: bool, rng: random.Random,
) -> None:
    transfers, times = flows
    if ordered:
        features = in_order(transfers, times, list(range(len(transfers))))
    else:
        features = out_of_order(transfers, times, rng)
    assert ring_reports(features) == []


@PROPERTY
@given(rings())
def test_a_ring_slower_than_the_window_is_not_reported(
    ring: tuple[list[tuple[str, str]], list[int], list[int], int],
) -> None:
    transfers, times, order, _ = ring
    stretched = [T0 + (ts - T0) % 1_000 for ts in times]
    stretched[order[0]] = T0 + WINDOW + 1_001  # the first processed transfer is too late
    stretched[order[-1]] = T0 - 1
    features = in_order(transfers, stretched, order)
    assert ring_reports(features) == []
