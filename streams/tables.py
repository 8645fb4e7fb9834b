"""Plain-text tables: the one renderer behind every report the command line prints.

``txwatch backtest`` and ``evaluate`` (:mod:`streams.evaluation.scoring`),
``calibrate`` (:mod:`streams.calibrate`) and ``portfolio``
(:mod:`streams.portfolio.report`) lay their rows out here, so columns line up
the same way everywhere: as wide as their widest cell, two spaces apart, text
to the left and the columns named in ``right`` (numbers) to the right.

Examples
--------
>>> for line in render(["detector", "alerts", "precision"],
...                    [["velocity", "1,713", "0.0%"], ["cycle", "12", share(0.5)]],
...                    right={1, 2}):
...     print(line)
detector  alerts  precision
velocity   1,713       0.0%
cycle         12      50.0%
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence


def render(header: Sequence[str], rows: Iterable[Sequence[str]],
           right: Collection[int] = ()) -> list[str]:
    """The table's lines, header first; trailing blanks stripped."""
    body = [list(header), *[list(row) for row in rows]]
    widths = [max(len(row[i]) for row in body) for i in range(len(header))]
    lines = []
    for row in body:
        cells = [cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
                 for i, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    return lines


def share(value: float | None) -> str:
    """A fraction as a percentage with one decimal, ``-`` when unknown.

    >>> share(0.6667), share(None)
    ('66.7%', '-')
    """
    return "-" if value is None else f"{value:.1%}"
