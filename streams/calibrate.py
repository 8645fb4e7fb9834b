"""``txwatch calibrate``: fit every detector's alert level to a budget on a history.

What an AML team does by hand with above-the-line / below-the-line testing,
done by the product: run a history through the worker's own code
(:func:`streams.evaluation.backtest`), record every detector's score on every
event, then choose per detector the lowest alert level at which the whole
configuration alerts on at most ``budget`` percent of the events.

The budget is split across detectors by severity (a critical detector weighs
eight times a low one). A detector that needs less than its share keeps what
it raises and leaves the rest to the others (water-filling), so a quiet
critical rule is never tightened to make room for a noisy low one. Levels are
only ever raised: calibration never makes a detector more sensitive than the
configuration it starts from. A critical detector is never silenced; when it
alone exceeds the budget the report says so.

How a level is set depends on the detector's spec:

* with a ``budget`` key (a share of the events the detector scores), that
  share is lowered to the detector's allotment;
* otherwise its ``threshold`` is raised to the smallest score at which its
  alerts, after the account cool-down the worker applies, fit its allotment.

A second run with the fitted configuration checks the result; a detector still
over its allotment (scores move when a model stops learning from what it
flags) is fitted again, at most :data:`ROUNDS` times. The output is a complete
versioned configuration that ``txwatch rules publish`` and
``TXWATCH_DETECTOR_CONFIG`` accept. The same history, budget and starting
configuration always give the same file.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import math
import sys
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import orjson

from detectors.registry import DEFAULT_CONFIG
from streams.sensors import Sensor
from streams.tables import render, share

if TYPE_CHECKING:
    from streams.evaluation import Evaluation
    from streams.events import Event
    from streams.settings import Settings

#: Weight of a detector's share of the budget, by its severity.
SEVERITY_WEIGHTS: Final[Mapping[str, float]] = {
    "low": 1.0, "medium": 2.0, "high": 4.0, "critical": 8.0,
}
#: Fitting rounds after the first (each one a full pass over the history).
ROUNDS: Final = 2
#: The smallest score budget calibration writes (a share of scored events).
MIN_BUDGET: Final = 1e-6
#: How much lower each further fitting round aims than the allotment.
MARGIN: Final = 0.03

Progress = Callable[[str], None]


@dataclass(slots=True)
class _Scores:
    """One detector's positive scores in stream order: ``(account key, event time, score)``."""

    records: list[tuple[Any, int, float]] = field(default_factory=list)
    #: events the detector produced a score for (a positive one)
    scored: int = 0


@dataclass(slots=True)
class DetectorFit:
    """What calibration did to one detector."""

    detector: str
    severity: str
    allotted: int
    before: int
    after: int | None = None
    threshold_before: float | None = None
    threshold_after: float | None = None
    budget_before: float | None = None
    budget_after: float | None = None
    precision_before: float | None = None
    precision_after: float | None = None
    note: str = ""


@dataclass(slots=True)
class Calibration:
    """The fitted configuration and the report ``txwatch calibrate`` prints."""

    config: dict[str, Any]
    events: int
    budget_percent: float
    allowed_alerts: int
    fits: list[DetectorFit]
    alerts_before: int = 0
    alerts_after: int = 0
    rounds: int = 1
    before: Evaluation | None = None
    after: Evaluation | None = None
    notes: list[str] = field(default_factory=list)

    def table(self) -> str:
        """Per detector, alerts per 1,000 events before and after, and what changed."""
        return render_calibration(self)


def _per_thousand(count: int, events: int) -> str:
    return f"{1000 * count / events:.2f}" if events else "-"


def _level(fit: DetectorFit, after: bool) -> str:
    budget = fit.budget_after if after else fit.budget_before
    if budget is not None:
        return f"budget {100 * budget:.3g}%"
    threshold = fit.threshold_after if after else fit.threshold_before
    return "-" if threshold is None else f"{threshold:.4g}"


def render_calibration(result: Calibration) -> str:
    """The calibration report as text."""
    with_precision = any(f.precision_before is not None or f.precision_after is not None
                         for f in result.fits)
    lines = [
        f"calibrate: {result.events:,} events, budget {result.budget_percent:g}% "
        f"= {result.allowed_alerts:,} alerts; before {result.alerts_before:,} "
        f"({_per_thousand(result.alerts_before, result.events)} per 1,000), after "
        f"{result.alerts_after:,} ({_per_thousand(result.alerts_after, result.events)} "
        f"per 1,000); {result.rounds} fitting round(s); version "
        f"{result.config.get('version')}",
        "",
    ]
    header = ["detector", "severity", "allotted", "before/1k", "after/1k",
              "level before -> after"]
    if with_precision:
        header += ["prec. before", "prec. after"]
    rows = []
    for fit in result.fits:
        after = "-" if fit.after is None else _per_thousand(fit.after, result.events)
        row = [fit.detector, fit.severity, f"{fit.allotted:,}",
               _per_thousand(fit.before, result.events), after,
               f"{_level(fit, False)} -> {_level(fit, True)}"]
        if with_precision:
            row += [share(fit.precision_before), share(fit.precision_after)]
        rows.append([*row, fit.note or ""])
    lines.extend(render([*header, ""], rows, right={2, 3, 4, 6, 7}))
    lines.append("")
    lines.append("allotted: the detector's share of the budget in alerts (severity-weighted; "
                 "what a quieter detector leaves goes to the others). Levels are only raised.")
    if with_precision:
        lines.append("precision: that detector's alerts naming a labelled event, over all its "
                     "alerts (from --labels).")
    lines.extend(_recall_lines(result))
    lines.extend(f"note: {note}" for note in result.notes)
    return "\n".join(lines)


def _recall_lines(result: Calibration) -> list[str]:
    """Per labelled pattern, groups caught before and after (with a labels CSV)."""
    before = result.before.labelled if result.before is not None else None
    after = result.after.labelled if result.after is not None else None
    if before is None or after is None:
        return []
    later = {row.pattern: row for row in after.patterns}
    rows = []
    for row in before.patterns:
        fitted = later.get(row.pattern)
        rows.append([row.pattern, f"{row.groups:,}", share(row.group_recall),
                     share(fitted.group_recall if fitted else None), share(row.first_3_share),
                     share(fitted.first_3_share if fitted else None)])
    lines = ["", *render(["pattern", "groups", "recall before", "recall after",
                          "first 3 before", "first 3 after"], rows, right={1, 2, 3, 4, 5})]
    lines.append("recall: labelled groups named by an alert of any detector; first 3: named "
                 "by the time the group's third event was processed.")
    return lines


# -- recording scores ------------------------------------------------------------------------


class ScoreRecorder(Sensor):
    """A sensor keeping every positive score, with the account and event time it belongs to.

    The monitor reports a detector's score (``on_score``) while it judges an
    event and the event itself (``on_event``) once every detector has judged
    it, so scores wait for their event. The derived stages report scores
    without an event; they are filed under the next one, which is harmless:
    no cool-down applies to derived-stage detectors.
    """

    def __init__(self) -> None:
        self.scores: dict[str, _Scores] = defaultdict(_Scores)
        self._pending: list[tuple[str, float]] = []

    def on_score(self, detector: str, score: float) -> None:
        self._pending.append((detector, score))

    def on_event(self, event: Event, outcome: str) -> None:
        self.flush(event.account_id, int(event.occurred_at.timestamp()))

    def flush(self, account: str | None = None, ts: int = 0) -> None:
        """File the scores waiting for their event under ``account`` at ``ts``."""
        for name, score in self._pending:
            scores = self.scores[name]
            scores.scored += 1
            scores.records.append((account, ts, float(score)))
        self._pending.clear()


# -- fitting ----------------------------------------------------------------------------------


def _cooldown(spec: Mapping[str, Any]) -> int:
    """A detector's configured cool-down (``build_rules`` has checked it)."""
    return int(spec.get("cooldown_seconds", 0))


def alerts_at(records: Sequence[tuple[Any, int, float]], threshold: float,
              cooldown_seconds: int) -> int:
    """Alerts the records raise at ``threshold`` with the worker's per-account cool-down.

    Examples
    --------
    >>> records = [("a", 0, 0.9), ("a", 10, 0.95), ("b", 10, 0.5), ("a", 400, 0.99)]
    >>> alerts_at(records, 0.9, 300), alerts_at(records, 0.9, 0), alerts_at(records, 0.96, 300)
    (2, 3, 1)
    """
    if cooldown_seconds <= 0:
        return sum(1 for _, _, score in records if score >= threshold)
    quiet_until: dict[Any, int] = {}
    count = 0
    for key, ts, score in records:
        if score < threshold or ts < quiet_until.get(key, -(2**62)):
            continue
        count += 1
        quiet_until[key] = ts + cooldown_seconds
    return count


def fit_threshold(records: Sequence[tuple[Any, int, float]], floor: float, allotted: int,
                  cooldown_seconds: int) -> float:
    """The lowest threshold, not below ``floor``, at which ``records`` raise at most ``allotted``.

    Candidates are the recorded scores themselves; above the highest one, the
    next representable number (the detector then raises nothing on this history).

    Examples
    --------
    >>> records = [("a", i * 1000, s) for i, s in enumerate([0.2, 0.5, 0.7, 0.9, 0.95])]
    >>> fit_threshold(records, 0.1, 2, 0), fit_threshold(records, 0.96, 2, 0)
    (0.9, 0.96)
    >>> fit_threshold(records, 0.1, 0, 0) > 0.95
    True
    """
    if alerts_at(records, floor, cooldown_seconds) <= allotted:
        return floor
    candidates = sorted({score for _, _, score in records if score > floor})
    # alerts fall as the threshold rises (the cool-down can only make them fall slower)
    low, high = 0, len(candidates)
    while low < high:
        middle = (low + high) // 2
        if alerts_at(records, candidates[middle], cooldown_seconds) <= allotted:
            high = middle
        else:
            low = middle + 1
    if low < len(candidates):
        return candidates[low]
    top = candidates[-1] if candidates else floor
    return math.nextafter(top, math.inf)


def allot(demands: Mapping[str, int], weights: Mapping[str, float], allowed: int) -> dict[str, int]:
    """Split ``allowed`` alerts across detectors by weight, water-filling.

    A detector that raises no more than its weighted share keeps all it
    raises; what it leaves is shared among the others by weight. Shares are
    rounded down, so their sum never exceeds ``allowed``.

    Examples
    --------
    >>> allot({"a": 5, "b": 1000, "c": 1000}, {"a": 8, "b": 1, "c": 1}, 100)
    {'a': 5, 'b': 47, 'c': 47}
    >>> allot({"a": 5, "b": 10}, {"a": 1, "b": 1}, 100)
    {'a': 5, 'b': 10}
    """
    shares: dict[str, int] = {}
    left = allowed
    open_ = {name for name, demand in demands.items() if demand > 0}
    for name, demand in demands.items():
        if demand <= 0:
            shares[name] = 0
    while open_:
        total_weight = sum(weights[name] for name in open_)
        satisfied = {name for name in open_
                     if demands[name] <= left * weights[name] / total_weight}
        if not satisfied:
            for name in sorted(open_):
                shares[name] = math.floor(left * weights[name] / total_weight)
            break
        for name in sorted(satisfied):
            shares[name] = demands[name]
            left -= demands[name]
        open_ -= satisfied
    return {name: shares[name] for name in demands}


# -- the command's work -------------------------------------------------------------------------


def _digest(path: Path, budget_percent: float, config: Mapping[str, Any]) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        for chunk in iter(lambda: source.read(1 << 20), b""):
            digest.update(chunk)
    digest.update(f"|{budget_percent!r}|".encode())
    digest.update(orjson.dumps(config, option=orjson.OPT_SORT_KEYS))
    return digest.hexdigest()


def calibrate(path: Path, budget_percent: float, *, config: Mapping[str, Any] | None = None,
              settings: Settings | None = None, labels_path: Path | None = None,
              progress: Progress | None = None) -> Calibration:
    """Fit ``config`` (default: the packaged one) to ``budget_percent`` of the events in ``path``.

    Raises
    ------
    ValueError
        The budget is not in (0, 100), the configuration is invalid, or the
        history holds no event the worker accepts.
    """
    from streams.evaluation import backtest
    from streams.rules import build_rules

    if not (isinstance(budget_percent, int | float) and 0.0 < budget_percent < 100.0
            and math.isfinite(budget_percent)):
        message = f"--budget must be a percentage above 0 and below 100, not {budget_percent!r}"
        raise ValueError(message)
    base = copy.deepcopy(dict(DEFAULT_CONFIG if config is None else config))
    build_rules(base)  # invalid input fails here, before an hour-long pass
    labels, group_labels = _load_labels(labels_path)

    def run(document: Mapping[str, Any], recorder: ScoreRecorder | None,
            what: str) -> Evaluation:
        def say(line: str) -> None:
            if progress is not None:
                progress(f"{what}: {line.removeprefix('backtest: ')}")

        if progress is not None:
            progress(f"{what}: running {path.name} through the detectors ...")
        result = backtest(path, document, settings=settings, labels=labels,
                          group_labels=group_labels,
                          progress=say if progress is not None else None, sensor=recorder)
        if recorder is not None:
            recorder.flush()
        return result

    recorder = ScoreRecorder()
    before = run(base, recorder, "pass 1 (scores at the current levels)")
    scores = recorder.scores
    accepted = before.events - before.dead_letters
    if accepted <= 0:
        message = (f"{path}: no event the worker accepts ({before.events:,} lines, "
                   f"{before.dead_letters:,} dead letters); nothing to calibrate on")
        raise ValueError(message)
    allowed = math.floor(budget_percent / 100.0 * accepted)
    before_counts = {row.detector: row.alerts for row in before.detectors}
    specs: dict[str, dict[str, Any]] = base["detectors"]
    severities = {name: str(spec.get("severity", "high")) for name, spec in specs.items()}
    weights = {name: SEVERITY_WEIGHTS[severities[name]] for name in specs}
    demands = {name: before_counts.get(name, 0) for name in specs}
    shares = allot(demands, weights, allowed)

    fitted = copy.deepcopy(base)
    fits = {name: DetectorFit(
        name, severities[name], shares[name], demands[name],
        threshold_before=_float_or_none(specs[name].get("threshold")),
        budget_before=_float_or_none(specs[name].get("budget")))
        for name in specs}
    notes: list[str] = []
    rounds = 1
    after = before
    current_counts = dict(demands)
    for round_ in range(1 + ROUNDS):
        changed = False
        for name, spec in fitted["detectors"].items():
            fit = fits[name]
            if current_counts.get(name, 0) <= fit.allotted:
                continue
            changed = True
            # Later rounds aim a little lower: scores move once flagged events stop
            # being learnt, so the level that fitted last round may now be a few over.
            target = math.floor(fit.allotted * (1.0 - MARGIN) ** round_)
            _fit_one(name, spec, fit, target, scores[name], current_counts[name],
                     _cooldown(spec), notes)
        if not changed:
            break
        rounds = round_ + 1
        fitted["version"] = "calibrated-pending"
        build_rules(fitted)
        recorder = ScoreRecorder()
        after = run(fitted, recorder, f"pass {round_ + 2} (checking the fitted levels)")
        scores = recorder.scores
        current_counts = {row.detector: row.alerts for row in after.detectors}
        if sum(current_counts.values()) <= allowed:
            break
    for name, fit in fits.items():
        spec = fitted["detectors"][name]
        fit.after = current_counts.get(name, 0)
        fit.threshold_after = _float_or_none(spec.get("threshold"))
        fit.budget_after = _float_or_none(spec.get("budget"))
    _precision(fits, before, after if after is not before else None)
    fitted["version"] = f"calibrated-{_digest(path, budget_percent, base)[:12]}"
    build_rules(fitted)
    total_after = sum(current_counts.values())
    if total_after > allowed:
        notes.append(f"the fitted configuration raises {total_after:,} alerts, above the "
                     f"budget's {allowed:,}: see the detectors noted above")
    return Calibration(
        config=fitted, events=accepted, budget_percent=budget_percent, allowed_alerts=allowed,
        fits=[fits[name] for name in specs], alerts_before=sum(demands.values()),
        alerts_after=total_after, rounds=rounds, before=before, after=after, notes=notes)


def _fit_one(name: str, spec: dict[str, Any], fit: DetectorFit, target: int, scores: _Scores,
             raised: int, cooldown: int, notes: list[str]) -> None:
    """Tighten one detector's spec so that it raises at most ``target`` alerts."""
    if fit.severity == "critical":
        fit.note = "critical: never silenced, over its share"
        return
    budget = _float_or_none(spec.get("budget"))
    if budget is not None:
        # A budgeted detector alerts on a share of what it scores: lower the share.
        scored = max(scores.scored, 1)
        wanted = target / scored
        scale = target / raised if raised else 0.0
        new_budget = min(budget, wanted, budget * scale)
        if new_budget < MIN_BUDGET:
            new_budget = MIN_BUDGET
            fit.note = f"at the smallest budget ({MIN_BUDGET:g})"
        spec["budget"] = float(f"{new_budget:.6g}")
        fit.budget_after = spec["budget"]
        return
    floor = _float_or_none(spec.get("threshold")) or 0.0
    if fit.threshold_after is not None:
        floor = max(floor, fit.threshold_after)
    threshold = fit_threshold(scores.records, floor, target, cooldown)
    spec["threshold"] = threshold
    critical = _float_or_none(spec.get("critical_threshold"))
    if critical is not None and critical < threshold:
        spec["critical_threshold"] = threshold
    fit.threshold_after = threshold
    if scores.records and threshold > max(score for _, _, score in scores.records):
        fit.note = "silenced on this history"
        notes.append(f"{name}: no level lets it raise {target:,} alerts or fewer on "
                     f"this history, so it is set above its highest score "
                     f"({threshold:.4g}); lower it by hand to keep it")


def _float_or_none(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _load_labels(path: Path | None) -> tuple[Any, Any]:
    """``(labels, group labels)`` for :func:`~streams.evaluation.backtest`: a CSV or JSON Lines."""
    if path is None:
        return None, None
    from streams.evaluation import is_label_csv, load_label_csv, load_labels

    if is_label_csv(path):
        return None, load_label_csv(path)
    return load_labels(path), None


def _precision(fits: Mapping[str, DetectorFit], before: Evaluation,
               after: Evaluation | None) -> None:
    for result, attribute in ((before, "precision_before"), (after, "precision_after")):
        if result is None:
            continue
        rows: Sequence[Any] = (result.labelled.detectors if result.labelled is not None
                               else result.detectors)
        for row in rows:
            fit = fits.get(row.detector)
            if fit is not None and row.precision is not None:
                setattr(fit, attribute, row.precision)
    if after is None:
        for fit in fits.values():
            fit.precision_after = fit.precision_before


# -- command line ----------------------------------------------------------------------------


def run_calibrate(settings: Settings, args: argparse.Namespace) -> int:
    """``txwatch calibrate HISTORY --budget PCT --out CONFIG [--labels FILE] [--config FILE]``."""
    from streams.evaluation import progress_to_stderr
    from streams.rules import read_config_file

    for what, file in (("history", args.file), ("labels", args.labels), ("config", args.config)):
        if file is not None and not file.is_file():
            print(f"txwatch calibrate: no such {what} file: {file}", file=sys.stderr)
            return 2
    try:
        base = read_config_file(args.config) if args.config is not None else (
            read_config_file(settings.detector_config)
            if settings.detector_config is not None else None)
        result = calibrate(args.file, args.budget, config=base, settings=settings,
                           labels_path=args.labels, progress=progress_to_stderr)
    except (ValueError, OSError) as exc:
        print(f"txwatch calibrate: {exc}", file=sys.stderr)
        return 2
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_bytes(orjson.dumps(result.config, option=orjson.OPT_INDENT_2) + b"\n")
    except OSError as exc:
        print(f"txwatch calibrate: cannot write {args.out}: {exc.strerror or exc}",
              file=sys.stderr)
        return 2
    print(result.table())
    print(f"\nwrote {args.out} (version {result.config['version']}); apply it with "
          f"'txwatch rules publish {args.out}' or TXWATCH_DETECTOR_CONFIG={args.out}")
    return 0


def register_cli(subparsers: Any) -> None:
    """Add ``txwatch calibrate``."""
    parser = subparsers.add_parser(
        "calibrate", help="fit every detector's alert level to a budget on a history",
        description="Run HISTORY (JSON Lines events, as txwatch replay reads them) through "
                    "the worker's detectors offline, then raise each detector's threshold "
                    "(or lower its score budget) so that the whole configuration alerts on at "
                    "most --budget percent of the events, split across detectors by severity. "
                    "Writes a complete versioned configuration for 'txwatch rules publish'.")
    parser.add_argument("file", type=Path, metavar="HISTORY")
    parser.add_argument("--budget", type=float, required=True, metavar="PCT",
                        help="alerts allowed, in percent of the events (0.5 = 5 per 1,000)")
    parser.add_argument("--out", type=Path, required=True, metavar="CONFIG",
                        help="where to write the fitted configuration (JSON)")
    parser.add_argument("--labels", type=Path, default=None,
                        help="labels file, to print precision before and after")
    parser.add_argument("--config", type=Path, default=None,
                        help="configuration to start from (default: TXWATCH_DETECTOR_CONFIG, "
                             "else the packaged defaults)")
    parser.set_defaults(func=run_calibrate)
