"""The conformance suite: generic checks every registered detector passes.

Each check takes a factory returning a fresh :class:`ThresholdAlerter` (as
:func:`detectors.registry.build_alerters` builds them) and raises
``AssertionError`` with an explanation when the detector breaks the contract.
:func:`checks_for` lists the checks that apply to an alerter's detector;
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

import copy
import heapq
import itertools
import json
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Final

import orjson

from detectors.base import SEVERITIES, Detector, Features, Finding, KeyedDetector, ThresholdAlerter
from detectors.crowdfunding import DEFAULT_PROJECT_PARAMS, ProjectSketch
from detectors.flow import InMemoryFlowStage, edge_origins
from detectors.identity import DEFAULT_MIN_ACCOUNTS, IDENTITY_KINDS, IdentitySketch
from detectors.registry import DEFAULT_CONFIG

AlerterFactory = Callable[[], ThresholdAlerter]
Check = Callable[[AlerterFactory], None]

#: The keys every feature mapping carries; everything else may be missing.
REQUIRED_FEATURES: Final = ("event_type", "amount_minor")
#: Injected anomalies that are one event, replacing an ordinary one.
SINGLE_EVENT_KINDS: Final = ("large_amount", "burst")
#: Injected anomalies that are an episode: several events of one account (or of an
#: escrow account) over minutes to days, interleaved with everyone else's.
EPISODE_KINDS: Final = (
    "fan_out",
    "structuring",
    "rapid_pass_through",
    "fund_segregation",
    "precipitated_funds",
    "account_takeover",
    "blacklist",
    "borrow_and_vanish",
)
#: Kinds of injected anomaly in :func:`labelled_stream`.
ANOMALY_KINDS: Final = SINGLE_EVENT_KINDS + EPISODE_KINDS
#: The kinds each detector exists to catch: :func:`check_beats_chance` compares its
#: rate on them with its rate on normal events. A detector not listed is judged on
#: every kind.
TARGET_KINDS: Final[Mapping[str, tuple[str, ...]]] = {
    "velocity": ("burst", "fan_out"),
    "amount_outlier": ("large_amount",),
    "global_anomaly": ("large_amount", "burst", "fan_out"),
    "structuring": ("structuring",),
    "rapid_pass_through": ("rapid_pass_through",),
    "fan_out": ("fan_out",),
    "fund_segregation": ("fund_segregation",),
    "precipitated_funds": ("precipitated_funds",),
    "account_takeover": ("account_takeover",),
    "blacklist": ("blacklist",),
    "borrow_and_vanish": ("borrow_and_vanish",),
    "spending_burst": ("large_amount", "burst"),
    # Stage detectors, on the labelled records of their stage (labelled_stage_records).
    "cycle": ("cycle",),
    "scatter_gather": ("scatter_gather",),
    "gather_scatter": ("gather_scatter",),
    "fan_in": ("fan_in",),
    "identity_reuse": ("identity_reuse",),
    "loan_stacking": ("loan_stacking",),
    "pledge_churn": ("pledge_churn",),
    "suspicious_pledging": ("suspicious_pledging",),
    "suspicious_payout": ("suspicious_payout",),
}
#: The patterns injected in each derived stage's labelled records
#: (:func:`labelled_stage_records`), each named after the detector that exists to catch it.
STAGE_ANOMALY_KINDS: Final[Mapping[str, tuple[str, ...]]] = {
    "flow": ("cycle", "scatter_gather", "gather_scatter", "fan_in"),
    "identity": ("identity_reuse", "loan_stacking"),
    "project": ("pledge_churn", "suspicious_pledging", "suspicious_payout"),
}

#: Event time of the first event: Monday 2024-03-04 00:00 UTC.
STREAM_START: Final = 1_709_510_400
#: Mean seconds between two events of the stream: 4,000 events span about nine days,
#: long enough for a balance to outstay a dwell time of days and a loan its due date.
MEAN_GAP_SECONDS: Final = 200.0

_OUTFLOW: Final = frozenset({"payment", "transfer", "withdrawal", "pledge"})
_INFLOW: Final = frozenset(
    {"top_up", "refund", "loan_disbursement", "pledge_refund", "project_payout"}
)
_NORMAL_TYPES: Final = ("payment", "transfer", "top_up", "login", "credential_change")
_NORMAL_WEIGHTS: Final = (0.6, 0.2, 0.1, 0.095, 0.005)
_WITHOUT_AMOUNT: Final = frozenset({"login", "credential_change", "loan_status"})
_CREDENTIAL_KINDS: Final = ("password", "phone", "email", "device")
#: Monetary events an account needs before an anomaly is injected into it.
_HISTORY_BEFORE_ANOMALY: Final = 10
#: Probability per step of an ordinary loan (disbursed, partly cashed out, repaid on
#: time) and of an ordinary payout from an escrow account: negatives that look close.
_HONEST_LOAN_RATE: Final = 0.002
_ESCROW_PAYOUT_RATE: Final = 0.004
_DAY: Final = 86_400
_HOUR: Final = 3_600
#: Days of ordinary traffic in the labelled records of a derived stage.
STAGE_DAYS: Final = 12
_STAGE_END: Final = STREAM_START + STAGE_DAYS * _DAY


@dataclass(frozen=True, slots=True)
class LabelledEvent:
    """One synthetic event: its account, its features and what was injected."""

    account_id: str
    x: dict[str, Any]
    #: One of :data:`ANOMALY_KINDS`, or ``None`` for normal behaviour (and for the
    #: context events of an episode, such as the top-up before a pass-through).
    anomaly: str | None


#: Events an episode adds: ``(ts, account_id, x, label)``, label ``None`` for context.
Episode = list[tuple[int, str, dict[str, Any], str | None]]


def _default(detector: str, param: str, fallback: Any) -> Any:
    """A shipped parameter: injected anomalies are built to cross the shipped defaults."""
    spec = DEFAULT_CONFIG["detectors"].get(detector, {})
    return spec.get("params", {}).get(param, fallback)


def _hex(rng: random.Random) -> str:
    """A 32-hex identity hash like those of ``streams.codec.hash_pii``."""
    return f"{rng.getrandbits(128):032x}"


def labelled_stream(
    n_events: int = 4_000,
    *,
    seed: int = 20_240_601,
    n_accounts: int = 40,
    anomaly_rate: float = 0.03,
) -> list[LabelledEvent]:
    """A seeded stream of normal events with a few injected anomalies.

    Normal accounts each have a usual amount (5.00 to 1,000.00, log-normal
    spread), a few counterparties, one or two devices, daytime hours and a
    handful of transactions a day; one event in ten is a login without amount.
    Events carry what ``streams/features.py`` gives: velocity windows, ``ts``
    (about 200 s apart on average, so 4,000 events span nine days),
    ``account_id``, ``counterparty_id``, ``device_id_hash`` and sometimes
    ``phone_hash``. The ``hour`` feature follows each account's daytime habits
    and is not derived from ``ts``. Ordinary loans (cashed out in part, repaid
    before their due date) and ordinary payouts of the escrow account of the
    shipped configuration are mixed in.

    Once an account has some history, with probability ``anomaly_rate`` an
    anomaly is injected instead of its next event: a single event
    (:data:`SINGLE_EVENT_KINDS`: a ``large_amount`` 50 to 400 times the
    usual, a ``burst`` of a dozen or more transactions in a minute at night)
    or an episode (:data:`EPISODE_KINDS`), whose events are built to cross
    the shipped thresholds of the detector of the same name (``fan_out`` also
    the velocity limits) and interleave with the rest of the stream in event
    time. Only the events a detector should flag are labelled; an episode's
    context (the loan before the cash-out, the login before the withdrawal) is
    not. An account is left alone while an episode of its own runs.

    Parameters
    ----------
    n_events
        Length of the stream.
    seed
        Seed of every random choice: the same arguments give the same stream.
    n_accounts
        Accounts the events are spread over.
    anomaly_rate
        Probability that an eligible step starts an injected anomaly.

    Examples
    --------
    >>> stream = labelled_stream(500, seed=1)
    >>> sorted({event.anomaly for event in stream if event.anomaly})
    ['large_amount', 'structuring']
    >>> stream == labelled_stream(500, seed=1)
    True
    >>> times = [event.x["ts"] for event in stream if event.account_id == "acct-007"]
    >>> times == sorted(times)
    True
    """
    rng = random.Random(seed)
    profiles = [_profile(rng, account, n_accounts) for account in range(n_accounts)]
    history = [0] * n_accounts
    escrow_history = 0
    busy = [0] * n_accounts  # pending events of an episode that keeps the account to itself
    # (ts, order, owner account or -1, holds the owner, account_id, x, label)
    pending: list[tuple[int, int, int, bool, str, dict[str, Any], str | None]] = []
    order = itertools.count()
    stream: list[LabelledEvent] = []
    clock = float(STREAM_START)
    while len(stream) < n_events:
        clock += rng.expovariate(1.0 / MEAN_GAP_SECONDS)
        if pending and pending[0][0] <= clock:
            _, _, owner, holds, account_id, x, label = heapq.heappop(pending)
            if owner >= 0:
                busy[owner] -= holds
                x["account_events"] = history[owner]
                history[owner] += x["amount_minor"] > 0
            else:
                x["account_events"] = escrow_history
                escrow_history += x["amount_minor"] > 0
            stream.append(LabelledEvent(account_id, x, label))
            continue
        account = rng.randrange(n_accounts)
        if busy[account]:
            continue
        profile = profiles[account]
        ts = int(clock)
        episode: Episode = []
        keeps_account = False
        roll = rng.random()
        eligible = history[account] >= _HISTORY_BEFORE_ANOMALY
        if eligible and roll < anomaly_rate:
            kind = rng.choice(ANOMALY_KINDS)
            if kind in SINGLE_EVENT_KINDS:
                x = _anomalous_features(rng, profile, kind)
                x.update(_context(rng, profile, x["event_type"], ts))
                x["account_events"] = history[account]
                history[account] += 1
                stream.append(LabelledEvent(profile["account_id"], x, kind))
                continue
            episode = _EPISODES[kind](rng, profile, ts)
            keeps_account = kind != "fund_segregation"
        elif eligible and roll < anomaly_rate + _HONEST_LOAN_RATE:
            episode = _honest_loan(rng, profile, ts)
        elif roll > 1.0 - _ESCROW_PAYOUT_RATE:
            episode = _escrow_payout(rng, profile, ts)
        if episode:
            for at, account_id, x, label in episode:
                owner = account if account_id == profile["account_id"] else -1
                holds = keeps_account and owner >= 0
                heapq.heappush(pending, (at, next(order), owner, holds, account_id, x, label))
                busy[account] += holds
            continue
        x = _normal_features(rng, profile)
        x.update(_context(rng, profile, x["event_type"], ts))
        x["account_events"] = history[account]
        if x["amount_minor"] > 0:
            history[account] += 1
        stream.append(LabelledEvent(profile["account_id"], x, None))
    return stream


def _profile(rng: random.Random, account: int, n_accounts: int) -> dict[str, Any]:
    return {
        "account_id": f"acct-{account:03d}",
        "usual": math.exp(rng.uniform(math.log(500), math.log(100_000))),
        "spread": rng.uniform(0.2, 0.7),
        "hour": rng.uniform(9.0, 19.0),
        "counterparties": rng.randint(1, 4),
        "merchants": [f"m-{rng.randrange(500):03d}" for _ in range(rng.randint(2, 6))],
        "contacts": [f"acct-{rng.randrange(n_accounts):03d}" for _ in range(rng.randint(1, 4))],
        "bank": f"bank-{account % 6}",
        "devices": [_hex(rng) for _ in range(rng.choice((1, 1, 2)))],
        "phone_hash": _hex(rng),
        "national_id_hash": _hex(rng),
    }


def _context(
    rng: random.Random, profile: Mapping[str, Any], event_type: str, ts: int
) -> dict[str, Any]:
    """The identifying features of an ordinary event: time, account, counterparty, device."""
    extra: dict[str, Any] = {"ts": ts, "account_id": profile["account_id"]}
    if event_type == "payment":
        merchant = rng.choice(profile["merchants"])
        extra["counterparty_id"] = extra["merchant_id"] = merchant
    elif event_type == "transfer":
        extra["counterparty_id"] = rng.choice(profile["contacts"])
    elif event_type in ("top_up", "withdrawal"):
        extra["counterparty_id"] = profile["bank"]
    elif event_type == "credential_change":
        extra["kind"] = rng.choice(_CREDENTIAL_KINDS)
    # A new phone or a borrowed laptop now and then, as in real traffic.
    devices = profile["devices"]
    extra["device_id_hash"] = _hex(rng) if rng.random() < 0.02 else rng.choice(devices)
    if event_type in ("login", "credential_change") and rng.random() < 0.3:
        extra["phone_hash"] = profile["phone_hash"]
    return extra


def _usual_amount(rng: random.Random, profile: Mapping[str, Any]) -> int:
    return max(1, round(profile["usual"] * rng.lognormvariate(0.0, profile["spread"])))


def _event(
    rng: random.Random,
    profile: Mapping[str, Any],
    ts: int,
    event_type: str,
    amount: int,
    label: str | None = None,
    **extra: Any,
) -> tuple[int, str, dict[str, Any], str | None]:
    """One episode event of ``profile``'s account, with ordinary velocity windows."""
    counts = (1, 1 + rng.randint(0, 2), 3 + rng.randint(0, 6))
    distinct = (1, 1, min(counts[2], int(profile["counterparties"])))
    hour = round(rng.gauss(profile["hour"], 2.5)) % 24
    x = _window_features(rng, profile, event_type, amount, hour, counts, distinct)
    x.update(_context(rng, profile, event_type, ts))
    x.update(extra)
    return ts, x["account_id"], x, label


def _fan_out(
    rng: random.Random, profile: Mapping[str, Any], start: int
) -> Episode:
    min_distinct = int(_default("fan_out", "min_distinct", 10))
    count = rng.randint(min_distinct + 2, min_distinct + 20)
    offsets = sorted(rng.uniform(0.0, rng.uniform(1_200.0, 5_400.0)) for _ in range(count))
    earlier = rng.randint(0, 4)
    events = []
    for number, offset in enumerate(offsets, start=1):
        seen = offsets[:number]
        in_1m = sum(offset - o < 60 for o in seen)
        in_1h = sum(offset - o < 3_600 for o in seen)
        counts = (in_1m, in_1h, number + earlier)
        distinct = (in_1m, in_1h, min(64, number + min(earlier, int(profile["counterparties"]))))
        amount = _usual_amount(rng, profile)
        hour = round(rng.gauss(profile["hour"], 2.5)) % 24
        x = _window_features(rng, profile, "transfer", amount, hour, counts, distinct)
        ts = start + round(offset)
        x.update(_context(rng, profile, "transfer", ts))
        x["counterparty_id"] = f"mule-{rng.getrandbits(32):08x}"
        label = "fan_out" if number >= min_distinct else None
        events.append((ts, x["account_id"], x, label))
    return events


def _structuring(
    rng: random.Random, profile: Mapping[str, Any], start: int
) -> Episode:
    threshold = int(_default("structuring", "currency_limits", {})["CNY"]["threshold"])
    band = Decimal(str(_default("structuring", "band_fraction", 0.9)))
    lowest = math.ceil(Decimal(threshold) * band)
    min_count = int(_default("structuring", "min_count", 3))
    window = int(_default("structuring", "window_seconds", _DAY))
    count = rng.randint(min_count, min_count + 2)
    at = start
    events = []
    placed = 0
    for number in range(1, count + 1):
        at += round(rng.uniform(2_400.0, max(2_400.0, 0.9 * window / count)))
        event_type = "top_up" if number == 1 or rng.random() < 0.6 else "transfer"
        label = "structuring" if number >= min_count else None
        amount = rng.randint(lowest, threshold - 1)
        placed += amount if event_type == "top_up" else -amount
        events.append(_event(rng, profile, at, event_type, amount, label))
    if placed >= threshold:
        # Layering: what was placed moves on in one transfer, hours later (context).
        layering = _event(rng, profile, at + rng.randint(3_600, 3 * 3_600), "transfer", placed)
        layering[2]["counterparty_id"] = f"mule-{rng.getrandbits(32):08x}"
        events.append(layering)
    return events


def _rapid_pass_through(
    rng: random.Random, profile: Mapping[str, Any], start: int
) -> Episode:
    window = int(_default("rapid_pass_through", "window_seconds", 1_800))
    share = float(DEFAULT_CONFIG["detectors"].get("rapid_pass_through", {}).get("threshold", 0.8))
    inflow = rng.randint(20_000, 90_000) * 100
    events = [_event(rng, profile, start, "top_up", inflow)]
    count = rng.randint(1, 3)
    total = round(inflow * rng.uniform(0.85, 0.99))
    offsets = sorted(rng.randint(60, window * 3 // 4) for _ in range(count))
    sent = 0
    for number, offset in enumerate(offsets, start=1):
        amount = total - sent if number == count else total // count
        sent += amount
        event_type = "transfer" if rng.random() < 0.7 else "withdrawal"
        label = "rapid_pass_through" if sent >= share * inflow else None
        event = _event(rng, profile, start + offset, event_type, amount, label)
        if event_type == "transfer":
            event[2]["counterparty_id"] = f"mule-{rng.getrandbits(32):08x}"
        events.append(event)
    return events


def _fund_segregation(
    rng: random.Random, profile: Mapping[str, Any], start: int
) -> Episode:
    escrow = (_default("fund_segregation", "escrow_accounts", None) or ["escrow-001"])[0]
    platform = (_default("fund_segregation", "platform_accounts", None) or ["platform-ops-1"])[0]
    payout = _escrow_payout(rng, profile, start)
    _, _, x, _ = _event(rng, profile, start + rng.randint(60, 3_600), "transfer",
                        rng.randint(10_000, 2_000_000) * 100)  # fmt: skip
    x.update(account_id=escrow, counterparty_id=platform)
    return [*payout, (x["ts"], escrow, x, "fund_segregation")]


def _escrow_payout(
    rng: random.Random, profile: Mapping[str, Any], start: int
) -> Episode:
    """An ordinary payout of the shipped escrow account to a customer."""
    escrow = (_default("fund_segregation", "escrow_accounts", None) or ["escrow-001"])[0]
    _, _, x, _ = _event(rng, profile, start, "transfer", rng.randint(1_000, 40_000) * 100)
    x.update(account_id=escrow, counterparty_id=profile["account_id"])
    return [(start, escrow, x, None)]


def _precipitated_funds(
    rng: random.Random, profile: Mapping[str, Any], start: int
) -> Episode:
    limit = int(_default("precipitated_funds", "currency_limits", {})["CNY"]["balance_limit"])
    dwell = int(_default("precipitated_funds", "max_dwell_seconds", 3 * _DAY))
    amount = round(limit * rng.uniform(1.6, 3.0))
    seen = start + dwell + rng.randint(1, 60)
    return [
        _event(rng, profile, start, "top_up", amount),
        _event(rng, profile, seen, "login", 0, "precipitated_funds"),
        # The money leaves at last (context), so the account's next episode is its own.
        _event(rng, profile, seen + rng.randint(3_600, 6 * 3_600), "withdrawal", amount),
    ]


def _account_takeover(
    rng: random.Random, profile: Mapping[str, Any], start: int
) -> Episode:
    device = _hex(rng)
    at = start
    events = [_event(rng, profile, at, "login", 0, device_id_hash=device)]
    at += rng.randint(30, 300)
    events.append(_event(rng, profile, at, "credential_change", 0, kind="phone",
                         device_id_hash=device))  # fmt: skip
    for _ in range(rng.randint(1, 2)):
        at += rng.randint(120, 900)
        amount = max(150_000, round(profile["usual"] * rng.uniform(25.0, 60.0)))
        event_type = "withdrawal" if rng.random() < 0.5 else "transfer"
        events.append(
            _event(rng, profile, at, event_type, amount, "account_takeover", device_id_hash=device)
        )
    return events


def _blacklist(
    rng: random.Random, profile: Mapping[str, Any], start: int
) -> Episode:
    listed = _default("blacklist", "hashes", None) or ["0" * 32]
    field = rng.choice(("national_id_hash", "phone_hash"))
    amount = rng.randint(5_000, 50_000) * 100
    extra = {"national_id_hash": profile["national_id_hash"], "phone_hash": profile["phone_hash"]}
    extra[field] = rng.choice(listed)
    return [_event(rng, profile, start, "loan_application", amount, "blacklist", **extra)]


def _due_end(disbursed: int, days: int) -> tuple[str, int]:
    """A due date ``days`` after ``disbursed`` and the epoch second it ends (UTC)."""
    due = datetime.fromtimestamp(disbursed, UTC).date() + timedelta(days=days)
    end = datetime.combine(due + timedelta(days=1), datetime.min.time(), UTC)
    return due.isoformat(), int(end.timestamp())


def _borrow_and_vanish(
    rng: random.Random, profile: Mapping[str, Any], start: int
) -> Episode:
    loan_id = f"loan-{rng.getrandbits(32):08x}"
    principal = rng.randint(200, 800) * 10_000
    due_date, due_end = _due_end(start, rng.randint(2, 4))
    events = [_event(rng, profile, start, "loan_disbursement", principal, loan_id=loan_id,
                     due_date=due_date)]  # fmt: skip
    count = rng.randint(1, 3)
    total = round(principal * rng.uniform(0.85, 1.0))
    for number, offset in enumerate(sorted(rng.randint(3_600, 12 * 3_600) for _ in range(count))):
        amount = total - (count - 1) * (total // count) if number == 0 else total // count
        events.append(_event(rng, profile, start + offset, "withdrawal", amount))
    events.append(
        _event(rng, profile, due_end + rng.randint(1, 600), "loan_status", 0, "borrow_and_vanish",
               loan_id=loan_id, status="delinquent", days_past_due=1)
    )  # fmt: skip
    return events


def _honest_loan(
    rng: random.Random, profile: Mapping[str, Any], start: int
) -> Episode:
    """An ordinary loan: disbursed, partly or wholly cashed out, repaid before its due date."""
    loan_id = f"loan-{rng.getrandbits(32):08x}"
    principal = rng.randint(100, 300) * 10_000
    due_date, due_end = _due_end(start, rng.randint(2, 4))
    cash_out = round(principal * rng.uniform(0.3, 1.0))
    return [
        _event(rng, profile, start, "loan_disbursement", principal, loan_id=loan_id,
               due_date=due_date),
        _event(rng, profile, start + rng.randint(3_600, 12 * 3_600), "withdrawal", cash_out),
        _event(rng, profile, due_end - rng.randint(3_600, _DAY), "loan_repayment",
               rng.randint(10, 100) * 10_000, loan_id=loan_id),
    ]  # fmt: skip


_EPISODES: Final[Mapping[str, Callable[[random.Random, Mapping[str, Any], int], Episode]]] = {
    "fan_out": _fan_out,
    "structuring": _structuring,
    "rapid_pass_through": _rapid_pass_through,
    "fund_segregation": _fund_segregation,
    "precipitated_funds": _precipitated_funds,
    "account_takeover": _account_takeover,
    "blacklist": _blacklist,
    "borrow_and_vanish": _borrow_and_vanish,
}


def _normal_features(rng: random.Random, profile: Mapping[str, Any]) -> dict[str, Any]:
    event_type = rng.choices(_NORMAL_TYPES, _NORMAL_WEIGHTS)[0]
    amount = 0
    if event_type not in _WITHOUT_AMOUNT:
        amount = _usual_amount(rng, profile)
    count_1m = 1 if rng.random() < 0.9 else 2
    count_1h = count_1m + rng.randint(0, 3)
    count_24h = count_1h + rng.randint(0, 8)
    distinct_24h = min(count_24h, rng.randint(1, int(profile["counterparties"])))
    hour = round(rng.gauss(profile["hour"], 2.5)) % 24
    return _window_features(
        rng, profile, event_type, amount, hour,
        (count_1m, count_1h, count_24h),
        (min(count_1m, distinct_24h), min(count_1h, distinct_24h), distinct_24h),
    )  # fmt: skip


def _anomalous_features(
    rng: random.Random, profile: Mapping[str, Any], kind: str
) -> dict[str, Any]:
    usual = profile["usual"]
    amount = _usual_amount(rng, profile)
    hour = round(rng.gauss(profile["hour"], 2.5)) % 24
    counts = (1, 1 + rng.randint(0, 2), 3 + rng.randint(0, 6))
    distinct = (1, 1, min(counts[2], int(profile["counterparties"])))
    if kind == "large_amount":
        amount = round(usual * rng.uniform(50.0, 400.0))
        hour = rng.randrange(24)
    else:
        count_1m = rng.randint(12, 25)
        count_1h = count_1m + rng.randint(10, 40)
        counts = (count_1m, count_1h, count_1h + rng.randint(0, 20))
        d_1m = rng.randint(6, count_1m)
        distinct = (d_1m, d_1m + rng.randint(0, 5), d_1m + rng.randint(5, 10))
        hour = rng.randint(0, 5)
    return _window_features(rng, profile, "transfer", amount, hour, counts, distinct)


def _window_features(
    rng: random.Random,
    profile: Mapping[str, Any],
    event_type: str,
    amount: int,
    hour: int,
    counts: tuple[int, int, int],
    distinct: tuple[int, int, int],
) -> dict[str, Any]:
    x: dict[str, Any] = {
        "event_type": event_type,
        "amount_minor": amount,
        # The simulator's currency, whose limits the shipped configuration sets.
        "currency": "CNY",
        "is_outflow": event_type in _OUTFLOW,
        "is_inflow": event_type in _INFLOW,
        "hour": hour,
    }
    # Each window's sum is this event's amount plus the earlier ones in it, which
    # are nested: what was in the last minute was also in the last hour.
    earlier = 0
    previous = 1
    for window, count, cps in zip(("1m", "1h", "24h"), counts, distinct, strict=True):
        for _ in range(count - previous):
            earlier += _usual_amount(rng, profile)
        previous = max(previous, count)
        x[f"count_{window}"] = count
        x[f"sum_{window}"] = amount + earlier
        x[f"distinct_cp_{window}"] = cps
    return x


# -- derived stages: labelled records ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LabelledRecord:
    """One record stage 1 forwards to a derived stage, and the alert it should raise.

    ``record`` has the keys ``streams.stages.forwards_for`` gives it, ``"_key"``
    included, except that a flow ``edge`` lacks ``sender_origins``: stage 1
    reads them from the sender's flow sketch as it forwards the transfer, so
    whoever delivers the record adds them at that moment.
    """

    record: dict[str, Any]
    #: The stage detector that should alert on this record, or ``None``.
    anomaly: str | None = None
    #: Flow only: the detector that should alert on this transfer's ``back`` record,
    #: processed at the sender right after the edge.
    back_anomaly: str | None = None


class _Timeline:
    """Records of one stage, handed out in event-time order (insertion order among equals)."""

    def __init__(self) -> None:
        self._items: list[tuple[int, int, LabelledRecord]] = []
        self._order = itertools.count()

    def add(self, ts: int, item: LabelledRecord) -> None:
        self._items.append((ts, next(self._order), item))

    def records(self) -> list[LabelledRecord]:
        return [item for _, _, item in sorted(self._items, key=lambda entry: entry[:2])]


def labelled_stage_records(stage: str, *, seed: int = 20_240_601) -> list[LabelledRecord]:
    """A seeded stream of records for one derived stage, with injected patterns.

    The records span :data:`STAGE_DAYS` days of ordinary traffic in event-time
    order, among which each pattern of :data:`STAGE_ANOMALY_KINDS` is injected
    a few times, built to cross the shipped thresholds of the detector of the
    same name, next to near misses that stay below them (a transfer paid back,
    a scatter over too few intermediaries, a family tablet, a second loan
    application, a payout days after the suspicious pledges). A record is
    labelled with the detector that should alert on it; the others of an
    episode are context and labelled ``None``.

    * ``flow``: customers pay a few contacts further down one ordering of the
      accounts, so their transfers close no ring; rings of 3 to 6 accounts in
      shuffled order (the money keeping its size, less each member's cut),
      friends paying each other round with unrelated amounts (no alert),
      scatter-gathers, hubs and fan-ins are injected.
    * ``identity``: customers with their own device, phone and national ID,
      logins and the odd loan; device, phone and national-ID farms and loan
      stacking are injected.
    * ``project``: honest projects with pledges from established backers, a
      few newcomers and refunds, then a payout; projects pledged to by
      brand-new or device-sharing accounts (paid out soon after, or days
      later), and pledges refunded en masse are injected.

    Parameters
    ----------
    stage
        ``flow``, ``identity`` or ``project``.
    seed
        Seed of every random choice: the same arguments give the same records.

    Examples
    --------
    >>> records = labelled_stage_records("identity", seed=1)
    >>> sorted({r.anomaly for r in records if r.anomaly})
    ['identity_reuse', 'loan_stacking']
    >>> records == labelled_stage_records("identity", seed=1)
    True
    >>> times = [r.record["ts"] for r in records]
    >>> times == sorted(times)
    True
    """
    builders = {"flow": _flow_records, "identity": _identity_records, "project": _project_records}
    if stage not in builders:
        message = f"unknown derived stage {stage!r}; expected one of {sorted(builders)}"
        raise ValueError(message)
    return builders[stage](random.Random(f"{stage}:{seed}"))


def stage_stream(stage: str, *, seed: int = 20_240_601) -> list[LabelledEvent]:
    """The features the stage's sketches compute for :func:`labelled_stage_records`.

    Records go through the sketches as the stage wires them (for flow,
    :class:`detectors.flow.InMemoryFlowStage`: each edge, its back record and
    every relay, before the next transfer). Each feature mapping is labelled
    like the record it came from (a flow back record like its transfer's
    ``back_anomaly``, a relay ``None``); ``account_id`` is the features'.

    Examples
    --------
    >>> stream = stage_stream("project", seed=1)
    >>> sorted({event.anomaly for event in stream if event.anomaly})
    ['pledge_churn', 'suspicious_payout', 'suspicious_pledging']
    >>> stream[0].x["record_kind"]
    'project'
    """
    records = labelled_stage_records(stage, seed=seed)
    out: list[LabelledEvent] = []
    if stage == "flow":
        flow = InMemoryFlowStage()
        for item in records:
            edge = item.record
            sender, ts = edge["sender"], edge["ts"]
            origins = edge_origins(flow.sketches.get(sender), sender, ts)
            every = flow.deliver({**edge, "sender_origins": origins})
            labels = [item.anomaly, item.back_anomaly]
            for index, x in enumerate(every):
                label = labels[index] if index < len(labels) else None
                out.append(LabelledEvent(str(x["account_id"]), x, label))
        return out
    new_sketch = IdentitySketch.new if stage == "identity" else ProjectSketch.new
    sketches: dict[str, Any] = {}
    for item in records:
        key = item.record["_key"]
        sketch = sketches.get(key)
        if sketch is None:
            sketch = sketches[key] = new_sketch()
        x = sketch.observe(item.record)
        out.append(LabelledEvent(str(x["account_id"]), x, item.anomaly))
    return out


def _flow_records(rng: random.Random) -> list[LabelledRecord]:
    timeline = _Timeline()
    numbers = itertools.count(1)

    def transfer(ts: int, sender: str, receiver: str, anomaly: str | None = None,
                 back_anomaly: str | None = None, amount: int | None = None) -> None:
        if amount is None:
            amount = max(100, round(rng.lognormvariate(math.log(200_000), 0.8)))
        record = {
            "_key": receiver, "kind": "edge", "event_id": f"tr-{next(numbers):05d}",
            "event_type": "transfer", "ts": ts, "sender": sender, "receiver": receiver,
            "amount_minor": amount, "currency": "CNY",
        }  # fmt: skip
        timeline.add(ts, LabelledRecord(record, anomaly, back_anomaly))

    def start() -> int:
        return rng.randrange(STREAM_START, _STAGE_END - 3 * _DAY)

    # Customers pay contacts further down one ordering only: no ring by accident.
    customers = 40
    contacts = {
        i: rng.sample(range(i + 1, customers), min(customers - i - 1, rng.randint(1, 3)))
        for i in range(customers - 1)
    }
    for _ in range(300):
        i = rng.randrange(customers - 1)
        at = rng.randrange(STREAM_START, _STAGE_END)
        transfer(at, f"cust-{i:03d}", f"cust-{rng.choice(contacts[i]):03d}")

    min_ring = int(_default("cycle", "min_ring", 3))
    for ring, length in enumerate(rng.sample(range(min_ring, min_ring + 4), 4)):
        members = [f"ring{ring}-{i}" for i in range(length)]
        # the money keeps its size round the ring, less each member's cut of 0.5 to 3%
        amounts = [rng.randint(300_000, 1_500_000)]
        for _ in range(length - 1):
            amounts.append(amounts[-1] * rng.randint(970, 995) // 1000)
        hops = [(members[i], members[(i + 1) % length], amounts[i]) for i in range(length)]
        rng.shuffle(hops)  # in any processing order, relays find the ring on its last transfer
        at = start()
        transfer(at, f"cust-{rng.randrange(customers):03d}", members[0])
        for number, (sender, receiver, amount) in enumerate(hops, start=1):
            at += rng.randint(_HOUR, 8 * _HOUR)
            transfer(at, sender, receiver, "cycle" if number == length else None, amount=amount)
    for ring in range(2):  # friends paying each other round: a ring of unrelated amounts
        members = [f"friends{ring}-{i}" for i in range(4)]
        at = start()
        for i, amount in enumerate([5_000, 120_000, 30_000, 800_000]):
            at += rng.randint(_HOUR, 8 * _HOUR)
            transfer(at, members[i], members[(i + 1) % 4], amount=amount)
    for pair in range(3):  # paid back: a ring of 2, below the shipped minimum
        at = start()
        transfer(at, f"pair{pair}-a", f"pair{pair}-b")
        transfer(at + rng.randint(_HOUR, _DAY), f"pair{pair}-b", f"pair{pair}-a")
    for chain in range(2):  # money moved on and on, never back
        at = start()
        for i in range(5):
            transfer(at + i * _HOUR, f"chain{chain}-{i}", f"chain{chain}-{i + 1}")

    min_vias = int(_default("scatter_gather", "min_vias", 3))
    for episode, vias in enumerate([min_vias, min_vias + rng.randint(1, 3), min_vias - 1]):
        origin, collector = f"sg{episode}-origin", f"sg{episode}-collector"
        mules = [f"sg{episode}-mule-{i}" for i in range(vias)]
        at = start()
        for mule in mules:
            at += rng.randint(300, 1_800)
            transfer(at, origin, mule)
        at += 2 * _HOUR
        for number, mule in enumerate(mules, start=1):
            at += rng.randint(600, _HOUR)
            transfer(at, mule, collector, "scatter_gather" if number >= min_vias else None)

    min_in = int(_default("gather_scatter", "min_in", 5))
    min_out = int(_default("gather_scatter", "min_out", 5))
    sizes = [(min_in + rng.randint(0, 3), min_out + rng.randint(0, 3)) for _ in range(2)]
    for episode, (n_in, n_out) in enumerate([*sizes, (min_in + 2, min_out - 2)]):
        hub = f"gs{episode}-hub"
        moves = [(True, f"gs{episode}-payer-{i}") for i in range(n_in)]
        moves += [(False, f"gs{episode}-payee-{i}") for i in range(n_out)]
        rng.shuffle(moves)
        payers: set[str] = set()
        payees: set[str] = set()
        at = start()
        for incoming, other in moves:
            at += rng.randint(600, 2 * _HOUR)
            (payers if incoming else payees).add(other)
            hub_seen = len(payers) >= min_in and len(payees) >= min_out
            label = "gather_scatter" if hub_seen else None
            if incoming:
                transfer(at, other, hub, anomaly=label)
            else:
                transfer(at, hub, other, back_anomaly=label)

    max_senders = int(_default("fan_in", "max_senders", 20))
    plans = [  # (senders, most seconds between two of them)
        (max_senders + rng.randint(0, 8), 1_800),
        (max_senders + rng.randint(0, 8), 1_800),
        (max_senders - 5, 1_800),
        (max_senders + 4, 2 * _DAY // max_senders),  # spread: no day holds max_senders of them
    ]
    for episode, (senders, gap) in enumerate(plans):
        collector = f"fi{episode}-collector"
        at = start()
        for number in range(1, senders + 1):
            at += rng.randint(gap // 2, gap)
            hit = number >= max_senders and gap * max_senders < _DAY
            transfer(at, f"fi{episode}-sender-{number}", collector, "fan_in" if hit else None)
    return timeline.records()


def _identity_records(rng: random.Random) -> list[LabelledRecord]:
    timeline = _Timeline()
    numbers = itertools.count(1)

    def event(ts: int, event_type: str, account: str, pii: Mapping[str, str],
              amount: int | None = None, labels: Mapping[str, str] | None = None) -> None:
        """One record per identifier the event carries, as stage 1 forwards them."""
        event_id = f"ev-{next(numbers):05d}"
        for kind in IDENTITY_KINDS:
            digest = pii.get(kind)
            if not digest:
                continue
            record = {
                "_key": f"{kind}:{digest}", "kind": "identity", "identity_kind": kind,
                "event_id": event_id, "event_type": event_type, "ts": ts, "account_id": account,
                "amount_minor": amount, "currency": "CNY" if amount is not None else None,
            }  # fmt: skip
            timeline.add(ts, LabelledRecord(record, (labels or {}).get(kind)))

    def start() -> int:
        return rng.randrange(STREAM_START, _STAGE_END - 5 * _DAY)

    people = [
        {"account": f"cust-{i:03d}", "device_id": _hex(rng), "phone": _hex(rng),
         "national_id": _hex(rng)}
        for i in range(60)
    ]  # fmt: skip
    for i in range(0, 6, 2):  # couples share a phone: 2 accounts, below the shipped limit
        people[i + 1]["phone"] = people[i]["phone"]
    tablets: dict[str, str] = {}
    for _ in range(3):  # a family tablet: up to 4 accounts, below the shipped limit
        tablet = _hex(rng)
        for person in rng.sample(people[10:], rng.randint(2, 4)):
            tablets[person["account"]] = tablet
    for person in people:
        account = person["account"]
        opened = STREAM_START - _DAY
        if rng.random() < 0.2:
            opened = rng.randrange(STREAM_START, _STAGE_END - 4 * _DAY)
            event(opened, "account_opened", account, person)
        for _ in range(rng.randint(2, 8)):
            device = tablets.get(account, person["device_id"])
            pii = {"device_id": person["device_id"] if rng.random() < 0.7 else device}
            if rng.random() < 0.3:
                pii["phone"] = person["phone"]
            event(rng.randrange(opened + 60, _STAGE_END), "login", account, pii)
        if rng.random() < 0.35:
            amount = rng.randint(50, 500) * 10_000
            applied = rng.randrange(max(opened, STREAM_START) + 60, _STAGE_END - 3 * _DAY)
            event(applied, "loan_application", account, person, amount)
            if rng.random() < 0.3:  # applied again after a rejection: 2, below the limit
                event(applied + rng.randint(_HOUR, 3 * _DAY), "loan_application", account,
                      person, amount)  # fmt: skip
            if rng.random() < 0.6:
                event(applied + rng.randint(_HOUR, 2 * _DAY), "loan_disbursement", account,
                      {"phone": person["phone"], "national_id": person["national_id"]}, amount)

    limits = {**DEFAULT_MIN_ACCOUNTS, **_default("identity_reuse", "min_accounts", {})}
    # Farms: accounts opened on one device, phone or national ID; the last one on a device
    # and a phone at once, as rings often are.
    farms = [("device_id",), ("phone",), ("national_id",), ("device_id", "phone")]
    for farm, kinds in enumerate(farms):
        shared = {kind: _hex(rng) for kind in kinds}
        accounts = [f"farm{farm}-{i}" for i in range(max(limits[k] for k in kinds)
                                                      + rng.randint(0, 3))]  # fmt: skip
        at = start()
        for number, account in enumerate(accounts, start=1):
            at += rng.randint(2 * _HOUR, 10 * _HOUR)
            pii = {"device_id": _hex(rng), "phone": _hex(rng), "national_id": _hex(rng), **shared}
            labels = {kind: "identity_reuse" for kind in kinds if number >= limits[kind]}
            event(at, "account_opened", account, pii, labels=labels)
        if "national_id" not in kinds:  # the farm's accounts log in again: no longer new
            for _ in range(len(accounts)):
                later_at = at + rng.randint(_HOUR, 2 * _DAY)
                event(later_at, "login", rng.choice(accounts), shared)

    max_applications = int(_default("loan_stacking", "max_applications", 3))
    max_disbursements = int(_default("loan_stacking", "max_disbursements", 2))
    counted = tuple(_default("loan_stacking", "identity_kinds", ("national_id", "phone")))
    for stacker in range(2):
        person = {"device_id": _hex(rng), "phone": _hex(rng), "national_id": _hex(rng)}
        accounts = [f"stack{stacker}-a", f"stack{stacker}-b"]
        later = ["loan_application"] * (max_applications + rng.randint(0, 2))
        later += ["loan_disbursement"] * (max_disbursements + rng.randint(0, 1))
        rng.shuffle(later)
        applications = disbursements = 0
        at = start()
        for loan in ["loan_application", *later]:
            at += rng.randint(2 * _HOUR, 14 * _HOUR)  # all within 4 days: one loan window
            applications += loan == "loan_application"
            disbursements += loan == "loan_disbursement"
            stacked = applications >= max_applications or disbursements >= max_disbursements
            stacking = {kind: "loan_stacking" for kind in counted} if stacked else None
            pii = dict(person)
            if loan == "loan_disbursement":
                del pii["device_id"]
            event(at, loan, rng.choice(accounts), pii, rng.randint(50, 500) * 10_000, stacking)
    return timeline.records()


@dataclass(frozen=True, slots=True)
class _Backing:
    """One pledge (or the refund of one) as the project generator plans it."""

    ts: int
    account: str
    amount: int
    device: str | None
    account_events: int


def _project_records(rng: random.Random) -> list[LabelledRecord]:
    timeline = _Timeline()
    numbers = itertools.count(1)
    newcomers = itertools.count(1)
    brand_new = DEFAULT_PROJECT_PARAMS.new_account_events

    def record(event_type: str, project: str, backing: _Backing,
               anomaly: str | None = None) -> None:
        """What stage 1 forwards for one pledge, refund or payout."""
        item = {
            "_key": project, "kind": "project", "event_type": event_type,
            "event_id": f"cf-{next(numbers):05d}", "ts": backing.ts,
            "account_id": backing.account, "amount_minor": backing.amount, "currency": "CNY",
            "device_id_hash": backing.device, "account_events": backing.account_events,
            "project_id": project,
        }  # fmt: skip
        timeline.add(backing.ts, LabelledRecord(item, anomaly))

    backers = [(f"backer-{i:03d}", _hex(rng), rng.randint(brand_new + 3, 300)) for i in range(150)]

    def honest(ts: int) -> _Backing:
        amount = rng.randint(50, 500) * 100
        if rng.random() < 0.08:  # a newcomer backs a project: brand new, and honest
            account = f"newcomer-{next(newcomers):03d}"
            return _Backing(ts, account, amount, _hex(rng), rng.randint(0, brand_new))
        account, device, events = rng.choice(backers)
        return _Backing(ts, account, amount, device, events)

    def suspicion(pledges: Sequence[_Backing]) -> tuple[int, float, int]:
        """Suspicious pledges, their share of the money and the time of the last one.

        As the sketch defines them: from a brand-new account, or from a device
        another pledging account used.
        """
        by_device: dict[str, set[str]] = {}
        for p in pledges:
            if p.device:
                by_device.setdefault(p.device, set()).add(p.account)
        shared = {device for device, accounts in by_device.items() if len(accounts) > 1}
        flagged = [p for p in pledges if p.account_events <= brand_new or p.device in shared]
        total = sum(p.amount for p in pledges)
        share = sum(p.amount for p in flagged) / total if total else 0.0
        return len(flagged), share, max((p.ts for p in flagged), default=0)

    def start() -> int:
        return rng.randrange(STREAM_START, _STAGE_END - 6 * _DAY)

    for number in range(8):  # honest projects, a few refunds, then the payout
        project = f"proj-{number}"
        begin = start()
        pledges = [honest(begin + rng.randrange(4 * _DAY)) for _ in range(rng.randint(12, 25))]
        for pledge in pledges:
            record("pledge", project, pledge)
        refunds = 4 if number == 0 else rng.randint(0, 2)  # 4: one short of the shipped limit
        for pledge in rng.sample(pledges, refunds):
            refund = _Backing(pledge.ts + rng.randint(_HOUR, _DAY), pledge.account,
                              pledge.amount, None, pledge.account_events)  # fmt: skip
            record("pledge_refund", project, refund)
        paid_at = max(p.ts for p in pledges) + rng.randint(_DAY, 2 * _DAY)
        total = sum(p.amount for p in pledges)
        record("project_payout", project, _Backing(paid_at, f"owner-{project}", total, None, 40))

    min_pledges = int(_default("suspicious_pledging", "min_pledges", 10))
    min_share = float(_default("suspicious_pledging", "min_share", 0.5))
    payout_pledges = int(_default("suspicious_payout", "min_pledges", 5))
    payout_share = float(_default("suspicious_payout", "min_share", 0.5))
    max_delay = int(_default("suspicious_payout", "max_delay_seconds", 3 * _DAY))
    plans = [  # (fake pledges, hours from the last pledge to the payout)
        (min_pledges + rng.randint(0, 5), rng.randint(6, 30)),
        (min_pledges + rng.randint(0, 5), rng.randint(6, 30)),
        (payout_pledges + rng.randint(0, 3), rng.randint(2, 20)),
        (payout_pledges + rng.randint(0, 3), max_delay // _HOUR + rng.randint(24, 48)),
    ]
    for number, (fakes, delay_hours) in enumerate(plans):
        project = f"fake-{number}"
        devices = [_hex(rng) for _ in range(2)]
        at = start()
        pledges = [honest(at + i * _HOUR) for i in range(3)]
        pending: list[tuple[str, str | None, int]] = []  # (account, device, account_events)
        pending += [("honest", None, 0)] * rng.randint(0, 3)
        for i in range(fakes):
            if i % 3 == 2:  # an established account on one of the two devices of the ring
                pending.append((f"{project}-ring-{i}", rng.choice(devices), rng.randint(10, 60)))
            else:
                pending.append((f"{project}-new-{i}", _hex(rng), rng.randint(0, brand_new)))
        rng.shuffle(pending)
        at += 3 * _HOUR
        for account, device, events in pending:
            at += rng.randint(600, 3 * _HOUR)  # at most two days in all: one window
            amount = rng.randint(500, 1_500) * 100
            pledges.append(honest(at) if account == "honest" else
                           _Backing(at, account, amount, device, events))  # fmt: skip
        for index, pledge in enumerate(pledges):
            count, share, _ = suspicion(pledges[: index + 1])
            hit = count >= min_pledges and share >= min_share
            record("pledge", project, pledge, "suspicious_pledging" if hit else None)
        count, share, last_suspicious = suspicion(pledges)
        paid_at = at + delay_hours * _HOUR
        hit = count >= payout_pledges and share >= payout_share
        hit = hit and paid_at - last_suspicious <= max_delay
        total = sum(p.amount for p in pledges)
        record("project_payout", project, _Backing(paid_at, f"owner-{project}", total, None, 5),
               "suspicious_payout" if hit else None)

    min_refunds = int(_default("pledge_churn", "min_refunds", 5))
    min_ratio = float(_default("pledge_churn", "min_churn_ratio", 0.3))
    for number in range(2):  # pledges made to be refunded
        project = f"churn-{number}"
        at = start()
        pledges = []
        for _ in range(rng.randint(12, 20)):
            at += rng.randint(600, 2 * _HOUR)
            pledges.append(honest(at))
            record("pledge", project, pledges[-1])
        # Each refund goes back to an account that pledged in the window: churn.
        for churn, pledge in enumerate(rng.sample(pledges, min_refunds + rng.randint(1, 5)), 1):
            at += rng.randint(600, 3 * _HOUR)
            hit = churn >= min_refunds and churn / len(pledges) >= min_ratio
            refund = _Backing(at, pledge.account, pledge.amount, None, pledge.account_events)
            record("pledge_refund", project, refund, "pledge_churn" if hit else None)
    return timeline.records()


# -- helpers -------------------------------------------------------------------------------------


def _score(detector: Detector | KeyedDetector[Any], x: Features, state: Any) -> float:
    if isinstance(detector, KeyedDetector):
        return detector.score_one(x, state)
    return detector.score_one(x)


@dataclass(slots=True)
class _Replay:
    scores: list[float]
    findings: list[Finding | None]
    states: dict[str, Any]


def _replay(
    alerter: ThresholdAlerter,
    events: Sequence[LabelledEvent],
    states: dict[str, Any] | None = None,
) -> _Replay:
    """Score and process every event as the worker would, one state per account."""
    states = {} if states is None else states
    scores: list[float] = []
    findings: list[Finding | None] = []
    detector = alerter.detector
    for event in events:
        state = states.get(event.account_id)
        if isinstance(detector, KeyedDetector) and state is None:
            state = detector.new_state()
        scores.append(_score(detector, event.x, state))
        finding, states[event.account_id] = alerter.process_one(event.x, state)
        findings.append(finding)
    return _Replay(scores, findings, states)


def stage_of(detector: object) -> str | None:
    """The derived stage a detector (or detector class) runs in, ``None`` for the account stage.

    Examples
    --------
    >>> from detectors.flow import Cycle
    >>> stage_of(Cycle), stage_of(Cycle()), stage_of(object())
    ('flow', 'flow', None)
    """
    stage = getattr(detector, "stage", None)
    return stage if isinstance(stage, str) else None


def _events_for(alerter: ThresholdAlerter) -> list[LabelledEvent]:
    """The labelled stream a check runs on: the stage's features for a stage detector."""
    stage = stage_of(alerter.detector)
    return labelled_stream() if stage is None else stage_stream(stage)


def _first_difference(left: Sequence[float], right: Sequence[float]) -> str:
    for index, (a, b) in enumerate(zip(left, right, strict=True)):
        if a != b:
            return f"event {index}: {a!r} != {b!r}"
    return "none"


# -- the checks ----------------------------------------------------------------------------------


def check_seeded_repeatability(factory: AlerterFactory) -> None:
    """Two fresh alerters fed the same events give the same finite, non-negative scores.

    The stream is generated twice, so for a stage detector this covers its
    stage's sketches too.
    """
    first = _replay(factory(), _events_for(factory())).scores
    second = _replay(factory(), _events_for(factory())).scores
    assert first == second, f"scores differ between runs at {_first_difference(first, second)}"
    for index, score in enumerate(first):
        assert isinstance(score, float), f"event {index}: score {score!r} is not a float"
        assert math.isfinite(score) and score >= 0.0, f"event {index}: score {score!r}"


def check_clone_is_fresh(factory: AlerterFactory) -> None:
    """``clone()`` keeps the parameters and forgets what was learnt, without sharing state."""
    trained = factory()
    events = _events_for(trained)
    _replay(trained, events)
    detector = trained.detector
    clone = detector.clone()
    assert type(clone) is type(detector)
    assert repr(clone) == repr(detector), f"{clone!r} != {detector!r}"
    if isinstance(detector, KeyedDetector):
        fresh_detector = factory().detector
        assert isinstance(clone, KeyedDetector)
        assert isinstance(fresh_detector, KeyedDetector)
        assert clone.new_state() == fresh_detector.new_state()
        return
    assert isinstance(clone, Detector)
    before = detector.snapshot()
    cloned = _replay(
        ThresholdAlerter(clone, trained.threshold, learn_flagged=trained.learn_flagged), events
    ).scores
    fresh = _replay(factory(), events).scores
    assert cloned == fresh, f"the clone is not fresh: {_first_difference(cloned, fresh)}"
    assert detector.snapshot() == before, "training the clone changed the original"


def check_state_json_round_trip(factory: AlerterFactory) -> None:
    """Keyed state survives JSON (orjson and the standard library) with identical next scores."""
    events = labelled_stream()
    half = len(events) // 2
    alerter = factory()
    states = _replay(alerter, events[:half]).states
    for codec, dumps, loads in (
        ("orjson", orjson.dumps, orjson.loads),
        ("json", json.dumps, json.loads),
    ):
        restored = {account: loads(dumps(state)) for account, state in states.items()}
        assert restored == states, f"{codec}: states changed in a round trip"
        # A keyed detector may keep global state as well (learnt population limits):
        # both replays start from the same.
        snapshot = alerter.detector.snapshot()
        original = _replay(alerter, events[half:], copy.deepcopy(states)).scores
        if snapshot is not None:
            alerter.detector.restore(loads(dumps(snapshot)))
        after = _replay(alerter, events[half:], restored).scores
        assert original == after, (
            f"{codec}: next scores differ at {_first_difference(original, after)}"
        )


def check_snapshot_restore(factory: AlerterFactory) -> None:
    """A global model restored from a snapshot scores the next events as the original does."""
    events = labelled_stream()
    half = len(events) // 2
    original = factory()
    assert isinstance(original.detector, Detector)
    _replay(original, events[:half])
    snapshot = original.detector.snapshot()
    restored = factory()
    assert isinstance(restored.detector, Detector)
    restored.detector.restore(snapshot)
    # The original runs on first: a snapshot that shared its live objects would
    # hand the restored model what the original learnt since.
    expected = _replay(original, events[half:]).scores
    actual = _replay(restored, events[half:]).scores
    assert expected == actual, f"next scores differ at {_first_difference(expected, actual)}"


def check_missing_optional_fields(factory: AlerterFactory) -> None:
    """Features with only the required keys, or one optional key missing, do not raise.

    A stage detector drops keys from the features of a record it alerts on, so
    that each key it reads goes missing once.
    """
    probe = factory()
    events = _events_for(probe)
    if stage_of(probe.detector) is None:
        full = next(e.x for e in events if e.anomaly is None and e.x["amount_minor"] > 0)
    else:
        targets = TARGET_KINDS.get(probe.name, ())
        full = next(e.x for e in events if e.anomaly in targets)
    sparse: list[dict[str, Any]] = [
        {"event_type": "login", "amount_minor": 0},
        {"event_type": "payment", "amount_minor": 12_345},
        {"event_type": "payment", "amount_minor": 1},
        {"event_type": "payment", "amount_minor": 10**17},
    ]
    sparse += [
        {k: v for k, v in full.items() if k != missing}
        for missing in full
        if missing not in REQUIRED_FEATURES
    ]
    fresh = factory()
    trained = factory()
    _replay(trained, events)
    for alerter in (fresh, trained):
        detector = alerter.detector
        for x in sparse:
            state = detector.new_state() if isinstance(detector, KeyedDetector) else None
            try:
                score = _score(detector, x, state)
                if isinstance(detector, KeyedDetector):
                    reasons = detector.explain_one(x, state, score)
                else:
                    reasons = detector.explain_one(x, score)
                alerter.process_one(x, state)
            except Exception as error:
                message = f"{error!r} on features {x}"
                raise AssertionError(message) from error
            assert math.isfinite(score), f"score {score!r} for {x}"
            assert reasons and all(isinstance(r, str) and r for r in reasons), reasons


def check_findings_have_reasons(factory: AlerterFactory) -> None:
    """Every finding names its detector, a valid severity and reasons with numbers in them."""
    alerter = factory()
    findings = [f for f in _replay(alerter, _events_for(alerter)).findings if f is not None]
    assert findings, "no finding on the labelled stream"
    for finding in findings:
        assert finding.detector == alerter.name
        assert finding.severity in SEVERITIES
        assert finding.score >= alerter.threshold
        assert finding.reasons, f"finding without reasons: {finding}"
        for reason in finding.reasons:
            assert any(c.isdigit() for c in reason), f"reason without a number: {reason!r}"


def check_beats_chance(factory: AlerterFactory) -> None:
    """Injected anomalies of the kinds a detector targets are flagged more often than normal events.

    The kinds are those of :data:`TARGET_KINDS` (every kind for a detector not
    listed there); anomalies of other kinds count neither way.
    """
    alerter = factory()
    targets = TARGET_KINDS.get(alerter.name, ANOMALY_KINDS)
    events = _events_for(alerter)
    findings = _replay(alerter, events).findings
    flagged = {True: 0, False: 0}
    totals = {True: 0, False: 0}
    for event, finding in zip(events, findings, strict=True):
        if event.anomaly is not None and event.anomaly not in targets:
            continue
        is_anomaly = event.anomaly is not None
        totals[is_anomaly] += 1
        flagged[is_anomaly] += finding is not None
    assert totals[True], f"no injected anomaly of the kinds {targets}"
    anomaly_rate = flagged[True] / totals[True]
    normal_rate = flagged[False] / totals[False]
    assert anomaly_rate > normal_rate, (
        f"flagged {anomaly_rate:.1%} of {totals[True]} anomalies"
        f" but {normal_rate:.1%} of {totals[False]} normal events"
    )


def check_flagged_not_learnt(factory: AlerterFactory) -> None:
    """By default, processing an event that is flagged leaves the model as it was."""
    alerter = factory()
    assert not alerter.learn_flagged, "the default must not learn flagged events"
    detector = alerter.detector
    states: dict[str, Any] = {}
    flagged = 0
    for event in labelled_stream():
        state = states.get(event.account_id)
        if isinstance(detector, KeyedDetector) and state is None:
            state = detector.new_state()
        if _score(detector, event.x, state) < alerter.threshold:
            _, states[event.account_id] = alerter.process_one(event.x, state)
            continue
        # Only about to be flagged: a snapshot of a large global model is not free.
        before = (
            copy.deepcopy(state) if isinstance(detector, KeyedDetector) else detector.snapshot()
        )
        finding, states[event.account_id] = alerter.process_one(event.x, state)
        assert finding is not None, f"score at the threshold but no finding: {event.x}"
        flagged += 1
        if isinstance(detector, KeyedDetector):
            after = states[event.account_id]
        else:
            after = detector.snapshot()
        assert after == before, f"the model learnt a flagged event: {event.x}"
    assert flagged, "no event was flagged, so nothing was checked"


def check_stateless(factory: AlerterFactory) -> None:
    """A stage detector keeps nothing between records: scores depend on the features alone.

    Its stage persists the sketches and nothing of the detector, so what a
    detector learnt would be lost at every restart and scores would differ
    after one.
    """
    events = _events_for(factory())
    half = len(events) // 2
    seasoned = factory()
    _replay(seasoned, events[:half])
    after_history = _replay(seasoned, events[half:]).scores
    fresh = _replay(factory(), events[half:]).scores
    assert after_history == fresh, (
        f"scores depend on earlier records: {_first_difference(after_history, fresh)}"
    )
    detector = seasoned.detector
    assert isinstance(detector, Detector), "a stage detector is a Detector, not a KeyedDetector"
    snapshot = detector.snapshot()
    assert snapshot is None, f"a stage detector has state its stage would lose: {snapshot!r}"


def check_ledger_learns_every_event(factory: AlerterFactory) -> None:
    """A detector keeping a ledger records every event, flagged or not.

    Its state holds facts (a balance, open loans, the population a learnt
    limit comes from), not a model an attack could teach: processing the
    stream with alerts must leave exactly the states (for a global detector,
    the snapshot) that learning every event gives.
    """
    alerter = factory()
    assert alerter.learn_flagged, "a detector keeping a ledger must learn the events it flags"
    events = labelled_stream()
    processed = _replay(alerter, events)
    assert any(processed.findings), "no event was flagged, so nothing was checked"
    detector = factory().detector
    if isinstance(detector, Detector):
        for event in events:
            detector.learn_one(event.x)
        processed_detector = alerter.detector
        assert isinstance(processed_detector, Detector)
        assert processed_detector.snapshot() == detector.snapshot(), (
            "the snapshot after alerting differs from the one learnt from every event"
        )
        return
    learnt: dict[str, Any] = {}
    for event in events:
        state = learnt.get(event.account_id)
        if state is None:
            state = detector.new_state()
        learnt[event.account_id] = detector.learn_one(event.x, state)
    for account, state in learnt.items():
        assert processed.states[account] == state, (
            f"{account}: the ledger after alerting differs from the one learnt from every event"
        )


def checks_for(alerter: ThresholdAlerter) -> list[Check]:
    """The checks that apply to ``alerter``'s kind of detector.

    A detector that keeps a ledger (class attribute ``keeps_ledger``) learns the
    events it flags, so :func:`check_ledger_learns_every_event` replaces
    :func:`check_flagged_not_learnt` for it. A stage detector (class attribute
    ``stage``) runs on its stage's features (:func:`stage_stream`) and must
    keep no state (:func:`check_stateless`); its stage's sketch snapshot and
    replay guard are checked where the stage is, in
    ``tests/support/stage_conformance.py``.
    """
    checks: list[Check] = [
        check_seeded_repeatability,
        check_clone_is_fresh,
        check_missing_optional_fields,
        check_findings_have_reasons,
        check_beats_chance,
    ]
    if stage_of(alerter.detector) is not None:
        checks.append(check_stateless)
        return checks
    if alerter.detector.keeps_ledger:
        checks.append(check_ledger_learns_every_event)
    else:
        checks.append(check_flagged_not_learnt)
    if isinstance(alerter.detector, KeyedDetector):
        checks.append(check_state_json_round_trip)
    else:
        checks.append(check_snapshot_restore)
    return checks


def check_id(check: Check) -> str:
    """The short name of a check in test ids: ``check_beats_chance`` -> ``beats_chance``."""
    return check.__name__.removeprefix("check_")


__all__ = [
    "ANOMALY_KINDS",
    "EPISODE_KINDS",
    "REQUIRED_FEATURES",
    "SINGLE_EVENT_KINDS",
    "STAGE_ANOMALY_KINDS",
    "STAGE_DAYS",
    "TARGET_KINDS",
    "AlerterFactory",
    "Check",
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
