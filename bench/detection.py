"""Detection figures on labelled histories: the default configuration, and a calibrated one.

For each labelled CSV history (``ts,src,dst,amount,type,label,pattern,group``, as
in ``../shared/data/*/transactions.csv.gz``) this does what a user would:

1. ``txwatch import-csv`` it to events and a labels CSV;
2. ``txwatch backtest --labels`` the whole history with the default configuration;
3. ``txwatch calibrate --budget 0.5`` on the first 30% of the events, then
   ``txwatch backtest --labels --config`` the fitted configuration on the other 70%.

It prints one Markdown table per history (alerts per 1,000 events, precision, and
per pattern group recall and the share caught within the first 3 events) and
writes every figure to ``--json``. ``docs/detection.md`` quotes its output::

    .venv/bin/python bench/detection.py --data ../shared/data --work var/detection \\
        --json docs/detection-results.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streams.calibrate import calibrate  # noqa: E402
from streams.evaluation import Evaluation, backtest, load_label_csv  # noqa: E402
from streams.importer import import_csv  # noqa: E402


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def split(events: Path, fit: Path, rest: Path, fraction: float) -> tuple[int, int]:
    """The first ``fraction`` of the lines of ``events`` to ``fit``, the others to ``rest``."""
    lines = events.read_bytes().splitlines(keepends=True)
    cut = int(len(lines) * fraction)
    fit.write_bytes(b"".join(lines[:cut]))
    rest.write_bytes(b"".join(lines[cut:]))
    return cut, len(lines) - cut


def _summary(result: Evaluation) -> dict[str, Any]:
    report = result.labelled
    assert report is not None, "scored without a labels CSV"
    return {
        "config_version": result.config_version,
        "events": result.events,
        "alerts": report.alerts,
        "alerts_per_1000": report.alerts_per_1000,
        "precision": report.precision,
        "patterns": [asdict(row) for row in report.patterns],
        "detectors": [asdict(row) for row in report.detectors if row.alerts],
    }


def _share(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _table(name: str, runs: dict[str, dict[str, Any]]) -> str:
    lines = [f"### {name}", "",
             "| configuration | events | alerts / 1,000 | precision | pattern | groups caught "
             "| within first 3 |",
             "|---|---:|---:|---:|---|---:|---:|"]
    for label, run in runs.items():
        per_1000 = run["alerts_per_1000"]
        head = (f"| {label} (`{run['config_version']}`) | {run['events']:,} | "
                f"{'-' if per_1000 is None else f'{per_1000:.2f}'} | {_share(run['precision'])}")
        for index, row in enumerate(run["patterns"]):
            prefix = head if index == 0 else "| | | |"
            lines.append(f"{prefix} | {row['pattern']} | {row['caught']}/{row['groups']} "
                         f"({_share(row['group_recall'])}) | {_share(row['first_3_share'])} |")
        busiest = ", ".join(f"{d['detector']} {d['alerts']:,} ({_share(d['precision'])})"
                            for d in sorted(run["detectors"], key=lambda d: -d["alerts"])[:5])
        lines.append(f"| | | | | alerts by detector (precision): {busiest or 'none'} | | |")
    return "\n".join(lines)


def measure(source: Path, work: Path, budget: float, fraction: float) -> dict[str, Any]:
    name = source.parent.name
    work.mkdir(parents=True, exist_ok=True)
    events, labels = work / f"{name}.jsonl", work / f"{name}-labels.csv"
    _say(f"{name}: importing {source}")
    import_csv(source, events, labels_out=labels, progress=_say)
    group_labels = load_label_csv(labels)
    started = time.monotonic()
    default = backtest(events, group_labels=group_labels, progress=_say)
    _say(f"{name}: default configuration scored in {time.monotonic() - started:.0f} s")

    fit, rest = work / f"{name}-fit.jsonl", work / f"{name}-rest.jsonl"
    fitted_events, rest_events = split(events, fit, rest, fraction)
    fitted = calibrate(fit, budget, progress=_say)
    config_path = work / f"{name}-calibrated.json"
    config_path.write_bytes(orjson.dumps(fitted.config, option=orjson.OPT_INDENT_2))
    rest_ids = {orjson.loads(line)["event_id"] for line in rest.read_bytes().splitlines()}
    scored = backtest(rest, fitted.config,
                      group_labels=[g for g in group_labels if g.event_id in rest_ids],
                      progress=_say)
    return {
        "history": name,
        "default": _summary(default),
        "calibrated": {**_summary(scored), "budget_percent": budget,
                       "fitted_on_events": fitted_events, "scored_events": rest_events},
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data",
                        help="folder of histories, each DIR/transactions.csv.gz")
    parser.add_argument("--only", action="append", help="history folder names to run")
    parser.add_argument("--work", type=Path, default=ROOT / "var" / "detection")
    parser.add_argument("--budget", type=float, default=0.5)
    parser.add_argument("--fit-fraction", type=float, default=0.3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    os.environ.setdefault("TXWATCH_DEV_MODE", "1")
    sources = sorted(args.data.glob("*/transactions.csv.gz"))
    if args.only:
        sources = [s for s in sources if s.parent.name in args.only]
    if not sources:
        print(f"bench/detection.py: no */transactions.csv.gz under {args.data}", file=sys.stderr)
        return 2
    results = [measure(source, args.work, args.budget, args.fit_fraction) for source in sources]
    for result in results:
        print(_table(result["history"], {
            "default": result["default"],
            f"calibrate --budget {args.budget:g} on the first {args.fit_fraction:.0%}, "
            f"scored on the rest": result["calibrated"]}))
        print()
    if args.json is not None:
        args.json.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2) + b"\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
