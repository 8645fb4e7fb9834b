"""Analysts' feedback, learnt online to rank alerts.

Analysts (or a case tool) publish dispositions to ``TXWATCH_FEEDBACK_TOPIC``
(``streams/schemas/feedback.schema.json``)::

    {"alert_id": "5f0c...", "disposition": "true_positive", "analyst": "...",
     "decided_at": "2024-05-01T12:45:10Z"}

keyed by ``alert_id``. Every worker reads the alert topic and the feedback
topic from the beginning with a consumer of its own (no group), remembers
what each recent alert looked like (:func:`alert_features`: detector,
severity, score, amount, event type, hour), and on each disposition teaches
a River logistic regression whether alerts like that one turn out true. Once
it has learnt :data:`DEFAULT_MIN_FEEDBACK` dispositions, each new alert
carries its probability as ``feedback_probability``, to order the analysts'
queue. The feedback topic has one partition, so every worker learns the same
dispositions in the same order and builds the same model.

Feedback is also counted per detector: ``txwatch_feedback_precision{detector}``
is the share of its decided alerts confirmed as true positives. A later
disposition of the same alert replaces the earlier one in these counts.

What can go wrong, and what happens:

* a record that is not JSON or breaks the schema is logged and counted in
  ``txwatch_feedback_rejected_total``;
* a disposition of an alert the worker does not remember (older than the
  :data:`DEFAULT_MEMORY` most recent alerts, or gone from the alert topic
  with its retention) waits :data:`PENDING_SECONDS` for the alert, then is
  logged and counted as ``txwatch_feedback_total{disposition="unmatched"}``.
  Keep the alert topic's retention at least as long as the feedback worth
  learning from: a restarted worker rebuilds the model from both topics.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from functools import cache
from typing import TYPE_CHECKING, Any, Final

import orjson
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

from streams.alerts import Alert

if TYPE_CHECKING:
    from streams.runtime import Runtime
    from streams.settings import Settings

log = logging.getLogger(__name__)

TRUE_POSITIVE: Final = "true_positive"
FALSE_POSITIVE: Final = "false_positive"
DISPOSITIONS: Final = (TRUE_POSITIVE, FALSE_POSITIVE)
#: ``txwatch_feedback_total`` label of dispositions of alerts the worker does not know.
UNMATCHED: Final = "unmatched"
DEFAULT_FEEDBACK_TOPIC: Final = "txwatch.feedback"
#: Dispositions learnt before alerts carry a probability.
DEFAULT_MIN_FEEDBACK: Final = 20
#: Recent alerts remembered for matching dispositions (about 200 bytes each).
DEFAULT_MEMORY: Final = 100_000
#: Seconds a disposition waits for its alert to be read before it counts as unmatched.
PENDING_SECONDS: Final = 30.0
#: Dispositions waiting for their alert, at most.
PENDING_LIMIT: Final = 10_000

CATEGORICAL: Final = ("detector", "severity", "event_type")
NUMERIC: Final = ("log_score", "log_amount", "hour_sin", "hour_cos")


def feedback_topic(settings: Settings) -> str:
    """``TXWATCH_FEEDBACK_TOPIC`` (its default until the setting exists)."""
    return str(getattr(settings, "feedback_topic", DEFAULT_FEEDBACK_TOPIC))


# -- features -------------------------------------------------------------------------------

#: What is remembered of an alert: detector, severity, event type, log score,
#: log amount, hour. A tuple, not a dict: a hundred thousand of them are kept.
AlertKey = tuple[str, str, str, float, float, int]


def _alert_key(detector: str, severity: str, event_type: str, score: float,
               amount: str | None, hour: int) -> AlertKey:
    # The amount enters a model as the logarithm of a float: a feature, never money.
    try:
        major = float(Decimal(amount)) if amount is not None else 0.0
    except (InvalidOperation, ValueError):
        major = 0.0
    return (sys.intern(detector), sys.intern(severity), sys.intern(event_type),
            math.log1p(max(0.0, score)), math.log10(1.0 + max(0.0, major)), hour)


def key_of_record(alert: Mapping[str, Any]) -> AlertKey | None:
    """What to remember of an alert as published (``alert.schema.json``); ``None`` if unusable."""
    try:
        occurred = datetime.fromisoformat(str(alert["occurred_at"]).replace("Z", "+00:00"))
        score = float(alert["score"])
        amount = alert.get("amount")
        return _alert_key(str(alert["detector"]), str(alert["severity"]),
                          str(alert["event_type"]), score if math.isfinite(score) else 0.0,
                          amount if isinstance(amount, str) else None,
                          occurred.astimezone(UTC).hour)
    except (KeyError, TypeError, ValueError):
        return None


def key_of_alert(alert: Alert) -> AlertKey:
    """What to remember of an alert the worker has just raised."""
    return _alert_key(alert.detector, alert.severity, alert.event_type, alert.score,
                      alert.amount, alert.occurred_at.astimezone(UTC).hour)


def alert_features(key: AlertKey) -> dict[str, Any]:
    """The model's input: categories one-hot encoded, numbers scaled, the hour on a circle.

    Examples
    --------
    >>> x = alert_features(("velocity", "high", "payment", 0.69, 1.3, 6))
    >>> x["detector"], round(x["hour_sin"], 3), round(x["hour_cos"], 3)
    ('velocity', 1.0, 0.0)
    """
    detector, severity, event_type, log_score, log_amount, hour = key
    angle = 2.0 * math.pi * hour / 24.0
    return {"detector": detector, "severity": severity, "event_type": event_type,
            "log_score": log_score, "log_amount": log_amount,
            "hour_sin": math.sin(angle), "hour_cos": math.cos(angle)}


# -- dispositions ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Feedback:
    """One validated disposition."""

    alert_id: str
    disposition: str
    analyst: str | None = None
    decided_at: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        record: dict[str, Any] = {"alert_id": self.alert_id, "disposition": self.disposition}
        if self.analyst is not None:
            record["analyst"] = self.analyst
        if self.decided_at is not None:
            record["decided_at"] = self.decided_at.isoformat().replace("+00:00", "Z")
        return record

    def dumps(self) -> bytes:
        return orjson.dumps(self.as_dict())


@cache
def _validator() -> Callable[[Any], Any]:
    from streams.codec import compile_schema

    return compile_schema("feedback")


def parse_feedback(raw: bytes | Mapping[str, Any] | None) -> Feedback:
    """A disposition from its JSON bytes (or decoded record).

    Raises
    ------
    ValueError
        Not JSON, not an object, or not as ``feedback.schema.json`` says; the
        message says which field.
    """
    import fastjsonschema

    from streams.codec import parse_occurred_at

    if raw is None:
        message = "empty record (a tombstone): nothing to learn"
        raise ValueError(message)
    if isinstance(raw, bytes | bytearray | memoryview):
        try:
            record = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            message = f"not JSON: {exc}"
            raise ValueError(message) from exc
    else:
        record = raw
    if not isinstance(record, Mapping):
        message = f"must be a JSON object, not {type(record).__name__}"
        raise ValueError(message)
    try:
        _validator()(dict(record))
    except fastjsonschema.JsonSchemaException as exc:
        detail = str(getattr(exc, "message", exc))
        message = detail.replace("data.", "", 1).replace("data ", "record ", 1)
        raise ValueError(message) from None
    decided_at = None
    if "decided_at" in record:
        try:
            decided_at = parse_occurred_at(record["decided_at"])
        except ValueError as exc:
            message = f"decided_at {exc}"
            raise ValueError(message) from exc
    return Feedback(record["alert_id"], record["disposition"], record.get("analyst"), decided_at)


# -- the ranker -----------------------------------------------------------------------------


class FeedbackRanker:
    """Learns from dispositions which alerts analysts confirm; scores new alerts.

    Pure: no Kafka. The worker feeds it every alert published
    (:meth:`observe_alert`) and every disposition (:meth:`learn`), and the
    monitor calls it on each new alert.

    Parameters
    ----------
    min_feedback
        Dispositions learnt before :meth:`__call__` gives a probability.
    memory
        Recent alerts remembered, most recently seen kept.
    learning_rate
        Step of the logistic regression's SGD.
    l2
        Ridge penalty, so a handful of dispositions cannot make a weight explode.

    Examples
    --------
    >>> ranker = FeedbackRanker(min_feedback=2)
    >>> ranker.observe_alert({"alert_id": "a" * 32, "detector": "velocity", "severity": "high",
    ...     "score": 1.0, "event_type": "payment", "amount": "20.00",
    ...     "occurred_at": "2024-03-04T08:00:00Z"})
    True
    >>> ranker.learn({"alert_id": "a" * 32, "disposition": "true_positive"})
    'learnt'
    >>> ranker.learn({"alert_id": "b" * 32, "disposition": "true_positive"})
    'unmatched'
    >>> ranker.precision()
    {'velocity': 1.0}
    """

    def __init__(self, min_feedback: int = DEFAULT_MIN_FEEDBACK, memory: int = DEFAULT_MEMORY,
                 learning_rate: float = 0.1, l2: float = 0.001) -> None:
        if min_feedback < 0 or memory < 1:
            message = f"need min_feedback >= 0 and memory >= 1, not {min_feedback}, {memory}"
            raise ValueError(message)
        self.min_feedback = min_feedback
        self.memory = memory
        self.learning_rate = learning_rate
        self.l2 = l2
        self.model = self._new_model()
        self.learnt = 0
        self._alerts: OrderedDict[str, AlertKey] = OrderedDict()
        #: alert_id -> (detector, disposition) of decided alerts, to replace a changed decision
        self._decided: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self._counts: dict[str, list[int]] = {}

    def _new_model(self) -> Any:
        from river import compose, linear_model, optim, preprocessing

        # The logistic regression starts at zero weights and SGD has no randomness:
        # the same dispositions in the same order give the same model on every worker.
        return compose.Pipeline(
            compose.TransformerUnion(
                compose.Select(*CATEGORICAL) | preprocessing.OneHotEncoder(),
                compose.Select(*NUMERIC) | preprocessing.StandardScaler(),
            ),
            linear_model.LogisticRegression(optimizer=optim.SGD(self.learning_rate), l2=self.l2),
        )

    # -- alerts ---------------------------------------------------------------------------
    def remember(self, alert_id: str, key: AlertKey) -> None:
        alerts = self._alerts
        if alert_id in alerts:
            alerts.move_to_end(alert_id)
        alerts[alert_id] = key
        if len(alerts) > self.memory:
            alerts.popitem(last=False)

    def observe_alert(self, alert: Mapping[str, Any]) -> bool:
        """Remember one alert record from the alert topic; ``False`` when it is unusable."""
        alert_id = alert.get("alert_id")
        key = key_of_record(alert)
        if not isinstance(alert_id, str) or key is None:
            return False
        self.remember(alert_id, key)
        return True

    def knows(self, alert_id: str) -> bool:
        return alert_id in self._alerts

    # -- feedback -------------------------------------------------------------------------
    def learn(self, feedback: Feedback | Mapping[str, Any] | bytes) -> str:
        """Learn one disposition. Returns ``learnt``, ``unmatched`` or ``repeated``.

        ``unmatched``: the alert is not remembered; nothing changes.
        ``repeated``: the same disposition of the same alert again (a replay); nothing changes.
        A *changed* disposition moves the alert in the precision counts and is learnt.

        Raises
        ------
        ValueError
            The record breaks ``feedback.schema.json``.
        """
        if not isinstance(feedback, Feedback):
            feedback = parse_feedback(feedback)
        key = self._alerts.get(feedback.alert_id)
        if key is None:
            return UNMATCHED
        detector = key[0]
        before = self._decided.get(feedback.alert_id)
        if before == (detector, feedback.disposition):
            return "repeated"
        counts = self._counts.setdefault(detector, [0, 0])
        if before is not None:
            counts[DISPOSITIONS.index(before[1])] -= 1
        counts[DISPOSITIONS.index(feedback.disposition)] += 1
        self._decided[feedback.alert_id] = (detector, feedback.disposition)
        self._decided.move_to_end(feedback.alert_id)
        if len(self._decided) > self.memory:
            self._decided.popitem(last=False)
        self.model.learn_one(alert_features(key), feedback.disposition == TRUE_POSITIVE)
        self.learnt += 1
        return "learnt"

    # -- scoring --------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.learnt >= self.min_feedback

    def probability(self, key: AlertKey) -> float | None:
        """Probability that an alert like ``key`` is confirmed; ``None`` until ready."""
        if not self.ready:
            return None
        proba = self.model.predict_proba_one(alert_features(key))
        return round(float(proba.get(True, 0.0)), 4)

    def probability_of(self, alert: Mapping[str, Any]) -> float | None:
        """:meth:`probability` of an alert record as published (``None`` if unusable)."""
        key = key_of_record(alert)
        return None if key is None else self.probability(key)

    def __call__(self, alert: Alert) -> float | None:
        """The monitor's ranker hook: remember the alert, return its probability."""
        key = key_of_alert(alert)
        self.remember(alert.alert_id, key)
        return self.probability(key)

    def precision(self) -> dict[str, float]:
        """Per detector, the share of its decided alerts confirmed as true positives."""
        return {detector: tp / (tp + fp) for detector, (tp, fp) in sorted(self._counts.items())
                if tp + fp > 0}

    def counts(self) -> dict[str, tuple[int, int]]:
        """Per detector, ``(true positives, false positives)`` decided."""
        return {detector: (tp, fp) for detector, (tp, fp) in sorted(self._counts.items())}


# -- metrics --------------------------------------------------------------------------------


class FeedbackMetrics:
    """``txwatch_feedback_precision{detector}``, ``txwatch_feedback_total{disposition}``
    (``true_positive``, ``false_positive``, ``unmatched``) and
    ``txwatch_feedback_rejected_total``.

    Parameters
    ----------
    registry
        Where the metrics are registered; tests pass a fresh ``CollectorRegistry``.
    """

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.precision = Gauge(
            "txwatch_feedback_precision",
            "Share of a detector's alerts decided by analysts that they confirmed.",
            ["detector"], registry=registry,
        )
        self.total = Counter(
            "txwatch_feedback", "Dispositions read, by disposition; unmatched: alert unknown.",
            ["disposition"], registry=registry,
        )
        self.rejected = Counter(
            "txwatch_feedback_rejected",
            "Feedback records that are not JSON or break feedback.schema.json.",
            registry=registry,
        )
        for disposition in (*DISPOSITIONS, UNMATCHED):
            self.total.labels(disposition=disposition)

    def show(self, ranker: FeedbackRanker) -> None:
        for detector, value in ranker.precision().items():
            self.precision.labels(detector=detector).set(value)


# -- the watcher ----------------------------------------------------------------------------


@dataclass(slots=True)
class _Pending:
    feedback: Feedback
    until: float


class FeedbackWatcher:
    """Feeds a :class:`FeedbackRanker` from the alert and feedback topics.

    Parameters
    ----------
    runtime
        From :func:`streams.app.create_app` (settings and alert topic name).
    ranker
        The model to teach.
    metrics
        Where feedback is counted.
    topic
        The feedback topic; default ``TXWATCH_FEEDBACK_TOPIC``.
    clock
        Monotonic seconds (tests pass a fake one).
    """

    def __init__(self, runtime: Runtime, ranker: FeedbackRanker, metrics: FeedbackMetrics,
                 topic: str | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.runtime = runtime
        self.ranker = ranker
        self.metrics = metrics
        self.topic = topic or feedback_topic(runtime.settings)
        self.clock = clock
        self.pending: OrderedDict[str, _Pending] = OrderedDict()
        self.caught_up = False
        #: next offset to read per partition, to resume after a broker problem
        self.positions: dict[Any, int] = {}

    def on_alerts(self, values: Iterable[bytes | None]) -> None:
        """Remember alert records (unreadable ones are skipped: they are not ours to judge)."""
        for raw in values:
            if raw is None:
                continue
            try:
                record = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            if isinstance(record, dict):
                self.ranker.observe_alert(record)

    def on_feedback(self, values: Iterable[bytes | None]) -> None:
        """Learn dispositions; unknown alerts wait in :attr:`pending`. Never raises."""
        for raw in values:
            try:
                feedback = parse_feedback(raw)
            except ValueError as exc:
                self.metrics.rejected.inc()
                log.warning("feedback: rejected a record of %s: %s", self.topic, exc)
                continue
            self._learn(feedback, wait=True)

    def _learn(self, feedback: Feedback, wait: bool) -> None:
        outcome = self.ranker.learn(feedback)
        if outcome == "learnt":
            self.metrics.total.labels(disposition=feedback.disposition).inc()
            self.metrics.show(self.ranker)
            if self.ranker.learnt == self.ranker.min_feedback:
                log.info("feedback: %d dispositions learnt; alerts now carry "
                         "feedback_probability", self.ranker.learnt)
        elif outcome == UNMATCHED:
            if wait and len(self.pending) < PENDING_LIMIT:
                self.pending[feedback.alert_id] = _Pending(feedback, self.clock() + PENDING_SECONDS)
                self.pending.move_to_end(feedback.alert_id)
            else:
                self._unmatched(feedback)

    def _unmatched(self, feedback: Feedback) -> None:
        self.metrics.total.labels(disposition=UNMATCHED).inc()
        log.warning("feedback: %s for alert %s, which this worker does not know (older than "
                    "the %d alerts remembered, or past the alert topic's retention)",
                    feedback.disposition, feedback.alert_id, self.ranker.memory)

    def retry_pending(self, flush: bool = False) -> None:
        """Learn waiting dispositions whose alert arrived; count expired ones as unmatched."""
        now = self.clock()
        for alert_id, waiting in list(self.pending.items()):
            if self.ranker.knows(alert_id):
                del self.pending[alert_id]
                self._learn(waiting.feedback, wait=False)
            elif flush or now >= waiting.until:
                del self.pending[alert_id]
                self._unmatched(waiting.feedback)

    async def run(self) -> None:
        """Read both topics from the beginning for the life of the worker. Never raises.

        A broker problem is logged and retried every 5 s from where reading
        stopped; the ranker keeps what it learnt meanwhile.
        """
        while True:
            try:
                await self._read()
            except Exception as exc:
                log.warning("feedback: reading %s and %s failed (%s); retrying in 5 s",
                            self.runtime.settings.alert_topic, self.topic, exc)
                await asyncio.sleep(5.0)  # broker trouble: retry on a timer

    async def _read(self) -> None:
        from aiokafka import TopicPartition

        from streams import clients

        settings = self.runtime.settings
        await ensure_feedback_topic(settings, self.topic)
        alert_tps = [TopicPartition(settings.alert_topic, p)
                     for p in await topic_partitions(settings, settings.alert_topic)]
        feedback_tp = TopicPartition(self.topic, 0)
        consumer = clients.consumer(settings, client_id=f"{settings.app_id}-feedback")
        await consumer.start()
        try:
            consumer.assign([*alert_tps, feedback_tp])
            for tp in (*alert_tps, feedback_tp):
                if tp in self.positions:  # reconnecting: from where reading stopped
                    consumer.seek(tp, self.positions[tp])
                else:
                    await consumer.seek_to_beginning(tp)
            # Alerts first: dispositions read before their alert would wait for nothing.
            alert_ends = await consumer.end_offsets(alert_tps)
            if not self.caught_up:
                consumer.pause(feedback_tp)
            while True:
                batch = await consumer.getmany(timeout_ms=1000)
                for tp in alert_tps:
                    records = batch.get(tp, ())
                    if records:
                        self.positions[tp] = records[-1].offset + 1
                        self.on_alerts(r.value for r in records)
                records = batch.get(feedback_tp, ())
                if records:
                    self.positions[feedback_tp] = records[-1].offset + 1
                    self.on_feedback(r.value for r in records)
                self.retry_pending()
                if not self.caught_up:
                    positions = [await consumer.position(tp) for tp in alert_tps]
                    if all(p >= alert_ends[tp] for p, tp in zip(positions, alert_tps,
                                                                 strict=True)):
                        self.caught_up = True
                        consumer.resume(feedback_tp)
        finally:
            await consumer.stop()


async def topic_partitions(settings: Settings, topic: str, timeout: float = 60.0) -> list[int]:
    """The partition numbers of ``topic``, waiting for it to exist (the worker creates it)."""
    from streams import clients

    admin = clients.admin(settings, client_id=f"{settings.app_id}-feedback")
    await admin.start()
    try:
        deadline = time.monotonic() + timeout
        while True:
            described = await admin.describe_topics([topic])
            entry = described[0] if described else {}
            partitions = entry.get("partitions") or []
            if entry.get("error_code") == 0 and partitions:
                return sorted(p["partition"] for p in partitions)
            if time.monotonic() > deadline:
                message = f"topic {topic} does not exist after {timeout:.0f} s"
                raise TimeoutError(message)
            await asyncio.sleep(0.5)  # the topic is being created: nothing else to wait on
    finally:
        await admin.close()


def attach_feedback(runtime: Runtime, *, registry: CollectorRegistry | None = None,
                    ranker: FeedbackRanker | None = None,
                    topic: str | None = None) -> FeedbackWatcher:
    """Make a worker learn from feedback and rank its alerts. Call once, after ``create_app``.

    Parameters
    ----------
    runtime
        From :func:`streams.app.create_app`; its monitor (and each derived
        stage with a ``ranker`` attribute) gets the ranker.
    registry
        Where the metrics go; default the global registry when the runtime has
        metrics (the worker's ``/metrics``), else a private one.
    ranker
        Default: ``TXWATCH_FEEDBACK_MIN_DISPOSITIONS`` and ``TXWATCH_FEEDBACK_MEMORY``.
    topic
        Default ``TXWATCH_FEEDBACK_TOPIC``.
    """
    app: Any = runtime.app
    existing: FeedbackWatcher | None = getattr(app, "_txwatch_feedback", None)
    if existing is not None:
        return existing
    settings = runtime.settings
    if ranker is None:
        ranker = FeedbackRanker(
            min_feedback=int(getattr(settings, "feedback_min_dispositions",
                                     DEFAULT_MIN_FEEDBACK)),
            memory=int(getattr(settings, "feedback_memory", DEFAULT_MEMORY)),
        )
    if registry is None:
        registry = REGISTRY if runtime.metrics is not None else CollectorRegistry()
    watcher = FeedbackWatcher(runtime, ranker, FeedbackMetrics(registry), topic)
    app._txwatch_feedback = watcher
    runtime.monitor.ranker = ranker
    for stage in runtime.stages.values():
        if hasattr(stage, "ranker"):
            stage.ranker = ranker

    @app.task
    async def feedback_learner() -> None:
        await watcher.run()

    log.info("feedback: learning from %s; alerts carry feedback_probability after %d "
             "dispositions", watcher.topic, ranker.min_feedback)
    return watcher


# -- publishing -----------------------------------------------------------------------------


async def ensure_feedback_topic(settings: Settings, topic: str) -> bool:
    """Create the feedback topic if missing (1 partition: one order for every worker)."""
    from streams.rules import ensure_compacted_topic

    # Same shape as the configuration topic: one partition, compacted by key
    # (the alert id), so the newest disposition of each alert is kept for good.
    return await ensure_compacted_topic(settings, topic)


async def publish_feedback(settings: Settings, topic: str,
                           feedback: Feedback | Mapping[str, Any]) -> int:
    """Validate and publish one disposition, keyed by its alert id; return its offset."""
    from streams import clients

    if not isinstance(feedback, Feedback):
        feedback = parse_feedback(feedback)
    await ensure_feedback_topic(settings, topic)
    producer = clients.producer(settings, client_id="txwatch-feedback")
    await producer.start()
    try:
        metadata = await producer.send_and_wait(topic, feedback.dumps(),
                                                key=feedback.alert_id.encode())
    finally:
        await producer.stop()
    offset: int = metadata.offset
    return offset


# -- command line ---------------------------------------------------------------------------


def run_feedback(settings: Settings, args: argparse.Namespace) -> int:
    """``txwatch feedback ALERT_ID DISPOSITION``: publish one disposition."""
    topic = feedback_topic(settings)
    record: dict[str, Any] = {
        "alert_id": args.alert_id, "disposition": args.disposition,
        "decided_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
    }
    if args.analyst:
        record["analyst"] = args.analyst
    try:
        feedback = parse_feedback(record)
    except ValueError as exc:
        print(f"txwatch feedback: not published: {exc}", file=sys.stderr)
        return 2
    try:
        offset = asyncio.run(publish_feedback(settings, topic, feedback))
    except (OSError, RuntimeError) as exc:
        print(f"txwatch feedback: cannot publish to {settings.broker}: {exc}", file=sys.stderr)
        return 1
    print(f"{feedback.disposition} for alert {feedback.alert_id} published to {topic} "
          f"at offset {offset}")
    return 0


def register_cli(subparsers: Any) -> None:
    """Add ``txwatch feedback ALERT_ID true_positive|false_positive``."""
    parser = subparsers.add_parser(
        "feedback", help="record an analyst's disposition of an alert",
        description="Publish a disposition to TXWATCH_FEEDBACK_TOPIC: workers learn from it "
                    "and rank later alerts by feedback_probability.")
    parser.add_argument("alert_id", help="the alert's alert_id (32 hex characters)")
    parser.add_argument("disposition", choices=DISPOSITIONS)
    parser.add_argument("--analyst", default=None, help="who decided (kept for audit)")
    parser.set_defaults(func=run_feedback)
