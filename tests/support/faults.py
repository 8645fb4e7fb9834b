"""Fault injection for the worker, and the checks that must hold afterwards.

The harness used by ``tests/integration/test_faults.py`` and ``bench/soak.py``:

* :func:`labelled_messages` turns the simulator's seeded, labelled stream into
  message bytes (with a sprinkling of malformed ones), routed as the
  simulator routes them;
* :func:`publish` sends them with one producer and records where each landed
  (topic, partition, offset): the exact input the worker consumes;
* :func:`offline_recount` runs the same bytes, at the same offsets, through
  :func:`streams.app.build_monitor` on a plain dict of states: the alerts the
  worker must publish and the state it must end with;
* :func:`read_topic`, :func:`read_changelog` and :func:`wait_until_consumed`
  read what the worker left in Kafka;
* :func:`check_run` compares the two and returns a :class:`RunReport` whose
  :meth:`~RunReport.problems` lists every broken promise.

What is compared, and what is not:

* every alert id of the recount must be on the alert topic, with the same
  content except ``detected_at`` (wall clock) and ``feedback_probability``
  (the analysts' ranker learns online, per worker);
* alerts of the detectors in :data:`PER_WORKER_DETECTORS` (the derived
  stages') are neither expected nor compared; neither is the ``quiet_until``
  entry they set. ``global_anomaly`` and the alert budgets are compared: their
  state is one record per input partition, written with each batch and
  restored with the partition, so it depends on the partition's order alone;
* an alert id that appears more than once must have one content (a replay
  may repeat an alert, never change it);
* each account's state in the changelog (last record per key) must equal the
  recount's: ``velocity()`` and ``monetary_events`` always, and also the
  replay guard, event-time clock and per-account detector states;
* each malformed message must be dead-lettered (at least once: a replayed
  batch sends its dead letters again) with the recount's reason.

Per-account order: an account's events on *one* topic are on one partition
and keep their order. Its events on the two input topics (payments and
lending) are two partitions, which the worker interleaves as its fetches
return; the recount processes them in the order they were published. Runs
that must compare exactly therefore use ``single_topic=True`` (everything on
the payments topic); see ``docs/guarantees.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from detectors.registry import STAGE_DETECTORS
from streams import clients
from streams.app import TABLE_NAME, build_monitor
from streams.settings import Settings
from streams.simulate import encode, generate, label_record, message_key, topic_for
from streams.state import AccountState
from tests.support.worker import WorkerProcess

#: Detectors whose alerts the account-stage recount cannot reproduce: the
#: derived-stage detectors (flow, identity, project) see records that cross
#: partitions asynchronously, so their timing is not a function of one
#: partition's order.
PER_WORKER_DETECTORS = frozenset(STAGE_DETECTORS)
#: Alert fields that legitimately differ between a replay and the first delivery.
VOLATILE_ALERT_FIELDS = frozenset({"detected_at", "feedback_probability"})
#: Wall clock handed to the offline recount; it only shows in ``detected_at``.
RECOUNT_NOW = datetime(2030, 1, 1, tzinfo=UTC)


# -- the input ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    """One input message before it is sent."""

    topic: str
    key: bytes | None
    value: bytes
    bad: str | None = None  # the malformation, for messages meant to be dead-lettered


@dataclass(frozen=True, slots=True)
class Sent:
    """Where a message landed."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    bad: str | None = None


#: Malformed messages mixed into fault runs: (name, bytes from a good event).
MALFORMATIONS: tuple[tuple[str, Callable[[dict[str, Any]], bytes]], ...] = (
    ("not_json", lambda e: b"{not json " + e["event_id"].encode()),
    ("not_object", lambda e: orjson.dumps([e["event_id"]])),
    ("unknown_type", lambda e: orjson.dumps({**e, "event_type": "teleport"})),
    ("float_amount", lambda e: orjson.dumps({**e, "amount": 12.5, "currency": "CNY"})),
    ("bad_timestamp", lambda e: orjson.dumps({**e, "occurred_at": "2024-02-30T00:00:00Z"})),
    ("encoding", lambda e: b'{"event_id": "\xff\xfe' + e["event_id"].encode() + b'"}'),
)


def labelled_messages(settings: Settings, *, events: int, seed: int = 7,
                      accounts: int = 2000, bad_every: int = 0, single_topic: bool = False,
                      ) -> tuple[list[Message], list[dict[str, Any]]]:
    """The simulator's labelled stream as messages, and its labels.

    Parameters
    ----------
    settings
        Topic names.
    events
        Good events (every scenario injected, one round each 2,000 events).
    seed, accounts
        As for :func:`streams.simulate.generate`.
    bad_every
        After every ``bad_every`` good events, one malformed message (cycling
        through :data:`MALFORMATIONS`); 0 for none.
    single_topic
        Send lending events to the payments topic too, so that each account's
        events are on one partition in one order.
    """
    messages: list[Message] = []
    labels: list[dict[str, Any]] = []
    for number, event in enumerate(generate(seed, accounts=accounts, events=events), 1):
        topic = settings.payments_topic if single_topic else topic_for(
            event["event_type"], settings)
        messages.append(Message(topic, message_key(event["account_id"]), encode(event)))
        record = label_record(event)
        if record is not None:
            labels.append(record)
        if bad_every and number % bad_every == 0:
            name, make = MALFORMATIONS[(number // bad_every) % len(MALFORMATIONS)]
            messages.append(Message(settings.payments_topic, message_key(event["account_id"]),
                                    make(event), bad=name))
    return messages, labels


def client_config(security: Mapping[str, Any] | None) -> dict[str, Any]:
    """aiokafka keyword arguments for a secured listener (empty for PLAINTEXT)."""
    return dict(security or {})


async def publish(bootstrap: str, messages: Sequence[Message], *, rate: float | None = None,
                  security: Mapping[str, Any] | None = None) -> list[Sent]:
    """Send ``messages`` in order with one idempotent producer; where each one landed.

    ``rate`` paces the sends (messages per second, drift free); ``None`` sends
    as fast as the broker takes them. One producer keeps each partition's
    order (the idempotent producer keeps it across retries too).
    """
    producer = clients.producer(Settings(broker=bootstrap), enable_idempotence=True,
                                linger_ms=10, request_timeout_ms=60_000,
                                client_id="txwatch-test", **client_config(security))
    await producer.start()
    loop = asyncio.get_running_loop()
    started = loop.time()
    futures: list[asyncio.Future[Any]] = []
    try:
        for number, message in enumerate(messages):
            if rate is not None:
                delay = started + number / rate - loop.time()
                if delay > 0.002:
                    await asyncio.sleep(delay)  # pacing the producer, not synchronising
            futures.append(await producer.send(message.topic, message.value, key=message.key))
        await producer.flush()
        metadata = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return [Sent(m.topic, md.partition, md.offset, m.key, m.value, m.bad)
            for m, md in zip(messages, metadata, strict=True)]


# -- the recount -----------------------------------------------------------------------------


def alert_content(alert: Mapping[str, Any]) -> dict[str, Any]:
    """An alert without the fields a replay may change."""
    return {k: v for k, v in alert.items() if k not in VOLATILE_ALERT_FIELDS}


@dataclass
class Recount:
    """What the worker must produce for a published stream."""

    alerts: dict[str, dict[str, Any]]
    states: dict[bytes, AccountState]
    dead_letters: dict[tuple[str, int, int], str]  # source -> reason
    processed: int
    duplicates: int
    skipped_alerts: Counter[str] = field(default_factory=Counter)  # per-worker detectors


def offline_recount(settings: Settings, sent: Iterable[Sent]) -> Recount:
    """Run ``sent`` through :func:`build_monitor` in publication order, offsets included."""
    monitor = build_monitor(settings)
    states: dict[bytes, AccountState] = {}
    alerts: dict[str, dict[str, Any]] = {}
    dead: dict[tuple[str, int, int], str] = {}
    skipped: Counter[str] = Counter()
    processed = duplicates = 0
    for message in sent:
        outcome = monitor.process(message.value, states, topic=message.topic,
                                  partition=message.partition, offset=message.offset,
                                  now=RECOUNT_NOW)
        if outcome.dead_letter is not None:
            dead[message.topic, message.partition, message.offset] = outcome.dead_letter.reason
            continue
        if outcome.duplicate:
            duplicates += 1
            continue
        processed += 1
        for alert in outcome.alerts:
            if alert.detector in PER_WORKER_DETECTORS:
                skipped[alert.detector] += 1
                continue
            alerts[alert.alert_id] = alert_content(orjson.loads(alert.dumps()))
    return Recount(alerts, states, dead, processed, duplicates, skipped)


# -- reading what the worker left --------------------------------------------------------------


async def read_topic(bootstrap: str, topic: str, *, security: Mapping[str, Any] | None = None,
                     timeout: float = 120.0) -> list[Any]:
    """Every record of ``topic`` up to its end offsets at the time of the call."""
    consumer = clients.consumer(Settings(broker=bootstrap),
                                max_partition_fetch_bytes=4 * 1024 * 1024,
                                client_id="txwatch-test", **client_config(security))
    await consumer.start()
    records: list[Any] = []
    try:
        tps = await partitions_of(bootstrap, [topic], security=security)
        if not tps:
            return records
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        remaining = {tp for tp in tps if ends[tp] > 0}
        deadline = time.monotonic() + timeout
        while remaining:
            if time.monotonic() > deadline:
                message = f"reading {topic} timed out with {len(records)} records"
                raise TimeoutError(message)
            batch = await consumer.getmany(*remaining, timeout_ms=500)
            for tp, items in batch.items():
                records.extend(r for r in items if r.offset < ends[tp])
                if items and items[-1].offset >= ends[tp] - 1:
                    remaining.discard(tp)
            for tp in list(remaining):
                if await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
    return records


def changelog_topic(app_id: str) -> str:
    return f"{app_id}-{TABLE_NAME}-changelog"


async def read_changelog(bootstrap: str, app_id: str, *,
                         security: Mapping[str, Any] | None = None) -> dict[bytes, AccountState]:
    """The account states in the worker's changelog: the last record per key wins."""
    last: dict[bytes, bytes | None] = {}
    for record in await read_topic(bootstrap, changelog_topic(app_id), security=security):
        last[record.key] = record.value
    return {key: AccountState.loads(value) for key, value in last.items() if value is not None}


async def partitions_of(bootstrap: str, topics: Sequence[str], *,
                        security: Mapping[str, Any] | None = None) -> list[TopicPartition]:
    """The partitions of ``topics`` that exist (a missing topic has none)."""
    admin = clients.admin(Settings(broker=bootstrap), client_id="txwatch-test",
                          **client_config(security))
    await admin.start()
    try:
        described = await admin.describe_topics(list(topics))
    finally:
        await admin.close()
    return sorted(TopicPartition(entry["topic"], p["partition"]) for entry in described
                  if entry.get("error_code") == 0 for p in entry.get("partitions", ()))


async def committed_lag(bootstrap: str, group: str, topics: Sequence[str], *,
                        security: Mapping[str, Any] | None = None) -> int:
    """Messages of ``topics`` not yet covered by ``group``'s committed offsets."""
    tps = await partitions_of(bootstrap, topics, security=security)
    admin = clients.admin(Settings(broker=bootstrap), client_id="txwatch-test",
                          **client_config(security))
    consumer = clients.consumer(Settings(broker=bootstrap), client_id="txwatch-test",
                                **client_config(security))
    await admin.start()
    await consumer.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
        ends = await consumer.end_offsets(tps) if tps else {}
        lag = 0
        for tp in tps:
            meta = committed.get(tp)
            done = meta.offset if meta is not None and meta.offset >= 0 else 0
            lag += max(0, ends[tp] - done)
        return lag
    finally:
        await consumer.stop()
        await admin.close()


async def committed_offsets(bootstrap: str, group: str, topics: Sequence[str], *,
                            security: Mapping[str, Any] | None = None
                            ) -> dict[tuple[str, int], int]:
    """``group``'s committed offset (the next to read) per input partition."""
    admin = clients.admin(Settings(broker=bootstrap), client_id="txwatch-test",
                          **client_config(security))
    await admin.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {(tp.topic, tp.partition): meta.offset for tp, meta in committed.items()
            if tp.topic in topics and meta.offset >= 0}


async def wait_until_consumed(bootstrap: str, group: str, topics: Sequence[str], *,
                              timeout: float, what: str = "the stream",
                              alive: Callable[[], None] | None = None,
                              security: Mapping[str, Any] | None = None) -> float:
    """Wait until ``group`` has committed the end of ``topics``; the seconds it took.

    ``alive`` is called on every poll and may raise (e.g. the worker died).
    """
    started = time.monotonic()
    while True:
        lag: int | str
        try:
            lag = await committed_lag(bootstrap, group, topics, security=security)
        except (KafkaError, OSError) as exc:  # no coordinator yet, or the broker restarting
            lag = f"unknown ({type(exc).__name__})"
        if lag == 0:
            return time.monotonic() - started
        if alive is not None:
            alive()
        if time.monotonic() - started > timeout:
            message = f"{what}: {lag} messages still uncommitted after {timeout:.0f} s"
            if isinstance(lag, str):
                message = f"{what}: committed offsets {lag} after {timeout:.0f} s"
            if isinstance(alive, Alive):  # why it did not commit is in the worker's log
                message += f"\n--- worker log tail ---\n{alive.worker.log_tail()}"
            raise TimeoutError(message)
        await asyncio.sleep(0.5)  # polling the broker's committed offsets against a deadline


# -- comparing -------------------------------------------------------------------------------


@dataclass
class RunReport:
    """Expected against found, with the evidence of each difference."""

    events: int
    bad_messages: int
    expected_alerts: int
    expected_by_detector: dict[str, int]  # the recount's alerts per detector
    found_alerts: int  # distinct ids on the topic (per-worker detectors excluded)
    alert_records: int  # records on the topic, repeats included
    repeated_alert_ids: int  # ids published more than once (same content)
    per_worker_alerts: int  # e.g. global_anomaly records, not compared
    missing_alerts: list[dict[str, Any]]
    unexpected_alerts: list[dict[str, Any]]
    conflicting_alerts: list[tuple[str, list[dict[str, Any]]]]
    per_worker_conflicts: int  # ids of per-worker detectors seen with two contents
    accounts: int
    state_mismatches: list[tuple[str, str, Any, Any]]  # account, what, expected, found
    guard_mismatches: list[tuple[str, str, Any, Any]]
    dead_letters_expected: int
    dead_letter_records: int
    dead_letters_missing: list[tuple[str, int, int]]
    dead_letter_reason_mismatches: list[tuple[tuple[str, int, int], str, str]]
    dead_letters_unexpected: list[tuple[str, int, int]]

    def problems(self) -> list[str]:
        """One line per broken promise; empty when every check holds."""
        out = []
        if self.missing_alerts:
            out.append(f"{len(self.missing_alerts)} expected alerts missing, e.g. "
                       f"{self.missing_alerts[:3]}")
        if self.unexpected_alerts:
            out.append(f"{len(self.unexpected_alerts)} alerts the recount does not raise, e.g. "
                       f"{self.unexpected_alerts[:3]}")
        if self.conflicting_alerts:
            out.append(f"{len(self.conflicting_alerts)} alert ids with different contents, e.g. "
                       f"{self.conflicting_alerts[:2]}")
        if self.state_mismatches:
            out.append(f"{len(self.state_mismatches)} velocity/monetary mismatches, e.g. "
                       f"{self.state_mismatches[:5]}")
        if self.guard_mismatches:
            out.append(f"{len(self.guard_mismatches)} other state mismatches, e.g. "
                       f"{self.guard_mismatches[:5]}")
        if self.dead_letters_missing:
            out.append(f"{len(self.dead_letters_missing)} bad messages not dead-lettered, e.g. "
                       f"{self.dead_letters_missing[:5]}")
        if self.dead_letter_reason_mismatches:
            out.append(f"dead-letter reasons differ: {self.dead_letter_reason_mismatches[:5]}")
        if self.dead_letters_unexpected:
            out.append(f"dead letters for good messages: {self.dead_letters_unexpected[:5]}")
        return out

    def summary(self) -> dict[str, Any]:
        return {
            "events": self.events, "bad_messages": self.bad_messages,
            "accounts": self.accounts,
            "alerts_expected": self.expected_alerts, "alerts_found": self.found_alerts,
            "alerts_expected_by_detector": self.expected_by_detector,
            "alert_records": self.alert_records, "repeated_alert_ids": self.repeated_alert_ids,
            "per_worker_alerts_not_compared": self.per_worker_alerts,
            "per_worker_conflicts": self.per_worker_conflicts,
            "dead_letters_expected": self.dead_letters_expected,
            "dead_letter_records": self.dead_letter_records,
            "problems": len(self.problems()),
        }


def _strip_per_worker(state: AccountState) -> dict[str, Any]:
    return {
        "offsets": state.offsets, "recent_ids": state.recent_ids, "latest_ts": state.latest_ts,
        "detectors": {k: v for k, v in state.detectors.items() if k not in PER_WORKER_DETECTORS},
        "quiet_until": {k: v for k, v in state.quiet_until.items()
                        if k not in PER_WORKER_DETECTORS},
    }


def compare(recount: Recount, alert_records: Sequence[Any], states: Mapping[bytes, AccountState],
            dead_letter_records: Sequence[Any], *, events: int) -> RunReport:
    """Check the worker's outputs against the recount (see the module docstring)."""
    contents: dict[str, list[dict[str, Any]]] = defaultdict(list)
    per_worker = 0
    per_worker_contents: dict[str, set[bytes]] = defaultdict(set)
    for record in alert_records:
        alert = orjson.loads(record.value)
        if alert["detector"] in PER_WORKER_DETECTORS:
            per_worker += 1
            per_worker_contents[alert["alert_id"]].add(orjson.dumps(
                alert_content(alert), option=orjson.OPT_SORT_KEYS))
            continue
        contents[alert["alert_id"]].append(alert_content(alert))
    conflicting = []
    for alert_id, seen in contents.items():
        distinct = {orjson.dumps(c, option=orjson.OPT_SORT_KEYS) for c in seen}
        if len(distinct) > 1:
            conflicting.append((alert_id, [orjson.loads(d) for d in sorted(distinct)]))
    missing = [a for i, a in recount.alerts.items()
               if i not in contents or alert_content(contents[i][0]) != a]
    unexpected = [seen[0] for i, seen in contents.items() if i not in recount.alerts]

    state_mismatches: list[tuple[str, str, Any, Any]] = []
    guard_mismatches: list[tuple[str, str, Any, Any]] = []
    for key, expected in recount.states.items():
        account = key.decode()
        found = states.get(key)
        if found is None:
            if expected.monetary_events or expected.offsets:
                state_mismatches.append((account, "state", "present", None))
            continue
        if found.velocity() != expected.velocity():
            state_mismatches.append((account, "velocity", expected.velocity(), found.velocity()))
        if found.monetary_events != expected.monetary_events:
            state_mismatches.append((account, "monetary_events", expected.monetary_events,
                                     found.monetary_events))
        want, got = _strip_per_worker(expected), _strip_per_worker(found)
        for name in want:
            if want[name] != got[name]:
                guard_mismatches.append((account, name, want[name], got[name]))
    for key in states.keys() - recount.states.keys():
        state_mismatches.append((key.decode(), "state", None, "present"))

    letters: dict[tuple[str, int, int], set[str]] = defaultdict(set)
    for record in dead_letter_records:
        letter = orjson.loads(record.value)
        source = letter["source"]
        letters[source["topic"], source["partition"], source["offset"]].add(letter["reason"])
    dl_missing = [s for s in recount.dead_letters if s not in letters]
    dl_reasons = [(s, r, ",".join(sorted(letters[s]))) for s, r in recount.dead_letters.items()
                  if s in letters and letters[s] != {r}]
    dl_unexpected = [s for s in letters if s not in recount.dead_letters]
    return RunReport(
        events=events, bad_messages=len(recount.dead_letters),
        expected_alerts=len(recount.alerts),
        expected_by_detector=dict(Counter(a["detector"] for a in recount.alerts.values())),
        found_alerts=len(contents),
        alert_records=len(alert_records),
        repeated_alert_ids=sum(len(v) > 1 for v in contents.values()),
        per_worker_alerts=per_worker, missing_alerts=missing, unexpected_alerts=unexpected,
        conflicting_alerts=conflicting,
        per_worker_conflicts=sum(len(v) > 1 for v in per_worker_contents.values()),
        accounts=len(recount.states), state_mismatches=state_mismatches,
        guard_mismatches=guard_mismatches, dead_letters_expected=len(recount.dead_letters),
        dead_letter_records=len(dead_letter_records), dead_letters_missing=dl_missing,
        dead_letter_reason_mismatches=dl_reasons, dead_letters_unexpected=dl_unexpected,
    )


async def check_run(bootstrap: str, settings: Settings, sent: Sequence[Sent], *,
                    security: Mapping[str, Any] | None = None) -> RunReport:
    """Read the alert, dead-letter and changelog topics and compare them with a recount."""
    recount = offline_recount(settings, sent)
    alerts = await read_topic(bootstrap, settings.alert_topic, security=security)
    letters = await read_topic(bootstrap, settings.dead_letter_topic, security=security)
    states = await read_changelog(bootstrap, settings.app_id, security=security)
    return compare(recount, alerts, states, letters,
                   events=sum(1 for s in sent if s.bad is None))


# -- the worker under fire -------------------------------------------------------------------


def peak_rss_bytes(pid: int) -> int:
    """The process's peak resident set (``VmHWM``), 0 when it is gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def rss_bytes(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


@dataclass(frozen=True)
class Alive:
    """A check that raises, with the log tail, once ``worker`` has exited.

    :func:`wait_until_consumed` also quotes the worker's log when it times out.
    """

    worker: WorkerProcess

    def __call__(self) -> None:
        proc = self.worker.proc
        if proc is not None and proc.poll() is not None:
            message = f"worker exited with {proc.returncode}; log tail:\n{self.worker.log_tail()}"
            raise RuntimeError(message)


def alive(worker: WorkerProcess) -> Alive:
    """:class:`Alive` for ``worker``."""
    return Alive(worker)


@dataclass
class Kill:
    at: float  # seconds since the chaos started
    processed: float  # events the killed incarnation had processed (its metric)
    peak_rss: int


@dataclass
class Chaos:
    """Kills a worker with a signal at random moments and starts it again.

    Parameters
    ----------
    worker
        Started already.
    rng
        Seeded, so a failing run can be repeated.
    min_gap, max_gap
        Seconds between a (re)start being ready and the next kill.
    """

    worker: WorkerProcess
    rng: random.Random
    min_gap: float = 3.0
    max_gap: float = 12.0
    sig: int = signal.SIGKILL
    kills: list[Kill] = field(default_factory=list)
    peak_rss: int = 0

    def worker_alive(self) -> None:
        alive(self.worker)()

    async def kill_and_restart(self, started: float) -> None:
        proc = self.worker.proc
        assert proc is not None
        processed = 0.0
        with contextlib.suppress(OSError):
            processed = await asyncio.to_thread(
                self.worker.metric, "txwatch_events_total", outcome="processed")
        peak = peak_rss_bytes(proc.pid)
        self.peak_rss = max(self.peak_rss, peak)
        os.kill(proc.pid, self.sig)
        await asyncio.to_thread(proc.wait)
        self.kills.append(Kill(time.monotonic() - started, processed, peak))
        await asyncio.to_thread(self.worker.start)

    async def run(self, kills: int, until: asyncio.Event | None = None) -> None:
        """``kills`` kills at random moments (stops early once ``until`` is set)."""
        started = time.monotonic()
        for _ in range(kills):
            gap = self.rng.uniform(self.min_gap, self.max_gap)
            if until is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(until.wait(), gap)
                if until.is_set():
                    return
            else:
                await asyncio.sleep(gap)  # the random moment itself, not a synchronisation
            self.worker_alive()
            await self.kill_and_restart(started)

    def record_final_peak(self) -> None:
        proc = self.worker.proc
        if proc is not None and proc.poll() is None:
            self.peak_rss = max(self.peak_rss, peak_rss_bytes(proc.pid))


def worker_settings(env: Mapping[str, str]) -> Settings:
    """The settings a worker started with ``env`` reads."""
    return Settings.from_env({k: v for k, v in env.items() if k.startswith("TXWATCH_")})


# -- hostile input ---------------------------------------------------------------------------

#: Families of hostile messages, each a function of a seeded rng and a valid event.
HOSTILE_FAMILIES = (
    "random_bytes", "deep_nesting", "huge_string", "huge_number", "nan_infinity",
    "wrong_type", "duplicate_keys", "invalid_utf8", "far_timestamp", "replayed_id",
    "packed_personal_pairs",
)

_JSON_SAMPLES: tuple[Any, ...] = (None, True, False, 0, -1, 2**63 - 1, 1.5, 1e308, "",
                                  "x" * 300, [], [1, [2]], {}, {"k": "v"})


def hostile_message(family: str, rng: random.Random, event: dict[str, Any]) -> bytes:
    """One message of ``family`` built around the valid ``event``.

    Some are valid events on purpose (a far timestamp, a duplicate key whose
    last value is valid, a replayed id): the worker must process those, not
    reject them. The offline recount says which is which.
    """
    if family == "random_bytes":
        return rng.randbytes(rng.randint(0, 300))
    if family == "deep_nesting":
        depth = rng.choice((600, 1025, 5000, 50_000))
        opener, closer = rng.choice(((b"[", b"]"), (b'{"a":', b"}")))
        inner = opener * depth + b"1" + closer * depth
        return inner if rng.random() < 0.5 else orjson.dumps(event)[:-1] + b',"x":' + inner + b"}"
    if family == "huge_string":
        size = rng.choice((1_000, 60_000, 70_000, 500_000))
        name = rng.choice(("event_id", "account_id", "counterparty_id", "note", "amount"))
        return orjson.dumps({**event, name: "z" * size})
    if family == "huge_number":
        text = rng.choice(("1" * 400, "1e400", "-1e400", "123456789012345678901234567890",
                           "0." + "0" * 500 + "1", "9" * 20))
        if rng.random() < 0.5:
            return orjson.dumps({**event, "amount": text})
        return orjson.dumps(event)[:-1] + b',"amount":' + text.encode() + b"}"
    if family == "nan_infinity":
        literal = rng.choice((b"NaN", b"Infinity", b"-Infinity", b"nan", b"1e999"))
        if rng.random() < 0.5:
            return orjson.dumps({**event, "amount": literal.decode()})
        return orjson.dumps(event)[:-1] + b',"amount":' + literal + b"}"
    if family == "wrong_type":
        name = rng.choice(sorted(event))
        return orjson.dumps({**event, name: rng.choice(_JSON_SAMPLES)})
    if family == "duplicate_keys":
        name = rng.choice(("amount", "event_type", "account_id", "occurred_at"))
        twice = orjson.dumps({name: rng.choice(_JSON_SAMPLES)})[1:-1]
        body = orjson.dumps(event)
        return body[:1] + twice + b"," + body[1:] if rng.random() < 0.5 else (
            body[:-1] + b"," + twice + b"}")
    if family == "invalid_utf8":
        body = bytearray(orjson.dumps(event))
        position = rng.randrange(1, len(body) - 1)
        body[position:position] = rng.choice((b"\xff", b"\xc3\x28", b"\xed\xa0\x80",
                                              b"\xf4\x90\x80\x80", b"\xc0\xaf"))
        return bytes(body)
    if family == "far_timestamp":
        moment = rng.choice(("0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z",
                             "1970-01-01T00:00:00Z", "2999-01-01T00:00:00+23:59",
                             "0001-01-01T00:00:00+01:00", "10000-01-01T00:00:00Z",
                             "2024-13-01T00:00:00Z", "2024-03-04T25:00:00Z"))
        return orjson.dumps({**event, "occurred_at": moment})
    if family == "replayed_id":
        return orjson.dumps(event)
    if family == "packed_personal_pairs":  # redaction makes each pair ~7 times longer
        pairs = rng.choice((100, 9_300, 9_400))
        return b"{" + b'"ip":1,' * pairs
    message = f"unknown hostile family {family!r}"
    raise ValueError(message)


def hostile_messages(settings: Settings, *, good: int, bad: int, seed: int = 5,
                     accounts: int = 500) -> list[Message]:
    """``good`` simulated events with ``bad`` hostile messages spread among them.

    Hostile messages are keyed by accounts of their own (``hostile-<n>``), so
    the valid ones among them (far timestamps, odd duplicate keys) never
    disturb the state of the simulated accounts; a replay repeats a simulated
    event exactly, after the original.
    """
    rng = random.Random(f"txwatch-hostile/{seed}")
    events = list(generate(seed, accounts=accounts, events=good))
    out = [Message(settings.payments_topic, message_key(e["account_id"]), encode(e))
           for e in events]
    for number in range(bad):
        family = HOSTILE_FAMILIES[number % len(HOSTILE_FAMILIES)]
        template = dict(rng.choice(events))
        if family != "replayed_id":  # a replay is the very same event, account included
            template["account_id"] = f"hostile-{number % 50}"
            template["event_id"] = f"hostile-{number}"
        raw = hostile_message(family, rng, template)
        position = rng.randrange(len(out) + 1)
        if family == "replayed_id":  # after the original, so it is the replay
            position = max(position, next(i for i, m in enumerate(out) if m.value == raw) + 1)
        out.insert(position, Message(settings.payments_topic,
                                     message_key(template["account_id"]), raw, bad=family))
    return out
