"""The Faust application: topics, the account table and the monitor agent.

Where things are:

* the agent body and its batch logic: :mod:`streams.agents`;
* per-event work (decode, count, detect): :mod:`streams.pipeline`;
* account state and its format: :mod:`streams.state`;
* metrics: :mod:`streams.metrics`.

The account table uses Faust's in-memory store backed by a compacted
changelog topic: a restarted worker rebuilds its partitions' state from the
changelog before it processes anything (see the README, "Guarantees"). The
model table does the same for each input partition's global models and alert
budgets (:class:`streams.pipeline.PartitionModels`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import faust
import orjson
from faust.serializers import codecs

from detectors.registry import DEFAULT_CONFIG
from streams.clients import replica_configs
from streams.codec import Decoder
from streams.metrics import PrometheusSensor
from streams.pipeline import Monitor
from streams.rules import build_rules, detector_config
from streams.runtime import Runtime
from streams.sensors import Sensor, SensorDelegate
from streams.settings import Settings
from streams.stages import (
    FLOW,
    STAGES,
    DerivedStage,
    build_stages,
    stage_deriver,
    stage_topic,
)
from streams.state import AccountState

log = logging.getLogger(__name__)

TABLE_NAME = "accounts"
#: Table of each input partition's models (key ``topic:partition``, value a JSON record).
MODEL_TABLE_NAME = "models"


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


class StoredModels:
    """The model table's value type: the record's bytes as they are (the ``raw`` codec)."""

    class _options:
        serializer = "raw"

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


def broker_credentials(settings: Settings) -> Any:
    """Faust's form of the Kafka security settings; ``None`` for PLAINTEXT."""
    protocol = settings.security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = settings.kafka_client().get("ssl_context")
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    return faust.SASLCredentials(
        username=settings.sasl_username,
        password=settings.sasl_password.get(),
        mechanism=settings.sasl_mechanism,
        ssl_context=context,
    )


def build_monitor(settings: Settings, sensor: Sensor | None = None,
                  stages: Mapping[str, DerivedStage] | None = None,
                  flow_states: Mapping[Any, Any] | None = None) -> Monitor:
    """The Faust-free monitor configured from ``settings`` (account-stage detectors only).

    With ``stages`` (as built by :func:`build_stage_set`), accepted events are
    forwarded to those derived stages; ``flow_states`` is where the flow
    stage keeps its sketches (the worker's flow table), read for the origins
    an outgoing transfer carries.
    """
    config = detector_config(settings)
    rules = build_rules(config, STAGES)
    decoder = Decoder(
        pii_key=settings.hashing_key(),
        max_message_bytes=settings.max_message_bytes,
        clear_dead_letter_payload=settings.dead_letter_clear_payload,
    )
    derive = stage_deriver(stages, flow_states) if stages else None
    return Monitor(decoder, rules.account, rules.version, sensor, derive=derive)


def build_stage_set(settings: Settings, sensor: Sensor | None = None) -> dict[str, DerivedStage]:
    """The derived stages with at least one configured detector."""
    config = detector_config(settings)
    rules = build_rules(config, STAGES)
    return build_stages(rules.stages, rules.version, rules.bounds, sensor)


def faust_app(settings: Settings, replicas: int = 1) -> faust.App:
    """The Faust app with txwatch's settings, before its topics, tables and agents.

    The benchmark's baselines (``bench/throughput.py``) are built on this same
    app, so they run with the worker's Faust settings by construction.
    """
    return faust.App(
        settings.app_id,
        broker=[f"kafka://{hostport}" for hostport in settings.broker.split(",")],
        broker_credentials=broker_credentials(settings),
        store="memory://",
        topic_partitions=settings.partitions,
        topic_replication_factor=replicas,
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


def create_app(settings: Settings, metrics: PrometheusSensor | None = None,
               extra_sensors: tuple[Sensor, ...] = ()) -> Runtime:
    """Build the Faust app, its topics, table and agent from ``settings``."""
    from streams import __version__
    from streams.agents import attach_agent
    from streams.feedback import attach_feedback
    from streams.portfolio.agent import attach_portfolio
    from streams.rules import attach_rules

    sensors = SensorDelegate(extra_sensors)
    if metrics is not None:
        sensors.add(metrics)
    stages = build_stage_set(settings, sensors)
    # ``txwatch worker`` decides the replicas before it gets here (0: one, in tests and tools)
    replicas = settings.replication_factor or 1
    replicated = replica_configs(replicas)
    app = faust_app(settings, replicas)
    input_topic = app.topic(
        *settings.input_topics, key_type=bytes, value_type=bytes,
        key_serializer="raw", value_serializer="raw", partitions=settings.partitions,
        config=replicated,
    )
    alert_topic = app.topic(
        settings.alert_topic, key_serializer="raw", value_serializer="raw",
        partitions=settings.partitions, config=replicated,
    )
    dead_letter_topic = app.topic(
        settings.dead_letter_topic, key_serializer="raw", value_serializer="raw",
        partitions=settings.partitions, config=replicated,
    )
    table = app.Table(TABLE_NAME, default=None, partitions=settings.partitions,
                      key_type=bytes, value_type=StoredAccountState,
                      extra_topic_configs=replicated)
    model_table = app.Table(MODEL_TABLE_NAME, default=None, partitions=settings.partitions,
                            key_type=bytes, value_type=StoredModels,
                            extra_topic_configs=replicated)
    stage_topics: dict[str, Any] = {}
    stage_tables: dict[str, Any] = {}
    for name in stages:
        # keyed like the input topics, same partition count: co-partitioned with them
        stage_topics[name] = app.topic(
            stage_topic(settings.app_id, name), key_serializer="raw", value_serializer="raw",
            partitions=settings.partitions, internal=True, config=replicated,
        )
        stage_tables[name] = app.Table(
            f"{name}-sketches", default=None, partitions=settings.partitions, key_type=bytes,
            extra_topic_configs=replicated)
    flow_states = stage_tables[FLOW].data if FLOW in stage_tables else None
    monitor = build_monitor(settings, sensors, stages, flow_states)
    runtime = Runtime(settings, app, input_topic, alert_topic, dead_letter_topic, table,
                      monitor, sensors, metrics, stages=stages, stage_topics=stage_topics,
                      stage_tables=stage_tables, model_table=model_table)
    runtime.agent = attach_agent(runtime)
    attach_portfolio(runtime)
    attach_rules(runtime)
    attach_feedback(runtime)
    log.info("txwatch %s: detectors %s, config version %s", __version__,
             [a.name for a in monitor.alerters], monitor.config_version)
    return runtime
