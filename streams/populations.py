"""Named population variants of the simulator, and its long-horizon laundering scenarios.

A variant changes who the simulated customers are (how much they move, in
which currency, how often they act, whom they pay) while keeping the
simulator's contract: money as exact decimal strings, events in event-time
order, labelled scenarios with incident ids, the same events for the same
seed. ``txwatch simulate --variant NAME`` publishes one; :func:`variant_events`
generates one offline. The default population (:func:`streams.simulate.generate`)
is not affected by anything here.
"""

from __future__ import annotations

import itertools
import random
from collections import ChainMap
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, Final

from streams.simulate import (
    DEFAULT_ACCOUNTS,
    DEFAULT_FIRST_INCIDENT_AT,
    DEFAULT_START,
    SCENARIOS,
    IncidentContext,
    Merchant,
    PlannedEvent,
    Scenario,
    SimAccount,
    TrafficGenerator,
    minor_units,
)
from streams.simulate.population import _DAY
from streams.simulate.scenarios import _MULE_PROFILES, _transfer, _whole_yuan

__all__ = [
    "LONG_HORIZON_SCENARIOS",
    "VARIANTS",
    "VARIANT_SCENARIOS",
    "Variant",
    "VariantTraffic",
    "long_ring",
    "slow_fan_in",
    "slow_fan_out",
    "slow_gather_scatter",
    "slow_scatter_gather",
    "variant_events",
]

_WEEK: Final = 7 * _DAY
#: Longest span of a long-horizon fan-in, fan-out, scatter-gather or gather-scatter.
LONG_HORIZON_DAYS: Final = 90
#: Largest ratio between two hop amounts of one long ring.
RING_SPREAD_MAX: Final = 8.0


# -- long-horizon laundering ------------------------------------------------------------


def _spaced(
    rng: random.Random, count: int, begin: float, days: float = LONG_HORIZON_DAYS
) -> list[float]:
    """``count`` event times after ``begin``, at least a day apart, within ``days`` of it.

    Gaps are 1 to 21 days, less when ``count`` of them would not fit.
    """
    longest = max(1.0, min(21.0, 0.95 * days / count))
    gaps = [rng.uniform(1.0, longest) * _DAY for _ in range(count)]
    return [begin + offset for offset in itertools.accumulate(gaps)]


def long_ring(ctx: IncidentContext) -> Iterator[PlannedEvent]:
    """Money passed round a ring of 3 to 10 accounts over 1 to 4 weeks, in any order.

    The members are accounts of the population used to moving money. Hop
    amounts are not alike: each hop carries the first hop's amount (3,000.00
    to 15,000.00) times a factor between 1 and a spread of 2x to 8x drawn
    per ring (one hop at each end), as mule cuts, fees and merges with a
    member's own funds do; a hop may be split into 2 or 3 transfers between
    the same two members. Every transfer is timed independently within the
    ring's span, so the hops arrive in any order. All are labelled, with one
    incident id.
    """
    rng = ctx.rng
    length = rng.randint(3, 10)
    members = ctx.accomplices(length, profiles=_MULE_PROFILES)
    base = _whole_yuan(300_000, 1_500_000, rng)
    spread = rng.uniform(2.0, RING_SPREAD_MAX)
    exponents = [rng.random() for _ in range(length)]
    low, high = rng.sample(range(length), 2)
    exponents[low], exponents[high] = 0.0, 1.0
    span = rng.uniform(1.0, 4.0) * _WEEK
    begin = ctx.now + rng.uniform(10.0, 600.0)
    for hop in range(length):
        amount = round(base * spread ** exponents[hop] / 100) * 100
        parts = rng.choice((1, 1, 1, 2, 3))
        cuts = sorted(rng.uniform(0.2, 0.8) for _ in range(parts - 1))
        shares = [b - a for a, b in zip([0.0, *cuts], [*cuts, 1.0], strict=True)]
        pieces = [round(amount * share / 100) * 100 for share in shares[:-1]]
        pieces.append(amount - sum(pieces))
        receiver = members[(hop + 1) % length].account_id
        for piece in pieces:
            at = begin + rng.uniform(0.0, span)
            yield _transfer(ctx, members[hop], receiver, at, piece, labelled=True)


def slow_fan_in(ctx: IncidentContext) -> Iterator[PlannedEvent]:
    """An account of the population paid by 5 to 8 others, days to weeks apart, within 90 days.

    Each sender pays once, 1,000.00 to 20,000.00; every transfer is
    labelled, with one incident id.
    """
    rng = ctx.rng
    count = rng.randint(5, 8)
    collector, *senders = ctx.accomplices(count + 1, profiles=_MULE_PROFILES)
    for sender, at in zip(senders, _spaced(rng, count, ctx.now), strict=True):
        amount = _whole_yuan(100_000, 2_000_000, rng)
        yield _transfer(ctx, sender, collector.account_id, at, amount, labelled=True)


def slow_fan_out(ctx: IncidentContext) -> Iterator[PlannedEvent]:
    """An account of the population paying 5 to 8 others once each, days to weeks apart.

    Within 90 days, 1,000.00 to 20,000.00 a transfer; every transfer is
    labelled, with one incident id.
    """
    rng = ctx.rng
    count = rng.randint(5, 8)
    source, *receivers = ctx.accomplices(count + 1, profiles=_MULE_PROFILES)
    for receiver, at in zip(receivers, _spaced(rng, count, ctx.now), strict=True):
        amount = _whole_yuan(100_000, 2_000_000, rng)
        yield _transfer(ctx, source, receiver.account_id, at, amount, labelled=True)


def slow_scatter_gather(ctx: IncidentContext) -> Iterator[PlannedEvent]:
    """One account's money split over 3 to 6 intermediaries and recombined, over weeks.

    The origin pays each intermediary 3,000.00 to 12,000.00, at least a
    day apart within 45 days; each passes 60-99% of it on to one collector
    1 to 21 days after receiving it, so all within 66 days. Every transfer is labelled,
    with one incident id.
    """
    rng = ctx.rng
    count = rng.randint(3, 6)
    origin, collector, *vias = ctx.accomplices(count + 2, profiles=_MULE_PROFILES)
    scattered = _spaced(rng, count, ctx.now, LONG_HORIZON_DAYS / 2)
    for via, at in zip(vias, scattered, strict=True):
        amount = _whole_yuan(300_000, 1_200_000, rng)
        yield _transfer(ctx, origin, via.account_id, at, amount, labelled=True)
        onward = at + rng.uniform(1.0, 21.0) * _DAY
        kept = round(amount * rng.uniform(0.60, 0.99) / 100) * 100
        yield _transfer(ctx, via, collector.account_id, onward, kept, labelled=True)


def slow_gather_scatter(ctx: IncidentContext) -> Iterator[PlannedEvent]:
    """An account paid by 3 to 6 others, then paying 3 to 6 others, over weeks.

    Payments in are 1,500.00 to 10,000.00, at least a day apart, within 45
    days; a few hours to 2 days after the last, 60-98% of the total leaves
    in 3 to 6 transfers, at least a day apart, within the next 45 days.
    Every transfer is labelled, with one incident id.
    """
    rng = ctx.rng
    senders = rng.randint(3, 6)
    receivers = rng.randint(3, 6)
    hub, *others = ctx.accomplices(1 + senders + receivers, profiles=_MULE_PROFILES)
    payers, payees = others[:senders], others[senders:]
    half = LONG_HORIZON_DAYS / 2
    inbound = _spaced(rng, senders, ctx.now, half)
    received = 0
    for payer, at in zip(payers, inbound, strict=True):
        amount = _whole_yuan(150_000, 1_000_000, rng)
        received += amount
        yield _transfer(ctx, payer, hub.account_id, at, amount, labelled=True)
    # The turn is within the first half: the inflows took at most 0.95 of it.
    turn = inbound[-1] + rng.uniform(0.2, 0.05 * half) * _DAY
    outbound = _spaced(rng, receivers, turn, half)
    total = round(received * rng.uniform(0.60, 0.98))
    cuts = sorted(rng.uniform(0.1, 0.9) for _ in range(receivers - 1))
    shares = [b - a for a, b in zip([0.0, *cuts], [*cuts, 1.0], strict=True)]
    for payee, at, share in zip(payees, outbound, shares, strict=True):
        amount = max(100, round(total * share / 100) * 100)
        yield _transfer(ctx, hub, payee.account_id, at, amount, labelled=True)


#: The long-horizon laundering scenarios: name -> how to inject it and which detector
#: should catch it. Not in the default mix; the ``long_horizon`` variant injects them.
LONG_HORIZON_SCENARIOS: Final[dict[str, Scenario]] = {
    "long_ring": Scenario(
        "cycle", long_ring,
        "money round a ring of 3-10 accounts over 1-4 weeks, hops varying up to 8x",
        spans_accounts=True,
    ),
    "slow_fan_in": Scenario(
        "fan_in", slow_fan_in, "an account paid by 5-8 others days to weeks apart",
        spans_accounts=True,
    ),
    "slow_fan_out": Scenario(
        "fan_out", slow_fan_out, "an account paying 5-8 others days to weeks apart",
        spans_accounts=True,
    ),
    "slow_scatter_gather": Scenario(
        "scatter_gather", slow_scatter_gather,
        "money split over 3-6 intermediaries and recombined over weeks", spans_accounts=True,
    ),
    "slow_gather_scatter": Scenario(
        "gather_scatter", slow_gather_scatter,
        "an account paid by 3-6 others, then paying 3-6, over weeks", spans_accounts=True,
    ),
}
#: Every scenario a variant may inject: the default ones and the long-horizon ones
#: (a live view, so a scenario registered later is seen).
VARIANT_SCENARIOS: Final[Mapping[str, Scenario]] = ChainMap(LONG_HORIZON_SCENARIOS, SCENARIOS)


# -- variants ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Variant:
    """A population that differs from the default one.

    Parameters
    ----------
    name
        What ``--variant`` takes.
    description
        One line for ``--help`` and the README.
    amount_factor
        Every amount (and loan ``outstanding``) of the default population is
        multiplied by this exact factor, then rounded half-even to the
        currency's smallest unit (never below it).
    currency
        ISO 4217 code written on every event with money.
    decimals
        Decimal places the currency's amounts are written with (0 for yen).
    activity_factor
        Every account's mean events per day is multiplied by this.
    hubs
        Number of busy merchant hubs: payees of a share of all transfers and
        payments of the population.
    hub_share
        Share of the background's transfers and payments that go to a hub.
    accounts
        Population size unless the caller gives one.
    incident_every
        Events between two rounds of incidents unless the caller gives it.
    scenarios
        Scenarios injected unless the caller names some; ``None``: every one
        of :data:`streams.simulate.SCENARIOS`.
    """

    name: str
    description: str
    amount_factor: Decimal = Decimal(1)
    currency: str = "CNY"
    decimals: int = 2
    activity_factor: float = 1.0
    hubs: int = 0
    hub_share: float = 0.0
    accounts: int = DEFAULT_ACCOUNTS
    incident_every: int = 5_000
    scenarios: tuple[str, ...] | None = None


#: Name -> variant. ``default`` is the default population itself.
VARIANTS: Final[dict[str, Variant]] = {
    variant.name: variant
    for variant in (
        Variant("default", "the default population (CNY), incidents every 5,000 events"),
        Variant("tiny_amounts", "every amount x 0.01 (CNY, rounded to the fen)",
                amount_factor=Decimal("0.01")),
        Variant("huge_amounts", "every amount x 100 (CNY)", amount_factor=Decimal(100)),
        Variant("usd", "amounts in US dollars (x 0.14, cents)", amount_factor=Decimal("0.14"),
                currency="USD"),
        Variant("eur", "amounts in euros (x 0.13, cents)", amount_factor=Decimal("0.13"),
                currency="EUR"),
        Variant("jpy", "amounts in yen (x 21, whole yen without decimals)",
                amount_factor=Decimal(21), currency="JPY", decimals=0),
        Variant("merchant_hubs", "3 hubs receive 40% of all transfers and payments",
                hubs=3, hub_share=0.4),
        Variant("quiet_accounts", "accounts act a few times a month (activity x 0.01)",
                activity_factor=0.01),
        Variant("long_horizon", "long-horizon laundering over up to 90 days among quiet "
                "accounts: rings, fan-in/out, scatter-gather, gather-scatter",
                activity_factor=0.01, accounts=1_000, incident_every=2_500,
                scenarios=tuple(LONG_HORIZON_SCENARIOS)),
    )
}  # fmt: skip


def _scaled(amount: str, factor: Decimal, decimals: int) -> str:
    """A contract amount times ``factor``, written with ``decimals`` places (exact)."""
    unit = Decimal(1).scaleb(-decimals)
    value = (Decimal(minor_units(amount)).scaleb(-2) * factor).quantize(unit, ROUND_HALF_EVEN)
    if value < unit and minor_units(amount) > 0:
        value = unit
    return f"{value:f}"


class VariantTraffic(TrafficGenerator):
    """The simulator's generator over a :class:`Variant`'s population (:func:`variant_events`)."""

    registry: Mapping[str, Scenario] = VARIANT_SCENARIOS

    def __init__(self, variant: Variant, seed: int = 0, **options: Any) -> None:
        # Set before the population is built: _build_population reads it.
        self.variant = variant
        self._hub_rng = random.Random(f"txwatch-hubs/{variant.name}/{seed}")
        super().__init__(seed, **options)

    def _build_population(self, rng: random.Random, count: int) -> None:
        super()._build_population(rng, count)
        variant = self.variant
        if variant.activity_factor != 1.0:
            for account in self.accounts:
                account.activity *= variant.activity_factor
        # Hubs: the first small businesses, paid by the population; a hub's own
        # background is that of a busy business (suppliers, payroll, settlements).
        businesses = [a for a in self.accounts if a.profile.name == "small_business"]
        self.hub_accounts: list[SimAccount] = businesses[: variant.hubs]
        self.hub_merchants: list[Merchant] = self.merchants[: variant.hubs]
        self._hub_indices = {hub.index for hub in self.hub_accounts}
        for hub in self.hub_accounts:
            hub.activity *= 20.0
            hub.opened = True
        self._activity_cumulative = list(itertools.accumulate(a.activity for a in self.accounts))

    def _to_hub(self) -> bool:
        return bool(self.hub_accounts) and self._hub_rng.random() < self.variant.hub_share

    def _transfer(self, account: SimAccount, at: float) -> dict[str, Any]:
        event = super()._transfer(account, at)
        if account.index in self._hub_indices:
            # Hubs pay many suppliers, not a handful of contacts.
            supplier = self.accounts[self._hub_rng.randrange(len(self.accounts))]
            if supplier.index != account.index:
                event["counterparty_id"] = supplier.account_id
        elif self._to_hub():
            hub = self.hub_accounts[self._hub_rng.randrange(len(self.hub_accounts))]
            if hub.index != account.index:
                event["counterparty_id"] = hub.account_id
        return event

    def _payment(self, account: SimAccount, at: float) -> dict[str, Any]:
        event = super()._payment(account, at)
        if self._to_hub():
            merchant = self.hub_merchants[self._hub_rng.randrange(len(self.hub_merchants))]
            event["counterparty_id"] = event["merchant_id"] = merchant.merchant_id
            event["industry"] = merchant.industry
            # A later refund goes back to the merchant actually paid.
            account.recent_payments[-1] = (merchant, account.recent_payments[-1][1])
        return event

    def _converted(self, event: dict[str, Any]) -> dict[str, Any]:
        variant = self.variant
        if variant.amount_factor == 1 and variant.currency == "CNY" and variant.decimals == 2:
            return event
        for name in ("amount", "outstanding"):
            if name in event:
                event[name] = _scaled(event[name], variant.amount_factor, variant.decimals)
        if "currency" in event:
            event["currency"] = variant.currency
        return event

    def __next__(self) -> dict[str, Any]:
        return self._converted(super().__next__())

    def drain(self) -> Iterator[dict[str, Any]]:
        for event in super().drain():
            yield self._converted(event)


def variant_events(
    name: str,
    *,
    events: int | None = None,
    seed: int = 0,
    accounts: int | None = None,
    start: datetime = DEFAULT_START,
    scenarios: Sequence[str] | None = None,
    incident_every: int | None = None,
    first_incident_at: int = DEFAULT_FIRST_INCIDENT_AT,
) -> VariantTraffic:
    """Simulated events of the population variant ``name``, as dicts, in event-time order.

    Deterministic like :func:`streams.simulate.generate` (same arguments, same
    events); event ids are ``sim-<seed>-<n>`` as there.

    Parameters
    ----------
    name
        A key of :data:`VARIANTS`.
    events
        Stop after exactly this many events; ``None``: endless.
    seed
        Seeds the population, the background, the hubs and every incident.
    accounts, incident_every, scenarios
        As for :func:`streams.simulate.generate`; ``None``: the variant's own
        (``scenarios`` may name those of :data:`LONG_HORIZON_SCENARIOS` too).
    start, first_incident_at
        As for :func:`streams.simulate.generate`.
    """
    variant = VARIANTS.get(name)
    if variant is None:
        message = f"unknown population variant {name!r}; known: {', '.join(VARIANTS)}"
        raise ValueError(message)
    return VariantTraffic(
        variant,
        seed,
        accounts=variant.accounts if accounts is None else accounts,
        start=start,
        scenarios=variant.scenarios if scenarios is None else scenarios,
        events=events,
        incident_every=variant.incident_every if incident_every is None else incident_every,
        first_incident_at=first_incident_at,
    )


def describe_variants() -> str:
    """One line per variant, ``name: description``, for ``--help``."""
    width = max(len(name) for name in VARIANTS)
    return "\n".join(f"  {name:<{width}}  {v.description}" for name, v in VARIANTS.items())
