"""The monitor's per-event work, without Faust: decode, count, detect, alert.

:class:`Monitor` is what the Faust agent (``streams/agents.py``), the
benchmark and offline backtests all run, so a threshold tuned on history
behaves the same live. It reads and writes account states through a
mutable mapping the caller owns (the Faust table's store in the worker, a
plain ``dict`` offline) and reports which accounts it touched so the caller
can write each of them once per batch.

State that belongs to no account (the global anomaly model, the alert
budgets' score histograms) is kept per input partition
(:class:`PartitionModels`): it then depends only on that partition's order,
and moves with the partition. :meth:`Monitor.model_snapshots` gives what
changed since the last call, for the caller to write with the batch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from detectors.base import ThresholdAlerter
from streams.alerts import Alert
from streams.codec import Decoder
from streams.events import DeadLetter, Event
from streams.features import observe
from streams.sensors import Sensor
from streams.stages import Forward
from streams.state import AccountState

log = logging.getLogger(__name__)

#: How far an event's time may lie after its message's timestamp (producer clocks
#: drift; a day is generous). Later events are dead-lettered with reason ``timestamp``.
MAX_FUTURE_SECONDS = 86_400

#: Dead-letter reason for a message that made the worker itself fail.
PROCESSING_ERROR = "processing_error"

#: Seconds of event time during which a detector stays quiet for an account
#: after alerting on it, so one burst is one alert, not one per event.
#: Format of a partition's model record.
MODEL_FORMAT: Final = 1


def model_key(topic: str | None, partition: int | None) -> bytes:
    """Key of an input partition's model record: ``topic:partition``."""
    return f"{topic or ''}:{'' if partition is None else partition}".encode()


class PartitionModels:
    """The alerters of one input partition, with its own copy of each one holding global state.

    Alerters whose state lives with the accounts (keyed detectors without a
    budget) are shared by every partition.
    """

    __slots__ = ("flagged", "globals", "offset", "partition", "plan", "templates", "written")

    def __init__(self, templates: list[ThresholdAlerter], partition: int | None) -> None:
        self.templates = templates
        self.partition = partition
        alerters = [a.clone(detector=a.detector.clone()) if a.has_global_state else a
                    for a in templates]
        #: ``(alerter, name, the detector's gauge names, holds global state)``
        self.plan = [(a, a.name, a.detector.gauge_names, a.has_global_state)
                     for a in alerters]
        self.globals = [a for a in alerters if a.has_global_state]
        #: last input offset whose event the models learnt (``None``: none, or offline)
        self.offset: int | None = None
        #: ``(offset, detector)`` of the events of the batch being written that a
        #: keyed alerter with global state flagged, so did not learn: a replay of
        #: that batch (models delivered, accounts not) cannot decide that again,
        #: since its budget or limits already counted the event
        self.flagged: set[tuple[int, str]] = set()
        #: the record last written to or read from the model store: another one
        #: there means the partition's state came from elsewhere (a recovery)
        self.written: Any = None

    def restore(self, record: Mapping[str, Any]) -> None:
        """Put back the state of :meth:`dumps` (or of another instance's :meth:`state`)."""
        if record.get("format") != MODEL_FORMAT:
            message = f"model record format {record.get('format')!r}, not {MODEL_FORMAT}"
            raise ValueError(message)
        states = record["alerters"]
        for alerter in self.globals:
            state = states.get(alerter.name)
            if state is not None:
                alerter.restore(state)
        self.offset = record["offset"]
        self.flagged = {(offset, name) for offset, name in record.get("flagged", ())}

    def state(self) -> dict[str, Any]:
        return {"format": MODEL_FORMAT, "offset": self.offset,
                "alerters": {a.name: a.snapshot() for a in self.globals},
                "flagged": sorted(self.flagged)}

    def dumps(self) -> bytes:
        return orjson.dumps(self.state())


@dataclass(slots=True)
class Outcome:
    """What one message produced."""

    event: Event | None = None
    dead_letter: DeadLetter | None = None
    duplicate: bool = False
    alerts: list[Alert] = field(default_factory=list)
    forwards: list[Forward] = field(default_factory=list)


class Monitor:
    """Runs every detector over each event and keeps account state.

    Parameters
    ----------
    decoder
        Turns message bytes into events or dead letters.
    alerters
        The detectors with their thresholds, from ``detectors.registry``.
    config_version
        Carried on every alert.
    sensor
        Observability hooks (metrics, live view).
    cooldown_seconds
        Per detector, event-time seconds of quiet after an alert on an account,
        instead of each alerter's own ``cooldown_seconds`` (the configuration's).
    derive
        ``derive(event, x) -> forwards``: records for the derived stages
        (``streams/stages.py``); none when unset.
    ranker
        ``ranker(alert) -> probability | None``: analysts' feedback learnt
        online, carried on each alert to rank it (``streams/feedback.py``).
    """

    def __init__(self, decoder: Decoder, alerters: Sequence[ThresholdAlerter],
                 config_version: str, sensor: Sensor | None = None,
                 cooldown_seconds: Mapping[str, int] | None = None,
                 derive: Callable[[Event, dict[str, Any]], list[Forward]] | None = None,
                 ranker: Callable[[Alert], float | None] | None = None) -> None:
        self.derive = derive
        self.ranker = ranker
        self.decoder = decoder
        self.alerters = list(alerters)
        self.config_version = config_version
        self.sensor = sensor or Sensor()
        #: overrides of the alerters' own cool-downs (tests); ``None``: the configuration's
        self.cooldown_seconds = None if cooldown_seconds is None else dict(cooldown_seconds)
        self._partitions: dict[bytes, PartitionModels] = {}
        self._changed: dict[bytes, PartitionModels] = {}

    def reconfigure(self, alerters: Sequence[ThresholdAlerter], config_version: str) -> None:
        """Swap the detector set between two events (no restart).

        Each partition's models carry over what they learnt wherever the
        parameters are unchanged (see :meth:`ThresholdAlerter.restore`).
        """
        self.alerters = list(alerters)
        self.config_version = config_version

    def _models(self, topic: str | None, partition: int | None,
                store: MutableMapping[bytes, Any] | None) -> tuple[bytes, PartitionModels]:
        """The partition's models: live, else restored from ``store``, else fresh."""
        key = model_key(topic, partition)
        live = self._partitions.get(key)
        stored = store.get(key) if store is not None else None
        if live is not None and live.templates is self.alerters and stored is live.written:
            return key, live
        models = PartitionModels(self.alerters, partition)
        try:
            if live is not None and stored is live.written:  # a new configuration
                models.restore(live.state())
            elif stored is not None:  # recovered from the changelog, or first use
                models.restore(orjson.loads(stored))
        except (ValueError, TypeError, KeyError, orjson.JSONDecodeError) as exc:
            log.warning("models of %s: record not restored (%s); starting afresh",
                        key.decode(), exc)
            models = PartitionModels(self.alerters, partition)
        models.written = stored
        self._partitions[key] = models
        return key, models

    def model_snapshots(self, store: MutableMapping[bytes, Any] | None = None,
                        ) -> list[tuple[bytes, int | None, bytes]]:
        """``(key, partition, record)`` of each partition's models changed since the last call.

        Each record is also put in ``store``, where :meth:`process` expects it.
        """
        records = []
        for key, models in self._changed.items():
            record = models.dumps()
            models.written = record
            if store is not None:
                store[key] = record
            records.append((key, models.partition, record))
            # the batch's accounts are delivered before the next batch starts
            models.flagged.clear()
        self._changed.clear()
        return records

    def process(self, raw: bytes | None, states: MutableMapping[Any, AccountState], *,
                topic: str | None = None, partition: int | None = None,
                offset: int | None = None, source_timestamp: float | None = None,
                now: datetime | None = None,
                models: MutableMapping[bytes, Any] | None = None) -> Outcome:
        """Handle one message. Never raises.

        The account's state is read from and put back into ``states`` under
        the account id encoded as UTF-8 bytes; the partition's models from
        ``models`` (see :meth:`model_snapshots`), when given. A message that
        makes a detector fail becomes a dead letter with reason
        ``processing_error`` (the traceback goes to the log, the payload does
        not), so one poisonous message cannot stop the partition.
        """
        try:
            return self._process(raw, states, topic, partition, offset, source_timestamp, now,
                                 models)
        except Exception as exc:
            log.exception("processing failed at %s[%s]@%s", topic, partition, offset)
            dead = self.decoder.reject(
                PROCESSING_ERROR, f"{type(exc).__name__} in the worker; see its log",
                raw, topic, partition, offset)
            self.sensor.on_dead_letter(dead)
            return Outcome(dead_letter=dead)

    def _process(self, raw: bytes | None, states: MutableMapping[Any, AccountState],
                 topic: str | None, partition: int | None, offset: int | None,
                 source_timestamp: float | None, now: datetime | None,
                 model_store: MutableMapping[bytes, Any] | None) -> Outcome:
        decoded = self.decoder.decode(raw, topic, partition, offset)
        if isinstance(decoded, DeadLetter):
            self.sensor.on_dead_letter(decoded)
            return Outcome(dead_letter=decoded)
        event = decoded
        written = source_timestamp
        if written is None:
            written = now.timestamp() if now is not None else time.time()
        occurred = event.occurred_at.timestamp()
        if occurred > written + MAX_FUTURE_SECONDS:
            # one far-future event would move the account's clock and blind its windows
            ahead = occurred - written
            dead = self.decoder.reject(
                "timestamp", f"occurred_at {event.occurred_at.isoformat()} is {ahead:,.0f} s "
                f"after the message was written (at most {MAX_FUTURE_SECONDS:,} s allowed)",
                raw, topic, partition, offset)
            self.sensor.on_dead_letter(dead)
            return Outcome(dead_letter=dead)
        key = event.account_id.encode()
        state = states.get(key)
        if state is None:
            state = AccountState()
            states[key] = state
        if state.seen(event.event_id, topic, offset):
            self.sensor.on_event(event, "duplicate")
            return Outcome(event=event, duplicate=True)

        x = observe(event, state)
        detected_at = now
        ts = int(occurred)
        alerts: list[Alert] = []
        detectors = state.detectors
        sensor = self.sensor
        model_key, models = self._models(topic, partition, model_store)
        # The models already hold this event when their record was delivered and the
        # account's was not (a crash in between): they do not learn it twice.
        learnt = offset is not None and models.offset is not None and offset <= models.offset
        if not learnt:
            models.offset = offset
            self._changed[model_key] = models
        for alerter, name, gauged, is_global in models.plan:
            before = detectors.get(name)
            if learnt and is_global:
                flagged = (offset, name) in models.flagged
                if (kept := alerter.learn_only(x, before, flagged=flagged)) is not None:
                    detectors[name] = kept
                continue
            if gauged:
                parts_before = alerter.detector.gauges(before)
            finding, new_state = alerter.process_one(x, before)
            if gauged:
                parts_after = alerter.detector.gauges(new_state)
                if parts_after != parts_before:
                    sensor.on_gauges(name, {g: a - b for g, a, b in zip(
                        gauged, parts_after, parts_before, strict=True)})
            if new_state is not None:
                detectors[name] = new_state
            score = alerter.last_score
            if score > 0.0:  # the zero scores of most events would drown the rest
                sensor.on_score(name, score)
            if finding is None:
                continue
            if is_global and offset is not None and not alerter.learn_flagged:
                models.flagged.add((offset, name))
            if ts < state.quiet_until.get(name, 0):
                continue
            cooldown = (alerter.cooldown_seconds if self.cooldown_seconds is None
                        else self.cooldown_seconds.get(name, 0))
            if cooldown:
                state.quiet_until[name] = ts + cooldown
            if detected_at is None:
                detected_at = datetime.now(UTC)
            alert = Alert.from_finding(finding, event, detected_at, self.config_version)
            if self.ranker is not None:
                alert = replace(alert, feedback_probability=self.ranker(alert))
            alerts.append(alert)
            sensor.on_alert(alert, source_timestamp)
        state.mark(event.event_id, topic, offset)
        self.sensor.on_event(event, "processed")
        forwards = self.derive(event, x) if self.derive is not None else []
        return Outcome(event=event, alerts=alerts, forwards=forwards)


def gauge_totals(alerters: Iterable[ThresholdAlerter],
                 states: Iterable[AccountState]) -> dict[str, dict[str, int]]:
    """Each gauged detector's gauges (``gauge_names``, detectors/base.py) summed over ``states``.

    What a worker exports after recovering its accounts; while it runs, the
    same sums move by each event's deltas (``Sensor.on_gauges``).
    """
    gauged = [(a, a.detector.gauge_names) for a in alerters if a.detector.gauge_names]
    totals = {a.name: [0] * len(names) for a, names in gauged}
    for state in states:
        for alerter, _ in gauged:
            parts = alerter.detector.gauges(state.detectors.get(alerter.name))
            sums = totals[alerter.name]
            for i, part in enumerate(parts):
                sums[i] += part
    return {a.name: dict(zip(names, totals[a.name], strict=True)) for a, names in gauged}
