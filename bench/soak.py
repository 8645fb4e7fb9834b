"""Soak: a long labelled stream under every fault at once, then the same checks as the tests.

Run ``.venv/bin/python bench/soak.py`` (defaults: 100,000 events at 400/s,
10 SIGKILLs of the worker at random moments, 1 broker restart, a second
worker joining at 40 % of the stream and leaving at 70 %). It:

1. starts a local Kafka broker of its own (``--broker host:port`` uses yours
   instead; broker restarts are then skipped);
2. publishes the simulator's labelled stream (every scenario, one malformed
   message per 500 events) at ``--rate``, while worker A is killed with
   SIGKILL at random moments and restarted, the broker is restarted, and
   worker B joins and later leaves (SIGTERM);
3. waits until the consumer group has committed the end of the input;
4. recounts the same bytes offline and compares alerts, dead letters and each
   account's state in the changelog (``tests/support/faults.py``);
5. prints the figures as JSON (``--out FILE`` writes them too) and exits 1
   when any check fails, printing the evidence.

``--two-topics`` routes lending events to the lending topic as the simulator
does; the per-account order across two topics is then up to the worker's
fetches and the recount may legitimately differ for detectors that combine
lending and payment events (``docs/guarantees.md``, "Per-account order").
``docs/guarantees.md`` records the figures of a run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from streams.localkafka import LocalKafka, create_topics
from tests.support import faults
from tests.support.worker import WorkerProcess, worker_env

PARTITIONS = 4


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000, help="good events (default 100000)")
    parser.add_argument("--rate", type=float, default=400.0, help="events per second sent")
    parser.add_argument("--kills", type=int, default=10, help="SIGKILLs of worker A")
    parser.add_argument("--broker-restarts", type=int, default=1)
    parser.add_argument("--no-second-worker", action="store_true",
                        help="no rebalance (worker B never joins)")
    parser.add_argument("--two-topics", action="store_true",
                        help="lending events on the lending topic (see the docstring)")
    parser.add_argument("--accounts", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--broker", default=None, help="host:port of a broker to use")
    parser.add_argument("--out", type=Path, default=None, help="write the figures here (JSON)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    return parser.parse_args(argv)


async def soak(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    kafka: LocalKafka | None = None
    if args.broker is None:
        kafka = LocalKafka(work / "kafka")
        await kafka.start_async()
    bootstrap = args.broker or (kafka.bootstrap if kafka else "")
    try:
        return await _soak(args, work, bootstrap, kafka)
    finally:
        if kafka is not None:
            await asyncio.to_thread(kafka.close)


async def _soak(args: argparse.Namespace, work: Path, bootstrap: str,
                kafka: LocalKafka | None) -> dict[str, Any]:
    prefix = f"soak.{uuid.uuid4().hex[:10]}"
    env = worker_env(bootstrap, prefix, TXWATCH_PARTITIONS=str(PARTITIONS),
                     TXWATCH_DATA_DIR=str(work / "data-a"))
    settings = faults.worker_settings(env)
    await create_topics(bootstrap, [*settings.input_topics, settings.alert_topic,
                                    settings.dead_letter_topic], PARTITIONS)
    messages, labels = faults.labelled_messages(
        settings, events=args.events, seed=args.seed, accounts=args.accounts, bad_every=500,
        single_topic=not args.two_topics)
    duration = len(messages) / args.rate
    rng = random.Random(args.seed)
    worker_a = WorkerProcess(env, work / "worker-a.log").start()
    worker_b = WorkerProcess({**env, "TXWATCH_DATA_DIR": str(work / "data-b")},
                             work / "worker-b.log")
    # a worker must not be (re)started while the broker is down: its start-up
    # creates topics and would fail; faults take turns
    turn = asyncio.Lock()
    chaos = faults.Chaos(worker_a, rng, min_gap=duration / (args.kills + 1) * 0.5,
                         max_gap=duration / (args.kills + 1) * 1.5)
    events: list[tuple[float, str]] = []
    started = time.monotonic()

    async def until_ready(worker: WorkerProcess, since: int) -> None:
        """Hold the turn until ``worker`` has recovered ("Worker ready" after ``since``).

        A worker still starting when the broker goes down fails to bootstrap its
        producer and exits; the faults take turns, and a (re)start's turn lasts until
        the worker is ready.
        """
        deadline = time.monotonic() + 180
        while b"Worker ready" not in worker.log_path.read_bytes()[since:]:
            if worker.proc is not None and worker.proc.poll() is not None:
                message = f"worker exited with {worker.proc.returncode}:\n{worker.log_tail()}"
                raise RuntimeError(message)
            if time.monotonic() > deadline:
                message = f"worker not ready after 180 s:\n{worker.log_tail()}"
                raise RuntimeError(message)
            await asyncio.sleep(0.2)  # polling a log file for a line

    def log_size(worker: WorkerProcess) -> int:
        return worker.log_path.stat().st_size if worker.log_path.exists() else 0

    def note(what: str) -> None:
        events.append((round(time.monotonic() - started, 1), what))
        print(f"soak: {events[-1][0]:7.1f} s  {what}", file=sys.stderr, flush=True)

    async def kill_loop() -> None:
        for _ in range(args.kills):
            await asyncio.sleep(rng.uniform(chaos.min_gap, chaos.max_gap))
            async with turn:
                chaos.worker_alive()
                since = log_size(worker_a)
                await chaos.kill_and_restart(started)
                await until_ready(worker_a, since)
                note(f"worker A killed (SIGKILL #{len(chaos.kills)}) and restarted")

    async def broker_loop() -> None:
        if kafka is None:
            return
        for number in range(args.broker_restarts):
            await asyncio.sleep(duration * (number + 1) / (args.broker_restarts + 1)
                                - (time.monotonic() - started))
            async with turn:
                note("broker restarting")
                t0 = time.monotonic()
                await kafka.restart_async()
                note(f"broker back after {time.monotonic() - t0:.1f} s")

    b_figures: dict[str, float] = {}

    async def second_worker() -> None:
        if args.no_second_worker:
            return
        await asyncio.sleep(duration * 0.4)
        async with turn:
            since = log_size(worker_b)
            await asyncio.to_thread(worker_b.start)
            await until_ready(worker_b, since)
            note("worker B joined")
        await asyncio.sleep(duration * 0.3)
        async with turn:
            with contextlib.suppress(OSError):
                b_figures["processed"] = worker_b.metric("txwatch_events_total",
                                                        outcome="processed")
            assert worker_b.proc is not None
            b_figures["peak_rss"] = faults.peak_rss_bytes(worker_b.proc.pid)
            worker_b.stop(signal.SIGTERM)
            note(f"worker B left after processing {b_figures.get('processed', 0):,.0f} events")

    try:
        note(f"publishing {len(messages):,} messages at {args.rate:,.0f}/s "
             f"(~{duration:.0f} s)")
        publishing = asyncio.create_task(faults.publish(bootstrap, messages, rate=args.rate))
        await asyncio.gather(kill_loop(), broker_loop(), second_worker())
        sent = await publishing
        note("published; waiting for the group to commit the end of the input")
        drained = await faults.wait_until_consumed(
            bootstrap, settings.app_id, settings.input_topics, timeout=1800,
            alive=chaos.worker_alive)
        chaos.record_final_peak()
        note(f"consumed ({drained:.1f} s after the last send)")
    finally:
        for worker in (worker_b, worker_a):
            if worker.proc is not None:
                worker.stop()
    t0 = time.monotonic()
    run = await faults.check_run(bootstrap, settings, sent)
    figures: dict[str, Any] = {
        **run.summary(),
        "labelled_events": len(labels),
        "kills": len(chaos.kills),
        "restarts": len(chaos.kills),
        "broker_restarts": sum(1 for _, what in events if what == "broker restarting"),
        "second_worker": not args.no_second_worker,
        "worker_b_processed": b_figures.get("processed"),
        "two_topics": args.two_topics,
        "rate_per_s": args.rate,
        "peak_rss_mib": round(max(chaos.peak_rss, b_figures.get("peak_rss", 0)) / 2**20, 1),
        "drain_after_last_send_s": round(drained, 1),
        "elapsed_s": round(time.monotonic() - started, 1),
        "check_s": round(time.monotonic() - t0, 1),
        "timeline": events,
        "problems_detail": run.problems(),
    }
    return figures


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="txwatch-soak-") as tmp:
        work = Path(tmp)
        try:
            figures = asyncio.run(soak(args, work))
        finally:
            if args.keep:
                kept = Path(tempfile.mkdtemp(prefix="txwatch-soak-kept-"))
                for path in work.glob("*.log"):
                    (kept / path.name).write_bytes(path.read_bytes())
                print(f"soak: worker logs kept in {kept}", file=sys.stderr)
    text = json.dumps(figures, indent=2, sort_keys=True)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 1 if figures["problems_detail"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
