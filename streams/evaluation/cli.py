"""``txwatch backtest`` and ``txwatch evaluate``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streams.rejects import RejectedLine, describe_rejected

if TYPE_CHECKING:
    from streams.settings import Settings


from streams.evaluation.backtest import backtest, load_labels
from streams.evaluation.inputs import (
    GroupLabel,
    LabelledEvent,
    is_label_csv,
    load_label_csv,
    progress_to_stderr,
)
from streams.evaluation.live import evaluate_live
from streams.evaluation.scoring import Evaluation

# -- command line ---------------------------------------------------------------------------


def run_backtest(settings: Settings, args: argparse.Namespace) -> int:
    """``txwatch backtest FILE [--config FILE] [--labels FILE] [--alerts FILE] [--json]``."""
    from streams.rules import read_config_file

    if not args.file.exists():
        print(f"txwatch backtest: no such file: {args.file}", file=sys.stderr)
        return 2
    rejected: list[RejectedLine] = []
    alerts_path: Path | None = getattr(args, "alerts", None)
    try:
        config = read_config_file(args.config) if args.config is not None else None
        labels: list[LabelledEvent] | None = None
        group_labels: list[GroupLabel] | None = None
        if args.labels is not None and is_label_csv(args.labels):
            group_labels = load_label_csv(args.labels)
        elif args.labels is not None:
            labels = load_labels(args.labels)
        with contextlib.ExitStack() as stack:
            alerts_out = (stack.enter_context(alerts_path.open("wb"))
                          if alerts_path is not None else None)
            result = backtest(args.file, config, settings=settings, labels=labels,
                              group_labels=group_labels, alerts_out=alerts_out,
                              progress=progress_to_stderr, rejected=rejected)
    except (ValueError, OSError) as exc:
        print(f"txwatch backtest: {exc}", file=sys.stderr)
        return 2
    if args.json:
        sys.stdout.write(result.dumps().decode() + "\n")
    else:
        print(result.table())
    if alerts_path is not None:
        progress_to_stderr(f"backtest: {result.alerts:,} alerts written to {alerts_path}")
    verbose, allow_bad = getattr(args, "verbose", False), getattr(args, "allow_bad", False)
    for line in describe_rejected(rejected, result.events, args.file, verbose=verbose):
        print(line, file=sys.stderr)
    return 1 if rejected and not allow_bad else 0


def run_evaluate(settings: Settings, args: argparse.Namespace) -> int:
    """``txwatch evaluate [--events N] [--seed S] [--history FILE [--labels FILE]] [--json]``."""
    from streams.localkafka import LocalKafka

    history: Path | None = getattr(args, "history", None)
    labels_path: Path | None = getattr(args, "labels", None)
    for path in (args.config, history, labels_path):
        if path is not None and not path.exists():
            print(f"txwatch evaluate: no such file: {path}", file=sys.stderr)
            return 2
    if labels_path is not None and history is None:
        print("txwatch evaluate: --labels needs --history (the simulator labels its own "
              "traffic)", file=sys.stderr)
        return 2
    try:
        labels: list[LabelledEvent] | None = None
        group_labels: list[GroupLabel] | None = None
        if labels_path is not None and is_label_csv(labels_path):
            group_labels = load_label_csv(labels_path)
        elif labels_path is not None:
            labels = load_labels(labels_path)
    except (ValueError, OSError) as exc:
        print(f"txwatch evaluate: {exc}", file=sys.stderr)
        return 2

    def run(target: Settings) -> Evaluation:
        return asyncio.run(evaluate_live(
            target, events=args.events, seed=args.seed, accounts=args.accounts, rate=args.rate,
            config_path=args.config, timeout=args.timeout, work_dir=args.work_dir,
            keep_topics=args.keep_topics, history=history, labels=labels,
            group_labels=group_labels, progress=progress_to_stderr))

    try:
        if args.local_broker:
            from dataclasses import replace

            progress_to_stderr("evaluate: starting a local Kafka broker ...")
            with LocalKafka(progress=progress_to_stderr) as kafka:
                result = run(replace(settings, broker=kafka.bootstrap))
        else:
            result = run(settings)
    except ValueError as exc:
        print(f"txwatch evaluate: {exc}", file=sys.stderr)
        return 2
    except (RuntimeError, TimeoutError, OSError) as exc:
        print(f"txwatch evaluate: {exc}", file=sys.stderr)
        return 1
    if args.json:
        sys.stdout.write(result.dumps().decode() + "\n")
    else:
        print(result.table())
    return 0


def register_cli(subparsers: Any) -> None:
    """Add ``txwatch evaluate`` and ``txwatch backtest FILE``."""
    evaluate = subparsers.add_parser(
        "evaluate", help="score the detectors on simulated scenarios through a real worker",
        description="Publish the simulator's labelled scenarios to topics of their own, run a "
                    "txwatch worker on them and print precision, recall and median detection "
                    "delay per scenario and per detector.")
    evaluate.add_argument("--events", type=int, default=20_000, help="events to simulate")
    evaluate.add_argument("--seed", type=int, default=7)
    evaluate.add_argument("--accounts", type=int, default=5_000)
    evaluate.add_argument("--rate", type=float, default=None,
                          help="events per second (default: as fast as possible)")
    evaluate.add_argument("--config", type=Path, default=None,
                          help="detector configuration file for the worker")
    evaluate.add_argument("--local-broker", action="store_true",
                          help="start a local Kafka broker instead of using TXWATCH_BROKER")
    evaluate.add_argument("--timeout", type=float, default=600.0,
                          help="seconds allowed for the worker to process everything")
    evaluate.add_argument("--work-dir", type=Path, default=None,
                          help="worker log, state and labels (default: a temporary directory)")
    evaluate.add_argument("--keep-topics", action="store_true",
                          help="leave the evaluation's topics on the broker")
    evaluate.add_argument("--history", type=Path, default=None,
                          help="replay this JSON Lines history (e.g. from txwatch import-csv) "
                               "instead of simulating; --rate paces it")
    evaluate.add_argument("--labels", type=Path, default=None,
                          help="with --history: a labels CSV (event_id,label,pattern,group) or "
                               "JSON Lines labels; default the history's label fields")
    evaluate.add_argument("--json", action="store_true", help="print JSON instead of tables")
    evaluate.set_defaults(func=run_evaluate)

    backtest_parser = subparsers.add_parser(
        "backtest", help="score the detectors offline on a JSON Lines history",
        description="Run FILE (one event per line, an optional 'label' field naming the "
                    "scenario) through the worker's detector code without Kafka, at full "
                    "speed, and print the same table as txwatch evaluate.")
    backtest_parser.add_argument("file", type=Path)
    backtest_parser.add_argument("--config", type=Path, default=None,
                                 help="detector configuration file (default: "
                                      "TXWATCH_DETECTOR_CONFIG, else the packaged defaults)")
    backtest_parser.add_argument("--labels", type=Path, default=None,
                                 help="labels JSON Lines file (txwatch simulate --labels) "
                                      "instead of the events' label field, or a labels CSV "
                                      "(event_id,label,pattern,group; txwatch import-csv "
                                      "--labels-out): recall per pattern and group, precision "
                                      "and alerts per 1,000 events per detector")
    backtest_parser.add_argument("--alerts", type=Path, default=None,
                                 help="write every alert to this file as JSON Lines, the "
                                      "records the worker publishes")
    backtest_parser.add_argument("--json", action="store_true",
                                 help="print JSON instead of tables")
    backtest_parser.add_argument("--allow-bad", action="store_true",
                                 help="exit 0 even when lines were dead-lettered")
    backtest_parser.add_argument("--verbose", action="store_true",
                                 help="list every dead-lettered line (default: the first 5)")
    backtest_parser.set_defaults(func=run_backtest)


