"""Live equals offline: one history gives the same alerts at any replay rate and in a backtest.

The derived stages run behind the account stage live (their own topics, their own
batches) and in line offline; their alerts must not depend on that lag.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.evaluation import backtest, evaluate_live
from streams.settings import Settings
from streams.simulate import generate, write_jsonl

pytestmark = pytest.mark.integration

EVENTS, SEED, ACCOUNTS = 3_000, 5, 300
#: events per second; None: as fast as the producer goes
RATES = (100.0, 1_000.0, None)


def alert_set(records: list[dict[str, Any]]) -> dict[str, tuple[str, tuple[str, ...]]]:
    """Alert id -> (detector, event ids): what must not depend on the rate."""
    return {r["alert_id"]: (r["detector"], tuple(r["event_ids"])) for r in records}


@pytest.mark.xfail(strict=True, reason=(
    "known gap (docs/detection.md, 'Live equals offline'): measured at 100 events/s, 94 of 96 "
    "alerts identical; a ring reached first at another account names another closing "
    "transfer under the same alert id, and the global model is one per input topic-partition "
    "live (payments and lending apart) but one per history offline"))
async def test_a_history_gives_the_backtests_alerts_at_every_replay_rate(
        kafka_bootstrap: str, tmp_path: Path) -> None:
    history = tmp_path / "history.jsonl"
    write_jsonl(generate(SEED, events=EVENTS, accounts=ACCOUNTS, incident_every=1_000),
                history)
    sink = io.BytesIO()
    offline = backtest(history, settings=Settings(dev_mode=True), alerts_out=sink)
    expected = alert_set([orjson.loads(line) for line in sink.getvalue().splitlines()])
    assert offline.alerts == len(expected) > 0
    detectors = {detector for detector, _ in expected.values()}
    assert {"cycle", "scatter_gather"} & detectors, detectors  # derived stages included

    # One input partition: the global models (one per input partition) then see what the
    # backtest's single stream sees; the derived stages still run on their own topics.
    settings = Settings(broker=kafka_bootstrap, partitions=1, dev_mode=True)
    for rate in RATES:
        records: list[dict[str, Any]] = []
        await evaluate_live(settings, history=history, rate=rate, timeout=300,
                            work_dir=tmp_path / f"rate-{rate}", alerts_sink=records)
        live = alert_set(records)
        assert live == expected, (
            f"at {rate or 'full'} events/s: missing {sorted(set(expected) - set(live))[:5]}, "
            f"extra {sorted(set(live) - set(expected))[:5]}")
