"""``txwatch demo | head -n 1``: the demo stops its children and broker when its reader goes,
even when Ctrl-C and SIGTERM arrive during the cleanup."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

#: Seconds allowed for the demo's first line (broker start, worker start, first summary).
FIRST_LINE_SECONDS = 240.0
#: Seconds allowed for the demo to stop once its reader went away (children, then broker).
STOP_SECONDS = 120.0


def parents() -> dict[int, int]:
    """pid -> parent pid of every live, non-zombie process."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            state, ppid = stat.rpartition(")")[2].split()[:2]
            if state != "Z":
                found[int(entry.name)] = int(ppid)
    return found


def descendants(root: int) -> set[int]:
    tree = parents()
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, ppid in tree.items() if ppid in frontier} - found
        found |= frontier
    return found


def command_line(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_demo_piped_into_a_reader_that_exits_early_leaves_no_process(tmp_path: Path) -> None:
    env = {**os.environ, "TXWATCH_DATA_DIR": str(tmp_path / "var"), "TXWATCH_PII_KEY": "dev",
           "TXWATCH_METRICS_PORT": "0"}
    stderr_path = tmp_path / "demo.err"
    seen: dict[int, str] = {}
    with stderr_path.open("wb") as stderr:
        demo = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "demo", "--duration", "600", "--rate", "50"],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr)
    assert demo.stdout is not None
    head = subprocess.Popen(["head", "-n", "1"], stdin=demo.stdout, stdout=subprocess.PIPE)
    demo.stdout.close()  # head is the only reader
    try:
        deadline = time.monotonic() + FIRST_LINE_SECONDS
        while head.poll() is None:
            seen.update({pid: command_line(pid) for pid in descendants(demo.pid)})
            assert time.monotonic() < deadline, stderr_path.read_text()
            with contextlib.suppress(subprocess.TimeoutExpired):
                head.wait(timeout=0.5)
        assert head.stdout is not None
        assert head.stdout.read().strip(), "head printed the demo's first line"
        # Ctrl-C, and then SIGTERM, while it stops its children must not cut the cleanup short.
        deadline = time.monotonic() + STOP_SECONDS
        while "demo: stopping the" not in stderr_path.read_text() and demo.poll() is None:
            assert time.monotonic() < deadline, stderr_path.read_text()
            with contextlib.suppress(subprocess.TimeoutExpired):
                demo.wait(timeout=0.2)
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ProcessLookupError):
                demo.send_signal(signum)
        demo.wait(timeout=STOP_SECONDS)
        log = stderr_path.read_text()
        assert demo.returncode == 0, log
        assert "Traceback" not in log
        kinds = " ".join(seen.values())
        assert "kafka.Kafka" in kinds and "streams.cli worker" in kinds \
            and "streams.cli simulate" in kinds, seen
        left = {pid: cmd for pid, cmd in seen.items() if pid in parents()}
        assert left == {}, (left, log)
        assert "demo: stopped cleanly." in log
    finally:
        for pid in [demo.pid, *seen]:
            with contextlib.suppress(ProcessLookupError):
                if pid in parents():
                    os.kill(pid, signal.SIGKILL)
        for proc in (demo, head):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        if head.stdout is not None:
            head.stdout.close()
