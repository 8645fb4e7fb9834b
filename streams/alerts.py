"""Alerts as downstream services receive them on the alert topic.

The schema is ``streams/schemas/alert.schema.json``. ``alert_id`` depends
only on the detector and the triggering event, so at-least-once delivery and
replays can repeat an alert but never create a different one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from detectors.base import Finding
from streams.events import Event, minor_to_decimal


def alert_id_for(detector: str, event_id: str, scope: str | None = None) -> str:
    """``sha256(detector, event_id[, scope])``, first 32 hex characters.

    ``event_id`` is the triggering event's id, or the finding's ``key`` when it
    has one; ``scope`` is the derived-stage key the finding was made at (one
    event can be two identity records, a device and a phone, each with its own
    finding).
    """
    text = f"{detector}\x1f{event_id}" if scope is None else f"{detector}\x1f{event_id}\x1f{scope}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Alert:
    alert_id: str
    detector: str
    severity: str
    score: float
    reasons: tuple[str, ...]
    account_id: str
    event_ids: tuple[str, ...]
    event_type: str
    amount: str | None
    currency: str | None
    occurred_at: datetime
    detected_at: datetime
    config_version: str
    #: Probability that analysts would confirm this alert, from their feedback so
    #: far (``streams/feedback.py``); ``None`` until the ranker has learnt enough.
    feedback_probability: float | None = None

    @classmethod
    def from_finding(cls, finding: Finding, event: Event, detected_at: datetime,
                     config_version: str, event_ids: Sequence[str] = (),
                     scope: str | None = None) -> Alert:
        amount = None
        if event.amount_minor is not None:
            amount = str(minor_to_decimal(event.amount_minor))
        if finding.evidence and not event_ids:
            # the evidence first: it names the finding; the event at hand completed it
            event_ids = tuple(dict.fromkeys((*finding.evidence, event.event_id)))
        return cls(
            alert_id=alert_id_for(finding.detector, finding.key or event.event_id, scope),
            detector=finding.detector,
            severity=finding.severity,
            score=round(finding.score, 6),
            reasons=finding.reasons,
            account_id=event.account_id,
            event_ids=tuple(event_ids) or (event.event_id,),
            event_type=event.event_type,
            amount=amount,
            currency=event.currency,
            occurred_at=event.occurred_at,
            detected_at=detected_at,
            config_version=config_version,
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "alert_id": self.alert_id,
            "detector": self.detector,
            "severity": self.severity,
            "score": self.score,
            "reasons": list(self.reasons),
            "account_id": self.account_id,
            "event_ids": list(self.event_ids),
            "event_type": self.event_type,
            "amount": self.amount,
            "currency": self.currency,
            "occurred_at": _iso(self.occurred_at),
            "detected_at": _iso(self.detected_at),
            "config_version": self.config_version,
            "feedback_probability": self.feedback_probability,
        }

    def dumps(self) -> bytes:
        return orjson.dumps(self.as_dict())
