"""The lending portfolio on the real broker.

The hand-computed book of ``tests/unit/test_portfolio.py`` goes through real
workers; ``txwatch portfolio --csv`` must print its figures, the alert topic
must carry the roll-rate and concentration alerts with their numbers, and
neither may change when a worker dies and comes back.
"""

from __future__ import annotations

import contextlib
import csv
import inspect
import io
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

import streams.app
from streams.localkafka import create_topics
from tests.support.worker import WorkerProcess, consume_until, produce, wait_for, worker_env
from tests.unit.test_portfolio import BOOK, wire

pytestmark = pytest.mark.integration

#: After the book, an April event for every borrower: every partition is past March.
HEARTBEATS = [
    wire("hb3", "loan_status", (4, 3), "L3", status="repaid", days_past_due=0),
    wire("hb4", "loan_status", (4, 3), "L4", status="written_off", days_past_due=100),
    wire("hb5", "loan_status", (4, 3), "L5", status="current", days_past_due=0,
         outstanding="40000.00"),
]
LIMITS = {
    "version": "it-1",
    "live_max_lag": 0,
    "limits": [
        {"name": "roll_1_30", "kind": "roll_rate", "from": "1-30", "to": "31-60", "max": 0.4,
         "min_loans": 1},
        {"name": "region", "kind": "share", "dimension": "region", "max": 0.5,
         "min_loans": 1},
    ],
}
#: The book's final stock (bucket -> loans, outstanding), as computed by hand.
FINAL_STOCK = {"current": ("2", "110000.00"), "1-30": ("0", "0.00"), "31-60": ("1", "50000.00"),
               "61-90": ("0", "0.00"), "90+": ("0", "0.00"), "written_off": ("1", "20000.00"),
               "repaid": ("1", "0.00")}
SHIM = '''\
"""Attach the portfolio in test workers until streams.app.create_app does it itself."""
import streams.app as _app
from streams.portfolio import attach_portfolio as _attach

_create_app = _app.create_app


def create_app(*args, **kwargs):
    runtime = _create_app(*args, **kwargs)
    _attach(runtime)  # idempotent
    return runtime


_app.create_app = create_app
'''


def messages(events: list[dict[str, Any]]) -> list[tuple[bytes, bytes]]:
    return [(e["account_id"].encode(), orjson.dumps(e)) for e in events]


def wired() -> bool:
    return "attach_portfolio" in inspect.getsource(streams.app.create_app)


def cli_argv(csv_dir: Path) -> list[str]:
    from streams.cli import build_parser

    try:
        with contextlib.redirect_stderr(io.StringIO()):
            build_parser().parse_args(["portfolio"])
    except SystemExit:  # not registered in streams.cli yet
        return [sys.executable, "-m", "streams.cli", "portfolio", "--csv", str(csv_dir)]
    return [sys.executable, "-m", "streams.cli", "portfolio", "--csv", str(csv_dir)]


@pytest.fixture
async def env(kafka_bootstrap: str, topic_prefix: str, tmp_path: Path) -> dict[str, str]:
    config = tmp_path / "portfolio.json"
    config.write_bytes(orjson.dumps(LIMITS))
    extra = {
        "TXWATCH_PORTFOLIO_CONFIG": str(config),
        "TXWATCH_PORTFOLIO_PUBLISH_INTERVAL": "0.2",
        "TXWATCH_PORTFOLIO_EVALUATE_INTERVAL": "0.2",
        "TXWATCH_DATA_DIR": str(tmp_path / "var"),
    }
    if not wired():
        shim = tmp_path / "shim"
        shim.mkdir()
        (shim / "sitecustomize.py").write_text(SHIM)
        extra["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(shim), os.environ.get("PYTHONPATH", "")) if p)
    environment = worker_env(kafka_bootstrap, topic_prefix, **extra)
    await create_topics(kafka_bootstrap, [
        environment["TXWATCH_PAYMENTS_TOPIC"], environment["TXWATCH_LENDING_TOPIC"],
        environment["TXWATCH_ALERT_TOPIC"], environment["TXWATCH_DEAD_LETTER_TOPIC"],
    ], partitions=2)
    return environment


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def book_csv(env: dict[str, str], directory: Path) -> dict[str, list[dict[str, str]]] | None:
    """``txwatch portfolio --csv`` now; ``None`` while it has nothing to show."""
    result = subprocess.run(cli_argv(directory), env=env, capture_output=True, timeout=120,
                            check=False)
    if result.returncode != 0:
        return None
    return {name: read_csv(directory / f"{name}.csv")
            for name in ("buckets", "migration", "concentration")}


def stock(tables: dict[str, list[dict[str, str]]]) -> dict[str, tuple[str, str]]:
    return {row["bucket"]: (row["loans"], row["outstanding"]) for row in tables["buckets"]}


def monthly(tables: dict[str, list[dict[str, str]]], period: str) -> dict[tuple[str, str], Any]:
    return {(r["from_bucket"], r["to_bucket"]): r for r in tables["migration"]
            if r["granularity"] == "monthly" and r["period"] == period}


def portfolio_alerts(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if str(r.get("detector", "")).startswith("portfolio_")]


#: What a worker logs each time a rebalance has handed it its partitions.
PARTITIONS_LINE = re.compile(rb"portfolio: partitions \[([0-9, ]*)\]")


def owned_partitions(log: Path, since: int = 0) -> set[int] | None:
    """The partitions of the worker's latest completed rebalance; ``None`` before the first."""
    lines = PARTITIONS_LINE.findall(log.read_bytes()[since:])
    if not lines:
        return None
    return {int(p) for p in lines[-1].split(b",") if p.strip()}


def one_partition_each(*logs: Path) -> bool:
    """Whether the workers' latest rebalances gave each of them one partition of its own."""
    owned = [owned_partitions(log) or set() for log in logs]
    return all(len(o) == 1 for o in owned) and len(set().union(*owned)) == len(owned)


def wait_for_book(env: dict[str, str], directory: Path, expected: dict[str, tuple[str, str]],
                  timeout: float = 120) -> dict[str, list[dict[str, str]]]:
    seen: dict[str, Any] = {}

    def ready() -> bool:
        tables = book_csv(env, directory)
        seen["tables"] = tables
        return tables is not None and stock(tables) == expected

    try:
        wait_for(ready, timeout, "the book in `txwatch portfolio --csv`")
    except TimeoutError as exc:
        last = seen.get("tables")
        message = f"{exc}; last stock: {stock(last) if last else None}"
        raise TimeoutError(message) from exc
    return seen["tables"]


async def test_the_worker_computes_the_book_prints_it_and_alerts(env, tmp_path: Path):
    bootstrap = env["TXWATCH_BROKER"]
    # The input is there before the worker starts: it has to catch up first.
    await produce(bootstrap, env["TXWATCH_LENDING_TOPIC"], messages(BOOK + HEARTBEATS))
    with WorkerProcess(env, tmp_path / "worker.log") as worker:
        tables = wait_for_book(env, tmp_path / "csv", FINAL_STOCK)
        march = monthly(tables, "2024-03")
        assert march["1-30", "31-60"]["complete"] == "true"
        assert (march["1-30", "31-60"]["loans"], march["1-30", "31-60"]["loans_share"]) == (
            "1", "0.500000")
        assert march["1-30", "written_off"]["loans"] == "1"
        assert (march["current", "current"]["loans"], march["current", "current"]["principal"]) \
            == ("2", "130000.00")
        assert march["1-30", "31-60"]["opening_principal"] == "70000.00"
        february = monthly(tables, "2024-02")
        assert {k: r["loans"] for k, r in february.items() if r["loans"] != "0"} == {
            ("current", "current"): "1", ("current", "1-30"): "2",
            ("current", "repaid"): "1", ("new", "current"): "1"}
        region = {r["value"]: r for r in tables["concentration"] if r["dimension"] == "region"}
        assert (region["CN-GD"]["outstanding"], region["CN-GD"]["share"]) == (
            "120000.00", "0.750000")
        assert region["CN-GD"]["hhi"] == "0.625000"

        alerts = await consume_until(
            bootstrap, env["TXWATCH_ALERT_TOPIC"],
            lambda rs: {"portfolio_roll_rate", "portfolio_concentration"}
            <= {r["detector"] for r in portfolio_alerts(rs)}, timeout=90)
        by_detector = {a["detector"]: a for a in portfolio_alerts(alerts)}
        roll = by_detector["portfolio_roll_rate"]
        assert (roll["limit"], roll["period"], roll["subject"]) == (
            "roll_1_30", "2024-03", "1-30->31-60")
        assert roll["reasons"][0] == ("monthly roll rate 1-30 -> 31-60 in 2024-03 is 50.0% by "
                                      "loans, above the limit of 40.0%")
        assert "50,000.00 of 70,000.00 CNY opening outstanding" in roll["reasons"][1]
        concentration = by_detector["portfolio_concentration"]
        assert (concentration["subject"], concentration["period"]) == ("CN-GD", "2024-04")
        assert concentration["reasons"][0] == ("region CN-GD holds 75.0% of outstanding "
                                               "principal, above the limit of 50.0%")
        assert concentration["amount"] == "120000.00" and concentration["currency"] == "CNY"
        assert concentration["config_version"] == "it-1"
        ids = [a["alert_id"] for a in portfolio_alerts(alerts)]
        assert len(ids) == len(set(ids)) == 2, portfolio_alerts(alerts)

        wait_for(lambda: worker.metric("txwatch_portfolio_concentration_share",
                                       dimension="region", value="CN-GD") == 0.75,
                 30, "the region share gauge")
        assert worker.metric("txwatch_portfolio_loans", bucket="31-60") == 1
        assert worker.metric("txwatch_portfolio_roll_rate", granularity="monthly",
                             period="previous", from_bucket="1-30", to_bucket="31-60",
                             basis="loans") == 0.5
        assert worker.metric("txwatch_portfolio_events_total", outcome="duplicate") == 1
        assert worker.metric("txwatch_portfolio_events_total", outcome="stale") == 2
        assert worker.metric("txwatch_alerts_total", detector="portfolio_concentration") == 1


async def test_two_workers_and_a_crash_keep_the_book_and_send_each_alert_once(
        env, tmp_path: Path):
    bootstrap = env["TXWATCH_BROKER"]
    await produce(bootstrap, env["TXWATCH_LENDING_TOPIC"], messages(BOOK + HEARTBEATS))
    first = WorkerProcess(env, tmp_path / "worker-1.log").start()
    second = WorkerProcess(env, tmp_path / "worker-2.log").start()
    try:
        # start() returns at the metrics line; joining the group takes seconds more (more
        # with every table). Killed before it joins, the second worker leaves the first
        # owning both partitions already, with no takeover to report
        wait_for(lambda: one_partition_each(first.log_path, second.log_path), 120,
                 "each worker to own one partition")
        wait_for_book(env, tmp_path / "csv", FINAL_STOCK)
        alerts = await consume_until(
            bootstrap, env["TXWATCH_ALERT_TOPIC"],
            lambda rs: len({r["alert_id"] for r in portfolio_alerts(rs)}) >= 2, timeout=90)
        sent = {a["alert_id"] for a in portfolio_alerts(alerts)}
        assert len(sent) == 2
        # One worker dies without a goodbye; the other takes its partitions over from
        # the changelog, then it comes back and takes some of them again.
        log = first.log_path
        offset = log.stat().st_size
        second.stop(signal.SIGKILL)
        wait_for(lambda: owned_partitions(log, offset) == {0, 1}, 180,
                 "the surviving worker to take every partition over")
        second.start()
        # A repayment only the recovered state can apply correctly: L5 owed 40,000.
        repayment = wire("r5b", "loan_repayment", (4, 5), "L5", amount="5000.00")
        await produce(bootstrap, env["TXWATCH_LENDING_TOPIC"], messages([repayment]))
        after = dict(FINAL_STOCK, current=("2", "105000.00"))
        tables = wait_for_book(env, tmp_path / "csv", after)
        region = {r["value"]: r for r in tables["concentration"] if r["dimension"] == "region"}
        assert region["CN-ZJ"]["outstanding"] == "35000.00"
        wait_for(lambda: any(
            w.metric("txwatch_portfolio_outstanding", bucket="current") == 105_000
            for w in (first, second)), 60, "the new figures in the gauges")
        # CN-GD is still above its limit in the same month: the same alert id, not a new one.
        records = await consume_until(bootstrap, env["TXWATCH_ALERT_TOPIC"],
                                      lambda rs: len(portfolio_alerts(rs)) >= 2, timeout=30)
        assert {a["alert_id"] for a in portfolio_alerts(records)} == sent
    finally:
        first.stop()
        second.stop()
