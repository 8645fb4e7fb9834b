"""The detector contract.

A detector is a small estimator in River's manner: ``score_one(x)`` returns a
float where high means suspicious, ``learn_one(x)`` updates it. Constructor
arguments are its parameters only, stored under the same names, so a detector
can be printed, cloned and rebuilt from configuration.

Two kinds exist:

* :class:`Detector` keeps one model for the whole stream (for example River's
  ``HalfSpaceTrees``).
* :class:`KeyedDetector` keeps one *small* state per account. The state is a
  plain JSON-able list owned by the caller (the worker stores it with the
  account's durable record), so ``score_one`` and ``learn_one`` take it as an
  argument instead of holding a dictionary of every account.

The decision to alert is not the detector's: :class:`ThresholdAlerter` wraps a
detector with a threshold (or an alert budget, :mod:`detectors.budget`), a
severity and the rule that, by default, a model does not learn from what it has
just flagged.

``x`` is a mapping of features prepared by the caller (see
``streams/features.py``): plain numbers and strings; money in integer minor
units.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Generic, Protocol, TypeVar, cast, runtime_checkable

from detectors.budget import DEFAULT_MIN_SCORED, DEFAULT_SEGMENT_BY, ScoreBudget

Features = Mapping[str, Any]
S = TypeVar("S")

SEVERITIES = ("low", "medium", "high", "critical")


class _Parametrised:
    """Parameters are the constructor arguments, stored under the same names.

    Also what both kinds of detector share: the gauges a keyed detector may
    export (none by default).
    """

    #: Per-account quantities the worker sums over the accounts it holds and exports
    #: as gauges (money held on the platform, say); ``streams/metrics.py`` names the
    #: series. Empty for most detectors, and for every whole-stream one.
    gauge_names: ClassVar[tuple[str, ...]] = ()

    def gauges(self, state: Any) -> tuple[int, ...]:
        """This account's part of each gauge of :attr:`gauge_names`, in that order.

        Integers, so that the worker's running sums stay exact; ``state`` is
        the account's state of this detector, ``None`` for an account not seen.
        """
        return ()

    def _get_params(self) -> dict[str, Any]:
        signature = inspect.signature(type(self).__init__)
        return {
            name: getattr(self, name)
            for name in signature.parameters
            if name != "self" and hasattr(self, name)
        }

    def clone(self, **new_params: Any) -> Any:
        """A fresh, unfitted copy with the same (or the given) parameters."""
        params = {**self._get_params(), **new_params}
        return type(self)(**params)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self._get_params().items())
        return f"{type(self).__name__}({params})"


class Detector(_Parametrised, ABC):
    """One model for the whole stream."""

    name: ClassVar[str]
    #: Whether its state holds facts every event must update, flagged or not
    #: (amounts and counterparties in a window, a balance, open loans, learnt
    #: population limits): its ``learn_flagged`` defaults to true and may not be
    #: false (``detectors/registry.py``).
    keeps_ledger: ClassVar[bool] = False
    #: The largest score, when scores are bounded; alert budgets use it (see
    #: :func:`detectors.budget.score_bin`).
    max_score: ClassVar[float | None] = None

    def learn_one(self, x: Features) -> None:  # empty on purpose: stateless detectors learn nothing
        """Update the model with one event's features."""

    @abstractmethod
    def score_one(self, x: Features) -> float:
        """Suspicion score of ``x``; higher is more suspicious."""

    @abstractmethod
    def explain_one(self, x: Features, score: float) -> list[str]:
        """Reasons a person understands, with the numbers behind ``score``."""

    def snapshot(self) -> Any:
        """The learnt state, to restore later with :meth:`restore`."""
        return None

    def restore(self, snapshot: Any) -> None:  # empty on purpose: stateless by default
        """Put back what :meth:`snapshot` returned."""


class KeyedDetector(_Parametrised, ABC, Generic[S]):
    """One small state per account, held by the caller."""

    name: ClassVar[str]
    #: Whether its state holds facts every event must update, flagged or not
    #: (amounts and counterparties in a window, a balance, open loans, learnt
    #: population limits): its ``learn_flagged`` defaults to true and may not be
    #: false (``detectors/registry.py``).
    keeps_ledger: ClassVar[bool] = False
    #: The largest score, when scores are bounded (see :attr:`Detector.max_score`).
    max_score: ClassVar[float | None] = None

    @abstractmethod
    def new_state(self) -> S:
        """The state of an account never seen before (JSON-able)."""

    @abstractmethod
    def score_one(self, x: Features, state: S) -> float:
        """Suspicion score of ``x`` against the account's ``state``."""

    @abstractmethod
    def learn_one(self, x: Features, state: S) -> S:
        """The account's state after ``x`` (may mutate and return ``state``)."""

    @abstractmethod
    def explain_one(self, x: Features, state: S, score: float) -> list[str]:
        """Reasons a person understands, with the numbers behind ``score``."""

    def snapshot(self) -> Any:
        """What it learnt beyond the accounts (population limits), to :meth:`restore` later.

        ``None`` when it keeps nothing but per-account state, as most do.
        """
        return None

    def restore(self, snapshot: Any) -> None:  # empty on purpose: no state beyond the accounts
        """Put back what :meth:`snapshot` returned."""

    def anchor_one(self, x: Features, state: S) -> tuple[str | None, tuple[str, ...]] | None:
        """What a finding is about when that is not the event at hand; ``None``: the event.

        A detector whose finding concerns something else (a loan completed by
        whichever of two topics' events arrives last) returns the finding's
        ``key`` and ``evidence`` (see :class:`Finding`). Called only for a
        finding, before ``learn_one``.
        """
        return None


@runtime_checkable
class Sketch(Protocol):
    """The per-key state of a derived stage (flow, identity, project).

    The stage's detectors are stateless: they judge the features the sketch
    computes. A sketch class also offers ``new(params)`` and
    ``from_state(state, params)``; ``from_state(sketch.to_state(), params)`` is
    equal to ``sketch`` (the stage writes ``to_state()`` to its changelog and a
    restarted worker rebuilds the sketch from it). Implemented by
    :class:`detectors.flow.FlowSketch`, :class:`detectors.identity.IdentitySketch`
    and :class:`detectors.crowdfunding.ProjectSketch`.
    """

    def to_state(self) -> list[Any]:
        """A JSON-able list describing the whole sketch."""
        ...


#: Whether a detector class is keyed, by class (see ``ThresholdAlerter.process_one``).
_KEYED: dict[type, bool] = {}


@dataclass(frozen=True, slots=True)
class Finding:
    """A detector's decision that an event deserves an alert."""

    detector: str
    score: float
    severity: str
    reasons: tuple[str, ...]
    #: What the finding is about when that is not the event being processed (a
    #: loan, say): the alert id is derived from it, so that the same finding
    #: reached through events arriving in another order keeps one id.
    key: str | None = None
    #: Events the finding rests on besides the one being processed.
    evidence: tuple[str, ...] = ()


class ThresholdAlerter(_Parametrised):
    """Decides to alert when a detector's score reaches ``threshold``, or is within its budget.

    Without ``budget`` a score at or above ``threshold`` alerts. With it, a
    score alerts when it is at or above ``threshold`` (then a floor) **and**
    among the top ``budget`` of the recent positive scores of its segment
    (:class:`detectors.budget.ScoreBudget`), so the share of scored events
    that alert stays within the budget whatever the scale of the traffic.
    The budget's state is global to the alerter; :meth:`snapshot` and
    :meth:`restore` carry it.

    Parameters
    ----------
    detector
        A :class:`Detector` or :class:`KeyedDetector`.
    threshold
        Scores at or above it produce a :class:`Finding`; with a ``budget``, the
        floor below which no score alerts.
    severity
        Severity of the findings.
    critical_threshold
        Scores at or above it are raised to ``critical``; ``None`` never.
    learn_flagged
        Whether the model learns from events it has just flagged. Off by
        default so that an attack does not teach the model it is normal.
    budget
        Largest fraction of scored events that may alert; ``None`` for a fixed
        threshold.
    segment_by
        With a budget: features whose values split the score distribution.
    min_scored
        With a budget: scored events a segment counts before it alerts.
    cooldown_seconds
        Event-time seconds after an alert on an account during which this
        detector raises no other alert on it (account-stage detectors; 0: none).
    """

    def __init__(
        self,
        detector: Detector | KeyedDetector[Any],
        threshold: float = 0.0,
        severity: str = "high",
        critical_threshold: float | None = None,
        learn_flagged: bool = False,
        budget: float | None = None,
        segment_by: tuple[str, ...] = DEFAULT_SEGMENT_BY,
        min_scored: int = DEFAULT_MIN_SCORED,
        cooldown_seconds: int = 0,
    ) -> None:
        if severity not in SEVERITIES:
            message = f"severity must be one of {SEVERITIES}, not {severity!r}"
            raise ValueError(message)
        self.detector = detector
        self.threshold = threshold
        self.severity = severity
        self.critical_threshold = critical_threshold
        self.learn_flagged = learn_flagged
        self.budget = budget
        self.segment_by = tuple(segment_by)
        self.min_scored = min_scored
        self.cooldown_seconds = cooldown_seconds
        self._budget = (
            None if budget is None
            else ScoreBudget(budget, self.segment_by, min_scored, max_score=detector.max_score)
        )
        #: score of the last event seen by :meth:`process_one`, for score histograms
        self.last_score = 0.0

    @property
    def name(self) -> str:
        return self.detector.name

    def process_one(self, x: Features, state: Any = None) -> tuple[Finding | None, Any]:
        """Score, decide, then learn. Returns the finding (or ``None``) and the new state.

        ``state`` is used only by keyed detectors; global ones return it unchanged.
        """
        # Runs once per detector per event: no closure, and the explanation is
        # built only for a finding.
        detector = self.detector
        kind = type(detector)
        keyed = _KEYED.get(kind)
        if keyed is None:  # isinstance on an ABC costs a Python call: once per class
            keyed = _KEYED[kind] = isinstance(detector, KeyedDetector)
        if keyed:
            per_account = cast("KeyedDetector[Any]", detector)
            if state is None:
                state = per_account.new_state()
            score = per_account.score_one(x, state)
            self.last_score = score
            if not self._alerts(x, score):
                return None, per_account.learn_one(x, state)
            finding = self._finding(score, per_account.explain_one(x, state, score))
            anchor = per_account.anchor_one(x, state)
            if anchor is not None:
                key, evidence = anchor
                finding = replace(finding, key=key, evidence=evidence)
            if self.learn_flagged:
                state = per_account.learn_one(x, state)
            return finding, state
        whole_stream = cast("Detector", detector)
        score = whole_stream.score_one(x)
        self.last_score = score
        if not self._alerts(x, score):
            whole_stream.learn_one(x)
            return None, state
        finding = self._finding(score, whole_stream.explain_one(x, score))
        if self.learn_flagged:
            whole_stream.learn_one(x)
        return finding, state

    def learn_only(self, x: Features, state: Any = None, *, flagged: bool = False) -> Any:
        """Update an account's state with ``x`` without scoring it or counting it in the budget.

        For an event whose effect on the global state (the model, the budget,
        learnt limits) is already there, as after a crash that wrote that state
        and not the account's. ``flagged`` is the decision taken then (it
        cannot be taken again: the budget has counted the event): a flagged
        event is not learnt unless ``learn_flagged``, as in
        :meth:`process_one`. Only the account's state learns: learnt population
        limits are left as they were. A whole-stream detector learns nothing;
        returns the state.
        """
        detector = self.detector
        if isinstance(detector, KeyedDetector):
            if state is None:
                state = detector.new_state()
            if flagged and not self.learn_flagged:
                return state
            # its population (learnt limits) has counted the event too: not twice
            population = detector.snapshot()
            state = detector.learn_one(x, state)
            if population is not None:
                detector.restore(population)
        return state

    def _alerts(self, x: Features, score: float) -> bool:
        budget = self._budget
        if budget is None:
            return score >= self.threshold
        return budget.admit(x, score, self.threshold)

    def _finding(self, score: float, reasons: list[str]) -> Finding:
        severity = self.severity
        if self.critical_threshold is not None and score >= self.critical_threshold:
            severity = "critical"
        if self._budget is not None:
            reasons = [*reasons, self._budget.explain(score)]
        return Finding(self.name, float(score), severity, tuple(reasons))

    @property
    def has_global_state(self) -> bool:
        """Whether the alerter holds state beyond the accounts' (a model, a budget).

        A detector has one when it overrides ``snapshot``: a whole-stream model, or
        a keyed detector's population limits learnt beside its per-account states.
        """
        if self._budget is not None:
            return True
        kind = type(self.detector)
        return kind.snapshot not in (Detector.snapshot, KeyedDetector.snapshot)

    def snapshot(self) -> dict[str, Any]:
        """The global state, JSON-able: the detector's model and the budget's histograms.

        Each part is written with the parameters it was learnt under, so that
        :meth:`restore` takes only what still applies.
        """
        detector = self.detector
        return {
            "detector_params": repr(detector),
            "detector": detector.snapshot(),
            "budget_params": self._budget_params(),
            "budget": self._budget.snapshot() if self._budget is not None else None,
        }

    def restore(self, snapshot: Mapping[str, Any]) -> None:
        """Put back what :meth:`snapshot` returned, each part whose parameters are unchanged.

        A part learnt under other parameters (a changed configuration) is left
        fresh. Raises ``ValueError`` for a snapshot that does not decode.
        """
        detector = self.detector
        learnt = snapshot.get("detector")
        if learnt is not None and snapshot.get("detector_params") == repr(detector):
            detector.restore(learnt)
        budget = self._budget
        if budget is not None and snapshot.get("budget_params") == self._budget_params():
            budget.restore(snapshot["budget"])

    def _budget_params(self) -> list[Any] | None:
        if self.budget is None:
            return None
        return [self.budget, list(self.segment_by), self.min_scored]
