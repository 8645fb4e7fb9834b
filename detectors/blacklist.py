"""Blacklist: identities on the dishonest-person list (失信被执行人名单) or the platform's own."""

from __future__ import annotations

import string
from collections.abc import Sequence
from typing import ClassVar, Final

from detectors.base import Detector, Features
from detectors.params import string_set

#: Identity features the worker derives from the event's personal fields.
IDENTITY_FIELDS: Final = ("national_id_hash", "phone_hash", "device_id_hash", "ip_hash")
#: Hex characters of a listed hash shown in a reason: enough to find it in the list.
SHOWN_PREFIX: Final = 8

_WORDS: Final = {
    "national_id_hash": "national id",
    "phone_hash": "phone number",
    "device_id_hash": "device",
    "ip_hash": "IP address",
}


class Blacklist(Detector):
    """An event carrying an identity on a configured list of identity hashes.

    The worker never sees clear personal data: the codec replaces
    ``national_id``, ``phone``, ``device_id`` and ``ip`` by
    ``HMAC-SHA256(TXWATCH_PII_KEY, value)`` (first 32 hex characters), passed
    to detectors as ``national_id_hash``, ``phone_hash``, ``device_id_hash``
    and ``ip_hash``. The list is therefore a list of such hashes, computed with
    the same key (``streams.codec.hash_pii``), for example from the court's
    dishonest-person list and the platform's own fraud cases; a list hashed
    with another key matches nothing.

    The score is the number of ``fields`` whose hash is listed (a national id
    and a phone number of the same listed person score 2.0); 0.0 when none is.
    Stateless: nothing is learnt, no state is kept.

    Parameters
    ----------
    hashes
        Listed identity hashes, hex (case does not matter).
    fields
        Identity features looked up, among :data:`IDENTITY_FIELDS`.

    Examples
    --------
    >>> listed = "3fa2c1d07be94e1a8c5f6d2b9e0a4c71"
    >>> detector = Blacklist(hashes=[listed])
    >>> x = {"event_type": "loan_application", "amount_minor": 2_000_000,
    ...      "national_id_hash": listed, "phone_hash": "9d1e0b7a4c2f8e6d5b3a1c0f9e8d7c6b"}
    >>> detector.score_one(x)
    1.0
    >>> print(*detector.explain_one(x, 1.0))
    national id of this loan_application is on the list (hash 3fa2c1d0...; 1 of its 2 identities listed)
    >>> detector.score_one({"event_type": "login", "amount_minor": 0})
    0.0
    """  # noqa: E501 - a doctest's expected output is one line

    name: ClassVar[str] = "blacklist"

    def __init__(
        self,
        hashes: Sequence[str] = (),
        fields: Sequence[str] = ("national_id_hash", "phone_hash", "device_id_hash"),
    ) -> None:
        listed = string_set("hashes", hashes)
        for value in listed:
            if not set(value.lower()) <= set(string.hexdigits.lower()):
                message = f"hashes must be hex digests (streams.codec.hash_pii), not {value!r}"
                raise ValueError(message)
        watched = string_set("fields", fields, allow_empty=False)
        unknown = sorted(watched - set(IDENTITY_FIELDS))
        if unknown:
            message = f"fields: unknown identity fields {unknown}; known: {list(IDENTITY_FIELDS)}"
            raise ValueError(message)
        self.hashes = hashes
        self.fields = fields
        self._listed = frozenset(value.lower() for value in listed)
        # Fixed order, so reasons list the fields the same way every time.
        self._fields = tuple(field for field in IDENTITY_FIELDS if field in watched)

    def _hits(self, x: Features) -> tuple[list[tuple[str, str]], int]:
        """Listed ``(field, hash)`` pairs of ``x``, and how many identities it carries."""
        hits: list[tuple[str, str]] = []
        carried = 0
        for field in self._fields:
            value = x.get(field)
            if not isinstance(value, str) or not value:
                continue
            carried += 1
            if value.lower() in self._listed:
                hits.append((field, value.lower()))
        return hits, carried

    def score_one(self, x: Features) -> float:
        if not self._listed:
            return 0.0
        return float(len(self._hits(x)[0]))

    def explain_one(self, x: Features, score: float) -> list[str]:
        hits, carried = self._hits(x)
        identities = "identity" if carried == 1 else "identities"
        if not hits:
            return [
                f"none of the {carried} {identities} of this event is among the"
                f" {len(self._listed)} listed"
            ]
        event_type = x.get("event_type") or "event"
        return [
            f"{_WORDS[field]} of this {event_type} is on the list (hash"
            f" {value[:SHOWN_PREFIX]}...; {len(hits)} of its {carried} {identities} listed)"
            for field, value in hits
        ]
