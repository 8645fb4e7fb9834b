"""``txwatch calibrate``: the fitted configuration keeps the budget, is valid and repeatable."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from detectors.registry import DEFAULT_CONFIG
from streams import simulate
from streams.calibrate import allot, calibrate, fit_threshold
from streams.evaluation import backtest
from streams.rules import build_rules

EVENTS = 6_000


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Simulator traffic with every scenario: noisy enough that the defaults exceed 0.5%."""
    path = tmp_path_factory.mktemp("calibrate") / "history.jsonl"
    simulate.write_jsonl(simulate.generate(11, accounts=400, events=EVENTS), path)
    return path


def noisy_config() -> dict[str, Any]:
    """The defaults with a global model that alerts on a large share of transactions."""
    config = copy.deepcopy(DEFAULT_CONFIG)
    config["version"] = "noisy-1"
    anomaly = config["detectors"]["global_anomaly"]
    anomaly["params"]["warmup"] = 300
    anomaly["threshold"] = 0.5
    anomaly.pop("budget", None)
    return config


@pytest.fixture(scope="module")
def fitted(history: Path) -> Any:
    return calibrate(history, 0.5, config=noisy_config())


def test_the_fitted_configuration_alerts_within_the_budget_when_run_again(
        fitted: Any, history: Path) -> None:
    assert fitted.alerts_before > fitted.allowed_alerts  # the test starts over budget
    again = backtest(history, fitted.config)
    assert again.alerts <= fitted.allowed_alerts == int(0.005 * fitted.events)
    assert again.alerts == fitted.alerts_after
    # raising levels only: every alert after is one the configuration could raise before
    anomaly = next(f for f in fitted.fits if f.detector == "global_anomaly")
    assert anomaly.threshold_after is not None and anomaly.threshold_after > 0.5
    assert anomaly.after < anomaly.before


def test_no_level_is_lowered_and_critical_detectors_are_kept(fitted: Any) -> None:
    for fit in fitted.fits:
        if fit.threshold_before is not None:
            assert fit.threshold_after is not None
            assert fit.threshold_after >= fit.threshold_before, fit.detector
        if fit.budget_before is not None:
            assert fit.budget_after is not None and fit.budget_after <= fit.budget_before
    spec = fitted.config["detectors"]["fund_segregation"]
    assert spec["threshold"] == DEFAULT_CONFIG["detectors"]["fund_segregation"]["threshold"]


def test_the_output_is_a_complete_versioned_configuration(fitted: Any) -> None:
    rules = build_rules(fitted.config)  # what `rules publish` and the worker validate
    assert rules.version.startswith("calibrated-")
    assert set(fitted.config["detectors"]) == set(noisy_config()["detectors"])


def test_the_same_history_and_budget_give_the_same_file(fitted: Any, history: Path) -> None:
    assert calibrate(history, 0.5, config=noisy_config()).config == fitted.config


def test_the_report_shows_every_detector_before_and_after(fitted: Any) -> None:
    table = fitted.table()
    assert "budget 0.5%" in table
    for name in noisy_config()["detectors"]:
        assert name in table
    row = next(line for line in table.splitlines() if line.startswith("global_anomaly"))
    assert "0.5 ->" in row


def test_split_and_fit_helpers() -> None:
    # a critical detector that needs little keeps all of it, the noisy ones share the rest
    assert allot({"rule": 3, "a": 500, "b": 500}, {"rule": 8, "a": 1, "b": 2}, 30) == \
        {"rule": 3, "a": 9, "b": 18}
    records = [("acct", 100 * i, score) for i, score in enumerate([0.1, 0.4, 0.8, 0.9])]
    assert fit_threshold(records, 0.0, 1, 0) == 0.9
    # the cool-down counts one alert for two close ones on the same account
    close = [("acct", 0, 0.9), ("acct", 5, 0.95), ("other", 5, 0.2)]
    assert fit_threshold(close, 0.5, 1, 60) == 0.5


ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "streams.cli", "calibrate", *args], env=env,
                          capture_output=True, text=True, timeout=300, check=False, cwd=cwd)


@pytest.mark.parametrize(("args", "message"), [
    (["missing.jsonl", "--budget", "0.5", "--out", "x.json"], "no such history file"),
    (["history.jsonl", "--budget", "0", "--out", "x.json"], "--budget must be a percentage"),
    (["history.jsonl", "--budget", "150", "--out", "x.json"], "--budget must be a percentage"),
    (["garbage.jsonl", "--budget", "0.5", "--out", "x.json"], "no event the worker accepts"),
])
def test_bad_input_is_one_clear_line_and_exit_2(tmp_path: Path, args: list[str],
                                               message: str) -> None:
    (tmp_path / "history.jsonl").write_bytes(b'{"event_type": "login"}\n')
    (tmp_path / "garbage.jsonl").write_bytes(b"not json\n{}\n")
    done = cli(*args, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "x.json").exists()


def test_the_command_writes_a_file_rules_publish_accepts(tmp_path: Path, history: Path) -> None:
    base = tmp_path / "base.json"
    base.write_bytes(orjson.dumps(noisy_config()))
    out = tmp_path / "fitted.json"
    done = cli(str(history), "--budget", "0.5", "--out", str(out), "--config", str(base),
               cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "txwatch rules publish" in done.stdout
    assert "pass 1" in done.stderr  # progress on stderr
    build_rules(orjson.loads(out.read_bytes()))


def test_with_a_labels_csv_the_report_gives_precision_and_recall(tmp_path: Path,
                                                                history: Path) -> None:
    import csv

    labelled = [orjson.loads(line) for line in history.read_bytes().splitlines()]
    labels = tmp_path / "labels.csv"
    with labels.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["event_id", "label", "pattern", "group"])
        for event in labelled:
            if event.get("label"):
                writer.writerow([event["event_id"], 1, event["label"],
                                 event.get("incident") or event["account_id"]])
    result = calibrate(history, 0.5, config=noisy_config(), labels_path=labels)
    table = result.table()
    assert "recall before" in table and "prec. before" in table
    assert result.before is not None and result.before.labelled is not None
    ring = next(row for row in result.before.labelled.patterns
                if row.pattern == "laundering_ring")
    assert ring.groups > 0 and f"{'laundering_ring':22}" in table
