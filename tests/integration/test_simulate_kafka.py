"""The simulator against a real broker: topics created, every event routed and keyed."""

from __future__ import annotations

import asyncio
from collections import Counter

import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient

from streams import simulate as sim
from streams.events import LENDING_TYPES
from streams.settings import Settings

pytestmark = pytest.mark.integration


def settings_for(bootstrap: str, prefix: str) -> Settings:
    return Settings(
        broker=bootstrap,
        payments_topic=f"{prefix}.payments",
        lending_topic=f"{prefix}.lending",
        partitions=3,
    )


async def consume(settings: Settings, expected: int, timeout: float = 60.0) -> list:
    """Every record of both input topics, waiting until ``expected`` have arrived."""
    consumer = AIOKafkaConsumer(
        *settings.input_topics,
        bootstrap_servers=settings.broker,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    records = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(records) < expected and loop.time() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for batch in batches.values():
                records.extend(batch)
        # Anything beyond the expected count would be a duplicate: give it a moment.
        extra = await consumer.getmany(timeout_ms=500)
        records.extend(r for batch in extra.values() for r in batch)
    finally:
        await consumer.stop()
    return records


async def test_simulated_events_arrive_once_each_on_the_right_topic(
    kafka_bootstrap, topic_prefix, tmp_path
):
    settings = settings_for(kafka_bootstrap, topic_prefix)
    labels_path = tmp_path / "labels.jsonl"
    report = await sim.simulate(
        settings, None, None, 2_000, 21, None, labels_path, None, accounts=500
    )
    assert report.sent == report.delivered == 2_000
    assert report.failed == 0
    assert set(report.topics_created) == set(settings.input_topics)

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(list(settings.input_topics))
    finally:
        await admin.close()
    assert {len(topic["partitions"]) for topic in described} == {3}

    records = await consume(settings, 2_000)
    assert len(records) == 2_000
    expected = {e["event_id"]: e for e in sim.generate(21, accounts=500, events=2_000)}
    seen = Counter()
    for record in records:
        event = orjson.loads(record.value)
        assert event == expected[event["event_id"]]
        lending = event["event_type"] in LENDING_TYPES
        assert record.topic == (settings.lending_topic if lending else settings.payments_topic)
        assert record.key == event["account_id"].encode()
        seen[record.topic] += 1
    assert len({orjson.loads(r.value)["event_id"] for r in records}) == 2_000
    assert dict(seen) == report.by_topic
    assert seen[settings.lending_topic] > 0

    labels = [orjson.loads(line) for line in labels_path.read_bytes().splitlines()]
    assert {label["scenario"] for label in labels} <= set(sim.SCENARIOS)
    assert {"velocity_burst", "amount_spike"} <= {label["scenario"] for label in labels}
    assert {label["event_id"] for label in labels} <= expected.keys()

    # Existing topics are fine: a second run creates nothing.
    again = await sim.simulate(settings, None, None, 10, 22, (), None, None, accounts=500)
    assert again.topics_created == ()
    assert again.delivered == 10


async def test_replay_publishes_lines_unchanged_including_a_malformed_one(
    kafka_bootstrap, topic_prefix, tmp_path
):
    settings = settings_for(kafka_bootstrap, topic_prefix)
    generated = list(sim.generate(8, accounts=300, events=3_000, scenarios=()))
    lending = [e for e in generated if e["event_type"] in LENDING_TYPES][:2]
    others = [e for e in generated if e["event_type"] in {"payment", "login"}][:4]
    events = [*others[:2], lending[0], others[2], lending[1], others[3]]
    assert len(lending) == 2
    lines = [orjson.dumps(e) for e in events]
    # The file keeps its own formatting: bytes, not re-serialised dicts.
    lines[0] = lines[0].replace(b'","', b'", "')
    malformed = b'{"event_id": "broken", "event_type": "payment", "amount": '
    lines.insert(3, malformed)
    path = tmp_path / "replay.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")

    report = await sim.replay(settings, path, 200.0, None)
    assert (report.sent, report.delivered, report.unparseable) == (7, 7, 1)

    records = await consume(settings, 7)
    assert sorted(r.value for r in records) == sorted(lines)
    by_value = {r.value: r for r in records}
    assert by_value[malformed].topic == settings.payments_topic
    assert by_value[malformed].key is None
    for line, event in zip([lines[0], *lines[1:3], *lines[4:]], events, strict=True):
        lending = event["event_type"] in LENDING_TYPES
        record = by_value[line]
        assert record.topic == (settings.lending_topic if lending else settings.payments_topic)
        assert record.key == event["account_id"].encode()
