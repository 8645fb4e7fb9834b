"""The flow stage raises the same alerts whatever the order and lag of its records."""

from __future__ import annotations

import random
from collections import deque
from typing import Any

import orjson
import pytest

from detectors.flow import edge_origins
from detectors.registry import DEFAULT_CONFIG
from streams.rules import build_rules
from streams.stages import FLOW, STAGES, DerivedStage, build_stages

T0 = 1_709_251_200  # 2024-03-01 00:00 UTC
DAY = 86_400
HOUR = 3_600

#: (event id, ts, sender, receiver, amount in minor units)
Transfer = tuple[str, int, str, str, int]


def history() -> list[Transfer]:
    """One history with each flow typology, amid repeat payments between friends."""
    rows: list[tuple[int, str, str, int]] = []
    # a ring of 6 whose hops vary up to 8x and happen out of ring order over 2 weeks
    ring = [f"ring-{i}" for i in range(6)]
    hop_days = [0, 9, 4, 12, 2, 13]
    hop_amounts = [80_000, 10_000, 45_000, 62_000, 30_500, 71_000]
    for i, (day, amount) in enumerate(zip(hop_days, hop_amounts, strict=True)):
        rows.append((T0 + 20 * DAY + day * DAY, ring[i], ring[(i + 1) % 6], amount))
    # scatter-gather: one origin, four intermediaries, one collector within 3 days
    for i in range(4):
        rows.append((T0 + 40 * DAY + i * HOUR, "sg-origin", f"sg-via-{i}", 50_000))
        rows.append((T0 + 41 * DAY + i * 5 * HOUR, f"sg-via-{i}", "sg-collector", 48_000))
    # gather-scatter: a hub paid by 5 new senders that pays 5 new receivers within 3 days
    for i in range(5):
        rows.append((T0 + 60 * DAY + i * HOUR, f"gs-in-{i}", "gs-hub", 20_000 + i))
        rows.append((T0 + 61 * DAY + i * HOUR, "gs-hub", f"gs-out-{i}", 19_000 + i))
    # fan-in: 20 new senders within a day
    for i in range(20):
        rows.append((T0 + 80 * DAY + i * HOUR, f"fi-sender-{i}", "fi-mule", 9_000 + i))
    # couples paying each other back, tenants paying rent: repeat payments raise nothing
    rng = random.Random(5)
    for couple in range(6):
        pair = [f"partner-{couple}-a", f"partner-{couple}-b"]
        for _ in range(25):
            rng.shuffle(pair)
            rows.append((T0 + rng.randrange(100 * DAY), *pair, rng.randrange(1_000, 90_000)))
    for month in range(3):
        for tenant in range(10):
            rows.append((T0 + month * 30 * DAY + tenant * DAY, f"tenant-{tenant}", "landlord",
                         120_000))
    rows.sort()
    return [(f"e{i}", ts, u, v, amount) for i, (ts, u, v, amount) in enumerate(rows)]


def flow_stage() -> DerivedStage:
    rules = build_rules(DEFAULT_CONFIG, STAGES)
    return build_stages({FLOW: rules.stages[FLOW]}, rules.version, rules.bounds)[FLOW]


def run(transfers: list[Transfer], seed: int | None) -> set[tuple[str, str]]:
    """(detector, alert id) of every alert, stage 1 running ahead of the flow stage.

    ``seed`` None processes every record before the next transfer, as
    ``txwatch backtest`` does. Otherwise stage 1 reads the flow table up to
    ``lag`` transfers before the flow stage has caught up, and the flow stage
    serves one account's records at a time, in order per account (a Kafka
    partition keeps its order) but with the accounts picked at random.
    """
    stage = flow_stage()
    states: dict[Any, Any] = {}
    queues: dict[str, deque[dict[str, Any]]] = {}
    alerts: set[tuple[str, str]] = set()
    rng = random.Random(seed)

    def process_one() -> None:
        key = rng.choice(sorted(queues)) if seed is not None else next(iter(queues))
        record = queues[key].popleft()
        if not queues[key]:
            del queues[key]
        done = stage.process(orjson.dumps(record), states, offset=None)
        alerts.update((alert.detector, alert.alert_id) for alert in done.alerts)
        for forward in done.forwards:
            queues.setdefault(forward.key, deque()).append(forward.record)

    for event_id, ts, sender, receiver, amount in transfers:
        sketch = stage.peek(states, sender.encode())
        queues.setdefault(receiver, deque()).append({
            "_key": receiver, "kind": "edge", "event_id": event_id, "event_type": "transfer",
            "ts": ts, "sender": sender, "receiver": receiver, "amount_minor": amount,
            "sender_origins": edge_origins(sketch, sender, ts),
        })  # fmt: skip
        backlog = 0 if seed is None else rng.randrange(40)
        while sum(len(q) for q in queues.values()) > backlog:
            process_one()
    while queues:
        process_one()
    return alerts


def test_in_line_history_raises_every_flow_typology() -> None:
    detectors = {detector for detector, _ in run(history(), None)}
    assert detectors == {"cycle", "scatter_gather", "gather_scatter", "fan_in"}


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_alerts_do_not_depend_on_arrival_order_or_lag(seed: int) -> None:
    transfers = history()
    assert run(transfers, seed) == run(transfers, None)


def test_late_intermediary_still_makes_scatter_gather() -> None:
    # every intermediary's onward transfer is processed before the money reached it
    rows = []
    for i in range(3):
        rows.append((f"g{i}", T0 + DAY + i * HOUR, f"via-{i}", "collector", 40_000))
    for i in range(3):
        rows.append((f"s{i}", T0 + i * HOUR, "origin", f"via-{i}", 41_000))
    alerts = run(rows, None)
    assert {detector for detector, _ in alerts} == {"scatter_gather"}
