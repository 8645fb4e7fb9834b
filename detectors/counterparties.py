"""Counterparties an account has paid, remembered as short tokens in its state."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any


def counterparty_token(x: Mapping[str, Any]) -> str | None:
    """An 8-hex-digit token of the event's merchant (else counterparty), ``None`` without one.

    A stable hash (Python's ``hash`` is salted per process); 32 bits are ample
    to tell apart the few dozen payees one account remembers.

    Examples
    --------
    >>> counterparty_token({"counterparty_id": "acct-042"})
    'd53bbce8'
    >>> counterparty_token({"event_type": "login"}) is None
    True
    """
    counterparty = x.get("merchant_id") or x.get("counterparty_id")
    if not isinstance(counterparty, str) or not counterparty:
        return None
    return hashlib.blake2b(counterparty.encode(), digest_size=4).hexdigest()


def remember(known: list[str], token: str, keep: int) -> None:
    """Put ``token`` last in ``known`` (the most recent), keeping the ``keep`` newest."""
    if token in known:
        known.remove(token)
    known.append(token)
    del known[:-keep]
