"""Replicated topics on a three-broker KRaft cluster: one broker stops mid-stream, nothing is lost.

The cluster is three :class:`streams.localkafka.LocalKafka` nodes on 127.0.0.1
(:class:`streams.localkafka.LocalKafkaCluster`). The worker is told nothing about
replication: ``TXWATCH_REPLICATION_FACTOR`` is unset, so every topic it and
Faust create gets one replica per broker (3) and ``min.insync.replicas`` 2.
The broker that leads the most partitions is stopped while the worker is
mid-stream, the second half of the stream is published while it is down,
and then it starts again; the checks of ``tests/support/faults.py`` compare
alerts, dead letters and changelog state with an offline recount.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from streams import clients
from streams.localkafka import LocalKafkaCluster
from streams.settings import Settings
from tests.support import faults
from tests.support.faults import check_run, labelled_messages, publish
from tests.support.worker import WorkerProcess, wait_for, worker_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

PARTITIONS = 4
BAD_EVERY = 500


@pytest.fixture
def kafka_cluster(tmp_path: Path) -> Iterator[LocalKafkaCluster]:
    cluster = LocalKafkaCluster(3, tmp_path / "cluster")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


async def describe(bootstrap: str, topics: Sequence[str],
                   ) -> tuple[dict[str, list[list[int]]], dict[str, dict[str, str]]]:
    """Each topic's partitions' replica lists, and its configuration."""
    admin = clients.admin(Settings(broker=bootstrap), client_id="txwatch-test")
    await admin.start()
    try:
        described = await admin.describe_topics(list(topics))
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in topics])
    finally:
        await admin.close()
    replicas = {entry["topic"]: [p["replicas"] for p in entry["partitions"]]
                for entry in described}
    configs: dict[str, dict[str, str]] = {}
    for response in responses:
        for resource in response.resources:
            _, _, _, name, entries = resource[:5]
            configs[name] = {entry[0]: entry[1] for entry in entries}
    return replicas, configs


async def leaders(bootstrap: str, topics: Sequence[str]) -> Counter[int]:
    """Partitions led by each broker."""
    admin = clients.admin(Settings(broker=bootstrap), client_id="txwatch-test")
    await admin.start()
    try:
        described = await admin.describe_topics(list(topics))
    finally:
        await admin.close()
    return Counter(p["leader"] for entry in described for p in entry["partitions"])


async def test_a_broker_stopped_mid_stream_loses_and_changes_nothing(
        kafka_cluster: LocalKafkaCluster, topic_prefix: str, tmp_path: Path) -> None:
    bootstrap = kafka_cluster.bootstrap
    env = worker_env(bootstrap, topic_prefix, TXWATCH_PARTITIONS=str(PARTITIONS),
                     TXWATCH_DATA_DIR=str(tmp_path / "data"))
    env.pop("TXWATCH_REPLICATION_FACTOR", None)
    settings = faults.worker_settings(env)
    # created before anything is published (a producer would auto-create one replica)
    await clients.create_topics(Settings(broker=bootstrap), [
        *settings.input_topics, settings.alert_topic, settings.dead_letter_topic], PARTITIONS)
    messages, _ = labelled_messages(settings, events=20_000, bad_every=BAD_EVERY,
                                    single_topic=True)
    half = len(messages) // 2
    worker = WorkerProcess(env, tmp_path / "worker.log").start()
    assert worker.proc is not None
    pid = worker.proc.pid
    changelog = faults.changelog_topic(settings.app_id)
    watched = [*settings.input_topics, settings.alert_topic, changelog]
    try:
        sent = await publish(bootstrap, messages[:half])
        await asyncio.to_thread(
            wait_for, lambda: worker.metric("txwatch_events_total", outcome="processed") >= 2000,
            180, "the worker mid-stream")
        led = await leaders(bootstrap, watched)
        stopped, most = led.most_common(1)[0]
        outage = time.monotonic()
        await asyncio.to_thread(kafka_cluster.stop_node, stopped)
        sent += await publish(bootstrap, messages[half:])
        await asyncio.to_thread(kafka_cluster.start_node, stopped)
        outage = time.monotonic() - outage
        drained = await faults.wait_until_consumed(
            bootstrap, settings.app_id, settings.input_topics, timeout=400,
            alive=faults.alive(worker))
        assert worker.proc.poll() is None and worker.proc.pid == pid, "the worker was restarted"
    finally:
        worker.stop()
    replicas, configs = await describe(bootstrap, [*watched, settings.dead_letter_topic])
    run = await check_run(bootstrap, settings, sent)
    print("\nbroker_failover: " + json.dumps({
        **run.summary(), "stopped_broker": stopped, "partitions_it_led": most,
        "broker_down_s": round(outage, 1), "drain_s": round(drained, 1)}, sort_keys=True))
    for topic, partitions in replicas.items():
        assert partitions and all(len(r) == 3 for r in partitions), (topic, partitions)
        assert configs[topic]["min.insync.replicas"] == "2", topic
    problems = run.problems()
    assert not problems, "\n".join(problems) + f"\n--- worker log tail ---\n{worker.log_tail()}"
    assert run.found_alerts == run.expected_alerts > 0
    assert run.dead_letter_records >= run.dead_letters_expected
