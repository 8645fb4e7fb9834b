"""Alert budgets: alert on the top fraction of a detector's own recent scores.

A :class:`ScoreBudget` keeps, per segment of the stream (by default event type
and currency, whose amounts differ in scale), the recent distribution of a
detector's scores, and admits an alert only for a score in the top ``budget``
of it, and only while the segment's alerts stay within ``budget`` of its
scored events. It is what :class:`detectors.base.ThresholdAlerter` uses when
configured with a ``budget``.

Why not River's ``stats.Quantile``, ``stats.RollingQuantile`` or
``anomaly.QuantileFilter``: the P² estimator behind the first and the last is
unreliable at the extreme quantiles a budget needs (0.998) and depends on the
order of its first values; the rolling one keeps every score of its window
(too large to write to a changelog per batch); and neither can be snapshot as
plain data and restored to take bit-identical decisions. Here the state is a
histogram of integer weights on log-spaced bins (1% wide), halved every
``half_life`` scored events: bounded, exact, JSON-able.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Final

Features = Mapping[str, Any]

#: Smallest and largest score told apart; scores outside fall in the end bins.
LOW_SCORE: Final = 1e-3
HIGH_SCORE: Final = 1e4
#: Ratio between the edges of neighbouring bins.
BIN_RATIO: Final = 1.01
#: Number of bins.
N_BINS: Final = math.ceil(math.log(HIGH_SCORE / LOW_SCORE) / math.log(BIN_RATIO)) + 1
#: Weight one scored event adds to its bin: integers, so sums are exact and a
#: restored histogram takes the same decisions as the one it was taken from.
UNIT: Final = 1 << 20
#: Segment of the events once ``max_segments`` segments exist.
OTHER: Final = ("other",)
DEFAULT_SEGMENT_BY: Final = ("event_type", "currency")
DEFAULT_MIN_SCORED: Final = 500
_SNAPSHOT_FORMAT: Final = 1
_LOG_LOW: Final = math.log(LOW_SCORE)
_LOG_RATIO: Final = math.log(BIN_RATIO)


def score_bin(score: float, max_score: float | None = None) -> int:
    """The histogram bin (1 to ``N_BINS``) of a positive score.

    With ``max_score`` (a bounded score), the bin is that of the odds
    ``score / (max_score - score)``: scores crowded just under the bound are
    told apart by their distance from it.
    """
    if max_score is not None:
        gap = max_score - score
        score = score / gap if gap > 0.0 else HIGH_SCORE
    if score <= LOW_SCORE:
        return 1
    index = int((math.log(score) - _LOG_LOW) / _LOG_RATIO) + 1
    return index if index < N_BINS else N_BINS


class _Segment:
    """Decayed score histogram (a Fenwick tree over the bins) and the counts of one segment."""

    __slots__ = ("alerts", "scored", "since_halving", "total", "tree", "weights")

    def __init__(self) -> None:
        self.tree = [0] * (N_BINS + 1)
        self.weights = [0] * (N_BINS + 1)
        self.total = 0
        #: scored events and alerts admitted since the segment began (not decayed)
        self.scored = 0
        self.alerts = 0
        self.since_halving = 0

    def add(self, index: int, weight: int) -> None:
        self.weights[index] += weight
        tree = self.tree
        while index <= N_BINS:
            tree[index] += weight
            index += index & -index
        self.total += weight

    def below(self, index: int) -> int:
        """Weight of the bins before ``index``."""
        tree = self.tree
        weight = 0
        index -= 1
        while index > 0:
            weight += tree[index]
            index -= index & -index
        return weight

    def bins(self) -> dict[int, int]:
        """The non-empty bins and their weights."""
        return {index: weight for index, weight in enumerate(self.weights) if weight}

    def load(self, bins: Mapping[int, int]) -> None:
        self.tree = [0] * (N_BINS + 1)
        self.weights = [0] * (N_BINS + 1)
        self.total = 0
        for index, weight in sorted(bins.items()):
            self.add(index, weight)

    def halve(self) -> None:
        self.load({index: weight >> 1 for index, weight in self.bins().items() if weight > 1})


class ScoreBudget:
    """Admits the scores in the top ``budget`` of their segment's recent scores.

    An event counts as scored when its score is positive (a detector scores
    0.0 what it does not judge: no amount, a history too short, below the
    usual). Each scored event is counted into its segment **before** the
    decision, and an alert is admitted when all of these hold:

    * the score is at least ``floor``;
    * the segment has counted at least ``min_scored`` events;
    * at most ``budget`` of the segment's recent weight lies in the score's
      bin or above (the bin is counted whole, so ties never exceed the budget);
    * the segment's alerts, this one included, are at most ``budget`` of the
      events it has scored, so the budget holds over any stream, drifting
      or not.

    Parameters
    ----------
    budget
        Largest fraction of scored events that may alert, in (0, 1).
    segment_by
        Features whose values split the events into segments, each with its
        own distribution; empty for one segment.
    min_scored
        Scored events a segment must count before it alerts.
    half_life
        Scored events of a segment after which a score's weight has halved.
    max_segments
        Segments kept; events of further ones share the segment ``other``.
    max_score
        The detector's largest score when its scores are bounded (see
        :func:`score_bin`); ``None`` for unbounded ones.

    Examples
    --------
    >>> import random
    >>> rng = random.Random(3)
    >>> budget = ScoreBudget(0.01, segment_by=["currency"], min_scored=100)
    >>> admitted = sum(
    ...     budget.admit({"currency": "USD"}, rng.expovariate(1.0), floor=0.0)
    ...     for _ in range(10_000)
    ... )
    >>> admitted <= 100, admitted > 50
    (True, True)
    >>> budget.admit({"currency": "EUR"}, 1e6, floor=0.0)  # a new segment: too few scores
    False
    """

    def __init__(
        self,
        budget: float,
        segment_by: Sequence[str] = DEFAULT_SEGMENT_BY,
        min_scored: int = DEFAULT_MIN_SCORED,
        half_life: int = 50_000,
        max_segments: int = 64,
        max_score: float | None = None,
    ) -> None:
        if isinstance(budget, bool) or not isinstance(budget, int | float) or not 0 < budget < 1:
            message = f"budget must be a fraction between 0 and 1 (exclusive), not {budget!r}"
            raise ValueError(message)
        if isinstance(segment_by, str) or not all(
            isinstance(name, str) and name for name in segment_by
        ):
            message = f"segment_by must be a list of feature names, not {segment_by!r}"
            raise ValueError(message)
        for key, value in (
            ("min_scored", min_scored),
            ("half_life", half_life),
            ("max_segments", max_segments),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                message = f"{key} must be an int >= 1, not {value!r}"
                raise ValueError(message)
        self.budget = float(budget)
        self.segment_by = tuple(segment_by)
        self.min_scored = min_scored
        self.half_life = half_life
        self.max_segments = max_segments
        self.max_score = max_score
        self._segments: dict[tuple[str, ...], _Segment] = {}
        #: segment, share of its recent weight at or above the score, and its scored
        #: events, of the last admitted score (for the alert's reasons)
        self._last: tuple[tuple[str, ...], float, int] = ((), 0.0, 0)

    def segment_of(self, x: Features) -> tuple[str, ...]:
        """The segment of an event: its values of ``segment_by``, or ``other`` past the cap."""
        key = tuple(str(x.get(name)) for name in self.segment_by)
        if key in self._segments or len(self._segments) < self.max_segments - 1:
            return key
        return OTHER

    def admit(self, x: Features, score: float, floor: float) -> bool:
        """Count ``score`` in its segment, then decide whether it may alert."""
        if not score > 0.0:
            return False
        key = self.segment_of(x)
        segment = self._segments.get(key)
        if segment is None:
            segment = self._segments[key] = _Segment()
        index = score_bin(score, self.max_score)
        segment.add(index, UNIT)
        segment.scored += 1
        segment.since_halving += 1
        if segment.since_halving >= self.half_life:
            segment.halve()
            segment.since_halving = 0
        if score < floor or segment.scored < self.min_scored:
            return False
        budget = self.budget
        if segment.alerts + 1 > budget * segment.scored:
            return False
        tail = segment.total - segment.below(index)
        if tail > budget * segment.total:
            return False
        segment.alerts += 1
        self._last = (key, tail / segment.total, segment.scored)
        return True

    def explain(self, score: float) -> str:
        """Where the last admitted score stands in its segment, for the alert's reasons."""
        key, share, scored = self._last
        if key == OTHER:
            where = " (segment other)"
        elif key:
            where = " with " + ", ".join(f"{n} {v}" for n, v in zip(self.segment_by, key,
                                                                      strict=False))
        else:
            where = ""
        return (
            f"score {score:.3g}: only {share:.3%} of the recent scores of the {scored:,}"
            f" events scored{where} were as high (alert budget {self.budget:.2%})"
        )

    def snapshot(self) -> dict[str, Any]:
        """The segments' histograms and counts as plain data (JSON-able)."""
        return {
            "format": _SNAPSHOT_FORMAT,
            "segments": [
                [list(key), segment.scored, segment.alerts, segment.since_halving,
                 sorted(segment.bins().items())]
                for key, segment in self._segments.items()
            ],
        }

    def restore(self, snapshot: Any) -> None:
        """Put back what :meth:`snapshot` returned."""
        if not isinstance(snapshot, Mapping) or snapshot.get("format") != _SNAPSHOT_FORMAT:
            message = "not a ScoreBudget snapshot of a format this version reads"
            raise ValueError(message)
        segments: dict[tuple[str, ...], _Segment] = {}
        for key, scored, alerts, since_halving, bins in snapshot["segments"]:
            segment = _Segment()
            segment.load({int(index): int(weight) for index, weight in bins})
            segment.scored, segment.alerts = int(scored), int(alerts)
            segment.since_halving = int(since_halving)
            segments[tuple(key)] = segment
        self._segments = segments
