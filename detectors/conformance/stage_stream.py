"""The derived stages' labelled records: rings, hubs, identity farms, stacked loans, fake backers.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from detectors.conformance.account_stream import (
    _DAY,
    _HOUR,
    _STAGE_END,
    STREAM_START,
    LabelledEvent,
    _default,
    _hex,
)
from detectors.conformance.flow_stage import InMemoryFlowStage
from detectors.crowdfunding import DEFAULT_PROJECT_PARAMS, ProjectSketch
from detectors.flow import edge_origins
from detectors.identity import DEFAULT_MIN_ACCOUNTS, IDENTITY_KINDS, IdentitySketch

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
    :class:`detectors.conformance.InMemoryFlowStage`: each edge, its back record and
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


