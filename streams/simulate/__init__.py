"""Labelled, seeded traffic for txwatch, and the publisher that sends it to Kafka.

Two halves, one direction:

* :func:`generate` is pure: a seeded population of accounts (profiles,
  favourite merchants, contacts, devices, loans, crowdfunding projects) whose
  events follow a daily rhythm in *event time*, with labelled scenarios
  injected at regular intervals. No broker, no wall clock: the same arguments
  give the same events, byte for byte, which is what benchmarks and backtests
  need (:func:`write_jsonl` pre-generates a file).
* :func:`simulate` and :func:`replay` publish with aiokafka: lending events to
  ``settings.lending_topic``, everything else to ``settings.payments_topic``,
  keyed by ``account_id``.

Event time is a simulated clock, independent of the wall clock: it starts at
``start`` and advances by the population's own inter-arrival times (accounts x
their daily activity x the hour's weight), so every account behaves as a real
one would whatever the publishing rate. Publishing is paced separately: at
``rate`` events per second, or (``acceleration``) so that event time runs that
many times faster than the wall clock, or as fast as possible. The daily
rhythm is defined in China Standard Time (UTC+8), the currency being CNY, so
the busiest UTC hours are 11-13 and the quietest 18-21.

A scenario is a function from an :class:`IncidentContext` to the events it
adds (:class:`PlannedEvent`), registered in :data:`SCENARIOS` with the name of
the detector expected to catch it. The events a detector should flag carry
``"label": "<scenario>"`` and are listed in the labels file; context events a
scenario adds to make its victim plausible (the small payments before a
spike) are unlabelled, like the background they imitate. The labelled events
of a scenario whose incidents span several accounts (a ring, a device farm)
also carry ``"incident": "<scenario>-<seed>-<round>"``, so that scoring counts
each of its incidents once, not once per account.

The package, one module per concern: ``population`` (profiles, accounts,
merchants, the daily rhythm), ``scenarios`` (one function per labelled
typology, :data:`SCENARIOS`), ``generator`` (:class:`TrafficGenerator`,
:func:`generate`), ``publishing`` (wire helpers, :func:`simulate`,
:func:`replay`, :func:`route_line`) and ``book`` (the lending book the
portfolio monitor reads, :func:`lending_book`).
"""

from __future__ import annotations

from streams.simulate.book import lending_book, simulate_lending_book
from streams.simulate.generator import TrafficGenerator, generate
from streams.simulate.population import (
    DEFAULT_ACCOUNTS,
    DEFAULT_FIRST_INCIDENT_AT,
    DEFAULT_INCIDENT_EVERY,
    DEFAULT_START,
    Merchant,
    SimAccount,
    hourly_weight,
    minor_units,
)
from streams.simulate.publishing import (
    Producer,
    ReplayReport,
    SimulationReport,
    encode,
    ensure_topics,
    kafka_producer,
    label_record,
    message_key,
    replay,
    route_line,
    scenario_named,
    simulate,
    simulated_traffic,
    topic_for,
    write_jsonl,
)
from streams.simulate.scenarios import (
    DISHONEST_PERSONS,
    SCENARIOS,
    IncidentContext,
    Newcomer,
    PlannedEvent,
    Scenario,
    account_takeover,
    amount_spike,
    blacklisted_identity,
    borrow_and_vanish,
    dishonest_persons,
    fan_in,
    fan_out,
    fund_segregation,
    gather_scatter,
    laundering_ring,
    loan_stacking,
    payout_after_sybil_pledges,
    pledge_churn,
    precipitated_funds,
    rapid_pass_through,
    scatter_gather,
    shared_identity,
    structuring,
    sybil_pledging,
    velocity_burst,
)

__all__ = [
    "DEFAULT_ACCOUNTS",
    "DEFAULT_FIRST_INCIDENT_AT",
    "DEFAULT_INCIDENT_EVERY",
    "DEFAULT_START",
    "DISHONEST_PERSONS",
    "SCENARIOS",
    "IncidentContext",
    "Merchant",
    "Newcomer",
    "PlannedEvent",
    "Producer",
    "ReplayReport",
    "Scenario",
    "SimAccount",
    "SimulationReport",
    "TrafficGenerator",
    "account_takeover",
    "amount_spike",
    "blacklisted_identity",
    "borrow_and_vanish",
    "dishonest_persons",
    "encode",
    "ensure_topics",
    "fan_in",
    "fan_out",
    "fund_segregation",
    "gather_scatter",
    "generate",
    "hourly_weight",
    "kafka_producer",
    "label_record",
    "laundering_ring",
    "lending_book",
    "loan_stacking",
    "message_key",
    "minor_units",
    "payout_after_sybil_pledges",
    "pledge_churn",
    "precipitated_funds",
    "rapid_pass_through",
    "replay",
    "route_line",
    "scatter_gather",
    "scenario_named",
    "shared_identity",
    "simulate",
    "simulate_lending_book",
    "simulated_traffic",
    "structuring",
    "sybil_pledging",
    "topic_for",
    "velocity_burst",
    "write_jsonl",
]
