"""Observability hooks, in the manner of Faust's sensors.

:class:`Sensor` has one method per thing worth observing, each doing nothing
by default; :class:`SensorDelegate` fans a call out to every registered
sensor. Metrics (``streams/metrics.py``) and the live terminal view are
sensors; the pipeline calls hooks, never Prometheus directly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from streams.alerts import Alert
from streams.events import DeadLetter, Event


class Sensor:
    """Base class: every hook is a no-op."""

    def on_event(self, event: Event, outcome: str) -> None:
        """An event was decoded; ``outcome`` is ``processed`` or ``duplicate``."""

    def on_score(self, detector: str, score: float) -> None:
        """A detector scored an event."""

    def on_alert(self, alert: Alert, source_timestamp: float | None) -> None:
        """An alert was handed to the producer; ``source_timestamp`` is the message's."""

    def on_dead_letter(self, dead_letter: DeadLetter) -> None:
        """A message was rejected."""

    def on_batch(self, size: int, oldest_source_timestamp: float | None) -> None:
        """A batch finished; its state and output are queued before its commit."""

    def on_lag(self, topic: str, partition: int, lag: int) -> None:
        """Consumer lag of one input or derived-stage partition, in messages."""

    def on_state_size(self, accounts: int) -> None:
        """Accounts held by this worker."""

    def on_ready(self, restore_seconds: float) -> None:
        """The worker finished recovering state after an assignment."""

    def on_gauges(self, detector: str, deltas: Mapping[str, int]) -> None:
        """An account's part of a detector's gauges changed (``gauges``, detectors/base.py)."""

    def on_gauge_totals(self, detector: str, totals: Mapping[str, int]) -> None:
        """A detector's gauges recounted over this worker's accounts (after a recovery)."""


class SensorDelegate(Sensor):
    """Fans every hook out to the registered sensors."""

    def __init__(self, sensors: Iterable[Sensor] = ()) -> None:
        self._sensors: list[Sensor] = list(sensors)

    def add(self, sensor: Sensor) -> None:
        self._sensors.append(sensor)

    def on_event(self, event: Event, outcome: str) -> None:
        for s in self._sensors:
            s.on_event(event, outcome)

    def on_score(self, detector: str, score: float) -> None:
        for s in self._sensors:
            s.on_score(detector, score)

    def on_alert(self, alert: Alert, source_timestamp: float | None) -> None:
        for s in self._sensors:
            s.on_alert(alert, source_timestamp)

    def on_dead_letter(self, dead_letter: DeadLetter) -> None:
        for s in self._sensors:
            s.on_dead_letter(dead_letter)

    def on_batch(self, size: int, oldest_source_timestamp: float | None) -> None:
        for s in self._sensors:
            s.on_batch(size, oldest_source_timestamp)

    def on_lag(self, topic: str, partition: int, lag: int) -> None:
        for s in self._sensors:
            s.on_lag(topic, partition, lag)

    def on_state_size(self, accounts: int) -> None:
        for s in self._sensors:
            s.on_state_size(accounts)

    def on_ready(self, restore_seconds: float) -> None:
        for s in self._sensors:
            s.on_ready(restore_seconds)

    def on_gauges(self, detector: str, deltas: Mapping[str, int]) -> None:
        for s in self._sensors:
            s.on_gauges(detector, deltas)

    def on_gauge_totals(self, detector: str, totals: Mapping[str, int]) -> None:
        for s in self._sensors:
            s.on_gauge_totals(detector, totals)
