"""The lending portfolio: a small book computed by hand, then the agent, gauges, alerts and CLI.

The book (2024, every event at 12:00 UTC unless said otherwise, amounts in CNY):

====  =======  ======  ====================================================================
loan  account  region  story
====  =======  ======  ====================================================================
L1    A        CN-GD   100,000 on 01-10; current 02-10 (90,000) and 03-10 (80,000); repays
                       10,000 on 03-15; current 04-02 (moves the clock into April)
L2    B        CN-GD   50,000 on 01-15 via dealer-1; 5 days past due 02-20; 35 days 03-20;
                       47 days 04-01
L3    C        CN-SH   30,000 on 01-20; repays all 02-05 and is repaid (early: due 2025)
L4    D        CN-BJ   20,000 on 01-05 via dealer-2; 10 days 02-10; written off 03-12
L5    E        CN-ZJ   never disbursed on the stream (an older loan): repays 1,000 at 02-03
                       10:00, then a status at 12:00 says current, 40,000 outstanding
====  =======  ======  ====================================================================

Delivery problems: L1's 02-10 status is sent twice (same id) and replayed at an
old offset; L2's 02-18 "current" arrives after its 03-20 status (stale); L1's
03-05 repayment arrives after the 03-10 status that already counts it (stale);
a status for L4 after its write-off changes nothing.
"""

from __future__ import annotations

import asyncio
import csv
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import fastjsonschema
import orjson
import pytest
from prometheus_client import CollectorRegistry

from detectors.portfolio import (
    DEFAULT_PORTFOLIO_CONFIG,
    REPAID,
    WRITTEN_OFF,
    Book,
    BookPartial,
    BucketScheme,
    LendingEvent,
    LoanState,
    PortfolioConfig,
    apply_event,
    check_limits,
)
from streams import simulate as sim
from streams.alerts import alert_id_for
from streams.codec import Decoder, inline_refs, load_schema
from streams.events import DeadLetter
from streams.portfolio import (
    EMITTED_KEY,
    PartialsView,
    PortfolioAgent,
    PortfolioMetrics,
    PortfolioSettings,
    alert_for,
    lending_event,
    loan_key,
    partial_record,
)
from streams.portfolio.cli import register_cli
from streams.portfolio.report import render_book, write_csv
from streams.sensors import Sensor
from streams.settings import Settings

CNY = 100  # minor units per yuan


def ms(month: int, day: int, hour: int = 12) -> int:
    return int(datetime(2024, month, day, hour, tzinfo=UTC).timestamp() * 1000)


def iso(month: int, day: int, hour: int = 12) -> str:
    return f"2024-{month:02d}-{day:02d}T{hour:02d}:00:00Z"


LOANS = {"L1": ("A", 0), "L2": ("B", 1), "L3": ("C", 0), "L4": ("D", 1), "L5": ("E", 0)}


def wire(event_id: str, kind: str, when: tuple[int, ...], loan: str,
         **fields: Any) -> dict[str, Any]:
    """A contract event as a producer sends it."""
    body: dict[str, Any] = {"event_id": event_id, "event_type": kind, "occurred_at": iso(*when),
                            "account_id": LOANS[loan][0], "loan_id": loan}
    if kind in ("loan_disbursement", "loan_repayment"):
        body["currency"] = "CNY"
    if kind == "loan_status" and "outstanding" in fields:
        body["currency"] = "CNY"
    body.update(fields)
    return body


#: The book in arrival order. Offsets are positions in this list, except the replay.
BOOK: list[dict[str, Any]] = [
    wire("d4", "loan_disbursement", (1, 5), "L4", amount="20000.00", region="CN-BJ",
         age_band="45-54", dealer="dealer-2", due_date="2025-01-05", term_months=12),
    wire("d1", "loan_disbursement", (1, 10), "L1", amount="100000.00", region="CN-GD",
         age_band="25-34", industry="retail", due_date="2025-01-10", term_months=12),
    wire("d2", "loan_disbursement", (1, 15), "L2", amount="50000.00", region="CN-GD",
         age_band="35-44", industry="catering", dealer="dealer-1", due_date="2025-01-15",
         term_months=12),
    wire("d3", "loan_disbursement", (1, 20), "L3", amount="30000.00", region="CN-SH",
         age_band="25-34", due_date="2025-01-20", term_months=12),
    wire("r5", "loan_repayment", (2, 3, 10), "L5", amount="1000.00", region="CN-ZJ"),
    wire("s5a", "loan_status", (2, 3, 12), "L5", status="current", days_past_due=0,
         outstanding="40000.00"),
    wire("r3", "loan_repayment", (2, 5, 10), "L3", amount="30000.00"),
    wire("s3", "loan_status", (2, 5, 12), "L3", status="repaid", days_past_due=0,
         outstanding="0.00"),
    wire("s1a", "loan_status", (2, 10), "L1", status="current", days_past_due=0,
         outstanding="90000.00"),
    wire("s1a", "loan_status", (2, 10), "L1", status="current", days_past_due=0,
         outstanding="90000.00"),  # sent twice by the producer
    wire("s4a", "loan_status", (2, 10), "L4", status="delinquent", days_past_due=10,
         outstanding="20000.00"),
    wire("s2a", "loan_status", (2, 20), "L2", status="delinquent", days_past_due=5,
         outstanding="50000.00"),
    wire("s1b", "loan_status", (3, 10), "L1", status="current", days_past_due=0,
         outstanding="80000.00"),
    wire("s4b", "loan_status", (3, 12), "L4", status="written_off", days_past_due=75,
         outstanding="20000.00"),
    wire("s2b", "loan_status", (3, 20), "L2", status="delinquent", days_past_due=35,
         outstanding="50000.00"),
    wire("s2-late", "loan_status", (2, 18), "L2", status="current", days_past_due=0,
         outstanding="50000.00"),
    wire("r1-late", "loan_repayment", (3, 5), "L1", amount="5000.00"),
    wire("r1", "loan_repayment", (3, 15), "L1", amount="10000.00"),
    wire("s4c", "loan_status", (3, 25), "L4", status="current", days_past_due=0),
    wire("s2c", "loan_status", (4, 1), "L2", status="delinquent", days_past_due=47,
         outstanding="50000.00"),
    wire("s1c", "loan_status", (4, 2), "L1", status="current", days_past_due=0,
         outstanding="70000.00"),
]
#: A replay after a crash: the 02-10 status of L1 again, at its first offset.
REPLAY_OFFSET = BOOK.index(next(e for e in BOOK if e["event_id"] == "s1a"))

CONFIG = PortfolioConfig.from_mapping({
    "version": "test-1",
    "limits": [
        {"name": "roll_1_30", "kind": "roll_rate", "granularity": "monthly", "from": "1-30",
         "to": "31-60", "max": 0.4, "min_loans": 1},
        {"name": "region", "kind": "share", "dimension": "region", "max": 0.5, "min_loans": 1},
        {"name": "dealers", "kind": "share", "dimension": "dealer", "max": 0.2,
         "exclude": ["direct"], "min_loans": 1},
        {"name": "borrower", "kind": "largest_borrower", "max": 0.5, "min_loans": 1},
        {"name": "region_hhi", "kind": "hhi", "dimension": "region", "max": 0.6,
         "min_loans": 1},
        {"name": "vintage_mob1", "kind": "vintage", "months_on_book": 1, "max": 0.0,
         "min_loans": 1},
    ],
})
DECODER = Decoder(pii_key=b"test-key", max_message_bytes=65536)


def decoded(event: dict[str, Any], offset: int) -> LendingEvent:
    result = DECODER.decode(orjson.dumps(event), "lending", 0, offset)
    assert not isinstance(result, DeadLetter), result
    lending = lending_event(result)
    assert lending is not None
    return lending


def deliveries() -> Iterator[tuple[LendingEvent, int]]:
    """The book in arrival order with offsets, and the replay where it happened."""
    offsets = iter(range(1000))
    for position, event in enumerate(BOOK):
        offset = next(offsets)
        yield decoded(event, offset), offset
        if position == BOOK.index(next(e for e in BOOK if e["event_id"] == "s4a")):
            yield decoded(BOOK[REPLAY_OFFSET], REPLAY_OFFSET), REPLAY_OFFSET


def run_book() -> tuple[dict[str, LoanState], dict[str, int]]:
    loans: dict[str, LoanState] = {}
    outcomes: dict[str, int] = {}
    for event, offset in deliveries():
        account, partition = LOANS[event.loan_id]
        loan = loans.setdefault(event.loan_id, LoanState(event.loan_id, account, partition))
        outcome = apply_event(loan, event, CONFIG, offset)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    return loans, outcomes


@pytest.fixture(scope="module")
def book_loans() -> tuple[dict[str, LoanState], dict[str, int]]:
    return run_book()


@pytest.fixture(scope="module")
def book(book_loans: tuple[dict[str, LoanState], dict[str, int]]) -> Book:
    loans, _ = book_loans
    return Book(BookPartial.of_loans(loans.values(), CONFIG), CONFIG)


# -- loan states --------------------------------------------------------------------------


def test_each_loan_ends_in_its_hand_computed_state(book_loans):
    loans, outcomes = book_loans
    scheme = CONFIG.scheme
    final = {name: (scheme.bucket(loan.code), loan.outstanding_minor)
             for name, loan in loans.items()}
    assert final == {
        "L1": ("current", 70_000 * CNY),
        "L2": ("31-60", 50_000 * CNY),      # the late "current" of 02-18 did not undo it
        "L3": ("repaid", 0),
        "L4": ("written_off", 20_000 * CNY),
        "L5": ("current", 40_000 * CNY),    # the 10:00 repayment is inside the 12:00 figure
    }
    assert loans["L3"].repaid_early and not loans["L1"].repaid_early
    assert loans["L4"].code == WRITTEN_OFF and loans["L3"].code == REPAID
    # 22 deliveries: two duplicates (same id; replayed offset), two stale, one after
    # the write-off
    assert outcomes == {"applied": 17, "duplicate": 2, "stale": 2, "after_close": 1}


def test_a_repayment_after_the_snapshot_counts_whatever_order_it_arrives_in():
    def outstanding(order: list[LendingEvent]) -> int:
        loan = LoanState("L1", "A")
        for event in order:
            apply_event(loan, event, CONFIG)
        return loan.outstanding_minor

    disbursed = decoded(BOOK[1], 0)
    status = decoded(wire("s", "loan_status", (2, 10), "L1", status="current",
                          days_past_due=0, outstanding="90000.00"), 1)
    before = decoded(wire("r-before", "loan_repayment", (2, 9), "L1", amount="500.00"), 2)
    after = decoded(wire("r-after", "loan_repayment", (2, 11), "L1", amount="700.00"), 3)
    expected = (90_000 - 700) * CNY
    assert outstanding([disbursed, before, status, after]) == expected
    assert outstanding([disbursed, after, status, before]) == expected
    assert outstanding([disbursed, status, after, before]) == expected


def test_a_late_disbursement_fills_in_the_loan_without_moving_its_bucket():
    loan = LoanState("L9", "Z")
    apply_event(loan, decoded(wire("s", "loan_status", (3, 1), "L1", status="delinquent",
                                   days_past_due=12, outstanding="800.00") | {"loan_id": "L9"},
                              0), CONFIG)
    disbursement = wire("d", "loan_disbursement", (1, 1), "L1", amount="1000.00",
                        region="CN-SC", age_band="18-24", dealer="dealer-9") | {"loan_id": "L9"}
    apply_event(loan, decoded(disbursement, 1), CONFIG)
    assert CONFIG.scheme.bucket(loan.code) == "1-30"
    assert loan.outstanding_minor == 800 * CNY  # the status figure, not the principal
    assert loan.principal_minor == 1000 * CNY
    assert loan.dims == {"region": "CN-SC", "age_band": "18-24", "dealer": "dealer-9"}
    partial = BookPartial.of_loans([loan], CONFIG)
    assert partial.vintages == {"2024-01": [1, 1000 * CNY]}
    assert partial.vintage_cells == {}  # months on book before it was known: not observed


def test_loan_state_and_partial_survive_a_round_trip(book_loans):
    loans, _ = book_loans
    for loan in loans.values():
        assert LoanState.loads(loan.dumps()) == loan
    partial = BookPartial.of_loans(loans.values(), CONFIG)
    assert BookPartial.loads(partial.dumps()) == partial


# -- the migration matrix -----------------------------------------------------------------


def cells(book: Book, granularity: str, period: str) -> dict[tuple[str, str], tuple[int, int]]:
    matrix = book.migration(granularity, period)
    return {(r, c): (matrix.loans[r][c], matrix.principal[r][c] // CNY)
            for r in matrix.rows for c in matrix.columns if matrix.loans[r][c]}


def test_monthly_matrices_match_the_hand_computed_book(book):
    assert book.periods("monthly") == ["2024-01", "2024-02", "2024-03", "2024-04"]
    # January: four loans disbursed (principal at the end of the month)
    assert cells(book, "monthly", "2024-01") == {("new", "current"): (4, 200_000)}
    # February: L1 stays, L2 and L4 fall behind, L3 is repaid early; L5 appears
    assert cells(book, "monthly", "2024-02") == {
        ("current", "current"): (1, 100_000),
        ("current", "1-30"): (2, 70_000),
        ("current", "repaid"): (1, 30_000),
        ("new", "current"): (1, 40_000),
    }
    february = book.migration("monthly", "2024-02")
    assert february.opening_loans["current"] == 4
    assert february.opening_principal["current"] == 200_000 * CNY
    assert february.rate("current", "1-30") == 0.5
    assert february.rate("current", "1-30", "principal") == 0.35
    # March: L1 and L5 (no event: it stayed) current; L2 rolls, L4 is written off
    assert cells(book, "monthly", "2024-03") == {
        ("current", "current"): (2, 130_000),
        ("1-30", "31-60"): (1, 50_000),
        ("1-30", "written_off"): (1, 20_000),
    }
    march = book.migration("monthly", "2024-03")
    assert march.opening_loans == {"new": 0, "current": 2, "1-30": 2, "31-60": 0, "61-90": 0,
                                   "90+": 0}
    assert march.rate("1-30", "31-60") == 0.5
    assert march.rate("1-30", "31-60", "principal") == pytest.approx(50 / 70)
    assert march.complete
    # April has begun (L1 on 04-02) but is not over
    april = book.migration("monthly", "2024-04")
    assert not april.complete
    assert cells(book, "monthly", "2024-04") == {("current", "current"): (2, 110_000),
                                                 ("31-60", "31-60"): (1, 50_000)}


def test_daily_matrices_use_event_time_days(book):
    assert cells(book, "daily", "2024-03-12") == {
        ("current", "current"): (2, 120_000),
        ("1-30", "1-30"): (1, 50_000),
        ("1-30", "written_off"): (1, 20_000),
    }
    assert book.migration("daily", "2024-03-20").rate("1-30", "31-60") == 1.0
    # 35 daily periods are kept, back from the book's latest day
    assert book.periods("daily")[0] == "2024-02-28" and book.periods("daily")[-1] == "2024-04-02"


# -- concentration and vintages -----------------------------------------------------------


def test_concentration_shares_hhi_and_largest_borrower(book):
    region = book.concentration("region")
    assert [(v.value, v.loans, v.outstanding_minor // CNY) for v in region.values] == [
        ("CN-GD", 2, 120_000), ("CN-ZJ", 1, 40_000)]
    assert [v.share for v in region.values] == [0.75, 0.25]
    assert region.hhi == pytest.approx(0.75**2 + 0.25**2)
    age = book.concentration("age_band")
    assert [(v.value, v.share) for v in age.values] == [
        ("25-34", 0.4375), ("35-44", 0.3125), ("unknown", 0.25)]
    assert age.hhi == pytest.approx((70 / 120) ** 2 + (50 / 120) ** 2)  # known values only
    dealer = book.concentration("dealer")
    assert [(v.value, v.share) for v in dealer.values] == [
        ("direct", 0.4375), ("dealer-1", 0.3125), ("unknown", 0.25)]
    assert book.largest_borrowers(2) == [("A", 70_000 * CNY, 0.4375), ("B", 50_000 * CNY, 0.3125)]
    assert book.open_loans == 3 and book.open_outstanding_minor == 160_000 * CNY
    assert book.bucket_stock()["written_off"] == (1, 20_000 * CNY)
    assert book.partial.repaid_early == 1


def test_vintages_observe_delinquency_at_months_on_book(book):
    (january,) = book.vintages()  # L5 was never disbursed on the stream: no vintage
    assert (january.vintage, january.loans, january.principal_minor) == (
        "2024-01", 4, 200_000 * CNY)
    # MOB 1: L1, L2, L4 were current a month after disbursement, L3 already repaid
    assert january.cells[1] == (4, 0, 170_000 * CNY, 0, True)
    # MOB 3 (reached by 04-01, not yet for every loan): only L3 and L4 are known,
    # both closed; L4's write-off counts as delinquent
    assert january.cells[3] == (2, 1, 20_000 * CNY, 20_000 * CNY, False)
    assert january.delinquent_share(3) == 0.5
    assert set(january.cells) == {1, 3}


# -- merging partitions -------------------------------------------------------------------


def test_the_sum_of_partition_partials_is_the_whole_book(book_loans, book):
    loans, _ = book_loans
    by_partition = [BookPartial.of_loans([loan for loan in loans.values() if loan.partition == p],
                                         CONFIG, p) for p in (0, 1)]
    merged = BookPartial.merge(by_partition)
    whole = BookPartial.of_loans(loans.values(), CONFIG)
    assert merged == whole
    # also through the topic's JSON, in either order
    view = PartialsView()
    for partition in (1, 0):
        view.apply(f"partition:{partition}".encode(),
                   partial_record(partition, by_partition[partition], CONFIG))
    from_topic = view.book(CONFIG)
    assert from_topic.partial.clocks == {0: ms(4, 2), 1: ms(4, 1)}
    assert from_topic.partial.stock == book.partial.stock
    # what is published is pruned to the periods kept; within them, the same matrices
    for granularity in ("daily", "monthly"):
        assert from_topic.periods(granularity) == book.periods(granularity)
        for period in book.periods(granularity):
            assert from_topic.migration(granularity, period) == book.migration(granularity,
                                                                                period)
    # partition 1's newest event is 04-01: March is complete, April is not
    assert from_topic.is_complete("monthly", "2024-03")
    assert not from_topic.is_complete("monthly", "2024-04")
    # without partition 1's April event, March would not be complete yet
    partition_1 = BookPartial.merge([by_partition[1]])
    partition_1.clocks[1] = ms(3, 25)
    assert not Book(BookPartial.merge([by_partition[0], partition_1]),
                    CONFIG).is_complete("monthly", "2024-03")


def test_incremental_updates_equal_a_rebuild(book_loans):
    loans, _ = book_loans
    partial = BookPartial(buckets=CONFIG.scheme.open_buckets)
    states: dict[str, LoanState] = {}
    for event, offset in deliveries():
        account, partition = LOANS[event.loan_id]
        loan = states.get(event.loan_id)
        if loan is None:
            loan = states[event.loan_id] = LoanState(event.loan_id, account, partition)
        else:
            partial.add_loan(loan, CONFIG, -1)
        apply_event(loan, event, CONFIG, offset)
        partial.add_loan(loan, CONFIG, +1)
    assert partial == BookPartial.of_loans(loans.values(), CONFIG)


# -- limits -------------------------------------------------------------------------------


def test_limits_report_crossings_with_their_numbers(book):
    findings = {f.limit: f for f in check_limits(book)}
    # not the borrower (43.75% <= 50%) nor the vintage (0% at MOB 1 is not above 0%)
    assert set(findings) == {"roll_1_30", "region", "dealers", "region_hhi"}
    roll = findings["roll_1_30"]
    assert (roll.detector, roll.period, roll.subject) == (
        "portfolio_roll_rate", "2024-03", "1-30->31-60")
    assert roll.reasons[0] == ("monthly roll rate 1-30 -> 31-60 in 2024-03 is 50.0% by loans, "
                               "above the limit of 40.0%")
    assert roll.reasons[1] == ("1 of 2 loans in 1-30 at the start of 2024-03 moved to 31-60 "
                               "(50.0%); 50,000.00 of 70,000.00 CNY opening outstanding (71.4%)")
    region = findings["region"]
    # an excess that lasts is reported once a month (the limit's granularity)
    assert (region.subject, region.period, region.score) == ("CN-GD", "2024-04", 0.75)
    assert "120,000.00 of 160,000.00 CNY in 2 of 3 open loans" in region.reasons[1]
    assert findings["dealers"].subject == "dealer-1"  # 31.25%; 'direct' is excluded
    assert findings["region_hhi"].score == 0.625
    assert "borrower" not in findings  # 43.75% is under the 50% limit
    # partitions far apart in event time (one catching up): no limit on the book as it stands
    lagging = BookPartial.merge([book.partial])
    lagging.clocks[1] = ms(2, 15)
    assert check_limits(Book(lagging, CONFIG)) == []
    assert not Book(lagging, CONFIG).vintages()[0].cells[1][4]  # MOB 1 not complete either
    # the same crossing found again has the same trigger, hence the same alert id
    again = {f.limit: f.trigger for f in check_limits(book)}
    assert again["roll_1_30"] == roll.trigger == "portfolio:roll_1_30:2024-03:1-30->31-60"


def test_alerts_follow_the_alert_schema(book):
    validate = fastjsonschema.compile(inline_refs(load_schema("alert")))
    detected = datetime(2024, 4, 2, 12, 0, 1, tzinfo=UTC)
    for finding in check_limits(book):
        alert, payload = alert_for(finding, CONFIG, detected)
        record = orjson.loads(payload)
        validate(record)
        assert record["alert_id"] == alert.alert_id == alert_id_for(finding.detector,
                                                                     finding.trigger)
        assert record["limit"] == finding.limit and record["period"] == finding.period
    roll = next(f for f in check_limits(book) if f.limit == "roll_1_30")
    record = orjson.loads(alert_for(roll, CONFIG, detected)[1])
    assert record["amount"] == "50000.00" and record["currency"] == "CNY"
    assert record["occurred_at"] == "2024-03-31T23:59:59.999000Z"


@pytest.mark.parametrize(("change", "message"), [
    ({"bucket_edges": [30, 20]}, "increasing"),
    ({"vintage_delinquent_days": 45}, "bucket edge"),
    ({"limits": [{"name": "x", "kind": "roll_rate", "from": "2-9", "max": 0.1}]}, "'from'"),
    ({"limits": [{"name": "x", "kind": "share", "dimension": "postcode", "max": 0.1}]},
     "dimension"),
    ({"limits": [{"name": "x", "kind": "share", "dimension": "region", "max": 0.1},
                 {"name": "x", "kind": "hhi", "dimension": "region", "max": 0.1}]}, "unique"),
    ({"colour": "red"}, "unknown"),
])
def test_a_bad_configuration_says_what_is_wrong(change, message):
    with pytest.raises(ValueError, match=message):
        PortfolioConfig.from_mapping(change)


def test_the_default_configuration_is_valid_and_its_buckets_follow_the_edges():
    config = PortfolioConfig.from_mapping(DEFAULT_PORTFOLIO_CONFIG)
    assert config.scheme.columns == ("current", "1-30", "31-60", "61-90", "90+", "written_off",
                                     "repaid")
    assert BucketScheme((7, 30)).open_buckets == ("current", "1-7", "8-30", "30+")
    assert config.delinquent_buckets() == {"31-60", "61-90", "90+", "written_off"}


# -- the agent ----------------------------------------------------------------------------


class FakeTopic:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, bytes]] = []

    async def send(self, key: bytes, value: bytes) -> asyncio.Future[None]:
        self.sent.append((key, value))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


class FakeTable:
    def __init__(self) -> None:
        self.data: dict[bytes, Any] = {}
        self.changelog: list[tuple[int, bytes, bytes | None]] = []

    def send_changelog(self, partition: int, key: bytes, value: bytes | None,
                       value_serializer: str | None = None) -> None:
        assert value_serializer == "raw"
        self.changelog.append((partition, key, value))


class Counting(Sensor):
    def __init__(self) -> None:
        self.alerts: list[Any] = []

    def on_alert(self, alert: Any, source_timestamp: float | None) -> None:
        self.alerts.append(alert)


def make_agent(registry: CollectorRegistry | None = None) -> PortfolioAgent:
    runtime = SimpleNamespace(
        monitor=SimpleNamespace(decoder=DECODER),
        settings=Settings(partitions=2, lending_topic="lending"),
        alert_topic=FakeTopic(),
        sensors=Counting(),
    )
    metrics = PortfolioMetrics(CONFIG, registry or CollectorRegistry())
    agent = PortfolioAgent(runtime, CONFIG, PortfolioSettings(), metrics,  # type: ignore[arg-type]
                           FakeTable(), FakeTopic())
    agent.rebuild({0, 1})

    async def caught_up(partition: int) -> int:
        return 0

    agent.partition_lag = caught_up  # type: ignore[method-assign]
    return agent


def messages(events: list[dict[str, Any]], first_offset: int = 0) -> list[Any]:
    out = []
    for offset, event in enumerate(events, start=first_offset):
        partition = LOANS[event["loan_id"]][1]
        out.append(SimpleNamespace(message=SimpleNamespace(
            value=orjson.dumps(event), partition=partition, offset=offset, topic="lending",
            timestamp=None)))
    return out


async def test_a_batch_writes_each_touched_loan_once_and_a_replay_changes_nothing():
    agent = make_agent()
    batch = messages(BOOK)
    await agent.process_batch(batch)
    table = agent.table
    keys = [key for _, key, _ in table.changelog]
    assert sorted(keys) == sorted(loan_key(a, loan) for loan, (a, _) in LOANS.items())
    assert {(p, k) for p, k, _ in table.changelog} == {
        (LOANS[k.decode().split("/")[1]][1], k) for k in keys}
    expected, _ = run_book()
    by_partition = {p: BookPartial.of_loans(
        [loan for loan in expected.values() if loan.partition == p], CONFIG, p) for p in (0, 1)}
    assert agent.partials == by_partition
    # the whole batch again, same offsets (a crash before the commit): nothing moves
    table.changelog.clear()
    await agent.process_batch(batch)
    assert table.changelog == []
    assert agent.partials == by_partition
    # and a restart rebuilds the same partials from the table
    agent.rebuild({0, 1})
    assert agent.partials == by_partition


async def test_partials_are_published_per_partition_and_merged_by_every_reader():
    agent = make_agent()
    agent.topic_ready = True
    await agent.process_batch(messages(BOOK))
    await agent.publish()
    sent = dict(agent.partials_topic.sent)
    assert set(sent) == {b"partition:0", b"partition:1"}
    await agent.publish()  # nothing changed since
    assert len(agent.partials_topic.sent) == 2
    view = PartialsView()
    for key, value in agent.partials_topic.sent:
        view.apply(key, value)
    assert view.missing(2) == []
    assert cells(view.book(CONFIG), "monthly", "2024-02") == {
        ("current", "current"): (1, 100_000), ("current", "1-30"): (2, 70_000),
        ("current", "repaid"): (1, 30_000), ("new", "current"): (1, 40_000)}


async def test_only_the_leader_sends_book_alerts_and_each_only_once():
    registry = CollectorRegistry()
    agent = make_agent(registry)
    agent.topic_ready = True
    await agent.process_batch(messages(BOOK))
    await agent.publish()
    for key, value in agent.partials_topic.sent:
        agent.view.apply(key, value)
    agent.caught_up = True
    agent.assigned = {1}  # partition 0 is another worker's: that worker alerts
    assert await agent.evaluate() == []
    agent.assigned = {0, 1}
    sent = await agent.evaluate()
    assert {a.detector for a in sent} >= {"portfolio_roll_rate", "portfolio_concentration"}
    alert_topic = agent.runtime.alert_topic
    assert len(alert_topic.sent) == len(sent)
    assert all(key == b"portfolio" for key, _ in alert_topic.sent)
    assert await agent.evaluate() == []  # the same crossings: no second alert
    # the ids are on the partials topic, so a new leader does not repeat them
    emitted = [value for key, value in agent.partials_topic.sent if key == EMITTED_KEY]
    successor = make_agent()
    successor.view.apply(b"partition:0", agent.partials_topic.sent[0][1])
    successor.view.apply(b"partition:1", agent.partials_topic.sent[1][1])
    successor.view.apply(EMITTED_KEY, emitted[-1])
    successor.caught_up = True
    assert await successor.evaluate() == []
    # gauges, from a fresh registry
    value = registry.get_sample_value
    assert value("txwatch_portfolio_loans", {"bucket": "current"}) == 2
    assert value("txwatch_portfolio_outstanding", {"bucket": "31-60"}) == 50_000
    assert value("txwatch_portfolio_concentration_share",
                 {"dimension": "region", "value": "CN-GD"}) == 0.75
    assert value("txwatch_portfolio_concentration_hhi", {"dimension": "region"}) == 0.625
    assert value("txwatch_portfolio_largest_borrower_share") == 0.4375
    assert value("txwatch_portfolio_roll_rate", {
        "granularity": "monthly", "period": "previous", "from_bucket": "1-30",
        "to_bucket": "31-60", "basis": "loans"}) == 0.5
    assert value("txwatch_portfolio_events_total", {"outcome": "duplicate"}) == 1
    assert value("txwatch_portfolio_events_total", {"outcome": "stale"}) == 2
    assert value("txwatch_portfolio_partitions_reporting") == 2


async def test_no_concentration_alerts_while_a_partition_is_behind_its_input():
    agent = make_agent()
    agent.topic_ready = True
    await agent.process_batch(messages(BOOK))
    await agent.publish()
    lags = {0: 0, 1: 500}

    async def lag(partition: int) -> int:
        return lags[partition]

    agent.partition_lag = lag  # type: ignore[method-assign]
    agent.dirty = {1}
    await agent.publish()
    for key, value in agent.partials_topic.sent:
        agent.view.apply(key, value)
    agent.caught_up = True
    assert {a.detector for a in await agent.evaluate()} == {"portfolio_roll_rate"}
    lags[1] = 0
    await agent.publish()  # partition 1 is live again: republished without a change
    agent.view.apply(*agent.partials_topic.sent[-1])
    assert "portfolio_concentration" in {a.detector for a in await agent.evaluate()}


async def test_no_alerts_until_every_partition_has_published():
    agent = make_agent()
    agent.topic_ready = True
    await agent.process_batch(messages(BOOK))
    await agent.publish()
    agent.view.apply(b"partition:0", dict(agent.partials_topic.sent)[b"partition:0"])
    agent.caught_up = True
    assert await agent.evaluate() == []
    assert agent.runtime.alert_topic.sent == []


def test_closed_loans_past_retention_leave_the_book_with_a_tombstone(book_loans):
    agent = make_agent()
    loans, _ = book_loans
    for name, loan in loans.items():
        agent.table.data[loan_key(loan.account_id, name)] = LoanState.loads(loan.dumps())
    agent.rebuild({0, 1})
    later = ms(4, 2) + 401 * 86_400_000
    agent.partials[0].clocks[0] = later
    agent.partials[1].clocks[1] = later
    assert agent.evict_closed() == 2  # L3 (repaid) and L4 (written off)
    assert sorted((p, k, v) for p, k, v in agent.table.changelog) == [
        (0, loan_key("C", "L3"), None), (1, loan_key("D", "L4"), None)]
    assert agent.partials[1].stock.get("written_off") is None


def test_the_loan_table_recovers_loan_states_from_its_changelog(tmp_path: Path):
    from streams.app import create_app
    from streams.portfolio import TABLE_NAME, attach_portfolio

    settings = Settings(app_id=f"unit-{tmp_path.name}", data_dir=tmp_path, partitions=2,
                        dev_mode=True)
    runtime = create_app(settings)
    agent = attach_portfolio(runtime, registry=CollectorRegistry(),
                             portfolio_settings=PortfolioSettings(), config=CONFIG)
    assert attach_portfolio(runtime) is agent  # once per app
    table = runtime.app.tables[TABLE_NAME]
    changelog = table.changelog_topic
    loan, _ = run_book()
    raw = loan["L2"].dumps()
    # what recovery does with a changelog record
    restored = runtime.app.serializers.loads_value(changelog.value_type, raw,
                                                   serializer=changelog.value_serializer)
    assert restored == loan["L2"]
    assert runtime.app.serializers.dumps_value(changelog.value_type, loan["L2"],
                                               serializer=changelog.value_serializer) == raw


# -- terminal and CSV ---------------------------------------------------------------------


def test_the_report_prints_the_matrix_and_concentration(book):
    text = render_book(book, "monthly", partitions=2)
    assert "Monthly migration 2024-03 (complete)" in text
    assert "Monthly migration 2024-04 (in progress)" in text
    march = text.split("Monthly migration 2024-03 (complete): share of loans")[1]
    row = next(line for line in march.splitlines() if line.startswith("1-30 "))
    assert row.split()[:8] == ["1-30", "0.0%", "0.0%", "50.0%", "0.0%", "0.0%", "50.0%", "0.0%"]
    assert "Concentration by region: HHI 0.6250" in text
    assert any(line.split()[:4] == ["CN-GD", "2", "120,000.00", "75.0%"]
               for line in text.splitlines())


def test_csv_files_hold_the_same_figures(book, tmp_path: Path):
    paths = write_csv(book, tmp_path)
    assert sorted(p.name for p in paths) == ["borrowers.csv", "buckets.csv", "concentration.csv",
                                             "migration.csv", "vintages.csv"]
    with (tmp_path / "migration.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    march = {(r["from_bucket"], r["to_bucket"]): r for r in rows
             if r["granularity"] == "monthly" and r["period"] == "2024-03"}
    assert march["1-30", "31-60"]["loans"] == "1"
    assert march["1-30", "31-60"]["loans_share"] == "0.500000"
    assert march["1-30", "31-60"]["principal"] == "50000.00"
    assert march["1-30", "31-60"]["opening_principal"] == "70000.00"
    assert march["1-30", "31-60"]["complete"] == "true"
    with (tmp_path / "concentration.csv").open() as handle:
        region = [r for r in csv.DictReader(handle) if r["dimension"] == "region"]
    assert [(r["value"], r["outstanding"], r["share"]) for r in region] == [
        ("CN-GD", "120000.00", "0.750000"), ("CN-ZJ", "40000.00", "0.250000")]


def test_the_cli_registers_portfolio_and_its_simulator():
    import argparse

    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers(dest="command", required=True))
    shown = parser.parse_args(["portfolio", "--csv", "out", "--granularity", "daily"])
    assert shown.func.__name__ == "run_portfolio" and shown.csv == Path("out")
    simulated = parser.parse_args(["portfolio", "simulate", "--borrowers", "50"])
    assert simulated.func.__name__ == "run_portfolio_simulate" and simulated.borrowers == 50


def test_portfolio_settings_come_from_the_environment(tmp_path: Path):
    settings = PortfolioSettings.from_env({"TXWATCH_PORTFOLIO_CONFIG": str(tmp_path / "p.json"),
                                           "TXWATCH_PORTFOLIO_PUBLISH_INTERVAL": "0.25"})
    assert settings.config == tmp_path / "p.json" and settings.publish_interval == 0.25
    assert settings.topic_for(Settings(app_id="risk")) == "risk-portfolio-partials"


# -- the simulated book -------------------------------------------------------------------


def test_the_simulated_book_is_seeded_valid_and_imperfect_like_production():
    events = sim.lending_book(3, borrowers=300, months=10)
    assert events == sim.lending_book(3, borrowers=300, months=10)
    decoded_events = [DECODER.decode(orjson.dumps(e), "lending", 0, i)
                      for i, e in enumerate(events)]
    assert not [d for d in decoded_events if isinstance(d, DeadLetter)]
    ids = [e["event_id"] for e in events]
    assert len(ids) > len(set(ids))  # some events are sent twice
    times = [e["occurred_at"] for e in events]
    assert times != sorted(times)  # and some arrive late
    statuses = {e["status"] for e in events if e["event_type"] == "loan_status"}
    assert {"current", "delinquent", "repaid", "written_off"} <= statuses


def test_the_simulated_book_has_its_deteriorating_cohort_and_concentrated_region():
    config = PortfolioConfig.from_mapping({})
    loans: dict[str, LoanState] = {}
    for offset, event in enumerate(sim.lending_book(7)):
        result = DECODER.decode(orjson.dumps(event), "lending", 0, offset)
        assert not isinstance(result, DeadLetter)
        lending = lending_event(result)
        assert lending is not None
        loan = loans.setdefault(lending.loan_id, LoanState(lending.loan_id, lending.account_id))
        apply_event(loan, lending, config, offset)
    book = Book(BookPartial.of_loans(loans.values(), config), config)
    findings = check_limits(book)
    assert ("region_share", "CN-GD") in {(f.limit, f.subject) for f in findings}
    # the cohort disbursed in May rolls from 1-30 to 31-60 two or three months later
    rolled = {f.period for f in findings if f.limit == "roll_1_30_to_31_60"}
    assert rolled and rolled <= {"2024-06", "2024-07", "2024-08"}
    cohort = next(row for row in book.vintages() if row.vintage == "2024-05")
    others = [row.delinquent_share(3) for row in book.vintages()
              if row.vintage != "2024-05" and row.cells.get(3, (0,) * 5)[4]]
    assert (cohort.delinquent_share(3) or 0) > 0.15 > max(s or 0 for s in others)
