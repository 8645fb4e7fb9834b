"""``txwatch broker``: which client port it asks for, what it prints, and the foreground run."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Final

from streams.localkafka.base import BrokerError
from streams.localkafka.network import HOST, port_is_free
from streams.localkafka.node import LocalKafka

#: The client port ``txwatch broker`` prefers: the one ``TXWATCH_BROKER`` defaults to.
DEFAULT_CLIENT_PORT: Final = 9092


def cli_client_port(data_dir: Path | None, port: int | None) -> tuple[int | None, str | None]:
    """The client port ``txwatch broker`` asks for, and a note when it cannot be 9092.

    An explicit ``port`` wins; then the previous run's port on ``data_dir``
    when it is free; then :data:`DEFAULT_CLIENT_PORT` when it is free; else
    ``None`` (any free port), with a note saying why.
    """
    if port is not None:
        return port, None
    previous = LocalKafka(data_dir)._previous_ports() if data_dir is not None else None
    if previous is not None and port_is_free(previous[0]):
        return previous[0], None
    if port_is_free(DEFAULT_CLIENT_PORT):
        return DEFAULT_CLIENT_PORT, None
    note = (f"port {DEFAULT_CLIENT_PORT} on {HOST} is in use (another broker?); "
            f"using a free port instead")
    return None, note


def broker_banner(bootstrap: str, data_dir: Path, kept: bool, log: Path) -> list[str]:
    """What ``txwatch broker`` prints once the broker answers."""
    where = ("kept: `txwatch broker --data-dir` on it again finds its topics" if kept else
             "deleted when the broker stops; --data-dir DIR keeps it")
    return [
        f"bootstrap: {bootstrap}",
        "other txwatch commands find this broker after (in their shell):",
        f"  export TXWATCH_BROKER={bootstrap}",
        f"data: {data_dir} ({where})",
        f"log: {log}",
        "Ctrl-C stops the broker.",
    ]


def run_broker_cli(data_dir: Path | None, port: int | None) -> int:
    """``txwatch broker``: run a broker in the foreground until Ctrl-C or SIGTERM.

    Parameters
    ----------
    data_dir
        Kept between runs (topics survive) when given; a temporary directory,
        removed on exit, when ``None``.
    port
        Client port; when ``None``, the previous run's port on ``data_dir``,
        else 9092 (``TXWATCH_BROKER``'s default), else any free one, as
        :func:`cli_client_port` chooses.

    Returns
    -------
    int
        0 after a clean stop, 1 when the broker cannot start or dies.
    """
    stop_requested = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop_requested.set()

    previous = {
        signum: signal.signal(signum, request_stop) for signum in (signal.SIGINT, signal.SIGTERM)
    }
    port, note = cli_client_port(data_dir, port)
    if note is not None:
        print(f"txwatch broker: {note}", flush=True)
    broker = LocalKafka(data_dir, port=port)
    try:
        try:
            broker.start()
        except BrokerError as exc:
            print(f"txwatch broker: {exc}", file=sys.stderr)
            return 1
        for line in broker_banner(broker.bootstrap, broker.data_dir, data_dir is not None,
                                  broker.server_log_path):
            print(line, flush=True)
        while not stop_requested.wait(timeout=1.0):
            if not broker.running:
                print(
                    f"txwatch broker: the broker exited unexpectedly\n{broker.log_tail()}",
                    file=sys.stderr,
                )
                return 1
        print("stopping the broker ...", flush=True)
        return 0
    finally:
        broker.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
