"""``txwatch demo``: a local broker, a worker and the simulator, and what an operator would see.

The demo owns its children: each runs in a process group of its own, is told
by the kernel to stop when the demo dies (Linux), and is stopped before the
broker whatever ended the demo (Ctrl-C, SIGTERM, a closed terminal or a
reader of stdout that went away).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import logging.handlers
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import IO, Any

import orjson

from streams.cli import RESET, SEVERITY_COLOURS, follow_topic
from streams.settings import Settings

#: Size at which a child's log (and the demo's own) is rotated, and rotated copies kept.
LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_BACKUPS = 1
#: An account's repeated alerts of one detector are held back for this long.
REPEAT_WINDOW_SECONDS = 60.0
#: How often the one-line summary of alerts per detector is printed.
SUMMARY_EVERY_SECONDS = 10.0
#: Seconds a child has to stop after SIGTERM before its process group is killed.
STOP_TIMEOUT_SECONDS = 15.0
#: Severities shown without ``--all``.
SHOWN_SEVERITIES = frozenset({"medium", "high", "critical"})

_PR_SET_PDEATHSIG = 1
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def say(line: str) -> None:
    """A progress line on stderr; never raises, so it cannot abort a cleanup."""
    with contextlib.suppress(OSError, ValueError):
        print(line, file=sys.stderr, flush=True)


# -- what the operator sees -------------------------------------------------------------
def _clock_time(text: Any) -> str:
    """``HH:MM:SS`` of an RFC 3339 time, or the text itself when it is not one."""
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00")).strftime("%H:%M:%S")
    except ValueError:
        return str(text)


def format_operator_alert(alert: dict[str, Any], colour: bool, held_back: int = 0) -> str:
    """Two lines: detection time, severity, detector, account and event time; the reasons."""
    severity = str(alert.get("severity", "?"))
    head = (f"{_clock_time(alert.get('detected_at'))}  {severity.upper():8} "
            f"{alert.get('detector')}")
    if colour:
        head = SEVERITY_COLOURS.get(severity, "") + head + RESET
    amount = f" {alert['amount']} {alert.get('currency') or ''}".rstrip() \
        if alert.get("amount") else ""
    repeats = f" (+{held_back} repeats held back)" if held_back else ""
    reasons = "; ".join(alert.get("reasons", []))
    return (f"{head}  account={alert.get('account_id')} {alert.get('event_type')}{amount}  "
            f"event time {alert.get('occurred_at')}{repeats}\n"
            f"    {reasons}  [score {alert.get('score')}, id {alert.get('alert_id')}]")


class AlertView:
    """Which alerts an operator sees, and a running count of the others.

    Low severity is hidden unless ``show_low``; an alert id seen before (an
    at-least-once re-delivery) is not shown again; an account's repeat of one
    detector within ``repeat_window`` seconds of the last one shown is held
    back and counted on the next one shown.

    Parameters
    ----------
    show_low
        Show low-severity alerts too (``txwatch demo --all``).
    repeat_window
        Seconds during which an (account, detector) pair is shown once.
    clock
        Monotonic seconds (injected by tests).
    """

    def __init__(self, show_low: bool = False, repeat_window: float = REPEAT_WINDOW_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.show_low = show_low
        self.repeat_window = repeat_window
        self.clock = clock
        self.by_detector: Counter[str] = Counter()
        self.shown = self.low_hidden = self.held_back = self.redelivered = 0
        self._seen_ids: set[str] = set()
        self._last_shown: dict[tuple[str, str], float] = {}
        self._pending: Counter[tuple[str, str]] = Counter()

    def offer(self, alert: dict[str, Any], colour: bool = False) -> str | None:
        """The text to print for ``alert``, or ``None`` when it is not shown."""
        alert_id = str(alert.get("alert_id"))
        if alert_id in self._seen_ids:
            self.redelivered += 1
            return None
        self._seen_ids.add(alert_id)
        detector = str(alert.get("detector"))
        self.by_detector[detector] += 1
        if not self.show_low and alert.get("severity") not in SHOWN_SEVERITIES:
            self.low_hidden += 1
            return None
        key = (str(alert.get("account_id")), detector)
        now = self.clock()
        last = self._last_shown.get(key)
        if last is not None and now - last < self.repeat_window:
            self.held_back += 1
            self._pending[key] += 1
            return None
        self._last_shown[key] = now
        self.shown += 1
        return format_operator_alert(alert, colour, held_back=self._pending.pop(key, 0))

    def summary(self) -> str:
        """One line: alerts per detector so far, and how many were not shown and why."""
        total = sum(self.by_detector.values())
        if not total:
            return f"{time.strftime('%H:%M:%S')}  summary: no alerts yet"
        counts = ", ".join(f"{name} {count:,}" for name, count in self.by_detector.most_common())
        notes = [f"shown {self.shown:,}"]
        if self.low_hidden:
            notes.append(f"low severity hidden {self.low_hidden:,} (--all shows them)")
        if self.held_back:
            notes.append(f"repeats held back {self.held_back:,}")
        if self.redelivered:
            notes.append(f"re-deliveries dropped {self.redelivered:,}")
        noun = "alert" if total == 1 else "alerts"
        return (f"{time.strftime('%H:%M:%S')}  summary: {total:,} {noun}: {counts} | "
                + ", ".join(notes))

    @property
    def state(self) -> tuple[int, int, int, int]:
        return sum(self.by_detector.values()), self.shown, self.low_hidden, self.held_back


# -- children ---------------------------------------------------------------------------
class CappedLog:
    """A log file that is rotated to ``PATH.1`` when it reaches ``max_bytes``.

    Parameters
    ----------
    path
        The file; appended to.
    max_bytes
        Size that triggers a rotation.
    backups
        Rotated copies kept (``PATH.1`` ... ``PATH.N``).
    """

    def __init__(self, path: Path, max_bytes: int = LOG_MAX_BYTES,
                 backups: int = LOG_BACKUPS) -> None:
        self.path, self.max_bytes, self.backups = path, max_bytes, backups
        self._file: IO[bytes] = path.open("ab")
        self._size = self._file.tell()

    def write(self, data: bytes) -> None:
        if self._size + len(data) > self.max_bytes and self._size:
            self._rotate()
        self._file.write(data)
        self._file.flush()
        self._size += len(data)

    def _rotate(self) -> None:
        self._file.close()
        for index in range(self.backups, 0, -1):
            source = self.path.with_name(f"{self.path.name}.{index - 1}") if index > 1 \
                else self.path
            if source.exists():
                source.replace(self.path.with_name(f"{self.path.name}.{index}"))
        if self.backups == 0:
            self.path.unlink(missing_ok=True)
        self._file = self.path.open("ab")
        self._size = 0

    def close(self) -> None:
        self._file.close()


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to SIGTERM the child when the demo dies, if possible."""
    name = ctypes.util.find_library("c")
    if not sys.platform.startswith("linux") or name is None:
        return None
    prctl = ctypes.CDLL(name, use_errno=True).prctl  # looked up before fork: nothing to load

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)

    return preexec


class Child:
    """A child process in a group of its own, its output pumped into a :class:`CappedLog`."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str],
                 log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self.log = CappedLog(log_path)
        self.process = subprocess.Popen(
            list(argv), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, process_group=0, preexec_fn=_die_with_parent())
        self._pump = threading.Thread(target=self._copy_output, name=f"demo-{name}-log",
                                      daemon=True)
        self._pump.start()

    @property
    def pid(self) -> int:
        return int(self.process.pid)

    def _copy_output(self) -> None:
        stream = self.process.stdout
        assert stream is not None
        with contextlib.suppress(OSError, ValueError):
            for line in stream:
                self.log.write(line)

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        """SIGTERM to the child's group, SIGKILL after ``timeout`` s; never raises."""
        try:
            if self.process.poll() is None:
                say(f"demo: stopping the {self.name} (pid {self.pid}) ...")
                self._signal_group(signal.SIGTERM)
                try:
                    self.process.wait(timeout)
                except subprocess.TimeoutExpired:
                    say(f"demo: the {self.name} did not stop within {timeout:.0f} s; killing it")
            # Whatever the leader did, nothing of its group outlives the demo.
            self._signal_group(signal.SIGKILL)
            self.process.wait()
            self._pump.join(timeout=5.0)
        except Exception as exc:  # a cleanup goes on to the next child and the broker
            say(f"demo: stopping the {self.name}: {type(exc).__name__}: {exc}")
        finally:
            with contextlib.suppress(OSError):
                self.log.close()

    def _signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signum)


# -- signals and stdout -----------------------------------------------------------------
def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _signals(handler: Callable[[int, FrameType | None], Any]) -> Iterator[None]:
    previous = {signum: signal.signal(signum, handler) for signum in _STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def _still_stopping(signum: int, frame: FrameType | None) -> None:
    say("demo: already stopping; the children and the broker go first")


def stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reader has closed it (``txwatch demo | head``)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP)
                   for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


def _silence_stdout() -> None:
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def _log_to_file(path: Path) -> None:
    """The demo's own library logs (aiokafka's leader changes...) go to a capped file."""
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=LOG_MAX_BYTES,
                                                   backupCount=LOG_BACKUPS)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.INFO)


# -- the demo ---------------------------------------------------------------------------
def prepare_data_dir(data_dir: Path, resume: bool) -> None:
    """Start clean (the previous run's broker data, state and logs removed) or say it resumes."""
    if data_dir.exists() and any(data_dir.iterdir()):
        if resume:
            say(f"demo: resuming on {data_dir}: topics, state and logs of earlier runs kept; "
                f"only new alerts are shown")
        else:
            shutil.rmtree(data_dir)
            say(f"demo: starting clean: removed the previous run's broker data, state and logs "
                f"in {data_dir} (--resume keeps them)")
    data_dir.mkdir(parents=True, exist_ok=True)


class DemoWatch:
    """Prints the operator's view of the alert topic until told to stop."""

    def __init__(self, settings: Settings, view: AlertView, from_beginning: bool,
                 worker: Child, simulator: Child, duration: float | None) -> None:
        self.settings, self.view = settings, view
        self.from_beginning = from_beginning
        self.worker, self.simulator, self.duration = worker, simulator, duration
        self.stop = asyncio.Event()
        self.reader_gone = False
        self.colour = sys.stdout.isatty()

    def _print(self, text: str) -> None:
        try:
            print(text, flush=True)
        except BrokenPipeError:
            self._reader_went_away()

    def _reader_went_away(self) -> None:
        if not self.reader_gone:
            self.reader_gone = True
            _silence_stdout()
            say("demo: the reader of stdout went away; stopping")
        self.stop.set()

    def _show(self, record: Any) -> bool:
        try:
            alert = orjson.loads(record.value)
        except orjson.JSONDecodeError:
            return True
        if isinstance(alert, dict):
            text = self.view.offer(alert, self.colour)
            if text is not None:
                self._print(text)
        return not self.stop.is_set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in _STOP_SIGNALS:
            loop.add_signal_handler(signum, self.stop.set)
        tail = asyncio.create_task(follow_topic(
            self.settings, self.settings.alert_topic, self._show,
            from_beginning=self.from_beginning, what="alerts", stop=self.stop))
        started = last_summary = time.monotonic()
        summarised: tuple[int, ...] | None = None
        try:
            while not self.stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), 1.0)
                now = time.monotonic()
                if stdout_reader_gone():
                    self._reader_went_away()
                if self.worker.process.poll() is not None:
                    say(f"demo: the worker exited ({self.worker.process.returncode}); "
                        f"see {self.worker.log_path}")
                    self.stop.set()
                if tail.done():
                    if not tail.cancelled() and tail.exception() is not None:
                        say(f"demo: reading alerts failed: {tail.exception()!r}")
                    self.stop.set()
                if self.duration is not None and now - started > self.duration + 5:
                    say(f"demo: {self.duration:.0f} s are over")
                    self.stop.set()
                if now - last_summary >= SUMMARY_EVERY_SECONDS and not self.stop.is_set():
                    last_summary = now
                    if self.view.state != summarised:
                        summarised = self.view.state
                        self._print(self.view.summary())
        finally:
            for signum in _STOP_SIGNALS:
                loop.remove_signal_handler(signum)
            self.stop.set()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(tail, 5.0)


def run_demo(settings: Settings, args: argparse.Namespace) -> int:
    """Broker, worker and simulator on this machine; the operator's view of their alerts."""
    from streams.localkafka import BrokerError, LocalKafka, create_topics

    data_dir = settings.data_dir.resolve() / "demo"
    prepare_data_dir(data_dir, args.resume)
    _log_to_file(data_dir / "demo.log")
    children: list[Child] = []
    kafka = LocalKafka(data_dir / "kafka", progress=lambda line: say(f"demo: {line}"))
    reader_gone = False
    worker_failed = False
    try:
        with _signals(_interrupt):  # SIGTERM and SIGHUP end the start-up like Ctrl-C
            say("demo: starting Apache Kafka (the first run resolves its jars with Maven; "
                "library messages go to " + str(data_dir / "demo.log") + ") ...")
            kafka.start()
            bootstrap = kafka.bootstrap
            asyncio.run(create_topics(bootstrap, [
                settings.payments_topic, settings.lending_topic, settings.alert_topic,
                settings.dead_letter_topic], settings.partitions))
            # the demo hashes with the public development key and lists the simulator's
            # people on the blacklist (TXWATCH_DEV_MODE; README, "Configuration")
            env = {**os.environ, "TXWATCH_DEV_MODE": "1", "TXWATCH_BROKER": bootstrap,
                   "TXWATCH_METRICS_PORT": str(settings.metrics_port),
                   "TXWATCH_DATA_DIR": str(data_dir)}
            command = [sys.executable, "-m", "streams.cli"]
            children.append(Child("worker", [*command, "worker"], env,
                                  data_dir / "worker.log"))
            children.append(Child("simulator", [
                *command, "simulate", "--rate", str(args.rate),
                "--labels", str(data_dir / "labels.jsonl"),
                *(["--duration", str(args.duration)] if args.duration else [])],
                env, data_dir / "simulator.log"))
            worker, simulator = children
            metrics = (f"http://127.0.0.1:{settings.metrics_port}/metrics"
                       if settings.metrics_port else f"the port in {worker.log_path}")
            say(f"demo: broker at {bootstrap}; worker (pid {worker.pid}, log {worker.log_path}) "
                f"and simulator (pid {simulator.pid}, {args.rate:g} events/s, log "
                f"{simulator.log_path}); metrics on {metrics}")
            shown = "all severities" if args.all else "medium severity and above (--all: low too)"
            say(f"demo: alerts below as they are detected, {shown}; an account's repeats of "
                f"one detector held back for {REPEAT_WINDOW_SECONDS:.0f} s; a summary every "
                f"{SUMMARY_EVERY_SECONDS:.0f} s. Ctrl-C stops everything.")
        watch = DemoWatch(Settings.from_env(env), AlertView(show_low=args.all),
                          from_beginning=not args.resume, worker=worker, simulator=simulator,
                          duration=args.duration)
        asyncio.run(watch.run())
        reader_gone = watch.reader_gone
        worker_failed = worker.process.poll() not in (None, 0, -signal.SIGTERM)
    except KeyboardInterrupt:
        say("demo: interrupted")
    except BrokerError as exc:
        say(f"demo: {exc}")
        return 1
    finally:
        with _signals(_still_stopping):
            for child in reversed(children):  # the simulator, then the worker
                child.stop()
            say("demo: stopping the broker ...")
            try:
                kafka.close()
            except Exception as exc:
                say(f"demo: stopping the broker: {type(exc).__name__}: {exc}")
    say("demo: stopped cleanly.")
    return 1 if worker_failed and not reader_gone else 0
