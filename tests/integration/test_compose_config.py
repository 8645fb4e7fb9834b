"""docker-compose.yml is a valid Compose file, and it has no working default secret.

Checked with the real Compose v2 command line (``config`` needs no Docker
engine), built from its Go module on first use (``tests/support/compose.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.compose import BUILD_TIMEOUT, compose_cli, compose_config

pytestmark = [pytest.mark.integration, pytest.mark.timeout(BUILD_TIMEOUT + 300)]

COMPOSE_FILE = Path(__file__).resolve().parents[2] / "docker-compose.yml"
SECRETS = {"TXWATCH_PII_KEY": "a-secret-for-this-test-only",
           "GRAFANA_ADMIN_PASSWORD": "another-secret-for-this-test"}


@pytest.fixture(scope="module")
def compose() -> Path:
    return compose_cli()


def test_the_compose_file_is_valid_once_its_secrets_are_given(compose: Path) -> None:
    result = compose_config(compose, COMPOSE_FILE, SECRETS, "--format", "json")
    assert result.returncode == 0, result.stderr
    rendered = json.loads(result.stdout)
    services = rendered["services"]
    assert {"kafka", "prometheus", "alertmanager", "grafana"} <= set(services), sorted(services)
    workers = [s for s in services.values()
               if "TXWATCH_PII_KEY" in (s.get("environment") or {})]
    assert workers, "no service is given TXWATCH_PII_KEY"
    for worker in workers:
        assert worker["environment"]["TXWATCH_PII_KEY"] == SECRETS["TXWATCH_PII_KEY"]
    grafana = services["grafana"]["environment"]
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"] == SECRETS["GRAFANA_ADMIN_PASSWORD"]


@pytest.mark.parametrize("missing", sorted(SECRETS))
def test_without_a_secret_compose_refuses_and_names_it(compose: Path, missing: str) -> None:
    given = {name: value for name, value in SECRETS.items() if name != missing}
    result = compose_config(compose, COMPOSE_FILE, given, "--quiet")
    assert result.returncode != 0
    assert missing in result.stderr, result.stderr
