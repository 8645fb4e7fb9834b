"""Event-time periods of the book: UTC days and months, their keys, bounds and neighbours.

Times are epoch milliseconds of event time, never the wall clock; a period's
key is ``2024-03-05`` (``daily``) or ``2024-03`` (``monthly``).
"""

from __future__ import annotations

import calendar
from datetime import UTC, date, datetime, timedelta
from typing import Final

GRANULARITIES: Final = ("daily", "monthly")


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def period_key(ms: int, granularity: str) -> str:
    """The period of an event time (epoch milliseconds), e.g. ``2024-03-05`` or ``2024-03``."""
    moment = _utc(ms)
    if granularity == "daily":
        return moment.strftime("%Y-%m-%d")
    return moment.strftime("%Y-%m")


def _month_index(key: str) -> int:
    return int(key[:4]) * 12 + int(key[5:7]) - 1


def _month_key(index: int) -> str:
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


def shift_period(key: str, granularity: str, periods: int) -> str:
    """The period ``periods`` after (negative: before) ``key``."""
    if granularity == "daily":
        return (date.fromisoformat(key) + timedelta(days=periods)).isoformat()
    return _month_key(_month_index(key) + periods)


def period_bounds(key: str, granularity: str) -> tuple[int, int]:
    """``[start, end)`` of a period in epoch milliseconds."""
    return _period_start(key, granularity), _period_start(
        shift_period(key, granularity, 1), granularity)


def _period_start(key: str, granularity: str) -> int:
    if granularity == "daily":
        start = datetime.fromisoformat(key).replace(tzinfo=UTC)
    else:
        start = datetime(int(key[:4]), int(key[5:7]), 1, tzinfo=UTC)
    return int(start.timestamp() * 1000)


def add_months(ms: int, months: int) -> int:
    """Event time ``months`` calendar months after ``ms`` (day clamped to the month's end)."""
    moment = _utc(ms)
    index = moment.year * 12 + moment.month - 1 + months
    year, month = divmod(index, 12)
    day = min(moment.day, calendar.monthrange(year, month + 1)[1])
    return int(moment.replace(year=year, month=month + 1, day=day).timestamp() * 1000)


def _oldest_kept(latest: str, granularity: str, periods: int) -> str:
    return shift_period(latest, granularity, -(periods - 1))


def iso_time(ms: int) -> str:
    """RFC 3339 UTC with ``Z``, millisecond precision."""
    return _utc(ms).isoformat(timespec="milliseconds").replace("+00:00", "Z")
