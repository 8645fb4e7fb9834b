"""Event contract v1 on the wire: what decodes, what is dead-lettered and why, what is hidden."""

from __future__ import annotations

import base64
import doctest
import hmac
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from types import MappingProxyType
from typing import Any

import fastjsonschema
import orjson
import pytest

from streams import codec
from streams.alerts import Alert
from streams.codec import (
    AMOUNT_PATTERN,
    REASONS,
    SCHEMA_BASE_URI,
    CodecDeadLetter,
    Decoder,
    compile_schema,
    dead_letter_record,
    encode_event,
    hash_pii,
    load_schema,
)
from streams.events import EVENT_TYPES, PII_FIELDS, DeadLetter, Event

KEY = b"unit-test-pii-key"
MAX_BYTES = 4096
SCHEMA_DIR = Path(codec.__file__).parent / "schemas"
OCCURRED = "2024-05-01T12:30:00Z"
OCCURRED_UTC = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)

PHONE = "+49 151 2345678"
NATIONAL_ID = "X1234567Q"
DEVICE = "device-fingerprint-77aa"
IP = "198.51.100.23"
CLEAR_VALUES = (PHONE, NATIONAL_ID, DEVICE, IP)


@pytest.fixture(scope="module")
def decoder() -> Decoder:
    return Decoder(pii_key=KEY, max_message_bytes=MAX_BYTES)


def message(event_type: str, /, **fields: Any) -> dict[str, Any]:
    """A valid message of ``event_type`` with its required fields; ``fields`` win."""
    required: dict[str, Any] = {
        "payment": {"amount": "10.00", "currency": "EUR"},
        "transfer": {"amount": "10.00", "currency": "EUR", "counterparty_id": "acc-2"},
        "top_up": {"amount": "10.00", "currency": "EUR"},
        "withdrawal": {"amount": "10.00", "currency": "EUR"},
        "refund": {"amount": "10.00", "currency": "EUR"},
        "loan_application": {"amount": "10.00", "currency": "EUR", "loan_id": "L-1"},
        "loan_disbursement": {"amount": "10.00", "currency": "EUR", "loan_id": "L-1"},
        "loan_repayment": {"amount": "10.00", "currency": "EUR", "loan_id": "L-1"},
        "loan_status": {"loan_id": "L-1", "status": "current"},
        "pledge": {"amount": "10.00", "currency": "EUR", "project_id": "P-1"},
        "pledge_refund": {"amount": "10.00", "currency": "EUR", "project_id": "P-1"},
        "project_payout": {"amount": "10.00", "currency": "EUR", "project_id": "P-1"},
        "account_opened": {},
        "login": {},
        "credential_change": {"kind": "password"},
    }[event_type]
    return {"event_id": f"evt-{event_type}", "event_type": event_type,
            "occurred_at": OCCURRED, "account_id": "acc-1", **required, **fields}


def raw(event_type: str, /, **fields: Any) -> bytes:
    return encode_event(message(event_type, **fields))


def dead(result: Event | DeadLetter) -> CodecDeadLetter:
    assert isinstance(result, CodecDeadLetter), f"expected a dead letter, got {result!r}"
    return result


def ok(result: Event | DeadLetter) -> Event:
    assert isinstance(result, Event), f"expected an event, got {result!r}"
    return result


# -- one valid example per type ------------------------------------------------------------------

#: type -> (extra fields, expected amount_minor, expected attributes)
VALID: dict[str, tuple[dict[str, Any], int | None, dict[str, Any]]] = {
    "payment": ({"amount": "48000.00", "merchant_id": "m-1", "industry": "travel",
                 "counterparty_id": "m-1", "channel": "web", "region": "DE"},
                4_800_000, {}),
    "transfer": ({"amount": "12", "counterparty_id": "acc-2"}, 1200, {}),
    "top_up": ({"amount": "0.5", "currency": "CNY", "counterparty_id": "card-1"}, 50, {}),
    "withdrawal": ({"amount": "250.75"}, 25075, {}),
    "refund": ({"amount": "9.99"}, 999, {}),
    "loan_application": ({"amount": "20000", "loan_id": "L-9", "term_months": 24,
                          "age_band": "25-34", "national_id": NATIONAL_ID, "phone": PHONE},
                         2_000_000, {"loan_id": "L-9", "term_months": 24, "age_band": "25-34"}),
    "loan_disbursement": ({"amount": "19500.00", "loan_id": "L-9", "due_date": "2026-04-30",
                           "term_months": 24, "age_band": "25-34", "dealer": "d-3"},
                          1_950_000, {"loan_id": "L-9", "due_date": "2026-04-30",
                                      "term_months": 24, "age_band": "25-34", "dealer": "d-3"}),
    "loan_repayment": ({"amount": "812.50"}, 81250, {"loan_id": "L-1"}),
    "loan_status": ({"status": "delinquent", "days_past_due": 31, "outstanding": "1250.00",
                     "currency": "EUR"}, None,
                    {"loan_id": "L-1", "status": "delinquent", "days_past_due": 31,
                     "outstanding": "1250.00"}),
    "pledge": ({"amount": "25"}, 2500, {"project_id": "P-1"}),
    "pledge_refund": ({"amount": "25.00"}, 2500, {"project_id": "P-1"}),
    "project_payout": ({"amount": "150000.00"}, 15_000_000, {"project_id": "P-1"}),
    "account_opened": ({"phone": PHONE, "national_id": NATIONAL_ID, "age_band": "18-24"},
                       None, {"age_band": "18-24"}),
    "login": ({"ip": IP, "device_id": DEVICE, "channel": "app"}, None, {}),
    "credential_change": ({"kind": "phone", "device_id": DEVICE}, None, {"kind": "phone"}),
}


def test_every_contract_type_has_a_valid_example() -> None:
    assert set(VALID) == set(EVENT_TYPES)


@pytest.mark.parametrize("event_type", sorted(VALID))
def test_valid_example_decodes_with_the_right_fields(decoder: Decoder, event_type: str) -> None:
    extra, amount_minor, attributes = VALID[event_type]
    sent = message(event_type, label={"pattern": "none"}, **extra)
    event = ok(decoder.decode(encode_event(sent), "txwatch.payments", 3, 17))
    assert event.event_id == f"evt-{event_type}"
    assert event.event_type == event_type
    assert event.account_id == "acc-1"
    assert event.occurred_at == OCCURRED_UTC
    assert event.amount_minor == amount_minor
    assert event.currency == sent.get("currency")
    for name in ("counterparty_id", "channel", "region", "merchant_id", "industry"):
        assert getattr(event, name) == sent.get(name)
    assert dict(event.attributes) == {**attributes, "label": {"pattern": "none"}}
    assert set(event.pii) == {name for name in PII_FIELDS if name in sent}
    for name, digest in event.pii.items():
        assert digest == hash_pii(KEY, sent[name])


# -- amounts -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("amount", "minor"), [
    ("0", 0),
    ("0.00", 0),
    ("0.01", 1),
    ("0.5", 50),
    ("12", 1200),
    ("48000.00", 4_800_000),
    ("007.50", 750),
    ("999999999999999.99", 99_999_999_999_999_999),
    ("1000000000000000", 10**17),
    ("1000000000000000.00", 10**17),
])
def test_amount_is_exact_integer_hundredths(decoder: Decoder, amount: str, minor: int) -> None:
    event = ok(decoder.decode(raw("payment", amount=amount)))
    assert event.amount_minor == minor
    assert type(event.amount_minor) is int


@pytest.mark.parametrize(("amount", "explains"), [
    ("1e3", "exponent notation"),
    ("1E3", "exponent notation"),
    ("-1", "is negative"),
    ("−5", "is negative"),
    ("+5", "has a sign"),
    ("NaN", "not a finite number"),
    ("Infinity", "not a finite number"),
    ("-Infinity", "not a finite number"),
    (12.5, "is a JSON number; send the amount as a string"),
    (12, "is a JSON integer; send the amount as a string"),
    ("1.234", "has more than 2 decimal places"),
    ("1000000000000000.01", "more than the maximum"),
    ("123456789012345678901234567890", "more than the maximum"),
    ("0" * 40 + "1", "longer than 32 characters"),
    ("1,000.00", "has a comma"),
    ("12.", "is not a non-negative decimal with at most 2 places"),
    (".5", "is not a non-negative decimal with at most 2 places"),
    (" 12", "is not a non-negative decimal with at most 2 places"),
    ("", "is not a non-negative decimal with at most 2 places"),
    ("١٢", "is not a non-negative decimal with at most 2 places"),
])
def test_bad_amount_is_dead_lettered_with_the_problem(decoder: Decoder, amount: Any,
                                                      explains: str) -> None:
    letter = dead(decoder.decode(raw("payment", amount=amount)))
    assert letter.reason == "amount"
    assert letter.detail.startswith(f"amount: {amount!r}"[:40])
    assert explains in letter.detail
    assert letter.event_type == "payment"


@pytest.mark.parametrize("amount", [True, None, ["1"], {"value": "1"}])
def test_amount_of_another_json_type_is_a_schema_problem(decoder: Decoder, amount: Any) -> None:
    letter = dead(decoder.decode(raw("payment", amount=amount)))
    assert letter.reason == "schema"
    assert letter.detail.startswith("amount: expected string, got ")


def test_amount_is_checked_with_the_same_rule_as_the_published_schema() -> None:
    assert load_schema("common")["definitions"]["amount"]["pattern"] == AMOUNT_PATTERN


# -- occurred_at ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("sent", "utc"), [
    ("2024-05-01T12:30:00Z", datetime(2024, 5, 1, 12, 30, tzinfo=UTC)),
    ("2024-05-01T14:30:00+02:00", datetime(2024, 5, 1, 12, 30, tzinfo=UTC)),
    ("2024-05-01T00:30:00-05:30", datetime(2024, 5, 1, 6, 0, tzinfo=UTC)),
    ("2024-05-01T08:00:00+0800", datetime(2024, 5, 1, 0, 0, tzinfo=UTC)),
    ("2024-01-01T01:00:00+02:00", datetime(2023, 12, 31, 23, 0, tzinfo=UTC)),
    ("2024-05-01t12:30:00.25z", datetime(2024, 5, 1, 12, 30, 0, 250_000, tzinfo=UTC)),
    ("2024-05-01T12:30:00.123456789Z", datetime(2024, 5, 1, 12, 30, 0, 123_456, tzinfo=UTC)),
    ("2024-02-29T23:59:59-00:00", datetime(2024, 2, 29, 23, 59, 59, tzinfo=UTC)),
])
def test_occurred_at_is_normalised_to_aware_utc(decoder: Decoder, sent: str,
                                                utc: datetime) -> None:
    event = ok(decoder.decode(raw("login", occurred_at=sent)))
    assert event.occurred_at == utc
    assert event.occurred_at.utcoffset() == timedelta(0)
    assert event.occurred_at.tzinfo is UTC


@pytest.mark.parametrize(("sent", "explains"), [
    ("2024-05-01T12:30:00", "is not an RFC 3339 date-time with Z or an offset"),
    ("2024-05-01 12:30:00Z", "is not an RFC 3339 date-time with Z or an offset"),
    ("2024-02-30T00:00:00Z", "is not an RFC 3339 date-time with Z or an offset"),
    ("2023-02-29T00:00:00Z", "is not an RFC 3339 date-time with Z or an offset"),
    ("yesterday", "is not an RFC 3339 date-time with Z or an offset"),
    ("", "is not an RFC 3339 date-time with Z or an offset"),
    ("2024-12-31T23:59:60Z", "is not a real instant (second must be in 0..59)"),
    ("0001-01-01T00:30:00+01:00", "is out of range once converted to UTC"),
])
def test_bad_occurred_at_is_dead_lettered_as_timestamp(decoder: Decoder, sent: str,
                                                       explains: str) -> None:
    letter = dead(decoder.decode(raw("payment", occurred_at=sent)))
    assert letter.reason == "timestamp"
    assert letter.detail == f"occurred_at: {sent!r} {explains}"


def test_occurred_at_of_another_json_type_is_a_schema_problem(decoder: Decoder) -> None:
    letter = dead(decoder.decode(raw("payment", occurred_at=1714566600)))
    assert (letter.reason, letter.detail) == (
        "schema", "occurred_at: expected string, got integer 1714566600")


# -- every dead-letter reason, with a helpful detail ---------------------------------------------

BAD_MESSAGES: list[tuple[str, bytes | None, str, str]] = [
    # (id, message, reason, text the detail must contain)
    ("oversized", b'{"event_id": "' + b"x" * MAX_BYTES + b'"}', "oversized",
     f"message is {MAX_BYTES + 16} bytes, more than the {MAX_BYTES} allowed"),
    ("latin-1", '{"event_id": "café"}'.encode("latin-1"), "encoding",
     "not UTF-8: byte 0xe9 at offset 17"),
    ("utf-16", '{"a": 1}'.encode("utf-16"), "encoding", "not UTF-8: byte 0xff at offset 0"),
    ("tombstone", None, "not_json", "message value is null (a tombstone?)"),
    ("empty", b"", "not_json", "not JSON: Input is a zero-length, empty document"),
    ("truncated", b'{"event_id": "e1", "event_type": "login"', "not_json", "not JSON: "),
    ("trailing comma", b'{"event_id": "e1",}', "not_json", "not JSON: "),
    ("NaN literal", b'{"amount": NaN}', "not_json", "not JSON: "),
    ("BOM", b'\xef\xbb\xbf{"event_id": "e1"}', "not_json", "byte order mark"),
    ("deep nesting", b"[" * 1100 + b"]" * 1100, "not_json", "nested more than 1024 levels deep"),
    ("array", b'[{"event_type": "login"}]', "not_object", "expected a JSON object, got array"),
    ("string", b'"login"', "not_object", "expected a JSON object, got string"),
    ("null", b"null", "not_object", "expected a JSON object, got null"),
    ("unknown type", raw("login", event_type="chargeback"), "unknown_type",
     "event_type: 'chargeback' is not in contract v1 (account_opened, credential_change"),
    ("no event_type", orjson.dumps({"event_id": "e1"}), "schema",
     "event_type: missing, required in every event"),
    ("event_type number", raw("login", event_type=7), "schema",
     "event_type: expected string, got integer 7"),
    ("missing ids", orjson.dumps({"event_type": "login", "occurred_at": OCCURRED}), "schema",
     "event_id, account_id: missing, required in login events"),
    ("missing amount", orjson.dumps({k: v for k, v in message("payment").items()
                                     if k != "amount"}), "schema",
     "amount: missing, required in payment events"),
    ("missing loan_id", orjson.dumps({k: v for k, v in message("loan_status").items()
                                      if k != "loan_id"}), "schema",
     "loan_id: missing, required in loan_status events"),
    ("empty event_id", raw("login", event_id=""), "schema",
     "event_id: empty string, at least 1 character(s) required"),
    ("long account_id", raw("login", account_id="a" * 200), "schema",
     "account_id: 200 characters, at most 128 allowed"),
    ("term as text", raw("loan_application", term_months="twelve"), "schema",
     "term_months: expected integer, got string 'twelve'"),
    ("term zero", raw("loan_application", term_months=0), "schema",
     "term_months: 0 is below the minimum 1"),
    ("negative dpd", raw("loan_status", days_past_due=-1), "schema",
     "days_past_due: -1 is below the minimum 0"),
    ("bad status", raw("loan_status", status="late"), "schema",
     "status: 'late' is not one of current, delinquent, repaid, written_off"),
    ("bad kind", raw("credential_change", kind="pin"), "schema",
     "kind: 'pin' is not one of password, phone, email, device"),
    ("lower currency", raw("payment", currency="eur"), "schema",
     "currency: 'eur' is not an ISO 4217 code (three capital letters)"),
    ("amount on login", raw("login", amount="1.00", currency="EUR"), "schema",
     "amount: not allowed in login events"),
    ("outstanding alone", raw("loan_status", outstanding="10.00"), "schema",
     "currency: missing, required with outstanding"),
    ("bad outstanding", raw("loan_status", outstanding="1.234", currency="EUR"), "schema",
     "outstanding: '1.234' has more than 2 decimal places"),
    ("impossible due date", raw("loan_disbursement", due_date="2025-02-30"), "schema",
     "due_date: '2025-02-30' is not a real calendar date YYYY-MM-DD"),
    ("channel null", raw("payment", channel=None), "schema",
     "channel: expected string, got null None"),
    ("bad amount", raw("payment", amount="1.234"), "amount",
     "amount: '1.234' has more than 2 decimal places"),
    ("bad time", raw("payment", occurred_at="2024-13-01T00:00:00Z"), "timestamp",
     "occurred_at: '2024-13-01T00:00:00Z' is not an RFC 3339 date-time"),
]


def test_every_reason_has_a_bad_message() -> None:
    assert {reason for _, _, reason, _ in BAD_MESSAGES} == set(REASONS)


@pytest.mark.parametrize(("sent", "reason", "explains"),
                         [case[1:] for case in BAD_MESSAGES],
                         ids=[case[0] for case in BAD_MESSAGES])
def test_bad_message_is_dead_lettered_with_reason_and_detail(
        decoder: Decoder, sent: bytes | None, reason: str, explains: str) -> None:
    letter = dead(decoder.decode(sent, "txwatch.payments", 2, 41017))
    assert letter.reason == reason
    assert explains in letter.detail
    assert len(letter.detail) <= 500
    assert (letter.topic, letter.partition, letter.offset) == ("txwatch.payments", 2, 41017)
    if sent is not None and reason != "oversized":
        assert letter.payload == sent  # nothing personal to redact


@pytest.mark.parametrize(("fields", "reason"), [
    # A schema problem wins over amount and timestamp, whatever the key order.
    ({"amount": "1.234", "currency": "eur"}, "schema"),
    ({"occurred_at": "soon", "account_id": ""}, "schema"),
    ({"amount": -1, "term_months": "x"}, "schema"),
    # An amount problem wins over a timestamp problem.
    ({"occurred_at": "soon", "amount": "1e3"}, "amount"),
    ({"occurred_at": "2024-02-30T00:00:00Z", "amount": 5}, "amount"),
])
def test_reasons_follow_the_documented_order(decoder: Decoder, fields: dict[str, Any],
                                             reason: str) -> None:
    sent = message("loan_application", loan_id="L-1", **fields)
    # Put the later-checked fields first so key order cannot decide the reason.
    ordered = {**{k: sent[k] for k in fields}, **sent}
    assert dead(decoder.decode(orjson.dumps(ordered))).reason == reason


def test_dead_letter_knows_the_event_type_once_it_is_known(decoder: Decoder) -> None:
    assert dead(decoder.decode(raw("refund", amount="x"))).event_type == "refund"
    assert dead(decoder.decode(raw("refund", event_type="chargeback"))).event_type == "unknown"
    assert dead(decoder.decode(b"{")).event_type == "unknown"


def test_duplicate_keys_keep_the_last_occurrence(decoder: Decoder) -> None:
    sent = raw("payment").replace(b'"amount":"10.00"', b'"amount":"1","amount":"1000"')
    assert sent.count(b'"amount"') == 2
    assert ok(decoder.decode(sent)).amount_minor == 100_000


def test_bytes_like_values_are_accepted(decoder: Decoder) -> None:
    sent = raw("login")
    assert ok(decoder.decode(bytearray(sent))) == ok(decoder.decode(memoryview(sent)))


def test_unknown_extra_fields_are_kept_in_attributes(decoder: Decoder) -> None:
    event = ok(decoder.decode(raw("payment", basket={"items": 3}, promo_code="SPRING")))
    assert event.attributes == {"basket": {"items": 3}, "promo_code": "SPRING"}


def test_message_exactly_at_the_limit_is_read(decoder: Decoder) -> None:
    base = raw("login", padding="")
    sent = raw("login", padding="x" * (MAX_BYTES - len(base)))
    assert len(sent) == MAX_BYTES
    assert isinstance(decoder.decode(sent), Event)


# -- personal data -------------------------------------------------------------------------------


def _personal(event_type: str = "loan_application", /, **fields: Any) -> dict[str, Any]:
    return message(event_type, phone=PHONE, national_id=NATIONAL_ID, device_id=DEVICE, ip=IP,
                   **fields)


def test_pii_is_keyed_hmac_sha256_and_never_kept_in_clear(decoder: Decoder) -> None:
    event = ok(decoder.decode(encode_event(_personal())))
    assert set(event.pii) == set(PII_FIELDS)
    expected = hmac.new(KEY, PHONE.encode(), "sha256").hexdigest()[:32]
    assert event.pii["phone"] == expected == decoder.hash_pii(PHONE)
    assert all(re.fullmatch(r"[0-9a-f]{32}", digest) for digest in event.pii.values())
    shown = repr(event)
    for clear in CLEAR_VALUES:
        assert clear not in shown


def test_pii_is_hashed_on_every_type_not_only_where_the_table_lists_it(
        decoder: Decoder) -> None:
    event = ok(decoder.decode(encode_event(_personal("payment"))))
    assert set(event.pii) == set(PII_FIELDS)
    assert not set(event.attributes) & set(PII_FIELDS)


def test_hash_depends_on_the_key() -> None:
    other = Decoder(pii_key=b"another-key", max_message_bytes=MAX_BYTES)
    assert other.hash_pii(PHONE) != hash_pii(KEY, PHONE)
    long_key = b"k" * 100  # longer than a SHA-256 block: hashed first, as RFC 2104 says
    event = ok(Decoder(pii_key=long_key, max_message_bytes=MAX_BYTES).decode(raw("login", ip=IP)))
    assert event.pii["ip"] == hmac.new(long_key, IP.encode(), "sha256").hexdigest()[:32]


def _assert_no_clear_values(payload: bytes) -> None:
    for clear in CLEAR_VALUES:
        assert clear.encode() not in payload


def test_redacted_dead_letter_payload_holds_hashes_not_clear_values(decoder: Decoder) -> None:
    sent = encode_event(_personal(amount="1.234"))
    letter = dead(decoder.decode(sent))
    assert letter.reason == "amount"
    assert letter.payload_redacted is True
    _assert_no_clear_values(letter.payload)
    payload = orjson.loads(letter.payload)
    assert payload["phone"] == hash_pii(KEY, PHONE)
    assert payload["amount"] == "1.234"
    assert list(payload) == list(orjson.loads(sent))  # key order kept
    record = orjson.loads(dead_letter_record(letter, datetime.now(UTC)))
    assert record["payload_redacted"] is True
    _assert_no_clear_values(base64.b64decode(record["payload_b64"]))


def test_non_string_personal_values_are_redacted_and_not_quoted(decoder: Decoder) -> None:
    letter = dead(decoder.decode(raw("login", phone=4915123456789)))
    assert letter.reason == "schema"
    assert letter.detail == "phone: expected string, got integer (personal value withheld)"
    assert b"4915123456789" not in letter.payload


def test_duplicate_personal_keys_are_all_redacted(decoder: Decoder) -> None:
    sent = raw("login", amount="1", phone=PHONE).replace(
        b'"phone":', b'"phone":"+1 555 0100","phone":')
    letter = dead(decoder.decode(sent))
    assert b"+1 555 0100" not in letter.payload
    _assert_no_clear_values(letter.payload)


@pytest.mark.parametrize("sent", [
    encode_event(_personal())[:-1] + b",}",  # trailing comma: not_json
    b'[{"phone": "+49 151 2345678", "ip": "198.51.100.23"}]',  # not_object
    b'{"phone": "+49 151 2345678", "national_id": "X1234567Q", "x": "\xff"}',  # encoding
    b'{"device_id":"device-fingerprint-77aa", "ip" : 198.51.100.23, "phone": "+49 151 234',
])
def test_unparsed_payloads_are_redacted_on_a_best_effort_basis(decoder: Decoder,
                                                               sent: bytes) -> None:
    letter = dead(decoder.decode(sent))
    assert letter.reason in {"not_json", "not_object", "encoding"}
    assert letter.payload_redacted is True
    _assert_no_clear_values(letter.payload)
    assert hash_pii(KEY, "X1234567Q").encode() in letter.payload or b"national_id" not in sent


def test_oversized_payload_is_cut_and_redacted(decoder: Decoder) -> None:
    sent = encode_event(_personal(padding="x" * (2 * MAX_BYTES)))
    letter = dead(decoder.decode(sent))
    assert letter.reason == "oversized"
    assert len(letter.payload) <= MAX_BYTES + 200  # hashes may be longer than clear values
    assert letter.payload_redacted is True
    _assert_no_clear_values(letter.payload)


def test_clear_payload_setting_keeps_original_bytes() -> None:
    clear = Decoder(pii_key=KEY, max_message_bytes=MAX_BYTES, clear_dead_letter_payload=True)
    sent = encode_event(_personal(amount="-1"))
    letter = dead(clear.decode(sent))
    assert letter.payload == sent
    assert letter.payload_redacted is False


def test_detail_never_quotes_a_personal_value(decoder: Decoder) -> None:
    for bad in ("", "p" * 200):
        letter = dead(decoder.decode(raw("account_opened", phone=bad)))
        assert letter.reason == "schema"
        assert letter.detail.startswith("phone: ")
        assert "pp" not in letter.detail


# -- dead-letter record, encoder, constructor ----------------------------------------------------


def test_dead_letter_record_follows_its_schema(decoder: Decoder) -> None:
    validate = compile_schema("dead_letter")
    now = datetime(2024, 5, 1, 14, 30, 0, 13_000, tzinfo=timezone(timedelta(hours=2)))
    for _, sent, reason, _ in BAD_MESSAGES:
        letter = dead(decoder.decode(sent, "txwatch.lending", 0, 5))
        record = orjson.loads(dead_letter_record(letter, now))
        validate(record)
        assert record["reason"] == reason
        assert record["source"] == {"topic": "txwatch.lending", "partition": 0, "offset": 5}
        assert record["dead_lettered_at"] == "2024-05-01T12:30:00.013000Z"
        assert base64.b64decode(record["payload_b64"]) == letter.payload


def test_dead_letter_record_of_a_plain_dead_letter() -> None:
    record = orjson.loads(dead_letter_record(DeadLetter("schema", "x: missing", b"{}"),
                                             datetime.now(UTC)))
    assert record["payload_redacted"] is False
    assert record["source"] == {"topic": None, "partition": None, "offset": None}
    compile_schema("dead_letter")(record)


def test_dead_letter_record_refuses_a_naive_time() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        dead_letter_record(DeadLetter("schema", "x", b""), datetime(2024, 1, 1))  # noqa: DTZ001


def test_encode_event_writes_the_wire_format(decoder: Decoder) -> None:
    sent: Mapping[str, Any] = MappingProxyType({
        **message("loan_disbursement"),
        "occurred_at": datetime(2024, 5, 1, 14, 30, tzinfo=timezone(timedelta(hours=2))),
        "amount": Decimal("48000.50"),
        "due_date": datetime(2026, 4, 30, tzinfo=UTC).date(),
    })
    wire = orjson.loads(encode_event(sent))
    assert wire["occurred_at"] == "2024-05-01T14:30:00+02:00"
    assert wire["amount"] == "48000.50"
    assert wire["due_date"] == "2026-04-30"
    utc = encode_event({"occurred_at": datetime(2024, 5, 1, tzinfo=UTC)})
    assert utc == b'{"occurred_at":"2024-05-01T00:00:00Z"}'
    assert ok(decoder.decode(encode_event(sent))).amount_minor == 4_800_050


def test_encode_event_refuses_naive_datetimes() -> None:
    with pytest.raises(TypeError, match="naive datetime"):
        encode_event({"occurred_at": datetime(2024, 5, 1)})  # noqa: DTZ001


@pytest.mark.parametrize(("kwargs", "problem"), [
    ({"pii_key": b"", "max_message_bytes": 10}, "pii_key must not be empty"),
    ({"pii_key": b"k", "max_message_bytes": 0}, "max_message_bytes must be positive"),
])
def test_decoder_refuses_unusable_settings(kwargs: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        Decoder(**kwargs)


def test_module_examples_run() -> None:
    result = doctest.testmod(codec)
    assert result.attempted > 0
    assert result.failed == 0


# -- the schema files ----------------------------------------------------------------------------

SIMPLE_TYPES = ["array", "boolean", "integer", "null", "number", "object", "string"]
#: Draft-07 keywords. Stricter than the official meta-schema, which allows any
#: keyword: here an unknown one (a typo such as ``minLenght``) fails.
DRAFT_07_KEYWORDS = sorted({
    "$schema", "$id", "$ref", "$comment", "title", "description", "default", "readOnly",
    "writeOnly", "examples", "multipleOf", "maximum", "exclusiveMaximum", "minimum",
    "exclusiveMinimum", "maxLength", "minLength", "pattern", "additionalItems", "items",
    "maxItems", "minItems", "uniqueItems", "contains", "maxProperties", "minProperties",
    "required", "additionalProperties", "definitions", "properties", "patternProperties",
    "dependencies", "propertyNames", "const", "enum", "type", "format", "contentMediaType",
    "contentEncoding", "if", "then", "else", "allOf", "anyOf", "oneOf", "not",
})
_SCHEMA = {"$ref": "#/definitions/schema"}
_SCHEMA_MAP = {"type": "object", "additionalProperties": _SCHEMA}
_COUNT = {"type": "integer", "minimum": 0}
_SCHEMA_LIST = {"type": "array", "minItems": 1, "items": _SCHEMA}
_STRINGS = {"type": "array", "items": {"type": "string"}, "uniqueItems": True}
STRICT_DRAFT_07 = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "definitions": {
        "schema": {
            "type": ["object", "boolean"],
            "propertyNames": {"enum": DRAFT_07_KEYWORDS},
            "properties": {
                **{key: {"type": "string"} for key in (
                    "$schema", "$id", "$ref", "$comment", "title", "description", "pattern",
                    "format", "contentMediaType", "contentEncoding")},
                **{key: {"type": "number"} for key in (
                    "multipleOf", "maximum", "exclusiveMaximum", "minimum", "exclusiveMinimum")},
                **{key: _COUNT for key in (
                    "maxLength", "minLength", "maxItems", "minItems", "maxProperties",
                    "minProperties")},
                **{key: _SCHEMA for key in (
                    "additionalItems", "items", "contains", "additionalProperties",
                    "propertyNames", "if", "then", "else", "not")},
                **{key: _SCHEMA_MAP for key in ("definitions", "properties",
                                                "patternProperties")},
                **{key: _SCHEMA_LIST for key in ("allOf", "anyOf", "oneOf")},
                "examples": {"type": "array"},
                "required": _STRINGS,
                "uniqueItems": {"type": "boolean"},
                "enum": {"type": "array", "minItems": 1, "uniqueItems": True},
                "dependencies": {"type": "object",
                                 "additionalProperties": {"anyOf": [_SCHEMA, _STRINGS]}},
                "type": {"anyOf": [
                    {"enum": SIMPLE_TYPES},
                    {"type": "array", "items": {"enum": SIMPLE_TYPES}, "minItems": 1,
                     "uniqueItems": True},
                ]},
            },
        },
    },
    "$ref": "#/definitions/schema",
}
SCHEMA_NAMES = sorted(EVENT_TYPES | {"common", "alert", "dead_letter", "feedback"})


def test_schema_files_are_exactly_the_contract() -> None:
    on_disk = sorted(path.name.removesuffix(".schema.json")
                     for path in SCHEMA_DIR.glob("*.schema.json"))
    assert on_disk == SCHEMA_NAMES
    assert sorted(path.name for path in SCHEMA_DIR.iterdir()) == [
        f"{name}.schema.json" for name in SCHEMA_NAMES]


def _subschemas(node: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        found.append(node)
        for key, value in node.items():
            if key in {"examples", "enum", "const"}:
                continue
            children = value.values() if key in {"properties", "definitions"} else [value]
            for child in children:
                found.extend(_subschemas(child))
    elif isinstance(node, list):
        for item in node:
            found.extend(_subschemas(item))
    return found


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_schema_file_is_valid_draft_07_for_downstream_teams(name: str) -> None:
    schema = load_schema(name)
    fastjsonschema.compile(STRICT_DRAFT_07)(schema)
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert schema["$id"] == f"{SCHEMA_BASE_URI}{name}.schema.json"
    assert schema["title"].startswith("txwatch ")
    assert len(schema["description"]) > 40
    for sub in _subschemas(schema):
        if "pattern" in sub:
            re.compile(sub["pattern"])
        if "format" in sub:
            assert sub["format"] in {"date-time", "date"}
    compile_schema(name)  # every $ref resolves to a file beside it


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_every_example_in_a_schema_validates(decoder: Decoder, name: str) -> None:
    schema = load_schema(name)
    examples = schema.get("examples", [])
    if name != "common":
        assert examples, f"{name} has no example"
    validate = compile_schema(name)
    for example in examples:
        validate(example)
        if name in EVENT_TYPES:
            assert ok(decoder.decode(encode_event(example))).event_type == name
    for definition in schema.get("definitions", {}).values():
        check = fastjsonschema.compile({**definition, "$id": schema["$id"]})
        for example in definition.get("examples", []):
            check(example)


@pytest.mark.parametrize("event_type", sorted(EVENT_TYPES))
def test_schema_describes_every_field(event_type: str) -> None:
    common = load_schema("common")["definitions"]
    schema = load_schema(event_type)
    for name, sub in schema["properties"].items():
        target = common[sub["$ref"].rsplit("/", 1)[1]] if "$ref" in sub else sub
        assert target.get("description"), f"{event_type}.{name} has no description"


def test_refs_resolve_the_same_inlined_or_by_fastjsonschema(decoder: Decoder) -> None:
    """The decoder inlines $ref for speed; fastjsonschema's own resolution must agree."""
    samples = [sent for _, sent, _, _ in BAD_MESSAGES if sent is not None]
    samples += [raw(event_type, **extra) for event_type, (extra, _, _) in VALID.items()]
    for event_type in sorted(EVENT_TYPES):
        by_ref = fastjsonschema.compile(
            load_schema(event_type), handlers={"https": codec._local_schema},
            formats={"date": codec._is_full_date}, use_default=False)
        inlined = compile_schema(event_type)
        for sent in samples:
            try:
                obj = orjson.loads(sent)
            except orjson.JSONDecodeError:
                continue
            verdicts = []
            for validate in (by_ref, inlined):
                try:
                    validate(obj)
                    verdicts.append("valid")
                except fastjsonschema.JsonSchemaValueException as exc:
                    verdicts.append(f"{exc.name} {exc.rule}")
            assert verdicts[0] == verdicts[1], (event_type, sent)


def test_schema_references_never_leave_the_package() -> None:
    with pytest.raises(ValueError, match="outside"):
        codec._local_schema("https://example.com/evil.schema.json")
    with pytest.raises(ValueError, match="outside"):
        codec._local_schema(SCHEMA_BASE_URI + "../../etc/passwd.schema.json")


def test_alert_schema_matches_what_alerts_py_publishes() -> None:
    validate = compile_schema("alert")
    moment = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)
    for amount, currency in (("48000.00", "EUR"), (None, None)):
        alert = Alert(alert_id="0" * 32, detector="amount_outlier", severity="high", score=7.5,
                      reasons=("amount far above usual",), account_id="acc-1",
                      event_ids=("evt-1",), event_type="payment", amount=amount,
                      currency=currency, occurred_at=moment, detected_at=moment,
                      config_version="v1")
        validate(orjson.loads(alert.dumps()))
