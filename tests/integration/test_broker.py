"""The local Kafka broker: it answers, keeps data across restarts, fails loudly."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from streams.localkafka import BrokerStartError, LocalKafka, create_topics

pytestmark = pytest.mark.integration

#: Upper bound for any single wait on the broker in these tests.
DEADLINE_SECONDS = 60.0


async def produce(bootstrap: str, topic: str, values: Sequence[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value, key=b"account-1")
    finally:
        await producer.stop()


async def consume(
    bootstrap: str, topic: str, group_id: str, count: int
) -> list[ConsumerRecord[bytes, bytes]]:
    """Read ``count`` records as consumer group ``group_id``, failing after the deadline."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group_id,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        records: list[ConsumerRecord[bytes, bytes]] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DEADLINE_SECONDS
        while len(records) < count:
            remaining = deadline - loop.time()
            if remaining <= 0:
                pytest.fail(f"read {len(records)} of {count} records from {topic} in time")
            batches = await consumer.getmany(timeout_ms=int(min(remaining, 1.0) * 1000))
            for batch in batches.values():
                records.extend(batch)
        return records
    finally:
        await consumer.stop()


async def commit(bootstrap: str, topic: str, group_id: str, offset: int) -> None:
    partition = TopicPartition(topic, 0)
    # No auto-commit: stop() would otherwise commit whatever position it reached.
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group_id, enable_auto_commit=False
    )
    consumer.assign([partition])
    await consumer.start()
    try:
        await consumer.commit({partition: offset})
    finally:
        await consumer.stop()


async def list_topics(bootstrap: str) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        topics: list[str] = await admin.list_topics()
        return topics
    finally:
        await admin.close()


def accepts_connections(bootstrap: str) -> bool:
    host, port = bootstrap.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=1.0):
            return True
    except OSError:
        return False


async def test_produced_message_is_consumed_back(kafka_bootstrap: str, topic_prefix: str) -> None:
    topic = f"{topic_prefix}.payments"
    await create_topics(kafka_bootstrap, [topic], partitions=2)

    await produce(kafka_bootstrap, topic, [b'{"event_id": "e-1"}'])
    records = await consume(kafka_bootstrap, topic, f"{topic_prefix}.group", count=1)

    assert [(r.key, r.value) for r in records] == [(b"account-1", b'{"event_id": "e-1"}')]


async def test_create_topics_accepts_existing_topics(
    kafka_bootstrap: str, topic_prefix: str
) -> None:
    first, second = f"{topic_prefix}.first", f"{topic_prefix}.second"
    await create_topics(kafka_bootstrap, [first], partitions=3)

    await create_topics(kafka_bootstrap, [first, second], partitions=3)

    topics = await list_topics(kafka_bootstrap)
    assert {first, second} <= set(topics)


async def test_restart_keeps_topics_records_and_committed_offsets(
    restartable_kafka: LocalKafka, topic_prefix: str
) -> None:
    kafka = restartable_kafka
    topic, group = f"{topic_prefix}.lending", f"{topic_prefix}.worker"
    await create_topics(kafka.bootstrap, [topic])
    await produce(kafka.bootstrap, topic, [b"one", b"two", b"three"])
    await commit(kafka.bootstrap, topic, group, offset=2)
    bootstrap = kafka.bootstrap

    await kafka.restart_async()

    assert kafka.bootstrap == bootstrap
    assert topic in await list_topics(kafka.bootstrap)
    everything = await consume(kafka.bootstrap, topic, f"{topic_prefix}.fresh", count=3)
    assert [r.value for r in everything] == [b"one", b"two", b"three"]
    resumed = await consume(kafka.bootstrap, topic, group, count=1)
    assert [(r.offset, r.value) for r in resumed] == [(2, b"three")]

    await kafka.stop_async()

    assert not kafka.running
    assert not accepts_connections(kafka.bootstrap)


def broken_config(data_dir: Path) -> tuple[LocalKafka, str]:
    kafka = LocalKafka(data_dir, extra_properties={"num.network.threads": "not-a-number"})
    return kafka, "Invalid value not-a-number for configuration num.network.threads"


def broken_storage(data_dir: Path) -> tuple[LocalKafka, str]:
    kafka = LocalKafka(data_dir)
    kafka.log_dir.mkdir(parents=True)
    (kafka.log_dir / "meta.properties").write_text("not a kafka meta file\n", encoding="utf-8")
    return kafka, "node ID not found"


@pytest.mark.parametrize("damaged", [broken_config, broken_storage], ids=["config", "storage"])
def test_broker_that_cannot_start_raises_with_the_log_tail(
    tmp_path: Path, damaged: Callable[[Path], tuple[LocalKafka, str]]
) -> None:
    kafka, cause = damaged(tmp_path / "kafka")

    with pytest.raises(BrokerStartError) as failure:
        kafka.start()

    assert cause in failure.value.log_tail
    assert cause in str(failure.value)
    assert not kafka.running


async def test_broker_cli_prints_bootstrap_and_stops_on_sigterm(tmp_path: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "streams.cli",
        "broker",
        "--data-dir",
        str(tmp_path / "kafka"),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert process.stdout is not None
    try:
        seen: list[str] = []
        async with asyncio.timeout(DEADLINE_SECONDS):
            while not seen or not seen[-1].startswith("bootstrap: "):
                line = await process.stdout.readline()
                if not line:
                    pytest.fail(
                        "txwatch broker exited before printing its bootstrap:\n" + "".join(seen)
                    )
                seen.append(line.decode())
        bootstrap = seen[-1].removeprefix("bootstrap: ").strip()
        assert bootstrap.startswith("127.0.0.1:")
        assert accepts_connections(bootstrap)

        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(DEADLINE_SECONDS):
            rest, _ = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

    assert process.returncode == 0, rest.decode()
    assert not accepts_connections(bootstrap)
