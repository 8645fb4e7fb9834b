"""The throughput benchmark builds its apps as a developer runs it, with no PII key set."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "throughput.py"


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("txwatch_bench_throughput", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_benchmark_builds_txwatch_apps_without_a_pii_key(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # `make bench` stopped at its first create_app with "TXWATCH_PII_KEY is not set":
    # the benchmark's own settings must be in development mode whatever the shell has.
    monkeypatch.delenv("TXWATCH_PII_KEY", raising=False)
    bench = load_bench()
    monkeypatch.delenv("TXWATCH_DEV_MODE", raising=False)
    settings = bench.dev_settings(broker="127.0.0.1:9", app_id="bench-test-drift", partitions=2)
    assert settings.dev_mode
    assert bench.changelog_topic_for(settings).startswith("bench-test-drift")


def test_the_baselines_run_on_the_workers_faust_app(monkeypatch: pytest.MonkeyPatch) -> None:
    # Built by the worker's own function, not a copy that could drift from it.
    import streams.app

    bench = load_bench()
    settings = bench.dev_settings(broker="127.0.0.1:9", app_id="bench-test-same", partitions=2)
    built: list[object] = []
    monkeypatch.setattr(streams.app, "faust_app", lambda s, *a: built.append(s) or "the app")
    assert bench.bench_faust_app(settings) == "the app"
    assert built == [settings]
