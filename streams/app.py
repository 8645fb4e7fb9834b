"""The Faust application: topics, the account table and the monitor agent.

Where things are:

* the agent body and its batch logic: :mod:`streams.agents`;
* per-event work (decode, count, detect): :mod:`streams.pipeline`;
* account state and its format: :mod:`streams.state`;
* metrics: :mod:`streams.metrics`.

The account table uses Faust's in-memory store backed by a compacted
changelog topic: a restarted worker rebuilds its partitions' state from the
changelog before it processes anything (see the README, "Guarantees").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faust
import orjson
from faust.serializers import codecs

from detectors.registry import DEFAULT_CONFIG, build_alerters
from streams.codec import Decoder
from streams.metrics import PrometheusSensor
from streams.pipeline import Monitor
from streams.sensors import Sensor, SensorDelegate
from streams.settings import Settings
from streams.stages import DerivedStage
from streams.state import AccountState

log = logging.getLogger(__name__)

TABLE_NAME = "accounts"


class AccountStateCodec(codecs.Codec):
    """Changelog values are :meth:`AccountState.dumps` bytes."""

    def _dumps(self, obj: Any) -> bytes:
        if isinstance(obj, bytes | bytearray):
            return bytes(obj)
        return bytes(obj.dumps())

    def _loads(self, s: bytes) -> AccountState:
        return AccountState.loads(s)


codecs.register("txwatch_state", AccountStateCodec())


class StoredAccountState:
    """The table's value type, as far as Faust is concerned.

    Faust picks a table's serializer from ``value_type._options.serializer``
    when it creates the changelog topic, and recovery decodes with that topic's
    serializer; this marker points both at :class:`AccountStateCodec`.
    """

    class _options:
        serializer = "txwatch_state"

    @classmethod
    def from_data(cls, data: Any, preferred_type: Any = None) -> Any:
        return data


def load_detector_config(path: Path | None) -> dict[str, Any]:
    """The detector configuration: the file at ``path``, else the packaged defaults."""
    if path is None:
        return dict(DEFAULT_CONFIG)
    try:
        config = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        message = f"cannot read detector configuration {path}: {exc}"
        raise ValueError(message) from exc
    if not isinstance(config, dict):
        message = f"detector configuration {path} must be a JSON object"
        raise ValueError(message)
    return config


def build_monitor(settings: Settings, sensor: Sensor | None = None) -> Monitor:
    """The Faust-free monitor configured from ``settings``."""
    config = load_detector_config(settings.detector_config)
    alerters = build_alerters(config)
    decoder = Decoder(
        pii_key=settings.pii_key.get().encode(),
        max_message_bytes=settings.max_message_bytes,
        clear_dead_letter_payload=settings.dead_letter_clear_payload,
    )
    return Monitor(decoder, alerters, str(config.get("version", "unversioned")), sensor)


@dataclass
class Runtime:
    """Everything a running worker is made of."""

    settings: Settings
    app: faust.App
    input_topic: Any
    alert_topic: Any
    dead_letter_topic: Any
    table: Any
    monitor: Monitor
    sensors: SensorDelegate
    metrics: PrometheusSensor | None
    agent: Any = None
    stages: dict[str, DerivedStage] = field(default_factory=dict)
    stage_topics: dict[str, Any] = field(default_factory=dict)
    stage_tables: dict[str, Any] = field(default_factory=dict)


def create_app(settings: Settings, metrics: PrometheusSensor | None = None,
               extra_sensors: tuple[Sensor, ...] = ()) -> Runtime:
    """Build the Faust app, its topics, table and agent from ``settings``."""
    from streams import __version__
    from streams.agents import attach_agent
    from streams.portfolio import attach_portfolio

    sensors = SensorDelegate(extra_sensors)
    if metrics is not None:
        sensors.add(metrics)
    monitor = build_monitor(settings, sensors)
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{hostport}" for hostport in settings.broker.split(",")],
        store="memory://",
        topic_partitions=settings.partitions,
        topic_replication_factor=1,
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.consumer_session_timeout,
        broker_heartbeat_interval=min(3.0, settings.consumer_session_timeout / 3),
        broker_rebalance_timeout=settings.rebalance_timeout,
        producer_linger=0.005,
        stream_buffer_maxsize=max(4096, settings.batch_size * 2),
        datadir=str(settings.data_dir / "faust" / settings.app_id),
        version=1,
    )
    input_topic = app.topic(
        *settings.input_topics, key_type=bytes, value_type=bytes,
        key_serializer="raw", value_serializer="raw", partitions=settings.partitions,
    )
    alert_topic = app.topic(
        settings.alert_topic, key_serializer="raw", value_serializer="raw",
        partitions=settings.partitions,
    )
    dead_letter_topic = app.topic(
        settings.dead_letter_topic, key_serializer="raw", value_serializer="raw",
        partitions=settings.partitions,
    )
    table = app.Table(TABLE_NAME, default=None, partitions=settings.partitions,
                      key_type=bytes, value_type=StoredAccountState)
    runtime = Runtime(settings, app, input_topic, alert_topic, dead_letter_topic, table,
                      monitor, sensors, metrics)
    runtime.agent = attach_agent(runtime)
    attach_portfolio(runtime)
    log.info("txwatch %s: detectors %s, config version %s", __version__,
             [a.name for a in monitor.alerters], monitor.config_version)
    return runtime
