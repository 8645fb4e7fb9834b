"""Publishing simulated or recorded traffic to Kafka: wire helpers, pacing, replay.

:func:`simulate` and :func:`replay` send lending events to
``settings.lending_topic`` and everything else to ``settings.payments_topic``,
keyed by ``account_id``; :func:`route_line` is the routing both use.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Final, Protocol

import orjson

from streams import clients
from streams.events import EVENT_TYPES, LENDING_TYPES
from streams.settings import Settings
from streams.simulate.generator import TrafficGenerator, generate
from streams.simulate.population import (
    DEFAULT_ACCOUNTS,
    DEFAULT_INCIDENT_EVERY,
    DEFAULT_START,
)
from streams.simulate.scenarios import SCENARIOS, Scenario

#: Progress lines are this many seconds apart.
PROGRESS_EVERY: Final = 2.0


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


@contextlib.asynccontextmanager
async def _publishing(
    settings: Settings, producer_factory: ProducerFactory, create_topics: bool, *,
    rate: float | None, acceleration: float | None, progress: Progress | None, name: str,
) -> AsyncIterator[tuple[_Publisher, list[str]]]:
    """A publisher on a started producer, stopped on the way out, and the topics created.

    The input topics are created first when ``create_topics`` (``simulate``,
    ``replay`` and the lending book all publish to them).
    """
    created = await ensure_topics(settings, settings.input_topics) if create_topics else []
    producer = producer_factory(settings)
    await producer.start()
    try:
        yield _Publisher(producer, rate=rate, acceleration=acceleration, progress=progress,
                         name=name), created
    finally:
        await producer.stop()


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
    by_type: Counter[str] = Counter()
    labelled = 0
    first_at: str | None = None
    last_at: str | None = None
    async with _publishing(settings, producer_factory, create_topics, rate=rate,
                           acceleration=acceleration, progress=progress,
                           name="simulate") as (publisher, created):
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
    kinds: Counter[str] = Counter()
    lines = 0
    async with _publishing(settings, producer_factory, create_topics, rate=rate,
                           acceleration=None, progress=progress,
                           name="replay") as (publisher, created):
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


