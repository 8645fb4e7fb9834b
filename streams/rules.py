"""Detector rules that change without a restart: the configuration topic.

Thresholds, windows, lists and account roles are one versioned document, the
mapping :func:`detectors.registry.build_alerters` takes (see
``DEFAULT_CONFIG``). A worker starts with the file named by
``TXWATCH_DETECTOR_CONFIG`` (or the packaged defaults), then follows the
compacted topic ``TXWATCH_CONFIG_TOPIC``: one partition, key ``detectors``,
value the whole document as JSON. Every worker reads it with a consumer of
its own (no group), so every worker sees every version.

For each record, in order:

* a version equal to the one in force is ignored (a replay, or the file and
  the topic agreeing);
* otherwise the document is validated by building its alerters; a document
  that does not build is **rejected**: the error names the key at fault, is
  logged, counted in ``txwatch_config_rejected_total``, and the previous
  version stays in force;
* a valid one replaces the monitor's alerters (and each derived stage's)
  between two batches, and ``txwatch_config_info{version}`` moves to it.
  Alerts carry the ``config_version`` that produced them.

A detector whose parameters did not change keeps its learnt model (the
global anomaly model does not warm up again for a threshold change); one
whose parameters changed starts afresh. Per-account detector state is kept
across versions, so a keyed detector must accept state written under its
previous parameters.

Before the worker starts, :func:`preload_rules` reads the topic to its end
(bounded by :data:`CATCH_UP_TIMEOUT`), so a restarted worker judges its first
event with the topic's rules, not its file's older ones. Should that fail, the
first partition assignment waits for the topic once more (same bound).

``txwatch rules publish FILE`` validates a document before publishing it (an
invalid one never reaches the topic); ``txwatch rules show`` prints the
version in force on the topic.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import orjson
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

from detectors.base import ThresholdAlerter
from detectors.registry import DEFAULT_CONFIG, build_alerters, stage_bounds
from streams.stages import sketch_bounds

if TYPE_CHECKING:
    from streams.runtime import Runtime
    from streams.settings import Settings

log = logging.getLogger(__name__)

#: Key of the detector configuration on the configuration topic.
CONFIG_KEY: Final = b"detectors"
DEFAULT_CONFIG_TOPIC: Final = "txwatch.config"
#: Seconds a worker waits, on its first assignment, to read the topic to its end.
CATCH_UP_TIMEOUT: Final = 15.0
#: What development mode lays over the packaged defaults (package data).
DEMO_CONFIG_FILE: Final = Path(__file__).resolve().parent / "config" / "demo.json"
#: Stage name of the detectors the account monitor (stage 1) runs.
ACCOUNT_STAGE: Final = "account"


def config_topic(settings: Settings) -> str:
    """``TXWATCH_CONFIG_TOPIC`` (its default until the setting exists)."""
    return str(getattr(settings, "config_topic", DEFAULT_CONFIG_TOPIC))


# -- validation ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RuleSet:
    """A validated configuration and the alerters it builds, split by stage."""

    version: str
    config: Mapping[str, Any]
    account: list[ThresholdAlerter]
    stages: dict[str, list[ThresholdAlerter]]
    #: the derived stages' configured bounds (``stages`` section, defaults filled in)
    bounds: dict[str, dict[str, Any]] = field(default_factory=dict)


def parse_config(raw: bytes | None, where: str = "configuration") -> dict[str, Any]:
    """A configuration document from JSON bytes.

    Raises
    ------
    ValueError
        ``raw`` is missing, not JSON, or not a JSON object.
    """
    if raw is None:
        message = f"{where} is empty (a tombstone does not remove rules; publish a new version)"
        raise ValueError(message)
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        message = f"{where} is not JSON: {exc}"
        raise ValueError(message) from exc
    if not isinstance(document, dict):
        message = f"{where} must be a JSON object, not {type(document).__name__}"
        raise ValueError(message)
    return document


def read_config_file(path: Path) -> dict[str, Any]:
    """A configuration document from a file (``ValueError`` when unreadable or not an object)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        message = f"cannot read detector configuration {path}: {exc.strerror or exc}"
        raise ValueError(message) from exc
    return parse_config(raw, f"detector configuration {path}")


def demo_config() -> dict[str, Any]:
    """The packaged defaults with ``config/demo.json``'s detector parameters laid over them.

    Development mode's configuration (``txwatch demo``, the tests, the
    benchmark): its blacklist lists the simulator's people under the public
    development key, which production never uses.
    """
    overlay = orjson.loads(DEMO_CONFIG_FILE.read_bytes())
    config = copy.deepcopy(DEFAULT_CONFIG)
    for name, entry in overlay["detectors"].items():
        config["detectors"][name]["params"].update(entry["params"])
    return config


def detector_config(settings: Settings) -> dict[str, Any]:
    """The configuration a worker starts with.

    ``TXWATCH_DETECTOR_CONFIG``'s file; else :func:`demo_config` in development
    mode; else the packaged defaults.

    Raises
    ------
    ValueError
        The file cannot be read or is not a JSON object.
    """
    if settings.detector_config is not None:
        return read_config_file(settings.detector_config)
    if settings.dev_mode:
        return demo_config()
    return copy.deepcopy(DEFAULT_CONFIG)


def stage_of(alerter: ThresholdAlerter) -> str:
    """The stage that runs an alerter: its detector class's ``stage``, else ``account``."""
    stage = getattr(type(alerter.detector), "stage", None)
    return stage if isinstance(stage, str) and stage else ACCOUNT_STAGE


def build_rules(config: Mapping[str, Any], stage_names: Iterable[str] = ()) -> RuleSet:
    """Validate ``config`` and split its alerters between the monitor and the derived stages.

    Parameters
    ----------
    config
        Shaped like :data:`detectors.registry.DEFAULT_CONFIG`, ``version`` included.
    stage_names
        The derived stages running in this worker; detectors of other stages
        are validated but left out (their stage is switched off).

    Raises
    ------
    ValueError
        With the message of :func:`build_alerters`, which names the key at fault.

    Examples
    --------
    >>> from detectors.registry import DEFAULT_CONFIG
    >>> rules = build_rules({**DEFAULT_CONFIG, "version": "v9"})
    >>> rules.version, [a.name for a in rules.account][:2]
    ('v9', ['velocity', 'amount_outlier'])
    >>> build_rules({"version": "v10", "detectors": {"velocity": {"threshold": "high"}}})
    Traceback (most recent call last):
    ...
    ValueError: detectors.velocity.threshold must be a finite number, not 'high'
    """
    alerters = build_alerters(config)
    version = str(config["version"])  # build_alerters checked it is a non-empty string
    wanted = set(stage_names)
    account: list[ThresholdAlerter] = []
    stages: dict[str, list[ThresholdAlerter]] = {name: [] for name in wanted}
    for alerter in alerters:
        stage = stage_of(alerter)
        if stage == ACCOUNT_STAGE:
            account.append(alerter)
        elif stage in wanted:
            stages[stage].append(alerter)
        else:
            log.debug("rules %s: %s runs in stage %s, not in this worker", version,
                      alerter.name, stage)
    return RuleSet(version, config, account, stages, stage_bounds(config))


def keep_learnt_models(old: Sequence[ThresholdAlerter],
                       new: Sequence[ThresholdAlerter]) -> list[ThresholdAlerter]:
    """``new``, with the detector of ``old`` wherever name and parameters are unchanged.

    A detector's parameters are its constructor arguments (``repr`` shows
    them), so an unchanged detector keeps what it learnt while its threshold,
    severity or critical threshold change.
    """
    previous = {alerter.name: alerter for alerter in old}
    kept: list[ThresholdAlerter] = []
    for alerter in new:
        before = previous.get(alerter.name)
        if (before is not None and type(before.detector) is type(alerter.detector)
                and before.detector._get_params() == alerter.detector._get_params()):
            alerter = alerter.clone(detector=before.detector)
        kept.append(alerter)
    return kept


# -- metrics ------------------------------------------------------------------------------


class RulesMetrics:
    """``txwatch_config_rejected_total`` and ``txwatch_config_info{version}``.

    Parameters
    ----------
    registry
        Where the metrics are registered; tests pass a fresh ``CollectorRegistry``.
    """

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.rejected = Counter(
            "txwatch_config_rejected",
            "Detector configuration versions rejected as invalid (the previous stays in force).",
            registry=registry,
        )
        self.info = Gauge(
            "txwatch_config_info", "The detector configuration version in force (value 1).",
            ["version"], registry=registry,
        )
        self._version: str | None = None

    def in_force(self, version: str) -> None:
        """Show ``version``, and only it, as the one in force."""
        if self._version is not None and self._version != version:
            with contextlib.suppress(KeyError):
                self.info.remove(self._version)
        self._version = version
        self.info.labels(version=version).set(1)


# -- the watcher --------------------------------------------------------------------------


class RulesWatcher:
    """Applies configuration records to a running worker's monitor and stages.

    Parameters
    ----------
    runtime
        From :func:`streams.app.create_app` (``monitor``, ``stages``, ``settings``).
    metrics
        Where rejections and the version in force are shown.
    topic
        The configuration topic; default ``TXWATCH_CONFIG_TOPIC``.
    """

    def __init__(self, runtime: Runtime, metrics: RulesMetrics, topic: str | None = None) -> None:
        self.runtime = runtime
        self.metrics = metrics
        self.topic = topic or config_topic(runtime.settings)
        self.version = runtime.monitor.config_version
        #: records applied, rejected and ignored (equal version), for tests and logs
        self.applied = 0
        self.rejected = 0
        self.ignored = 0
        self.last_error: str | None = None
        self._catch_up: asyncio.Future[None] | None = None
        #: next offset to read on the topic; None until it was read once
        self.position: int | None = None
        #: called with ``(previous, new)`` version after a new version takes effect
        self.listeners: list[Callable[[str, str], None]] = []
        self._consumer: Any = None
        self._tp: Any = None
        metrics.in_force(self.version)

    # -- applying one document ------------------------------------------------------------
    def apply(self, raw: bytes | None, *, where: str = "configuration") -> bool:
        """Validate one record's value and put it in force. Never raises.

        Returns whether the worker now runs a new version.
        """
        try:
            config = parse_config(raw, where)
            version = config.get("version")
            if isinstance(version, str) and version == self.version:
                self.ignored += 1
                log.debug("rules: %s is version %s, already in force", where, version)
                return False
            rules = build_rules(config, self.runtime.stages)
            self._same_bounds(rules)
        except ValueError as exc:
            self.reject(str(exc), where)
            return False
        self._put_in_force(rules)
        return True

    def _same_bounds(self, rules: RuleSet) -> None:
        """Refuse a configuration that would change a running stage's sketch bounds.

        The sketches in the stage's table were built with the bounds the worker
        started with; those take effect only in a worker started with them
        (``TXWATCH_DETECTOR_CONFIG``), so a version that changes them is refused
        rather than half applied.
        """
        for name, stage in self.runtime.stages.items():
            running = stage.bounds
            if running is None:
                continue
            wanted = sketch_bounds(name, rules.stages.get(name, []), rules.bounds.get(name))
            if wanted != running:
                changed = ", ".join(
                    f"{field_name} {getattr(running, field_name)} -> {getattr(wanted, field_name)}"
                    for field_name in running.__dataclass_fields__
                    if getattr(running, field_name) != getattr(wanted, field_name))
                message = (f"it changes the {name} stage's sketch bounds ({changed}), which "
                           f"take effect only in a worker started with this configuration "
                           f"(TXWATCH_DETECTOR_CONFIG)")
                raise ValueError(message)

    def reject(self, error: str, where: str) -> None:
        self.rejected += 1
        self.last_error = error
        self.metrics.rejected.inc()
        log.error("rules: rejected %s: %s; version %s stays in force", where, error, self.version)

    def _put_in_force(self, rules: RuleSet) -> None:
        monitor = self.runtime.monitor
        previous = self.version
        monitor.reconfigure(keep_learnt_models(monitor.alerters, rules.account), rules.version)
        for name, stage in self.runtime.stages.items():
            stage.alerters = keep_learnt_models(stage.alerters, rules.stages.get(name, []))
            stage.config_version = rules.version
        self.version = rules.version
        self.applied += 1
        self.metrics.in_force(rules.version)
        stage_part = "".join(
            f"; stage {name}: {[a.name for a in stage.alerters]}"
            for name, stage in self.runtime.stages.items()
        )
        log.info("rules: version %s in force (was %s): detectors %s%s", rules.version, previous,
                 [a.name for a in monitor.alerters], stage_part)
        for listener in self.listeners:
            try:
                listener(previous, rules.version)
            except Exception:  # an observer's bug must not undo or stop a reconfiguration
                log.exception("rules: a listener failed on version %s", rules.version)

    # -- following the topic --------------------------------------------------------------
    @property
    def caught_up(self) -> bool:
        """Whether the topic was read to its end once (its newest valid version applied)."""
        return self.position is not None

    async def catch_up(self) -> None:
        """Read the topic to its end and put its newest valid version in force.

        From the beginning the first time, from where reading stopped after a
        reconnection; leaves the consumer open for :meth:`follow`.
        """
        if self._catch_up is None or self._catch_up.done():
            self._catch_up = asyncio.ensure_future(self._read_to_end())
        await asyncio.shield(self._catch_up)

    async def catch_up_within(self, timeout: float) -> None:
        """:meth:`catch_up`, waiting at most ``timeout`` s (it goes on in the background)."""
        try:
            await asyncio.wait_for(self.catch_up(), timeout)
        except TimeoutError:
            log.warning("rules: %s not read within %.0f s; processing starts with version %s",
                        self.topic, timeout, self.version)
        except Exception as exc:  # a broker problem must not stop the worker: follow() retries
            log.warning("rules: cannot read %s yet (%s); version %s stays in force", self.topic,
                        exc, self.version)

    async def read_once(self) -> None:
        """Read the topic to its end, apply it, close the consumer (:func:`preload_rules`)."""
        try:
            await self.catch_up()
        finally:
            await self.close()
            self._catch_up = None

    async def _read_to_end(self) -> None:
        from aiokafka import TopicPartition

        from streams import clients

        await self._stop_consumer()
        settings = self.runtime.settings
        await ensure_compacted_topic(settings, self.topic)
        consumer = clients.consumer(settings, client_id=f"{settings.app_id}-rules")
        await consumer.start()
        try:
            tp = TopicPartition(self.topic, 0)
            consumer.assign([tp])
            if self.position is None:
                await consumer.seek_to_beginning(tp)
            else:  # reconnecting: from where the last consumer stopped
                consumer.seek(tp, self.position)
            end = (await consumer.end_offsets([tp]))[tp]
            history: list[Any] = []
            while await consumer.position(tp) < end:
                batch = await consumer.getmany(tp, timeout_ms=500)
                history.extend(batch.get(tp, ()))
            position = await consumer.position(tp)
        except BaseException:
            await consumer.stop()
            raise
        self._consumer, self._tp = consumer, tp
        self.apply_history([(r.offset, r.value) for r in history if r.key == CONFIG_KEY])
        self.position = position

    def apply_history(self, records: Sequence[tuple[int, bytes | None]]) -> None:
        """Put the newest valid version of ``(offset, value)`` records in force.

        Only the newest record counts as rejected when invalid: older ones were
        superseded long ago, and a restart must not count them again.
        """
        for index in range(len(records) - 1, -1, -1):
            offset, raw = records[index]
            where = f"{self.topic}@{offset}"
            try:
                config = parse_config(raw, where)
                if config.get("version") == self.version:
                    return
                rules = build_rules(config, self.runtime.stages)
            except ValueError as exc:
                if index == len(records) - 1:
                    self.reject(str(exc), where)
                continue
            self._put_in_force(rules)
            return

    async def follow(self) -> None:
        """Catch up, then apply every new record for the life of the worker. Never raises.

        A broker problem is logged and retried every 5 s from where reading
        stopped; the version in force stays meanwhile.
        """
        try:
            while True:
                try:
                    if self._consumer is None:
                        await self.catch_up()
                    await self._follow()
                except Exception as exc:
                    log.warning("rules: reading %s failed (%s); version %s stays in force, "
                                "retrying in 5 s", self.topic, exc, self.version)
                    await self._stop_consumer()
                    await asyncio.sleep(5.0)  # broker trouble: retry on a timer
        finally:
            await self.close()

    async def _follow(self) -> None:
        consumer, tp = self._consumer, self._tp
        while True:
            batch = await consumer.getmany(tp, timeout_ms=1000)
            for record in batch.get(tp, ()):
                self.position = record.offset + 1
                if record.key != CONFIG_KEY:
                    log.debug("rules: ignoring key %r at offset %s", record.key, record.offset)
                    continue
                self.apply(record.value, where=f"{self.topic}@{record.offset}")

    async def _stop_consumer(self) -> None:
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            await consumer.stop()

    async def close(self) -> None:
        """Stop reading (the worker is stopping)."""
        if self._catch_up is not None and not self._catch_up.done():
            self._catch_up.cancel()
        await self._stop_consumer()


def preload_rules(runtime: Runtime, timeout: float = CATCH_UP_TIMEOUT) -> RulesWatcher:
    """Before the worker starts: read the configuration topic and apply its newest version.

    Blocks for at most ``timeout`` seconds (in a thread of its own, so it
    works whether or not an event loop runs). A restarted worker then judges
    its very first event with the topic's rules rather than its file's; if
    the topic cannot be read in time, the worker starts with the file's
    version and the follower applies the topic's as soon as it can.
    """
    watcher = attach_rules(runtime)
    failure: list[BaseException] = []

    def read() -> None:
        try:
            asyncio.run(asyncio.wait_for(watcher.read_once(), timeout))
        except BaseException as exc:  # reported below, in the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=read, name="txwatch-rules-preload", daemon=True)
    thread.start()
    thread.join()
    if failure:
        log.warning("rules: could not read %s before start (%s); starting with version %s",
                    watcher.topic, str(failure[0]) or type(failure[0]).__name__,
                    watcher.version)
    else:
        log.info("rules: read %s to offset %s before start; version %s in force",
                 watcher.topic, watcher.position, watcher.version)
    return watcher


def attach_rules(runtime: Runtime, *, registry: CollectorRegistry | None = None,
                 topic: str | None = None,
                 catch_up_timeout: float = CATCH_UP_TIMEOUT) -> RulesWatcher:
    """Make a worker follow the configuration topic. Call once, after ``create_app``.

    Parameters
    ----------
    runtime
        From :func:`streams.app.create_app`.
    registry
        Where the metrics go; default the global registry when the runtime has
        metrics (the worker's ``/metrics``), else a private one.
    topic
        Default ``TXWATCH_CONFIG_TOPIC``.
    catch_up_timeout
        Seconds the first partition assignment waits for the topic when
        :func:`preload_rules` could not read it.
    """
    app: Any = runtime.app
    existing: RulesWatcher | None = getattr(app, "_txwatch_rules", None)
    if existing is not None:
        return existing
    if registry is None:
        registry = REGISTRY if runtime.metrics is not None else CollectorRegistry()
    watcher = RulesWatcher(runtime, RulesMetrics(registry), topic)
    app._txwatch_rules = watcher

    @app.on_partitions_assigned.connect
    async def rules_before_processing(app: Any, /, *args: Any, signal: Any,
                                      **kwargs: Any) -> None:
        # A fallback for a worker whose preload_rules could not read the topic (or
        # was not called): one more bounded wait before this assignment's events.
        # Recovery runs concurrently, so this narrows the window; preload_rules closes it.
        if not watcher.caught_up:
            await watcher.catch_up_within(catch_up_timeout)

    @app.task
    async def rules_follower() -> None:
        await watcher.follow()

    log.info("rules: following %s; version %s in force until it says otherwise",
             watcher.topic, watcher.version)
    return watcher


# -- publishing ---------------------------------------------------------------------------


async def ensure_compacted_topic(settings: Settings, topic: str) -> bool:
    """Create ``topic``, 1 partition and ``cleanup.policy=compact``, if missing; True if created."""
    from streams import clients

    created = await clients.create_topics(settings, [topic], 1,
                                          configs={"cleanup.policy": "compact"})
    return bool(created)


@dataclass(frozen=True, slots=True)
class PublishedConfig:
    """The latest configuration record on the topic."""

    config: dict[str, Any]
    offset: int
    timestamp: datetime


async def read_latest_config(settings: Settings, topic: str,
                             timeout: float = 15.0) -> PublishedConfig | None:
    """The newest ``detectors`` record on ``topic``, or ``None`` when there is none.

    Raises
    ------
    ValueError
        The newest record is not a JSON object (``txwatch rules show`` says so).
    """
    from aiokafka import TopicPartition

    from streams import clients

    consumer = clients.consumer(settings, client_id="txwatch-rules-show")
    try:
        await consumer.start()  # inside: a consumer that fails to start is closed too
        tp = TopicPartition(topic, 0)
        if topic not in await consumer.topics():  # also loads the topic's metadata
            return None
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        latest: Any = None
        deadline = time.monotonic() + timeout
        while await consumer.position(tp) < end:
            if time.monotonic() > deadline:
                message = f"could not read {topic} to its end within {timeout:.0f} s"
                raise TimeoutError(message)
            batch = await consumer.getmany(tp, timeout_ms=500)
            for record in batch.get(tp, ()):
                if record.key == CONFIG_KEY:
                    latest = record
        if latest is None:
            return None
        config = parse_config(latest.value, f"{topic}@{latest.offset}")
        return PublishedConfig(config, latest.offset,
                               datetime.fromtimestamp(latest.timestamp / 1000, UTC))
    finally:
        await consumer.stop()


async def publish_config(settings: Settings, topic: str,
                         config: Mapping[str, Any]) -> int | None:
    """Validate ``config``, then publish it as the newest version; return its offset.

    Returns ``None`` when the topic's newest version already is this exact
    document (nothing is sent).

    Raises
    ------
    ValueError
        The document does not build (the message names the key at fault), or
        its version is already on the topic with a different content: a
        version names one document, so change the version.
    """
    from streams import clients

    build_rules(config)
    await ensure_compacted_topic(settings, topic)
    try:
        latest = await read_latest_config(settings, topic)
    except ValueError:
        latest = None  # an unreadable newest record is replaced by this one
    if latest is not None and latest.config.get("version") == config["version"]:
        if latest.config == dict(config):
            return None
        message = (f"version {config['version']!r} is already on {topic} with a different "
                   f"content; give this configuration a new version")
        raise ValueError(message)
    producer = clients.producer(settings, client_id="txwatch-rules-publish")
    await producer.start()
    try:
        metadata = await producer.send_and_wait(topic, orjson.dumps(dict(config)), key=CONFIG_KEY)
    finally:
        await producer.stop()
    offset: int = metadata.offset
    return offset


# -- command line -------------------------------------------------------------------------


def run_rules_publish(settings: Settings, args: argparse.Namespace) -> int:
    """``txwatch rules publish FILE``: validate, then publish; exit 2 when invalid."""
    topic = config_topic(settings)
    try:
        config = read_config_file(args.file)
        build_rules(config)
    except ValueError as exc:
        print(f"txwatch rules publish: invalid configuration, not published: {exc}",
              file=sys.stderr)
        return 2
    try:
        offset = asyncio.run(publish_config(settings, topic, config))
    except ValueError as exc:
        print(f"txwatch rules publish: not published: {exc}", file=sys.stderr)
        return 2
    except (OSError, RuntimeError) as exc:
        print(f"txwatch rules publish: cannot publish to {settings.broker}: {exc}",
              file=sys.stderr)
        return 1
    if offset is None:
        print(f"version {config['version']} is already the newest on {topic}; nothing sent")
    else:
        print(f"published version {config['version']} to {topic} at offset {offset}; "
              f"workers apply it within seconds (see txwatch_config_info)")
    return 0


def run_rules_show(settings: Settings, args: argparse.Namespace) -> int:
    """``txwatch rules show``: the newest configuration on the topic, as JSON on stdout."""
    topic = config_topic(settings)
    try:
        latest = asyncio.run(read_latest_config(settings, topic, args.timeout))
    except ValueError as exc:
        print(f"txwatch rules show: the newest record on {topic} is unusable: {exc}",
              file=sys.stderr)
        return 1
    except (OSError, RuntimeError, TimeoutError) as exc:
        print(f"txwatch rules show: cannot read {topic}: {exc}", file=sys.stderr)
        return 1
    if latest is None:
        print(f"txwatch rules show: no configuration on {topic}; workers use their "
              f"TXWATCH_DETECTOR_CONFIG file or the packaged defaults", file=sys.stderr)
        return 1
    published = latest.timestamp.isoformat(timespec="seconds").replace("+00:00", "Z")
    print(f"version {latest.config.get('version')} (offset {latest.offset}, published "
          f"{published}) on {topic}", file=sys.stderr)
    try:
        build_rules(latest.config)
    except ValueError as exc:
        print(f"warning: workers reject this version and keep the previous one: {exc}",
              file=sys.stderr)
    sys.stdout.write(orjson.dumps(latest.config, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


def register_cli(subparsers: Any) -> None:
    """Add ``txwatch rules publish FILE`` and ``txwatch rules show``."""
    parser = subparsers.add_parser(
        "rules", help="publish or show the detector configuration workers follow",
        description="Detector thresholds, windows, lists and account roles, versioned on "
                    "the compacted topic TXWATCH_CONFIG_TOPIC; every worker applies a new "
                    "version without a restart.")
    actions = parser.add_subparsers(dest="rules_command", required=True)
    publish = actions.add_parser(
        "publish", help="validate a configuration file, then publish it",
        description="Validate FILE (shaped like detectors.registry.DEFAULT_CONFIG, with a "
                    "new 'version'); publish it only if every detector builds.")
    publish.add_argument("file", type=Path)
    publish.set_defaults(func=run_rules_publish)
    show = actions.add_parser("show", help="print the newest configuration on the topic")
    show.add_argument("--timeout", type=float, default=15.0,
                      help="seconds allowed to read the topic")
    show.set_defaults(func=run_rules_show)
