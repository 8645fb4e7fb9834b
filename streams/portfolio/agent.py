"""The portfolio agent: loan table, partition partials, merged book, gauges, alerts.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
from prometheus_client import REGISTRY, CollectorRegistry

from detectors.portfolio import (
    DUPLICATE,
    Book,
    BookPartial,
    LoanState,
    PortfolioConfig,
    apply_event,
    check_limits,
    evictable,
)
from streams.alerts import Alert
from streams.clients import replica_configs
from streams.events import DeadLetter

if TYPE_CHECKING:
    from streams.runtime import Runtime


from streams.portfolio.config import (
    AGENT_NAME,
    ALERT_KEY,
    EMITTED_KEPT,
    EMITTED_KEY,
    EVICT_INTERVAL_SECONDS,
    LOAN_CODEC,
    REFRESH_SECONDS,
    TABLE_NAME,
    PortfolioSettings,
    load_portfolio_config,
)
from streams.portfolio.metrics import PortfolioMetrics
from streams.portfolio.records import (
    PartialsView,
    alert_for,
    lending_event,
    loan_key,
    partial_record,
)

log = logging.getLogger(__name__)


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


