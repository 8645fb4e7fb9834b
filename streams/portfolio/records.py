"""Lending events in, alerts out, and the partitions' partials on the compacted topic.
"""

from __future__ import annotations

import contextlib
import logging
import time
from datetime import UTC, datetime
from typing import Any

import orjson

from detectors.money import contract_amount
from detectors.portfolio import (
    LENDING_BOOK_TYPES,
    Book,
    BookPartial,
    LendingEvent,
    PortfolioConfig,
    PortfolioFinding,
)
from streams.alerts import Alert, alert_id_for
from streams.codec import parse_amount_minor
from streams.events import Event
from streams.portfolio.config import EMITTED_KEY
from streams.settings import Settings

log = logging.getLogger(__name__)


# -- events -------------------------------------------------------------------------------


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def lending_event(event: Event) -> LendingEvent | None:
    """The book's view of a decoded event; ``None`` for events the book ignores."""
    if event.event_type not in LENDING_BOOK_TYPES:
        return None
    attributes = event.attributes
    loan_id = _text(attributes.get("loan_id"))
    if loan_id is None:
        return None
    outstanding = attributes.get("outstanding")
    days = attributes.get("days_past_due")
    term = attributes.get("term_months")
    return LendingEvent(
        event_id=event.event_id,
        event_type=event.event_type,
        at_ms=int(event.occurred_at.timestamp() * 1000),
        account_id=event.account_id,
        loan_id=loan_id,
        amount_minor=event.amount_minor,
        currency=event.currency,
        status=_text(attributes.get("status")),
        days_past_due=days if isinstance(days, int) and not isinstance(days, bool) else None,
        outstanding_minor=parse_amount_minor(outstanding) if isinstance(outstanding, str)
        else None,
        due_date=_text(attributes.get("due_date")),
        term_months=term if isinstance(term, int) and not isinstance(term, bool) else None,
        age_band=_text(attributes.get("age_band")),
        industry=event.industry,
        region=event.region,
        dealer=_text(attributes.get("dealer")),
    )


def loan_key(account_id: str, loan_id: str) -> bytes:
    """Table key of a loan: loan ids are unique per borrower, not necessarily globally."""
    return f"{account_id}/{loan_id}".encode()


# -- alerts -------------------------------------------------------------------------------


def alert_for(finding: PortfolioFinding, config: PortfolioConfig,
              detected_at: datetime) -> tuple[Alert, bytes]:
    """The alert of a finding and its JSON (with ``limit``, ``period``, ``subject``)."""
    amount = None if finding.amount_minor is None else contract_amount(finding.amount_minor)
    alert = Alert(
        alert_id=alert_id_for(finding.detector, finding.trigger),
        detector=finding.detector,
        severity=finding.severity,
        score=finding.score,
        reasons=finding.reasons,
        account_id=finding.account_id[:128],
        event_ids=(finding.trigger[:128],),
        event_type=finding.event_type,
        amount=amount,
        currency=config.currency if amount is not None else None,
        occurred_at=datetime.fromtimestamp(finding.at_ms / 1000, UTC),
        detected_at=detected_at,
        config_version=config.version,
    )
    record = {**alert.as_dict(), "limit": finding.limit, "period": finding.period,
              "subject": finding.subject}
    return alert, orjson.dumps(record)


# -- partials on the topic ----------------------------------------------------------------


def partial_record(partition: int, partial: BookPartial, config: PortfolioConfig,
                   lag: int | None = 0, now: datetime | None = None) -> bytes:
    """The published value of one partition's partial.

    ``lag`` is how many input messages of the partition were not in it yet
    (``None``: unknown).
    """
    moment = now or datetime.now(UTC)
    return orjson.dumps({
        "partition": partition,
        "lag": lag,
        "config_version": config.version,
        "published_at": moment.isoformat().replace("+00:00", "Z"),
        "partial": partial.published(config).as_dict(),
    })


class PartialsView:
    """The latest record of each key of the partials topic."""

    def __init__(self) -> None:
        self.partials: dict[int, BookPartial] = {}
        self.lags: dict[int, int | None] = {}
        self.versions: dict[int, str] = {}
        self.published_at: dict[int, str] = {}
        self.emitted: list[str] = []

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        if key == EMITTED_KEY:
            if value is not None:
                with contextlib.suppress(orjson.JSONDecodeError, TypeError):
                    self.emitted = [str(i) for i in orjson.loads(value)]
            return
        if key is None or not key.startswith(b"partition:"):
            return
        try:
            partition = int(key.split(b":", 1)[1])
        except ValueError:
            return
        if value is None:
            self.partials.pop(partition, None)
            self.lags.pop(partition, None)
            return
        try:
            record = orjson.loads(value)
            self.partials[partition] = BookPartial.from_dict(record["partial"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            log.warning("portfolio: unreadable partial of partition %s: %s", partition, exc)
            return
        lag = record.get("lag")
        self.lags[partition] = lag if isinstance(lag, int) else None
        self.versions[partition] = str(record.get("config_version"))
        self.published_at[partition] = str(record.get("published_at"))

    def missing(self, partitions: int) -> list[int]:
        return [p for p in range(partitions) if p not in self.partials]

    def behind(self, partitions: int, max_lag: int) -> list[int]:
        """Partitions whose latest partial was more than ``max_lag`` messages behind."""
        return [p for p in range(partitions)
                if (lag := self.lags.get(p)) is None or lag > max_lag]

    def book(self, config: PortfolioConfig) -> Book:
        return Book(BookPartial.merge(self.partials[p] for p in sorted(self.partials)), config)


async def read_partials(settings: Settings, topic: str, timeout: float = 15.0) -> PartialsView:
    """Read the partials topic from the beginning to its end (as of now)."""
    from aiokafka import TopicPartition

    from streams import clients

    view = PartialsView()
    consumer = clients.consumer(settings, client_id="txwatch-portfolio-cli")
    await consumer.start()
    try:
        if topic not in await consumer.topics():
            return view
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        deadline = time.monotonic() + timeout
        while await consumer.position(tp) < end:
            if time.monotonic() > deadline:
                message = f"could not read {topic} to its end within {timeout} s"
                raise TimeoutError(message)
            batch = await consumer.getmany(tp, timeout_ms=500)
            for record in batch.get(tp, ()):
                view.apply(record.key, record.value)
    finally:
        await consumer.stop()
    return view


