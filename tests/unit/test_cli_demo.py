"""The demo's operator view and its housekeeping, without a broker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from streams.demo import AlertView, CappedLog, format_operator_alert, prepare_data_dir


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def alert(n: int, detector: str = "velocity", account: str = "acct-1",
          severity: str = "high") -> dict[str, Any]:
    return {"alert_id": f"id-{n}", "detector": detector, "account_id": account,
            "severity": severity, "event_type": "payment", "amount": "20.00",
            "currency": "CNY", "reasons": ["10 transactions in 1 minute"], "score": 1.0,
            "occurred_at": "2024-03-04T08:02:11Z", "detected_at": "2026-12-01T21:50:03.120Z"}


def test_repeats_per_account_and_detector_are_held_back_then_counted() -> None:
    clock = Clock()
    view = AlertView(repeat_window=60.0, clock=clock)
    assert view.offer(alert(1)) is not None
    clock.now = 10.0
    assert view.offer(alert(2)) is None  # same account and detector within 60 s
    assert view.offer(alert(3, account="acct-2")) is not None
    assert view.offer(alert(4, detector="fan_out")) is not None
    clock.now = 61.0
    shown = view.offer(alert(5))
    assert shown is not None and "(+1 repeats held back)" in shown
    assert (view.shown, view.held_back) == (4, 1)


def test_low_severity_is_hidden_unless_asked_and_redeliveries_are_dropped() -> None:
    view = AlertView()
    assert view.offer(alert(1, detector="global_anomaly", severity="low")) is None
    assert view.offer(alert(2)) is not None
    assert view.offer(alert(2)) is None  # the same alert id again: an at-least-once re-delivery
    everything = AlertView(show_low=True)
    assert everything.offer(alert(1, detector="global_anomaly", severity="low")) is not None
    summary = view.summary()
    assert "2 alerts: global_anomaly 1, velocity 1" in summary or \
        "2 alerts: velocity 1, global_anomaly 1" in summary
    assert "shown 1" in summary and "low severity hidden 1 (--all shows them)" in summary
    assert "re-deliveries dropped 1" in summary
    assert "no alerts yet" in AlertView().summary()


def test_an_alert_shows_its_detection_time_beside_its_event_time() -> None:
    text = format_operator_alert(alert(1), colour=False)
    first, second = text.splitlines()
    assert first.startswith("21:50:03  HIGH     velocity  account=acct-1 payment 20.00 CNY")
    assert first.endswith("event time 2024-03-04T08:02:11Z")
    assert second.strip().startswith("10 transactions in 1 minute")


def test_a_capped_log_rotates_instead_of_growing(tmp_path: Path) -> None:
    path = tmp_path / "worker.log"
    log = CappedLog(path, max_bytes=100, backups=1)
    for n in range(50):
        log.write(f"line {n:04d} of the worker's log\n".encode())
    log.close()
    assert path.stat().st_size <= 100
    assert (tmp_path / "worker.log.1").stat().st_size <= 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["worker.log", "worker.log.1"]
    assert path.read_text().splitlines()[-1] == "line 0049 of the worker's log"


def test_each_demo_starts_clean_unless_it_resumes(tmp_path: Path) -> None:
    data_dir = tmp_path / "demo"
    (data_dir / "kafka").mkdir(parents=True)
    (data_dir / "worker.log").write_text("previous run\n")
    prepare_data_dir(data_dir, resume=True)
    assert (data_dir / "worker.log").exists()
    prepare_data_dir(data_dir, resume=False)
    assert data_dir.is_dir() and list(data_dir.iterdir()) == []
