"""How good are the detectors? ``txwatch evaluate`` (live) and ``txwatch backtest`` (offline).

Both score alerts against labelled events and print the same table.

Scoring
-------
A labelled event carries the name of the scenario it belongs to (the
simulator's ``label``; see :data:`streams.simulate.SCENARIOS`).

* An **incident** is the labelled events of one scenario on one account (or
  sharing an ``incident`` id, when the labels carry one). It starts at its
  first labelled event.
* An alert is a **true positive** for scenario *S* when one of its
  ``event_ids`` is labelled *S* and its detector is *S*'s expected detector.
  A label that is not a registered scenario is taken as a detector name when
  it is one, else any detector's alert on it counts (a team's own history
  labelled ``fraud``, say).
* **Recall** of a scenario: its incidents with at least one true-positive
  alert, over its incidents.
* **Precision** of a detector: its true-positive alerts over all its alerts
  (alerts deduplicated by ``alert_id``). A detector no scenario expects (the
  global anomaly model) has no true positives by construction: its precision
  is shown as ``-``.
* **Detection delay**: event time of the first true-positive alert of an
  incident (the ``occurred_at`` of its triggering event) minus the incident's
  first labelled event time; the median over detected incidents. It measures
  how much of an incident a detector needs to see, not the worker's speed.
* **Processing latency** (``evaluate`` only): the alert's ``detected_at``
  minus the wall-clock time its triggering event was handed to the producer,
  median per detector. Traffic published as fast as possible queues up in
  front of the worker, so this includes the backlog; pass ``--rate`` for a
  steady-state figure.

With a labels CSV (``event_id,label,pattern,group``, as ``txwatch import-csv
--labels-out`` writes) the scoring is :func:`score_labelled`'s instead: any
detector counts for any pattern, recall is per group and per event, and
precision and alerts per 1,000 events are per detector and overall.

``txwatch backtest FILE`` runs a JSON Lines history through the detector code
the worker runs (:class:`streams.pipeline.Monitor`, with a plain ``dict`` of
account states), offline, in file order and at full speed; labels come from
each line's ``label`` field or from ``--labels FILE`` (the simulator's labels
file). The derived stages (money flow, identity, project) run in line: each
event's records for them, and the records those stages send on, are
processed before the next event, as if their topics had no lag.

``txwatch evaluate`` generates the simulator's traffic with every scenario,
publishes it to topics of its own on ``TXWATCH_BROKER`` (or a broker it
starts, ``--local-broker``), runs a real ``txwatch worker`` on them, waits
until it has caught up, and scores what the worker published. Caught up,
from the worker's ``/metrics``: every input event counted in
``txwatch_events_total``, ``txwatch_consumer_lag`` at 0 on every partition of
the input topics **and** of the derived stages' internal topics (flow,
identity, project) for :data:`LAG_SETTLE_SECONDS`, and no new alert on the
alert topic for :data:`QUIET_SECONDS`. The stage topics matter: the flow
stage's relays can keep a worker busy long after the last input event, and
its alerts only come then. Progress lines show the stage lag while waiting;
``--timeout`` ends the wait with an error naming the topics still behind.
Its topics are deleted afterwards unless ``--keep-topics``.

The package, one module per concern: ``inputs`` (labels and alerts read in),
``scoring`` (the figures and their tables), ``backtest`` (a history through the
worker's code without Kafka), ``live`` (``txwatch evaluate``: a real worker and
broker) and ``cli`` (the two commands).
"""

from __future__ import annotations

from streams.evaluation.backtest import backtest, history_positions, load_labels
from streams.evaluation.cli import run_backtest, run_evaluate
from streams.evaluation.inputs import (
    GroupLabel,
    LabelledEvent,
    ScoredAlert,
    expected_detector,
    is_label_csv,
    load_label_csv,
    progress_to_stderr,
)
from streams.evaluation.live import evaluate_live
from streams.evaluation.scoring import Evaluation, render_labelled, score, score_labelled

__all__ = [
    "Evaluation",
    "GroupLabel",
    "LabelledEvent",
    "ScoredAlert",
    "backtest",
    "evaluate_live",
    "expected_detector",
    "history_positions",
    "is_label_csv",
    "load_label_csv",
    "load_labels",
    "progress_to_stderr",
    "render_labelled",
    "run_backtest",
    "run_evaluate",
    "score",
    "score_labelled",
]
