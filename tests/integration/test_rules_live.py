"""Rules on the real broker: a new version reaches every worker, a bad one is refused."""

from __future__ import annotations

import asyncio
import copy
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from detectors.registry import DEFAULT_CONFIG
from streams.localkafka import create_topics
from streams.rules import CONFIG_KEY, publish_config
from streams.settings import Settings
from tests.support.worker import WorkerProcess, consume_until, produce, wait_for, worker_env

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def tighter(version: str, minute_count: int = 5) -> dict[str, Any]:
    """The defaults with a one-minute velocity limit of ``minute_count`` payments."""
    config = copy.deepcopy(DEFAULT_CONFIG)
    config["version"] = version
    limits = config["detectors"]["velocity"]["params"]["limits"]["1m"]
    limits.update(count=minute_count, distinct_cp=minute_count)
    return config


def burst(account: str, count: int, start: float = 0.0) -> list[tuple[bytes, bytes]]:
    """``count`` payments of 20.00 to one merchant, 3 s apart."""
    return [(account.encode(), orjson.dumps({
        "event_id": f"{account}-p{i}", "event_type": "payment",
        "occurred_at": (T0 + timedelta(seconds=start + 3 * i)).isoformat().replace("+00:00", "Z"),
        "account_id": account, "amount": "20.00", "currency": "CNY",
        "counterparty_id": "merchant-1",
    })) for i in range(count)]


def velocity_of(account: str) -> Any:
    def done(records: list[dict[str, Any]]) -> bool:
        return any(r["detector"] == "velocity" and r["account_id"] == account for r in records)
    return done


def only(records: list[dict[str, Any]], account: str) -> list[dict[str, Any]]:
    return [r for r in records if r["detector"] == "velocity" and r["account_id"] == account]


@pytest.fixture
async def env(kafka_bootstrap: str, topic_prefix: str) -> dict[str, str]:
    environment = worker_env(kafka_bootstrap, topic_prefix,
                             TXWATCH_CONFIG_TOPIC=f"{topic_prefix}.config")
    await create_topics(kafka_bootstrap, [
        environment["TXWATCH_PAYMENTS_TOPIC"], environment["TXWATCH_LENDING_TOPIC"],
        environment["TXWATCH_ALERT_TOPIC"], environment["TXWATCH_DEAD_LETTER_TOPIC"],
    ], partitions=2)
    return environment


def has_partitions(worker: WorkerProcess, topic: str) -> bool:
    """Whether the worker reports consumer lag, i.e. owns partitions, of ``topic``."""
    return any(name == "txwatch_consumer_lag" and ("topic", topic) in labels
               for name, labels in worker.scrape())


def rules_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streams.cli", "rules", *args], env=env,
                          capture_output=True, text=True, timeout=60, check=False)


async def test_a_new_version_reaches_every_worker_without_restart_and_a_bad_one_is_refused(
        env: dict[str, str], tmp_path: Path) -> None:
    bootstrap, topic = env["TXWATCH_BROKER"], env["TXWATCH_CONFIG_TOPIC"]
    alert_topic, payments = env["TXWATCH_ALERT_TOPIC"], env["TXWATCH_PAYMENTS_TOPIC"]
    with WorkerProcess(env, tmp_path / "w1.log") as w1, \
            WorkerProcess(env, tmp_path / "w2.log") as w2:
        for worker in (w1, w2):
            wait_for(lambda w=worker: w.metric("txwatch_config_info",
                                               version=DEFAULT_CONFIG["version"]) == 1,
                     60, "the file's version in force")
            # both in the group: no rebalance moves partitions while the test runs
            wait_for(lambda w=worker: has_partitions(w, payments), 90,
                     "every worker assigned input partitions")
        # 6 payments in 15 s: below the default limit of 10 a minute, no alert
        await produce(bootstrap, payments, burst("acct-before", 6))
        wait_for(lambda: sum(w.metric("txwatch_events_total", outcome="processed")
                             for w in (w1, w2)) == 6, 60, "the 6 payments processed")

        published = await publish_config(Settings(broker=bootstrap), topic, tighter("live-2"))
        assert published is not None
        for worker in (w1, w2):  # every worker, without a restart
            wait_for(lambda w=worker: w.metric("txwatch_config_info", version="live-2") == 1,
                     60, "live-2 in force on every worker")
            assert worker.metric("txwatch_config_info", version=DEFAULT_CONFIG["version"]) == 0
        await produce(bootstrap, payments, burst("acct-after", 6))
        records = await consume_until(bootstrap, alert_topic, velocity_of("acct-after"))
        [alert] = only(records, "acct-after")
        assert alert["config_version"] == "live-2"
        assert alert["event_ids"] == ["acct-after-p4"]  # the 5th payment reaches the new limit
        assert not only(records, "acct-before")

        # an invalid version, written straight to the topic (publish refuses it)
        invalid = tighter("live-3")
        invalid["detectors"]["velocity"]["threshold"] = "high"
        await produce(bootstrap, topic, [(CONFIG_KEY, orjson.dumps(invalid))])
        for worker in (w1, w2):
            wait_for(lambda w=worker: w.metric("txwatch_config_rejected_total") == 1, 60,
                     "the invalid version rejected on every worker")
            assert worker.metric("txwatch_config_info", version="live-2") == 1
        await produce(bootstrap, payments, burst("acct-still", 6))
        records = await consume_until(bootstrap, alert_topic, velocity_of("acct-still"))
        assert [a["config_version"] for a in only(records, "acct-still")] == ["live-2"]
    logs = (tmp_path / "w1.log").read_text() + (tmp_path / "w2.log").read_text()
    assert "detectors.velocity.threshold must be a finite number, not 'high'" in logs
    assert "version live-2 stays in force" in logs


async def test_a_worker_started_later_judges_its_first_event_with_the_topic_version(
        env: dict[str, str], tmp_path: Path) -> None:
    bootstrap, topic = env["TXWATCH_BROKER"], env["TXWATCH_CONFIG_TOPIC"]
    await publish_config(Settings(broker=bootstrap), topic, tighter("live-9", minute_count=4))
    # events waiting before the worker starts: the topic's rules must already apply to them
    await produce(bootstrap, env["TXWATCH_PAYMENTS_TOPIC"], burst("acct-early", 5))
    with WorkerProcess(env, tmp_path / "worker.log"):
        records = await consume_until(bootstrap, env["TXWATCH_ALERT_TOPIC"],
                                      velocity_of("acct-early"))
    [alert] = only(records, "acct-early")
    assert (alert["config_version"], alert["event_ids"]) == ("live-9", ["acct-early-p3"])


async def test_the_rules_command_validates_publishes_and_shows(
        env: dict[str, str], tmp_path: Path) -> None:
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_bytes(orjson.dumps(tighter("cli-1")))
    broken = tighter("cli-2")
    broken["detectors"]["fan_out"]["params"]["min_distinct"] = 0
    bad.write_bytes(orjson.dumps(broken))

    refused = await asyncio.to_thread(rules_cli, env, "publish", str(bad))
    assert refused.returncode == 2
    assert "invalid configuration, not published" in refused.stderr
    assert "detectors.fan_out.params" in refused.stderr

    published = await asyncio.to_thread(rules_cli, env, "publish", str(good))
    assert published.returncode == 0, published.stderr
    assert "published version cli-1" in published.stdout
    again = await asyncio.to_thread(rules_cli, env, "publish", str(good))
    assert again.returncode == 0 and "nothing sent" in again.stdout

    conflicting = tighter("cli-1", minute_count=7)  # the same version, other content
    bad.write_bytes(orjson.dumps(conflicting))
    clash = await asyncio.to_thread(rules_cli, env, "publish", str(bad))
    assert clash.returncode == 2 and "give this configuration a new version" in clash.stderr

    shown = await asyncio.to_thread(rules_cli, env, "show")
    assert shown.returncode == 0, shown.stderr
    assert orjson.loads(shown.stdout) == tighter("cli-1")
    assert "version cli-1" in shown.stderr


async def test_a_calibrated_configuration_round_trips_through_rules_publish(
        env: dict[str, str], tmp_path: Path) -> None:
    from streams import simulate
    from streams.calibrate import calibrate

    history = tmp_path / "history.jsonl"
    simulate.write_jsonl(simulate.generate(5, accounts=300, events=3_000), history)
    fitted = calibrate(history, 0.5)
    out = tmp_path / "calibrated.json"
    out.write_bytes(orjson.dumps(fitted.config))

    published = await asyncio.to_thread(rules_cli, env, "publish", str(out))
    assert published.returncode == 0, published.stderr
    assert f"published version {fitted.config['version']}" in published.stdout
    shown = await asyncio.to_thread(rules_cli, env, "show")
    assert shown.returncode == 0, shown.stderr
    assert orjson.loads(shown.stdout) == fitted.config
