"""What the flow stage costs and finds, per flow configuration, on simulator or labelled traffic.

Runs the transfers of a history through the flow stage as ``txwatch backtest``
runs it in line (``streams.stages.DerivedStage``, records and relays processed
before the next transfer, no Kafka), plus ``fan_out`` (an account-stage
detector) over the same transfers, once per configuration, and prints per
configuration: relay records (each is a Kafka record, a table read and a
changelog write in the worker), relays per transfer, the stage's CPU seconds,
rings found, and per detector its alerts (distinct alert ids) and precision;
with labels, the groups caught per pattern::

    .venv/bin/python bench/flow_relays.py --events 200000 --seed 11
    .venv/bin/python bench/flow_relays.py --history /tmp/dev/amlsim.jsonl \\
        --labels /tmp/dev/amlsim-labels.csv

Simulator traffic is labelled by the simulator (``label``, ``incident``). A
group is caught when an alert of any flow detector or ``fan_out`` names one of
its events; an alert is a true positive when its event is labelled. Rings
found: the ``cycle``-pattern groups (simulator: ``laundering_ring`` incidents)
named by a ``cycle`` alert. CPU seconds compare configurations of one run.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import time
from collections import Counter, defaultdict, deque
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from detectors.flow import FlowSketch, edge_origins
from detectors.registry import DEFAULT_CONFIG
from streams.rules import build_rules
from streams.stages import FLOW, STAGES, DerivedStage, flow_params

#: (event id, epoch seconds, sender, receiver, amount in minor units)
Transfer = tuple[str, int, str, str, int]

#: Flow sketch settings compared by default: name -> FlowParams changes.
VARIANTS: Mapping[str, dict[str, Any]] = {
    "default": {},
    "no-novelty": {"novel_transfers": None},
    "no-ratio": {"amount_ratio": None},
    "unchecked": {"novel_transfers": None, "amount_ratio": None},
    "hub-32": {"hub_degree": 32},
    "hub-4": {"hub_degree": 4},
    "hub-6": {"hub_degree": 6},
    "hub-5": {"hub_degree": 5},
    "ratio-4": {"amount_ratio": 4},
    "paths-16": {"max_entries": 16},
    "memory-90": {"memory_seconds": 90 * 86_400},
    "relays-3": {"relay_hops": 3},
}
#: Simulator labels that are flow typologies, by the pattern they count as.
SIMULATOR_PATTERNS: Mapping[str, str] = {"laundering_ring": "cycle"}


def _epoch(occurred_at: str) -> int:
    return int(datetime.fromisoformat(occurred_at.replace("Z", "+00:00")).timestamp())


def _transfers(events: Iterable[Mapping[str, Any]]) -> Iterator[tuple[Transfer,
                                                                     Mapping[str, Any]]]:
    for event in events:
        receiver = event.get("counterparty_id")
        if event.get("event_type") != "transfer" or not receiver:
            continue
        if receiver == event["account_id"]:
            continue
        amount = int(Decimal(str(event["amount"])).scaleb(2))
        yield (str(event["event_id"]), _epoch(event["occurred_at"]), event["account_id"],
               receiver, amount), event


def simulator(seed: int, events: int) -> tuple[list[Transfer], dict[str, tuple[str, str]]]:
    """Transfers of simulator traffic and their labels: event id -> (pattern, group)."""
    from streams.simulate import generate

    rows, labels = [], {}
    for row, event in _transfers(generate(seed, events=events)):
        rows.append(row)
        label = event.get("label")
        if label:
            labels[row[0]] = (SIMULATOR_PATTERNS.get(label, label), str(event.get("incident")))
    return rows, labels


def history(path: Path, labels_path: Path | None) -> tuple[list[Transfer],
                                                          dict[str, tuple[str, str]]]:
    """Transfers of a JSON Lines history and labels from ``event_id,label,pattern,group``."""
    with path.open("rb") as source:
        rows = [row for row, _ in _transfers(orjson.loads(line) for line in source
                                              if line.strip())]
    labels: dict[str, tuple[str, str]] = {}
    if labels_path is not None:
        with labels_path.open(newline="") as source:
            for rec in csv.DictReader(source):
                if rec.get("label") not in ("", "0", None):
                    pattern = rec.get("pattern") or "labelled"
                    labels[rec["event_id"]] = (pattern, f"{pattern}:{rec.get('group', '')}")
    return rows, labels


def measure(rows: list[Transfer], labels: Mapping[str, tuple[str, str]],
            config: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """Relays, CPU, alerts and groups caught for one configuration."""
    rules = build_rules(config, STAGES)
    alerters = rules.stages.get(FLOW, [])
    params = dataclasses.replace(flow_params(alerters, rules.bounds.get(FLOW)), **changes)
    stage = DerivedStage(FLOW, lambda: FlowSketch.new(params),
                         lambda state: FlowSketch.from_state(state, params),
                         _observe, alerters, rules.version)
    fan_out = next((a for a in rules.account if a.name == "fan_out"), None)
    fan_out_states: dict[str, Any] = {}
    states: dict[Any, Any] = {}
    offset = relays = 0
    alerts: dict[str, tuple[str, str]] = {}  # alert id -> (detector, event id)
    started = time.process_time()
    for event_id, ts, sender, receiver, amount in rows:
        sketch = stage.peek(states, sender.encode())
        first = {"_key": receiver, "kind": "edge", "event_id": event_id,
                 "event_type": "transfer", "ts": ts, "sender": sender, "receiver": receiver,
                 "amount_minor": amount, "sender_origins": edge_origins(sketch, sender, ts)}
        pending: deque[dict[str, Any]] = deque([first])
        while pending:
            record = pending.popleft()
            relays += record["kind"] == "relay"
            done = stage.process(orjson.dumps(record), states, offset=offset)
            offset += 1
            for alert in done.alerts:
                alerts.setdefault(alert.alert_id, (alert.detector, alert.event_ids[0]))
            pending.extend(f.record for f in done.forwards)
        if fan_out is not None:
            x = {"event_type": "transfer", "amount_minor": amount, "is_outflow": True,
                 "counterparty_id": receiver, "ts": ts, "account_id": sender}
            finding, fan_out_states[sender] = fan_out.process_one(x, fan_out_states.get(sender))
            if finding is not None:
                alerts.setdefault(f"fan_out:{event_id}", ("fan_out", event_id))
    cpu = time.process_time() - started
    return _scores(rows, labels, alerts, relays, cpu)


def _observe(sketch: Any, record: dict[str, Any]) -> Any:
    from streams.stages import _observe_flow

    return _observe_flow(sketch, record)


def _scores(rows: list[Transfer], labels: Mapping[str, tuple[str, str]],
            alerts: Mapping[str, tuple[str, str]], relays: int, cpu: float) -> dict[str, Any]:
    groups: dict[str, set[str]] = defaultdict(set)
    for pattern, group in labels.values():
        groups[pattern].add(group)
    caught: dict[str, set[str]] = defaultdict(set)
    rings: set[str] = set()
    per_detector: Counter[str] = Counter()
    true_positives: Counter[str] = Counter()
    for detector, event_id in alerts.values():
        per_detector[detector] += 1
        label = labels.get(event_id)
        if label is None:
            continue
        true_positives[detector] += 1
        caught[label[0]].add(label[1])
        if detector == "cycle" and label[0] == "cycle":
            rings.add(label[1])
    return {
        "relays": relays, "per_transfer": relays / max(len(rows), 1), "cpu_s": cpu,
        "rings": f"{len(rings)}/{len(groups.get('cycle', ()))}",
        "alerts": dict(per_detector), "true": dict(true_positives),
        "groups": {p: f"{len(caught[p])}/{len(g)}" for p, g in sorted(groups.items())},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000, help="simulator events")
    parser.add_argument("--seed", type=int, default=11, help="simulator seed")
    parser.add_argument("--history", type=Path, help="a JSON Lines history instead")
    parser.add_argument("--labels", type=Path, help="event_id,label,pattern,group CSV")
    parser.add_argument("--config", type=Path, help="detector configuration (JSON)")
    parser.add_argument("--variant", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                        help="flow sketch settings to compare")
    args = parser.parse_args()
    config = DEFAULT_CONFIG if args.config is None else json.loads(args.config.read_text())
    if args.history is not None:
        rows, labels = history(args.history, args.labels)
        print(f"{args.history}: {len(rows):,} transfers between accounts", flush=True)
    else:
        print(f"generating {args.events:,} simulator events (seed {args.seed}) ...", flush=True)
        rows, labels = simulator(args.seed, args.events)
        print(f"{len(rows):,} transfers between accounts", flush=True)
    for name in args.variant:
        r = measure(rows, labels, config, VARIANTS[name])
        print(f"\n{name}: {r['relays']:,} relays, {r['per_transfer']:.2f} per transfer,"
              f" CPU {r['cpu_s']:.1f} s, rings found {r['rings']}", flush=True)
        print("  groups caught: " + (", ".join(f"{p} {v}" for p, v in r["groups"].items())
                                     or "no labels"))
        for detector in sorted(set(r["alerts"]) | {"cycle"}):
            n, tp = r["alerts"].get(detector, 0), r["true"].get(detector, 0)
            precision = f"{tp / n:.1%}" if n else "n/a"
            per_k = 1_000 * n / max(len(rows), 1)
            print(f"  {detector:<16}{n:>7,} alerts ({per_k:.2f} per 1,000 transfers),"
                  f" precision {precision}", flush=True)


if __name__ == "__main__":
    main()
