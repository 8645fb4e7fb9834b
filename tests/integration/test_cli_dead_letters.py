"""``txwatch dead-letters`` on the real broker: reason, detail, source and payload of each."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime

import orjson
import pytest

from streams.codec import Decoder, dead_letter_record
from streams.events import DeadLetter
from streams.localkafka import create_topics
from tests.support.worker import produce, worker_env

pytestmark = pytest.mark.integration

#: (message, source offset) of three rejected input messages.
REJECTED = [
    (b'{"event_id": "x1", "event_type": "payment", "account_id": "acct-7",'
     b' "occurred_at": "2024-05-01T12:00:00Z", "amount": "1.234", "currency": "EUR"}', 41),
    (b"not json at all", 42),
    (b'{"event_id": "x2", "event_type": "payment", "account_id": "acct-7",'
     b' "occurred_at": "2024-05-01T12:00:00Z", "amount": 12, "currency": "EUR",'
     b' "phone": "+49 151 0000000"}', 43),
]


def dead_letters_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streams.cli", "dead-letters", *args], env=env,
                          capture_output=True, text=True, timeout=60, check=False,
                          stdin=subprocess.DEVNULL)


async def test_dead_letters_prints_reason_detail_source_and_filters_by_reason(
        kafka_bootstrap: str, topic_prefix: str) -> None:
    env = worker_env(kafka_bootstrap, topic_prefix, TXWATCH_PII_KEY="dev")
    topic = env["TXWATCH_DEAD_LETTER_TOPIC"]
    source = env["TXWATCH_PAYMENTS_TOPIC"]
    await create_topics(kafka_bootstrap, [topic], 1)
    decoder = Decoder(pii_key=b"dev", max_message_bytes=65536)
    now = datetime(2026, 12, 1, 21, 0, tzinfo=UTC)
    records = []
    for raw, offset in REJECTED:
        letter = decoder.decode(raw, topic=source, partition=1, offset=offset)
        assert isinstance(letter, DeadLetter)
        records.append((b"acct-7", dead_letter_record(letter, now)))
    await produce(kafka_bootstrap, topic, records)

    shown = await asyncio.to_thread(dead_letters_cli, env, "--from-beginning", "--limit", "3")
    assert shown.returncode == 0, shown.stderr
    assert f"waiting for dead letters on {topic}" in shown.stderr
    assert f"amount  from {source}[1]@41" in shown.stdout
    assert "amount: '1.234' has more than 2 decimal places" in shown.stdout
    assert f"not_json  from {source}[1]@42" in shown.stdout
    assert "payload: not json at all" in shown.stdout
    assert "payload (personal fields hashed):" in shown.stdout
    assert "+49 151" not in shown.stdout

    amounts = await asyncio.to_thread(dead_letters_cli, env, "--from-beginning", "--json",
                                      "--reason", "amount", "--limit", "2")
    assert amounts.returncode == 0, amounts.stderr
    parsed = [orjson.loads(line) for line in amounts.stdout.splitlines()]
    assert [(r["reason"], r["source"]["offset"]) for r in parsed] == [("amount", 41),
                                                                      ("amount", 43)]
