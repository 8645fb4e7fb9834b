"""A ``txwatch worker`` child process: started, read through its /metrics, stopped.

``txwatch evaluate`` runs the worker it scores this way, and so do the
integration tests (``tests/support/worker.py``) and the benchmark: one harness,
so what the tests prove about a worker is what the evaluation measures.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from prometheus_client.parser import text_string_to_metric_families

#: The line a worker logs once its metrics endpoint listens, with the endpoint's URL.
METRICS_LINE: Final = re.compile(rb"metrics on (http://\S+/metrics)")

#: One scrape: ``(sample name, sorted label pairs) -> value``.
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def topic_env(bootstrap: str, prefix: str) -> dict[str, str]:
    """A broker, topics and a group named after ``prefix``, metrics on any free port."""
    return {
        "TXWATCH_BROKER": bootstrap,
        "TXWATCH_APP_ID": f"{prefix}-app",
        "TXWATCH_PAYMENTS_TOPIC": f"{prefix}.payments",
        "TXWATCH_LENDING_TOPIC": f"{prefix}.lending",
        "TXWATCH_ALERT_TOPIC": f"{prefix}.alerts",
        "TXWATCH_DEAD_LETTER_TOPIC": f"{prefix}.dead-letters",
        "TXWATCH_CONFIG_TOPIC": f"{prefix}.config",
        "TXWATCH_FEEDBACK_TOPIC": f"{prefix}.feedback",
        "TXWATCH_METRICS_PORT": "0",
    }


class WorkerProcess:
    """``python -m streams.cli worker`` in a session of its own, its output in a log file.

    Parameters
    ----------
    env
        The child's whole environment.
    log_path
        Where its output goes; appended to, so a restarted worker keeps one log.
    """

    def __init__(self, env: Mapping[str, str], log_path: Path) -> None:
        self.env = dict(env)
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.metrics_url: str | None = None

    def start(self, timeout: float = 60.0) -> WorkerProcess:
        """Start the worker and return once it logs its metrics endpoint.

        Raises ``RuntimeError`` with the log's tail when it exits first or
        does not get there within ``timeout`` seconds.
        """
        self.metrics_url = None
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streams.cli", "worker"], env=self.env,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = METRICS_LINE.search(self.log_path.read_bytes()[offset:])
            if match:
                self.metrics_url = match.group(1).decode()
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)  # polling a log file for a line; not synchronising on time
        message = f"the worker did not start; its log: {self.log_path}\n{self.log_tail()}"
        raise RuntimeError(message)

    def alive(self) -> bool:
        """Whether the worker was started and has not exited."""
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the worker's log."""
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def scrape(self) -> Samples:
        """Every sample of the worker's /metrics (``OSError`` when it does not answer)."""
        if self.metrics_url is None:
            message = "the worker has not started: no metrics endpoint to read"
            raise RuntimeError(message)
        with urllib.request.urlopen(self.metrics_url, timeout=5) as response:
            text = response.read().decode()
        samples: Samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return samples

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        return sum(value for (sample, sample_labels), value in self.scrape().items()
                   if sample == name and set(labels.items()) <= set(sample_labels))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        """Send ``sig``, wait up to ``timeout`` seconds, then kill; the exit code.

        ``None`` when the worker was never started.
        """
        if self.proc is None:
            return None
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

