"""Account state: velocity windows equal an offline recount, and survive a round trip."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.state import MAX_DISTINCT, WINDOWS, AccountState


def recount(events: list[tuple[int, int, str | None]]) -> dict[str, int]:
    """The definition the windows implement, computed from the raw list."""
    latest = max(ts for ts, _, _ in events)
    out: dict[str, int] = {}
    for spec in WINDOWS:
        newest = latest // spec.bucket_seconds
        inside = [e for e in events if e[0] // spec.bucket_seconds > newest - spec.buckets]
        out["count_" + spec.name] = len(inside)
        out["sum_" + spec.name] = sum(a for _, a, _ in inside)
        out["distinct_cp_" + spec.name] = min(MAX_DISTINCT, len({c for *_, c in inside if c}))
    return out


event_lists = st.lists(
    st.tuples(
        st.integers(1_700_000_000, 1_700_000_000 + 3 * 86_400),
        st.integers(0, 10**9),
        st.one_of(st.none(), st.sampled_from([f"cp{i}" for i in range(10)])),
    ),
    min_size=1, max_size=60,
)


@given(events=event_lists)
@settings(max_examples=300, deadline=None)
def test_windows_equal_offline_recount_in_any_arrival_order(events):
    # late events count when they still fall inside a window, as in the recount
    state = AccountState()
    for ts, amount, cp in events:
        state.observe_amount(ts, amount, cp)
    assert state.velocity() == recount(events)


def test_in_order_stream_matches_recount_at_every_step():
    rng = random.Random(3)
    ts = 1_700_000_000
    state = AccountState()
    seen: list[tuple[int, int, str | None]] = []
    for _ in range(2_000):
        ts += rng.choice([1, 2, 5, 30, 400, 4000])
        event = (ts, rng.randrange(1, 10**6), f"cp{rng.randrange(100)}")
        seen.append(event)
        state.observe_amount(*event)
        assert state.velocity() == recount(seen)


def test_distinct_counterparties_saturate_and_state_stays_bounded():
    state = AccountState()
    for i in range(500):
        state.observe_amount(1_700_000_000 + i, 100, f"cp{i}")
    v = state.velocity()
    assert v["distinct_cp_24h"] == MAX_DISTINCT
    assert v["count_24h"] == 500
    assert all(len(w.counterparties) <= MAX_DISTINCT for w in state.windows)
    assert len(state.dumps()) < 6_000


def test_round_trip_keeps_every_counter_and_the_replay_guard():
    state = AccountState()
    for i in range(30):
        state.observe_amount(1_700_000_000 + 7 * i, 1000 + i, f"cp{i % 4}")
        state.mark(f"e{i}", "payments", i)
    state.detectors["amount_outlier"] = [3, 1.5, 0.25]
    state.quiet_until["velocity"] = 1_700_000_500
    restored = AccountState.loads(state.dumps())
    assert restored.velocity() == state.velocity()
    assert restored.detectors == state.detectors
    assert restored.quiet_until == state.quiet_until
    assert restored.seen("e29", "payments", 29)
    assert restored.seen("e29", None, None)
    assert not restored.seen("e30", "payments", 30)
    restored.observe_amount(1_700_000_300, 5, "cpX")
    state.observe_amount(1_700_000_300, 5, "cpX")
    assert restored.velocity() == state.velocity()


def test_unknown_format_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown account state format"):
        AccountState.loads(b"[99]")
