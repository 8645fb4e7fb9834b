"""No default secret: the commands that hash personal identifiers need TXWATCH_PII_KEY.

Without it, and without development mode, ``txwatch worker`` and ``txwatch
backtest`` stop before doing anything: one line on stderr, exit 2. In
development mode the public development key applies, with the demo
configuration whose blacklist lists the simulator's people.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from detectors.registry import DEFAULT_CONFIG
from streams import simulate as sim
from streams.rules import demo_config, detector_config
from streams.settings import DEV_PII_KEY, Secret, Settings, SettingsError

REPO = Path(__file__).resolve().parents[2]


def environment(**extra: str) -> dict[str, str]:
    """This process's environment without any TXWATCH_* variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TXWATCH_")}
    # nothing answers here: a command that got as far as Kafka would fail differently
    return {**env, "TXWATCH_BROKER": "127.0.0.1:9", **extra}


def txwatch(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def listed_application(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One loan application under the national id of a person on the demo's list."""
    national_id, phone = sim.dishonest_persons()[0]
    path = tmp_path_factory.mktemp("pii") / "events.jsonl"
    path.write_bytes(orjson.dumps({
        "event_id": "pii-1", "event_type": "loan_application", "account_id": "acct-pii",
        "occurred_at": "2026-03-01T09:00:00Z", "amount": "5000.00", "currency": "CNY",
        "loan_id": "loan-pii-1", "national_id": national_id, "phone": phone,
    }) + b"\n")
    return path


def blacklist_alerts(result: subprocess.CompletedProcess[str]) -> int:
    assert result.returncode == 0, result.stderr
    rows: list[dict[str, Any]] = orjson.loads(result.stdout)["detectors"]
    return sum(row["alerts"] for row in rows if row["detector"] == "blacklist")


@pytest.mark.parametrize("command", ["worker", "backtest"])
def test_a_command_that_hashes_refuses_to_start_without_a_key(
        command: str, listed_application: Path) -> None:
    args = [command] + ([str(listed_application)] if command == "backtest" else [])
    result = txwatch(environment(), *args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"txwatch {command}: TXWATCH_PII_KEY is not set")
    assert "TXWATCH_DEV_MODE=1" in lines[0]
    assert "Traceback" not in result.stderr and not result.stdout


def test_development_mode_hashes_with_the_development_key_and_lists_the_demo_people(
        listed_application: Path) -> None:
    result = txwatch(environment(TXWATCH_DEV_MODE="1"), "backtest", "--json",
                     str(listed_application))
    assert blacklist_alerts(result) == 1


def test_with_a_key_of_its_own_the_packaged_defaults_list_nobody(
        listed_application: Path) -> None:
    result = txwatch(environment(TXWATCH_PII_KEY="a-secret-of-this-deployment"),
                     "backtest", "--json", str(listed_application))
    assert blacklist_alerts(result) == 0
    # and in development mode with that key, the demo's hashes (development key) miss too
    result = txwatch(environment(TXWATCH_PII_KEY="a-secret-of-this-deployment",
                                 TXWATCH_DEV_MODE="1"), "backtest", "--json",
                     str(listed_application))
    assert blacklist_alerts(result) == 0


def test_the_key_wins_and_development_mode_is_the_only_fallback() -> None:
    assert Settings(pii_key=Secret("k1"), dev_mode=True).hashing_key() == b"k1"
    assert Settings(dev_mode=True).hashing_key() == DEV_PII_KEY.encode()
    with pytest.raises(SettingsError, match="TXWATCH_PII_KEY is not set"):
        Settings().hashing_key()
    assert "dev" not in repr(Settings.from_env({}).pii_key)
    assert Settings.from_env({"TXWATCH_DEV_MODE": "1"}).dev_mode


def test_the_demo_configuration_differs_from_the_defaults_only_by_the_blacklist() -> None:
    demo = demo_config()
    assert DEFAULT_CONFIG["detectors"]["blacklist"]["params"]["hashes"] == []
    assert len(demo["detectors"]["blacklist"]["params"]["hashes"]) == 2 * sim.DISHONEST_PERSONS
    demo["detectors"]["blacklist"]["params"]["hashes"] = []
    assert demo == DEFAULT_CONFIG
    assert detector_config(Settings(dev_mode=True)) == demo_config()
    assert detector_config(Settings()) == DEFAULT_CONFIG


def test_the_compose_file_has_no_working_default_for_its_secrets() -> None:
    compose = (REPO / "docker-compose.yml").read_text()
    for variable in ("TXWATCH_PII_KEY", "GRAFANA_ADMIN_PASSWORD"):
        uses = re.findall(r"\$\{" + variable + r"(:?[-?=+]?)", compose)
        assert uses, f"docker-compose.yml does not use {variable}"
        assert set(uses) == {":?"}, f"{variable} must be required (${{{variable}:?...}})"
