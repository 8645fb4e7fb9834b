"""The account stage's labelled stream: seeded features with injected anomalies of known kind.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Final

from detectors.registry import DEFAULT_CONFIG

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


