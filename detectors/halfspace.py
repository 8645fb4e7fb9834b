"""Global anomalies: transactions unlike the whole stream's, by River's Half-Space Trees."""

from __future__ import annotations

import base64
import math
import zlib
from array import array
from bisect import bisect_right
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Final

from detectors.base import Detector, Features
from detectors.money import format_minor

#: Fixed bounds of the engineered features before scaling to [0, 1]; values
#: outside are clipped to the nearest bound. Fixed rather than learnt so that the
#: trees' split points keep their meaning for the life of the model.
#: ``amount``: ``log1p(amount_minor)``, up to 10,000,000.00 (10**9 minor units).
#: ``count_1h``: ``log1p(count_1h)``, up to 1,000 transactions in the hour.
#: ``distinct_cp_24h``: ``log1p(distinct_cp_24h)``, up to the worker's cap of 64.
#: ``hour_sin``, ``hour_cos``: the UTC hour on a circle, so 23h and 0h are neighbours.
FEATURE_BOUNDS: Final[Mapping[str, tuple[float, float]]] = {
    "amount": (0.0, math.log1p(10**9)),
    "count_1h": (0.0, math.log1p(1_000)),
    "distinct_cp_24h": (0.0, math.log1p(64)),
    "hour_sin": (-1.0, 1.0),
    "hour_cos": (-1.0, 1.0),
}

#: A feature is named in a reason when at most this share of learnt transactions
#: falls at or beyond its value.
RARE_SHARE: Final = 0.05

# Bin edges of the histograms behind the reasons: round numbers a person can read.
# Amounts in minor units on a 1-2-5 series from 1.00 to 10**15 (the wire's maximum).
_AMOUNT_EDGES: Final = tuple(m * 10**e for e in range(2, 18) for m in (1, 2, 5))
_COUNT_EDGES: Final = (2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 50, 100, 200, 500)
_DISTINCT_EDGES: Final = (2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 50, 64)
_SNAPSHOT_FORMAT: Final = 2


class GlobalAnomaly(Detector):
    """Transactions that look unlike the rest of the stream, whatever the account.

    River's :class:`~river.anomaly.HalfSpaceTrees` scores each transaction on a
    few engineered features, each scaled to [0, 1] with the fixed bounds in
    :data:`FEATURE_BOUNDS`: the amount, the account's transactions in the last
    hour and its distinct counterparties in the last 24 hours (all on a log
    scale) and the UTC hour of day as a point on a circle. Scores lie in [0, 1];
    higher is rarer. Their scale depends on the traffic, so the shipped
    configuration alerts on a budget, the top share of the model's own recent
    scores (:mod:`detectors.budget`), rather than on a fixed score; scores
    crowd just under 1.0, hence :attr:`max_score`.

    Only transactions (``amount_minor`` > 0) are scored and learnt. An event
    missing one of the features is scored with that feature treated as the
    trees usually see it, and not learnt. The score is 0.0 until ``warmup``
    transactions have been learnt (and Half-Space Trees itself scores 0.0 during
    its first ``window_size`` transactions).

    Reasons come from histograms of the learnt transactions kept beside the
    model: each feature whose value is shared by at most 5% of them, rarest
    first, for example "amount 48,000.00: only 0.2% of the 12,345 transactions
    learnt were 20,000.00 or more".

    Parameters
    ----------
    n_trees
        Number of trees.
    height
        Height of each tree.
    window_size
        Transactions per reference window of the trees' masses.
    seed
        Seed of the trees' random split points.
    warmup
        Transactions to learn before scoring.

    Examples
    --------
    >>> import random
    >>> rng = random.Random(7)
    >>> detector = GlobalAnomaly(n_trees=10, height=6, window_size=100, seed=42, warmup=200)
    >>> for _ in range(500):
    ...     count = rng.randint(1, 3)
    ...     detector.learn_one({
    ...         "amount_minor": round(rng.lognormvariate(8.5, 0.6)),
    ...         "count_1h": count,
    ...         "distinct_cp_24h": rng.randint(1, count),
    ...         "hour": rng.randint(9, 18),
    ...     })
    >>> usual = {"amount_minor": 5_000, "count_1h": 2, "distinct_cp_24h": 1, "hour": 14}
    >>> odd = {"amount_minor": 4_800_000, "count_1h": 40, "distinct_cp_24h": 30, "hour": 3}
    >>> round(detector.score_one(usual), 2), round(detector.score_one(odd), 2)
    (0.49, 0.98)
    >>> for reason in detector.explain_one(odd, detector.score_one(odd)):
    ...     print(reason)
    amount 48,000.00: none of the 500 transactions learnt were 20,000.00 or more
    40 transactions in the hour: none of the 500 transactions learnt had 30 or more
    30 counterparties in 24 hours: none of the 500 transactions learnt had 30 or more
    at 03h UTC: none of the 500 transactions learnt happened in that hour
    """

    name: ClassVar[str] = "global_anomaly"
    max_score: ClassVar[float | None] = 1.0

    def __init__(
        self,
        n_trees: int = 10,
        height: int = 8,
        window_size: int = 250,
        seed: int = 42,
        warmup: int = 1_000,
    ) -> None:
        for key, value, least in (
            ("n_trees", n_trees, 1),
            ("height", height, 1),
            ("window_size", window_size, 1),
            ("seed", seed, 0),
            ("warmup", warmup, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                message = f"{key} must be an int >= {least}, not {value!r}"
                raise ValueError(message)
        self.n_trees = n_trees
        self.height = height
        self.window_size = window_size
        self.seed = seed
        self.warmup = warmup
        self._model = self._new_model()
        self._learned = 0
        self._amounts = [0] * (len(_AMOUNT_EDGES) + 1)
        self._counts = [0] * (len(_COUNT_EDGES) + 1)
        self._distinct = [0] * (len(_DISTINCT_EDGES) + 1)
        self._hours = [0] * 24
        # score_one and learn_one see the same event in turn: scale its features once
        self._scaled_key: tuple[Any, ...] | None = None
        self._scaled: dict[str, float] | None = None
        self._shape_of: tuple[Any, int] | None = None

    def _features(self, x: Features) -> dict[str, float] | None:
        key = (x.get("amount_minor"), x.get("count_1h"), x.get("distinct_cp_24h"), x.get("hour"))
        if key != self._scaled_key:
            self._scaled_key = key
            self._scaled = _scaled_features(x)
        return self._scaled

    def _new_model(self) -> Any:
        # Imported here: river pulls in scipy (about a second), which the CLI and
        # the codec, importing this package for its names, should not pay.
        from river.anomaly import HalfSpaceTrees

        return HalfSpaceTrees(
            n_trees=self.n_trees, height=self.height, window_size=self.window_size, seed=self.seed
        )

    def learn_one(self, x: Features) -> None:
        features = self._features(x)
        if features is None or len(features) < len(FEATURE_BOUNDS):
            return
        self._model.learn_one(features)
        self._learned += 1
        self._amounts[bisect_right(_AMOUNT_EDGES, x["amount_minor"])] += 1
        self._counts[bisect_right(_COUNT_EDGES, x["count_1h"])] += 1
        self._distinct[bisect_right(_DISTINCT_EDGES, x["distinct_cp_24h"])] += 1
        self._hours[int(x["hour"]) % 24] += 1

    def score_one(self, x: Features) -> float:
        if self._learned < self.warmup:
            return 0.0
        features = self._features(x)
        if features is None:
            return 0.0
        return float(self._model.score_one(features))

    def explain_one(self, x: Features, score: float) -> list[str]:
        if not (x.get("amount_minor") or 0) > 0:
            return ["no amount: the global model scores transactions only"]
        learned = self._learned
        if learned == 0:
            return ["no transactions learnt yet"]
        of = f"{learned:,} transactions learnt"
        found: list[tuple[float, str]] = []
        amount = x["amount_minor"]
        share, edge, high = _tail(self._amounts, _AMOUNT_EDGES, amount)
        found.append(
            (
                share,
                f"amount {format_minor(amount)}: {_share(share)} of the {of}"
                f" were {format_minor(edge)} {'or more' if high else 'or less'}",
            )
        )
        for key, histogram, edges, noun, span in (
            ("count_1h", self._counts, _COUNT_EDGES, "transaction", "in the hour"),
            ("distinct_cp_24h", self._distinct, _DISTINCT_EDGES, "counterparty", "in 24 hours"),
        ):
            value = x.get(key)
            if value is None:
                continue
            share, edge, high = _tail(histogram, edges, value)
            found.append(
                (
                    share,
                    f"{value} {_plural(noun, value)} {span}: {_share(share)} of the {of}"
                    f" had {edge} {'or more' if high else 'or fewer'}",
                )
            )
        hour = x.get("hour")
        if hour is not None:
            share = self._hours[int(hour) % 24] / learned
            found.append(
                (
                    share,
                    f"at {int(hour) % 24:02d}h UTC: {_share(share)} of the {of}"
                    " happened in that hour",
                )
            )
        rare = [item for item in found if item[0] <= RARE_SHARE]
        if rare:
            return [reason for _, reason in sorted(rare, key=lambda item: item[0])]
        usual = "; ".join(reason for _, reason in found)
        return [f"an unusual combination, though each feature alone is common: {usual}"]

    def snapshot(self) -> dict[str, Any]:
        """The learnt state as plain data (JSON-able), a few kilobytes.

        The trees' shape (features and split points) follows from ``seed``, so
        only their masses are written, with the counters; :meth:`restore`
        rebuilds the shape and checks it against a fingerprint.
        """
        model = self._model
        masses = None
        if model.trees:
            values = array("H" if self.window_size < 2**16 else "L")
            for nodes in model._tree_nodes:
                for node in nodes:
                    values.append(node.l_mass)
                    values.append(node.r_mass)
            masses = {
                "typecode": values.typecode,
                "data": base64.b64encode(zlib.compress(values.tobytes(), 1)).decode(),
                "counter": model.counter,
                "first_window": model._first_window,
                "shape": self._shape(),
            }
        return {
            "format": _SNAPSHOT_FORMAT,
            "params": self._get_params(),
            "learned": self._learned,
            "histograms": [self._amounts, self._counts, self._distinct, self._hours],
            "masses": masses,
        }

    def restore(self, snapshot: Any) -> None:
        if not isinstance(snapshot, Mapping):
            message = f"not a GlobalAnomaly snapshot: {type(snapshot).__name__}"
            raise ValueError(message)
        if snapshot.get("format") != _SNAPSHOT_FORMAT:
            message = "not a GlobalAnomaly snapshot of a format this version reads"
            raise ValueError(message)
        if snapshot["params"] != self._get_params():
            message = (
                f"snapshot was taken with parameters {snapshot['params']!r},"
                f" not {self._get_params()!r}"
            )
            raise ValueError(message)
        model = self._new_model()
        masses = snapshot["masses"]
        if masses is not None:
            try:
                values = array(masses["typecode"])
                values.frombytes(zlib.decompress(base64.b64decode(masses["data"])))
            except (ValueError, TypeError, zlib.error) as error:
                message = f"not a GlobalAnomaly snapshot: its masses do not decode ({error})"
                raise ValueError(message) from error
            # Builds the trees from the seed, as the first learnt transaction did.
            model.learn_one({name: 0.5 for name in FEATURE_BOUNDS})
            if _shape_fingerprint(model) != masses["shape"]:
                message = "snapshot's trees differ from the ones this version builds from the seed"
                raise ValueError(message)
            nodes = [node for tree_nodes in model._tree_nodes for node in tree_nodes]
            if len(values) != 2 * len(nodes):
                message = f"snapshot holds {len(values)} masses, not {2 * len(nodes)}"
                raise ValueError(message)
            for index, node in enumerate(nodes):
                node.l_mass = values[2 * index]
                node.r_mass = values[2 * index + 1]
            model.counter = masses["counter"]
            model._first_window = masses["first_window"]
        self._model = model
        self._learned = snapshot["learned"]
        self._amounts, self._counts, self._distinct, self._hours = (
            list(histogram) for histogram in snapshot["histograms"]
        )
        self._scaled_key = self._scaled = None
        self._shape_of = None

    def _shape(self) -> int:
        """The trees' fingerprint, computed once per model."""
        if self._shape_of is None or self._shape_of[0] is not self._model:
            self._shape_of = (self._model, _shape_fingerprint(self._model))
        return self._shape_of[1]


def _shape_fingerprint(model: Any) -> int:
    """CRC-32 of every node's feature and split point: equal trees, equal fingerprints."""
    shape = repr([(node.feature, node.threshold) for nodes in model._tree_nodes for node in nodes
                  if hasattr(node, "feature")])
    return zlib.crc32(shape.encode())


def _scaled_features(x: Features) -> dict[str, float] | None:
    """The model's features in [0, 1]; ``None`` for an event without an amount."""
    amount = x.get("amount_minor") or 0
    if amount <= 0:
        return None
    features = {"amount": _scale("amount", math.log1p(amount))}
    count = x.get("count_1h")
    if count is not None:
        features["count_1h"] = _scale("count_1h", math.log1p(count))
    distinct = x.get("distinct_cp_24h")
    if distinct is not None:
        features["distinct_cp_24h"] = _scale("distinct_cp_24h", math.log1p(distinct))
    hour = x.get("hour")
    if hour is not None:
        scaled = _HOUR_SCALED.get(hour)
        if scaled is None:
            angle = 2.0 * math.pi * hour / 24.0
            scaled = (_scale("hour_sin", math.sin(angle)), _scale("hour_cos", math.cos(angle)))
            if len(_HOUR_SCALED) < _MAX_HOURS_CACHED:
                _HOUR_SCALED[hour] = scaled
        features["hour_sin"], features["hour_cos"] = scaled
    return features


#: ``(low, high - low)`` of each feature, computed once.
_SPANS: Final = {name: (low, high - low) for name, (low, high) in FEATURE_BOUNDS.items()}
#: Scaled ``(hour_sin, hour_cos)`` by hour: 24 values in practice, bounded for odd input.
_HOUR_SCALED: dict[Any, tuple[float, float]] = {}
_MAX_HOURS_CACHED: Final = 256


def _scale(feature: str, value: float) -> float:
    low, span = _SPANS[feature]
    scaled = (value - low) / span
    return 0.0 if scaled < 0.0 else 1.0 if scaled > 1.0 else scaled


def _tail(histogram: Sequence[int], edges: Sequence[int], value: int) -> tuple[float, int, bool]:
    """The rarer tail at ``value``: its share, the bin edge bounding it, and whether it is high.

    The bin holding ``value`` is counted in both tails, so a share is never
    smaller than the truth: "0.2% were 20,000.00 or more" holds exactly.
    """
    total = sum(histogram)
    index = bisect_right(edges, value)
    if index == 0:
        # Below the first edge: only the low tail is informative.
        return sum(histogram[: index + 1]) / total, edges[0] - 1, False
    high_share = sum(histogram[index:]) / total
    if index == len(edges):
        return high_share, edges[-1], True
    low_share = sum(histogram[: index + 1]) / total
    if high_share <= low_share:
        return high_share, edges[index - 1], True
    return low_share, edges[index] - 1, False


def _share(share: float) -> str:
    if share == 0.0:
        return "none"
    if share >= 0.01:
        return f"only {share:.0%}" if share <= RARE_SHARE else f"{share:.0%}"
    return f"only {share:.1%}"


def _plural(noun: str, count: int) -> str:
    if count == 1:
        return noun
    return noun[:-1] + "ies" if noun.endswith("y") else noun + "s"
