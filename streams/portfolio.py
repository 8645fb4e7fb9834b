"""The live lending portfolio: loan table, partition partials, merged book, gauges, alerts, CLI.

The figures (buckets, roll rates, migration matrices, concentration, vintages)
and their rules are in :mod:`detectors.portfolio`; this module runs them on
the lending topic.

How it runs
-----------
``txwatch.portfolio`` is a second agent on the lending topic, beside the
monitor agent (Faust hands each message to both and commits an offset once
both are done with it). Per batch (``stream.take_events``):

1. each ``loan_disbursement``, ``loan_repayment`` and ``loan_status`` is
   applied to its :class:`~detectors.portfolio.LoanState` in the table
   ``portfolio_loans`` (key ``account_id/loan_id``, on the borrower's
   partition: lending events are keyed by account), and the partition's
   :class:`~detectors.portfolio.BookPartial` is updated by taking the loan's
   old contribution out and putting the new one in;
2. each loan the batch touched is written to the table's changelog once,
   serialised now, as ``streams/agents.py`` does for accounts.

A timer publishes the partial of every partition the worker owns to the
compacted topic ``TXWATCH_PORTFOLIO_TOPIC`` (key ``partition:<n>``) when it
changed, at most every ``TXWATCH_PORTFOLIO_PUBLISH_INTERVAL`` seconds, and
every 30 s regardless. Every worker reads that topic from the beginning with
a consumer of its own (no group), keeps the latest partial of each partition,
merges them into a :class:`~detectors.portfolio.Book`, sets the gauges and, on
one worker, checks the limits and sends alerts. ``txwatch portfolio`` reads
the same topic.

Why it stays correct with several workers
-----------------------------------------
* **One owner per loan.** A loan lives on its borrower's partition, so one
  worker at a time applies its events, in offset order; the loan's replay
  guard (last offset, recent event ids) makes a batch replayed after a crash
  change nothing twice.
* **A partial is a function of its partition's loan states**, never an
  accumulator of its own: after every assignment the owner recomputes it from
  the recovered table before publishing. A crash between the changelog write
  and a publish cannot count anything twice, and a partial is *replaced* on
  the compacted topic (one key per partition), never added to.
* **Merging is summing.** The book is the sum of the latest partial of each
  partition, each partition counted once whichever worker published it; the
  figures are computed from that sum only. Alerts wait until every partition
  has published. A stale partial a former owner sent during a rebalance is
  overwritten by the new owner's next publish (within 30 s). Each partial
  carries its partition's input lag; limits on the book as it stands
  (shares, HHI, largest borrower) are checked only while every partition is
  within ``live_max_lag`` messages of its end, so a worker still working
  through a backlog does not make the merged book a mix of moments. Roll
  rates and vintages use only periods every partition's event time has
  passed.
* **Book-level alerts come from one worker**: the one that owns lending
  partition 0. Their ids are deterministic (``sha256(detector, trigger)``,
  trigger = limit, period, subject), so an alert sent twice during a
  rebalance, or again after a restart, has the same id; the ids sent are also
  recorded on the partials topic (key ``alerts:emitted``) so a new leader
  does not send them again.
* **Gauges**: every worker exports the same merged figures; aggregate them
  across instances with ``max()``, not ``sum()``
  (``txwatch_portfolio_events_total`` is per worker: sum it).

Alerts (``streams/schemas/alert.schema.json``) have ``account_id``
``portfolio`` (the borrower for ``portfolio_borrower``), ``event_ids`` the
trigger, ``amount`` the principal concerned, and the extra fields ``limit``,
``period`` and ``subject``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import logging
import os
import sys
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import orjson
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

from detectors.money import contract_amount, format_minor
from detectors.portfolio import (
    DIMENSIONS,
    DUPLICATE,
    GRANULARITIES,
    LENDING_BOOK_TYPES,
    OUTCOMES,
    Book,
    BookPartial,
    LendingEvent,
    LoanState,
    Migration,
    PortfolioConfig,
    PortfolioFinding,
    apply_event,
    check_limits,
    evictable,
    iso_time,
)
from streams.alerts import Alert, alert_id_for
from streams.clients import replica_configs
from streams.codec import parse_amount_minor
from streams.events import DeadLetter, Event
from streams.settings import PREFIX, Settings, SettingsError

if TYPE_CHECKING:
    from streams.runtime import Runtime

log = logging.getLogger(__name__)

TABLE_NAME: Final = "portfolio_loans"
AGENT_NAME: Final = "txwatch.portfolio"
LOAN_CODEC: Final = "txwatch_loan"
EMITTED_KEY: Final = b"alerts:emitted"
#: Alert ids remembered on the partials topic.
EMITTED_KEPT: Final = 5000
#: A partition's partial is published at least this often, changed or not.
REFRESH_SECONDS: Final = 30.0
EVICT_INTERVAL_SECONDS: Final = 60.0
ALERT_KEY: Final = b"portfolio"


# -- settings -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PortfolioSettings:
    """The portfolio's ``TXWATCH_PORTFOLIO_*`` variables (read once, like :class:`Settings`).

    Parameters
    ----------
    config
        ``TXWATCH_PORTFOLIO_CONFIG``: JSON file with bucket edges, periods and
        limits (keys of ``detectors.portfolio.DEFAULT_PORTFOLIO_CONFIG``);
        the packaged defaults when unset.
    topic
        ``TXWATCH_PORTFOLIO_TOPIC``: compacted topic of the partition
        partials; default ``<TXWATCH_APP_ID>-portfolio-partials``.
    publish_interval
        ``TXWATCH_PORTFOLIO_PUBLISH_INTERVAL``: seconds between two publishes
        of a changed partial (default 1).
    evaluate_interval
        ``TXWATCH_PORTFOLIO_EVALUATE_INTERVAL``: seconds between two
        computations of the merged book, gauges and limits (default 1).
    """

    config: Path | None = None
    topic: str | None = None
    publish_interval: float = 1.0
    evaluate_interval: float = 1.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> PortfolioSettings:
        env = os.environ if environ is None else environ

        def number(name: str, default: float) -> float:
            raw = env.get(PREFIX + name, "").strip()
            if not raw:
                return default
            try:
                value = float(raw)
            except ValueError as exc:
                message = f"{PREFIX}{name}={raw!r}: {exc}"
                raise SettingsError(message) from exc
            if not value > 0:
                message = f"{PREFIX}{name}={raw!r}: must be positive"
                raise SettingsError(message)
            return value

        config = env.get(PREFIX + "PORTFOLIO_CONFIG", "").strip()
        topic = env.get(PREFIX + "PORTFOLIO_TOPIC", "").strip()
        return cls(
            config=Path(config) if config else None,
            topic=topic or None,
            publish_interval=number("PORTFOLIO_PUBLISH_INTERVAL", 1.0),
            evaluate_interval=number("PORTFOLIO_EVALUATE_INTERVAL", 1.0),
        )

    def topic_for(self, settings: Settings) -> str:
        return self.topic or f"{settings.app_id}-portfolio-partials"

    @classmethod
    def documentation(cls) -> list[tuple[str, str, str]]:
        """``(variable, default, help)`` rows, for the README."""
        return [
            (PREFIX + "PORTFOLIO_CONFIG", "None",
             "JSON file with the portfolio's buckets, periods and limits."),
            (PREFIX + "PORTFOLIO_TOPIC", "<app id>-portfolio-partials",
             "Compacted topic of the per-partition portfolio partials."),
            (PREFIX + "PORTFOLIO_PUBLISH_INTERVAL", "1.0",
             "Seconds between two publishes of a changed partition partial."),
            (PREFIX + "PORTFOLIO_EVALUATE_INTERVAL", "1.0",
             "Seconds between two evaluations of the merged book (gauges, limits)."),
        ]


def load_portfolio_config(path: Path | None) -> PortfolioConfig:
    """The configuration in the file at ``path``, else the packaged defaults."""
    if path is None:
        return PortfolioConfig.from_mapping({})
    try:
        raw = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        message = f"cannot read portfolio configuration {path}: {exc}"
        raise ValueError(message) from exc
    if not isinstance(raw, dict):
        message = f"portfolio configuration {path} must be a JSON object"
        raise ValueError(message)
    return PortfolioConfig.from_mapping(raw)


# -- events -------------------------------------------------------------------------------


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def lending_event(event: Event) -> LendingEvent | None:
    """The book's view of a decoded event; ``None`` for events the book ignores."""
    if event.event_type not in LENDING_BOOK_TYPES:
        return None
    attributes = event.attributes
    loan_id = _text(attributes.get("loan_id"))
    if loan_id is None:
        return None
    outstanding = attributes.get("outstanding")
    days = attributes.get("days_past_due")
    term = attributes.get("term_months")
    return LendingEvent(
        event_id=event.event_id,
        event_type=event.event_type,
        at_ms=int(event.occurred_at.timestamp() * 1000),
        account_id=event.account_id,
        loan_id=loan_id,
        amount_minor=event.amount_minor,
        currency=event.currency,
        status=_text(attributes.get("status")),
        days_past_due=days if isinstance(days, int) and not isinstance(days, bool) else None,
        outstanding_minor=parse_amount_minor(outstanding) if isinstance(outstanding, str)
        else None,
        due_date=_text(attributes.get("due_date")),
        term_months=term if isinstance(term, int) and not isinstance(term, bool) else None,
        age_band=_text(attributes.get("age_band")),
        industry=event.industry,
        region=event.region,
        dealer=_text(attributes.get("dealer")),
    )


def loan_key(account_id: str, loan_id: str) -> bytes:
    """Table key of a loan: loan ids are unique per borrower, not necessarily globally."""
    return f"{account_id}/{loan_id}".encode()


# -- alerts -------------------------------------------------------------------------------


def alert_for(finding: PortfolioFinding, config: PortfolioConfig,
              detected_at: datetime) -> tuple[Alert, bytes]:
    """The alert of a finding and its JSON (with ``limit``, ``period``, ``subject``)."""
    amount = None if finding.amount_minor is None else contract_amount(finding.amount_minor)
    alert = Alert(
        alert_id=alert_id_for(finding.detector, finding.trigger),
        detector=finding.detector,
        severity=finding.severity,
        score=finding.score,
        reasons=finding.reasons,
        account_id=finding.account_id[:128],
        event_ids=(finding.trigger[:128],),
        event_type=finding.event_type,
        amount=amount,
        currency=config.currency if amount is not None else None,
        occurred_at=datetime.fromtimestamp(finding.at_ms / 1000, UTC),
        detected_at=detected_at,
        config_version=config.version,
    )
    record = {**alert.as_dict(), "limit": finding.limit, "period": finding.period,
              "subject": finding.subject}
    return alert, orjson.dumps(record)


# -- partials on the topic ----------------------------------------------------------------


def partial_record(partition: int, partial: BookPartial, config: PortfolioConfig,
                   lag: int | None = 0, now: datetime | None = None) -> bytes:
    """The published value of one partition's partial.

    ``lag`` is how many input messages of the partition were not in it yet
    (``None``: unknown).
    """
    moment = now or datetime.now(UTC)
    return orjson.dumps({
        "partition": partition,
        "lag": lag,
        "config_version": config.version,
        "published_at": moment.isoformat().replace("+00:00", "Z"),
        "partial": partial.published(config).as_dict(),
    })


class PartialsView:
    """The latest record of each key of the partials topic."""

    def __init__(self) -> None:
        self.partials: dict[int, BookPartial] = {}
        self.lags: dict[int, int | None] = {}
        self.versions: dict[int, str] = {}
        self.published_at: dict[int, str] = {}
        self.emitted: list[str] = []

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        if key == EMITTED_KEY:
            if value is not None:
                with contextlib.suppress(orjson.JSONDecodeError, TypeError):
                    self.emitted = [str(i) for i in orjson.loads(value)]
            return
        if key is None or not key.startswith(b"partition:"):
            return
        try:
            partition = int(key.split(b":", 1)[1])
        except ValueError:
            return
        if value is None:
            self.partials.pop(partition, None)
            self.lags.pop(partition, None)
            return
        try:
            record = orjson.loads(value)
            self.partials[partition] = BookPartial.from_dict(record["partial"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            log.warning("portfolio: unreadable partial of partition %s: %s", partition, exc)
            return
        lag = record.get("lag")
        self.lags[partition] = lag if isinstance(lag, int) else None
        self.versions[partition] = str(record.get("config_version"))
        self.published_at[partition] = str(record.get("published_at"))

    def missing(self, partitions: int) -> list[int]:
        return [p for p in range(partitions) if p not in self.partials]

    def behind(self, partitions: int, max_lag: int) -> list[int]:
        """Partitions whose latest partial was more than ``max_lag`` messages behind."""
        return [p for p in range(partitions)
                if (lag := self.lags.get(p)) is None or lag > max_lag]

    def book(self, config: PortfolioConfig) -> Book:
        return Book(BookPartial.merge(self.partials[p] for p in sorted(self.partials)), config)


async def read_partials(settings: Settings, topic: str, timeout: float = 15.0) -> PartialsView:
    """Read the partials topic from the beginning to its end (as of now)."""
    from aiokafka import TopicPartition

    from streams import clients

    view = PartialsView()
    consumer = clients.consumer(settings, client_id="txwatch-portfolio-cli")
    await consumer.start()
    try:
        if topic not in await consumer.topics():
            return view
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        deadline = time.monotonic() + timeout
        while await consumer.position(tp) < end:
            if time.monotonic() > deadline:
                message = f"could not read {topic} to its end within {timeout} s"
                raise TimeoutError(message)
            batch = await consumer.getmany(tp, timeout_ms=500)
            for record in batch.get(tp, ()):
                view.apply(record.key, record.value)
    finally:
        await consumer.stop()
    return view


# -- metrics ------------------------------------------------------------------------------


class PortfolioMetrics:
    """The portfolio gauges; every label has a bounded set of values.

    Parameters
    ----------
    registry
        Where the metrics are registered; tests pass a fresh ``CollectorRegistry``.
    config
        Bucket names, dimensions' top values and months on book.
    """

    def __init__(self, config: PortfolioConfig, registry: CollectorRegistry = REGISTRY) -> None:
        self.config = config
        self.events = Counter(
            "txwatch_portfolio_events", "Lending events applied to the book, by outcome.",
            ["outcome"], registry=registry,
        )
        for outcome in OUTCOMES:
            self.events.labels(outcome=outcome)
        self.loans = Gauge(
            "txwatch_portfolio_loans", "Loans in the book by delinquency bucket (closed ones "
            "within their retention).", ["bucket"], registry=registry,
        )
        self.outstanding = Gauge(
            "txwatch_portfolio_outstanding",
            "Outstanding principal by bucket, in currency units (written_off: charged off).",
            ["bucket"], registry=registry,
        )
        self.roll_rate = Gauge(
            "txwatch_portfolio_roll_rate",
            "Share of the loans (basis=loans) or opening principal (basis=principal) in "
            "from_bucket at the start of the period that ended it in to_bucket; period is "
            "'current' (in progress) or 'previous'.",
            ["granularity", "period", "from_bucket", "to_bucket", "basis"], registry=registry,
        )
        self.share = Gauge(
            "txwatch_portfolio_concentration_share",
            "Share of outstanding principal by dimension value (top values, then 'other').",
            ["dimension", "value"], registry=registry,
        )
        self.hhi = Gauge(
            "txwatch_portfolio_concentration_hhi",
            "Herfindahl-Hirschman index (0-1) of outstanding principal over a dimension's "
            "known values.", ["dimension"], registry=registry,
        )
        self.largest_borrower = Gauge(
            "txwatch_portfolio_largest_borrower_share",
            "Share of outstanding principal held by the largest borrower.", registry=registry,
        )
        self.vintage = Gauge(
            "txwatch_portfolio_vintage_delinquent_share",
            "Share of a vintage's observed loans delinquent (beyond the configured days or "
            "written off) at months on book; the 12 latest vintages.",
            ["vintage", "months_on_book"], registry=registry,
        )
        self.book_time = Gauge(
            "txwatch_portfolio_book_time_seconds",
            "Newest event time in the merged book (Unix seconds).", registry=registry,
        )
        self.partitions = Gauge(
            "txwatch_portfolio_partitions_reporting",
            "Partitions whose partial is in the merged book.", registry=registry,
        )
        self._shares: set[tuple[str, str]] = set()
        self._vintages: set[tuple[str, str]] = set()

    def observe(self, book: Book, partitions: int) -> None:
        """Set every gauge from the merged book."""
        config = self.config
        self.partitions.set(partitions)
        if book.clock_ms is not None:
            self.book_time.set(book.clock_ms / 1000)
        for bucket, (loans, held) in book.bucket_stock().items():
            self.loans.labels(bucket=bucket).set(loans)
            self.outstanding.labels(bucket=bucket).set(held / 100)
        for granularity in GRANULARITIES:
            periods = book.periods(granularity)
            for label, index in (("current", -1), ("previous", -2)):
                if len(periods) < -index:
                    continue
                matrix = book.migration(granularity, periods[index])
                for row in matrix.rows:
                    for column in matrix.columns:
                        for basis in ("loans", "principal"):
                            rate = matrix.rate(row, column, basis)
                            self.roll_rate.labels(
                                granularity=granularity, period=label, from_bucket=row,
                                to_bucket=column, basis=basis,
                            ).set(0.0 if rate is None else rate)
        shares: set[tuple[str, str]] = set()
        for dimension in DIMENSIONS:
            table = book.concentration(dimension)
            self.hhi.labels(dimension=dimension).set(table.hhi or 0.0)
            for value in table.top(config.top_values):
                shares.add((dimension, value.value))
                self.share.labels(dimension=dimension, value=value.value).set(value.share)
        for dimension, stale_value in self._shares - shares:
            self.share.remove(dimension, stale_value)
        self._shares = shares
        largest = book.largest_borrowers(1)
        self.largest_borrower.set(largest[0][2] if largest else 0.0)
        vintages: set[tuple[str, str]] = set()
        for vintage_row in book.vintages()[-12:]:
            for months in config.months_on_book:
                share = vintage_row.delinquent_share(months)
                if share is None:
                    continue
                vintages.add((vintage_row.vintage, str(months)))
                self.vintage.labels(vintage=vintage_row.vintage,
                                    months_on_book=str(months)).set(share)
        for vintage, months_label in self._vintages - vintages:
            self.vintage.remove(vintage, months_label)
        self._vintages = vintages


# -- the agent ----------------------------------------------------------------------------


class PortfolioAgent:
    """Faust glue around :mod:`detectors.portfolio` (see the module docstring)."""

    def __init__(self, runtime: Runtime, config: PortfolioConfig,
                 portfolio_settings: PortfolioSettings, metrics: PortfolioMetrics,
                 table: Any, partials_topic: Any) -> None:
        self.runtime = runtime
        self.config = config
        self.portfolio_settings = portfolio_settings
        self.metrics = metrics
        self.table = table
        self.partials_topic = partials_topic
        self.partials: dict[int, BookPartial] = {}
        self.assigned: set[int] = set()
        self.dirty: set[int] = set()
        self.sent_at: dict[int, float] = {}
        self.positions: dict[int, int] = {}
        self.sent_live: dict[int, bool] = {}
        self.view = PartialsView()
        self.emitted: deque[str] = deque(maxlen=EMITTED_KEPT)
        self.emitted_ids: set[str] = set()
        self.caught_up = False
        self.topic_ready = False
        self.book: Book | None = None
        self.batches = 0

    # per event ----------------------------------------------------------------------
    def handle(self, raw: bytes | None, partition: int, offset: int | None,
               topic: str | None = None) -> tuple[bytes, LoanState] | None:
        """Apply one message to its loan; the touched loan, or ``None``."""
        if offset is not None:
            self.positions[partition] = offset
        decoded = self.runtime.monitor.decoder.decode(raw, topic, partition, offset)
        if isinstance(decoded, DeadLetter):
            return None  # the monitor agent dead-letters it
        event = lending_event(decoded)
        if event is None:
            return None
        key = loan_key(event.account_id, event.loan_id)
        store = self.table.data
        loan: LoanState | None = store.get(key)
        partial = self.partials.get(partition)
        if partial is None:
            partial = self._rebuild_partition(partition)
        if loan is None:
            loan = LoanState(event.loan_id, event.account_id, partition)
            store[key] = loan
        else:
            partial.add_loan(loan, self.config, -1, partition)
        outcome = apply_event(loan, event, self.config, offset)
        partial.add_loan(loan, self.config, +1, partition)
        self.metrics.events.labels(outcome=outcome).inc()
        if outcome == DUPLICATE:
            return None
        self.dirty.add(partition)
        return key, loan

    async def process_batch(self, events: Sequence[Any]) -> None:
        """Apply a batch, then write each touched loan to the changelog once.

        Synchronous between reading and writing state: a rebalance handler
        cannot run in the middle of it.
        """
        touched: dict[bytes, LoanState] = {}
        for event in events:
            message = event.message
            result = self.handle(message.value, message.partition, message.offset,
                                 message.topic)
            if result is not None:
                touched[result[0]] = result[1]
        for key, loan in touched.items():
            self.table.send_changelog(loan.partition, key, loan.dumps(), value_serializer="raw")
        self.batches += 1

    # partitions ----------------------------------------------------------------------
    def _loans_of(self, partition: int) -> list[LoanState]:
        return [loan for loan in self.table.data.values()
                if isinstance(loan, LoanState) and loan.partition == partition]

    def _rebuild_partition(self, partition: int) -> BookPartial:
        partial = BookPartial.of_loans(self._loans_of(partition), self.config, partition)
        self.partials[partition] = partial
        self.dirty.add(partition)
        return partial

    def rebuild(self, assigned: Iterable[int]) -> None:
        """Recompute the partials of the partitions now owned, from the recovered table."""
        self.assigned = set(assigned)
        by_partition: dict[int, list[LoanState]] = {p: [] for p in self.assigned}
        for loan in self.table.data.values():
            if isinstance(loan, LoanState) and loan.partition in by_partition:
                by_partition[loan.partition].append(loan)
        self.partials = {p: BookPartial.of_loans(loans, self.config, p)
                         for p, loans in by_partition.items()}
        self.dirty = set(self.assigned)
        log.info("portfolio: partitions %s, %d loans", sorted(self.assigned),
                 sum(len(v) for v in by_partition.values()))

    def assigned_partitions(self) -> set[int]:
        lending = self.runtime.settings.lending_topic
        return {tp.partition for tp in self.runtime.app.consumer.assignment()
                if tp.topic == lending}

    def evict_closed(self) -> int:
        """Drop closed loans past their retention (with a changelog tombstone)."""
        evicted = 0
        store = self.table.data
        for key, loan in list(store.items()):
            if not isinstance(loan, LoanState) or loan.partition not in self.partials:
                continue
            partial = self.partials[loan.partition]
            clock = partial.clocks.get(loan.partition)
            if clock is None or not evictable(loan, clock, self.config):
                continue
            partial.add_loan(loan, self.config, -1, loan.partition)
            del store[key]
            self.table.send_changelog(loan.partition, key, None, value_serializer="raw")
            self.dirty.add(loan.partition)
            evicted += 1
        return evicted

    # publishing ----------------------------------------------------------------------
    async def partition_lag(self, partition: int) -> int | None:
        """Input messages of the partition not applied yet; ``None`` when unknown."""
        try:
            consumer = self.runtime.app.consumer
            lending = self.runtime.settings.lending_topic
            tp = next((tp for tp in consumer.assignment()
                       if tp.topic == lending and tp.partition == partition), None)
            if tp is None:
                return None
            highwater = consumer.highwater(tp)
            processed = self.positions.get(partition)
            next_offset = processed + 1 if processed is not None else await consumer.position(tp)
        except Exception:  # no consumer yet, or a rebalance under way: unknown
            return None
        if highwater is None or next_offset is None:
            return None
        return max(0, int(highwater) - int(next_offset))

    async def publish(self) -> None:
        """Send the partials that changed, went live or fell behind (and any not sent
        for 30 s)."""
        if not self.topic_ready:
            return
        now = time.monotonic()
        for partition in sorted(self.assigned):
            partial = self.partials.get(partition)
            if partial is None:
                continue
            lag = await self.partition_lag(partition)
            live = lag is not None and lag <= self.config.live_max_lag
            stale = now - self.sent_at.get(partition, -REFRESH_SECONDS) >= REFRESH_SECONDS
            if partition not in self.dirty and not stale and self.sent_live.get(partition) == live:
                continue
            self.dirty.discard(partition)
            value = partial_record(partition, partial, self.config, lag)
            await self.partials_topic.send(key=f"partition:{partition}".encode(), value=value)
            self.sent_at[partition] = now
            self.sent_live[partition] = live

    # the merged book ----------------------------------------------------------------
    def is_leader(self) -> bool:
        """Book-level alerts come from the owner of lending partition 0."""
        return 0 in self.assigned

    async def evaluate(self) -> list[Alert]:
        """Merge, set the gauges and (leader, caught up, all partitions in) send alerts."""
        view = self.view
        if not view.partials:
            return []
        try:
            book = view.book(self.config)
        except ValueError as exc:
            log.warning("portfolio: cannot merge partials: %s", exc)
            return []
        self.book = book
        self.metrics.observe(book, len(view.partials))
        partitions = self.runtime.settings.partitions
        if view.missing(partitions) or not self.caught_up or not self.is_leader():
            return []
        live = not view.behind(partitions, self.config.live_max_lag)
        for alert_id in view.emitted:
            self._remember(alert_id)
        detected_at = datetime.now(UTC)
        sent: list[Alert] = []
        for finding in check_limits(book, live=live):
            alert, payload = alert_for(finding, self.config, detected_at)
            if alert.alert_id in self.emitted_ids:
                continue
            delivery = await self.runtime.alert_topic.send(key=ALERT_KEY, value=payload)
            await delivery
            self._remember(alert.alert_id)
            self.runtime.sensors.on_alert(alert, None)
            sent.append(alert)
            log.info("portfolio alert %s %s: %s", alert.detector, finding.subject,
                     alert.reasons[0])
        if sent:
            await self.partials_topic.send(key=EMITTED_KEY,
                                           value=orjson.dumps(list(self.emitted)))
        return sent

    def _remember(self, alert_id: str) -> None:
        if alert_id in self.emitted_ids:
            return
        if len(self.emitted) == self.emitted.maxlen:
            self.emitted_ids.discard(self.emitted[0])
        self.emitted.append(alert_id)
        self.emitted_ids.add(alert_id)

    async def run_reader(self) -> None:
        """Declare the partials topic, then follow it for the life of the worker."""
        from aiokafka import TopicPartition

        from streams import clients

        settings = self.runtime.settings
        topic = self.portfolio_settings.topic_for(settings)
        try:
            await self.partials_topic.maybe_declare()
        except Exception as exc:  # it may exist already; reading it will tell
            log.warning("portfolio: could not declare %s: %s", topic, exc)
        self.topic_ready = True
        consumer = clients.consumer(settings, client_id=f"{settings.app_id}-portfolio-reader")
        await consumer.start()
        try:
            tp = TopicPartition(topic, 0)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            end = (await consumer.end_offsets([tp]))[tp]
            changed = False
            last = 0.0
            interval = self.portfolio_settings.evaluate_interval
            while True:
                batch = await consumer.getmany(tp, timeout_ms=250)
                for record in batch.get(tp, ()):
                    self.view.apply(record.key, record.value)
                    changed = True
                if not self.caught_up and await consumer.position(tp) >= end:
                    self.caught_up = True
                    changed = True
                if changed and time.monotonic() - last >= interval:
                    changed = False
                    last = time.monotonic()
                    try:
                        await self.evaluate()
                    except Exception:
                        log.exception("portfolio: evaluation failed; retrying on the next change")
                        changed = True
        finally:
            await consumer.stop()


def attach_portfolio(runtime: Runtime, *, registry: CollectorRegistry | None = None,
                     portfolio_settings: PortfolioSettings | None = None,
                     config: PortfolioConfig | None = None) -> PortfolioAgent:
    """Add the portfolio agent, its table, topic, timers and gauges to a runtime.

    Call once, after the runtime is built and before the worker starts.

    Parameters
    ----------
    runtime
        From :func:`streams.app.create_app`.
    registry
        Where the gauges go; default the global registry when the runtime has
        metrics (the worker's ``/metrics``), else a private one.
    portfolio_settings
        Default :meth:`PortfolioSettings.from_env`.
    config
        Default: the file named by the settings, else the packaged defaults.
    """
    from faust.serializers import codecs

    app: Any = runtime.app  # faust's own annotations do not cover what we set here
    existing: PortfolioAgent | None = getattr(app, "_txwatch_portfolio", None)
    if existing is not None:
        return existing

    class LoanStateCodec(codecs.Codec):
        """Changelog values are :meth:`LoanState.dumps` bytes."""

        def _dumps(self, obj: Any) -> bytes:
            if isinstance(obj, bytes | bytearray):
                return bytes(obj)
            return bytes(obj.dumps())

        def _loads(self, s: bytes) -> LoanState:
            return LoanState.loads(s)

    codecs.register(LOAN_CODEC, LoanStateCodec())

    class StoredLoanState:
        """The table's value type as far as Faust is concerned: Faust takes the
        changelog's serializer from ``value_type._options.serializer`` when
        ``app.Table`` creates the topic, and recovery decodes with it."""

        class _options:
            serializer = LOAN_CODEC

        @classmethod
        def from_data(cls, data: Any, preferred_type: Any = None) -> Any:
            return data

    psettings = portfolio_settings or PortfolioSettings.from_env()
    config = config or load_portfolio_config(psettings.config)
    if registry is None:
        registry = REGISTRY if runtime.metrics is not None else CollectorRegistry()
    metrics = PortfolioMetrics(config, registry)
    settings = runtime.settings
    replicated = replica_configs(settings.replication_factor or 1)
    table = app.Table(TABLE_NAME, default=None, partitions=settings.partitions, key_type=bytes,
                      value_type=StoredLoanState, extra_topic_configs=replicated)
    partials_topic = app.topic(
        psettings.topic_for(settings), key_serializer="raw", value_serializer="raw",
        partitions=1, compacting=True, config=replicated,
    )
    lending_topic = app.topic(
        settings.lending_topic, key_type=bytes, value_type=bytes, key_serializer="raw",
        value_serializer="raw", partitions=settings.partitions, config=replicated,
    )
    agent = PortfolioAgent(runtime, config, psettings, metrics, table, partials_topic)
    app._txwatch_portfolio = agent

    async def portfolio(stream: Any) -> None:
        async for events in stream.take_events(settings.batch_size, within=settings.batch_within):
            await agent.process_batch(events)

    app.agent(lending_topic, name=AGENT_NAME)(portfolio)

    @app.task
    async def portfolio_reader() -> None:
        await agent.run_reader()

    @app.timer(interval=psettings.publish_interval)
    async def portfolio_publish() -> None:
        await agent.publish()

    @app.timer(interval=EVICT_INTERVAL_SECONDS)
    async def portfolio_evict() -> None:
        agent.evict_closed()

    @app.on_rebalance_complete.connect
    async def on_complete(app: Any, *args: Any, **kwargs: Any) -> None:
        agent.rebuild(agent.assigned_partitions())

    log.info("portfolio: buckets %s, %d limits, config %s, partials on %s",
             config.scheme.open_buckets, len(config.limits), config.version,
             psettings.topic_for(settings))
    return agent


# -- terminal tables and CSV --------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]],
           right: Iterable[int] = ()) -> list[str]:
    body = [list(header), *[list(r) for r in rows]]
    widths = [max(len(row[i]) for row in body) for i in range(len(header))]
    aligned = set(right)
    lines = []
    for row in body:
        cells = [cell.rjust(widths[i]) if i in aligned else cell.ljust(widths[i])
                 for i, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    return lines


def render_matrix(matrix: Migration, basis: str = "loans") -> list[str]:
    state = "complete" if matrix.complete else "in progress"
    what = "loans" if basis == "loans" else "opening outstanding principal"
    lines = [f"{matrix.granularity.capitalize()} migration {matrix.period} ({state}): "
             f"share of {what} in each bucket at the start of the period (rows) by bucket "
             f"at its end"]
    header = ["from \\ to", *matrix.columns, "loans", "outstanding"]
    rows = []
    for row in matrix.rows:
        if matrix.opening_loans[row] == 0 and row == "new":
            continue
        rows.append([row, *[_pct(matrix.rate(row, c, basis)) for c in matrix.columns],
                     f"{matrix.opening_loans[row]:,}",
                     format_minor(matrix.opening_principal[row])])
    lines.extend(_table(header, rows, right=range(1, len(header))))
    return lines


def render_book(book: Book, granularity: str = "monthly", period: str | None = None,
                top: int | None = None, missing: Sequence[int] = (),
                partitions: int | None = None, behind: Sequence[int] = ()) -> str:
    """The terminal report: buckets, migration, concentration, borrowers, vintages."""
    config = book.config
    currency = config.currency or ""
    top = top or config.top_values
    lines: list[str] = []
    clock = book.clock_ms
    reporting = len(book.partial.clocks)
    head = f"txwatch portfolio: book as of {iso_time(clock) if clock else '-'} (event time)"
    if partitions is not None:
        head += f", partials from {partitions - len(missing)} of {partitions} partitions"
    lines.append(head + f", {reporting} with loans, config {config.version}")
    settled = book.settled_ms
    if clock is not None and settled is not None and not book.consistent:
        lines.append(f"NOTE: partitions are between {iso_time(settled)} and {iso_time(clock)} "
                     "(catching up): concentration is a mix of moments")
    if missing:
        lines.append(f"WARNING: no partial yet from partitions {list(missing)}: figures are "
                     "partial")
    if behind:
        lines.append(f"NOTE: partitions {list(behind)} are behind their input (lag "
                     f"> {config.live_max_lag}): the latest events are not all in")
    stock = book.bucket_stock()
    lines.append(
        f"open loans {book.open_loans:,}, outstanding {format_minor(book.open_outstanding_minor)} "
        f"{currency}; written off {stock['written_off'][0]:,} "
        f"({format_minor(stock['written_off'][1])}); repaid {stock['repaid'][0]:,} "
        f"({book.partial.repaid_early:,} early)")
    lines.append("")
    lines.append("Delinquency buckets")
    total_loans = book.open_loans
    total_out = book.open_outstanding_minor
    rows = []
    for bucket, (loans, held) in stock.items():
        is_open = bucket in config.scheme.open_buckets
        rows.append([bucket, f"{loans:,}", _pct(loans / total_loans) if is_open and total_loans
                     else "", format_minor(held),
                     _pct(held / total_out) if is_open and total_out else ""])
    lines.extend(_table(["bucket", "loans", "share", f"outstanding {currency}", "share"],
                        rows, right=(1, 2, 3, 4)))
    periods = book.periods(granularity)
    shown: list[str]
    if period is not None:
        shown = [period]
    else:
        complete = [p for p in periods if book.is_complete(granularity, p)]
        shown = [*complete[-1:], *[p for p in periods[-1:] if p not in complete[-1:]]]
    for key in shown:
        matrix = book.migration(granularity, key)
        lines.append("")
        lines.extend(render_matrix(matrix, "loans"))
        if matrix.complete:
            lines.append("")
            lines.extend(render_matrix(matrix, "principal"))
    for dimension in DIMENSIONS:
        table = book.concentration(dimension)
        lines.append("")
        hhi = "-" if table.hhi is None else f"{table.hhi:.4f}"
        lines.append(f"Concentration by {dimension}: HHI {hhi} (known values)")
        lines.extend(_table(
            [dimension, "loans", f"outstanding {currency}", "share"],
            ([v.value, f"{v.loans:,}", format_minor(v.outstanding_minor), _pct(v.share)]
             for v in table.top(top)), right=(1, 2, 3)))
    lines.append("")
    lines.append("Largest borrowers")
    lines.extend(_table(
        ["account", f"outstanding {currency}", "share"],
        ([account, format_minor(held), _pct(share)]
         for account, held, share in book.largest_borrowers(min(5, config.top_borrowers))),
        right=(1, 2)))
    lines.append("")
    bad_days = config.vintage_delinquent_days
    lines.append(f"Vintages: share of observed loans more than {bad_days} days past due or "
                 "written off, by months on book (* = not every loan there yet)")
    header = ["vintage", "loans", f"disbursed {currency}",
              *[f"MOB {m}" for m in config.months_on_book]]
    vintage_rows = []
    for vintage in book.vintages()[-config.monthly_periods:]:
        cells = []
        for months in config.months_on_book:
            cell = vintage.cells.get(months)
            share = vintage.delinquent_share(months)
            cells.append("-" if cell is None else _pct(share) + ("" if cell[4] else "*"))
        vintage_rows.append([vintage.vintage, f"{vintage.loans:,}",
                             format_minor(vintage.principal_minor), *cells])
    lines.extend(_table(header, vintage_rows, right=range(1, len(header))))
    return "\n".join(lines)


def write_csv(book: Book, directory: Path) -> list[Path]:
    """``buckets``, ``migration``, ``concentration``, ``borrowers``, ``vintages`` CSV files.

    Money is exact decimal text in currency units; shares have six decimals.
    """
    directory.mkdir(parents=True, exist_ok=True)
    config = book.config
    written: list[Path] = []

    def share(value: float | None) -> str:
        return "" if value is None else f"{value:.6f}"

    def emit(name: str, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        path = directory / f"{name}.csv"
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(rows)
        written.append(path)

    emit("buckets", ["bucket", "loans", "outstanding"],
         ([b, loans, contract_amount(held)] for b, (loans, held) in book.bucket_stock().items()))
    migration_rows = []
    for granularity in GRANULARITIES:
        for period in book.periods(granularity):
            matrix = book.migration(granularity, period)
            for row in matrix.rows:
                for column in matrix.columns:
                    migration_rows.append([
                        granularity, period, "true" if matrix.complete else "false", row, column,
                        matrix.loans[row][column], share(matrix.rate(row, column, "loans")),
                        contract_amount(matrix.principal[row][column]),
                        share(matrix.rate(row, column, "principal")),
                        matrix.opening_loans[row], contract_amount(matrix.opening_principal[row]),
                    ])
    emit("migration", ["granularity", "period", "complete", "from_bucket", "to_bucket", "loans",
                       "loans_share", "principal", "principal_share", "opening_loans",
                       "opening_principal"], migration_rows)
    concentration_rows = []
    for dimension in DIMENSIONS:
        table = book.concentration(dimension)
        for value in table.values:
            concentration_rows.append([dimension, value.value, value.loans,
                                       contract_amount(value.outstanding_minor), share(value.share),
                                       share(table.hhi)])
    emit("concentration", ["dimension", "value", "loans", "outstanding", "share", "hhi"],
         concentration_rows)
    emit("borrowers", ["account_id", "outstanding", "share"],
         ([account, contract_amount(held), share(s)]
          for account, held, s in book.largest_borrowers(config.top_borrowers)))
    vintage_rows = []
    for vintage in book.vintages():
        for months in config.months_on_book:
            cell = vintage.cells.get(months)
            if cell is None:
                continue
            observed, bad, observed_out, bad_out, complete = cell
            vintage_rows.append([
                vintage.vintage, vintage.loans, contract_amount(vintage.principal_minor), months,
                "true" if complete else "false", observed, bad,
                share(vintage.delinquent_share(months)), contract_amount(observed_out),
                contract_amount(bad_out),
            ])
    emit("vintages", ["vintage", "loans", "principal", "months_on_book", "complete",
                      "observed_loans", "delinquent_loans", "delinquent_share",
                      "observed_outstanding", "delinquent_outstanding"], vintage_rows)
    return written


# -- command line -------------------------------------------------------------------------


def run_portfolio(settings: Settings, args: argparse.Namespace) -> int:
    """``txwatch portfolio``: print the book; ``--csv DIR`` also writes the CSV files."""
    try:
        psettings = PortfolioSettings.from_env()
        config = load_portfolio_config(psettings.config)
    except (SettingsError, ValueError) as exc:
        print(f"txwatch portfolio: {exc}", file=sys.stderr)
        return 2
    topic = psettings.topic_for(settings)
    try:
        view = asyncio.run(read_partials(settings, topic, args.timeout))
    except (TimeoutError, OSError) as exc:
        print(f"txwatch portfolio: {exc}", file=sys.stderr)
        return 1
    if not view.partials:
        print(f"txwatch portfolio: no partials on {topic} yet (is a worker running?)",
              file=sys.stderr)
        return 1
    try:
        book = view.book(config)
    except ValueError as exc:
        print(f"txwatch portfolio: {exc}", file=sys.stderr)
        return 1
    if args.period is not None and args.period not in book.periods(args.granularity):
        print(f"txwatch portfolio: no {args.granularity} period {args.period} in the book "
              f"(kept: {', '.join(book.periods(args.granularity)) or 'none'})", file=sys.stderr)
        return 2
    missing = view.missing(settings.partitions)
    behind = [p for p in view.behind(settings.partitions, config.live_max_lag)
              if p not in missing]
    print(render_book(book, args.granularity, args.period, args.top, missing,
                      settings.partitions, behind))
    if args.csv is not None:
        for path in write_csv(book, args.csv):
            print(f"wrote {path}", file=sys.stderr)
    return 0


def run_portfolio_simulate(settings: Settings, args: argparse.Namespace) -> int:
    """``txwatch portfolio simulate``: publish a simulated lending book."""
    from streams.simulate import simulate_lending_book

    report = asyncio.run(simulate_lending_book(
        settings, seed=args.seed, borrowers=args.borrowers, months=args.months, rate=args.rate,
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    ))
    print(report)
    return 1 if report.failed else 0


def register_cli(subparsers: Any) -> None:
    """Add ``txwatch portfolio [--csv DIR]`` and ``txwatch portfolio simulate``."""
    parser = subparsers.add_parser(
        "portfolio", help="lending book: migration matrix, concentration, vintages",
        description="Print the live lending book from the partials the workers publish: "
                    "delinquency buckets, the migration matrix (roll rates), concentration "
                    "of outstanding principal and vintages.")
    parser.add_argument("--csv", type=Path, default=None, metavar="DIR",
                        help="also write buckets, migration, concentration, borrowers and "
                             "vintages CSV files to DIR")
    parser.add_argument("--granularity", choices=GRANULARITIES, default="monthly",
                        help="periods of the printed matrix (default monthly)")
    parser.add_argument("--period", default=None,
                        help="print this period (YYYY-MM or YYYY-MM-DD); default the last "
                             "complete one and the current one")
    parser.add_argument("--top", type=int, default=None,
                        help="values shown per concentration dimension")
    parser.add_argument("--timeout", type=float, default=15.0,
                        help="seconds allowed to read the partials topic")
    parser.set_defaults(func=run_portfolio)
    actions = parser.add_subparsers(dest="portfolio_command", metavar="{simulate}")
    simulate = actions.add_parser(
        "simulate", help="publish a simulated lending book (deteriorating cohort, "
                         "concentrated region)")
    simulate.add_argument("--seed", type=int, default=7)
    simulate.add_argument("--borrowers", type=int, default=1500)
    simulate.add_argument("--months", type=int, default=9,
                          help="months of event time simulated")
    simulate.add_argument("--rate", type=float, default=None,
                          help="events per second (default: as fast as possible)")
    simulate.set_defaults(func=run_portfolio_simulate)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m streams.portfolio``: the ``portfolio`` command on its own."""
    parser = argparse.ArgumentParser(prog="txwatch")
    register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["portfolio", *(sys.argv[1:] if argv is None else argv)])
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"txwatch: bad setting: {exc}", file=sys.stderr)
        return 2
    result: int = args.func(settings, args)
    return result


if __name__ == "__main__":
    sys.exit(main())
