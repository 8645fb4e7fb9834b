"""Offline hot-path benchmark: ``streams.evaluation.backtest`` on one tree against another.

Measures our own per-event code (decode, validation, state, features, every
account detector, the derived stages) without Kafka or Faust, and checks that
a change did not change a single alert. Typical use, with a baseline checkout
of ``HEAD`` made once by ``git worktree add /tmp/perf-base HEAD``::

    .venv/bin/python -c "from pathlib import Path; from streams.simulate import write_jsonl, \\
        generate; write_jsonl(generate(7, events=100_000), Path('/tmp/perf100k.jsonl'))"
    .venv/bin/python bench/offline.py --base /tmp/perf-base --file /tmp/perf100k.jsonl \\
        --repeat 3 [--sensor] [--check-alerts]

How it measures, on a machine shared with other work: each repeat starts one
child process per tree, each with its tree first on ``sys.path``, each running
``backtest`` on the file. The two children run in lock step: a child processes
``--chunk`` lines, reports the CPU and wall seconds they took and waits, then
the other child processes the same lines, and so on (the first tree of a pair
alternating), so the two trees never run at once and meet the same outside
load, chunk by chunk. Per repeat, the rate of a tree is its events over the
sum of its chunks' seconds (configuration, set-up and scoring excluded); the
medians over repeats and their ratio are printed, for CPU seconds (what other
work on the machine disturbs least) and wall seconds.

``--sensor`` attaches the worker's Prometheus sensor (a ``SensorDelegate``
holding a ``PrometheusSensor`` on a fresh registry, as ``streams/app.py`` wires
it) to the monitor and the derived stages. ``--check-alerts`` runs each tree
once more, recording every alert (id, detector, severity, event ids, score
rounded to 6 places, reasons), and fails when the two lists differ. The timed
runs record nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent.parent


def child(tree: Path, path: Path, sensor: bool, alerts_out: Path | None,
          chunk: int | None) -> dict[str, Any]:
    """Run one backtest in this process with ``tree`` first on ``sys.path``.

    With ``chunk``, pause after every ``chunk`` lines: write ``{"cpu", "wall",
    "lines"}`` of the chunk to stdout and wait for a line on stdin.
    """
    sys.path.insert(0, str(tree))
    import streams

    if Path(streams.__file__).resolve().parent.parent != tree.resolve():
        message = f"imported streams from {streams.__file__}, not from {tree}"
        raise RuntimeError(message)
    from streams import evaluation, pipeline, stages
    from streams.alerts import Alert

    if sensor:
        from prometheus_client import CollectorRegistry

        from streams.metrics import PrometheusSensor
        from streams.sensors import SensorDelegate

        delegate = SensorDelegate([PrometheusSensor(registry=CollectorRegistry())])
        for cls in (pipeline.Monitor, stages.DerivedStage):
            original_init = cls.__init__

            def init(self: Any, *args: Any, _init: Any = original_init, **kwargs: Any) -> None:
                _init(self, *args, **kwargs)
                self.sensor = delegate

            cls.__init__ = init  # type: ignore[method-assign]
    recorded: list[list[Any]] = []
    if alerts_out is not None:
        from_finding = Alert.from_finding.__func__  # type: ignore[attr-defined]

        def record(cls: type[Alert], *args: Any, **kwargs: Any) -> Alert:
            alert: Alert = from_finding(cls, *args, **kwargs)
            recorded.append([alert.alert_id, alert.detector, alert.severity,
                             list(alert.event_ids), round(alert.score, 6), list(alert.reasons)])
            return alert

        Alert.from_finding = classmethod(record)  # type: ignore[method-assign,assignment]
    if chunk is not None:
        # the module that defines backtest reads the lines (streams/evaluation/backtest.py,
        # or streams/evaluation.py in a tree from before the package)
        home = sys.modules[evaluation.backtest.__module__]
        lines = home.numbered_lines

        def in_chunks(source: Path) -> Iterator[tuple[int, bytes]]:
            _report(None)  # set up: wait for the first turn
            cpu, wall, count = time.process_time(), time.perf_counter(), 0
            for numbered in lines(source):
                yield numbered  # backtest processes it before asking for the next one
                count += 1
                if count == chunk:
                    _report({"cpu": time.process_time() - cpu,
                             "wall": time.perf_counter() - wall, "lines": count})
                    cpu, wall, count = time.process_time(), time.perf_counter(), 0
            _report({"cpu": time.process_time() - cpu, "wall": time.perf_counter() - wall,
                     "lines": count, "last": True})

        home.numbered_lines = in_chunks
    result = evaluation.backtest(path)
    if alerts_out is not None:
        alerts_out.write_text(json.dumps(recorded))
    return {"events": result.events, "alerts": result.alerts}


def _report(measured: dict[str, Any] | None) -> None:
    print(json.dumps(measured or {"ready": True}), flush=True)
    if sys.stdin.readline() == "":
        sys.exit(0)  # the parent went away


def _command(tree: Path, path: Path, sensor: bool, alerts_out: Path | None = None,
             chunk: int | None = None) -> list[str]:
    command = [sys.executable, __file__, "--child", str(tree), "--file", str(path)]
    if sensor:
        command.append("--sensor")
    if alerts_out is not None:
        command += ["--alerts-out", str(alerts_out)]
    if chunk is not None:
        command += ["--chunk", str(chunk)]
    return command


# development mode: the public PII key and the demo configuration (README, "Configuration")
_ENV = {**os.environ, "PYTHONHASHSEED": "0", "TXWATCH_DEV_MODE": "1"}


def lock_step(trees: dict[str, Path], path: Path, sensor: bool, chunk: int,
              first: str) -> dict[str, dict[str, float]]:
    """One repeat: both trees' children, chunk by chunk in turn; their totals."""
    children = {
        name: subprocess.Popen(_command(tree, path, sensor, chunk=chunk), stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True, env=_ENV)
        for name, tree in trees.items()
    }
    totals = {name: {"cpu": 0.0, "wall": 0.0, "lines": 0} for name in trees}
    order = [first, *(name for name in trees if name != first)]
    try:
        for name in order:
            _read(children[name].stdout)  # ready
        turn = 0
        done: set[str] = set()
        while len(done) < len(order):
            # ABBA: the tree that went second goes first in the next round
            for name in order if turn % 2 == 0 else order[::-1]:
                if name in done:
                    continue
                proc = children[name]
                assert proc.stdin is not None
                proc.stdin.write("go\n")
                proc.stdin.flush()
                measured = _read(proc.stdout)
                for key in ("cpu", "wall", "lines"):
                    totals[name][key] += measured[key]
                if measured.get("last"):
                    done.add(name)
                    proc.stdin.write("go\n")
                    proc.stdin.flush()
                    result = json.loads(_read_line(proc.stdout))
                    totals[name]["alerts"] = result["alerts"]
            turn += 1
    finally:
        for proc in children.values():
            if proc.stdin is not None:
                proc.stdin.close()
            proc.wait()
    return totals


def _read_line(stream: IO[str] | None) -> str:
    assert stream is not None
    line = stream.readline()
    if not line:
        message = "a benchmark child exited early; run it alone to see why"
        raise RuntimeError(message)
    return line


def _read(stream: IO[str] | None) -> dict[str, Any]:
    measured: dict[str, Any] = json.loads(_read_line(stream))
    return measured


def check_alerts(base: Path, this: Path, path: Path, sensor: bool) -> bool:
    with tempfile.TemporaryDirectory() as tmp:
        outs = {}
        for name, tree in (("base", base), ("this", this)):
            outs[name] = Path(tmp) / f"{name}.json"
            subprocess.run(_command(tree, path, sensor, outs[name]), check=True,
                           stdout=subprocess.DEVNULL, env=_ENV)
        before = json.loads(outs["base"].read_text())
        after = json.loads(outs["this"].read_text())
    same_order = before == after
    same_set = sorted(map(json.dumps, before)) == sorted(map(json.dumps, after))
    print(f"alerts: base {len(before):,}, this {len(after):,}; identical list: {same_order}; "
          f"identical set: {same_set}")
    return same_set


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=Path, help="baseline tree (e.g. a worktree of HEAD)")
    parser.add_argument("--tree", type=Path, default=HERE, help="measured tree (default: this)")
    parser.add_argument("--file", type=Path, default=Path("/tmp/perf100k.jsonl"))
    parser.add_argument("--repeat", type=int, default=3, help="pairs of runs (default 3)")
    parser.add_argument("--chunk", type=int, help="lines per turn of a child (default 5000)")
    parser.add_argument("--sensor", action="store_true",
                        help="attach the worker's Prometheus sensor")
    parser.add_argument("--check-alerts", action="store_true",
                        help="also compare every alert of the two trees")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--alerts-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(child(args.child, args.file, args.sensor, args.alerts_out, args.chunk)),
              flush=True)
        return 0
    if args.base is None:
        parser.error("--base is required")
    trees = {"base": args.base, "this": args.tree}
    rates: dict[str, dict[str, list[float]]] = {
        name: {"cpu": [], "wall": []} for name in trees
    }
    for i in range(args.repeat):
        totals = lock_step(trees, args.file, args.sensor, args.chunk or 5_000,
                           "base" if i % 2 == 0 else "this")
        parts = []
        for name in trees:
            for clock in ("cpu", "wall"):
                rates[name][clock].append(totals[name]["lines"] / totals[name][clock])
            parts.append(f"{name} {rates[name]['cpu'][-1]:,.0f} events per CPU s, "
                         f"{rates[name]['wall'][-1]:,.0f} events/s wall "
                         f"({totals[name]['alerts']:,} alerts)")
        print(f"repeat {i + 1}: " + "; ".join(parts), flush=True)
    label = " with the Prometheus sensor" if args.sensor else ""
    for clock, what in (("cpu", "events per CPU second"), ("wall", "events/s (wall)")):
        base = statistics.median(rates["base"][clock])
        this = statistics.median(rates["this"][clock])
        print(f"median {what}{label}: base {base:,.0f}, this {this:,.0f}, "
              f"ratio {this / base:.2f}x")
    if args.check_alerts and not check_alerts(args.base, args.tree, args.file, args.sensor):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
