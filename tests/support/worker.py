"""A real ``txwatch worker`` process for integration tests, and Kafka helpers."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson
from prometheus_client.parser import text_string_to_metric_families

from streams import clients
from streams.settings import Settings

METRICS_LINE = re.compile(rb"metrics on (http://\S+/metrics)")


def worker_env(bootstrap: str, prefix: str, **extra: str) -> dict[str, str]:
    """Environment for a worker on topics and a group of its own."""
    return {
        **os.environ,
        "TXWATCH_BROKER": bootstrap,
        "TXWATCH_APP_ID": f"{prefix}-app",
        "TXWATCH_PAYMENTS_TOPIC": f"{prefix}.payments",
        "TXWATCH_LENDING_TOPIC": f"{prefix}.lending",
        "TXWATCH_ALERT_TOPIC": f"{prefix}.alerts",
        "TXWATCH_DEAD_LETTER_TOPIC": f"{prefix}.dead-letters",
        "TXWATCH_CONFIG_TOPIC": f"{prefix}.config",
        "TXWATCH_FEEDBACK_TOPIC": f"{prefix}.feedback",
        "TXWATCH_DEV_MODE": "1",  # the development PII key unless TXWATCH_PII_KEY is given
        "TXWATCH_METRICS_PORT": "0",
        "TXWATCH_SESSION_TIMEOUT": "6",
        "TXWATCH_REBALANCE_TIMEOUT": "6",
        "TXWATCH_BATCH_WITHIN": "0.02",
        "TXWATCH_PARTITIONS": "2",
        **extra,
    }


class WorkerProcess:
    """``python -m streams.cli worker`` with its log in a file."""

    def __init__(self, env: Mapping[str, str], log_path: Path) -> None:
        self.env = dict(env)
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.metrics_url: str | None = None

    def start(self, timeout: float = 60.0) -> WorkerProcess:
        self.metrics_url = None
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streams.cli", "worker"], env=self.env,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_path.read_bytes()[offset:]
            match = METRICS_LINE.search(text)
            if match:
                self.metrics_url = match.group(1).decode()
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)  # polling a log file for a line; not synchronising on time
        message = f"worker did not start; log tail:\n{self.log_tail()}"
        raise RuntimeError(message)

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        assert self.metrics_url is not None
        with urllib.request.urlopen(self.metrics_url, timeout=5) as response:
            text = response.read().decode()
        samples = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return samples

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        total = 0.0
        for (sample, sample_labels), value in self.scrape().items():
            if sample == name and set(labels.items()) <= set(sample_labels):
                total += value
        return total

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def produce(bootstrap: str, topic: str,
                  messages: Iterable[tuple[bytes | None, bytes]]) -> None:
    producer = clients.producer(Settings(broker=bootstrap), acks=1, linger_ms=5,
                                client_id="txwatch-test")
    await producer.start()
    try:
        for key, value in messages:
            await producer.send(topic, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


async def consume_until(bootstrap: str, topic: str, done: Callable[[list[Any]], bool],
                        timeout: float = 90.0, decode: bool = True,
                        security: Mapping[str, Any] | None = None) -> list[Any]:
    """Read ``topic`` from the beginning until ``done(records)`` or the deadline.

    ``security``: aiokafka keywords for a secured listener (``tests/support/tls.py``).
    """
    consumer = clients.consumer(Settings(broker=bootstrap), topic, client_id="txwatch-test",
                                **dict(security or {}))
    await consumer.start()
    records: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=250)
            for items in batch.values():
                records.extend(orjson.loads(r.value) if decode else r for r in items)
            if done(records):
                return records
    finally:
        await consumer.stop()
    message = f"condition not met on {topic} within {timeout}s; got {len(records)} records"
    raise TimeoutError(message)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)  # re-check a condition against a deadline
    message = f"timed out after {timeout}s waiting for {what}"
    raise TimeoutError(message)

