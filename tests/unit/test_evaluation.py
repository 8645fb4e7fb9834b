"""Scoring and the offline backtest, without Kafka."""

from __future__ import annotations

import argparse
import copy
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from detectors.registry import DEFAULT_CONFIG
from streams.evaluation import (
    GroupLabel,
    LabelledEvent,
    ScoredAlert,
    backtest,
    is_label_csv,
    load_label_csv,
    load_labels,
    render_labelled,
    run_backtest,
    score,
    score_labelled,
)
from streams.settings import Settings
from streams.simulate import generate, write_jsonl

T0 = datetime(2024, 3, 4, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def label(event_id: str, scenario: str, account: str, seconds: float,
          incident: str | None = None) -> LabelledEvent:
    return LabelledEvent(event_id, scenario, account, at(seconds), incident)


def alert(alert_id: str, detector: str, event_id: str, seconds: float,
          latency: float | None = None) -> ScoredAlert:
    return ScoredAlert(alert_id, detector, (event_id,), at(seconds), latency)


LABELS = [
    # velocity_burst on a1 (one incident of 3 events) and on a2; a3's is missed
    label("v1", "velocity_burst", "a1", 0), label("v2", "velocity_burst", "a1", 5),
    label("v3", "velocity_burst", "a1", 20),
    label("w1", "velocity_burst", "a2", 100), label("w2", "velocity_burst", "a2", 130),
    label("x1", "velocity_burst", "a3", 500),
    # structuring on b1, caught
    label("s1", "structuring", "b1", 1000), label("s2", "structuring", "b1", 4600),
]
ALERTS = [
    alert("A1", "velocity", "v3", 20, latency=0.5),
    alert("A1", "velocity", "v3", 20, latency=0.9),   # the same alert again: counted once
    alert("A2", "velocity", "w2", 130, latency=1.5),
    alert("A3", "velocity", "bg-1", 900),             # background: a false positive
    alert("A4", "structuring", "v1", 0),              # labelled, but another scenario's event
    alert("A5", "structuring", "s2", 4600, latency=2.0),
    alert("A6", "global_anomaly", "bg-2", 50),
]


def test_recall_precision_and_delays_on_a_hand_made_set() -> None:
    result = score(LABELS, ALERTS, detectors=["velocity", "structuring", "global_anomaly",
                                              "fan_out"], mode="evaluate")
    scenarios = {row.scenario: row for row in result.scenarios}
    velocity = scenarios["velocity_burst"]
    assert (velocity.incidents, velocity.detected, velocity.labelled_events) == (3, 2, 6)
    assert velocity.recall == pytest.approx(2 / 3)
    assert velocity.median_delay_seconds == pytest.approx(25.0)  # delays 20 and 30
    assert velocity.median_latency_seconds == pytest.approx(1.0)  # 0.5 and 1.5
    structuring = scenarios["structuring"]
    assert (structuring.incidents, structuring.detected, structuring.recall) == (1, 1, 1.0)
    assert structuring.median_delay_seconds == pytest.approx(3600.0)

    detectors = {row.detector: row for row in result.detectors}
    assert (detectors["velocity"].alerts, detectors["velocity"].true_positives) == (3, 2)
    assert detectors["velocity"].precision == pytest.approx(2 / 3)
    assert detectors["velocity"].median_latency_seconds == pytest.approx(0.5 + 0.5)
    assert (detectors["structuring"].alerts, detectors["structuring"].true_positives,
            detectors["structuring"].other_labelled) == (2, 1, 1)
    assert detectors["structuring"].precision == 0.5
    assert detectors["global_anomaly"].precision is None  # no scenario expects it
    assert not detectors["global_anomaly"].expected
    assert detectors["fan_out"].alerts == 0 and detectors["fan_out"].precision is None
    assert result.alerts == 6

    table = result.table()
    assert "velocity_burst" in table and "66.7%" in table and "median latency" in table
    assert orjson.loads(result.dumps())["scenarios"][0]["scenario"] == "structuring"


def test_an_incident_id_in_the_labels_separates_incidents_on_one_account() -> None:
    labels = [label("f1", "fund_segregation", "escrow-001", 0, incident="fs-1"),
              label("f2", "fund_segregation", "escrow-001", 3600, incident="fs-2")]
    alerts = [alert("F1", "fund_segregation", "f2", 3600)]
    merged = score([label(e.event_id, e.scenario, e.account_id, 0) for e in labels], alerts)
    assert (merged.scenarios[0].incidents, merged.scenarios[0].recall) == (1, 1.0)
    separate = score(labels, alerts)
    assert (separate.scenarios[0].incidents, separate.scenarios[0].recall) == (2, 0.5)
    assert separate.scenarios[0].median_delay_seconds == 0.0


def test_labels_outside_the_scenarios_name_a_detector_or_accept_any() -> None:
    labels = [label("e1", "fraud", "a1", 0), label("e2", "velocity", "a2", 0)]
    alerts = [alert("X1", "amount_outlier", "e1", 0), alert("X2", "amount_outlier", "e2", 0)]
    rows = {row.scenario: row for row in score(labels, alerts).scenarios}
    assert rows["fraud"].recall == 1.0  # any detector counts for a team's own label
    assert rows["velocity"].recall == 0.0  # a detector's name: only that detector counts


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("history")
    events, labels = folder / "events.jsonl", folder / "labels.jsonl"
    write_jsonl(generate(3, events=6000, accounts=500), events, labels_path=labels)
    return events, labels


def test_backtest_scores_the_simulator_scenarios(history: tuple[Path, Path]) -> None:
    events, labels_path = history
    result = backtest(events, settings=Settings(dev_mode=True))
    assert result.events == 6000 and result.dead_letters == 0
    assert result.config_version == DEFAULT_CONFIG["version"]
    rows = {row.scenario: row for row in result.scenarios}
    assert set(rows) >= {"velocity_burst", "structuring", "rapid_pass_through", "fan_out"}
    for scenario in ("velocity_burst", "structuring", "fan_out", "blacklisted_identity"):
        assert rows[scenario].recall == 1.0, scenario
    assert rows["velocity_burst"].median_delay_seconds is not None
    assert 0 < rows["velocity_burst"].median_delay_seconds < 60
    # the labels file gives the same ground truth as the events' label field
    from_file = backtest(events, settings=Settings(dev_mode=True), labels=load_labels(labels_path))
    assert [r.recall for r in from_file.scenarios] == [r.recall for r in result.scenarios]
    assert [d.alerts for d in from_file.detectors] == [d.alerts for d in result.detectors]


def test_backtest_with_a_stricter_configuration_raises_fewer_alerts(
        history: tuple[Path, Path]) -> None:
    events, _ = history
    strict = copy.deepcopy(DEFAULT_CONFIG)
    strict["version"] = "strict-1"
    strict["detectors"]["velocity"]["params"]["limits"]["1m"].update(count=50, distinct_cp=50)
    default = backtest(events, settings=Settings(dev_mode=True))
    tuned = backtest(events, strict, settings=Settings(dev_mode=True))
    assert tuned.config_version == "strict-1"
    velocity = {d.detector: d.alerts for d in tuned.detectors}["velocity"]
    assert velocity < {d.detector: d.alerts for d in default.detectors}["velocity"]
    # most bursts of 15 to 20 payments no longer reach a one-minute limit of 50
    recall = {r.scenario: r.recall for r in tuned.scenarios}["velocity_burst"]
    assert recall is not None and recall < 1.0


def test_backtest_command_prints_the_table_and_refuses_bad_input(
        history: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events, _ = history

    def args(**extra: object) -> argparse.Namespace:
        return argparse.Namespace(**{"file": events, "config": None, "labels": None,
                                     "json": False, **extra})

    assert run_backtest(Settings(dev_mode=True), args()) == 0
    out = capsys.readouterr().out
    assert out.startswith("backtest: 6,000 events")
    assert "velocity_burst" in out and "precision" in out

    assert run_backtest(Settings(dev_mode=True), args(json=True)) == 0
    assert orjson.loads(capsys.readouterr().out)["events"] == 6000

    bad = tmp_path / "bad.json"
    bad.write_bytes(orjson.dumps({"version": "x", "detectors": {"velocity": {}}}))
    assert run_backtest(Settings(dev_mode=True), args(config=bad)) == 2
    assert "detectors.velocity.threshold is required" in capsys.readouterr().err
    assert run_backtest(Settings(dev_mode=True), args(file=tmp_path / "nope.jsonl")) == 2


def test_backtest_runs_the_derived_stages_a_ring_of_eight_is_a_cycle(tmp_path: Path) -> None:
    """Money circling through eight accounts, in no ring order, is caught offline."""
    ring = [f"ring-{n}" for n in range(8)]
    hops = [(ring[n], ring[(n + 1) % 8]) for n in range(8)]
    order = [hops[n] for n in (0, 5, 2, 7, 4, 1, 6, 3)]
    t0 = datetime(2024, 3, 4, 9, tzinfo=UTC)
    lines = [{
        "event_id": f"hop-{n}", "event_type": "transfer", "account_id": sender,
        "occurred_at": (t0 + timedelta(minutes=20 * n)).isoformat().replace("+00:00", "Z"),
        "counterparty_id": receiver, "amount": "9000.00", "currency": "CNY",
        "label": "cycle", "incident": "ring-1",
    } for n, (sender, receiver) in enumerate(order)]
    path = tmp_path / "ring.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(line) for line in lines) + b"\n")

    result = backtest(path, settings=Settings(dev_mode=True))
    rows = {row.scenario: row for row in result.scenarios}
    assert rows["cycle"].incidents == 1 and rows["cycle"].recall == 1.0
    cycle = {row.detector: row for row in result.detectors}["cycle"]
    assert cycle.alerts == 1 and cycle.precision == 1.0
    assert any("derived-stage records" in note for note in result.notes)
    # the same ring with the flow stage switched off is missed
    config = copy.deepcopy(DEFAULT_CONFIG)
    for name in ("cycle", "scatter_gather", "gather_scatter", "fan_in"):
        del config["detectors"][name]
    off = backtest(path, config, settings=Settings(dev_mode=True))
    assert {row.scenario: row for row in off.scenarios}["cycle"].recall == 0.0
    # the sketches are built with the configuration's bounds: without relays
    # (stages.flow.relay_hops 0) a ring completed out of order is not found
    no_relays = copy.deepcopy(DEFAULT_CONFIG)
    no_relays["stages"]["flow"]["relay_hops"] = 0
    missed = backtest(path, no_relays, settings=Settings(dev_mode=True))
    assert {row.scenario: row for row in missed.scenarios}["cycle"].recall == 0.0


# -- a labels CSV: any detector, per pattern and group ---------------------------------------


def positioned(alert_id: str, detector: str, event_ids: tuple[str, ...],
               position: int | None) -> ScoredAlert:
    moment = at(60 * int(event_ids[0][1:])) if position is None else at(60 * position)
    return ScoredAlert(alert_id, detector, event_ids, moment, position=position)


GROUP_LABELS = [
    *(GroupLabel(f"e{n}", "ring", "r1") for n in (0, 1, 2, 3)),
    *(GroupLabel(f"e{n}", "ring", "r2") for n in (10, 11)),
    *(GroupLabel(f"e{n}", "burst", "b1") for n in range(20, 25)),
    *(GroupLabel(f"e{n}", "burst", "b2") for n in range(30, 35)),
    GroupLabel("gone", "lost", "l1"),  # not in the history
]
#: event id -> (position in the history, event time): event eN is the Nth, N minutes in
HISTORY = {label.event_id: (int(label.event_id[1:]), at(60 * int(label.event_id[1:])))
           for label in GROUP_LABELS if label.event_id != "gone"}
GROUP_ALERTS = [
    positioned("A1", "cycle", ("e2", "e0"), 2),          # r1 at its third event: early
    positioned("A1", "cycle", ("e2", "e0"), 2),          # again: counted once
    positioned("A2", "cycle", ("e99",), 99),
    positioned("A3", "velocity", ("e21",), 21),          # b1 at its second event: early
    positioned("A4", "velocity", ("e34",), 34),          # b2 at its fifth event: late
    positioned("A5", "velocity", ("e500",), 500),
    positioned("A6", "global_anomaly", ("e34", "e33"), 34),
    positioned("A7", "global_anomaly", ("e600",), 600),
    positioned("A8", "global_anomaly", ("e601",), 601),
]


def test_a_labels_csv_is_scored_per_pattern_group_and_detector() -> None:
    report = score_labelled(GROUP_LABELS, GROUP_ALERTS, events=2000, history=HISTORY,
                            detectors=["cycle", "velocity", "global_anomaly", "fan_out"])
    assert (report.alerts, report.on_labelled, report.labelled_events) == (8, 4, 17)
    assert report.alerts_per_1000 == pytest.approx(4.0)
    assert report.precision == pytest.approx(0.5)
    assert report.missing_events == 1

    rows = {row.pattern: row for row in report.patterns}
    ring, burst, lost = rows["ring"], rows["burst"], rows["lost"]
    assert (ring.groups, ring.caught, ring.caught_first_3) == (2, 1, 1)
    assert (ring.group_recall, ring.first_3_share) == (0.5, 0.5)
    assert (ring.labelled_events, ring.named_events) == (6, 2)
    assert ring.event_recall == pytest.approx(1 / 3)
    assert ring.caught_by == {"cycle": 1}
    assert (burst.groups, burst.caught, burst.caught_first_3) == (2, 2, 1)
    assert (burst.group_recall, burst.first_3_share) == (1.0, 0.5)
    assert burst.event_recall == pytest.approx(0.3)  # e21, e33, e34 of ten
    assert burst.caught_by == {"velocity": 2, "global_anomaly": 1}
    assert (lost.groups, lost.caught, lost.first_3_share) == (1, 0, 0.0)

    detectors = {row.detector: row for row in report.detectors}
    assert (detectors["cycle"].alerts, detectors["cycle"].on_labelled) == (2, 1)
    assert detectors["cycle"].alerts_per_1000 == pytest.approx(1.0)
    assert detectors["cycle"].precision == pytest.approx(0.5)
    assert detectors["velocity"].precision == pytest.approx(2 / 3)
    assert detectors["velocity"].alerts_per_1000 == pytest.approx(1.5)
    assert detectors["global_anomaly"].precision == pytest.approx(1 / 3)
    assert (detectors["fan_out"].alerts, detectors["fan_out"].precision) == (0, None)

    table = render_labelled(report)
    assert "group recall" in table and "first 3" in table and "all detectors" in table
    assert "1 labelled events are not in the history" in table


def test_early_is_by_position_when_known_else_by_event_time() -> None:
    labels = [GroupLabel(f"e{n}", "burst", "b") for n in range(5)]
    history = {f"e{n}": (n, at(0)) for n in range(5)}  # one timestamp for all: coarse clock
    late = ScoredAlert("L", "velocity", ("e4",), at(0), position=4)
    same_time = ScoredAlert("L", "velocity", ("e4",), at(0))
    assert score_labelled(labels, [late], events=5, history=history).patterns[0] \
        .first_3_share == 0.0
    assert score_labelled(labels, [same_time], events=5, history=history).patterns[0] \
        .first_3_share == 1.0


def test_a_labels_csv_keeps_label_1_rows_and_needs_its_columns(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_text("event_id,label,pattern,group\ne1,1,ring,r1\ne2,0,,\ne3,1,,\n")
    assert is_label_csv(path)
    assert load_label_csv(path) == [GroupLabel("e1", "ring", "r1"),
                                    GroupLabel("e3", "labelled", "labelled:e3")]
    bad = tmp_path / "bad.csv"
    bad.write_text("event_id,label\ne1,1\n")
    with pytest.raises(ValueError, match="missing pattern, group"):
        load_label_csv(bad)
    jsonl = tmp_path / "labels.jsonl"
    jsonl.write_bytes(b'{"event_id": "e1", "scenario": "cycle"}\n')
    assert not is_label_csv(jsonl)


RING_CSV = "ts,src,dst,amount,type,label,pattern,group\n" + "".join(
    f"{1200 * n},ring-{a},ring-{(a + 1) % 8},9000.00,TRANSFER,1,cycle,\n"
    for n, a in enumerate((0, 5, 2, 7, 4, 1, 6, 3))) + \
    "9600,quiet-1,quiet-2,15.00,TRANSFER,1,fan_in,\n"


def test_backtest_scores_an_imported_history_and_writes_its_alerts(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A ring of eight imported from CSV: its group is caught, late; the alerts file holds it."""
    from streams.alerts import Alert
    from streams.importer import RowConverter, import_csv

    source = tmp_path / "ring.csv"
    source.write_text(RING_CSV.replace(",cycle,\n", ",cycle,ring-A\n"))
    events, labels = tmp_path / "ring.jsonl", tmp_path / "ring-labels.csv"
    import_csv(source, events, labels_out=labels, converter=RowConverter(currency="CNY"))
    alerts_path = tmp_path / "alerts.jsonl"
    args = argparse.Namespace(file=events, config=None, labels=labels, json=True,
                              alerts=alerts_path)
    assert run_backtest(Settings(dev_mode=True), args) == 0
    result = orjson.loads(capsys.readouterr().out)
    report = result["labelled"]
    rows = {row["pattern"]: row for row in report["patterns"]}
    assert (rows["cycle"]["groups"], rows["cycle"]["caught"]) == (1, 1)
    assert rows["cycle"]["caught_first_3"] == 0  # a ring closes at its eighth hop
    assert "cycle" in rows["cycle"]["caught_by"]
    assert (rows["fan_in"]["groups"], rows["fan_in"]["caught"]) == (1, 0)
    assert report["events"] == 9 and report["missing_events"] == 0

    written = [orjson.loads(line) for line in alerts_path.read_bytes().splitlines()]
    assert len(written) == result["alerts"] == report["alerts"] > 0
    assert all(set(record) == set(Alert.__slots__) for record in written)
    # the closing hop, the eighth row, is named
    assert any(r["detector"] == "cycle" and "e7" in r["event_ids"] for r in written)

    args.json = False
    assert run_backtest(Settings(dev_mode=True), args) == 0
    assert "group recall" in capsys.readouterr().out


def test_evaluate_takes_labels_only_with_a_history(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from streams.evaluation import history_positions, run_evaluate
    from streams.importer import import_csv

    source = tmp_path / "ring.csv"
    source.write_text(RING_CSV)
    events, labels = tmp_path / "ring.jsonl", tmp_path / "ring-labels.csv"
    import_csv(source, events, labels_out=labels)
    args = argparse.Namespace(config=None, history=None, labels=labels)
    assert run_evaluate(Settings(), args) == 2
    assert "--labels needs --history" in capsys.readouterr().err
    args = argparse.Namespace(config=None, history=tmp_path / "nope.jsonl", labels=labels)
    assert run_evaluate(Settings(), args) == 2
    assert "no such file" in capsys.readouterr().err

    positions = history_positions(events, load_label_csv(labels))
    assert sorted(positions, key=lambda e: positions[e][0]) == [f"e{n}" for n in range(9)]
    assert positions["e8"] == (8, datetime(2024, 1, 1, tzinfo=UTC) + timedelta(seconds=9600))
