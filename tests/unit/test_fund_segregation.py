"""Fund segregation: customer funds moved into a platform-owned account."""

from __future__ import annotations

from typing import Any

import pytest

from detectors import DEFAULT_CONFIG, FundSegregation, build_alerters
from streams.simulate import SCENARIOS, generate

ESCROW = ["escrow-001", "reserve-001"]
PLATFORM = ["platform-ops-001"]
RECEIVED = {"account_id": "platform-ops-001", "counterparty_id": "escrow-001",
            "event_type": "refund", "is_outflow": False, "is_inflow": True}  # fmt: skip


def movement(**fields: Any) -> dict[str, Any]:
    x = {
        "event_type": "transfer",
        "amount_minor": 12_000_000,
        "is_outflow": True,
        "account_id": "escrow-001",
        "counterparty_id": "platform-ops-001",
    }
    return {**x, **fields}


@pytest.mark.parametrize(
    ("fields", "score"),
    [
        ({}, 1.0),
        ({"account_id": "reserve-001"}, 1.0),
        ({"event_type": "payment", "counterparty_id": None, "merchant_id": PLATFORM[0]}, 1.0),
        ({"event_type": "withdrawal"}, 1.0),
        ({"amount_minor": 1}, 1.0),  # no threshold: a cent is a breach
        ({"counterparty_id": "acct-0000042"}, 0.0),  # an ordinary payout
        ({"account_id": "acct-0000042"}, 0.0),  # a customer paying the platform's fees
        ({"event_type": "top_up"}, 0.0),  # not a movement out of escrow
        # Seen from the receiving side: the platform account carries an inflow from escrow.
        (RECEIVED, 1.0),
        ({**RECEIVED, "is_inflow": False, "event_type": "transfer", "is_outflow": True}, 0.0),
    ],
)
def test_movements_between_the_configured_accounts(fields: dict[str, Any], score: float) -> None:
    detector = FundSegregation(escrow_accounts=ESCROW, platform_accounts=PLATFORM)
    assert detector.score_one(movement(**fields)) == score


def test_reason_names_both_accounts_and_the_amount() -> None:
    detector = FundSegregation(escrow_accounts=ESCROW, platform_accounts=PLATFORM)
    assert detector.explain_one(movement(), 1.0) == [
        "transfer of 120,000.00 from customer-fund account escrow-001 to platform-owned account"
        " platform-ops-001: customer funds must stay segregated"
    ]
    assert detector.explain_one(movement(counterparty_id="acct-1"), 0.0) == [
        "no movement between the 2 customer-fund and the 1 platform-owned accounts configured"
    ]


def test_without_configured_accounts_nothing_is_flagged() -> None:
    assert FundSegregation().score_one(movement()) == 0.0


def test_is_critical_as_shipped_and_the_simulator_uses_the_shipped_accounts() -> None:
    spec = DEFAULT_CONFIG["detectors"]["fund_segregation"]
    (alerter,) = build_alerters({"version": "t", "detectors": {"fund_segregation": spec}})
    finding, _ = alerter.process_one(movement())
    assert finding is not None
    assert finding.severity == "critical"
    events = list(generate(3, accounts=200, events=2_500, scenarios=["fund_segregation"]))
    labelled = [e for e in events if e.get("label") == "fund_segregation"]
    assert labelled
    assert SCENARIOS["fund_segregation"].expected_detector == "fund_segregation"
    for event in labelled:
        assert event["account_id"] in spec["params"]["escrow_accounts"]
        assert event["counterparty_id"] in spec["params"]["platform_accounts"]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"escrow_accounts": ["a"], "platform_accounts": ["a"]}, "both escrow and platform"),
        ({"escrow_accounts": "escrow-001"}, "escrow_accounts must be a list"),
        ({"platform_accounts": [""]}, "non-empty strings"),
        ({"event_types": []}, "event_types must not be empty"),
    ],
)
def test_refuses_bad_parameters(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FundSegregation(**params)
