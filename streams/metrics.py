"""Prometheus metrics, as one sensor.

Names and labels are listed in ``docs/design.md`` ("Metrics"). Every label
has a bounded set of values: event types outside the contract read
``unknown``, dead-letter reasons come from a fixed list, detectors and
severities from configuration. No label carries an account id.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Final

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from streams.alerts import Alert
from streams.codec import REASONS as DEAD_LETTER_REASONS
from streams.events import EVENT_TYPES, DeadLetter, Event
from streams.pipeline import PROCESSING_ERROR
from streams.sensors import Sensor

LATENCY_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)
SCORE_BUCKETS: Final = (0.1, 0.25, 0.5, 0.75, 0.9, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 20.0)
BATCH_BUCKETS: Final = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000)


class PrometheusSensor(Sensor):
    """Exports the worker's observations to a Prometheus registry.

    Parameters
    ----------
    registry
        Where the metrics are registered; tests pass a fresh ``CollectorRegistry``.
    version
        txwatch version, for ``txwatch_worker_info``.
    config_version
        Detector configuration version in force.
    alert_labels
        ``(detector, severity)`` pairs the configuration can raise; their
        counters start at 0 so ``increase()`` sees the first alert and boards
        show 0 rather than no data.
    """

    def __init__(self, registry: CollectorRegistry = REGISTRY, version: str = "0",
                 config_version: str = "unknown",
                 alert_labels: Iterable[tuple[str, str]] = ()) -> None:
        self.events = Counter(
            "txwatch_events", "Input messages by event type and outcome.",
            ["event_type", "outcome"], registry=registry,
        )
        self.dead_letters = Counter(
            "txwatch_dead_letters", "Rejected input messages by reason.",
            ["reason"], registry=registry,
        )
        self.alerts = Counter(
            "txwatch_alerts", "Alerts published by detector and severity.",
            ["detector", "severity"], registry=registry,
        )
        self.event_to_alert = Histogram(
            "txwatch_event_to_alert_seconds",
            "From the source message's timestamp to its alert being handed to the producer.",
            ["detector"], buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.processing = Histogram(
            "txwatch_event_processing_seconds",
            "From the oldest source message timestamp of a batch to the end of that batch.",
            buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.scores = Histogram(
            "txwatch_detector_score", "Non-zero detector scores (most events score 0).",
            ["detector"],
            buckets=SCORE_BUCKETS, registry=registry,
        )
        self.lag = Gauge(
            "txwatch_consumer_lag",
            "Messages behind the high watermark per input and derived-stage partition.",
            ["topic", "partition"], registry=registry,
        )
        self.batch_events = Histogram(
            "txwatch_batch_events", "Events per processed batch.",
            buckets=BATCH_BUCKETS, registry=registry,
        )
        self.state_accounts = Gauge(
            "txwatch_state_accounts", "Accounts held in this worker's state.", registry=registry,
        )
        self.restore_seconds = Gauge(
            "txwatch_state_restore_seconds",
            "Seconds from the last partition assignment to the worker being ready.",
            registry=registry,
        )
        self.wallet_funds = Gauge(
            "txwatch_precipitated_funds_minor",
            "Money held in this worker's wallets (minor units): the funds sitting on the platform.",
            registry=registry,
        )
        self.wallets_above_limit = Gauge(
            "txwatch_precipitated_wallets",
            "Wallets of this worker holding more than the precipitated-funds limit.",
            registry=registry,
        )
        #: The series of each detector gauge (``KeyedDetector.gauge_names``).
        self.detector_gauges: dict[tuple[str, str], Gauge] = {
            ("precipitated_funds", "held_minor"): self.wallet_funds,
            ("precipitated_funds", "above_limit"): self.wallets_above_limit,
        }
        self.info = Gauge(
            "txwatch_worker_info", "Worker version and detector configuration version.",
            ["version", "config_version"], registry=registry,
        )
        self.info.labels(version=version, config_version=config_version).set(1)
        for reason in (*DEAD_LETTER_REASONS, PROCESSING_ERROR):
            self.dead_letters.labels(reason=reason)
        for detector, severity in alert_labels:
            self.alerts.labels(detector=detector, severity=severity)
        self._events_children = {
            (t, o): self.events.labels(event_type=t, outcome=o)
            for t in (*sorted(EVENT_TYPES), "unknown")
            for o in ("processed", "duplicate", "dead_letter")
        }
        # Label children by label values, made on first use (detectors come from
        # configuration, which can change at run time).
        self._score_children: dict[str, Histogram] = {}
        self._alert_children: dict[tuple[str, str], Counter] = {}
        self._latency_children: dict[str, Histogram] = {}
        # The configured detectors' histograms exist from the start, like their alert
        # counters: a detector that first scores or alerts hours later (a learnt limit,
        # a budget filling up) must not add series to a running Prometheus then.
        for detector in dict.fromkeys(detector for detector, _ in alert_labels):
            self._score_children[detector] = self.scores.labels(detector=detector)
            self._latency_children[detector] = self.event_to_alert.labels(detector=detector)

    def on_event(self, event: Event, outcome: str) -> None:
        key = (event.event_type if event.event_type in EVENT_TYPES else "unknown", outcome)
        child = self._events_children.get(key)
        if child is not None:
            child.inc()

    def on_score(self, detector: str, score: float) -> None:
        # labels() takes a lock and builds a key per call; this runs per scored event
        child = self._score_children.get(detector)
        if child is None:
            child = self._score_children[detector] = self.scores.labels(detector=detector)
        child.observe(score)

    def on_alert(self, alert: Alert, source_timestamp: float | None) -> None:
        key = (alert.detector, alert.severity)
        child = self._alert_children.get(key)
        if child is None:
            child = self._alert_children[key] = self.alerts.labels(
                detector=alert.detector, severity=alert.severity)
        child.inc()
        if source_timestamp is not None:
            latency = max(0.0, time.time() - source_timestamp)
            latency_child = self._latency_children.get(alert.detector)
            if latency_child is None:
                latency_child = self._latency_children[alert.detector] = (
                    self.event_to_alert.labels(detector=alert.detector))
            latency_child.observe(latency)

    def on_dead_letter(self, dead_letter: DeadLetter) -> None:
        self.dead_letters.labels(reason=dead_letter.reason).inc()
        self._events_children["unknown", "dead_letter"].inc()

    def on_batch(self, size: int, oldest_source_timestamp: float | None) -> None:
        self.batch_events.observe(size)
        if oldest_source_timestamp is not None:
            self.processing.observe(max(0.0, time.time() - oldest_source_timestamp))

    def on_lag(self, topic: str, partition: int, lag: int) -> None:
        self.lag.labels(topic=topic, partition=str(partition)).set(lag)

    def on_state_size(self, accounts: int) -> None:
        self.state_accounts.set(accounts)

    def on_ready(self, restore_seconds: float) -> None:
        self.restore_seconds.set(restore_seconds)

    def on_gauges(self, detector: str, deltas: Mapping[str, int]) -> None:
        for name, delta in deltas.items():
            gauge = self.detector_gauges.get((detector, name))
            if gauge is not None and delta:
                gauge.inc(delta)

    def on_gauge_totals(self, detector: str, totals: Mapping[str, int]) -> None:
        for name, total in totals.items():
            gauge = self.detector_gauges.get((detector, name))
            if gauge is not None:
                gauge.set(total)
