"""The monitor agent writes each partition's models after the alerts and before the accounts."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import orjson

from detectors.registry import DEFAULT_CONFIG, build_alerters
from streams.agents import MonitorAgent
from streams.codec import Decoder
from streams.pipeline import Monitor, model_key

T0 = datetime.now(UTC) - timedelta(hours=1)


class Producer:
    """Acknowledges each record later, logging sends and acks in the order they happen."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str]] = []

    async def send(self, topic: str, key: bytes | None, value: bytes | None,
                   partition: int | None, timestamp: float | None,
                   headers: Any) -> asyncio.Future[Any]:
        self.log.append(("send", topic))
        loop = asyncio.get_running_loop()
        delivery: asyncio.Future[Any] = loop.create_future()
        loop.call_soon(self._ack, delivery, topic)
        return delivery

    def _ack(self, delivery: asyncio.Future[Any], topic: str) -> None:
        self.log.append(("ack", topic))
        delivery.set_result(None)


def _topic(name: str) -> Any:
    return SimpleNamespace(get_topic_name=lambda: name)


def _message(offset: int, seconds: int) -> Any:
    value = orjson.dumps({
        "event_id": f"e{offset}", "event_type": "payment",
        "occurred_at": (T0 + timedelta(seconds=seconds)).isoformat(),
        "account_id": "a1", "amount": "20.00", "currency": "CNY", "counterparty_id": "shop",
    })
    return SimpleNamespace(message=SimpleNamespace(
        value=value, topic="payments", partition=2, offset=offset, timestamp=None,
        tp=("payments", 2), key=b"a1"))


async def test_models_are_delivered_after_the_alerts_and_before_the_accounts() -> None:
    producer = Producer()
    monitor = Monitor(Decoder(pii_key=b"k", max_message_bytes=65536),
                      build_alerters(DEFAULT_CONFIG)[:3], "v")
    sensors = SimpleNamespace(on_ready=lambda *a: None, on_batch=lambda *a: None)
    runtime: Any = SimpleNamespace(
        table=SimpleNamespace(data={}, changelog_topic=_topic("accounts-changelog")),
        model_table=SimpleNamespace(data={}, changelog_topic=_topic("models-changelog")),
        alert_topic=_topic("alerts"), dead_letter_topic=_topic("dead"), stage_topics={},
        monitor=monitor, app=SimpleNamespace(producer=producer), sensors=sensors)
    agent = MonitorAgent(runtime)
    # a velocity burst: eleven payments in a minute, the tenth alerts
    await agent.process_batch([_message(i, 2 * i) for i in range(11)])
    log = producer.log
    assert ("send", "alerts") in log
    first_model = log.index(("send", "models-changelog"))
    assert log.index(("ack", "alerts")) < first_model
    assert log.index(("ack", "models-changelog")) < log.index(("send", "accounts-changelog"))
    record = orjson.loads(runtime.model_table.data[model_key("payments", 2)])
    assert record["offset"] == 10
