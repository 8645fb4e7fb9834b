"""``txwatch portfolio``: print the live book; ``portfolio simulate``: publish a simulated one.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from detectors.portfolio import (
    GRANULARITIES,
)
from streams.portfolio.config import PortfolioSettings, load_portfolio_config
from streams.portfolio.records import read_partials
from streams.portfolio.report import render_book, write_csv
from streams.settings import Settings, SettingsError

# -- command line -------------------------------------------------------------------------


def run_portfolio(settings: Settings, args: argparse.Namespace) -> int:
    """``txwatch portfolio``: print the book; ``--csv DIR`` also writes the CSV files."""
    try:
        psettings = PortfolioSettings.from_env()
        config = load_portfolio_config(psettings.config)
    except (SettingsError, ValueError) as exc:
        print(f"txwatch portfolio: {exc}", file=sys.stderr)
        return 2
    topic = psettings.topic_for(settings)
    try:
        view = asyncio.run(read_partials(settings, topic, args.timeout))
    except (TimeoutError, OSError) as exc:
        print(f"txwatch portfolio: {exc}", file=sys.stderr)
        return 1
    if not view.partials:
        print(f"txwatch portfolio: no partials on {topic} yet (is a worker running?)",
              file=sys.stderr)
        return 1
    try:
        book = view.book(config)
    except ValueError as exc:
        print(f"txwatch portfolio: {exc}", file=sys.stderr)
        return 1
    if args.period is not None and args.period not in book.periods(args.granularity):
        print(f"txwatch portfolio: no {args.granularity} period {args.period} in the book "
              f"(kept: {', '.join(book.periods(args.granularity)) or 'none'})", file=sys.stderr)
        return 2
    missing = view.missing(settings.partitions)
    behind = [p for p in view.behind(settings.partitions, config.live_max_lag)
              if p not in missing]
    print(render_book(book, args.granularity, args.period, args.top, missing,
                      settings.partitions, behind))
    if args.csv is not None:
        for path in write_csv(book, args.csv):
            print(f"wrote {path}", file=sys.stderr)
    return 0


def run_portfolio_simulate(settings: Settings, args: argparse.Namespace) -> int:
    """``txwatch portfolio simulate``: publish a simulated lending book."""
    from streams.simulate import simulate_lending_book

    report = asyncio.run(simulate_lending_book(
        settings, seed=args.seed, borrowers=args.borrowers, months=args.months, rate=args.rate,
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    ))
    print(report)
    return 1 if report.failed else 0


def register_cli(subparsers: Any) -> None:
    """Add ``txwatch portfolio [--csv DIR]`` and ``txwatch portfolio simulate``."""
    parser = subparsers.add_parser(
        "portfolio", help="lending book: migration matrix, concentration, vintages",
        description="Print the live lending book from the partials the workers publish: "
                    "delinquency buckets, the migration matrix (roll rates), concentration "
                    "of outstanding principal and vintages.")
    parser.add_argument("--csv", type=Path, default=None, metavar="DIR",
                        help="also write buckets, migration, concentration, borrowers and "
                             "vintages CSV files to DIR")
    parser.add_argument("--granularity", choices=GRANULARITIES, default="monthly",
                        help="periods of the printed matrix (default monthly)")
    parser.add_argument("--period", default=None,
                        help="print this period (YYYY-MM or YYYY-MM-DD); default the last "
                             "complete one and the current one")
    parser.add_argument("--top", type=int, default=None,
                        help="values shown per concentration dimension")
    parser.add_argument("--timeout", type=float, default=15.0,
                        help="seconds allowed to read the partials topic")
    parser.set_defaults(func=run_portfolio)
    actions = parser.add_subparsers(dest="portfolio_command", metavar="{simulate}")
    simulate = actions.add_parser(
        "simulate", help="publish a simulated lending book (deteriorating cohort, "
                         "concentrated region)")
    simulate.add_argument("--seed", type=int, default=7)
    simulate.add_argument("--borrowers", type=int, default=1500)
    simulate.add_argument("--months", type=int, default=9,
                          help="months of event time simulated")
    simulate.add_argument("--rate", type=float, default=None,
                          help="events per second (default: as fast as possible)")
    simulate.set_defaults(func=run_portfolio_simulate)


