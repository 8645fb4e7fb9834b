"""Global models and alert budgets per input partition: durable, restored, never learnt twice."""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from detectors.registry import build_alerters
from streams.codec import Decoder
from streams.pipeline import Monitor, model_key
from streams.state import AccountState

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
NOW = T0 + timedelta(days=365)
#: Small models so that a few thousand events warm them up and spend their budgets.
CONFIG: dict[str, Any] = {
    "version": "test-models",
    "detectors": {
        "global_anomaly": {
            "params": {"n_trees": 5, "height": 6, "window_size": 50, "seed": 3, "warmup": 100},
            "budget": 0.02, "min_scored": 100, "severity": "low",
        },
        "amount_outlier": {
            "params": {"half_life": 10, "min_history": 3},
            "budget": 0.02, "min_scored": 100, "threshold": 1.0, "severity": "medium",
        },
    },
}


def stream(n: int, seed: int = 11) -> list[bytes]:
    rng = random.Random(seed)
    events = []
    for i in range(n):
        account = f"acct-{rng.randrange(60)}"
        cents = round(rng.lognormvariate(8.0, 1.5))
        events.append(orjson.dumps({
            "event_id": f"e{i}", "event_type": rng.choice(("payment", "transfer")),
            "occurred_at": (T0 + timedelta(seconds=37 * i)).isoformat(),
            "account_id": account, "amount": f"{cents // 100}.{cents % 100:02d}",
            "currency": "USD", "counterparty_id": f"cp-{rng.randrange(30)}",
        }))
    return events


def monitor() -> Monitor:
    return Monitor(Decoder(pii_key=b"test-key", max_message_bytes=65536),
                   build_alerters(CONFIG), CONFIG["version"], cooldown_seconds={})


def alerted(outcomes: list[Any]) -> list[tuple[int, str]]:
    """``(event index, detector)`` of each alert."""
    return [(int(a.event_ids[0][1:]), a.detector) for o in outcomes for a in o.alerts]


def run(m: Monitor, events: list[bytes], states: dict[bytes, AccountState],
        models: dict[bytes, Any] | None, start: int = 0, *, partition: int = 0,
        batch: int = 100, until: int | None = None) -> list[tuple[int, str]]:
    """``events[start:until]`` in batches, writing the models after each as the agent does."""
    found: list[tuple[int, str]] = []
    end = len(events) if until is None else until
    for offset in range(start, end):
        outcome = m.process(events[offset], states, topic="p", partition=partition,
                            offset=offset, now=NOW, models=models)
        found += alerted([outcome])
        if (offset + 1) % batch == 0 or offset + 1 == end:
            m.model_snapshots(models)
    return found


def test_a_restarted_monitor_resumes_the_partitions_models() -> None:
    events = stream(4_000)
    uninterrupted = run(monitor(), events, {}, {})
    assert {detector for _, detector in uninterrupted} == {"global_anomaly", "amount_outlier"}
    assert len(uninterrupted) > 20
    states: dict[bytes, AccountState] = {}
    models: dict[bytes, Any] = {}
    before = run(monitor(), events, states, models, until=1_700)
    # a new process: account states and model records are what the changelogs hold
    after = run(monitor(), events, states, models, start=1_700)
    assert before + after == uninterrupted


def test_without_the_model_record_a_restart_changes_the_alerts() -> None:
    # the check above can fail: a cold model after the restart decides otherwise
    events = stream(4_000)
    uninterrupted = run(monitor(), events, {}, {})
    states: dict[bytes, AccountState] = {}
    before = run(monitor(), events, states, {}, until=1_700)
    after = run(monitor(), events, states, {}, start=1_700)
    assert before + after != uninterrupted


def crash_between_models_and_accounts(
        make: Callable[[], Monitor], events: list[bytes], batch_start: int, batch_end: int,
) -> tuple[list[tuple[int, str]], dict[bytes, AccountState], dict[bytes, Any]]:
    """Run to ``batch_start``, crash after the next batch's model record is delivered
    and before its account records are, then replay from ``batch_start`` to the end.

    Returns the replay's alerts, the account states and the model records after it.
    """
    states: dict[bytes, AccountState] = {}
    models: dict[bytes, Any] = {}
    run(make(), events, states, models, until=batch_start)
    committed = copy.deepcopy(states)
    run(make(), events, states, models, start=batch_start, until=batch_end)
    replayed = run(make(), events, committed, models, start=batch_start)
    return replayed, committed, models


def detector_states(states: dict[bytes, AccountState]) -> dict[bytes, Any]:
    return {key: state.detectors for key, state in states.items()}


def test_a_crash_between_the_model_record_and_the_accounts_does_not_learn_twice() -> None:
    events = stream(3_000)
    uninterrupted = run(monitor(), events, {}, {})
    replayed, _, models = crash_between_models_and_accounts(monitor, events, 1_500, 1_600)
    # the models do not judge again what they learnt; from then on, every decision is the same
    assert not [a for a in replayed if a[0] < 1_600 and a[1] != "velocity"]
    assert [a for a in replayed if a[0] >= 1_600] == [a for a in uninterrupted if a[0] >= 1_600]
    assert orjson.loads(models[model_key("p", 0)])["offset"] == 2_999


def test_after_that_crash_the_accounts_states_equal_an_uninterrupted_run() -> None:
    # amount_outlier does not learn what it flagged; in the replay its budget has
    # already counted the event, so the decision comes from the model record
    events = stream(3_000)
    whole: dict[bytes, AccountState] = {}
    uninterrupted = run(monitor(), events, whole, {})
    flagged = [i for i, d in uninterrupted if d == "amount_outlier" and 1_600 <= i < 1_700]
    assert flagged, "the crashed batch should hold an amount_outlier alert"
    _, replayed, _ = crash_between_models_and_accounts(monitor, events, 1_600, 1_700)
    assert detector_states(replayed) == detector_states(whole)


def test_after_that_crash_learnt_population_limits_count_each_event_once() -> None:
    config = copy.deepcopy(CONFIG)
    config["detectors"]["spending_burst"] = {
        "params": {"min_history": 3, "min_population": 50}, "threshold": 5.0,
        "severity": "high"}

    def burst_monitor() -> Monitor:
        return Monitor(Decoder(pii_key=b"test-key", max_message_bytes=65536),
                       build_alerters(config), config["version"], cooldown_seconds={})

    events = stream(3_000)
    whole: dict[bytes, AccountState] = {}
    whole_models: dict[bytes, Any] = {}
    run(burst_monitor(), events, whole, whole_models)
    _, replayed, models = crash_between_models_and_accounts(burst_monitor, events, 1_600, 1_700)
    key = model_key("p", 0)
    population = orjson.loads(models[key])["alerters"]["spending_burst"]
    assert population == orjson.loads(whole_models[key])["alerters"]["spending_burst"]
    assert detector_states(replayed) == detector_states(whole)


def test_partitions_keep_separate_models() -> None:
    events = stream(3_000)
    alone = run(monitor(), events, {}, {}, partition=0)
    m = monitor()
    states: dict[bytes, AccountState] = {}
    models: dict[bytes, Any] = {}
    mixed: list[tuple[int, str]] = []
    other = stream(3_000, seed=12)
    for offset in range(3_000):
        for partition, source in ((0, events), (1, other)):
            outcome = m.process(source[offset], states if partition == 0 else {}, topic="p",
                                partition=partition, offset=offset, now=NOW, models=models)
            if partition == 0:
                mixed += alerted([outcome])
    assert mixed == alone
    written = {key for key, _, _ in m.model_snapshots(models)}
    assert written == {model_key("p", 0), model_key("p", 1)}


def test_a_recovered_record_replaces_the_live_models() -> None:
    events = stream(4_000)
    uninterrupted = run(monitor(), events, {}, {})
    # worker A runs the partition to 1,700 and loses it; worker B holds the record
    states: dict[bytes, AccountState] = {}
    models: dict[bytes, Any] = {}
    a = monitor()
    first = run(a, events, states, models, until=1_200)
    b_models = dict(models)
    middle = run(monitor(), events, states, b_models, start=1_200, until=1_700)
    # the partition comes back to A: recovery puts B's record (a new object) in A's store
    models[model_key("p", 0)] = bytes(b_models[model_key("p", 0)])
    last = run(a, events, states, models, start=1_700)
    assert first + middle + last == uninterrupted


def test_a_new_configuration_keeps_what_the_partition_learnt() -> None:
    events = stream(4_000)
    uninterrupted = run(monitor(), events, {}, {})
    m = monitor()
    states: dict[bytes, AccountState] = {}
    models: dict[bytes, Any] = {}
    before = run(m, events, states, models, until=1_700)
    m.reconfigure(build_alerters(CONFIG), "test-models")  # same parameters, new objects
    after = run(m, events, states, models, start=1_700)
    assert before + after == uninterrupted


def test_a_record_that_does_not_decode_starts_the_partition_afresh() -> None:
    events = stream(300)
    models: dict[bytes, Any] = {model_key("p", 0): b"not json"}
    run(monitor(), events, {}, models)
    assert orjson.loads(models[model_key("p", 0)])["offset"] == 299
