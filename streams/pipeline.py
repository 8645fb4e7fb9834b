"""The monitor's per-event work, without Faust: decode, count, detect, alert.

:class:`Monitor` is what the Faust agent (``streams/agents.py``), the
benchmark and offline backtests all run, so a threshold tuned on history
behaves the same live. It reads and writes account states through a
mutable mapping the caller owns (the Faust table's store in the worker, a
plain ``dict`` offline) and reports which accounts it touched so the caller
can write each of them once per batch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from detectors.base import ThresholdAlerter
from detectors.precipitated_funds import PrecipitatedFunds, balance_minor
from streams.alerts import Alert
from streams.codec import Decoder
from streams.events import DeadLetter, Event
from streams.features import observe
from streams.sensors import Sensor
from streams.stages import Forward
from streams.state import AccountState

log = logging.getLogger(__name__)

PRECIPITATED_FUNDS = PrecipitatedFunds.name

#: How far an event's time may lie after its message's timestamp (producer clocks
#: drift; a day is generous). Later events are dead-lettered with reason ``timestamp``.
MAX_FUTURE_SECONDS = 86_400

#: Dead-letter reason for a message that made the worker itself fail.
PROCESSING_ERROR = "processing_error"

#: Seconds of event time during which a detector stays quiet for an account
#: after alerting on it, so one burst is one alert, not one per event.
DEFAULT_COOLDOWN_SECONDS: dict[str, int] = {
    "velocity": 60, "global_anomaly": 300, "fan_out": 3600, "rapid_pass_through": 1800,
    "account_takeover": 3600, "structuring": 3600,
}


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
        Per detector, event-time seconds of quiet after an alert on an account.
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
        self.cooldown_seconds = dict(
            DEFAULT_COOLDOWN_SECONDS if cooldown_seconds is None else cooldown_seconds
        )
        self._plan_of: list[ThresholdAlerter] | None = None
        self._plan_cache: list[tuple[ThresholdAlerter, str, bool]] = []

    def reconfigure(self, alerters: Sequence[ThresholdAlerter], config_version: str) -> None:
        """Swap the detector set between two events (no restart)."""
        self.alerters = list(alerters)
        self.config_version = config_version

    def _plan(self) -> list[tuple[ThresholdAlerter, str, bool]]:
        """``(alerter, name, is the wallet detector)`` per alerter, rebuilt when they change."""
        alerters = self.alerters
        if self._plan_of is not alerters or len(self._plan_cache) != len(alerters):
            self._plan_cache = [(a, a.name, a.name == PRECIPITATED_FUNDS) for a in alerters]
            self._plan_of = alerters
        return self._plan_cache

    def process(self, raw: bytes | None, states: MutableMapping[Any, AccountState], *,
                topic: str | None = None, partition: int | None = None,
                offset: int | None = None, source_timestamp: float | None = None,
                now: datetime | None = None) -> Outcome:
        """Handle one message. Never raises.

        The account's state is read from and put back into ``states`` under
        the account id encoded as UTF-8 bytes. A message that makes a detector
        fail becomes a dead letter with reason ``processing_error`` (the
        traceback goes to the log, the payload does not), so one poisonous
        message cannot stop the partition.
        """
        try:
            return self._process(raw, states, topic, partition, offset, source_timestamp, now)
        except Exception as exc:
            log.exception("processing failed at %s[%s]@%s", topic, partition, offset)
            dead = self.decoder.reject(
                PROCESSING_ERROR, f"{type(exc).__name__} in the worker; see its log",
                raw, topic, partition, offset)
            self.sensor.on_dead_letter(dead)
            return Outcome(dead_letter=dead)

    def _process(self, raw: bytes | None, states: MutableMapping[Any, AccountState],
                 topic: str | None, partition: int | None, offset: int | None,
                 source_timestamp: float | None, now: datetime | None) -> Outcome:
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
        for alerter, name, wallet in self._plan():
            before = detectors.get(name)
            if wallet:
                wallet_before = balance_minor(before)
            finding, new_state = alerter.process_one(x, before)
            if wallet:
                limit = alerter.detector.balance_limit_minor  # type: ignore[union-attr]
                wallet_after = balance_minor(new_state)
                sensor.on_wallet(wallet_after - wallet_before,
                                 int(wallet_after > limit) - int(wallet_before > limit))
            if new_state is not None:
                detectors[name] = new_state
            score = alerter.last_score
            if score > 0.0:  # the zero scores of most events would drown the rest
                sensor.on_score(name, score)
            if finding is None:
                continue
            if ts < state.quiet_until.get(name, 0):
                continue
            cooldown = self.cooldown_seconds.get(name, 0)
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
