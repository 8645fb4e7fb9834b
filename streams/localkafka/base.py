"""What every part of the local Kafka launcher shares: its errors and its progress lines."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Final

#: Receives one human-readable line per step (jar resolution, start, stop).
Progress = Callable[[str], None]

#: Lines of a log an error message quotes.
LOG_TAIL_LINES: Final = 40


class BrokerError(RuntimeError):
    """The local Kafka broker cannot be prepared, started or stopped."""


class BrokerSetupError(BrokerError):
    """Java or Maven is missing, or the Kafka jars cannot be resolved."""


class BrokerStartError(BrokerError):
    """The broker process failed or did not answer in time.

    Parameters
    ----------
    message
        What went wrong; the tail of the broker's logs is appended to it.
    log_tail
        The last lines of the broker's output and ``server.log``.
    """

    def __init__(self, message: str, log_tail: str) -> None:
        super().__init__(f"{message}\n--- broker log tail ---\n{log_tail}")
        self.log_tail = log_tail


def print_progress(line: str) -> None:
    """The default :data:`Progress`: one line on stderr."""
    print(f"txwatch broker: {line}", file=sys.stderr, flush=True)
