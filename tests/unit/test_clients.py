"""Every Kafka client is built by :mod:`streams.clients`, with the security settings.

The walk covers the runtime (``streams/``) and the benchmark (``bench/``).
Test code under ``tests/`` is exempt from the walk (a test may build a bare
client to probe a broker), although ``tests/support`` uses the module too.
"""

from __future__ import annotations

import ast
import ssl
from pathlib import Path

import pytest

from streams import clients
from streams.settings import Secret, Settings

ROOT = Path(__file__).resolve().parents[2]
#: Folders whose modules may build a client only through :mod:`streams.clients`.
WALKED = ("streams", "bench")
CLIENT_MODULE = ROOT / "streams" / "clients.py"
#: aiokafka's client classes (and kafka-python's admin client, same name).
CLIENT_CLASSES = frozenset({"AIOKafkaProducer", "AIOKafkaConsumer", "AIOKafkaAdminClient",
                            "KafkaAdminClient", "KafkaProducer", "KafkaConsumer"})


def client_constructions(source: str) -> list[tuple[int, str]]:
    """``(line, class)`` of each call that constructs a Kafka client class in ``source``."""
    tree = ast.parse(source)
    aliases = {name: name for name in CLIENT_CLASSES}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            for imported in node.names:
                if imported.name in CLIENT_CLASSES:
                    aliases[imported.asname or imported.name] = imported.name
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in aliases:
            found.append((node.lineno, aliases[func.id]))
        elif isinstance(func, ast.Attribute) and func.attr in CLIENT_CLASSES:
            found.append((node.lineno, func.attr))
    return found


def walked_modules() -> list[Path]:
    return sorted(path for folder in WALKED for path in (ROOT / folder).rglob("*.py")
                  if path != CLIENT_MODULE)


def test_the_walk_finds_every_way_of_constructing_a_client() -> None:
    source = """
import aiokafka
import aiokafka.admin as kadmin
from aiokafka import AIOKafkaProducer
from aiokafka import AIOKafkaConsumer as Reader

def build():
    AIOKafkaProducer(bootstrap_servers="x")
    Reader("topic", bootstrap_servers="x")
    kadmin.AIOKafkaAdminClient(bootstrap_servers="x")
    aiokafka.AIOKafkaConsumer(bootstrap_servers="x")
    clients.producer(settings)
"""
    assert client_constructions(source) == [
        (8, "AIOKafkaProducer"), (9, "AIOKafkaConsumer"), (10, "AIOKafkaAdminClient"),
        (11, "AIOKafkaConsumer")]


def test_no_kafka_client_is_constructed_outside_the_client_module() -> None:
    modules = walked_modules()
    assert ROOT / "streams" / "rules.py" in modules  # the walk sees the runtime
    assert client_constructions(CLIENT_MODULE.read_text())  # and would see a construction
    offenders = [f"{path.relative_to(ROOT)}:{line} {name}" for path in modules
                 for line, name in client_constructions(path.read_text())]
    assert not offenders, ("build Kafka clients with streams.clients, which applies the "
                           "security settings: " + ", ".join(offenders))


def sasl_settings(protocol: str = "SASL_SSL") -> Settings:
    return Settings(broker="kafka-1:9093,kafka-2:9093", security_protocol=protocol,
                    sasl_mechanism="SCRAM-SHA-256", sasl_username="worker",
                    sasl_password=Secret("s3cret"))


def test_every_client_carries_the_security_settings() -> None:
    settings = sasl_settings()
    built = clients.options(settings, "txwatch-x", {})
    assert built["bootstrap_servers"] == "kafka-1:9093,kafka-2:9093"
    assert built["security_protocol"] == "SASL_SSL"
    assert built["sasl_mechanism"] == "SCRAM-SHA-256"
    assert built["sasl_plain_username"] == "worker"
    assert built["sasl_plain_password"] == "s3cret"
    assert isinstance(built["ssl_context"], ssl.SSLContext)
    assert built["client_id"] == "txwatch-x"
    # overrides win, security stays
    tuned = clients.options(settings, "txwatch-x", {"client_id": "mine", "linger_ms": 5})
    assert tuned["client_id"] == "mine" and tuned["linger_ms"] == 5
    assert tuned["security_protocol"] == "SASL_SSL"


async def test_producer_consumer_and_admin_are_built_for_the_secured_cluster() -> None:
    settings = sasl_settings("SASL_PLAINTEXT")
    producer = clients.producer(settings, client_id="p")
    consumer = clients.consumer(settings, "t1", client_id="c")
    admin = clients.admin(settings, client_id="a")
    # aiokafka keeps the options on the wrapped client; nothing connects before start()
    for client in (producer.client, consumer._client, admin._client):
        assert client._security_protocol == "SASL_PLAINTEXT"
        assert client._sasl_mechanism == "SCRAM-SHA-256"
        assert client._sasl_plain_username == "worker"
    assert consumer._group_id is None
    await producer.stop()
    await consumer.stop()
    await admin.close()


async def test_create_topics_with_no_name_contacts_nobody() -> None:
    # an unreachable broker: the call would fail if it connected
    assert await clients.create_topics(Settings(broker="127.0.0.1:1"), []) == []


@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SSL"])
def test_plaintext_and_ssl_clients_have_no_sasl_options(protocol: str) -> None:
    built = clients.options(Settings(security_protocol=protocol), "x", {})
    assert built["security_protocol"] == protocol
    assert "sasl_plain_password" not in built
    assert ("ssl_context" in built) == (protocol == "SSL")


def test_every_topic_and_changelog_of_the_worker_gets_the_replicas(tmp_path: Path) -> None:
    # txwatch worker decides the replicas (TXWATCH_REPLICATION_FACTOR, else the brokers)
    # before it builds the app; Faust creates the changelogs with what the app says
    from streams.app import create_app

    settings = Settings(app_id=f"unit-{tmp_path.name}", data_dir=tmp_path, partitions=2,
                        dev_mode=True, replication_factor=3)
    runtime = create_app(settings)
    assert runtime.app.conf.topic_replication_factor == 3
    tables = [runtime.table, runtime.model_table, *runtime.stage_tables.values()]
    topics = [runtime.input_topic, runtime.alert_topic, runtime.dead_letter_topic,
              *runtime.stage_topics.values(), *(t.changelog_topic for t in tables)]
    assert len(topics) >= 8
    for topic in topics:
        assert topic.config["min.insync.replicas"] == "2", topic.get_topic_name()
    loans = runtime.app._txwatch_portfolio.table  # the lending book (streams/portfolio/)
    assert loans.changelog_topic.config["min.insync.replicas"] == "2"


@pytest.mark.parametrize(("replicas", "insync"), [(1, "1"), (2, "1"), (3, "2")])
def test_min_insync_replicas_is_one_less_than_the_replicas(replicas: int, insync: str) -> None:
    assert clients.replica_configs(replicas) == {"min.insync.replicas": insync}


async def test_the_replicas_come_from_the_setting_before_the_cluster() -> None:
    settings = Settings(broker="127.0.0.1:9", replication_factor=2)
    # set: the cluster is not asked (nothing listens on port 9)
    assert await clients.resolve_replication_factor(settings) is settings
