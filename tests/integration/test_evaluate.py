"""``txwatch evaluate`` on the real broker: a real worker, scored, agreeing with the backtest."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from detectors.registry import STAGE_DETECTORS
from streams.evaluation import backtest, evaluate_live, expected_detector, load_label_csv
from streams.settings import Settings
from streams.simulate import generate, write_jsonl

pytestmark = pytest.mark.integration

EVENTS, SEED, ACCOUNTS = 6000, 3, 500


async def topics_named(bootstrap: str, fragment: str) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return [t for t in await admin.list_topics() if fragment in t]
    finally:
        await admin.close()


async def test_evaluate_scores_the_scenarios_through_a_real_worker(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    progress: list[str] = []
    settings = Settings(broker=kafka_bootstrap, partitions=2)

    result = await evaluate_live(settings, events=EVENTS, seed=SEED, accounts=ACCOUNTS,
                                 work_dir=tmp_path / "run", progress=progress.append)

    assert result.mode == "evaluate" and result.events == EVENTS
    rows = {row.scenario: row for row in result.scenarios}
    for scenario in ("velocity_burst", "structuring", "fan_out", "rapid_pass_through"):
        assert rows[scenario].recall == 1.0, scenario
        assert rows[scenario].median_latency_seconds is not None
    detectors = {row.detector: row for row in result.detectors}
    assert detectors["velocity"].alerts >= rows["velocity_burst"].incidents
    assert detectors["velocity"].median_latency_seconds is not None
    assert detectors["velocity"].median_latency_seconds < 60
    table = result.table()
    assert table.startswith(f"evaluate: {EVENTS:,} events") and "median latency" in table
    assert any("worker processed" in line for line in progress)
    # it waited for the derived stages' topics too, and every stage read its records
    assert any("stage lag" in line and "flow 0" in line for line in progress)
    for stage_detectors in (("cycle",), ("identity_reuse", "loan_stacking"),
                            ("pledge_churn", "suspicious_pledging")):
        assert sum(detectors[d].alerts for d in stage_detectors) > 0, stage_detectors
    # its topics are gone afterwards
    prefix = next(line for line in progress if "starting a worker on topics" in line)
    prefix = prefix.split("topics ", 1)[1].split(".*", 1)[0]
    assert await topics_named(kafka_bootstrap, prefix) == []

    # the live worker and the offline backtest run the same detector code: the same
    # recall and the same alerts from every per-account detector. Not borrow_and_vanish:
    # its events span the lending and payments topics, between which Kafka keeps no
    # order, and a worker catching up on a backlog reads the small lending topic first.
    # Nor the derived stages': the backtest runs them in line, while live stage 1 reads
    # the flow sketches (an edge's sender_origins) ahead of a flow stage still behind,
    # and records of different partitions interleave in another order.
    history = tmp_path / "events.jsonl"
    write_jsonl(generate(SEED, events=EVENTS, accounts=ACCOUNTS), history)
    offline = backtest(history, settings=Settings(dev_mode=True))
    single_topic = {r.scenario for r in result.scenarios
                    if expected_detector(r.scenario) not in STAGE_DETECTORS} - {"borrow_and_vanish"}
    assert {r.scenario: r.recall for r in offline.scenarios if r.scenario in single_topic} == \
        {r.scenario: r.recall for r in result.scenarios if r.scenario in single_topic}
    keyed = {"velocity", "structuring", "fan_out", "rapid_pass_through", "account_takeover"}
    assert {d.detector: d.alerts for d in offline.detectors if d.detector in keyed} == \
        {d.detector: d.alerts for d in result.detectors if d.detector in keyed}


async def test_evaluate_replays_an_imported_history_and_scores_a_labels_csv(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    from streams.importer import RowConverter, import_csv

    hops = (0, 5, 2, 7, 4, 1, 6, 3)  # a ring of eight, in no ring order
    source = tmp_path / "ring.csv"
    source.write_text("ts,src,dst,amount,type,label,pattern,group\n" + "".join(
        f"{1200 * n},ring-{a},ring-{(a + 1) % 8},9000.00,TRANSFER,1,cycle,r1\n"
        for n, a in enumerate(hops)) + "9600,quiet-1,quiet-2,15.00,TRANSFER,1,fan_in,\n")
    events, labels = tmp_path / "ring.jsonl", tmp_path / "ring-labels.csv"
    import_csv(source, events, labels_out=labels, converter=RowConverter(currency="CNY"))
    settings = Settings(broker=kafka_bootstrap, partitions=2)

    result = await evaluate_live(settings, history=events, group_labels=load_label_csv(labels),
                                 work_dir=tmp_path / "run")

    assert result.events == 9 and result.labelled is not None
    rows = {row.pattern: row for row in result.labelled.patterns}
    assert (rows["cycle"].groups, rows["cycle"].caught) == (1, 1)
    assert (rows["fan_in"].groups, rows["fan_in"].caught) == (1, 0)
    assert "group recall" in result.table()
