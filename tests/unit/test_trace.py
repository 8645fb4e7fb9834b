"""txwatch trace: bounded per-account ledgers, the hop-by-hop walk, and the command."""

from __future__ import annotations

import argparse
import itertools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from detectors.trace import (
    OTHER,
    FlowLedger,
    flagged_accounts,
    ledgers_from_transfers,
    trace,
)
from streams.codec import parse_occurred_at
from streams.simulate import generate
from streams.trace import history_transfers, parse_amount, render_dot, render_json, run_trace

T0 = 1_709_251_200
DAY = 86_400
SEED = 7
EVENTS = 20_000


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    events = list(generate(SEED, events=EVENTS))
    path = tmp_path_factory.mktemp("trace") / "history.jsonl"
    path.write_bytes(b"".join(orjson.dumps(event) + b"\n" for event in events))
    return path, events


def incident(events: list[dict[str, Any]], label: str) -> Iterator[list[dict[str, Any]]]:
    """The events of each incident of a scenario, in the order the simulator sent them."""
    by_incident: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        if event.get("label") == label:
            by_incident.setdefault(event["incident"], []).append(event)
    yield from by_incident.values()


def cents(amount: str) -> int:
    return parse_amount(amount)


def seconds(event: dict[str, Any]) -> int:
    return int(parse_occurred_at(event["occurred_at"]).timestamp())


# -- the walk on simulated laundering -----------------------------------------------------------


def chain(ring: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A ring's transfers in path order, from its earliest transfer's sender round."""
    by_sender = {event["account_id"]: event for event in ring}
    path = [ring[0]]
    while len(path) < len(ring):
        path.append(by_sender[path[-1]["counterparty_id"]])
    return path


def test_a_laundering_ring_is_traced_hop_by_hop_as_the_simulator_sent_it(history) -> None:
    path, events = history
    ledgers = ledgers_from_transfers(history_transfers(path, []))
    shapes = {True: 0, False: 0}
    for ring in incident(events, "laundering_ring"):
        hops = chain(ring)[:6]
        in_time = all(seconds(a) <= seconds(b) for a, b in itertools.pairwise(hops))
        shapes[in_time] += 1
        # a ring passed on in time order is money moving: the default trace follows it;
        # one laundered in any order needs the trace that ignores times
        found = trace(hops[0]["account_id"], ledgers.get, hops=6, max_accounts=100_000,
                      ordered=in_time)
        assert not found.truncated
        edges = {(e.source, e.target): e for e in found.edges}
        for hop, sent in enumerate(hops, 1):
            edge = edges[(sent["account_id"], sent["counterparty_id"])]
            # every hop: who paid whom, how much, when, which event
            assert edge.amount_minor == cents(sent["amount"]) and edge.count == 1
            assert edge.first_ts == edge.last_ts == seconds(sent)
            assert edge.event_ids == (sent["event_id"],)
            assert found.accounts[sent["counterparty_id"]] <= hop
    assert shapes[True] and shapes[False]  # both kinds of ring were checked


def test_a_scatter_gather_is_traced_back_from_the_collector_to_its_origin(history) -> None:
    path, events = history
    ledgers = ledgers_from_transfers(history_transfers(path, []))
    checked = 0
    for group in incident(events, "scatter_gather"):
        collector = group[0]["counterparty_id"]
        vias = {e["account_id"] for e in group}
        found = trace(collector, ledgers.get, direction="in", hops=2, max_accounts=100_000)
        for sent in group:  # the gather legs the simulator labelled, hop 1 back
            edge = next(e for e in found.edges if e.hop == 1
                        and (e.source, e.target) == (sent["account_id"], collector))
            assert edge.amount_minor >= cents(sent["amount"])
            assert sent["event_id"] in edge.event_ids
        # hop 2 back: the one origin that paid every intermediary before it passed it on
        payers = [{e.source for e in found.edges if e.hop == 2 and e.target == via}
                  for via in vias]
        (origin,) = set.intersection(*payers) - {collector}
        for via in vias:
            scatter = [e for e in events if e["event_type"] == "transfer"
                       and (e["account_id"], e.get("counterparty_id")) == (origin, via)]
            edge = next(e for e in found.edges if (e.source, e.target) == (origin, via))
            assert edge.amount_minor == sum(cents(e["amount"]) for e in scatter)
            assert edge.first_ts == min(seconds(e) for e in scatter)
        checked += 1
    assert checked


def test_money_is_not_followed_out_of_an_account_before_it_arrived() -> None:
    ledgers = ledgers_from_transfers([
        ("t1", T0 + 10 * DAY, "a", "b", "CNY", 500_000),
        ("t0", T0, "b", "c", "CNY", 400_000),          # before a's money reached b
        ("t2", T0 + 11 * DAY, "b", "d", "CNY", 450_000),
    ])
    found = trace("a", ledgers.get, hops=2)
    assert [(e.source, e.target) for e in found.edges] == [("a", "b"), ("b", "d")]
    back = trace("d", ledgers.get, direction="in", hops=2)
    assert [(e.source, e.target) for e in back.edges] == [("b", "d"), ("a", "b")]


# -- the ledger's bound ---------------------------------------------------------------------------


def test_a_busy_account_folds_its_smallest_counterparties_and_keeps_every_cent() -> None:
    ledger = FlowLedger("hub", max_counterparties=8, window_seconds=30 * DAY)
    sent = 0
    for n in range(100):
        amount = 1_000 * (n + 1)
        ledger.add("out", f"payee-{n:03d}", "CNY", amount, T0 + n * 60, f"e{n}")
        sent += amount
    edges = ledger.edges("out")
    named = [e for e in edges if e.target != OTHER]
    assert len(named) == 8
    assert {e.target for e in named} == {f"payee-{n:03d}" for n in range(92, 100)}
    (other,) = [e for e in edges if e.target == OTHER]
    assert other.count == 92
    assert sum(e.amount_minor for e in edges) == sent
    state = orjson.dumps(ledger.to_state())
    assert len(state) <= ledger.max_state_bytes(id_bytes=len("payee-000"))
    assert FlowLedger.from_state(orjson.loads(state)).to_state() == ledger.to_state()


def test_edges_older_than_the_window_are_dropped() -> None:
    ledger = FlowLedger("a", window_seconds=90 * DAY)
    ledger.add("out", "old", "CNY", 100, T0, "e1")
    ledger.add("out", "new", "CNY", 100, T0 + 91 * DAY, "e2")
    ledger.add("out", "late", "CNY", 100, T0 - DAY, "e3")  # older than the window: ignored
    assert [e.target for e in ledger.edges("out")] == ["new"]


def test_bad_arguments_are_refused_with_a_reason() -> None:
    ledger = FlowLedger("a")
    with pytest.raises(TypeError, match="minor units"):
        ledger.add("out", "b", "CNY", 12.5, T0, "e1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="direction"):
        ledger.add("sideways", "b", "CNY", 100, T0, "e1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="hops must be an int from 1 to 6"):
        trace("a", {}.get, hops=7)
    with pytest.raises(ValueError, match="direction must be out, in or both"):
        trace("a", {}.get, direction="up")
    with pytest.raises(ValueError, match="not a flow ledger state"):
        FlowLedger.from_state([99])


# -- the command -----------------------------------------------------------------------------------


def args(history: Path, account: str, **extra: Any) -> argparse.Namespace:
    return argparse.Namespace(**{
        "history": history, "account": account, "direction": "out", "hops": 3,
        "since": None, "until": None, "min_amount": None, "format": "text", "alerts": None,
        "max_accounts": 200, "max_counterparties": 32, "any_time": False, **extra})


def test_the_text_tree_shows_amounts_times_and_the_accounts_alerts_flag(
        history, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, events = history
    ring = next(incident(events, "laundering_ring"))
    first, second = ring[0], ring[1]
    alerts = tmp_path / "alerts.jsonl"
    alerts.write_bytes(orjson.dumps({"account_id": second["account_id"], "detector": "cycle"})
                       + b"\n")
    assert run_trace(args(path, first["account_id"], alerts=alerts, hops=2)) == 0
    out = capsys.readouterr().out
    amount = f"{cents(first['amount']) // 100:,}.{cents(first['amount']) % 100:02d} CNY"
    line = next(x for x in out.splitlines() if f"-> {first['counterparty_id']}  " in x)
    assert amount in line and first["event_id"] in line
    assert "[alerts: cycle]" in line
    assert first["occurred_at"][:10] in line


def test_json_and_dot_carry_the_same_edges(history) -> None:
    path, events = history
    ledgers = ledgers_from_transfers(history_transfers(path, []))
    ring = next(incident(events, "laundering_ring"))
    found = trace(ring[0]["account_id"], ledgers.get, hops=2,
                  flagged=lambda account: ["cycle"] if account == ring[1]["account_id"] else [])
    document = render_json(found)
    assert len(document["edges"]) == len(found.edges)
    for edge in document["edges"]:
        assert isinstance(edge["amount_minor"], int) and re.fullmatch(r"\d+\.\d\d", edge["amount"])
    flagged = {a["account"]: a["alerts"] for a in document["accounts"]}
    assert flagged[ring[1]["account_id"]] == ["cycle"]
    dot = render_dot(found)
    assert dot.startswith("digraph ") and dot.count(" -> ") == len(found.edges)
    assert 'fillcolor="#f4b6b6"' in dot  # the flagged account is highlighted


def test_a_trace_that_would_pass_the_account_limit_stops_and_says_so(
        history, capsys: pytest.CaptureFixture[str]) -> None:
    path, events = history
    ring = next(incident(events, "laundering_ring"))
    assert run_trace(args(path, ring[0]["account_id"], hops=6, max_accounts=5)) == 0
    assert "stopped at 5 accounts (--max-accounts)" in capsys.readouterr().out


def test_bad_input_exits_2_with_one_line(history, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = history
    for extra, said in [
        ({"account": "nobody"}, "account 'nobody' sent and received nothing"),
        ({"since": "3 weeks"}, "not a duration: '3 weeks'"),
        ({"min_amount": "12.345"}, "not an amount: '12.345'"),
        ({"history": tmp_path / "missing.jsonl"}, "no such history file"),
    ]:
        assert run_trace(argparse.Namespace(**{**vars(args(path, "acct-0000001")),
                                               **extra})) == 2
        err = capsys.readouterr().err
        assert said in err and len(err.strip().splitlines()) == 1


def test_lines_it_cannot_use_are_skipped_with_their_reason(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    good = {"event_id": "e1", "event_type": "transfer", "account_id": "a",
            "counterparty_id": "b", "amount": "10.00", "currency": "CNY",
            "occurred_at": "2024-03-01T00:00:00Z"}
    path.write_bytes(b"\n".join([
        orjson.dumps(good), b"not json", orjson.dumps({**good, "amount": 10.0}),
        orjson.dumps({**good, "event_type": "login"}),
    ]) + b"\n")
    bad: list[str] = []
    assert [t[0] for t in history_transfers(path, bad)] == ["e1"]
    assert len(bad) == 2
    assert "money is never a float" in bad[1]


def test_flagged_accounts_reads_alert_records() -> None:
    assert flagged_accounts([{"account_id": "a", "detector": "cycle"},
                             {"account_id": "a", "detector": "velocity"},
                             {"account_id": "a", "detector": "cycle"}, {"bad": 1}]) == {
        "a": ["cycle", "velocity"]}
