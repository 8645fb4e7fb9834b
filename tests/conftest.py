"""Fixtures shared by every test tier.

The Kafka fixtures are lazy: a broker starts only when a test asks for one,
so ``tests/unit`` and ``tests/property`` never pay for (or depend on) a JVM.
A test that asks for a broker must carry ``pytest.mark.integration``;
collection stops with a usage error otherwise, so ``-m "not integration"``
always means "no broker".

``TXWATCH_TEST_BROKER=host:port`` points the suite at a broker you run
yourself instead of the one :class:`streams.localkafka.LocalKafka` starts.

The tests run in development mode (``TXWATCH_DEV_MODE=1``): the public
development PII key and the demo configuration, whose blacklist lists the
simulator's people. A test of the refusal without a key removes it.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.localkafka import LocalKafka

os.environ["TXWATCH_DEV_MODE"] = "1"

#: ``host:port`` of an existing broker to test against instead of starting one.
TEST_BROKER_ENV = "TXWATCH_TEST_BROKER"
#: Fixtures that need Kafka; a test using one must be marked ``integration``.
BROKER_FIXTURES = frozenset({"kafka_bootstrap", "restartable_kafka"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    unmarked = [
        item.nodeid
        for item in items
        if BROKER_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        and item.get_closest_marker("integration") is None
    ]
    if unmarked:
        message = "these tests use a Kafka fixture but lack pytest.mark.integration: " + ", ".join(
            unmarked
        )
        raise pytest.UsageError(message)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """``host:port`` of a running broker, shared by the whole session.

    ``TXWATCH_TEST_BROKER`` when set; otherwise one :class:`LocalKafka`
    started on first use and stopped (its data removed) at the end.
    """
    external = os.environ.get(TEST_BROKER_ENV, "").strip()
    if external:
        yield external
        return
    broker = LocalKafka()
    try:
        broker.start()
        yield broker.bootstrap
    finally:
        broker.close()


@pytest.fixture
def restartable_kafka(tmp_path: Path) -> Iterator[LocalKafka]:
    """A broker of this test's own, which it may stop, restart or break.

    Always a :class:`LocalKafka` (``TXWATCH_TEST_BROKER`` does not apply):
    restarting the shared broker would disturb the other tests.
    """
    broker = LocalKafka(tmp_path / "kafka")
    try:
        broker.start()
        yield broker
    finally:
        broker.close()


@pytest.fixture
def topic_prefix(request: pytest.FixtureRequest) -> str:
    """A unique prefix for this test's topic names and consumer group ids.

    Readable in the broker log: ``t.<test name>.<12 hex>``. The test name keeps
    only letters, digits and ``-``: Kafka warns about topic names mixing ``.``
    and ``_`` (they collide in metric names).
    """
    name = re.sub(r"[^a-zA-Z0-9-]+", "-", request.node.name).strip("-")[:40]
    return f"t.{name}.{uuid.uuid4().hex[:12]}"
