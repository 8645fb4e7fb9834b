"""Feedback on the real broker: dispositions learnt, precision exported, later alerts ranked."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.feedback import DEFAULT_MIN_FEEDBACK, publish_feedback
from streams.localkafka import create_topics
from streams.settings import Settings
from tests.support.worker import WorkerProcess, consume_until, produce, wait_for, worker_env

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
#: Bursts of large payments are what analysts confirm here; small ones they dismiss.
CONFIRMED, DISMISSED = "900.00", "20.00"


def burst(account: str, amount: str) -> list[tuple[bytes, bytes]]:
    """12 payments to 12 merchants within 33 s: one velocity alert."""
    return [(account.encode(), orjson.dumps({
        "event_id": f"{account}-p{i}", "event_type": "payment",
        "occurred_at": (T0 + timedelta(seconds=3 * i)).isoformat().replace("+00:00", "Z"),
        "account_id": account, "amount": amount, "currency": "CNY",
        "counterparty_id": f"merchant-{i}",
    })) for i in range(12)]


def velocity_alerts(records: list[dict[str, Any]], prefix: str) -> dict[str, dict[str, Any]]:
    return {r["account_id"]: r for r in records
            if r["detector"] == "velocity" and r["account_id"].startswith(prefix)}


@pytest.fixture
async def env(kafka_bootstrap: str, topic_prefix: str) -> dict[str, str]:
    environment = worker_env(kafka_bootstrap, topic_prefix,
                             TXWATCH_FEEDBACK_TOPIC=f"{topic_prefix}.feedback",
                             TXWATCH_CONFIG_TOPIC=f"{topic_prefix}.config")
    await create_topics(kafka_bootstrap, [
        environment["TXWATCH_PAYMENTS_TOPIC"], environment["TXWATCH_LENDING_TOPIC"],
        environment["TXWATCH_ALERT_TOPIC"], environment["TXWATCH_DEAD_LETTER_TOPIC"],
    ], partitions=2)
    return environment


async def test_dispositions_are_learnt_counted_and_rank_later_alerts(
        env: dict[str, str], tmp_path: Path) -> None:
    bootstrap, feedback_topic = env["TXWATCH_BROKER"], env["TXWATCH_FEEDBACK_TOPIC"]
    payments, alert_topic = env["TXWATCH_PAYMENTS_TOPIC"], env["TXWATCH_ALERT_TOPIC"]
    decided = 2 * (DEFAULT_MIN_FEEDBACK // 2 + 2)  # a few more than the ranker needs
    with WorkerProcess(env, tmp_path / "worker.log") as worker:
        # a disposition of an alert nobody raised waits, then counts as unmatched
        await publish_feedback(Settings(broker=bootstrap), feedback_topic,
                               {"alert_id": "e" * 32, "disposition": "true_positive"})
        messages = []
        for n in range(decided):
            messages += burst(f"acct-f{n:02d}", CONFIRMED if n % 2 else DISMISSED)
        await produce(bootstrap, payments, messages)
        records = await consume_until(
            bootstrap, alert_topic, lambda rs: len(velocity_alerts(rs, "acct-f")) == decided)
        first = velocity_alerts(records, "acct-f")
        assert all(a["feedback_probability"] is None for a in first.values())

        for _, alert in sorted(first.items()):
            confirmed = alert["amount"] == CONFIRMED
            await publish_feedback(Settings(broker=bootstrap), feedback_topic, {
                "alert_id": alert["alert_id"], "analyst": "analyst-7",
                "disposition": "true_positive" if confirmed else "false_positive"})
        await produce(bootstrap, feedback_topic, [(b"x", b"{not json")])

        half = decided // 2
        wait_for(lambda: worker.metric("txwatch_feedback_total",
                                       disposition="true_positive") == half
                 and worker.metric("txwatch_feedback_total", disposition="false_positive") == half,
                 60, "every disposition learnt")
        assert worker.metric("txwatch_feedback_precision", detector="velocity") == 0.5
        wait_for(lambda: worker.metric("txwatch_feedback_rejected_total") == 1, 30,
                 "the bad record counted")

        await produce(bootstrap, payments,
                      burst("acct-g-large", CONFIRMED) + burst("acct-g-small", DISMISSED))
        records = await consume_until(
            bootstrap, alert_topic, lambda rs: len(velocity_alerts(rs, "acct-g")) == 2)
        later = velocity_alerts(records, "acct-g")
        large = later["acct-g-large"]["feedback_probability"]
        small = later["acct-g-small"]["feedback_probability"]
        assert large is not None and small is not None
        assert 0.5 < large <= 1.0 and 0.0 <= small < 0.5

        wait_for(lambda: worker.metric("txwatch_feedback_total", disposition="unmatched") == 1,
                 60, "the unknown alert's disposition counted as unmatched")


async def test_the_feedback_command_publishes_a_disposition(
        env: dict[str, str]) -> None:
    alert_id = "0123456789abcdef0123456789abcdef"
    result = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "streams.cli", "feedback", alert_id,
                         "false_positive", "--analyst", "case-tool"],
        env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    records = await consume_until(env["TXWATCH_BROKER"], env["TXWATCH_FEEDBACK_TOPIC"],
                                  lambda rs: len(rs) >= 1, decode=False)
    assert records[0].key == alert_id.encode()
    value = orjson.loads(records[0].value)
    assert (value["alert_id"], value["disposition"], value["analyst"]) == (
        alert_id, "false_positive", "case-tool")
    assert value["decided_at"].endswith("Z")
