"""Rules that change without a restart, without Kafka: validate, apply, reject, keep."""

from __future__ import annotations

import argparse
import copy
import itertools
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import orjson
import pytest
from prometheus_client import CollectorRegistry

from detectors.base import Detector, Features
from detectors.registry import DEFAULT_CONFIG, DETECTORS
from streams.codec import Decoder
from streams.pipeline import Monitor
from streams.rules import (
    RulesMetrics,
    RulesWatcher,
    build_rules,
    keep_learnt_models,
    parse_config,
    run_rules_publish,
)
from streams.settings import Settings
from streams.stages import STAGES, build_stages
from streams.state import AccountState

DEFAULT_VERSION = DEFAULT_CONFIG["version"]

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def config(version: str, *, minute_count: int = 10, **changes: Any) -> dict[str, Any]:
    document = copy.deepcopy(DEFAULT_CONFIG)
    document["version"] = version
    document["detectors"]["velocity"]["params"]["limits"]["1m"]["count"] = minute_count
    for name, spec in changes.items():
        document["detectors"][name].update(spec)
    return document


def raw(document: Any) -> bytes:
    return orjson.dumps(document)


def payment(i: int, account: str, seconds: float) -> bytes:
    return orjson.dumps({
        "event_id": f"{account}-{i}", "event_type": "payment",
        "occurred_at": (T0 + timedelta(seconds=seconds)).isoformat(),
        "account_id": account, "amount": "20.00", "currency": "CNY",
        "counterparty_id": f"shop-{i}",
    })


#: Input offsets only grow, as in a partition: velocity's learnt limits are a global
#: model, and the monitor takes an offset it has learnt already for a replay.
_OFFSETS = itertools.count()


def burst(monitor: Monitor, states: dict[bytes, AccountState], account: str,
          count: int) -> list[Any]:
    alerts = []
    for i in range(count):
        alerts += monitor.process(payment(i, account, 2 * i), states, topic="p", partition=0,
                                  offset=next(_OFFSETS)).alerts
    return [a for a in alerts if a.detector == "velocity"]


class Harness:
    """A runtime as the watcher sees it: settings, monitor, stages."""

    def __init__(self, stages: dict[str, Any] | None = None) -> None:
        self.registry = CollectorRegistry()
        decoder = Decoder(pii_key=b"test-key", max_message_bytes=65536)
        rules = build_rules(DEFAULT_CONFIG)
        self.monitor = Monitor(decoder, rules.account, rules.version)
        self.runtime: Any = SimpleNamespace(settings=Settings(), monitor=self.monitor,
                                            stages=stages or {})
        self.watcher = RulesWatcher(self.runtime, RulesMetrics(self.registry), topic="t.config")

    def info(self, version: str) -> float | None:
        return self.registry.get_sample_value("txwatch_config_info", {"version": version})

    def rejected(self) -> float:
        return self.registry.get_sample_value("txwatch_config_rejected_total") or 0.0


def test_a_new_version_takes_effect_and_alerts_carry_it() -> None:
    h = Harness()
    states: dict[bytes, AccountState] = {}
    assert h.info(DEFAULT_VERSION) == 1.0
    assert [a.config_version for a in burst(h.monitor, states, "a1", 12)] == [DEFAULT_VERSION]

    assert h.watcher.apply(raw(config("v2", minute_count=5)), where="t.config@0")

    assert h.monitor.config_version == "v2"
    alerts = burst(h.monitor, states, "a2", 6)
    # the tighter limit: the 5th payment in a minute alerts, with the version that raised it
    assert [(a.event_ids, a.config_version) for a in alerts] == [(("a2-4",), "v2")]
    assert h.info("v2") == 1.0
    assert h.info(DEFAULT_VERSION) is None  # one version in force, one label set
    assert h.rejected() == 0.0


@pytest.mark.parametrize(("document", "error"), [
    (config("v3", velocity={"threshold": "high"}),
     "detectors.velocity.threshold must be a finite number, not 'high'"),
    (config("v3", velocity={"severity": "urgent"}), "detectors.velocity.severity must be one of"),
    ({"version": "v3", "detectors": {"velocty": {"threshold": 1.0}}},
     "detectors.velocty: unknown detector"),
    ({**config("v3"), "version": ""}, "version must be a non-empty string"),
    ([1, 2], "must be a JSON object, not list"),
])
def test_an_invalid_version_is_rejected_with_a_clear_error_and_the_previous_stays(
        document: Any, error: str) -> None:
    h = Harness()
    assert h.watcher.apply(raw(config("v2", minute_count=5)))
    before = list(h.monitor.alerters)

    assert not h.watcher.apply(raw(document), where="t.config@7")

    assert error in (h.watcher.last_error or "")
    assert h.monitor.config_version == "v2"
    assert h.monitor.alerters == before
    assert h.rejected() == 1.0
    assert h.info("v2") == 1.0
    states: dict[bytes, AccountState] = {}
    assert [a.config_version for a in burst(h.monitor, states, "a1", 6)] == ["v2"]


def test_not_json_and_tombstones_are_rejected_not_raised() -> None:
    h = Harness()
    assert not h.watcher.apply(b"{not json")
    assert not h.watcher.apply(None)
    assert h.rejected() == 2.0
    assert "tombstone" in (h.watcher.last_error or "")
    assert h.monitor.config_version == DEFAULT_VERSION


def test_the_version_in_force_is_ignored_when_replayed() -> None:
    h = Harness()
    assert h.watcher.apply(raw(config("v2")))
    alerters = list(h.monitor.alerters)
    assert not h.watcher.apply(raw(config("v2")))
    assert h.monitor.alerters == alerters
    assert (h.watcher.applied, h.watcher.ignored, h.rejected()) == (1, 1, 0.0)


def test_on_start_the_newest_valid_version_of_the_topic_wins() -> None:
    h = Harness()
    h.watcher.apply_history([(0, raw(config("v2"))), (1, raw(config("v3", minute_count=7)))])
    assert h.monitor.config_version == "v3"
    assert h.rejected() == 0.0

    # the newest is invalid: it is rejected (once) and the one before it is in force
    h = Harness()
    h.watcher.apply_history([
        (0, b"garbage"), (1, raw(config("v2"))),
        (2, raw(config("v3", velocity={"threshold": -1, "critical_threshold": -5}))),
    ])
    assert h.monitor.config_version == "v2"
    assert h.rejected() == 1.0

    # the newest is already in force (the file and the topic agree): nothing happens
    h = Harness()
    h.watcher.apply_history([(0, raw(config("v2"))), (1, raw(config(DEFAULT_VERSION)))])
    assert h.monitor.config_version == DEFAULT_VERSION
    assert h.watcher.applied == 0


def test_a_threshold_change_keeps_learnt_models_a_parameter_change_does_not() -> None:
    old = build_rules(DEFAULT_CONFIG).account
    by_name = {a.name: a for a in old}
    rethreshold = build_rules(config("v2", global_anomaly={"threshold": 0.95})).account
    kept = {a.name: a for a in keep_learnt_models(old, rethreshold)}
    assert kept["global_anomaly"].detector is by_name["global_anomaly"].detector
    assert kept["global_anomaly"].threshold == 0.95

    changed = config("v3")
    changed["detectors"]["global_anomaly"]["params"]["warmup"] = 10
    fresh = {a.name: a for a in keep_learnt_models(old, build_rules(changed).account)}
    assert fresh["global_anomaly"].detector is not by_name["global_anomaly"].detector
    assert fresh["velocity"].detector is by_name["velocity"].detector


class RingOfAccounts(Detector):
    """A stand-in for a derived-stage detector (money-flow stage)."""

    name: ClassVar[str] = "test_ring"
    stage: ClassVar[str] = "flow"

    def __init__(self, min_ring: int = 3) -> None:
        self.min_ring = min_ring

    def score_one(self, x: Features) -> float:
        return 0.0

    def explain_one(self, x: Features, score: float) -> list[str]:
        return []


def test_stage_detectors_go_to_their_stage_and_the_rest_to_the_monitor(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(DETECTORS, RingOfAccounts.name, RingOfAccounts)  # type: ignore[index]
    flow = SimpleNamespace(alerters=[], config_version=DEFAULT_VERSION, bounds=None)
    h = Harness(stages={"flow": flow})
    document = config("v2")
    document["detectors"]["test_ring"] = {"params": {"min_ring": 4}, "threshold": 1.0}

    assert h.watcher.apply(raw(document))

    assert [a.name for a in flow.alerters][-1] == "test_ring"
    assert {type(a.detector).stage for a in flow.alerters} == {"flow"}
    assert flow.alerters[-1].detector.min_ring == 4
    assert flow.config_version == "v2"
    assert "test_ring" not in [a.name for a in h.monitor.alerters]
    assert "velocity" in [a.name for a in h.monitor.alerters]


def running_stages(document: dict[str, Any]) -> dict[str, Any]:
    """The derived stages a worker started with ``document`` runs."""
    rules = build_rules(document, STAGES)
    return build_stages(rules.stages, rules.version, rules.bounds)


def test_the_flow_sketch_is_built_with_the_configured_bounds() -> None:
    document = config("v2")
    document["stages"]["flow"]["hub_degree"] = 12
    del document["stages"]["flow"]["max_vias"]  # a bound left out keeps its default
    flow = running_stages(document)["flow"]
    assert flow.bounds.hub_degree == 12
    assert flow.bounds.max_vias == DEFAULT_CONFIG["stages"]["flow"]["max_vias"] == 8
    assert flow.new_sketch().params == flow.bounds
    # the ring length and window follow cycle's parameters, not the section
    assert flow.bounds.max_ring == 10 and flow.bounds.window_seconds == 28 * 86_400


@pytest.mark.parametrize(("bounds", "error"), [
    ({"hub_degree": 0}, "stages.flow.hub_degree must be an int >= 1, not 0"),
    ({"max_ring": 6}, "stages.flow.max_ring is not set here: it follows "
                      "detectors.cycle.params.max_ring"),
    ({"colour": 1}, "stages.flow: unknown bound 'colour'"),
])
def test_a_bad_flow_bound_is_refused_with_its_key(bounds: dict[str, Any], error: str) -> None:
    document = config("v2")
    document["stages"]["flow"] = bounds
    with pytest.raises(ValueError, match=re.escape(error)):
        build_rules(document)
    document["stages"] = {"identity": {}}
    with pytest.raises(ValueError, match=re.escape("stages: unknown key 'identity'")):
        build_rules(document)


def test_a_version_that_would_change_the_flow_sketch_is_refused_and_says_which_bound() -> None:
    stages = running_stages(copy.deepcopy(DEFAULT_CONFIG))
    h = Harness(stages=stages)
    busier = config("v2")
    busier["stages"]["flow"]["hub_degree"] = 12
    assert not h.watcher.apply(raw(busier), where="t.config@1")
    assert h.rejected() == 1.0
    assert "flow stage's sketch bounds (hub_degree 8 -> 12)" in (h.watcher.last_error or "")
    shorter = config("v3", cycle={"params": {**DEFAULT_CONFIG["detectors"]["cycle"]["params"],
                                             "max_ring": 8}})
    assert not h.watcher.apply(raw(shorter), where="t.config@2")
    assert "max_ring 10 -> 8" in (h.watcher.last_error or "")
    assert h.monitor.config_version == DEFAULT_VERSION  # neither was half applied
    # thresholds, severities and the bounds as they are: in force
    assert h.watcher.apply(raw(config("v4", cycle={"threshold": 2.0})), where="t.config@3")
    assert stages["flow"].config_version == "v4"
    assert [a.threshold for a in stages["flow"].alerters if a.name == "cycle"] == [2.0]


def test_parse_config_names_the_problem() -> None:
    with pytest.raises(ValueError, match="is not JSON"):
        parse_config(b"{", "rules.json")
    assert parse_config(b'{"version": "x"}') == {"version": "x"}


def test_publish_refuses_an_invalid_file_before_touching_the_broker(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "rules.json"
    path.write_bytes(raw(config("v9", velocity={"threshold": "high"})))
    # an unreachable broker: validation must fail first, without trying to connect
    settings = Settings(broker="127.0.0.1:9")
    assert run_rules_publish(settings, argparse.Namespace(file=path)) == 2
    err = capsys.readouterr().err
    assert "invalid configuration, not published" in err
    assert "detectors.velocity.threshold must be a finite number" in err

    assert run_rules_publish(settings, argparse.Namespace(file=tmp_path / "missing.json")) == 2
    assert "cannot read detector configuration" in capsys.readouterr().err


def test_listeners_hear_of_each_new_version_and_cannot_break_it() -> None:
    h = Harness()
    heard: list[tuple[str, str]] = []
    h.watcher.listeners.append(lambda old, new: heard.append((old, new)))
    h.watcher.listeners.append(lambda old, new: 1 / 0)  # type: ignore[func-returns-value]
    assert h.watcher.apply(raw(config("v2")))
    assert heard == [(DEFAULT_VERSION, "v2")]
    assert h.monitor.config_version == "v2"


def test_attach_rules_wires_a_worker_once(tmp_path: Path) -> None:
    from streams.app import create_app
    from streams.rules import attach_rules

    settings = Settings(app_id=f"unit-{tmp_path.name}", data_dir=tmp_path, partitions=2,
                        dev_mode=True)
    runtime = create_app(settings)
    watcher = attach_rules(runtime, registry=CollectorRegistry())
    assert attach_rules(runtime) is watcher
    assert watcher.topic == getattr(settings, "config_topic", "txwatch.config")
    assert watcher.version == runtime.monitor.config_version
    assert not watcher.caught_up


def test_preload_without_a_broker_starts_with_the_file_version(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from streams.app import create_app
    from streams.rules import attach_rules, preload_rules

    settings = Settings(app_id=f"unit-{tmp_path.name}", data_dir=tmp_path, partitions=2,
                        dev_mode=True,
                        broker="127.0.0.1:9")
    runtime = create_app(settings)
    attach_rules(runtime, registry=CollectorRegistry())
    watcher = preload_rules(runtime, timeout=2.0)
    assert not watcher.caught_up
    assert runtime.monitor.config_version == DEFAULT_CONFIG["version"]
    assert "could not read" in caplog.text
    assert f"starting with version {DEFAULT_VERSION}" in caplog.text
