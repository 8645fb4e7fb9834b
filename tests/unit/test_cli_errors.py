"""Every broker command against a broker it cannot use: one line, exit 2, no traceback."""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson
import pytest

from detectors.registry import DEFAULT_CONFIG
from streams.cli import _uses_broker, bootstrap_problem, build_parser
from streams.rules import read_latest_config
from streams.settings import Settings

#: Loopback only: port 1 refuses at once, and nothing listens there in a test.
UNREACHABLE = "127.0.0.1:1"
MALFORMED = "host:notaport"


def commands(tmp_path: Path) -> list[list[str]]:
    config = tmp_path / "config.json"
    config.write_bytes(orjson.dumps(DEFAULT_CONFIG))
    history = tmp_path / "history.jsonl"
    history.write_text('{"event_type": "payment"}\n')
    return [
        ["simulate", "--events", "10"],
        ["tail"],
        ["replay", str(history)],
        ["portfolio", "--timeout", "3"],
        ["portfolio", "simulate", "--borrowers", "5"],
        ["rules", "show", "--timeout", "3"],
        ["rules", "publish", str(config)],
        ["feedback", "0123456789abcdef0123456789abcdef", "true_positive"],
        ["dead-letters", "--from-beginning"],
        ["evaluate", "--events", "10", "--timeout", "5"],
        ["worker"],
    ]


def run(argv: list[str], broker: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TXWATCH_BROKER": broker, "TXWATCH_PII_KEY": "dev",
           "TXWATCH_DATA_DIR": str(tmp_path / "var"), "TXWATCH_METRICS_PORT": "0"}
    env.pop("TXWATCH_LOG_LEVEL", None)
    return subprocess.run([sys.executable, "-m", "streams.cli", *argv], env=env,
                          capture_output=True, text=True, timeout=45, check=False,
                          stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("broker", [UNREACHABLE, MALFORMED])
def test_every_broker_command_says_why_in_one_line_and_exits_2(
        broker: str, tmp_path: Path) -> None:
    argvs = commands(tmp_path)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda argv: run(argv, broker, tmp_path), argvs))
    for argv, result in zip(argvs, results, strict=True):
        command = " ".join(argv[:2] if argv[1:2] in (["show"], ["publish"], ["simulate"])
                           else argv[:1])
        output = result.stdout + result.stderr
        assert "Traceback" not in output, (argv, output)
        assert "Unclosed" not in output, (argv, output)
        assert result.returncode == 2, (argv, result.returncode, output)
        assert result.stdout == "", (argv, result.stdout)
        lines = result.stderr.splitlines()
        assert len(lines) == 1, (argv, lines)
        assert lines[0].startswith(f"txwatch {command}: "), (argv, lines)
        assert broker.split(":")[1] in lines[0], (argv, lines)


@pytest.mark.parametrize(("bootstrap", "problem"), [
    ("127.0.0.1:9092", None),
    ("kafka-1:9092, kafka-2:9093", None),
    ("[::1]:9092", None),
    ("host:notaport", "port 'notaport' of 'host:notaport' is not a number from 1 to 65535"),
    ("host:0", "port '0' of 'host:0' is not a number from 1 to 65535"),
    ("localhost", "'localhost' is not host:port"),
    (":9092", "':9092' is not host:port"),
    ("", "is empty"),
])
def test_bootstrap_problem_names_the_part_at_fault(bootstrap: str, problem: str | None) -> None:
    assert bootstrap_problem(bootstrap) == problem


def test_reading_the_rules_from_an_unreachable_broker_closes_its_consumer() -> None:
    from aiokafka.errors import KafkaConnectionError

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(KafkaConnectionError):
            asyncio.run(read_latest_config(Settings(broker=UNREACHABLE), "txwatch.config",
                                           timeout=3))
        gc.collect()
    unclosed = [str(w.message) for w in caught if "Unclosed" in str(w.message)]
    assert unclosed == []


@pytest.mark.parametrize(("argv", "uses"), [
    (["simulate", "--events", "5"], True),
    (["simulate", "--events", "5", "--out", "events.jsonl"], False),  # writes a file
    (["evaluate"], True),
    (["evaluate", "--local-broker"], False),  # starts its own
    (["demo"], False),
    (["backtest", "h.jsonl"], False),
    (["settings"], False),
])
def test_only_commands_that_talk_to_txwatch_broker_check_it(argv: list[str], uses: bool) -> None:
    assert _uses_broker(build_parser().parse_args(argv)) is uses
