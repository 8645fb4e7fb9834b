"""The monitor without Kafka: decode, count, detect, alert, replay guard."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from detectors.base import Detector, Features, ThresholdAlerter
from detectors.registry import DEFAULT_CONFIG, build_alerters
from streams.codec import Decoder
from streams.pipeline import PROCESSING_ERROR, Monitor, gauge_totals
from streams.state import AccountState

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def raw_payment(i: int, account: str = "a1", amount: str = "20.00", seconds: float = 0,
                **extra: Any) -> bytes:
    return orjson.dumps({
        "event_id": f"{account}-{i}", "event_type": "payment",
        "occurred_at": (T0 + timedelta(seconds=seconds)).isoformat(),
        "account_id": account, "amount": amount, "currency": "CNY",
        "counterparty_id": "shop", **extra,
    })


def monitor(alerters: list[ThresholdAlerter] | None = None) -> Monitor:
    decoder = Decoder(pii_key=b"test-key", max_message_bytes=65536)
    return Monitor(decoder, alerters or build_alerters(DEFAULT_CONFIG), "test-1")


def test_a_burst_is_one_velocity_alert_and_its_replay_none():
    m = monitor()
    states: dict[bytes, AccountState] = {}
    alerts = []
    for i in range(14):
        out = m.process(raw_payment(i, seconds=2 * i), states, topic="p", partition=0, offset=i)
        alerts += out.alerts
    velocity = [a for a in alerts if a.detector == "velocity"]
    assert [a.event_ids for a in velocity] == [("a1-9",)]
    assert velocity[0].config_version == "test-1"
    # the same messages again (a crash before the offset commit): nothing new
    for i in range(14):
        out = m.process(raw_payment(i, seconds=2 * i), states, topic="p", partition=0, offset=i)
        assert out.duplicate and not out.alerts
    # the account's last 8 events re-sent by a producer under new offsets: still nothing
    for i in range(6, 14):
        out = m.process(raw_payment(i, seconds=2 * i), states, topic="p", partition=0,
                        offset=100 + i)
        assert not out.alerts
    assert states[b"a1"].velocity()["count_1m"] == 14
    assert states[b"a1"].monetary_events == 14


def test_alert_ids_are_deterministic_across_monitors():
    ids_a: list[str] = []
    ids_b: list[str] = []
    for ids in (ids_a, ids_b):
        m, states = monitor(), {}
        for i in range(14):
            ids += [a.alert_id for a in m.process(raw_payment(i, seconds=i), states).alerts]
    assert ids_a == ids_b
    assert len(ids_a) == 1


class Exploding(Detector):
    name = "exploding"

    def score_one(self, x: Features) -> float:
        raise ZeroDivisionError("boom")

    def explain_one(self, x: Features, score: float) -> list[str]:
        return []


def test_a_failing_detector_dead_letters_the_message_without_personal_data():
    m = monitor([ThresholdAlerter(Exploding(), threshold=1.0)])
    out = m.process(raw_payment(1, device_id="DEVICE-CLEAR"), {}, topic="p", partition=1,
                    offset=7)
    assert out.dead_letter is not None
    assert out.dead_letter.reason == PROCESSING_ERROR
    assert "ZeroDivisionError" in out.dead_letter.detail
    assert out.dead_letter.offset == 7
    assert b"DEVICE-CLEAR" not in out.dead_letter.payload
    # the next message is processed as usual
    ok = monitor().process(raw_payment(2), {})
    assert ok.event is not None


def test_precipitated_funds_are_exported_as_totals_without_account_labels():
    from prometheus_client import CollectorRegistry

    from streams.metrics import PrometheusSensor

    registry = CollectorRegistry()
    sensor = PrometheusSensor(registry=registry)
    m = Monitor(Decoder(pii_key=b"k", max_message_bytes=65536),
                build_alerters(DEFAULT_CONFIG), "test-1", sensor)
    states: dict[bytes, AccountState] = {}

    def top_up(i: int, account: str, amount: str) -> bytes:
        return orjson.dumps({
            "event_id": f"t{i}", "event_type": "top_up", "occurred_at": T0.isoformat(),
            "account_id": account, "amount": amount, "currency": "CNY"})

    m.process(top_up(1, "w1", "60000.00"), states)
    m.process(top_up(2, "w2", "100.00"), states)
    m.process(raw_payment(3, account="w1", amount="1000.00", seconds=60), states)
    assert registry.get_sample_value("txwatch_precipitated_funds_minor") == 5_910_000
    assert registry.get_sample_value("txwatch_precipitated_wallets") == 1
    # after a recovery the worker recounts them from the accounts it holds: the same sums
    totals = gauge_totals(m.alerters, states.values())
    assert totals == {"precipitated_funds": {"held_minor": 5_910_000, "above_limit": 1}}
    sensor.on_gauge_totals("precipitated_funds", {"held_minor": 0, "above_limit": 0})
    for detector, gauges in totals.items():
        sensor.on_gauge_totals(detector, gauges)
    assert registry.get_sample_value("txwatch_precipitated_funds_minor") == 5_910_000
    names = {s.name for metric in registry.collect() for s in metric.samples
             for label in s.labels.values() if label in {"w1", "w2"}}
    assert names == set()


def _velocity_alerts(cooldown: int) -> int:
    config = copy.deepcopy(DEFAULT_CONFIG)
    config["detectors"] = {"velocity": {**config["detectors"]["velocity"],
                                        "cooldown_seconds": cooldown}}
    m = monitor(build_alerters(config))
    states: dict[bytes, AccountState] = {}
    return sum(len(m.process(raw_payment(i, seconds=2 * i), states, topic="p", partition=0,
                             offset=i).alerts) for i in range(14))


def test_the_cooldown_comes_from_the_versioned_configuration():
    # 14 payments in 28 s: the 10th and every later one reach the 10-a-minute limit
    assert DEFAULT_CONFIG["detectors"]["velocity"]["cooldown_seconds"] == 60
    assert _velocity_alerts(60) == 1
    assert _velocity_alerts(0) == 5


@pytest.mark.parametrize(("name", "cooldown", "error"), [
    ("velocity", -1, "whole number of seconds"),
    ("velocity", 1.5, "whole number of seconds"),
    ("cycle", 60, "runs in the flow stage"),
])
def test_a_bad_cooldown_is_refused_with_its_key(name: str, cooldown: Any, error: str) -> None:
    config = copy.deepcopy(DEFAULT_CONFIG)
    config["detectors"] = {name: {**config["detectors"][name], "cooldown_seconds": cooldown}}
    with pytest.raises(ValueError, match=f"detectors.{name}.cooldown_seconds: .*{error}|"
                                         f"detectors.{name}.cooldown_seconds must be a {error}"):
        build_alerters(config)
