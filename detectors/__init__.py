"""Detectors: plain Python and River, no Kafka, Faust or Prometheus.

Each detector scores the features of one event (see ``streams/features.py``);
:class:`ThresholdAlerter` turns a score into a :class:`Finding`, and
:func:`build_alerters` builds the configured alerters. The contract is in
:mod:`detectors.base`, the generic checks every detector passes in
:mod:`detectors.conformance`.
"""

from __future__ import annotations

from detectors.account_takeover import AccountTakeover
from detectors.amount_outlier import AmountOutlier
from detectors.base import (
    SEVERITIES,
    Detector,
    Features,
    Finding,
    KeyedDetector,
    ThresholdAlerter,
)
from detectors.blacklist import Blacklist
from detectors.borrow_and_vanish import BorrowAndVanish
from detectors.fan_out import FanOut
from detectors.fund_segregation import FundSegregation
from detectors.halfspace import GlobalAnomaly
from detectors.money import format_minor
from detectors.precipitated_funds import PrecipitatedFunds, balance_minor
from detectors.rapid_pass_through import RapidPassThrough
from detectors.registry import DEFAULT_CONFIG, DETECTORS, build_alerters
from detectors.structuring import Structuring
from detectors.velocity import VelocityLimits

__all__ = [
    "DEFAULT_CONFIG",
    "DETECTORS",
    "SEVERITIES",
    "AccountTakeover",
    "AmountOutlier",
    "Blacklist",
    "BorrowAndVanish",
    "Detector",
    "FanOut",
    "Features",
    "Finding",
    "FundSegregation",
    "GlobalAnomaly",
    "KeyedDetector",
    "PrecipitatedFunds",
    "RapidPassThrough",
    "Structuring",
    "ThresholdAlerter",
    "VelocityLimits",
    "balance_minor",
    "build_alerters",
    "format_minor",
]
