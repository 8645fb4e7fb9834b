"""Labelled, seeded traffic for txwatch, and the publisher that sends it to Kafka.

Two halves, one direction:

* :func:`generate` is pure: a seeded population of accounts (profiles,
  favourite merchants, contacts, devices, loans, crowdfunding projects) whose
  events follow a daily rhythm in *event time*, with labelled scenarios
  injected at regular intervals. No broker, no wall clock: the same arguments
  give the same events, byte for byte, which is what benchmarks and backtests
  need (:func:`write_jsonl` pre-generates a file).
* :func:`simulate` and :func:`replay` publish with aiokafka: lending events to
  ``settings.lending_topic``, everything else to ``settings.payments_topic``,
  keyed by ``account_id``.

Event time is a simulated clock, independent of the wall clock: it starts at
``start`` and advances by the population's own inter-arrival times (accounts x
their daily activity x the hour's weight), so every account behaves as a real
one would whatever the publishing rate. Publishing is paced separately: at
``rate`` events per second, or (``acceleration``) so that event time runs that
many times faster than the wall clock, or as fast as possible. The daily
rhythm is defined in China Standard Time (UTC+8), the currency being CNY, so
the busiest UTC hours are 11-13 and the quietest 18-21.

A scenario is a function from an :class:`IncidentContext` to the events it
adds (:class:`PlannedEvent`), registered in :data:`SCENARIOS` with the name of
the detector expected to catch it. The events a detector should flag carry
``"label": "<scenario>"`` and are listed in the labels file; context events a
scenario adds to make its victim plausible (the small payments before a
spike) are unlabelled, like the background they imitate. The labelled events
of a scenario whose incidents span several accounts (a ring, a device farm)
also carry ``"incident": "<scenario>-<seed>-<round>"``, so that scoring counts
each of its incidents once, not once per account.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import dataclasses
import heapq
import inspect
import itertools
import math
import random
import statistics
import time
from collections import Counter, deque
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import IO, Any, Final, Protocol

import orjson

from detectors.flow import DEFAULT_FLOW_PARAMS
from detectors.identity import DEFAULT_IDENTITY_PARAMS
from detectors.money import contract_amount
from detectors.registry import DEFAULT_CONFIG, DETECTORS, STAGE_DETECTORS
from streams import clients
from streams.events import EVENT_TYPES, LENDING_TYPES
from streams.settings import Settings

__all__ = [
    "DEFAULT_ACCOUNTS",
    "DEFAULT_START",
    "DISHONEST_PERSONS",
    "SCENARIOS",
    "IncidentContext",
    "Newcomer",
    "PlannedEvent",
    "ReplayReport",
    "Scenario",
    "SimAccount",
    "SimulationReport",
    "TrafficGenerator",
    "account_takeover",
    "amount_spike",
    "blacklisted_identity",
    "borrow_and_vanish",
    "dishonest_persons",
    "encode",
    "ensure_topics",
    "fan_in",
    "fan_out",
    "fund_segregation",
    "gather_scatter",
    "generate",
    "hourly_weight",
    "label_record",
    "laundering_ring",
    "loan_stacking",
    "message_key",
    "minor_units",
    "payout_after_sybil_pledges",
    "pledge_churn",
    "precipitated_funds",
    "rapid_pass_through",
    "replay",
    "route_line",
    "scatter_gather",
    "scenario_named",
    "shared_identity",
    "simulate",
    "simulated_traffic",
    "structuring",
    "sybil_pledging",
    "topic_for",
    "velocity_burst",
    "write_jsonl",
]

CURRENCY: Final = "CNY"
DEFAULT_ACCOUNTS: Final = 5000
#: Monday 2024-03-04 00:00 UTC, 08:00 in Shanghai: the morning rise comes first.
DEFAULT_START: Final = datetime(2024, 3, 4, tzinfo=UTC)
#: Background events between two rounds of incidents (one per requested scenario).
DEFAULT_INCIDENT_EVERY: Final = 2000
#: Index of the event at which the first round of incidents starts.
DEFAULT_FIRST_INCIDENT_AT: Final = 100
#: Accounts live in China Standard Time; the daily rhythm below is local time.
LOCAL_UTC_OFFSET_HOURS: Final = 8
#: Relative activity by local hour 0-23: asleep at 3-4, lunch, and an evening peak.
LOCAL_HOURLY_ACTIVITY: Final = (
    0.55, 0.30, 0.18, 0.12, 0.10, 0.14, 0.30, 0.65, 0.95, 1.15, 1.25, 1.35,
    1.50, 1.30, 1.15, 1.15, 1.20, 1.30, 1.45, 1.65, 1.85, 1.90, 1.55, 1.00,
)  # fmt: skip
_MEAN_LOCAL_ACTIVITY: Final = sum(LOCAL_HOURLY_ACTIVITY) / 24
#: The same weights by UTC hour, normalised to a mean of 1.
UTC_HOURLY_WEIGHTS: Final = tuple(
    LOCAL_HOURLY_ACTIVITY[(hour + LOCAL_UTC_OFFSET_HOURS) % 24] / _MEAN_LOCAL_ACTIVITY
    for hour in range(24)
)
#: Payments an account needs before it can be an ``amount_spike`` victim as is.
SPIKE_HISTORY: Final = 20
#: Progress lines are this many seconds apart.
PROGRESS_EVERY: Final = 2.0

_DAY: Final = 86_400.0
_HOUR: Final = 3_600.0
_MONTH_DAYS: Final = 30


def hourly_weight(hour_utc: int) -> float:
    """Relative event rate at this UTC hour (mean 1 over a day)."""
    return UTC_HOURLY_WEIGHTS[hour_utc % 24]


# -- the population ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Profile:
    """A kind of customer: how often it acts and how much it moves.

    Parameters
    ----------
    name
        Short identifier, e.g. ``"student"``.
    share
        Fraction of the accounts with this profile.
    events_per_day
        Mean events per simulated day of such an account (each account draws
        its own level around it).
    payment_median_minor
        Median payment in minor units (each account draws its own around it).
    payment_sigma
        Standard deviation of ``log(amount)`` of the account's payments.
    borrows
        Probability that the account uses the lending product.
    backs_projects
        Relative weight of crowdfunding in the account's activity.
    age_bands
        Age bands the holders fall in, with weights.
    """

    name: str
    share: float
    events_per_day: float
    payment_median_minor: int
    payment_sigma: float
    borrows: float
    backs_projects: float
    age_bands: tuple[tuple[str, float], ...]


PROFILES: Final = (
    Profile("student", 0.22, 6.0, 2_800, 0.7, 0.10, 1.5,
            (("18-24", 0.9), ("25-34", 0.1))),
    Profile("salaried", 0.40, 10.0, 8_500, 0.9, 0.25, 1.0,
            (("25-34", 0.5), ("35-44", 0.35), ("45-54", 0.15))),
    Profile("family", 0.16, 14.0, 16_000, 1.0, 0.30, 0.7,
            (("35-44", 0.5), ("45-54", 0.35), ("55-64", 0.15))),
    Profile("small_business", 0.12, 30.0, 42_000, 1.1, 0.45, 0.5,
            (("25-34", 0.3), ("35-44", 0.4), ("45-54", 0.3))),
    Profile("affluent", 0.06, 8.0, 120_000, 1.0, 0.10, 1.2,
            (("35-44", 0.3), ("45-54", 0.3), ("55-64", 0.25), ("65+", 0.15))),
    Profile("retired", 0.04, 4.0, 6_000, 0.8, 0.05, 0.3,
            (("55-64", 0.4), ("65+", 0.6))),
)  # fmt: skip

#: Merchant industries: name, relative popularity, ticket size relative to the
#: account's usual payment.
INDUSTRIES: Final = (
    ("groceries", 0.24, 0.7), ("restaurants", 0.20, 0.8), ("transport", 0.12, 0.4),
    ("utilities", 0.06, 1.6), ("apparel", 0.09, 1.6), ("electronics", 0.05, 3.0),
    ("travel", 0.04, 4.0), ("education", 0.03, 3.0), ("healthcare", 0.05, 1.5),
    ("entertainment", 0.06, 1.0), ("gaming", 0.05, 0.5), ("jewelry", 0.01, 5.0),
)  # fmt: skip
#: Regions (ISO 3166-2:CN), weight, IPv4 /16 prefixes, national id area codes.
REGIONS: Final = (
    ("CN-GD", 0.20, ("113.96", "14.17", "120.230"), ("440300", "440100")),
    ("CN-SH", 0.14, ("101.80", "116.224"), ("310101", "310115")),
    ("CN-BJ", 0.12, ("123.112", "111.192"), ("110101", "110105")),
    ("CN-ZJ", 0.12, ("115.192", "60.176"), ("330100", "330200")),
    ("CN-JS", 0.11, ("114.222", "58.212"), ("320100", "320500")),
    ("CN-SC", 0.09, ("171.208", "182.144"), ("510100", "510700")),
    ("CN-HB", 0.08, ("59.172", "116.211"), ("420100", "420500")),
    ("CN-SD", 0.08, ("112.224", "27.210"), ("370100", "370200")),
    ("CN-FJ", 0.06, ("110.80", "27.148"), ("350100", "350200")),
)  # fmt: skip
_AGE_BIRTH_YEARS: Final = {
    "18-24": (2000, 2005), "25-34": (1990, 1999), "35-44": (1980, 1989),
    "45-54": (1970, 1979), "55-64": (1960, 1969), "65+": (1940, 1959),
}  # fmt: skip
#: What an account does, by relative weight; ``crowdfunding`` and ``lending``
#: are scaled per account (see :class:`Profile`).
BASE_ACTIVITY: Final = (
    ("payment", 0.56), ("top_up", 0.09), ("transfer", 0.09), ("withdrawal", 0.04),
    ("refund", 0.025), ("login", 0.12), ("credential_change", 0.006),
    ("crowdfunding", 0.012), ("lending", 0.05),
)  # fmt: skip
_CHANNELS: Final = (("app", 0.78), ("web", 0.15), ("mini_program", 0.07))
_CREDENTIAL_KINDS: Final = (("password", 0.5), ("phone", 0.12), ("email", 0.23), ("device", 0.15))
_PLEDGE_SIZES_MINOR: Final = (1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000)
_PLEDGE_WEIGHTS: Final = (10, 14, 22, 24, 14, 9, 5, 2)
_LOAN_TERMS: Final = (3, 6, 12, 24)
_BANKS: Final = ("bank-icbc", "bank-ccb", "bank-abc", "bank-boc", "bank-cmb", "bank-bocom")
_NATIONAL_ID_WEIGHTS: Final = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def _cumulative(weights: Iterable[float]) -> list[float]:
    return list(itertools.accumulate(weights))


def _pick(rng: random.Random, items: Sequence[tuple[str, float]]) -> str:
    return rng.choices(items, weights=[w for _, w in items])[0][0]


def minor_units(amount: str) -> int:
    """Integer hundredths of a contract amount string, e.g. ``"48000.5" -> 4800050``."""
    major, _, cents = amount.partition(".")
    if not major.isdigit() or len(cents) > 2 or (cents and not cents.isdigit()):
        message = f"not a contract amount: {amount!r}"
        raise ValueError(message)
    return int(major) * 100 + int(cents.ljust(2, "0"))


@dataclass(slots=True, eq=False)
class Merchant:
    """A merchant accounts pay: its id, industry and ticket-size factor."""

    merchant_id: str
    industry: str
    ticket_factor: float


@dataclass(slots=True)
class _Project:
    project_id: str
    owner: SimAccount
    raised_minor: int = 0


@dataclass(slots=True)
class _Loan:
    loan_id: str
    principal_minor: int
    instalment_minor: int
    term_months: int
    disbursed_at: float
    repaid_minor: int = 0
    #: Probability that a chance to repay is skipped: the risky borrowers fall behind.
    skips: float = 0.1

    @property
    def outstanding_minor(self) -> int:
        return max(0, self.instalment_minor * self.term_months - self.repaid_minor)

    def days_past_due(self, now: float) -> int:
        covered = self.repaid_minor // max(1, self.instalment_minor)
        next_due = self.disbursed_at + (covered + 1) * _MONTH_DAYS * _DAY
        return max(0, math.floor((now - next_due) / _DAY))


@dataclass(slots=True)
class _Application:
    loan_id: str
    requested_minor: int
    term_months: int
    approved: bool


@dataclass(slots=True)
class SimAccount:
    """One simulated customer and what the simulation remembers about it."""

    index: int
    account_id: str
    profile: Profile
    activity: float
    payment_mu: float
    payment_sigma: float
    region: str
    ip_prefix: str
    devices: list[str]
    phone: str
    national_id: str
    age_band: str
    favourites: list[Merchant]
    contacts: list[str]
    kinds: tuple[str, ...]
    kind_cumulative: list[float]
    opened: bool = True
    loan: _Loan | None = None
    application: _Application | None = None
    loans_taken: int = 0
    project: _Project | None = None
    pledges: list[tuple[_Project, int]] = field(default_factory=list)
    recent_payments: deque[tuple[Merchant, int]] = field(default_factory=lambda: deque(maxlen=16))
    payment_amounts: deque[int] = field(default_factory=lambda: deque(maxlen=64))
    payments: int = 0

    @property
    def usual_payment_minor(self) -> int:
        """Median of its recent payments, or of its profile before it has any."""
        if self.payment_amounts:
            return int(statistics.median(self.payment_amounts))
        return round(math.exp(self.payment_mu))


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


# -- the generator ----------------------------------------------------------------------


class TrafficGenerator(Iterator[dict[str, Any]]):
    """Iterator over simulated events in event-time order (see :func:`generate`).

    After iteration, :attr:`incidents` counts the incidents started per
    scenario and :attr:`now` is the event time of the last event (epoch seconds).
    Scenario names are looked up in :attr:`registry` (:data:`SCENARIOS`; the
    population variants of :mod:`streams.populations` add their own).
    """

    registry: Mapping[str, Scenario] = SCENARIOS

    def __init__(
        self,
        seed: int = 0,
        *,
        accounts: int = DEFAULT_ACCOUNTS,
        start: datetime = DEFAULT_START,
        scenarios: Sequence[str] | None = None,
        events: int | None = None,
        incident_every: int = DEFAULT_INCIDENT_EVERY,
        first_incident_at: int = DEFAULT_FIRST_INCIDENT_AT,
    ) -> None:
        if accounts < 10:
            message = f"accounts must be at least 10, not {accounts}"
            raise ValueError(message)
        if start.tzinfo is None:
            message = f"start must be timezone-aware, not {start.isoformat()}"
            raise ValueError(message)
        if events is not None and events < 0:
            message = f"events must be >= 0, not {events}"
            raise ValueError(message)
        if incident_every < 1 or first_incident_at < 0:
            message = "incident_every must be >= 1 and first_incident_at >= 0"
            raise ValueError(message)
        self.scenarios: tuple[str, ...] = _checked_scenarios(scenarios, self.registry)
        self.seed = seed
        self.start = start.astimezone(UTC)
        self.limit = events
        self.incident_every = incident_every
        self.emitted = 0
        self.incidents: Counter[str] = Counter()
        self.victims: set[int] = set()
        self.experienced: list[SimAccount] = []
        self._rng = random.Random(f"txwatch-traffic/{seed}")
        self._next_incident_at = first_incident_at
        self._round = 0
        self._planned: list[tuple[float, int, PlannedEvent]] = []
        self._planned_seq = itertools.count()
        self._id_prefix = f"sim-{seed}-"
        self._second_cache: tuple[int, str] = (-1, "")
        self._build_population(random.Random(f"txwatch-population/{seed}"), accounts)
        # Accounts and projects that scenarios open are numbered after the population's.
        self._newcomer_numbers = itertools.count(accounts)
        self._project_numbers = itertools.count(max(5, accounts // 60))
        self._builders: dict[str, Callable[[SimAccount, float], dict[str, Any]]] = {
            "payment": self._payment,
            "top_up": self._top_up,
            "transfer": self._transfer,
            "withdrawal": self._withdrawal,
            "refund": self._refund,
            "login": self._login,
            "credential_change": self._credential_change,
            "crowdfunding": self._crowdfunding,
            "lending": self._lending,
        }
        total_activity = self._activity_cumulative[-1]
        self._base_rate = total_activity / _DAY  # events per simulated second, mean hour
        self.now = self.start.timestamp()
        self._next_background_at = self._advance(self.now)

    def new_account_id(self) -> str:
        """The id of an account a scenario opens, after the population's own."""
        return f"acct-{next(self._newcomer_numbers):07d}"

    def new_project_id(self) -> str:
        """The id of a crowdfunding project a scenario starts, after the population's own."""
        return f"proj-{next(self._project_numbers):05d}"

    # -- population --------------------------------------------------------------------
    def _build_population(self, rng: random.Random, count: int) -> None:
        industry_names = [name for name, _, _ in INDUSTRIES]
        industry_weights = [weight for _, weight, _ in INDUSTRIES]
        factors = {name: factor for name, _, factor in INDUSTRIES}
        self.merchants: list[Merchant] = []
        for number in range(max(60, count // 4)):
            industry = rng.choices(industry_names, weights=industry_weights)[0]
            self.merchants.append(Merchant(f"m-{number:06d}", industry, factors[industry]))
        # A few merchants take most of the payments (Zipf-like popularity).
        popularity = _cumulative(1.0 / (rank + 1) ** 0.9 for rank in range(len(self.merchants)))
        self._merchant_cumulative = popularity

        profile_cumulative = _cumulative(p.share for p in PROFILES)
        region_cumulative = _cumulative(weight for _, weight, _, _ in REGIONS)
        start_year = self.start.year
        self.accounts: list[SimAccount] = []
        for index in range(count):
            profile = PROFILES[
                min(
                    bisect.bisect(profile_cumulative, rng.random() * profile_cumulative[-1]),
                    len(PROFILES) - 1,
                )
            ]
            region, _, ip_prefixes, areas = REGIONS[
                min(
                    bisect.bisect(region_cumulative, rng.random() * region_cumulative[-1]),
                    len(REGIONS) - 1,
                )
            ]
            age_band = _pick(rng, profile.age_bands)
            low, high = _AGE_BIRTH_YEARS[age_band]
            birth_year = min(rng.randint(low, high), start_year - 18)
            favourites: list[Merchant] = []
            for _ in range(8):
                merchant = self._popular_merchant(rng)
                if merchant not in favourites:
                    favourites.append(merchant)
            kinds, weights = self._activity_mix(rng, profile)
            account = SimAccount(
                index=index,
                account_id=f"acct-{index:07d}",
                profile=profile,
                activity=profile.events_per_day * rng.lognormvariate(0.0, 0.6),
                payment_mu=math.log(profile.payment_median_minor) + rng.gauss(0.0, 0.4),
                payment_sigma=profile.payment_sigma * rng.uniform(0.8, 1.2),
                region=region,
                ip_prefix=rng.choice(ip_prefixes),
                devices=[f"dev-{rng.getrandbits(48):012x}" for _ in range(rng.choice((1, 1, 2)))],
                phone=f"1{rng.choice('3589')}{rng.randrange(10**9):09d}",
                national_id=_national_id(rng, rng.choice(areas), birth_year),
                age_band=age_band,
                favourites=favourites,
                contacts=[],
                kinds=kinds,
                kind_cumulative=_cumulative(weights),
                opened=rng.random() > 0.03,
            )
            self.accounts.append(account)
        for account in self.accounts:
            account.contacts = [
                f"acct-{rng.randrange(count):07d}" for _ in range(rng.randint(2, 6))
            ]
            account.contacts = [c for c in account.contacts if c != account.account_id] or [
                f"acct-{(account.index + 1) % count:07d}"
            ]
        self._activity_cumulative = _cumulative(a.activity for a in self.accounts)
        self.projects: list[_Project] = []
        for number in range(max(5, count // 60)):
            owner = self.accounts[rng.randrange(count)]
            if owner.project is None:
                owner.project = _Project(f"proj-{number:05d}", owner)
                self.projects.append(owner.project)
                owner.kinds, owner.kind_cumulative = self._owner_mix(owner)
        self._project_cumulative = _cumulative(
            1.0 / (rank + 1) ** 0.7 for rank in range(len(self.projects))
        )
        now = self.start.timestamp()
        for account in self.accounts:
            # Loans taken before the simulation: some borrowers are already behind.
            if "lending" in account.kinds and rng.random() < 0.5:
                account.loan = self._existing_loan(rng, account, now)

    def _activity_mix(
        self, rng: random.Random, profile: Profile
    ) -> tuple[tuple[str, ...], list[float]]:
        kinds: list[str] = []
        weights: list[float] = []
        borrower = rng.random() < profile.borrows
        for kind, weight in BASE_ACTIVITY:
            if kind == "lending" and not borrower:
                continue
            if kind == "crowdfunding":
                weight *= profile.backs_projects
            kinds.append(kind)
            weights.append(weight)
        return tuple(kinds), weights

    @staticmethod
    def _owner_mix(owner: SimAccount) -> tuple[tuple[str, ...], list[float]]:
        # Project owners spend part of their activity on their project.
        weights = [
            b - a
            for a, b in zip([0.0, *owner.kind_cumulative], owner.kind_cumulative, strict=False)
        ]
        kinds = list(owner.kinds)
        weights[kinds.index("crowdfunding")] += 0.05
        return tuple(kinds), _cumulative(weights)

    def _existing_loan(self, rng: random.Random, account: SimAccount, now: float) -> _Loan:
        account.loans_taken += 1
        term = rng.choice(_LOAN_TERMS)
        months_ago = rng.randint(0, term - 1)
        disbursed = now - (months_ago * _MONTH_DAYS + rng.uniform(1.0, 29.0)) * _DAY
        principal = self._loan_amount(rng, account)
        instalment = math.ceil(principal * (1 + 0.012 * term) / term)
        risky = rng.random() < 0.2
        paid = max(0, months_ago - rng.randint(1, 7)) if risky else months_ago
        return _Loan(
            loan_id=f"loan-{account.index:07d}-{account.loans_taken}",
            principal_minor=principal,
            instalment_minor=instalment,
            term_months=term,
            disbursed_at=disbursed,
            repaid_minor=paid * instalment,
            skips=0.85 if risky else 0.1,
        )

    @staticmethod
    def _loan_amount(rng: random.Random, account: SimAccount) -> int:
        median = 60.0 * math.exp(account.payment_mu)
        return max(100_000, round(rng.lognormvariate(math.log(median), 0.6) / 10_000) * 10_000)

    def _popular_merchant(self, rng: random.Random) -> Merchant:
        cumulative = self._merchant_cumulative
        position = bisect.bisect(cumulative, rng.random() * cumulative[-1])
        return self.merchants[min(position, len(self.merchants) - 1)]

    # -- the clock ---------------------------------------------------------------------
    def _advance(self, now: float) -> float:
        """Next background event time: a Poisson process whose rate follows the hour."""
        rng = self._rng
        while True:
            hour_start = math.floor(now / _HOUR) * _HOUR
            rate = self._base_rate * UTC_HOURLY_WEIGHTS[int(hour_start // _HOUR) % 24]
            candidate = now + rng.expovariate(rate)
            boundary = hour_start + _HOUR
            if candidate < boundary:
                return candidate
            # Memoryless: restart the draw at the hour boundary with its new rate.
            now = boundary

    def _format(self, epoch: float) -> str:
        millis = math.floor(epoch * 1000)
        second, milli = divmod(millis, 1000)
        cached_second, prefix = self._second_cache
        if second != cached_second:
            prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second_cache = (second, prefix)
        return f"{prefix}.{milli:03d}Z"

    def _envelope(self, event_type: str, account: SimAccount, at: float) -> dict[str, Any]:
        event_id = f"{self._id_prefix}{self.emitted:010d}"
        return {
            "event_id": event_id,
            "event_type": event_type,
            "occurred_at": self._format(at),
            "account_id": account.account_id,
        }

    # -- iteration ---------------------------------------------------------------------
    def __iter__(self) -> TrafficGenerator:
        return self

    def __next__(self) -> dict[str, Any]:
        limit = self.limit
        if limit is not None and self.emitted >= limit:
            raise StopIteration
        if self.emitted == self._next_incident_at:
            self._start_incidents()
            self._next_incident_at += self.incident_every
        planned = self._planned
        if planned and (
            planned[0][0] <= self._next_background_at
            or (limit is not None and len(planned) >= limit - self.emitted)
        ):
            event = self._emit_planned(heapq.heappop(planned)[2])
        else:
            at = self._next_background_at
            event = self._background(at)
            self.now = at
            self._next_background_at = self._advance(at)
        self.emitted += 1
        return event

    @property
    def next_time(self) -> float:
        """Event time (epoch seconds) of the event the next call will return."""
        if self._planned:
            return min(self._planned[0][0], self._next_background_at)
        return self._next_background_at

    def _room(self) -> int | None:
        """Events still free in the budget after those already planned."""
        if self.limit is None:
            return None
        return self.limit - self.emitted - len(self._planned)

    def drain(self) -> Iterator[dict[str, Any]]:
        """The events still planned (started incidents, follow-ups), then stop.

        For a run stopped by time: labelled incidents are never left half-sent.
        """
        while self._planned:
            event = self._emit_planned(heapq.heappop(self._planned)[2])
            self.emitted += 1
            yield event

    def _emit_planned(self, planned: PlannedEvent) -> dict[str, Any]:
        at = max(planned.at, self.now)
        self.now = at
        body = planned.body
        event: dict[str, Any] = {
            "event_id": f"{self._id_prefix}{self.emitted:010d}",
            "event_type": body["event_type"],
            "occurred_at": self._format(at),
            "account_id": planned.account_id,
        }
        for key, value in body.items():
            if key != "event_type":
                event[key] = value
        if planned.label is not None:
            event["label"] = planned.label
        if planned.incident is not None:
            event["incident"] = planned.incident
        return event

    def _plan(self, planned: PlannedEvent) -> None:
        heapq.heappush(self._planned, (planned.at, next(self._planned_seq), planned))

    def _start_incidents(self) -> None:
        for name in self.scenarios:
            rng = random.Random(f"txwatch-incident/{self.seed}/{self._round}/{name}")
            context = IncidentContext(self, name, rng, self.now)
            scenario = self.registry[name]
            incident = list(scenario.inject(context))
            budget = self._room()
            if not incident or (budget is not None and len(incident) > budget):
                continue
            tag = f"{name}-{self.seed}-{self._round}" if scenario.spans_accounts else None
            for planned in incident:
                if tag is not None and planned.label is not None:
                    planned = dataclasses.replace(planned, incident=tag)
                self._plan(planned)
            self.incidents[name] += 1
        self._round += 1

    # -- background events -------------------------------------------------------------
    def _background(self, at: float) -> dict[str, Any]:
        rng = self._rng
        cumulative = self._activity_cumulative
        account = self.accounts[
            min(bisect.bisect(cumulative, rng.random() * cumulative[-1]), len(self.accounts) - 1)
        ]
        if not account.opened:
            account.opened = True
            return self._account_opened(account, at)
        position = bisect.bisect(
            account.kind_cumulative, rng.random() * account.kind_cumulative[-1]
        )
        kind = account.kinds[min(position, len(account.kinds) - 1)]
        return self._builders[kind](account, at)

    def _channel(self) -> str:
        roll = self._rng.random()
        return "app" if roll < 0.78 else "web" if roll < 0.93 else "mini_program"

    def _device(self, account: SimAccount) -> str:
        if self._rng.random() < 0.02:
            return f"dev-{self._rng.getrandbits(48):012x}"  # a new phone, a borrowed laptop
        devices = account.devices
        return devices[int(self._rng.random() * len(devices))] if len(devices) > 1 else devices[0]

    def _ip(self, account: SimAccount) -> str:
        rng = self._rng
        if rng.random() < 0.05:  # travelling, mobile data
            network = f"{rng.randrange(1, 224)}.{rng.randrange(256)}"
            return f"{network}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        return f"{account.ip_prefix}.{rng.randrange(256)}.{rng.randrange(1, 255)}"

    def _payment(self, account: SimAccount, at: float) -> dict[str, Any]:
        rng = self._rng
        if rng.random() < 0.8:
            favourites = account.favourites
            merchant = favourites[int(rng.random() * len(favourites))]
        else:
            merchant = self._popular_merchant(rng)
        mu = account.payment_mu + math.log(merchant.ticket_factor)
        amount = max(100, round(math.exp(rng.gauss(mu, account.payment_sigma))))
        event = self._envelope("payment", account, at)
        event["amount"] = contract_amount(amount)
        event["currency"] = CURRENCY
        event["counterparty_id"] = merchant.merchant_id
        event["merchant_id"] = merchant.merchant_id
        event["industry"] = merchant.industry
        channel = self._channel()
        event["channel"] = channel
        event["region"] = account.region
        if channel != "web":
            event["device_id"] = self._device(account)
        account.recent_payments.append((merchant, amount))
        account.payment_amounts.append(amount)
        account.payments += 1
        if account.payments == SPIKE_HISTORY:
            self.experienced.append(account)
        return event

    def _round_amount(self, median: float, sigma: float, step_minor: int) -> int:
        drawn = self._rng.lognormvariate(math.log(median), sigma)
        return max(1, round(drawn / step_minor)) * step_minor

    def _top_up(self, account: SimAccount, at: float) -> dict[str, Any]:
        amount = self._round_amount(4.0 * math.exp(account.payment_mu), 0.7, 5_000)
        event = self._envelope("top_up", account, at)
        event["amount"] = contract_amount(amount)
        event["currency"] = CURRENCY
        event["counterparty_id"] = _BANKS[account.index % len(_BANKS)]
        event["channel"] = self._channel()
        event["region"] = account.region
        return event

    def _transfer(self, account: SimAccount, at: float) -> dict[str, Any]:
        rng = self._rng
        median = 3.0 * math.exp(account.payment_mu)
        if rng.random() < 0.5:
            amount = self._round_amount(median, 0.8, 1_000)
        else:
            amount = max(100, round(rng.lognormvariate(math.log(median), 0.8)))
        event = self._envelope("transfer", account, at)
        event["amount"] = contract_amount(amount)
        event["currency"] = CURRENCY
        event["counterparty_id"] = account.contacts[rng.randrange(len(account.contacts))]
        event["channel"] = self._channel()
        event["region"] = account.region
        event["device_id"] = self._device(account)
        return event

    def _withdrawal(self, account: SimAccount, at: float) -> dict[str, Any]:
        amount = self._round_amount(5.0 * math.exp(account.payment_mu), 0.7, 10_000)
        event = self._envelope("withdrawal", account, at)
        event["amount"] = contract_amount(amount)
        event["currency"] = CURRENCY
        event["counterparty_id"] = _BANKS[account.index % len(_BANKS)]
        event["channel"] = self._channel()
        event["region"] = account.region
        event["device_id"] = self._device(account)
        return event

    def _refund(self, account: SimAccount, at: float) -> dict[str, Any]:
        rng = self._rng
        if not account.recent_payments:
            return self._payment(account, at)
        merchant, paid = account.recent_payments.pop()
        amount = paid if rng.random() < 0.7 else max(1, round(paid * rng.uniform(0.1, 0.9)))
        event = self._envelope("refund", account, at)
        event["amount"] = contract_amount(amount)
        event["currency"] = CURRENCY
        event["counterparty_id"] = merchant.merchant_id
        event["merchant_id"] = merchant.merchant_id
        event["industry"] = merchant.industry
        event["region"] = account.region
        return event

    def _login(self, account: SimAccount, at: float) -> dict[str, Any]:
        event = self._envelope("login", account, at)
        event["channel"] = self._channel()
        event["region"] = account.region
        event["device_id"] = self._device(account)
        event["ip"] = self._ip(account)
        return event

    def _credential_change(self, account: SimAccount, at: float) -> dict[str, Any]:
        kind = _pick(self._rng, _CREDENTIAL_KINDS)
        event = self._envelope("credential_change", account, at)
        event["kind"] = kind
        event["channel"] = self._channel()
        event["region"] = account.region
        device = self._device(account)
        event["device_id"] = device
        event["ip"] = self._ip(account)
        if kind == "device" and device not in account.devices:
            account.devices.append(device)
        return event

    def _account_opened(self, account: SimAccount, at: float) -> dict[str, Any]:
        event = self._envelope("account_opened", account, at)
        event["phone"] = account.phone
        event["national_id"] = account.national_id
        event["age_band"] = account.age_band
        event["channel"] = self._channel()
        event["region"] = account.region
        event["device_id"] = account.devices[0]
        event["ip"] = self._ip(account)
        return event

    def _crowdfunding(self, account: SimAccount, at: float) -> dict[str, Any]:
        rng = self._rng
        project = account.project
        if project is not None and project.raised_minor > 0 and rng.random() < 0.5:
            event = self._envelope("project_payout", account, at)
            event["amount"] = contract_amount(project.raised_minor)
            event["currency"] = CURRENCY
            event["project_id"] = project.project_id
            event["channel"] = "web"
            event["region"] = account.region
            project.raised_minor = 0
            return event
        if account.pledges and rng.random() < 0.12:
            pledged_to, amount = account.pledges.pop(rng.randrange(len(account.pledges)))
            pledged_to.raised_minor = max(0, pledged_to.raised_minor - amount)
            event = self._envelope("pledge_refund", account, at)
            event["amount"] = contract_amount(amount)
            event["currency"] = CURRENCY
            event["project_id"] = pledged_to.project_id
            event["counterparty_id"] = pledged_to.owner.account_id
            event["region"] = account.region
            return event
        cumulative = self._project_cumulative
        target = self.projects[
            min(bisect.bisect(cumulative, rng.random() * cumulative[-1]), len(self.projects) - 1)
        ]
        amount = rng.choices(_PLEDGE_SIZES_MINOR, weights=_PLEDGE_WEIGHTS)[0]
        target.raised_minor += amount
        if len(account.pledges) < 20:
            account.pledges.append((target, amount))
        event = self._envelope("pledge", account, at)
        event["amount"] = contract_amount(amount)
        event["currency"] = CURRENCY
        event["project_id"] = target.project_id
        event["counterparty_id"] = target.owner.account_id
        event["channel"] = self._channel()
        event["region"] = account.region
        return event

    def _lending(self, account: SimAccount, at: float) -> dict[str, Any]:
        rng = self._rng
        loan = account.loan
        if loan is not None:
            if rng.random() >= loan.skips and rng.random() < 0.6:
                return self._repayment(account, loan, at)
            return self._loan_status(account, loan, at)
        application = account.application
        if application is None:
            account.loans_taken += 1
            application = _Application(
                loan_id=f"loan-{account.index:07d}-{account.loans_taken}",
                requested_minor=self._loan_amount(rng, account),
                term_months=rng.choice(_LOAN_TERMS),
                approved=rng.random() < 0.7,
            )
            account.application = application
            event = self._envelope("loan_application", account, at)
            event["amount"] = contract_amount(application.requested_minor)
            event["currency"] = CURRENCY
            event["loan_id"] = application.loan_id
            event["term_months"] = application.term_months
            event["age_band"] = account.age_band
            event["phone"] = account.phone
            event["national_id"] = account.national_id
            event["channel"] = self._channel()
            event["region"] = account.region
            event["device_id"] = self._device(account)
            return event
        account.application = None
        if not application.approved:
            # Declined: the customer hears nothing on the event stream; it shops instead.
            return self._payment(account, at)
        principal = max(100_000, application.requested_minor * rng.choice((10, 10, 10, 8, 5)) // 10)
        term = application.term_months
        loan = _Loan(
            loan_id=application.loan_id,
            principal_minor=principal,
            instalment_minor=math.ceil(principal * (1 + 0.012 * term) / term),
            term_months=term,
            disbursed_at=at,
            skips=0.7 if rng.random() < 0.12 else 0.1,
        )
        account.loan = loan
        due = datetime.fromtimestamp(at + term * _MONTH_DAYS * _DAY, UTC).date()
        event = self._envelope("loan_disbursement", account, at)
        event["amount"] = contract_amount(principal)
        event["currency"] = CURRENCY
        event["loan_id"] = loan.loan_id
        event["due_date"] = due.isoformat()
        event["term_months"] = term
        event["age_band"] = account.age_band
        if rng.random() < 0.25:
            event["dealer"] = f"dealer-{rng.randrange(40):03d}"
        event["region"] = account.region
        return event

    def _repayment(self, account: SimAccount, loan: _Loan, at: float) -> dict[str, Any]:
        rng = self._rng
        roll = rng.random()
        if roll < 0.7:
            amount = loan.instalment_minor
        elif roll < 0.8:
            amount = loan.instalment_minor * rng.randint(2, 4)  # paying ahead
        else:
            amount = max(100, round(loan.instalment_minor * rng.uniform(0.3, 0.9)))
        amount = min(amount, loan.outstanding_minor)
        loan.repaid_minor += amount
        event = self._envelope("loan_repayment", account, at)
        event["amount"] = contract_amount(amount)
        event["currency"] = CURRENCY
        event["loan_id"] = loan.loan_id
        event["channel"] = self._channel()
        event["region"] = account.region
        room = self._room()
        # The status follows the last repayment, unless the run ends first (this
        # event takes one place of the room).
        if loan.outstanding_minor == 0 and (room is None or room > 1):
            account.loan = None
            body = {
                "event_type": "loan_status",
                "loan_id": loan.loan_id,
                "status": "repaid",
                "days_past_due": 0,
                "outstanding": contract_amount(0),
                "currency": CURRENCY,
            }
            self._plan(PlannedEvent(at + rng.uniform(1.0, 120.0), account.account_id, body))
        return event

    def _loan_status(self, account: SimAccount, loan: _Loan, at: float) -> dict[str, Any]:
        days = loan.days_past_due(at)
        if days > 180:
            status = "written_off"
            account.loan = None
        else:
            status = "delinquent" if days > 0 else "current"
        event = self._envelope("loan_status", account, at)
        event["loan_id"] = loan.loan_id
        event["status"] = status
        event["days_past_due"] = days
        event["outstanding"] = contract_amount(loan.outstanding_minor)
        event["currency"] = CURRENCY
        return event


def _national_id(rng: random.Random, area: str, birth_year: int) -> str:
    """A synthetic 18-character resident id with a valid ISO 7064 check character."""
    body = (
        f"{area}{birth_year:04d}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
        f"{rng.randrange(1000):03d}"
    )
    total = sum(
        int(digit) * weight for digit, weight in zip(body, _NATIONAL_ID_WEIGHTS, strict=True)
    )
    return body + "10X98765432"[total % 11]


def _checked_scenarios(
    scenarios: Sequence[str] | None, registry: Mapping[str, Scenario] = SCENARIOS
) -> tuple[str, ...]:
    if scenarios is None:
        return tuple(SCENARIOS)
    if isinstance(scenarios, str):
        scenarios = (scenarios,)
    unknown = [name for name in scenarios if name not in registry]
    if unknown:
        message = f"unknown scenario(s) {unknown}; known: {sorted(registry)}"
        raise ValueError(message)
    return tuple(dict.fromkeys(scenarios))


def generate(
    seed: int = 0,
    *,
    accounts: int = DEFAULT_ACCOUNTS,
    start: datetime = DEFAULT_START,
    scenarios: Sequence[str] | None = None,
    events: int | None = None,
    incident_every: int = DEFAULT_INCIDENT_EVERY,
    first_incident_at: int = DEFAULT_FIRST_INCIDENT_AT,
) -> TrafficGenerator:
    """Simulated events in the contract, as dicts, in event-time order.

    Pure and deterministic: the same arguments give the same events (ids
    ``sim-<seed>-<n>`` included, so a second run of a seed is a replay to the
    worker). Nothing is read from the wall clock.

    Parameters
    ----------
    seed
        Seeds the population, the background and every incident.
    accounts
        Size of the population (at least 10).
    start
        Event time of the simulation's beginning (timezone-aware).
    scenarios
        Names from :data:`SCENARIOS` to inject; ``None`` injects them all, an
        empty sequence none.
    events
        Stop after exactly this many events (incidents that would not fit are
        not started; started ones always complete); ``None``: endless.
    incident_every
        Events between two rounds of incidents; each round starts one incident
        of every requested scenario, each with its own victim.
    first_incident_at
        Index of the event at which the first round starts.
    """
    return TrafficGenerator(
        seed,
        accounts=accounts,
        start=start,
        scenarios=scenarios,
        events=events,
        incident_every=incident_every,
        first_incident_at=first_incident_at,
    )


# -- wire helpers -----------------------------------------------------------------------


def encode(event: Mapping[str, Any]) -> bytes:
    """The message value: compact UTF-8 JSON."""
    return orjson.dumps(event)


def message_key(account_id: str) -> bytes:
    """The message key: the account id, so one account stays on one partition."""
    return account_id.encode()


def topic_for(event_type: object, settings: Settings) -> str:
    """Lending events go to the lending topic, everything else (malformed too) to payments."""
    return settings.lending_topic if event_type in LENDING_TYPES else settings.payments_topic


def scenario_named(name: str) -> Scenario | None:
    """The scenario a label names: one of :data:`SCENARIOS`, or a population variant's own."""
    registered = SCENARIOS.get(name)
    if registered is None:
        # streams.populations builds on this module, so it is imported when first needed.
        from streams.populations import VARIANT_SCENARIOS

        registered = VARIANT_SCENARIOS.get(name)
    return registered


def label_record(event: Mapping[str, Any]) -> dict[str, Any] | None:
    """The labels-file line of an injected event, ``None`` for background ones."""
    scenario = event.get("label")
    if scenario is None:
        return None
    registered = scenario_named(scenario) if isinstance(scenario, str) else None
    record = {
        "event_id": event["event_id"],
        "account_id": event["account_id"],
        "scenario": scenario,
        "expected_detector": registered.expected_detector if registered else None,
        "occurred_at": event["occurred_at"],
    }
    if "incident" in event:
        record["incident"] = event["incident"]
    return record


def write_jsonl(
    events: Iterable[Mapping[str, Any]], path: Path, *, labels_path: Path | None = None
) -> int:
    """Write events as JSON Lines (and their labels, if asked); return the count."""
    count = 0
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(Path(path).open("wb"))
        labels = stack.enter_context(Path(labels_path).open("wb")) if labels_path else None
        for event in events:
            out.write(orjson.dumps(event, option=orjson.OPT_APPEND_NEWLINE))
            if labels is not None:
                record = label_record(event)
                if record is not None:
                    labels.write(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))
            count += 1
    return count


# -- publishing -------------------------------------------------------------------------


class Producer(Protocol):
    """The part of :class:`aiokafka.AIOKafkaProducer` the publisher uses."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def flush(self) -> None: ...

    async def send(
        self, topic: str, value: bytes | None = None, key: bytes | None = None
    ) -> asyncio.Future[Any]: ...


ProducerFactory = Callable[[Settings], Producer]
Progress = Callable[[str], None]


def kafka_producer(settings: Settings) -> Producer:
    """The simulator's producer: batched for throughput, acknowledged by all replicas."""
    producer: Producer = clients.producer(
        settings, client_id="txwatch-simulator", linger_ms=20, max_batch_size=256 * 1024,
        request_timeout_ms=30_000,
    )
    return producer


async def ensure_topics(settings: Settings, topics: Iterable[str]) -> list[str]:
    """Create the missing ``topics`` with ``settings.partitions``; return those created.

    The replication factor is the number of brokers, at most 3. A topic
    created meanwhile by someone else counts as existing.
    """
    return await clients.create_topics(settings, topics, client_id="txwatch-simulator")


class _Publisher:
    """Sends messages on a drift-free schedule, counts deliveries, reports progress."""

    def __init__(
        self,
        producer: Producer,
        *,
        rate: float | None,
        acceleration: float | None,
        progress: Progress | None,
        name: str,
    ) -> None:
        self.producer = producer
        self.rate = rate
        self.acceleration = acceleration
        self.progress = progress
        self.name = name
        self.loop = asyncio.get_running_loop()
        self.started = self.loop.time()
        self.sent = 0
        self.delivered = 0
        self.failed = 0
        self.first_error: str | None = None
        self.by_topic: Counter[str] = Counter()
        self._pending: set[asyncio.Future[Any]] = set()
        self._first_event_time: float | None = None
        self._last_report = self.started
        self._sent_at_last_report = 0

    def due(self, event_time: float | None) -> float:
        """Monotonic time at which the next message should leave (absolute: no drift)."""
        if self.rate is not None:
            return self.started + self.sent / self.rate
        if self.acceleration is not None and event_time is not None:
            if self._first_event_time is None:
                self._first_event_time = event_time
            return self.started + (event_time - self._first_event_time) / self.acceleration
        return self.started

    async def send(
        self, topic: str, key: bytes | None, value: bytes, event_time: float | None = None
    ) -> None:
        delay = self.due(event_time) - self.loop.time()
        if delay > 0.002:
            await asyncio.sleep(delay)
        elif self.sent % 512 == 0:
            # Let the producer's sender task run even when never ahead of schedule.
            await asyncio.sleep(0)
        future = await self.producer.send(topic, value=value, key=key)
        self._pending.add(future)
        future.add_done_callback(self._settled)
        self.sent += 1
        self.by_topic[topic] += 1

    def _settled(self, future: asyncio.Future[Any]) -> None:
        self._pending.discard(future)
        if future.cancelled():
            error: BaseException | None = asyncio.CancelledError()
        else:
            error = future.exception()
        if error is None:
            self.delivered += 1
        else:
            self.failed += 1
            if self.first_error is None:
                self.first_error = f"{type(error).__name__}: {error}"

    def report_due(self) -> bool:
        return self.progress is not None and self.loop.time() - self._last_report >= PROGRESS_EVERY

    def report(self, detail: str) -> None:
        if self.progress is None:
            return
        now = self.loop.time()
        window = max(now - self._last_report, 1e-9)
        recent_rate = (self.sent - self._sent_at_last_report) / window
        self._last_report, self._sent_at_last_report = now, self.sent
        self.progress(
            f"{self.name}: {self.sent:,} sent, {recent_rate:,.0f}/s"
            f"{', ' + detail if detail else ''}"
        )

    async def finish(self) -> None:
        await self.producer.flush()
        if self._pending:
            await asyncio.wait(set(self._pending))

    @property
    def elapsed(self) -> float:
        return self.loop.time() - self.started


@dataclass(frozen=True, slots=True)
class SimulationReport:
    """What :func:`simulate` sent.

    ``sent`` messages were handed to the producer; ``delivered`` were
    acknowledged by the broker and ``failed`` were not (``first_error`` says
    why). ``incidents`` counts incidents per scenario, ``labelled`` the
    labelled events among those sent.
    """

    sent: int
    delivered: int
    failed: int
    by_topic: Mapping[str, int]
    by_type: Mapping[str, int]
    incidents: Mapping[str, int]
    labelled: int
    elapsed_seconds: float
    first_occurred_at: str | None
    last_occurred_at: str | None
    topics_created: tuple[str, ...] = ()
    labels_path: Path | None = None
    first_error: str | None = None

    @property
    def rate(self) -> float:
        """Events per wall-clock second over the run."""
        return self.sent / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0

    def __str__(self) -> str:
        topics = ", ".join(f"{topic}={count:,}" for topic, count in sorted(self.by_topic.items()))
        incidents = ", ".join(f"{name}={n}" for name, n in sorted(self.incidents.items())) or "none"
        lines = [
            f"simulated {self.sent:,} events in {self.elapsed_seconds:.1f} s "
            f"({self.rate:,.0f}/s): {self.delivered:,} delivered, {self.failed:,} failed",
            f"  topics: {topics or 'none'}",
            f"  event time: {self.first_occurred_at} .. {self.last_occurred_at}",
            f"  incidents: {incidents}; {self.labelled:,} labelled events"
            + (f" -> {self.labels_path}" if self.labels_path else ""),
        ]
        if self.topics_created:
            lines.append(f"  created topics: {', '.join(self.topics_created)}")
        if self.first_error:
            lines.append(f"  first error: {self.first_error}")
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class ReplayReport:
    """What :func:`replay` sent.

    ``unparseable`` lines (not JSON, or not a JSON object) and ``unknown_type``
    lines (an object whose ``event_type`` is not in the contract) were sent to
    the payments topic anyway, for the worker to dead-letter; ``blank`` lines
    were skipped.
    """

    lines: int
    sent: int
    delivered: int
    failed: int
    unparseable: int
    unknown_type: int
    blank: int
    by_topic: Mapping[str, int]
    elapsed_seconds: float
    topics_created: tuple[str, ...] = ()
    first_error: str | None = None

    @property
    def rate(self) -> float:
        return self.sent / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0

    def __str__(self) -> str:
        topics = ", ".join(f"{topic}={count:,}" for topic, count in sorted(self.by_topic.items()))
        text = (
            f"replayed {self.sent:,} of {self.lines:,} lines in {self.elapsed_seconds:.1f} s "
            f"({self.rate:,.0f}/s): {self.delivered:,} delivered, {self.failed:,} failed, "
            f"{self.unparseable:,} unparseable, {self.unknown_type:,} unknown type, "
            f"{self.blank:,} blank skipped\n  topics: {topics or 'none'}"
        )
        if self.first_error:
            text += f"\n  first error: {self.first_error}"
        return text


def _positive(name: str, value: float | None) -> None:
    if value is not None and not value > 0:
        message = f"{name} must be positive, not {value!r}"
        raise ValueError(message)


async def simulate(
    settings: Settings,
    rate: float | None = None,
    duration: float | None = None,
    events: int | None = None,
    seed: int = 0,
    scenarios: Sequence[str] | None = None,
    labels_path: Path | None = None,
    progress: Progress | None = None,
    *,
    accounts: int | None = None,
    start: datetime | None = None,
    acceleration: float | None = None,
    incident_every: int | None = None,
    create_topics: bool = True,
    producer_factory: ProducerFactory = kafka_producer,
    variant: str | None = None,
) -> SimulationReport:
    """Publish simulated traffic until ``duration`` seconds or ``events`` events.

    Parameters
    ----------
    settings
        Broker, topics and partitions.
    rate
        Events per second, scheduled against the monotonic clock (no drift);
        ``None``: as fast as possible, unless ``acceleration`` is given.
    duration
        Stop after this many seconds (incidents already started are completed).
    events
        Stop after exactly this many events. With neither limit: until cancelled.
    seed, scenarios, accounts, incident_every
        As for :func:`generate` (``None``: its defaults, or the variant's own).
    labels_path
        Write one JSON line per labelled event sent.
    progress
        Called with a line of text about every 2 s.
    start
        Event time of the first event (default :data:`DEFAULT_START`).
    acceleration
        Instead of ``rate``: pace by event time, this many simulated seconds
        per wall-clock second (the daily rhythm then shows in the send rate).
    create_topics
        Create the input topics first if missing.
    producer_factory
        Builds the producer (tests pass a fake).
    variant
        A population variant of :data:`streams.populations.VARIANTS` instead of
        the default population.
    """
    _positive("rate", rate)
    _positive("duration", duration)
    _positive("acceleration", acceleration)
    if rate is not None and acceleration is not None:
        message = "give rate or acceleration, not both"
        raise ValueError(message)
    traffic = simulated_traffic(
        variant, seed, accounts=accounts, start=start or DEFAULT_START, scenarios=scenarios,
        events=events, incident_every=incident_every,
    )  # fmt: skip
    created = await ensure_topics(settings, settings.input_topics) if create_topics else []
    producer = producer_factory(settings)
    await producer.start()
    by_type: Counter[str] = Counter()
    labelled = 0
    first_at: str | None = None
    last_at: str | None = None
    try:
        publisher = _Publisher(
            producer, rate=rate, acceleration=acceleration, progress=progress, name="simulate"
        )
        deadline = None if duration is None else publisher.started + duration
        with contextlib.ExitStack() as stack:
            labels: IO[bytes] | None = (
                stack.enter_context(Path(labels_path).open("wb")) if labels_path else None
            )

            async def send(event: dict[str, Any]) -> None:
                nonlocal labelled, first_at, last_at
                await publisher.send(
                    topic_for(event["event_type"], settings),
                    message_key(event["account_id"]),
                    encode(event),
                    traffic.now,
                )
                by_type[event["event_type"]] += 1
                if first_at is None:
                    first_at = event["occurred_at"]
                last_at = event["occurred_at"]
                record = label_record(event)
                if record is not None:
                    labelled += 1
                    if labels is not None:
                        labels.write(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))
                if publisher.report_due():
                    publisher.report(_simulation_detail(traffic, last_at))

            while True:
                # Stop before pulling an event that would leave after the deadline,
                # so no event (no labelled one either) is generated and dropped.
                if deadline is not None and (
                    max(publisher.loop.time(), publisher.due(traffic.next_time)) >= deadline
                ):
                    break
                event = next(traffic, None)
                if event is None:
                    break
                await send(event)
            for event in traffic.drain():
                await send(event)
        await publisher.finish()
        publisher.report(_simulation_detail(traffic, last_at))
    finally:
        await producer.stop()
    return SimulationReport(
        sent=publisher.sent,
        delivered=publisher.delivered,
        failed=publisher.failed,
        by_topic=dict(publisher.by_topic),
        by_type=dict(by_type),
        incidents=dict(traffic.incidents),
        labelled=labelled,
        elapsed_seconds=publisher.elapsed,
        first_occurred_at=first_at,
        last_occurred_at=last_at,
        topics_created=tuple(created),
        labels_path=labels_path,
        first_error=publisher.first_error,
    )


def simulated_traffic(
    variant: str | None, seed: int, *, accounts: int | None = None,
    start: datetime = DEFAULT_START, scenarios: Sequence[str] | None = None,
    events: int | None = None, incident_every: int | None = None,
) -> TrafficGenerator:
    """The default population's traffic (``variant`` ``None``), or a population variant's.

    ``None`` for ``accounts`` or ``incident_every`` keeps the population's own.
    """
    if variant is None:
        return generate(
            seed, accounts=DEFAULT_ACCOUNTS if accounts is None else accounts, start=start,
            scenarios=scenarios, events=events,
            incident_every=DEFAULT_INCIDENT_EVERY if incident_every is None else incident_every,
        )  # fmt: skip
    from streams.populations import variant_events  # builds on this module

    return variant_events(
        variant, seed=seed, accounts=accounts, start=start, scenarios=scenarios, events=events,
        incident_every=incident_every,
    )  # fmt: skip


def _simulation_detail(traffic: TrafficGenerator, occurred_at: str | None) -> str:
    incidents = " ".join(f"{name}={traffic.incidents[name]}" for name in traffic.scenarios)
    return f"event time {occurred_at}, incidents {incidents or 'none'}"


def route_line(raw: bytes, settings: Settings) -> tuple[str, bytes | None, str]:
    """Topic, key and kind (``event``, ``unparseable``, ``unknown_type``) of one line."""
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return settings.payments_topic, None, "unparseable"
    if not isinstance(document, dict):
        return settings.payments_topic, None, "unparseable"
    account_id = document.get("account_id")
    key = account_id.encode() if isinstance(account_id, str) and account_id else None
    event_type = document.get("event_type")
    kind = "event" if isinstance(event_type, str) and event_type in EVENT_TYPES else "unknown_type"
    return topic_for(event_type, settings), key, kind


async def replay(
    settings: Settings,
    path: Path,
    rate: float | None = None,
    progress: Progress | None = None,
    *,
    create_topics: bool = True,
    producer_factory: ProducerFactory = kafka_producer,
) -> ReplayReport:
    """Publish a JSON Lines file, each line's bytes unchanged, routed by its ``event_type``.

    Lines that are not a contract event are published to the payments topic
    all the same, so the worker dead-letters them with its reason; blank lines
    are skipped. Event times are the file's own.

    Parameters
    ----------
    settings
        Broker, topics and partitions.
    path
        The JSON Lines file (the line terminator is not part of the message).
    rate
        Lines per second on a drift-free schedule; ``None``: as fast as possible.
    progress
        Called with a line of text about every 2 s.
    create_topics, producer_factory
        As for :func:`simulate`.
    """
    _positive("rate", rate)
    created = await ensure_topics(settings, settings.input_topics) if create_topics else []
    producer = producer_factory(settings)
    await producer.start()
    kinds: Counter[str] = Counter()
    lines = 0
    try:
        publisher = _Publisher(
            producer, rate=rate, acceleration=None, progress=progress, name="replay"
        )
        with Path(path).open("rb") as source:
            for line in source:
                lines += 1
                raw = line[:-1] if line.endswith(b"\n") else line
                if not raw.strip():
                    kinds["blank"] += 1
                    continue
                topic, key, kind = route_line(raw, settings)
                kinds[kind] += 1
                await publisher.send(topic, key, raw)
                if publisher.report_due():
                    publisher.report(f"{kinds['unparseable']:,} unparseable")
        await publisher.finish()
        publisher.report(f"{kinds['unparseable']:,} unparseable")
    finally:
        await producer.stop()
    return ReplayReport(
        lines=lines,
        sent=publisher.sent,
        delivered=publisher.delivered,
        failed=publisher.failed,
        unparseable=kinds["unparseable"],
        unknown_type=kinds["unknown_type"],
        blank=kinds["blank"],
        by_topic=dict(publisher.by_topic),
        elapsed_seconds=publisher.elapsed,
        topics_created=tuple(created),
        first_error=publisher.first_error,
    )


# -- lending book (for the portfolio monitor) ---------------------------------------------
#
# A loan book on its own, independent of the traffic above: borrowers, loans
# with monthly instalments, the servicing system's status cycle, and two
# problems a risk committee should see (``streams/portfolio.py`` watches for
# them): a deteriorating cohort and a concentrated region.

#: Borrowers' industries and their weights.
BOOK_INDUSTRIES: Final = (
    ("retail", 0.22), ("services", 0.20), ("catering", 0.14), ("manufacturing", 0.14),
    ("logistics", 0.12), ("construction", 0.10), ("agriculture", 0.08),
)  # fmt: skip
BOOK_AGE_BANDS: Final = (
    ("18-24", 0.08), ("25-34", 0.30), ("35-44", 0.31), ("45-54", 0.21), ("55-64", 0.08),
    ("65+", 0.02),
)  # fmt: skip
BOOK_TERMS: Final = (6, 12, 12, 24, 36)
#: Dealers originate this share of the loans; the rest comes through the app or the web.
BOOK_DEALER_SHARE: Final = 0.3
BOOK_DEALERS: Final = 30
#: A few dealers bring more loans than the others (Zipf-like, but none dominates).
_BOOK_DEALER_NUMBERS: Final = tuple(range(1, BOOK_DEALERS + 1))
_BOOK_DEALER_WEIGHTS: Final = tuple(1.0 / number**0.5 for number in _BOOK_DEALER_NUMBERS)
#: Days past due after which the servicing system writes a loan off.
BOOK_WRITE_OFF_DAYS: Final = 180


def _book_add_months(moment: datetime, months: int) -> datetime:
    index = moment.year * 12 + moment.month - 1 + months
    year, month = divmod(index, 12)
    day = min(moment.day, (datetime(year + (month + 1) // 12, (month + 1) % 12 + 1, 1,
                                    tzinfo=UTC) - datetime(year, month + 1, 1, tzinfo=UTC)).days)
    return moment.replace(year=year, month=month + 1, day=day)


def _book_time(epoch: float) -> str:
    moment = datetime.fromtimestamp(math.floor(epoch * 1000) / 1000, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(slots=True)
class _BookLoan:
    """One simulated loan and how its borrower pays."""

    account_id: str
    loan_id: str
    disbursed_at: datetime
    principal_minor: int
    term_months: int
    region: str
    age_band: str
    industry: str
    dealer: str | None
    channel: str
    behaviour: str  # "good", "slow" or "default"
    stops_after: int  # instalments paid before a "default" borrower stops
    prepays_after: int | None  # a "good" borrower repays everything after this instalment


def _book_loan_events(loan: _BookLoan, rng: random.Random,
                      horizon: float) -> list[tuple[float, dict[str, Any]]]:
    """Disbursement, repayments and status cycle of one loan, up to ``horizon``."""
    principal, term = loan.principal_minor, loan.term_months
    instalment = math.ceil(principal * (1 + 0.012 * term) / term)
    total_due = instalment * term
    disbursed = loan.disbursed_at.timestamp()
    dues = [_book_add_months(loan.disbursed_at, k).timestamp() for k in range(1, term + 1)]
    base = {"account_id": loan.account_id, "loan_id": loan.loan_id}
    events: list[tuple[float, dict[str, Any]]] = []
    disbursement = {
        **base, "event_type": "loan_disbursement", "amount": contract_amount(principal),
        "currency": CURRENCY, "due_date": datetime.fromtimestamp(dues[-1], UTC).date().isoformat(),
        "term_months": term, "age_band": loan.age_band, "industry": loan.industry,
        "region": loan.region, "channel": loan.channel,
    }
    if loan.dealer is not None:
        disbursement["dealer"] = loan.dealer
    events.append((disbursed, disbursement))

    # When each instalment is paid (None: never).
    paid_at: list[float | None] = []
    last = disbursed
    for k, due in enumerate(dues, start=1):
        if loan.behaviour == "default" and k > loan.stops_after:
            paid_at.append(None)
            continue
        if loan.behaviour == "slow":
            planned = due + rng.uniform(-2.0, 40.0) * _DAY
        else:
            planned = due - rng.uniform(0.2, 4.0) * _DAY
        last = max(planned, last + _HOUR)
        paid_at.append(last)
    payments: list[tuple[float, int]] = []
    for k, at in enumerate(paid_at, start=1):
        if at is None:
            break
        if loan.prepays_after is not None and k > loan.prepays_after:
            # Early repayment of everything left, a few days after the last instalment.
            payments.append((payments[-1][0] + rng.uniform(1.0, 10.0) * _DAY,
                             total_due - instalment * loan.prepays_after))
            break
        payments.append((at, instalment))

    def outstanding(paid_minor: int) -> int:
        return max(0, principal - principal * paid_minor // total_due)

    def arrears_days(at: float, instalments_paid: int) -> int:
        oldest_unpaid = instalments_paid  # index of the first unpaid instalment
        if oldest_unpaid >= term or dues[oldest_unpaid] > at:
            return 0
        return math.floor((at - dues[oldest_unpaid]) / _DAY)

    def status(at: float, state: str, days: int, paid_minor: int) -> None:
        events.append((at, {
            **base, "event_type": "loan_status", "status": state, "days_past_due": days,
            "outstanding": contract_amount(0 if state == "repaid" else outstanding(paid_minor)),
            "currency": CURRENCY,
        }))

    paid_minor = 0
    instalments_paid = 0
    delinquent = False
    cycles = [due + _DAY + rng.uniform(0.0, 3.0) * _HOUR for due in dues]
    # After the term, the status keeps coming monthly until the loan is settled.
    after = _book_add_months(loan.disbursed_at, term)
    for extra in range(1, 8):
        cycles.append(_book_add_months(after, extra).timestamp() + _DAY)
    timeline = sorted([(at, "pay", amount) for at, amount in payments]
                      + [(at, "cycle", 0) for at in cycles])
    for at, kind, amount in timeline:
        if at > horizon:
            break
        if kind == "pay":
            paid_minor = min(total_due, paid_minor + amount)
            instalments_paid = min(term, paid_minor // instalment)
            events.append((at, {**base, "event_type": "loan_repayment",
                                "amount": contract_amount(amount), "currency": CURRENCY,
                                "channel": loan.channel, "region": loan.region}))
            if paid_minor >= total_due:
                status(at + rng.uniform(0.5, 3.0) * _HOUR, "repaid", 0, paid_minor)
                break
            if delinquent and arrears_days(at, instalments_paid) == 0:
                delinquent = False  # cured: the servicer says so right away
                status(at + rng.uniform(0.5, 3.0) * _HOUR, "current", 0, paid_minor)
            continue
        days = arrears_days(at, instalments_paid)
        if days > BOOK_WRITE_OFF_DAYS:
            status(at, "written_off", days, paid_minor)
            break
        delinquent = days > 0
        status(at, "delinquent" if delinquent else "current", days, paid_minor)
    return events


def lending_book(
    seed: int = 0,
    *,
    borrowers: int = 1500,
    start: datetime = DEFAULT_START,
    months: int = 9,
    origination_months: int = 6,
    default_rate: float = 0.03,
    slow_rate: float = 0.10,
    prepay_rate: float = 0.08,
    concentrated_region: str = "CN-GD",
    region_boost: float = 2.5,
    cohort_month: int = 2,
    cohort_dealer: str = "dealer-013",
    cohort_dealer_share: float = 0.5,
    cohort_default_rate: float = 0.5,
    late_share: float = 0.01,
    duplicate_share: float = 0.005,
) -> list[dict[str, Any]]:
    """A seeded lending book as contract events, in the order they are published.

    Pure and deterministic like :func:`generate`. Borrowers take one loan
    each, disbursed over the first ``origination_months``; they repay monthly
    instalments (``good`` just before the due date, some of them repaying
    everything early; ``slow`` up to 40 days late; ``default`` stops after a
    few instalments and is written off beyond 180 days past due). The
    servicing system sends a ``loan_status`` a day after each due date, when
    a late payment cures a loan, and when a loan is repaid or written off.

    Two problems are built in:

    * **a deteriorating cohort**: in month ``cohort_month`` (0 = the first),
      ``cohort_dealer`` originates ``cohort_dealer_share`` of the loans, and
      ``cohort_default_rate`` of those default, most of them without paying
      a single instalment: roll rates jump a few months later and that
      vintage stands out at 3 months on book;
    * **a concentrated region**: ``concentrated_region`` gets ``region_boost``
      times its usual weight (about 38% of the principal by default), and one
      large borrower (``...-acct-000000``) holds a few percent of the book.

    Delivery is imperfect as in production: ``late_share`` of the repayments
    and statuses arrive up to three days after later events, and
    ``duplicate_share`` of the events are sent twice (same ``event_id``).

    Parameters
    ----------
    seed
        Seeds everything; ids are ``lb<seed>-...``.
    borrowers
        Loans in the book (one per borrower).
    start
        Event time of the first disbursement window (timezone-aware).
    months
        Event time simulated: nothing after ``start`` plus this many months.
    """
    if borrowers < 10 or months < 1 or not 1 <= origination_months <= months:
        message = "need borrowers >= 10 and 1 <= origination_months <= months"
        raise ValueError(message)
    if start.tzinfo is None:
        message = f"start must be timezone-aware, not {start.isoformat()}"
        raise ValueError(message)
    rng = random.Random(f"txwatch-lending-book/{seed}")
    start = start.astimezone(UTC)
    horizon = _book_add_months(start, months).timestamp()
    window = _book_add_months(start, origination_months).timestamp() - start.timestamp()
    regions = [(name, weight * (region_boost if name == concentrated_region else 1.0))
               for name, weight, _, _ in REGIONS]
    cohort_from = _book_add_months(start, cohort_month).timestamp()
    cohort_to = _book_add_months(start, cohort_month + 1).timestamp()
    planned: list[tuple[float, int, dict[str, Any]]] = []
    for index in range(borrowers):
        disbursed = start.timestamp() + rng.random() * window
        whale = index == 0
        in_cohort = cohort_from <= disbursed < cohort_to and rng.random() < cohort_dealer_share
        if in_cohort:
            dealer: str | None = cohort_dealer
        elif rng.random() < BOOK_DEALER_SHARE:
            dealer = f"dealer-{rng.choices(_BOOK_DEALER_NUMBERS, _BOOK_DEALER_WEIGHTS)[0]:03d}"
        else:
            dealer = None
        roll = rng.random()
        bad_rate = cohort_default_rate if in_cohort else default_rate
        behaviour = "good" if whale else (
            "default" if roll < bad_rate else "slow" if roll < bad_rate + slow_rate else "good")
        term = 36 if whale else rng.choice(BOOK_TERMS)
        principal = 120_000_000 if whale else max(
            500_000, round(rng.lognormvariate(math.log(3_000_000), 0.7) / 100_000) * 100_000)
        stops_after = (rng.choice((0, 0, 0, 1)) if in_cohort else rng.randint(1, 4))
        prepays = (rng.randint(1, term - 1) if behaviour == "good" and not whale
                   and rng.random() < prepay_rate else None)
        loan = _BookLoan(
            account_id=f"lb{seed}-acct-{index:06d}",
            loan_id=f"lb{seed}-loan-{index:06d}",
            disbursed_at=datetime.fromtimestamp(disbursed, UTC),
            principal_minor=principal,
            term_months=term,
            region=concentrated_region if whale else _pick(rng, regions),
            age_band=_pick(rng, BOOK_AGE_BANDS),
            industry=_pick(rng, BOOK_INDUSTRIES),
            dealer=dealer,
            channel="web" if dealer is None and rng.random() < 0.2 else "app",
            behaviour=behaviour,
            stops_after=stops_after,
            prepays_after=prepays,
        )
        for at, body in _book_loan_events(loan, rng, horizon):
            planned.append((at, len(planned), body))
    planned.sort(key=lambda item: (item[0], item[1]))
    outgoing: list[tuple[float, int, dict[str, Any]]] = []
    for number, (at, _, body) in enumerate(planned):
        event = {"event_id": f"lb{seed}-{number:08d}", "event_type": body["event_type"],
                 "occurred_at": _book_time(at)}
        event.update((k, v) for k, v in body.items() if k != "event_type")
        sent_at = at
        if body["event_type"] != "loan_disbursement" and rng.random() < late_share:
            sent_at = at + rng.uniform(1.0, 72.0) * _HOUR  # held up in a batch job
        outgoing.append((sent_at, len(outgoing), event))
        if rng.random() < duplicate_share:
            outgoing.append((sent_at + rng.uniform(0.0, 1.0) * _HOUR, len(outgoing), event))
    outgoing.sort(key=lambda item: (item[0], item[1]))
    return [event for _, _, event in outgoing]


async def simulate_lending_book(
    settings: Settings,
    *,
    seed: int = 0,
    borrowers: int = 1500,
    months: int = 9,
    rate: float | None = None,
    progress: Progress | None = None,
    start: datetime | None = None,
    create_topics: bool = True,
    producer_factory: ProducerFactory = kafka_producer,
) -> SimulationReport:
    """Publish :func:`lending_book` to the lending topic, keyed by borrower account.

    Parameters
    ----------
    settings
        Broker, lending topic and partitions.
    seed, borrowers, months, start
        As for :func:`lending_book`.
    rate
        Events per second on a drift-free schedule; ``None``: as fast as possible.
    progress
        Called with a line of text about every 2 s.
    create_topics, producer_factory
        As for :func:`simulate`.
    """
    _positive("rate", rate)
    events = lending_book(seed, borrowers=borrowers, months=months,
                          start=start or DEFAULT_START)
    created = await ensure_topics(settings, settings.input_topics) if create_topics else []
    producer = producer_factory(settings)
    await producer.start()
    by_type: Counter[str] = Counter()
    try:
        publisher = _Publisher(
            producer, rate=rate, acceleration=None, progress=progress, name="lending book"
        )
        for event in events:
            await publisher.send(settings.lending_topic, message_key(event["account_id"]),
                                 encode(event))
            by_type[event["event_type"]] += 1
            if publisher.report_due():
                publisher.report(f"event time {event['occurred_at']}")
        await publisher.finish()
        publisher.report(f"{len(events):,} events")
    finally:
        await producer.stop()
    times = sorted(event["occurred_at"] for event in events)
    return SimulationReport(
        sent=publisher.sent,
        delivered=publisher.delivered,
        failed=publisher.failed,
        by_topic=dict(publisher.by_topic),
        by_type=dict(by_type),
        incidents={},
        labelled=0,
        elapsed_seconds=publisher.elapsed,
        first_occurred_at=times[0] if times else None,
        last_occurred_at=times[-1] if times else None,
        topics_created=tuple(created),
        first_error=publisher.first_error,
    )
