"""Development tooling: a real Kafka on 127.0.0.1 for tests, demo, broker; never in the worker.

The integration tests, ``txwatch demo`` and ``txwatch broker`` use it; the
worker (``streams.app`` and what it imports) never does. No Docker: Maven
resolves the Kafka jars once into a cache directory (``jars``, from
``deploy/kafka/pom.xml``, which the wheel ships as package data), and
:class:`LocalKafka` (``node``) runs one KRaft node, broker and controller in
the same JVM, on free ports. :class:`LocalKafkaCluster` (``cluster``) runs
several for the replication tests, :class:`SecureListener` (``secure``) adds a
SASL_SSL listener, ``cli`` is ``txwatch broker``; ``base`` holds the errors,
``network`` the ports, the readiness probe and topic creation through
:mod:`streams.clients`. Nothing here imports ``faust``. Callers import from the
package.
"""

from __future__ import annotations

from streams.localkafka.base import BrokerError, BrokerSetupError, BrokerStartError, Progress
from streams.localkafka.cli import (
    DEFAULT_CLIENT_PORT,
    broker_banner,
    cli_client_port,
    run_broker_cli,
)
from streams.localkafka.cluster import LocalKafkaCluster
from streams.localkafka.jars import (
    KAFKA_VERSION,
    PROJECT_FILES,
    default_cache_dir,
    project_dir,
    resolve_kafka_jars,
)
from streams.localkafka.network import HOST, create_topics
from streams.localkafka.node import NODE_ID, LocalKafka
from streams.localkafka.secure import SASL_MECHANISMS, SECURE_LISTENER, SecureListener

__all__ = [
    "DEFAULT_CLIENT_PORT",
    "HOST",
    "KAFKA_VERSION",
    "NODE_ID",
    "PROJECT_FILES",
    "SASL_MECHANISMS",
    "SECURE_LISTENER",
    "BrokerError",
    "BrokerSetupError",
    "BrokerStartError",
    "LocalKafka",
    "LocalKafkaCluster",
    "Progress",
    "SecureListener",
    "broker_banner",
    "cli_client_port",
    "create_topics",
    "default_cache_dir",
    "project_dir",
    "resolve_kafka_jars",
    "run_broker_cli",
]
