"""Properties of the decoder: total on any input, exact on valid events, strict on broken ones."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import fastjsonschema
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from streams import codec
from streams.codec import REASONS, Decoder, compile_schema, encode_event, hash_pii, load_schema
from streams.events import EVENT_TYPES, PII_FIELDS, DeadLetter, Event

KEY = b"property-test-pii-key"
MAX_BYTES = 2048
DECODER = Decoder(pii_key=KEY, max_message_bytes=MAX_BYTES)
TYPES = sorted(EVENT_TYPES)
SCHEMAS = {event_type: load_schema(event_type) for event_type in TYPES}
#: Every field some event type declares.
FIELD_NAMES = sorted({name for schema in SCHEMAS.values() for name in schema["properties"]})

# No deadline: the machines that run the suite are shared and their timing noisy;
# the decoder's speed is measured by the benchmark, not here.
PROPERTY = settings(max_examples=200, deadline=None)

json_scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40))
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _outcome(result: Event | DeadLetter) -> str:
    assert isinstance(result, Event | DeadLetter)
    if isinstance(result, DeadLetter):
        assert result.reason in REASONS
        assert 0 < len(result.detail) <= 500
        return result.reason
    assert result.event_type in EVENT_TYPES
    assert result.occurred_at.utcoffset() == timedelta(0)
    return "event"


@PROPERTY
@given(st.binary(max_size=MAX_BYTES + 64))
def test_random_bytes_never_raise(raw: bytes) -> None:
    outcome = _outcome(DECODER.decode(raw, "t", 0, 0))
    if len(raw) > MAX_BYTES:
        assert outcome == "oversized"
    elif not _is_utf8(raw):
        assert outcome == "encoding"


@PROPERTY
@given(json_values)
def test_any_json_value_never_raises(value: Any) -> None:
    outcome = _outcome(DECODER.decode(orjson.dumps(value)))
    if not isinstance(value, dict):
        assert outcome == "not_object"


message_shaped = st.fixed_dictionaries(
    {"event_type": st.sampled_from(TYPES)},
    optional={name: json_values for name in FIELD_NAMES if name != "event_type"},
)


@PROPERTY
@given(message_shaped)
def test_message_shaped_objects_never_raise_or_leak_pii(obj: dict[str, Any]) -> None:
    result = DECODER.decode(orjson.dumps(obj))
    _outcome(result)
    if isinstance(result, DeadLetter):
        for name in PII_FIELDS:
            value = obj.get(name)
            if isinstance(value, str) and len(value) >= 8:
                assert value not in result.detail
                assert value.encode() not in result.payload
    else:
        assert not set(result.attributes) & set(PII_FIELDS)


@st.composite
def amounts(draw: st.DrawFn) -> tuple[str, int]:
    """A contract amount string and its exact value in hundredths."""
    minor = draw(st.integers(0, 10**17))
    whole, cents = divmod(minor, 100)
    forms = [f"{whole}.{cents:02d}"]
    if cents % 10 == 0:
        forms.append(f"{whole}.{cents // 10}")
    if cents == 0:
        forms.append(str(whole))
    text = "0" * draw(st.integers(0, 3)) + draw(st.sampled_from(forms))
    return text, minor


offsets = st.integers(-(23 * 60 + 59), 23 * 60 + 59).map(
    lambda minutes: timezone(timedelta(minutes=minutes)))
# Hypothesis takes naive bounds; ``timezones`` makes every drawn value aware.
moments = st.datetimes(min_value=datetime(1900, 1, 2),  # noqa: DTZ001
                       max_value=datetime(2199, 12, 30),  # noqa: DTZ001
                       timezones=offsets)
identifiers = st.text(min_size=1, max_size=128)


@st.composite
def valid_events(draw: st.DrawFn) -> tuple[dict[str, Any], int | None, datetime]:
    """A valid wire event built on its schema's example, with its amount and instant."""
    event_type = draw(st.sampled_from(TYPES))
    sent = dict(SCHEMAS[event_type]["examples"][0])
    moment = draw(moments)
    text = moment.isoformat()
    if moment.utcoffset() == timedelta(0) and draw(st.booleans()):
        text = text.replace("+00:00", "Z")
    sent.update(event_id=draw(identifiers), account_id=draw(identifiers), occurred_at=text)
    for name in PII_FIELDS:
        sent.pop(name, None)
    sent.update(draw(st.dictionaries(st.sampled_from(PII_FIELDS),
                                     st.text(min_size=1, max_size=64))))
    minor = None
    if "amount" in sent:
        sent["amount"], minor = draw(amounts())
        sent["currency"] = draw(st.from_regex(r"[A-Z]{3}", fullmatch=True))
    return sent, minor, moment


@PROPERTY
@given(valid_events())
def test_valid_events_round_trip(case: tuple[dict[str, Any], int | None, datetime]) -> None:
    sent, minor, moment = case
    event = DECODER.decode(encode_event(sent))
    assert isinstance(event, Event), event
    assert event.amount_minor == minor
    assert event.occurred_at == moment
    assert event.occurred_at.tzinfo is UTC
    assert (event.event_id, event.account_id) == (sent["event_id"], sent["account_id"])
    assert dict(event.pii) == {name: hash_pii(KEY, sent[name])
                               for name in PII_FIELDS if name in sent}
    assert not set(event.attributes) & set(PII_FIELDS)


json_integers = st.integers(-(2**63), 2**64 - 1)  # what JSON via orjson can carry
wrong_types = (st.none() | st.booleans() | json_integers
               | st.floats(allow_nan=False, allow_infinity=False)
               | st.lists(st.text(max_size=3), max_size=2)
               | st.dictionaries(st.text(max_size=3), json_integers, max_size=2))


@PROPERTY
@given(valid_events(), st.data())
def test_dropping_a_required_field_is_a_schema_problem(
        case: tuple[dict[str, Any], int | None, datetime], data: st.DataObject) -> None:
    sent = case[0]
    field = data.draw(st.sampled_from(SCHEMAS[sent["event_type"]]["required"]))
    broken = {name: value for name, value in sent.items() if name != field}
    letter = DECODER.decode(encode_event(broken))
    assert isinstance(letter, DeadLetter)
    assert letter.reason == "schema"
    assert letter.detail.startswith(field)


@PROPERTY
@given(valid_events(), st.data())
def test_a_required_field_of_the_wrong_type_is_dead_lettered(
        case: tuple[dict[str, Any], int | None, datetime], data: st.DataObject) -> None:
    sent = case[0]
    field = data.draw(st.sampled_from(SCHEMAS[sent["event_type"]]["required"]))
    value = data.draw(wrong_types)
    letter = DECODER.decode(encode_event({**sent, field: value}))
    assert isinstance(letter, DeadLetter)
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    expected = "amount" if field == "amount" and is_number else "schema"
    assert letter.reason == expected
    assert letter.detail.startswith(field)


_BY_REF = {
    event_type: fastjsonschema.compile(
        load_schema(event_type), handlers={"https": codec._local_schema},
        formats={"date": codec._is_full_date}, use_default=False)
    for event_type in TYPES
}
_INLINED = {event_type: compile_schema(event_type) for event_type in TYPES}


@settings(max_examples=100, deadline=None)
@given(message_shaped)
def test_inlined_validators_agree_with_fastjsonschema_ref_resolution(obj: dict[str, Any]) -> None:
    """The decoder inlines $ref for speed; the verdict and first error must not change."""
    event_type = obj["event_type"]
    verdicts = []
    for validate in (_BY_REF[event_type], _INLINED[event_type]):
        try:
            validate(obj)
            verdicts.append("valid")
        except fastjsonschema.JsonSchemaValueException as exc:
            verdicts.append(f"{exc.name} {exc.rule}")
    assert verdicts[0] == verdicts[1]
