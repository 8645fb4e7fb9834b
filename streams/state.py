"""Per-account durable state: velocity windows, detector states, replay guard.

One :class:`AccountState` per account, kept in the worker's Faust table
(``streams/agents.py``) and written to its changelog once per batch, not once
per event.

Velocity windows are bucketed sliding windows over *event time*: the 1-minute
window has 6 buckets of 10 s, the 1-hour window 12 of 5 min, the 24-hour
window 24 of 1 h. A window "ending at" an event covers the bucket of the
account's latest event time and the buckets before it, so its span is between
``width - bucket`` and ``width``. An event later than the account's latest
event by less than a window's width still counts in that window; an older one
does not. Distinct counterparties are exact up to :data:`MAX_DISTINCT` per
window, then saturate (the feature reads 64, the state stays bounded).

Bound on memory: at most 6 + 12 + 24 buckets, 3 x 64 counterparty entries and
8 recent event ids per account, whatever its traffic. An account with a
handful of events a day holds a few dozen bytes.

Replay guard: the state remembers the last applied offset of each input topic
(an account lives on one partition of each) and the ids of its last 8 events,
so an event replayed after a crash, or re-sent by a producer, changes nothing
and raises nothing a second time.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

STATE_FORMAT: Final = 1
MAX_DISTINCT: Final = 64
RECENT_IDS: Final = 8


@dataclass(frozen=True, slots=True)
class WindowSpec:
    name: str
    bucket_seconds: int
    buckets: int

    @property
    def width(self) -> int:
        return self.bucket_seconds * self.buckets


WINDOWS: Final = (
    WindowSpec("1m", 10, 6),
    WindowSpec("1h", 300, 12),
    WindowSpec("24h", 3600, 24),
)


def short_hash(value: str) -> int:
    """A stable 63-bit hash (Python's ``hash`` is salted per process)."""
    digest = hashlib.blake2b(value.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


@dataclass(slots=True)
class Window:
    """Buckets ``[index, count, sum_minor]`` and counterparties ``{hash: index}``."""

    buckets: list[list[int]] = field(default_factory=list)
    counterparties: dict[int, int] = field(default_factory=dict)
    # oldest bucket index pruned to; not persisted (a restored window prunes once)
    pruned_to: int = field(default=-(2**62), compare=False)

    def add(self, spec: WindowSpec, index: int, now_index: int, amount_minor: int,
            counterparty: int | None) -> None:
        oldest = now_index - spec.buckets + 1
        if oldest > self.pruned_to:
            self._prune(oldest)
        if index >= oldest:
            for bucket in self.buckets:
                if bucket[0] == index:
                    bucket[1] += 1
                    bucket[2] += amount_minor
                    break
            else:
                self.buckets.append([index, 1, amount_minor])
                self.buckets.sort()
            if counterparty is not None:
                seen = self.counterparties.get(counterparty)
                if seen is None or seen < index:
                    self.counterparties[counterparty] = index
                if len(self.counterparties) > MAX_DISTINCT:
                    # keep the most recently seen; the feature saturates at MAX_DISTINCT
                    keep = sorted(self.counterparties.items(), key=lambda kv: kv[1])
                    self.counterparties = dict(keep[-MAX_DISTINCT:])

    def _prune(self, oldest: int) -> None:
        self.pruned_to = oldest
        if self.buckets and self.buckets[0][0] < oldest:
            self.buckets = [b for b in self.buckets if b[0] >= oldest]
        stale = [cp for cp, seen in self.counterparties.items() if seen < oldest]
        for cp in stale:
            del self.counterparties[cp]

    def totals(self) -> tuple[int, int, int]:
        count = sum(b[1] for b in self.buckets)
        total = sum(b[2] for b in self.buckets)
        return count, total, len(self.counterparties)


@dataclass(slots=True)
class AccountState:
    """Everything the worker remembers about one account."""

    offsets: dict[str, int] = field(default_factory=dict)
    recent_ids: list[int] = field(default_factory=list)
    latest_ts: int = 0
    monetary_events: int = 0
    windows: list[Window] = field(default_factory=lambda: [Window() for _ in WINDOWS])
    detectors: dict[str, Any] = field(default_factory=dict)
    quiet_until: dict[str, int] = field(default_factory=dict)

    # -- replay guard -------------------------------------------------------------
    def seen(self, event_id: str, topic: str | None, offset: int | None) -> bool:
        """Whether this event was applied already (same offset or same event id)."""
        if topic is not None and offset is not None and offset <= self.offsets.get(topic, -1):
            return True
        return short_hash(event_id) in self.recent_ids

    def mark(self, event_id: str, topic: str | None, offset: int | None) -> None:
        if topic is not None and offset is not None:
            self.offsets[topic] = offset
        self.recent_ids.append(short_hash(event_id))
        if len(self.recent_ids) > RECENT_IDS:
            del self.recent_ids[0]

    # -- velocity -----------------------------------------------------------------
    def observe_amount(self, ts: int, amount_minor: int, counterparty_id: str | None) -> None:
        """Count one monetary event at event time ``ts`` (epoch seconds)."""
        self.latest_ts = max(self.latest_ts, ts)
        cp = short_hash(counterparty_id) if counterparty_id else None
        for spec, window in zip(WINDOWS, self.windows, strict=True):
            window.add(spec, ts // spec.bucket_seconds, self.latest_ts // spec.bucket_seconds,
                       amount_minor, cp)
        self.monetary_events += 1

    def velocity(self) -> dict[str, int]:
        """``count_*``, ``sum_*`` and ``distinct_cp_*`` for every window."""
        out: dict[str, int] = {}
        for spec, window in zip(WINDOWS, self.windows, strict=True):
            count, total, distinct = window.totals()
            out["count_" + spec.name] = count
            out["sum_" + spec.name] = total
            out["distinct_cp_" + spec.name] = distinct
        return out

    # -- serialisation ------------------------------------------------------------
    def dumps(self) -> bytes:
        return orjson.dumps([
            STATE_FORMAT,
            self.offsets,
            self.recent_ids,
            self.latest_ts,
            self.monetary_events,
            [[w.buckets, [[cp, i] for cp, i in w.counterparties.items()]] for w in self.windows],
            self.detectors,
            self.quiet_until,
        ])

    @classmethod
    def loads(cls, data: bytes) -> AccountState:
        raw = orjson.loads(data)
        if not isinstance(raw, list) or not raw or raw[0] != STATE_FORMAT:
            message = f"unknown account state format: {raw[:1] if isinstance(raw, list) else raw!r}"
            raise ValueError(message)
        _, offsets, recent, latest, monetary, windows, detectors, quiet = raw
        return cls(
            offsets=offsets,
            recent_ids=recent,
            latest_ts=latest,
            monetary_events=monetary,
            windows=[Window(b, {cp: i for cp, i in cps}) for b, cps in windows],
            detectors=detectors,
            quiet_until=quiet,
        )
