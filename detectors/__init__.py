"""Detectors: plain Python and River, no Kafka, Faust or Prometheus.

Each detector scores the features of one event (see ``streams/features.py``);
:class:`ThresholdAlerter` turns a score into a :class:`Finding`, and
:func:`build_alerters` builds the configured alerters. The contract is in
:mod:`detectors.base`, the generic checks every detector passes in
:mod:`detectors.checks`.
"""

from __future__ import annotations

from detectors.amount_outlier import AmountOutlier
from detectors.base import (
    SEVERITIES,
    Detector,
    Features,
    Finding,
    KeyedDetector,
    ThresholdAlerter,
)
from detectors.halfspace import GlobalAnomaly
from detectors.money import format_minor
from detectors.registry import DEFAULT_CONFIG, DETECTORS, build_alerters
from detectors.velocity import VelocityLimits

__all__ = [
    "DEFAULT_CONFIG",
    "DETECTORS",
    "SEVERITIES",
    "AmountOutlier",
    "Detector",
    "Features",
    "Finding",
    "GlobalAnomaly",
    "KeyedDetector",
    "ThresholdAlerter",
    "VelocityLimits",
    "build_alerters",
    "format_minor",
]
