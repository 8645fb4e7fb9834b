"""The simulated population: customer profiles, accounts, merchants, loans and projects.

Also the simulator's clock and rhythm (:func:`hourly_weight`, a daily cycle in
China Standard Time) and the constants every other module of the package shares.
"""

from __future__ import annotations

import itertools
import math
import random
import statistics
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final

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

