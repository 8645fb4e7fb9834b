"""Throughput benchmark: txwatch against the machine's ceiling and two Faust baselines.

Run ``.venv/bin/python bench/throughput.py`` (``make bench``); ``--events 50000
--repeat 1`` is a quick check. One run:

1. starts one local Kafka broker (or uses ``TXWATCH_TEST_BROKER=host:port``);
2. pre-produces the simulator's events (``streams.simulate.generate``, every
   scenario) into a payments and a lending topic, keyed by account id, routed
   as the simulator routes them;
3. measures four designs, each consuming those same topics from the beginning
   with a consumer group of its own, each in its own subprocess, repeated
   ``--repeat`` times in interleaved order:

   * ``raw_aiokafka``: an aiokafka consumer loop that decodes every message with
     orjson, the ceiling of this machine for a Python consumer;
   * ``bare_faust``: a Faust agent that only decodes, on an app configured as
     ``streams.app.create_app`` configures txwatch's (same broker settings,
     memory store, ``take_events`` batches of the same size, uvloop);
   * ``naive_table``: the textbook Faust design, one table update (a count per
     account, so one changelog write) per event in ``async for event in stream``;
   * ``txwatch``: the real worker (``streams.cli.run_worker``: every detector,
     Prometheus metrics, the account table and its changelog);

4. txwatch's event-to-alert latency at half its measured maximum rate;
5. the size of an account's state, and the time a restarted worker needs to be
   ready with the state of ``--accounts-for-state`` accounts in its changelog;
6. optionally (``--profile``) a py-spy profile of the txwatch worker.

Results go to ``docs/performance/results.json`` and ``throughput.png``; the
table is printed last, ending with the two ratios. ``docs/performance/README.md``
explains the designs and the figures.

A child reports through two files: a status file it rewrites about once a
second (progress, readiness) and a result file written when it has processed
every expected event, holding the wall and CPU clocks at its first and last
processed event. The parent reaps it with ``os.wait4`` for its peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import hashlib
import math
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

#: The repository: where results go and git is asked. Set when the bench runs from
#: its own snapshot (below), whose parent directory is not the repository.
REPO_ENV = "TXWATCH_BENCH_REPO"
REPO = Path(os.environ.get(REPO_ENV) or Path(__file__).resolve().parent.parent)
#: Set by the bench itself: a copy of streams/ and detectors/ taken when it started,
#: which the parent (re-executed) and every child import, so that edits made to the
#: working tree during a long run cannot make two runs measure different code.
SNAPSHOT_ENV = "TXWATCH_BENCH_SOURCE"
SOURCE = Path(os.environ.get(SNAPSHOT_ENV) or REPO)
# ``python bench/throughput.py`` puts bench/ first on sys.path, not the repository;
# first on the path, the source also wins over the editable install's finder.
sys.path.insert(0, str(SOURCE))

from streams import clients  # noqa: E402
from streams.evaluation.process import METRICS_LINE  # noqa: E402
from streams.settings import Settings  # noqa: E402

# Development mode, for this process and every child: the public PII key and the demo
# configuration (README, "Configuration"); the benchmark never sees personal data.
os.environ["TXWATCH_DEV_MODE"] = "1"


def dev_settings(**values: Any) -> Settings:
    """:class:`Settings` in development mode, as every child's environment has it."""
    return Settings(dev_mode=True, **values)

DESIGNS = ("raw_aiokafka", "bare_faust", "naive_table", "txwatch")
LABELS = {
    "raw_aiokafka": "raw aiokafka + orjson (ceiling)",
    "bare_faust": "bare Faust agent, decode only",
    "naive_table": "naive Faust table, 1 update/event",
    "txwatch": "txwatch worker (all detectors)",
}
DEFAULT_OUT = REPO / "docs" / "performance"
TEST_BROKER_ENV = "TXWATCH_TEST_BROKER"
#: Seconds between two progress lines of the parent.
PROGRESS_EVERY = 5.0
#: The scale-out estimate's target, payments per second.
SCALE_TARGET_RATE = 256_000

#: After the last event, a child is idle once it used less than this share of a core
#: over a second; it gives up waiting after SETTLE_TIMEOUT seconds.
IDLE_CPU_SHARE = 0.05
SETTLE_TIMEOUT = 900.0

_started = time.monotonic()


def progress(line: str) -> None:
    elapsed = time.monotonic() - _started
    print(f"[bench {int(elapsed) // 60:02d}:{int(elapsed) % 60:02d}] {line}",
          file=sys.stderr, flush=True)


def _write_json(path: Path, data: Any) -> None:
    """Write atomically, so a reader never sees half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    os.replace(tmp, path)


def _read_json(path: Path) -> Any:
    try:
        return orjson.loads(path.read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return None


def _memory_mb() -> dict[str, float]:
    """Peak (VmHWM) and current (VmRSS) resident memory of this process, in MB.

    Read in the child itself: the ``ru_maxrss`` that ``wait4`` returns for a child
    started with vfork+exec starts from the parent's peak, so it cannot tell a
    small child from a large parent.
    """
    out = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmHWM", "VmRSS"):
                out[name] = int(value.split()[0]) / 1024
    return out


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ======================================================================================
# Child side: one design in one process
# ======================================================================================


class Tracker:
    """Counts processed events in a child and reports through its status and result files.

    Parameters
    ----------
    spec
        The child's specification (see :func:`child_spec`).
    """

    def __init__(self, spec: dict[str, Any]) -> None:
        self.expected: int = spec["expected"]
        self.settle: bool = spec.get("settle", False)
        self.status_path = Path(spec["status_path"])
        self.result_path = Path(spec["result_path"])
        self.count = 0
        self.done = False
        self.finished = False
        self.first: dict[str, float] | None = None
        self.ready_info: dict[str, Any] | None = None
        self.on_done: Callable[[], None] | None = None
        self._last_status = 0.0
        self._status(time.monotonic())

    def add(self, n: int) -> None:
        self.count += n
        now = time.monotonic()
        if self.first is None:
            self.first = self._clocks(now)
            self._status(now)
        elif now - self._last_status >= 1.0:
            self._status(now)
        if not self.done and self.count >= self.expected:
            self.done = True
            self._status(now)
            last = self._clocks(now)
            if self.settle:
                threading.Thread(target=self._settle_then_finish, args=(last,),
                                 daemon=True).start()
            else:
                self._finish(last, None)

    def _settle_then_finish(self, last: dict[str, float]) -> None:
        """Wait until the process is idle, then finish.

        Work an agent deferred (derived stages fed by internal topics, producer
        buffers, changelog sends) still runs after the last input event; the
        point where the process goes idle bounds it.
        """
        samples: deque[tuple[float, float]] = deque(maxlen=6)  # 1 s of (mono, cpu)
        deadline = time.monotonic() + SETTLE_TIMEOUT
        settled = None
        while settled is None:
            now = time.monotonic()
            samples.append((now, _cpu_seconds()))
            if len(samples) == samples.maxlen:
                (t0, c0), (t1, c1) = samples[0], samples[-1]
                if (c1 - c0) / (t1 - t0) < IDLE_CPU_SHARE:
                    settled = {"mono": t0, "wall": time.time() - (now - t0), "cpu": c0,
                               "idle": True}
                elif now > deadline:
                    # Still busy: timed up to here, and marked as a lower bound.
                    settled = {"mono": t1, "wall": time.time(), "cpu": c1, "idle": False}
            if now - self._last_status >= 1.0:
                self._status(now, settling=True)  # fresh, so the parent sees no stall
            time.sleep(0.2)  # sampling the CPU clock; there is nothing to wait on
        self._finish(last, settled)

    def _finish(self, last: dict[str, float], settled: dict[str, float] | None) -> None:
        _write_json(self.result_path, {
            "first": self.first, "last": last, "settled": settled, "ready": self.ready_info,
            "memory_mb": _memory_mb(),
        })
        self.finished = True
        if self.on_done is not None:
            self.on_done()

    def ready(self, restore_seconds: float | None, accounts: int | None) -> None:
        if self.ready_info is None:
            self.ready_info = {"wall": time.time(), "restore_seconds": restore_seconds,
                               "accounts": accounts}
            self._status(time.monotonic())

    def _clocks(self, now: float) -> dict[str, float]:
        return {"mono": now, "wall": time.time(), "count": self.count, "cpu": _cpu_seconds()}

    def _status(self, now: float, *, settling: bool = False) -> None:
        self._last_status = now
        # The clocks too: a child that stalls short of its count can still be timed.
        _write_json(self.status_path, {**self._clocks(now), "ready": self.ready_info is not None,
                                       "first": self.first, "memory_mb": _memory_mb(),
                                       "settling": settling})


def _terminate_self() -> None:
    # Faust's worker turns SIGTERM into its ordinary graceful shutdown.
    os.kill(os.getpid(), signal.SIGTERM)


def child_settings(spec: dict[str, Any]) -> Settings:
    """The settings every Faust design of this child uses (TXWATCH_* variables still apply)."""
    return Settings.from_env(
        broker=spec["broker"], app_id=spec["group"], payments_topic=spec["payments_topic"],
        lending_topic=spec["lending_topic"], alert_topic=spec["alert_topic"],
        dead_letter_topic=spec["dead_letter_topic"], partitions=spec["partitions"],
        metrics_port=0, data_dir=Path(spec["data_dir"]),
    )


def bench_faust_app(settings: Settings) -> Any:
    """The Faust app txwatch's worker runs on (``streams.app.faust_app``), for a baseline."""
    from streams.app import faust_app

    return faust_app(settings)


def _use_uvloop() -> None:
    # As streams.cli.run_worker does, before the app and its loop exist.
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def run_raw_aiokafka(spec: dict[str, Any], tracker: Tracker) -> None:
    async def consume() -> None:
        consumer = clients.consumer(
            dev_settings(broker=spec["broker"]), spec["payments_topic"], spec["lending_topic"],
            group_id=spec["group"], enable_auto_commit=True, client_id="txwatch-bench-raw",
        )
        await consumer.start()
        try:
            while not tracker.finished:
                batches = await consumer.getmany(timeout_ms=500)
                for records in batches.values():
                    for record in records:
                        orjson.loads(record.value)
                    tracker.add(len(records))
        finally:
            await consumer.stop()

    _use_uvloop()
    asyncio.run(consume())


def run_faust_baseline(spec: dict[str, Any], tracker: Tracker, *, naive: bool) -> None:
    import logging

    import faust

    settings = child_settings(spec)
    logging.basicConfig(level=settings.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _use_uvloop()
    app = bench_faust_app(settings)
    topic = app.topic(
        *settings.input_topics, key_type=bytes, value_type=bytes,
        key_serializer="raw", value_serializer="raw", partitions=settings.partitions,
    )
    if naive:
        counts = app.Table("counts", default=int, partitions=settings.partitions)

        async def naive_table(stream: Any) -> None:
            async for value in stream:
                event = orjson.loads(value)
                counts[event["account_id"]] += 1  # a changelog write per event
                tracker.add(1)

        app.agent(topic, name="bench.naive_table")(naive_table)
    else:
        batch_size, within = settings.batch_size, settings.batch_within

        async def bare_faust(stream: Any) -> None:
            async for events in stream.take_events(batch_size, within=within):
                for event in events:
                    orjson.loads(event.message.value)
                tracker.add(len(events))

        app.agent(topic, name="bench.bare_faust")(bare_faust)
    tracker.on_done = _terminate_self
    (settings.data_dir / "faust").mkdir(parents=True, exist_ok=True)
    worker = faust.Worker(app, loglevel=settings.log_level, quiet=True,
                          redirect_stdouts=False, override_logging=False)
    worker.execute_from_commandline()


def run_txwatch(spec: dict[str, Any], tracker: Tracker) -> None:
    """The real worker, ``streams.cli.run_worker``, with one extra sensor that counts."""
    import streams.app as app_module
    from streams import cli
    from streams.sensors import Sensor

    runtimes: list[Any] = []

    class BenchSensor(Sensor):
        def on_batch(self, size: int, oldest_source_timestamp: float | None) -> None:
            tracker.add(size)

        def on_ready(self, restore_seconds: float) -> None:
            accounts = len(runtimes[0].table.data) if runtimes else None
            tracker.ready(restore_seconds, accounts)

    sensor = BenchSensor()
    original = app_module.create_app

    def create_app(settings: Settings, metrics: Any = None,
                   extra_sensors: tuple[Any, ...] = ()) -> Any:
        runtime = original(settings, metrics, extra_sensors=(*extra_sensors, sensor))
        runtimes.append(runtime)
        return runtime

    # run_worker imports create_app from streams.app when it runs: this is what it gets.
    app_module.create_app = create_app
    if spec["stop_when_done"]:
        tracker.on_done = _terminate_self
    cli.run_worker(child_settings(spec))


def child_main(spec_path: Path) -> int:
    spec = orjson.loads(spec_path.read_bytes())
    tracker = Tracker(spec)
    design = spec["design"]
    if design == "raw_aiokafka":
        run_raw_aiokafka(spec, tracker)
    elif design == "bare_faust":
        run_faust_baseline(spec, tracker, naive=False)
    elif design == "naive_table":
        run_faust_baseline(spec, tracker, naive=True)
    elif design == "txwatch":
        run_txwatch(spec, tracker)
    else:
        message = f"unknown design {design!r}"
        raise ValueError(message)
    return 0


# ======================================================================================
# Parent side
# ======================================================================================


@dataclass
class Topics:
    """Names of one set of topics (input, output) and the group/app that reads them."""

    payments: str
    lending: str
    alerts: str
    dead_letters: str

    @classmethod
    def under(cls, prefix: str) -> Topics:
        return cls(f"{prefix}.payments", f"{prefix}.lending", f"{prefix}.alerts",
                   f"{prefix}.dead-letters")

    def inputs(self) -> tuple[str, str]:
        return (self.payments, self.lending)

    def all(self) -> list[str]:
        return [self.payments, self.lending, self.alerts, self.dead_letters]


@dataclass
class ChildOutcome:
    design: str
    run_id: str
    result: dict[str, Any] | None
    exit_code: int | None
    process_cpu_seconds: float
    spawned_wall: float
    log_path: Path
    loadavg: tuple[float, float, float]

    @property
    def ok(self) -> bool:
        return self.result is not None

    @property
    def peak_rss_mb(self) -> float:
        """The child's own VmHWM when it reached its count (NaN if it never did)."""
        if self.result is None:
            return math.nan
        return float(self.result.get("memory_mb", {}).get("VmHWM", math.nan))

    def metrics(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "design": self.design, "run_id": self.run_id, "ok": self.ok,
            "exit_code": self.exit_code, "peak_rss_mb": round(self.peak_rss_mb, 1),
            "process_cpu_seconds": round(self.process_cpu_seconds, 2),
            "loadavg_at_end": self.loadavg,
        }
        if self.result is None:
            return out
        first, last = self.result["first"], self.result["last"]
        events = last["count"] - first["count"]
        seconds = last["mono"] - first["mono"]
        cpu = last["cpu"] - first["cpu"]
        out.update({
            "events_total": last["count"],
            "events_timed": events,
            "startup_seconds": round(first["wall"] - self.spawned_wall, 2),
            # first to last input event
            "events_per_s_input": round(events / seconds, 1) if seconds > 0 else None,
            "cpu_s_per_1k_events_input": round(cpu / events * 1000, 5) if events else None,
        })
        settled = self.result.get("settled")
        if settled:
            # first input event to idle: the work deferred past the last event included
            out["drain_seconds"] = round(settled["mono"] - last["mono"], 2)
            out["drained_to_idle"] = settled.get("idle", True)
            seconds = settled["mono"] - first["mono"]
            cpu = settled["cpu"] - first["cpu"]
        out.update({
            "seconds": round(seconds, 3),
            "events_per_s": round(events / seconds, 1) if seconds > 0 else None,
            "cpu_s_per_1k_events": round(cpu / events * 1000, 5) if events else None,
        })
        if self.result.get("stalled_missing"):
            out["stalled_missing_events"] = self.result["stalled_missing"]
        return out


class Child:
    """One design in a subprocess (optionally under a profiler)."""

    def __init__(self, workdir: Path, design: str, run_id: str, spec: dict[str, Any],
                 prefix: Sequence[str] = ()) -> None:
        self.design = design
        self.run_id = run_id
        self.status_path = workdir / f"{run_id}.status.json"
        self.result_path = workdir / f"{run_id}.result.json"
        self.log_path = workdir / f"{run_id}.log"
        spec = {**spec, "design": design, "status_path": str(self.status_path),
                "result_path": str(self.result_path)}
        self.spec = spec
        spec_path = workdir / f"{run_id}.spec.json"
        _write_json(spec_path, spec)
        command = [*prefix, sys.executable, str(Path(__file__).resolve()), "--child",
                   str(spec_path)]
        self._log = self.log_path.open("ab")
        self.spawned_wall = time.time()
        self.proc = subprocess.Popen(command, cwd=REPO, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        _children.add(self.proc.pid)
        self._rusage: resource.struct_rusage | None = None
        self.exit_code: int | None = None
        self._last_progress = time.monotonic()
        self._last_count: tuple[int, float] | None = None

    # -- waiting ------------------------------------------------------------------------
    def status(self) -> dict[str, Any] | None:
        status: dict[str, Any] | None = _read_json(self.status_path)
        return status

    def result(self) -> dict[str, Any] | None:
        result: dict[str, Any] | None = _read_json(self.result_path)
        return result

    def poll_exit(self) -> bool:
        if self._rusage is not None:
            return True
        pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
        if pid == 0:
            return False
        self._reaped(status, usage)
        return True

    def _reaped(self, status: int, usage: resource.struct_rusage) -> None:
        self._rusage = usage
        self.exit_code = os.waitstatus_to_exitcode(status)
        self.proc.returncode = self.exit_code  # reaped here, not by Popen
        _children.discard(self.proc.pid)
        self._log.close()

    def report_progress(self, label: str) -> None:
        now = time.monotonic()
        if now - self._last_progress < PROGRESS_EVERY:
            return
        status = self.status()
        if status is None:
            progress(f"  {label}: starting ...")
        else:
            count = status["count"]
            rate = ""
            if self._last_count is not None and status["mono"] > self._last_count[1]:
                recent = (count - self._last_count[0]) / (status["mono"] - self._last_count[1])
                rate = f", {recent:,.0f}/s"
            self._last_count = (count, status["mono"])
            ready = "" if status.get("ready") or count else " (waiting for assignment/recovery)"
            if status.get("settling"):
                ready = " (all input processed; waiting for deferred work to finish)"
                rate = ""
            progress(f"  {label}: {count:,}/{self.spec['expected']:,} events{rate}{ready}")
        self._last_progress = now

    def wait(self, predicate: Callable[[], bool], timeout: float, label: str, what: str) -> bool:
        """Wait until ``predicate()`` or the child's exit; False on exit or timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            if self.poll_exit():
                return predicate()
            self.report_progress(label)
            time.sleep(0.2)  # polling a child's files; there is no event to wait on
        progress(f"  {label}: timed out after {timeout:.0f} s waiting for {what}")
        return False

    def finish(self, timeout: float = 60.0) -> ChildOutcome:
        """Stop the child and reap it.

        A child that reached its count stops itself: it gets half of ``timeout`` to
        do so before SIGTERM; SIGKILL after ``timeout``.
        """
        started = time.monotonic()
        stops_itself = self.spec["stop_when_done"] and self.result() is not None
        signalled = False
        while not self.poll_exit():
            waited = time.monotonic() - started
            if not signalled and (not stops_itself or waited > timeout / 2):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGTERM)
                signalled = True
            if waited > timeout:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                _, wait_status, killed_usage = os.wait4(self.proc.pid, 0)
                self._reaped(wait_status, killed_usage)
                break
            time.sleep(0.1)  # polling the child's exit against a deadline
        usage = self._rusage
        assert usage is not None
        result = self.result()
        last_status = self.status()
        if result is None and last_status and last_status.get("first") \
                and last_status["count"] > 0:
            # Stalled short of its count: timed up to its last progress, and marked.
            missing = self.spec["expected"] - last_status["count"]
            progress(f"  {self.run_id}: stalled {missing:,} events short; timed up to its "
                     "last progress")
            result = {"first": last_status["first"], "last": last_status, "ready": None,
                      "memory_mb": last_status.get("memory_mb", {}),
                      "stalled_missing": missing}
        return ChildOutcome(
            design=self.design, run_id=self.run_id, result=result,
            exit_code=self.exit_code, process_cpu_seconds=usage.ru_utime + usage.ru_stime,
            spawned_wall=self.spawned_wall, log_path=self.log_path, loadavg=os.getloadavg(),
        )

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def metrics_url(self) -> str | None:
        if not self.log_path.exists():
            return None
        found = METRICS_LINE.search(self.log_path.read_bytes())
        return found.group(1).decode() if found else None


#: Pids of running children, killed if the parent is interrupted.
_children: set[int] = set()


def _kill_children() -> None:
    for pid in list(_children):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        _children.discard(pid)


#: Seconds without progress after which a child short of its count is timed as it is.
STALL_SECONDS = 30.0


def _has_result_or_stalled(child: Child) -> bool:
    if child.result() is not None:
        return True
    status = child.status()
    if not status or not status.get("first"):
        return False
    return time.time() - status["wall"] > STALL_SECONDS


def child_spec(broker: str, topics: Topics, group: str, expected: int, partitions: int,
               data_dir: Path, *, stop_when_done: bool = True,
               settle: bool = False) -> dict[str, Any]:
    return {
        "settle": settle,
        "broker": broker, "group": group, "payments_topic": topics.payments,
        "lending_topic": topics.lending, "alert_topic": topics.alerts,
        "dead_letter_topic": topics.dead_letters, "partitions": partitions,
        "expected": expected, "data_dir": str(data_dir), "stop_when_done": stop_when_done,
    }


# -- Kafka helpers ------------------------------------------------------------------------


async def create_topics(bootstrap: str, names: Iterable[str], partitions: int,
                        configs: dict[str, str] | None = None) -> None:
    await clients.create_topics(dev_settings(broker=bootstrap), names, partitions,
                                replication_factor=1, configs=configs, client_id="txwatch-bench")


async def delete_topics(bootstrap: str, prefixes: Sequence[str]) -> list[str]:
    """Delete every topic whose name starts with one of ``prefixes``; return them."""
    admin = clients.admin(dev_settings(broker=bootstrap), client_id="txwatch-bench")
    await admin.start()
    try:
        existing = await admin.list_topics()
        doomed = sorted(name for name in existing if name.startswith(tuple(prefixes)))
        if doomed:
            await admin.delete_topics(doomed)
        return doomed
    finally:
        await admin.close()


async def produce(bootstrap: str, messages: Iterable[tuple[str, bytes | None, bytes]],
                  label: str, total: int | None = None) -> int:
    """Send as fast as the producer goes; return the count once all are acknowledged."""
    producer = clients.producer(dev_settings(broker=bootstrap), linger_ms=20,
                                max_batch_size=512 * 1024, client_id="txwatch-bench")
    await producer.start()
    sent = 0
    pending: list[asyncio.Future[Any]] = []
    last = time.monotonic()
    try:
        for topic, key, value in messages:
            pending.append(await producer.send(topic, value, key=key))
            sent += 1
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
            if time.monotonic() - last >= PROGRESS_EVERY:
                last = time.monotonic()
                of = f"/{total:,}" if total else ""
                progress(f"  {label}: {sent:,}{of} produced")
        await producer.flush()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    progress(f"  {label}: {sent:,} produced and acknowledged")
    return sent


def simulator_messages(seed: int, events: int, accounts: int,
                       topics: Topics) -> list[tuple[str, bytes, bytes, str]]:
    """``(topic, key, value, event_id)`` of the simulator's events, every scenario on."""
    from streams.simulate import encode, generate, message_key, topic_for

    routing = dev_settings(payments_topic=topics.payments, lending_topic=topics.lending)
    traffic = generate(seed, events=events, accounts=accounts)
    out = []
    for event in [*traffic, *traffic.drain()]:
        out.append((topic_for(event["event_type"], routing), message_key(event["account_id"]),
                    encode(event), event["event_id"]))
    return out


# -- configuration drift ------------------------------------------------------------------


def changelog_topic_for(settings: Settings) -> str:
    from streams.app import create_app

    return str(create_app(settings).table.changelog_topic.get_topic_name())


# -- phase: throughput --------------------------------------------------------------------


def run_throughput(args: argparse.Namespace, broker: str, topics: Topics, expected: int,
                   workdir: Path, tag: str) -> tuple[list[ChildOutcome], dict[str, str]]:
    designs = [d for d in DESIGNS if d in args.designs]
    outcomes: list[ChildOutcome] = []
    changelogs: dict[str, str] = {}
    timeout = 180 + expected / 250 + SETTLE_TIMEOUT
    for rnd in range(args.repeat):
        # Interleaved: each round starts one design later, so drift in the machine's
        # load spreads over all designs instead of hitting the last one.
        order = designs[rnd % len(designs):] + designs[:rnd % len(designs)]
        for design in order:
            run_id = f"{design}-r{rnd + 1}"
            group = f"bench-{tag}-{run_id}"
            out_topics = Topics(topics.payments, topics.lending,
                                f"bench.{tag}.{run_id}.alerts",
                                f"bench.{tag}.{run_id}.dead-letters")
            label = f"round {rnd + 1}/{args.repeat} {design}"
            progress(f"{label}: starting (group {group})")
            child = Child(workdir, design, run_id,
                          child_spec(broker, out_topics, group, expected, args.partitions,
                                     workdir / run_id, settle=design != "raw_aiokafka"))
            child.wait(functools.partial(_has_result_or_stalled, child), timeout, label,
                       "all events")
            outcome = child.finish()
            outcomes.append(outcome)
            _write_json(workdir / "runs.json", [o.metrics() for o in outcomes])
            m = outcome.metrics()
            if outcome.ok:
                progress(f"{label}: {m['events_per_s']:,.0f} events/s "
                         f"(drain {m.get('drain_seconds', 0)} s), "
                         f"{m['cpu_s_per_1k_events']:.3f} CPU s/1k events, "
                         f"peak RSS {m['peak_rss_mb']:.0f} MB (load {outcome.loadavg[0]:.1f})")
                if design == "txwatch":
                    changelogs[run_id] = f"{group}-accounts-changelog"
            else:
                progress(f"{label}: FAILED (exit {outcome.exit_code}); log tail:\n"
                         f"{child.log_tail()}")
    return outcomes, changelogs


def summarise(outcomes: Sequence[ChildOutcome]) -> dict[str, dict[str, Any]]:
    summary: dict[str, dict[str, Any]] = {}
    for design in DESIGNS:
        runs = [o.metrics() for o in outcomes if o.design == design and o.ok]
        if not runs:
            continue
        rates = [r["events_per_s"] for r in runs]
        summary[design] = {
            "label": LABELS[design],
            "runs": len(runs),
            "events_per_s": statistics.median(rates),
            "events_per_s_min": min(rates),
            "events_per_s_max": max(rates),
            "cpu_s_per_1k_events": statistics.median(r["cpu_s_per_1k_events"] for r in runs),
            "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in runs),
            "startup_seconds": statistics.median(r["startup_seconds"] for r in runs),
        }
        summary[design]["events_per_s_input"] = statistics.median(
            r["events_per_s_input"] for r in runs)
        drained = [r for r in runs if "drain_seconds" in r]
        if drained:
            summary[design]["drain_seconds"] = statistics.median(
                r["drain_seconds"] for r in drained)
            summary[design]["drained_to_idle"] = all(r["drained_to_idle"] for r in drained)
    return summary


async def read_records(bootstrap: str, topic: str, limit: int | None = None,
                       idle_seconds: float = 3.0, timeout: float = 120.0) -> list[Any]:
    """Records of ``topic`` from the beginning until ``limit`` or ``idle_seconds`` of silence."""
    consumer = clients.consumer(dev_settings(broker=bootstrap), topic, client_id="txwatch-bench")
    await consumer.start()
    records: list[Any] = []
    deadline = time.monotonic() + timeout
    quiet_since = time.monotonic()
    try:
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=250)
            got = [r for items in batch.values() for r in items]
            if got:
                records.extend(got)
                quiet_since = time.monotonic()
            if limit is not None and len(records) >= limit:
                return records[:limit]
            if time.monotonic() - quiet_since >= idle_seconds:
                break
    finally:
        await consumer.stop()
    return records


def check_changelog_format(bootstrap: str, topic: str) -> dict[str, Any]:
    """What the worker itself wrote to its changelog: key, value codec, headers."""
    from streams.state import AccountState

    records = asyncio.run(read_records(bootstrap, topic, limit=50, idle_seconds=2.0,
                                       timeout=30.0))
    if not records:
        return {"topic": topic, "checked": 0}
    decoded = 0
    for record in records:
        AccountState.loads(record.value)
        decoded += 1
    first = records[0]
    return {
        "topic": topic,
        "checked": decoded,
        "key_example": first.key.decode(),
        "key_is_account_id_utf8": all(r.key.decode().startswith("acct-") for r in records),
        "value": "AccountState.dumps() bytes (raw), AccountState.loads() round-trips",
        "headers": [list(h) for h in (first.headers or ())],
    }


# -- phase: latency -----------------------------------------------------------------------


def _quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _histogram_quantile(buckets: list[tuple[float, float]], q: float) -> float:
    """Prometheus' ``histogram_quantile``: linear inside the bucket holding the rank."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] == 0:
        return math.nan
    rank = q * buckets[-1][1]
    previous_bound, previous_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return previous_bound
            span = count - previous_count
            fraction = (rank - previous_count) / span if span else 0.0
            return previous_bound + (bound - previous_bound) * fraction
        previous_bound, previous_count = bound, count
    return previous_bound


def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return samples


def histogram_summary(samples: dict[str, list[tuple[dict[str, str], float]]],
                      name: str) -> dict[str, Any]:
    by_bound: dict[float, float] = {}
    for labels, value in samples.get(name + "_bucket", []):
        bound = float(labels["le"])
        by_bound[bound] = by_bound.get(bound, 0.0) + value
    buckets = list(by_bound.items())
    count = sum(v for _, v in samples.get(name + "_count", []))
    return {
        "count": int(count),
        "p50_ms": round(_histogram_quantile(buckets, 0.50) * 1000, 1),
        "p99_ms": round(_histogram_quantile(buckets, 0.99) * 1000, 1),
    }


async def paced_produce(bootstrap: str, messages: Sequence[tuple[str, bytes, bytes, str]],
                        rate: float) -> dict[str, int]:
    """Send at ``rate`` messages/s on a drift-free schedule; ``event_id -> timestamp ms``."""
    producer = clients.producer(dev_settings(broker=bootstrap), linger_ms=0,
                                client_id="txwatch-bench-paced")
    await producer.start()
    loop = asyncio.get_running_loop()
    stamps: dict[str, int] = {}
    started = loop.time()
    last = started
    try:
        for index, (topic, key, value, event_id) in enumerate(messages):
            delay = started + index / rate - loop.time()
            if delay > 0.001:
                await asyncio.sleep(delay)
            # The Kafka timestamp the worker sees as the event's: stamped now, explicitly.
            stamp = int(time.time() * 1000)
            await producer.send(topic, value, key=key, timestamp_ms=stamp)
            stamps[event_id] = stamp
            if loop.time() - last >= PROGRESS_EVERY:
                last = loop.time()
                achieved = (index + 1) / (loop.time() - started)
                progress(f"  latency: {index + 1:,}/{len(messages):,} sent at "
                         f"{achieved:,.0f}/s (target {rate:,.0f}/s)")
        await producer.flush()
        achieved = len(messages) / (loop.time() - started)
        progress(f"  latency: {len(messages):,} sent, {achieved:,.0f}/s achieved")
    finally:
        await producer.stop()
    return stamps


def run_latency(args: argparse.Namespace, broker: str, max_rate: float, workdir: Path,
                tag: str) -> dict[str, Any]:
    rate = args.latency_rate or max_rate / 2
    count = max(1000, int(rate * args.latency_seconds))
    topics = Topics.under(f"bench.{tag}.latency")
    progress(f"latency: {count:,} events at {rate:,.0f}/s (half of txwatch's "
             f"{max_rate:,.0f}/s), fresh topics and state")
    asyncio.run(create_topics(broker, topics.all(), args.partitions))
    messages = simulator_messages(args.seed + 1, count + 1, args.accounts, topics)
    warmup, paced = messages[0], messages[1:]
    child = Child(workdir, "txwatch", "txwatch-latency",
                  child_spec(broker, topics, f"bench-{tag}-latency", len(messages),
                             args.partitions, workdir / "latency", stop_when_done=False))
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    alerts_total = 0
    try:
        ready = child.wait(lambda: bool((child.status() or {}).get("ready")), 180,
                           "latency worker", "readiness")
        if not ready:
            return {"error": "worker not ready", "log_tail": child.log_tail()}
        # One event first, so the measured ones meet a worker already fetching.
        asyncio.run(produce(broker, [warmup[:3]], "latency warm-up"))
        child.wait(lambda: (child.status() or {}).get("count", 0) >= 1, 60,
                   "latency worker", "the warm-up event")
        stamps = asyncio.run(paced_produce(broker, paced, rate))
        done = child.wait(lambda: child.result() is not None, 120 + count / 200,
                          "latency worker", "all paced events")
        url = child.metrics_url()
        samples = scrape(url) if url and done else {}
        alerts_total = int(sum(v for _, v in samples.get("txwatch_alerts_total", [])))
    finally:
        outcome = child.finish()
    records = asyncio.run(read_records(broker, topics.alerts, limit=alerts_total or None))
    detected, handed = [], []
    for record in records:
        alert = orjson.loads(record.value)
        sources = [stamps[e] for e in alert["event_ids"] if e in stamps]
        if not sources:
            continue
        source = max(sources)  # the triggering event is the latest of an alert's events
        detected_ms = datetime.fromisoformat(alert["detected_at"]).timestamp() * 1000
        detected.append(detected_ms - source)
        handed.append(record.timestamp - source)
    result: dict[str, Any] = {
        "target_rate": round(rate, 1),
        "events": len(paced),
        "seconds": args.latency_seconds,
        "alerts": len(detected),
        "alerts_total_metric": alerts_total,
        "detected_at_minus_source_ms": {
            "p50": round(_quantile(detected, 0.5), 1), "p99": round(_quantile(detected, 0.99), 1),
            "max": round(max(detected), 1) if detected else None,
        },
        "alert_record_minus_source_ms": {
            "p50": round(_quantile(handed, 0.5), 1), "p99": round(_quantile(handed, 0.99), 1),
            "max": round(max(handed), 1) if handed else None,
        },
        "worker_peak_rss_mb": round(outcome.peak_rss_mb, 1),
        "loadavg_at_end": os.getloadavg(),
    }
    if samples:
        result["metrics_event_to_alert"] = histogram_summary(
            samples, "txwatch_event_to_alert_seconds")
        result["metrics_event_processing"] = histogram_summary(
            samples, "txwatch_event_processing_seconds")
    if outcome.result:
        first, last = outcome.result["first"], outcome.result["last"]
        result["cpu_s_per_1k_events"] = round(
            (last["cpu"] - first["cpu"]) / max(1, last["count"] - first["count"]) * 1000, 4)
    return result


# -- phase: state size and restore ----------------------------------------------------------


def sample_states(args: argparse.Namespace) -> tuple[list[bytes], dict[str, Any]]:
    """Account states after the simulator's traffic, through the real ``Monitor``, no broker."""
    from streams.app import build_monitor
    from streams.simulate import encode, generate, topic_for

    # production topic names: they are stored in each state
    settings = dev_settings()
    monitor = build_monitor(settings)
    accounts = args.state_sample_accounts
    events = accounts * args.state_events_per_account
    progress(f"state: {events:,} events over a population of {accounts:,} accounts "
             "through streams.pipeline.Monitor (no broker)")
    states: dict[Any, Any] = {}
    offsets: Counter[str] = Counter()
    started = last = time.monotonic()
    processed = 0
    for event in generate(args.seed + 2, accounts=accounts, events=events):
        topic = topic_for(event["event_type"], settings)
        monitor.process(encode(event), states, topic=topic, partition=0, offset=offsets[topic])
        offsets[topic] += 1
        processed += 1
        if time.monotonic() - last >= PROGRESS_EVERY:
            last = time.monotonic()
            progress(f"  state: {processed:,}/{events:,} events, {len(states):,} accounts")
    seconds = time.monotonic() - started
    dumps = [state.dumps() for state in states.values()]
    sizes = [len(d) for d in dumps]
    per_account = Counter(len(s.recent_ids) for s in states.values())
    info = {
        "sample_accounts_with_state": len(states),
        "sample_events": processed,
        "events_per_account_mean": round(processed / max(1, len(states)), 2),
        "bytes_mean": round(statistics.mean(sizes), 1),
        "bytes_median": statistics.median(sizes),
        "bytes_p90": round(_quantile(sizes, 0.9)),
        "bytes_p99": round(_quantile(sizes, 0.99)),
        "bytes_max": max(sizes),
        "recent_ids_histogram": dict(sorted(per_account.items())),
        "offline_monitor_events_per_s": round(processed / seconds, 1),
    }
    progress(f"state: {len(states):,} accounts, mean {info['bytes_mean']} bytes "
             f"(median {info['bytes_median']}, p99 {info['bytes_p99']}); offline Monitor "
             f"{info['offline_monitor_events_per_s']:,.0f} events/s")
    return dumps, info


def run_restore(args: argparse.Namespace, broker: str, dumps: Sequence[bytes], workdir: Path,
                tag: str) -> dict[str, Any]:
    accounts = args.accounts_for_state
    topics = Topics.under(f"bench.{tag}.restore")
    group = f"bench-{tag}-restore"
    settings = dev_settings(broker=broker, app_id=group, payments_topic=topics.payments,
                        lending_topic=topics.lending, partitions=args.partitions)
    changelog = changelog_topic_for(settings)
    progress(f"restore: writing {accounts:,} account states to {changelog} "
             "(the worker's own key and value format), then starting a worker")
    asyncio.run(create_topics(broker, topics.all(), args.partitions))
    asyncio.run(create_topics(broker, [changelog], args.partitions,
                              configs={"cleanup.policy": "compact"}))

    def records() -> Iterator[tuple[str, bytes, bytes]]:
        # Keys like the simulator's account ids; states cycle through the sample, so
        # the changelog holds realistic values for accounts that were never simulated.
        for index in range(accounts):
            yield changelog, f"acct-{index:07d}".encode(), dumps[index % len(dumps)]

    written_bytes = sum(len(dumps[i % len(dumps)]) for i in range(accounts))
    asyncio.run(produce(broker, records(), "restore changelog", accounts))
    child = Child(workdir, "txwatch", "txwatch-restore",
                  child_spec(broker, topics, group, 1, args.partitions, workdir / "restore"))
    child.wait(lambda: bool((child.status() or {}).get("ready")), 900, "restoring worker",
               "readiness")
    # Then one event, produced only now: an event waiting at offset 0 of a group that
    # never committed was, in one of our runs, never delivered to the agent after
    # recovery (see docs/performance/README.md), so "ready" is not inferred from it.
    one = simulator_messages(args.seed + 3, 1, args.accounts, topics)[0]
    produced_wall = time.time()
    asyncio.run(produce(broker, [one[:3]], "restore input"))
    child.wait(lambda: child.result() is not None, 60, "restored worker", "its first batch")
    outcome = child.finish()
    result: dict[str, Any] = {
        "accounts": accounts,
        "method": "changelog records written directly (key: account id UTF-8, value: "
                  "AccountState.dumps(), default partitioner, compacted topic), values "
                  "cycled from the sampled states",
        "changelog_bytes": written_bytes,
        "worker_peak_rss_mb": round(outcome.peak_rss_mb, 1),
        "loadavg_at_end": os.getloadavg(),
    }
    if outcome.result is None:
        status = child.status() or {}
        result["error"] = ("worker never reported ready" if not status.get("ready")
                           else "worker ready but did not process the event sent after")
        result["log_tail"] = child.log_tail()
        return result
    ready = outcome.result.get("ready") or {}
    first = outcome.result["first"]
    result.update({
        "spawn_to_ready_s": round(ready["wall"] - outcome.spawned_wall, 2) if ready else None,
        "restore_seconds_metric": round(ready.get("restore_seconds") or math.nan, 2),
        "accounts_in_table_at_ready": ready.get("accounts"),
        "event_after_ready_processed_in_s": round(first["wall"] - produced_wall, 3),
    })
    restore = ready.get("restore_seconds") or 0
    if restore > 0:
        result["restore_accounts_per_s"] = round(accounts / restore)
    progress(f"restore: ready {result['spawn_to_ready_s']} s after spawn (gauge "
             f"{result['restore_seconds_metric']} s), {result['accounts_in_table_at_ready']} "
             f"accounts; an event sent then was processed in "
             f"{result['event_after_ready_processed_in_s']} s; peak RSS "
             f"{outcome.peak_rss_mb:,.0f} MB")
    if args.profile and _py_spy() is not None:
        result["profile"] = profile_restore(args, broker, topics, group, workdir)
    return result


def profile_restore(args: argparse.Namespace, broker: str, topics: Topics, group: str,
                    workdir: Path) -> dict[str, Any]:
    """A second restart of the same app (the memory store restores in full every time),
    with py-spy attached as soon as the child runs."""
    raw = workdir / "profile-restore.raw"
    progress("profile: a second restart of the same worker, under py-spy")
    child = Child(workdir, "txwatch", "txwatch-restore-profile",
                  child_spec(broker, topics, group, 1, args.partitions,
                             workdir / "restore-profile"))
    child.wait(lambda: child.status() is not None, 60, "profiled restore", "the child")
    spy = attach_py_spy(child.proc.pid, raw, workdir / "py-spy-restore.log")
    child.wait(lambda: bool((child.status() or {}).get("ready")), 900, "profiled restore",
               "readiness")
    status = child.status() or {}
    outcome = child.finish(timeout=60)
    spy.wait(timeout=60)
    ready_s = round(status["wall"] - outcome.spawned_wall, 2) if status.get("ready") else None
    header = (f"txwatch worker restart profile: {args.accounts_for_state:,} accounts in the "
              f"changelog; py-spy record --function --gil at {PROFILE_HZ} Hz from process start to "
              f"readiness (ready {ready_s} s after spawn under the profiler).\n\n")
    data = write_profile(raw, args.out_dir / "profile-restore.txt", header)
    return {"spawn_to_ready_s_under_profiler": ready_s, **data}


# -- phase: profile -------------------------------------------------------------------------


PROFILE_CATEGORIES = (
    # (category, substring of a py-spy frame "function (file:line)"); first match wins
    ("schema validation (fastjsonschema)", "validate_https"),
    ("schema validation (fastjsonschema)", "fastjsonschema/"),
    ("txwatch codec (decode, PII hashing)", "streams/codec.py"),
    ("txwatch codec (decode, PII hashing)", "streams/events.py"),
    ("detectors", "detectors/"),
    ("river", "river/"),
    ("txwatch state + features", "streams/state.py"),
    ("txwatch state + features", "streams/features.py"),
    ("txwatch state + features", "streams/app.py"),
    ("txwatch metrics (prometheus_client)", "streams/metrics.py"),
    ("txwatch metrics (prometheus_client)", "prometheus_client/"),
    ("txwatch sensors fan-out", "streams/sensors.py"),
    ("txwatch agent glue", "streams/agents.py"),
    ("txwatch stages/rules/feedback", "streams/stages.py"),
    ("txwatch stages/rules/feedback", "streams/rules.py"),
    ("txwatch stages/rules/feedback", "streams/feedback.py"),
    ("txwatch stages/rules/feedback", "streams/portfolio/"),
    ("txwatch pipeline", "streams/pipeline.py"),
    ("txwatch alerts", "streams/alerts.py"),
    ("process entry (cli, bench harness)", "streams/cli.py"),
    ("process entry (cli, bench harness)", "throughput.py"),
    ("process entry (cli, bench harness)", "threading.py"),
    ("txwatch other", "streams/"),
    ("faust", "faust/"),
    ("mode (faust's service framework)", "mode/"),
    ("aiokafka", "aiokafka/"),
    ("event loop (uvloop/asyncio)", "asyncio/"),
    ("event loop (uvloop/asyncio)", "uvloop/"),
    ("event loop (uvloop/asyncio)", "selectors.py"),
    ("generated code (dataclasses)", "<string>"),
)


def _category(frame: str) -> str:
    for category, needle in PROFILE_CATEGORIES:
        if needle in frame:
            return category
    return "other"


def summarise_profile(raw_path: Path, top: int = 30) -> tuple[str, dict[str, Any]]:
    """Self and inclusive time per function, and self time per category, from py-spy raw."""
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    category_self: Counter[str] = Counter()
    category_inclusive: Counter[str] = Counter()
    total = 0
    for line in raw_path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        self_time[frames[-1]] += count
        category_self[_category(frames[-1])] += count
        for frame in set(frames):
            inclusive[frame] += count
        for category in {_category(f) for f in frames}:
            category_inclusive[category] += count
    if total == 0:
        return "no samples\n", {}

    def pct(n: int) -> str:
        return f"{100 * n / total:5.1f}%"

    lines = [f"py-spy samples: {total:,} (the GIL holder only: Python work on the CPU)",
             "", "Self time by category (the leaf frame's file):"]
    lines += [f"  {pct(n)}  {name}" for name, n in category_self.most_common()]
    # Entry frames sit under everything; inclusive figures for them say nothing.
    for name in ("process entry (cli, bench harness)", "other"):
        category_inclusive.pop(name, None)
    lines += ["", "Inclusive time by category (any frame of the stack; entry frames left out):"]
    lines += [f"  {pct(n)}  {name}" for name, n in category_inclusive.most_common()]
    lines += ["", f"Top {top} functions by self time:"]
    lines += [f"  {pct(n)}  {frame}" for frame, n in self_time.most_common(top)]
    lines += ["", f"Top {top} functions by inclusive time:"]
    lines += [f"  {pct(n)}  {frame}" for frame, n in inclusive.most_common(top)]
    data = {
        "samples": total,
        "self_by_category": {k: round(100 * v / total, 1) for k, v in category_self.most_common()},
        "inclusive_by_category": {k: round(100 * v / total, 1)
                                  for k, v in category_inclusive.most_common()},
        "top_self": [[f, round(100 * n / total, 1)] for f, n in self_time.most_common(top)],
        "top_inclusive": [[f, round(100 * n / total, 1)] for f, n in inclusive.most_common(top)],
    }
    return "\n".join(lines) + "\n", data


def _py_spy() -> Path | None:
    path = Path(sys.executable).parent / "py-spy"
    return path if path.exists() else None


#: py-spy's sampling rate. Sampling pauses the process: --nonblocking's unsynchronised
#: reads truncated a fifth of the stacks in our runs. --gil keeps only the thread that
#: holds the GIL, i.e. Python work on the CPU: without it, the Faust consumer thread's
#: and the /metrics server's waits counted as busy.
PROFILE_HZ = 200


def attach_py_spy(pid: int, raw_path: Path, log_path: Path) -> subprocess.Popen[bytes]:
    """Sample a running child until it exits (GIL-holding stacks, by function)."""
    py_spy = _py_spy()
    assert py_spy is not None
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [str(py_spy), "record", "--pid", str(pid), "--function", "--gil",
             "--rate", str(PROFILE_HZ),
             "--format", "raw", "--output", str(raw_path)],
            stdout=log, stderr=subprocess.STDOUT)


def write_profile(raw_path: Path, out_path: Path, header: str) -> dict[str, Any]:
    if not raw_path.exists():
        return {"error": f"py-spy wrote no profile to {raw_path}"}
    text, data = summarise_profile(raw_path)
    out_path.write_text(header + text)
    progress(f"profile: summary written to {out_path}")
    return data


def run_profile(args: argparse.Namespace, broker: str, topics: Topics,
                messages: Sequence[tuple[str, bytes, bytes, str]], workdir: Path, tag: str,
                out_dir: Path) -> dict[str, Any]:
    """txwatch over the first input events with py-spy attached from its first batch on.

    ``messages`` (the first ``--profile-events`` of the input) are produced to
    topics of their own, so that the worker stops at their end. Attaching once the
    worker is processing keeps imports and the group join out of the profile: it
    shows the steady state the throughput table measures.
    """
    if _py_spy() is None:
        progress("profile: py-spy is not installed in this environment (pip install py-spy)")
        return {"error": "py-spy not installed"}
    raw = workdir / "profile-txwatch.raw"
    group = f"bench-{tag}-profile"
    out_topics = Topics.under(f"bench.{tag}.profile")
    rename = {topics.payments: out_topics.payments, topics.lending: out_topics.lending}
    asyncio.run(create_topics(broker, out_topics.inputs(), args.partitions))
    expected = asyncio.run(produce(broker, ((rename[t], k, v) for t, k, v, _ in messages),
                                   "profile input", len(messages)))
    progress(f"profile: txwatch over {expected:,} events, py-spy attached at the first batch")
    child = Child(workdir, "txwatch", "txwatch-profile",
                  child_spec(broker, out_topics, group, expected, args.partitions,
                             workdir / "profile", settle=True))
    child.wait(lambda: (child.status() or {}).get("count", 0) > 0, 180, "profiled txwatch",
               "its first batch")
    spy = attach_py_spy(child.proc.pid, raw, workdir / "py-spy.log")
    child.wait(lambda: child.result() is not None, 180 + expected / 150, "profiled txwatch",
               "all events")
    outcome = child.finish(timeout=120)
    spy.wait(timeout=60)
    metrics = outcome.metrics()
    header = (f"txwatch worker profile: {expected:,} pre-produced simulator events, "
              f"{args.partitions} partitions; py-spy record --function --gil at {PROFILE_HZ} Hz, "
              f"attached from the first batch to the exit.\n"
              f"Under the profiler: {metrics.get('events_per_s') or 0:,.0f} events/s.\n\n")
    data = write_profile(raw, out_dir / "profile.txt", header)
    return {"events": expected, "events_per_s_under_profiler": metrics.get("events_per_s"),
            **data}


# -- report ---------------------------------------------------------------------------------


def scale_out(summary: dict[str, dict[str, Any]], state: dict[str, Any] | None,
              restore: dict[str, Any] | None, mean_message_bytes: float,
              target: int = SCALE_TARGET_RATE, utilisation: float = 0.5,
              accounts: int = 10_000_000) -> dict[str, Any]:
    """An on-paper sizing for ``target`` events/s from the measured figures.

    A Faust worker runs its agents on one thread: one worker per core. Its capacity
    is taken from its CPU cost per event (``1000 / cpu_s_per_1k``), which a shared,
    overloaded machine disturbs far less than the wall-clock rate; the sizing from
    the wall-clock rate is given beside it. Workers run at ``utilisation`` of their
    capacity, the load at which the latency was measured.
    """
    tx = summary.get("txwatch")
    if not tx:
        return {}
    per_core = 1000 / tx["cpu_s_per_1k_events"]
    workers = math.ceil(target / (per_core * utilisation))
    workers_by_rate = math.ceil(target / (tx["events_per_s"] * utilisation))
    out: dict[str, Any] = {
        "target_events_per_s": target,
        "assumed_utilisation": utilisation,
        "per_worker_events_per_cpu_s": round(per_core),
        "workers": workers,
        "per_worker_events_per_s_measured": tx["events_per_s"],
        "workers_by_measured_rate": workers_by_rate,
        # Partitions bound a group's parallelism; a power of two with room to grow.
        "input_partitions": 2 ** math.ceil(math.log2(workers)),
        "input_mb_per_s": round(target * mean_message_bytes / 1e6, 1),
        "assumed_accounts": accounts,
    }
    if state:
        bytes_per_account = state["bytes_mean"]
        out["changelog_gb"] = round(accounts * bytes_per_account / 1e9, 2)
        # At scale nearly every event of a batch touches an account not yet in that
        # batch: about one changelog record per event.
        out["changelog_mb_per_s"] = round(target * bytes_per_account / 1e6, 1)
    per_worker_accounts = accounts / workers
    out["accounts_per_worker"] = round(per_worker_accounts)
    if restore and restore.get("restore_accounts_per_s"):
        out["restore_s_per_worker"] = round(
            per_worker_accounts / restore["restore_accounts_per_s"], 1)
    if restore and restore.get("worker_peak_rss_mb"):
        extra = restore["worker_peak_rss_mb"] - tx["peak_rss_mb"]
        if extra > 0:
            out["rss_bytes_per_account"] = round(extra * 1024 * 1024 / restore["accounts"])
            out["rss_gb_per_worker"] = round(
                out["rss_bytes_per_account"] * per_worker_accounts / 1e9, 2)
    return out


def format_table(summary: dict[str, dict[str, Any]], args: argparse.Namespace,
                 expected: int) -> list[str]:
    lines = [
        f"Throughput: {expected:,} pre-produced simulator events, {args.partitions} partitions, "
        f"median of {args.repeat} interleaved run(s), {os.cpu_count()} cores (shared, noisy)",
        "events/s and CPU: from the first event to the process going idle after the last one "
        "(the drain: work deferred past it); input ev/s: first to last input event",
        f"{'design':34} {'events/s':>9} {'(min - max)':>19} {'input ev/s':>10} {'drain s':>7} "
        f"{'CPU s/1k ev':>11} {'ev/CPU-s':>9} {'peak RSS MB':>11} {'vs bare':>7}",
    ]
    bare = summary.get("bare_faust", {}).get("events_per_s")
    for design in DESIGNS:
        row = summary.get(design)
        if row is None:
            lines.append(f"{LABELS[design]:34} {'(not run or failed)':>9}")
            continue
        spread = f"({row['events_per_s_min']:,.0f} - {row['events_per_s_max']:,.0f})"
        versus = f"{row['events_per_s'] / bare:.2f}x" if bare else "-"
        drain = f"{row['drain_seconds']:.1f}" if "drain_seconds" in row else "-"
        if not row.get("drained_to_idle", True):
            drain = ">" + drain  # still busy when the bench stopped waiting
        lines.append(
            f"{LABELS[design]:34} {row['events_per_s']:>9,.0f} {spread:>19} "
            f"{row['events_per_s_input']:>10,.0f} {drain:>7} "
            f"{row['cpu_s_per_1k_events']:>11.3f} {1000 / row['cpu_s_per_1k_events']:>9,.0f} "
            f"{row['peak_rss_mb']:>11.0f} {versus:>7}")
    lines.append(f"{'quix streams (optional design 5)':34} skipped: not installed, not measured")
    tx = summary.get("txwatch", {}).get("cpu_s_per_1k_events")
    by_cpu = [f"txwatch / {name} = {summary[d]['cpu_s_per_1k_events'] / tx:.2f}x"
              for d, name in (("bare_faust", "bare Faust"), ("naive_table", "naive table"))
              if tx and d in summary]
    if by_cpu:
        lines.append("By CPU cost per event (less sensitive to the machine's load): "
                     + ", ".join(by_cpu))
    return lines


def ratio_lines(summary: dict[str, dict[str, Any]]) -> list[str]:
    tx = summary.get("txwatch", {}).get("events_per_s")

    def ratio(other: str) -> str:
        base = summary.get(other, {}).get("events_per_s")
        return f"{tx / base:.2f}x" if tx and base else "n/a"

    return [f"txwatch / bare Faust = {ratio('bare_faust')}",
            f"txwatch / naive table = {ratio('naive_table')}"]


def write_chart(summary: dict[str, dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    designs = [d for d in DESIGNS if d in summary]
    labels = [LABELS[d] for d in designs]
    colours = ["#8c8c8c", "#4c72b0", "#dd8452", "#c44e52"][: len(designs)]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8))
    panels = [
        ("events/s (median; bars: min-max)", "events_per_s", "{:,.0f}"),
        ("CPU seconds per 1,000 events", "cpu_s_per_1k_events", "{:.3f}"),
        ("peak RSS, MB", "peak_rss_mb", "{:,.0f}"),
    ]
    for axis, (heading, key, fmt) in zip(axes, panels, strict=True):
        values = [summary[d][key] for d in designs]
        errors = None
        if key == "events_per_s":
            errors = [[summary[d]["events_per_s"] - summary[d]["events_per_s_min"]
                       for d in designs],
                      [summary[d]["events_per_s_max"] - summary[d]["events_per_s"]
                       for d in designs]]
        axis.barh(labels, values, color=colours, xerr=errors, capsize=3)
        axis.invert_yaxis()
        axis.set_title(heading, fontsize=10)
        if key == "events_per_s":
            axis.set_xscale("log")
            axis.set_xlim(left=10 ** math.floor(math.log10(min(values))) / 2,
                          right=max(values) * 4)
        for y, value in enumerate(values):
            axis.text(value, y, " " + fmt.format(value), va="center", fontsize=8)
        axis.tick_params(axis="y", labelsize=8)
        if axis is not axes[0]:
            axis.set_yticklabels([])
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- main -----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/throughput.py",
        description="txwatch throughput against raw aiokafka, a bare Faust agent and a "
                    "naive Faust table; latency, state size and restart time.",
    )
    parser.add_argument("--events", type=int, default=500_000,
                        help="simulator events pre-produced and consumed by every design")
    parser.add_argument("--partitions", type=int, default=4, help="partitions per input topic")
    parser.add_argument("--repeat", type=int, default=3, help="runs per design (medians)")
    parser.add_argument("--seed", type=int, default=7, help="simulator seed")
    parser.add_argument("--accounts", type=int, default=None,
                        help="simulator population (default: the simulator's, 5,000)")
    parser.add_argument("--designs", nargs="+", default=list(DESIGNS), choices=DESIGNS,
                        help="designs to measure (default: all)")
    parser.add_argument("--latency-seconds", type=float, default=60.0,
                        help="duration of the paced latency run")
    parser.add_argument("--latency-rate", type=float, default=None,
                        help="events/s of the latency run (default: half txwatch's median)")
    parser.add_argument("--accounts-for-state", type=int, default=1_000_000,
                        help="accounts whose state the restarted worker restores")
    parser.add_argument("--state-sample-accounts", type=int, default=50_000,
                        help="population whose traffic goes through Monitor for the states")
    parser.add_argument("--state-events-per-account", type=int, default=4,
                        help="simulated events per sampled account (a few)")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-restore", action="store_true",
                        help="skip the restore (state size is still measured)")
    parser.add_argument("--profile", action="store_true",
                        help="also run txwatch once under py-spy; writes profile.txt")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT,
                        help="where results.json, throughput.png (and profile.txt) go")
    parser.add_argument("--profile-events", type=int, default=100_000,
                        help="events of the profiled txwatch run (first N of the input)")
    parser.add_argument("--no-snapshot", action="store_true",
                        help="import streams/ and detectors/ from the working tree as it is "
                             "when each process starts (default: a copy taken at the start)")
    parser.add_argument("--keep-logs", action="store_true",
                        help="keep the children's logs and files (kept anyway on failure)")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.accounts is None:
        from streams.simulate import DEFAULT_ACCOUNTS

        args.accounts = DEFAULT_ACCOUNTS
    return args


def snapshot_source() -> Path:
    """Copy the code under test, this bench, and deploy/kafka (read by the broker launcher)."""
    target = Path(tempfile.mkdtemp(prefix="txwatch-bench-src-"))
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("streams", "detectors"):
        shutil.copytree(REPO / name, target / name, ignore=ignore)
    shutil.copytree(REPO / "deploy" / "kafka", target / "deploy" / "kafka", ignore=ignore)
    (target / "bench").mkdir()
    shutil.copy2(Path(__file__).resolve(), target / "bench" / "throughput.py")
    return target


def _interrupt(signum: int, frame: Any) -> None:
    # SIGTERM as Ctrl-C: the finally blocks stop the children and the broker.
    raise KeyboardInterrupt


def run_from_snapshot(snapshot: Path, argv: Sequence[str]) -> int:
    """Re-run this bench from its snapshot; pass SIGTERM/Ctrl-C on so it cleans up."""
    env = {**os.environ, SNAPSHOT_ENV: str(snapshot), REPO_ENV: str(REPO)}
    proc = subprocess.Popen([sys.executable, str(snapshot / "bench" / "throughput.py"), *argv],
                            env=env)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGTERM)
        return proc.wait()


def source_info() -> dict[str, Any]:
    """What was measured: the commit, the uncommitted files, a digest of the copy."""
    def git(*command: str) -> str:
        try:
            return subprocess.run(["git", *command], cwd=REPO, capture_output=True, text=True,
                                  timeout=10, check=False).stdout
        except (OSError, subprocess.TimeoutExpired):
            return ""

    digest = hashlib.sha256()
    for path in sorted(SOURCE.glob("streams/**/*")) + sorted(SOURCE.glob("detectors/**/*")):
        if path.is_file() and path.suffix in (".py", ".json"):
            digest.update(str(path.relative_to(SOURCE)).encode() + path.read_bytes())
    dirty = [line[3:] for line in git("status", "--porcelain", "--", "streams", "detectors")
             .splitlines()]
    info: dict[str, Any] = {"commit": git("rev-parse", "--short", "HEAD").strip(),
                            "uncommitted_files": dirty, "source_sha256": digest.hexdigest()[:16],
                            "snapshot": SOURCE != REPO}
    with contextlib.suppress(Exception):
        import detectors.registry as registry

        DEFAULT_CONFIG = registry.DEFAULT_CONFIG
        # Account-stage detectors, and (when the registry has them) derived-stage ones.
        info["detectors_registered"] = sorted(
            {*registry.DETECTORS, *getattr(registry, "STAGE_DETECTORS", {})})
        info["detectors_enabled"] = sorted(DEFAULT_CONFIG["detectors"])
        info["detector_config_version"] = DEFAULT_CONFIG.get("version")
    return info


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        return child_main(args.child)
    signal.signal(signal.SIGTERM, _interrupt)
    if not os.environ.get(SNAPSHOT_ENV) and not args.no_snapshot:
        snapshot = snapshot_source()
        progress(f"measuring a copy of streams/, detectors/ and this bench taken now: "
                 f"{snapshot}")
        try:
            return run_from_snapshot(snapshot, sys.argv[1:] if argv is None else argv)
        finally:
            shutil.rmtree(snapshot, ignore_errors=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    workdir = Path(tempfile.mkdtemp(prefix="txwatch-bench-"))
    progress(f"bench {tag}: {args.events:,} events, {args.partitions} partitions, "
             f"{args.repeat} repeat(s); child logs in {workdir}")
    results: dict[str, Any] = {
        "started_at": datetime.now().astimezone().isoformat(timespec="seconds"),
        "parameters": {k: (str(v) if isinstance(v, Path) else v)
                       for k, v in vars(args).items() if k != "child"},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(),
                    "loadavg_at_start": os.getloadavg()},
        "quix_streams": "skipped (optional design 5; not installed, not measured)",
        "source": source_info(),
    }
    enabled = results["source"].get("detectors_enabled")
    if enabled != results["source"].get("detectors_registered"):
        progress(f"WARNING: the default detector configuration enables {enabled}, not every "
                 f"registered detector {results['source'].get('detectors_registered')}")
    external = os.environ.get(TEST_BROKER_ENV, "").strip()
    summary: dict[str, dict[str, Any]] = {}
    expected = 0
    try:
        with contextlib.ExitStack() as stack:
            if external:
                broker = external
                progress(f"broker: {broker} ({TEST_BROKER_ENV})")
            else:
                from streams.localkafka import LocalKafka

                kafka = stack.enter_context(LocalKafka(heap="1g", progress=progress))
                broker = kafka.bootstrap
            results["broker"] = "external" if external else "LocalKafka (Apache Kafka 4.1.1)"

            # -- the shared input ------------------------------------------------------
            topics = Topics.under(f"bench.{tag}")
            asyncio.run(create_topics(broker, topics.inputs(), args.partitions))
            progress(f"generating {args.events:,} simulator events (seed {args.seed}, "
                     f"{args.accounts:,} accounts, every scenario)")
            messages = simulator_messages(args.seed, args.events, args.accounts, topics)
            by_topic = Counter(m[0] for m in messages)
            mean_bytes = statistics.mean(len(m[2]) for m in messages)
            progress(f"producing {len(messages):,} events: "
                     + ", ".join(f"{t} {n:,}" for t, n in by_topic.items()))
            expected = asyncio.run(produce(
                broker, ((t, k, v) for t, k, v, _ in messages), "pre-produce", len(messages)))
            results["input"] = {"events": expected, "by_topic": dict(by_topic),
                                "mean_message_bytes": round(mean_bytes, 1),
                                "accounts": len({m[1] for m in messages})}
            profile_messages = messages[:args.profile_events] if args.profile else []
            del messages

            # -- throughput ------------------------------------------------------------
            outcomes, changelogs = run_throughput(args, broker, topics, expected, workdir, tag)
            summary = summarise(outcomes)
            results["runs"] = [o.metrics() for o in outcomes]
            results["summary"] = summary
            if changelogs:
                first = sorted(changelogs.values())[0]
                results["changelog_format"] = check_changelog_format(broker, first)

            # -- latency ---------------------------------------------------------------
            tx_rate = summary.get("txwatch", {}).get("events_per_s")
            if not args.skip_latency and (tx_rate or args.latency_rate):
                results["latency"] = run_latency(args, broker, tx_rate or 0, workdir, tag)

            # -- state -----------------------------------------------------------------
            dumps, state_info = sample_states(args)
            results["state"] = state_info
            if not args.skip_restore:
                results["restore"] = run_restore(args, broker, dumps, workdir, tag)
            del dumps

            # -- profile ---------------------------------------------------------------
            if args.profile:
                results["profile"] = run_profile(args, broker, topics, profile_messages,
                                                 workdir, tag, args.out_dir)

            if external:
                # Inputs, outputs and changelogs of this run all carry its tag.
                with contextlib.suppress(Exception):
                    doomed = asyncio.run(delete_topics(broker, [f"bench.{tag}.",
                                                                f"bench-{tag}-"]))
                    progress(f"deleted {len(doomed)} topics of this run from {broker}")
            progress("stopping the broker" if not external else "done with the broker")
    finally:
        _kill_children()

    results["scale_out"] = scale_out(summary, results.get("state"), results.get("restore"),
                                     results.get("input", {}).get("mean_message_bytes", 0.0))
    results["ratios"] = ratio_lines(summary)
    results["finished_at"] = datetime.now().astimezone().isoformat(timespec="seconds")
    _write_json(args.out_dir / "results.json", results)
    if summary:
        write_chart(summary, args.out_dir / "throughput.png",
                    f"txwatch throughput, {expected:,} events, {args.partitions} partitions, "
                    f"median of {args.repeat}, {os.cpu_count()} shared cores")
    progress(f"wrote {args.out_dir / 'results.json'} and {args.out_dir / 'throughput.png'}")

    ok = bool(summary.get("txwatch")) and all(r.get("ok") for r in results.get("runs", []))
    if ok and not args.keep_logs:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        progress(f"children's logs kept in {workdir}")
    print_report(results, summary, args, expected)
    return 0 if summary.get("txwatch") else 1


def print_report(results: dict[str, Any], summary: dict[str, dict[str, Any]],
                 args: argparse.Namespace, expected: int) -> None:
    out: list[str] = [""]
    latency = results.get("latency")
    if latency and "error" not in latency:
        det, rec = latency["detected_at_minus_source_ms"], latency["alert_record_minus_source_ms"]
        out.append(f"Latency at {latency['target_rate']:,.0f} events/s (half of txwatch's max), "
                   f"{latency['alerts']} alerts over {latency['events']:,} events:")
        out.append(f"  detected_at - source Kafka timestamp:   p50 {det['p50']:.1f} ms, "
                   f"p99 {det['p99']:.1f} ms, max {det['max']} ms")
        out.append(f"  alert record timestamp - source:         p50 {rec['p50']:.1f} ms, "
                   f"p99 {rec['p99']:.1f} ms, max {rec['max']} ms")
        hist = latency.get("metrics_event_to_alert")
        if hist:
            out.append(f"  /metrics txwatch_event_to_alert_seconds: p50 {hist['p50_ms']} ms, "
                       f"p99 {hist['p99_ms']} ms (bucket-interpolated, n={hist['count']})")
    elif latency:
        out.append(f"Latency: {latency['error']}")
    state = results.get("state")
    if state:
        out.append(f"State: mean {state['bytes_mean']} bytes/account (median "
                   f"{state['bytes_median']}, p99 {state['bytes_p99']}) over "
                   f"{state['sample_accounts_with_state']:,} sampled accounts, "
                   f"{state['events_per_account_mean']} events each")
    restore = results.get("restore")
    if restore and "error" not in restore:
        out.append(f"Restart with {restore['accounts']:,} accounts in the changelog "
                   f"({restore['changelog_bytes'] / 1e6:,.0f} MB): ready "
                   f"{restore['spawn_to_ready_s']} s after spawn (restore gauge "
                   f"{restore['restore_seconds_metric']} s), an event sent then processed "
                   f"in {restore['event_after_ready_processed_in_s']} s, peak RSS "
                   f"{restore['worker_peak_rss_mb']:,.0f} MB")
    elif restore:
        out.append(f"Restart: {restore['error']}")
    scale = results.get("scale_out")
    if scale:
        out.append(f"Scale-out on paper for {scale['target_events_per_s']:,} events/s at "
                   f"{scale['assumed_utilisation']:.0%} utilisation: {scale['workers']} "
                   f"one-core workers by CPU cost ({scale['workers_by_measured_rate']} by the "
                   f"measured rate), {scale['input_partitions']} partitions")
    out.append("")
    out += format_table(summary, args, expected)
    out += ratio_lines(summary)
    print("\n".join(out), flush=True)


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:
        _kill_children()
        raise SystemExit(130) from None
