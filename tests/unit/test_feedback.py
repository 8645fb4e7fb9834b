"""Analysts' feedback learnt online, without Kafka: validation, ranking, precision, waiting."""

from __future__ import annotations

import argparse
import random
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from detectors.registry import DEFAULT_CONFIG, build_alerters
from streams.alerts import alert_id_for
from streams.codec import Decoder, compile_schema, load_schema
from streams.feedback import (
    PENDING_SECONDS,
    FeedbackMetrics,
    FeedbackRanker,
    FeedbackWatcher,
    parse_feedback,
    run_feedback,
)
from streams.pipeline import Monitor
from streams.settings import Settings
from streams.state import AccountState

T0 = datetime(2024, 3, 4, tzinfo=UTC)


def alert(n: int, detector: str, *, score: float, amount: str | None, hour: int,
          event_type: str = "payment", severity: str = "high") -> dict[str, Any]:
    return {
        "alert_id": alert_id_for(detector, f"e{n}"), "detector": detector, "severity": severity,
        "score": score, "reasons": ["..."], "account_id": f"a{n}", "event_ids": [f"e{n}"],
        "event_type": event_type, "amount": amount, "currency": "CNY" if amount else None,
        "occurred_at": (T0 + timedelta(hours=hour)).isoformat().replace("+00:00", "Z"),
        "detected_at": (T0 + timedelta(hours=hour)).isoformat().replace("+00:00", "Z"),
        "config_version": "v1",
    }


def disposition(record: dict[str, Any], true: bool) -> dict[str, str]:
    return {"alert_id": record["alert_id"],
            "disposition": "true_positive" if true else "false_positive"}


def tp_like(n: int, rng: random.Random) -> dict[str, Any]:
    """What analysts confirm here: large structuring deposits in the day."""
    return alert(n, "structuring", score=rng.uniform(1.0, 1.5),
                 amount=f"{rng.randint(45_000, 49_999)}.00", hour=rng.randint(2, 10),
                 event_type="top_up")


def fp_like(n: int, rng: random.Random) -> dict[str, Any]:
    """What analysts dismiss: small velocity bursts in the evening."""
    return alert(n, "velocity", score=rng.uniform(1.0, 1.2), amount=f"{rng.randint(5, 60)}.00",
                 hour=rng.randint(12, 16), severity="medium")


def test_the_ranker_learns_to_put_confirmed_kinds_of_alerts_first() -> None:
    rng = random.Random(11)
    ranker = FeedbackRanker(min_feedback=20)
    for n in range(300):
        record = tp_like(n, rng) if n % 2 else fp_like(n, rng)
        ranker.observe_alert(record)
        truth = record["detector"] == "structuring"
        if rng.random() < 0.1:  # analysts disagree now and then
            truth = not truth
        assert ranker.learn(disposition(record, truth)) == "learnt"

    held_out_tp = [ranker.probability_of(tp_like(1000 + n, rng)) for n in range(50)]
    held_out_fp = [ranker.probability_of(fp_like(2000 + n, rng)) for n in range(50)]
    pairs = [(p, q) for p in held_out_tp for q in held_out_fp]
    auc = sum(p > q for p, q in pairs) / len(pairs)  # type: ignore[operator]
    assert auc > 0.95
    assert min(held_out_tp) > 0.5 > max(held_out_fp)  # type: ignore[type-var, operator]
    precision = ranker.precision()
    assert 0.8 < precision["structuring"] <= 1.0
    assert 0.0 <= precision["velocity"] < 0.2


def test_the_same_dispositions_in_the_same_order_give_the_same_model() -> None:
    def train() -> float | None:
        rng = random.Random(5)
        ranker = FeedbackRanker(min_feedback=1)
        for n in range(60):
            record = tp_like(n, rng) if n % 3 else fp_like(n, rng)
            ranker.observe_alert(record)
            ranker.learn(disposition(record, n % 3 != 0))
        return ranker.probability_of(tp_like(999, random.Random(1)))

    assert train() == train()


def test_no_probability_before_enough_feedback() -> None:
    rng = random.Random(3)
    ranker = FeedbackRanker(min_feedback=3)
    records = [tp_like(n, rng) for n in range(3)]
    for record in records:
        ranker.observe_alert(record)
    for record in records[:2]:
        ranker.learn(disposition(record, True))
    assert ranker.probability_of(records[0]) is None
    ranker.learn(disposition(records[2], True))
    probability = ranker.probability_of(records[0])
    assert probability is not None and 0.5 < probability <= 1.0


def test_a_changed_decision_replaces_the_first_and_a_replay_changes_nothing() -> None:
    rng = random.Random(4)
    ranker = FeedbackRanker(min_feedback=1)
    first, second = tp_like(1, rng), tp_like(2, rng)
    ranker.observe_alert(first)
    ranker.observe_alert(second)
    assert ranker.learn(disposition(first, True)) == "learnt"
    assert ranker.learn(disposition(second, True)) == "learnt"
    assert ranker.learn(disposition(second, True)) == "repeated"
    assert ranker.counts() == {"structuring": (2, 0)}
    assert ranker.learn(disposition(second, False)) == "learnt"
    assert ranker.counts() == {"structuring": (1, 1)}
    assert ranker.precision() == {"structuring": 0.5}
    assert ranker.learnt == 3


def test_memory_is_bounded_and_forgotten_alerts_are_unmatched() -> None:
    rng = random.Random(6)
    ranker = FeedbackRanker(memory=3)
    records = [tp_like(n, rng) for n in range(5)]
    for record in records:
        ranker.observe_alert(record)
    assert ranker.learn(disposition(records[0], True)) == "unmatched"
    assert ranker.learn(disposition(records[4], True)) == "learnt"
    assert not ranker.observe_alert({"alert_id": "x", "detector": "velocity"})


def test_the_monitor_carries_the_probability_on_its_alerts() -> None:
    decoder = Decoder(pii_key=b"test-key", max_message_bytes=65536)
    ranker = FeedbackRanker(min_feedback=0)
    monitor = Monitor(decoder, build_alerters(DEFAULT_CONFIG), "v1", ranker=ranker)
    states: dict[bytes, AccountState] = {}
    alerts = []
    for i in range(12):
        raw = orjson.dumps({
            "event_id": f"b-{i}", "event_type": "payment", "account_id": "acct-b",
            "occurred_at": (T0 + timedelta(seconds=2 * i)).isoformat(), "amount": "20.00",
            "currency": "CNY", "counterparty_id": f"shop-{i}"})
        alerts += monitor.process(raw, states, topic="p", partition=0, offset=i).alerts
    assert alerts
    assert all(a.as_dict()["feedback_probability"] == 0.5 for a in alerts)  # nothing learnt
    # the alert the monitor raised is remembered: its disposition can be learnt at once
    assert ranker.learn({"alert_id": alerts[0].alert_id, "disposition": "true_positive"}) \
        == "learnt"


@pytest.mark.parametrize(("record", "error"), [
    (b"not json", "not JSON"),
    (b"[1]", "must be a JSON object"),
    (b'{"disposition": "true_positive"}', "must contain ['alert_id']"),
    (orjson.dumps({"alert_id": "a" * 32, "disposition": "maybe"}), "disposition must be one of"),
    (orjson.dumps({"alert_id": "A-1", "disposition": "true_positive"}), "alert_id must match"),
    (orjson.dumps({"alert_id": "a" * 32, "disposition": "true_positive",
                   "decided_at": "yesterday"}), "decided_at"),
    (None, "tombstone"),
])
def test_bad_feedback_is_refused_with_the_field_named(record: bytes | None, error: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_feedback(record)
    assert error in str(caught.value)


def test_the_schema_examples_are_valid_feedback() -> None:
    schema = load_schema("feedback")
    validate = compile_schema("feedback")
    for example in schema["examples"]:
        validate(example)
        assert parse_feedback(orjson.dumps(example)).alert_id == example["alert_id"]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def watcher() -> tuple[FeedbackWatcher, CollectorRegistry, FakeClock]:
    registry = CollectorRegistry()
    clock = FakeClock()
    runtime: Any = SimpleNamespace(settings=Settings())
    return (FeedbackWatcher(runtime, FeedbackRanker(min_feedback=1), FeedbackMetrics(registry),
                            topic="t.feedback", clock=clock), registry, clock)


def test_feedback_read_before_its_alert_waits_for_it() -> None:
    w, registry, clock = watcher()
    record = tp_like(1, random.Random(1))
    w.on_feedback([orjson.dumps(disposition(record, True))])
    assert list(w.pending) == [record["alert_id"]]
    clock.now += 1
    w.on_alerts([orjson.dumps(record)])
    w.retry_pending()
    assert not w.pending
    assert registry.get_sample_value("txwatch_feedback_total",
                                     {"disposition": "true_positive"}) == 1.0
    assert registry.get_sample_value("txwatch_feedback_precision",
                                     {"detector": "structuring"}) == 1.0


def test_feedback_for_an_unknown_alert_is_counted_unmatched_once_it_has_waited() -> None:
    w, registry, clock = watcher()
    w.on_feedback([orjson.dumps({"alert_id": "f" * 32, "disposition": "false_positive"})])
    w.retry_pending()
    assert registry.get_sample_value("txwatch_feedback_total", {"disposition": "unmatched"}) == 0
    clock.now += PENDING_SECONDS
    w.retry_pending()
    assert registry.get_sample_value("txwatch_feedback_total", {"disposition": "unmatched"}) == 1
    assert not w.pending


def test_bad_records_are_counted_and_never_raise() -> None:
    w, registry, _ = watcher()
    w.on_feedback([b"{", b'{"alert_id": 3}', None])
    w.on_alerts([b"not an alert", None, b"[]", b'{"alert_id": "x"}'])
    assert registry.get_sample_value("txwatch_feedback_rejected_total") == 3.0
    assert registry.get_sample_value("txwatch_feedback_total",
                                     {"disposition": "true_positive"}) == 0.0


def test_the_command_refuses_a_malformed_alert_id_without_a_broker(
        capsys: pytest.CaptureFixture[str]) -> None:
    args = argparse.Namespace(alert_id="not-an-id", disposition="true_positive", analyst=None)
    assert run_feedback(Settings(broker="127.0.0.1:9"), args) == 2
    assert "alert_id must match" in capsys.readouterr().err


def test_attach_feedback_gives_the_ranker_to_the_monitor_and_the_stages(tmp_path: Any) -> None:
    from streams.app import create_app
    from streams.feedback import attach_feedback

    settings = Settings(app_id=f"unit-{tmp_path.name}", data_dir=tmp_path, partitions=2,
                        dev_mode=True)
    runtime = create_app(settings)  # attaches the feedback watcher
    watcher = attach_feedback(runtime, registry=CollectorRegistry())
    assert attach_feedback(runtime) is watcher
    assert runtime.monitor.ranker is watcher.ranker
    for stage in runtime.stages.values():
        assert stage.ranker is watcher.ranker
    assert watcher.ranker.min_feedback == getattr(settings, "feedback_min_dispositions", 20)
