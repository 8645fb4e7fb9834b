"""The simulator's population variants: alert budgets of the default configuration on each,
exact money, and the labels of the long-horizon laundering scenarios.

Every variant's history (:data:`EVENTS` events, seed :data:`SEED`) goes through the
worker's own code offline (:func:`streams.evaluation.backtest`) with the default
configuration. A detector whose configuration has a ``budget`` (a fraction of the events
it scores) must keep its alerts within it; one without is held to
:data:`CEILING_PER_1000`. The figures per variant and detector, and the commands that
print them, are in ``docs/detection.md`` ("Population variants").
"""

from __future__ import annotations

import copy
import itertools
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from detectors.registry import DEFAULT_CONFIG
from streams import cli
from streams.codec import parse_amount_minor
from streams.evaluation import Evaluation, backtest
from streams.populations import LONG_HORIZON_SCENARIOS, RING_SPREAD_MAX, VARIANTS, variant_events
from streams.settings import Settings
from streams.simulate import DEFAULT_INCIDENT_EVERY, generate, label_record, write_jsonl

EVENTS = 10_000
SEED = 7
DETECTORS = tuple(DEFAULT_CONFIG["detectors"])
#: Alerts per 1,000 events a detector without a configured ``budget`` may raise on any
#: variant: 0.2% of the events, the budget issue 12 gives as an example, for every detector.
CEILING_PER_1000: Mapping[str, float] = dict.fromkeys(DETECTORS, 2.0)
#: Alerts per 1,000 events of all detectors together: issue 12's target on any history.
TOTAL_CEILING_PER_1000 = 10.0
#: (variant, detector) over its ceiling with the default configuration of "defaults-6",
#: measured by this module; ``None`` as detector: the total. Expected to hold once
#: per-detector budgets and per-currency, population-learnt limits (issue 12 items 1-2)
#: are in the default configuration; the strict xfail then fails, and the pair goes.
OVER_CEILING_TODAY: frozenset[tuple[str, str | None]] = frozenset({
    # learnt limits exist only after min_population outflows of the currency: a
    # population 100x the usual trips the count and sum limits before that
    ("huge_amounts", None), ("huge_amounts", "velocity"),
    ("huge_amounts", "rapid_pass_through"), ("huge_amounts", "account_takeover"),
    # spending_burst (a fixed threshold, no budget): 2.6 and 3.1 per 1,000
    ("merchant_hubs", "spending_burst"), ("long_horizon", "spending_burst"),
    ("merchant_hubs", None), ("merchant_hubs", "velocity"),
})  # fmt: skip
XFAIL_REASON = ("over its ceiling with the default configuration (docs/detection.md, "
                "'Population variants'); strict, so the mark fails once it holds")


def allowed_per_1000(detector: str, config: Mapping[str, Any]) -> tuple[float, str]:
    """The detector's alerts per 1,000 events allowed by ``config``, and where that comes from.

    A configured ``budget`` is a fraction of the events the detector scores; the
    events it scores are at most all events, so ``budget`` per event is a bound
    that never fails a detector which keeps to its budget.
    """
    budget = config["detectors"].get(detector, {}).get("budget")
    if budget is not None:
        return 1000.0 * float(budget), f"its configured budget {budget}"
    return CEILING_PER_1000[detector], "the ceiling table of this module"


def over_budget(result: Evaluation, config: Mapping[str, Any]) -> dict[str, str]:
    """Detector -> why its alerts in ``result`` exceed what ``config`` allows."""
    over: dict[str, str] = {}
    for row in result.detectors:
        rate = 1000.0 * row.alerts / result.events
        allowed, source = allowed_per_1000(row.detector, config)
        if rate > allowed:
            over[row.detector] = (f"{row.alerts:,} alerts in {result.events:,} events: "
                                  f"{rate:.2f} per 1,000, over {allowed:.2f} ({source})")
    return over


@pytest.fixture(scope="module")
def history() -> Callable[[str], list[dict[str, Any]]]:
    """Variant name -> its :data:`EVENTS` events of seed :data:`SEED`, generated once."""
    done: dict[str, list[dict[str, Any]]] = {}

    def events(name: str) -> list[dict[str, Any]]:
        if name not in done:
            done[name] = list(variant_events(name, events=EVENTS, seed=SEED))
        return done[name]

    return events


@pytest.fixture(scope="module")
def backtests(
    history: Callable[[str], list[dict[str, Any]]], tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], Evaluation]:
    """Variant name -> its history's backtest with the default configuration, run once."""
    done: dict[str, Evaluation] = {}

    def run(name: str) -> Evaluation:
        if name not in done:
            path = tmp_path_factory.mktemp(name) / "history.jsonl"
            write_jsonl(history(name), path)
            done[name] = backtest(path, DEFAULT_CONFIG, settings=Settings(dev_mode=True))
        return done[name]

    return run


def _budget_cases() -> list[Any]:
    cases = []
    for variant, detector in itertools.product(VARIANTS, (*DETECTORS, None)):
        marks = ([pytest.mark.xfail(strict=True, reason=XFAIL_REASON)]
                 if (variant, detector) in OVER_CEILING_TODAY else [])
        cases.append(pytest.param(variant, detector, marks=marks,
                                  id=f"{variant}:{detector or 'total'}"))
    return cases


@pytest.mark.parametrize(("variant", "detector"), _budget_cases())
def test_alerts_per_1000_events_stay_within_budget(
    backtests: Callable[[str], Evaluation], variant: str, detector: str | None
) -> None:
    result = backtests(variant)
    assert result.events == EVENTS
    if detector is None:
        rate = 1000.0 * result.alerts / result.events
        assert rate <= TOTAL_CEILING_PER_1000, (
            f"{variant}: {result.alerts:,} alerts in {result.events:,} events, {rate:.2f} per "
            f"1,000: {', '.join(f'{r.detector} {r.alerts}' for r in result.detectors if r.alerts)}")
    else:
        over = over_budget(result, DEFAULT_CONFIG)
        assert detector not in over, f"{variant}: {detector}: {over[detector]}"


def test_the_budget_check_fails_a_noisy_detector_and_reads_configured_budgets(
    tmp_path: Path,
) -> None:
    # global_anomaly with a fixed threshold of 0 (no budget) alerts on every event it
    # scores after its warm-up.
    noisy = copy.deepcopy(DEFAULT_CONFIG)
    anomaly = noisy["detectors"]["global_anomaly"]
    for key in ("budget", "segment_by", "min_scored"):
        anomaly.pop(key, None)
    anomaly["threshold"] = 0.0
    path = tmp_path / "history.jsonl"
    write_jsonl(variant_events("default", events=2_500, seed=SEED), path)
    result = backtest(path, noisy, settings=Settings(dev_mode=True))
    assert "global_anomaly" in over_budget(result, noisy)
    alerting = next(row.detector for row in result.detectors
                    if row.detector != "global_anomaly" and row.alerts)
    assert alerting not in over_budget(result, noisy)
    noisy["detectors"][alerting]["budget"] = 0.0
    assert "configured budget" in over_budget(result, noisy)[alerting]
    noisy["detectors"]["global_anomaly"]["budget"] = 1.0
    assert "global_anomaly" not in over_budget(result, noisy)


# -- the variants --------------------------------------------------------------------------


def test_the_default_variant_is_the_default_population() -> None:
    events = list(variant_events("default", events=3_000, seed=5,
                                 incident_every=DEFAULT_INCIDENT_EVERY))
    assert events == list(generate(5, events=3_000))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_variant_is_deterministic_for_a_seed(variant: str) -> None:
    first = list(variant_events(variant, events=1_500, seed=3))
    assert first == list(variant_events(variant, events=1_500, seed=3))
    assert first != list(variant_events(variant, events=1_500, seed=4))


@pytest.mark.parametrize("variant", ["tiny_amounts", "huge_amounts", "usd", "eur", "jpy"])
def test_scaled_and_converted_amounts_are_exact(variant: str) -> None:
    spec = VARIANTS[variant]
    unit = Decimal(1).scaleb(-spec.decimals)
    default = list(variant_events("default", events=4_000, seed=SEED))
    converted = list(variant_events(variant, events=4_000, seed=SEED))
    checked = 0
    for before, after in zip(default, converted, strict=True):
        assert before.keys() == after.keys()
        assert {k: v for k, v in after.items() if k not in ("amount", "outstanding", "currency")} \
            == {k: v for k, v in before.items() if k not in ("amount", "outstanding", "currency")}
        for name in ("amount", "outstanding"):
            if name not in before:
                continue
            assert isinstance(after[name], str)
            parse_amount_minor(after[name])  # the wire accepts it
            exact = (Decimal(before[name]) * spec.amount_factor).quantize(unit, ROUND_HALF_EVEN)
            if Decimal(before[name]) > 0:
                exact = max(exact, unit)
            assert Decimal(after[name]) == exact, (before, after)
            assert after[name] == f"{exact:f}"
            checked += 1
        if "currency" in before:
            assert after["currency"] == spec.currency
    assert checked > 2_000
    if spec.decimals == 0:
        assert not any("." in e["amount"] for e in converted if "amount" in e)


def _senders_by_receiver(events: list[dict[str, Any]]) -> Counter[str]:
    senders: dict[str, set[str]] = defaultdict(set)
    for event in events:
        if event["event_type"] == "transfer":
            senders[event["counterparty_id"]].add(event["account_id"])
    return Counter({receiver: len(accounts) for receiver, accounts in senders.items()})


def test_merchant_hubs_receive_from_very_many_accounts(
    history: Callable[[str], list[dict[str, Any]]],
) -> None:
    hubs = variant_events("merchant_hubs", events=0, seed=SEED)
    events = history("merchant_hubs")
    hub_ids = {hub.account_id for hub in hubs.hub_accounts}
    distinct = _senders_by_receiver(events)
    ordinary = _senders_by_receiver(history("default"))
    # The busiest receiver of the default population is a scam's collection account
    # (fan_in: 20 to 28 senders); every hub has several times as many.
    busiest_ordinary = ordinary.most_common(1)[0][1]
    assert len(hub_ids) == VARIANTS["merchant_hubs"].hubs
    assert min(distinct[hub] for hub in hub_ids) >= 3 * busiest_ordinary
    merchants = Counter(e["merchant_id"] for e in events if e["event_type"] == "payment")
    payments = sum(merchants.values())
    assert sum(merchants[m.merchant_id] for m in hubs.hub_merchants) >= 0.35 * payments


def _events_per_account_month(events: list[dict[str, Any]]) -> float:
    """Median events per account and 30 days, over the first 90% of the history.

    The rest may hold the follow-ups scenarios plan far ahead (loans falling due).
    """
    head = events[: len(events) * 9 // 10]
    months = (_moment(head[-1]) - _moment(head[0])) / timedelta(days=30)
    per_account = Counter(e["account_id"] for e in head)
    return sorted(per_account.values())[len(per_account) // 2] / months


def test_quiet_accounts_act_a_few_times_a_month(
    history: Callable[[str], list[dict[str, Any]]],
) -> None:
    quiet = _events_per_account_month(history("quiet_accounts"))
    busy = _events_per_account_month(history("default"))
    assert 1.0 <= quiet <= 8.0 < 100.0 <= busy


def test_simulate_writes_a_variant_to_a_file(tmp_path: Path) -> None:
    out, labels = tmp_path / "jpy.jsonl", tmp_path / "labels.jsonl"
    assert cli.main(["simulate", "--variant", "jpy", "--events", "3000", "--seed", "2",
                     "--out", str(out), "--labels", str(labels)]) == 0
    events = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert events == list(variant_events("jpy", events=3_000, seed=2))
    assert {e["currency"] for e in events if "currency" in e} == {"JPY"}
    assert labels.read_bytes()
    with pytest.raises(SystemExit) as exited:
        cli.main(["simulate", "--variant", "no_such_population", "--events", "10",
                  "--out", str(out)])
    assert exited.value.code == 2


# -- long-horizon laundering ---------------------------------------------------------------


@pytest.fixture(scope="module")
def long_horizon(
    history: Callable[[str], list[dict[str, Any]]],
) -> tuple[list[dict[str, Any]], Counter[str]]:
    """The long-horizon variant's events and the incidents it started per scenario."""
    traffic = variant_events("long_horizon", events=EVENTS, seed=SEED)
    events = list(traffic)
    assert events == history("long_horizon")
    return events, traffic.incidents


def _incidents(events: list[dict[str, Any]], scenario: str) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in events:
        if event.get("label") == scenario:
            grouped[event["incident"]].append(event)
    return grouped


def minor(amount: str) -> int:
    return parse_amount_minor(amount)


def _moment(event: Mapping[str, Any]) -> datetime:
    return datetime.fromisoformat(event["occurred_at"])


def _span(events: list[dict[str, Any]]) -> timedelta:
    moments = [_moment(e) for e in events]
    return max(moments) - min(moments)


def test_every_long_horizon_incident_is_labelled_in_full(long_horizon: Any) -> None:
    events, started = long_horizon
    assert set(started) == set(LONG_HORIZON_SCENARIOS)
    assert min(started.values()) >= 3
    labelled = [e for e in events if "label" in e]
    assert {e["label"] for e in labelled} == set(LONG_HORIZON_SCENARIOS)
    assert all(e["event_type"] == "transfer" and e.get("incident") for e in labelled)
    ids = [e["event_id"] for e in events]
    assert len(set(ids)) == len(ids)
    for scenario, count in started.items():
        incidents = _incidents(events, scenario)
        assert len(incidents) == count, scenario
        assert all(incident.startswith(f"{scenario}-{SEED}-") for incident in incidents)
    for event in labelled:
        record = label_record(event)
        assert record is not None
        assert record["expected_detector"] == LONG_HORIZON_SCENARIOS[event["label"]] \
            .expected_detector
        assert record["incident"] == event["incident"]


def test_long_rings_close_over_weeks_with_hop_amounts_varying_up_to_8x(
    long_horizon: Any,
) -> None:
    events, _ = long_horizon
    rings = _incidents(events, "long_ring")
    out_of_order = 0
    for incident, ring in rings.items():
        hops: dict[tuple[str, str], int] = Counter()
        for event in ring:
            hops[event["account_id"], event["counterparty_id"]] += minor(event["amount"])
        successor = dict(hops)
        next_of = {sender: receiver for sender, receiver in successor}
        assert len(next_of) == len(successor), f"{incident}: a member pays two others"
        members = set(next_of)
        assert set(next_of.values()) == members, f"{incident}: the ring does not close"
        assert 3 <= len(members) <= 10
        walk, member = [], next(iter(members))
        for _ in members:
            walk.append(member)
            member = next_of[member]
        assert member == walk[0] and len(set(walk)) == len(members), incident
        amounts = list(hops.values())
        assert 2.0 * 0.98 <= max(amounts) / min(amounts) <= RING_SPREAD_MAX * 1.02, incident
        assert _span(ring) <= timedelta(weeks=4)
        first_hop_times = [min(_moment(e) for e in ring if e["account_id"] == m) for m in walk]
        rotations = [first_hop_times[k:] + first_hop_times[:k] for k in range(len(walk))]
        out_of_order += all(times != sorted(times) for times in rotations)
    assert len(rings) >= 3
    assert out_of_order >= 1


@pytest.mark.parametrize(("scenario", "sides"), [("slow_fan_in", "in"), ("slow_fan_out", "out")])
def test_slow_fan_in_and_fan_out_are_about_6_transfers_days_apart(
    long_horizon: Any, scenario: str, sides: str
) -> None:
    events, _ = long_horizon
    for incident, group in _incidents(events, scenario).items():
        centre = {e["counterparty_id" if sides == "in" else "account_id"] for e in group}
        others = [e["account_id" if sides == "in" else "counterparty_id"] for e in group]
        assert len(centre) == 1, incident
        assert 5 <= len(group) == len(set(others)) <= 8, incident
        moments = sorted(_moment(e) for e in group)
        gaps = [b - a for a, b in itertools.pairwise(moments)]
        assert min(gaps) >= timedelta(days=1) - timedelta(seconds=1), incident
        assert _span(group) <= timedelta(days=90), incident


def test_slow_scatter_gather_and_gather_scatter_take_weeks(long_horizon: Any) -> None:
    events, _ = long_horizon
    for incident, group in _incidents(events, "slow_scatter_gather").items():
        senders = Counter(e["account_id"] for e in group)
        receivers = Counter(e["counterparty_id"] for e in group)
        (origin, scattered), = [(a, n) for a, n in senders.items() if a not in receivers]
        (_collector, gathered), = [(a, n) for a, n in receivers.items() if a not in senders]
        vias = set(senders) - {origin}
        assert 3 <= len(vias) == scattered == gathered <= 6, incident
        assert all(receivers[via] == 1 and senders[via] == 1 for via in vias), incident
        for via in vias:
            paid_in = next(e for e in group if e["counterparty_id"] == via)
            paid_on = next(e for e in group if e["account_id"] == via)
            assert _moment(paid_on) - _moment(paid_in) >= timedelta(days=1) - timedelta(seconds=1)
            assert minor(paid_on["amount"]) <= minor(paid_in["amount"])
        assert _span(group) <= timedelta(days=90), incident
    for incident, group in _incidents(events, "slow_gather_scatter").items():
        receivers = Counter(e["counterparty_id"] for e in group)
        senders = Counter(e["account_id"] for e in group)
        (hub,) = set(receivers) & set(senders)
        inflows = [e for e in group if e["counterparty_id"] == hub]
        outflows = [e for e in group if e["account_id"] == hub]
        assert 3 <= len(inflows) <= 6 and 3 <= len(outflows) <= 6, incident
        assert max(map(_moment, inflows)) < min(map(_moment, outflows)), incident
        assert sum(minor(e["amount"]) for e in outflows) <= sum(
            minor(e["amount"]) for e in inflows)
        assert _span(group) <= timedelta(days=90), incident
        assert _span(group) >= timedelta(days=5), incident


def test_long_horizon_background_spans_months(long_horizon: Any) -> None:
    events, _ = long_horizon
    background = [e for e in events if "label" not in e]
    assert _span(background) >= timedelta(days=60)
    assert len(events) == EVENTS
