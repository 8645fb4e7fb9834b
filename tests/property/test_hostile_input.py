"""Hostile and malformed input through the whole per-event path, not the decoder alone.

``tests/property/test_codec_properties.py`` shows the decoder is total. Here
the unit is :class:`streams.pipeline.Monitor` with every registered detector:
a message that decodes must also survive every detector (a detector that
raises turns the message into a ``processing_error`` dead letter, which these
tests treat as a bug), and one that does not decode must leave a dead-letter
record that honours ``dead_letter.schema.json``.

The families (``tests/support/faults.py``): random bytes, deep nesting, huge
strings and numbers, NaN and Infinity, wrong types, duplicate keys, invalid
UTF-8, far-future and ancient timestamps, replayed event ids; and valid events
with extreme values, for the detectors. ``TXWATCH_FUZZ_EXAMPLES`` raises the
number of examples of the fuzzing properties (default 300; a third of it for
sequences of events) for a longer run.
"""

from __future__ import annotations

import os
import random
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.app import build_monitor
from streams.codec import REASONS, compile_schema, dead_letter_record
from streams.events import EVENT_TYPES
from streams.pipeline import PROCESSING_ERROR, Monitor, Outcome
from streams.settings import Settings
from streams.simulate import generate
from streams.state import AccountState
from tests.support.faults import HOSTILE_FAMILIES, hostile_message, hostile_messages

SETTINGS = Settings(dev_mode=True)
FUZZ_EXAMPLES = int(os.environ.get("TXWATCH_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
#: Sequences of up to 25 events through every detector cost more per example.
FUZZ_SEQUENCES = settings(FUZZ, max_examples=max(1, FUZZ_EXAMPLES // 3))
PROPERTY = settings(max_examples=100, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
VALIDATE_DEAD_LETTER = compile_schema("dead_letter")
#: Valid events of every kind the simulator makes, as templates.
TEMPLATES: list[dict[str, Any]] = list(generate(3, accounts=100, events=6000))
#: Kafka's default limit on a produced request (the worker's producer uses it too).
PRODUCER_MAX_REQUEST_BYTES = 1_000_000
NOW = datetime(2026, 3, 1, tzinfo=UTC)


def checked(outcome: Outcome, raw: bytes) -> str:
    """The outcome's kind, after checking what a user of its outputs relies on."""
    if outcome.dead_letter is not None:
        letter = outcome.dead_letter
        assert letter.reason != PROCESSING_ERROR, (
            f"a detector failed on a decodable message: {letter.detail}; message {raw[:300]!r}")
        assert letter.reason in REASONS
        assert 0 < len(letter.detail) <= 500
        record = dead_letter_record(letter, NOW)
        # Redaction replaces personal values by 32-hex hashes, so a payload may grow
        # past max_message_bytes; the record must still be publishable.
        assert len(record) < PRODUCER_MAX_REQUEST_BYTES
        VALIDATE_DEAD_LETTER(orjson.loads(record))
        assert not outcome.alerts
        return letter.reason
    assert outcome.event is not None
    return "duplicate" if outcome.duplicate else "processed"


def fresh() -> tuple[Monitor, dict[bytes, AccountState]]:
    return build_monitor(SETTINGS), {}


@FUZZ
@given(st.sampled_from(HOSTILE_FAMILIES), st.integers(0, 2**32), st.sampled_from(TEMPLATES))
def test_hostile_messages_never_escape_as_exceptions(family: str, seed: int,
                                                     template: dict[str, Any]) -> None:
    monitor, states = fresh()
    raw = hostile_message(family, random.Random(seed), dict(template))
    outcome = monitor.process(raw, states, topic="t", partition=0, offset=0, now=NOW)
    kind = checked(outcome, raw)
    if family in ("random_bytes", "nan_infinity", "invalid_utf8", "huge_number"):
        assert kind in REASONS, f"{family} accepted: {raw[:200]!r}"


@FUZZ
@given(st.sampled_from(TEMPLATES), st.data())
def test_mutated_events_are_an_event_or_a_dead_letter(template: dict[str, Any],
                                                      data: st.DataObject) -> None:
    """Byte-level fuzzing: flips, insertions, deletions and cuts of a valid message."""
    body = bytearray(orjson.dumps(template))
    for _ in range(data.draw(st.integers(1, 4))):
        where = data.draw(st.integers(0, len(body)))
        action = data.draw(st.sampled_from(("flip", "insert", "delete", "cut")))
        if action == "flip" and where < len(body):
            body[where] ^= data.draw(st.integers(1, 255))
        elif action == "insert":
            body[where:where] = data.draw(st.binary(min_size=1, max_size=8))
        elif action == "delete":
            del body[where:where + data.draw(st.integers(1, 8))]
        else:
            del body[where:]
    monitor, states = fresh()
    checked(monitor.process(bytes(body), states, topic="t", partition=0, offset=0, now=NOW),
            bytes(body))


def moments() -> st.SearchStrategy[str]:
    """RFC 3339 instants from year 1 to 9999, with offsets, in several spellings."""
    offsets = st.integers(-23 * 60 - 59, 23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m)))
    # Hypothesis takes naive bounds for naive datetimes; the offset is attached after.
    naive = st.datetimes(min_value=datetime(1, 1, 2),  # noqa: DTZ001
                         max_value=datetime(9999, 12, 30))  # noqa: DTZ001
    return st.builds(lambda moment, zone: moment.replace(tzinfo=zone).isoformat(),
                     naive, offsets)


strings = st.text(min_size=1, max_size=40) | st.sampled_from(("x" * 128, "\u202e", "🙂" * 30))
amounts = st.sampled_from(("0", "0.01", "1", "999999999999999.99", "1000000000000000.00",
                           "000000000000001.5")) | st.integers(0, 10**17).map(
    lambda m: f"{m // 100}.{m % 100:02d}")


@st.composite
def extreme_events(draw: st.DrawFn, account: str) -> dict[str, Any]:
    """A contract-valid event with values at the edges of what the schema allows."""
    template = dict(draw(st.sampled_from(TEMPLATES)))
    template["account_id"] = account
    template["event_id"] = draw(strings)
    template["occurred_at"] = draw(st.sampled_from((
        "9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z", "1970-01-01T00:00:00Z",
        template["occurred_at"])) | moments())
    if "amount" in template:
        template["amount"] = draw(amounts)
    for name in ("counterparty_id", "merchant_id", "loan_id", "project_id", "region"):
        if name in template and draw(st.booleans()):
            template[name] = draw(strings)
    if "term_months" in template and draw(st.booleans()):
        template["term_months"] = draw(st.sampled_from((1, 600, 2**31)))
    if "days_past_due" in template and draw(st.booleans()):
        template["days_past_due"] = draw(st.sampled_from((0, 10**6, 2**62)))
    if "due_date" in template and draw(st.booleans()):
        # 9999-12-31 itself: test_a_loan_due_on_the_last_day_of_the_calendar_is_processed
        template["due_date"] = draw(st.sampled_from(("0001-01-01", "9999-12-30", "2024-02-29")))
    return template


@FUZZ_SEQUENCES
@given(st.lists(extreme_events("acct-edge"), min_size=1, max_size=25))
def test_detectors_survive_events_at_the_edges_of_the_contract(
        events: list[dict[str, Any]]) -> None:
    monitor, states = fresh()
    for offset, event in enumerate(events):
        raw = orjson.dumps(event)
        checked(monitor.process(raw, states, topic="t", partition=0, offset=offset, now=NOW),
                raw)
        state = states.get(b"acct-edge")
        if state is not None:  # still serialisable, and restores to the same state
            assert AccountState.loads(state.dumps()).dumps() == state.dumps()


@settings(PROPERTY, max_examples=15)  # each example is two runs of 420 messages
@given(st.integers(0, 10_000))
def test_good_events_are_unaffected_by_hostile_ones_between_them(seed: int) -> None:
    """Same alerts and states for the simulated accounts, with or without hostile traffic."""
    mixed = hostile_messages(SETTINGS, good=300, bad=120, seed=seed, accounts=40)
    alone = [m for m in mixed if m.bad is None]

    def run(messages: list[Any]) -> tuple[dict[bytes, Any], set[tuple[str, str]]]:
        monitor, states = fresh()
        alerts = set()
        for offset, message in enumerate(messages):
            outcome = monitor.process(message.value, states, topic="t", partition=0,
                                      offset=offset, now=NOW)
            checked(outcome, message.value)
            alerts |= {(a.alert_id, orjson.dumps(a.reasons).decode()) for a in outcome.alerts
                       if a.detector != "global_anomaly"}
        good = {k: (s.velocity(), s.monetary_events, s.latest_ts,
                    {n: v for n, v in s.detectors.items() if n != "global_anomaly"})
                for k, s in states.items() if not k.startswith(b"hostile-")}
        return good, alerts

    with_hostile, alerts_with = run(mixed)
    without, alerts_without = run(alone)
    replays = [m for m in mixed if m.bad == "replayed_id"]
    if not replays:
        assert with_hostile == without and alerts_with == alerts_without
    else:  # a replay within the last 8 events of its account is a duplicate: same result
        replayed_accounts = {m.key for m in replays}
        assert {k: v for k, v in with_hostile.items() if k not in replayed_accounts} == {
            k: v for k, v in without.items() if k not in replayed_accounts}


def test_a_replayed_event_is_a_duplicate_and_changes_nothing() -> None:
    monitor, states = fresh()
    event = next(e for e in TEMPLATES if e["event_type"] == "payment")
    raw = orjson.dumps(event)
    key = event["account_id"].encode()
    first = monitor.process(raw, states, topic="t", partition=0, offset=0, now=NOW)
    assert checked(first, raw) == "processed"
    before = states[key].dumps()
    for offset in (0, 1, 2):  # the same offset again, then re-sent at later offsets
        again = monitor.process(raw, states, topic="t", partition=0, offset=offset, now=NOW)
        assert checked(again, raw) == "duplicate" and not again.alerts
    assert states[key].dumps() == before


def test_a_replay_older_than_the_last_8_events_of_its_account_is_counted_again() -> None:
    """Documents the bound of the replay guard: 8 event ids per account (state.RECENT_IDS)."""
    monitor, states = fresh()
    base = next(e for e in TEMPLATES if e["event_type"] == "payment")
    events = [{**base, "event_id": f"e{i}", "occurred_at": f"2026-03-01T09:{i:02d}:00Z"}
              for i in range(10)]
    for offset, event in enumerate(events):
        monitor.process(orjson.dumps(event), states, topic="t", partition=0, offset=offset)
    key = base["account_id"].encode()
    counted = states[key].monetary_events
    outcome = monitor.process(orjson.dumps(events[0]), states, topic="t", partition=0,
                              offset=10)
    assert not outcome.duplicate
    assert states[key].monetary_events == counted + 1


def test_a_loan_due_on_the_last_day_of_the_calendar_is_processed() -> None:
    monitor, states = fresh()
    loan = next(e for e in TEMPLATES if e["event_type"] == "loan_disbursement")
    raw = orjson.dumps({**loan, "due_date": "9999-12-31"})
    checked(monitor.process(raw, states, topic="t", partition=0, offset=0, now=NOW), raw)


def test_duplicate_keys_take_the_last_value() -> None:
    monitor, states = fresh()
    event = next(e for e in TEMPLATES if e["event_type"] == "payment")
    body = orjson.dumps({**event, "amount": "1.00"})
    raw = body[:-1] + b',"amount":"7.00"}'
    outcome = monitor.process(raw, states, topic="t", partition=0, offset=0, now=NOW)
    assert outcome.event is not None and outcome.event.amount_minor == 700


def test_dead_letter_records_stay_publishable_however_personal_fields_are_packed() -> None:
    """A malformed message of nothing but personal pairs: redaction grows it ~7 times."""
    monitor, states = fresh()
    size = SETTINGS.max_message_bytes
    for raw in (b"{" + b'"ip":1,' * (size // 7 - 1),  # not JSON, just under the limit
                b"{" + b'"ip":1,' * (size // 7 + 10)):  # oversized: cut, then redacted
        checked(monitor.process(raw, states, topic="t", partition=0, offset=0, now=NOW), raw)


def test_a_far_future_event_does_not_blind_the_velocity_windows() -> None:
    """Ten payments in 20 s must raise a velocity alert whatever came before them.

    One event dated 9999-12-31 is valid by the contract; it must not move the
    account's event-time clock so far that every later event is "too old" for
    the windows (they would then count nothing, and no velocity alert would fire).
    """
    monitor, states = fresh()
    base = {"event_type": "payment", "account_id": "acct-clock", "amount": "20.00",
            "currency": "CNY"}
    events = [{**base, "event_id": "future", "occurred_at": "9999-12-31T23:59:59Z",
               "counterparty_id": "cp-x"}]
    events += [{**base, "event_id": f"p{i}", "occurred_at": f"2026-03-01T09:00:{2 * i:02d}Z",
                "counterparty_id": "cp-same"} for i in range(11)]
    detectors = set()
    for offset, event in enumerate(events):
        outcome = monitor.process(orjson.dumps(event), states, topic="t", partition=0,
                                  offset=offset, now=NOW)
        detectors |= {a.detector for a in outcome.alerts}
    assert "velocity" in detectors, states[b"acct-clock"].velocity()


def test_every_contract_type_has_a_template() -> None:
    """The fuzzing above starts from every event type the contract knows."""
    assert {e["event_type"] for e in TEMPLATES} == EVENT_TYPES
