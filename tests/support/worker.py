"""A real ``txwatch worker`` process for integration tests, and Kafka helpers.

The process harness is the product's own (:class:`streams.evaluation.process.WorkerProcess`,
which ``txwatch evaluate`` runs its worker with); this module adds the tests' settings.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson

from streams import clients
from streams.evaluation.process import WorkerProcess, topic_env
from streams.settings import Settings

__all__ = ["WorkerProcess", "consume_until", "produce", "wait_for", "worker_env"]


def worker_env(bootstrap: str, prefix: str, **extra: str) -> dict[str, str]:
    """Environment for a worker on topics and a group of its own."""
    return {
        **os.environ,
        **topic_env(bootstrap, prefix),
        "TXWATCH_DEV_MODE": "1",  # the development PII key unless TXWATCH_PII_KEY is given
        "TXWATCH_SESSION_TIMEOUT": "6",
        "TXWATCH_REBALANCE_TIMEOUT": "6",
        "TXWATCH_BATCH_WITHIN": "0.02",
        "TXWATCH_PARTITIONS": "2",
        **extra,
    }


async def produce(bootstrap: str, topic: str,
                  messages: Iterable[tuple[bytes | None, bytes]]) -> None:
    producer = clients.producer(Settings(broker=bootstrap), acks=1, linger_ms=5,
                                client_id="txwatch-test")
    await producer.start()
    try:
        for key, value in messages:
            await producer.send(topic, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


async def consume_until(bootstrap: str, topic: str, done: Callable[[list[Any]], bool],
                        timeout: float = 90.0, decode: bool = True,
                        security: Mapping[str, Any] | None = None) -> list[Any]:
    """Read ``topic`` from the beginning until ``done(records)`` or the deadline.

    ``security``: aiokafka keywords for a secured listener (``tests/support/tls.py``).
    """
    consumer = clients.consumer(Settings(broker=bootstrap), topic, client_id="txwatch-test",
                                **dict(security or {}))
    await consumer.start()
    records: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=250)
            for items in batch.values():
                records.extend(orjson.loads(r.value) if decode else r for r in items)
            if done(records):
                return records
    finally:
        await consumer.stop()
    message = f"condition not met on {topic} within {timeout}s; got {len(records)} records"
    raise TimeoutError(message)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)  # re-check a condition against a deadline
    message = f"timed out after {timeout}s waiting for {what}"
    raise TimeoutError(message)

