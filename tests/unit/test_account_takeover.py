"""Account takeover: a large outflow soon after a credential change or a new-device login."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from detectors import DEFAULT_CONFIG, AccountTakeover, build_alerters
from detectors.account_takeover import DEVICE_PREFIX, USUAL_OUTFLOWS

T0 = 1_709_553_600
PHONE = "a1" * 16
LAPTOP = "b2" * 16
ATTACKER = "c3" * 16


def login(ts: int, device: str = PHONE) -> dict[str, Any]:
    return {"event_type": "login", "amount_minor": 0, "ts": ts, "device_id_hash": device,
            "currency": "CNY"}


def change(ts: int, kind: str = "password", device: str = PHONE) -> dict[str, Any]:
    return {"event_type": "credential_change", "kind": kind, "amount_minor": 0, "ts": ts,
            "device_id_hash": device}  # fmt: skip


def out(amount: int, ts: int, device: str | None = PHONE, **extra: Any) -> dict[str, Any]:
    x = {"event_type": "withdrawal", "amount_minor": amount, "is_outflow": True, "ts": ts,
         "currency": "CNY"}
    if device is not None:
        x["device_id_hash"] = device
    return {**x, **extra}


def detector(**params: Any) -> AccountTakeover:
    cny = {"CNY": {"large_outflow": 5_000_000, "min_outflow": 100_000}}
    defaults = {"window_seconds": 3_600, "usual_multiple": 10.0, "min_history": 3,
                "currency_limits": cny}  # fmt: skip
    return AccountTakeover(**{**defaults, **params})


def with_history(d: AccountTakeover, *events: dict[str, Any]) -> list[Any]:
    """An account that paid about 1,200.00 five times from its phone, then ``events``."""
    state = d.new_state()
    for i, amount in enumerate((110_000, 125_000, 90_000, 130_000, 120_000)):
        state = d.learn_one(out(amount, T0 - 86_400 + i), state)
    for x in events:
        state = d.learn_one(x, state)
    return state


def test_large_outflow_within_the_window_of_a_credential_change() -> None:
    d = detector()
    state = with_history(d, change(T0))
    # 10x the usual 1,200.00 is 12,000.00.
    assert d.score_one(out(1_200_000, T0 + 600), state) == 1.0
    assert d.score_one(out(1_199_999, T0 + 600), state) < 1.0
    # The window's end is included; a second later, no trigger.
    assert d.score_one(out(3_000_000, T0 + 3_600), state) == 2.5
    assert d.score_one(out(3_000_000, T0 + 3_601), state) == 0.0


def test_a_login_from_an_unseen_device_is_a_trigger_a_known_one_is_not() -> None:
    d = detector()
    assert d.score_one(out(3_000_000, T0 + 60), with_history(d, login(T0, PHONE))) == 0.0
    state = with_history(d, login(T0, ATTACKER))
    assert d.score_one(out(3_000_000, T0 + 60, ATTACKER), state) == 2.5
    (trigger, large) = d.explain_one(out(3_000_000, T0 + 60, ATTACKER), state, 2.5)
    assert trigger == "login from a device not among the 2 known 1 min before this withdrawal" \
        " (window 1 h)"
    assert large == "withdrawal of 30,000.00 is 25.0x the usual outflow of 1,200.00" \
        " (median of the last 5; large from 10x)"


def test_only_a_login_makes_a_new_device_a_trigger() -> None:
    d = detector()
    # A payment from a new phone, then a large withdrawal: no login, no credential change.
    state = with_history(d, out(120_000, T0, LAPTOP))
    assert d.score_one(out(3_000_000, T0 + 60, LAPTOP), state) == 0.0
    # The device was learnt from the payment: logging in with it later is no trigger.
    state = d.learn_one(login(T0 + 120, LAPTOP), state)
    assert d.score_one(out(3_000_000, T0 + 180, LAPTOP), state) == 0.0


def test_an_account_without_known_devices_has_no_new_device() -> None:
    d = detector()
    state = d.learn_one(login(T0, ATTACKER), d.new_state())
    assert d.score_one(out(9_000_000, T0 + 60), state) == 0.0


def test_without_history_only_the_absolute_limit_applies() -> None:
    d = detector()
    state = d.learn_one(change(T0), d.new_state())
    assert d.score_one(out(4_999_999, T0 + 60), state) < 1.0
    assert d.score_one(out(5_000_000, T0 + 60), state) == 1.0
    reasons = d.explain_one(out(5_000_000, T0 + 60), state, 1.0)
    assert reasons[-1] == (
        "withdrawal of 50,000.00 reaches the large-outflow limit of 50,000.00 (configured for CNY)"
    )


def test_small_outflows_are_never_large_however_tiny_the_usual() -> None:
    d = detector()
    state = d.new_state()
    for i in range(5):
        state = d.learn_one(out(500, T0 - 1_000 + i), state)  # 5.00 a time
    state = d.learn_one(change(T0), state)
    assert d.score_one(out(99_999, T0 + 60), state) == 0.0
    assert d.score_one(out(100_000, T0 + 60), state) == 20.0


def test_an_outflow_before_the_trigger_in_event_time_is_not_its_victim() -> None:
    d = detector()
    state = with_history(d, change(T0))
    assert d.score_one(out(9_000_000, T0 - 1), state) == 0.0


def test_flagged_outflows_do_not_become_the_usual() -> None:
    spec = DEFAULT_CONFIG["detectors"]["account_takeover"]
    (alerter,) = build_alerters({"version": "t", "detectors": {"account_takeover": spec}})
    assert isinstance(alerter.detector, AccountTakeover)
    state = with_history(alerter.detector, change(T0))
    flagged = []
    for minute in (5, 10, 15):
        finding, state = alerter.process_one(out(3_000_000, T0 + 60 * minute), state)
        flagged.append(finding is not None)
    assert flagged == [True, True, True]
    assert state[3] == [110_000, 125_000, 90_000, 130_000, 120_000]


def test_state_is_bounded_and_json() -> None:
    d = detector(known_devices=8)
    state = d.new_state()
    for i in range(100):
        state = d.learn_one(login(T0 + i, f"{i:04x}" * 8), state)
        state = d.learn_one(out(100_000 + i, T0 + i, device=None), state)
    devices, trigger_ts, kind, outflows = state
    assert len(devices) == 8 and all(len(device) == DEVICE_PREFIX for device in devices)
    assert devices[-1] == (f"{99:04x}" * 8)[:DEVICE_PREFIX]
    assert (trigger_ts, kind) == (T0 + 99, "new_device")
    assert outflows == [100_000 + i for i in range(100 - USUAL_OUTFLOWS, 100)]
    assert orjson.loads(orjson.dumps(state)) == state


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"usual_multiple": 0}, "usual_multiple must be positive"),
        ({"known_devices": 0}, "known_devices must be an int >= 1"),
        ({"min_history": USUAL_OUTFLOWS + 1}, "min_history must be at most"),
        ({"currency_limits": {"CNY": {"min_outflow": -1}}}, "must be an int >= 1"),
        ({"learnt_quantile": {"large_outflow": 0.99}}, "a quantile for each of"),
    ],
)
def test_refuses_bad_parameters(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        detector(**params)
