"""The live evaluation: simulated traffic through a real worker and broker, alerts read back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import orjson

from detectors.registry import DEFAULT_CONFIG

if TYPE_CHECKING:
    from streams.settings import Settings
    from streams.simulate import Producer


from streams.evaluation.backtest import history_positions, load_labels
from streams.evaluation.inputs import (
    PROGRESS_EVERY,
    GroupLabel,
    LabelledEvent,
    Progress,
    ScoredAlert,
)
from streams.evaluation.process import WorkerProcess, topic_env
from streams.evaluation.scoring import Evaluation, score, score_labelled

log = logging.getLogger(__name__)


#: Seconds without a new alert, once every event is processed, before ``evaluate`` scores.
QUIET_SECONDS: Final = 3.0
#: Seconds every input and stage partition must read lag 0 before ``evaluate`` scores: the
#: worker refreshes the gauge every ``LAG_INTERVAL_SECONDS`` (5 s), so a 0 read earlier may
#: predate the last records; one refresh inside this window makes it current.
LAG_SETTLE_SECONDS: Final = 6.0


# -- evaluate -------------------------------------------------------------------------------


class _RecordingProducer:
    """The simulator's producer, noting when each event was handed to it."""

    def __init__(self, inner: Producer, published_at: dict[str, float]) -> None:
        self.inner = inner
        self.published_at = published_at

    async def start(self) -> None:
        await self.inner.start()

    async def stop(self) -> None:
        await self.inner.stop()

    async def flush(self) -> None:
        await self.inner.flush()

    async def send(self, topic: str, value: bytes | None = None,
                   key: bytes | None = None) -> asyncio.Future[Any]:
        future = await self.inner.send(topic, value=value, key=key)
        if value is not None:
            with contextlib.suppress(orjson.JSONDecodeError, KeyError, TypeError):
                self.published_at[orjson.loads(value)["event_id"]] = time.time()
        return future


def evaluation_env(bootstrap: str, prefix: str, data_dir: Path, partitions: int,
                   config_path: Path | None = None) -> dict[str, str]:
    """The worker's environment: topics, group and state of the evaluation's own."""
    env = {
        **os.environ,
        **topic_env(bootstrap, prefix),
        "TXWATCH_PARTITIONS": str(partitions),
        "TXWATCH_DATA_DIR": str(data_dir),
    }
    if config_path is not None:
        env["TXWATCH_DETECTOR_CONFIG"] = str(config_path.resolve())
    return env


@dataclass
class WorkerProgress:
    """What the worker's /metrics says about its progress."""

    processed: float = 0.0
    #: ``txwatch_consumer_lag`` by (topic, partition); a partition not reported yet is absent
    lag: dict[tuple[str, int], float] = field(default_factory=dict)

    def lagging(self, topics: Iterable[str], partitions: int) -> dict[str, float | None]:
        """Topics with a partition behind, or not reported yet (``None``), and their lag."""
        behind: dict[str, float | None] = {}
        for topic in topics:
            values = [self.lag.get((topic, p)) for p in range(partitions)]
            if any(v is None for v in values):
                behind[topic] = None
            elif any(values):
                behind[topic] = sum(v for v in values if v is not None)
        return behind


def stage_topic_names(app_id: str, stages: Iterable[str]) -> dict[str, str]:
    """The derived stages' internal topics by stage, as ``streams.app.create_app`` names them."""
    from streams.stages import stage_topic

    return {name: stage_topic(app_id, name) for name in stages}


def _describe_lag(behind: Mapping[str, float | None]) -> str:
    """``topic lag, ...`` for the topics still behind."""
    unknown = "no lag reported (partitions unassigned?)"
    parts = [f"{topic} {unknown if lag is None else f'{lag:,.0f}'}"
             for topic, lag in behind.items()]
    return ", ".join(parts) if parts else "none"


def _stage_lag(state: WorkerProgress, stage_topics: Mapping[str, str], partitions: int) -> str:
    """``flow 1,234, identity 0, project 0`` (``?``: not reported yet)."""
    parts = []
    for stage, topic in stage_topics.items():
        lag = state.lagging([topic], partitions).get(topic, 0.0)
        parts.append(f"{stage} {'?' if lag is None else f'{lag:,.0f}'}")
    return ", ".join(parts) if parts else "no stages"


def worker_progress(worker: WorkerProcess) -> WorkerProgress:
    """``txwatch_events_total`` summed and ``txwatch_consumer_lag``, from the worker's /metrics."""
    processed = 0.0
    lag: dict[tuple[str, int], float] = {}
    for (name, labels), value in worker.scrape().items():
        if name == "txwatch_events_total":
            processed += value
        elif name == "txwatch_consumer_lag":
            by_name = dict(labels)
            lag[by_name["topic"], int(by_name["partition"])] = value
    return WorkerProgress(processed, lag)


async def _delete_topics(settings: Settings, prefix: str) -> list[str]:
    from streams import clients

    admin = clients.admin(settings, client_id="txwatch-evaluate")
    await admin.start()
    try:
        doomed = sorted(t for t in await admin.list_topics() if t.startswith(prefix))
        if doomed:
            await admin.delete_topics(doomed)
        return doomed
    finally:
        await admin.close()


async def evaluate_live(settings: Settings, *, events: int = 20_000, seed: int = 7,
                        accounts: int = 5_000, rate: float | None = None,
                        config_path: Path | None = None, timeout: float = 600.0,
                        work_dir: Path | None = None, keep_topics: bool = False,
                        history: Path | None = None,
                        labels: Sequence[LabelledEvent] | None = None,
                        group_labels: Sequence[GroupLabel] | None = None,
                        alerts_sink: list[dict[str, Any]] | None = None,
                        progress: Progress | None = None) -> Evaluation:
    """Simulated labelled traffic, or a history, through a real worker, scored.

    Parameters
    ----------
    settings
        The broker and the number of partitions; topics are the evaluation's own.
    events, seed, accounts
        Of the simulated traffic (every scenario injected).
    rate
        Events per second; ``None``: as fast as possible.
    config_path
        The detector configuration the worker runs (``TXWATCH_DETECTOR_CONFIG``).
    timeout
        Seconds allowed for the worker to process everything.
    work_dir
        Worker log, state and labels file; a temporary directory by default.
    keep_topics
        Leave the evaluation's topics on the broker.
    history
        A JSON Lines history to replay (``txwatch replay``) instead of simulating.
    labels
        Ground truth for a history; default the ``label`` field of its lines.
    group_labels
        A labels CSV's rows: scored into ``Evaluation.labelled``, as by ``backtest``.
    alerts_sink
        Receives every alert record read off the alert topic.
    progress
        Receives progress lines.
    """
    from streams import clients
    from streams.rules import build_rules, read_config_file
    from streams.settings import Settings
    from streams.simulate import kafka_producer, replay, simulate
    from streams.stages import STAGES

    report = progress or (lambda line: None)
    config = read_config_file(config_path) if config_path is not None else DEFAULT_CONFIG
    rules = build_rules(config, STAGES)
    work_dir = work_dir or Path(tempfile.mkdtemp(prefix="txwatch-evaluate-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    prefix = f"txwatch-eval-{uuid.uuid4().hex[:10]}"
    env = evaluation_env(settings.broker, prefix, work_dir / "data", settings.partitions,
                         config_path)
    eval_settings = Settings.from_env(env)
    stage_topics = stage_topic_names(
        eval_settings.app_id, [name for name, alerters in rules.stages.items() if alerters])
    # The stage topics too: left to the worker, one created a few ms before its consumer
    # subscribes can be missing from the metadata the group leader assigns from; Faust
    # then skips it ("Ignoring missing topic") and that stage reads nothing until the
    # next metadata refresh and rebalance, minutes later.
    await clients.create_topics(settings, [
        *eval_settings.input_topics, eval_settings.alert_topic, eval_settings.dead_letter_topic,
        *stage_topics.values()])
    worker = WorkerProcess(env, work_dir / "worker.log")
    report(f"evaluate: starting a worker on topics {prefix}.* (log {worker.log_path})")
    started = time.monotonic()
    try:
        await asyncio.to_thread(worker.start, 90.0)
        published_at: dict[str, float] = {}
        labels_path = work_dir / "labels.jsonl"
        incidents: Mapping[str, int] = {}
        if history is None:
            report(f"evaluate: worker up, metrics on {worker.metrics_url}; publishing "
                   f"{events:,} simulated events (seed {seed}, every scenario)")
            sim = await simulate(
                eval_settings, rate=rate, events=events, seed=seed, labels_path=labels_path,
                progress=report, accounts=accounts, create_topics=False,
                producer_factory=lambda s: _RecordingProducer(kafka_producer(s), published_at),
            )
            sent, failed, first_error, incidents = (sim.sent, sim.failed, sim.first_error,
                                                    sim.incidents)
        else:
            report(f"evaluate: worker up, metrics on {worker.metrics_url}; replaying {history}")
            replayed = await replay(
                eval_settings, history, rate=rate, progress=report, create_topics=False,
                producer_factory=lambda s: _RecordingProducer(kafka_producer(s), published_at),
            )
            sent, failed, first_error = replayed.sent, replayed.failed, replayed.first_error
        if failed:
            message = f"{failed:,} events were not delivered: {first_error}"
            raise RuntimeError(message)
        consumer = clients.consumer(eval_settings, eval_settings.alert_topic)
        await consumer.start()
        records: list[dict[str, Any]] = []
        watched = [*eval_settings.input_topics, *stage_topics.values()]
        partitions = eval_settings.partitions
        try:
            deadline = time.monotonic() + timeout
            last_alert = last_report = time.monotonic()
            state = WorkerProgress()
            behind: dict[str, float | None] = dict.fromkeys(watched)
            caught_up_since: float | None = None
            while True:
                batch = await consumer.getmany(timeout_ms=250)
                for items in batch.values():
                    for item in items:
                        with contextlib.suppress(orjson.JSONDecodeError):
                            records.append(orjson.loads(item.value))
                        last_alert = time.monotonic()
                now = time.monotonic()
                if caught_up_since is None or behind or now - last_report >= PROGRESS_EVERY:
                    try:
                        state = await asyncio.to_thread(worker_progress, worker)
                    except OSError as exc:  # a busy worker may drop a scrape: ask again
                        log.debug("evaluate: /metrics scrape failed: %s", exc)
                    behind = state.lagging(watched, partitions)
                if state.processed >= sent and not behind:
                    caught_up_since = caught_up_since or now
                else:
                    caught_up_since = None
                if now - last_report >= PROGRESS_EVERY:
                    last_report = now
                    report(f"evaluate: worker processed {state.processed:,.0f} of {sent:,} "
                           f"events; stage lag {_stage_lag(state, stage_topics, partitions)}; "
                           f"{len(records):,} alerts so far")
                if (caught_up_since is not None and now - caught_up_since >= LAG_SETTLE_SECONDS
                        and now - last_alert >= QUIET_SECONDS):
                    break
                if not worker.alive():
                    message = f"the worker exited; its log: {worker.log_path}\n{worker.log_tail()}"
                    raise RuntimeError(message)
                if now > deadline:
                    message = (f"the worker did not catch up in {timeout:.0f} s: processed "
                               f"{state.processed:,.0f} of {sent:,} input events; still "
                               f"lagging: {_describe_lag(behind)}; its log: "
                               f"{worker.log_path}")
                    raise TimeoutError(message)
        finally:
            await consumer.stop()
    finally:
        await asyncio.to_thread(worker.stop)
        if not keep_topics:
            with contextlib.suppress(Exception):
                deleted = await _delete_topics(settings, prefix)
                report(f"evaluate: deleted {len(deleted)} topics {prefix}.*")
    if alerts_sink is not None:
        alerts_sink.extend(records)
    alerts = [a for a in (ScoredAlert.from_record(r, published_at) for r in records)
              if a is not None]
    detectors = [a.name for a in rules.account]
    detectors += [a.name for alerters in rules.stages.values() for a in alerters]
    if history is None:
        truth = load_labels(labels_path)
    else:
        truth = list(labels) if labels is not None else load_labels(history)
    result = score(truth, alerts, detectors=detectors, mode="evaluate")
    result.events = sent
    result.config_version = rules.version
    result.elapsed_seconds = time.monotonic() - started
    if history is not None and group_labels is not None:
        result.labelled = score_labelled(group_labels, alerts, events=sent,
                                         history=history_positions(history, group_labels),
                                         detectors=detectors)
    for row in result.scenarios:
        started_incidents = incidents.get(row.scenario)
        if started_incidents is not None and started_incidents != row.incidents:
            result.notes.append(
                f"{row.scenario}: the simulator started {started_incidents} incidents; the "
                f"labels group into {row.incidents} (incidents sharing an account merge)")
    return result


