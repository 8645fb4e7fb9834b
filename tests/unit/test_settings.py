"""Settings are validated at start, and the README's table is generated from them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from streams.settings import Settings, SettingsError

REPO = Path(__file__).resolve().parents[2]


def txwatch(*args: str, **variables: str) -> subprocess.CompletedProcess[str]:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("TXWATCH_")},
           "TXWATCH_BROKER": "127.0.0.1:9", "TXWATCH_DEV_MODE": "1", **variables}
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)


def assert_one_line(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for text in expected:
        assert text in lines[0]


@pytest.mark.parametrize(("variable", "value", "expected"), [
    ("TXWATCH_BATCH_SIZE", "0", "TXWATCH_BATCH_SIZE=0: expected at least 1"),
    ("TXWATCH_PARTITIONS", "-2", "TXWATCH_PARTITIONS=-2: expected at least 1"),
    ("TXWATCH_METRICS_PORT", "70000", "expected between 0 and 65535"),
    ("TXWATCH_BATCH_WITHIN", "-0.5", "TXWATCH_BATCH_WITHIN=-0.5: expected at least 0"),
    ("TXWATCH_LOG_LEVEL", "loud", "TXWATCH_LOG_LEVEL='loud': expected one of DEBUG"),
    ("TXWATCH_BATCH_SIZE", "many", "TXWATCH_BATCH_SIZE='many'"),
    ("TXWATCH_DETECTOR_CONFIG", "/nonexistent/rules.json", "no such file"),
])
def test_an_unusable_value_stops_the_worker_with_one_line(
        variable: str, value: str, expected: str) -> None:
    assert_one_line(txwatch("worker", **{variable: value}), "bad setting", expected)


@pytest.mark.parametrize(("content", "expected"), [
    (b"{not json", "is not JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b'{"version": "x", "detectors": {"velocity": {"threshold": "high"}}}',
     "detectors.velocity.threshold must be a finite number, not 'high'"),
])
def test_an_invalid_detector_configuration_stops_the_worker_with_one_line(
        tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "rules.json"
    path.write_bytes(content)
    result = txwatch("worker", TXWATCH_DETECTOR_CONFIG=str(path))
    assert_one_line(result, f"txwatch worker: {path}", expected)


def test_bounds_hold_for_settings_built_in_code_too() -> None:
    with pytest.raises(SettingsError, match="TXWATCH_PARTITIONS=0"):
        Settings(partitions=0)
    assert Settings(metrics_port=0).metrics_port == 0  # any free port


def test_settings_into_a_closed_pipe_end_quietly() -> None:
    """``txwatch settings | head``: the reader leaves before the output is written."""
    proc = subprocess.Popen([sys.executable, "-m", "streams.cli", "settings"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    with proc.stderr:
        errors = proc.stderr.read()
    assert proc.wait(timeout=60) == 0
    assert errors == b""


def test_the_readme_table_is_the_one_generated_from_settings() -> None:
    readme = (REPO / "README.md").read_text()
    table = Settings.markdown_table()
    assert table in readme, "README's table is stale: paste `txwatch settings --markdown`"
    variables = {line.split("`")[1] for line in table.splitlines()[2:]}
    assert variables >= {"TXWATCH_SECURITY_PROTOCOL", "TXWATCH_SASL_PASSWORD",
                         "TXWATCH_SSL_CAFILE", "TXWATCH_PII_KEY", "TXWATCH_DEV_MODE"}
    assert txwatch("settings", "--markdown").stdout == table
