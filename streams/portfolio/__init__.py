"""The live lending portfolio: loan table, partition partials, merged book, gauges, alerts, CLI.

One module per concern: ``config`` (settings and the configuration file),
``records`` (lending events in, alerts and partials out), ``metrics`` (the
Prometheus series), ``agent`` (:class:`PortfolioAgent` and
:func:`attach_portfolio`, what the worker runs), ``report`` (terminal tables and
CSV) and ``cli`` (``txwatch portfolio``). The package exports what the worker
runs; the last two are tools, imported from their modules.

The figures (buckets, roll rates, migration matrices, concentration, vintages)
and their rules are in :mod:`detectors.portfolio`; this module runs them on
the lending topic.

How it runs
-----------
``txwatch.portfolio`` is a second agent on the lending topic, beside the
monitor agent (Faust hands each message to both and commits an offset once
both are done with it). Per batch (``stream.take_events``):

1. each ``loan_disbursement``, ``loan_repayment`` and ``loan_status`` is
   applied to its :class:`~detectors.portfolio.LoanState` in the table
   ``portfolio_loans`` (key ``account_id/loan_id``, on the borrower's
   partition: lending events are keyed by account), and the partition's
   :class:`~detectors.portfolio.BookPartial` is updated by taking the loan's
   old contribution out and putting the new one in;
2. each loan the batch touched is written to the table's changelog once,
   serialised now, as ``streams/agents.py`` does for accounts.

A timer publishes the partial of every partition the worker owns to the
compacted topic ``TXWATCH_PORTFOLIO_TOPIC`` (key ``partition:<n>``) when it
changed, at most every ``TXWATCH_PORTFOLIO_PUBLISH_INTERVAL`` seconds, and
every 30 s regardless. Every worker reads that topic from the beginning with
a consumer of its own (no group), keeps the latest partial of each partition,
merges them into a :class:`~detectors.portfolio.Book`, sets the gauges and, on
one worker, checks the limits and sends alerts. ``txwatch portfolio`` reads
the same topic.

Why it stays correct with several workers
-----------------------------------------
* **One owner per loan.** A loan lives on its borrower's partition, so one
  worker at a time applies its events, in offset order; the loan's replay
  guard (last offset, recent event ids) makes a batch replayed after a crash
  change nothing twice.
* **A partial is a function of its partition's loan states**, never an
  accumulator of its own: after every assignment the owner recomputes it from
  the recovered table before publishing. A crash between the changelog write
  and a publish cannot count anything twice, and a partial is *replaced* on
  the compacted topic (one key per partition), never added to.
* **Merging is summing.** The book is the sum of the latest partial of each
  partition, each partition counted once whichever worker published it; the
  figures are computed from that sum only. Alerts wait until every partition
  has published. A stale partial a former owner sent during a rebalance is
  overwritten by the new owner's next publish (within 30 s). Each partial
  carries its partition's input lag; limits on the book as it stands
  (shares, HHI, largest borrower) are checked only while every partition is
  within ``live_max_lag`` messages of its end, so a worker still working
  through a backlog does not make the merged book a mix of moments. Roll
  rates and vintages use only periods every partition's event time has
  passed.
* **Book-level alerts come from one worker**: the one that owns lending
  partition 0. Their ids are deterministic (``sha256(detector, trigger)``,
  trigger = limit, period, subject), so an alert sent twice during a
  rebalance, or again after a restart, has the same id; the ids sent are also
  recorded on the partials topic (key ``alerts:emitted``) so a new leader
  does not send them again.
* **Gauges**: every worker exports the same merged figures; aggregate them
  across instances with ``max()``, not ``sum()``
  (``txwatch_portfolio_events_total`` is per worker: sum it).

Alerts (``streams/schemas/alert.schema.json``) have ``account_id``
``portfolio`` (the borrower for ``portfolio_borrower``), ``event_ids`` the
trigger, ``amount`` the principal concerned, and the extra fields ``limit``,
``period`` and ``subject``.
"""

from __future__ import annotations

from streams.portfolio.agent import PortfolioAgent, attach_portfolio
from streams.portfolio.config import (
    AGENT_NAME,
    ALERT_KEY,
    EMITTED_KEPT,
    EMITTED_KEY,
    LOAN_CODEC,
    TABLE_NAME,
    PortfolioSettings,
    load_portfolio_config,
)
from streams.portfolio.metrics import PortfolioMetrics
from streams.portfolio.records import (
    PartialsView,
    alert_for,
    lending_event,
    loan_key,
    partial_record,
    read_partials,
)

__all__ = [
    "AGENT_NAME",
    "ALERT_KEY",
    "EMITTED_KEPT",
    "EMITTED_KEY",
    "LOAN_CODEC",
    "TABLE_NAME",
    "PartialsView",
    "PortfolioAgent",
    "PortfolioMetrics",
    "PortfolioSettings",
    "alert_for",
    "attach_portfolio",
    "lending_event",
    "load_portfolio_config",
    "loan_key",
    "partial_record",
    "read_partials",
]
