"""Live equals offline: one history gives the same alerts at any replay rate and in a backtest.

The derived stages run behind the account stage live (their own topics, their own
batches) and in line offline; their alerts must not depend on that lag. The backtest
routes each line to the input partition the producer would, so the global models and
budgets (one per input partition) learn what a worker's learn.
"""

from __future__ import annotations

import io
from collections import Counter
from typing import Any

import orjson
import pytest

from detectors.registry import STAGE_DETECTORS
from streams.evaluation import backtest, evaluate_live
from streams.settings import Settings
from streams.simulate import generate, write_jsonl

pytestmark = pytest.mark.integration

EVENTS, SEED, ACCOUNTS = 6_000, 5, 300
#: events per second; None: as fast as the producer goes
RATES = (100.0, 1_000.0, None)


def alert_set(records: list[dict[str, Any]]) -> dict[str, tuple[str, tuple[str, ...]]]:
    """Alert id -> (detector, event ids): what must not depend on the rate."""
    return {r["alert_id"]: (r["detector"], tuple(r["event_ids"])) for r in records}


#: Input partitions, live and in the backtest (which routes each line as the producer does).
PARTITIONS = 2
Alerts = dict[str, tuple[str, tuple[str, ...]]]


@pytest.fixture(scope="module")
async def runs(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory,
               ) -> tuple[Alerts, dict[float | None, Alerts]]:
    """The backtest's alerts, and a real worker's at each replay rate."""
    tmp_path = tmp_path_factory.mktemp("live-equals-offline")
    history = tmp_path / "history.jsonl"
    write_jsonl(generate(SEED, events=EVENTS, accounts=ACCOUNTS, incident_every=1_000),
                history)
    sink = io.BytesIO()
    offline = backtest(history, settings=Settings(partitions=PARTITIONS, dev_mode=True),
                       alerts_out=sink)
    expected = alert_set([orjson.loads(line) for line in sink.getvalue().splitlines()])
    assert offline.alerts == len(expected) > 0
    detectors = {detector for detector, _ in expected.values()}
    # derived stages and global models included
    assert {"cycle", "scatter_gather", "global_anomaly"} <= detectors, detectors
    settings = Settings(broker=kafka_bootstrap, partitions=PARTITIONS, dev_mode=True)
    live: dict[float | None, Alerts] = {}
    for rate in RATES:
        records: list[dict[str, Any]] = []
        await evaluate_live(settings, history=history, rate=rate, timeout=300,
                            work_dir=tmp_path / f"rate-{rate}", alerts_sink=records)
        live[rate] = alert_set(records)
    return expected, live


def differences(expected: Alerts, live: Alerts) -> str:
    return (f"missing {sorted(expected.items() - live.items())[:5]}, "
            f"extra {sorted(live.items() - expected.items())[:5]}")


#: Account-stage detectors that combine an account's payments and lending events, whose
#: interleaving live is the fetches' (docs/guarantees.md, "Per-account order across the
#: two input topics"): they may decide, or name events, differently from the backtest.
TWO_TOPICS = frozenset(
    {"precipitated_funds", "rapid_pass_through", "borrow_and_vanish", "spending_burst"})


def per_account_and_global(alerts: Alerts) -> Alerts:
    """The alerts of account-stage detectors that read one topic, and of the global models."""
    return {key: value for key, value in alerts.items()
            if value[0] not in STAGE_DETECTORS and value[0] not in TWO_TOPICS}


async def test_account_stage_and_global_model_alerts_are_the_backtests_at_every_rate(
        runs: tuple[Alerts, dict[float | None, Alerts]]) -> None:
    """Per-account detectors, global_anomaly and the budgets: one state per input partition."""
    expected, live = runs
    wanted = per_account_and_global(expected)
    assert "global_anomaly" in {detector for detector, _ in wanted.values()}
    for rate, alerts in live.items():
        got = per_account_and_global(alerts)
        assert got == wanted, f"at {rate or 'full'} events/s: {differences(wanted, got)}"


@pytest.mark.xfail(strict=True, reason=(
    "known gap (docs/detection.md, 'Live equals offline'): derived-stage alerts (rings, "
    "scatter-gather, identity reuse) name the record that completed them, which depends on "
    "arrival order, and the two input topics interleave as fetched"))
async def test_a_history_gives_the_backtests_alerts_at_every_replay_rate(
        runs: tuple[Alerts, dict[float | None, Alerts]]) -> None:
    expected, live = runs
    report = []
    for rate, alerts in live.items():
        differ = Counter(detector for _, (detector, _) in expected.items() - alerts.items())
        differ.update(detector for _, (detector, _) in alerts.items() - expected.items())
        same = len(expected.items() & alerts.items())
        report.append(f"{rate or 'full'}/s: {same} of {len(expected)} identical, "
                      f"differing by detector {dict(differ)}")
    assert all(alerts == expected for alerts in live.values()), "; ".join(report)
