"""From an event and its account's state to the features detectors read.

The names and meanings are listed in ``docs/design.md`` ("Features"). Money
stays in integer minor units.
"""

from __future__ import annotations

from typing import Any

from streams.events import INFLOW_TYPES, OUTFLOW_TYPES, PII_FIELDS, Event
from streams.state import AccountState

#: Type-specific fields passed to detectors as they are, when present.
ATTRIBUTE_FEATURES = ("loan_id", "project_id", "due_date", "kind", "status", "days_past_due",
                      "term_months", "age_band", "dealer", "outstanding")
#: Feature names of the personal-field hashes, made once rather than per event.
_HASH_NAMES = {name: name + "_hash" for name in PII_FIELDS}


def observe(event: Event, state: AccountState) -> dict[str, Any]:
    """Count ``event`` in the account's velocity windows and return its features.

    The windows count money leaving the account (``OUTFLOW_TYPES``): payments,
    transfers, withdrawals and pledges, with the counterparty they went to.

    Counting is a fact, not learning: it happens whether or not a detector
    flags the event, so the counters always equal a recount of the stream.
    """
    ts = int(event.occurred_at.timestamp())
    prior_events = state.monetary_events
    amount = event.amount_minor or 0
    is_outflow = event.event_type in OUTFLOW_TYPES
    if is_outflow and event.amount_minor is not None:
        state.observe_amount(ts, amount, event.counterparty_id)
    x: dict[str, Any] = state.velocity()
    x["event_type"] = event.event_type
    x["amount_minor"] = amount
    x["currency"] = event.currency
    x["is_outflow"] = is_outflow
    x["is_inflow"] = event.event_type in INFLOW_TYPES
    x["hour"] = event.occurred_at.hour
    x["ts"] = ts
    x["account_events"] = prior_events
    x["account_id"] = event.account_id
    x["event_id"] = event.event_id
    x["counterparty_id"] = event.counterparty_id
    x["region"] = event.region
    x["channel"] = event.channel
    x["merchant_id"] = event.merchant_id
    for name, digest in event.pii.items():
        x[_HASH_NAMES.get(name) or name + "_hash"] = digest
    attributes = event.attributes
    if attributes:
        for name in ATTRIBUTE_FEATURES:
            value = attributes.get(name)
            if value is not None:
                x[name] = value
    return x
