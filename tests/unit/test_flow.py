"""The flow stage's sketch and detectors: rings, fan-in, hubs, bounds and round trips."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

import orjson
import pytest

from detectors.conformance import InMemoryFlowStage
from detectors.flow import (
    DEFAULT_FLOW_PARAMS,
    Cycle,
    FanIn,
    FlowParams,
    FlowSketch,
    GatherScatter,
    ScatterGather,
    edge_origins,
    stable_hash,
)

T0 = 1_709_251_200  # 2024-03-01 00:00 UTC
DAY = 86_400
DETECTORS = (Cycle(), ScatterGather(), GatherScatter(), FanIn())
WINDOW = DEFAULT_FLOW_PARAMS.window_seconds  # 4 weeks


def findings(features: list[dict[str, Any]]) -> list[tuple[str, str, str, int]]:
    """(event_id, record kind, account, ring length) of every record that reported a ring."""
    return [
        (x["event_id"], x["record_kind"], x["account_id"], x["cycle_length"])
        for x in features
        if x["cycle_length"]
    ]


def run(stage: InMemoryFlowStage, transfers: list[tuple[str, int, str, str]],
        amount: int = 1_200_000) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for event_id, ts, sender, receiver in transfers:
        out += stage.transfer(event_id, ts, sender, receiver, amount)
    return out


def edge_features(features: list[dict[str, Any]], event_id: str) -> dict[str, Any]:
    """The features of the edge record of one transfer."""
    return next(x for x in features if x["event_id"] == event_id and x["record_kind"] == "edge")


def edge(sender: str, receiver: str, ts: int, event_id: str = "e1", amount: int = 100,
         origins: list[list[Any]] | None = None) -> dict[str, Any]:
    return {
        "kind": "edge", "event_id": event_id, "event_type": "transfer", "ts": ts,
        "sender": sender, "receiver": receiver, "amount_minor": amount,
        "sender_origins": origins if origins is not None else edge_origins(None, sender, ts),
    }  # fmt: skip


def back(sender: str, receiver: str, ts: int, dests: list[list[Any]] | None = None,
         event_id: str = "e1") -> dict[str, Any]:
    key = stable_hash(receiver)
    return {
        "kind": "back", "event_id": event_id, "event_type": "transfer", "ts": ts,
        "sender": sender, "receiver": receiver, "amount_minor": 100,
        "receiver_dests": dests if dests is not None else [[key, 0, ts, ts, key]],
        "cycle_length": 0,
    }  # fmt: skip


# -- rings ----------------------------------------------------------------------------------------


def test_a_ring_is_found_once_on_its_closing_transfer_and_explained() -> None:
    stage = InMemoryFlowStage()
    features = []
    for event_id, ts, sender, receiver, amount in [
        ("t1", T0, "acct-a", "acct-b", 1_200_000),
        ("t2", T0 + DAY, "acct-b", "acct-c", 1_180_000),  # each keeps a cut
        ("t3", T0 + 3 * DAY, "acct-c", "acct-a", 1_150_000),
    ]:
        features += stage.transfer(event_id, ts, sender, receiver, amount)
    assert findings(features) == [("t3", "edge", "acct-a", 3)]
    closing = next(x for x in features if x["cycle_length"])
    assert closing["cycle_span_seconds"] == 3 * DAY
    assert closing["cycle_amount_minor"] == 1_150_000
    assert closing["cycle_origins"] == 2  # acct-c directly, acct-b through it
    detector = Cycle()
    assert detector.score_one(closing) == 17 / 3
    assert detector.explain_one(closing, 17 / 3) == [
        "funds returned to acct-a through a ring of 3 accounts within 3 d"
        " (11,500.00 on the closing transfer)",
        "every transfer of the ring between 11,500.00 and 12,000.00",
        "money from 2 accounts had reached acct-a in the window (a ring scores 1.0 at 16)",
    ]


def _ring_into_a_busy_account(stage: InMemoryFlowStage, feeders: int,
                              feeders_at: int) -> dict[str, Any]:
    """A ring a -> b -> c -> a after ``feeders`` accounts paid a at ``feeders_at``."""
    features: list[dict[str, Any]] = []
    for i in range(feeders):
        features += stage.transfer(f"f{i}", feeders_at, f"feeder-{i}", "acct-a", 50_000)
    for event_id, ts, sender, receiver in [("t1", T0, "acct-a", "acct-b"),
                                           ("t2", T0 + DAY, "acct-b", "acct-c"),
                                           ("t3", T0 + 2 * DAY, "acct-c", "acct-a")]:
        features += stage.transfer(event_id, ts, sender, receiver, 1_000_000)
    return next(x for x in features if x["cycle_length"])


def test_a_ring_where_the_money_of_many_accounts_converges_does_not_alert() -> None:
    # 20 accounts had paid acct-a before the ring: some money coming back is chance
    closing = _ring_into_a_busy_account(InMemoryFlowStage(), 20, T0 - DAY)
    assert closing["cycle_length"] == 3 and closing["cycle_origins"] == 22
    detector = Cycle()
    assert detector.score_one(closing) == 17 / 23 < 1.0
    assert detector.explain_one(closing, 17 / 23)[-1] == (
        "money from 22 accounts had reached acct-a in the window (a ring scores 1.0 at 16)")
    # the limit is a parameter: without it, every ring scores 1.0
    assert Cycle(max_origins=None).score_one(closing) == 1.0
    assert Cycle(max_origins=22).score_one(closing) == 1.0


def test_accounts_that_pay_in_after_the_ring_closed_do_not_change_its_score() -> None:
    # the same 20 payments, stamped after the ring's last transfer, arrive before it
    late = _ring_into_a_busy_account(InMemoryFlowStage(), 20, T0 + 5 * DAY)
    alone = _ring_into_a_busy_account(InMemoryFlowStage(), 0, T0)
    assert late["cycle_origins"] == alone["cycle_origins"] == 2
    assert Cycle().score_one(late) == Cycle().score_one(alone) == 17 / 3


RING = [("t1", T0, "a", "b"), ("t2", T0 + 60, "c", "d"), ("t3", T0 + 120, "b", "c"),
        ("t4", T0 + 180, "d", "a")]


@pytest.mark.parametrize(("amounts", "ratio", "found"), [
    ((10_000, 9_900, 9_800, 9_700), 10, True),
    ((80_000, 10_000, 45_000, 62_000), 10, True),  # mule cuts, splits and merges: up to 8x
    ((10_000, 10_000, 10_000, 100_000), 10, True),  # 10x larger: the limit, still a ring
    ((10_000, 10_000, 10_000, 100_001), 10, False),
    ((3_000, 900_000, 45_000, 120_000), 10, False),  # a coffee and a rent: not money moving on
    ((3_000, 900_000, 45_000, 120_000), None, True),  # the check turned off
])  # fmt: skip
def test_a_ring_needs_amounts_within_the_ratio(
    amounts: tuple[int, ...], ratio: int | None, found: bool
) -> None:
    # processed out of ring order, so the ring is closed through a relay
    stage = InMemoryFlowStage(FlowParams(amount_ratio=ratio))
    features = []
    for (event_id, ts, sender, receiver), amount in zip(RING, amounts, strict=True):
        features += stage.transfer(event_id, ts, sender, receiver, amount)
    assert bool(findings(features)) is found


def test_paths_of_unrelated_amounts_are_neither_kept_nor_relayed() -> None:
    checked = InMemoryFlowStage()
    unchecked = InMemoryFlowStage(FlowParams(amount_ratio=None))
    for stage in (checked, unchecked):
        # z pays a, a pays b 30.00 for lunch, then b's 9,000.00 rent goes to c, c pays d
        run(stage, [("coffee", T0 - 60, "z", "a"), ("lunch", T0, "a", "b")], amount=3_000)
        run(stage, [("rent", T0 + 60, "b", "c"), ("on", T0 + 120, "c", "d")], amount=900_000)
    assert stable_hash("a") not in checked.sketch("d").origins
    assert stable_hash("d") not in checked.sketch("a").dests
    assert stable_hash("b") in checked.sketch("d").origins  # rent moved on: a path
    assert stable_hash("a") in unchecked.sketch("d").origins
    # a's destinations did not change, so a told z nothing
    assert stable_hash("d") in unchecked.sketch("z").dests
    assert checked.relays < unchecked.relays


def test_a_transfer_without_an_amount_makes_no_path_and_no_ring() -> None:
    stage = InMemoryFlowStage()
    features = []
    for (event_id, ts, sender, receiver), amount in zip(RING, (10_000, 10_000, 0, 10_000),
                                                        strict=True):
        features += stage.transfer(event_id, ts, sender, receiver, amount)
    assert findings(features) == []
    assert stable_hash("b") not in stage.sketch("d").origins  # b -> c had no amount


def test_rows_and_state_from_before_amounts_are_read_as_amounts_unknown() -> None:
    sketch = FlowSketch.new()
    old_rows = [[stable_hash("b"), 0, T0, T0], [stable_hash("x"), 1, T0 - 60, T0 - 60, "x"]]
    sketch.observe_edge(edge("b", "c", T0, "e1", amount=10_000, origins=old_rows))
    assert stable_hash("b") in sketch.origins  # the transfer itself has its amount
    assert stable_hash("x") not in sketch.origins  # a path of unknown amount is not kept
    state = sketch.to_state()
    old_state = [*state[:3], [row[:4] for row in state[3]], [row[:5] for row in state[4]],
                 *state[5:]]
    restored = FlowSketch.from_state(old_state)
    assert restored.origins[stable_hash("b")] == [1, T0, T0, 0, 0]
    with pytest.raises(ValueError, match="0 <= lo <= hi"):
        sketch.observe_edge(edge("b", "c", T0, "e2", origins=[[stable_hash("b"), 1, T0, T0, 5, 2]]))


def test_the_middle_transfer_last_needs_relays() -> None:
    """The order in which origins and destinations alone cannot see the ring.

    a->b, c->d, b->c, then d->a: only b and c learn that a reaches d. Without
    relays the closing transfer is judged with d's origins {c} and a's
    destinations {b}; the relay of b's new destinations to a closes the gap.
    """
    order = [("t1", T0, "a", "b"), ("t2", T0 + 60, "c", "d"), ("t3", T0 + 120, "b", "c"),
             ("t4", T0 + 180, "d", "a")]
    stage = InMemoryFlowStage()
    assert findings(run(stage, order)) == [("t4", "edge", "a", 4)]
    assert stage.relays > 0

    without_relays: dict[str, FlowSketch] = {}
    reported = []
    for event_id, ts, u, v in order:
        sender = without_relays.setdefault(u, FlowSketch.new())
        receiver = without_relays.setdefault(v, FlowSketch.new())
        x = receiver.observe_edge(edge(u, v, ts, event_id, origins=edge_origins(sender, u, ts)))
        reported.append(x["cycle_length"])
        sender.observe_back(back(u, v, ts, receiver.dests_for_back(ts), event_id))
    assert reported == [0, 0, 0, 0]
    no_relays = InMemoryFlowStage(FlowParams(relay_hops=0))
    assert findings(run(no_relays, order)) == [] and no_relays.relays == 0


@pytest.mark.parametrize(("relay_hops", "found"), [(1, True), (0, False)])
def test_relay_hops_limits_which_changes_travel(relay_hops: int, found: bool) -> None:
    # b->c is processed last but one: the news that b reaches d (2 hops) must reach a.
    order = [("t1", T0, "a", "b"), ("t2", T0 + 60, "c", "d"), ("t3", T0 + 120, "b", "c"),
             ("t4", T0 + 180, "d", "a")]
    stage = InMemoryFlowStage(FlowParams(relay_hops=relay_hops))
    assert bool(findings(run(stage, order))) is found


@pytest.mark.parametrize(
    ("times", "found"),
    [
        pytest.param((0, 10 * DAY, WINDOW), True, id="span-equal-to-window"),
        pytest.param((0, 10 * DAY, WINDOW + 1), False, id="one-second-over"),
        pytest.param((WINDOW, 10 * DAY, 0), True, id="event-times-reversed"),
    ],
)
def test_ring_time_bound(times: tuple[int, int, int], found: bool) -> None:
    stage = InMemoryFlowStage()
    ring = [("t1", "a", "b"), ("t2", "b", "c"), ("t3", "c", "a")]
    features = run(stage, [(e, T0 + t, u, v) for (e, u, v), t in zip(ring, times, strict=True)])
    assert bool(findings(features)) is found
    if found:
        assert findings(features)[0][3] == 3
        assert next(x for x in features if x["cycle_length"])["cycle_span_seconds"] == WINDOW


@pytest.mark.parametrize(("length", "found"), [(10, True), (11, False)])
def test_ring_length_bound(length: int, found: bool) -> None:
    stage = InMemoryFlowStage()
    accounts = [f"acct-{i}" for i in range(length)]
    transfers = [(f"t{i}", T0 + i * 600, accounts[i], accounts[(i + 1) % length])
                 for i in range(length)]
    assert findings(run(stage, transfers)) == ([(f"t{length - 1}", "edge", "acct-0", 10)]
                                               if found else [])


def test_a_transfer_paid_back_is_a_ring_of_two_that_cycle_ignores_by_default() -> None:
    stage = InMemoryFlowStage()
    features = run(stage, [("t1", T0, "a", "b"), ("t2", T0 + DAY, "b", "a")])
    closing = next(x for x in features if x["cycle_length"])
    assert closing["cycle_length"] == 2
    assert Cycle().score_one(closing) == 0.0
    assert Cycle(min_ring=2).score_one(closing) >= 1.0
    assert "outside the 3 to 10 accounts" in Cycle().explain_one(closing, 0.0)[0]


@pytest.mark.parametrize(("novel_transfers", "reported_again"), [(1, False), (None, True)])
def test_a_ring_traversed_again_is_news_only_when_every_transfer_counts(
    novel_transfers: int | None, reported_again: bool
) -> None:
    stage = InMemoryFlowStage(FlowParams(novel_transfers=novel_transfers))
    ring = [("a", "b"), ("b", "c"), ("c", "a")]
    first = run(stage, [(f"t{i}", T0 + i * 3_600, u, v) for i, (u, v) in enumerate(ring)])
    again = run(stage, [(f"u{i}", T0 + DAY + i * 3_600, u, v) for i, (u, v) in enumerate(ring)])
    assert findings(first) == [("t2", "edge", "a", 3)]
    # By default the second round runs over known relationships: it extends no path.
    # Counting every transfer, each of its transfers closes the ring again.
    assert findings(again) == ([("u0", "edge", "b", 3), ("u1", "edge", "c", 3),
                                ("u2", "edge", "a", 3)] if reported_again else [])


def test_no_ring_on_a_chain_or_a_diamond() -> None:
    stage = InMemoryFlowStage()
    features = run(stage, [
        ("t1", T0, "a", "b"), ("t2", T0 + 1, "a", "c"), ("t3", T0 + 2, "b", "d"),
        ("t4", T0 + 3, "c", "d"), ("t5", T0 + 4, "d", "e"), ("t6", T0 + 5, "a", "e"),
    ])  # fmt: skip
    assert findings(features) == []


def test_a_self_transfer_changes_nothing() -> None:
    sketch = FlowSketch.new()
    x = sketch.observe_edge(edge("a", "a", T0))
    assert x["cycle_length"] == 0 and x["fan_in_senders"] == 0
    assert sketch.senders == {} and sketch.origins == {}


# -- duplicates and idempotence -------------------------------------------------------------------


def test_an_edge_seen_twice_counts_once() -> None:
    sketch = FlowSketch.new()
    origins: list[list[Any]] = [
        [stable_hash("s1"), 0, T0, T0], [stable_hash("o1"), 1, T0 - 60, T0 - 60, "o1"]
    ]
    first = sketch.observe_edge(edge("s1", "hub", T0, origins=origins))
    state = copy.deepcopy(sketch.to_state())
    second = sketch.observe_edge(edge("s1", "hub", T0, origins=origins))
    assert sketch.to_state() == state
    assert first == second
    assert second["fan_in_senders"] == 1 and second["gather_scatter_in"] == 1


def test_a_back_seen_twice_changes_nothing_and_relays_nothing() -> None:
    stage = InMemoryFlowStage()
    run(stage, [("t1", T0, "s", "b"), ("t2", T0 + 60, "c", "d")])
    b = stage.sketch("b")
    record = back("b", "c", T0 + 120, stage.sketch("c").dests_for_back(T0 + 120), "t3")
    first = b.observe_back(record)
    assert [relay["sender"] for relay in first.relays] == ["s"]  # b now reaches c and d
    state = copy.deepcopy(b.to_state())
    again = b.observe_back(record)
    assert again.relays == [] and b.to_state() == state
    assert again.features["gather_scatter_out"] == 1


def test_relays_go_to_the_senders_with_unique_ids_and_are_idempotent() -> None:
    stage = InMemoryFlowStage()
    run(stage, [("t1", T0, "s1", "a"), ("t2", T0 + 1, "s2", "a")])
    a = stage.sketch("a")
    dests = stage.sketch("b").dests_for_back(T0 + 2, "b")
    outcome = a.observe_back(back("a", "b", T0 + 2, dests, "t3"))
    assert sorted(r["sender"] for r in outcome.relays) == ["s1", "s2"]
    assert len({r["relay_id"] for r in outcome.relays}) == 2
    assert all(r["event_id"] == "t3" and r["receiver"] == "a" for r in outcome.relays)
    relay = outcome.relays[0]
    s1 = stage.sketch(relay["sender"])
    s1.observe_back(relay)
    state = copy.deepcopy(s1.to_state())
    assert s1.observe_back(relay).relays == []
    assert s1.to_state() == state


# -- fan-in, scatter-gather, gather-scatter -------------------------------------------------------


@pytest.mark.parametrize(("gap", "expected"), [(DAY, 2), (DAY + 1, 1)])
def test_fan_in_window_includes_both_ends(gap: int, expected: int) -> None:
    sketch = FlowSketch.new()
    sketch.observe_edge(edge("s1", "m", T0))
    x = sketch.observe_edge(edge("s2", "m", T0 + gap, "e2"))
    assert x["fan_in_senders"] == expected


def test_fan_in_places_a_late_transfer_among_its_neighbours() -> None:
    sketch = FlowSketch.new()
    for i in range(5):
        sketch.observe_edge(edge(f"s{i}", "m", T0 + 10 * DAY + i * 60, f"e{i}"))
    late = sketch.observe_edge(edge("s-late", "m", T0 + 10 * DAY - 3_600, "late"))
    assert late["fan_in_senders"] == 6
    detector = FanIn(max_senders=6)
    assert detector.score_one(late) == 1.0
    assert detector.explain_one(late, 1.0) == [
        "6 different senders paid m within 1 h 4 min (alert at 6 within 1 d)"
    ]


def test_scatter_gather_names_the_origin_and_counts_intermediaries_in_the_window() -> None:
    stage = InMemoryFlowStage()
    transfers = [(f"out{i}", T0 + i * 60, "acct-a", f"mule-{i}") for i in range(4)]
    transfers += [(f"in{i}", T0 + 3_600 + i * 60, f"mule-{i}", "acct-c") for i in range(4)]
    features = run(stage, transfers)
    last = edge_features(features, "in3")
    assert last["scatter_gather_vias"] == 4
    assert last["scatter_gather_origin_id"] == "acct-a"
    assert last["scatter_gather_origin"] == f"{stable_hash('acct-a'):012x}"
    detector = ScatterGather(min_vias=3)
    assert detector.score_one(last) == pytest.approx(4 / 3)
    assert detector.explain_one(last, 4 / 3) == [
        "money from acct-a reached acct-c through 4 different intermediaries within 3 d of"
        " this transfer (alert at 3)"
    ]
    # A fifth intermediary far outside the hub window counts alone.
    later = run(stage, [("out9", T0 + 9 * DAY, "acct-a", "mule-9"),
                        ("in9", T0 + 9 * DAY + 60, "mule-9", "acct-c")])
    assert edge_features(later, "in9")["scatter_gather_vias"] == 1


def test_scatter_gather_is_not_reported_again_by_an_unrelated_transfer_to_the_collector() -> None:
    stage = InMemoryFlowStage()
    transfers = [(f"out{i}", T0 + i * 60, "acct-a", f"mule-{i}") for i in range(3)]
    transfers += [(f"in{i}", T0 + 3_600 + i * 60, f"mule-{i}", "acct-c") for i in range(3)]
    transfers += [("rent", T0 + 7_200, "tenant", "acct-c"),  # not money from acct-a
                  ("in0-again", T0 + 9_000, "mule-0", "acct-c")]  # a repeat payment
    features = run(stage, transfers)
    detector = ScatterGather(min_vias=3)
    scores = {x["event_id"]: detector.score_one(x) for x in features if x["record_kind"] == "edge"}
    assert scores["in2"] == 1.0
    assert scores["rent"] == 0.0
    # a relationship's repeat payments extend no path and count nowhere
    assert scores["in0-again"] == 0.0


def test_a_busy_sender_is_not_counted_as_an_intermediary() -> None:
    sketch = FlowSketch.new()
    for i in range(3):
        busy = [[stable_hash(f"b{i}"), 0, T0, T0]] + [
            [stable_hash(f"payer-{j}"), 1, T0 - 60, T0 - 60, 100, 100, f"payer-{j}"]
            for j in range(9)
        ]
        x = sketch.observe_edge(edge(f"b{i}", "c", T0 + i, f"e{i}", origins=busy))
    assert x["scatter_gather_vias"] == 0 and sketch.gathers == {}
    assert len(sketch.origins) == 12  # still origins, two hops away


def test_gather_scatter_sees_the_out_side_on_back_records() -> None:
    stage = InMemoryFlowStage()
    ins = [(f"in{i}", T0 + i * 60, f"payer-{i}", "hub") for i in range(6)]
    outs = [(f"out{i}", T0 + DAY + i * 60, "hub", f"payee-{i}") for i in range(6)]
    features = run(stage, ins + outs)
    hub_backs = [x for x in features if x["record_kind"] == "back" and x["account_id"] == "hub"]
    assert [(x["gather_scatter_in"], x["gather_scatter_out"]) for x in hub_backs] == [
        (6, n) for n in range(1, 7)
    ]
    detector = GatherScatter(min_in=5, min_out=5)
    scores = [detector.score_one(x) for x in hub_backs]
    assert scores[4] == 1.0 and scores[3] < 1.0
    assert detector.explain_one(hub_backs[-1], scores[-1]) == [
        "hub received from 6 different senders and paid 6 different receivers within 3 d of"
        " this transfer (alert at 5 and 5)"
    ]


def test_a_hub_is_reported_when_a_new_counterparty_takes_it_over_not_on_every_transfer() -> None:
    stage = InMemoryFlowStage()
    ins = [(f"in{i}", T0 + i * 60, f"payer-{i}", "hub") for i in range(5)]
    outs = [(f"out{i}", T0 + DAY + i * 60, "hub", f"payee-{i}") for i in range(5)]
    repeat = [("again-in", T0 + DAY + 3_600, "payer-0", "hub"),
              ("again-out", T0 + DAY + 7_200, "hub", "payee-0")]
    features = run(stage, ins + outs + repeat)
    detector = GatherScatter(min_in=5, min_out=5)
    flagged = [(x["event_id"], x["record_kind"]) for x in features
               if x["account_id"] == "hub" and detector.score_one(x) >= 1.0]
    assert flagged == [("out4", "back")]


def test_a_hub_passes_nothing_on() -> None:
    params = FlowParams(hub_degree=3)
    stage = InMemoryFlowStage(params)
    run(stage, [(f"t{i}", T0 + i, f"payer-{i}", "hub") for i in range(3)])
    hub = stage.sketch("hub")
    assert [entry[1] for entry in hub.origins_for_edge(T0 + 10)] == [0]
    assert len(hub.dests_for_back(T0 + 10)) == 1
    outcome = hub.observe_back(back("hub", "x", T0 + 11))
    assert outcome.relays == []


# -- bounds ---------------------------------------------------------------------------------------


def state_bytes(sketch: FlowSketch) -> int:
    return len(orjson.dumps(sketch.to_state()))


def test_state_stays_bounded_under_a_flood_of_100_000_senders() -> None:
    params = DEFAULT_FLOW_PARAMS
    sketch = FlowSketch.new()
    for i in range(100_000):
        sender = f"acct-{i:07d}"
        ts = T0 + i * 30
        origins: list[list[Any]] = [[stable_hash(sender), 0, ts, ts],
                   [stable_hash(f"orig-{i}"), 1, ts - 60, ts - 60, f"orig-{i}"],
                   [stable_hash(f"far-{i}"), 3, ts - 600, ts - 60]]
        sketch.observe_edge(edge(sender, "acct-target", ts, f"e{i}", origins=origins))
    assert len(sketch.senders) == params.max_entries
    assert len(sketch.origins) == params.max_entries
    assert len(sketch.gathers) == params.max_gather_origins
    assert state_bytes(sketch) <= params.max_state_bytes(len("acct-target"))


def test_state_stays_bounded_when_every_table_is_full_with_the_longest_ids() -> None:
    params = DEFAULT_FLOW_PARAMS
    longest = 128
    def name(prefix: str, i: int) -> str:
        return f"{prefix}-{i:07d}".ljust(longest, "x")

    sketch = FlowSketch.new()
    me = name("me", 0)
    for i in range(300):
        ts = T0 + i * 60
        sender = name("s", i)
        # The same 8 origins through every sender fill the gathers with 8 intermediaries
        # each; the other origins are new with every sender and overflow the table.
        carried = [[stable_hash(sender), 0, ts, ts]] + [
            [stable_hash(name("g", j)), 1, ts - 600, ts, name("g", j)]
            for j in range(params.max_gather_origins)
        ] + [
            [stable_hash(name(f"o{i}", j)), 2 + j % 6, ts - 600, ts]
            for j in range(params.max_entries)
        ]
        sketch.observe_edge(edge(sender, me, ts, f"e{i}", amount=10**17, origins=carried))
        receiver = name("r", i)
        dests = [[stable_hash(receiver), 0, ts, ts, 1]] + [
            [stable_hash(name(f"d{i}", j)), 1 + j % 6, ts - 600, ts, 1]
            for j in range(params.max_entries)
        ]
        sketch.observe_back({**back(me, receiver, ts, dests, f"e{i}"), "amount_minor": 10**17})
    assert len(sketch.origins) == len(sketch.dests) == len(sketch.senders) == params.max_entries
    assert len(sketch.gathers) == params.max_gather_origins
    assert all(len(vias) == params.max_vias for _, vias in sketch.gathers.values())
    assert state_bytes(sketch) <= params.max_state_bytes(longest)


def test_a_relationship_resumed_after_half_a_year_is_not_new() -> None:
    # b paid c once; half a year later (a half-yearly payment) it pays again, and then
    # c pays a, which paid b: a ring of repeat business, not money going round.
    half_year = 182 * DAY
    stage = InMemoryFlowStage()
    features = run(stage, [("t0", T0, "b", "c"), ("t1", T0 + half_year, "a", "b"),
                           ("t2", T0 + half_year + DAY, "b", "c"),
                           ("t3", T0 + half_year + 2 * DAY, "c", "a")])
    assert edge_features(features, "t2")["flow_novel"] is False
    assert findings(features) == []
    # with the former 90-day memory the repeat looked new and closed a ring
    forgetful = InMemoryFlowStage(FlowParams(memory_seconds=90 * DAY))
    features = run(forgetful, [("t0", T0, "b", "c"), ("t1", T0 + half_year, "a", "b"),
                               ("t2", T0 + half_year + DAY, "b", "c"),
                               ("t3", T0 + half_year + 2 * DAY, "c", "a")])
    assert findings(features) == [("t3", "edge", "a", 3)]


def test_old_entries_are_pruned_after_the_window() -> None:
    stage = InMemoryFlowStage()
    run(stage, [("t1", T0, "a", "b"), ("t2", T0 + 60, "b", "c")])
    c = stage.sketch("c")
    assert len(c.origins) == 2
    c.observe_edge(edge("z", "c", T0 + WINDOW + 61, "late"))
    assert set(c.origins) == {stable_hash("z")}
    assert set(c.senders) == {"b", "z"}  # senders are remembered longer, for novelty
    c.observe_edge(edge("y", "c", T0 + DEFAULT_FLOW_PARAMS.sender_seconds + 61, "later"))
    assert "b" not in c.senders and "y" in c.senders


# -- state ----------------------------------------------------------------------------------------


def sample_stage() -> InMemoryFlowStage:
    stage = InMemoryFlowStage()
    accounts = [f"acct-{i}" for i in range(12)]
    for i in range(120):
        u = accounts[(i * 7) % 12]
        v = accounts[(i * 5 + 3) % 12]
        if u != v:
            stage.transfer(f"t{i}", T0 + (i * 7_919) % (20 * DAY), u, v, 10_000 + i)
    return stage


@pytest.mark.parametrize("codec", ["orjson", "json"])
def test_state_round_trips_exactly_and_scores_the_same_afterwards(codec: str) -> None:
    dumps, loads = (orjson.dumps, orjson.loads) if codec == "orjson" else (json.dumps, json.loads)
    stage = sample_stage()
    restored = InMemoryFlowStage()
    for account, sketch in stage.sketches.items():
        back_again = FlowSketch.from_state(loads(dumps(sketch.to_state())))
        assert back_again == sketch
        assert back_again.to_state() == sketch.to_state()
        restored.sketches[account] = back_again
    later = [(f"n{i}", T0 + 21 * DAY + i, f"acct-{i % 12}", f"acct-{(i + 5) % 12}")
             for i in range(40)]
    assert run(stage, later) == run(restored, later)


def test_two_runs_give_the_same_state() -> None:
    first = sample_stage()
    second = sample_stage()
    assert {a: s.to_state() for a, s in first.sketches.items()} == {
        a: s.to_state() for a, s in second.sketches.items()
    }


def test_unknown_state_and_bad_records_are_refused_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match="unknown flow sketch state format"):
        FlowSketch.from_state([99])
    sketch = FlowSketch.new()
    sketch.observe_edge(edge("a", "b", T0))
    with pytest.raises(ValueError, match="given to the flow sketch of 'b'"):
        sketch.observe_edge(edge("a", "c", T0))
    with pytest.raises(ValueError, match="needs an int ts"):
        sketch.observe_edge({"kind": "edge", "sender": "a", "receiver": "b"})
    with pytest.raises(ValueError, match="sender_origins entries must be"):
        sketch.observe_edge(edge("a", "b", T0, origins=[[1, 0, True, T0]]))
    with pytest.raises(ValueError, match="receiver_dests entries must be"):
        FlowSketch.new().observe_back(back("a", "b", T0, dests=[[1, 0, T0, T0]]))
    with pytest.raises(ValueError, match="needs account_id"):
        FlowSketch.new().origins_for_edge(T0)


def test_params_are_validated() -> None:
    with pytest.raises(ValueError, match="max_ring must be between 2 and 64"):
        FlowParams(max_ring=1)
    with pytest.raises(ValueError, match="max_entries must be an int >= 1"):
        FlowParams(max_entries=0)
    with pytest.raises(ValueError, match="relay_hops must be an int >= 0"):
        FlowParams(relay_hops=-1)


# -- detectors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: Cycle(min_ring=1), "min_ring must be at least 2"),
        (lambda: Cycle(min_ring=5, max_ring=4), "max_ring .4. must be at least min_ring .5."),
        (lambda: Cycle(max_span_seconds=0), "max_span_seconds must be an int >= 1"),
        (lambda: ScatterGather(min_vias=1), "min_vias must be at least 2"),
        (lambda: GatherScatter(min_in=True), "min_in must be an int >= 1"),
        (lambda: FanIn(max_senders=65), "max_senders must be at most 64"),
    ],
)
def test_detector_parameters_are_validated(factory: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        factory()


@pytest.mark.parametrize("detector", DETECTORS, ids=lambda d: d.name)
def test_detectors_clone_and_tolerate_sparse_features(detector: Any) -> None:
    clone = detector.clone()
    assert repr(clone) == repr(detector)
    assert detector.stage == "flow"
    for x in ({}, {"event_type": "transfer", "amount_minor": 0},
              {"record_kind": "relay", "cycle_length": "x", "fan_in_senders": None}):
        score = detector.score_one(x)
        assert isinstance(score, float) and score == 0.0
        reasons = detector.explain_one(x, score)
        assert reasons and all(isinstance(r, str) and r for r in reasons)


def test_reasons_never_show_a_hash() -> None:
    x: Mapping[str, Any] = {
        "record_kind": "edge", "account_id": "acct-c", "scatter_gather_vias": 3,
        "scatter_gather_origin": "9a2f2c4f3e7b", "scatter_gather_origin_id": None,
        "hub_seconds": 3 * DAY,
    }  # fmt: skip
    (reason,) = ScatterGather().explain_one(x, 1.0)
    assert "one origin account" in reason and "9a2f" not in reason
