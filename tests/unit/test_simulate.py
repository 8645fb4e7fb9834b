"""The simulator: seeded realistic traffic, labelled scenarios, routing and pacing.

No broker here: :func:`streams.simulate.generate` is pure, and ``simulate`` /
``replay`` run against an in-memory producer; the derived-stage scenarios go
through the offline backtest (:func:`streams.evaluation.backtest`). The Kafka
round trip is in ``tests/integration/test_simulate_kafka.py``.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import itertools
import re
import statistics
from collections import Counter, defaultdict
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson
import pytest

from detectors.flow import DEFAULT_FLOW_PARAMS
from detectors.registry import DEFAULT_CONFIG, STAGE_DETECTORS, build_alerters
from streams import simulate as sim
from streams.events import EVENT_TYPES, LENDING_TYPES, Event
from streams.rules import demo_config
from streams.settings import Settings

SETTINGS = Settings(payments_topic="t.payments", lending_topic="t.lending")
#: Scenarios of the detectors that run on an account's own events, and of those that run
#: in the derived stages (flow, identity, project).
DERIVED_SCENARIOS = [
    name for name, scenario in sim.SCENARIOS.items()
    if scenario.expected_detector in STAGE_DETECTORS
]  # fmt: skip
ACCOUNT_SCENARIOS = [name for name in sim.SCENARIOS if name not in DERIVED_SCENARIOS]

#: What the simulator promises beyond the contract: always two decimals.
AMOUNT = re.compile(r"^(0|[1-9][0-9]{0,14})\.[0-9]{2}$")
OCCURRED_AT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
WITH_AMOUNT = EVENT_TYPES - {"loan_status", "account_opened", "login", "credential_change"}
REQUIRED_EXTRA = {
    "transfer": {"counterparty_id"},
    "loan_application": {"loan_id"},
    "loan_disbursement": {"loan_id"},
    "loan_repayment": {"loan_id"},
    "loan_status": {"loan_id", "status"},
    "pledge": {"project_id"},
    "pledge_refund": {"project_id"},
    "project_payout": {"project_id"},
    "credential_change": {"kind"},
}
CREDENTIAL_KINDS = {"password", "phone", "email", "device"}
SHORT_STRINGS = (
    "event_id", "account_id", "counterparty_id", "merchant_id", "loan_id", "project_id",
    "device_id", "channel", "region", "industry", "ip", "phone", "national_id", "age_band",
)  # fmt: skip


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def contract_problems(event: dict[str, Any]) -> list[str]:
    """Event contract v1 (docs/design.md) checked field by field, without the codec."""
    problems = []
    kind = event.get("event_type")
    if kind not in EVENT_TYPES:
        return [f"unknown event_type {kind!r}"]
    for name in ("event_id", "event_type", "occurred_at", "account_id"):
        if not isinstance(event.get(name), str) or not event[name]:
            problems.append(f"{name} missing")
    if not OCCURRED_AT.match(event.get("occurred_at", "")):
        problems.append(f"occurred_at {event.get('occurred_at')!r}")
    for name in SHORT_STRINGS:
        if name in event and not (isinstance(event[name], str) and 0 < len(event[name]) <= 128):
            problems.append(f"{name} {event[name]!r}")
    if kind in WITH_AMOUNT:
        if not AMOUNT.match(str(event.get("amount"))) or not isinstance(event.get("amount"), str):
            problems.append(f"amount {event.get('amount')!r}")
        if event.get("currency") != "CNY":
            problems.append(f"currency {event.get('currency')!r}")
    elif "amount" in event:
        problems.append(f"{kind} carries an amount")
    missing = REQUIRED_EXTRA.get(kind, set()) - event.keys()
    if missing:
        problems.append(f"missing {sorted(missing)}")
    if kind == "loan_status":
        if event["status"] not in {"current", "delinquent", "repaid", "written_off"}:
            problems.append(f"status {event['status']!r}")
        dpd = event.get("days_past_due", 0)
        if type(dpd) is not int or dpd < 0:
            problems.append(f"days_past_due {dpd!r}")
        if "outstanding" in event and (
            not AMOUNT.match(event["outstanding"]) or "currency" not in event
        ):
            problems.append(f"outstanding {event['outstanding']!r}")
    if kind == "loan_disbursement" and "due_date" in event:
        date.fromisoformat(event["due_date"])
    if "term_months" in event and not (
        type(event["term_months"]) is int and 1 <= event["term_months"] <= 600
    ):
        problems.append(f"term_months {event['term_months']!r}")
    if kind == "credential_change" and event["kind"] not in CREDENTIAL_KINDS:
        problems.append(f"kind {event['kind']!r}")
    return problems


@pytest.fixture(scope="module")
def sample() -> list[dict[str, Any]]:
    """Two and a half simulated days of 800 accounts with the per-account scenarios.

    The derived-stage scenarios have a sample of their own: with them too, 800
    accounts run out of victims no incident has used, and incidents would share
    accounts.
    """
    return list(
        sim.generate(11, accounts=800, events=40_000, incident_every=1_500,
                     scenarios=ACCOUNT_SCENARIOS)
    )  # fmt: skip


@pytest.fixture(scope="module")
def derived_sample() -> list[dict[str, Any]]:
    """A day and a half of 1,500 accounts with the derived-stage scenarios, 20 rounds."""
    return list(
        sim.generate(12, accounts=1_500, events=20_000, incident_every=1_000,
                     scenarios=DERIVED_SCENARIOS)
    )  # fmt: skip


def labelled(events: list[dict[str, Any]], scenario: str) -> dict[str, list[dict[str, Any]]]:
    by_account: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in events:
        if event.get("label") == scenario:
            by_account[event["account_id"]].append(event)
    return by_account


# -- the generator ----------------------------------------------------------------------


def test_a_seed_gives_the_same_events_and_another_seed_others():
    first = list(sim.generate(3, accounts=300, events=3_000))
    again = list(sim.generate(3, accounts=300, events=3_000))
    other = list(sim.generate(4, accounts=300, events=3_000))
    assert orjson.dumps(first) == orjson.dumps(again)
    assert [e["account_id"] for e in first] != [e["account_id"] for e in other]


def test_events_have_unique_ids_and_run_forward_in_event_time(sample):
    assert len({e["event_id"] for e in sample}) == len(sample)
    times = [parse_time(e["occurred_at"]) for e in sample]
    assert times == sorted(times)
    assert times[0] >= sim.DEFAULT_START
    # ~14 events per account per day: 40,000 events of 800 accounts span days. Incidents
    # that run for days (a balance outstaying its dwell time, a loan its due date) are
    # completed after the budget at their own event times: the last 1% is their tail.
    assert timedelta(days=2) < times[int(0.99 * len(times))] - times[0] < timedelta(days=6)


def test_start_time_is_configurable_and_must_be_aware():
    start = datetime(2025, 6, 1, 12, tzinfo=UTC)
    events = list(sim.generate(1, accounts=50, start=start, events=10))
    assert all(parse_time(e["occurred_at"]) >= start for e in events)
    assert events[0]["occurred_at"].startswith("2025-06-01T12:")
    with pytest.raises(ValueError, match="timezone-aware"):
        sim.generate(1, start=datetime(2025, 6, 1))  # noqa: DTZ001 - the naive time is the point


def test_daily_rhythm_busy_evening_hours_outnumber_the_night():
    start = sim.DEFAULT_START
    end = start + timedelta(days=3)
    events = itertools.takewhile(
        lambda e: parse_time(e["occurred_at"]) < end,
        sim.generate(5, accounts=500, scenarios=()),
    )
    by_hour = Counter(parse_time(e["occurred_at"]).hour for e in events)
    # 20:00-22:00 in Shanghai is 12:00-14:00 UTC; 03:00-05:00 there is 19:00-21:00 UTC.
    busy = by_hour[12] + by_hour[13]
    night = by_hour[19] + by_hour[20]
    assert busy > 5 * night > 0
    assert max(by_hour, key=by_hour.__getitem__) in {11, 12, 13}


def test_the_population_does_everything_the_contract_knows(sample):
    kinds = Counter(e["event_type"] for e in sample)
    assert set(kinds) == EVENT_TYPES
    assert kinds["payment"] > 0.4 * len(sample)
    statuses = {e["status"] for e in sample if e["event_type"] == "loan_status"}
    assert {"current", "delinquent"} <= statuses
    assert any(e.get("days_past_due", 0) > 30 for e in sample if e["event_type"] == "loan_status")
    assert all("due_date" in e for e in sample if e["event_type"] == "loan_disbursement")
    assert all("device_id" in e and "ip" in e for e in sample if e["event_type"] == "login")


def test_every_event_follows_the_contract(sample, derived_sample):
    problems = {
        e["event_id"]: p for e in sample + derived_sample if (p := contract_problems(e))
    }
    assert not problems


def test_every_event_decodes_without_a_dead_letter(sample, derived_sample):
    if importlib.util.find_spec("streams.codec") is None:
        pytest.skip("streams/codec.py is not in this checkout yet: the decoder cannot be run")
    codec = importlib.import_module("streams.codec")
    decoder = codec.Decoder(pii_key=b"k", max_message_bytes=65536)
    dead = []
    for event in sample + derived_sample:
        decoded = decoder.decode(sim.encode(event), "t.payments", 0, 0)
        if not isinstance(decoded, Event):
            dead.append((event["event_id"], decoded.reason, decoded.detail))
        elif decoded.amount_minor is not None:
            assert sim.minor_units(event["amount"]) == decoded.amount_minor
    assert not dead[:5]


def test_amounts_are_log_normal_per_account_not_one_global_distribution(sample):
    payments: dict[str, list[int]] = defaultdict(list)
    for event in sample:
        if event["event_type"] == "payment" and "label" not in event:
            payments[event["account_id"]].append(sim.minor_units(event["amount"]))
    medians = sorted(statistics.median(v) for v in payments.values() if len(v) >= 10)
    # Students and small businesses: account medians an order of magnitude apart.
    assert medians[-len(medians) // 10] > 10 * medians[len(medians) // 10]


def test_velocity_burst_is_fifteen_payments_in_forty_seconds_to_distinct_merchants(sample):
    bursts = labelled(sample, "velocity_burst")
    assert len(bursts) >= 20
    for account, events in bursts.items():
        times = [parse_time(e["occurred_at"]) for e in events]
        assert len(events) >= 15, account
        assert max(times) - min(times) <= timedelta(seconds=40), account
        assert {e["event_type"] for e in events} == {"payment"}
        assert len({e["counterparty_id"] for e in events}) == len(events), account


def test_amount_spike_is_thirty_times_the_accounts_median_after_twenty_payments(sample):
    spikes = labelled(sample, "amount_spike")
    assert len(spikes) >= 20
    for account, (spike,) in spikes.items():
        others = [
            e for e in sample
            if e["account_id"] == account and e["event_type"] == "payment" and "label" not in e
        ]  # fmt: skip
        before = [e for e in others if e["occurred_at"] < spike["occurred_at"]]
        assert len(before) >= 20, account
        median = statistics.median(sim.minor_units(e["amount"]) for e in others)
        assert sim.minor_units(spike["amount"]) >= 30 * median, account


def test_spike_victims_come_from_history_once_accounts_have_some(sample):
    # Early spikes bring their own 20+ ordinary payments; later ones find an account
    # that made them on its own: its first payments are not right before the spike.
    spikes = labelled(sample, "amount_spike")
    spread = []
    for account, (spike,) in spikes.items():
        history = [
            parse_time(e["occurred_at"]) for e in sample
            if e["account_id"] == account and e["event_type"] == "payment" and "label" not in e
        ]  # fmt: skip
        spread.append(parse_time(spike["occurred_at"]) - min(history))
    assert min(spread) < timedelta(hours=5) < timedelta(hours=12) < max(spread)


# -- the scenarios of the per-account detectors -----------------------------------------


def shipped(detector: str) -> dict[str, Any]:
    params: dict[str, Any] = DEFAULT_CONFIG["detectors"][detector]["params"]
    return params


def of_account(events: list[dict[str, Any]], account: str) -> list[dict[str, Any]]:
    return [e for e in events if e["account_id"] == account]


def minor(event: dict[str, Any]) -> int:
    return sim.minor_units(event["amount"])


def test_structuring_is_top_ups_just_under_the_threshold_within_a_window(sample):
    params = shipped("structuring")
    threshold, window, min_count = (
        params["currency_limits"]["CNY"]["threshold"], params["window_seconds"], params["min_count"]
    )  # fmt: skip
    incidents = labelled(sample, "structuring")
    assert len(incidents) >= 20
    for account, flagged in incidents.items():
        placed = [
            e for e in of_account(sample, account)
            if e["event_type"] == "top_up"
            and params["band_fraction"] * threshold <= minor(e) < threshold
        ]  # fmt: skip
        assert min_count <= len(placed) <= min_count + 2, account
        assert flagged == placed[min_count - 1 :], account
        span = parse_time(placed[-1]["occurred_at"]) - parse_time(placed[0]["occurred_at"])
        assert span <= timedelta(seconds=window), account


def test_rapid_pass_through_sends_on_most_of_a_top_up_within_the_window(sample):
    window = timedelta(seconds=shipped("rapid_pass_through")["window_seconds"])
    share = DEFAULT_CONFIG["detectors"]["rapid_pass_through"]["threshold"]
    incidents = labelled(sample, "rapid_pass_through")
    assert len(incidents) >= 20
    for account, flagged in incidents.items():
        events = of_account(sample, account)
        top_up = max((e for e in events if e["event_type"] == "top_up"), key=minor)
        start = parse_time(top_up["occurred_at"])
        out = [
            e for e in events
            if e["event_type"] in ("transfer", "withdrawal")
            and start < parse_time(e["occurred_at"]) <= start + window
        ]  # fmt: skip
        sent = list(itertools.accumulate(minor(e) for e in out))
        assert flagged == [e for e, total in zip(out, sent, strict=True)
                           if total >= share * minor(top_up)], account  # fmt: skip
        assert 0.85 * minor(top_up) <= sent[-1] < minor(top_up), account


def test_fan_out_pays_many_new_accounts_within_hours(sample):
    min_distinct = shipped("fan_out")["min_distinct"]
    incidents = labelled(sample, "fan_out")
    assert len(incidents) >= 20
    for account, flagged in incidents.items():
        transfers = [e for e in of_account(sample, account) if e["event_type"] == "transfer"]
        first = transfers.index(flagged[0])
        burst = transfers[first - min_distinct + 1 : first + len(flagged)]
        assert len({e["counterparty_id"] for e in burst}) == len(burst) >= min_distinct + 2
        times = [parse_time(e["occurred_at"]) for e in burst]
        assert times[-1] - times[0] <= timedelta(hours=4), account


def test_precipitated_funds_leave_a_large_balance_past_the_dwell_time(sample):
    params = shipped("precipitated_funds")
    dwell = timedelta(seconds=params["max_dwell_seconds"])
    incidents = labelled(sample, "precipitated_funds")
    assert len(incidents) >= 20
    for account, (seen,) in incidents.items():
        assert seen["event_type"] == "login"
        at = parse_time(seen["occurred_at"])
        top_ups = [
            e for e in of_account(sample, account)
            if e["event_type"] == "top_up"
            and minor(e) >= 1.6 * params["currency_limits"]["CNY"]["balance_limit"]
        ]  # fmt: skip
        assert len(top_ups) == 1, account
        held = at - parse_time(top_ups[0]["occurred_at"])
        assert dwell <= held <= dwell + timedelta(seconds=30), account


def test_account_takeover_empties_an_account_after_a_new_device_and_a_phone_change(sample):
    incidents = labelled(sample, "account_takeover")
    assert len(incidents) >= 20
    for account, flagged in incidents.items():
        events = of_account(sample, account)
        device = flagged[0]["device_id"]
        first_use = next(e for e in events if e.get("device_id") == device)
        assert first_use["event_type"] == "login", account
        change = next(e for e in events if e["event_type"] == "credential_change"
                      and e.get("device_id") == device)  # fmt: skip
        assert change["kind"] == "phone"
        for event in flagged:
            assert event["event_type"] in ("withdrawal", "transfer")
            assert minor(event) >= 150_000
            after = parse_time(event["occurred_at"]) - parse_time(change["occurred_at"])
            assert timedelta(0) < after <= timedelta(minutes=30), account


def test_the_demo_blacklist_is_the_simulated_listed_people_under_the_development_key():
    codec = importlib.import_module("streams.codec")
    key = Settings(dev_mode=True).hashing_key()
    hashes = [
        codec.hash_pii(key, value) for person in sim.dishonest_persons() for value in person
    ]
    assert demo_config()["detectors"]["blacklist"]["params"]["hashes"] == hashes
    assert shipped("blacklist")["hashes"] == []  # the packaged defaults list nobody
    # The clear identities are generated, never written down: no id or phone in the code.
    assert len(sim.dishonest_persons()) == sim.DISHONEST_PERSONS
    assert all(len(national_id) == 18 for national_id, _ in sim.dishonest_persons())


def test_blacklisted_identity_applies_for_a_loan_and_nobody_else_is_listed(sample):
    listed = {value for person in sim.dishonest_persons() for value in person}
    incidents = labelled(sample, "blacklisted_identity")
    assert len(incidents) >= 20
    for event in sample:
        carries = {event.get("national_id"), event.get("phone")} & listed
        assert bool(carries) == (event.get("label") == "blacklisted_identity"), event["event_id"]
        if carries:
            assert event["event_type"] == "loan_application"
            assert {event["national_id"], event["phone"]} <= listed


def test_borrow_and_vanish_cashes_out_a_loan_and_is_past_due_without_repaying(sample):
    incidents = labelled(sample, "borrow_and_vanish")
    assert len(incidents) >= 20
    for account, (status,) in incidents.items():
        assert status["event_type"] == "loan_status" and status["days_past_due"] == 1
        events = of_account(sample, account)
        loan = [e for e in events if e.get("loan_id") == status["loan_id"]]
        (disbursement,) = [e for e in loan if e["event_type"] == "loan_disbursement"]
        assert not [e for e in loan if e["event_type"] == "loan_repayment"]
        due_end = datetime.combine(
            date.fromisoformat(disbursement["due_date"]) + timedelta(days=1),
            datetime.min.time(), UTC,
        )  # fmt: skip
        assert due_end <= parse_time(status["occurred_at"]) <= due_end + timedelta(minutes=5)
        disbursed = parse_time(disbursement["occurred_at"])
        cash_outs = [
            e for e in events
            if e["event_type"] in ("withdrawal", "transfer")
            and disbursed + timedelta(hours=1) <= parse_time(e["occurred_at"])
            <= disbursed + timedelta(hours=12)
        ]  # fmt: skip
        assert sum(map(minor, cash_outs)) >= 0.85 * minor(disbursement), account


def test_the_expected_detector_flags_each_scenario_through_the_worker_features(sample):
    """Decoded with the development key and featurised as the worker does, then scored by
    the demo configuration's detectors: each scenario's labelled events are flagged by its
    detector."""
    codec = importlib.import_module("streams.codec")
    features = importlib.import_module("streams.features")
    state_module = importlib.import_module("streams.state")
    decoder = codec.Decoder(pii_key=Settings(dev_mode=True).hashing_key(),
                            max_message_bytes=65536)
    alerters = {alerter.name: alerter for alerter in build_alerters(demo_config())}
    accounts: dict[str, Any] = {}
    states: dict[tuple[str, str], Any] = {}
    caught: Counter[str] = Counter()
    total: Counter[str] = Counter()
    for raw in sample:
        event = decoder.decode(sim.encode(raw), "t.payments", 0, 0)
        assert isinstance(event, Event)
        account = accounts.setdefault(event.account_id, state_module.AccountState())
        x = features.observe(event, account)
        scenario = raw.get("label")
        expected = sim.SCENARIOS[scenario].expected_detector if scenario else None
        for name, alerter in alerters.items():
            if name in ("velocity", "amount_outlier", "global_anomaly"):
                continue  # their own tests cover them
            if name in STAGE_DETECTORS:
                continue  # they read a derived stage's features: see the backtests below
            key = (name, event.account_id)
            finding, states[key] = alerter.process_one(x, states.get(key))
            if name == expected:
                total[scenario] += 1
                caught[scenario] += finding is not None
    per_account = set(ACCOUNT_SCENARIOS) - {"velocity_burst", "amount_spike"}
    assert set(total) == per_account
    for scenario in per_account:
        assert caught[scenario] >= 0.9 * total[scenario], (scenario, caught, total)


def test_labels_name_the_expected_detector_and_match_the_events(tmp_path, sample):
    events_path, labels_path = tmp_path / "events.jsonl", tmp_path / "labels.jsonl"
    assert sim.write_jsonl(sample, events_path, labels_path=labels_path) == len(sample)
    written = [orjson.loads(line) for line in events_path.read_bytes().splitlines()]
    assert written == sample
    labels = [orjson.loads(line) for line in labels_path.read_bytes().splitlines()]
    expected = [
        {
            "event_id": e["event_id"],
            "account_id": e["account_id"],
            "scenario": e["label"],
            "expected_detector": sim.SCENARIOS[e["label"]].expected_detector,
            "occurred_at": e["occurred_at"],
        }
        for e in written
        if "label" in e
    ]
    assert labels == expected
    assert {label["scenario"] for label in labels} == set(ACCOUNT_SCENARIOS)
    # spending_burst has no simulator scenario yet: it is measured on third-party
    # histories (docs/detection.md)
    unsimulated = {"global_anomaly", "spending_burst"}
    assert {label["expected_detector"] for label in labels} == set(
        DEFAULT_CONFIG["detectors"]) - unsimulated - set(STAGE_DETECTORS)
    # every detector but the unsupervised global model has a scenario
    assert {s.expected_detector for s in sim.SCENARIOS.values()} == set(
        DEFAULT_CONFIG["detectors"]) - unsimulated


# -- the scenarios of the derived-stage detectors ----------------------------------------


def shipped_detector(name: str) -> Any:
    """The detector as the packaged configuration builds it (parameters as attributes)."""
    (alerter,) = [a for a in build_alerters(DEFAULT_CONFIG) if a.name == name]
    return alerter.detector


def by_incident(events: list[dict[str, Any]], scenario: str) -> dict[str, list[dict[str, Any]]]:
    """A scenario's labelled events by incident: its incident id, else its account."""
    found: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in events:
        if event.get("label") == scenario:
            found[event.get("incident", event["account_id"])].append(event)
    return found


def at(event: dict[str, Any]) -> datetime:
    return parse_time(event["occurred_at"])


def transfers_into(events: list[dict[str, Any]], account: str) -> list[dict[str, Any]]:
    return [
        e for e in events
        if e["event_type"] == "transfer" and e.get("counterparty_id") == account
    ]  # fmt: skip


def opened_at(events: list[dict[str, Any]]) -> dict[str, datetime]:
    return {e["account_id"]: at(e) for e in events if e["event_type"] == "account_opened"}


def test_spanning_scenarios_label_one_incident_across_accounts(derived_sample):
    for name in DERIVED_SCENARIOS:
        spans = sim.SCENARIOS[name].spans_accounts
        incidents = by_incident(derived_sample, name)
        assert len(incidents) >= 15, name
        for key, events in incidents.items():
            ids = {e.get("incident") for e in events}
            assert ids == ({key} if spans else {None}), name
            assert all(sim.label_record(e).get("incident") == e.get("incident") for e in events)
        if spans:
            assert max(len({e["account_id"] for e in v}) for v in incidents.values()) > 1, name


def in_ring_order(ring: list[dict[str, Any]]) -> bool:
    """Whether each transfer, in event time, is made by the receiver of the one before."""
    return all(a["counterparty_id"] == b["account_id"] for a, b in itertools.pairwise(ring))


def test_laundering_ring_sends_money_round_a_ring_back_to_where_it_started(derived_sample):
    cycle = shipped_detector("cycle")
    lengths, out_of_order = set(), 0
    for ring in by_incident(derived_sample, "laundering_ring").values():
        assert {e["event_type"] for e in ring} == {"transfer"}
        step = {e["account_id"]: e["counterparty_id"] for e in ring}
        assert len(step) == len(ring) and set(step.values()) == set(step)  # one hop each
        member, walked = ring[0]["account_id"], 0
        while True:  # one ring through every member, not several small ones
            member, walked = step[member], walked + 1
            if member == ring[0]["account_id"]:
                break
        assert walked == len(ring)
        assert cycle.min_ring <= len(ring) <= min(cycle.max_ring, DEFAULT_FLOW_PARAMS.max_ring)
        assert at(ring[-1]) - at(ring[0]) <= timedelta(seconds=cycle.max_span_seconds)
        amounts = [minor(e) for e in ring]
        assert 300_000 * 0.95**7 <= min(amounts) <= max(amounts) <= 1_500_000
        lengths.add(len(ring))
        out_of_order += not in_ring_order(ring)
    assert {3, 8} <= lengths
    assert 0 < out_of_order < len(by_incident(derived_sample, "laundering_ring"))


def test_scatter_gather_splits_one_accounts_money_and_recombines_it(derived_sample):
    min_vias = shipped_detector("scatter_gather").min_vias
    for gathered in by_incident(derived_sample, "scatter_gather").values():
        (collector,) = {e["counterparty_id"] for e in gathered}
        first = at(gathered[0])
        # the intermediaries: who paid the collector within a day of the labelled transfers,
        # having been paid by one origin shortly before
        origins: Counter[str] = Counter()
        for via in {e["account_id"] for e in transfers_into(derived_sample, collector)}:
            paid = {
                e["account_id"] for e in transfers_into(derived_sample, via)
                if first - timedelta(days=1) <= at(e) <= first
            }  # fmt: skip
            origins.update(paid)
        origin, vias = origins.most_common(1)[0]
        assert min_vias <= vias <= min(min_vias + 3, 8)
        scattered = {
            e["counterparty_id"] for e in of_account(derived_sample, origin)
            if e["event_type"] == "transfer"
        }  # fmt: skip
        recombined = [
            e for e in transfers_into(derived_sample, collector) if e["account_id"] in scattered
        ]  # fmt: skip
        assert len(recombined) == vias
        assert gathered == recombined[min_vias - 1 :]
        assert at(recombined[-1]) - at(recombined[0]) <= timedelta(days=1)


def test_gather_scatter_hub_collects_from_many_then_pays_many(derived_sample):
    hub_limits = shipped_detector("gather_scatter")
    fan_out_limit = shipped("fan_out")["min_distinct"]
    opened = opened_at(derived_sample)
    for hub, flagged in labelled(derived_sample, "gather_scatter").items():
        incoming = transfers_into(derived_sample, hub)
        outgoing = [e for e in of_account(derived_sample, hub) if e["event_type"] == "transfer"]
        senders = {e["account_id"] for e in incoming}
        receivers = [e["counterparty_id"] for e in outgoing]
        assert hub_limits.min_in <= len(senders) == len(incoming) <= hub_limits.min_in + 3
        assert hub_limits.min_out <= len(set(receivers)) == len(receivers) < fan_out_limit
        assert opened[hub] < at(incoming[0]) and at(incoming[-1]) < at(outgoing[0])
        assert all(r in opened for r in receivers)  # accounts opened to be paid
        assert at(outgoing[-1]) - at(incoming[0]) <= timedelta(days=3)
        assert flagged == outgoing[hub_limits.min_out - 1 :]
        assert 0.9 * sum(map(minor, incoming)) <= sum(map(minor, outgoing))


def test_fan_in_is_many_strangers_paying_one_new_account_within_a_day(derived_sample):
    max_senders = shipped_detector("fan_in").max_senders
    opened = opened_at(derived_sample)
    for flagged in by_incident(derived_sample, "fan_in").values():
        (collector,) = {e["counterparty_id"] for e in flagged}
        paid = transfers_into(derived_sample, collector)
        assert max_senders <= len({e["account_id"] for e in paid}) == len(paid) < 32
        assert flagged == paid[max_senders - 1 :]
        assert opened[collector] < at(paid[0])
        assert at(paid[-1]) - at(paid[0]) <= timedelta(hours=16)
        assert [e["event_type"] for e in of_account(derived_sample, collector)] == [
            "account_opened"
        ]


def test_shared_identity_opens_accounts_with_one_device_or_one_national_id(derived_sample):
    limits = shipped_detector("identity_reuse").min_accounts
    openings = [e for e in derived_sample if e["event_type"] == "account_opened"]
    kinds: Counter[str] = Counter()
    for flagged in by_incident(derived_sample, "shared_identity").values():
        assert {e["event_type"] for e in flagged} == {"account_opened"}
        groups = {
            kind: [e for e in openings if e[kind] == flagged[0][kind]]
            for kind in ("device_id", "national_id")
        }  # fmt: skip
        (kind,) = [kind for kind, group in groups.items() if len(group) > 1]
        group = groups[kind]
        assert len({e["account_id"] for e in group}) == len(group)
        limit = limits[kind]
        assert limit <= len(group) <= limit + 3
        assert flagged == group[limit - 1 :]
        if kind == "national_id":
            assert len({e["phone"] for e in group}) == 1
            assert len({e["device_id"] for e in group}) == len(group)
        else:
            assert len({e["national_id"] for e in group}) == len(group)
        kinds[kind] += 1
    assert kinds["device_id"] > kinds["national_id"] > 0


def test_loan_stacking_is_loan_after_loan_within_days(derived_sample):
    max_applications = shipped_detector("loan_stacking").max_applications
    for account, flagged in labelled(derived_sample, "loan_stacking").items():
        applied = [
            e for e in of_account(derived_sample, account) if e["event_type"] == "loan_application"
        ]  # fmt: skip
        assert max_applications <= len(applied) <= max_applications + 2, account
        assert flagged == applied[max_applications - 1 :]
        assert len({e["loan_id"] for e in applied}) == len(applied)
        assert len({(e["national_id"], e["phone"]) for e in applied}) == 1
        assert at(applied[-1]) - at(applied[0]) <= timedelta(days=3)


def project_events(events: list[dict[str, Any]], project: str) -> list[dict[str, Any]]:
    return [e for e in events if e.get("project_id") == project]


def test_pledge_churn_refunds_the_backers_of_a_new_project(derived_sample):
    churn = shipped_detector("pledge_churn")
    sybil_limit = shipped_detector("suspicious_pledging").min_pledges
    for refunds in by_incident(derived_sample, "pledge_churn").values():
        (project,) = {e["project_id"] for e in refunds}
        events = project_events(derived_sample, project)
        pledges = [e for e in events if e["event_type"] == "pledge"]
        refunded = [e for e in events if e["event_type"] == "pledge_refund"]
        assert len({e["account_id"] for e in pledges}) == len(pledges) < sybil_limit
        pledged = {e["account_id"]: e["amount"] for e in pledges}
        assert all(pledged[e["account_id"]] == e["amount"] for e in refunded)
        assert at(pledges[-1]) + timedelta(days=1) <= at(refunded[0])
        reaching = next(
            k for k in range(1, len(refunded) + 1)
            if k >= churn.min_refunds and k / len(pledges) >= churn.min_churn_ratio
        )  # fmt: skip
        assert refunds == refunded[reaching - 1 :]


def test_sybil_pledging_backs_a_new_project_with_accounts_opened_for_it(derived_sample):
    min_pledges = shipped_detector("suspicious_pledging").min_pledges
    opened = opened_at(derived_sample)
    for flagged in by_incident(derived_sample, "sybil_pledging").values():
        (project,) = {e["project_id"] for e in flagged}
        pledges = project_events(derived_sample, project)
        assert {e["event_type"] for e in pledges} == {"pledge"}
        assert min_pledges <= len({e["account_id"] for e in pledges}) == len(pledges)
        assert flagged == pledges[min_pledges - 1 :]
        for pledge in pledges:
            since = at(pledge) - opened[pledge["account_id"]]
            assert timedelta(0) < since <= timedelta(minutes=30)
        assert max(Counter(e["device_id"] for e in pledges).values()) <= 3
        assert at(pledges[-1]) - at(pledges[0]) <= timedelta(days=1, minutes=30)


def test_payout_after_sybil_pledges_takes_the_money_out_within_hours(derived_sample):
    payout_rule = shipped_detector("suspicious_payout")
    sybil_limit = shipped_detector("suspicious_pledging").min_pledges
    opened = opened_at(derived_sample)
    for owner, (payout,) in labelled(derived_sample, "payout_after_sybil_pledges").items():
        assert payout["event_type"] == "project_payout"
        pledges = project_events(derived_sample, payout["project_id"])[:-1]
        assert {e["event_type"] for e in pledges} == {"pledge"}
        assert payout_rule.min_pledges <= len(pledges) < sybil_limit
        assert all(e["account_id"] in opened and e["counterparty_id"] == owner for e in pledges)
        assert minor(payout) == sum(map(minor, pledges))
        delay = at(payout) - at(pledges[-1])
        assert timedelta(hours=2) <= delay <= timedelta(hours=36)


@pytest.mark.parametrize("scenario", DERIVED_SCENARIOS)
def test_the_expected_derived_stage_detector_catches_every_incident_offline(tmp_path, scenario):
    """Through the worker's code offline (the backtest runs the derived stages in line):
    every incident is caught by its detector, and on this small population nothing else
    makes that detector alert."""
    evaluation = importlib.import_module("streams.evaluation")
    path = tmp_path / "events.jsonl"
    traffic = sim.generate(
        5, accounts=300, events=1_500, scenarios=[scenario], first_incident_at=50,
        incident_every=500,
    )  # fmt: skip
    sim.write_jsonl(traffic, path)
    result = evaluation.backtest(path, settings=Settings(dev_mode=True))
    (row,) = [r for r in result.scenarios if r.scenario == scenario]
    assert row.incidents == traffic.incidents[scenario] == 3
    assert row.recall == 1.0
    (detector,) = [d for d in result.detectors if d.detector == row.expected_detector]
    assert detector.alerts >= row.incidents
    assert detector.precision == 1.0


def test_rings_of_every_length_in_any_order_are_caught_offline(tmp_path):
    evaluation = importlib.import_module("streams.evaluation")
    events, labels = tmp_path / "events.jsonl", tmp_path / "labels.jsonl"
    traffic = sim.generate(
        3, accounts=500, events=6_000, scenarios=["laundering_ring"], first_incident_at=50,
        incident_every=300,
    )  # fmt: skip
    sim.write_jsonl(traffic, events, labels_path=labels)
    rings = by_incident([orjson.loads(line) for line in events.read_bytes().splitlines()],
                        "laundering_ring")  # fmt: skip
    assert {len(ring) for ring in rings.values()} == set(range(3, DEFAULT_FLOW_PARAMS.max_ring + 1))
    assert 0 < sum(not in_ring_order(ring) for ring in rings.values()) < len(rings)
    for result in (
        evaluation.backtest(events, settings=Settings(dev_mode=True)),
        evaluation.backtest(events, settings=Settings(dev_mode=True),
                            labels=evaluation.load_labels(labels)),
    ):
        (row,) = result.scenarios
        assert (row.incidents, row.recall) == (len(rings), 1.0)


def test_an_event_budget_is_exact_and_never_cuts_an_incident_short():
    for budget in (40, 150, 600):
        traffic = sim.generate(2, accounts=200, events=budget, first_incident_at=10)
        events = list(traffic)
        assert len(events) == budget
        bursts = labelled(events, "velocity_burst")
        assert len(bursts) == traffic.incidents["velocity_burst"] == 1
        assert all(len(b) >= 15 for b in bursts.values())
        # An incident that does not fit in what is left of the budget is not started.
        assert len(labelled(events, "amount_spike")) == traffic.incidents["amount_spike"]
    assert traffic.incidents["amount_spike"] == 1


def test_scenarios_can_be_chosen_and_unknown_ones_are_refused():
    events = list(sim.generate(1, accounts=100, events=2_000, scenarios=["velocity_burst"]))
    assert {e.get("label") for e in events} == {None, "velocity_burst"}
    assert not any("label" in e for e in sim.generate(1, accounts=100, events=2_000, scenarios=()))
    with pytest.raises(ValueError, match="unknown scenario"):
        sim.generate(1, scenarios=["card_testing"])


def test_a_new_scenario_plugs_in_through_the_registry(monkeypatch):
    def dormant_reactivation(ctx: sim.IncidentContext):
        victim = ctx.any_victim()
        merchant = ctx.distinct_merchants(1)[0]
        yield ctx.payment(victim, ctx.now + 60, 5_000_000, merchant)

    monkeypatch.setitem(
        sim.SCENARIOS, "dormant", sim.Scenario("dormancy", dormant_reactivation, "test")
    )
    events = list(sim.generate(1, accounts=100, events=500, scenarios=["dormant"]))
    (injected,) = [e for e in events if "label" in e]
    assert injected["amount"] == "50000.00"
    assert sim.label_record(injected)["expected_detector"] == "dormancy"


# -- routing ------------------------------------------------------------------------------


def test_lending_goes_to_the_lending_topic_and_the_rest_to_payments():
    for kind in EVENT_TYPES:
        expected = "t.lending" if kind in LENDING_TYPES else "t.payments"
        assert sim.topic_for(kind, SETTINGS) == expected
    assert sim.topic_for(None, SETTINGS) == "t.payments"
    assert sim.message_key("acct-0000042") == b"acct-0000042"


# -- publishing, against an in-memory producer -------------------------------------------


class MemoryProducer:
    """Records what would have been sent; every send is acknowledged at once."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes | None, bytes]] = []
        self.started = self.stopped = False

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    async def flush(self) -> None:
        pass

    async def send(
        self, topic: str, value: bytes | None = None, key: bytes | None = None
    ) -> asyncio.Future[Any]:
        assert value is not None
        self.messages.append((topic, key, value))
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


def memory(holder: list[MemoryProducer]):
    def factory(settings: Settings) -> MemoryProducer:
        producer = MemoryProducer()
        holder.append(producer)
        return producer

    return factory


async def test_simulate_routes_keys_and_labels_what_it_sends(tmp_path):
    producers: list[MemoryProducer] = []
    labels_path = tmp_path / "labels.jsonl"
    report = await sim.simulate(
        SETTINGS, None, None, 3_000, 9, None, labels_path, None,
        accounts=300, create_topics=False, producer_factory=memory(producers),
    )  # fmt: skip
    (producer,) = producers
    assert producer.started and producer.stopped
    assert report.sent == report.delivered == len(producer.messages) == 3_000
    assert report.failed == 0
    sent = [orjson.loads(value) for _, _, value in producer.messages]
    assert sent == list(sim.generate(9, accounts=300, events=3_000))
    for (topic, key, _), event in zip(producer.messages, sent, strict=True):
        assert topic == ("t.lending" if event["event_type"] in LENDING_TYPES else "t.payments")
        assert key == event["account_id"].encode()
    assert report.by_topic == dict(Counter(topic for topic, _, _ in producer.messages))
    assert report.by_type == dict(Counter(e["event_type"] for e in sent))
    labels = [orjson.loads(line) for line in labels_path.read_bytes().splitlines()]
    assert [label["event_id"] for label in labels] == [e["event_id"] for e in sent if "label" in e]
    assert report.labelled == len(labels) > 15
    assert report.incidents == dict.fromkeys(sim.SCENARIOS, 2)
    assert report.first_occurred_at == sent[0]["occurred_at"]
    assert "3,000 delivered" in str(report)


async def test_simulate_at_a_rate_keeps_to_the_schedule(monkeypatch):
    monkeypatch.setattr("streams.simulate.publishing.PROGRESS_EVERY", 0.1)
    lines: list[str] = []
    loop = asyncio.get_running_loop()
    began = loop.time()
    report = await sim.simulate(
        SETTINGS, 2_000.0, None, 1_000, 1, (), None, lines.append,
        accounts=100, create_topics=False, producer_factory=memory([]),
    )  # fmt: skip
    elapsed = loop.time() - began
    # 1,000 events at 2,000/s: the last leaves at 0.5 s, never earlier.
    assert report.sent == 1_000
    assert 0.49 <= elapsed < 2.0
    assert len(lines) >= 3
    assert lines[-1].startswith("simulate: 1,000 sent")
    assert "incidents none" in lines[-1]


async def test_simulate_for_a_duration_finishes_the_incidents_it_started():
    producers: list[MemoryProducer] = []
    report = await sim.simulate(
        SETTINGS, 1_000.0, 0.4, None, 2, None, None, None,
        accounts=300, create_topics=False, producer_factory=memory(producers),
    )  # fmt: skip
    sent = [orjson.loads(value) for _, _, value in producers[0].messages]
    assert 300 <= report.sent == len(sent)
    assert report.incidents == dict.fromkeys(sim.SCENARIOS, 1)
    assert len(labelled(sent, "velocity_burst")) == 1
    assert all(len(b) >= 15 for b in labelled(sent, "velocity_burst").values())
    # The spike's warm-up spans hours of event time, far beyond 0.4 s at 1,000/s:
    # it was sent when the time was up rather than dropped.
    assert len(labelled(sent, "amount_spike")) == 1


async def test_simulate_paced_by_acceleration_follows_event_time():
    loop = asyncio.get_running_loop()
    began = loop.time()
    report = await sim.simulate(
        SETTINGS, None, None, 200, 1, (), None, None, acceleration=20_000.0,
        accounts=100, create_topics=False, producer_factory=memory([]),
    )  # fmt: skip
    elapsed = loop.time() - began
    span = parse_time(report.last_occurred_at) - parse_time(report.first_occurred_at)
    # 200 events of 100 accounts span about 3 hours of event time: ~0.5 s here.
    assert elapsed == pytest.approx(span.total_seconds() / 20_000.0, abs=0.3)
    assert elapsed > 0.2
    with pytest.raises(ValueError, match="not both"):
        await sim.simulate(SETTINGS, 10.0, None, 10, 1, (), None, None, acceleration=2.0)


async def test_replay_sends_lines_byte_for_byte_and_malformed_ones_to_payments(tmp_path):
    lines = [
        b'{"event_id":"r1","event_type":"payment","occurred_at":"2024-05-01T12:30:00Z",'
        b'"account_id":"a1","amount":"1.00","currency":"CNY"}',
        b'{"event_type": "loan_status", "event_id": "r2", "account_id": "a2", '
        b'"occurred_at": "2024-05-01T20:30:00.250+08:00", "loan_id": "l", "status": "current"}',
        b"{not json",
        b"[1, 2]",
        b'{"event_id":"r3","event_type":"teleport","account_id":"a3"}',
        b"",
        b"\xff\xfe not utf-8",
    ]
    path = tmp_path / "replay.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    producers: list[MemoryProducer] = []
    report = await sim.replay(
        SETTINGS, path, None, None, create_topics=False, producer_factory=memory(producers)
    )
    assert producers[0].messages == [
        ("t.payments", b"a1", lines[0]),
        ("t.lending", b"a2", lines[1]),
        ("t.payments", None, lines[2]),
        ("t.payments", None, lines[3]),
        ("t.payments", b"a3", lines[4]),
        ("t.payments", None, lines[6]),
    ]
    assert (report.lines, report.sent, report.delivered) == (7, 6, 6)
    assert (report.unparseable, report.unknown_type, report.blank) == (3, 1, 1)
    assert report.by_topic == {"t.payments": 5, "t.lending": 1}


async def test_replay_of_a_generated_file_sends_what_was_generated(tmp_path):
    path = tmp_path / "events.jsonl"
    sim.write_jsonl(sim.generate(4, accounts=100, events=500), path)
    producers: list[MemoryProducer] = []
    report = await sim.replay(
        SETTINGS, path, 5_000.0, None, create_topics=False, producer_factory=memory(producers)
    )
    assert report.sent == 500 and report.unparseable == 0
    assert [value for _, _, value in producers[0].messages] == path.read_bytes().splitlines()


async def test_limits_must_be_positive():
    with pytest.raises(ValueError, match="rate must be positive"):
        await sim.simulate(SETTINGS, 0.0, None, 10, 1, (), None, None)
    with pytest.raises(ValueError, match="accounts must be at least 10"):
        sim.generate(1, accounts=3)
