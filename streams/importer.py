"""``txwatch import-csv``: a labelled transaction CSV to txwatch events and a labels file.

Makes histories from elsewhere measurable: each CSV row (``ts,src,dst,amount,type``
and optionally ``label,pattern,group``) becomes one event of the contract in
``streams/schemas/`` (see :class:`RowConverter` for the mapping), and the labelled
rows go to a separate labels CSV that ``txwatch backtest --labels`` reads; labels
never go into the events. The development histories in ``../shared/data/``
(``amlsim-dev``, ``paysim-dev``, ``sparkov-dev``) are examples of the format; the
commands are in ``docs/detection.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gzip
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final

import orjson

from streams.events import PAYMENT_TYPES

if TYPE_CHECKING:
    from streams.settings import Settings

Progress = Callable[[str], None]

#: Source type name -> txwatch event type, before ``--type-map``.
DEFAULT_TYPE_MAP: Final[Mapping[str, str]] = {
    "TRANSFER": "transfer",
    "CASH_OUT": "withdrawal",
    "DEBIT": "withdrawal",
    "CASH_IN": "top_up",
    "PAYMENT": "payment",
    **{name: name for name in sorted(PAYMENT_TYPES)},
}
#: Event type of a source type the map does not name.
UNKNOWN_TYPE_EVENT: Final = "payment"
DEFAULT_START: Final = datetime(2024, 1, 1, tzinfo=UTC)
DEFAULT_CURRENCY: Final = "USD"
DEFAULT_ID_PREFIX: Final = "e"
#: ``pattern`` of a labelled row that names none.
DEFAULT_PATTERN: Final = "labelled"
REQUIRED_COLUMNS: Final = ("ts", "src", "dst", "amount", "type")
LABEL_COLUMNS: Final = ("event_id", "label", "pattern", "group")
#: Bad rows listed in the summary (and the error) with their line numbers.
SHOWN_BAD_ROWS: Final = 5
PROGRESS_EVERY: Final = 2.0
MAX_ID_LENGTH: Final = 128
MAX_AMOUNT: Final = Decimal(10) ** 15
CENT: Final = Decimal("0.01")
CURRENCY_CODE: Final = re.compile(r"[A-Z]{3}")
DIGITS: Final = re.compile(r"[0-9]+")
PLAIN_DECIMAL: Final = re.compile(r"[0-9]+(?:\.[0-9]+)?")
TRUE_LABELS: Final = frozenset({"1", "true", "True", "TRUE"})
FALSE_LABELS: Final = frozenset({"", "0", "false", "False", "FALSE"})


class ImportFailed(ValueError):
    """The input or the options cannot be converted; the message says where and why."""


class BadRow(ValueError):
    """One data row that cannot become an event; the message is the reason."""


@dataclass(slots=True)
class ImportSummary:
    """What an import wrote and skipped."""

    source: str
    rows: int = 0
    events: int = 0
    labelled: int = 0
    currency: str = DEFAULT_CURRENCY
    bad_rows: int = 0
    #: (line number, reason) of the first :data:`SHOWN_BAD_ROWS` bad rows
    first_bad: list[tuple[int, str]] = field(default_factory=list)
    event_types: Counter[str] = field(default_factory=Counter)
    #: source types the map does not name, imported as payments, with their row counts
    unmapped_types: Counter[str] = field(default_factory=Counter)
    #: labelled rows and groups per pattern
    patterns: Counter[str] = field(default_factory=Counter)
    groups: dict[str, set[str]] = field(default_factory=dict)
    has_labels: bool = False
    elapsed_seconds: float = 0.0

    def render(self) -> str:
        """The summary printed by ``txwatch import-csv``."""
        types = ", ".join(f"{name} {count:,}" for name, count in sorted(self.event_types.items()))
        lines = [f"import-csv: {self.source}: {self.rows:,} rows -> {self.events:,} events "
                 f"({types or 'none'}), currency {self.currency}, "
                 f"{self.elapsed_seconds:.1f} s"]
        if self.unmapped_types:
            shown = ", ".join(f"{name} {count:,}"
                              for name, count in self.unmapped_types.most_common(10))
            more = len(self.unmapped_types) - 10
            lines.append(f"  types not in the type map, imported as payment with "
                         f"merchant_id = dst ({len(self.unmapped_types):,}): {shown}"
                         + (f" and {more:,} more" if more > 0 else ""))
        if self.has_labels:
            per_pattern = ", ".join(
                f"{name} {count:,} in {len(self.groups.get(name, ())):,} groups"
                for name, count in sorted(self.patterns.items()))
            lines.append(f"  labelled rows: {self.labelled:,}"
                         + (f" ({per_pattern})" if per_pattern else ""))
        else:
            lines.append("  no 'label' column: no labelled rows")
        if self.bad_rows:
            lines.append(f"  skipped {self.bad_rows:,} bad rows (--allow-bad); the first:")
            lines.extend(f"    line {line}: {reason}" for line, reason in self.first_bad)
        return "\n".join(lines)


# -- options --------------------------------------------------------------------------------


def parse_type_map(specs: Sequence[str]) -> dict[str, str]:
    """:data:`DEFAULT_TYPE_MAP` updated by ``NAME=event_type`` pairs, comma-separated.

    Examples
    --------
    >>> mapping = parse_type_map(["purchase=payment,CASH_OUT=transfer"])
    >>> mapping["purchase"], mapping["CASH_OUT"], mapping["CASH_IN"]
    ('payment', 'transfer', 'top_up')
    """
    mapping = dict(DEFAULT_TYPE_MAP)
    for spec in specs:
        for item in spec.split(","):
            if not item.strip():
                continue
            name, sep, event_type = item.partition("=")
            name, event_type = name.strip(), event_type.strip()
            if not sep or not name:
                message = f"--type-map: {item!r} is not NAME=event_type"
                raise ImportFailed(message)
            if event_type not in PAYMENT_TYPES:
                message = (f"--type-map: {name}={event_type}: the event type must be one of "
                           f"{', '.join(sorted(PAYMENT_TYPES))}")
                raise ImportFailed(message)
            mapping[name] = event_type
    return mapping


def parse_start(text: str) -> datetime:
    """``--start``: an ISO 8601 time with ``Z`` or an offset, as UTC.

    Examples
    --------
    >>> parse_start("2024-01-01T02:00:00+02:00").isoformat()
    '2024-01-01T00:00:00+00:00'
    """
    try:
        moment = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        message = f"--start: {text!r} is not an ISO 8601 time with Z or an offset"
        raise ImportFailed(message)
    return moment.astimezone(UTC)


def normalise_amount(text: str) -> str:
    """An exact amount with two decimal places; :class:`BadRow` if it is not one.

    Examples
    --------
    >>> normalise_amount("12"), normalise_amount("0.5"), normalise_amount("465.810")
    ('12.00', '0.50', '465.81')
    >>> normalise_amount("1.005")
    Traceback (most recent call last):
    ...
    streams.importer.BadRow: amount '1.005' has more than 2 decimal places
    """
    stripped = text.strip()
    if not PLAIN_DECIMAL.fullmatch(stripped):
        message = f"amount {text!r} is not a plain non-negative decimal number like 1234.50"
        raise BadRow(message)
    try:
        value = Decimal(stripped)
    except InvalidOperation:
        message = f"amount {text!r} is not a decimal number"
        raise BadRow(message) from None
    cents = value.quantize(CENT)
    if cents != value:
        message = f"amount {text!r} has more than 2 decimal places"
        raise BadRow(message)
    if cents > MAX_AMOUNT:
        message = f"amount {text!r} is more than 10^15"
        raise BadRow(message)
    return f"{cents:f}"


def _identifier(row: Mapping[str, str | None], column: str, *, required: bool) -> str | None:
    value = (row.get(column) or "").strip()
    if not value:
        if required:
            message = f"{column} is empty"
            raise BadRow(message)
        return None
    if len(value) > MAX_ID_LENGTH:
        message = f"{column} is {len(value)} characters long; at most {MAX_ID_LENGTH}"
        raise BadRow(message)
    return value


# -- conversion -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConvertedRow:
    """One row as an event, and its label when it is labelled."""

    event: dict[str, Any]
    source_type: str
    mapped: bool
    #: (pattern, group) of a labelled row
    label: tuple[str, str] | None


class RowConverter:
    """Turns CSV rows into events of the contract.

    Parameters
    ----------
    currency
        ISO 4217 code given to every amount.
    start
        The time ``ts`` 0 stands for.
    type_map
        Source type -> event type (see :func:`parse_type_map`).
    id_prefix
        Prepended to the row index to make the event id.

    Notes
    -----
    A data row becomes:

    * ``event_id``: ``id_prefix`` and the row's 0-based index among the data
      rows, so the same file always gives the same ids and a skipped bad row
      leaves a gap rather than shifting the rest;
    * ``occurred_at``: ``start`` plus ``ts``, a non-negative integer of seconds;
    * ``account_id`` = ``src``; ``counterparty_id`` = ``dst``, left out when
      ``dst`` is empty (a ``transfer`` needs one);
    * ``amount``: the decimal string, never a float, with exactly two decimal
      places (``12`` becomes ``12.00``); a non-zero third decimal place, a
      sign, an exponent or more than 10^15 makes the row bad;
    * ``event_type``: ``type`` through ``type_map`` (exact names). A type it
      does not name becomes a ``payment``; every ``payment`` carries
      ``merchant_id`` = ``dst``.

    A row is labelled when ``label`` is ``1`` or ``true`` (``0``, ``false`` or
    empty: not labelled). An empty ``pattern`` becomes :data:`DEFAULT_PATTERN`,
    an empty ``group`` ``<pattern>:<src>``: a group is then the labelled rows
    of one paying account.
    """

    def __init__(self, currency: str = DEFAULT_CURRENCY, start: datetime = DEFAULT_START,
                 type_map: Mapping[str, str] = DEFAULT_TYPE_MAP,
                 id_prefix: str = DEFAULT_ID_PREFIX) -> None:
        if not CURRENCY_CODE.fullmatch(currency):
            message = f"--currency: {currency!r} is not an ISO 4217 code (three capital letters)"
            raise ImportFailed(message)
        if start.tzinfo is None:
            message = "start must be timezone-aware"
            raise ImportFailed(message)
        if len(id_prefix) > MAX_ID_LENGTH - 12:
            message = (f"--id-prefix is {len(id_prefix)} characters long; at most "
                       f"{MAX_ID_LENGTH - 12}")
            raise ImportFailed(message)
        self.currency = currency
        self.start = start.astimezone(UTC)
        self.type_map = dict(type_map)
        self.id_prefix = id_prefix

    def convert(self, index: int, row: Mapping[str, str | None]) -> ConvertedRow:
        """The event of data row ``index``; :class:`BadRow` with the reason if none."""
        ts_text = (row.get("ts") or "").strip()
        if not DIGITS.fullmatch(ts_text):
            message = f"ts {ts_text!r} is not a non-negative integer number of seconds"
            raise BadRow(message)
        try:
            occurred = self.start + timedelta(seconds=int(ts_text))
        except OverflowError:
            message = f"ts {ts_text} is too far from the start"
            raise BadRow(message) from None
        src = _identifier(row, "src", required=True)
        dst = _identifier(row, "dst", required=False)
        amount = normalise_amount(row.get("amount") or "")
        source_type = (row.get("type") or "").strip()
        if not source_type:
            message = "type is empty"
            raise BadRow(message)
        mapped_type = self.type_map.get(source_type)
        event_type = mapped_type or UNKNOWN_TYPE_EVENT
        if event_type == "transfer" and dst is None:
            message = f"type {source_type} is a transfer, which needs a dst"
            raise BadRow(message)
        label = self._label(row, src)
        event: dict[str, Any] = {
            "event_id": f"{self.id_prefix}{index}",
            "event_type": event_type,
            "occurred_at": occurred.isoformat().replace("+00:00", "Z"),
            "account_id": src,
            "amount": amount,
            "currency": self.currency,
        }
        if dst is not None:
            event["counterparty_id"] = dst
            if event_type == "payment":
                event["merchant_id"] = dst
        return ConvertedRow(event, source_type, mapped_type is not None, label)

    @staticmethod
    def _label(row: Mapping[str, str | None], src: str | None) -> tuple[str, str] | None:
        text = (row.get("label") or "").strip()
        if text in FALSE_LABELS:
            return None
        if text not in TRUE_LABELS:
            message = f"label {text!r} is not 1, 0, true, false or empty"
            raise BadRow(message)
        pattern = (row.get("pattern") or "").strip() or DEFAULT_PATTERN
        group = (row.get("group") or "").strip() or f"{pattern}:{src}"
        return pattern, group


def _open_text(path: Path, stack: contextlib.ExitStack) -> IO[str]:
    """``path`` as text, gunzipped when it starts with the gzip magic bytes."""
    with path.open("rb") as probe:
        compressed = probe.read(2) == b"\x1f\x8b"
    if compressed:
        return stack.enter_context(gzip.open(path, "rt", encoding="utf-8-sig", newline=""))
    return stack.enter_context(path.open(encoding="utf-8-sig", newline=""))


def _rows(reader: csv.DictReader[str]) -> Iterator[tuple[int, dict[str, str | None], str | None]]:
    """(line number, row, what is wrong with its width or ``None``) of each data row."""
    width = len(reader.fieldnames or ())
    for row in reader:
        extra = row.pop(None, None)
        present = sum(value is not None for value in row.values()) + len(extra or ())
        problem = f"has {present} fields, the header {width}" if present != width else None
        yield reader.line_num, row, problem


def import_csv(source: Path, out: Path, *, labels_out: Path | None = None,
               converter: RowConverter | None = None, allow_bad: bool = False,
               progress: Progress | None = None) -> ImportSummary:
    """Convert ``source`` to events in ``out`` (and labels in ``labels_out``).

    Parameters
    ----------
    source
        The CSV file, gzip-compressed or not.
    out
        JSON Lines events, one per converted row, in the file's order.
    labels_out
        CSV of the labelled rows (``event_id,label,pattern,group``); none if ``None``.
    converter
        Currency, start, type map and id prefix (default: :class:`RowConverter` ()).
    allow_bad
        Skip rows that cannot be converted instead of stopping at the first.
    progress
        Called with a line of text about every 2 s.

    Raises
    ------
    ImportFailed
        On a bad header, or a bad row without ``allow_bad``; nothing is left in
        ``out`` or ``labels_out`` then.
    """
    converter = converter or RowConverter()
    summary = ImportSummary(source=str(source), currency=converter.currency)
    started = last_report = time.monotonic()
    targets = [out] + ([labels_out] if labels_out is not None else [])
    partial = {path: path.with_name(f".{path.name}.partial") for path in targets}
    try:
        with contextlib.ExitStack() as stack:
            text = _open_text(source, stack)
            events = stack.enter_context(partial[out].open("wb"))
            label_writer = None
            if labels_out is not None:
                label_writer = csv.writer(stack.enter_context(
                    partial[labels_out].open("w", newline="", encoding="utf-8")),
                    lineterminator="\n")
                label_writer.writerow(LABEL_COLUMNS)
            reader = csv.DictReader(text)
            _check_header(source, reader.fieldnames)
            summary.has_labels = "label" in (reader.fieldnames or ())
            for index, (line, row, problem) in enumerate(_rows(reader)):
                summary.rows += 1
                try:
                    if problem is not None:
                        raise BadRow(problem)
                    converted = converter.convert(index, row)
                except BadRow as exc:
                    if not allow_bad:
                        message = (f"{source} line {line}: {exc} (pass --allow-bad to skip "
                                   "bad rows)")
                        raise ImportFailed(message) from None
                    summary.bad_rows += 1
                    if len(summary.first_bad) < SHOWN_BAD_ROWS:
                        summary.first_bad.append((line, str(exc)))
                    continue
                events.write(orjson.dumps(converted.event) + b"\n")
                summary.events += 1
                summary.event_types[converted.event["event_type"]] += 1
                if not converted.mapped:
                    summary.unmapped_types[converted.source_type] += 1
                if converted.label is not None:
                    pattern, group = converted.label
                    summary.labelled += 1
                    summary.patterns[pattern] += 1
                    summary.groups.setdefault(pattern, set()).add(group)
                    if label_writer is not None:
                        label_writer.writerow((converted.event["event_id"], 1, pattern, group))
                if progress is not None and summary.rows % 8192 == 0:
                    now = time.monotonic()
                    if now - last_report >= PROGRESS_EVERY:
                        last_report = now
                        progress(f"import-csv: {summary.rows:,} rows, {summary.bad_rows:,} bad, "
                                 f"{summary.rows / (now - started):,.0f} rows/s")
        for path, temporary in partial.items():
            os.replace(temporary, path)
    except (csv.Error, UnicodeDecodeError, EOFError, gzip.BadGzipFile) as exc:
        message = f"{source}: not a readable CSV file: {exc}"
        raise ImportFailed(message) from None
    finally:
        for temporary in partial.values():
            temporary.unlink(missing_ok=True)
    summary.elapsed_seconds = time.monotonic() - started
    return summary


def _check_header(source: Path, fieldnames: Sequence[str] | None) -> None:
    if not fieldnames:
        message = f"{source}: empty file, no header row"
        raise ImportFailed(message)
    missing = [column for column in REQUIRED_COLUMNS if column not in fieldnames]
    if missing:
        message = (f"{source} line 1: the header lacks the column(s) {', '.join(missing)}; "
                   f"it has {', '.join(fieldnames)}")
        raise ImportFailed(message)


# -- command line ---------------------------------------------------------------------------


def run_import_csv(settings: Settings, args: argparse.Namespace) -> int:
    """``txwatch import-csv CSV --out EVENTS.jsonl [--labels-out LABELS.csv] ...``."""
    from streams.evaluation import progress_to_stderr

    if not args.csv.exists():
        print(f"txwatch import-csv: no such file: {args.csv}", file=sys.stderr)
        return 2
    try:
        converter = RowConverter(
            currency=args.currency,
            start=parse_start(args.start) if args.start else DEFAULT_START,
            type_map=parse_type_map(args.type_map or []), id_prefix=args.id_prefix)
        summary = import_csv(args.csv, args.out, labels_out=args.labels_out,
                             converter=converter, allow_bad=args.allow_bad,
                             progress=progress_to_stderr)
    except (ImportFailed, OSError) as exc:
        print(f"txwatch import-csv: {exc}", file=sys.stderr)
        return 2
    print(summary.render())
    return 0


def register_cli(subparsers: Any) -> None:
    """Add ``txwatch import-csv``."""
    parser = subparsers.add_parser(
        "import-csv", help="convert a labelled transaction CSV to events and a labels file",
        description="Convert a CSV with the columns ts,src,dst,amount,type[,label,pattern,"
                    "group] (gzip or plain) to txwatch events (JSON Lines, for txwatch "
                    "backtest and replay) and, with --labels-out, a labels CSV "
                    "(event_id,label,pattern,group) for txwatch backtest --labels. Labels "
                    "never go into the events.")
    parser.add_argument("csv", type=Path, help="the CSV file (.csv or .csv.gz)")
    parser.add_argument("--out", type=Path, required=True, help="events file to write")
    parser.add_argument("--labels-out", type=Path, default=None,
                        help="labels CSV to write (rows with label 1; an empty group becomes "
                             "<pattern>:<src>)")
    parser.add_argument("--currency", default=DEFAULT_CURRENCY,
                        help=f"ISO 4217 code of every amount (default {DEFAULT_CURRENCY})")
    parser.add_argument("--start", default=None,
                        help="the time ts 0 stands for, ISO 8601 with Z or an offset "
                             "(default 2024-01-01T00:00:00Z)")
    parser.add_argument("--type-map", action="append", default=None, metavar="NAME=TYPE,...",
                        help="source type -> event type (payment, transfer, top_up, "
                             "withdrawal, refund), over the defaults TRANSFER=transfer, "
                             "CASH_OUT=withdrawal, DEBIT=withdrawal, CASH_IN=top_up, "
                             "PAYMENT=payment; other types become payments to merchant dst")
    parser.add_argument("--id-prefix", default=DEFAULT_ID_PREFIX,
                        help=f"event_id = prefix + 0-based row index (default "
                             f"{DEFAULT_ID_PREFIX!r})")
    parser.add_argument("--allow-bad", action="store_true",
                        help="skip rows that cannot be converted (counted and listed) instead "
                             "of stopping with exit status 2")
    parser.set_defaults(func=run_import_csv)
