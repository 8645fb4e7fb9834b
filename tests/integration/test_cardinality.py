"""The /metrics endpoint stays bounded under adversarial input.

100,000 messages, each from an account id never seen before, three in ten
with an invented ``event_type``: a label per account or per type would add
100,000 series to every scrape (and to Prometheus). No label value may be
taken from the input, and the set of series after the flood must be the one
after a small warm-up of the same traffic (bounded sets only: contract event
types or ``unknown``, dead-letter reasons, configured detectors, input
partitions).
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import orjson
import pytest

from streams.events import EVENT_TYPES
from streams.localkafka import create_topics
from tests.support import faults
from tests.support.worker import WorkerProcess, wait_for, worker_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

MESSAGES = 100_000
WARM_UP = 5_000
PARTITIONS = 2
#: A ceiling far above what the worker exports (a few hundred series, mostly
#: histogram buckets per detector) and far below one series per account.
MAX_SERIES = 3_000


def flood(count: int, start: int, rng: random.Random, topic: str) -> list[faults.Message]:
    out = []
    for number in range(start, start + count):
        account = f"flood-{number:06d}-{rng.getrandbits(32):08x}"
        invented = rng.random() < 0.3
        event = {
            "event_id": f"flood-{number}",
            "event_type": f"invented-{rng.getrandbits(40):010x}" if invented else
            rng.choice(("payment", "login", "top_up")),
            "occurred_at": f"2026-03-01T{number % 24:02d}:{number % 60:02d}:00Z",
            "account_id": account,
            "counterparty_id": f"cp-{number}",
        }
        if event["event_type"] in ("payment", "top_up"):
            event.update(amount=f"{rng.randint(1, 99999)}.00", currency="CNY")
        out.append(faults.Message(topic, account.encode(), orjson.dumps(event)))
    return out


def series(worker: WorkerProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {key: value for key, value in worker.scrape().items() if key[0].startswith("txwatch_")}


async def test_metrics_series_stay_bounded_under_100000_new_accounts_and_invented_types(
        kafka_bootstrap: str, topic_prefix: str, tmp_path: Path) -> None:
    env = worker_env(kafka_bootstrap, topic_prefix, TXWATCH_PARTITIONS=str(PARTITIONS),
                     TXWATCH_DATA_DIR=str(tmp_path / "data"))
    settings = faults.worker_settings(env)
    await create_topics(kafka_bootstrap, [*settings.input_topics, settings.alert_topic,
                                          settings.dead_letter_topic], PARTITIONS)
    rng = random.Random(1234)
    warm_up = flood(WARM_UP, 0, rng, settings.payments_topic)
    rest = flood(MESSAGES - WARM_UP, WARM_UP, rng, settings.payments_topic)
    invented = {orjson.loads(m.value)["event_type"] for m in warm_up + rest} - EVENT_TYPES
    with WorkerProcess(env, tmp_path / "worker.log") as worker:
        await faults.publish(kafka_bootstrap, warm_up)
        await faults.wait_until_consumed(kafka_bootstrap, settings.app_id,
                                         settings.input_topics, timeout=120,
                                         alive=faults.alive(worker))
        # the lag gauge is set by a 5 s timer: wait for it to know every partition
        await asyncio.to_thread(
            wait_for, lambda: len([k for k in series(worker) if k[0] == "txwatch_consumer_lag"
                                   and dict(k[1]).get("topic") in settings.input_topics])
            == PARTITIONS * 2, 30, "lag gauges for every input partition")
        after_warm_up = series(worker)
        await faults.publish(kafka_bootstrap, rest)
        await faults.wait_until_consumed(kafka_bootstrap, settings.app_id,
                                         settings.input_topics, timeout=400,
                                         alive=faults.alive(worker))
        await asyncio.to_thread(
            wait_for, lambda: worker.metric("txwatch_events_total") >= MESSAGES, 60,
            "every message counted")
        after_flood = series(worker)
        accounts = worker.metric("txwatch_state_accounts")
        log_bytes = len(worker.log_path.read_bytes())
    print(f"\ncardinality: {MESSAGES:,} messages from {MESSAGES:,} new accounts, "
          f"{len(invented):,} invented event types; txwatch series after warm-up "
          f"{len(after_warm_up)}, after the flood {len(after_flood)}; accounts in state "
          f"{accounts:,.0f}; worker log {log_bytes:,} bytes")
    flooded = {m.key.decode() for m in warm_up + rest} | invented
    leaked = sorted({(name, label, value) for (name, labels) in after_flood
                     for label, value in labels
                     if value in flooded or value.startswith(("flood-", "invented-"))})
    assert not leaked, f"label values taken from the input: {leaked[:10]}"
    assert len(after_flood) <= MAX_SERIES
    new_series = sorted(set(after_flood) - set(after_warm_up))
    assert not new_series, f"series created by the flood: {new_series[:10]}"
    assert after_flood[("txwatch_dead_letters_total", (("reason", "unknown_type"),))] == len(
        [m for m in warm_up + rest if orjson.loads(m.value)["event_type"] in invented])
