"""The registered detectors and the configuration that turns them into alerters.

A configuration is a JSON-compatible mapping (the worker reads it from the file
named by ``TXWATCH_DETECTOR_CONFIG``, or uses :data:`DEFAULT_CONFIG`)::

    {
      "version": "defaults-6",
      "detectors": {
        "<detector name>": {
          "params": {...},              # constructor arguments; defaults when left out
          "threshold": 4.0,             # scores at or above it alert; required without
                                        # a budget, the floor with one (default 0)
          "budget": 0.001,              # optional: at most this fraction of scored
                                        # events alerts (detectors/budget.py)
          "segment_by": ["event_type", "currency"],  # optional, with a budget: the
                                        # features that split the score distribution
          "min_scored": 500,            # optional, with a budget: scored events a
                                        # segment counts before it alerts
          "severity": "medium",         # low | medium | high | critical (default high)
          "critical_threshold": 8.0,    # optional: scores at or above it are critical
          "learn_flagged": false,       # optional: learn from flagged events (default no;
                                        # always on for detectors that keep a ledger)
          "cooldown_seconds": 3600      # optional, account stage: event-time seconds after
                                        # an alert on an account with no other alert of
                                        # this detector on it (default 0)
        }
      },
      "stages": {                       # optional: the derived stages' bounds
        "flow": {"hub_degree": 8, ...}  # the flow sketch's (detectors/flow/params.py);
                                        # a bound left out keeps its default
      }
    }

With a ``budget``, an event alerts when its score is at or above the
threshold and among the top ``budget`` of the recent positive scores of its
segment, and only while the segment's alerts stay within ``budget`` of the
events it scored: alerts per scored event stay within the budget whatever the
scale of the traffic. Without one, the fixed threshold alone decides.

``stages.flow`` bounds the flow stage's per-account sketch: how many paths and
senders it keeps, how long it remembers a sender, when an account is a hub.
The ring length and the windows are not set there: they follow ``cycle``'s,
``fan_in``'s, ``gather_scatter``'s and ``scatter_gather``'s parameters. Both
are fixed when a worker starts; a configuration published later that would
change them is refused (the sketches in the table were built with the old ones).

``version`` is stamped on every alert (``config_version``) so an alert can be
traced to the thresholds that raised it; change it whenever anything else here
changes.

A detector whose class sets ``keeps_ledger = True`` (``velocity``,
``structuring``, ``rapid_pass_through``, ``fan_out``, ``precipitated_funds``,
``borrow_and_vanish``) keeps facts in its state, amounts and counterparties
in a window, a balance, open loans or the population its learnt limits come
from, that every event must update whether or not it was flagged: its
``learn_flagged`` defaults to true and may not be set to false.

Money limits are per currency, in one shape for every detector that has
them (see ``detectors/limits.py``): ``currency_limits`` maps a currency to
``{limit name: minor units}``; in a currency without a configured limit the
limit is the ``learnt_quantile`` of what the detector sees in that currency,
once ``min_population`` values have been seen.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Mapping
from typing import Any, Final

from detectors.account_takeover import AccountTakeover
from detectors.amount_outlier import AmountOutlier
from detectors.base import SEVERITIES, Detector, KeyedDetector, ThresholdAlerter
from detectors.blacklist import Blacklist
from detectors.borrow_and_vanish import BorrowAndVanish
from detectors.budget import DEFAULT_MIN_SCORED, DEFAULT_SEGMENT_BY
from detectors.burst import SpendingBurst
from detectors.crowdfunding import PayoutAfterSuspiciousPledges, PledgeChurn, SuspiciousPledging
from detectors.fan_out import FanOut
from detectors.flow import Cycle, FanIn, GatherScatter, ScatterGather, configured_bounds
from detectors.fund_segregation import FundSegregation
from detectors.halfspace import GlobalAnomaly
from detectors.identity import IdentityReuse, LoanStacking
from detectors.precipitated_funds import PrecipitatedFunds
from detectors.rapid_pass_through import RapidPassThrough
from detectors.structuring import Structuring
from detectors.velocity import VelocityLimits

#: Every detector the configuration can name, by its ``name``.
DETECTORS: Final[Mapping[str, type[Detector] | type[KeyedDetector[Any]]]] = {
    cls.name: cls
    for cls in (
        VelocityLimits,
        AmountOutlier,
        GlobalAnomaly,
        Structuring,
        RapidPassThrough,
        FanOut,
        FundSegregation,
        PrecipitatedFunds,
        AccountTakeover,
        Blacklist,
        BorrowAndVanish,
        SpendingBurst,
    )
}

#: Detectors of the derived stages (``stage`` class attribute: flow, identity,
#: project). They read the features of a stage's sketch, not an account's, so
#: the worker runs them in that stage and the account conformance suite skips them.
STAGE_DETECTORS: Final[Mapping[str, type[Detector]]] = {
    cls.name: cls
    for cls in (
        Cycle, ScatterGather, GatherScatter, FanIn,
        IdentityReuse, LoanStacking,
        PledgeChurn, SuspiciousPledging, PayoutAfterSuspiciousPledges,
    )
}

#: The packaged configuration. Treat it as read-only: :func:`build_alerters`
#: copies what it uses, and ``copy.deepcopy`` gives a version to edit.
DEFAULT_CONFIG: Final[dict[str, Any]] = {
    "version": "defaults-6",
    "detectors": {
        "velocity": {
            # Sums are money, so they are per currency: 50,000.00 CNY a minute, 100,000.00
            # an hour, 500,000.00 a day. Elsewhere each is the 99.9th percentile of the
            # currency's window sums (of two payments or more) seen by the worker.
            "params": {
                "limits": {
                    "1m": {"count": 10, "distinct_cp": 5},
                    "1h": {"count": 30, "distinct_cp": 20},
                    "24h": {"count": 200, "distinct_cp": 50},
                },
                "currency_limits": {
                    "CNY": {"sum_1m": 5_000_000, "sum_1h": 10_000_000, "sum_24h": 50_000_000},
                },
                "learnt_quantile": 0.999,
                "min_population": 1_000,
            },
            "threshold": 1.0,
            "severity": "high",
            "cooldown_seconds": 60,
        },
        "amount_outlier": {
            # Twenty payments before judging: with five, the spread is a guess and
            # the simulator's ordinary accounts raised thirty times more alerts.
            "params": {"half_life": 30, "min_history": 20, "sd_floor": 0.5, "outflows_only": True},
            # At most 0.1% of the outflows scored above their account's usual, and never
            # below 3.5 standard deviations.
            "budget": 0.001,
            "threshold": 3.5,
            "critical_threshold": 8.0,
            "severity": "medium",
        },
        "global_anomaly": {
            "params": {"n_trees": 10, "height": 8, "window_size": 250, "seed": 42, "warmup": 1000},
            # The scale of Half-Space Trees' scores depends on the traffic: a budget, no floor.
            "budget": 0.002,
            "severity": "low",
            "cooldown_seconds": 300,
        },
        "structuring": {
            # Three deposits or transfers of 45,000.00 to 49,999.99 CNY within a day, under the
            # 50,000.00 cash reporting threshold of the PBoC's large-transaction rules.
            # Elsewhere the threshold is the 99.9th percentile of the currency's amounts.
            "params": {
                "currency_limits": {"CNY": {"threshold": 5_000_000}},
                "band_fraction": 0.9,
                "min_count": 3,
                "window_seconds": 86_400,
                "event_types": ["transfer", "top_up", "withdrawal"],
                "learnt_quantile": 0.999,
                "min_population": 1_000,
            },
            "threshold": 1.0,
            "severity": "high",
            "cooldown_seconds": 3600,
            "learn_flagged": True,
        },
        "rapid_pass_through": {
            # 80% of at least 10,000.00 CNY received gone again within 30 minutes; elsewhere
            # of at least the 99th percentile of the currency's window inflows.
            "params": {
                "window_seconds": 1_800,
                "currency_limits": {"CNY": {"min_inflow": 1_000_000}},
                "bucket_seconds": 60,
                "learnt_quantile": 0.99,
                "min_population": 1_000,
            },
            "threshold": 0.8,
            "severity": "high",
            "cooldown_seconds": 1800,
            "learn_flagged": True,
        },
        "fan_out": {
            # Transfers to ten different accounts in a day; the simulator's customers
            # transfer to two to six contacts.
            "params": {
                "min_distinct": 10,
                "window_seconds": 86_400,
                "event_types": ["transfer"],
                # Paying many customers is what escrow and platform accounts are for.
                "exempt_accounts": [
                    "escrow-001", "escrow-002", "reserve-001", "platform-ops-001",
                    "platform-fees-001",
                ],
            },
            "threshold": 1.0,
            "severity": "medium",
            "cooldown_seconds": 3600,
            "learn_flagged": True,
        },
        "fund_segregation": {
            # The account ids of the simulator's (and the demo's) escrow and platform accounts.
            "params": {
                "escrow_accounts": ["escrow-001", "escrow-002", "reserve-001"],
                "platform_accounts": ["platform-ops-001", "platform-fees-001"],
                "event_types": ["transfer", "payment", "withdrawal"],
            },
            "threshold": 1.0,
            "severity": "critical",
        },
        "precipitated_funds": {
            # More than 50,000.00 CNY held for three days; elsewhere more than the 99th
            # percentile of the currency's balances.
            "params": {
                "currency_limits": {"CNY": {"balance_limit": 5_000_000}},
                "max_dwell_seconds": 259_200,
                "learnt_quantile": 0.99,
                "min_population": 1_000,
            },
            "threshold": 1.0,
            "severity": "medium",
            "learn_flagged": True,
        },
        "account_takeover": {
            # Within an hour of a credential change or a login from a new device: an outflow
            # of at least 1,000.00 CNY that is 10x the usual or 50,000.00 CNY (elsewhere: at
            # least the currency's median outflow, and 10x the usual or its 99th percentile).
            # At 5x the usual, ordinary accounts of the simulator raised twice as many alerts
            # for the same takeovers caught.
            "params": {
                "window_seconds": 3_600,
                "known_devices": 8,
                "currency_limits": {"CNY": {"large_outflow": 5_000_000, "min_outflow": 100_000}},
                "usual_multiple": 10.0,
                "min_history": 3,
                "learnt_quantile": {"large_outflow": 0.99, "min_outflow": 0.5},
                "min_population": 1_000,
            },
            "threshold": 1.0,
            "severity": "high",
            "cooldown_seconds": 3600,
        },
        "blacklist": {
            # Empty: a deployment lists its own hashes, computed with its TXWATCH_PII_KEY
            # by streams.codec.hash_pii, in its TXWATCH_DETECTOR_CONFIG file. The demo's
            # list (the simulator's people under the development key) is
            # streams/config/demo.json.
            "params": {
                "hashes": [],
                "fields": ["national_id_hash", "phone_hash", "device_id_hash"],
            },
            "threshold": 1.0,
            "severity": "high",
        },
        "borrow_and_vanish": {
            # 80% of a loan taken out and no repayment by the end of its due date.
            "params": {
                "cash_out_types": ["withdrawal", "transfer"],
                "grace_seconds": 0,
                "default_due_seconds": 2_592_000,
                "max_open_loans": 4,
            },
            "threshold": 0.8,
            "severity": "high",
            "learn_flagged": True,
        },
        "spending_burst": {
            # Outflows far above the account's own usual amounts and pace, to payees it never
            # paid, adding up within hours (evidence halves every 4 hours). docs/bursts.md:
            # the threshold against alerts, precision and early recall on two histories.
            "params": {
                "half_life": 30,
                "min_history": 5,
                "sd_floor": 0.5,
                "novelty_weight": 2.0,
                "pace_weight": 1.0,
                "drain_fraction": 0.8,
                "drain_weight": 2.0,
                "half_life_seconds": 14_400,
                "min_population": 1_000,
            },
            "threshold": 5.0,
            "severity": "high",
        },
        # -- derived stages (streams/stages.py) -------------------------------------------
        # Rings of 3 to 10 accounts closed within 4 weeks; horizons up to 90 days
        # (streams.stages.flow_params sizes the flow sketch from these).
        "cycle": {"params": {"min_ring": 3, "max_ring": 10, "max_span_seconds": 2_419_200,
                             "max_origins": 16},
                  "threshold": 1.0, "severity": "high"},
        "scatter_gather": {"params": {"min_vias": 3, "window_seconds": 259_200},
                           "threshold": 1.0, "severity": "high"},
        "gather_scatter": {"params": {"min_in": 5, "min_out": 5, "window_seconds": 259_200},
                           "threshold": 1.0, "severity": "medium"},
        "fan_in": {"params": {"max_senders": 20, "window_seconds": 86_400}, "threshold": 1.0,
                   "severity": "medium"},
        "identity_reuse": {"threshold": 1.0, "severity": "high"},
        "loan_stacking": {"threshold": 1.0, "severity": "high"},
        "pledge_churn": {"threshold": 1.0, "severity": "medium"},
        "suspicious_pledging": {"threshold": 1.0, "severity": "high"},
        "suspicious_payout": {"threshold": 1.0, "severity": "high"},
    },
    # The bounds of the flow stage's per-account sketch (detectors/flow/params.py); its
    # ring length and windows follow the flow detectors' params above.
    "stages": {
        "flow": {
            # paths, destinations and senders kept per account, each
            "max_entries": 64,
            # an account with this many new senders, or receivers, within the ring window
            # passes no path on: laundering rings run through accounts with few new
            # counterparties, and at 32 every account of a young network relays
            # (docs/design.md, flow stage, has the measurements)
            "hub_degree": 8,
            # how long a sender is remembered: a relationship forgotten sooner comes back
            # as new and extends paths by chance (docs/detection.md, sender memory)
            "memory_seconds": 31_536_000,
            # only a relationship's first transfer extends paths
            "novel_transfers": 1,
            # a path's largest transfer at most 10x its smallest
            "amount_ratio": 10,
            # destination changes are relayed all the way (bounded by the ring length and
            # the hub degree): only full relaying finds a ring whatever the order its
            # transfers are processed in; 2 hops found 83 of 100 injected rings
            "relay_hops": None,
            # intermediaries kept per two-hop origin, and two-hop origins kept
            "max_vias": 8,
            "max_gather_origins": 8,
        },
    },
}

_TOP_LEVEL_KEYS: Final = ("version", "detectors", "stages")
#: Derived stages whose bounds a configuration sets, with the function that checks them.
_STAGE_BOUNDS: Final = {"flow": configured_bounds}
_SPEC_KEYS: Final = ("params", "threshold", "severity", "critical_threshold", "learn_flagged",
                     "budget", "segment_by", "min_scored", "cooldown_seconds")
_BUDGET_KEYS: Final = ("segment_by", "min_scored")


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
    >>> for a in build_alerters(DEFAULT_CONFIG):
    ...     print(a.name, a.threshold, a.severity, a.learn_flagged)
    velocity 1.0 high True
    amount_outlier 3.5 medium False
    global_anomaly 0.0 low False
    structuring 1.0 high True
    rapid_pass_through 0.8 high True
    fan_out 1.0 medium True
    fund_segregation 1.0 critical False
    precipitated_funds 1.0 medium True
    account_takeover 1.0 high False
    blacklist 1.0 high False
    borrow_and_vanish 0.8 high True
    spending_burst 5.0 high False
    cycle 1.0 high False
    scatter_gather 1.0 high False
    gather_scatter 1.0 medium False
    fan_in 1.0 medium False
    identity_reuse 1.0 high False
    loan_stacking 1.0 high False
    pledge_churn 1.0 medium False
    suspicious_pledging 1.0 high False
    suspicious_payout 1.0 high False
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
    stage_bounds(config)
    return [_build_alerter(name, spec) for name, spec in detectors.items()]


def stage_bounds(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The ``stages`` section of ``config``, checked: stage name to its bounds.

    A stage left out keeps its defaults (:data:`DEFAULT_CONFIG`'s), so a
    configuration written before the section existed means what it meant.

    Raises
    ------
    ValueError
        Naming the key at fault, e.g. ``stages.flow.hub_degree``.
    """
    stages = config.get("stages", {})
    if not isinstance(stages, Mapping):
        message = f"stages must be a mapping of stage name to its bounds, not {stages!r}"
        raise ValueError(message)
    _reject_unknown_keys(stages, tuple(_STAGE_BOUNDS), "stages")
    defaults = DEFAULT_CONFIG["stages"]
    return {name: {**defaults[name], **check(stages.get(name, {}), f"stages.{name}")}
            for name, check in _STAGE_BOUNDS.items()}


def _build_alerter(name: Any, spec: Any) -> ThresholdAlerter:
    where = f"detectors.{name}"
    known = {**DETECTORS, **STAGE_DETECTORS}
    cls = known.get(name) if isinstance(name, str) else None
    if cls is None:
        message = f"{where}: unknown detector; known detectors are {sorted(known)}"
        raise ValueError(message)
    if not isinstance(spec, Mapping):
        message = f"{where} must be a mapping, not {spec!r}"
        raise ValueError(message)
    _reject_unknown_keys(spec, _SPEC_KEYS, where)

    budget, segment_by, min_scored = _budget(spec, where)
    stage = getattr(cls, "stage", None)
    if budget is not None and stage:
        # a derived stage keeps no state of its detectors across restarts
        message = (f"{where}.budget: {name} runs in the {stage} stage, whose detectors"
                   " take a fixed threshold")
        raise ValueError(message)
    if "threshold" in spec:
        threshold = _number(spec["threshold"], f"{where}.threshold")
    elif budget is not None:
        threshold = 0.0
    else:
        message = f"{where}.threshold is required unless a budget is given"
        raise ValueError(message)
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
    keeps_ledger = cls.keeps_ledger
    learn_flagged = spec.get("learn_flagged", keeps_ledger)
    if not isinstance(learn_flagged, bool):
        message = f"{where}.learn_flagged must be true or false, not {learn_flagged!r}"
        raise ValueError(message)
    if keeps_ledger and not learn_flagged:
        message = (
            f"{where}.learn_flagged must be true: {name} keeps a ledger (amounts in a"
            f" window, balances, open loans) that every event must update, flagged or not"
        )
        raise ValueError(message)

    cooldown = spec.get("cooldown_seconds", 0)
    if isinstance(cooldown, bool) or not isinstance(cooldown, int) or cooldown < 0:
        message = (f"{where}.cooldown_seconds must be a whole number of seconds >= 0,"
                   f" not {cooldown!r}")
        raise ValueError(message)
    if cooldown and stage:
        message = (f"{where}.cooldown_seconds: {name} runs in the {stage} stage, whose alerts"
                   " are each raised once per pattern; leave it out")
        raise ValueError(message)

    detector = _build_detector(cls, spec.get("params", {}), f"{where}.params")
    return ThresholdAlerter(
        detector,
        threshold=threshold,
        severity=severity,
        critical_threshold=critical,
        learn_flagged=learn_flagged,
        budget=budget,
        segment_by=segment_by,
        min_scored=min_scored,
        cooldown_seconds=cooldown,
    )


def _budget(spec: Mapping[str, Any], where: str) -> tuple[float | None, tuple[str, ...], int]:
    """``budget``, ``segment_by`` and ``min_scored`` of a detector's settings, checked."""
    segment_by = DEFAULT_SEGMENT_BY
    min_scored = DEFAULT_MIN_SCORED
    if "budget" not in spec:
        for key in _BUDGET_KEYS:
            if key in spec:
                message = f"{where}.{key} applies only with a budget; set {where}.budget"
                raise ValueError(message)
        return None, segment_by, min_scored
    budget = spec["budget"]
    if (isinstance(budget, bool) or not isinstance(budget, int | float)
            or not math.isfinite(budget) or not 0 < budget < 1):
        message = (
            f"{where}.budget must be a fraction of scored events between 0 and 1"
            f" (0.002 is 0.2%), not {budget!r}"
        )
        raise ValueError(message)
    if "segment_by" in spec:
        names = spec["segment_by"]
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            message = f"{where}.segment_by must be a list of feature names, not {names!r}"
            raise ValueError(message)
        segment_by = tuple(names)
    if "min_scored" in spec:
        min_scored = spec["min_scored"]
        if isinstance(min_scored, bool) or not isinstance(min_scored, int) or min_scored < 1:
            message = f"{where}.min_scored must be an int >= 1, not {min_scored!r}"
            raise ValueError(message)
    return float(budget), segment_by, min_scored


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
