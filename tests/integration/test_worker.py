"""The worker on the real broker: alerts out, dead letters out, metrics, restarts."""

from __future__ import annotations

import base64
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.localkafka import create_topics
from streams.rules import demo_config
from tests.support.worker import WorkerProcess, consume_until, produce, wait_for, worker_env

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def payment(i: int, account: str, amount: str, *, seconds: float, cp: str | None = None,
            event_id: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "event_id": event_id or f"{account}-p{i}",
        "event_type": "payment",
        "occurred_at": (T0 + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z"),
        "account_id": account,
        "amount": amount,
        "currency": "CNY",
        "counterparty_id": cp or f"merchant-{i}",
        **extra,
    }


def messages(events: list[dict[str, Any]]) -> list[tuple[bytes, bytes]]:
    return [(e["account_id"].encode(), orjson.dumps(e)) for e in events]


@pytest.fixture
async def env(kafka_bootstrap: str, topic_prefix: str) -> dict[str, str]:
    environment = worker_env(kafka_bootstrap, topic_prefix)
    await create_topics(kafka_bootstrap, [
        environment["TXWATCH_PAYMENTS_TOPIC"], environment["TXWATCH_LENDING_TOPIC"],
        environment["TXWATCH_ALERT_TOPIC"], environment["TXWATCH_DEAD_LETTER_TOPIC"],
    ], partitions=2)
    return environment


def fixed_outlier_config(tmp_path: Path) -> tuple[Path, str]:
    """The development configuration with amount_outlier on a fixed threshold.

    Shipped, amount_outlier alerts on its top 0.1% of scores once a segment has
    500 scored payments; these few dozen payments would never fill that, so the
    test takes the explicit fixed-threshold option a deployment may choose.
    """
    config = demo_config()
    config["version"] = "worker-test-fixed-outlier"
    outlier = config["detectors"]["amount_outlier"]
    for key in ("budget", "segment_by", "min_scored"):
        outlier.pop(key, None)
    outlier["threshold"] = 3.5
    path = tmp_path / "detectors.json"
    path.write_bytes(orjson.dumps(config))
    return path, config["version"]


async def test_scenarios_produce_their_alerts_with_reasons_and_metrics(env, tmp_path: Path):
    bootstrap = env["TXWATCH_BROKER"]
    config_path, version = fixed_outlier_config(tmp_path)
    env = {**env, "TXWATCH_DETECTOR_CONFIG": str(config_path)}
    # an account with a steady history, then a payment 40x its usual amount
    history = [payment(i, "acct-spike", "120.00", seconds=3600 * i) for i in range(25)]
    spike = payment(99, "acct-spike", "4800.00", seconds=3600 * 26, event_id="spike-1")
    # an account sending 14 payments to different payees within 30 seconds
    burst = [payment(i, "acct-burst", "20.00", seconds=2 * i, cp=f"payee-{i}")
             for i in range(14)]
    quiet = [payment(i, f"acct-quiet-{i}", "35.00", seconds=i) for i in range(20)]
    with WorkerProcess(env, tmp_path / "worker.log") as worker:
        await produce(bootstrap, env["TXWATCH_PAYMENTS_TOPIC"],
                      messages([*history, spike, *burst, *quiet]))
        alerts = await consume_until(
            bootstrap, env["TXWATCH_ALERT_TOPIC"],
            lambda rs: {"amount_outlier", "velocity"} <= {r["detector"] for r in rs},
            timeout=120,
        )
        wait_for(lambda: worker.metric("txwatch_events_total", outcome="processed") >= 60,
                 60, "60 processed events in /metrics")
        by_detector = {a["detector"]: a for a in alerts}
        outlier = by_detector["amount_outlier"]
        assert outlier["account_id"] == "acct-spike"
        assert outlier["event_ids"] == ["spike-1"]
        assert "4,800.00" in outlier["reasons"][0] and "120.00" in outlier["reasons"][0]
        velocity = by_detector["velocity"]
        assert velocity["account_id"] == "acct-burst"
        assert any("1 minute" in r for r in velocity["reasons"])
        # one burst is one alert, not one per event over the limit
        assert sum(a["detector"] == "velocity" for a in alerts) == 1
        assert not [a for a in alerts if a["account_id"].startswith("acct-quiet")]
        for alert in alerts:
            assert alert["config_version"] == version
            assert alert["detected_at"] >= alert["occurred_at"]
        assert worker.metric("txwatch_alerts_total", detector="velocity") == 1
        assert worker.metric("txwatch_alerts_total", detector="amount_outlier") >= 1
        assert worker.metric("txwatch_events_total", event_type="payment",
                             outcome="processed") == 60
        assert worker.metric("txwatch_event_to_alert_seconds_count", detector="velocity") == 1


async def test_bad_messages_are_dead_lettered_with_reasons_and_counted(env, tmp_path: Path):
    bootstrap = env["TXWATCH_BROKER"]
    good = [payment(i, "acct-good", "10.00", seconds=60 * i) for i in range(5)]
    bad: list[tuple[bytes | None, bytes]] = [
        (b"x", b"this is not json"),
        (b"x", b"[1, 2, 3]"),
        (b"x", orjson.dumps({**good[0], "event_id": "neg", "amount": "-5.00"})),
        (b"x", orjson.dumps({**good[0], "event_id": "float", "amount": 5.5})),
        (b"x", orjson.dumps({**good[0], "event_id": "nan", "amount": "NaN"})),
        (b"x", orjson.dumps({**good[0], "event_id": "type", "event_type": "teleport"})),
        (b"x", orjson.dumps({k: v for k, v in good[0].items() if k != "account_id"})),
        (b"x", b"{" + b" " * 70_000 + b"}"),
        (b"x", b"\xff\xfe{}"),
        (b"x", orjson.dumps({**good[0], "event_id": "pii", "amount": "-1",
                             "device_id": "DEVICE-CLEAR-123"})),
    ]
    expected = {"not_json", "not_object", "amount", "unknown_type", "schema", "oversized",
                "encoding"}
    interleaved = [m for pair in zip(messages(good), bad[:5], strict=False) for m in pair]
    with WorkerProcess(env, tmp_path / "worker.log") as worker:
        await produce(bootstrap, env["TXWATCH_PAYMENTS_TOPIC"], interleaved + bad[5:])
        letters = await consume_until(bootstrap, env["TXWATCH_DEAD_LETTER_TOPIC"],
                                      lambda rs: len(rs) >= len(bad), timeout=120)
        wait_for(lambda: worker.metric("txwatch_dead_letters_total") == len(bad), 30,
                 "dead-letter metrics")
        assert len(letters) == len(bad)
        assert {d["reason"] for d in letters} == expected
        assert all(d["detail"] for d in letters)
        assert {d["source"]["topic"] for d in letters} == {env["TXWATCH_PAYMENTS_TOPIC"]}
        assert all(isinstance(d["source"]["offset"], int) for d in letters)
        payloads = [base64.b64decode(d["payload_b64"]) for d in letters]
        assert b"this is not json" in payloads
        assert not any(b"DEVICE-CLEAR-123" in p for p in payloads)
        wait_for(lambda: worker.metric("txwatch_events_total", outcome="processed") == 5, 30,
                 "the good events interleaved with bad ones")
        assert worker.metric("txwatch_dead_letters_total", reason="amount") == 4


async def test_restarted_worker_continues_counting_from_its_state(env, tmp_path: Path):
    """Six payments, SIGKILL, six more in the same minute: the limit of 10 is reached."""
    bootstrap = env["TXWATCH_BROKER"]
    first = [payment(i, "acct-r", "10.00", seconds=i, cp="shop") for i in range(6)]
    second = [payment(i, "acct-r", "10.00", seconds=i, cp="shop") for i in range(6, 12)]
    log = tmp_path / "worker.log"
    worker = WorkerProcess(env, log).start()
    try:
        await produce(bootstrap, env["TXWATCH_PAYMENTS_TOPIC"], messages(first))
        wait_for(lambda: worker.metric("txwatch_events_total", outcome="processed") == 6, 90,
                 "the first six payments processed")
        # offsets are committed periodically; a crash right after processing must
        # neither lose the counts nor double them on replay
        worker.stop(signal.SIGKILL)
        worker.start()
        await produce(bootstrap, env["TXWATCH_PAYMENTS_TOPIC"], messages(second))
        try:
            alerts = await consume_until(bootstrap, env["TXWATCH_ALERT_TOPIC"],
                                         lambda rs: any(r["detector"] == "velocity" for r in rs),
                                         timeout=120)
        except TimeoutError as exc:
            message = f"{exc}; worker log tail:\n{worker.log_tail(60)}"
            raise AssertionError(message) from exc
        velocity = [a for a in alerts if a["detector"] == "velocity"]
        assert len(velocity) == 1
        # the tenth payment reaches the limit only if the first six were remembered
        assert velocity[0]["event_ids"] == ["acct-r-p9"], velocity[0]
        assert velocity[0]["reasons"][0] == "10 transactions in 1 minute (limit 10 reached)"
    finally:
        worker.stop()


async def test_money_circling_through_accounts_on_different_partitions_is_a_cycle_alert(
        env, tmp_path: Path):
    """A ring of four transfers, processed out of ring order, raises one cycle alert."""
    bootstrap = env["TXWATCH_BROKER"]
    ring = ["ring-a", "ring-b", "ring-c", "ring-d"]
    hops = [(ring[i], ring[(i + 1) % 4]) for i in range(4)]
    order = [hops[0], hops[2], hops[1], hops[3]]  # not in ring order
    transfers = [{
        "event_id": f"ring-{n}", "event_type": "transfer",
        "occurred_at": (T0 + timedelta(minutes=10 * n)).isoformat().replace("+00:00", "Z"),
        "account_id": sender, "counterparty_id": receiver, "amount": "9000.00",
        "currency": "CNY",
    } for n, (sender, receiver) in enumerate(order)]
    with WorkerProcess(env, tmp_path / "worker.log") as worker:
        for transfer in transfers:  # one at a time, as money moves
            await produce(bootstrap, env["TXWATCH_PAYMENTS_TOPIC"], messages([transfer]))
            wait_for(lambda t=transfer: worker.metric(
                "txwatch_events_total", outcome="processed") >= transfers.index(t) + 1,
                60, "the transfer processed")
        alerts = await consume_until(
            bootstrap, env["TXWATCH_ALERT_TOPIC"],
            lambda rs: any(r["detector"] == "cycle" for r in rs), timeout=120)
    cycles = [a for a in alerts if a["detector"] == "cycle"]
    assert len({a["alert_id"] for a in cycles}) == 1
    assert "4 accounts" in cycles[0]["reasons"][0], cycles[0]["reasons"]
    assert cycles[0]["account_id"] in ring
