"""The monitor agent: batches of input messages in, alerts and state out.

Per batch (``stream.take_events``), in this order:

1. every message goes through :meth:`Monitor.process` (decode, count, detect);
2. alerts, dead letters and records for the derived stages are handed to
   the producer, then each account touched by the batch is written to the
   table's changelog once, serialised now, and so is each input partition's
   model record (global models, alert budgets), delivered after the alerts and
   before the accounts; the batch **waits for the delivery of every one**
   (:class:`Outbox`);
3. Faust acks the batch and later commits its offsets.

So a crash at any point either replays the batch with its old state (the
same alerts are produced again, with the same ids) or finds the state
already holding the batch's offsets, whose alerts were delivered in step 2.
Nothing is lost and no alert id gets a second, different content (only
``detected_at`` differs on a replay).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from streams.codec import dead_letter_record
from streams.pipeline import gauge_totals
from streams.stages import DerivedStage, Forward, StageEntry

if TYPE_CHECKING:
    from streams.runtime import Runtime

log = logging.getLogger(__name__)

LAG_INTERVAL_SECONDS = 5.0


class Outbox:
    """A batch's output records, handed to the producer together when the batch is done.

    Faust's ``topic.send_soon`` wraps every record in a ``FutureMessage`` and
    queues it for a background task. A worker produces up to 2.3 records per
    input event (changelog, derived-stage records, their changelog), and that
    path was 18% of its profile (``docs/performance/README.md``). Records
    here go straight to ``app.producer.send`` (aiokafka's send and its own
    batching); :meth:`deliver` waits for every one to be acknowledged. Faust
    still flushes the same producer before it commits offsets. Keys and values
    are bytes: every topic and table of the worker uses the raw serializer.
    """

    __slots__ = ("records",)

    def __init__(self) -> None:
        self.records: list[tuple[str, bytes | None, bytes | None, int | None]] = []

    def add(self, topic: str, key: bytes | None, value: bytes | None,
            partition: int | None = None) -> None:
        self.records.append((topic, key, value, partition))

    async def deliver(self, producer: Any) -> None:
        """Send every record, in order, and wait until the broker has them all."""
        records, self.records = self.records, []
        deliveries = [await producer.send(topic, key, value, partition, None, None)
                      for topic, key, value, partition in records]
        if deliveries:
            await asyncio.gather(*deliveries)


class MonitorAgent:
    """Faust glue around :class:`streams.pipeline.Monitor`."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.positions: dict[Any, int] = {}
        self._assigned_at: float | None = time.monotonic()
        self.batches = 0
        self.topics = OutputTopics(runtime, runtime.table)
        model_table = runtime.model_table
        self.models_changelog: str | None = (
            model_table.changelog_topic.get_topic_name() if model_table is not None else None)

    async def process_batch(self, events: Sequence[Any]) -> None:
        rt = self.runtime
        store = rt.table.data
        model_store = rt.model_table.data if rt.model_table is not None else None
        monitor = rt.monitor
        now = datetime.now(UTC)
        dirty: dict[bytes, int] = {}
        out = Outbox()
        topics = self.topics
        done: dict[Any, int] = {}
        oldest_ts: float | None = None
        for event in events:
            message = event.message
            ts = message.timestamp
            if ts is not None and (oldest_ts is None or ts < oldest_ts):
                oldest_ts = ts
            outcome = monitor.process(
                message.value, store, topic=message.topic, partition=message.partition,
                offset=message.offset, source_timestamp=ts, now=now, models=model_store,
            )
            done[message.tp] = message.offset
            if outcome.dead_letter is not None:
                out.add(topics.dead_letters, message.key,
                        dead_letter_record(outcome.dead_letter, now))
                continue
            if outcome.event is None or outcome.duplicate:
                continue
            key = outcome.event.account_id.encode()
            dirty[key] = message.partition
            for alert in outcome.alerts:
                out.add(topics.alerts, key, alert.dumps())
            for forward in outcome.forwards:
                topics.forward(out, forward)
        models = monitor.model_snapshots(model_store)
        if models and self.models_changelog is not None:
            # Three steps, each delivered before the next: the alerts, then the
            # partitions' models, then the accounts. A crash in between leaves the
            # models behind the alerts they raised and ahead of the accounts, which
            # the replay mends (Monitor.process skips what the models learnt); models
            # behind the accounts would miss events for good (the replay guard skips
            # them), and records sent together may land in any order.
            await out.deliver(rt.app.producer)
            for model_key, model_partition, record in models:
                out.add(self.models_changelog, model_key, record, model_partition)
            await out.deliver(rt.app.producer)
        for key, partition in dirty.items():
            if (state := store.get(key)) is not None:
                out.add(topics.changelog, key, state.dumps(), partition)
        # waiting here, not only on Faust's pre-commit flush, keeps "state in Kafka
        # before the offsets that produced it are committed" whatever Faust does
        await out.deliver(rt.app.producer)
        # only now: a lag of 0 then means every output of these messages is in Kafka
        self.positions.update(done)
        self.batches += 1
        if self._assigned_at is not None:
            rt.sensors.on_ready(time.monotonic() - self._assigned_at)
            self._assigned_at = None
        rt.sensors.on_batch(len(events), oldest_ts)

    def on_assignment(self) -> None:
        self._assigned_at = time.monotonic()

    def on_recovered(self) -> None:
        self.recount_gauges()
        if self._assigned_at is not None:
            self.runtime.sensors.on_ready(time.monotonic() - self._assigned_at)
            self._assigned_at = None

    def recount_gauges(self) -> None:
        """Detector gauges summed over the recovered state (live, they move by deltas)."""
        totals = gauge_totals(self.runtime.monitor.alerters, self.runtime.table.data.values())
        for detector, gauges in totals.items():
            self.runtime.sensors.on_gauge_totals(detector, gauges)

    async def report_lag(self, stage_agents: Sequence[StageAgent] = ()) -> None:
        """Export the lag of every assigned input and derived-stage partition.

        The derived stages' backlog (flow relays above all) can outlast the
        input's by minutes; without their lag nobody sees a worker still busy.
        High watermarks are asked of the broker: the consumer's cached ones stop
        moving while a partition is paused for a full stream buffer.
        """
        rt = self.runtime
        consumer = rt.app.consumer
        positions: dict[str, dict[Any, int]] = {t: self.positions for t in rt.settings.input_topics}
        for stage_agent in stage_agents:
            positions[stage_agent.topic_name] = stage_agent.positions
        assigned = [tp for tp in consumer.assignment() if tp.topic in positions]
        # positions before high watermarks: the records a finished batch sent on are
        # then inside the watermarks, so all zeros means nothing is left anywhere
        processed = {tp: positions[tp.topic].get(tp) for tp in assigned}
        try:
            highwaters = dict(await consumer.highwaters(*assigned)) if assigned else {}
        except Exception as exc:  # a failed request: fall back to the cached watermarks
            log.debug("lag: high watermarks from the broker failed: %r", exc)
            highwaters = {}
        for tp in assigned:
            highwater = highwaters.get(tp)
            if highwater is None:
                highwater = consumer.highwater(tp)
            if highwater is None:
                continue
            last = processed[tp]
            next_offset = last + 1 if last is not None else await consumer.position(tp)
            if next_offset is None:
                continue
            rt.sensors.on_lag(tp.topic, tp.partition, max(0, highwater - next_offset))
        rt.sensors.on_state_size(len(rt.table.data))


#: Exit status of a worker that stopped itself rather than commit a batch it failed.
BATCH_FAILED_EXIT = 70


async def guarded(process: Any, events: Sequence[Any]) -> None:
    """Run one batch; if it fails, stop the process before Faust can commit it.

    Faust acks a ``take_events`` batch when the generator resumes, whatever
    happened inside, so an exception here (a send the broker refused, a bug)
    would commit offsets whose alerts and state never reached Kafka. Exiting
    at once leaves them uncommitted: the restarted worker processes the batch
    again.
    """
    try:
        await process(events)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.critical("a batch of %d events failed; exiting without committing it "
                     "(it is processed again after the restart)", len(events), exc_info=True)
        logging.shutdown()
        os._exit(BATCH_FAILED_EXIT)


class OutputTopics:
    """The names of the topics an agent writes to, looked up once."""

    def __init__(self, runtime: Runtime, table: Any) -> None:
        self.alerts: str = runtime.alert_topic.get_topic_name()
        self.dead_letters: str = runtime.dead_letter_topic.get_topic_name()
        self.changelog: str = table.changelog_topic.get_topic_name()
        self.stages: dict[str, str] = {
            name: topic.get_topic_name() for name, topic in runtime.stage_topics.items()}

    def forward(self, out: Outbox, forward: Forward) -> None:
        """A record for a derived stage, keyed by that stage's entity."""
        topic = self.stages.get(forward.stage)
        if topic is not None:  # else the stage is switched off in this configuration
            out.add(topic, forward.key.encode(), forward.dumps())


class StageAgent:
    """Faust glue around one :class:`streams.stages.DerivedStage`, same batch discipline."""

    def __init__(self, runtime: Runtime, stage: DerivedStage, table: Any) -> None:
        self.runtime = runtime
        self.stage = stage
        self.table = table
        self.topic_name: str = runtime.stage_topics[stage.name].get_topic_name()
        self.topics = OutputTopics(runtime, table)
        #: last offset processed per partition, for the lag gauge
        self.positions: dict[Any, int] = {}

    async def process_batch(self, events: Sequence[Any]) -> None:
        rt = self.runtime
        store = self.table.data
        now = datetime.now(UTC)
        dirty: dict[bytes, int] = {}
        out = Outbox()
        topics = self.topics
        done: dict[Any, int] = {}
        for event in events:
            message = event.message
            done[message.tp] = message.offset
            outcome = self.stage.process(message.value, store, offset=message.offset, now=now,
                                         source_timestamp=message.timestamp)
            if outcome.key is None:
                continue
            dirty[outcome.key] = message.partition
            for alert in outcome.alerts:
                out.add(topics.alerts, alert.account_id.encode(), alert.dumps())
            for forward in outcome.forwards:
                topics.forward(out, forward)
        for key, partition in dirty.items():
            if isinstance(entry := store.get(key), StageEntry):
                out.add(topics.changelog, key, entry.dumps(), partition)
        await out.deliver(rt.app.producer)
        self.positions.update(done)


def hold_fetching_until_seek(app: Any) -> None:
    """Stop fetching until Faust has sought the input partitions to their committed offsets.

    Called from ``on_rebalance_complete``. After that signal Faust 0.15 resumes
    the input partitions, awaits the seek to the committed offsets, then clears
    the agents' queues (``flow_control.resume()``) and resumes the flow. Table
    recovery has already turned the flow on, so messages fetched during the
    seek reach the agents, and the clear drops the ones still queued; the
    consumer takes the jump in offsets for a gap (as after compaction) and
    commits past them: events lost, velocity counters behind (issue #6). The
    replay guard cannot bring them back: their accounts' offsets have moved on.
    With the flow stopped here, nothing is fetched until Faust resumes it after
    the seek and the clear.
    """
    app.consumer.stop_flow()


def attach_agent(runtime: Runtime) -> MonitorAgent:
    """Register the monitor agent, the lag timer and rebalance hooks on the app."""
    app = runtime.app
    agent = MonitorAgent(runtime)
    settings = runtime.settings

    async def monitor(stream: Any) -> None:
        async for events in stream.take_events(settings.batch_size, within=settings.batch_within):
            await guarded(agent.process_batch, events)

    app.agent(runtime.input_topic, name="txwatch.monitor")(monitor)

    stage_agents: list[StageAgent] = []
    for name, stage in runtime.stages.items():
        stage_agent = StageAgent(runtime, stage, runtime.stage_tables[name])
        stage_agents.append(stage_agent)

        async def run_stage(stream: Any, stage_agent: StageAgent = stage_agent) -> None:
            async for events in stream.take_events(settings.batch_size,
                                                   within=settings.batch_within):
                await guarded(stage_agent.process_batch, events)

        app.agent(runtime.stage_topics[name], name=f"txwatch.stage.{name}")(run_stage)

    @app.timer(interval=LAG_INTERVAL_SECONDS)
    async def lag_timer() -> None:
        await agent.report_lag(stage_agents)

    @app.on_partitions_assigned.connect
    async def on_assigned(app: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        agent.on_assignment()

    @app.on_rebalance_complete.connect
    async def on_complete(app: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        hold_fetching_until_seek(app)
        agent.on_recovered()

    return agent
