"""Input lines the worker would reject: which line, why, and how a command reports them."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from streams.codec import Decoder
from streams.events import DeadLetter

#: Rejected lines a command lists without ``--verbose``.
SHOWN_BY_DEFAULT = 5


@dataclass(frozen=True, slots=True)
class RejectedLine:
    """One line of a JSON Lines file that decodes to a dead letter.

    Parameters
    ----------
    line
        Its 1-based line number in the file (blank lines counted).
    reason
        The dead letter's machine reason (``dead_letter.schema.json``).
    detail
        The dead letter's human detail, naming the field and the problem.
    """

    line: int
    reason: str
    detail: str


def numbered_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """``(line number, bytes)`` of each non-blank line, without its terminator."""
    with path.open("rb") as source:
        for number, line in enumerate(source, start=1):
            raw = line.rstrip(b"\r\n")
            if raw.strip():
                yield number, raw


def check_lines(path: Path, decoder: Decoder) -> tuple[int, list[RejectedLine]]:
    """Decode every non-blank line as the worker would.

    Returns
    -------
    tuple
        The number of non-blank lines, and the rejected ones in file order.
    """
    checked = 0
    rejected = []
    for number, raw in numbered_lines(path):
        checked += 1
        outcome = decoder.decode(raw)
        if isinstance(outcome, DeadLetter):
            rejected.append(RejectedLine(number, outcome.reason, outcome.detail))
    return checked, rejected


def describe_rejected(rejected: Sequence[RejectedLine], checked: int, path: Path, *,
                      verbose: bool) -> list[str]:
    """Lines of text: the count per reason, then the first few rejected lines (all if verbose).

    Examples
    --------
    >>> for text in describe_rejected([RejectedLine(3, "amount", "amount: '1.234' has more "
    ...                                "than 2 decimal places")], 10, Path("h.jsonl"),
    ...                               verbose=False):
    ...     print(text)
    h.jsonl: 1 of 10 lines rejected (amount 1)
      line 3: amount: amount: '1.234' has more than 2 decimal places
    """
    if not rejected:
        return []
    reasons = Counter(r.reason for r in rejected)
    counts = ", ".join(f"{reason} {count:,}" for reason, count in reasons.most_common())
    text = [f"{path}: {len(rejected):,} of {checked:,} lines rejected ({counts})"]
    shown = rejected if verbose else rejected[:SHOWN_BY_DEFAULT]
    text += [f"  line {r.line}: {r.reason}: {r.detail}" for r in shown]
    if len(shown) < len(rejected):
        text.append(f"  ... {len(rejected) - len(shown):,} more (--verbose lists them all)")
    return text
