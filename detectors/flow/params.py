"""The bounds every flow sketch of a stage shares: :class:`FlowParams`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from detectors.params import non_negative_int, positive_int


@dataclass(frozen=True, slots=True)
class FlowParams:
    """The bounds of every :class:`FlowSketch` of one stage.

    Parameters
    ----------
    max_entries
        Most origins, destinations and senders kept per account, each.
    window_seconds
        Longest event time from a ring's first transfer to its last; entries
        older than it (behind the newest record seen) are pruned.
    max_ring
        Most accounts (transfers) in a ring; paths are kept up to
        ``max_ring - 1`` hops.
    fan_in_seconds
        Width of the window in which distinct senders are counted.
    hub_seconds
        Half-width of the window around a transfer in which a hub's senders and
        receivers, and scatter-gather intermediaries, are counted.
    hub_degree
        An account with this many senders, or receivers, within the window is a
        hub: it keeps its own sketch but passes no origins or destinations on.
    max_vias
        Intermediaries kept per two-hop origin.
    max_gather_origins
        Two-hop origins whose intermediaries are kept.
    relay_hops
        Longest path, in transfers, whose changes are relayed; ``None`` for every
        kept path (``max_ring - 1``), which the any-order guarantee needs. Fewer
        relays mean less traffic and rings found only in favourable orders: 0
        turns relays off.
    amount_ratio
        How many times larger than the smallest transfer of a path or ring its
        largest may be; ``None`` keeps paths whatever their amounts. Mules take
        cuts, split and merge, so hop amounts vary; a path that joins a 30.00
        transfer to a 9,000.00 one is still not money moving on.
    novel_transfers
        Transfers between two accounts, counted by the receiver's memory of its
        senders, that extend paths: 1 keeps only the first transfer of a
        relationship, ``None`` every transfer. Repeat payments between the same
        accounts are ordinary life; laundering routes run over new relationships.
    memory_seconds
        How long a sender is remembered after its last transfer, for novelty
        and the fan-in count (at least ``window_seconds``). A year: ordinary
        relationships repeat quarterly, half-yearly or yearly, and one
        forgotten sooner comes back as new, extending paths by chance (on an
        AML simulator's history 90 days took about half of its "new"
        relationships for new; ``docs/detection.md``).
    """

    max_entries: int = 64
    window_seconds: int = 28 * 86_400
    max_ring: int = 10
    fan_in_seconds: int = 86_400
    hub_seconds: int = 3 * 86_400
    hub_degree: int = 32
    max_vias: int = 8
    max_gather_origins: int = 8
    relay_hops: int | None = None
    amount_ratio: int | None = 10
    novel_transfers: int | None = 1
    memory_seconds: int = 365 * 86_400

    def __post_init__(self) -> None:
        for name in (
            "max_entries", "window_seconds", "fan_in_seconds", "hub_seconds", "hub_degree",
            "max_vias", "max_gather_origins", "memory_seconds",
        ):  # fmt: skip
            positive_int(name, getattr(self, name))
        if self.relay_hops is not None:
            non_negative_int("relay_hops", self.relay_hops)
        if self.amount_ratio is not None:
            positive_int("amount_ratio", self.amount_ratio)
        if self.novel_transfers is not None:
            positive_int("novel_transfers", self.novel_transfers)
        positive_int("max_ring", self.max_ring)
        if not 2 <= self.max_ring <= 64:
            message = f"max_ring must be between 2 and 64 accounts, not {self.max_ring!r}"
            raise ValueError(message)

    @property
    def path_hops(self) -> int:
        """Most hops of a kept path: a ring of ``max_ring`` is such a path plus one transfer."""
        return self.max_ring - 1

    @property
    def relayed_hops(self) -> int:
        """Longest path whose changes are relayed."""
        if self.relay_hops is None:
            return self.path_hops
        return min(self.relay_hops, self.path_hops)

    @property
    def amount_limit(self) -> int | None:
        """``100 * amount_ratio``: amounts fit when ``hi * 100 <= lo * amount_limit``."""
        return None if self.amount_ratio is None else 100 * self.amount_ratio

    @property
    def sender_seconds(self) -> int:
        """How long a sender is remembered after its last transfer."""
        return max(self.memory_seconds, self.window_seconds)

    @property
    def refresh_seconds(self) -> int:
        """How much fresher an equally short path must be to be relayed again."""
        return max(1, self.window_seconds // 8)

    def max_state_bytes(self, id_bytes: int = 128) -> int:
        """Upper bound of ``len(orjson.dumps(sketch.to_state()))``.

        Parameters
        ----------
        id_bytes
            The JSON length of the longest account id, quotes excluded.

        Examples
        --------
        >>> FlowParams().max_state_bytes(24)
        21108
        >>> FlowParams().max_state_bytes()
        29532
        """
        ident = id_bytes + 2
        # [hash<=15 digits, hops<=2, ts<=10, ts<=10, lo<=18, hi<=18] and a comma;
        # destinations add a low hash
        path = 1 + 15 + 1 + 2 + 1 + 10 + 1 + 10 + 1 + 18 + 1 + 18 + 1 + 1
        dest = path + 1 + 15
        # [id, ts<=10, amount<=18 digits (10**17 minor units), ts, count<=10 digits, ts,
        # amount] and a comma
        sender = 1 + ident + 1 + 10 + 1 + 18 + 1 + 10 + 1 + 10 + 1 + 10 + 1 + 18 + 1 + 1
        via = 1 + 15 + 1 + 10 + 1 + 1
        gather = 1 + 15 + 1 + max(ident, 4) + 1 + 2 + via * self.max_vias + 1 + 1
        header = 1 + 2 + ident + 1 + 10 + 1 + 5 * 2 + 1
        # [id, ts] and a comma
        receiver = 1 + ident + 1 + 10 + 1 + 1
        return (
            header
            + receiver * self.max_gather_origins
            + (path + dest) * self.max_entries
            + sender * self.max_entries
            + gather * self.max_gather_origins
        )


DEFAULT_FLOW_PARAMS: Final = FlowParams()

#: The bounds a configuration sets in its ``stages.flow`` section.
CONFIGURED_BOUNDS: Final = (
    "max_entries", "hub_degree", "memory_seconds", "novel_transfers", "amount_ratio",
    "relay_hops", "max_vias", "max_gather_origins",
)
#: The bounds that follow from the flow detectors' parameters, and where each is set.
DERIVED_BOUNDS: Final = {
    "max_ring": "detectors.cycle.params.max_ring",
    "window_seconds": "detectors.cycle.params.max_span_seconds",
    "fan_in_seconds": "detectors.fan_in.params.window_seconds",
    "hub_seconds": "detectors.gather_scatter and scatter_gather params.window_seconds",
}


def configured_bounds(raw: Any, where: str = "stages.flow") -> dict[str, Any]:
    """The ``stages.flow`` section of a configuration, checked: bound name to value.

    Every key must be one of :data:`CONFIGURED_BOUNDS` and every value valid
    for :class:`FlowParams`; ``None`` is allowed where the parameter allows it
    (``relay_hops``, ``amount_ratio``, ``novel_transfers``).

    Raises
    ------
    ValueError
        Naming the key at fault.

    Examples
    --------
    >>> configured_bounds({"hub_degree": 12, "relay_hops": None})
    {'hub_degree': 12, 'relay_hops': None}
    >>> configured_bounds({"max_ring": 6})
    Traceback (most recent call last):
    ...
    ValueError: stages.flow.max_ring is not set here: it follows detectors.cycle.params.max_ring
    >>> configured_bounds({"hub_degree": 0})
    Traceback (most recent call last):
    ...
    ValueError: stages.flow.hub_degree must be an int >= 1, not 0
    """
    if not isinstance(raw, Mapping):
        message = f"{where} must be a mapping of flow sketch bound to value, not {raw!r}"
        raise ValueError(message)
    bounds: dict[str, Any] = {}
    for name, value in raw.items():
        if name in DERIVED_BOUNDS:
            message = f"{where}.{name} is not set here: it follows {DERIVED_BOUNDS[name]}"
            raise ValueError(message)
        if name not in CONFIGURED_BOUNDS:
            message = (f"{where}: unknown bound {name!r}; expected some of "
                       f"{list(CONFIGURED_BOUNDS)}")
            raise ValueError(message)
        try:
            FlowParams(**{name: value})
        except (TypeError, ValueError) as exc:
            said = str(exc)
            message = (f"{where}.{said}" if said.startswith(f"{name} ")
                       else f"{where}.{name}: {said}")
            raise ValueError(message) from None
        bounds[name] = value
    return bounds
