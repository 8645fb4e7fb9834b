"""What the command line prints: help, settings, and a closed stdout."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from streams.cli import build_parser, settings_table
from streams.settings import Settings


def test_help_lists_each_command_once_without_markup(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    assert "``" not in text and "--------" not in text
    names = ["worker", "demo", "simulate", "replay", "tail", "broker", "settings", "portfolio",
             "rules", "feedback", "evaluate", "backtest", "dead-letters", "calibrate", "import-csv",
             "trace"]
    # argparse indents a command's name by 4 and a wrapped help line by more
    listed = [m[1] for m in re.finditer(r"^ {2,4}([a-z-]+)(?: {2,}|$)", text, re.MULTILINE)]
    assert sorted(listed) == sorted(names)


def test_settings_are_aligned_plain_values() -> None:
    lines = settings_table()
    assert lines[0].split() == ["VARIABLE", "DEFAULT", "MEANING"]
    column = lines[0].index("DEFAULT")
    meaning = lines[0].index("MEANING")
    assert len(lines) == 1 + len(Settings.documentation())
    rows = {line.split()[0]: line for line in lines[1:]}
    for line in lines[1:]:
        assert line[column - 2:column] == "  " and line[column] != " ", line
        assert line[meaning - 2:meaning] == "  " and line[meaning] != " ", line
    assert rows["TXWATCH_DATA_DIR"][column:meaning].strip() == "var"
    assert rows["TXWATCH_BROKER"][column:meaning].strip() == "127.0.0.1:9092"
    assert rows["TXWATCH_DETECTOR_CONFIG"][column:meaning].strip() == "unset"
    assert rows["TXWATCH_SASL_PASSWORD"][column:meaning].strip() == "(secret)"
    assert "PosixPath" not in "\n".join(lines) and "'" not in "".join(
        line[column:meaning] for line in lines)


@pytest.mark.parametrize(("argv", "status"), [
    (["settings"], 0),  # the reader had what it wanted
    (["--help"], 0),  # argparse ignores a failed write of its help
])
def test_a_reader_that_went_away_ends_the_command_quietly(argv: list[str], status: int) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # no reader at all: the first write meets a broken pipe
    try:
        result = subprocess.run([sys.executable, "-m", "streams.cli", *argv], stdout=write_end,
                                stderr=subprocess.PIPE, text=True, timeout=60, check=False,
                                stdin=subprocess.DEVNULL)
    finally:
        os.close(write_end)
    assert result.stderr == ""
    assert result.returncode == status
