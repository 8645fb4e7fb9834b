"""Blacklist: identity hashes on the configured dishonest-person list."""

from __future__ import annotations

from typing import Any

import pytest

from detectors import Blacklist, build_alerters
from streams.codec import hash_pii
from streams.rules import demo_config

KEY = b"test-key"
LISTED_ID = hash_pii(KEY, "110101199001011234")
LISTED_PHONE = hash_pii(KEY, "13800000000")
OTHER = hash_pii(KEY, "13900000000")


def application(**identities: str) -> dict[str, Any]:
    return {"event_type": "loan_application", "amount_minor": 2_000_000, **identities}


def test_a_listed_identity_scores_one_per_listed_field() -> None:
    detector = Blacklist(hashes=[LISTED_ID, LISTED_PHONE])
    assert detector.score_one(application(national_id_hash=LISTED_ID, phone_hash=OTHER)) == 1.0
    both = application(national_id_hash=LISTED_ID, phone_hash=LISTED_PHONE)
    assert detector.score_one(both) == 2.0
    assert detector.explain_one(both, 2.0) == [
        f"national id of this loan_application is on the list (hash {LISTED_ID[:8]}...;"
        " 2 of its 2 identities listed)",
        f"phone number of this loan_application is on the list (hash {LISTED_PHONE[:8]}...;"
        " 2 of its 2 identities listed)",
    ]


def test_lookups_ignore_case_and_fields_not_watched() -> None:
    detector = Blacklist(hashes=[LISTED_ID.upper()], fields=["national_id_hash"])
    assert detector.score_one(application(national_id_hash=LISTED_ID)) == 1.0
    assert detector.score_one(application(phone_hash=LISTED_ID)) == 0.0
    devices = Blacklist(hashes=[LISTED_ID], fields=["device_id_hash", "ip_hash"])
    assert devices.score_one(application(ip_hash=LISTED_ID)) == 1.0


def test_events_without_identities_or_an_empty_list_score_zero() -> None:
    assert Blacklist(hashes=[LISTED_ID]).score_one({"event_type": "login", "amount_minor": 0}) == 0
    assert Blacklist().score_one(application(national_id_hash=LISTED_ID)) == 0.0
    assert Blacklist(hashes=[LISTED_ID]).explain_one(application(phone_hash=OTHER), 0.0) == [
        "none of the 1 identity of this event is among the 1 listed"
    ]


def test_the_demo_list_is_high_severity() -> None:
    (alerter,) = build_alerters(
        {"version": "t", "detectors": {"blacklist": demo_config()["detectors"]["blacklist"]}}
    )
    listed = demo_config()["detectors"]["blacklist"]["params"]["hashes"][0]
    finding, _ = alerter.process_one(application(national_id_hash=listed))
    assert finding is not None
    assert finding.severity == "high"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"hashes": ["not-a-hash"]}, "hashes must be hex digests"),
        ({"hashes": LISTED_ID}, "hashes must be a list"),
        ({"fields": ["email_hash"]}, "unknown identity fields"),
        ({"fields": []}, "fields must not be empty"),
    ],
)
def test_refuses_bad_parameters(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Blacklist(**params)
