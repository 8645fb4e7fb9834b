"""Labelled scenarios: one function per typology, from an :class:`IncidentContext` to events.

A scenario is registered in :data:`SCENARIOS` with the name of the detector
expected to catch it; its events to be flagged carry ``"label"`` (and
``"incident"`` when an incident spans several accounts).
"""

from __future__ import annotations

import inspect
import itertools
import math
import random
import statistics
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

from detectors.flow import DEFAULT_FLOW_PARAMS
from detectors.identity import DEFAULT_IDENTITY_PARAMS
from detectors.money import contract_amount
from detectors.registry import DEFAULT_CONFIG, DETECTORS, STAGE_DETECTORS

if TYPE_CHECKING:
    from streams.simulate.generator import TrafficGenerator
from streams.simulate.population import (
    _AGE_BIRTH_YEARS,
    _BANKS,
    _DAY,
    _HOUR,
    _LOAN_TERMS,
    CURRENCY,
    PROFILES,
    REGIONS,
    SPIKE_HISTORY,
    Merchant,
    SimAccount,
    _national_id,
    _pick,
)

# -- scenarios --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlannedEvent:
    """An event a scenario adds, before it gets its id and formatted time.

    ``body`` holds ``event_type`` and the type's fields; the envelope
    (``event_id``, ``occurred_at``, ``account_id``) is added when it is
    emitted, in event-time order with the background.
    """

    at: float
    account_id: str
    body: dict[str, Any]
    label: str | None = None
    #: Set by the generator on the labelled events of a scenario that spans accounts.
    incident: str | None = None


ScenarioFunction = Callable[["IncidentContext"], Iterable[PlannedEvent]]


@dataclass(frozen=True, slots=True)
class Scenario:
    """A registered injectable pattern.

    Parameters
    ----------
    expected_detector
        Name of the detector that should flag the labelled events (the
        ``detector`` field of its alerts).
    inject
        Builds one incident from an :class:`IncidentContext`.
    description
        One line for people.
    spans_accounts
        Whether one incident labels events of several accounts (a ring, the
        backers of a project): its labelled events then carry an incident id,
        as scoring otherwise counts one incident per account.
    """

    expected_detector: str
    inject: ScenarioFunction
    description: str
    spans_accounts: bool = False


@dataclass(frozen=True, slots=True)
class Newcomer:
    """An account a scenario opens: not part of the population, no background of its own."""

    account_id: str
    region: str
    ip_prefix: str
    device_id: str
    phone: str
    national_id: str
    age_band: str


class IncidentContext:
    """What a scenario function may use to build one incident.

    Parameters
    ----------
    traffic
        The generator the incident goes into.
    scenario
        The scenario's registered name, written as the label.
    rng
        A random stream of this incident's own, so incidents are reproducible
        independently of the background.
    now
        Event time (epoch seconds) of the last emitted event; planned events
        must not be earlier.
    """

    def __init__(
        self, traffic: TrafficGenerator, scenario: str, rng: random.Random, now: float
    ) -> None:
        self.traffic = traffic
        self.scenario = scenario
        self.rng = rng
        self.now = now

    def pick_victim(
        self,
        *,
        with_history: bool = False,
        profiles: Collection[str] | None = None,
        where: Callable[[SimAccount], bool] | None = None,
    ) -> SimAccount | None:
        """An opened account not yet used by an incident, or ``None`` if none fits.

        ``with_history`` chooses among accounts that have made at least
        :data:`SPIKE_HISTORY` payments so far; ``profiles`` restricts the
        profile names; ``where`` is any further condition.
        """
        traffic = self.traffic
        pool = traffic.experienced if with_history else traffic.accounts

        def fits(account: SimAccount) -> bool:
            return (
                account.opened
                and account.index not in traffic.victims
                and (profiles is None or account.profile.name in profiles)
                and (where is None or where(account))
            )

        # Victims are few next to the population: rejection sampling first.
        for _ in range(32):
            if not pool:
                return None
            candidate = pool[self.rng.randrange(len(pool))]
            if fits(candidate):
                traffic.victims.add(candidate.index)
                return candidate
        eligible = [account for account in pool if fits(account)]
        if not eligible:
            return None
        chosen = eligible[self.rng.randrange(len(eligible))]
        traffic.victims.add(chosen.index)
        return chosen

    def any_victim(self) -> SimAccount:
        """An opened account, preferring ones no incident has used yet."""
        victim = self.pick_victim()
        if victim is not None:
            return victim
        opened = [account for account in self.traffic.accounts if account.opened]
        return opened[self.rng.randrange(len(opened))]

    def draw_payment_minor(self, account: SimAccount, sigma: float | None = None) -> int:
        """A payment amount typical of the account."""
        spread = account.payment_sigma if sigma is None else sigma
        return max(100, round(math.exp(self.rng.gauss(account.payment_mu, spread))))

    def distinct_merchants(self, count: int, exclude: Collection[Merchant] = ()) -> list[Merchant]:
        """``count`` different merchants, none in ``exclude``."""
        candidates = [m for m in self.traffic.merchants if m not in exclude]
        return self.rng.sample(candidates, min(count, len(candidates)))

    def new_device_id(self) -> str:
        return f"dev-{self.rng.getrandbits(48):012x}"

    def foreign_ip(self) -> str:
        """An address outside the account's usual ranges (a hosting provider's)."""
        rng = self.rng
        return f"45.{rng.randrange(8, 160)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"

    def home_ip(self, account: SimAccount) -> str:
        """An address in the account's usual range."""
        rng = self.rng
        return f"{account.ip_prefix}.{rng.randrange(256)}.{rng.randrange(1, 255)}"

    def stranger(self, account: SimAccount) -> str:
        """Another account of the population that ``account`` has never paid."""
        accounts = self.traffic.accounts
        while True:
            other = accounts[self.rng.randrange(len(accounts))].account_id
            if other != account.account_id and other not in account.contacts:
                return other

    def accomplices(
        self, count: int, *, profiles: Collection[str] | None = None
    ) -> list[SimAccount]:
        """``count`` different opened accounts for the roles of one incident, marked as used.

        Accounts no incident has used come first, of ``profiles`` while there
        are some; when the population runs short, used ones fill in, never one
        twice. (Reusing the few accounts of ``profiles`` first instead left 3
        of 248 rings and scatter-gathers undetected in a 250,000-event backtest.)
        """
        chosen: list[SimAccount] = []
        taken: set[int] = set()
        while len(chosen) < count:
            account = self.pick_victim(profiles=profiles, where=lambda a: a.index not in taken)
            if account is None and profiles is not None:
                account = self.pick_victim(where=lambda a: a.index not in taken)
            if account is None:
                break
            chosen.append(account)
            taken.add(account.index)
        if len(chosen) < count:
            rest = [a for a in self.traffic.accounts if a.opened and a.index not in taken]
            chosen += self.rng.sample(rest, min(count - len(chosen), len(rest)))
        return chosen

    def bystanders(self, count: int, exclude: Collection[str] = ()) -> list[SimAccount]:
        """``count`` different ordinary opened accounts, not marked as used by the incident.

        For the people a scheme merely touches (the victims of a scam paying
        into it): they keep their ordinary lives and may be picked again.
        Accounts involved in an incident are avoided while others are left.
        """
        accounts = self.traffic.accounts
        victims = self.traffic.victims
        chosen: dict[str, SimAccount] = {}
        for attempt in range(64 * count):
            account = accounts[self.rng.randrange(len(accounts))]
            if (
                account.opened
                and account.account_id not in exclude
                and account.account_id not in chosen
                and (account.index not in victims or attempt >= 32 * count)
            ):
                chosen[account.account_id] = account
                if len(chosen) == count:
                    break
        return list(chosen.values())

    def newcomer(
        self, *, device_id: str | None = None, phone: str | None = None,
        national_id: str | None = None,
    ) -> Newcomer:
        """An account that does not exist yet, with an identity of its own unless given one.

        Its id follows the population's (``acct-<n>`` past the last one), so
        it is never an account the background uses.
        """
        rng = self.rng
        region, _, ip_prefixes, areas = REGIONS[rng.randrange(len(REGIONS))]
        age_band = _pick(rng, PROFILES[rng.randrange(len(PROFILES))].age_bands)
        low, high = _AGE_BIRTH_YEARS[age_band]
        birth_year = min(rng.randint(low, high), self.traffic.start.year - 18)
        return Newcomer(
            account_id=self.traffic.new_account_id(),
            region=region,
            ip_prefix=rng.choice(ip_prefixes),
            device_id=device_id or self.new_device_id(),
            phone=phone or f"1{rng.choice('3589')}{rng.randrange(10**9):09d}",
            national_id=national_id or _national_id(rng, rng.choice(areas), birth_year),
            age_band=age_band,
        )

    def opening(self, account: Newcomer, at: float, *, labelled: bool = False) -> PlannedEvent:
        """The ``account_opened`` event of a newcomer, from its device and region."""
        return self.event(
            account.account_id, at, "account_opened", labelled=labelled, phone=account.phone,
            national_id=account.national_id, age_band=account.age_band, channel="app",
            region=account.region, device_id=account.device_id,
            ip=f"{account.ip_prefix}.{self.rng.randrange(256)}.{self.rng.randrange(1, 255)}",
        )  # fmt: skip

    def event(
        self,
        account_id: str,
        at: float,
        event_type: str,
        *,
        amount_minor: int | None = None,
        labelled: bool = False,
        **fields: Any,
    ) -> PlannedEvent:
        """Any contract event of ``account_id`` at event time ``at``.

        ``amount_minor`` becomes the ``amount`` and ``currency`` fields;
        ``fields`` are the type's other fields, as on the wire.
        """
        if at < self.now:
            message = f"a planned event cannot go back in event time ({at} < {self.now})"
            raise ValueError(message)
        body: dict[str, Any] = {"event_type": event_type}
        if amount_minor is not None:
            body["amount"] = contract_amount(amount_minor)
            body["currency"] = CURRENCY
        body.update(fields)
        return PlannedEvent(at, account_id, body, self.scenario if labelled else None)

    def payment(
        self,
        account: SimAccount,
        at: float,
        amount_minor: int,
        merchant: Merchant,
        *,
        labelled: bool = True,
        channel: str = "app",
        device_id: str | None = None,
        ip: str | None = None,
    ) -> PlannedEvent:
        """A payment by ``account`` to ``merchant`` at event time ``at``."""
        if at < self.now:
            message = f"a planned event cannot go back in event time ({at} < {self.now})"
            raise ValueError(message)
        body: dict[str, Any] = {
            "event_type": "payment",
            "amount": contract_amount(amount_minor),
            "currency": CURRENCY,
            "counterparty_id": merchant.merchant_id,
            "merchant_id": merchant.merchant_id,
            "industry": merchant.industry,
            "channel": channel,
            "region": account.region,
            "device_id": device_id or account.devices[0],
        }
        if ip is not None:
            body["ip"] = ip
        return PlannedEvent(at, account.account_id, body, self.scenario if labelled else None)


def velocity_burst(ctx: IncidentContext) -> Iterator[PlannedEvent]:
    """15-20 payments within 40 s from one account to as many merchants.

    A taken-over account emptied by a script: a new device, an address outside
    the account's region, a different merchant for every payment. Every
    payment is labelled (the velocity detector should flag the burst once its
    limit is reached).
    """
    rng = ctx.rng
    victim = ctx.any_victim()
    count = rng.randint(15, 20)
    span = rng.uniform(20.0, 36.0)
    begin = ctx.now + rng.uniform(1.0, 30.0)
    offsets = sorted(rng.uniform(0.0, span) for _ in range(count - 2))
    offsets = [0.0, *offsets, span]
    merchants = ctx.distinct_merchants(count, exclude=victim.favourites)
    device, ip = ctx.new_device_id(), ctx.foreign_ip()
    for offset, merchant in zip(offsets, merchants, strict=False):
        amount = ctx.draw_payment_minor(victim)
        yield ctx.payment(victim, begin + offset, amount, merchant, device_id=device, ip=ip)


def amount_spike(ctx: IncidentContext) -> Iterator[PlannedEvent]:
    """One payment 60-120x the account's usual, after at least 20 ordinary ones.

    The victim is an account that already has :data:`SPIKE_HISTORY` payments
    when there is one; otherwise (short runs) the scenario first adds 20-26
    ordinary small payments to a few favourite merchants, minutes apart, as
    unlabelled context. Only the spike is labelled.
    """
    rng = ctx.rng
    victim = ctx.pick_victim(with_history=True)
    at = ctx.now
    history: list[int] = list(victim.payment_amounts) if victim is not None else []
    if victim is None:
        victim = ctx.pick_victim(profiles=("student", "salaried", "retired")) or ctx.any_victim()
        regulars = victim.favourites[:3]
        for _ in range(rng.randint(SPIKE_HISTORY, SPIKE_HISTORY + 6)):
            at += rng.uniform(240.0, 600.0)
            amount = ctx.draw_payment_minor(victim, sigma=0.35)
            history.append(amount)
            yield ctx.payment(victim, at, amount, rng.choice(regulars), labelled=False)
    usual = max(int(statistics.median(history)), round(math.exp(victim.payment_mu)), 100)
    # Whole yuan, as a cash-out would be; at least 60x so medians of other samples
    # of the same account stay far below 1/30 of it.
    spike = math.ceil(usual * rng.uniform(60.0, 120.0) / 100) * 100
    big_ticket = [m for m in ctx.traffic.merchants if m.industry in ("electronics", "jewelry")]
    merchant = rng.choice(big_ticket or ctx.traffic.merchants)
    yield ctx.payment(victim, at + rng.uniform(300.0, 1800.0), spike, merchant)


def _default_params(detector: str) -> Mapping[str, Any]:
    """The shipped parameters of a detector: scenarios are built to cross its defaults.

    Those of :data:`DEFAULT_CONFIG`, and the constructor's defaults for the ones
    it leaves out.
    """
    cls = {**DETECTORS, **STAGE_DETECTORS}[detector]
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(cls.__init__).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }
    return {**defaults, **DEFAULT_CONFIG["detectors"][detector].get("params", {})}


def _alerting_count(detector: str, limit: float) -> int:
    """The smallest count that alerts for a detector scoring ``count / limit``."""
    threshold = float(DEFAULT_CONFIG["detectors"][detector]["threshold"])
    count = max(1, math.ceil(threshold * limit))
    while count / limit < threshold:  # float rounding in the detector's division
        count += 1
    return count


def _whole_yuan(low_minor: int, high_minor: int, rng: random.Random) -> int:
    """A random amount in whole yuan within ``[low_minor, high_minor]``."""
    return rng.randint(-(-low_minor // 100), high_minor // 100) * 100


def structuring(ctx: IncidentContext) -> Iterator[PlannedEvent]:
    """Cash placed in 3-5 top-ups just under the reporting threshold, within hours.

    Each top-up is between ``band_fraction`` of the structuring detector's
    threshold and one yuan under it, 40 minutes to a few hours apart, all
    within its window; the top-ups from the ``min_count``-th on are labelled
    (the detector cannot know about the earlier ones when they happen). A few
    hours after the last one the money moves on in one transfer to an account
    the victim never paid before (unlabelled context: layering).
    """
    params = _default_params("structuring")
    threshold = int(params.get("currency_limits", {}).get("CNY", {}).get("threshold", 5_000_000))
    lowest = math.ceil(Decimal(threshold) * Decimal(str(params.get("band_fraction", 0.9))))
    min_count = int(params.get("min_count", 3))
    window = int(params.get("window_seconds", 86_400))
    rng = ctx.rng
    victim = ctx.any_victim()
    count = rng.randint(min_count, min_count + 2)
    # Gaps over 40 minutes: what is structured is the amount, not the speed.
    longest_gap = max(2_400.0, 0.9 * window / count)
    at = ctx.now
    total = 0
    bank = _BANKS[victim.index % len(_BANKS)]
    for number in range(1, count + 1):
        at += rng.uniform(2_400.0, longest_gap)
        amount = _whole_yuan(lowest, threshold - 1, rng)
        total += amount
        yield ctx.event(
            victim.account_id, at, "top_up", amount_minor=amount, labelled=number >= min_count,
            counterparty_id=bank, channel="app", region=victim.region,
            device_id=victim.devices[0],
        )  # fmt: skip
    yield ctx.event(
        victim.account_id, at + rng.uniform(3_600.0, 3 * 3_600.0), "transfer",
        amount_minor=total, counterparty_id=ctx.stranger(victim), channel="app",
        region=victim.region, device_id=victim.devices[0],
    )  # fmt: skip


def rapid_pass_through(ctx: IncidentContext) -> Iterator[PlannedEvent]:
    """A mule account: a large top-up, 85-99% of it sent on within minutes.

    One top-up of 20,000.00 to 90,000.00 (unlabelled: money coming in is not
    suspicious by itself), then 1-3 transfers or withdrawals to accounts the
    victim never paid, within three quarters of the detector's window. The
    outflows from the one that takes the share gone to the alerting threshold
    on are labelled.
    """
    params = _default_params("rapid_pass_through")
    window = float(params.get("window_seconds", 1_800))
    share_alerting = float(DEFAULT_CONFIG["detectors"]["rapid_pass_through"]["threshold"])
    rng = ctx.rng
    victim = ctx.any_victim()
    inflow = _whole_yuan(2_000_000, 9_000_000, rng)
    at = ctx.now + rng.uniform(10.0, 300.0)
    yield ctx.event(
        victim.account_id, at, "top_up", amount_minor=inflow,
        counterparty_id=_BANKS[victim.index % len(_BANKS)], channel="app", region=victim.region,
    )  # fmt: skip
    count = rng.randint(1, 3)
    total = round(inflow * rng.uniform(0.85, 0.99))
    cuts = sorted(rng.uniform(0.2, 0.8) for _ in range(count - 1))
    shares = [b - a for a, b in zip([0.0, *cuts], [*cuts, 1.0], strict=True)]
    amounts = [max(100, round(total * share / 100) * 100) for share in shares]
    offsets = sorted(rng.uniform(60.0, 0.75 * window) for _ in range(count))
    device, ip = ctx.new_device_id(), ctx.home_ip(victim)
    sent = 0
    for offset, amount in zip(offsets, amounts, strict=True):
        sent += amount
        kind = "transfer" if rng.random() < 0.7 else "withdrawal"
        payee = ctx.stranger(victim) if kind == "transfer" else rng.choice(_BANKS)
        yield ctx.event(
            victim.account_id, at + offset, kind, amount_minor=amount,
            labelled=sent >= share_alerting * inflow, counterparty_id=payee, channel="app",
            region=victim.region, device_id=device, ip=ip,
        )  # fmt: skip


def fan_out(ctx: IncidentContext) -> Iterator[PlannedEvent]:
    """One account sends transfers to a dozen or more accounts it never paid, within hours.

    ``min_distinct + 2`` to ``min_distinct + 10`` transfers of the fan-out
    detector's defaults, 500.00 to 3,000.00 each, each to a different account,
    spread over 30 minutes to 4 hours; those from the ``min_distinct``-th on are
    labelled.
    """
    params = _default_params("fan_out")
    min_distinct = int(params.get("min_distinct", 10))
    rng = ctx.rng
    victim = ctx.any_victim()
    count = rng.randint(min_distinct + 2, min_distinct + 10)
    span = rng.uniform(1_800.0, 4 * 3_600.0)
    begin = ctx.now + rng.uniform(10.0, 300.0)
    payees: list[str] = []
    while len(payees) < count:
        payee = ctx.stranger(victim)
        if payee not in payees:
            payees.append(payee)
    offsets = sorted(rng.uniform(0.0, span) for _ in range(count))
    for number, (offset, payee) in enumerate(zip(offsets, payees, strict=True), start=1):
        yield ctx.event(
            victim.account_id, begin + offset, "transfer",
            amount_minor=_whole_yuan(50_000, 300_000, rng), labelled=number >= min_distinct,
            counterparty_id=payee, channel="app", region=victim.region,
            device_id=victim.devices[0],
        )  # fmt: skip


def fund_segregation(ctx: IncidentContext) -> Iterator[PlannedEvent]:
    """Customer funds moved from an escrow account into a platform-owned account.

    The accounts are those of the fund-segregation detector's defaults (for
    example ``escrow-001`` and ``platform-ops-001``), outside the customer
    population. One to three ordinary payouts from the escrow account to
    customers come first (unlabelled), then the labelled transfer of
    100,000.00 to 2,000,000.00 to the platform account.
    """
    params = _default_params("fund_segregation")
    escrows = list(params.get("escrow_accounts") or ["escrow-001"])
    platforms = list(params.get("platform_accounts") or ["platform-ops-001"])
    rng = ctx.rng
    escrow, platform = rng.choice(escrows), rng.choice(platforms)
    at = ctx.now
    accounts = ctx.traffic.accounts
    for _ in range(rng.randint(1, 3)):
        at += rng.uniform(30.0, 600.0)
        yield ctx.event(
            escrow, at, "transfer", amount_minor=_whole_yuan(100_000, 4_000_000, rng),
            counterparty_id=accounts[rng.randrange(len(accounts))].account_id, channel="web",
        )  # fmt: skip
    yield ctx.event(
        escrow, at + rng.uniform(60.0, 3_600.0), "transfer",
        amount_minor=_whole_yuan(10_000_000, 200_000_000, rng), labelled=True,
        counterparty_id=platform, channel="web",
    )  # fmt: skip


def precipitated_funds(ctx: IncidentContext) -> Iterator[PlannedEvent]:
    """A wallet topped up far above the balance limit, then left untouched past the dwell time.

    One top-up of 1.6 to 3 times the precipitated-funds detector's default
    limit (unlabelled), then, just after its default dwell time has passed,
    a login from the account's usual device (labelled: the detector has no
    timers and learns of the dwell from the next event). The victim is
    chosen among modest spenders, whose everyday payments cannot bring the
    balance back under the limit meanwhile.
    """
    params = _default_params("precipitated_funds")
    limit = int(params.get("currency_limits", {}).get("CNY", {}).get("balance_limit", 5_000_000))
    dwell = float(params.get("max_dwell_seconds", 259_200))
    rng = ctx.rng
    victim = ctx.pick_victim(profiles=("student", "retired", "salaried")) or ctx.any_victim()
    amount = math.ceil(limit * rng.uniform(1.6, 3.0) / 100_000) * 100_000
    at = ctx.now + rng.uniform(60.0, 600.0)
    yield ctx.event(
        victim.account_id, at, "top_up", amount_minor=amount,
        counterparty_id=_BANKS[victim.index % len(_BANKS)], channel="app", region=victim.region,
    )  # fmt: skip
    yield ctx.event(
        victim.account_id, at + dwell + rng.uniform(1.0, 30.0), "login", labelled=True,
        channel="app", region=victim.region, device_id=victim.devices[0],
        ip=ctx.home_ip(victim),
    )  # fmt: skip


def account_takeover(ctx: IncidentContext) -> Iterator[PlannedEvent]:
    """A login from a new device abroad, a phone-number change, then the account emptied.

    The victim has a payment history (20 or more payments; in short runs the
    scenario adds 8-12 ordinary ones first, unlabelled). A login from a device
    it never used and an address outside its region, a ``credential_change``
    of the phone number minutes later (both unlabelled: they are the trigger,
    not the loss), then within half an hour one or two withdrawals or
    transfers of 25 to 60 times its usual payment, at least 1,500.00 (labelled).
    """
    rng = ctx.rng
    victim = ctx.pick_victim(with_history=True)
    at = ctx.now
    if victim is None:
        victim = ctx.any_victim()
        for _ in range(rng.randint(8, 12)):
            at += rng.uniform(240.0, 900.0)
            yield ctx.payment(
                victim, at, ctx.draw_payment_minor(victim, sigma=0.35),
                rng.choice(victim.favourites[:3]), labelled=False,
            )  # fmt: skip
    usual = victim.usual_payment_minor
    device, ip = ctx.new_device_id(), ctx.foreign_ip()
    at += rng.uniform(30.0, 600.0)
    yield ctx.event(
        victim.account_id, at, "login", channel="app", region=victim.region, device_id=device,
        ip=ip,
    )  # fmt: skip
    at += rng.uniform(30.0, 300.0)
    yield ctx.event(
        victim.account_id, at, "credential_change", kind="phone", channel="app",
        region=victim.region, device_id=device, ip=ip,
    )  # fmt: skip
    for _ in range(rng.randint(1, 2)):
        at += rng.uniform(120.0, 900.0)
        amount = max(150_000, math.ceil(usual * rng.uniform(25.0, 60.0) / 10_000) * 10_000)
        kind = "withdrawal" if rng.random() < 0.5 else "transfer"
        payee = rng.choice(_BANKS) if kind == "withdrawal" else ctx.stranger(victim)
        yield ctx.event(
            victim.account_id, at, kind, amount_minor=amount, labelled=True,
            counterparty_id=payee, channel="app", region=victim.region, device_id=device, ip=ip,
        )  # fmt: skip


#: Seed of the synthetic people on the simulated dishonest-person list.
DISHONEST_SEED: Final = "txwatch-dishonest-persons/1"
#: How many synthetic people are on that list.
DISHONEST_PERSONS: Final = 4


def dishonest_persons() -> list[tuple[str, str]]:
    """``(national_id, phone)`` of the synthetic people on the simulated dishonest-person list.

    Generated from :data:`DISHONEST_SEED` like the population's identities, so
    no clear identifier is written in the code; the demo configuration's
    blacklist (``streams/config/demo.json``) holds their keyed hashes under the
    development key, checked by ``tests/unit/test_simulate.py``.
    """
    rng = random.Random(DISHONEST_SEED)
    people = []
    for _ in range(DISHONEST_PERSONS):
        areas = REGIONS[rng.randrange(len(REGIONS))][3]
        national_id = _national_id(rng, rng.choice(areas), rng.randint(1960, 2000))
        phone = f"1{rng.choice('3589')}{rng.randrange(10**9):09d}"
        people.append((national_id, phone))
    return people


def blacklisted_identity(ctx: IncidentContext) -> Iterator[PlannedEvent]:
    """A loan application under the identity of a person on the dishonest-person list.

    The application carries the listed person's national id and phone number
    (see :func:`dishonest_persons`), from the account's usual device; it is
    labelled. The blacklist detector flags it only in development mode
    (``TXWATCH_DEV_MODE``: the development PII key and the demo configuration).
    """
    rng = ctx.rng
    victim = ctx.any_victim()
    national_id, phone = rng.choice(dishonest_persons())
    yield ctx.event(
        victim.account_id, ctx.now + rng.uniform(10.0, 600.0), "loan_application",
        amount_minor=_whole_yuan(500_000, 5_000_000, rng), labelled=True,
        loan_id=f"loan-{victim.index:07d}-a{rng.getrandbits(24):06x}",
        term_months=rng.choice(_LOAN_TERMS), national_id=national_id, phone=phone,
        channel="app", region=victim.region, device_id=victim.devices[0],
    )  # fmt: skip


def borrow_and_vanish(ctx: IncidentContext) -> Iterator[PlannedEvent]:
    """A 7-day cash loan withdrawn within hours and never repaid.

    A loan application and, up to two hours later, a disbursement of
    20,000.00 to 80,000.00 due seven days later (``due_date``; both
    unlabelled); one to three withdrawals or transfers of 85-100% of it,
    one to twelve hours after the disbursement (unlabelled: nothing is wrong
    yet); then, minutes after the end of the due date (UTC), the platform's
    ``loan_status`` reporting the loan one day past due, which is the event
    the detector judges the loan on (labelled).
    """
    rng = ctx.rng
    victim = ctx.any_victim()
    loan_id = f"loan-{victim.index:07d}-c{rng.getrandbits(24):06x}"
    principal = rng.randint(20, 80) * 100_000
    at = ctx.now + rng.uniform(10.0, 600.0)
    yield ctx.event(
        victim.account_id, at, "loan_application", amount_minor=principal, loan_id=loan_id,
        term_months=1, national_id=victim.national_id, phone=victim.phone, channel="app",
        region=victim.region, device_id=victim.devices[0],
    )  # fmt: skip
    disbursed = at + rng.uniform(600.0, 7_200.0)
    due = datetime.fromtimestamp(disbursed, UTC).date() + timedelta(days=7)
    yield ctx.event(
        victim.account_id, disbursed, "loan_disbursement", amount_minor=principal,
        loan_id=loan_id, due_date=due.isoformat(), region=victim.region,
    )  # fmt: skip
    count = rng.randint(1, 3)
    total = round(principal * rng.uniform(0.85, 1.0) / 100) * 100
    amounts = [total // count] * (count - 1) + [total - (total // count) * (count - 1)]
    offsets = sorted(rng.uniform(3_600.0, 12 * 3_600.0) for _ in range(count))
    for offset, amount in zip(offsets, amounts, strict=True):
        kind = "withdrawal" if rng.random() < 0.6 else "transfer"
        payee = rng.choice(_BANKS) if kind == "withdrawal" else ctx.stranger(victim)
        yield ctx.event(
            victim.account_id, disbursed + offset, kind, amount_minor=amount,
            counterparty_id=payee, channel="app", region=victim.region,
            device_id=victim.devices[0],
        )  # fmt: skip
    due_end = datetime.combine(due + timedelta(days=1), datetime.min.time(), UTC).timestamp()
    yield ctx.event(
        victim.account_id, due_end + rng.uniform(1.0, 300.0), "loan_status", labelled=True,
        loan_id=loan_id, status="delinquent", days_past_due=1,
        outstanding=contract_amount(principal), currency=CURRENCY,
    )  # fmt: skip


#: Profiles of the accounts that pass money on in laundering schemes: accounts used to
#: moving sums that would stand out in a student's or a family's history.
_MULE_PROFILES: Final = ("small_business", "affluent")


def _transfer(
    ctx: IncidentContext, sender: SimAccount | Newcomer, receiver: str, at: float,
    amount_minor: int, *, labelled: bool = False,
) -> PlannedEvent:
    """A transfer from an app, as the population sends them."""
    device = sender.devices[0] if isinstance(sender, SimAccount) else sender.device_id
    return ctx.event(
        sender.account_id, at, "transfer", amount_minor=amount_minor, labelled=labelled,
        counterparty_id=receiver, channel="app", region=sender.region, device_id=device,
    )  # fmt: skip


def _split(total_minor: int, parts: int, rng: random.Random) -> list[int]:
    """``total_minor`` cut at random into ``parts`` amounts in whole yuan (each at least one)."""
    cuts = sorted(rng.uniform(0.15, 0.85) for _ in range(parts - 1))
    shares = [b - a for a, b in zip([0.0, *cuts], [*cuts, 1.0], strict=True)]
    return [max(100, round(total_minor * share / 100) * 100) for share in shares]


def laundering_ring(ctx: IncidentContext) -> Iterator[PlannedEvent]:
    """Money passed round a ring of 3 to 8 accounts back to where it started, within two days.

    The ring's length is drawn between the cycle detector's ``min_ring`` and
    its ``max_ring`` (at most the flow sketch's); its members are accounts of
    the population used to moving money (small businesses, the affluent).
    The first sends 3,000.00 to 15,000.00 to the second, each passes 97-99.5%
    of what it got (less its cut) to the next, the last back to the first,
    10 minutes to 6 hours apart. In half of the incidents the transfers are
    not in ring order: the members pay from their own balances as soon as
    they are told to, so the event times of the hops are shuffled.

    Every transfer of the ring is labelled, with one incident id: the alert
    points at the transfer that closes the ring where it is processed (the
    last in event time when processed in order; another one when the flow
    stage's relays lag behind).
    """
    params = _default_params("cycle")
    longest = min(int(params["max_ring"]), DEFAULT_FLOW_PARAMS.max_ring)
    shortest = min(int(params["min_ring"]), longest)
    span_limit = min(int(params["max_span_seconds"]), DEFAULT_FLOW_PARAMS.window_seconds)
    rng = ctx.rng
    length = rng.randint(shortest, longest)
    members = ctx.accomplices(length, profiles=_MULE_PROFILES)
    amounts = [_whole_yuan(300_000, 1_500_000, rng)]
    for _ in range(length - 1):
        amounts.append(round(amounts[-1] * rng.uniform(0.97, 0.995) / 100) * 100)
    gaps = [rng.uniform(600.0, 6 * _HOUR) for _ in range(length)]
    scale = min(1.0, 0.8 * span_limit / sum(gaps))
    offsets = list(itertools.accumulate(gap * scale for gap in gaps))
    if rng.random() < 0.5:
        rng.shuffle(offsets)
    begin = ctx.now + rng.uniform(10.0, 600.0)
    for hop, (offset, amount) in enumerate(zip(offsets, amounts, strict=True)):
        receiver = members[(hop + 1) % length].account_id
        yield _transfer(ctx, members[hop], receiver, begin + offset, amount, labelled=True)


def scatter_gather(ctx: IncidentContext) -> Iterator[PlannedEvent]:
    """One account's money split over 3 to 6 intermediaries and recombined at another.

    The origin sends 3,000.00 to 12,000.00 to each of ``min_vias`` to
    ``min_vias + 3`` intermediaries (the scatter-gather detector's default,
    at most the ``max_vias`` the flow sketch keeps), 1 to 15 minutes apart;
    each intermediary passes 95-99% of it on to one collecting account 20
    minutes to 12 hours after receiving it, well within the sketch's
    ``hub_seconds``. All of them are accounts of the population used to
    moving money. The collector's incoming transfers from the
    ``min_vias``-th on are labelled (the detector alerts on each of them),
    with one incident id: they come from different accounts.
    """
    params = _default_params("scatter_gather")
    most = DEFAULT_FLOW_PARAMS.max_vias
    needed = min(_alerting_count("scatter_gather", int(params["min_vias"])), most)
    rng = ctx.rng
    count = rng.randint(needed, min(needed + 3, most))
    origin, collector, *vias = ctx.accomplices(count + 2, profiles=_MULE_PROFILES)
    at = ctx.now + rng.uniform(10.0, 600.0)
    onward: list[tuple[float, SimAccount, int]] = []
    for via in vias:
        at += rng.uniform(60.0, 900.0)
        amount = _whole_yuan(300_000, 1_200_000, rng)
        yield _transfer(ctx, origin, via.account_id, at, amount)
        kept = round(amount * rng.uniform(0.95, 0.99) / 100) * 100
        onward.append((at + rng.uniform(1_200.0, 12 * _HOUR), via, kept))
    onward.sort(key=lambda hop: hop[0])
    for number, (when, via, amount) in enumerate(onward, start=1):
        yield _transfer(ctx, via, collector.account_id, when, amount, labelled=number >= needed)


def gather_scatter(ctx: IncidentContext) -> Iterator[PlannedEvent]:
    """A freshly opened account paid by 5 to 8 accounts, then paying 5 to 8 new ones.

    A collection hub of a scam or of underground banking, opened (unlabelled)
    with the accounts it will pay, bought or opened for the purpose: it is
    paid 1,500.00 to 10,000.00 by each of ``min_in`` to ``min_in + 3``
    ordinary accounts (the scam's victims) within 2 to 12 hours; 30 minutes
    to 3 hours after the last payment it sends 90-98% of the money on, 5
    minutes to an hour apart, to ``min_out`` to ``min_out + 3`` of those new
    accounts (the gather-scatter detector's defaults; fewer than the fan-out
    detector's ``min_distinct``). The hub's outgoing transfers from the
    ``min_out``-th on are labelled: once both limits are reached within the
    flow sketch's ``hub_seconds``, the detector alerts on every record of the
    hub. New accounts have no background, so no earlier transfer reaches the
    limits.
    """
    params = _default_params("gather_scatter")
    needed_in = _alerting_count("gather_scatter", int(params["min_in"]))
    needed_out = _alerting_count("gather_scatter", int(params["min_out"]))
    fan_out_limit = int(_default_params("fan_out").get("min_distinct", 10))
    rng = ctx.rng
    senders = rng.randint(needed_in, needed_in + 3)
    receivers = rng.randint(needed_out, max(needed_out, min(needed_out + 3, fan_out_limit - 1)))
    hub = ctx.newcomer()
    payers = ctx.bystanders(senders)
    payees = [ctx.newcomer() for _ in range(receivers)]
    at = ctx.now + rng.uniform(10.0, 600.0)
    yield ctx.opening(hub, at)
    for payee in payees:
        yield ctx.opening(payee, at + rng.uniform(60.0, 1_800.0))
    window = rng.uniform(2 * _HOUR, 12 * _HOUR)
    received = 0
    offsets = sorted(rng.uniform(600.0, window) for _ in payers)
    for offset, payer in zip(offsets, payers, strict=True):
        amount = _whole_yuan(150_000, 1_000_000, rng)
        received += amount
        yield _transfer(ctx, payer, hub.account_id, at + offset, amount)
    at += window + rng.uniform(1_800.0, 3 * _HOUR)
    amounts = _split(round(received * rng.uniform(0.90, 0.98)), len(payees), rng)
    for number, (payee, amount) in enumerate(zip(payees, amounts, strict=True), start=1):
        at += rng.uniform(300.0, _HOUR)
        yield _transfer(ctx, hub, payee.account_id, at, amount, labelled=number >= needed_out)


def fan_in(ctx: IncidentContext) -> Iterator[PlannedEvent]:
    """A freshly opened account paid by 20 to 28 accounts that never paid it, within hours.

    The collection account of a scam (a fake investment or "part-time job"
    offer), opened on the day (unlabelled). ``max_senders`` to
    ``max_senders + 8`` ordinary accounts of the population (the fan-in
    detector's default; fewer than the flow sketch's ``hub_degree``) each
    send it 200.00 to 5,000.00 over 2 to 16 hours, within the sketch's
    ``fan_in_seconds``. The transfers from the ``max_senders``-th on are
    labelled, with one incident id (each comes from another account): the
    detector alerts on each of them. The account being new, no other sender
    counts towards the limit.
    """
    params = _default_params("fan_in")
    flow = DEFAULT_FLOW_PARAMS
    needed = _alerting_count("fan_in", int(params["max_senders"]))
    rng = ctx.rng
    count = rng.randint(needed, max(needed, min(needed + 8, flow.hub_degree - 1)))
    collector = ctx.newcomer()
    at = ctx.now + rng.uniform(10.0, 600.0)
    yield ctx.opening(collector, at)
    span = min(rng.uniform(2 * _HOUR, 16 * _HOUR), 0.9 * flow.fan_in_seconds)
    offsets = sorted(rng.uniform(300.0, span) for _ in range(count))
    senders = ctx.bystanders(count)
    for number, (offset, sender) in enumerate(zip(offsets, senders, strict=False), start=1):
        amount = _whole_yuan(20_000, 500_000, rng)
        yield _transfer(
            ctx, sender, collector.account_id, at + offset, amount, labelled=number >= needed
        )


def shared_identity(ctx: IncidentContext) -> Iterator[PlannedEvent]:
    """Several accounts opened with one identity: a device farm or a stolen national ID.

    In two incidents out of three, a device farm: as many accounts as the
    identity-reuse detector's limit for devices, up to three more, opened from
    one device within a few hours, each with a phone number and national ID
    of its own (bought or synthetic identities). Otherwise a stolen identity:
    as many accounts as its limit for national IDs and phone numbers, or one
    more, opened with one person's national ID and phone number from
    different devices. Every new account then logs in once or twice from its
    device (unlabelled). The openings from the limit-th account on are
    labelled, with one incident id: the detector alerts once per account
    that reaches the limit.
    """
    limits: Mapping[str, int] = _default_params("identity_reuse")["min_accounts"]
    most = DEFAULT_IDENTITY_PARAMS.max_accounts
    rng = ctx.rng
    stolen = [limits[kind] for kind in ("national_id", "phone") if kind in limits]
    if stolen and ("device_id" not in limits or rng.random() < 1 / 3):
        needed = _alerting_count("identity_reuse", min(stolen))
        count = rng.randint(needed, min(needed + 1, most))
        person = ctx.newcomer()
        accounts = [
            ctx.newcomer(phone=person.phone, national_id=person.national_id)
            for _ in range(count)
        ]
        spread = rng.uniform(_HOUR, 3 * _DAY)
    else:
        needed = _alerting_count("identity_reuse", limits["device_id"])
        count = rng.randint(needed, min(needed + 3, most))
        device = ctx.new_device_id()
        accounts = [ctx.newcomer(device_id=device) for _ in range(count)]
        spread = rng.uniform(_HOUR, 6 * _HOUR)
    begin = ctx.now + rng.uniform(10.0, 600.0)
    offsets = sorted(rng.uniform(0.0, spread) for _ in range(count))
    for number, (offset, account) in enumerate(zip(offsets, accounts, strict=True), start=1):
        yield ctx.opening(account, begin + offset, labelled=number >= needed)
        at = begin + offset
        for _ in range(rng.randint(1, 2)):
            at += rng.uniform(600.0, _DAY)
            yield ctx.event(
                account.account_id, at, "login", channel="app", region=account.region,
                device_id=account.device_id,
                ip=f"{account.ip_prefix}.{rng.randrange(256)}.{rng.randrange(1, 255)}",
            )  # fmt: skip


def loan_stacking(ctx: IncidentContext) -> Iterator[PlannedEvent]:
    """A customer who never borrowed applies for loan after loan within two or three days.

    Financial distress, or a fraudster testing the platform's limits: an
    account of the population outside the lending product (so no application
    of its own came before) applies ``max_applications`` to
    ``max_applications + 2`` times (the loan-stacking detector's default), 30
    minutes to 16 hours apart, each for another loan of 3,000.00 to
    30,000.00 with its national ID and phone number. The applications from the
    ``max_applications``-th on are labelled: the detector alerts on each.
    """
    params = _default_params("loan_stacking")
    needed = _alerting_count("loan_stacking", int(params["max_applications"]))
    window = DEFAULT_IDENTITY_PARAMS.loan_window_seconds
    rng = ctx.rng
    victim = ctx.pick_victim(where=lambda a: "lending" not in a.kinds) or ctx.any_victim()
    count = rng.randint(needed, needed + 2)
    longest_gap = min(16 * _HOUR, 0.9 * window / count)
    at = ctx.now
    for number in range(1, count + 1):
        at += rng.uniform(min(1_800.0, longest_gap), longest_gap)
        yield ctx.event(
            victim.account_id, at, "loan_application",
            amount_minor=_whole_yuan(300_000, 3_000_000, rng), labelled=number >= needed,
            loan_id=f"loan-{victim.index:07d}-s{rng.getrandbits(24):06x}",
            term_months=rng.choice(_LOAN_TERMS), age_band=victim.age_band,
            national_id=victim.national_id, phone=victim.phone, channel="app",
            region=victim.region, device_id=victim.devices[0],
        )  # fmt: skip


def _pledge(
    ctx: IncidentContext, backer: SimAccount | Newcomer, at: float, amount_minor: int,
    project_id: str, owner: SimAccount, *, labelled: bool = False, kind: str = "pledge",
) -> PlannedEvent:
    """A pledge (or its refund) to ``project_id``; a newcomer's from its device."""
    fields: dict[str, Any] = {"channel": "app", "region": backer.region}
    if isinstance(backer, Newcomer):
        fields["device_id"] = backer.device_id
    return ctx.event(
        backer.account_id, at, kind, amount_minor=amount_minor, labelled=labelled,
        project_id=project_id, counterparty_id=owner.account_id, **fields,
    )  # fmt: skip


def pledge_churn(ctx: IncidentContext) -> Iterator[PlannedEvent]:
    """A new project's backers pledge and are refunded within days: its ranking inflated.

    An account of the population starts a project (a new id, so no genuine
    backer yet); 6 to 9 ordinary accounts (fewer than the suspicious-pledging
    detector's ``min_pledges``) pledge 1,000.00 to 8,000.00 each to it within
    a day; one to three days after the last pledge, enough of them are refunded,
    an hour or so apart, to reach the pledge-churn detector's ``min_refunds``
    and ``min_churn_ratio``. The refunds from the one that reaches both limits
    on are labelled, with one incident id (each is another backer's event).
    """
    params = _default_params("pledge_churn")
    min_refunds, min_ratio = int(params["min_refunds"]), float(params["min_churn_ratio"])
    threshold = float(DEFAULT_CONFIG["detectors"]["pledge_churn"]["threshold"])
    pledging_limit = _alerting_count(
        "suspicious_pledging", int(_default_params("suspicious_pledging")["min_pledges"])
    )
    rng = ctx.rng

    def first_alerting(backers: int) -> int:
        """The refund number from which the detector's score reaches its threshold."""
        return next(
            (k for k in range(1, backers + 1)
             if min(k / min_refunds, k / backers / min_ratio) >= threshold),
            backers + 1,
        )  # fmt: skip

    lowest = max(6, _alerting_count("pledge_churn", min_refunds))
    count = rng.randint(lowest, max(lowest, pledging_limit - 1))
    needed = first_alerting(count)
    owner = ctx.pick_victim() or ctx.any_victim()
    project = ctx.traffic.new_project_id()
    backers = ctx.bystanders(count, exclude=(owner.account_id,))
    at = ctx.now + rng.uniform(10.0, 600.0)
    span = rng.uniform(2 * _HOUR, _DAY)
    pledges = []
    for offset, backer in zip(sorted(rng.uniform(0.0, span) for _ in backers), backers,
                              strict=True):
        amount = _whole_yuan(100_000, 800_000, rng)
        pledges.append((backer, amount))
        yield _pledge(ctx, backer, at + offset, amount, project, owner)
    at += span + rng.uniform(_DAY, 3 * _DAY)
    refunded = rng.sample(pledges, min(len(pledges), rng.randint(needed, needed + 2)))
    for number, (backer, amount) in enumerate(refunded, start=1):
        at += rng.uniform(600.0, 2 * _HOUR)
        yield _pledge(
            ctx, backer, at, amount, project, owner, labelled=number >= needed,
            kind="pledge_refund",
        )  # fmt: skip


def _sybil_backers(ctx: IncidentContext, count: int) -> list[Newcomer]:
    """``count`` newcomers, one to three of them per device (fewer than a device's limit)."""
    limits: Mapping[str, int] = _default_params("identity_reuse")["min_accounts"]
    per_device = max(1, min(3, limits.get("device_id", 4) - 1))
    backers: list[Newcomer] = []
    while len(backers) < count:
        device = ctx.new_device_id()
        for _ in range(min(ctx.rng.randint(1, per_device), count - len(backers))):
            backers.append(ctx.newcomer(device_id=device))
    return backers


def _sybil_pledges(
    ctx: IncidentContext, owner: SimAccount, project: str, count: int, needed: int | None,
    at: float,
) -> Iterator[tuple[float, int, PlannedEvent]]:
    """Openings and pledges of ``count`` sybil backers over up to a day, from ``at``.

    Yields ``(time, amount, event)``; the pledges from the ``needed``-th on
    are labelled.
    """
    rng = ctx.rng
    span = rng.uniform(2 * _HOUR, _DAY)
    starts = sorted(rng.uniform(0.0, span) for _ in range(count))
    pledges = []
    for start, backer in zip(starts, _sybil_backers(ctx, count), strict=True):
        opened = at + start
        yield opened, 0, ctx.opening(backer, opened)
        pledges.append((opened + rng.uniform(60.0, 1_800.0), backer))
    pledges.sort(key=lambda pledge: pledge[0])
    for number, (when, backer) in enumerate(pledges, start=1):
        amount = _whole_yuan(50_000, 500_000, rng)
        labelled = needed is not None and number >= needed
        yield when, amount, _pledge(ctx, backer, when, amount, project, owner, labelled=labelled)


def sybil_pledging(ctx: IncidentContext) -> Iterator[PlannedEvent]:
    """A new project backed within a day by accounts opened for the purpose.

    An account of the population starts a project (a new id, no genuine
    backer); ``min_pledges`` to ``min_pledges + 6`` accounts (the
    suspicious-pledging detector's default) are opened (unlabelled), one to
    three per device, and each pledges 500.00 to 5,000.00 from its device
    within half an hour of opening, all within a day. Brand new, they make
    every pledge suspicious. The pledges from the ``min_pledges``-th on are
    labelled, with one incident id: the detector alerts on each.
    """
    params = _default_params("suspicious_pledging")
    needed = _alerting_count("suspicious_pledging", int(params["min_pledges"]))
    rng = ctx.rng
    owner = ctx.pick_victim() or ctx.any_victim()
    project = ctx.traffic.new_project_id()
    count = rng.randint(needed, needed + 6)
    start = ctx.now + rng.uniform(10.0, 600.0)
    for _, _, planned in _sybil_pledges(ctx, owner, project, count, needed, start):
        yield planned


def payout_after_sybil_pledges(ctx: IncidentContext) -> Iterator[PlannedEvent]:
    """A new project backed by a few accounts opened for the purpose, then paid out.

    Like :func:`sybil_pledging`, with ``min_pledges`` to 9 new backers of
    the suspicious-payout detector's default (fewer than the
    suspicious-pledging detector's limit, so the pledges alone raise
    nothing); 2 to 36 hours after the last pledge (within its
    ``max_delay_seconds``), the owner takes the money out in one
    ``project_payout``, which is labelled.
    """
    params = _default_params("suspicious_payout")
    needed = _alerting_count("suspicious_payout", int(params["min_pledges"]))
    pledging_limit = _alerting_count(
        "suspicious_pledging", int(_default_params("suspicious_pledging")["min_pledges"])
    )
    rng = ctx.rng
    owner = ctx.pick_victim() or ctx.any_victim()
    project = ctx.traffic.new_project_id()
    count = rng.randint(needed, max(needed, pledging_limit - 1))
    raised = 0
    last = start = ctx.now + rng.uniform(10.0, 600.0)
    for when, amount, planned in _sybil_pledges(ctx, owner, project, count, None, start):
        raised += amount
        last = max(last, when)
        yield planned
    delay = rng.uniform(2 * _HOUR, min(36 * _HOUR, 0.9 * float(params["max_delay_seconds"])))
    yield ctx.event(
        owner.account_id, last + delay, "project_payout", amount_minor=raised, labelled=True,
        project_id=project, channel="web", region=owner.region,
    )  # fmt: skip


#: Scenario name -> how to inject it and which detector should catch it.
SCENARIOS: dict[str, Scenario] = {
    "velocity_burst": Scenario(
        "velocity", velocity_burst, "15-20 payments in under 40 s to distinct merchants"
    ),
    "amount_spike": Scenario(
        "amount_outlier", amount_spike, "one payment >= 60x the account's usual"
    ),
    "structuring": Scenario(
        "structuring", structuring, "3-5 top-ups just under the reporting threshold within a day"
    ),
    "rapid_pass_through": Scenario(
        "rapid_pass_through", rapid_pass_through, "a large top-up sent on within minutes"
    ),
    "fan_out": Scenario(
        "fan_out", fan_out, "transfers to a dozen or more new accounts within hours"
    ),
    "fund_segregation": Scenario(
        "fund_segregation", fund_segregation, "an escrow account pays a platform account"
    ),
    "precipitated_funds": Scenario(
        "precipitated_funds", precipitated_funds, "a large balance left past the dwell time"
    ),
    "account_takeover": Scenario(
        "account_takeover", account_takeover,
        "new device, phone changed, account emptied within the hour",
    ),
    "blacklisted_identity": Scenario(
        "blacklist", blacklisted_identity, "a loan application by a listed person"
    ),
    "borrow_and_vanish": Scenario(
        "borrow_and_vanish", borrow_and_vanish, "a loan cashed out and not repaid by its due date"
    ),
    # -- derived stages: patterns across accounts, identities and projects
    "laundering_ring": Scenario(
        "cycle", laundering_ring, "money passed round 3-8 accounts back to its origin in 2 days",
        spans_accounts=True,
    ),
    "scatter_gather": Scenario(
        "scatter_gather", scatter_gather,
        "one account's money split over 3-6 intermediaries and recombined at another",
        spans_accounts=True,
    ),
    "gather_scatter": Scenario(
        "gather_scatter", gather_scatter, "a new account paid by 5-8 accounts, then paying 5-8",
    ),
    "fan_in": Scenario(
        "fan_in", fan_in, "a new account paid by 20-28 strangers within hours",
        spans_accounts=True,
    ),
    "shared_identity": Scenario(
        "identity_reuse", shared_identity,
        "5-8 accounts opened from one device, or 3-4 with one national ID",
        spans_accounts=True,
    ),
    "loan_stacking": Scenario(
        "loan_stacking", loan_stacking, "3-5 loan applications by one customer within days"
    ),
    "pledge_churn": Scenario(
        "pledge_churn", pledge_churn, "a new project's backers refunded within days",
        spans_accounts=True,
    ),
    "sybil_pledging": Scenario(
        "suspicious_pledging", sybil_pledging,
        "a new project backed by 10-16 accounts opened the same day",
        spans_accounts=True,
    ),
    "payout_after_sybil_pledges": Scenario(
        "suspicious_payout", payout_after_sybil_pledges,
        "a project backed by 5-9 brand-new accounts paid out within 36 hours",
    ),
}


