"""The conformance suite: generic checks every registered detector passes.

One module per concern: ``account_stream`` (the labelled feature stream of the
account stage), ``stage_stream`` (the derived stages' labelled records and the
features their sketches compute), ``flow_stage`` (the flow stage in one
process, :class:`InMemoryFlowStage`) and ``checks`` (the checks, and
:func:`checks_for`).

Each check takes a factory returning a fresh :class:`ThresholdAlerter` (as
:func:`detectors.registry.build_alerters` builds them) and raises
``AssertionError`` with an explanation when the detector breaks the contract.
`checks_for` lists the checks that apply to an alerter's detector;
``tests/unit/test_conformance.py`` runs them with ids ``detector:check``.

The checks run on :func:`labelled_stream`, a seeded synthetic stream of
feature mappings shaped like ``streams/features.py`` output, with a few
injected anomalies of known kind: single events, and episodes of several
events that cross the shipped thresholds of each detector keeping state per
account.

Detectors of the derived stages (flow, identity, project) judge the features
a per-key sketch computes, not an account's: their checks run on
:func:`stage_stream`, the features of the sketches fed
:func:`labelled_stage_records`, records shaped like those stage 1 forwards
(``streams.stages.forwards_for``) with injected rings, hubs, identity farms,
stacked loans and fake backers. What the stage itself owns, the sketch
snapshot and the replay guard, is checked with the stage in
``tests/support/stage_conformance.py``: ``detectors/`` knows nothing of
``streams/``.

Examples
--------
>>> from detectors.registry import DEFAULT_CONFIG, build_alerters
>>> def velocity() -> ThresholdAlerter:
...     return build_alerters(DEFAULT_CONFIG)[0]
>>> [check.__name__ for check in checks_for(velocity())]  # doctest: +NORMALIZE_WHITESPACE
['check_seeded_repeatability', 'check_clone_is_fresh', 'check_missing_optional_fields',
 'check_findings_have_reasons', 'check_beats_chance', 'check_ledger_learns_every_event',
 'check_snapshot_restore']
>>> for check in checks_for(velocity()):
...     check(velocity)
>>> def cycle() -> ThresholdAlerter:
...     return build_alerters({"version": "v", "detectors": {"cycle": {"threshold": 1.0}}})[0]
>>> [check.__name__ for check in checks_for(cycle())][-1]
'check_stateless'
"""

from __future__ import annotations

from detectors.conformance.account_stream import (
    ANOMALY_KINDS,
    EPISODE_KINDS,
    REQUIRED_FEATURES,
    SINGLE_EVENT_KINDS,
    STAGE_ANOMALY_KINDS,
    TARGET_KINDS,
    LabelledEvent,
    labelled_stream,
)
from detectors.conformance.checks import (
    AlerterFactory,
    Check,
    check_beats_chance,
    check_clone_is_fresh,
    check_findings_have_reasons,
    check_flagged_not_learnt,
    check_id,
    check_ledger_learns_every_event,
    check_missing_optional_fields,
    check_seeded_repeatability,
    check_snapshot_restore,
    check_state_json_round_trip,
    check_stateless,
    checks_for,
    stage_of,
)
from detectors.conformance.flow_stage import InMemoryFlowStage
from detectors.conformance.stage_stream import LabelledRecord, labelled_stage_records, stage_stream

__all__ = [
    "ANOMALY_KINDS",
    "EPISODE_KINDS",
    "REQUIRED_FEATURES",
    "SINGLE_EVENT_KINDS",
    "STAGE_ANOMALY_KINDS",
    "TARGET_KINDS",
    "AlerterFactory",
    "Check",
    "InMemoryFlowStage",
    "LabelledEvent",
    "LabelledRecord",
    "check_beats_chance",
    "check_clone_is_fresh",
    "check_findings_have_reasons",
    "check_flagged_not_learnt",
    "check_id",
    "check_ledger_learns_every_event",
    "check_missing_optional_fields",
    "check_seeded_repeatability",
    "check_snapshot_restore",
    "check_state_json_round_trip",
    "check_stateless",
    "checks_for",
    "labelled_stage_records",
    "labelled_stream",
    "stage_of",
    "stage_stream",
]
