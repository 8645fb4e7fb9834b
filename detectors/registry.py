"""The registered detectors and the configuration that turns them into alerters.

A configuration is a JSON-compatible mapping (the worker reads it from the file
named by ``TXWATCH_DETECTOR_CONFIG``, or uses :data:`DEFAULT_CONFIG`)::

    {
      "version": "defaults-1",
      "detectors": {
        "<detector name>": {
          "params": {...},              # constructor arguments; defaults when left out
          "threshold": 4.0,             # required: scores at or above it alert
          "severity": "medium",         # low | medium | high | critical (default high)
          "critical_threshold": 8.0,    # optional: scores at or above it are critical
          "learn_flagged": false        # optional: learn from flagged events (default no)
        }
      }
    }

``version`` is stamped on every alert (``config_version``) so an alert can be
traced to the thresholds that raised it; change it whenever anything else here
changes.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Mapping
from typing import Any, Final

from detectors.amount_outlier import AmountOutlier
from detectors.base import SEVERITIES, Detector, KeyedDetector, ThresholdAlerter
from detectors.halfspace import GlobalAnomaly
from detectors.velocity import VelocityLimits

#: Every detector the configuration can name, by its ``name``.
DETECTORS: Final[Mapping[str, type[Detector] | type[KeyedDetector[Any]]]] = {
    cls.name: cls for cls in (VelocityLimits, AmountOutlier, GlobalAnomaly)
}

#: The packaged configuration. Treat it as read-only: :func:`build_alerters`
#: copies what it uses, and ``copy.deepcopy`` gives a version to edit.
DEFAULT_CONFIG: Final[dict[str, Any]] = {
    "version": "defaults-1",
    "detectors": {
        "velocity": {
            "params": {
                "limits": {
                    # Sums in minor units: 50,000.00 a minute, 100,000.00 an hour,
                    # 500,000.00 a day.
                    "1m": {"count": 10, "sum": 5_000_000, "distinct_cp": 5},
                    "1h": {"count": 30, "sum": 10_000_000, "distinct_cp": 20},
                    "24h": {"count": 200, "sum": 50_000_000, "distinct_cp": 50},
                }
            },
            "threshold": 1.0,
            "severity": "high",
        },
        "amount_outlier": {
            # Twenty payments before judging: with five, the spread is a guess and
            # the simulator's ordinary accounts raised thirty times more alerts.
            "params": {"half_life": 30, "min_history": 20, "sd_floor": 0.5, "outflows_only": True},
            "threshold": 3.5,
            "critical_threshold": 8.0,
            "severity": "medium",
        },
        "global_anomaly": {
            "params": {"n_trees": 10, "height": 8, "window_size": 250, "seed": 42, "warmup": 1000},
            "threshold": 0.9,
            "severity": "low",
        },
    },
}

_TOP_LEVEL_KEYS: Final = ("version", "detectors")
_SPEC_KEYS: Final = ("params", "threshold", "severity", "critical_threshold", "learn_flagged")


def build_alerters(config: Mapping[str, Any]) -> list[ThresholdAlerter]:
    """One fresh :class:`ThresholdAlerter` per configured detector, in configuration order.

    Parameters
    ----------
    config
        A mapping shaped like :data:`DEFAULT_CONFIG`.

    Raises
    ------
    ValueError
        When the configuration names an unknown detector, key or parameter, or a
        value has the wrong type or range; the message names the key, for example
        ``detectors.amount_outlier.threshold``.

    Examples
    --------
    >>> [(a.name, a.threshold, a.severity) for a in build_alerters(DEFAULT_CONFIG)]
    [('velocity', 1.0, 'high'), ('amount_outlier', 3.5, 'medium'), ('global_anomaly', 0.9, 'low')]
    >>> build_alerters({"version": "v2", "detectors": {"velocity": {"threshold": 1.0}}})
    Traceback (most recent call last):
    ...
    ValueError: detectors.velocity.params: missing required parameter 'limits'
    """
    if not isinstance(config, Mapping):
        message = f"detector config must be a mapping, not {type(config).__name__}"
        raise ValueError(message)
    _reject_unknown_keys(config, _TOP_LEVEL_KEYS, "detector config")
    version = config.get("version")
    if not isinstance(version, str) or not version.strip():
        message = f"version must be a non-empty string, not {version!r}"
        raise ValueError(message)
    detectors = config.get("detectors")
    if not isinstance(detectors, Mapping):
        message = f"detectors must be a mapping of detector name to settings, not {detectors!r}"
        raise ValueError(message)
    return [_build_alerter(name, spec) for name, spec in detectors.items()]


def _build_alerter(name: Any, spec: Any) -> ThresholdAlerter:
    where = f"detectors.{name}"
    cls = DETECTORS.get(name) if isinstance(name, str) else None
    if cls is None:
        message = f"{where}: unknown detector; known detectors are {sorted(DETECTORS)}"
        raise ValueError(message)
    if not isinstance(spec, Mapping):
        message = f"{where} must be a mapping, not {spec!r}"
        raise ValueError(message)
    _reject_unknown_keys(spec, _SPEC_KEYS, where)

    if "threshold" not in spec:
        message = f"{where}.threshold is required"
        raise ValueError(message)
    threshold = _number(spec["threshold"], f"{where}.threshold")
    critical = spec.get("critical_threshold")
    if critical is not None:
        critical = _number(critical, f"{where}.critical_threshold")
        if critical < threshold:
            message = (
                f"{where}.critical_threshold ({critical}) must not be below"
                f" the threshold ({threshold})"
            )
            raise ValueError(message)
    severity = spec.get("severity", "high")
    if severity not in SEVERITIES:
        message = f"{where}.severity must be one of {list(SEVERITIES)}, not {severity!r}"
        raise ValueError(message)
    learn_flagged = spec.get("learn_flagged", False)
    if not isinstance(learn_flagged, bool):
        message = f"{where}.learn_flagged must be true or false, not {learn_flagged!r}"
        raise ValueError(message)

    detector = _build_detector(cls, spec.get("params", {}), f"{where}.params")
    return ThresholdAlerter(
        detector,
        threshold=threshold,
        severity=severity,
        critical_threshold=critical,
        learn_flagged=learn_flagged,
    )


def _build_detector(
    cls: type[Detector] | type[KeyedDetector[Any]], params: Any, where: str
) -> Detector | KeyedDetector[Any]:
    if not isinstance(params, Mapping):
        message = f"{where} must be a mapping of parameter to value, not {params!r}"
        raise ValueError(message)
    signature = inspect.signature(cls.__init__)
    accepted = [name for name in signature.parameters if name != "self"]
    for key in params:
        if key not in accepted:
            message = f"{where}.{key}: unknown parameter; {cls.__name__} takes {accepted}"
            raise ValueError(message)
    for name in accepted:
        if signature.parameters[name].default is inspect.Parameter.empty and name not in params:
            message = f"{where}: missing required parameter {name!r}"
            raise ValueError(message)
    try:
        # A private copy: editing the configuration later must not reach a live detector.
        return cls(**copy.deepcopy(dict(params)))
    except (TypeError, ValueError) as error:
        message = f"{where}: {error}"
        raise ValueError(message) from error


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        message = f"{where} must be a finite number, not {value!r}"
        raise ValueError(message)
    return float(value)


def _reject_unknown_keys(mapping: Mapping[str, Any], known: tuple[str, ...], where: str) -> None:
    for key in mapping:
        if key not in known:
            message = f"{where}: unknown key {key!r}; expected some of {list(known)}"
            raise ValueError(message)
