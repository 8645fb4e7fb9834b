"""The event contract v1, as the worker sees it after decoding.

The wire format is JSON (see ``streams/schemas/``); :mod:`streams.codec` turns
bytes into an :class:`Event` or a :class:`DeadLetter`. Two rules hold here:

* money is integer minor units (``amount_minor``, hundredths of ``currency``),
  never a float;
* personal identifiers (device id, IP address, phone, national id) are already
  replaced by keyed hashes; the clear values never reach this object.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

PAYMENT_TYPES: Final = frozenset({"payment", "transfer", "top_up", "withdrawal", "refund"})
LENDING_TYPES: Final = frozenset(
    {"loan_application", "loan_disbursement", "loan_repayment", "loan_status"}
)
CROWDFUNDING_TYPES: Final = frozenset({"pledge", "pledge_refund", "project_payout"})
ACCOUNT_TYPES: Final = frozenset({"account_opened", "login", "credential_change"})
EVENT_TYPES: Final = PAYMENT_TYPES | LENDING_TYPES | CROWDFUNDING_TYPES | ACCOUNT_TYPES

#: Event types that move money out of the account that carries the event.
OUTFLOW_TYPES: Final = frozenset({"payment", "transfer", "withdrawal", "pledge"})
#: Event types that move money into the account that carries the event.
INFLOW_TYPES: Final = frozenset(
    {"top_up", "refund", "loan_disbursement", "pledge_refund", "project_payout"}
)

#: Fields whose clear values are personal data; the codec stores only keyed hashes.
PII_FIELDS: Final = ("device_id", "ip", "phone", "national_id")

MINOR_UNITS_PER_MAJOR: Final = 100


def minor_to_decimal(amount_minor: int) -> Decimal:
    """Exact major-unit amount, e.g. ``4800000 -> Decimal('48000.00')``."""
    return Decimal(amount_minor).scaleb(-2)


@dataclass(frozen=True, slots=True)
class Event:
    """One decoded, validated event.

    Parameters
    ----------
    event_id
        Producer-assigned unique id; replays carry the same id.
    event_type
        One of :data:`EVENT_TYPES`.
    occurred_at
        Event time, timezone-aware UTC.
    account_id
        The account the event belongs to; the partitioning key.
    amount_minor
        Integer minor units, or ``None`` for events without an amount.
    currency
        ISO 4217 code, present whenever ``amount_minor`` is.
    pii
        Keyed hashes (hex) of the personal fields present, by field name
        (``device_id``, ``ip``, ``phone``, ``national_id``).
    attributes
        The remaining optional and type-specific fields, as sent (``loan_id``,
        ``due_date``, ``project_id``, ``status``, ``days_past_due`` ...).
    """

    event_id: str
    event_type: str
    occurred_at: datetime
    account_id: str
    amount_minor: int | None = None
    currency: str | None = None
    counterparty_id: str | None = None
    channel: str | None = None
    region: str | None = None
    merchant_id: str | None = None
    industry: str | None = None
    pii: Mapping[str, str] = field(default_factory=dict)
    attributes: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that could not be accepted, with why and where it came from.

    ``reason`` is a short machine category (bounded: it becomes a metric
    label), ``detail`` the human explanation. ``payload`` is the original
    bytes, redacted of personal fields when they could be parsed.
    """

    reason: str
    detail: str
    payload: bytes
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
