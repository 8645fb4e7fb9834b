"""Derived stages: state keyed by something other than the account.

Some risks are invisible from one account: money circling through a ring of
accounts, one national ID behind many borrowers, many brand-new accounts
pledging to one project. Stage 1 (:mod:`streams.pipeline`, keyed by account)
therefore *forwards* small records to internal topics keyed by another entity,
and a stage-2 agent per topic keeps one bounded sketch per key and runs
stateless detectors over the features the sketch computes:

=========  =====================  ==========================================
stage      key                    records
=========  =====================  ==========================================
flow       account (receiver,     ``edge`` u->v at v, carrying u's origins;
           or sender for back)    ``back`` v->u at u, carrying v's dests
identity   identity hash          an account seen with a device, phone or
                                  national-ID hash
project    project id             pledges, refunds and payouts
=========  =====================  ==========================================

Every internal topic is keyed like the input topics and has the same number
of partitions, so Faust assigns partition *p* of all of them to one worker:
the flow sketch of account *u* lives on the worker that processes *u*'s
payments, which is how an outgoing edge can carry *u*'s origins without a
remote read. Each stage's records, alerts and changelog writes follow the same
batch discipline as stage 1 (``streams/agents.py``).

This module never imports Faust; the agents are in :mod:`streams.agents`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from detectors.base import Sketch, ThresholdAlerter
from streams.alerts import Alert
from streams.events import Event
from streams.sensors import Sensor
from streams.state import RECENT_IDS, short_hash

log = logging.getLogger(__name__)

FLOW: Final = "flow"
IDENTITY: Final = "identity"
PROJECT: Final = "project"
STAGES: Final = (FLOW, IDENTITY, PROJECT)

#: Event types whose counterparty edge feeds the money-flow stage. Card and
#: merchant payments are left out on purpose: every merchant would look like a
#: laundering hub.
FLOW_EVENT_TYPES: Final = frozenset({"transfer"})
#: Event types whose personal-identifier hashes feed the identity stage.
IDENTITY_EVENT_TYPES: Final = frozenset(
    {"account_opened", "loan_application", "loan_disbursement", "login"}
)
IDENTITY_KINDS: Final = ("device_id", "phone", "national_id")
PROJECT_EVENT_TYPES: Final = frozenset({"pledge", "pledge_refund", "project_payout"})
#: Alert ids remembered per stage key (see :class:`StageEntry`).
ALERTED_IDS: Final = 16


def stage_topic(app_id: str, stage: str) -> str:
    """The internal topic of ``stage`` (``txwatch worker`` creates it before subscribing)."""
    return f"{app_id}-{stage}"


@dataclass(frozen=True, slots=True)
class Forward:
    """A record for a derived stage, keyed by that stage's entity."""

    stage: str
    key: str
    record: dict[str, Any]

    def dumps(self) -> bytes:
        return orjson.dumps(self.record)


@dataclass(slots=True)
class StageEntry:
    """One key's sketch plus the replay guards, as stored in the stage's table.

    ``recent_ids`` are the last :data:`RECENT_IDS` records' id digests;
    ``alerted`` the last :data:`ALERTED_IDS` alert ids raised at this key
    (digests), so that a record the first guard has forgotten, re-sent by a
    stage-1 replay, cannot publish an alert id a second time with other numbers.
    """

    sketch: Sketch
    offset: int = -1
    recent_ids: list[int] = field(default_factory=list)
    alerted: list[int] = field(default_factory=list)

    def dumps(self) -> bytes:
        return orjson.dumps([self.offset, self.recent_ids, self.sketch.to_state(),
                             self.alerted])


@dataclass(slots=True)
class StageOutcome:
    alerts: list[Alert] = field(default_factory=list)
    forwards: list[Forward] = field(default_factory=list)
    key: bytes | None = None
    rejected: str | None = None


class DerivedStage:
    """Processes one stage's records: sketch update, detectors, follow-up records.

    Parameters
    ----------
    name
        ``flow``, ``identity`` or ``project``.
    new_sketch
        Makes an empty sketch.
    load_sketch
        Rebuilds a sketch from its ``to_state()``.
    observe
        ``observe(sketch, record) -> (features | None, forwards)``: updates the
        sketch with one record and returns the detectors' features (``None``
        when the record only updates state) and any follow-up records.
    alerters
        This stage's detectors with their thresholds.
    """

    def __init__(self, name: str, new_sketch: Callable[[], Sketch],
                 load_sketch: Callable[[Any], Sketch],
                 observe: Callable[[Any, dict[str, Any]], tuple[dict[str, Any] | None,
                                                                  list[Forward]]],
                 alerters: Sequence[ThresholdAlerter], config_version: str,
                 sensor: Sensor | None = None) -> None:
        self.name = name
        self.new_sketch = new_sketch
        self.load_sketch = load_sketch
        self.observe = observe
        self.alerters = list(alerters)
        self.config_version = config_version
        self.sensor = sensor or Sensor()
        #: analysts' feedback ranker (``streams/feedback.py``), set by the worker
        self.ranker: Callable[[Alert], float | None] | None = None
        #: the bounds its sketches are built with (``FlowParams`` for the flow stage), fixed
        #: for the worker's life: a configuration that would change them is refused
        self.bounds: Any = None

    def entry(self, states: MutableMapping[Any, Any], key: bytes) -> StageEntry:
        """The key's entry, created or rebuilt from its recovered JSON form."""
        value = states.get(key)
        if isinstance(value, StageEntry):
            return value
        if value is None:
            entry = StageEntry(self.new_sketch())
        else:
            offset, recent, sketch_state = value[:3]
            alerted = list(value[3]) if len(value) > 3 else []  # absent before alerted ids
            entry = StageEntry(self.load_sketch(sketch_state), offset, list(recent), alerted)
        states[key] = entry
        return entry

    def peek(self, states: Mapping[Any, Any], key: bytes) -> Any:
        """The sketch for ``key`` without creating one (``None`` when unseen)."""
        value = states.get(key)
        if value is None:
            return None
        if isinstance(value, StageEntry):
            return value.sketch
        return self.load_sketch(value[2])

    def process(self, raw: bytes, states: MutableMapping[Any, Any], *, offset: int | None,
                now: datetime | None = None,
                source_timestamp: float | None = None) -> StageOutcome:
        """Handle one record. Never raises: an unusable record is logged and rejected."""
        try:
            record = orjson.loads(raw)
            key = record["_key"].encode()
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            log.error("stage %s: unusable internal record at offset %s: %s",
                      self.name, offset, type(exc).__name__)
            return StageOutcome(rejected=type(exc).__name__)
        entry = self.entry(states, key)
        # a relay wave may pass one account more than once: relays have ids of their own
        event_id = (f"{record.get('kind', '')}:"
                    f"{record.get('relay_id') or record.get('event_id', '')}")
        digest = short_hash(event_id)
        if (offset is not None and offset <= entry.offset) or digest in entry.recent_ids:
            return StageOutcome()
        try:
            features, forwards = self.observe(entry.sketch, record)
        except Exception as exc:  # a sketch bug must not stop the partition
            log.exception("stage %s: record %s failed", self.name, event_id)
            return StageOutcome(key=key, rejected=type(exc).__name__)
        if offset is not None:
            entry.offset = offset
        entry.recent_ids.append(digest)
        if len(entry.recent_ids) > RECENT_IDS:
            del entry.recent_ids[0]
        alerts: list[Alert] = []
        if features is not None:
            # built on the first finding: most records raise none
            detected_at = now
            event: Event | None = None
            sensor = self.sensor
            for alerter in self.alerters:
                finding, _ = alerter.process_one(features)
                score = alerter.last_score
                if score > 0.0:
                    sensor.on_score(alerter.name, score)
                if finding is None:
                    continue
                if event is None:
                    event = _event_of(record, features)
                if detected_at is None:
                    detected_at = datetime.now(UTC)
                # scoped by key: an event that is two identity records (device and
                # phone) can be two findings, each with its own id
                scope: str | None = record["_key"]
                named = features.get(f"{alerter.name}_key")
                if isinstance(named, str) and named:
                    # a finding that names what it is about (a ring) keeps one id
                    # whichever account, record or arrival order reaches it
                    finding, scope = replace(finding, key=named), None
                alert = Alert.from_finding(finding, event, detected_at, self.config_version,
                                           scope=scope)
                alerted = short_hash(alert.alert_id)
                if alerted in entry.alerted:
                    continue  # raised before, from a copy of this record
                entry.alerted.append(alerted)
                if len(entry.alerted) > ALERTED_IDS:
                    del entry.alerted[0]
                if self.ranker is not None:
                    alert = replace(alert, feedback_probability=self.ranker(alert))
                alerts.append(alert)
                self.sensor.on_alert(alert, source_timestamp)
        return StageOutcome(alerts=alerts, forwards=forwards, key=key)


def _event_of(record: Mapping[str, Any], features: Mapping[str, Any]) -> Event:
    """The event an alert of this stage points at (the source event of the record)."""
    ts = int(record.get("ts", 0))
    amount = record.get("amount_minor")
    return Event(
        event_id=str(record.get("event_id", "")),
        event_type=str(record.get("event_type", record.get("kind", "derived"))),
        occurred_at=datetime.fromtimestamp(ts, UTC),
        account_id=str(features.get("account_id") or record.get("account_id") or ""),
        amount_minor=amount if isinstance(amount, int) else None,
        # a relay's record carries no currency: the alert then names none rather than a guess
        currency=(record.get("currency") or None) if isinstance(amount, int) else None,
        counterparty_id=features.get("counterparty_id"),
    )


def forwards_for(event: Event, x: Mapping[str, Any],
                 peek_flow: Callable[[str], Any] | None,
                 origins_for_edge: Callable[[Any, str, int], Any] | None) -> list[Forward]:
    """The records stage 1 sends on for one accepted event."""
    out: list[Forward] = []
    ts = int(x["ts"])
    amount = event.amount_minor
    if (event.event_type in FLOW_EVENT_TYPES and event.counterparty_id
            and event.counterparty_id != event.account_id and origins_for_edge is not None):
        sketch = peek_flow(event.account_id) if peek_flow is not None else None
        out.append(Forward(FLOW, event.counterparty_id, {
            "_key": event.counterparty_id, "kind": "edge", "event_id": event.event_id,
            "event_type": event.event_type, "ts": ts, "sender": event.account_id,
            "receiver": event.counterparty_id, "amount_minor": amount,
            "currency": event.currency,
            "sender_origins": origins_for_edge(sketch, event.account_id, ts),
        }))
    if event.event_type in IDENTITY_EVENT_TYPES:
        for kind in IDENTITY_KINDS:
            digest = event.pii.get(kind)
            if digest:
                out.append(Forward(IDENTITY, f"{kind}:{digest}", {
                    "_key": f"{kind}:{digest}", "kind": "identity", "identity_kind": kind,
                    "event_id": event.event_id, "event_type": event.event_type, "ts": ts,
                    "account_id": event.account_id, "amount_minor": amount,
                    "currency": event.currency,
                }))
    project = event.attributes.get("project_id")
    if event.event_type in PROJECT_EVENT_TYPES and isinstance(project, str) and project:
        out.append(Forward(PROJECT, project, {
            "_key": project, "kind": "project", "event_type": event.event_type,
            "event_id": event.event_id, "ts": ts, "account_id": event.account_id,
            "amount_minor": amount, "currency": event.currency,
            "device_id_hash": event.pii.get("device_id"),
            "account_events": x.get("account_events", 0), "project_id": project,
        }))
    return out


# -- the three stages, built from their sketches ----------------------------------------------
def _observe_flow(sketch: Any, record: dict[str, Any]) -> tuple[dict[str, Any], list[Forward]]:
    """Edge at the receiver (answered with a back record), back/relay at the sender.

    ``gather`` records repair a scatter-gather count whose records arrived
    late (``FlowSketch.late_gathers``, ``FlowSketch.gathers_for_back``).
    """
    from detectors.flow import gathered_origins

    if record.get("kind") == "edge":
        features = sketch.observe_edge(record)
        sender, receiver, ts = record["sender"], record["receiver"], int(record["ts"])
        back = {
            "_key": sender, "kind": "back", "event_id": record["event_id"],
            "event_type": record.get("event_type"), "ts": ts, "sender": sender,
            "receiver": receiver, "amount_minor": record.get("amount_minor"),
            "receiver_dests": sketch.dests_for_back(ts, receiver),
            # a ring reported here is not reported again where the back record lands
            "cycle_length": features.get("cycle_length", 0),
            # a repeat payment, known only here, extends no path at the sender either
            "novel": bool(features.get("flow_novel", True)),
            # what the sender must still pass on to a scatter-gather count here
            "gathered": gathered_origins(record),
        }
        gathers = [Forward(FLOW, str(g["receiver"]), {**g, "_key": g["receiver"]})
                   for g in sketch.late_gathers(record, features)]
        return features, [Forward(FLOW, sender, back), *gathers]
    if record.get("kind") == "gather":
        return sketch.observe_gather(record), []
    gathers = [Forward(FLOW, str(g["receiver"]), {**g, "_key": g["receiver"]})
               for g in sketch.gathers_for_back(record)] if record.get("kind") == "back" else []
    outcome = sketch.observe_back(record)
    relays = gathers + [Forward(FLOW, str(r["sender"]), {**r, "_key": r["sender"]})
                        for r in outcome.relays]
    return outcome.features, relays


def flow_params(alerters: Sequence[ThresholdAlerter],
                bounds: Mapping[str, Any] | None = None) -> Any:
    """The flow sketch's bounds: ``bounds`` as configured, rings and horizons as the detectors'.

    ``bounds`` is the configuration's ``stages.flow`` section (default: the
    packaged configuration's). ``cycle``'s ``max_ring`` and
    ``max_span_seconds`` set the sketch's ring length and window, ``fan_in``'s
    ``window_seconds`` its fan-in window and the longest of
    ``gather_scatter``'s and ``scatter_gather``'s ``window_seconds`` its hub
    window; the sender memory covers the longest.
    """
    from detectors.flow import DEFAULT_FLOW_PARAMS as defaults
    from detectors.flow import FlowParams
    from detectors.registry import DEFAULT_CONFIG

    configured = dict(DEFAULT_CONFIG["stages"][FLOW] if bounds is None else bounds)
    detectors = {alerter.name: alerter.detector for alerter in alerters}
    changes: dict[str, int] = {}
    cycle = detectors.get("cycle")
    if cycle is not None:
        changes["max_ring"] = max(2, getattr(cycle, "max_ring", defaults.max_ring))
        changes["window_seconds"] = getattr(cycle, "max_span_seconds", defaults.window_seconds)
    fan_in = detectors.get("fan_in")
    if fan_in is not None:
        changes["fan_in_seconds"] = getattr(fan_in, "window_seconds", defaults.fan_in_seconds)
    hubs = [getattr(detectors[name], "window_seconds", defaults.hub_seconds)
            for name in ("gather_scatter", "scatter_gather") if name in detectors]
    if hubs:
        changes["hub_seconds"] = max(hubs)
    seconds = [changes.get(name, 0) for name in ("window_seconds", "fan_in_seconds",
                                                 "hub_seconds")]
    configured["memory_seconds"] = max(
        configured.get("memory_seconds", defaults.memory_seconds), *seconds)
    return FlowParams(**configured, **changes)


def sketch_bounds(name: str, alerters: Sequence[ThresholdAlerter],
                  bounds: Mapping[str, Any] | None = None) -> Any:
    """The bounds stage ``name``'s sketches are built with, or ``None`` for a stage without."""
    return flow_params(alerters, bounds) if name == FLOW else None


def _sketch_of(name: str, alerters: Sequence[ThresholdAlerter] = (),
               bounds: Mapping[str, Any] | None = None) -> tuple[Any, Callable[..., Any]]:
    if name == FLOW:
        from detectors.flow import FlowSketch

        params = flow_params(alerters, bounds)

        class BoundedFlow:
            new = staticmethod(lambda: FlowSketch.new(params))
            from_state = staticmethod(lambda state: FlowSketch.from_state(state, params))

        return BoundedFlow, _observe_flow
    if name == IDENTITY:
        from detectors.identity import IdentitySketch

        return IdentitySketch, _observe_plain
    from detectors.crowdfunding import ProjectSketch

    return ProjectSketch, _observe_plain


def _observe_plain(sketch: Any, record: dict[str, Any]) -> tuple[dict[str, Any], list[Forward]]:
    return sketch.observe(record), []


def stage_deriver(stages: Mapping[str, DerivedStage],
                  flow_states: Mapping[Any, Any] | None) -> Callable[[Any, dict[str, Any]],
                                                                     list[Forward]]:
    """Stage 1's forwarding function: ``derive(event, x) -> forwards`` for ``stages``.

    ``flow_states`` is where the flow stage keeps its sketches (the worker's
    flow table, or a plain ``dict`` offline), read for the origins an outgoing
    transfer carries.
    """
    from detectors.flow import edge_origins

    flow = stages.get(FLOW)
    states: Mapping[Any, Any] = flow_states if flow_states is not None else {}

    def peek(account: str) -> Any:
        return flow.peek(states, account.encode()) if flow is not None else None

    def derive(event: Any, x: dict[str, Any]) -> list[Forward]:
        forwards = forwards_for(event, x, peek, edge_origins if flow is not None else None)
        return [f for f in forwards if f.stage in stages]

    return derive


def build_stages(stage_alerters: Mapping[str, Sequence[ThresholdAlerter]], config_version: str,
                 bounds: Mapping[str, Mapping[str, Any]],
                 sensor: Sensor | None = None) -> dict[str, DerivedStage]:
    """The derived stages that have at least one detector configured.

    ``bounds``: each stage's configured sketch bounds (``RuleSet.bounds``), so
    that no caller builds sketches with other bounds than its configuration's.
    """
    stages: dict[str, DerivedStage] = {}
    for name, alerters in stage_alerters.items():
        if not alerters or name not in STAGES:
            continue
        configured = bounds.get(name)
        sketch_type, observe = _sketch_of(name, alerters, configured)
        stages[name] = DerivedStage(name, sketch_type.new, sketch_type.from_state, observe,
                                    alerters, config_version, sensor)
        stages[name].bounds = sketch_bounds(name, alerters, configured)
    return stages
