"""What flow records carry: the paths they bring, read and checked, and the name of a ring.

An edge brings its sender's origins (``sender_origins``), a back or relay
record its receiver's destinations (``receiver_dests``): lists of paths, each
with the smallest and largest amount of its transfers. These helpers read and
check them, join the amounts of paths, and name a ring alike whichever of its
accounts finds it. The record kinds and their fields: ``docs/design.md``,
"Flow stage internals".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from detectors.hashing import stable_hash
from detectors.params import optional_int

#: Record kinds the flow stage handles.
RECORD_KINDS: Final = ("edge", "back", "relay")

# A carried origin: (hash, hops, first_ts, last_ts, lo, hi, account id or None).
_Origin = tuple[int, int, int, int, int, int, str | None]
# A carried destination: (hash, hops, first_ts, last_ts, low, lo, hi).
_Dest = tuple[int, int, int, int, int, int, int]


def gathered_origins(edge: Mapping[str, Any]) -> list[int]:
    """Hashes of the hop-1 origins an edge record carried (its back record lists them)."""
    rows = edge.get("sender_origins")
    if not isinstance(rows, list):
        return []
    return sorted({row[0] for row in rows if isinstance(row, list) and len(row) > 1
                   and row[1] == 1 and type(row[0]) is int})


def ring_key(length: int, first: int, last: int, lo: int, hi: int) -> str:
    """What names one ring whichever of its accounts finds it and in whatever order.

    Its length, first and last transfer times and smallest and largest
    amounts: the same for every account of the ring, unlike the record that
    happens to close it.

    Examples
    --------
    >>> ring_key(4, 1_709_251_200, 1_709_510_400, 90_000, 120_000)
    'ring:4:1709251200:1709510400:90000:120000'
    """
    return f"ring:{length}:{first}:{last}:{lo}:{hi}"


# -- records in -----------------------------------------------------------------------------------


def _extended(lo: int, hi: int, hops: int, amount: int,
              limit: int | None) -> tuple[int, int] | None:
    """The amount range of a path of ``hops`` transfers once a transfer of ``amount`` is added.

    ``None`` when the path fails the amount check (``limit`` is
    :attr:`FlowParams.amount_limit`): its amounts spread too far, or the
    transfer or the path (``hops > 0`` with ``lo`` 0) has no known amount, so
    no checked path can go through it. Without a limit the range is kept but
    never checked. Called for every carried entry: keep it cheap.
    """
    if limit is not None and (not amount or (hops and not lo)):
        return None
    if amount:
        if not lo or amount < lo:
            lo = amount
        if amount > hi:
            hi = amount
    if limit is not None and hi * 100 > lo * limit:
        return None
    return lo, hi


def _joined(amounts: tuple[int, int], lo: int, hi: int, hops: int,
            limit: int | None) -> tuple[int, int] | None:
    """Two paths' amount ranges as one (a ring), or ``None`` when it fails the check."""
    if hops and not lo:
        return None if limit is not None else amounts
    if not hops:
        return amounts
    joined = min(amounts[0], lo) if amounts[0] else lo, max(amounts[1], hi)
    if limit is not None and joined[1] * 100 > joined[0] * limit:
        return None
    return joined


def _transfer(record: Mapping[str, Any]) -> tuple[int, str, str]:
    ts = optional_int(record.get("ts"))
    sender = record.get("sender")
    receiver = record.get("receiver")
    if ts is None or not isinstance(sender, str) or not isinstance(receiver, str):
        message = (
            "a flow record needs an int ts and string sender and receiver, not"
            f" ts={record.get('ts')!r} sender={sender!r} receiver={receiver!r}"
        )
        raise ValueError(message)
    return ts, sender, receiver


def _amount(record: Mapping[str, Any]) -> int:
    amount = optional_int(record.get("amount_minor"))
    return amount if amount is not None and amount > 0 else 0


def _origins(raw: Any, account: str, ts: int) -> list[_Origin]:
    """Carried origins; the sender itself at hop 0 when missing.

    Rows are ``[hash, hops, first_ts, last_ts, lo, hi(, account_id)]``; rows
    of four or five items (with no amounts) are from before amounts were kept.
    """
    if raw is None:
        return [(stable_hash(account), 0, ts, ts, 0, 0, None)]
    out: list[_Origin] = []
    shape = "[hash, hops, first_ts, last_ts, lo, hi(, account_id)]"
    for item in _rows(raw, "sender_origins", shape):
        size = len(item)
        if size >= 6:
            lo, hi = _amounts(item, 4, "sender_origins", shape)
            name = item[6] if size == 7 and isinstance(item[6], str) else None
        else:
            lo = hi = 0
            name = item[4] if size == 5 and isinstance(item[4], str) else None
        out.append((item[0], item[1], item[2], item[3], lo, hi, name))
    return out


def _dests(raw: Any, account: str, ts: int) -> list[_Dest]:
    """Carried destinations; the receiver itself at hop 0 when missing.

    Rows are ``[hash, hops, first_ts, last_ts, low, lo, hi]``; rows of five
    items are from before amounts were kept.
    """
    if raw is None:
        key = stable_hash(account)
        return [(key, 0, ts, ts, key, 0, 0)]
    out: list[_Dest] = []
    shape = "[hash, hops, first_ts, last_ts, low, lo, hi]"
    for item in _rows(raw, "receiver_dests", shape):
        low = optional_int(item[4]) if len(item) in (5, 7) else None
        if low is None:
            message = f"receiver_dests entries must be {shape}, not {item!r}"
            raise ValueError(message)
        lo, hi = _amounts(item, 5, "receiver_dests", shape) if len(item) == 7 else (0, 0)
        out.append((item[0], item[1], item[2], item[3], low, lo, hi))
    return out


def _amounts(item: list[Any], at: int, name: str, shape: str) -> tuple[int, int]:
    lo, hi = item[at], item[at + 1]
    if type(lo) is not int or type(hi) is not int or lo < 0 or hi < lo:
        message = f"{name} entries must be {shape} with 0 <= lo <= hi, not {item!r}"
        raise ValueError(message)
    return lo, hi


def _rows(raw: Any, name: str, shape: str) -> list[list[Any]]:
    if not isinstance(raw, list):
        message = f"{name} must be a list, not {type(raw).__name__}"
        raise ValueError(message)
    for item in raw:
        # type() is int, not isinstance: a bool is no hash, hop count or time. Checked
        # inline because a record carries up to K + 1 entries on every transfer.
        if (
            type(item) is not list
            or not 4 <= len(item) <= 7
            or type(item[0]) is not int
            or type(item[1]) is not int
            or type(item[2]) is not int
            or type(item[3]) is not int
        ):
            message = f"{name} entries must be {shape}, not {item!r}"
            raise ValueError(message)
    return raw
