"""Alerts of the account stage on a JSON Lines history, scored against a labels CSV.

A stand-in until ``txwatch backtest --labels FILE.csv`` lands: runs the account
detectors of a configuration (derived stages left out) over a history, as the
backtest does, and prints per detector the alerts, alerts per 1,000 events,
precision (alerts naming a labelled event), group recall and the share of
groups caught within their first 3 events. Labels: ``event_id,label,pattern,group``.

    .venv/bin/python bench/score_csv_labels.py /tmp/dev/sparkov.jsonl \\
        /tmp/dev/sparkov-labels.csv --only spending_burst
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
from collections import defaultdict
from pathlib import Path

from detectors.registry import DEFAULT_CONFIG, DETECTORS, build_alerters
from streams.codec import Decoder
from streams.pipeline import Monitor
from streams.state import AccountState


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("history", type=Path)
    parser.add_argument("labels", type=Path)
    parser.add_argument("--config", type=Path, help="detector configuration (default: packaged)")
    parser.add_argument("--only", nargs="*", help="account detectors to run (default: all)")
    args = parser.parse_args()
    config = json.loads(args.config.read_text()) if args.config else copy.deepcopy(DEFAULT_CONFIG)
    config["detectors"] = {
        name: spec for name, spec in config["detectors"].items()
        if name in DETECTORS and (not args.only or name in args.only)
    }
    labelled: dict[str, str] = {}
    with args.labels.open() as source:
        for row in csv.DictReader(source):
            if row["label"] == "1":
                labelled[row["event_id"]] = row["group"] or row["pattern"]
    group_events: dict[str, list[str]] = defaultdict(list)
    decoder = Decoder(pii_key=b"dev", max_message_bytes=1 << 20)
    monitor = Monitor(decoder, build_alerters(config), config["version"])
    states: dict[bytes, AccountState] = {}
    alerts: dict[str, list[tuple[str, ...]]] = defaultdict(list)
    events = 0
    with args.history.open("rb") as lines:
        for offset, raw in enumerate(lines):
            if not raw.strip():
                continue
            events += 1
            event_id = json.loads(raw)["event_id"]
            if event_id in labelled:
                group_events[labelled[event_id]].append(event_id)
            outcome = monitor.process(raw.rstrip(b"\n"), states, topic="h", partition=0,
                                      offset=offset)
            for alert in outcome.alerts:
                alerts[alert.detector].append(alert.event_ids)
    first3 = {group: set(ids[:3]) for group, ids in group_events.items()}
    print(f"{events:,} events, {len(group_events)} labelled groups, "
          f"{len(labelled)} labelled events")
    print(f"{'detector':<20}{'alerts':>8}{'per 1k':>8}{'precision':>10}{'groups':>8}"
          f"{'in first 3':>11}")
    every: list[tuple[str, ...]] = []
    for name in [*sorted(alerts), "(all)"]:
        found = every if name == "(all)" else alerts[name]
        if name != "(all)":
            every.extend(found)
        true = sum(any(e in labelled for e in ids) for ids in found)
        named = {e for ids in found for e in ids}
        caught = sum(bool(named & set(ids)) for ids in group_events.values())
        early = sum(bool(named & first) for first in first3.values())
        n = len(found)
        print(f"{name:<20}{n:>8,}{1000 * n / events:>8.2f}"
              f"{(true / n if n else 0):>10.1%}"
              f"{caught / max(1, len(group_events)):>8.1%}"
              f"{early / max(1, len(group_events)):>11.1%}")


if __name__ == "__main__":
    main()
