"""Input bytes to :class:`~streams.events.Event` or :class:`~streams.events.DeadLetter`.

The rules are the JSON Schema files in ``streams/schemas/`` (event contract v1,
see ``docs/design.md``), compiled once per process by ``fastjsonschema``: the
files downstream teams read are the very rules the worker enforces.

:meth:`Decoder.decode` runs on every input message and never raises for bad
input. It checks, in this order, and dead-letters with the first reason that
applies:

``oversized``
    more than ``max_message_bytes`` bytes;
``encoding``
    not UTF-8;
``not_json``
    empty, a null value (tombstone), malformed, or nested deeper than orjson's
    limit (1024 levels);
``not_object``
    valid JSON that is not an object;
``unknown_type``
    an ``event_type`` string that is not in the contract (a missing or
    non-string ``event_type`` is a ``schema`` problem);
``schema``
    a missing, mistyped, out-of-range or forbidden field, anything but the two
    below;
``amount``
    ``amount`` is present but is a JSON number or a string that is not an
    exact non-negative decimal with at most two places up to 10^15;
``timestamp``
    ``occurred_at`` is a string but not a real RFC 3339 instant with an offset.

A message with several problems gets the first reason of that list, whatever
the order of the fields.

Duplicate keys: orjson keeps the **last** occurrence of a key, so
``{"amount": "1", "amount": "1000"}`` decodes as 1000.00. Producers must not
send duplicates; other JSON readers may keep the first one.

Personal fields (:data:`~streams.events.PII_FIELDS`) at the top level of the
message are replaced by ``HMAC-SHA256(pii_key, value)`` (first 32 hex
characters) in ``Event.pii`` and in dead-letter payloads; their clear values
are never put in an ``Event``, a ``detail`` or, unless
``clear_dead_letter_payload`` is set, a dead-letter payload. Personal data
nested inside other fields is not recognised.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from functools import cache
from importlib import resources
from typing import Any, Final
from urllib.parse import urljoin

import fastjsonschema
import orjson

from streams.events import EVENT_TYPES, PII_FIELDS, DeadLetter, Event

#: Dead-letter reasons, in the order the decoder checks them. Bounded: they are
#: the values of the ``reason`` metric label.
REASONS: Final = (
    "oversized",
    "encoding",
    "not_json",
    "not_object",
    "unknown_type",
    "schema",
    "amount",
    "timestamp",
)

#: ``$id`` prefix of the schema files; ``$ref`` values resolve against it to
#: the files beside this module, never to the network.
SCHEMA_BASE_URI: Final = "https://txwatch.invalid/schemas/v1/"

#: The wire rule for amounts, identical to ``amount.pattern`` in
#: ``common.schema.json``: digits (leading zeros allowed), at most two decimal
#: places, at most 10^15.
AMOUNT_PATTERN: Final = r"^0*(?:[0-9]{1,15}(?:\.[0-9]{1,2})?|1000000000000000(?:\.00?)?)$"
MAX_AMOUNT_MINOR: Final = 10**17

#: Hex characters of the keyed hash kept for a personal field.
PII_HASH_HEX_CHARS: Final = 32
_SHA256_BLOCK_BYTES: Final = 64

_AMOUNT_RE: Final = re.compile(AMOUNT_PATTERN.replace("$", r"\Z"))
_FULL_DATE_RE: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}\Z")
_DECIMAL_LIKE_RE: Final = re.compile(r"[0-9]+(?:\.([0-9]+))?\Z")
_EXPONENT_RE: Final = re.compile(r"[0-9]*\.?[0-9]*e[+-]?[0-9]+\Z")
_MAX_AMOUNT_CHARS: Final = 32
#: Best-effort redaction of messages that did not parse: a personal key and
#: its value, a string (possibly cut short) or a bare token.
_PII_PAIR_RE: Final = re.compile(
    rb'"(' + b"|".join(name.encode() for name in PII_FIELDS) + rb')"(\s*:\s*)'
    rb'("(?:[^"\\]|\\.)*(?:"|\Z)|[^\s,}\]]+)',
    re.DOTALL,
)
#: Keywords whose value maps names to subschemas, and keywords whose value is data.
_SCHEMA_MAPS: Final = frozenset({"properties", "patternProperties", "definitions", "dependencies"})
_NOT_SCHEMAS: Final = frozenset({"enum", "const", "examples", "default", "description", "title",
                                 "$comment", "$id", "$schema", "required", "pattern", "format"})
_MAX_SCHEMA_DEPTH: Final = 64
_EPOCH: Final = "1970-01-01T00:00:00Z"
_MAX_DETAIL_CHARS: Final = 500
_MAX_SHOWN_CHARS: Final = 60
_WITHHELD: Final = "(personal value withheld)"


@dataclass(frozen=True, slots=True)
class CodecDeadLetter(DeadLetter):
    """A :class:`DeadLetter` with what the decoder knows besides the reason.

    Parameters
    ----------
    payload_redacted
        ``payload`` had personal fields replaced by their keyed hashes, so it
        is not byte-identical to the source message.
    event_type
        The message's contract ``event_type`` when it got that far, else
        ``"unknown"`` (for the ``event_type`` metric label).
    """

    payload_redacted: bool = False
    event_type: str = "unknown"


def hash_pii(key: bytes, value: str) -> str:
    """Keyed hash of a personal value, as stored in ``Event.pii``.

    Parameters
    ----------
    key
        The HMAC key (``TXWATCH_PII_KEY`` encoded as UTF-8).
    value
        The clear value, e.g. a phone number exactly as sent.

    Returns
    -------
    str
        The first 32 hex characters of ``HMAC-SHA256(key, value)``.
    """
    digest = hmac.digest(key, value.encode("utf-8", "surrogatepass"), "sha256")
    return digest.hex()[:PII_HASH_HEX_CHARS]


def _hmac_sha256_states(key: bytes) -> tuple[hashlib._Hash, hashlib._Hash]:
    """Inner and outer SHA-256 states of HMAC (RFC 2104) keyed with ``key``."""
    if len(key) > _SHA256_BLOCK_BYTES:
        key = hashlib.sha256(key).digest()
    block = key.ljust(_SHA256_BLOCK_BYTES, b"\0")
    inner = hashlib.sha256(bytes(byte ^ 0x36 for byte in block))
    outer = hashlib.sha256(bytes(byte ^ 0x5C for byte in block))
    return inner, outer


def parse_amount_minor(text: str) -> int:
    """Exact integer hundredths of a wire amount string, e.g. ``"48000.5" -> 4800050``.

    Parameters
    ----------
    text
        The ``amount`` string as sent.

    Raises
    ------
    ValueError
        When ``text`` breaks the contract; the message says how.
    """
    if _AMOUNT_RE.match(text) is None:
        message = _amount_problem(text)
        raise ValueError(message)
    whole, _, fraction = text.partition(".")
    return int(whole) * 100 + int(fraction.ljust(2, "0"))


def parse_occurred_at(text: str) -> datetime:
    """A wire ``occurred_at`` as a timezone-aware UTC datetime.

    Parameters
    ----------
    text
        An RFC 3339 date-time with ``Z`` or a numeric offset.

    Raises
    ------
    ValueError
        When ``text`` is not a real instant with an offset (``2024-02-30``,
        a leap second ``23:59:60``, no offset, out of range in UTC).
    """
    if "t" in text or "z" in text:
        text = text.upper()  # RFC 3339 allows lower-case separators; Python does not.
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        message = f"is not a real instant ({exc})"
        raise ValueError(message) from exc
    if moment.tzinfo is None:
        message = "has no offset (add Z or +hh:mm)"
        raise ValueError(message)
    try:
        return moment.astimezone(UTC)
    except OverflowError as exc:
        message = "is out of range once converted to UTC"
        raise ValueError(message) from exc


def load_schema(name: str) -> dict[str, Any]:
    """A fresh copy of ``streams/schemas/<name>.schema.json``.

    Parameters
    ----------
    name
        An event type, ``common``, ``alert`` or ``dead_letter``.
    """
    path = resources.files("streams").joinpath("schemas", f"{name}.schema.json")
    schema: dict[str, Any] = orjson.loads(path.read_bytes())
    return schema


def _local_schema(uri: str) -> dict[str, Any]:
    """Resolve a ``$ref`` document to the packaged file; refuse anything else."""
    name = uri.removeprefix(SCHEMA_BASE_URI).removesuffix(".schema.json")
    if not uri.startswith(SCHEMA_BASE_URI) or not uri.endswith(".schema.json") or "/" in name:
        message = f"schema reference {uri!r} is outside {SCHEMA_BASE_URI}"
        raise ValueError(message)
    return load_schema(name)


def _is_full_date(text: str) -> bool:
    """``format: date`` as a real calendar date, not only the ``YYYY-MM-DD`` shape."""
    if _FULL_DATE_RE.match(text) is None:
        return False
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return True


def inline_refs(schema: Mapping[str, Any]) -> dict[str, Any]:
    """``schema`` with every ``$ref`` replaced by a copy of its target.

    The contract files have no recursive references, so this is exact; it
    lets ``fastjsonschema`` generate one flat function per event type instead
    of a call per field (about twice as fast).

    Parameters
    ----------
    schema
        A schema document with an ``$id`` under :data:`SCHEMA_BASE_URI`.
    """
    inlined: dict[str, Any] = _inline(schema, schema, 0)
    return inlined


def _inline(node: Any, document: Mapping[str, Any], depth: int) -> Any:
    if depth > _MAX_SCHEMA_DEPTH:
        message = f"schema nested deeper than {_MAX_SCHEMA_DEPTH} levels (a recursive $ref?)"
        raise ValueError(message)
    if isinstance(node, list):
        return [_inline(item, document, depth + 1) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str):
        uri, _, pointer = urljoin(document.get("$id", SCHEMA_BASE_URI), ref).partition("#")
        target_document = document if uri == document.get("$id") else _local_schema(uri)
        target: Any = target_document
        for part in pointer.strip("/").split("/") if pointer.strip("/") else []:
            target = target[part.replace("~1", "/").replace("~0", "~")]
        return _inline(target, target_document, depth + 1)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: _inline(sub, document, depth + 1) for name, sub in value.items()}
        elif key in _NOT_SCHEMAS:
            out[key] = value
        else:
            out[key] = _inline(value, document, depth + 1)
    return out


def compile_schema(name: str) -> Callable[[Any], Any]:
    """The ``fastjsonschema`` validator of one schema file, references inlined.

    Parameters
    ----------
    name
        As for :func:`load_schema`.
    """
    validate: Callable[[Any], Any] = fastjsonschema.compile(
        inline_refs(load_schema(name)),
        handlers={"https": _local_schema, "http": _local_schema},
        formats={"date": _is_full_date},
        use_default=False,
    )
    return validate


@cache
def _event_validators() -> Mapping[str, Callable[[Any], Any]]:
    # Compiling all types takes a fraction of a second: once per process.
    return {event_type: compile_schema(event_type) for event_type in sorted(EVENT_TYPES)}


class Decoder:
    """Bytes from an input topic to an :class:`Event` or a :class:`DeadLetter`.

    Parameters
    ----------
    pii_key
        HMAC key for personal fields (``TXWATCH_PII_KEY`` as UTF-8 bytes).
    max_message_bytes
        Larger messages are dead-lettered as ``oversized`` unread, their
        payload cut to this many bytes.
    clear_dead_letter_payload
        Keep personal fields in clear in dead-letter payloads; by default they
        are replaced by their keyed hashes.

    Examples
    --------
    >>> decoder = Decoder(pii_key=b"k", max_message_bytes=65536)
    >>> event = decoder.decode(
    ...     b'{"event_id": "e1", "event_type": "payment", "account_id": "a1",'
    ...     b' "occurred_at": "2024-05-01T14:30:00+02:00", "amount": "48000.5",'
    ...     b' "currency": "EUR", "phone": "+49 151 0000000"}'
    ... )
    >>> event.amount_minor, event.occurred_at.isoformat(), sorted(event.pii)
    (4800050, '2024-05-01T12:30:00+00:00', ['phone'])
    >>> decoder.decode(b'{"event_type": "payment"}').reason
    'schema'
    """

    __slots__ = ("_clear_payload", "_hmac_inner", "_hmac_outer", "_max_bytes", "_pii_key",
                 "_validators")

    def __init__(self, pii_key: bytes, max_message_bytes: int,
                 clear_dead_letter_payload: bool = False) -> None:
        if not pii_key:
            message = "pii_key must not be empty"
            raise ValueError(message)
        if max_message_bytes < 1:
            message = f"max_message_bytes must be positive, not {max_message_bytes}"
            raise ValueError(message)
        self._pii_key = bytes(pii_key)
        self._hmac_inner, self._hmac_outer = _hmac_sha256_states(self._pii_key)
        self._max_bytes = max_message_bytes
        self._clear_payload = clear_dead_letter_payload
        self._validators = _event_validators()

    def hash_pii(self, value: str) -> str:
        """:func:`hash_pii` with this decoder's key (to look a known value up)."""
        return hash_pii(self._pii_key, value)

    def decode(self, raw: bytes | bytearray | memoryview | None, topic: str | None = None,
               partition: int | None = None, offset: int | None = None) -> Event | DeadLetter:
        """One message value to an :class:`Event`, or a :class:`CodecDeadLetter`.

        Parameters
        ----------
        raw
            The Kafka message value; ``None`` for a tombstone.
        topic, partition, offset
            Where it was read, copied to a dead letter.
        """
        if raw is None:
            return self._reject("not_json", "message value is null (a tombstone?), expected a "
                                "JSON object", b"", None, topic, partition, offset)
        if not isinstance(raw, bytes):
            raw = bytes(raw)  # bytearray or memoryview from a tool; Kafka gives bytes
        if len(raw) > self._max_bytes:
            detail = (f"message is {len(raw)} bytes, more than the {self._max_bytes} allowed "
                      f"(payload cut to the first {self._max_bytes})")
            return self._reject("oversized", detail, raw[: self._max_bytes], None,
                                topic, partition, offset)
        try:
            # orjson checks UTF-8 itself; telling encoding from syntax errors
            # is left to the failure path so valid messages are read once.
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            reason, detail = _unparsed_problem(raw, exc)
            return self._reject(reason, detail, raw, None, topic, partition, offset)
        if type(obj) is not dict:
            detail = f"expected a JSON object, got {_json_type(obj)}"
            return self._reject("not_object", detail, raw, None, topic, partition, offset)

        event_type = obj.get("event_type")
        if not isinstance(event_type, str) or event_type not in self._validators:
            reason, detail = _event_type_problem(obj)
            return self._reject(reason, detail, raw, obj, topic, partition, offset)
        validate = self._validators[event_type]
        try:
            validate(obj)
        except fastjsonschema.JsonSchemaValueException as exc:
            reason, detail = _schema_problem(obj, event_type, exc, validate)
            return self._reject(reason, detail, raw, obj, topic, partition, offset, event_type)

        amount = obj.get("amount")
        amount_minor: int | None = None
        if amount is not None:
            try:
                amount_minor = parse_amount_minor(amount)
            except ValueError as exc:  # pragma: no cover - the schema pattern excludes this
                return self._reject("amount", f"amount: {exc}", raw, obj, topic, partition,
                                    offset, event_type)
        try:
            occurred_at = parse_occurred_at(obj["occurred_at"])
        except ValueError as exc:
            detail = f"occurred_at: {_shown(obj['occurred_at'])} {exc}"
            return self._reject("timestamp", detail, raw, obj, topic, partition, offset,
                                event_type)

        pop = obj.pop
        pii: dict[str, str] = {}
        for name in PII_FIELDS:
            value = pop(name, None)
            if value is not None:
                # HMAC by hand from precomputed states: half the cost of hmac.digest.
                inner = self._hmac_inner.copy()
                inner.update(value.encode("utf-8", "surrogatepass"))
                outer = self._hmac_outer.copy()
                outer.update(inner.digest())
                pii[name] = outer.hexdigest()[:PII_HASH_HEX_CHARS]
        del obj["event_type"], obj["occurred_at"]
        if amount is not None:
            del obj["amount"]
        return Event(
            pop("event_id"),
            event_type,
            occurred_at,
            pop("account_id"),
            amount_minor,
            pop("currency", None),
            pop("counterparty_id", None),
            pop("channel", None),
            pop("region", None),
            pop("merchant_id", None),
            pop("industry", None),
            pii,
            obj,
        )

    def reject(self, reason: str, detail: str, raw: bytes | None, topic: str | None = None,
               partition: int | None = None, offset: int | None = None) -> CodecDeadLetter:
        """A dead letter for a message the decoder accepted but the worker could not
        process, its payload redacted like any other."""
        data = bytes(raw or b"")
        obj = None
        try:
            parsed = orjson.loads(data)
            if isinstance(parsed, dict):
                obj = parsed
        except orjson.JSONDecodeError:
            pass
        return self._reject(reason, detail, data, obj, topic, partition, offset)

    def _reject(self, reason: str, detail: str, raw: bytes, obj: dict[str, Any] | None,
                topic: str | None, partition: int | None, offset: int | None,
                event_type: str = "unknown") -> CodecDeadLetter:
        payload, redacted = raw, False
        if not self._clear_payload:
            if obj is not None:
                payload, redacted = self._redact_object(raw, obj)
            else:
                payload, redacted = self._redact_bytes(raw)
        if len(detail) > _MAX_DETAIL_CHARS:
            detail = detail[: _MAX_DETAIL_CHARS - 3] + "..."
        if len(payload) > self._max_bytes:
            # hashing personal values can make a payload several times longer: keep the
            # dead letter within the size Kafka accepts
            payload = payload[: self._max_bytes]
        return CodecDeadLetter(reason, detail, payload, topic, partition, offset,
                               payload_redacted=redacted, event_type=event_type)

    def _hash_any(self, value: Any) -> str:
        text = value if isinstance(value, str) else orjson.dumps(value).decode()
        return hash_pii(self._pii_key, text)

    def _redact_object(self, raw: bytes, obj: dict[str, Any]) -> tuple[bytes, bool]:
        if not any(name in obj for name in PII_FIELDS):
            return raw, False
        redacted = {name: self._hash_any(value) if name in PII_FIELDS else value
                    for name, value in obj.items()}
        return orjson.dumps(redacted), True

    def _redact_bytes(self, raw: bytes) -> tuple[bytes, bool]:
        def replace(match: re.Match[bytes]) -> bytes:
            token = match.group(3)
            try:
                value: Any = orjson.loads(token)
            except orjson.JSONDecodeError:
                value = token.decode("utf-8", "replace")
            return b'"%s"%s"%s"' % (match.group(1), match.group(2),
                                    self._hash_any(value).encode())

        payload, count = _PII_PAIR_RE.subn(replace, raw)
        return payload, count > 0


def dead_letter_record(dl: DeadLetter, now: datetime) -> bytes:
    """The JSON record for the dead-letter topic (``dead_letter.schema.json``).

    Parameters
    ----------
    dl
        What :meth:`Decoder.decode` returned.
    now
        When it was dead-lettered; timezone-aware.
    """
    if now.tzinfo is None:
        message = "now must be timezone-aware"
        raise ValueError(message)
    record = {
        "reason": dl.reason,
        "detail": dl.detail,
        "source": {"topic": dl.topic, "partition": dl.partition, "offset": dl.offset},
        "payload_b64": base64.b64encode(dl.payload).decode("ascii"),
        "payload_redacted": bool(getattr(dl, "payload_redacted", False)),
        "dead_lettered_at": now.astimezone(UTC).isoformat().replace("+00:00", "Z"),
    }
    return orjson.dumps(record)


def encode_event(d: Mapping[str, Any]) -> bytes:
    """A wire event as JSON bytes (for the simulator, tests and tools).

    Aware datetimes become RFC 3339 with ``Z`` for UTC, dates ``YYYY-MM-DD``,
    :class:`~decimal.Decimal` a plain decimal string (so ``amount`` may be
    given as ``Decimal("48000.00")``). Nothing is validated: a producer
    bug shows up as a dead letter, as it would in production.

    Parameters
    ----------
    d
        The event fields as they go on the wire.

    Raises
    ------
    TypeError
        For a naive datetime or a value JSON cannot carry.
    """
    payload = d if isinstance(d, dict) else dict(d)
    try:
        return orjson.dumps(payload, default=_encode_default,
                            option=orjson.OPT_PASSTHROUGH_DATETIME)
    except orjson.JSONEncodeError as exc:
        message = str(exc.__cause__ or exc)  # orjson hides why the default refused
        raise TypeError(message) from exc


def _encode_default(value: Any) -> str:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            message = f"naive datetime {value.isoformat()} on the wire: make it timezone-aware"
            raise TypeError(message)
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return format(value, "f")
    message = f"cannot encode {type(value).__name__} as JSON"
    raise TypeError(message)


# -- explanations (failure path only) ----------------------------------------------------------


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _shown(value: Any) -> str:
    text = repr(value)
    if len(text) > _MAX_SHOWN_CHARS:
        text = text[: _MAX_SHOWN_CHARS - 3] + "..."
    return text


def _unparsed_problem(raw: bytes, exc: orjson.JSONDecodeError) -> tuple[str, str]:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as bad:
        return "encoding", (f"not UTF-8: byte 0x{raw[bad.start]:02x} at offset {bad.start} "
                            f"({bad.reason})")
    detail = f"not JSON: {exc}"
    if "depth" in str(exc) or "recursion" in str(exc):
        detail += " (nested more than 1024 levels deep)"
    return "not_json", detail


def _event_type_problem(obj: dict[str, Any]) -> tuple[str, str]:
    if "event_type" not in obj:
        return "schema", "event_type: missing, required in every event"
    event_type = obj["event_type"]
    if not isinstance(event_type, str):
        return "schema", (f"event_type: expected string, got {_json_type(event_type)} "
                          f"{_shown(event_type)}")
    known = ", ".join(sorted(EVENT_TYPES))
    return "unknown_type", f"event_type: {_shown(event_type)} is not in contract v1 ({known})"


def _amount_problem(value: Any) -> str:
    shown = _shown(value)
    if not isinstance(value, str):
        return (f"{shown} is a JSON {_json_type(value)}; send the amount as a string such as "
                f'"12.50" so that no precision is lost')
    text = value.strip().lower()
    if text.lstrip("+-−") in ("nan", "snan", "inf", "infinity"):
        return f"{shown} is not a finite number"
    if text[:1] in ("-", "−"):
        return f"{shown} is negative"
    if text[:1] == "+":
        return f"{shown} has a sign; amounts are written without one"
    if _EXPONENT_RE.match(text) is not None:
        return f"{shown} uses exponent notation; write the digits out (e.g. '1000')"
    if "," in text:
        return f"{shown} has a comma; the decimal separator is '.', with no thousands separators"
    decimal_like = _DECIMAL_LIKE_RE.match(value)
    if decimal_like is not None:
        fraction = decimal_like.group(1)
        if fraction is not None and len(fraction) > 2:
            return f"{shown} has more than 2 decimal places"
        if len(value) > _MAX_AMOUNT_CHARS:
            return f"{shown} is longer than {_MAX_AMOUNT_CHARS} characters"
        return f"{shown} is more than the maximum 1000000000000000.00 (10^15)"
    return f"{shown} is not a non-negative decimal with at most 2 places"


def _schema_problem(obj: dict[str, Any], event_type: str,
                    exc: fastjsonschema.JsonSchemaValueException,
                    validate: Callable[[Any], Any]) -> tuple[str, str]:
    """Reason and detail of a schema failure, keeping the order schema, amount, timestamp.

    The compiled validator stops at its first error, in schema order. When that
    error is an amount or occurred_at problem, validate again with a valid
    stand-in there: if anything else is wrong, that is a ``schema`` problem and
    wins.
    """
    found: dict[str, str] = {}
    candidate = obj
    while True:
        field = ".".join(exc.path[1:])
        value = exc.value
        if (field == "amount" and exc.rule in ("type", "pattern", "maxLength")
                and isinstance(value, str | int | float) and not isinstance(value, bool)):
            found.setdefault("amount", f"amount: {_amount_problem(value)}")
            stand_in = "0"
        elif field == "occurred_at" and exc.rule == "format":
            found.setdefault("timestamp", f"occurred_at: {_shown(value)} is not an RFC 3339 "
                                          "date-time with Z or an offset")
            stand_in = _EPOCH
        else:
            return "schema", _schema_detail(exc, event_type)
        if candidate.get(field) == stand_in:  # pragma: no cover - the stand-ins are valid
            return "schema", _schema_detail(exc, event_type)
        candidate = {**candidate, field: stand_in}
        try:
            validate(candidate)
        except fastjsonschema.JsonSchemaValueException as again:
            exc = again
            continue
        reason = "amount" if "amount" in found else "timestamp"
        return reason, found[reason]


def _schema_detail(exc: fastjsonschema.JsonSchemaValueException, event_type: str) -> str:
    field = ".".join(exc.path[1:])
    rule = exc.rule
    limit = exc.rule_definition
    value = exc.value
    shown = _WITHHELD if field in PII_FIELDS else _shown(value)
    if rule == "required":
        missing = [name for name in limit if name not in value]
        return f"{', '.join(missing)}: missing, required in {event_type} events"
    if rule == "dependencies":
        pairs = [(dependent, name) for name, needs in limit.items() if name in value
                 for dependent in needs if dependent not in value]
        return "; ".join(f"{dependent}: missing, required with {name}" for dependent, name in pairs)
    if rule == "type":
        expected = limit if isinstance(limit, str) else " or ".join(limit)
        return f"{field}: expected {expected}, got {_json_type(value)} {shown}"
    if rule == "not":
        return f"{field}: not allowed in {event_type} events"
    if rule == "enum":
        return f"{field}: {shown} is not one of {', '.join(map(str, limit))}"
    if rule == "const":
        return f"{field}: {shown} must be {limit!r}"
    if rule == "minLength":
        if value == "":
            return f"{field}: empty string, at least {limit} character(s) required"
        return f"{field}: {shown} is shorter than {limit} characters"
    if rule == "maxLength":
        return f"{field}: {len(value)} characters, at most {limit} allowed"
    if rule == "pattern":
        if limit == AMOUNT_PATTERN:
            return f"{field}: {_amount_problem(value)}"
        if limit == "^[A-Z]{3}$":
            return f"{field}: {shown} is not an ISO 4217 code (three capital letters)"
        return f"{field}: {shown} does not match {limit}"
    if rule == "format":
        if limit == "date":
            return f"{field}: {shown} is not a real calendar date YYYY-MM-DD"
        return f"{field}: {shown} is not an RFC 3339 date-time with Z or an offset"
    if rule == "minimum":
        return f"{field}: {shown} is below the minimum {limit}"
    if rule == "maximum":
        return f"{field}: {shown} is above the maximum {limit}"
    return f"{field or 'message'}: {exc.message.removeprefix('data.')}"
