"""``txwatch``: the command line.

Commands
--------
worker      run a monitor worker (Faust) with its /metrics endpoint
demo        local broker + worker + simulator, alerts printed live (Ctrl-C stops all)
simulate    publish realistic labelled traffic to the input topics
replay      publish a JSON Lines file of events, keeping their event times
tail        print alerts as they arrive
broker      run the local Apache Kafka broker in the foreground
settings    list every TXWATCH_* variable with its default
portfolio   lending book: migration matrix, concentration, vintages
rules       publish or show the detector configuration all workers follow
feedback    record an analyst's disposition of an alert
evaluate    simulated scenarios through a real worker: precision, recall, delay
backtest    the same table offline on a JSON Lines history
import-csv  convert a labelled transaction CSV to events and a labels file
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from streams.settings import Settings, SettingsError

SEVERITY_COLOURS = {"critical": "\033[1;31m", "high": "\033[31m", "medium": "\033[33m",
                    "low": "\033[36m"}
RESET = "\033[0m"


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# -- worker ---------------------------------------------------------------------------
def run_worker(settings: Settings) -> int:
    """Run one worker until SIGINT/SIGTERM."""
    import faust
    from prometheus_client import start_http_server

    from streams import __version__
    from streams.app import create_app
    from streams.clients import KafkaSetupError, check_access, create_topics
    from streams.metrics import PrometheusSensor
    from streams.rules import build_rules, detector_config
    from streams.stages import STAGES, stage_topic

    try:  # a configuration that does not build stops the worker before it touches Kafka
        build_rules(detector_config(settings), STAGES)
    except ValueError as exc:
        source = settings.detector_config or "the packaged detector configuration"
        print(f"txwatch worker: {source}: {exc}", file=sys.stderr, flush=True)
        return 2
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        # Wrong credentials or an untrusted certificate stop the worker here, with
        # the cause; Faust's own clients would log it and retry for ever.
        asyncio.run(check_access(settings))
        # Faust subscribes before it would create a missing input topic, and would only
        # see it after a metadata refresh: create every topic we read or write first.
        # The derived stages' topics too: one Faust creates a few ms before it subscribes
        # can be missing from the group leader's metadata ("Ignoring missing topic"), and
        # that stage then reads nothing until the next rebalance, minutes later.
        asyncio.run(create_topics(settings, [
            *settings.input_topics, settings.alert_topic, settings.dead_letter_topic,
            *(stage_topic(settings.app_id, name) for name in STAGES),
        ]))
    except KafkaSetupError as exc:
        print(f"txwatch worker: {exc}", file=sys.stderr, flush=True)
        return 2
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    from detectors.registry import build_alerters

    config = detector_config(settings)
    alert_labels = set()
    for alerter in build_alerters(config):
        alert_labels.add((alerter.name, alerter.severity))
        if alerter.critical_threshold is not None:
            alert_labels.add((alerter.name, "critical"))
    metrics = PrometheusSensor(version=__version__, alert_labels=sorted(alert_labels),
                               config_version=str(config.get("version", "unversioned")))
    server, _ = start_http_server(settings.metrics_port, addr=settings.metrics_host)
    port = server.server_address[1]
    print(f"txwatch worker: metrics on http://{settings.metrics_host}:{port}/metrics",
          flush=True)
    if settings.dev_mode:
        logging.getLogger("txwatch").warning(
            "development mode (TXWATCH_DEV_MODE): %s; never run it in production",
            "a secret TXWATCH_PII_KEY is set" if settings.pii_key.get() else
            "personal identifiers are hashed with the public development key")
    (settings.data_dir / "faust").mkdir(parents=True, exist_ok=True)
    runtime = create_app(settings, metrics)
    from streams.rules import preload_rules

    preload_rules(runtime)  # the config topic's latest version judges the first event
    worker = faust.Worker(runtime.app, loglevel=settings.log_level, quiet=True,
                          redirect_stdouts=False, override_logging=False)
    worker.execute_from_commandline()
    return 0


# -- simulate / replay ----------------------------------------------------------------
def run_simulate(settings: Settings, args: argparse.Namespace) -> int:
    from streams.simulate import simulate, simulated_traffic, write_jsonl

    if args.out is not None:
        if args.events is None:
            print("txwatch simulate: --out needs --events", file=sys.stderr)
            return 2
        try:
            traffic = simulated_traffic(args.variant, args.seed, accounts=args.accounts,
                                        scenarios=args.scenario or None, events=args.events)
        except ValueError as exc:
            print(f"txwatch simulate: {exc}", file=sys.stderr)
            return 2
        count = write_jsonl(traffic, args.out, labels_path=args.labels)
        print(f"wrote {count:,} events to {args.out}")
        return 0
    report = asyncio.run(simulate(
        settings, rate=args.rate, duration=args.duration, events=args.events,
        seed=args.seed, scenarios=args.scenario or None, labels_path=args.labels,
        progress=_progress, accounts=args.accounts, variant=args.variant,
    ))
    print(report)
    return 1 if report.failed else 0


def run_replay(settings: Settings, args: argparse.Namespace) -> int:
    from streams.simulate import replay

    if not args.file.exists():
        print(f"txwatch replay: no such file: {args.file}", file=sys.stderr)
        return 2
    report = asyncio.run(replay(settings, args.file, rate=args.rate, progress=_progress))
    print(report)
    return 1 if report.failed else 0


# -- tail -----------------------------------------------------------------------------
def format_alert(alert: dict[str, Any], colour: bool) -> str:
    severity = str(alert.get("severity", "?"))
    head = f"{alert.get('occurred_at', '?')}  {severity.upper():8} {alert.get('detector')}"
    if colour:
        head = SEVERITY_COLOURS.get(severity, "") + head + RESET
    amount = f" {alert['amount']} {alert.get('currency') or ''}" if alert.get("amount") else ""
    reasons = "; ".join(alert.get("reasons", []))
    return (f"{head}  account={alert.get('account_id')} {alert.get('event_type')}{amount}\n"
            f"    {reasons}  [score {alert.get('score')}, id {alert.get('alert_id')}]")


async def tail_alerts(settings: Settings, from_beginning: bool, as_json: bool,
                      limit: int | None = None, stop: asyncio.Event | None = None) -> int:
    from streams import clients

    consumer = clients.consumer(
        settings, settings.alert_topic, client_id=f"{settings.app_id}-tail",
        auto_offset_reset="earliest" if from_beginning else "latest",
    )
    await consumer.start()
    seen = 0
    colour = sys.stdout.isatty()
    try:
        while stop is None or not stop.is_set():
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    if as_json:
                        print(record.value.decode(), flush=True)
                    else:
                        print(format_alert(orjson.loads(record.value), colour), flush=True)
                    seen += 1
                    if limit is not None and seen >= limit:
                        return seen
    finally:
        await consumer.stop()
    return seen


def run_tail(settings: Settings, args: argparse.Namespace) -> int:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(tail_alerts(settings, args.from_beginning, args.json, args.limit))
    return 0


# -- broker ---------------------------------------------------------------------------
def run_broker(settings: Settings, args: argparse.Namespace) -> int:
    from streams.broker import run_broker_cli

    return run_broker_cli(args.data_dir, args.port)


# -- demo -----------------------------------------------------------------------------
def _spawn(argv: Sequence[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log_file:
        return subprocess.Popen(list(argv), env=env, stdout=log_file,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen[bytes], name: str, timeout: float = 20.0) -> None:
    if proc.poll() is not None:
        return
    _progress(f"demo: stopping {name} ...")
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_demo(settings: Settings, args: argparse.Namespace) -> int:
    """Broker, worker and simulator on this machine; alerts printed as they happen."""
    from streams.broker import LocalKafka, create_topics

    data_dir = settings.data_dir.resolve() / "demo"
    data_dir.mkdir(parents=True, exist_ok=True)
    _progress("demo: starting Apache Kafka (first run resolves the jars with Maven) ...")
    with LocalKafka(data_dir=data_dir / "kafka", progress=_progress) as kafka:
        bootstrap = kafka.bootstrap
        _progress(f"demo: broker up at {bootstrap}")
        asyncio.run(create_topics(bootstrap, [
            settings.payments_topic, settings.lending_topic, settings.alert_topic,
            settings.dead_letter_topic], settings.partitions))
        # the demo hashes with the public development key and lists the simulator's
        # people on the blacklist (TXWATCH_DEV_MODE; README, "Configuration")
        env = {**os.environ, "TXWATCH_DEV_MODE": "1", "TXWATCH_BROKER": bootstrap,
               "TXWATCH_METRICS_PORT": str(settings.metrics_port),
               "TXWATCH_DATA_DIR": str(data_dir)}
        worker = _spawn([sys.executable, "-m", "streams.cli", "worker"], env,
                        data_dir / "worker.log")
        simulator = _spawn(
            [sys.executable, "-m", "streams.cli", "simulate", "--rate", str(args.rate),
             "--labels", str(data_dir / "labels.jsonl")]
            + (["--duration", str(args.duration)] if args.duration else []),
            env, data_dir / "simulator.log")
        _progress(f"demo: worker (log {data_dir / 'worker.log'}) and simulator at "
                  f"{args.rate} events/s started; metrics on "
                  f"http://127.0.0.1:{settings.metrics_port}/metrics")
        _progress("demo: alerts appear below as they happen. Ctrl-C stops everything.")
        stop = asyncio.Event()
        demo_settings = Settings.from_env(env)
        started = time.monotonic()

        async def watch() -> None:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            tail = asyncio.create_task(
                tail_alerts(demo_settings, from_beginning=True, as_json=False, stop=stop))
            while not stop.is_set():
                if worker.poll() is not None:
                    _progress(f"demo: the worker exited ({worker.returncode}); "
                              f"see {data_dir / 'worker.log'}")
                    stop.set()
                if args.duration and time.monotonic() - started > args.duration + 5:
                    stop.set()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
            await tail

        try:
            asyncio.run(watch())
        finally:
            _stop(simulator, "simulator")
            _stop(worker, "worker")
            _progress("demo: stopping broker ...")
    _progress("demo: stopped cleanly.")
    return 0 if worker.returncode in (0, -signal.SIGTERM) else 1


# -- settings -------------------------------------------------------------------------
def run_settings(settings: Settings, args: argparse.Namespace) -> int:
    if args.markdown:
        sys.stdout.write(Settings.markdown_table())
        return 0
    for name, default, help_text in Settings.documentation():
        print(f"{name:36} {default:24} {help_text}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="txwatch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("worker", help="run a monitor worker")

    demo = sub.add_parser("demo", help="broker + worker + simulator, alerts live")
    demo.add_argument("--rate", type=float, default=200.0, help="simulated events per second")
    demo.add_argument("--duration", type=float, default=None,
                      help="stop after this many seconds (default: until Ctrl-C)")

    from streams.populations import VARIANTS, describe_variants

    sim = sub.add_parser("simulate", help="publish labelled simulated traffic",
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         epilog="population variants (--variant):\n" + describe_variants())
    sim.add_argument("--rate", type=float, default=None,
                     help="events per second (default: as fast as possible)")
    sim.add_argument("--duration", type=float, default=None, help="seconds to run")
    sim.add_argument("--events", type=int, default=None, help="number of events to send")
    sim.add_argument("--seed", type=int, default=7)
    sim.add_argument("--accounts", type=int, default=None,
                     help="population size (default 5000, or the variant's own)")
    sim.add_argument("--scenario", action="append",
                     help="inject only these scenarios (repeatable; default all)")
    sim.add_argument("--labels", type=Path, default=None,
                     help="write the injected scenarios' labels to this JSON Lines file")
    sim.add_argument("--variant", choices=sorted(VARIANTS), default=None, metavar="NAME",
                     help="a population that differs from the default one (listed below)")
    sim.add_argument("--out", type=Path, default=None,
                     help="write the events to this JSON Lines file instead of publishing "
                          "(needs --events)")

    replay = sub.add_parser("replay", help="publish events from a JSON Lines file")
    replay.add_argument("file", type=Path)
    replay.add_argument("--rate", type=float, default=None,
                        help="events per second (default: as fast as possible)")

    tail = sub.add_parser("tail", help="print alerts as they arrive")
    tail.add_argument("--from-beginning", action="store_true")
    tail.add_argument("--json", action="store_true", help="print raw alert JSON")
    tail.add_argument("--limit", type=int, default=None, help="stop after N alerts")

    broker = sub.add_parser("broker", help="run the local Apache Kafka broker")
    broker.add_argument("--data-dir", type=Path, default=None)
    broker.add_argument("--port", type=int, default=None)

    settings = sub.add_parser("settings", help="list TXWATCH_* variables")
    settings.add_argument("--markdown", action="store_true",
                          help="print the README's table (Configuration) instead")

    from streams import calibrate, evaluation, feedback, importer, portfolio, rules

    for module in (portfolio, rules, feedback, evaluation, importer, calibrate):
        module.register_cli(sub)
    return parser


#: Commands that hash personal identifiers: they need TXWATCH_PII_KEY or development mode.
HASHING_COMMANDS = frozenset({"worker", "backtest", "evaluate"})

COMMANDS = {
    "demo": run_demo, "simulate": run_simulate, "replay": run_replay, "tail": run_tail,
    "broker": run_broker, "settings": run_settings,
}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # the reader went away (txwatch settings | head): end quietly, and keep the
        # interpreter's final flush of stdout from raising again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"txwatch: bad setting: {exc}", file=sys.stderr)
        return 2
    if args.command in HASHING_COMMANDS:
        try:
            settings.hashing_key()
        except SettingsError as exc:
            print(f"txwatch {args.command}: {exc}", file=sys.stderr)
            return 2
    if args.command == "worker":
        return run_worker(settings)
    func = getattr(args, "func", None) or COMMANDS[args.command]
    return int(func(settings, args))


if __name__ == "__main__":
    sys.exit(main())
