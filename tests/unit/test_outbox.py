"""The agents' Outbox: a batch counts as done only once the broker has every record."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from streams.agents import Outbox


class Producer:
    """Faust's ``Producer.send`` signature; each send returns its delivery future."""

    def __init__(self, fail_on: bytes | None = None) -> None:
        self.sent: list[tuple[str, bytes | None, bytes | None, int | None]] = []
        self.acked: list[bytes | None] = []
        self.fail_on = fail_on

    async def send(self, topic: str, key: bytes | None, value: bytes | None,
                   partition: int | None, timestamp: float | None,
                   headers: Any) -> asyncio.Future[Any]:
        assert timestamp is None and headers is None
        self.sent.append((topic, key, value, partition))
        loop = asyncio.get_running_loop()
        delivery: asyncio.Future[Any] = loop.create_future()
        # acknowledged later, as the broker would: only a sender that waits sees it
        loop.call_soon(self._ack, delivery, value)
        return delivery

    def _ack(self, delivery: asyncio.Future[Any], value: bytes | None) -> None:
        if value == self.fail_on:
            delivery.set_exception(RuntimeError("broker refused the record"))
        else:
            self.acked.append(value)
            delivery.set_result(len(self.acked) - 1)


async def test_records_go_out_in_order_and_every_delivery_is_awaited() -> None:
    out = Outbox()
    out.add("alerts", b"acct-1", b"alert")
    out.add("txwatch-flow", b"acct-2", b"edge")
    out.add("txwatch-accounts-changelog", b"acct-1", b"state", 3)
    producer = Producer()
    await out.deliver(producer)
    assert producer.sent == [
        ("alerts", b"acct-1", b"alert", None),
        ("txwatch-flow", b"acct-2", b"edge", None),
        ("txwatch-accounts-changelog", b"acct-1", b"state", 3),
    ]
    assert producer.acked == [b"alert", b"edge", b"state"]  # deliver returned after every ack
    await out.deliver(producer)  # delivered records are not sent again
    assert len(producer.sent) == 3


async def test_a_refused_record_fails_the_batch() -> None:
    out = Outbox()
    out.add("alerts", b"acct-1", b"alert")
    out.add("txwatch-accounts-changelog", b"acct-1", b"state", 0)
    with pytest.raises(RuntimeError, match="broker refused"):
        await out.deliver(Producer(fail_on=b"state"))
