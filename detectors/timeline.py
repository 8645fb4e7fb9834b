"""Event time as the keyed detectors use it: windows, durations and dates people read.

``x["ts"]`` is the event's time in whole epoch seconds (UTC), set by the worker
from ``occurred_at``. Events of one account can arrive out of order: the
payments and lending topics are consumed independently, and producers stamp
events late. A detector therefore places an event by its own ``ts``, never by
arrival order, and keeps what it remembers for two windows behind the newest
event time it has seen, so an event up to one window late is still compared
with everything around it.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Final

#: How many windows of history a windowed detector keeps behind the newest event
#: time: one for the window itself, one for events arriving up to a window late.
KEPT_WINDOWS: Final = 2

_UNITS: Final = (("d", 86_400), ("h", 3_600), ("min", 60), ("s", 1))


def format_duration(seconds: int) -> str:
    """A duration as people say it: the two largest units, rounded down.

    Examples
    --------
    >>> format_duration(42)
    '42 s'
    >>> format_duration(3_600)
    '1 h'
    >>> format_duration(18_725)
    '5 h 12 min'
    >>> format_duration(266_400)
    '3 d 2 h'
    >>> format_duration(0)
    '0 s'
    """
    seconds = max(0, int(seconds))
    parts: list[str] = []
    for unit, size in _UNITS:
        if seconds >= size or (unit == "s" and not parts):
            count, seconds = divmod(seconds, size)
            parts.append(f"{count} {unit}")
            if len(parts) == 2:
                break
        elif parts:
            # A zero in the middle ends the phrase: "1 h", not "1 h 0 min".
            break
    return " ".join(parts)


def format_time(ts: int) -> str:
    """An epoch second as a UTC time to the minute.

    Examples
    --------
    >>> format_time(1_709_510_400)
    '2024-03-04 00:00 UTC'
    """
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def densest_window(times: Sequence[int], anchor: int, width: int) -> tuple[int, int]:
    """The slice of ``times`` that fills a window of ``width`` seconds best around one of them.

    Among the windows ``[start, start + width]`` (both ends included, so two
    events exactly ``width`` apart are in one window) that contain
    ``times[anchor]``, the one holding the most times; returns its slice
    ``(lo, hi)`` of ``times``. With an out-of-order event as the anchor this
    looks at the events on both sides of it, which a window ending at the
    event would miss.

    Parameters
    ----------
    times
        Event times in epoch seconds, sorted ascending.
    anchor
        Index in ``times`` of the event the window must contain.
    width
        Window width in seconds.

    Examples
    --------
    >>> densest_window([0, 100, 200, 5_000], anchor=1, width=150)
    (0, 2)
    >>> densest_window([0, 100, 200, 5_000], anchor=3, width=150)
    (3, 4)
    >>> densest_window([0, 86_400, 86_401], anchor=0, width=86_400)
    (0, 2)
    """
    best = (anchor, anchor + 1)
    at = times[anchor]
    first = bisect_left(times, at - width, 0, anchor + 1)
    # A best window can always start at an event inside it: only those starts are tried.
    for start in range(first, anchor + 1):
        end = bisect_right(times, times[start] + width)
        if end - start > best[1] - best[0]:
            best = (start, end)
    return best
