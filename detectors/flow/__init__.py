"""Money flowing across accounts: rings, scatter-gather, gather-scatter and fan-in.

One account's payments say little about laundering; the shape of the flows
between accounts says a lot. Accounts live on different partitions, so the
flow stage is message passing in which every step reads and writes the state
of one account only: a :class:`FlowSketch` per account, kept by the worker in
a durable table like stage 1 keeps velocity windows, and stateless detectors
(:class:`Cycle`, :class:`ScatterGather`, :class:`GatherScatter`,
:class:`FanIn`) over the features the sketch computes.

Records, relays, the ring check, novelty and amounts, the bounds of the
sketch and what it may miss: `docs/design.md`, "Flow stage internals".

The package, lowest layer first: ``params`` (:class:`FlowParams`, the
bounds), ``records`` (what records carry, read and checked; a ring's name),
``tables`` (what a sketch remembers, its changelog form and upkeep),
``sketch`` (:class:`FlowSketch`: records applied, the feature table) and
``typologies`` (the four detectors). Callers import from the package.
"""

from __future__ import annotations

from detectors.flow.params import (
    CONFIGURED_BOUNDS,
    DEFAULT_FLOW_PARAMS,
    DERIVED_BOUNDS,
    FlowParams,
    configured_bounds,
)
from detectors.flow.records import RECORD_KINDS, gathered_origins, ring_key
from detectors.flow.sketch import BackOutcome, FlowSketch, edge_origins
from detectors.flow.tables import STATE_FORMAT
from detectors.flow.typologies import (
    MAX_HORIZON_SECONDS,
    Cycle,
    FanIn,
    GatherScatter,
    ScatterGather,
)
from detectors.hashing import hash_hex, stable_hash

__all__ = [
    "CONFIGURED_BOUNDS",
    "DEFAULT_FLOW_PARAMS",
    "DERIVED_BOUNDS",
    "MAX_HORIZON_SECONDS",
    "RECORD_KINDS",
    "STATE_FORMAT",
    "BackOutcome",
    "Cycle",
    "FanIn",
    "FlowParams",
    "FlowSketch",
    "GatherScatter",
    "ScatterGather",
    "configured_bounds",
    "edge_origins",
    "gathered_origins",
    "hash_hex",
    "ring_key",
    "stable_hash",
]
