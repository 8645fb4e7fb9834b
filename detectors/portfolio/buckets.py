"""Loan state codes and the delinquency buckets they fall in (:class:`BucketScheme`).

A code ``>= 0`` is days past due; the negative codes are the states no
delinquency describes.

Examples
--------
>>> scheme = BucketScheme((30, 60, 90))
>>> scheme.open_buckets
('current', '1-30', '31-60', '61-90', '90+')
>>> [scheme.bucket(days) for days in (0, 30, 31, 91)]
['current', '1-30', '31-60', '90+']
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

#: Codes of the non-delinquency states; a code >= 0 is days past due.
NEW: Final = -1
REPAID: Final = -2
WRITTEN_OFF: Final = -3
TERMINAL: Final = frozenset({REPAID, WRITTEN_OFF})


@lru_cache(maxsize=16)
def _bucket_names(edges: tuple[int, ...]) -> tuple[str, ...]:
    names = ["current"]
    low = 1
    for edge in edges:
        names.append(f"{low}-{edge}")
        low = edge + 1
    names.append(f"{edges[-1]}+")
    return tuple(names)


@dataclass(frozen=True, slots=True)
class BucketScheme:
    """Delinquency buckets from days past due.

    Parameters
    ----------
    edges
        Increasing upper bounds (days, inclusive) of the delinquent buckets
        before the last; ``(30, 60, 90)`` gives ``current``, ``1-30``,
        ``31-60``, ``61-90`` and ``90+`` (91 days or more).
    """

    edges: tuple[int, ...] = (30, 60, 90)

    def __post_init__(self) -> None:
        edges = tuple(self.edges)
        if not edges or any(not isinstance(e, int) or e < 1 for e in edges) or list(
            edges
        ) != sorted(set(edges)):
            message = f"bucket edges must be increasing positive whole days, not {self.edges!r}"
            raise ValueError(message)
        object.__setattr__(self, "edges", edges)

    @property
    def open_buckets(self) -> tuple[str, ...]:
        """Buckets of loans still on the book, best first."""
        return _bucket_names(self.edges)

    @property
    def rows(self) -> tuple[str, ...]:
        """Rows of a migration matrix: where loans were at the start of a period."""
        return ("new", *self.open_buckets)

    @property
    def columns(self) -> tuple[str, ...]:
        """Columns of a migration matrix: where loans were at its end."""
        return (*self.open_buckets, "written_off", "repaid")

    def bucket(self, code: int) -> str:
        """The bucket of a state code (days past due, or one of the negative codes)."""
        if code >= 0:
            if code == 0:
                return "current"
            return self.open_buckets[1 + bisect.bisect_left(self.edges, code)]
        if code == REPAID:
            return "repaid"
        if code == WRITTEN_OFF:
            return "written_off"
        return "new"

    def floor(self, bucket: str) -> int:
        """Fewest days past due in an open bucket (``31`` for ``31-60``)."""
        index = self.open_buckets.index(bucket)
        return 0 if index == 0 else 1 if index == 1 else self.edges[index - 2] + 1
