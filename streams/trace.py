"""``txwatch trace ACCOUNT --history FILE``: where an account's money went, hop by hop.

Builds every account's :class:`~detectors.trace.FlowLedger` from a history
(JSON Lines events, as ``txwatch replay`` reads them), then follows the money
from ``ACCOUNT`` up to ``--hops`` transfers (:func:`detectors.trace.trace`) and
prints it as a tree with amounts (``text``), a document for a case tool
(``json``) or a Graphviz graph (``dot``). Alerts from ``txwatch backtest
--alerts`` (or read off the alert topic) mark the accounts they name.

Money moves ``account -> counterparty`` for the outflow event types (payments,
transfers, withdrawals, pledges) and ``counterparty -> account`` for the
inflows (top-ups, refunds, disbursements, payouts); events without a
counterparty or an amount carry no edge. Only account ids appear in the output.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Final

import orjson

from detectors.money import contract_amount, format_minor
from detectors.timeline import format_duration
from detectors.trace import (
    MAX_HOPS,
    OTHER,
    Edge,
    FlowLedger,
    Trace,
    flagged_accounts,
    ledgers_from_transfers,
    trace,
)
from streams.codec import parse_occurred_at
from streams.events import INFLOW_TYPES, OUTFLOW_TYPES

FORMATS: Final = ("text", "json", "dot")
#: Bad lines quoted before the rest are only counted.
SHOWN_BAD_LINES: Final = 5
_DURATION: Final = re.compile(r"^\s*(\d+)\s*(d|h|m|min|s)\s*$")
_UNIT_SECONDS: Final = {"d": 86_400, "h": 3_600, "m": 60, "min": 60, "s": 1}
_AMOUNT: Final = re.compile(r"^\d+(\.\d{1,2})?$")

#: (event_id, ts, sender, receiver, currency, amount_minor)
Transfer = tuple[str, int, str, str, str, int]


class TraceInputError(ValueError):
    """A history, alert file or parameter the trace cannot use; the message says why."""


def parse_duration(text: str) -> int:
    """``30d``, ``12h``, ``90m`` or ``45s`` as seconds.

    >>> parse_duration("30d"), parse_duration("12h"), parse_duration("90 min")
    (2592000, 43200, 5400)
    """
    match = _DURATION.match(text)
    if match is None:
        message = f"not a duration: {text!r} (write 30d, 12h, 90m or 45s)"
        raise TraceInputError(message)
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def parse_amount(text: str) -> int:
    """A non-negative amount in major units (``1500`` or ``1500.50``) as minor units.

    >>> parse_amount("1500.5"), parse_amount("0.07")
    (150050, 7)
    """
    if not _AMOUNT.match(text.strip()):
        message = f"not an amount: {text!r} (major units, at most 2 decimals, e.g. 1500.00)"
        raise TraceInputError(message)
    try:
        return int(Decimal(text.strip()).scaleb(2))
    except InvalidOperation as exc:  # pragma: no cover - the pattern admits only decimals
        raise TraceInputError(str(exc)) from None


def history_transfers(path: Path, bad: list[str]) -> Iterator[Transfer]:
    """The money-moving events of a JSON Lines history; unusable lines go to ``bad``."""
    with path.open("rb") as source:
        for number, line in enumerate(source, 1):
            if not line.strip():
                continue
            try:
                record = orjson.loads(line)
                found = _transfer(record)
            except (orjson.JSONDecodeError, TraceInputError, ValueError, TypeError) as exc:
                bad.append(f"{path}:{number}: {exc}")
                continue
            if found is not None:
                yield found


def _transfer(record: Any) -> Transfer | None:
    if not isinstance(record, dict):
        message = "not a JSON object"
        raise TraceInputError(message)
    event_type = record.get("event_type")
    counterparty = record.get("counterparty_id")
    amount = record.get("amount")
    if event_type not in OUTFLOW_TYPES and event_type not in INFLOW_TYPES:
        return None
    if not isinstance(counterparty, str) or not counterparty or amount is None:
        return None
    account, event_id = record.get("account_id"), record.get("event_id")
    currency = record.get("currency")
    for name, value in (("account_id", account), ("event_id", event_id),
                        ("currency", currency)):
        if not isinstance(value, str) or not value:
            message = f"{name} must be a non-empty string, not {value!r}"
            raise TraceInputError(message)
    if not isinstance(amount, str):
        message = f"amount must be a decimal string (money is never a float), not {amount!r}"
        raise TraceInputError(message)
    ts = int(parse_occurred_at(str(record.get("occurred_at"))).timestamp())
    minor = parse_amount(amount)
    if event_type in OUTFLOW_TYPES:
        return str(event_id), ts, str(account), counterparty, str(currency), minor
    return str(event_id), ts, counterparty, str(account), str(currency), minor


def read_alerts(path: Path) -> dict[str, list[str]]:
    """Account -> detectors from a JSON Lines file of alert records."""
    records = []
    with path.open("rb") as source:
        for number, line in enumerate(source, 1):
            if not line.strip():
                continue
            try:
                records.append(orjson.loads(line))
            except orjson.JSONDecodeError as exc:
                message = f"{path}:{number}: not an alert record ({exc})"
                raise TraceInputError(message) from None
    return flagged_accounts(r for r in records if isinstance(r, dict))


# -- rendering -------------------------------------------------------------------------------


def _when(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M")


def _edge_line(edge: Edge, side: str, flagged: Mapping[str, Sequence[str]]) -> str:
    other = edge.target if side == "out" else edge.source
    arrow = "->" if side == "out" else "<-"
    transfers = "1 transfer" if edge.count == 1 else f"{edge.count:,} transfers"
    span = (_when(edge.first_ts) if edge.first_ts == edge.last_ts
            else f"{_when(edge.first_ts)} .. {_when(edge.last_ts)}")
    name = "other accounts (folded)" if other == OTHER else other
    mark = f"  [alerts: {', '.join(flagged[other])}]" if other in flagged else ""
    ids = f"  ({', '.join(edge.event_ids)})" if edge.event_ids else ""
    return (f"{arrow} {name}  {format_minor(edge.amount_minor)} {edge.currency}, "
            f"{transfers}, {span}{mark}{ids}")


def render_text(result: Trace) -> str:
    """A tree per direction: the traced account, then each hop's edges, largest first."""
    lines = []
    sides = ("out", "in") if result.direction == "both" else (result.direction,)
    mark = (f"  [alerts: {', '.join(result.flagged[result.account])}]"
            if result.account in result.flagged else "")
    for side in sides:
        edges = [e for e in result.edges if e.side == side]
        what = "out of" if side == "out" else "into"
        lines.append(f"money {what} {result.account}, up to {result.hops} "
                     f"hop{'s' if result.hops != 1 else ''}: {len(edges):,} edges")
        lines.append(f"{result.account}{mark}")
        children: dict[str, list[Edge]] = {}
        for edge in edges:
            parent = edge.source if side == "out" else edge.target
            children.setdefault(parent, []).append(edge)
        expanded = {result.account}

        def walk(node: str, prefix: str, side: str = side,
                 children: dict[str, list[Edge]] = children,
                 expanded: set[str] = expanded) -> None:
            kids = children.get(node, [])
            for i, edge in enumerate(kids):
                last = i == len(kids) - 1
                lines.append(f"{prefix}{'└─ ' if last else '├─ '}"
                             f"{_edge_line(edge, side, result.flagged)}")
                nxt = edge.target if side == "out" else edge.source
                if nxt in expanded or nxt == OTHER:
                    if nxt in expanded and children.get(nxt):
                        lines[-1] += "  (followed above)"
                    continue
                expanded.add(nxt)
                walk(nxt, prefix + ("   " if last else "│  "))

        walk(result.account, "")
        lines.append("")
    if result.truncated:
        lines.append(f"stopped at {len(result.accounts):,} accounts (--max-accounts): "
                     "further edges are not shown")
    return "\n".join(lines).rstrip() + "\n"


def render_json(result: Trace) -> dict[str, Any]:
    """The trace as a case tool consumes it: accounts with their hop and money, and edges."""
    through = result.money_through()
    return {
        "account": result.account,
        "direction": result.direction,
        "hops": result.hops,
        "truncated": result.truncated,
        "accounts": [
            {"account": name, "hop": hop, "money_minor": through.get(name, 0),
             "money": contract_amount(through.get(name, 0)),
             "alerts": result.flagged.get(name, [])}
            for name, hop in sorted(result.accounts.items(), key=lambda kv: (kv[1], kv[0]))
        ],
        "edges": [{**edge.to_json(), "amount": contract_amount(edge.amount_minor)}
                  for edge in result.edges],
    }


def render_dot(result: Trace) -> str:
    """A Graphviz digraph: hops left to right, flagged accounts filled."""
    def quoted(text: str) -> str:  # label lines are joined with DOT's own "\\n"
        return '"' + text.replace('"', '\\"') + '"'

    through = result.money_through()
    lines = [f"digraph {quoted('trace ' + result.account)} {{", "  rankdir=LR;",
             "  node [shape=box, fontname=\"Helvetica\"];"]
    for name in sorted(result.accounts, key=lambda name: (result.accounts[name], name)):
        shown = "other accounts (folded)" if name == OTHER else name
        label = f"{shown}\\n{format_minor(through.get(name, 0))}"
        style = ""
        if name in result.flagged:
            label += "\\n" + ", ".join(result.flagged[name])
            style = ", style=filled, fillcolor=\"#f4b6b6\""
        lines.append(f"  {quoted(name)} [label={quoted(label)}{style}];")
    for edge in result.edges:
        label = (f"{format_minor(edge.amount_minor)} {edge.currency}\\n{edge.count} x, "
                 f"{_when(edge.first_ts)[:10]}")
        lines.append(f"  {quoted(edge.source)} -> {quoted(edge.target)} [label={quoted(label)}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


# -- command line ----------------------------------------------------------------------------


def run_trace(args: argparse.Namespace) -> int:
    """``txwatch trace ACCOUNT --history FILE ...``; exit 2 with one line on bad input."""
    try:
        return _run(args)
    except (TraceInputError, ValueError) as exc:
        print(f"txwatch trace: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"txwatch trace: cannot read {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    if not args.history.is_file():
        message = f"no such history file: {args.history}"
        raise TraceInputError(message)
    if args.alerts is not None and not args.alerts.is_file():
        message = f"no such alerts file: {args.alerts}"
        raise TraceInputError(message)
    since_seconds = parse_duration(args.since) if args.since is not None else None
    until = (int(parse_occurred_at(args.until).timestamp()) if args.until is not None
             else None)
    min_amount = parse_amount(args.min_amount) if args.min_amount is not None else 0
    bad: list[str] = []
    transfers = list(history_transfers(args.history, bad))
    for line in bad[:SHOWN_BAD_LINES]:
        print(f"txwatch trace: skipped {line}", file=sys.stderr)
    if len(bad) > SHOWN_BAD_LINES:
        print(f"txwatch trace: skipped {len(bad) - SHOWN_BAD_LINES:,} more bad lines",
              file=sys.stderr)
    if not transfers:
        message = f"{args.history}: no event with an amount and a counterparty"
        raise TraceInputError(message)
    latest = until if until is not None else max(t[1] for t in transfers)
    since = latest - since_seconds if since_seconds is not None else None
    window = max(t[1] for t in transfers) - min(t[1] for t in transfers) + 1
    ledgers: dict[str, FlowLedger] = ledgers_from_transfers(
        transfers, max_counterparties=args.max_counterparties,
        window_seconds=max(window, 1))
    if args.account not in ledgers:
        message = f"{args.history}: account {args.account!r} sent and received nothing"
        raise TraceInputError(message)
    flagged = read_alerts(args.alerts) if args.alerts is not None else {}
    result = trace(args.account, ledgers.get, direction=args.direction, hops=args.hops,
                   since=since, until=until, min_amount=min_amount,
                   max_accounts=args.max_accounts,
                   flagged=lambda account: flagged.get(account, ()),
                   ordered=not args.any_time)
    if args.format == "json":
        sys.stdout.write(orjson.dumps(render_json(result), option=orjson.OPT_INDENT_2).decode()
                         + "\n")
    elif args.format == "dot":
        sys.stdout.write(render_dot(result))
    else:
        sys.stdout.write(render_text(result))
        span = format_duration(since_seconds) if since_seconds is not None else None
        if span is not None:
            print(f"(transfers of the last {span} before {_when(latest)} UTC)")
    return 0


def register_cli(subparsers: Any) -> None:
    """Add ``txwatch trace``."""
    parser = subparsers.add_parser(
        "trace", help="where an account's money went (or came from), hop by hop",
        description="Follow the money from ACCOUNT through a history (JSON Lines events, as "
                    "txwatch replay reads them): per hop, each counterparty with the total "
                    "amount, number of transfers, first and last time and a few event ids.")
    parser.add_argument("account", metavar="ACCOUNT")
    parser.add_argument("--history", type=Path, required=True, metavar="FILE",
                        help="JSON Lines events to build the accounts' transfers from")
    parser.add_argument("--direction", choices=("out", "in", "both"), default="out",
                        help="follow money out of the account, into it, or both (default out)")
    parser.add_argument("--hops", type=int, default=3, choices=range(1, MAX_HOPS + 1),
                        metavar=f"1-{MAX_HOPS}", help="transfers to follow (default 3)")
    parser.add_argument("--since", metavar="DURATION",
                        help="only transfers of the last DURATION (30d, 12h) before --until")
    parser.add_argument("--until", metavar="TIME",
                        help="ISO 8601 time; default: the history's last event")
    parser.add_argument("--min-amount", metavar="X",
                        help="leave out edges of less than X (major units) in all")
    parser.add_argument("--any-time", action="store_true",
                        help="follow every edge whatever its times (by default an account's "
                             "onward edges need a transfer after the money reached it)")
    parser.add_argument("--format", choices=FORMATS, default="text")
    parser.add_argument("--alerts", type=Path, default=None, metavar="FILE",
                        help="alert records (JSON Lines, e.g. txwatch backtest --alerts) whose "
                             "accounts are marked")
    parser.add_argument("--max-accounts", type=int, default=200, metavar="N",
                        help="stop adding accounts at N and say so (default 200)")
    parser.add_argument("--max-counterparties", type=int, default=32, metavar="N",
                        help="counterparties kept per account and direction before the "
                             "smallest are folded into 'other accounts' (default 32)")
    parser.set_defaults(func=lambda settings, args: run_trace(args))
