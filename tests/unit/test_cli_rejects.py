"""Rejected lines in ``txwatch replay`` and ``txwatch backtest``: line numbers, reasons, exit."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams import cli
from streams.settings import Settings

GOOD = [orjson.dumps({"event_id": f"e{i}", "event_type": "payment", "account_id": "acct-1",
                      "occurred_at": f"2024-05-01T12:{i:02d}:00Z", "amount": "20.00",
                      "currency": "EUR"}) for i in range(4)]
#: (line text, reason) of seven lines a worker dead-letters.
BAD = [
    (b"not json", "not_json"),
    (b"[1, 2]", "not_object"),
    (b'{"event_id": "x1", "event_type": "teleport", "account_id": "a",'
     b' "occurred_at": "2024-05-01T12:00:00Z"}', "unknown_type"),
    (b'{"event_id": "x2", "event_type": "payment", "account_id": "a",'
     b' "occurred_at": "2024-05-01T12:00:00Z", "currency": "EUR"}', "schema"),
    (b'{"event_id": "x3", "event_type": "payment", "account_id": "a",'
     b' "occurred_at": "2024-05-01T12:00:00Z", "amount": "1.234", "currency": "EUR"}', "amount"),
    (b'{"event_id": "x4", "event_type": "payment", "account_id": "a",'
     b' "occurred_at": "2024-02-30T12:00:00Z", "amount": "1.00", "currency": "EUR"}',
     "timestamp"),
    (b'{"event_id": "x5", "event_type": "payment", "account_id": "a",'
     b' "occurred_at": "2024-05-01T12:00:00Z", "amount": 12, "currency": "EUR"}', "amount"),
]


@pytest.fixture
def history(tmp_path: Path) -> Path:
    """Good and bad lines interleaved, with a blank line that still counts as a line."""
    lines = [GOOD[0], b"", *[text for text, _ in BAD[:3]], GOOD[1],
             *[text for text, _ in BAD[3:]], GOOD[2], GOOD[3]]
    path = tmp_path / "history.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


#: 1-based line numbers of BAD in the fixture's file, in order.
BAD_LINES = [3, 4, 5, 7, 8, 9, 10]


def listed(stderr: str) -> list[tuple[int, str]]:
    found = []
    for line in stderr.splitlines():
        if line.startswith("  line "):
            number, reason = line.removeprefix("  line ").split(": ")[:2]
            found.append((int(number), reason))
    return found


@pytest.fixture
def replay_calls(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Stands in for the publishing :func:`streams.simulate.replay` (no broker in unit tests)."""
    calls: list[Path] = []

    async def fake_replay(settings: Settings, path: Path, **kwargs: Any) -> Any:
        calls.append(path)
        return argparse.Namespace(failed=0)

    monkeypatch.setattr("streams.simulate.replay", fake_replay)
    return calls


def replay_args(path: Path, **flags: Any) -> argparse.Namespace:
    return argparse.Namespace(file=path, rate=None, allow_bad=flags.get("allow_bad", False),
                              verbose=flags.get("verbose", False))


def test_replay_lists_the_first_rejected_lines_and_publishes_nothing(
        history: Path, replay_calls: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    status = cli.run_replay(Settings(), replay_args(history))
    err = capsys.readouterr().err
    assert status == 1
    assert replay_calls == []
    assert listed(err) == [(n, r) for n, (_, r) in zip(BAD_LINES, BAD, strict=True)][:5]
    assert "7 of 11 lines rejected (amount 2, not_json 1" in err
    assert "2 more (--verbose lists them all)" in err
    assert "nothing published" in err


def test_replay_verbose_lists_all_and_allow_bad_publishes(
        history: Path, replay_calls: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    status = cli.run_replay(Settings(), replay_args(history, verbose=True, allow_bad=True))
    err = capsys.readouterr().err
    assert status == 0
    assert replay_calls == [history]
    assert listed(err) == [(n, r) for n, (_, r) in zip(BAD_LINES, BAD, strict=True)]


def test_a_clean_file_is_published_without_comment(
        tmp_path: Path, replay_calls: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "clean.jsonl"
    path.write_bytes(b"\n".join(GOOD) + b"\n")
    assert cli.run_replay(Settings(), replay_args(path)) == 0
    assert replay_calls == [path]
    assert "rejected" not in capsys.readouterr().err


def test_backtest_reports_dead_letters_by_line_and_exits_1_unless_allowed(
        history: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TXWATCH_PII_KEY", "dev")
    assert cli.main(["backtest", str(history)]) == 1
    err = capsys.readouterr().err
    assert listed(err) == [(n, r) for n, (_, r) in zip(BAD_LINES, BAD, strict=True)][:5]
    assert "7 of 11 lines rejected" in err
    assert cli.main(["backtest", str(history), "--verbose", "--allow-bad"]) == 0
    err = capsys.readouterr().err
    assert listed(err) == [(n, r) for n, (_, r) in zip(BAD_LINES, BAD, strict=True)]
