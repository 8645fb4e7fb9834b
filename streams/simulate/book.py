"""A lending book on its own, for the portfolio monitor: loans, instalments, a status cycle.

Independent of the payment traffic: borrowers, monthly instalments, the
servicing system's status cycle, and two problems a risk committee should see
(``streams/portfolio/`` watches for them): a deteriorating cohort and a
concentrated region.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from detectors.money import contract_amount
from streams.settings import Settings
from streams.simulate.population import _DAY, _HOUR, CURRENCY, DEFAULT_START, REGIONS, _pick
from streams.simulate.publishing import (
    ProducerFactory,
    Progress,
    SimulationReport,
    _positive,
    _publishing,
    encode,
    kafka_producer,
    message_key,
)

# -- lending book (for the portfolio monitor) ---------------------------------------------
#
# A loan book on its own, independent of the traffic above: borrowers, loans
# with monthly instalments, the servicing system's status cycle, and two
# problems a risk committee should see (``streams/portfolio/`` watches for
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
    by_type: Counter[str] = Counter()
    async with _publishing(settings, producer_factory, create_topics, rate=rate,
                           acceleration=None, progress=progress,
                           name="lending book") as (publisher, created):
        for event in events:
            await publisher.send(settings.lending_topic, message_key(event["account_id"]),
                                 encode(event))
            by_type[event["event_type"]] += 1
            if publisher.report_due():
                publisher.report(f"event time {event['occurred_at']}")
        await publisher.finish()
        publisher.report(f"{len(events):,} events")
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
