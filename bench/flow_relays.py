"""What the flow stage costs and finds, per setting of ``FlowParams.amount_spread_percent``.

Runs the transfers of simulator traffic (every scenario) through
``detectors.flow.InMemoryFlowStage``, in one process without Kafka, once per
setting, and prints per setting: relay records (each is a Kafka record, a table
read and a changelog write in the worker), relays per transfer, the stage's CPU
seconds, the injected rings found and the cycle detector's alerts and precision::

    .venv/bin/python bench/flow_relays.py --events 200000 --seed 11 --spread none 50 25

A ring counts as found when the cycle detector scores a record caused by one of
its transfers; an alert is a true positive when that transfer is labelled
``laundering_ring``. The CPU seconds are for comparing settings in one run.
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime
from decimal import Decimal
from typing import Any

from detectors.flow import Cycle, FlowParams, InMemoryFlowStage
from streams.simulate import generate


def transfers(seed: int, events: int) -> list[tuple[str, int, str, str, int, Any]]:
    """(event id, epoch seconds, sender, receiver, amount in minor units, ring incident)."""
    out = []
    for event in generate(seed, events=events):
        receiver = event.get("counterparty_id")
        if event.get("event_type") != "transfer" or not receiver:
            continue
        if receiver == event["account_id"]:
            continue
        at = datetime.fromisoformat(event["occurred_at"].replace("Z", "+00:00"))
        amount = int(Decimal(event["amount"]).scaleb(2))
        ring = event.get("incident") if event.get("label") == "laundering_ring" else None
        out.append((event["event_id"], int(at.timestamp()), event["account_id"], receiver,
                    amount, ring))
    return out


def measure(rows: list[tuple[str, int, str, str, int, Any]],
            spread: int | None) -> dict[str, Any]:
    stage = InMemoryFlowStage(FlowParams(amount_spread_percent=spread))
    cycle = Cycle()
    rings: dict[Any, bool] = {}
    alerts = true_positives = 0
    started = time.process_time()
    for event_id, ts, sender, receiver, amount, ring in rows:
        if ring is not None:
            rings.setdefault(ring, False)
        for x in stage.transfer(event_id, ts, sender, receiver, amount):
            if cycle.score_one(x) >= 1.0:
                alerts += 1
                if ring is not None:
                    true_positives += 1
                    rings[ring] = True
    return {
        "spread": "unchecked" if spread is None else f"{spread}%",
        "relays": stage.relays,
        "per_transfer": stage.relays / max(len(rows), 1),
        "cpu_s": time.process_time() - started,
        "rings": f"{sum(rings.values())}/{len(rings)}",
        "alerts": alerts,
        "precision": f"{true_positives / alerts:.1%}" if alerts else "n/a",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000, help="simulator events")
    parser.add_argument("--seed", type=int, default=11, help="simulator seed")
    parser.add_argument("--spread", nargs="+", default=["none", "50"],
                        help="amount_spread_percent values to compare ('none': unchecked)")
    args = parser.parse_args()
    spreads = [None if s.lower() == "none" else int(s) for s in args.spread]
    print(f"generating {args.events:,} simulator events (seed {args.seed}) ...", flush=True)
    rows = transfers(args.seed, args.events)
    print(f"{len(rows):,} transfers between accounts", flush=True)
    print(f"{'amount spread':<14}{'relays':>10}{'per transfer':>14}{'CPU s':>8}"
          f"{'rings found':>13}{'cycle alerts':>14}{'precision':>11}")
    for spread in spreads:
        r = measure(rows, spread)
        print(f"{r['spread']:<14}{r['relays']:>10,}{r['per_transfer']:>14.1f}{r['cpu_s']:>8.1f}"
              f"{r['rings']:>13}{r['alerts']:>14,}{r['precision']:>11}", flush=True)


if __name__ == "__main__":
    main()
