"""Identity risks in P2P lending: one person behind many accounts, many loans at once.

A fraud ring opens many accounts with one device, one phone number or one
national ID, and a borrower who stacks loans applies many times in a few
days, often from different accounts. Neither shows in one account's history;
both show in the history of the identity. The identity stage keeps one
:class:`IdentitySketch` per identity, keyed by ``"<identity_kind>:<hash>"``
(the worker only ever has HMAC hashes of device ids, phone numbers and
national IDs), and runs :class:`IdentityReuse` and :class:`LoanStacking` over
the features the sketch returns.

Record
------
``{"kind": "identity", "identity_kind": "device_id" | "phone" | "national_id",
"event_id", "event_type", "ts", "account_id", "amount_minor"}``, one per
personal identifier an event carries. ``features = sketch.observe(record)``.

Sketch and bounds
-----------------
* accounts: up to ``max_accounts`` (16) pairs ``[account_hash, last_seen_ts]``,
  the most recently seen, pruned ``2 * window_seconds`` behind the newest
  record;
* loans: up to ``max_loans`` (32) triples ``[ts, kind, event_hash]``
  (``kind`` 0 for an application, 1 for a disbursement), the most recent,
  pruned ``2 * loan_window_seconds`` behind the newest record. The event hash
  makes a record seen twice count once.

Hashes are 48-bit (:func:`detectors.flow.stable_hash`). JSON size: at most
``20 + 29 * max_accounts + 31 * max_loans`` bytes, 1,476 with the defaults
(:meth:`IdentityParams.max_state_bytes`), whatever the traffic.

Counts are taken in the densest window containing the record's time (see
:func:`detectors.timeline.densest_window`), so a record that arrives late is
placed among its neighbours in event time. An account counts at the last time
it was seen with the identity.

Features
--------
=================================  =======================================================
``record_kind``                    ``"identity"``
``event_id``, ``event_type``,      of the source event
``ts``, ``amount_minor``
``account_id``                     the account of the event
``identity_kind``                  ``device_id``, ``phone`` or ``national_id``
``identity_accounts``              distinct accounts seen with the identity in the densest
                                   ``window_seconds`` around the event, this one included
                                   (at most ``max_accounts``)
``identity_accounts_span_seconds`` first to last of those sightings
``identity_account_is_new``        the account was not among those the sketch remembered
``identity_window_seconds``        the accounts window, for reasons
``loan_applications_window``       loan applications with the identity in the densest
                                   ``loan_window_seconds`` around the event
``loan_applications_span_seconds`` first to last of them
``loan_disbursements_window``      loan disbursements, likewise
``loan_disbursements_span_seconds`` first to last of them
``loan_window_seconds``            the loan window, for reasons
=================================  =======================================================

Examples
--------
>>> sketch = IdentitySketch.new()
>>> day = 86_400
>>> for i, account in enumerate(["acct-1", "acct-2", "acct-3"]):
...     x = sketch.observe({"kind": "identity", "identity_kind": "national_id",
...                         "event_id": f"e{i}", "event_type": "loan_application",
...                         "ts": 1_709_251_200 + i * day, "account_id": account,
...                         "amount_minor": 500_000})
>>> x["identity_accounts"], x["loan_applications_window"]
(3, 3)
>>> print(*IdentityReuse().explain_one(x, IdentityReuse().score_one(x)))
national ID shared by 3 accounts within 2 d (limit 3 within 30 d)
"""

from __future__ import annotations

from bisect import insort
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar, Final

from detectors.base import Detector, Features
from detectors.flow import stable_hash
from detectors.params import optional_int, positive_int, string_set
from detectors.timeline import KEPT_WINDOWS, densest_window, format_duration

#: First element of :meth:`IdentitySketch.to_state`.
STATE_FORMAT: Final = 1
#: The identifiers the worker hashes, and how a reason names each.
IDENTITY_KINDS: Final[Mapping[str, str]] = MappingProxyType(
    {"device_id": "device", "phone": "phone number", "national_id": "national ID"}
)
#: Loan events counted, by their code in the sketch.
LOAN_EVENTS: Final[Mapping[str, int]] = MappingProxyType(
    {"loan_application": 0, "loan_disbursement": 1}
)
_LOAN_WORDS: Final = ("loan applications", "loan disbursements")
_LOAN_FEATURES: Final = ("loan_applications", "loan_disbursements")

# A loan in memory and in JSON: [ts, kind, event_hash].
_TS, _KIND, _EVENT = range(3)


@dataclass(frozen=True, slots=True)
class IdentityParams:
    """The bounds of every :class:`IdentitySketch` of the stage.

    Parameters
    ----------
    max_accounts
        Most accounts remembered per identity.
    window_seconds
        Width of the window in which accounts sharing the identity are counted.
    loan_window_seconds
        Width of the window in which loan applications and disbursements are counted.
    max_loans
        Most loan events remembered per identity.
    """

    max_accounts: int = 16
    window_seconds: int = 30 * 86_400
    loan_window_seconds: int = 7 * 86_400
    max_loans: int = 32

    def __post_init__(self) -> None:
        for name in ("max_accounts", "window_seconds", "loan_window_seconds", "max_loans"):
            positive_int(name, getattr(self, name))

    def max_state_bytes(self) -> int:
        """Upper bound of ``len(orjson.dumps(sketch.to_state()))``.

        Examples
        --------
        >>> IdentityParams().max_state_bytes()
        1476
        """
        header = len("[1,,[],[]]") + 10
        account = 1 + 15 + 1 + 10 + 1 + 1  # [hash, ts],
        loan = 1 + 10 + 1 + 1 + 1 + 15 + 1 + 1  # [ts, kind, hash],
        return header + account * self.max_accounts + loan * self.max_loans


DEFAULT_IDENTITY_PARAMS: Final = IdentityParams()


class IdentitySketch:
    """What the stage remembers about one identity (a device, phone or national-ID hash).

    Parameters
    ----------
    params
        The bounds, shared by every sketch of the stage.
    """

    __slots__ = ("accounts", "latest_ts", "loans", "params")

    def __init__(self, params: IdentityParams = DEFAULT_IDENTITY_PARAMS) -> None:
        self.params = params
        self.latest_ts = 0
        #: account hash -> last time seen with the identity
        self.accounts: dict[int, int] = {}
        #: [ts, kind, event_hash], sorted
        self.loans: list[list[int]] = []

    @classmethod
    def new(cls, params: IdentityParams = DEFAULT_IDENTITY_PARAMS) -> IdentitySketch:
        """An empty sketch."""
        return cls(params)

    def to_state(self) -> list[Any]:
        """A JSON-able list; :meth:`from_state` rebuilds an equal sketch from it."""
        return [
            STATE_FORMAT,
            self.latest_ts,
            [[account, seen] for account, seen in sorted(self.accounts.items())],
            [list(loan) for loan in self.loans],
        ]

    @classmethod
    def from_state(
        cls, state: Sequence[Any], params: IdentityParams = DEFAULT_IDENTITY_PARAMS
    ) -> IdentitySketch:
        """The sketch :meth:`to_state` described."""
        if not isinstance(state, list | tuple) or len(state) != 4 or state[0] != STATE_FORMAT:
            head = state[:1] if isinstance(state, list | tuple) else state
            message = f"unknown identity sketch state format: {head!r}"
            raise ValueError(message)
        _, latest_ts, accounts, loans = state
        sketch = cls(params)
        sketch.latest_ts = latest_ts
        sketch.accounts = {account: seen for account, seen in accounts}
        sketch.loans = [[ts, kind, event] for ts, kind, event in loans]
        return sketch

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, IdentitySketch):
            return NotImplemented
        return self.params == other.params and self.to_state() == other.to_state()

    __hash__ = None  # type: ignore[assignment]  # mutable: not hashable

    def __repr__(self) -> str:
        return f"IdentitySketch(accounts={len(self.accounts)}, loans={len(self.loans)})"

    def observe(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """Count one record's account and loan event; the identity's features.

        Raises ``ValueError`` when the record lacks an int ``ts``, an
        ``account_id`` or a known ``identity_kind``: records are built by the
        worker, so a bad one is a bug for the stage to log and skip.
        """
        ts = optional_int(record.get("ts"))
        account = record.get("account_id")
        kind = record.get("identity_kind")
        if ts is None or not isinstance(account, str) or not account or kind not in IDENTITY_KINDS:
            message = (
                "an identity record needs an int ts, an account_id and an identity_kind in"
                f" {list(IDENTITY_KINDS)}, not ts={record.get('ts')!r} account_id={account!r}"
                f" identity_kind={kind!r}"
            )
            raise ValueError(message)
        event_type = record.get("event_type")
        amount = optional_int(record.get("amount_minor"))
        self._advance(ts)
        account_key = stable_hash(account)
        is_new = account_key not in self.accounts
        self._add_account(account_key, ts)
        loan_kind = LOAN_EVENTS.get(event_type) if isinstance(event_type, str) else None
        event_id = record.get("event_id")
        if loan_kind is not None and isinstance(event_id, str) and event_id:
            self._add_loan(ts, loan_kind, stable_hash(event_id))
        features: dict[str, Any] = {
            "record_kind": "identity",
            "event_id": event_id,
            "event_type": event_type,
            "ts": ts,
            "amount_minor": amount if amount is not None and amount > 0 else 0,
            "account_id": account,
            "identity_kind": kind,
            "identity_account_is_new": is_new,
            "identity_window_seconds": self.params.window_seconds,
            "loan_window_seconds": self.params.loan_window_seconds,
        }
        others = [seen for key, seen in self.accounts.items() if key != account_key]
        count, span = _densest(others, ts, self.params.window_seconds, anchor_counts=True)
        features["identity_accounts"] = count
        features["identity_accounts_span_seconds"] = span
        for code, name in enumerate(_LOAN_FEATURES):
            times = [loan[_TS] for loan in self.loans if loan[_KIND] == code]
            this_one = loan_kind == code
            if this_one and ts in times:
                times.remove(ts)  # the anchor stands for this very event
            count, span = _densest(times, ts, self.params.loan_window_seconds, this_one)
            features[f"{name}_window"] = count
            features[f"{name}_span_seconds"] = span
        return features

    def _advance(self, ts: int) -> None:
        if ts <= self.latest_ts:
            return
        self.latest_ts = ts
        oldest = ts - KEPT_WINDOWS * self.params.window_seconds
        for key in [k for k, seen in self.accounts.items() if seen < oldest]:
            del self.accounts[key]
        oldest_loan = ts - KEPT_WINDOWS * self.params.loan_window_seconds
        if self.loans and self.loans[0][_TS] < oldest_loan:
            self.loans = [loan for loan in self.loans if loan[_TS] >= oldest_loan]

    def _add_account(self, key: int, ts: int) -> None:
        self.accounts[key] = max(ts, self.accounts.get(key, ts))
        excess = len(self.accounts) - self.params.max_accounts
        if excess > 0:
            others = sorted((seen, k) for k, seen in self.accounts.items() if k != key)
            for _, k in others[:excess]:
                del self.accounts[k]

    def _add_loan(self, ts: int, kind: int, event: int) -> None:
        if any(loan[_EVENT] == event for loan in self.loans):
            return
        insort(self.loans, [ts, kind, event])
        if len(self.loans) > self.params.max_loans:
            oldest = next(i for i, loan in enumerate(self.loans) if loan[_EVENT] != event)
            del self.loans[oldest]


def _densest(times: list[int], ts: int, width: int, anchor_counts: bool) -> tuple[int, int]:
    """(count, span) of the densest window of ``width`` containing ``ts`` among ``times``.

    ``anchor_counts`` says whether ``ts`` is itself one of the things counted.
    """
    ordered = sorted(times)
    insort(ordered, ts)
    anchor = ordered.index(ts)
    lo, hi = densest_window(ordered, anchor, width)
    count = hi - lo - (0 if anchor_counts else 1)
    if count <= 0:
        return 0, 0
    return count, ordered[hi - 1] - ordered[lo]


# -- detectors ------------------------------------------------------------------------------------

#: Accounts per identity at which :class:`IdentityReuse` alerts by default: a family
#: may share a tablet, rarely a national ID.
DEFAULT_MIN_ACCOUNTS: Final[Mapping[str, int]] = MappingProxyType(
    {"national_id": 3, "phone": 3, "device_id": 5}
)


def _count(x: Features, key: str) -> int:
    value = optional_int(x.get(key))
    return value if value is not None and value > 0 else 0


def _kind_words(x: Features) -> str:
    kind = x.get("identity_kind")
    return IDENTITY_KINDS.get(kind, "identity") if isinstance(kind, str) else "identity"


class IdentityReuse(Detector):
    """One identity behind many distinct accounts.

    Scores ``identity_accounts / min_accounts[identity_kind]`` when the
    event's account is new to the identity, so 1.0 or more means the limit of
    accounts within the sketch's window (30 days by default) is reached, once
    per account that reaches or passes it, not on every later login. Kinds
    left out of ``min_accounts`` score 0.0. Reasons name the kind of
    identifier, never its hash or value.

    Parameters
    ----------
    min_accounts
        Identity kind (``national_id``, ``phone``, ``device_id``) to the number of
        distinct accounts that scores 1.0 (at most 16, the accounts a sketch keeps).

    Examples
    --------
    >>> detector = IdentityReuse(min_accounts={"national_id": 3, "device_id": 5})
    >>> x = {"identity_kind": "national_id", "identity_accounts": 4,
    ...      "identity_account_is_new": True, "identity_accounts_span_seconds": 1_036_800,
    ...      "identity_window_seconds": 2_592_000}
    >>> detector.score_one(x)
    1.3333333333333333
    >>> print(*detector.explain_one(x, 1.3333333333333333))
    national ID shared by 4 accounts within 12 d (limit 3 within 30 d)
    >>> detector.score_one({**x, "identity_account_is_new": False})
    0.0
    >>> detector.score_one({**x, "identity_kind": "phone"})
    0.0
    """

    name: ClassVar[str] = "identity_reuse"
    stage: ClassVar[str] = "identity"

    def __init__(self, min_accounts: Mapping[str, int] = DEFAULT_MIN_ACCOUNTS) -> None:
        if not isinstance(min_accounts, Mapping) or not min_accounts:
            message = (
                "min_accounts must be a non-empty mapping of identity kind to limit,"
                f" not {min_accounts!r}"
            )
            raise ValueError(message)
        for kind, limit in min_accounts.items():
            if kind not in IDENTITY_KINDS:
                message = (
                    f"min_accounts: unknown identity kind {kind!r}; expected one of"
                    f" {list(IDENTITY_KINDS)}"
                )
                raise ValueError(message)
            positive_int(f"min_accounts[{kind!r}]", limit)
            if not 2 <= limit <= DEFAULT_IDENTITY_PARAMS.max_accounts:
                message = (
                    f"min_accounts[{kind!r}] must be between 2 and"
                    f" {DEFAULT_IDENTITY_PARAMS.max_accounts}, not {limit!r}"
                )
                raise ValueError(message)
        self.min_accounts = min_accounts

    def _limit(self, x: Features) -> int | None:
        kind = x.get("identity_kind")
        return self.min_accounts.get(kind) if isinstance(kind, str) else None

    def score_one(self, x: Features) -> float:
        limit = self._limit(x)
        if limit is None or x.get("identity_account_is_new") is False:
            return 0.0
        return _count(x, "identity_accounts") / limit

    def explain_one(self, x: Features, score: float) -> list[str]:
        noun = _kind_words(x)
        limit = self._limit(x)
        if limit is None:
            return [f"{noun}: not a kind of identity this detector limits"
                    f" ({len(self.min_accounts)} configured)"]
        accounts = _count(x, "identity_accounts")
        span = format_duration(_count(x, "identity_accounts_span_seconds"))
        window = format_duration(_count(x, "identity_window_seconds"))
        counted = "account" if accounts == 1 else "accounts"
        at_least = " or more" if accounts >= DEFAULT_IDENTITY_PARAMS.max_accounts else ""
        reason = (f"{noun} shared by {accounts}{at_least} {counted} within {span}"
                  f" (limit {limit} within {window})")
        if x.get("identity_account_is_new") is False:
            reason += "; this account was already known with it"
        return [reason]


class LoanStacking(Detector):
    """Many loan applications or disbursements for one borrower identity at once.

    On a loan application or disbursement of one of ``identity_kinds``,
    scores the larger of ``applications / max_applications`` and
    ``disbursements / max_disbursements`` within the sketch's loan window
    (7 days by default) around the event, whichever accounts they came from:
    1.0 or more means a limit is reached. Other events score 0.0.

    Parameters
    ----------
    max_applications
        Loan applications with one identity that score 1.0 (at most 32).
    max_disbursements
        Loan disbursements with one identity that score 1.0 (at most 32).
    identity_kinds
        The identity kinds that count: a borrower is best identified by national
        ID and phone; a device may be shared.

    Examples
    --------
    >>> detector = LoanStacking(max_applications=3, max_disbursements=2)
    >>> x = {"event_type": "loan_application", "identity_kind": "phone",
    ...      "loan_applications_window": 4, "loan_applications_span_seconds": 172_800,
    ...      "loan_disbursements_window": 1, "loan_window_seconds": 604_800}
    >>> detector.score_one(x)
    1.3333333333333333
    >>> print(*detector.explain_one(x, 1.3333333333333333))
    4 loan applications under one phone number within 2 d (limit 3 within 7 d)
    >>> detector.score_one({**x, "event_type": "login"})
    0.0
    """

    name: ClassVar[str] = "loan_stacking"
    stage: ClassVar[str] = "identity"

    def __init__(
        self,
        max_applications: int = 3,
        max_disbursements: int = 2,
        identity_kinds: Sequence[str] = ("national_id", "phone"),
    ) -> None:
        for name, value in (("max_applications", max_applications),
                            ("max_disbursements", max_disbursements)):
            positive_int(name, value)
            if value > DEFAULT_IDENTITY_PARAMS.max_loans:
                message = (
                    f"{name} must be at most {DEFAULT_IDENTITY_PARAMS.max_loans} (the loans a"
                    f" sketch keeps), not {value!r}"
                )
                raise ValueError(message)
        kinds = string_set("identity_kinds", identity_kinds, allow_empty=False)
        unknown = sorted(kinds - set(IDENTITY_KINDS))
        if unknown:
            message = f"identity_kinds: unknown {unknown}; expected some of {list(IDENTITY_KINDS)}"
            raise ValueError(message)
        self._kinds = kinds
        self.max_applications = max_applications
        self.max_disbursements = max_disbursements
        self.identity_kinds = identity_kinds

    def _ratios(self, x: Features) -> list[tuple[float, int, int, int, int]]:
        """(ratio, observed, limit, span, loan code) per loan kind."""
        limits = (self.max_applications, self.max_disbursements)
        out = []
        for code, (name, limit) in enumerate(zip(_LOAN_FEATURES, limits, strict=True)):
            observed = _count(x, f"{name}_window")
            out.append((observed / limit, observed, limit, _count(x, f"{name}_span_seconds"), code))
        return out

    def _applies(self, x: Features) -> bool:
        return x.get("event_type") in LOAN_EVENTS and x.get("identity_kind") in self._kinds

    def score_one(self, x: Features) -> float:
        if not self._applies(x):
            return 0.0
        return max(ratio for ratio, *_ in self._ratios(x))

    def explain_one(self, x: Features, score: float) -> list[str]:
        if not self._applies(x):
            return [f"not a loan event under one of the {len(self._kinds)} identity kinds counted"]
        noun = _kind_words(x)
        window = format_duration(_count(x, "loan_window_seconds"))
        ratios = sorted(self._ratios(x), key=lambda r: -r[0])
        reached = [r for r in ratios if r[0] >= 1.0] or ratios[:1]
        reasons = []
        for _, observed, limit, span, code in reached:
            words = _LOAN_WORDS[code] if observed != 1 else _LOAN_WORDS[code][:-1]
            reasons.append(f"{observed} {words} under one {noun} within {format_duration(span)}"
                           f" (limit {limit} within {window})")
        return reasons


__all__ = [
    "DEFAULT_IDENTITY_PARAMS",
    "DEFAULT_MIN_ACCOUNTS",
    "IDENTITY_KINDS",
    "LOAN_EVENTS",
    "STATE_FORMAT",
    "IdentityParams",
    "IdentityReuse",
    "IdentitySketch",
    "LoanStacking",
]
