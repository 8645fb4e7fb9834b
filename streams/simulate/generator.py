"""The traffic generator: a seeded population's events in event-time order, scenarios injected.

:func:`generate` is pure: no broker, no wall clock; the same arguments give the
same events, byte for byte.
"""

from __future__ import annotations

import bisect
import dataclasses
import heapq
import itertools
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from detectors.money import contract_amount
from streams.simulate.population import (
    _AGE_BIRTH_YEARS,
    _BANKS,
    _CREDENTIAL_KINDS,
    _DAY,
    _HOUR,
    _LOAN_TERMS,
    _MONTH_DAYS,
    _PLEDGE_SIZES_MINOR,
    _PLEDGE_WEIGHTS,
    BASE_ACTIVITY,
    CURRENCY,
    DEFAULT_ACCOUNTS,
    DEFAULT_FIRST_INCIDENT_AT,
    DEFAULT_INCIDENT_EVERY,
    DEFAULT_START,
    INDUSTRIES,
    PROFILES,
    REGIONS,
    SPIKE_HISTORY,
    UTC_HOURLY_WEIGHTS,
    Merchant,
    Profile,
    SimAccount,
    _Application,
    _cumulative,
    _Loan,
    _national_id,
    _pick,
    _Project,
)
from streams.simulate.scenarios import SCENARIOS, IncidentContext, PlannedEvent, Scenario

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


